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

Networks are split once into a static graph definition and a pytree of parameters plus the rest
(BatchNorm statistics, :func:`objectives.split`); the train state is a plain pytree
``{step, encoder, unet, opt}`` created already replicated on the device mesh, and every update
is one ``jax.jit`` with the state donated. The random key is folded with the step, so resuming
needs no RNG state. Optimiser: Adadelta (PyTorch's defaults rho 0.9, eps 1e-6) with the learning
rate of the *global* step, ``lr * decay ** (step // decay_every_steps)`` (StepLR).

The stage objectives and their weights (``config.loss``) are :mod:`focus_jax.objectives`.
Without ArcFace weights the perceptual, preserve and dist terms are disabled with one warning,
recorded in the run's ``config.json`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from focus_jax import (
  checkpoint,
  config_lib,
  files,
  lock,
  losses,
  metric_writer,
  objectives,
  sharding,
)
from focus_jax.render import pipeline

log = logging.getLogger(__name__)


def phase(step: int, period_steps: int, unet_steps: int) -> str:
  """``'unet'`` or ``'encoder'``: which network an EM step updates.

  The original trains the encoder when ``step % 30000 > 5000``, so the UNet gets steps
  ``0..5000`` (inclusive) of every period.
  """
  return "unet" if step % period_steps <= unet_steps else "encoder"


def learning_rate(step, lr: float, decay: float, every: int, schedule="step", warmup=0, total=1):
  """Learning rate at the global ``step``.

  ``schedule="step"`` (SPEC §7, StepLR): ``lr * decay ** (step // every)``; ``"cosine"``: ``lr``
  annealed to 0 at ``total`` steps. Either after a linear warm-up over ``warmup`` steps.
  """
  if schedule == "step":
    value = lr * decay ** (step // every)
  elif schedule == "cosine":
    value = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(step / max(total, 1), 1.0)))
  else:
    raise ValueError(f"config.optim.schedule={schedule!r}: expected 'step' or 'cosine'")
  if warmup > 0:
    value = value * jnp.minimum((step + 1) / warmup, 1.0)
  return value


# --------------------------------------------------------------------------------------------
# Networks.


def _initialised(make, seed: int) -> list:
  """``objectives.split`` of each module ``make(nnx.Rngs(seed))`` returns (a list), their random
  initial values computed by one jitted program. Run eagerly, every initialiser of every layer
  was compiled on its own: 31 s for the ``:cpu`` networks on 2 CPU cores, 8 s now. The values
  are the eager ones (the same draws of the same keys) up to float32 rounding (2.4e-7)."""
  defs = []

  def init(key):
    pairs = [objectives.split(module) for module in make(nnx.Rngs(key))]
    defs[:] = [graphdef for graphdef, _ in pairs]  # static: safe to keep out of the trace
    return [part for _, part in pairs]

  key = jax.random.key(seed)  # an argument, not a constant for XLA to fold
  if isinstance(key, jax.core.Tracer):  # traced already (``restore_networks``' eval_shape)
    parts = init(key)
  else:
    # Without LLVM's optimisations: the program runs once, and compiles in ~6 s, not ~25.
    options = {"xla_backend_optimization_level": 0}
    parts = jax.jit(init).lower(key).compile(compiler_options=options)(key)
  return list(zip(defs, parts, strict=True))


def build_networks(config: ml_collections.ConfigDict, sizes: dict, arcface: bool = True):
  """Creates the encoder, UNet and (if weights are configured and ``arcface``) ArcFace.

  Returns ``(objectives.Networks, parts, arcface_part, notes)``: ``parts`` holds the trainable
  ``{'encoder', 'unet'}`` parameter pytrees, ``arcface_part`` the frozen ArcFace pytree or None,
  ``notes`` which ArcFace losses are enabled.
  """
  from focus_jax.models import resnet, unet, weights

  def make_unet(rngs):
    return unet.UNet(config.unet.base, rngs=rngs)

  if config.encoder.init:
    encoder = objectives.split(weights.face_encoder_from_imagenet(sizes, config.encoder.init))
    (network,) = _initialised(lambda rngs: [make_unet(rngs)], config.seed)
  else:  # the encoder draws from the RNGs before the UNet
    depth, width = config.encoder.depth, config.encoder.width
    encoder, network = _initialised(
      lambda rngs: [resnet.FaceEncoder(sizes, depth, width=width, rngs=rngs), make_unet(rngs)],
      config.seed,
    )
  (enc_def, enc_part), (unet_def, unet_part) = encoder, network
  face_id, notes = None, {}
  if arcface:
    face_id, notes = weights.load_arcface_or_none(config.arcface.weights or None)
  arc_def, arc_part = objectives.split(face_id) if face_id is not None else (None, None)
  return (
    objectives.Networks(enc_def, unet_def, arc_def),
    {"encoder": enc_part, "unet": unet_part},
    arc_part,
    notes,
  )


def restore_networks(workdir: str, config: ml_collections.ConfigDict, sizes: dict):
  """``(nets, parts, step)``: the encoder and UNet of a stage workdir's latest checkpoint (the
  rest of the stored train state is not read).

  The networks are built abstractly (``jax.eval_shape``), so nothing is initialised or compiled
  only to be overwritten by the restore.
  """
  directory = os.path.join(workdir, "checkpoints")
  if checkpoint.latest_step(directory) is None:
    raise ValueError(f"{directory}: no checkpoint (did the stage run and save one?)")
  config = ml_collections.ConfigDict(config.to_dict())
  config.encoder.init = ""  # the checkpoint holds the trained encoder
  captured = {}

  def build():
    # ArcFace only shapes training losses: it is not in the train state.
    nets, parts, _, _ = build_networks(config, sizes, arcface=False)
    captured["nets"] = nets  # graph definitions are static: safe to keep out of the trace
    return parts

  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), jax.eval_shape(build)
  )
  target["step"] = jax.ShapeDtypeStruct((), jnp.int32, sharding=device)
  state = checkpoint.restore_subtrees(directory, target)
  parts = {"encoder": state["encoder"], "unet": state["unet"]}
  return captured["nets"], parts, int(state["step"])


# --------------------------------------------------------------------------------------------
# Update steps.


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimiser of ``config.optim`` at unit learning rate (each step scales the updates by
  its scheduled rate): Adadelta with PyTorch's defaults (SPEC §7) or Adam, after optional
  clipping of the global gradient norm."""
  if optim.name == "adadelta":
    tx = optax.adadelta(learning_rate=1.0, rho=0.9, eps=1e-6)
  elif optim.name == "adam":
    tx = optax.adam(learning_rate=1.0)
  else:
    raise ValueError(f"config.optim.name={optim.name!r}: expected 'adadelta' or 'adam'")
  return optax.chain(optax.clip_by_global_norm(optim.clip_norm), tx) if optim.clip_norm else tx


def _apply(tx, part, opt_state, grads, lr):
  updates, opt_state = tx.update(grads, opt_state, part["params"])
  updates = jax.tree.map(lambda u: lr * u, updates)
  return optax.apply_updates(part["params"], updates), opt_state


def _all_finite(tree) -> jax.Array:
  """Whether every floating-point leaf of ``tree`` is finite (a scalar bool)."""
  leaves = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_steps(nets: objectives.Networks, config: ml_collections.ConfigDict):
  """The stage's update functions ``{name: f(state, batch, frozen) -> (state, scalars)}``."""
  weights = objectives.weights_from_config(config.loss)
  o = config.optim
  tx = make_optimizer(o)
  schedule = {
    "every": o.decay_every_steps,
    "schedule": o.schedule,
    "warmup": o.warmup_steps,
    "total": config.get("total_steps", 1),
  }
  enc_lr = functools.partial(learning_rate, lr=o.encoder_lr, decay=o.encoder_decay, **schedule)
  unet_lr = functools.partial(learning_rate, lr=o.unet_lr, decay=o.unet_decay, **schedule)
  base_key = jax.random.key(config.seed)

  def update(state, name, loss_fn, lr):
    (_, (rest, scalars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state[name]["params"])
    params, opt = _apply(tx, state[name], state["opt"][name], grads, lr(state["step"]))
    new = dict(state, step=state["step"] + 1)
    new[name] = {"params": params, "rest": rest}
    new["opt"] = dict(state["opt"], **{name: opt})
    # A non-finite loss or update is never taken: the network keeps its last good values (the
    # step still advances), so no checkpoint can ever hold a non-finite state. The loop decides
    # whether to stop or go on (config.nonfinite).
    finite = jnp.isfinite(scalars["loss"]) & _all_finite(new[name])
    new[name], new["opt"] = jax.tree.map(
      lambda a, b: jnp.where(finite, a, b), (new[name], new["opt"]), (state[name], state["opt"])
    )
    new["skipped"] = state["skipped"] + (~finite).astype(jnp.int32)
    return new, {**scalars, "lr": lr(state["step"]), "finite": finite, "skipped": new["skipped"]}

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
  stage1 = encoder_step(lambda p, s, b, f: objectives.stage1_loss(p, b, f, nets, weights.stage1))
  pre_unet = unet_step(
    lambda p, s, b, f, k: objectives.unet_pretrain_loss(p, s["encoder"], b, f, nets, k)
  )
  em_enc = encoder_step(
    lambda p, s, b, f: objectives.em_encoder_loss(p, s["unet"], b, f, nets, weights.encoder, soft)
  )
  em_unet = unet_step(
    lambda p, s, b, f, k: objectives.em_unet_loss(p, s["encoder"], b, f, nets, weights.unet, k)
  )
  table = {
    "pretrain": {"encoder": stage1},
    "unet_pretrain": {"unet": pre_unet},
    "em": {"encoder": em_enc, "unet": em_unet},
    "adapt": {"encoder": em_enc, "unet": em_unet},
  }
  return table[config.stage]


@functools.lru_cache(maxsize=8)
def compiled_steps(nets: objectives.Networks, config_json: str, replicated) -> dict:
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
  """``(image_root, align)``: the configured one, or a synthetic one made in the workdir.

  Synthetic roots (they hold ``synthetic.json``) are rendered aligned already: no alignment.
  """
  if config.data.image_root:
    root = config.data.image_root
    return root, not os.path.exists(os.path.join(root, "synthetic.json"))
  root = os.path.join(workdir, "synthetic")
  ensure_synthetic(config, root)
  return root, False  # synthetic faces are rendered already aligned


def ensure_synthetic(config: ml_collections.ConfigDict, root: str) -> None:
  """Generates ``config.data.synthetic_num`` synthetic faces into ``root`` unless it holds them
  already (process 0 writes, the others wait)."""
  from focus_jax.data import layout, synthetic

  if not os.path.exists(layout.csv_path(root, "all")):
    if jax.process_index() == 0:
      log.info("Generating %d synthetic faces in %s", config.data.synthetic_num, root)
      synthetic.generate(
        root,
        config.data.synthetic_num,
        seed=config.data.synthetic_seed,
        model=config.model.spec,
        progress=False,
        split=tuple(config.data.synthetic_split),
      )
    _sync("synthetic data")


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def data_source(config, workdir: str, split: str):
  """The random-access source of ``split``.

  ``config.data.source``: ``"tfds"`` streams an ArrayRecord dataset from disk (prepared once,
  by process 0, into ``config.data.tfds_dir``, default ``<workdir>/tfds``; later runs reuse it);
  ``"memory"`` aligns the examples into memory; ``"auto"`` (default) takes tfds for image roots of
  photos (they need alignment) and memory for synthetic roots (already aligned).
  """
  from focus_jax.data import pipeline as input_pipeline

  root, aligned = _image_root(config, workdir)
  kind = config.data.source
  if kind == "auto":  # photos stream from disk; synthetic faces (aligned, small) sit in memory
    kind = "tfds" if aligned else "memory"
  if kind == "memory":
    return input_pipeline.InMemorySource(root, split, align=aligned, policy=config.data.bad_rows)
  if kind != "tfds":
    raise ValueError(f"config.data.source={kind!r}: expected 'auto', 'memory' or 'tfds'")
  from focus_jax.data import tfds_builder

  data_dir = config.data.tfds_dir or os.path.join(workdir, "tfds")
  # One dataset per image root and alignment, so two roots never share a prepared copy.
  key = f"{os.path.abspath(root)}|{aligned}|{config.data.bad_rows}"
  name = "root_" + hashlib.sha256(key.encode()).hexdigest()[:12]
  if jax.process_index() == 0:
    builder_dir = tfds_builder.prepare(
      root, data_dir, name, align=aligned, policy=config.data.bad_rows
    )
  _sync("tfds prepare")
  if jax.process_index() != 0:
    builder_dir = tfds_builder.builder_dir(data_dir, name)
  return input_pipeline.open_source(builder_dir, split)


def make_batches(config, workdir: str, mesh, split: str, start_step: int, train: bool):
  """Global batches of ``split`` from ``start_step`` on (deterministic, so resume is exact)."""
  from focus_jax.data import augment
  from focus_jax.data import pipeline as input_pipeline

  source = data_source(config, workdir, split)
  dataset = input_pipeline.make_dataset(
    source,
    config.batch_size,
    train=train,
    seed=config.seed,
    num_epochs=None if train else 1,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    augment_config=augment.AugmentConfig()
    if config.data.augment and train
    else augment.AugmentConfig(shift_px=0, scale_delta=0.0, rotation_deg=0.0, flip_probability=0.0),
    image_size=config.data.image_size,
  )
  if train:
    dataset = dataset[start_step:]
  keys = ("image", "landmarks", "mask", "has_mask", "valid")
  for batch in input_pipeline.global_batches(dataset, mesh):
    yield {k: batch[k] for k in keys if k in batch}


# --------------------------------------------------------------------------------------------
# Validation during training.


def _validation_step(nets: objectives.Networks, state, batch, frozen):
  """Per-image validation scalars of the current networks on one batch (inference mode), and
  the images of the grid: input | render | UNet visibility | stage-1 robust mask."""
  from focus_jax.eval import metrics

  image, lm = batch["image"], batch["landmarks"]
  coeffs = objectives.merge(nets.encoder, state["encoder"], train=False)(image)
  out = pipeline.render_batch(frozen["model"], coeffs, image.shape[1], image.shape[2])
  _, robust = losses.robust_photometric(image, out.image, out.mask)
  visible = objectives.merge(nets.unet, state["unet"], train=False)(out.image, image)[..., 0]
  err = metrics.landmark_error(lm, out.landmarks)
  scalars = {
    "landmark_nme": err["normalized"],
    "landmark_px": err["pixels"],
    "photometric_mae": metrics.photometric_error(image, out.image, batch["mask"] * out.mask),
  }
  for name, estimate in (("unet", visible), ("robust", robust)):
    scores = metrics.image_scores(batch["mask"], estimate, out.mask)
    for key in ("occluder_iou", "visible_accuracy", "false_alarm"):
      scalars[f"{name}_{key}"] = scores[key]
  # Scored images: valid (not padding), with a ground-truth mask; occluder scores only where the
  # ground truth has an occluder on the face, false alarms only where it has none.
  scored = batch["valid"] & batch["has_mask"]
  occluded = jnp.sum((1.0 - batch["mask"]) * out.mask, axis=(1, 2)) > 0
  grid = (image, out.image, visible, robust)
  return scalars, {"scored": scored, "occluded": occluded, "valid": batch["valid"]}, grid


def validate(config, workdir: str, mesh, nets, state, frozen) -> tuple[dict, np.ndarray]:
  """Mean validation scalars (``val/...``) on up to ``config.eval_batches`` batches of
  ``config.eval_split``, and an image grid ``(4 * h, k * w, 3)`` uint8 of the first batch."""
  step = _compiled_validation(nets, sharding.replicated(mesh))
  per_image, grid = {}, None
  batches = make_batches(config, workdir, mesh, config.eval_split, 0, train=False)
  for i, batch in enumerate(batches):
    if i == config.eval_batches:
      break
    scalars, masks, images = jax.device_get(step(state, batch, frozen))
    for key, value in scalars.items():
      if key.endswith("false_alarm"):
        keep = masks["scored"] & ~masks["occluded"]
      elif "_" in key and key.split("_")[0] in ("unet", "robust"):
        keep = masks["scored"] & masks["occluded"]
      else:
        keep = masks["valid"]
      per_image.setdefault(key, []).append(np.asarray(value)[keep])
    if grid is None:
      grid = _grid(images, count=min(4, len(images[0])))
  values = {
    f"val/{k}": float(np.mean(np.concatenate(v))) for k, v in per_image.items() if sum(map(len, v))
  }
  return values, grid


@functools.lru_cache(maxsize=4)
def _compiled_validation(nets, replicated):
  return jax.jit(functools.partial(_validation_step, nets), out_shardings=replicated)


def _grid(images, count: int) -> np.ndarray:
  """Rows input | render | UNet visibility | robust mask; one column per image."""
  rows = []
  for array in images:
    array = np.asarray(array[:count], np.float32)
    if array.ndim == 3:
      array = np.repeat(array[..., None], 3, axis=-1)
    rows.append(np.concatenate(list(array), axis=1))
  return (np.clip(np.concatenate(rows, axis=0), 0.0, 1.0) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# State, checkpoints and the loop.


def init_state(parts: dict, optim: ml_collections.ConfigDict) -> dict:
  """The train state pytree from the networks' parameter pytrees and ``config.optim``."""
  tx = make_optimizer(optim)
  return {
    "step": jnp.int32(0),
    "skipped": jnp.int32(0),  # steps whose non-finite update was not taken
    "encoder": parts["encoder"],
    "unet": parts["unet"],
    "opt": {name: tx.init(parts[name]["params"]) for name in ("encoder", "unet")},
  }


def frozen_inputs(config: ml_collections.ConfigDict, model, arcface_part) -> dict:
  """What the steps read but never update: the face model, ArcFace's weights and the per-point
  landmark weights (``config.loss.landmark_weights``: the model's or uniform)."""
  if config.loss.landmark_weights not in ("model", "uniform"):
    raise ValueError(
      f"config.loss.landmark_weights={config.loss.landmark_weights!r}: expected model or uniform"
    )
  weights = model.landmark_weights
  if config.loss.landmark_weights == "uniform":
    weights = jnp.ones_like(weights)
  return {"model": model, "arcface": arcface_part, "landmark_weights": weights}


def load_model(config):
  from focus_jax.facemodels import zoo

  return zoo.load_model(
    config.model.spec,
    n_shape=config.model.n_shape,
    n_exp=config.model.n_exp,
    n_color=config.model.n_color,
    crop=config.model.crop or None,
  )


class TrainingStopped(RuntimeError):
  """Training stopped on purpose with a message for the user (no traceback needed)."""


def check_init_from(workdir: str) -> str:
  """Validates ``config.init_from`` before anything is created; returns its checkpoint dir."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(workdir):
    raise ValueError(
      f"config.init_from={workdir}: no such directory (a workdir of an earlier stage)"
    )
  if checkpoint.latest_step(directory) is None:
    raise ValueError(
      f"config.init_from={workdir}: no checkpoint in {directory} (did that stage run and save?)"
    )
  return directory


def _init_from(state, workdir: str):
  """Networks (not optimiser state or step) from the latest checkpoint of an earlier stage."""
  directory = check_init_from(workdir)
  try:
    previous = checkpoint.restore_subtrees(
      directory, {"encoder": state["encoder"], "unet": state["unet"]}
    )
  except ValueError as e:
    raise ValueError(f"config.init_from={workdir}: {e}") from None
  log.info("Initialised the networks from %s", directory)
  return dict(state, encoder=previous["encoder"], unet=previous["unet"])


class _Signals:
  """SIGINT / SIGTERM while training: the first asks the loop to save and stop after the current
  step; a second one exits at once (Orbax commits checkpoints by rename, so nothing on disk is
  left half-written). Installed only in the main thread (signal handlers cannot live elsewhere).

  In a multi-process job every process must save the same step (a save is collective), so no
  process may stop on its own signal. SIGTERM there belongs to JAX's preemption service: its
  notifier tells the coordination service, and every process sees
  ``CheckpointManager.reached_preemption`` at the same step. A Python SIGTERM handler would
  replace that notifier, so none is installed; a first SIGINT is re-sent to this process as
  SIGTERM to take the same path. With the service off (``jax_enable_preemption_service``)
  signals keep their default effect, and a warning says so.
  """

  def __init__(self):
    self.received = None
    self._previous = {}
    self.multiprocess = jax.process_count() > 1

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      sys.stderr.write(f"\nSecond {signal.Signals(signum).name}: exiting now.\n")
      os._exit(128 + signum)
    self.received = signal.Signals(signum).name
    everywhere = " on every process" if self.multiprocess else ""
    sys.stderr.write(
      f"\n{self.received}: finishing the current step and saving a checkpoint{everywhere} "
      "(send it again to exit at once).\n"
    )
    if self.multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)

  def stop_requested(self, mngr, step: int) -> bool:
    """Whether the loop should save ``step`` and stop (every process agrees on it)."""
    if self.multiprocess:
      return mngr.reached_preemption(step)
    return self.received is not None

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    if not self.multiprocess:
      handled = (signal.SIGINT, signal.SIGTERM)
    elif jax.config.jax_enable_preemption_service:
      handled = (signal.SIGINT,)
    else:
      handled = ()
      log.warning(
        "jax_enable_preemption_service is off: SIGINT and SIGTERM stop this multi-process run "
        "without saving (at most config.checkpoint_every_steps steps are lost)"
      )
    for sig in handled:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs ``config.stage`` in ``workdir`` (resuming from its latest checkpoint); returns the
  last logged scalars (with ``"interrupted": signal name`` when a signal stopped the run).

  Raises:
    TrainingStopped: on a non-finite loss or update with ``config.nonfinite = "stop"``; the
      message names the step, the terms and the last good checkpoint.
    lock.WorkdirBusy: when another live process trains in ``workdir``.
  """
  if config.stage not in config_lib.STAGES:
    raise ValueError(f"config.stage={config.stage!r}: expected one of {config_lib.STAGES}")
  if config.nonfinite not in ("stop", "skip_batch"):
    raise ValueError(f"config.nonfinite={config.nonfinite!r}: expected 'stop' or 'skip_batch'")
  if config.init_from:
    check_init_from(config.init_from)
  elif (
    config.stage in ("em", "adapt")
    and checkpoint.latest_step(os.path.join(workdir, "checkpoints")) is None
  ):
    log.warning(
      "%s without config.init_from: the encoder and the UNet train from scratch (FOCUS starts EM "
      "from the UNet-pretraining workdir)",
      config.stage,
    )
  with lock.WorkdirLock(workdir, enabled=jax.process_index() == 0), _Signals() as signals:
    return _train(config, workdir, signals)


def _train(config: ml_collections.ConfigDict, workdir: str, signals: _Signals) -> dict:
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  replicated = sharding.replicated(mesh)
  model = load_model(config)
  nets, parts, arc_part, notes = build_networks(config, model.sizes)
  frozen = jax.device_put(frozen_inputs(config, model, arc_part), replicated)
  state = jax.jit(functools.partial(init_state, optim=config.optim), out_shardings=replicated)(
    parts
  )

  record = {"stage": config.stage, "config": config.to_dict(), "losses": notes}
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "config.json"), record)
  directory = os.path.join(workdir, "checkpoints")
  mngr = checkpoint.manager(directory, config.checkpoint_every_steps, config.keep_checkpoints)
  writer = metric_writer.MetricWriter(workdir)
  try:
    restored = checkpoint.restore(mngr, checkpoint.abstract(state))
    if restored is not None:
      state = restored[0]
      log.info("Resumed %s at step %d", workdir, int(state["step"]))
    elif config.init_from:
      state = _init_from(state, config.init_from)
    writer.write_text("arcface_losses", json.dumps(notes))
    return _loop(
      config, workdir, mesh, replicated, nets, state, frozen, mngr, writer, record, signals
    )
  finally:
    # Let an asynchronous save in flight commit (or fail) before the process may exit.
    mngr.wait_until_finished()
    mngr.close()
    writer.close()


def _loop(config, workdir, mesh, replicated, nets, state, frozen, mngr, writer, record, signals):
  start = int(state["step"])
  # All that make_steps reads: the compiled steps are cached on it (total_steps only matters to
  # the cosine schedule; runs that differ in nothing else share their programs).
  step_keys = ["stage", "seed", "optim", "em", "soft_area", "loss"]
  if config.optim.schedule == "cosine":
    step_keys.append("total_steps")
  step_config = json.dumps({k: config.to_dict()[k] for k in step_keys}, sort_keys=True)
  steps = compiled_steps(nets, step_config, replicated)
  batches = make_batches(config, workdir, mesh, config.data.split, start, train=True)
  if signals.received is not None and not signals.multiprocess:
    # Interrupted while setting up: nothing new to save, and compiling the step first would
    # keep the user waiting for minutes.
    log.warning("Stopped by %s before step %d; nothing to save.", signals.received, start + 1)
    return {"interrupted": signals.received, "step": start}
  health = _Health(fit_grace_steps=config.total_steps // 10)
  meter = _Meter(config, start)
  try:
    last, previous, t0 = {}, None, time.time()
    for step in range(start, config.total_steps):
      batch = next(batches)
      state, scalars = steps[stage_phase(config, step)](state, batch, frozen)
      # The previous step's scalars are read one step late, so the host never waits for the
      # device; a non-finite step is therefore noticed one step later, but its update was never
      # taken (see make_steps), so the state stays finite either way.
      if previous is not None:
        last = _after_step(config, writer, mngr, health, meter, *previous, t0) or last
      previous = (step + 1, scalars)
      done = step + 1 == config.total_steps
      stop = signals.stop_requested(mngr, step + 1)
      if config.eval_every_steps and ((step + 1) % config.eval_every_steps == 0 or done):
        values, grid = validate(config, workdir, mesh, nets, state, frozen)
        writer.write_scalars(step + 1, values)
        writer.write_image(step + 1, "val/grid", grid)
        log.info(
          "validation at step %d: %s",
          step + 1,
          ", ".join(f"{k[4:]}={v:.4g}" for k, v in sorted(values.items())),
        )
      if stop or mngr.should_save(step + 1) or done:
        # Before a save, this step's own verdict is needed: one device sync per checkpoint.
        last = _after_step(config, writer, mngr, health, meter, *previous, t0) or last
        previous = None
        checkpoint.save(mngr, step + 1, state, record, force=True)
      if stop:
        mngr.wait_until_finished()
        writer.flush()
        reason = signals.received or "preemption"
        log.warning(
          "Stopped by %s at step %d; checkpoint saved in %s. Run the same command to resume.",
          reason,
          step + 1,
          os.path.join(workdir, "checkpoints"),
        )
        return {**last, "interrupted": reason, "step": step + 1}
    if previous is not None:
      last = _after_step(config, writer, mngr, health, meter, *previous, t0) or last
    return last
  finally:
    meter.close()


class _Meter:
  """Throughput and ETA of a stage: one log line per logged step, and a progress bar on a
  terminal (none when stderr is not a TTY, e.g. in a batch job's log)."""

  def __init__(self, config, start: int):
    self.batch, self.total = config.batch_size, config.total_steps
    self.step, self.time, self._rate = start, time.time(), 0.0
    self.bar = None
    if sys.stderr.isatty() and jax.process_index() == 0:
      from tqdm import tqdm

      self.bar = tqdm(total=self.total, initial=start, desc=config.stage, unit="step")

  def rate(self, step: int) -> float:
    """Images per second since the previous logged step."""
    now = time.time()
    rate = (step - self.step) * self.batch / max(now - self.time, 1e-9)
    self.step, self.time = step, now
    self._rate = rate
    return rate

  def show(self, step: int, values: dict) -> None:
    eta = (self.total - step) * self.batch / max(self._rate, 1e-9)
    terms = ", ".join(
      f"{k}={v:.4g}" for k, v in values.items() if k not in ("seconds", "images_per_s", "finite")
    )
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix(loss=f"{values['loss']:.4g}", refresh=False)
    log.info(
      "step %d/%d: %s; %.1f images/s, ETA %s",
      step,
      self.total,
      terms,
      self._rate,
      time.strftime("%H:%M:%S", time.gmtime(eta)),
    )

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class _Health:
  """Warnings on symptoms that the method is failing (checked at logged steps).

  Args:
    fit_grace_steps: steps before a poor fit counts: every stage starts from a poor fit (the
      README's stage 1 had 23% face inliers at step 25, 63% at the end; a second seed warned at
      step 75 and then reached 44%).
  """

  PATIENCE = 3  # consecutive logged steps

  def __init__(self, fit_grace_steps: int = 0):
    self.fit_grace_steps = fit_grace_steps
    self.collapsed = 0
    self.not_fitting = 0

  def check(self, step: int, values: dict) -> None:
    visible = values.get("visible_fraction")
    if visible is not None:
      self.collapsed = self.collapsed + 1 if not 0.05 <= visible <= 0.99 else 0
      if self.collapsed == self.PATIENCE:
        log.warning(
          "step %d: the UNet mask has collapsed (visible fraction %.3f for %d logged steps): "
          "all-%s masks; lower the UNet learning rate or raise loss.em_unet.area",
          step,
          visible,
          self.PATIENCE,
          "visible" if visible > 0.99 else "occluded",
        )
    inliers = values.get("face_inlier_fraction")
    if inliers is not None and step > self.fit_grace_steps:
      self.not_fitting = self.not_fitting + 1 if inliers < 0.2 else 0
      if self.not_fitting == self.PATIENCE:
        log.warning(
          "step %d: only %.0f%% of the rendered face fits the image (robust inliers below 20%% "
          "for %d logged steps): the reconstruction is not fitting",
          step,
          100 * inliers,
          self.PATIENCE,
        )


def _after_step(config, writer, mngr, health, meter, step: int, scalars: dict, t0: float):
  """Checks a finished step and logs it when due; returns its scalars when logged."""
  if not bool(scalars["finite"]):
    values = jax.device_get(scalars)
    bad = sorted(k for k, v in values.items() if np.ndim(v) == 0 and not np.isfinite(v))
    what = f"loss terms {', '.join(bad)}" if bad else "the updated parameters"
    if config.nonfinite == "stop":
      mngr.wait_until_finished()
      good = mngr.latest_step()
      where = (
        f"the last good checkpoint is {os.path.join(mngr.directory, str(good))} (step {good})"
        if good is not None
        else "no checkpoint was written yet"
      )
      raise TrainingStopped(
        f"non-finite {what} at step {step}; the update was not applied and nothing non-finite "
        f"was saved; {where}. Lower the learning rates (config.optim.*) or set "
        "config.nonfinite=skip_batch to skip such batches."
      )
    log.warning(
      "step %d: non-finite %s; batch skipped (%d so far)", step, what, int(values["skipped"])
    )
  if step % config.log_every_steps and step != config.total_steps:
    return None
  values = {k: float(v) for k, v in jax.device_get(scalars).items()}
  values["seconds"] = time.time() - t0
  values["images_per_s"] = meter.rate(step)
  writer.write_scalars(step, values)
  health.check(step, values)
  meter.show(step, values)
  return values


def main(argv) -> None:
  del argv
  quiet_third_party(FLAGS.verbosity if FLAGS["verbosity"].present else None)
  if FLAGS.distributed:
    # Without arguments JAX detects TPU pods, SLURM and Open MPI; elsewhere pass the three flags.
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator or None,
      num_processes=FLAGS.num_processes or None,
      process_id=FLAGS.process_id if FLAGS.num_processes else None,
    )
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  workdir = FLAGS.workdir or os.path.join("runs", FLAGS.config.stage)
  try:
    last = train_and_evaluate(FLAGS.config, workdir)
  except (TrainingStopped, lock.WorkdirBusy, ValueError) as e:
    log.error("%s", e)
    sys.exit(1)
  if "interrupted" in last:
    sys.exit(130 if last["interrupted"] == "SIGINT" else 143)


def quiet_third_party(verbosity: int | None) -> None:
  """Orbax and absl log every save at INFO, JAX every backend it does not find: off unless
  ``--verbosity`` asks for them."""
  quiet = verbosity is None or verbosity < 1
  # Orbax logs through absl, warnings included (e.g. about every read-only manager it opens).
  for name in ("absl", "orbax", "jax._src.distributed", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.DEBUG)


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
