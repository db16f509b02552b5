"""DualTalk split folder -> ArrayRecord shards + `manifest.json` (layout in records.py).

Per clip `<clip>_speaker{1,2}.{wav,npz}`:
1. All four files must exist (else `missing_files`, e.g. "missing partner motion").
2. Audio through `dualtalk_jax.audio.read_audio`: mono required (`stereo_audio`),
   unreadable/truncated/empty/non-finite files are rejected (`unreadable_audio`,
   `truncated_audio`); other sample rates are resampled to 16 kHz and noted.
   Each track is then normalised over the whole file (`audio.normalize`, as the
   wav2vec2 feature extractor does on the full utterance in the released code).
3. Motion through `audio.motion_from_flame`: unreadable npz (`unreadable_motion`),
   missing `exp`/`pose` or wrong widths (`bad_motion`), NaN/inf (`nonfinite_motion`).
4. Lengths: per speaker, the audio's frame count `num_frames(samples)` and the motion's
   T may differ by at most `max_frame_mismatch` (1) frames, and the two speakers'
   motions by as much (else `length_mismatch`). Within tolerance everything is cut to
   `T = min(T_1, T_2, num_frames(samples_1), num_frames(samples_2))` frames and each
   audio to at most `T * 640` samples (noted as `trimmed` if any frame is dropped).
5. Clips shorter than `window_frames` are kept (evaluation uses whole clips) and noted
   `short_for_training`; training skips them.

Rejected clips are listed in the manifest's `skipped` with a code and a reason naming the
file; notes go to each clip's `notes`. Nothing is dropped silently. With `strict=True`
the first rejected clip raises `PreprocessError` (the CLI exits non-zero); notes are
informational and never fatal. Files in the folder that are not part of a clip are
listed under `unrecognized_files` (fatal under `strict`).

Idempotent and atomic: clips go to shards by sorted name (contiguous chunks). A shard is
written under a temp name and renamed, then its sidecar JSON (fingerprint of version,
options and every input file's size and mtime) is written; the manifest is written last.
A re-run reuses every shard whose sidecar fingerprint still matches, so an interrupted
run resumes and a repeated run rebuilds nothing. Readers only trust `manifest.json`.

Optional wav2vec2 feature cache (`cache_wav2vec2=<checkpoint or HF wav2vec2 dir>`):
after the clip shards, the frozen encoders' outputs for every training window are
stored in sibling `features-*` shards and described by the manifest's `feature_cache`
(null otherwise), so training with frozen encoders (`data.feature_cache`) reads features
instead of running wav2vec2. Same idempotence: a re-run with the same weights rebuilds
nothing, other weights rebuild the feature shards, a run without `cache_wav2vec2` keeps a
cache that is still valid. Content, fingerprints and the refusal rule: feature_cache.py;
layout: records.py. The clip shards do not depend on it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import re
from typing import Any, Iterator

import numpy as np

from dualtalk_jax import audio as audio_lib
from dualtalk_jax.data import records

_FILE_RE = re.compile(r"^(?P<clip>.+)_speaker(?P<spk>[12])\.(?P<ext>wav|npz)$")
_AUDIO_KIND_TO_CODE = {"multichannel": "stereo_audio", "truncated": "truncated_audio"}
_MOTION_KIND_TO_CODE = {"nonfinite": "nonfinite_motion"}
SILENT_STD = 1e-4


class PreprocessError(RuntimeError):
  """A fatal problem (any rejected clip under `strict`, or a bad input folder)."""


@dataclasses.dataclass(frozen=True)
class Problem:
  clip: str
  code: str
  reason: str

  def to_dict(self):
    return dataclasses.asdict(self)


@dataclasses.dataclass
class ClipResult:
  clip: str
  record: bytes | None = None
  entry: dict[str, Any] | None = None
  problem: Problem | None = None


def scan_folder(input_dir: str) -> tuple[dict[str, dict[str, str]], list[str]]:
  """`{clip: {"wav1"|"wav2"|"npz1"|"npz2": filename}}` and the unrecognised file names."""
  if not os.path.isdir(input_dir):
    raise PreprocessError(f"{input_dir}: not a directory")
  clips: dict[str, dict[str, str]] = collections.defaultdict(dict)
  other = []
  for name in sorted(os.listdir(input_dir)):
    if name.startswith("."):
      continue
    m = _FILE_RE.match(name)
    if not m or not os.path.isfile(os.path.join(input_dir, name)):
      other.append(name)
      continue
    clips[m["clip"]][f"{m['ext']}{m['spk']}"] = name
  return dict(sorted(clips.items())), other


def _stats(x: np.ndarray) -> dict[str, float]:
  x64 = x.astype(np.float64)
  return {"mean": float(x64.mean()), "std": float(x64.std()), "peak": float(np.abs(x64).max())}


def process_clip(input_dir: str, clip: str, files: dict[str, str], *, window_frames: int = 200,
                 max_frame_mismatch: int = audio_lib.MAX_FRAME_MISMATCH, channel: int | None = None) -> ClipResult:
  """Validates and encodes one clip. Never raises for bad data: returns a `Problem`."""

  def fail(code, reason):
    return ClipResult(clip, problem=Problem(clip, code, reason))

  missing = []
  for spk in (1, 2):
    for ext, what in (("wav", "audio"), ("npz", "motion")):
      if f"{ext}{spk}" not in files:
        missing.append(f"missing partner {what}: {clip}_speaker{spk}.{ext} not found")
  if missing:
    return fail("missing_files", "; ".join(missing))

  notes, audios, motions, stats, rates = [], [], [], [], []
  for spk in (1, 2):
    path = os.path.join(input_dir, files[f"wav{spk}"])
    try:
      a = audio_lib.read_audio(path, channel=channel)
    except audio_lib.AudioError as e:
      return fail(_AUDIO_KIND_TO_CODE.get(e.kind, "unreadable_audio"), str(e))
    if a.resampled:
      notes.append(f"resampled: speaker{spk} audio from {a.orig_rate} Hz to 16000 Hz")
    st = _stats(a.samples)
    if st["std"] < SILENT_STD:
      notes.append(f"silent_audio: speaker{spk} (std {st['std']:.2e})")
    stats.append(st)
    rates.append(a.orig_rate)
    audios.append(audio_lib.normalize(a.samples))
    path = os.path.join(input_dir, files[f"npz{spk}"])
    try:
      with np.load(path, allow_pickle=False) as z:
        npz = {k: z[k] for k in ("exp", "pose") if k in z.files}
        keys = sorted(z.files)
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError, EOFError...
      return fail("unreadable_motion", f"{path}: unreadable npz ({type(e).__name__}: {e})")
    for k in ("exp", "pose"):
      if k not in npz:
        return fail("bad_motion", f"{path}: missing key {k!r} (has {keys})")
    try:
      motions.append(audio_lib.motion_from_flame(npz))
    except audio_lib.MotionError as e:
      return fail(_MOTION_KIND_TO_CODE.get(e.kind, "bad_motion"), f"{path}: {e}")

  audio_frames = [audio_lib.num_frames(a.size) for a in audios]
  pairs = [((f"{files[f'wav{i + 1}']} ({audios[i].size} samples)", audio_frames[i]),
            (files[f"npz{i + 1}"], motions[i].shape[0])) for i in range(2)]
  pairs.append(((files["npz1"], motions[0].shape[0]), (files["npz2"], motions[1].shape[0])))
  for a, b in pairs:
    if problem := audio_lib.frame_mismatch(a, b, max_frame_mismatch):
      return fail("length_mismatch", problem)
  t = min(motions[0].shape[0], motions[1].shape[0], *audio_frames)
  if t < 1:
    return fail("length_mismatch", f"{clip}: no frame common to both speakers")
  if any(m.shape[0] > t for m in motions) or any(a.size > (t + 1) * audio_lib.SAMPLES_PER_FRAME - 1 for a in audios):
    notes.append(f"trimmed: to {t} frames (motion {[m.shape[0] for m in motions]}, audio "
                 f"frames {audio_frames})")
  audios = [a[:t * audio_lib.SAMPLES_PER_FRAME] for a in audios]
  motions = [m[:t] for m in motions]
  usable = records.usable_frames(t, [a.size for a in audios])
  if usable < window_frames:
    notes.append(f"short_for_training: {usable} < {window_frames} frames; kept for "
                 "evaluation, skipped by training")
  rec = records.encode_clip(clip, t, {"audio_1": audios[0], "audio_2": audios[1],
                                      "motion_1": motions[0], "motion_2": motions[1]})
  entry = {"name": clip, "frames": t, "audio_samples": [int(a.size) for a in audios],
           "orig_rates": rates, "audio_stats": {"speaker1": stats[0], "speaker2": stats[1]},
           "notes": notes}
  return ClipResult(clip, record=rec, entry=entry)


def _process_task(args) -> ClipResult:
  input_dir, clip, files, kw = args
  try:
    return process_clip(input_dir, clip, files, **kw)
  except Exception as e:  # A bug must not look like a data problem: report it loudly.
    return ClipResult(clip, problem=Problem(clip, "internal_error",
                                            f"{clip}: {type(e).__name__}: {e}"))


def _bounded_imap(pool, tasks, max_pending):
  """`pool.imap` in order, but with at most `max_pending` results (~4 MB each) in flight.

  `imap` itself submits everything at once, so fast workers and a slow writer would
  pile the whole split up in memory.
  """
  pending = collections.deque()
  it = iter(tasks)
  for task in it:
    pending.append(pool.apply_async(_process_task, (task,)))
    if len(pending) >= max_pending:
      break
  while pending:
    result = pending.popleft().get()
    for task in it:
      pending.append(pool.apply_async(_process_task, (task,)))
      break
    yield result


def _fingerprint(input_dir, clips, files, options) -> str:
  h = hashlib.sha256()
  h.update(json.dumps([records.PREPROCESS_VERSION, options], sort_keys=True).encode())
  for c in clips:
    h.update(c.encode())
    for k in sorted(files[c]):
      st = os.stat(os.path.join(input_dir, files[c][k]))
      h.update(f"|{files[c][k]}:{st.st_size}:{st.st_mtime_ns}".encode())
  return h.hexdigest()


def _sidecar_ok(output_dir, shard_file, fingerprint) -> dict | None:
  side = os.path.join(output_dir, shard_file + ".json")
  try:
    with open(side) as f:
      s = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  if s.get("fingerprint") != fingerprint:
    return None
  if s["num_records"]:
    p = os.path.join(output_dir, shard_file)
    if not os.path.exists(p) or os.path.getsize(p) != s["bytes"]:
      return None
  return s


def _summary(values):
  if not values:
    return None
  v = np.asarray(values, np.float64)
  return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def preprocess(input_dir: str, output_dir: str, *, num_shards: int = 0, workers: int = 1,
               strict: bool = False, window_frames: int = 200,
               max_frame_mismatch: int = audio_lib.MAX_FRAME_MISMATCH, progress: bool = False,
               cache_wav2vec2: str | None = None, cache_batch_size: int = 8,
               channel: int | None = None) -> dict[str, Any]:
  """Builds (or brings up to date) `output_dir` from `input_dir`; returns the manifest.

  `num_shards=0` picks about 64 clips per shard. `workers>1` loads clips in that many
  processes while this one writes. See the module docstring for validation rules.
  `cache_wav2vec2`: also build the wav2vec2 feature cache with these weights (a
  dualtalk-jax checkpoint / training workdir, or a local HF wav2vec2 directory), running
  the encoders on `cache_batch_size` windows per call (see feature_cache.py). `channel`
  picks that channel of multichannel audio (else such files are rejected).

  A folder with no usable clip raises `PreprocessError` with every clip's reason and
  leaves nothing behind (no shards, no sidecars, no manifest).
  """
  from array_record.python.array_record_module import ArrayRecordWriter

  from dualtalk_jax.data import feature_cache

  if window_frames < 1 or max_frame_mismatch < 0:
    raise ValueError("window_frames must be >= 1 and max_frame_mismatch >= 0")
  if cache_wav2vec2 and feature_cache.source_kind(cache_wav2vec2) is None:
    raise PreprocessError(feature_cache.not_weights_message(cache_wav2vec2))
  input_dir = os.path.abspath(input_dir)
  files, unrecognized = scan_folder(input_dir)
  if not files:
    raise PreprocessError(f"{input_dir}: no `<clip>_speaker{{1,2}}.{{wav,npz}}` files found")
  if strict and unrecognized:
    raise PreprocessError(f"{input_dir}: files that belong to no clip: {unrecognized}")
  created = not os.path.exists(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  for name in os.listdir(output_dir):  # Leftovers of an interrupted run.
    if name.startswith(".tmp-"):
      os.remove(os.path.join(output_dir, name))
  names = list(files)
  num_shards = num_shards or max(1, math.ceil(len(names) / 64))
  num_shards = min(num_shards, len(names))
  options = {"window_frames": window_frames, "max_frame_mismatch": max_frame_mismatch,
             "num_shards": num_shards}
  if channel is not None:  # (absent otherwise, so existing shards keep their fingerprints)
    options["channel"] = channel
  plan = []
  for i, chunk in enumerate(np.array_split(np.arange(len(names)), num_shards)):
    clips = [names[j] for j in chunk]
    fname = records.shard_name(i, num_shards)
    plan.append((fname, clips, _fingerprint(input_dir, clips, files, {**options, "shard": i})))
  keep = {p[0] for p in plan} | {p[0] + ".json" for p in plan}
  for name in os.listdir(output_dir):  # Shards of an older layout (other num_shards).
    if name.startswith("shard-") and name not in keep:
      os.remove(os.path.join(output_dir, name))

  done = {fname: _sidecar_ok(output_dir, fname, fp) for fname, _, fp in plan}
  todo = [p for p in plan if done[p[0]] is None]
  if strict:  # Up-to-date shards may hold clips an earlier, non-strict run skipped.
    for side in done.values():
      if side is not None and side["skipped"]:
        s = side["skipped"][0]
        raise PreprocessError(f"[{s['code']}] {s['reason']}")
  kw = {"window_frames": window_frames, "max_frame_mismatch": max_frame_mismatch, "channel": channel}
  tasks = [(input_dir, c, files[c], kw) for _, clips, _ in todo for c in clips]
  pool = None
  if workers > 1 and len(tasks) > 1:
    import multiprocessing
    pool = multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)))
    results: Iterator[ClipResult] = _bounded_imap(pool, tasks, 2 * workers)
  else:
    results = map(_process_task, tasks)
  bar = None
  if progress:
    from dualtalk_jax.progress import Progress
    bar = Progress(len(tasks), "preprocess", unit="clip")
  try:
    for fname, clips, fp in todo:
      done[fname] = _write_shard(output_dir, fname, clips, fp, results, strict, bar,
                                 ArrayRecordWriter)
  finally:
    if bar is not None:
      bar.close()
    if pool is not None:
      pool.terminate()
      pool.join()
  if not any(side["num_records"] for side in done.values()):
    reasons = [s["reason"] for side in done.values() for s in side["skipped"]]
    for fname, _, _ in plan:
      side_path = os.path.join(output_dir, fname + ".json")
      if os.path.exists(side_path):
        os.remove(side_path)
    if created and not os.listdir(output_dir):
      os.rmdir(output_dir)
    shown = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
    raise PreprocessError(f"{input_dir}: no usable clip, nothing written: {shown}")
  if cache_wav2vec2:
    cache = feature_cache.build(output_dir, plan, done, cache_wav2vec2, window_frames,
                                batch_size=cache_batch_size, progress=progress)
  else:
    cache = feature_cache.carry_over(output_dir, plan, done)
  manifest = _manifest(input_dir, output_dir, plan, done, unrecognized, options, cache)
  records.write_json(os.path.join(output_dir, records.MANIFEST), manifest)
  return manifest


def _write_shard(output_dir, fname, clips, fingerprint, results, strict, bar, writer_cls):
  path = os.path.join(output_dir, fname)
  tmp = os.path.join(output_dir, ".tmp-" + fname)
  writer = None
  entries, skipped = [], []
  try:
    for clip in clips:
      res = next(results)
      assert res.clip == clip, (res.clip, clip)
      if bar is not None:
        bar.update(1)
      if res.problem is not None:
        if strict or res.problem.code == "internal_error":
          raise PreprocessError(f"[{res.problem.code}] {res.problem.reason}")
        skipped.append(res.problem.to_dict())
        continue
      if writer is None:
        writer = writer_cls(tmp, "group_size:1,uncompressed")
      writer.write(res.record)
      entries.append({**res.entry, "index_in_shard": len(entries)})
    if writer is not None:
      writer.close()
      writer = None
      os.replace(tmp, path)
  finally:
    if writer is not None:
      writer.close()
    if os.path.exists(tmp):
      os.remove(tmp)
  side = {"fingerprint": fingerprint, "num_records": len(entries),
          "bytes": os.path.getsize(path) if entries else 0, "clips": entries,
          "skipped": skipped}
  if not entries and os.path.exists(path):
    os.remove(path)
  records.write_json(path + ".json", side)
  return side


def _manifest(input_dir, output_dir, plan, done, unrecognized, options, feature_cache=None):
  shards, clips, skipped = [], [], []
  for fname, names, _ in plan:
    side = done[fname]
    skipped += side["skipped"]
    if not side["num_records"]:
      continue
    base = sum(s["num_records"] for s in shards)
    shards.append({"file": fname, "num_records": side["num_records"], "bytes": side["bytes"]})
    for e in side["clips"]:
      clips.append({**e, "shard": fname, "record_index": base + e["index_in_shard"]})
  frames = [c["frames"] for c in clips]
  w = options["window_frames"]
  windows = [records.window_count(c["frames"], c["audio_samples"], w) for c in clips]
  notes = collections.Counter(n.split(":")[0] for c in clips for n in c["notes"])
  stds = [c["audio_stats"][s]["std"] for c in clips for s in ("speaker1", "speaker2")]
  peaks = [c["audio_stats"][s]["peak"] for c in clips for s in ("speaker1", "speaker2")]
  return {
      "format": "dualtalk-arrayrecord",
      "preprocessing_version": records.PREPROCESS_VERSION,
      "input_dir": input_dir,
      "options": options,
      "feature_cache": feature_cache,
      "counts": {
          "clips_found": sum(len(p[1]) for p in plan),
          "clips_written": len(clips),
          "clips_skipped": len(skipped),
          "short_for_training": sum(n == 0 for n in windows),
          "training_windows": int(sum(windows)),
          "notes": dict(sorted(notes.items())),
      },
      "hours": sum(frames) / audio_lib.FPS / 3600,
      "audio_stats": {"std": _summary(stds), "peak": _summary(peaks),
                      "silent_tracks": int(sum(s < SILENT_STD for s in stds))},
      "shards": shards,
      "clips": clips,
      "skipped": skipped,
      "unrecognized_files": unrecognized,
  }
