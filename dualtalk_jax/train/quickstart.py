"""The quickstart: synthetic conversations -> shards -> a tiny model trained on CPU -> evaluation.

`run(workdir)` synthesizes a small train and a held-out set of conversations
(`dualtalk_jax/data/synthetic.py`), preprocesses them into ArrayRecord shards, trains
the tiny config for a few minutes, predicts every held-out clip in both directions (in
windows of the training length, and in one whole-clip pass) and scores it against a
mean-pose baseline (the per-dimension mean of the training motion,
the best constant prediction), then writes predictions, a plot and the checkpoint
exported to PyTorch. Everything lands in the workdir; re-running resumes or reuses.
Each stage (synthesizing, preprocessing, compiling and training, scoring, exporting)
prints one line when it starts and one with its time when it ends.

Why the released tiny model does not lip-sync here, and what the quickstart changes
(measured on the first version of the quickstart's data, see the last point; 2000 steps,
whole-clip pass, mean jaw-opening Pearson r over 16 held-out directions):
- The released interaction module returns its self-attention output alone (no residual,
  no positional term): each frame is an attention average over the input, and on 8-14 s
  clips, after training on 2 s windows, the jaw is almost flat within a turn (r 0.09; in
  2 s windows 0.47). `interaction_residual=True`: r 0.53 (windows 0.57).
- The audio encoder is the other limit: a linear read-out of the tiny wav2vec2's hidden
  states predicts the jaw no better than the model does (r 0.58). The lv60 layout
  normalises every conv frame over its channels (LayerNorm), which removes the loudness
  that the jaw follows; the base layout (GroupNorm over time on the first conv layer)
  keeps it: r 0.71 with the residual. Turning SpecAugment and LayerDrop off instead gives
  about the same (0.72); both together (config `tiny_base`) r 0.80 (windows 0.80), MSE
  1.75x below the mean pose (jaw 4.4x).
- The MSE: on the first version of the synthetic data, this model reached 1.81x below the
  mean pose (jaw r 0.81), and more steps did not help (validation loss 0.0161 at 2000 and
  at 4000 steps). About 60 % of its error was a constant offset per held-out direction
  in `exp`: the identity's style offset and personal listening direction, which
  DualTalk (no identity input) can infer only from the target's voice, and not at all
  while the target does not speak; the model learned none of it. Those identity parts
  are now smaller in the data (dualtalk_jax/data/synthetic.py, step 1), and the data
  gained the conversation's mood, shown by both speakers and known to the model only
  through the partner's motion (step 4): 2.99x, jaw r 0.81. Then mutual silences, in
  which nobody listens (step 2), so that only the partner's speech tells when the target
  listens; and in `tiny_base` a wider partner-motion encoder (32 hidden units instead of
  8, with which the model often lost the mood) and no dropout in its tiny wav2vec2
  (dualtalk_jax/config.py): 3.48x, jaw r 0.81 (2026-12-02). The model passes 0.77 of
  the mood in the partner's motion on to its prediction (`benchmarks/listener_cues.py`).
- The feature projection's LayerNorm: it normalises each conv frame over its channels,
  which removes the frame's loudness again after the base layout's GroupNorm kept it.
  Without it (`feature_projection_layer_norm=False`) the speaking jaw MSE is about 30 %
  lower (3 seeds, docs/ablation.md): 3.47x, jaw r 0.85, jaw alone 7.6x below the mean
  pose (was 4.2x); it passes 0.61 of the mood on (2026-12-03).
  What is left: the speaker's own expression events (random, in no input but the
  partner's mirroring of them: with the `exp` noise, a floor of about 1/6 of the
  mean-pose MSE), the remaining identity offset, the neck (nods are not learned: neck
  MSE stays at the baseline's) and lip amplitude (the predicted jaw peaks are lower
  than the true ones).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import jax
import numpy as np

from dualtalk_jax import audio
from dualtalk_jax.data import pipeline, records
from dualtalk_jax.eval import evaluate
from dualtalk_jax.train import builder, configs, loop

JAW_OPEN = audio.MOTION_GROUPS["jaw"].start  # the jaw is FLAME pose[:, 3:6]; its first column opens the mouth


def mean_pose(train_dir: str) -> np.ndarray:
  """Per-dimension mean of all training motion frames (both speakers): the baseline."""
  total, count = np.zeros(56, np.float64), 0
  reader = pipeline.ClipReader(train_dir, records.load_manifest(train_dir))
  for clip in records.load_manifest(train_dir)["clips"]:
    rec = reader(clip["record_index"])
    for k in ("motion_1", "motion_2"):
      total += rec[k].sum(0)
      count += rec[k].shape[0]
  return (total / max(count, 1)).astype(np.float32)


def jaw_pearson(pred: np.ndarray, gt: np.ndarray) -> float:
  """Frame-level Pearson r of the predicted and true jaw opening (FLAME jaw pitch, column
  JAW_OPEN of the (T, 56) layout) over one direction of one clip; 0 when either is constant."""
  x, y = pred[:, JAW_OPEN].astype(np.float64), gt[:, JAW_OPEN].astype(np.float64)
  x, y = x - x.mean(), y - y.mean()
  den = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / den) if den > 0 else 0.0


def evaluate_against_baseline(config, out: dict[str, Any], pred_dir: str) -> dict[str, float]:
  """Predicts every held-out clip in both directions and scores model vs mean pose (MSE per group).

  The model runs as `experiments.infer --window_seconds=S` does, in crossfaded windows of the
  training length (S = `config.eval_window_seconds`); those predictions are written as
  `<clip>_speakerK.npy` and scored as `model_*`. One pass over each whole clip (the released
  behaviour, `--window_seconds=0`) is scored too, as `model_whole_*`: a model trained on 2 s
  windows whose interaction self-attention has no residual does worse on 8-14 s sequences.
  """
  from dualtalk_jax.eval import predict

  model = out["program"].predictor(out["state"]["params"])  # the eval step validation runs
  base = mean_pose(config.data.train_dir)
  window = config.eval_window_seconds
  clips, targets = zip(*predict.split_clips(config.data.val_dir))
  whole = predict.predict_clips(model, clips, batch_size=config.data.eval_batch_size, bucket_frames=200)
  os.makedirs(pred_dir, exist_ok=True)
  groups = list(audio.MOTION_GROUPS.items()) + [("all", slice(0, audio.MOTION_DIM))]
  sums = {f"{who}_{g}": 0.0 for who in ("model", "model_whole", "baseline") for g, _ in groups}
  counts = {g: 0 for g, _ in groups}
  jaw_r = {"model": [], "model_whole": []}
  for clip, gt, p_whole in zip(clips, targets, whole):
    p = predict.predict_windowed(model, clip, window_seconds=window, overlap_seconds=window / 4)
    evaluate.save_npy(os.path.join(pred_dir, clip.name + ".npy"), p)
    n = min(len(p), len(gt))  # common length with the ground truth
    jaw_r["model"].append(jaw_pearson(p[:n], gt[:n]))
    jaw_r["model_whole"].append(jaw_pearson(p_whole[:n], gt[:n]))
    for g, s in groups:
      for who, x in (("model", p[:n]), ("model_whole", p_whole[:n]), ("baseline", base)):
        sums[f"{who}_{g}"] += float(np.sum((x[..., s] - gt[:n, s]) ** 2))
      counts[g] += gt[:n, s].size
  out = {k: v / max(counts[k.rsplit("_", 1)[1]], 1) for k, v in sums.items()}
  out["jaw_r_model"] = float(np.mean(jaw_r["model"]))
  out["jaw_r_model_whole"] = float(np.mean(jaw_r["model_whole"]))
  return out


def released_config(config):
  """`config` with the released architecture (no interaction residual, the wav2vec2
  feature-projection LayerNorm in place), reading the data that `config`'s run made (call
  after `train_and_evaluate(config, ...)`)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.interaction_residual = False
    c.feature_projection_layer_norm = True
    c.synthetic.enabled = False
  return c


def say(line: str) -> None:
  print(f"[quickstart] {line}", flush=True)


@contextlib.contextmanager
def stage(name: str, detail: str = ""):
  """One line when a stage starts, one with its time when it ends."""
  say(f"{name}{': ' + detail if detail else ''} ...")
  t = time.time()
  yield
  say(f"{name} done in {time.time() - t:.1f} s")


def run(workdir: str, flame_model=None, **overrides) -> dict[str, Any]:
  """Runs the whole quickstart in `workdir`; returns paths and the model/baseline MSEs.

  When the quickstart's model is not the released architecture (`interaction_residual`,
  `feature_projection_layer_norm=False`),
  the released one is trained too, on the same data with the same budget, in
  `<workdir>/released`, and scored the same way (`result["released"]`); it is the one
  exported to PyTorch, which has only the released module tree.
  With `flame_model` (a FLAME generic_model.pkl path, or a loaded `face.flame.FlameModel`)
  it also renders the first held-out clip to `<workdir>/prediction.mp4` (face.render).
  """
  if isinstance(flame_model, str):  # fail before training on a missing or unreadable model
    from dualtalk_jax.face import flame
    flame_model = flame.load_model(flame_model)
  from dualtalk_jax.convert import pytorch

  config = loop.apply_overrides(configs.quickstart(), overrides)
  workdir = os.path.abspath(workdir)
  if config.synthetic.enabled:
    loop.ensure_synthetic_data(config, workdir, log=say)
  with stage("compiling and training", f"{config.total_steps} steps of the {config.model} model (the compile takes "
                                        "a minute on 2 CPU cores)"):
    out = loop.train_and_evaluate(config, workdir)
  export_from = workdir
  released = None
  if not builder.model_config(config).is_released:
    export_from = os.path.join(workdir, "released")
    rconfig = released_config(config)
    with stage("compiling and training the released architecture", f"the same data and budget, in {export_from}"):
      released = (rconfig, loop.train_and_evaluate(rconfig, export_from))
  result: dict[str, Any] = {"workdir": workdir, "final_train_loss": out["metrics"].get("loss")}
  if jax.process_index() != 0:
    return result
  pred_dir = os.path.join(workdir, "predictions")
  with stage("scoring", f"held-out clips of {config.data.val_dir}, model vs mean pose"):
    scores = evaluate_against_baseline(config, out, pred_dir)
    if released:
      result["released"] = evaluate_against_baseline(released[0], released[1], os.path.join(export_from, "predictions"))
  result["mse"] = scores
  result["eval_window_seconds"] = config.eval_window_seconds
  result["predictions"] = pred_dir
  try:  # torch is optional at run time (requirements-test.txt); safetensors needs no torch
    import torch  # noqa: F401

    export = os.path.join(workdir, "dualtalk_tiny.pth")
  except ImportError:
    export = os.path.join(workdir, "dualtalk_tiny.safetensors")
  with stage("exporting", export):
    pytorch.checkpoint_to_torch(export_from, export, overwrite=True)
  result["pytorch_checkpoint"] = export
  result["checkpoints"] = os.path.join(workdir, "checkpoints")
  plot = os.path.join(workdir, "prediction.png")
  if _plot_first_clip(config, pred_dir, plot):
    result["plot"] = plot
  if flame_model is not None:
    video = os.path.join(workdir, "prediction.mp4")
    with stage("rendering", f"the first held-out clip to {video}"):
      result["video"] = _render_first_clip(config, pred_dir, video, flame_model)
  result["disk_mb"] = disk_usage(workdir) / 1e6
  records.write_json(os.path.join(workdir, "quickstart_results.json"), result)
  return result


def disk_usage(path: str) -> int:
  """Bytes of all files under `path`."""
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _first_clip(config, pred_dir: str):
  manifest = records.load_manifest(config.data.val_dir)
  clip = manifest["clips"][0]
  rec = pipeline.ClipReader(config.data.val_dir, manifest)(clip["record_index"])
  return clip, rec, np.load(os.path.join(pred_dir, f"{clip['name']}_speaker1.npy"))


def _render_first_clip(config, pred_dir: str, path: str, flame_model) -> str:
  """Renders the first held-out clip: speaker1's prediction beside speaker2, both voices."""
  from dualtalk_jax.face import render

  _, rec, pred = _first_clip(config, pred_dir)
  render.render_conversation(path, flame_model, pred, rec["audio_1"], rec["motion_2"], rec["audio_2"])
  return path


def _plot_first_clip(config, pred_dir: str, path: str) -> bool:
  """Plots the first held-out clip: speaker1's predicted motion against speaker2's, with voice activity."""
  try:
    from dualtalk_jax.eval.plot import plot_conversation
  except ImportError:  # matplotlib absent
    return False
  clip, rec, pred = _first_clip(config, pred_dir)
  plot_conversation(path, pred, rec["motion_2"], rec["audio_1"], rec["audio_2"], truth=rec["motion_1"],
                    labels=("speaker1 (prediction)", "speaker2 (partner)"), title=f"{clip['name']} (held out)")
  return True
