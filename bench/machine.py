"""The machine-speed reference printed beside every benchmark figure.

The speed targets of this project are stated "at this machine's speed": the 2048^2 float32 NumPy
matmul took 0.08-0.09 s on the 2-core CI machine when they were set. The same machine class has
since measured anywhere from 0.11 to 0.26 s (shared hosts), and a benchmark figure means little
without the speed it was taken at. Comparing two implementations is best done side by side in
one window (e.g. a ``git worktree`` of the older commit on ``PYTHONPATH``), not across sessions.
"""

from __future__ import annotations

import time

import numpy as np


def matmul_seconds(repeats: int = 5, size: int = 2048) -> float:
  """Median wall time of ``size x size`` float32 matmuls in NumPy (after one warm-up)."""
  a = np.random.default_rng(0).random((size, size), np.float32)
  a @ a
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    a @ a
    runs.append(time.perf_counter() - start)
  return round(float(np.median(runs)), 3)
