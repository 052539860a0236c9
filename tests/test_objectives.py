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
  config.loss.neighbour_window = 3
  weights = objectives.weights_from_config(config.loss)
  assert weights.stage1.landmarks == 0.01 and weights.unet.width_normalize
  assert weights.unet.neighbour_window == 3
  # The settings are not loss terms.
  assert {"width_normalize", "neighbour_window"}.isdisjoint(weights.unet.as_dict())


@pytest.mark.parametrize("window", [3, 5])
def test_the_neighbour_window_reaches_the_em_unet_loss(window, monkeypatch):
  """``config.loss.neighbour_window`` is the window the EM UNet step's neighbour term uses."""
  import jax
  import jax.numpy as jnp

  from focus_jax import losses, train

  config = config_lib.stage_config("em", "smoke")
  config.loss.neighbour_window = window
  model = train.load_model(config)
  nets, parts, arcface, _ = train.build_networks(config, model.sizes)
  frozen = train.frozen_inputs(config, model, arcface)
  size = config.data.image_size
  batch = {
    "image": jnp.zeros((2, size, size, 3), jnp.float32),
    "landmarks": jnp.zeros((2, 68, 2), jnp.float32),
  }
  windows = []
  real = losses.neighbour_loss

  def spy(image, render, mask, window=5):
    windows.append(window)
    return real(image, render, mask, window)

  monkeypatch.setattr(losses, "neighbour_loss", spy)
  weights = objectives.weights_from_config(config.loss).unet
  jax.eval_shape(
    lambda: objectives.em_unet_loss(
      parts["unet"], parts["encoder"], batch, frozen, nets, weights, jax.random.key(0)
    )
  )
  assert windows == [window]
