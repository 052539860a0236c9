"""The ``.npz`` weight format of focus_jax networks: save, read, load, and rebuild a network.

File format: one array per variable, keyed by the module path joined with ``.`` and the Flax
variable name (``layer1.0.conv1.kernel``, ``bn1.mean``...), parameters and BatchNorm statistics
together, in Flax layouts (conv ``(kh, kw, I, O)``, linear ``(I, O)``), plus ``__arch__``: a JSON
string describing the network, e.g. ``{"kind": "resnet", "depth": 50, "num_classes": 1000,
"width": 64}`` (:func:`build_module` rebuilds it). Kinds: ``resnet``, ``face_encoder``,
``iresnet``, ``unet``. Every mismatch (missing, unexpected or wrong-shape keys) is reported in one
``ValueError`` listing them.

Needs numpy and flax only; ``focus_jax.convert`` writes these files from PyTorch checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from focus_jax import files
from focus_jax.models import arcface, resnet, unet

ARCH_KEY = "__arch__"
# At most this many names per category in error messages.
_LIST_LIMIT = 20


# ------------------------------------------------------------------------- flat variables


def flat_variables(module: nnx.Module) -> dict[str, nnx.Variable]:
  """Parameters and BatchNorm statistics of ``module`` keyed by their ``.``-joined path."""
  flat = nnx.to_flat_state(nnx.state(module, (nnx.Param, nnx.BatchStat)))
  return {".".join(str(p) for p in path): var for path, var in flat}


def check_keys(
  target: Mapping[str, tuple[int, ...]],
  params: Mapping[str, np.ndarray],
  unexpected: Iterable[str],
  source: str,
) -> None:
  """Raises one ``ValueError`` listing unexpected, missing and mis-shaped keys, if any.

  Args:
    target: the network's flat name -> shape.
    params: flat name -> array offered for it.
    unexpected: names in ``params`` (or the source) that the network does not have.
    source: name used in the message (usually the file).
  """
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


# ------------------------------------------------------------------------- building networks


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
    arch: the record (see the module docstring).
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
  target = {k: tuple(v.shape) for k, v in flat_variables(abstract).items()}
  check_keys(target, params, [k for k in params if k not in target], source)
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


# ------------------------------------------------------------------------- .npz save and load


def save_params(path: str, params: Mapping[str, np.ndarray], arch: Mapping[str, Any]) -> None:
  """Writes ``params`` and the ``__arch__`` record to ``path`` (.npz) atomically."""
  files.save_npz(path, {ARCH_KEY: np.array(json.dumps(dict(arch))), **params})


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
  variables = {k: v for k, v in flat_variables(module).items() if not k.startswith(ignore)}
  params = {k: v for k, v in params.items() if not k.startswith(ignore)}
  target = {k: tuple(v.shape) for k, v in variables.items()}
  check_keys(target, params, [k for k in params if k not in target], source)
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
    path: ``.npz`` from :func:`save_params` / the ``focus_jax.convert`` CLI.
    ignore: name prefixes to skip (e.g. ``('fc.',)``: ImageNet ResNet into the FOCUS encoder's
      backbone, whose zero head is kept).
  """
  arch, params = read_params(path)
  assign_params(module, params, ignore=ignore, source=path)
  return arch


_ARCFACE_WARNED: set[str] = set()


def load_arcface_or_none(path: str | None) -> tuple[arcface.IResNet | None, dict[str, str]]:
  """Loads frozen ArcFace weights, or disables the ArcFace losses when there are none.

  Args:
    path: a ``.npz`` written by ``python -m focus_jax.convert arcface backbone.pth --out X.npz``;
      None or '' when not configured.

  Returns:
    ``(network in eval mode, record)`` with record ``{loss: 'enabled: <path>'}``, or
    ``(None, record)`` with record ``{loss: 'disabled: <reason>'}`` for the perceptual, preserve
    and dist losses after a warning (once per reason and process; later calls log at DEBUG).
    Never a randomly initialised network.

  Raises:
    ValueError: the file exists but does not hold IResNet weights, or is a PyTorch file (those
      are converted once with ``python -m focus_jax.convert``, which needs torch).
  """
  if not path:
    reason = "no ArcFace weights configured"
  elif not os.path.exists(path):
    reason = f"ArcFace weights not found at {path}"
  else:
    if path.endswith((".pth", ".pt")):
      raise ValueError(
        f"{path}: a PyTorch file; convert it once with `python -m focus_jax.convert arcface "
        f"{path} --out arcface.npz` and set config.arcface.weights to the .npz"
      )
    arch, params = read_params(path)
    if arch.get("kind") != "iresnet":
      raise ValueError(f"{path}: holds a {arch.get('kind')!r} network, expected ArcFace iresnet")
    network = build_module(arch, params, source=path)
    network.eval()
    return network, {name: f"enabled: {path}" for name in arcface.ARCFACE_LOSSES}
  # One warning per reason and process: a chain of stages would otherwise repeat it per stage.
  log = logging.getLogger(__name__)
  (log.debug if reason in _ARCFACE_WARNED else log.warning)(
    "%s: the ArcFace losses (%s) are DISABLED for this run (weight 0). Convert insightface "
    "ms1mv3 r50 weights with `python -m focus_jax.convert arcface backbone.pth --out "
    "arcface.npz` and point the config to them to enable them.",
    reason,
    ", ".join(arcface.ARCFACE_LOSSES),
  )
  _ARCFACE_WARNED.add(reason)
  return None, arcface.disabled_record(reason)
