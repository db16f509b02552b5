"""A plot of a conversation's motion: both speakers over time, their voice activity shaded.

Rows: jaw opening (jaw rotation about x, `pose[:, 3]`), neck rotation (the three
axis-angle components), and the leading expression coefficients, for the target
(prediction) and the partner (given motion). Frames where a speaker's audio is active
(`activity.voice_activity`) are shaded in that speaker's colour, so
speaking/listening behaviour can be read against who talks.
"""

from __future__ import annotations

import os

import numpy as np

from dualtalk_jax import audio
from dualtalk_jax.eval.activity import voice_activity

COLORS = ("tab:red", "tab:blue")


def _spans(mask):
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
  return zip(edges[::2], edges[1::2])


def plot_conversation(path: str, motion_self: np.ndarray, motion_other: np.ndarray, audio_self: np.ndarray,
                      audio_other: np.ndarray, *, labels=("target (prediction)", "partner"), num_exp: int = 3,
                      title: str = "") -> str:
  """Writes a PNG (under a temporary name, then renamed) and returns its path."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fps = audio.FPS
  t = max(len(motion_self), len(motion_other))
  vad = [voice_activity(a, t) for a in (audio_self, audio_other)]
  rows = [("jaw opening (rad)", lambda m: m[:, 50:51], ["jaw"])]
  rows.append(("neck rotation (rad)", lambda m: m[:, 53:56], ["x", "y", "z"]))
  rows += [(f"exp[{i}]", lambda m, i=i: m[:, i:i + 1], [f"exp{i}"]) for i in range(num_exp)]
  fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.8 * len(rows) + 0.6), sharex=True)
  styles = ("-", "--", ":")
  for ax, (name, get, comps) in zip(axes, rows):
    for s, (m, label) in enumerate(zip((motion_self, motion_other), labels)):
      for (a, b) in _spans(vad[s]):
        ax.axvspan(a / fps, b / fps, color=COLORS[s], alpha=0.08, lw=0)
      y = get(np.asarray(m))
      for j in range(y.shape[1]):
        ax.plot(np.arange(len(y)) / fps, y[:, j], color=COLORS[s], ls=styles[j % 3], lw=1,
                label=f"{label}" + (f" {comps[j]}" if len(comps) > 1 else ""))
    ax.set_ylabel(name, fontsize=8)
    ax.tick_params(labelsize=8)
  axes[0].legend(fontsize=7, ncol=2, loc="upper right")
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
