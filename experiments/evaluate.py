r"""Scores predictions of a DualTalk split with the paper's metrics (released `metric.py` keys).

  # score existing predictions (<clip>_speaker{1,2}.npy, T x 56)
  python -m experiments.evaluate --data_dir=data/test --pred_dir=preds --output=metrics.json
  # predict every clip in both directions with a checkpoint, then score
  python -m experiments.evaluate --data_dir=data/test --checkpoint=ckpt/dualtalk_large --output=metrics.json
  python -m experiments.evaluate --data_dir=data/test --checkpoint=DualTalk.pth --config=large --output=m.json

`--data_dir` is a raw split folder (`<clip>_speaker{1,2}.{wav,npz}`). With a checkpoint
(an orbax checkpoint directory, a training workdir, or a released-layout torch file)
predictions go to `--pred_dir`, else to `<output stem>_predictions/` beside the output.
Writes `--output` (JSON: the released keys, means over files, then each key over the
frames where the target speaks and where it listens, `<key>_speaking` / `<key>_listening`,
see dualtalk_jax/eval/activity.py) and
`<output stem>_per_file.csv` (every file's values). On CPU the metric kernels' XLA compiles
(one per padded length) dominate a one-off run; `--compilation_cache_dir` keeps them for the
next run.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Raw split folder: <clip>_speaker{1,2}.{wav,npz}.", required=True)
_PRED_DIR = flags.DEFINE_string("pred_dir", None, "Folder of <clip>_speakerK.npy predictions (read, or written with --checkpoint).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Predict first with this checkpoint: orbax dir, workdir or .pth.")
_OUTPUT = flags.DEFINE_string("output", None, "Metrics JSON to write (a _per_file.csv is written beside it).", required=True)
_CONFIG = flags.DEFINE_enum("config", "large", ["large", "base", "tiny"], "Model config of a torch checkpoint.")
_WAV2VEC2_CONFIG = flags.DEFINE_string("wav2vec2_config", None, "A HF wav2vec2 config.json for a torch checkpoint.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Clips per prediction batch.")
_BUCKET_SECONDS = flags.DEFINE_float("bucket_seconds", 2.0, "Audio is padded to a multiple of this (one compile per bucket).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random steps (diversity pairs, k-means init).")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None,
    "Keep XLA executables here (jax persistent compilation cache): a re-run skips the metric "
    "kernels' compiles (500 files on a 2-core CPU: 67 s of compile -> 10 s of tracing).")


def main(argv):
  del argv
  from dualtalk_jax.eval import evaluate, predict

  if _COMPILATION_CACHE_DIR.value:
    import jax
    jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE_DIR.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

  start = time.time()
  try:
    if not _PRED_DIR.value and not _CHECKPOINT.value:
      raise ValueError("pass --pred_dir (score predictions) or --checkpoint (predict, then score)")
    pred_dir = _PRED_DIR.value or os.path.splitext(_OUTPUT.value)[0] + "_predictions"
    if _CHECKPOINT.value:
      evaluate.list_clips(_DATA_DIR.value)  # fail on a bad data_dir before loading the model
      model = predict.load_model(_CHECKPOINT.value, config=_CONFIG.value, wav2vec2_config=_WAV2VEC2_CONFIG.value)
      paths = evaluate.predict_split(model, _DATA_DIR.value, pred_dir, batch_size=_BATCH_SIZE.value,
                                     bucket_seconds=_BUCKET_SECONDS.value, progress=sys.stderr.isatty())
      print(f"wrote {len(paths)} predictions to {os.path.abspath(pred_dir)} ({time.time() - start:.1f} s)")
    result = evaluate.score_predictions(pred_dir, _DATA_DIR.value, seed=_SEED.value)
    out, csv_path = evaluate.write_results(_OUTPUT.value, result)
  except (OSError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  mean = result["mean"]
  for m in ("fid", "p_fid", "mse", "sid", "rpcc"):
    print(f"{m:>6}: " + "  ".join(f"{g} {mean[f'{m}_{g}']:.4g}" for g in ("exp", "jaw", "pose")))
  for role in ("speaking", "listening"):  # metrics over the frames of each role (dualtalk_jax/eval/activity.py)
    if f"mse_exp_{role}" in mean:
      print(f"{role:>9} mse: " + "  ".join(f"{g} {mean[f'mse_{g}_{role}']:.4g}" for g in ("exp", "jaw", "pose")))
  print(f"scored {len(result['files'])} files -> {os.path.abspath(out)}, {os.path.abspath(csv_path)} "
        f"({time.time() - start:.1f} s)")


if __name__ == "__main__":
  app.run(main)
