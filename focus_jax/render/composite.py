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

Cost: only the band pixels (a coverage change within the window) can differ from the hard mask,
so they are gathered into a static list and evaluated there. The work is linear in the list's
length, so there are two lists: a short one (a third of the capacity) that a face's silhouette
fills, and the full capacity for larger silhouettes; a dense path over every pixel takes over
(same result) when a render has more band pixels than the capacity. On the BFM-sized embedded
model at 224x224 (~1,450 band pixels) forward+backward costs 2.5-3 ms per image on 2 CPU cores
with the short list, 6 ms with the full capacity only (5,376), against ~116 ms for the dense
evaluation.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from focus_jax.render import fusion
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
  # Materialised with their cotangents: otherwise the backward pass recomputed the whole
  # nearest-point selection once per gradient element of every corner coordinate.
  cx, cy = fusion.fusion_barrier((jnp.stack(cx), jnp.stack(cy)))
  return _argmin_select(cx, cy, px, py)


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


def _offsets(radius: int):
  return [
    (dy, dx)
    for dy in range(-radius, radius + 1)
    for dx in range(-radius, radius + 1)
    if (dy, dx) != (0, 0)
  ]


def _signed_distance(covered, outside, d_out, inside, d_in):
  """Signed distance (pixels, + inside); +-inf where the window shows no coverage change."""
  return jnp.where(covered, jnp.where(inside, d_in, jnp.inf), jnp.where(outside, -d_out, -jnp.inf))


def _soft_dense(projected, triangles, face_id, sigma: float, radius: int):
  """The soft mask evaluated at every pixel (the fallback when the band overflows)."""
  height, width = face_id.shape
  covered = face_id >= 0
  idx = triangles[jnp.where(covered, face_id, 0)]  # (H, W, 3)
  # Corner coordinates as separate (H, W) planes: with a minor axis of 3, XLA:CPU summed the
  # window's gradients in one scalar loop, ten times slower than the whole forward pass.
  tri_x = [rasterize_lib.gather_rows(projected[:, 0:1], idx[..., k])[..., 0] for k in range(3)]
  tri_y = [rasterize_lib.gather_rows(projected[:, 1:2], idx[..., k])[..., 0] for k in range(3)]
  py, px = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
  )
  offsets = _offsets(radius)
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
  return _ramp(_signed_distance(covered, outside, d_out, inside, d_in) / sigma)


def band(covered: jax.Array, radius: int) -> jax.Array:
  """``(H, W)`` bool: pixels whose ``(2 radius + 1)^2`` window holds a pixel of the other kind.

  Only these can differ from the hard mask; pixels outside the image count as neither kind.
  """
  height, width = covered.shape
  pad_c = _padded(covered, radius, False)
  pad_b = _padded(~covered, radius, False)
  any_c = functools.reduce(
    jnp.logical_or, [_shift(pad_c, radius, dy, dx, height, width) for dy, dx in _offsets(radius)]
  )
  any_b = functools.reduce(
    jnp.logical_or, [_shift(pad_b, radius, dy, dx, height, width) for dy, dx in _offsets(radius)]
  )
  return jnp.where(covered, any_b, any_c)


def _soft_sparse(projected, triangles, face_id, in_band, sigma: float, radius: int, capacity: int):
  """The soft mask evaluated only at the (at most ``capacity``) band pixels, hard elsewhere.

  The same computation as :func:`_soft_dense`, on the band pixels gathered into a list: a face
  silhouette at 224 px has a few thousand of them, so this is an order of magnitude cheaper
  forward and backward.
  """
  height, width = face_id.shape
  n = height * width
  covered = face_id >= 0
  flat = in_band.reshape(-1)
  pix = jnp.nonzero(flat, size=capacity, fill_value=0)[0]
  used = jnp.arange(capacity) < jnp.sum(flat)
  slot = jnp.where(used, pix, n)  # unused slots scatter out of bounds and are dropped
  ys, xs = pix // width, pix % width
  px, py = xs.astype(jnp.float32), ys.astype(jnp.float32)
  offsets = _offsets(radius)

  def window(padded):
    return jnp.stack([padded[ys + radius + dy, xs + radius + dx] for dy, dx in offsets])

  faces = window(_padded(face_id, radius, -1))  # (K_offsets, capacity)
  corners = triangles[jnp.maximum(faces, 0)]  # (K_offsets, capacity, 3)
  tx = [rasterize_lib.gather_rows(projected[:, 0:1], corners[..., k])[..., 0] for k in range(3)]
  ty = [rasterize_lib.gather_rows(projected[:, 1:2], corners[..., k])[..., 0] for k in range(3)]
  cx, cy, _ = _nearest_on_triangle(px[None], py[None], tx, ty)
  near_x, near_y, near_d2 = _argmin_select(cx, cy, px, py, faces >= 0)
  is_covered = covered.reshape(-1)[pix]
  outside = ~is_covered & used & jnp.isfinite(near_d2)
  d_out = _safe_sqrt(jnp.where(outside, near_d2, 1.0))

  def to_image(values, fill):
    full = jnp.full((n,), fill, values.dtype).at[slot].set(values, mode="drop")
    return _padded(full.reshape(height, width), radius, fill)

  _, _, in_d2 = _argmin_select(
    window(to_image(jnp.where(outside, near_x, 0.0), 0.0)),
    window(to_image(jnp.where(outside, near_y, 0.0), 0.0)),
    px,
    py,
    window(to_image(outside, False)),
  )
  inside = is_covered & used & jnp.isfinite(in_d2)
  d_in = _safe_sqrt(jnp.where(inside, in_d2, 1.0))
  soft = _ramp(_signed_distance(is_covered, outside, d_out, inside, d_in) / sigma)
  hard = covered.astype(jnp.float32).reshape(-1)
  return hard.at[slot].set(soft, mode="drop").reshape(height, width)


def default_capacity(height: int, width: int, sigma: float) -> int:
  """Band pixels evaluated sparsely: room for a silhouette twice the image perimeter long."""
  radius = max(1, math.ceil(sigma))
  return min(height * width, 4 * (2 * radius + 1) * (height + width))


def soft_mask(
  projected: jax.Array,
  triangles: jax.Array,
  fragments: rasterize_lib.Fragments,
  sigma: float = 1.0,
  capacity: int | None = None,
) -> jax.Array:
  """Soft coverage mask in [0, 1], ``(H, W)`` float32.

  Only band pixels (a coverage change within the window, :func:`band`) can differ from the hard
  mask, so they are gathered into the shortest static list of :func:`tiers` that holds them and
  evaluated there; if a render has more band pixels than ``capacity`` (a mesh full of holes),
  ``lax.switch`` takes the dense path over every pixel instead, with the same result. Under
  ``jax.vmap`` a switch runs every branch, so batched callers should map over the batch with
  ``lax.map`` (``pipeline.render_batch`` does).

  Args:
    projected: ``(V, 3)`` float32 (pixel x, pixel y, depth).
    triangles: ``(F, 3)`` int32.
    fragments: ``Fragments`` of the same mesh, ``(H, W)`` fields.
    sigma: static half-width of the ramp in pixels (> 0).
    capacity: static number of band pixels evaluated sparsely at most (default
      :func:`default_capacity`).
  """
  if not sigma > 0:
    raise ValueError(f"soft_mask: sigma must be > 0 pixels, got {sigma}")
  radius = max(1, math.ceil(sigma))
  face_id = jax.lax.stop_gradient(fragments.face_id)
  height, width = face_id.shape
  capacity = capacity or default_capacity(height, width, sigma)
  return _soft(projected, triangles, face_id, sigma, radius, capacity)


def tiers(capacity: int) -> tuple[int, ...]:
  """Lengths of the band lists, shortest first: a third of ``capacity`` (a face's silhouette at
  224 px, ~1,450 band pixels, fits the 1,792 of the default) and ``capacity`` itself."""
  short = capacity // 3
  return (short, capacity) if short > 0 else (capacity,)


def tier(count: jax.Array, capacity: int) -> jax.Array:
  """Branch taken for ``count`` band pixels: the index of the shortest list of :func:`tiers`
  that holds them, or ``len(tiers(capacity))`` for the dense path."""
  return sum((count > length).astype(jnp.int32) for length in tiers(capacity))


def _branches(triangles, face_id, sigma, radius, capacity):
  in_band = band(face_id >= 0, radius)
  sparse = [
    functools.partial(
      _soft_sparse,
      triangles=triangles,
      face_id=face_id,
      in_band=in_band,
      sigma=sigma,
      radius=radius,
      capacity=length,
    )
    for length in tiers(capacity)
  ]
  dense = lambda p: _soft_dense(p, triangles, face_id, sigma, radius)
  return tier(jnp.sum(in_band), capacity), [*sparse, dense]


# A custom VJP so that the backward pass also runs only the branch taken: differentiating a
# lax.switch directly makes every branch produce residuals, and the dense branch's residuals
# cost more than the whole sparse gradient.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _soft(projected, triangles, face_id, sigma, radius, capacity):
  index, branches = _branches(triangles, face_id, sigma, radius, capacity)
  return jax.lax.switch(index, branches, projected)


def _soft_fwd(projected, triangles, face_id, sigma, radius, capacity):
  out = _soft(projected, triangles, face_id, sigma, radius, capacity)
  return out, (projected, triangles, face_id)


def _soft_bwd(sigma, radius, capacity, residuals, grad):
  projected, triangles, face_id = residuals
  index, branches = _branches(triangles, face_id, sigma, radius, capacity)

  def vjp(branch):
    return lambda: jax.vjp(branch, projected)[1](grad)[0]

  return jax.lax.switch(index, [vjp(branch) for branch in branches]), None, None


_soft.defvjp(_soft_fwd, _soft_bwd)
