"""focus_jax: FOCUS (CVPR 2023) occlusion-robust 3D face reconstruction in JAX/Flax."""

__version__ = "0.1.0"
