"""Benchmark: the JAX metric kernels vs the numpy/scipy/sklearn reference on synthetic files.

Scores `--num_files` synthetic (pred, gt, other) triples of 100-1000 frames (56 dims, smooth
FLAME-like motion, lengths differing by a few frames so the common-length cut is exercised)
with `metrics.evaluate_files` and with `reference.evaluate_files` in the same run. Prints the
JAX compile time apart (cold run minus warm run), the end-to-end times and ratios, and the
largest relative difference of the deterministic metrics' means.

The reference is timed twice: as it runs by default, and with BLAS and OpenMP limited to one
thread (threadpoolctl). On a small CPU host the default is several times slower (sklearn's
OpenMP Lloyd loop and OpenBLAS oversubscribe the cores), so the one-thread figure is the fair
baseline; both ratios are printed.

  python benchmarks/metrics.py --num_files 500
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dualtalk_jax.eval import metrics, reference  # noqa: E402


def make_files(num_files, seed, min_len=100, max_len=1000):
  rng = np.random.default_rng(seed)
  preds, gts, others = [], [], []
  for _ in range(num_files):
    t = int(rng.integers(min_len, max_len + 1))
    gt, other = reference.smooth_motion(rng, t), reference.smooth_motion(rng, t + 1)
    pred = (0.6 * gt + 0.8 * reference.smooth_motion(rng, t))[:t - int(rng.integers(0, 3))]
    preds.append(pred), gts.append(gt), others.append(other)
  return preds, gts, others


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--num_files", type=int, default=500)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--batch_size", type=int, default=16)
  ap.add_argument("--multiple", type=int, default=metrics.BUCKET_FRAMES,
                  help="bucket lengths to multiples of this (default: metrics.BUCKET_FRAMES)")
  ap.add_argument("--skip_reference", action="store_true")
  args = ap.parse_args()
  import jax
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.num_files} files")
  files = make_files(args.num_files, args.seed)
  kw = dict(seed=args.seed, multiple=args.multiple, batch_size=args.batch_size)

  t0 = time.perf_counter()
  metrics.evaluate_files(*files, **kw)
  cold = time.perf_counter() - t0
  t0 = time.perf_counter()
  ours = metrics.evaluate_files(*files, **kw)
  warm = time.perf_counter() - t0
  print(f"jax: cold (with compile) {cold:.2f} s, warm end to end {warm:.2f} s, "
        f"compile ~{cold - warm:.2f} s")
  if args.skip_reference:
    return
  from threadpoolctl import threadpool_limits
  t0 = time.perf_counter()
  ref = reference.evaluate_files(*files, seed=args.seed)
  tref = time.perf_counter() - t0
  with threadpool_limits(limits=1):  # BLAS and OpenMP (sklearn's Lloyd) single-threaded
    t0 = time.perf_counter()
    reference.evaluate_files(*files, seed=args.seed)
    tref1 = time.perf_counter() - t0
  print(f"numpy/scipy/sklearn reference: {tref:.2f} s with default threads, "
        f"{tref1:.2f} s with BLAS and OpenMP limited to one thread")
  for name, t in (("default threads", tref), ("one thread", tref1)):
    print(f"speed-up vs reference ({name}): {t / warm:.1f}x warm end to end, "
          f"{t / cold:.1f}x including compile")
  exact = [k for k in metrics.METRIC_KEYS if not k.startswith(("sid", "diversity"))]
  rel = max(abs(ours["mean"][k] - ref["mean"][k]) / abs(ref["mean"][k]) for k in exact)
  sid = max(abs(ours["mean"][k] - ref["mean"][k]) for k in metrics.METRIC_KEYS
            if k.startswith("sid"))
  print(f"max rel diff of deterministic means {rel:.2e}; max |SID mean diff| {sid:.3f} bits")
  for k in metrics.METRIC_KEYS:
    print(f"  {k:20s} jax {ours['mean'][k]:12.5f}  ref {ref['mean'][k]:12.5f}")


if __name__ == "__main__":
  main()
