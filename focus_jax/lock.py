"""A lock on a training workdir: one run per workdir at a time.

The lock is the file ``WORKDIR/.lock`` holding ``{"host", "pid", "since"}``, created with
``O_CREAT | O_EXCL`` so that two processes can never both take it. A second run on a workdir in
use refuses at start with who holds it; a lock left by a dead process of the same host (a
``kill -9``, a crash) is taken over with a warning. A lock from another host cannot be checked
from here: it is reported, and the message says how to remove it if that run is gone. In
multi-host runs only process 0 takes the lock (the others write nothing of their own).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


class WorkdirLock:
  """Context manager holding ``WORKDIR/.lock`` (``enabled=False``: a no-op, for processes > 0)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.enabled = enabled
    self._held = False

  def acquire(self) -> None:
    if not self.enabled:
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%FT%T%z")}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
      except FileExistsError:
        holder = _read(self.path)
        same_host = holder.get("host") == me["host"]
        pid = holder.get("pid")
        if same_host and isinstance(pid, int) and not _alive(pid):
          log.warning(
            "%s: taking over a stale lock of process %d (since %s), which no longer runs",
            self.path,
            pid,
            holder.get("since", "?"),
          )
          os.remove(self.path)
          continue
        if not holder:  # being written this very moment, or unreadable
          raise WorkdirBusy(
            f"{os.path.dirname(self.path)} is locked ({self.path} unreadable)"
          ) from None
        hint = "" if same_host else f"; if that run is gone, delete {self.path}"
        raise WorkdirBusy(
          f"{os.path.dirname(self.path)} is in use by pid {pid} on {holder.get('host')} since "
          f"{holder.get('since')}: one run per workdir (use another --workdir){hint}"
        ) from None
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self._held = True
      return
    raise WorkdirBusy(f"{self.path}: could not take the lock")

  def release(self) -> None:
    if self._held:
      self._held = False
      if _read(self.path).get("pid") == os.getpid():
        os.remove(self.path)

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
