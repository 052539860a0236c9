"""The FOCUS render pipeline: 3DMM coefficients -> shaded image, masks and landmarks.

vertices (3DMM) -> camera (pose) -> projection -> rasterisation -> area-weighted vertex normals
rotated to camera space -> SH shading per vertex -> screen-space interpolation of the shaded
colours (SPEC §1-4). Returns a :class:`RenderOut` with the image (0 on background, unclamped as
in the original), the hard coverage mask, a soft mask differentiable at silhouettes
(``composite.soft_mask``), the projected vertices, the 68 landmarks and the fragments.

The model is a function argument, never closed over, so its bases are not baked into compiled
programs. ``render`` is for one face; ``render_batch`` maps it over a leading batch axis of the
coefficients (the rasteriser's z-buffer batches as one flat mesh under ``vmap``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from focus_jax.render import camera as camera_lib
from focus_jax.render import coefficients, composite, interpolate, mesh, shading
from focus_jax.render import morphable_model as mm
from focus_jax.render import rasterize as rasterize_lib


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RenderOut:
  """Render of one face (a leading batch axis on every field from ``render_batch``).

  Attributes:
    image: ``(H, W, 3)`` float32 shaded render, 0 on the background.
    mask: ``(H, W)`` float32 hard coverage in {0, 1} (no gradient).
    soft_mask: ``(H, W)`` float32 soft coverage in [0, 1], differentiable at silhouettes.
    projected: ``(V, 3)`` float32 (pixel x, pixel y, depth).
    landmarks: ``(68, 2)`` float32 pixel x, y of ``model.landmarks``.
    fragments: the rasteriser's ``Fragments``.
  """

  image: jax.Array
  mask: jax.Array
  soft_mask: jax.Array
  projected: jax.Array
  landmarks: jax.Array
  fragments: rasterize_lib.Fragments


@functools.partial(jax.jit, static_argnames=("height", "width", "sigma", "window"))
def render(
  model: mm.MorphableModel,
  coeffs: coefficients.Coefficients,
  height: int = 224,
  width: int = 224,
  *,
  sigma: float = 1.0,
  window: int | None = None,
) -> RenderOut:
  """Renders one face.

  Args:
    model: the morphable model (a pytree argument).
    coeffs: one face's :class:`~focus_jax.render.coefficients.Coefficients` (unbatched fields,
      float32, already scaled).
    height, width: static image size.
    sigma: static soft-mask ramp half-width in pixels.
    window: static rasteriser level-0 window (speed only); ``None`` chooses.
  """
  triangles = model.triangles
  vertices = mm.vertices(model, coeffs.shape, coeffs.expression)
  albedo = mm.albedo(model, coeffs.color)
  camera = camera_lib.camera_from_pose(coeffs.pose, height, width)
  projected = camera_lib.project(camera, vertices)
  fragments = rasterize_lib.rasterize(
    projected, triangles, height=height, width=width, window=window
  )
  normals = jnp.matmul(
    mesh.vertex_normals(vertices, triangles),
    camera.rotation.T,
    precision=jax.lax.Precision.HIGHEST,
  )
  colors = shading.shade(normals, albedo, coeffs.light)
  image = interpolate.interpolate(colors, fragments, triangles)
  return RenderOut(
    image=image,
    mask=(fragments.face_id >= 0).astype(jnp.float32),
    soft_mask=composite.soft_mask(projected, triangles, fragments, sigma),
    projected=projected,
    landmarks=projected[model.landmarks, :2],
    fragments=fragments,
  )


@functools.partial(jax.jit, static_argnames=("height", "width", "sigma", "window"))
def render_batch(
  model: mm.MorphableModel,
  coeffs: coefficients.Coefficients,
  height: int = 224,
  width: int = 224,
  *,
  sigma: float = 1.0,
  window: int | None = None,
) -> RenderOut:
  """``render`` over a leading batch axis ``B`` of ``coeffs``' fields; returns batched fields.

  Everything is vmapped except the soft mask, which maps over the batch with ``lax.map``: it
  evaluates only the silhouette band behind a ``lax.cond``, and under ``vmap`` a ``cond`` would
  run its dense fallback too.
  """
  one = functools.partial(render, height=height, width=width, sigma=sigma, window=window)
  out = jax.vmap(one, in_axes=(None, 0))(model, coeffs)
  soft = jax.lax.map(
    lambda args: composite.soft_mask(args[0], model.triangles, args[1], sigma),
    (out.projected, out.fragments),
  )
  return dataclasses.replace(out, soft_mask=soft)
