"""NoW-challenge-style 3D reconstruction error (scan-to-mesh distance), in NumPy/SciPy and JAX.

The protocol of soubhiksanyal/now_evaluation (``scan2mesh_computations.py``), reimplemented:

1. Crop the ground-truth scan to a sphere (:func:`crop_sphere`): with the 7 scan landmarks
   (outer eye corner, inner eye corner, inner eye corner, outer eye corner, nose bottom, mouth
   corner, mouth corner), bridge = mean of the inner eye corners, centre = nose bottom
   + 0.3 (bridge - nose bottom), radius = 1.4 (outer-eye distance + |bridge - nose bottom|) / 2;
   scan vertices at distance <= radius are kept.
2. Similarity (scale, rotation, translation) from the 7 predicted landmarks to the 7 scan
   landmarks (:func:`mesh_distance.umeyama`). Reflections are excluded (the reference's
   Procrustes allows ``reflection='best'``, which never wins for a face-shaped landmark set).
3. Refinement of the similarity by closest-point iterations (ICP with scale, point-to-plane):
   closest points of the transformed predicted surface to the cropped scan vertices are found,
   the distances linearised there are minimised by damped Gauss-Newton steps, and so on until
   the RMS distance stops decreasing (:func:`mesh_distance.refine_alignment`), first on a
   random subset of the crop, then one round on every cropped vertex. This minimises the same
   objective as the reference (sum of squared unsigned scan-vertex-to-surface distances, solved
   there by a chumpy CG solver), to a local minimum.
4. Error = the unsigned distance of every cropped scan vertex to the aligned predicted surface
   (exact point-to-triangle distances). Over a set of images the distances are concatenated and
   summarised by median, mean and std (:func:`summarize`), in the scan's unit (mm).

The geometry (similarities, exact closest points on a mesh through a KD-tree with a
certificate, the closest-point refinement) is ``focus_jax.eval.mesh_distance``; this module is
the protocol on top of it. The KD-tree is built once per predicted mesh; the scan points are
moved into the mesh frame by the inverse similarity. ``bench/now_metric.py`` times it.

Geometry is float64 ``(N, 3)`` arrays; triangles ``(F, 3)`` int. SciPy is imported lazily; the
exact distances run in a jitted float64 JAX kernel on the host CPU.
Files (OBJ without colours, 7x3 landmark ``.npy``) follow the NoW submission format.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from focus_jax import files
from focus_jax.eval import mesh_distance
from focus_jax.facemodels import landmarks as ibug

# Positions in the NoW 7-landmark order.
OUTER_EYE = (0, 3)
INNER_EYE = (1, 2)
NOSE_BOTTOM = 4


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
  """The NoW face-crop sphere ``(centre (3,), radius)`` from the scan's 7 landmarks (outer eye
  corners 0 and 3, inner eye corners 1 and 2, nose bottom 4): :func:`landmarks.now_sphere`."""
  lm = _check_landmarks7("scan_landmarks", scan_landmarks)
  return ibug.now_sphere(lm[list(OUTER_EYE)], lm[list(INNER_EYE)], lm[NOSE_BOTTOM])


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
  similarity: mesh_distance.Similarity
  crop_centre: np.ndarray
  crop_radius: float
  iterations: int


def scan_to_mesh_error(
  scan_vertices: np.ndarray,
  scan_landmarks: np.ndarray,
  predicted_vertices: np.ndarray,
  predicted_triangles: np.ndarray,
  predicted_landmarks: np.ndarray,
  *,
  max_iterations: int = 30,
  tolerance: float = 1e-5,
  refine_points: int | None = 1000,
  k: int = 8,
  workers: int = 1,
  seed: int = 0,
) -> NowResult:
  """NoW-style error of one predicted mesh against one ground-truth scan (see module docs).

  The refinement runs first on a random subset of the cropped scan (a cheap, close start,
  :func:`mesh_distance.refine_alignment`), then one point-to-plane round on every cropped vertex
  followed by the exact search (:func:`mesh_distance.refine_and_measure`).

  Args:
    scan_vertices: ``(N, 3)`` float ground-truth scan vertices (mm).
    scan_landmarks: ``(7, 3)`` (or ``(1, 7, 3)``) float scan landmarks, NoW order.
    predicted_vertices: ``(V, 3)`` float predicted mesh vertices (any unit; the similarity
      absorbs the scale).
    predicted_triangles: ``(F, 3)`` int predicted mesh triangles.
    predicted_landmarks: ``(7, 3)`` float predicted landmarks, NoW order.
    max_iterations: Gauss-Newton iterations at most, per stage.
    tolerance: relative RMS decrease at which the refinement stops.
    refine_points: size of the random subset of the first stage (``None``: every cropped
      vertex). The second stage and the final distances always use every cropped vertex.
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
  mesh = mesh_distance.MeshDistance(predicted_vertices, predicted_triangles, k=k, workers=workers)
  sim, iterations = mesh_distance.umeyama(pred_lm, scan_lm), 0
  if max_iterations > 0:
    subset = scan
    if refine_points is not None and scan.shape[0] > refine_points:
      rng = np.random.default_rng(seed)
      subset = scan[rng.choice(scan.shape[0], refine_points, replace=False)]
    sim, iterations = mesh_distance.refine_alignment(mesh, subset, sim, max_iterations, tolerance)
  distances, final, used = mesh_distance.refine_and_measure(
    mesh, scan, sim, max_iterations, tolerance
  )
  return NowResult(distances, final, centre, radius, iterations + used)


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


def _evaluate_job(args) -> NowResult:
  scan_vertices, scan_landmarks, vertices, triangles, landmarks, options = args
  return scan_to_mesh_error(
    scan_vertices, scan_landmarks, vertices, triangles, landmarks, **options
  )


def evaluate_many(
  jobs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
  processes: int = 1,
  **options,
) -> list[NowResult]:
  """:func:`scan_to_mesh_error` of many predictions, optionally in worker processes.

  Args:
    jobs: ``(scan_vertices, scan_landmarks, predicted_vertices, predicted_triangles,
      predicted_landmarks)`` tuples, arrays as in :func:`scan_to_mesh_error`.
    processes: worker processes (1: in this process). Workers are spawned (never forked: the
      caller may hold JAX threads), so each costs an interpreter start-up and the compilation
      of the distance kernels (~1 s each); use them for batches of tens of meshes or more.
    **options: keyword arguments of :func:`scan_to_mesh_error`.

  Returns:
    The :class:`NowResult` of every job, in order.
  """
  tasks = [(*job, options) for job in jobs]
  if processes <= 1 or len(tasks) <= 1:
    return [_evaluate_job(t) for t in tasks]
  import concurrent.futures  # Lazy: only batch evaluation needs worker processes.
  import multiprocessing

  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
    return list(pool.map(_evaluate_job, tasks, chunksize=max(1, len(tasks) // (4 * processes))))


# --------------------------------------------------------------------------------------------
# Submission files: OBJ without colours (the NoW mesh loader rejects ``v x y z r g b``) and the
# 7x3 landmarks as ``.npy``.


def write_landmarks(path: str | os.PathLike, landmarks: np.ndarray) -> None:
  """Writes the 7x3 NoW landmarks as ``.npy`` (float64), atomically."""
  lm = _check_landmarks7(os.fspath(path), landmarks)
  files.atomic_write(os.fspath(path), lambda f: np.save(f, lm))


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
  files.write_obj(mesh_path, vertices, triangles)
  return lm_path
