"""Device mesh and shardings of training: data parallelism through JAX's own sharding.

One mesh axis, ``data``, spans every device of every process. Batches are sharded along it
(``P('data')``); parameters and optimiser states are replicated (``P()``). The jitted steps take
these shardings explicitly, so the same code runs on one CPU, a multi-GPU box or a TPU pod
(after ``jax.distributed.initialize()`` in ``main``).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over the ``data`` axis."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  """Raises ``ValueError`` unless the global batch splits evenly over the mesh's devices."""
  if global_batch % mesh.size:
    raise ValueError(
      f"batch_size {global_batch} is not divisible by the {mesh.size} devices of the mesh"
    )
