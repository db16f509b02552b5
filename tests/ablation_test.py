"""The paper's Tab. 6 ablations (`DualTalkConfig.ablation`): param trees, removed inputs, MFCCs, refusals."""

import dataclasses

import numpy as np
import pytest
import scipy.fft

from dualtalk_jax import audio, checkpoint, params as params_lib
from dualtalk_jax.config import ABLATIONS, CONFIGS, DualTalkConfig, get_model_config
from dualtalk_jax.convert import pytorch, table
from dualtalk_jax.models import mfcc
from dualtalk_jax.eval.predict import predict
from dualtalk_jax.models.dualtalk import DualTalk, abstract_model, make_rngs

TINY = CONFIGS["tiny"]

# Removed module (dotted param path prefix) per ablation.
REMOVED = {
    "no_partner_speech": ["joint_encoder.audio_encoder2"],
    "no_partner_motion": ["joint_encoder.blendshape_encoder"],
    "mfcc": ["joint_encoder.audio_encoder1", "joint_encoder.audio_encoder2"],
    "no_temporal_enhancer": ["temporal_enhancer"],
    "no_interaction": ["interaction_module"],
    "no_modulation": ["synthesis_module.modulation_layer"],
}


def param_shapes(cfg):
  return {p: tuple(v.shape) for p, v in params_lib.flatten(params_lib.of(abstract_model(cfg))).items()}


def param_paths(cfg):
  return set(param_shapes(cfg))


def test_every_ablation_removes_exactly_its_module():
  full = param_paths(TINY)
  assert set(REMOVED) == set(ABLATIONS) - {""}
  for ab, prefixes in REMOVED.items():
    paths = param_paths(dataclasses.replace(TINY, ablation=ab))
    gone = full - paths
    assert gone and all(any(p.startswith(x + ".") for x in prefixes) for p in gone), ab
    assert not any(p.startswith(x + ".") for p in paths for x in prefixes), ab
    if ab == "mfcc":  # the projection takes 13 MFCCs instead of the wav2vec2 width
      shapes = param_shapes(dataclasses.replace(TINY, ablation=ab))
      assert shapes["joint_encoder.audio_projection.kernel"] == (mfcc.NUM_COEFFS, TINY.feature_dim)
      assert paths - full == set()
    else:
      assert paths <= full, ab  # nothing added


def test_unknown_ablation_is_an_error():
  with pytest.raises(ValueError, match="unknown ablation 'no_lstm'"):
    dataclasses.replace(TINY, ablation="no_lstm")
  assert DualTalkConfig.from_dict(TINY.to_dict()).ablation == ""  # old model_config.json files: released


def _inputs(seed):
  rng = np.random.default_rng(seed)
  a = np.stack([audio.normalize(rng.normal(size=12800).astype(np.float32)) for _ in range(2)])
  b = np.stack([audio.normalize(rng.normal(size=12800).astype(np.float32)) for _ in range(2)])
  m = rng.normal(size=(2, 20, 56)).astype(np.float32)
  return a, b, m


@pytest.fixture(scope="module")
def models():
  out = {}
  for ab in ("", "no_partner_speech", "no_partner_motion"):
    model = DualTalk(dataclasses.replace(TINY, ablation=ab), rngs=make_rngs(0))
    model.eval()
    out[ab] = model
  return out


def test_removed_inputs_are_never_read(models):
  a, b, m = _inputs(0)
  _, b2, m2 = _inputs(1)
  full = models[""]
  assert np.abs(np.asarray(predict(full, a, b, m)) - np.asarray(predict(full, a, b2, m))).max() > 1e-4
  assert np.abs(np.asarray(predict(full, a, b, m)) - np.asarray(predict(full, a, b, m2))).max() > 1e-4
  speech = models["no_partner_speech"]
  np.testing.assert_array_equal(np.asarray(predict(speech, a, b, m)), np.asarray(predict(speech, a, b2, m)))
  assert np.abs(np.asarray(predict(speech, a, b, m)) - np.asarray(predict(speech, a, b, m2))).max() > 1e-4
  motion = models["no_partner_motion"]
  ref = np.asarray(predict(motion, a, b, m))
  np.testing.assert_array_equal(ref, np.asarray(predict(motion, a, b, m2)))
  np.testing.assert_array_equal(ref, np.asarray(predict(motion, a, b, None)))  # runs without partner motion
  assert np.abs(ref - np.asarray(predict(motion, a, b2, m))).max() > 1e-4


def test_models_that_need_partner_motion_refuse_none(models):
  a, b, _ = _inputs(0)
  with pytest.raises(ValueError, match="needs the partner's motion"):
    predict(models[""], a, b, None)


def test_mfcc_against_scipy_dct_and_padding():
  rng = np.random.default_rng(0)
  x = rng.normal(size=16000).astype(np.float32)
  got = np.asarray(mfcc.mfcc(x[None]))[0]
  assert got.shape == (1 + (16000 - 400) // 160, mfcc.NUM_COEFFS)
  # reference in float64: framing, Hann window, |rfft|^2, the mel bank, scipy's orthonormal DCT-II
  window, fb, _ = mfcc._constants()
  frames = np.stack([x[i * 160:i * 160 + 400] for i in range(got.shape[0])]).astype(np.float64) * window
  power = np.abs(np.fft.rfft(frames, 512)) ** 2 / 512
  ref = scipy.fft.dct(np.log(np.maximum(power @ fb.astype(np.float64), 1e-10)), type=2, norm="ortho")[:, :13]
  np.testing.assert_allclose(got, ref, rtol=1e-3, atol=2e-3)
  # mel bank: a 1 kHz tone peaks in the band centred nearest 1 kHz
  tone = np.sin(2 * np.pi * 1000 * np.arange(400) / 16000) * window
  band = np.argmax((np.abs(np.fft.rfft(tone, 512)) ** 2) @ fb)
  centres = mfcc._mel_to_hz(np.linspace(mfcc._hz_to_mel(20), mfcc._hz_to_mel(8000), 42))[1:-1]
  assert band == np.argmin(np.abs(centres - 1000))
  # a clip padded in a batch gets the features it gets alone
  alone = np.asarray(mfcc.mfcc_features(x[None, :12000], np.array([12000]), np.array([19]), 19))
  padded = np.asarray(mfcc.mfcc_features(np.pad(x[None, :12000], ((0, 0), (0, 4000))), np.array([12000]),
                                         np.array([19]), 25))
  np.testing.assert_allclose(padded[:, :19], alone, rtol=1e-5, atol=1e-5)
  assert np.all(padded[:, 19:] == 0)


def test_run_options_that_mean_nothing_are_refused():
  from dualtalk_jax.train import builder
  from experiments.configs import quickstart

  c = quickstart.get_config()
  c.ablation = "mfcc"
  c.optim.freeze_wav2vec2 = True
  cfg = builder.model_config(c)
  assert cfg.ablation == "mfcc"
  with pytest.raises(ValueError, match="mfcc.*optim.freeze_wav2vec2"):
    builder.make_model_def(c, cfg)
  c.ablation, c.optim.freeze_wav2vec2, c.data.feature_cache = "no_partner_speech", False, True
  with pytest.raises(ValueError, match="no_partner_speech.*feature_cache"):
    builder.make_model_def(c, builder.model_config(c))
  c.ablation = "no_lstm"
  with pytest.raises(ValueError, match="unknown ablation"):
    builder.model_config(c)


def test_checkpoint_records_its_ablation_and_export_refuses_it(tmp_path):
  cfg = get_model_config("tiny", ablation="no_modulation")
  model = DualTalk(cfg, rngs=make_rngs(0))
  ckpt = checkpoint.save_params(str(tmp_path / "ckpt"), params_lib.of(model), cfg)
  assert checkpoint.read_model_config(ckpt).ablation == "no_modulation"
  with pytest.raises(table.ConversionError, match="ablation 'no_modulation'.*only the released"):
    pytorch.checkpoint_to_torch(ckpt, str(tmp_path / "x.safetensors"))
  assert not (tmp_path / "x.safetensors").exists()
  res = dataclasses.replace(TINY, interaction_residual=True)
  with pytest.raises(table.ConversionError, match="interaction_residual"):
    pytorch.params_to_state_dict(params_lib.of(DualTalk(res, rngs=make_rngs(0))), res)


def test_feature_projection_layer_norm_off_drops_its_params_and_is_not_released(tmp_path):
  from dualtalk_jax.train import builder, configs, quickstart

  off = get_model_config("tiny", feature_projection_layer_norm=False)
  assert not off.is_released and off.unreleased_parts == ["feature_projection_layer_norm=False"]
  assert DualTalkConfig.from_dict(off.to_dict()) == off  # model_config.json records it
  gone = param_paths(TINY) - param_paths(off)
  assert gone == {f"joint_encoder.audio_encoder{i}.feature_projection.layer_norm.{p}" for i in (1, 2)
                  for p in ("scale", "bias")}
  assert param_paths(off) <= param_paths(TINY)
  with pytest.raises(table.ConversionError, match="feature_projection_layer_norm=False.*only the released"):
    pytorch.params_to_state_dict(params_lib.of(abstract_model(off)), off)
  # the quickstart's model leaves it out; the released model it also trains (and exports) keeps it
  qs = configs.quickstart()
  assert not builder.model_config(qs).feature_projection_layer_norm
  assert builder.model_config(quickstart.released_config(qs)).is_released
  with qs.unlocked():
    qs.pretrained_wav2vec2 = str(tmp_path)
  with pytest.raises(ValueError, match="feature_projection_layer_norm=False.*pretrained_wav2vec2"):
    builder.check_model_options(qs, builder.model_config(qs))


def test_feature_projection_without_layer_norm_projects_the_raw_frames():
  from flax import nnx

  from dualtalk_jax.models.wav2vec2 import Wav2Vec2FeatureProjection

  w2v = TINY.wav2vec2
  x = np.random.default_rng(0).normal(3.0, 2.0, (2, 5, w2v.conv_dim[-1])).astype(np.float32)
  with_ln = Wav2Vec2FeatureProjection(w2v, rngs=nnx.Rngs(0))
  without = Wav2Vec2FeatureProjection(w2v, rngs=nnx.Rngs(1), layer_norm=False)
  assert without.layer_norm is None
  nnx.update(without.projection, nnx.state(with_ln.projection))
  with_ln.eval(), without.eval()
  np.testing.assert_allclose(without(x), with_ln.projection(x), rtol=1e-6)
  np.testing.assert_allclose(with_ln(x), with_ln.projection(with_ln.layer_norm(x)), rtol=1e-6)
  # the LayerNorm removes each frame's scale; without it, the scale reaches the output
  np.testing.assert_allclose(with_ln(2 * x), with_ln(x), atol=1e-4)
  assert not np.allclose(without(2 * x), without(x), atol=1e-2)


def test_no_partner_motion_predicts_clips_and_windows_without_motion(models):
  from dualtalk_jax.eval import predict as P

  a, b, m = _inputs(3)
  model = models["no_partner_motion"]
  with_motion = P.predict_windowed(model, P.Clip(a[0], b[0], m[0]), window_seconds=0.4, overlap_seconds=0.1)
  without = P.predict_windowed(model, P.Clip(a[0], b[0], None), window_seconds=0.4, overlap_seconds=0.1)
  assert without.shape == (audio.num_frames(12800), 56)
  np.testing.assert_array_equal(without, with_motion)
  with pytest.raises(ValueError, match="needs the partner's motion"):
    P.predict_clips(models[""], [P.Clip(a[0], b[0], None)])
