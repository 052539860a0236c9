"""FOCUS training (SPEC §7): ``python -m focus_jax.train --config=configs/em.py --workdir=DIR``.

Stages (``config.stage``), each resumable from its own workdir:

- ``pretrain`` (step 1): the face autoencoder alone, ``0.5 robust photometric + 0.1 stat reg +
  5e-4 landmarks + 0.25 perceptual``.
- ``unet_pretrain`` (steps 2 and 3): the UNet learns the stage-1 occlusion masks with a correct
  binary cross-entropy. The pseudo labels come from the frozen stage-1 encoder (``init_from``)
  on every batch instead of a pass that writes them to disk first: the encoder is frozen, so the
  label of an image is the same either way, and augmentation is applied consistently.
- ``em`` (step 4): alternation by :func:`phase` — in every ``em.period_steps`` the first
  ``em.unet_steps`` update the UNet, the rest the encoder; the other network runs in inference
  mode. Two optimisers, two jitted steps, each differentiating only its own network.
- ``adapt`` (step 5): ``em`` continued on the (unlabelled) test split.

Functional use of Flax NNX: networks are split once into a static graph definition and a pytree
of parameters plus the rest (BatchNorm statistics); the train state is a plain pytree
``{step, encoder, unet, opt}`` created already replicated on the device mesh, and every update
is one ``jax.jit`` with the state donated. The random key is folded with the step, so resuming
needs no RNG state. Optimiser: Adadelta (PyTorch's defaults rho 0.9, eps 1e-6) with the learning
rate of the *global* step, ``lr * decay ** (step // decay_every_steps)`` (StepLR).

Fidelity notes. The area term of the encoder loss uses the renderer's soft silhouette: the
original's mask is hard and detached, so that term gave the encoder no gradient at all
(``losses.soft_area`` below documents the switch). Without ArcFace weights the perceptual,
preserve and dist terms are disabled with one warning, recorded in the run's ``config.json``
and ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from focus_jax import align, checkpoint, config_lib, losses, metric_writer, sharding
from focus_jax.render import pipeline

log = logging.getLogger(__name__)


def phase(step: int, period_steps: int, unet_steps: int) -> str:
  """``'unet'`` or ``'encoder'``: which network an EM step updates.

  The original trains the encoder when ``step % 30000 > 5000``, so the UNet gets steps
  ``0..5000`` (inclusive) of every period.
  """
  return "unet" if step % period_steps <= unet_steps else "encoder"


def learning_rate(step, lr: float, decay: float, every: int):
  """Step decay of the global step: ``lr * decay ** (step // every)``."""
  return lr * decay ** (step // every)


# --------------------------------------------------------------------------------------------
# Networks, used functionally.


@dataclasses.dataclass(frozen=True)
class Networks:
  """Static graph definitions (hashable: part of the compiled programs, not of the state)."""

  encoder: nnx.GraphDef
  unet: nnx.GraphDef
  arcface: nnx.GraphDef | None


def split(module: nnx.Module):
  """``(graphdef, {'params': ..., 'rest': ...})`` of an NNX module."""
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  return graphdef, {"params": params, "rest": rest}


def merge(graphdef: nnx.GraphDef, part: dict, train: bool) -> nnx.Module:
  # copy=True: fresh Variables in the current trace. BatchNorm updates its statistics in place,
  # which NNX only allows for variables created at the trace level that mutates them.
  module = nnx.merge(graphdef, part["params"], part["rest"], copy=True)
  module.train() if train else module.eval()
  return module


def _rest(module: nnx.Module):
  return nnx.split(module, nnx.Param, ...)[2]


def build_networks(config: ml_collections.ConfigDict, sizes: dict):
  """Creates the encoder, UNet and (if weights are configured) ArcFace.

  Returns ``(Networks, parts, arcface_part, notes)``: ``parts`` holds the trainable
  ``{'encoder', 'unet'}`` parameter pytrees, ``arcface_part`` the frozen ArcFace pytree or None,
  ``notes`` which ArcFace losses are enabled.
  """
  from focus_jax import convert
  from focus_jax.models import arcface, resnet, unet

  rngs = nnx.Rngs(config.seed)
  if config.encoder.init:
    encoder = convert.face_encoder_from_imagenet(sizes, config.encoder.init)
  else:
    encoder = resnet.FaceEncoder(sizes, config.encoder.depth, width=config.encoder.width, rngs=rngs)
  network = unet.UNet(config.unet.base, rngs=rngs)
  face_id, notes = arcface.load_arcface_or_none(config.arcface.weights or None)
  enc_def, enc_part = split(encoder)
  unet_def, unet_part = split(network)
  arc_def, arc_part = split(face_id) if face_id is not None else (None, None)
  return (
    Networks(enc_def, unet_def, arc_def),
    {"encoder": enc_part, "unet": unet_part},
    arc_part,
    notes,
  )


# --------------------------------------------------------------------------------------------
# Losses of the stages (batch: image (B, H, W, 3), landmarks (B, 68, 2)).


def _render(frozen, coeffs, image):
  return pipeline.render_batch(frozen["model"], coeffs, image.shape[1], image.shape[2])


def _arcface(nets: Networks, frozen, images, landmarks):
  net = merge(nets.arcface, frozen["arcface"], train=False)
  return net(align.align_faces(images, landmarks))


def stage1_loss(enc_part, batch, frozen, nets: Networks, weights: losses.Stage1Weights):
  """Stage-1 autoencoder loss; returns ``(total, (new encoder rest, metrics))``."""
  image = batch["image"]
  encoder = merge(nets.encoder, enc_part, train=True)
  coeffs = encoder(image)
  out = _render(frozen, coeffs, image)
  photometric, inliers = losses.robust_photometric(image, out.image, out.mask)
  terms = {
    "photometric": photometric,
    "stat_reg": losses.statistical_regularizer(
      coeffs["shape"], coeffs["expression"], coeffs["color"]
    ),
    "landmarks": losses.landmark_loss(
      batch["landmarks"], out.landmarks, frozen["model"].landmark_weights
    ),
    "perceptual": jnp.float32(0.0),
  }
  if nets.arcface is not None:
    terms["perceptual"] = losses.perceptual_loss(
      _arcface(nets, frozen, out.image, out.landmarks).deep,
      _arcface(nets, frozen, image, batch["landmarks"]).deep,
    )
  total = weights.total(terms)
  scalars = {**terms, "loss": total, "inlier_fraction": jnp.mean(inliers)}
  return total, (_rest(encoder), scalars)


def _frozen_render(enc_part, batch, frozen, nets: Networks):
  encoder = merge(nets.encoder, enc_part, train=False)
  coeffs = jax.lax.stop_gradient(encoder(batch["image"]))
  return coeffs, jax.lax.stop_gradient(_render(frozen, coeffs, batch["image"]))


def unet_pretrain_loss(unet_part, enc_part, batch, frozen, nets: Networks, key):
  """UNet pretraining on the frozen stage-1 model's occlusion masks (correct BCE on logits)."""
  image = batch["image"]
  _, out = _frozen_render(enc_part, batch, frozen, nets)
  _, labels = losses.robust_photometric(image, out.image, out.mask)
  network = merge(nets.unet, unet_part, train=True)
  logits = network.logits(out.image, image, rngs=nnx.Rngs(dropout=key))[..., 0]
  bce = losses.binary_cross_entropy_with_logits(logits, labels)
  return bce, (_rest(network), {"bce": bce, "loss": bce, "label_fraction": jnp.mean(labels)})


def em_encoder_loss(enc_part, unet_part, batch, frozen, nets: Networks, weights, soft_area):
  """EM encoder step: the UNet (inference mode, no gradient) masks the reconstruction."""
  image = batch["image"]
  encoder = merge(nets.encoder, enc_part, train=True)
  coeffs = encoder(image)
  out = _render(frozen, coeffs, image)
  network = merge(nets.unet, unet_part, train=False)
  visible = jax.lax.stop_gradient(network(out.image, image)[..., 0])
  render_mask = out.soft_mask if soft_area else out.mask
  terms = {
    "masked_rec": losses.masked_reconstruction(image, out.image, out.mask * visible),
    "perceptual": jnp.float32(0.0),
    "stat_reg": losses.statistical_regularizer(
      coeffs["shape"], coeffs["expression"], coeffs["color"]
    ),
    "landmarks": losses.landmark_loss(
      batch["landmarks"], out.landmarks, frozen["model"].landmark_weights
    ),
    "area": losses.area_loss(render_mask, visible),
  }
  if nets.arcface is not None:
    terms["perceptual"] = losses.perceptual_loss(
      _arcface(nets, frozen, out.image, out.landmarks).deep,
      _arcface(nets, frozen, image, batch["landmarks"]).deep,
    )
  total = weights.total(terms)
  return total, (_rest(encoder), {**terms, "loss": total})


def em_unet_loss(unet_part, enc_part, batch, frozen, nets: Networks, weights, key):
  """EM UNet step: the encoder runs in inference mode; the UNet segments its render's misfits."""
  image = batch["image"]
  _, out = _frozen_render(enc_part, batch, frozen, nets)
  network = merge(nets.unet, unet_part, train=True)
  visible = network(out.image, image, rngs=nnx.Rngs(dropout=key))[..., 0]
  m = out.mask * visible
  terms = {
    "binary": losses.binary_loss(m),
    "area": losses.area_loss(out.mask, visible),
    "preserve": jnp.float32(0.0),
    "dist": jnp.float32(0.0),
    "neighbour": losses.neighbour_loss(image, out.image, m),
  }
  if nets.arcface is not None:
    masked_image = image * m[..., None]
    lm = batch["landmarks"]
    terms["preserve"] = losses.preserve_loss(
      _arcface(nets, frozen, image, lm).shallow, _arcface(nets, frozen, masked_image, lm).shallow
    )
    terms["dist"] = losses.dist_loss(
      _arcface(nets, frozen, out.image * m[..., None], out.landmarks).shallow,
      _arcface(nets, frozen, masked_image, lm).shallow,
    )
  total = weights.total(terms)
  return total, (_rest(network), {**terms, "loss": total, "visible_fraction": jnp.mean(visible)})


# --------------------------------------------------------------------------------------------
# Update steps.

_ADADELTA = optax.adadelta(learning_rate=1.0, rho=0.9, eps=1e-6)


def _apply(part, opt_state, grads, lr):
  updates, opt_state = _ADADELTA.update(grads, opt_state, part["params"])
  updates = jax.tree.map(lambda u: lr * u, updates)
  return optax.apply_updates(part["params"], updates), opt_state


def make_steps(nets: Networks, config: ml_collections.ConfigDict):
  """The stage's update functions ``{name: f(state, batch, frozen) -> (state, scalars)}``."""
  weights = losses.FocusLossWeights()
  o = config.optim
  enc_lr = functools.partial(
    learning_rate, lr=o.encoder_lr, decay=o.encoder_decay, every=o.decay_every_steps
  )
  unet_lr = functools.partial(
    learning_rate, lr=o.unet_lr, decay=o.unet_decay, every=o.decay_every_steps
  )
  base_key = jax.random.key(config.seed)

  def update(state, name, loss_fn, lr):
    (_, (rest, scalars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state[name]["params"])
    params, opt = _apply(state[name], state["opt"][name], grads, lr(state["step"]))
    new = dict(state, step=state["step"] + 1)
    new[name] = {"params": params, "rest": rest}
    new["opt"] = dict(state["opt"], **{name: opt})
    return new, {**scalars, "lr": lr(state["step"])}

  def encoder_step(loss_fn):
    def step(state, batch, frozen):
      def fn(params):
        return loss_fn({"params": params, "rest": state["encoder"]["rest"]}, state, batch, frozen)

      return update(state, "encoder", fn, enc_lr)

    return step

  def unet_step(loss_fn):
    def step(state, batch, frozen):
      key = jax.random.fold_in(base_key, state["step"])

      def fn(params):
        part = {"params": params, "rest": state["unet"]["rest"]}
        return loss_fn(part, state, batch, frozen, key)

      return update(state, "unet", fn, unet_lr)

    return step

  soft = config.soft_area
  stage1 = encoder_step(lambda p, s, b, f: stage1_loss(p, b, f, nets, weights.stage1))
  pre_unet = unet_step(lambda p, s, b, f, k: unet_pretrain_loss(p, s["encoder"], b, f, nets, k))
  em_enc = encoder_step(
    lambda p, s, b, f: em_encoder_loss(p, s["unet"], b, f, nets, weights.encoder, soft)
  )
  em_unet = unet_step(
    lambda p, s, b, f, k: em_unet_loss(p, s["encoder"], b, f, nets, weights.unet, k)
  )
  table = {
    "pretrain": {"encoder": stage1},
    "unet_pretrain": {"unet": pre_unet},
    "em": {"encoder": em_enc, "unet": em_unet},
    "adapt": {"encoder": em_enc, "unet": em_unet},
  }
  return table[config.stage]


@functools.lru_cache(maxsize=8)
def compiled_steps(nets: Networks, config_json: str, replicated) -> dict:
  """The jitted update steps of a stage, cached so that a second run in the same process (a
  resumed run, a notebook, a test) reuses the compiled programs."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  return {
    name: jax.jit(fn, donate_argnums=0, out_shardings=(replicated, replicated))
    for name, fn in make_steps(nets, config).items()
  }


def stage_phase(config: ml_collections.ConfigDict, step: int) -> str:
  """Which network the stage updates at ``step``."""
  if config.stage == "pretrain":
    return "encoder"
  if config.stage == "unet_pretrain":
    return "unet"
  return phase(step, config.em.period_steps, config.em.unet_steps)


# --------------------------------------------------------------------------------------------
# Data.


def _image_root(config, workdir: str) -> tuple[str, bool]:
  """``(image_root, align)``: the configured one, or a synthetic one made in the workdir."""
  if config.data.image_root:
    return config.data.image_root, True
  from focus_jax.data import layout, synthetic

  root = os.path.join(workdir, "synthetic")
  if not os.path.exists(layout.csv_path(root, "all")):
    if jax.process_index() == 0:
      log.info(
        "No data.image_root: generating %d synthetic faces in %s", config.data.synthetic_num, root
      )
      synthetic.generate(
        root, config.data.synthetic_num, seed=config.seed, model=config.model.spec, progress=False
      )
    _sync("synthetic data")
  return root, False  # synthetic faces are rendered already aligned


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def make_batches(config, workdir: str, mesh, split: str, start_step: int, train: bool):
  """Global batches of ``split`` from ``start_step`` on (deterministic, so resume is exact)."""
  from focus_jax.data import augment
  from focus_jax.data import pipeline as input_pipeline

  root, aligned = _image_root(config, workdir)
  source = input_pipeline.InMemorySource(root, split, align=aligned)
  dataset = input_pipeline.make_dataset(
    source,
    config.batch_size,
    train=train,
    seed=config.seed,
    num_epochs=None if train else 1,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    augment_config=augment.AugmentConfig()
    if config.data.augment
    else augment.AugmentConfig(shift_px=0, scale_delta=0.0, rotation_deg=0.0, flip_probability=0.0),
  )
  if train:
    dataset = dataset[start_step:]
  keys = ("image", "landmarks", "mask", "has_mask", "valid")
  for batch in input_pipeline.global_batches(dataset, mesh):
    yield {k: batch[k] for k in keys if k in batch}


# --------------------------------------------------------------------------------------------
# State, checkpoints and the loop.


def init_state(parts: dict) -> dict:
  """The train state pytree from the networks' parameter pytrees."""
  return {
    "step": jnp.int32(0),
    "encoder": parts["encoder"],
    "unet": parts["unet"],
    "opt": {name: _ADADELTA.init(parts[name]["params"]) for name in ("encoder", "unet")},
  }


def load_model(config):
  from focus_jax import model_zoo

  return model_zoo.load_model(
    config.model.spec,
    n_shape=config.model.n_shape,
    n_exp=config.model.n_exp,
    n_color=config.model.n_color,
    crop=config.model.crop or None,
  )


def _init_from(state, workdir: str):
  """Networks (not optimiser state or step) from the latest checkpoint of an earlier stage."""
  directory = os.path.join(workdir, "checkpoints")
  mngr = checkpoint.manager(directory, 1, 1, async_save=False)
  restored = checkpoint.restore(mngr, checkpoint.abstract(state))
  mngr.close()
  if restored is None:
    raise ValueError(f"init_from: no checkpoint in {directory}")
  previous, record = restored
  log.info(
    "Initialised the networks from %s (stage %s, step %d)",
    directory,
    record.get("stage"),
    int(previous["step"]),
  )
  return dict(state, encoder=previous["encoder"], unet=previous["unet"])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs ``config.stage`` in ``workdir`` (resuming from its latest checkpoint); returns the
  last logged scalars."""
  if config.stage not in config_lib.STAGES:
    raise ValueError(f"config.stage={config.stage!r}: expected one of {config_lib.STAGES}")
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  replicated = sharding.replicated(mesh)
  model = load_model(config)
  nets, parts, arc_part, notes = build_networks(config, model.sizes)
  frozen = jax.device_put({"model": model, "arcface": arc_part}, replicated)
  state = jax.jit(init_state, out_shardings=replicated)(parts)

  writer = metric_writer.MetricWriter(workdir)
  record = {"stage": config.stage, "config": config.to_dict(), "losses": notes}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(record, f, indent=1, default=str)
  writer.write_text("arcface_losses", json.dumps(notes))

  mngr = checkpoint.manager(
    os.path.join(workdir, "checkpoints"), config.checkpoint_every_steps, config.keep_checkpoints
  )
  restored = checkpoint.restore(mngr, checkpoint.abstract(state))
  if restored is not None:
    state = restored[0]
    log.info("Resumed %s at step %d", workdir, int(state["step"]))
  elif config.init_from:
    state = _init_from(state, config.init_from)
  start = int(state["step"])

  step_keys = ("stage", "seed", "optim", "em", "soft_area")  # all that make_steps reads
  step_config = json.dumps({k: config.to_dict()[k] for k in step_keys}, sort_keys=True)
  steps = compiled_steps(nets, step_config, replicated)
  batches = make_batches(config, workdir, mesh, config.data.split, start, train=True)
  last, pending, t0 = {}, None, time.time()
  for step in range(start, config.total_steps):
    batch = next(batches)
    state, scalars = steps[stage_phase(config, step)](state, batch, frozen)
    # Metrics are pulled to the host one step late, so logging never waits for the device.
    if pending is not None:
      last = _log_step(writer, *pending, t0)
      pending = None
    if (step + 1) % config.log_every_steps == 0 or step + 1 == config.total_steps:
      pending = (step + 1, scalars)
    checkpoint.save(mngr, step + 1, state, record, force=step + 1 == config.total_steps)
  if pending is not None:
    last = _log_step(writer, *pending, t0)
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  return last


def _log_step(writer, step: int, scalars: dict, t0: float) -> dict:
  values = {k: float(v) for k, v in jax.device_get(scalars).items()}
  if not np.isfinite(values["loss"]):
    raise FloatingPointError(
      f"non-finite loss {values['loss']} at step {step}; the last checkpoint is intact"
    )
  values["seconds"] = time.time() - t0
  writer.write_scalars(step, values)
  log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
  return values


def main(argv) -> None:
  del argv
  if FLAGS.distributed:
    # Without arguments JAX detects TPU pods, SLURM and Open MPI; elsewhere pass the three flags.
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator or None,
      num_processes=FLAGS.num_processes or None,
      process_id=FLAGS.process_id if FLAGS.num_processes else None,
    )
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  workdir = FLAGS.workdir or os.path.join("runs", FLAGS.config.stage)
  train_and_evaluate(FLAGS.config, workdir)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "configs/<stage>.py[:variant]", lock_config=True)
  flags.DEFINE_string("workdir", "", "run directory (checkpoints, metrics); default runs/<stage>")
  flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-host)")
  flags.DEFINE_string("coordinator", "", "host:port of process 0 (multi-host GPU without SLURM)")
  flags.DEFINE_integer("num_processes", 0, "number of processes (with --coordinator)")
  flags.DEFINE_integer("process_id", 0, "this process's index (with --coordinator)")
  flags.mark_flags_as_required(["config"])
  FLAGS = flags.FLAGS
  app.run(main)
