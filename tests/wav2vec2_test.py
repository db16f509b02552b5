"""Flax NNX wav2vec2 vs transformers.Wav2Vec2Model, padding, resampling and training mode."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualtalk_jax.config import WAV2VEC2_TINY, Wav2Vec2Config
from dualtalk_jax.models import wav2vec2 as w2v
from dualtalk_jax.models import xla_cpu

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dualtalk_jax.convert import hf_wav2vec2  # noqa: E402

# Both published variants, tiny. STABLE: layer-norm conv stack + pre-LN encoder (lv60);
# GROUP: group-norm conv layer 0 + post-LN encoder (base-960h).
STABLE = WAV2VEC2_TINY
GROUP = dataclasses.replace(WAV2VEC2_TINY, feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
# Odd positional-conv kernel (no frame dropped after the conv) on the group variant.
GROUP_ODD_POS = dataclasses.replace(GROUP, num_conv_pos_embeddings=15, num_conv_pos_embedding_groups=2)
VARIANTS = {"stable": STABLE, "group": GROUP}
TOL = 1e-5


def _no_randomness(cfg: Wav2Vec2Config, **kw) -> Wav2Vec2Config:
  kw = {"hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0,
        "layerdrop": 0.0, "apply_spec_augment": False, **kw}
  return dataclasses.replace(cfg, **kw)


_HF_CACHE = {}


def _hf_and_ours(cfg: Wav2Vec2Config, tmp_path_factory, seed: int = 0):
  """A randomly perturbed HF model (eval mode) and ours loaded from its save_pretrained dir."""
  key = (cfg, seed)
  if key not in _HF_CACHE:
    torch.manual_seed(seed)
    hf_cfg = transformers.Wav2Vec2Config(**cfg.to_hf_dict())
    hf_cfg._attn_implementation = "eager"
    hf = transformers.Wav2Vec2Model(hf_cfg).eval()
    with torch.no_grad():
      for name, p in hf.named_parameters():  # every param away from its init value
        if name.endswith("bias") or "layer_norm" in name:
          p.add_(0.2 * torch.randn_like(p))
        else:
          p.mul_(1.0 + 0.2 * torch.randn_like(p)).add_(0.02 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("hf_w2v")
    hf.save_pretrained(d)
    ours = hf_wav2vec2.load_pretrained(d)
    ours.eval()
    _HF_CACHE[key] = (hf, ours)
  return _HF_CACHE[key]


def _hf_forward(hf, audio: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return hf(torch.from_numpy(audio)).last_hidden_state.numpy()


# ---------------------------------------------------------------------------------------
# Parity with transformers
# ---------------------------------------------------------------------------------------


# Module-level jitted forwards, so that tests sharing a model and a shape share a compile.
_fwd = nnx.jit(lambda m, x: m(x))
_fwd_padded = nnx.jit(lambda m, x, lens, nf, max_frames: m(x, input_lengths=lens, num_frames=nf, max_frames=max_frames),
                      static_argnames="max_frames")
_LENGTHS = (4471, 2917)  # not multiples of 320


@pytest.mark.parametrize("name", ["stable", "group", "group_odd_pos"])
def test_hf_parity(name, tmp_path_factory):
  cfg = {"stable": STABLE, "group": GROUP, "group_odd_pos": GROUP_ODD_POS}[name]
  hf, ours = _hf_and_ours(cfg, tmp_path_factory)
  rng = np.random.default_rng(1)
  for n in _LENGTHS:
    audio = rng.standard_normal((1, n)).astype(np.float32)
    want = _hf_forward(hf, audio)
    got, mask = _fwd(ours, jnp.asarray(audio))
    got = np.asarray(got)
    assert got.shape == want.shape == (1, w2v.feat_extract_output_lengths(cfg, n), cfg.hidden_size)
    assert bool(mask.all())
    diff = np.abs(got - want).max()
    print(f"{name} n={n}: max |diff| {diff:.3g}")
    assert diff <= TOL, f"{name} n={n}: max |diff| {diff:.3g}"


def test_names_match_hf_state_dict(tmp_path_factory):
  """Every HF tensor has a counterpart (the converter is strict); weight-norm params are torch layout."""
  hf, ours = _hf_and_ours(STABLE, tmp_path_factory)
  conv = ours.encoder.pos_conv_embed.conv
  sd = hf.state_dict()
  g = next(v for k, v in sd.items() if k.endswith("original0") or k.endswith("weight_g"))
  v = next(v for k, v in sd.items() if k.endswith("original1") or k.endswith("weight_v"))
  np.testing.assert_array_equal(np.asarray(conv.weight_g[...]), g.numpy())
  np.testing.assert_array_equal(np.asarray(conv.weight_v[...]), v.numpy())
  np.testing.assert_array_equal(np.asarray(ours.feature_extractor.conv_layers[0].conv.kernel[...]),
                                sd["feature_extractor.conv_layers.0.conv.weight"].numpy().transpose(2, 1, 0))


# ---------------------------------------------------------------------------------------
# Padding and resampling
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("resample", [False, True], ids=["native", "resampled"])
@pytest.mark.parametrize("name", ["stable", "group"])
def test_batched_with_padding_equals_rows(name, resample, tmp_path_factory):
  _, model = _hf_and_ours(VARIANTS[name], tmp_path_factory)
  cfg = model.config
  rng = np.random.default_rng(2)
  lengths = list(_LENGTHS)
  frames = [9, 12]  # down- and up-sampled w.r.t. 13 and 8 conv frames
  s = max(lengths)
  audio = np.zeros((len(lengths), s), np.float32)
  for i, n in enumerate(lengths):
    audio[i, :n] = rng.standard_normal(n)
  audio[1, lengths[1]:] = 5.0  # garbage in the padding must not matter

  nf = jnp.asarray(frames) if resample else None
  batched, mask = _fwd_padded(model, jnp.asarray(audio), jnp.asarray(lengths), nf, max_frames=16 if resample else None)
  batched, mask = np.asarray(batched), np.asarray(mask)
  assert batched.shape[1] == (16 if resample else w2v.feat_extract_output_lengths(cfg, s))
  for i, n in enumerate(lengths):
    t = frames[i] if resample else w2v.feat_extract_output_lengths(cfg, n)
    assert mask[i].sum() == t and mask[i, :t].all()
    x = jnp.asarray(audio[i:i + 1, :n])
    if resample:
      alone, m1 = _fwd_padded(model, x, None, jnp.asarray([t]), max_frames=t)
    else:
      alone, m1 = _fwd(model, x)
    assert alone.shape[1] == t and bool(m1.all())
    diff = np.abs(batched[i, :t] - np.asarray(alone[0])).max()
    assert diff <= TOL, f"row {i}: max |diff| {diff:.3g}"


def _torch_interp(x: np.ndarray, n: int) -> np.ndarray:
  t = torch.from_numpy(x).T[None]  # (1, C, L)
  return torch.nn.functional.interpolate(t, size=n, mode="linear", align_corners=True)[0].T.numpy()


def test_resample_matches_torch_interpolate():
  rng = np.random.default_rng(3)
  lengths = [10, 10, 10, 10, 7, 1, 1, 13, 149]
  targets = [25, 4, 1, 10, 7, 5, 1, 199, 250]
  b, l_max, c, t_max = len(lengths), 160, 6, 256
  x = rng.standard_normal((b, l_max, c)).astype(np.float32)
  out = jax.jit(w2v.resample_frames, static_argnums=3)(jnp.asarray(x), jnp.asarray(lengths), jnp.asarray(targets),
                                                       t_max)
  out = np.asarray(out)
  for i, (l, n) in enumerate(zip(lengths, targets)):
    want = _torch_interp(x[i, :l], n)
    np.testing.assert_allclose(out[i, :n], want, rtol=0, atol=2e-6, err_msg=f"L={l} n={n}")
    assert not out[i, n:].any()


# ---------------------------------------------------------------------------------------
# Training mode: SpecAugment, LayerDrop, dropout switch, frozen feature extractor
# ---------------------------------------------------------------------------------------


def test_time_mask_semantics():
  t, ml = 40, 4
  lengths = jnp.asarray([40, 25, 9, 3])
  f = jax.jit(lambda k: w2v.compute_time_mask(k, lengths, t, mask_prob=0.3, mask_length=ml, min_masks=2))
  for seed in range(20):
    m = np.asarray(f(jax.random.key(seed)))
    for i, n in enumerate(np.asarray(lengths)):
      assert not m[i, n:].any()  # only valid frames
      if n < ml:
        assert not m[i].any()
      else:
        assert m[i].sum() >= ml  # at least one full span (min_masks=2, overlaps allowed)
        # every masked run is a union of whole spans of length ml
        runs = np.diff(np.concatenate([[0], m[i].astype(int), [0]]))
        assert ((np.flatnonzero(runs == -1) - np.flatnonzero(runs == 1)) >= ml).all()
    # row 0: int(0.3 * 40 / 4 + eps) = 3 spans: at most 12 frames
    assert m[0].sum() <= 12
  np.testing.assert_array_equal(f(jax.random.key(0)), f(jax.random.key(0)))


def test_spec_augment_in_model():
  cfg = _no_randomness(STABLE, apply_spec_augment=True, mask_time_prob=0.5, mask_time_length=2, mask_time_min_masks=1)
  model = w2v.Wav2Vec2Model(cfg, rngs=nnx.Rngs(params=0, dropout=1))
  h = jax.random.normal(jax.random.key(1), (3, 12, cfg.hidden_size))
  lengths = jnp.asarray([12, 7, 5])
  model.eval()
  out, mask = model.mask_hidden_states(h, lengths)
  assert mask is None and out is h
  model.train()
  out, mask = model.mask_hidden_states(h, lengths)
  out, mask = np.asarray(out), np.asarray(mask)
  valid = np.arange(12)[None] < np.asarray(lengths)[:, None]
  assert mask.any() and not (mask & ~valid).any()
  np.testing.assert_array_equal(out[mask], np.broadcast_to(np.asarray(model.masked_spec_embed[...]), out[mask].shape))
  np.testing.assert_array_equal(out[~mask], np.asarray(h)[~mask])

  # Full forward: deterministic for a given seed, different across seeds, off in eval.
  audio = jax.random.normal(jax.random.key(2), (2, 4000))
  fwd = nnx.jit(lambda m, x: m(x, input_lengths=jnp.asarray([4000, 3000]))[0])
  outs = []
  for seed in (5, 5, 6):
    nnx.reseed(model, dropout=seed)
    outs.append(np.asarray(fwd(model, audio)))
  np.testing.assert_array_equal(outs[0], outs[1])
  assert np.abs(outs[0] - outs[2]).max() > 1e-3
  model.eval()
  ref = np.asarray(fwd(model, audio))
  assert np.abs(outs[0] - ref).max() > 1e-3
  # nnx.view gives the same eval-mode output without touching the model.
  model.train()
  np.testing.assert_array_equal(np.asarray(fwd(nnx.view(model, deterministic=True), audio)), ref)
  assert not model.deterministic and not model.encoder.layers.dropout.deterministic


def test_layerdrop_one_skips_all_layers():
  for cfg in (STABLE, GROUP):
    cfg = _no_randomness(cfg, layerdrop=1.0)
    model = w2v.Wav2Vec2Model(cfg, rngs=nnx.Rngs(0))
    audio = jax.random.normal(jax.random.key(3), (2, 3500))
    lens = jnp.asarray([3500, 3000])
    model.train()
    got, frame_mask = _fwd_padded(model, audio, lens, None, max_frames=None)

    @nnx.jit
    def without_layers(model):  # the encoder with its layers removed
      feats, _ = model.extract_features(audio, lens)
      enc = model.encoder
      x = jnp.where(frame_mask[:, :, None], model.feature_projection(feats), 0.0)
      x = x + enc.pos_conv_embed(x)
      return enc.layer_norm(x)

    want = np.asarray(without_layers(model))
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=TOL)
    model.eval()  # LayerDrop off: the layers run
    assert np.abs(np.asarray(_fwd_padded(model, audio, lens, None, max_frames=None)[0]) - want).max() > 1e-3


def test_layerdrop_partial_and_dropout_under_jit():
  cfg = dataclasses.replace(STABLE, layerdrop=0.5, num_hidden_layers=3)
  model = w2v.Wav2Vec2Model(cfg, rngs=nnx.Rngs(params=0, dropout=1))
  audio = jax.random.normal(jax.random.key(4), (1, 3500))
  fwd = nnx.jit(lambda m, x: m(x)[0])
  model.train()
  a, b = np.asarray(fwd(model, audio)), np.asarray(fwd(model, audio))  # rng streams advance
  assert np.isfinite(a).all() and np.abs(a - b).max() > 1e-4
  model.eval()
  np.testing.assert_array_equal(np.asarray(fwd(model, audio)), np.asarray(fwd(model, audio)))


def test_scanned_and_unrolled_layers_agree():
  """scan_layers=True (stacked, nnx.scan) and False (a list): same init, same training-mode
  draws (LayerDrop and dropout keys per layer), same outputs and gradients (remat: aot_test)."""
  from dualtalk_jax import params as params_lib
  from dualtalk_jax.convert import table

  cfg = dataclasses.replace(STABLE, layerdrop=0.4, num_hidden_layers=3)
  make = lambda scan: w2v.Wav2Vec2Model(cfg, rngs=nnx.Rngs(params=0, dropout=1), scan_layers=scan)
  scanned, unrolled = make(True), make(False)
  flat = lambda p: params_lib.flatten(jax.tree.map(np.asarray, p))
  s, u = flat(params_lib.of(scanned)), flat(params_lib.of(unrolled))
  assert s["encoder.layers.attention.q_proj.kernel"].shape == (3, cfg.hidden_size, cfg.hidden_size)
  assert "encoder.layers.2.attention.q_proj.kernel" in u
  for name, v in flat(table.to_layout(params_lib.of(unrolled), True)).items():  # the layout transform is exact, and so is the init
    np.testing.assert_array_equal(v, s[name], err_msg=name)
  assert set(flat(table.to_layout(params_lib.of(scanned), False))) == set(u)

  audio = jax.random.normal(jax.random.key(4), (2, 3500))
  lens = jnp.asarray([3500, 3000])

  def loss(m):
    h, mask = m(audio, input_lengths=lens)
    return jnp.sum(jnp.where(mask[..., None], h, 0.0) ** 2)

  loss_and_grad = nnx.jit(nnx.value_and_grad(loss))
  skipped = []
  for seed in range(4):
    got = []
    for m in (scanned, unrolled):
      m.train()
      nnx.reseed(m, dropout=seed)
      value, g = loss_and_grad(m)
      got.append((float(value), nnx.to_pure_dict(g)))
    (ls, gs), (lu, gu) = got
    assert abs(ls - lu) <= 1e-5 * abs(lu)
    gs, gu = flat(gs), flat(table.to_layout(gu, True))
    floor = 1e-6 * max(np.abs(v).max() for v in gu.values())  # grads that are 0 but for rounding (key biases)
    for name in gs:
      scale = np.abs(gu[name]).max() + floor
      assert np.abs(gs[name] - gu[name]).max() <= 3e-3 * scale, name  # f32 rounding; another draw: O(1)
    q = gs["encoder.layers.attention.q_proj.kernel"]
    skipped.append({i for i in range(3) if not q[i].any()})  # LayerDrop skipped layer i: no gradient
  assert any(skipped) and any(len(k) < 3 for k in skipped), skipped  # the test covers dropped and run layers
  fwd = nnx.jit(lambda m: m(audio, input_lengths=lens)[0])
  scanned.eval()
  unrolled.eval()
  np.testing.assert_allclose(np.asarray(fwd(scanned)), np.asarray(fwd(unrolled)), atol=TOL, rtol=0)


def test_feature_extractor_gets_zero_gradient():
  model = w2v.Wav2Vec2Model(GROUP, rngs=nnx.Rngs(0))
  model.train()
  audio = jax.random.normal(jax.random.key(5), (2, 3300))

  def loss(m):
    h, mask = m(audio, input_lengths=jnp.asarray([3300, 3000]), num_frames=jnp.asarray([6, 5]), max_frames=6)
    return jnp.sum(jnp.where(mask[..., None], h, 0.0) ** 2)

  grads = nnx.jit(nnx.grad(loss))(model)
  fe = jax.tree.leaves(grads["feature_extractor"])
  assert fe and all(not np.asarray(g).any() for g in fe)
  for path in (("feature_projection", "projection", "kernel"), ("encoder", "pos_conv_embed", "conv", "weight_v"),
               ("encoder", "layers", "attention", "q_proj", "kernel")):
    g = grads
    for p in path:
      g = g[p]
    assert np.abs(np.asarray(g[...])).max() > 0, path


@pytest.mark.parametrize("k,groups", [(8, 4), (7, 1), (16, 16)])
def test_grouped_conv1d_gradients_match_torch(k, groups):
  """The positional conv's CPU weight gradient (one matmul per kernel tap) vs torch autograd."""
  rng = np.random.default_rng(k)
  c, t, pad = 32, 23, k // 2
  x = rng.standard_normal((2, t, c), dtype=np.float32)
  w = (rng.standard_normal((c, c // groups, k)) / np.sqrt(k * c // groups)).astype(np.float32)
  gy_t = t + 2 * pad - k + 1
  gy = rng.standard_normal((2, gy_t, c), dtype=np.float32)

  def f(x, w):
    return jnp.sum(xla_cpu.grouped_conv1d(x, w, pad, groups) * gy)

  dx, dw = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(w))
  xt = torch.tensor(x.transpose(0, 2, 1), requires_grad=True)
  wt = torch.tensor(w, requires_grad=True)
  y = torch.nn.functional.conv1d(xt, wt, padding=pad, groups=groups)
  (y * torch.tensor(gy.transpose(0, 2, 1))).sum().backward()
  np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy().transpose(0, 2, 1), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(dw), wt.grad.numpy(), atol=1e-4, rtol=1e-4)


def test_bf16_compute_runs(tmp_path_factory):
  _, ref = _hf_and_ours(STABLE, tmp_path_factory)
  model = w2v.Wav2Vec2Model(STABLE, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  nnx.update(model, nnx.state(ref, nnx.Param))
  model.eval()
  audio = jax.random.normal(jax.random.key(6), (1, _LENGTHS[0]))
  h, _ = _fwd(model, audio)
  assert h.dtype == jnp.bfloat16
  want = np.asarray(_fwd(ref, audio)[0])
  assert np.abs(np.asarray(h, np.float32) - want).max() < 0.25 * np.abs(want).max()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["base_960h", "large_lv60"])
def test_hf_parity_full_size(name, tmp_path_factory):
  """The published architectures (random perturbed weights, no download), 1.3 s of audio."""
  from dualtalk_jax.config import WAV2VEC2_BASE_960H, WAV2VEC2_LARGE_LV60

  cfg = {"base_960h": WAV2VEC2_BASE_960H, "large_lv60": WAV2VEC2_LARGE_LV60}[name]
  hf, ours = _hf_and_ours(cfg, tmp_path_factory)
  audio = np.random.default_rng(7).standard_normal((1, 20917)).astype(np.float32)
  want = _hf_forward(hf, audio)
  got = np.asarray(_fwd(ours, jnp.asarray(audio))[0])
  diff = np.abs(got - want).max()
  print(f"{name}: max |diff| {diff:.3g}")
  assert diff <= 5e-5, f"{name}: max |diff| {diff:.3g}"
  _HF_CACHE.clear()
