"""Affine image warps: least-squares similarities, their inverses, bilinear warping.

Pure JAX (jit / vmap / grad safe). Conventions: images NHWC float32, landmarks pixel ``(x, y)``
with pixel centres at integer coordinates (x = column, y = row), as in the rest of focus_jax
and as in OpenCV's ``warpAffine`` / kornia's ``warp_affine(align_corners=True)`` used by the
original.

- :func:`similarity_transform`: the least-squares similarity (scale, rotation, translation;
  Umeyama without reflections) mapping source points onto destination points, in closed form.
  In 2D the optimum over scaled rotations ``[[a, -b], [b, a]]`` is linear least squares, so
  no SVD is needed (the original's SVD failed to converge after long training). Degenerate
  sources (all points equal, or spread below 1e-6 of the destination spread) fall back to
  a translation that maps the source centroid onto the destination centroid, finite in value
  and gradient.
- :func:`warp_affine`: output pixel ``p`` samples the input at ``M^-1 p`` bilinearly, zero
  outside the image (OpenCV ``BORDER_CONSTANT``); linear, hence differentiable, in the image.
- :func:`invert_affine`: the inverse map, for NumPy (data alignment) and JAX arrays alike.

The ArcFace crop built on these is :mod:`focus_jax.models.arcface_align`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Source spreads below this fraction of the destination spread count as degenerate: it bounds
# the fitted scale by 1e3 so that the inverse warp stays finite in float32.
_DEGENERATE_RATIO = 1e-6
_HIGHEST = jax.lax.Precision.HIGHEST


def similarity_transform(src: jax.Array, dst: jax.Array) -> jax.Array:
  """Least-squares similarity ``M`` with ``dst ~ M [src; 1]``.

  Args:
    src: ``(..., N, 2)`` float32 source points.
    dst: ``(..., N, 2)`` float32 destination points (broadcast against ``src``).

  Returns:
    ``(..., 2, 3)`` float32 affine matrix ``[[a, -b, tx], [b, a, ty]]``.
  """
  src = jnp.asarray(src, jnp.float32)
  dst = jnp.asarray(dst, jnp.float32)
  src_mean = jnp.mean(src, axis=-2, keepdims=True)
  dst_mean = jnp.mean(dst, axis=-2, keepdims=True)
  s = src - src_mean
  d = dst - dst_mean
  src_var = jnp.sum(s * s, axis=(-2, -1))
  dst_var = jnp.sum(d * d, axis=(-2, -1))
  dot = jnp.sum(s * d, axis=(-2, -1))
  cross = jnp.sum(s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0], axis=-1)
  degenerate = src_var <= _DEGENERATE_RATIO * dst_var
  # Double where: the unused branch must not divide by ~0, or its NaN gradient leaks through.
  safe_var = jnp.where(degenerate, 1.0, src_var)
  a = jnp.where(degenerate, 1.0, dot / safe_var)
  b = jnp.where(degenerate, 0.0, cross / safe_var)
  rotation = jnp.stack([jnp.stack([a, -b], -1), jnp.stack([b, a], -1)], -2)
  translation = dst_mean[..., 0, :] - jnp.einsum(
    "...ij,...j->...i", rotation, src_mean[..., 0, :], precision=_HIGHEST
  )
  return jnp.concatenate([rotation, translation[..., :, None]], axis=-1)


def invert_affine(matrix):
  """Inverse of affine maps ``(..., 2, 3)`` -> ``(..., 2, 3)``.

  NumPy in (float64), NumPy out; JAX in (traceable), JAX out. A singular linear part (impossible
  for similarities) gives the identity instead of infinities.
  """
  xp = jnp if isinstance(matrix, jax.Array) else np
  matrix = xp.asarray(matrix, jnp.float32 if xp is jnp else np.float64)
  lin = matrix[..., :2]
  det = lin[..., 0, 0] * lin[..., 1, 1] - lin[..., 0, 1] * lin[..., 1, 0]
  singular = xp.abs(det) < 1e-12
  safe_det = xp.where(singular, 1.0, det)
  adj = xp.stack(
    [
      xp.stack([lin[..., 1, 1], -lin[..., 0, 1]], -1),
      xp.stack([-lin[..., 1, 0], lin[..., 0, 0]], -1),
    ],
    -2,
  )
  inv = xp.where(singular[..., None, None], xp.eye(2), adj / safe_det[..., None, None])
  # An elementwise product and sum instead of a matmul: exact float32 on every backend.
  shift = -xp.sum(inv * matrix[..., None, :, 2], axis=-1)
  return xp.concatenate([inv, shift[..., :, None]], axis=-1)


def _sample_bilinear(image: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  """Bilinear sample of ``image (H, W, C)`` at ``(x, y)`` of shape ``(h, w)``, 0 outside."""
  height, width = image.shape[:2]
  # Far-away coordinates only ever read zeros; clipping keeps the int conversion in range.
  x = jnp.clip(x, -2.0, width + 1.0)
  y = jnp.clip(y, -2.0, height + 1.0)
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  fx = (x - x0)[..., None]
  fy = (y - y0)[..., None]
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)

  def tap(xi, yi):
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    value = image[jnp.clip(yi, 0, height - 1), jnp.clip(xi, 0, width - 1)]
    return jnp.where(inside[..., None], value, 0.0)

  top = tap(x0, y0) * (1 - fx) + tap(x0 + 1, y0) * fx
  bottom = tap(x0, y0 + 1) * (1 - fx) + tap(x0 + 1, y0 + 1) * fx
  return top * (1 - fy) + bottom * fy


def warp_affine(images: jax.Array, matrices: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Warps images with forward affine maps (``cv2.warpAffine`` semantics, bilinear, zero border).

  Args:
    images: ``(B, H, W, C)`` float32.
    matrices: ``(B, 2, 3)`` float32 maps from input pixel ``(x, y)`` to output pixel.
    size: output ``(height, width)``.

  Returns:
    ``(B, height, width, C)`` float32.
  """
  if images.ndim != 4 or matrices.shape != (images.shape[0], 2, 3):
    raise ValueError(
      f"warp_affine expects images (B, H, W, C) and matrices (B, 2, 3), got {images.shape} "
      f"and {matrices.shape}"
    )
  height, width = size
  ys, xs = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
  )
  grid = jnp.stack([xs, ys, jnp.ones_like(xs)], axis=-1)  # (h, w, 3) homogeneous output pixels.
  inverse = invert_affine(matrices)
  src = jnp.einsum("bij,hwj->bhwi", inverse, grid, precision=_HIGHEST)
  return jax.vmap(_sample_bilinear)(images, src[..., 0], src[..., 1])
