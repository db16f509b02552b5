"""Torch-compatible layers vs the torch modules they mirror, weights moved by the conversion table."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from dualtalk_jax import params as params_lib
from dualtalk_jax.convert import table
from dualtalk_jax.models import layers

torch.manual_seed(0)


class _Wrap(nnx.Module):
  """Gives a layer the parent name the conversion rules key on."""

  def __init__(self, name, module):
    setattr(self, name, module)
    self.name = name

  def __call__(self, *a, **k):
    return getattr(self, self.name)(*a, **k)


def _perturb(model, seed=0):
  rng = np.random.default_rng(seed)
  params_lib.load(model, jax.tree.map(lambda v: np.asarray(v) + rng.normal(0, 0.1, v.shape).astype(np.float32), params_lib.of(model)))


def _to_torch(jax_model, torch_module, prefix):
  sd = {k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in table.jax_to_torch(params_lib.of(jax_model)).items()}
  torch_module.load_state_dict(sd, strict=True)
  torch_module.eval()


def _t(x):
  return torch.from_numpy(np.asarray(x))


def test_multihead_attention_matches_torch_with_key_mask():
  d, h = 16, 4
  m = _Wrap("self_attn", layers.MultiheadAttention(d, h, rngs=nnx.Rngs(0)))
  _perturb(m)
  ref = torch.nn.MultiheadAttention(d, h, batch_first=True)
  _to_torch(m, ref, "self_attn.")
  rng = np.random.default_rng(1)
  q = rng.normal(size=(2, 5, d)).astype(np.float32)
  kv = rng.normal(size=(2, 7, d)).astype(np.float32)
  valid = np.array([[True] * 7, [True] * 4 + [False] * 3])
  ours = np.asarray(m(q, kv, kv, valid))
  want, _ = ref(_t(q), _t(kv), _t(kv), key_padding_mask=_t(~valid))
  np.testing.assert_allclose(ours, want.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("decoder", [False, True])
def test_post_norm_transformer_layers_match_torch(decoder):
  d, h, ff = 16, 4, 32
  if decoder:
    ours = layers.TransformerDecoder(2, lambda: layers.TransformerDecoderLayer(d, h, ff, 0.1, rngs=nnx.Rngs(0)))
    ref = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(d, h, ff, 0.1, batch_first=True), 2)
  else:
    ours = layers.TransformerEncoder(2, lambda: layers.TransformerEncoderLayer(d, h, ff, 0.1, rngs=nnx.Rngs(0)))
    ref = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(d, h, ff, 0.1, batch_first=True), 2, enable_nested_tensor=False)
  ours.eval()
  _perturb(ours)
  _to_torch(ours, ref, "")
  x = np.random.default_rng(2).normal(size=(2, 9, d)).astype(np.float32)
  with torch.no_grad():
    want = ref(_t(x), _t(x)) if decoder else ref(_t(x))
  got = ours(x, x) if decoder else ours(x)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5)


def test_bilstm_matches_torch_packed_sequences():
  din, hid = 6, 5
  m = _Wrap("temporal_lstm", layers.LSTM(din, hid, 2, rngs=nnx.Rngs(0)))
  _perturb(m)
  ref = torch.nn.LSTM(din, hid, num_layers=2, bidirectional=True, batch_first=True)
  _to_torch(m, ref, "temporal_lstm.")
  x = np.random.default_rng(3).normal(size=(3, 11, din)).astype(np.float32)
  lengths = np.array([11, 7, 1])
  got = np.asarray(m(x, lengths))
  for b, n in enumerate(lengths):  # each clip alone, as the released code runs it
    with torch.no_grad():
      want, _ = ref(_t(x[b : b + 1, :n]))
    np.testing.assert_allclose(got[b, :n], want[0].numpy(), atol=1e-5)


def test_reverse_padded_is_an_involution_within_lengths():
  x = np.arange(2 * 5).reshape(2, 5)
  lengths = np.array([5, 3])
  r = np.asarray(layers.reverse_padded(x, lengths))
  np.testing.assert_array_equal(r, [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]])
  np.testing.assert_array_equal(np.asarray(layers.reverse_padded(r, lengths)), x)
