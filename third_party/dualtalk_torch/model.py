"""DualTalk (CVPR 2025) as released, as a PyTorch module tree.

Written by us from ../../../shared/spec/architecture.md; no released code is copied.
Module and parameter names equal those of the released state dict
(../../../shared/spec/official_state_dict_large.tsv), in the same order, so a released
`DualTalk.pth` (or a JAX checkpoint exported to a state dict) loads with `strict=True`.
The weight-normed positional conv of wav2vec2 is named
`...pos_conv_embed.conv.parametrizations.weight.original0/1` (current torch); state dicts
written by older torch (`...conv.weight_g` / `weight_v`, as in the released checkpoint)
still load, through torch's own weight-norm compatibility hook.

Naming: the model predicts the motion of the target speaker. `audio_self` = the target's
audio (released `audio1`), `audio_other` = the partner's audio (`audio2`),
`motion_other` = the partner's motion (`blendshape2`).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from .wav2vec import Wav2Vec2Model, wav2vec2_large_lv60_config

__all__ = [
    "DualTalk",
    "DualSpeakerJointEncoder",
    "CrossModalTemporalEnhancer",
    "DualSpeakerInteractionModule",
    "ExpressiveSynthesisModule",
    "compute_loss",
    "num_output_frames",
]

# Layout of the 56-d motion vector: [exp(50), jaw(3), neck(3)].
EXP = slice(0, 50)
JAW = slice(50, 53)
NECK = slice(53, 56)


def num_output_frames(num_samples: int, sample_rate: int = 16000, fps: int = 25) -> int:
  """`math.ceil(num_samples / sample_rate * fps)` in float64, evaluated exactly as the
  released code writes it (4480 samples -> 8 frames, not 7)."""
  return math.ceil(int(num_samples) / sample_rate * fps)


def compute_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
  """Released training loss on (B, T, 56) motions, over min(T_pred, T_gt) frames.

  MSE(exp 0:50) + MSE(jaw 50:53) + MSE(neck 53:56) + MSE of the frame-to-frame velocities
  of all 56 channels; each MSE is a plain mean over all its elements.
  """
  n = min(pred.shape[1], target.shape[1])
  pred, target = pred[:, :n], target[:, :n]
  loss = F.mse_loss(pred[..., EXP], target[..., EXP])
  loss = loss + F.mse_loss(pred[..., JAW], target[..., JAW])
  loss = loss + F.mse_loss(pred[..., NECK], target[..., NECK])
  vel_pred = pred[:, 1:] - pred[:, :-1]
  vel_target = target[:, 1:] - target[:, :-1]
  return loss + F.mse_loss(vel_pred, vel_target)


class DualSpeakerJointEncoder(nn.Module):
  """`joint_encoder`: two wav2vec2 encoders, a shared audio projection, the motion encoder."""

  def __init__(self, wav2vec2_config: transformers.Wav2Vec2Config, feature_dim: int,
               motion_dim: int, blendshape_hidden: int, freeze_feature_extractor: bool = True):
    super().__init__()
    self.audio_encoder1 = Wav2Vec2Model(wav2vec2_config)  # audio_self
    self.audio_encoder2 = Wav2Vec2Model(wav2vec2_config)  # audio_other
    if freeze_feature_extractor:
      self.audio_encoder1.feature_extractor._freeze_parameters()
      self.audio_encoder2.feature_extractor._freeze_parameters()
    self.audio_projection = nn.Linear(wav2vec2_config.hidden_size, feature_dim)
    self.blendshape_encoder = nn.Sequential(
        nn.Linear(motion_dim, blendshape_hidden),
        nn.ReLU(),
        nn.Linear(blendshape_hidden, feature_dim),
        nn.ReLU(),
    )

  def forward(self, audio_self, audio_other, motion_other, frame_num: int):
    a_self = self.audio_encoder1(audio_self, frame_num=frame_num).last_hidden_state
    a_other = self.audio_encoder2(audio_other, frame_num=frame_num).last_hidden_state
    return (self.audio_projection(a_self), self.audio_projection(a_other),
            self.blendshape_encoder(motion_other))


class CrossModalTemporalEnhancer(nn.Module):
  """`temporal_enhancer`: partner audio attends to partner motion, then a BiLSTM."""

  def __init__(self, feature_dim: int, heads: int, lstm_hidden: int, lstm_layers: int):
    super().__init__()
    self.cross_attention = nn.MultiheadAttention(feature_dim, heads, batch_first=True)
    self.temporal_lstm = nn.LSTM(feature_dim, lstm_hidden, num_layers=lstm_layers,
                                 bidirectional=True, batch_first=True)

  def forward(self, a_other, m_other):
    x, _ = self.cross_attention(a_other, m_other, m_other)  # (B, T, feature_dim)
    x, _ = self.temporal_lstm(x)  # (B, T, 2 * lstm_hidden)
    return x


class DualSpeakerInteractionModule(nn.Module):
  """`interaction_module`: post-norm transformer encoder, self-attention, dropout."""

  def __init__(self, model_dim: int, heads: int, ff_dim: int, num_layers: int,
               dropout: float, self_attention_heads: int, self_attention_dropout: float):
    super().__init__()
    layer = nn.TransformerEncoderLayer(model_dim, heads, ff_dim, dropout=dropout, activation="relu",
                                       batch_first=True, norm_first=False)
    self.interaction_encoder = nn.TransformerEncoder(layer, num_layers)
    self.self_attention = nn.MultiheadAttention(model_dim, self_attention_heads, batch_first=True)
    self.dropout = nn.Dropout(self_attention_dropout)

  def forward(self, h):
    h = self.interaction_encoder(h)
    h, _ = self.self_attention(h, h, h)
    return self.dropout(h)


class ExpressiveSynthesisModule(nn.Module):
  """`synthesis_module`: 1-layer transformer decoder (tgt = memory), modulation, predictor."""

  def __init__(self, model_dim: int, heads: int, ff_dim: int, num_layers: int, dropout: float,
               motion_dim: int, modulation_scale: float):
    super().__init__()
    layer = nn.TransformerDecoderLayer(model_dim, heads, ff_dim, dropout=dropout, activation="relu",
                                       batch_first=True, norm_first=False)
    self.synthesis_decoder = nn.TransformerDecoder(layer, num_layers)
    # Registration order = released state-dict order (predictor before modulation layer).
    self.blendshape_predictor = nn.Linear(model_dim, motion_dim)
    self.modulation_layer = nn.Linear(model_dim, model_dim)
    self.modulation_scale = modulation_scale

  def forward(self, h):
    d = self.synthesis_decoder(h, h)
    y = d + self.modulation_scale * self.modulation_layer(d)  # no activation (released code)
    return self.blendshape_predictor(y)


class DualTalk(nn.Module):
  """The released DualTalk model.

  Args:
    wav2vec2_config: `transformers.Wav2Vec2Config` of both audio encoders (default:
      wav2vec2-large-960h-lv60-self). Its `_attn_implementation` is set to
      `attn_implementation` (a copy is made; the argument is not modified).
    feature_dim: audio_projection / blendshape_encoder output (256); the interaction and
      synthesis width is 2 * feature_dim.
    motion_dim: 56 = exp(50) + jaw(3) + neck(3).
    blendshape_hidden: hidden width of blendshape_encoder (128).
    cross_attention_heads: heads of temporal_enhancer.cross_attention (4).
    lstm_hidden, lstm_layers: BiLSTM size per direction (128, 2 layers);
      2 * lstm_hidden must equal feature_dim.
    interaction_layers, interaction_heads, interaction_ff, interaction_dropout: the torch
      TransformerEncoder (3, 4, 2048, 0.1); the heads and dropout are also used by
      the synthesis decoder, the heads by interaction_module.self_attention.
    self_attention_dropout: nn.Dropout after interaction_module.self_attention (0.5).
    synthesis_layers: TransformerDecoder layers (1).
    modulation_scale: y = D + modulation_scale * modulation_layer(D) (0.1).
    sample_rate, fps: for the output frame count (16000, 25).
    freeze_feature_extractor: freeze both conv feature extractors (released training does).
    attn_implementation: wav2vec2 attention kernel, "eager" (default: the explicit softmax
      of the older transformers the released code ran with) or "sdpa".
  """

  def __init__(
      self,
      wav2vec2_config: transformers.Wav2Vec2Config | None = None,
      *,
      feature_dim: int = 256,
      motion_dim: int = 56,
      blendshape_hidden: int = 128,
      cross_attention_heads: int = 4,
      lstm_hidden: int = 128,
      lstm_layers: int = 2,
      interaction_layers: int = 3,
      interaction_heads: int = 4,
      interaction_ff: int = 2048,
      interaction_dropout: float = 0.1,
      self_attention_dropout: float = 0.5,
      synthesis_layers: int = 1,
      modulation_scale: float = 0.1,
      sample_rate: int = 16000,
      fps: int = 25,
      freeze_feature_extractor: bool = True,
      attn_implementation: str | None = "eager",
  ):
    super().__init__()
    if 2 * lstm_hidden != feature_dim:
      raise ValueError("the BiLSTM output (2 * lstm_hidden) must equal feature_dim")
    if wav2vec2_config is None:
      wav2vec2_config = wav2vec2_large_lv60_config()
    else:
      wav2vec2_config = copy.deepcopy(wav2vec2_config)
    if attn_implementation is not None:
      wav2vec2_config._attn_implementation = attn_implementation
    self.sample_rate = sample_rate
    self.fps = fps
    model_dim = 2 * feature_dim

    self.joint_encoder = DualSpeakerJointEncoder(wav2vec2_config, feature_dim, motion_dim,
                                                 blendshape_hidden, freeze_feature_extractor)
    self.temporal_enhancer = CrossModalTemporalEnhancer(feature_dim, cross_attention_heads,
                                                        lstm_hidden, lstm_layers)
    self.interaction_module = DualSpeakerInteractionModule(
        model_dim, interaction_heads, interaction_ff, interaction_layers, interaction_dropout,
        interaction_heads, self_attention_dropout)
    self.synthesis_module = ExpressiveSynthesisModule(
        model_dim, interaction_heads, interaction_ff, synthesis_layers, interaction_dropout,
        motion_dim, modulation_scale)

  @classmethod
  def from_config(cls, cfg, **kwargs) -> "DualTalk":
    """Builds from a `dualtalk_jax.config.DualTalkConfig` (or a config name, e.g. "tiny").

    `kwargs` go to the constructor (freeze_feature_extractor, attn_implementation).
    """
    from dualtalk_jax import config as jax_config  # lazy: third_party stays standalone

    if isinstance(cfg, str):
      cfg = jax_config.CONFIGS[cfg]
    if not cfg.is_released:
      raise ValueError(f"the released module tree has no ablation ({cfg.ablation!r}) or interaction residual")
    w2v = transformers.Wav2Vec2Config(**cfg.wav2vec2.to_hf_dict())
    return cls(
        w2v,
        feature_dim=cfg.feature_dim,
        motion_dim=cfg.motion_dim,
        blendshape_hidden=cfg.blendshape_hidden,
        cross_attention_heads=cfg.cross_attention_heads,
        lstm_hidden=cfg.lstm_hidden,
        lstm_layers=cfg.lstm_layers,
        interaction_layers=cfg.interaction_layers,
        interaction_heads=cfg.interaction_heads,
        interaction_ff=cfg.interaction_ff,
        interaction_dropout=cfg.interaction_dropout,
        self_attention_dropout=cfg.self_attention_dropout,
        synthesis_layers=cfg.synthesis_layers,
        modulation_scale=cfg.modulation_scale,
        sample_rate=cfg.sample_rate,
        fps=cfg.fps,
        **kwargs,
    )

  def num_output_frames(self, num_samples: int) -> int:
    return num_output_frames(num_samples, self.sample_rate, self.fps)

  def forward(self, audio_self: torch.Tensor, audio_other: torch.Tensor,
              motion_other: torch.Tensor, frame_num: int | None = None) -> torch.Tensor:
    """Predicts the target speaker's motion.

    Args:
      audio_self: (B, S) normalised 16 kHz audio of the target speaker.
      audio_other: (B, S2) normalised 16 kHz audio of the partner (any length: it is
        resampled to the same T).
      motion_other: (B, N, motion_dim) partner motion; N may differ from T.
      frame_num: output frame count T; default ceil(S / sample_rate * fps).

    Returns:
      (B, T, motion_dim) tensor.
    """
    if frame_num is None:
      frame_num = self.num_output_frames(audio_self.shape[1])
    a_self, a_other, m_other = self.joint_encoder(audio_self, audio_other, motion_other, frame_num)
    x = self.temporal_enhancer(a_other, m_other)
    h = torch.cat([a_self, x], dim=-1)
    h = self.interaction_module(h)
    return self.synthesis_module(h)

  @staticmethod
  def compute_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return compute_loss(pred, target)
