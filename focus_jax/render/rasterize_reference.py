"""Slow, obviously-correct NumPy reference rasteriser (tests only; SPEC §4 semantics).

Loops over triangles and over the pixel centres of each triangle's bounding box, in float64.
Conventions as in ``rasterize``: ``projected`` is ``(V, 3)`` (pixel x, pixel y, depth), pixel
centres at integer coordinates, y down. A triangle is drawn if its depths are all > 0 and its 2D
signed area is negative (front-facing for our camera, see ``rasterize``); a pixel is inside if its
three barycentrics are >= 0; the nearest depth wins and exact ties go to the lower face index.

Because the fast rasteriser works in float32, decisions within rounding distance of an edge or a
depth tie may legitimately differ; the reference reports such pixels as ``ambiguous`` (within
``tol`` pixels of an edge of a triangle whose box contains the pixel, or a depth gap below ``tol``
times the depth between the two nearest candidates).
"""

from __future__ import annotations

import numpy as np


def rasterize_reference(projected, triangles, height: int, width: int, tol: float = 0.0):
  """Reference z-buffer.

  Args:
    projected: ``(V, 3)`` float array (pixel x, pixel y, depth).
    triangles: ``(F, 3)`` int array.
    height, width: image size.
    tol: ambiguity tolerance (pixels for edges, relative for depth).

  Returns:
    ``face_id (H, W)`` int32 (-1 background), ``bary (H, W, 3)`` float64, ``depth (H, W)``
    float64 (0 on background) and ``ambiguous (H, W)`` bool.
  """
  p = np.asarray(projected, np.float64)
  tris = np.asarray(triangles, np.int64)
  face_id = np.full((height, width), -1, np.int32)
  zbuf = np.full((height, width), np.inf)
  second = np.full((height, width), np.inf)
  bary = np.zeros((height, width, 3))
  ambiguous = np.zeros((height, width), bool)
  for f, (i0, i1, i2) in enumerate(tris):
    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = p[i0], p[i1], p[i2]
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    if not (area < 0 and z0 > 0 and z1 > 0 and z2 > 0):
      continue
    xs = range(
      max(int(np.ceil(min(x0, x1, x2))), 0), min(int(np.floor(max(x0, x1, x2))), width - 1) + 1
    )
    ys = range(
      max(int(np.ceil(min(y0, y1, y2))), 0), min(int(np.floor(max(y0, y1, y2))), height - 1) + 1
    )
    verts = ((x0, y0), (x1, y1), (x2, y2))
    lengths = [
      np.hypot(verts[b][0] - verts[a][0], verts[b][1] - verts[a][1])
      for a, b in ((1, 2), (2, 0), (0, 1))
    ]
    for y in ys:
      for x in xs:
        e = [
          (verts[a][0] - x) * (verts[b][1] - y) - (verts[a][1] - y) * (verts[b][0] - x)
          for a, b in ((1, 2), (2, 0), (0, 1))
        ]
        if (
          tol > 0
          and min(abs(ek) / max(lk, 1e-30) for ek, lk in zip(e, lengths, strict=True)) <= tol
        ):
          ambiguous[y, x] = True
        if not all(ek <= 0 for ek in e):
          continue
        b = np.array(e) / sum(e)
        z = z0 + b[1] * (z1 - z0) + b[2] * (z2 - z0)
        if z < zbuf[y, x]:
          second[y, x] = zbuf[y, x]
          zbuf[y, x], face_id[y, x], bary[y, x] = z, f, b
        else:
          second[y, x] = min(second[y, x], z)
  depth = np.where(face_id >= 0, zbuf, 0.0)
  if tol > 0:
    with np.errstate(invalid="ignore"):  # inf - inf where nothing or one triangle was drawn
      gap = np.where(np.isfinite(second), second - zbuf, np.inf)
    ambiguous |= (face_id >= 0) & (gap <= tol * np.abs(zbuf))
  return face_id, bary, depth, ambiguous
