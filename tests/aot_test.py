"""Ahead-of-time compilation for a TPU topology (needs libtpu), and remat's numerics."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dualtalk_jax import aot
from dualtalk_jax.config import CONFIGS
from dualtalk_jax.models.dualtalk import DualTalk, make_rngs
from dualtalk_jax.train import step as step_lib
from experiments.configs import dualtalk as dualtalk_configs


def _require_libtpu():
  if aot.libtpu_available():
    return
  if os.environ.get("CI"):
    pytest.fail("libtpu is required in CI (pip install -r requirements-tpu.txt)")
  pytest.skip("libtpu not installed (pip install -r requirements-tpu.txt)")


def test_tiny_train_step_compiles_for_v5e_2x2():
  _require_libtpu()
  c = dualtalk_configs.get_config("large")
  c.model = "tiny"
  c.batch_size = 4
  c.data.window_frames = 10
  r = aot.compile_steps(c, "v5e:2x2", predict=False, log=lambda *_: None)
  assert r.num_chips == 4 and r.slice == "v5litepod-4" and "v5 lite" in r.device_kind
  assert r.hbm_bytes == 16 * aot.GiB and r.mesh_shape == {"data": 4, "fsdp": 1}
  s = r.train
  assert s.argument > 0 and s.temp > 0
  assert 0 < s.total < r.hbm_bytes and r.fits()
  assert s.flops > 0 and r.step_time_s() > 0
  assert "fits" in aot.format_result(r) and "v5litepod-4" in aot.table_row(r)


def test_the_train_step_draws_dropout_with_the_configured_prng():
  """`config.prng_impl`: "auto" draws with XLA's RngBitGenerator on TPU (hardware RNG; a
  faster compile than inlined Threefry hashes) and with Threefry on CPU."""
  _require_libtpu()
  c = dualtalk_configs.get_config("large")
  c.model, c.batch_size, c.data.window_frames = "tiny", 4, 10
  tpu = aot.get_topology("v5e:2x2").devices
  for impl, devices, want in (("auto", tpu, True), ("auto", jax.devices()[:1], False), ("threefry2x32", tpu, False)):
    c.prng_impl = impl
    _, train_step, _, state, batch, _ = aot.build(c, devices)
    text = train_step.trace(state, batch).lower().as_text()
    assert ("rng_bit_generator" in text) == want, (impl, devices[0].platform)


def test_unknown_prng_impl_is_rejected():
  with pytest.raises(ValueError, match="prng_impl='philox'"):
    step_lib.prng_impl_for("philox", "cpu")


def test_unknown_remat_policy_is_rejected():
  with pytest.raises(ValueError, match="remat"):
    nnx.eval_shape(lambda: DualTalk(CONFIGS["tiny"], rngs=make_rngs(0), remat="save_everything"))


def _batch(b=2, w=10):
  rng = np.random.default_rng(0)
  return {
      "audio_self": rng.normal(size=(b, w * 640)).astype(np.float32),
      "audio_other": rng.normal(size=(b, w * 640)).astype(np.float32),
      "motion_self": rng.normal(size=(b, w, 56)).astype(np.float32),
      "motion_other": rng.normal(size=(b, w, 56)).astype(np.float32),
      "audio_self_lengths": np.full((b,), w * 640, np.int32),
      "audio_other_lengths": np.array([w * 640, w * 500], np.int32),
      "motion_other_lengths": np.array([w, w - 3], np.int32),
      "num_frames": np.array([w, w - 2], np.int32),
  }


def test_remat_gives_the_same_loss_and_gradients():
  """Training mode (dropout, SpecAugment, LayerDrop drawn): same params, loss and grads."""
  batch = _batch()
  results = {}
  for remat in ("", "nothing_saveable"):
    model_def = step_lib.ModelDef(CONFIGS["tiny"], remat=remat)
    params = model_def.init_params(0)

    def loss(p, key, model_def=model_def):
      model = model_def.merge(p, train=True)
      nnx.reseed(model, dropout=key)
      return step_lib.batch_loss(model, batch)[0]

    fn = jax.value_and_grad(loss)
    jaxpr = str(jax.make_jaxpr(fn)(params, jax.random.key(3)))
    assert ("checkpoint" in jaxpr or "remat" in jaxpr) == bool(remat)
    results[remat] = (params, jax.jit(fn)(params, jax.random.key(3)))
  (p0, (l0, g0)), (p1, (l1, g1)) = results[""], results["nothing_saveable"]
  assert jax.tree.structure(p0) == jax.tree.structure(p1)
  jax.tree.map(np.testing.assert_array_equal, p0, p1)
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
  assert float(optax.tree.norm(g0)) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g0)


def test_feature_cache_config_builds_the_cached_train_step():
  """A `data.feature_cache` config compiles the step training runs: features in, no audio."""
  c = dualtalk_configs.get_config("large")
  c.model, c.batch_size, c.data.window_frames, c.data.feature_cache = "tiny", 8, 10, True
  mesh, train_step, eval_step, state, batch, eval_batch = aot.build(c, jax.devices())
  hidden = CONFIGS["tiny"].wav2vec2.hidden_size
  assert batch["features_self"].shape == (8, 10, hidden) and "audio_self" not in batch
  assert "audio_self" in eval_batch  # prediction always runs on audio
  out_state, metrics = jax.eval_shape(train_step, state, batch)
  assert metrics["loss"].shape == () and out_state["step"].shape == ()
  assert eval_step.eval_shape(state["params"], eval_batch, 10).shape == (8, 10, 56)


def _xla_flops(traced) -> float:
  cost = traced.lower().compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def test_jaxpr_flops_count_a_scanned_body_per_iteration():
  """A stack of 4 layers (matmul, conv, layer norm, relu), scanned and unrolled: XLA's cost
  analysis counts the scanned body once; `jaxpr_flops` counts both as XLA counts the unrolled one."""
  n, d = 4, 64
  ws = jax.ShapeDtypeStruct((n, d, d), jnp.float32)
  ks = jax.ShapeDtypeStruct((n, 3, d, d), jnp.float32)  # WIO conv kernels
  x = jax.ShapeDtypeStruct((8, 50, d), jnp.float32)

  def layer(h, w, k):
    h = jnp.maximum(h @ w, 0.0)
    h = h + jax.lax.conv_general_dilated(h, k, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
    mean = h.mean(-1, keepdims=True)
    return (h - mean) * jax.lax.rsqrt(((h - mean) ** 2).mean(-1, keepdims=True) + 1e-5)

  def scanned(ws, ks, x):
    return jax.lax.scan(lambda h, wk: (layer(h, *wk), None), x, (ws, ks))[0].sum()

  def unrolled(ws, ks, x):
    for i in range(n):
      x = layer(x, ws[i], ks[i])
    return x.sum()

  traced = {f.__name__: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2))).trace(ws, ks, x) for f in (scanned, unrolled)}
  ours = {k: aot.jaxpr_flops(t.jaxpr) for k, t in traced.items()}
  xla = {k: _xla_flops(t) for k, t in traced.items()}
  matmuls = 3 * 2 * 8 * 50 * d * d * 4 * n  # forward + 2 backward matmuls, the conv's 3 taps + 1
  assert xla["unrolled"] > matmuls and xla["scanned"] < 0.5 * xla["unrolled"]  # the scanned body once
  assert ours["scanned"] == pytest.approx(ours["unrolled"], rel=0.01), (ours, xla)
  assert ours["scanned"] == pytest.approx(xla["unrolled"], rel=0.03), (ours, xla)


def test_scanned_and_unrolled_wav2vec2_count_the_same_flops():
  """A 3-layer wav2vec2's loss and gradients (traced, not compiled), layers scanned and unrolled."""
  from dualtalk_jax.config import WAV2VEC2_TINY
  from dualtalk_jax.models.wav2vec2 import Wav2Vec2Model

  cfg = dataclasses.replace(WAV2VEC2_TINY, num_hidden_layers=3)
  audio = jax.ShapeDtypeStruct((2, 6400), jnp.float32)
  flops = []
  for scan in (True, False):
    model = nnx.eval_shape(lambda: Wav2Vec2Model(cfg, rngs=make_rngs(0), scan_layers=scan))
    model.eval()
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    loss = lambda p, r, a: nnx.merge(graph, p, r)(a)[0].sum()
    flops.append(aot.jaxpr_flops(jax.jit(jax.grad(loss)).trace(params, rest, audio).jaxpr))
  assert flops[0] > 0 and flops[0] == pytest.approx(flops[1], rel=0.01)  # the scan adds a little bookkeeping
