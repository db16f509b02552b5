"""Vertex metrics of FLAME meshes: LVE and FDD as FaceFormer / CodeTalker compute them.

For a file with ground-truth vertices x (T, V, 3), predicted x^, template x0 (V, 3):

- LVE (lip vertex error): per frame, the maximum over lip vertices of the *squared* L2
  distance |x_tv - x^_tv|^2; summed over all frames of all files and divided by the total
  number of frames (a frame-weighted mean, as their `cnt` does). Units: m^2 (FLAME
  metres); papers print it x 1e-5.
- FDD (upper-face dynamics deviation): per file,
  mean_v std_t |x_tv - x0_v|^2  -  mean_v std_t |x^_tv - x0_v|^2   over upper-face vertices
  (np.std, ddof 0), signed, then averaged over files. Units: m^2; papers print it x 1e-7.

Here the meshes come from FLAME: both x and x^ use the ground truth's identity (the npz
`shape`, averaged over frames; zero when absent), the template x0 is that face with zero
expression and pose, and the neck rotation is left out by default (faces in the head's
frame, as VOCASET's registered meshes are; the neck is scored by the pose metrics).
Regions come from FLAME's `FLAME_masks.pkl`: lips = `lips`, upper face =
`forehead` + `eye_region` (their union).

The per-file kernel is jitted and runs on restricted FLAME models (only the region's
vertices are skinned), padded to a length bucket with a frame mask (one compile per
bucket).
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dualtalk_jax import audio
from dualtalk_jax.face import flame

LIP_KEY = "lips"
UPPER_KEYS = ("forehead", "eye_region")
KEYS = ("lve", "fdd")


def regions(masks: dict[str, np.ndarray], path: str = "FLAME_masks.pkl") -> tuple[np.ndarray, np.ndarray]:
  """(lip vertex indices, upper-face vertex indices) from FLAME's mask dict."""
  missing = [k for k in (LIP_KEY, *UPPER_KEYS) if k not in masks]
  if missing:
    raise flame.FlameModelError(f"{path}: mask keys {missing} missing (has {sorted(masks)}); "
                                "expected FLAME's FLAME_masks.pkl")
  upper = np.unique(np.concatenate([masks[k] for k in UPPER_KEYS]))
  if not len(masks[LIP_KEY]) or not len(upper):
    raise flame.FlameModelError(f"{path}: an empty lip or upper-face region")
  return np.asarray(masks[LIP_KEY]), upper


def _verts(model, motion, shape, zero_neck):
  exp, jaw, neck = (motion[:, audio.MOTION_GROUPS[g]] for g in ("exp", "jaw", "neck"))
  neck = jnp.zeros_like(neck) if zero_neck else neck
  return flame.forward(model, exp, shape=shape, jaw=jaw,
                       global_rot=neck)  # "neck" on the root joint, as flame.py explains


@functools.partial(jax.jit, static_argnames=("zero_neck",))
def file_terms(lip_model, upper_model, pred, gt, shape, mask, zero_neck=True):
  """(sum over valid frames of the max lip squared error, FDD) for one padded file.

  pred, gt: (T, 56) motion; shape: (300,); mask: (T,) 1 for real frames.
  """
  err = jnp.sum((_verts(lip_model, gt, shape, zero_neck) - _verts(lip_model, pred, shape, zero_neck)) ** 2, -1)
  lve_sum = jnp.sum(jnp.max(err, axis=1) * mask)
  template = flame.forward(upper_model, jnp.zeros((1, audio.EXP_DIM)), shape=shape)[0]
  n = jnp.sum(mask)

  def motion_std(motion):
    d = jnp.sum((_verts(upper_model, motion, shape, zero_neck) - template) ** 2, -1)  # (T, U)
    mean = jnp.sum(d * mask[:, None], 0) / n
    var = jnp.sum(((d - mean) ** 2) * mask[:, None], 0) / n
    return jnp.mean(jnp.sqrt(var))

  return lve_sum, motion_std(gt) - motion_std(pred)


class VertexScorer:
  """LVE / FDD of (pred, gt) motion pairs with one FLAME model and mask file."""

  def __init__(self, model: flame.FlameModel, masks: dict[str, np.ndarray], *, masks_path: str = "FLAME_masks.pkl",
               zero_neck: bool = True):
    lips, upper = regions(masks, masks_path)
    if max(lips.max(), upper.max()) >= model.num_vertices:
      raise flame.FlameModelError(f"{masks_path}: indices beyond the model's {model.num_vertices} vertices")
    self.lip_model = flame.to_device(flame.restrict(model, lips))
    self.upper_model = flame.to_device(flame.restrict(model, upper))
    self.zero_neck = zero_neck

  @classmethod
  def from_files(cls, model_path: str, masks_path: str, **kw) -> "VertexScorer":
    model = flame.load_model(model_path)
    return cls(model, flame.load_masks(masks_path, model.num_vertices), masks_path=masks_path, **kw)

  def score_file(self, pred: np.ndarray, gt: np.ndarray, shape: np.ndarray | None = None) -> tuple[float, float, int]:
    """(sum of per-frame max lip squared errors, FDD, frames) over the common length."""
    from dualtalk_jax import audio
    from dualtalk_jax.eval.metrics import BUCKET_FRAMES

    n = min(len(pred), len(gt))
    if n < 2:
      raise ValueError(f"vertex metrics need at least 2 frames in common, got {n}")
    tmax = audio.bucket_frames(n, BUCKET_FRAMES)
    pad = ((0, tmax - n), (0, 0))
    s = np.zeros(flame.NUM_SHAPE, np.float32)
    if shape is not None:
      s[:len(shape)] = shape
    mask = (np.arange(tmax) < n).astype(np.float32)
    lve_sum, fdd = file_terms(self.lip_model, self.upper_model, np.pad(pred[:n], pad).astype(np.float32),
                              np.pad(gt[:n], pad).astype(np.float32), s, mask, zero_neck=self.zero_neck)
    return float(lve_sum), float(fdd), n

  def score(self, preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
            shapes: Sequence[np.ndarray | None] | None = None) -> dict:
    """{"mean": {"lve", "fdd"}, "per_file": {"lve": (F,), "fdd": (F,)}} (see module docstring)."""
    shapes = shapes or [None] * len(preds)
    sums, fdds, counts = [], [], []
    for p, g, s in zip(preds, gts, shapes):
      a, b, n = self.score_file(p, g, s)
      sums.append(a)
      fdds.append(b)
      counts.append(n)
    sums, counts = np.array(sums), np.array(counts)
    return {"mean": {"lve": float(sums.sum() / counts.sum()), "fdd": float(np.mean(fdds))},
            "per_file": {"lve": sums / counts, "fdd": np.array(fdds)}}


def add_to_result(result: dict, pred_dir: str, data_dir: str, flame_model: str, flame_masks: str) -> dict:
  """Adds `lve` and `fdd` (mean and per file) to an `evaluate.score_predictions` result."""
  from dualtalk_jax.eval import evaluate
  from dualtalk_jax.eval.predict import load_motion

  scorer = VertexScorer.from_files(flame_model, flame_masks)
  preds, gts, shapes = [], [], []
  for name in result["files"]:
    gt_path = os.path.join(data_dir, name + ".npz")
    preds.append(evaluate.load_prediction(os.path.join(pred_dir, name + ".npy")))
    gts.append(load_motion(gt_path))
    shapes.append(flame.npz_shape(gt_path))
  vm = scorer.score(preds, gts, shapes)
  result["mean"].update(vm["mean"])
  result["per_file"].update(vm["per_file"])
  return result
