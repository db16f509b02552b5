"""Plain numpy/scipy/sklearn reference for the evaluation metrics, in float64.

A transcription of the released `metric/metric.py` (spec: /work/shared/spec/metrics.md) used
as the oracle of tests/metrics_test.py and the baseline of benchmarks/metrics.py. Changes from
the released code, all result-preserving: STS is vectorised (the released double loop gives
the same sum), and the two choices of `dualtalk_jax.eval.metrics` for short clips: diversity
uses min(100, T) pairs and SID clamps k to T (the released code fails on both). scipy and
sklearn are imported lazily so importing the package does not need them.
"""
from __future__ import annotations

import numpy as np

# the released metric groups (key name, columns, SID k) and pair count, as the kernels use them
from dualtalk_jax.eval.metrics import GROUPS, NUM_DIVERSITY_PAIRS


def frechet_distance(x, y, eps=1e-6):
  """Released `calculate_frechet_distance` on np.mean / np.cov statistics of x and y."""
  from scipy import linalg
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
  covmean = linalg.sqrtm(s1.dot(s2))
  if not np.isfinite(covmean).all():
    off = np.eye(s1.shape[0]) * eps
    covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def sid(pred, gt, k):
  """k-means fitted on pred frames, gt frames assigned; entropy (bits) of the gt histogram."""
  from sklearn.cluster import KMeans
  km = KMeans(n_clusters=min(k, len(pred)), random_state=0, n_init="auto").fit(pred)
  hist = np.bincount(km.predict(gt), minlength=k) / len(gt)
  return float(-np.sum(hist * np.log2(hist + 1e-6)))


def sts(x, y, timestep=0.1):
  d = np.diff(x, axis=0) - np.diff(y, axis=0)
  return float(np.sqrt(np.sum(d * d / timestep)))


def diversity_from_pairs(x, first, second):
  return float(np.linalg.norm(x[first] - x[second], axis=1).mean())


def diversity(x, rng, num_pairs=NUM_DIVERSITY_PAIRS):
  """Released sampling (two lists drawn without replacement); min(num_pairs, T) pairs."""
  p = min(num_pairs, len(x))
  return diversity_from_pairs(x, rng.choice(len(x), p, replace=False),
                              rng.choice(len(x), p, replace=False))


def variance(x):
  return float(np.mean(np.var(x, axis=0)))


def rpcc(pred, gt, other):
  pcc = lambda a, b: np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1]
  return float(abs(pcc(gt, other) - pcc(pred, other)))


def evaluate_file(pred, gt, other, pairs=None, rng=None):
  """All metrics of one file. pairs[g][side] = (first, second) index lists (side 0 = pred,
  1 = gt) fixes the diversity draws; otherwise they are drawn from `rng`."""
  t = min(len(pred), len(gt), len(other))
  pred, gt, other = (np.asarray(a, np.float64)[:t] for a in (pred, gt, other))
  rng = np.random.default_rng(0) if rng is None else rng
  out = {}
  for gi, (g, lo, hi, k) in enumerate(GROUPS):
    p, y, o = pred[:, lo:hi], gt[:, lo:hi], other[:, lo:hi]
    out[f"fid_{g}"] = frechet_distance(p, y)
    out[f"p_fid_{g}"] = frechet_distance(np.concatenate([o, y], -1), np.concatenate([o, p], -1))
    out[f"mse_{g}"] = float(np.mean((p - y) ** 2))
    out[f"sid_{g}"] = sid(p, y, k)
    out[f"sts_{g}"] = sts(p, y)
    for side, (name, x) in enumerate((("pre", p), ("gt", y))):
      if pairs is None:
        out[f"diversity_{name}_{g}"] = diversity(x, rng)
      else:
        out[f"diversity_{name}_{g}"] = diversity_from_pairs(x, *pairs[gi][side])
      out[f"variance_{name}_{g}"] = variance(x)
    out[f"rpcc_{g}"] = rpcc(p, y, o)
  return out


def evaluate_files(preds, gts, others, seed=0):
  """Per-file values and plain means over files, like `metrics.evaluate_files`."""
  rng = np.random.default_rng(seed)
  rows = [evaluate_file(p, g, o, rng=rng) for p, g, o in zip(preds, gts, others)]
  per_file = {k: np.array([r[k] for r in rows]) for k in rows[0]}
  return {"per_file": per_file, "mean": {k: float(np.mean(v)) for k, v in per_file.items()}}


def smooth_motion(rng, t, dims=56, sigma=4.0):
  """Synthetic FLAME-like (t, 56) float32 motion: Gaussian-smoothed noise, exp dims of
  decreasing scale, small jaw / neck rotations (real clips look like this)."""
  from scipy.ndimage import gaussian_filter1d
  x = gaussian_filter1d(rng.normal(size=(t, dims)), sigma, axis=0)
  x *= np.sqrt(2 * np.sqrt(np.pi) * sigma)  # unit variance per dim
  scale = np.concatenate([np.linspace(1.5, 0.3, 50), [0.05] * 3, [0.1] * 3])[:dims]
  return (x * scale).astype(np.float32)
