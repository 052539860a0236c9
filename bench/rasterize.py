"""Rasteriser benchmark: forward and forward+backward per image, one JSON line per case.

Forward = project vertices, rasterise, interpolate per-vertex colours; backward = gradient of a
scalar image loss w.r.t. world vertex positions and colours. Compile time is reported
separately, warm-up is excluded and the median of ``--repeats`` runs is reported (the CI machine
is shared, so single runs are noisy).

    .venv/bin/python bench/rasterize.py [--models embedded,embedded-bfm] [--batches 1,12]
        [--size 224]

``--models`` takes any ``focus_jax.model_zoo`` spec (``ict``, ``ict-narrow``, an h5 path).
``ms_per_image_render_fwd_bwd`` times the whole ``pipeline.render_batch`` (3DMM, shading, soft
mask) under the gradient of an image + soft-mask loss w.r.t. all coefficients.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax import testing
from focus_jax.facemodels import zoo
from focus_jax.render import camera, coefficients, interpolate, pipeline, rasterize
from focus_jax.render import morphable_model as mm


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

  _, render_fwd_bwd = _time(jax.grad(render_loss), (coeffs, model, target), repeats)
  return {
    "device": jax.devices()[0].device_kind,
    "model": name,
    "triangles": int(triangles.shape[0]),
    "vertices": int(verts.shape[1]),
    "batch": batch,
    "height": size,
    "width": size,
    "compile_s": round(compile_f + compile_b, 2),
    "ms_per_image_fwd": round(1e3 * fwd / batch, 3),
    "ms_per_image_fwd_bwd": round(1e3 * fwd_bwd / batch, 3),
    "ms_per_image_render_fwd_bwd": round(1e3 * render_fwd_bwd / batch, 3),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "repeats": repeats,
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
