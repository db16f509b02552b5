"""Sharding rules: stacked layer params keep their layer axis whole; rules must fit their params."""

import dataclasses

import jax
import pytest
from jax.sharding import PartitionSpec as P

from dualtalk_jax import params as params_lib, sharding
from dualtalk_jax.config import CONFIGS
from dualtalk_jax.train.step import ModelDef

TINY = CONFIGS["tiny"]
W2V = "joint_encoder.audio_encoder1.encoder.layers"


def _specs(cfg, mesh):
  params = ModelDef(cfg).abstract_params
  flat = params_lib.flatten(sharding.tree_shardings(params, mesh))
  return {p: s.spec for p, s in flat.items()}


def test_stacked_layers_axis_never_sharded():
  mesh = sharding.make_mesh(data=1, fsdp=8)
  stacked = _specs(TINY, mesh)
  unrolled = _specs(dataclasses.replace(TINY, scan_layers=False), mesh)
  # the same rule, behind an unsharded layer axis; the interaction layers are never stacked
  assert stacked[f"{W2V}.attention.q_proj.kernel"] == P(None, "fsdp", None)
  assert unrolled[f"{W2V}.0.attention.q_proj.kernel"] == P("fsdp", None)
  assert stacked[f"{W2V}.layer_norm.scale"] == P(None, None)
  assert stacked["interaction_module.interaction_encoder.layers.0.linear1.kernel"] == P("fsdp", None)
  assert all(s[0] is None for p, s in stacked.items() if p.startswith(W2V))


def test_rule_of_wrong_rank_is_an_error(monkeypatch):
  mesh = sharding.make_mesh(data=1, fsdp=8)
  params = ModelDef(TINY).abstract_params
  monkeypatch.setattr(sharding, "PARAM_AXES", ((r".*\.kernel", ("embed", "mlp", "norm")),) + sharding.PARAM_AXES)
  with pytest.raises(sharding.ShardingRuleError, match=r"'\.\*\\\\\.kernel'.*has rank 2"):
    sharding.tree_shardings(params, mesh)
  monkeypatch.setattr(sharding, "PARAM_AXES", sharding.PARAM_AXES[1:-1])  # no rule for biases
  with pytest.raises(sharding.ShardingRuleError, match=r"no sharding rule .* matches parameter .*\.bias"):
    sharding.tree_shardings(params, mesh)


def test_opt_state_and_scalars():
  mesh = sharding.make_mesh(data=2, fsdp=4)
  tree = {"step": jax.ShapeDtypeStruct((), "int32"),
          "mu": {"encoder": {"layers": {"attention": {"q_proj": {"kernel": jax.ShapeDtypeStruct((3, 32, 32), "float32")}}}}}}
  flat = params_lib.flatten(sharding.tree_shardings(tree, mesh))
  assert flat["step"].spec == P()
  assert flat["mu.encoder.layers.attention.q_proj.kernel"].spec == P(None, "fsdp", None)
