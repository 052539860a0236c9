"""Step 5 (optional): test-time adaptation, EM continued on the unlabelled test split.

  python -m focus_jax.train --config=configs/adapt.py --config.init_from=runs/em \
      --config.data.image_root=IMAGE_ROOT --workdir=runs/adapt
"""

import importlib.util
import os


def _em_config(arg: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "em.py")
  spec = importlib.util.spec_from_file_location("focus_jax_configs_em", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str = ""):
  config = _em_config(arg)
  config.stage = "adapt"
  config.data.split = "test"
  config.data.augment = False
  if arg != "smoke":
    config.total_steps = 10000
  return config
