"""wav2vec2 with the DualTalk change: conv features resampled to the output frame count.

Written by us from ../../../shared/spec/architecture.md ("Audio front end" and section 1);
no released code is copied. The module reuses the pieces of the installed
`transformers` (5.x) `Wav2Vec2Model`; only `forward` differs from the stock one:

    conv feature extractor  -> (B, C, L)  at 50 frames/s
    F.interpolate(size=frame_num, mode="linear", align_corners=True)  -> (B, C, frame_num)
    transpose -> feature_projection (LayerNorm -> Linear -> dropout)
    SpecAugment (`_mask_hidden_states`; only in training or with explicit mask_time_indices)
    encoder -> last_hidden_state (B, frame_num, hidden_size)

`frame_num=None` skips the resampling, which makes the forward identical to the stock
`transformers.Wav2Vec2Model.forward` (adapter included, if the config has one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from transformers.modeling_outputs import Wav2Vec2BaseModelOutput

try:  # transformers 5: output capturing (output_hidden_states / output_attentions) by hooks
  from transformers.utils.generic import merge_with_config_defaults
  from transformers.utils.output_capturing import capture_outputs
except ImportError:  # pragma: no cover - older transformers; the decorators are optional
  merge_with_config_defaults = None
  capture_outputs = None

__all__ = ["Wav2Vec2Model", "linear_interpolation", "wav2vec2_large_lv60_config", "wav2vec2_base_960h_config"]


def linear_interpolation(features: torch.Tensor, frame_num: int) -> torch.Tensor:
  """Resamples conv features (B, C, L) along time to (B, C, frame_num).

  `F.interpolate(mode='linear', align_corners=True)`: output frame j samples input position
  j * (L - 1) / (frame_num - 1) (the ends map onto the ends; frame_num == 1 takes frame 0).
  """
  if features.dim() != 3:
    raise ValueError(f"expected conv features (B, C, L), got shape {tuple(features.shape)}")
  if int(frame_num) < 1:
    raise ValueError(f"frame_num must be >= 1, got {frame_num}")
  return F.interpolate(features, size=int(frame_num), mode="linear", align_corners=True)


def _decorate(fn):
  if capture_outputs is None:
    return fn
  return merge_with_config_defaults(capture_outputs(tie_last_hidden_states=False)(fn))


class Wav2Vec2Model(transformers.Wav2Vec2Model):
  """`transformers.Wav2Vec2Model` whose forward takes `frame_num` (see module docstring).

  Same constructor (`Wav2Vec2Model(config: transformers.Wav2Vec2Config)`), same parameters
  and state-dict names as the stock class.
  """

  @_decorate
  def forward(
      self,
      input_values: torch.Tensor,
      attention_mask: torch.Tensor | None = None,
      mask_time_indices: torch.Tensor | None = None,
      frame_num: int | None = None,
      **kwargs,
  ) -> Wav2Vec2BaseModelOutput:
    """Runs wav2vec2 on (B, S) 16 kHz audio.

    Args:
      input_values: (B, S) float audio, already normalised (zero mean, unit variance).
      attention_mask: (B, S) sample-level mask, as in the stock model. Only supported with
        `frame_num=None`: resampling a padded clip would stretch the padding into the valid
        frames, so there is no meaningful masked variant of the resampled forward (the
        released code runs one clip / equal-length clips and passes no mask).
      mask_time_indices: optional (B, frames) bool SpecAugment mask, applied even in eval
        mode (stock semantics); frames = frame_num when resampling.
      frame_num: output frame count; None = no resampling (stock behaviour).
      **kwargs: `output_hidden_states`, `output_attentions`, `return_dict` as in the stock
        model.

    Returns:
      `Wav2Vec2BaseModelOutput` with `last_hidden_state` (B, frames, hidden_size) and
      `extract_features` (B, frames, conv_dim[-1]): the (resampled) conv features after
      `feature_projection.layer_norm`, as in the stock model. A tuple if return_dict=False.
    """
    if frame_num is not None and attention_mask is not None:
      raise ValueError(
          "attention_mask is only supported with frame_num=None; the resampled forward expects "
          "one clip or a batch of equal-length clips")

    extract_features = self.feature_extractor(input_values)  # (B, C, L)
    if frame_num is not None:
      extract_features = linear_interpolation(extract_features, frame_num)
    extract_features = extract_features.transpose(1, 2)  # (B, frames, C)

    if attention_mask is not None:
      attention_mask = self._get_feature_vector_attention_mask(
          extract_features.shape[1], attention_mask, add_adapter=False)

    hidden_states, extract_features = self.feature_projection(extract_features)
    hidden_states = self._mask_hidden_states(
        hidden_states, mask_time_indices=mask_time_indices, attention_mask=attention_mask)

    encoder_outputs = self.encoder(hidden_states, attention_mask=attention_mask, **kwargs)
    hidden_states = encoder_outputs.last_hidden_state

    if self.adapter is not None:
      hidden_states = self.adapter(hidden_states)

    return Wav2Vec2BaseModelOutput(last_hidden_state=hidden_states, extract_features=extract_features)


def _common_kwargs(**overrides):
  d = dict(
      hidden_act="gelu",
      feat_extract_activation="gelu",
      hidden_dropout=0.1,
      attention_dropout=0.1,
      activation_dropout=0.1,
      feat_proj_dropout=0.1,
      layerdrop=0.1,
      layer_norm_eps=1e-5,
      conv_dim=[512] * 7,
      conv_kernel=[10, 3, 3, 3, 3, 2, 2],
      conv_stride=[5, 2, 2, 2, 2, 2, 2],
      num_feat_extract_layers=7,
      num_conv_pos_embeddings=128,
      num_conv_pos_embedding_groups=16,
      apply_spec_augment=True,
      mask_time_prob=0.05,
      mask_time_length=10,
      mask_time_min_masks=2,
      mask_feature_prob=0.0,
  )
  d.update(overrides)
  return d


def wav2vec2_large_lv60_config(**overrides) -> transformers.Wav2Vec2Config:
  """`facebook/wav2vec2-large-960h-lv60-self` as published (the released DualTalk's encoders)."""
  return transformers.Wav2Vec2Config(**_common_kwargs(
      hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
      feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True, **overrides))


def wav2vec2_base_960h_config(**overrides) -> transformers.Wav2Vec2Config:
  """`facebook/wav2vec2-base-960h` as published."""
  return transformers.Wav2Vec2Config(**_common_kwargs(
      hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
      feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False, **overrides))
