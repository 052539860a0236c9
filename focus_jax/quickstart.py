"""The quick start: synthetic faces -> stage 1 -> UNet pretraining -> EM -> evaluation, one workdir.

    python -m focus_jax.quickstart --workdir runs/quickstart            # :cpu sizes, 2 CPU cores
    python -m focus_jax.quickstart --workdir runs/long --variant cpu-long  # ~4x stage 1, 3x faces
    python -m focus_jax.quickstart --workdir runs/full --variant full   # SPEC §7 sizes (GPU/TPU)

``--seed N`` sets the training seed of every stage (initialisation, shuffling, augmentation);
the synthetic faces stay those of ``config.data.synthetic_seed``, so seeds compare on the same
images (the README's seed table: ``--seed 1``, ``--seed 2``, one workdir each).

``--adapt`` adds the optional test-time adaptation (SPEC §7 step 5: EM continued on the
unlabelled test images, ``adapt/``), evaluated as its own method next to EM.

Layout of the workdir: ``synthetic/`` (the image root with ground truth), ``pretrain/``,
``unet_pretrain/``, ``em/``, [``adapt/``] (one stage workdir each, chained by ``init_from``) and
``eval/`` (``metrics.json``, ``per_image.csv``, ``report.html``). Running the command again
resumes: data that exists is kept, finished stages are skipped, an interrupted stage continues
from its last checkpoint. The evaluation table is printed at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from focus_jax import config_lib
from focus_jax.workdir import ADAPT, CHAIN

log = logging.getLogger(__name__)

VARIANTS = {"cpu": "cpu", "cpu-long": "cpu-long", "full": "", "smoke": "smoke"}


def chain_configs(
  workdir: str, variant: str = "cpu", overrides: dict | None = None, adapt: bool = False
) -> dict:
  """``{stage: config}`` of the chain in ``workdir``: one synthetic image root, each stage
  initialised from the previous one, then ``adapt`` if asked. ``overrides`` maps dotted config
  keys to values for every stage (e.g. ``{"total_steps": 2}``)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: expected one of {sorted(VARIANTS)}")
  configs, previous = {}, ""
  for stage in (*CHAIN, ADAPT) if adapt else CHAIN:
    config = config_lib.stage_config(stage, VARIANTS[variant])
    config.data.image_root = os.path.join(workdir, "synthetic")
    config.init_from = previous
    for key, value in (overrides or {}).items():
      node = config
      *parents, leaf = key.split(".")
      for name in parents:
        node = node[name]
      node[leaf] = value
    configs[stage] = config
    previous = os.path.join(workdir, stage)
  return configs


def run(
  workdir: str,
  variant: str = "cpu",
  overrides: dict | None = None,
  evaluate: bool = True,
  adapt: bool = False,
):
  """Runs (or resumes) the chain; returns the evaluation record (``metrics.json``) or None."""
  from focus_jax import evaluate as evaluate_lib
  from focus_jax import train

  configs = chain_configs(workdir, variant, overrides, adapt)
  start = time.time()
  train.ensure_synthetic(configs["pretrain"], configs["pretrain"].data.image_root)
  log.info("synthetic data ready (%.0f s)", time.time() - start)
  for stage, config in configs.items():
    t0 = time.time()
    last = train.train_and_evaluate(config, os.path.join(workdir, stage))
    if "interrupted" in last:
      return None
    log.info("%s done (%.0f s)", stage, time.time() - t0)
  if not evaluate:
    return None
  out = os.path.join(workdir, "eval")
  record = evaluate_lib.evaluate(workdir, out=out)
  log.info("chain finished in %.0f s", time.time() - start)
  print(evaluate_lib.format_table(record))
  print(f"wrote {os.path.join(out, 'metrics.json')} and {os.path.join(out, 'report.html')}")
  return record


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m focus_jax.quickstart", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--workdir", default="runs/quickstart", help="chain workdir")
  parser.add_argument(
    "--variant",
    choices=sorted(VARIANTS),
    default="cpu",
    help="cpu (2 cores, ~10-20 min), cpu-long (4x stage 1, 3x faces), full (SPEC §7)",
  )
  parser.add_argument(
    "--adapt", action="store_true", help="then test-time adaptation on the test split (adapt/)"
  )
  parser.add_argument(
    "--seed", type=int, default=0, help="training seed of every stage (same synthetic faces)"
  )
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  from focus_jax import train

  train.quiet_third_party(None)
  try:
    run(args.workdir, args.variant, overrides={"seed": args.seed}, adapt=args.adapt)
  except (train.TrainingStopped, ValueError, RuntimeError) as e:
    log.error("%s", e)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
