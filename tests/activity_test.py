"""Voice activity, speaking/listening roles, and metrics over the frames of a role."""

import numpy as np
import pytest

from dualtalk_jax import audio
from dualtalk_jax.eval import activity, metrics

SR, FPS = audio.SAMPLE_RATE, audio.FPS


def _speech(rng, seconds, spans, level=1.0):
  """A track with syllable-like bursts (4/s, raised cosines) of a 150 Hz voice in `spans`, plus low noise."""
  n = int(seconds * SR)
  env = np.zeros(n)
  for t0, t1 in spans:
    for s in np.arange(t0, t1 - 0.24, 0.25):
      a, b = int(s * SR), int((s + 0.22) * SR)
      env[a:b] += 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(b - a) / (b - a))
  x = level * env * np.sin(2 * np.pi * 150 * np.arange(n) / SR) + 0.003 * rng.normal(size=n)
  return audio.normalize(x.astype(np.float32))


def _frames(t0, t1):
  return np.arange(int(t0 * FPS), int(t1 * FPS))


def test_roles_follow_turns_and_overlaps_go_to_the_louder():
  rng = np.random.default_rng(0)
  # A: [0.2, 3.2) and a quiet backchannel in B's turn; B: [3.6, 6.6) loud
  a = _speech(rng, 8, [(0.2, 3.2), (5.0, 5.5)], level=1.0)
  b = _speech(rng, 8, [(3.6, 6.6)], level=1.0)
  t = 8 * FPS
  speaking, listening = activity.roles(a, b, t)
  assert not np.any(speaking & listening)
  # the whole turn, pauses between syllables included, is speaking; B's turn is listening
  assert speaking[_frames(0.3, 3.1)].mean() > 0.95
  assert listening[_frames(3.7, 4.9)].mean() > 0.95 and listening[_frames(5.6, 6.5)].mean() > 0.95
  # after both stop, neither
  assert not speaking[_frames(7.0, 8.0)].any() and not listening[_frames(7.0, 8.0)].any()
  # A's backchannel during B's turn: both active, B (same level, longer) is not louder there,
  # so A is speaking where it is louder; roles stay disjoint either way
  # from B's side the roles mirror A's
  s_b, l_b = activity.roles(b, a, t)
  assert s_b[_frames(3.7, 4.9)].mean() > 0.95 and l_b[_frames(0.3, 3.1)].mean() > 0.95


def test_silent_or_steady_tracks_are_inactive():
  rng = np.random.default_rng(1)
  noise = audio.normalize(rng.normal(size=4 * SR).astype(np.float32))
  assert not activity.voice_activity(noise, 4 * FPS).any()
  assert not activity.voice_activity(np.zeros(4 * SR, np.float32), 4 * FPS).any()


def test_role_metrics_score_the_concatenated_frames():
  rng = np.random.default_rng(2)
  gts = [rng.normal(size=(100, 56)).astype(np.float32) for _ in range(3)]
  others = [rng.normal(size=(100, 56)).astype(np.float32) for _ in range(3)]
  preds = [g + 0.3 * rng.normal(size=g.shape).astype(np.float32) for g in gts]
  t = np.arange(100)
  # each role: two files with 50-60 frames (one compile), one with too few (no value)
  speak = [t < 50, t >= 40, t < 10]
  listen = [t >= 50, t < 10, (t >= 10) & (t < 70)]
  res = metrics.evaluate_roles(preds, gts, others, {"speaking": speak, "listening": listen})
  pf = res["per_file"]
  ref = metrics.evaluate_files([p[m] for p, m in zip(preds[:2], speak)], [g[m] for g, m in zip(gts[:2], speak)],
                               [o[m] for o, m in zip(others[:2], speak)])["per_file"]
  for k in ("mse_exp", "fid_jaw", "p_fid_pose", "sid_exp", "sts_jaw", "rpcc_exp", "variance_pre_jaw"):
    np.testing.assert_allclose(pf[f"{k}_speaking"][:2], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
  # pooled MSE of the selected frames, from its definition
  assert pf["mse_exp_speaking"][1] == pytest.approx(np.mean((preds[1][40:, :50] - gts[1][40:, :50]) ** 2), rel=1e-5)
  assert np.isnan(pf["mse_exp_speaking"][2]) and np.isnan(pf["mse_exp_listening"][1])
  assert np.isfinite(pf["mse_exp_listening"][2])
  assert res["mean"]["mse_exp_speaking"] == pytest.approx(np.mean(pf["mse_exp_speaking"][:2]))
  assert set(res["mean"]) == set(metrics.role_keys())
