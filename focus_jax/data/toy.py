"""Toy image roots with exactly known landmarks, for tests, benchmarks and smoke runs.

Each image is a plain gradient with a dot drawn at each of the 68 landmarks of the standard face
(``assets/standard_face_lm68.csv``) placed by a random similarity, so that landmark positions are
known to the pixel and visible in the image. Optionally a ground-truth mask (a disc over the
face with a rectangular "occluder" cut out) is written beside each image.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from focus_jax.data import layout
from focus_jax.facemodels import landmarks as ibug


def standard_landmarks_2d() -> np.ndarray:
  """The standard face's 68 landmarks ``(68, 2)`` in mm, x right, y down, centred."""
  lm = ibug.standard_landmarks()[:, :2] * np.array([1.0, -1.0])
  return lm - lm.mean(0)


def draw_dots(image: np.ndarray, points: np.ndarray, radius: int = 1) -> np.ndarray:
  """Draws white dots (pixel-exact squares of side ``2 radius + 1``) at ``points (N, 2)``."""
  out = image.copy()
  for x, y in np.rint(points).astype(int):
    out[max(y - radius, 0) : y + radius + 1, max(x - radius, 0) : x + radius + 1] = 255
  return out


def make_sample(rng: np.random.Generator, width: int, height: int):
  """One toy photo ``(H, W, 3)`` uint8, landmarks ``(68, 2)`` float32 and mask ``(H, W)`` uint8."""
  size = min(width, height)
  scale = size / 230.0 * rng.uniform(0.9, 1.1)  # face about 0.6 of the image
  angle = np.deg2rad(rng.uniform(-8, 8))
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  centre = np.array([width, height]) / 2.0 + rng.uniform(-0.05, 0.05, 2) * size
  lm = (standard_landmarks_2d() @ rot.T) * scale + centre
  lm = np.rint(lm).astype(np.float32)  # integer landmarks, like the original CSVs
  yy, xx = np.mgrid[0:height, 0:width]
  base = rng.uniform(40, 120, 3)
  grad = rng.uniform(-0.3, 0.3, 2)
  image = base[None, None] + (grad[0] * xx + grad[1] * yy)[..., None]
  image = np.clip(image, 0, 200).astype(np.uint8)
  image = draw_dots(image, lm, radius=max(1, size // 128))
  mask = np.zeros((height, width), np.uint8)
  cv2.ellipse(
    mask, tuple(int(v) for v in centre), (int(0.45 * size), int(0.55 * size)), 0, 0, 360, 1, -1
  )
  x0, y0 = int(centre[0]), int(centre[1])
  mask[y0 : y0 + size // 5, x0 - size // 4 : x0] = 0  # an occluded rectangle
  return image, lm, mask


def write_image_root(
  root: str,
  num: int,
  size: tuple[int, int] = (96, 80),
  seed: int = 0,
  masks: bool = True,
  splits: dict[str, slice] | None = None,
) -> list[str]:
  """Writes a toy ``image_root`` with ``num`` PNG photos of ``size = (width, height)``.

  Args:
    root: output directory.
    num: number of images.
    size: photo ``(width, height)``.
    seed: random seed.
    masks: also write ``NAME_visible_skin_mask.png`` files.
    splits: ``{split: slice of the image list}``; default: all images in ``train`` and ``all``.

  Returns:
    The image names.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, layout.IMAGE_DIR), exist_ok=True)
  rows = []
  for i in range(num):
    image, lm, mask = make_sample(rng, *size)
    name = f"toy_{i:04d}.png"
    path = os.path.join(root, layout.IMAGE_DIR, name)
    cv2.imwrite(path, image[..., ::-1])
    if masks:
      cv2.imwrite(layout.mask_path_for(path), mask * 255)
    rows.append((name, lm))
  splits = splits or {"train": slice(None), "all": slice(None)}
  for split, part in splits.items():
    layout.write_csv(layout.csv_path(root, split), rows[part], decimals=0)
  return [n for n, _ in rows]
