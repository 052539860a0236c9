"""Camera, normals and SH shading against closed forms, quadrature and finite differences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax import testing
from focus_jax.render import camera, mesh, shading
from focus_jax.render import morphable_model as mm


def test_rotation_orthonormal_and_known_angles():
  rng = np.random.default_rng(0)
  for angles in rng.uniform(-np.pi, np.pi, (5, 3)):
    r = np.asarray(camera.euler_rotation(angles), np.float64)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-6)
  # Rz(90 deg) turns x into y; Rx(90 deg) turns y into z; Ry(90 deg) turns z into x.
  h = np.pi / 2
  np.testing.assert_allclose(camera.euler_rotation([0, 0, h]) @ np.array([1.0, 0, 0]), [0, 1, 0],
                             atol=1e-6)  # fmt: skip
  np.testing.assert_allclose(camera.euler_rotation([h, 0, 0]) @ np.array([0, 1.0, 0]), [0, 0, 1],
                             atol=1e-6)  # fmt: skip
  np.testing.assert_allclose(camera.euler_rotation([0, h, 0]) @ np.array([0, 0, 1.0]), [1, 0, 0],
                             atol=1e-6)  # fmt: skip
  # The composition order is Rx @ Ry @ Rz.
  a = np.array([0.3, -0.2, 0.7])
  rx = np.asarray(camera.euler_rotation([a[0], 0, 0]))
  ry = np.asarray(camera.euler_rotation([0, a[1], 0]))
  rz = np.asarray(camera.euler_rotation([0, 0, a[2]]))
  np.testing.assert_allclose(camera.euler_rotation(a), rx @ ry @ rz, atol=1e-6)


def test_projection_of_known_points():
  cam = camera.camera_from_pose(np.zeros(6), 224, 224)
  focal = 9.06 * 224 / 2
  assert float(cam.focal) == pytest.approx(1014.72)
  np.testing.assert_allclose(cam.principal, [111.5, 111.5])
  points = np.array([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 50.0, 0.0], [0.0, 0.0, 100.0]])
  p = np.asarray(camera.project(cam, points), np.float64)
  np.testing.assert_allclose(p[0], [111.5, 111.5, 1000.0], rtol=1e-6)
  np.testing.assert_allclose(p[1], [111.5 + focal * 0.1, 111.5, 1000.0], rtol=1e-6)
  # World y is up, image y is down; world +z is towards the camera (smaller depth).
  np.testing.assert_allclose(p[2], [111.5, 111.5 - focal * 0.05, 1000.0], rtol=1e-6)
  np.testing.assert_allclose(p[3, 2], 900.0, rtol=1e-6)
  np.testing.assert_allclose(camera.camera_centre(cam), [0.0, 0.0, 1000.0], atol=1e-3)
  # Translation is added after the offset; intrinsics scale with the image size.
  moved = camera.camera_from_pose(np.array([0, 0, 0, 10.0, 0, -500.0]), 112, 112)
  q = np.asarray(camera.project(moved, points[:1]))[0]
  f2 = 9.06 * 112 / 2
  np.testing.assert_allclose(q, [55.5 + f2 * 10 / 500, 55.5, 500.0], rtol=1e-6)


def test_projection_matches_numpy_reference():
  rng = np.random.default_rng(1)
  pose = np.concatenate([rng.uniform(-0.5, 0.5, 3), rng.uniform(-30, 30, 3)])
  pts = rng.normal(size=(20, 3)) * 60
  p = np.asarray(camera.project(camera.camera_from_pose(pose, 64, 96), pts), np.float64)
  c, s = np.cos(pose[:3]), np.sin(pose[:3])
  rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
  ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
  rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
  xc = pts @ (np.diag([1, -1, -1]) @ rx @ ry @ rz).T + pose[3:] + [0, 0, 1000]
  f = 9.06 * 96 / 2
  ref = np.stack([f * xc[:, 0] / xc[:, 2] + 47.5, f * xc[:, 1] / xc[:, 2] + 31.5, xc[:, 2]], 1)
  np.testing.assert_allclose(p, ref, rtol=2e-5, atol=2e-3)


def test_rotate_batched_value_and_gradients_match_numpy():
  rng = np.random.default_rng(2)
  points = rng.normal(size=(3, 5, 3)).astype(np.float32)
  rotations = np.stack([camera.euler_rotation(a) for a in rng.uniform(-1, 1, (3, 3))])
  weights = rng.normal(size=(3, 5, 3)).astype(np.float32)
  out = jax.vmap(camera.rotate)(points, rotations)
  np.testing.assert_allclose(out, np.einsum("bvc,bdc->bvd", points, rotations), atol=1e-5)
  loss = lambda p, r: jnp.sum(weights * jax.vmap(camera.rotate)(p, r))  # noqa: E731
  grad_p, grad_r = jax.grad(loss, (0, 1))(points, rotations)
  # d/dp sum(W * p R^T) = W R; d/dR = W^T p, per batch element.
  np.testing.assert_allclose(grad_p, np.einsum("bvd,bdc->bvc", weights, rotations), atol=1e-5)
  np.testing.assert_allclose(grad_r, np.einsum("bvd,bvc->bdc", weights, points), atol=1e-4)


def _sh_reference(n):
  x, y, z = n
  c0, c1, c2 = (
    0.5 * math.sqrt(1 / math.pi),
    math.sqrt(3 / (4 * math.pi)),
    0.5 * math.sqrt(15 / math.pi),
  )
  return [c0, -c1 * y, c1 * z, -c1 * x, c2 * x * y, -c2 * y * z,
          0.25 * math.sqrt(5 / math.pi) * (3 * z * z - 1), -c2 * x * z,
          0.5 * c2 * (x * x - y * y)]  # fmt: skip


def test_sh_closed_forms_and_orthonormality():
  rng = np.random.default_rng(2)
  n = rng.normal(size=(10, 3))
  n /= np.linalg.norm(n, axis=1, keepdims=True)
  np.testing.assert_allclose(shading.sh_basis(n), [_sh_reference(v) for v in n], atol=1e-6)
  # Gauss-Legendre in cos(theta) x uniform phi integrates degree <= 4 polynomials exactly.
  u, wu = np.polynomial.legendre.leggauss(12)
  phi = np.linspace(0, 2 * np.pi, 24, endpoint=False)
  uu, pp = np.meshgrid(u, phi, indexing="ij")
  r = np.sqrt(1 - uu**2)
  dirs = np.stack([r * np.cos(pp), r * np.sin(pp), uu], -1).reshape(-1, 3)
  w = (wu[:, None] * np.full_like(pp, 2 * np.pi / 24)).reshape(-1)
  y = np.asarray(shading.sh_basis(dirs), np.float64)
  np.testing.assert_allclose((y * w[:, None]).T @ y, np.eye(9), atol=1e-5)


def test_shade_ambient_offset_and_channels():
  normals = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
  albedo = np.array([[0.5, 0.25, 1.0], [1.0, 1.0, 1.0]])
  out = np.asarray(shading.shade(normals, albedo, np.zeros(27)))
  ambient = 0.7 * 2 * np.pi * 0.5 * math.sqrt(1 / math.pi)
  assert ambient == pytest.approx(1.2407, abs=1e-4)
  np.testing.assert_allclose(out, albedo * ambient, rtol=1e-6)
  # Coefficient layout [R0..R8, G0..G8, B0..B8]: G's band-1 z term lights only green.
  coeffs = np.zeros(27)
  coeffs[9 + 2] = -1.0
  out = np.asarray(shading.shade(normals[:1], np.ones((1, 3)), coeffs))
  c1 = math.sqrt(3 / (4 * math.pi))
  np.testing.assert_allclose(out[0], [ambient, ambient + c1, ambient], rtol=1e-6)


def _uv_sphere(n_lat=16, n_lon=24, radius=2.0):
  verts = [[0, 0, radius], [0, 0, -radius]]
  for i in range(1, n_lat):
    t = np.pi * i / n_lat
    for j in range(n_lon):
      p = 2 * np.pi * j / n_lon
      verts.append([radius * np.sin(t) * np.cos(p), radius * np.sin(t) * np.sin(p),
                    radius * np.cos(t)])  # fmt: skip
  ring = lambda i, j: 2 + (i - 1) * n_lon + (j % n_lon)
  tris = []
  for j in range(n_lon):
    tris.append([0, ring(1, j), ring(1, j + 1)])
    tris.append([1, ring(n_lat - 1, j + 1), ring(n_lat - 1, j)])
    for i in range(1, n_lat - 1):
      a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
      tris += [[a, c, b], [b, c, d]]
  return np.array(verts, np.float32), np.array(tris, np.int32)


def test_sphere_normals_are_unit_and_outward():
  v, t = _uv_sphere()
  n = np.asarray(mesh.vertex_normals(v, t))
  np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
  # Area weighting is exact only for symmetric fans; a UV sphere stays within ~2 degrees.
  assert np.min(np.sum(n * v / 2.0, axis=1)) > np.cos(np.radians(2.5))
  fn = np.asarray(mesh.face_normals(v, t))
  centroid = v[t].mean(1)
  assert np.all(np.sum(fn * centroid, 1) > 0)


def test_embedded_face_normals_point_to_the_camera():
  model = testing.small_model()
  n = np.asarray(mesh.vertex_normals(model.shape_mean, model.triangles))
  nose_tip = np.asarray(model.landmarks)[30]
  assert n[nose_tip, 2] > 0.8
  assert np.mean(n[:, 2] > 0) > 0.95


def test_normals_and_shading_gradients_match_finite_differences():
  model = testing.small_model()
  coeffs = testing.random_coefficients(model, seed=3)
  tri = model.triangles
  weights = jnp.asarray(np.random.default_rng(4).uniform(size=(model.num_vertices, 3)))

  def loss(alpha):
    v = mm.vertices(model, alpha, coeffs.expression)
    cam = camera.camera_from_pose(coeffs.pose, 64, 64)
    n = mesh.vertex_normals(v, tri) @ cam.rotation.T
    col = shading.shade(n, mm.albedo(model, coeffs.color), coeffs.light)
    return jnp.sum(weights * col)

  # float32 throughout (as in training): a loss of ~1e4 carries ~1e-3 rounding, so the step is
  # large enough for that to stay below 1 % of the gradient.
  alpha = jnp.asarray(coeffs.shape)
  grad = jax.grad(loss)(alpha)
  eps = 0.05
  for k in (0, 3, 17):
    e = jnp.zeros_like(alpha).at[k].set(eps)
    fd = (loss(alpha + e) - loss(alpha - e)) / (2 * eps)
    np.testing.assert_allclose(grad[k], fd, rtol=3e-2, atol=2e-2)


def _irregular_mesh(seed=0, num_vertices=30, num_faces=70):
  """Random triangles (irregular valences), one vertex unused and one degenerate face."""
  rng = np.random.default_rng(seed)
  verts = rng.normal(size=(num_vertices, 3)).astype(np.float32)
  tris = rng.integers(0, num_vertices - 1, (num_faces, 3)).astype(np.int32)
  tris[0] = [3, 3, 5]  # a repeated corner: zero area, listed twice for vertex 3
  return verts, tris


def test_vertex_face_table_lists_every_corner_once():
  verts, tris = _irregular_mesh()
  table = mesh.vertex_face_table(tris, len(verts))
  assert table.shape[:2] == (3, len(verts))
  for k in range(3):
    for v in range(len(verts)):
      listed = sorted(f for f in table[k, v] if f < len(tris))
      assert listed == sorted(np.flatnonzero(tris[:, k] == v).tolist())
  assert np.all(table[:, -1] == len(tris))  # the unused vertex reads only the padding face
  with pytest.raises(ValueError, match="outside"):
    mesh.vertex_face_table(tris, 5)


def _normals_reference(verts, tris):
  """Scatter-add of the float64 cross products, the definition of the area-weighted sum."""
  v = np.asarray(verts, np.float64)
  cross = np.cross(
    v[..., tris[:, 1], :] - v[..., tris[:, 0], :], v[..., tris[:, 2], :] - v[..., tris[:, 0], :]
  )
  summed = np.zeros_like(v)
  for k in range(3):
    np.add.at(summed, (..., tris[:, k], slice(None)), cross)
  return summed, np.linalg.norm(cross, axis=-1)


def test_batched_gather_normals_match_scatter_reference_and_fallback():
  verts, tris = _irregular_mesh(1)
  batch = np.stack([verts, 1.5 * verts[:, [1, 2, 0]]])
  summed, _ = _normals_reference(batch, tris)
  expected = summed / np.maximum(np.linalg.norm(summed, axis=-1, keepdims=True), 1e-6)
  np.testing.assert_allclose(mesh.area_weighted_normals(batch, tris), summed, atol=1e-5)
  np.testing.assert_allclose(mesh.vertex_normals(batch, tris), expected, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(mesh.vertex_normals(batch, tris))[:, -1], 0.0)
  # Traced triangles without a table take the scatter-add fallback: same values.
  traced = jax.jit(mesh.vertex_normals)(batch, jnp.asarray(tris))
  np.testing.assert_allclose(traced, expected, atol=1e-5)


def test_gather_normals_gradient_equals_autodiff_of_scatter_definition():
  verts, tris = _irregular_mesh(2)
  batch = jnp.asarray(np.stack([verts, verts + 0.1]))
  weights = jnp.asarray(np.random.default_rng(3).normal(size=batch.shape), jnp.float32)
  table = jnp.asarray(mesh.vertex_face_table(tris, len(verts)))

  def fast(v, fn):
    return jnp.sum(weights * fn(v, jnp.asarray(tris), table))

  def reference(v, normalise):
    cross = jax.vmap(mesh.face_cross, (0, None))(v, jnp.asarray(tris))
    summed = jnp.zeros_like(v).at[:, tris.reshape(-1)].add(jnp.repeat(cross, 3, axis=1))
    return jnp.sum(weights * (mesh._safe_normalize(summed) if normalise else summed))

  for fn, normalise in [(mesh.vertex_normals, True), (mesh.area_weighted_normals, False)]:
    got = jax.jit(jax.grad(fast), static_argnums=1)(batch, fn)
    want = jax.grad(reference)(batch, normalise)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


def test_original_vertex_normals_are_the_area_weighted_mean():
  verts, tris = _irregular_mesh(4)
  summed, area2 = _normals_reference(verts, tris)
  weight = np.zeros(len(verts))
  for k in range(3):
    np.add.at(weight, tris[:, k], area2)
  expected = summed / np.maximum(weight, 1e-35)[:, None]
  got = np.asarray(mesh.original_vertex_normals(verts, tris))
  np.testing.assert_allclose(got, expected, atol=1e-5)
  norms = np.linalg.norm(got[weight > 0], axis=1)
  assert np.all(norms <= 1 + 1e-6) and norms.min() < 0.9  # a mean of unit vectors, not unit
  grad = jax.grad(lambda v: jnp.sum(mesh.original_vertex_normals(v, tris) ** 2))(verts)
  assert np.all(np.isfinite(grad))  # the degenerate face has a zero-area norm


def test_batched_basis_combination_matches_per_face():
  model = testing.small_model()
  coeffs = [testing.random_coefficients(model, s) for s in range(2)]
  shape = np.stack([c.shape for c in coeffs])
  expression = np.stack([c.expression for c in coeffs])
  batched = mm.vertices(model, shape, expression)
  for b in range(2):
    np.testing.assert_allclose(batched[b], mm.vertices(model, shape[b], expression[b]), atol=1e-4)
  with pytest.raises(ValueError, match="coefficients"):
    mm.albedo(model, shape[:, :3])
