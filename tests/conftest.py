"""Shared pytest set-up: repo root on sys.path, f32 matmuls at full precision on CPU."""
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Several virtual CPU devices for the sharding tests; set before anything imports jax.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
import dualtalk_jax  # noqa: E402,F401  (adds its XLA CPU workarounds to XLA_FLAGS before jax starts)
