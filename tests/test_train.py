"""Training: schedules, configs, checkpoints, metrics, and end-to-end smoke runs with resume."""

import importlib.util
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from focus_jax import checkpoint, config_lib, metric_writer, sharding, train

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def _config(name, arg=""):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(CONFIGS, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_em_phase_and_learning_rate():
  phases = [train.phase(s, 30000, 5000) for s in (0, 5000, 5001, 29999, 30000, 35000, 35001)]
  assert phases == ["unet", "unet", "encoder", "encoder", "unet", "unet", "encoder"]
  assert train.learning_rate(4999, 0.1, 0.99, 5000) == pytest.approx(0.1)
  assert train.learning_rate(5000, 0.1, 0.99, 5000) == pytest.approx(0.099)
  assert train.learning_rate(12000, 0.03, 0.95, 5000) == pytest.approx(0.03 * 0.95**2)


@pytest.mark.parametrize("name", ["pretrain", "unet_pretrain", "em", "adapt"])
def test_every_config_loads(name):
  for arg in ("", "smoke"):
    config = _config(name, arg)
    assert config.stage == name
    assert set(config.to_dict()) == set(config_lib.base().to_dict())
  with pytest.raises(ValueError, match="unknown variant"):
    _config(name, "nope")


def test_config_numbers_follow_the_spec():
  em = _config("em")
  lr0 = 0.1 * 0.99**60 * 0.8
  assert em.optim.encoder_lr == pytest.approx(lr0) and em.optim.unet_lr == pytest.approx(0.06 * lr0)
  assert (em.optim.encoder_decay, em.optim.unet_decay) == (0.99, 0.95)
  assert (em.em.period_steps, em.em.unet_steps, em.batch_size) == (30000, 5000, 12)
  pre = _config("pretrain")
  assert (pre.optim.encoder_lr, pre.total_steps, pre.optim.decay_every_steps) == (0.1, 300000, 5000)
  assert _config("unet_pretrain").optim.unet_lr == 0.03
  assert _config("adapt").data.split == "test"
  assert _config("adapt").total_steps == 10000
  # The 2-core recipe adapts with its own EM schedule, not the full 10000 steps.
  cpu_adapt, cpu_em = _config("adapt", "cpu"), _config("em", "cpu")
  assert cpu_adapt.data.split == "test"
  assert cpu_adapt.total_steps == cpu_em.total_steps and cpu_adapt.em == cpu_em.em


def test_checkpoint_round_trip_into_sharded_target(tmp_path):
  mesh = sharding.make_mesh()
  batch = sharding.batch_sharding(mesh)
  state = {
    "step": jnp.int32(7),
    "net": {"layers": {0: {"w": jnp.arange(16.0).reshape(8, 2)}}, "b": jnp.ones(3)},
  }
  state = jax.device_put(state, sharding.replicated(mesh))
  mngr = checkpoint.manager(str(tmp_path / "ckpt"), interval=5, keep=2, async_save=False)
  for step in range(1, 13):
    checkpoint.save(mngr, step, state, {"stage": "test", "step": step})
  assert mngr.all_steps() == [5, 10]  # interval 5, the newest two kept
  target = checkpoint.abstract(state)
  target["net"]["layers"][0]["w"] = jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=batch)
  restored, record = checkpoint.restore(mngr, target)
  mngr.close()
  assert record == {"stage": "test", "step": 10}
  np.testing.assert_array_equal(restored["net"]["layers"][0]["w"], state["net"]["layers"][0]["w"])
  assert restored["net"]["layers"][0]["w"].sharding == batch
  assert int(restored["step"]) == 7
  assert checkpoint.latest_step(str(tmp_path / "ckpt")) == 10
  assert checkpoint.latest_step(str(tmp_path / "none")) is None


def test_networks_initialised_in_one_program_draw_what_eager_init_draws():
  """``train._initialised`` jits the initialisers; the draws (keys, order) stay the eager ones."""
  from flax import nnx

  from focus_jax.models import conv

  def make(rngs):
    return [
      conv.Conv(3, 4, 3, rngs=rngs),
      nnx.BatchNorm(4, rngs=rngs),
      conv.Conv(4, 2, 1, rngs=rngs),
    ]

  defs, parts = zip(*train._initialised(make, 3), strict=True)
  eager = [train.objectives.split(module) for module in make(nnx.Rngs(3))]
  assert list(defs) == [graphdef for graphdef, _ in eager]
  for part, (_, expected) in zip(parts, eager, strict=True):
    chex.assert_trees_all_close(part, expected, rtol=0, atol=1e-6)
  other_seed = train._initialised(make, 4)[0][1]
  assert not np.allclose(parts[0]["params"]["kernel"][...], other_seed["params"]["kernel"][...])
  # Under eval_shape (``restore_networks``) nothing is compiled: shapes only.
  shapes = jax.eval_shape(lambda: [part for _, part in train._initialised(make, 3)])
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, list(parts))


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  writer = metric_writer.MetricWriter(str(tmp_path), enabled=True)
  writer.write_text("note", "perceptual disabled")
  writer.write_scalars(3, {"loss": 1.5, "bad": float("nan")})
  writer.close()
  records = metric_writer.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert records == [
    {"note": "note", "text": "perceptual disabled"},
    {"step": 3, "loss": 1.5, "bad": None},
  ]
  events = EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert events.Tags()["scalars"] == ["loss"]
  assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 1.5)]


def test_batch_must_split_over_devices():
  with pytest.raises(ValueError, match="batch_size 4 is not divisible by the 8 devices"):
    sharding.check_batch_size(4, sharding.make_mesh())


def _smoke(name, image_root, total_steps, **overrides):
  config = _config(name, "smoke")
  config.data.image_root = image_root
  config.data.augment = True
  config.batch_size = 8  # the 8 fake devices of conftest.py
  config.data.image_size = 64  # the smoke chain's size (conftest): 224 px only costs time
  config.total_steps = total_steps
  config.log_every_steps = 1
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.slow  # ~2.5 min; CI trains both EM phases in the smoke chain (conftest)
def test_em_smoke_run_resumes_exactly(image_root, tmp_path):
  """Both EM phases run; stopping and resuming reproduces the uninterrupted run exactly."""
  straight = str(tmp_path / "straight")
  last = train.train_and_evaluate(_smoke("em", image_root, 3), straight)
  assert np.isfinite(last["loss"])
  records = metric_writer.read_jsonl(os.path.join(straight, "metrics.jsonl"))
  logged = [r for r in records if "step" in r]
  assert [r["step"] for r in logged] == [1, 2, 3]
  # Smoke period 4, UNet steps 0..1: steps 0 and 1 update the UNet, step 2 the encoder.
  assert "binary" in logged[1] and "masked_rec" in logged[2]
  notes = [r for r in records if r.get("note") == "arcface_losses"]
  assert "disabled" in json.loads(notes[0]["text"])["perceptual"]

  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(_smoke("em", image_root, 2, checkpoint_every_steps=2), resumed)
  assert checkpoint.latest_step(os.path.join(resumed, "checkpoints")) == 2
  again = train.train_and_evaluate(_smoke("em", image_root, 3), resumed)
  assert again["loss"] == pytest.approx(last["loss"], rel=1e-5)
  with open(os.path.join(straight, "config.json")) as f:
    assert json.load(f)["losses"]["dist"].startswith("disabled")


@pytest.mark.slow  # ~45 s of compilation; the smoke chain (conftest) trains the UNet in CI
def test_unet_pretrain_from_stage1_checkpoint(image_root, tmp_path):
  stage1 = str(tmp_path / "pretrain")
  train.train_and_evaluate(_smoke("pretrain", image_root, 1), stage1)
  unet = str(tmp_path / "unet")
  out = train.train_and_evaluate(_smoke("unet_pretrain", image_root, 1, init_from=stage1), unet)
  assert np.isfinite(out["bce"]) and 0.0 < out["label_fraction"] < 1.0
  with pytest.raises(ValueError, match="init_from=.*missing: no such directory"):
    train.train_and_evaluate(
      _smoke("unet_pretrain", image_root, 1, init_from=str(tmp_path / "missing")),
      str(tmp_path / "unet2"),
    )


@pytest.mark.slow  # ~1.3 min: the stage-1 step compiled for 1 and 8 devices
def test_sharded_step_equals_single_device(image_root):
  """The jitted encoder step on 8 devices (batch sharded) equals the same step on 1 device."""
  config = _smoke("pretrain", image_root, 1)
  model = train.load_model(config)
  nets, parts, arc, _ = train.build_networks(config, model.sizes)
  step = train.make_steps(nets, config)["encoder"]
  from focus_jax.data import pipeline as input_pipeline

  source = input_pipeline.InMemorySource(image_root, "train", align=False)
  local = input_pipeline.make_dataset(source, 8, train=True, seed=0, num_epochs=None)[0]
  batch = {k: local[k] for k in ("image", "landmarks")}
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    rep = sharding.replicated(mesh)
    state = jax.device_put(train.init_state(parts, config.optim), rep)
    frozen = jax.device_put(train.frozen_inputs(config, model, arc), rep)
    placed = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
    new, scalars = jax.jit(step, out_shardings=(rep, rep))(state, placed, frozen)
    results.append((jax.device_get(new["encoder"]["params"]), float(scalars["loss"])))
  assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    results[0][0],
    results[1][0],
  )
