"""Training input pipeline: a random-access source -> grain -> global ``jax.Array`` batches.

Sources (both random-access sequences of example dicts, see ``tfds_builder.py`` for fields):

- :func:`open_source`: an ArrayRecord dataset written by ``tfds_builder.prepare``, read with
  ``tfds`` (no TensorFlow) as a random-access data source;
- :class:`InMemorySource`: an ``image_root`` aligned into memory, for tiny runs and tests.

:func:`make_dataset` builds the grain ``MapDataset``: this process's shard
(``process_index::process_count``, taken before shuffling so that processes read disjoint
records), a shuffle reseeded every epoch, deterministic augmentation keyed by
``(seed, epoch, id)``, and batching to the local batch ``global_batch // process_count``.
:func:`global_batches` iterates it with prefetching and places every batch on a ``Mesh`` as
global arrays sharded along the batch axis (``jax.make_array_from_process_local_data``).

Batch fields (leading axis = batch): ``image`` ``(B, 224, 224, 3)`` float32 in [0, 1],
``landmarks`` ``(B, 68, 2)`` float32 pixels, ``mask`` ``(B, 224, 224)`` float32 in {0, 1},
``has_mask`` bool, ``id`` int32, ``valid`` bool (False on padding of a last partial eval batch),
and ``gt/<key>`` arrays when the dataset has ground truth. Names stay on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from focus_jax.data import augment, examples, layout


def open_source(builder_dir: str, split: str):
  """The random-access tfds data source of one split of a prepared dataset.

  Args:
    builder_dir: the directory returned by ``tfds_builder.prepare``.
    split: ``train``, ``val``, ``test`` or ``all`` (must have been written).
  """
  import tensorflow_datasets as tfds

  from focus_jax.data.tfds_builder import SPLIT_NAMES

  split = SPLIT_NAMES.get(split, split)
  builder = tfds.builder_from_directory(builder_dir)
  if split not in builder.info.splits:
    raise ValueError(f"{builder_dir}: no split {split!r}; has {sorted(builder.info.splits)}")
  return builder.as_data_source(split=split)


class InMemorySource(Sequence):
  """An ``image_root`` split aligned into memory; elements look like the tfds source's."""

  def __init__(
    self,
    image_root: str,
    split: str,
    align: bool = True,
    policy: str = "fail",
    landmark_convention: str = "deep3d",
  ):
    maker = examples.ExampleMaker(image_root, align, landmark_convention)
    records = layout.read_split(image_root, split, policy)
    self._examples = [maker(i, r) for i, r in enumerate(records)]

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index):
    return self._examples[index]


_PAD = "_padding"


@dataclasses.dataclass(frozen=True)
class _Prepare:
  """Decodes one example into the batch layout, augmenting it in training (module level so that
  grain workers can pickle it)."""

  seed: int
  epoch_length: int
  train: bool
  config: augment.AugmentConfig

  def __call__(self, index: int, example: dict) -> dict:
    image = np.asarray(example["image"])
    landmarks = np.asarray(example["landmarks"], np.float32)
    mask = np.asarray(example["mask"])[..., 0]
    if self.train:
      epoch = index // self.epoch_length
      t = augment.sample(self.seed, epoch, int(example["id"]), image.shape[0], self.config)
      image, landmarks, mask = augment.apply(t, image, landmarks, mask)
    out = {
      "image": image.astype(np.float32) / 255.0,
      "landmarks": landmarks,
      "mask": mask.astype(np.float32),
      "has_mask": np.bool_(example["has_mask"]),
      "id": np.int32(example["id"]),
      "valid": np.bool_(not example.get(_PAD, False)),
    }
    for key, value in example.items():
      if key.startswith("gt/"):
        out[key] = np.asarray(value)
    return out


def make_dataset(
  source: Sequence,
  global_batch_size: int,
  *,
  train: bool,
  seed: int = 0,
  num_epochs: int | None = 1,
  process_index: int = 0,
  process_count: int = 1,
  augment_config: augment.AugmentConfig | None = None,
  image_size: int | None = None,
):
  """The grain ``MapDataset`` of this process's batches.

  Args:
    source: random-access examples (:func:`open_source` or :class:`InMemorySource`).
    global_batch_size: examples per step over all processes (divisible by ``process_count``).
    train: shuffle (reseeded every epoch), augment, drop the last partial batch. Otherwise the
      order is the source's, and every process's shard is padded to the same number of full
      batches (``valid`` False on the padding).
    seed: shuffle and augmentation seed.
    num_epochs: epochs to repeat (``None``: forever; training only).
    process_index, process_count: this process's shard (``jax.process_index()``,
      ``jax.process_count()`` in multi-host runs; arguments so that tests can fake them).
    augment_config: augmentation ranges.
    image_size: side of the batches' images when it differs from the examples' (224): see
      :class:`Resize`.

  Returns:
    A ``grain.MapDataset`` of dicts of numpy arrays with leading axis ``global_batch_size //
    process_count``.
  """
  import grain

  if global_batch_size % process_count:
    raise ValueError(
      f"global batch {global_batch_size} is not divisible by {process_count} processes"
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  local_batch = global_batch_size // process_count
  ds = grain.MapDataset.source(source)[process_index::process_count]
  n = len(ds)
  if n == 0:
    raise ValueError(f"process {process_index} of {process_count} has no examples")
  if train:
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
  else:
    if num_epochs != 1:
      raise ValueError("evaluation reads one epoch (num_epochs=1)")
    # Every process makes the same number of full batches (multi-host steps must match):
    # shards are padded to ceil(N / processes) rounded up to the local batch.
    longest = -(-len(source) // process_count)
    ds = grain.MapDataset.source(_Padded(ds, -(-longest // local_batch) * local_batch))
  ds = ds.map_with_index(_Prepare(seed, n, train, augment_config or augment.AugmentConfig()))
  if image_size:
    ds = ds.map(Resize(image_size))
  return ds.batch(local_batch, drop_remainder=train)


@dataclasses.dataclass(frozen=True)
class Resize:
  """Resizes a prepared example to ``size`` x ``size`` pixels (``config.data.image_size``).

  Images use the area filter, masks too (then thresholded at 0.5), and landmarks scale about
  pixel centres, ``x' = (x + 0.5) s - 0.5`` with ``s = size / W``: the camera's principal point
  ``(W - 1) / 2`` and focal length ``9.06 W / 2`` (SPEC §2) follow the same map, so a face
  rendered at ``size`` matches the resized image.
  """

  size: int

  def __call__(self, example: dict) -> dict:
    import cv2

    image = example["image"]
    if image.shape[:2] == (self.size, self.size):
      return example
    dims, scale = (self.size, self.size), self.size / image.shape[1]
    out = dict(example)
    out["image"] = cv2.resize(image, dims, interpolation=cv2.INTER_AREA)
    out["landmarks"] = ((example["landmarks"] + 0.5) * scale - 0.5).astype(np.float32)
    mask = cv2.resize(example["mask"], dims, interpolation=cv2.INTER_AREA)
    out["mask"] = (mask >= 0.5).astype(np.float32)
    return out


class _Padded(Sequence):
  """A shard extended to ``length`` by repeating its first example marked as padding."""

  def __init__(self, shard, length: int):
    self._shard, self._length = shard, length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if index < len(self._shard):
      return self._shard[index]
    return {**self._shard[0], _PAD: True}


def mark_flags_parsed() -> None:
  """grain reads absl flags; outside ``absl.app.run`` they must be marked parsed."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def global_batches(
  dataset,
  mesh,
  batch_axis: str | tuple[str, ...] = "data",
  prefetch_threads: int = 2,
  prefetch_buffer: int = 4,
) -> Iterator[dict]:
  """Iterates ``dataset`` (from :func:`make_dataset`) as global arrays on ``mesh``.

  Args:
    dataset: a ``grain.MapDataset`` of local batches.
    mesh: a ``jax.sharding.Mesh``; batches are sharded along ``batch_axis``.
    batch_axis: mesh axis (or axes) of the batch dimension.
    prefetch_threads: grain reading threads.
    prefetch_buffer: batches read ahead.

  Yields:
    Dicts of ``jax.Array`` whose leading axis is the global batch.
  """
  import grain
  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  mark_flags_parsed()
  sharding = NamedSharding(mesh, PartitionSpec(batch_axis))
  options = grain.ReadOptions(num_threads=prefetch_threads, prefetch_buffer_size=prefetch_buffer)
  for batch in dataset.to_iter_dataset(options):
    yield {
      k: jax.make_array_from_process_local_data(sharding, np.ascontiguousarray(v))
      for k, v in batch.items()
    }
