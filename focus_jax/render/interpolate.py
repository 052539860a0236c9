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

from focus_jax.render import fusion
from focus_jax.render import rasterize as rasterize_lib


def _blend_value(attributes, idx, weights):
  corners = rasterize_lib.gather_rows(attributes, idx)  # (..., 3, C)
  # Multiply-adds, not an einsum: a 3-term contraction per pixel became a slow small-matrix
  # kernel on XLA:CPU (and this is exact float32 on every backend).
  return sum(weights[..., k, None] * corners[..., k, :] for k in range(3)), corners


@jax.custom_vjp
def _blend(attributes, idx, weights):
  """``sum_k weights[..., k] * attributes[idx[..., k]]``, shapes ``(V, C), (..., 3), (..., 3)``.

  A hand-written VJP: differentiated automatically, the slices of the corner axis became one
  full-size pad per corner in the backward pass.
  """
  return _blend_value(attributes, idx, weights)[0]


def _blend_fwd(attributes, idx, weights):
  values, corners = _blend_value(attributes, idx, weights)
  return values, (corners, idx, weights, attributes.shape[0])


def _blend_bwd(residuals, grad):
  corners, idx, weights, num_rows = residuals
  # Explicit sums over the (few) channels: XLA:CPU hands reductions to a library kernel that is
  # slow for short axes.
  channels = range(grad.shape[-1])
  grad_weights = jnp.stack(
    [sum(grad[..., c] * corners[..., k, c] for c in channels) for k in range(3)], -1
  )
  grad_corners = fusion.materialise(weights[..., :, None] * grad[..., None, :])
  return rasterize_lib.scatter_add_rows(idx, grad_corners, num_rows), None, grad_weights


_blend.defvjp(_blend_fwd, _blend_bwd)


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
  idx = triangles.at[jnp.where(covered, fragments.face_id, 0)].get(mode="promise_in_bounds")
  weights = fragments.bary
  if perspective_correct:
    if projected is None:
      raise ValueError("interpolate: perspective_correct=True needs the projected vertices")
    inv_depth = 1.0 / jnp.maximum(projected[idx, 2], 1e-6)
    weights = weights * inv_depth
    norm = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(norm == 0, 1.0, norm)
  values = _blend(attributes, idx, weights)
  return jnp.where(covered[..., None], values, 0.0)
