"""What a new user hits first (issue 19): the CLIs run from another folder with relative paths.

Every CLI runs in a subprocess whose working directory is a temporary folder, as a user's
shell would be, with the repo on PYTHONPATH (as `pip install -e .` gives).
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from dualtalk_jax import audio, checkpoint, params as params_lib
from dualtalk_jax.data import preprocess, synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOISE = ("Unable to initialize backend", "Metadata file does not exist", "/orbax/", "orbax")


def cli(module, *args, cwd):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  return subprocess.run([sys.executable, "-m", f"experiments.{module}", *map(str, args)], cwd=cwd,
                        capture_output=True, text=True, env=env, timeout=600)


def one_line_error(r, *fragments):
  """Exit 1, one line on stderr (no traceback), naming every fragment."""
  assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(err) == 1, r.stderr[-3000:]
  for f in fragments:
    assert f in err[0], err[0]
  return err[0]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
  """A user's folder: a tiny checkpoint `ckpt`, a raw split `split` of 2 clips, one conversation."""
  from conftest import perturbed_model

  d = tmp_path_factory.mktemp("user")
  model = perturbed_model()
  checkpoint.save_params(str(d / "ckpt"), params_lib.of(model), model.config)
  synthetic.synthesize(str(d / "split"), 2, seed=0, min_seconds=3, max_seconds=4)
  return d


def test_relative_checkpoint_paths_and_exports_that_record_their_config(user):
  """Items 1, 6, 10: relative paths; exports load without --config; no log noise."""
  s = "split/synth_00000_speaker"
  r = cli("infer", "--checkpoint=ckpt", f"--audio_self={s}1.wav", f"--audio_other={s}2.wav",
          f"--motion_other={s}2.npz", "--output=out/pred.npy", "--window_seconds=2", cwd=user)  # item 3: default overlap
  assert r.returncode == 0, r.stderr[-3000:]
  pred = np.load(user / "out" / "pred.npy")
  assert pred.shape == (audio.num_frames(len(audio.load_audio(user / f"{s}1.wav"))), 56)
  for noise in NOISE:
    assert noise not in r.stderr, r.stderr[-3000:]
  r = cli("convert", "--input=ckpt", "--output=tiny.safetensors", cwd=user)
  assert r.returncode == 0, r.stderr[-3000:]
  r = cli("convert", "--input=tiny.safetensors", "--output=back", cwd=user)  # no --config: recorded
  assert r.returncode == 0, r.stderr[-3000:]
  r = cli("infer", "--checkpoint=back", f"--audio_self={s}1.wav", f"--audio_other={s}2.wav",
          f"--motion_other={s}2.npz", "--output=out/back.npy", "--window_seconds=2", cwd=user)
  assert r.returncode == 0, r.stderr[-3000:]
  np.testing.assert_allclose(np.load(user / "out" / "back.npy"), pred, atol=1e-6)


def test_torch_files_without_a_recorded_config_and_garbage(user):
  """Items 6 and 8: a bare tiny state dict names the config it fits; a non-torch .pth says what it is not."""
  pytest.importorskip("torch")
  from dualtalk_jax.convert import pytorch

  params, cfg, _ = checkpoint.restore_params(str(user / "ckpt"))
  pytorch.write_torch_file(pytorch.params_to_state_dict(params, cfg), str(user / "bare.pth"), overwrite=True)
  assert not (user / "bare.pth.json").exists()
  r = cli("convert", "--input=bare.pth", "--output=bare_ckpt", cwd=user)
  one_line_error(r, "bare.pth records no model config", "--config=tiny")
  assert not (user / "bare_ckpt").exists()
  r = cli("convert", "--input=bare.pth", "--output=bare_ckpt", "--config=tiny", cwd=user)
  assert r.returncode == 0, r.stderr[-3000:]
  (user / "junk.pth").write_bytes(b"this is not a checkpoint at all")
  r = cli("convert", "--input=junk.pth", "--output=junk_ckpt", cwd=user)
  one_line_error(r, "junk.pth", "not a PyTorch file", "zip archive")
  # an export writes its config beside a .pth
  r = cli("convert", "--input=ckpt", "--output=export.pth", cwd=user)
  assert r.returncode == 0, r.stderr[-3000:]
  from dualtalk_jax.config import DualTalkConfig

  assert DualTalkConfig.from_dict(json.loads((user / "export.pth.json").read_text())) == cfg


def test_flags_and_inputs_are_checked_before_loading(user):
  """Items 3, 4, 5, 7: overlap vs window, missing inputs, new output folders, mismatched lengths, stereo."""
  import soundfile as sf

  s = "split/synth_00000_speaker"
  base = [f"--audio_self={s}1.wav", f"--audio_other={s}2.wav", f"--motion_other={s}2.npz", "--output=o/p.npy"]
  # a checkpoint that would fail to load: the flag and input errors must come first
  (user / "broken.pth").write_bytes(b"PK\x03\x04 truncated")
  r = cli("infer", "--checkpoint=broken.pth", *base, "--window_seconds=2", "--overlap_seconds=1.5", cwd=user)
  one_line_error(r, "overlap_seconds must be in [0, window_seconds / 2]")
  r = cli("infer", "--checkpoint=broken.pth", "--audio_self=absent.wav", *base[1:], cwd=user)
  one_line_error(r, "absent.wav: no such target audio")
  # partner motion of 20 frames against 3-4 s of audio (preprocess would reject the pair)
  z = dict(np.load(user / f"{s}2.npz"))
  np.savez(user / "short.npz", exp=z["exp"][:20], pose=z["pose"][:20])
  r = cli("infer", "--checkpoint=ckpt", *base[:2], "--motion_other=short.npz", base[3], cwd=user)
  one_line_error(r, "length mismatch", "short.npz (partner motion) has 20")
  # stereo audio names the flag that exists, and the flag works
  a = audio.load_audio(user / f"{s}1.wav")
  sf.write(user / "stereo.wav", np.stack([a, np.zeros_like(a)], 1), 16000, subtype="FLOAT")
  r = cli("infer", "--checkpoint=ckpt", "--audio_self=stereo.wav", *base[1:], cwd=user)
  one_line_error(r, "stereo.wav: 2 channels", "--channel=K")
  r = cli("infer", "--checkpoint=ckpt", "--audio_self=stereo.wav", *base[1:], "--channel=0", cwd=user)
  assert r.returncode == 0, r.stderr[-3000:]
  assert not [f for f in os.listdir(user / "o") if ".tmp" in f]


def test_evaluate_names_missing_and_short_predictions(user):
  """Items 4, 5, 12: a new output folder is made; missing/short predictions are named; --allow_partial lists them."""
  preds = user / "preds"
  preds.mkdir()
  for c in ("synth_00000", "synth_00001"):
    for k in (1, 2):
      gt = np.load(user / "split" / f"{c}_speaker{k}.npz")
      motion = audio.motion_from_flame(gt)
      np.save(preds / f"{c}_speaker{k}.npy", motion + 0.01)
  os.remove(preds / "synth_00001_speaker2.npy")
  short = np.load(preds / "synth_00000_speaker2.npy")
  np.save(preds / "synth_00000_speaker2.npy", short[:-40])
  r = cli("evaluate", "--data_dir=split", "--pred_dir=preds", "--output=new_folder/m.json", cwd=user)
  err = one_line_error(r, "2 of 4 predictions cannot be scored", "synth_00001_speaker2.npy: missing",
                       "synth_00000_speaker2.npy has")
  assert "--allow_partial" in err
  assert not (user / "new_folder" / "m.json").exists()
  r = cli("evaluate", "--data_dir=split", "--pred_dir=preds", "--output=new_folder/m.json", "--allow_partial",
          "--plot=new_folder/first.png", cwd=user)
  assert r.returncode == 0, r.stderr[-3000:]
  js = json.loads((user / "new_folder" / "m.json").read_text())
  assert sorted(s["file"] for s in js["skipped"]) == ["synth_00000_speaker2.npy", "synth_00001_speaker2.npy"]
  assert "skipped synth_00001_speaker2.npy" in r.stderr and "skipped 2" in r.stdout
  assert (user / "new_folder" / "first.png").read_bytes()[:4] == b"\x89PNG"


def test_failed_runs_leave_nothing(user, tmp_path):
  """Item 9: a failed train leaves no workdir; preprocess of unusable clips leaves no shard files."""
  r = cli("train", "--config=" + str(ROOT / "experiments/configs/dualtalk.py") + ":base", "--workdir=w",
          "--config.data.train_dir=no_such_data", cwd=tmp_path)
  one_line_error(r, "no_such_data/manifest.json: no manifest")
  assert not (tmp_path / "w").exists()
  raw = tmp_path / "raw"
  raw.mkdir()
  np.savez(raw / "c_speaker1.npz", exp=np.zeros((5, 50)), pose=np.zeros((5, 6)))  # partner files missing
  r = cli("preprocess", "--input_dir=raw", "--output_dir=out", cwd=tmp_path)
  assert r.returncode == 1 and "no usable clip" in r.stderr and "missing partner" in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "out").exists()


def test_quickstart_config_never_writes_user_data(user, tmp_path):
  """Item 2: data dirs the user names are used as they are; synthetic data only goes into the workdir."""
  data = tmp_path / "my_data"
  preprocess.preprocess(str(user / "split"), str(data), window_frames=25)
  before = {p.name: p.read_bytes() for p in data.iterdir()}
  r = cli("train", f"--config={ROOT / 'experiments/configs/quickstart.py'}", "--workdir=W2",
          "--config.data.train_dir=my_data", "--config.data.val_dir=my_data", "--config.total_steps=0",
          "--config.data.window_frames=25", "--config.data.thread_count=0", cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert {p.name: p.read_bytes() for p in data.iterdir()} == before
  assert not (tmp_path / "W2" / "synthetic").exists() and not (tmp_path / "W2" / "data").exists()
  cfg = json.loads((tmp_path / "W2" / "config.json").read_text())
  assert cfg["data"]["train_dir"] == "my_data"


def test_progress_writes_lines_on_a_non_tty(tmp_path):
  """Item 10: no carriage-return frames in logs."""
  from dualtalk_jax.progress import Progress

  with open(tmp_path / "log", "w") as f:
    with Progress(100, "train", unit="step", interval=0.0, stream=f) as bar:
      for _ in range(100):
        bar.update()
  text = (tmp_path / "log").read_text()
  assert "\r" not in text and text.count("\n") == 101  # one line per update (interval 0) and the last
  assert text.splitlines()[-1].startswith("train: 100/100 step")


def test_readme_snippet_runs_as_written_from_another_folder(user, tmp_path):
  """Item 13: the README's Python block, after the quickstart, run in a folder that is not the repo."""
  readme = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
  assert blocks
  ws = tmp_path / "quickstart_workdir"
  checkpoint.save_params(str(ws / "checkpoints"), *checkpoint.restore_params(str(user / "ckpt"))[:2])
  synthetic.synthesize(str(ws / "synthetic" / "val"), 1, seed=0, first_index=200, min_seconds=3, max_seconds=4)
  for code in blocks:
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
