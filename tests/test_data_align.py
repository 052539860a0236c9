"""Deep3DFaceRecon alignment vs an independent NumPy/PIL computation; inverse round trips."""

import numpy as np
from PIL import Image

from focus_jax.data import alignment, toy
from focus_jax.facemodels import landmarks as ibug


def _reference(image, lm, table):
  """Deep3DFaceRecon's align_img written out as the original does it: the 2N x 8 POS system,
  y flipped with H - y, PIL resize and crop, landmarks flipped back with 224 - y."""
  h0, w0 = image.shape[:2]
  up = np.stack([lm[:, 0], h0 - lm[:, 1]], 1)
  pick = lambda p: np.stack([p[[36, 39]].mean(0), p[[42, 45]].mean(0), p[30], p[48], p[54]])
  p2, p3 = pick(up), pick(table)
  a = np.zeros((10, 8))
  a[0::2, :3], a[0::2, 3] = p3, 1
  a[1::2, 4:7], a[1::2, 7] = p3, 1
  k = np.linalg.lstsq(a, p2.reshape(-1), rcond=None)[0]
  fitted = (np.linalg.norm(k[:3]) + np.linalg.norm(k[4:7])) / 2
  s = 102.0 / fitted
  tx, ty = k[3], k[7]
  w, h = int(w0 * s), int(h0 * s)
  left = int(w / 2 - 112 + (tx - w0 / 2) * s)
  top = int(h / 2 - 112 + (h0 / 2 - ty) * s)
  out = Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC)
  out = np.asarray(out.crop((left, top, left + 224, top + 224)))
  new = np.stack([up[:, 0] - tx + w0 / 2, up[:, 1] - ty + h0 / 2], 1) * s
  new = new - np.array([w / 2 - 112, h / 2 - 112])
  new[:, 1] = 224 - new[:, 1]
  return out, new, np.array([w0, h0, s, tx, ty])


def test_matches_independent_deep3d_computation():
  rng = np.random.default_rng(0)
  table = ibug.standard_landmarks() / 100.0
  for width, height in ((96, 80), (150, 210)):
    image, lm, _ = toy.make_sample(rng, width, height)
    lm = lm + rng.normal(0, 0.7, lm.shape).astype(np.float32)  # not an exact similarity
    ref_img, ref_lm, ref_params = _reference(image, lm.astype(np.float64), table)
    out_img, out_lm, _, params = alignment.align_sample(image, lm)
    np.testing.assert_allclose(params.as_array(), ref_params, rtol=1e-9, atol=1e-7)
    np.testing.assert_array_equal(out_img, ref_img)
    np.testing.assert_allclose(out_lm, ref_lm, atol=1e-3)


def test_pos_recovers_a_known_similarity():
  table = ibug.standard_landmarks() / 100.0
  k, c = 37.5, np.array([61.0, 44.0])
  lm = c + k * table[:, :2] * np.array([1.0, -1.0])  # image y down
  params = alignment.estimate(lm, 128, 96)
  np.testing.assert_allclose(params.scale, 102.0 / k, rtol=1e-9)
  np.testing.assert_allclose([params.tx, params.ty], [c[0], 96 - c[1]], atol=1e-9)


def test_landmarks_round_trip_and_follow_the_image():
  rng = np.random.default_rng(1)
  image, lm, mask = toy.make_sample(rng, 120, 100)
  params = alignment.estimate(lm, 120, 100)
  for convention in alignment.LANDMARK_CONVENTIONS:
    moved = alignment.align_landmarks(lm, params, convention)
    np.testing.assert_allclose(
      alignment.unalign_landmarks(moved, params, convention), lm, atol=2e-4
    )
  # A Gaussian blob at one landmark: its centroid in the aligned image is the pixel-convention
  # landmark (the image transform), and the Deep3D convention is within 2 px of it.
  yy, xx = np.mgrid[0:100, 0:120]
  for k in (8, 30, 36, 54):
    blob = np.exp(-((xx - lm[k, 0]) ** 2 + (yy - lm[k, 1]) ** 2) / (2 * 2.0**2))
    img = np.repeat((blob * 255).astype(np.uint8)[..., None], 3, 2)
    out = alignment.align_image(img, params)[..., 0].astype(float)
    gy, gx = np.mgrid[0:224, 0:224]
    centroid = np.array([(out * gx).sum(), (out * gy).sum()]) / out.sum()
    pixel = alignment.align_landmarks(lm[k : k + 1], params, "pixel")[0]
    deep3d = alignment.align_landmarks(lm[k : k + 1], params, "deep3d")[0]
    np.testing.assert_allclose(centroid, pixel, atol=0.15)
    assert np.abs(deep3d - pixel).max() < 2.0


def test_mask_follows_and_paste_back_inverts():
  rng = np.random.default_rng(2)
  image, lm, mask = toy.make_sample(rng, 200, 180)
  params = alignment.estimate(lm, 200, 180)
  aligned_mask = alignment.align_mask(mask * 255, params)
  assert set(np.unique(aligned_mask)) <= {0, 1}
  expected = alignment.align_image(np.repeat(mask[..., None] * 255, 3, 2), params)[..., 0] >= 128
  assert (aligned_mask != expected).mean() < 0.01
  # A smooth photo: align, paste back over black, compare inside the aligned square.
  yy, xx = np.mgrid[0:180, 0:200]
  photo = np.stack([xx * 1.1, yy * 1.2, 0.5 * (xx + yy)], -1).clip(0, 255).astype(np.uint8)
  aligned = alignment.align_image(photo, params)
  back = alignment.paste_back(aligned, params, np.zeros_like(photo))
  corners = alignment.unalign_landmarks(np.array([[8.0, 8.0], [215.0, 215.0]]), params, "pixel")
  (x0, y0), (x1, y1) = np.ceil(corners[0]).astype(int), np.floor(corners[1]).astype(int)
  inside = (slice(max(y0, 0), min(y1, 179)), slice(max(x0, 0), min(x1, 199)))
  err = np.abs(back[inside].astype(float) - photo[inside].astype(float))
  assert err.mean() < 1.0 and err.max() <= 3.0, (err.mean(), err.max())
