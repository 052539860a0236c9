"""Synthetic occluded faces: GT mask = render visibility minus occluders; landmarks = projected
landmark vertices; ground-truth arrays match the coefficients."""

import dataclasses
import os

import chex
import jax
import numpy as np
import pytest

from focus_jax import testing
from focus_jax.data import layout, occluders, synthetic, toy
from focus_jax.render import coefficients


def _disc_face(size=96):
  lm = (toy.standard_landmarks_2d() * (size / 230.0) + (size - 1) / 2.0).astype(np.float32)
  yy, xx = np.mgrid[0:size, 0:size]
  mask = ((xx - size / 2) / (0.4 * size)) ** 2 + ((yy - size / 2) / (0.5 * size)) ** 2 <= 1
  render = np.where(mask[..., None], np.float32([0.8, 0.6, 0.5]), 0.0).astype(np.float32)
  return render, mask.astype(np.float32), lm


def test_compose_visible_is_face_minus_occluders():
  render, mask, lm = _disc_face()
  config = synthetic.SynthConfig(occlusion_probability=1.0, max_occluders=3)
  for seed in range(len(occluders.FAMILIES)):
    cfg = dataclasses.replace(config, families=(occluders.FAMILIES[seed],))
    image, visible, occ, names = synthetic.compose(
      np.random.default_rng(seed), render, mask, lm, cfg
    )
    np.testing.assert_array_equal(visible, (mask > 0.5) & ~occ)
    assert occ.any() and set(names) == {occluders.FAMILIES[seed]}
    np.testing.assert_array_equal(image[visible], np.uint8(np.rint(render[visible] * 255)))
  none = dataclasses.replace(config, occlusion_probability=0.0)
  _, visible, occ, names = synthetic.compose(np.random.default_rng(0), render, mask, lm, none)
  assert not occ.any() and names == []
  np.testing.assert_array_equal(visible, mask > 0.5)


def test_occluder_coverage_stays_below_the_maximum():
  render, mask, lm = _disc_face(128)
  face = mask > 0.5
  for seed in range(20):
    occ, _, _ = occluders.occlude(
      np.random.default_rng(seed), lm, face, occluders.FAMILIES, 2, (0.05, 0.3)
    )
    assert occ[face].mean() <= 0.3 + 1e-9


def test_generator_ground_truth_matches_renderer(tmp_path):
  pytest.importorskip("focus_jax.render.pipeline")
  from focus_jax.render import camera
  from focus_jax.render import morphable_model as mm

  model = testing.small_model()
  out = str(tmp_path / "synth")
  config = synthetic.SynthConfig(occlusion_probability=0.7)
  stats = synthetic.generate(out, 3, seed=1, model=model, config=config, batch_size=3,
                             progress=False)  # fmt: skip
  assert stats["num"] == 3
  records = {r.name: r for r in layout.read_split(out, "all")}  # the layout validates
  gt = np.load(os.path.join(out, layout.GROUNDTRUTH_FILE))
  batch = coefficients.Coefficients.from_dict({k: gt[k] for k in coefficients.GROUPS})
  chex.assert_shape(jax.tree.leaves(batch), (3, None))
  # render_faces is jit(pipeline.render_batch) (plus vertices); the same batch shape as the
  # generator's reuses its compilation.
  refs = jax.device_get(synthetic.render_faces(model, batch))
  for i, name in enumerate(gt["names"]):
    coeffs = jax.tree.map(lambda a, i=i: a[i], batch)
    ref = {k: v[i] for k, v in refs.items()}
    render_mask = ref["mask"] > 0.5
    path = os.path.join(out, layout.IMAGE_DIR, str(name))
    image = layout.load_image(path)
    visible = layout.load_mask(layout.mask_path_for(path)).astype(bool)
    # GT mask = renderer visibility minus the occluder pixels: inside the render, and the image
    # shows the render exactly where visible, something else where occluded.
    assert not (visible & ~render_mask).any()
    face8 = np.rint(np.clip(ref["image"], 0, 1) * 255)
    diff = np.abs(image.astype(float) - face8).max(-1)
    assert diff[visible].max() <= 1.0
    occluded = render_mask & ~visible
    assert (diff[occluded] > 1.0).mean() > 0.99 if occluded.any() else True
    # Landmarks: the renderer's and the projected landmark vertices.
    verts = mm.vertices(model, coeffs.shape, coeffs.expression)
    cam = camera.camera_from_pose(coeffs.pose, 224, 224)
    projected = np.asarray(camera.project(cam, verts))[np.asarray(model.landmarks), :2]
    np.testing.assert_allclose(records[str(name)].landmarks, projected, atol=6e-3)
    np.testing.assert_allclose(gt["landmarks"][i], ref["landmarks"], atol=1e-3)
    np.testing.assert_allclose(gt["vertices"][i], np.asarray(verts), atol=1e-3)
    np.testing.assert_allclose(
      gt["now_landmarks"][i], np.asarray(verts)[np.asarray(model.now_landmarks)], atol=1e-3
    )
  # The families drawn over each face: at least one wherever occluder pixels cover the face.
  families = synthetic.occluder_families(out)
  assert set(families) == {str(n) for n in gt["names"]}
  for name, fraction in zip(gt["names"], gt["occluded_fraction"], strict=True):
    assert set(families[str(name)]) <= set(occluders.FAMILIES)
    assert families[str(name)] or fraction == 0
  # The root feeds the input pipeline as it is (already aligned), ground truth included.
  from focus_jax.data import pipeline as input_pipeline

  source = input_pipeline.InMemorySource(out, "all", align=False)
  example = source[0]
  assert bool(example["has_mask"]) and example["image"].shape == (224, 224, 3)
  np.testing.assert_array_equal(example["gt/shape"], gt["shape"][0])
  assert "gt/occluders" not in example  # text stays on the host


def test_occluder_families_of_older_and_malformed_roots(tmp_path):
  path = tmp_path / layout.GROUNDTRUTH_FILE
  assert synthetic.occluder_families(str(tmp_path)) is None  # no ground truth at all
  np.savez(path, names=np.array(["a.png", "b.png"]), shape=np.zeros((2, 3), np.float32))
  assert synthetic.occluder_families(str(tmp_path)) is None  # generated before the record
  np.savez(path, names=np.array(["a.png", "b.png"]), occluders=np.array(["hair+hand", ""]))
  assert synthetic.occluder_families(str(tmp_path)) == {"a.png": ("hair", "hand"), "b.png": ()}
  np.savez(path, names=np.array(["a.png", "b.png"]), occluders=np.array(["hair"]))
  with pytest.raises(ValueError, match="groundtruth.npz: 'occluders' has shape"):
    synthetic.occluder_families(str(tmp_path))
