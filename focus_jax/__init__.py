"""focus_jax: FOCUS (CVPR 2023) occlusion-robust 3D face reconstruction in JAX/Flax.

``focus_jax.Reconstructor`` (``focus_jax.reconstruct``) is imported on first use, so that
``import focus_jax`` stays light (no JAX, Flax or Orbax until then).
"""

__version__ = "0.1.0"

# Public names resolved lazily: name -> defining module.
_LAZY = {"Reconstructor": "focus_jax.reconstruct", "load_fitted": "focus_jax.fitted"}


def __getattr__(name: str):
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'focus_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted([*globals(), *_LAZY])
