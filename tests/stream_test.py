"""Streaming prediction (dualtalk_jax.eval.stream) and the experiments.stream CLI."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dualtalk_jax import audio, checkpoint, params as params_lib
from dualtalk_jax.eval import predict as P
from dualtalk_jax.eval import stream as S
from dualtalk_jax.eval.predict import predict

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOP = audio.SAMPLES_PER_FRAME
# One window shape for the whole module (one compile): 1 s of context, 0.6 s of lookahead, 3-frame hop.
CFG = S.StreamConfig(context_frames=25, lookahead_frames=15, hop_frames=3)


@pytest.fixture(scope="module")
def model():
  from conftest import perturbed_model
  return perturbed_model()


@pytest.fixture(scope="module")
def streamer(model):
  return S.StreamingPredictor(model, CFG)


def raw_track(rng, n):
  """Speech-like noise (a slowly varying envelope), raw: a DC offset and a level far from unit variance."""
  env = np.repeat(rng.uniform(0.05, 1.0, n // 1600 + 1), 1600)[:n]
  return (0.05 * rng.normal(size=n) * env + 0.01).astype(np.float32)


def make_inputs(seed, samples, motion_frames=None):
  rng = np.random.default_rng(seed)
  t = audio.num_frames(samples)
  return raw_track(rng, samples), raw_track(rng, samples), rng.normal(size=(motion_frames or t, 56)).astype(np.float32)


def random_chunks(a, b, m, rng, sizes=(1, 1, 1, 7, 333, 639, 641, 1280, 4001)):
  """Chunks of random sizes (single samples among them); motion frames pushed as their time passes."""
  i = sent = 0
  while i < len(a):
    j = min(len(a), i + int(rng.choice(sizes)))
    upto = len(m) if j == len(a) else min(j // HOP, len(m))
    yield S.Chunk(a[i:j], b[i:j], m[sent:upto])
    i, sent = j, upto


def test_whole_clip_when_context_and_lookahead_cover_it(model, streamer):
  # 14 frames <= C and L: every step's window is the whole clip; the running statistics are
  # those of the whole clip; so the stream is the whole-clip pass, whatever the chunking.
  a, b, m = make_inputs(0, 14 * HOP - 217, motion_frames=13)
  want = np.asarray(predict(model, audio.normalize(a)[None], audio.normalize(b)[None], m[None]))[0]
  for chunk in (640, 1001):
    got = S.run_stream(streamer, S.file_chunks(a, b, m, chunk)).prediction
    assert got.shape == want.shape == (14, 56)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_any_chunking_gives_identical_output_with_one_compile(streamer):
  a, b, m = make_inputs(1, 3 * 16000 + 77)
  rng = np.random.default_rng(0)
  ref = S.run_stream(streamer, S.file_chunks(a, b, m, 640)).prediction
  assert ref.shape == (audio.num_frames(len(a)), 56) and np.all(np.isfinite(ref))
  assert streamer.compiles == 1
  runs = [S.file_chunks(a, b, m, 1000),  # not a multiple of the 640-sample frame
          S.file_chunks(a, b, m, len(a)),  # everything in one push
          random_chunks(a, b, m, rng)]
  for chunks in runs:
    np.testing.assert_array_equal(S.run_stream(streamer, chunks).prediction, ref)
  # one sample at a time over the first second, then the rest in one go
  streamer.reset()
  out = [streamer.push(a[i:i + 1], b[i:i + 1], m[:0] if (i + 1) % HOP else m[i // HOP:i // HOP + 1])
         for i in range(16000)]
  out += [streamer.push(a[16000:], b[16000:], m[25:]), streamer.flush()]
  np.testing.assert_array_equal(np.concatenate(out), ref)
  assert streamer.compiles == 1  # partial first and last windows included: no recompiles


def test_state_is_bounded(streamer):
  a, b, m = make_inputs(3, 20 * 16000)
  nbytes = streamer.state_nbytes()
  held = []
  streamer.reset()
  for c in S.file_chunks(a, b, m, 4000):
    streamer.push(c.audio_self, c.audio_other, c.motion_other)
    held.append(max(r.end - r.start for r in (streamer._self, streamer._other)))
  streamer.flush()
  assert streamer.state_nbytes() == nbytes
  # after the first seconds the buffers hold one window (+ a chunk), however long the stream runs
  assert max(held) <= (CFG.window_frames + CFG.hop_frames) * HOP + 4000  # 1.8 s held of a 20 s stream


def test_window_geometry(model):
  """Every step's window: frames [t - C, t + L) (from 0 early on, to T at the end), audio of
  exactly those frames, motion of the same frames, left-aligned in one fixed shape. C + L = 110
  frames is one of the counts where the released float64 formula gives one frame more
  (ceil(110 * 640 / 16000 * 25) = 111): the window's frame count is its own, not the formula's."""
  cfg = S.StreamConfig(context_frames=100, lookahead_frames=10, hop_frames=5)
  s = S.StreamingPredictor(model, cfg)
  calls = []

  def fake(params, x, max_frames):  # the one prediction step, on its batch
    calls.append((x["audio_self"].shape, x["audio_other"].shape, x["motion_other"].shape,
                  *(int(x[k][0]) for k in ("audio_self_lengths", "audio_other_lengths", "motion_other_lengths",
                                           "num_frames")), max_frames))
    return np.zeros((1, max_frames, 56), np.float32)

  s._predictor.step = fake
  n = 8 * 16000 + 100
  a, b, m = make_inputs(10, n)
  t_total = audio.num_frames(n)
  S.run_stream(s, S.file_chunks(a, b, m, 640))
  w = cfg.window_frames
  for k, (sa, sb, sm, la, lb, lm, nf, mf) in enumerate(calls[:-1]):
    t = (k + 1) * cfg.hop_frames
    frames = min(t + cfg.lookahead_frames, w)
    assert (sa, sb, sm, mf) == ((1, w * HOP), (1, w * HOP), (1, w, 56), w)
    assert (la, lb, lm, nf) == (frames * HOP, frames * HOP, frames, frames), k
  *_, la, lb, lm, nf, mf = calls[-1]  # the last step: the last C frames, up to the audio's end
  assert (la, lb, lm, nf) == (n - (t_total - cfg.context_frames) * HOP,) * 2 + (cfg.context_frames,) * 2


def test_crossfade_is_smooth_at_seams(streamer, monkeypatch):
  """Each step predicts a constant, its index: cut at the seams the output would jump by 1
  every hop; crossfaded it rises evenly, by 1 / hop per frame, seams or not."""
  w = CFG.window_frames
  steps = []

  def fake(params, batch, max_frames):
    steps.append(len(steps))
    return np.full((1, w, 56), float(len(steps)), np.float32)

  monkeypatch.setattr(streamer._predictor, "step", fake)
  a, b, m = make_inputs(4, 3 * 16000)
  out = S.run_stream(streamer, S.file_chunks(a, b, m, 640)).prediction[:, 0]
  jumps = np.diff(out)
  assert np.all(jumps >= -1e-6) and jumps.max() <= 1 / CFG.hop_frames + 1e-5
  np.testing.assert_allclose(jumps[20:-20], 1 / CFG.hop_frames, atol=1e-5)  # steady state: an even ramp
  assert out[0] == 1 and len(steps) - out[-1] < 1 / CFG.hop_frames  # the first and the last step at the ends


def test_motion_refused_or_misused(streamer):
  a, b, m = make_inputs(5, 16000)
  streamer.reset()
  with pytest.raises(ValueError, match="motion_other is None, but this model reads the partner's motion"):
    streamer.push(a, b, None)
  with pytest.raises(ValueError, match=r"motion_other: expected shape \(n, 56\)"):
    streamer.push(a[:10], b[:10], m[:2, :50])
  with pytest.raises(ValueError, match="audio_other: chunk contains NaN"):
    streamer.push(a[:10], np.full(10, np.nan, np.float32), m[:0])


def test_skewed_push_is_refused_without_changing_the_stream(streamer):
  a, b, m = make_inputs(6, 6 * 16000)
  ref = S.run_stream(streamer, S.file_chunks(a, b, m, 640)).prediction
  streamer.reset()
  out = [streamer.push(a[:16000], b[:16000], m[:25])]
  with pytest.raises(ValueError, match="audio_self would run more than 50 frames ahead"):
    streamer.push(a[16000:], b[16000:16000], m[:0])  # 5 s of target audio, no partner input
  out += [streamer.push(a[16000:], b[16000:], m[25:]), streamer.flush()]
  np.testing.assert_array_equal(np.concatenate(out), ref)


def test_partner_inputs_ending_early(streamer):
  """A partner track shorter than the target's (by more than the skew allowance) is ended, not
  waited for: silence and its last motion frame from there on, as in `predict_windowed`."""
  a, b, m = make_inputs(7, 5 * 16000)
  got = S.run_stream(streamer, S.file_chunks(a, b[:2 * 16000], m[:40], 640)).prediction
  assert got.shape == (125, 56) and np.all(np.isfinite(got))
  chunks = list(S.file_chunks(a, b[:2 * 16000], m[:40], 640))
  assert [i for i, c in enumerate(chunks) if c.ended] == [39, 49]
  assert chunks[39].ended == ("motion_other",) and chunks[49].ended == ("audio_other",)
  assert sum(len(c.motion_other) for c in chunks) == 40 and sum(len(c.audio_other) for c in chunks) == 32000


def test_no_partner_motion_model_streams_without_motion():
  from dualtalk_jax.config import CONFIGS, DualTalkConfig
  if "ablation" not in {f.name for f in dataclasses.fields(DualTalkConfig)}:
    pytest.skip("DualTalkConfig has no ablation field on this branch")
  from dualtalk_jax.models.dualtalk import DualTalk, make_rngs
  cfg = dataclasses.replace(CONFIGS["tiny"], ablation="no_partner_motion")
  model = DualTalk(cfg, rngs=make_rngs(0))
  model.eval()
  s = S.StreamingPredictor(model, S.StreamConfig(context_frames=10, lookahead_frames=5, hop_frames=5))
  a, b, m = make_inputs(8, 2 * 16000)
  without = S.run_stream(s, S.file_chunks(a, b, None, 640)).prediction
  with_motion = S.run_stream(s, S.file_chunks(a, b, m, 640)).prediction  # given, and ignored
  assert without.shape == (50, 56) and np.all(np.isfinite(without))
  np.testing.assert_array_equal(without, with_motion)


def test_config_from_time_and_limits():
  c = S.StreamConfig.from_time(context_s=6, lookahead_ms=300, hop_ms=40)
  assert (c.context_frames, c.lookahead_frames, c.hop_frames) == (150, 8, 1)  # 300 ms rounds up to 320
  assert S.StreamConfig.from_time(context_s=0.2, lookahead_ms=0, hop_ms=100).hop_frames == 3
  with pytest.raises(ValueError, match="context .* must be at least the hop"):
    S.StreamConfig(context_frames=2, lookahead_frames=0, hop_frames=3)
  with pytest.raises(ValueError, match="lookahead_ms must be a finite number >= 0"):
    S.StreamConfig.from_time(context_s=1, lookahead_ms=-5, hop_ms=40)


def test_microphone_needs_sounddevice(monkeypatch):
  monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails
  with pytest.raises(ImportError, match="needs the sounddevice package"):
    S.open_microphone()


def test_microphone_chunks_read_the_device_against_the_partner_recording(monkeypatch):
  import types
  reads = []

  class InputStream:
    def __init__(self, *, samplerate, channels, dtype, blocksize, device):
      assert (samplerate, channels, dtype, blocksize) == (16000, 1, "float32", 640)
    def __enter__(self):
      return self
    def __exit__(self, *exc):
      return False
    def read(self, n):
      reads.append(n)
      return np.full((n, 1), len(reads), np.float32), False

  monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(InputStream=InputStream))
  _, b, m = make_inputs(11, 16000)
  chunks = list(S.microphone_chunks(640, b, m))
  assert reads == [640] * 25 and len(chunks) == 25
  np.testing.assert_array_equal(chunks[3].audio_self, np.full(640, 4, np.float32))  # the device's samples
  np.testing.assert_array_equal(np.concatenate([c.audio_other for c in chunks]), b)
  assert sum(len(c.motion_other) for c in chunks) == len(m)


# ---- experiments.stream ----

@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
  import soundfile as sf
  d = tmp_path_factory.mktemp("stream")
  checkpoint.save_params(d / "ckpt", params_lib.of(model), model.config)
  a, b, m = make_inputs(9, 2 * 16000 + 300)
  sf.write(d / "a.wav", a, 16000, subtype="FLOAT")
  sf.write(d / "b.wav", b, 16000, subtype="FLOAT")
  np.savez(d / "b.npz", **audio.flame_from_motion(m))
  return d


def run_cli(cwd, *args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  return subprocess.run([sys.executable, "-m", "experiments.stream", *args], cwd=cwd, capture_output=True, text=True,
                        env=env)


def test_cli_end_to_end_with_relative_paths(files, streamer):
  (files / "out").mkdir()
  args = ["--checkpoint=ckpt", "--audio_self=a.wav", "--audio_other=b.wav", "--motion_other=b.npz",
          "--chunk_ms=30", "--context_s=1", "--lookahead_ms=600", "--hop_ms=120", "--output=out/pred.npy"]
  r = run_cli(files, *args)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "per-chunk compute latency: p50" in r.stdout and "real-time factor" in r.stdout, r.stdout
  pred = np.load(files / "out" / "pred.npy")
  # the CLI's stream is the library's stream of the same files (same window geometry as CFG)
  a, b = P.load_raw_track(str(files / "a.wav")), P.load_raw_track(str(files / "b.wav"))
  m = P.load_motion(str(files / "b.npz"))
  want = S.run_stream(streamer, S.file_chunks(a, b, m, 480)).prediction
  np.testing.assert_allclose(pred, want, atol=1e-6)
  with np.load(files / "out" / "pred.npz") as z:
    np.testing.assert_array_equal(audio.motion_from_flame(z), pred)
  assert sorted(os.listdir(files / "out")) == ["pred.npy", "pred.npz"]


def test_cli_refuses_bad_input_before_loading(files):
  base = ["--checkpoint=ckpt", "--audio_self=a.wav", "--audio_other=b.wav", "--output=o.npy"]
  r = run_cli(files, *base)
  assert r.returncode == 1 and "this model reads the partner's motion; pass --motion_other" in r.stderr, r.stderr[-2000:]
  r = run_cli(files, "--checkpoint=nockpt", "--audio_other=b.wav", "--motion_other=b.npz", "--microphone",
              "--output=o.npy")
  assert r.returncode == 1 and "nockpt: no such checkpoint" in r.stderr, r.stderr[-2000:]
  assert not (files / "o.npy").exists()
