r"""Renders FLAME motion to a video with sound: both speakers side by side at 25 fps.

  python -m experiments.render --flame_model=generic_model.pkl --motion=pred.npy \
      --motion_other=partner.npz --audio=a.wav --audio_other=b.wav --output=video.mp4 [--size=512]

`--motion` / `--motion_other`: a (T, 56) prediction `.npy` or a FLAME `.npz` (exp, pose;
its `shape` is used as the face's identity). The video has len(--motion) frames; the
audio goes in as one AAC stream (stereo with two voices: left = --audio, right =
--audio_other). Headless: OpenGL through EGL (Mesa's llvmpipe on a CPU host, the GPU
where its driver is installed). See docs/faces.md.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

_FLAME_MODEL = flags.DEFINE_string("flame_model", None, "FLAME 2020 generic_model.pkl (your own copy; not shipped).", required=True)
_MOTION = flags.DEFINE_string("motion", None, "Left face: (T, 56) .npy prediction or FLAME .npz.", required=True)
_MOTION_OTHER = flags.DEFINE_string("motion_other", None, "Right face (the partner): .npy or .npz.")
_AUDIO = flags.DEFINE_string("audio", None, "Voice of the left face (any rate; resampled to 16 kHz).")
_AUDIO_OTHER = flags.DEFINE_string("audio_other", None, "Voice of the right face.")
_OUTPUT = flags.DEFINE_string("output", None, "Video to write (.mp4).", required=True)
_SIZE = flags.DEFINE_integer("size", 512, "Height and width of each face's panel, in pixels (even).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dualtalk_jax import runtime

  runtime.configure()
  from dualtalk_jax import files
  from dualtalk_jax.face import render

  start = time.time()
  try:
    # every path first: nothing slow happens before they are known to be usable
    for path, what in ((_FLAME_MODEL.value, "FLAME model (--flame_model)"), (_MOTION.value, "motion (--motion)"),
                       (_MOTION_OTHER.value, "partner motion (--motion_other)"), (_AUDIO.value, "audio (--audio)"),
                       (_AUDIO_OTHER.value, "partner audio (--audio_other)")):
      if path:
        files.require_file(path, what)
    files.prepare_output(_OUTPUT.value, "--output", (".mp4", ".mov", ".mkv"))
    r = render.render_files(_OUTPUT.value, _FLAME_MODEL.value, _MOTION.value, audio=_AUDIO.value,
                            motion_other=_MOTION_OTHER.value, audio_other=_AUDIO_OTHER.value, size=_SIZE.value)
  except (OSError, ValueError, ImportError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {os.path.abspath(r['output'])}: {r['frames']} frames ({r['seconds']:.2f} s) at 25 fps, "
        f"{r['width']}x{r['height']}, {r['audio_channels']} audio channel(s), rendered by {r['renderer']} "
        f"at {r['frames_per_s']:.1f} frames/s ({time.time() - start:.1f} s in all)")


if __name__ == "__main__":
  app.run(main)
