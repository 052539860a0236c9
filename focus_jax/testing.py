"""Small models and inputs shared by tests and benchmarks."""

from __future__ import annotations

import functools

import numpy as np

from focus_jax.facemodels import embedded
from focus_jax.render import coefficients
from focus_jax.render import morphable_model as mm


@functools.cache
def small_model(**kwargs) -> mm.MorphableModel:
  """The small embedded model (~3.9k vertices, 7.6k triangles), loaded once per process."""
  return embedded.load("small", **kwargs)


@functools.cache
def bfm_sized_model() -> mm.MorphableModel:
  """The BFM-sized embedded model (~28k vertices, 56k triangles), loaded once per process."""
  return embedded.load("bfm")


def random_coefficients(
  model: mm.MorphableModel, seed: int = 0, scale: float = 1.0
) -> coefficients.Coefficients:
  """Random unbatched renderer coefficients (NumPy float32) for tests and benchmarks.

  Shape N(0, scale), expression and color N(0, scale / 2); pose angles within +-0.3 rad,
  translations within +-20 mm; lighting is small (N(0, 0.2) per SH coefficient and channel) so
  that the ambient band-0 offset dominates, like a trained model's.
  """
  ranges = coefficients.PriorRanges(
    shape_std=scale,
    expression_std=0.5 * scale,
    color_std=0.5 * scale,
    rotation=(0.3, 0.3, 0.3),
    translation=20.0,
    depth=(-20.0, 20.0),
    tint_std=0.2,
  )
  return coefficients.sample(np.random.default_rng(seed), model.sizes, ranges)
