"""Preprocessing: exact records, every rejection reason, strict mode, idempotence, atomicity."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, SHARED
from dualtalk_jax import audio
from dualtalk_jax.data import preprocess, records, synthetic

DEMO = SHARED / "samples" / "dualtalk_demo"
W = 50  # Small training window so short synthetic clips have several windows.


def _synth(d, n, seed=0, lo=3.0, hi=5.0):
  return synthetic.synthesize(str(d), n, seed=seed, min_seconds=lo, max_seconds=hi)


def _read_all(out, manifest):
  src = records.open_records(str(out), manifest)
  return {c["name"]: records.decode_clip(src[c["record_index"]]) for c in manifest["clips"]}


def test_records_round_trip_exactly(tmp_path):
  names = _synth(tmp_path / "raw", 3)
  m = preprocess.preprocess(str(tmp_path / "raw"), str(tmp_path / "out"), num_shards=2,
                            window_frames=W)
  assert m["counts"]["clips_written"] == 3 and not m["skipped"]
  got = _read_all(tmp_path / "out", m)
  for name in names:
    rec = got[name]
    t = rec["frames"]
    for s in (1, 2):
      x = audio.normalize(audio.load_audio(tmp_path / "raw" / f"{name}_speaker{s}.wav"))
      mo = audio.motion_from_flame(np.load(tmp_path / "raw" / f"{name}_speaker{s}.npz"))
      assert mo.shape[0] == t  # Synthetic audio has T*640 + r samples: nothing to trim.
      np.testing.assert_array_equal(rec[f"audio_{s}"], x[:t * 640])
      np.testing.assert_array_equal(rec[f"motion_{s}"], mo)
      assert rec[f"audio_{s}"].dtype == np.float32
  entry = m["clips"][0]
  assert entry["audio_samples"] == [got[entry["name"]]["audio_1"].size,
                                    got[entry["name"]]["audio_2"].size]
  assert m["counts"]["training_windows"] == sum(
      records.window_count(c["frames"], c["audio_samples"], W) for c in m["clips"])
  assert m["hours"] == pytest.approx(sum(c["frames"] for c in m["clips"]) / 25 / 3600)


def _write_pair(d, name, a1, a2, m1, m2, rate1=16000, subtype="FLOAT"):
  for s, (a, mo) in enumerate(((a1, m1), (a2, m2)), 1):
    if a is not None:
      sf.write(d / f"{name}_speaker{s}.wav", a, rate1 if s == 1 else 16000, subtype=subtype)
    if mo is not None:
      np.savez(d / f"{name}_speaker{s}.npz", **mo)


def _bad_folder(d):
  """One good clip and one clip per problem; returns {clip: expected code or note}."""
  d.mkdir()
  _synth(d, 1)  # synth_00000: good
  c = synthetic.make_clip(0, 7, min_seconds=4, max_seconds=4.5)
  a1, a2 = c["audio"]
  n1, n2 = c["npz"]
  t = n1["exp"].shape[0]
  _write_pair(d, "missing", a1, a2, None, n2)
  _write_pair(d, "junk", a1, a2, n1, n2)
  (d / "junk_speaker2.wav").write_bytes(b"RIFF....not really a wav file" * 50)
  _write_pair(d, "trunc", a1, a2, n1, n2)
  raw = (d / "trunc_speaker1.wav").read_bytes()
  (d / "trunc_speaker1.wav").write_bytes(raw[:len(raw) // 2])
  _write_pair(d, "stereo", np.stack([a1, a1], 1), a2, n1, n2)
  from scipy import signal
  a1_44k = signal.resample_poly(a1.astype(np.float64), 441, 160).astype(np.float32)
  _write_pair(d, "rate44k", a1_44k, a2, n1, n2, rate1=44100)
  _write_pair(d, "pcm16", a1, a2, n1, n2, subtype="PCM_16")
  nan = dict(n2, pose=n2["pose"].copy())
  nan["pose"][3, 1] = np.nan
  _write_pair(d, "nan", a1, a2, n1, nan)
  _write_pair(d, "noexp", a1, a2, {k: v for k, v in n1.items() if k != "exp"}, n2)
  _write_pair(d, "width", a1, a2, dict(n1, exp=n1["exp"][:, :40]), n2)
  _write_pair(d, "long", a1, a2, {k: v[:t - 5] for k, v in n1.items()},
              {k: v[:t - 5] for k, v in n2.items()})
  _write_pair(d, "trimok", a1, a2, {k: np.concatenate([v, v[-1:]]) for k, v in n1.items()},
              n2)
  (d / "brokenzip_speaker1.npz").write_bytes(b"PK\x03\x04 broken")
  _write_pair(d, "brokenzip", a1, a2, None, n2)
  (d / "README.txt").write_text("not a clip")
  short = synthetic.make_clip(1, 0, min_seconds=1.0, max_seconds=1.5)
  _write_pair(d, "short", *short["audio"], *short["npz"])
  return {"missing": "missing_files", "junk": "unreadable_audio", "trunc": "truncated_audio",
          "stereo": "stereo_audio", "nan": "nonfinite_motion", "noexp": "bad_motion",
          "width": "bad_motion", "long": "length_mismatch", "brokenzip": "unreadable_motion"}


def test_every_bad_input_has_its_reason(tmp_path):
  want = _bad_folder(tmp_path / "raw")
  m = preprocess.preprocess(str(tmp_path / "raw"), str(tmp_path / "out"), num_shards=3,
                            window_frames=W)
  got = {s["clip"]: s for s in m["skipped"]}
  assert {k: v["code"] for k, v in got.items()} == want
  assert got["missing"]["reason"] == "missing partner motion: missing_speaker1.npz not found"
  assert "junk_speaker2.wav" in got["junk"]["reason"]
  assert "trunc_speaker1.wav: truncated" in got["trunc"]["reason"]
  assert "stereo_speaker1.wav: 2 channels" in got["stereo"]["reason"]
  assert "nan_speaker2.npz" in got["nan"]["reason"] and "'pose'" in got["nan"]["reason"]
  assert "noexp_speaker1.npz: missing key 'exp'" in got["noexp"]["reason"]
  assert "'exp' has shape" in got["width"]["reason"]
  assert "tolerance 1" in got["long"]["reason"]
  kept = {c["name"]: c for c in m["clips"]}
  assert set(kept) == {"synth_00000", "rate44k", "pcm16", "trimok", "short"}
  assert any(n.startswith("resampled: speaker1 audio from 44100 Hz") for n in
             kept["rate44k"]["notes"])
  assert kept["rate44k"]["orig_rates"] == [44100, 16000]
  assert any(n.startswith("trimmed:") for n in kept["trimok"]["notes"])
  assert any(n.startswith("short_for_training") for n in kept["short"]["notes"])
  assert not kept["synth_00000"]["notes"] and not kept["pcm16"]["notes"]
  assert m["counts"]["short_for_training"] == 1
  assert m["counts"]["clips_found"] == len(want) + 5
  assert m["unrecognized_files"] == ["README.txt"]
  with open(tmp_path / "out" / "manifest.json") as f:
    assert json.load(f)["skipped"] == m["skipped"]


def test_strict_is_fatal(tmp_path):
  _bad_folder(tmp_path / "raw")
  with pytest.raises(preprocess.PreprocessError, match=r"belong to no clip: \['README.txt'\]"):
    preprocess.preprocess(str(tmp_path / "raw"), str(tmp_path / "out"), strict=True,
                          window_frames=W)
  (tmp_path / "raw" / "README.txt").unlink()
  with pytest.raises(preprocess.PreprocessError, match=r"\[\w+\] .*"):
    preprocess.preprocess(str(tmp_path / "raw"), str(tmp_path / "out"), strict=True,
                          window_frames=W)
  assert not (tmp_path / "out" / "manifest.json").exists()
  r = subprocess.run([sys.executable, "-m", "experiments.preprocess",
                      f"--input_dir={tmp_path / 'raw'}", f"--output_dir={tmp_path / 'out2'}",
                      "--strict", f"--window_frames={W}", "--noprogress"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert "preprocess failed: [" in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "out2" / "manifest.json").exists()
  # Strict after a non-strict run: the reused shards' skipped clips are still fatal.
  preprocess.preprocess(str(tmp_path / "raw"), str(tmp_path / "out3"), window_frames=W)
  first_problem = r"\[(missing_files|unreadable_motion)\] "  # brokenzip or missing, by name.
  with pytest.raises(preprocess.PreprocessError, match=first_problem):
    preprocess.preprocess(str(tmp_path / "raw"), str(tmp_path / "out3"), strict=True,
                          window_frames=W)


def _shard_stats(out):
  return {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in sorted(os.listdir(out))
          if p.startswith("shard-")}


def test_idempotent_and_incremental(tmp_path):
  _synth(tmp_path / "raw", 4)
  out = str(tmp_path / "out")
  m1 = preprocess.preprocess(str(tmp_path / "raw"), out, num_shards=2, window_frames=W)
  before = _shard_stats(out)
  m2 = preprocess.preprocess(str(tmp_path / "raw"), out, num_shards=2, window_frames=W)
  assert _shard_stats(out) == before and m2 == m1
  # Touch one input: only its shard is rebuilt.
  p = tmp_path / "raw" / "synth_00003_speaker2.npz"
  os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9))
  preprocess.preprocess(str(tmp_path / "raw"), out, num_shards=2, window_frames=W)
  after = _shard_stats(out)
  assert after["shard-00000-of-00002.array_record"] == before["shard-00000-of-00002.array_record"]
  assert after["shard-00001-of-00002.array_record"] != before["shard-00001-of-00002.array_record"]
  # A different shard count replaces the old layout.
  m3 = preprocess.preprocess(str(tmp_path / "raw"), out, num_shards=3, window_frames=W)
  assert sorted(_shard_stats(out)) == sorted(
      [records.shard_name(i, 3) for i in range(3)] +
      [records.shard_name(i, 3) + ".json" for i in range(3)])
  assert [c["name"] for c in m3["clips"]] == [c["name"] for c in m1["clips"]]


def test_crash_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
  _synth(tmp_path / "raw", 4)
  out = tmp_path / "out"
  real = preprocess.process_clip
  calls = []

  def flaky(*a, **k):
    calls.append(a[1])
    if len(calls) == 4:  # Dies in the middle of the second shard.
      raise KeyboardInterrupt
    return real(*a, **k)

  monkeypatch.setattr(preprocess, "process_clip", flaky)
  with pytest.raises(KeyboardInterrupt):
    preprocess.preprocess(str(tmp_path / "raw"), str(out), num_shards=2, window_frames=W)
  files = sorted(os.listdir(out))
  assert "manifest.json" not in files
  assert not [f for f in files if f.startswith(".tmp-")]
  assert files == ["shard-00000-of-00002.array_record", "shard-00000-of-00002.array_record.json"]
  with pytest.raises(records.DataError, match="no manifest"):
    records.load_manifest(str(out))
  monkeypatch.setattr(preprocess, "process_clip", real)
  first = _shard_stats(out)
  m = preprocess.preprocess(str(tmp_path / "raw"), str(out), num_shards=2, window_frames=W)
  assert m["counts"]["clips_written"] == 4
  assert _shard_stats(out)["shard-00000-of-00002.array_record"] == \
      first["shard-00000-of-00002.array_record"]


def test_workers_give_identical_output(tmp_path):
  _synth(tmp_path / "raw", 3)
  m1 = preprocess.preprocess(str(tmp_path / "raw"), str(tmp_path / "a"), num_shards=2,
                             window_frames=W, workers=1)
  m2 = preprocess.preprocess(str(tmp_path / "raw"), str(tmp_path / "b"), num_shards=2,
                             window_frames=W, workers=2)
  assert m1["clips"] == m2["clips"]
  for s in m1["shards"]:
    assert (tmp_path / "a" / s["file"]).read_bytes() == (tmp_path / "b" / s["file"]).read_bytes()


def test_loader_refuses_bad_data(tmp_path):
  _synth(tmp_path / "raw", 1)
  out = tmp_path / "out"
  m = preprocess.preprocess(str(tmp_path / "raw"), str(out), window_frames=W)
  shard = out / m["shards"][0]["file"]
  with open(shard, "ab") as f:
    f.write(b"x")
  with pytest.raises(records.DataError, match=f"{shard.name}: .* bytes, the manifest says"):
    records.load_manifest(str(out))
  m["preprocessing_version"] = "0"
  records.write_json(str(out / "manifest.json"), m)
  with pytest.raises(records.DataError, match="manifest.json: preprocessing version '0'"):
    records.load_manifest(str(out))


@pytest.mark.skipif(not DEMO.exists(), reason="../shared samples absent")
def test_demo_sample(tmp_path):
  raw = tmp_path / "demo"
  shutil.copytree(DEMO, raw)
  # Its only clip lacks speaker1's motion: no usable clip, an error, and nothing written.
  with pytest.raises(preprocess.PreprocessError,
                     match="no usable clip, nothing written: missing partner motion: UbjUDM1MiGE_sub_video_72_speaker1.npz"):
    preprocess.preprocess(str(raw), str(tmp_path / "out1"), window_frames=200)
  assert not (tmp_path / "out1").exists()
  # With a stand-in speaker1 motion of the same length the clip goes through.
  n2 = dict(np.load(raw / "UbjUDM1MiGE_sub_video_72_speaker2.npz"))
  np.savez(raw / "UbjUDM1MiGE_sub_video_72_speaker1.npz", **n2)
  m = preprocess.preprocess(str(raw), str(tmp_path / "out2"), window_frames=200)
  (c,) = m["clips"]
  assert c["frames"] == 587 and c["audio_samples"] == [375680, 375680]  # 375808 cut to 587*640
  assert records.window_count(c["frames"], c["audio_samples"], 200) == 2
  rec = _read_all(tmp_path / "out2", m)["UbjUDM1MiGE_sub_video_72"]
  x = audio.normalize(audio.load_audio(raw / "UbjUDM1MiGE_sub_video_72_speaker1.wav"))
  np.testing.assert_array_equal(rec["audio_1"], x[:587 * 640])
  # The pipeline reads it: 2 windows x 2 directions, and the whole clip for evaluation.
  from dualtalk_jax.data import pipeline
  (b,) = list(pipeline.make_train_dataset(str(tmp_path / "out2"), window_frames=200,
                                          batch_size=4, num_epochs=1, shuffle=False,
                                          process_index=0, process_count=1))
  assert b["audio_self"].shape == (4, 128000) and list(b["window"]) == [0, 0, 1, 1]
  np.testing.assert_array_equal(b["audio_self"][2], x[128000:256000])
  (e,) = list(pipeline.make_eval_dataset(str(tmp_path / "out2"), batch_size=2,
                                         process_index=0, process_count=1))
  assert list(e["num_frames"]) == [587, 587] and list(e["audio_self_lengths"]) == [375680] * 2
  assert e["motion_self"].shape == (2, 750, 56)  # Padded to a multiple of 250 frames.
