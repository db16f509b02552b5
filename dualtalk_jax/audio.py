"""Audio front end and the 56-d motion vector, exactly as the released DualTalk code.

- `load_audio` / `read_audio`: WAV/FLAC (16/24/32-bit int, 32-bit float) via soundfile,
  mono float32 at 16 kHz; other rates go through a polyphase resampler
  (`scipy.signal.resample_poly`, factor reduced by the gcd). Multichannel files are an
  error unless `channel=k` picks one. Anything unreadable, truncated or empty raises
  `AudioError` naming the file.
- `normalize`: per-utterance zero-mean unit-variance, bit-for-bit what transformers'
  `Wav2Vec2FeatureExtractor(do_normalize=True)` computes on a float32 array.
- `num_frames`: output frame count `math.ceil(samples / 16000 * 25)` in float64, as the
  released code writes it (4480 samples give 8 frames, not 7).
- `motion_from_flame` / `flame_from_motion`: FLAME npz <-> `[exp(50), jaw(3), neck(3)]`.
- `frame_mismatch`: the one length rule of preprocess, infer and evaluate.
- `bucket_frames`: the one bucketing policy of padded batches (prediction, validation,
  metric kernels).
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from typing import Any, Mapping

import numpy as np

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
EXP_DIM = 50
MOTION_DIM = 56  # exp(50) + jaw(3) + neck(3)
# Column groups of the (T, 56) motion, named as the released model and loss name them; the
# released metrics call the neck group "pose" (its keys, `eval.metrics.GROUPS`).
MOTION_GROUPS = {"exp": slice(0, EXP_DIM), "jaw": slice(EXP_DIM, EXP_DIM + 3), "neck": slice(EXP_DIM + 3, MOTION_DIM)}
# How many frames two lengths of one clip (audio frames, motion frames, prediction frames)
# may differ by. preprocess, infer and evaluate share it: within it, inputs are cut to the
# common length (as the released code does); beyond it, the pair is refused.
MAX_FRAME_MISMATCH = 1


class AudioError(ValueError):
  """An audio file that cannot be used; the message names the file and the problem.

  `kind` is one of: missing, empty, truncated, unreadable, multichannel, nonfinite.
  """

  def __init__(self, message: str, kind: str = "unreadable"):
    super().__init__(message)
    self.kind = kind


@dataclasses.dataclass(frozen=True)
class LoadedAudio:
  """Mono float32 samples at `rate`, with what the file held before conversion."""

  samples: np.ndarray
  rate: int
  orig_rate: int
  orig_channels: int
  subtype: str

  @property
  def resampled(self) -> bool:
    return self.rate != self.orig_rate


def _check_wav_not_truncated(path: str) -> None:
  """Raises if a RIFF/WAVE file's data chunk declares more bytes than the file holds.

  libsndfile silently shortens such files, so the check is done on the header here.
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
      return  # Not a plain RIFF WAVE (RF64, W64, ...): left to libsndfile.
    fmt = "<I" if head[:4] == b"RIFF" else ">I"
    pos = 12
    while pos + 8 <= size:
      f.seek(pos)
      chunk = f.read(8)
      cid, (csize,) = chunk[:4], struct.unpack(fmt, chunk[4:8])
      if cid == b"data":
        available = size - (pos + 8)
        if csize not in (0, 0xFFFFFFFF) and csize > available:
          raise AudioError(
              f"{path}: truncated WAV: data chunk declares {csize} bytes but only "
              f"{available} are present", "truncated")
        return
      pos += 8 + csize + (csize & 1)
    raise AudioError(f"{path}: truncated WAV: no data chunk found", "truncated")


def read_audio(path: str | os.PathLike, *, channel: int | None = None,
               target_rate: int = SAMPLE_RATE) -> LoadedAudio:
  """Reads one audio file as mono float32 at `target_rate` (see module docstring)."""
  import soundfile as sf  # Local: keeps `import dualtalk_jax` light.
  from scipy import signal

  path = os.fspath(path)
  if not os.path.exists(path):
    raise AudioError(f"{path}: no such audio file", "missing")
  if os.path.getsize(path) == 0:
    raise AudioError(f"{path}: empty file (0 bytes)", "empty")
  _check_wav_not_truncated(path)
  try:
    info = sf.info(path)
    data, rate = sf.read(path, dtype="float32", always_2d=True)
  except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError.
    raise AudioError(f"{path}: unreadable audio ({type(e).__name__}: {e})") from None
  if info.frames > 0 and data.shape[0] < info.frames:
    raise AudioError(f"{path}: truncated audio: header declares {info.frames} samples, "
                     f"only {data.shape[0]} could be read", "truncated")
  if data.shape[0] == 0:
    raise AudioError(f"{path}: audio has no samples", "empty")
  channels = data.shape[1]
  if channel is None:
    if channels != 1:
      raise AudioError(f"{path}: {channels} channels (expected mono); pick one with --channel=K "
                       f"(K in 0..{channels - 1}; infer, evaluate and preprocess have the flag)",
                       "multichannel")
    x = data[:, 0]
  else:
    if not 0 <= channel < channels:
      raise AudioError(f"{path}: channel={channel} out of range for {channels} channels",
                       "multichannel")
    x = data[:, channel]
  x = np.ascontiguousarray(x, dtype=np.float32)
  if not np.all(np.isfinite(x)):
    raise AudioError(f"{path}: audio contains NaN or inf samples", "nonfinite")
  if rate != target_rate:
    g = math.gcd(int(rate), int(target_rate))
    x = signal.resample_poly(x.astype(np.float64), target_rate // g, rate // g)
    x = x.astype(np.float32)
    if x.size == 0:
      raise AudioError(f"{path}: audio too short to resample from {rate} Hz", "empty")
  return LoadedAudio(samples=x, rate=int(target_rate), orig_rate=int(rate),
                     orig_channels=int(channels), subtype=str(info.subtype))


def load_audio(path: str | os.PathLike, *, channel: int | None = None,
               target_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Mono float32 samples at `target_rate`; `read_audio` also returns the original rate."""
  return read_audio(path, channel=channel, target_rate=target_rate).samples


def normalize(x: np.ndarray) -> np.ndarray:
  """`(x - mean) / sqrt(var + 1e-7)` over the whole utterance, in float32.

  The same numpy expression, on the same float32 input, as
  `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`, so the result is bit-identical.
  """
  x = np.asarray(x, dtype=np.float32)
  if x.ndim != 1:
    raise ValueError(f"normalize expects a 1-D utterance, got shape {x.shape}")
  return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


def num_frames(num_samples: int) -> int:
  """Output frames for `num_samples` of 16 kHz audio, exactly as the released code."""
  return math.ceil(num_samples / SAMPLE_RATE * FPS)


def frame_mismatch(a: tuple[str, int], b: tuple[str, int], tolerance: int = MAX_FRAME_MISMATCH) -> str | None:
  """None if two (name, frames) lengths agree within `tolerance` frames, else a message naming both."""
  (name_a, n_a), (name_b, n_b) = a, b
  if abs(int(n_a) - int(n_b)) <= tolerance:
    return None
  return f"{name_a} has {n_a} frames but {name_b} has {n_b} (tolerance {tolerance})"


def bucket_frames(n: int, multiple: int) -> int:
  """The padded length of `n` frames: the next multiple of `multiple` (at least one).

  Every padded batch uses it (prediction, validation, the metric kernels): a split compiles
  once per bucket and no clip carries `multiple` or more frames of padding."""
  return max(1, -(-int(n) // int(multiple))) * int(multiple)


def num_frames_array(num_samples: Any) -> np.ndarray:
  """Vectorised `num_frames` (same float64 operations in the same order, same result)."""
  n = np.asarray(num_samples, dtype=np.float64)
  return np.ceil(n / SAMPLE_RATE * FPS).astype(np.int64)


class MotionError(ValueError):
  """FLAME parameters that cannot be used. `kind`: missing_key, bad_shape, nonfinite."""

  def __init__(self, message: str, kind: str = "bad_shape"):
    super().__init__(message)
    self.kind = kind


def motion_from_flame(npz: Mapping[str, np.ndarray]) -> np.ndarray:
  """`(T, 56)` float32 `[exp, jaw = pose[:, 3:6], neck = pose[:, 0:3]]` from FLAME params.

  Raises `MotionError` (a ValueError, without a file name; callers add it) on missing
  keys, wrong widths, frame-count disagreement or non-finite values.
  """
  for key in ("exp", "pose"):
    if key not in npz:
      raise MotionError(f"missing key {key!r} (has {sorted(npz.keys())})", "missing_key")
  exp = np.asarray(npz["exp"])
  pose = np.asarray(npz["pose"])
  if exp.ndim != 2 or exp.shape[1] != EXP_DIM:
    raise MotionError(f"'exp' has shape {exp.shape}, expected (T, {EXP_DIM})")
  if pose.ndim != 2 or pose.shape[1] != 6:
    raise MotionError(f"'pose' has shape {pose.shape}, expected (T, 6)")
  if exp.shape[0] != pose.shape[0]:
    raise MotionError(f"'exp' has {exp.shape[0]} frames but 'pose' has {pose.shape[0]}")
  if exp.shape[0] == 0:
    raise MotionError("motion has 0 frames")
  motion = np.concatenate([exp, pose[:, 3:6], pose[:, 0:3]], axis=1).astype(np.float32)
  if not np.all(np.isfinite(motion)):
    bad = sorted({k for k, a in (("exp", exp), ("pose", pose)) if not np.all(np.isfinite(a))})
    raise MotionError(f"NaN or inf values in {bad}", "nonfinite")
  return motion


def flame_from_motion(motion: np.ndarray) -> dict[str, np.ndarray]:
  """Inverse of `motion_from_flame`: `{'exp': (T,50), 'pose': (T,6) = [neck, jaw]}`."""
  motion = np.asarray(motion, dtype=np.float32)
  if motion.ndim != 2 or motion.shape[1] != MOTION_DIM:
    raise ValueError(f"motion has shape {motion.shape}, expected (T, {MOTION_DIM})")
  exp, jaw, neck = (motion[:, MOTION_GROUPS[g]] for g in ("exp", "jaw", "neck"))
  return {"exp": np.ascontiguousarray(exp), "pose": np.concatenate([neck, jaw], axis=1)}
