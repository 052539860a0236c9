"""The iBUG-68 landmark conventions shared by every face model, one of each.

- :func:`standard_landmarks`: the standard face's 68 points (Deep3DFaceRecon's table, in mm).
- :func:`five_points`: the 5 alignment points (eye centres, nose tip, mouth corners) used by the
  Deep3D image alignment and the ArcFace warp; NumPy in, NumPy out; JAX in, JAX out.
- :func:`now_sphere`: the NoW face-crop sphere, used by the NoW metric on scan landmarks and by
  focus_jax's deterministic ``face`` crop of a morphable model.
- :data:`NOW7_FROM_IBUG68` and :func:`landmark_weights`.
"""

from __future__ import annotations

from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np

# The NoW 7 points as iBUG-68 positions: outer/inner eye corners, nose bottom, mouth corners.
NOW7_FROM_IBUG68 = np.array([36, 39, 42, 45, 33, 48, 54], np.int32)


def standard_landmarks() -> np.ndarray:
  """The standard face's 68 iBUG landmarks ``(68, 3)`` in mm (x right, y up, z to the viewer)."""
  text = resources.files("focus_jax").joinpath("assets/standard_face_lm68.csv").read_text()
  rows = [r for r in text.splitlines() if r and not r.startswith("#")][1:]
  return 100.0 * np.array([[float(v) for v in r.split(",")] for r in rows], np.float64)


def landmark_weights() -> np.ndarray:
  """Landmark-loss weights ``(68,)``: 20 on the nose (28..30) and inner lips (last 8), else 1."""
  w = np.ones(68, np.float32)
  w[28:31] = 20.0
  w[-8:] = 20.0
  return w


def five_points(landmarks):
  """The five alignment points of Deep3DFaceRecon and ArcFace from iBUG-68 landmarks.

  Args:
    landmarks: ``(..., 68, D)`` (``D`` = 2 or 3): a NumPy array (computed in float64) or a JAX
      array (float32, traceable).

  Returns:
    ``(..., 5, D)``: left eye centre (mean of 36, 39), right eye centre (mean of 42, 45), nose tip
    (30), left and right mouth corners (48, 54), in the array library of the input.
  """
  xp, dtype = (jnp, jnp.float32) if isinstance(landmarks, jax.Array) else (np, np.float64)
  lm = xp.asarray(landmarks, dtype)
  if lm.ndim < 2 or lm.shape[-2] != 68:
    raise ValueError(f"expected (..., 68, D) landmarks, got array of shape {lm.shape}")
  left_eye = 0.5 * (lm[..., 36, :] + lm[..., 39, :])
  right_eye = 0.5 * (lm[..., 42, :] + lm[..., 45, :])
  return xp.stack([left_eye, right_eye, lm[..., 30, :], lm[..., 48, :], lm[..., 54, :]], axis=-2)


def now_sphere(
  outer_eyes: np.ndarray, inner_eyes: np.ndarray, nose_bottom: np.ndarray, scale: float = 1.4
) -> tuple[np.ndarray, float]:
  """The NoW face-crop sphere ``(centre (3,), radius)`` (``compute_mask`` of now_evaluation).

  bridge = mean of the inner eye corners, centre = nose bottom + 0.3 (bridge - nose bottom),
  radius = ``scale`` (|outer eye distance| + |bridge - nose bottom|) / 2.

  Args:
    outer_eyes: ``(2, 3)`` outer eye corners (mm).
    inner_eyes: ``(2, 3)`` inner eye corners.
    nose_bottom: ``(3,)``.
    scale: radius factor (1.4 is the NoW evaluation crop).
  """
  outer_eyes, inner_eyes = np.asarray(outer_eyes, np.float64), np.asarray(inner_eyes, np.float64)
  bottom = np.asarray(nose_bottom, np.float64)
  bridge = 0.5 * (inner_eyes[0] + inner_eyes[1])
  centre = bottom + 0.3 * (bridge - bottom)
  outer = np.linalg.norm(outer_eyes[0] - outer_eyes[1])
  return centre, float(scale * (outer + np.linalg.norm(bridge - bottom)) / 2.0)


def face_crop(
  points: np.ndarray, landmarks: np.ndarray, scale: float = 1.4, margin_mm: float = 5.0
) -> np.ndarray:
  """focus_jax's deterministic face crop of a morphable model: the NoW sphere, grown to contain
  every landmark at least ``margin_mm`` inside (so the landmark remap is always defined).

  Args:
    points: ``(V, 3)`` mean-shape vertices (mm).
    landmarks: ``(68,)`` vertex indices, iBUG order.
    scale: radius factor of :func:`now_sphere`.
    margin_mm: minimum distance of every landmark to the sphere boundary.

  Returns:
    ``(V,)`` bool mask of the kept vertices.
  """
  lm = np.asarray(points, np.float64)[landmarks]
  centre, radius = now_sphere(lm[[36, 45]], lm[[39, 42]], lm[33], scale)
  radius = max(radius, float(np.linalg.norm(lm - centre, axis=1).max()) + margin_mm)
  return np.linalg.norm(points - centre, axis=1) <= radius
