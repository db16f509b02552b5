r"""Preprocess a DualTalk split folder into ArrayRecord shards and a manifest.

  python -m experiments.preprocess --input_dir=<split folder> --output_dir=<dir> \
      [--num_shards=0] [--workers=2] [--strict] [--window_frames=200] \
      [--cache_wav2vec2=<dualtalk-jax checkpoint / workdir, or local HF wav2vec2 dir>]

Rules and layout: dualtalk_jax/data/preprocess.py and records.py. Exits non-zero under
--strict at the first rejected clip; otherwise prints every skipped clip with its reason.
--cache_wav2vec2 also stores the frozen encoders' outputs for every training window
(dualtalk_jax/data/feature_cache.py), for training with `--config.data.feature_cache`.
"""

import sys

from absl import app, flags, logging

from dualtalk_jax import runtime
from dualtalk_jax.data import preprocess

_INPUT = flags.DEFINE_string("input_dir", None, "split folder with <clip>_speaker{1,2}.{wav,npz}")
_OUTPUT = flags.DEFINE_string("output_dir", None, "where shards and manifest.json go")
_SHARDS = flags.DEFINE_integer("num_shards", 0, "number of shards (0: about 64 clips each)")
_WORKERS = flags.DEFINE_integer("workers", 2, "processes loading clips")
_STRICT = flags.DEFINE_bool("strict", False, "any rejected clip is fatal (non-zero exit)")
_WINDOW = flags.DEFINE_integer("window_frames", 200, "training window, to note short clips")
_TOL = flags.DEFINE_integer("max_frame_mismatch", 1, "audio/motion frames tolerated apart")
_CHANNEL = flags.DEFINE_integer("channel", None, "for multichannel audio: the channel to use (else such clips are rejected)")
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")
_CACHE = flags.DEFINE_string(
    "cache_wav2vec2", None,
    "optional: build the wav2vec2 feature cache with these weights: a dualtalk-jax checkpoint dir or training "
    "workdir (its two encoders), or a local Hugging Face wav2vec2 dir (loaded into both). Stores, per training "
    "window of --window_frames frames and speaker, each encoder's eval-mode last hidden state resampled to the "
    "window's frames (float32); the manifest records the weights' fingerprint and training with "
    "data.feature_cache refuses other weights. Use the weights the training run starts from "
    "(its pretrained_wav2vec2 or init_checkpoint). Re-runs with the same weights rebuild nothing")
_CACHE_BATCH = flags.DEFINE_integer("cache_batch_size", 8, "windows per wav2vec2 call when building the cache")
flags.mark_flags_as_required(["input_dir", "output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runtime.configure()
  logging.set_verbosity(logging.WARNING)  # orbax's INFO lines when --cache_wav2vec2 reads a checkpoint
  try:
    m = preprocess.preprocess(_INPUT.value, _OUTPUT.value, num_shards=_SHARDS.value,
                              workers=_WORKERS.value, strict=_STRICT.value,
                              window_frames=_WINDOW.value, max_frame_mismatch=_TOL.value,
                              progress=_PROGRESS.value, cache_wav2vec2=_CACHE.value,
                              cache_batch_size=_CACHE_BATCH.value, channel=_CHANNEL.value)
  except (preprocess.PreprocessError, OSError, ValueError) as e:
    print(f"preprocess failed: {e}", file=sys.stderr)
    sys.exit(1)
  c = m["counts"]
  print(f"{c['clips_written']}/{c['clips_found']} clips written ({m['hours']:.2f} h, "
        f"{c['training_windows']} training windows of {_WINDOW.value} frames, "
        f"{c['short_for_training']} clips too short for training) in "
        f"{len(m['shards'])} shards under {_OUTPUT.value}")
  fc = m["feature_cache"]
  if fc:
    print(f"wav2vec2 feature cache: {'shared' if fc['shared'] else 'two'} encoder(s) from {fc['source']}, "
          f"hidden {fc['hidden_size']}, {fc['window_frames']}-frame windows, "
          f"{sum(s['bytes'] for s in fc['shards']) / 2**30:.2f} GiB, fingerprint {fc['fingerprint'][:16]}")
  for s in m["skipped"]:
    print(f"skipped {s['clip']} [{s['code']}]: {s['reason']}")
  for f in m["unrecognized_files"]:
    print(f"unrecognized file (not part of a clip): {f}")


if __name__ == "__main__":
  app.run(main)
