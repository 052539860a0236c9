"""Shape and behaviour tests of the Flax networks on tiny configurations (32 px, narrow widths).

Modules are initialised with rbg keys: on CPU they compile far faster than threefry keys.
"""

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from focus_jax import testing
from focus_jax.models import arcface, resnet, unet, weights
from focus_jax.render import coefficients, pipeline
from focus_jax.render import morphable_model as mm


def _rngs(seed: int = 0) -> nnx.Rngs:
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape).astype(np.float32))


def _abstract_apply(net, x):
  graphdef, state = nnx.split(net)
  return jax.eval_shape(lambda state, x: nnx.merge(graphdef, state)(x), state, x)


@nnx.jit
def _apply(module, *args, **kwargs):
  return module(*args, **kwargs)


@pytest.fixture(scope="module")
def encoder():
  return resnet.FaceEncoder(testing.small_model().sizes, depth=18, width=8, rngs=_rngs())


def test_zero_head_gives_mean_face(encoder):
  model = testing.small_model()
  coeffs = _apply(encoder, _images((2, 32, 32, 3)))
  # Every group (B, size), all zero.
  chex.assert_trees_all_equal(coeffs, coefficients.Coefficients.zeros(model.sizes, batch=2))
  # The mean face: vertices and albedo are the model means.
  vertices = mm.vertices(model, coeffs.shape[0], coeffs.expression[0])
  np.testing.assert_allclose(vertices, model.shape_mean + model.exp_mean, atol=1e-5)
  np.testing.assert_allclose(mm.albedo(model, coeffs.color[0]), model.color_mean, atol=1e-6)
  # The record is the renderer's batched ``coeffs`` as is (checked abstractly: no compile).
  out = jax.eval_shape(lambda c: pipeline.render_batch(model, c, 32, 32), coeffs)
  assert out.image.shape == (2, 32, 32, 3) and out.landmarks.shape == (2, 68, 2)


def test_head_scalings_applied_once(encoder):
  sizes = testing.small_model().sizes
  encoder = nnx.clone(encoder)
  encoder.backbone.fc.bias[...] = jnp.ones(sum(sizes.values()) + 6 + 27)
  coeffs = _apply(encoder, _images((2, 32, 32, 3)))  # Same shapes as above: no recompile.
  np.testing.assert_allclose(coeffs.shape, np.ones((2, sizes["shape"])))
  np.testing.assert_allclose(coeffs.expression, np.ones((2, sizes["expression"])))
  np.testing.assert_allclose(coeffs.color, np.full((2, sizes["color"]), 3.0))
  np.testing.assert_allclose(coeffs.pose, [[0.3, 0.3, 0.3, 1.0, 1.0, 0.005]] * 2, rtol=1e-6)
  np.testing.assert_allclose(coeffs.light, np.ones((2, 27)))
  with pytest.raises(ValueError, match="pose"):
    resnet.FaceEncoder({**sizes, "pose": 7}, depth=18, width=8, rngs=_rngs())
  with pytest.raises(ValueError, match="lack"):
    resnet.FaceEncoder({"shape": 3}, depth=18, width=8, rngs=_rngs())


def test_resnet_batchnorm_modes(encoder):
  net = nnx.clone(encoder.backbone)
  x = _images((3, 32, 32, 3))
  _apply(net, x)  # Training mode: batch statistics, running averages updated.
  mean = np.asarray(net.bn1.mean[...])
  assert np.abs(mean).max() > 0
  net.eval()
  # Eval mode: per-example outputs do not depend on the rest of the batch.
  other = x.at[1:].set(_images((2, 32, 32, 3), 1))
  np.testing.assert_allclose(_apply(net, x)[0], _apply(net, other)[0], atol=1e-5)
  np.testing.assert_array_equal(net.bn1.mean[...], mean)
  with pytest.raises(ValueError, match="NHWC"):
    net(jnp.zeros((1, 3, 32, 32)))


def test_resnet34_abstract():
  """ResNet-34 (basic blocks, deeper stages); 18 and 50 run in other tests."""
  net = nnx.eval_shape(lambda: resnet.ResNet(34, num_classes=7, width=4, rngs=_rngs()))
  assert net.num_features == 32
  out = _abstract_apply(net, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert out.shape == (2, 7)
  with pytest.raises(ValueError, match="depth"):
    resnet.ResNet(20, rngs=_rngs())


@pytest.fixture(scope="module")
def tiny_unet():
  return unet.UNet(4, rngs=_rngs())


@nnx.jit
def _unet_outputs(module, render, image, key):
  # Fresh Rngs from the same key: both calls draw the same dropout masks.
  logits = module.logits(render, image, rngs=nnx.Rngs(dropout=key))
  return logits, module(render, image, rngs=nnx.Rngs(dropout=key))


def test_unet_shapes_logits_and_dropout(tiny_unet):
  net = nnx.clone(tiny_unet)
  render, image = _images((2, 32, 32, 3), 1), _images((2, 32, 32, 3), 2)
  logits, mask = _unet_outputs(net, render, image, jax.random.key(0))
  assert logits.shape == mask.shape == (2, 32, 32, 1)
  np.testing.assert_allclose(mask, jax.nn.sigmoid(logits), atol=1e-6)
  assert float(mask.min()) >= 0 and float(mask.max()) <= 1
  # Training mode: the dropout of the deep blocks makes two draws differ.
  other, _ = _unet_outputs(net, render, image, jax.random.key(1))
  assert np.abs(np.asarray(logits - other)).max() > 1e-4
  net.eval()
  first, _ = _unet_outputs(net, render, image, jax.random.key(0))
  np.testing.assert_array_equal(first, _unet_outputs(net, render, image, jax.random.key(1))[0])
  with pytest.raises(ValueError, match="divisible by 16"):
    net(render[:, :24], image[:, :24])
  with pytest.raises(ValueError, match="6 channels"):
    net(render, image[..., :2])


def test_unet_functional_training_step(tiny_unet):
  """The STYLE.md pattern: split, jit a grad of a loss over params, merge inside."""
  graphdef, params, rest = nnx.split(tiny_unet, nnx.Param, ...)
  render, image = _images((2, 32, 32, 3), 3), _images((2, 32, 32, 3), 4)
  labels = (render[..., :1] > 0.5).astype(jnp.float32)

  @jax.jit
  def step(params, rest, key):
    # copy=True: the BatchStats of ``rest`` (traced by jit) are updated inside the grad trace.
    def loss_fn(params, rest):
      model = nnx.merge(graphdef, params, rest, copy=True)
      logits = model.logits(render, image, rngs=nnx.Rngs(dropout=key))
      loss = jnp.mean(jnp.logaddexp(0.0, logits) - labels * logits)  # Stable BCE.
      return loss, nnx.state(model, nnx.BatchStat)

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
    return loss, grads, stats

  loss, grads, stats = step(params, rest, jax.random.key(0))
  assert np.isfinite(float(loss))
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.abs(np.asarray(g)).max() > 0 for g in leaves)
  assert np.abs(np.asarray(stats["enc1"]["bn1"]["mean"][...])).max() > 0


def test_upsample2x_value_and_gradient_match_numpy():
  x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
  g = np.random.default_rng(1).normal(size=(2, 6, 8, 5)).astype(np.float32)
  np.testing.assert_array_equal(unet.upsample2x(x), x.repeat(2, axis=1).repeat(2, axis=2))
  grad = jax.jit(jax.grad(lambda x: jnp.sum(unet.upsample2x(x) * g)))(x)
  # Each input pixel receives the sum of its 2 x 2 block of the cotangent.
  expected = g.reshape(2, 3, 2, 4, 2, 5).sum(axis=(2, 4))
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


def test_iresnet_shapes_and_unit_embedding():
  net = arcface.IResNet(18, input_size=32, width=8, rngs=_rngs())
  net.eval()
  out = _apply(net, _images((2, 32, 32, 3)))
  assert out.deep.shape == (2, 512) and out.shallow.shape == (2, 16, 16, 8)
  np.testing.assert_allclose(np.linalg.norm(out.deep, axis=-1), 1.0, rtol=1e-5)
  shallow = nnx.jit(lambda net, x: net.shallow(x))(net, _images((2, 32, 32, 3)))
  np.testing.assert_allclose(shallow, out.shallow, atol=1e-6)
  with pytest.raises(ValueError, match=r"\(B, 32, 32, 3\)"):
    net(_images((2, 64, 64, 3)))


def test_prelu_matches_numpy():
  prelu = arcface.PReLU(3)
  prelu.weight[...] = jnp.array([0.1, 0.2, -0.5])
  x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  expected = np.maximum(x, 0) + np.array([0.1, 0.2, -0.5]) * np.minimum(x, 0)
  np.testing.assert_allclose(prelu(jnp.asarray(x)), expected, rtol=1e-6)


@pytest.mark.parametrize("path", [None, "", "/nonexistent/arcface_r50.npz"])
def test_missing_arcface_weights_disable_losses(path, caplog, monkeypatch):
  monkeypatch.setattr(weights, "_ARCFACE_WARNED", set())
  with caplog.at_level(logging.DEBUG):
    for _ in range(2):  # a chain loads once per stage: one warning, then DEBUG
      network, record = weights.load_arcface_or_none(path)
      assert network is None
      assert set(record) == {"perceptual", "preserve", "dist"}
      assert all(v.startswith("disabled: ") for v in record.values())
  levels = [r.levelno for r in caplog.records if "DISABLED" in r.getMessage()]
  assert levels == [logging.WARNING, logging.DEBUG]
