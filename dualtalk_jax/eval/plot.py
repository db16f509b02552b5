"""A plot of a conversation's motion: both speakers over time, their voice activity shaded.

Rows: jaw opening (jaw rotation about x, `pose[:, 3]`), neck rotation (the three
axis-angle components), and the leading expression coefficients, for the target
(prediction), the target's true motion where it is known (held-out clips, evaluation), and
the partner (given motion). Frames where a speaker's audio is active
(`activity.voice_activity`) are shaded in that speaker's colour, so speaking/listening
behaviour can be read against who talks. Every axis has its own legend.
"""

from __future__ import annotations

import os

import numpy as np

from dualtalk_jax import audio
from dualtalk_jax.eval.activity import voice_activity

COLORS = ("tab:red", "tab:blue")
TRUTH_COLOR = "black"


def _spans(mask):
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
  return zip(edges[::2], edges[1::2])


def plot_conversation(path: str, motion_self: np.ndarray, motion_other: np.ndarray | None, audio_self: np.ndarray,
                      audio_other: np.ndarray, *, truth: np.ndarray | None = None,
                      labels=("target (prediction)", "partner"), num_exp: int = 3, title: str = "") -> str:
  """Writes a PNG (under a temporary name, then renamed) and returns its path.

  `truth`: the target's true motion, drawn in black beside the prediction when given.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fps = audio.FPS
  t = max(len(motion_self), 0 if motion_other is None else len(motion_other), 0 if truth is None else len(truth))
  vad = [voice_activity(a, t) for a in (audio_self, audio_other)]
  lines = [(motion_self, labels[0], COLORS[0], 1.0)]
  if motion_other is not None:  # None: a no_partner_motion prediction, partner drawn by voice activity only
    lines.append((motion_other, labels[1], COLORS[1], 1.0))
  if truth is not None:
    lines.insert(1, (truth, "target (truth)", TRUTH_COLOR, 0.8))
  jaw, neck = audio.MOTION_GROUPS["jaw"].start, audio.MOTION_GROUPS["neck"]
  rows = [("jaw opening (rad)", lambda m: m[:, jaw:jaw + 1], ["jaw"])]
  rows.append(("neck rotation (rad)", lambda m: m[:, neck], ["x", "y", "z"]))
  rows += [(f"exp[{i}]", lambda m, i=i: m[:, i:i + 1], [f"exp{i}"]) for i in range(num_exp)]
  fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.8 * len(rows) + 0.6), sharex=True)
  styles = ("-", "--", ":")
  for ax, (name, get, comps) in zip(axes, rows):
    for s in range(2):
      for (a, b) in _spans(vad[s]):
        ax.axvspan(a / fps, b / fps, color=COLORS[s], alpha=0.08, lw=0)
    for m, label, color, alpha in lines:
      y = get(np.asarray(m))
      for j in range(y.shape[1]):
        ax.plot(np.arange(len(y)) / fps, y[:, j], color=color, ls=styles[j % 3], lw=1, alpha=alpha,
                label=f"{label}" + (f" {comps[j]}" if len(comps) > 1 else ""))
    ax.set_ylabel(name, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=6, ncol=len(lines), loc="upper right")
  axes[-1].set_xlabel("time (s); shading: voice activity (red target, blue partner)", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp-{os.getpid()}{ext or '.png'}"
  try:
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
