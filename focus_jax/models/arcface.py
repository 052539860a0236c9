"""ArcFace IResNet-18/34/50/100 (insightface ``arcface_torch`` layout) for the perceptual losses.

Input: aligned faces ``(B, 112, 112, 3)`` float32 RGB in [0, 1] (see ``focus_jax.align``); they
are scaled to ``2x - 1`` inside, as the FOCUS wrapper did before the network. Outputs
(:class:`Features`):

- ``deep``: the L2-normalised 512-d embedding (SPEC §5 "deep" features).
- ``shallow``: the stem + first residual stage, ``(B, 56, 56, 64)`` for a 112 input
  (SPEC §5 "shallow" features), unnormalised (the losses decide how to normalise).

Blocks are ``BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN`` plus a shortcut
(``conv1x1(stride) + BN`` when the shape changes); the stem is ``conv3x3 + BN + PReLU``; every
stage halves the resolution; then ``bn2``, flatten, dropout, ``fc`` (to 512) and the
``features`` BatchNorm1d. Module names follow ``arcface_torch`` so ``focus_jax.convert`` maps an
insightface ``backbone.pth`` by name. The flatten is done in PyTorch's channel-major order so the
``fc`` weights of a converted checkpoint apply unchanged.

The network is only ever used frozen, in inference mode. When no weights are available,
:func:`focus_jax.models.weights.load_arcface_or_none` disables the losses that need it (never
random weights).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from focus_jax.models.resnet import batch_norm, conv

IRESNET_LAYERS = {
  18: (2, 2, 2, 2),
  34: (3, 4, 6, 3),
  50: (3, 4, 14, 3),
  100: (3, 13, 30, 3),
}
INPUT_SIZE = 112
EMBEDDING_SIZE = 512
# Losses that need ArcFace features (SPEC §6) and are disabled without weights.
ARCFACE_LOSSES = ("perceptual", "preserve", "dist")


class Features(NamedTuple):
  """ArcFace outputs.

  Attributes:
    deep: ``(B, 512)`` float32, L2-normalised embedding.
    shallow: ``(B, H/2, W/2, width)`` float32 stem + first stage features.
  """

  deep: jax.Array
  shallow: jax.Array


class PReLU(nnx.Module):
  """Per-channel PReLU (PyTorch ``nn.PReLU(C)``, slopes initialised to 0.25)."""

  def __init__(self, features: int, *, rngs: nnx.Rngs | None = None):
    del rngs  # Deterministic initialisation; accepted for a uniform constructor signature.
    self.weight = nnx.Param(jnp.full((features,), 0.25, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.where(x >= 0, x, self.weight[...] * x)


class IBasicBlock(nnx.Module):
  """Pre-activation-style IResNet block with the stride in the second convolution."""

  def __init__(self, in_features: int, planes: int, stride: int, *, rngs: nnx.Rngs):
    self.bn1 = batch_norm(in_features, rngs=rngs)
    self.conv1 = conv(in_features, planes, 3, rngs=rngs)
    self.bn2 = batch_norm(planes, rngs=rngs)
    self.prelu = PReLU(planes)
    self.conv2 = conv(planes, planes, 3, stride, rngs=rngs)
    self.bn3 = batch_norm(planes, rngs=rngs)
    if stride != 1 or in_features != planes:
      self.downsample = nnx.List(
        [conv(in_features, planes, 1, stride, rngs=rngs), batch_norm(planes, rngs=rngs)]
      )
    else:
      self.downsample = None

  def __call__(self, x: jax.Array) -> jax.Array:
    out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    if self.downsample is None:
      return out + x
    projection, norm = self.downsample
    return out + norm(projection(x))


class IResNet(nnx.Module):
  """insightface IResNet returning deep and shallow features (see the module docstring)."""

  def __init__(
    self,
    depth: int = 50,
    *,
    dropout: float = 0.0,
    input_size: int = INPUT_SIZE,
    width: int = 64,
    num_features: int = EMBEDDING_SIZE,
    rngs: nnx.Rngs,
  ):
    """Builds the network.

    Args:
      depth: one of ``IRESNET_LAYERS`` (FOCUS uses 50).
      dropout: dropout rate before ``fc`` (0 in the ms1mv3 models).
      input_size: square input size (112; a multiple of 16, smaller only for tests).
      width: stem width (64; small values for CPU tests).
      num_features: embedding size (512).
      rngs: parameter RNGs.
    """
    if depth not in IRESNET_LAYERS:
      raise ValueError(f"IResNet depth must be one of {sorted(IRESNET_LAYERS)}, got {depth}")
    if input_size % 16:
      raise ValueError(f"IResNet input size must be a multiple of 16, got {input_size}")
    self.input_size = input_size
    self.conv1 = conv(3, width, 3, rngs=rngs)
    self.bn1 = batch_norm(width, rngs=rngs)
    self.prelu = PReLU(width)
    features = width
    for stage, count in enumerate(IRESNET_LAYERS[depth]):
      planes = width * 2**stage
      blocks = []
      for i in range(count):
        blocks.append(IBasicBlock(features, planes, 2 if i == 0 else 1, rngs=rngs))
        features = planes
      setattr(self, f"layer{stage + 1}", nnx.List(blocks))
    self.bn2 = batch_norm(features, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    side = input_size // 16
    self.fc = nnx.Linear(features * side * side, num_features, rngs=rngs)
    self.features = batch_norm(num_features, rngs=rngs)

  def _check(self, images: jax.Array) -> None:
    size = self.input_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
      raise ValueError(f"IResNet expects (B, {size}, {size}, 3) images, got {images.shape}")

  def shallow(self, images: jax.Array) -> jax.Array:
    """Stem + first stage only (cheaper when the deep embedding is not needed).

    Args:
      images: ``(B, S, S, 3)`` float32 aligned faces in [0, 1], ``S = input_size``.

    Returns:
      ``(B, S/2, S/2, width)`` float32.
    """
    self._check(images)
    x = self.prelu(self.bn1(self.conv1(2.0 * images - 1.0)))
    for block in self.layer1:
      x = block(x)
    return x

  def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> Features:
    """Deep (L2-normalised embedding) and shallow features.

    Args:
      images: ``(B, S, S, 3)`` float32 aligned faces in [0, 1], ``S = input_size``.
      rngs: dropout RNGs, needed only for ``dropout > 0`` in training mode.

    Returns:
      :class:`Features`.
    """
    shallow = self.shallow(images)
    x = shallow
    for stage in (self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x)
    x = self.bn2(x)
    # PyTorch flattens NCHW (channel-major): transposing first keeps converted fc weights valid.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = self.features(self.fc(self.dropout(x, rngs=rngs)))
    # The epsilon only guards an all-zero embedding (impossible with trained weights).
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
    return Features(deep=x / norm, shallow=shallow)


def disabled_record(reason: str) -> dict[str, str]:
  """``{loss: 'disabled: <reason>'}`` for every ArcFace loss, for the run's config/metrics."""
  return {name: f"disabled: {reason}" for name in ARCFACE_LOSSES}
