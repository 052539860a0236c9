"""TFDS ArrayRecord write -> read round trip, grain pipeline, process sharding, global arrays."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from focus_jax.data import pipeline, tfds_builder, toy


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  base = tmp_path_factory.mktemp("tfds")
  root = str(base / "root")
  toy.write_image_root(root, 10, size=(64, 56), splits={"train": slice(0, 8), "val": slice(8, 10)})
  return root, tfds_builder.prepare(root, str(base / "data"), "toy")


def _plain(v):
  return v.decode() if isinstance(v, bytes) else np.asarray(v)


def test_write_read_round_trip_is_exact(prepared):
  root, builder_dir = prepared
  for split, n in (("train", 8), ("val", 2)):
    source = pipeline.open_source(builder_dir, split)
    memory = pipeline.InMemorySource(root, split)
    assert len(source) == len(memory) == n
    by_id = {int(memory[i]["id"]): memory[i] for i in range(n)}
    assert sorted(int(source[i]["id"]) for i in range(n)) == list(range(n))
    for i in range(n):
      got = source[i]
      want = by_id[int(got["id"])]
      assert set(got) == set(want)
      for key in want:
        np.testing.assert_array_equal(_plain(got[key]), _plain(want[key]), err_msg=key)
    assert all(bool(memory[i]["has_mask"]) for i in range(n))


def test_two_processes_read_disjoint_halves(prepared):
  _, builder_dir = prepared
  source = pipeline.open_source(builder_dir, "train")
  seen = []
  for process in (0, 1):
    for train in (False, True):
      ds = pipeline.make_dataset(
        source, 4, train=train, seed=3, num_epochs=1, process_index=process, process_count=2
      )
      ids = np.concatenate([b["id"][b["valid"]] for b in ds])
      assert len(ids) == 4 and len(set(ids.tolist())) == 4
      if not train:
        seen.append(set(ids.tolist()))
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(8))


def test_training_batches_are_deterministic_and_augmented(prepared):
  _, builder_dir = prepared
  source = pipeline.open_source(builder_dir, "train")
  first = list(pipeline.make_dataset(source, 4, train=True, seed=7, num_epochs=2))
  again = list(pipeline.make_dataset(source, 4, train=True, seed=7, num_epochs=2))
  assert len(first) == 4
  for a, b in zip(first, again, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Both epochs see every example once, in different orders.
  e1 = np.concatenate([b["id"] for b in first[:2]])
  e2 = np.concatenate([b["id"] for b in first[2:]])
  assert sorted(e1) == sorted(e2) == list(range(8)) and not np.array_equal(e1, e2)
  plain = {int(source[i]["id"]): source[i] for i in range(8)}
  lm = first[0]["landmarks"][0]
  assert not np.allclose(lm, plain[int(first[0]["id"][0])]["landmarks"])


def test_eval_pads_last_batch_and_places_global_arrays(prepared):
  _, builder_dir = prepared
  source = pipeline.open_source(builder_dir, "train")
  ds = pipeline.make_dataset(source, 8, train=False)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  batches = list(pipeline.global_batches(ds, mesh))
  assert len(batches) == 1
  b = batches[0]
  assert b["image"].shape == (8, 224, 224, 3) and b["image"].dtype == np.float32
  assert b["landmarks"].shape == (8, 68, 2) and b["mask"].shape == (8, 224, 224)
  assert b["image"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert len(b["image"].addressable_shards) == len(jax.devices())
  assert sorted(np.asarray(b["id"]).tolist()) == list(range(8))
  ds = pipeline.make_dataset(pipeline.open_source(builder_dir, "val"), 8, train=False)
  (b,) = list(pipeline.global_batches(ds, mesh))
  np.testing.assert_array_equal(np.asarray(b["valid"]), [True, True] + [False] * 6)


def test_uneven_eval_shards_get_the_same_number_of_batches(prepared):
  _, builder_dir = prepared
  source = pipeline.open_source(builder_dir, "train")  # 8 examples over 3 processes: 3, 3, 2
  ids, counts = [], []
  for process in range(3):
    batches = list(
      pipeline.make_dataset(source, 6, train=False, process_index=process, process_count=3)
    )
    counts.append(len(batches))
    ids += [i for b in batches for i in b["id"][b["valid"]].tolist()]
  assert counts == [2, 2, 2]
  assert sorted(ids) == list(range(8))
