"""Streaming prediction: both speakers' audio (and the partner's motion) arrive in chunks of
any size; the target's motion comes out a bounded time later.

The released model is offline (whole-clip attentions, a BiLSTM), so the stream runs it on a
sliding window. With C frames of context, L of lookahead and a hop of H frames, step k at
frame t = k * H runs the model once on frames [t - C, t + L) and emits frames [t - H, t):

- Fixed shapes. Every step feeds one (C + L)-frame window, (C + L) * 640 samples, with the
  true lengths: early in the stream (t < C) the window holds frames [0, t + L), left-aligned
  and masked like a padded batch row, so the model sees exactly a clip of that length; at the
  end the last window stops at the target audio's end. One compile per `StreamConfig`,
  whatever the chunk sizes (`StreamingPredictor.compiles` counts them).
- Readiness. Step t runs once both tracks hold (t + L) * 640 samples and the partner's motion
  t + L frames, so the output depends on the data, never on how it was chunked. A partner
  input that is over (`end_input`) is no longer waited for; `flush()` ends the stream with
  one last step on the last C frames (more only if C is shorter than what is left).
- Crossfade. Step k's prediction of its frames [t - H, t + L) is weighted with the ramps of
  `predict.crossfade_ramp`: rising across the lookahead of step k - 1 and falling across its
  own, and the steps' predictions of a frame are averaged with those weights (normalised):
  no jumps at seams while L > 0 (with L = 0 each step's frames are its own, and seams show).
- Normalisation. wav2vec2 expects zero-mean unit-variance audio per utterance, and a stream
  has no end to take the statistics over: each track is normalised with the running mean and
  variance of all its samples up to the window's end (float64 sums merged step by step), which
  tends to the whole-clip statistics; at the end of a stream they are exactly those. Early on
  they come from little audio: a track that starts in silence is scaled up until speech comes.
- Bounded state. Audio and motion live in ring buffers of C + L + H + `max_skew_frames` frames;
  the pending crossfade sums hold L frames; nothing grows with the stream. A push that would
  leave an input more than `max_skew_frames` ahead of another is refused, before anything
  is changed.

A partner track that ends before the target's is silence (0 after normalisation) from there
on, as in `predict.predict_windowed`; windows past the end of the partner's motion get its
last frame (the model needs at least one). With C and L covering the whole clip every step is one whole-clip
pass, and the stream equals `predict` on the whole clip (up to float rounding of the statistics).

Latency: frame f comes out once the audio reaches frame f + H + L (at most), plus one step's
compute; the real-time factor is compute time over audio time (< 1 keeps up). The compute of
a step is that of one (C + L)-frame window, so it grows with C + L, not with the stream.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Iterator

import numpy as np

from dualtalk_jax import audio
from dualtalk_jax.eval import predict as predict_lib



def needs_partner_motion(cfg) -> bool:
  """Whether a model config reads the partner's motion (all but the `no_partner_motion` ablation)."""
  return getattr(cfg, "ablation", "") != "no_partner_motion"


@dataclasses.dataclass(frozen=True)
class StreamConfig:
  """Window geometry in frames (25 fps): context C, lookahead L, hop H (frames per step)."""

  context_frames: int = 150
  lookahead_frames: int = 10
  hop_frames: int = 1
  max_skew_frames: int = 50  # how far one input may run ahead of another (2 s)

  def __post_init__(self):
    if self.hop_frames < 1:
      raise ValueError(f"hop must be at least one frame, got {self.hop_frames}")
    if self.context_frames < self.hop_frames:
      raise ValueError(f"context ({self.context_frames} frames) must be at least the hop ({self.hop_frames} frames): "
                       "each step emits frames of its own window")
    if self.lookahead_frames < 0 or self.max_skew_frames < 0:
      raise ValueError("lookahead and max_skew must be >= 0")

  @classmethod
  def from_time(cls, *, context_s: float, lookahead_ms: float, hop_ms: float, **kw) -> "StreamConfig":
    """Seconds / milliseconds rounded up to whole frames (at least what was asked for)."""
    for name, v in (("context_s", context_s), ("lookahead_ms", lookahead_ms), ("hop_ms", hop_ms)):
      if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    frames = lambda s: math.ceil(round(s * audio.FPS, 6))
    return cls(context_frames=frames(context_s), lookahead_frames=frames(lookahead_ms / 1000),
               hop_frames=frames(hop_ms / 1000), **kw)

  @property
  def window_frames(self) -> int:
    return self.context_frames + self.lookahead_frames

  @property
  def buffer_frames(self) -> int:
    return self.window_frames + self.hop_frames + self.max_skew_frames


class _Ring:
  """Items [start, end) of one input stream (absolute indices) in a fixed array."""

  def __init__(self, capacity: int, tail: tuple = ()):
    self.buf = np.zeros((capacity,) + tail, np.float32)
    self.start = 0
    self.end = 0

  @property
  def capacity(self) -> int:
    return len(self.buf)

  def append(self, x: np.ndarray) -> None:
    n = len(x)
    if self.end - self.start + n > self.capacity:
      raise AssertionError("ring buffer overflow (checked by the caller)")
    i = self.end % self.capacity
    k = min(n, self.capacity - i)
    self.buf[i:i + k] = x[:k]
    self.buf[:n - k] = x[k:]
    self.end += n

  def read(self, a: int, b: int) -> np.ndarray:
    if not self.start <= a <= b <= self.end:
      raise AssertionError(f"read [{a}, {b}) outside the held [{self.start}, {self.end})")
    i, n = a % self.capacity, b - a
    k = min(n, self.capacity - i)
    return np.concatenate([self.buf[i:i + k], self.buf[:n - k]])

  def drop_before(self, a: int) -> None:
    self.start = max(self.start, min(a, self.end))


class _RunningStats:
  """Mean and variance of a track's samples [0, count), merged segment by segment (Chan et al.)."""

  def __init__(self):
    self.count, self.mean, self.m2 = 0, 0.0, 0.0

  def add(self, x: np.ndarray) -> None:
    n = len(x)
    if not n:
      return
    x = x.astype(np.float64)
    mean, m2 = float(x.mean()), float(((x - x.mean()) ** 2).sum())
    total = self.count + n
    delta = mean - self.mean
    self.mean += delta * n / total
    self.m2 += m2 + delta * delta * self.count * n / total
    self.count = total

  def normalize(self, x: np.ndarray) -> np.ndarray:
    """`audio.normalize` with these statistics instead of x's own."""
    var = self.m2 / self.count if self.count else 0.0
    return (x - np.float32(self.mean)) / np.float32(np.sqrt(var + 1e-7))


class StreamingPredictor:
  """Streams a `DualTalk` (eval mode) over chunked input; see the module docstring.

    s = StreamingPredictor(model, StreamConfig(context_frames=150, lookahead_frames=10))
    for a, b, m in chunks:           # raw 16 kHz audio (not normalised), (n, 56) motion
      frames = s.push(a, b, m)       # (k, 56): the frames that are now final, k >= 0
    frames = s.flush()               # the rest; the stream is then over (`reset()` starts anew)

  `motion_other=None` means the stream has no partner motion: refused unless the model is a
  `no_partner_motion` one (which ignores motion it is given). A chunk may hold no samples
  or no motion frames (e.g. motion arriving separately).
  """

  def __init__(self, model, cfg: StreamConfig = StreamConfig()):
    from dualtalk_jax import params as params_lib
    from dualtalk_jax.train.step import ModelDef

    self.cfg = cfg
    self.model_config = model.config
    self.uses_motion = needs_partner_motion(model.config)
    self.motion_dim = model.config.motion_dim
    # the one prediction function, with a step of its own so that `compiles` counts this stream's shapes
    self._predictor = predict_lib.Predictor(ModelDef(model.config), params_lib.of(model))
    self.reset()

  def reset(self) -> None:
    """Forgets the stream (buffers keep their size)."""
    cfg = self.cfg
    frames = cfg.buffer_frames
    self._self = _Ring(frames * audio.SAMPLES_PER_FRAME)
    self._other = _Ring(frames * audio.SAMPLES_PER_FRAME)
    self._motion = _Ring(frames, (self.motion_dim,))
    self._stats = (_RunningStats(), _RunningStats())
    self._t = 0  # frames emitted so far (the last step's t)
    self._prev_end = 0  # the last step's window end (frames), where its fade-out stops
    self._acc = np.zeros((cfg.lookahead_frames, self.motion_dim), np.float64)  # weighted sums of frames [t, t + L)
    self._norm = np.zeros((cfg.lookahead_frames,), np.float64)
    self._motion_given: bool | None = None
    self._ended: set[str] = set()  # partner inputs that will receive nothing more (`end_input`)
    self._done = False

  @property
  def compiles(self) -> int:
    """How many shapes the model step has been compiled for (1 after the first step)."""
    return self._predictor.step._cache_size()

  @property
  def frames_emitted(self) -> int:
    return self._t

  def state_nbytes(self) -> int:
    """Bytes held by the stream's buffers (constant over a stream)."""
    return sum(r.buf.nbytes for r in (self._self, self._other, self._motion)) + self._acc.nbytes + self._norm.nbytes

  def warmup(self) -> None:
    """Compiles the step (one call on an empty-looking window); the stream is unchanged."""
    w = self.cfg.window_frames
    m = np.zeros((1, w, self.motion_dim), np.float32) if self.uses_motion else None
    silence = np.zeros((1, w * audio.SAMPLES_PER_FRAME), np.float32)
    self._call(silence, silence, m, audio.SAMPLES_PER_FRAME, 1, 1)

  def _call(self, a, b, m, n_samples, n_frames, n_motion):
    lens = lambda n: np.full((1,), n, np.int32)
    return predict_lib.predict(self._predictor, a, b, m, audio_self_lengths=lens(n_samples),
                               audio_other_lengths=lens(n_samples), motion_other_lengths=None if m is None else lens(n_motion),
                               num_frames=lens(n_frames), max_frames=self.cfg.window_frames)

  # ---- input ----

  def push(self, audio_self: np.ndarray, audio_other: np.ndarray, motion_other: np.ndarray | None = None) -> np.ndarray:
    """Adds a chunk of each input; returns the (k, 56) frames that are now final (k >= 0)."""
    if self._done:
      raise RuntimeError("the stream was flushed; call reset() to start a new one")
    a = self._check_audio("audio_self", audio_self)
    b = self._check_audio("audio_other", audio_other)
    m = self._check_motion(motion_other)
    for name, x in (("audio_other", b), ("motion_other", m)):
      if len(x) and name in self._ended:
        raise ValueError(f"{name}: {len(x)} more samples/frames after end_input({name!r})")
    # Refuse, before changing anything, a push that would overflow a buffer.
    ends = (self._self.end + len(a), self._other.end + len(b), self._motion.end + len(m))
    t_last = self._last_ready(*ends)
    keep = self._keep_from(t_last + 1, ends[2])
    for name, end, ring, unit, start in (("audio_self", ends[0], self._self, audio.SAMPLES_PER_FRAME, keep[0]),
                                         ("audio_other", ends[1], self._other, audio.SAMPLES_PER_FRAME, keep[0]),
                                         ("motion_other", ends[2], self._motion, 1, keep[1])):
      if end - max(start * unit, ring.start) > ring.capacity:
        held = {"audio_self": ends[0] / audio.SAMPLES_PER_FRAME, "audio_other": ends[1] / audio.SAMPLES_PER_FRAME,
                "motion_other": ends[2]}
        raise ValueError(
            f"{name} would run more than {self.cfg.max_skew_frames} frames ahead of the other inputs "
            f"(frames received: " + ", ".join(f"{k} {v:.1f}" for k, v in held.items()) + "); "
            "push the inputs together (or raise max_skew_frames)")
    out = []
    pos = [0, 0, 0]
    while True:
      for i, (ring, x) in enumerate(((self._self, a), (self._other, b), (self._motion, m))):
        k = min(len(x) - pos[i], ring.capacity - (ring.end - ring.start))
        ring.append(x[pos[i]:pos[i] + k])
        pos[i] += k
      ran = False
      while self._ready(self._t + self.cfg.hop_frames):
        out.append(self._step(self._t + self.cfg.hop_frames, final=None))
        ran = True
      if pos == [len(a), len(b), len(m)]:
        break
      if not ran:
        raise AssertionError("push made no progress (checked above)")
    return self._concat(out)

  def end_input(self, name: str) -> np.ndarray:
    """Marks a partner input ("audio_other" or "motion_other") as over: steps stop waiting
    for it (its audio is silence from its end on, its motion repeats its last frame) and run
    as far as the other inputs allow; returns the frames that became final."""
    if name not in ("audio_other", "motion_other"):
      raise ValueError(f"end_input takes 'audio_other' or 'motion_other', got {name!r} (flush() ends the stream)")
    if name == "motion_other" and self.uses_motion and self._motion.end == 0:
      raise ValueError("motion_other ended before its first frame; this model needs the partner's motion")
    self._ended.add(name)
    out = []
    while self._ready(self._t + self.cfg.hop_frames):
      out.append(self._step(self._t + self.cfg.hop_frames, final=None))
    return self._concat(out)

  def flush(self) -> np.ndarray:
    """Ends the stream: runs the remaining steps with what arrived, returns the last frames.

    The target's audio decides the length: the whole stream has T = ceil(samples / 640)
    frames (`audio.num_frames`), as a whole-clip pass."""
    if self._done:
      raise RuntimeError("the stream was already flushed")
    self._done = True
    total = audio.num_frames(self._self.end)
    if 0 < self._self.end < audio.SAMPLES_PER_FRAME:
      raise ValueError(f"the stream holds {self._self.end} samples of audio_self, less than one frame "
                       f"({audio.SAMPLES_PER_FRAME})")
    if self.uses_motion and self._motion.end == 0 and total > self._t:
      raise ValueError("the stream ended without any partner motion frame (motion_other was empty throughout)")
    out = []
    while self._t < total:  # all input is in: one last step (more only if the context is short)
      out.append(self._step(min(self._t + self.cfg.context_frames, total), final=total))
    return self._concat(out)

  def _check_audio(self, name, x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 1:
      raise ValueError(f"{name}: expected a 1-D chunk of 16 kHz samples, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
      raise ValueError(f"{name}: chunk contains NaN or inf samples")
    return x

  def _check_motion(self, m) -> np.ndarray:
    given = m is not None
    if not given and self.uses_motion:
      raise ValueError("motion_other is None, but this model reads the partner's motion (only a "
                       "'no_partner_motion' model streams without it); pass the partner's (n, "
                       f"{self.motion_dim}) FLAME motion, or an empty (0, {self.motion_dim}) chunk when none arrived yet")
    if self._motion_given is not None and given != self._motion_given:
      raise ValueError("motion_other must be given on every push of a stream or on none")
    if given:
      m = np.asarray(m, np.float32)
      if m.ndim != 2 or m.shape[1] != self.motion_dim:
        raise ValueError(f"motion_other: expected shape (n, {self.motion_dim}), got {m.shape}")
      if not np.all(np.isfinite(m)):
        raise ValueError("motion_other: chunk contains NaN or inf values")
    self._motion_given = given
    return m if given and self.uses_motion else np.zeros((0, self.motion_dim), np.float32)

  # ---- steps ----

  def _last_ready(self, self_end, other_end, motion_end) -> int:
    """The last step frame t that these input counts make ready (self._t if none)."""
    cfg = self.cfg
    frames = self_end // audio.SAMPLES_PER_FRAME
    if "audio_other" not in self._ended:
      frames = min(frames, other_end // audio.SAMPLES_PER_FRAME)
    if self.uses_motion and "motion_other" not in self._ended:
      frames = min(frames, motion_end)
    k = max(0, (frames - cfg.lookahead_frames - self._t) // cfg.hop_frames)
    return self._t + k * cfg.hop_frames

  def _ready(self, t) -> bool:
    return self._last_ready(self._self.end, self._other.end, self._motion.end) >= t

  def _keep_from(self, t_next, motion_end) -> tuple[int, int]:
    """First frame of audio / motion that a later step (t >= t_next, a partial last one included) still reads."""
    s = max(0, t_next - self.cfg.context_frames)
    return s, min(s, max(0, motion_end - 1))  # motion: at least its last frame

  def _step(self, t: int, final: int | None) -> np.ndarray:
    """Runs the window of step t, returns its final frames [self._t, t). `final`: the stream's T
    at the end (windows stop there and tracks may have ended), None while streaming."""
    cfg = self.cfg
    s = max(0, t - cfg.context_frames)
    e = t + cfg.lookahead_frames if final is None else min(t + cfg.lookahead_frames, final)
    w = cfg.window_frames
    # audio: the target's samples [s, e) frames (the end of the stream cuts the last frame short)
    a_end = e * audio.SAMPLES_PER_FRAME if final is None else min(e * audio.SAMPLES_PER_FRAME, self._self.end)
    n = a_end - s * audio.SAMPLES_PER_FRAME
    a = np.zeros((1, w * audio.SAMPLES_PER_FRAME), np.float32)
    b = np.zeros((1, w * audio.SAMPLES_PER_FRAME), np.float32)
    for buf, ring, stats in ((a, self._self, self._stats[0]), (b, self._other, self._stats[1])):
      stop = min(a_end, ring.end)  # a partner track that ended is silence from there on
      stats.add(ring.read(max(stats.count, ring.start), max(stop, stats.count)))
      if stop > s * audio.SAMPLES_PER_FRAME:
        buf[0, :stop - s * audio.SAMPLES_PER_FRAME] = stats.normalize(ring.read(s * audio.SAMPLES_PER_FRAME, stop))
    m, n_motion = None, 0
    if self.uses_motion:
      m = np.zeros((1, w, self.motion_dim), np.float32)
      m_end = min(e, self._motion.end)
      m0 = min(s, m_end - 1)  # at least one partner frame: its last one if its motion ended
      n_motion = m_end - m0
      m[0, :n_motion] = self._motion.read(m0, m_end)
    # frames e - s, not audio.num_frames(n): the float64 formula gives 111 frames for 110 * 640 samples
    pred = np.asarray(self._call(a, b, m, n, e - s, n_motion))[0, :e - s].astype(np.float64)
    # crossfade: this step's frames [self._t, e), rising over the last step's lookahead, falling over its own
    span = pred[self._t - s:]
    ramp = predict_lib.crossfade_ramp(len(span), self._prev_end - self._t, e - t)
    acc = ramp[:, None] * span
    norm = ramp.copy()
    k = min(len(self._norm), len(span))
    acc[:k] += self._acc[:k]
    norm[:k] += self._norm[:k]
    out = (acc[:t - self._t] / norm[:t - self._t, None]).astype(np.float32)
    self._acc[:] = 0
    self._norm[:] = 0
    self._acc[:e - t] = acc[t - self._t:]
    self._norm[:e - t] = norm[t - self._t:]
    self._t, self._prev_end = t, e
    keep = self._keep_from(t + 1, self._motion.end)
    self._self.drop_before(min(keep[0] * audio.SAMPLES_PER_FRAME, self._stats[0].count))
    self._other.drop_before(min(keep[0] * audio.SAMPLES_PER_FRAME, self._stats[1].count))
    self._motion.drop_before(keep[1])
    return out

  def _concat(self, out) -> np.ndarray:
    return np.concatenate(out) if out else np.zeros((0, self.motion_dim), np.float32)


@dataclasses.dataclass
class Chunk:
  """What arrives at once: audio of both speakers (raw 16 kHz), the partner's motion frames
  (None: a stream without partner motion), and the partner inputs that end after it."""

  audio_self: np.ndarray
  audio_other: np.ndarray
  motion_other: np.ndarray | None
  ended: tuple[str, ...] = ()


@dataclasses.dataclass
class StreamResult:
  """A streamed prediction with its timings (seconds)."""

  prediction: np.ndarray  # (T, 56)
  chunk_seconds: np.ndarray  # compute time of each chunk (the final flush counts as the last one's)
  audio_seconds: float
  frame_delay_seconds: np.ndarray | None = None  # paced runs: each frame's output time after its audio arrived

  @property
  def real_time_factor(self) -> float:
    """Compute time over audio time: below 1 the stream keeps up."""
    return float(self.chunk_seconds.sum()) / max(self.audio_seconds, 1e-9)

  def latency_ms(self, q: float) -> float:
    """The q-th percentile of per-chunk compute time, in milliseconds."""
    return float(np.percentile(self.chunk_seconds, q) * 1000) if len(self.chunk_seconds) else 0.0


def file_chunks(audio_self: np.ndarray, audio_other: np.ndarray, motion_other: np.ndarray | None,
                chunk_samples: int) -> Iterator[Chunk]:
  """Recorded tracks cut into chunks as they would arrive live: both audio tracks in step, and
  the partner's motion frames whose time has passed (frame f once f + 1 frames of audio are in).

  The target's audio sets the length; partner input past it is never read and is not sent,
  and a partner input that ends earlier is ended (`end_input`) with its last chunk."""
  if chunk_samples < 1:
    raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
  n = len(audio_self)
  b = audio_other[:n]
  m = None if motion_other is None else motion_other[:audio.num_frames(n)]
  sent_m = 0
  ended: set[str] = set()
  for i in range(0, n, chunk_samples):
    j = min(i + chunk_samples, n)
    now = []
    if len(b) < n and j >= len(b) and "audio_other" not in ended:
      now.append("audio_other")
    mj = None
    if m is not None:
      upto = len(m) if j == n else min(j // audio.SAMPLES_PER_FRAME, len(m))
      mj, sent_m = m[sent_m:upto], upto
      if len(m) < audio.num_frames(n) and sent_m == len(m) and "motion_other" not in ended:
        now.append("motion_other")
    ended.update(now)
    yield Chunk(audio_self[i:j], b[i:j], mj, tuple(now))


def run_stream(predictor: StreamingPredictor, chunks, *, pace: bool = False,
               audio_seconds: float | None = None) -> StreamResult:
  """Feeds `chunks` (`Chunk`s) through a fresh stream and flushes it; times each chunk's compute.

  `pace`: wait for each chunk's arrival time (its audio at real time) before pushing it, as
  a live source would deliver it (a live source is late already, so nothing waits), and
  measure each output frame's delay after its audio arrived."""
  predictor.reset()
  preds, times, emitted = [], [], []  # emitted: (frames out so far, wall time)
  fed = 0
  start = time.perf_counter()
  for c in chunks:
    fed += len(c.audio_self)
    if pace:
      wait = start + fed / audio.SAMPLE_RATE - time.perf_counter()
      if wait > 0:
        time.sleep(wait)
    t0 = time.perf_counter()
    preds.append(predictor.push(c.audio_self, c.audio_other, c.motion_other))
    for name in c.ended:
      preds.append(predictor.end_input(name))
    t1 = time.perf_counter()
    times.append(t1 - t0)
    emitted.append((predictor.frames_emitted, t1))
  t0 = time.perf_counter()
  preds.append(predictor.flush())
  t1 = time.perf_counter()
  if times:
    times[-1] += t1 - t0
  emitted.append((predictor.frames_emitted, t1))
  pred = np.concatenate(preds)
  delay = None
  if pace:  # frame f's audio is in at sample (f + 1) * 640 (the end of the stream for the last)
    out_time = np.empty(len(pred))
    done = 0
    for n, t in emitted:
      out_time[done:n] = t
      done = max(done, n)
    arrived = np.minimum((np.arange(len(pred)) + 1) * audio.SAMPLES_PER_FRAME, fed) / audio.SAMPLE_RATE
    delay = out_time - start - arrived
  secs = audio_seconds if audio_seconds is not None else fed / audio.SAMPLE_RATE
  return StreamResult(pred, np.asarray(times), secs, delay)


def open_microphone(device=None):
  """The `sounddevice` module, or an ImportError saying what live input needs."""
  try:
    import sounddevice
  except (ImportError, OSError) as e:  # OSError: the package is there but PortAudio is not
    raise ImportError(f"live microphone input needs the sounddevice package and PortAudio "
                      f"(pip install sounddevice): {type(e).__name__}: {e}") from None
  return sounddevice


def microphone_chunks(chunk_samples: int, audio_other: np.ndarray, motion_other: np.ndarray | None,
                      *, device=None) -> Iterator[Chunk]:
  """The target's audio live from an input device (16 kHz mono) against a recorded partner,
  chunk by chunk at real time, for as long as the partner's recording lasts."""
  sd = open_microphone()
  with sd.InputStream(samplerate=audio.SAMPLE_RATE, channels=1, dtype="float32", blocksize=chunk_samples,
                      device=device) as mic:
    for c in file_chunks(audio_other, audio_other, motion_other, chunk_samples):
      data, _ = mic.read(len(c.audio_other))
      yield Chunk(np.asarray(data, np.float32).reshape(-1), c.audio_other, c.motion_other, c.ended)
