"""Evaluation of focus_jax reconstructions: image metrics and the NoW scan-to-mesh error.

``metrics`` holds the pure jax/numpy metrics of the original's tables (occlusion-mask scores,
landmark and photometric errors); ``mesh_distance`` the exact point-to-mesh distances and the
similarity alignment of a mesh to points (NumPy, SciPy imported lazily) with ``closest_kernel``,
its jitted float64 closest-triangle search (JAX on the host CPU), both evaluating the closed form
of ``triangle_distance``; ``now`` the NoW challenge protocol on top of it (crop sphere, landmark
alignment, refinement, summaries, submission files). Nothing here imports flax or the networks,
and this file imports nothing, so ``import focus_jax.eval.metrics`` stays light.
"""
