"""The coefficient record: head split and scalings, dict round trip, pytree transforms, sampler."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.render import coefficients

SIZES = {"shape": 4, "expression": 3, "color": 5}


def test_head_scalings():
  color, pose = coefficients.scale_head_outputs(jnp.ones(4), jnp.ones(6))
  np.testing.assert_allclose(color, 3.0)
  np.testing.assert_allclose(pose, [0.3, 0.3, 0.3, 1.0, 1.0, 0.005])


def test_from_head_splits_and_scales_like_numpy():
  raw = np.random.default_rng(0).normal(size=(2, 4 + 3 + 5 + 6 + 27)).astype(np.float32)
  got = coefficients.from_head(jnp.asarray(raw), SIZES)
  # By hand: the original order shape | expression | color | pose | light, color x 3, rotations
  # x 0.3, tz x 0.005.
  expected = coefficients.Coefficients(
    shape=raw[:, 0:4],
    expression=raw[:, 4:7],
    color=3.0 * raw[:, 7:12],
    pose=raw[:, 12:18] * np.float32([0.3, 0.3, 0.3, 1.0, 1.0, 0.005]),
    light=raw[:, 18:45],
  )
  chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=0)
  with pytest.raises(ValueError, match="head output has 44 values"):
    coefficients.from_head(jnp.asarray(raw[:, :44]), SIZES)


def test_dict_round_trip_and_errors():
  zeros = coefficients.Coefficients.zeros(SIZES, batch=2)
  chex.assert_shape([zeros.shape, zeros.pose, zeros.light], [(2, 4), (2, 6), (2, 27)])
  assert list(zeros.to_dict()) == list(coefficients.GROUPS)
  chex.assert_trees_all_equal(coefficients.Coefficients.from_dict(zeros.to_dict()), zeros)
  partial = {k: v for k, v in zeros.to_dict().items() if k != "pose"}
  with pytest.raises(ValueError, match=r"missing \['pose'\], unexpected \[\]"):
    coefficients.Coefficients.from_dict(partial)
  with pytest.raises(ValueError, match=r"missing \[\], unexpected \['names'\]"):
    coefficients.Coefficients.from_dict({**zeros.to_dict(), "names": np.zeros(2)})


def test_record_is_a_pytree_under_jit_vmap_grad():
  rng = np.random.default_rng(1)
  faces = [
    coefficients.sample(rng, SIZES, coefficients.PriorRanges(tint_std=0.1)) for _ in range(3)
  ]
  batch = coefficients.stack(faces)
  chex.assert_shape(jax.tree.leaves(batch), (3, None))

  def energy(c):
    return sum(jnp.sum(x**2) for x in jax.tree.leaves(c))

  # vmap over the record's leading axis, jit with the record as argument.
  per_face = jax.jit(jax.vmap(energy))(batch)
  np.testing.assert_allclose(per_face, [energy(f) for f in faces], rtol=1e-6)
  # grad returns a record of the same structure: d sum(x^2) / dx = 2 x.
  grad = jax.grad(energy)(faces[0])
  assert isinstance(grad, coefficients.Coefficients)
  chex.assert_trees_all_close(grad, jax.tree.map(lambda x: 2 * x, faces[0]), rtol=1e-6)
  chex.assert_tree_all_finite(grad)


def test_sampler_respects_its_ranges_and_is_deterministic():
  sizes = {"shape": 6, "expression": 20, "color": 5}
  ranges = coefficients.PriorRanges(
    blend_shapes=3,
    max_blend_weight=0.8,
    rotation=(0.1, 0.5, 0.2),
    translation=10.0,
    depth=(-60.0, 120.0),
    ambient_std=0.3,
    band_std=(0.25, 0.25),
    tint_std=0.0,
  )
  faces = [coefficients.sample(np.random.default_rng([7, i]), sizes, ranges) for i in range(50)]
  batch = coefficients.stack(faces)
  chex.assert_shape(
    [batch.shape, batch.expression, batch.color, batch.pose, batch.light],
    [(50, 6), (50, 20), (50, 5), (50, 6), (50, 27)],
  )
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(batch))
  # Blend weights: exactly 3 active per face, in [0, 0.8].
  np.testing.assert_array_equal(np.count_nonzero(batch.expression, axis=1), 3)
  assert batch.expression.min() >= 0 and batch.expression.max() <= 0.8
  # Pose within its ranges (and actually spread over them).
  half = np.array([0.1, 0.5, 0.2, 10.0, 10.0])
  assert np.all(np.abs(batch.pose[:, :5]) <= half) and np.all(np.ptp(batch.pose[:, :5], 0) > half)
  assert np.all((batch.pose[:, 5] >= -60) & (batch.pose[:, 5] <= 120))
  # Without tint the light is white: the three channels equal.
  light = batch.light.reshape(50, 3, 9)
  np.testing.assert_array_equal(light[:, 0], light[:, 1])
  np.testing.assert_array_equal(light[:, 0], light[:, 2])
  # Deterministic for a seed.
  again = coefficients.sample(np.random.default_rng([7, 0]), sizes, ranges)
  chex.assert_trees_all_equal(again, faces[0])


def test_sampler_redraws_the_pose_until_accepted():
  ranges = coefficients.PriorRanges(rotation=(0.5, 0.5, 0.5))
  tries = []

  def accept(face):
    tries.append(face.pose)
    return bool(face.pose[1] > 0)  # positive yaw only

  face = coefficients.sample(np.random.default_rng(3), SIZES, ranges, accept=accept)
  assert face.pose[1] > 0 and len(tries) >= 1
  np.testing.assert_array_equal(face.pose, tries[-1])
  never = coefficients.sample(
    np.random.default_rng(3), SIZES, ranges, accept=lambda f: False, max_tries=5
  )
  # Without a pass the last draw stays; the groups before the pose are unaffected.
  assert never.pose.shape == (6,)
  chex.assert_trees_all_equal(dataclasses.replace(never, pose=face.pose), face)
