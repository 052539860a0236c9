"""Every Orbax call of focus_jax: checkpoint manager, save and sharded restore.

A checkpoint holds the train state (a pytree of arrays) and a JSON record (the config and run
notes). The manager saves every ``interval`` steps (asynchronously; at most one interval of work
is lost), keeps the newest ``keep`` checkpoints, and restores into an abstract target whose leaves
carry their shardings, so a restored state is already placed on the mesh. Orbax writes to a
temporary directory and renames it when complete, so a crash never leaves a half-written
checkpoint that looks valid.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def manager(directory: str, interval: int, keep: int, async_save: bool = True):
  """A ``CheckpointManager`` in ``directory`` saving every ``interval`` steps, keeping ``keep``."""
  options = ocp.CheckpointManagerOptions(
    save_interval_steps=interval,
    max_to_keep=keep,
    enable_async_checkpointing=async_save,
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr, step: int, state, record: dict, force: bool = False) -> bool:
  """Saves ``state`` and JSON ``record`` at ``step`` when the interval (or ``force``) says so."""
  return mngr.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
    force=force,
  )


def abstract(state):
  """The abstract target of ``state``: shapes, dtypes and shardings, no data."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state
  )


def restore(mngr, target, step: int | None = None):
  """Restores ``(state, record)`` at ``step`` (default: latest) into the abstract ``target``.

  Returns ``None`` when the directory holds no checkpoint.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  out = mngr.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()),
  )
  return out["state"], out["record"]


def latest_step(directory: str) -> int | None:
  """The newest complete checkpoint step in ``directory``, or None."""
  if not os.path.isdir(directory):
    return None
  mngr = ocp.CheckpointManager(
    os.path.abspath(directory), options=ocp.CheckpointManagerOptions(read_only=True)
  )
  try:
    return mngr.latest_step()
  finally:
    mngr.close()
