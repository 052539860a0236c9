"""CSV layout: validation names file and row; policies; header and float coordinates."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from focus_jax.data import layout, toy


@pytest.fixture
def root(tmp_path):
  toy.write_image_root(str(tmp_path), 3, size=(64, 48), masks=True)
  return str(tmp_path)


def _rows(root):
  with open(layout.csv_path(root, "train")) as f:
    return [line.rstrip("\n") for line in f]


def _write(root, lines):
  with open(layout.csv_path(root, "train"), "w") as f:
    f.write("\n".join(lines) + "\n")


def test_reads_valid_layout_with_masks(root):
  records = layout.read_split(root, "train")
  assert [r.name for r in records] == ["toy_0000.png", "toy_0001.png", "toy_0002.png"]
  assert records[0].landmarks.shape == (68, 2)
  assert records[0].size == (64, 48)
  assert records[0].mask_path.endswith("toy_0000_visible_skin_mask.png")
  assert records[2].row == 3


def test_header_and_float_coordinates_accepted(root):
  good = _rows(root)
  header = ",".join(["filename"] + [f"{a}{i}" for i in range(1, 69) for a in "xy"])
  name, *values = good[0].split(",")
  floats = ",".join([name] + [f"{float(v) + 0.25:.2f}" for v in values])
  _write(root, [header, floats, good[1]])
  records = layout.read_split(root, "train")
  assert [r.row for r in records] == [2, 3]
  np.testing.assert_allclose(records[0].landmarks.reshape(-1), np.array(values, float) + 0.25)


def _bad_root(root):
  good = _rows(root)
  name, *values = good[0].split(",")
  dataset = os.path.join(root, layout.IMAGE_DIR)
  with open(os.path.join(dataset, "broken.png"), "wb") as f:
    f.write(b"not an image at all")
  Image.new("RGB", (64, 48)).save(os.path.join(dataset, "small_mask.png"))
  Image.new("L", (10, 10)).save(os.path.join(dataset, "small_mask_visible_skin_mask.png"))
  outside = list(values)
  outside[0] = "500"
  lines = [
    good[0],  # row 1 ok
    ",".join([name] + values[:-2]),  # row 2: wrong field count
    ",".join(["toy_0001.png", "abc"] + values[1:]),  # row 3: non-numeric
    ",".join(["missing.png"] + values),  # row 4: missing image
    ",".join(["broken.png"] + values),  # row 5: undecodable
    ",".join(["toy_0002.png"] + outside),  # row 6: landmark outside
    ",".join(["small_mask.png"] + values),  # row 7: mask size mismatch
    ",".join(["toy_0001.png", "nan"] + values[1:]),  # row 8: non-finite
  ]
  _write(root, lines)
  return layout.csv_path(root, "train")


def test_fail_policy_names_file_and_every_bad_row(root):
  csv_file = _bad_root(root)
  with pytest.raises(ValueError) as info:
    layout.read_split(root, "train")
  text = str(info.value)
  expected = {
    2: "expected 137 fields",
    3: "not a number: 'abc'",
    4: "not found",
    5: "cannot be decoded",
    6: "outside the 64x48 image",
    7: "mask 'small_mask_visible_skin_mask.png' is 10x10",
    8: "not finite",
  }
  for row, message in expected.items():
    line = next(ln for ln in text.splitlines() if f"{csv_file}, row {row}:" in ln)
    assert message in line, (row, line)
  assert f"{csv_file}, row 1:" not in text
  assert "1 valid rows, 7 bad rows" in text


def test_skip_policy_warns_with_count(root, caplog):
  _bad_root(root)
  with caplog.at_level(logging.WARNING):
    records = layout.read_split(root, "train", policy="skip")
  assert [r.row for r in records] == [1]
  assert "skipping 7 bad rows" in caplog.text


def test_split_names_disjoint_and_deterministic():
  names = [f"n{i}" for i in range(23)]
  parts = layout.split_names(names, (0.8, 0.1, 0.1), seed=3)
  assert sorted(sum(parts, [])) == sorted(names)
  assert [len(p) for p in parts] == [18, 3, 2]  # cuts at rint(18.4), rint(20.7)
  assert parts == layout.split_names(list(reversed(names)), (0.8, 0.1, 0.1), seed=3)
