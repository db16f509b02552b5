"""Grain input pipelines over preprocessed shards (see records.py / preprocess.py).

Training (`make_train_dataset`): fixed-shape batches of windows, each window in both
directions (each speaker is the target once), so a clip with n windows gives 2n
samples per epoch. Windows are non-overlapping, `window_frames` (W) long, from frame 0;
window w covers frames [w*W, (w+1)*W) and audio samples [w*W*640, (w+1)*W*640).
Per clip `n = min(T, min(samples_1, samples_2) // 640) // W` (`records.window_count`);
clips with n = 0 are skipped (the manifest notes them as `short_for_training`).

Reading: a record holds a whole clip (both speakers, about 4 MB for 30 s), and reading
it costs far more than slicing a window, so windows are not read one at a time. Each
epoch the process's clips are shuffled (seed, epoch), cut into blocks of
`clips_per_block` clips, and the samples of a block (all its windows, both
directions) are shuffled together (seed, epoch, block). A batch therefore mixes windows
of about `clips_per_block` clips, each clip is read once per epoch, and every sample
is a pure function of (seed, epoch, block, position): grain's iterator state is small
and a restored iterator continues with exactly the next batch. Memory: about
`clips_per_block` x 4 MB per block, two or three blocks alive per worker/thread.

Multi-host: clips (not windows) are split between processes by a greedy balance on
window counts (disjoint, covering, sample counts within one clip's worth of each
other). Every process should be run with repeat (`num_epochs=None`) and the training
loop counts steps, so hosts stay in lock-step.

Checkpointing: `it = iter(ds)`; `it.get_state()` is a small JSON-able dict and
`iter(ds).set_state(state)` resumes with exactly the next batch. With orbax, save it as
a sibling item: `ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(it))` and
restore with `grain.checkpoint.CheckpointRestore(it)` (handler
`grain.checkpoint.CheckpointHandler`). Config fields map 1:1 to the keyword arguments
of `make_train_dataset`.

Batch keys (training, all `B = batch_size` rows, numpy):
  audio_self, audio_other     (B, W*640) float32, normalised 16 kHz audio
  motion_self                 (B, W, 56) float32, the target
  motion_other                (B, W, 56) float32
  audio_self_lengths, audio_other_lengths, motion_other_lengths, num_frames   (B,) int32
  clip_id (record index), window, target (1 or 2: which speaker is the target)   (B,) int32
With `feature_cache=True` (data preprocessed with `--cache_wav2vec2`; everything about
the cache is in feature_cache.py) the blocks are read from the feature shards (features
and motion, no audio) and the batches hold, instead of the audio and its lengths,
  features_self               (B, W, H) float32, audio_encoder1 on the target's window
  features_other              (B, W, H) float32, audio_encoder2 on the partner's window
(H = the cache's wav2vec2 hidden size); the other keys, the window order and the
iterator state are exactly those of the audio pipeline with the same arguments.
Evaluation (`make_eval_dataset`) yields whole clips in a fixed order (manifest order,
target speaker 1 then 2), padded by `pad_batch` (the bucketing prediction uses too) to a
multiple of `bucket_frames`, with the true lengths in the length keys (`num_frames` =
the model's output frames, `audio.num_frames(audio_self_lengths)`; `motion_self_lengths`
= ground-truth frames) and `valid` (B,) int32 (0 for padding rows: the last batch, and
the rows that give every process the same number of batches).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import grain
import numpy as np

from dualtalk_jax import audio, hostmem
from dualtalk_jax.data import records


def _process(process_index, process_count):
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def balance(weights: Sequence[int], parts: int) -> list[list[int]]:
  """Greedy split of item indices into `parts` with near-equal total weight.

  Heaviest first, each to the lightest part (lowest index on ties); deterministic.
  Each part's indices are returned sorted.
  """
  loads = [0] * parts
  out: list[list[int]] = [[] for _ in range(parts)]
  for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
    p = min(range(parts), key=lambda p: (loads[p], p))
    out[p].append(i)
    loads[p] += weights[i]
  return [sorted(o) for o in out]


class ClipReader:
  """Random access to decoded clips by record index. Picklable; opens files lazily.

  `paths`: shards parallel to the clip shards to read instead (the feature cache's,
  `feature_cache.reader`)."""

  def __init__(self, data_dir: str, manifest: dict[str, Any], paths: list[str] | None = None):
    self._paths = records.shard_paths(data_dir, manifest) if paths is None else paths
    self._source = None

  def __getstate__(self):
    return {"_paths": self._paths, "_source": None}

  def __call__(self, index: int) -> dict[str, Any]:
    if self._source is None:
      self._source = grain.sources.ArrayRecordDataSource(self._paths)
    return records.decode_clip(self._source[int(index)])


class _Block:
  __slots__ = ("clips", "items")

  def __init__(self, clips, items):
    self.clips = clips  # {record_index: decoded clip}
    self.items = items  # [(record_index, window, target_speaker_0_or_1)]


class _LoadBlock:
  """(index in the repeated block range) -> _Block. A pure function of its index."""

  def __init__(self, reader, clip_ids, windows, clips_per_block, seed, shuffle):
    self.reader, self.clip_ids, self.windows = reader, clip_ids, windows
    self.k, self.seed, self.shuffle = clips_per_block, seed, shuffle
    self.blocks_per_epoch = math.ceil(len(clip_ids) / clips_per_block)

  def __call__(self, index, _):
    epoch, b = divmod(int(index), self.blocks_per_epoch)
    n = len(self.clip_ids)
    order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
             else np.arange(n))
    chosen = order[b * self.k:(b + 1) * self.k]
    items = [(self.clip_ids[j], w, d) for j in chosen for w in range(self.windows[j])
             for d in (0, 1)]
    if self.shuffle:
      perm = np.random.default_rng([self.seed, epoch, b, 1]).permutation(len(items))
      items = [items[i] for i in perm]
    return _Block({self.clip_ids[j]: self.reader(self.clip_ids[j]) for j in chosen}, items)


def _pair(clip, target):
  s, o = (1, 2) if target == 0 else (2, 1)
  return clip[f"audio_{s}"], clip[f"audio_{o}"], clip[f"motion_{s}"], clip[f"motion_{o}"]


class _WindowAudio:
  """The model inputs of one training window from its clip record: both tracks' audio."""

  def __init__(self, window_frames):
    self.n = window_frames * audio.SAMPLES_PER_FRAME

  def __call__(self, record, window, target):
    a_s, a_o, _, _ = _pair(record, target - 1)
    a0, n = window * self.n, np.int32(self.n)
    return {"audio_self": a_s[a0:a0 + self.n], "audio_other": a_o[a0:a0 + self.n], "audio_self_lengths": n,
            "audio_other_lengths": n}


class _Windows(grain.experimental.FlatMapTransform):
  """_Block -> its samples, in the block's (shuffled) order. `inputs(record, window,
  target)` gives a window's model inputs: audio (`_WindowAudio`) or cached features
  (`feature_cache.WindowFeatures`)."""

  max_fan_out = 1 << 30

  def __init__(self, window_frames, inputs):
    self.w = window_frames
    self.inputs = inputs

  def flat_map(self, block):
    w, out = self.w, []
    n_frames = np.int32(w)
    for cid, win, d in block.items:
      clip = block.clips[cid]
      s, o = (1, 2) if d == 0 else (2, 1)
      f0 = win * w
      sample = self.inputs(clip, win, d + 1)
      sample.update({
          "motion_self": clip[f"motion_{s}"][f0:f0 + w],
          "motion_other": clip[f"motion_{o}"][f0:f0 + w],
          "motion_other_lengths": n_frames,
          "num_frames": n_frames,
          "clip_id": np.int32(cid),
          "window": np.int32(win),
          "target": np.int32(d + 1),
      })
      out.append(sample)
    return out


def train_clips(manifest: dict[str, Any], window_frames: int, process_index: int,
                process_count: int) -> tuple[list[int], list[int]]:
  """This process's (record indices, window counts) of the clips with >= 1 window."""
  recs, wins = [], []
  for c in manifest["clips"]:
    n = records.window_count(c["frames"], c["audio_samples"], window_frames)
    if n:
      recs.append(c["record_index"])
      wins.append(n)
  if not recs:
    raise records.DataError(f"no clip has a full window of {window_frames} frames")
  if len(recs) < process_count:
    raise records.DataError(f"{len(recs)} training clips cannot feed {process_count} "
                            "processes")
  mine = balance(wins, process_count)[process_index]
  return [recs[i] for i in mine], [wins[i] for i in mine]


def make_train_dataset(data_dir: str, *, window_frames: int = 200, batch_size: int = 32,
                       seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                       worker_count: int = 0, thread_count: int = 0, prefetch: int = 2,
                       clips_per_block: int = 16, process_index: int | None = None,
                       process_count: int | None = None, read_threads: int = 2,
                       feature_cache: bool = False) -> grain.IterDataset:
  """Training batches (see module docstring). Iterate it; `iter(ds)` has get/set_state.

  `num_epochs=None` repeats forever. Prefetching: `worker_count` > 0 runs the pipeline
  in that many processes (`mp_prefetch`; scales past the GIL on big hosts, but each
  batch then goes through a fresh shared-memory segment, about 3x the CPU per window);
  else `thread_count` > 0 runs it in that many threads (`multithread_prefetch`; best on
  small hosts). `prefetch` is the buffer per worker/thread, in batches. Both keep
  get/set_state exact. The batch order is deterministic for given seed and
  worker/thread counts (they interleave slices of the block sequence), so resume with
  the same counts. Process index/count default to
  `jax.process_index()/process_count()`. Worker processes get the heap settings of their
  parent (`hostmem.tune_malloc`, from `runtime.configure()`). `feature_cache=True` yields cached wav2vec2 features instead of audio
  (module docstring); the data must hold a cache of `window_frames`-frame windows.
  """
  if window_frames < 1 or batch_size < 1 or clips_per_block < 1:
    raise ValueError("window_frames, batch_size and clips_per_block must be >= 1")
  if worker_count < 0 or thread_count < 0 or prefetch < 1:
    raise ValueError("worker_count and thread_count must be >= 0, prefetch >= 1")
  pi, pc = _process(process_index, process_count)
  manifest = records.load_manifest(data_dir)
  clip_ids, windows = train_clips(manifest, window_frames, pi, pc)
  if feature_cache:
    from dualtalk_jax.data import feature_cache as cache

    reader, inputs = cache.train_source(data_dir, manifest, window_frames)
  else:
    reader, inputs = ClipReader(data_dir, manifest), _WindowAudio(window_frames)
  loader = _LoadBlock(reader, clip_ids, windows, clips_per_block, seed, shuffle)
  ds = grain.MapDataset.range(loader.blocks_per_epoch).repeat(num_epochs)
  ds = ds.map_with_index(loader)
  # One reader thread, a block or two ahead: blocks are large (clips_per_block clips).
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_threads))
  ds = grain.experimental.FlatMapIterDataset(ds, _Windows(window_frames, inputs))
  ds = ds.batch(batch_size, drop_remainder=True)
  if worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=prefetch),
                        worker_init_fn=hostmem.tune_malloc if hostmem.tuned() else None)
  elif thread_count > 0:
    ds = grain.experimental.multithread_prefetch(ds, num_threads=thread_count,
                                                 buffer_size=prefetch)
  return ds


def samples_per_epoch(data_dir: str, *, window_frames: int = 200,
                      process_index: int | None = None,
                      process_count: int | None = None) -> int:
  """Training samples (windows x 2 directions) this process sees per epoch."""
  pi, pc = _process(process_index, process_count)
  _, windows = train_clips(records.load_manifest(data_dir), window_frames, pi, pc)
  return 2 * sum(windows)


class _LoadWhole:

  def __init__(self, reader):
    self.reader = reader

  def __call__(self, item):
    cid, target = item
    if cid < 0:
      return None
    clip = self.reader(cid)
    a_s, a_o, m_s, m_o = _pair(clip, target)
    return {"audio_self": a_s, "audio_other": a_o, "motion_self": m_s, "motion_other": m_o,
            "num_frames": audio.num_frames(a_s.size), "clip_id": cid, "target": target + 1}


def sample_frames(sample: dict[str, Any]) -> int:
  """Frames one sample needs in a padded batch: its output frames and every input's length."""
  lengths = [sample["num_frames"], -(-len(sample["audio_self"]) // audio.SAMPLES_PER_FRAME), -(-len(sample["audio_other"]) // audio.SAMPLES_PER_FRAME)]
  return max(lengths + [len(sample[k]) for k in ("motion_self", "motion_other") if sample.get(k) is not None])


def pad_batch(samples: Sequence[dict[str, Any] | None], batch_size: int, bucket_frames: int) -> dict[str, np.ndarray]:
  """Whole clips -> one padded batch of `batch_size` rows: the one bucketing of prediction and validation.

  A sample holds `audio_self`, `audio_other`, `motion_other` (None: absent) and
  `num_frames` (the model's output frames), optionally `motion_self`, `clip_id`, `target`;
  None is a padding row. Time is padded to T = `audio.bucket_frames` of the longest
  sample (`sample_frames`) and audio to T * 640 samples; the true lengths are kept
  (`*_lengths`, `num_frames`), and `valid` is 0 on padding rows.
  """
  if len(samples) > batch_size:
    raise ValueError(f"{len(samples)} samples for a batch of {batch_size}")
  t = audio.bucket_frames(max([sample_frames(s) for s in samples if s is not None] + [1]), bucket_frames)
  out = {k: np.zeros((batch_size, t * audio.SAMPLES_PER_FRAME), np.float32) for k in ("audio_self", "audio_other")}
  out.update({k: np.zeros((batch_size, t, audio.MOTION_DIM), np.float32) for k in ("motion_self", "motion_other")})
  for k in ("self", "other"):
    out[f"audio_{k}_lengths"] = np.zeros((batch_size,), np.int32)
    out[f"motion_{k}_lengths"] = np.zeros((batch_size,), np.int32)
  for k in ("num_frames", "target", "valid"):
    out[k] = np.zeros((batch_size,), np.int32)
  out["clip_id"] = np.full((batch_size,), -1, np.int32)
  for i, s in enumerate(samples):
    if s is None:
      continue
    for k in ("audio_self", "audio_other", "motion_self", "motion_other"):
      if s.get(k) is not None:
        out[k][i, :len(s[k])] = s[k]
        out[f"{k}_lengths"][i] = len(s[k])
    out["num_frames"][i], out["valid"][i] = s["num_frames"], 1
    out["clip_id"][i], out["target"][i] = s.get("clip_id", -1), s.get("target", 0)
  return out


def make_eval_dataset(data_dir: str, *, batch_size: int = 8, bucket_frames: int = 250,
                      targets: Sequence[int] = (1, 2), process_index: int | None = None,
                      process_count: int | None = None) -> grain.MapDataset:
  """Whole clips in manifest order (see module docstring); a `MapDataset` of batches.

  Rows are dealt round-robin to processes and padded (valid=0) so that every process
  has the same number of batches.
  """
  if batch_size < 1 or bucket_frames < 1:
    raise ValueError("batch_size and bucket_frames must be >= 1")
  if not targets or any(t not in (1, 2) for t in targets):
    raise ValueError(f"targets must be a non-empty subset of (1, 2), got {targets}")
  pi, pc = _process(process_index, process_count)
  manifest = records.load_manifest(data_dir)
  items = [(c["record_index"], t - 1) for c in manifest["clips"] for t in targets]
  per_process = math.ceil(len(items) / pc)
  per_process = math.ceil(per_process / batch_size) * batch_size
  mine = items[pi::pc]
  mine += [(-1, 0)] * (per_process - len(mine))
  ds = grain.MapDataset.source(mine).map(_LoadWhole(ClipReader(data_dir, manifest)))
  return ds.batch(batch_size, batch_fn=functools.partial(pad_batch, batch_size=batch_size, bucket_frames=bucket_frames))
