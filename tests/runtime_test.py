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
      "unraisablehook": repr(sys.unraisablehook),
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
  assert configured["unraisablehook"] != r["before"]["unraisablehook"]


def test_only_callbacks_on_a_closed_event_loop_are_dropped(monkeypatch):
  """What a tensorstore read that completes after a failed restore reports (its callback finds
  orbax's loop closed) is dropped; any other unraisable exception reaches the previous hook."""
  import asyncio
  import types

  from dualtalk_jax import runtime

  def unraisable(fn, obj=None):
    try:
      fn()
    except Exception as e:  # noqa: BLE001
      return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__, err_msg=None,
                                   object=obj)
    raise AssertionError("no exception")

  loop = asyncio.new_event_loop()
  loop.close()
  late = unraisable(lambda: loop.call_soon_threadsafe(print))
  assert runtime.is_closed_loop_callback(late)

  def closed():
    raise RuntimeError("Event loop is closed")  # the same text, not raised by a closed loop

  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  runtime.drop_closed_loop_callbacks()
  runtime.drop_closed_loop_callbacks()  # idempotent: one wrapper
  others = [unraisable(closed), unraisable(lambda: 1 / 0), unraisable(lambda: loop.call_soon_threadsafe(print), obj=loop)]
  for args in [late, *others]:
    sys.unraisablehook(args)
  assert seen == others
