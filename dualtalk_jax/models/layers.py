"""Torch-compatible building blocks in Flax NNX.

Each class reproduces the forward pass of the torch module it is named after, with the
same submodule names, so a released state dict maps onto it almost one to one
(`dualtalk_jax/convert` holds the table). Differences of layout are kept to three:
linear kernels are (in, out), `torch.nn.MultiheadAttention`'s packed `in_proj` is three
Linears `q_proj/k_proj/v_proj`, and `torch.nn.LSTM`'s `weight_ih_l0`/`bias_ih_l0` pairs are
Linears `ih_l0`/`hh_l0` (same gate order i, f, g, o; both biases kept, as torch adds them).

Masks are boolean "valid" masks (True = a real frame), the opposite of torch's
`key_padding_mask`. Initialisation follows torch's defaults so training from scratch
behaves as the released code's does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

_NEG_INF = -1e30  # large finite negative: masked keys, safe under bf16/f32 softmax

# `remat` names accepted by the layer stacks: policies of `jax.checkpoint_policies` that
# are policies themselves (not factories taking names). "" = no rematerialisation.
REMAT_POLICIES = ("nothing_saveable", "everything_saveable", "dots_saveable", "checkpoint_dots",
                  "dots_with_no_batch_dims_saveable", "checkpoint_dots_with_no_batch_dims")


def check_remat(remat: str) -> str:
  if remat and remat not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {remat!r}; use '' (off) or one of {REMAT_POLICIES}")
  return remat


def call_layer(fn, layer, remat: str, *args, in_scan: bool = False):
  """`fn(layer, *args)`, under `nnx.remat` with the named `jax.checkpoint_policies` policy
  when `remat` is set (activations inside are recomputed in the backward pass). `in_scan`:
  the call is a scan's body, where XLA cannot CSE the recomputation away, so jax's
  `prevent_cse` guard (costly there) is dropped, as `jax.checkpoint` recommends."""
  if not remat:
    return fn(layer, *args)
  policy = getattr(jax.checkpoint_policies, remat)
  return nnx.remat(fn, policy=policy, prevent_cse=not in_scan)(layer, *args)


def _call(layer, *args):
  return layer(*args)


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_linear(
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
) -> nnx.Linear:
  """`nnx.Linear` initialised like `torch.nn.Linear` (U(+-1/sqrt(fan_in)) for both)."""
  bound = 1.0 / math.sqrt(in_features)
  return nnx.Linear(
      in_features,
      out_features,
      use_bias=use_bias,
      kernel_init=_uniform(bound),
      bias_init=_uniform(bound),
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
  )


def torch_layer_norm(dim: int, *, rngs: nnx.Rngs, eps: float = 1e-5, dtype=jnp.float32, param_dtype=jnp.float32):
  """`nnx.LayerNorm` with torch's default epsilon (1e-5; flax defaults to 1e-6)."""
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class MultiheadAttention(nnx.Module):
  """`torch.nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True)`.

  torch initialises the packed in_proj with xavier_uniform over the (3D, D) matrix and its
  bias with zeros; out_proj keeps Linear's weight init with a zero bias.
  """

  def __init__(
      self,
      embed_dim: int,
      num_heads: int,
      *,
      dropout: float = 0.0,
      rngs: nnx.Rngs,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
  ):
    if embed_dim % num_heads:
      raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    self.num_heads = num_heads
    self.head_dim = embed_dim // num_heads
    self.dtype = dtype
    xavier = _uniform(math.sqrt(6.0 / (embed_dim + 3 * embed_dim)))
    zeros = nnx.initializers.zeros_init()
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = nnx.Linear(embed_dim, embed_dim, kernel_init=xavier, bias_init=zeros, **kw)
    self.k_proj = nnx.Linear(embed_dim, embed_dim, kernel_init=xavier, bias_init=zeros, **kw)
    self.v_proj = nnx.Linear(embed_dim, embed_dim, kernel_init=xavier, bias_init=zeros, **kw)
    self.out_proj = torch_linear(embed_dim, embed_dim, **kw)
    self.out_proj.bias[...] = jnp.zeros_like(self.out_proj.bias[...])
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, query, key, value, key_mask=None):
    """query (B, T, D), key/value (B, S, D), key_mask (B, S) bool valid -> (B, T, D)."""
    b, t, _ = query.shape
    s = key.shape[1]
    h, hd = self.num_heads, self.head_dim
    q = self.q_proj(query).reshape(b, t, h, hd)
    k = self.k_proj(key).reshape(b, s, h, hd)
    v = self.v_proj(value).reshape(b, s, h, hd)
    q = q * jnp.asarray(hd**-0.5, q.dtype)
    logits = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32)
    if key_mask is not None:
      logits = jnp.where(key_mask[:, None, None, :], logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = self.dropout(weights)
    out = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, h * hd)
    return self.out_proj(out)


def _feed_forward(layer, x):
  """linear1 -> ReLU -> dropout -> linear2, the block shared by torch's transformer layers."""
  return layer.linear2(layer.dropout(jax.nn.relu(layer.linear1(x))))


class TransformerEncoderLayer(nnx.Module):
  """`torch.nn.TransformerEncoderLayer(d, nhead, ff, dropout, 'relu', batch_first=True)`, post-norm."""

  def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, *, rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, **kw)
    self.linear1 = torch_linear(d_model, dim_feedforward, **kw)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.linear2 = torch_linear(dim_feedforward, d_model, **kw)
    self.norm1 = torch_layer_norm(d_model, **kw)
    self.norm2 = torch_layer_norm(d_model, **kw)
    self.dropout1 = nnx.Dropout(dropout, rngs=rngs)
    self.dropout2 = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x, mask=None):
    x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, mask)))
    return self.norm2(x + self.dropout2(_feed_forward(self, x)))


class TransformerDecoderLayer(nnx.Module):
  """`torch.nn.TransformerDecoderLayer(d, nhead, ff, dropout, 'relu', batch_first=True)`, post-norm."""

  def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, *, rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, **kw)
    self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, **kw)
    self.linear1 = torch_linear(d_model, dim_feedforward, **kw)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.linear2 = torch_linear(dim_feedforward, d_model, **kw)
    self.norm1 = torch_layer_norm(d_model, **kw)
    self.norm2 = torch_layer_norm(d_model, **kw)
    self.norm3 = torch_layer_norm(d_model, **kw)
    self.dropout1 = nnx.Dropout(dropout, rngs=rngs)
    self.dropout2 = nnx.Dropout(dropout, rngs=rngs)
    self.dropout3 = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, tgt, memory, tgt_mask=None, memory_mask=None):
    """Masks are key-validity masks (B, S) for self- and cross-attention."""
    x = self.norm1(tgt + self.dropout1(self.self_attn(tgt, tgt, tgt, tgt_mask)))
    x = self.norm2(x + self.dropout2(self.multihead_attn(x, memory, memory, memory_mask)))
    return self.norm3(x + self.dropout3(_feed_forward(self, x)))


class TransformerEncoder(nnx.Module):
  """`torch.nn.TransformerEncoder` without a final norm: `layers` applied in order."""

  def __init__(self, num_layers: int, make_layer, remat: str = ""):
    self.layers = nnx.List([make_layer() for _ in range(num_layers)])
    self.remat = check_remat(remat)  # "" or a jax.checkpoint_policies name, per layer

  def __call__(self, x, mask=None):
    for layer in self.layers:
      x = call_layer(_call, layer, self.remat, x, mask)
    return x


class TransformerDecoder(nnx.Module):
  """`torch.nn.TransformerDecoder` without a final norm."""

  def __init__(self, num_layers: int, make_layer, remat: str = ""):
    self.layers = nnx.List([make_layer() for _ in range(num_layers)])
    self.remat = check_remat(remat)  # "" or a jax.checkpoint_policies name, per layer

  def __call__(self, tgt, memory, tgt_mask=None, memory_mask=None):
    x = tgt
    for layer in self.layers:
      x = call_layer(_call, layer, self.remat, x, memory, tgt_mask, memory_mask)
    return x


def reverse_padded(x, lengths):
  """Reverses each row of x (B, T, ...) within its first lengths[b] steps; padding stays put.

  Applying it twice is the identity, so it both enters and leaves the backward LSTM.
  """
  t = x.shape[1]
  steps = jnp.arange(t)[None, :]
  idx = jnp.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


class LSTM(nnx.Module):
  """`torch.nn.LSTM(input, hidden, num_layers, bidirectional=True, batch_first=True)`.

  Per layer and direction, `ih_l{k}[_reverse]` and `hh_l{k}[_reverse]` hold torch's
  `weight_ih/bias_ih` and `weight_hh/bias_hh` (kernels transposed, gates i, f, g, o).
  With `lengths`, the backward direction starts at each row's true last step, as torch's
  packed sequences do; both directions are run in one scan.
  """

  def __init__(self, input_size: int, hidden_size: int, num_layers: int, *, rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    self.hidden_size = hidden_size
    self.num_layers = num_layers
    bound = 1.0 / math.sqrt(hidden_size)
    init = _uniform(bound)
    for layer in range(num_layers):
      in_dim = input_size if layer == 0 else 2 * hidden_size
      for suffix in ("", "_reverse"):
        for kind, dim in (("ih", in_dim), ("hh", hidden_size)):
          lin = nnx.Linear(dim, 4 * hidden_size, kernel_init=init, bias_init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
          setattr(self, f"{kind}_l{layer}{suffix}", lin)

  def _layer(self, x, lengths, layer: int):
    """One bidirectional layer: x (B, T, D) -> (B, T, 2H)."""
    fwd_ih, bwd_ih = getattr(self, f"ih_l{layer}"), getattr(self, f"ih_l{layer}_reverse")
    fwd_hh, bwd_hh = getattr(self, f"hh_l{layer}"), getattr(self, f"hh_l{layer}_reverse")
    # Input projections for all steps at once; the backward one on time-reversed input.
    xs = jnp.stack([fwd_ih(x), bwd_ih(reverse_padded(x, lengths))])  # (2, B, T, 4H)
    xs = jnp.moveaxis(xs, 2, 0)  # (T, 2, B, 4H)
    w_hh = jnp.stack([fwd_hh.kernel[...], bwd_hh.kernel[...]]).astype(xs.dtype)  # (2, H, 4H)
    b_hh = jnp.stack([fwd_hh.bias[...], bwd_hh.bias[...]]).astype(xs.dtype)[:, None, :]
    b = x.shape[0]
    h0 = jnp.zeros((2, b, self.hidden_size), xs.dtype)

    def step(carry, gx):
      h, c = carry
      gates = gx + jnp.einsum("dbh,dhg->dbg", h, w_hh) + b_hh
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    _, hs = jax.lax.scan(step, (h0, h0), xs)  # (T, 2, B, H)
    hs = jnp.moveaxis(hs, 0, 2)  # (2, B, T, H)
    return jnp.concatenate([hs[0], reverse_padded(hs[1], lengths)], axis=-1)

  def __call__(self, x, lengths=None):
    """x (B, T, D), lengths (B,) valid steps (None = all) -> (B, T, 2H)."""
    if lengths is None:
      lengths = jnp.full((x.shape[0],), x.shape[1], jnp.int32)
    for layer in range(self.num_layers):
      x = self._layer(x, lengths, layer)
    return x
