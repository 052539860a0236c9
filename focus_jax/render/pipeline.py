"""The FOCUS render pipeline: 3DMM coefficients -> shaded image, masks and landmarks.

vertices (3DMM) -> camera (pose) -> projection -> rasterisation -> area-weighted vertex normals
rotated to camera space -> SH shading per vertex -> screen-space interpolation of the shaded
colours (SPEC §1-4). Returns a :class:`RenderOut` with the image (0 on background, unclamped as
in the original), the hard coverage mask, a soft mask differentiable at silhouettes
(``composite.soft_mask``), the projected vertices, the 68 landmarks and the fragments.

The model is a function argument, never closed over, so its bases are not baked into compiled
programs. ``render`` is for one face; ``render_batch`` renders a leading batch axis of the
coefficients (the rasteriser's z-buffer batches as one flat mesh under ``vmap``).
``original_shading=True`` shades as the original FOCUS code does (for converted checkpoints).
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


_STATIC = ("height", "width", "sigma", "window", "original_shading")


def shaded_colors(
  vertices: jax.Array,
  albedo: jax.Array,
  light: jax.Array,
  rotation: jax.Array,
  triangles: jax.Array,
  vertex_faces: jax.Array | None = None,
  *,
  original_shading: bool = False,
) -> jax.Array:
  """Per-vertex shaded colours of a batch: vertex normals -> camera space -> SH shading.

  Args:
    vertices: ``(B, V, 3)`` float32 world positions (mm).
    albedo: ``(B, V, 3)`` float32 RGB.
    light: ``(B, 27)`` float32 SH coefficients (without the band-0 offset).
    rotation: ``(B, 3, 3)`` float32 world -> camera rotations.
    triangles: ``(F, 3)`` int32.
    vertex_faces: ``(3, V, D)`` int32 table of ``mesh.vertex_face_table`` (``None``: built from
      concrete triangles).
    original_shading: static; the original FOCUS normals and SH direction (see :func:`render`).

  Returns:
    ``(B, V, 3)`` float32 shaded colours, unclamped.
  """
  # Normals for the whole batch at once: they are gathers with the batch in the minor axis.
  normals_fn = mesh.original_vertex_normals if original_shading else mesh.vertex_normals
  normals = jax.vmap(camera_lib.rotate)(normals_fn(vertices, triangles, vertex_faces), rotation)
  if original_shading:
    normals = shading.original_direction(normals)
  return jax.vmap(shading.shade)(normals, albedo, light)


def _render_many(model, coeffs, height, width, sigma, window, original_shading):
  """The batch-native render: every ``coeffs`` field has a leading batch axis ``B``."""
  triangles = model.triangles
  vertices = mm.vertices(model, coeffs.shape, coeffs.expression)
  albedo = mm.albedo(model, coeffs.color)
  cameras = jax.vmap(camera_lib.camera_from_pose, (0, None, None))(coeffs.pose, height, width)
  projected = jax.vmap(camera_lib.project)(cameras, vertices)
  colors = shaded_colors(
    vertices,
    albedo,
    coeffs.light,
    cameras.rotation,
    triangles,
    model.vertex_faces,
    original_shading=original_shading,
  )
  raster = functools.partial(rasterize_lib.rasterize, height=height, width=width, window=window)
  fragments = jax.vmap(raster, (0, None))(projected, triangles)
  image = jax.vmap(interpolate.interpolate, (0, 0, None))(colors, fragments, triangles)
  # The soft mask maps over the batch with ``lax.map``: it evaluates only the silhouette band
  # behind a ``lax.switch``, and under ``vmap`` a switch would run its dense fallback too.
  soft = jax.lax.map(
    lambda args: composite.soft_mask(args[0], triangles, args[1], sigma), (projected, fragments)
  )
  return RenderOut(
    image=image,
    mask=(fragments.face_id >= 0).astype(jnp.float32),
    soft_mask=soft,
    projected=projected,
    landmarks=projected[:, model.landmarks, :2],
    fragments=fragments,
  )


@functools.partial(jax.jit, static_argnames=_STATIC)
def render(
  model: mm.MorphableModel,
  coeffs: coefficients.Coefficients,
  height: int = 224,
  width: int = 224,
  *,
  sigma: float = 1.0,
  window: int | None = None,
  original_shading: bool = False,
) -> RenderOut:
  """Renders one face.

  Args:
    model: the morphable model (a pytree argument).
    coeffs: one face's :class:`~focus_jax.render.coefficients.Coefficients` (unbatched fields,
      float32, already scaled).
    height, width: static image size.
    sigma: static soft-mask ramp half-width in pixels.
    window: static rasteriser level-0 window (speed only); ``None`` chooses.
    original_shading: static; shade as the original FOCUS code does (its vertex normals are not
      renormalised and its SH direction follows, see ``shading.original_direction``), for
      lighting predicted by an encoder converted from an original checkpoint. The default uses
      unit normals (SPEC §3).
  """
  batched = jax.tree.map(lambda a: jnp.asarray(a)[None], coeffs)
  out = _render_many(model, batched, height, width, sigma, window, original_shading)
  return jax.tree.map(lambda a: a[0], out)


@functools.partial(jax.jit, static_argnames=_STATIC)
def render_batch(
  model: mm.MorphableModel,
  coeffs: coefficients.Coefficients,
  height: int = 224,
  width: int = 224,
  *,
  sigma: float = 1.0,
  window: int | None = None,
  original_shading: bool = False,
) -> RenderOut:
  """``render`` over a leading batch axis ``B`` of ``coeffs``' fields; returns batched fields.

  The arguments are those of :func:`render`. The work is batched explicitly (vertex normals as
  gathers over the whole batch, the z-buffer as one flat mesh), not by ``vmap`` of ``render``.
  """
  return _render_many(model, coeffs, height, width, sigma, window, original_shading)
