"""Deep3DFaceRecon-style face alignment (SPEC §8) and its inverse.

Conventions:

- Raw landmarks are ``(68, 2)`` pixel ``(x, y)`` of the raw photo in iBUG-68 order, pixel centres
  at integer coordinates, y down (what the CSVs of the layout hold).
- The alignment is a uniform scale plus a translation: five points (the two eye centres, nose
  tip, two mouth corners) are fitted by least squares (POS) to the same five points of the
  standard 3D face (``assets/standard_face_lm68.csv``, units of 100 mm, y up); the raw image is
  resized by ``s = 102 / fitted scale`` and a ``224 x 224`` crop is cut around the fitted centre.
- :class:`AlignParams` holds Deep3DFaceRecon's ``trans_params = (w0, h0, s, tx, ty)`` where
  ``(tx, ty)`` is the fitted centre in a y-up frame (``ty`` measured as ``h0 - y``, as the original
  feeds ``H - y`` to the fit).
- The image is resized with PIL bicubic to ``(int(w0 s), int(h0 s))`` and cropped at
  ``(int(...), int(...))`` exactly as Deep3DFaceRecon's ``resize_n_crop_img`` (truncation, zero
  padding outside the photo), so aligned images equal the original's.
- Two landmark conventions: ``"deep3d"`` (default) reproduces the original's landmark formula,
  including its ``H - y`` flips (which are not ``H - 1 - y``) and its use of the untruncated
  crop corner; ``"pixel"`` maps landmarks with the exact affine of the image resampling instead
  (pixel centres follow pixel centres). They differ by a constant offset of up to about
  ``s`` pixels (one raw pixel: the ``H - y`` flips and PIL's half-pixel centres).
- Masks follow the image transform (bilinear, thresholded at 0.5, values in ``{0, 1}``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from focus_jax.facemodels import landmarks as ibug
from focus_jax.render import warp

TARGET_SIZE = 224
RESCALE_FACTOR = 102.0
LANDMARK_CONVENTIONS = ("deep3d", "pixel")


def standard_five_points() -> np.ndarray:
  """The standard face's five points ``(5, 3)`` in Deep3DFaceRecon's units (100 mm, y up)."""
  return ibug.five_points(ibug.standard_landmarks() / 100.0)


def pos_fit(points_2d: np.ndarray, points_3d: np.ndarray) -> tuple[np.ndarray, float]:
  """Least-squares affine camera from 3D to 2D points; returns translation and mean scale.

  Fits ``p = M X + t`` with a free ``(2, 3)`` matrix ``M`` (each image axis is an independent
  4-parameter linear least-squares problem), then ``scale = (|M_0| + |M_1|) / 2``.

  Args:
    points_2d: ``(N, 2)`` float image points (y up for the Deep3DFaceRecon fit).
    points_3d: ``(N, 3)`` float model points.

  Returns:
    ``(t (2,) float64, scale float)``.
  """
  p = np.asarray(points_2d, np.float64)
  x = np.asarray(points_3d, np.float64)
  design = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)  # (N, 4)
  solution, *_ = np.linalg.lstsq(design, p, rcond=None)  # (4, 2): one column per image axis
  rows = solution[:3].T  # (2, 3) = M
  scale = 0.5 * (np.linalg.norm(rows[0]) + np.linalg.norm(rows[1]))
  return solution[3].copy(), float(scale)


@dataclasses.dataclass(frozen=True)
class AlignParams:
  """One image's alignment: Deep3DFaceRecon's ``trans_params`` plus the output size.

  Attributes:
    width, height: raw image size ``w0, h0`` (pixels).
    scale: ``s`` (aligned pixels per raw pixel, before the integer resize).
    tx, ty: fitted face centre; ``tx`` is a raw x, ``ty`` is measured upwards (``h0 - y``).
    target_size: side of the aligned square image.
  """

  width: int
  height: int
  scale: float
  tx: float
  ty: float
  target_size: int = TARGET_SIZE

  @property
  def resized(self) -> tuple[int, int]:
    """Size ``(w, h)`` the raw image is resized to (truncated like the original)."""
    return int(self.width * self.scale), int(self.height * self.scale)

  def _corner(self) -> tuple[float, float]:
    """The untruncated crop corner in the resized image."""
    w, h = self.resized
    half = self.target_size / 2.0
    left = w / 2.0 - half + (self.tx - self.width / 2.0) * self.scale
    up = h / 2.0 - half + (self.height / 2.0 - self.ty) * self.scale
    return left, up

  @property
  def crop_box(self) -> tuple[int, int, int, int]:
    """PIL crop box ``(left, up, right, below)`` in the resized image (``int`` truncation)."""
    left, up = (int(v) for v in self._corner())
    return left, up, left + self.target_size, up + self.target_size

  def image_affine(self) -> np.ndarray:
    """``(2, 3)`` float64 affine: raw pixel ``(x, y, 1)`` -> aligned pixel, as the image moves.

    PIL resizes with pixel centres at half-integers, so a raw pixel centre ``x`` lands at
    ``(x + 0.5) w / w0 - 0.5`` in the resized image, then the crop shifts it by ``-left``.
    """
    w, h = self.resized
    left, up, _, _ = self.crop_box
    sx, sy = w / self.width, h / self.height
    return np.array([[sx, 0.0, 0.5 * sx - 0.5 - left], [0.0, sy, 0.5 * sy - 0.5 - up]])

  def landmark_affine(self, convention: str = "deep3d") -> np.ndarray:
    """``(2, 3)`` float64 affine: raw landmark -> aligned landmark, in ``convention``."""
    if convention == "pixel":
      return self.image_affine()
    if convention != "deep3d":
      raise ValueError(
        f"unknown landmark convention {convention!r}; expected {LANDMARK_CONVENTIONS}"
      )
    w, h = self.resized
    s, half, size = self.scale, self.target_size / 2.0, self.target_size
    # x' = (x - tx + w0/2) s - (w/2 - 112);  y'_up = (h0 - y - ty + h0/2) s - (h/2 - 112),
    # and the aligned landmark is y' = 224 - y'_up (FOCUS's loader flips back with H - y).
    bx = (self.width / 2.0 - self.tx) * s - (w / 2.0 - half)
    by = size - (1.5 * self.height - self.ty) * s + (h / 2.0 - half)
    return np.array([[s, 0.0, bx], [0.0, s, by]])

  def as_array(self) -> np.ndarray:
    """Deep3DFaceRecon's ``trans_params`` ``(5,)`` float64: ``(w0, h0, s, tx, ty)``."""
    return np.array([self.width, self.height, self.scale, self.tx, self.ty], np.float64)

  @classmethod
  def from_array(cls, params: np.ndarray, target_size: int = TARGET_SIZE) -> AlignParams:
    """Inverse of :meth:`as_array` for ``params (5,)``."""
    w0, h0, s, tx, ty = (float(v) for v in np.asarray(params).reshape(5))
    return cls(int(round(w0)), int(round(h0)), s, tx, ty, target_size)


def estimate(
  landmarks: np.ndarray,
  width: int,
  height: int,
  target_size: int = TARGET_SIZE,
  rescale_factor: float = RESCALE_FACTOR,
) -> AlignParams:
  """Fits the alignment of one raw image.

  Args:
    landmarks: ``(68, 2)`` float raw pixel landmarks (y down).
    width, height: raw image size.
    target_size: aligned image side.
    rescale_factor: Deep3DFaceRecon's 102: the standard face's size in aligned pixels.

  Returns:
    The :class:`AlignParams`.
  """
  lm = np.asarray(landmarks, np.float64)
  if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
    raise ValueError(f"expected finite (68, 2) landmarks, got shape {lm.shape}")
  # The fit runs in a y-up frame, with the original's ``H - y`` (not ``H - 1 - y``).
  up = np.stack([lm[:, 0], height - lm[:, 1]], axis=1)
  t, fitted = pos_fit(ibug.five_points(up), standard_five_points())
  if not fitted > 0:
    raise ValueError("degenerate landmarks: the fitted face scale is zero")
  return AlignParams(
    int(width), int(height), rescale_factor / fitted, float(t[0]), float(t[1]), target_size
  )


def apply_affine(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
  """Maps ``points (..., 2)`` float by ``affine (2, 3)``; returns ``(..., 2)`` float32."""
  p = np.asarray(points, np.float64)
  return (p @ affine[:, :2].T + affine[:, 2]).astype(np.float32)


def _to_pil(image: np.ndarray | Image.Image) -> Image.Image:
  if isinstance(image, Image.Image):
    return image
  return Image.fromarray(np.asarray(image))


def align_image(image: np.ndarray | Image.Image, params: AlignParams) -> np.ndarray:
  """Resizes (PIL bicubic) and crops one image like Deep3DFaceRecon.

  Args:
    image: ``(h0, w0, 3)`` uint8 RGB array or PIL image of that size.
    params: its :class:`AlignParams`.

  Returns:
    ``(T, T, 3)`` uint8, zeros where the crop leaves the photo.
  """
  pil = _to_pil(image).convert("RGB")
  if pil.size != (params.width, params.height):
    raise ValueError(f"image size {pil.size} != aligned size {(params.width, params.height)}")
  return np.asarray(pil.resize(params.resized, Image.Resampling.BICUBIC).crop(params.crop_box))


def align_mask(mask: np.ndarray | Image.Image, params: AlignParams) -> np.ndarray:
  """Moves a visibility mask with the image (bilinear, threshold 0.5).

  Args:
    mask: ``(h0, w0)`` or ``(h0, w0, C)`` array (values > 0.5 of the maximum 1 or 255 count as 1),
      or a PIL image; the first channel is used.
    params: the image's :class:`AlignParams`.

  Returns:
    ``(T, T)`` uint8 in ``{0, 1}``.
  """
  m = np.asarray(mask)
  if m.ndim == 3:
    m = m[..., 0]
  if m.shape != (params.height, params.width):
    raise ValueError(f"mask shape {m.shape} != image shape {(params.height, params.width)}")
  scale = 255.0 if m.dtype == np.uint8 and m.max() > 1 else 1.0
  pil = Image.fromarray(m.astype(np.float32) / scale)  # mode "F"
  out = np.asarray(pil.resize(params.resized, Image.Resampling.BILINEAR).crop(params.crop_box))
  return (out >= 0.5).astype(np.uint8)


def align_landmarks(
  landmarks: np.ndarray, params: AlignParams, convention: str = "deep3d"
) -> np.ndarray:
  """Raw ``(68, 2)`` landmarks -> aligned ``(68, 2)`` float32 pixel coordinates."""
  return apply_affine(landmarks, params.landmark_affine(convention))


def unalign_landmarks(
  landmarks: np.ndarray, params: AlignParams, convention: str = "deep3d"
) -> np.ndarray:
  """Inverse of :func:`align_landmarks`: aligned ``(N, 2)`` -> raw pixel ``(N, 2)`` float32."""
  return apply_affine(landmarks, warp.invert_affine(params.landmark_affine(convention)))


def paste_back(
  aligned: np.ndarray,
  params: AlignParams,
  background: np.ndarray,
  mask: np.ndarray | None = None,
) -> np.ndarray:
  """Pastes an aligned result (e.g. a render) back into the raw photo.

  Args:
    aligned: ``(T, T, C)`` or ``(T, T)`` array (uint8 or float) in the aligned frame.
    params: the photo's :class:`AlignParams`.
    background: ``(h0, w0, C)`` (or ``(h0, w0)``) raw photo, same dtype family as ``aligned``.
    mask: optional ``(T, T)`` float in ``[0, 1]`` (1 = take ``aligned``); default: everywhere
      inside the aligned square.

  Returns:
    ``(h0, w0, ...)`` array of ``background``'s dtype: ``mask * aligned + (1 - mask) *
    background`` after warping ``aligned`` and ``mask`` back with the image transform.
  """
  import cv2  # Lazy: only needed for the inverse warp.

  size = (params.width, params.height)
  affine = params.image_affine()  # raw -> aligned, i.e. the destination -> source map here.
  flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
  src = np.asarray(aligned, np.float32)
  warped = cv2.warpAffine(src, affine, size, flags=flags, borderValue=0)
  if mask is None:
    mask = np.ones(src.shape[:2], np.float32)
  alpha = cv2.warpAffine(np.asarray(mask, np.float32), affine, size, flags=flags, borderValue=0)
  bg = np.asarray(background)
  if warped.ndim == 3 and warped.shape[2] == 1 and bg.ndim == 2:
    warped = warped[..., 0]
  if bg.ndim == 3:
    alpha = alpha[..., None]
  out = alpha * warped + (1.0 - alpha) * bg.astype(np.float32)
  if np.issubdtype(bg.dtype, np.integer):
    return np.clip(np.rint(out), 0, 255).astype(bg.dtype)
  return out.astype(bg.dtype)


def align_sample(
  image: np.ndarray | Image.Image,
  landmarks: np.ndarray,
  mask: np.ndarray | None = None,
  convention: str = "deep3d",
  target_size: int = TARGET_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, AlignParams]:
  """Aligns an image with its landmarks (and optional mask) in one call.

  Args:
    image: ``(h0, w0, 3)`` uint8 raw photo (or PIL image).
    landmarks: ``(68, 2)`` float raw pixel landmarks.
    mask: optional ``(h0, w0)`` visibility mask.
    convention: landmark convention, ``"deep3d"`` or ``"pixel"``.
    target_size: aligned side.

  Returns:
    ``(image (T, T, 3) uint8, landmarks (68, 2) float32, mask (T, T) uint8 or None, params)``.
  """
  pil = _to_pil(image)
  params = estimate(landmarks, pil.size[0], pil.size[1], target_size)
  out_mask = None if mask is None else align_mask(mask, params)
  return (
    align_image(pil, params),
    align_landmarks(landmarks, params, convention),
    out_mask,
    params,
  )
