"""The static HTML report of an evaluation: per-image panel strips, the worst images first.

One strip per shown image, five ``H x W`` panels side by side (:data:`PANELS`):

- ``input``: the aligned image, with the ground-truth landmarks (green);
- ``reconstruction``: the render blended over the input inside its mask, predicted landmarks
  (red) and ground-truth landmarks (green);
- ``estimated mask``: the method's visibility inside the render (white = visible, black =
  occluded), the outside of the render dark blue;
- ``GT mask``: the image's ``*_visible_skin_mask`` (white = visible skin), mid grey when the
  image has none;
- ``error map``: the per-pixel mean absolute RGB error inside the render, colour-mapped (JET)
  from 0 to :data:`ERROR_RANGE` (64 grey levels, where it saturates), black outside.

:func:`write_report` writes the strips as PNGs under ``images/`` and ``report.html`` beside
them with relative links only, so the directory can be copied or opened from disk as it is.
NumPy and OpenCV only (this package must not import flax).
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
from collections.abc import Sequence

import numpy as np

from focus_jax import files

PANELS = ("input", "reconstruction", "estimated mask", "GT mask", "error map")
# Mean absolute RGB error (images in [0, 1]) at which the error map saturates: 64 grey levels.
ERROR_RANGE = 0.25
_GT_COLOR = (0, 200, 0)
_PRED_COLOR = (230, 30, 30)
_OUTSIDE = np.array([20, 20, 70], np.uint8)  # dark blue: outside the render


def _to_uint8(image: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _draw_points(canvas: np.ndarray, points, color) -> None:
  import cv2

  h, w = canvas.shape[:2]
  for x, y in np.asarray(points, np.float32).reshape(-1, 2):
    if np.isfinite(x) and np.isfinite(y) and -1 <= x <= w and -1 <= y <= h:
      cv2.circle(canvas, (round(float(x)), round(float(y))), 1, color, -1, lineType=cv2.LINE_AA)


def overlay(
  image: np.ndarray,
  render: np.ndarray,
  render_mask: np.ndarray,
  landmarks: np.ndarray | None = None,
  predicted: np.ndarray | None = None,
  alpha: float = 0.7,
) -> np.ndarray:
  """The render blended over the image inside the render mask, landmarks drawn on top.

  Args:
    image: ``(H, W, 3)`` float32 in [0, 1].
    render: ``(H, W, 3)`` float32 render (clipped to [0, 1] for display).
    render_mask: ``(H, W)`` float32 in {0, 1}.
    landmarks: optional ``(68, 2)`` ground-truth pixel landmarks (green).
    predicted: optional ``(68, 2)`` predicted pixel landmarks (red).
    alpha: opacity of the render.

  Returns:
    ``(H, W, 3)`` uint8 RGB.
  """
  a = alpha * np.asarray(render_mask, np.float32)[..., None]
  canvas = _to_uint8((1.0 - a) * image + a * np.clip(render, 0.0, 1.0))
  if landmarks is not None:
    _draw_points(canvas, landmarks, _GT_COLOR)
  if predicted is not None:
    _draw_points(canvas, predicted, _PRED_COLOR)
  return canvas


def mask_panel(mask: np.ndarray | None, region: np.ndarray | None = None) -> np.ndarray:
  """A visibility mask as an image: grey levels inside ``region``, dark blue outside.

  Args:
    mask: ``(H, W)`` float32 visibility in [0, 1], or None (shown as a mid-grey panel of the
      size of ``region``).
    region: optional ``(H, W)`` float32 {0, 1} region (the render) outside which the mask is
      not scored.

  Returns:
    ``(H, W, 3)`` uint8 RGB.
  """
  if mask is None:
    if region is None:
      raise ValueError("mask_panel: give a mask or a region")
    return np.full((*np.shape(region), 3), 128, np.uint8)
  panel = np.repeat(_to_uint8(mask)[..., None], 3, axis=-1)
  if region is not None:
    panel[np.asarray(region) < 0.5] = _OUTSIDE
  return panel


def error_map(image: np.ndarray, render: np.ndarray, region: np.ndarray) -> np.ndarray:
  """Mean absolute RGB error per pixel inside ``region``, JET-coloured over [0, ERROR_RANGE].

  Args:
    image: ``(H, W, 3)`` float32 in [0, 1].
    render: ``(H, W, 3)`` float32.
    region: ``(H, W)`` float32 {0, 1}; black outside.

  Returns:
    ``(H, W, 3)`` uint8 RGB.
  """
  import cv2

  error = np.mean(np.abs(np.asarray(image, np.float32) - render), axis=-1)
  level = np.clip(np.rint(255.0 * error / ERROR_RANGE), 0, 255).astype(np.uint8)
  colored = cv2.applyColorMap(level, cv2.COLORMAP_JET)[..., ::-1]  # cv2 gives BGR
  colored = np.ascontiguousarray(colored)
  colored[np.asarray(region) < 0.5] = 0
  return colored


def panel_strip(
  image: np.ndarray,
  render: np.ndarray,
  render_mask: np.ndarray,
  est_mask: np.ndarray,
  gt_mask: np.ndarray | None,
  landmarks: np.ndarray,
  predicted: np.ndarray,
) -> np.ndarray:
  """The five :data:`PANELS` of one image side by side.

  Args:
    image: ``(H, W, 3)`` float32 in [0, 1].
    render: ``(H, W, 3)`` float32 render of the method.
    render_mask: ``(H, W)`` float32 {0, 1} hard render mask.
    est_mask: ``(H, W)`` float32 estimated visibility in [0, 1].
    gt_mask: ``(H, W)`` float32 ground-truth visibility, or None when the image has none.
    landmarks: ``(68, 2)`` float32 ground-truth landmarks.
    predicted: ``(68, 2)`` float32 predicted landmarks.

  Returns:
    ``(H, 5 W, 3)`` uint8 RGB.
  """
  source = _to_uint8(image)
  _draw_points(source, landmarks, _GT_COLOR)
  panels = [
    source,
    overlay(image, render, render_mask, landmarks, predicted),
    mask_panel(est_mask, render_mask),
    mask_panel(gt_mask, render_mask),
    error_map(image, render, render_mask),
  ]
  return np.concatenate(panels, axis=1)


@dataclasses.dataclass(frozen=True)
class Row:
  """One image of a report section.

  Attributes:
    name: the image name.
    caption: metric values shown beside it.
    strip: key of its strip in the ``strips`` of :func:`write_report`.
  """

  name: str
  caption: str
  strip: str


@dataclasses.dataclass(frozen=True)
class Section:
  """A titled list of :class:`Row` (e.g. the 8 worst images of one metric)."""

  title: str
  rows: Sequence[Row]


def strip_file(key: str) -> str:
  """The relative path of strip ``key`` (characters outside ``[A-Za-z0-9_.-]`` become ``_``)."""
  return "images/" + re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".png"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = "".join(
    "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
  )
  return f"<table class='summary'><tr>{head}</tr>{body}</table>"


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
table.summary td, table.summary th { border: 1px solid #bbb; padding: 2px 8px; text-align: right; }
table.images td { padding: 2px 8px; vertical-align: middle; }
.panels { font-size: small; color: #555; }
"""


def write_report(
  out_dir: str,
  title: str,
  notes: Sequence[str],
  table: tuple[Sequence[str], Sequence[Sequence[str]]],
  sections: Sequence[Section],
  strips: dict[str, np.ndarray],
  more_tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]] = (),
) -> str:
  """Writes ``out_dir/report.html`` and its strips ``out_dir/images/*.png``.

  Args:
    out_dir: the evaluation's output directory.
    title: page title.
    notes: lines shown under the title (data, checkpoints, conventions).
    table: ``(header, rows)`` of the summary table (strings).
    sections: the image sections, in order (the worst images of each metric first).
    strips: strip key -> ``(H, 5 W, 3)`` uint8 image from :func:`panel_strip`; every row's
      ``strip`` must be a key.
    more_tables: ``(title, header, rows)`` of further tables shown under the summary.

  Returns:
    The path of ``report.html``.
  """
  missing = sorted({r.strip for s in sections for r in s.rows} - set(strips))
  if missing:
    raise ValueError(f"write_report: rows refer to strips without images: {missing[:5]}")
  for key, strip in strips.items():
    files.write_png(os.path.join(out_dir, strip_file(key)), strip)
  parts = [
    "<!DOCTYPE html><html><head><meta charset='utf-8'>",
    f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
    f"<h1>{html.escape(title)}</h1>",
    *(f"<p>{html.escape(line)}</p>" for line in notes),
    _table(*table),
    *(f"<h2>{html.escape(name)}</h2>{_table(header, rows)}" for name, header, rows in more_tables),
    f"<p class='panels'>Panels: {html.escape(' | '.join(PANELS))}. Landmarks: ground truth "
    "green, prediction red. Error map: mean absolute RGB error, JET from 0 to "
    f"{round(255 * ERROR_RANGE)} grey levels.</p>",
  ]
  for section in sections:
    parts.append(f"<h2>{html.escape(section.title)}</h2><table class='images'>")
    for row in section.rows:
      src = html.escape(strip_file(row.strip), quote=True)
      parts.append(
        f"<tr><td>{html.escape(row.name)}<br><small>{html.escape(row.caption)}</small></td>"
        f"<td><img src='{src}' alt='{html.escape(row.name, quote=True)}'></td></tr>"
      )
    parts.append("</table>")
  parts.append("</body></html>\n")
  path = os.path.join(out_dir, "report.html")
  files.write_text(path, "\n".join(parts))
  return path
