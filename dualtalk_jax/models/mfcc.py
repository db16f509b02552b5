"""MFCC features in JAX: the audio front end of the `mfcc` ablation (paper Tab. 6).

Per track, from normalised 16 kHz audio: 25 ms frames (400 samples) every 10 ms (160
samples, no centring padding, so a clip of L >= 400 samples has 1 + (L - 400) // 160
frames), a Hann window, the power spectrum of a 512-point FFT, 40 triangular mel filters
(HTK mel scale, 20 Hz - 8 kHz), natural log (floored at 1e-10), and the first 13
coefficients of an orthonormal DCT-II (c0 included). No pre-emphasis, dither, liftering or
deltas. Each row's frames are then linearly resampled to its `num_frames` 25 fps frames by
the same function that resamples wav2vec2's conv features (`wav2vec2.resample_frames`),
so a clip in a padded batch gets the features it gets alone.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from dualtalk_jax.models.wav2vec2 import resample_frames

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
NUM_MELS = 40
NUM_COEFFS = 13  # the feature width fed to `audio_projection`
F_MIN, F_MAX = 20.0, 8000.0


def _hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=1)
def _constants() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Hann window (400,), mel filterbank (257, 40), DCT-II matrix (40, 13), as float32."""
  window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)).astype(np.float32)
  bins = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), NUM_MELS + 2))
  lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  fb = np.maximum(0.0, np.minimum((bins[None] - lo) / (mid - lo), (hi - bins[None]) / (hi - mid))).T
  n = np.arange(NUM_MELS)
  dct = np.cos(np.pi / NUM_MELS * (n[:, None] + 0.5) * np.arange(NUM_COEFFS)[None]) * np.sqrt(2.0 / NUM_MELS)
  dct[:, 0] /= np.sqrt(2.0)
  return window, fb.astype(np.float32), dct.astype(np.float32)


def num_mfcc_frames(num_samples):
  """MFCC frames of a track of `num_samples` samples (at least 1)."""
  return jnp.maximum(1 + (jnp.asarray(num_samples) - WINDOW) // HOP, 1)


def mfcc(audio):
  """(B, S) audio -> (B, F, 13) MFCCs, F = 1 + (max(S, 400) - 400) // 160 frames."""
  audio = jnp.asarray(audio, jnp.float32)
  b, s = audio.shape
  if s < WINDOW:
    audio = jnp.pad(audio, ((0, 0), (0, WINDOW - s)))
    s = WINDOW
  window, fb, dct = _constants()
  f = 1 + (s - WINDOW) // HOP
  idx = np.arange(f)[:, None] * HOP + np.arange(WINDOW)[None]
  frames = audio[:, idx] * window  # (B, F, 400)
  power = jnp.abs(jnp.fft.rfft(frames, n=N_FFT, axis=-1)) ** 2 / N_FFT
  return jnp.log(jnp.maximum(power @ fb, 1e-10)) @ dct


def mfcc_features(audio, lengths, num_frames, max_frames: int):
  """MFCCs of each row's first `lengths[i]` samples, resampled to `num_frames[i]` of
  `max_frames` output frames: (B, max_frames, 13), zero past num_frames."""
  feats = mfcc(audio)
  return resample_frames(feats, num_mfcc_frames(lengths), num_frames, max_frames)
