"""``python -m focus_jax.export --workdir``: fitted.npz round trip, OBJ, overlays, NoW, bad input.

Runs the session's smoke chain at 64 px, two images per compiled call (the program is shared
with ``test_reconstruct.py``). The embedded-model export (``--model-only``) is tested in
``test_foundation_export.py``.
"""

import os
import shutil

import numpy as np
import pytest
from conftest import SMOKE_RECON_SIZE

from focus_jax import export, files, fitted, reconstruct
from focus_jax.data import alignment, layout, toy
from focus_jax.render import morphable_model as mm

SIZE = SMOKE_RECON_SIZE  # the shared `recon` fixture's side

# The trained smoke chain (conftest) is built once per xdist worker: its users share one.
pytestmark = pytest.mark.xdist_group("smoke_chain")


@pytest.fixture(scope="module")
def small_root(image_root, tmp_path_factory):
  """Two synthetic (aligned) faces of ``image_root`` and a CSV row naming a corrupt file."""
  root = str(tmp_path_factory.mktemp("small_root"))
  os.makedirs(os.path.join(root, layout.IMAGE_DIR))
  shutil.copy(os.path.join(image_root, "synthetic.json"), root)
  records = layout.read_split(image_root, "all")[:2]
  rows = []
  for r in records:
    shutil.copy(r.image_path, os.path.join(root, layout.IMAGE_DIR, r.name))
    rows.append((r.name, r.landmarks))
  with open(os.path.join(root, layout.IMAGE_DIR, "broken.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n truncated")
  rows.insert(1, ("broken.png", records[0].landmarks))
  layout.write_csv(layout.csv_path(root, "all"), rows)
  return root, records


@pytest.fixture(scope="module")
def exported(recon, small_root, tmp_path_factory):
  root, _ = small_root
  out = str(tmp_path_factory.mktemp("export"))
  report = export.export_fitted("", root, out, now=True, vertices=True, recon=recon)
  return out, report


def test_fitted_npz_round_trip(recon, small_root, exported):
  root, records = small_root
  out, report = exported
  names = [r.name for r in records]
  assert report["exported"] == 2 and report["names"] == names and report["images"] == 3
  # The corrupt file is reported with its name, not dropped.
  (failure,) = report["failed"]
  assert "broken.png" in failure["image"] + failure["error"]
  f = fitted.load_fitted(os.path.join(out, "fitted.npz"))
  assert list(f.names) == names and len(f) == 2 and f.index(names[1]) == 1
  assert f.image_size == SIZE and f.mask_source == "unet" and f.model == "embedded"
  assert f.visibility_classes == ("visible", "self_occluded", "occluded", "outside")
  # The file holds exactly what the API returns for the same images.
  result = recon(np.stack([layout.load_image(r.image_path) for r in records]))
  for key, value in result.coefficients.to_dict().items():
    np.testing.assert_allclose(getattr(f, key), value, atol=1e-5, err_msg=key)
    assert getattr(f, key).dtype == np.float32
  np.testing.assert_array_equal(f.visible_mask, result.visible_mask > 0.5)
  np.testing.assert_array_equal(f.coverage, result.coverage > 0.5)
  np.testing.assert_array_equal(f.vertex_visibility, result.vertex_visibility)
  np.testing.assert_allclose(f.vertices, result.vertices, atol=1e-4)
  np.testing.assert_array_equal(f.triangles, recon.model.triangles)
  # Frames: aligned = photo for these 224 px aligned images; the input landmarks are the CSV's.
  np.testing.assert_allclose(f.landmarks, reconstruct.to_frame(result.landmarks, SIZE, 224))
  np.testing.assert_allclose(f.landmarks_photo, f.landmarks, atol=1e-4)
  np.testing.assert_allclose(f.input_landmarks, [r.landmarks for r in records], atol=1e-4)
  np.testing.assert_allclose(f.align, [[224, 224, 1, 112, 112]] * 2)
  batch = f.coefficients()
  assert batch.shape.shape == (2, 80) and batch.light.shape == (2, 27)


def test_meshes_overlays_and_now_layout(recon, small_root, exported):
  root, records = small_root
  out, _ = exported
  f = fitted.load_fitted(os.path.join(out, "fitted.npz"))
  now_index = np.asarray(recon.model.now_landmarks)
  assert len(os.listdir(os.path.join(out, "now"))) == 3 * 2  # .obj, .npy, .txt per image
  for b, r in enumerate(records):
    stem = os.path.splitext(r.name)[0]
    # Full mesh with the expression and vertex colours in [0, 1].
    mesh = os.path.join(out, "meshes", stem + ".obj")
    v, t = files.read_obj(mesh)
    np.testing.assert_allclose(v, f.vertices[b], atol=1e-5)
    np.testing.assert_array_equal(t, recon.model.triangles)
    with open(mesh) as fh:
      colour = np.array(fh.readline().split()[4:], float)
    assert colour.shape == (3,) and np.all((0 <= colour) & (colour <= 1))
    # Overlay: the render over the (already aligned) input, the input itself off the face.
    overlay = layout.load_image(os.path.join(out, "overlays", stem + ".png"))
    photo = layout.load_image(r.image_path)
    assert overlay.shape == photo.shape
    assert np.array_equal(overlay[:4, :4], photo[:4, :4]) and not np.array_equal(overlay, photo)
    # NoW: neutral mesh without colours, its 7 landmarks as .npy and .txt.
    base = os.path.join(out, "now", stem)
    neutral = mm.vertices(recon.model, f.shape[b], np.zeros(64, np.float32))
    v, t = files.read_obj(base + ".obj")
    np.testing.assert_allclose(v, neutral, atol=1e-4)
    with open(base + ".obj") as fh:
      assert len(fh.readline().split()) == 4
    lm7 = np.load(base + ".npy")
    assert lm7.shape == (7, 3)
    np.testing.assert_allclose(lm7, v[now_index], atol=1e-5)
    np.testing.assert_allclose(np.loadtxt(base + ".txt"), lm7, atol=1e-5)


def test_raw_photos_are_detected_aligned_and_pasted_back(recon, tmp_path):
  src = str(tmp_path / "toy")
  names = toy.write_image_root(src, 2, size=(96, 80), masks=False)
  photos = os.path.join(src, layout.IMAGE_DIR)
  truth = {r.name: r.landmarks for r in layout.read_split(src, "all")}
  by_bytes = {layout.load_image(os.path.join(photos, n)).tobytes(): n for n in names}
  files.write_png(os.path.join(photos, "blank.png"), np.zeros((50, 60, 3), np.uint8))
  with open(os.path.join(photos, "bad.jpg"), "wb") as fh:
    fh.write(b"not an image")

  def detector(image):
    name = by_bytes.get(image.tobytes())
    if name is None:
      return None, 0
    return truth[name], 2 if name == names[1] else 1  # two faces: the largest is used

  out = str(tmp_path / "out")
  report = export.export_fitted("", photos, out, detector=detector, recon=recon)
  assert report["exported"] == 2 and report["images"] == 4
  assert report["several_faces_used_largest"] == [names[1]]
  errors = {e["image"]: e["error"] for e in report["failed"]}
  assert errors["blank.png"].endswith("blank.png: no face found")
  assert "bad.jpg: cannot read the image" in errors["bad.jpg"]
  f = fitted.load_fitted(os.path.join(out, "fitted.npz"))
  assert list(f.names) == names
  for b, name in enumerate(names):
    params = alignment.estimate(truth[name], 96, 80)
    np.testing.assert_allclose(f.align[b], params.as_array())
    np.testing.assert_allclose(
      f.input_landmarks[b], alignment.align_landmarks(truth[name], params), atol=1e-3
    )
    np.testing.assert_allclose(
      f.landmarks_photo[b], alignment.unalign_landmarks(f.landmarks[b], params), atol=1e-3
    )
    # The overlay is the photo with the render pasted back in.
    overlay = layout.load_image(os.path.join(out, "overlays", os.path.splitext(name)[0] + ".png"))
    assert overlay.shape == (80, 96, 3)
  # The same photos as an image root: landmarks from its CSV, no detector needed.
  report = export.export_fitted("", src, str(tmp_path / "root"), recon=recon)
  assert report["exported"] == 2 and not report["failed"]
  g = fitted.load_fitted(os.path.join(tmp_path, "root", "fitted.npz"))
  np.testing.assert_allclose(g.input_landmarks, f.input_landmarks, atol=1e-4)
  np.testing.assert_allclose(g.shape, f.shape, atol=1e-5)


def test_now_names_follow_the_subject_and_challenge_folders():
  image = os.path.join("iphone_pictures", "FaMoS_180424", "multiview_neutral", "IMG_0101.jpg")
  assert export._now_path("out", image) == os.path.join(
    "out", "now", "FaMoS_180424", "multiview_neutral", "IMG_0101.obj"
  )
  assert export._now_path("out", "face.png") == os.path.join("out", "now", "face.obj")
  assert export._stem(os.path.join("a", "b.c.jpg")) == "a__b.c"


def test_command_line_exports_and_fails_on_bad_input(smoke_chain, small_root, tmp_path, capsys):
  root, _ = small_root
  out = str(tmp_path / "cli")
  args = ["--workdir", smoke_chain[0], "--images", root, "--out", out]
  status = export.main([*args, "--image_size", str(SIZE), "--batch_size", "2"])
  captured = capsys.readouterr()
  # One image failed (named on stderr), the two others were exported: status 1.
  assert status == 1 and "broken.png" in captured.err
  assert "exported 2 of 3 images" in captured.out
  assert len(fitted.load_fitted(os.path.join(out, "fitted.npz"))) == 2
  # A workdir without a checkpoint stops before any image, naming its checkpoint directory.
  empty = tmp_path / "stage"
  (empty / "checkpoints").mkdir(parents=True)
  shutil.copy(os.path.join(smoke_chain[0], "em", "config.json"), empty)
  assert export.main(["--workdir", str(empty), "--images", root, "--out", out]) == 1
  assert f"{empty}/checkpoints: no checkpoint" in capsys.readouterr().err


def test_load_fitted_names_the_file_and_the_problem(exported, tmp_path):
  out, _ = exported
  with np.load(os.path.join(out, "fitted.npz")) as data:
    arrays = {k: data[k] for k in data.files}
  bad = str(tmp_path / "bad.npz")
  np.savez(bad, **{k: v for k, v in arrays.items() if k != "pose"})
  with pytest.raises(ValueError, match=r"bad.npz: not a fitted.npz .* missing \['pose'\]"):
    fitted.load_fitted(bad)
  np.savez(bad, **{**arrays, "light": arrays["light"][:, :9]})
  with pytest.raises(ValueError, match=r"bad.npz: light has shape \(2, 9\)"):
    fitted.load_fitted(bad)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(smoke_chain, tmp_path, monkeypatch):
  # The notebook's code cells as one script, on the trained smoke chain (no training again).
  import json

  path = os.path.join(os.path.dirname(__file__), "..", "launch", "colab.ipynb")
  with open(path) as f:
    cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
  monkeypatch.setenv("FOCUS_JAX_WORKDIR", smoke_chain[0])
  monkeypatch.setenv("FOCUS_JAX_OUT", str(tmp_path / "export"))
  namespace = {"__name__": "__notebook__"}
  for cell in cells:
    exec(compile("".join(cell["source"]), path, "exec"), namespace)
  assert namespace["report"]["exported"] >= 1
  assert namespace["scores"].shape == (len(namespace["fitted"]), 2)
  assert os.path.isfile(tmp_path / "export" / "fitted.npz")
