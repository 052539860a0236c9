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


def _forgiven_numpy(image, render, render_mask, gt_mask, area, neighbour, window, margin):
  """forgiven_share written out pixel by pixel."""
  batch, height, width, _ = image.shape
  m = window // 2
  out = []
  for b in range(batch):
    face = render_mask[b] > 0.5
    interior = (height - 2 * m) * (width - 2 * m)
    price = area * interior / (neighbour * max(face.sum(), 1))
    forgiven = count = 0
    for y in range(m, height - m):
      for x in range(m, width - m):
        window_gt = [
          gt_mask[b, yy, xx] if 0 <= yy < height and 0 <= xx < width else 0.0
          for yy in range(y - margin, y + margin + 1)
          for xx in range(x - margin, x + margin + 1)
        ]
        if not face[y, x] or max(window_gt) >= 0.5:
          continue
        r = render[b, y, x] * render_mask[b, y, x]
        n = min(
          np.linalg.norm(r - image[b, y + i, x + j] * render_mask[b, y + i, x + j])
          for i in range(-m, m + 1)
          for j in range(-m, m + 1)
        )
        count += 1
        forgiven += n < price
    out.append(forgiven / count if count else np.nan)
  return np.array(out)


def test_forgiven_share_matches_numpy_and_sees_through_fine_textures():
  size = 16
  skin, green = np.array([0.8, 0.6, 0.5]), np.array([0.1, 0.8, 0.1])
  render = np.broadcast_to(skin, (3, size, size, 3)).astype(np.float32).copy()
  render_mask = np.zeros((3, size, size), np.float32)
  render_mask[:, 1:15, 2:14] = 1.0
  gt_mask = np.ones((3, size, size), np.float32)
  gt_mask[:, 4:11, 3:11] = 0.0  # one occluder per image
  image = render.copy()
  yy, xx = np.mgrid[:size, :size]
  checks = np.where(((yy + xx) % 2 == 0)[..., None], skin, green)
  image[0][gt_mask[0] == 0] = checks[gt_mask[0] == 0]  # 1 px checks: skin next to every pixel
  image[1][gt_mask[1] == 0] = green  # a solid occluder
  image[2] = np.where(gt_mask[2][..., None] == 0, skin + 0.02, image[2])  # skin-coloured
  gt_mask[2, 0, 0] = 1.0  # (outside the render: changes nothing)
  args = [jnp.asarray(a) for a in (image, render, render_mask, gt_mask)]
  for window, margin in ((5, 2), (3, 1), (1, 0)):
    got = metrics.forgiven_share(*args, 0.9, 15.0, window, margin)
    want = _forgiven_numpy(image, render, render_mask, gt_mask, 0.9, 15.0, window, margin)
    np.testing.assert_allclose(got, want, rtol=1e-6)
  # With a window the checks are forgiven like skin; pixel by pixel only their skin half is.
  win5 = metrics.forgiven_share(*args, 0.9, 15.0, 5, 2)
  np.testing.assert_allclose(win5, [1.0, 0.0, 1.0])
  per_pixel = metrics.forgiven_share(*args, 0.9, 15.0, 1, 0)
  assert 0.4 < per_pixel[0] < 0.6 and per_pixel[1] == 0.0 and per_pixel[2] == 1.0
  # A higher area price forgives more: the solid green occluder too.
  assert metrics.forgiven_share(*args, 100.0, 15.0, 5, 2)[1] == 1.0
  # No occluder pixel far enough from the edge: undefined.
  assert np.isnan(metrics.forgiven_share(*args, 0.9, 15.0, 5, 4)).all()
