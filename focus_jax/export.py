"""Export of fitted faces for analysis: coefficients, meshes, masks, overlays, NoW submissions.

Reconstructions of a trained workdir::

    python -m focus_jax.export --workdir W --images DIR_OR_IMAGE_ROOT --out DIR [--now]
        [--vertices] [--split all] [--batch_size 8]

``--images`` is an ``image_root`` (SPEC §8 layout: ``{split}_landmarks.csv`` + ``Dataset/``;
synthetic roots are already aligned, photo roots are aligned with their CSV landmarks), a folder
of raw photos (searched recursively) or one photo; photos without a CSV get 68 landmarks from
dlib on the fly (``focus_jax.prepare.LandmarkDetector``, the ``landmarks`` extra). ``DIR`` gets:

- ``fitted.npz``: every exported image's coefficients, landmarks, masks and per-vertex
  visibility; the schema (names, shapes, dtypes, units, frames) is ``focus_jax.fitted``, read it
  with ``focus_jax.fitted.load_fitted``;
- ``meshes/NAME.obj``: the full mesh with its expression (mm, model frame) and vertex colours
  (the albedo, clipped to [0, 1]);
- ``overlays/NAME.png``: the render over the input: pasted back into the raw photo through the
  inverse alignment, or over the aligned image for aligned inputs;
- with ``--now``: ``now/<subject>/<challenge>/<image>.obj`` (neutral expression, no vertex
  colours, as the NoW loader wants) with its 7 landmarks as ``.npy`` and ``.txt`` (7 rows
  ``x y z``); the last three parts of each image's relative path name it, so run it on NoW's
  ``iphone_pictures/`` folder;
- ``report.json``: counts, the exported names, the photos where several faces were found (the
  largest is used), and every image that could not be exported (unreadable, no face found, bad
  CSV row) with the reason. They are also printed; the exit status is 1 when any image failed
  (the others are exported all the same).

The embedded model itself (no workdir) — ``python -m focus_jax.export --model-only --out=DIR``,
the default without ``--workdir`` — writes, for the mean face of ``--model`` and ``--num`` random
faces (coefficients drawn from the model's prior):

- ``face_XXX.obj``: the neutral-expression mesh (mm, model frame) without vertex colours, the
  form the NoW evaluation reads (its loader rejects ``v x y z r g b`` lines);
- ``face_XXX_lmk7.npy``: the 7 NoW landmarks ``(7, 3)`` of that mesh;
- ``face_XXX_coeffs.npz``: every coefficient group, including expression, pose and light;
- ``renders.png``: the faces rendered at 224x224 with their expression, pose and light.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

from focus_jax import files
from focus_jax.render import coefficients
from focus_jax.render import morphable_model as mm


def save_npy(path: str, array: np.ndarray) -> None:
  """``np.save`` written atomically."""
  files.atomic_write(path, lambda f: np.save(f, array))


def export_face(prefix: str, model: mm.MorphableModel, coeffs: coefficients.Coefficients) -> None:
  """Writes ``PREFIX.obj`` (neutral expression), ``PREFIX_lmk7.npy`` and ``PREFIX_coeffs.npz``
  (one array per coefficient group, keys ``shape, expression, color, pose, light``)."""
  neutral = np.asarray(
    mm.vertices(model, coeffs.shape, np.zeros(model.sizes["expression"], np.float32))
  )
  files.write_obj(f"{prefix}.obj", neutral, np.asarray(model.triangles))
  save_npy(f"{prefix}_lmk7.npy", neutral[np.asarray(model.now_landmarks)])
  files.save_npz(f"{prefix}_coeffs.npz", {k: np.asarray(v) for k, v in coeffs.to_dict().items()})


def save_png(path: str, image: np.ndarray) -> None:
  """Saves an RGB image ``(H, W, 3)`` in [0, 1] (clipped) as PNG, atomically."""
  pixels = (np.clip(np.asarray(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  files.write_png(path, pixels)


# SH band-1 coefficients of a soft light from the upper left of the camera (per channel, 9 terms),
# so that the mean face shows its relief; y is down and z away from the camera (SPEC §3).
KEY_LIGHT = np.array([0.0, 0.4, -0.3, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32)


# Export's prior: shape and color N(0, 1), expression N(0, 0.5); pitch, yaw and roll up to 0.15,
# 0.5 (~30 degrees) and 0.1 rad, no translation; a white band-1 light of random direction on top
# of the renderer's ambient term.
EXPORT_RANGES = coefficients.PriorRanges(
  expression_std=0.5, rotation=(0.15, 0.5, 0.1), band_std=(0.5, 0.0)
)


def sample_coefficients(
  model: mm.MorphableModel, num: int, seed: int
) -> list[coefficients.Coefficients]:
  """The mean face (frontal, :data:`KEY_LIGHT`) then ``num`` faces drawn within
  :data:`EXPORT_RANGES`."""
  rng = np.random.default_rng(seed)
  mean = coefficients.Coefficients.zeros(model.sizes)
  mean = dataclasses.replace(mean, light=np.tile(KEY_LIGHT, 3))
  return [mean] + [coefficients.sample(rng, model.sizes, EXPORT_RANGES) for _ in range(num)]


def export(out: str, model: str = "embedded", num: int = 7, seed: int = 0) -> dict:
  """Writes the mean face and ``num`` random faces of a model (module docs) into ``out``.

  Args:
    out: output directory (created if missing).
    model: spec of ``facemodels.zoo.load_model``: embedded, embedded-bfm, ict or a BFM h5 path.
    num: random faces besides the mean face.
    seed: seed of the random coefficients.

  Returns:
    ``{"model": model, "vertices": V, "triangles": F, "faces": num + 1}``.
  """
  from focus_jax.facemodels import zoo
  from focus_jax.render import pipeline

  face_model = zoo.load_model(model)
  faces = sample_coefficients(face_model, num, seed)
  for i, coeffs in enumerate(faces):
    export_face(os.path.join(out, f"face_{i:03d}"), face_model, coeffs)
  batch = coefficients.stack(faces)
  images = np.asarray(pipeline.render_batch(face_model, batch, 224, 224).image)
  cols = min(len(images), 4)
  rows = -(-len(images) // cols)
  grid = np.zeros((rows * 224, cols * 224, 3), np.float32)
  for i, img in enumerate(images):
    r, c = divmod(i, cols)
    grid[r * 224 : (r + 1) * 224, c * 224 : (c + 1) * 224] = img
  save_png(os.path.join(out, "renders.png"), grid)
  return {
    "model": model,
    "vertices": int(face_model.num_vertices),
    "triangles": int(face_model.num_triangles),
    "faces": len(faces),
  }


# --------------------------------------------------------------------------------------------
# Reconstructions of a trained workdir.

OVERLAY_ALPHA = 0.85  # opacity of the render in the overlays: the photo shows through a little


@dataclasses.dataclass(frozen=True)
class _Item:
  """One input image: ``name`` (relative, as in ``fitted.npz``), its file, its raw landmarks
  ``(68, 2)`` (None: detect them) and whether it is already the aligned crop."""

  name: str
  path: str
  landmarks: np.ndarray | None
  aligned: bool


class _ImageError(ValueError):
  """An image that cannot be exported (the rest of the batch goes on)."""


def _inputs(images: str, split: str) -> tuple[list[_Item], list[dict]]:
  """The items of ``--images`` and the failures found before reading any image (bad CSV rows)."""
  from focus_jax import prepare
  from focus_jax.data import layout

  if os.path.isfile(images):
    return [_Item(os.path.basename(images), images, None, False)], []
  if not os.path.isdir(images):
    raise ValueError(f"--images {images}: no such file or directory")
  splits = layout.available_splits(images)
  if splits:  # an image root: landmarks from its CSV
    if split not in splits:
      raise ValueError(f"--images {images}: no {split}_landmarks.csv (it has {splits})")
    report = layout.validate_csv(layout.csv_path(images, split), images)
    # Synthetic roots are rendered aligned already (the rule of train._image_root).
    aligned = os.path.exists(os.path.join(images, "synthetic.json"))
    items = [_Item(r.name, r.image_path, r.landmarks, aligned) for r in report.records]
    failures = [
      {"image": f"{p.csv_file}, row {p.row}", "error": p.message} for p in report.problems
    ]
    return items, failures
  names = prepare.find_images(images)
  if not names:
    raise ValueError(f"--images {images}: no {'/'.join(prepare.IMAGE_EXTENSIONS)} files found")
  return [_Item(n, os.path.join(images, n), None, False) for n in names], []


def _stem(name: str) -> str:
  """A flat file stem for an image's relative name (``a/b.jpg`` -> ``a__b``)."""
  return os.path.splitext(name)[0].replace("/", "__").replace(os.sep, "__")


def _now_path(out: str, name: str) -> str:
  """``now/<subject>/<challenge>/<image>.obj`` from the last three parts of a relative name."""
  parts = os.path.splitext(name)[0].replace(os.sep, "/").split("/")
  return os.path.join(out, "now", *parts[-3:]) + ".obj"


def _load(item: _Item, size: int, detector) -> dict:
  """Reads, landmarks and aligns one image for networks of side ``size``.

  Returns ``{photo (h, w, 3) uint8, image (size, size, 3) float32, input_landmarks (68, 2)
  aligned frame, align (5,)}``.

  Raises:
    _ImageError: naming the file (unreadable, not square when aligned, no face found).
  """
  from focus_jax import reconstruct
  from focus_jax.data import alignment, layout

  try:
    photo = layout.load_image(item.path)
  except (OSError, ValueError) as e:
    raise _ImageError(f"{item.path}: cannot read the image ({e})") from None
  if item.aligned:
    size = photo.shape[0]
    if photo.shape[1] != size:
      raise _ImageError(f"{item.path}: an aligned image must be square, got {photo.shape[:2]}")
    return {
      "photo": photo,
      "image": reconstruct.resize_images(photo[None], size)[0],
      "input_landmarks": reconstruct.to_frame(item.landmarks, size, alignment.TARGET_SIZE),
      # The identity alignment (what the training pipeline records for aligned images).
      "align": np.array([size, size, 1.0, size / 2.0, size / 2.0]),
    }
  landmarks, faces = item.landmarks, 1
  if landmarks is None:
    landmarks, faces = detector(photo)
    if landmarks is None:
      raise _ImageError(f"{item.path}: no face found")
  try:
    image, points, params = reconstruct.align_photos([photo], np.asarray(landmarks)[None], size)
  except ValueError as e:
    raise _ImageError(f"{item.path}: cannot align the face ({e})") from None
  return {
    "photo": photo,
    "image": image[0],
    "input_landmarks": reconstruct.to_frame(points[0], size, alignment.TARGET_SIZE),
    "align": params[0],
    "faces": int(faces),  # the detector's count: the largest face is used
  }


def _overlay(photo: np.ndarray, aligned: bool, params, render: np.ndarray, coverage: np.ndarray):
  """The render ``(S, S, 3)`` over the photo ``(h, w, 3)`` uint8 where ``coverage (S, S)``."""
  import cv2

  from focus_jax.data import alignment

  size = photo.shape[0] if aligned else alignment.TARGET_SIZE
  pixels = np.clip(render, 0.0, 1.0) * 255.0
  pixels = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_LINEAR)
  alpha = OVERLAY_ALPHA * cv2.resize(coverage, (size, size), interpolation=cv2.INTER_LINEAR)
  if aligned:
    blend = alpha[..., None] * pixels + (1.0 - alpha[..., None]) * photo
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)
  return alignment.paste_back(pixels, alignment.AlignParams.from_array(params), photo, alpha)


def write_batch(
  out: str, model, loaded: list, result, *, now: bool = False, vertices: bool = False
) -> list[dict]:
  """Writes the per-image files of a reconstructed batch; returns its ``fitted.npz`` rows.

  Args:
    out: output directory.
    model: the morphable model.
    loaded: ``B`` pairs ``(_Item, dict)`` of :func:`_load` (photo, input landmarks, align).
    result: their ``reconstruct.Reconstruction`` (NumPy arrays, ``S x S`` frame).
    now: also write the NoW layout.
    vertices: keep the meshes in the rows.

  Returns:
    One dict per image with the per-image keys of ``focus_jax.fitted``.
  """
  from focus_jax import fitted as fitted_lib
  from focus_jax import reconstruct
  from focus_jax.data import alignment
  from focus_jax.eval import now as now_lib

  size = result.render.shape[1]
  triangles = np.asarray(model.triangles)
  albedo = np.clip(reconstruct.albedo(model, result.coefficients.color), 0.0, 1.0)
  neutral = reconstruct.neutral_vertices(model, result.coefficients.shape) if now else None
  align = np.stack([d["align"] for _, d in loaded])
  landmarks = reconstruct.to_frame(result.landmarks, size, alignment.TARGET_SIZE)
  rows = []
  for b, (item, data) in enumerate(loaded):
    stem = _stem(item.name)
    files.write_obj(
      os.path.join(out, "meshes", stem + ".obj"), result.vertices[b], triangles, albedo[b]
    )
    overlay = _overlay(data["photo"], item.aligned, align[b], result.render[b], result.coverage[b])
    files.write_png(os.path.join(out, "overlays", stem + ".png"), overlay)
    if now:
      path = _now_path(out, item.name)
      lm7 = neutral[b][np.asarray(model.now_landmarks)]
      now_lib.write_submission(path, neutral[b], triangles, lm7)
      files.atomic_write(path[: -len(".obj")] + ".txt", lambda f, p=lm7: np.savetxt(f, p))
    if item.aligned:
      photo_lm = reconstruct.to_frame(result.landmarks[b], size, len(data["photo"]))
    else:
      photo_lm = reconstruct.to_photo_landmarks(
        result.landmarks[b : b + 1], align[b : b + 1], size
      )[0]
    row = {
      "names": item.name,
      **{k: np.asarray(v[b]) for k, v in result.coefficients.to_dict().items()},
      "landmarks": landmarks[b],
      "landmarks_photo": photo_lm,
      "input_landmarks": data["input_landmarks"],
      "align": align[b],
      "visible_mask": fitted_lib.pack_mask(result.visible_mask[b]),
      "coverage": fitted_lib.pack_mask(result.coverage[b]),
      "vertex_visibility": result.vertex_visibility[b],
    }
    if vertices:
      row["vertices"] = result.vertices[b]
    rows.append(row)
  return rows


def write_npz(
  out: str, model, image_size: int, rows: list[dict], provenance: dict, *, vertices: bool = False
) -> None:
  """Writes ``out/fitted.npz`` from the rows of :func:`write_batch` (none: a valid empty file).

  Args:
    out: output directory.
    model: the morphable model.
    image_size: side ``S`` of the masks.
    rows: per-image dicts.
    provenance: ``{model, source, mask_source}`` strings.
    vertices: store ``vertices`` and ``triangles``.
  """
  from focus_jax import fitted as fitted_lib
  from focus_jax.render import visibility

  s = image_size
  trailing = {  # the schema's shapes, so that an all-failed export still writes a valid file
    "names": (),
    **{k: (n,) for k, n in model.sizes.items()},
    "pose": (6,),
    "light": (27,),
    "landmarks": (68, 2),
    "landmarks_photo": (68, 2),
    "input_landmarks": (68, 2),
    "align": (5,),
    "visible_mask": (s, -(-s // 8)),
    "coverage": (s, -(-s // 8)),
    "vertex_visibility": (model.num_vertices,),
  }
  dtypes = {k: v[0] for k, v in fitted_lib.PER_IMAGE.items()}
  if vertices:
    trailing["vertices"] = (model.num_vertices, 3)
    dtypes["vertices"] = np.float32
  arrays = {}
  for key, shape in trailing.items():
    if rows:
      arrays[key] = np.stack([np.asarray(row[key]) for row in rows]).astype(dtypes[key])
    else:
      arrays[key] = np.zeros((0, *shape), dtypes[key])
  if vertices:
    arrays["triangles"] = np.asarray(model.triangles, np.int32)
  arrays |= {
    "image_size": np.int32(s),
    "visibility_classes": np.array(visibility.CLASSES),
    **{k: np.array(str(provenance[k])) for k in ("model", "source", "mask_source")},
  }
  fitted_lib.write_fitted(os.path.join(out, "fitted.npz"), arrays)


def export_fitted(
  workdir: str,
  images: str,
  out: str,
  *,
  split: str = "all",
  now: bool = False,
  vertices: bool = False,
  batch_size: int = 8,
  image_size: int | None = None,
  model: str | None = None,
  detector=None,
  recon=None,
) -> dict:
  """Reconstructs every image of ``images`` and writes the files of the module docstring.

  Args:
    workdir: training workdir (chain or stage); ignored when ``recon`` is given.
    images: an image root, a folder of photos, or one photo.
    out: output directory.
    split: the CSV split of an image root.
    now: also write the NoW submission layout.
    vertices: also store the meshes ``(N, V, 3)`` in ``fitted.npz``.
    batch_size: images per compiled call.
    image_size: side the networks see (default: the training side).
    model: face-model spec overriding the workdir's (must have its coefficient counts).
    detector: ``photo -> (landmarks (68, 2) or None, faces)`` for photos without landmarks
      (default: dlib, built when first needed).
    recon: a ready :class:`~focus_jax.reconstruct.Reconstructor` (instead of ``workdir``).

  Returns:
    The ``report.json`` record: ``images`` (inputs), ``exported`` (count), ``names``,
    ``several_faces_used_largest``, ``failed`` (``[{image, error}]``), ``seconds`` and
    ``images_per_second`` (reading, reconstructing and writing, compilation included),
    ``source``.

  Raises:
    ValueError: when nothing can be exported at all (no checkpoint, mismatched face model, no
      images); per-image problems are reported instead.
  """
  import time

  from focus_jax import reconstruct

  items, failures = _inputs(images, split)
  num_inputs = len(items) + len(failures)  # failures so far: bad CSV rows
  if recon is None:
    recon = reconstruct.Reconstructor.from_workdir(
      workdir, model=model, image_size=image_size, batch_size=batch_size
    )
  start = time.time()
  rows: list[dict] = []
  several: list[str] = []
  for first in range(0, len(items), recon.batch_size):
    loaded = []
    for item in items[first : first + recon.batch_size]:
      try:
        if detector is None and item.landmarks is None and not item.aligned:
          from focus_jax import prepare

          detector = prepare.LandmarkDetector()
        loaded.append((item, _load(item, recon.image_size, detector)))
        if loaded[-1][1].get("faces", 1) > 1:
          several.append(item.name)
      except _ImageError as e:
        failures.append({"image": item.name, "error": str(e)})
    if loaded:
      result = recon(np.stack([d["image"] for _, d in loaded]))
      rows += write_batch(out, recon.model, loaded, result, now=now, vertices=vertices)
  seconds = time.time() - start
  source = recon.source + (f" (step {recon.step})" if recon.step is not None else "")
  provenance = {"model": recon.model_spec, "source": source, "mask_source": recon.mask_source}
  write_npz(out, recon.model, recon.image_size, rows, provenance, vertices=vertices)
  names = [row["names"] for row in rows]
  report = {
    "images": num_inputs,
    "exported": len(names),
    "failed": failures,
    "names": names,
    "several_faces_used_largest": several,
    "seconds": round(seconds, 3),
    "images_per_second": round(len(names) / seconds, 3) if seconds > 0 else None,
    "source": source,
  }
  files.write_json(os.path.join(out, "report.json"), report)
  return report


# What a main reports in one line instead of a traceback: bad input, or a missing optional extra.
USER_ERRORS = (ImportError, ValueError, FileNotFoundError)


def report_error(error: Exception) -> int:
  """Prints one of :data:`USER_ERRORS` for the user; returns the exit status (2: a missing
  dependency, 1: bad input)."""
  print(f"error: {error}", file=sys.stderr)
  return 2 if isinstance(error, ImportError) else 1


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m focus_jax.export",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--workdir", default="", help="trained workdir (chain or stage)")
  parser.add_argument("--images", default="", help="image root, folder of photos, or one photo")
  parser.add_argument("--out", default="out/export", help="output directory")
  parser.add_argument("--split", default="all", help="CSV split of an image root (default: all)")
  parser.add_argument("--now", action="store_true", help="also write the NoW submission layout")
  parser.add_argument("--vertices", action="store_true", help="store meshes in fitted.npz")
  parser.add_argument("--batch_size", type=int, default=8, help="images per compiled call")
  parser.add_argument("--image_size", type=int, default=0, help="network side (0: training's)")
  parser.add_argument(
    "--model-only",
    "--model_only",
    dest="model_only",
    action="store_true",
    help="export the face model's mean and random faces (the default without --workdir)",
  )
  parser.add_argument(
    "--model",
    default="",
    help="face model: embedded | embedded-bfm | ict | BFM h5 path (with --workdir: override "
    "the workdir's, same coefficient counts)",
  )
  parser.add_argument(
    "--num", type=int, default=7, help="--model-only: random faces besides the mean face"
  )
  parser.add_argument("--seed", type=int, default=0, help="--model-only: random seed")
  args = parser.parse_args(argv)
  if args.model_only or not args.workdir:
    summary = export(args.out, args.model or "embedded", args.num, args.seed)
    print(
      f"model {summary['model']}: {summary['vertices']} vertices, {summary['triangles']} "
      f"triangles; wrote {summary['faces']} faces (.obj, _lmk7.npy, _coeffs.npz) and "
      f"renders.png to {args.out}"
    )
    return 0
  if not args.images:
    parser.error("--workdir needs --images (an image root, a folder of photos or a photo)")
  from focus_jax import train

  train.quiet_third_party(None)
  try:
    report = export_fitted(
      args.workdir,
      args.images,
      args.out,
      split=args.split,
      now=args.now,
      vertices=args.vertices,
      batch_size=args.batch_size,
      image_size=args.image_size or None,
      model=args.model or None,
    )
  except USER_ERRORS as e:
    return report_error(e)
  for failure in report["failed"]:
    print(f"not exported: {failure['image']}: {failure['error']}", file=sys.stderr)
  print(
    f"exported {report['exported']} of {report['images']} images from {report['source']} to "
    f"{args.out} ({report['images_per_second']} images/s); {len(report['failed'])} failed "
    f"(listed in {os.path.join(args.out, 'report.json')})"
  )
  return 1 if report["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
