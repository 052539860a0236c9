"""Per-vertex visibility of a rendered face: visible, self-occluded, occluded, outside the image.

Every vertex of a face gets one class (int8 codes, :data:`CLASSES` gives the names):

- ``VISIBLE`` (0): it faces the camera, nothing of the face is in front of it, and the occlusion
  mask marks its pixel as face;
- ``SELF_OCCLUDED`` (1): back-facing (its normal points away from the camera) or behind another
  part of the face (the z-buffer at its pixel holds a surface nearer than it);
- ``OCCLUDED`` (2): it would be visible, but the occlusion mask (the UNet's, 1 = visible face)
  marks its pixel as covered by an occluder (hair, hands, glasses...);
- ``OUTSIDE`` (3): it projects outside the image (or lies behind the camera).

A vertex is looked up at its nearest pixel centre (pixel centres at integer coordinates, SPEC
§2). Two rules decide whether the face hides it, because the z-buffer is a sampled surface:

1. if one of the vertex's triangles wins at least one pixel of the z-buffer, the vertex is on the
   visible surface (exact, no tolerance, and independent of the normals);
2. otherwise (its triangles are smaller than a pixel or hidden) it is visible when it faces the
   camera and the z-buffer depth at its pixel is not nearer than its own depth minus a tolerance
   of ``tolerance_px`` pixel footprints (``tolerance_px * depth / focal`` mm): a pixel centre
   lies up to half a pixel away from the vertex, and on a surface sloped by up to ~75 degrees that
   changes the depth by under two footprints. Background pixels hide nothing.

Pure JAX on one face (``jax.vmap`` for batches); no gradients (the classes are discrete).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from focus_jax.render import mesh

VISIBLE = 0
SELF_OCCLUDED = 1
OCCLUDED = 2
OUTSIDE = 3
# Names of the classes, indexed by their code.
CLASSES = ("visible", "self_occluded", "occluded", "outside")


def _nearest_pixel(xy: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """Row-major flat index ``(V,)`` of the nearest pixel centre (clamped) and ``inside (V,)``."""
  col = jnp.round(xy[:, 0])
  row = jnp.round(xy[:, 1])
  inside = (col >= 0) & (col <= width - 1) & (row >= 0) & (row <= height - 1)
  col = jnp.clip(col, 0, width - 1).astype(jnp.int32)
  row = jnp.clip(row, 0, height - 1).astype(jnp.int32)
  return row * width + col, inside


def triangles_drawn(face_id: jax.Array, num_triangles: int) -> jax.Array:
  """Which triangles win at least one pixel: ``(F,)`` bool from ``face_id (H, W)`` int32."""
  ids = face_id.reshape(-1)
  # -1 (background) would wrap around to the last triangle: send it out of range, then drop it.
  ids = jnp.where(ids >= 0, ids, num_triangles)
  return jnp.zeros(num_triangles, bool).at[ids].set(True, mode="drop")


def vertex_visibility(
  camera_vertices: jax.Array,
  projected: jax.Array,
  triangles: jax.Array,
  face_id: jax.Array,
  depth: jax.Array,
  visible_mask: jax.Array | None,
  focal: jax.typing.ArrayLike,
  *,
  threshold: float = 0.5,
  tolerance_px: float = 2.0,
) -> jax.Array:
  """Classifies every vertex of one rendered face (module docstring).

  Args:
    camera_vertices: ``(V, 3)`` float32 vertices in the camera frame (mm; x right, y down, z away
      from the camera), e.g. ``camera.to_camera(cam, vertices)``.
    projected: ``(V, 3)`` float32 (pixel x, pixel y, depth) of the same vertices
      (``camera.project``), as given to the rasteriser.
    triangles: ``(F, 3)`` int32, outward winding.
    face_id: ``(H, W)`` int32 z-buffer face index, -1 on the background (``Fragments.face_id``).
    depth: ``(H, W)`` float32 z-buffer depth in mm (``Fragments.depth``).
    visible_mask: ``(H, W)`` float32 occlusion mask in [0, 1], 1 = visible face (the UNet's), or
      None (no occluder: no vertex is ``OCCLUDED``).
    focal: ``()`` focal length in pixels (``Camera.focal``): sets the depth tolerance.
    threshold: mask values below it mark an occluder.
    tolerance_px: depth tolerance of rule 2, in pixel footprints.

  Returns:
    ``(V,)`` int8 class codes (:data:`VISIBLE`, :data:`SELF_OCCLUDED`, :data:`OCCLUDED`,
    :data:`OUTSIDE`).
  """
  camera_vertices = jax.lax.stop_gradient(camera_vertices)
  projected = jax.lax.stop_gradient(projected)
  height, width = face_id.shape
  num_vertices = camera_vertices.shape[0]
  pixel, inside = _nearest_pixel(projected[:, :2], height, width)
  z = projected[:, 2]
  inside = inside & (z > 0)

  # Rule 1: a vertex of a triangle that won a pixel is on the visible surface.
  drawn = triangles_drawn(face_id, triangles.shape[0]).astype(jnp.int32)
  hits = jnp.zeros(num_vertices, jnp.int32).at[triangles.reshape(-1)].add(jnp.repeat(drawn, 3))
  on_surface = hits > 0

  # Rule 2: front-facing and not behind the z-buffer's surface (with a tolerance).
  normals = mesh.vertex_normals(camera_vertices, triangles)
  # The camera sits at the origin of its frame: a normal facing it points against the ray.
  facing = jnp.sum(normals * camera_vertices, axis=-1) < 0
  covered = face_id.reshape(-1)[pixel] >= 0
  nearest = depth.reshape(-1)[pixel]
  tolerance = tolerance_px * z / focal
  behind = covered & (nearest < z - tolerance)
  seen = on_surface | (facing & ~behind)

  codes = jnp.where(seen, VISIBLE, SELF_OCCLUDED)
  if visible_mask is not None:
    occluder = visible_mask.reshape(-1)[pixel] < threshold
    codes = jnp.where(seen & occluder, OCCLUDED, codes)
  codes = jnp.where(inside, codes, OUTSIDE)
  return codes.astype(jnp.int8)


def counts(codes: jax.Array) -> jax.Array:
  """Number of vertices per class: ``(..., 4)`` int32 from codes ``(..., V)``."""
  return jnp.stack([jnp.sum(codes == c, axis=-1) for c in range(len(CLASSES))], axis=-1)
