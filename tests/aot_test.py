"""Ahead-of-time compilation for a TPU topology (needs libtpu), and remat's numerics."""

import os

import jax
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


def test_table_rows_merge_across_runs():
  row = lambda topo, dtype, remat, total, mesh="data 16": (f"| v5litepod-16 (`{topo}`) | 16 GiB | {dtype} | {remat} | "
                                                           f"{mesh} | yes | {total} | 1 GiB | 1 GiB | 1.0 | 1 s |")
  v4 = "| v4-32 (`v4:2x2x4`) | 32 GiB | float32 | off | data 16 | yes | 9 GiB | 1 GiB | 1 GiB | 1.0 | 1 s |"
  first = aot.merge_table("", "head 1\n\n", [v4, row("v5e:4x4", "float32", "off", "9 GiB")])
  first += "\nA note written by hand.\n"
  merged = aot.merge_table(first, "head 2\n\n", [row("v5e:4x4", "bfloat16", "off", "5 GiB"),
                                                 row("v5e:4x4", "float32", "off", "7 GiB", "fsdp 16"),
                                                 row("v5e:4x4", "float32", "off", "8 GiB")])
  lines = merged.splitlines()
  assert lines[0] == "head 2"
  body = [l for l in lines if l.startswith("| v")]
  assert len(body) == 4  # the float32 data row was replaced, the fsdp and bfloat16 ones added
  # ordered by HBM per chip, then float32 before bfloat16, then mesh
  assert "8 GiB" in body[0] and "fsdp 16" in body[1] and "bfloat16" in body[2] and body[3] == v4
  assert aot.mesh_label({"data": 1, "fsdp": 16}) == "fsdp 16" and aot.mesh_label({"data": 4, "fsdp": 4}) == "data 4 x fsdp 4"
  assert merged.rstrip().endswith("A note written by hand.")
  assert merged.count("| slice (topology)") == 1


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
