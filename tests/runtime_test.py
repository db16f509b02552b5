"""Importing the library changes nothing in the process; `runtime.configure()` is the one call that does."""

import subprocess
import sys

from conftest import ROOT

# Imports every dualtalk_jax module, then prints what a library could have changed: the
# environment, jax's config values, the glibc heap settings, the logging handlers/filters
# and the signal handlers. `runtime.configure()` after the imports must change some of it
# (the probe sees a change where there is one).
_PROBE = r"""
import importlib, json, logging, os, pkgutil, signal, sys

def snapshot():
  import jax
  from dualtalk_jax import hostmem
  loggers = [logging.getLogger()] + [logging.getLogger(n) for n in ("jax", "absl", "orbax", "jax._src.xla_bridge")]
  return {
      "env": dict(os.environ),
      "jax": {k: repr(v) for k, v in sorted(jax.config.values.items())},
      "malloc_tuned": hostmem.tuned(),
      "logging": [(lg.name, lg.level, len(lg.filters), len(lg.handlers)) for lg in loggers],
      "signals": {s.name: repr(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT)},
  }

# third-party import effects are not the library's (orbax adds a root log handler)
import jax, flax.nnx, grain, optax, orbax.checkpoint, dualtalk_jax
before = snapshot()
names = [m.name for m in pkgutil.walk_packages(dualtalk_jax.__path__, "dualtalk_jax.")]
for name in names:
  importlib.import_module(name)
after = snapshot()
from dualtalk_jax import runtime
runtime.configure()
print(json.dumps({"modules": names, "before": before, "after": after, "configured": snapshot()}))
"""


def test_importing_every_module_changes_nothing():
  import json

  out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT.parent), "PYTHONPATH": str(ROOT),
                            "JAX_PLATFORMS": "cpu"})
  r = json.loads(out.stdout.splitlines()[-1])
  assert len(r["modules"]) > 40 and "dualtalk_jax.train.loop" in r["modules"]
  for key in r["before"]:
    assert r["after"][key] == r["before"][key], f"importing dualtalk_jax changed {key}"
  configured = r["configured"]
  assert "--xla_cpu_enable_concurrency_optimized_scheduler=false" in configured["env"]["XLA_FLAGS"]
  assert configured["malloc_tuned"] and configured["logging"] != r["before"]["logging"]
