"""Random backgrounds, textures and occluders for synthetic faces (numpy + OpenCV).

Conventions: images are ``(H, W, 3)`` float32 RGB in [0, 1]; an occluder is a pair
``(alpha (H, W) bool, colour (H, W, 3) float32)``; face geometry comes as the 68 projected
landmarks ``(68, 2)`` float pixel ``(x, y)``. Every function draws from the given
``numpy.random.Generator`` only, so a seed fixes the result.

Families (:data:`FAMILIES`): ``polygon`` and ``ellipse`` (textured shapes anywhere on the face),
``hand`` (palm and fingers in skin tones), ``sunglasses`` (lenses on the eyes, bridge, temples),
``face_mask`` (a surgical mask from the nose bridge over the jaw, with ear loops), ``hair``
(strands falling over the forehead and eyes), ``bar`` (a microphone or a cup with a handle near
the mouth).
"""

from __future__ import annotations

import cv2
import numpy as np

FAMILIES = ("polygon", "ellipse", "hand", "sunglasses", "face_mask", "hair", "bar")

_SKIN = np.array(
  [[0.96, 0.80, 0.69], [0.90, 0.70, 0.55], [0.78, 0.57, 0.43], [0.55, 0.38, 0.26],
   [0.36, 0.24, 0.16], [0.98, 0.87, 0.78]],
  np.float32,
)  # fmt: skip
_HAIR = np.array(
  [[0.08, 0.06, 0.05], [0.25, 0.16, 0.09], [0.45, 0.30, 0.15], [0.80, 0.66, 0.40],
   [0.55, 0.20, 0.08], [0.60, 0.60, 0.60]],
  np.float32,
)  # fmt: skip


def _smooth_noise(rng, h, w, cells, channels=3):
  """Noise at ``cells x cells`` resolution upsampled bicubically to ``(h, w, channels)``."""
  small = rng.uniform(0.0, 1.0, (cells, cells, channels)).astype(np.float32)
  out = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
  return out.reshape(h, w, channels)


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """A random texture ``(h, w, 3)`` float32 in [0, 1]: flat, noise, stripes or checks."""
  kind = rng.integers(5)
  base = rng.uniform(0.0, 1.0, 3).astype(np.float32)
  other = rng.uniform(0.0, 1.0, 3).astype(np.float32)
  if kind == 0:  # flat with fine grain
    out = base + rng.normal(0.0, 0.03, (h, w, 1)).astype(np.float32)
  elif kind == 1:  # smooth multi-scale noise
    out = 0.6 * _smooth_noise(rng, h, w, int(rng.integers(3, 8)))
    out += 0.4 * _smooth_noise(rng, h, w, int(rng.integers(12, 40)))
  elif kind in (2, 3):  # stripes (2) or checks (3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(4.0, 30.0)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    wave = np.sin(2 * np.pi * u / period) > 0
    if kind == 3:
      v = -np.sin(angle) * xx + np.cos(angle) * yy
      wave = wave ^ (np.sin(2 * np.pi * v / period) > 0)
    out = np.where(wave[..., None], base, other)
  else:  # blotches of two colours
    t = _smooth_noise(rng, h, w, int(rng.integers(4, 12)), 1)
    out = np.where(t > 0.5, base, other)
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """A random background ``(h, w, 3)`` float32: gradient, texture, noise or a mix."""
  kind = rng.integers(4)
  if kind == 0:  # linear gradient between two colours
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0.0, 2 * np.pi)
    t = (np.cos(a) * xx + np.sin(a) * yy) / max(h, w)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    c0, c1 = rng.uniform(0.0, 1.0, (2, 3)).astype(np.float32)
    out = c0 + t[..., None] * (c1 - c0)
  elif kind == 1:
    out = texture(rng, h, w)
  elif kind == 2:  # coloured noise around a colour
    out = rng.uniform(0.1, 0.9, 3) + rng.normal(0.0, rng.uniform(0.05, 0.25), (h, w, 3))
  else:  # texture over a gradient
    out = 0.5 * texture(rng, h, w) + 0.5 * _smooth_noise(rng, h, w, 2)
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def _shaded(rng, colour, h, w):
  """A colour with a soft lighting gradient and grain: ``(h, w, 3)``."""
  light = 0.75 + 0.5 * _smooth_noise(rng, h, w, 2, 1)
  grain = rng.normal(0.0, 0.02, (h, w, 1))
  return np.clip(colour * light + grain, 0.0, 1.0).astype(np.float32)


def _face_frame(lm):
  """Centre ``(2,)``, size (eye-to-mouth based face height) and eye centres of the landmarks."""
  left_eye, right_eye = lm[36:42].mean(0), lm[42:48].mean(0)
  mouth = lm[48:68].mean(0)
  size = 2.2 * np.linalg.norm(0.5 * (left_eye + right_eye) - mouth) + 1e-3
  return lm.mean(0), size, left_eye, right_eye


def _poly(mask, points):
  cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1, lineType=cv2.LINE_8)


def _random_point(rng, lm, size):
  return lm[rng.integers(68)] + rng.normal(0.0, 0.1 * size, 2)


def polygon(rng, lm, h, w, scale):
  """A random star-shaped polygon over a random landmark, textured."""
  _, size, _, _ = _face_frame(lm)
  centre = _random_point(rng, lm, size)
  n = int(rng.integers(3, 9))
  angles = np.sort(rng.uniform(0.0, 2 * np.pi, n))
  radii = scale * size * rng.uniform(0.15, 0.45, n)
  pts = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
  mask = np.zeros((h, w), np.uint8)
  _poly(mask, pts)
  return mask.astype(bool), texture(rng, h, w)


def ellipse(rng, lm, h, w, scale):
  """A random rotated ellipse over a random landmark, textured."""
  _, size, _, _ = _face_frame(lm)
  centre = _random_point(rng, lm, size)
  axes = scale * size * rng.uniform(0.1, 0.4, 2)
  mask = np.zeros((h, w), np.uint8)
  cv2.ellipse(
    mask,
    _pt(centre),
    (max(int(axes[0]), 1), max(int(axes[1]), 1)),
    rng.uniform(0, 180),
    0,
    360,
    1,
    -1,
  )
  return mask.astype(bool), texture(rng, h, w)


def _pt(p):
  return int(round(float(p[0]))), int(round(float(p[1])))


def hand(rng, lm, h, w, scale):
  """A hand: palm ellipse, four fingers and a thumb as thick round-capped strokes."""
  _, size, _, _ = _face_frame(lm)
  s = scale * size
  centre = lm[rng.choice([8, 57, 33, 30, 3, 13, 48, 54])] + rng.normal(0.0, 0.1 * size, 2)
  angle = rng.uniform(-np.pi, np.pi)  # direction the fingers point
  d = np.array([np.cos(angle), np.sin(angle)])
  n = np.array([-d[1], d[0]])
  mask = np.zeros((h, w), np.uint8)
  palm = (max(int(0.22 * s), 1), max(int(0.26 * s), 1))
  cv2.ellipse(mask, _pt(centre), palm, np.degrees(angle) + 90, 0, 360, 1, -1)
  width = max(int(0.085 * s), 2)
  for k, offset in enumerate(np.linspace(-0.15, 0.15, 4)):
    base = centre + d * 0.2 * s + n * offset * s
    spread = d + n * (offset * rng.uniform(0.5, 1.5))
    length = s * rng.uniform(0.25, 0.4) * (0.85 if k in (0, 3) else 1.0)
    tip = base + spread / np.linalg.norm(spread) * length
    cv2.line(mask, _pt(base), _pt(tip), 1, width, lineType=cv2.LINE_8)
    cv2.circle(mask, _pt(tip), width // 2, 1, -1)
  side = rng.choice([-1.0, 1.0])
  thumb_base = centre + n * side * 0.18 * s
  thumb_tip = thumb_base + (n * side * 0.7 + d * 0.7) * 0.25 * s
  cv2.line(mask, _pt(thumb_base), _pt(thumb_tip), 1, int(width * 1.15), lineType=cv2.LINE_8)
  colour = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.9, 1.1)
  return mask.astype(bool), _shaded(rng, colour, h, w)


def sunglasses(rng, lm, h, w, scale):
  """Dark lenses over both eyes, a bridge and temples towards the ears."""
  del scale  # sunglasses are sized by the eyes
  _, size, left, right = _face_frame(lm)
  eye_dist = np.linalg.norm(right - left)
  axes = (max(int(0.33 * eye_dist * rng.uniform(0.9, 1.2)), 2),
          max(int(0.24 * eye_dist * rng.uniform(0.9, 1.3)), 2))  # fmt: skip
  tilt = np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0]))
  mask = np.zeros((h, w), np.uint8)
  for eye in (left, right):
    cv2.ellipse(mask, _pt(eye), axes, tilt, 0, 360, 1, -1)
  thick = max(int(0.05 * eye_dist), 2)
  cv2.line(mask, _pt(left), _pt(right), 1, thick)
  cv2.line(mask, _pt(left), _pt(lm[0]), 1, thick)
  cv2.line(mask, _pt(right), _pt(lm[16]), 1, thick)
  tint = rng.uniform(0.0, 0.25, 3) if rng.uniform() < 0.7 else rng.uniform(0.2, 0.7, 3)
  return mask.astype(bool), _shaded(rng, tint.astype(np.float32), h, w)


def face_mask(rng, lm, h, w, scale):
  """A surgical or cloth mask from just below the eyes over the jaw, with ear loops."""
  del scale
  _, size, _, _ = _face_frame(lm)
  top = lm[28] + (lm[29] - lm[28]) * rng.uniform(0.0, 1.0)
  left_top = lm[1] + (top - lm[1]) * 0.1
  right_top = lm[15] + (top - lm[15]) * 0.1
  outline = np.concatenate([[left_top], lm[2:15], [right_top], [top]], 0)
  mask = np.zeros((h, w), np.uint8)
  _poly(mask, outline)
  colours = [[0.55, 0.75, 0.90], [0.95, 0.95, 0.95], [0.1, 0.1, 0.12], [0.3, 0.5, 0.8]]
  colour = np.asarray(colours[rng.integers(len(colours))], np.float32)
  tex = _shaded(rng, colour, h, w) if rng.uniform() < 0.7 else texture(rng, h, w)
  for k in range(3):  # pleats: darker lines across the mask (texture only)
    y = top[1] + (lm[8][1] - top[1]) * (0.3 + 0.2 * k)
    cv2.line(tex, (0, int(y)), (w - 1, int(y)), (tex * 0.75).mean((0, 1)).tolist(), 1)
  loop = max(int(0.015 * size), 1)
  cv2.line(mask, _pt(left_top), _pt(lm[0]), 1, loop)
  cv2.line(mask, _pt(right_top), _pt(lm[16]), 1, loop)
  return mask.astype(bool), tex


def hair(rng, lm, h, w, scale):
  """Strands falling from above the brows over the forehead and eyes."""
  _, size, _, _ = _face_frame(lm)
  brows = lm[17:27]
  x0, x1 = brows[:, 0].min(), brows[:, 0].max()
  top = brows[:, 1].min() - 0.35 * size
  mask = np.zeros((h, w), np.uint8)
  n = int(rng.integers(15, 50))
  for _ in range(n):
    p = np.array([rng.uniform(x0 - 0.1 * size, x1 + 0.1 * size), top])
    direction = np.array([rng.normal(0.0, 0.4), 1.0])
    length = scale * size * rng.uniform(0.2, 0.6)
    pts = [p]
    steps = 8
    for _ in range(steps):
      direction = direction + rng.normal(0.0, 0.15, 2)
      direction[1] = abs(direction[1])
      pts.append(pts[-1] + direction / np.linalg.norm(direction) * length / steps)
    thick = int(rng.integers(1, max(2, int(0.03 * size)) + 1))
    cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1, thick)
  colour = _HAIR[rng.integers(len(_HAIR))]
  return mask.astype(bool), _shaded(rng, colour, h, w)


def bar(rng, lm, h, w, scale):
  """A microphone (handle and round head) or a cup (body and handle) near the mouth."""
  _, size, _, _ = _face_frame(lm)
  s = scale * size
  mouth = lm[48:68].mean(0) + rng.normal(0.0, 0.08 * size, 2)
  mask = np.zeros((h, w), np.uint8)
  if rng.uniform() < 0.5:  # microphone from below the image towards the mouth
    angle = rng.uniform(np.pi / 4, 3 * np.pi / 4)  # pointing down-ish
    handle = mouth + np.array([np.cos(angle), np.sin(angle)]) * 1.5 * s
    cv2.line(mask, _pt(mouth), _pt(handle), 1, max(int(0.1 * s), 2))
    cv2.circle(mask, _pt(mouth), max(int(0.14 * s), 2), 1, -1)
  else:  # a cup: rotated rectangle with a ring handle
    cw, ch = 0.35 * s, 0.45 * s
    angle = rng.uniform(-20, 20)
    centre = mouth + np.array([0.0, 0.3 * ch])
    box = cv2.boxPoints(((float(centre[0]), float(centre[1])), (cw, ch), angle))
    _poly(mask, box)
    side = rng.choice([-1.0, 1.0])
    ring = centre + np.array([side * 0.6 * cw, 0.0])
    cv2.ellipse(mask, _pt(ring), (max(int(0.18 * cw), 1), max(int(0.25 * ch), 1)), angle, 0, 360,
                1, max(int(0.06 * s), 2))  # fmt: skip
  return mask.astype(bool), texture(rng, h, w)


_DRAW = {
  "polygon": polygon,
  "ellipse": ellipse,
  "hand": hand,
  "sunglasses": sunglasses,
  "face_mask": face_mask,
  "hair": hair,
  "bar": bar,
}


def occlude(
  rng: np.random.Generator,
  landmarks: np.ndarray,
  face: np.ndarray,
  families: tuple[str, ...] = FAMILIES,
  max_occluders: int = 2,
  coverage: tuple[float, float] = (0.05, 0.5),
  tries: int = 6,
):
  """Draws 1..``max_occluders`` occluders over a face, keeping the covered fraction in range.

  Args:
    rng: random generator.
    landmarks: ``(68, 2)`` float projected landmarks.
    face: ``(H, W)`` bool, the rendered face's pixels.
    families: occluder families to draw from.
    max_occluders: most occluders on one face.
    coverage: ``(min, max)`` fraction of the face's pixels covered by all occluders together;
      a draw that leaves the total outside is redrawn smaller (too much) or again (too little),
      up to ``tries`` times, after which the last draw below the maximum is kept (or none).
    tries: redraws per occluder.

  Returns:
    ``(alpha (H, W) bool, colour (H, W, 3) float32, names list[str])``: the union of the
    occluders, their colours (later ones on top) and their families.
  """
  for f in families:
    if f not in _DRAW:
      raise ValueError(f"unknown occluder family {f!r}; expected some of {FAMILIES}")
  h, w = face.shape
  area = max(int(face.sum()), 1)
  alpha = np.zeros((h, w), bool)
  colour = np.zeros((h, w, 3), np.float32)
  names = []
  count = int(rng.integers(1, max_occluders + 1))
  for _ in range(count):
    family = families[rng.integers(len(families))]
    scale = 1.0
    chosen = None
    for _ in range(tries):
      a, c = _DRAW[family](rng, landmarks, h, w, scale)
      total = float((alpha | a)[face].sum()) / area
      if total > coverage[1]:
        scale *= 0.7
        continue
      chosen = (a, c)
      if total >= coverage[0] and (a & face).any():
        break
    if chosen is not None:
      a, c = chosen
      alpha |= a
      colour[a] = c[a]
      names.append(family)
  return alpha, colour, names
