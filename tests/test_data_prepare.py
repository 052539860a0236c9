"""Offline landmarks: dlib on a real photo; prepare() end to end, reports and resuming."""

import json
import os

import numpy as np
import pytest

from focus_jax import prepare
from focus_jax.data import layout, toy


@pytest.fixture(scope="module")
def detector():
  pytest.importorskip("dlib")
  pytest.importorskip("skimage")
  try:
    return prepare.LandmarkDetector()
  except ImportError as e:
    pytest.skip(str(e))


def test_detector_finds_the_astronaut_face(detector):
  from skimage import data

  lm, faces = detector(data.astronaut())
  assert faces >= 1 and lm.shape == (68, 2)
  assert 175 <= lm[:, 0].min() and lm[:, 0].max() <= 275
  assert 80 <= lm[:, 1].min() and lm[:, 1].max() <= 180
  eyes, nose, mouth = lm[36:48, 1].mean(), lm[30, 1], lm[48:68, 1].mean()
  assert eyes < nose < mouth < lm[8, 1]
  assert lm[36, 0] < lm[45, 0]  # image-left eye first


class _FakeDetector:
  """Reads landmarks back from the toy CSV; "no face" for one photo, two faces for another."""

  def __init__(self, truth):
    self.truth, self.calls = truth, 0

  def __call__(self, image):
    self.calls += 1
    key = image.tobytes()
    name = self.truth[key]
    if name == "toy_0001.png":
      return None, 0
    return self.truth_lm[name], 2 if name == "toy_0002.png" else 1


def test_prepare_writes_layout_reports_and_resumes(tmp_path):
  src = str(tmp_path / "photos")
  names = toy.write_image_root(src, 6, size=(64, 56), masks=True)
  photos = os.path.join(src, layout.IMAGE_DIR)
  truth = {layout.load_image(os.path.join(photos, n)).tobytes(): n for n in names}
  det = _FakeDetector(truth)
  det.truth_lm = {r.name: r.landmarks for r in layout.read_split(src, "train")}
  out = str(tmp_path / "root")
  report = prepare.prepare(photos, out, (0.5, 0.25, 0.25), detector=det, progress=False)
  assert det.calls == 6
  assert report["with_landmarks"] == 5 and report["no_face"] == ["toy_0001.png"]
  assert report["several_faces_used_largest"] == ["toy_0002.png"]
  assert json.load(open(os.path.join(out, prepare.REPORT_FILE)))["images"] == 6
  records = {r.name: r for r in layout.read_split(out, "all")}
  assert sorted(records) == [n for n in names if n != "toy_0001.png"]
  np.testing.assert_allclose(records["toy_0003.png"].landmarks, det.truth_lm["toy_0003.png"])
  assert records["toy_0003.png"].mask_path is not None  # masks come along
  split_names = [r.name for s in ("train", "val", "test") for r in layout.read_split(out, s)]
  assert sorted(split_names) == sorted(records)
  # Resume: nothing is detected twice; a new photo is the only one processed.
  toy.write_image_root(str(tmp_path / "more"), 1, size=(64, 56), seed=9, masks=False)
  extra = os.path.join(str(tmp_path / "more"), layout.IMAGE_DIR, "toy_0000.png")
  os.replace(extra, os.path.join(photos, "new.png"))
  image = layout.load_image(os.path.join(photos, "new.png"))
  truth[image.tobytes()] = "new.png"
  det.truth_lm["new.png"] = det.truth_lm["toy_0003.png"]
  prepare.prepare(photos, out, (0.5, 0.25, 0.25), detector=det, progress=False)
  assert det.calls == 7
  assert len(layout.read_split(out, "all")) == 6


def test_cli_reports_missing_folder(tmp_path, capsys):
  assert prepare.main(["--images", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
  assert "not a directory" in capsys.readouterr().err


def test_missing_extra_gives_install_command(monkeypatch):
  def missing():
    raise ImportError("face_recognition_models is not installed")

  monkeypatch.setattr(prepare, "_predictor_path", missing)
  with pytest.raises(ImportError, match=r"pip install 'focus-jax\[landmarks\]'"):
    prepare.LandmarkDetector()
