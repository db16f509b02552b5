"""Audio front end: loading, resampling, normalisation, frame count, motion layout."""

import math

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from conftest import SHARED
from dualtalk_jax import audio

DEMO = SHARED / "samples" / "dualtalk_demo"


def _tone(n, rate=16000, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(n) / rate
  return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("subtype,fmt,tol", [
    ("FLOAT", "WAV", 0.0), ("PCM_16", "WAV", 2 ** -15), ("PCM_24", "WAV", 2 ** -23),
    ("PCM_32", "WAV", 2 ** -31), ("PCM_16", "FLAC", 2 ** -15), ("PCM_24", "FLAC", 2 ** -23)])
def test_load_encodings(tmp_path, subtype, fmt, tol):
  x = _tone(8000)
  p = tmp_path / f"a.{fmt.lower()}"
  sf.write(p, x, 16000, subtype=subtype, format=fmt)
  got = audio.read_audio(p)
  assert got.samples.dtype == np.float32 and got.samples.shape == x.shape
  assert got.orig_rate == 16000 and not got.resampled
  np.testing.assert_allclose(got.samples, x, atol=tol)


def test_resample_polyphase(tmp_path):
  x = _tone(44100, rate=44100)
  p = tmp_path / "a.wav"
  sf.write(p, x, 44100, subtype="FLOAT")
  got = audio.read_audio(p)
  assert got.orig_rate == 44100 and got.rate == 16000 and got.resampled
  want = signal.resample_poly(x.astype(np.float64), 160, 441).astype(np.float32)
  np.testing.assert_array_equal(got.samples, want)
  assert got.samples.shape == (16000,)


def test_stereo_needs_channel(tmp_path):
  x = np.stack([_tone(1600), -_tone(1600, seed=1)], axis=1)
  p = tmp_path / "st.wav"
  sf.write(p, x, 16000, subtype="FLOAT")
  with pytest.raises(audio.AudioError, match=r"st\.wav: 2 channels"):
    audio.load_audio(p)
  np.testing.assert_array_equal(audio.load_audio(p, channel=1), x[:, 1])
  with pytest.raises(audio.AudioError, match="out of range"):
    audio.load_audio(p, channel=2)


def test_bad_files(tmp_path):
  empty = tmp_path / "empty.wav"
  empty.write_bytes(b"")
  with pytest.raises(audio.AudioError, match="empty.wav: empty file"):
    audio.load_audio(empty)
  junk = tmp_path / "junk.wav"
  junk.write_bytes(b"this is not audio at all" * 10)
  with pytest.raises(audio.AudioError, match="junk.wav: unreadable"):
    audio.load_audio(junk)
  good = tmp_path / "good.wav"
  sf.write(good, _tone(16000), 16000, subtype="FLOAT")
  trunc = tmp_path / "trunc.wav"
  trunc.write_bytes(good.read_bytes()[:-1000])
  with pytest.raises(audio.AudioError, match="trunc.wav: truncated WAV"):
    audio.load_audio(trunc)
  nodata = tmp_path / "zero.wav"
  sf.write(nodata, np.zeros(0, np.float32), 16000, subtype="FLOAT")
  with pytest.raises(audio.AudioError, match="zero.wav"):
    audio.load_audio(nodata)
  with pytest.raises(audio.AudioError, match="missing.wav: no such"):
    audio.load_audio(tmp_path / "missing.wav")


def test_normalize_matches_transformers():
  transformers = pytest.importorskip("transformers")
  fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
  for seed, n in [(0, 16000), (1, 37123)]:
    x = (np.random.default_rng(seed).standard_normal(n) * 0.1 + 0.02).astype(np.float32)
    want = fe(x, sampling_rate=16000).input_values[0]
    got = audio.normalize(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
  # A silent utterance stays finite (the 1e-7 keeps the denominator positive).
  assert np.all(audio.normalize(np.zeros(100, np.float32)) == 0)


def test_num_frames():
  assert audio.num_frames(4480) == 8  # Float rounding: not 7.
  assert audio.num_frames(640) == 1 and audio.num_frames(641) == 2 and audio.num_frames(0) == 0
  n = np.arange(0, 200_000)
  want = np.array([math.ceil(int(k) / 16000 * 25) for k in n])
  np.testing.assert_array_equal(audio.num_frames_array(n), want)
  # The architecture spec: 925 multiples of 640 below 10 minutes get an extra frame.
  k = np.arange(1, 10 * 60 * 25)
  assert int(np.sum(audio.num_frames_array(k * 640) != k)) == 925


def test_motion_roundtrip_and_layout():
  rng = np.random.default_rng(0)
  exp = rng.standard_normal((7, 50)).astype(np.float32)
  pose = rng.standard_normal((7, 6)).astype(np.float32)
  m = audio.motion_from_flame({"exp": exp, "pose": pose})
  assert m.shape == (7, 56) and m.dtype == np.float32
  np.testing.assert_array_equal(m[:, 50:53], pose[:, 3:6])  # jaw
  np.testing.assert_array_equal(m[:, 53:56], pose[:, 0:3])  # neck
  back = audio.flame_from_motion(m)
  np.testing.assert_array_equal(back["exp"], exp)
  np.testing.assert_array_equal(back["pose"], pose)


@pytest.mark.parametrize("bad,match", [
    ({"pose": np.zeros((3, 6))}, "missing key 'exp'"),
    ({"exp": np.zeros((3, 49)), "pose": np.zeros((3, 6))}, r"'exp' has shape \(3, 49\)"),
    ({"exp": np.zeros((3, 50)), "pose": np.zeros((3, 3))}, r"'pose' has shape"),
    ({"exp": np.zeros((3, 50)), "pose": np.zeros((4, 6))}, "frames"),
    ({"exp": np.full((3, 50), np.nan), "pose": np.zeros((3, 6))},
     r"NaN or inf values in \['exp'\]"),
])
def test_motion_validation(bad, match):
  with pytest.raises(ValueError, match=match):
    audio.motion_from_flame(bad)


@pytest.mark.skipif(not DEMO.exists(), reason="../shared samples absent")
def test_demo_files():
  wav = DEMO / "UbjUDM1MiGE_sub_video_72_speaker1.wav"
  got = audio.read_audio(wav)
  assert got.orig_rate == 16000 and got.subtype == "FLOAT" and got.samples.shape == (375808,)
  m = audio.motion_from_flame(np.load(DEMO / "UbjUDM1MiGE_sub_video_72_speaker2.npz"))
  assert m.shape == (587, 56)
  assert abs(audio.num_frames(got.samples.size) - m.shape[0]) <= 1
