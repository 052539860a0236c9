"""Layout of training workdirs: which stages a directory holds and the record each one wrote.

A stage workdir holds ``config.json`` (``{"stage": NAME, "config": {...}}``) and
``checkpoints/``; a chain workdir (the quick start's) holds one stage workdir per entry of
:data:`CHAIN`, each started from the previous one by ``init_from``, and optionally ``adapt/``
(test-time adaptation, started from ``em/``).
"""

from __future__ import annotations

import json
import os

import ml_collections

CHAIN = ("pretrain", "unet_pretrain", "em")
ADAPT = "adapt"


def read_record(stage_dir: str) -> tuple[str, ml_collections.ConfigDict]:
  """``(stage name, config)`` of a stage workdir, from its ``config.json``."""
  with open(os.path.join(stage_dir, "config.json")) as f:
    record = json.load(f)
  return record["stage"], ml_collections.ConfigDict(record["config"])


def find_stages(workdir: str) -> dict[str, str]:
  """``{stage name: stage workdir}`` of a stage workdir or of a chain workdir.

  Raises:
    ValueError: naming ``workdir`` when it is neither.
  """
  if os.path.isfile(os.path.join(workdir, "config.json")):
    return {read_record(workdir)[0]: workdir}
  found = {}
  for name in (*CHAIN, ADAPT):
    stage_dir = os.path.join(workdir, name)
    if os.path.isfile(os.path.join(stage_dir, "config.json")):
      found[read_record(stage_dir)[0]] = stage_dir
  if not found:
    raise ValueError(
      f"{workdir}: neither a stage workdir (config.json) nor a chain workdir with one of "
      f"{', '.join(n + '/' for n in CHAIN)}"
    )
  return found
