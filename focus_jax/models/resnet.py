"""ResNet-18/34/50/101/152 (torchvision layout) and the FOCUS face encoder (SPEC §5).

Input images are NHWC float32 in [0, 1] with no mean/std normalisation (as the original FOCUS
encoder, which fed [0, 1] images to an ImageNet-initialised torchvision ResNet-50).

The module tree mirrors torchvision's ``resnet`` key names (``conv1``, ``bn1``,
``layer{1..4}.{i}.conv{1..3}``, ``downsample.{0,1}``, ``fc``) so that ``focus_jax.convert`` maps
a torchvision state dict by name. Convolutions use explicit symmetric padding (``k // 2``) rather
than ``'SAME'``: for stride 2 on even inputs ``'SAME'`` pads asymmetrically and would shift every
feature map by half a pixel relative to PyTorch. :func:`conv` (also used by the UNet and ArcFace)
builds :class:`focus_jax.models.conv.Conv`, ``nnx.Conv``'s parameters with the kernel gradients
of 1x1 and large layers computed as matmuls. Bottleneck blocks stride in the 3x3 convolution
(torchvision's "v1.5"). BatchNorm momentum 0.9 (Flax convention) equals PyTorch's 0.1.

:class:`FaceEncoder` is the ResNet with a zero-initialised linear head whose output is split into
the renderer's :class:`~focus_jax.render.coefficients.Coefficients` by
``coefficients.from_head``, which owns the head layout (``shape | expression | color | pose (6) |
light (27)``, the original order) and the encoder-head scalings of SPEC §2.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from focus_jax.models.conv import Conv
from focus_jax.render import coefficients

# torchvision initialises convolutions with Kaiming-normal (fan out, ReLU gain).
_KAIMING = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

# depth -> (block kind, blocks per stage).
RESNET_LAYERS = {
  18: ("basic", (2, 2, 2, 2)),
  34: ("basic", (3, 4, 6, 3)),
  50: ("bottleneck", (3, 4, 6, 3)),
  101: ("bottleneck", (3, 4, 23, 3)),
  152: ("bottleneck", (3, 8, 36, 3)),
}


def conv(
  in_features: int,
  out_features: int,
  kernel: int,
  stride: int = 1,
  *,
  use_bias: bool = False,
  rngs: nnx.Rngs,
  kernel_init=_KAIMING,
) -> Conv:
  """A ``kernel x kernel`` convolution with PyTorch's symmetric padding ``kernel // 2``.

  ``conv.Conv``: ``nnx.Conv``'s parameters (``kernel`` (k, k, in, out), ``bias``); the kernel
  gradients of 1x1 and large layers are matmuls (XLA:CPU's own are several times slower).
  """
  return Conv(
    in_features,
    out_features,
    kernel,
    stride,
    padding=kernel // 2,
    use_bias=use_bias,
    kernel_init=kernel_init,
    rngs=rngs,
  )


def batch_norm(features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm with PyTorch's defaults (eps 1e-5, momentum 0.1 in PyTorch's convention)."""
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

  expansion = 1

  def __init__(self, in_features: int, planes: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1 = conv(in_features, planes, 3, stride, rngs=rngs)
    self.bn1 = batch_norm(planes, rngs=rngs)
    self.conv2 = conv(planes, planes, 3, rngs=rngs)
    self.bn2 = batch_norm(planes, rngs=rngs)
    self.downsample = _downsample(in_features, planes * self.expansion, stride, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = nnx.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return nnx.relu(out + _shortcut(self.downsample, x))


class Bottleneck(nnx.Module):
  """1x1 - 3x3 (strided) - 1x1 bottleneck with a residual connection (ResNet-50+)."""

  expansion = 4

  def __init__(self, in_features: int, planes: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1 = conv(in_features, planes, 1, rngs=rngs)
    self.bn1 = batch_norm(planes, rngs=rngs)
    self.conv2 = conv(planes, planes, 3, stride, rngs=rngs)
    self.bn2 = batch_norm(planes, rngs=rngs)
    self.conv3 = conv(planes, planes * self.expansion, 1, rngs=rngs)
    self.bn3 = batch_norm(planes * self.expansion, rngs=rngs)
    self.downsample = _downsample(in_features, planes * self.expansion, stride, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = nnx.relu(self.bn1(self.conv1(x)))
    out = nnx.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return nnx.relu(out + _shortcut(self.downsample, x))


def _downsample(in_features: int, out_features: int, stride: int, *, rngs: nnx.Rngs):
  """torchvision's ``downsample = Sequential(conv1x1, BatchNorm)``, or None for identity."""
  if stride == 1 and in_features == out_features:
    return None
  return nnx.List(
    [conv(in_features, out_features, 1, stride, rngs=rngs), batch_norm(out_features, rngs=rngs)]
  )


def _shortcut(downsample, x: jax.Array) -> jax.Array:
  if downsample is None:
    return x
  projection, norm = downsample
  return norm(projection(x))


class ResNet(nnx.Module):
  """torchvision-compatible ResNet.

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    num_classes: size of the final linear layer ``fc``, or None for a feature extractor.
    num_features: channels of the pooled features (2048 for ResNet-50 at width 64).
  """

  def __init__(
    self,
    depth: int = 50,
    num_classes: int | None = 1000,
    *,
    width: int = 64,
    fc_init=None,
    rngs: nnx.Rngs,
  ):
    """Builds the network.

    Args:
      depth: one of ``RESNET_LAYERS``.
      num_classes: output size of ``fc``; None leaves ``fc`` out.
      width: channels of the stem (64 in torchvision; small values for CPU tests).
      fc_init: optional initialiser of both ``fc`` kernel and bias (e.g. zeros for the FOCUS
        head); default is Flax's Linear initialisation.
      rngs: parameter RNGs.
    """
    if depth not in RESNET_LAYERS:
      raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
    kind, layers = RESNET_LAYERS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    self.depth = depth
    self.num_classes = num_classes
    self.conv1 = conv(3, width, 7, 2, rngs=rngs)
    self.bn1 = batch_norm(width, rngs=rngs)
    features = width
    for stage, (count, stride) in enumerate(zip(layers, (1, 2, 2, 2), strict=True)):
      planes = width * 2**stage
      blocks = []
      for i in range(count):
        blocks.append(block(features, planes, stride if i == 0 else 1, rngs=rngs))
        features = planes * block.expansion
      setattr(self, f"layer{stage + 1}", nnx.List(blocks))
    self.num_features = features
    if num_classes is not None:
      init = {} if fc_init is None else {"kernel_init": fc_init, "bias_init": fc_init}
      self.fc = nnx.Linear(features, num_classes, rngs=rngs, **init)

  def features(self, x: jax.Array) -> jax.Array:
    """Globally average-pooled features.

    Args:
      x: ``(B, H, W, 3)`` float32 images (any range; [0, 1] in FOCUS).

    Returns:
      ``(B, num_features)`` float32.
    """
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"ResNet expects NHWC images (B, H, W, 3), got shape {x.shape}")
    x = nnx.relu(self.bn1(self.conv1(x)))
    # PyTorch pads max-pooling with -inf, which reduce_window's padding also does.
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    """``fc(features(x))``: ``(B, num_classes)``, or the features when ``num_classes`` is None."""
    features = self.features(x)
    return features if self.num_classes is None else self.fc(features)


def coefficient_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
  """Sizes of all head groups from the morphable model's ``sizes`` (shape/expression/color).

  ``pose`` (6) and ``light`` (27) are fixed; if present in ``sizes`` they must have these values.
  """
  missing = [k for k in ("shape", "expression", "color") if k not in sizes]
  if missing:
    raise ValueError(f"encoder sizes lack {missing}; got {dict(sizes)}")
  out = {k: int(sizes[k]) for k in ("shape", "expression", "color")}
  for name, fixed in (("pose", coefficients.POSE_SIZE), ("light", coefficients.LIGHT_SIZE)):
    if sizes.get(name, fixed) != fixed:
      raise ValueError(f"encoder size of {name!r} must be {fixed}, got {sizes[name]}")
    out[name] = fixed
  return out


class FaceEncoder(nnx.Module):
  """FOCUS encoder: ResNet backbone + zero-initialised linear head -> renderer coefficients.

  The head is the backbone's ``fc`` (as in the original, which replaced torchvision's ``fc``),
  so a converted original checkpoint keeps its key names under ``backbone``. With the head at
  zero every coefficient is 0: the mean face, frontal, one metre away, ambient light.
  """

  def __init__(
    self,
    sizes: Mapping[str, int],
    depth: int = 50,
    *,
    width: int = 64,
    rngs: nnx.Rngs,
  ):
    """Builds the encoder.

    Args:
      sizes: coefficient counts, at least ``shape``, ``expression``, ``color`` (e.g.
        ``model.sizes`` of the morphable model).
      depth: ResNet depth (FOCUS uses 50).
      width: ResNet stem width (64; small values for CPU tests).
      rngs: parameter RNGs.
    """
    sizes = coefficient_sizes(sizes)
    # A tuple of pairs keeps the group layout static (part of the graphdef, not of the state).
    self.groups = tuple((name, sizes[name]) for name in coefficients.GROUPS)
    self.backbone = ResNet(
      depth,
      num_classes=sum(sizes.values()),
      width=width,
      fc_init=nnx.initializers.zeros_init(),
      rngs=rngs,
    )

  @property
  def sizes(self) -> dict[str, int]:
    return dict(self.groups)

  def raw(self, images: jax.Array) -> jax.Array:
    """Unscaled head output ``(B, sum(sizes))`` float32 for images ``(B, H, W, 3)`` in [0, 1]."""
    return self.backbone(images)

  def __call__(self, images: jax.Array) -> coefficients.Coefficients:
    """Predicts renderer coefficients.

    Args:
      images: ``(B, H, W, 3)`` float32 in [0, 1] (224x224 in FOCUS).

    Returns:
      :class:`~focus_jax.render.coefficients.Coefficients` with fields ``(B, size)`` float32,
      already scaled (SPEC §2): directly the ``coeffs`` of ``pipeline.render_batch``.
    """
    return coefficients.from_head(self.raw(images), self.sizes)
