"""Which of the synthetic listener's partner cues a model carries into its prediction.

  python -m benchmarks.listener_cues --workdir=quickstart_workdir
  python -m benchmarks.listener_cues --workdir=W/variants/no_partner_speech --val_dir=W/data/val  # a grid variant

Two cues of dualtalk_jax/data/synthetic.py, each in one partner input only, measured on
every held-out direction of a quickstart-style workdir (synthetic clips named
`synth_<index>`, regenerated from `--seed` and the workdir's `synthetic.*` config):

- mood, in the partner's motion only (step 4): the model predicts once with the true
  partner motion and once with the mood removed from it (partner `exp` minus mood x
  EMOTE). Printed: the least-squares slope of the prediction's change along EMOTE on the
  removed mood (about 1 when the model passes the mood on, 0 when it ignores it; exactly 0
  for no_partner_motion).
- listening, in the partner's speech only (steps 2 and 4: the target also falls silent
  in mutual silences, where nobody listens): over the frames where the target is silent,
  the Pearson r between the prediction along the target's listening direction and the
  true listening weight.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "quickstart_workdir", "Checkpoint dir with a synthetic data/val split.")
_VAL_DIR = flags.DEFINE_string("val_dir", "", "Preprocessed synthetic split (default: <workdir>/data/val).")
_SEED = flags.DEFINE_integer("seed", 0, "The synthetic data's seed.")


def synthetic_settings(workdir: str) -> dict:
  """The min/max seconds of the workdir's synthetic conversations (its config.json), as make_clip takes them."""
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    syn = json.load(f).get("synthetic")
  if not syn:
    raise ValueError(f"{path} has no synthetic settings: not a synthetic-data run")
  return {"min_seconds": syn["min_seconds"], "max_seconds": syn["max_seconds"]}


def main(argv):
  del argv
  from dualtalk_jax import runtime

  runtime.configure()
  from dualtalk_jax.data import synthetic
  from dualtalk_jax.eval import predict

  val = _VAL_DIR.value or os.path.join(_WORKDIR.value, "data", "val")
  model = predict.load_model(_WORKDIR.value)
  settings = synthetic_settings(_WORKDIR.value)
  identities = synthetic.make_identities(_SEED.value, 8)
  emote = synthetic.EMOTE / float(synthetic.EMOTE @ synthetic.EMOTE)
  num = den = 0.0
  level, weight = [], []
  directions = predict.split_clips(val)  # clip names <clip>_speakerK, clip = synth_<index>
  for clip, truth in directions:
    _, index, speaker = clip.name.split("_")
    index, me = int(index), int(speaker[-1]) - 1
    gen = synthetic.make_clip(_SEED.value, index, identities=identities, **settings)
    if gen["npz"][me]["exp"].shape != truth[:, :50].shape or not np.allclose(gen["npz"][me]["exp"], truth[:, :50], atol=1e-5):
      raise ValueError(f"{clip.name} in {val} is not synthetic clip {index} of seed {_SEED.value} with {settings}")
    moodless = clip.motion_other.copy()
    moodless[:, :50] -= gen["mood"] * synthetic.EMOTE
    p = predict.predict_windowed(model, clip, window_seconds=0)
    q = predict.predict_windowed(model, predict.Clip(clip.audio_self, clip.audio_other, moodless), window_seconds=0)
    change = (p[:, :50] - q[:, :50]) @ emote
    num += float(np.sum(change) * gen["mood"])
    den += float(len(change) * gen["mood"] ** 2)
    t = min(len(p), len(truth))  # the prediction has the audio's frame count, which may differ by one
    silent = own_silence(gen["audio"][me], t)
    listen_dir = identities[gen["identities"][me]].listen_dir
    level.append(p[:t, :50][silent] @ (listen_dir / float(listen_dir @ listen_dir)))
    weight.append(gen["listening"][me][:t][silent])
  r = np.corrcoef(np.concatenate(level), np.concatenate(weight))[0, 1]
  print(f"{len(directions)} held-out directions:")
  print(f"  mood: prediction change along EMOTE per unit of mood in the partner's motion = {num / den:.3f}")
  print(f"  listening: r(prediction along the listening direction, true listening weight) where the target is "
        f"silent = {r:.3f}")


def own_silence(audio_track: np.ndarray, t: int) -> np.ndarray:
  """(t,) bool: frames where the synthetic track is background noise only (RMS 0.003; speech is far above 0.01)."""
  from dualtalk_jax import audio

  hop = audio.SAMPLES_PER_FRAME
  frames = audio_track[:t * hop].astype(np.float64)
  frames = np.pad(frames, (0, t * hop - frames.size)).reshape(t, hop)
  return np.sqrt((frames ** 2).mean(axis=1)) < 0.01


if __name__ == "__main__":
  app.run(main)
