"""The original-shading mode against a NumPy transcription of the original FOCUS rule.

The original shades with the area-weighted *mean* of the unit face normals (not renormalised),
rotated to camera space, turned into spherical angles ``theta = acos(n_z)``,
``phi = atan2(n_y, n_x)``, and evaluates the real SH (associated Legendre functions with the
Condon-Shortley phase) at those angles.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax import testing
from focus_jax.render import camera, pipeline, shading
from focus_jax.render import morphable_model as mm

_TINY = float(np.finfo(np.float32).tiny) * 1e3


def _legendre(band, m, x):
  """Associated Legendre P_l^m(x), m >= 0, with the Condon-Shortley phase."""
  s = np.sqrt(np.maximum((1 - x) * (1 + x), _TINY))
  return {
    (0, 0): np.ones_like(x),
    (1, 0): x,
    (1, 1): -s,
    (2, 0): 0.5 * (3 * x * x - 1),
    (2, 1): -3 * x * s,
    (2, 2): 3 * s * s,
  }[(band, m)]


def _sh_at_angles(theta, phi):
  """Real SH, bands 0..2 in the order band 0..2, m = -band..band: ``(..., 9)``."""
  out = []
  for band in range(3):
    for m in range(-band, band + 1):
      k = math.sqrt(
        (2 * band + 1)
        * math.factorial(band - abs(m))
        / (4 * math.pi * math.factorial(band + abs(m)))
      )
      p = _legendre(band, abs(m), np.cos(theta))
      if m == 0:
        out.append(k * p)
      elif m > 0:
        out.append(math.sqrt(2) * k * np.cos(m * phi) * p)
      else:
        out.append(math.sqrt(2) * k * np.sin(-m * phi) * p)
  return np.stack(out, -1)


def _original_angles(normals):
  theta = np.arccos(np.clip(normals[..., 2], -1 + _TINY, 1 - _TINY))
  nx = np.maximum(np.abs(normals[..., 0]), _TINY) * np.sign(normals[..., 0])
  return theta, np.arctan2(normals[..., 1], nx)


def _original_colors(verts, tris, albedo, light, rotation):
  v = np.asarray(verts, np.float64)
  cross = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
  area = np.linalg.norm(cross, axis=1, keepdims=True)
  unit = cross / np.maximum(area, _TINY)
  num, den = np.zeros_like(v), np.zeros((len(v), 1))
  for k in range(3):
    np.add.at(num, tris[:, k], unit * area / 2)
    np.add.at(den, tris[:, k], area / 2)
  normals = (num / np.maximum(den, _TINY)) @ np.asarray(rotation, np.float64).T
  basis = _sh_at_angles(*_original_angles(normals))
  coeffs = np.asarray(light, np.float64).reshape(3, 9).copy()
  coeffs[:, 0] += 0.7 * 2 * np.pi
  return np.asarray(albedo, np.float64) * (basis @ coeffs.T), normals


def test_original_direction_matches_spherical_angles():
  rng = np.random.default_rng(0)
  n = rng.normal(size=(200, 3))
  n *= rng.uniform(0.9, 1.0, (200, 1)) / np.linalg.norm(n, axis=1, keepdims=True)
  edge = [[0, 0, -0.97], [0, 0.3, -0.9], [0.2, 0, 0.95], [0, -0.5, 0.5], [0, 0, 1.0]]
  n = np.concatenate([n, edge]).astype(np.float32)
  theta, phi = _original_angles(n.astype(np.float64))
  want = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
  got = np.asarray(shading.original_direction(jnp.asarray(n)))
  np.testing.assert_allclose(got, want, atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
  # Our closed-form SH at that direction equal the original's Legendre form at those angles.
  np.testing.assert_allclose(shading.sh_basis(got), _sh_at_angles(theta, phi), atol=2e-6)
  grad = jax.grad(lambda v: jnp.sum(shading.original_direction(v) ** 3))(jnp.asarray(n))
  assert np.all(np.isfinite(grad))


def test_original_shading_mode_reproduces_the_original_colours():
  model = testing.small_model()
  coeffs = testing.random_coefficients(model, 7)
  verts = np.asarray(mm.vertices(model, coeffs.shape, coeffs.expression))
  albedo = np.asarray(mm.albedo(model, coeffs.color))
  cam = camera.camera_from_pose(coeffs.pose, 48, 48)
  tris = np.asarray(model.triangles)
  want, normals = _original_colors(verts, tris, albedo, coeffs.light, cam.rotation)
  norms = np.linalg.norm(normals, axis=1)
  assert norms.min() < 0.99 and norms.max() <= 1 + 1e-6  # the mode differs from unit normals
  args = (verts[None], albedo[None], coeffs.light[None], cam.rotation[None], model.triangles)
  got = np.asarray(pipeline.shaded_colors(*args, model.vertex_faces, original_shading=True))[0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  ours = np.asarray(pipeline.shaded_colors(*args, model.vertex_faces))[0]
  relative = np.abs(ours - got) / np.abs(got)
  assert relative.max() > 1e-3 and np.median(relative) < 0.05  # a real, mostly small change

  out = pipeline.render(model, coeffs, 48, 48, original_shading=True)
  mask = np.asarray(out.mask)
  y, x = np.argwhere(mask == 1)[len(np.argwhere(mask == 1)) // 2]
  face = int(out.fragments.face_id[y, x])
  expected = np.asarray(out.fragments.bary[y, x]) @ want[tris[face]]
  np.testing.assert_allclose(out.image[y, x], expected, rtol=1e-4, atol=1e-5)
  batched = pipeline.render_batch(
    model, jax.tree.map(lambda a: a[None], coeffs), 48, 48, original_shading=True
  )
  np.testing.assert_allclose(batched.image[0], out.image, atol=1e-5)
