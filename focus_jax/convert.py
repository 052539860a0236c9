"""PyTorch weights -> focus_jax networks (``.npz``), and loading them into NNX modules.

Usage::

  python -m focus_jax.convert resnet50 resnet50-0676ba61.pth --out resnet50.npz
  python -m focus_jax.convert arcface backbone.pth --out arcface_r50.npz
  python -m focus_jax.convert focus-encoder enc_net_300000.model --out encoder.npz
  python -m focus_jax.convert focus-unet unet_300000.model --out unet.npz

Sources:

- ``resnet50``: a torchvision ResNet state dict (depth and classes inferred from the keys, so
  ResNet-18/34/101/152 work too). For the FOCUS encoder's ImageNet initialisation load it with
  ``load_params(encoder.backbone, path, ignore=('fc.',))``.
- ``arcface``: an insightface ``arcface_torch`` IResNet state dict (``backbone.pth``).
- ``focus-encoder`` / ``focus-unet``: the original FOCUS checkpoints, which are whole pickled
  PyTorch modules. They are read with a restricted unpickler (:func:`load_pickled_module`):
  tensors are rebuilt by torch, every other class becomes an inert stub that only records its
  state, so neither the original code nor arbitrary pickled callables are needed or executed.

Output ``.npz`` format: one array per variable, keyed by the module path joined with ``.`` and
the Flax variable name (``layer1.0.conv1.kernel``, ``bn1.mean``...), parameters and BatchNorm
statistics together, plus ``__arch__``: a JSON string describing the network
(:func:`build_module` rebuilds it). Layout conversions: conv ``(O, I, kh, kw)`` -> ``(kh, kw,
I, O)``, linear ``(O, I)`` -> ``(I, O)``, BatchNorm ``weight/bias/running_mean/running_var`` ->
``scale/bias/mean/var`` (``num_batches_tracked`` dropped). Every mismatch (missing, unexpected
or wrong-shape keys) is reported in one ``ValueError`` listing them.

torch is needed only to read ``.pth`` / ``.model`` files (imported lazily); loading ``.npz``
needs numpy and flax only.
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
import tempfile
import types
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from focus_jax.models import arcface, resnet, unet

KINDS = ("resnet50", "arcface", "focus-encoder", "focus-unet")
ARCH_KEY = "__arch__"
# At most this many names per category in error messages.
_LIST_LIMIT = 20

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


def _construct(arch: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
  kind = arch.get("kind")
  if kind == "resnet":
    return resnet.ResNet(arch["depth"], arch["num_classes"], width=arch.get("width", 64), rngs=rngs)
  if kind == "face_encoder":
    return resnet.FaceEncoder(arch["sizes"], arch["depth"], width=arch.get("width", 64), rngs=rngs)
  if kind == "iresnet":
    return arcface.IResNet(
      arch["depth"],
      input_size=arch.get("input_size", arcface.INPUT_SIZE),
      width=arch.get("width", 64),
      num_features=arch.get("num_features", arcface.EMBEDDING_SIZE),
      rngs=rngs,
    )
  if kind == "unet":
    return unet.UNet(arch["base"], in_features=arch.get("in_features", 6), rngs=rngs)
  raise ValueError(f"unknown architecture record {dict(arch)}")


def build_module(
  arch: Mapping[str, Any],
  params: Mapping[str, np.ndarray] | None = None,
  *,
  rngs: nnx.Rngs | None = None,
  source: str = "<params>",
) -> nnx.Module:
  """Builds the network described by an ``__arch__`` record.

  Args:
    arch: the record (see :func:`convert_state_dict`).
    params: flat Flax name -> array. When given, the module is built abstractly and filled with
      them, skipping random initialisation (tens of seconds for ResNet-50 on a CPU).
    rngs: initialisation RNGs when ``params`` is None.
    source: name used in error messages.

  Returns:
    The module (training mode; call ``.eval()`` for inference).
  """
  if params is None:
    return _construct(arch, rngs or nnx.Rngs(0))
  abstract = nnx.eval_shape(lambda: _construct(arch, nnx.Rngs(0)))
  target = {k: tuple(v.shape) for k, v in _flat_variables(abstract).items()}
  _check_keys(target, params, [k for k in params if k not in target], source)
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  values = {}
  for path, var in flat:
    key = ".".join(str(p) for p in path)
    if key not in params:
      raise ValueError(f"{source}: {key} holds non-parameter state that a file cannot fill")
    values[path] = var.replace(jax.numpy.asarray(params[key], var.dtype))
  return nnx.merge(graphdef, nnx.from_flat_state(values))


def face_encoder_from_imagenet(sizes: Mapping[str, int], path: str) -> resnet.FaceEncoder:
  """The FOCUS encoder initialised as the original: ImageNet backbone, zero head.

  Args:
    sizes: coefficient counts (``model.sizes`` of the morphable model).
    path: ``.npz`` converted from a torchvision ResNet (``resnet50`` kind); its ``fc`` is
      dropped.

  Returns:
    A :class:`~focus_jax.models.resnet.FaceEncoder` (training mode), built without random
    initialisation.
  """
  arch, params = read_params(path)
  if arch.get("kind") != "resnet":
    raise ValueError(f"{path}: holds a {arch.get('kind')!r} network, expected a ResNet")
  sizes = resnet.coefficient_sizes(sizes)
  abstract = nnx.eval_shape(
    lambda: resnet.FaceEncoder(sizes, arch["depth"], width=arch["width"], rngs=nnx.Rngs(0))
  )
  features = abstract.backbone.num_features
  total = sum(sizes.values())
  head = {
    "backbone.fc.kernel": np.zeros((features, total), np.float32),
    "backbone.fc.bias": np.zeros((total,), np.float32),
  }
  backbone = {f"backbone.{k}": v for k, v in params.items() if not k.startswith("fc.")}
  encoder_arch = {"kind": "face_encoder", "depth": arch["depth"], "width": arch["width"]}
  return build_module({**encoder_arch, "sizes": sizes}, {**backbone, **head}, source=path)


def load_module(path: str) -> nnx.Module:
  """Builds the network stored in a converted ``.npz`` with its weights (training mode)."""
  arch, params = read_params(path)
  return build_module(arch, params, source=path)


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
  total = sum(sizes.values()) + resnet.POSE_SIZE + resnet.LIGHT_SIZE
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
  target = nnx.eval_shape(lambda: build_module(arch))
  return arch, torch_to_flax(state, target, source)


def _flat_variables(module: nnx.Module) -> dict[str, nnx.Variable]:
  flat = nnx.to_flat_state(nnx.state(module, (nnx.Param, nnx.BatchStat)))
  return {".".join(str(p) for p in path): var for path, var in flat}


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
  target = {k: tuple(v.shape) for k, v in _flat_variables(module).items()}
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
  _check_keys(target, out, unexpected, source)
  return out


def _check_keys(
  target: Mapping[str, tuple[int, ...]],
  params: Mapping[str, np.ndarray],
  unexpected: Iterable[str],
  source: str,
) -> None:
  unexpected = sorted(unexpected)
  missing = sorted(set(target) - set(params))
  shapes = [
    f"{k}: got {tuple(v.shape)}, expected {target[k]}"
    for k, v in sorted(params.items())
    if k in target and tuple(v.shape) != target[k]
  ]
  problems = []
  for title, items in (("unexpected keys", unexpected), ("missing keys", missing)):
    if items:
      problems.append(f"{len(items)} {title}: {_short(items)}")
  if shapes:
    problems.append(f"{len(shapes)} shape mismatches: {_short(shapes)}")
  if problems:
    raise ValueError(f"{source}: weights do not fit the network; " + "; ".join(problems))


def _short(items: list[str]) -> str:
  more = f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else ""
  return ", ".join(items[:_LIST_LIMIT]) + more


# ------------------------------------------------------------------------- .npz save and load


def save_params(path: str, params: Mapping[str, np.ndarray], arch: Mapping[str, Any]) -> None:
  """Writes ``params`` and the ``__arch__`` record to ``path`` (.npz) atomically."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **{ARCH_KEY: np.array(json.dumps(dict(arch)))}, **params)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_params(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Reads ``(arch, params)`` from a ``.npz`` written by :func:`save_params`."""
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except (OSError, ValueError) as err:
    raise ValueError(f"{path}: not a focus_jax weights .npz ({err})") from err
  if ARCH_KEY not in arrays:
    raise ValueError(f"{path}: missing the {ARCH_KEY!r} record (not written by focus_jax)")
  return json.loads(str(arrays.pop(ARCH_KEY))), arrays


def assign_params(
  module: nnx.Module,
  params: Mapping[str, np.ndarray],
  *,
  ignore: Iterable[str] = (),
  source: str = "<params>",
) -> None:
  """Writes flat ``params`` (Flax names) into ``module``'s parameters and BatchNorm stats.

  Args:
    module: the network to update in place.
    params: flat name -> array, e.g. from :func:`read_params`.
    ignore: name prefixes skipped on both sides (e.g. ``('fc.',)`` to keep a new head).
    source: name used in error messages.

  Raises:
    ValueError: listing unexpected, missing and mis-shaped keys (nothing is written then).
  """
  ignore = tuple(ignore)
  variables = {k: v for k, v in _flat_variables(module).items() if not k.startswith(ignore)}
  params = {k: v for k, v in params.items() if not k.startswith(ignore)}
  target = {k: tuple(v.shape) for k, v in variables.items()}
  _check_keys(target, params, [k for k in params if k not in target], source)
  flat = nnx.to_flat_state(nnx.state(module, (nnx.Param, nnx.BatchStat)))
  updates = {
    path: var.replace(jax.numpy.asarray(params[key], var.dtype))
    for path, var in flat
    if (key := ".".join(str(p) for p in path)) in params
  }
  nnx.update(module, nnx.from_flat_state(updates))


def load_params(module: nnx.Module, path: str, *, ignore: Iterable[str] = ()) -> dict[str, Any]:
  """Loads a converted ``.npz`` into ``module`` in place; returns its ``__arch__`` record.

  Args:
    module: network whose structure matches the file (see :func:`build_module`).
    path: ``.npz`` from :func:`save_params` / the CLI.
    ignore: name prefixes to skip (e.g. ``('fc.',)``: ImageNet ResNet into the FOCUS encoder's
      backbone, whose zero head is kept).
  """
  arch, params = read_params(path)
  assign_params(module, params, ignore=ignore, source=path)
  return arch


def convert_file(kind: str, source: str, out: str) -> dict[str, Any]:
  """Converts one PyTorch file of ``kind`` and writes ``out`` (.npz); returns the arch record."""
  if not os.path.isfile(source):
    raise ValueError(f"{source}: no such file")
  if kind in ("focus-encoder", "focus-unet"):
    state, attributes = load_pickled_module(source)
  else:
    state, attributes = load_torch_state_dict(source), {}
  arch, params = convert_state_dict(kind, state, attributes, source)
  save_params(out, params, arch)
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
