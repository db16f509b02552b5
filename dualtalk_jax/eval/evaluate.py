"""The evaluator of `experiments.evaluate` and of training's validation.

Split folders are the dataset's raw format (`<clip>_speaker{1,2}.{wav,npz}`), as the
released `metric/metric.py` reads them. A prediction `<clip>_speakerK.npy` (T x 56) is
the target speaker K's motion; it is scored against `<clip>_speakerK.npz` with the other
speaker's npz as the partner, all three cut to their common length (metrics.md).

- `predict_split`: every clip in both directions with a model, in bucketed batches
  (`predict.predict_clips`), a chunk of clips in memory at a time; each `.npy` is written
  under a temporary name and renamed.
- `score_predictions`: the predictions present in a folder -> the released JSON keys
  (means over files) and per-file values; `write_results` writes the JSON and a CSV
  beside it, atomically.
- `evaluate_batches`: the same metrics (and the released loss) over preprocessed eval
  batches (`pipeline.make_eval_dataset`) and the predictor: what training's `validate`
  reports. The model's T comes from each row's audio length, as above.

All metric kernels are the jitted ones of `dualtalk_jax.eval.metrics`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from typing import Any, Callable, Iterable

import numpy as np

from dualtalk_jax import audio
from dualtalk_jax.eval import metrics
from dualtalk_jax.eval.predict import InputError, load_inputs, load_motion, predict_clips

_FILE_RE = re.compile(r"^(?P<clip>.+)_speaker(?P<spk>[12])\.(?P<ext>wav|npz|npy)$")


def pred_name(clip: str, target: int) -> str:
  """File name of the prediction for speaker `target` of `clip`, as the released code names it."""
  return f"{clip}_speaker{target}.npy"


def list_clips(data_dir: str) -> list[str]:
  """Clip names in a raw split folder (any of its four files present), sorted."""
  if not os.path.isdir(data_dir):
    raise InputError(f"{data_dir}: no such data directory")
  names = {m["clip"] for f in os.listdir(data_dir) if (m := _FILE_RE.match(f)) and m["ext"] != "npy"}
  if not names:
    raise InputError(f"{data_dir}: holds no <clip>_speaker{{1,2}}.wav/.npz files")
  return sorted(names)


def _path(data_dir, clip, spk, ext):
  return os.path.join(data_dir, f"{clip}_speaker{spk}.{ext}")


def _require(paths: Iterable[str], what: str) -> None:
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise InputError(f"{missing[0]}: missing ({what}){f'; and {len(missing) - 1} more' if len(missing) > 1 else ''}")


def save_npy(path: str, array: np.ndarray) -> None:
  """Writes an .npy under a temporary name in the same folder, then renames it."""
  from dualtalk_jax.data.records import atomic_write

  def write(tmp):
    with open(tmp, "wb") as f:
      np.save(f, array)

  atomic_write(path, write)


def predict_split(model, data_dir: str, pred_dir: str, *, batch_size: int = 8, bucket_frames: int = 50,
                  chunk_clips: int = 64, progress: bool = False, channel: int | None = None) -> list[str]:
  """Predicts every clip of `data_dir` in both directions into `pred_dir` with `model` (a
  `DualTalk` or a `predict.Predictor`, e.g. on a mesh); returns the paths.

  Each direction needs the target's wav and the partner's wav and npz; a missing one is
  an error naming it (checked for the whole split before any prediction).
  """
  clips = list_clips(data_dir)
  jobs = [(c, k) for c in clips for k in (1, 2)]
  _require([_path(data_dir, c, s, e) for c in clips for s in (1, 2) for e in ("wav",)] +
           [_path(data_dir, c, s, "npz") for c in clips for s in (1, 2)], "needed to predict both speakers")
  from dualtalk_jax.progress import Progress

  os.makedirs(pred_dir, exist_ok=True)
  written = []
  bar = Progress(len(jobs), "predict", unit="prediction", enabled=progress)
  for i in range(0, len(jobs), chunk_clips):
    part = jobs[i:i + chunk_clips]
    inputs = [load_inputs(_path(data_dir, c, k, "wav"), _path(data_dir, c, 3 - k, "wav"),
                          _path(data_dir, c, 3 - k, "npz"), name=pred_name(c, k), channel=channel) for c, k in part]
    for clip, pred in zip(inputs, predict_clips(model, inputs, batch_size=batch_size, bucket_frames=bucket_frames)):
      path = os.path.join(pred_dir, clip.name)
      save_npy(path, pred.astype(np.float32))
      written.append(path)
    bar.update(len(part))
  bar.close()
  return written


def load_prediction(path: str) -> np.ndarray:
  """A (T, 56) finite prediction from an .npy file; errors name the file."""
  try:
    p = np.load(path, allow_pickle=False)
  except Exception as e:
    raise InputError(f"{path}: unreadable .npy ({type(e).__name__}: {e})") from None
  if p.ndim != 2 or p.shape[1] != audio.MOTION_DIM:
    raise InputError(f"{path}: prediction has shape {p.shape}, expected (T, {audio.MOTION_DIM})")
  if p.shape[0] < 2:
    raise InputError(f"{path}: prediction has {p.shape[0]} frames; the metrics need at least 2")
  if not np.all(np.isfinite(p)):
    raise InputError(f"{path}: prediction contains NaN or inf")
  return p.astype(np.float32)


def prediction_files(pred_dir: str) -> list[str]:
  if not os.path.isdir(pred_dir):
    raise InputError(f"{pred_dir}: no such prediction directory")
  files = sorted(f for f in os.listdir(pred_dir) if (m := _FILE_RE.match(f)) and m["ext"] == "npy")
  if not files:
    raise InputError(f"{pred_dir}: holds no <clip>_speaker{{1,2}}.npy predictions")
  return files


def score_predictions(pred_dir: str, data_dir: str, *, seed: int = 0, files: list[str] | None = None,
                      allow_partial: bool = False, roles: bool = True) -> dict[str, Any]:
  """Scores the predictions in `pred_dir` against `data_dir`.

  Every direction of every clip in `data_dir` needs its prediction, and each prediction's
  length must match its ground truth, and the ground truth the partner's, within
  `audio.MAX_FRAME_MISMATCH` frames (the rule of preprocess and infer; within it all
  three are cut to their common length, as the released code does). A missing, short or
  long prediction, or one with no ground truth, is an `InputError` naming every such file;
  with `allow_partial` those files are left out instead and listed in `skipped`. An
  unreadable or malformed prediction is always an error.

  With `roles`, every metric is also scored over the frames where the target speaks and
  where it listens (`metrics.evaluate_roles`, roles from both speakers' wavs by
  `activity.roles`), as `<key>_speaking` / `<key>_listening`.
  Returns {"mean": {key: float}, "per_file": {key: (F,) array}, "files": [...],
  "frames": (F,) frames scored per file, "skipped": [{"file", "reason"}]}.
  """
  files = prediction_files(pred_dir) if files is None else files
  expected = {pred_name(c, k) for c in list_clips(data_dir) for k in (1, 2)}
  skipped = [{"file": f, "reason": f"{os.path.join(pred_dir, f)}: missing (no prediction for this clip direction)"}
             for f in sorted(expected - set(files))]
  preds, gts, others, kept = [], [], [], []
  for f in files:
    m = _FILE_RE.match(f)
    clip, k = m["clip"], int(m["spk"])
    gt_path, other_path = _path(data_dir, clip, k, "npz"), _path(data_dir, clip, 3 - k, "npz")
    absent = [(p, what) for p, what in ((gt_path, "ground truth"), (other_path, "partner motion")) if not os.path.exists(p)]
    if absent:
      skipped.append({"file": f, "reason": f"{absent[0][0]}: missing ({absent[0][1]} for {f})"})
      continue
    pred = load_prediction(os.path.join(pred_dir, f))
    gt, other = load_motion(gt_path), load_motion(other_path)
    problem = (audio.frame_mismatch((os.path.join(pred_dir, f), len(pred)), (gt_path, len(gt))) or
               audio.frame_mismatch((gt_path, len(gt)), (other_path, len(other))))
    if problem is None and min(len(pred), len(gt), len(other)) < 2:
      problem = f"{gt_path}: fewer than 2 frames in common with {f} and the partner motion"
    if problem:
      skipped.append({"file": f, "reason": problem})
      continue
    preds.append(pred)
    gts.append(gt)
    others.append(other)
    kept.append(f)
  if skipped and not allow_partial:
    shown = "; ".join(s["reason"] for s in skipped[:10])
    more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    raise InputError(f"{len(skipped)} of {len(expected | set(files))} predictions cannot be scored: {shown}{more} "
                     "(--allow_partial scores the rest and lists these under 'skipped')")
  if not kept:
    raise InputError(f"{pred_dir}: no prediction can be scored against {data_dir}")
  res = metrics.evaluate_files(preds, gts, others, seed=seed)
  if roles:
    res = _add_roles(res, kept, data_dir, preds, gts, others, seed)
  res["files"] = [os.path.splitext(f)[0] for f in kept]
  res["frames"] = np.array([min(len(p), len(g), len(o)) for p, g, o in zip(preds, gts, others)])
  res["skipped"] = skipped
  return res


def _add_roles(res, files, data_dir, preds, gts, others, seed):
  """`res` plus the speaking/listening metrics; each direction's roles from its two wavs."""
  from dualtalk_jax.eval import activity

  masks = {r: [] for r in metrics.ROLES}
  for f, p, g, o in zip(files, preds, gts, others):
    m = _FILE_RE.match(f)
    clip, k = m["clip"], int(m["spk"])
    paths = [_path(data_dir, clip, k, "wav"), _path(data_dir, clip, 3 - k, "wav")]
    _require(paths, f"audio for the speaking/listening metrics of {f}")
    a_self, a_other = (audio.load_audio(x) for x in paths)
    speaking, listening = activity.roles(a_self, a_other, min(len(p), len(g), len(o)))
    masks["speaking"].append(speaking)
    masks["listening"].append(listening)
  r = metrics.evaluate_roles(preds, gts, others, masks, seed=seed)
  return {"per_file": {**res["per_file"], **r["per_file"]}, "mean": {**res["mean"], **r["mean"]}}


def result_keys(result: dict[str, Any]) -> list[str]:
  """The released keys, `<key>_speaking` / `<key>_listening` where scored, then any added ones
  (e.g. `lve`, `fdd` of dualtalk_jax.face.vertex_metrics)."""
  known = [k for k in metrics.METRIC_KEYS + metrics.role_keys() if k in result["mean"]]
  return known + [k for k in result["mean"] if k not in known]


def write_results(output: str, result: dict[str, Any]) -> tuple[str, str]:
  """`output` (JSON: the released keys, the speaking/listening ones and any added ones such
  as `lve`/`fdd`, means over files, NaN (no file has a role) written as null; `skipped`
  files if any) and `<output stem>_per_file.csv`. The output folder is created if needed."""
  from dualtalk_jax.data.records import atomic_write, write_json
  from dualtalk_jax.files import prepare_output

  output = prepare_output(output, "metrics output")
  keys = result_keys(result)
  summary: dict[str, Any] = {k: (None if np.isnan(result["mean"][k]) else result["mean"][k]) for k in keys}
  if result.get("skipped"):
    summary["skipped"] = result["skipped"]
  write_json(output, summary)
  csv_path = os.path.splitext(output)[0] + "_per_file.csv"

  def write(tmp):
    with open(tmp, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["file", "frames", *keys])
      for i, name in enumerate(result["files"]):
        values = (repr(float(result["per_file"][k][i])) for k in keys)
        w.writerow([name, int(result["frames"][i]), *values])

  atomic_write(csv_path, write)
  return output, csv_path


def plot_prediction(path: str, pred_dir: str, data_dir: str, name: str) -> str:
  """Plots one scored prediction (`<clip>_speakerK`) beside its true motion and the partner's."""
  from dualtalk_jax.eval.plot import plot_conversation

  m = _FILE_RE.match(name + ".npy")
  clip, k = m["clip"], int(m["spk"])
  return plot_conversation(
      path, load_prediction(os.path.join(pred_dir, name + ".npy")), load_motion(_path(data_dir, clip, 3 - k, "npz")),
      audio.load_audio(_path(data_dir, clip, k, "wav")), audio.load_audio(_path(data_dir, clip, 3 - k, "wav")),
      truth=load_motion(_path(data_dir, clip, k, "npz")), title=f"{name} vs its true motion")


def read_results(output: str) -> dict[str, float]:
  with open(output) as f:
    return json.load(f)


# ----------------------------------------------------------------------------- in training

def evaluate_batches(predict_fn: Callable[[dict], Any], batches: Iterable[dict], *, seed: int = 0,
                     scores: bool = True, prefix: str = "val_") -> dict[str, float]:
  """Released loss and paper metrics over eval batches (`pipeline.make_eval_dataset` layout).

  `predict_fn(batch)` -> (B, Tpad, 56) predictions (a `predict.Predictor`), each row's
  first `num_frames` (the model's own T) used. Rows with `valid == 0` are skipped. The
  loss is frame-weighted over min(T, ground-truth frames) per row, as `validate` always
  reported it; metrics are means over files. Across processes (multi-host) the sums are
  combined, so every process returns the same numbers. Returns `{prefix}loss`,
  `{prefix}loss_<part>` and, with `scores`, `{prefix}<released key>`.
  """
  from dualtalk_jax.train.loss import dualtalk_loss

  totals: dict[str, float] = {}
  weight = 0.0
  triples = []
  for batch in batches:
    pred = np.asarray(predict_fn(batch))
    for i in np.flatnonzero(batch["valid"]):
      t, gt_frames = int(batch["num_frames"][i]), int(batch["motion_self_lengths"][i])
      n = min(t, gt_frames)
      p, g = pred[i, :t], batch["motion_self"][i, :gt_frames]
      _, parts = dualtalk_loss(p[None, :n], g[None, :n])
      for k, v in parts.items():
        totals[k] = totals.get(k, 0.0) + float(v) * n
      weight += n
      if scores:
        triples.append((p, g, batch["motion_other"][i, :batch["motion_other_lengths"][i]]))
  zero = np.zeros((1, 2, audio.MOTION_DIM), np.float32)
  part_names = sorted(dualtalk_loss(zero, zero)[1])  # fixed, so every process sends the same size
  per_file = None
  if scores and triples:
    usable = [t for t in triples if min(map(len, t)) >= 2]
    if usable:
      per_file = metrics.evaluate_files(*zip(*usable), seed=seed)["per_file"]
  sums = np.array([totals.get(k, 0.0) for k in part_names] + [weight] +
                  ([float(np.sum(per_file[k])) for k in metrics.METRIC_KEYS] + [len(per_file[metrics.METRIC_KEYS[0]])]
                   if per_file is not None else [0.0] * (len(metrics.METRIC_KEYS) + 1)))
  sums = _sum_over_processes(sums)
  if sums[len(part_names)] == 0:
    return {}
  weight = sums[len(part_names)]
  out = {f"{prefix}loss_{k}": float(sums[j] / weight) for j, k in enumerate(part_names)}
  out[f"{prefix}loss"] = float(sum(out.values()))
  metric_sums, count = sums[len(part_names) + 1:-1], sums[-1]
  if scores and count > 0:
    out.update({f"{prefix}{k}": float(v / count) for k, v in zip(metrics.METRIC_KEYS, metric_sums)})
  return out


def _sum_over_processes(sums: np.ndarray):
  import jax

  if jax.process_count() == 1:
    return sums
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(sums)).sum(0)
