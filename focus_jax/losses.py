"""The FOCUS training losses (SPEC §6) as pure functions, and their weightings (SPEC §7).

Conventions (the batch convention of ``focus_jax.render``):

- Images are NHWC float32 ``(B, H, W, C)`` in [0, 1] (renders may exceed 1), ``C = 3`` (RGB).
- Masks are ``(B, H, W)`` float32. The rendered mask is the renderer's hard coverage in {0, 1};
  the UNet mask is its sigmoid output in [0, 1] with 1 = visible face (not occluded).
  "M" below is always the product ``rendered mask * UNet mask`` (the original's
  ``valid_loss_mask``); the caller forms it.
- Landmarks are ``(B, 68, 2)`` float32 pixel (x, y), iBUG-68 order.
- Shallow feature maps are NHWC ``(B, h, w, C)``; embeddings ``(B, D)``.

Every loss is a scalar. The normalisations are those of the original PyTorch release
(unibas-gravis/Occlusion-Robust-MoFA); where it normalises over the whole batch rather than per
image the docstring says so. All functions are jit-, vmap- and grad-safe: norms use a square root
whose gradient is 0 (not NaN) at a zero vector, the subgradient the original's ``torch.norm``
takes, and divisions by areas are clamped to at least one pixel as in the original.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from focus_jax.facemodels import landmarks as ibug

PHOTOMETRIC_SIGMA = 0.043
BACKGROUND_SIGMAS = 3.0
# Fixed divisor of the statistical regulariser in the original (the image size, 224).
STAT_REG_DIVISOR = 224.0
# ``torch.nn.CosineSimilarity(eps=1e-6)`` of the original's preserve/dist losses.
COSINE_EPS = 1e-6
# ``torch.nn.functional.normalize`` default epsilon (the width-axis quirk).
NORMALIZE_EPS = 1e-12


def _safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
  """Euclidean norm along ``axis`` whose gradient at a zero vector is 0 instead of NaN."""
  sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _check_rank(name: str, x: jax.Array, rank: int, what: str) -> None:
  if x.ndim != rank:
    raise ValueError(f"{name}: expected {what} (rank {rank}), got shape {tuple(x.shape)}")


def _check_images(image: jax.Array, render: jax.Array, mask: jax.Array | None = None) -> None:
  _check_rank("image", image, 4, "(B, H, W, C)")
  if render.shape != image.shape:
    raise ValueError(f"render: shape {tuple(render.shape)} differs from image {image.shape}")
  if mask is not None and mask.shape != image.shape[:3]:
    raise ValueError(f"mask: expected shape {tuple(image.shape[:3])}, got {tuple(mask.shape)}")


# --------------------------------------------------------------------------------------------
# Stage 1 and encoder losses.


def robust_photometric(
  image: jax.Array,
  render: jax.Array,
  render_mask: jax.Array,
  sigma: float = PHOTOMETRIC_SIGMA,
  background_sigmas: float = BACKGROUND_SIGMAS,
) -> tuple[jax.Array, jax.Array]:
  """Occlusion-robust photometric loss of stage 1 and its inlier ("occlusion") mask.

  Per pixel, with ``d2 = sum_c (I - R)^2`` over the C channels, the Gaussian log-likelihood is

      L_fg = -d2 / (2 sigma^2) - (C/2) log(2 pi) - C log(sigma),

  and the constant background log-likelihood is ``L_bg`` = the same expression at
  ``d2 = (background_sigmas * sigma)^2``. A pixel is an inlier when ``L_fg > L_bg`` strictly,
  i.e. ``d2 < (background_sigmas * sigma)^2``, and the inlier mask is
  ``S = render_mask * [d2 < (k sigma)^2]``. The loss is

      loss = -(1 / (B H W)) sum_{b,y,x} S * L_fg,

  a mean over all ``B*H*W`` pixels (not over inliers). The indicator is a discrete choice and
  carries no gradient; gradients reach ``render`` (and ``render_mask`` if it is soft) through
  ``S * L_fg``. The loss can be negative (it is a negative log-likelihood of a density).

  Args:
    image: ``(B, H, W, C)`` float32 target images in [0, 1].
    render: ``(B, H, W, C)`` float32 rendered images.
    render_mask: ``(B, H, W)`` float32 rendered coverage (hard {0, 1} in FOCUS).
    sigma: standard deviation of the foreground Gaussian (0.043).
    background_sigmas: the background likelihood is that of a ``background_sigmas * sigma``
      residual (3).

  Returns:
    ``(loss, inlier_mask)``: the scalar loss and the ``(B, H, W)`` float32 inlier mask ``S``
    (the stage-1 pseudo label of SPEC §7 step 2).
  """
  _check_images(image, render, render_mask)
  channels = image.shape[-1]
  d2 = jnp.sum(jnp.square(image - render), axis=-1)
  normalizer = -0.5 * channels * math.log(2.0 * math.pi) - channels * math.log(sigma)
  log_likelihood = -0.5 * d2 / (sigma * sigma) + normalizer
  inlier = jax.lax.stop_gradient((d2 < (background_sigmas * sigma) ** 2).astype(d2.dtype))
  inlier_mask = render_mask * inlier
  return -jnp.mean(inlier_mask * log_likelihood), inlier_mask


def masked_reconstruction(image: jax.Array, render: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked reconstruction loss of the EM encoder step.

      loss = sum_{b,y,x} || M (I - R) ||_2  /  max(sum_{b,y,x} M, 1)

  with the L2 norm over the channels. Both sums run over the whole batch (the original
  normalises by the batch's total mask area, not per image).

  Args:
    image: ``(B, H, W, C)`` float32 target images.
    render: ``(B, H, W, C)`` float32 rendered images.
    mask: ``(B, H, W)`` float32 ``M = rendered mask * UNet mask``.

  Returns:
    Scalar loss.
  """
  _check_images(image, render, mask)
  per_pixel = _safe_norm(mask[..., None] * (image - render))
  return jnp.sum(per_pixel) / jnp.maximum(jnp.sum(mask), 1.0)


def landmark_loss(
  landmarks: jax.Array, projected: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
  """Weighted landmark loss.

      loss = mean_{b, k, j} (w_k (lm_gt[b, k, j] - lm_proj[b, k, j]))^2

  over ``B * 68 * 2`` entries; the weight multiplies the residual before squaring (so a weight
  of 20 counts 400 times), as in the original.

  Args:
    landmarks: ``(B, 68, 2)`` float32 ground-truth pixel landmarks.
    projected: ``(B, 68, 2)`` float32 projected model landmarks.
    weights: ``(68,)`` float32 per-landmark weights; ``None`` uses
      ``ibug.landmark_weights()`` (20 on iBUG 28..30 and 60..67, else 1), the same
      values as ``model.landmark_weights``.

  Returns:
    Scalar loss (pixels^2).
  """
  _check_rank("landmarks", landmarks, 3, "(B, N, 2)")
  if projected.shape != landmarks.shape:
    raise ValueError(f"projected: shape {projected.shape} differs from landmarks {landmarks.shape}")
  if weights is None:
    weights = ibug.landmark_weights()
  weights = jnp.asarray(weights, landmarks.dtype)
  if weights.shape != landmarks.shape[1:2]:
    raise ValueError(f"weights: expected shape ({landmarks.shape[1]},), got {weights.shape}")
  return jnp.mean(jnp.square(weights[None, :, None] * (landmarks - projected)))


def statistical_regularizer(
  shape: jax.Array,
  expression: jax.Array,
  color: jax.Array,
  divisor: float = STAT_REG_DIVISOR,
) -> jax.Array:
  """Statistical (coefficient) regulariser.

      loss = (sum alpha^2 + sum delta^2 + sum beta^2) / B / divisor

  summed over the batch and the used components, ``divisor = 224``. Pass the coefficients as
  the morphable model uses them, i.e. after the encoder-head scalings (the original
  regularises ``3 * color``) and restricted to the used components (80/64/80).

  Args:
    shape: ``(B, K_shape)`` float32 shape coefficients ``alpha``.
    expression: ``(B, K_exp)`` float32 expression coefficients ``delta``.
    color: ``(B, K_color)`` float32 colour coefficients ``beta``.
    divisor: the constant divisor (224).

  Returns:
    Scalar loss.
  """
  for name, x in (("shape", shape), ("expression", expression), ("color", color)):
    _check_rank(name, x, 2, "(B, K)")
  batch = shape.shape[0]
  total = jnp.sum(jnp.square(shape)) + jnp.sum(jnp.square(expression)) + jnp.sum(jnp.square(color))
  return total / batch / divisor


def _normalize(x: jax.Array, axis: int, eps: float) -> jax.Array:
  return x / jnp.maximum(_safe_norm(x, axis=axis, keepdims=True), eps)


def perceptual_loss(render_embedding: jax.Array, image_embedding: jax.Array) -> jax.Array:
  """Deep perceptual (identity) loss.

      loss = mean_b (1 - <e_R[b] / ||e_R[b]||, e_I[b] / ||e_I[b]||>)

  The embeddings are re-normalised here (each norm clamped to ``1e-12``, like
  ``F.normalize``); for the already L2-normalised ArcFace outputs this is the identity, and the
  loss equals the original's ``sum(1 - <e_R, e_I>) / B``.

  Args:
    render_embedding: ``(B, D)`` float32 embeddings of the renders (warped with the projected
      landmarks).
    image_embedding: ``(B, D)`` float32 embeddings of the target images (warped with the
      ground-truth landmarks).

  Returns:
    Scalar loss in [0, 2].
  """
  _check_rank("render_embedding", render_embedding, 2, "(B, D)")
  if image_embedding.shape != render_embedding.shape:
    raise ValueError(
      f"image_embedding: shape {image_embedding.shape} differs from {render_embedding.shape}"
    )
  a = _normalize(render_embedding, -1, NORMALIZE_EPS)
  b = _normalize(image_embedding, -1, NORMALIZE_EPS)
  return jnp.mean(1.0 - jnp.sum(a * b, axis=-1))


def area_loss(render_mask: jax.Array, unet_mask: jax.Array) -> jax.Array:
  """Area loss: the fraction of the rendered face the UNet calls occluded.

      loss = mean_b [ sum_{y,x} R_b (1 - U_b) / max(sum_{y,x} R_b, 1) ]

  normalised per image (unlike :func:`masked_reconstruction`).

  Args:
    render_mask: ``(B, H, W)`` float32 rendered mask ``R``.
    unet_mask: ``(B, H, W)`` float32 UNet visibility mask ``U`` in [0, 1].

  Returns:
    Scalar loss in [0, 1].
  """
  _check_rank("render_mask", render_mask, 3, "(B, H, W)")
  if unet_mask.shape != render_mask.shape:
    raise ValueError(f"unet_mask: shape {unet_mask.shape} differs from {render_mask.shape}")
  occluded = jnp.sum(render_mask * (1.0 - unet_mask), axis=(1, 2))
  return jnp.mean(occluded / jnp.maximum(jnp.sum(render_mask, axis=(1, 2)), 1.0))


def binary_loss(mask: jax.Array) -> jax.Array:
  """Binary loss pushing the mask to {0, 1}.

      loss = 0.5 - mean_{b,y,x} |M - 0.5|

  Args:
    mask: ``(B, H, W)`` float32 ``M = rendered mask * UNet mask``.

  Returns:
    Scalar loss in [0, 0.5]; 0 for a binary mask.
  """
  _check_rank("mask", mask, 3, "(B, H, W)")
  return 0.5 - jnp.mean(jnp.abs(mask - 0.5))


def channel_cosine_loss(
  features_a: jax.Array, features_b: jax.Array, width_normalize: bool = False
) -> jax.Array:
  """Mean over pixels of one minus the cosine similarity over channels of two feature maps.

      loss = mean_{b,y,x} (1 - <a, b> / (max(||a||, eps) max(||b||, eps)))

  with the dot products and norms over the channel axis at each feature pixel and
  ``eps = 1e-6`` (``torch.nn.CosineSimilarity(dim=1, eps=1e-6)``).

  ``width_normalize=True`` reproduces an original quirk: its ArcFace wrapper L2-normalises every
  output along the last axis of the NCHW tensor, which for a shallow ``(B, 64, 56, 56)`` map is
  the width axis; each ``(b, y, c)`` row is then divided by its norm over x (clamped to 1e-12)
  before the channel cosine. That rescales every channel differently per image row, so it
  changes the cosine. The default (False) is the plain channel cosine of the features, which is
  what the paper describes; the weights of SPEC §7 were tuned with the quirk, so a run that wants
  the original's exact objective sets the flag.

  Args:
    features_a: ``(B, h, w, C)`` float32 NHWC feature map.
    features_b: ``(B, h, w, C)`` float32 NHWC feature map.
    width_normalize: apply the original's width-axis normalisation first.

  Returns:
    Scalar loss in [0, 2].
  """
  _check_rank("features_a", features_a, 4, "(B, h, w, C)")
  if features_b.shape != features_a.shape:
    raise ValueError(f"features_b: shape {features_b.shape} differs from {features_a.shape}")
  if width_normalize:
    features_a = _normalize(features_a, 2, NORMALIZE_EPS)
    features_b = _normalize(features_b, 2, NORMALIZE_EPS)
  dot = jnp.sum(features_a * features_b, axis=-1)
  norm_a = jnp.maximum(_safe_norm(features_a), COSINE_EPS)
  norm_b = jnp.maximum(_safe_norm(features_b), COSINE_EPS)
  return jnp.mean(1.0 - dot / (norm_a * norm_b))


def preserve_loss(
  image_features: jax.Array, masked_image_features: jax.Array, width_normalize: bool = False
) -> jax.Array:
  """Preserve loss: channel cosine of shallow features of ``I`` vs ``I * M``.

  See :func:`channel_cosine_loss` for the formula and the ``width_normalize`` quirk.

  Args:
    image_features: ``(B, h, w, C)`` float32 shallow ArcFace features of the target image.
    masked_image_features: ``(B, h, w, C)`` float32 shallow features of ``I * M``.
    width_normalize: the original's width-axis normalisation quirk.

  Returns:
    Scalar loss.
  """
  return channel_cosine_loss(image_features, masked_image_features, width_normalize)


def dist_loss(
  masked_render_features: jax.Array,
  masked_image_features: jax.Array,
  width_normalize: bool = False,
) -> jax.Array:
  """Dist loss: channel cosine of shallow features of ``R * M`` vs ``I * M``.

  See :func:`channel_cosine_loss` for the formula and the ``width_normalize`` quirk.

  Args:
    masked_render_features: ``(B, h, w, C)`` float32 shallow features of ``R * M``.
    masked_image_features: ``(B, h, w, C)`` float32 shallow features of ``I * M``.
    width_normalize: the original's width-axis normalisation quirk.

  Returns:
    Scalar loss.
  """
  return channel_cosine_loss(masked_render_features, masked_image_features, width_normalize)


def neighbour_distance(
  image: jax.Array, render: jax.Array, mask: jax.Array, window: int = 5
) -> jax.Array:
  """The per-pixel term of :func:`neighbour_loss`: ``n(p)`` of every interior pixel.

  Args are those of :func:`neighbour_loss`.

  Returns:
    ``(B, H - 2m, W - 2m)`` float32, ``m = window // 2``: entry ``(b, y, x)`` is ``n`` at pixel
    ``(y + m, x + m)``.
  """
  _check_images(image, render, mask)
  if window < 1 or window % 2 != 1:
    raise ValueError(f"window: expected an odd positive size, got {window}")
  _, height, width, _ = image.shape
  m = window // 2
  if window > min(height, width):
    raise ValueError(f"window: {window} exceeds the image size {height}x{width}")
  masked_render = (render * mask[..., None])[:, m : height - m, m : width - m]
  masked_image = image * mask[..., None]
  lowest = None
  # A running minimum over the offsets keeps one (B, H', W') buffer instead of window^2.
  for i in range(-m, m + 1):
    for j in range(-m, m + 1):
      shifted = masked_image[:, m + i : height - m + i, m + j : width - m + j]
      dist = _safe_norm(masked_render - shifted)
      lowest = dist if lowest is None else jnp.minimum(lowest, dist)
  return lowest


def neighbour_loss(
  image: jax.Array, render: jax.Array, mask: jax.Array, window: int = 5
) -> jax.Array:
  """Neighbour loss: masked render vs the best-matching nearby masked target pixel.

  With ``m = window // 2``, for every interior pixel ``p = (y, x)``, ``m <= y < H - m``,
  ``m <= x < W - m``:

      n(p) = min_{|i|, |j| <= m} || (R M)(y, x) - (I M)(y + i, x + j) ||_2,

  the norm over the channels, and ``loss = mean_{b, p} n(p)`` over ``B (H - 2m) (W - 2m)``
  interior pixels (:func:`neighbour_distance` gives the ``n(p)``). At ties of the minimum the
  gradient is shared between the tied offsets.

  Args:
    image: ``(B, H, W, C)`` float32 target images ``I``.
    render: ``(B, H, W, C)`` float32 rendered images ``R``.
    mask: ``(B, H, W)`` float32 ``M = rendered mask * UNet mask``.
    window: odd window size (5), at most ``min(H, W)``.

  Returns:
    Scalar loss.
  """
  return jnp.mean(neighbour_distance(image, render, mask, window))


def binary_cross_entropy_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Binary cross-entropy of UNet logits against {0, 1} (or soft) labels, mean over entries.

      loss = mean(-y log s(z) - (1 - y) log(1 - s(z)))
           = mean(max(z, 0) - z y + log(1 + exp(-|z|)))

  with ``s`` the logistic sigmoid, in the overflow-free form. ``logits`` are the pre-sigmoid
  values, for the FOCUS UNet ``z = 5 x`` where ``x`` is its last 1x1 convolution. This fixes the
  original's step-3 quirk (BCE-with-logits applied to the already sigmoided output).

  Args:
    logits: ``(B, H, W)`` (any shape) float32 logits.
    labels: float32 labels in [0, 1], same shape (the stage-1 inlier masks).

  Returns:
    Scalar loss.
  """
  if logits.shape != labels.shape:
    raise ValueError(f"labels: shape {labels.shape} differs from logits {logits.shape}")
  return jnp.mean(jnp.maximum(logits, 0.0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits))))


__all__ = [
  "BACKGROUND_SIGMAS",
  "PHOTOMETRIC_SIGMA",
  "area_loss",
  "binary_cross_entropy_with_logits",
  "binary_loss",
  "channel_cosine_loss",
  "dist_loss",
  "landmark_loss",
  "masked_reconstruction",
  "neighbour_loss",
  "perceptual_loss",
  "preserve_loss",
  "robust_photometric",
  "statistical_regularizer",
]
