"""Soft silhouette (coverage) mask: differentiable at silhouette edges, exact elsewhere.

The hard mask of ``Fragments`` is point-sampled and has no gradient with respect to vertex
positions (the original FOCUS mask is hard and detached). The soft mask replaces it near the
silhouette by a compactly supported smooth ramp of a signed distance ``s`` to the coverage
boundary (pixels, positive inside):

    soft = 0.5 + 0.5 * g(s / sigma),  g(u) = 1.5 u - 0.5 u^3 on [-1, 1], +-1 outside,

so ``soft`` is 0.5 on the boundary, C1 in ``s``, and exactly 0 or 1 once ``|s| >= sigma``.

Distances are local, ``O(H W k)`` with ``k = (2R + 1)^2`` and ``R = ceil(sigma)``:
- a background pixel ``p`` takes the distance to the nearest triangle among the faces visible at
  the pixels of its window (``d_out``, with the nearest point ``c_p`` of that triangle);
- a covered pixel takes the distance to the nearest such point ``c_q`` of the background pixels
  ``q`` of its window (``d_in``): those points lie on the coverage boundary.
A pixel whose window holds no pixel of the other kind keeps its hard value, so the soft mask
equals the hard mask exactly for every pixel further than ``R`` pixels (in x or y) from a
coverage change. Gradients reach the projected vertex positions of the triangles nearest to the
silhouette; moving a silhouette vertex outward increases the mask.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from focus_jax.render import rasterize as rasterize_lib

_TINY = 1e-12


def _ramp(u):
  u = jnp.clip(u, -1.0, 1.0)
  return 0.5 + 0.5 * (1.5 * u - 0.5 * u * u * u)


def _padded(a, radius, fill):
  """``a (H, W, ...)`` padded by ``radius`` pixels with ``fill``: shifts become static slices."""
  pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (a.ndim - 2)
  return jnp.pad(a, pad, constant_values=fill)


def _shift(padded, radius, dy, dx, height, width):
  """``out[y, x] = a[y + dy, x + dx]`` from ``padded = _padded(a, radius, fill)``."""
  return padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]


def _nearest_on_segment(px, py, ax, ay, bx, by):
  dx, dy = bx - ax, by - ay
  t = ((px - ax) * dx + (py - ay) * dy) / jnp.maximum(dx * dx + dy * dy, _TINY)
  t = jnp.clip(t, 0.0, 1.0)
  return ax + t * dx, ay + t * dy


def _nearest_on_triangle(px, py, tx, ty):
  """Nearest point of triangles (three x and three y arrays) to ``(px, py)``, and distance^2.

  Points inside get their nearest edge point; the caller only uses this for points outside.
  """
  cx, cy = zip(
    *(
      _nearest_on_segment(px, py, tx[k], ty[k], tx[(k + 1) % 3], ty[(k + 1) % 3]) for k in range(3)
    ),
    strict=True,
  )
  return _argmin_select(jnp.stack(cx), jnp.stack(cy), px, py)


def _argmin_select(cx, cy, px, py, valid=None):
  """Among stacked candidate points ``(K, ...)`` the one nearest to ``(px, py)``.

  Selecting over a stack (instead of a chain of ``where``) keeps XLA from fusing a long
  dependency chain into one kernel that recomputes it for every output. Where no candidate is
  valid the coordinates are -inf (callers mask those pixels).
  """
  d2 = (cx - px) ** 2 + (cy - py) ** 2
  if valid is not None:
    d2 = jnp.where(valid, d2, jnp.inf)
  nearest = jnp.min(d2, axis=0)
  # A masked max picks the winner's coordinates; a variadic argmin reduction is slow on XLA:CPU.
  hit = d2 == nearest[None]
  pick = lambda a: jnp.max(jnp.where(hit, a, -jnp.inf), axis=0)
  return pick(cx), pick(cy), nearest


def _safe_sqrt(x):
  return jnp.sqrt(jnp.maximum(x, _TINY))


def soft_mask(
  projected: jax.Array,
  triangles: jax.Array,
  fragments: rasterize_lib.Fragments,
  sigma: float = 1.0,
) -> jax.Array:
  """Soft coverage mask in [0, 1], ``(H, W)`` float32.

  Args:
    projected: ``(V, 3)`` float32 (pixel x, pixel y, depth).
    triangles: ``(F, 3)`` int32.
    fragments: ``Fragments`` of the same mesh, ``(H, W)`` fields.
    sigma: static half-width of the ramp in pixels (> 0).
  """
  if not sigma > 0:
    raise ValueError(f"soft_mask: sigma must be > 0 pixels, got {sigma}")
  radius = max(1, math.ceil(sigma))
  face_id = jax.lax.stop_gradient(fragments.face_id)
  height, width = face_id.shape
  covered = face_id >= 0
  idx = triangles[jnp.where(covered, face_id, 0)]  # (H, W, 3)
  # Visible triangle of every pixel in pixel coordinates, (H, W, 3) x and y.
  # Corner coordinates as separate (H, W) planes: with a minor axis of 3, XLA:CPU summed the
  # window's gradients in one scalar loop, ten times slower than the whole forward pass.
  tri_x = [rasterize_lib.gather_rows(projected[:, 0:1], idx[..., k])[..., 0] for k in range(3)]
  tri_y = [rasterize_lib.gather_rows(projected[:, 1:2], idx[..., k])[..., 0] for k in range(3)]
  py, px = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
  )
  offsets = [
    (dy, dx)
    for dy in range(-radius, radius + 1)
    for dx in range(-radius, radius + 1)
    if (dy, dx) != (0, 0)
  ]
  # Background pixels: nearest point of the triangles visible in the window.
  pad_x = [_padded(a, radius, 0.0) for a in tri_x]
  pad_y = [_padded(a, radius, 0.0) for a in tri_y]
  pad_cov = _padded(covered, radius, False)
  found = []
  for dy, dx in offsets:
    tx = [_shift(a, radius, dy, dx, height, width) for a in pad_x]
    ty = [_shift(a, radius, dy, dx, height, width) for a in pad_y]
    found.append(_nearest_on_triangle(px, py, tx, ty)[:2])
  valid = jnp.stack([_shift(pad_cov, radius, dy, dx, height, width) for dy, dx in offsets])
  near_x, near_y, near_d2 = _argmin_select(
    jnp.stack([f[0] for f in found]), jnp.stack([f[1] for f in found]), px, py, valid
  )
  outside = ~covered & jnp.isfinite(near_d2)
  d_out = _safe_sqrt(jnp.where(outside, near_d2, 1.0))
  # Covered pixels: distance to the boundary points found by background pixels of the window.
  pad_nx = _padded(jnp.where(outside, near_x, 0.0), radius, 0.0)
  pad_ny = _padded(jnp.where(outside, near_y, 0.0), radius, 0.0)
  pad_out = _padded(outside, radius, False)
  _, _, in_d2 = _argmin_select(
    jnp.stack([_shift(pad_nx, radius, dy, dx, height, width) for dy, dx in offsets]),
    jnp.stack([_shift(pad_ny, radius, dy, dx, height, width) for dy, dx in offsets]),
    px,
    py,
    jnp.stack([_shift(pad_out, radius, dy, dx, height, width) for dy, dx in offsets]),
  )
  inside = covered & jnp.isfinite(in_d2)
  d_in = _safe_sqrt(jnp.where(inside, in_d2, 1.0))
  signed = jnp.where(
    covered, jnp.where(inside, d_in, jnp.inf), jnp.where(outside, -d_out, -jnp.inf)
  )
  return _ramp(signed / sigma)
