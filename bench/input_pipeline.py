"""Input pipeline throughput: images/s of writing, reading + augmenting, and placing batches.

    .venv/bin/python bench/input_pipeline.py [--num 256] [--batch 12] [--synthetic]

Builds a toy image_root (``focus_jax.data.toy``: 256x256 photos with landmarks and masks), writes
it as an ArrayRecord dataset (alignment included), then times two training epochs through grain
(PNG decode, augmentation, batching) and through ``global_batches`` (placement on a Mesh of all
local devices). ``--synthetic`` also times the synthetic face generator. One JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np
from jax.sharding import Mesh

from focus_jax.data import pipeline, tfds_builder, toy


def _line(case: str, images: int, seconds: float, **extra) -> None:
  record = {
    "case": case,
    "images": images,
    "seconds": round(seconds, 3),
    "images_per_second": round(images / seconds, 1),
    "device": jax.devices()[0].device_kind,
    "cpu_count": os.cpu_count(),
    **extra,
  }
  print(json.dumps(record), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num", type=int, default=256, help="images in the toy dataset")
  parser.add_argument("--batch", type=int, default=12, help="global batch size")
  parser.add_argument("--threads", type=int, default=2, help="grain read threads")
  parser.add_argument("--synthetic", action="store_true", help="also time the generator")
  args = parser.parse_args()
  pipeline.mark_flags_parsed()
  with tempfile.TemporaryDirectory() as tmp:
    root = os.path.join(tmp, "root")
    toy.write_image_root(root, args.num, size=(256, 256))
    start = time.perf_counter()
    builder_dir = tfds_builder.prepare(root, os.path.join(tmp, "tfds"), "bench", splits=("train",))
    _line("tfds_prepare_align_write", args.num, time.perf_counter() - start)

    source = pipeline.open_source(builder_dir, "train")
    epochs = 2
    ds = pipeline.make_dataset(source, args.batch, train=True, seed=0, num_epochs=epochs)
    import grain

    options = grain.ReadOptions(num_threads=args.threads, prefetch_buffer_size=4)
    count, start = 0, time.perf_counter()
    for batch in ds.to_iter_dataset(options):
      count += batch["image"].shape[0]
    _line("grain_read_augment_batch", count, time.perf_counter() - start, batch=args.batch,
          threads=args.threads)  # fmt: skip

    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",))
    batch_size = args.batch - args.batch % len(devices) or len(devices)
    ds = pipeline.make_dataset(source, batch_size, train=True, seed=0, num_epochs=epochs)
    count, start = 0, time.perf_counter()
    for batch in pipeline.global_batches(ds, mesh, prefetch_threads=args.threads):
      jax.block_until_ready(batch["image"])
      count += batch["image"].shape[0]
    _line("global_batches_on_mesh", count, time.perf_counter() - start, batch=batch_size,
          devices=len(devices))  # fmt: skip

    if args.synthetic:
      from focus_jax.data import synthetic

      stats = synthetic.generate(os.path.join(tmp, "synth"), 256, seed=0, progress=False)
      _line("synthetic_generate_steady", stats["num"], stats["num"] / stats["images_per_second"],
            model=stats["model"], total_seconds_with_compile=stats["seconds"])  # fmt: skip


if __name__ == "__main__":
  main()
