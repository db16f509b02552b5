"""Pretrained wav2vec2 from a Hugging Face directory on disk (never downloads).

A directory such as a local copy of `facebook/wav2vec2-large-960h-lv60-self` holds
`config.json` and `model.safetensors` (or `pytorch_model.bin`, or sharded files with an
index). Its keys may carry the `wav2vec2.` prefix of `Wav2Vec2ForCTC` /
`Wav2Vec2ForPreTraining`; heads that are not part of the encoder (`lm_head`, the
pre-training quantizer and projections) are ignored, everything else must match the
encoder exactly (keys and shapes), in either weight-norm naming.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from dualtalk_jax import params as params_lib
from dualtalk_jax.config import Wav2Vec2Config
from dualtalk_jax.convert import table
from dualtalk_jax.models.wav2vec2 import Wav2Vec2Model

_HEADS = re.compile(r"^(lm_head|quantizer|project_q|project_hid|dropout_features)\.")
_PREFIX = "wav2vec2."


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  if any(k.startswith(_PREFIX) for k in state_dict):
    return {(k[len(_PREFIX):] if k.startswith(_PREFIX) else k): v for k, v in state_dict.items()}
  return dict(state_dict)


def load_state_dict(model: Wav2Vec2Model, state_dict: Mapping[str, Any], *, source: str = "wav2vec2 state dict") -> None:
  """Loads a HF wav2vec2 state dict (torch tensors or numpy) into `model`, strictly.

  `masked_spec_embed` may be absent (HF omits it when SpecAugment is off); the model's
  own value is then kept.
  """
  sd = _strip_prefix(state_dict)
  current = params_lib.of(model)
  if "masked_spec_embed" not in sd:
    sd["masked_spec_embed"] = np.asarray(current["masked_spec_embed"])
  params_lib.load(model, table.torch_to_jax(current, sd, source=source, ignore=lambda k: bool(_HEADS.match(k))))


def read_state_dict(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads the weights of a HF model directory: safetensors (preferred) or pytorch_model.bin."""
  directory = os.fspath(directory)
  single = os.path.join(directory, "model.safetensors")
  index = os.path.join(directory, "model.safetensors.index.json")
  binary = os.path.join(directory, "pytorch_model.bin")
  if os.path.exists(single) or os.path.exists(index):
    from safetensors.numpy import load_file

    files = [single]
    if not os.path.exists(single):
      with open(index) as f:
        files = sorted({os.path.join(directory, v) for v in json.load(f)["weight_map"].values()})
    sd = {}
    for fn in files:
      try:
        sd.update(load_file(fn))
      except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{fn}: cannot read safetensors file ({e})") from None
    return sd
  if os.path.exists(binary):
    try:
      import torch
    except ImportError:
      raise ImportError(f"{binary}: reading pytorch_model.bin needs torch (pip install -r requirements-test.txt)") from None
    try:
      return torch.load(binary, map_location="cpu", weights_only=True)
    except Exception as e:
      raise ValueError(f"{binary}: cannot read torch file ({e})") from None
  raise FileNotFoundError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_pretrained(directory: str | os.PathLike, *, rngs: nnx.Rngs | None = None) -> Wav2Vec2Model:
  """A `Wav2Vec2Model` built from `directory/config.json` with its weights, in eval mode
  (as HF's `from_pretrained`; call `.train()` to fine-tune)."""
  cfg = Wav2Vec2Config.from_json(directory)
  model = Wav2Vec2Model(cfg, rngs=rngs or nnx.Rngs(params=0, dropout=1))
  load_into(model, directory)
  model.eval()
  return model


def load_into(encoder: Wav2Vec2Model, directory: str | os.PathLike) -> None:
  """Initialises an existing encoder (e.g. `model.joint_encoder.audio_encoder1`) from disk.

  The directory's config must describe the same architecture as the encoder.
  """
  cfg = Wav2Vec2Config.from_json(directory)
  mine = encoder.config
  arch = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim", "conv_kernel",
          "conv_stride", "conv_bias", "feat_extract_norm", "do_stable_layer_norm", "num_conv_pos_embeddings",
          "num_conv_pos_embedding_groups")
  diff = [f"{a}: {getattr(cfg, a)} vs {getattr(mine, a)}" for a in arch if getattr(cfg, a) != getattr(mine, a)]
  if diff:
    raise table.ConversionError(f"{directory}: wav2vec2 config differs from the model's ({'; '.join(diff)})")
  load_state_dict(encoder, read_state_dict(directory), source=os.fspath(directory))


def init_dualtalk_encoders(model, directory: str | os.PathLike) -> None:
  """Loads the same pretrained wav2vec2 into both encoders, as the released code does."""
  for encoder in model.joint_encoder.encoders:  # none for the mfcc ablation, one for no_partner_speech
    load_into(encoder, directory)
