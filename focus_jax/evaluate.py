"""Evaluation of trained FOCUS stages: ``python -m focus_jax.evaluate --workdir W --out DIR``.

``W`` is one stage workdir (it holds ``config.json`` and ``checkpoints/``) or a chain workdir
whose ``pretrain/``, ``unet_pretrain/``, ``em/`` and (optional) ``adapt/`` subdirectories are
stage workdirs; the stages present are evaluated on the same images (``--split`` of ``--data``,
by default the configured ``data.image_root`` of the most trained stage, else its synthetic
root ``<stage workdir>/synthetic``).

Methods. Masks (1 = visible), each scored inside its own render's hard mask:

- ``all_visible``: every pixel visible, inside the reference render (EM, else adaptation, else
  stage 1);
- ``stage1``: the stage-1 render and its robust-threshold inlier mask (the pseudo label of
  SPEC §7 step 2). The stage-1 encoder is ``pretrain/``'s, else ``unet_pretrain/``'s frozen copy;
- ``unet_pretrain``: its UNet on the stage-1 render;
- ``em``: the EM encoder's render and the EM UNet;
- ``adapt``: test-time adaptation (SPEC §7 step 5: EM continued on the unlabelled images of the
  evaluated split), its encoder's render and its UNet. It trained on these very images (their
  pixels and given landmarks, never their masks), so it measures what adaptation recovers, not
  generalisation.
- ``gt_render`` (synthetic roots, whose ``groundtruth.npz`` holds every coefficient): the same
  robust-threshold inlier mask as ``stage1``, on the render of the ground-truth coefficients by
  the generator's model at the evaluated size. It is a ceiling, not a method: what the
  per-pixel threshold gives a perfect reconstruction, so the gap between ``stage1`` and it is
  reconstruction error, and a UNet above it segments better than any threshold on residuals.

Landmarks: ``stage1``, ``em`` and ``mean_face`` (zero shape and expression at the reference
render's predicted pose); not ``adapt``, whose landmark term fitted the given landmarks of these
images. Photometric: ``stage1``, ``em`` and ``adapt``.

Metrics (per image, then over images; ``focus_jax.eval.metrics``):

- masks: the original's visible-class accuracy, precision, recall, F1 from clamped areas
  (SPEC §9) on images with a ground-truth mask; occluder-class precision, recall, F1, IoU on
  the images whose ground truth has an occluder on the face; ``false_alarm`` (fraction of the
  render marked occluded) on the others, the unoccluded images. An image is unoccluded when its
  ``groundtruth.npz`` row says ``occluded_fraction == 0``; without one, when its mask marks
  every pixel of the reference render visible. UNet masks are scored as soft areas, as the
  original scores them.
- landmarks: per-image mean 68-point error; ``px_median``, and the NME (divided by the
  ground-truth outer-eye-corner distance) ``nme_median``, ``nme_mean``.
- photometric: ``mae``, the mean absolute RGB error in grey levels (0-255) inside ground-truth
  visible skin within the render (images with a mask).
- pose (with ``groundtruth.npz``): the errors of the predicted pitch, yaw and roll in degrees
  (``stage1``, ``em``), medians over images, and each angle's gain, the slope of the prediction
  on the truth (below 1: the encoder under-rotates and bends the shape instead).
- shape_3d (with ``groundtruth.npz``): the NoW scan-to-mesh error (``eval/now.py``) of the
  predicted neutral mesh (predicted shape, zero expression) against the ground-truth neutral
  mesh (ground-truth shape, zero expression, rebuilt with the generator's model named in
  ``synthetic.json``), aligned on the 7 NoW landmarks: ``prediction`` (the reference render's
  encoder) and ``mean_face`` (zero shape); distances of all images pooled (NoW style), in mm.
- masks by occluder (synthetic roots whose ``groundtruth.npz`` names the occluder families drawn
  over each image): the occluder-class scores of each mask method per family (hand, hair,
  sunglasses, ...), over the occluded images that family was drawn on (an image with two
  families counts in both). They show which kinds of occluder a method finds, e.g. thin hair
  strands against large solid ones.
- forgiven (``em``, ``adapt`` and ``gt_render`` on occluded images, per image and per family):
  the share of occluder pixels, away from the occluder's edge, that the EM UNet objective with
  the most trained stage's weights (``config.loss.em_unet``, ``neighbour_window``) prefers to
  call visible on that render (:func:`metrics.forgiven_share`): the occluders that a residual
  criterion cannot see however long the UNet trains. On ``gt_render`` it is a property of the
  occluders and the objective alone.

Outputs in ``--out``: ``metrics.json`` (:func:`evaluate` documents its keys), ``per_image.csv``
(one row per image and method, empty cells where a metric is undefined; the last column names
the image's occluder families, ``+``-joined, where known) and ``report.html``
with ``images/*.png`` (``focus_jax.eval.report``). Runs in one process; batches are sharded
over its devices like training batches.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import logging
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from focus_jax import files, losses, objectives, sharding, train
from focus_jax import workdir as workdir_lib
from focus_jax.data import synthetic
from focus_jax.eval import metrics, now, report
from focus_jax.render import camera, coefficients, pipeline
from focus_jax.render import morphable_model as mm

log = logging.getLogger(__name__)

MASK_METHODS = ("all_visible", "stage1", "unet_pretrain", "em", "adapt", "gt_render")
LANDMARK_METHODS = ("stage1", "em", "mean_face")
PHOTOMETRIC_METHODS = ("stage1", "em", "adapt")
METHODS = ("all_visible", "stage1", "unet_pretrain", "em", "adapt", "gt_render", "mean_face")
# Ground-truth keys that make the ground-truth render (the coefficients of the generator).
GT_COEFFICIENTS = ("shape", "expression", "color", "pose", "light")
# Reconstructions, most trained last; the reference render is the first of REFERENCE present.
RECONSTRUCTIONS = ("stage1", "em", "adapt")
REFERENCE = ("em", "adapt", "stage1")
# Stages that trained an encoder and a UNet together (EM, and EM continued on the test images).
EM_METHODS = ("em", "adapt")
VISIBLE_KEYS = ("visible_accuracy", "visible_precision", "visible_recall", "visible_f1")
OCCLUDER_KEYS = ("occluder_iou", "occluder_precision", "occluder_recall", "occluder_f1")
MASK_KEYS = (*OCCLUDER_KEYS, *VISIBLE_KEYS, "false_alarm")
# Per-image scores defined on occluded images only: the occluder class, and the forgiven share
# (of the methods whose render the EM objective judges).
OCCLUDED_KEYS = (*OCCLUDER_KEYS, "forgiven")
# Columns of per_image.csv after "image" and "method".
COLUMNS = (
  "unoccluded",
  *MASK_KEYS,
  "forgiven",
  "landmark_px",
  "landmark_nme",
  "photometric_mae",
  *(f"{axis}_err_deg" for axis in metrics.ROTATIONS),
  "s2m_median_mm",
  "s2m_mean_mm",
)
WORST = 8


# --------------------------------------------------------------------------------------------
# Stages.


@dataclasses.dataclass(frozen=True)
class Stage:
  """A trained stage restored from its workdir.

  Attributes:
    name: ``config.stage`` of the run (``pretrain``, ``unet_pretrain``, ``em`` or ``adapt``).
    workdir: its directory.
    config: its configuration (``config.json``).
    nets: the graph definitions of its networks.
    parts: ``{'encoder', 'unet'}`` parameter pytrees from its latest checkpoint.
    step: the checkpoint's step.
  """

  name: str
  workdir: str
  config: ml_collections.ConfigDict
  nets: objectives.Networks
  parts: dict
  step: int


def load_stage(workdir: str) -> Stage:
  """Rebuilds the networks of a stage workdir from its ``config.json`` and restores them."""
  name, config = workdir_lib.read_record(workdir)
  sizes = train.load_model(config).sizes
  nets, parts, step = train.restore_networks(workdir, config, sizes)
  return Stage(name, workdir, config, nets, parts, step)


def _roles(stages: dict[str, Stage]) -> dict[str, tuple[Stage, str]]:
  """Which stage and network play each role: ``stage1``, ``unet_pretrain``, ``em``,
  ``em_unet``, ``adapt``, ``adapt_unet`` -> ``(stage, 'encoder' | 'unet')``."""
  roles = {}
  # unet_pretrain freezes the stage-1 encoder it starts from, so its copy is stage 1's.
  for name in ("unet_pretrain", "pretrain"):
    if name in stages:
      roles["stage1"] = (stages[name], "encoder")
  if "unet_pretrain" in stages:
    roles["unet_pretrain"] = (stages["unet_pretrain"], "unet")
  for name in EM_METHODS:
    if name in stages:
      roles[name] = (stages[name], "encoder")
      roles[f"{name}_unet"] = (stages[name], "unet")
  return roles


# --------------------------------------------------------------------------------------------
# Jitted pieces (graph definitions are static and compare equal across stages of one
# architecture, so every stage reuses one compiled encoder and one compiled UNet).


def _rendered(model: mm.MorphableModel, coeffs, image: jax.Array) -> dict:
  """The render of ``coeffs`` at the size of ``image (B, H, W, 3)`` and its robust inlier mask."""
  out = pipeline.render_batch(model, coeffs, image.shape[1], image.shape[2])
  _, inliers = losses.robust_photometric(image, out.image, out.mask)
  return {"render": out.image, "mask": out.mask, "landmarks": out.landmarks, "inliers": inliers}


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(encoder, part, model: mm.MorphableModel, image: jax.Array) -> dict:
  coeffs = objectives.merge(encoder, part, train=False)(image)
  return {"shape": coeffs.shape, "pose": coeffs.pose, **_rendered(model, coeffs, image)}


# The ``gt_render`` method: the ground-truth coefficients' render and its robust inlier mask.
_ground_truth_render = jax.jit(_rendered)


@functools.partial(jax.jit, static_argnums=0)
def _segment(unet, part, render: jax.Array, image: jax.Array) -> jax.Array:
  return objectives.merge(unet, part, train=False)(render, image)[..., 0]


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _mean_face_landmarks(model: mm.MorphableModel, pose: jax.Array, height: int, width: int):
  """Landmarks ``(B, 68, 2)`` of the model's mean face (zero shape and expression) at ``pose
  (B, 6)``."""
  sizes = model.sizes
  points = mm.vertices(model, jnp.zeros(sizes["shape"]), jnp.zeros(sizes["expression"]))
  points = points[model.landmarks]

  def one(p):
    return camera.project(camera.camera_from_pose(p, height, width), points)[:, :2]

  return jax.vmap(one)(pose)


@jax.jit
def _neutral(model: mm.MorphableModel, shape: jax.Array) -> jax.Array:
  """Neutral-expression meshes ``(N, V, 3)`` mm of shape coefficients ``(N, K_shape)``."""
  zero = jnp.zeros(model.sizes["expression"], jnp.float32)
  return jax.vmap(lambda s: mm.vertices(model, s, zero))(shape)


_image_scores = jax.jit(metrics.image_scores)
_landmark_error = jax.jit(metrics.landmark_error)
_photometric_error = jax.jit(metrics.photometric_error)
_forgiven_share = jax.jit(metrics.forgiven_share, static_argnums=(4, 5, 6))


def _run_batch(
  nets: dict, parts: dict, model, batch: dict, gt_model=None, blind_spot=None
) -> tuple[dict, dict, dict]:
  """Every method on one batch.

  Args:
    nets: role -> graph definition (roles of :func:`_roles`).
    parts: role -> parameter pytree.
    model: the morphable model.
    batch: ``image (B, H, W, 3)``, ``mask (B, H, W)``, ``landmarks (B, 68, 2)``, and the
      ``gt/<coefficient>`` arrays when ``gt_model`` is given.
    gt_model: the generator's morphable model: adds the ``gt_render`` ceiling; None: without.
    blind_spot: ``(area weight, neighbour weight, window)`` of the EM UNet objective: adds the
      ``forgiven`` share (:func:`metrics.forgiven_share`) of the EM renders and ``gt_render``.

  Returns:
    ``(per_image, views, extra)``: method -> metric -> ``(B,)``; method -> ``render, mask,
    visible, landmarks`` arrays of its reconstruction; ``clear (B,)`` (the ground truth marks
    the whole reference render visible), ``shape/<method> (B, K_shape)`` and ``pose/<method>
    (B, 6)`` predictions.
  """
  image, gt, lm = batch["image"], batch["mask"], batch["landmarks"]
  recon = {m: _reconstruct(nets[m], parts[m], model, image) for m in RECONSTRUCTIONS if m in nets}
  reference = recon[next(m for m in REFERENCE if m in recon)]
  estimates = {"all_visible": (jnp.ones_like(gt), reference)}
  if "stage1" in recon:
    estimates["stage1"] = (recon["stage1"]["inliers"], recon["stage1"])
  if "unet_pretrain" in nets:
    render = recon["stage1"]["render"]
    visible = _segment(nets["unet_pretrain"], parts["unet_pretrain"], render, image)
    estimates["unet_pretrain"] = (visible, recon["stage1"])
  for m in EM_METHODS:
    if f"{m}_unet" in nets:
      visible = _segment(nets[f"{m}_unet"], parts[f"{m}_unet"], recon[m]["render"], image)
      estimates[m] = (visible, recon[m])
  if gt_model is not None:
    truth_coeffs = coefficients.Coefficients(**{k: batch[f"gt/{k}"] for k in GT_COEFFICIENTS})
    truth = _ground_truth_render(gt_model, truth_coeffs, image)
    estimates["gt_render"] = (truth["inliers"], truth)
  per_image, views = {}, {}
  for method, (visible, rec) in estimates.items():
    per_image[method] = dict(_image_scores(gt, visible, rec["mask"]))
    if blind_spot is not None and method in (*EM_METHODS, "gt_render"):
      per_image[method]["forgiven"] = _forgiven_share(
        image, rec["render"], rec["mask"], gt, *blind_spot
      )
    views[method] = {k: rec[k] for k in ("render", "mask", "landmarks")} | {"visible": visible}
  for method, rec in recon.items():
    per_image.setdefault(method, {})
    if method in LANDMARK_METHODS:
      err = _landmark_error(lm, rec["landmarks"])
      per_image[method].update(landmark_px=err["pixels"], landmark_nme=err["normalized"])
    per_image[method]["photometric_mae"] = _photometric_error(
      image, rec["render"], gt * rec["mask"]
    )
  mean_lm = _mean_face_landmarks(model, reference["pose"], image.shape[1], image.shape[2])
  err = _landmark_error(lm, mean_lm)
  per_image["mean_face"] = {"landmark_px": err["pixels"], "landmark_nme": err["normalized"]}
  extra = {"clear": jnp.sum((1.0 - gt) * reference["mask"], axis=(1, 2)) == 0}
  extra |= {f"shape/{m}": rec["shape"] for m, rec in recon.items()}
  extra |= {f"pose/{m}": rec["pose"] for m, rec in recon.items()}
  return per_image, views, extra


# --------------------------------------------------------------------------------------------
# Evaluation.


def _batches(source, batch_size: int, mesh, image_size: int):
  from focus_jax.data import pipeline as input_pipeline

  # At the training resolution: the networks were trained on images of that size.
  dataset = input_pipeline.make_dataset(source, batch_size, train=False, image_size=image_size)
  yield from input_pipeline.global_batches(dataset, mesh)


def _groundtruth_model(root: str, model: mm.MorphableModel, n_shape: int):
  """The model that generated ``root``'s ground truth (``synthetic.json``), else ``model``;
  None when its shape basis does not match the ground-truth coefficients."""
  gt_model, spec = model, None
  path = os.path.join(root, "synthetic.json")
  if os.path.isfile(path):
    with open(path) as f:
      spec = json.load(f).get("model")
  if spec and not spec.startswith("<"):  # "<MorphableModel>": generated from an object
    from focus_jax.facemodels import zoo

    gt_model = zoo.load_model(spec)
  if gt_model.sizes["shape"] != n_shape:
    log.warning(
      "%s: ground-truth shape has %d coefficients, the model %d: no 3D evaluation",
      root,
      n_shape,
      gt_model.sizes["shape"],
    )
    return None
  return gt_model


def _shape_errors(model, gt_model, gt_shape, predictions: dict, processes: int) -> dict:
  """NoW errors ``{method: [distances (n_i,) per image]}`` of neutral meshes vs ground truth."""
  gt_mesh = np.asarray(_neutral(gt_model, jnp.asarray(gt_shape)), np.float64)
  gt_idx, idx = np.asarray(gt_model.now_landmarks), np.asarray(model.now_landmarks)
  triangles = np.asarray(model.triangles)
  out = {}
  for method, shape in predictions.items():
    meshes = np.asarray(_neutral(model, jnp.asarray(shape)), np.float64)
    jobs = [(g, g[gt_idx], p, triangles, p[idx]) for g, p in zip(gt_mesh, meshes, strict=True)]
    out[method] = [r.distances for r in now.evaluate_many(jobs, processes)]
  return out


def _json_safe(value):
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def evaluate(
  workdir: str,
  data: str | None = None,
  split: str = "test",
  out: str | None = None,
  batch_size: int | None = None,
  *,
  report_images: int = 32,
  processes: int = 1,
) -> dict:
  """Evaluates the stages of ``workdir`` and writes ``metrics.json``, ``per_image.csv`` and
  ``report.html`` into ``out``.

  Args:
    workdir: a stage workdir or a chain workdir (module docstring).
    data: image root (SPEC §8 layout); default: the most trained stage's ``data.image_root``,
      else its synthetic root.
    split: CSV split to evaluate.
    out: output directory; default ``<workdir>/eval_<split>``.
    batch_size: images per jitted call (rounded up to a multiple of the device count); default
      the stage config's.
    report_images: images of the split (in order) shown after the worst ones in the report.
    processes: worker processes of the NoW error (``now.evaluate_many``).

  Returns:
    The ``metrics.json`` record: ``num_images``, ``split``, ``methods`` (evaluated, in
    :data:`METHODS` order; ``gt_render`` where the image root's ground truth holds every
    coefficient), ``masks`` ``{method: {occluder_iou, occluder_precision,
    occluder_recall, occluder_f1, visible_accuracy, visible_precision, visible_recall,
    visible_f1, false_alarm}}`` each with a ``_std`` companion (means over the images where the
    metric is defined; None where none is), ``landmarks`` ``{method: {px_median, nme_median,
    nme_mean}}``, ``shape_3d`` ``{prediction, mean_face: {median_mm, mean_mm, std_mm}}`` (empty
    without ground-truth coefficients), ``pose`` ``{method: {pitch_err_deg, yaw_err_deg,
    roll_err_deg, pitch_gain, yaw_gain, roll_gain}}`` (``stage1``, ``em``; empty without
    ground-truth poses), ``photometric`` ``{method: {mae, mae_std}}``, ``masks_by_occluder``
    ``{family: {method: {num_images, occluder_iou, occluder_precision, occluder_recall,
    occluder_f1, and for em, adapt and gt_render forgiven}}}`` with ``_std`` companions (empty
    where the root does not record the families) and ``num_unoccluded``.
  """
  from focus_jax.data import layout

  stages = {name: load_stage(path) for name, path in workdir_lib.find_stages(workdir).items()}
  primary = next(stages[n] for n in ("adapt", "em", "unet_pretrain", "pretrain") if n in stages)
  for stage in stages.values():
    if stage.config.model.to_dict() != primary.config.model.to_dict():
      raise ValueError(
        f"{stage.workdir} and {primary.workdir} use different morphable models "
        f"({stage.config.model.to_dict()} vs {primary.config.model.to_dict()})"
      )
  config = ml_collections.ConfigDict(primary.config.to_dict())
  if data:
    config.data.image_root = data
  root = config.data.image_root or os.path.join(primary.workdir, "synthetic")
  out = out or os.path.join(workdir, f"eval_{split}")
  model = train.load_model(config)
  source = train.data_source(config, primary.workdir, split)
  names = [r.name for r in layout.read_split(root, split, config.data.bad_rows)]

  mesh = sharding.make_mesh(jax.local_devices())
  size = batch_size or config.batch_size
  size = -(-size // mesh.size) * mesh.size
  replicated = sharding.replicated(mesh)
  roles = _roles(stages)
  nets = {role: getattr(stage.nets, kind) for role, (stage, kind) in roles.items()}
  parts = jax.device_put({r: stage.parts[kind] for r, (stage, kind) in roles.items()}, replicated)
  placed_model = jax.device_put(model, replicated)

  collected: dict[str, list] = {}
  gt_model = placed_gt_model = None
  # The most trained stage's EM UNet weights (a stage-1 config holds the defaults of its variant).
  blind_spot = (
    float(config.loss.em_unet.area),
    float(config.loss.em_unet.neighbour),
    int(config.loss.neighbour_window),
  )
  for i, batch in enumerate(_batches(source, size, mesh, config.data.image_size)):
    if i == 0 and "gt/shape" in batch:
      gt_model = _groundtruth_model(root, model, batch["gt/shape"].shape[1])
      if gt_model is not None and all(f"gt/{k}" in batch for k in GT_COEFFICIENTS):
        placed_gt_model = jax.device_put(gt_model, replicated)
    per_image, _, extra = _run_batch(nets, parts, placed_model, batch, placed_gt_model, blind_spot)
    keys = ("valid", "id", "has_mask", "gt/shape", "gt/pose", "gt/occluded_fraction")
    host = jax.device_get(
      {"per_image": per_image, "extra": extra, **{k: batch[k] for k in keys if k in batch}}
    )
    valid = np.asarray(host.pop("valid"))
    flat = {f"{m}/{k}": v for m, d in host.pop("per_image").items() for k, v in d.items()}
    flat |= host.pop("extra") | host
    for key, value in flat.items():
      collected.setdefault(key, []).append(np.asarray(value)[valid])
  arrays = {k: np.concatenate(v) for k, v in collected.items()}
  n = arrays["id"].shape[0]
  image_names = [names[i] for i in arrays["id"]]

  has_mask = arrays["has_mask"].astype(bool)
  if "gt/occluded_fraction" in arrays:
    unoccluded = arrays["gt/occluded_fraction"] == 0
  else:
    unoccluded = has_mask & arrays["clear"]
  per_method = {m: {} for m in METHODS}
  for key, value in arrays.items():
    method, _, metric = key.partition("/")
    if method in per_method:
      per_method[method][metric] = value.astype(np.float64)
  nan = np.full(n, np.nan)
  for method in MASK_METHODS:
    scores = per_method[method]
    if not scores:
      continue
    for k in VISIBLE_KEYS:
      scores[k] = np.where(has_mask, scores[k], nan)
    for k in OCCLUDED_KEYS:
      if k in scores:
        scores[k] = np.where(has_mask & ~unoccluded, scores[k], nan)
    scores["false_alarm"] = np.where(unoccluded, scores["false_alarm"], nan)
  for method in PHOTOMETRIC_METHODS:
    if "photometric_mae" in per_method[method]:
      per_method[method]["photometric_mae"] = np.where(
        has_mask, per_method[method]["photometric_mae"], nan
      )

  shape_3d = {}
  prediction = next(m for m in REFERENCE if f"shape/{m}" in arrays)
  if gt_model is not None:
    predictions = {
      prediction: arrays[f"shape/{prediction}"],
      "mean_face": np.zeros_like(arrays[f"shape/{prediction}"]),
    }
    distances = _shape_errors(model, gt_model, arrays["gt/shape"], predictions, processes)
    for method, dist in distances.items():
      per_method[method]["s2m_median_mm"] = np.array([np.median(d) for d in dist])
      per_method[method]["s2m_mean_mm"] = np.array([np.mean(d) for d in dist])
      s = now.summarize(dist)
      key = "mean_face" if method == "mean_face" else "prediction"
      shape_3d[key] = {"median_mm": s["median"], "mean_mm": s["mean"], "std_mm": s["std"]}

  pose = {}
  if "gt/pose" in arrays and n >= 2:
    for m in LANDMARK_METHODS:
      if f"pose/{m}" in arrays:
        errors = metrics.rotation_errors(arrays[f"pose/{m}"], arrays["gt/pose"])
        for i, axis in enumerate(metrics.ROTATIONS):
          per_method[m][f"{axis}_err_deg"] = errors[:, i]
        pose[m] = metrics.rotation_summary(arrays[f"pose/{m}"], arrays["gt/pose"])

  methods = [m for m in METHODS if per_method[m]]
  families = synthetic.occluder_families(root)
  groups = None if families is None else [families.get(name, ()) for name in image_names]
  record = {
    "num_images": n,
    "split": split,
    "methods": methods,
    "masks": {
      m: metrics.summarize_images({k: per_method[m][k] for k in MASK_KEYS})
      for m in MASK_METHODS
      if m in methods
    },
    "landmarks": {
      m: metrics.landmark_summary(per_method[m]["landmark_px"], per_method[m]["landmark_nme"])
      for m in LANDMARK_METHODS
      if m in methods
    },
    "shape_3d": shape_3d,
    "pose": pose,
    "photometric": {
      m: metrics.summarize_images({"mae": per_method[m]["photometric_mae"]})
      for m in PHOTOMETRIC_METHODS
      if m in methods
    },
    "masks_by_occluder": _by_occluder(per_method, methods, groups),
    "num_unoccluded": int(unoccluded.sum()),
  }
  record = _json_safe(record)
  files.write_json(os.path.join(out, "metrics.json"), record)
  _write_csv(
    os.path.join(out, "per_image.csv"), image_names, unoccluded, per_method, methods, groups
  )
  _write_report(
    out,
    record,
    stages,
    root,
    image_names,
    per_method,
    _report_pass(nets, parts, placed_model, source, size, mesh, config.data.image_size),
    report_images,
  )
  return record


def _by_occluder(per_method: dict, methods: list[str], groups) -> dict:
  """``{family: {method: {num_images, occluder_iou, ...}}}``: the occluder scores of each mask
  method (not ``all_visible``) over the occluded images each occluder family was drawn on."""
  out: dict[str, dict] = {}
  if groups is None:
    return out
  for method in MASK_METHODS:
    if method == "all_visible" or method not in methods:
      continue
    scores = {k: per_method[method][k] for k in OCCLUDED_KEYS if k in per_method[method]}
    for family, summary in metrics.summarize_groups(scores, groups).items():
      out.setdefault(family, {})[method] = summary
  return out


def _write_csv(path, image_names, unoccluded, per_method, methods, groups=None) -> None:
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(["image", "method", *COLUMNS, "occluders"])
  for i, name in enumerate(image_names):
    for method in methods:
      values = per_method[method] | {"unoccluded": unoccluded.astype(np.float64)}
      cells = []
      for column in COLUMNS:
        value = values[column][i] if column in values else np.nan
        cells.append(f"{value:.6g}" if np.isfinite(value) else "")
      drawn = "" if groups is None else synthetic.OCCLUDER_SEPARATOR.join(groups[i])
      writer.writerow([name, method, *cells, drawn])
  files.write_text(path, text.getvalue())


# --------------------------------------------------------------------------------------------
# Report.


def _report_pass(nets, parts, model, source, size, mesh, image_size):
  """``strips(positions) -> {position: strip}``: reruns the methods on the chosen images (the
  worst are known only after the full pass) and draws the most trained method's panels."""
  method = next(m for m in (*EM_METHODS, "unet_pretrain", "stage1") if m in nets)

  def strips(positions: list[int]) -> dict[int, np.ndarray]:
    subset = [source[p] for p in positions]
    out = {}
    done = 0
    for batch in _batches(subset, size, mesh, image_size):
      _, views, _ = _run_batch(nets, parts, model, batch)
      view = jax.device_get(views[method])
      host = jax.device_get({k: batch[k] for k in ("image", "mask", "has_mask", "landmarks")})
      for b in range(min(size, len(positions) - done)):
        out[positions[done + b]] = report.panel_strip(
          host["image"][b],
          view["render"][b],
          view["mask"][b],
          view["visible"][b],
          host["mask"][b] if host["has_mask"][b] else None,
          host["landmarks"][b],
          view["landmarks"][b],
        )
      done += size
    return out

  return method, strips


def _fmt(value) -> str:
  return "-" if value is None else f"{value:.4g}"


def summary_table(record: dict) -> tuple[list[str], list[list[str]]]:
  """``(header, rows)``: one row per method with the key metrics of a ``metrics.json`` record."""
  header = ["method", "occ IoU", "occ F1", "vis F1", "vis acc", "false alarm", "NME med", "px med"]
  header += ["MAE 0-255", "3D med mm"]
  prediction = next((m for m in REFERENCE if m in record["methods"]), None)
  rows = []
  for method in record["methods"]:
    m = record["masks"].get(method, {})
    lm = record["landmarks"].get(method, {})
    photo = record["photometric"].get(method, {})
    key = "mean_face" if method == "mean_face" else ("prediction" if method == prediction else "")
    s3 = record["shape_3d"].get(key, {})
    values = [m.get("occluder_iou"), m.get("occluder_f1"), m.get("visible_f1")]
    values += [m.get("visible_accuracy"), m.get("false_alarm"), lm.get("nme_median")]
    values += [lm.get("px_median"), photo.get("mae"), s3.get("median_mm")]
    rows.append([method, *(_fmt(v) for v in values)])
  return header, rows


def format_table(record: dict) -> str:
  """The summary table as fixed-width text, then :func:`family_table` where the record has one."""
  text = _fixed_width(*summary_table(record))
  header, rows = family_table(record)
  if rows:
    text += f"\n\n{FAMILY_TITLE}:\n{_fixed_width(header, rows)}"
  return text


FAMILY_TITLE = "Occluder IoU and forgiven share by occluder family (occluded images)"


def family_table(record: dict) -> tuple[list[str], list[list[str]]]:
  """``(header, rows)``: occluder IoU per occluder family (rows) and mask method (columns) of a
  ``metrics.json`` record, then the forgiven share of the methods that have one; no rows
  without families."""
  by_family = record.get("masks_by_occluder") or {}
  methods = [m for m in record["methods"] if any(m in v for v in by_family.values())]
  forgiving = [m for m in methods if any("forgiven" in v.get(m, {}) for v in by_family.values())]
  header = ["occluder", "images", *(f"{m} IoU" for m in methods)]
  header += [f"{m} forgiven" for m in forgiving]
  rows = []
  for family, scores in by_family.items():
    count = next(iter(scores.values()))["num_images"]
    cells = [_fmt(scores.get(m, {}).get("occluder_iou")) for m in methods]
    cells += [_fmt(scores.get(m, {}).get("forgiven")) for m in forgiving]
    rows.append([family, str(count), *cells])
  return header, rows


def _fixed_width(header: list[str], rows: list[list[str]]) -> str:
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  lines = [
    "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *rows]
  ]
  return "\n".join(lines)


def _write_report(out, record, stages, root, image_names, per_method, pass_, report_images):
  method, draw = pass_
  landmark_method = "em" if "em" in per_method and per_method["em"] else "stage1"

  def worst(values, largest: bool) -> list[int]:
    order = [i for i in np.argsort(values, kind="stable") if np.isfinite(values[i])]
    return (order[::-1] if largest else order)[:WORST]

  chosen = [
    (f"Worst occluder IoU ({method})", per_method[method].get("occluder_iou"), False),
    (
      f"Highest false alarm, unoccluded images ({method})",
      per_method[method].get("false_alarm"),
      True,
    ),
    (f"Worst NME ({landmark_method})", per_method[landmark_method].get("landmark_nme"), True),
    (
      f"Worst photometric error ({landmark_method})",
      per_method[landmark_method].get("photometric_mae"),
      True,
    ),
    (f"Worst 3D error ({landmark_method})", per_method[landmark_method].get("s2m_mean_mm"), True),
  ]
  selections = [(t, worst(v, largest)) for t, v, largest in chosen if v is not None]
  in_order = list(range(min(report_images, len(image_names))))
  selections.append((f"Images in split order (first {report_images})", in_order))
  selections = [(t, idx) for t, idx in selections if idx]
  positions = sorted({i for _, idx in selections for i in idx})
  strips = draw(positions)

  def caption(i: int) -> str:
    parts = []
    for label, m, key in (
      ("occ IoU", method, "occluder_iou"),
      ("vis F1", method, "visible_f1"),
      ("false alarm", method, "false_alarm"),
      ("NME", landmark_method, "landmark_nme"),
      ("MAE", landmark_method, "photometric_mae"),
      ("3D mm", landmark_method, "s2m_mean_mm"),
    ):
      values = per_method[m].get(key)
      if values is not None and np.isfinite(values[i]):
        parts.append(f"{label} {values[i]:.3g}")
    return ", ".join(parts)

  def key(i: int) -> str:
    return f"{i:05d}_{os.path.splitext(image_names[i])[0]}"

  sections = [
    report.Section(title, [report.Row(image_names[i], caption(i), key(i)) for i in idx])
    for title, idx in selections
  ]
  notes = [
    f"Data: {root}, split {record['split']}, {record['num_images']} images "
    f"({record['num_unoccluded']} unoccluded)."
  ]
  notes += [f"{s.name}: {s.workdir}, step {s.step}" for s in stages.values()]
  notes.append(f"Image panels show method {method}.")
  report.write_report(
    out,
    "FOCUS evaluation",
    notes,
    summary_table(record),
    sections,
    {key(i): strip for i, strip in strips.items()},
    [(FAMILY_TITLE, *family_table(record))] if record.get("masks_by_occluder") else [],
  )


# --------------------------------------------------------------------------------------------
# Command line.


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m focus_jax.evaluate", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--workdir", required=True, help="stage workdir or chain workdir")
  parser.add_argument("--data", default="", help="image root (default: the stage config's)")
  parser.add_argument("--split", default="test", help="CSV split (default: test)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--batch_size", type=int, default=0, help="images per step (0: config's)")
  parser.add_argument("--report_images", type=int, default=32, help="images listed in order")
  parser.add_argument("--processes", type=int, default=1, help="worker processes of the 3D error")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  for name in ("absl", "orbax"):  # they log every checkpoint read at INFO
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    record = evaluate(
      args.workdir,
      args.data or None,
      args.split,
      args.out,
      args.batch_size or None,
      report_images=args.report_images,
      processes=args.processes,
    )
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(format_table(record))
  print(os.path.join(args.out, "metrics.json"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
