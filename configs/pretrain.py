"""Stage 1: pretrain the face autoencoder (SPEC §7 step 1).

  python -m focus_jax.train --config=configs/pretrain.py --workdir=runs/pretrain
  python -m focus_jax.train --config=configs/pretrain.py:smoke --workdir=/tmp/smoke/pretrain

Full: ResNet-50, batch 12, 300k steps, Adadelta lr 0.1 decayed by 0.99 every 5000 steps.
``:smoke`` trains a tiny encoder for a few steps on 24 synthetic faces (CPU, about a minute).
``:cpu`` is the quick start's 2-core recipe (``config_lib.cpu``, every change from SPEC §7 with
its reason), ``:cpu-long`` its longer version (``config_lib.cpu_long``). The numbers live in
``focus_jax.config_lib.stage_config``.
"""

from focus_jax import config_lib


def get_config(arg: str = ""):
  return config_lib.stage_config("pretrain", arg)
