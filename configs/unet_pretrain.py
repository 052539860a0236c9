"""Steps 2-3: pretrain the UNet on the stage-1 occlusion masks (SPEC §7).

  python -m focus_jax.train --config=configs/unet_pretrain.py \
      --config.init_from=runs/pretrain --workdir=runs/unet_pretrain

The pseudo labels are the robust-photometric inlier masks of the frozen stage-1 encoder
(``init_from``). Full: UNet base 64, 30k steps, Adadelta lr 0.03 decayed by 0.99 every 5000.
``:cpu`` is the quick start's 2-core recipe (``config_lib.cpu``, every change from SPEC §7 with
its reason), ``:cpu-long`` its longer version (``config_lib.cpu_long``). The numbers live in
``focus_jax.config_lib.stage_config``.
"""

from focus_jax import config_lib


def get_config(arg: str = ""):
  return config_lib.stage_config("unet_pretrain", arg)
