"""One process of ``tests/test_multiprocess.py``: two EM steps on a fixed global batch.

    python tests/multiprocess_worker.py OUT.npz [--process_id I --num_processes N
        --coordinator localhost:PORT] [--local_devices D]

With ``--num_processes N > 1`` the process joins a ``jax.distributed`` job (CPU collectives:
gloo over TCP, JAX's default) with one CPU device per process; the training mesh
(``sharding.make_mesh``) then spans every process, each process feeds its slice of the global
batch (``jax.make_array_from_process_local_data``, as ``data.pipeline.global_batches`` does) and
the jitted steps of ``train.make_steps`` all-reduce across processes. Without it, the process
runs the same steps alone on the whole global batch, over ``--local_devices`` CPU devices
(default 1). Either way it writes its local copy of the
replicated train state after one EM UNet step and one EM encoder step to ``OUT.npz`` (keys: the
state's tree paths, the same prefixed ``initial`` for the networks' initial parameters, and
``loss_unet`` / ``loss_encoder``).

Sizes are the smoke configuration's (ResNet-18 width 8, UNet base 4, the small embedded model)
at 32 px, global batch 4, ArcFace off, XLA optimisations off: a few seconds of compilation.
"""

from __future__ import annotations

import argparse
import os
import sys

GLOBAL_BATCH = 4
SIZE = 32


def global_batch() -> dict:
  """The fixed global batch, identical in every process: images (4, 32, 32, 3), landmarks."""
  import numpy as np

  rng = np.random.default_rng(0)
  return {
    "image": rng.uniform(0.0, 1.0, (GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32),
    "landmarks": rng.uniform(4.0, SIZE - 4.0, (GLOBAL_BATCH, 68, 2)).astype(np.float32),
  }


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("out")
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--local_devices", type=int, default=1)
  args = parser.parse_args(argv)
  # One CPU device per process by default (the test's own environment fakes 8); before JAX starts.
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"

  import jax
  import numpy as np

  jax.config.update("jax_disable_most_optimizations", True)  # both runs compiled alike
  if args.num_processes > 1:
    jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=120,
    )

  from focus_jax import config_lib, sharding, train

  config = config_lib.stage_config("em", "smoke")
  config.data.image_size = SIZE
  config.batch_size = GLOBAL_BATCH
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  rep = sharding.replicated(mesh)
  model = train.load_model(config)
  nets, parts, arc_part, _ = train.build_networks(config, model.sizes)
  assert arc_part is None  # ArcFace off: no weights configured
  # As train._train: the state created replicated, the frozen inputs placed replicated.
  state = jax.jit(lambda p: train.init_state(p, config.optim), out_shardings=rep)(parts)
  frozen = jax.device_put(train.frozen_inputs(config, model, arc_part), rep)
  steps = {
    name: jax.jit(fn, donate_argnums=0, out_shardings=(rep, rep))
    for name, fn in train.make_steps(nets, config).items()
  }

  data = global_batch()
  local = GLOBAL_BATCH // jax.process_count()
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  batch = {
    k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), v[rows])
    for k, v in data.items()
  }
  assert batch["image"].shape[0] == GLOBAL_BATCH

  def local(tree) -> dict:
    return {
      jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }

  initial = local({name: {"params": state[name]["params"]} for name in parts})
  out = {"initial" + k: v for k, v in initial.items()}
  for name in ("unet", "encoder"):  # one EM step of each phase
    state, scalars = steps[name](state, batch, frozen)
    out[f"loss_{name}"] = np.asarray(scalars["loss"].addressable_data(0))
    assert bool(np.asarray(scalars["finite"].addressable_data(0)))
  out.update(local(state))
  np.savez(args.out, **out)
  if args.num_processes > 1:
    jax.distributed.shutdown()
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
