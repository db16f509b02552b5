r"""Trains DualTalk: `python -m experiments.train --config=experiments/configs/dualtalk.py:large --workdir=DIR`.

Any config field can be overridden (`--config.batch_size=64`). A workdir that holds a
checkpoint resumes from its newest step that restores (a damaged one is set aside).
Multi-host: on TPU pods pass `--distributed` (JAX finds the other hosts); on GPU clusters
also give `--coordinator_address`, `--num_processes` and `--process_id`. SIGTERM (on any
one host) saves a checkpoint (the same step on every host) and exits 0.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (a get_config(arg) .py).", lock_config=False)
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  initialize_distributed()
  from dualtalk_jax.train.loop import quiet_orbax, train_and_evaluate

  quiet_orbax()
  out = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("finished at step %d", out["metrics"]["step"])


if __name__ == "__main__":
  app.run(main)
