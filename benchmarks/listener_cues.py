"""How much of the conversation's mood a model reads from the partner's motion (synthetic data).

  python -m benchmarks.partner_mood --workdir=quickstart_workdir
  python -m benchmarks.partner_mood --workdir=W/variants/no_modulation --val_dir=W/data/val  # a grid variant

The mood (dualtalk_jax/data/synthetic.py, step 4) is in both speakers' motion and in no
audio. For every held-out direction of a quickstart-style workdir (synthetic clips, seed 0,
named `synth_<index>`), predicts once with the true partner motion and once with the mood
removed from it (partner `exp` minus mood x EMOTE), and prints the least-squares slope of
the prediction's change along EMOTE on the removed mood: about 1 when the model passes the
partner's mood on to the target, 0 when it ignores it (a `no_partner_motion` model: exactly 0).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "quickstart_workdir", "Checkpoint dir with a synthetic data/val split.")
_VAL_DIR = flags.DEFINE_string("val_dir", "", "Preprocessed synthetic split (default: <workdir>/data/val).")
_SEED = flags.DEFINE_integer("seed", 0, "The synthetic data's seed.")


def main(argv):
  del argv
  from dualtalk_jax import runtime

  runtime.configure()
  from dualtalk_jax.data import synthetic
  from dualtalk_jax.eval import predict

  val = _VAL_DIR.value or os.path.join(_WORKDIR.value, "data", "val")
  model = predict.load_model(_WORKDIR.value)
  emote = synthetic.EMOTE / float(synthetic.EMOTE @ synthetic.EMOTE)
  num = den = 0.0
  directions = predict.split_clips(val)  # clip names <clip>_speakerK, clip = synth_<index>
  for clip, _ in directions:
    mood = synthetic.mood(_SEED.value, int(clip.name.split("_")[1]))
    moodless = clip.motion_other.copy()
    moodless[:, :50] -= mood * synthetic.EMOTE
    p = predict.predict_windowed(model, clip, window_seconds=0)
    q = predict.predict_windowed(model, predict.Clip(clip.audio_self, clip.audio_other, moodless), window_seconds=0)
    change = (p[:, :50] - q[:, :50]) @ emote
    num += float(np.sum(change) * mood)
    den += float(len(change) * mood * mood)
  print(f"{len(directions)} held-out directions: prediction change along EMOTE "
        f"per unit of mood in the partner's motion = {num / den:.3f}")


if __name__ == "__main__":
  app.run(main)
