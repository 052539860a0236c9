"""Converts third-party face models into the BFM 2017 h5 layout read by ``load_bfm2017``.

Supported: the ICT Face Model Light (USC ICT Vision and Graphics Lab, MIT license; public
repository ICT-VGL/ICT-FaceKit), from an ICT-FaceKit checkout (``FaceXModel/*.obj`` with
``vertex_indices.json``) or from the compact ``ict_face_light.npz``::

  python -m focus_jax.convert_model ict SRC --out ict.h5 [--region face|narrow]

Conventions of the written file (see ``docs/ict.md``):

- Geometry in millimetres (ICT is in centimetres: x10). The ICT frame (x to the subject's left,
  y up, face looking towards +z) is already the model frame; it is translated (no rotation, no
  scaling) so that the centroid of the 68 landmarks of the neutral mesh lies at ``(0, y_s, z_s)``,
  the centroid's height and depth of FOCUS's standard face (``assets/standard_face_lm68.csv``,
  the BFM frame of the alignment and the camera), and stored with the loader's ``(0, 0, 100)``
  centre shift added back. The translation is in the file attribute ``ict_translation_mm``:
  ``file_points = 10 * ict_cm + ict_translation_mm + (0, 0, 100)``.
- Polygons ``(a, b, c, d)`` become triangles ``(a, b, c), (a, c, d)`` in OBJ order, which is
  the outward winding: ``cross(v1 - v0, v2 - v0)`` points towards +z on the front of the face.
- Regions: ``face`` = the toolkit's "full face area" (polygons 0..9229: forehead, ears, front of
  the neck; eye and mouth openings are holes); ``narrow`` = the toolkit's "narrow face area"
  (polygons 0..6559: forehead to chin, cheek to cheek, no ears or neck), both as documented in
  the ICT-FaceKit README. Only vertices used by the kept triangles are kept, landmarks remapped.
- Shape basis: the identity modes (``identityNNN.obj - neutral``, one standard deviation each),
  stored as unit-norm ``pcaBasis`` columns with ``pcaVariance`` = squared norm, so the loader's
  ``pcaBasis * sqrt(pcaVariance)`` gives back each mode exactly. Restricted to the face region
  the columns are not mutually orthogonal (the toolkit's PCA is over the whole head).
- Expression basis: the blend shapes (``<name>.obj - neutral``) stored the same way, so an
  expression coefficient is a blend weight (0 = neutral, 1 = the full expression), not a standard
  deviation. FOCUS's statistical regulariser (sum of squared coefficients) then acts as a
  Gaussian N(0, 1) prior on every blend weight: a full expression costs as much as one standard
  deviation of identity, and nothing keeps weights inside [0, 1].
- Colour: ICT has no albedo. A deterministic procedural model: a skin-tone mean with darker
  brows and lash lines and redder lips and cheeks placed on the landmarks (3D distances, so ears
  and neck stay skin), plus :data:`NUM_COLOR_MODES` smooth colour modes (global brightness,
  redness, yellowness, then smooth regional fields), all generated from a fixed seed on the full
  face area and then cropped, so ``narrow`` is an exact crop of ``face``.
- Landmarks: ``landmarks/ibug68`` from the toolkit's ``idx_to_landmark_verts`` (Multi-PIE/iBUG
  68 order) and ``landmarks/now7`` = iBUG ``[36, 39, 42, 45, 33, 48, 54]``.
- The MIT notice of ICT-FaceKit travels in the file attribute ``license``; the attribute
  ``expression_coefficients = "blend_weights"`` marks the expression semantics
  (``zoo.expression_coefficients``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from focus_jax import files
from focus_jax.facemodels import bfm2017, embedded
from focus_jax.facemodels import landmarks as ibug

# Part of the model cache key (model_zoo): bump it whenever the converter's output changes.
CONVERTER_VERSION = 2
CM_TO_MM = 10.0
# Number of leading polygons of the ICT topology in each region (ICT-FaceKit README, "Face Area
# Details"): the full face area is polygons [0:9229], the narrow face area [0:6559].
REGION_POLYGONS = {"face": 9230, "narrow": 6560}
NUM_COLOR_MODES = 10
COLOR_SEED = 0
SKIN_RGB = np.array([0.78, 0.57, 0.47])

ICT_LICENSE = """MIT License

Copyright (c) 2020 USC Institute for Creative Technologies

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

GET_ICT = (
  "get the ICT Face Model Light (MIT license, no registration) with "
  "'git clone https://github.com/ICT-VGL/ICT-FaceKit' and pass the checkout (or its FaceXModel "
  "folder)"
)


# --------------------------------------------------------------------------------------------
# Reading the ICT Face Model Light.


def _face_model_dir(src: str) -> str:
  for candidate in (os.path.join(src, "FaceXModel"), src):
    if os.path.isfile(os.path.join(candidate, "generic_neutral_mesh.obj")):
      return candidate
  raise ValueError(
    f"{src}: neither '{src}/FaceXModel/generic_neutral_mesh.obj' nor "
    f"'{src}/generic_neutral_mesh.obj' exists; {GET_ICT}"
  )


def _read_license(*candidates: str) -> str:
  for path in candidates:
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        return f.read()
  return ICT_LICENSE


def read_ict_folder(src: str) -> dict:
  """Reads the ICT Face Model Light from an ICT-FaceKit checkout or its ``FaceXModel`` folder.

  Returns:
    A dict with ``neutral_cm (V, 3)`` float64, ``polygons`` (list of int64 index arrays, OBJ
    order), ``identity_cm (K_id, V, 3)`` and ``expression_cm (K_exp, V, 3)`` float64 deltas,
    ``expression_names`` (list of str), ``ibug68 (68,)`` int64, ``license`` (str) and
    ``source`` (str).
  """
  folder = _face_model_dir(src)
  config_path = os.path.join(folder, "vertex_indices.json")
  try:
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{config_path}: unreadable model configuration ({e}); {GET_ICT}") from e
  for key in ("expressions", "idx_to_landmark_verts"):
    if not isinstance(config.get(key), list):
      raise ValueError(f"{config_path}: missing list '{key}' (expected ICT-FaceKit's layout)")
  neutral = files.read_obj_vertices(os.path.join(folder, "generic_neutral_mesh.obj"))
  polygons = files.read_obj_polygons(os.path.join(folder, "generic_neutral_mesh.obj"), len(neutral))

  def deltas(names: Sequence[str]) -> np.ndarray:
    out = np.empty((len(names), *neutral.shape))
    for k, name in enumerate(names):
      path = os.path.join(folder, f"{name}.obj")
      if not os.path.isfile(path):
        raise ValueError(f"{path}: missing (listed in {config_path} or expected as identity)")
      points = files.read_obj_vertices(path)
      if points.shape != neutral.shape:
        raise ValueError(
          f"{path}: {len(points)} vertices, expected {len(neutral)} like generic_neutral_mesh.obj"
        )
      out[k] = points - neutral
    return out

  identity_names = []
  while os.path.isfile(os.path.join(folder, f"identity{len(identity_names):03d}.obj")):
    identity_names.append(f"identity{len(identity_names):03d}")
  if not identity_names:
    raise ValueError(f"{folder}: no identity000.obj (expected the identity modes); {GET_ICT}")
  return {
    "neutral_cm": neutral,
    "polygons": polygons,
    "identity_cm": deltas(identity_names),
    "expression_cm": deltas(config["expressions"]),
    "expression_names": [str(n) for n in config["expressions"]],
    "ibug68": np.asarray(config["idx_to_landmark_verts"], np.int64),
    "license": _read_license(
      os.path.join(folder, "..", "LICENSE"), os.path.join(folder, "LICENSE")
    ),
    "source": "ICT-FaceKit FaceXModel (OBJ)",
  }


def read_ict_npz(path: str) -> dict:
  """Reads the compact ``ict_face_light.npz`` (its README documents the arrays).

  Returns the same dict as :func:`read_ict_folder`.
  """
  try:
    data = np.load(path)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable npz file ({e})") from e
  with data:
    required = (
      "neutral_cm",
      "quads",
      "identity_modes_cm",
      "expression_shapes_cm",
      "expression_names",
      "landmarks_multipie68",
    )
    missing = [k for k in required if k not in data.files]
    if missing:
      raise ValueError(f"{path}: missing arrays {missing} (expected the compact ICT layout)")
    neutral = data["neutral_cm"].astype(np.float64)
    quads = data["quads"].astype(np.int64)
    identity = data["identity_modes_cm"].astype(np.float64)
    expression = data["expression_shapes_cm"].astype(np.float64)
    names = [str(n) for n in data["expression_names"]]
    ibug68 = data["landmarks_multipie68"].astype(np.int64)
  if neutral.ndim != 2 or neutral.shape[1] != 3:
    raise ValueError(f"{path}: 'neutral_cm' has shape {neutral.shape}, expected (V, 3)")
  for key, arr in (("identity_modes_cm", identity), ("expression_shapes_cm", expression)):
    if arr.shape[1:] != neutral.shape:
      raise ValueError(f"{path}: '{key}' has shape {arr.shape}, expected (K, {len(neutral)}, 3)")
  if quads.ndim != 2 or quads.shape[1] != 4:
    raise ValueError(f"{path}: 'quads' has shape {quads.shape}, expected (F, 4)")
  # A triangle repeats its last index in the compact layout.
  polygons = [q[:3] if q[2] == q[3] else q for q in quads]
  return {
    "neutral_cm": neutral,
    "polygons": polygons,
    "identity_cm": identity,
    "expression_cm": expression,
    "expression_names": names,
    "ibug68": ibug68,
    "license": _read_license(os.path.join(os.path.dirname(os.path.abspath(path)), "LICENSE")),
    "source": f"compact ICT Face Model Light ({os.path.basename(path)})",
  }


def read_ict(src: str | os.PathLike) -> dict:
  """Reads the ICT model from an ``.npz`` file or an ICT-FaceKit checkout (see the readers)."""
  src = os.fspath(src)
  if os.path.isfile(src):
    return read_ict_npz(src)
  if os.path.isdir(src):
    return read_ict_folder(src)
  raise ValueError(f"{src}: no such file or directory; {GET_ICT}, or the compact .npz")


# --------------------------------------------------------------------------------------------
# Building the model.


def triangulate(polygons: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Fans every polygon ``(p0, ..., pn)`` into ``(p0, pk, pk+1)``, keeping its winding.

  Returns:
    ``triangles (F, 3)`` int64 and ``polygon (F,)`` int64, the polygon of each triangle.
  """
  tris, owner = [], []
  for p, poly in enumerate(polygons):
    for k in range(1, len(poly) - 1):
      tris.append((poly[0], poly[k], poly[k + 1]))
      owner.append(p)
  return np.array(tris, np.int64).reshape(-1, 3), np.array(owner, np.int64)


def _segment_distance(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
  """3D distance ``(V,)`` of ``points (V, 3)`` to a polyline ``(P, 3)``."""
  a, b = polyline[:-1], polyline[1:]
  ab = b - a
  t = np.einsum("vsc,sc->vs", points[:, None] - a[None], ab) / np.maximum((ab * ab).sum(-1), 1e-9)
  closest = a[None] + np.clip(t, 0.0, 1.0)[..., None] * ab[None]
  return np.linalg.norm(points[:, None] - closest, axis=-1).min(axis=1)


def _inside_xy(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
  """Even-odd test ``(V,)`` bool of ``points``' (x, y) against a closed ``polygon (P, 3)``."""
  x, y = points[:, 0:1], points[:, 1:2]
  x0, y0 = polygon[:, 0], polygon[:, 1]
  x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
  crosses = (y0 > y) != (y1 > y)
  with np.errstate(divide="ignore", invalid="ignore"):
    x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
  return (crosses & (x < x_cross)).sum(axis=1) % 2 == 1


def procedural_albedo(points: np.ndarray, lm: np.ndarray) -> np.ndarray:
  """Skin-tone albedo ``(V, 3)`` in [0, 1] with features placed on the landmarks.

  Args:
    points: ``(V, 3)`` float64 vertices, model frame, mm.
    lm: ``(68, 3)`` float64 iBUG-68 landmark positions, mm.
  """
  color = np.tile(SKIN_RGB, (len(points), 1))

  def blend(weight, target):
    nonlocal color
    w = np.clip(weight, 0.0, 1.0)[:, None]
    color = (1.0 - w) * color + w * np.asarray(target)

  def near(polyline, sigma):
    return np.exp(-0.5 * (_segment_distance(points, polyline) / sigma) ** 2)

  # iBUG brow points follow the brow's upper edge: the hair lies a little below.
  down = np.array([0.0, 2.0, 0.0])
  brows = np.maximum(near(lm[17:22] - down, 3.0), near(lm[22:27] - down, 3.0))
  blend(1.3 * brows, [0.30, 0.21, 0.16])
  for first in (36, 42):  # lash lines around the eye openings
    ring = lm[[*range(first, first + 6), first]]
    blend(0.9 * near(ring, 1.2), [0.27, 0.19, 0.16])
  for side in ((36, 48), (45, 54)):  # cheeks: between the outer eye corner and the mouth corner
    centre = 0.5 * (lm[side[0]] + lm[side[1]])
    d = np.linalg.norm(points - centre, axis=1)
    blend(0.35 * np.exp(-0.5 * (d / 13.0) ** 2), [0.85, 0.48, 0.45])
  outer = lm[48:60]
  mouth_depth = np.abs(points[:, 2] - outer[:, 2].mean()) < 15.0
  lips = np.where(_inside_xy(points, outer) & mouth_depth, 1.0, near(lm[[*range(48, 60), 48]], 1.5))
  blend(0.9 * lips, [0.70, 0.36, 0.36])
  return color


def _unit_basis(deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Deltas ``(K, V, 3)`` -> unit-norm ``pcaBasis (3V, K)`` and ``pcaVariance (K,)`` = norm^2."""
  flat = deltas.reshape(len(deltas), -1).T
  norm = np.linalg.norm(flat, axis=0)
  if np.any(norm == 0):
    raise ValueError(f"modes {np.flatnonzero(norm == 0).tolist()} are zero on the kept vertices")
  return flat / norm, norm**2


def ict_arrays(ict: dict, region: str = "face") -> dict:
  """Arrays of the converted model, ready for :func:`bfm2017.write_bfm2017`.

  Args:
    ict: the dict of :func:`read_ict`.
    region: ``"face"`` or ``"narrow"``.

  Returns:
    ``points (V, 3)`` (file frame), ``triangles (F, 3)``, ``shape``/``expression``/``color`` =
    ``(mean, pcaBasis, pcaVariance)``, ``ibug68 (68,)``, ``now7 (7,)`` and ``attrs`` (dict).
  """
  if region not in REGION_POLYGONS:
    raise ValueError(f"unknown region {region!r}; expected one of {sorted(REGION_POLYGONS)}")
  neutral = ict["neutral_cm"]
  ibug68 = np.asarray(ict["ibug68"], np.int64).reshape(-1)
  if ibug68.shape != (68,) or ibug68.min() < 0 or ibug68.max() >= len(neutral):
    raise ValueError(
      f"{ict['source']}: landmarks must be 68 vertex indices in [0, {len(neutral)}), got "
      f"{ibug68.size} in [{ibug68.min()}, {ibug68.max()}]"
    )
  polygons = ict["polygons"]
  face_polygons = min(len(polygons), REGION_POLYGONS["face"])
  if region != "face" and len(polygons) < REGION_POLYGONS["face"]:
    raise ValueError(
      f"{ict['source']}: region {region!r} is defined on the ICT topology (at least "
      f"{REGION_POLYGONS['face']} polygons), this mesh has {len(polygons)}"
    )
  triangles, owner = triangulate(polygons[:face_polygons])

  # Frame, colours and the translation are computed on the full face area, then cropped, so the
  # narrow model is an exact crop of the face model.
  points = CM_TO_MM * neutral
  lm = points[ibug68]
  target = ibug.standard_landmarks().mean(axis=0)
  translation = np.array([0.0, target[1], target[2]]) - lm.mean(axis=0)
  points = points + translation
  lm = lm + translation
  used = np.zeros(len(points), bool)
  used[triangles] = True
  albedo = procedural_albedo(points, lm)
  rng = np.random.default_rng(COLOR_SEED)
  color_fields = np.stack(embedded.color_fields(rng, points[used], lm, NUM_COLOR_MODES))

  keep_tri = owner < REGION_POLYGONS[region]
  keep = np.zeros(len(points), bool)
  keep[triangles[keep_tri]] = True
  now7 = ibug68[ibug.NOW7_FROM_IBUG68]
  ids, triangles, (ibug68, now7) = bfm2017.apply_crop(
    keep, triangles[keep_tri], (ibug68, now7), f"{ict['source']} region {region!r}"
  )
  color_fields = color_fields[:, keep[used]]
  color_basis, color_var = embedded.orthonormal_basis(list(color_fields))
  shape_basis, shape_var = _unit_basis(CM_TO_MM * ict["identity_cm"][:, ids])
  exp_basis, exp_var = _unit_basis(CM_TO_MM * ict["expression_cm"][:, ids])
  file_points = points[ids] + bfm2017.CENTRE_SHIFT_MM
  return {
    "points": file_points,
    "triangles": triangles,
    "shape": (file_points.reshape(-1), shape_basis, shape_var),
    "expression": (np.zeros(file_points.size), exp_basis, exp_var),
    "color": (albedo[ids].reshape(-1), color_basis, color_var),
    "ibug68": ibug68,
    "now7": now7,
    "attrs": {
      "focus_jax_model": f"ict-{region}",
      "converter_version": str(CONVERTER_VERSION),
      "source": ict["source"],
      "license": ict["license"],
      "description": "ICT Face Model Light (USC Institute for Creative Technologies, MIT "
      f"license), {region} region, converted by focus_jax: identity PCA modes (1 std each) as "
      "the shape basis, blend shapes as the expression basis (coefficients are blend weights "
      "in [0, 1], not standard deviations), procedural albedo (not measured).",
      "units": "mm",
      "expression_coefficients": "blend_weights",
      "ict_translation_mm": " ".join(f"{v:.6f}" for v in translation),
      "expression_names": ",".join(ict["expression_names"]),
    },
  }


def convert_ict(src: str | os.PathLike, out: str | os.PathLike, region: str = "face") -> dict:
  """Converts the ICT model at ``src`` (checkout or npz) to ``out`` (BFM 2017 h5).

  Returns:
    The sizes written: ``{'vertices', 'triangles', 'shape', 'expression', 'color'}``.
  """
  arrays = ict_arrays(read_ict(src), region)
  attrs = arrays.pop("attrs")
  bfm2017.write_bfm2017(out, **arrays, attrs=attrs)
  return {
    "vertices": len(arrays["points"]),
    "triangles": len(arrays["triangles"]),
    **{group: arrays[group][1].shape[1] for group in ("shape", "expression", "color")},
  }
