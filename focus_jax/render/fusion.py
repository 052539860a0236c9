"""Fusion barriers for XLA:CPU: identities that stop XLA from fusing through a value.

XLA fuses elementwise producers into their consumers. Into the serial gather and scatter loops
of XLA:CPU, and into library-kernel fusions (a convolution followed by a reduction), that
recomputes vectorisable work once per element or runs it at the library's slow rate for that
pattern; once per output element of multi-output fusions too. ``optimization_barrier`` does not
prevent that there (XLA:CPU expands barriers before fusion). :func:`materialise` is a branch on
a predicate XLA cannot fold, so the value is computed into a buffer first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def materialise(tree):
  """Identity that XLA cannot fuse through (module docstring), on any pytree of arrays.

  Under ``vmap`` it stays a real branch. Not differentiable: use it inside custom VJPs and on
  values without gradients (:func:`fusion_barrier` is the differentiable one).
  """
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, _materialise_leaves(*leaves))


@jax.custom_vjp
def fusion_barrier(tree):
  """Differentiable :func:`materialise`: the value and its cotangent are both materialised.

  Placed on a value shared by several consumers, it stops XLA:CPU from recomputing the value's
  producers (forward) and the consumers' gradient chain (backward) once per consumer element.
  """
  return materialise(tree)


def _fusion_barrier_fwd(tree):
  return materialise(tree), None


def _fusion_barrier_bwd(_, grad):
  return (materialise(grad),)


fusion_barrier.defvjp(_fusion_barrier_fwd, _fusion_barrier_bwd)


@jax.custom_batching.custom_vmap
def _materialise_leaves(*leaves):
  probe = leaves[0].reshape(-1)[0]
  if not jnp.issubdtype(probe.dtype, jnp.floating):
    # For integers XLA folds ``x == x`` to true and removes the branch: test a float instead.
    probe = jax.lax.bitcast_convert_type(probe.astype(jnp.int32), jnp.float32)
  keep = (probe == probe) | (probe != probe)  # always true, NaN included
  return jax.lax.cond(keep, lambda t: t, lambda t: [jnp.zeros_like(a) for a in t], list(leaves))


@_materialise_leaves.def_vmap
def _(axis_size, in_batched, *leaves):
  # Batched, the branch's predicate would be batched too and the cond would become a select.
  return _materialise_leaves(*leaves), list(in_batched)
