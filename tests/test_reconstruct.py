"""The Reconstructor: restoring a trained chain, one compiled pass, frames, bad workdirs.

The networks of the session's smoke chain run at 64 px (they are convolutional: any side that is
a multiple of 16 works), two images per compiled call; the compiled pass is shared with
``test_export.py`` (same graph definitions and shapes).
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from conftest import SMOKE_RECON_SIZE

from focus_jax import reconstruct, testing
from focus_jax.data import alignment, layout, toy
from focus_jax.render import visibility

SIZE = SMOKE_RECON_SIZE  # the shared `recon` fixture's side

# The trained smoke chain (conftest) is built once per xdist worker: its users share one.
pytestmark = pytest.mark.xdist_group("smoke_chain")


@pytest.fixture(scope="module")
def images(image_root):
  records = layout.read_split(image_root, "all")[:3]
  return np.stack([layout.load_image(r.image_path) for r in records])


@pytest.fixture(scope="module")
def result(recon, images):
  return recon(images)


def _rotation(pose):
  """The camera rotation of SPEC §2 in float64 (an independent re-derivation)."""
  rx, ry, rz = pose[:3]
  c, s = np.cos, np.sin
  mx = np.array([[1, 0, 0], [0, c(rx), -s(rx)], [0, s(rx), c(rx)]])
  my = np.array([[c(ry), 0, s(ry)], [0, 1, 0], [-s(ry), 0, c(ry)]])
  mz = np.array([[c(rz), -s(rz), 0], [s(rz), c(rz), 0], [0, 0, 1]])
  return np.diag([1.0, -1.0, -1.0]) @ mx @ my @ mz


def _project(points, pose, size):
  """Pixel x, y ``(N, 2)`` and depth ``(N,)`` of model-frame points, float64."""
  cam = points @ _rotation(pose).T + pose[3:] + np.array([0.0, 0.0, 1000.0])
  focal, centre = 9.06 * size / 2, (size - 1) / 2
  return focal * cam[:, :2] / cam[:, 2:] + centre, cam[:, 2]


def test_from_workdir_restores_the_most_trained_stage(recon, smoke_chain):
  assert recon.source == os.path.join(smoke_chain[0], "em")
  assert recon.step == 2 and recon.mask_source == "unet" and recon.model_spec == "embedded"
  assert recon.image_size == SIZE and recon.model.num_vertices == 3924
  # A stage-1 workdir has no trained UNet: its robust inlier mask stands in.
  stage1 = reconstruct.Reconstructor.from_workdir(os.path.join(smoke_chain[0], "pretrain"))
  assert stage1.mask_source == "robust" and stage1.image_size == 64  # the training side


def test_reconstruction_fields_agree_with_an_independent_model(recon, result):
  n, v = 3, recon.model.num_vertices
  coeffs = result.coefficients
  assert coeffs.shape.shape == (n, 80) and coeffs.pose.shape == (n, 6)
  assert coeffs.light.shape == (n, 27) and coeffs.expression.shape == (n, 64)
  assert result.vertices.shape == (n, v, 3) and result.landmarks.shape == (n, 68, 2)
  assert result.render.shape == (n, SIZE, SIZE, 3) and result.coverage.shape == (n, SIZE, SIZE)
  assert result.visible_mask.shape == (n, SIZE, SIZE)
  assert result.vertex_visibility.shape == (n, v) and result.vertex_visibility.dtype == np.int8
  assert result.align is None and result.input_landmarks is None and len(result) == n
  m = recon.model
  for b in range(n):
    # Vertices: the linear model in float64.
    expected = (
      np.asarray(m.shape_mean, np.float64)
      + np.asarray(m.exp_mean)
      + np.einsum("k,kvc->vc", coeffs.shape[b], np.asarray(m.shape_basis, np.float64))
      + np.einsum("k,kvc->vc", coeffs.expression[b], np.asarray(m.exp_basis, np.float64))
    )
    np.testing.assert_allclose(result.vertices[b], expected, atol=1e-3)
    # Landmarks: the landmark vertices projected with SPEC §2's camera.
    xy, depth = _project(expected, coeffs.pose[b].astype(np.float64), SIZE)
    np.testing.assert_allclose(result.landmarks[b], xy[np.asarray(m.landmarks)], atol=2e-3)
    # Outside the image: exactly the vertices whose nearest pixel centre leaves it.
    px = np.round(xy)
    outside = np.any((px < 0) | (px > SIZE - 1), axis=1) | (depth <= 0)
    np.testing.assert_array_equal(result.vertex_visibility[b] == visibility.OUTSIDE, outside)
  assert set(np.unique(result.coverage)) <= {0.0, 1.0} and result.coverage.sum() > 0
  assert 0.0 <= result.visible_mask.min() and result.visible_mask.max() <= 1.0


def test_chunks_are_padded_not_mixed(recon, images, result):
  # Image 3 ran in a chunk padded with copies of itself: alone it gives the same answer.
  alone = recon(images[2:3])
  np.testing.assert_allclose(alone.vertices[0], result.vertices[2], atol=1e-4)
  np.testing.assert_array_equal(alone.vertex_visibility[0], result.vertex_visibility[2])
  # uint8 and [0, 1] floats are the same input.
  again = recon(images[2:3].astype(np.float32) / 255.0)
  np.testing.assert_allclose(again.coefficients.pose, alone.coefficients.pose, atol=1e-6)


def test_photos_are_aligned_like_training(recon, tmp_path):
  root = str(tmp_path / "toy")
  toy.write_image_root(root, 1, size=(96, 80), masks=False)
  record = layout.read_split(root, "all")[0]
  photo = layout.load_image(record.image_path)
  out = recon([photo], record.landmarks[None])
  params = alignment.estimate(record.landmarks, 96, 80)
  np.testing.assert_allclose(out.align[0], params.as_array())
  # The training pipeline's alignment, then its resize to the network side.
  aligned, lm, _, _ = alignment.align_sample(photo, record.landmarks)
  np.testing.assert_allclose(
    out.input_landmarks[0], reconstruct.to_frame(lm, alignment.TARGET_SIZE, SIZE), atol=1e-4
  )
  direct = recon(aligned[None])
  np.testing.assert_allclose(out.coefficients.shape, direct.coefficients.shape, atol=1e-5)
  # A [0, 1] float photo is the same photo (it was once truncated to black by a uint8 cast).
  floats = recon([photo.astype(np.float32) / 255.0], record.landmarks[None])
  np.testing.assert_allclose(floats.coefficients.pose, out.coefficients.pose, atol=1e-6)
  # Back to the photo: the given landmarks again.
  back = reconstruct.to_photo_landmarks(out.input_landmarks, out.align, SIZE)
  np.testing.assert_allclose(back[0], record.landmarks, atol=1e-3)


def test_bad_workdirs_and_models_name_the_problem(smoke_chain, tmp_path):
  chain = smoke_chain[0]
  with pytest.raises(ValueError, match="neither a stage workdir"):
    reconstruct.Reconstructor.from_workdir(str(tmp_path))
  empty = tmp_path / "em"
  (empty / "checkpoints").mkdir(parents=True)
  shutil.copy(os.path.join(chain, "em", "config.json"), empty / "config.json")
  with pytest.raises(ValueError, match=f"{empty}/checkpoints: no checkpoint"):
    reconstruct.Reconstructor.from_workdir(str(empty))
  with open(empty / "config.json") as f:
    assert json.load(f)["stage"] == "em"
  # Face models unlike the one the encoder was trained with (checked before restoring).
  model = testing.small_model()
  fewer = dataclasses.replace(model, shape_basis=model.shape_basis[:40])
  with pytest.raises(ValueError, match=r"encoder predicts .*'shape': 80.* model has .*'shape': 40"):
    reconstruct.Reconstructor.from_workdir(chain, model=fewer)
  cut = dataclasses.replace(model, triangles=model.triangles[:100])
  with pytest.raises(ValueError, match=r"em: trained with a face model of 3924 vertices and 7560"):
    reconstruct.Reconstructor.from_workdir(chain, model=cut)


def test_from_checkpoints_loads_converted_weights(recon, tmp_path):
  from focus_jax import objectives
  from focus_jax.models import weights

  encoder = objectives.merge(*recon.encoder, train=False)
  params = {k: np.asarray(v.value) for k, v in weights.flat_variables(encoder).items()}
  path = str(tmp_path / "encoder.npz")
  arch = {"kind": "face_encoder", "depth": 18, "width": 8, "sizes": encoder.sizes}
  weights.save_params(path, params, arch)
  loaded = reconstruct.Reconstructor.from_checkpoints(path, model=recon.model, image_size=SIZE)
  assert loaded.mask_source == "robust" and loaded.source == path
  # Converted original checkpoints predict light for the original's shading direction.
  assert loaded.original_shading and not recon.original_shading
  restored = objectives.merge(*loaded.encoder, train=False)
  for key, value in weights.flat_variables(restored).items():
    np.testing.assert_array_equal(np.asarray(value.value), params[key])
  fewer = dataclasses.replace(recon.model, color_basis=recon.model.color_basis[:10])
  with pytest.raises(ValueError, match=f"{path}: the encoder predicts"):
    reconstruct.Reconstructor.from_checkpoints(path, model=fewer)
