"""Data pipeline throughput: preprocessing rate and training windows per second.

  python -m benchmarks.data_pipeline [--num_clips=40] [--workers=2] [--batches=60]

Synthesises `num_clips` conversations of 20-40 s (the dataset averages about 31 s), times
`preprocess` (hours of audio per minute of wall time; "audio hours" counts each clip's
duration once, not once per speaker), then times the training pipeline (200-frame windows,
batch 32) with 0 and `--workers` prefetch processes. A "window" is one 200-frame span of
a clip; each yields two samples (both directions), so windows/s = samples/s / 2.
Besides wall-clock rates it prints windows per CPU-second (all threads and worker
processes), which stays meaningful when other jobs share the cores. The wav2vec2 feature
cache is not implemented yet, so that row is reported as n/a.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from absl import app, flags

_NUM_CLIPS = flags.DEFINE_integer("num_clips", 40, "synthetic clips to build")
_WORKERS = flags.DEFINE_integer("workers", 2, "preprocess workers; prefetch threads/processes")
_BATCHES = flags.DEFINE_integer("batches", 60, "batches timed per configuration")
_BATCH = flags.DEFINE_integer("batch_size", 32, "batch size")
_WINDOW = flags.DEFINE_integer("window_frames", 200, "window length in frames")
_WORKDIR = flags.DEFINE_string("workdir", None, "where to build data (default: a temp dir)")


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
  assert b["audio_self"].shape == (batch_size, window_frames * 640)
  if hasattr(it, "close"):
    it.close()
  windows = batches * batch_size / 2
  return windows / dt, windows / dc, dc / dt


def main(argv):
  del argv
  from dualtalk_jax.data import preprocess, synthetic

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
    print("train pipeline, with feature cache: n/a (cache not implemented yet)")
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
