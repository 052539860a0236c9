"""Step 4: EM alternation of the encoder and the UNet (SPEC §7), the main FOCUS training.

  python -m focus_jax.train --config=configs/em.py --config.init_from=runs/unet_pretrain \
      --workdir=runs/em
  python -m focus_jax.train --config=configs/em.py:smoke --workdir=/tmp/smoke/em

In every 30000-step period the first 5000 steps update the UNet, the rest the encoder.
lr0 = 0.1 * 0.99^60 * 0.8 (where stage 1 ended); encoder lr0 decayed by 0.99, UNet 0.06 lr0
decayed by 0.95, every 5000 steps. Without ``init_from`` the networks start from scratch (the
smoke variant does, on synthetic faces, with a period short enough to visit both phases).
"""

from focus_jax import config_lib

LR0 = 0.1 * 0.99**60 * 0.8


def get_config(arg: str = ""):
  config = config_lib.base()
  config.stage = "em"
  config.total_steps = 130 * 30000 // 12  # about 130 epochs of 30k images at batch 12
  config.optim.encoder_lr = LR0
  config.optim.encoder_decay = 0.99
  config.optim.unet_lr = 0.06 * LR0
  config.optim.unet_decay = 0.95
  config.em.period_steps = 30000
  config.em.unet_steps = 5000
  config_lib.apply_variant(config, arg)
  if arg == "smoke":
    config.em.period_steps = 4
    config.em.unet_steps = 1
  return config
