"""Step 5 (optional): test-time adaptation, EM continued on the unlabelled test split.

  python -m focus_jax.train --config=configs/adapt.py --config.init_from=runs/em \
      --config.data.image_root=IMAGE_ROOT --workdir=runs/adapt

``:cpu`` is the quick start's 2-core recipe (``config_lib.cpu``, every change from SPEC §7 with
its reason), ``:cpu-long`` its longer version (``config_lib.cpu_long``). The numbers live in
``focus_jax.config_lib.stage_config``.
"""

from focus_jax import config_lib


def get_config(arg: str = ""):
  return config_lib.stage_config("adapt", arg)
