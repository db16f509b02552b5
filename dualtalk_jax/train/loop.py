"""`train_and_evaluate(config, workdir)`: the training loop behind `experiments.train`.

One process per host. Every host builds the same program (`train.builder.build`: mesh
over all devices, sharded state, jitted steps), reads its own shard of the data (grain,
by `jax.process_index()`), and feeds its rows of the global batch.

The loop never waits for the device between sync points: steps are dispatched ahead
while the host loads the next batches. A sync point is a step that logs, validates,
checkpoints, is the last, or where the hosts agreed to stop for a preemption; only there
does the host read device values. Between sync points the loop runs under
`jax.transfer_guard_device_to_host("disallow")`, so a hidden read fails loudly on
accelerators. Non-finite losses are noted on device (the first bad step) and read at the
next sync point: the run then stops naming the step and the range it was checked over,
without saving, so the last good checkpoint stays the latest.

Checkpoints (full state + data iterator) every `checkpoint_every` steps, asynchronous; a
workdir that holds one resumes from the newest step that restores (a damaged newest step
is named and set aside: `checkpoint.TrainCheckpointer.restore_latest`). Preemption:
SIGTERM on any host makes every host save the same step and exit cleanly (`Preemption`).

Frozen wav2vec2 (`optim.freeze_wav2vec2`): both encoders in eval mode, no gradient, no
optimizer moments. `data.feature_cache` (implies it) reads the train data's wav2vec2
feature cache instead of audio and skips the encoders; at start-up the run's encoder
weights (after `pretrained_wav2vec2` / `init_checkpoint` loading, or as resumed) must
have the fingerprint the cache was made with, else the run refuses to start
(`dualtalk_jax.data.feature_cache.check_run_weights`). Validation still runs on audio.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dualtalk_jax import audio, checkpoint, params as params_lib, sharding
from dualtalk_jax.aot import jaxpr_flops, peak_flops
from dualtalk_jax.config import DualTalkConfig
from dualtalk_jax.progress import Progress
from dualtalk_jax.train import builder, step as step_lib


class NonFiniteLossError(FloatingPointError):
  """A training loss was NaN or inf; the message names the step and the range checked."""


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields (`{"data.window_frames": 50}`), as `--config.data.window_frames=50` does."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def initial_state(config, program: builder.Program) -> dict:
  """The state a new run starts from: a converted DualTalk checkpoint's params (restored
  into their shards), else fresh params (each device initialises its own shards), with
  the wav2vec2 encoders loaded from `pretrained_wav2vec2` if set."""
  cfg = program.model_config
  if config.init_checkpoint:
    stored = checkpoint.read_model_config(config.init_checkpoint)
    if dataclasses.replace(stored, scan_layers=cfg.scan_layers) != cfg:
      raise ValueError(f"{config.init_checkpoint}: its model config differs from the run's")
    params, _, _ = checkpoint.restore_params(config.init_checkpoint, scan_layers=cfg.scan_layers,
                                             target=program.abstract_state()["params"])
    return program.init_state(params)
  if config.pretrained_wav2vec2:
    from dualtalk_jax.convert import hf_wav2vec2
    from dualtalk_jax.models.dualtalk import DualTalk, make_rngs

    model = DualTalk(cfg, rngs=make_rngs(config.seed))
    hf_wav2vec2.init_dualtalk_encoders(model, config.pretrained_wav2vec2)
    return program.init_state(params_lib.of(model))
  return program.init_state()


def synthetic_data_dir(workdir: str, split: str) -> str:
  """Where synthetic conversations of a split are preprocessed to: always inside the workdir."""
  return os.path.join(os.path.abspath(workdir), "data", split)


def ensure_synthetic_data(config, workdir: str, log=logging.info) -> None:
  """With `synthetic.enabled`, fills the data dirs the user left empty with synthetic conversations.

  A data dir the user named is used as it is and never written. An empty one becomes
  `<workdir>/data/<split>`: conversations are synthesized into `<workdir>/synthetic/<split>`
  and preprocessed there. The raw training clips are then deleted (the shards hold the
  same data; it halves the disk used), the held-out ones kept for `experiments.evaluate`.
  Idempotent: a split whose preprocessed manifest exists is left alone. Process 0
  writes; the others wait for it. `log` receives one line per stage, with its time.
  """
  from dualtalk_jax.data import preprocess, records, synthetic

  syn = config.synthetic
  # Held-out clips are new conversations of the same speakers (like the dataset's test split).
  splits = [("train", syn.num_train_clips, 0), ("val", syn.num_val_clips, syn.num_train_clips)]
  todo = []
  with config.unlocked():
    for name, num, first in splits:
      key = f"{name}_dir"
      if not config.data[key]:
        config.data[key] = synthetic_data_dir(workdir, name)
        todo.append((name, num, first, config.data[key]))
  if jax.process_index() == 0:
    for name, num, first, out_dir in todo:
      if os.path.exists(os.path.join(out_dir, records.MANIFEST)):
        continue
      raw = os.path.join(os.path.abspath(workdir), "synthetic", name)
      t = time.time()
      mb = num * (syn.min_seconds + syn.max_seconds) / 2 * 2 * audio.SAMPLE_RATE * 4 / 1e6
      log(f"synthesizing {num} {name} conversations into {raw} (about {mb:.0f} MB)")
      synthetic.synthesize(raw, num, syn.seed, first_index=first, min_seconds=syn.min_seconds,
                           max_seconds=syn.max_seconds)
      log(f"synthesized {name} in {time.time() - t:.1f} s")
      t = time.time()
      log(f"preprocessing {raw} -> {out_dir}")
      preprocess.preprocess(raw, out_dir, window_frames=config.data.window_frames)
      log(f"preprocessed {name} in {time.time() - t:.1f} s")
      if name == "train":
        import shutil

        shutil.rmtree(raw)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("synthetic data ready")


def check_data_dirs(config) -> None:
  """Fails before anything is written when a data dir is not a complete preprocessed split."""
  from dualtalk_jax.data import records

  if not config.data.train_dir:
    raise ValueError("config.data.train_dir is empty: point it at a folder made by experiments.preprocess")
  for key in ("train_dir", "val_dir"):
    if config.data[key]:
      records.load_manifest(config.data[key])


class ShardedIterator:
  """Concatenates the rows of several data shards' iterators into one batch.

  The data is split into `num_shards` shards (clips split by the pipeline's balance), each
  giving batch_size / num_shards rows of every global batch, in shard order. A process
  reads its own consecutive shards, so the global batch is the same whether one process
  reads all shards or each of several hosts reads its own: a run gives the same result
  on any number of hosts. Its state (all shards' states) saves with the checkpoint.
  """

  def __init__(self, iterators):
    self.iterators = list(iterators)

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(it) for it in self.iterators]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> bytes:
    return json.dumps([it.get_state() for it in self.iterators]).encode()

  def set_state(self, state: bytes) -> None:
    states = json.loads(state)
    if len(states) != len(self.iterators):
      raise ValueError(f"data iterator checkpoint holds {len(states)} shards, this process reads {len(self.iterators)}")
    for it, s in zip(self.iterators, states):
      it.set_state(s)

  def start_prefetch(self) -> None:
    for it in self.iterators:
      getattr(it, "start_prefetch", lambda: None)()


def train_iterator(config) -> ShardedIterator:
  """This process's training batches: its shards of `config.data.num_shards` (0 = one per process)."""
  from dualtalk_jax.data import pipeline

  n_proc, pi = jax.process_count(), jax.process_index()
  shards = config.data.num_shards or n_proc
  if shards % n_proc or config.batch_size % shards:
    raise ValueError(f"data.num_shards {shards} must be a multiple of the {n_proc} processes and divide batch_size "
                     f"{config.batch_size}")
  per = shards // n_proc
  return ShardedIterator(
      iter(pipeline.make_train_dataset(
          config.data.train_dir, window_frames=config.data.window_frames, batch_size=config.batch_size // shards,
          seed=config.seed, shuffle=True, num_epochs=None, worker_count=config.data.worker_count,
          thread_count=config.data.thread_count, prefetch=config.data.prefetch,
          clips_per_block=config.data.clips_per_block, process_index=shard, process_count=shards,
          feature_cache=builder.uses_feature_cache(config)))
      for shard in range(pi * per, (pi + 1) * per))


def write_config(config, workdir: str) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, path)


class Preemption:
  """Whether the run stops for a preemption after a step; every host gets the same answer.

  Several processes: JAX's preemption sync manager (started by `jax.distributed.initialize`)
  catches SIGTERM on any host and tells the others through the coordination service;
  `multihost_utils.reached_preemption_sync_point` then turns True on every host at the
  same step, so they all save that step (a collective) and exit. It is a host-side check,
  no device sync; every host must call `reached` after every step. One process: a
  SIGTERM handler sets a flag that is read after the step.
  """

  def __init__(self):
    self.multihost = jax.process_count() > 1
    self.requested = False
    self._old = None if self.multihost else signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint after this step")
    self.requested = True

  def reached(self, step: int) -> bool:
    if self.multihost:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(step):
        logging.warning("preemption notice: every host stops and saves at step %d", step)
        self.requested = True
    return self.requested

  def restore(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _summary_writer(workdir):
  if jax.process_index() != 0:
    return None
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    logging.warning("tensorboardX not installed: no TensorBoard summaries")
    return None
  return SummaryWriter(os.path.join(workdir, "tensorboard"))


def check_feature_cache(config, state, cfg: DualTalkConfig) -> None:
  """Refuses train data whose feature cache was not made with this run's encoder weights."""
  from dualtalk_jax.data import feature_cache

  enc = state["params"]["joint_encoder"]
  host = step_lib.host_params({"params": {"joint_encoder": {k: enc[k] for k in feature_cache.ENCODERS}}})
  cache = feature_cache.check_run_weights(config.data.train_dir, host, cfg.wav2vec2, config.data.window_frames)
  logging.info("feature cache of %s matches the run's encoders (fingerprint %s, from %s)", config.data.train_dir,
               cache["fingerprint"], cache["source"])


def _host_reads():
  """Where the loop may read device values: set-up, sync points, the end."""
  return jax.transfer_guard_device_to_host("allow")


@jax.jit
def _note_non_finite(first_bad, loss, step):
  """The first step whose loss was not finite, 0 while there is none (on device)."""
  return jnp.where((first_bad == 0) & ~jnp.isfinite(loss), step, first_bad)


def _check_finite(first_bad, checked: int, done: int, root: str) -> None:
  bad = int(first_bad)
  if bad:
    raise NonFiniteLossError(f"non-finite loss at step {bad} (steps {checked + 1}-{done} checked at step {done}); "
                             f"stopped without saving, the last good checkpoint in {root} is kept")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config` in `workdir` (resuming if it holds a checkpoint); returns the last metrics."""
  workdir = os.path.abspath(workdir)
  with _host_reads():
    if config.synthetic.enabled:
      ensure_synthetic_data(config, workdir)
    check_data_dirs(config)
    write_config(config, workdir)

    program = builder.build(config)
    n_proc = jax.process_count()
    if config.batch_size % (n_proc * config.grad_accum):
      raise ValueError(f"batch_size {config.batch_size} must split over {n_proc} processes and grad_accum "
                       f"{config.grad_accum}")
    data_iter = train_iterator(config)
    ckpt = checkpoint.TrainCheckpointer(workdir, program.model_config, keep=config.keep_checkpoints)
  writer = preemption = progress = None
  try:
    with _host_reads():
      state = ckpt.restore_latest(program.abstract_state(), data_iter)
      if state is None:
        state = initial_state(config, program)
      else:
        logging.info("resumed from %s step %d", ckpt.root, int(jax.device_get(state["step"])))
      if program.feature_cache:
        check_feature_cache(config, state, program.model_config)
      start_step = int(jax.device_get(state["step"]))
      writer = _summary_writer(workdir)
      preemption = Preemption()
      progress = Progress(config.total_steps, "train", unit="step", initial=start_step,
                          enabled=jax.process_index() == 0 and config.progress_bar)
      first_bad = jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=sharding.replicated(program.mesh))()
      frames_per_step = config.batch_size * config.data.window_frames
      flops_per_step, peak = 0.0, peak_flops(jax.devices()[0])
      metrics: dict[str, Any] = {}
      batch = None
      if start_step < config.total_steps:  # compile once, ahead of time, and count its FLOPs
        batch = program.shard_batch(next(data_iter))
        logging.info("compiling the train step")
        t_compile = time.time()
        traced = program.train_step.trace(state, batch)
        flops_per_step = jaxpr_flops(traced.jaxpr)  # all devices; scanned layers counted per layer
        train_step = traced.lower().compile()
        logging.info("compiled the train step in %.1f s; training steps %d to %d", time.time() - t_compile,
                     start_step + 1, config.total_steps)
    validating = bool(config.eval_every and config.data.val_dir)
    t0, last_log_step = time.time(), start_step
    checked = start_step  # the last step whose loss (and all before it) is known to be finite
    for step in range(start_step, config.total_steps):
      with jax.transfer_guard_device_to_host("disallow"):  # no host reads between sync points
        if batch is None:
          batch = program.shard_batch(next(data_iter))
        state, m = train_step(state, batch)
        batch = None
        first_bad = _note_non_finite(first_bad, m["loss"], state["step"])
        done = step + 1
        preempted = preemption.reached(done)
        if progress:
          progress.update(1)
      log = done % config.log_every == 0 or done == config.total_steps
      evaluate = validating and (done % config.eval_every == 0 or done == config.total_steps)
      save = done % config.checkpoint_every == 0 or done == config.total_steps or preempted
      if not (log or evaluate or save):
        continue
      with _host_reads():
        _check_finite(first_bad, checked, done, ckpt.root)
        checked = done
        if log:
          dt = time.time() - t0
          steps_s = (done - last_log_step) / max(dt, 1e-9)
          metrics = {k: float(v) for k, v in jax.device_get(m).items()}
          metrics.update(learning_rate=float(program.schedule(done - 1)), steps_per_s=steps_s,
                         frames_per_s=steps_s * frames_per_step)
          if flops_per_step and peak:
            metrics["mfu"] = steps_s * flops_per_step / (peak * jax.device_count())
          t0, last_log_step = time.time(), done
          logging.info("step %d: %s", done, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
          if progress:
            progress.set_postfix(loss=f"{metrics['loss']:.4f}")
          if writer:
            for k, v in metrics.items():
              writer.add_scalar(f"train/{k}", v, done)
        if evaluate:
          val = program.validate(state["params"])
          if val:
            metrics.update(val)
            logging.info("step %d validation: %s", done, " ".join(f"{k}={v:.4g}" for k, v in val.items()))
            if writer:
              for k, v in val.items():
                writer.add_scalar(f"val/{k}", v, done)
            ckpt.save_best(done, state["params"], val["val_loss"])
        if save:
          ckpt.save(done, state, data_iter, metrics)
      if preempted:
        logging.warning("preempted: saved step %d, exiting", done)
        break
  finally:
    with _host_reads():
      ckpt.wait()
      ckpt.close()
      if preemption:
        preemption.restore()
      if progress:
        progress.close()
      if writer:
        writer.close()
  with _host_reads():
    metrics["step"] = int(jax.device_get(state["step"]))
  metrics["flops_per_step"] = flops_per_step
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "last_metrics.json"), "w") as f:
      json.dump(metrics, f, indent=2)
  return {"metrics": metrics, "state": state, "model_def": program.model_def, "program": program}
