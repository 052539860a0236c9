"""model_zoo: specs -> files (embedded, ICT built once into the cache, h5 paths), clear errors."""

import os
from pathlib import Path

import numpy as np
import pytest

from focus_jax.facemodels import embedded, zoo

ICT_NPZ = (
  Path(__file__).parents[1] / ".." / "shared" / "data" / "ict_face_light" / "ict_face_light.npz"
)
needs_ict = pytest.mark.skipif(
  not ICT_NPZ.is_file(), reason=f"{ICT_NPZ} is absent (CI provides ../shared)"
)


def test_embedded_specs():
  assert zoo.model_path("embedded") == embedded.path("small")
  assert zoo.model_path("embedded-small") == embedded.path("small")
  model = zoo.load_model("embedded", n_shape=5, n_exp=4, n_color=3)
  assert model.sizes == {"shape": 5, "expression": 4, "color": 3}
  assert model.num_vertices == embedded.load("small").num_vertices


def test_h5_path_spec_and_unknown_spec(tmp_path):
  path = embedded.path("small")
  np.testing.assert_array_equal(zoo.load_model(path).triangles, embedded.load("small").triangles)
  with pytest.raises(ValueError, match="unknown model 'ict-wide'.*'embedded-bfm'"):
    zoo.model_path("ict-wide")
  with pytest.raises(ValueError, match="unknown model"):
    zoo.model_path(str(tmp_path / "missing.h5"))


@needs_ict
def test_ict_spec_builds_once_into_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("FOCUS_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv(zoo.ICT_ENV, str(ICT_NPZ))
  path = zoo.model_path("ict")
  assert Path(path).parent == tmp_path / "cache" and Path(path).name.startswith("ict_face_v")
  stamp = os.stat(path).st_mtime_ns
  model = zoo.load_model("ict")
  assert os.stat(path).st_mtime_ns == stamp  # not rebuilt
  assert model.sizes == {"shape": 80, "expression": 53, "color": 10}
  assert model.num_vertices == 9409
  narrow = zoo.load_model("ict-narrow", n_exp=7)
  assert narrow.num_vertices == 6706 and narrow.sizes["expression"] == 7
  # Same landmark points in both regions.
  np.testing.assert_allclose(
    np.asarray(narrow.shape_mean)[np.asarray(narrow.landmarks)],
    np.asarray(model.shape_mean)[np.asarray(model.landmarks)],
    atol=1e-4,
  )
  assert zoo.expression_coefficients("ict-narrow") == "blend_weights"
  assert zoo.expression_coefficients("embedded") == "std"
  # An explicit source path gives the same cached file as the environment variable.
  monkeypatch.delenv(zoo.ICT_ENV)
  assert zoo.ict_path("face", source=str(ICT_NPZ)) == path


def test_ict_missing_source_says_how_to_get_it(tmp_path, monkeypatch):
  monkeypatch.setenv("FOCUS_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv(zoo.ICT_ENV, str(tmp_path / "no-such-checkout"))
  with pytest.raises(ValueError, match="git clone https://github.com/ICT-VGL/ICT-FaceKit"):
    zoo.load_model("ict")
  monkeypatch.delenv(zoo.ICT_ENV)
  with pytest.raises(ValueError, match="FOCUS_JAX_ICT is unset.*git clone https://github.com/ICT"):
    zoo.model_path("ict-narrow")
  assert not (tmp_path / "cache").exists()
