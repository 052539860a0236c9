"""Face alignment: 5 points, closed-form similarity fit, bilinear affine warp."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.facemodels import landmarks as ibug
from focus_jax.models import arcface_align
from focus_jax.render import warp


def _similarity(scale, angle, shift) -> np.ndarray:
  c, s = scale * np.cos(angle), scale * np.sin(angle)
  return np.array([[c, -s, shift[0]], [s, c, shift[1]]], np.float64)


def _apply(matrix, points):
  return points @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def _umeyama(src, dst):
  """Reference least-squares similarity (Umeyama 1991, SVD, no reflection) in float64."""
  mu_s, mu_d = src.mean(0), dst.mean(0)
  s, d = src - mu_s, dst - mu_d
  u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
  sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
  rot = u @ sign @ vt
  scale = np.trace(np.diag(sigma) @ sign) / (s**2).sum(1).mean()
  return np.concatenate([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]], 1)


def test_five_points_from_68():
  lm = np.random.default_rng(0).uniform(0, 224, (2, 68, 2)).astype(np.float32)
  got = np.asarray(ibug.five_points(jnp.asarray(lm)))
  expected = np.stack(
    [(lm[:, 36] + lm[:, 39]) / 2, (lm[:, 42] + lm[:, 45]) / 2, lm[:, 30], lm[:, 48], lm[:, 54]],
    axis=1,
  )
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_known_similarity_is_recovered():
  rng = np.random.default_rng(1)
  src = rng.uniform(40, 180, (5, 2))
  truth = _similarity(0.55, 0.3, (-12.0, 7.5))
  got = warp.similarity_transform(jnp.asarray(src), jnp.asarray(_apply(truth, src)))
  np.testing.assert_allclose(got, truth, atol=2e-5)


def test_noisy_fit_matches_umeyama_and_batches():
  rng = np.random.default_rng(2)
  src = rng.uniform(40, 180, (3, 5, 2))
  dst = arcface_align.ARCFACE_TEMPLATE + rng.normal(0, 3, (3, 5, 2))
  got = jax.jit(warp.similarity_transform)(jnp.asarray(src), jnp.asarray(dst))
  for i in range(3):
    np.testing.assert_allclose(got[i], _umeyama(src[i], dst[i]), atol=1e-4)


def test_degenerate_landmarks_stay_finite():
  lm = jnp.full((1, 68, 2), 100.0)
  image = jnp.asarray(np.random.default_rng(3).uniform(size=(1, 32, 32, 3)), jnp.float32)
  matrix = arcface_align.arcface_matrices(lm)
  # Fallback: unit scale, no rotation, the point sent to the template centroid.
  np.testing.assert_allclose(matrix[0, :, :2], np.eye(2))
  np.testing.assert_allclose(
    matrix[0, :, 2], arcface_align.ARCFACE_TEMPLATE.mean(0) - 100.0, rtol=1e-6
  )

  def loss(image, lm):
    return jnp.sum(arcface_align.align_faces(image, lm, 16, detach_transform=False) ** 2)

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  # Exactly degenerate, numerically degenerate, and tiny but regular (scale ~100).
  for spread in (0.0, 1e-5, 0.5):
    points = lm + jnp.linspace(0, spread, 136).reshape(1, 68, 2)
    value, (grad_image, grad_lm) = value_and_grad(image, points)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad_image)) and np.all(np.isfinite(grad_lm))


def test_warp_matches_opencv():
  rng = np.random.default_rng(4)
  # Smooth image: OpenCV quantises sample positions to 1/32 px, so keep gradients small.
  image = cv2.GaussianBlur(rng.uniform(size=(64, 48, 3)).astype(np.float32), (0, 0), 2.0)
  matrices = np.stack([_similarity(1.3, 0.4, (-10, 5)), _similarity(0.7, -0.2, (20, -3))])
  got = warp.warp_affine(
    jnp.asarray(np.stack([image, image[::-1]])), jnp.asarray(matrices, jnp.float32), (40, 56)
  )
  for i, img in enumerate((image, np.ascontiguousarray(image[::-1]))):
    expected = cv2.warpAffine(
      img, matrices[i], (56, 40), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    np.testing.assert_allclose(got[i], expected, atol=2e-3)
    assert np.abs(expected).max() > 0.1


def test_warp_is_linear_in_the_image():
  """<grad of <w, warp(I)>, v> == <w, warp(v)>: the image gradient is the exact adjoint."""
  rng = np.random.default_rng(5)
  matrix = jnp.asarray(_similarity(0.9, 0.1, (3, -2))[None], jnp.float32)
  image, v = (jnp.asarray(rng.normal(size=(1, 20, 20, 2)), jnp.float32) for _ in range(2))
  weights = jnp.asarray(rng.normal(size=(1, 16, 16, 2)), jnp.float32)
  grad = jax.grad(lambda x: jnp.sum(weights * warp.warp_affine(x, matrix, (16, 16))))(image)
  np.testing.assert_allclose(
    jnp.sum(grad * v), jnp.sum(weights * warp.warp_affine(v, matrix, (16, 16))), rtol=1e-4
  )


def test_align_faces_maps_points_to_template():
  rng = np.random.default_rng(6)
  truth = _similarity(2.0, -0.15, (10.0, 30.0))  # ArcFace crop -> 224 image.
  lm = rng.uniform(0, 224, (68, 2))
  # Both corners of an eye at the template's eye centre: the 5 points are the mapped template.
  lm[[36, 39, 42, 45, 30, 48, 54]] = _apply(
    truth, arcface_align.ARCFACE_TEMPLATE[[0, 0, 1, 1, 2, 3, 4]]
  )
  lm = jnp.asarray(lm[None], jnp.float32)
  matrix = arcface_align.arcface_matrices(lm)[0]
  inverse = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
  np.testing.assert_allclose(matrix, inverse, atol=1e-4)
  # The crop samples the image where the template says: a bright dot at the nose lands there.
  image = np.zeros((1, 224, 224, 1), np.float32)
  nose = np.round(_apply(truth, arcface_align.ARCFACE_TEMPLATE[2])).astype(int)
  image[0, nose[1] - 4 : nose[1] + 5, nose[0] - 4 : nose[0] + 5] = 1.0
  crop = jax.jit(arcface_align.align_faces)(jnp.asarray(image), lm)
  assert crop.shape == (1, 112, 112, 1)
  peak = np.unravel_index(np.argmax(np.asarray(crop[0, ..., 0])), (112, 112))
  np.testing.assert_allclose(peak[::-1], arcface_align.ARCFACE_TEMPLATE[2], atol=3)
