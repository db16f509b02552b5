"""The one place with mesh axes and logical-axis rules.

The mesh has two axes: `data` (pure data parallelism: weights replicated) and `fsdp`
(data parallelism with weights, gradients and optimizer state sharded, ZeRO-3 style).
The batch is split over both. Every parameter gets logical axis names from its role,
and `RULES` maps logical names to mesh axes; change the rules, not the model, to shard
differently. A dimension is only sharded when the mesh axis size divides it, so the
tiny config runs on any mesh. Stacked (scanned) wav2vec2 layer params get their rule's
axes behind a leading `layers` axis, which is never sharded (each scan step reads one
layer whole). A rule whose rank does not fit its parameter is an error, not a silent
replication.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH = ("data", "fsdp")  # mesh axes the batch dimension is split over

# logical axis -> mesh axis (None = replicated).
RULES: dict[str, str | None] = {
    "embed": "fsdp",  # model width: input side of kernels
    "mlp": None,  # output side of kernels
    "conv_out": "fsdp",
    "conv_in": None,
    "kernel_width": None,
    "norm": None,
    "vocab": None,
    "layers": None,  # the leading axis of stacked layer params: never sharded
}

# (regex over the dotted param path, logical axes). First match wins.
PARAM_AXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r".*conv_layers\.\d+\.conv\.kernel", ("kernel_width", "conv_in", "conv_out")),
    (r".*pos_conv_embed\.conv\.weight_v", ("conv_out", "conv_in", "kernel_width")),
    (r".*pos_conv_embed\.conv\.weight_g", ("norm", "norm", "kernel_width")),
    # LSTM recurrent kernels (128 x 512) stay whole on every platform: sharded, each time
    # step of the recurrence would gather them (and reduce their gradient) for a few KB.
    (r".*\.hh_l\d+(_reverse)?\.kernel", ("norm", "norm")),
    (r".*\.kernel", ("embed", "mlp")),
    (r".*\.(bias|scale|masked_spec_embed)", ("norm",)),  # replicated
)


class ShardingRuleError(ValueError):
  """A sharding rule that does not fit a parameter (rank), or a parameter no rule names."""


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp) mesh over `devices` (all by default); one size may be -1 = the rest."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = [data, fsdp]
  if sizes.count(-1) > 1:
    raise ValueError("at most one of mesh data/fsdp may be -1")
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    if n % known:
      raise ValueError(f"{n} devices are not divisible by the fixed mesh size {known}")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) != n:
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} does not use the {n} devices")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_axes(path: str, ndim: int) -> tuple[str, ...]:
  """The logical axes of a parameter (or an optimizer moment keyed like it) of rank `ndim`."""
  from dualtalk_jax.convert.table import is_stacked

  stacked = is_stacked(path)
  for pattern, axes in PARAM_AXES:
    if re.fullmatch(pattern, path):
      if stacked:
        axes = ("layers",) + axes
      if len(axes) != ndim:
        raise ShardingRuleError(f"sharding rule {pattern!r} gives {len(axes)} axes {axes} but parameter {path} "
                                f"has rank {ndim}")
      return axes
  raise ShardingRuleError(f"no sharding rule (sharding.PARAM_AXES) matches parameter {path} (rank {ndim})")


def param_spec(path: str, shape: Sequence[int], mesh: Mesh) -> P:
  """PartitionSpec of one parameter: its logical axes through RULES, divisibility checked."""
  spec, used = [], set()
  for dim, name in zip(shape, logical_axes(path, len(shape))):
    axis = RULES.get(name)
    if axis is None or axis in used or mesh.shape[axis] == 1 or dim % mesh.shape[axis]:
      spec.append(None)
    else:
      spec.append(axis)
      used.add(axis)
  return P(*spec)


def tree_shardings(tree, mesh: Mesh):
  """NamedShardings for a nested dict of params / optimizer moments keyed like params.

  Scalar leaves (step, optimizer counts) are replicated; every other leaf must be named
  by a rule of its rank (`ShardingRuleError` otherwise).
  """
  def one(keypath, leaf):
    shape = np.shape(leaf)
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keypath]
    return NamedSharding(mesh, param_spec(".".join(names), shape, mesh) if shape else P())

  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local batch rows -> global arrays split over the batch axes (multi-host safe)."""
  return {
      k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
      for k, v in batch.items()
  }
