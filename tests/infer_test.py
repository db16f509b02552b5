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
