"""Occlusion-segmentation UNet of FOCUS (SPEC §5).

Input: ``concat(render, image)`` along channels (6 channels, render first as in the original),
NHWC float32 in [0, 1], H and W divisible by 16. Output: ``sigmoid(5 * x)`` of shape
``(B, H, W, 1)``, 1 where the face is visible (not occluded). :meth:`UNet.logits` returns the
pre-sigmoid ``5 * x`` so that a binary cross-entropy can be computed stably
(``optax.sigmoid_binary_cross_entropy(logits, labels)``); the original applied BCE-with-logits to
the already-sigmoided output (SPEC §7 quirk, not reproduced).

Architecture, with widths ``base * (1, 2, 4, 8, 16)`` (64..1024 in FOCUS):
encoder blocks ``enc1..enc5`` = (3x3 conv + BN + ReLU) x 2, 2x2 max-pool between them, dropout
0.5 after ``enc4`` and ``enc5``; decoder ``up5..up2`` = nearest x2 upsample + 3x3 conv + BN +
ReLU, concat ``(skip, upsampled)``, double conv ``dec5..dec2``; ``out`` = 1x1 conv to 1 channel.
Convolutions have biases (as the original's). ``focus_jax.convert`` maps the original
``Conv{i}.double_conv`` / ``Up{i}.up`` / ``Up_conv{i}`` / ``Conv`` keys onto these names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from focus_jax.models.resnet import batch_norm, conv
from focus_jax.render import fusion

# The original scales the last convolution by 5 before the sigmoid (sharper masks).
LOGIT_SCALE = 5.0


class DoubleConv(nnx.Module):
  """(3x3 conv + BN + ReLU) x 2, optionally followed by dropout."""

  def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, *, rngs: nnx.Rngs):
    self.conv1 = conv(in_features, out_features, 3, use_bias=True, rngs=rngs)
    self.bn1 = batch_norm(out_features, rngs=rngs)
    self.conv2 = conv(out_features, out_features, 3, use_bias=True, rngs=rngs)
    self.bn2 = batch_norm(out_features, rngs=rngs)
    # No RNG state in the module: training passes dropout keys per call (``rngs=``).
    self.dropout = nnx.Dropout(dropout) if dropout > 0 else None

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.bn2(self.conv2(x)))
    if self.dropout is not None:
      x = self.dropout(x, rngs=rngs)
    return x


class UpConv(nnx.Module):
  """Nearest-neighbour x2 upsample + 3x3 conv + BN + ReLU."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, 3, use_bias=True, rngs=rngs)
    self.bn = batch_norm(out_features, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(self.bn(self.conv(upsample2x(x))))


@jax.custom_vjp
def upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling of ``(B, H, W, C)`` to ``(B, 2H, 2W, C)``.

  Its gradient sums each 2 x 2 block of the cotangent after a fusion barrier: differentiated
  automatically, XLA:CPU fused that sum into the preceding convolution's input gradient, a
  library fusion 2-3x slower than the two apart (a 3x3 256->128 UpConv from 56 px, batch 12,
  gradient w.r.t. input and kernel: 4.8 -> 2.5 s).

  Tried and not adopted (1 December 2026): the sub-pixel form of upsample + 3x3 conv, four 2x2
  convolutions at the input's resolution with the kernel's taps merged (4/9 of the multiply-adds,
  same values). The full-size UNet's forward + backward alone got ~10 % faster (batch 12, 224 px,
  side by side: 41.4 -> 36.6 s, 42.8 -> 38.7 s), but the whole EM UNet step did not (46.9 s
  before, 52.2 and 48.2 s after) and its peak RSS rose from 8.1 to 8.9 GB, near the original's
  9.4. Tried again on 1 December 2026 on a faster machine hour (matmul 0.083-0.099 s), as four
  2x2 convolutions through ``models.conv.conv2d``: per layer, forward + backward, 128->64 from 112
  px 1383 -> 651 ms, 256->128 from 56 px 1365 -> 513, 512->256 from 28 px 1210 -> 498, 1024->512
  from 14 px 1128 -> 637; but the whole UNet's forward + backward only 26.1 -> 24.7 s, and the EM
  UNet step 29.9 / 29.8 / 29.6 s before against 29.9 / 30.7 / 26.7 after (noise), peak RSS 8.08
  -> 8.83 GB.
  """
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _upsample2x_fwd(x):
  return upsample2x(x), None


def _upsample2x_bwd(_, g):
  b, h, w, c = g.shape
  g = fusion.materialise(g)
  return (g.reshape(b, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4)),)


upsample2x.defvjp(_upsample2x_fwd, _upsample2x_bwd)


class UNet(nnx.Module):
  """The FOCUS occlusion UNet (see the module docstring)."""

  def __init__(
    self,
    base: int = 64,
    *,
    in_features: int = 6,
    dropout: float = 0.5,
    rngs: nnx.Rngs,
  ):
    """Builds the network.

    Args:
      base: width of the first block (64 in FOCUS; e.g. 8 for CPU tests).
      in_features: input channels (6 = render + image).
      dropout: dropout rate after the two deepest encoder blocks (0.5 in FOCUS).
      rngs: parameter RNGs.
    """
    widths = [base * 2**i for i in range(5)]
    self.in_features = in_features
    self.enc1 = DoubleConv(in_features, widths[0], rngs=rngs)
    self.enc2 = DoubleConv(widths[0], widths[1], rngs=rngs)
    self.enc3 = DoubleConv(widths[1], widths[2], rngs=rngs)
    self.enc4 = DoubleConv(widths[2], widths[3], dropout, rngs=rngs)
    self.enc5 = DoubleConv(widths[3], widths[4], dropout, rngs=rngs)
    self.up5 = UpConv(widths[4], widths[3], rngs=rngs)
    self.dec5 = DoubleConv(widths[4], widths[3], rngs=rngs)
    self.up4 = UpConv(widths[3], widths[2], rngs=rngs)
    self.dec4 = DoubleConv(widths[3], widths[2], rngs=rngs)
    self.up3 = UpConv(widths[2], widths[1], rngs=rngs)
    self.dec3 = DoubleConv(widths[2], widths[1], rngs=rngs)
    self.up2 = UpConv(widths[1], widths[0], rngs=rngs)
    self.dec2 = DoubleConv(widths[1], widths[0], rngs=rngs)
    self.out = conv(widths[0], 1, 1, use_bias=True, rngs=rngs)

  def logits(
    self, render: jax.Array, image: jax.Array, *, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    """Pre-sigmoid output ``5 * x``.

    Args:
      render: ``(B, H, W, C_r)`` float32 rendered image in [0, 1] (C_r + C_i = in_features).
      image: ``(B, H, W, C_i)`` float32 target image in [0, 1].
      rngs: dropout RNGs (``nnx.Rngs(dropout=key)``), required in training mode.

    Returns:
      ``(B, H, W, 1)`` float32 logits; ``sigmoid`` of them is the visibility mask.
    """
    x = jnp.concatenate([render, image], axis=-1)
    if x.ndim != 4 or x.shape[-1] != self.in_features:
      raise ValueError(
        f"UNet expects render+image with {self.in_features} channels in NHWC, got render "
        f"{render.shape} and image {image.shape}"
      )
    if x.shape[1] % 16 or x.shape[2] % 16:
      raise ValueError(f"UNet needs H and W divisible by 16, got {x.shape[1:3]}")
    e1 = self.enc1(x)
    e2 = self.enc2(_pool(e1))
    e3 = self.enc3(_pool(e2))
    e4 = self.enc4(_pool(e3), rngs=rngs)
    e5 = self.enc5(_pool(e4), rngs=rngs)
    d = self.dec5(jnp.concatenate([e4, self.up5(e5)], axis=-1))
    d = self.dec4(jnp.concatenate([e3, self.up4(d)], axis=-1))
    d = self.dec3(jnp.concatenate([e2, self.up3(d)], axis=-1))
    d = self.dec2(jnp.concatenate([e1, self.up2(d)], axis=-1))
    return LOGIT_SCALE * self.out(d)

  def __call__(
    self, render: jax.Array, image: jax.Array, *, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    """Visibility mask ``sigmoid(5 x)``: ``(B, H, W, 1)`` float32 in (0, 1), 1 = visible face.

    Args are those of :meth:`logits`.
    """
    return jax.nn.sigmoid(self.logits(render, image, rngs=rngs))


def _pool(x: jax.Array) -> jax.Array:
  # A reshape and a max instead (its gradient splits ties where select-and-scatter picks one):
  # 446 -> 276 ms forward + backward at 224 px, 64 channels, batch 12, bit-identical :cpu
  # gradients on random inputs, but the smoke chain's UNet pretraining went non-finite at step 2
  # with it (1 December 2026, cause not found), so reduce_window stays. As a custom VJP that gives
  # each window's cotangent to its first maximum (select-and-scatter's values exactly; 2 December
  # 2026): the UNet's forward + backward alone 2-4% faster at :cpu sizes, but the whole :cpu UNet
  # pretraining step slower, alternated three times: 363 / 382 / 357 ms against 327 / 357 / 287.
  return nnx.max_pool(x, (2, 2), strides=(2, 2))
