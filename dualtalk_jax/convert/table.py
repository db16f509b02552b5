"""The one conversion table between our NNX parameters and PyTorch state dicts.

Module paths mirror the released PyTorch model, so a JAX parameter path becomes a torch
key by a few declarative rules, tried in order (first full match wins):

    JAX leaf (regex over the dotted NNX path)        torch key                        transform
    ...(cross_attention|self_attention|self_attn|    ...in_proj_weight / in_proj_bias  q, k, v packed
        multihead_attn).{q,k,v}_proj.{kernel,bias}                                     along dim 0
    ...temporal_lstm.{ih,hh}_l{k}[_reverse].kernel   ...weight_{ih,hh}_l{k}[_reverse]  transpose
    ...conv_layers.{i}.conv.kernel                   ...weight                         (k,in,out)->(out,in,k)
    ...pos_conv_embed.conv.weight_{g,v}              ...parametrizations.weight.       identity
                                                        original{0,1}
    ...kernel                                        ...weight                         transpose
    ...scale / ...bias / masked_spec_embed           ...weight / ...bias / same        identity

plus one module rename, `blendshape_encoder.layers.{i}` <-> `blendshape_encoder.{i}`
(`nnx.Sequential` keeps its children under `layers`). The same table drives both
directions, and every key and shape is checked: unknown, missing or mis-shaped keys raise
`ConversionError` listing them.

Layer stacks: torch keys name each wav2vec2 encoder layer (`...encoder.layers.{i}.<rest>`).
With `DualTalkConfig.scan_layers` (the default) the model holds each encoder's layers as
one stacked leaf per parameter (`...encoder.layers.<rest>`, leading layer axis). The table
rules are per layer: stacked leaves are split into per-layer views before the rules
(`unstack_layers`) and per-layer arrays stacked after them (`stack_layers`), both exact.
`to_layout` converts whole params between the two layouts.

Params are the library's one form (`dualtalk_jax.params`); the table matches their dotted
paths (`params.flatten`).

Weight norm: torch < 2.1 saved `weight_g`/`weight_v` (as in the released checkpoint);
newer torch saves `parametrizations.weight.original0/1`. Both are read; `weight_norm=`
picks what is written ('new' by default, 'legacy').
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from dualtalk_jax import params as params_lib


class ConversionError(ValueError):
  """A state dict does not match the model: lists every offending key."""


_PACKED = r"(?:cross_attention|self_attention|self_attn|multihead_attn)"

# (JAX path regex, torch key template, transform). Order matters: first match wins.
RULES: tuple[tuple[str, str, str], ...] = (
    (rf"(.*{_PACKED})\.([qkv])_proj\.kernel", r"\1.in_proj_weight", "packed_kernel"),
    (rf"(.*{_PACKED})\.([qkv])_proj\.bias", r"\1.in_proj_bias", "packed_bias"),
    (r"(.*temporal_lstm)\.(ih|hh)_(l\d+(?:_reverse)?)\.kernel", r"\1.weight_\2_\3", "transpose"),
    (r"(.*temporal_lstm)\.(ih|hh)_(l\d+(?:_reverse)?)\.bias", r"\1.bias_\2_\3", "identity"),
    (r"(.*conv_layers\.\d+\.conv)\.kernel", r"\1.weight", "conv"),
    (r"(.*pos_conv_embed\.conv)\.weight_g", r"\1.parametrizations.weight.original0", "identity"),
    (r"(.*pos_conv_embed\.conv)\.weight_v", r"\1.parametrizations.weight.original1", "identity"),
    (r"(.*)\.kernel", r"\1.weight", "transpose"),
    (r"(.*)\.scale", r"\1.weight", "identity"),
    (r"(.*)\.bias", r"\1.bias", "identity"),
    (r"(.*\.)?(masked_spec_embed)", r"\1\2", "identity"),
)
_COMPILED = tuple((re.compile(p), t, k) for p, t, k in RULES)

# Module renames applied to the JAX path before the rules (JAX regex, torch replacement).
RENAMES: tuple[tuple[str, str], ...] = ((r"blendshape_encoder\.layers\.(\d+)\.", r"blendshape_encoder.\1."),)

# A wav2vec2 encoder's layers: `encoder` is a whole path component (so the interaction
# module's `interaction_encoder.layers.{i}` is not one of them).
_LAYER = re.compile(r"((?:.*\.)?encoder\.layers)\.(\d+)\.(.+)")  # unrolled: one leaf per layer
_STACKED = re.compile(r"((?:.*\.)?encoder\.layers)\.(?!\d+\.)(.+)")  # scanned: leading layer axis

_LEGACY_WN = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
WEIGHT_NORM_NAMINGS = ("new", "legacy")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One torch tensor and the JAX leaves it is made of (3 for a packed in_proj)."""

  torch_key: str
  jax_paths: tuple[str, ...]
  transform: str


def _torch_key(jax_path: str) -> tuple[str, str, str | None]:
  """(torch key, transform, packed part or None) for one JAX leaf path."""
  renamed = jax_path
  for pattern, repl in RENAMES:
    renamed = re.sub(pattern, repl, renamed)
  for regex, template, transform in _COMPILED:
    m = regex.fullmatch(renamed)
    if m:
      part = m.group(2) if transform.startswith("packed") else None
      return m.expand(template), transform, part
  raise ConversionError(f"no conversion rule for parameter {jax_path!r}")


def build_entries(jax_paths: Iterable[str]) -> list[Entry]:
  """Groups JAX leaf paths by the torch key they convert to (q, k, v order for packs)."""
  groups: dict[str, dict[str, Any]] = {}
  for p in jax_paths:
    key, transform, part = _torch_key(p)
    g = groups.setdefault(key, {"transform": transform, "parts": {}})
    g["parts"][part or ""] = p
  entries = []
  for key, g in groups.items():
    parts = g["parts"]
    if g["transform"].startswith("packed"):
      if sorted(parts) != ["k", "q", "v"]:
        raise ConversionError(f"{key}: needs q, k and v projections, found {sorted(parts)}")
      paths = (parts["q"], parts["k"], parts["v"])
    else:
      paths = (parts[""],)
    entries.append(Entry(key, paths, g["transform"]))
  return entries


def is_stacked(path: str) -> bool:
  """Whether a dotted param path is a stacked (scanned) wav2vec2 layer leaf."""
  return bool(_STACKED.fullmatch(path))


def params_layout(paths: Iterable[str]) -> str | None:
  """'stacked', 'unrolled' or None (no wav2vec2 layers) for a set of dotted param paths."""
  kinds = {("stacked" if _STACKED.fullmatch(p) else "unrolled") for p in paths if _STACKED.fullmatch(p) or _LAYER.fullmatch(p)}
  if len(kinds) > 1:
    raise ConversionError("params mix the stacked and the unrolled wav2vec2 layer layouts")
  return kinds.pop() if kinds else None


def unstack_layers(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{dotted path: array} with stacked layer leaves split into per-layer entries
  (`...encoder.layers.{i}.<rest>`, views where the input allows); other entries unchanged."""
  out = {}
  for path, value in flat.items():
    m = _STACKED.fullmatch(path)
    if m is None:
      out[path] = value
    else:
      for i in range(value.shape[0]):
        out[f"{m.group(1)}.{i}.{m.group(2)}"] = value[i]
  return out


def _layer_groups(paths: Iterable[str]) -> dict[str, dict[int, str]]:
  """{stacked path: {layer index: per-layer path}} for the per-layer paths among `paths`."""
  groups: dict[str, dict[int, str]] = {}
  for path in paths:
    m = _LAYER.fullmatch(path)
    if m is not None:
      groups.setdefault(f"{m.group(1)}.{m.group(3)}", {})[int(m.group(2))] = path
  for stacked, layers in groups.items():
    if sorted(layers) != list(range(len(layers))):
      raise ConversionError(f"{stacked}: layers {sorted(layers)} are not 0..{len(layers) - 1}")
  return groups


def stack_layers(flat: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{dotted path: array} with per-layer entries stacked into one leaf per parameter (numpy)."""
  groups = _layer_groups(flat)
  members = {p for layers in groups.values() for p in layers.values()}
  out = {p: v for p, v in flat.items() if p not in members}
  for stacked, layers in groups.items():
    out[stacked] = np.stack([np.asarray(flat[layers[i]]) for i in range(len(layers))])
  return out


def to_layout(params: Mapping, scan_layers: bool) -> dict:
  """Params in the stacked (`scan_layers`) or the unrolled layer layout (exact)."""
  flat = params_lib.flatten(params)
  return params_lib.unflatten(stack_layers(flat) if scan_layers else unstack_layers(flat))


def _to_torch_layout(transform: str, arrays: list[np.ndarray]) -> np.ndarray:
  if transform == "identity":
    return arrays[0]
  if transform == "transpose":
    return arrays[0].T
  if transform == "conv":
    return arrays[0].transpose(2, 1, 0)
  if transform == "packed_kernel":
    return np.concatenate([a.T for a in arrays], axis=0)
  if transform == "packed_bias":
    return np.concatenate(arrays, axis=0)
  raise AssertionError(transform)


def _from_torch_layout(transform: str, t: np.ndarray, n_parts: int) -> list[np.ndarray]:
  if transform == "identity":
    return [t]
  if transform == "transpose":
    return [t.T]
  if transform == "conv":
    return [t.transpose(2, 1, 0)]
  if transform == "packed_kernel":
    return [p.T for p in np.split(t, n_parts, axis=0)]
  if transform == "packed_bias":
    return list(np.split(t, n_parts, axis=0))
  raise AssertionError(transform)


def _expected_torch_shape(transform: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
  dummies = [np.empty(s, np.uint8) for s in shapes]
  return _to_torch_layout(transform, dummies).shape


def canonical_key(key: str) -> str:
  """Maps either weight-norm naming to the new one; other keys unchanged."""
  for new, old in _LEGACY_WN.items():
    if key.endswith("." + old) and "pos_conv_embed.conv" in key:
      return key[: -len(old)] + new
  return key


def output_key(key: str, weight_norm: str) -> str:
  if weight_norm not in WEIGHT_NORM_NAMINGS:
    raise ValueError(f"weight_norm must be one of {WEIGHT_NORM_NAMINGS}, got {weight_norm!r}")
  if weight_norm == "legacy":
    for new, old in _LEGACY_WN.items():
      if key.endswith(new):
        return key[: -len(new)] + old
  return key


def to_numpy(x) -> np.ndarray:
  """torch tensor / jax array / numpy -> numpy, without copying where possible."""
  if hasattr(x, "detach"):  # torch, imported only by callers that have it
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":
      x = x.float()
    return x.numpy()
  return np.asarray(x)


def torch_to_jax(
    like: Mapping,
    state_dict: Mapping[str, Any],
    *,
    source: str = "state dict",
    ignore: Callable[[str], bool] | None = None,
    release: Callable[[Any], None] | None = None,
) -> dict:
  """Converts a torch state dict to params (jax arrays) shaped like the params `like`.

  `like` may be abstract (`params.of` an `nnx.eval_shape` model). Tensors are converted one at a time.
  Every key is checked: unknown keys (not `ignore`d), missing keys and wrong shapes all
  raise one ConversionError that lists them, naming `source`. `release(tensor)` is
  called on each source tensor once it is converted (e.g. to drop its mmapped pages).
  """
  # Per-layer (torch) view of the model's leaves: {path: (shape, dtype)}, and for each
  # stacked leaf a numpy buffer that the per-layer tensors are written into.
  specs, buffers, into = {}, {}, {}
  like = params_lib.flatten(like)
  for name, v in like.items():
    m = _STACKED.fullmatch(name)
    if m is None:
      specs[name] = (tuple(v.shape), v.dtype)
      into[name] = (name, None)
      continue
    buffers[name] = None
    for i in range(v.shape[0]):
      layer_path = f"{m.group(1)}.{i}.{m.group(2)}"
      specs[layer_path] = (tuple(v.shape[1:]), v.dtype)
      into[layer_path] = (name, i)
  entries = build_entries(specs)
  sd = {}
  for k in state_dict:
    ck = canonical_key(k)
    if ck in sd:
      raise ConversionError(f"{source}: both weight-norm namings present for {ck}")
    sd[ck] = k
  needed = {e.torch_key for e in entries}
  missing = sorted(needed - sd.keys())
  unknown = sorted(sd[k] for k in sd.keys() - needed if not (ignore and ignore(sd[k])))
  out: dict[str, Any] = {}
  bad_shapes = []
  for e in entries:
    if e.torch_key not in sd:
      continue
    shapes = [specs[p][0] for p in e.jax_paths]
    want = _expected_torch_shape(e.transform, shapes)
    t = state_dict[sd[e.torch_key]]
    if tuple(t.shape) != want:
      bad_shapes.append(f"{sd[e.torch_key]}: {tuple(t.shape)}, expected {want}")
      continue
    for p, arr in zip(e.jax_paths, _from_torch_layout(e.transform, to_numpy(t), len(e.jax_paths))):
      path, layer = into[p]
      dtype = specs[p][1]
      if layer is None:
        # A device copy: releases the (memory-mapped) source, and orbax saves jax arrays
        # with far less extra host memory than numpy ones.
        out[path] = jnp.array(arr, dtype=dtype)
      else:  # one layer of a stacked leaf: a host copy into its buffer
        if buffers[path] is None:
          buffers[path] = np.empty(like[path].shape, dtype)
        buffers[path][layer] = arr
    if release is not None:
      release(t)
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing key(s): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
  if unknown:
    problems.append(f"{len(unknown)} unknown key(s): {', '.join(unknown[:20])}{' ...' if len(unknown) > 20 else ''}")
  if bad_shapes:
    problems.append(f"{len(bad_shapes)} mis-shaped key(s): {'; '.join(bad_shapes[:20])}")
  if problems:
    raise ConversionError(f"{source} does not match the model: " + " | ".join(problems))
  for path in list(buffers):
    out[path] = jnp.asarray(buffers.pop(path))
  return params_lib.unflatten(out)


def jax_to_torch(params: dict, *, weight_norm: str = "new", consume: bool = False) -> dict[str, np.ndarray]:
  """Params as a torch-layout {key: numpy array}.

  `consume=True` empties `params` (a dict the caller owns) and drops each array once
  converted, so a transposed copy never coexists with the whole input (bounded
  conversion memory).
  """
  flat = params_lib.flatten(params)
  if consume:
    params.clear()
  params = flat
  stacked = [p for p in params if _STACKED.fullmatch(p)]  # -> per-layer views of one host array each
  params.update(unstack_layers({p: np.asarray(params.pop(p)) for p in stacked}))
  out = {}
  for e in build_entries(params):
    leaves = [np.asarray(params.pop(p)) for p in e.jax_paths]
    out[output_key(e.torch_key, weight_norm)] = np.ascontiguousarray(_to_torch_layout(e.transform, leaves))
  return out


def torch_shapes(params: Mapping, *, weight_norm: str = "new") -> dict[str, tuple[int, ...]]:
  """The torch key -> shape map params export to, from shapes alone (abstract params work)."""
  shapes = {p: np.broadcast_to(np.uint8(0), v.shape) for p, v in params_lib.flatten(params).items()}
  shapes = {p: a.shape for p, a in unstack_layers(shapes).items()}  # views of one byte
  return {
      output_key(e.torch_key, weight_norm): _expected_torch_shape(e.transform, [shapes[p] for p in e.jax_paths])
      for e in build_entries(shapes)
  }
