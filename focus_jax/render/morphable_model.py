"""The 3D morphable model record and its linear combinations (SPEC §1).

``MorphableModel`` holds means and bases already scaled by ``sqrt(pcaVariance)``, so every
coefficient is in standard deviations:

    vertices = shape_mean + exp_mean + sum_k alpha_k shape_basis[k] + sum_k delta_k exp_basis[k]
    albedo   = color_mean + sum_k beta_k color_basis[k]

Geometry is in millimetres in the model frame (x right, y up, z towards the viewer). Where models
come from (the BFM 2017 h5 reader, the embedded default, ICT) is :mod:`focus_jax.facemodels`;
this module holds no file handling.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.render import mesh


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MorphableModel:
  """A linear face model with per-vertex albedo. All fields are arrays (pytree leaves).

  Attributes:
    shape_mean: ``(V, 3)`` float32 mm (centre shift applied).
    shape_basis: ``(K_shape, V, 3)`` float32 mm per standard deviation.
    exp_mean: ``(V, 3)`` float32 mm (zero for most models).
    exp_basis: ``(K_exp, V, 3)`` float32 mm per standard deviation.
    color_mean: ``(V, 3)`` float32 RGB in [0, 1].
    color_basis: ``(K_color, V, 3)`` float32 per standard deviation.
    triangles: ``(F, 3)`` int32, outward winding.
    landmarks: ``(68,)`` int32 vertex indices, iBUG-68 order.
    now_landmarks: ``(7,)`` int32 vertex indices of the NoW challenge points.
    landmark_weights: ``(68,)`` float32 weights of the landmark loss.
    vertex_faces: ``(3, V, D)`` int32 faces of every vertex by corner
      (:func:`focus_jax.render.mesh.vertex_face_table`), derived from ``triangles`` at
      construction when left ``None``; vertex normals are gathers through it. Pass
      ``vertex_faces=None`` to ``dataclasses.replace`` when changing ``triangles``.
  """

  shape_mean: jax.Array
  shape_basis: jax.Array
  exp_mean: jax.Array
  exp_basis: jax.Array
  color_mean: jax.Array
  color_basis: jax.Array
  triangles: jax.Array
  landmarks: jax.Array
  now_landmarks: jax.Array
  landmark_weights: jax.Array
  vertex_faces: jax.Array | None = None

  def __post_init__(self):
    # Built once per topology, from concrete triangles only: pytree unflattening inside
    # transformations passes the existing table (a tracer) and never gets here with None.
    triangles = self.triangles
    concrete = isinstance(triangles, np.ndarray | jax.Array) and not isinstance(
      triangles, jax.core.Tracer
    )
    if self.vertex_faces is None and concrete:
      table = mesh.vertex_face_table(np.asarray(triangles), self.num_vertices)
      object.__setattr__(self, "vertex_faces", jnp.asarray(table))

  @property
  def num_vertices(self) -> int:
    return self.shape_mean.shape[0]

  @property
  def num_triangles(self) -> int:
    return self.triangles.shape[0]

  @property
  def sizes(self) -> dict[str, int]:
    """Number of coefficients per group: ``{'shape': .., 'expression': .., 'color': ..}``."""
    return {
      "shape": self.shape_basis.shape[0],
      "expression": self.exp_basis.shape[0],
      "color": self.color_basis.shape[0],
    }


def _combine(mean: jax.Array, basis: jax.Array, coeffs) -> jax.Array:
  coeffs = jnp.asarray(coeffs, jnp.float32)
  if coeffs.shape[-1:] != basis.shape[:1]:
    raise ValueError(f"expected {basis.shape[0]} coefficients, got shape {coeffs.shape}")
  # One (..., K) x (K, V * 3) matmul: its gradient is a plain matmul too. An einsum over
  # (K, V, 3) mapped with vmap had XLA:CPU copy-transpose the whole basis in every backward pass.
  flat = jnp.matmul(coeffs, basis.reshape(basis.shape[0], -1), precision=jax.lax.Precision.HIGHEST)
  return mean + flat.reshape(*coeffs.shape[:-1], *mean.shape)


def vertices(model: MorphableModel, shape_coeffs, exp_coeffs) -> jax.Array:
  """Face vertices ``(..., V, 3)`` mm for ``shape_coeffs (..., K_shape)`` and
  ``exp_coeffs (..., K_exp)`` (leading batch axes allowed)."""
  identity = _combine(model.shape_mean, model.shape_basis, shape_coeffs)
  return identity + _combine(model.exp_mean, model.exp_basis, exp_coeffs)


def albedo(model: MorphableModel, color_coeffs) -> jax.Array:
  """Per-vertex albedo ``(..., V, 3)`` RGB for ``color_coeffs (..., K_color)``."""
  return _combine(model.color_mean, model.color_basis, color_coeffs)
