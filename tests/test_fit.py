"""Analysis-by-synthesis fitting recovers a known face from its render (slow: one big compile)."""

import dataclasses
import os

import numpy as np
import pytest

from focus_jax import fit, fitted, testing
from focus_jax.render import coefficients, pipeline

SIZE = 64


@pytest.fixture(scope="module")
def scene():
  """The small model's face at a known pose, rendered at 64 px, and its exact landmarks."""
  model = testing.small_model()
  truth = coefficients.Coefficients.zeros(model.sizes)
  rng = np.random.default_rng(0)
  truth = dataclasses.replace(
    truth,
    shape=(0.5 * rng.normal(size=model.sizes["shape"])).astype(np.float32),
    pose=np.array([0.1, -0.25, 0.05, 6.0, -4.0, 20.0], np.float32),
  )
  out = pipeline.render(model, truth, SIZE, SIZE)
  return model, truth, np.clip(np.asarray(out.image), 0, 1), np.asarray(out.landmarks)


@pytest.mark.slow
def test_fit_lowers_its_loss_and_recovers_the_pose(scene, tmp_path):
  model, truth, image, landmarks = scene
  config = dataclasses.replace(fit.FitConfig(), image_size=SIZE, steps=120, mask_every=20)
  result = fit.fit_image(image, landmarks, model=model, config=config)
  losses = result.losses
  assert losses.shape == (120,) and np.all(np.isfinite(losses))
  assert losses[-1] < 0.5 * losses[0]
  pose = result.result.coefficients.pose[0]
  # Started from the mean face at zero pose: the rotation comes back within 0.05 rad, the
  # translation within 3 mm across and 15 mm in depth (depth trades off against face size).
  np.testing.assert_allclose(pose[:3], truth.pose[:3], atol=0.05)
  np.testing.assert_allclose(pose[3:5], truth.pose[3:5], atol=3.0)
  assert abs(pose[5] - truth.pose[5]) < 15.0
  errors = result.errors
  assert (
    errors["fit"]["landmark_px"] < 0.5
    and errors["fit"]["landmark_px"] < errors["start"]["landmark_px"]
  )
  assert errors["fit"]["photometric_mae"] < errors["start"]["photometric_mae"]


@pytest.mark.slow
def test_fit_command_writes_the_export_files(tmp_path):
  from focus_jax.data import toy

  root = str(tmp_path / "toy")
  names = toy.write_image_root(root, 1, size=(96, 80), masks=False)
  from focus_jax.data import layout

  record = layout.read_split(root, "all")[0]
  lm_file = str(tmp_path / "lm.txt")
  np.savetxt(lm_file, record.landmarks)
  out = str(tmp_path / "out")
  args = ["--image", record.image_path, "--landmarks", lm_file, "--out", out]
  assert fit.main([*args, "--steps", "20", "--mask_every", "10", "--image_size", "64"]) == 0
  f = fitted.load_fitted(os.path.join(out, "fitted.npz"))
  assert list(f.names) == names and f.mask_source == "robust"
  stem = os.path.splitext(names[0])[0]
  assert os.path.isfile(os.path.join(out, "meshes", stem + ".obj"))
  assert layout.load_image(os.path.join(out, "overlays", stem + ".png")).shape == (80, 96, 3)
  assert os.path.isfile(os.path.join(out, "fit.json"))
