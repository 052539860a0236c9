"""Morphable model: BFM 2017 h5 loader/writer, crop and landmark remap, embedded model."""

import filecmp
import logging

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.facemodels import bfm2017, embedded
from focus_jax.facemodels import landmarks as ibug
from focus_jax.render import morphable_model as mm


def _tiny_arrays(rng, n_vertices=12, k=(4, 3, 5)):
  """A tiny random model in file layout: a grid strip with 2 triangles per cell."""
  points = rng.normal(size=(n_vertices, 3)) * 10 + np.array([0, 0, 100])
  cols = n_vertices // 2
  tri = []
  for i in range(cols - 1):
    a, b, c, d = i, i + 1, cols + i, cols + i + 1
    tri += [[a, b, c], [b, d, c]]

  def pca(mean, kk):
    basis, _ = np.linalg.qr(rng.normal(size=(3 * n_vertices, kk)))
    return mean.reshape(-1), basis, rng.uniform(1, 4, kk)

  return {
    "points": points,
    "triangles": np.array(tri),
    "shape": pca(points, k[0]),
    "expression": pca(rng.normal(size=(n_vertices, 3)), k[1]),
    "color": pca(rng.uniform(0, 1, (n_vertices, 3)), k[2]),
    # The last two vertices carry no landmark, so a crop may drop them.
    "ibug68": rng.integers(0, n_vertices - 2, 68),
    "now7": rng.integers(0, n_vertices - 2, 7),
  }


@pytest.fixture
def tiny(tmp_path):
  arrays = _tiny_arrays(np.random.default_rng(0))
  path = tmp_path / "tiny.h5"
  bfm2017.write_bfm2017(path, **arrays)
  return path, arrays


def test_loader_round_trip(tiny):
  path, a = tiny
  model = bfm2017.load_bfm2017(path, n_shape=4, n_exp=3, n_color=5)
  n = a["points"].shape[0]
  np.testing.assert_allclose(model.shape_mean, a["points"] - [0, 0, 100], atol=1e-4)
  mean, basis, var = a["shape"]
  expected = (basis * np.sqrt(var)).T.reshape(4, n, 3)
  np.testing.assert_allclose(model.shape_basis, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model.exp_mean, a["expression"][0].reshape(n, 3), atol=1e-6)
  np.testing.assert_array_equal(model.triangles, a["triangles"])
  np.testing.assert_array_equal(model.landmarks, a["ibug68"])
  np.testing.assert_array_equal(model.now_landmarks, a["now7"])
  assert model.triangles.dtype == jnp.int32 and model.shape_basis.dtype == jnp.float32
  w = np.asarray(model.landmark_weights)
  assert w[28:31].tolist() == [20] * 3 and w[-8:].tolist() == [20] * 8 and w.sum() == 57 + 220

  # vertices / albedo follow SPEC §1 exactly (float64 NumPy reference).
  rng = np.random.default_rng(1)
  alpha, delta, beta = rng.normal(size=4), rng.normal(size=3), rng.normal(size=5)
  ref = (
    a["points"].reshape(-1)
    - np.tile([0, 0, 100], n)
    + a["expression"][0]
    + (basis * np.sqrt(var)) @ alpha
    + (a["expression"][1] * np.sqrt(a["expression"][2])) @ delta
  ).reshape(n, 3)
  np.testing.assert_allclose(mm.vertices(model, alpha, delta), ref, rtol=1e-5, atol=1e-4)
  cref = (a["color"][0] + (a["color"][1] * np.sqrt(a["color"][2])) @ beta).reshape(n, 3)
  np.testing.assert_allclose(mm.albedo(model, beta), cref, rtol=1e-5, atol=1e-5)


def test_truncation_and_fewer_components(tiny, caplog):
  path, _ = tiny
  with caplog.at_level(logging.WARNING):
    model = bfm2017.load_bfm2017(path, n_shape=2, n_exp=10, n_color=5)
  assert model.sizes == {"shape": 2, "expression": 3, "color": 5}
  assert any("'expression' has 3 components, 10 requested" in r.message for r in caplog.records)


def test_landmark_sources(tmp_path):
  a = _tiny_arrays(np.random.default_rng(2))
  without = dict(a, ibug68=None, now7=None)
  path = tmp_path / "nolm.h5"
  bfm2017.write_bfm2017(path, **without)
  with pytest.raises(ValueError, match="nolm.h5.*no 'landmarks/ibug68'.*pass landmarks="):
    bfm2017.load_bfm2017(path)
  lm, now = np.arange(68) % 12, np.arange(7)
  model = bfm2017.load_bfm2017(path, landmarks=(lm, now))
  np.testing.assert_array_equal(model.landmarks, lm)
  with pytest.raises(ValueError, match=r"landmark \(the landmarks= argument\) indices"):
    bfm2017.load_bfm2017(path, landmarks=(lm + 100, now))


def test_bfm2017_default_landmarks(tmp_path):
  n = bfm2017.BFM2017_NUM_VERTICES
  pts = np.zeros((n, 3))
  one = lambda m: (m.reshape(-1), np.eye(3 * n, 1), np.ones(1))
  path = tmp_path / "bfm_like.h5"
  bfm2017.write_bfm2017(path, points=pts, triangles=np.array([[0, 1, 2]]), shape=one(pts),
                   expression=one(pts), color=one(pts))  # fmt: skip
  model = bfm2017.load_bfm2017(path)
  np.testing.assert_array_equal(model.landmarks, bfm2017.BFM2017_IBUG68)
  np.testing.assert_array_equal(model.now_landmarks, bfm2017.BFM2017_NOW7)


def test_crop_reindexes_and_remaps(tiny):
  path, a = tiny
  full = bfm2017.load_bfm2017(path, n_shape=4, n_exp=3, n_color=5)
  keep = np.ones(12, bool)
  lm_set = set(a["ibug68"].tolist()) | set(a["now7"].tolist())
  dropped = [i for i in range(12) if i not in lm_set]
  keep[dropped[0]] = False
  cropped = bfm2017.load_bfm2017(path, n_shape=4, n_exp=3, n_color=5, crop=keep)
  assert cropped.num_vertices == 11
  # Every kept triangle is an original triangle with all corners kept, on the same 3D points.
  full_tris = {tuple(np.asarray(full.shape_mean)[t].round(4).ravel()) for t in full.triangles}
  for t in np.asarray(cropped.triangles):
    assert tuple(np.asarray(cropped.shape_mean)[t].round(4).ravel()) in full_tris
  expect = sum(dropped[0] not in t for t in a["triangles"].tolist())
  assert cropped.num_triangles == expect
  np.testing.assert_allclose(
    np.asarray(cropped.shape_mean)[cropped.landmarks], np.asarray(full.shape_mean)[full.landmarks]
  )
  np.testing.assert_allclose(
    np.asarray(cropped.shape_basis)[:, cropped.now_landmarks],
    np.asarray(full.shape_basis)[:, full.now_landmarks],
  )
  bad = np.ones(12, bool)
  bad[a["ibug68"][0]] = False
  with pytest.raises(ValueError, match="lie outside the crop"):
    bfm2017.load_bfm2017(path, crop=bad)


def test_face_crop_on_embedded_model():
  path = embedded.path("small")
  full = bfm2017.load_bfm2017(path)
  # A crop radius scale well below the face keeps the landmarks (radius grows to cover them).
  keep = ibug.face_crop(np.asarray(full.shape_mean), np.asarray(full.landmarks), scale=0.5)
  cropped = bfm2017.load_bfm2017(path, crop=keep)
  assert 0 < cropped.num_vertices < full.num_vertices
  np.testing.assert_allclose(
    np.asarray(cropped.shape_mean)[cropped.landmarks], np.asarray(full.shape_mean)[full.landmarks]
  )
  assert cropped.num_vertices == bfm2017.load_bfm2017(path, crop=np.flatnonzero(keep)).num_vertices
  assert bfm2017.load_bfm2017(path, crop="face").num_vertices <= full.num_vertices


def _corrupt(path, dataset, value):
  with h5py.File(path, "r+") as h5:
    del h5[dataset]
    if value is not None:
      h5.create_dataset(dataset, data=value)


@pytest.mark.parametrize(
  "dataset, value, message",
  [
    ("shape/model/pcaBasis", None, "missing dataset 'shape/model/pcaBasis'"),
    ("color/model/mean", np.zeros(5), "'color/model/mean' has shape \\(5,\\), expected \\(36,\\)"),
    ("expression/model/pcaVariance", np.ones(7), "'expression/model/pcaVariance' has shape"),
    ("shape/model/mean", np.full(36, np.nan), "'shape/model/mean' contains non-finite"),
    ("shape/representer/cells", np.array([[0], [1], [99]]), "cells'.*\\[0, 12\\)"),
    ("landmarks/ibug68", np.full(68, 50), "landmark \\('landmarks/ibug68'\\) indices"),
    ("landmarks/now7", np.arange(3), "'landmarks/now7' has 3 entries, expected 7"),
  ],
)
def test_bad_files_name_file_and_dataset(tiny, dataset, value, message):
  path, _ = tiny
  _corrupt(path, dataset, value)
  with pytest.raises(ValueError, match=f"tiny.h5.*{message}"):
    bfm2017.load_bfm2017(path, n_shape=4, n_exp=3, n_color=5)


def test_missing_and_unreadable_file(tmp_path):
  with pytest.raises(ValueError, match="nope.h5: morphable model file not found"):
    bfm2017.load_bfm2017(tmp_path / "nope.h5")
  (tmp_path / "junk.h5").write_text("not hdf5")
  with pytest.raises(ValueError, match="junk.h5: not a readable h5 file"):
    bfm2017.load_bfm2017(tmp_path / "junk.h5")


def test_vertices_jit_vmap_grad(tiny):
  path, _ = tiny
  model = bfm2017.load_bfm2017(path, n_shape=4, n_exp=3, n_color=5)
  alphas = jnp.asarray(np.random.default_rng(3).normal(size=(5, 4)), jnp.float32)
  batched = jax.jit(jax.vmap(mm.vertices, in_axes=(None, 0, None)))(model, alphas, jnp.zeros(3))
  for i in range(5):
    np.testing.assert_allclose(batched[i], mm.vertices(model, alphas[i], jnp.zeros(3)), atol=1e-4)
  # The map is linear: the gradient of <w, vertices> is exactly <w, basis>.
  w = jnp.asarray(np.random.default_rng(4).normal(size=(12, 3)), jnp.float32)
  g = jax.grad(lambda a: jnp.sum(w * mm.vertices(model, a, jnp.zeros(3))))(alphas[0])
  np.testing.assert_allclose(g, jnp.einsum("kvc,vc->k", model.shape_basis, w), rtol=1e-5)
  with pytest.raises(ValueError, match="expected 4 coefficients"):
    mm.vertices(model, jnp.zeros(5), jnp.zeros(3))


def test_embedded_model_is_deterministic(tmp_path):
  a = embedded.write(str(tmp_path / "a.h5"), "small", seed=0)
  b = embedded.write(str(tmp_path / "b.h5"), "small", seed=0)
  assert filecmp.cmp(a, b, shallow=False)
  c = embedded.write(str(tmp_path / "c.h5"), "small", seed=1)
  assert not filecmp.cmp(a, c, shallow=False)


def test_embedded_model_reads_as_a_face():
  model = embedded.load("small")
  assert model.sizes == {"shape": 80, "expression": 64, "color": 80}
  assert 3000 < model.num_vertices < 5000 and model.num_triangles > 1.8 * model.num_vertices
  p = np.asarray(model.shape_mean)
  lm = p[np.asarray(model.landmarks)]
  assert len(set(np.asarray(model.landmarks).tolist())) == 68
  # Landmarks land near the standard face's (grid spacing 2.6 mm), in iBUG order.
  np.testing.assert_allclose(lm[:, :2], ibug.standard_landmarks()[:, :2], atol=2.6)
  eyes_y, nose_y, mouth_y, chin_y = lm[36:48, 1].mean(), lm[30, 1], lm[48:68, 1].mean(), lm[8, 1]
  assert eyes_y > nose_y > mouth_y > chin_y
  assert lm[30, 2] == pytest.approx(p[:, 2].max(), abs=3.0)  # the nose tip is the front-most point
  assert lm[36:48, 2].mean() < lm[30, 2] - 20  # eyes sit in sockets well behind the tip
  assert np.abs(p[:, 0].mean()) < 1.0 and np.abs(p[:, 1].mean()) < 15.0  # centred
  # Albedo: skin tone, darker brows and redder lips than the cheeks.
  c = np.asarray(model.color_mean)
  brows, lips = c[np.asarray(model.landmarks)[17:27]], c[np.asarray(model.landmarks)[61:64]]
  assert np.all((c >= 0) & (c <= 1))
  assert brows.mean() < 0.5 * c.mean()
  assert lips[:, 0].mean() - lips[:, 1].mean() > c[:, 0].mean() - c[:, 1].mean()
  # Expression 0 opens the jaw: the chin moves down, the forehead stays.
  d = np.asarray(model.exp_basis[0])
  assert d[np.asarray(model.landmarks)[8], 1] < -3.0 and np.abs(d[np.argmax(p[:, 1])]).max() < 0.1
  # Identity bases are smooth: per mm along any edge, no mode changes by more than a quarter of
  # its largest displacement (a step cut at a grid row changes by ~40 % per mm).
  tri = np.asarray(model.triangles)
  basis = np.asarray(model.shape_basis)
  length = np.linalg.norm(p[tri[:, 0]] - p[tri[:, 1]], axis=-1)
  slope = np.abs(basis[:, tri[:, 0]] - basis[:, tri[:, 1]]).max(-1) / length
  assert np.all(slope.max(-1) < 0.25 * np.abs(basis).max(axis=(1, 2)))
