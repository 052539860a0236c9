"""Augmentation: landmarks stay on the image features, flip twice is the identity."""

import numpy as np

from focus_jax.data import augment, toy


def _face(size=64):
  # Small enough that the blobs stay inside the image under every augmentation.
  lm = toy.standard_landmarks_2d() * (size / 320.0) + (size - 1) / 2.0
  return lm.astype(np.float32)


def test_flip_permutation_is_an_involution_with_sensible_pairs():
  perm = augment.FLIP_PERMUTATION
  np.testing.assert_array_equal(perm[perm], np.arange(68))
  pairs = {0: 16, 17: 26, 36: 45, 39: 42, 31: 35, 48: 54, 60: 64, 27: 27, 30: 30, 8: 8, 66: 66}
  for a, b in pairs.items():
    assert perm[a] == b and perm[b] == a


def test_flip_twice_is_identity():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  mask = (rng.uniform(size=(64, 64)) > 0.5).astype(np.uint8)
  lm = _face()
  flip = augment.Transform((0, 0), 1.0, 0.0, True, 64)
  once = augment.apply(flip, image, lm, mask)
  np.testing.assert_array_equal(once[0], image[:, ::-1])  # column i -> 63 - i exactly
  twice = augment.apply(flip, *once)
  np.testing.assert_array_equal(twice[0], image)
  np.testing.assert_array_equal(twice[2], mask)
  np.testing.assert_allclose(twice[1], lm, atol=1e-5)
  # Semantics kept: the image-left eye is still landmark 36..41 after a flip.
  assert once[1][36, 0] < once[1][45, 0] and once[1][0, 0] < once[1][16, 0]


def test_landmarks_follow_image_features():
  lm = _face()
  yy, xx = np.mgrid[0:64, 0:64]
  inverse = np.argsort(augment.FLIP_PERMUTATION)
  for index in range(6):
    t = augment.sample(seed=5, epoch=1, index=index, size=64)
    for k in (0, 8, 19, 30, 36, 45, 48, 62):
      blob = np.exp(-((xx - lm[k, 0]) ** 2 + (yy - lm[k, 1]) ** 2) / (2 * 1.5**2))
      img = (blob * 250).astype(np.float32)[..., None]
      out_img, out_lm, _ = augment.apply(t, img, lm)
      out = np.clip(out_img[..., 0], 0, None)
      centroid = np.array([(out * xx).sum(), (out * yy).sum()]) / out.sum()
      # Input landmark k is output landmark inverse[k] (the same index unless flipped).
      j = inverse[k] if t.flip else k
      np.testing.assert_allclose(centroid, out_lm[j], atol=0.1)


def test_sampling_is_deterministic_and_in_range():
  a = [augment.sample(1, 2, i, 224) for i in range(200)]
  b = [augment.sample(1, 2, i, 224) for i in range(200)]
  assert a == b
  assert a != [augment.sample(1, 3, i, 224) for i in range(200)]
  shifts = np.array([t.shift for t in a])
  assert shifts.min() == -10 and shifts.max() == 10
  assert all(0.9 <= t.scale <= 1.1 and abs(t.rotation_deg) <= 10 for t in a)
  assert 70 < sum(t.flip for t in a) < 130
