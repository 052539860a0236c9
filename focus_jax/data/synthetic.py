"""Synthetic occluded faces with ground truth, written in the original layout.

    python -m focus_jax.data.synthetic --out IMAGE_ROOT --num N --seed S [--model SPEC]

Each face is rendered with :func:`focus_jax.render.pipeline.render_batch` (batched under one
``jax.jit``) from random coefficients of a morphable model (``--model``: ``embedded`` (default,
small), ``embedded-bfm``, any spec of ``focus_jax.model_zoo`` or an h5 path): identity,
expression and albedo in standard deviations, pose with yaw up to +-45 degrees, SH lighting.
The face is composited over a random background (gradients, textures, noise), then occluders
from several families (``occluders.FAMILIES``) are drawn over it; a fraction of the images stays
unoccluded.

Output (``IMAGE_ROOT``, SPEC §8 layout, images are already aligned 224 x 224, so feed them to
the tfds builder with ``align=False``):

- ``Dataset/synth_NNNNNN.png`` and ``Dataset/synth_NNNNNN_visible_skin_mask.png``: the ground
  truth visibility, 255 where the rendered face is visible = the render's hard mask minus the
  occluders' pixels;
- ``{train,val,test,all}_landmarks.csv``: the 68 projected landmark vertices;
- ``groundtruth.npz``: ``names (N,)``, coefficients ``shape, expression, color, pose, light``,
  ``vertices (N, V, 3)`` (model frame, mm, with expression, the model's full mesh),
  ``now_landmarks (N, 7, 3)`` (the 7 NoW points of those vertices), ``landmarks (N, 68, 2)``,
  ``occluded_fraction (N,)``, ``occluders (N,)`` (the occluder families drawn over each face,
  joined by ``+`` in drawing order, e.g. ``hair+hand``; ``""`` for an unoccluded image);
- ``synthetic.json``: the command's settings.

Images are a pure function of ``(seed, image index)``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax import files
from focus_jax.data import examples, layout, occluders
from focus_jax.render import camera, coefficients
from focus_jax.render import morphable_model as mm

log = logging.getLogger(__name__)

SIZE = 224
# Joins the occluder families of one image in ``groundtruth.npz``'s ``occluders``.
OCCLUDER_SEPARATOR = "+"


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  """Sampling ranges of the generator.

  Attributes:
    shape_std, expression_std, color_std: standard deviations of the coefficients.
    active_blend_shapes: for models whose expression coefficients are blend weights (ICT), the
      number of blend shapes switched on per face, each with a weight uniform in
      ``[0, max_blend_weight]`` (dense signed weights give grotesque faces).
    yaw_deg, pitch_deg, roll_deg: uniform pose ranges (+-).
    translation_mm: ``tx, ty`` uniform in +- this; ``tz_mm``: uniform range of ``tz``. The
      encoder's head reaches ``tz`` only through SPEC §2's 0.005 scaling, so it cannot follow
      this range (a 9 % change of face size); faces at ``tz = 0`` (the quick start, 1 December
      2026) changed little: test NME 0.089 against the mean face's 0.108, yaw / pitch gain 0.73
      / 0.31, 3D 1.51 mm against 1.51, EM occluder IoU 0.539 at false alarms 5.8 %.
    light_std: std of the SH coefficients (bands 1-2), ``ambient_std`` of band 0 (on top of the
      renderer's offset), ``light_tint_std`` of the per-channel deviations.
    occlusion_probability: fraction of images with occluders (the rest stay unoccluded).
    max_occluders: most occluders per image.
    coverage: (min, max) fraction of the face covered by occluders.
    families: occluder families used.
  """

  shape_std: float = 1.0
  expression_std: float = 0.8
  active_blend_shapes: int = 3
  max_blend_weight: float = 0.8
  color_std: float = 0.6
  yaw_deg: float = 45.0
  pitch_deg: float = 15.0
  roll_deg: float = 10.0
  translation_mm: float = 10.0
  tz_mm: tuple[float, float] = (-60.0, 120.0)
  light_std: float = 0.25
  ambient_std: float = 0.3
  light_tint_std: float = 0.04
  occlusion_probability: float = 0.8
  max_occluders: int = 2
  coverage: tuple[float, float] = (0.05, 0.5)
  families: tuple[str, ...] = occluders.FAMILIES


def load_model(spec: str):
  """The morphable model of ``spec``: through ``focus_jax.model_zoo`` (embedded names, ICT, or
  an h5 path)."""
  from focus_jax.facemodels import zoo

  return zoo.load_model(spec)


def prior_ranges(config: SynthConfig, blend_weights: bool = False) -> coefficients.PriorRanges:
  """The coefficient distribution of ``config``.

  Args:
    config: sampling ranges of the generator.
    blend_weights: the expression coefficients are blend weights (``facemodels.zoo``'s
      ``expression_coefficients(spec) == "blend_weights"``), not standard deviations.
  """
  deg = np.deg2rad
  return coefficients.PriorRanges(
    shape_std=config.shape_std,
    expression_std=config.expression_std,
    color_std=config.color_std,
    blend_shapes=config.active_blend_shapes if blend_weights else None,
    max_blend_weight=config.max_blend_weight,
    rotation=(deg(config.pitch_deg), deg(config.yaw_deg), deg(config.roll_deg)),
    translation=config.translation_mm,
    depth=config.tz_mm,
    ambient_std=config.ambient_std,
    band_std=(config.light_std, config.light_std),
    tint_std=config.light_tint_std,
  )


@jax.jit
def _landmark_pixels(model: mm.MorphableModel, coeffs: coefficients.Coefficients) -> jax.Array:
  """``(68, 2)`` pixel x, y of the landmark vertices at ``SIZE x SIZE`` (the renderer's camera)."""
  idx = model.landmarks
  highest = jax.lax.Precision.HIGHEST
  # Only the 68 landmark rows of the bases: far cheaper than the full mesh, per pose candidate.
  points = (
    model.shape_mean[idx]
    + model.exp_mean[idx]
    + jnp.einsum("k,kvc->vc", coeffs.shape, model.shape_basis[:, idx], precision=highest)
    + jnp.einsum("k,kvc->vc", coeffs.expression, model.exp_basis[:, idx], precision=highest)
  )
  return camera.project(camera.camera_from_pose(coeffs.pose, SIZE, SIZE), points)[:, :2]


def inside_image(model: mm.MorphableModel, margin: float = 4.0):
  """An ``accept`` test for :func:`coefficients.sample`: every landmark lies ``margin`` pixels
  inside the ``SIZE x SIZE`` image."""

  def accept(coeffs: coefficients.Coefficients) -> bool:
    lm = np.asarray(_landmark_pixels(model, coeffs))
    return bool(np.all((lm >= margin) & (lm <= SIZE - 1 - margin)))

  return accept


def compose(
  rng: np.random.Generator,
  render_image: np.ndarray,
  render_mask: np.ndarray,
  landmarks: np.ndarray,
  config: SynthConfig,
):
  """Background + face + occluders for one rendered face.

  Args:
    rng: random generator.
    render_image: ``(H, W, 3)`` float32 render (0 on the background).
    render_mask: ``(H, W)`` float32 hard coverage in {0, 1}.
    landmarks: ``(68, 2)`` float32 projected landmarks.
    config: occluder settings.

  Returns:
    ``(image (H, W, 3) uint8, visible (H, W) bool, occluder (H, W) bool, families list)``.
  """
  h, w = render_mask.shape
  face = render_mask > 0.5
  image = occluders.background(rng, h, w)
  image = np.where(face[..., None], np.clip(render_image, 0.0, 1.0), image)
  occluder = np.zeros((h, w), bool)
  names = []
  if rng.uniform() < config.occlusion_probability:
    occluder, colour, names = occluders.occlude(
      rng, landmarks, face, config.families, config.max_occluders, config.coverage
    )
    image = np.where(occluder[..., None], colour, image)
  image8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
  return image8, face & ~occluder, occluder, names


@jax.jit
def render_faces(model: mm.MorphableModel, coeffs: coefficients.Coefficients) -> dict:
  """Renders a batch at 224 x 224 with :func:`pipeline.render_batch`, keeping what the generator
  uses (XLA then drops the soft mask), plus the model-frame vertices, in one compiled call.

  Args:
    model: the morphable model.
    coeffs: renderer coefficients with a leading batch axis ``B``.

  Returns:
    ``image (B, 224, 224, 3)``, ``mask (B, 224, 224)``, ``landmarks (B, 68, 2)`` from the
    renderer and ``vertices (B, V, 3)`` float32 mm.
  """
  from focus_jax.render import pipeline

  out = pipeline.render_batch(model, coeffs, SIZE, SIZE)
  vertices = jax.vmap(mm.vertices, in_axes=(None, 0, 0))(model, coeffs.shape, coeffs.expression)
  return {"image": out.image, "mask": out.mask, "landmarks": out.landmarks, "vertices": vertices}


def generate(
  out: str,
  num: int,
  seed: int = 0,
  model="embedded",
  config: SynthConfig = SynthConfig(),
  batch_size: int = 32,
  split: tuple[float, float, float] = (0.8, 0.1, 0.1),
  progress: bool = True,
  workers: int = 2,
) -> dict:
  """Renders ``num`` occluded faces into the ``image_root`` ``out``.

  Args:
    out: output directory.
    num: number of images.
    seed: random seed (image ``i`` depends on ``(seed, i)`` only).
    model: a spec for :func:`load_model` or a loaded ``MorphableModel``.
    config: sampling ranges.
    batch_size: faces rendered per jit call.
    split: train, val, test fractions of the CSVs.
    progress: show a tqdm progress bar.
    workers: threads compositing and writing images while the next batch renders.

  Returns:
    Statistics: ``num``, ``seconds``, ``images_per_second`` (after compilation), ``occluded``.
  """
  from tqdm import tqdm

  if num < 1:
    raise ValueError(f"--num must be positive, got {num}")
  unknown = sorted(set(config.families) - set(occluders.FAMILIES))
  if unknown or not config.families:
    raise ValueError(
      f"occluder families {unknown or '(none)'}: expected some of {occluders.FAMILIES}"
    )
  blend_weights = False
  if isinstance(model, str):
    from focus_jax.facemodels import zoo

    spec, model = model, load_model(model)
    blend_weights = zoo.expression_coefficients(spec) == "blend_weights"
  else:
    spec = "<MorphableModel>"
  dataset = os.path.join(out, layout.IMAGE_DIR)
  os.makedirs(dataset, exist_ok=True)
  ranges, accept = prior_ranges(config, blend_weights), inside_image(model)
  coeffs = [
    coefficients.sample(np.random.default_rng([seed, i, 0]), model.sizes, ranges, accept=accept)
    for i in range(num)
  ]

  def batch_of(start):
    part = coeffs[start : start + batch_size]
    part = part + [part[-1]] * (batch_size - len(part))  # one compiled shape for every batch
    return render_faces(model, coefficients.stack(part))

  names = [f"synth_{i:06d}.png" for i in range(num)]
  landmarks = np.zeros((num, 68, 2), np.float32)
  occluded = np.zeros(num, np.float32)
  families = [""] * num
  num_v = model.num_vertices
  vertices = np.zeros((num, num_v, 3), np.float32)

  def finish(i, image, mask, lm):
    rng = np.random.default_rng([seed, i, 1])
    image8, visible, occ, drawn = compose(rng, image, mask, lm, config)
    path = os.path.join(dataset, names[i])
    files.write_png(path, image8)
    files.write_png(layout.mask_path_for(path), visible.astype(np.uint8) * 255)
    face = max(float((mask > 0.5).sum()), 1.0)
    return float((occ & (mask > 0.5)).sum()) / face, OCCLUDER_SEPARATOR.join(drawn)

  starts = list(range(0, num, batch_size))
  bar = tqdm(total=num, desc="synthetic", unit="img", disable=not progress)
  t0 = time.perf_counter()
  t_compiled = None
  pending = batch_of(starts[0])
  with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
    for k, start in enumerate(starts):
      outs = jax.device_get(pending)
      images, masks, lms, verts = (outs[k] for k in ("image", "mask", "landmarks", "vertices"))
      stop = min(start + batch_size, num)
      if k + 1 < len(starts):
        pending = batch_of(starts[k + 1])  # dispatched now, runs while this batch is written
      if t_compiled is None:
        t_compiled = time.perf_counter()
      futures = [
        pool.submit(finish, i, images[i - start], masks[i - start], lms[i - start])
        for i in range(start, stop)
      ]
      for i, f in zip(range(start, stop), futures, strict=True):
        occluded[i], families[i] = f.result()
      landmarks[start:stop] = lms[: stop - start]
      vertices[start:stop] = verts[: stop - start]
      bar.update(stop - start)
  bar.close()
  t_end = time.perf_counter()

  bad = ~np.all((landmarks >= -0.5) & (landmarks <= SIZE - 0.5), axis=(1, 2))
  if bad.any():
    log.warning("%d images have landmarks outside the image (kept out of the CSVs)", bad.sum())
  rows = [(n, lm) for n, lm, b in zip(names, landmarks, bad, strict=True) if not b]
  by_name = dict(rows)
  parts = layout.split_names(list(by_name), split, seed)
  for split_name, part in zip(("train", "val", "test"), parts, strict=True):
    if part:  # an empty CSV would be an empty split
      layout.write_csv(layout.csv_path(out, split_name), [(n, by_name[n]) for n in part])
  layout.write_csv(layout.csv_path(out, "all"), rows)

  now_idx = np.asarray(model.now_landmarks)
  files.save_npz(
    os.path.join(out, layout.GROUNDTRUTH_FILE),
    {
      "names": np.array(names),
      **coefficients.stack(coeffs).to_dict(),
      "vertices": vertices,
      "now_landmarks": vertices[:, now_idx],
      "landmarks": landmarks,
      "occluded_fraction": occluded,
      "occluders": np.array(families, dtype=str),
    },
  )
  steady = max(num - min(batch_size, num), 0)
  seconds = t_end - t0
  rate = steady / (t_end - t_compiled) if steady and t_end > t_compiled else num / seconds
  stats = {
    "num": num,
    "seconds": round(seconds, 2),
    "images_per_second": round(rate, 2),
    "occluded": int((occluded > 0).sum()),
    "model": spec,
    "vertices": int(num_v),
  }
  settings = {"seed": seed, "config": dataclasses.asdict(config), **stats}
  files.write_json(os.path.join(out, "synthetic.json"), settings)
  return stats


def occluder_families(root: str) -> dict[str, tuple[str, ...]] | None:
  """``{image name: occluder families drawn over it}`` from ``root``'s ``groundtruth.npz``
  (``()`` for an unoccluded image); None when the root has no such record (not synthetic, or
  generated before the families were recorded)."""
  gt = examples.load_groundtruth(root)
  if gt is None or "occluders" not in gt:
    return None
  return {
    str(n): tuple(f for f in str(d).split(OCCLUDER_SEPARATOR) if f)
    for n, d in zip(gt["names"], gt["occluders"], strict=True)
  }


def _pair(text: str) -> tuple[float, float]:
  values = tuple(float(v) for v in text.split(","))
  if len(values) != 2:
    raise argparse.ArgumentTypeError(f"expected MIN,MAX, got {text!r}")
  return values


def _triple(text: str) -> tuple[float, float, float]:
  values = tuple(float(v) for v in text.split(","))
  if len(values) != 3:
    raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST, got {text!r}")
  return values


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m focus_jax.data.synthetic",
    description="Render synthetic occluded faces with ground truth into an image_root.",
  )
  parser.add_argument("--out", required=True, help="image_root to write")
  parser.add_argument("--num", type=int, required=True, help="number of images")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--model", default="embedded", help="embedded (default), embedded-bfm, ict, or an h5 path"
  )
  parser.add_argument("--batch-size", type=int, default=32, help="faces per render call")
  parser.add_argument("--split", type=_triple, default=(0.8, 0.1, 0.1), help="train,val,test")
  parser.add_argument("--occlusion-prob", type=float, default=0.8, help="fraction occluded")
  parser.add_argument("--max-occluders", type=int, default=2)
  parser.add_argument("--coverage", type=_pair, default=(0.05, 0.5), help="MIN,MAX of the face")
  parser.add_argument(
    "--families", default=",".join(occluders.FAMILIES), help="comma-separated occluder families"
  )
  parser.add_argument("--yaw", type=float, default=45.0, help="max |yaw| in degrees")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  config = SynthConfig(
    occlusion_probability=args.occlusion_prob,
    max_occluders=args.max_occluders,
    coverage=args.coverage,
    families=tuple(f for f in args.families.split(",") if f),
    yaw_deg=args.yaw,
  )
  try:
    stats = generate(args.out, args.num, args.seed, args.model, config, args.batch_size, args.split)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(stats))
  return 0


if __name__ == "__main__":
  sys.exit(main())
