"""DualTalk in Flax NNX, mirroring the released PyTorch module tree and its forward pass.

    joint_encoder       two wav2vec2 encoders (target's and partner's audio, both
                        resampled to the target's T frames), one shared audio_projection,
                        blendshape_encoder MLP over the partner's motion (N frames)
    temporal_enhancer   cross-attention (query: partner audio, key/value: partner motion)
                        then a 2-layer bidirectional LSTM
    interaction_module  [target audio | LSTM] -> 3 post-norm transformer encoder layers ->
                        self-attention -> Dropout(0.5)
    synthesis_module    1 post-norm decoder layer with memory = its input, then
                        D + 0.1 * modulation_layer(D) (no activation) -> blendshape_predictor

Batches hold clips of different lengths, padded, with per-clip lengths: every attention
masks padded keys, the LSTM's backward pass starts at each clip's true end, and each
encoder resamples each clip's own conv frames, so a padded batch gives, clip by clip, what
the released code gives on that clip alone. Dropout, SpecAugment and LayerDrop act only
in training mode (`model.train()`; `model.eval()` for inference). rng stream: 'dropout'.

Frozen wav2vec2 mode (`freeze_audio_encoders(model)`, after `model.train()`): both
encoders run in eval mode and pass no gradient, the rest of the model trains as usual.
Their outputs are then a pure function of the audio (`JointEncoder.encode_audio`), which
is what the preprocessing feature cache stores (dualtalk_jax/data/feature_cache.py);
`model.from_features(features_self, features_other, motion_other, ...)` takes those
cached hidden states instead of audio, skips both encoders and is otherwise the same
forward pass (`__call__` runs it after the encoders; same params, the encoder params are
simply not read).

Ablations (`DualTalkConfig.ablation`, the paper's Tab. 6). Each removes the named module
or input, whose params are then absent from the param tree; what takes its place keeps
every other shape as released:

    no_partner_speech     no `audio_encoder2`; audio_other is never read. The temporal
                          enhancer's cross-attention queries the partner's motion with
                          the target's own projected audio (T frames) instead.
    no_partner_motion     no `blendshape_encoder`; motion_other is never read (pass None).
                          The cross-attention attends from the partner's projected audio
                          to itself (self-attention over the T partner-audio frames).
    mfcc                  no `audio_encoder1`/`audio_encoder2`; 13 MFCCs per 10 ms of each
                          track (dualtalk_jax/models/mfcc.py), resampled to the T frames
                          like wav2vec2's conv features, go through `audio_projection`
                          (now 13 -> feature_dim, still shared by both tracks).
    no_temporal_enhancer  no `temporal_enhancer`; its output is replaced by the sum of the
                          partner's projected audio and encoded motion, the motion's N
                          frames linearly resampled to the T frames.
    no_interaction        no `interaction_module`; [target audio | enhancer output] goes
                          straight to the synthesis module.
    no_modulation         no `synthesis_module.modulation_layer`; the decoder output goes
                          straight to `blendshape_predictor`.

`DualTalkConfig.interaction_residual` (not released, off for `large`/`base`) returns
x + Dropout(SelfAttention(x)) from the interaction module instead of the attention
output alone. `DualTalkConfig.feature_projection_layer_norm=False` (not released, on for
`large`/`base`) builds both wav2vec2 encoders without `feature_projection.layer_norm`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualtalk_jax import audio
from dualtalk_jax.config import DualTalkConfig
from dualtalk_jax.models import layers, mfcc
from dualtalk_jax.models.wav2vec2 import Wav2Vec2Model, resample_frames


def make_rngs(seed: int) -> nnx.Rngs:
  """Rngs with explicit 'params' and 'dropout' streams, so `nnx.reseed(model, dropout=k)` reaches
  every Dropout, SpecAugment and LayerDrop stream (with a bare `nnx.Rngs(seed)` they are 'default')."""
  return nnx.Rngs(params=seed, dropout=seed + 1)


def frame_mask(num_frames, max_frames: int):
  """(B,) frame counts -> (B, max_frames) bool, True on real frames."""
  return jnp.arange(max_frames)[None, :] < jnp.asarray(num_frames)[:, None]


def require_partner_motion(cfg: DualTalkConfig, given: bool) -> None:
  """Refuses input without the partner's motion for a model that reads it."""
  if not given and cfg.uses_partner_motion:
    raise ValueError(f"this model (ablation {cfg.ablation!r}) needs the partner's motion; only a "
                     "no_partner_motion model runs without it")


class JointEncoder(nnx.Module):
  """`joint_encoder`: DualSpeakerJointEncoder (ablations: see the module docstring)."""

  def __init__(self, cfg: DualTalkConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str = ""):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.use_mfcc = not cfg.uses_wav2vec2
    self.uses_partner_speech = cfg.uses_partner_speech
    if cfg.uses_wav2vec2:
      enc = dict(remat=remat, scan_layers=cfg.scan_layers,
                 feature_projection_layer_norm=cfg.feature_projection_layer_norm)
      self.audio_encoder1 = Wav2Vec2Model(cfg.wav2vec2, **enc, **kw)
      if cfg.uses_partner_speech:
        self.audio_encoder2 = Wav2Vec2Model(cfg.wav2vec2, **enc, **kw)
    audio_dim = cfg.wav2vec2.hidden_size if cfg.uses_wav2vec2 else mfcc.NUM_COEFFS
    self.audio_projection = layers.torch_linear(audio_dim, cfg.feature_dim, **kw)
    if cfg.uses_partner_motion:
      self.blendshape_encoder = nnx.Sequential(
          layers.torch_linear(cfg.motion_dim, cfg.blendshape_hidden, **kw),
          jax.nn.relu,
          layers.torch_linear(cfg.blendshape_hidden, cfg.feature_dim, **kw),
          jax.nn.relu,
      )
    self.frozen_encoders = False  # see `freeze_audio_encoders`

  @property
  def encoders(self) -> list[Wav2Vec2Model]:
    """The wav2vec2 encoders this model holds (none for `mfcc`, one for `no_partner_speech`)."""
    return [getattr(self, n) for n in ("audio_encoder1", "audio_encoder2") if hasattr(self, n)]

  def encode_audio(self, audio_self, audio_other, *, audio_self_lengths, audio_other_lengths, num_frames, max_frames):
    """The two encoders' last hidden states, each resampled to `max_frames`: (B, T, H) twice.

    `audio_encoder1` encodes the target's audio, `audio_encoder2` the partner's. With
    `frozen_encoders` set, the outputs carry no gradient. `mfcc`: MFCCs of both tracks;
    `no_partner_speech`: the partner's is None."""
    enc = dict(num_frames=num_frames, max_frames=max_frames)
    if self.use_mfcc:
      return (mfcc.mfcc_features(audio_self, audio_self_lengths, num_frames, max_frames),
              mfcc.mfcc_features(audio_other, audio_other_lengths, num_frames, max_frames))
    h_self, _ = self.audio_encoder1(audio_self, input_lengths=audio_self_lengths, **enc)
    h_other = None
    if hasattr(self, "audio_encoder2"):
      h_other, _ = self.audio_encoder2(audio_other, input_lengths=audio_other_lengths, **enc)
    if self.frozen_encoders:
      h_self = jax.lax.stop_gradient(h_self)
      h_other = None if h_other is None else jax.lax.stop_gradient(h_other)
    return h_self, h_other

  def __call__(self, h_self, h_other, motion_other):
    """Projects the encoders' outputs (`encode_audio`, or the feature cache's) and encodes the
    partner's motion: the projected target audio, partner audio and encoded partner motion;
    the latter two are None where the ablation removes them (h_other is then ignored)."""
    return (
        self.audio_projection(h_self),
        self.audio_projection(h_other) if self.uses_partner_speech else None,
        self.blendshape_encoder(motion_other) if hasattr(self, "blendshape_encoder") else None,
    )


def freeze_audio_encoders(model: "DualTalk") -> "DualTalk":
  """Frozen wav2vec2 mode: both encoders in eval mode (no dropout, SpecAugment or LayerDrop)
  and no gradient through them; the rest of the model keeps its mode. Call it after
  `model.train()`, which would put the encoders back in training mode. Returns `model`."""
  je = model.joint_encoder
  if not je.encoders:
    raise ValueError("the mfcc ablation has no wav2vec2 encoders to freeze")
  je.frozen_encoders = True
  for e in je.encoders:
    e.eval()
  return model


class TemporalEnhancer(nnx.Module):
  """`temporal_enhancer`: CrossModalTemporalEnhancer."""

  def __init__(self, cfg: DualTalkConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.cross_attention = layers.MultiheadAttention(cfg.feature_dim, cfg.cross_attention_heads, **kw)
    self.temporal_lstm = layers.LSTM(cfg.feature_dim, cfg.lstm_hidden, cfg.lstm_layers, **kw)

  def __call__(self, audio_other, motion_other, *, motion_mask, num_frames):
    x = self.cross_attention(audio_other, motion_other, motion_other, motion_mask)
    return self.temporal_lstm(x, num_frames)


class InteractionModule(nnx.Module):
  """`interaction_module`: DualSpeakerInteractionModule.

  Its 3 transformer layers (and the synthesis module's 1 decoder layer) stay a list, unlike
  the 2 x 24 wav2vec2 layers (`DualTalkConfig.scan_layers`): 4 layers of width 512 against 48
  of width 1024, so scanning them would save little compile time and would cost a second
  param layout for these modules in every converter."""

  def __init__(self, cfg: DualTalkConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str = ""):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    d = cfg.model_dim
    self.interaction_encoder = layers.TransformerEncoder(
        cfg.interaction_layers,
        lambda: layers.TransformerEncoderLayer(d, cfg.interaction_heads, cfg.interaction_ff, cfg.interaction_dropout, **kw),
        remat,
    )
    self.self_attention = layers.MultiheadAttention(d, cfg.interaction_heads, **kw)
    self.dropout = nnx.Dropout(cfg.self_attention_dropout, rngs=rngs)
    self.residual = cfg.interaction_residual

  def __call__(self, x, *, mask):
    x = self.interaction_encoder(x, mask)
    y = self.dropout(self.self_attention(x, x, x, mask))
    return x + y if self.residual else y


class SynthesisModule(nnx.Module):
  """`synthesis_module`: ExpressiveSynthesisModule."""

  def __init__(self, cfg: DualTalkConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str = ""):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    d = cfg.model_dim
    self.modulation_scale = cfg.modulation_scale
    self.synthesis_decoder = layers.TransformerDecoder(
        cfg.synthesis_layers,
        lambda: layers.TransformerDecoderLayer(d, cfg.interaction_heads, cfg.interaction_ff, cfg.interaction_dropout, **kw),
        remat,
    )
    if cfg.ablation != "no_modulation":
      self.modulation_layer = layers.torch_linear(d, d, **kw)
    self.blendshape_predictor = layers.torch_linear(d, cfg.motion_dim, **kw)

  def __call__(self, x, *, mask):
    d = self.synthesis_decoder(x, x, mask, mask)
    y = d + self.modulation_scale * self.modulation_layer(d) if hasattr(self, "modulation_layer") else d
    return self.blendshape_predictor(y)


class DualTalk(nnx.Module):
  """The full model: (audio_self, audio_other, motion_other) -> target motion (B, T, 56)."""

  def __init__(self, cfg: DualTalkConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str = ""):
    """`remat` ("" = off): a `jax.checkpoint_policies` name (e.g. "nothing_saveable",
    "dots_saveable") applied to every wav2vec2 encoder layer and interaction/synthesis
    transformer layer; params and numerics are the same, activation memory is traded for
    recomputation in the backward pass."""
    self.config = cfg
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.joint_encoder = JointEncoder(cfg, remat=remat, **kw)
    if cfg.ablation != "no_temporal_enhancer":
      self.temporal_enhancer = TemporalEnhancer(cfg, **kw)
    if cfg.ablation != "no_interaction":
      self.interaction_module = InteractionModule(cfg, remat=remat, **kw)
    self.synthesis_module = SynthesisModule(cfg, remat=remat, **kw)

  def __call__(self, audio_self, audio_other, motion_other, *, audio_self_lengths=None, audio_other_lengths=None,
               motion_other_lengths=None, num_frames=None, max_frames: int | None = None):
    """Predicts the target's motion.

    Args:
      audio_self, audio_other: (B, S) and (B, S') normalised 16 kHz audio, zero-padded
        (audio_other may be None for `no_partner_speech`).
      motion_other: (B, N, 56) partner motion (N need not equal T), zero-padded; None for
        `no_partner_motion` (the only variant that may omit it).
      *_lengths: (B,) valid samples / frames per clip; None = the whole row.
      num_frames: (B,) output frames per clip, `audio.num_frames(len(audio_self))` computed
        on the host in float64 as the released code does; None = from the padded width
        (only valid when audio_self_lengths is None).
      max_frames: static output length; None = max of num_frames (host values only).

    Returns:
      (B, max_frames, motion_dim); rows past num_frames[b] are padding.
    """
    b, s = audio_self.shape
    if num_frames is None:
      if audio_self_lengths is not None:
        raise ValueError("num_frames is required with audio_self_lengths (computed on the host in float64)")
      num_frames = np.full((b,), audio.num_frames(s), np.int32)
    if max_frames is None:
      max_frames = int(np.max(np.asarray(num_frames)))
    h_self, h_other = self.joint_encoder.encode_audio(
        audio_self, audio_other, audio_self_lengths=audio_self_lengths, audio_other_lengths=audio_other_lengths,
        num_frames=jnp.asarray(num_frames, jnp.int32), max_frames=max_frames)
    return self.from_features(h_self, h_other, motion_other, motion_other_lengths=motion_other_lengths,
                              num_frames=num_frames)

  def from_features(self, features_self, features_other, motion_other, *, motion_other_lengths=None, num_frames=None):
    """The forward pass from the two encoders' outputs instead of audio: what `__call__` runs
    after `joint_encoder.encode_audio`, and the entry of the wav2vec2 feature cache
    (dualtalk_jax/data/feature_cache.py), which stores those outputs.

    `features_self`, `features_other`: (B, T, H) last hidden states already resampled to the
    T output frames (features_other is ignored for `no_partner_speech`); `num_frames` (B,)
    defaults to all T frames; the other arguments as in `__call__`. Returns (B, T, motion_dim).
    """
    b, max_frames = np.shape(features_self)[:2]
    want = (b, max_frames, self.joint_encoder.audio_projection.in_features)
    for name, h in (("features_self", features_self), ("features_other", features_other)):
      if h is not None and tuple(h.shape) != want:
        raise ValueError(f"{name} has shape {tuple(h.shape)}, expected (batch, frames, hidden) = {want}")
    num_frames = jnp.asarray(np.full((b,), max_frames, np.int32) if num_frames is None else num_frames, jnp.int32)
    cfg = self.config
    require_partner_motion(cfg, motion_other is not None)
    if not cfg.uses_partner_motion:
      motion_other = motion_other_lengths = None  # never read
    elif motion_other_lengths is None:
      motion_other_lengths = jnp.full((b,), motion_other.shape[1], jnp.int32)
    mask = frame_mask(num_frames, max_frames)

    a_self, a_other, m_other = self.joint_encoder(features_self, features_other, motion_other)
    if cfg.ablation == "no_temporal_enhancer":
      m = resample_frames(m_other, jnp.asarray(motion_other_lengths, jnp.int32), num_frames, max_frames)
      x = jnp.where(mask[..., None], a_other + m, 0.0)
    else:
      if cfg.ablation == "no_partner_speech":
        query, kv, kv_mask = a_self, m_other, frame_mask(motion_other_lengths, motion_other.shape[1])
      elif cfg.ablation == "no_partner_motion":
        query, kv, kv_mask = a_other, a_other, mask
      else:
        query, kv, kv_mask = a_other, m_other, frame_mask(motion_other_lengths, motion_other.shape[1])
      x = self.temporal_enhancer(query, kv, motion_mask=kv_mask, num_frames=num_frames)
    h = jnp.concatenate([a_self, x], axis=-1)
    if hasattr(self, "interaction_module"):
      h = self.interaction_module(h, mask=mask)
    return self.synthesis_module(h, mask=mask)


@functools.lru_cache(maxsize=4)
def abstract_model(cfg: DualTalkConfig, **kw) -> DualTalk:
  """The model with shapes only (nothing allocated), e.g. to count parameters or to map keys.

  Cached per config (tracing the large model takes seconds): treat it as read-only."""
  return nnx.eval_shape(lambda: DualTalk(cfg, rngs=make_rngs(0), **kw))


def count_params(model: nnx.Module) -> int:
  return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
