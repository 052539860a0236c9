"""``fitted.npz``: the reconstructions of an image set in one NumPy file, and its reader.

Written by ``python -m focus_jax.export --workdir W --images ... --out DIR`` (``DIR/fitted.npz``)
and read with :func:`load_fitted` (or plain ``np.load``; no pickled objects inside). ``N`` is the
number of exported images, in the order of ``names``; ``S`` the side of the networks' input
(``image_size``); ``V`` the face model's vertex count, ``F`` its triangle count.

Frames: *aligned* is the 224 x 224 Deep3DFaceRecon crop of SPEC §8 (pixel centres at integer
coordinates, x right, y down); *photo* is the input image's own pixels (equal to aligned for
inputs that already are aligned); *net* is the aligned crop resized to ``S x S``; *model* is the
face model frame (mm; x right, y up, z towards the viewer).

=====================  ============  =========  ==================================================
key                    shape         dtype      meaning (unit, frame)
=====================  ============  =========  ==================================================
schema_version         ()            int32      :data:`SCHEMA_VERSION`
names                  (N,)          str        image names (relative to the input folder)
shape                  (N, K_shape)  float32    identity coefficients (model standard deviations)
expression             (N, K_exp)    float32    expression coefficients (standard deviations, or
                                                blend weights for ICT-style models)
color                  (N, K_color)  float32    albedo coefficients (standard deviations)
pose                   (N, 6)        float32    rx, ry, rz (rad), tx, ty, tz (mm); camera of
                                                ``render/camera.py``, at the aligned crop
light                  (N, 27)       float32    SH lighting [R0..R8, G0..G8, B0..B8]
landmarks              (N, 68, 2)    float32    projected iBUG-68 landmarks, pixels, aligned
landmarks_photo        (N, 68, 2)    float32    the same, pixels, photo
input_landmarks        (N, 68, 2)    float32    landmarks given or detected, pixels, aligned
align                  (N, 5)        float64    Deep3DFaceRecon trans_params (w0, h0, s, tx, ty)
                                                (``data.alignment.AlignParams.from_array``)
image_size             ()            int32      S
visible_mask           (N, S, S/8)   uint8      bit-packed (``np.packbits`` on the last axis)
                                                visibility mask, 1 = face visible (UNet > 0.5),
                                                net frame
coverage               (N, S, S/8)   uint8      bit-packed render coverage, net frame
vertex_visibility      (N, V)        int8       0 visible, 1 self-occluded, 2 occluded by an
                                                occluder, 3 outside the image
                                                (``render.visibility.CLASSES``)
visibility_classes     (4,)          str        the names of those codes
vertices               (N, V, 3)     float32    optional (``--vertices``): mesh with expression,
                                                mm, model frame
triangles              (F, 3)        int32      optional, with ``vertices``: 0-based triangles
model                  ()            str        face model spec of the workdir's config
source                 ()            str        workdir (or weights file) and step
mask_source            ()            str        ``unet`` or ``robust`` (no trained UNet)
=====================  ============  =========  ==================================================

:func:`load_fitted` checks the keys and shapes, unpacks the masks to bool ``(N, S, S)`` and
returns a :class:`Fitted` record. Imports NumPy only.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from focus_jax import files

SCHEMA_VERSION = 1
# Per-image arrays: key -> (dtype, trailing shape; names are sizes read from the file).
PER_IMAGE = {
  "names": (np.str_, ()),
  "shape": (np.float32, ("K_shape",)),
  "expression": (np.float32, ("K_exp",)),
  "color": (np.float32, ("K_color",)),
  "pose": (np.float32, (6,)),
  "light": (np.float32, (27,)),
  "landmarks": (np.float32, (68, 2)),
  "landmarks_photo": (np.float32, (68, 2)),
  "input_landmarks": (np.float32, (68, 2)),
  "align": (np.float64, (5,)),
  "visible_mask": (np.uint8, ("S", "S8")),
  "coverage": (np.uint8, ("S", "S8")),
  "vertex_visibility": (np.int8, ("V",)),
}
OPTIONAL = {"vertices": (np.float32, ("V", 3))}
METADATA = ("schema_version", "image_size", "visibility_classes", "model", "source", "mask_source")
COEFFICIENT_KEYS = ("shape", "expression", "color", "pose", "light")


def pack_mask(mask: np.ndarray) -> np.ndarray:
  """``(..., H, W)`` mask (values > 0.5 are True) -> ``(..., H, ceil(W / 8))`` uint8 bits."""
  return np.packbits(np.asarray(mask) > 0.5, axis=-1)


def unpack_mask(packed: np.ndarray, width: int) -> np.ndarray:
  """Inverse of :func:`pack_mask`: ``(..., H, ceil(W / 8))`` uint8 -> ``(..., H, W)`` bool."""
  return np.unpackbits(packed, axis=-1, count=width).astype(bool)


@dataclasses.dataclass(frozen=True)
class Fitted:
  """The content of a ``fitted.npz`` (module docstring), masks unpacked.

  Attributes:
    names: ``(N,)`` str.
    shape, expression, color, pose, light: ``(N, K)`` float32 coefficient groups.
    landmarks, landmarks_photo, input_landmarks: ``(N, 68, 2)`` float32 pixels.
    align: ``(N, 5)`` float64.
    visible_mask, coverage: ``(N, S, S)`` bool.
    vertex_visibility: ``(N, V)`` int8.
    vertices: ``(N, V, 3)`` float32 or None.
    triangles: ``(F, 3)`` int32 or None.
    image_size: ``S``.
    visibility_classes: names of the vertex classes.
    model, source, mask_source: provenance strings.
  """

  names: np.ndarray
  shape: np.ndarray
  expression: np.ndarray
  color: np.ndarray
  pose: np.ndarray
  light: np.ndarray
  landmarks: np.ndarray
  landmarks_photo: np.ndarray
  input_landmarks: np.ndarray
  align: np.ndarray
  visible_mask: np.ndarray
  coverage: np.ndarray
  vertex_visibility: np.ndarray
  vertices: np.ndarray | None
  triangles: np.ndarray | None
  image_size: int
  visibility_classes: tuple[str, ...]
  model: str
  source: str
  mask_source: str

  def __len__(self) -> int:
    return int(self.names.shape[0])

  def index(self, name: str) -> int:
    """Row of image ``name``."""
    hits = np.flatnonzero(self.names == name)
    if hits.size == 0:
      raise KeyError(f"{name!r} is not among the {len(self)} fitted images")
    return int(hits[0])

  def coefficients(self):
    """The coefficient groups as a batched ``render.coefficients.Coefficients`` record."""
    from focus_jax.render import coefficients

    return coefficients.Coefficients(**{k: getattr(self, k) for k in COEFFICIENT_KEYS})


def _check(path: str, arrays: dict) -> dict[str, int]:
  """Validates keys, dtypes and shapes; returns the sizes (N, K_*, S, S8, V)."""
  missing = [k for k in (*PER_IMAGE, *METADATA) if k not in arrays]
  if missing:
    raise ValueError(f"{path}: not a fitted.npz of schema {SCHEMA_VERSION}: missing {missing}")
  version = int(arrays["schema_version"])
  if version != SCHEMA_VERSION:
    raise ValueError(f"{path}: schema version {version}, this reader reads {SCHEMA_VERSION}")
  n = arrays["names"].shape[0]
  sizes: dict[str, int] = {}
  for key, (dtype, trailing) in {**PER_IMAGE, **OPTIONAL}.items():
    if key not in arrays:
      continue
    value = arrays[key]
    if not np.issubdtype(value.dtype, dtype):
      raise ValueError(f"{path}: {key} has dtype {value.dtype}, expected {np.dtype(dtype)}")
    if value.ndim != 1 + len(trailing) or value.shape[0] != n:
      raise ValueError(f"{path}: {key} has shape {value.shape}, expected ({n}, *{trailing})")
    for dim, want in zip(value.shape[1:], trailing, strict=True):
      if isinstance(want, str):
        want = sizes.setdefault(want, dim)
      if dim != want:
        raise ValueError(f"{path}: {key} has shape {value.shape}, expected ({n}, *{trailing})")
  s = int(arrays["image_size"])
  if sizes["S"] != s or sizes["S8"] != -(-s // 8):
    raise ValueError(f"{path}: masks {sizes['S']}x{sizes['S8']} do not match image_size {s}")
  return sizes


def write_fitted(path: str | os.PathLike, arrays: dict) -> None:
  """Validates ``arrays`` against the schema and writes them atomically (compressed)."""
  arrays = {"schema_version": np.int32(SCHEMA_VERSION), **arrays}
  _check(os.fspath(path), {k: np.asarray(v) for k, v in arrays.items()})
  files.save_npz(path, arrays, compressed=True)


def load_fitted(path: str | os.PathLike) -> Fitted:
  """Reads a ``fitted.npz`` (module docstring) into a :class:`Fitted` record.

  Raises:
    ValueError: naming the file when a key is missing or a shape or dtype is off.
  """
  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable .npz ({e})") from e
  _check(path, arrays)
  s = int(arrays["image_size"])
  per_image = {k: arrays[k] for k in PER_IMAGE}
  per_image["visible_mask"] = unpack_mask(arrays["visible_mask"], s)
  per_image["coverage"] = unpack_mask(arrays["coverage"], s)
  return Fitted(
    **per_image,
    vertices=arrays.get("vertices"),
    triangles=arrays.get("triangles"),
    image_size=s,
    visibility_classes=tuple(str(c) for c in arrays["visibility_classes"]),
    model=str(arrays["model"]),
    source=str(arrays["source"]),
    mask_source=str(arrays["mask_source"]),
  )
