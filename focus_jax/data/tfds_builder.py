"""A TFDS builder turning any ``image_root`` (SPEC §8 layout) into an ArrayRecord dataset.

Written and read without TensorFlow: images reach tfds as PIL images (PNG-encoded, lossless),
every other feature is a numpy tensor. Alignment happens once, at write time.

Features of every example:

- ``image``: ``(224, 224, 3)`` uint8, the aligned photo.
- ``landmarks``: ``(68, 2)`` float32, aligned pixel landmarks (see ``alignment.py``).
- ``mask``: ``(224, 224, 1)`` uint8 in ``{0, 1}``, the aligned ground-truth visibility mask, all
  zeros when the image has none; ``has_mask``: bool.
- ``trans_params``: ``(5,)`` float32, Deep3DFaceRecon's ``(w0, h0, s, tx, ty)`` (paste back).
- Splits are the CSVs' names, except ``all_landmarks.csv`` -> ``all_images`` (tfds reserves
  ``all``).
- ``name``: the CSV file name; ``id``: int64, the row's position in the split's CSV. tfds
  shuffles examples when writing, so ``id`` (not the read order) identifies a record.
- ``gt/<key>``: per-image ground truth from ``groundtruth.npz`` when the root has one (synthetic
  data): coefficients, full-mesh vertices, NoW landmarks.

The config name is the caller's (one directory per dataset under ``data_dir``).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from focus_jax.data import alignment, examples, layout

VERSION = "1.0.0"
# tfds reserves the split name "all"; all_landmarks.csv becomes this split.
SPLIT_NAMES = {"train": "train", "val": "val", "test": "test", "all": "all_images"}


class FocusFaces(tfds.core.GeneratorBasedBuilder):
  """Aligned faces of one ``image_root``, one tfds split per landmarks CSV."""

  VERSION = tfds.core.Version(VERSION)
  # Local data, nothing to download: without this, tfds looks for a checksums file next to the
  # code through ``importlib_resources``, which is not installed.
  url_infos = None

  def __init__(
    self,
    *,
    image_root: str | None = None,
    align: bool = True,
    policy: str = "fail",
    landmark_convention: str = "deep3d",
    splits: tuple[str, ...] | None = None,
    **kwargs,
  ):
    """Args:
    image_root: the layout to read (needed for writing only).
    align: run the Deep3DFaceRecon alignment; ``False`` takes images that already are
      ``224 x 224`` and aligned (synthetic data) as they are.
    policy: CSV validation policy, ``"fail"`` or ``"skip"``.
    landmark_convention: ``"deep3d"`` or ``"pixel"`` (``alignment.py``).
    splits: the CSV splits to write (default: every non-empty one).
    **kwargs: for ``tfds.core.GeneratorBasedBuilder`` (``data_dir``, ``config``, ...).
    """
    self._image_root = image_root
    self._policy = policy
    self._splits = None if splits is None else tuple(splits)
    self._maker = (
      examples.ExampleMaker(image_root, align, landmark_convention) if image_root else None
    )
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = alignment.TARGET_SIZE
    features = {
      "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
      "landmarks": tfds.features.Tensor(shape=(68, 2), dtype=np.float32),
      "mask": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
      "has_mask": tfds.features.Tensor(shape=(), dtype=np.bool_),
      "trans_params": tfds.features.Tensor(shape=(5,), dtype=np.float32),
      "name": tfds.features.Text(),
      "id": tfds.features.Tensor(shape=(), dtype=np.int64),
    }
    specs = self._maker.gt_specs() if self._maker else {}
    for key, (shape, dtype) in specs.items():
      features[key] = tfds.features.Tensor(shape=shape, dtype=dtype)
    return tfds.core.DatasetInfo(
      builder=self,
      description="Aligned 224x224 faces with 68 landmarks (focus_jax, SPEC §8 layout).",
      features=tfds.features.FeaturesDict(features),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local data only.
    if self._image_root is None:
      raise ValueError("FocusFaces needs image_root= to write a dataset")
    splits = [
      s
      for s in layout.available_splits(self._image_root)
      if (self._splits is None or s in self._splits)
      and os.path.getsize(layout.csv_path(self._image_root, s)) > 0
    ]
    if not splits:
      raise ValueError(
        f"{self._image_root}: no non-empty {{train,val,test,all}}_landmarks.csv to write"
        + ("" if self._splits is None else f" among the requested splits {self._splits}")
      )
    return {SPLIT_NAMES[s]: self._generate_examples(s) for s in splits}

  def _generate_examples(self, split: str):
    records = layout.read_split(self._image_root, split, self._policy)
    for index, record in enumerate(records):
      example = self._maker(index, record)
      example["image"] = Image.fromarray(example["image"])
      example["mask"] = Image.fromarray(example["mask"][..., 0])
      yield record.name, example


def prepare(
  image_root: str,
  data_dir: str,
  config_name: str = "default",
  align: bool = True,
  policy: str = "fail",
  landmark_convention: str = "deep3d",
  splits: tuple[str, ...] | None = None,
) -> str:
  """Writes ``image_root`` as an ArrayRecord dataset; returns the builder directory.

  Args:
    image_root: the layout root.
    data_dir: where tfds datasets live; the dataset goes to
      ``data_dir/focus_faces/<config_name>/1.0.0``.
    config_name: a name for this dataset.
    align: align with Deep3DFaceRecon's method (``False``: images are aligned 224x224 already).
    policy: CSV validation policy, ``"fail"`` or ``"skip"``.
    landmark_convention: ``"deep3d"`` or ``"pixel"``.
    splits: CSV splits to write, e.g. ``("train", "val")`` (default: every non-empty one).

  Returns:
    The builder directory (pass it to :func:`focus_jax.data.pipeline.open_source`).
  """
  builder = FocusFaces(
    image_root=image_root,
    align=align,
    policy=policy,
    landmark_convention=landmark_convention,
    splits=splits,
    data_dir=data_dir,
    config=tfds.core.BuilderConfig(name=config_name, version=VERSION),
    file_format="array_record",
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
  )
  return os.fspath(builder.data_dir)


def builder_dir(data_dir: str, config_name: str = "default") -> str:
  """Where :func:`prepare` puts the dataset ``config_name`` under ``data_dir``."""
  return os.path.join(data_dir, "focus_faces", config_name, str(VERSION))
