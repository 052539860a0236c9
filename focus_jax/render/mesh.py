"""Triangle-mesh geometry: face normals and area-weighted vertex normals.

Face normal = normalised ``cross(v1 - v0, v2 - v0)`` (outwards with the winding convention of
``focus_jax.render``). The vertex normal is the area-weighted mean of the adjacent face normals,
i.e. the normalised sum of the unnormalised cross products. The original FOCUS code does not
renormalise that mean (SPEC §3); we do, so the SH shading sees unit normals
(:func:`area_weighted_normals` gives the unnormalised sum the original shades with).

Speed: summing face values into vertices is a scatter-add, and its transpose (in the backward
pass) too; both are slow serial loops on XLA:CPU. With a fixed topology the sum is a *gather*
instead: :func:`vertex_face_table` lists, once per mesh (NumPy), the faces of every vertex by
corner, padded to a fixed width with a zero face, and a custom VJP writes the backward pass as
gathers as well. Batches are processed with the batch in the minor axis (one gather moves a row
of ``3 B`` floats, not ``B`` strided rows of 3).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.render import fusion

_EPS = 1e-12
# The original clamps the area sum at 1e3 * the smallest normal float32.
_ORIGINAL_TINY = float(np.finfo(np.float32).tiny) * 1e3
# Every index below is in range by construction (padding rows point at an explicit zero row);
# the default gather mode clamps or fills, which costs several times the gather on XLA:CPU.
_IN_BOUNDS = "promise_in_bounds"


def _safe_normalize(v: jax.Array, axis: int = -1) -> jax.Array:
  # The norm's gradient is infinite at 0 (degenerate triangles); keep it finite.
  sq = jnp.sum(v * v, axis=axis, keepdims=True)
  return v * jax.lax.rsqrt(jnp.maximum(sq, _EPS))


def face_cross(vertices: jax.Array, triangles: jax.Array) -> jax.Array:
  """``cross(v1 - v0, v2 - v0)`` per triangle, ``(F, 3)``; its length is twice the area."""
  v0, v1, v2 = (vertices[triangles[:, i]] for i in range(3))
  return jnp.cross(v1 - v0, v2 - v0)


def face_normals(vertices: jax.Array, triangles: jax.Array) -> jax.Array:
  """Unit face normals ``(F, 3)`` of vertices ``(V, 3)`` and triangles ``(F, 3)`` int32."""
  return _safe_normalize(face_cross(vertices, triangles))


def vertex_face_table(triangles: np.ndarray, num_vertices: int) -> np.ndarray:
  """The faces of every vertex by corner, for gather-based vertex sums.

  Args:
    triangles: ``(F, 3)`` integer NumPy array (concrete: the topology is fixed).
    num_vertices: ``V``.

  Returns:
    ``(3, V, D)`` int32: ``table[k, v]`` lists the faces ``f`` with ``triangles[f, k] == v``,
    padded with ``F`` (a zero face appended by the users of the table). ``D`` is the largest
    number of faces in which one vertex is corner ``k`` (2 for a regular grid mesh).
  """
  triangles = np.asarray(triangles, np.int64).reshape(-1, 3)
  num_faces = triangles.shape[0]
  if num_faces and (triangles.min() < 0 or triangles.max() >= num_vertices):
    raise ValueError(f"vertex_face_table: triangle indices outside [0, {num_vertices})")
  counts = [np.bincount(triangles[:, k], minlength=num_vertices) for k in range(3)]
  width = max(1, *(int(c.max(initial=0)) for c in counts))
  table = np.full((3, num_vertices, width), num_faces, np.int32)
  for k in range(3):
    order = np.argsort(triangles[:, k], kind="stable")
    start = np.cumsum(counts[k]) - counts[k]
    rank = np.arange(num_faces) - np.repeat(start, counts[k])
    table[k, triangles[order, k], rank] = order
  return table


def _take(rows: jax.Array, index: jax.Array) -> jax.Array:
  return rows.at[index].get(mode=_IN_BOUNDS)


def _vertex_sum(face_rows: jax.Array, table: jax.Array) -> jax.Array:
  """``out[v] = sum over the faces f listed in table (D columns) of face_rows[f]``."""
  return sum(_take(face_rows, table[:, d]) for d in range(table.shape[1]))


def _dot3(a, b):
  """Dot product along axis 1 of ``(N, 3, C)`` arrays, ``(N, 1, C)``, as explicit adds (XLA:CPU
  hands reductions to a library kernel that is slow for an axis of 3)."""
  return a[:, 0:1] * b[:, 0:1] + a[:, 1:2] * b[:, 1:2] + a[:, 2:3] * b[:, 2:3]


def _cross(a, b):
  """Cross product along axis 1 of ``(N, 3, C)`` arrays."""
  ax, ay, az = a[:, 0], a[:, 1], a[:, 2]
  bx, by, bz = b[:, 0], b[:, 1], b[:, 2]
  return jnp.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _summed_cross(rows, padded_triangles, table, normalize):
  """Sum of the adjacent faces' cross products per vertex, batch in the minor axis.

  Args:
    rows: ``(V, 3, C)`` float32 vertex positions of ``C`` meshes.
    padded_triangles: ``(F + 1, 3)`` int32, the triangles and a last all-zero (degenerate) face,
      whose cross product is exactly 0: the table's padding entries read it.
    table: ``(3, V, D)`` int32 from :func:`vertex_face_table`.
    normalize: static; return the unit vectors (``_safe_normalize`` along axis 1) instead.

  Returns:
    ``(V, 3, C)`` float32.
  """
  return _summed_cross_fwd(rows, padded_triangles, table, normalize)[0]


def _summed_cross_fwd(rows, padded_triangles, table, normalize):
  p0, p1, p2 = (_take(rows, padded_triangles[:, k]) for k in range(3))
  a, b = p1 - p0, p2 - p0
  # Materialised (here and below): fused into their consumers, XLA:CPU would recompute these
  # inside every gather, or once per component of the normalisation.
  face = fusion.materialise(_cross(a, b))
  summed = fusion.materialise(sum(_vertex_sum(face, table[k]) for k in range(3)))
  if not normalize:
    return summed, (a, b, padded_triangles, table, None)
  sq = _dot3(summed, summed)
  inv_norm = jax.lax.rsqrt(jnp.maximum(sq, _EPS))
  unit = fusion.materialise(summed * inv_norm)
  return unit, (a, b, padded_triangles, table, (unit, inv_norm, sq > _EPS))


def _summed_cross_bwd(normalize, residuals, grad):
  a, b, padded_triangles, table, normalised = residuals
  if normalize:
    # d(s / |s|) = (g - n (n . g)) / |s|; below the norm floor the scale is constant.
    unit, inv_norm, above_floor = normalised
    radial = jnp.where(above_floor, _dot3(unit, grad), 0.0)
    grad = fusion.materialise((grad - unit * radial) * inv_norm)
  # n = a x b with a = p1 - p0, b = p2 - p0: dL/dp1 = b x g, dL/dp2 = g x a, dL/dp0 = -(both).
  grad_face = sum(_take(grad, padded_triangles[:, k]) for k in range(3))
  g1, g2 = fusion.materialise((_cross(b, grad_face), _cross(grad_face, a)))
  grad_rows = (
    _vertex_sum(g1, table[1])
    + _vertex_sum(g2, table[2])
    - _vertex_sum(g1, table[0])
    - _vertex_sum(g2, table[0])
  )
  return fusion.materialise(grad_rows), None, None


_summed_cross.defvjp(_summed_cross_fwd, _summed_cross_bwd)


@jax.custom_vjp
def _vertex_sum_op(face_rows, padded_triangles, table):
  """Differentiable ``out[v] = sum of face_rows over the faces of v`` (no scatter either way).

  Args:
    face_rows: ``(F + 1, C)`` float32 with a zero last row (the padding face).
    padded_triangles, table: as for :func:`_summed_cross`.
  """
  return sum(_vertex_sum(face_rows, table[k]) for k in range(3))


def _vertex_sum_fwd(face_rows, padded_triangles, table):
  return _vertex_sum_op(face_rows, padded_triangles, table), (padded_triangles, table)


def _vertex_sum_bwd(residuals, grad):
  padded_triangles, _ = residuals
  return sum(_take(grad, padded_triangles[:, k]) for k in range(3)), None, None


_vertex_sum_op.defvjp(_vertex_sum_fwd, _vertex_sum_bwd)


@jax.custom_vjp
def _corners(rows, padded_triangles, table):
  """Differentiable corner positions ``(p0, p1, p2)``, each ``(F + 1, 3, C)``."""
  return tuple(_take(rows, padded_triangles[:, k]) for k in range(3))


def _corners_fwd(rows, padded_triangles, table):
  return _corners(rows, padded_triangles, table), table


def _corners_bwd(table, grads):
  return sum(_vertex_sum(g, table[k]) for k, g in enumerate(grads)), None, None


_corners.defvjp(_corners_fwd, _corners_bwd)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _batch_minor(vertices, triangles, vertex_faces):
  """``(..., V, 3)`` -> ``(V, 3, C)`` rows, padded triangles and the table (built if needed)."""
  vertices = jnp.asarray(vertices, jnp.float32)
  num_vertices = vertices.shape[-2]
  if vertex_faces is None:
    vertex_faces = vertex_face_table(np.asarray(triangles), num_vertices)
  triangles = jnp.asarray(triangles, jnp.int32)
  padded = jnp.concatenate([triangles, jnp.zeros((1, 3), jnp.int32)])
  # The batch in the minor axis, so that every gathered row is contiguous.
  rows = jnp.moveaxis(vertices.reshape(-1, num_vertices, 3), 0, -1)
  return rows, padded, jnp.asarray(vertex_faces, jnp.int32)


def _batch_major(rows, shape):
  return jnp.moveaxis(rows, -1, 0).reshape(shape)


def area_weighted_normals(
  vertices: jax.Array, triangles: jax.Array, vertex_faces: jax.Array | None = None
) -> jax.Array:
  """Unnormalised vertex normals: the sum of the adjacent faces' ``cross(v1 - v0, v2 - v0)``.

  Args:
    vertices: ``(..., V, 3)`` float32; leading axes are a batch sharing the triangles.
    triangles: ``(F, 3)`` int32.
    vertex_faces: ``(3, V, D)`` int32 from :func:`vertex_face_table` (e.g.
      ``MorphableModel.vertex_faces``). If ``None`` it is built from concrete ``triangles``; with
      traced triangles and no table the sum falls back to a scatter-add (same values, slower).

  Returns:
    ``(..., V, 3)`` float32; zeros at a vertex used by no triangle.
  """
  if vertex_faces is None and not _is_concrete(triangles):
    flat = jnp.asarray(vertices, jnp.float32).reshape(-1, *vertices.shape[-2:])
    cross = jax.vmap(face_cross, (0, None))(flat, triangles)
    summed = jnp.zeros_like(flat).at[:, triangles.reshape(-1)].add(jnp.repeat(cross, 3, axis=1))
    return summed.reshape(vertices.shape)
  rows, padded, table = _batch_minor(vertices, triangles, vertex_faces)
  return _batch_major(_summed_cross(rows, padded, table, False), vertices.shape)


def vertex_normals(
  vertices: jax.Array, triangles: jax.Array, vertex_faces: jax.Array | None = None
) -> jax.Array:
  """Area-weighted unit vertex normals ``(..., V, 3)``; a vertex used by no triangle gets zeros.

  Args are those of :func:`area_weighted_normals`: ``vertices (..., V, 3)`` float32,
  ``triangles (F, 3)`` int32 and the optional ``(3, V, D)`` table of :func:`vertex_face_table`.
  """
  if vertex_faces is None and not _is_concrete(triangles):
    return _safe_normalize(area_weighted_normals(vertices, triangles))
  rows, padded, table = _batch_minor(vertices, triangles, vertex_faces)
  # Normalised in the batch-minor layout (contiguous), then transposed once.
  return _batch_major(_summed_cross(rows, padded, table, True), vertices.shape)


def original_vertex_normals(
  vertices: jax.Array, triangles: jax.Array, vertex_faces: jax.Array | None = None
) -> jax.Array:
  """The original FOCUS vertex normal: the area-weighted *mean* of the unit face normals.

  ``sum_f area_f n_f / sum_f area_f = sum_f cross_f / sum_f |cross_f|``, not renormalised, so
  its norm is below 1 where the adjacent faces are not coplanar (0.954-1 on a face model). Used by
  the original-shading mode only (``pipeline.render(..., original_shading=True)``).

  Args:
    vertices: ``(..., V, 3)`` float32.
    triangles: ``(F, 3)`` int32, concrete unless ``vertex_faces`` is given.
    vertex_faces: ``(3, V, D)`` int32 from :func:`vertex_face_table`, or ``None`` to build it.

  Returns:
    ``(..., V, 3)`` float32; zeros at a vertex used by no triangle.
  """
  rows, padded, table = _batch_minor(vertices, triangles, vertex_faces)
  summed = _summed_cross(rows, padded, table, False)
  p0, p1, p2 = _corners(rows, padded, table)
  sq = jnp.sum(_cross(p1 - p0, p2 - p0) ** 2, axis=1)  # (F + 1, C); 0 on the padding face
  positive = sq > 0
  # Double where: the norm's gradient at a zero-area face would be inf * 0 = NaN.
  area2 = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  weight = _vertex_sum_op(area2, padded, table)[:, None]  # (V, 1, C)
  return _batch_major(summed / jnp.maximum(weight, _ORIGINAL_TINY), vertices.shape)
