"""Bucketed batched prediction and windowed long-input inference (dualtalk_jax.eval.predict)."""

import numpy as np
import pytest

from dualtalk_jax import audio
from dualtalk_jax.config import CONFIGS
from dualtalk_jax.eval import predict as P
from dualtalk_jax.eval.predict import predict
from conftest import perturbed_model

TINY = CONFIGS["tiny"]


def make_clip(rng, samples, motion_frames, other_samples=None):
  """Speech-like noise (a slowly varying envelope) for both tracks, random partner motion."""
  def track(n):
    env = np.repeat(rng.uniform(0.05, 1.0, n // 1600 + 1), 1600)[:n]
    return audio.normalize((rng.normal(size=n) * env).astype(np.float32))
  return P.Clip(track(samples), track(other_samples or samples),
                rng.normal(size=(motion_frames, 56)).astype(np.float32))


@pytest.fixture(scope="module")
def model():
  return perturbed_model()


def alone(model, c):
  return np.asarray(predict(model, c.audio_self[None], c.audio_other[None], c.motion_other[None]))[0]


def test_bucketed_batches_equal_clip_by_clip(model):
  rng = np.random.default_rng(3)
  # different lengths, partner audio and motion lengths off the target's, a float64-quirk length (4480)
  spec = [(16000, 25, None), (4480, 9, None), (9000, 20, 8700), (7001, 12, 7400)]
  clips = [make_clip(rng, s, n, o) for s, n, o in spec]
  got = P.predict_clips(model, clips, batch_size=2, bucket_frames=25)
  worst = 0.0
  for c, g in zip(clips, got):
    want = alone(model, c)
    assert g.shape == want.shape == (audio.num_frames(len(c.audio_self)), 56)
    worst = max(worst, float(np.abs(g - want).max()))
  assert worst <= 1e-5, worst


def test_batches_share_compiled_shapes(model):
  """Clips in one bucket go through one padded shape, whatever their lengths."""
  calls = []
  def fake(params, batch, max_frames):
    calls.append((batch["audio_self"].shape, batch["audio_other"].shape, batch["motion_other"].shape, max_frames))
    return np.zeros((batch["audio_self"].shape[0], max_frames, 56), np.float32)
  predictor = P.Predictor.from_model(model)
  predictor.step = fake
  rng = np.random.default_rng(4)
  spec = ((8000, 10), (9000, 30), (12000, 5), (15999, 26), (30000, 47), (40000, 62))
  clips = [make_clip(rng, s, n) for s, n in spec]
  out = P.predict_clips(predictor, clips, batch_size=4, bucket_frames=25)
  assert [len(o) for o in out] == [audio.num_frames(len(c.audio_self)) for c in clips]
  # every input padded to its bucket (the motion of 30 frames and 26 too): two clips in 25 frames,
  # three in 50, one in 75
  assert calls == [((4, 16000), (4, 16000), (4, 25, 56), 25), ((4, 32000), (4, 32000), (4, 50, 56), 50),
                   ((4, 48000), (4, 48000), (4, 75, 56), 75)]


def test_window_plan_covers_clip_and_weights_sum_to_one():
  for total, w, o in [(588, 150, 50), (1000, 250, 50), (260, 250, 50), (499, 250, 50), (15000, 500, 50)]:
    starts = P.window_starts(total, w, o)
    assert starts[0] == 0 and starts[-1] + w == total
    assert all(b - a <= w - o for a, b in zip(starts, starts[1:]))  # overlap >= o
    wts = P.crossfade_weights(starts, w)
    acc = np.zeros(total)
    for s, x in zip(starts, wts):
      acc[s:s + w] += x
    if all(b - a >= w // 2 for a, b in zip(starts, starts[1:])):  # at most two windows per frame
      np.testing.assert_allclose(acc, 1.0, atol=1e-12)
    assert np.all(acc > 0)


def _local_runner(offsets):
  """A stand-in model with a known, frame-local answer plus a per-call offset (the context
  a real window cannot see): frame f = [rms of audio_self over samples 640f..640f+640,
  partner motion frame f], + offset. Windowing must reproduce it exactly outside overlaps."""
  def run(clips, num_frames):
    out = []
    for i, c in enumerate(clips):
      t = c.num_frames if num_frames is None else num_frames[i]
      x = np.zeros(t * 640, np.float32)
      x[:min(len(c.audio_self), len(x))] = c.audio_self[:t * 640]
      feat = np.sqrt((x.reshape(t, 640) ** 2).mean(1))
      m = np.zeros((t, 56), np.float32)
      m[:min(t, len(c.motion_other))] = c.motion_other[:t]
      off = offsets.pop(0) if offsets else 0.0
      out.append(m + feat[:, None] + off)
    return out
  return run


@pytest.mark.parametrize("samples", [30 * 16000 + 123, 640 * 711, 640 * 700 + 639])
def test_windowed_is_frame_exact_and_crossfaded(samples):
  rng = np.random.default_rng(samples)
  t = audio.num_frames(samples)
  clip = make_clip(rng, samples, t)
  whole = _local_runner([])([clip], None)[0]
  w, o = 150, 50
  starts = P.window_starts(t, w, o)
  offsets = [0.1 * k for k in range(len(starts))]
  got = P.predict_windowed(None, clip, window_seconds=w / 25, overlap_seconds=o / 25, batch_size=2,
                           runner=_local_runner(list(offsets)))
  assert got.shape == (t, 56)
  seam = np.zeros(t, bool)
  for a, b in zip(starts[1:], starts[:-1]):
    seam[a:b + w] = True
  # outside overlaps: exactly one window, frame-aligned with the whole clip
  owner = np.searchsorted(np.array(starts), np.arange(t), side="right") - 1
  np.testing.assert_allclose(got[~seam], whole[~seam] + np.array(offsets)[owner[~seam]][:, None], atol=1e-5)
  # inside: a linear blend from one window's offset to the next (no step)
  lo = np.array(offsets)[owner - 1][seam]
  hi = np.array(offsets)[owner][seam]
  blend = got[seam] - whole[seam]
  assert np.all(blend >= np.minimum(lo, hi)[:, None] - 1e-5) and np.all(blend <= np.maximum(lo, hi)[:, None] + 1e-5)
  step = np.abs(np.diff(got - whole, axis=0)).max()
  assert step <= 0.1 / o * 1.01 + 1e-5  # offset jumps of 0.1 spread over >= o frames


def test_windowed_model_matches_whole_clip_without_seams(model):
  """The real (tiny) model: same length as one pass, close to it, no jumps at seams."""
  rng = np.random.default_rng(11)
  samples = 14 * 16000 + 500  # len % 640 in [400, 640): window and whole-clip conv grids coincide
  t = audio.num_frames(samples)
  clip = make_clip(rng, samples, t)
  whole = P.predict_windowed(model, clip, window_seconds=0)
  np.testing.assert_allclose(whole, alone(model, clip), atol=1e-5)
  w, o = 100, 25
  got = P.predict_windowed(model, clip, window_seconds=w / 25, overlap_seconds=o / 25)
  assert got.shape == whole.shape == (t, 56)
  starts = P.window_starts(t, w, o)
  seam = np.zeros(t - 1, bool)
  for a, b in zip(starts[1:], starts[:-1]):
    seam[a - 1:b + w] = True
  vel = np.sqrt((np.diff(got, axis=0) ** 2).mean(1))
  assert vel[seam].max() <= 1.5 * vel[~seam].max()
  # close to one pass: the remaining difference is the whole-clip context of the attentions
  rel = np.sqrt(((got - whole) ** 2).mean()) / np.sqrt((whole ** 2).mean())
  assert rel < 0.1, rel


def test_short_clip_is_one_pass():
  clip = make_clip(np.random.default_rng(5), 30000, 40)
  calls = []
  def runner(clips, num_frames):
    calls.append(num_frames)
    return [np.ones((clips[0].num_frames, 56), np.float32)]
  assert P.predict_windowed(None, clip, window_seconds=4, runner=runner).shape == (47, 56)
  assert P.predict_windowed(None, clip, window_seconds=0, runner=runner).shape == (47, 56)
  assert calls == [None, None]  # whole clip, its own T


def test_bad_overlap_is_an_error():
  clip = make_clip(np.random.default_rng(6), 16000 * 10, 250)
  with pytest.raises(ValueError, match="overlap_seconds"):
    P.predict_windowed(None, clip, window_seconds=4, overlap_seconds=3, runner=_local_runner([]))
