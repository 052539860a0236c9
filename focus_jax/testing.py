"""Small models and inputs shared by tests and benchmarks."""

from __future__ import annotations

import functools

import numpy as np

from focus_jax import embedded_model
from focus_jax.render import morphable_model as mm


@functools.cache
def small_model(**kwargs) -> mm.MorphableModel:
  """The small embedded model (~3.9k vertices, 7.6k triangles), loaded once per process."""
  return embedded_model.load("small", **kwargs)


@functools.cache
def bfm_sized_model() -> mm.MorphableModel:
  """The BFM-sized embedded model (~28k vertices, 56k triangles), loaded once per process."""
  return embedded_model.load("bfm")


def random_coefficients(model: mm.MorphableModel, seed: int = 0, scale: float = 1.0) -> dict:
  """Random unbatched coefficients of the renderer: shape, expression, color, pose, light.

  Pose angles stay within +-0.3 rad, translations within +-20 mm; lighting is small so that the
  ambient band-0 offset dominates, like a trained model's.
  """
  rng = np.random.default_rng(seed)
  sizes = model.sizes
  return {
    "shape": (scale * rng.normal(size=sizes["shape"])).astype(np.float32),
    "expression": (0.5 * scale * rng.normal(size=sizes["expression"])).astype(np.float32),
    "color": (0.5 * scale * rng.normal(size=sizes["color"])).astype(np.float32),
    "pose": np.concatenate([rng.uniform(-0.3, 0.3, 3), rng.uniform(-20, 20, 3)]).astype(np.float32),
    "light": (0.2 * rng.normal(size=27)).astype(np.float32),
  }
