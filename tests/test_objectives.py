"""Stage objectives: the SPEC §7 weights, read from the config."""

import pytest

from focus_jax import config_lib, objectives


def test_weights_record():
  w = objectives.FocusLossWeights()
  assert w.stage1.as_dict() == {
    "photometric": 0.5,
    "stat_reg": 0.1,
    "landmarks": 5e-4,
    "perceptual": 0.25,
  }
  assert w.encoder.as_dict() == {
    "masked_rec": 0.5,
    "perceptual": 0.25,
    "stat_reg": 0.1,
    "landmarks": 5e-4,
    "area": 0.06,
  }
  assert w.unet.as_dict() == {
    "binary": 10.0,
    "area": 0.5,
    "preserve": 0.25,
    "dist": 3.0,
    "neighbour": 15.0,
  }
  terms = {k: float(i + 1) for i, k in enumerate(w.unet.as_dict())}
  assert w.unet.total(terms) == 10 * 1 + 0.5 * 2 + 0.25 * 3 + 3 * 4 + 15 * 5
  with pytest.raises(ValueError, match="do not match"):
    w.encoder.total({"masked_rec": 1.0})


# ----------------------------------------------------------------------------- gradients


def test_config_defaults_are_the_spec_weights():
  weights = objectives.weights_from_config(config_lib.base().loss)
  assert weights == objectives.FocusLossWeights()
  assert weights.unet.width_normalize is False


def test_config_overrides_reach_the_weights():
  config = config_lib.base()
  config.loss.stage1.landmarks = 0.01
  config.loss.width_normalize = True
  weights = objectives.weights_from_config(config.loss)
  assert weights.stage1.landmarks == 0.01 and weights.unet.width_normalize
  # The quirk switch is not a loss term.
  assert "width_normalize" not in weights.unet.as_dict()
