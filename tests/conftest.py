"""Test set-up: 8 fake CPU devices (for sharding tests) and a per-session model cache."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Generated models go to a throw-away cache unless the caller chose one.
if "FOCUS_JAX_CACHE" not in os.environ:
  import tempfile

  os.environ["FOCUS_JAX_CACHE"] = os.path.join(tempfile.gettempdir(), "focus_jax_test_cache")

import pytest  # noqa: E402  (after the environment above, which jax reads at import)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
  """16 synthetic faces with ground truth (an image root shared by the training tests)."""
  from focus_jax.data import synthetic

  root = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(root, 16, seed=3, progress=False, batch_size=16)
  return root


@pytest.fixture(scope="module")
def fast_compile():
  """XLA's optimisation passes off: training tests run each compiled step a few times, so most
  of their CPU time is compilation (results stay deterministic; runs compared with each other
  are compiled alike)."""
  import jax

  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", False)


@pytest.fixture(scope="session")
def smoke_chain(tmp_path_factory):
  """A chain workdir trained by ``focus_jax.quickstart`` at smoke sizes (two steps per stage),
  with its wall times: ``(workdir, first_run_seconds)``.

  The chain only has to exist, so XLA's optimisation passes are off while it trains (about 40%
  of its CPU time is compilation of three update steps run once each).
  """
  import time

  import jax

  from focus_jax import quickstart

  workdir = str(tmp_path_factory.mktemp("chain"))
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    start = time.time()
    quickstart.run(workdir, "smoke", SMOKE_CHAIN, evaluate=False)
    seconds = time.time() - start
  finally:
    jax.config.update("jax_disable_most_optimizations", False)
  return workdir, seconds


# Two steps per stage on 16 faces, batch 8 = the 8 fake devices; EM periods of 2 steps, so EM
# takes one UNet step and one encoder step.
SMOKE_CHAIN = {
  "batch_size": 8,
  "total_steps": 2,
  "em.period_steps": 2,
  "em.unet_steps": 0,
  "log_every_steps": 1,
  "data.synthetic_num": 16,
  "data.source": "memory",
}
