"""NoW-challenge-style 3D reconstruction error (scan-to-mesh distance), in NumPy/SciPy.

The protocol of soubhiksanyal/now_evaluation (``scan2mesh_computations.py``), reimplemented:

1. Crop the ground-truth scan to a sphere (:func:`crop_sphere`): with the 7 scan landmarks
   (outer eye corner, inner eye corner, inner eye corner, outer eye corner, nose bottom, mouth
   corner, mouth corner), bridge = mean of the inner eye corners, centre = nose bottom
   + 0.3 (bridge - nose bottom), radius = 1.4 (outer-eye distance + |bridge - nose bottom|) / 2;
   scan vertices at distance <= radius are kept.
2. Similarity (scale, rotation, translation) from the 7 predicted landmarks to the 7 scan
   landmarks (:func:`umeyama`). Reflections are excluded (the reference's Procrustes allows
   ``reflection='best'``, which never wins for a face-shaped landmark set).
3. Refinement of the similarity by closest-point iterations (ICP with scale): the closest
   points of the transformed predicted surface to the cropped scan vertices are found, the
   similarity is re-fitted to them in closed form, and so on until the RMS distance stops
   decreasing. This minimises the same objective as the reference (sum of squared unsigned
   scan-vertex-to-surface distances, solved there by a chumpy CG solver), to a local minimum.
4. Error = the unsigned distance of every cropped scan vertex to the aligned predicted surface
   (exact point-to-triangle distances). Over a set of images the distances are concatenated and
   summarised by median, mean and std (:func:`summarize`), in the scan's unit (mm).

Exact closest points (:class:`MeshDistance`): a KD-tree over triangle sites (centroids, or
sub-triangle centroids for the few large triangles) proposes the ``k`` nearest triangles, whose
exact point-to-triangle distances are computed in closed form. Every point of a triangle lies
within a covering radius ``eps`` of one of its sites, so no triangle outside the candidates can be
closer than ``(distance to the k-th site) - eps``: when the best candidate beats that bound it is
the global minimum; otherwise every triangle with a site within (best + eps) is tested (after a
cheap plane/lateral lower bound discards most of them). The result is the exact
distance up to floating-point rounding (float64).

Geometry is float64 ``(N, 3)`` arrays; triangles ``(F, 3)`` int. SciPy is imported lazily.
Files (OBJ without colours, 7x3 landmark ``.npy``) follow the NoW submission format.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
from collections.abc import Sequence

import numpy as np

# Positions in the NoW 7-landmark order.
OUTER_EYE = (0, 3)
INNER_EYE = (1, 2)
NOSE_BOTTOM = 4


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
  edges (segments, clamped). Degenerate triangles (collinear or coincident corners) reduce to
  their edges, which stays exact.

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
  safe_nn = np.where(nn > 0, nn, 1.0)
  # Barycentric coordinates of the projection from signed sub-areas.
  w_b = np.einsum("...i,...i->...", np.cross(ap, ac), n) / safe_nn
  w_c = np.einsum("...i,...i->...", np.cross(ab, ap), n) / safe_nn
  inside = (nn > 0) & (w_b >= 0) & (w_c >= 0) & (w_b + w_c <= 1)
  projection = points - (np.einsum("...i,...i->...", ap, n) / safe_nn)[..., None] * n
  best = np.where(inside[..., None], projection, candidates[0])
  best_d2 = np.sum((points - best) ** 2, axis=-1)
  for cand in candidates[1:]:
    d2 = np.sum((points - cand) ** 2, axis=-1)
    closer = (d2 < best_d2) & ~inside
    best = np.where(closer[..., None], cand, best)
    best_d2 = np.where(closer, d2, best_d2)
  return np.sqrt(best_d2), best


def _subdivision_sites(n: int) -> np.ndarray:
  """Barycentric ``(n^2, 3)`` centroids of the ``n^2`` similar sub-triangles of a triangle."""
  sites = []
  for i in range(n):
    for j in range(n - i):
      sites.append(((3 * i + 1) / (3 * n), (3 * j + 1) / (3 * n)))  # Upright sub-triangles.
      if i + j <= n - 2:
        sites.append(((3 * i + 2) / (3 * n), (3 * j + 2) / (3 * n)))  # Inverted ones.
  uv = np.asarray(sites)
  return np.column_stack([1.0 - uv.sum(1), uv])


class MeshDistance:
  """Exact closest points on a fixed triangle mesh, accelerated by a KD-tree over sites.

  Sites are triangle centroids; a triangle whose centroid-to-corner radius ``r_T`` exceeds the
  covering radius ``eps`` (the 95th percentile of ``r_T``) is split into ``n^2`` similar
  sub-triangles, ``n = ceil(r_T / eps)``, whose centroids are its sites, so that every point of
  every triangle lies within ``eps`` of one of its own sites. Hence a triangle none of whose sites
  is among the ``k`` nearest to ``p`` lies at distance >= ``d_k - eps`` (``d_k`` = distance to
  the k-th nearest site): when the best exact candidate distance is at most that, it is the
  global minimum. Uncertified points get an exhaustive search over every triangle with a site
  within ``best + eps`` of them (a superset of the triangles that can be closer).

  Args:
    vertices: ``(V, 3)`` float mesh vertices.
    triangles: ``(F, 3)`` int triangle corner indices.
    k: number of nearest sites tried first per query point.
    workers: threads of the KD-tree queries (``-1`` = all cores).
  """

  def __init__(self, vertices: np.ndarray, triangles: np.ndarray, k: int = 8, workers: int = 1):
    from scipy.spatial import cKDTree  # Lazy: SciPy is only needed for evaluation.

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
    self.corners = vertices[triangles]  # (F, 3 corners, 3)
    normals = np.cross(
      self.corners[:, 1] - self.corners[:, 0], self.corners[:, 2] - self.corners[:, 0]
    )
    self.normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
    self.centroids = self.corners.mean(axis=1)
    radius = np.linalg.norm(self.corners - self.centroids[:, None], axis=-1).max(axis=1)
    self.radius = radius
    self.eps = max(float(np.percentile(radius, 95)), 1e-12)
    splits = np.maximum(np.ceil(radius / self.eps - 1e-9), 1).astype(np.int64)
    sites, owners = [], []
    for n in np.unique(splits):
      ids = np.flatnonzero(splits == n)
      weights = _subdivision_sites(int(n))  # (S, 3)
      sites.append(np.einsum("sc,fcd->fsd", weights, self.corners[ids]).reshape(-1, 3))
      owners.append(np.repeat(ids, weights.shape[0]))
    self.site_owner = np.concatenate(owners)
    self.tree = cKDTree(np.concatenate(sites))
    self.k = int(min(max(k, 1), self.tree.n))
    self.workers = workers

  def _exact(self, points, tri):
    corners = self.corners[tri]
    return point_triangle_closest(
      points, corners[..., 0, :], corners[..., 1, :], corners[..., 2, :]
    )

  def _nearest_sites(self, points):
    site_dist, site = self.tree.query(points, k=self.k, workers=self.workers)
    site_dist, site = site_dist.reshape(-1, self.k), site.reshape(-1, self.k)
    tri = self.site_owner[site]
    dist, closest = self._exact(points[:, None, :], tri)
    pick = np.argmin(dist, axis=1)
    rows = np.arange(points.shape[0])
    certified = (self.k >= self.tree.n) | (dist[rows, pick] <= site_dist[:, -1] - self.eps)
    return dist[rows, pick], closest[rows, pick], tri[rows, pick], certified

  def _exact_search(self, points, upper, closest, tri):
    """Exact search given upper bounds ``upper (N,)`` realised by mesh points ``closest`` on
    triangles ``tri``: every triangle with a site within ``upper + eps`` is a candidate (a
    superset of the triangles that can be closer). Returns the improved triple."""
    balls = self.tree.query_ball_point(points, upper + self.eps, workers=self.workers)
    counts = np.fromiter(map(len, balls), np.int64, len(balls))
    owner = np.repeat(np.arange(points.shape[0]), counts)
    cand = self.site_owner[
      np.fromiter(itertools.chain.from_iterable(balls), np.int64, int(counts.sum()))
    ]
    # Cheap lower bound first: dist^2 >= (distance to the plane)^2
    # + (in-plane distance to the centroid - radius)_+^2; only triangles that may beat the
    # upper bound get the exact distance.
    offset = points[owner] - self.centroids[cand]
    height = np.einsum("ij,ij->i", offset, self.normals[cand])
    lateral = np.sqrt(np.maximum(np.einsum("ij,ij->i", offset, offset) - height**2, 0.0))
    bound = height**2 + np.maximum(lateral - self.radius[cand], 0.0) ** 2
    keep = bound <= (upper[owner] * (1 + 1e-9)) ** 2 + 1e-18
    owner, cand = owner[keep], cand[keep]
    dist, point = self._exact(points[owner], cand)
    upper, closest, tri = upper.copy(), closest.copy(), tri.copy()
    if owner.size:
      # ``owner`` is sorted: per run (query point), the first minimum is its answer.
      starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
      run_min = np.minimum.reduceat(dist, starts)
      run = np.searchsorted(starts, np.arange(owner.size), "right") - 1
      hit = np.flatnonzero(dist == run_min[run])
      pick = hit[np.r_[True, run[hit][1:] != run[hit][:-1]]]
      rows = owner[pick]
      better = dist[pick] < upper[rows]
      rows, pick = rows[better], pick[better]
      upper[rows], closest[rows], tri[rows] = dist[pick], point[pick], cand[pick]
    return upper, closest, tri

  def query(
    self, points: np.ndarray, exact: bool = True
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest points of the mesh to ``points (N, 3)``.

    Args:
      points: ``(N, 3)`` float query points.
      exact: the exact search (see the class docs). With False only the triangles of the ``k``
        nearest sites are tried: the distance is then an upper bound of the exact one, exact
        wherever the best candidate beats ``d_k - eps`` (most points close to the surface).

    Returns:
      ``(distance (N,), closest (N, 3), triangle (N,))``: float64 distances and points and the
      int64 index of a closest triangle.
    """
    points = np.asarray(points, np.float64).reshape(-1, 3)
    best, closest, tri, certified = self._nearest_sites(points)
    todo = np.flatnonzero(~certified)
    if exact and todo.size:
      best[todo], closest[todo], tri[todo] = self._exact_search(
        points[todo], best[todo], closest[todo], tri[todo]
      )
    return best, closest, tri


# --------------------------------------------------------------------------------------------
# The NoW protocol.


def _check_landmarks7(name: str, landmarks) -> np.ndarray:
  landmarks = np.asarray(landmarks, np.float64)
  if landmarks.shape == (1, 7, 3):
    landmarks = landmarks[0]
  if landmarks.shape != (7, 3):
    raise ValueError(f"{name}: expected 7x3 NoW landmarks, got shape {landmarks.shape}")
  if not np.all(np.isfinite(landmarks)):
    raise ValueError(f"{name}: landmarks contain non-finite values")
  return landmarks


def crop_sphere(scan_landmarks: np.ndarray) -> tuple[np.ndarray, float]:
  """The NoW face-crop sphere ``(centre (3,), radius)`` from the scan's 7 landmarks.

  bridge = mean of the inner eye corners (positions 1, 2), centre = nose bottom (4)
  + 0.3 (bridge - nose bottom), radius = 1.4 (|outer eye 0 - outer eye 3| + |bridge - nose
  bottom|) / 2 (``compute_mask`` of now_evaluation).
  """
  lm = _check_landmarks7("scan_landmarks", scan_landmarks)
  bottom = lm[NOSE_BOTTOM]
  bridge = 0.5 * (lm[INNER_EYE[0]] + lm[INNER_EYE[1]])
  centre = bottom + 0.3 * (bridge - bottom)
  outer = np.linalg.norm(lm[OUTER_EYE[0]] - lm[OUTER_EYE[1]])
  radius = 1.4 * (outer + np.linalg.norm(bridge - bottom)) / 2.0
  return centre, float(radius)


@dataclasses.dataclass(frozen=True)
class NowResult:
  """Outcome of :func:`scan_to_mesh_error` for one image.

  Attributes:
    distances: ``(N,)`` float64 unsigned distances (scan units) of the cropped scan vertices.
    similarity: the final transform of the predicted mesh into the scan frame.
    crop_centre: ``(3,)`` float64 crop-sphere centre.
    crop_radius: crop-sphere radius.
    iterations: closest-point iterations run.
  """

  distances: np.ndarray
  similarity: Similarity
  crop_centre: np.ndarray
  crop_radius: float
  iterations: int


def _rotation_vector(omega: np.ndarray) -> np.ndarray:
  """Rotation matrix of the axis-angle vector ``omega (3,)`` (Rodrigues)."""
  theta = float(np.linalg.norm(omega))
  if theta < 1e-12:
    return np.eye(3)
  k = omega / theta
  kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
  return np.eye(3) + np.sin(theta) * kx + (1.0 - np.cos(theta)) * kx @ kx


class _Objective:
  """Closest points of the transformed mesh to fixed scan points, queried in the mesh frame
  (the KD-tree is built once); scan-frame distances are the mesh-frame ones times the scale."""

  def __init__(self, mesh: MeshDistance, scan: np.ndarray, exact: bool):
    self.mesh, self.scan, self.exact = mesh, scan, exact

  def __call__(self, sim: Similarity):
    dist, closest, tri = self.mesh.query(sim.inverse_apply(self.scan), exact=self.exact)
    rms = sim.scale * float(np.sqrt(np.mean(dist * dist)))
    return rms, closest, tri


def _gauss_newton_step(
  sim: Similarity, scan, closest, tri, mesh: MeshDistance, damping: float
) -> Similarity:
  """One damped Gauss-Newton (Levenberg-Marquardt) step on sum_i dist_i^2 for fixed closest
  points (point-to-surface residuals along the unit direction from the closest point to the
  scan point), parametrised by scale, axis-angle rotation about the centroid and translation."""
  y = sim.apply(closest)
  e = scan - y
  d = np.linalg.norm(e, axis=1)
  normal = mesh.normals[tri] @ sim.rotation.T
  # At zero distance the direction is undefined: use the surface normal (any unit vector has
  # the same zero residual; the normal keeps the tangential slide free).
  u = np.where(d[:, None] > 1e-12, e / np.maximum(d, 1e-300)[:, None], normal)
  centre = y.mean(axis=0)
  z = y - centre
  jac = np.column_stack([np.sum(u * z, axis=1), np.cross(z, u), u])
  jtj = jac.T @ jac
  jtj_damped = jtj + damping * np.diag(np.diag(jtj))
  step = np.linalg.lstsq(jtj_damped, jac.T @ np.sum(u * e, axis=1), rcond=None)[0]
  scale = 1.0 + step[0]
  if scale <= 0:
    return sim
  rotation = _rotation_vector(step[1:4])
  update = Similarity(scale, rotation, centre + step[4:] - scale * rotation @ centre)
  return update.compose(sim)


def refine_alignment(
  mesh: MeshDistance,
  scan: np.ndarray,
  initial: Similarity,
  max_iterations: int = 30,
  tolerance: float = 1e-5,
  exact: bool = False,
) -> tuple[Similarity, int]:
  """Refines a similarity of the mesh by minimising the RMS scan-to-surface distance.

  Each iteration finds the closest surface points of the transformed mesh and takes a damped
  Gauss-Newton (Levenberg-Marquardt) step for the distances; if two dampings fail to lower the
  RMS, the closed-form point-to-point step (:func:`umeyama` onto the closest points, which never
  raises it) is taken.
  Stops when the RMS decreases by less than ``tolerance`` (relative) or neither step helps.

  Args:
    mesh: the predicted mesh in its own frame.
    scan: ``(N, 3)`` float64 scan points.
    initial: the starting mesh-to-scan similarity.
    max_iterations: iterations at most.
    tolerance: relative RMS decrease that counts as converged.
    exact: certified closest points in every iteration (see :meth:`MeshDistance.query`). The
      default uses the ``k`` nearest sites' triangles: exact for points near the surface, an
      upper bound elsewhere, which changes the optimum negligibly and is several times faster.

  Returns:
    ``(similarity, iterations)``.
  """
  objective = _Objective(mesh, scan, exact)
  sim = initial
  rms, closest, tri = objective(sim)
  iterations, damping = 0, 1e-3
  while iterations < max_iterations:
    iterations += 1
    new = None
    # Damping grows on a rejected step (closest points jump where the surface bends); after
    # two rejections the monotone point-to-point step is taken instead.
    for _ in range(2):
      candidate = _gauss_newton_step(sim, scan, closest, tri, mesh, damping)
      trial = objective(candidate)
      if trial[0] < rms:
        new, damping = trial, max(damping / 10, 1e-6)
        break
      damping *= 10
    if new is None:
      candidate = umeyama(closest, scan)
      new = objective(candidate)
      if new[0] >= rms:
        break
    converged = rms - new[0] <= tolerance * max(rms, 1e-12)
    sim, (rms, closest, tri) = candidate, new
    if converged:
      break
  return sim, iterations


def scan_to_mesh_error(
  scan_vertices: np.ndarray,
  scan_landmarks: np.ndarray,
  predicted_vertices: np.ndarray,
  predicted_triangles: np.ndarray,
  predicted_landmarks: np.ndarray,
  *,
  max_iterations: int = 30,
  tolerance: float = 1e-5,
  refine_points: int | None = 5000,
  k: int = 8,
  workers: int = 1,
  seed: int = 0,
) -> NowResult:
  """NoW-style error of one predicted mesh against one ground-truth scan (see module docs).

  Args:
    scan_vertices: ``(N, 3)`` float ground-truth scan vertices (mm).
    scan_landmarks: ``(7, 3)`` (or ``(1, 7, 3)``) float scan landmarks, NoW order.
    predicted_vertices: ``(V, 3)`` float predicted mesh vertices (any unit; the similarity
      absorbs the scale).
    predicted_triangles: ``(F, 3)`` int predicted mesh triangles.
    predicted_landmarks: ``(7, 3)`` float predicted landmarks, NoW order.
    max_iterations: refinement iterations at most.
    tolerance: relative RMS decrease at which the refinement stops.
    refine_points: the refinement uses at most this many cropped scan vertices (a fixed random
      subset; ``None`` = all). The final distances always use every cropped vertex.
    k: KD-tree candidates per query (speed only; the distances are exact for any ``k``).
    workers: KD-tree query threads.
    seed: seed of the subset.

  Returns:
    The :class:`NowResult`.

  Raises:
    ValueError: for malformed inputs or an empty crop.
  """
  scan_vertices = np.asarray(scan_vertices, np.float64)
  if scan_vertices.ndim != 2 or scan_vertices.shape[1] != 3:
    raise ValueError(f"scan_vertices: expected shape (N, 3), got {scan_vertices.shape}")
  scan_lm = _check_landmarks7("scan_landmarks", scan_landmarks)
  pred_lm = _check_landmarks7("predicted_landmarks", predicted_landmarks)
  centre, radius = crop_sphere(scan_lm)
  scan = scan_vertices[np.linalg.norm(scan_vertices - centre, axis=1) <= radius]
  if scan.shape[0] == 0:
    raise ValueError("scan_vertices: no scan vertex lies inside the NoW crop sphere")
  mesh = MeshDistance(predicted_vertices, predicted_triangles, k=k, workers=workers)
  subset = scan
  if refine_points is not None and scan.shape[0] > refine_points:
    rng = np.random.default_rng(seed)
    subset = scan[rng.choice(scan.shape[0], refine_points, replace=False)]
  sim, iterations = refine_alignment(
    mesh, subset, umeyama(pred_lm, scan_lm), max_iterations, tolerance
  )
  dist, _, _ = mesh.query(sim.inverse_apply(scan))
  return NowResult(sim.scale * dist, sim, centre, radius, iterations)


def summarize(distances: np.ndarray | Sequence[np.ndarray]) -> dict[str, float]:
  """Median, mean and std (ddof 0) of all distances concatenated over images, and their count."""
  if isinstance(distances, np.ndarray):
    flat = distances.reshape(-1)
  else:
    flat = np.concatenate([np.asarray(d, np.float64).reshape(-1) for d in distances])
  if flat.size == 0:
    raise ValueError("summarize: no distances")
  return {
    "median": float(np.median(flat)),
    "mean": float(np.mean(flat)),
    "std": float(np.std(flat)),
    "count": int(flat.size),
  }


# --------------------------------------------------------------------------------------------
# Submission files: OBJ without colours (the NoW mesh loader rejects ``v x y z r g b``) and the
# 7x3 landmarks as ``.npy``.


def _atomic_write(path: str, write) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_obj(path: str | os.PathLike, vertices: np.ndarray, triangles: np.ndarray) -> None:
  """Writes a mesh as OBJ (``v x y z`` and 1-based ``f i j k`` lines, no colours), atomically.

  Args:
    path: output file.
    vertices: ``(V, 3)`` float vertices.
    triangles: ``(F, 3)`` int 0-based triangle indices.
  """
  vertices = np.asarray(vertices, np.float64)
  triangles = np.asarray(triangles)
  if vertices.ndim != 2 or vertices.shape[1] != 3:
    raise ValueError(f"{path}: vertices must have shape (V, 3), got {vertices.shape}")
  if triangles.ndim != 2 or triangles.shape[1] != 3:
    raise ValueError(f"{path}: triangles must have shape (F, 3), got {triangles.shape}")

  def write(f):
    np.savetxt(f, vertices, fmt="v %.6f %.6f %.6f")
    np.savetxt(f, triangles.astype(np.int64) + 1, fmt="f %d %d %d")

  _atomic_write(os.fspath(path), write)


def read_obj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads vertices ``(V, 3)`` float64 and triangles ``(F, 3)`` int64 (0-based) of an OBJ.

  Accepts ``v x y z [r g b]`` and ``f a b c`` faces with ``a/b/c`` index forms; polygons with
  more than 3 corners are fanned into triangles. Other lines are ignored.

  Raises:
    ValueError: naming the file and line for malformed vertex/face lines or bad indices.
  """
  path = os.fspath(path)
  vertices, faces = [], []
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      try:
        if parts[0] == "v":
          if len(parts) < 4:
            raise ValueError("expected 'v x y z'")
          vertices.append([float(v) for v in parts[1:4]])
        elif parts[0] == "f":
          if len(parts) < 4:
            raise ValueError("expected at least 3 face corners")
          idx = [int(p.split("/")[0]) for p in parts[1:]]
          idx = [i - 1 if i > 0 else len(vertices) + i for i in idx]
          faces.extend([idx[0], idx[j], idx[j + 1]] for j in range(1, len(idx) - 1))
      except ValueError as e:
        raise ValueError(f"{path}:{line_no}: malformed '{parts[0]}' line ({e})") from e
  v = np.asarray(vertices, np.float64).reshape(-1, 3)
  t = np.asarray(faces, np.int64).reshape(-1, 3)
  if t.size and (t.min() < 0 or t.max() >= v.shape[0]):
    raise ValueError(f"{path}: face indices outside the {v.shape[0]} vertices")
  return v, t


def write_landmarks(path: str | os.PathLike, landmarks: np.ndarray) -> None:
  """Writes the 7x3 NoW landmarks as ``.npy`` (float64), atomically."""
  lm = _check_landmarks7(os.fspath(path), landmarks)
  _atomic_write(os.fspath(path), lambda f: np.save(f, lm))


def read_landmarks(path: str | os.PathLike) -> np.ndarray:
  """Reads NoW landmarks ``(7, 3)`` from ``.npy`` (7x3 or 1x7x3), ``.txt`` (7 rows 'x y z') or a
  MeshLab ``.pp`` picked-points file (the ground-truth format)."""
  path = os.fspath(path)
  if path.endswith(".npy"):
    data = np.load(path)
  elif path.endswith(".pp"):
    import xml.etree.ElementTree as ElementTree

    try:
      points = ElementTree.parse(path).getroot().iter("point")
      data = [[float(p.attrib[a]) for a in ("x", "y", "z")] for p in points]
    except (ElementTree.ParseError, KeyError, ValueError) as e:
      raise ValueError(f"{path}: not a picked-points file with x/y/z attributes ({e})") from e
  else:
    try:
      data = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
      raise ValueError(f"{path}: expected 7 rows 'x y z' ({e})") from e
  return _check_landmarks7(path, data)


def write_submission(
  mesh_path: str | os.PathLike,
  vertices: np.ndarray,
  triangles: np.ndarray,
  landmarks: np.ndarray,
) -> str:
  """Writes one NoW prediction: ``<name>.obj`` and ``<name>.npy`` (7x3) beside it.

  Args:
    mesh_path: the ``.obj`` path (``<subject>/<challenge>/<image name>.obj`` in NoW layout).
    vertices: ``(V, 3)`` float neutral-expression mesh vertices.
    triangles: ``(F, 3)`` int triangles.
    landmarks: ``(7, 3)`` float landmarks in NoW order.

  Returns:
    The landmark file's path.
  """
  mesh_path = os.fspath(mesh_path)
  if not mesh_path.endswith(".obj"):
    raise ValueError(f"{mesh_path}: the mesh path must end in .obj")
  lm_path = mesh_path[: -len(".obj")] + ".npy"
  write_landmarks(lm_path, landmarks)
  write_obj(mesh_path, vertices, triangles)
  return lm_path
