"""The evaluator: predicting a raw split, scoring predictions, errors, the in-training path."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dualtalk_jax import audio, checkpoint, params as params_lib
from dualtalk_jax.data import synthetic
from dualtalk_jax.eval import activity, evaluate, metrics, reference
from dualtalk_jax.eval import predict as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
  d = tmp_path_factory.mktemp("split")
  synthetic.synthesize(str(d), 2, seed=0, min_seconds=4, max_seconds=5)  # one metrics bucket
  return str(d)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  from conftest import perturbed_model
  model = perturbed_model()
  path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
  checkpoint.save_params(path, params_lib.of(model), model.config)
  return path, model


def test_predict_split_names_and_lengths(split, tiny_ckpt, tmp_path):
  from dualtalk_jax import sharding

  path, model = tiny_ckpt
  loaded = P.Predictor.from_model(P.load_model(path), mesh=sharding.make_mesh())  # as experiments.evaluate does
  written = evaluate.predict_split(loaded, split, str(tmp_path), batch_size=4)
  names = sorted(os.path.basename(p) for p in written)
  assert names == [f"synth_0000{i}_speaker{k}.npy" for i in range(2) for k in (1, 2)]
  for name in names:
    clip, k = name[:-len("_speaker1.npy")], int(name[-5])
    p = np.load(tmp_path / name)
    n = len(audio.load_audio(os.path.join(split, f"{clip}_speaker{k}.wav")))
    assert p.shape == (audio.num_frames(n), 56) and p.dtype == np.float32
  # the loaded checkpoint, on a mesh of 8 devices, predicts what the model it was saved from predicts
  # on one device
  for name in names:
    clip, k = name[:-len("_speaker1.npy")], int(name[-5])
    c = P.load_inputs(*(os.path.join(split, f"{clip}_speaker{s}.{e}") for s, e in ((k, "wav"), (3 - k, "wav"),
                                                                                  (3 - k, "npz"))))
    np.testing.assert_allclose(np.load(tmp_path / name), P.predict_clips(model, [c])[0], atol=1e-5)
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_scores_match_metric_definitions(split, tmp_path):
  rng = np.random.default_rng(0)
  preds = {}
  for c in ("synth_00000", "synth_00001"):
    for k in (1, 2):
      gt = P.load_motion(os.path.join(split, f"{c}_speaker{k}.npz"))
      preds[(c, k)] = (gt + 0.1 * rng.normal(size=gt.shape))[:len(gt) - (k - 1)].astype(np.float32)  # a frame shorter (within tolerance): cut
      np.save(tmp_path / f"{c}_speaker{k}.npy", preds[(c, k)])
  res = evaluate.score_predictions(str(tmp_path), split)
  assert res["files"] == [f"{c}_speaker{k}" for c in ("synth_00000", "synth_00001") for k in (1, 2)]
  for i, (c, k) in enumerate(sorted(preds)):
    p = preds[(c, k)]
    g = P.load_motion(os.path.join(split, f"{c}_speaker{k}.npz"))[:len(p)]
    o = P.load_motion(os.path.join(split, f"{c}_speaker{3 - k}.npz"))[:len(p)]
    assert res["frames"][i] == len(p)
    for name, lo, hi, _ in metrics.GROUPS:
      x, y, z = (a[:, lo:hi].astype(np.float64) for a in (p, g, o))
      np.testing.assert_allclose(res["per_file"][f"mse_{name}"][i], np.mean((x - y) ** 2), rtol=1e-4)
      np.testing.assert_allclose(res["per_file"][f"fid_{name}"][i], reference.frechet_distance(x, y), rtol=2e-3, atol=1e-5)
      np.testing.assert_allclose(res["per_file"][f"sts_{name}"][i], reference.sts(x, y), rtol=1e-4)
      np.testing.assert_allclose(res["per_file"][f"rpcc_{name}"][i], reference.rpcc(x, y, z), rtol=1e-3, atol=1e-6)
  out = tmp_path / "m" / "metrics.json"
  out.parent.mkdir()
  evaluate.write_results(str(out), res)
  js = json.loads(out.read_text())
  assert list(js) == list(metrics.METRIC_KEYS + metrics.role_keys())
  for k in metrics.METRIC_KEYS:
    assert js[k] == pytest.approx(np.mean(res["per_file"][k]))
  # speaking/listening: the metrics of each file's frames of that role, from both speakers' audio
  for i, (c, k) in enumerate(sorted(preds)):
    p = preds[(c, k)]
    g = P.load_motion(os.path.join(split, f"{c}_speaker{k}.npz"))[:len(p)]
    wav = lambda s: audio.load_audio(os.path.join(split, f"{c}_speaker{s}.wav"))
    speaking, listening = activity.roles(wav(k), wav(3 - k), len(p))
    for role, m in (("speaking", speaking), ("listening", listening)):
      want = np.mean((p[m, :50].astype(np.float64) - g[m, :50]) ** 2) if m.sum() >= metrics.MIN_ROLE_FRAMES else np.nan
      np.testing.assert_allclose(res["per_file"][f"mse_exp_{role}"][i], want, rtol=1e-4)
  assert js["mse_exp_speaking"] == pytest.approx(np.nanmean(res["per_file"]["mse_exp_speaking"]))
  rows = list(csv.DictReader(open(tmp_path / "m" / "metrics_per_file.csv")))
  assert [r["file"] for r in rows] == res["files"]
  assert float(rows[2]["mse_exp"]) == pytest.approx(res["per_file"]["mse_exp"][2])


def _write(path, arr):
  np.save(path, arr)


def test_bad_predictions_name_the_file(split, tmp_path):
  gt = P.load_motion(os.path.join(split, "synth_00000_speaker1.npz"))
  _write(tmp_path / "synth_00000_speaker1.npy", gt[:, :50])
  with pytest.raises(P.InputError, match=r"synth_00000_speaker1\.npy: prediction has shape .*expected \(T, 56\)"):
    evaluate.score_predictions(str(tmp_path), split)
  bad = gt.copy()
  bad[3, 2] = np.nan
  _write(tmp_path / "synth_00000_speaker1.npy", bad)
  with pytest.raises(P.InputError, match=r"synth_00000_speaker1\.npy: prediction contains NaN"):
    evaluate.score_predictions(str(tmp_path), split)
  _write(tmp_path / "synth_00000_speaker1.npy", gt)
  _write(tmp_path / "nosuch_speaker2.npy", gt)
  with pytest.raises(P.InputError, match=r"nosuch_speaker2\.npz: missing \(ground truth for nosuch_speaker2\.npy\)"):
    evaluate.score_predictions(str(tmp_path), split)
  with pytest.raises(P.InputError, match="no such prediction directory"):
    evaluate.score_predictions(str(tmp_path / "absent"), split)


def test_bad_split_inputs_name_the_file(split, tmp_path):
  import shutil
  import soundfile as sf

  d = tmp_path / "split"
  shutil.copytree(split, d)
  os.remove(d / "synth_00001_speaker2.wav")
  with pytest.raises(P.InputError, match=r"synth_00001_speaker2\.wav: missing"):
    evaluate.predict_split(None, str(d), str(tmp_path / "p"))
  sf.write(d / "synth_00001_speaker2.wav", np.zeros(300, np.float32), 16000, subtype="FLOAT")
  with pytest.raises(audio.AudioError, match=r"synth_00001_speaker2\.wav: audio is 300 samples, shorter than one frame"):
    evaluate.predict_split(None, str(d), str(tmp_path / "p"))
  z = dict(np.load(d / "synth_00000_speaker2.npz"))
  z["pose"][5, 1] = np.nan
  np.savez(d / "synth_00000_speaker2.npz", **z)
  with pytest.raises(P.InputError, match=r"synth_00000_speaker2\.npz: NaN or inf values in \['pose'\]"):
    evaluate.predict_split(None, str(d), str(tmp_path / "p"))
  with pytest.raises(P.InputError, match="no such data directory"):
    evaluate.list_clips(str(tmp_path / "absent"))


def test_evaluate_batches_on_preprocessed_split(split, tiny_ckpt, tmp_path):
  """The in-training evaluator: released loss + metrics, predictions with each row's own T."""
  from dualtalk_jax.data import pipeline, preprocess
  _, model = tiny_ckpt
  pre = str(tmp_path / "pre")
  preprocess.preprocess(split, pre, window_frames=50)
  seen = []
  predictor = P.Predictor.from_model(model)

  def predict_fn(batch):
    seen.append(batch["num_frames"].copy())
    return predictor(batch)

  ds = pipeline.make_eval_dataset(pre, batch_size=4, bucket_frames=50, process_index=0, process_count=1)
  out = evaluate.evaluate_batches(predict_fn, ds)
  batch = next(iter(ds))
  np.testing.assert_array_equal(seen[0], audio.num_frames_array(batch["audio_self_lengths"]))
  assert {"val_loss", "val_loss_exp", "val_fid_exp", "val_rpcc_pose"} <= set(out)
  assert all(f"val_{k}" in out for k in metrics.METRIC_KEYS)
  assert out["val_loss"] == pytest.approx(sum(v for k, v in out.items() if k.startswith("val_loss_")))
  # the same rows predicted one by one from arrays give the same metrics
  triples = []
  for i in np.flatnonzero(batch["valid"]):
    n = int(batch["audio_self_lengths"][i])
    pred = P.predict(model, batch["audio_self"][i:i + 1, :n], batch["audio_other"][i:i + 1, :batch["audio_other_lengths"][i]],
                     batch["motion_other"][i:i + 1, :batch["motion_other_lengths"][i]])[0]
    assert len(pred) == audio.num_frames(n)
    triples.append((pred, batch["motion_self"][i, :batch["motion_self_lengths"][i]],
                    batch["motion_other"][i, :batch["motion_other_lengths"][i]]))
  want = metrics.evaluate_files(*zip(*triples))["mean"]
  assert out["val_mse_exp"] == pytest.approx(want["mse_exp"], rel=1e-4)
  assert out["val_fid_jaw"] == pytest.approx(want["fid_jaw"], rel=1e-4)


def test_cli_errors(split, tmp_path):
  run = lambda *a: subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--data_dir={split}", *a,
                                   f"--output={tmp_path / 'x.json'}"], cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"})
  r = run(f"--pred_dir={tmp_path / 'nothing'}")
  assert r.returncode == 1 and "nothing: no such prediction directory" in r.stderr, r.stderr[-1500:]
  r = run()
  assert r.returncode == 1 and "pass --pred_dir" in r.stderr
  assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_cli_predicts_and_scores(split, tiny_ckpt, tmp_path):
  path, _ = tiny_ckpt
  out = tmp_path / "metrics.json"
  r = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--data_dir={split}", f"--checkpoint={path}",
                      f"--output={out}"], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "metrics_predictions")) == [f"synth_0000{i}_speaker{k}.npy" for i in range(2) for k in (1, 2)]
  js = json.loads(out.read_text())
  assert list(js)[:len(metrics.METRIC_KEYS)] == list(metrics.METRIC_KEYS)
  assert all(np.isfinite(js[k]) for k in metrics.METRIC_KEYS) and "mse_jaw_speaking" in js
  assert (tmp_path / "metrics_per_file.csv").exists()
  # scoring the same folder again gives the same numbers
  r = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--data_dir={split}",
                      f"--pred_dir={tmp_path / 'metrics_predictions'}", f"--output={tmp_path / 'again.json'}",
                      f"--compilation_cache_dir={tmp_path / 'xla_cache'}"],
                     cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads((tmp_path / "again.json").read_text()) == js
  assert os.listdir(tmp_path / "xla_cache")  # the metric kernels' executables were kept
