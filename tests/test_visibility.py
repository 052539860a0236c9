"""Per-vertex visibility on scenes with a known answer: two squares, a turned face, occluders."""

import jax
import numpy as np
import pytest

from focus_jax import testing
from focus_jax.render import camera, rasterize_reference, visibility
from focus_jax.render import morphable_model as mm

SIZE = 64
VISIBLE, SELF, OCCLUDED, OUTSIDE = (
  visibility.VISIBLE,
  visibility.SELF_OCCLUDED,
  visibility.OCCLUDED,
  visibility.OUTSIDE,
)


def _grid(half: float, step: float, z: float):
  """A square of ``(n, n)`` vertices in the plane ``z`` (model frame), facing the viewer."""
  ticks = np.arange(-half, half + step / 2, step)
  n = ticks.size
  xx, yy = np.meshgrid(ticks, ticks, indexing="ij")
  vertices = np.stack([xx.ravel(), yy.ravel(), np.full(n * n, z)], axis=1)
  tris = []
  for i in range(n - 1):
    for j in range(n - 1):
      v00, v10, v01, v11 = i * n + j, (i + 1) * n + j, i * n + j + 1, (i + 1) * n + j + 1
      # cross(v1 - v0, v2 - v0) points to +z (towards the viewer) for both triangles.
      tris += [[v00, v10, v11], [v00, v11, v01]]
  return vertices.astype(np.float32), np.array(tris, np.int32)


@jax.jit
def _camera(vertices, pose):
  cam = camera.camera_from_pose(pose, SIZE, SIZE)
  return camera.to_camera(cam, vertices), camera.project(cam, vertices), cam.focal


_classify = jax.jit(visibility.vertex_visibility)


def _scene(vertices, triangles, pose, mask=None):
  """Rasterises a mesh at ``SIZE`` px (the NumPy reference rasteriser: no compilation) and
  classifies its vertices; returns ``(codes, projected, face_id)``."""
  x, projected, focal = _camera(vertices, np.asarray(pose, np.float32))
  face_id, _, depth, _ = rasterize_reference.rasterize_reference(projected, triangles, SIZE, SIZE)
  mask = np.ones((SIZE, SIZE), np.float32) if mask is None else mask  # ones: no occluder
  codes = _classify(x, projected, triangles, face_id, depth.astype(np.float32), mask, focal)
  return np.asarray(codes), np.asarray(projected), face_id


@pytest.fixture(scope="module")
def squares():
  """A 120 mm back square (z = 0) behind a 40 mm front square (z = 30 mm, nearer), frontal."""
  back, back_tri = _grid(60.0, 10.0, 0.0)
  front, front_tri = _grid(20.0, 10.0, 30.0)
  vertices = np.concatenate([back, front])
  triangles = np.concatenate([back_tri, front_tri + len(back)])
  return vertices, triangles, len(back)


def test_depth_occlusion_of_two_squares(squares):
  vertices, triangles, n_back = squares
  codes, *_ = _scene(vertices, triangles, np.zeros(6))
  back, front = codes[:n_back], codes[n_back:]
  reach = np.max(np.abs(vertices[:n_back, :2]), axis=1)
  # The front square covers |x|, |y| < 20.6 mm of the back plane; 20 mm is the ambiguous rim.
  assert np.all(back[reach <= 10] == SELF), back[reach <= 10]
  assert np.all(back[reach >= 30] == VISIBLE)
  assert np.all(front == VISIBLE)
  # Turned around (yaw pi), every triangle faces away: everything is back-facing, nothing drawn.
  codes, *_ = _scene(vertices, triangles, [0, np.pi, 0, 0, 0, 0])
  assert np.all(codes == SELF)


def test_a_known_occluder_covers_only_the_visible_vertices(squares):
  vertices, triangles, n_back = squares
  mask = np.ones((SIZE, SIZE), np.float32)
  mask[:, 40:] = 0.0  # an occluder over the right part of the image
  plain, projected, _ = _scene(vertices, triangles, np.zeros(6))
  codes, *_ = _scene(vertices, triangles, np.zeros(6), mask)
  under = np.round(projected[:, 0]) >= 40
  # Visible vertices under the occluder become OCCLUDED; self-occlusion is not the occluder's.
  np.testing.assert_array_equal(codes, np.where((plain == VISIBLE) & under, OCCLUDED, plain))
  assert np.sum(codes == OCCLUDED) >= 20 and np.sum(codes == VISIBLE) >= 20


@pytest.fixture(scope="module")
def turned_face():
  """The small model's mean face turned by 0.9 rad (yaw), shifted left so that its right part
  leaves the 64 px image, with a rectangular occluder over its lower half."""
  model = testing.small_model()
  sizes = model.sizes
  vertices = np.asarray(mm.vertices(model, np.zeros(sizes["shape"]), np.zeros(sizes["expression"])))
  pose = np.array([0.0, 0.9, 0.0, -70.0, 0.0, 0.0], np.float32)
  mask = np.ones((SIZE, SIZE), np.float32)
  mask[36:, :] = 0.0
  codes, projected, face_id = _scene(vertices, np.asarray(model.triangles), pose, mask)
  return model, vertices, pose, mask, codes, projected, face_id


def test_turned_face_has_every_class_where_expected(turned_face):
  model, vertices, pose, mask, codes, projected, face_id = turned_face
  counts = np.bincount(codes, minlength=4)
  assert np.all(counts >= 30), counts
  np.testing.assert_array_equal(np.asarray(visibility.counts(codes)), counts)
  # Outside: exactly the vertices whose nearest pixel centre leaves the image.
  px = np.round(projected[:, :2])
  outside = np.any((px < 0) | (px > SIZE - 1), axis=1)
  np.testing.assert_array_equal(codes == OUTSIDE, outside)
  # Occluded vertices lie under the occluder; visible ones do not.
  rows = np.clip(px[:, 1], 0, SIZE - 1).astype(int)
  assert np.all(rows[codes == OCCLUDED] >= 36) and np.all(rows[codes == VISIBLE] < 36)
  # Clearly back-facing vertices (float64 normals, 10 degrees of margin) are never visible.
  cam = camera.camera_from_pose(pose, SIZE, SIZE)
  x = np.asarray(camera.to_camera(cam, vertices), np.float64)
  tri = np.asarray(model.triangles)
  cross = np.cross(x[tri[:, 1]] - x[tri[:, 0]], x[tri[:, 2]] - x[tri[:, 0]])
  normals = np.zeros_like(x)
  np.add.at(normals, tri.ravel(), np.repeat(cross, 3, axis=0))
  cosine = np.sum(normals * x, 1) / (np.linalg.norm(normals, axis=1) * np.linalg.norm(x, axis=1))
  away = (cosine > np.sin(np.deg2rad(10))) & ~outside
  assert away.sum() >= 30
  assert np.all(codes[away] == SELF)
  # Every vertex of a triangle that won a pixel is seen (visible or under the occluder).
  drawn = np.asarray(visibility.triangles_drawn(face_id, model.num_triangles))
  seen = codes[tri[drawn].ravel()]
  assert drawn.sum() >= 100 and np.all(seen != SELF)


def test_without_a_mask_nothing_is_occluded(turned_face):
  model, vertices, pose, _, codes, _, _ = turned_face
  plain, *_ = _scene(vertices, np.asarray(model.triangles), pose)
  assert not np.any(plain == OCCLUDED)
  np.testing.assert_array_equal(np.where(codes == OCCLUDED, VISIBLE, codes), plain)
