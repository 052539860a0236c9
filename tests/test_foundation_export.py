"""Export: OBJ round trip, NoW landmarks of the neutral mesh, the export command."""

import os
import subprocess
import sys

import chex
import numpy as np
import pytest

from focus_jax import export, files, testing
from focus_jax.render import coefficients
from focus_jax.render import morphable_model as mm


def test_obj_round_trip_and_bad_faces(tmp_path):
  rng = np.random.default_rng(0)
  v = rng.normal(size=(5, 3))
  t = np.array([[0, 1, 2], [2, 3, 4]])
  files.write_obj(str(tmp_path / "m.obj"), v, t)
  v2, t2 = files.read_obj(str(tmp_path / "m.obj"))
  np.testing.assert_allclose(v2, v, atol=1e-6)
  np.testing.assert_array_equal(t2, t)
  text = (tmp_path / "m.obj").read_text().splitlines()
  assert text[0].startswith("v ") and len(text[0].split()) == 4  # no vertex colours
  (tmp_path / "q.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3 4\nf 1 x 2\n")
  with pytest.raises(ValueError, match="q.obj:6: malformed 'f' line"):
    files.read_obj(str(tmp_path / "q.obj"))
  colored = tmp_path / "c.obj"
  files.write_obj(str(colored), v, t, colors=np.full((5, 3), 0.5))
  assert colored.read_text().splitlines()[0].split()[4:] == ["0.500000"] * 3


def test_export_face_is_neutral_with_now_landmarks(tmp_path):
  model = testing.small_model()
  coeffs = testing.random_coefficients(model, seed=1)
  export.export_face(str(tmp_path / "f"), model, coeffs)
  v, t = files.read_obj(str(tmp_path / "f.obj"))
  neutral = mm.vertices(model, coeffs.shape, np.zeros(model.sizes["expression"]))
  np.testing.assert_allclose(v, neutral, atol=1e-5)
  np.testing.assert_array_equal(t, model.triangles)
  lmk = np.load(tmp_path / "f_lmk7.npy")
  np.testing.assert_allclose(lmk, v[np.asarray(model.now_landmarks)], atol=1e-5)
  saved = np.load(tmp_path / "f_coeffs.npz")
  # Plain npz keys, one per group: the record reads them back unchanged.
  assert sorted(saved.files) == ["color", "expression", "light", "pose", "shape"]
  chex.assert_trees_all_equal(coefficients.Coefficients.from_dict(dict(saved)), coeffs)


def test_export_command(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run(
      [sys.executable, "-m", "focus_jax.export", f"--out={out}", "--num=1"],
      check=True, capture_output=True, env=env,
  )  # fmt: skip
  assert sorted(os.listdir(out)) == sorted(
    [f"face_00{i}{s}" for i in range(2) for s in (".obj", "_lmk7.npy", "_coeffs.npz")]
    + ["renders.png"]
  )
  import PIL.Image

  grid = np.asarray(PIL.Image.open(out / "renders.png"))
  assert grid.shape == (224, 448, 3)
  # The mean face (left tile) is rendered around the image centre over a black background.
  left = grid[:, :224].astype(float).sum(-1)
  assert left[112, 112] > 100 and left[2, 2] == 0
