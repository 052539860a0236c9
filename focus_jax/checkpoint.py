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


def _leaf_shapes(tree) -> dict[str, tuple]:
  """``{"a.b.c": shape}`` of a tree of arrays or of Orbax array metadata (NNX's trailing
  ``.value`` dropped, so both spell a leaf the same way)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    if keys and keys[-1] == "value":
      keys = keys[:-1]
    out[".".join(keys)] = tuple(getattr(leaf, "shape", None) or ())
  return out


def _shape_differences(directory: str, step: int, target: dict) -> list[str]:
  """``leaf: stored shape, expected shape`` for the leaves of ``target`` that differ on disk."""
  meta = ocp.StandardCheckpointer().metadata(os.path.join(directory, str(step), "state"))
  stored = getattr(getattr(meta, "item_metadata", meta), "tree", None) or {}
  have = _leaf_shapes({k: stored[k] for k in target if k in stored})
  out = []
  for name, shape in _leaf_shapes(target).items():
    if have.get(name) != shape:
      out.append(f"{name}: stored {have.get(name, 'nothing')}, this config {shape}")
  return out


def restore_subtrees(directory: str, target: dict, step: int | None = None) -> dict:
  """Restores only the entries of ``target`` (e.g. ``{"step", "encoder", "unet"}``) from the
  train state stored in ``directory``: the networks of another run, for ``init_from`` and for
  evaluation, whatever else (optimiser state, counters) that run's state holds.

  Args:
    directory: a ``checkpoints`` directory.
    target: a dict of example pytrees (arrays or ``ShapeDtypeStruct`` with shardings).
    step: the step to read (default: the latest).

  Raises:
    ValueError: naming ``directory`` and the leaves whose shapes differ, when the stored
      networks have another architecture.
  """
  abstract_target = abstract(target)
  # A fresh manager: one that has restored with StandardRestore keeps that handler for "state".
  mngr = manager(directory, 1, 1, async_save=False)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"{directory}: no checkpoint")
    args = ocp.args.PyTreeRestore(
      item=abstract_target,
      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_target),
      partial_restore=True,
    )
    try:
      return mngr.restore(step, args=ocp.args.Composite(state=args))["state"]
    except ValueError as e:
      try:
        diffs = _shape_differences(directory, step, abstract_target)
      except (OSError, KeyError, TypeError, ValueError):
        diffs = []
      detail = "; ".join(diffs[:6]) + (f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else "")
      raise ValueError(
        f"{directory} (step {step}) holds networks of another architecture than this config: "
        f"{detail or e}. Use the same config.encoder.* / config.unet.* / config.model.* as that "
        "run (see the config.json beside it)."
      ) from None
  finally:
    mngr.close()
