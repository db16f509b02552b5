"""Tests of third_party/dualtalk_torch, the PyTorch oracle of the released DualTalk."""

import dataclasses
import math
import pathlib

import numpy as np
import pytest
import torch
import transformers

from dualtalk_jax.config import CONFIGS
from third_party.dualtalk_torch import DualTalk, Wav2Vec2Model, compute_loss, num_output_frames

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
TSV = SHARED / "spec" / "official_state_dict_large.tsv"


def _tiny_w2v_config(**changes):
  w2v = dataclasses.replace(CONFIGS["tiny"].wav2vec2, **changes)
  return transformers.Wav2Vec2Config(**w2v.to_hf_dict())


@pytest.fixture(scope="module")
def tiny_model():
  torch.manual_seed(0)
  return DualTalk.from_config(CONFIGS["tiny"]).eval()


def test_large_state_dict_matches_released_names_and_shapes():
  if not TSV.exists():
    pytest.skip(f"{TSV} not present")
  rows = [line.rstrip("\n").split("\t") for line in TSV.read_text().splitlines()[1:] if line.strip()]
  expected = [(k, tuple(int(d) for d in s.strip("()").split(",") if d.strip())) for k, s in rows]
  with torch.device("meta"):
    model = DualTalk.from_config(CONFIGS["large"])
  sd = model.state_dict()
  got = [(k, tuple(v.shape)) for k, v in sd.items()]
  assert len(got) == 932
  assert sorted(set(got) ^ set(expected)) == []
  assert got == expected  # same order as the released state dict, too
  assert sum(v.numel() for v in sd.values()) == 647_237_048
  assert sum(p.numel() for p in model.parameters()) == 647_237_048
  # The default constructor is the large configuration as well.
  with torch.device("meta"):
    default = DualTalk()
  assert [(k, tuple(v.shape)) for k, v in default.state_dict().items()] == got


def test_base_config_builds():
  with torch.device("meta"):
    model = DualTalk.from_config(CONFIGS["base"])
  enc = model.joint_encoder.audio_encoder1
  assert enc.config.hidden_size == 768 and not enc.config.do_stable_layer_norm
  assert enc.feature_extractor.conv_layers[0].conv.bias is None
  assert tuple(model.joint_encoder.audio_projection.weight.shape) == (256, 768)


@pytest.mark.parametrize("samples,frames", [(4480, 8), (640, 1), (1280, 2), (16000, 25), (1000, 2),
                                            (3000, 5), (160000, 250)])
def test_num_output_frames(samples, frames):
  assert num_output_frames(samples) == frames == math.ceil(samples / 16000 * 25)


@pytest.mark.parametrize("samples", [4480, 3000, 8000, 16000])
@pytest.mark.parametrize("motion_len", ["shorter", "longer"])
def test_tiny_forward_shapes(tiny_model, samples, motion_len):
  t = math.ceil(samples / 16000 * 25)
  n = max(1, t // 2) if motion_len == "shorter" else t + 7
  g = torch.Generator().manual_seed(samples + n)
  audio_self = torch.randn(2, samples, generator=g)
  audio_other = torch.randn(2, samples + 321, generator=g)  # T comes from audio_self only
  motion_other = torch.randn(2, n, 56, generator=g)
  with torch.no_grad():
    out = tiny_model(audio_self, audio_other, motion_other)
  assert out.shape == (2, t, 56)
  assert torch.isfinite(out).all()
  if samples == 4480:
    assert t == 8


def test_forward_frame_num_override(tiny_model):
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    out = tiny_model(torch.randn(1, 5000, generator=g), torch.randn(1, 5000, generator=g),
                     torch.randn(1, 9, 56, generator=g), frame_num=11)
  assert out.shape == (1, 11, 56)


def test_eval_forward_is_deterministic_and_train_mode_runs(tiny_model):
  g = torch.Generator().manual_seed(2)
  args = (torch.randn(1, 8000, generator=g), torch.randn(1, 8000, generator=g),
          torch.randn(1, 12, 56, generator=g))
  with torch.no_grad():
    a, b = tiny_model(*args), tiny_model(*args)
  assert torch.equal(a, b)
  cfg = CONFIGS["tiny"]
  cfg = dataclasses.replace(cfg, wav2vec2=dataclasses.replace(cfg.wav2vec2, layerdrop=0.0))
  model = DualTalk.from_config(cfg).train()  # no LayerDrop: every layer gets a gradient
  loss = model.compute_loss(model(*args), torch.randn(1, 14, 56, generator=g))
  loss.backward()
  no_grad = {n for n, p in model.named_parameters() if p.grad is None}
  # Only the frozen conv feature extractors get no gradient.
  assert no_grad and all(".feature_extractor." in n for n in no_grad)


def _numpy_loss(pred, target):
  n = min(pred.shape[1], target.shape[1])
  p, t = pred[:, :n].astype(np.float64), target[:, :n].astype(np.float64)
  mse = lambda a, b: np.mean((a - b) ** 2)
  vp, vt = p[:, 1:] - p[:, :-1], t[:, 1:] - t[:, :-1]
  return (mse(p[..., :50], t[..., :50]) + mse(p[..., 50:53], t[..., 50:53])
          + mse(p[..., 53:56], t[..., 53:56]) + mse(vp, vt))


@pytest.mark.parametrize("t_pred,t_gt", [(10, 10), (12, 9), (7, 11)])
def test_compute_loss_matches_numpy(t_pred, t_gt):
  rng = np.random.default_rng(t_pred * 100 + t_gt)
  pred = rng.standard_normal((3, t_pred, 56)).astype(np.float32)
  target = rng.standard_normal((3, t_gt, 56)).astype(np.float32)
  got = compute_loss(torch.from_numpy(pred), torch.from_numpy(target))
  assert got.shape == ()
  np.testing.assert_allclose(got.item(), _numpy_loss(pred, target), rtol=1e-5)
  assert DualTalk.compute_loss(torch.from_numpy(pred), torch.from_numpy(target)).item() == got.item()


@pytest.mark.parametrize("variant", ["layer_stable", "group_post"])
def test_wav2vec_without_resampling_equals_stock(variant):
  changes = {} if variant == "layer_stable" else dict(
      feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False)
  config = _tiny_w2v_config(**changes)
  torch.manual_seed(0)
  stock = transformers.Wav2Vec2Model(config).eval()
  ours = Wav2Vec2Model(config).eval()
  ours.load_state_dict(stock.state_dict(), strict=True)
  g = torch.Generator().manual_seed(3)
  x = torch.randn(2, 6000, generator=g)
  mask = torch.ones(2, 6000, dtype=torch.long)
  mask[1, 4000:] = 0
  with torch.no_grad():
    a, b = stock(x), ours(x)
    am, bm = stock(x, attention_mask=mask), ours(x, attention_mask=mask)
    # Resampling to the natural frame count is the identity (align_corners=True).
    c = ours(x, frame_num=a.last_hidden_state.shape[1])
  assert isinstance(b, transformers.modeling_outputs.Wav2Vec2BaseModelOutput)
  torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state, rtol=0, atol=0)
  torch.testing.assert_close(b.extract_features, a.extract_features, rtol=0, atol=0)
  torch.testing.assert_close(bm.last_hidden_state, am.last_hidden_state, rtol=0, atol=0)
  torch.testing.assert_close(c.last_hidden_state, a.last_hidden_state, rtol=1e-6, atol=1e-6)


def test_wav2vec_resampling_matches_manual_pipeline():
  torch.manual_seed(0)
  model = Wav2Vec2Model(_tiny_w2v_config()).eval()
  x = torch.randn(1, 4480, generator=torch.Generator().manual_seed(4))
  with torch.no_grad():
    out = model(x, frame_num=8)
    feats = model.feature_extractor(x)  # (1, C, 13)
    assert feats.shape[-1] == 13
    feats = torch.nn.functional.interpolate(feats, size=8, mode="linear", align_corners=True)
    # align_corners=True keeps both ends.
    torch.testing.assert_close(feats[..., 0], model.feature_extractor(x)[..., 0])
    hidden, _ = model.feature_projection(feats.transpose(1, 2))
    expected = model.encoder(hidden).last_hidden_state
  assert out.last_hidden_state.shape == (1, 8, 32)
  torch.testing.assert_close(out.last_hidden_state, expected, rtol=0, atol=0)
  with pytest.raises(ValueError, match="attention_mask"):
    model(x, attention_mask=torch.ones(1, 4480, dtype=torch.long), frame_num=8)


def test_loads_old_weight_norm_names_strict(tiny_model):
  sd = {k.replace("parametrizations.weight.original0", "weight_g")
        .replace("parametrizations.weight.original1", "weight_v"): v
        for k, v in tiny_model.state_dict().items()}
  assert any(k.endswith("pos_conv_embed.conv.weight_g") for k in sd)
  other = DualTalk.from_config(CONFIGS["tiny"]).eval()
  other.load_state_dict(sd, strict=True)
  g = torch.Generator().manual_seed(5)
  args = (torch.randn(1, 4000, generator=g), torch.randn(1, 4000, generator=g),
          torch.randn(1, 6, 56, generator=g))
  with torch.no_grad():
    torch.testing.assert_close(other(*args), tiny_model(*args), rtol=0, atol=0)
