"""Triangle-mesh geometry: face normals and area-weighted vertex normals.

Face normal = normalised ``cross(v1 - v0, v2 - v0)`` (outwards with the winding convention of
``focus_jax.render``). The vertex normal is the area-weighted mean of the adjacent face normals,
i.e. the normalised sum of the unnormalised cross products. The original FOCUS code does not
renormalise that mean (SPEC §3); we do, so the SH shading sees unit normals.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-12


def _safe_normalize(v: jax.Array) -> jax.Array:
  # The norm's gradient is infinite at 0 (degenerate triangles); keep it finite.
  sq = jnp.sum(v * v, axis=-1, keepdims=True)
  return v * jax.lax.rsqrt(jnp.maximum(sq, _EPS))


def face_cross(vertices: jax.Array, triangles: jax.Array) -> jax.Array:
  """``cross(v1 - v0, v2 - v0)`` per triangle, ``(F, 3)``; its length is twice the area."""
  v0, v1, v2 = (vertices[triangles[:, i]] for i in range(3))
  return jnp.cross(v1 - v0, v2 - v0)


def face_normals(vertices: jax.Array, triangles: jax.Array) -> jax.Array:
  """Unit face normals ``(F, 3)`` of vertices ``(V, 3)`` and triangles ``(F, 3)`` int32."""
  return _safe_normalize(face_cross(vertices, triangles))


def vertex_normals(vertices: jax.Array, triangles: jax.Array) -> jax.Array:
  """Area-weighted unit vertex normals ``(V, 3)``; a vertex used by no triangle gets zeros."""
  cross = face_cross(vertices, triangles)
  summed = jnp.zeros_like(vertices).at[triangles.reshape(-1)].add(jnp.repeat(cross, 3, axis=0))
  return _safe_normalize(summed)
