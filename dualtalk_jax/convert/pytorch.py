"""DualTalk checkpoints between PyTorch files and orbax checkpoint directories.

    torch file (.pth/.pt/.safetensors) -> orbax checkpoint directory   `torch_to_checkpoint`
    checkpoint directory / workdir     -> .pth or .safetensors         `checkpoint_to_torch`

Exports record their model config, so they load without naming one: `.safetensors` in
the file's metadata (`CONFIG_METADATA_KEY`), `.pth`/`.pt`/`.bin` in a JSON beside the file
(`<file>.json`; the `.pth` itself stays the bare state dict the released code
strict-loads). A file without one (the released `DualTalk.pth`) needs a config name, and
when its keys do not fit that config the error names the config they do fit.

The layout change is the one conversion table (`table.py`). Torch files are read with
`weights_only=True` and memory-mapped, then converted one tensor at a time into jax
arrays, dropping each tensor's mapped pages once it is copied, so a 2.6 GB checkpoint
converts in about 1.5x its own size of memory. Outputs are written under a
temporary name and renamed when complete. torch is needed only for `.pth`/`.pt` files.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from dualtalk_jax import checkpoint, params as params_lib
from dualtalk_jax.config import CONFIGS, DualTalkConfig, get_model_config
from dualtalk_jax.convert import table

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
_WRAPPERS = ("state_dict", "model", "model_state_dict")
CONFIG_METADATA_KEY = "dualtalk_jax.model_config"
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02"  # torch < 1.6 files: a protocol-2 pickle


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
  with open(path, "rb") as f:
    head = f.read(4)
  if not head.startswith((_ZIP_MAGIC, _LEGACY_MAGIC)):
    raise ValueError(f"{path}: cannot read torch checkpoint: not a PyTorch file, neither a zip archive "
                     f"(torch.save since 1.6) nor a legacy torch pickle (the file starts with {head!r})")
  torch = _import_torch(path)
  mapped = head.startswith(_ZIP_MAGIC)  # legacy files cannot be memory-mapped
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
  except Exception as e:
    kind = "zip archive" if mapped else "legacy torch pickle"
    raise ValueError(f"{path}: cannot read torch checkpoint: a {kind} that torch cannot load as weights "
                     f"(truncated or not a state dict; {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
  return unwrap_state_dict(obj, path), mapped


def config_sidecar(path: str) -> str:
  """The JSON beside a .pth/.pt/.bin export that records its model config."""
  return os.fspath(path) + ".json"


def recorded_config(path: str) -> DualTalkConfig | None:
  """The model config an export recorded (safetensors metadata or the JSON beside it), or None."""
  path = os.fspath(path)
  try:
    if path.endswith(SAFETENSORS_SUFFIX):
      from safetensors import safe_open

      with safe_open(path, "np") as f:
        text = (f.metadata() or {}).get(CONFIG_METADATA_KEY)
    else:
      side = config_sidecar(path)
      text = open(side).read() if os.path.exists(side) else None
    return DualTalkConfig.from_dict(json.loads(text)) if text else None
  except (OSError, ValueError, TypeError) as e:
    raise ValueError(f"{path}: its recorded model config cannot be read ({e})") from None


def matching_config_names(state_dict: Mapping[str, Any]) -> list[str]:
  """Named configs whose released-layout keys and shapes are exactly those of `state_dict`."""
  from dualtalk_jax.models.dualtalk import abstract_model

  have = {table.canonical_key(k): tuple(v.shape) for k, v in state_dict.items()}
  return [name for name, cfg in CONFIGS.items()
          if {table.canonical_key(k): s for k, s in table.torch_shapes(params_lib.of(abstract_model(cfg))).items()} == have]


def torch_file_config(path: str, cfg: DualTalkConfig | None = None, default: str = "large") -> DualTalkConfig:
  """The model config of a torch file: the one it recorded, else `cfg`, else the `default` name.

  A `cfg` given beside a recorded config must equal it.
  """
  recorded = recorded_config(path)
  if recorded is not None and cfg is not None and cfg != recorded:
    raise ValueError(f"{path}: records a different model config than the one asked for (--config / "
                     "--wav2vec2_config); drop them to use the recorded one")
  return recorded or cfg or get_model_config(default)


def config_hint(path: str, state_dict: Mapping[str, Any], cfg: DualTalkConfig) -> str:
  """What to pass when a torch file without a recorded config does not fit `cfg`."""
  names = [n for n, c in CONFIGS.items() if c == cfg]
  asked = f"--config={names[0]}" if names else "the config asked for"
  fits = matching_config_names(state_dict)
  if fits:
    return f"{path} records no model config and its keys fit --config={fits[0]}, not {asked}: pass --config={fits[0]}"
  return (f"{path} records no model config and fits none of the named configs ({', '.join(CONFIGS)}): pass "
          "--config (and --wav2vec2_config with the HF config.json of its wav2vec2) for the model it holds")


def load_torch_params(path: str, cfg: DualTalkConfig | None = None, default: str = "large") -> tuple[dict, DualTalkConfig]:
  """(params tree, model config) of a released-layout torch file; config per `torch_file_config`."""
  sd, mapped = _read_torch_file(path)
  recorded = recorded_config(path)
  cfg = torch_file_config(path, cfg, default)
  try:
    params = state_dict_to_params(sd, cfg, source=os.fspath(path), release=_drop_mapped_pages if mapped else None)
  except table.ConversionError as e:
    if recorded is None:
      raise table.ConversionError(f"{config_hint(path, sd, cfg)}. Details: {e}") from None
    raise
  return params, cfg


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


def write_torch_file(state_dict: Mapping[str, np.ndarray], output: str, *, overwrite: bool = False,
                     cfg: DualTalkConfig | None = None) -> None:
  """Writes a state dict as .pth (torch.save of tensors) or .safetensors, atomically.

  `cfg` is recorded: in the safetensors metadata, or as `<output>.json` beside a .pth
  (written first, so a complete .pth never lacks it).
  """
  from dualtalk_jax.data.records import atomic_write

  output = os.fspath(output)
  if not is_torch_file(output):
    raise ValueError(f"{output}: output must end in .pth, .pt, .bin or .safetensors")
  tmp = _atomic_target(output, overwrite)
  config_text = json.dumps(cfg.to_dict()) if cfg is not None else None
  try:
    if output.endswith(SAFETENSORS_SUFFIX):
      from safetensors.numpy import save_file

      save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp,
                metadata={CONFIG_METADATA_KEY: config_text} if config_text else None)
    else:
      torch = _import_torch(output)
      writable = lambda v: v if v.flags.writeable and v.flags.c_contiguous else np.array(v, order="C")
      torch.save({k: torch.from_numpy(writable(np.asarray(v))) for k, v in state_dict.items()}, tmp)
      side = config_sidecar(output)
      if config_text:
        def write(t):
          with open(t, "w") as f:
            f.write(config_text)

        atomic_write(side, write)
      elif os.path.exists(side):  # an overwritten export's config no longer applies
        os.remove(side)
    os.replace(tmp, output)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def require_released(cfg: DualTalkConfig, source: str) -> None:
  """The torch side is the released module tree only: ablations, the interaction residual
  and an encoder without its feature-projection LayerNorm have no PyTorch counterpart, so
  they neither export nor import."""
  if not cfg.is_released:
    raise table.ConversionError(f"{source}: holds a model with {', '.join(cfg.unreleased_parts)}; only the released "
                                "DualTalk architecture converts to and from PyTorch (keep this checkpoint in JAX)")


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
  """A released-layout state dict -> params (jax arrays), every key checked."""
  from dualtalk_jax.models.dualtalk import abstract_model

  require_released(cfg, source)
  return table.torch_to_jax(params_lib.of(abstract_model(cfg)), state_dict, source=source, release=release)


def params_to_state_dict(params: dict, cfg: DualTalkConfig, *, weight_norm: str = "new",
                         consume: bool = False) -> dict[str, np.ndarray]:
  """Params -> released-layout state dict, in the released key order (`consume`: see
  `table.jax_to_torch`)."""
  require_released(cfg, "params")
  sd = table.jax_to_torch(params, weight_norm=weight_norm, consume=consume)
  order = torch_key_order(cfg)
  if order is not None:
    order = [table.output_key(k, weight_norm) for k in order]
    if set(order) != set(sd):
      raise table.ConversionError(f"exported keys differ from the released tree: {sorted(set(order) ^ set(sd))[:10]}")
    sd = {k: sd[k] for k in order}
  return sd


def torch_to_checkpoint(input_path: str, output_dir: str, cfg: DualTalkConfig | None = None, *,
                        overwrite: bool = False, default: str = "large") -> str:
  """Converts a released-layout torch file into an orbax checkpoint directory.

  The model config is the one the file recorded, else `cfg`, else `default` (see
  `torch_file_config`).
  """
  if os.path.exists(output_dir) and not overwrite:
    raise FileExistsError(f"{output_dir}: already exists (pass --overwrite to replace it)")
  params, cfg = load_torch_params(input_path, cfg, default)
  gc.collect()  # unmaps the torch file before the save makes its own buffers
  return checkpoint.save_params(output_dir, params, cfg, overwrite=overwrite)


def checkpoint_to_torch(input_path: str, output: str, *, weight_norm: str = "new", overwrite: bool = False, cfg: DualTalkConfig | None = None) -> str:
  """Converts a checkpoint directory (or a workdir's latest) into a released-layout torch file.

  `cfg`, when given, must equal the model config recorded in the checkpoint (the layer
  layout aside: both layouts export the same per-layer keys).
  """
  _atomic_target(output, overwrite)  # fail before the (slow) restore
  require_released(checkpoint.read_model_config(input_path), os.fspath(input_path))  # before the restore
  params, stored_cfg, _ = checkpoint.restore_params(input_path)
  if cfg is not None and dataclasses.replace(cfg, scan_layers=stored_cfg.scan_layers) != stored_cfg:  # any layout
    raise table.ConversionError(f"{input_path}: holds a different model config than the one asked for")
  sd = params_to_state_dict(params, stored_cfg, weight_norm=weight_norm, consume=True)  # frees each input as it goes
  write_torch_file(sd, output, overwrite=overwrite, cfg=stored_cfg)
  return output
