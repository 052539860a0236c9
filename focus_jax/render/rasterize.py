"""Exact z-buffer rasteriser in pure JAX (SPEC §4): projected triangles -> ``Fragments``.

Conventions: ``projected`` is ``(V, 3)`` float32 = (pixel x, pixel y, depth) from
``camera.project``; pixel centres sit at integer coordinates, x is the column and y the row (down).

Semantics (SPEC §4, reproduced exactly):

- A triangle is drawn only if all three depths are > 0 and it faces the camera. SPEC states the
  facing test in world space, ``(v0 - camera_centre) . n < 0`` with ``n = cross(v1 - v0, v2 - v0)``.
  Our camera is a proper rotation (``det R = +1``), so in camera space (centre at the origin) the
  test reads ``v0 . cross(v1 - v0, v2 - v0) = det[v0, v1, v2] < 0``. Writing each vertex as
  ``z_i (u_i, w_i, 1)`` with normalised image coordinates gives
  ``det = z0 z1 z2 / f^2 * cross2(p1 - p0, p2 - p0)``, so for positive depths the triangle faces
  the camera iff its **2D signed area in pixel coordinates is negative** (x right, y down).
  Zero-area (degenerate or edge-on) triangles draw nothing, as ``0 < 0`` is false.
- A pixel centre is inside if its three barycentrics are >= 0 (inclusive edges); pixels outside
  ``[0, W-1] x [0, H-1]`` are never drawn.
- Depth is interpolated linearly in screen space; the nearest depth wins and exact depth ties go
  to the lower face index.

Design (why it is fast on a CPU and still exact): face meshes have many triangles that each cover
a pixel or two (99.8% of the BFM-sized model's boxes at 224 px hold at most 2 x 2 pixel centres),
so we scatter **per triangle** instead of testing per pixel. Each triangle's box of pixel centres
(clipped to the image) is placed in a fixed ``s x s`` window of candidate pixels; every candidate
gets the inside test and its depth, ``.at[pixel].min(depth)`` builds the depth buffer, and a
second scatter-min over the candidates whose depth equals the buffer picks the lowest face index
(exact ties). Work is ``F s^2``, memory ``O(H W + F s^2)``; no ``H W F`` tensor exists.
Triangles whose box exceeds the level-0 window (rare) are drawn with the window of their level
``s_l = s_0 4^l`` (the last one covers the image) inside a ``lax.while_loop``: each iteration
picks up to a static number of them by hashing their index into a table (one scatter; a prefix
sum over all triangles would cost more than level 0 on XLA:CPU), draws each level's picks
(``cap_l`` at a time, a ``lax.cond`` skips empty levels) and keeps the rest for the next
iteration. Every iteration draws at least one triangle, so any number of large triangles (close-
ups, coarse meshes) is drawn exactly, only more slowly: no capacity can overflow. Buffers of
levels are merged by the lexicographic minimum of (depth, face index), which is associative, so
the result does not depend on how triangles were split.

Batching: under ``jax.vmap`` the z-buffer (a ``custom_vmap``) rasterises the batch as one flat
mesh into one flat buffer, because batched scatters and gathers are several times slower on
XLA:CPU. ``fusion.materialise`` keeps XLA from fusing vectorisable arithmetic into the serial
scatter and gather loops.

Exactness details: each edge function is evaluated from the edge's two vertices in a canonical
order (lower vertex index first) and negated as needed, so the two triangles sharing an edge get
exactly opposite values (no cracks, no double coverage from rounding), whatever FMA contraction the
compiler applies. Barycentrics are normalised by their pixel sum and depth is
``z0 + b1 (z1 - z0) + b2 (z2 - z0)``, so vertices and constant-depth triangles give exact depths.

Gradients: face ids are discrete; the z-buffer runs on ``stop_gradient(projected)`` and the face
index map carries no gradient. Barycentrics and depth are then recomputed, differentiably, per
pixel from the winning face's projected vertices, so gradients reach pixel x, y (and depth)
through the barycentrics, as in the original. That per-pixel step has a hand-written VJP (the
derivative of ``b_k = E_k / sum(E)`` and of the depth), tested against automatic
differentiation. Background pixels have face id -1, barycentrics 0
and depth 0.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from focus_jax.render import fusion


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Fragments:
  """Per-pixel rasterisation result of one image.

  Attributes:
    face_id: ``(H, W)`` int32 index of the visible triangle, -1 on the background. No gradient.
    bary: ``(H, W, 3)`` float32 screen-space barycentrics of the pixel centre in that triangle
      (0 on the background); differentiable w.r.t. the projected vertices.
    depth: ``(H, W)`` float32 camera-space depth (mm) interpolated linearly in screen space
      (0 on the background); differentiable.
  """

  face_id: jax.Array
  bary: jax.Array
  depth: jax.Array


def default_window(num_triangles: int, height: int, width: int) -> int:
  """Level-0 window side: the bounding box most triangles fit for a face filling ~half the image."""
  pixels_per_triangle = 0.5 * height * width / max(num_triangles, 1)
  if pixels_per_triangle < 1.5:
    return 2
  if pixels_per_triangle < 8.0:
    return 4
  return 8


def _cross2(ax, ay, bx, by):
  return ax * by - ay * bx


def _triangle_geometry(x, y, z, idx):
  """Canonical edges and depth terms of triangles, structure-of-arrays.

  Edge ``k`` joins vertices ``k+1`` and ``k+2`` (mod 3). It is stored from its endpoint with the
  lower vertex index (``lo``) to the other (``hi``), with ``sign = -1`` where that swapped the
  order, so the two triangles sharing an edge evaluate the very same products and see bit-exact
  opposite edge functions (no cracks or double coverage from rounding).

  Args:
    x, y, z: three ``(...)`` float32 arrays each (pixel x, pixel y, depth of vertex 0, 1, 2).
    idx: three ``(...)`` int32 vertex indices.

  Returns:
    ``(edges, (z0, dz1, dz2))``; ``edges`` is a list of three ``(lo_x, lo_y, hi_x, hi_y, sign)``.
  """
  edges = []
  for k in range(3):
    a, b = (k + 1) % 3, (k + 2) % 3
    swap = idx[a] > idx[b]
    edges.append(
      (
        jnp.where(swap, x[b], x[a]),
        jnp.where(swap, y[b], y[a]),
        jnp.where(swap, x[a], x[b]),
        jnp.where(swap, y[a], y[b]),
        jnp.where(swap, -1.0, 1.0).astype(x[0].dtype),
      )
    )
  return edges, (z[0], z[1] - z[0], z[2] - z[0])


def _edge_functions(px, py, edges):
  """``E_k = cross2(p_{k+1} - p, p_{k+2} - p)`` at points ``(px, py)``; three arrays.

  The barycentrics are ``b_k = E_k / sum(E)``. ``edges`` come from :func:`_triangle_geometry`
  and broadcast against the points.
  """
  return [s * _cross2(lx - px, ly - py, hx - px, hy - py) for lx, ly, hx, hy, s in edges]


def _depth_and_bary(e, depth_terms):
  """Normalised barycentrics (three arrays), screen-space depth and ``sum(E)``.

  ``depth = z0 + b1 (z1 - z0) + b2 (z2 - z0)`` is exact at the vertices and for constant depth.
  """
  total = e[0] + e[1] + e[2]
  safe = jnp.where(total == 0, 1.0, total)
  bary = [ek / safe for ek in e]
  z0, dz1, dz2 = depth_terms
  return bary, z0 + bary[1] * dz1 + bary[2] * dz2, total


def _merge(a, b):
  """Lexicographic minimum of two (depth, face index) buffers."""
  (da, ia), (db, ib) = a, b
  depth = jnp.minimum(da, db)
  index = jnp.where(da < db, ia, jnp.where(db < da, ib, jnp.minimum(ia, ib)))
  return depth, index


def _scatter_min(index, values, size: int, fill):
  """``full(size, fill).at[index].min(values)``, dropping out-of-range indices."""
  return jnp.full((size,), fill, values.dtype).at[index].min(values, mode="drop")


def _gather(buffer, index, fill):
  """``buffer[index]`` with ``fill`` out of range."""
  return buffer.at[index].get(mode="fill", fill_value=fill)


def _candidates(tri, valid, dx, dy, width, num_pixels):
  """Pixel index and depth of the candidates at offset ``(dx, dy)`` in each triangle's box.

  ``dx, dy`` are ints or int32 arrays broadcasting against the ``(T,)`` triangle arrays. Rejected
  candidates get pixel ``num_pixels`` (dropped by the scatters) and depth +inf.
  """
  cx, cy = tri["x0"] + dx, tri["y0"] + dy
  in_box = valid & (cx <= tri["x1"]) & (cy <= tri["y1"])
  e = _edge_functions(cx.astype(jnp.float32), cy.astype(jnp.float32), tri["edges"])
  _, depth, total = _depth_and_bary(e, tri["depth"])
  inside = in_box & (e[0] <= 0) & (e[1] <= 0) & (e[2] <= 0) & (total < 0)
  pixel = jnp.where(inside, tri["base"] + cy * width + cx, num_pixels)
  return pixel, jnp.where(inside, depth, jnp.inf)


# Windows up to this side build and scatter their candidates offset by offset as 1-D arrays:
# XLA:CPU vectorises those, while flattening or concatenating (offsets, triangles) arrays for the
# scatters made it compute every element with scalar index arithmetic, several times slower.
_UNROLL_WINDOW = 4


def _zbuffer_chunk(tri, face, valid, window, batch, height, width):
  """Two-pass z-buffer of a set of triangles over their ``window x window`` candidate pixels.

  Args:
    tri: per-triangle structure-of-arrays from :func:`_setup`, each ``(T,)``.
    face: ``(T,)`` int32 flat face indices (the tie-break key).
    valid: ``(T,)`` bool, triangles to draw.

  Returns:
    ``(depth (B*H*W,), index (B*H*W,))``: +inf / int32 max where nothing was drawn.
  """
  num_pixels = batch * height * width
  big = jnp.iinfo(jnp.int32).max
  if window <= _UNROLL_WINDOW:
    parts = [
      fusion.materialise(_candidates(tri, valid, dx, dy, width, num_pixels))
      for dy in range(window)
      for dx in range(window)
    ]
    zbuf = jnp.full((num_pixels,), jnp.inf, jnp.float32)
    for pixel, depth in parts:
      zbuf = zbuf.at[pixel].min(depth, mode="drop")
    ibuf = jnp.full((num_pixels,), big, jnp.int32)
    for pixel, depth in parts:
      key = fusion.materialise(jnp.where(depth == _gather(zbuf, pixel, -jnp.inf), face, big))
      ibuf = ibuf.at[pixel].min(key, mode="drop")
    return zbuf, ibuf
  offs = jnp.arange(window * window, dtype=jnp.int32)[:, None]
  expand = lambda a: a[None, :]
  pixel, depth = _candidates(
    jax.tree.map(expand, tri), expand(valid), offs % window, offs // window, width, num_pixels
  )
  pixel, depth = fusion.materialise((pixel.reshape(-1), depth.reshape(-1)))
  faces = jnp.broadcast_to(face[None, :], (window * window, face.shape[0])).reshape(-1)
  zbuf = _scatter_min(pixel, depth, num_pixels, jnp.inf)
  key = fusion.materialise(jnp.where(depth == _gather(zbuf, pixel, -jnp.inf), faces, big))
  ibuf = _scatter_min(pixel, key, num_pixels, big)
  return zbuf, ibuf


def _setup(projected, triangles, height, width):
  """Per-triangle geometry of ``B`` meshes as flat structure-of-arrays, each ``(B * F,)``.

  Args:
    projected: ``(B, V, 3)`` float32; triangles: ``(F, 3)`` int32 shared by the batch.

  Returns:
    ``(tri, extent, valid)``: a dict of per-triangle arrays in face-major order (clipped box,
    canonical edges, depth terms), the larger box side and the drawability flag.
  """
  batch, num_vertices = projected.shape[:2]
  # Face-major flat order (triangle f of image b at f * B + b): each vertex gather reads B
  # contiguous values, which XLA:CPU does far faster than strided per-image gathers.
  rows = jnp.transpose(projected, (1, 0, 2)).reshape(num_vertices, batch * 3)
  corners = rows[triangles.reshape(-1)].reshape(triangles.shape[0], 3, batch, 3)
  corners = jnp.transpose(corners, (3, 1, 0, 2)).reshape(3, 3, -1)  # (coord, corner, F * B)
  # Materialise the gathered corners: fused into their many consumers, XLA:CPU would redo the
  # (slow, scalar) gather in each of them.
  corners = fusion.materialise(corners)
  x, y, z = ([corners[c, k] for k in range(3)] for c in range(3))
  idx = [triangles[:, k] for k in range(3)]
  # Vertex ids only order the edges canonically; offsetting them keeps that order per image.
  offset = jnp.tile(jnp.arange(batch, dtype=jnp.int32) * num_vertices, triangles.shape[0])
  idx = [jnp.repeat(i, batch) + offset for i in idx]
  area = _cross2(x[1] - x[0], y[1] - y[0], x[2] - x[0], y[2] - y[0])
  # Clip in float first: far-off or huge coordinates must not overflow the int cast.
  x0 = jnp.clip(jnp.ceil(jnp.minimum(jnp.minimum(x[0], x[1]), x[2])), 0.0, width)
  y0 = jnp.clip(jnp.ceil(jnp.minimum(jnp.minimum(y[0], y[1]), y[2])), 0.0, height)
  x1 = jnp.clip(jnp.floor(jnp.maximum(jnp.maximum(x[0], x[1]), x[2])), -1.0, width - 1.0)
  y1 = jnp.clip(jnp.floor(jnp.maximum(jnp.maximum(y[0], y[1]), y[2])), -1.0, height - 1.0)
  x0, y0, x1, y1 = (a.astype(jnp.int32) for a in (x0, y0, x1, y1))
  extent = jnp.maximum(x1 - x0 + 1, y1 - y0 + 1)
  # NaNs fail every comparison, so NaN triangles are never drawn.
  valid = (area < 0) & (z[0] > 0) & (z[1] > 0) & (z[2] > 0) & (x1 >= x0) & (y1 >= y0)
  edges, depth = _triangle_geometry(x, y, z, idx)
  tri = {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "edges": edges, "depth": depth}
  return tri, extent, valid


# Window growth between levels: fewer levels compile faster; a box just above a level's window
# then wastes up to 16x candidates, but such triangles are rare in face meshes.
_LEVEL_FACTOR = 4


def _levels(window: int, height: int, width: int) -> list[int]:
  sizes = [window]
  while sizes[-1] < max(height, width):
    sizes.append(sizes[-1] * _LEVEL_FACTOR)
  # A box never exceeds the image, so the last window need not either.
  sizes[-1] = min(sizes[-1], max(height, width, window))
  return sizes


def _zbuffer_batch(projected, triangles, height, width, window):
  """Visible face per pixel of ``B`` images sharing ``triangles``: ``(B, H, W)`` int32.

  The batch is rasterised as one mesh of ``B * F`` triangles drawing into ``B * H * W`` pixels
  (flat triangle ``f * B + b`` draws into image ``b``): flat scatters stay fast on XLA:CPU,
  where batched scatters and gathers are slow, and within an image the flat index orders
  triangles like the face index, so the tie-break is unchanged.
  """
  batch = projected.shape[0]
  num_faces = triangles.shape[0]
  total_faces = batch * num_faces
  sizes = _levels(window, height, width)
  tri, extent, valid = _setup(projected, triangles, height, width)
  tri["base"] = jnp.tile(jnp.arange(batch, dtype=jnp.int32) * (height * width), num_faces)
  face = jnp.arange(total_faces, dtype=jnp.int32)
  # Level 0 takes every triangle whose box fits its window, in one straight-line pass.
  result = _zbuffer_chunk(tri, face, valid & (extent <= window), window, batch, height, width)
  if len(sizes) == 1:
    return _face_ids(result[1], batch, num_faces, height, width)
  # Larger boxes (rare in face meshes) are picked up to ``table`` at a time by hashing their
  # index into a table (one scatter, no prefix sum over all triangles), then drawn with the
  # window of their level: level l holds window_{l-1} < extent <= window_l, ``cap_l`` at a time.
  # Triangles not drawn in an iteration (hash collisions, a full level) stay for the next one,
  # and every iteration draws at least one, so the loop always finishes and nothing is dropped.
  level = sum((extent > size).astype(jnp.int32) for size in sizes[:-1])
  # Materialised: XLA:CPU otherwise recomputed them from the corners in every iteration.
  level, large = fusion.materialise((level, valid & (extent > window)))
  table = int(min(total_faces, max(256, total_faces // 64)))
  budget = max(total_faces * window * window // 16, 16384)
  caps = [int(min(table, max(1, budget // (side * side)))) for side in sizes]
  slot_of = face % table

  def body(state):
    remaining, buffers = state
    slot = jnp.where(remaining, slot_of, table)
    picked = jnp.full((table,), total_faces, jnp.int32).at[slot].min(face, mode="drop")
    ok = picked < total_faces
    safe = jnp.where(ok, picked, 0)
    sub = jax.tree.map(lambda a: a[safe], tri)
    sub_level = level[safe]
    done = jnp.zeros((table,), bool)
    for lvl in range(1, len(sizes)):
      member = ok & (sub_level == lvl)
      rank = jnp.cumsum(member, dtype=jnp.int32) - 1
      take = member & (rank < caps[lvl])
      chunk = (
        jnp.full((caps[lvl],), table, jnp.int32)
        .at[jnp.where(take, rank, caps[lvl])]
        .set(jnp.arange(table, dtype=jnp.int32), mode="drop")
      )

      def draw(buffers, chunk=chunk, lvl=lvl):
        chunk_ok = chunk < table
        pos = jnp.where(chunk_ok, chunk, 0)
        part = jax.tree.map(lambda a: a[pos], sub)
        out = _zbuffer_chunk(part, safe[pos], chunk_ok, sizes[lvl], batch, height, width)
        return _merge(buffers, out)

      # The batch is flat here (no vmap), so this is a real branch: empty levels cost nothing.
      buffers = jax.lax.cond(jnp.any(take), draw, lambda b: b, buffers)
      done = done | take
    drawn = done.at[slot].get(mode="fill", fill_value=False) & (
      picked.at[slot].get(mode="fill", fill_value=-1) == face
    )
    return remaining & ~drawn, buffers

  _, result = jax.lax.while_loop(lambda s: jnp.any(s[0]), body, (large, result))
  return _face_ids(result[1], batch, num_faces, height, width)


def _face_ids(index, batch, num_faces, height, width):
  """Flat face-major winners ``(B * H * W,)`` -> face index per image ``(B, H, W)``, -1 empty."""
  face_id = jnp.where(index < batch * num_faces, index // batch, -1)
  return face_id.reshape(batch, height, width)


# Images rasterised together as one flat mesh under vmap (a sequential ``lax.map`` runs over the
# groups). On 2 CPU cores at 224 x 224 with 55k triangles, groups of 1, 2, 4 and 12 images ran
# equally fast (memory-bound), so the smallest peak memory wins.
MAX_GROUP = 1


def _zbuffer_groups(projected, triangles, height, width, window):
  """``(B, V, 3)`` -> ``(B, H, W)``: groups of images, each group one flat mesh."""
  batch = projected.shape[0]
  group = max(g for g in range(1, min(batch, MAX_GROUP) + 1) if batch % g == 0)
  grouped = projected.reshape(batch // group, group, *projected.shape[1:])
  out = jax.lax.map(lambda p: _zbuffer_batch(p, triangles, height, width, window), grouped)
  return out.reshape(batch, height, width)


@functools.cache
def _zbuffer_op(height: int, width: int, window: int):
  @jax.custom_batching.custom_vmap
  def op(projected, triangles):
    return _zbuffer_batch(projected[None], triangles, height, width, window)[0]

  @op.def_vmap
  def _(axis_size, in_batched, projected, triangles):
    if in_batched[1]:  # per-example meshes: no shared topology to flatten over.
      one = lambda p, t: _zbuffer_batch(p[None], t, height, width, window)[0]
      return jax.vmap(one, (0 if in_batched[0] else None, 0))(projected, triangles), True
    if not in_batched[0]:
      projected = jnp.broadcast_to(projected, (axis_size, *projected.shape))
    return _zbuffer_groups(projected, triangles, height, width, window), True

  return op


def zbuffer(projected, triangles, *, height: int, width: int, window: int | None = None):
  """Exact visible face index per pixel (no gradient), ``(H, W)`` int32 with -1 on background.

  Under ``jax.vmap`` the batch is rasterised as one flat mesh (see :func:`_zbuffer_batch`).

  Args:
    projected: ``(V, 3)`` float32 (pixel x, pixel y, depth).
    triangles: ``(F, 3)`` int32 vertex indices.
    height, width: static image size.
    window: static level-0 window side; ``None`` picks :func:`default_window`. Only speed
      depends on it.
  """
  projected = jax.lax.stop_gradient(jnp.asarray(projected, jnp.float32))
  triangles = jnp.asarray(triangles, jnp.int32)
  window = window or default_window(triangles.shape[0], height, width)
  return _zbuffer_op(height, width, window)(projected, triangles)


def _flat_batch(axis_size, in_batched, index, rows, num_rows):
  """Batched ``index (B, ...)`` into ``(B, num_rows, C)`` rows -> flat indices into ``B * N``."""
  if not in_batched[0]:
    index = jnp.broadcast_to(index, (axis_size, *index.shape))
  if not in_batched[1]:
    rows = jnp.broadcast_to(rows, (axis_size, *rows.shape))
  offset = jnp.arange(axis_size, dtype=index.dtype).reshape((-1,) + (1,) * (index.ndim - 1))
  return index + offset * num_rows, rows


def scatter_add_rows(index, values, num_rows):
  """Transpose of :func:`gather_rows`: ``zeros((num_rows, C)).at[index].add(values)``."""

  @jax.custom_batching.custom_vmap
  def scatter(index, values):
    out = jnp.zeros((num_rows, values.shape[-1]), values.dtype)
    return out.at[index.reshape(-1)].add(values.reshape(-1, values.shape[-1]), mode="drop")

  @scatter.def_vmap
  def _(axis_size, in_batched, index, values):
    # One flat scatter-add over the batch: XLA:CPU's batched scatters are several times slower.
    flat, values = _flat_batch(axis_size, in_batched, index, values, num_rows)
    out = jnp.zeros((axis_size * num_rows, values.shape[-1]), values.dtype)
    out = out.at[flat.reshape(-1)].add(values.reshape(-1, values.shape[-1]), mode="drop")
    return out.reshape(axis_size, num_rows, values.shape[-1]), True

  return scatter(index, values)


@jax.custom_batching.custom_vmap
def _take_rows(table, index):
  # The table is materialised first: fused into the gather, XLA:CPU would recompute it (e.g.
  # the whole SH shading) for every gathered element. Indices are in range by contract; the
  # default clamping/filling gather is several times slower on XLA:CPU.
  table = fusion.materialise(table)
  return table.at[index].get(mode="promise_in_bounds")


@_take_rows.def_vmap
def _(axis_size, in_batched, table, index):
  if not in_batched[0]:  # a shared table: a plain gather with batched indices
    if not in_batched[1]:
      index = jnp.broadcast_to(index, (axis_size, *index.shape))
    return _take_rows(table, index), True
  # One flat gather over the batch, like the scatter-add of the backward pass.
  flat, table = _flat_batch(axis_size, in_batched[::-1], index, table, table.shape[-2])
  return _take_rows(table.reshape(-1, table.shape[-1]), flat), True


@jax.custom_vjp
def gather_rows(table, index):
  """``table[index]`` for ``table (N, C)`` float and ``index (...)`` int32 in ``[0, N)``.

  Returns ``(..., C)``. Differentiable w.r.t. ``table``; forward and transpose (a scatter-add)
  stay one flat gather / scatter under ``jax.vmap`` (batched ones are several times slower on
  XLA:CPU). Out-of-range indices are undefined behaviour.
  """
  return _take_rows(table, index)


def _gather_rows_fwd(table, index):
  return _take_rows(table, index), (index, table.shape[0])


def _gather_rows_bwd(residual, grad):
  index, num_rows = residual
  return scatter_add_rows(index, grad, num_rows), None


gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


def _bary_depth_value(corners, px, py, idx):
  edges, depth_terms = _triangle_geometry(
    [corners[..., k, 0] for k in range(3)],
    [corners[..., k, 1] for k in range(3)],
    [corners[..., k, 2] for k in range(3)],
    [idx[..., k] for k in range(3)],
  )
  bary, depth, total = _depth_and_bary(_edge_functions(px, py, edges), depth_terms)
  return jnp.stack(bary, axis=-1), depth, total


@jax.custom_vjp
def _bary_depth(corners, px, py, idx):
  """Barycentrics ``(..., 3)`` and depth ``(...)`` of points ``(px, py)`` in triangles.

  ``corners (..., 3, 3)`` holds (pixel x, pixel y, depth) of the three corners; ``idx (..., 3)``
  their vertex ids (canonical edge order). A hand-written VJP: differentiated automatically, the
  canonical edge selection and the normalisation became one fused kernel per gradient element
  that recomputed the whole expression nine times.
  """
  return _bary_depth_value(corners, px, py, idx)[:2]


def _bary_depth_fwd(corners, px, py, idx):
  bary, depth, total = _bary_depth_value(corners, px, py, idx)
  return (bary, depth), (corners, px, py, bary, total)


def _bary_depth_bwd(residuals, grads):
  # b_k = E_k / T with E_k = cross2(P_{k+1} - p, P_{k+2} - p) and T = sum(E);
  # depth = z0 + b1 (z1 - z0) + b2 (z2 - z0). Per-corner lists, no reductions over the corner
  # axis: XLA:CPU hands those to a library kernel that is slow for an axis of 3.
  corners, px, py, bary, total = residuals
  g_bary, g_depth = grads
  x, y, z = ([corners[..., i, c] for i in range(3)] for c in range(3))
  b = [bary[..., i] for i in range(3)]
  g_b = [g_bary[..., 0], g_bary[..., 1] + g_depth * (z[1] - z[0])]
  g_b.append(g_bary[..., 2] + g_depth * (z[2] - z[0]))
  mean = g_b[0] * b[0] + g_b[1] * b[1] + g_b[2] * b[2]
  safe = jnp.where(total == 0, 1.0, total)
  u = [(g - mean) / safe for g in g_b]  # dL/dE_k
  rx, ry = [xi - px for xi in x], [yi - py for yi in y]  # corners relative to the point
  g_x = [u[(i + 2) % 3] * ry[(i + 1) % 3] - u[(i + 1) % 3] * ry[(i + 2) % 3] for i in range(3)]
  g_y = [u[(i + 1) % 3] * rx[(i + 2) % 3] - u[(i + 2) % 3] * rx[(i + 1) % 3] for i in range(3)]
  g_z = [g_depth * (1.0 - b[1] - b[2]), g_depth * b[1], g_depth * b[2]]
  # Materialised before the stack: fused, each of its elements would recompute all of them.
  g_x, g_y, g_z = fusion.materialise((g_x, g_y, g_z))
  grad = jnp.stack([jnp.stack([g_x[i], g_y[i], g_z[i]], -1) for i in range(3)], -2)
  return grad, None, None, None


_bary_depth.defvjp(_bary_depth_fwd, _bary_depth_bwd)


def fragments_from_face_id(projected, triangles, face_id) -> Fragments:
  """Differentiable barycentrics and depth of the given visible faces.

  Args:
    projected: ``(V, 3)`` float32 (pixel x, pixel y, depth).
    triangles: ``(F, 3)`` int32.
    face_id: ``(H, W)`` int32, -1 on background (treated as a constant).
  """
  face_id = jax.lax.stop_gradient(face_id)
  height, width = face_id.shape
  covered = face_id >= 0
  safe = jnp.where(covered, face_id, 0)
  corner_idx = triangles.at[safe].get(mode="promise_in_bounds")  # (H, W, 3)
  corners = gather_rows(projected, corner_idx)  # (H, W, 3, 3)
  py, px = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
  )
  bary, depth = _bary_depth(corners, px, py, corner_idx)
  bary = jnp.where(covered[..., None], bary, 0.0)
  depth = jnp.where(covered, depth, 0.0)
  return Fragments(face_id=face_id, bary=bary, depth=depth)


def rasterize(
  projected, triangles, *, height: int, width: int, window: int | None = None
) -> Fragments:
  """Rasterises one mesh: exact visibility, differentiable barycentrics and depth.

  Args:
    projected: ``(V, 3)`` float32 (pixel x, pixel y, depth) from ``camera.project``.
    triangles: ``(F, 3)`` int32 vertex indices.
    height, width: static image size in pixels.
    window: static level-0 candidate window (speed only); ``None`` chooses automatically.

  Returns:
    :class:`Fragments` with ``(H, W)`` arrays.
  """
  projected = jnp.asarray(projected, jnp.float32)
  triangles = jnp.asarray(triangles, jnp.int32)
  face_id = zbuffer(projected, triangles, height=height, width=width, window=window)
  return fragments_from_face_id(projected, triangles, face_id)
