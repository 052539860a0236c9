"""Test set-up: 8 fake CPU devices (for sharding tests) and a per-session model cache."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Generated models go to a throw-away cache unless the caller chose one.
if "FOCUS_JAX_CACHE" not in os.environ:
  import tempfile

  os.environ["FOCUS_JAX_CACHE"] = os.path.join(tempfile.gettempdir(), "focus_jax_test_cache")
