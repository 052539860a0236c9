"""Jitted float64 closest-triangle search over fixed-size candidate sets (JAX on the host CPU).

:class:`mesh_distance.MeshDistance` hands every query point a row of its nearest KD-tree sites;
the triangles incident to them (a padded ``(S, V)`` table, -1 for none) are the point's
candidates. The kernel evaluates the exact squared distance of every (point, candidate) pair
with the closed form of :func:`triangle_distance.pair_distance2` and keeps each point's closest
candidate (the first on ties). XLA fuses the closed form and the per-row gathers of the triangle
table into one loop, ~20x less CPU time per pair than the same NumPy expression with its dozens
of temporaries, so evaluating every candidate is cheaper than screening them.

Everything runs under ``jax.enable_x64(True)`` (a context: the global flag is left alone), so
the distances are float64 and agree with the NumPy path to rounding. Points go through in blocks
of :data:`BLOCK` rows (the last one padded), so the block's temporaries stay in the cache; one
compilation per number of sites per point and per power-of-two bucket of the mesh's size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.eval import triangle_distance

# Rows per kernel call: large enough to amortise the dispatch, small enough for the cache.
BLOCK = 1024


def _pad(x: np.ndarray, axis: int, value, extra: int = 0) -> np.ndarray:
  """``x`` padded with ``value`` along ``axis`` to the next power of two (at least 1024) plus
  ``extra``."""
  size = max(1024, 1 << (x.shape[axis] - 1).bit_length()) + extra
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return np.pad(x, pad, constant_values=value)


def device_tables(table: np.ndarray, incident: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """``MeshDistance``'s exact-distance rows ``(20, F)`` as float64 and its site-to-triangle
  table ``(S, V)`` as int32, as JAX arrays.

  F and S are padded (never indexed) to a power of two, so that meshes of similar sizes, whose
  lattice sites vary in number, share one compilation. The rows of the float table get 17 more
  cache lines: at a power-of-two stride the 20 values of one triangle would fall into the same
  cache set and evict each other (twice the kernel time).
  """
  table = _pad(np.asarray(table, np.float64), 1, 0.0, extra=17 * 8)
  incident = _pad(incident.astype(np.int32), 0, -1)
  # Committed to the host CPU: the kernel follows them there even where the default backend is
  # an accelerator (float64 is slow or missing on some).
  cpu = jax.devices("cpu")[0]
  with jax.enable_x64(True):
    return jax.device_put(table, cpu), jax.device_put(incident, cpu)


@jax.jit
def _closest_block(points, sites, incident, table):
  """Closest candidates of one block: ``points (B, 3)`` f64, ``sites (B, R)`` int32, ``incident
  (S, V)`` int32 (-1: none), ``table (20, F)`` f64 -> ``(d2 (B,), triangle (B,), residual (B,
  3))``."""
  candidates = incident[sites].reshape(sites.shape[0], -1)
  safe = jnp.maximum(candidates, 0)
  # One gather per table row: XLA fuses each into the distance loop instead of materialising a
  # (B, C, 20) block, which would spill the cache.
  rows = [table[i][safe] for i in range(table.shape[0])]
  d2 = triangle_distance.pair_distance2(jnp, points.T[:, :, None], rows)
  d2 = jnp.where(candidates >= 0, d2, jnp.inf)
  pick = jnp.argmin(d2, axis=1)[:, None]
  triangle = jnp.take_along_axis(candidates, pick, 1)[:, 0]
  _, residual = triangle_distance.pair_distance2(
    jnp, points.T, table[:, jnp.maximum(triangle, 0)], residual=True
  )
  return jnp.take_along_axis(d2, pick, 1)[:, 0], triangle, residual.T


def closest(
  points: np.ndarray, sites: np.ndarray, tables: tuple[jax.Array, jax.Array]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Each point's closest triangle among those incident to the given sites.

  Args:
    points: ``(N, 3)`` float64 query points.
    sites: ``(N, R)`` int site indices per point.
    tables: :func:`device_tables` of the mesh.

  Returns:
    ``(d2 (N,), triangle (N,), residual (N, 3))``: float64 squared distances, int64 triangle
    indices and ``point - closest point`` (float64).
  """
  n, ranks = sites.shape
  points = np.asarray(points, np.float64)
  sites = sites.astype(np.int32)
  table, incident = tables
  outs = []
  with jax.enable_x64(True):
    for start in range(0, n, BLOCK):
      p, s = points[start : start + BLOCK], sites[start : start + BLOCK]
      if p.shape[0] < BLOCK:  # Padding rows: any valid site; their results are dropped.
        p = np.concatenate([p, np.zeros((BLOCK - p.shape[0], 3))])
        s = np.concatenate([s, np.zeros((BLOCK - s.shape[0], ranks), np.int32)])
      outs.append(_closest_block(p, s, incident, table))  # Asynchronous; gathered below.
    d2, triangle, residual = (np.concatenate([np.asarray(o[i]) for o in outs]) for i in range(3))
  return d2[:n], triangle[:n].astype(np.int64), residual[:n]
