"""The paper's ablation grid (Tab. 6): every variant trained and scored the same way.

`run_grid(config, workdir, variants)` trains each variant (`DualTalkConfig.ablation`;
`full` is the released model) from the same config: the same data, seed and step
budget, each in `<workdir>/variants/<name>` (a training workdir, so an interrupted
variant resumes from its last checkpoint). With `config.synthetic.enabled` the
conversations are synthesized once into `<workdir>` and shared. Each trained variant
predicts every clip of `config.data.val_dir` in both directions in one whole-clip pass
(the released behaviour) and is scored with the released metrics
(`eval.metrics.evaluate_files`) and the same over the frames where the target speaks
and listens (`eval.metrics.evaluate_roles`, roles from both tracks' audio,
`eval.activity.roles`). A variant's scores are written last, to
`<workdir>/variants/<name>/metrics.json`: that file marks it finished, and a re-run
neither trains nor scores it again.

Outputs (rewritten from every finished variant after each one):
  ablation.json  {variant: {metric key: value}}, keys as in metrics.json
  ablation.md    the paper's Tab. 6 layout (FD, P-FD, MSE, SID x EXP/JAW/POSE), for all
                 frames, speaking frames and listening frames, with the paper's figures
  ablation.png   each variant's metrics relative to `full` (with matplotlib)
"""

from __future__ import annotations

import json
import math
import os
import time

import ml_collections
import numpy as np

from dualtalk_jax.config import ABLATIONS
from dualtalk_jax.eval import metrics

# Variant name -> DualTalkConfig.ablation, in the paper's Tab. 6 row order.
VARIANTS = {"full": "", **{k: k for k in ABLATIONS if k}}
FINISHED = "metrics.json"
TABLE_METRICS = (("FD", "fid", "lower"), ("P-FD", "p_fid", "lower"), ("MSE", "mse", "lower"), ("SID", "sid", "higher"))
TABLE_GROUPS = tuple(g for g, *_ in metrics.GROUPS)  # the released keys: exp, jaw, pose
# The paper's Tab. 6 (its own power-of-ten column scales; comparable across rows only).
PAPER_TAB6 = {
    "full": (11.14, 1.90, 3.83, 11.88, 1.97, 3.97, 3.59, 1.04, 1.72, 3.48, 2.23, 1.72),
    "no_partner_speech": (23.27, 4.01, 5.48, 23.74, 4.09, 5.51, 4.82, 1.42, 1.85, 1.68, 1.23, 1.13),
    "no_partner_motion": (28.43, 4.72, 5.91, 29.10, 4.79, 6.05, 5.68, 1.57, 1.97, 1.47, 1.05, 0.97),
    "mfcc": (27.42, 3.96, 7.25, 27.95, 4.02, 7.31, 6.02, 1.55, 2.51, 2.71, 1.66, 1.06),
    "no_temporal_enhancer": (16.31, 2.91, 4.92, 16.66, 2.95, 4.97, 4.00, 1.27, 1.79, 3.22, 2.00, 1.40),
    "no_interaction": (16.70, 2.99, 4.78, 17.27, 3.05, 4.87, 4.27, 1.32, 1.84, 3.03, 2.05, 1.47),
    "no_modulation": (13.28, 2.46, 4.53, 13.81, 2.51, 4.63, 3.63, 1.12, 1.80, 3.35, 2.13, 1.55),
}


def parse_variants(spec: str) -> list[str]:
  """"all" or a comma-separated list of variant names -> names in table order."""
  if spec.strip() == "all":
    return list(VARIANTS)
  names = [s.strip() for s in spec.split(",") if s.strip()]
  unknown = [n for n in names if n not in VARIANTS]
  if unknown or not names:
    raise ValueError(f"unknown variant(s) {unknown or spec!r}; choose 'all' or from {list(VARIANTS)}")
  return [v for v in VARIANTS if v in names]


def variant_config(config: ml_collections.ConfigDict, name: str, workdir: str) -> ml_collections.ConfigDict:
  """The run config of one variant: `config` with its ablation and the grid's shared data."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.ablation = VARIANTS[name]
    if c.synthetic.enabled:
      c.data.train_dir = c.data.train_dir or os.path.join(workdir, "data", "train")
      c.data.val_dir = c.data.val_dir or os.path.join(workdir, "data", "val")
  return c


def _shared_data(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A variant's config once the grid's synthetic data exist: variants only read them."""
  with c.unlocked():
    c.synthetic.enabled = False
  return c


def score_records(model, val_dir: str, *, batch_size: int = 8, bucket_frames: int = 200,
                  seed: int = 0) -> dict[str, float]:
  """Released metrics (+ speaking/listening) of `model` on every clip of a preprocessed
  split, both directions, one whole-clip pass each; means over directions."""
  from dualtalk_jax.eval import activity, metrics, predict

  clips, gts = zip(*predict.split_clips(val_dir))
  others = [c.motion_other for c in clips]
  preds = predict.predict_clips(model, clips, batch_size=batch_size, bucket_frames=bucket_frames)
  res = metrics.evaluate_files(preds, gts, others, seed=seed)["mean"]
  masks = {r: [] for r in metrics.ROLES}
  for p, g, c in zip(preds, gts, clips):
    speaking, listening = activity.roles(c.audio_self, c.audio_other, min(len(p), len(g), len(c.motion_other)))
    masks["speaking"].append(speaking)
    masks["listening"].append(listening)
  res.update(metrics.evaluate_roles(preds, gts, others, masks, seed=seed)["mean"])
  return res


def train_and_score(config: ml_collections.ConfigDict, vdir: str) -> dict[str, float]:
  """Trains one variant in `vdir` (resuming) and scores it on `config.data.val_dir`."""
  from dualtalk_jax.train import loop

  out = loop.train_and_evaluate(config, vdir)
  return score_records(out["program"].predictor(out["state"]["params"]), config.data.val_dir, batch_size=config.data.eval_batch_size, seed=config.seed)


def run_grid(config: ml_collections.ConfigDict, workdir: str, variants: list[str], *, train_and_score=train_and_score,
             log=print) -> dict[str, dict[str, float]]:
  """Trains and scores every variant not yet finished; writes the grid's outputs. Returns
  {variant: metrics} of every finished variant (all of them, not only `variants`).
  `train_and_score(config, vdir)` is the per-variant work (replaceable in tests)."""
  import jax

  from dualtalk_jax.data.records import write_json
  from dualtalk_jax.train import loop

  if config.ablation:
    raise ValueError(f"config.ablation is {config.ablation!r}: the grid sets each variant's ablation itself; "
                     "choose variants with --variants")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if config.synthetic.enabled:
    # before variant_config names the data dirs: ensure_synthetic_data fills only empty ones,
    # with the same <workdir>/data/<split> paths
    loop.ensure_synthetic_data(config.copy_and_resolve_references(), workdir)
  first = variant_config(config, variants[0], workdir)
  if not first.data.val_dir:
    raise ValueError("config.data.val_dir is empty: the grid scores every variant on that preprocessed split")
  for name in variants:
    vdir = os.path.join(workdir, "variants", name)
    if os.path.exists(os.path.join(vdir, FINISHED)):
      log(f"{name}: finished earlier ({os.path.join(vdir, FINISHED)}), not trained again")
      continue
    log(f"{name}: training ({ABLATIONS[VARIANTS[name]]})")
    start = time.time()
    scores = train_and_score(_shared_data(variant_config(config, name, workdir)), vdir)
    log(f"{name}: trained and scored in {time.time() - start:.0f} s")
    if jax.process_index() == 0:
      os.makedirs(vdir, exist_ok=True)
      write_json(os.path.join(vdir, FINISHED), scores)
      write_outputs(workdir, collect(workdir))
  results = collect(workdir)
  if jax.process_index() == 0:
    write_outputs(workdir, results)
  return results


def collect(workdir: str) -> dict[str, dict[str, float]]:
  """{variant: metrics} of the finished variants, in table order."""
  out = {}
  for name in VARIANTS:
    path = os.path.join(workdir, "variants", name, FINISHED)
    if os.path.exists(path):
      with open(path) as f:
        out[name] = json.load(f)
  return out


def _fmt(v) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  return f"{v:.4g}"


def markdown(results: dict[str, dict[str, float]]) -> str:
  """The Tab. 6 layout for all / speaking / listening frames, then the paper's figures."""
  head = ("| Ablation | " + " | ".join(f"{m} {g.upper()}" for m, _, _ in TABLE_METRICS for g in TABLE_GROUPS) + " |\n"
          + "|---" * (1 + len(TABLE_METRICS) * len(TABLE_GROUPS)) + "|\n")
  arrows = ", ".join(f"{m} {'↓' if d == 'lower' else '↑'}" for m, _, d in TABLE_METRICS)
  parts = []
  for suffix, title in (("", "All frames"), ("_speaking", "Frames where the target speaks"),
                        ("_listening", "Frames where the target listens")):
    rows = [f"| {ABLATIONS[VARIANTS[n]]} | " + " | ".join(_fmt(r.get(f"{k}_{g}{suffix}")) for _, k, _ in TABLE_METRICS
                                                        for g in TABLE_GROUPS) + " |" for n, r in results.items()]
    parts.append(f"### {title} ({arrows})\n\n" + head + "\n".join(rows) + "\n")
  paper = [f"| {ABLATIONS[VARIANTS[n]]} | " + " | ".join(f"{v:.2f}" for v in vals) + " |" for n, vals in PAPER_TAB6.items()]
  parts.append("### The paper's Tab. 6 (DualTalk test set; each column has its own power-of-ten scale)\n\n" + head
               + "\n".join(paper) + "\n")
  return "\n".join(parts)


def write_outputs(workdir: str, results: dict[str, dict[str, float]]) -> None:
  """ablation.json, ablation.md and (with matplotlib) ablation.png, each written atomically."""
  from dualtalk_jax.data.records import atomic_write, write_json

  clean = {n: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for n, r in results.items()}
  write_json(os.path.join(workdir, "ablation.json"), clean)

  def write_md(tmp):
    with open(tmp, "w") as f:
      f.write(markdown(results))

  atomic_write(os.path.join(workdir, "ablation.md"), write_md)
  if "full" in results and len(results) > 1:
    plot(os.path.join(workdir, "ablation.png"), results)


def plot(path: str, results: dict[str, dict[str, float]]) -> bool:
  """Bars: each variant's FD, P-FD, MSE and SID per group, relative to `full` (1 = same)."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  from dualtalk_jax.data.records import atomic_write

  names = [n for n in results if n != "full"]
  fig, axes = plt.subplots(1, len(TABLE_METRICS), figsize=(4 * len(TABLE_METRICS), 3.6), sharey=False)
  width = 0.8 / max(len(names), 1)
  for ax, (m, key, better) in zip(axes, TABLE_METRICS):
    for i, n in enumerate(names):
      ratio = [results[n].get(f"{key}_{g}", np.nan) / results["full"].get(f"{key}_{g}", np.nan) for g in TABLE_GROUPS]
      ax.bar(np.arange(3) + (i - (len(names) - 1) / 2) * width, ratio, width, label=n)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(3), [g.upper() for g in TABLE_GROUPS])
    ax.set_title(f"{m} / full ({better} is better)", fontsize=9)
  axes[0].legend(fontsize=7)
  fig.tight_layout()

  def save(tmp):
    fig.savefig(tmp, dpi=100, format="png")

  try:
    atomic_write(path, save)
  finally:
    plt.close(fig)
  return True
