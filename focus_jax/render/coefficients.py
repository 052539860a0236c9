"""Renderer coefficients: the :class:`Coefficients` record, the encoder-head layout, one sampler.

A face is described by five coefficient groups (SPEC §1-3), the input of
``focus_jax.render.pipeline.render``:

- ``shape (K_shape,)``, ``expression (K_exp,)``, ``color (K_color,)``: morphable-model
  coefficients in standard deviations of the model (``MorphableModel`` bases are pre-scaled);
- ``pose (6,)`` = ``(rx, ry, rz, tx, ty, tz)``: Euler angles in radians and a translation in mm
  on top of the camera distance (``camera.py``);
- ``light (27,)``: second-order spherical-harmonics lighting, ``[R0..R8, G0..G8, B0..B8]``
  (``shading.py``; the renderer adds its ambient offset to band 0).

The encoder head predicts them as one vector ``shape | expression | color | pose | light`` (the
original order, :data:`GROUPS`); :func:`from_head` splits it and applies the head scalings of
SPEC §2, which live here and nowhere else. :func:`sample` draws random coefficients from the
model prior within :class:`PriorRanges` (synthetic data, tests, exports).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Order of the coefficient groups in the encoder head output (the original's).
GROUPS = ("shape", "expression", "color", "pose", "light")
POSE_SIZE = 6
LIGHT_SIZE = 27

# Scalings applied to the raw encoder outputs (SPEC §2): they keep the zero-initialised head's
# early steps in a sensible range for each group.
COLOR_SCALE = 3.0
ROTATION_SCALE = 0.3
DEPTH_SCALE = 0.005


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Coefficients:
  """The renderer's coefficients of one face, or of a batch (leading axis ``B`` on every field).

  Every field is a float32 pytree leaf, so the record goes through ``jax.jit``, ``jax.vmap``,
  ``jax.grad`` and ``jax.tree.map`` as it is.

  Attributes:
    shape: ``(K_shape,)`` or ``(B, K_shape)`` identity, in standard deviations of the model.
    expression: ``(K_exp,)`` or ``(B, K_exp)`` expression, in standard deviations (blend weights
      for ICT-style models).
    color: ``(K_color,)`` or ``(B, K_color)`` albedo, in standard deviations of the model.
    pose: ``(6,)`` or ``(B, 6)`` = ``(rx, ry, rz, tx, ty, tz)``: angles in radians, translation
      in mm (added to the camera distance: zero pose is the face frontal, one metre away).
    light: ``(27,)`` or ``(B, 27)`` SH coefficients ``[R0..R8, G0..G8, B0..B8]``.
  """

  shape: jax.Array
  expression: jax.Array
  color: jax.Array
  pose: jax.Array
  light: jax.Array

  def to_dict(self) -> dict[str, jax.Array]:
    """The fields by group name, in :data:`GROUPS` order (e.g. for ``np.savez``)."""
    return {name: getattr(self, name) for name in GROUPS}

  @classmethod
  def from_dict(cls, groups: Mapping[str, jax.typing.ArrayLike]) -> Coefficients:
    """The record of a mapping with exactly the keys of :data:`GROUPS` (values kept as given).

    Raises:
      ValueError: naming the missing and the unexpected keys.
    """
    missing = [name for name in GROUPS if name not in groups]
    extra = sorted(set(groups) - set(GROUPS))
    if missing or extra:
      raise ValueError(
        f"coefficients: missing {missing}, unexpected {extra}; expected exactly {list(GROUPS)}"
      )
    return cls(**{name: groups[name] for name in GROUPS})

  @classmethod
  def zeros(cls, sizes: Mapping[str, int], batch: int | None = None) -> Coefficients:
    """All-zero float32 coefficients: the mean face, frontal, one metre away, ambient light.

    Args:
      sizes: at least ``shape``, ``expression``, ``color`` (``MorphableModel.sizes``).
      batch: leading batch size ``B``, or ``None`` for one face.
    """
    lead = () if batch is None else (batch,)
    return cls(**{name: np.zeros((*lead, n), np.float32) for name, n in _counts(sizes).items()})


def _counts(sizes: Mapping[str, int]) -> dict[str, int]:
  """Sizes of all groups in :data:`GROUPS` order from the model's shape/expression/color."""
  model = {name: int(sizes[name]) for name in GROUPS[:3]}
  return {**model, "pose": POSE_SIZE, "light": LIGHT_SIZE}


def stack(faces: Sequence[Coefficients]) -> Coefficients:
  """Stacks unbatched records into one with a leading batch axis ``B = len(faces)`` (NumPy)."""
  return jax.tree.map(lambda *xs: np.stack(xs), *faces)


def scale_head_outputs(color: jax.Array, pose: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Applies the encoder-head scalings of SPEC §2 (the only place they live).

  Args:
    color: raw color coefficients ``(..., K_color)``.
    pose: raw camera outputs ``(..., 6)`` = (rx, ry, rz, tx, ty, tz).

  Returns:
    ``(color * 3, pose)`` with the rotations scaled by 0.3 and ``tz`` by 0.005.
  """
  scale = jnp.array([ROTATION_SCALE] * 3 + [1.0, 1.0, DEPTH_SCALE], jnp.float32)
  return color * COLOR_SCALE, pose * scale


def from_head(raw: jax.Array, sizes: Mapping[str, int]) -> Coefficients:
  """Splits a raw encoder-head output into scaled coefficients.

  Args:
    raw: ``(..., D)`` float32 head output, groups in :data:`GROUPS` order, with
      ``D = K_shape + K_exp + K_color + 6 + 27``.
    sizes: at least ``shape``, ``expression``, ``color`` (other keys are ignored: pose and light
      have fixed sizes).

  Returns:
    :class:`Coefficients` with fields ``(..., size)``, :func:`scale_head_outputs` applied.
  """
  counts = _counts(sizes)
  total = sum(counts.values())
  if raw.shape[-1] != total:
    raise ValueError(f"head output has {raw.shape[-1]} values, groups {counts} need {total}")
  parts, start = {}, 0
  for name, count in counts.items():
    parts[name] = raw[..., start : start + count]
    start += count
  parts["color"], parts["pose"] = scale_head_outputs(parts["color"], parts["pose"])
  return Coefficients(**parts)


@dataclasses.dataclass(frozen=True)
class PriorRanges:
  """The distribution :func:`sample` draws from. The defaults: the model prior, frontal pose at
  one metre, no light besides the renderer's ambient offset.

  Attributes:
    shape_std, expression_std, color_std: standard deviations of the Gaussian coefficients (in
      the model's standard deviations).
    blend_shapes: ``None``: expression coefficients are Gaussian. An int ``n``: they are blend
      weights (ICT-style models, where dense signed weights give grotesque faces): ``n`` of them
      are switched on, each uniform in ``[0, max_blend_weight]``, the rest are 0.
    max_blend_weight: see ``blend_shapes``.
    rotation: half-ranges ``(rx, ry, rz)`` in radians (pitch, yaw, roll): uniform in +- each.
    translation: ``tx`` and ``ty`` uniform in +- this (mm).
    depth: ``(min, max)`` of the uniform ``tz`` (mm, on top of the camera distance).
    ambient_std: std of SH band 0, shared by the three channels (white).
    band_std: stds of SH bands 1 and 2, shared by the three channels (white light).
    tint_std: std of independent per-channel deviations added to every SH coefficient.
  """

  shape_std: float = 1.0
  expression_std: float = 1.0
  color_std: float = 1.0
  blend_shapes: int | None = None
  max_blend_weight: float = 1.0
  rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
  translation: float = 0.0
  depth: tuple[float, float] = (0.0, 0.0)
  ambient_std: float = 0.0
  band_std: tuple[float, float] = (0.0, 0.0)
  tint_std: float = 0.0


def sample(
  rng: np.random.Generator,
  sizes: Mapping[str, int],
  ranges: PriorRanges = PriorRanges(),
  *,
  accept: Callable[[Coefficients], bool] | None = None,
  max_tries: int = 20,
) -> Coefficients:
  """Draws the coefficients of one face (NumPy float32, unbatched).

  Draws in a fixed order, which fixes the random stream for a seed: shape, expression, color,
  light (9 white SH terms, band 0 redrawn with ``ambient_std``, then 27 tint terms), then the
  pose (rx, ry, rz, tx, ty, tz), redrawn while ``accept`` rejects it.

  Args:
    rng: random generator.
    sizes: at least ``shape``, ``expression``, ``color`` (``MorphableModel.sizes``).
    ranges: the distribution.
    accept: optional test of a candidate face (e.g. its landmarks stay inside the image); the
      pose is redrawn up to ``max_tries`` times until it passes, the last one kept otherwise.
    max_tries: see ``accept``.
  """
  shape = ranges.shape_std * rng.normal(size=sizes["shape"])
  if ranges.blend_shapes is None:
    expression = ranges.expression_std * rng.normal(size=sizes["expression"])
  else:
    expression = np.zeros(sizes["expression"])
    n = min(ranges.blend_shapes, sizes["expression"])
    active = rng.choice(sizes["expression"], size=n, replace=False)
    expression[active] = rng.uniform(0.0, ranges.max_blend_weight, active.size)
  color = ranges.color_std * rng.normal(size=sizes["color"])
  # Mostly white light (one set of SH coefficients for all channels) with a small tint, so that
  # faces do not turn rainbow-coloured.
  band1, band2 = ranges.band_std
  white = np.array([0.0, band1, band1, band1, *[band2] * 5]) * rng.normal(size=9)
  white[0] = ranges.ambient_std * rng.normal()
  light = white[None, :] + ranges.tint_std * rng.normal(size=(3, 9))
  face = Coefficients(
    shape=shape.astype(np.float32),
    expression=expression.astype(np.float32),
    color=color.astype(np.float32),
    pose=np.zeros(POSE_SIZE, np.float32),
    light=light.reshape(LIGHT_SIZE).astype(np.float32),
  )
  for _ in range(max_tries):
    angles = [half * rng.uniform(-1, 1) for half in ranges.rotation]
    shift = [*(ranges.translation * rng.uniform(-1, 1, 2)), rng.uniform(*ranges.depth)]
    face = dataclasses.replace(face, pose=np.array([*angles, *shift]).astype(np.float32))
    if accept is None or accept(face):
      break
  return face
