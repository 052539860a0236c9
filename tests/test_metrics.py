"""Mask scores on hand-computed masks (SPEC §9), landmark and photometric errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.eval import metrics


def _masks():
  # Image 0 (4x4): rendered region = left 3 columns (12 px). Inside it, ground truth visible on
  # rows 0-1 (6 px); estimate visible on rows 0-2 of columns 0-1 and row 0 of column 2 (7 px).
  r0 = np.zeros((4, 4))
  r0[:, :3] = 1
  g0 = np.zeros((4, 4))
  g0[:2, :] = 1  # Column 3 is outside the render and must not count.
  e0 = np.zeros((4, 4))
  e0[:3, :2] = 1
  e0[0, 2] = 1
  e0[:, 3] = 1
  # Inside the render: TP = rows 0-1 x cols 0-1 (4) + (0, 2) = 5; FP = (2, 0), (2, 1) = 2;
  # FN = (1, 2) = 1; TN = 12 - 8 = 4.
  # Image 1: empty render -> every area clamps to 1.
  r1 = np.zeros((4, 4))
  g1 = np.ones((4, 4))
  e1 = np.ones((4, 4))
  return (np.stack([g0, g1]), np.stack([e0, e1]), np.stack([r0, r1]))


def test_mask_scores_hand_computed_and_empty_render():
  gt, est, rend = (jnp.asarray(x, jnp.float32) for x in _masks())
  areas = metrics.confusion_areas(gt, est, rend)
  np.testing.assert_array_equal(areas["tp"], [5, 1])
  np.testing.assert_array_equal(areas["fp"], [2, 1])
  np.testing.assert_array_equal(areas["fn"], [1, 1])
  np.testing.assert_array_equal(areas["tn"], [4, 1])
  s = metrics.mask_scores(gt, est, rend)
  np.testing.assert_allclose(s["accuracy"], [9 / 12, 0.5], rtol=1e-6)
  np.testing.assert_allclose(s["precision"], [5 / 7, 0.5], rtol=1e-6)
  np.testing.assert_allclose(s["recall"], [5 / 6, 0.5], rtol=1e-6)
  # Empty render: all areas 1, so F1 = 2*1 / (2*1 + 1 + 1) = 0.5, as the original's
  # evaluation.mask_accuracy computes it (SPEC §9 states 2/3, which its own formula does not give).
  np.testing.assert_allclose(s["f1"], [10 / 13, 0.5], rtol=1e-6)
  summary = metrics.summarize(s)
  np.testing.assert_allclose(summary["accuracy_mean"], (0.75 + 0.5) / 2, rtol=1e-6)
  np.testing.assert_allclose(summary["accuracy_std"], 0.125, rtol=1e-6)  # Population std.
  jitted = jax.jit(metrics.mask_scores)(gt, est, rend)
  np.testing.assert_allclose(jitted["f1"], s["f1"], rtol=1e-6)


def test_mask_scores_soft_masks_match_numpy():
  rng = np.random.default_rng(0)
  gt = (rng.uniform(size=(3, 8, 8)) < 0.6).astype(np.float64)
  est = rng.uniform(size=(3, 8, 8))  # Soft UNet output, scored as soft areas like the original.
  rend = (rng.uniform(size=(3, 8, 8)) < 0.8).astype(np.float64)
  s = metrics.mask_scores(*(jnp.asarray(x, jnp.float32) for x in (gt, est, rend)))
  for b in range(3):
    tp = max(np.sum(gt[b] * est[b] * rend[b]), 1)
    tn = max(np.sum((1 - gt[b]) * (1 - est[b]) * rend[b]), 1)
    fp = max(np.sum((1 - gt[b]) * est[b] * rend[b]), 1)
    fn = max(np.sum(gt[b] * (1 - est[b]) * rend[b]), 1)
    np.testing.assert_allclose(s["accuracy"][b], (tp + tn) / (tp + tn + fp + fn), rtol=1e-5)
    np.testing.assert_allclose(s["precision"][b], tp / (tp + fp), rtol=1e-5)
    np.testing.assert_allclose(s["recall"][b], tp / (tp + fn), rtol=1e-5)
    np.testing.assert_allclose(s["f1"][b], 2 * tp / (2 * tp + fp + fn), rtol=1e-5)


def test_landmark_error():
  rng = np.random.default_rng(1)
  gt = rng.uniform(0, 224, (2, 68, 2))
  offsets = np.zeros((2, 68, 2))
  offsets[0, :, 0] = 3.0  # Every point 3 px off.
  offsets[1, 10] = (6.0, 8.0)  # One point 10 px off.
  err = metrics.landmark_error(jnp.asarray(gt), jnp.asarray(gt + offsets))
  np.testing.assert_allclose(err["pixels"], [3.0, 10.0 / 68], rtol=1e-5)
  ocular = np.linalg.norm(gt[:, 36] - gt[:, 45], axis=-1)
  np.testing.assert_allclose(err["normalized"], [3.0 / ocular[0], 10.0 / 68 / ocular[1]], 1e-5)


def test_photometric_error():
  rng = np.random.default_rng(2)
  image = rng.uniform(size=(2, 6, 5, 3))
  render = rng.uniform(size=(2, 6, 5, 3))
  mask = (rng.uniform(size=(2, 6, 5)) < 0.5).astype(np.float64)
  mask[1] = 0.0  # Nothing visible: error 0, no division by zero.
  got = metrics.photometric_error(*(jnp.asarray(x, jnp.float32) for x in (image, render, mask)))
  sel = mask[0] > 0
  expected0 = 255 * np.mean(np.abs(image[0][sel] - render[0][sel]))
  np.testing.assert_allclose(got, [expected0, 0.0], rtol=1e-5)


def test_rotation_errors_and_gains_of_an_under_rotating_predictor():
  rng = np.random.default_rng(0)
  truth = np.zeros((50, 6))
  truth[:, :3] = rng.uniform(-0.5, 0.5, (50, 3))
  predicted = truth.copy()
  predicted[:, 1] *= 0.5  # half the yaw
  predicted[:, 0] += 0.1  # a constant pitch offset: error 5.73 deg, gain still 1
  predicted[:, 3:] = 7.0  # translations are not scored
  errors = metrics.rotation_errors(predicted, truth)
  np.testing.assert_allclose(errors[:, 0], np.degrees(0.1), rtol=1e-9)
  np.testing.assert_allclose(errors[:, 1], np.degrees(0.5 * np.abs(truth[:, 1])), rtol=1e-9)
  np.testing.assert_allclose(errors[:, 2], 0.0, atol=1e-12)
  summary = metrics.rotation_summary(predicted, truth)
  assert summary["yaw_gain"] == pytest.approx(0.5) and summary["pitch_gain"] == pytest.approx(1.0)
  assert summary["yaw_err_deg"] == pytest.approx(np.median(errors[:, 1]))
  assert summary["roll_err_deg"] == pytest.approx(0.0, abs=1e-9)
  # Angles wrap: 179 and -179 degrees are 2 degrees apart.
  wrap = metrics.rotation_errors(
    np.radians([[179.0, 0, 0, 0, 0, 0]]), np.radians([[-179.0, 0, 0, 0, 0, 0]])
  )
  assert wrap[0, 0] == pytest.approx(2.0)
  with pytest.raises(ValueError, match=r"\(N, 6\)"):
    metrics.rotation_errors(predicted[:, :3], truth[:, :3])
