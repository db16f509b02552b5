"""Data pipeline throughput: preprocessing rate and training windows per second.

  python -m benchmarks.data_pipeline [--num_clips=40] [--workers=2] [--batches=60]

Synthesises `num_clips` conversations of 20-40 s (the dataset averages about 31 s), times
`preprocess` (hours of audio per minute of wall time; "audio hours" counts each clip's
duration once, not once per speaker), then times the training pipeline (200-frame windows,
batch 32) with 0 and `--workers` prefetch processes. A "window" is one 200-frame span of
a clip; each yields two samples (both directions), so windows/s = samples/s / 2.
Besides wall-clock rates it prints windows per CPU-second (all threads and worker
processes), which stays meaningful when other jobs share the cores.

With the wav2vec2 feature cache: the same set is preprocessed again with
`--cache_wav2vec2` (timed: the cache build), using a random-init checkpoint whose two
encoders share one wav2vec2 of hidden size `--cache_hidden` (default 1024, the `large`
model's, which is all that sets the bytes per window: W x hidden x 4 bytes per speaker)
but only `--cache_layers` encoder layers and narrow convs, so that it builds in seconds
on 2 cores; the build time is therefore NOT that of the real large wav2vec2. The same
pipeline configurations are then timed with `feature_cache=True`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from absl import app, flags, logging

_NUM_CLIPS = flags.DEFINE_integer("num_clips", 40, "synthetic clips to build")
_WORKERS = flags.DEFINE_integer("workers", 2, "preprocess workers; prefetch threads/processes")
_BATCHES = flags.DEFINE_integer("batches", 60, "batches timed per configuration")
_BATCH = flags.DEFINE_integer("batch_size", 32, "batch size")
_WINDOW = flags.DEFINE_integer("window_frames", 200, "window length in frames")
_WORKDIR = flags.DEFINE_string("workdir", None, "where to build data (default: a temp dir)")
_CACHE_HIDDEN = flags.DEFINE_integer("cache_hidden", 1024, "wav2vec2 hidden size of the cache (large: 1024)")
_CACHE_LAYERS = flags.DEFINE_integer("cache_layers", 1, "encoder layers of the random-init cache wav2vec2")
_CACHE_BATCH = flags.DEFINE_integer("cache_batch_size", 8, "windows per wav2vec2 call when building the cache")


def _cpu_seconds():
  import psutil
  me = psutil.Process()
  procs = [me] + me.children(recursive=True)
  total = 0.0
  for p in procs:
    try:
      t = p.cpu_times()
      total += t.user + t.system
    except psutil.NoSuchProcess:
      pass
  return total


def _time_pipeline(data_dir, batches, batch_size, window_frames, **kw):
  from dualtalk_jax.data import pipeline
  ds = pipeline.make_train_dataset(data_dir, window_frames=window_frames,
                                   batch_size=batch_size, seed=0, num_epochs=None,
                                   process_index=0, process_count=1, **kw)
  it = iter(ds)
  for _ in range(3):  # Warm-up: worker start, first blocks.
    next(it)
  t0, c0 = time.perf_counter(), _cpu_seconds()
  for _ in range(batches):
    b = next(it)
  dt, dc = time.perf_counter() - t0, _cpu_seconds() - c0
  if kw.get("feature_cache"):
    assert b["features_self"].shape[:2] == (batch_size, window_frames) and "audio_self" not in b
  else:
    assert b["audio_self"].shape == (batch_size, window_frames * 640)
  if hasattr(it, "close"):
    it.close()
  windows = batches * batch_size / 2
  return windows / dt, windows / dc, dc / dt


def _cache_checkpoint(path, hidden, layers):
  """A random-init tiny DualTalk with a wav2vec2 of `hidden` width, both encoders equal."""
  import dataclasses

  from dualtalk_jax import checkpoint, params as params_lib
  from dualtalk_jax.config import CONFIGS, WAV2VEC2_TINY
  from dualtalk_jax.models.dualtalk import DualTalk, make_rngs

  w2v = dataclasses.replace(WAV2VEC2_TINY, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=16,
                            intermediate_size=hidden, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16)
  cfg = dataclasses.replace(CONFIGS["tiny"], wav2vec2=w2v)
  params = params_lib.of(DualTalk(cfg, rngs=make_rngs(0)))
  params["joint_encoder"]["audio_encoder2"] = params["joint_encoder"]["audio_encoder1"]
  return checkpoint.save_params(path, params, cfg, overwrite=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax's INFO lines (the cache checkpoint)
  from dualtalk_jax import runtime
  from dualtalk_jax.data import preprocess, synthetic

  runtime.configure()  # the heap settings training runs with (hostmem.tune_malloc)

  work = _WORKDIR.value or tempfile.mkdtemp(prefix="dtj_bench_")
  raw, out = os.path.join(work, "raw"), os.path.join(work, "shards")
  try:
    t0 = time.perf_counter()
    synthetic.synthesize(raw, _NUM_CLIPS.value, seed=0, min_seconds=20, max_seconds=40)
    t_syn = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    m = preprocess.preprocess(raw, out, workers=_WORKERS.value, window_frames=_WINDOW.value)
    t_pre = time.perf_counter() - t0
    t0 = time.perf_counter()
    preprocess.preprocess(raw, out, workers=_WORKERS.value, window_frames=_WINDOW.value)
    t_rerun = time.perf_counter() - t0
    hours = m["hours"]
    print(f"cpu cores: {os.cpu_count()}")
    print(f"synthesize: {_NUM_CLIPS.value} clips, {hours * 60:.1f} min of conversation in "
          f"{t_syn:.1f} s ({t_syn / _NUM_CLIPS.value * 1000:.0f} ms/clip)")
    print(f"preprocess ({_WORKERS.value} workers): {t_pre:.1f} s -> "
          f"{hours / (t_pre / 60):.2f} h of audio per minute; up-to-date re-run {t_rerun:.2f} s")
    print(f"load average before timing: {os.getloadavg()[0]:.1f}")
    configs = [("in-process", {}), (f"thread_count={_WORKERS.value}",
                                    {"thread_count": _WORKERS.value}),
               (f"worker_count={_WORKERS.value}", {"worker_count": _WORKERS.value})]
    for name, kw in configs:
      wall, per_cpu, util = _time_pipeline(out, _BATCHES.value, _BATCH.value, _WINDOW.value,
                                           **kw)
      print(f"train pipeline, no feature cache, {name}: {wall:,.0f} windows/s "
            f"({2 * wall:,.0f} samples/s) of {_WINDOW.value} frames, batch {_BATCH.value}; "
            f"{per_cpu:,.0f} windows per CPU-second, {util:.2f} cores used")

    ckpt = _cache_checkpoint(os.path.join(work, "cache_ckpt"), _CACHE_HIDDEN.value, _CACHE_LAYERS.value)
    t0 = time.perf_counter()
    m = preprocess.preprocess(raw, out, workers=_WORKERS.value, window_frames=_WINDOW.value,
                              cache_wav2vec2=ckpt, cache_batch_size=_CACHE_BATCH.value)
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    preprocess.preprocess(raw, out, workers=_WORKERS.value, window_frames=_WINDOW.value,
                          cache_wav2vec2=ckpt, cache_batch_size=_CACHE_BATCH.value)
    t_cache_rerun = time.perf_counter() - t0
    fc, windows = m["feature_cache"], m["counts"]["training_windows"]
    cache_bytes = sum(s["bytes"] for s in fc["shards"])
    audio_bytes = sum(s["bytes"] for s in m["shards"])
    print(f"feature cache build (random-init wav2vec2, hidden {fc['hidden_size']}, {_CACHE_LAYERS.value} layer(s), "
          f"narrow convs; NOT the large model's compute): {t_cache:.1f} s for {windows} windows x 2 speakers "
          f"({2 * windows / t_cache:.1f} encoder windows/s, batch {_CACHE_BATCH.value}, incl. compile and "
          f"weight loading); up-to-date re-run {t_cache_rerun:.2f} s")
    print(f"feature cache size: {cache_bytes / 2**20:,.0f} MiB ({cache_bytes / windows / 2**20:.2f} MiB per window, "
          f"{'shared' if fc['shared'] else 'two'} encoder(s)); clip shards {audio_bytes / 2**20:,.0f} MiB")
    for name, kw in configs:
      wall, per_cpu, util = _time_pipeline(out, _BATCHES.value, _BATCH.value, _WINDOW.value,
                                           feature_cache=True, **kw)
      print(f"train pipeline, with feature cache (hidden {fc['hidden_size']}), {name}: {wall:,.0f} windows/s "
            f"({2 * wall:,.0f} samples/s) of {_WINDOW.value} frames, batch {_BATCH.value}; "
            f"{per_cpu:,.0f} windows per CPU-second, {util:.2f} cores used")
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
