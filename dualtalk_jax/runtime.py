"""Process set-up for entry points: `configure()` is the one call that changes the process.

Importing `dualtalk_jax` (any module of it) changes nothing, and library functions leave
the process's settings alone; every `experiments/` entry point (and the test suite's
conftest) calls `configure()` first thing, before any jax computation:

- XLA:CPU workaround (jaxlib 0.10.2): with the concurrency-optimized thunk scheduler, a
  program with several independent loops (the batched metric kernels' k-means) can park
  every thread of the intra-op pool on a 2-core host, and the call never returns. The
  flag only reorders CPU thunks (same numbers). It must be in `XLA_FLAGS` before jax
  creates its CPU client, which happens at the first computation, not at import.
- jax's `jax_threefry_partitionable` on (jax's default since 0.5): random draws do not
  depend on the sharding, so a run's initial parameters and dropout masks are the same on
  any mesh; set explicitly so that an environment variable cannot change them.
- glibc heap settings (`hostmem.tune_malloc`: multi-MB buffers from the heap, kept for
  reuse) and the heap trims between large jitted calls on CPU
  (`hostmem.release_free_memory`, a no-op in a process not configured).
- Logging: absl shows INFO, so libraries' INFO chatter would look like trouble to a user.
  Dropped: orbax's INFO lines (about 20 per restore), jax's INFO "Unable to initialize
  backend 'tpu'" on hosts where libtpu is installed but no TPU is present (jax records the
  error and falls back quietly by design), and orbax's warning that a step folder has no
  `_CHECKPOINT_METADATA` (checkpoints written before orbax kept that file, or restored by
  item path: the data itself is checked on restore), and its warning, on restoring only
  the params of a training checkpoint, that the other items were not restored. Every other
  warning still shows.
- Callbacks of abandoned checkpoint reads (`drop_closed_loop_callbacks`): when a restore
  fails on a damaged checkpoint (the loop falls back to the newest complete one), orbax
  closes its asyncio loop while tensorstore still completes the other reads, and each
  late completion reports "RuntimeError: Event loop is closed" through
  `sys.unraisablehook`: some 350 tracebacks after the one clear warning. Only those are
  dropped; every other unraisable exception reaches the previous hook.
"""

from __future__ import annotations

import logging
import os

CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

# (logger name prefix, substring of the message, highest level dropped)
_NOISE = (
    ("jax._src.xla_bridge", "Unable to initialize backend", logging.INFO),
    ("", "Metadata file does not exist", logging.WARNING),
    ("", "was found in the checkpoint, but could not be restored", logging.WARNING),
)


def add_xla_flags(*new: str) -> None:
  """Appends XLA flags whose name is not set yet (call before the first jax computation)."""
  flags = os.environ.get("XLA_FLAGS", "")
  for f in new:
    if f.split("=")[0] not in flags:
      flags = f"{flags} {f}".strip()
  os.environ["XLA_FLAGS"] = flags


class _DropNoise(logging.Filter):
  """Drops orbax INFO lines and the known-harmless messages of `_NOISE`."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.WARNING and ("/orbax/" in record.pathname or record.name.startswith("orbax")):
      return False
    msg = str(record.msg)
    for name, text, level in _NOISE:
      if record.levelno <= level and record.name.startswith(name) and text in msg:
        return False
    return True


_FILTER = _DropNoise()


def quiet_logs() -> None:
  """Installs the noise filter on the root and absl handlers (idempotent)."""
  handlers = list(logging.getLogger().handlers)
  try:
    from absl import logging as absl_logging

    handlers.append(absl_logging.get_absl_handler())
  except ImportError:
    pass
  for h in handlers:
    if _FILTER not in h.filters:
      h.addFilter(_FILTER)
  for name in ("jax._src.xla_bridge", "orbax", "absl"):
    lg = logging.getLogger(name)
    if _FILTER not in lg.filters:
      lg.addFilter(_FILTER)


def is_closed_loop_callback(args) -> bool:
  """Whether an unraisable exception (`sys.UnraisableHookArgs`) is a completion callback
  that found its asyncio loop closed: `RuntimeError('Event loop is closed')` raised by the
  loop's `_check_closed`, with no object to attribute it to."""
  if args.exc_type is not RuntimeError or str(args.exc_value) != "Event loop is closed" or args.object is not None:
    return False
  tb = args.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed" and "asyncio" in tb.tb_frame.f_code.co_filename


def drop_closed_loop_callbacks() -> None:
  """Wraps `sys.unraisablehook` to drop `is_closed_loop_callback` reports (idempotent)."""
  import sys

  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_callbacks", False):
    return

  def hook(args):
    if not is_closed_loop_callback(args):
      previous(args)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


def configure() -> None:
  """What every entry point does first: the XLA CPU workaround, partitionable random
  numbers, the heap settings, quiet logs and no reports from abandoned checkpoint reads."""
  import jax

  from dualtalk_jax import hostmem

  add_xla_flags(CPU_FLAG)
  jax.config.update("jax_threefry_partitionable", True)
  hostmem.tune_malloc()
  quiet_logs()
  drop_closed_loop_callbacks()
