"""Loss and NoW-evaluation benchmarks; one JSON line per case.

Cases:
- ``encoder_losses``: the EM encoder-step loss bundle without networks (masked reconstruction +
  landmarks + statistical regulariser + area + perceptual on given embeddings, weighted as
  SPEC §7), forward and backward (gradients w.r.t. render, projected landmarks, coefficients and
  render embedding), jitted, batch 12 at 224x224; compile timed separately, median of N runs.
- ``now_error``: NoW-style scan-to-mesh error (crop, landmark similarity, refinement, exact
  distances) of BFM-sized embedded-model meshes (~28k vertices, 56k triangles) against a scan
  (a noise-free instance of the same model, ~25k points in the crop); meshes per second (wall)
  and each job's CPU milliseconds per mesh, one line per ``--processes`` count.

Usage: ``python bench/losses.py [--case encoder_losses|now_error|all] [--processes 1,2]``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import time

import numpy as np


def bench_encoder_losses(batch: int, size: int, runs: int) -> dict:
  import jax
  import jax.numpy as jnp

  from focus_jax import losses, objectives

  weights = objectives.FocusLossWeights().encoder
  rng = np.random.default_rng(0)
  f32 = lambda *s, lo=0.0, hi=1.0: jnp.asarray(rng.uniform(lo, hi, s), jnp.float32)
  image, render = f32(batch, size, size, 3), f32(batch, size, size, 3)
  render_mask = jnp.asarray(rng.uniform(size=(batch, size, size)) < 0.6, jnp.float32)
  unet_mask = f32(batch, size, size)
  landmarks, projected = f32(batch, 68, 2, hi=size), f32(batch, 68, 2, hi=size)
  shape, expression, color = f32(batch, 80), f32(batch, 64), f32(batch, 80)
  emb_render, emb_image = f32(batch, 512, lo=-1), f32(batch, 512, lo=-1)

  def loss_fn(params, image, render_mask, unet_mask, landmarks, emb_image):
    render, projected, shape, expression, color, emb_render = params
    mask = render_mask * unet_mask
    terms = {
      "masked_rec": losses.masked_reconstruction(image, render, mask),
      "landmarks": losses.landmark_loss(landmarks, projected),
      "stat_reg": losses.statistical_regularizer(shape, expression, color),
      "area": losses.area_loss(render_mask, unet_mask),
      "perceptual": losses.perceptual_loss(emb_render, emb_image),
    }
    return weights.total(terms)

  step = jax.jit(jax.value_and_grad(loss_fn))
  params = (render, projected, shape, expression, color, emb_render)
  args = (params, image, render_mask, unet_mask, landmarks, emb_image)
  t0 = time.perf_counter()
  jax.block_until_ready(step(*args))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(step(*args))
    times.append(time.perf_counter() - t0)
  device = jax.devices()[0]
  return {
    "case": "encoder_losses",
    "device": f"{device.platform}:{device.device_kind}",
    "batch": batch,
    "height": size,
    "width": size,
    "forward_backward_ms_median": 1e3 * float(np.median(times)),
    "compile_s": compile_s,
    "runs": runs,
  }


def _meshes(count: int):
  """A "scan" (identity of seed 0) and ``count`` predictions of it: its shape coefficients plus
  N(0, 0.7^2) noise, which gives NoW-like errors (median ~1 mm) rather than unrelated faces."""
  from focus_jax import testing
  from focus_jax.render import morphable_model as mm

  model = testing.bfm_sized_model()
  triangles = np.asarray(model.triangles)
  now_idx = np.asarray(model.now_landmarks)
  coeffs = testing.random_coefficients(model, 0)
  zero = np.zeros_like(coeffs.expression)
  rng = np.random.default_rng(1)
  out = []
  for i in range(count + 1):
    noise = 0.0 if i == 0 else rng.normal(0, 0.7, coeffs.shape.shape).astype(np.float32)
    out.append(np.asarray(mm.vertices(model, coeffs.shape + noise, zero), np.float64))
  return out, triangles, now_idx


def _now_job(args):
  from focus_jax.eval import now

  scan, pred, triangles, now_idx = args
  t0 = time.process_time()
  result = now.scan_to_mesh_error(scan, scan[now_idx], pred, triangles, pred[now_idx])
  return result.distances, result.iterations, time.process_time() - t0


def bench_now(count: int, processes: int) -> dict:
  meshes, triangles, now_idx = _meshes(count)
  scan = meshes[0]
  jobs = [(scan, pred, triangles, now_idx) for pred in meshes[1:]]
  _now_job(jobs[0])  # Warm-up (imports, allocator).
  if processes > 1:
    spawn = multiprocessing.get_context("spawn")  # The parent has JAX threads: do not fork.
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=spawn) as pool:
      list(pool.map(_now_job, jobs[:processes]))  # Start and warm the workers untimed.
      t0 = time.perf_counter()
      results = list(pool.map(_now_job, jobs))
      elapsed = time.perf_counter() - t0
  else:
    t0 = time.perf_counter()
    results = [_now_job(j) for j in jobs]
    elapsed = time.perf_counter() - t0
  distances = np.concatenate([r[0] for r in results])
  return {
    "case": "now_error",
    "vertices": int(meshes[0].shape[0]),
    "triangles": int(triangles.shape[0]),
    "meshes": count,
    "processes": processes,
    "cpu_count": os.cpu_count(),
    "meshes_per_s": count / elapsed,
    "ms_per_mesh": 1e3 * elapsed / count,
    # Each job's own CPU time: independent of other load on a shared machine.
    "cpu_ms_per_mesh": 1e3 * float(np.mean([r[2] for r in results])),
    "scan_points_per_mesh": int(distances.size // count),
    "mean_iterations": float(np.mean([r[1] for r in results])),
    "median_mm": float(np.median(distances)),
    "mean_mm": float(np.mean(distances)),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", default="all", choices=["all", "encoder_losses", "now_error"])
  parser.add_argument("--batch", type=int, default=12)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--runs", type=int, default=20)
  parser.add_argument("--meshes", type=int, default=20)
  parser.add_argument(
    "--processes", default="1,2", help="comma-separated worker-process counts, one line each"
  )
  args = parser.parse_args()
  if args.case in ("all", "encoder_losses"):
    print(json.dumps(bench_encoder_losses(args.batch, args.size, args.runs)), flush=True)
  if args.case in ("all", "now_error"):
    for processes in args.processes.split(","):
      print(json.dumps(bench_now(args.meshes, int(processes))), flush=True)


if __name__ == "__main__":
  main()
