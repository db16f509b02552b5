r"""Predicts the target speaker's motion for one conversation of any length.

  python -m experiments.infer --checkpoint=ckpt/dualtalk_large \
      --audio_self=a.wav --audio_other=b.wav --motion_other=b.npz --output=pred.npy --plot=pred.png
  python -m experiments.infer --checkpoint=DualTalk.pth --config=experiments/configs/dualtalk.py:large ... --window_seconds=0

`--checkpoint`: an orbax checkpoint directory, a training workdir, or a released-layout
torch file (an export records its config; `DualTalk.pth` is built with `--config` /
`--wav2vec2_config`). Inputs longer than `--window_seconds` run in windows overlapping by
`--overlap_seconds` (default: 2 s, at most a quarter of the window), crossfaded, so memory
stays bounded; `--window_seconds=0` is one pass over the whole clip (the released
behaviour). Every flag and path is checked before the model loads; the partner's motion
must cover the same time as the audio (within a frame, as preprocess requires). Writes `--output` (T x 56 `[exp, jaw, neck]`, T =
ceil(len(audio_self) / 16000 * 25)) and `<output stem>.npz` with FLAME `exp` (T, 50) and
`pose` (T, 6) = [neck, jaw] for renderers; `--plot` draws both speakers' jaw, neck and
leading expressions with their voice activity; `--render=video.mp4 --flame_model=generic_model.pkl`
renders the prediction beside the partner with both voices (as `experiments.render`).

Without partner motion: `--motion_other` may be left out only for a checkpoint trained
with `ablation=no_partner_motion` (its model never reads it); any other model refuses
with an error before it loads (it never substitutes a still or zero partner).

Both speakers (`--both`), from a two-track recording:

  python -m experiments.infer --checkpoint=W --both --audio_self=a.wav --audio_other=b.wav --output=conv.npy
  python -m experiments.infer --checkpoint=W --both --audio_self=stereo.wav --output=conv.npy

speaker 1 is `--audio_self` (or channel 0 of a two-channel `--audio_self` without
`--audio_other`), speaker 2 is `--audio_other` (or channel 1). Writes
`<output stem>_speaker1.npy` / `_speaker2.npy` (each with its FLAME .npz), and with
`--plot` / `--render` both speakers side by side. `--motion_other` is not accepted: each
speaker's partner motion is the other speaker's predicted motion
(`eval.predict.predict_both`). A no_partner_motion model needs none: one prediction per
speaker, exact; use one for --both. A model that reads partner motion runs only with an
explicit `--iterations=N`: N rounds over the whole conversation, round 1 giving each
speaker a still partner (the neutral face), each later round the partner's previous
prediction; the largest change in the last round is printed. That is an approximation
the model was never trained for, and it can be far off (docs/ablation.md: on the
quickstart's held-out clips worse than the mean pose, and not converging).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

from experiments import configs

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Orbax checkpoint dir, training workdir, or .pth/.safetensors.", required=True)
_CONFIG = configs.define_model_config_flag()
_WAV2VEC2_CONFIG = flags.DEFINE_string("wav2vec2_config", None, "A HF wav2vec2 config.json for a torch checkpoint.")
_AUDIO_SELF = flags.DEFINE_string("audio_self", None, "The target speaker's audio (16 kHz mono; other rates resampled).", required=True)
_AUDIO_OTHER = flags.DEFINE_string("audio_other", None, "The partner's audio (with --both: speaker 2; optional for a "
                                    "two-channel --audio_self).")
_MOTION_OTHER = flags.DEFINE_string("motion_other", None, "The partner's FLAME npz (exp, pose); not needed by a "
                                    "no_partner_motion checkpoint, not accepted with --both.")
_OUTPUT = flags.DEFINE_string("output", None, "Prediction .npy (a FLAME .npz is written beside it); with --both the "
                              "stem of <stem>_speaker1.npy and <stem>_speaker2.npy.", required=True)
_BOTH = flags.DEFINE_bool("both", False, "Predict both speakers of a two-track recording (see the module docstring).")
_ITERATIONS = flags.DEFINE_integer("iterations", None, "With --both and a model that reads partner motion (required "
                                   "there): rounds of predicting each speaker from the other's previous prediction.")
_PLOT = flags.DEFINE_string("plot", None, "Optional PNG plot of both speakers' motion.")
_WINDOW_SECONDS = flags.DEFINE_float("window_seconds", 20.0, "Window length for long inputs; 0 = one whole-clip pass.")
_OVERLAP_SECONDS = flags.DEFINE_float("overlap_seconds", None, "Minimum overlap between windows (crossfaded); default "
                                      "min(2, window_seconds / 4).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Windows per model call.")
_CHANNEL = flags.DEFINE_integer("channel", None, "For multichannel audio: the channel to use (else it is an error).")
_RENDER = flags.DEFINE_string("render", None, "Also render a video (.mp4): the prediction beside the partner, both voices.")
_FLAME_MODEL = flags.DEFINE_string("flame_model", None, "FLAME generic_model.pkl, needed by --render.")


def main(argv):
  del argv
  from dualtalk_jax import runtime

  runtime.configure()
  from dualtalk_jax import audio, files
  from dualtalk_jax.eval import predict

  start = time.time()
  try:
    # flags, paths and the checkpoint's config first: nothing slow happens before they are known to be usable
    overlap = predict.window_overlap(_WINDOW_SECONDS.value, _OVERLAP_SECONDS.value)
    if _BATCH_SIZE.value < 1:
      raise ValueError(f"--batch_size must be >= 1, got {_BATCH_SIZE.value}")
    if _BOTH.value:
      written = _both(audio, files, predict, overlap)
    else:
      written = _one(audio, files, predict, overlap)
  except (OSError, ValueError, ImportError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {' and '.join(written)} in {time.time() - start:.1f} s")


def _load_model(predict):
  return predict.load_model(_CHECKPOINT.value, **configs.torch_model_args(_CONFIG.value, _WAV2VEC2_CONFIG.value))


def _checkpoint_config(predict):
  return predict.checkpoint_config(_CHECKPOINT.value, **configs.torch_model_args(_CONFIG.value, _WAV2VEC2_CONFIG.value))


def _check_render_plot(files):
  if _PLOT.value:
    files.prepare_output(_PLOT.value, "--plot", (".png", ".pdf", ".svg"))
  if _RENDER.value:
    if not _FLAME_MODEL.value:
      raise ValueError("--render needs --flame_model=generic_model.pkl (see docs/faces.md)")
    files.require_file(_FLAME_MODEL.value, "FLAME model (--flame_model)")
    files.prepare_output(_RENDER.value, "--render", (".mp4", ".mov", ".mkv"))


def _one(audio, files, predict, overlap) -> list[str]:
  """One target speaker: --audio_self, --audio_other and (unless the model reads none) --motion_other."""
  if not _AUDIO_OTHER.value:
    raise ValueError("--audio_other (the partner's audio) is required (or --both with a two-channel --audio_self)")
  inputs = [(_AUDIO_SELF.value, "target audio (--audio_self)"), (_AUDIO_OTHER.value, "partner audio (--audio_other)")]
  if _MOTION_OTHER.value:
    inputs.append((_MOTION_OTHER.value, "partner motion (--motion_other)"))
  for path, what in inputs:
    files.require_file(path, what)
  cfg = _checkpoint_config(predict)
  motion_other = _MOTION_OTHER.value
  if not cfg.uses_partner_motion and motion_other:
    print(f"note: {_CHECKPOINT.value} is a no_partner_motion model; --motion_other is not read", file=sys.stderr)
    motion_other = None
  if cfg.uses_partner_motion and not motion_other:
    what = f"ablation {cfg.ablation!r}" if cfg.ablation else "the released architecture"
    raise ValueError(f"{_CHECKPOINT.value}: this model ({what}) reads the partner's motion: pass "
                     "--motion_other=<partner FLAME .npz>, or --both to predict both speakers from their audio; "
                     "only a checkpoint trained with ablation=no_partner_motion runs without it")
  out = files.prepare_output(_OUTPUT.value, "--output", (".npy",))
  _check_render_plot(files)
  clip = predict.load_inputs(_AUDIO_SELF.value, _AUDIO_OTHER.value, motion_other, channel=_CHANNEL.value)
  model = _load_model(predict)
  pred = predict.predict_windowed(model, clip, window_seconds=_WINDOW_SECONDS.value,
                                  overlap_seconds=overlap, batch_size=_BATCH_SIZE.value)
  npz = predict.save_prediction(out, pred)
  written = [f"{out} ({pred.shape[0]} frames, {pred.shape[0] / audio.FPS:.1f} s)", npz]
  if _PLOT.value:
    from dualtalk_jax.eval import plot

    plot.plot_conversation(_PLOT.value, pred, clip.motion_other, clip.audio_self, clip.audio_other,
                           title=os.path.basename(_AUDIO_SELF.value))
    written.append(os.path.abspath(_PLOT.value))
  if _RENDER.value:
    from dualtalk_jax.face import render

    render.render_files(_RENDER.value, _FLAME_MODEL.value, out, audio=_AUDIO_SELF.value, motion_other=motion_other,
                        audio_other=_AUDIO_OTHER.value if motion_other else None, channel=_CHANNEL.value)
    written.append(os.path.abspath(_RENDER.value))
  return written


def _both(audio, files, predict, overlap) -> list[str]:
  """Both speakers: speaker 1 = --audio_self, speaker 2 = --audio_other (or the two channels of --audio_self)."""
  if _MOTION_OTHER.value:
    raise ValueError("--both predicts both speakers' motion from their audio; --motion_other is not accepted")
  if _ITERATIONS.value is not None and _ITERATIONS.value < 1:
    raise ValueError(f"--iterations must be >= 1, got {_ITERATIONS.value}")
  files.require_file(_AUDIO_SELF.value, "speaker 1 audio (--audio_self)")
  if _AUDIO_OTHER.value:
    files.require_file(_AUDIO_OTHER.value, "speaker 2 audio (--audio_other)")
    tracks = [(_AUDIO_SELF.value, _CHANNEL.value), (_AUDIO_OTHER.value, _CHANNEL.value)]
  else:
    if _CHANNEL.value is not None:
      raise ValueError("--both without --audio_other reads channels 0 and 1 of --audio_self; drop --channel")
    tracks = [(_AUDIO_SELF.value, 0), (_AUDIO_SELF.value, 1)]
  if _checkpoint_config(predict).uses_partner_motion and _ITERATIONS.value is None:
    raise ValueError(f"{_CHECKPOINT.value}: this model reads the partner's motion, which a two-track recording does "
                     "not have. Use a checkpoint trained with ablation=no_partner_motion (exact), or pass "
                     "--iterations=N to give each speaker the other's predicted motion (fixed-point rounds from a "
                     "still partner; approximate and can be far off: see docs/ablation.md)")
  stem = os.path.splitext(_OUTPUT.value)[0] if _OUTPUT.value.endswith(".npy") else _OUTPUT.value
  outs = [files.prepare_output(f"{stem}_speaker{k}.npy", "--output", (".npy",)) for k in (1, 2)]
  _check_render_plot(files)
  try:
    raw = [predict.load_raw_track(path, channel) for path, channel in tracks]
  except audio.AudioError as e:
    if _AUDIO_OTHER.value or "channel" not in str(e):
      raise
    raise ValueError(f"{e}; --both without --audio_other needs a two-channel --audio_self (speaker 1 on channel 0, "
                     "speaker 2 on channel 1)") from None
  if problem := audio.frame_mismatch((f"{tracks[0][0]} (speaker 1)", audio.num_frames(len(raw[0]))),
                                     (f"{tracks[1][0]} (speaker 2)", audio.num_frames(len(raw[1]))),
                                     2 * audio.MAX_FRAME_MISMATCH):
    raise ValueError(f"length mismatch: {problem}; the two tracks of one conversation must cover the same time")
  a1, a2 = (audio.normalize(x) for x in raw)
  model = _load_model(predict)
  p1, p2, change = predict.predict_both(model, a1, a2, iterations=_ITERATIONS.value, window_seconds=_WINDOW_SECONDS.value,
                                        overlap_seconds=overlap, batch_size=_BATCH_SIZE.value)
  written = []
  for out, pred in zip(outs, (p1, p2)):
    npz = predict.save_prediction(out, pred)
    written += [f"{out} ({pred.shape[0]} frames, {pred.shape[0] / audio.FPS:.1f} s)", npz]
  if model.config.uses_partner_motion:
    print(f"partner motion: {_ITERATIONS.value} rounds of predicting each speaker from the other's prediction; "
          f"largest change in the last round {change:.2g}")
  if _PLOT.value:
    from dualtalk_jax.eval import plot

    plot.plot_conversation(_PLOT.value, p1, p2, a1, a2, labels=("speaker 1 (prediction)", "speaker 2 (prediction)"),
                           title=os.path.basename(stem))
    written.append(os.path.abspath(_PLOT.value))
  if _RENDER.value:
    from dualtalk_jax.face import render

    # each speaker with its own track (and channel), as loaded above
    render.render_conversation(_RENDER.value, _FLAME_MODEL.value, p1, raw[0], p2, raw[1])
    written.append(os.path.abspath(_RENDER.value))
  return written


if __name__ == "__main__":
  app.run(main, flags_parser=configs.parse_flags)
