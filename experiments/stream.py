r"""Streams a conversation through the model as if it arrived live, and reports the latency.

  python -m experiments.stream --checkpoint=ckpt/dualtalk_large \
      --audio_self=a.wav --audio_other=b.wav --motion_other=b.npz \
      --chunk_ms=40 --lookahead_ms=400 --context_s=6 --output=pred.npy [--realtime]
  python -m experiments.stream --checkpoint=... --microphone --audio_other=b.wav --motion_other=b.npz ...

Both tracks (and the partner's motion, frame by frame as its time passes) are fed in chunks
of `--chunk_ms` to `dualtalk_jax.eval.stream.StreamingPredictor`: every `--hop_ms` (default:
the chunk, rounded up to whole 40 ms frames) the model runs once on `--context_s` of past
and `--lookahead_ms` of future audio and emits the frames up to the present, crossfaded with
the previous step. By default chunks are pushed as fast as the model takes them;
`--realtime` waits for each chunk's arrival time, as a live source delivers it, and then
also reports how late each output frame comes after its audio. `--microphone` takes the
target's audio live from the default input device (needs `sounddevice`) against the
partner's recording, for the recording's length.

Prints per-chunk compute latency (p50/p95) and the real-time factor (compute time / audio
time; < 1 keeps up). Writes `--output` (T x 56) and the FLAME `.npz` beside it, as
`experiments.infer` does. `--motion_other` may be left out only for a `no_partner_motion`
model. Paths, flags, the partner-motion requirement (from the checkpoint's config) and the
files' lengths (infer's rule) are all checked before the model is loaded.
"""

from __future__ import annotations

import math
import sys
import time

from absl import app, flags

from experiments import configs

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Orbax checkpoint dir, training workdir, or .pth/.safetensors.", required=True)
_CONFIG = configs.define_model_config_flag()
_WAV2VEC2_CONFIG = flags.DEFINE_string("wav2vec2_config", None, "A HF wav2vec2 config.json for a torch checkpoint.")
_AUDIO_SELF = flags.DEFINE_string("audio_self", None, "The target speaker's audio (not with --microphone).")
_AUDIO_OTHER = flags.DEFINE_string("audio_other", None, "The partner's audio.", required=True)
_MOTION_OTHER = flags.DEFINE_string("motion_other", None, "The partner's FLAME npz; only a no_partner_motion model goes without.")
_OUTPUT = flags.DEFINE_string("output", None, "Prediction .npy (a FLAME .npz is written beside it).", required=True)
_CHUNK_MS = flags.DEFINE_float("chunk_ms", 40.0, "Audio arrives in chunks of this many milliseconds (any size).")
_LOOKAHEAD_MS = flags.DEFINE_float("lookahead_ms", 400.0, "Future audio each step sees (rounded up to 40 ms frames).")
_CONTEXT_S = flags.DEFINE_float("context_s", 6.0, "Past audio each step sees, in seconds (rounded up to frames).")
_HOP_MS = flags.DEFINE_float("hop_ms", None, "Output emitted per model step; default: --chunk_ms rounded up to frames.")
_REALTIME = flags.DEFINE_bool("realtime", False, "Feed the files at real time (else as fast as possible).")
_MICROPHONE = flags.DEFINE_bool("microphone", False, "Target audio live from the default input device (sounddevice).")
_CHANNEL = flags.DEFINE_integer("channel", None, "For multichannel audio files: the channel to use (else it is an error).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dualtalk_jax import runtime

  runtime.configure()
  from dualtalk_jax import audio, files
  from dualtalk_jax.eval import predict
  from dualtalk_jax.eval import stream

  try:
    # ---- flags and paths first: nothing slow happens before they are known to be usable ----
    chunk_ms = _CHUNK_MS.value
    if not (math.isfinite(chunk_ms) and chunk_ms > 0):
      raise ValueError(f"--chunk_ms must be > 0, got {chunk_ms}")
    chunk = max(1, int(round(chunk_ms * audio.SAMPLE_RATE / 1000)))
    hop_ms = _HOP_MS.value if _HOP_MS.value is not None else math.ceil(chunk_ms / 40 - 1e-9) * 40
    if not (math.isfinite(hop_ms) and hop_ms > 0):
      raise ValueError(f"--hop_ms must be > 0, got {hop_ms}")
    if not (math.isfinite(_CONTEXT_S.value) and _CONTEXT_S.value > 0):
      raise ValueError(f"--context_s must be > 0, got {_CONTEXT_S.value}")
    try:
      cfg = stream.StreamConfig.from_time(context_s=_CONTEXT_S.value, lookahead_ms=_LOOKAHEAD_MS.value, hop_ms=hop_ms)
    except ValueError as e:
      raise ValueError(f"--context_s / --lookahead_ms / --hop_ms: {e}") from None
    if _MICROPHONE.value == bool(_AUDIO_SELF.value):
      raise ValueError("give exactly one of --audio_self and --microphone")
    inputs = [(_AUDIO_OTHER.value, "partner audio (--audio_other)")]
    if _AUDIO_SELF.value:
      inputs.append((_AUDIO_SELF.value, "target audio (--audio_self)"))
    if _MOTION_OTHER.value:
      inputs.append((_MOTION_OTHER.value, "partner motion (--motion_other)"))
    for path, what in inputs:
      files.require_file(path, what)
    predict.check_checkpoint_path(_CHECKPOINT.value)
    if _MOTION_OTHER.value is None and stream.needs_partner_motion(_model_config()):
      raise ValueError(f"{_CHECKPOINT.value}: this model reads the partner's motion; pass --motion_other "
                       "(only a no_partner_motion model streams without it)")
    out = files.prepare_output(_OUTPUT.value, "--output", (".npy",))
    if _MICROPHONE.value:
      stream.open_microphone()  # a clear error now if live input cannot work
    # raw audio (the stream normalises as it goes), lengths checked as infer checks them
    if _MOTION_OTHER.value and _AUDIO_SELF.value:
      clip = predict.load_inputs(_AUDIO_SELF.value, _AUDIO_OTHER.value, _MOTION_OTHER.value, channel=_CHANNEL.value,
                                 normalize=False)
      a, b, m = clip.audio_self, clip.audio_other, clip.motion_other
    else:
      a = predict.load_raw_track(_AUDIO_SELF.value, _CHANNEL.value) if _AUDIO_SELF.value else None
      b = predict.load_raw_track(_AUDIO_OTHER.value, _CHANNEL.value)
      m = predict.load_motion(_MOTION_OTHER.value) if _MOTION_OTHER.value else None

    # ---- the stream ----
    t0 = time.perf_counter()
    model = predict.load_model(_CHECKPOINT.value, **configs.torch_model_args(_CONFIG.value, _WAV2VEC2_CONFIG.value))
    streamer = stream.StreamingPredictor(model, cfg)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    streamer.warmup()
    compile_s = time.perf_counter() - t0
    if a is None:
      print(f"listening on the default input device for {len(b) / audio.SAMPLE_RATE:.1f} s ...", flush=True)
      chunks = stream.microphone_chunks(chunk, b, m)
    else:
      chunks = stream.file_chunks(a, b, m, chunk)
    r = stream.run_stream(streamer, chunks, pace=_REALTIME.value or _MICROPHONE.value)
    pred = r.prediction
    npz = predict.save_prediction(out, pred)
  except (OSError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  frame_ms = 1000 / audio.FPS
  print(f"streamed {pred.shape[0]} frames ({r.audio_seconds:.2f} s) in {len(r.chunk_seconds)} chunks of "
        f"{chunk / audio.SAMPLE_RATE * 1000:g} ms; context {cfg.context_frames * frame_ms / 1000:g} s, lookahead "
        f"{cfg.lookahead_frames * frame_ms:g} ms, hop {cfg.hop_frames * frame_ms:g} ms "
        f"(model loaded in {load_s:.1f} s, compiled in {compile_s:.1f} s, {streamer.compiles} compile)")
  print(f"per-chunk compute latency: p50 {r.latency_ms(50):.1f} ms, p95 {r.latency_ms(95):.1f} ms, "
        f"max {r.latency_ms(100):.1f} ms")
  print(f"real-time factor {r.real_time_factor:.3f} (compute / audio time; < 1 keeps up)")
  if r.frame_delay_seconds is not None:
    d = r.frame_delay_seconds * 1000
    print(f"output delay after each frame's audio: p50 {float(_pct(d, 50)):.0f} ms, p95 {float(_pct(d, 95)):.0f} ms")
  else:
    print(f"algorithmic delay: up to {(cfg.lookahead_frames + cfg.hop_frames) * frame_ms:g} ms (lookahead + hop) "
          "plus one step's compute")
  print(f"wrote {out} and {npz}")


def _pct(x, q):
  import numpy as np

  return np.percentile(x, q) if len(x) else float("nan")


def _model_config():
  """The checkpoint's model config, without loading its weights (a torch file: the config it
  recorded, else --config)."""
  from dualtalk_jax import checkpoint
  from dualtalk_jax.config import get_model_config
  from dualtalk_jax.convert import pytorch

  path = _CHECKPOINT.value
  if pytorch.is_torch_file(path):
    model = configs.torch_model_args(_CONFIG.value, _WAV2VEC2_CONFIG.value)
    return pytorch.recorded_config(path) or get_model_config(model["config"], model["wav2vec2_config"])
  return checkpoint.read_model_config(path)


if __name__ == "__main__":
  app.run(main, flags_parser=configs.parse_flags)
