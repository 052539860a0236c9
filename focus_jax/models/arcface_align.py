"""Face alignment for the ArcFace losses: 68 landmarks -> 5 points -> similarity -> 112x112 warp.

Pure JAX (jit / vmap / grad safe), built on :mod:`focus_jax.render.warp`. The 5 points are
:func:`focus_jax.facemodels.landmarks.five_points`: eye centres (mean of the two corners of each
eye, iBUG 37/40 and 43/46 1-based, as the original's ``extract_5p``), nose tip (31), mouth
corners (49, 55); they are mapped onto insightface's template (SPEC §5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.facemodels import landmarks as ibug
from focus_jax.render.warp import similarity_transform, warp_affine

# insightface's 112x112 ArcFace template: left eye, right eye, nose, left and right mouth corner.
ARCFACE_TEMPLATE = np.array(
  [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
  ],
  np.float32,
)
ARCFACE_SIZE = 112


def arcface_matrices(landmarks: jax.Array, size: int = ARCFACE_SIZE) -> jax.Array:
  """Similarity maps ``(..., 2, 3)`` from image pixels to the ArcFace crop of ``size`` pixels.

  Args:
    landmarks: ``(..., 68, 2)`` float32 pixel ``(x, y)`` in the input image.
    size: output side (112 for ArcFace; the template is scaled by ``size / 112``).
  """
  template = jnp.asarray(ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))
  return similarity_transform(ibug.five_points(jnp.asarray(landmarks)), template)


def align_faces(
  images: jax.Array,
  landmarks: jax.Array,
  size: int = ARCFACE_SIZE,
  *,
  detach_transform: bool = True,
) -> jax.Array:
  """Crops faces to the ArcFace template.

  Args:
    images: ``(B, H, W, C)`` float32 images (e.g. 224x224 renders or inputs in [0, 1]).
    landmarks: ``(B, 68, 2)`` float32 pixel ``(x, y)`` landmarks of those images.
    size: output side (112).
    detach_transform: stop gradients through the landmarks into the transform, as the original
      (which fitted it in NumPy); gradients then reach only the image.

  Returns:
    ``(B, size, size, C)`` float32 aligned faces.
  """
  if detach_transform:
    landmarks = jax.lax.stop_gradient(landmarks)
  return warp_affine(images, arcface_matrices(landmarks, size), (size, size))
