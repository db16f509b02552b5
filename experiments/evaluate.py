r"""Scores predictions of a DualTalk split with the paper's metrics (released `metric.py` keys).

  # score existing predictions (<clip>_speaker{1,2}.npy, T x 56)
  python -m experiments.evaluate --data_dir=data/test --pred_dir=preds --output=metrics.json
  # predict every clip in both directions with a checkpoint, then score
  python -m experiments.evaluate --data_dir=data/test --checkpoint=ckpt/dualtalk_large --output=metrics.json
  python -m experiments.evaluate --data_dir=data/test --checkpoint=DualTalk.pth --config=experiments/configs/dualtalk.py:large --output=m.json
  # add the vertex metrics LVE and FDD (FLAME meshes; docs/faces.md)
  python -m experiments.evaluate ... --flame_model=generic_model.pkl --flame_masks=FLAME_masks.pkl

`--data_dir` is a raw split folder (`<clip>_speaker{1,2}.{wav,npz}`). With a checkpoint
(an orbax checkpoint directory, a training workdir, or a released-layout torch file)
predictions are made on a mesh over every device with the eval step training validates
with (`predict.Predictor`), and go to `--pred_dir`, else to `<output stem>_predictions/`
beside the output.
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

from experiments import configs

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Raw split folder: <clip>_speaker{1,2}.{wav,npz}.", required=True)
_PRED_DIR = flags.DEFINE_string("pred_dir", None, "Folder of <clip>_speakerK.npy predictions (read, or written with --checkpoint).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Predict first with this checkpoint: orbax dir, workdir or .pth.")
_OUTPUT = flags.DEFINE_string("output", None, "Metrics JSON to write (a _per_file.csv is written beside it).", required=True)
_CONFIG = configs.define_model_config_flag()
_WAV2VEC2_CONFIG = flags.DEFINE_string("wav2vec2_config", None, "A HF wav2vec2 config.json for a torch checkpoint.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Clips per prediction batch.")
_BUCKET_SECONDS = flags.DEFINE_float("bucket_seconds", 2.0, "Audio is padded to a multiple of this (one compile per bucket).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random steps (diversity pairs, k-means init).")
_ALLOW_PARTIAL = flags.DEFINE_bool(
    "allow_partial", False,
    "Score what can be scored when predictions are missing or their lengths do not match the ground truth "
    "(beyond 1 frame): those files are listed under 'skipped' in the output JSON. Without it they are an error.")
_CHANNEL = flags.DEFINE_integer("channel", None, "For multichannel audio in --data_dir: the channel to use.")
_PLOT = flags.DEFINE_string("plot", None, "Optional PNG: the first scored prediction beside its true motion and the partner's.")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None,
    "Keep XLA executables here (jax persistent compilation cache): a re-run skips the metric "
    "kernels' compiles (500 files on a 2-core CPU: 67 s of compile -> 10 s of tracing).")
_FLAME_MODEL = flags.DEFINE_string("flame_model", None, "FLAME generic_model.pkl: adds the vertex metrics LVE and FDD (with --flame_masks).")
_FLAME_MASKS = flags.DEFINE_string("flame_masks", None, "FLAME_masks.pkl (lips; forehead + eye_region) for LVE and FDD.")


def main(argv):
  del argv
  from dualtalk_jax import runtime

  runtime.configure()
  from dualtalk_jax import files
  from dualtalk_jax.eval import evaluate, predict

  if _COMPILATION_CACHE_DIR.value:
    import jax
    jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE_DIR.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

  start = time.time()
  try:
    # every path is checked before the model loads or anything is scored
    if not _PRED_DIR.value and not _CHECKPOINT.value:
      raise ValueError("pass --pred_dir (score predictions) or --checkpoint (predict, then score)")
    if bool(_FLAME_MODEL.value) != bool(_FLAME_MASKS.value):
      raise ValueError("--flame_model and --flame_masks go together (LVE and FDD need both)")
    files.prepare_output(_OUTPUT.value, "--output", (".json",))
    if _PLOT.value:
      files.prepare_output(_PLOT.value, "--plot", (".png", ".pdf", ".svg"))
    evaluate.list_clips(_DATA_DIR.value)
    if _FLAME_MODEL.value:
      files.require_file(_FLAME_MODEL.value, "FLAME model (--flame_model)")
      files.require_file(_FLAME_MASKS.value, "FLAME mask file (--flame_masks)")
    pred_dir = _PRED_DIR.value or os.path.splitext(_OUTPUT.value)[0] + "_predictions"
    if _CHECKPOINT.value:
      predict.check_checkpoint_path(_CHECKPOINT.value)
      model = predict.load_model(_CHECKPOINT.value, **configs.torch_model_args(_CONFIG.value, _WAV2VEC2_CONFIG.value))
      from dualtalk_jax import audio, sharding

      predictor = predict.Predictor.from_model(model, mesh=sharding.make_mesh())  # every device: the training eval step
      paths = evaluate.predict_split(predictor, _DATA_DIR.value, pred_dir, batch_size=_BATCH_SIZE.value,
                                     bucket_frames=max(1, round(_BUCKET_SECONDS.value * audio.FPS)), progress=True,
                                     channel=_CHANNEL.value)
      print(f"wrote {len(paths)} predictions to {os.path.abspath(pred_dir)} ({time.time() - start:.1f} s)")
    else:
      files.require_dir(pred_dir, "prediction directory")
    result = evaluate.score_predictions(pred_dir, _DATA_DIR.value, seed=_SEED.value, allow_partial=_ALLOW_PARTIAL.value)
    if _FLAME_MODEL.value:
      from dualtalk_jax.face import vertex_metrics
      vertex_metrics.add_to_result(result, pred_dir, _DATA_DIR.value, _FLAME_MODEL.value, _FLAME_MASKS.value)
    out, csv_path = evaluate.write_results(_OUTPUT.value, result)
    if _PLOT.value:
      evaluate.plot_prediction(_PLOT.value, pred_dir, _DATA_DIR.value, result["files"][0])
  except (OSError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  for s in result["skipped"]:
    print(f"warning: skipped {s['file']}: {s['reason']}", file=sys.stderr)
  mean = result["mean"]
  for m in ("fid", "p_fid", "mse", "sid", "rpcc"):
    print(f"{m:>6}: " + "  ".join(f"{g} {mean[f'{m}_{g}']:.4g}" for g in ("exp", "jaw", "pose")))
  if "lve" in mean:
    print(f"   lve: {mean['lve']:.4g} m^2 (x1e-5: {mean['lve'] / 1e-5:.4g})   fdd: {mean['fdd']:.4g} m^2 (x1e-7: {mean['fdd'] / 1e-7:.4g})")
  for role in ("speaking", "listening"):  # metrics over the frames of each role (dualtalk_jax/eval/activity.py)
    if f"mse_exp_{role}" in mean:
      print(f"{role:>9} mse: " + "  ".join(f"{g} {mean[f'mse_{g}_{role}']:.4g}" for g in ("exp", "jaw", "pose")))
  skipped = f", skipped {len(result['skipped'])} (listed in the JSON)" if result["skipped"] else ""
  print(f"scored {len(result['files'])} files{skipped} -> {out}, {csv_path} ({time.time() - start:.1f} s)")


if __name__ == "__main__":
  app.run(main, flags_parser=configs.parse_flags)
