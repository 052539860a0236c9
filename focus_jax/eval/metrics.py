"""Evaluation metrics of FOCUS (SPEC §9): occlusion-mask scores, landmark and photometric errors.

Conventions (as ``focus_jax.losses``): images NHWC ``(B, H, W, C)`` float32 in [0, 1], masks
``(B, H, W)`` float32, landmarks ``(B, 68, 2)`` float32 pixel (x, y) in iBUG-68 order. Masks use
1 = visible face (not occluded). Every metric returns per-image values ``(B,)``;
:func:`summarize` gives their mean and standard deviation over images, :func:`summarize_images`
the same with NaN marking images where a metric is undefined, :func:`landmark_summary` the
landmark table's medians. :func:`forgiven_share` measures what EM's UNet objective cannot see:
the occluder pixels it prefers to call visible. :func:`rotation_errors` and
:func:`rotation_summary` score predicted head rotations against ground-truth ones (synthetic
data, NumPy). Pure jax/numpy; the mask, landmark, photometric and forgiven-share metrics are
jittable.

Two classes are scored inside the rendered region: the original's *visible* class
(:func:`mask_scores`) and the *occluder* class (:func:`occluder_scores`, occluder = not visible),
whose scores are the usual segmentation scores of the occluders. On images without any occluder
the occluder scores are meaningless (no positive pixel); :func:`false_alarm` scores those.

Mask scores follow the original's ``util/evaluation.py`` exactly, so numbers compare with its
tables: areas are sums of mask products (soft masks give soft areas, as in the original, which
scores the UNet's continuous output; threshold before calling for hard scores), counted only
inside the rendered region, each clamped to at least one pixel before the ratios.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from focus_jax import losses

# iBUG-68 outer eye corners (0-based) used to normalise landmark errors.
OUTER_EYE_CORNERS = (36, 45)
# The rotation angles of a pose ``(rx, ry, rz, tx, ty, tz)``, in that order.
ROTATIONS = ("pitch", "yaw", "roll")


def _check_masks(gt_mask, est_mask, render_mask) -> None:
  if gt_mask.ndim != 3:
    raise ValueError(f"gt_mask: expected shape (B, H, W), got {tuple(gt_mask.shape)}")
  for name, m in (("est_mask", est_mask), ("render_mask", render_mask)):
    if m.shape != gt_mask.shape:
      raise ValueError(f"{name}: shape {tuple(m.shape)} differs from gt_mask {gt_mask.shape}")


def confusion_areas(
  gt_mask: jax.Array, est_mask: jax.Array, render_mask: jax.Array
) -> dict[str, jax.Array]:
  """Per-image confusion areas inside the rendered region, each clamped to >= 1 pixel.

  With G the ground truth, E the estimate and R the rendered mask (1 = visible):
  ``TP = sum G E R``, ``TN = sum (1-G)(1-E) R``, ``FP = sum (1-G) E R``, ``FN = sum G (1-E) R``,
  then ``max(area, 1)`` each.

  Args:
    gt_mask: ``(B, H, W)`` float32 ground-truth visibility in {0, 1}.
    est_mask: ``(B, H, W)`` float32 estimated visibility in [0, 1].
    render_mask: ``(B, H, W)`` float32 rendered face region in {0, 1}.

  Returns:
    ``{'tp', 'tn', 'fp', 'fn'}``, each ``(B,)`` float32.
  """
  _check_masks(gt_mask, est_mask, render_mask)
  g, e, r = gt_mask, est_mask, render_mask

  def area(x):
    return jnp.maximum(jnp.sum(x * r, axis=(1, 2)), 1.0)

  return {
    "tp": area(g * e),
    "tn": area((1.0 - g) * (1.0 - e)),
    "fp": area((1.0 - g) * e),
    "fn": area(g * (1.0 - e)),
  }


def mask_scores(
  gt_mask: jax.Array, est_mask: jax.Array, render_mask: jax.Array
) -> dict[str, jax.Array]:
  """Per-image occlusion-segmentation scores of SPEC §9 (positive class = visible).

  From the clamped areas of :func:`confusion_areas`: accuracy = (TP+TN)/(TP+TN+FP+FN),
  precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN). An image whose render is
  empty has all areas 1 and scores 0.5 for all four (F1 = 2 / (2 + 1 + 1)), as the original's
  ``mask_accuracy`` computes it. (SPEC §9 says F1 2/3 there; its own formula and the original
  code give 0.5.)

  Args:
    gt_mask: ``(B, H, W)`` float32 ground-truth visibility in {0, 1}.
    est_mask: ``(B, H, W)`` float32 estimated visibility in [0, 1].
    render_mask: ``(B, H, W)`` float32 rendered face region in {0, 1}.

  Returns:
    ``{'accuracy', 'precision', 'recall', 'f1'}``, each ``(B,)`` float32.
  """
  a = confusion_areas(gt_mask, est_mask, render_mask)
  tp, tn, fp, fn = a["tp"], a["tn"], a["fp"], a["fn"]
  return {
    "accuracy": (tp + tn) / (tp + tn + fp + fn),
    "precision": tp / (tp + fp),
    "recall": tp / (tp + fn),
    "f1": 2.0 * tp / (2.0 * tp + fp + fn),
  }


def occluder_scores(
  gt_mask: jax.Array, est_mask: jax.Array, render_mask: jax.Array
) -> dict[str, jax.Array]:
  """Per-image scores of the occluder class (occluder = not visible) inside the rendered region.

  The occluder class swaps the roles of the visible-class areas of :func:`confusion_areas`
  (clamped to >= 1 pixel each, as the original clamps): occluder TP = visible TN, occluder
  FP = visible FN (visible skin marked occluded), occluder FN = visible FP (a missed occluder).
  precision = TN/(TN+FN), recall = TN/(TN+FP), F1 = 2TN/(2TN+FN+FP), IoU = TN/(TN+FN+FP).
  The clamping makes an empty render score 1/2, 1/2, 1/2 and 1/3.

  Args:
    gt_mask: ``(B, H, W)`` float32 ground-truth visibility in {0, 1}.
    est_mask: ``(B, H, W)`` float32 estimated visibility in [0, 1] (soft values give soft
      areas, as in :func:`confusion_areas`).
    render_mask: ``(B, H, W)`` float32 rendered face region in {0, 1}.

  Returns:
    ``{'precision', 'recall', 'f1', 'iou'}``, each ``(B,)`` float32.
  """
  a = confusion_areas(gt_mask, est_mask, render_mask)
  tp, fp, fn = a["tn"], a["fn"], a["fp"]
  return {
    "precision": tp / (tp + fp),
    "recall": tp / (tp + fn),
    "f1": 2.0 * tp / (2.0 * tp + fp + fn),
    "iou": tp / (tp + fp + fn),
  }


def false_alarm(est_mask: jax.Array, render_mask: jax.Array) -> jax.Array:
  """Per-image fraction of the rendered region marked occluded: ``sum (1-E) R / max(sum R, 1)``.

  Meant for images whose ground truth has no occluder on the face, where every pixel marked
  occluded is a false alarm (the caller selects those images; no ground-truth mask is needed).

  Args:
    est_mask: ``(B, H, W)`` float32 estimated visibility in [0, 1].
    render_mask: ``(B, H, W)`` float32 rendered face region in {0, 1}.

  Returns:
    ``(B,)`` float32 fractions in [0, 1] (0 for an empty render).
  """
  if est_mask.ndim != 3 or render_mask.shape != est_mask.shape:
    raise ValueError(
      f"expected est_mask and render_mask of equal shape (B, H, W), got "
      f"{tuple(est_mask.shape)} and {tuple(render_mask.shape)}"
    )
  marked = jnp.sum((1.0 - est_mask) * render_mask, axis=(1, 2))
  return marked / jnp.maximum(jnp.sum(render_mask, axis=(1, 2)), 1.0)


def image_scores(
  gt_mask: jax.Array, est_mask: jax.Array, render_mask: jax.Array
) -> dict[str, jax.Array]:
  """Every per-image mask metric of an evaluation, in one call (one jitted program).

  Args:
    gt_mask: ``(B, H, W)`` float32 ground-truth visibility in {0, 1}.
    est_mask: ``(B, H, W)`` float32 estimated visibility in [0, 1].
    render_mask: ``(B, H, W)`` float32 rendered face region in {0, 1}.

  Returns:
    ``visible_{accuracy,precision,recall,f1}`` (:func:`mask_scores`),
    ``occluder_{precision,recall,f1,iou}`` (:func:`occluder_scores`) and ``false_alarm``
    (:func:`false_alarm`), each ``(B,)`` float32.
  """
  visible = mask_scores(gt_mask, est_mask, render_mask)
  occluder = occluder_scores(gt_mask, est_mask, render_mask)
  return {
    **{f"visible_{k}": v for k, v in visible.items()},
    **{f"occluder_{k}": v for k, v in occluder.items()},
    "false_alarm": false_alarm(est_mask, render_mask),
  }


def landmark_error(
  landmarks: jax.Array, predicted: jax.Array, normalize_by: tuple[int, int] = OUTER_EYE_CORNERS
) -> dict[str, jax.Array]:
  """Per-image mean Euclidean landmark error, in pixels and normalised by the eye distance.

      pixels[b]     = mean_k || lm_gt[b, k] - lm_pred[b, k] ||_2
      normalized[b] = pixels[b] / max(|| lm_gt[b, 36] - lm_gt[b, 45] ||_2, 1e-6)

  (the inter-ocular distance between the ground truth's outer eye corners).

  Args:
    landmarks: ``(B, 68, 2)`` float32 ground-truth pixel landmarks.
    predicted: ``(B, 68, 2)`` float32 predicted landmarks.
    normalize_by: the two landmark indices whose distance normalises.

  Returns:
    ``{'pixels', 'normalized'}``, each ``(B,)`` float32.
  """
  if landmarks.ndim != 3 or predicted.shape != landmarks.shape:
    raise ValueError(
      f"landmarks/predicted: expected equal (B, N, 2) shapes, got {tuple(landmarks.shape)} "
      f"and {tuple(predicted.shape)}"
    )
  per_point = jnp.linalg.norm(landmarks - predicted, axis=-1)
  pixels = jnp.mean(per_point, axis=-1)
  i, j = normalize_by
  ocular = jnp.linalg.norm(landmarks[:, i] - landmarks[:, j], axis=-1)
  return {"pixels": pixels, "normalized": pixels / jnp.maximum(ocular, 1e-6)}


def photometric_error(image: jax.Array, render: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-image mean absolute error inside the visible region, on the 0-255 scale.

      err[b] = 255 * sum_{y,x,c} M |I - R| / (C * max(sum_{y,x} M, 1))

  i.e. the mean over visible pixels and channels of the absolute difference (the original's
  ``pixel_valid_MAE`` with a one-channel mask, per image).

  Args:
    image: ``(B, H, W, C)`` float32 target images in [0, 1].
    render: ``(B, H, W, C)`` float32 renders.
    mask: ``(B, H, W)`` float32 visible region (rendered mask times visibility).

  Returns:
    ``(B,)`` float32 errors in grey levels.
  """
  if image.ndim != 4 or render.shape != image.shape or mask.shape != image.shape[:3]:
    raise ValueError(
      f"expected image/render (B, H, W, C) and mask (B, H, W), got {tuple(image.shape)}, "
      f"{tuple(render.shape)}, {tuple(mask.shape)}"
    )
  channels = image.shape[-1]
  abs_err = jnp.sum(jnp.abs(mask[..., None] * (image - render)), axis=(1, 2, 3))
  area = jnp.maximum(jnp.sum(mask, axis=(1, 2)), 1.0)
  return 255.0 * abs_err / (channels * area)


def forgiven_share(
  image: jax.Array,
  render: jax.Array,
  render_mask: jax.Array,
  gt_mask: jax.Array,
  area_weight: float,
  neighbour_weight: float,
  window: int,
  margin: int = 2,
) -> jax.Array:
  """Per image, the share of occluder pixels that EM's UNet objective prefers to call visible.

  Take an occluder pixel ``p`` inside the render, at least ``margin`` pixels from the occluder's
  edge (in the interior of the neighbour window's reach), with every face pixel marked visible.
  Marking ``p`` occluded instead changes the UNet objective (SPEC §6, without the ArcFace terms)
  by ``area_weight / sum(render_mask)`` (area term) minus ``neighbour_weight * n(p) / ((H - 2m)
  (W - 2m))`` (neighbour term, ``n(p)`` of :func:`losses.neighbour_distance` with ``M`` the
  rendered mask, ``m = window // 2``); the binary term is 0 either way. The pixel is *forgiven*
  when calling it visible is cheaper: ``n(p) < area_weight (H - 2m) (W - 2m) / (neighbour_weight
  sum(render_mask))``. A residual criterion cannot see forgiven pixels however long it trains.

  Args:
    image: ``(B, H, W, 3)`` float32 images.
    render: ``(B, H, W, 3)`` float32 renders.
    render_mask: ``(B, H, W)`` float32 rendered region.
    gt_mask: ``(B, H, W)`` float32 ground-truth visibility (0 = occluded).
    area_weight: the UNet objective's area weight (``config.loss.em_unet.area``).
    neighbour_weight: its neighbour weight (``config.loss.em_unet.neighbour``).
    window: the neighbour window (``config.loss.neighbour_window``).
    margin: pixels kept away from the occluder's edge (outside the image counts as occluder).

  Returns:
    ``(B,)`` float32 shares; NaN for an image without such an occluder pixel.
  """
  _check_masks(gt_mask, render_mask, render_mask)
  _, height, width = gt_mask.shape
  m = window // 2
  face = render_mask > 0.5
  occluder = (gt_mask < 0.5).astype(jnp.float32)
  side = 2 * margin + 1
  # A minimum over the square around each pixel, padded with 1: outside counts as occluder.
  core = lax.reduce_window(
    occluder, 1.0, lax.min, (1, side, side), (1, 1, 1), ((0, 0), (margin, margin), (margin, margin))
  )
  region = (face & (core > 0.5))[:, m : height - m, m : width - m]
  residual = losses.neighbour_distance(image, render, render_mask, window)
  interior = (height - 2 * m) * (width - 2 * m)
  price = area_weight * interior / (neighbour_weight * jnp.maximum(jnp.sum(face, axis=(1, 2)), 1))
  forgiven = jnp.sum(region & (residual < price[:, None, None]), axis=(1, 2))
  count = jnp.sum(region, axis=(1, 2))
  return jnp.where(count > 0, forgiven / jnp.maximum(count, 1), jnp.nan).astype(jnp.float32)


def summarize(per_image: dict[str, jax.Array]) -> dict[str, float]:
  """Mean and (population, ddof 0) standard deviation over images of each per-image metric.

  Args:
    per_image: name -> ``(N,)`` per-image values (concatenate batches first).

  Returns:
    ``{'<name>_mean': .., '<name>_std': ..}`` as Python floats.
  """
  out = {}
  for name, values in per_image.items():
    values = jnp.asarray(values, jnp.float32).reshape(-1)
    out[f"{name}_mean"] = float(jnp.mean(values))
    out[f"{name}_std"] = float(jnp.std(values))
  return out


def summarize_images(per_image: dict[str, np.ndarray]) -> dict[str, float | None]:
  """Mean and (population) standard deviation over images, NaN marking undefined images.

  Args:
    per_image: name -> ``(N,)`` per-image values; NaN where the metric is undefined for an
      image (e.g. occluder scores of an unoccluded image).

  Returns:
    ``{'<name>': mean, '<name>_std': std}`` over the finite values, as Python floats; both
    ``None`` when no image defines the metric.
  """
  out = {}
  for name, values in per_image.items():
    values = np.asarray(values, np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    defined = values.size > 0
    out[name] = float(np.mean(values)) if defined else None
    out[f"{name}_std"] = float(np.std(values)) if defined else None
  return out


def summarize_groups(
  per_image: dict[str, np.ndarray], groups: list[tuple[str, ...]]
) -> dict[str, dict[str, float | int | None]]:
  """:func:`summarize_images` over the images of each group, an image counting in every group
  it belongs to (e.g. each occluder family drawn over it).

  Args:
    per_image: name -> ``(N,)`` per-image values, NaN where undefined.
    groups: ``N`` tuples of group names, one per image (``()``: in no group).

  Returns:
    ``{group: {'num_images': images of the group defining the first metric, '<name>': mean,
    '<name>_std': std}}``, groups in sorted order.
  """
  names = sorted({g for image_groups in groups for g in image_groups})
  first = next(iter(per_image.values()), np.zeros(len(groups)))
  out = {}
  for group in names:
    member = np.array([group in image_groups for image_groups in groups], bool)
    values = {k: np.asarray(v, np.float64)[member] for k, v in per_image.items()}
    count = int(np.sum(np.isfinite(np.asarray(first, np.float64)[member])))
    out[group] = {"num_images": count, **summarize_images(values)}
  return out


def landmark_summary(pixels: np.ndarray, normalized: np.ndarray) -> dict[str, float]:
  """The landmark table of an evaluation from :func:`landmark_error`'s per-image values.

  Args:
    pixels: ``(N,)`` per-image mean landmark errors in pixels.
    normalized: ``(N,)`` the same divided by the inter-ocular distance.

  Returns:
    ``{'px_median', 'nme_median', 'nme_mean'}`` over images.
  """
  pixels, normalized = np.asarray(pixels, np.float64), np.asarray(normalized, np.float64)
  if pixels.size == 0 or pixels.shape != normalized.shape:
    raise ValueError(
      f"expected equal non-empty (N,) arrays, got {pixels.shape} and {normalized.shape}"
    )
  return {
    "px_median": float(np.median(pixels)),
    "nme_median": float(np.median(normalized)),
    "nme_mean": float(np.mean(normalized)),
  }


def rotation_errors(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """Absolute errors of the predicted rotation angles, in degrees.

  Args:
    predicted: ``(N, 6)`` poses ``(rx, ry, rz, tx, ty, tz)``, angles in radians.
    truth: ``(N, 6)`` ground-truth poses.

  Returns:
    ``(N, 3)`` float64 ``|predicted - truth|`` of pitch, yaw and roll, wrapped into [0, 180].
  """
  predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
  if predicted.ndim != 2 or predicted.shape[1] != 6 or predicted.shape != truth.shape:
    raise ValueError(f"expected equal (N, 6) poses, got {predicted.shape} and {truth.shape}")
  diff = np.degrees(predicted[:, :3] - truth[:, :3])
  return np.abs((diff + 180.0) % 360.0 - 180.0)


def rotation_summary(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
  """Median rotation errors and the gain of each predicted angle on the true one.

  The gain is the least-squares slope of the predicted angle on the true angle over the images:
  1 for an unbiased predictor; below 1 when the encoder under-rotates and explains the rest of
  the landmark displacement by shape and expression, which is what corrupts its 3D shape.

  Args:
    predicted: ``(N, 6)`` poses, angles in radians (N >= 2).
    truth: ``(N, 6)`` ground-truth poses.

  Returns:
    ``{'<axis>_err_deg': median error, '<axis>_gain': slope}`` for pitch, yaw and roll (gain
    None where the true angle does not vary).
  """
  errors = rotation_errors(predicted, truth)
  if errors.shape[0] < 2:
    raise ValueError(f"expected at least 2 poses, got {errors.shape[0]}")
  truth = np.asarray(truth, np.float64)[:, :3]
  predicted = np.asarray(predicted, np.float64)[:, :3]
  truth, predicted = truth - truth.mean(0), predicted - predicted.mean(0)
  out = {}
  for i, axis in enumerate(ROTATIONS):
    x, y = truth[:, i], predicted[:, i]
    out[f"{axis}_err_deg"] = float(np.median(errors[:, i]))
    out[f"{axis}_gain"] = float(x @ y / (x @ x)) if x @ x > 0 else None
  return out
