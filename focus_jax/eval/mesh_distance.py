"""Exact scan-to-mesh distances and similarity alignment of a mesh to points (NumPy/SciPy, JAX).

Exact closest points (:class:`MeshDistance`): a KD-tree over the mesh vertices (plus lattice
points of the few large triangles) proposes the triangles around the nearest vertices, whose
exact closed-form distances a jitted float64 kernel evaluates all at once
(``focus_jax.eval.closest_kernel``); a certificate (no triangle whose sites all lie at distance
>= d can be closer than sqrt(d^2 - rho^2), rho a covering radius) proves the result, and the few
points it cannot prove get an exhaustive search. The result is the exact distance up to
floating-point rounding (float64). The KD-tree is built once per mesh; query points are moved
into the mesh frame by the inverse similarity.

Alignment: :func:`umeyama` fits a similarity (scale, rotation, translation; no reflections) to
corresponding points; :func:`refine_alignment` refines a similarity of the mesh by closest-point
iterations (ICP with scale, point-to-plane): closest points of the transformed surface to the
points are found, the distances linearised there are minimised by damped Gauss-Newton steps,
and so on until the RMS distance stops decreasing; the linearised distances are quadratic forms
in per-point moments, so the Gauss-Newton steps cost O(1) after one pass over the points.
:func:`refine_and_measure` runs one such round on every point and returns the exact distances.

Geometry is float64 ``(N, 3)`` arrays; triangles ``(F, 3)`` int. SciPy and JAX are imported
lazily (by :class:`MeshDistance`); the kernel runs on the host CPU whatever JAX's default
backend.
The NoW protocol built on this is ``focus_jax.eval.now``.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from focus_jax.eval import triangle_distance

# --------------------------------------------------------------------------------------------
# Similarity transforms.


@dataclasses.dataclass(frozen=True)
class Similarity:
  """``x -> scale * rotation @ x + translation``.

  Attributes:
    scale: positive float.
    rotation: ``(3, 3)`` float64 proper rotation.
    translation: ``(3,)`` float64.
  """

  scale: float
  rotation: np.ndarray
  translation: np.ndarray

  def apply(self, points: np.ndarray) -> np.ndarray:
    """Transforms ``points (N, 3)``."""
    return self.scale * points @ self.rotation.T + self.translation

  def inverse_apply(self, points: np.ndarray) -> np.ndarray:
    """Applies the inverse transform to ``points (N, 3)``."""
    return (points - self.translation) @ self.rotation / self.scale

  def compose(self, inner: Similarity) -> Similarity:
    """``self`` after ``inner``."""
    return Similarity(
      self.scale * inner.scale,
      self.rotation @ inner.rotation,
      self.scale * self.rotation @ inner.translation + self.translation,
    )


def umeyama(source: np.ndarray, target: np.ndarray, with_scale: bool = True) -> Similarity:
  """Least-squares similarity mapping ``source`` onto ``target`` (Umeyama 1991).

  Minimises ``sum_i || target_i - (s R source_i + t) ||^2`` over a proper rotation ``R``
  (det +1), ``t`` and, if ``with_scale``, ``s > 0`` (else ``s = 1``).

  Args:
    source: ``(N, 3)`` float points, N >= 3.
    target: ``(N, 3)`` float corresponding points.
    with_scale: fit the scale.

  Returns:
    The :class:`Similarity`.

  Raises:
    ValueError: for mismatched shapes, fewer than 3 points or a source collapsed to a point.
  """
  source = np.asarray(source, np.float64)
  target = np.asarray(target, np.float64)
  if source.ndim != 2 or source.shape[1] != 3 or source.shape != target.shape:
    raise ValueError(f"umeyama: expected equal (N, 3) arrays, got {source.shape}, {target.shape}")
  if source.shape[0] < 3:
    raise ValueError(f"umeyama: needs at least 3 points, got {source.shape[0]}")
  mu_s, mu_t = source.mean(0), target.mean(0)
  xs, xt = source - mu_s, target - mu_t
  var_s = np.sum(xs * xs) / source.shape[0]
  if var_s <= 0:
    raise ValueError("umeyama: the source points all coincide")
  cov = xt.T @ xs / source.shape[0]
  u, d, vt = np.linalg.svd(cov)
  sign = np.ones(3)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[2] = -1.0  # Exclude reflections: flip the weakest axis.
  rotation = (u * sign) @ vt
  scale = float(np.sum(d * sign) / var_s) if with_scale else 1.0
  return Similarity(scale, rotation, mu_t - scale * rotation @ mu_s)


# --------------------------------------------------------------------------------------------
# Exact point-to-triangle distances.


def _segment_closest(p, a, b):
  ab = b - a
  denom = np.einsum("...i,...i->...", ab, ab)
  t = np.einsum("...i,...i->...", p - a, ab) / np.where(denom > 0, denom, 1.0)
  t = np.clip(t, 0.0, 1.0)
  return a + t[..., None] * ab


def point_triangle_closest(
  points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Exact distance and closest point from points to triangles (broadcast over leading axes).

  The closest point is the orthogonal projection onto the triangle's plane when that falls
  inside the triangle (all barycentric coordinates >= 0), else the closest point of the three
  edges (segments, clamped). Degenerate triangles (collinear or coincident corners, or slivers
  with an angle's sine below 1e-8, whose normal is lost to rounding) reduce to their edges,
  which stays exact (to ~1e-8 edge lengths for slivers).

  Args:
    points: ``(..., 3)`` float64 query points.
    a, b, c: ``(..., 3)`` float64 triangle corners (broadcastable against ``points``).

  Returns:
    ``(distance (...,), closest (..., 3))`` float64.
  """
  candidates = [_segment_closest(points, a, b), _segment_closest(points, b, c)]
  candidates.append(_segment_closest(points, c, a))
  ab, ac, ap = b - a, c - a, points - a
  n = np.cross(ab, ac)
  nn = np.einsum("...i,...i->...", n, n)
  squared = lambda x: np.einsum("...i,...i->...", x, x)
  flat = nn > np.maximum(1e-16 * squared(ab) * squared(ac), 1e-300)
  safe_nn = np.where(flat, nn, 1.0)
  # Barycentric coordinates of the projection from signed sub-areas.
  w_b = np.einsum("...i,...i->...", np.cross(ap, ac), n) / safe_nn
  w_c = np.einsum("...i,...i->...", np.cross(ab, ap), n) / safe_nn
  inside = flat & (w_b >= 0) & (w_c >= 0) & (w_b + w_c <= 1)
  projection = points - (np.einsum("...i,...i->...", ap, n) / safe_nn)[..., None] * n
  best = np.where(inside[..., None], projection, candidates[0])
  best_d2 = np.sum((points - best) ** 2, axis=-1)
  for cand in candidates[1:]:
    d2 = np.sum((points - cand) ** 2, axis=-1)
    closer = (d2 < best_d2) & ~inside
    best = np.where(closer[..., None], cand, best)
    best_d2 = np.where(closer, d2, best_d2)
  return np.sqrt(best_d2), best


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Dot products ``(F,)`` of component-major ``(3, F)`` vectors."""
  return x[0] * y[0] + x[1] * y[1] + x[2] * y[2]


def _cross(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Cross products ``(3, F)`` of component-major ``(3, F)`` vectors."""
  return np.stack([x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0]])


def _lattice(n: int) -> np.ndarray:
  """Coordinates ``(S, 2)`` ``(i, j) / n`` along ``(B - A, C - A)`` of the lattice points of
  a triangle's n-fold subdivision, without the corners (which are mesh vertices already)."""
  i, j = np.divmod(np.arange((n + 1) ** 2), n + 1)
  keep = (i + j <= n) & ~(((i == 0) | (j == 0)) & ((i + j) % n == 0))
  return np.column_stack([i[keep], j[keep]]) / n


def _run_argmin(owner: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Positions of the first minimum of ``values (P,)`` in each run of equal ``owner (P,)``
  (sorted)."""
  starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
  run_min = np.minimum.reduceat(values, starts)
  hit = np.flatnonzero(values == np.repeat(run_min, np.diff(np.r_[starts, owner.size])))
  return hit[np.r_[True, owner[hit][1:] != owner[hit][:-1]]]


class MeshDistance:
  """Exact closest points on a fixed triangle mesh, accelerated by a KD-tree over sites.

  Sites are the mesh vertices, plus, for the few triangles whose enclosing-ball radius
  ``rho_T`` exceeds ``rho0`` (a percentile of ``rho_T``), the lattice points of their
  ``n^2``-fold subdivision, ``n = ceil(rho_T / rho0)``. Every triangle is then covered by
  sub-triangles of enclosing radius at most ``rho = max_T rho_T / n_T <= rho0`` whose corners
  are sites of that triangle (its vertices or its own lattice points).

  Certificate: if every site of a triangle ``T`` lies at distance ``>= d`` from ``p``, then
  ``dist(p, T)^2 >= d^2 - rho^2``. (For ``y = sum_i l_i v_i`` in a sub-triangle with corners
  ``v_i`` and enclosing centre ``c``: ``|p - y|^2 = sum_i l_i |p - v_i|^2 - sum_i l_i
  |v_i - c|^2 + |y - c|^2 >= d^2 - rho^2``.) So once the triangles incident to the ``j``
  nearest sites have been searched, no other triangle can beat the best squared distance
  ``u^2`` if ``d_j^2 - rho^2 >= u^2`` (``d_j``: distance of the (j+1)-th nearest site). Unlike a
  bound ``d_j - eps``, this one stays tight above a flat surface: the triangles around the 2-5
  nearest vertices usually suffice.

  A query takes the ``k`` nearest sites of every point; the jitted kernel evaluates the exact
  distance (:func:`triangle_distance.pair_distance2`) of every triangle incident to the first
  ``k - 1`` (a fixed ``(k - 1) * valence`` candidates per point: evaluating them all in one
  fused loop costs less than screening them), and the ``k``-th site certifies the best. Points
  it does not certify (a few percent, far from the surface) get an exhaustive search over the
  sites within ``sqrt(u^2 + rho^2)`` in NumPy, where every candidate is first screened by a
  cheap lower bound, its plane distance ``h`` and the lateral distance to its enclosing disc:
  ``dist^2 >= h^2 + (lateral - rho_T)_+^2``.

  Args:
    vertices: ``(V, 3)`` float mesh vertices.
    triangles: ``(F, 3)`` int triangle corner indices.
    k: nearest sites per query point: the triangles of the first ``k - 1`` are searched, the
      ``k``-th certifies, the rest is the exhaustive fallback (speed only).
    workers: threads of the KD-tree queries (``-1`` = all cores).
    rho_percentile: percentile of the triangles' enclosing radii above which triangles are
      subdivided (speed only).
  """

  def __init__(
    self,
    vertices: np.ndarray,
    triangles: np.ndarray,
    k: int = 8,
    workers: int = 1,
    rho_percentile: float = 95.0,
  ):
    from scipy.spatial import cKDTree  # Lazy: SciPy is only needed for evaluation.

    from focus_jax.eval import closest_kernel  # Lazy: it imports JAX.

    vertices = np.asarray(vertices, np.float64)
    triangles = np.asarray(triangles)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
      raise ValueError(f"vertices: expected shape (V, 3), got {vertices.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3 or triangles.shape[0] == 0:
      raise ValueError(f"triangles: expected shape (F, 3) with F > 0, got {triangles.shape}")
    if not np.issubdtype(triangles.dtype, np.integer):
      raise ValueError(f"triangles: expected integer indices, got {triangles.dtype}")
    if triangles.min() < 0 or triangles.max() >= vertices.shape[0]:
      raise ValueError(
        f"triangles: indices must lie in [0, {vertices.shape[0]}), got "
        f"[{triangles.min()}, {triangles.max()}]"
      )
    if not np.all(np.isfinite(vertices)):
      raise ValueError("vertices: contain non-finite values")
    triangles = triangles.astype(np.int64)
    # Component-major (3, F) arrays: reductions over 3 rows are much faster than over an axis
    # of length 3.
    coords = np.ascontiguousarray(vertices.T)
    a, b, c = coords[:, triangles[:, 0]], coords[:, triangles[:, 1]], coords[:, triangles[:, 2]]
    e0, e1 = b - a, c - a
    d00, d01, d11 = _dot(e0, e0), _dot(e0, e1), _dot(e1, e1)
    d22 = d00 - 2 * d01 + d11  # |C - B|^2
    normal = _cross(e0, e1)
    nn = _dot(normal, normal)
    # A triangle of zero area is the union of its edges: the "inside" case is switched off.
    # So is a sliver (sin(angle) < 1e-8): its normal is lost to rounding, so the inside case
    # would measure along an arbitrary direction, while its points lie within ~1e-8 edge
    # lengths of its edges.
    degenerate = nn <= np.maximum(1e-16 * d00 * d11, 1e-300)
    unit = normal / np.sqrt(np.where(degenerate, 1.0, nn))
    inv = lambda x: 1.0 / np.where(x > 0, x, np.inf)  # Zero-length edge: parameter 0.
    # Rows gathered per candidate pair: A, B - A, C - A, unit normal, |AB|^2, AB.AC, |AC|^2,
    # the inside limit |n|^2 (-1 if degenerate), |AB|^2 - AB.AC, 1/|AB|^2, 1/|AC|^2, 1/|BC|^2.
    limit = np.where(degenerate, -1.0, nn)
    self._exact_table = np.concatenate(
      [a, e0, e1, unit, np.stack([d00, d01, d11, limit, d00 - d01, inv(d00), inv(d11), inv(d22)])]
    )
    # Enclosing ball: centred on the circumcentre (acute triangles) or the midpoint of the
    # longest edge (others, degenerate ones included); its radius is measured as the largest
    # centre-to-corner distance, so it encloses the triangle whatever the rounding.
    circum = _cross(d00 * e1 - d11 * e0, normal) / (2 * np.where(degenerate, 1.0, nn))
    longest = np.argmax(np.stack([d00, d11, d22]), axis=0)
    mid = np.where(longest == 0, 0.5 * e0, np.where(longest == 1, 0.5 * e1, 0.5 * (e0 + e1)))
    obtuse = 2 * np.maximum(np.maximum(d00, d11), d22) >= d00 + d11 + d22
    centre = np.where(obtuse, mid, circum)  # Relative to A.
    rho_t = np.sqrt(
      np.maximum(
        np.maximum(_dot(centre, centre), _dot(centre - e0, centre - e0)),
        _dot(centre - e1, centre - e1),
      )
    ) * (1 + 1e-12)
    self._bound_table = np.concatenate([a + centre, unit, rho_t[None]])
    self.triangle_normals = unit.T  # (F, 3)

    # Sites: used vertices with their incident triangles (padded with -1), then lattice points
    # of the large triangles, each incident to its own triangle only.
    flat = triangles.reshape(-1)
    valence = np.bincount(flat, minlength=vertices.shape[0])
    order = np.argsort(flat, kind="stable")
    sorted_vertex = flat[order]
    slot = np.arange(flat.size) - (np.cumsum(valence) - valence)[sorted_vertex]
    incident = np.full((vertices.shape[0], int(valence.max())), -1, np.int64)
    incident[sorted_vertex, slot] = order // 3
    used = np.flatnonzero(valence)
    sites, site_incident = [vertices[used]], [incident[used]]
    rho0 = max(float(np.percentile(rho_t, rho_percentile)), 1e-12 * float(rho_t.max()), 1e-300)
    splits = np.maximum(np.ceil(rho_t / rho0), 1).astype(np.int64)
    for n in np.unique(splits[splits > 1]):
      ids = np.flatnonzero(splits == n)
      uv = _lattice(int(n))
      points = a[:, ids, None] + e0[:, ids, None] * uv[:, 0] + e1[:, ids, None] * uv[:, 1]
      sites.append(points.reshape(3, -1).T)
      own = np.full((ids.size * uv.shape[0], incident.shape[1]), -1, np.int64)
      own[:, 0] = np.repeat(ids, uv.shape[0])
      site_incident.append(own)
    # Sub-triangles are similar to their triangle, scaled by 1 / n.
    self.rho = float(np.max(rho_t / splits)) * (1 + 1e-9)
    self.site_incident = np.concatenate(site_incident)
    self.tree = cKDTree(np.concatenate(sites), balanced_tree=False, compact_nodes=False)
    self.k = int(min(max(k, 2), self.tree.n))
    self.workers = workers
    self._device_tables = closest_kernel.device_tables(self._exact_table, self.site_incident)

  def _exact2(self, points, tri, residual=False):
    """:func:`triangle_distance.pair_distance2` of points ``(3, P)`` and triangles ``tri (P,)``."""
    return triangle_distance.pair_distance2(np, points, self._exact_table[:, tri], residual)

  def _lower2(self, points, tri):
    """Lower bounds ``(P,)`` of the squared distances of points ``(3, P)`` to triangles ``tri
    (P,)``: squared plane distance plus the squared lateral distance to the enclosing disc."""
    cx, cy, cz, nx, ny, nz, rho = self._bound_table[:, tri]
    px, py, pz = points[0] - cx, points[1] - cy, points[2] - cz
    h = nx * px + ny * py + nz * pz
    h2 = h * h
    lateral = np.sqrt(np.maximum(px * px + py * py + pz * pz - h2, 0.0)) - rho
    return h2 + np.where(lateral > 0, lateral * lateral, 0.0)

  def _chunked(self, fn, points, owner, tri, chunk=16384):
    """``fn(points[:, owner], tri)`` in chunks whose temporaries stay in the cache."""
    out = np.empty(owner.size)
    for i in range(0, owner.size, chunk):
      out[i : i + chunk] = fn(points[:, owner[i : i + chunk]], tri[i : i + chunk])
    return out

  def _search(self, points, owner, tri, best):
    """Lowers ``best = (d2 (N,), tri (N,))`` in place by the pairs ``owner (P,)`` (sorted
    indices into ``points (3, N)``) x ``tri (P,)``: screened by the lower bound, then exact."""
    if owner.size == 0:
      return
    lower = self._chunked(self._lower2, points, owner, tri)
    keep = np.flatnonzero(lower <= best[0][owner] * (1 + 1e-9))
    if keep.size == 0:
      return
    owner, tri = owner[keep], tri[keep]
    exact = self._chunked(self._exact2, points, owner, tri)
    first = _run_argmin(owner, exact)
    rows = owner[first]
    better = exact[first] < best[0][rows]
    best[0][rows[better]], best[1][rows[better]] = exact[first[better]], tri[first[better]]

  def _site_pairs(self, rows, sites):
    """Pairs (query row, triangle) of the triangles incident to ``sites (M,)`` of ``rows (M,)``
    (``rows`` sorted)."""
    tri = self.site_incident[sites]
    valid = tri >= 0
    return np.repeat(rows, valid.sum(1)), tri[valid]

  def nearest_sites(self, points: np.ndarray, k: int | None = None):
    """The ``k`` (default ``self.k``) nearest sites of ``points (N, 3)``: distances ``(N, k)``
    float64, ascending, and site indices ``(N, k)`` int64."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    k = self.k if k is None else int(min(max(k, 1), self.tree.n))
    dist, site = self.tree.query(points, k=k, workers=self.workers)
    return dist.reshape(-1, k), site.reshape(-1, k)

  def query(
    self,
    points: np.ndarray,
    exact: bool = True,
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest mesh points to ``points``.

    Args:
      points: ``(N, 3)`` float query points.
      exact: certified search (see the class docs). With False only the triangles incident to
        the nearest site are searched: the distance is then an upper bound of the exact one,
        exact for most points near the surface, at a fraction of the cost.

    Returns:
      ``(distance (N,), closest (N, 3), triangle (N,))``: float64 distances and points and the
      int64 index of a closest triangle.
    """
    from focus_jax.eval import closest_kernel  # Lazy: it imports JAX.

    points = np.asarray(points, np.float64).reshape(-1, 3)
    n = points.shape[0]
    if n == 0:
      return np.zeros(0), np.zeros((0, 3)), np.zeros(0, np.int64)
    site_dist, site = self.nearest_sites(points, self.k if exact else 1)
    # Every triangle incident to the searched ranks at once (the jitted kernel makes evaluating
    # them all cheaper than screening them); the next rank's distance certifies the result.
    k = site.shape[1]
    ranks = max(k - 1, 1) if exact else 1
    d2, tri, residual = closest_kernel.closest(points, site[:, :ranks], self._device_tables)
    if exact:
      # Triangles with no site among the searched ranks have every site at distance >=
      # site_dist[:, ranks], hence a squared distance >= that squared minus rho^2.
      todo = np.arange(n)
      if ranks < k:
        todo = np.flatnonzero(site_dist[:, ranks] ** 2 - self.rho**2 < d2 * (1 + 1e-9))
      if todo.size:
        # Exhaustive: a triangle within sqrt(d2) has a site within sqrt(d2 + rho^2).
        pts = np.ascontiguousarray(points.T)
        radius = np.sqrt(d2[todo] + self.rho**2) * (1 + 1e-9)
        balls = self.tree.query_ball_point(points[todo], radius, workers=self.workers)
        counts = np.fromiter(map(len, balls), np.int64, len(balls))
        sites = np.fromiter(itertools.chain.from_iterable(balls), np.int64, int(counts.sum()))
        self._search(pts, *self._site_pairs(np.repeat(todo, counts), sites), (d2, tri))
        d2[todo], res = self._exact2(pts[:, todo], tri[todo], residual=True)
        residual[todo] = res.T
    return np.sqrt(d2), points - residual, tri


# --------------------------------------------------------------------------------------------
# Alignment refinement.


def _rotation_vector(omega: np.ndarray) -> np.ndarray:
  """Rotation matrix of the axis-angle vector ``omega (3,)`` (Rodrigues)."""
  theta = float(np.linalg.norm(omega))
  if theta < 1e-12:
    return np.eye(3)
  k = omega / theta
  kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
  return np.eye(3) + np.sin(theta) * kx + (1.0 - np.cos(theta)) * kx @ kx


class _Planes:
  """The linearised distances ``r_i = (R u_i) . (scan_i - sim(anchor_i))`` of scan points to the
  planes through mesh points ``anchor_i`` normal to mesh-frame unit directions ``u_i``, for any
  similarity ``sim = (s, R, t)``, from 16 moments of per-point features.

  With centred anchors ``a_i = anchor_i - mean(anchor)`` and scan points ``q_i = scan_i -
  mean(scan)``: ``r_i = <R, q_i u_i^T> - s u_i.a_i + u_i.v``, ``v = R^T (mean(scan) - t) - s
  mean(anchor)``, and the Jacobian rows of a step in scale, rotation about the centroid of
  ``sim(anchor)`` and translation are ``(s u_i.a_i, s R (a_i x u_i), R u_i)``. Both are linear in
  the features ``phi_i = (u_i.a_i, u_i, a_i x u_i, q_i u_i^T)``, so the sums over points come
  from ``M = mean(phi phi^T)`` (16 x 16): an RMS or a Gauss-Newton step costs O(1) however many
  points there are.
  """

  def __init__(self, scan: np.ndarray, anchor: np.ndarray, direction: np.ndarray):
    self.scan_mean, self.anchor_mean = scan.mean(axis=0), anchor.mean(axis=0)
    q, a, u = scan - self.scan_mean, anchor - self.anchor_mean, direction
    outer = (q[:, :, None] * u[:, None, :]).reshape(-1, 9)
    phi = np.column_stack([np.sum(u * a, axis=1), u, np.cross(a, u), outer])
    self.moments = phi.T @ phi / scan.shape[0]

  def _residual_map(self, sim: Similarity) -> np.ndarray:
    """``b (16,)`` with ``r_i = b . phi_i``."""
    v = sim.rotation.T @ (self.scan_mean - sim.translation) - sim.scale * self.anchor_mean
    return np.concatenate([[-sim.scale], v, np.zeros(3), sim.rotation.ravel()])

  def rms(self, sim: Similarity) -> float:
    """RMS of the linearised distances under ``sim``."""
    b = self._residual_map(sim)
    return float(np.sqrt(max(b @ self.moments @ b, 0.0)))

  def step(self, sim: Similarity, damping: float) -> Similarity:
    """One damped Gauss-Newton (Levenberg-Marquardt) step on ``sum_i r_i^2``, parametrised by
    scale, axis-angle rotation about the centroid of ``sim(anchor)`` and translation."""
    jac = np.zeros((7, 16))  # Jacobian rows = jac @ phi_i.
    jac[0, 0] = sim.scale
    jac[1:4, 4:7] = sim.scale * sim.rotation
    jac[4:7, 1:4] = sim.rotation
    jm = jac @ self.moments
    jtj = jm @ jac.T
    jtj_damped = jtj + damping * np.diag(np.diag(jtj))
    step = np.linalg.lstsq(jtj_damped, jm @ self._residual_map(sim), rcond=None)[0]
    scale = 1.0 + step[0]
    if scale <= 0:
      return sim
    rotation = _rotation_vector(step[1:4])
    centre = sim.apply(self.anchor_mean[None])[0]
    update = Similarity(scale, rotation, centre + step[4:] - scale * rotation @ centre)
    return update.compose(sim)


def _refine_planes(
  scan: np.ndarray,
  sim: Similarity,
  anchor: np.ndarray,
  direction: np.ndarray,
  max_iterations: int,
  tolerance: float,
) -> tuple[Similarity, int]:
  """Levenberg-Marquardt on the RMS of the linearised distances of :class:`_Planes` for fixed
  anchors ``(N, 3)`` and unit directions ``(N, 3)`` (mesh frame): point-to-plane ICP's inner
  problem, which converges in a few steps and needs no search.

  Returns ``(similarity, iterations)``."""
  planes = _Planes(scan, anchor, direction)
  value, iterations, damping = planes.rms(sim), 0, 1e-3
  while iterations < max_iterations:
    iterations += 1
    for _ in range(3):  # Damping grows on a rejected step.
      candidate = planes.step(sim, damping)
      trial = planes.rms(candidate)
      if trial < value:
        damping = max(damping / 10, 1e-6)
        break
      damping *= 10
    else:
      break
    converged = value - trial <= tolerance * max(value, 1e-12)
    sim, value = candidate, trial
    if converged:
      break
  return sim, iterations


def _linearisation(mesh: MeshDistance, points: np.ndarray, closest: np.ndarray, tri: np.ndarray):
  """Unit directions ``(N, 3)`` from the closest points to the points (mesh frame); the
  triangle normal where they coincide (any unit vector gives the same zero distance, the
  normal keeps the tangential slide free)."""
  e = points - closest
  d = np.linalg.norm(e, axis=1)
  return np.where(
    d[:, None] > 1e-12, e / np.maximum(d, 1e-300)[:, None], mesh.triangle_normals[tri]
  )


def refine_alignment(
  mesh: MeshDistance,
  scan: np.ndarray,
  initial: Similarity,
  max_iterations: int = 30,
  tolerance: float = 1e-5,
  exact: bool = False,
) -> tuple[Similarity, int]:
  """Refines a similarity of the mesh by minimising the RMS scan-to-surface distance.

  Closest-point iterations (point-to-plane ICP with scale): each round finds the closest
  surface points of the transformed mesh, then minimises the distances linearised there (to
  the planes through the closest points, normal to the point-to-surface directions) by damped
  Gauss-Newton steps (:func:`_refine_planes`). A round that does not lower the true RMS is
  undone. Stops when a round lowers the RMS by less than ``tolerance`` (relative) or the
  iterations run out.

  Args:
    mesh: the predicted mesh in its own frame.
    scan: ``(N, 3)`` float64 scan points.
    initial: the starting mesh-to-scan similarity.
    max_iterations: Gauss-Newton iterations at most (all rounds together).
    tolerance: relative RMS decrease that counts as converged.
    exact: certified closest points in every round (see :meth:`MeshDistance.query`). The
      default searches the triangles around the nearest site: exact for most points near the
      surface, an upper bound elsewhere, which changes the optimum negligibly.

  Returns:
    ``(similarity, iterations)``.
  """
  sim, iterations = initial, 0
  points = sim.inverse_apply(scan)
  dist, closest, tri = mesh.query(points, exact=exact)
  rms = sim.scale * float(np.sqrt(np.mean(dist * dist)))
  while iterations < max_iterations:
    direction = _linearisation(mesh, points, closest, tri)
    candidate, used = _refine_planes(
      scan, sim, closest, direction, max_iterations - iterations, tolerance
    )
    iterations += used
    points = candidate.inverse_apply(scan)
    dist, new_closest, new_tri = mesh.query(points, exact=exact)
    new_rms = candidate.scale * float(np.sqrt(np.mean(dist * dist)))
    if used == 0 or new_rms >= rms:
      break
    converged = rms - new_rms <= tolerance * max(rms, 1e-12)
    sim, rms, closest, tri = candidate, new_rms, new_closest, new_tri
    if converged:
      break
  return sim, iterations


def refine_and_measure(
  mesh: MeshDistance,
  scan: np.ndarray,
  initial: Similarity,
  max_iterations: int = 30,
  tolerance: float = 1e-5,
) -> tuple[np.ndarray, Similarity, int]:
  """One point-to-plane round on every scan point, then their exact distances to the surface.

  The closest triangles around each point's nearest site linearise the distances, which are
  minimised (:func:`_refine_planes`); then the exact search runs at the final positions. (It
  queries the KD-tree afresh: reusing the first query with its certificate loosened by how far
  the points moved, ~1 mm after a subset refinement, would send most points to the exhaustive
  search.) A round that raises the RMS is undone. The KD-tree queries are exact: with
  ``eps=1`` approximate ones in the searches that only linearise (``exact=False``; a mesh 155 ->
  132 ms) the per-mesh medians moved by up to 3%, the alignment settling elsewhere.

  Args:
    mesh: the mesh in its own frame.
    scan: ``(N, 3)`` float64 points.
    initial: the starting mesh-to-scan similarity (e.g. from :func:`refine_alignment` on a
      subset of the points).
    max_iterations: Gauss-Newton iterations at most.
    tolerance: relative RMS decrease that counts as converged.

  Returns:
    ``(distances (N,) float64 in the scan's unit, similarity, iterations)``.
  """
  start = initial.inverse_apply(scan)
  approx, closest, tri = mesh.query(start, exact=False)
  direction = _linearisation(mesh, start, closest, tri)
  final, used = _refine_planes(scan, initial, closest, direction, max_iterations, tolerance)
  dist, _, _ = mesh.query(final.inverse_apply(scan))
  if final.scale**2 * np.mean(dist * dist) > initial.scale**2 * np.mean(approx * approx):
    # The last step raised the true RMS above an upper bound of the previous one: undo it.
    final, used = initial, 0
    dist, _, _ = mesh.query(start)
  return final.scale * dist, final, used
