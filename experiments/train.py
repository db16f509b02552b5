r"""Trains DualTalk: `python -m experiments.train --config=experiments/configs/dualtalk.py:large --workdir=DIR`.

Any config field can be overridden (`--config.batch_size=64`). A workdir that holds a
checkpoint resumes from its newest step that restores (a damaged one is set aside).
Multi-host: on TPU pods pass `--distributed` (JAX finds the other hosts); on GPU clusters
also give `--coordinator_address`, `--num_processes` and `--process_id`. SIGTERM (on any
one host) saves a checkpoint (the same step on every host) and exits 0.

A user error (a missing data dir, a bad config value, a non-finite loss) is one line on
stderr and exit status 1. A run that fails before its first checkpoint leaves nothing
that looks like a started run: what it wrote into the workdir is removed.
"""

import os
import shutil
import sys

from absl import app, flags, logging

from experiments import configs

_CONFIG = configs.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, summaries and the config are written.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (multi-host).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU clusters).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (GPU clusters).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (GPU clusters).")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed():
  import jax

  if not (_DISTRIBUTED.value or _COORDINATOR.value):
    return
  kwargs = {}
  if _COORDINATOR.value:
    kwargs = dict(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  # Collectives between CPU processes (tests, CPU clusters); accelerators use their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def _remove_new_entries(workdir: str, before: set[str]) -> None:
  """Removes what a failed run added to `workdir` when it saved no checkpoint step."""
  ckpts = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts)):
    return  # a resumable run: keep everything
  for name in set(os.listdir(workdir)) - before if os.path.isdir(workdir) else ():
    path = os.path.join(workdir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  if not before and os.path.isdir(workdir) and not os.listdir(workdir):
    os.rmdir(workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dualtalk_jax import runtime

  runtime.configure()
  initialize_distributed()
  import jax

  from dualtalk_jax.train.loop import train_and_evaluate

  workdir = os.path.abspath(_WORKDIR.value)
  before = set(os.listdir(workdir)) if os.path.isdir(workdir) else set()
  try:
    out = train_and_evaluate(_CONFIG.value, workdir)
  except (OSError, ValueError, ArithmeticError) as e:  # user errors and NonFiniteLossError
    if jax.process_index() == 0:
      _remove_new_entries(workdir, before)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  logging.info("finished at step %d", out["metrics"]["step"])


if __name__ == "__main__":
  app.run(main, flags_parser=configs.parse_flags)
