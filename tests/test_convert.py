"""PyTorch -> focus_jax weight conversion, checked against PyTorch reference networks.

The reference networks below are written here from the published architectures (torchvision
ResNet, insightface arcface_torch IResNet, the FOCUS UNet and encoder wrapper) with their key
names; all weights and BatchNorm statistics are randomised, converted, and the eval-mode outputs
compared. Tolerance 1e-4 absolute (float32, outputs of order 1).
"""

import json
import logging
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from focus_jax import convert
from focus_jax.models import arcface, resnet, weights

torch = pytest.importorskip("torch")
nn = torch.nn

ATOL = 1e-4

# Source of the PyTorch reference networks. It is executed into throw-away modules so that the
# FOCUS checkpoints can be pickled as whole modules whose classes then disappear (as for a user
# without the original code).
REFERENCE_SOURCE = """
import torch
from torch import nn


def _downsample(inplanes, planes, stride):
  if stride == 1 and inplanes == planes:
    return None
  return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = _downsample(inplanes, planes, stride)

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = _downsample(inplanes, planes * 4, stride)

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class ResNet(nn.Module):
  def __init__(self, block, layers, num_classes=1000, width=64):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = width
    for i, (count, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
      blocks = []
      for j in range(count):
        blocks.append(block(inplanes, width * 2**i, stride if j == 0 else 1))
        inplanes = width * 2**i * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(inplanes, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


class IBasicBlock(nn.Module):
  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
    self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
    self.prelu = nn.PReLU(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
    self.downsample = _downsample(inplanes, planes, stride)

  def forward(self, x):
    out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    identity = x if self.downsample is None else self.downsample(x)
    return out + identity


class IResNet(nn.Module):
  def __init__(self, layers, width=64, input_size=112, num_features=512):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width, eps=1e-05)
    self.prelu = nn.PReLU(width)
    inplanes = width
    for i, count in enumerate(layers):
      blocks = []
      for j in range(count):
        blocks.append(IBasicBlock(inplanes, width * 2**i, 2 if j == 0 else 1))
        inplanes = width * 2**i
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-05)
    self.dropout = nn.Dropout(p=0.0)
    self.fc = nn.Linear(inplanes * (input_size // 16) ** 2, num_features)
    self.features = nn.BatchNorm1d(num_features, eps=1e-05)

  def forward(self, x, shallow=False):
    x = self.layer1(self.prelu(self.bn1(self.conv1(x))))
    if shallow:
      return x
    x = self.bn2(self.layer4(self.layer3(self.layer2(x))))
    return self.features(self.fc(self.dropout(torch.flatten(x, 1))))


class conv_block(nn.Module):
  def __init__(self, in_ch, out_ch, is_dropout=False):
    super().__init__()
    self.double_conv = nn.Sequential(
      nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=True), nn.BatchNorm2d(out_ch), nn.ReLU(),
      nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=True), nn.BatchNorm2d(out_ch), nn.ReLU())
    if is_dropout:
      self.double_conv = nn.Sequential(self.double_conv, nn.Dropout(p=0.5))

  def forward(self, x):
    return self.double_conv(x)


class up_conv(nn.Module):
  def __init__(self, in_ch, out_ch):
    super().__init__()
    self.up = nn.Sequential(
      nn.Upsample(scale_factor=2), nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=True),
      nn.BatchNorm2d(out_ch), nn.ReLU())

  def forward(self, x):
    return self.up(x)


class UNet(nn.Module):
  def __init__(self, n1=64, in_ch=6):
    super().__init__()
    f = [n1 * 2**i for i in range(5)]
    for i in range(1, 5):
      setattr(self, f"Maxpool{i}", nn.MaxPool2d(2, 2))
    self.Conv1 = conv_block(in_ch, f[0])
    self.Conv2 = conv_block(f[0], f[1])
    self.Conv3 = conv_block(f[1], f[2])
    self.Conv4 = conv_block(f[2], f[3], is_dropout=True)
    self.Conv5 = conv_block(f[3], f[4], is_dropout=True)
    for i in (5, 4, 3, 2):
      setattr(self, f"Up{i}", up_conv(f[i - 1], f[i - 2]))
      setattr(self, f"Up_conv{i}", conv_block(f[i - 1], f[i - 2]))
    self.Conv = nn.Conv2d(f[0], 1, 1, 1, 0)
    self.active = nn.Sigmoid()

  def forward(self, x):
    e1 = self.Conv1(x)
    e2 = self.Conv2(self.Maxpool1(e1))
    e3 = self.Conv3(self.Maxpool2(e2))
    e4 = self.Conv4(self.Maxpool3(e3))
    e5 = self.Conv5(self.Maxpool4(e4))
    d = self.Up_conv5(torch.cat((e4, self.Up5(e5)), 1))
    d = self.Up_conv4(torch.cat((e3, self.Up4(d)), 1))
    d = self.Up_conv3(torch.cat((e2, self.Up3(d)), 1))
    d = self.Up_conv2(torch.cat((e1, self.Up2(d)), 1))
    return self.active(self.Conv(d) * 5)


class FaceEncoder(nn.Module):
  def __init__(self, sizes, layers=(2, 2, 2, 2), width=64):
    super().__init__()
    total = sum(sizes) + 33
    self.vgg = ResNet(BasicBlock, layers, total, width)
    self.shape_idx = sizes[0]
    self.exp_idx = sizes[0] + sizes[1]
    self.color_idx = sum(sizes)
    self.camera_idx = self.color_idx + 6
    self.light_idx = self.camera_idx + 27

  def forward(self, x):
    return self.vgg(x)
"""


def _reference_module(name: str) -> types.ModuleType:
  module = types.ModuleType(name)
  exec(compile(REFERENCE_SOURCE, f"<{name}>", "exec"), module.__dict__)
  return module


ref = _reference_module("focus_jax_test_reference")


def _randomise(net: "torch.nn.Module", seed: int) -> "torch.nn.Module":
  """Random weights (fan-in scaled), biases, PReLU slopes and BatchNorm statistics; eval mode."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in net.parameters():
      if p.ndim > 1:
        p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
      else:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        m.num_batches_tracked.fill_(7)
      if isinstance(m, nn.PReLU):
        m.weight.copy_(0.25 + 0.1 * torch.randn(m.weight.shape, generator=gen))
  return net.eval()


def _state(net) -> dict:
  return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def _images(shape, seed) -> np.ndarray:
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _torch_nchw(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@nnx.jit
def _apply(module, *args):
  return module(*args)


def test_resnet50_matches_torchvision_layout():
  net = _randomise(ref.ResNet(ref.Bottleneck, (3, 4, 6, 3), num_classes=1000), seed=0)
  images = _images((2, 64, 64, 3), 1)
  with torch.no_grad():
    expected = net(_torch_nchw(images)).numpy()
  arch, params = convert.convert_state_dict("resnet50", _state(net))
  assert arch == {"kind": "resnet", "depth": 50, "num_classes": 1000, "width": 64}
  module = weights.build_module(arch, params)
  module.eval()
  got = np.asarray(_apply(module, jnp.asarray(images)))
  assert np.abs(expected).max() > 0.1  # The comparison is not against a vanishing signal.
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_iresnet50_deep_and_shallow_match_arcface_torch():
  net = _randomise(ref.IResNet((3, 4, 14, 3)), seed=2)
  images = _images((1, 112, 112, 3), 3)
  with torch.no_grad():
    x = _torch_nchw(2 * images - 1)  # The wrapper of the original scales before the network.
    deep = net(x)
    deep = (deep / deep.norm(dim=-1, keepdim=True)).numpy()
    shallow = net(x, shallow=True).numpy().transpose(0, 2, 3, 1)
  arch, params = convert.convert_state_dict("arcface", _state(net))
  assert arch["depth"] == 50 and arch["input_size"] == 112
  module = weights.build_module(arch, params)
  module.eval()
  got = _apply(module, jnp.asarray(images))
  assert got.shallow.shape == (1, 56, 56, 64)
  np.testing.assert_allclose(np.asarray(got.shallow), shallow, atol=ATOL, rtol=0)
  np.testing.assert_allclose(np.asarray(got.deep), deep, atol=ATOL, rtol=0)


def _pickle_and_forget(build, path: str, module_name: str):
  """Builds a reference network in a throw-away module, pickles it whole, forgets the module."""
  origin = _reference_module(module_name)
  sys.modules[module_name] = origin
  try:
    net = build(origin)
    torch.save(net, path)
  finally:
    del sys.modules[module_name]
  with pytest.raises(ModuleNotFoundError):  # The original classes are gone.
    torch.load(path, weights_only=False)
  return net


def test_focus_unet_pickled_module_converts(tmp_path):
  src, out = str(tmp_path / "unet_000100.model"), str(tmp_path / "unet.npz")
  net = _pickle_and_forget(
    lambda m: _randomise(m.UNet(n1=4), seed=4), src, "focus_original_unet_module"
  )
  arch = convert.convert_file("focus-unet", src, out)
  assert arch == {"kind": "unet", "base": 4, "in_features": 6}
  module = weights.load_module(out)
  module.eval()
  render, image = _images((2, 32, 32, 3), 5), _images((2, 32, 32, 3), 6)
  with torch.no_grad():
    expected = net(_torch_nchw(np.concatenate([render, image], -1))).numpy()
  got = np.asarray(_apply(module, jnp.asarray(render), jnp.asarray(image)))
  np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1), atol=ATOL, rtol=0)
  assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_focus_encoder_pickled_module_converts(tmp_path):
  src, out = str(tmp_path / "enc_net_000100.model"), str(tmp_path / "encoder.npz")
  sizes = (10, 5, 8)
  net = _pickle_and_forget(
    lambda m: _randomise(m.FaceEncoder(sizes, width=16), seed=7), src, "focus_original_encoder"
  )
  state, attributes = convert.load_pickled_module(src)
  assert set(state) == set(net.state_dict())
  assert attributes["shape_idx"] == 10 and attributes["color_idx"] == 23
  arch = convert.convert_file("focus-encoder", src, out)
  assert arch["sizes"] == {"shape": 10, "expression": 5, "color": 8}
  assert arch["depth"] == 18 and arch["width"] == 16
  module = weights.load_module(out)
  module.eval()
  images = _images((2, 64, 64, 3), 8)
  with torch.no_grad():
    raw = net(_torch_nchw(images)).numpy()
  got = _apply(module, jnp.asarray(images))
  np.testing.assert_allclose(np.asarray(got.shape), raw[:, :10], atol=ATOL, rtol=0)
  np.testing.assert_allclose(np.asarray(got.color), 3 * raw[:, 15:23], atol=3 * ATOL, rtol=0)
  pose_scale = np.array([0.3, 0.3, 0.3, 1, 1, 0.005], np.float32)
  np.testing.assert_allclose(np.asarray(got.pose), pose_scale * raw[:, 23:29], atol=ATOL)
  np.testing.assert_allclose(np.asarray(got.light), raw[:, 29:], atol=ATOL, rtol=0)


def test_restricted_unpickler_executes_nothing(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("touch " + str(tmp_path / "pwned"),))

  module = nn.Sequential(nn.Linear(2, 2))
  module.payload = Evil()
  path = str(tmp_path / "evil.model")
  torch.save(module, path)
  state, _ = convert.load_pickled_module(path)
  assert set(state) == {"0.weight", "0.bias"}
  assert not os.path.exists(tmp_path / "pwned")


def test_mismatches_are_listed():
  net = _randomise(ref.ResNet(ref.BasicBlock, (2, 2, 2, 2), num_classes=5, width=8), seed=9)
  state = _state(net)
  del state["layer1.0.bn1.running_var"]
  state["extra.weight"] = np.zeros(3, np.float32)
  state["fc.bias"] = np.zeros(6, np.float32)
  with pytest.raises(ValueError) as err:
    convert.convert_state_dict("resnet50", state, source="bad.pth")
  message = str(err.value)
  for fragment in ("bad.pth", "unexpected keys: extra.weight", "missing keys: layer1.0.bn1.var"):
    assert fragment in message
  assert "fc.bias: got (6,), expected (5,)" in message


def test_cli_roundtrip_and_load_params(tmp_path):
  net = _randomise(ref.ResNet(ref.BasicBlock, (2, 2, 2, 2), num_classes=5, width=8), seed=10)
  src, out = str(tmp_path / "r18.pth"), str(tmp_path / "sub" / "r18.npz")
  torch.save(net.state_dict(), src)
  assert convert.main(["resnet50", src, "--out", out]) == 0
  arch, params = weights.read_params(out)
  assert arch["depth"] == 18 and params["conv1.kernel"].shape == (7, 7, 3, 8)
  # Loading into a freshly initialised module (rbg keys: far cheaper to compile on CPU).
  module = resnet.ResNet(18, 5, width=8, rngs=nnx.Rngs(jax.random.key(1, impl="rbg")))
  assert weights.load_params(module, out) == arch
  module.eval()
  images = _images((1, 32, 32, 3), 11)
  with torch.no_grad():
    expected = net(_torch_nchw(images)).numpy()
  np.testing.assert_allclose(np.asarray(_apply(module, images)), expected, atol=ATOL, rtol=0)
  # The FOCUS encoder: ImageNet backbone, zero head.
  encoder = weights.face_encoder_from_imagenet({"shape": 4, "expression": 3, "color": 4}, out)
  np.testing.assert_array_equal(encoder.backbone.conv1.kernel[...], params["conv1.kernel"])
  assert encoder.backbone.fc.kernel.shape == (64, 44) and not np.any(
    encoder.backbone.fc.kernel[...]
  )
  wrong = nnx.eval_shape(lambda: resnet.ResNet(18, 5, width=16, rngs=nnx.Rngs(1)))
  with pytest.raises(ValueError, match=r"shape mismatches: .*conv1.kernel: got \(7, 7, 3, 8\)"):
    weights.load_params(wrong, out)
  assert convert.main(["arcface", src, "--out", str(tmp_path / "x.npz")]) == 1


def test_load_arcface_weights_npz_and_pth(tmp_path, caplog):
  net = _randomise(ref.IResNet((2, 2, 2, 2), width=8, input_size=32), seed=12)
  pth = str(tmp_path / "backbone.pth")
  torch.save(net.state_dict(), pth)
  npz = str(tmp_path / "arcface.npz")
  assert convert.main(["arcface", pth, "--out", npz]) == 0
  images = _images((1, 32, 32, 3), 13)
  with torch.no_grad():
    deep = net(_torch_nchw(2 * images - 1))
    deep = (deep / deep.norm(dim=-1, keepdim=True)).numpy()
  with caplog.at_level(logging.WARNING):
    network, record = weights.load_arcface_or_none(npz)
    assert isinstance(network, arcface.IResNet)
    assert record == {k: f"enabled: {npz}" for k in ("perceptual", "preserve", "dist")}
    got = _apply(network, jnp.asarray(images))  # Loaded in eval mode.
    np.testing.assert_allclose(np.asarray(got.deep), deep, atol=ATOL, rtol=0)
  assert not caplog.records
  with pytest.raises(ValueError, match="a PyTorch file; convert it once"):
    weights.load_arcface_or_none(pth)
  bad = str(tmp_path / "unet.npz")
  weights.save_params(bad, {}, {"kind": "unet", "base": 4})
  with pytest.raises(ValueError, match="expected ArcFace"):
    weights.load_arcface_or_none(bad)


def test_npz_arch_record_is_json(tmp_path):
  path = str(tmp_path / "p.npz")
  weights.save_params(path, {"a.kernel": np.ones((2, 2), np.float32)}, {"kind": "resnet"})
  with np.load(path, allow_pickle=False) as data:
    assert json.loads(str(data["__arch__"])) == {"kind": "resnet"}
  (tmp_path / "junk.npz").write_text("junk")
  with pytest.raises(ValueError, match="not a focus_jax weights"):
    weights.read_params(str(tmp_path / "junk.npz"))
