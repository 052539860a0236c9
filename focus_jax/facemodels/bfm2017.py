"""The Basel Face Model 2017 h5 layout: read, validate, crop and write (SPEC §1).

Every face model of focus_jax (the real BFM 2017, the embedded default, converted ICT) is stored in
this layout and loaded by :func:`load_bfm2017` into a :class:`MorphableModel`. The loader
subtracts ``(0, 0, 100)`` from the shape mean, as the original does, so the BFM face sits near the
origin, and scales the bases by ``sqrt(pcaVariance)``.

Optional datasets beyond the BFM layout: ``landmarks/ibug68`` (68 vertex indices in iBUG order)
and ``landmarks/now7`` (7 NoW landmark indices).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from focus_jax import files
from focus_jax.facemodels import landmarks as ibug
from focus_jax.render.morphable_model import MorphableModel

log = logging.getLogger(__name__)

# World centre of the BFM 2017 face, removed from the shape mean after loading.
CENTRE_SHIFT_MM = np.array([0.0, 0.0, 100.0], np.float32)

BFM2017_NUM_VERTICES = 53149
# iBUG-68 landmark vertices of the full BFM 2017 nomouth mesh (SPEC §1).
BFM2017_IBUG68 = np.array(
    [16678, 16817, 16480, 16254, 32170, 32866, 33302, 33598, 33765, 33949, 34239, 34693, 35398,
     27717, 27536, 27137, 27249, 27998, 28747, 29133, 29336, 29503, 30188, 30352, 30557, 30947,
     31682, 8122, 8137, 8147, 8152, 6627, 7219, 8165, 9107, 9695, 2475, 4275, 5050, 5829, 4802,
     3900, 10382, 11280, 12053, 14123, 12323, 11419, 5137, 5897, 7467, 8175, 8883, 10450, 11110,
     9372, 8666, 8194, 7722, 7012, 5524, 7358, 8184, 9010, 10852, 8659, 8187, 7715],
    np.int32,
)  # fmt: skip
BFM2017_NOW7 = np.array([2735, 6088, 10263, 13746, 8165, 5394, 11116], np.int32)

DEFAULT_COMPONENTS = {"shape": 80, "expression": 64, "color": 80}


def _dataset(h5, path: str, name: str) -> np.ndarray:
  if path not in h5:
    raise ValueError(f"{name}: missing dataset '{path}' (expected the BFM 2017 h5 layout)")
  node = h5[path]
  if not hasattr(node, "shape"):
    raise ValueError(f"{name}: '{path}' is a group, expected a dataset")
  return np.asarray(node[()])


def _check(cond: bool, name: str, path: str, message: str) -> None:
  if not cond:
    raise ValueError(f"{name}: dataset '{path}' {message}")


def _read_pca(h5, group: str, n_vertices: int, n_components: int, name: str):
  mean = _dataset(h5, f"{group}/model/mean", name).astype(np.float64).reshape(-1)
  basis = _dataset(h5, f"{group}/model/pcaBasis", name).astype(np.float64)
  variance = _dataset(h5, f"{group}/model/pcaVariance", name).astype(np.float64).reshape(-1)
  _check(
    mean.shape == (3 * n_vertices,),
    name,
    f"{group}/model/mean",
    f"has shape {mean.shape}, expected ({3 * n_vertices},) for {n_vertices} vertices",
  )
  _check(
    basis.ndim == 2 and basis.shape[0] == 3 * n_vertices,
    name,
    f"{group}/model/pcaBasis",
    f"has shape {basis.shape}, expected ({3 * n_vertices}, K)",
  )
  _check(
    variance.shape == (basis.shape[1],),
    name,
    f"{group}/model/pcaVariance",
    f"has shape {variance.shape}, expected ({basis.shape[1]},) to match pcaBasis",
  )
  for suffix, arr in (("mean", mean), ("pcaBasis", basis), ("pcaVariance", variance)):
    _check(
      bool(np.all(np.isfinite(arr))), name, f"{group}/model/{suffix}", "contains non-finite values"
    )
  _check(
    bool(np.all(variance >= 0)), name, f"{group}/model/pcaVariance", "contains negative variances"
  )
  available = basis.shape[1]
  if available < n_components:
    log.warning(
      "%s: '%s' has %d components, %d requested; using %d.",
      name,
      group,
      available,
      n_components,
      available,
    )
  k = min(available, n_components)
  scaled = basis[:, :k] * np.sqrt(variance[:k])[None, :]
  return mean.reshape(n_vertices, 3), scaled.T.reshape(k, n_vertices, 3)


def _read_landmarks(h5, path: str, expected: int, n_vertices: int, name: str):
  if path not in h5:
    return None
  idx = _dataset(h5, path, name).reshape(-1)
  _check(idx.shape == (expected,), name, path, f"has {idx.size} entries, expected {expected}")
  _check(np.issubdtype(idx.dtype, np.integer), name, path, f"has dtype {idx.dtype}, expected int")
  return idx.astype(np.int64)


def _validate_indices(idx: np.ndarray, n_vertices: int, name: str, what: str) -> np.ndarray:
  idx = np.asarray(idx).reshape(-1)
  if idx.size and (idx.min() < 0 or idx.max() >= n_vertices):
    raise ValueError(
      f"{name}: {what} indices must lie in [0, {n_vertices}), got range [{idx.min()}, {idx.max()}]"
    )
  return idx.astype(np.int64)


def apply_crop(keep: np.ndarray, triangles: np.ndarray, indices: Sequence[np.ndarray], name: str):
  """Keeps the vertices ``keep (V,)`` bool, the triangles with all corners kept, and remaps indices.

  Returns ``(vertex_ids, triangles, remapped)``: the kept vertex ids (into the uncropped model),
  the reindexed triangles and every array of ``indices`` remapped into the cropped model.
  Raises ``ValueError`` if one of ``indices`` falls outside the crop.
  """
  vertex_ids = np.flatnonzero(keep)
  new_index = np.full(keep.shape[0], -1, np.int64)
  new_index[vertex_ids] = np.arange(vertex_ids.size)
  tri = triangles[np.all(keep[triangles], axis=1)]
  remapped = []
  for idx in indices:
    out = new_index[idx]
    if np.any(out < 0):
      raise ValueError(f"{name}: landmark vertices {idx[out < 0].tolist()} lie outside the crop")
    remapped.append(out)
  return vertex_ids, new_index[tri], remapped


def load_bfm2017(
  path: str | os.PathLike,
  n_shape: int = DEFAULT_COMPONENTS["shape"],
  n_exp: int = DEFAULT_COMPONENTS["expression"],
  n_color: int = DEFAULT_COMPONENTS["color"],
  crop: str | np.ndarray | None = None,
  landmarks: tuple[Sequence[int], Sequence[int]] | None = None,
) -> MorphableModel:
  """Reads a morphable model in the BFM 2017 h5 layout (SPEC §1).

  Args:
    path: the h5 file (``model2017-1_bfm_nomouth.h5`` or a file written by
      :func:`write_bfm2017`).
    n_shape, n_exp, n_color: numbers of components to keep (FOCUS: 80, 64, 80). A file with fewer
      loads with what it has, and says so.
    crop: ``None`` (whole mesh), ``"face"`` (the sphere of :func:`landmarks.face_crop`) or a
      ``(V,)`` bool mask / array of vertex indices to keep. Triangles are reindexed and
      landmarks remapped.
    landmarks: optional ``(ibug68, now7)`` vertex indices overriding those in the file.

  Returns:
    The :class:`MorphableModel` (float32 / int32 JAX arrays).

  Raises:
    ValueError: naming the file and dataset, for a missing file, group or dataset, inconsistent
      sizes, non-finite values or out-of-range indices.
  """
  import h5py  # Lazy: the core imports only jax and numpy at module import time.

  name = os.fspath(path)
  if not os.path.isfile(name):
    raise ValueError(f"{name}: morphable model file not found (expected a BFM 2017 h5 file)")
  try:
    h5 = h5py.File(name, "r")
  except OSError as e:
    raise ValueError(f"{name}: not a readable h5 file ({e})") from e
  with h5:
    points = _dataset(h5, "shape/representer/points", name).astype(np.float64)
    _check(
      points.ndim == 2 and points.shape[0] == 3,
      name,
      "shape/representer/points",
      f"has shape {points.shape}, expected (3, N)",
    )
    n_vertices = points.shape[1]
    cells = _dataset(h5, "shape/representer/cells", name)
    _check(
      cells.ndim == 2 and cells.shape[0] == 3,
      name,
      "shape/representer/cells",
      f"has shape {cells.shape}, expected (3, F)",
    )
    _check(
      np.issubdtype(cells.dtype, np.integer),
      name,
      "shape/representer/cells",
      f"has dtype {cells.dtype}, expected integers",
    )
    triangles = _validate_indices(cells.T, n_vertices, name, "'shape/representer/cells'")
    triangles = triangles.reshape(-1, 3)
    shape_mean, shape_basis = _read_pca(h5, "shape", n_vertices, n_shape, name)
    exp_mean, exp_basis = _read_pca(h5, "expression", n_vertices, n_exp, name)
    color_mean, color_basis = _read_pca(h5, "color", n_vertices, n_color, name)
    file_lm = _read_landmarks(h5, "landmarks/ibug68", 68, n_vertices, name)
    file_now = _read_landmarks(h5, "landmarks/now7", 7, n_vertices, name)

  if landmarks is not None:
    ibug68, now7 = (np.asarray(a, np.int64).reshape(-1) for a in landmarks)
    source = "the landmarks= argument"
  elif file_lm is not None:
    ibug68 = file_lm
    now7 = file_now if file_now is not None else file_lm[ibug.NOW7_FROM_IBUG68]
    source = "'landmarks/ibug68'"
  elif n_vertices == BFM2017_NUM_VERTICES:
    ibug68, now7, source = BFM2017_IBUG68, BFM2017_NOW7, "the BFM 2017 defaults"
  else:
    raise ValueError(
      f"{name}: no 'landmarks/ibug68' dataset and {n_vertices} vertices, not the "
      f"{BFM2017_NUM_VERTICES} of BFM 2017 whose landmark indices are built in; pass landmarks="
    )
  if ibug68.shape != (68,) or now7.shape != (7,):
    raise ValueError(
      f"{name}: landmarks from {source} must have 68 and 7 entries, got "
      f"{ibug68.shape[0]} and {now7.shape[0]}"
    )
  ibug68 = _validate_indices(ibug68, n_vertices, name, f"landmark ({source})")
  now7 = _validate_indices(now7, n_vertices, name, f"NoW landmark ({source})")

  shape_mean = shape_mean - CENTRE_SHIFT_MM
  if crop is not None:
    if isinstance(crop, str):
      if crop != "face":
        raise ValueError(f"unknown crop {crop!r}: expected None, 'face' or vertex indices/mask")
      keep = ibug.face_crop(shape_mean + exp_mean, ibug68)
    else:
      crop = np.asarray(crop)
      if crop.dtype == bool:
        if crop.shape != (n_vertices,):
          raise ValueError(f"{name}: crop mask has shape {crop.shape}, expected ({n_vertices},)")
        keep = crop
      else:
        keep = np.zeros(n_vertices, bool)
        keep[_validate_indices(crop, n_vertices, name, "crop")] = True
    ids, triangles, (ibug68, now7) = apply_crop(keep, triangles, (ibug68, now7), name)
    shape_mean, exp_mean, color_mean = shape_mean[ids], exp_mean[ids], color_mean[ids]
    shape_basis, exp_basis, color_basis = (b[:, ids] for b in (shape_basis, exp_basis, color_basis))

  f32 = lambda a: jnp.asarray(a, jnp.float32)
  i32 = lambda a: jnp.asarray(a, jnp.int32)
  return MorphableModel(
    shape_mean=f32(shape_mean),
    shape_basis=f32(shape_basis),
    exp_mean=f32(exp_mean),
    exp_basis=f32(exp_basis),
    color_mean=f32(color_mean),
    color_basis=f32(color_basis),
    triangles=i32(triangles),
    landmarks=i32(ibug68),
    now_landmarks=i32(now7),
    landmark_weights=f32(ibug.landmark_weights()),
  )


def write_bfm2017(
  path: str | os.PathLike,
  *,
  points: np.ndarray,
  triangles: np.ndarray,
  shape: tuple[np.ndarray, np.ndarray, np.ndarray],
  expression: tuple[np.ndarray, np.ndarray, np.ndarray],
  color: tuple[np.ndarray, np.ndarray, np.ndarray],
  ibug68: np.ndarray | None = None,
  now7: np.ndarray | None = None,
  attrs: dict[str, str] | None = None,
) -> None:
  """Writes a model in the BFM 2017 h5 layout, atomically (temp file, then rename).

  Args:
    path: output file.
    points: ``(V, 3)`` reference vertices in file coordinates (mm, before the centre shift).
    triangles: ``(F, 3)`` vertex indices.
    shape, expression, color: ``(mean (3V,), pcaBasis (3V, K) orthonormal columns,
      pcaVariance (K,))``, vertex-interleaved (x0, y0, z0, x1, ...) like the BFM.
    ibug68, now7: optional landmark vertex indices, written to ``landmarks/``.
    attrs: string attributes of the file root (licence notices, provenance).

  The bytes depend only on the inputs (no timestamps), so a deterministic generator gives
  byte-identical files.
  """
  import h5py

  buffer = io.BytesIO()
  with h5py.File(buffer, "w", track_order=False) as h5:

    def put(name, data, dtype):
      h5.create_dataset(name, data=np.asarray(data, dtype), track_times=False)

    put("shape/representer/points", np.asarray(points).T, np.float32)
    put("shape/representer/cells", np.asarray(triangles).T, np.int32)
    for group, (mean, basis, variance) in (
      ("shape", shape),
      ("expression", expression),
      ("color", color),
    ):
      put(f"{group}/model/mean", mean, np.float32)
      put(f"{group}/model/pcaBasis", basis, np.float32)
      put(f"{group}/model/pcaVariance", variance, np.float32)
    if ibug68 is not None:
      put("landmarks/ibug68", ibug68, np.int32)
    if now7 is not None:
      put("landmarks/now7", now7, np.int32)
    for key, value in sorted((attrs or {}).items()):
      h5.attrs[key] = value
  files.write_bytes(path, buffer.getvalue())
