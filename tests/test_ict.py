"""ICT Face Model Light converter: npz and OBJ sources, frame, winding, regions, albedo, render."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from focus_jax import convert_model
from focus_jax.facemodels import bfm2017, ict
from focus_jax.facemodels import landmarks as ibug
from focus_jax.render import morphable_model as mm

SHARED = Path(__file__).parents[1] / ".." / "shared"
ICT_NPZ = SHARED / "data" / "ict_face_light" / "ict_face_light.npz"
needs_ict = pytest.mark.skipif(
  not ICT_NPZ.is_file(), reason=f"{ICT_NPZ} is absent (CI provides ../shared)"
)
ALL = {"n_shape": 1000, "n_exp": 1000, "n_color": 1000}


def _expected_translation(neutral_cm, ibug68):
  """The documented frame: landmark centroid at the standard face's centroid height and depth."""
  target = ibug.standard_landmarks().mean(axis=0)
  return np.array([0.0, target[1], target[2]]) - 10.0 * neutral_cm[ibug68].mean(axis=0)


@pytest.fixture(scope="module")
def npz():
  with np.load(ICT_NPZ) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  out = tmp_path_factory.mktemp("ict")
  paths = {}
  for region in ("face", "narrow"):
    paths[region] = str(out / f"ict_{region}.h5")
    ict.convert_ict(ICT_NPZ, paths[region], region)
  return paths


@needs_ict
def test_npz_conversion_matches_source(npz, converted):
  model = bfm2017.load_bfm2017(converted["face"], **ALL)
  neutral = npz["neutral_cm"].astype(np.float64)
  ibug68 = npz["landmarks_multipie68"]
  shift = _expected_translation(neutral, ibug68)
  assert model.num_vertices == 9409 and model.num_triangles == 2 * 9230
  assert model.sizes == {"shape": 100, "expression": 53, "color": 10}
  np.testing.assert_array_equal(model.landmarks, ibug68)
  np.testing.assert_array_equal(model.now_landmarks, ibug68[[36, 39, 42, 45, 33, 48, 54]])
  # float32 storage of ~100 mm values: 1e-3 mm.
  np.testing.assert_allclose(model.shape_mean, 10.0 * neutral + shift, atol=1e-3)
  np.testing.assert_allclose(
    np.asarray(model.shape_mean)[ibug68], 10.0 * neutral[ibug68] + shift, atol=1e-3
  )
  for k in (0, 1, 99):
    np.testing.assert_allclose(
      model.shape_basis[k], 10.0 * npz["identity_modes_cm"][k].astype(np.float64), atol=1e-4
    )
  for k in (0, 26, 52):
    np.testing.assert_allclose(
      model.exp_basis[k], 10.0 * npz["expression_shapes_cm"][k].astype(np.float64), atol=1e-4
    )
  np.testing.assert_allclose(model.exp_mean, 0.0)
  quads = npz["quads"]
  np.testing.assert_array_equal(model.triangles[0], quads[0, :3])
  np.testing.assert_array_equal(model.triangles[1], quads[0, [0, 2, 3]])
  with h5py.File(converted["face"], "r") as h5:
    assert "MIT License" in h5.attrs["license"]
    assert "USC Institute for Creative Technologies" in h5.attrs["license"]
    stored = np.array(h5.attrs["ict_translation_mm"].split(), float)
    assert h5.attrs["expression_names"].split(",") == [str(n) for n in npz["expression_names"]]
  np.testing.assert_allclose(stored, shift, atol=1e-5)


@needs_ict
def test_frame_and_winding_face_the_camera(converted):
  model = bfm2017.load_bfm2017(converted["face"], **ALL)
  lm = np.asarray(model.shape_mean)[np.asarray(model.landmarks)]
  # Near the origin like the BFM: centroid matches the standard face's in y and z, symmetric in x.
  standard = ibug.standard_landmarks()
  np.testing.assert_allclose(lm.mean(0)[1:], standard.mean(0)[1:], atol=1e-3)
  np.testing.assert_allclose(lm[:, 0].mean(), 0.0, atol=1e-3)
  # Millimetres: outer eye corners ~9 cm apart (standard face: 86 mm).
  assert 80.0 < np.linalg.norm(lm[36] - lm[45]) < 100.0
  # The subject's right eye (iBUG 36) is on the -x side, the nose tip in front of the eyes.
  assert lm[36, 0] < 0 < lm[45, 0] and lm[30, 2] > lm[36, 2] + 15.0
  v = np.asarray(model.shape_mean, np.float64)
  tri = np.asarray(model.triangles)
  normal = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
  centre = v[tri].mean(1)
  forehead = (np.abs(centre[:, 0]) < 25.0) & (centre[:, 1] > lm[19, 1] + 10.0)
  cheeks = (np.abs(np.abs(centre[:, 0]) - 45.0) < 5.0) & (np.abs(centre[:, 1] - lm[29, 1]) < 5.0)
  assert forehead.sum() > 100 and cheeks.sum() > 20
  assert np.all(normal[forehead, 2] > 0) and np.all(normal[cheeks, 2] > 0)
  # Consistent winding: every directed edge occurs once (shared edges run opposite ways).
  edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
  assert len(np.unique(edges, axis=0)) == len(edges)


@needs_ict
def test_narrow_region_is_a_crop_keeping_landmarks(converted):
  face = bfm2017.load_bfm2017(converted["face"], **ALL)
  narrow = bfm2017.load_bfm2017(converted["narrow"], **ALL)
  assert narrow.num_vertices == 6706 and narrow.num_triangles == 2 * 6560
  rng = np.random.default_rng(0)
  alpha, delta = rng.normal(size=100), rng.uniform(0.0, 1.0, 53)
  for a, d in ((np.zeros(100), np.zeros(53)), (alpha, delta)):
    vf = np.asarray(mm.vertices(face, a, d))
    vn = np.asarray(mm.vertices(narrow, a, d))
    np.testing.assert_allclose(
      vn[np.asarray(narrow.landmarks)], vf[np.asarray(face.landmarks)], atol=1e-3
    )
    np.testing.assert_allclose(
      vn[np.asarray(narrow.now_landmarks)], vf[np.asarray(face.now_landmarks)], atol=1e-3
    )
  np.testing.assert_allclose(
    narrow.color_mean[np.asarray(narrow.landmarks)],
    face.color_mean[np.asarray(face.landmarks)],
    atol=1e-6,
  )
  vf, vn = np.asarray(face.shape_mean), np.asarray(narrow.shape_mean)
  lm = vf[np.asarray(face.landmarks)]
  # No ears (wider than the jaw line) and no neck (below the chin) in the narrow region.
  assert np.abs(vn[:, 0]).max() < np.abs(vf[:, 0]).max() - 10.0
  assert vn[:, 1].min() > vf[:, 1].min() + 20.0
  assert vn[:, 1].min() > lm[8, 1] - 30.0


@needs_ict
def test_procedural_albedo_features_and_determinism(converted, tmp_path):
  model = bfm2017.load_bfm2017(converted["face"], **ALL)
  color = np.asarray(model.color_mean)
  lm = np.asarray(model.landmarks)
  assert color.min() >= 0.0 and color.max() <= 1.0
  skin = ict.SKIN_RGB
  lip = color[lm[[50, 52, 56, 58]]].mean(0)
  brow = color[lm[[19, 24]]].mean(0)
  assert lip[0] / lip[1] > 1.3 * skin[0] / skin[1]  # redder lips
  assert brow.sum() < 0.8 * skin.sum()  # darker brows
  # Far from every feature (the neck) the albedo is plain skin.
  neck = np.asarray(model.shape_mean)[:, 1].argmin()
  np.testing.assert_allclose(color[neck], skin, atol=1e-3)
  again = tmp_path / "again.h5"
  ict.convert_ict(ICT_NPZ, again, "face")
  assert again.read_bytes() == Path(converted["face"]).read_bytes()


@needs_ict
def test_cli(tmp_path, capsys):
  out = tmp_path / "cli.h5"
  assert convert_model.main(["ict", str(ICT_NPZ), "--out", str(out), "--region", "narrow"]) == 0
  assert json.loads(capsys.readouterr().out.split(": ", 1)[1])["vertices"] == 6706
  assert bfm2017.load_bfm2017(out, **ALL).num_vertices == 6706


# --------------------------------------------------------------------------------------------
# OBJ folder (tiny files mimicking ICT-FaceKit's FaceXModel layout).

HEADER = (
  "#" * 40 + "\n# ICT FaceKit test mesh\n" + "#" * 40 + "\n\nmtllib ICTFaceModelMaterial.mtl\n"
)


def _write_obj(path, points, polygons=None):
  lines = [HEADER]
  lines += [f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in points]
  lines += [f"vt {0.1 * i} 0.5\n" for i in range(len(points))]
  if polygons is not None:
    lines.append("usemtl face\n")
    lines += ["f " + " ".join(f"{i + 1}/{i + 1}" for i in poly) + "\n" for poly in polygons]
  path.write_text("".join(lines))


def _tiny_face_model(root):
  """A 5x4 grid of quads plus one triangle (cm); vertex 0 is used by no polygon."""
  folder = root / "FaceXModel"
  folder.mkdir(parents=True)
  gx, gy = np.meshgrid(np.linspace(-6, 6, 5), np.linspace(-8, 6, 4))
  grid = np.stack([gx.ravel(), gy.ravel(), 10.0 - 0.05 * (gx.ravel() ** 2 + gy.ravel() ** 2)], 1)
  points = np.concatenate([[[50.0, 50.0, 50.0]], grid, [[0.0, 8.0, 9.0]]])  # unused, grid, tip
  quads = [
    [1 + j * 5 + i, 2 + j * 5 + i, 7 + j * 5 + i, 6 + j * 5 + i] for j in range(3) for i in range(4)
  ]
  polygons = [*quads, [16, 17, 21]]
  rng = np.random.default_rng(1)
  identities = [rng.normal(0, 0.3, points.shape) for _ in range(3)]
  expressions = {
    "jawOpen": rng.normal(0, 0.5, points.shape),
    "eyeBlink_L": rng.normal(0, 0.1, points.shape),
  }
  ibug68 = 1 + (np.arange(68) * 7) % 21
  _write_obj(folder / "generic_neutral_mesh.obj", points, polygons)
  for k, delta in enumerate(identities):
    _write_obj(folder / f"identity{k:03d}.obj", points + delta)
  for name, delta in expressions.items():
    _write_obj(folder / f"{name}.obj", points + delta)
  config = {
    "expressions": list(expressions),
    "fitting_expressions": list(expressions),
    "idx_to_landmark_verts": ibug68.tolist(),
  }
  (folder / "vertex_indices.json").write_text(json.dumps(config))
  (root / "LICENSE").write_text("MIT License\n\nCopyright (c) 2020 test\n")
  return points, polygons, identities, list(expressions.values()), ibug68


def test_obj_folder_conversion(tmp_path):
  points, polygons, identities, expressions, ibug68 = _tiny_face_model(tmp_path / "ICT-FaceKit")
  out = tmp_path / "tiny.h5"
  sizes = ict.convert_ict(tmp_path / "ICT-FaceKit", out)
  assert sizes == {"vertices": 21, "triangles": 25, "shape": 3, "expression": 2, "color": 10}
  model = bfm2017.load_bfm2017(out, **ALL)
  # Vertex 0 is unused: every index moves down by one.
  kept = np.arange(1, 22)
  shift = _expected_translation(points, ibug68)
  np.testing.assert_allclose(model.shape_mean, 10.0 * points[kept] + shift, atol=1e-3)
  for k, delta in enumerate(identities):
    np.testing.assert_allclose(model.shape_basis[k], 10.0 * delta[kept], atol=1e-4)
  for k, delta in enumerate(expressions):
    np.testing.assert_allclose(model.exp_basis[k], 10.0 * delta[kept], atol=1e-4)
  np.testing.assert_array_equal(model.landmarks, ibug68 - 1)
  expected = []
  for poly in polygons:
    expected += [(poly[0], poly[k], poly[k + 1]) for k in range(1, len(poly) - 1)]
  np.testing.assert_array_equal(model.triangles, np.array(expected) - 1)
  with h5py.File(out, "r") as h5:
    assert h5.attrs["license"].startswith("MIT License\n\nCopyright (c) 2020 test")
    assert h5.attrs["expression_names"] == "jawOpen,eyeBlink_L"
  # The FaceXModel folder itself is accepted too.
  assert ict.convert_ict(tmp_path / "ICT-FaceKit" / "FaceXModel", out)["vertices"] == 21


def test_bad_sources_raise_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="git clone https://github.com/ICT-VGL/ICT-FaceKit"):
    ict.convert_ict(tmp_path / "nowhere", tmp_path / "x.h5")
  with pytest.raises(ValueError, match="generic_neutral_mesh.obj"):
    ict.convert_ict(tmp_path, tmp_path / "x.h5")
  bad = tmp_path / "bad.npz"
  np.savez(bad, neutral_cm=np.zeros((4, 3), np.float32))
  with pytest.raises(ValueError, match=r"bad.npz: missing arrays \['quads'"):
    ict.convert_ict(bad, tmp_path / "x.h5")
  _tiny_face_model(tmp_path / "kit")
  with pytest.raises(ValueError, match="region 'narrow' is defined on the ICT topology"):
    ict.convert_ict(tmp_path / "kit", tmp_path / "x.h5", "narrow")
  (tmp_path / "kit" / "FaceXModel" / "jawOpen.obj").unlink()
  with pytest.raises(ValueError, match="jawOpen.obj: missing"):
    ict.convert_ict(tmp_path / "kit", tmp_path / "x.h5")
  assert not (tmp_path / "x.h5").exists()


# --------------------------------------------------------------------------------------------
# Rendering with the project's renderer.

# iBUG-68 left/right pairs (mirror images) and points on the symmetry line.
MIRROR_PAIRS = [(0, 16), (3, 13), (17, 26), (19, 24), (36, 45), (39, 42), (31, 35), (48, 54)]
MIDLINE = [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]


@needs_ict
def test_render_mean_face_puts_landmarks_on_the_face(converted):
  from focus_jax.render import camera, coefficients, pipeline

  model = bfm2017.load_bfm2017(converted["face"], **ALL)
  coeffs = coefficients.Coefficients.zeros(model.sizes)
  out = pipeline.render(model, coeffs, height=224, width=224)
  lm = np.asarray(out.landmarks, np.float64)
  # Independent projection: zero pose means x_cam = x, y_cam = -y, z_cam = 1000 - z.
  points = np.asarray(model.shape_mean, np.float64)[np.asarray(model.landmarks)]
  focal, (cx, cy) = camera.intrinsics(224, 224)
  depth = camera.CAMERA_DISTANCE_MM - points[:, 2]
  expected = np.stack([focal * points[:, 0] / depth + cx, -focal * points[:, 1] / depth + cy], 1)
  np.testing.assert_allclose(lm, expected, atol=1e-2)
  # Eyes above the nose bottom above the mouth above the chin (image y grows downwards).
  eyes, nose, mouth, chin = lm[36:48, 1].mean(), lm[33, 1], lm[48:68, 1].mean(), lm[8, 1]
  assert lm[19, 1] < eyes < nose < mouth < chin
  # Symmetric about the image centre within 1.5 px (the model is symmetric, the pose zero).
  for left, right in MIRROR_PAIRS:
    assert lm[left, 0] < cx < lm[right, 0]
    assert abs(lm[left, 0] + lm[right, 0] - 2 * cx) < 1.5
    assert abs(lm[left, 1] - lm[right, 1]) < 1.5
  np.testing.assert_allclose(lm[MIDLINE, 0], cx, atol=1.5)
  # The face fills a plausible part of the image: eyes ~90 px apart, coverage 30-80 %.
  assert 70 < lm[45, 0] - lm[36, 0] < 110 and 120 < lm[8, 1] - lm[19, 1] < 200
  assert 0.3 < float(np.mean(out.mask)) < 0.8
  assert np.all(lm >= 0) and np.all(lm <= 223)
  # Landmarks off the eye and mouth openings lie on rendered skin; brows are darker than cheeks.
  image, mask = np.asarray(out.image), np.asarray(out.mask)
  px = np.rint(lm).astype(int)
  on_skin = [*range(0, 36)]
  assert np.all(mask[px[on_skin, 1], px[on_skin, 0]] == 1)
  brow = image[px[[19, 24], 1], px[[19, 24], 0]].sum()
  cheek = image[px[[2, 14], 1] - 10, (px[[2, 14], 0] + px[[31, 35], 0]) // 2].sum()
  assert brow < 0.7 * cheek
