"""Every file focus_jax writes goes through here: one atomic write, OBJ and array readers/writers.

A write goes to a temporary file beside the target, which is then renamed over it, so a reader
(or a crash) never sees a half-written file. The file gets the permissions a plain ``open``
would give (``0o666`` minus the process umask), not ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

import numpy as np


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def atomic_write(path: str | os.PathLike, write) -> None:
  """Calls ``write(binary file)`` on a temporary file beside ``path``, then renames it."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically."""
  atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes UTF-8 ``text`` to ``path`` atomically (newlines as given)."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, record, indent: int = 1) -> None:
  """Writes ``record`` as JSON (non-JSON values through ``str``) atomically."""
  write_text(path, json.dumps(record, indent=indent, default=str) + "\n")


def save_npz(path: str | os.PathLike, arrays: dict, compressed: bool = False) -> None:
  """Writes a dict of arrays as ``.npz`` atomically."""
  save = np.savez_compressed if compressed else np.savez
  atomic_write(path, lambda f: save(f, **arrays))


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes an ``(H, W)`` or ``(H, W, 3)`` RGB uint8 image as PNG atomically."""
  import cv2

  image = np.asarray(image)
  data = image[..., ::-1] if image.ndim == 3 else image  # cv2 encodes BGR
  ok, encoded = cv2.imencode(".png", np.ascontiguousarray(data))
  if not ok:
    raise OSError(f"could not encode {path} as PNG (array {image.shape} {image.dtype})")
  write_bytes(path, encoded.tobytes())


def write_obj(
  path: str | os.PathLike, vertices: np.ndarray, triangles: np.ndarray, colors=None
) -> None:
  """Writes a mesh as OBJ (``v x y z`` and 1-based ``f i j k`` lines), atomically.

  Args:
    path: output file.
    vertices: ``(V, 3)`` float vertices.
    triangles: ``(F, 3)`` int 0-based triangle indices.
    colors: optional ``(V, 3)`` RGB in [0, 1] appended to the ``v`` lines. Leave them out for
      NoW submissions: the NoW mesh loader rejects ``v x y z r g b``.
  """
  vertices = np.asarray(vertices, np.float64)
  triangles = np.asarray(triangles)
  if vertices.ndim != 2 or vertices.shape[1] != 3:
    raise ValueError(f"{path}: vertices must have shape (V, 3), got {vertices.shape}")
  if triangles.ndim != 2 or triangles.shape[1] != 3:
    raise ValueError(f"{path}: triangles must have shape (F, 3), got {triangles.shape}")

  rows = vertices if colors is None else np.concatenate([vertices, np.asarray(colors)], 1)

  def write(f):
    np.savetxt(f, rows, fmt="v" + " %.6f" * rows.shape[1])
    np.savetxt(f, triangles.astype(np.int64) + 1, fmt="f %d %d %d")

  atomic_write(os.fspath(path), write)


def read_obj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads vertices ``(V, 3)`` float64 and triangles ``(F, 3)`` int64 (0-based) of an OBJ.

  Accepts ``v x y z [r g b]`` and ``f a b c`` faces with ``a/b/c`` index forms; polygons with
  more than 3 corners are fanned into triangles. Other lines are ignored.

  Raises:
    ValueError: naming the file and line for malformed vertex/face lines or bad indices.
  """
  path = os.fspath(path)
  vertices, faces = [], []
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      try:
        if parts[0] == "v":
          if len(parts) < 4:
            raise ValueError("expected 'v x y z'")
          vertices.append([float(v) for v in parts[1:4]])
        elif parts[0] == "f":
          if len(parts) < 4:
            raise ValueError("expected at least 3 face corners")
          idx = [int(p.split("/")[0]) for p in parts[1:]]
          idx = [i - 1 if i > 0 else len(vertices) + i for i in idx]
          faces.extend([idx[0], idx[j], idx[j + 1]] for j in range(1, len(idx) - 1))
      except ValueError as e:
        raise ValueError(f"{path}:{line_no}: malformed '{parts[0]}' line ({e})") from e
  v = np.asarray(vertices, np.float64).reshape(-1, 3)
  t = np.asarray(faces, np.int64).reshape(-1, 3)
  if t.size and (t.min() < 0 or t.max() >= v.shape[0]):
    raise ValueError(f"{path}: face indices outside the {v.shape[0]} vertices")
  return v, t


_VERTEX_LINE = re.compile(rb"^v[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)", re.MULTILINE)
_FACE_LINE = re.compile(rb"^f[ \t]+(.*)$", re.MULTILINE)


def read_obj_vertices(path: str) -> np.ndarray:
  """The ``v`` lines of an OBJ file as ``(N, 3)`` float64, read in bulk (one regular expression
  over the file: fast for the hundreds of large OBJ files of a face model's blend shapes)."""
  with open(path, "rb") as f:
    rows = _VERTEX_LINE.findall(f.read())
  if not rows:
    raise ValueError(f"{path}: no 'v x y z' vertex lines (expected an OBJ mesh)")
  try:
    return np.array(rows, dtype=np.float64)
  except ValueError as e:
    raise ValueError(f"{path}: unreadable vertex coordinates ({e})") from e


def read_obj_polygons(path: str, n_vertices: int) -> list[np.ndarray]:
  """The ``f`` lines of an OBJ file as 0-based vertex index arrays (``v``, ``v/vt``, ``v//vn``)."""
  with open(path, "rb") as f:
    lines = _FACE_LINE.findall(f.read())
  polygons = []
  for row, line in enumerate(lines):
    try:
      idx = np.array([int(tok.split(b"/")[0]) for tok in line.split()], np.int64)
    except ValueError as e:
      raise ValueError(f"{path}: face line {row} ({line[:60]!r}) is not 'f v[/vt[/vn]] ...'") from e
    if idx.size < 3 or idx.min() < 1 or idx.max() > n_vertices:
      raise ValueError(
        f"{path}: face line {row} needs >= 3 corners with indices in [1, {n_vertices}] (relative "
        f"negative indices are not supported), got {line[:60]!r}"
      )
    polygons.append(idx - 1)
  if not polygons:
    raise ValueError(f"{path}: no 'f' face lines (expected the generic neutral mesh)")
  return polygons
