"""Metrics to JSONL and TensorBoard, written by process 0 only, without TensorFlow.

``metrics.jsonl`` gets one object per write (``{"step": ..., name: value, ...}``); TensorBoard
event files are written with ``tensorboard``'s own event-file writer (clu's writers need TF).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np


class MetricWriter:
  """Appends scalar metrics of a run to ``WORKDIR/metrics.jsonl`` and TensorBoard events."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = workdir
    self._jsonl = None
    self._events = None
    if self.enabled:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter

      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    """Writes ``scalars`` (name -> float) at ``step``; non-finite values are written as null."""
    if not self.enabled:
      return
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()
    values = [Summary.Value(tag=k, simple_value=v) for k, v in clean.items() if v is not None]
    self._events.add_event(
      Event(wall_time=time.time(), step=int(step), summary=Summary(value=values))
    )

  def write_image(self, step: int, tag: str, image) -> None:
    """Writes an ``(H, W, 3)`` uint8 image to TensorBoard and as ``images/<tag>_<step>.png``."""
    if not self.enabled:
      return
    import cv2
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    from focus_jax import files

    ok, png = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
      raise OSError(f"could not encode the {tag} image of step {step}")
    h, w = image.shape[:2]
    summary = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=png.tobytes())
    self._events.add_event(
      Event(
        wall_time=time.time(),
        step=int(step),
        summary=Summary(value=[Summary.Value(tag=tag, image=summary)]),
      )
    )
    name = tag.replace("/", "_")
    files.write_bytes(os.path.join(self.workdir, "images", f"{name}_{step:08d}.png"), png.tobytes())

  def write_text(self, name: str, text: str) -> None:
    """Records a note (e.g. which losses are disabled) in the JSONL stream."""
    if self.enabled:
      self._jsonl.write(json.dumps({"note": name, "text": text}) + "\n")
      self._jsonl.flush()

  def flush(self) -> None:
    """Pushes buffered TensorBoard events to disk (JSONL lines are flushed as written)."""
    if self.enabled:
      self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()


def read_jsonl(path: str) -> list[dict]:
  """The records of a ``metrics.jsonl`` file."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
