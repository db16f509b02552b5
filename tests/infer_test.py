"""experiments.infer end to end on the real demo conversation, and its input errors."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dualtalk_jax import audio, checkpoint, params as params_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = ROOT.parent / "shared" / "samples" / "dualtalk_demo"
CLIP = "UbjUDM1MiGE_sub_video_72"
needs_demo = pytest.mark.skipif(not DEMO.is_dir(), reason="../shared/samples/dualtalk_demo is absent")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  from conftest import perturbed_model
  model = perturbed_model()
  path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
  checkpoint.save_params(path, params_lib.of(model), model.config)
  return path


def run_infer(*args):
  return subprocess.run([sys.executable, "-m", "experiments.infer", *args], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def demo_args(ckpt, out, **kw):
  d = dict(checkpoint=ckpt, audio_self=DEMO / f"{CLIP}_speaker1.wav", audio_other=DEMO / f"{CLIP}_speaker2.wav",
           motion_other=DEMO / f"{CLIP}_speaker2.npz", output=out)
  d.update(kw)
  return [f"--{k}={v}" for k, v in d.items()]


@needs_demo
def test_infer_demo_windowed_with_plot(tiny_ckpt, tmp_path):
  out = tmp_path / "pred.npy"
  r = run_infer(*demo_args(tiny_ckpt, out, plot=tmp_path / "pred.png", window_seconds=8))
  assert r.returncode == 0, r.stderr[-3000:]
  t = audio.num_frames(len(audio.load_audio(DEMO / f"{CLIP}_speaker1.wav")))
  pred = np.load(out)
  assert pred.shape == (t, 56) and np.all(np.isfinite(pred))
  with np.load(tmp_path / "pred.npz") as z:
    assert z["exp"].shape == (t, 50) and z["pose"].shape == (t, 6)
    np.testing.assert_array_equal(audio.motion_from_flame(z), pred)  # FLAME layout round trip
  png = (tmp_path / "pred.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def _copy_demo(tmp_path):
  import shutil
  for s, e in ((1, "wav"), (2, "wav"), (2, "npz")):
    shutil.copy(DEMO / f"{CLIP}_speaker{s}.{e}", tmp_path / f"s{s}.{e}")
  return tmp_path / "s1.wav", tmp_path / "s2.wav", tmp_path / "s2.npz"


@needs_demo
def test_infer_errors_name_the_file(tiny_ckpt, tmp_path):
  import soundfile as sf

  from dualtalk_jax.eval import predict as P

  a, b, m = _copy_demo(tmp_path)
  sf.write(tmp_path / "short.wav", np.zeros(500, np.float32), 16000, subtype="FLOAT")
  z = dict(np.load(m))
  z["exp"][10, 3] = np.nan
  np.savez(tmp_path / "nan.npz", **z)
  cases = [((a, b, tmp_path / "absent.npz"), "absent.npz: no such motion file"),
           ((a, tmp_path / "absent.wav", m), "absent.wav: no such audio file"),
           ((tmp_path / "short.wav", b, m), "short.wav: audio is 500 samples, shorter than one frame"),
           ((a, b, tmp_path / "nan.npz"), "nan.npz: NaN or inf values in ['exp']")]
  for files, msg in cases:
    with pytest.raises(ValueError) as e:
      P.load_inputs(*map(str, files))
    assert msg in str(e.value)
  with pytest.raises(FileNotFoundError, match="nockpt: no such checkpoint"):
    P.load_model(str(tmp_path / "nockpt"))
  # the CLI turns them into one line on stderr and exit status 1, writing nothing
  r = run_infer(f"--checkpoint={tiny_ckpt}", f"--audio_self={a}", f"--audio_other={b}",
                f"--motion_other={tmp_path / 'nan.npz'}", f"--output={tmp_path / 'o.npy'}")
  assert r.returncode == 1 and "nan.npz: NaN or inf values in ['exp']" in r.stderr, r.stderr[-1500:]
  assert not (tmp_path / "o.npy").exists()


# --- without partner motion, and both speakers (--both): tiny models, synthetic tracks ---


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
  """Two 3 s speech-like tracks as mono files and as one two-channel file."""
  import soundfile as sf

  d = tmp_path_factory.mktemp("tracks")
  rng = np.random.default_rng(7)
  n = 3 * 16000 + 100
  x = [(rng.normal(size=n) * np.repeat(rng.uniform(0.05, 1.0, n // 1600 + 1), 1600)[:n]).astype(np.float32) * 0.1
       for _ in range(2)]
  for k in (0, 1):
    sf.write(d / f"s{k + 1}.wav", x[k], 16000, subtype="FLOAT")
  sf.write(d / "stereo.wav", np.stack(x, axis=1), 16000, subtype="FLOAT")
  return d


@pytest.fixture(scope="module")
def no_motion_ckpt(tmp_path_factory):
  import dataclasses

  from conftest import perturbed_model
  from dualtalk_jax.config import CONFIGS

  model = perturbed_model(dataclasses.replace(CONFIGS["tiny"], ablation="no_partner_motion"), seed=1)
  path = str(tmp_path_factory.mktemp("ckpt") / "no_motion")
  checkpoint.save_params(path, params_lib.of(model), model.config)
  return path


def _tracks(tracks):
  from dualtalk_jax.eval import predict as P
  return [audio.normalize(P.load_raw_track(str(tracks / f"s{k}.wav"))) for k in (1, 2)]


def test_infer_without_partner_motion(no_motion_ckpt, tiny_ckpt, tracks, tmp_path):
  """A no_partner_motion checkpoint needs no --motion_other; a model that reads it refuses."""
  from dualtalk_jax.eval import predict as P

  out = tmp_path / "p.npy"
  args = [f"--audio_self={tracks / 's1.wav'}", f"--audio_other={tracks / 's2.wav'}", f"--output={out}",
          f"--plot={tmp_path / 'p.png'}"]
  r = run_infer(f"--checkpoint={no_motion_ckpt}", *args)
  assert r.returncode == 0, r.stderr[-3000:]
  a1, a2 = _tracks(tracks)
  want = P.predict_windowed(P.load_model(no_motion_ckpt), P.Clip(a1, a2, None))
  np.testing.assert_allclose(np.load(out), want, atol=1e-5)
  assert (tmp_path / "p.png").stat().st_size > 10_000
  out.unlink()
  r = run_infer(f"--checkpoint={tiny_ckpt}", *args)
  assert r.returncode == 1 and "reads the partner's motion: pass --motion_other" in r.stderr, r.stderr[-1500:]
  assert not out.exists()


def test_predict_both_iterates_on_the_partners_prediction(tracks):
  """Round k + 1 predicts each speaker from the partner's round-k prediction; round 1 from a
  still (zero) partner; a no_partner_motion model predicts each speaker once from audio."""
  import dataclasses
  import types

  from predict_test import TINY

  from dualtalk_jax.eval import predict as P

  a1, a2 = _tracks(tracks)
  calls = []

  def f(clip):  # a stand-in model: target audio energy plus half the partner motion it is given
    t = clip.num_frames
    x = np.pad(np.abs(clip.audio_self), (0, t * 640 - len(clip.audio_self)))
    own = np.repeat(x.reshape(t, 640).mean(1, keepdims=True), 56, 1)
    other = np.zeros_like(own) if clip.motion_other is None else 0.5 * clip.motion_other[:t]
    return (own + other).astype(np.float32)

  def one(clip):
    calls.append(clip)
    return f(clip)

  full = types.SimpleNamespace(config=TINY)
  p1, p2, change = P.predict_both(full, a1, a2, iterations=3, predict_one=one)
  # calls: round r predicts speaker 1 (calls[2r]) then speaker 2 (calls[2r + 1])
  assert len(calls) == 6 and not np.any(calls[0].motion_other) and not np.any(calls[1].motion_other)
  assert all(calls[2 * r].audio_self is a1 and calls[2 * r + 1].audio_self is a2 for r in range(3))
  for r in (1, 2):  # each round reads the partner's prediction of the round before
    np.testing.assert_array_equal(calls[2 * r].motion_other, f(calls[2 * r - 1]))
    np.testing.assert_array_equal(calls[2 * r + 1].motion_other, f(calls[2 * r - 2]))
  assert np.array_equal(p1, f(calls[4])) and np.array_equal(p2, f(calls[5]))
  assert 0 < change < np.abs(p1).max()
  calls.clear()
  no_motion = types.SimpleNamespace(config=dataclasses.replace(TINY, ablation="no_partner_motion"))
  q1, q2, change = P.predict_both(no_motion, a1, a2, iterations=3, predict_one=one)
  assert len(calls) == 2 and change == 0 and all(c.motion_other is None for c in calls)
  assert calls[0].audio_self is a1 and calls[1].audio_self is a2
  with pytest.raises(ValueError, match="iterations must be >= 1"):
    P.predict_both(full, a1, a2, iterations=0, predict_one=one)
  with pytest.raises(ValueError, match="needs `iterations`"):
    P.predict_both(full, a1, a2, predict_one=one)


def test_infer_both_from_a_two_channel_recording(tiny_ckpt, tracks, tmp_path):
  """--both on one stereo file: speaker k = channel k - 1, each one's partner motion the
  other's prediction (2 rounds); equal to predict_both on the two mono tracks."""
  from dualtalk_jax.eval import predict as P

  r = run_infer(f"--checkpoint={tiny_ckpt}", "--both", f"--audio_self={tracks / 'stereo.wav'}", "--iterations=2",
                f"--output={tmp_path / 'conv.npy'}", f"--plot={tmp_path / 'conv.png'}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "largest change in the last round" in r.stdout
  a1, a2 = _tracks(tracks)
  want = P.predict_both(P.load_model(tiny_ckpt), a1, a2, iterations=2)
  for k in (1, 2):
    got = np.load(tmp_path / f"conv_speaker{k}.npy")
    np.testing.assert_allclose(got, want[k - 1], atol=1e-5)
    with np.load(tmp_path / f"conv_speaker{k}.npz") as z:
      assert z["exp"].shape == (len(got), 50)
  assert (tmp_path / "conv.png").stat().st_size > 10_000
  # a model that reads partner motion needs --iterations with --both; a mono file cannot be two speakers
  r = run_infer(f"--checkpoint={tiny_ckpt}", "--both", f"--audio_self={tracks / 'stereo.wav'}",
                f"--output={tmp_path / 'x.npy'}")
  assert r.returncode == 1 and "reads the partner's motion, which a two-track recording" in r.stderr, r.stderr[-1500:]
  r = run_infer(f"--checkpoint={tiny_ckpt}", "--both", "--iterations=1", f"--audio_self={tracks / 's1.wav'}",
                f"--output={tmp_path / 'x.npy'}")
  assert r.returncode == 1 and "needs a two-channel --audio_self" in r.stderr, r.stderr[-1500:]
  assert not list(tmp_path.glob("x*"))
