"""Model configurations: the released `large`, `base`, and a `tiny` one for tests.

Configs are frozen dataclasses so they can be hashed (static jit arguments) and written
to / read from JSON. `Wav2Vec2Config` uses the field names of the Hugging Face
`config.json`, so one can be read straight from a wav2vec2 directory on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
  """The subset of HF `Wav2Vec2Config` that the encoder's forward pass depends on."""

  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  intermediate_size: int = 4096
  hidden_act: str = "gelu"
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  activation_dropout: float = 0.1
  feat_proj_dropout: float = 0.1
  layerdrop: float = 0.1
  layer_norm_eps: float = 1e-5
  feat_extract_norm: str = "layer"  # "layer" (lv60) or "group" (base)
  feat_extract_activation: str = "gelu"
  conv_dim: tuple[int, ...] = (512,) * 7
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = True
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  do_stable_layer_norm: bool = True
  apply_spec_augment: bool = True
  mask_time_prob: float = 0.05
  mask_time_length: int = 10
  mask_time_min_masks: int = 2

  def __post_init__(self):
    if self.feat_extract_norm not in ("layer", "group"):
      raise ValueError(f"feat_extract_norm must be 'layer' or 'group', got {self.feat_extract_norm!r}")
    if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)):
      raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError("hidden_size must be divisible by num_attention_heads")
    for name in ("hidden_act", "feat_extract_activation"):
      if getattr(self, name) != "gelu":
        raise ValueError(f"only exact GELU is supported for {name}, got {getattr(self, name)!r}")

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Wav2Vec2Config":
    """Builds a config from a HF config dict, ignoring fields the encoder does not use."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> "Wav2Vec2Config":
    """Reads a HF wav2vec2 `config.json` (or a directory holding one)."""
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, "config.json")
    try:
      with open(path) as f:
        d = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(f"{path}: no wav2vec2 config.json there") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
    model_type = d.get("model_type", "wav2vec2")
    if model_type != "wav2vec2":
      raise ValueError(f"{path}: model_type is {model_type!r}, expected 'wav2vec2'")
    return cls.from_dict(d)

  def to_hf_dict(self) -> dict[str, Any]:
    """A dict that `transformers.Wav2Vec2Config(**d)` accepts."""
    d = dataclasses.asdict(self)
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
    d["num_feat_extract_layers"] = len(self.conv_dim)
    d["model_type"] = "wav2vec2"
    return d

  @property
  def conv_out_dim(self) -> int:
    return self.conv_dim[-1]


# facebook/wav2vec2-large-960h-lv60-self, as published.
WAV2VEC2_LARGE_LV60 = Wav2Vec2Config()

# facebook/wav2vec2-base-960h, as published.
WAV2VEC2_BASE_960H = Wav2Vec2Config(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    feat_extract_norm="group",
    conv_bias=False,
    do_stable_layer_norm=False,
    feat_proj_dropout=0.1,
    layerdrop=0.1,
)

# Small but structurally complete: every code path of the large one, cheap on CPU.
WAV2VEC2_TINY = Wav2Vec2Config(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16, 16, 16, 16, 16, 16),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


# The paper's Tab. 6 ablations (`DualTalkConfig.ablation`); "" is the released model.
# What each removes, and what takes its place, is documented in dualtalk_jax/models/dualtalk.py.
ABLATIONS = {
    "": "DualTalk (all modules)",
    "no_partner_speech": "w/o Speaker-A's Speech",
    "no_partner_motion": "w/o Speaker-A's Expression",
    "mfcc": "replace Audio Feature Extractor with MFCC",
    "no_temporal_enhancer": "w/o Cross-Modal Temporal Enhancer",
    "no_interaction": "w/o Dual-Speaker Interaction Module",
    "no_modulation": "w/o Adaptive Expression Modulation",
}

# The quickstart's encoder: WAV2VEC2_TINY in the wav2vec2-base layout (GroupNorm on the
# first conv layer only, over time per channel), which keeps each frame's loudness relative
# to the clip; the lv60 layout's per-frame LayerNorm on every conv layer removes it, and a
# tiny encoder trained from scratch in minutes then hardly follows the speech envelope.
# No SpecAugment or LayerDrop either: on 2 s windows SpecAugment's minimum of two 10-frame
# masks hides 20 % of every window from an encoder that has everything still to learn.
# No dropout inside it: it underfits (validation loss still falls at 2000 steps), and
# without its four 0.1 dropouts the quickstart model's speaking frames are predicted
# better (exp MSE x0.89, FD x0.87), enough that 13 MFCCs in its place (the `mfcc`
# ablation) are the worse front end for them (docs/ablation.md).
WAV2VEC2_TINY_BASE = dataclasses.replace(WAV2VEC2_TINY, feat_extract_norm="group", conv_bias=False,
                                         do_stable_layer_norm=False, apply_spec_augment=False, layerdrop=0.0,
                                         hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                         feat_proj_dropout=0.0)


@dataclasses.dataclass(frozen=True)
class DualTalkConfig:
  """The DualTalk model around two wav2vec2 encoders (names follow the released code).

  Three fields leave the released architecture (all at the released value in `large` and
  `base`): `ablation` names one of the paper's Tab. 6 ablations (`ABLATIONS`);
  `interaction_residual` adds a residual connection around
  `interaction_module.self_attention` (x + Dropout(SelfAttention(x)); the released module
  returns the attention output alone, so every output frame is an attention average over
  the whole window); `feature_projection_layer_norm=False` drops the LayerNorm of both
  wav2vec2 encoders' `feature_projection` (its params are absent), which normalises every
  conv frame over its channels and so removes the frame's loudness (the quickstart's
  encoder, trained from scratch, follows the speech envelope better without it:
  docs/ablation.md). Only the released architecture exports to PyTorch.
  """

  wav2vec2: Wav2Vec2Config = WAV2VEC2_LARGE_LV60
  feature_dim: int = 256  # audio_projection / blendshape_encoder output
  motion_dim: int = 56  # exp(50) + jaw(3) + neck(3)
  blendshape_hidden: int = 128
  cross_attention_heads: int = 4
  lstm_hidden: int = 128  # per direction; bidirectional output = 2 * lstm_hidden
  lstm_layers: int = 2
  interaction_layers: int = 3
  interaction_heads: int = 4
  interaction_ff: int = 2048
  interaction_dropout: float = 0.1  # inside the torch transformer layers
  self_attention_dropout: float = 0.5  # Dropout after interaction_module.self_attention
  synthesis_layers: int = 1
  modulation_scale: float = 0.1
  sample_rate: int = 16000
  fps: int = 25
  ablation: str = ""  # a key of ABLATIONS; "" = the released model
  interaction_residual: bool = False  # not released: residual around interaction_module.self_attention
  feature_projection_layer_norm: bool = True  # False (not released): no wav2vec2 feature_projection.layer_norm
  # Param layout of the two wav2vec2 encoders' layer stacks: True = one stacked module
  # per encoder, run as a scan (`encoder.layers.<param>`, leading layer axis); False = a list
  # of layers (`encoder.layers.{i}.<param>`), for debugging. Same values either way;
  # checkpoints record it (a model_config.json without it holds the unrolled layout).
  scan_layers: bool = True

  def __post_init__(self):
    if 2 * self.lstm_hidden != self.feature_dim:
      raise ValueError("the BiLSTM output (2 * lstm_hidden) must equal feature_dim")
    if self.ablation not in ABLATIONS:
      raise ValueError(f"unknown ablation {self.ablation!r}; choose from {sorted(k for k in ABLATIONS if k)} "
                       "or '' (the released model)")

  @property
  def is_released(self) -> bool:
    """Whether this is the released architecture (no ablation, no added residual, the
    wav2vec2 feature-projection LayerNorm in place)."""
    return not self.unreleased_parts

  @property
  def unreleased_parts(self) -> list[str]:
    """The options that leave the released architecture, for messages (empty when released)."""
    parts = [f"ablation {self.ablation!r}"] if self.ablation else []
    if self.interaction_residual:
      parts.append("interaction_residual=True")
    if not self.feature_projection_layer_norm:
      parts.append("feature_projection_layer_norm=False")
    return parts

  @property
  def uses_wav2vec2(self) -> bool:
    """Whether the model holds wav2vec2 encoders (all but the `mfcc` ablation)."""
    return self.ablation != "mfcc"

  @property
  def uses_partner_motion(self) -> bool:
    return self.ablation != "no_partner_motion"

  @property
  def uses_partner_speech(self) -> bool:
    return self.ablation != "no_partner_speech"

  @property
  def model_dim(self) -> int:
    """Width of the interaction and synthesis modules: [audio_self, lstm] concatenated."""
    return 2 * self.feature_dim

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "DualTalkConfig":
    d = dict(d)
    w2v = d.pop("wav2vec2", {})
    if not isinstance(w2v, Wav2Vec2Config):
      w2v = Wav2Vec2Config.from_dict(w2v)
    return cls(wav2vec2=w2v, **d)


CONFIGS = {
    "large": DualTalkConfig(),
    "base": DualTalkConfig(wav2vec2=WAV2VEC2_BASE_960H),
    "tiny": DualTalkConfig(
        wav2vec2=WAV2VEC2_TINY,
        feature_dim=16,
        blendshape_hidden=8,
        lstm_hidden=8,
        interaction_ff=64,
    ),
}
# The quickstart's: the base wav2vec2 layout (dualtalk_jax/train/quickstart.py), and a wider
# hidden layer in the partner-motion encoder. With 8 ReLU units it often lost the partner's
# expression (7 of its 16 output units dead), and the model did not pass the conversation's
# mood on (0.00 of it, `benchmarks/listener_cues.py`); with 32: 0.68 and 0.87 (seeds 0, 1),
# and 25 % lower exp MSE (both with the wav2vec2 dropout still on; without it, 0.77).
CONFIGS["tiny_base"] = dataclasses.replace(CONFIGS["tiny"], wav2vec2=WAV2VEC2_TINY_BASE, blendshape_hidden=32)


def get_model_config(name: str, wav2vec2_config: str | None = None, *, ablation: str = "",
                     interaction_residual: bool = False, feature_projection_layer_norm: bool = True) -> DualTalkConfig:
  """Named config, optionally with its wav2vec2 part read from a HF `config.json`, an
  ablation (`ABLATIONS`), the interaction residual and without the wav2vec2
  feature-projection LayerNorm."""
  if name not in CONFIGS:
    raise ValueError(f"unknown model config {name!r}; choose from {sorted(CONFIGS)}")
  cfg = CONFIGS[name]
  if wav2vec2_config:
    cfg = dataclasses.replace(cfg, wav2vec2=Wav2Vec2Config.from_json(wav2vec2_config))
  return dataclasses.replace(cfg, ablation=ablation, interaction_residual=bool(interaction_residual),
                             feature_projection_layer_norm=bool(feature_projection_layer_norm))
