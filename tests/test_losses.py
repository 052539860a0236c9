"""Losses vs independent NumPy references (loops), edge cases, finite differences, jit/vmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax import losses
from focus_jax.facemodels import landmarks as ibug

B, H, W, C = 2, 12, 10, 3


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  image = rng.uniform(0, 1, (B, H, W, C))
  # Renders close to the image on part of the pixels so both inlier and outlier pixels occur.
  render = image + rng.normal(0, 0.06, image.shape)
  render_mask = (rng.uniform(size=(B, H, W)) < 0.7).astype(np.float64)
  unet_mask = rng.uniform(size=(B, H, W))
  return image, render, render_mask, unet_mask


def _f32(*xs):
  return [jnp.asarray(x, jnp.float32) for x in xs]


# ----------------------------------------------------------------------------- references


def ref_photometric(image, render, mask, sigma=0.043, k=3.0):
  total, inlier = 0.0, np.zeros(mask.shape)
  norm = -1.5 * math.log(2 * math.pi) - 3 * math.log(sigma)
  for b in range(B):
    for y in range(H):
      for x in range(W):
        d2 = sum((image[b, y, x, c] - render[b, y, x, c]) ** 2 for c in range(C))
        fg = -0.5 * d2 / sigma**2 + norm
        bg = -0.5 * k**2 + norm
        if fg > bg:
          inlier[b, y, x] = mask[b, y, x]
          total += mask[b, y, x] * fg
  return -total / (B * H * W), inlier


def ref_masked_rec(image, render, mask):
  num = sum(
    np.sqrt(sum((mask[b, y, x] * (image[b, y, x, c] - render[b, y, x, c])) ** 2 for c in range(C)))
    for b in range(B)
    for y in range(H)
    for x in range(W)
  )
  return num / max(mask.sum(), 1.0)


def ref_neighbour(image, render, mask, window=5):
  m = window // 2
  n_b, h, w, _ = image.shape
  ri, ii = render * mask[..., None], image * mask[..., None]
  vals = []
  for b in range(n_b):
    for y in range(m, h - m):
      for x in range(m, w - m):
        vals.append(
          min(
            np.linalg.norm(ri[b, y, x] - ii[b, y + i, x + j])
            for i in range(-m, m + 1)
            for j in range(-m, m + 1)
          )
        )
  return np.mean(vals)


def ref_channel_cosine(a, b, width_normalize=False):
  if width_normalize:
    a = a / np.maximum(np.linalg.norm(a, axis=2, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=2, keepdims=True), 1e-12)
  vals = []
  n_b, h, w, _ = a.shape
  for i in range(n_b):
    for y in range(h):
      for x in range(w):
        u, v = a[i, y, x], b[i, y, x]
        cos = u @ v / (max(np.linalg.norm(u), 1e-6) * max(np.linalg.norm(v), 1e-6))
        vals.append(1 - cos)
  return np.mean(vals)


# ----------------------------------------------------------------------------- values


def test_robust_photometric_matches_loops():
  image, render, rmask, _ = _inputs()
  loss, inlier = losses.robust_photometric(*_f32(image, render, rmask))
  ref_loss, ref_inlier = ref_photometric(image, render, rmask)
  # Inlier sets can differ only for pixels within float32 rounding of the 3-sigma boundary.
  d2 = np.sum((image - render) ** 2, -1)
  away = np.abs(d2 - (3 * 0.043) ** 2) > 1e-5
  np.testing.assert_array_equal(np.asarray(inlier)[away], ref_inlier[away])
  assert 0 < ref_inlier.sum() < rmask.sum()  # Both inliers and outliers occur.
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)


def test_robust_photometric_edge_cases():
  image, render, rmask, _ = _inputs()
  # Zero-area render and all-outlier images: nothing counts, the loss is exactly 0.
  for args in ((image, render, 0 * rmask), (image, image + 0.5, rmask)):
    loss, inlier = losses.robust_photometric(*_f32(*args))
    assert float(loss) == 0.0 and float(inlier.sum()) == 0.0
    grad = jax.grad(lambda r, a=args: losses.robust_photometric(*_f32(a[0]), r, a[2])[0])(
      jnp.asarray(args[1], jnp.float32)
    )
    assert np.all(np.asarray(grad) == 0)
  # A perfect render: every rendered pixel is an inlier with the peak log-likelihood.
  loss, inlier = losses.robust_photometric(*_f32(image, image, rmask))
  peak = -1.5 * math.log(2 * math.pi) - 3 * math.log(0.043)
  np.testing.assert_allclose(loss, -peak * rmask.mean(), rtol=1e-5)
  np.testing.assert_array_equal(inlier, rmask)


def test_masked_reconstruction_matches_loops_and_empty_mask():
  image, render, rmask, umask = _inputs()
  m = rmask * umask
  np.testing.assert_allclose(
    losses.masked_reconstruction(*_f32(image, render, m)), ref_masked_rec(image, render, m), 1e-5
  )
  zero = np.zeros_like(m)
  assert float(losses.masked_reconstruction(*_f32(image, render, zero))) == 0.0
  g = jax.grad(losses.masked_reconstruction, argnums=1)(*_f32(image, image, m))
  assert np.all(np.isfinite(g))  # Zero residual everywhere: the norm's gradient stays finite.


def test_landmark_loss_uses_model_weights():
  rng = np.random.default_rng(1)
  gt, pred = rng.uniform(0, 224, (2, B, 68, 2))
  w = ibug.landmark_weights()
  ref = np.mean([(w[k] * (gt[b, k, j] - pred[b, k, j])) ** 2 for b in range(B) for k in range(68)
                 for j in range(2)])  # fmt: skip
  np.testing.assert_allclose(losses.landmark_loss(*_f32(gt, pred)), ref, rtol=1e-5)
  np.testing.assert_allclose(losses.landmark_loss(*_f32(gt, pred, w)), ref, rtol=1e-5)
  assert w[28] == w[30] == w[60] == w[67] == 20 and w[27] == w[31] == w[59] == 1
  with pytest.raises(ValueError, match="weights"):
    losses.landmark_loss(*_f32(gt, pred, w[:60]))


def test_statistical_regularizer():
  rng = np.random.default_rng(2)
  a, d, c = rng.normal(size=(B, 80)), rng.normal(size=(B, 64)), rng.normal(size=(B, 80))
  ref = sum(float(np.sum(x[b] ** 2)) for x in (a, d, c) for b in range(B)) / B / 224
  np.testing.assert_allclose(losses.statistical_regularizer(*_f32(a, d, c)), ref, rtol=1e-5)


def test_perceptual_loss():
  rng = np.random.default_rng(3)
  e1, e2 = rng.normal(size=(2, B, 16))
  ref = np.mean(
    [1 - e1[b] @ e2[b] / np.linalg.norm(e1[b]) / np.linalg.norm(e2[b]) for b in range(B)]
  )
  np.testing.assert_allclose(losses.perceptual_loss(*_f32(e1, e2)), ref, rtol=1e-5)
  np.testing.assert_allclose(losses.perceptual_loss(*_f32(e1, 3 * e1)), 0.0, atol=1e-6)
  g = jax.grad(losses.perceptual_loss)(*_f32(np.zeros((B, 16)), e2))
  assert np.all(np.isfinite(g))


def test_area_and_binary_losses():
  _, _, rmask, umask = _inputs()
  ref_area = np.mean(
    [np.sum(rmask[b] * (1 - umask[b])) / max(np.sum(rmask[b]), 1) for b in range(B)]
  )
  np.testing.assert_allclose(losses.area_loss(*_f32(rmask, umask)), ref_area, rtol=1e-5)
  zero = np.zeros_like(rmask)
  assert float(losses.area_loss(*_f32(zero, umask))) == 0.0  # Zero-area render.
  m = rmask * umask
  ref_bin = 0.5 - np.mean([abs(v - 0.5) for v in m.reshape(-1)])
  np.testing.assert_allclose(losses.binary_loss(*_f32(m)), ref_bin, rtol=1e-5)
  assert float(losses.binary_loss(*_f32(rmask))) == 0.0  # A binary mask costs nothing.


@pytest.mark.parametrize("width_normalize", [False, True])
def test_preserve_and_dist_channel_cosine(width_normalize):
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=(2, B, 5, 7, 8))
  a[0, 1, 2] = 0.0  # A zero feature vector: cosine 0 by the eps clamp.
  ref = ref_channel_cosine(a, b, width_normalize)
  for fn in (losses.preserve_loss, losses.dist_loss):
    np.testing.assert_allclose(fn(*_f32(a, b), width_normalize=width_normalize), ref, rtol=1e-5)
  g = jax.grad(losses.channel_cosine_loss)(*_f32(a, b), width_normalize)
  assert np.all(np.isfinite(g))


def test_width_normalize_changes_the_cosine():
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(2, 1, 4, 6, 8))
  plain = losses.channel_cosine_loss(*_f32(a, b))
  quirk = losses.channel_cosine_loss(*_f32(a, b), width_normalize=True)
  assert abs(float(plain) - float(quirk)) > 1e-3


@pytest.mark.parametrize("window", [1, 3, 5])
def test_neighbour_loss_matches_loops(window):
  image, render, rmask, umask = _inputs(6)
  m = rmask * umask
  got = losses.neighbour_loss(*_f32(image, render, m), window=window)
  np.testing.assert_allclose(got, ref_neighbour(image, render, m, window), rtol=1e-5)
  # Masked everywhere: all distances are zero and so is the gradient (no NaN from the norm).
  g = jax.grad(losses.neighbour_loss, argnums=1)(*_f32(image, render, 0 * m))
  assert np.all(np.asarray(g) == 0)
  with pytest.raises(ValueError, match="odd"):
    losses.neighbour_loss(*_f32(image, render, m), window=4)


def test_bce_with_logits():
  rng = np.random.default_rng(7)
  logits = rng.normal(0, 30, (B, H, W))  # Large logits: the stable form must not overflow.
  labels = (rng.uniform(size=(B, H, W)) < 0.5).astype(np.float64)
  # -log s(z) = log(1 + e^-z) and -log(1 - s(z)) = log(1 + e^z), element by element.
  ref_terms = np.where(labels == 1, np.logaddexp(0, -logits), np.logaddexp(0, logits))
  np.testing.assert_allclose(
    losses.binary_cross_entropy_with_logits(*_f32(logits, labels)), ref_terms.mean(), rtol=1e-5
  )


def _fd_check(fn, x, seed=0, n_dirs=2, eps=1e-6, rtol=1e-6):
  """Directional central finite differences of ``fn`` at ``x`` vs ``jax.grad`` (float64)."""
  rng = np.random.default_rng(seed)
  g = np.asarray(jax.grad(fn)(x))
  for _ in range(n_dirs):
    v = rng.normal(size=x.shape)
    fd = (float(fn(x + eps * v)) - float(fn(x - eps * v))) / (2 * eps)
    np.testing.assert_allclose(np.sum(g * v), fd, rtol=rtol, atol=1e-9)


def _grad_cases():
  image, render, rmask, umask = _inputs(8)
  rng = np.random.default_rng(9)
  image, render, rmask, umask = (jnp.asarray(x, jnp.float64) for x in (image, render, rmask, umask))
  m = rmask * umask
  lm = jnp.asarray(rng.uniform(0, 224, (B, 68, 2)))
  coeffs = jnp.asarray(rng.normal(size=(B, 80)))
  e = jnp.asarray(rng.normal(size=(B, 16)))
  fa, fb = (jnp.asarray(x) for x in rng.normal(size=(2, B, 4, 5, 6)))
  logits = jnp.asarray(rng.normal(0, 3, (B, H, W)))
  return {
    "photometric": (lambda r: losses.robust_photometric(image, r, rmask)[0], render),
    "masked_rec": (lambda r: losses.masked_reconstruction(image, r, m), render),
    "neighbour": (lambda u: losses.neighbour_loss(image, render, rmask * u, window=3), umask),
    "area": (lambda u: losses.area_loss(rmask, u), umask),
    "binary": (lambda u: losses.binary_loss(rmask * u), umask),
    "landmarks": (lambda p: losses.landmark_loss(lm, p), lm + 3.0),
    "stat_reg": (lambda a: losses.statistical_regularizer(a, a[:, :64], 3 * a), coeffs),
    "perceptual": (lambda x: losses.perceptual_loss(x, e[::-1]), e),
    "dist": (lambda x: losses.dist_loss(x, fb), fa),
    "preserve_quirk": (lambda x: losses.preserve_loss(x, fb, width_normalize=True), fa),
    "bce": (lambda z: losses.binary_cross_entropy_with_logits(z, rmask), logits),
  }


@pytest.mark.parametrize(
  "name",
  ["photometric", "masked_rec", "neighbour", "area", "binary", "landmarks", "stat_reg",
   "perceptual", "dist", "preserve_quirk", "bce"],
)  # fmt: skip
def test_gradient_matches_finite_differences(name):
  with jax.enable_x64(True):
    fn, x = _grad_cases()[name]
    _fd_check(fn, x)


# ----------------------------------------------------------------------------- jit / vmap


def test_jit_and_vmap():
  image, render, rmask, umask = _f32(*_inputs(10))
  m = rmask * umask

  def bundle(image, render, rmask, m):
    return jnp.stack(
      [
        losses.robust_photometric(image, render, rmask)[0],
        losses.masked_reconstruction(image, render, m),
        losses.area_loss(rmask, m),
        losses.binary_loss(m),
        losses.neighbour_loss(image, render, m, window=3),
      ]
    )

  eager = bundle(image, render, rmask, m)
  np.testing.assert_allclose(jax.jit(bundle)(image, render, rmask, m), eager, rtol=1e-5)
  # vmap over an outer axis (e.g. per-device groups) equals the per-group calls.
  stacked = [jnp.stack([x, x[::-1]]) for x in (image, render, rmask, m)]
  out = jax.vmap(bundle)(*stacked)
  np.testing.assert_allclose(out[0], eager, rtol=1e-5)
  np.testing.assert_allclose(out[1], bundle(image[::-1], render[::-1], rmask[::-1], m[::-1]), 1e-5)
