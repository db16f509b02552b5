"""Prediction for evaluation and inference: checkpoint loading, the one predictor, bucketed batches, windows.

- `load_model`: an orbax checkpoint directory, a training workdir (its latest step) or a
  released-layout torch file (`DualTalk.pth`, with a named config) -> `DualTalk` in eval mode.
- `Predictor`: the one prediction function (the jitted, mesh-aware eval step of
  `train.step`), shared by validation, evaluation, inference, streaming, the benchmarks
  and AOT; `predict` runs it on arrays.
- `predict_clips`: many clips of different lengths in padded batches (`pipeline.pad_batch`,
  the bucketing validation uses): time padded to a multiple of `bucket_frames`, the batch
  to a fixed `batch_size`, so a whole split compiles once per bucket, not once per clip;
  each row keeps its true lengths, and the model masks the padding, so a clip's
  prediction is the one it gets alone.
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
import functools
import os
from typing import Sequence

import numpy as np

from dualtalk_jax import audio, hostmem, params as params_lib
from dualtalk_jax.files import InputError
from dualtalk_jax.progress import Progress



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

  def sample(self, num_frames: int | None = None) -> dict:
    """The clip as a `pipeline.pad_batch` sample; `num_frames` overrides its output frames."""
    return {"audio_self": self.audio_self, "audio_other": self.audio_other, "motion_other": self.motion_other,
            "num_frames": self.num_frames if num_frames is None else num_frames}


def split_clips(data_dir: str) -> list[tuple[Clip, np.ndarray]]:
  """Every clip of a preprocessed split in both directions, in manifest order: (the clip
  named `<clip>_speakerK`, speaker K's true motion)."""
  from dualtalk_jax.data import pipeline, records

  manifest = records.load_manifest(data_dir)
  reader = pipeline.ClipReader(data_dir, manifest)
  out = []
  for c in manifest["clips"]:
    rec = reader(c["record_index"])
    for me, other in ((1, 2), (2, 1)):
      clip = Clip(rec[f"audio_{me}"], rec[f"audio_{other}"], rec[f"motion_{other}"], f"{c['name']}_speaker{me}")
      out.append((clip, rec[f"motion_{me}"]))
  return out


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
  if len(x) < audio.SAMPLES_PER_FRAME:
    raise audio.AudioError(f"{path}: audio is {len(x)} samples, shorter than one frame ({audio.SAMPLES_PER_FRAME} samples at 16 kHz)",
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


class Predictor:
  """The one prediction function: host rows of a padded batch -> their (rows, T, 56) predictions.

  It runs the one jitted eval step (`train.step.make_eval_step`: eval mode, whatever
  mode the model was in) that validation, `experiments.evaluate`, inference, streaming,
  the benchmarks and AOT share. Without a mesh it is a plain jit on the default device.
  On a mesh (one host or several), every host passes its own rows, the same number on
  every host and a multiple of its devices (`rows`); the time axes are padded to the
  longest of all hosts' batches and the global arrays built with `sharding.shard_batch`,
  as in training; each host gets its own rows back.
  """

  def __init__(self, model_def, params, *, mesh=None, eval_step=None):
    """`model_def`: a `train.step.ModelDef`; `params` its params tree (host or device).
    `eval_step` (already built for `mesh`, e.g. the training program's) is reused as is;
    else one is built, and on a mesh the params are placed by the sharding rules."""
    from dualtalk_jax import sharding
    from dualtalk_jax.train import step

    self.config = model_def.config
    self.mesh = mesh
    if eval_step is None:
      shardings = None if mesh is None else sharding.tree_shardings(model_def.abstract_params, mesh)
      eval_step = step.make_eval_step(model_def, mesh=mesh, param_shardings=shardings)
      if mesh is not None:
        import jax

        params = jax.device_put(params, shardings)
    self.step, self.params = eval_step, params

  @classmethod
  def from_model(cls, model, *, mesh=None) -> "Predictor":
    """For a `DualTalk` module (its params now). Without a mesh the compiled step is shared by
    every model of the same config."""
    params = params_lib.of(model)
    if mesh is None:
      model_def, step = _local_step(model.config)
      return cls(model_def, params, eval_step=step)
    from dualtalk_jax.train.step import ModelDef

    return cls(ModelDef(model.config), params, mesh=mesh)

  def rows(self, batch_size: int) -> int:
    """Rows per call: `batch_size` rounded up to a multiple of this host's mesh devices."""
    if self.mesh is None:
      return batch_size
    import jax

    local = sum(d.process_index == jax.process_index() for d in self.mesh.devices.flat)
    return -(-batch_size // local) * local

  def require_motion(self, given: bool) -> None:
    from dualtalk_jax.models.dualtalk import require_partner_motion

    require_partner_motion(self.config, given)

  def __call__(self, batch: dict[str, np.ndarray], max_frames: int | None = None) -> np.ndarray:
    """Predictions of `batch`'s rows (`train.step.MODEL_INPUTS` keys; others ignored), as host
    numpy (rows, max_frames, 56); `max_frames` defaults to the audio width / 640 (`pipeline.pad_batch`)."""
    from dualtalk_jax.train.step import MODEL_INPUTS

    inputs = {k: np.asarray(batch[k]) for k in MODEL_INPUTS}
    max_frames = int(inputs["audio_self"].shape[1] // audio.SAMPLES_PER_FRAME if max_frames is None else max_frames)
    if self.mesh is None:
      return np.asarray(self.step(self.params, inputs, max_frames))
    from jax.experimental import multihost_utils

    from dualtalk_jax import sharding

    # every host's arrays must have one global shape: pad each time axis to the longest of all hosts'
    widths = _agree_max([max_frames] + [inputs[k].shape[1] for k in ("audio_self", "audio_other", "motion_other")])
    max_frames = widths[0]
    for k, w in zip(("audio_self", "audio_other", "motion_other"), widths[1:]):
      pad = [(0, 0)] * inputs[k].ndim
      pad[1] = (0, w - inputs[k].shape[1])
      inputs[k] = np.pad(inputs[k], pad)
    pred = self.step(self.params, sharding.shard_batch(inputs, self.mesh), max_frames)
    spec = sharding.batch_sharding(self.mesh, 3).spec
    return np.asarray(multihost_utils.global_array_to_host_local_array(pred, self.mesh, spec))


@functools.lru_cache(maxsize=8)
def _local_step(cfg):
  from dualtalk_jax.train import step

  model_def = step.ModelDef(cfg)
  return model_def, step.make_eval_step(model_def)


def _agree_max(values: Sequence[int]) -> list[int]:
  """Elementwise max of `values` over all processes."""
  import jax

  if jax.process_count() == 1:
    return [int(v) for v in values]
  from jax.experimental import multihost_utils

  return [int(v) for v in np.max(multihost_utils.process_allgather(np.asarray(values, np.int64)), axis=0)]


def as_predictor(model) -> Predictor:
  """`model` if it is a `Predictor`, else `Predictor.from_model(model)` (a `DualTalk`)."""
  return model if isinstance(model, Predictor) else Predictor.from_model(model)


def predict(model, audio_self, audio_other, motion_other, *, audio_self_lengths=None, audio_other_lengths=None,
            motion_other_lengths=None, num_frames=None, max_frames=None) -> np.ndarray:
  """`model` (a `DualTalk` or `Predictor`) on arrays: (B, S) and (B, S') audio, (B, N, 56)
  partner motion (None for a no_partner_motion model). Lengths default to whole rows,
  `num_frames` to `audio.num_frames(S)` (host float64; required with `audio_self_lengths`),
  `max_frames` to max(num_frames). Returns (B, max_frames, 56); one compile per shape."""
  p = as_predictor(model)
  b, s = np.shape(audio_self)
  if num_frames is None:
    if audio_self_lengths is not None:
      raise ValueError("num_frames is required with audio_self_lengths (computed on the host in float64)")
    num_frames = np.full((b,), audio.num_frames(s), np.int32)
  p.require_motion(motion_other is not None)
  if motion_other is None:  # never read
    motion_other, motion_other_lengths = np.zeros((b, 1, audio.MOTION_DIM), np.float32), np.zeros((b,), np.int32)
  full = lambda n, x: np.full((b,), np.shape(x)[1], np.int32) if n is None else np.asarray(n, np.int32)
  batch = {"audio_self": audio_self, "audio_other": audio_other, "motion_other": motion_other,
           "audio_self_lengths": full(audio_self_lengths, audio_self),
           "audio_other_lengths": full(audio_other_lengths, audio_other),
           "motion_other_lengths": full(motion_other_lengths, motion_other),
           "num_frames": np.asarray(num_frames, np.int32)}
  return p(batch, int(np.max(num_frames)) if max_frames is None else max_frames)


def predict_batch(model, clips: Sequence[Clip], *, batch_size: int | None = None, bucket_frames: int = 50,
                  num_frames: Sequence[int] | None = None) -> list[np.ndarray]:
  """One padded batch (`pipeline.pad_batch`: time to a multiple of `bucket_frames`, rows to
  `batch_size`, rounded up to the predictor's `rows`). `num_frames` overrides each clip's
  output length (windows). Returns each clip's (T_i, 56) prediction."""
  from dualtalk_jax.data import pipeline

  p = as_predictor(model)
  b = p.rows(batch_size or len(clips))
  if not 0 < len(clips) <= b:
    raise ValueError(f"{len(clips)} clips for a batch of {b}")
  p.require_motion(all(c.motion_other is not None for c in clips))
  frames = [c.num_frames for c in clips] if num_frames is None else list(num_frames)
  out = p(pipeline.pad_batch([c.sample(n) for c, n in zip(clips, frames)], b, bucket_frames))
  return [out[i, :n] for i, n in enumerate(frames)]


def predict_clips(model, clips: Sequence[Clip], *, batch_size: int = 8, bucket_frames: int = 50,
                  progress: bool = False) -> list[np.ndarray]:
  """Predictions for clips of any lengths, in input order (one process).

  Clips are sorted by padded length (`audio.bucket_frames`) and batched within a bucket,
  so a split compiles once per bucket and padding stays under `bucket_frames` per clip.
  """
  if not clips:
    return []
  from dualtalk_jax.data import pipeline

  p = as_predictor(model)
  key = lambda i: audio.bucket_frames(pipeline.sample_frames(clips[i].sample()), bucket_frames)
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
    for i, pred in zip(g, predict_batch(p, [clips[i] for i in g], batch_size=batch_size, bucket_frames=bucket_frames)):
      out[i] = pred
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
  overlap_seconds = window_overlap(window_seconds, overlap_seconds)
  t = clip.num_frames
  w = int(round(window_seconds * audio.FPS))
  if runner is None:
    predictor = as_predictor(model)
    batch_size = predictor.rows(batch_size)  # windows fill the rows a mesh would pad anyway
    runner = lambda cs, nf: predict_batch(predictor, cs, batch_size=batch_size if nf else 1, bucket_frames=w if nf else 50,
                                          num_frames=nf)
  if window_seconds <= 0 or t <= w:
    return runner([clip], None)[0]
  o = min(int(round(overlap_seconds * audio.FPS)), w // 2)
  starts = window_starts(t, w, o)
  weights = crossfade_weights(starts, w)
  wins = []
  for s in starts:
    a = clip.audio_self[s * audio.SAMPLES_PER_FRAME:(s + w) * audio.SAMPLES_PER_FRAME]
    b = clip.audio_other[s * audio.SAMPLES_PER_FRAME:(s + w) * audio.SAMPLES_PER_FRAME]
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
