"""Per-image analysis-by-synthesis: optimise one face's coefficients against its photo.

    python -m focus_jax.fit --image PHOTO [--workdir W] [--steps N] --out DIR [--now]

FOCUS's EM idea in its optimisation form, for one image: the coefficients (shape, expression,
color, pose, light) are optimised with Adam on

    loss = photometric * masked_reconstruction(I, R, soft coverage * M)
         + landmarks * landmark_loss(lm, projected lm) + stat_reg * statistical_regularizer

(``focus_jax.losses``), alternating with the occlusion mask ``M``: every ``mask_every`` steps it
is recomputed from the current render and held fixed (no gradient) until the next update. ``M``
is the trained UNet's (run at its training side, resized) when ``--workdir`` is given, else the
robust-threshold inlier mask of stage 1 (``|I - R|^2 < (3 sigma)^2``). The start is the
encoder's prediction with a workdir, else the mean face with its pose fitted to the landmarks
(``pose_steps`` landmark-only steps first). Everything runs in one compiled program (nested
``lax.scan``), at ``--image_size`` (224 by default: the camera scales with the image, so the
coefficients of any side describe the same face in the aligned crop).

The photo is aligned like training (Deep3DFaceRecon, 68 landmarks from dlib unless given);
``--aligned`` takes an image that already is the aligned crop (e.g. the quick start's synthetic
faces) with its landmarks from ``--landmarks`` (a text or ``.npy`` file of 68 rows ``x y``).
Outputs are those of ``python -m focus_jax.export`` (``fitted.npz``, ``meshes/``,
``overlays/``, ``now/`` with ``--now``) plus ``fit.json``: the loss curve and the landmark
(pixels, aligned 224 frame) and photometric (mean absolute RGB error, 0-255, inside the render
and the mask) errors of the start and of the fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from focus_jax import losses
from focus_jax.render import coefficients, pipeline
from focus_jax.render import morphable_model as mm


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Settings of :func:`fit_image`.

  Attributes:
    steps: optimisation steps (a multiple of ``mask_every``).
    mask_every: steps between occlusion-mask updates.
    pose_steps: landmark-only pose steps before (without a workdir's encoder).
    image_size: side of the fit's renders (the aligned crop resized).
    photometric, landmarks, stat_reg: loss weights (landmarks in pixels^2 at ``image_size``).
    step_sizes: Adam step per group (``shape, expression, color, light``; the pose's
      ``rotation`` in rad and ``translation``, ``depth`` in mm), decayed by a cosine to 10%.
    original_shading: shade as the original FOCUS code (``pipeline.render``); :func:`fit_image`
      takes it from its reconstructor.
  """

  steps: int = 120
  mask_every: int = 20
  pose_steps: int = 60
  image_size: int = 224
  photometric: float = 1.0
  landmarks: float = 2e-3
  stat_reg: float = 0.05
  step_sizes: tuple = (
    ("shape", 0.03),
    ("expression", 0.03),
    ("color", 0.03),
    ("light", 0.02),
    ("rotation", 0.004),
    ("translation", 0.4),
    ("depth", 1.5),
  )
  original_shading: bool = False


def _step_tree(sizes: dict, step_sizes: dict) -> coefficients.Coefficients:
  """Per-coefficient Adam step sizes as a :class:`Coefficients` record."""
  s = step_sizes
  pose = np.array([s["rotation"]] * 3 + [s["translation"]] * 2 + [s["depth"]], np.float32)
  return coefficients.Coefficients(
    shape=np.full(sizes["shape"], s["shape"], np.float32),
    expression=np.full(sizes["expression"], s["expression"], np.float32),
    color=np.full(sizes["color"], s["color"], np.float32),
    pose=pose,
    light=np.full(coefficients.LIGHT_SIZE, s["light"], np.float32),
  )


def _optimizer(steps: jax.Array, total: int) -> optax.GradientTransformation:
  """Adam with per-coefficient step sizes ``steps`` (a Coefficients tree) and a cosine decay."""
  schedule = optax.cosine_decay_schedule(1.0, max(total, 1), alpha=0.1)
  return optax.chain(
    optax.scale_by_adam(),
    optax.scale_by_schedule(schedule),
    optax.stateless(lambda updates, params: jax.tree.map(lambda u, s: -s * u, updates, steps)),
  )


def _batched(c: coefficients.Coefficients) -> coefficients.Coefficients:
  return jax.tree.map(lambda x: x[None], c)


@functools.partial(jax.jit, static_argnames=("config", "unet", "unet_size", "fit_pose_first"))
def _fit(
  model: mm.MorphableModel,
  image: jax.Array,
  landmarks: jax.Array,
  init: coefficients.Coefficients,
  unet_part,
  steps: coefficients.Coefficients,
  *,
  config: FitConfig,
  unet,
  unet_size: int,
  fit_pose_first: bool,
):
  """The compiled fit of one image (module docstring).

  Args:
    model: the morphable model.
    image: ``(1, H, H, 3)`` float32 aligned image in [0, 1].
    landmarks: ``(1, 68, 2)`` float32 pixel landmarks of ``image``.
    init: unbatched starting coefficients.
    unet_part: the UNet's parameters, or None (robust mask).
    steps: per-coefficient step sizes.
    config: static settings.
    unet: static UNet graph definition, or None.
    unet_size: side the UNet was trained at.
    fit_pose_first: run the landmark-only pose steps first.

  Returns:
    ``(coefficients, losses (steps,), mask (1, H, H))``.
  """
  from focus_jax import objectives

  size = image.shape[1]

  def render(c):
    return pipeline.render_batch(
      model, _batched(c), size, size, original_shading=config.original_shading
    )

  def mask_of(c):
    out = render(c)
    if unet is None:
      _, inliers = losses.robust_photometric(image, out.image, jnp.ones_like(out.mask))
      return inliers
    small = (1, unet_size, unet_size, 3)
    net = objectives.merge(unet, unet_part, train=False)
    visible = net(
      jax.image.resize(out.image, small, "linear"), jax.image.resize(image, small, "linear")
    )
    return jax.image.resize(visible, (1, size, size, 1), "linear")[..., 0]

  def landmark_term(c):
    projected = render(c).landmarks
    return losses.landmark_loss(landmarks, projected, jnp.ones(68, jnp.float32))

  def loss_fn(c, mask):
    out = render(c)
    photo = losses.masked_reconstruction(image, out.image, out.soft_mask * mask)
    lm = losses.landmark_loss(landmarks, out.landmarks, jnp.ones(68, jnp.float32))
    reg = losses.statistical_regularizer(c.shape[None], c.expression[None], c.color[None])
    return config.photometric * photo + config.landmarks * lm + config.stat_reg * reg

  c = init
  if fit_pose_first:
    # Landmarks only, pose only: the other groups' steps are zero.
    pose_only = jax.tree.map(jnp.zeros_like, steps)
    pose_only = dataclasses.replace(pose_only, pose=steps.pose)
    tx = _optimizer(pose_only, config.pose_steps)

    def pose_step(carry, _):
      c, state = carry
      grads = jax.grad(landmark_term)(c)
      updates, state = tx.update(grads, state, c)
      return (optax.apply_updates(c, updates), state), None

    (c, _), _ = jax.lax.scan(pose_step, (c, tx.init(c)), None, length=config.pose_steps)

  tx = _optimizer(steps, config.steps)

  def one_round(carry, _):
    c, state = carry
    # The E step: the occlusion mask of the current fit, then held fixed (no gradient).
    mask = jax.lax.stop_gradient(mask_of(c))

    def step(carry, _):
      c, state = carry
      loss, grads = jax.value_and_grad(loss_fn)(c, mask)
      updates, state = tx.update(grads, state, c)
      return (optax.apply_updates(c, updates), state), loss

    return jax.lax.scan(step, (c, state), None, length=config.mask_every)

  rounds = config.steps // config.mask_every
  (c, _), history = jax.lax.scan(one_round, (c, tx.init(c)), None, length=rounds)
  return c, history.reshape(-1), mask_of(c)


@functools.partial(jax.jit, static_argnames=("unet", "unet_size", "original_shading"))
def _finish(model, image, coeffs, unet_part, *, unet, unet_size, original_shading):
  """The :class:`~focus_jax.reconstruct.Reconstruction` of fitted coefficients ``(1, ...)``."""
  from focus_jax import objectives, reconstruct

  size = image.shape[1]
  out = pipeline.render_batch(model, coeffs, size, size, original_shading=original_shading)
  if unet is None:
    _, visible = losses.robust_photometric(image, out.image, out.mask)
  else:
    small = (1, unet_size, unet_size, 3)
    net = objectives.merge(unet, unet_part, train=False)
    visible = net(
      jax.image.resize(out.image, small, "linear"), jax.image.resize(image, small, "linear")
    )
    visible = jax.image.resize(visible, (1, size, size, 1), "linear")[..., 0]
  return reconstruct.assemble(model, coeffs, out, visible)


def _errors(result, image: np.ndarray, landmarks: np.ndarray) -> dict:
  """Landmark error (mean px) and photometric MAE (0-255 inside coverage * visible mask)."""
  lm = float(np.mean(np.linalg.norm(result.landmarks[0] - landmarks, axis=-1)))
  region = result.coverage[0] * (result.visible_mask[0] > 0.5)
  diff = np.abs(result.render[0] - image).mean(-1)
  mae = float(255.0 * np.sum(diff * region) / max(np.sum(region), 1.0))
  return {"landmark_px": lm, "photometric_mae": mae}


@dataclasses.dataclass(frozen=True)
class FitResult:
  """What :func:`fit_image` returns.

  Attributes:
    result: the fit's ``Reconstruction`` (NumPy, batch of 1, ``image_size`` frame).
    start: the starting point's ``Reconstruction`` (same frame).
    losses: ``(steps,)`` loss per step.
    errors: ``{"start": {...}, "fit": {...}}`` landmark and photometric errors.
  """

  result: object
  start: object
  losses: np.ndarray
  errors: dict


def fit_image(
  image: np.ndarray,
  landmarks: np.ndarray,
  *,
  recon=None,
  model: str | mm.MorphableModel = "embedded",
  config: FitConfig | None = None,
) -> FitResult:
  """Fits one aligned image (module docstring).

  Args:
    image: ``(H, H, 3)`` aligned image, uint8 or float in [0, 1] (resized to
      ``config.image_size``).
    landmarks: ``(68, 2)`` pixel landmarks of ``image``.
    recon: a ``reconstruct.Reconstructor`` (its encoder starts the fit, its UNet gives the
      masks), or None (mean face, landmark pose, robust masks).
    model: the face model without ``recon``.
    config: settings (default :class:`FitConfig`).

  Returns:
    A :class:`FitResult`.
  """
  from focus_jax import reconstruct

  config = config or FitConfig()
  if config.steps % config.mask_every:
    raise ValueError(f"steps {config.steps} must be a multiple of mask_every {config.mask_every}")
  size = config.image_size
  image = np.asarray(image)
  landmarks = reconstruct.to_frame(landmarks, image.shape[0], size)
  image = reconstruct.resize_images(image[None], size)
  if recon is not None:
    face_model = recon.model
    start = recon(reconstruct.resize_images(image, recon.image_size))
    init = jax.tree.map(lambda x: jnp.asarray(x[0]), start.coefficients)
    unet, unet_part = recon.unet or (None, None)
    unet_size = recon.image_size
    config = dataclasses.replace(config, original_shading=recon.original_shading)
  else:
    face_model = reconstruct._load_model(model)
    init = jax.tree.map(jnp.asarray, coefficients.Coefficients.zeros(face_model.sizes))
    unet, unet_part, unet_size = None, None, 0
  steps = _step_tree(face_model.sizes, dict(config.step_sizes))
  image_j, lm_j = jnp.asarray(image), jnp.asarray(landmarks[None])
  fitted, history, _ = _fit(
    face_model,
    image_j,
    lm_j,
    init,
    unet_part,
    steps,
    config=config,
    unet=unet,
    unet_size=unet_size,
    fit_pose_first=recon is None,
  )

  def finish(c):
    out = _finish(
      face_model,
      image_j,
      _batched(c),
      unet_part,
      unet=unet,
      unet_size=unet_size,
      original_shading=config.original_shading,
    )
    return jax.device_get(out)

  result, begin = finish(fitted), finish(init)
  errors = {
    "start": _errors(begin, image[0], landmarks),
    "fit": _errors(result, image[0], landmarks),
  }
  return FitResult(result, begin, np.asarray(history), errors)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m focus_jax.fit", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--image", required=True, help="photo (or aligned crop with --aligned)")
  parser.add_argument("--workdir", default="", help="trained workdir: start and masks from it")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--steps", type=int, default=FitConfig.steps, help="optimisation steps")
  parser.add_argument("--mask_every", type=int, default=FitConfig.mask_every, help="mask period")
  parser.add_argument("--image_size", type=int, default=FitConfig.image_size, help="fit side")
  parser.add_argument("--aligned", action="store_true", help="--image is the aligned crop")
  parser.add_argument("--landmarks", default="", help="68 rows 'x y' (.txt or .npy) of --image")
  parser.add_argument("--model", default="embedded", help="face model without --workdir")
  parser.add_argument("--now", action="store_true", help="also write the NoW layout")
  args = parser.parse_args(argv)
  from focus_jax import export, files, reconstruct, train

  train.quiet_third_party(None)
  config = dataclasses.replace(
    FitConfig(), steps=args.steps, mask_every=args.mask_every, image_size=args.image_size
  )
  try:
    landmarks = None
    if args.landmarks:
      load = np.load if args.landmarks.endswith(".npy") else np.loadtxt
      landmarks = np.asarray(load(args.landmarks), np.float32).reshape(68, 2)
    elif args.aligned:
      raise ValueError("--aligned needs --landmarks (the crop's 68 landmarks)")
    item = export._Item(os.path.basename(args.image), args.image, landmarks, args.aligned)
    detector = None
    if landmarks is None:
      from focus_jax import prepare

      detector = prepare.LandmarkDetector()
    data = export._load(item, config.image_size, detector)
    recon = reconstruct.Reconstructor.from_workdir(args.workdir) if args.workdir else None
    aligned_lm = reconstruct.to_frame(data["input_landmarks"], 224, config.image_size)
    fitted = fit_image(data["image"], aligned_lm, recon=recon, model=args.model, config=config)
  except export.USER_ERRORS as e:
    return export.report_error(e)
  face_model = recon.model if recon else reconstruct._load_model(args.model)
  rows = export.write_batch(args.out, face_model, [(item, data)], fitted.result, now=args.now)
  provenance = {
    "model": recon.model_spec if recon else args.model,
    "source": f"fit of {args.image}" + (f" from {recon.source}" if recon else ""),
    "mask_source": recon.mask_source if recon else "robust",
  }
  export.write_npz(args.out, face_model, config.image_size, rows, provenance)
  record = {
    "image": args.image,
    "steps": config.steps,
    "losses": [float(x) for x in fitted.losses],
    "errors": fitted.errors,
  }
  files.write_json(os.path.join(args.out, "fit.json"), record)
  start, end = fitted.errors["start"], fitted.errors["fit"]
  print(
    f"landmark error {start['landmark_px']:.2f} -> {end['landmark_px']:.2f} px, photometric "
    f"{start['photometric_mae']:.2f} -> {end['photometric_mae']:.2f} (0-255); wrote {args.out}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
