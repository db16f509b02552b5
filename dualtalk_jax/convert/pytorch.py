"""DualTalk checkpoints between PyTorch files and orbax checkpoint directories.

    torch file (.pth/.pt/.safetensors) -> orbax checkpoint directory   `torch_to_checkpoint`
    checkpoint directory / workdir     -> .pth or .safetensors         `checkpoint_to_torch`

The layout change is the one conversion table (`table.py`). Torch files are read with
`weights_only=True` and memory-mapped, then converted one tensor at a time into jax
arrays, dropping each tensor's mapped pages once it is copied, so a 2.6 GB checkpoint
converts in about 1.5x its own size of memory. Outputs are written under a
temporary name and renamed when complete. torch is needed only for `.pth`/`.pt` files.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from dualtalk_jax import checkpoint
from dualtalk_jax.config import DualTalkConfig
from dualtalk_jax.convert import table

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
_WRAPPERS = ("state_dict", "model", "model_state_dict")


def is_torch_file(path: str) -> bool:
  return os.fspath(path).endswith(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))


def _import_torch(path):
  try:
    import torch
  except ImportError:
    raise ImportError(f"{path}: reading or writing .pth files needs torch (pip install -r requirements-test.txt)") from None
  return torch


def unwrap_state_dict(obj: Any, source: str) -> dict[str, Any]:
  """Accepts a bare state dict, one wrapped in {'state_dict'|'model': ...}, and `module.` prefixes."""
  for _ in range(2):
    if isinstance(obj, Mapping) and not any(hasattr(v, "shape") for v in obj.values()):
      inner = [k for k in _WRAPPERS if k in obj]
      if not inner:
        raise table.ConversionError(f"{source}: not a state dict (top-level keys: {sorted(obj)[:10]})")
      obj = obj[inner[0]]
  if not isinstance(obj, Mapping):
    raise table.ConversionError(f"{source}: holds a {type(obj).__name__}, not a state dict")
  sd = {k: v for k, v in obj.items() if hasattr(v, "shape")}
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  return sd


def read_torch_file(path: str | os.PathLike) -> dict[str, Any]:
  """A state dict from .pth/.pt/.bin (torch tensors, memory-mapped) or .safetensors (numpy)."""
  return _read_torch_file(path)[0]


def _read_torch_file(path) -> tuple[dict[str, Any], bool]:
  """(state dict, whether its tensors are memory-mapped from the file)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  if path.endswith(SAFETENSORS_SUFFIX):
    from safetensors.numpy import load_file

    try:
      return unwrap_state_dict(load_file(path), path), False
    except table.ConversionError:
      raise
    except Exception as e:
      raise ValueError(f"{path}: cannot read safetensors file ({e})") from None
  torch = _import_torch(path)
  try:
    obj, mapped = torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
  except Exception as e:
    try:  # files written by torch < 1.6 (not zip) cannot be memory-mapped
      obj, mapped = torch.load(path, map_location="cpu", weights_only=True), False
    except Exception:
      raise ValueError(f"{path}: cannot read torch checkpoint ({type(e).__name__}: {e})") from None
  return unwrap_state_dict(obj, path), mapped


def _drop_mapped_pages(tensor) -> None:
  """Drops the resident pages of a tensor memory-mapped from a file (`madvise(DONTNEED)`).

  torch maps checkpoint files privately and we only read them, so the pages are clean:
  the kernel discards them and a later read would fault them in from the file again.
  Converting a 2.6 GB file thus never holds the whole file resident beside its copy.
  Never call it on tensors that are not file-mapped (it would zero anonymous memory).
  """
  import ctypes
  import mmap

  storage = tensor.untyped_storage()
  ptr, size = storage.data_ptr(), storage.nbytes()
  start = -(-ptr // mmap.PAGESIZE) * mmap.PAGESIZE
  end = (ptr + size) // mmap.PAGESIZE * mmap.PAGESIZE
  if end > start:
    try:
      libc = ctypes.CDLL(None)
      libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)  # MADV_DONTNEED
    except (OSError, AttributeError):  # not Linux/glibc: the pages stay until the unmap
      pass


def _atomic_target(output: str, overwrite: bool) -> str:
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"{output}: already exists (pass --overwrite to replace it)")
  parent = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"{parent}: output folder does not exist")
  return os.path.join(parent, f".{os.path.basename(output)}.tmp-{uuid.uuid4().hex[:8]}")


def write_torch_file(state_dict: Mapping[str, np.ndarray], output: str, *, overwrite: bool = False) -> None:
  """Writes a state dict as .pth (torch.save of tensors) or .safetensors, atomically."""
  output = os.fspath(output)
  if not is_torch_file(output):
    raise ValueError(f"{output}: output must end in .pth, .pt, .bin or .safetensors")
  tmp = _atomic_target(output, overwrite)
  try:
    if output.endswith(SAFETENSORS_SUFFIX):
      from safetensors.numpy import save_file

      save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp)
    else:
      torch = _import_torch(output)
      writable = lambda v: v if v.flags.writeable and v.flags.c_contiguous else np.array(v, order="C")
      torch.save({k: torch.from_numpy(writable(np.asarray(v))) for k, v in state_dict.items()}, tmp)
    os.replace(tmp, output)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def torch_key_order(cfg: DualTalkConfig) -> list[str] | None:
  """The released module tree's state-dict key order (meta device), or None without torch."""
  try:
    import torch

    from third_party.dualtalk_torch import DualTalk as TorchDualTalk
  except ImportError:
    return None
  with torch.device("meta"):
    return list(TorchDualTalk.from_config(cfg).state_dict())


def state_dict_to_params(state_dict: Mapping[str, Any], cfg: DualTalkConfig, *, source: str = "state dict",
                         release=None) -> dict:
  """A released-layout state dict -> checkpoint params tree (jax arrays), every key checked."""
  from dualtalk_jax.models.dualtalk import abstract_model

  arrays = table.torch_to_jax(abstract_model(cfg), state_dict, source=source, release=release)
  return checkpoint.params_tree(arrays)


def params_to_state_dict(params: Mapping, cfg: DualTalkConfig, *, weight_norm: str = "new") -> dict[str, np.ndarray]:
  """Checkpoint params tree -> released-layout state dict, in the released key order."""
  return _flat_to_state_dict({table.path_str(p): v for p, v in checkpoint.flatten_tree(params).items()}, cfg, weight_norm)


def _flat_to_state_dict(flat: dict, cfg: DualTalkConfig, weight_norm: str) -> dict[str, np.ndarray]:
  """{dotted path: array} -> ordered state dict; empties `flat` as it goes (see jax_to_torch)."""
  sd = table.jax_to_torch(flat, weight_norm=weight_norm, consume=True)
  order = torch_key_order(cfg)
  if order is not None:
    order = [table.output_key(k, weight_norm) for k in order]
    if set(order) != set(sd):
      raise table.ConversionError(f"exported keys differ from the released tree: {sorted(set(order) ^ set(sd))[:10]}")
    sd = {k: sd[k] for k in order}
  return sd


def torch_to_checkpoint(input_path: str, output_dir: str, cfg: DualTalkConfig, *, overwrite: bool = False) -> str:
  """Converts a released-layout torch file into an orbax checkpoint directory."""
  if os.path.exists(output_dir) and not overwrite:
    raise FileExistsError(f"{output_dir}: already exists (pass --overwrite to replace it)")
  sd, mapped = _read_torch_file(input_path)
  params = state_dict_to_params(sd, cfg, source=os.fspath(input_path),
                                release=_drop_mapped_pages if mapped else None)
  del sd  # unmaps the torch file before the save makes its own buffers
  gc.collect()
  return checkpoint.save_params(output_dir, params, cfg, overwrite=overwrite)


def checkpoint_to_torch(input_path: str, output: str, *, weight_norm: str = "new", overwrite: bool = False, cfg: DualTalkConfig | None = None) -> str:
  """Converts a checkpoint directory (or a workdir's latest) into a released-layout torch file.

  `cfg`, when given, must equal the model config recorded in the checkpoint (the layer
  layout aside: both layouts export the same per-layer keys).
  """
  _atomic_target(output, overwrite)  # fail before the (slow) restore
  params, stored_cfg, _ = checkpoint.restore_params(input_path)
  if cfg is not None and dataclasses.replace(cfg, scan_layers=stored_cfg.scan_layers) != stored_cfg:  # any layout
    raise table.ConversionError(f"{input_path}: holds a different model config than the one asked for")
  flat = {table.path_str(p): v for p, v in checkpoint.flatten_tree(params).items()}
  del params  # `flat` is now the only reference: converting it frees each input as it goes
  sd = _flat_to_state_dict(flat, stored_cfg, weight_norm)
  write_torch_file(sd, output, overwrite=overwrite)
  return output
