"""Rasteriser benchmark: forward and forward+backward per image, one JSON line per case.

Forward = project vertices, rasterise, interpolate per-vertex colours; backward = gradient of a
scalar image loss w.r.t. world vertex positions and colours. Compile time is reported
separately, warm-up is excluded and the median of ``--repeats`` runs is reported (the CI machine
is shared, so single runs are noisy).

    .venv/bin/python bench/rasterize.py [--models embedded,embedded-bfm] [--batches 1,12]
        [--size 224]

``--models`` takes any ``focus_jax.model_zoo`` spec (``ict``, ``ict-narrow``, an h5 path).

``ms_per_image_shaded_fwd_bwd`` is the work of the original FOCUS renderer's timing anchor
(532 ms per image for ``L = sum(W * image)`` forward+backward, batch 12, 224 x 224, a
55,680-triangle model, 2 CPU cores): vertex normals + SH shading + rasterisation +
interpolation, gradient w.r.t. vertices, colours and SH coefficients; ``x_original_shaded`` is
the speed-up over that anchor. ``ms_per_image_render_fwd_bwd`` times the whole
``pipeline.render_batch`` (3DMM, shading, soft mask) under the gradient of an image + soft-mask
loss w.r.t. all coefficients. ``matmul_2048_s`` is the machine's speed at the time
(``bench/machine.py``): the targets were set at 0.08-0.09 s.

GPU/TPU: every case is one jitted program over the whole batch (no Python loop over images, no
host transfer inside); the timings include only ``block_until_ready`` on the result.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import machine
import numpy as np

from focus_jax import testing
from focus_jax.facemodels import zoo
from focus_jax.render import camera, coefficients, interpolate, pipeline, rasterize
from focus_jax.render import morphable_model as mm

# The original FOCUS renderer's anchor: ms per image, normals + shading + raster + interpolation.
ORIGINAL_SHADED_MS = 532.0


def _inputs(model, batch, size):
  coeffs = [testing.random_coefficients(model, s) for s in range(batch)]
  verts = jnp.stack([mm.vertices(model, c.shape, c.expression) for c in coeffs])
  poses = jnp.stack([jnp.asarray(c.pose) for c in coeffs])
  colors = jnp.stack([mm.albedo(model, c.color) for c in coeffs])
  target = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (batch, size, size, 3)), jnp.float32)
  return verts, poses, colors, target


def _image(verts, pose, colors, triangles, size):
  projected = camera.project(camera.camera_from_pose(pose, size, size), verts)
  frags = rasterize.rasterize(projected, triangles, height=size, width=size)
  return interpolate.interpolate(colors, frags, triangles)


def _shaded_image(verts, poses, albedo, light, triangles, vertex_faces, size):
  """The anchor's work for a batch: ``(B, V, 3)`` vertices and albedo, ``(B, 27)`` light."""
  cams = jax.vmap(camera.camera_from_pose, (0, None, None))(poses, size, size)
  projected = jax.vmap(camera.project)(cams, verts)
  colors = pipeline.shaded_colors(verts, albedo, light, cams.rotation, triangles, vertex_faces)
  raster = lambda p: rasterize.rasterize(p, triangles, height=size, width=size)
  fragments = jax.vmap(raster)(projected)
  return jax.vmap(interpolate.interpolate, (0, 0, None))(colors, fragments, triangles)


def _time(fn, args, repeats):
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))  # warm-up
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - start)
  return compile_s, float(np.median(runs))


def run_case(name, model, batch, size, repeats):
  verts, poses, colors, target = _inputs(model, batch, size)
  triangles = model.triangles

  def forward(verts, poses, colors, triangles):
    image = jax.vmap(_image, (0, 0, 0, None, None))(verts, poses, colors, triangles, size)
    return image

  def loss(verts, colors, poses, triangles, target):
    return jnp.mean((forward(verts, poses, colors, triangles) - target) ** 2)

  grad = jax.grad(loss, argnums=(0, 1))
  compile_f, fwd = _time(forward, (verts, poses, colors, triangles), repeats)
  compile_b, fwd_bwd = _time(grad, (verts, colors, poses, triangles, target), repeats)
  coeffs = coefficients.stack([testing.random_coefficients(model, s) for s in range(batch)])

  def render_loss(coeffs, model, target):
    out = pipeline.render_batch(model, coeffs, size, size)
    return jnp.mean((out.image - target) ** 2) + jnp.mean(out.soft_mask)

  light = jnp.asarray(coeffs.light)

  def shaded_loss(verts, colors, light, poses, triangles, vertex_faces, target):
    image = _shaded_image(verts, poses, colors, light, triangles, vertex_faces, size)
    return jnp.sum(target * image)

  shaded_args = (verts, colors, light, poses, triangles, model.vertex_faces, target)
  compile_s, shaded_fwd_bwd = _time(jax.grad(shaded_loss, (0, 1, 2)), shaded_args, repeats)
  _, render_fwd_bwd = _time(jax.grad(render_loss), (coeffs, model, target), repeats)
  return {
    "device": jax.devices()[0].device_kind,
    "model": name,
    "triangles": int(triangles.shape[0]),
    "vertices": int(verts.shape[1]),
    "batch": batch,
    "height": size,
    "width": size,
    "compile_s": round(compile_f + compile_b + compile_s, 2),
    "ms_per_image_fwd": round(1e3 * fwd / batch, 3),
    "ms_per_image_fwd_bwd": round(1e3 * fwd_bwd / batch, 3),
    "ms_per_image_shaded_fwd_bwd": round(1e3 * shaded_fwd_bwd / batch, 3),
    "x_original_shaded": round(ORIGINAL_SHADED_MS / (1e3 * shaded_fwd_bwd / batch), 1),
    "ms_per_image_render_fwd_bwd": round(1e3 * render_fwd_bwd / batch, 3),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "repeats": repeats,
    "load_average_1min": round(os.getloadavg()[0], 2),
    "matmul_2048_s": machine.matmul_seconds(),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="embedded,embedded-bfm")
  parser.add_argument("--batches", default="1,12")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  for name in args.models.split(","):
    model = zoo.load_model(name)
    for batch in (int(b) for b in args.batches.split(",")):
      print(json.dumps(run_case(name, model, batch, args.size, args.repeats)), flush=True)


if __name__ == "__main__":
  main()
