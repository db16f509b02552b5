"""Synthetic two-person conversations in the DualTalk on-disk format.

Each clip is written as `<clip>_speaker{1,2}.wav` (float32, 16 kHz, mono) and
`<clip>_speaker{1,2}.npz` (FLAME keys `exp, pose, shape, tex, cam, light`, float32,
25 fps), so the real preprocessing and pipeline run on it unchanged.

Generative process (all randomness from `np.random.default_rng([seed, clip_index])`,
so a clip depends only on the seed and its index):

1. Identities. A pool of `num_identities` speakers, drawn from `seed` alone. Each has a
   pitch f0 in [95, 240] Hz, a jaw gain, a style offset for `exp` (50-d) and for the
   neck, a listening expression direction, and a FLAME shape vector. A clip draws two
   distinct identities. Listening directions share a common component across
   identities (plus a smaller personal one), so listening is learnable across speakers.
   The identity's own parts (`exp` style offset, std 0.03 per component; the personal
   listening component, 0.25 of the shared one's scale) are kept small: DualTalk has no
   identity input, so it can infer them only from the target's voice, and not at all in
   a window where the target does not speak. At 0.08 and 0.5 they were about a quarter of
   the mean-pose error and half of the trained quickstart model's, which learned none of
   them (see dualtalk_jax/train/quickstart.py).
2. Turns. Duration uniform in [min_seconds, max_seconds]; 1-6 turns (weights
   .20/.35/.25/.10/.06/.04, mean 2.59; the dataset averages 2.5) with Dirichlet-split
   lengths; speakers alternate, the first one random. A turn's speech starts 0.05-0.3 s
   into it, or, for half the turns (`GAP_PROB`), after a mutual silence of `GAP_S` (1.5-3
   s; a pause before answering). In such a silence nobody listens (step 4), so whether the
   target listens is not "the target is silent": only the partner's speech tells. Without
   the gaps, a model that never hears the partner (the `no_partner_speech` ablation) read
   the listening weight from the target's own silence as well as the full model read it
   from the partner's speech (r 0.98 and 0.98 with the quickstart's model, over the
   frames where the target is silent; `benchmarks/listener_cues.py`), and its listening
   frames were no worse; with them, r 0.59 against 0.99.
3. Speech. Within its turn the speaker produces phrases of 3-9 syllables at 3.5-6
   syllables/s, separated by 0.15-0.6 s pauses. The amplitude envelope is a sum of
   raised-cosine syllable bumps. The signal is voiced harmonics (8 partials, 1/h
   amplitudes, f0 with slow random intonation) shaped by a first formant whose frequency
   follows the envelope (F1 = 250 + 600 * envelope Hz: the mouth opens, F1 rises), so the
   mouth opening is in the spectrum's shape and not only in the loudness (a front end
   that normalises each frame, like wav2vec2's layer-norm conv stack, loses loudness),
   plus for 70% of tracks a breath/fricative
   noise where the envelope is high, times the envelope, plus low background noise on
   both tracks at all times.
4. Motion, per speaker, from the frame-rate envelopes e_self, e_other:
   - jaw opening (pose[:, 3]) = jaw_gain * e_self, lightly smoothed; small jaw yaw/roll;
   - `exp[:, :6]` follow e_self through a fixed mixing matrix (mouth shapes);
   - listening: while the partner speaks, `exp` moves along the identity's listening
     direction, scaled by the partner's smoothed activity;
   - expressions of one's own (`EMOTE`, smiles): each speaker has 0-2 random expression
     events per 10 s (raised-cosine bumps of 1-3 s, amplitude 0.6-1.2) along a fixed
     direction of `exp[6:16]`, independent of any audio;
   - reactions to the partner's SPEECH (nods): at each partner phrase end (the partner's
     envelope falls after a phrase) the listener's neck pitch (pose[:, 0]) gets a damped
     2.5 Hz oscillation; the timing comes from the partner's audio;
   - reactions to the partner's EXPRESSION (mirroring): while listening, the listener
     mirrors the partner's own expression events 0.4 s later at 0.7 of their amplitude
     (`MIRROR_LAG_S`, `MIRROR_GAIN`); these events are in the partner's motion only,
     never in either audio track;
   - the conversation's mood (shared affect): one value per clip, uniform in
     [-MOOD_SCALE, MOOD_SCALE], drawn from its own generator (`[seed, index, 2]`), shown
     by both speakers along `EMOTE` all the time, and more while listening (x (1 +
     MOOD_LISTEN_GAIN * listening)). It is in the motion only, never in the audio, so only
     the partner's motion tells a model the mood. Unlike the lagged events it holds for
     the whole conversation: the released temporal enhancer's cross-attention over the
     partner's motion has no positional information, so what it carries is what a window
     of partner motion shows as a whole, and a 0.4 s lag is mostly lost in that average
     (the quickstart's model gains nothing measurable from the events);
   - identity style offsets on `exp` and neck, a slow random head sway, small noise.
   A model that reads the audio beats a mean pose: the jaw and mouth `exp` are a
   deterministic function of the own envelope, and nods and listening of the partner's;
   mirroring and the mood need the partner's motion, so removing the partner's speech or
   motion input removes part of what predicts the listener.
5. Lengths. Audio has `T * 640 + r` samples with r uniform in [0, 640), motion has T
   frames, as in the real data (`T ~= samples / 640`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from dualtalk_jax import audio as audio_lib
from dualtalk_jax.data import records

SR = audio_lib.SAMPLE_RATE
FPS = audio_lib.FPS


@dataclasses.dataclass(frozen=True)
class Identity:
  f0: float
  jaw_gain: float
  exp_offset: np.ndarray  # (50,)
  neck_offset: np.ndarray  # (3,)
  listen_dir: np.ndarray  # (50,)
  shape: np.ndarray  # (100,)


def make_identities(seed: int, num_identities: int) -> list[Identity]:
  """The identity pool; depends on `seed` only."""
  rng = np.random.default_rng([seed, 1 << 20])
  out = []
  shared_listen = rng.standard_normal(50)  # Listening looks alike across people...
  for _ in range(num_identities):
    listen = shared_listen + 0.25 * rng.standard_normal(50)  # ...with a personal touch.
    listen[:6] = 0.0  # Keep listening expression off the mouth components.
    out.append(Identity(
        f0=float(rng.uniform(95, 240)),
        jaw_gain=float(rng.uniform(0.15, 0.3)),
        exp_offset=(0.03 * rng.standard_normal(50)).astype(np.float32),
        neck_offset=(0.02 * rng.standard_normal(3)).astype(np.float32),
        listen_dir=(1.5 * listen / np.linalg.norm(listen)).astype(np.float32),
        shape=(0.5 * rng.standard_normal(100)).astype(np.float32),
    ))
  return out


# Fixed mapping from the own envelope to mouth-related expression components.
_MOUTH = np.array([1.2, -0.8, 0.6, 0.4, -0.3, 0.2], np.float32)
# Direction of the own expression events (smiles) in exp[6:16], shared by everyone.
EMOTE = np.zeros(50, np.float32)
EMOTE[6:16] = np.array([0.9, 0.6, -0.5, 0.4, 0.3, -0.3, 0.2, 0.2, -0.1, 0.1], np.float32)
GAP_PROB = 0.5
GAP_S = (1.5, 3.0)
MIRROR_LAG_S = 0.4
MIRROR_GAIN = 0.7
MOOD_SCALE = 0.5
MOOD_LISTEN_GAIN = 0.5


def _expression_events(rng, t):
  """(t,) amplitude of a speaker's own expression events: 0-2 bumps per 10 s, 1-3 s long."""
  x = np.zeros(t)
  for _ in range(int(rng.poisson(1.0 * t / (10 * FPS)))):
    length = int(rng.uniform(1.0, 3.0) * FPS)
    a = int(rng.integers(0, max(t - length, 1)))
    b = min(a + length, t)
    x[a:b] += rng.uniform(0.6, 1.2) * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(b - a) / length))
  return x


def _turns(rng, duration):
  k = int(rng.choice(np.arange(1, 7), p=[0.20, 0.35, 0.25, 0.10, 0.06, 0.04]))
  lengths = rng.dirichlet(np.full(k, 4.0)) * duration
  bounds = np.concatenate([[0.0], np.cumsum(lengths)])
  first = int(rng.integers(2))
  return [((first + i) % 2, bounds[i], bounds[i + 1]) for i in range(k)]


def _speech_envelope(rng, n, turns, who):
  """Sample-rate envelope for speaker `who`, and the times of their phrase ends."""
  env = np.zeros(n, np.float32)
  phrase_ends = []
  for spk, t0, t1 in turns:
    if spk != who:
      continue
    t = t0 + (rng.uniform(*GAP_S) if rng.random() < GAP_PROB else rng.uniform(0.05, 0.3))
    while t < t1 - 0.3:
      rate = rng.uniform(3.5, 6.0)
      for _ in range(int(rng.integers(3, 10))):
        dur = 1.0 / rate
        if t + dur > t1:
          break
        a, b = int(t * SR), min(int((t + dur) * SR), n)
        if b > a:
          w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(b - a) / (b - a))
          env[a:b] += rng.uniform(0.5, 1.0) * w.astype(np.float32)
        t += dur
      phrase_ends.append(t)
      t += rng.uniform(0.15, 0.6)
  return env, phrase_ends


def _voice(rng, env, ident):
  n = env.size
  # Slow intonation: f0 modulated by a smooth random contour (control rate 10 Hz).
  ctrl = rng.standard_normal(n // 1600 + 2)
  contour = np.interp(np.arange(n) / 1600, np.arange(ctrl.size), ctrl)
  f0 = ident.f0 * (1 + 0.08 * contour)
  phase = 2 * np.pi * np.cumsum(f0) / SR
  # First formant: F1 rises with the mouth opening (the envelope, which also drives the jaw),
  # as open vowels have a high F1; harmonics near F1 are boosted.
  f1 = 250.0 + 600.0 * np.clip(env, 0.0, 1.0)
  sig = np.zeros(n)
  for h in range(1, 9):
    sig += np.sin(h * phase) * (0.25 + 1.0 / (1.0 + ((h * f0 - f1) / 120.0) ** 2)) / h
  sig *= 0.25
  noise = rng.standard_normal(n) * 0.08 * (env > 0.3) * (rng.random() < 0.7)
  out = (sig + noise) * env + 0.003 * rng.standard_normal(n)
  return out.astype(np.float32)


def _smooth(x, k):
  if k <= 1:
    return x
  w = np.hanning(k + 2)[1:-1]
  w /= w.sum()
  return np.convolve(x, w, mode="same")


def _frame_env(env, t):
  return env[:t * audio_lib.SAMPLES_PER_FRAME].reshape(t, audio_lib.SAMPLES_PER_FRAME).mean(axis=1)


def mood(seed: int, index: int) -> float:
  """The mood of conversation `index`: its own generator, so that adding it left every
  other draw of the clip unchanged."""
  return float(np.random.default_rng([seed, index, 2]).uniform(-MOOD_SCALE, MOOD_SCALE))


def listening_weight(e_self, e_other) -> np.ndarray:
  """(t,) 0..1 how much a speaker listens, from the frame envelopes: the partner's smoothed
  activity, less while the speaker talks."""
  listening = _smooth((_smooth(e_other, 25) > 0.05).astype(np.float64), 15)
  return listening * (1.0 - np.clip(_smooth(e_self, 25) * 4, 0, 1))


def _motion(rng, t, e_self, listening, other_ends, ident, emo_self, emo_other, clip_mood):
  exp = np.tile(ident.exp_offset, (t, 1)).astype(np.float64)
  pose = np.zeros((t, 6))
  es = _smooth(e_self, 3)
  exp[:, :6] += es[:, None] * _MOUTH[None, :]
  exp += listening[:, None] * ident.listen_dir[None, :]
  # Own expression events, and the partner's mirrored MIRROR_LAG_S later while listening.
  lag = int(round(MIRROR_LAG_S * FPS))
  mirrored = np.concatenate([np.zeros(lag), emo_other[:t - lag]])
  exp += (emo_self + MIRROR_GAIN * listening * mirrored + clip_mood * (1 + MOOD_LISTEN_GAIN * listening))[:, None] * EMOTE[None, :]
  pose[:, 3] = ident.jaw_gain * es
  pose[:, 4:6] = 0.01 * es[:, None] * rng.standard_normal(2)
  # Nods: damped 2.5 Hz oscillation on neck pitch at each partner phrase end.
  tt = np.arange(t) / FPS
  for te in other_ends:
    dt = tt - te
    m = (dt >= 0) & (dt < 1.2)
    pose[m, 0] += 0.08 * np.sin(2 * np.pi * 2.5 * dt[m]) * np.exp(-dt[m] * 3)
  sway = _smooth(np.cumsum(rng.standard_normal((t, 3)) * 0.003, axis=0), 1)
  pose[:, 0:3] += ident.neck_offset + sway - sway.mean(axis=0)
  exp += 0.02 * rng.standard_normal(exp.shape)
  pose += 0.002 * rng.standard_normal(pose.shape)
  return exp.astype(np.float32), pose.astype(np.float32)


def make_clip(seed: int, index: int, *, min_seconds: float = 10.0, max_seconds: float = 20.0,
              num_identities: int = 8, identities: list[Identity] | None = None) -> dict:
  """One conversation: `{'audio': [a1, a2], 'npz': [dict1, dict2], 'turns': [...], ...}`; the
  other keys are the draws behind the motion (per speaker: expression events, listening
  weight; the mood, phrase ends)."""
  identities = identities or make_identities(seed, num_identities)
  rng = np.random.default_rng([seed, index])
  duration = rng.uniform(min_seconds, max_seconds)
  t = int(duration * FPS)
  n = t * audio_lib.SAMPLES_PER_FRAME + int(rng.integers(0, audio_lib.SAMPLES_PER_FRAME))
  turns = _turns(rng, n / SR)
  ids = rng.choice(len(identities), size=2, replace=False)
  envs, ends = zip(*[_speech_envelope(rng, n, turns, who) for who in (0, 1)])
  audios = [_voice(rng, envs[s], identities[ids[s]]) for s in (0, 1)]
  fenv = [_frame_env(e, t) for e in envs]
  emos = [_expression_events(rng, t) for _ in (0, 1)]
  m = mood(seed, index)
  listening = [listening_weight(fenv[s], fenv[1 - s]) for s in (0, 1)]
  npzs = []
  for s in (0, 1):
    ident = identities[ids[s]]
    exp, pose = _motion(rng, t, fenv[s], listening[s], ends[1 - s], ident, emos[s], emos[1 - s], m)
    npzs.append({
        "exp": exp, "pose": pose,
        "shape": np.tile(ident.shape, (t, 1)),
        "tex": np.zeros((t, 50), np.float32),
        "cam": np.tile(np.array([8.0, 0.0, 0.0], np.float32), (t, 1)),
        "light": np.zeros((t, 9, 3), np.float32),
    })
  return {"audio": audios, "npz": npzs, "turns": turns, "identities": [int(i) for i in ids],
          "expression_events": emos, "mood": m, "phrase_ends": [list(e) for e in ends],
          "listening": listening}


def write_clip(output_dir: str, name: str, clip: dict) -> list[str]:
  """Writes one clip's four files atomically; returns their paths."""
  import soundfile as sf

  paths = []
  for s in (0, 1):
    base = os.path.join(output_dir, f"{name}_speaker{s + 1}")
    records.atomic_write(base + ".wav",
                  lambda p, a=clip["audio"][s]: sf.write(p, a, SR, subtype="FLOAT", format="WAV"))
    records.atomic_write(base + ".npz", lambda p, d=clip["npz"][s]: np.savez(p, **d))
    paths += [base + ".wav", base + ".npz"]
  return paths


def clip_name(index: int) -> str:
  return f"synth_{index:05d}"


def synthesize(output_dir: str, num_clips: int, seed: int = 0, *, min_seconds: float = 10.0,
               max_seconds: float = 20.0, num_identities: int = 8, first_index: int = 0,
               progress: bool = False) -> list[str]:
  """Writes `num_clips` conversations into `output_dir`; returns the clip names.

  Clips are numbered from `first_index`: a held-out set of the same speakers is the same
  seed with indices past the training set's.
  """
  if num_clips < 1:
    raise ValueError(f"num_clips must be >= 1, got {num_clips}")
  if not 0 < min_seconds <= max_seconds:
    raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
  os.makedirs(output_dir, exist_ok=True)
  identities = make_identities(seed, num_identities)
  names = []
  from dualtalk_jax.progress import Progress

  with Progress(num_clips, "synthesize", unit="clip", enabled=progress) as bar:
    for i in range(first_index, first_index + num_clips):
      clip = make_clip(seed, i, min_seconds=min_seconds, max_seconds=max_seconds,
                       identities=identities)
      write_clip(output_dir, clip_name(i), clip)
      names.append(clip_name(i))
      bar.update()
  return names
