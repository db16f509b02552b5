"""`train_and_evaluate(config, workdir)`: the training loop behind `experiments.train`.

One process per host. Every host builds the same mesh over all devices, reads its own
shard of the data (grain, by `jax.process_index()`), and feeds its rows of the global
batch; params, gradients and optimizer state are sharded by `dualtalk_jax.sharding`.
Checkpoints (full state + data iterator) every `checkpoint_every` steps, asynchronous;
a workdir that holds one resumes from the latest; SIGTERM saves and exits; a NaN/inf
loss stops the run naming the step, leaving the last good checkpoint as it was.

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
import logging as logging_std
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dualtalk_jax import checkpoint, sharding
from dualtalk_jax.aot import PEAK_FLOPS, peak_flops  # noqa: F401 (peak FLOP/s per chip, for MFU)
from dualtalk_jax.config import DualTalkConfig, get_model_config
from dualtalk_jax.train import step as step_lib


class NonFiniteLossError(FloatingPointError):
  pass


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields (`{"data.window_frames": 50}`), as `--config.data.window_frames=50` does."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def model_config(config: ml_collections.ConfigDict) -> DualTalkConfig:
  cfg = get_model_config(config.model, config.get("wav2vec2_config") or None)
  return dataclasses.replace(cfg, scan_layers=bool(config.get("scan_layers", True)))


def compute_dtype(config) -> Any:
  name = config.get("compute_dtype", "float32")
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype must be float32 or bfloat16, got {name!r}")
  return jnp.dtype(name)


def uses_feature_cache(config) -> bool:
  return bool(config.data.get("feature_cache", False))


def frozen_wav2vec2(config) -> bool:
  """Frozen wav2vec2 mode: `optim.freeze_wav2vec2`, or implied by `data.feature_cache`."""
  return bool(config.optim.get("freeze_wav2vec2", False)) or uses_feature_cache(config)


def make_model_def(config, cfg: DualTalkConfig) -> step_lib.ModelDef:
  """The model graph a run of `config` trains (dtype, remat, frozen wav2vec2); shared with `aot`."""
  return step_lib.ModelDef(cfg, dtype=compute_dtype(config), remat=config.get("remat", ""),
                           frozen_encoders=frozen_wav2vec2(config))


def optim_config(config) -> step_lib.OptimConfig:
  o = config.optim
  return step_lib.OptimConfig(learning_rate=o.learning_rate, decay_rate=o.decay_rate, decay_steps=o.decay_steps,
                              grad_clip_norm=o.grad_clip_norm, freeze_feature_extractor=o.freeze_feature_extractor,
                              freeze_wav2vec2=frozen_wav2vec2(config))


def initial_params(config, model_def: step_lib.ModelDef) -> dict:
  """Params to start from: a converted DualTalk checkpoint, else fresh init (+ pretrained wav2vec2)."""
  if config.get("init_checkpoint"):
    params, cfg, _ = checkpoint.restore_params(config.init_checkpoint, scan_layers=model_def.config.scan_layers)
    if cfg != model_def.config:
      raise ValueError(f"{config.init_checkpoint}: its model config differs from the run's")
    return params
  if config.get("pretrained_wav2vec2"):
    from dualtalk_jax.convert import hf_wav2vec2
    from dualtalk_jax.models.dualtalk import DualTalk, make_rngs

    model = DualTalk(model_def.config, rngs=make_rngs(config.seed))
    hf_wav2vec2.init_dualtalk_encoders(model, config.pretrained_wav2vec2)
    return checkpoint.model_params(model)
  return model_def.init_params(config.seed)


def ensure_synthetic_data(config, workdir: str) -> None:
  """Synthesizes and preprocesses train/val conversations into the workdir when missing.

  Idempotent: synthesis is skipped where the folder holds clips, and preprocessing
  rebuilds nothing that is up to date. Process 0 writes; the others wait for it.
  """
  from dualtalk_jax.data import preprocess, synthetic

  syn = config.synthetic
  # Held-out clips are new conversations of the same speakers (like the dataset's test split).
  splits = (("train", syn.num_train_clips, 0, config.data.train_dir),
            ("val", syn.num_val_clips, syn.num_train_clips, config.data.val_dir))
  if jax.process_index() == 0:
    for name, num, first, out_dir in splits:
      raw = os.path.join(workdir, "synthetic", name)
      if not (os.path.isdir(raw) and any(f.endswith(".npz") for f in os.listdir(raw))):
        synthetic.synthesize(raw, num, syn.seed, first_index=first, min_seconds=syn.min_seconds,
                             max_seconds=syn.max_seconds)
      preprocess.preprocess(raw, out_dir, window_frames=config.data.window_frames)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("synthetic data ready")


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
  shards = config.data.get("num_shards", 0) or n_proc
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
          feature_cache=uses_feature_cache(config)))
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


class _DropOrbaxInfo(logging_std.Filter):
  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def quiet_orbax() -> None:
  """Keeps orbax's per-save INFO lines out of the training log (warnings still show)."""
  logging.get_absl_handler().addFilter(_DropOrbaxInfo())


class _Preemption:
  """Turns SIGTERM into a flag the loop checks at step boundaries."""

  def __init__(self):
    self.requested = False
    self._old = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint at the next step boundary")
    self.requested = True

  def restore(self):
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


def validate(config, model_def, eval_step, params, mesh) -> dict[str, float]:
  """Released loss and the paper's metrics over the whole validation split.

  `dualtalk_jax.eval.evaluate.evaluate_batches` (jitted metric kernels): every host
  predicts its share of clips, each with the model's own T, and the sums are combined.
  Keys: `val_loss`, `val_loss_<part>`, `val_<released metric key>` (`config.data.eval_metrics`
  False: the loss only).
  """
  from dualtalk_jax.data import pipeline
  from dualtalk_jax.eval import evaluate

  ds = pipeline.make_eval_dataset(config.data.val_dir, batch_size=config.data.eval_batch_size,
                                  bucket_frames=config.data.eval_bucket_frames)
  predict_fn = lambda batch: eval_step(params, {k: batch[k] for k in step_lib.BATCH_NDIM})
  return evaluate.evaluate_batches(predict_fn, ds, scores=config.data.get("eval_metrics", True))


def check_feature_cache(config, state, cfg: DualTalkConfig) -> None:
  """Refuses train data whose feature cache was not made with this run's encoder weights."""
  from dualtalk_jax.data import feature_cache

  enc = state["params"]["joint_encoder"]
  host = step_lib.host_params({"params": {"joint_encoder": {k: enc[k] for k in feature_cache.ENCODERS}}})
  cache = feature_cache.check_run_weights(config.data.train_dir, host, cfg.wav2vec2, config.data.window_frames)
  logging.info("feature cache of %s matches the run's encoders (fingerprint %s, from %s)", config.data.train_dir,
               cache["fingerprint"], cache["source"])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config` in `workdir` (resuming if it holds a checkpoint); returns the last metrics."""
  jax.config.update("jax_threefry_partitionable", True)
  workdir = os.path.abspath(workdir)
  if config.get("synthetic") and config.synthetic.get("enabled", False):
    with config.unlocked():
      config.data.train_dir = config.data.train_dir or os.path.join(workdir, "data", "train")
      config.data.val_dir = config.data.val_dir or os.path.join(workdir, "data", "val")
    ensure_synthetic_data(config, workdir)
  if not config.data.train_dir:
    raise ValueError("config.data.train_dir is empty: point it at a folder made by experiments.preprocess")
  write_config(config, workdir)

  cfg = model_config(config)
  devices = jax.devices()[: config.mesh.num_devices] if config.mesh.get("num_devices") else None
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
  n_proc = jax.process_count()
  if config.batch_size % (n_proc * config.grad_accum) or (config.batch_size // config.grad_accum) % mesh.size:
    raise ValueError(f"batch_size {config.batch_size} must split over {n_proc} processes, grad_accum {config.grad_accum} "
                     f"and {mesh.size} devices")
  model_def = make_model_def(config, cfg)
  ocfg = optim_config(config)
  feature_cache = uses_feature_cache(config)
  batch_keys = step_lib.batch_ndim(feature_cache)
  tx = step_lib.make_optimizer(ocfg, model_def.abstract_params)
  schedule = step_lib.learning_rate_schedule(ocfg)

  data_iter = train_iterator(config)
  ckpt = checkpoint.TrainCheckpointer(workdir, cfg, keep=config.keep_checkpoints)

  abstract_state = jax.eval_shape(lambda p: {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)},
                                  model_def.abstract_params)
  shardings = step_lib.state_shardings(abstract_state, mesh)
  latest = ckpt.latest_step()
  if latest is not None:
    logging.info("resuming from %s step %d", ckpt.root, latest)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
    state = ckpt.restore(latest, target, data_iter)
  else:
    state, _ = step_lib.init_state(model_def, tx, initial_params(config, model_def), mesh=mesh)
  if feature_cache:
    try:
      check_feature_cache(config, state, cfg)
    except BaseException:
      ckpt.close()
      raise
  train_step = step_lib.make_train_step(model_def, tx, seed=config.seed, grad_accum=config.grad_accum, mesh=mesh,
                                        state_shardings=shardings, feature_cache=feature_cache)
  eval_step = step_lib.make_eval_step(model_def)

  writer = _summary_writer(workdir)
  preemption = _Preemption()
  start_step = int(jax.device_get(state["step"]))
  frames_per_step = config.batch_size * config.data.window_frames
  flops_per_step, peak = None, peak_flops(jax.devices()[0])
  metrics: dict[str, Any] = {}
  progress = None
  if jax.process_index() == 0 and config.get("progress_bar", True):
    from tqdm import tqdm

    progress = tqdm(total=config.total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
  t0, last_log_step = time.time(), start_step
  try:
    for step in range(start_step, config.total_steps):
      batch = sharding.shard_batch({k: v for k, v in next(data_iter).items() if k in batch_keys}, mesh)
      if flops_per_step is None:  # compile once, ahead of time, and keep its cost analysis
        train_step = train_step.lower(state, batch).compile()
        cost = train_step.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops_per_step = float(cost.get("flops", 0.0)) if cost else 0.0
      state, m = train_step(state, batch)
      done = step + 1
      loss = float(m["loss"])
      if not np.isfinite(loss):
        raise NonFiniteLossError(f"non-finite loss ({loss}) at step {done}; stopped without saving, the last good "
                                 f"checkpoint in {ckpt.root} is kept")
      if progress:
        progress.update(1)
      if done % config.log_every == 0 or done == config.total_steps:
        m = jax.device_get(m)
        dt = time.time() - t0
        steps_s = (done - last_log_step) / max(dt, 1e-9)
        metrics = {k: float(v) for k, v in m.items()}
        metrics.update(learning_rate=float(schedule(done - 1)), steps_per_s=steps_s, frames_per_s=steps_s * frames_per_step)
        if flops_per_step and peak:
          metrics["mfu"] = steps_s * flops_per_step / (peak * jax.device_count())
        t0, last_log_step = time.time(), done
        logging.info("step %d: %s", done, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if progress:
          progress.set_postfix(loss=f"{metrics['loss']:.4f}")
        if writer:
          for k, v in metrics.items():
            writer.add_scalar(f"train/{k}", v, done)
      if config.eval_every and config.data.get("val_dir") and (done % config.eval_every == 0 or done == config.total_steps):
        val = validate(config, model_def, eval_step, state["params"], mesh)
        if val:
          metrics.update(val)
          logging.info("step %d validation: %s", done, " ".join(f"{k}={v:.4g}" for k, v in val.items()))
          if writer:
            for k, v in val.items():
              writer.add_scalar(f"val/{k}", v, done)
          ckpt.save_best(done, state["params"], val["val_loss"])
      if done % config.checkpoint_every == 0 or done == config.total_steps or preemption.requested:
        ckpt.save(done, state, data_iter, metrics)
      if preemption.requested:
        logging.warning("preempted: saved step %d, exiting", done)
        break
  finally:
    ckpt.wait()
    ckpt.close()
    preemption.restore()
    if progress:
      progress.close()
    if writer:
      writer.close()
  metrics["step"] = int(jax.device_get(state["step"]))
  metrics["flops_per_step"] = flops_per_step or 0.0
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "last_metrics.json"), "w") as f:
      json.dump(metrics, f, indent=2)
  return {"metrics": metrics, "state": state, "model_def": model_def}
