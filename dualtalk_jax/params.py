"""Model parameters: the one form the library passes them around in.

Params are a nested dict of arrays keyed by the NNX path components as strings: flax's
`nnx.to_pure_dict` of the model's `nnx.Param` state, with list indices written "0", "1",
... as orbax stores them. The optimizer, the train state, the sharding rules and the
checkpoints all hold this form.

    of(model) / load(model, params)      model <-> params (`nnx.to_pure_dict` /
                                         `nnx.replace_by_pure_dict`)
    merge(graphdef, params, *states)     a model from a split graph (inside traced steps)
    flatten(params) / unflatten(flat)    params <-> {dotted path: array}, the names the
                                         conversion table and the sharding rules match
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx


def flatten(params: Mapping) -> dict[str, Any]:
  """{dotted path ("joint_encoder.audio_encoder1. ... .kernel"): leaf}."""
  return {".".join(map(str, k)): v for k, v in nnx.traversals.flatten_mapping(params).items()}


def unflatten(flat: Mapping[str, Any]) -> dict:
  """The inverse of `flatten`."""
  return nnx.traversals.unflatten_mapping(dict(flat), sep=".")


def of(model: nnx.Module) -> dict:
  """The model's params (its arrays, or `jax.ShapeDtypeStruct`s of an abstract model)."""
  return unflatten(flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))))


def merge(graphdef: nnx.GraphDef, params: Mapping, *states) -> nnx.Module:
  """`nnx.merge` of a graph split as (graphdef, nnx.Param, *states) with `params`."""
  return nnx.merge(graphdef, nnx.restore_int_paths(params), *states)


def load(model: nnx.Module, params: Mapping) -> None:
  """Writes `params` into a concrete model: keys and shapes must match, after converting
  the wav2vec2 layer layout (stacked / unrolled) to the model's if they differ."""
  from dualtalk_jax.convert.table import ConversionError, params_layout, to_layout

  want = flatten(of(model))
  want_layout, have_layout = params_layout(want), params_layout(flatten(params))
  if want_layout is not None and have_layout is not None and want_layout != have_layout:
    params = to_layout(params, want_layout == "stacked")
  have = flatten(params)
  problems = [f"missing {k}" for k in want if k not in have]
  problems += [f"{k}: {tuple(have[k].shape)}, expected {tuple(v.shape)}"
               for k, v in want.items() if k in have and tuple(have[k].shape) != tuple(v.shape)]
  problems += [f"unexpected {k}" for k in sorted(have.keys() - want.keys())]
  if problems:
    raise ConversionError(f"params do not match the model: {'; '.join(problems[:20])}")
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
