"""Pure functional rendering core of focus_jax.

Conventions owned here and used by every module of the core:

- Units are millimetres in the model (world) frame: x right, y up, z towards the viewer.
- Vertices are ``(V, 3)`` float32 per face, ``(B, V, 3)`` when batched (batching is done with
  ``jax.vmap``; the core functions are written for one face). Triangles are ``(F, 3)`` int32 and
  shared by the batch. Their winding is such that ``cross(v1 - v0, v2 - v0)`` points out of the
  face (towards the camera for a frontal face).
- Images are NHWC float32 in [0, 1] (renders may exceed 1 where light is strong: SPEC §3).
- Pixel centres sit at integer coordinates; x is the column (right), y is the row (down).
- Camera coordinates: x right, y down, z away from the camera (depth), see ``camera.py``.

Modules: ``morphable_model`` (the 3DMM record), ``coefficients`` (the ``Coefficients`` record,
head scalings, prior sampler), ``camera`` (extrinsics, intrinsics, projection), ``mesh``
(normals), ``shading`` (spherical harmonics), ``rasterize`` / ``interpolate`` / ``composite``
(z-buffer, attributes, soft mask), ``warp`` (affine image warps), ``pipeline`` (coefficients ->
render). The core imports jax and numpy only; files are read in ``focus_jax.facemodels``.
"""
