"""Spherical-harmonics (SH) Lambertian shading of FOCUS (SPEC §3).

Real SH bands 0..2 (9 functions, Condon-Shortley phase, orthonormal on the unit sphere), evaluated
on unit normals in camera space (x right, y down, z away from the camera; a normal facing the
camera has z ~ -1). The 27 lighting coefficients are ordered ``[R0..R8, G0..G8, B0..B8]``; the
band-0 coefficient of every channel gets the offset ``0.7 * 2 * pi`` so a zero prediction means
soft ambient light (factor ``0.7 * 2 * pi * Y0 = 1.2407``). As in the original, the shaded colour
``albedo * sum_k Y_k(n) c_k`` is not clamped and may exceed 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NUM_SH = 9
NUM_LIGHT = 3 * NUM_SH
AMBIENT_OFFSET = 0.7 * 2.0 * math.pi

_C0 = 0.5 * math.sqrt(1.0 / math.pi)
_C1 = math.sqrt(3.0 / (4.0 * math.pi))
_C2 = 0.5 * math.sqrt(15.0 / math.pi)
_C20 = 0.25 * math.sqrt(5.0 / math.pi)


def sh_basis(normals: jax.Array) -> jax.Array:
  """The 9 real SH functions at unit ``normals (..., 3)``; returns ``(..., 9)``."""
  x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
  return jnp.stack(
    [
      jnp.full_like(x, _C0),
      -_C1 * y,
      _C1 * z,
      -_C1 * x,
      _C2 * x * y,
      -_C2 * y * z,
      _C20 * (3.0 * z * z - 1.0),
      -_C2 * x * z,
      0.5 * _C2 * (x * x - y * y),
    ],
    axis=-1,
  )


def light_coefficients(sh_coeffs: jax.Array) -> jax.Array:
  """Predicted ``(27,)`` coefficients -> ``(3, 9)`` per-channel coefficients with the offset."""
  coeffs = jnp.reshape(jnp.asarray(sh_coeffs, jnp.float32), (3, NUM_SH))
  return coeffs.at[:, 0].add(AMBIENT_OFFSET)


def irradiance(normals: jax.Array, sh_coeffs: jax.Array) -> jax.Array:
  """Per-channel light ``(..., 3)`` at camera-space unit ``normals (..., 3)``."""
  return jnp.einsum(
    "...k,ck->...c",
    sh_basis(normals),
    light_coefficients(sh_coeffs),
    precision=jax.lax.Precision.HIGHEST,
  )


def shade(normals: jax.Array, albedo: jax.Array, sh_coeffs: jax.Array) -> jax.Array:
  """Shaded colours ``(..., 3)`` = albedo ``(..., 3)`` * SH irradiance of ``normals (..., 3)``.

  Args:
    normals: unit normals in camera space.
    albedo: RGB reflectance in [0, 1].
    sh_coeffs: ``(27,)`` predicted lighting coefficients (without the band-0 offset).
  """
  return albedo * irradiance(normals, sh_coeffs)
