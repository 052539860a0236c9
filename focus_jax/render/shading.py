"""Spherical-harmonics (SH) Lambertian shading of FOCUS (SPEC §3).

Real SH bands 0..2 (9 functions, Condon-Shortley phase, orthonormal on the unit sphere), evaluated
on unit normals in camera space (x right, y down, z away from the camera; a normal facing the
camera has z ~ -1). The 27 lighting coefficients are ordered ``[R0..R8, G0..G8, B0..B8]``; the
band-0 coefficient of every channel gets the offset ``0.7 * 2 * pi`` so a zero prediction means
soft ambient light (factor ``0.7 * 2 * pi * Y0 = 1.2407``). As in the original, the shaded colour
``albedo * sum_k Y_k(n) c_k`` is not clamped and may exceed 1.

:func:`original_direction` reproduces where the original FOCUS code evaluates the SH for its
not-renormalised vertex normals (the original-shading mode of ``pipeline.render``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

NUM_SH = 9
NUM_LIGHT = 3 * NUM_SH
AMBIENT_OFFSET = 0.7 * 2.0 * math.pi

_C0 = 0.5 * math.sqrt(1.0 / math.pi)
_C1 = math.sqrt(3.0 / (4.0 * math.pi))
_C2 = 0.5 * math.sqrt(15.0 / math.pi)
_C20 = 0.25 * math.sqrt(5.0 / math.pi)
# The original's clamp floor: 1e3 * the smallest normal float32.
_ORIGINAL_TINY = float(np.finfo(np.float32).tiny) * 1e3


def _sh_terms(normals: jax.Array) -> list[jax.Array]:
  x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
  return [
    jnp.full_like(x, _C0),
    -_C1 * y,
    _C1 * z,
    -_C1 * x,
    _C2 * x * y,
    -_C2 * y * z,
    _C20 * (3.0 * z * z - 1.0),
    -_C2 * x * z,
    0.5 * _C2 * (x * x - y * y),
  ]


def sh_basis(normals: jax.Array) -> jax.Array:
  """The 9 real SH functions at unit ``normals (..., 3)``; returns ``(..., 9)``."""
  return jnp.stack(_sh_terms(normals), axis=-1)


def light_coefficients(sh_coeffs: jax.Array) -> jax.Array:
  """Predicted ``(27,)`` coefficients -> ``(3, 9)`` per-channel coefficients with the offset."""
  coeffs = jnp.reshape(jnp.asarray(sh_coeffs, jnp.float32), (3, NUM_SH))
  return coeffs.at[:, 0].add(AMBIENT_OFFSET)


def irradiance(normals: jax.Array, sh_coeffs: jax.Array) -> jax.Array:
  """Per-channel light ``(..., 3)`` at camera-space unit ``normals (..., 3)``."""
  coeffs = light_coefficients(sh_coeffs)
  # Multiply-adds over the unstacked terms, one channel at a time, not an einsum: a (9 x 3)
  # contraction per vertex became a slow small-matrix kernel on XLA:CPU, slicing a stacked basis
  # costs one full-size pad per term in the backward pass, and a broadcast channel axis turns
  # into slow 3-element reductions there. Exact float32 on every backend.
  terms = _sh_terms(normals)
  return jnp.stack([sum(t * coeffs[c, k] for k, t in enumerate(terms)) for c in range(3)], -1)


def shade(normals: jax.Array, albedo: jax.Array, sh_coeffs: jax.Array) -> jax.Array:
  """Shaded colours ``(..., 3)`` = albedo ``(..., 3)`` * SH irradiance of ``normals (..., 3)``.

  Args:
    normals: unit normals in camera space.
    albedo: RGB reflectance in [0, 1].
    sh_coeffs: ``(27,)`` predicted lighting coefficients (without the band-0 offset).
  """
  return albedo * irradiance(normals, sh_coeffs)


def original_direction(normals: jax.Array) -> jax.Array:
  """The unit direction at which the original FOCUS code evaluates the SH of ``normals``.

  The original converts a camera-space normal ``n`` (its vertex normals are not renormalised,
  norms 0.954-1) to spherical angles ``theta = acos(clamp(n_z))``, ``phi = atan2(n_y, n_x)`` and
  evaluates the SH at ``(sin theta cos phi, sin theta sin phi, cos theta)``: ``z`` keeps the
  unnormalised ``n_z`` and ``(x, y)`` are rescaled to fill the unit sphere around it. Written
  without the angles (same values, finite gradients at the poles): ``z = clip(n_z, -1, 1)``,
  ``(x, y) = sqrt(1 - z^2) (n_x, n_y) / |(n_x, n_y)|``, and ``(sqrt(1 - z^2), 0, z)`` where
  ``n_x = n_y = 0`` (``atan2(0, 0) = 0``).

  Args:
    normals: ``(..., 3)`` float32 camera-space normals, norm at most 1.

  Returns:
    ``(..., 3)`` float32 unit directions.
  """
  nx, ny, nz = normals[..., 0], normals[..., 1], normals[..., 2]
  z = jnp.clip(nz, -1.0, 1.0)
  sin_theta = jnp.sqrt(jnp.maximum((1.0 - z) * (1.0 + z), _ORIGINAL_TINY))
  rho2 = nx * nx + ny * ny
  ok = rho2 > 0
  inv_rho = jax.lax.rsqrt(jnp.where(ok, rho2, 1.0))
  cos_phi = jnp.where(ok, nx * inv_rho, 1.0)
  sin_phi = jnp.where(ok, ny * inv_rho, 0.0)
  return jnp.stack([sin_theta * cos_phi, sin_theta * sin_phi, z], axis=-1)
