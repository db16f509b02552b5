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
_AUDIO_OTHER = flags.DEFINE_string("audio_other", None, "The partner's audio.", required=True)
_MOTION_OTHER = flags.DEFINE_string("motion_other", None, "The partner's FLAME npz (exp, pose).", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Prediction .npy (a FLAME .npz is written beside it).", required=True)
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
    # flags and paths first: nothing slow happens before they are known to be usable
    overlap = predict.window_overlap(_WINDOW_SECONDS.value, _OVERLAP_SECONDS.value)
    if _BATCH_SIZE.value < 1:
      raise ValueError(f"--batch_size must be >= 1, got {_BATCH_SIZE.value}")
    for path, what in ((_AUDIO_SELF.value, "target audio (--audio_self)"), (_AUDIO_OTHER.value, "partner audio (--audio_other)"),
                       (_MOTION_OTHER.value, "partner motion (--motion_other)")):
      files.require_file(path, what)
    predict.check_checkpoint_path(_CHECKPOINT.value)
    out = files.prepare_output(_OUTPUT.value, "--output", (".npy",))
    if _PLOT.value:
      files.prepare_output(_PLOT.value, "--plot", (".png", ".pdf", ".svg"))
    if _RENDER.value:
      if not _FLAME_MODEL.value:
        raise ValueError("--render needs --flame_model=generic_model.pkl (see docs/faces.md)")
      files.require_file(_FLAME_MODEL.value, "FLAME model (--flame_model)")
      files.prepare_output(_RENDER.value, "--render", (".mp4", ".mov", ".mkv"))
    clip = predict.load_inputs(_AUDIO_SELF.value, _AUDIO_OTHER.value, _MOTION_OTHER.value, channel=_CHANNEL.value)
    model = predict.load_model(_CHECKPOINT.value, **configs.torch_model_args(_CONFIG.value, _WAV2VEC2_CONFIG.value))
    pred = predict.predict_windowed(model, clip, window_seconds=_WINDOW_SECONDS.value,
                                    overlap_seconds=overlap, batch_size=_BATCH_SIZE.value)
    npz = predict.save_prediction(out, pred)
    if _PLOT.value:
      from dualtalk_jax.eval import plot

      plot.plot_conversation(_PLOT.value, pred, clip.motion_other, clip.audio_self, clip.audio_other,
                             title=os.path.basename(_AUDIO_SELF.value))
    if _RENDER.value:
      from dualtalk_jax.face import render

      render.render_files(_RENDER.value, _FLAME_MODEL.value, out, audio=_AUDIO_SELF.value,
                          motion_other=_MOTION_OTHER.value, audio_other=_AUDIO_OTHER.value, channel=_CHANNEL.value)
  except (OSError, ValueError, ImportError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {out} ({pred.shape[0]} frames, {pred.shape[0] / audio.FPS:.1f} s) and "
        f"{npz}{' and ' + os.path.abspath(_PLOT.value) if _PLOT.value else ''}"
        f"{' and ' + os.path.abspath(_RENDER.value) if _RENDER.value else ''} in {time.time() - start:.1f} s")


if __name__ == "__main__":
  app.run(main, flags_parser=configs.parse_flags)
