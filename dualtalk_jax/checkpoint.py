"""Orbax checkpoints: the only module that imports orbax.

A checkpoint directory is an orbax `CheckpointManager` root: numbered step folders, each
holding items (`params` always; training adds its own), and `model_config.json` beside
them, so a checkpoint says which architecture it holds. A converted `DualTalk.pth` is such
a directory with one step; a training workdir keeps one under `<workdir>/checkpoints`.

Params are stored in the library's one form (`dualtalk_jax.params`): a nested dict keyed
by the NNX path components as strings, which orbax round-trips exactly.

Layout: the wav2vec2 layer stacks are stored as the model holds them, stacked
(`DualTalkConfig.scan_layers`, the default) or one entry per layer; `model_config.json`
records which (a file written before the field existed holds the unrolled layout).
`restore_params(scan_layers=...)` converts to the layout asked for (exact,
`convert.table.to_layout`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from dualtalk_jax import params as params_lib
from dualtalk_jax.config import DualTalkConfig

MODEL_CONFIG = "model_config.json"
WORKDIR_CHECKPOINTS = "checkpoints"
DAMAGED = "damaged_checkpoints"  # beside `checkpoints`: steps that failed to restore


def resolve(path: str | os.PathLike) -> str:
  """The absolute checkpoint root of a checkpoint directory or a training workdir.

  Absolute, because orbax resolves item paths against its own root: a relative path
  made it read no metadata at all.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.isdir(os.path.join(path, WORKDIR_CHECKPOINTS)):
    path = os.path.join(path, WORKDIR_CHECKPOINTS)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such checkpoint directory")
  if not os.path.exists(os.path.join(path, MODEL_CONFIG)):
    raise FileNotFoundError(f"{path}: not a dualtalk-jax checkpoint (no {MODEL_CONFIG})")
  return path


def read_model_config(path: str | os.PathLike) -> DualTalkConfig:
  root = resolve(path)
  file = os.path.join(root, MODEL_CONFIG)
  try:
    with open(file) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{file}: not valid JSON ({e})") from None
  d.setdefault("scan_layers", False)  # written before layer scanning: the unrolled layout
  return DualTalkConfig.from_dict(d)


def layout_name(scan_layers: bool) -> str:
  return "stacked wav2vec2 layers (scan_layers=True)" if scan_layers else "unrolled wav2vec2 layers (scan_layers=False)"


def write_model_config(root: str, cfg: DualTalkConfig) -> None:
  tmp = os.path.join(root, f".{MODEL_CONFIG}.{uuid.uuid4().hex}")
  with open(tmp, "w") as f:
    json.dump(cfg.to_dict(), f, indent=2)
  os.replace(tmp, os.path.join(root, MODEL_CONFIG))


def save_params(directory: str | os.PathLike, params: Mapping, cfg: DualTalkConfig, *, step: int = 0, overwrite: bool = False) -> str:
  """Writes a standalone checkpoint (params + model config) atomically.

  It is built under a temporary sibling name and renamed into place when complete, so
  an interrupted save never leaves a directory that looks like a checkpoint.
  """
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory):
    if not overwrite:
      raise FileExistsError(f"{directory}: already exists (pass --overwrite to replace it)")
  tmp = f"{directory}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    # Uncompressed: zstd would hold an encoded copy of every array until the write ends
    # (+0.8x the params in peak memory) to save a few percent of disk on float weights.
    mgr = ocp.CheckpointManager(tmp, options=ocp.CheckpointManagerOptions(create=True),
                                item_handlers={"params": ocp.PyTreeCheckpointHandler(use_compression=False)})
    mgr.save(step, args=ocp.args.Composite(params=ocp.args.PyTreeSave(params)))
    mgr.wait_until_finished()
    mgr.close()
    write_model_config(tmp, cfg)
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return directory


def restore_params(path: str | os.PathLike, *, step: int | None = None, target: Mapping | None = None,
                   scan_layers: bool | None = None) -> tuple[dict, DualTalkConfig, int]:
  """(params tree, model config, step) from a checkpoint directory or a workdir's latest.

  `target` (params of `jax.ShapeDtypeStruct`s) restores with its dtypes and shardings; without
  it the arrays come back as host numpy arrays. `scan_layers` (None = as stored) asks for
  a param layout: a checkpoint of the other one is converted (exactly) and the returned
  config says the layout asked for.
  """
  root = resolve(path)
  cfg = read_model_config(root)
  if scan_layers is not None and bool(scan_layers) != cfg.scan_layers:
    from dualtalk_jax.convert.table import to_layout

    params, cfg, step = restore_params(root, step=step)
    params = to_layout(params, bool(scan_layers))
    if target is not None:
      params = jax.tree.map(lambda x, t: jax.device_put(np.asarray(x, t.dtype), getattr(t, "sharding", None)),
                            params, target)
    return params, dataclasses.replace(cfg, scan_layers=bool(scan_layers)), step
  with ocp.CheckpointManager(root, item_names=("params",),
                             item_handlers={"params": ocp.StandardCheckpointHandler()}) as mgr:
    if step is None:
      step = mgr.latest_step()
    if step is None:
      raise FileNotFoundError(f"{root}: holds no complete checkpoint step")
    item = os.path.join(root, str(step), "params")
    if not os.path.isdir(item):
      raise FileNotFoundError(f"{item}: no params saved at step {step}")
    if target is None:  # host numpy arrays, whatever topology the checkpoint was saved on
      meta = params_lib.flatten(dict(mgr.item_metadata(step)["params"].items()))
      target = params_lib.unflatten({p: np.empty(m.shape, m.dtype) for p, m in meta.items()})
    params = mgr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
  return params, cfg, step


def _any_process(flag: bool) -> bool:
  """True on every process when `flag` is True on any."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


class TrainCheckpointer:
  """Training checkpoints under `<workdir>/checkpoints`: the full state, resumable.

  Items per step: `params` (what conversion and inference read), `opt_state`, `meta`
  (step and metrics, JSON) and `data_iter` (the grain iterator of this process). Saves
  are asynchronous; the last `keep` steps are kept. A second manager under
  `<workdir>/best` keeps the params with the lowest validation loss.
  """

  def __init__(self, workdir: str, cfg: DualTalkConfig, *, keep: int = 3):
    import grain

    self._grain = grain
    self.root = os.path.join(os.path.abspath(workdir), WORKDIR_CHECKPOINTS)
    self.best_root = os.path.join(os.path.abspath(workdir), "best")
    self.manager = ocp.CheckpointManager(
        self.root,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True),
    )
    self.best = ocp.CheckpointManager(
        self.best_root,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m["val_loss"], best_mode="min"),
    )
    if jax.process_index() == 0:
      for root in (self.root, self.best_root):
        if os.path.exists(os.path.join(root, MODEL_CONFIG)):
          stored = read_model_config(root)
          if stored != cfg and dataclasses.replace(stored, scan_layers=cfg.scan_layers) == cfg:
            raise ValueError(f"{root}: holds checkpoints with {layout_name(stored.scan_layers)}, the run uses "
                             f"{layout_name(cfg.scan_layers)}; set the run's model scan_layers={stored.scan_layers} "
                             "to resume it, or use a fresh workdir")
          if stored != cfg:
            raise ValueError(f"{root}: holds checkpoints of a different model config; use a fresh workdir")
        else:
          write_model_config(root, cfg)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Mapping, data_iter, metrics: Mapping[str, float] | None = None) -> None:
    meta = {"step": int(step), "metrics": {k: float(v) for k, v in (metrics or {}).items()}}
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state["params"]),
        opt_state=ocp.args.StandardSave({"step": state["step"], "opt_state": state["opt_state"]}),
        meta=ocp.args.JsonSave(meta),
        data_iter=self._grain.checkpoint.CheckpointSave(data_iter),
    ), force=True)

  def save_best(self, step: int, params: Mapping, val_loss: float) -> None:
    self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), metrics={"val_loss": float(val_loss)}, force=True)

  def restore_latest(self, abstract_state: Mapping, data_iter) -> dict | None:
    """The newest step that restores (None: the workdir holds no checkpoint).

    A step that fails to restore, say a file truncated by a disk fault after the save, is
    named in a warning and the next newest is tried. Once an older step restores, the newer
    unreadable ones are moved to `<workdir>/damaged_checkpoints/` (kept for inspection, out
    of the way of the steps the run saves again). When no step restores, nothing is moved
    and the error names every step's failure (an incompatible run, not a damaged disk).
    Every host tries the same steps and they all fall back together.
    """
    failed: list[tuple[int, str]] = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, error = self.restore(step, abstract_state, data_iter), ""
      except Exception as e:  # noqa: BLE001  (any read error: tensorstore, OCDBT, JSON, grain)
        state, error = None, f"{type(e).__name__}: {str(e)[:500]}"
      if not _any_process(bool(error)):
        if failed:
          self._set_aside([s for s, _ in failed])
          logging.warning("%s: resumed from step %d, the newest complete checkpoint", self.root, step)
        return state
      error = error or "failed to restore on another process"
      logging.warning("%s: checkpoint step %d is damaged or incomplete (%s); falling back to the one before",
                      self.root, step, error)
      failed.append((step, error))
    if failed:
      raise RuntimeError(f"{self.root}: no checkpoint step restores: " +
                         "; ".join(f"step {s}: {e}" for s, e in failed))
    return None

  def _set_aside(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      dest = os.path.join(os.path.dirname(self.root), DAMAGED)
      os.makedirs(dest, exist_ok=True)
      for step in steps:
        target = os.path.join(dest, f"{step}-{uuid.uuid4().hex[:8]}")
        os.replace(os.path.join(self.root, str(step)), target)
        logging.warning("moved the damaged checkpoint step %d to %s", step, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("damaged checkpoints set aside")
    self.manager.reload()

  def restore(self, step: int, abstract_state: Mapping, data_iter) -> dict:
    """The state at `step` placed like `abstract_state`; `data_iter` is restored in place."""
    r = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state["params"]),
        opt_state=ocp.args.StandardRestore({"step": abstract_state["step"], "opt_state": abstract_state["opt_state"]}),
        data_iter=self._grain.checkpoint.CheckpointRestore(data_iter),
    ))
    return {"step": r["opt_state"]["step"], "params": r["params"], "opt_state": r["opt_state"]["opt_state"]}

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
    self.best.close()
