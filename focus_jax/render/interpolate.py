"""Per-pixel interpolation of vertex attributes over rasterised fragments (SPEC §4).

Conventions: attributes are per vertex ``(V, C)``; the output is ``(H, W, C)`` and 0 on the
background. The default is linear interpolation in screen space, as in the original FOCUS
renderer; ``perspective_correct=True`` weights the screen-space barycentrics by ``1 / depth``.
Gradients reach the attributes directly and the vertex positions through the barycentrics of
``Fragments`` (the visible face index itself carries none).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from focus_jax.render import rasterize as rasterize_lib


def interpolate(
  attributes: jax.Array,
  fragments: rasterize_lib.Fragments,
  triangles: jax.Array,
  projected: jax.Array | None = None,
  *,
  perspective_correct: bool = False,
) -> jax.Array:
  """Interpolates vertex attributes at every pixel centre.

  Args:
    attributes: ``(V, C)`` float32 per-vertex values (e.g. shaded RGB).
    fragments: ``Fragments`` of one image, ``(H, W)`` fields.
    triangles: ``(F, 3)`` int32, the triangles that were rasterised.
    projected: ``(V, 3)`` float32 (pixel x, pixel y, depth); required for
      ``perspective_correct``.
    perspective_correct: weight by inverse depth (perspective-correct) instead of the original's
      screen-space interpolation.

  Returns:
    ``(H, W, C)`` float32, 0 on the background.
  """
  covered = fragments.face_id >= 0
  idx = triangles[jnp.where(covered, fragments.face_id, 0)]  # (H, W, 3)
  weights = fragments.bary
  if perspective_correct:
    if projected is None:
      raise ValueError("interpolate: perspective_correct=True needs the projected vertices")
    inv_depth = 1.0 / jnp.maximum(projected[idx, 2], 1e-6)
    weights = weights * inv_depth
    norm = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(norm == 0, 1.0, norm)
  values = jnp.einsum(
    "hwk,hwkc->hwc",
    weights,
    rasterize_lib.gather_rows(attributes, idx),
    precision=jax.lax.Precision.HIGHEST,
  )
  return jnp.where(covered[..., None], values, 0.0)
