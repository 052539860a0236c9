"""PyTorch weights -> focus_jax networks (``.npz``): reading ``.pth`` files and mapping their keys.

Usage::

  python -m focus_jax.convert resnet50 resnet50-0676ba61.pth --out resnet50.npz
  python -m focus_jax.convert arcface backbone.pth --out arcface_r50.npz
  python -m focus_jax.convert focus-encoder enc_net_300000.model --out encoder.npz
  python -m focus_jax.convert focus-unet unet_300000.model --out unet.npz

Sources:

- ``resnet50``: a torchvision ResNet state dict (depth and classes inferred from the keys, so
  ResNet-18/34/101/152 work too). For the FOCUS encoder's ImageNet initialisation load it with
  :func:`focus_jax.models.weights.face_encoder_from_imagenet`.
- ``arcface``: an insightface ``arcface_torch`` IResNet state dict (``backbone.pth``).
- ``focus-encoder`` / ``focus-unet``: the original FOCUS checkpoints, which are whole pickled
  PyTorch modules. They are read with a restricted unpickler (:func:`load_pickled_module`):
  tensors are rebuilt by torch, every other class becomes an inert stub that only records its
  state, so neither the original code nor arbitrary pickled callables are needed or executed.

The output is the ``.npz`` format of :mod:`focus_jax.models.weights` (which also loads it, with
numpy and flax only). Layout conversions: conv ``(O, I, kh, kw)`` -> ``(kh, kw, I, O)``, linear
``(O, I)`` -> ``(I, O)``, BatchNorm ``weight/bias/running_mean/running_var`` ->
``scale/bias/mean/var`` (``num_batches_tracked`` dropped). Every mismatch (missing, unexpected
or wrong-shape keys) is reported in one ``ValueError`` listing them.

torch is needed only here, to read ``.pth`` / ``.model`` files (imported lazily).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pickle
import re
import sys
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from focus_jax.models import arcface, resnet, weights
from focus_jax.render import coefficients

KINDS = ("resnet50", "arcface", "focus-encoder", "focus-unet")

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- reading PyTorch


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a plain PyTorch state dict (``torch.load(weights_only=True)``) as float32 NumPy.

  Accepts a bare state dict or one wrapped as ``{'state_dict': ...}`` / ``{'model': ...}``, and
  strips a DataParallel ``module.`` prefix.
  """
  import torch

  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as err:
    raise ValueError(
      f"{path}: not a plain PyTorch state dict ({err}); whole pickled modules (the original "
      "FOCUS .model files) need the focus-encoder / focus-unet kinds"
    ) from err
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state dict (mapping name -> tensor), got {type(obj)}")
  return _to_numpy(obj, path)


def _to_numpy(state: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
  import torch

  out = {}
  for key, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor")
    name = key[len("module.") :] if key.startswith("module.") else key
    value = value.detach().cpu()
    out[name] = value.numpy() if value.dtype == torch.int64 else value.float().numpy()
  return out


class _Stub:
  """Stand-in for any class a restricted unpickle may not import: it only records state."""

  _qualname = "?"

  def __new__(cls, *args, **kwargs):
    del kwargs
    obj = super().__new__(cls)
    obj.__dict__["_stub_args"] = args
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form.
      state = {**(state[0] or {}), **(state[1] or {})}
    self.__dict__["_stub_state"] = state if isinstance(state, dict) else {"_value": state}

  def __repr__(self):
    return f"<stub {self._qualname}>"


_STUBS: dict[tuple[str, str], type] = {}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_SAFE_GLOBALS = {
  ("collections", "OrderedDict"),
  ("torch", "Size"),
  ("torch._utils", "_rebuild_tensor"),
  ("torch._utils", "_rebuild_tensor_v2"),
  ("torch._utils", "_rebuild_tensor_v3"),
  ("torch._utils", "_rebuild_parameter"),
  ("torch._utils", "_rebuild_parameter_with_state"),
  ("copyreg", "_reconstructor"),
} | {
  ("builtins", name)
  for name in ("object", "set", "frozenset", "tuple", "list", "dict", "int", "float", "bool")
  + ("str", "bytes", "bytearray", "complex", "slice", "range")
}


def _stub_class(module: str, name: str) -> type:
  key = (module, name)
  if key not in _STUBS:
    _STUBS[key] = type(name, (_Stub,), {"_qualname": f"{module}.{name}", "__module__": module})
  return _STUBS[key]


class _RestrictedUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    import torch

    # Protocol-2 pickles name Python 2 modules (the base class maps them only in its own lookup).
    module = _PY2_MODULES.get(module, module)
    if (module, name) in _SAFE_GLOBALS:
      return super().find_class(module, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
      return getattr(torch, name)
    return _stub_class(module, name)


def _restricted_pickle_module() -> types.ModuleType:
  """A ``pickle_module`` for ``torch.load`` whose unpickler maps unknown classes to stubs."""
  module = types.ModuleType("focus_jax_restricted_pickle")
  module.Unpickler = _RestrictedUnpickler
  module.load = lambda file, **kw: _RestrictedUnpickler(file, **kw).load()
  module.loads = lambda data, **kw: _RestrictedUnpickler(io.BytesIO(data), **kw).load()
  return module


def load_pickled_module(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Extracts the state dict of a whole pickled ``nn.Module`` without its classes.

  Args:
    path: a file written by ``torch.save(module)`` (e.g. FOCUS ``enc_net_*.model``).

  Returns:
    ``(state_dict, attributes)``: tensors keyed as ``module.state_dict()`` would (parameters
    and persistent buffers, float32 NumPy) and the root module's plain attributes (ints,
    floats, strings), e.g. the original encoder's coefficient indices.
  """
  import torch

  try:
    root = torch.load(
      path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module()
    )
  except Exception as err:
    raise ValueError(f"{path}: cannot read as a pickled PyTorch module: {err}") from err
  if isinstance(root, Mapping):
    raise ValueError(f"{path}: holds a plain state dict; use the resnet50 / arcface kinds")
  if not isinstance(root, _Stub) or "_modules" not in root.__dict__.get("_stub_state", {}):
    raise ValueError(f"{path}: expected a pickled torch.nn.Module, got {root!r}")
  tensors: dict[str, Any] = {}
  _collect(root, "", tensors, path)
  state = root.__dict__["_stub_state"]
  attributes = {
    k: v for k, v in state.items() if not k.startswith("_") and isinstance(v, int | float | str)
  }
  return _to_numpy(tensors, path), attributes


def _collect(node: _Stub, prefix: str, out: dict[str, Any], path: str) -> None:
  state = node.__dict__.get("_stub_state", {})
  skip = set(state.get("_non_persistent_buffers_set") or ())
  for group in ("_parameters", "_buffers"):
    for name, value in (state.get(group) or {}).items():
      if value is not None and name not in skip:
        out[prefix + name] = value
  for name, child in (state.get("_modules") or {}).items():
    if child is None:
      continue
    if not isinstance(child, _Stub):
      raise ValueError(f"{path}: sub-module {prefix + name!r} is an unexpected {type(child)}")
    _collect(child, f"{prefix}{name}.", out, path)


# ---------------------------------------------------------------- architectures and key mapping


def _count_blocks(state: Mapping[str, np.ndarray], stage: int) -> int:
  pattern = re.compile(rf"^layer{stage}\.(\d+)\.")
  indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
  return max(indices) + 1 if indices else 0


def resnet_arch(state: Mapping[str, np.ndarray], source: str) -> dict[str, Any]:
  """Architecture of a torchvision ResNet state dict: ``{'kind', 'depth', 'num_classes'}``."""
  layers = tuple(_count_blocks(state, s) for s in (1, 2, 3, 4))
  kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
  depths = [d for d, spec in resnet.RESNET_LAYERS.items() if spec == (kind, layers)]
  if not depths:
    raise ValueError(f"{source}: {kind} blocks per stage {layers} match no torchvision ResNet")
  depth = depths[0]
  if "conv1.weight" not in state:
    raise ValueError(f"{source}: no 'conv1.weight': not a torchvision ResNet state dict")
  fc = state.get("fc.weight")
  return {
    "kind": "resnet",
    "depth": depth,
    "num_classes": None if fc is None else int(fc.shape[0]),
    "width": int(state["conv1.weight"].shape[0]),
  }


def iresnet_arch(state: Mapping[str, np.ndarray], source: str) -> dict[str, Any]:
  """Architecture of an insightface IResNet state dict."""
  layers = tuple(_count_blocks(state, s) for s in (1, 2, 3, 4))
  depths = {v: k for k, v in arcface.IRESNET_LAYERS.items()}
  if layers not in depths or "prelu.weight" not in state or "fc.weight" not in state:
    raise ValueError(f"{source}: blocks per stage {layers} match no insightface IResNet")
  width = int(state["conv1.weight"].shape[0])
  fc_in = int(state["fc.weight"].shape[1])
  side = int(round((fc_in / (8 * width)) ** 0.5))
  return {
    "kind": "iresnet",
    "depth": depths[layers],
    "width": width,
    "input_size": 16 * side,
    "num_features": int(state["fc.weight"].shape[0]),
  }


_UNET_BLOCK = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2"}


def _rename_focus_unet(key: str) -> str:
  """Original FOCUS UNet key -> focus_jax UNet key (identity when no rule applies)."""
  # Conv{i}.double_conv.[0.]{j}.x: the dropout blocks nest the double conv one level deeper.
  if m := re.match(r"^(Conv|Up_conv)(\d)\.double_conv\.(?:0\.)?(\d)\.(\w+)$", key):
    block = ("enc" if m.group(1) == "Conv" else "dec") + m.group(2)
    return f"{block}.{_UNET_BLOCK.get(m.group(3), m.group(3))}.{m.group(4)}"
  if m := re.match(r"^Up(\d)\.up\.(\d)\.(\w+)$", key):
    return f"up{m.group(1)}.{ {'1': 'conv', '2': 'bn'}.get(m.group(2), m.group(2)) }.{m.group(3)}"
  if m := re.match(r"^Conv\.(\w+)$", key):
    return f"out.{m.group(1)}"
  return key


def _encoder_sizes(attributes: Mapping[str, Any], fc_rows: int, source: str) -> dict[str, int]:
  """Coefficient sizes of an original FaceEncoder from its pickled index attributes."""
  try:
    shape, exp, color = (int(attributes[k]) for k in ("shape_idx", "exp_idx", "color_idx"))
    sizes = {"shape": shape, "expression": exp - shape, "color": color - exp}
  except KeyError:
    # Without the indices assume the BFM split of SPEC §1 (80 / 64 / 80).
    sizes = {"shape": 80, "expression": 64, "color": 80}
    _log.warning("%s: no coefficient indices in the pickle; assuming %s", source, sizes)
  total = sum(sizes.values()) + coefficients.POSE_SIZE + coefficients.LIGHT_SIZE
  if total != fc_rows:
    raise ValueError(f"{source}: head has {fc_rows} outputs but sizes {sizes} (+6+27) need {total}")
  return sizes


def convert_state_dict(
  kind: str,
  state: Mapping[str, np.ndarray],
  attributes: Mapping[str, Any] | None = None,
  source: str = "<state dict>",
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Converts a PyTorch state dict of one of ``KINDS`` into focus_jax variables.

  Args:
    kind: one of ``KINDS``.
    state: name -> float32 array (PyTorch layouts and names).
    attributes: plain attributes of a pickled original module (focus-encoder sizes).
    source: name used in error messages.

  Returns:
    ``(arch, params)``: the ``__arch__`` record and flat name -> array in Flax layouts.
  """
  if kind == "resnet50":
    arch = resnet_arch(state, source)
  elif kind == "arcface":
    arch = iresnet_arch(state, source)
  elif kind == "focus-encoder":
    inner = {k[len("vgg.") :]: v for k, v in state.items() if k.startswith("vgg.")}
    if not inner:
      raise ValueError(f"{source}: no 'vgg.*' keys: not an original FOCUS FaceEncoder")
    backbone = resnet_arch(inner, source)
    sizes = _encoder_sizes(attributes or {}, backbone["num_classes"] or 0, source)
    arch = {"kind": "face_encoder", "depth": backbone["depth"], "width": backbone["width"]}
    arch["sizes"] = sizes
    state = {f"backbone.{k}": v for k, v in inner.items()}
  elif kind == "focus-unet":
    if "Conv1.double_conv.0.weight" not in state:
      raise ValueError(f"{source}: no 'Conv1.double_conv.0.weight': not an original FOCUS UNet")
    weight = state["Conv1.double_conv.0.weight"]
    arch = {"kind": "unet", "base": int(weight.shape[0]), "in_features": int(weight.shape[1])}
    state = {_rename_focus_unet(k): v for k, v in state.items()}
  else:
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
  target = nnx.eval_shape(lambda: weights.build_module(arch))
  return arch, torch_to_flax(state, target, source)


def torch_to_flax(
  state: Mapping[str, np.ndarray], module: nnx.Module, source: str = "<state dict>"
) -> dict[str, np.ndarray]:
  """Maps PyTorch names/layouts onto the variables of ``module`` (same module paths).

  Args:
    state: PyTorch-style ``module.path.{weight,bias,running_mean,running_var}`` -> array.
    module: the target network (may be abstract, from ``nnx.eval_shape``).
    source: name used in error messages.

  Returns:
    Flat Flax name -> array, complete and shape-checked.

  Raises:
    ValueError: listing unexpected, missing and mis-shaped keys.
  """
  target = {k: tuple(v.shape) for k, v in weights.flat_variables(module).items()}
  out, unexpected = {}, []
  for key, value in state.items():
    prefix, _, leaf = key.rpartition(".")
    if leaf == "num_batches_tracked":
      continue
    name = {"running_mean": "mean", "running_var": "var", "bias": "bias"}.get(leaf)
    if leaf == "weight":
      for candidate in ("kernel", "scale", "weight"):
        if f"{prefix}.{candidate}" in target:
          name = candidate
          break
    flax_key = f"{prefix}.{name}"
    if name is None or flax_key not in target:
      unexpected.append(key)
      continue
    if name == "kernel":
      # conv (O, I, kh, kw) -> (kh, kw, I, O); linear (O, I) -> (I, O).
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    out[flax_key] = np.ascontiguousarray(value, dtype=np.float32)
  weights.check_keys(target, out, unexpected, source)
  return out


def convert_file(kind: str, source: str, out: str) -> dict[str, Any]:
  """Converts one PyTorch file of ``kind`` and writes ``out`` (.npz); returns the arch record."""
  if not os.path.isfile(source):
    raise ValueError(f"{source}: no such file")
  if kind in ("focus-encoder", "focus-unet"):
    state, attributes = load_pickled_module(source)
  else:
    state, attributes = load_torch_state_dict(source), {}
  arch, params = convert_state_dict(kind, state, attributes, source)
  weights.save_params(out, params, arch)
  return arch


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m focus_jax.convert", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("kind", choices=KINDS, help="what the source file holds")
  parser.add_argument("source", help="PyTorch .pth state dict or pickled FOCUS .model")
  parser.add_argument("--out", required=True, help="output .npz")
  args = parser.parse_args(argv)
  try:
    arch = convert_file(args.kind, args.source, args.out)
  except ValueError as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  print(f"wrote {args.out}: {json.dumps(arch)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
