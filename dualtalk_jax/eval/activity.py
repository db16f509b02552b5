"""Voice activity and conversational roles (speaking / listening) per 25 fps frame.

`voice_activity(track, T)`: frame energy in dB (RMS of each 640-sample frame, the frame
grid of the motion) against the track's own levels: its quiet frames (10th percentile,
`lo`) and loud frames (95th, `hi`). A track whose range hi - lo is under 6 dB holds no
clear speech (silence or steady noise) and is inactive throughout. Otherwise a
hysteresis detector turns on above lo + 0.5 (hi - lo) and off below lo + 0.3 (hi - lo);
gaps shorter than 0.4 s between active runs are filled (pauses between phrases stay in
the turn), then active runs shorter than 0.12 s are dropped (clicks, the partner's bleed).
Levels are relative to each track, so the per-track normalisation of the audio and
different microphone gains do not matter.

`roles(audio_self, audio_other, T)` -> (speaking, listening), disjoint (T,) bool:
  speaking   the target is active, and the partner is not, or is but lower above its
             own floor (dB over lo) than the target: overlapping speech goes to the
             louder speaker;
  listening  the partner is active and the target is not speaking.
Frames where neither speaks are in neither set.
"""

from __future__ import annotations

import numpy as np

from dualtalk_jax import audio

MIN_RANGE_DB = 6.0
ON, OFF = 0.5, 0.3  # hysteresis thresholds, fractions of the track's range above its floor
FILL_GAP_S = 0.4
MIN_RUN_S = 0.12


def frame_db(samples: np.ndarray, frames: int) -> np.ndarray:
  """(frames,) RMS level in dB of each 640-sample frame (zero past the track's end)."""
  x = np.zeros(frames * audio.SAMPLES_PER_FRAME, np.float64)
  n = min(len(samples), len(x))
  x[:n] = samples[:n]
  rms = np.sqrt(np.mean(x.reshape(frames, -1) ** 2, axis=1))
  return 20.0 * np.log10(rms + 1e-8)


def _runs(mask: np.ndarray) -> np.ndarray:
  """(R, 2) [start, end) of the True runs of a bool array."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
  return edges.reshape(-1, 2)


def _activity(db: np.ndarray) -> tuple[np.ndarray, float]:
  """(active mask, floor lo in dB) of one track's frame levels."""
  lo, hi = np.percentile(db, [10, 95])
  active = np.zeros(len(db), bool)
  if hi - lo < MIN_RANGE_DB:
    return active, float(lo)
  on, off = lo + ON * (hi - lo), lo + OFF * (hi - lo)
  state = False
  for i, v in enumerate(db):
    state = v > on if not state else v > off
    active[i] = state
  fill, min_run = int(round(FILL_GAP_S * audio.FPS)), int(round(MIN_RUN_S * audio.FPS))
  for s, e in _runs(~active):
    if 0 < s and e < len(active) and e - s < fill:
      active[s:e] = True
  for s, e in _runs(active):
    if e - s < min_run:
      active[s:e] = False
  return active, float(lo)


def voice_activity(samples: np.ndarray, frames: int) -> np.ndarray:
  """(frames,) bool: where the track's speaker is active (module docstring)."""
  return _activity(frame_db(samples, frames))[0]


def roles(audio_self: np.ndarray, audio_other: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
  """(speaking, listening) masks of the target over `frames` frames (module docstring)."""
  db_s, db_o = frame_db(audio_self, frames), frame_db(audio_other, frames)
  (act_s, lo_s), (act_o, lo_o) = _activity(db_s), _activity(db_o)
  speaking = act_s & (~act_o | (db_s - lo_s >= db_o - lo_o))
  listening = act_o & ~speaking
  return speaking, listening
