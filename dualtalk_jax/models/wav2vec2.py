"""Flax NNX wav2vec2 encoder, numerically equivalent to `transformers.Wav2Vec2Model`.

Both published variants are covered: `feat_extract_norm="layer"` +
`do_stable_layer_norm=True` (facebook/wav2vec2-large-960h-lv60-self, the encoder of the
released DualTalk) and `feat_extract_norm="group"` + `do_stable_layer_norm=False`
(facebook/wav2vec2-base-960h). Module and parameter names follow the Hugging Face module
tree, so a HF state dict maps onto this model by fixed rules:

  * `nnx.Linear` kernel (in, out)          <-> torch `weight.T`
  * `nnx.Conv` kernel (k, in, out)         <-> torch `weight` (out, in, k)
  * `nnx.LayerNorm` / `nnx.GroupNorm` scale <-> torch `weight`; biases identical
  * `encoder.pos_conv_embed.conv.{weight_g, weight_v, bias}` are kept in torch layout
    (weight_g (1, 1, K), weight_v (H, H // groups, K)), so they convert as the identity.
  * `masked_spec_embed` (H,) identical.

Differences from the stock HF forward, all deliberate:

  * `num_frames` (the released DualTalk change): the conv features of each row are
    linearly resampled along time to `num_frames[i]` frames, exactly like torch
    `F.interpolate(mode="linear", align_corners=True)`, before `feature_projection`.
  * Padded batches are processed per row: `input_lengths` gives each row's valid samples,
    the GroupNorm of the "group" variant takes its statistics over each row's valid
    frames only (HF uses all frames), and SpecAugment spans are drawn inside each row's
    valid frames. A padded row gives the same valid frames as that row alone. Padded
    output frames are not zeroed (as in HF); use the returned `frame_mask`.
  * The feature extractor output is wrapped in `jax.lax.stop_gradient` (it is frozen in
    DualTalk training); set `model.freeze_feature_encoder = False` to train it.

Randomness (training mode only): the `nnx.Dropout`s outside the encoder layers, SpecAugment
and the encoder's per-layer keys (LayerDrop and the layers' dropouts, see `Wav2Vec2Encoder`)
draw from streams forked at construction from the `'dropout'` stream of the `rngs` passed in
(falling back to `'default'`, as `nnx.Rngs` does); parameters are initialised from the
`'params'` stream (same fallback). So `nnx.Rngs(0)` or `nnx.Rngs(params=0, dropout=1)`
both work. The stored streams advance on every training call (under `nnx.jit` too);
`nnx.reseed(model, dropout=seed)` resets them for a reproducible pass (with
`nnx.Rngs(0)` the streams carry the tag 'default': use `nnx.reseed(model, default=seed)`).
Eval mode draws nothing.

Training / inference switch: the NNX idiom. `model.train()` / `model.eval()` (or
`nnx.view(model, deterministic=...)`) set `deterministic` on every submodule: the
`nnx.Dropout`s, `Wav2Vec2Model` (SpecAugment) and `Wav2Vec2Encoder` (LayerDrop). Like
`nnx.Dropout`, a freshly built model is in training mode; call `model.eval()` for
inference.

Initialisation mirrors HF `_init_weights` (exact match not needed, weights are usually
loaded): Linear kernels normal(0.02) with zero bias, except `feature_projection.projection`
(uniform +-1/sqrt(in), kernel and bias); conv kernels kaiming-normal (fan_in, gain
sqrt(2)) with bias uniform +-sqrt(1/(in*k)); positional conv `weight_v` normal with std
sqrt(4/(K*H)), `weight_g` = ||weight_v|| (so the effective weight is weight_v), zero
bias; LayerNorm/GroupNorm ones/zeros; `masked_spec_embed` uniform [0, 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from dualtalk_jax.config import Wav2Vec2Config
from dualtalk_jax.models import xla_cpu
from dualtalk_jax.models.layers import call_layer, check_remat

Array = jax.Array

# torch.nn.LayerNorm / GroupNorm default eps; HF's conv-layer norms do not pass
# config.layer_norm_eps (only feature_projection and the encoder do).
_CONV_NORM_EPS = 1e-5


def gelu(x: Array) -> Array:
  """The exact (erf) GELU of HF `ACT2FN["gelu"]`."""
  return jax.nn.gelu(x, approximate=False)


def _params_key(rngs: nnx.Rngs) -> Array:
  return rngs.params()


def _normal(std: float):
  return nnx.initializers.normal(stddev=std)


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def feat_extract_output_lengths(config: Wav2Vec2Config, input_lengths):
  """HF `_get_feat_extract_output_lengths`: floor((L - k) / s) + 1 per conv layer.

  Works on Python ints and integer arrays alike.
  """
  for k, s in zip(config.conv_kernel, config.conv_stride):
    input_lengths = (input_lengths - k) // s + 1
  return input_lengths


# ---------------------------------------------------------------------------------------
# Pure functions: resampling and SpecAugment span sampling (jit-friendly, traced lengths)
# ---------------------------------------------------------------------------------------


def resample_frames(features: Array, lengths: Array, num_frames: Array, max_frames: int) -> Array:
  """Per-row linear resampling along time, as torch `F.interpolate(mode='linear', align_corners=True)`.

  Args:
    features: (B, L, C); row i holds `lengths[i]` valid frames, the rest is ignored.
    lengths: (B,) int, valid input frames per row (>= 1 for meaningful output).
    num_frames: (B,) int, output frames per row (<= max_frames).
    max_frames: static output length; frames >= num_frames[i] are zero.

  Returns:
    (B, max_frames, C) in the dtype of `features`.
  """
  b, l_static, _ = features.shape
  lengths = jnp.asarray(lengths, jnp.int32).reshape(b)
  num_frames = jnp.asarray(num_frames, jnp.int32).reshape(b)
  # torch: scale = float(L - 1) / (n - 1) if n > 1 else 0; src = scale * j (float32);
  # i0 = min(floor(src), L - 1); lambda = clamp(src - i0, 0, 1); i1 = i0 + (i0 < L - 1).
  denom = jnp.maximum(num_frames - 1, 1).astype(jnp.float32)
  scale = jnp.where(num_frames > 1, (lengths - 1).astype(jnp.float32) / denom, 0.0)
  j = jnp.arange(max_frames, dtype=jnp.float32)
  src = scale[:, None] * j[None, :]  # (B, T)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), lengths[:, None] - 1)
  lam1 = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
  i1 = i0 + (i0 < lengths[:, None] - 1).astype(jnp.int32)
  i0 = jnp.clip(i0, 0, l_static - 1)
  i1 = jnp.clip(i1, 0, l_static - 1)
  x = features.astype(jnp.float32)
  x0 = jnp.take_along_axis(x, i0[:, :, None], axis=1)
  x1 = jnp.take_along_axis(x, i1[:, :, None], axis=1)
  lam1 = lam1[:, :, None]
  out = x0 * (1.0 - lam1) + x1 * lam1
  valid = jnp.arange(max_frames)[None, :] < num_frames[:, None]
  out = jnp.where(valid[:, :, None], out, 0.0)
  return out.astype(features.dtype)


def compute_time_mask(
    key: Array,
    lengths: Array,
    sequence_length: int,
    *,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
) -> Array:
  """SpecAugment time mask with HF `_compute_mask_indices` semantics, in JAX.

  One uniform `epsilon` per call (as HF); per row `num = max(min_masks,
  int(mask_prob * len / mask_length + epsilon))`, capped so that `num * mask_length <=
  sequence_length` and `num <= len - mask_length + 1`; `num` distinct span starts drawn
  uniformly from `[0, len - mask_length]`; spans of `mask_length` frames. Unlike HF, a
  row with no room for a span masks nothing (HF marks its last, padded frame).

  Args:
    key: a PRNG key.
    lengths: (B,) int valid frames per row.
    sequence_length: static padded length T.

  Returns:
    (B, T) bool, True = masked (always inside the row's valid frames).
  """
  b = lengths.shape[0]
  t = sequence_length
  lengths = jnp.asarray(lengths, jnp.int32)
  k_eps, k_perm = jax.random.split(key)
  eps = jax.random.uniform(k_eps, (), jnp.float32)

  def num_spans(length):
    length = jnp.asarray(length, jnp.int32)
    n = jnp.floor(mask_prob * length.astype(jnp.float32) / mask_length + eps).astype(jnp.int32)
    n = jnp.maximum(n, min_masks)
    n = jnp.where(n * mask_length > t, t // mask_length, n)
    room = length - (mask_length - 1)
    n = jnp.where(room < n, jnp.maximum(room, 0), n)
    return n

  n = num_spans(lengths)
  n = jnp.where(num_spans(t) == 0, 0, n)  # HF returns an empty mask then
  pos = jnp.arange(t)[None, :]
  candidate = pos < (lengths - (mask_length - 1))[:, None]
  scores = jnp.where(candidate, jax.random.uniform(k_perm, (b, t)), 2.0)
  rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
  starts = (rank < n[:, None]) & candidate
  # mask[t] = any(starts[t - mask_length + 1 .. t]), via a windowed cumulative sum.
  c = jnp.cumsum(starts.astype(jnp.int32), axis=1)
  c_shift = jnp.pad(c, ((0, 0), (mask_length, 0)))[:, :t]
  return (c - c_shift) > 0


# ---------------------------------------------------------------------------------------
# Feature extractor
# ---------------------------------------------------------------------------------------


class Wav2Vec2ConvLayer(nnx.Module):
  """conv -> [LayerNorm over channels | per-channel GroupNorm over valid time] -> GELU.

  `norm` is "layer", "group" or None (HF Wav2Vec2{LayerNorm,GroupNorm,NoLayerNorm}ConvLayer).
  """

  def __init__(self, config: Wav2Vec2Config, layer_id: int, norm: str | None, *, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32, precision=None):
    in_dim = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
    out_dim = config.conv_dim[layer_id]
    k = config.conv_kernel[layer_id]
    self.norm = norm
    self.conv = nnx.Conv(
        in_dim, out_dim, kernel_size=(k,), strides=(config.conv_stride[layer_id],), padding="VALID",
        use_bias=config.conv_bias, dtype=dtype, param_dtype=param_dtype, precision=precision,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_in", "normal"),
        bias_init=_uniform(math.sqrt(1.0 / (in_dim * k))), rngs=rngs)
    if norm == "layer":
      self.layer_norm = nnx.LayerNorm(out_dim, epsilon=_CONV_NORM_EPS, use_fast_variance=False, dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
    elif norm == "group":
      self.layer_norm = nnx.GroupNorm(out_dim, num_groups=out_dim, epsilon=_CONV_NORM_EPS, use_fast_variance=False,
                                      dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    elif norm is not None:
      raise ValueError(f"unknown conv norm {norm!r}")

  def __call__(self, x: Array, valid: Array | None = None) -> Array:
    """x (B, L_in, C_in) -> (B, L_out, C_out); `valid` (B, L_out) bool is used by GroupNorm."""
    x = self.conv(x)
    if self.norm == "layer":
      x = self.layer_norm(x)
    elif self.norm == "group":
      mask = None if valid is None else jnp.broadcast_to(valid[:, :, None], x.shape)
      x = self.layer_norm(x, mask=mask)
    return gelu(x)


class Wav2Vec2FeatureEncoder(nnx.Module):
  """The 7-layer conv stack: (B, S) audio -> (B, L, conv_dim[-1]) features at 50 Hz."""

  def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               precision=None):
    self.config = config
    self.dtype = dtype
    n = len(config.conv_dim)
    if config.feat_extract_norm == "group":
      norms = ["group"] + [None] * (n - 1)
    else:
      norms = ["layer"] * n
    self.conv_layers = nnx.List([
        Wav2Vec2ConvLayer(config, i, norms[i], rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        for i in range(n)
    ])

  def __call__(self, input_values: Array, input_lengths: Array | None = None) -> Array:
    """`input_lengths` (B,) valid samples, used for the GroupNorm statistics; None = all."""
    x = input_values[:, :, None].astype(self.dtype)
    lengths = input_lengths
    for layer, k, s in zip(self.conv_layers, self.config.conv_kernel, self.config.conv_stride):
      valid = None
      if lengths is not None:
        lengths = (lengths - k) // s + 1
        if layer.norm == "group":
          out_len = (x.shape[1] - k) // s + 1
          valid = jnp.arange(out_len)[None, :] < lengths[:, None]
      x = layer(x, valid)
    return x


# ---------------------------------------------------------------------------------------
# Feature projection, positional conv, attention, feed-forward, layers, encoder
# ---------------------------------------------------------------------------------------


class Wav2Vec2FeatureProjection(nnx.Module):
  """LayerNorm over each conv frame's channels, then the projection to `hidden_size`.

  `layer_norm=False` (not in HF; `DualTalkConfig.feature_projection_layer_norm`) leaves
  the LayerNorm out, params included, so the projection sees each frame's scale."""

  def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               precision=None, layer_norm: bool = True):
    c = config.conv_dim[-1]
    bound = math.sqrt(1.0 / c)
    self.layer_norm = nnx.LayerNorm(c, epsilon=config.layer_norm_eps, use_fast_variance=False, dtype=dtype,
                                    param_dtype=param_dtype, rngs=rngs) if layer_norm else None
    self.projection = nnx.Linear(c, config.hidden_size, kernel_init=_uniform(bound), bias_init=_uniform(bound),
                                 dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
    self.dropout = nnx.Dropout(config.feat_proj_dropout, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    if self.layer_norm is not None:
      x = self.layer_norm(x)
    return self.dropout(self.projection(x))


class WeightNormConv1d(nnx.Module):
  """Grouped 1-D conv with torch weight normalisation (dim=2), params in torch layout.

  weight = weight_g * weight_v / ||weight_v||, the norm over dims 0 and 1, per kernel tap.
  Input and output are (B, T, C); padding `padding` frames on both sides.
  """

  def __init__(self, channels: int, kernel_size: int, groups: int, padding: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32, precision=None):
    self.kernel_size = kernel_size
    self.groups = groups
    self.padding = padding
    self.dtype = dtype
    self.precision = precision
    std = 2.0 * math.sqrt(1.0 / (kernel_size * channels))
    v = std * jax.random.normal(_params_key(rngs), (channels, channels // groups, kernel_size), jnp.float32)
    g = jnp.sqrt(jnp.sum(v * v, axis=(0, 1), keepdims=True))
    self.weight_g = nnx.Param(g.astype(param_dtype))
    self.weight_v = nnx.Param(v.astype(param_dtype))
    self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))

  def weight(self) -> Array:
    v = self.weight_v[...].astype(jnp.float32)
    g = self.weight_g[...].astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(v * v, axis=(0, 1), keepdims=True))
    return v * (g / norm)

  def __call__(self, x: Array) -> Array:
    w = self.weight().astype(self.dtype)
    y = xla_cpu.grouped_conv1d(x.astype(self.dtype), w, self.padding, self.groups, self.precision)
    return y + self.bias[...].astype(self.dtype)


class Wav2Vec2PositionalConvEmbedding(nnx.Module):

  def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               precision=None):
    k = config.num_conv_pos_embeddings
    self.conv = WeightNormConv1d(config.hidden_size, k, config.num_conv_pos_embedding_groups, k // 2, rngs=rngs,
                                 dtype=dtype, param_dtype=param_dtype, precision=precision)
    self.num_pad_remove = 1 if k % 2 == 0 else 0

  def __call__(self, x: Array) -> Array:
    y = self.conv(x)
    if self.num_pad_remove:
      y = y[:, : -self.num_pad_remove]
    return gelu(y)


class Wav2Vec2Attention(nnx.Module):
  """Multi-head self-attention with a key padding mask; softmax in float32."""

  def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               precision=None):
    h = config.hidden_size
    self.num_heads = config.num_attention_heads
    self.head_dim = h // self.num_heads
    self.scaling = self.head_dim**-0.5
    self.precision = precision
    self.dtype = dtype

    def lin():
      return nnx.Linear(h, h, kernel_init=_normal(0.02), bias_init=nnx.initializers.zeros_init(), dtype=dtype,
                        param_dtype=param_dtype, precision=precision, rngs=rngs)

    self.k_proj = lin()
    self.v_proj = lin()
    self.q_proj = lin()
    self.out_proj = lin()
    self.attn_dropout = nnx.Dropout(config.attention_dropout)  # key per call (Wav2Vec2EncoderLayer)

  def __call__(self, x: Array, key_mask: Array | None = None, dropout_key: Array | None = None) -> Array:
    b, t, _ = x.shape
    shape = (b, t, self.num_heads, self.head_dim)
    q = self.q_proj(x).reshape(shape)
    k = self.k_proj(x).reshape(shape)
    v = self.v_proj(x).reshape(shape)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision,
                        preferred_element_type=jnp.float32) * self.scaling
    if key_mask is not None:
      scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = self.attn_dropout(probs, rngs=dropout_key)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, precision=self.precision)
    return self.out_proj(out.reshape(b, t, -1))


class Wav2Vec2FeedForward(nnx.Module):

  def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               precision=None):
    kw = dict(kernel_init=_normal(0.02), bias_init=nnx.initializers.zeros_init(), dtype=dtype, param_dtype=param_dtype,
              precision=precision, rngs=rngs)
    self.intermediate_dropout = nnx.Dropout(config.activation_dropout)  # keys per call
    self.intermediate_dense = nnx.Linear(config.hidden_size, config.intermediate_size, **kw)
    self.output_dense = nnx.Linear(config.intermediate_size, config.hidden_size, **kw)
    self.output_dropout = nnx.Dropout(config.hidden_dropout)

  def __call__(self, x: Array, dropout_keys: tuple[Array | None, Array | None] = (None, None)) -> Array:
    x = self.intermediate_dropout(gelu(self.intermediate_dense(x)), rngs=dropout_keys[0])
    return self.output_dropout(self.output_dense(x), rngs=dropout_keys[1])


class Wav2Vec2EncoderLayer(nnx.Module):
  """HF Wav2Vec2EncoderLayer (post-LN) or, with `stable=True`, ...StableLayerNorm (pre-LN).

  Its four dropouts hold no rng stream: in training mode the layer takes one key per call
  (`Wav2Vec2Encoder` hands each layer its own), so a stack of layers can be scanned."""

  def __init__(self, config: Wav2Vec2Config, *, stable: bool, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32, precision=None):
    self.stable = stable
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    ln = dict(epsilon=config.layer_norm_eps, use_fast_variance=False, **kw)
    self.attention = Wav2Vec2Attention(config, precision=precision, **kw)
    self.dropout = nnx.Dropout(config.hidden_dropout)
    self.layer_norm = nnx.LayerNorm(config.hidden_size, **ln)
    self.feed_forward = Wav2Vec2FeedForward(config, precision=precision, **kw)
    self.final_layer_norm = nnx.LayerNorm(config.hidden_size, **ln)

  def __call__(self, x: Array, key_mask: Array | None = None, key: Array | None = None) -> Array:
    """`key`: the layer's dropout key (training mode; None in eval mode)."""
    k_attn, k_hidden, k_inter, k_out = (None,) * 4 if key is None else tuple(jax.random.split(key, 4))
    ff_keys = (k_inter, k_out)
    if self.stable:
      h = self.dropout(self.attention(self.layer_norm(x), key_mask, k_attn), rngs=k_hidden)
      x = x + h
      return x + self.feed_forward(self.final_layer_norm(x), ff_keys)
    h = self.dropout(self.attention(x, key_mask, k_attn), rngs=k_hidden)
    x = self.layer_norm(x + h)
    x = x + self.feed_forward(x, ff_keys)
    return self.final_layer_norm(x)


class Wav2Vec2Encoder(nnx.Module):
  """HF Wav2Vec2Encoder / Wav2Vec2EncoderStableLayerNorm (by config.do_stable_layer_norm).

  `scan_layers` (default) stores the layers as one `Wav2Vec2EncoderLayer` whose params have
  a leading layer axis (`layers.attention.q_proj.kernel` is (L, H, H); built with
  `nnx.vmap`) and runs them as one `nnx.scan`: XLA compiles one layer instead of L (the
  large step's compile time). `scan_layers=False` keeps `layers` as a list of L modules
  (`layers.{i}....`), run one after the other, for debugging. Same values, same random
  draws and same init either way; only the param layout differs
  (`dualtalk_jax.convert.table.to_layout` converts one into the other exactly).

  Training-mode randomness per call: one key from the encoder's LayerDrop stream, split
  into one key per layer; a layer's key gives its LayerDrop draw (one uniform per layer,
  as HF) and its dropout keys. Both are scanned inputs, so they are a pure function of the
  stream (reseeded every train step). `remat` wraps each layer (the scanned body).
  `deterministic` (toggled by `.train()` / `.eval()`) switches LayerDrop.
  """

  def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               precision=None, remat: str = "", scan_layers: bool = True):
    self.stable = config.do_stable_layer_norm
    self.layerdrop = float(config.layerdrop)
    self.deterministic = False
    self.remat = check_remat(remat)  # "" or a jax.checkpoint_policies name, per layer
    self.scan_layers = bool(scan_layers)
    self.num_layers = config.num_hidden_layers
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
    self.pos_conv_embed = Wav2Vec2PositionalConvEmbedding(config, **kw)
    self.layer_norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False,
                                    rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.dropout = nnx.Dropout(config.hidden_dropout, rngs=rngs)

    def make_layer(key):
      return Wav2Vec2EncoderLayer(config, stable=self.stable, rngs=nnx.Rngs(params=key), dtype=dtype,
                                  param_dtype=param_dtype, precision=precision)

    keys = jax.random.split(_params_key(rngs), self.num_layers)  # layer i's init: keys[i], in both layouts
    if self.scan_layers:
      self.layers = nnx.vmap(make_layer, in_axes=0, out_axes=0)(keys)
    else:
      self.layers = nnx.List([make_layer(k) for k in keys])
    self.rngs = rngs["dropout"].fork()  # LayerDrop and layer dropout draws

  def set_view(self, deterministic: bool | None = None):
    """Used by `nnx.view`."""
    if deterministic is not None:
      self.deterministic = deterministic

  def _layer_inputs(self) -> tuple[Array, Array] | None:
    """Per-layer (dropout key (L,), LayerDrop skip (L,) bool) in training mode; None in eval mode."""
    if self.deterministic:
      return None
    keys = jax.random.split(self.rngs(), self.num_layers)
    k_skip, k_layer = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    skip = jax.vmap(jax.random.uniform)(k_skip) < self.layerdrop  # one draw per layer, as HF
    return k_layer, skip

  def _run_layer(self, layer: Wav2Vec2EncoderLayer, x: Array, frame_mask: Array | None, key: Array | None,
                 skip: Array | None) -> Array:
    """One layer with its LayerDrop, under `remat` when set (the scanned body)."""
    def step(layer, x, frame_mask, key, skip):
      if skip is None or self.layerdrop <= 0.0:
        return layer(x, frame_mask, key)
      return xla_cpu.skip_layer_or_run(skip, lambda x_: layer(x_, frame_mask, key), x)

    return call_layer(step, layer, self.remat, x, frame_mask, key, skip, in_scan=self.scan_layers)

  def __call__(self, x: Array, frame_mask: Array | None = None) -> Array:
    if frame_mask is not None:
      x = jnp.where(frame_mask[:, :, None], x, jnp.zeros((), x.dtype))  # HF: hidden_states[~mask] = 0
    x = x + self.pos_conv_embed(x).astype(x.dtype)
    if not self.stable:
      x = self.layer_norm(x)
    x = self.dropout(x)
    per_layer = self._layer_inputs()
    if self.scan_layers:
      @nnx.scan(in_axes=(0, nnx.Carry, None, 0), out_axes=nnx.Carry)
      def run_all(layer, x, frame_mask, per_layer):
        key, skip = (None, None) if per_layer is None else per_layer
        return self._run_layer(layer, x, frame_mask, key, skip)

      x = run_all(self.layers, x, frame_mask, per_layer)
    else:
      for i, layer in enumerate(self.layers):
        key, skip = (None, None) if per_layer is None else (per_layer[0][i], per_layer[1][i])
        x = self._run_layer(layer, x, frame_mask, key, skip)
    if self.stable:
      x = self.layer_norm(x)
    return x


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class Wav2Vec2Model(nnx.Module):
  """wav2vec2 encoder: (B, S) normalised 16 kHz audio -> ((B, T, H) hidden states, (B, T) frame mask).

  Submodules (HF names): `feature_extractor.conv_layers[i].{conv, layer_norm}`,
  `feature_projection.{layer_norm, projection, dropout}`, `masked_spec_embed`,
  `encoder.{pos_conv_embed.conv.{weight_g, weight_v, bias}, layer_norm, dropout, layers}`,
  `layers` (one stacked module, or a list with `scan_layers=False`) `{attention.{q,k,v,out}_proj,
  dropout, layer_norm, feed_forward.{intermediate_dense, intermediate_dropout, output_dense,
  output_dropout}, final_layer_norm}`.

  Rng streams: 'params' (init) and 'dropout' (dropout, SpecAugment, LayerDrop; forked
  at construction and stored in the modules). `deterministic` (toggled by `.train()` /
  `.eval()` / `nnx.view`) switches SpecAugment here; the model starts in training mode.
  """

  def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               precision=None, freeze_feature_encoder: bool = True, remat: str = "", scan_layers: bool = True,
               feature_projection_layer_norm: bool = True):
    """`dtype` is the compute dtype (norm statistics and softmax stay float32); `precision`
    is passed to every matmul/conv (e.g. `jax.lax.Precision.HIGHEST` for f32 parity on GPU);
    `remat` ("" = off) a `jax.checkpoint_policies` name for each encoder layer;
    `scan_layers`: the encoder layers stacked and scanned (default) or a list of modules
    (see `Wav2Vec2Encoder`; it changes the param layout, not the values);
    `feature_projection_layer_norm=False`: no `feature_projection.layer_norm` (not HF's
    architecture: `Wav2Vec2FeatureProjection`)."""
    self.config = config
    self.dtype = dtype
    self.deterministic = False
    self.freeze_feature_encoder = freeze_feature_encoder
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
    self.feature_extractor = Wav2Vec2FeatureEncoder(config, **kw)
    self.feature_projection = Wav2Vec2FeatureProjection(config, layer_norm=feature_projection_layer_norm, **kw)
    self.masked_spec_embed = nnx.Param(jax.random.uniform(_params_key(rngs), (config.hidden_size,), param_dtype))
    self.encoder = Wav2Vec2Encoder(config, remat=remat, scan_layers=scan_layers, **kw)
    self.rngs = rngs["dropout"].fork()  # SpecAugment draws

  def set_view(self, deterministic: bool | None = None):
    """Used by `nnx.view`."""
    if deterministic is not None:
      self.deterministic = deterministic

  def num_conv_frames(self, num_samples):
    """Conv output frames for `num_samples` input samples (int or int array)."""
    return feat_extract_output_lengths(self.config, num_samples)

  def extract_features(self, input_values: Array, input_lengths: Array | None = None) -> tuple[Array, Array]:
    """Conv features (B, L, C) (stop-gradient'ed when frozen) and valid conv frames (B,)."""
    b, s = input_values.shape
    if input_lengths is None:
      lengths = jnp.full((b,), s, jnp.int32)
    else:
      lengths = jnp.minimum(jnp.asarray(input_lengths, jnp.int32).reshape(b), s)
    features = self.feature_extractor(input_values, lengths if input_lengths is not None else None)
    if self.freeze_feature_encoder:
      features = jax.lax.stop_gradient(features)
    conv_lengths = jnp.clip(feat_extract_output_lengths(self.config, lengths), 0, features.shape[1])
    return features, conv_lengths

  def mask_hidden_states(self, hidden_states: Array, frame_lengths: Array) -> tuple[Array, Array | None]:
    """SpecAugment time masking (training mode only); returns (hidden states, mask or None)."""
    cfg = self.config
    if self.deterministic or not cfg.apply_spec_augment or cfg.mask_time_prob <= 0:
      return hidden_states, None
    mask = compute_time_mask(self.rngs(), frame_lengths, hidden_states.shape[1], mask_prob=cfg.mask_time_prob,
                             mask_length=cfg.mask_time_length, min_masks=cfg.mask_time_min_masks)
    embed = self.masked_spec_embed[...].astype(hidden_states.dtype)
    return jnp.where(mask[:, :, None], embed, hidden_states), mask

  def __call__(
      self,
      input_values: Array,
      *,
      input_lengths: Array | None = None,
      num_frames: Array | None = None,
      max_frames: int | None = None,
  ) -> tuple[Array, Array]:
    """Encodes audio.

    Args:
      input_values: (B, S) float audio, already normalised (zero-mean, unit-variance).
      input_lengths: (B,) int valid samples per row; None = all S.
      num_frames: (B,) int; if given, each row's conv features are linearly resampled
        (torch `F.interpolate(mode='linear', align_corners=True)`) to that many frames
        before `feature_projection` (the released DualTalk change). Requires `max_frames`.
      max_frames: static padded output length when `num_frames` is given (num_frames is
        clipped to it).

    Returns:
      hidden_states (B, T, H) in `dtype` (the HF `last_hidden_state`), and frame_mask
      (B, T) bool of valid frames (num_frames[i], or the conv length of row i). T is
      `max_frames`, or the conv length of S when `num_frames` is None.
    """
    if input_values.ndim != 2:
      raise ValueError(f"input_values must be (batch, samples), got shape {input_values.shape}")
    if self.num_conv_frames(input_values.shape[1]) < 1:
      raise ValueError(f"{input_values.shape[1]} samples are too few for the conv feature extractor")
    features, conv_lengths = self.extract_features(input_values, input_lengths)
    b = features.shape[0]
    if num_frames is not None:
      if max_frames is None:
        raise ValueError("max_frames (static int) is required with num_frames")
      num_frames = jnp.minimum(jnp.asarray(num_frames, jnp.int32).reshape(b), max_frames)
      features = resample_frames(features, conv_lengths, num_frames, int(max_frames))
      frame_lengths = num_frames
    else:
      if max_frames is not None:
        raise ValueError("max_frames is only used with num_frames")
      frame_lengths = conv_lengths
    t = features.shape[1]
    frame_mask = jnp.arange(t)[None, :] < frame_lengths[:, None]
    hidden_states = self.feature_projection(features)
    hidden_states, _ = self.mask_hidden_states(hidden_states, frame_lengths)
    hidden_states = self.encoder(hidden_states, frame_mask)
    return hidden_states, frame_mask
