"""Test set-up: 8 fake CPU devices (for sharding tests), a per-session model cache and compilation
cache, XLA optimisation passes off by default, and the shared trained fixtures."""

import contextlib
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Generated models go to a throw-away cache unless the caller chose one.
if "FOCUS_JAX_CACHE" not in os.environ:
  import tempfile

  os.environ["FOCUS_JAX_CACHE"] = os.path.join(tempfile.gettempdir(), "focus_jax_test_cache")

# Many tests build the same jitted programs (the same step or render at the same sizes) through
# separate closures; a compilation cache shared by the session, and by the commands the tests
# start, compiles each program once. It starts empty, so CI still measures a cold machine.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="focus_jax_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Most of the suite's CPU time is XLA compiling programs that then run once or twice on tiny
# inputs; without its optimisation passes that costs about 30-40% less CPU, results stay within
# the tests' tolerances, and the commands the tests start inherit it. A test that measures speed
# or trains for quality turns them back on with ``optimizations(True)``.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pytest  # noqa: E402  (after the environment above, which jax reads at import)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
  """16 synthetic faces with ground truth (an image root shared by the training tests)."""
  from focus_jax.data import synthetic

  root = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(root, 16, seed=3, progress=False, batch_size=16)
  return root


@contextlib.contextmanager
def optimizations(enabled: bool):
  """XLA's optimisation passes on or off inside the block (then back to what they were)."""
  import jax

  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", not enabled)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="session")
def smoke_chain(tmp_path_factory):
  """A chain workdir trained by ``focus_jax.quickstart`` at smoke sizes (two steps per stage),
  with its wall times: ``(workdir, first_run_seconds)``.

  The chain only has to exist: it is trained with XLA's optimisation passes off (the session
  default, above), like every test that does not time itself.
  """
  import time

  from focus_jax import quickstart

  if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under xdist every worker's basetemp sits in one per-session directory.
    claim = tmp_path_factory.getbasetemp().parent / "smoke_chain.claimed"
    if claim.exists():
      pytest.fail(
        f"the smoke chain was already trained by {claim.read_text()}: the xdist_group marks "
        "were ignored (pytest-xdist's loadgroup needs pytest < 9)"
      )
    claim.write_text(os.environ["PYTEST_XDIST_WORKER"])
  workdir = str(tmp_path_factory.mktemp("chain"))
  start = time.time()
  quickstart.run(workdir, "smoke", SMOKE_CHAIN, evaluate=False)
  seconds = time.time() - start
  return workdir, seconds


SMOKE_RECON_SIZE = 64


@pytest.fixture(scope="session")
def recon(smoke_chain):
  """A :class:`focus_jax.reconstruct.Reconstructor` of the smoke chain at 64 px, two images per
  compiled call (shared by the export and reconstruction tests)."""
  from focus_jax import reconstruct

  return reconstruct.Reconstructor.from_workdir(
    smoke_chain[0], image_size=SMOKE_RECON_SIZE, batch_size=2
  )


# Two steps per stage on 16 faces at 64 px, batch 8 = the 8 fake devices; EM periods of 2 steps,
# so EM takes one UNet step and one encoder step.
SMOKE_CHAIN = {
  "batch_size": 8,
  "total_steps": 2,
  "em.period_steps": 2,
  "em.unet_steps": 0,
  "log_every_steps": 1,
  "data.synthetic_num": 16,
  "data.image_size": 64,
  "data.source": "memory",
}
