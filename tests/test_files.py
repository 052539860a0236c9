"""The one atomic write: no temp file or half-written target on failure, umask permissions."""

import os

import pytest

from focus_jax import files


def test_failed_write_keeps_old_content_and_leaves_no_temp_file(tmp_path):
  target = tmp_path / "out.json"
  files.write_text(target, "old\n")

  def fail(f):
    f.write(b"half of the new content")
    raise RuntimeError("disk on fire")

  with pytest.raises(RuntimeError, match="disk on fire"):
    files.atomic_write(target, fail)
  assert target.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["out.json"]


def test_written_file_gets_umask_permissions(tmp_path):
  previous = os.umask(0o022)
  try:
    files.write_json(tmp_path / "r.json", {"a": 1})
    files.save_npz(tmp_path / "a.npz", {"x": [1, 2]})
  finally:
    os.umask(previous)
  for name in ("r.json", "a.npz"):
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~0o022
  assert (tmp_path / "r.json").read_text() == '{\n "a": 1\n}\n'
