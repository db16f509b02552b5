r"""Peak memory of windowed inference against input length (and of one whole-clip pass).

  python benchmarks/windowed_memory.py                          # tiny model, CPU: 1 and 10 min
  python benchmarks/windowed_memory.py --config=large --minutes=1,10 --whole_minutes=1   # on a GPU

Each measurement runs in a fresh process: build a random model of `--config`, synthesize
speech-like audio for both speakers and partner motion of the given length (in memory),
run `predict_windowed`, and report the process's peak RSS, the accelerator's peak bytes
in use where the backend reports them, the input arrays' own size, and the wall time.
With windows, peak memory minus the input arrays should not grow with the input length;
a whole-clip pass (`--window_seconds=0`, released behaviour) grows with it (attention is
quadratic in T), which is why it is only run for `--whole_minutes`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(args) -> dict:
  sys.path.insert(0, ROOT)
  import jax
  import numpy as np

  from dualtalk_jax import audio
  from dualtalk_jax.config import get_model_config
  from dualtalk_jax.eval import predict as P
  from dualtalk_jax.models.dualtalk import DualTalk, make_rngs

  model = DualTalk(get_model_config(args.config), rngs=make_rngs(0))
  model.eval()
  rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  n = int(args.seconds * audio.SAMPLE_RATE) + 500
  rng = np.random.default_rng(0)

  def track():
    env = np.repeat(rng.uniform(0.05, 1.0, n // 1600 + 1).astype(np.float32), 1600)[:n]
    x = rng.standard_normal(n, dtype=np.float32)
    x *= env
    return audio.normalize(x)

  clip = P.Clip(track(), track(), rng.standard_normal((audio.num_frames(n), 56), dtype=np.float32))
  inputs_mb = (clip.audio_self.nbytes + clip.audio_other.nbytes + clip.motion_other.nbytes) / 2**20
  t0 = time.time()
  pred = P.predict_windowed(model, clip, window_seconds=args.window_seconds, overlap_seconds=args.overlap_seconds,
                            batch_size=args.batch_size)
  wall = time.time() - t0
  stats = jax.devices()[0].memory_stats() or {}
  return {
      "config": args.config, "seconds": args.seconds, "window_seconds": args.window_seconds,
      "frames": int(pred.shape[0]),
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_model_mb": rss_model,
      "inputs_mb": inputs_mb, "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
      "wall_s": wall, "device": jax.devices()[0].device_kind,
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="tiny")
  ap.add_argument("--minutes", default="1,10", help="Input lengths for windowed inference.")
  ap.add_argument("--whole_minutes", default="1", help="Input lengths for one whole-clip pass ('' = none).")
  ap.add_argument("--window_seconds", type=float, default=20.0)
  ap.add_argument("--overlap_seconds", type=float, default=2.0)
  ap.add_argument("--batch_size", type=int, default=1)
  ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)  # child mode
  args = ap.parse_args()
  if args.seconds is not None:
    print(json.dumps(child(args)))
    return
  runs = [(float(m) * 60, args.window_seconds) for m in args.minutes.split(",") if m]
  runs += [(float(m) * 60, 0.0) for m in args.whole_minutes.split(",") if m]
  print(f"{'input':>8} {'mode':>12} {'frames':>7} {'peak RSS MB':>12} {'RSS-inputs':>11} {'after model':>12} "
        f"{'device peak MB':>15} {'wall s':>8}")
  for seconds, window in runs:
    cmd = [sys.executable, os.path.abspath(__file__), f"--config={args.config}", f"--seconds={seconds}",
           f"--window_seconds={window}", f"--overlap_seconds={args.overlap_seconds}", f"--batch_size={args.batch_size}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
      print(f"{seconds / 60:>6.1f} m  failed: {r.stderr.strip().splitlines()[-1:]}")
      continue
    d = json.loads(r.stdout.strip().splitlines()[-1])
    mode = f"window {window:g}s" if window else "whole clip"
    dev = f"{d['device_peak_mb']:.0f}" if d["device_peak_mb"] else "n/a"
    print(f"{seconds / 60:>6.1f} m {mode:>12} {d['frames']:>7} {d['peak_rss_mb']:>12.0f} "
          f"{d['peak_rss_mb'] - d['inputs_mb']:>11.0f} {d['rss_after_model_mb']:>12.0f} {dev:>15} {d['wall_s']:>8.1f}")
  print(f"({args.config} config, {d['device'] if runs else ''}; RSS-inputs = peak RSS minus the input arrays)")


if __name__ == "__main__":
  main()
