"""The original FOCUS data layout (SPEC §8): reading, validation and writing.

Layout of an ``image_root``::

    image_root/
      Dataset/NAME.jpg | NAME.png          raw photos (any size)
      Dataset/NAME_visible_skin_mask.png   optional ground-truth mask, 1 (or 255) = visible skin
      train_landmarks.csv, val_landmarks.csv, test_landmarks.csv, all_landmarks.csv
      groundtruth.npz                      optional (synthetic data): per-image GT arrays

CSV rows are ``filename,x1,y1,...,x68,y68``: the file name relative to ``Dataset/``, then 68
landmarks in raw pixel coordinates (x = column, y = row, pixel centres at integers). The
original's CSVs have no header and integer coordinates; a header row (first row, non-numeric
coordinates) and float coordinates are accepted too.

Validation runs up front over a whole CSV and collects every problem with the CSV file and its
1-based line number: wrong field count, non-numeric or non-finite values, missing or
undecodable image, landmarks outside the image, mask size mismatch, duplicated file name.
Policy ``"fail"`` raises one ``ValueError`` listing them; ``"skip"`` drops the bad rows with a
warning that counts them. Rows are never dropped silently.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from focus_jax import files

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")
IMAGE_DIR = "Dataset"
MASK_SUFFIX = "_visible_skin_mask.png"
GROUNDTRUTH_FILE = "groundtruth.npz"
NUM_LANDMARKS = 68
NUM_FIELDS = 1 + 2 * NUM_LANDMARKS
POLICIES = ("fail", "skip")
_MAX_LISTED = 20


@dataclasses.dataclass(frozen=True)
class Record:
  """One valid CSV row.

  Attributes:
    name: file name as written in the CSV (relative to ``Dataset/``).
    image_path: resolved path of the image.
    landmarks: ``(68, 2)`` float32 raw pixel landmarks.
    mask_path: path of ``NAME_visible_skin_mask.png`` or ``None``.
    size: raw image ``(width, height)``.
    csv_file: the CSV it came from.
    row: its 1-based line number.
  """

  name: str
  image_path: str
  landmarks: np.ndarray
  mask_path: str | None
  size: tuple[int, int]
  csv_file: str
  row: int


@dataclasses.dataclass(frozen=True)
class Problem:
  """A bad CSV row: where it is and what is wrong."""

  csv_file: str
  row: int
  message: str

  def __str__(self) -> str:
    return f"{self.csv_file}, row {self.row}: {self.message}"


@dataclasses.dataclass
class ValidationReport:
  """Result of validating one CSV: the good records and every problem found."""

  csv_file: str
  records: list[Record]
  problems: list[Problem]

  def summary(self) -> str:
    """A readable report: counts, then the problems (the first 20, then a count)."""
    lines = [
      f"{self.csv_file}: {len(self.records)} valid rows, {len(self.problems)} bad rows",
      *(f"  {p}" for p in self.problems[:_MAX_LISTED]),
    ]
    if len(self.problems) > _MAX_LISTED:
      lines.append(f"  ... and {len(self.problems) - _MAX_LISTED} more")
    return "\n".join(lines)


def mask_path_for(image_path: str) -> str:
  """``Dataset/NAME.ext`` -> ``Dataset/NAME_visible_skin_mask.png``."""
  return os.path.splitext(image_path)[0] + MASK_SUFFIX


def csv_path(image_root: str, split: str) -> str:
  """Path of ``{split}_landmarks.csv`` in ``image_root``."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  return os.path.join(image_root, f"{split}_landmarks.csv")


def available_splits(image_root: str) -> list[str]:
  """The splits whose CSV exists in ``image_root``."""
  return [s for s in SPLITS if os.path.isfile(csv_path(image_root, s))]


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def _resolve(image_root: str, name: str) -> str:
  """The image path of a CSV file name: under ``Dataset/`` first, then the root, or absolute."""
  name = name.replace("//", "/")
  if os.path.isabs(name):
    return name
  candidate = os.path.join(image_root, IMAGE_DIR, name)
  if not os.path.exists(candidate) and os.path.exists(os.path.join(image_root, name)):
    return os.path.join(image_root, name)
  return candidate


def _check_row(fields: list[str], image_root: str, csv_file: str, row: int, decode: bool):
  """Validates one row; returns a :class:`Record` or the problem's message."""
  if len(fields) != NUM_FIELDS:
    return f"expected {NUM_FIELDS} fields (filename + 68 x,y pairs), got {len(fields)}"
  name = fields[0].strip()
  if not name:
    return "empty filename"
  values = []
  for i, text in enumerate(fields[1:]):
    try:
      v = float(text)
    except ValueError:
      axis = "xy"[i % 2]
      return f"field {i + 2} ({axis}{i // 2 + 1}) is not a number: {text.strip()!r}"
    if not math.isfinite(v):
      return f"field {i + 2} ({'xy'[i % 2]}{i // 2 + 1}) is not finite: {text.strip()!r}"
    values.append(v)
  landmarks = np.asarray(values, np.float32).reshape(NUM_LANDMARKS, 2)
  path = _resolve(image_root, name)
  if not os.path.isfile(path):
    return f"image {name!r} not found (looked for {path})"
  try:
    with Image.open(path) as img:
      size = img.size
      if decode:
        img.load()
      else:
        img.verify()
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    return f"image {name!r} cannot be decoded ({type(e).__name__}: {e})"
  width, height = size
  # Pixel extents: a pixel centre at 0 covers [-0.5, 0.5].
  outside = (
    (landmarks[:, 0] < -0.5)
    | (landmarks[:, 0] > width - 0.5)
    | (landmarks[:, 1] < -0.5)
    | (landmarks[:, 1] > height - 0.5)
  )
  if outside.any():
    k = int(np.flatnonzero(outside)[0])
    return (
      f"{int(outside.sum())} landmarks outside the {width}x{height} image "
      f"(first: landmark {k + 1} at ({landmarks[k, 0]:g}, {landmarks[k, 1]:g}))"
    )
  mask = mask_path_for(path)
  if os.path.isfile(mask):
    try:
      with Image.open(mask) as m:
        mask_size = m.size
    except (UnidentifiedImageError, OSError) as e:
      return f"mask {os.path.basename(mask)!r} cannot be decoded ({e})"
    if mask_size != size:
      mw, mh = mask_size
      return f"mask {os.path.basename(mask)!r} is {mw}x{mh}, image is {width}x{height}"
  else:
    mask = None
  return Record(name, path, landmarks, mask, (width, height), csv_file, row)


def validate_csv(csv_file: str, image_root: str | None = None, decode: bool = False):
  """Validates every row of one landmarks CSV.

  Args:
    csv_file: path of the CSV.
    image_root: the root that holds ``Dataset/`` (default: the CSV's directory).
    decode: fully decode every image (slower; default: header + integrity check only).

  Returns:
    A :class:`ValidationReport`.
  """
  if not os.path.isfile(csv_file):
    raise ValueError(f"{csv_file}: landmarks CSV not found")
  image_root = image_root or os.path.dirname(os.path.abspath(csv_file))
  records, problems, seen = [], [], {}
  with open(csv_file, newline="") as f:
    for row, fields in enumerate(csv.reader(f), start=1):
      if not fields or all(not x.strip() for x in fields):
        continue
      if row == 1 and len(fields) > 1 and not any(_is_number(x) for x in fields[1:]):
        log.info("%s: row 1 is a header, skipped", csv_file)
        continue
      result = _check_row(fields, image_root, csv_file, row, decode)
      if isinstance(result, str):
        problems.append(Problem(csv_file, row, result))
      elif result.name in seen:
        problems.append(
          Problem(csv_file, row, f"duplicate of row {seen[result.name]} ({result.name!r})")
        )
      else:
        seen[result.name] = row
        records.append(result)
  return ValidationReport(csv_file, records, problems)


def read_split(
  image_root: str, split: str, policy: str = "fail", decode: bool = False
) -> list[Record]:
  """Reads and validates ``{split}_landmarks.csv`` of ``image_root``.

  Args:
    image_root: the layout's root directory.
    split: one of ``train``, ``val``, ``test``, ``all``.
    policy: ``"fail"`` (raise on any bad row) or ``"skip"`` (drop bad rows, warn with a count).
    decode: fully decode every image during validation.

  Returns:
    The valid :class:`Record` list in CSV order.

  Raises:
    ValueError: with the validation report, under ``"fail"`` when a row is bad; also when no
      valid row is left.
  """
  if policy not in POLICIES:
    raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
  report = validate_csv(csv_path(image_root, split), image_root, decode)
  if report.problems:
    if policy == "fail":
      raise ValueError("invalid rows (use policy 'skip' to drop them):\n" + report.summary())
    log.warning("skipping %d bad rows:\n%s", len(report.problems), report.summary())
  if not report.records:
    raise ValueError(f"{report.csv_file}: no valid rows")
  return report.records


def load_image(path: str) -> np.ndarray:
  """An image file as ``(H, W, 3)`` uint8 RGB."""
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB"))


def load_mask(path: str) -> np.ndarray:
  """A mask file as ``(H, W)`` uint8 in ``{0, 1}`` (a value above half its range counts as 1)."""
  with Image.open(path) as img:
    m = np.asarray(img)
  if m.ndim == 3:
    m = m[..., 0]
  high = 127 if m.max() > 1 else 0
  return (m > high).astype(np.uint8)


def format_row(name: str, landmarks: np.ndarray, decimals: int = 2) -> str:
  """One CSV line ``name,x1,y1,...`` (no newline) for ``landmarks (68, 2)``."""
  lm = np.asarray(landmarks, np.float64).reshape(-1)
  if lm.size != 2 * NUM_LANDMARKS:
    raise ValueError(f"{name}: expected 68 landmarks, got {lm.size // 2}")
  if "," in name or "\n" in name:
    raise ValueError(f"{name!r}: file names in the CSV cannot contain ',' or newlines")
  return ",".join([name, *(f"{v:.{decimals}f}" for v in lm)])


def write_csv(path: str, rows: list[tuple[str, np.ndarray]], decimals: int = 2) -> None:
  """Writes a landmarks CSV (no header, like the original) atomically.

  Args:
    path: output file.
    rows: ``(name, landmarks (68, 2) float)`` pairs.
    decimals: digits after the point.
  """
  # "\n" line ends on every platform: the text is written as bytes, untranslated.
  files.write_text(path, "".join(format_row(n, lm, decimals) + "\n" for n, lm in rows))


def split_names(names: list[str], fractions: tuple[float, ...], seed: int = 0) -> list[list[str]]:
  """Splits ``names`` into ``len(fractions)`` disjoint lists (deterministic for the seed).

  The names are sorted, permuted with ``seed``, and cut at the cumulative fractions (which are
  normalised to sum to 1); each list is returned sorted.
  """
  f = np.asarray(fractions, np.float64)
  if f.ndim != 1 or f.size == 0 or np.any(f < 0) or f.sum() <= 0:
    raise ValueError(f"split fractions must be non-negative with a positive sum, got {fractions}")
  ordered = sorted(names)
  perm = np.random.default_rng(seed).permutation(len(ordered))
  cuts = np.rint(np.cumsum(f / f.sum()) * len(ordered)).astype(int)
  parts, start = [], 0
  for end in cuts:
    parts.append(sorted(ordered[i] for i in perm[start:end]))
    start = end
  return parts
