"""Stage 1: pretrain the face autoencoder (SPEC §7 step 1).

  python -m focus_jax.train --config=configs/pretrain.py --workdir=runs/pretrain
  python -m focus_jax.train --config=configs/pretrain.py:smoke --workdir=/tmp/smoke/pretrain

Full: ResNet-50, batch 12, 300k steps, Adadelta lr 0.1 decayed by 0.99 every 5000 steps.
``:smoke`` trains a tiny encoder for a few steps on 24 synthetic faces (CPU, about a minute).
"""

from focus_jax import config_lib


def get_config(arg: str = ""):
  config = config_lib.base()
  config.stage = "pretrain"
  config.total_steps = 300000
  config.optim.encoder_lr = 0.1
  config.optim.encoder_decay = 0.99
  return config_lib.apply_variant(config, arg)
