"""2-D convolution whose kernel gradient is a sum of matmuls (fast on XLA:CPU).

XLA:CPU computes a convolution's gradient w.r.t. its kernel (the backward-filter convolution)
several times slower than the forward convolution: a 3x3 64->64 layer at 56x56 (batch 12) took
1.3 s where the same gradient written as nine shifted matmuls took 0.28 s, and a 1x1 layer's
kernel gradient 1.3 s where one ``jnp.dot`` took 0.09 s. :func:`conv2d` therefore carries its
own VJP:

- forward: ``jnp.dot`` for 1x1 kernels (a strided slice first when ``stride > 1``; XLA's 1x1
  convolution was 3x slower than the dot), ``lax.conv_general_dilated`` otherwise (for 3x3
  kernels XLA's convolution beat both nine shifted dots and one im2col dot, batch 12, 2 cores:
  64->64 at 224 px 603 ms vs 1366 and 1956, 128->128 at 112 px 617 vs 936 and 1180, 6->64 at
  224 px 232 vs 905 and 275; only 1024->1024 at 14 px favoured the dots, 462 vs 386; patch
  matmuls in chunks of rows, as for the kernel gradient below, were no better overall: 64->64 at
  224 px 527 vs 648, 256->128 at 112 px 1219 vs 1048, 512->256 at 56 px 775 vs 857);
- gradient w.r.t. the input: the transpose of that forward, as XLA builds it (a
  backward-data convolution, or ``dot(g, kernel.T)`` scattered back by an interior pad);
- gradient w.r.t. the kernel: one ``jnp.dot`` for 1x1 kernels; otherwise, for large layers,
  matmuls over the patches that the kernel sees: for kernels of up to
  :data:`PATCH_MAX_KERNEL` elements in tiles of ~:data:`PATCH_PIXELS` output pixels over the
  batch, each tile's ``kh * kw`` strided windows side by side ``(B, P, kh * kw * C)`` contracted
  with its output cotangent ``(B, P, O)`` and summed over the tiles (in the cache: 1.4-4x faster
  than per tap at 224 and 112 px); for larger kernels (deep layers, where a tile's running sum
  would not fit) per tap ``(i, j)``, the strided window of the padded input that tap sees, ``(B * Ho
  * Wo, C)``, transposed and multiplied by the output cotangent ``(B * Ho * Wo, O)``, the
  ``kh * kw`` products ``(C, O)`` stacked into ``(kh, kw, C, O)``. Small layers keep XLA's
  backward-filter convolution, which is as fast or faster there (:data:`MATMUL_GRAD_MIN_MACS`;
  the patch tiles do not change that: the ``:cpu`` networks' 3x3 layers at 96 px, fifteen
  shapes, 78 ms with XLA's against 93 ms), and so does every layer on GPU and TPU, whose
  libraries compute it well.

XLA:CPU's other convolution back ends were no faster here: with ``--xla_cpu_use_onednn``,
``--xla_cpu_experimental_onednn_custom_call`` or ``--xla_cpu_use_xnnpack`` in ``XLA_FLAGS`` the
64->64 3x3 layer at 224 px (batch 12, 2 cores) took 2151, 2307 and 2157 ms forward + backward
against 2012 ms without. Its forward runs at ~63% of the machine's float32 matmul rate, so the
full-size UNet step is bound by its FLOPs on CPU.

Both gradients are always built; under ``jax.jit`` XLA removes the one nobody uses (the kernel
gradient of a frozen network, the input gradient of the first layer). The rule is reverse-mode
only (``jax.custom_vjp``): ``jax.jvp`` / ``jax.jacfwd`` through :func:`conv2d` raise.

:class:`Conv` is an ``nnx.Module`` with ``nnx.Conv``'s parameter tree (``kernel`` (kh, kw, in,
out), ``bias`` (out,) or ``None``) and initialisation (same RNG draws), so checkpoints and
``focus_jax.convert`` see no difference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")

# Multiply-adds (B * Ho * Wo * kh * kw * C * O) from which a kh x kw (> 1x1) kernel gradient is
# taken as matmuls. Measured CPU ms, XLA's backward-filter vs matmuls (batch 12, 2 shared cores):
# 3x3 8->8 at 64 px (28M MACs) 4.4 vs 8.1; 3x3 128->128 at 8 px (113M) 6.0 vs 7.7; 3x3 32->32
# at 64 px and 64->64 at 32 px (453M) 86 vs 104 and 46 vs 44; 7x7 stride 2 3->64 at 112 px
# (354M) 226 vs 143 (wall); 3x3 64->64 at 56 px (1.4G) 538 vs 225; 3x3 6->64 at 224 px (2.1G)
# 1403 vs 541. Every layer of the ``:cpu`` networks (96 px) is below, every trained layer of the
# full-size ones (224 px) above.
MATMUL_GRAD_MIN_MACS = 3e8

# Matmul kernel gradients of kernels with at most this many elements (kh * kw * C * O) are taken
# in tiles of PATCH_PIXELS output pixels (over the batch): one (O, P) x (P, kh * kw * C) product
# per tile keeps the patches and the running sum in the cache, where one (C, B * Ho * Wo) x
# (B * Ho * Wo, O) product per tap streams the whole layer through memory kh * kw times.
# Measured, wall ms per kernel gradient, batch 12, 2 cores (per tap vs tiles): 3x3 64->64 at
# 224 px 983 vs 561, 128->64 at 224 px 1722 vs 908, 256->128 at 112 px 1126 vs 812, 512->256 at
# 56 px (1.2M elements) 917 vs 747, 64->64 at 56 px 51 vs 35; 7x7 stride 2 3->64 at 224 px 189
# vs 45 (tiles of 256 and 512 pixels were 0-30 % slower than 1024); larger kernels do as well or
# better per tap: 512->512 at 28 px (2.4M) 361 vs 385, 1024->1024 at 14 px 343 vs 384.
PATCH_MAX_KERNEL = 2**21
PATCH_PIXELS = 1024

# nnx.Conv's default initialisers.
_LECUN_NORMAL = nnx.initializers.lecun_normal()
_ZEROS = nnx.initializers.zeros_init()


def _forward(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """The convolution itself, (B, H, W, C) x (kh, kw, C, O) -> (B, Ho, Wo, O)."""
  kh, kw = kernel.shape[:2]
  if (kh, kw) == (1, 1):
    if padding:
      x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return jnp.dot(x[:, ::stride, ::stride], kernel[0, 0])
  pads = ((padding, padding), (padding, padding))
  return lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DIMENSIONS)


def _largest_divisor(n: int, limit: int) -> int:
  """The largest divisor of ``n`` that is at most ``max(limit, 1)``."""
  return max(d for d in range(1, min(n, max(limit, 1)) + 1) if n % d == 0)


def _kernel_grad(x: jax.Array, g: jax.Array, kernel_shape, stride: int, padding: int):
  """d(sum(g * conv(x, kernel))) / d(kernel) for g (B, Ho, Wo, O): (kh, kw, C, O) as matmuls,
  in patch tiles (:func:`_kernel_grad_patches`) for kernels of up to :data:`PATCH_MAX_KERNEL`
  elements, else one matmul per kernel tap (in a loop over the taps)."""
  kh, kw, c, o = kernel_shape
  b, ho, wo, _ = g.shape
  if padding:
    # Padded with 0 * g[0]: a padded copy that depends on the input only is computed during
    # the forward pass and kept alive until the backward, one per layer (1.9 GB at the peak of
    # the full-size EM UNet step). A non-finite g[0] only makes the kernel gradient non-finite,
    # which it is then anyway.
    zero = (g.reshape(-1)[0] * 0).astype(x.dtype)
    x = lax.pad(x, zero, ((0, 0, 0), (padding, padding, 0), (padding, padding, 0), (0, 0, 0)))
  if (kh, kw) != (1, 1) and kh * kw * c * o <= PATCH_MAX_KERNEL:
    return _kernel_grad_patches(x, g, kernel_shape, stride)
  g = g.reshape(-1, o)
  if (kh, kw) == (1, 1):
    window = x[:, : (ho - 1) * stride + 1 : stride, : (wo - 1) * stride + 1 : stride]
    return jnp.dot(window.reshape(-1, c).T, g).reshape(kernel_shape)

  def tap(_, index):
    # The input pixels that tap (i, j) multiplies, in output order.
    i, j = index // kw, index % kw
    window = lax.dynamic_slice(
      x, (0, i, j, 0), (b, (ho - 1) * stride + 1, (wo - 1) * stride + 1, c)
    )
    window = window[:, ::stride, ::stride]
    return None, jnp.dot(window.reshape(-1, c).T, g)

  # A loop, not kh * kw static slices: the windows depend on the input only, so XLA computed
  # static ones during the forward pass and kept them all alive until the backward (six 3x3
  # 64->64 layers at 224 px, batch 12: peak RSS 9.4 GB, against 2.5 GB in the loop and 3.1 GB
  # with XLA's own kernel gradient; the full EM UNet step ran out of 24 GB). In the loop one
  # window exists at a time.
  _, taps = lax.scan(tap, None, jnp.arange(kh * kw))
  return taps.reshape(kh, kw, c, o)


def _kernel_grad_patches(x: jax.Array, g: jax.Array, kernel_shape, stride: int):
  """:func:`_kernel_grad` of an already padded ``x`` in tiles of about :data:`PATCH_PIXELS`
  output pixels over the whole batch (``rows x cols`` of every image): each tile's patch matrix
  ``(B, P, kh * kw * C)`` (the kh * kw strided windows side by side) is contracted over batch and
  pixels with its cotangent ``(B, P, O)``, and the products are summed over the tiles in a loop.
  Tiles never split the batch, so under batch sharding each device contracts its own images and
  one all-reduce sums them (slicing the batch made XLA gather it on every device)."""
  kh, kw, c, o = kernel_shape
  b, ho, wo, _ = g.shape
  per_image = max(1, PATCH_PIXELS // b)
  cols = _largest_divisor(wo, per_image)
  rows = _largest_divisor(ho, per_image // cols) if cols == wo else 1
  tiles_across = wo // cols

  def tile(total, index):
    row, col = (index // tiles_across) * rows, (index % tiles_across) * cols
    window = lax.dynamic_slice(
      x,
      (0, row * stride, col * stride, 0),
      (b, (rows - 1) * stride + kh, (cols - 1) * stride + kw, c),
    )
    cotangent = lax.dynamic_slice(g, (0, row, col, 0), (b, rows, cols, o))
    taps = [
      window[:, i : i + (rows - 1) * stride + 1 : stride, j : j + (cols - 1) * stride + 1 : stride]
      for i in range(kh)
      for j in range(kw)
    ]
    patches = jnp.concatenate(taps, axis=-1).reshape(b, rows * cols, kh * kw * c)
    # Summed as (O, K): faster than (K, O) on XLA:CPU (3x3 128->64 at 224 px: 1041 vs 1404 ms).
    products = jnp.einsum("bpo,bpk->ok", cotangent.reshape(b, rows * cols, o), patches)
    return total + products, None

  steps = jnp.arange(ho // rows * tiles_across)
  total, _ = lax.scan(tile, jnp.zeros((o, kh * kw * c), g.dtype), steps)
  return total.T.reshape(kh, kw, c, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(
  x: jax.Array,
  kernel: jax.Array,
  stride: int = 1,
  padding: int = 0,
  matmul_grad: bool | None = None,
) -> jax.Array:
  """Cross-correlation of NHWC images with an HWIO kernel, symmetric zero padding.

  Same result as ``lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),
  (padding, padding)), dimension_numbers=("NHWC", "HWIO", "NHWC"))``, with faster gradients on
  XLA:CPU (module docstring).

  Args:
    x: (B, H, W, C) images.
    kernel: (kh, kw, C, O).
    stride: the same stride on both spatial axes (a Python int).
    padding: zeros added before and after both spatial axes (a Python int).
    matmul_grad: kernel gradient of a > 1x1 kernel as matmuls (True) or XLA's backward-filter
      convolution (False); None: matmuls on CPU from :data:`MATMUL_GRAD_MIN_MACS`
      multiply-adds on, XLA's elsewhere.
      1x1 kernels always use one matmul.

  Returns:
    (B, Ho, Wo, O), ``Ho = (H + 2 * padding - kh) // stride + 1`` (``Wo`` likewise).
  """
  return _forward(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding, matmul_grad):
  return _forward(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, matmul_grad, residuals, g):
  x, kernel = residuals
  # The input gradient is the forward's transpose: XLA's backward-data convolution is fast.
  (gx,) = jax.linear_transpose(
    lambda x: _forward(x, kernel, stride, padding), jax.ShapeDtypeStruct(x.shape, x.dtype)
  )(g)
  kh, kw, c, o = kernel.shape
  if matmul_grad is None:
    # Only XLA:CPU's backward-filter convolution is slow; GPU/TPU libraries keep their own.
    matmul_grad = jax.default_backend() == "cpu" and g.size * kh * kw * c >= MATMUL_GRAD_MIN_MACS
  if (kh, kw) == (1, 1) or matmul_grad:
    gk = _kernel_grad(x, g, kernel.shape, stride, padding).astype(kernel.dtype)
  else:
    (gk,) = jax.linear_transpose(
      lambda k: _forward(x, k, stride, padding), jax.ShapeDtypeStruct(kernel.shape, kernel.dtype)
    )(g)
  return gx, gk


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nnx.Module):
  """Drop-in for ``nnx.Conv`` (2-D, NHWC, symmetric padding) running :func:`conv2d`.

  Parameters and their initialisation are ``nnx.Conv``'s: ``kernel`` (kh, kw, in, out) from
  ``kernel_init`` (first ``rngs.params()`` draw), ``bias`` (out,) zeros (second draw) or
  ``None`` without ``use_bias``; float32.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | tuple[int, int],
    strides: int = 1,
    *,
    padding: int = 0,
    use_bias: bool = True,
    kernel_init: nnx.Initializer = _LECUN_NORMAL,
    bias_init: nnx.Initializer = _ZEROS,
    rngs: nnx.Rngs,
  ):
    if isinstance(kernel_size, int):
      kernel_size = (kernel_size, kernel_size)
    self.kernel_size = tuple(kernel_size)
    self.strides = strides
    self.padding = padding
    shape = (*self.kernel_size, in_features, out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
    self.bias: nnx.Param | None
    if use_bias:
      self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), jnp.float32))
    else:
      self.bias = nnx.data(None)  # as nnx.Conv: the state tree holds a None leaf

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, in) -> (B, Ho, Wo, out)."""
    kernel = self.kernel[...]
    dtype = jnp.result_type(x, kernel)
    y = conv2d(x.astype(dtype), kernel.astype(dtype), self.strides, self.padding)
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y
