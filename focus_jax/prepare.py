"""From a folder of photos to a training-ready ``image_root`` (SPEC §8 layout).

    python -m focus_jax.prepare --images DIR --out IMAGE_ROOT [--split 0.8,0.1,0.1]

Every photo under ``--images`` (jpg, jpeg, png, bmp; recursively) is searched for faces with
dlib's HOG detector; the 68 iBUG landmarks of the largest face come from dlib's shape predictor
shipped by ``face_recognition_models`` (``pip install 'focus-jax[landmarks]'``; the predictor
was trained on iBUG 300-W, whose licence excludes commercial use). Photos with several faces use
the largest and are listed in the report; photos without a face are listed and left out.

Output: ``IMAGE_ROOT/Dataset/<name>`` (copied, or symlinked with ``--link``), masks found beside
the photos (``NAME_visible_skin_mask.png``) copied too, ``{train,val,test,all}_landmarks.csv``
and ``prepare_report.json``. Landmarks are cached in ``IMAGE_ROOT/.landmarks.jsonl`` (one line
per photo, appended as it goes), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys

import numpy as np

from focus_jax import files
from focus_jax.data import layout

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
INSTALL_HINT = "pip install 'focus-jax[landmarks]'"
CACHE_FILE = ".landmarks.jsonl"
REPORT_FILE = "prepare_report.json"


def _predictor_path() -> str:
  """The 68-point model file of ``face_recognition_models`` (found without importing it: its
  ``__init__`` needs ``pkg_resources``, which recent setuptools no longer ship)."""
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("face_recognition_models is not installed")
  for base in spec.submodule_search_locations:
    path = os.path.join(base, "models", "shape_predictor_68_face_landmarks.dat")
    if os.path.isfile(path):
      return path
  raise ImportError("face_recognition_models has no shape_predictor_68_face_landmarks.dat")


class LandmarkDetector:
  """dlib HOG face detector + 68-point shape predictor.

  Args:
    upsample: detector upsampling steps (1 finds faces down to ~40 px).

  Raises:
    ImportError: with the install command when dlib or the predictor is missing.
  """

  def __init__(self, upsample: int = 1):
    try:
      import dlib

      path = _predictor_path()
    except ImportError as e:
      raise ImportError(
        f"68-point landmark detection needs dlib and face_recognition_models ({e}). "
        f"Install them with: {INSTALL_HINT}"
      ) from e
    self._detector = dlib.get_frontal_face_detector()
    self._predictor = dlib.shape_predictor(path)
    self._upsample = upsample

  def __call__(self, image: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Landmarks of the largest face.

    Args:
      image: ``(H, W, 3)`` uint8 RGB.

    Returns:
      ``(landmarks (68, 2) float32 or None, number of faces found)``.
    """
    rects = self._detector(np.ascontiguousarray(image), self._upsample)
    if len(rects) == 0:
      return None, 0
    rect = max(rects, key=lambda r: r.width() * r.height())
    shape = self._predictor(image, rect)
    lm = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
    return lm, len(rects)


def find_images(directory: str) -> list[str]:
  """Photos under ``directory`` (relative paths, sorted), masks excluded."""
  found = []
  for base, _, names in os.walk(directory):
    for f in names:
      if f.lower().endswith(IMAGE_EXTENSIONS) and not f.endswith(layout.MASK_SUFFIX):
        found.append(os.path.relpath(os.path.join(base, f), directory))
  return sorted(found)


def _output_name(relative: str) -> str:
  """A flat, CSV-safe name in ``Dataset/`` for a photo's relative path."""
  return relative.replace(os.sep, "__").replace(",", "_")


def _read_cache(path: str) -> dict[str, dict]:
  cache = {}
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        line = line.strip()
        if line:
          try:
            entry = json.loads(line)
          except json.JSONDecodeError:
            continue  # a line cut by an interruption: that photo is detected again
          cache[entry["source"]] = entry
  return cache


def _place(src: str, dst: str, link: bool) -> None:
  """Copies (or symlinks) ``src`` to ``dst`` unless ``dst`` exists; either appears whole."""
  if os.path.lexists(dst):
    return
  if link:
    tmp = f"{dst}.tmp{os.getpid()}"
    os.symlink(os.path.abspath(src), tmp)
    os.replace(tmp, dst)
    return

  def copy(f):
    with open(src, "rb") as source:
      shutil.copyfileobj(source, f)

  files.atomic_write(dst, copy)


def prepare(
  images: str,
  out: str,
  split: tuple[float, ...] = (0.8, 0.1, 0.1),
  seed: int = 0,
  link: bool = False,
  upsample: int = 1,
  detector=None,
  progress: bool = True,
) -> dict:
  """Detects landmarks for every photo of ``images`` and writes the layout to ``out``.

  Args:
    images: input directory.
    out: the ``image_root`` to write.
    split: train, val, test fractions (normalised).
    seed: seed of the split.
    link: symlink the photos instead of copying them.
    upsample: dlib detector upsampling.
    detector: a callable ``image -> (landmarks or None, n_faces)`` (default: dlib).
    progress: show a tqdm progress bar.

  Returns:
    The report: counts, photos without a face, photos with several faces, undecodable photos.
  """
  if not os.path.isdir(images):
    raise ValueError(f"--images {images}: not a directory")
  if len(split) != 3:
    raise ValueError(f"--split needs three fractions (train, val, test), got {split}")
  sources = find_images(images)
  if not sources:
    raise ValueError(f"--images {images}: no {'/'.join(IMAGE_EXTENSIONS)} files found")
  detector = detector or LandmarkDetector(upsample)
  dataset = os.path.join(out, layout.IMAGE_DIR)
  os.makedirs(dataset, exist_ok=True)
  cache_path = os.path.join(out, CACHE_FILE)
  cache = _read_cache(cache_path)
  todo = [s for s in sources if s not in cache]
  log.info(
    "%d photos, %d already done, %d to detect", len(sources), len(sources) - len(todo), len(todo)
  )

  from tqdm import tqdm

  with open(cache_path, "a") as cache_file:
    for source in tqdm(todo, desc="landmarks", unit="img", disable=not progress):
      entry = {"source": source, "name": _output_name(source)}
      try:
        image = layout.load_image(os.path.join(images, source))
      except (OSError, ValueError) as e:
        entry.update(status="undecodable", error=str(e))
      else:
        landmarks, faces = detector(image)
        entry.update(faces=int(faces), size=[int(image.shape[1]), int(image.shape[0])])
        if landmarks is None:
          entry["status"] = "no_face"
        else:
          entry.update(status="ok", landmarks=np.round(landmarks, 2).tolist())
      cache_file.write(json.dumps(entry) + "\n")
      cache_file.flush()  # resumable: every finished photo is on disk
      cache[source] = entry

  rows = {}
  for source in sources:
    entry = cache[source]
    if entry["status"] != "ok":
      continue
    src = os.path.join(images, source)
    dst = os.path.join(dataset, entry["name"])
    _place(src, dst, link)
    mask = layout.mask_path_for(src)
    if os.path.isfile(mask):
      _place(mask, layout.mask_path_for(dst), link)
    rows[entry["name"]] = np.asarray(entry["landmarks"], np.float32)

  names = sorted(rows)
  parts = layout.split_names(names, tuple(split), seed)
  for split_name, part in zip(("train", "val", "test"), parts, strict=True):
    if part:  # an empty CSV would be an empty split
      layout.write_csv(layout.csv_path(out, split_name), [(n, rows[n]) for n in part])
  layout.write_csv(layout.csv_path(out, "all"), [(n, rows[n]) for n in names])

  def listed(status):
    return [cache[s]["source"] for s in sources if cache[s]["status"] == status]

  report = {
    "images": len(sources),
    "with_landmarks": len(names),
    "no_face": listed("no_face"),
    "undecodable": listed("undecodable"),
    "several_faces_used_largest": [
      s for s in sources if cache[s]["status"] == "ok" and cache[s]["faces"] > 1
    ],
    "splits": {k: len(p) for k, p in zip(("train", "val", "test"), parts, strict=True)},
  }
  files.write_json(os.path.join(out, REPORT_FILE), report)
  return report


def _fractions(text: str) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from e
  if len(values) != 3:
    raise argparse.ArgumentTypeError(f"expected three fractions (train,val,test), got {text!r}")
  return values


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m focus_jax.prepare", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--images", required=True, help="folder of photos (searched recursively)")
  parser.add_argument("--out", required=True, help="image_root to write")
  parser.add_argument("--split", type=_fractions, default=(0.8, 0.1, 0.1), help="train,val,test")
  parser.add_argument("--seed", type=int, default=0, help="seed of the split")
  parser.add_argument("--link", action="store_true", help="symlink photos instead of copying")
  parser.add_argument("--upsample", type=int, default=1, help="dlib detector upsampling")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    report = prepare(args.images, args.out, args.split, args.seed, args.link, args.upsample)
  except ImportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(
    f"{report['with_landmarks']} of {report['images']} photos landmarked; "
    f"{len(report['no_face'])} without a face, {len(report['undecodable'])} undecodable, "
    f"{len(report['several_faces_used_largest'])} with several faces (largest used). "
    f"Splits {report['splits']}. Report: {os.path.join(args.out, REPORT_FILE)}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
