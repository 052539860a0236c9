"""NoW-style error: exact point-to-triangle distance, alignment, crop, self-error, files."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from focus_jax import files, testing
from focus_jax.eval import mesh_distance, now


def _random_similarity(seed):
  rng = np.random.default_rng(seed)
  rot = Rotation.random(random_state=seed).as_matrix()
  return mesh_distance.Similarity(float(rng.uniform(0.5, 2.0)), rot, rng.normal(0, 50, 3))


def _face():
  m = testing.small_model()
  vertices = np.asarray(m.shape_mean, np.float64)
  return vertices, np.asarray(m.triangles), vertices[np.asarray(m.now_landmarks)]


def test_point_triangle_distance_vs_dense_sampling():
  rng = np.random.default_rng(0)
  n = 200
  a, b, c = rng.normal(size=(3, n, 3))
  c[:10] = a[:10] + 0.5 * (b[:10] - a[:10])  # Degenerate (collinear) triangles.
  b[10:15] = a[10:15]  # Degenerate (two coincident corners).
  p = rng.normal(size=(n, 3)) * 2
  p[20:40] = (0.2 * a + 0.3 * b + 0.5 * c)[20:40] + 1e-3 * rng.normal(size=(20, 3))
  dist, closest = mesh_distance.point_triangle_closest(p, a, b, c)
  # The closest point lies on the triangle and realises the distance.
  np.testing.assert_allclose(np.linalg.norm(p - closest, axis=1), dist, rtol=1e-12)
  # Dense barycentric sampling: never below the exact distance, and within the sampling step.
  steps = 120
  i, j = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
  keep = i + j <= steps
  u, v = i[keep] / steps, j[keep] / steps
  samples = a[:, None] + u[None, :, None] * (b - a)[:, None] + v[None, :, None] * (c - a)[:, None]
  sampled = np.linalg.norm(samples - p[:, None], axis=-1).min(axis=1)
  assert np.all(sampled >= dist - 1e-12)
  edge = np.max(np.linalg.norm(np.stack([b - a, c - a, c - b]), axis=-1), axis=0)
  assert np.all(sampled - dist <= edge / steps)


def _brute_force(points, vertices, triangles):
  corners = vertices[triangles]
  dist, _ = mesh_distance.point_triangle_closest(
    points[:, None], corners[None, :, 0], corners[None, :, 1], corners[None, :, 2]
  )
  return dist.min(axis=1)


@pytest.mark.parametrize("k", [2, 8])
def test_mesh_distance_is_exact_against_brute_force(k):
  vertices, triangles, _ = _face()
  triangles = triangles.copy()
  triangles[:5, 2] = triangles[:5, 1]  # Degenerate triangles (two coincident corners).
  mesh = mesh_distance.MeshDistance(vertices, triangles, k=k)
  rng = np.random.default_rng(1)
  # Points on, near and far from the surface (up to ~60 mm), the hard cases for the certificate.
  points = vertices[rng.choice(len(vertices), 150)] + rng.normal(0, 1, (150, 3)) * rng.choice(
    [0.0, 0.1, 2.0, 10.0, 30.0], (150, 1)
  )
  points[:3] = vertices[triangles[:3, 0]]  # Exactly on degenerate triangles' corners.
  brute = _brute_force(points, vertices, triangles)
  dist, closest, tri = mesh.query(points)
  np.testing.assert_allclose(dist, brute, rtol=0, atol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(points - closest, axis=1), dist, atol=1e-12)
  corners = vertices[triangles]
  own, _ = mesh_distance.point_triangle_closest(points, *(corners[tri][:, i] for i in range(3)))
  np.testing.assert_allclose(own, dist, atol=1e-12)
  approx, _, _ = mesh.query(points, exact=False)  # Upper bound without the certificate.
  assert np.all(approx >= dist - 1e-12)


def test_umeyama_recovers_similarity():
  rng = np.random.default_rng(2)
  src = rng.normal(size=(7, 3)) * 30
  truth = _random_similarity(3)
  est = mesh_distance.umeyama(src, truth.apply(src))
  np.testing.assert_allclose(est.scale, truth.scale, rtol=1e-12)
  np.testing.assert_allclose(est.rotation, truth.rotation, atol=1e-12)
  np.testing.assert_allclose(est.translation, truth.translation, atol=1e-10)
  assert np.linalg.det(est.rotation) > 0
  # A reflected target still yields a proper rotation.
  assert np.linalg.det(mesh_distance.umeyama(src, src * [1, 1, -1]).rotation) > 0
  np.testing.assert_allclose(truth.inverse_apply(truth.apply(src)), src, atol=1e-10)
  with pytest.raises(ValueError, match="at least 3"):
    mesh_distance.umeyama(src[:2], src[:2])


def test_crop_sphere_rule():
  lm = np.array(
    [[-40, 0, 0], [-10, 0, 0], [10, 0, 0], [40, 0, 0], [0, -40, 10], [-20, -60, 0], [20, -60, 0]],
    float,
  )
  centre, radius = now.crop_sphere(lm)
  bridge = np.array([0.0, 0.0, 0.0])
  np.testing.assert_allclose(centre, lm[4] + 0.3 * (bridge - lm[4]))
  np.testing.assert_allclose(radius, 1.4 * (80 + np.linalg.norm(lm[4])) / 2)


def test_self_error_under_similarity_is_zero():
  vertices, triangles, lm = _face()
  sim = _random_similarity(4)
  scan = sim.apply(vertices)
  # The prediction is a differently scaled/rotated copy: the error must vanish after alignment.
  result = now.scan_to_mesh_error(scan, sim.apply(lm), vertices, triangles, lm)
  assert result.distances.size > 1000
  assert np.max(result.distances) < 1e-6
  np.testing.assert_allclose(result.similarity.scale, sim.scale, rtol=1e-9)
  summary = now.summarize([result.distances])
  assert summary["median"] < 1e-6 and summary["count"] == result.distances.size


def test_refinement_improves_a_perturbed_landmark_alignment():
  vertices, triangles, lm = _face()
  rng = np.random.default_rng(5)
  scan = vertices + rng.normal(0, 0.3, vertices.shape)  # A noisy scan of the same face.
  noisy_lm = lm + rng.normal(0, 3.0, lm.shape)  # Poor predicted landmarks.
  refined = now.scan_to_mesh_error(scan, lm, vertices, triangles, noisy_lm)
  unrefined = now.scan_to_mesh_error(scan, lm, vertices, triangles, noisy_lm, max_iterations=0)
  assert refined.iterations >= 1
  assert np.mean(refined.distances**2) < 0.5 * np.mean(unrefined.distances**2)
  assert np.median(refined.distances) < 0.35  # About the scan noise (0.3 mm per axis).
  # The full-crop refinement reaches the optimum of a refinement on every point from the start.
  full = now.scan_to_mesh_error(scan, lm, vertices, triangles, noisy_lm, refine_points=None)
  np.testing.assert_allclose(
    np.sqrt(np.mean(refined.distances**2)), np.sqrt(np.mean(full.distances**2)), rtol=1e-3
  )


def test_evaluate_many_matches_single_calls():
  vertices, triangles, lm = _face()
  sim = _random_similarity(6)
  rng = np.random.default_rng(7)
  jobs = [
    (
      sim.apply(vertices + rng.normal(0, 0.2, vertices.shape)),
      sim.apply(lm),
      vertices,
      triangles,
      lm,
    )
    for _ in range(2)
  ]
  many = now.evaluate_many(jobs, processes=2, refine_points=500)
  for job, result in zip(jobs, many, strict=True):
    single = now.scan_to_mesh_error(*job, refine_points=500)
    np.testing.assert_allclose(result.distances, single.distances, rtol=0, atol=1e-12)


def test_submission_files_round_trip(tmp_path):
  vertices, triangles, lm = _face()
  mesh_path = tmp_path / "FaMoS_180424_03335_TA" / "multiview_neutral" / "IMG_0101.obj"
  lm_path = now.write_submission(mesh_path, vertices, triangles, lm)
  v, t = files.read_obj(mesh_path)
  np.testing.assert_allclose(v, vertices, atol=1e-6)
  np.testing.assert_array_equal(t, triangles)
  assert not any(line.startswith("v ") and len(line.split()) != 4 for line in open(mesh_path))
  np.testing.assert_allclose(now.read_landmarks(lm_path), lm)
  txt = tmp_path / "lm.txt"
  np.savetxt(txt, lm)
  np.testing.assert_allclose(now.read_landmarks(txt), lm)
  pp = tmp_path / "lm.pp"
  points = "".join(f'<point x="{x}" y="{y}" z="{z}" name="{i}"/>' for i, (x, y, z) in enumerate(lm))
  pp.write_text(f"<!DOCTYPE PickedPoints><PickedPoints>{points}</PickedPoints>")
  np.testing.assert_allclose(now.read_landmarks(pp), lm)
  bad = tmp_path / "bad.obj"
  bad.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 x\n")
  with pytest.raises(ValueError, match="bad.obj:4"):
    files.read_obj(bad)
  with pytest.raises(ValueError, match="7x3"):
    now.write_landmarks(tmp_path / "x.npy", lm[:6])


def _random_soup(seed, n_vertices=60, n_triangles=120):
  """A random triangle soup with degenerate triangles (two coincident corners, collinear)."""
  rng = np.random.default_rng(seed)
  vertices = rng.normal(0, 10, (n_vertices, 3))
  triangles = rng.integers(0, n_vertices - 1, (n_triangles, 3))
  triangles[:4, 2] = triangles[:4, 1]  # Two coincident corners.
  vertices[-1] = 0.5 * (vertices[0] + vertices[1])
  triangles[4] = [0, 1, n_vertices - 1]  # Collinear corners.
  return vertices, triangles, rng


def test_closest_kernel_matches_numpy_over_the_same_candidates():
  from focus_jax.eval import closest_kernel

  vertices, triangles, rng = _random_soup(8)
  mesh = mesh_distance.MeshDistance(vertices, triangles)
  n = closest_kernel.BLOCK + 37  # Two blocks, the last one padded.
  points = rng.normal(0, 12, (n, 3))
  points[:5] = vertices[triangles[:5, 0]]  # On degenerate triangles' corners.
  sites = rng.integers(0, mesh.tree.n, (n, 3))
  d2, tri, residual = closest_kernel.closest(points, sites, mesh._device_tables)
  candidates = mesh.site_incident[sites].reshape(n, -1)
  owner, cand = np.nonzero(candidates >= 0)
  pairs = mesh._exact2(np.ascontiguousarray(points.T)[:, owner], candidates[owner, cand])
  expected = np.full(candidates.shape, np.inf)
  expected[owner, cand] = pairs
  np.testing.assert_allclose(d2, expected.min(axis=1), rtol=1e-9, atol=1e-12)
  assert np.all(np.any(candidates == tri[:, None], axis=1))  # The pick is a candidate ...
  own, own_residual = mesh._exact2(np.ascontiguousarray(points.T), tri, residual=True)
  np.testing.assert_allclose(own, d2, rtol=1e-9, atol=1e-12)  # ... at that distance.
  np.testing.assert_allclose(residual, own_residual.T, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [2, 8])
def test_mesh_distance_is_exact_on_random_soups(k):
  vertices, triangles, rng = _random_soup(9)
  mesh = mesh_distance.MeshDistance(vertices, triangles, k=k)
  # Near and far points: with k = 2 most of them need the exhaustive fallback.
  points = vertices[rng.integers(0, len(vertices), 300)] + rng.normal(0, 1, (300, 3)) * rng.choice(
    [0.0, 0.5, 5.0, 40.0], (300, 1)
  )
  dist, closest, tri = mesh.query(points)
  np.testing.assert_allclose(dist, _brute_force(points, vertices, triangles), rtol=0, atol=1e-9)
  np.testing.assert_allclose(np.linalg.norm(points - closest, axis=1), dist, atol=1e-9)
  corners = vertices[triangles[tri]]
  own, _ = mesh_distance.point_triangle_closest(points, *(corners[:, i] for i in range(3)))
  np.testing.assert_allclose(own, dist, atol=1e-9)


def test_plane_moments_match_direct_sums():
  rng = np.random.default_rng(10)
  n = 500
  anchor = rng.normal(0, 40, (n, 3))
  direction = rng.normal(size=(n, 3))
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  sim = _random_similarity(11)
  scan = sim.apply(anchor + direction * rng.normal(0, 2, (n, 1))) + rng.normal(0, 0.5, (n, 3))
  planes = mesh_distance._Planes(scan, anchor, direction)
  # Direct sums, as in the per-point formulation: y = sim(anchor), u = R direction.
  y, u = sim.apply(anchor), direction @ sim.rotation.T
  residual = np.sum(u * (scan - y), axis=1)
  np.testing.assert_allclose(planes.rms(sim), np.sqrt(np.mean(residual**2)), rtol=1e-9)
  z = y - y.mean(axis=0)
  jac = np.column_stack([np.sum(u * z, axis=1), np.cross(z, u), u])
  jtj = jac.T @ jac
  step = np.linalg.solve(jtj + 1e-3 * np.diag(np.diag(jtj)), jac.T @ residual)
  rotation = mesh_distance._rotation_vector(step[1:4])
  centre = y.mean(axis=0)
  update = mesh_distance.Similarity(
    1 + step[0], rotation, centre + step[4:] - (1 + step[0]) * rotation @ centre
  )
  expected, got = update.compose(sim), planes.step(sim, 1e-3)
  np.testing.assert_allclose(got.scale, expected.scale, rtol=1e-9)
  np.testing.assert_allclose(got.rotation, expected.rotation, atol=1e-9)
  np.testing.assert_allclose(got.translation, expected.translation, rtol=1e-9, atol=1e-9)
