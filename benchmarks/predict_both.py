"""Both speakers from audio alone (`infer --both --iterations=N`) against the true partner motion.

  python -m benchmarks.predict_both --workdir=quickstart_workdir [--rounds=1,2,3]

For every held-out conversation of a finished quickstart (or any workdir with a checkpoint
and a preprocessed `data/val` split; `data/train` gives the mean-pose baseline), predicts
each speaker in one whole-clip pass (1) given the true partner motion and (2) with
`eval.predict.predict_both` for each number of fixed-point rounds, then prints the MSE over
all 56 motion dims against the truth, pooled over frames, beside the mean pose's, and the
largest change of the last round per setting (how far the rounds are from converging).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "quickstart_workdir", "Checkpoint dir with data/train and data/val.")
_ROUNDS = flags.DEFINE_list("rounds", ["1", "2", "3"], "predict_both iteration counts to score.")


def main(argv):
  del argv
  from dualtalk_jax import runtime

  runtime.configure()
  from dualtalk_jax.eval import predict
  from dualtalk_jax.train import quickstart

  wd = _WORKDIR.value
  val = os.path.join(wd, "data", "val")
  model = predict.load_model(wd)
  base = quickstart.mean_pose(os.path.join(wd, "data", "train"))
  directions = predict.split_clips(val)  # per conversation: speaker 1's direction, then speaker 2's
  rounds = [int(k) for k in _ROUNDS.value]
  se: dict[str, float] = {}
  changes: dict[int, list[float]] = {k: [] for k in rounds}
  n = 0
  for (c1, g1), (c2, g2) in zip(directions[::2], directions[1::2]):
    a1, a2 = c1.audio_self, c2.audio_self
    outs = {"true partner motion": (predict.predict_windowed(model, c1, window_seconds=0),
                                    predict.predict_windowed(model, c2, window_seconds=0))}
    for k in rounds:
      p1, p2, change = predict.predict_both(model, a1, a2, iterations=k, window_seconds=0)
      outs[f"--both --iterations={k}"] = (p1, p2)
      changes[k].append(change)
    outs["mean pose (no model)"] = (np.broadcast_to(base, g1.shape), np.broadcast_to(base, g2.shape))
    for name, (p1, p2) in outs.items():
      for p, g in ((p1, g1), (p2, g2)):
        m = min(len(p), len(g))
        se[name] = se.get(name, 0.0) + float(((p[:m] - g[:m]) ** 2).sum())
    first = outs["true partner motion"]
    n += sum(min(len(p), len(g)) * g.shape[1] for p, g in ((first[0], g1), (first[1], g2)))
  print(f"{len(directions) // 2} held-out conversations of {val}, both speakers, whole-clip passes")
  for name, v in se.items():
    print(f"  {name:28s} MSE {v / n:.5f}")
  print("  largest change in the last round (max over clips):", {k: round(float(np.max(v)), 3) for k, v in changes.items()})


if __name__ == "__main__":
  app.run(main)
