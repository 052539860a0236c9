"""Step 4: EM alternation of the encoder and the UNet (SPEC §7), the main FOCUS training.

  python -m focus_jax.train --config=configs/em.py --config.init_from=runs/unet_pretrain \
      --workdir=runs/em
  python -m focus_jax.train --config=configs/em.py:smoke --workdir=/tmp/smoke/em

In every 30000-step period the first 5000 steps update the UNet, the rest the encoder.
lr0 = 0.1 * 0.99^60 * 0.8 (where stage 1 ended); encoder lr0 decayed by 0.99, UNet 0.06 lr0
decayed by 0.95, every 5000 steps. Without ``init_from`` the networks start from scratch (the
smoke variant does, on synthetic faces, with a period short enough to visit both phases).
``:cpu`` is the quick start's 2-core recipe (``config_lib.cpu``, every change from SPEC §7 with
its reason), ``:cpu-long`` its longer version (``config_lib.cpu_long``). The numbers live in
``focus_jax.config_lib.stage_config``.
"""

from focus_jax import config_lib


def get_config(arg: str = ""):
  return config_lib.stage_config("em", arg)
