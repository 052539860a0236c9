"""The render pipeline: API contract, consistency with its parts, batching."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax import testing
from focus_jax.render import camera, coefficients, mesh, pipeline, rasterize, shading
from focus_jax.render import morphable_model as mm

SIZE = 48


def test_render_fields_and_consistency():
  model = testing.small_model()
  coeffs = testing.random_coefficients(model, 0)
  out = pipeline.render(model, coeffs, height=SIZE, width=SIZE)
  assert out.image.shape == (SIZE, SIZE, 3) and out.mask.shape == (SIZE, SIZE)
  assert out.soft_mask.shape == (SIZE, SIZE) and out.landmarks.shape == (68, 2)
  assert out.projected.shape == (model.num_vertices, 3)
  verts = mm.vertices(model, coeffs.shape, coeffs.expression)
  cam = camera.camera_from_pose(coeffs.pose, SIZE, SIZE)
  projected = camera.project(cam, verts)
  np.testing.assert_allclose(out.projected, projected, rtol=1e-6, atol=1e-4)
  np.testing.assert_allclose(
    out.landmarks, np.asarray(projected)[np.asarray(model.landmarks), :2], atol=1e-4
  )
  mask = np.asarray(out.mask)
  assert 0.2 < mask.mean() < 0.9
  np.testing.assert_array_equal(mask, np.asarray(out.fragments.face_id >= 0))
  image = np.asarray(out.image)
  assert np.all(image[mask == 0] == 0) and image[mask == 1].min() > 0
  # One covered pixel by hand: shaded vertex colours interpolated with the barycentrics.
  normals = np.asarray(mesh.vertex_normals(verts, model.triangles)) @ np.asarray(cam.rotation).T
  colors = np.asarray(
    shading.shade(jnp.asarray(normals), mm.albedo(model, coeffs.color), coeffs.light)
  )
  y, x = np.argwhere(mask == 1)[len(np.argwhere(mask == 1)) // 2]
  face = int(out.fragments.face_id[y, x])
  expected = np.asarray(out.fragments.bary[y, x]) @ colors[np.asarray(model.triangles[face])]
  np.testing.assert_allclose(image[y, x], expected, rtol=1e-4, atol=1e-5)


def test_render_batch_matches_render_and_does_not_retrace():
  model = testing.small_model()
  coeffs = [testing.random_coefficients(model, s) for s in range(2)]
  batched = coefficients.stack(coeffs)
  outs = pipeline.render_batch(model, batched, height=SIZE, width=SIZE)
  assert outs.image.shape == (2, SIZE, SIZE, 3)
  for b in range(2):
    single = pipeline.render(model, coeffs[b], height=SIZE, width=SIZE)
    np.testing.assert_array_equal(outs.fragments.face_id[b], single.fragments.face_id)
    np.testing.assert_allclose(outs.image[b], single.image, atol=1e-5)
    np.testing.assert_allclose(outs.soft_mask[b], single.soft_mask, atol=1e-5)
  size_before = pipeline.render_batch._cache_size()
  pipeline.render_batch(model, jax.tree.map(lambda a: a * 0.9, batched), height=SIZE, width=SIZE)
  assert pipeline.render_batch._cache_size() == size_before


@pytest.mark.slow
def test_pose_gradient_is_finite_and_nonzero():
  model = testing.small_model()
  coeffs = testing.random_coefficients(model, 3)

  def loss(pose):
    out = pipeline.render(model, dataclasses.replace(coeffs, pose=pose), height=SIZE, width=SIZE)
    return jnp.mean(out.image) + jnp.mean(out.soft_mask)

  grad = jax.grad(loss)(jnp.asarray(coeffs.pose))
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
  assert isinstance(
    pipeline.render(model, coeffs, height=SIZE, width=SIZE).fragments, rasterize.Fragments
  )
