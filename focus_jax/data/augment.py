"""Training augmentation (SPEC §7): shift, scale, rotation and horizontal flip.

Conventions:

- Works on aligned samples: image ``(S, S, 3)`` uint8, landmarks ``(68, 2)`` float32 pixel
  ``(x, y)`` with pixel centres at integers, optional mask ``(S, S)`` uint8 in ``{0, 1}``.
- One ``(2, 3)`` affine (output pixel = ``A @ (x, y, 1)``) moves image, landmarks and mask. It is
  ``centre @ scale @ rotation @ shift @ flip @ uncentre`` about the image centre ``(S - 1) / 2``
  (the original's composition order; its centre is ``S // 2``, which makes its flip of the
  landmarks one pixel off the flipped image; here a flip maps column ``i`` to ``S - 1 - i``
  exactly, so flipping twice is the identity).
- Ranges: integer shifts in ``[-10, 10]`` px, scale in ``[0.9, 1.1]``, rotation in ``[-10, 10]``
  degrees, flip with probability 0.5; on a flip the landmarks are permuted with
  :data:`FLIP_PERMUTATION` so that index ``k`` keeps its iBUG-68 meaning.
- Sampling is a pure function of ``(seed, epoch, index)``: the same triple gives the same
  transform on every host and in every worker.
- Images are resampled bicubically (the original's choice) with zero fill; masks bilinearly,
  then thresholded at 0.5.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


def _flip_permutation() -> np.ndarray:
  perm = np.arange(68)
  perm[0:17] = np.arange(16, -1, -1)  # jaw
  perm[17:27] = np.arange(26, 16, -1)  # brows swap and reverse
  perm[31:36] = np.arange(35, 30, -1)  # nose bottom
  perm[36:40] = [45, 44, 43, 42]  # eyes: outer corner <-> outer corner, upper lids
  perm[40:42] = [47, 46]
  perm[42:46] = [39, 38, 37, 36]
  perm[46:48] = [41, 40]
  perm[48:55] = np.arange(54, 47, -1)  # outer lips, upper
  perm[55:60] = np.arange(59, 54, -1)  # outer lips, lower
  perm[60:65] = np.arange(64, 59, -1)  # inner lips, upper
  perm[65:68] = np.arange(67, 64, -1)  # inner lips, lower
  return perm


# After a horizontal flip, landmark k of the new image is landmark FLIP_PERMUTATION[k] moved.
FLIP_PERMUTATION = _flip_permutation()


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Ranges of the random transform (defaults: SPEC §7)."""

  shift_px: int = 10
  scale_delta: float = 0.1
  rotation_deg: float = 10.0
  flip_probability: float = 0.5


@dataclasses.dataclass(frozen=True)
class Transform:
  """One sampled transform: parameters and the affine they make."""

  shift: tuple[int, int]
  scale: float
  rotation_deg: float
  flip: bool
  size: int

  def affine(self) -> np.ndarray:
    """``(2, 3)`` float64: input pixel ``(x, y, 1)`` -> output pixel."""
    c = (self.size - 1) / 2.0
    uncentre = np.array([[1.0, 0, -c], [0, 1, -c], [0, 0, 1]])
    flip = np.diag([-1.0 if self.flip else 1.0, 1.0, 1.0])
    shift = np.array([[1.0, 0, self.shift[0]], [0, 1, self.shift[1]], [0, 0, 1]])
    a = np.deg2rad(self.rotation_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    scale = np.diag([self.scale, self.scale, 1.0])
    centre = np.array([[1.0, 0, c], [0, 1, c], [0, 0, 1]])
    return (centre @ scale @ rot @ shift @ flip @ uncentre)[:2]


def sample(
  seed: int, epoch: int, index: int, size: int, config: AugmentConfig = AugmentConfig()
) -> Transform:
  """The transform of example ``index`` in ``epoch`` for ``seed`` (deterministic)."""
  rng = np.random.default_rng([int(seed), int(epoch), int(index)])
  shift = rng.integers(-config.shift_px, config.shift_px, size=2, endpoint=True)
  scale = 1.0 + config.scale_delta * rng.uniform(-1.0, 1.0)
  rotation = config.rotation_deg * rng.uniform(-1.0, 1.0)
  flip = bool(rng.uniform() < config.flip_probability)
  return Transform((int(shift[0]), int(shift[1])), float(scale), float(rotation), flip, size)


def apply(
  transform: Transform,
  image: np.ndarray,
  landmarks: np.ndarray,
  mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """Applies one transform to a sample.

  Args:
    transform: from :func:`sample` (its ``size`` must match the image).
    image: ``(S, S, C)`` uint8 or float32.
    landmarks: ``(68, 2)`` float pixel coordinates.
    mask: optional ``(S, S)`` uint8 in ``{0, 1}``.

  Returns:
    ``(image, landmarks (68, 2) float32, mask)`` moved together; landmarks are permuted on a flip.
  """
  h, w = image.shape[:2]
  if (h, w) != (transform.size, transform.size):
    raise ValueError(f"image is {w}x{h}, the transform was sampled for size {transform.size}")
  affine = transform.affine()
  out = cv2.warpAffine(
    image, affine, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0
  )
  if out.ndim == 2 and image.ndim == 3:
    out = out[..., None]  # cv2 drops a single channel axis.
  lm = np.asarray(landmarks, np.float64) @ affine[:, :2].T + affine[:, 2]
  if transform.flip:
    lm = lm[FLIP_PERMUTATION]
  out_mask = None
  if mask is not None:
    moved = cv2.warpAffine(np.asarray(mask, np.float32), affine, (w, h), flags=cv2.INTER_LINEAR)
    out_mask = (moved >= 0.5).astype(np.uint8)
  return out, lm.astype(np.float32), out_mask
