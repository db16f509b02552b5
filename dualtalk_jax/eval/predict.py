"""Prediction for evaluation and inference: checkpoint loading, bucketed batches, windows.

- `load_model`: an orbax checkpoint directory, a training workdir (its latest step) or a
  released-layout torch file (`DualTalk.pth`, with a named config) -> `DualTalk` in eval mode.
- `predict_clips`: many clips of different lengths in padded batches. Audio is padded to
  a multiple of `bucket_seconds` (and motion to the same number of frames), the batch to
  a fixed `batch_size`, so a whole split compiles once per bucket, not once per clip; each
  row keeps its true lengths, and the model masks the padding, so a clip's prediction is
  the one it gets alone.
- `predict_windowed`: one input of any length in overlapping windows of fixed size, so
  memory does not grow with the input (the heap is trimmed after each batch of windows,
  `hostmem.release_free_memory`). Window k covers frames [s_k, s_k + W) and samples
  [s_k * 640, (s_k + W) * 640) of both tracks (normalised over the whole clip, as a single
  pass would be), with the partner motion of the same frames; it is run with
  `num_frames = W` so frames stay exactly aligned. Neighbouring windows overlap by at
  least `overlap_seconds` and are crossfaded linearly across their whole overlap; the
  output has exactly the whole-clip T = `audio.num_frames(len(audio_self))` frames.

  How close windows come to one whole-clip pass depends on the model: the released
  model's attentions have no positional terms and see the whole input (the partner's
  whole motion in the cross-attention), so every frame carries some whole-clip context
  that a window replaces by its own; and a whole-clip pass maps frame f to conv frame
  f * (C - 1) / (T - 1) (linear resampling), which drifts from the frame-exact 2f of a
  window by up to about one conv frame (20 ms) unless len(audio_self) % 640 is in
  [400, 640), where the two grids coincide.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from dualtalk_jax import audio, hostmem, params as params_lib
from dualtalk_jax.files import InputError
from dualtalk_jax.progress import Progress

HOP = audio.SAMPLES_PER_FRAME


@dataclasses.dataclass
class Clip:
  """One prediction: normalised 16 kHz audio of the target and partner, the partner's motion."""

  audio_self: np.ndarray
  audio_other: np.ndarray
  motion_other: np.ndarray | None  # None: a no_partner_motion model, which never reads it
  name: str = ""

  @property
  def num_frames(self) -> int:
    """Output frames, from the target's audio (float64 formula of the released code)."""
    return audio.num_frames(len(self.audio_self))


def check_checkpoint_path(path: str) -> str:
  """Fails fast, before any import of the model, on a checkpoint path that cannot be one."""
  from dualtalk_jax import checkpoint
  from dualtalk_jax.convert import pytorch

  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such checkpoint (an orbax checkpoint directory, a workdir or a .pth file)")
  if not pytorch.is_torch_file(path):
    checkpoint.resolve(path)
  elif os.path.isdir(path):
    raise FileNotFoundError(f"{path}: is a directory, not a torch file")
  return path


def load_model(checkpoint_path: str, *, config: str = "large", wav2vec2_config: str | None = None,
               config_given: bool = False):
  """`DualTalk` in eval mode from an orbax checkpoint dir / workdir, or a torch file.

  A torch file's model config is the one it recorded (exports do), else `config`
  (+ `wav2vec2_config`); `config_given` says the user named it, so it must agree with a
  recorded one.
  """
  from dualtalk_jax import checkpoint
  from dualtalk_jax.config import get_model_config
  from dualtalk_jax.convert import pytorch
  from dualtalk_jax.models.dualtalk import DualTalk, make_rngs

  path = check_checkpoint_path(checkpoint_path)
  if pytorch.is_torch_file(path):
    asked = get_model_config(config, wav2vec2_config) if (config_given or wav2vec2_config) else None
    params, cfg = pytorch.load_torch_params(path, asked, default=config)
  else:
    params, cfg, _ = checkpoint.restore_params(path)
  model = DualTalk(cfg, rngs=make_rngs(0))
  params_lib.load(model, params)
  model.eval()
  return model


def load_inputs(audio_self: str, audio_other: str, motion_other: str | None, name: str = "", *,
                channel: int | None = None, normalize: bool = True) -> Clip:
  """Reads and checks one prediction's three files (errors name the file); no partner
  motion file (None) for a no_partner_motion model.

  Lengths follow preprocess's rule (`audio.frame_mismatch`): the partner's audio and
  motion agree within `audio.MAX_FRAME_MISMATCH` frames, and the target's audio is within
  twice that of the partner's motion (preprocess holds each track to its own motion and
  the two motions to each other); without partner motion, the two audio tracks agree
  within twice the tolerance. `channel` picks one channel of multichannel audio.
  `normalize=False` keeps the audio as read (streaming normalises as it goes).
  """
  load = _load_track if normalize else load_raw_track
  a = load(audio_self, channel)
  b = load(audio_other, channel)
  m = None if motion_other is None else load_motion(motion_other)
  partner = ((f"{motion_other} (partner motion)", len(m)) if m is not None else
             (f"{audio_other} (partner audio)", audio.num_frames(len(b))))
  checks = [((f"{audio_self} (target audio)", audio.num_frames(len(a))), partner, 2 * audio.MAX_FRAME_MISMATCH)]
  if m is not None:
    checks.append(((f"{audio_other} (partner audio)", audio.num_frames(len(b))), partner, audio.MAX_FRAME_MISMATCH))
  for x, y, tol in reversed(checks):
    if problem := audio.frame_mismatch(x, y, tol):
      raise InputError(f"length mismatch: {problem}; the files of one conversation must cover the same time")
  return Clip(a, b, m, name or os.path.basename(audio_self))


def _load_track(path: str, channel: int | None = None) -> np.ndarray:
  return audio.normalize(load_raw_track(path, channel))


def load_raw_track(path: str, channel: int | None = None) -> np.ndarray:
  """16 kHz mono samples of one file, not normalised (streaming normalises as it goes);
  errors name the file."""
  x = audio.load_audio(path, channel=channel)
  if len(x) < HOP:
    raise audio.AudioError(f"{path}: audio is {len(x)} samples, shorter than one frame ({HOP} samples at 16 kHz)",
                           "empty")
  return x


def save_prediction(path: str, pred: np.ndarray) -> str:
  """Writes a (T, 56) prediction to `path` (.npy) and FLAME `exp`/`pose` to the .npz beside it
  (for renderers), each under a temporary name then renamed; returns the .npz path."""
  from dualtalk_jax.data.records import atomic_write
  from dualtalk_jax.eval.evaluate import save_npy

  save_npy(path, pred)
  npz = os.path.splitext(path)[0] + ".npz"

  def write_npz(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **audio.flame_from_motion(pred))

  atomic_write(npz, write_npz)
  return npz


def load_motion(path: str) -> np.ndarray:
  """(T, 56) motion from a FLAME npz; errors name the file."""
  if not os.path.exists(path):
    raise InputError(f"{path}: no such motion file")
  try:
    with np.load(path) as z:
      npz = {k: z[k] for k in z.files}
  except Exception as e:
    raise InputError(f"{path}: unreadable npz ({type(e).__name__}: {e})") from None
  try:
    return audio.motion_from_flame(npz)
  except audio.MotionError as e:
    raise InputError(f"{path}: {e}") from None


def bucket(n: int, multiple: int) -> int:
  return max(1, -(-int(n) // multiple)) * multiple


def _pad_rows(rows: Sequence[np.ndarray], width: int, batch: int) -> np.ndarray:
  out = np.zeros((batch, width) + rows[0].shape[1:], np.float32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def predict_padded(model, clips: Sequence[Clip], *, batch_size: int | None = None, bucket_seconds: float = 2.0,
                   num_frames: Sequence[int] | None = None) -> list[np.ndarray]:
  """One padded batch: audio to a multiple of `bucket_seconds`, rows to `batch_size`.

  Padding rows repeat the first clip (their outputs are dropped). `num_frames` overrides
  each clip's output length (windows). Returns each clip's (T_i, 56) prediction.
  """
  from dualtalk_jax.models.dualtalk import predict

  b = batch_size or len(clips)
  if not 0 < len(clips) <= b:
    raise ValueError(f"{len(clips)} clips for a batch of {b}")
  step = max(HOP, int(round(bucket_seconds * audio.SAMPLE_RATE / HOP)) * HOP)
  frames = np.array([c.num_frames for c in clips] if num_frames is None else num_frames, np.int32)
  s_pad = bucket(max(max(len(c.audio_self), len(c.audio_other)) for c in clips), step)
  max_frames = max(audio.num_frames(s_pad), int(frames.max()))
  rows = list(clips) + [clips[0]] * (b - len(clips))
  frames = np.concatenate([frames, np.repeat(frames[:1], b - len(clips))])
  lens = lambda key: np.array([len(getattr(c, key)) for c in rows], np.int32)
  motion = motion_lengths = None  # all clips without partner motion: a no_partner_motion model
  if any(c.motion_other is not None for c in clips):
    if any(c.motion_other is None for c in clips):
      raise ValueError("clips with and without partner motion in one batch")
    motion = _pad_rows([c.motion_other for c in rows], bucket(max(len(c.motion_other) for c in clips), step // HOP), b)
    motion_lengths = lens("motion_other")
  out = predict(
      model, _pad_rows([c.audio_self for c in rows], s_pad, b), _pad_rows([c.audio_other for c in rows], s_pad, b),
      motion, audio_self_lengths=lens("audio_self"), audio_other_lengths=lens("audio_other"),
      motion_other_lengths=motion_lengths, num_frames=frames, max_frames=max_frames)
  out = np.asarray(out)
  return [out[i, :frames[i]] for i in range(len(clips))]


def predict_clips(model, clips: Sequence[Clip], *, batch_size: int = 8, bucket_seconds: float = 2.0,
                  progress: bool = False) -> list[np.ndarray]:
  """Predictions for clips of any lengths, in input order.

  Clips are sorted by padded length and batched within a bucket, so each batch compiles
  once per (bucket) shape and padding stays under `bucket_seconds` per clip.
  """
  if not clips:
    return []
  step = max(HOP, int(round(bucket_seconds * audio.SAMPLE_RATE / HOP)) * HOP)
  key = lambda i: bucket(max(len(clips[i].audio_self), len(clips[i].audio_other)), step)
  order = sorted(range(len(clips)), key=lambda i: (key(i), i))
  groups: list[list[int]] = []
  for i in order:
    if groups and key(groups[-1][0]) == key(i) and len(groups[-1]) < batch_size:
      groups[-1].append(i)
    else:
      groups.append([i])
  bar = Progress(len(clips), "predict", unit="clip", enabled=progress)
  out: list[np.ndarray | None] = [None] * len(clips)
  for g in groups:
    for i, p in zip(g, predict_padded(model, [clips[i] for i in g], batch_size=batch_size,
                                      bucket_seconds=bucket_seconds)):
      out[i] = p
    hostmem.release_free_memory()
    bar.update(len(g))
  bar.close()
  return out  # type: ignore[return-value]


def window_starts(total: int, window: int, overlap: int) -> list[int]:
  """Start frames of windows of `window` frames covering [0, total), neighbours overlapping
  by at least `overlap`, spread evenly (the last one ends at `total`)."""
  if total <= window:
    return [0]
  n = -(-(total - overlap) // (window - overlap))
  n = max(n, 2)
  return [int(round(k * (total - window) / (n - 1))) for k in range(n)]


def crossfade_ramp(length: int, fade_in: int, fade_out: int) -> np.ndarray:
  """(length,) weights of one window: rising linearly across its first `fade_in` frames
  (its overlap with the window before) and falling across its last `fade_out` (the overlap
  with the next), 1 elsewhere; a rise and a fall over the same frames sum to 1."""
  w = np.ones(length, np.float64)
  f = np.arange(length) + 0.5
  if fade_in > 0:
    w = np.minimum(w, f / fade_in)
  if fade_out > 0:
    w = np.minimum(w, (length - f) / fade_out)
  return w


def crossfade_weights(starts: Sequence[int], window: int) -> np.ndarray:
  """(K, window) weights: linear ramps across each overlap with a neighbour, so two
  overlapping windows' weights sum to 1 frame by frame (normalised where more overlap)."""
  n = len(starts)
  return np.stack([
      crossfade_ramp(window, starts[k - 1] + window - s if k > 0 else 0,
                     s + window - starts[k + 1] if k + 1 < n else 0) for k, s in enumerate(starts)])


def window_overlap(window_seconds: float, overlap_seconds: float | None = None) -> float:
  """The overlap of windowed prediction: `overlap_seconds` checked against the window, or
  by default min(2 s, window / 4), so a default always fits the window."""
  if window_seconds < 0:
    raise ValueError(f"window_seconds must be >= 0, got {window_seconds}")
  if overlap_seconds is None:
    return min(2.0, window_seconds / 4)
  if window_seconds > 0 and not 0 <= overlap_seconds <= window_seconds / 2:
    raise ValueError(f"overlap_seconds must be in [0, window_seconds / 2] = [0, {window_seconds / 2:g}], "
                     f"got {overlap_seconds:g}")
  return overlap_seconds


def predict_windowed(model, clip: Clip, *, window_seconds: float = 20.0, overlap_seconds: float | None = None,
                     batch_size: int = 1, runner=None) -> np.ndarray:
  """(T, 56) prediction of one clip of any length, T = the whole-clip frame count.

  `window_seconds <= 0`, or a clip no longer than one window, is one pass over the whole
  clip (the released behaviour). Otherwise windows of `window_seconds` overlapping by at
  least `overlap_seconds` (`window_overlap`: default min(2 s, window / 4); see module
  docstring), `batch_size` windows per call: one
  compile, and memory bounded by the window size whatever the input length. `runner`
  (clips, num_frames) -> predictions replaces the model call (tests, other backends).
  """
  if runner is None:
    runner = lambda cs, nf: predict_padded(model, cs, batch_size=batch_size if nf else 1,
                                           bucket_seconds=window_seconds if nf else 2.0, num_frames=nf)
  overlap_seconds = window_overlap(window_seconds, overlap_seconds)
  t = clip.num_frames
  w = int(round(window_seconds * audio.FPS))
  if window_seconds <= 0 or t <= w:
    return runner([clip], None)[0]
  o = min(int(round(overlap_seconds * audio.FPS)), w // 2)
  starts = window_starts(t, w, o)
  weights = crossfade_weights(starts, w)
  wins = []
  for s in starts:
    a = clip.audio_self[s * HOP:(s + w) * HOP]
    b = clip.audio_other[s * HOP:(s + w) * HOP]
    if len(b) < len(a):  # the partner's track ended earlier: silence (0 after normalisation)
      b = np.concatenate([b, np.zeros(len(a) - len(b), np.float32)])
    m = None
    if clip.motion_other is not None:
      n = len(clip.motion_other)
      m0 = min(s, n - 1)  # at least one partner frame, the last one if its motion ended
      m = clip.motion_other[m0:max(m0 + 1, min(s + w, n))]
    wins.append(Clip(a, b, m))
  out = np.zeros((t, audio.MOTION_DIM), np.float64)
  norm = np.zeros((t, 1), np.float64)
  for i in range(0, len(wins), batch_size):
    preds = runner(wins[i:i + batch_size], [w] * len(wins[i:i + batch_size]))
    hostmem.release_free_memory()  # else glibc's arenas grow with the number of windows
    for k, p in zip(range(i, i + len(preds)), preds):
      out[starts[k]:starts[k] + w] += weights[k][:, None] * p
      norm[starts[k]:starts[k] + w] += weights[k][:, None]
  return (out / norm).astype(np.float32)


def checkpoint_config(checkpoint_path: str, *, config: str = "large", wav2vec2_config: str | None = None,
                      config_given: bool = False):
  """The `DualTalkConfig` `load_model` would build, read without loading any weights (so
  a CLI can refuse inputs that do not fit the model before the slow load)."""
  from dualtalk_jax import checkpoint
  from dualtalk_jax.config import get_model_config
  from dualtalk_jax.convert import pytorch

  path = check_checkpoint_path(checkpoint_path)
  if pytorch.is_torch_file(path):
    asked = get_model_config(config, wav2vec2_config) if (config_given or wav2vec2_config) else None
    return pytorch.torch_file_config(path, asked, default=config)
  return checkpoint.read_model_config(path)


def predict_both(model, audio_1: np.ndarray, audio_2: np.ndarray, *, iterations: int | None = None,
                 window_seconds: float = 20.0, overlap_seconds: float | None = None, batch_size: int = 1,
                 predict_one=None) -> tuple[np.ndarray, np.ndarray, float]:
  """Both speakers' motion from the two normalised tracks of one conversation.

  Returns (T_1, 56), (T_2, 56) and the largest change of any value in the last round
  (0 for a model without partner motion). A `no_partner_motion` model reads only the two
  audio tracks: each speaker is one prediction, exactly as with one target. A model that
  reads the partner's motion needs `iterations`: each speaker gets the other speaker's
  *predicted* motion, by fixed-point iteration over the whole conversation: round 1 gives
  each speaker a still partner (the neutral FLAME face, all zeros), round k + 1 the
  partner's round-k prediction. Each round predicts both speakers from the previous round
  only (Jacobi), so the two are treated alike; the returned change says how far from a
  fixed point the last round still moved. The model never saw predicted partners in
  training: this is an approximation, which can be far off (docs/ablation.md). Windowing
  as `predict_windowed` (`predict_one(clip) -> (T, 56)` replaces it: tests).
  """
  if iterations is not None and iterations < 1:
    raise ValueError(f"iterations must be >= 1, got {iterations}")
  if predict_one is None:
    predict_one = lambda c: predict_windowed(model, c, window_seconds=window_seconds,
                                             overlap_seconds=overlap_seconds, batch_size=batch_size)
  if not model.config.uses_partner_motion:
    return predict_one(Clip(audio_1, audio_2, None)), predict_one(Clip(audio_2, audio_1, None)), 0.0
  if iterations is None:
    raise ValueError("this model reads the partner's motion: predicting both speakers needs `iterations` "
                     "(fixed-point rounds on the other's prediction), or a no_partner_motion model")
  m1 = np.zeros((audio.num_frames(len(audio_1)), audio.MOTION_DIM), np.float32)
  m2 = np.zeros((audio.num_frames(len(audio_2)), audio.MOTION_DIM), np.float32)
  change = float("inf")
  for _ in range(iterations):
    n1, n2 = predict_one(Clip(audio_1, audio_2, m2)), predict_one(Clip(audio_2, audio_1, m1))
    change = float(max(np.abs(n1 - m1).max(), np.abs(n2 - m2).max()))
    m1, m2 = n1, n2
  return m1, m2, change
