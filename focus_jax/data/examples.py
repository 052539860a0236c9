"""Example records shared by the tfds builder and the in-memory source.

An example is a dict of numpy values (see ``tfds_builder.py`` for the meaning of each field):
``image (224, 224, 3) uint8``, ``landmarks (68, 2) float32``, ``mask (224, 224, 1) uint8``,
``has_mask bool``, ``trans_params (5,) float32``, ``name str``, ``id int64`` and optional
``gt/<key>`` arrays from ``groundtruth.npz``.
"""

from __future__ import annotations

import os

import numpy as np

from focus_jax.data import alignment, layout


def load_groundtruth(image_root: str) -> dict[str, np.ndarray] | None:
  """``groundtruth.npz`` of ``image_root`` as ``{key: (N, ...) array}`` with ``names (N,)``,
  every array checked to hold one entry per name. Numeric arrays become the examples' ``gt/<key>``
  fields (:class:`ExampleMaker`); text ones (e.g. the synthetic generator's ``occluders``) are
  for host-side readers."""
  path = os.path.join(image_root, layout.GROUNDTRUTH_FILE)
  if not os.path.isfile(path):
    return None
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  if "names" not in arrays:
    raise ValueError(f"{path}: missing the 'names' array that maps rows to images")
  names = arrays["names"].shape
  for k, v in arrays.items():
    if v.shape[:1] != names:
      raise ValueError(f"{path}: {k!r} has shape {v.shape}, expected one entry per name {names}")
  return arrays


class ExampleMaker:
  """Turns validated :class:`layout.Record` rows of one ``image_root`` into examples.

  Args:
    image_root: the layout root (for ``groundtruth.npz``).
    align: run the Deep3DFaceRecon alignment; ``False`` takes images that already are aligned
      ``224 x 224`` (synthetic data) as they are.
    landmark_convention: ``"deep3d"`` or ``"pixel"`` (see ``alignment.py``).
  """

  def __init__(self, image_root: str, align: bool = True, landmark_convention: str = "deep3d"):
    self.align = align
    self.convention = landmark_convention
    groundtruth = load_groundtruth(image_root)
    self._gt_rows = None
    # The numeric per-image arrays: they go into device batches, names and text do not.
    self._gt_fields = {}
    if groundtruth is not None:
      self._gt_rows = {str(n): i for i, n in enumerate(groundtruth["names"])}
      self._gt_fields = {
        k: v
        for k, v in groundtruth.items()
        if k != "names" and (np.issubdtype(v.dtype, np.number) or v.dtype == bool)
      }

  def gt_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{"gt/<key>": (shape, dtype)}`` of the per-image ground truth (empty without any)."""
    return {f"gt/{k}": (v.shape[1:], v.dtype) for k, v in self._gt_fields.items()}

  def __call__(self, index: int, record: layout.Record) -> dict:
    """The example of ``record``, the ``index``-th row of its split."""
    try:
      image = layout.load_image(record.image_path)
      mask = layout.load_mask(record.mask_path) if record.mask_path else None
    except (OSError, ValueError) as e:  # truncated or corrupt files fail only when decoded
      raise ValueError(
        f"{record.csv_file}, row {record.row}: cannot decode {record.name!r} "
        f"({record.image_path}): {e}"
      ) from e
    size = alignment.TARGET_SIZE
    if self.align:
      image, landmarks, mask, params = alignment.align_sample(
        image, record.landmarks, mask, self.convention
      )
      trans = params.as_array()
    else:
      if image.shape[:2] != (size, size):
        raise ValueError(
          f"{record.csv_file}, row {record.row}: align=False needs {size}x{size} images, "
          f"{record.name!r} is {image.shape[1]}x{image.shape[0]}"
        )
      landmarks = record.landmarks
      # The identity alignment: scale 1 around the image centre.
      trans = np.array([size, size, 1.0, size / 2.0, size / 2.0])
    has_mask = mask is not None
    if mask is None:
      mask = np.zeros((size, size), np.uint8)
    example = {
      "image": np.ascontiguousarray(image, np.uint8),
      "landmarks": np.asarray(landmarks, np.float32),
      "mask": np.ascontiguousarray(mask, np.uint8)[..., None],
      "has_mask": np.bool_(has_mask),
      "trans_params": trans.astype(np.float32),
      "name": record.name,
      "id": np.int64(index),
    }
    if self._gt_rows is not None:
      if record.name not in self._gt_rows:
        raise ValueError(
          f"{record.csv_file}, row {record.row}: {record.name!r} has no row in "
          f"{layout.GROUNDTRUTH_FILE}"
        )
      row = self._gt_rows[record.name]
      for key, value in self._gt_fields.items():
        example[f"gt/{key}"] = value[row]
    return example
