"""wav2vec2 feature cache: content, idempotence, refusal, and cached == frozen-audio training."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualtalk_jax import checkpoint, params as params_lib
from dualtalk_jax.config import CONFIGS
from dualtalk_jax.data import feature_cache, pipeline, preprocess, records, synthetic
from dualtalk_jax.models.dualtalk import DualTalk, freeze_audio_encoders, make_rngs
from dualtalk_jax.train import builder, loop, step as step_lib
from conftest import run_config

W = 25
CFG = CONFIGS["tiny"]


def _params(seed, shared):
  p = params_lib.of(DualTalk(CFG, rngs=make_rngs(seed)))
  if shared:  # both encoders from one pretrained wav2vec2, as usual
    p["joint_encoder"]["audio_encoder2"] = p["joint_encoder"]["audio_encoder1"]
  return jax.tree.map(np.asarray, p)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("fcache")
  raw = str(root / "raw")
  synthetic.synthesize(raw, 3, 0, min_seconds=3.0, max_seconds=5.0)
  short = synthetic.make_clip(0, 99, min_seconds=1.2, max_seconds=1.3)  # cut to 20 frames: no training window
  short["audio"] = [a[:20 * 640] for a in short["audio"]]
  short["npz"] = [{k: v[:20] for k, v in d.items()} for d in short["npz"]]
  synthetic.write_clip(raw, "short", short)
  ckpts = {}
  for name, seed, shared in (("a", 0, True), ("b", 1, True), ("sep", 2, False)):
    params = _params(seed, shared)
    ckpts[name] = (checkpoint.save_params(str(root / f"ckpt_{name}"), params, CFG), params)
  plain = str(root / "plain")
  preprocess.preprocess(raw, plain, num_shards=2, window_frames=W)
  cached = str(root / "cached")
  m = preprocess.preprocess(raw, cached, num_shards=2, window_frames=W, cache_wav2vec2=ckpts["a"][0])
  return {"root": root, "raw": raw, "ckpts": ckpts, "plain": plain, "cached": cached, "manifest": m}


def _encoder_model(params):
  model = DualTalk(CFG, rngs=make_rngs(9))
  params_lib.load(model, params)
  model.eval()
  return model


def _check_content(data_dir, params):
  """Every cached window equals JointEncoder.encode_audio of its audio (eval mode)."""
  m = records.load_manifest(data_dir)
  fc = feature_cache.cache_entry(data_dir, m, W)
  clips = records.open_records(data_dir, m)
  feats = feature_cache.reader(data_dir, m)
  je = _encoder_model(params).joint_encoder
  checked = 0
  for c in m["clips"]:
    clip, f = records.decode_clip(clips[c["record_index"]]), feats(c["record_index"])
    n = records.window_count(c["frames"], c["audio_samples"], W)
    assert f["name"] == c["name"] and f["frames"] == c["frames"]
    np.testing.assert_array_equal(f["motion_1"], clip["motion_1"])
    want_keys = {"motion_1", "motion_2"} | ({"feat_1", "feat_2"} if fc["shared"] else
                                            {"feat1_1", "feat1_2", "feat2_1", "feat2_2"})
    assert set(f) - {"name", "frames"} == want_keys
    for s in (1, 2):
      for k in want_keys - {"motion_1", "motion_2"}:
        assert f[k].shape == (n, W, CFG.wav2vec2.hidden_size) and f[k].dtype == np.float32
      if not n:
        continue
      a = jnp.asarray(clip[f"audio_{s}"][:n * W * 640].reshape(n, W * 640))
      kw = dict(audio_self_lengths=jnp.full((n,), W * 640), audio_other_lengths=jnp.full((n,), W * 640),
                num_frames=jnp.full((n,), W), max_frames=W)
      h1, h2 = je.encode_audio(a, a, **kw)
      k1, k2 = (f"feat_{s}", f"feat_{s}") if fc["shared"] else (f"feat1_{s}", f"feat2_{s}")
      np.testing.assert_allclose(f[k1], h1, atol=1e-5, rtol=0)
      np.testing.assert_allclose(f[k2], h2, atol=1e-5, rtol=0)
      checked += n
  assert checked > 0
  return fc


def _train_ds(data_dir, **kw):
  return pipeline.make_train_dataset(data_dir, window_frames=W, batch_size=4, seed=3, num_epochs=1, process_index=0,
                                     process_count=1, clips_per_block=2, **kw)


def test_cache_round_trip_shared_and_separate_encoders(world):
  ck_a, p_a = world["ckpts"]["a"]
  fc = _check_content(world["cached"], p_a)
  assert fc["shared"] and fc["source"] == ck_a and fc["source_kind"] == "dualtalk_checkpoint"
  assert fc["fingerprint"] == feature_cache.run_fingerprints(p_a, CFG.wav2vec2)[0]
  assert fc["window_frames"] == W and fc["dtype"] == "float32" and fc["hidden_size"] == 32
  assert fc["wav2vec2_config"]["num_hidden_layers"] == CFG.wav2vec2.num_hidden_layers
  assert [s["clip_shard"] for s in fc["shards"]] == [s["file"] for s in world["manifest"]["shards"]]
  # The clip shards are byte-identical to those of a run without the cache.
  for s in world["manifest"]["shards"]:
    with open(os.path.join(world["plain"], s["file"]), "rb") as f1, open(os.path.join(world["cached"], s["file"]), "rb") as f2:
      assert f1.read() == f2.read()
  assert json.load(open(os.path.join(world["plain"], records.MANIFEST)))["feature_cache"] is None

  sep = str(world["root"] / "sep")
  ck_s, p_s = world["ckpts"]["sep"]
  preprocess.preprocess(world["raw"], sep, window_frames=W, cache_wav2vec2=ck_s, cache_batch_size=3)
  fc = _check_content(sep, p_s)
  assert not fc["shared"] and fc["encoder_fingerprints"][0] != fc["encoder_fingerprints"][1]

  # The pipeline: same windows, motion and order as the audio pipeline; features, no audio.
  for data_dir in (world["cached"], sep):
    fc = feature_cache.cache_entry(data_dir, records.load_manifest(data_dir))
    reader = feature_cache.reader(data_dir, records.load_manifest(data_dir))
    audio_batches, feat_batches = list(_train_ds(data_dir)), list(_train_ds(data_dir, feature_cache=True))
    assert len(audio_batches) == len(feat_batches) > 0
    for ba, bf in zip(audio_batches, feat_batches):
      assert set(bf) == set(feature_cache.BATCH_NDIM) | {"clip_id", "window", "target"}
      for k in ("clip_id", "window", "target", "motion_self", "motion_other", "motion_other_lengths", "num_frames"):
        np.testing.assert_array_equal(ba[k], bf[k])
      for i, (cid, win, t) in enumerate(zip(bf["clip_id"], bf["window"], bf["target"])):
        k_s, k_o = feature_cache.record_keys(fc["shared"], int(t))
        rec = reader(int(cid))
        np.testing.assert_array_equal(bf["features_self"][i], rec[k_s][win])
        np.testing.assert_array_equal(bf["features_other"][i], rec[k_o][win])
  with pytest.raises(records.DataError, match="no wav2vec2 feature cache"):
    _train_ds(world["plain"], feature_cache=True)
  with pytest.raises(records.DataError, match="windows of 25 frames, training uses 20"):
    pipeline.make_train_dataset(world["cached"], window_frames=20, batch_size=2, process_index=0, process_count=1,
                                feature_cache=True)


def test_model_with_cached_features_equals_frozen_model_on_audio(world):
  _, p_a = world["ckpts"]["a"]
  ba = next(iter(_train_ds(world["cached"])))
  bf = next(iter(_train_ds(world["cached"], feature_cache=True)))
  np.testing.assert_array_equal(ba["clip_id"], bf["clip_id"])
  model = _encoder_model(p_a)
  model.train()
  freeze_audio_encoders(model)
  assert model.joint_encoder.audio_encoder1.deterministic and not model.interaction_module.dropout.deterministic
  fwd = nnx.jit(step_lib.forward, static_argnames=("max_frames", "feature_cache"))
  outs = []
  for b, cached in ((ba, False), (bf, True)):  # the audio step, and the cached one (`DualTalk.from_features`)
    nnx.reseed(model, dropout=7)  # the same dropout draws in the rest of the model
    outs.append(np.asarray(fwd(model, {k: jnp.asarray(b[k]) for k in step_lib.batch_ndim(cached)}, max_frames=W,
                               feature_cache=cached)))
  assert np.abs(outs[0] - outs[1]).max() <= 1e-5
  nnx.reseed(model, dropout=8)
  again = fwd(model, {k: jnp.asarray(bf[k]) for k in feature_cache.BATCH_NDIM}, max_frames=W, feature_cache=True)
  assert np.abs(np.asarray(again) - outs[1]).max() > 1e-3


def _config(data_dir, ckpt, **overrides):
  # the model of the checkpoints made here (CFG); one compile for one device: fast
  return run_config(data_dir, window_frames=W, **{
      "model": "tiny", "interaction_residual": False, "feature_projection_layer_norm": True, "data.clips_per_block": 2,
      "init_checkpoint": ckpt,
      "optim.freeze_feature_extractor": True, "total_steps": 2, "checkpoint_every": 100, "mesh.num_devices": 1,
      **overrides})


def test_cached_training_equals_frozen_audio_training(world, tmp_path):
  """The training loop on cached features vs the frozen-audio train step on the same batches."""
  ck_a, p_a = world["ckpts"]["a"]
  config = _config(world["cached"], ck_a, **{"data.feature_cache": True})
  out = loop.train_and_evaluate(config, str(tmp_path / "cache"))
  m_c, p_cache, opt_c = out["metrics"], step_lib.host_params(out["state"]), out["state"]["opt_state"]

  # Reference: 2 steps of the frozen wav2vec2 train step on the audio batches the loop read.
  model_def = step_lib.ModelDef(CFG, frozen_encoders=True)
  assert builder.optim_config(config).freeze_wav2vec2
  tx = step_lib.make_optimizer(builder.optim_config(config), model_def.abstract_params)
  state = jax.jit(lambda p: step_lib.train_state(tx, p))(p_a)
  train_step = step_lib.make_train_step(model_def, tx, seed=config.seed)
  it = iter(pipeline.make_train_dataset(world["cached"], window_frames=W, batch_size=config.batch_size, seed=config.seed,
                                        num_epochs=None, clips_per_block=config.data.clips_per_block, process_index=0,
                                        process_count=1))
  for _ in range(2):
    state, m_a = train_step(state, {k: v for k, v in next(it).items() if k in step_lib.BATCH_NDIM})
  p_audio = step_lib.host_params(state)

  assert m_c["step"] == 2
  np.testing.assert_allclose(m_c["loss"], float(m_a["loss"]), rtol=1e-5)
  fa, fc, f0 = (params_lib.flatten(t) for t in (p_audio, p_cache, p_a))
  assert fa.keys() == fc.keys() == f0.keys()
  moved = 0
  for k in fa:
    if k.split(".")[1].startswith("audio_encoder"):  # frozen: untouched in both runs
      np.testing.assert_array_equal(fa[k], f0[k], err_msg=str(k))
      np.testing.assert_array_equal(fc[k], f0[k], err_msg=str(k))
    else:
      moved += not np.array_equal(fa[k], f0[k])
      tol = 4e-3 if k.endswith(".k_proj.bias") else 3e-4  # Adam on ~zero gradients: see conftest.assert_params
      np.testing.assert_allclose(fc[k], fa[k], atol=tol, rtol=0, err_msg=str(k))
  assert moved > 0
  # No optimizer moments for the frozen encoders.
  n_moments = sum(x.size for x in jax.tree.leaves(opt_c))
  n_train = sum(v.size for k, v in fc.items() if not k.split(".")[1].startswith("audio_encoder"))
  assert n_train * 2 <= n_moments < n_train * 2 + 100
  assert sum(x.size for x in jax.tree.leaves(state["opt_state"])) == n_moments


def test_training_refuses_a_cache_of_other_weights_or_none(world, tmp_path):
  ck_b, p_b = world["ckpts"]["b"]
  fp_b = feature_cache.run_fingerprints(p_b, CFG.wav2vec2)[0]
  fp_a = world["manifest"]["feature_cache"]["fingerprint"]
  with pytest.raises(records.DataError) as e:
    loop.train_and_evaluate(_config(world["cached"], ck_b, **{"data.feature_cache": True}), str(tmp_path / "x"))
  msg = str(e.value)
  assert world["cached"] in msg and fp_a in msg and fp_b in msg and "other encoder weights" in msg
  with pytest.raises(records.DataError, match="no wav2vec2 feature cache"):
    loop.train_and_evaluate(_config(world["plain"], ck_b, **{"data.feature_cache": True}), str(tmp_path / "y"))
  with pytest.raises(preprocess.PreprocessError, match="neither a dualtalk-jax checkpoint"):
    preprocess.preprocess(world["raw"], str(tmp_path / "z"), window_frames=W, cache_wav2vec2=str(tmp_path))


def test_hf_wav2vec2_source_matches_a_run_initialised_from_it(world, tmp_path):
  from safetensors.numpy import save_file

  from dualtalk_jax.convert import hf_wav2vec2, table
  from dualtalk_jax.models.wav2vec2 import Wav2Vec2Model

  hf = tmp_path / "hf"
  hf.mkdir()
  enc = Wav2Vec2Model(CFG.wav2vec2, rngs=nnx.Rngs(params=5, dropout=1))
  sd = {k: np.ascontiguousarray(v) for k, v in table.jax_to_torch(params_lib.of(enc)).items() if k != "masked_spec_embed"}
  save_file(sd, str(hf / "model.safetensors"))
  (hf / "config.json").write_text(json.dumps(CFG.wav2vec2.to_hf_dict()))
  out = str(tmp_path / "out")
  fc = preprocess.preprocess(world["raw"], out, window_frames=W, cache_wav2vec2=str(hf))["feature_cache"]
  assert fc["source_kind"] == "hf_wav2vec2" and fc["shared"] and fc["source_step"] is None
  # A run with pretrained_wav2vec2 = that dir (its masked_spec_embed is its own random init) matches.
  model = DualTalk(CFG, rngs=make_rngs(11))
  hf_wav2vec2.init_dualtalk_encoders(model, str(hf))
  params = jax.tree.map(np.asarray, params_lib.of(model))
  assert feature_cache.check_run_weights(out, params, CFG.wav2vec2, W)["fingerprint"] == fc["fingerprint"]
  _check_content(out, params)


def _feature_files(d):
  return {n: os.stat(os.path.join(d, n)).st_mtime_ns for n in sorted(os.listdir(d)) if n.startswith("features-")}


def test_idempotent_rerun_and_rebuild_on_other_weights(world, tmp_path, monkeypatch):
  import shutil

  raw = str(tmp_path / "raw")
  shutil.copytree(world["raw"], raw)
  out = str(tmp_path / "out")
  ck_a, ck_b = world["ckpts"]["a"][0], world["ckpts"]["b"][0]
  m1 = preprocess.preprocess(raw, out, num_shards=2, window_frames=W, cache_wav2vec2=ck_a)
  before = _feature_files(out)
  assert len(before) == 4

  def no_encoding(*a, **k):
    raise AssertionError("an up-to-date cache was rebuilt")

  with monkeypatch.context() as mp:
    mp.setattr(feature_cache, "make_encode_fn", no_encoding)
    m2 = preprocess.preprocess(raw, out, num_shards=2, window_frames=W, cache_wav2vec2=ck_a)
    assert m2["feature_cache"] == m1["feature_cache"] and _feature_files(out) == before
    # A run without the flag keeps a cache that is still valid.
    m3 = preprocess.preprocess(raw, out, num_shards=2, window_frames=W)
    assert m3["feature_cache"] == m1["feature_cache"] and _feature_files(out) == before

  m4 = preprocess.preprocess(raw, out, num_shards=2, window_frames=W, cache_wav2vec2=ck_b)
  assert m4["feature_cache"]["fingerprint"] != m1["feature_cache"]["fingerprint"]
  after = _feature_files(out)
  assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)
  _check_content(out, world["ckpts"]["b"][1])

  # An input change rebuilds its clip shard; a run without the flag then drops the cache.
  wav = sorted(f for f in os.listdir(raw) if f.endswith(".wav"))[0]
  os.utime(os.path.join(raw, wav), ns=(1, 1))
  m5 = preprocess.preprocess(raw, out, num_shards=2, window_frames=W)
  assert m5["feature_cache"] is None
  m6 = preprocess.preprocess(raw, out, num_shards=2, window_frames=W, cache_wav2vec2=ck_b)
  rebuilt = _feature_files(out)
  assert sum(rebuilt[k] != after[k] for k in after) == 2  # the changed shard and its sidecar
  assert m6["feature_cache"]["fingerprint"] == m4["feature_cache"]["fingerprint"]
