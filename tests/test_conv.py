"""``models.conv``: ``conv2d``'s value and both gradients equal ``lax.conv_general_dilated``'s;
``Conv`` has ``nnx.Conv``'s parameter tree, initial values and output.

Tolerance: float32, maximum absolute error relative to the reference's maximum absolute value,
1e-5 (the matmul kernel gradient sums the same products in another order; observed <= 4e-7).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from focus_jax.models import conv

RTOL = 1e-5


def _reference(x, kernel, stride, padding, matmul_grad=None):
  del matmul_grad
  pads = ((padding, padding), (padding, padding))
  return lax.conv_general_dilated(
    x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _assert_close(actual, expected):
  assert actual.shape == expected.shape
  scale = float(jnp.max(jnp.abs(expected)))
  assert scale > 0.0
  np.testing.assert_array_less(float(jnp.max(jnp.abs(actual - expected))), RTOL * scale)


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


# (height, width, kernel, stride, padding): even and odd sizes, sizes whose last row and column
# no output sees (10 with stride 2), padded 1x1, a non-square input.
CASES = [
  (8, 8, 1, 1, 0),
  (8, 8, 1, 2, 0),
  (9, 9, 1, 2, 0),
  (9, 9, 1, 2, 1),
  (8, 8, 3, 1, 1),
  (9, 9, 3, 2, 1),
  (10, 10, 3, 2, 1),
  (11, 11, 7, 2, 3),
  (10, 10, 7, 2, 3),
  (9, 12, 3, 2, 1),
]


# 1x1 kernels take the matmul path whatever ``matmul_grad`` says. The matmul path of larger
# kernels has two forms: patch tiles (small kernels; tiles of ``patch_pixels`` output pixels over
# the batch of 2: with 8, tiles narrower than a row (4 of 8 columns, 3 of 6, 1 of 5), with 64
# several rows or whole images) and one matmul per tap (large kernels; ``patch_pixels`` None).
@pytest.mark.parametrize(
  "height, width, k, stride, padding, matmul_grad, patch_pixels",
  [(*case, True, 8) for case in CASES]
  + [(*case, True, pixels) for case in CASES if case[2] > 1 for pixels in (64, None)]
  + [(*case, False, None) for case in CASES if case[2] > 1],
)
def test_conv2d_value_and_gradients_match_lax(
  monkeypatch, height, width, k, stride, padding, matmul_grad, patch_pixels
):
  monkeypatch.setattr(conv, "PATCH_MAX_KERNEL", 0 if patch_pixels is None else 2**20)
  monkeypatch.setattr(conv, "PATCH_PIXELS", patch_pixels or 8)
  x = _normal(0, (2, height, width, 3))
  kernel = _normal(1, (k, k, 3, 5))

  # One program per case: op-by-op dispatch of the kh * kw taps is slower to run.
  @functools.partial(jax.jit, static_argnums=0)
  def value_and_grads(f, g):
    y, vjp = jax.vjp(lambda x, w: f(x, w, stride, padding, matmul_grad), x, kernel)
    return y, vjp(g)

  y_ref = _reference(x, kernel, stride, padding)
  g = _normal(2, y_ref.shape)
  y, grads = value_and_grads(conv.conv2d, g)
  y_ref, grads_ref = value_and_grads(_reference, g)
  _assert_close(y, y_ref)
  for grad, grad_ref in zip(grads, grads_ref, strict=True):
    _assert_close(grad, grad_ref)


def test_conv2d_grad_under_jit_of_a_nonlinear_loss():
  """jax.grad through jit with a loss that is not linear in the output (cotangent varies)."""
  x = _normal(3, (2, 9, 9, 4))
  kernel = _normal(4, (3, 3, 4, 6))

  def loss(f, x, w):
    return jnp.sum(jnp.tanh(f(x, w, 2, 1)) ** 2)

  conv2d = functools.partial(conv.conv2d, matmul_grad=True)
  grads = jax.jit(jax.grad(lambda x, w: loss(conv2d, x, w), argnums=(0, 1)))(x, kernel)
  grads_ref = jax.grad(lambda x, w: loss(_reference, x, w), argnums=(0, 1))(x, kernel)
  for grad, grad_ref in zip(grads, grads_ref, strict=True):
    _assert_close(grad, grad_ref)


def _kernel_grad_dots(argnums, matmul_grad):
  """Dots in the compiled gradient of a 3x3 layer (forward and input gradient have none)."""
  x = _normal(5, (2, 8, 8, 4))
  kernel = _normal(6, (3, 3, 4, 6))
  loss = lambda x, w: jnp.sum(conv.conv2d(x, w, 1, 1, matmul_grad) ** 2)  # noqa: E731
  fn = jax.jit(jax.grad(loss, argnums=argnums))
  return fn.lower(x, kernel).compile().as_text().count(" dot(")


def test_input_gradient_only_drops_the_kernel_gradient():
  """A frozen network's step (gradient w.r.t. the input only) builds no kernel-gradient dots."""
  assert _kernel_grad_dots(0, True) == 0
  assert _kernel_grad_dots(1, True) == 1  # one, in the loop over the patch tiles


def test_kernel_gradient_path_chosen_by_size(monkeypatch):
  assert _kernel_grad_dots(1, None) == 0  # 2 * 8 * 8 * 9 * 4 * 6 MACs: XLA's convolution
  monkeypatch.setattr(conv, "MATMUL_GRAD_MIN_MACS", 2 * 8 * 8 * 9 * 4 * 6)
  assert _kernel_grad_dots(1, None) == 1
  # Off CPU the accelerator's own kernel gradient is kept, whatever the size.
  monkeypatch.setattr(conv.jax, "default_backend", lambda: "gpu")
  assert _kernel_grad_dots(1, None) == 0


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("k, stride", [(1, 2), (3, 1), (7, 2)])
def test_module_matches_nnx_conv(use_bias, k, stride):
  padding = k // 2
  init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
  ours = conv.Conv(
    3, 4, k, stride, padding=padding, use_bias=use_bias, kernel_init=init, rngs=nnx.Rngs(0)
  )
  theirs = nnx.Conv(
    3,
    4,
    (k, k),
    strides=stride,
    padding=((padding, padding), (padding, padding)),
    use_bias=use_bias,
    kernel_init=init,
    rngs=nnx.Rngs(0),
  )
  state, state_ref = nnx.state(ours), nnx.state(theirs)
  assert jax.tree.structure(state) == jax.tree.structure(state_ref)
  # Same RNG draws in the same order: the initial parameters are equal, not only alike.
  for leaf, leaf_ref in zip(jax.tree.leaves(state), jax.tree.leaves(state_ref), strict=True):
    assert leaf.dtype == leaf_ref.dtype == jnp.float32
    np.testing.assert_array_equal(leaf, leaf_ref)
  if use_bias:  # a non-zero bias, so that the output checks it is added
    ours.bias[...] = theirs.bias[...] = _normal(7, (4,))
  x = _normal(8, (2, 9, 9, 3))
  _assert_close(ours(x), theirs(x))


def _stack_temp_bytes(conv_fn, depth=6, size=48, channels=32):
  """XLA's temporary memory for the kernel gradients of ``depth`` 3x3 layers with ReLUs."""
  keys = jax.random.split(jax.random.key(0), depth + 1)
  x = jax.random.normal(keys[0], (4, size, size, channels))
  kernels = [0.1 * jax.random.normal(k, (3, 3, channels, channels)) for k in keys[1:]]

  def loss(kernels):
    y = x
    for kernel in kernels:
      y = jax.nn.relu(conv_fn(y, kernel))
    return jnp.sum(y * y)

  compiled = jax.jit(jax.grad(loss)).lower(kernels).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_kernel_gradient_keeps_no_forward_copies_alive():
  # Copies of a layer's input made for its kernel gradient (padding, tap windows) must not be
  # computed during the forward pass and held until the backward pass. Measured (6 layers, 32
  # channels, 48 px, batch 4): 9.7 MB, against 14.8 MB with the padded copies held and 15.3 MB
  # for XLA's own gradient.
  ours = _stack_temp_bytes(lambda y, k: conv.conv2d(y, k, 1, 1, True))
  xla = _stack_temp_bytes(
    lambda y, k: lax.conv_general_dilated(
      y, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=conv._DIMENSIONS
    )
  )
  assert ours <= 0.8 * xla, (ours, xla)


def test_patch_tiles_keep_a_batch_sharded_gradient_local():
  """Under batch (data-parallel) sharding the patch tiles contract each device's own images:
  the compiled kernel gradient sums them with all-reduces and never gathers the batch."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  x = jax.device_put(_normal(9, (4, 16, 16, 4)), batch)
  kernel = jax.device_put(_normal(10, (3, 3, 4, 6)), replicated)
  loss = lambda w, x: jnp.sum(conv.conv2d(x, w, 1, 1, True) ** 2)  # noqa: E731
  grad = jax.jit(jax.grad(loss))
  text = grad.lower(kernel, x).compile().as_text()
  assert "all-reduce" in text and "all-gather" not in text
  _assert_close(grad(kernel, x), jax.grad(lambda w: jnp.sum(_reference(x, w, 1, 1) ** 2))(kernel))
