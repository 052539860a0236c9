"""Training-step benchmark: images/s of every jitted update step, one JSON line per case.

Times exactly the programs that training runs: the steps come from ``train.compiled_steps``
(``make_steps`` under ``jax.jit`` with the state donated and replicated out-shardings), the state
from ``train.init_state`` on the networks of ``train.build_networks``, the frozen inputs from
``train.frozen_inputs``, on a one-device mesh of ``sharding.make_mesh``. Cases (``--stages``):

- ``stage1``: the stage-1 (``pretrain``) encoder step;
- ``unet_pretrain``: the UNet step on the frozen encoder's pseudo labels;
- ``em_encoder`` / ``em_unet``: the two EM steps.

Configs (``--configs``): ``full`` is SPEC §7 at full size (ResNet-50 encoder, UNet base 64,
ArcFace IResNet-50 with random weights written to a temporary ``.npz``, so the perceptual,
preserve and dist terms are computed as in the original); ``cpu`` is the ``:cpu`` recipe
(ResNet-18 width 16, UNet base 8, no ArcFace weights, its own 96 px images unless ``--height``).
Both on ``--model`` (default ``embedded-bfm``, 55,598 triangles), batch ``--batch`` (12).

Per case: ``compile_s`` (lower + compile, separate), ``--warmup`` untimed steps (1), then the
median of ``--repeats`` steps, each ended by ``block_until_ready`` on the new state. Each case
runs in a fresh subprocess so that ``peak_rss_mb`` (``ru_maxrss``: compilation included) is the
case's own. ``hlo_convolutions`` counts the convolutions of the compiled program and ``gflops``
is XLA's cost analysis: together they show what a step differentiates (see below).
``--breakdown`` adds one line per sub-part (encoder, render, UNet, ArcFace forward and
forward+backward) so that the time of each step can be attributed. ``matmul_2048_s`` is the
machine's speed at the time (``bench/machine.py``).

    .venv/bin/python bench/train_step.py [--stages stage1,unet_pretrain,em_encoder,em_unet]
        [--configs full,cpu] [--batch 12] [--height 224] [--repeats 3] [--warmup 1] [--breakdown]

Anchor (the original PyTorch code, 2 cores of this machine class, batch 12, 224 px, ArcFace on):
stage-1 step 15.7 s, EM encoder step 48.8 s (20.9 s of it the backward pass through the UNet
whose gradients it discards), EM UNet step 50.9 s, peak RSS 9.4 GB. ``anchor_s`` and
``speedup_vs_anchor`` are given for full-size cases at batch 12 and 224 px.

What each step differentiates (``objectives`` and ``train.make_steps``): ``jax.value_and_grad``
is taken w.r.t. the updated network's parameters only; the other network and ArcFace are closed
over. The EM encoder step feeds the UNet a ``stop_gradient``-ed render, so no tangent enters the
UNet and its backward pass is never built (the original ran it and threw the gradients away);
the UNet steps render with the encoder's output under ``stop_gradient`` (the encoder and the
renderer run forward only); ArcFace features of the input image are constants of every step
(forward only), and the masked image's shallow ArcFace features are computed once and shared by
the preserve and dist terms (one backward pass through them, not two).

Measured (``--configs full --warmup 0 --repeats 1``, one step per case, 2 cores with nothing
else running, 1-min load 1.5-1.9, matmul 0.10-0.15 s; 1 December 2026):

    case           s/step  CPU-s/step  GFLOP  compile s  peak RSS MB  anchor s  vs anchor
    stage1           12.7        22.4    670         43         5137      15.7      1.24x
    em_encoder       26.6        48.5   1843         59         6281      48.8      1.83x
    unet_pretrain    43.3        81.6   2488         28         7529         -          -
    em_unet     45.2-51.0   84.4-94.9   2618         33         8204      50.9  1.00-1.13x

(30 November, before the patch-tile kernel gradients of ``models.conv``: stage1 11.7 s,
em_encoder 26.4, em_unet 57.5; the machine's speed moves these by +-15 % from hour to hour. Side
by side in one window, before/after alternated, the em_unet step went 50.3 -> 45.2 s and 59.5 ->
51.0 s, 95.0 -> 84.4 and 112.4 -> 94.9 CPU-seconds, peak RSS 7,994 -> 8,204 and 7,921 -> 8,098
MB, with tiles of one image's rows; the final tiles, which span the batch so that batch sharding
stays local, measured 46.3 s, 87.4 CPU-seconds and 8,159 MB (matmul 0.097 s). Its UNet's kernel
gradients at 224, 112 and 56 px are 1.4-1.9x faster; stage 1 and the EM encoder step gain only
the ResNet stem's, ~0.1 s.)

The same command in a later hour, when the machine ran at the speed the anchors were measured
at (matmul 0.083-0.092 s, the anchors' 0.08-0.09; ``--warmup 1 --repeats 2``, 1 December 2026):

    case           s/step  CPU-s/step  compile s  peak RSS MB  anchor s  vs anchor
    stage1            6.3        11.3         23         5198      15.7      2.48x
    em_encoder       14.4        26.8         40         6275      48.8      3.38x
    unet_pretrain    28.1        53.2         15         7248         -          -
    em_unet     29.2-31.2   54.3-58.2         21         8109      50.9  1.63-1.75x

(three more em_unet runs that hour: 29.6-29.9 s). At that speed stage 1 and the
EM encoder step are past 2x; the EM UNet step is not. Its sub-parts then (``--breakdown``): UNet
forward + backward 26.1 s (forward alone 7.7-8.3), encoder forward 0.9, ArcFace forward 0.9 and
forward + backward to the input 2.0 (shallow features 0.5), render 0.06 forward.

The 2x target is not met by the EM UNet step; peak RSS is below the original's 9.4 GB in every
case. Each step does
only the work it needs (the EM encoder step has no UNet backward; the EM UNet step no encoder
backward). The EM UNet step is the furthest from the target: it trains the base-64 UNet at 224
px, and in its profile (``jax.profiler``) 36 of 51 op-seconds are XLA's forward and
input-gradient convolutions, which run at XLA:CPU's rate (next paragraph); 2x would need them
faster. Two fixes behind these numbers: the matmul kernel gradients' padded inputs are made in
the backward pass (they were computed in the forward pass and one per layer kept alive: EM UNet
step temporaries 6.58 -> 5.33 GB, peak RSS 9,489 -> 8,226 MB), and the UNet's x2 upsampling
sums its gradient after a fusion barrier (``unet.upsample2x``; 59.5 -> 57.5 s).

Where the time goes (2 shared cores, November 2026; ``--breakdown`` and a convolution
micro-benchmark). XLA's CPU convolutions run at 50-60 GFLOP per CPU-second forward and for the
gradient w.r.t. their input, but at 3-7 for large gradients w.r.t. their kernel (the
backward-filter convolution) and 0.3 for 1x1 kernels. ``models.conv.conv2d`` (every network's
convolution) therefore takes the kernel gradients of 1x1 layers and of layers from 3e8
multiply-adds on as matmuls. Micro-benchmark, batch 12, CPU ms of the kernel gradient, XLA vs
matmuls (load 6-10): 3x3 64->64 at 56 px 538 vs 225 (5.1 vs 12.3 GFLOP/CPU-s), 3x3 128->128 at
28 px 391 vs 113, 3x3 64->64 at 112 px 2876 vs 911, 3x3 6->64 at 224 px 1403 vs 541, 1x1 256->64
at 56 px 936 vs 54; small layers keep XLA's (3x3 8->8 at 64 px 4.4 vs 8.1); near the threshold
the two are close (4.5e8: 3x3 32->32 at 64 px 86 vs 104, 64->64 at 32 px 46 vs 44). A
six-layer ResNet stem at 112 px, gradient w.r.t. the kernels: 2.83 -> 1.61 CPU-seconds; w.r.t.
the input only (a frozen network: XLA drops the unused kernel gradients) 0.89 either way. The
full-size encoder alone (ResNet-50 ``FaceEncoder``, 224 px, batch 12, BatchNorm on running
statistics, gradient w.r.t. all parameters; ``nnx.Conv`` vs ``conv.Conv`` in one period, load
~4.6): 24.8 -> 9.3 s wall, 25.3 -> 9.3 CPU-seconds.
``--configs cpu`` (``--repeats 7``, before/after alternated, load 3.5-5.7; every
3x3 layer there is below the threshold, so only the 1x1 layers change): stage1 524 -> 473 ms
(0.53 -> 0.47 CPU-s), unet_pretrain 450 -> 534 ms (0.45 -> 0.53 CPU-s; the UNet's only 1x1 layer
is its 8->1 output, so this is noise: an earlier em_unet pair gave 1064 -> 434 ms). Before it
(the estimates below predate it), the full stage-1 step was 711 GFLOP (XLA's count) for 38
CPU-seconds: ResNet-50 forward + backward ~295 GFLOP, of which its kernel gradients ~100 (at 6
GFLOP/CPU-s an estimated 16 CPU-seconds), and ArcFace IResNet-50 at 112 px ~450 GFLOP (forward of
the render and of the input, backward of the render's features to the image only: ArcFace's own
gradients are never formed; ~8 CPU-seconds at the fast rate); the remaining ~10 CPU-seconds
(BatchNorm and elementwise work, the ArcFace warps, the renderer) were not attributed at full size.
The EM UNet step is dominated by the UNet at 224 px: ~98 GFLOP per image forward (XLA's count,
em_encoder minus stage 1), so ~3.5 of the step's 3.75 TFLOP are its forward and backward, and its
~1.2 TFLOP of kernel gradients at 6 GFLOP/CPU-s were an estimated ~195 of the 314 CPU-seconds. The
EM encoder step adds the UNet's forward (~1.2 TFLOP, ~25 CPU-seconds at the fast rate) to stage 1's
work.
At the ``:cpu`` sizes the default ``embedded-bfm`` makes the renderer dominate (96 px, batch 12:
render forward+backward with the soft mask 318 of a 367 ms stage-1 step), but the quick-start
recipe renders the 7.6k-triangle ``embedded`` model, so pass ``--model embedded`` to time what it
trains. There (1 December 2026, 2 cores, idle): stage-1 step 131 ms (encoder forward+backward
55-63, render forward+backward of the image alone 33-38: stage 1 does not use the soft mask, so
XLA drops it); UNet-pretraining step 445 ms, of which the UNet's forward+backward is ~400 (its
forward 87); EM encoder step 310 ms, EM UNet step 624 ms. After stage 1 the UNet is the cost.

Host round trips (GPU/TPU readiness): none in the step. The batch and the state are device
arrays placed with their shardings before the step; inside the jitted step there is no Python
loop over the batch (the renderer is ``vmap``-ed, the soft mask a ``lax.map``), no
``device_get``, no ``float()``/``bool()`` on traced values and no data-dependent Python control
flow (the non-finite guard is a ``jnp.where``, the learning rate a traced function of the step,
the dropout key folded from the traced step); the scalars stay on the device and the training
loop reads them one step late, at log steps only. The state is donated, so each step updates it
in place. This benchmark blocks only at the end of each timed step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import machine

CASES = {  # name -> (config stage, step name in train.make_steps)
  "stage1": ("pretrain", "encoder"),
  "unet_pretrain": ("unet_pretrain", "unet"),
  "em_encoder": ("em", "encoder"),
  "em_unet": ("em", "unet"),
}
# Seconds per step of the original (batch 12, 224 px, 2 cores, ArcFace on).
ANCHOR_S = {"stage1": 15.7, "em_encoder": 48.8, "em_unet": 50.9}
ANCHOR_PEAK_RSS_MB = 9.4e3


def write_random_arcface(path: str, seed: int = 0) -> str:
  """Writes a randomly initialised ArcFace IResNet-50 ``.npz`` (same work as real weights)."""
  import numpy as np
  from flax import nnx

  from focus_jax.models import arcface, weights

  network = arcface.IResNet(50, rngs=nnx.Rngs(seed))
  params = {k: np.asarray(v.get_value()) for k, v in weights.flat_variables(network).items()}
  weights.save_params(path, params, {"kind": "iresnet", "depth": 50})
  return path


def make_config(name: str, variant: str, args, arcface_path: str):
  from focus_jax import config_lib

  stage, _ = CASES[name]
  config = config_lib.stage_config(stage, "cpu" if variant == "cpu" else "")
  config.model.spec = args.model
  config.batch_size = args.batch
  if args.height:
    config.data.image_size = args.height
  use_arcface = {"auto": variant == "full", "on": True, "off": False}[args.arcface]
  config.arcface.weights = arcface_path if use_arcface else ""
  return config


def make_batch(model, batch: int, size: int, seed: int = 0) -> dict:
  """Rendered random faces on a noise background with their projected landmarks."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from focus_jax import testing
  from focus_jax.render import coefficients, pipeline

  coeffs = coefficients.stack([testing.random_coefficients(model, seed + i) for i in range(batch)])
  out = jax.jit(pipeline.render_batch, static_argnums=(2, 3))(model, coeffs, size, size)
  noise = np.random.default_rng(seed).uniform(0.0, 1.0, (batch, size, size, 3)).astype(np.float32)
  mask = out.mask[..., None]
  image = mask * jnp.clip(out.image, 0.0, 1.0) + (1.0 - mask) * noise
  return {"image": image, "landmarks": out.landmarks}


def _setup(name: str, variant: str, args, arcface_path: str):
  import jax

  from focus_jax import sharding, train

  config = make_config(name, variant, args, arcface_path)
  model = train.load_model(config)
  nets, parts, arc_part, notes = train.build_networks(config, model.sizes)
  mesh = sharding.make_mesh(jax.devices()[:1])
  rep = sharding.replicated(mesh)
  state = jax.jit(lambda p: train.init_state(p, config.optim), out_shardings=rep)(parts)
  frozen = jax.device_put(train.frozen_inputs(config, model, arc_part), rep)
  size = config.data.image_size
  batch = jax.device_put(
    make_batch(model, config.batch_size, size, config.seed), sharding.batch_sharding(mesh)
  )
  return config, model, nets, rep, state, frozen, batch, notes


def run_case(name: str, variant: str, args, arcface_path: str) -> dict:
  """Compiles and times one update step; returns its JSON record."""
  import jax
  import numpy as np

  from focus_jax import train

  load_start = os.getloadavg()[0]
  config, model, nets, rep, state, frozen, batch, notes = _setup(name, variant, args, arcface_path)
  _, step_name = CASES[name]
  steps = train.compiled_steps(nets, json.dumps(config.to_dict(), sort_keys=True), rep)
  start = time.perf_counter()
  compiled = steps[step_name].lower(state, batch, frozen).compile()
  compile_s = time.perf_counter() - start
  text = compiled.as_text()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  for _ in range(args.warmup):
    state, scalars = compiled(state, batch, frozen)
    jax.block_until_ready(state)
  runs, cpu = [], []
  for _ in range(args.repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, scalars = compiled(state, batch, frozen)
    jax.block_until_ready(state)
    runs.append(time.perf_counter() - start)
    cpu.append(time.process_time() - cpu_start)
  seconds = float(np.median(runs))
  device = jax.devices()[0]
  size = config.data.image_size
  record = {
    "device": f"{device.platform}:{device.device_kind}",
    "case": name,
    "stage": config.stage,
    "step": step_name,
    "config": variant,
    "model": args.model,
    "triangles": int(model.triangles.shape[0]),
    "encoder": f"resnet{config.encoder.depth}/w{config.encoder.width}",
    "unet_base": config.unet.base,
    "arcface": bool(nets.arcface is not None),
    "batch": config.batch_size,
    "height": size,
    "width": size,
    "images_per_s": config.batch_size / seconds,
    "ms_per_step": 1e3 * seconds,
    "ms_per_step_runs": [round(1e3 * r, 1) for r in runs],
    "warmup_steps": args.warmup,
    # CPU time of the process (all threads) per step: on a shared machine, wall time / this
    # tells how much of the cores the step got; this / cores bounds the idle-machine wall time.
    "cpu_s_per_step": float(np.median(cpu)),
    "cores": os.cpu_count(),
    "compile_s": compile_s,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "gflops": float(cost.get("flops", float("nan"))) / 1e9 if cost else None,
    "hlo_convolutions": len(re.findall(r"\bconvolution\(", text)),
    "loss": float(scalars["loss"]),
    "finite": bool(scalars["finite"]),
    "load_avg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    "matmul_2048_s": machine.matmul_seconds(),
  }
  anchor = ANCHOR_S.get(name)
  if anchor and variant == "full" and config.batch_size == 12 and size == 224:
    record["anchor_s"] = anchor
    record["speedup_vs_anchor"] = anchor / seconds
    record["peak_rss_vs_anchor"] = record["peak_rss_mb"] / ANCHOR_PEAK_RSS_MB
  return record


def _timed(fn, args, repeats: int) -> tuple[float, float]:
  import jax
  import numpy as np

  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  runs, cpu = [], []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - start)
    cpu.append(time.process_time() - cpu_start)
  return compile_s, float(np.median(runs)), float(np.median(cpu))


def run_breakdown(variant: str, args, arcface_path: str) -> list[dict]:
  """Times the sub-parts of the steps in isolation (forward, and forward + backward w.r.t. what
  the steps differentiate), at the case's sizes."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from focus_jax import objectives
  from focus_jax.models import arcface_align
  from focus_jax.render import pipeline

  setup = _setup("em_encoder", variant, args, arcface_path)
  config, model, nets, _, state, frozen, batch, _ = setup
  image, landmarks = batch["image"], batch["landmarks"]
  size = image.shape[1]
  key = jax.random.key(0)

  def encoder_fwd(part, image):
    return objectives.merge(nets.encoder, part, train=True).raw(image)

  def encoder_grad(params, rest, image):
    return jax.grad(lambda p: jnp.sum(encoder_fwd({"params": p, "rest": rest}, image)))(params)

  coeffs = jax.jit(lambda part, image: objectives.merge(nets.encoder, part, False)(image))(
    state["encoder"], image
  )

  def render_fwd(coeffs, model):
    out = pipeline.render_batch(model, coeffs, size, size)
    return out.image, out.soft_mask, out.landmarks

  def render_grad(coeffs, model, target):
    def loss(c):
      out = pipeline.render_batch(model, c, size, size)
      return jnp.sum((out.image - target) ** 2) + jnp.sum(out.soft_mask) + jnp.sum(out.landmarks)

    return jax.grad(loss)(coeffs)

  render = jax.jit(render_fwd)(coeffs, model)[0]

  def unet_fwd(part, render, image, train):
    network = objectives.merge(nets.unet, part, train=train)
    return network.logits(render, image, rngs=nnx.Rngs(dropout=key) if train else None)

  def unet_grad(params, rest, render, image):
    return jax.grad(lambda p: jnp.sum(unet_fwd({"params": p, "rest": rest}, render, image, True)))(
      params
    )

  cases = [
    ("encoder_fwd", lambda p, x: encoder_fwd(p, x), (state["encoder"], image)),
    (
      "encoder_fwd_bwd",
      encoder_grad,
      (state["encoder"]["params"], state["encoder"]["rest"], image),
    ),
    ("render_fwd", render_fwd, (coeffs, model)),
    ("render_fwd_bwd", render_grad, (coeffs, model, image)),
    ("unet_fwd_eval", lambda p, r, x: unet_fwd(p, r, x, False), (state["unet"], render, image)),
    (
      "unet_fwd_bwd_train",
      unet_grad,
      (state["unet"]["params"], state["unet"]["rest"], render, image),
    ),
  ]
  if nets.arcface is not None:

    def arc(part, images, lm):
      return objectives.merge(nets.arcface, part, train=False)(
        arcface_align.align_faces(images, lm)
      )

    def arc_grad(part, images, lm):
      return jax.grad(lambda x: jnp.sum(arc(part, x, lm).deep))(images)

    def arc_shallow_grad(part, images, lm):
      def loss(x):
        net = objectives.merge(nets.arcface, part, train=False)
        return jnp.sum(net.shallow(arcface_align.align_faces(x, lm)))

      return jax.grad(loss)(images)

    cases += [
      ("arcface_fwd", lambda p, x, lm: arc(p, x, lm).deep, (frozen["arcface"], image, landmarks)),
      ("arcface_fwd_bwd_input", arc_grad, (frozen["arcface"], image, landmarks)),
      ("arcface_shallow_fwd_bwd_input", arc_shallow_grad, (frozen["arcface"], image, landmarks)),
    ]
  device = jax.devices()[0]
  records = []
  for part, fn, fn_args in cases:
    if args.parts and part not in args.parts.split(","):
      continue
    compile_s, seconds, cpu_s = _timed(fn, fn_args, args.repeats)
    records.append(
      {
        "device": f"{device.platform}:{device.device_kind}",
        "case": "breakdown",
        "part": part,
        "config": variant,
        "batch": config.batch_size,
        "height": size,
        "ms": 1e3 * seconds,
        "cpu_ms": 1e3 * cpu_s,
        "compile_s": compile_s,
        "load_avg_1min": round(os.getloadavg()[0], 2),
      }
    )
  return records


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--stages", default=",".join(CASES), help="comma-separated cases")
  parser.add_argument("--configs", default="full,cpu", help="full and/or cpu")
  parser.add_argument("--batch", type=int, default=12)
  parser.add_argument("--height", type=int, default=0, help="0: full 224, cpu its 64")
  parser.add_argument("--repeats", type=int, default=3, help="timed steps (median)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  parser.add_argument("--model", default="embedded-bfm")
  parser.add_argument("--arcface", default="auto", choices=("auto", "on", "off"))
  parser.add_argument("--breakdown", action="store_true", help="time sub-parts too")
  parser.add_argument("--parts", default="", help="breakdown parts to time (default all)")
  parser.add_argument("--inprocess", action="store_true", help="no subprocess per case")
  parser.add_argument("--arcface-path", default="", help=argparse.SUPPRESS)
  parser.add_argument("--one", default="", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def _emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def main(argv=None) -> int:
  args = _parse(argv)
  if args.one:  # a child: one case, then exit (its ru_maxrss is the case's own)
    variant, name = args.one.split(":")
    if name == "breakdown":
      for record in run_breakdown(variant, args, args.arcface_path):
        _emit(record)
    else:
      _emit(run_case(name, variant, args, args.arcface_path))
    return 0
  names = [s for s in args.stages.split(",") if s]
  variants = [s for s in args.configs.split(",") if s]
  unknown = sorted(set(names) - set(CASES)) + sorted(set(variants) - {"full", "cpu"})
  if unknown:
    raise SystemExit(f"unknown stages/configs {unknown}; stages: {sorted(CASES)}, full|cpu")
  with tempfile.TemporaryDirectory() as tmp:
    arcface_path = args.arcface_path
    if not arcface_path and args.arcface != "off":
      arcface_path = write_random_arcface(os.path.join(tmp, "arcface_random_r50.npz"))
    jobs = [(v, n) for v in variants for n in names]
    if args.breakdown:
      jobs += [(v, "breakdown") for v in variants]
    failed = 0
    for variant, name in jobs:
      if args.inprocess:
        args.one, args.arcface_path = f"{variant}:{name}", arcface_path
        records = (
          run_breakdown(variant, args, arcface_path)
          if name == "breakdown"
          else [run_case(name, variant, args, arcface_path)]
        )
        for record in records:
          _emit(record)
        continue
      child = [a for a in (argv if argv is not None else sys.argv[1:])]
      child += ["--one", f"{variant}:{name}", "--arcface-path", arcface_path]
      result = subprocess.run([sys.executable, os.path.abspath(__file__), *child], check=False)
      failed += result.returncode != 0
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
