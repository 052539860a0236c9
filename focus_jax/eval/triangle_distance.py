"""The exact squared distance of points to triangles in closed form, for NumPy or ``jax.numpy``.

One expression shared by the NumPy search of :mod:`focus_jax.eval.mesh_distance` and the jitted
kernel of :mod:`focus_jax.eval.closest_kernel`, so both compute the same values; it imports
neither (the kernel imports JAX, the search must not need it).
"""

from __future__ import annotations


def pair_distance2(xp, points, rows, residual=False):
  """Exact squared distances of points to triangles given by rows of ``MeshDistance``'s table.

  The plane distance when the projection falls inside the triangle (barycentrics times
  ``|n|^2`` non-negative, summing to at most ``|n|^2``; never for a zero-area triangle or a
  sliver, whose limit is -1), else the closest of the three clamped edge projections, from explicit
  residuals (accurate down to zero distance). Shared by the NumPy search and the jitted kernel
  (``focus_jax.eval.closest_kernel``), so both evaluate the same expression.

  Args:
    xp: ``numpy`` or ``jax.numpy``.
    points: ``(3, ...)`` float64 points, component-major.
    rows: the 20 table rows (A, B - A, C - A, unit normal, |AB|^2, AB.AC, |AC|^2, inside limit,
      |AB|^2 - AB.AC, 1/|AB|^2, 1/|AC|^2, 1/|BC|^2), each broadcastable against ``points[0]``.
    residual: also return ``point - closest point`` ``(3, ...)``.

  Returns:
    ``d2 (...)``, or ``(d2, residual)``.
  """
  ax, ay, az, e0x, e0y, e0z, e1x, e1y, e1z, nx, ny, nz = rows[:12]
  d00, d01, d11, lim, c22, i00, i11, i22 = rows[12:]
  apx, apy, apz = points[0] - ax, points[1] - ay, points[2] - az
  d1 = e0x * apx + e0y * apy + e0z * apz
  d2 = e1x * apx + e1y * apy + e1z * apz
  s = d11 * d1 - d01 * d2
  t = d00 * d2 - d01 * d1
  inside = (s >= 0) & (t >= 0) & (s + t <= lim)
  h = nx * apx + ny * apy + nz * apz
  u = xp.minimum(xp.maximum(d1 * i00, 0.0), 1.0)
  ab = (apx - u * e0x, apy - u * e0y, apz - u * e0z)
  v = xp.minimum(xp.maximum(d2 * i11, 0.0), 1.0)
  ac = (apx - v * e1x, apy - v * e1y, apz - v * e1z)
  w = xp.minimum(xp.maximum((d2 - d1 + c22) * i22, 0.0), 1.0)
  e2x, e2y, e2z = e1x - e0x, e1y - e0y, e1z - e0z
  bc = (apx - e0x - w * e2x, apy - e0y - w * e2y, apz - e0z - w * e2z)
  dab, dac, dbc = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2] for r in (ab, ac, bc))
  edge = xp.minimum(xp.minimum(dab, dac), dbc)
  dist2 = xp.where(inside, h * h, edge)
  if not residual:
    return dist2
  pick_ab, pick_ac = (dab == edge)[None], (dac == edge)[None]
  res = xp.where(pick_ab, xp.stack(ab), xp.where(pick_ac, xp.stack(ac), xp.stack(bc)))
  return dist2, xp.where(inside[None], h * xp.stack([nx, ny, nz]), res)
