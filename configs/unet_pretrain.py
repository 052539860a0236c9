"""Steps 2-3: pretrain the UNet on the stage-1 occlusion masks (SPEC §7).

  python -m focus_jax.train --config=configs/unet_pretrain.py \
      --config.init_from=runs/pretrain --workdir=runs/unet_pretrain

The pseudo labels are the robust-photometric inlier masks of the frozen stage-1 encoder
(``init_from``). Full: UNet base 64, 30k steps, Adadelta lr 0.03 decayed by 0.99 every 5000.
"""

from focus_jax import config_lib


def get_config(arg: str = ""):
  config = config_lib.base()
  config.stage = "unet_pretrain"
  config.total_steps = 30000
  config.optim.unet_lr = 0.03
  config.optim.unet_decay = 0.99
  return config_lib.apply_variant(config, arg)
