"""Rasteriser, interpolation and soft mask vs the NumPy reference, edge cases and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax import testing
from focus_jax.render import camera, composite, fusion, interpolate, rasterize, rasterize_reference
from focus_jax.render import morphable_model as mm

H = W = 32


def _raster(projected, triangles, window=2, height=H, width=W):
  # Pad with degenerate triangles (never drawn) to a multiple of 64 faces so that tests share
  # compiled programs: compilation dominates the run time of these small cases.
  triangles = np.asarray(triangles, np.int32)
  pad = -len(triangles) % 64
  triangles = np.concatenate([triangles, np.zeros((pad, 3), np.int32)])
  return rasterize.rasterize(
    jnp.asarray(projected, jnp.float32),
    jnp.asarray(triangles),
    height=height,
    width=width,
    window=window,
  )


def _random_mesh(seed, num_vertices=40, num_faces=60, lo=-6.0, hi=38.0):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(lo, hi, (num_vertices, 2))
  z = rng.uniform(1.0, 10.0, (num_vertices, 1))
  tris = rng.integers(0, num_vertices, (num_faces, 3))
  return np.concatenate([xy, z], 1).astype(np.float32), tris.astype(np.int32)


def _check_against_reference(projected, triangles, fragments, height=H, width=W):
  ref_id, ref_bary, ref_depth, ambiguous = rasterize_reference.rasterize_reference(
    projected, triangles, height, width, tol=1e-4
  )
  face_id = np.asarray(fragments.face_id)
  mismatch = face_id != ref_id
  # float32 vs float64 may only disagree within rounding distance of an edge or a depth tie.
  assert not np.any(mismatch & ~ambiguous), np.argwhere(mismatch & ~ambiguous)
  assert ambiguous.mean() < 0.05
  same = ~mismatch
  np.testing.assert_allclose(np.asarray(fragments.bary)[same], ref_bary[same], atol=2e-4)
  np.testing.assert_allclose(np.asarray(fragments.depth)[same], ref_depth[same], rtol=1e-5)
  return ref_id


def test_random_meshes_match_reference():
  for seed in range(3):
    projected, triangles = _random_mesh(seed)
    ref_id = _check_against_reference(projected, triangles, _raster(projected, triangles))
    assert (ref_id >= 0).sum() > 100  # the meshes actually draw something


def test_small_model_matches_reference():
  model = testing.small_model()
  coeffs = testing.random_coefficients(model, 1)
  size = 64
  verts = mm.vertices(model, coeffs.shape, coeffs.expression)
  projected = np.asarray(camera.project(camera.camera_from_pose(coeffs.pose, size, size), verts))
  triangles = np.asarray(model.triangles)
  frags = _raster(projected, triangles, height=size, width=size)
  ref_id = _check_against_reference(projected, triangles, frags, size, size)
  assert (ref_id >= 0).mean() > 0.3


@pytest.mark.slow
def test_bfm_sized_model_matches_reference_at_224():
  model = testing.bfm_sized_model()
  size = 224
  for seed in range(2):
    coeffs = testing.random_coefficients(model, seed)
    verts = mm.vertices(model, coeffs.shape, coeffs.expression)
    cam = camera.camera_from_pose(coeffs.pose, size, size)
    projected = np.asarray(camera.project(cam, verts))
    triangles = np.asarray(model.triangles)
    frags = rasterize.rasterize(projected, triangles, height=size, width=size)
    _check_against_reference(projected, triangles, frags, size, size)


def _one(tri_xy, depth=5.0):
  projected = np.array([[x, y, depth] for x, y in tri_xy], np.float32)
  return projected, np.array([[0, 1, 2]], np.int32)


def test_inclusive_edges_and_vertices():
  # Front-facing = negative signed area with y down: (0,0) -> (0,4) -> (4,0).
  projected, tris = _one([(2, 2), (2, 6), (6, 2)])
  face_id = np.asarray(_raster(projected, tris).face_id)
  expected = np.full((H, W), -1)
  for y in range(2, 7):
    for x in range(2, 7):
      if (x - 2) + (y - 2) <= 4:
        expected[y, x] = 0
  np.testing.assert_array_equal(face_id, expected)


def test_back_facing_degenerate_and_behind_camera_draw_nothing():
  back, tris = _one([(2, 2), (6, 2), (2, 6)])
  assert np.all(np.asarray(_raster(back, tris).face_id) == -1)
  flat, _ = _one([(2, 2), (4, 4), (8, 8)])
  assert np.all(np.asarray(_raster(flat, tris).face_id) == -1)
  behind, _ = _one([(2, 2), (2, 6), (6, 2)])
  behind[1, 2] = -1.0
  assert np.all(np.asarray(_raster(behind, tris).face_id) == -1)


def test_large_partly_off_screen_and_sliver():
  projected = np.array(
    [[-50, -50, 5], [-50, 200, 5], [200, -50, 5], [2.9, 1.1, 2], [3.05, 30.7, 2], [3.2, 1.0, 2]],
    np.float32,
  )
  tris = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
  frags = _raster(projected, tris)
  _check_against_reference(projected, tris, frags)
  face_id = np.asarray(frags.face_id)
  assert np.all((face_id == 0) | (face_id == 1))  # the big one covers the whole image
  assert 0 < (face_id == 1).sum() < 32  # the sliver covers one column at most


def test_depth_tie_goes_to_lower_index_and_nearest_wins():
  projected = np.array([[1, 1, 5], [1, 20, 5], [20, 1, 5], [1, 1, 4], [1, 9, 4], [9, 1, 4]])
  tris = np.array([[0, 1, 2], [0, 1, 2], [3, 4, 5]], np.int32)
  face_id = np.asarray(_raster(projected, tris).face_id)
  assert face_id[15, 3] == 0  # exact tie between faces 0 and 1
  assert face_id[2, 2] == 2  # nearer face wins
  swapped = np.asarray(_raster(projected, tris[[2, 1, 0]]).face_id)
  assert swapped[15, 3] == 1 and swapped[2, 2] == 0


def test_many_large_triangles_overflow_is_exact():
  # 300 triangles larger than every small window: the chunked levels loop until all are drawn.
  projected, triangles = _random_mesh(7, num_vertices=30, num_faces=256, lo=-20, hi=52)
  frags = _raster(projected, triangles, window=2)
  _check_against_reference(projected, triangles, frags)


def test_front_facing_matches_world_space_rule():
  rng = np.random.default_rng(0)
  pose = np.array([0.2, -0.3, 0.1, 5.0, -3.0, 10.0], np.float32)
  cam = camera.camera_from_pose(pose, H, W)
  centre = np.asarray(camera.camera_centre(cam), np.float64)
  world = rng.normal(scale=60.0, size=(200, 3, 3)).astype(np.float32)
  projected = np.asarray(camera.project(cam, world.reshape(-1, 3)), np.float64).reshape(200, 3, 3)
  w = world.astype(np.float64)
  normal = np.cross(w[:, 1] - w[:, 0], w[:, 2] - w[:, 0])
  world_front = np.einsum("fc,fc->f", w[:, 0] - centre, normal) < 0
  p = projected
  area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (
    p[:, 2, 0] - p[:, 0, 0]
  )
  np.testing.assert_array_equal(area < 0, world_front)


def test_interpolate_matches_reference():
  projected, triangles = _random_mesh(3)
  attrs = np.random.default_rng(1).normal(size=(projected.shape[0], 4)).astype(np.float32)
  frags = _raster(projected, triangles)
  ref_id, ref_bary, _, _ = rasterize_reference.rasterize_reference(projected, triangles, H, W)
  expected = np.einsum("hwk,hwkc->hwc", ref_bary, attrs[triangles[np.maximum(ref_id, 0)]])
  expected[ref_id < 0] = 0
  out = interpolate.interpolate(jnp.asarray(attrs), frags, jnp.asarray(triangles))
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4)
  # Perspective-correct: barycentrics weighted by 1/z and renormalised.
  z = projected[triangles[np.maximum(ref_id, 0)], 2]
  wts = ref_bary / z
  wts /= np.maximum(wts.sum(-1, keepdims=True), 1e-30)
  expected = np.einsum("hwk,hwkc->hwc", wts, attrs[triangles[np.maximum(ref_id, 0)]])
  expected[ref_id < 0] = 0
  out = interpolate.interpolate(
    jnp.asarray(attrs),
    frags,
    jnp.asarray(triangles),
    jnp.asarray(projected),
    perspective_correct=True,
  )
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4)


def _grid_mesh(n=4, lo=4.0, hi=27.0):
  """A small front-facing grid mesh with a random depth, (n+1)^2 vertices."""
  rng = np.random.default_rng(0)
  ys, xs = np.meshgrid(np.linspace(lo, hi, n + 1), np.linspace(lo, hi, n + 1), indexing="ij")
  xy = np.stack([xs, ys], -1).reshape(-1, 2) + rng.uniform(-0.7, 0.7, ((n + 1) ** 2, 2))
  z = rng.uniform(4.0, 6.0, ((n + 1) ** 2, 1))
  tris = []
  for i in range(n):
    for j in range(n):
      a, b, c, d = (
        i * (n + 1) + j,
        i * (n + 1) + j + 1,
        (i + 1) * (n + 1) + j,
        (i + 1) * (n + 1) + j + 1,
      )
      tris += [[a, c, b], [b, c, d]]
  return np.concatenate([xy, z], 1).astype(np.float32), np.array(tris, np.int32)


def test_image_gradients_match_finite_differences():
  projected, triangles = _grid_mesh()
  colors = np.random.default_rng(2).uniform(0, 1, (projected.shape[0], 3)).astype(np.float32)
  target = np.random.default_rng(3).uniform(0, 1, (H, W, 3)).astype(np.float32)
  face_id = _raster(projected, triangles).face_id

  def errors(p, c):
    # Visibility fixed (point-sampled, no gradient): the smooth dependence of interior pixels.
    frags = rasterize.fragments_from_face_id(p, jnp.asarray(triangles), face_id)
    return (interpolate.interpolate(c, frags, jnp.asarray(triangles)) - target) ** 2

  errors_jit = jax.jit(errors)
  gp, gc = jax.grad(lambda p, c: jnp.sum(errors(p, c)), (0, 1))(projected, colors)

  def central(plus, minus, eps):
    # Difference per pixel before summing: float32 sums of ~1e3 would drown the signal.
    return float(np.sum(np.asarray(errors_jit(*plus)) - np.asarray(errors_jit(*minus)))) / (2 * eps)

  eps = 0.05
  for v, k in [(6, 0), (7, 1), (12, 0), (18, 1)]:
    d = np.zeros_like(projected)
    d[v, k] = eps
    fd = central((projected + d, colors), (projected - d, colors), eps)
    np.testing.assert_allclose(gp[v, k], fd, rtol=2e-2, atol=2e-3)
  for v, k in [(6, 0), (12, 2)]:
    d = np.zeros_like(colors)
    d[v, k] = eps
    fd = central((projected, colors + d), (projected, colors - d), eps)
    np.testing.assert_allclose(gc[v, k], fd, rtol=1e-2, atol=1e-3)


def test_soft_mask_exact_away_from_edges_and_grows_outward():
  projected, triangles = _grid_mesh(n=3, lo=8.0, hi=23.0)
  tri = jnp.asarray(triangles)

  def soft(p):
    frags = _raster(p, triangles)
    return composite.soft_mask(p, tri, frags, sigma=1.0), frags

  mask, frags = soft(jnp.asarray(projected))
  hard = np.asarray(frags.face_id >= 0)
  mask = np.asarray(mask)
  assert mask.min() >= 0 and mask.max() <= 1
  # Exactly the hard mask wherever the 3x3 window holds no coverage change.
  padded = np.pad(hard, 1, mode="edge")
  windows = np.stack([padded[dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3)])
  far = windows.all(0) | (~windows).all(0)
  np.testing.assert_array_equal(mask[far], hard[far].astype(np.float32))
  assert np.any((mask > 0) & (mask < 1))
  # Moving a right-boundary vertex outward (+x) grows the mask: gradient sign and magnitude.
  vertex = 3 + 4 * 2  # last column of the second row of the 4x4 vertex grid
  total = jax.jit(lambda p: jnp.sum(soft(p)[0]))
  grad = jax.grad(lambda p: jnp.sum(soft(p)[0]))(jnp.asarray(projected))[vertex, 0]
  eps = 0.05
  d = np.zeros_like(projected)
  d[vertex, 0] = eps
  fd = (total(projected + d) - total(projected - d)) / (2 * eps)
  assert grad > 0.1
  np.testing.assert_allclose(grad, fd, rtol=0.2)


def test_soft_mask_band_overflow_takes_the_dense_path_with_equal_results():
  """A capacity below the band size switches to the dense path, a capacity of three times the
  band to the short list: same values and gradients on every branch."""
  projected, triangles = _grid_mesh(n=3, lo=8.0, hi=23.0)
  tri = jnp.asarray(triangles)
  frags = _raster(projected, triangles)
  band = int(composite.band(frags.face_id >= 0, 1).sum())
  weights = jnp.asarray(np.random.default_rng(0).uniform(size=(H, W)), jnp.float32)

  def run(capacity):
    f = lambda p: composite.soft_mask(p, tri, frags, sigma=1.0, capacity=capacity)
    value = jax.jit(f)(jnp.asarray(projected))
    grad = jax.jit(jax.grad(lambda p: jnp.sum(weights * f(p))))(jnp.asarray(projected))
    return np.asarray(value), np.asarray(grad)

  sparse, dense = run(band), run(band - 1)
  np.testing.assert_allclose(sparse[0], dense[0], atol=1e-6)
  np.testing.assert_allclose(sparse[1], dense[1], rtol=1e-5, atol=1e-6)
  assert np.abs(sparse[1]).max() > 0
  # The short list: exactly full at capacity 3 * band, one short at 3 * band - 3.
  for capacity, branch in ((3 * band, 0), (3 * band - 3, 1), (band, 1), (band - 1, 2)):
    assert int(composite.tier(jnp.asarray(band), capacity)) == branch, capacity
  for capacity in (3 * band, 3 * band - 3):
    value, grad = run(capacity)
    np.testing.assert_allclose(value, dense[0], atol=1e-6)
    np.testing.assert_allclose(grad, dense[1], rtol=1e-5, atol=1e-6)


def test_soft_mask_tiers():
  assert composite.tiers(5376) == (1792, 5376)
  assert composite.tiers(2) == (2,)
  counts = jnp.asarray([0, 1792, 1793, 5376, 5377])
  np.testing.assert_array_equal(np.asarray(composite.tier(counts, 5376)), [0, 0, 1, 1, 2])


def test_vmap_matches_single_and_does_not_retrace():
  meshes = [_random_mesh(s) for s in range(3)]
  projected = np.stack([m[0] for m in meshes])
  triangles = meshes[0][1]
  traces = []

  @jax.jit
  def batch(p):
    traces.append(1)
    return jax.vmap(lambda q: rasterize.rasterize(q, triangles, height=H, width=W))(p)

  out = batch(jnp.asarray(projected))
  for b in range(3):
    single = _raster(projected[b], triangles)
    np.testing.assert_array_equal(np.asarray(out.face_id[b]), np.asarray(single.face_id))
    np.testing.assert_allclose(np.asarray(out.bary[b]), np.asarray(single.bary), atol=1e-6)
  batch(jnp.asarray(projected + 0.5))
  assert len(traces) == 1


def test_hand_written_vjps_match_autodiff_under_vmap():
  # The barycentric/depth and interpolation VJPs are written by hand (speed); they must equal
  # automatic differentiation of the same forward formulas, batched as the pipeline batches.
  projected, triangles = _grid_mesh()
  tri = jnp.asarray(np.concatenate([triangles, np.zeros((64 - len(triangles), 3), np.int32)]))
  batch = np.stack([projected, projected + np.float32([0.3, -0.2, 0.1])])
  colors = np.random.default_rng(5).uniform(0, 1, (2, projected.shape[0], 3)).astype(np.float32)
  face_id = jax.vmap(lambda p: rasterize.zbuffer(p, tri, height=H, width=W))(batch)
  rng = np.random.default_rng(6)
  w_image = jnp.asarray(rng.normal(size=(2, H, W, 3)), jnp.float32)
  w_depth = jnp.asarray(rng.normal(size=(2, H, W)), jnp.float32)

  def loss(p, c, autodiff):
    def one(p, c, ids):
      if not autodiff:
        frags = rasterize.fragments_from_face_id(p, tri, ids)
        return interpolate.interpolate(c, frags, tri), frags.depth
      covered = ids >= 0
      idx = tri[jnp.where(covered, ids, 0)]
      py, px = jnp.meshgrid(jnp.arange(H, dtype=jnp.float32), jnp.arange(W, dtype=jnp.float32))
      bary, depth, _ = rasterize._bary_depth_value(p[idx], px.T, py.T, idx)
      bary = jnp.where(covered[..., None], bary, 0.0)
      image = jnp.where(covered[..., None], jnp.einsum("hwk,hwkc->hwc", bary, c[idx]), 0.0)
      return image, jnp.where(covered, depth, 0.0)

    image, depth = jax.vmap(one)(p, c, face_id)
    return jnp.sum(w_image * image) + jnp.sum(w_depth * depth)

  grads = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)
  fast, reference = grads(batch, colors, False), grads(batch, colors, True)
  assert float(jnp.max(jnp.abs(reference[0][..., 2]))) > 0  # depth gradients are exercised
  for a, b in zip(fast, reference, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_materialise_is_identity_for_int_and_float_trees_under_vmap():
  tree = (jnp.arange(6, dtype=jnp.int32).reshape(2, 3), jnp.linspace(0, 1, 6).reshape(2, 3))
  out = jax.jit(jax.vmap(fusion.materialise))(tree)
  for a, b in zip(out, tree, strict=True):
    np.testing.assert_array_equal(a, b)
