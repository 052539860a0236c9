"""Mesh and array files: OBJ read/write and atomic writes (temp file, then rename)."""

from __future__ import annotations

import os
import tempfile

import numpy as np


def atomic_write(path: str, write) -> None:
  """Calls ``write(binary file)`` on a temporary file beside ``path``, then renames it."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


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
