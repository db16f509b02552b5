"""Jitted JAX kernels for the DualTalk evaluation metrics (released `metric/metric.py`).

Each metric follows /work/shared/spec/metrics.md, quirks included, and runs on CPU, GPU and
TPU (no host-only linear algebra). A whole split is scored in a few jitted calls: clips are
padded to a bucketed length `Tmax` and carry their true `lengths`; every kernel masks the
padding, and random draws do not depend on the padding, so a padded file scores like the
same file alone (up to float rounding).

Public API: `evaluate_files` (lists of variable-length arrays), `evaluate_roles` (the
same over the speaking / listening frames of each file), `evaluate_arrays` (padded
batches), `pad_batch`, `cut_to_common`, `score_batch` (the jitted kernel),
the single-file kernels (`frechet_distance`, `mse`, `sid`, `kmeans_fit`, `sts`, `rpcc`,
`variance`, `diversity_from_pairs`, `diversity_pairs`) and `diversity_pair_indices`.

Groups: `exp` = cols 0:50, `jaw` = 50:53, `pose` = 53:56 of the (T, 56) layout (`audio.MOTION_GROUPS`;
the released metrics name the neck group "pose", and so do the keys here).

Choices where the released code gives no answer (documented here, tested in
tests/metrics_test.py):

- Speaking / listening (`evaluate_roles`, keys `<key>_speaking`, `<key>_listening`; roles
  from the voice activity of both tracks, `dualtalk_jax.eval.activity`). Each file's
  selected frames are concatenated in time order (pred, gt and partner alike) and scored
  as one shorter file with the same kernels: FD, P-FD, SID, diversity and variance are
  statistics of that frame set; MSE and rPCC pool its frames; STS differences consecutive
  selected frames, so a jump at a cut between two runs counts like any other frame step
  (it appears in pred and gt alike). A file with fewer than `MIN_ROLE_FRAMES` (1 s)
  selected frames has no value for that role (NaN per file) and the mean is over the
  files that have one.
- Diversity. The released code draws two index lists of 100 frames, each without replacement
  from range(T) and independently of each other (`np.random.choice(T, 100, replace=False)`
  twice), and averages the 100 distances ||x[first[i]] - x[second[i]]||. It asserts T > 100.
  We keep that reading and, for T <= 100, use min(100, T) = T pairs: each list is then a random
  permutation of all T frames (still without replacement). Lists are drawn per file, group
  and side (pred / gt) from `seed`; `diversity_pairs` returns the exact indices used, and
  `diversity_from_pairs` scores given pairs.
- SID k-means mirrors sklearn `KMeans(n_clusters=k, random_state=0, n_init='auto')` (one
  k-means++ run, Lloyd, max_iter=300, tol=1e-4 * mean per-dim variance, stop on unchanged
  labels or total squared centre shift <= tol, empty clusters relocated to the points farthest
  from their centres, data centred first): greedy k-means++ with 2 + int(ln k) local trials
  and D^2 sampling. The random stream differs from numpy's, so SID agrees with sklearn's in
  distribution, not bit for bit. The same k-means key is used for every file, as sklearn uses
  random_state=0 for every file. When a clip has fewer frames than k (sklearn raises), k is
  clamped to T (every prediction frame becomes a centre).
- FD needs tr(sqrtm(S1 S2)). With A, B the centred (T, d) data, S1 S2 = A'A B'B / (T-1)^2,
  whose eigenvalues are the squared singular values of Ra Rb' for any Ra, Rb with
  Ra'Ra = A'A, Rb'Rb = B'B. We take Ra = diag(sqrt(l)) V' from eigh(A'A) (tiny negative
  eigenvalues clamped to 0), so tr(sqrtm(S1 S2)) = ||Ra Rb'||_* / (T-1): symmetric eigh and
  a d x d SVD only, valid for rank-deficient covariances (T <= d). Against scipy's sqrtm in
  float64 it agrees to ~1e-6 relative, T = 30 included. (Batched QR of the tall (T, d) data
  would avoid forming A'A but is very slow in XLA on CPU.)
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dualtalk_jax import audio

# (key name, first column, end column, k for SID) per motion group: the released keys call neck "pose".
SID_K = {"exp": 40, "jaw": 10, "neck": 10}
GROUPS = tuple(("pose" if g == "neck" else g, s.start, s.stop, SID_K[g]) for g, s in audio.MOTION_GROUPS.items())
NUM_DIVERSITY_PAIRS = 100
STS_TIMESTEP = 0.1
ROLES = ("speaking", "listening")
MIN_ROLE_FRAMES = 25
KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4
# Files are padded to a multiple of this many frames (`audio.bucket_frames`, the bucketing of
# prediction too): 100-1000-frame clips compile for four shapes.
BUCKET_FRAMES = 250
METRIC_KEYS = tuple(
    f"{m}_{g}" for m in ("fid", "p_fid", "mse", "sid", "sts", "diversity_pre",
                         "diversity_gt", "variance_pre", "variance_gt", "rpcc")
    for g, *_ in GROUPS)


# ----------------------------------------------------------------------------- helpers

def _mask(tmax, n):
  return (jnp.arange(tmax) < n).astype(jnp.float32)


def _centred(x, w, n):
  """Masked mean over frames and the centred data with padded rows zeroed."""
  mu = jnp.sum(x * w[:, None], 0) / n
  return mu, (x - mu) * w[:, None]


# ----------------------------------------------------------------------------- per-file kernels
# Single-file kernels take a padded (Tmax, d) array and the true length n (traced scalar);
# they are vmapped over files.

def _gram_root(a):
  """R with R'R = a'a, from the symmetric eigendecomposition of the d x d Gram matrix."""
  lam, v = jnp.linalg.eigh(a.T @ a)
  return jnp.sqrt(jnp.maximum(lam, 0.0))[:, None] * v.T


def frechet_distance(x, y, n):
  """FD between the frame distributions of x and y (np.cov, ddof 1), first n frames."""
  w = _mask(x.shape[0], n)
  nf = n.astype(jnp.float32)
  mu1, a = _centred(x, w, nf)
  mu2, b = _centred(y, w, nf)
  ra, rb = _gram_root(a), _gram_root(b)
  nuclear = jnp.sum(jnp.linalg.svd(ra @ rb.T, compute_uv=False))
  diff = mu1 - mu2
  return diff @ diff + (jnp.sum(a * a) + jnp.sum(b * b) - 2.0 * nuclear) / (nf - 1.0)


def mse(x, y, n):
  w = _mask(x.shape[0], n)
  return jnp.sum(((x - y) ** 2) * w[:, None]) / (n * x.shape[1])


def sts(x, y, n):
  """sqrt(sum over dims and t >= 1 of ((x_t - x_{t-1}) - (y_t - y_{t-1}))^2 / 0.1)."""
  w = _mask(x.shape[0], n)[1:]
  d = jnp.diff(x, axis=0) - jnp.diff(y, axis=0)
  return jnp.sqrt(jnp.sum(d * d * w[:, None]) / STS_TIMESTEP)


def variance(x, n):
  """Mean over dims of the per-dim variance over frames (ddof 0)."""
  w = _mask(x.shape[0], n)
  _, a = _centred(x, w, n.astype(jnp.float32))
  return jnp.mean(jnp.sum(a * a, 0) / n)


def pearson(x, y, n):
  """Pearson correlation of the flattened first n frames of x and y (np.corrcoef)."""
  w = _mask(x.shape[0], n)[:, None]
  cnt = n * x.shape[1]
  xc = (x - jnp.sum(x * w) / cnt) * w
  yc = (y - jnp.sum(y * w) / cnt) * w
  return jnp.sum(xc * yc) / jnp.sqrt(jnp.sum(xc * xc) * jnp.sum(yc * yc))


def rpcc(pred, gt, other, n):
  return jnp.abs(pearson(gt, other, n) - pearson(pred, other, n))


def diversity_pairs(key, n, tmax, num_pairs=NUM_DIVERSITY_PAIRS):
  """Two index lists drawn without replacement from range(n), and which pairs count.

  Returns (first, second, valid) of shape (P,), P = min(num_pairs, tmax); min(num_pairs, n)
  pairs are valid. Each list is the prefix of a random permutation of range(n) (one uniform
  per frame, from fold_in(key, t), so the draw does not depend on the padding tmax).
  """
  p = min(num_pairs, tmax)
  t = jnp.arange(tmax)

  def draw(k):
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k, i)))(t)
    return jnp.argsort(jnp.where(t < n, u, 2.0))[:p]

  valid = jnp.arange(p) < jnp.minimum(num_pairs, n)
  return draw(jax.random.fold_in(key, 0)), draw(jax.random.fold_in(key, 1)), valid


def diversity_from_pairs(x, first, second, valid=None):
  """Mean L2 distance between frames x[first[i]] and x[second[i]] over valid pairs."""
  d = jnp.linalg.norm(x[first] - x[second], axis=-1)
  if valid is None:
    return jnp.mean(d)
  valid = valid.astype(d.dtype)
  return jnp.sum(d * valid) / jnp.sum(valid)


def _sqdist(x, xsq, c):
  """Squared distances (T, k) between rows of x and rows of c via the expansion, clamped."""
  return jnp.maximum(xsq[:, None] - 2.0 * x @ c.T + jnp.sum(c * c, -1)[None], 0.0)


def _kmeans_pp(xc, w, n, k, k_eff, key):
  """Greedy k-means++ (sklearn `_kmeans_plusplus`) with sample weights w in {0, 1}."""
  trials = 2 + int(math.log(k))
  last = n - 1

  def pick(cdf, u):
    return jnp.clip(jnp.searchsorted(cdf, u, side="right", method="compare_all"), 0, last)

  xsq = jnp.sum(xc * xc, -1)
  cdf = jnp.cumsum(w)
  i0 = pick(cdf, jax.random.uniform(jax.random.fold_in(key, 0)) * cdf[-1])
  d2 = _sqdist(xc, xsq, xc[i0][None])[:, 0] * w
  centres = jnp.zeros((k, xc.shape[1]), xc.dtype).at[0].set(xc[i0])

  def body(c, carry):
    centres, d2, pot = carry
    u = jax.random.uniform(jax.random.fold_in(key, c), (trials,)) * pot
    cand = pick(jnp.cumsum(d2), u)
    # sklearn also uses the expansion |x|^2 - 2 x.c + |c|^2 here (a matmul, not T*trials*d diffs)
    dc = _sqdist(xc, xsq, xc[cand]).T * w[None]
    dc = jnp.minimum(d2[None], dc)
    pots = jnp.sum(dc, -1)
    b = jnp.argmin(pots)
    on = c < k_eff
    centres = centres.at[c].set(jnp.where(on, xc[cand[b]], centres[c]))
    return centres, jnp.where(on, dc[b], d2), jnp.where(on, pots[b], pot)

  centres, _, _ = jax.lax.fori_loop(1, k, body, (centres, d2, jnp.sum(d2)))
  return centres


def kmeans_fit(x, n, k, key, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL):
  """k-means on the first n rows of x like sklearn KMeans(n_init=1 k-means++, Lloyd).

  Returns (centres (k, d), active (k,) bool): clusters >= min(k, n) are inactive.
  """
  tmax, _ = x.shape
  w = _mask(tmax, n)
  nf = n.astype(jnp.float32)
  mu, xc = _centred(x, w, nf)
  tol_abs = jnp.mean(jnp.sum(xc * xc, 0) / nf) * tol
  xsq = jnp.sum(xc * xc, -1)
  k_eff = jnp.minimum(k, n)
  active = jnp.arange(k) < k_eff
  valid = w > 0
  m = min(k, tmax)

  def e_step(c):
    d = jnp.where(active[None], _sqdist(xc, xsq, c), jnp.inf)
    return jnp.argmin(d, -1)

  def m_step(labels, c_old):
    counts = jax.ops.segment_sum(w, labels, k)  # cheaper than a (T, k) one-hot matmul on CPU
    sums = jax.ops.segment_sum(xc * w[:, None], labels, k)
    # sklearn `_relocate_empty_clusters_dense`: each empty cluster takes one of the points
    # farthest from their centre, which leaves its old cluster.
    empty = (counts == 0) & active
    far_d = jnp.where(valid, jnp.sum((xc - c_old[labels]) ** 2, -1), -jnp.inf)
    _, far = jax.lax.top_k(far_d, m)
    rank = jnp.cumsum(empty) - 1
    move = empty & (rank < jnp.minimum(m, n))
    p = far[jnp.clip(rank, 0, m - 1)]
    xp = jnp.where(move[:, None], xc[p], 0.0)
    donor = labels[p]
    sums = sums - jnp.zeros_like(sums).at[donor].add(xp)
    counts = counts - jnp.zeros_like(counts).at[donor].add(move.astype(counts.dtype))
    sums = jnp.where(move[:, None], xp, sums)
    counts = jnp.where(move, 1.0, counts)
    return jnp.where((counts > 0)[:, None], sums / jnp.maximum(counts, 1.0)[:, None], c_old)

  def cond(s):
    it, _, _, done = s
    return (~done) & (it < max_iter)

  def body(s):
    it, c, labels_old, _ = s
    labels = e_step(c)
    c_new = m_step(labels, c)
    strict = jnp.all((labels == labels_old) | ~valid)
    shift = jnp.sum(jnp.where(active[:, None], (c_new - c) ** 2, 0.0))
    return it + 1, c_new, labels, strict | (shift <= tol_abs)

  c0 = _kmeans_pp(xc, w, n, k, k_eff, key)
  labels0 = jnp.full((tmax,), -1, jnp.int32)
  _, c, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), c0, labels0, jnp.bool_(False)))
  return c + mu, active


def sid(pred, gt, n, k, key):
  """Entropy in bits of the gt histogram over k-means clusters fitted on pred."""
  c, active = kmeans_fit(pred, n, k, key)
  w = _mask(gt.shape[0], n)
  mu = jnp.sum(pred * w[:, None], 0) / n  # distances in pred-centred coordinates
  g = gt - mu
  d = jnp.where(active[None], _sqdist(g, jnp.sum(g * g, -1), c - mu), jnp.inf)
  labels = jnp.argmin(d, -1)
  counts = jnp.sum((labels[:, None] == jnp.arange(k)[None]) * w[:, None], 0)
  p = counts / n
  return -jnp.sum(p * jnp.log2(p + 1e-6))


# ----------------------------------------------------------------------------- batched scoring

def _keys(seed, file_id):
  """(k-means key shared by all files, diversity key of this file)."""
  root = jax.random.PRNGKey(seed)
  return jax.random.fold_in(root, 0), jax.random.fold_in(jax.random.fold_in(root, 1), file_id)


def _div_key(file_key, group, side):
  return jax.random.fold_in(jax.random.fold_in(file_key, group), side)


def _score_group(p, y, o, n, gi, k, km_key, file_key):
  """All metrics of one group of one file (names without the group suffix)."""
  tmax = p.shape[0]
  out = {
      "fid": frechet_distance(p, y, n),
      "p_fid": frechet_distance(jnp.concatenate([o, y], -1), jnp.concatenate([o, p], -1), n),
      "mse": mse(p, y, n),
      "sid": sid(p, y, n, k, km_key),
      "sts": sts(p, y, n),
      "rpcc": rpcc(p, y, o, n),
  }
  for side, (name, x) in enumerate((("pre", p), ("gt", y))):
    first, second, valid = diversity_pairs(_div_key(file_key, gi, side), n, tmax)
    out[f"diversity_{name}"] = diversity_from_pairs(x, first, second, valid)
    out[f"variance_{name}"] = variance(x, n)
  return out


def _score_file(pred, gt, other, n, file_id, seed):
  km_key, file_key = _keys(seed, file_id)
  (g0, lo, hi, k0), (g1, lo1, hi1, k1), (g2, lo2, hi2, _) = GROUPS
  out = {f"{m}_{g0}": v for m, v in _score_group(
      pred[:, lo:hi], gt[:, lo:hi], other[:, lo:hi], n, 0, k0, km_key, file_key).items()}
  # jaw and pose have the same shapes and k: one vmapped trace serves both (halves compile).
  stack = lambda a: jnp.stack([a[:, lo1:hi1], a[:, lo2:hi2]])
  two = jax.vmap(functools.partial(_score_group, k=k1, km_key=km_key, file_key=file_key),
                 in_axes=(0, 0, 0, None, 0))(stack(pred), stack(gt), stack(other), n,
                                             jnp.array([1, 2]))
  for m, v in two.items():
    out[f"{m}_{g1}"], out[f"{m}_{g2}"] = v[0], v[1]
  return out


@jax.jit
def score_batch(preds, gts, others, lengths, file_ids, seed):
  """Per-file metrics (dict of (F,) arrays) for padded (F, Tmax, 56) inputs."""
  f = jax.vmap(_score_file, in_axes=(0, 0, 0, 0, 0, None))
  return f(preds.astype(jnp.float32), gts.astype(jnp.float32), others.astype(jnp.float32),
           lengths.astype(jnp.int32), file_ids.astype(jnp.int32), jnp.asarray(seed, jnp.int32))


@functools.partial(jax.jit, static_argnames=("tmax",))
def _batch_pairs(lengths, file_ids, seed, tmax):
  def one(n, fid):
    _, fk = _keys(seed, fid)
    return jnp.stack([jnp.stack([jnp.stack(diversity_pairs(_div_key(fk, gi, s), n, tmax)[:2])
                                 for s in range(2)]) for gi in range(len(GROUPS))])
  return jax.vmap(one)(lengths, file_ids)


def diversity_pair_indices(lengths, tmax, *, seed=0, file_ids=None):
  """The index pairs `evaluate_arrays` uses: (F, group, side (pre, gt), list, P) and valid (F, P)."""
  lengths = np.asarray(lengths, np.int32)
  file_ids = np.arange(len(lengths)) if file_ids is None else np.asarray(file_ids)
  idx = np.asarray(_batch_pairs(jnp.asarray(lengths), jnp.asarray(file_ids, jnp.int32),
                                jnp.int32(seed), tmax))
  p = idx.shape[-1]
  valid = np.arange(p)[None] < np.minimum(NUM_DIVERSITY_PAIRS, lengths)[:, None]
  return idx, valid


# ----------------------------------------------------------------------------- host-side API

def pad_batch(arrays: Sequence[np.ndarray], tmax=None, multiple=BUCKET_FRAMES):
  """Stack variable-length (T_i, D) arrays into zero-padded (F, Tmax, D) float32 and lengths.

  Tmax defaults to `audio.bucket_frames(longest, multiple)`.
  """
  lengths = np.array([len(a) for a in arrays], np.int32)
  tmax = audio.bucket_frames(lengths.max(), multiple) if tmax is None else tmax
  out = np.zeros((len(arrays), tmax, arrays[0].shape[1]), np.float32)
  for i, a in enumerate(arrays):
    out[i, :len(a)] = a
  return out, lengths


def cut_to_common(pred, gt, other):
  """Cut a (pred, gt, other) triple to their common minimum length (spec)."""
  t = min(len(pred), len(gt), len(other))
  return pred[:t], gt[:t], other[:t]


def single_threaded_blas():
  """Context that limits BLAS/LAPACK to one thread (threadpoolctl), a no-op without it.

  On CPU, XLA calls LAPACK (eigh, svd) through scipy's OpenBLAS from its own worker threads.
  With OpenBLAS's default thread pool on top, a (64, 100, 100) batched eigh took 8 s instead
  of 0.05 s on a 2-core host with another process busy (thread oversubscription).
  """
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(limits=1, user_api="blas")


def _summarise(per_file):
  return {"per_file": per_file, "mean": {k: float(np.mean(v)) for k, v in per_file.items()}}


def evaluate_arrays(preds, gts, others, lengths, *, seed=0, file_ids=None, batch_size=16):
  """Score padded (F, Tmax, 56) pred / gt / other with true `lengths` (F,).

  Returns {"per_file": {key: (F,) array}, "mean": {key: float}} under the released JSON keys
  (`mean` is what `metric.py` writes). Files are scored in chunks of `batch_size` (the last
  chunk padded), so one compile serves any number of files of one Tmax. The default of 16 suits
  CPU: each chunk's k-means runs until its slowest file converges, so on CPU smaller chunks
  waste fewer Lloyd iterations (500 files on 2 cores: about 9-10 s at 16 vs 12 s at 64). `file_ids` (default
  0..F-1) seed each file's diversity draw, so a file scores the same in any batch.
  """
  preds, gts, others = (np.asarray(a, np.float32) for a in (preds, gts, others))
  lengths = np.asarray(lengths, np.int32)
  f = len(lengths)
  file_ids = np.arange(f, dtype=np.int32) if file_ids is None else np.asarray(file_ids, np.int32)
  bs = min(batch_size, f)
  pad = -f % bs
  if pad:  # repeat the first file to fill the last chunk; the results are dropped
    rep = lambda a: np.concatenate([a, np.repeat(a[:1], pad, 0)])
    preds, gts, others, lengths, file_ids = map(rep, (preds, gts, others, lengths, file_ids))
  with single_threaded_blas():
    chunks = [score_batch(preds[i:i + bs], gts[i:i + bs], others[i:i + bs], lengths[i:i + bs],
                          file_ids[i:i + bs], seed) for i in range(0, len(lengths), bs)]
    per_file = {k: np.concatenate([np.asarray(c[k]) for c in chunks])[:f].astype(np.float64)
                for k in METRIC_KEYS}
  return _summarise(per_file)


def evaluate_files(preds, gts, others, *, seed=0, multiple=BUCKET_FRAMES, batch_size=16):
  """Score lists of variable-length (T, 56) arrays: cut each triple to its common length,
  group files by `audio.bucket_frames`, run `evaluate_arrays` per bucket, keep the input order."""
  triples = [cut_to_common(np.asarray(p), np.asarray(g), np.asarray(o))
             for p, g, o in zip(preds, gts, others)]
  lens = np.array([len(t[0]) for t in triples])
  buckets = np.array([audio.bucket_frames(n, multiple) for n in lens])
  per_file = {k: np.zeros(len(triples)) for k in METRIC_KEYS}
  for b in np.unique(buckets):
    ids = np.nonzero(buckets == b)[0]
    p, n = pad_batch([triples[i][0] for i in ids], tmax=int(b))
    g, _ = pad_batch([triples[i][1] for i in ids], tmax=int(b))
    o, _ = pad_batch([triples[i][2] for i in ids], tmax=int(b))
    res = evaluate_arrays(p, g, o, n, seed=seed, file_ids=ids, batch_size=batch_size)
    for k in METRIC_KEYS:
      per_file[k][ids] = res["per_file"][k]
  return _summarise(per_file)


def role_keys() -> tuple[str, ...]:
  """`<key>_speaking` and `<key>_listening` for every released key."""
  return tuple(f"{k}_{r}" for r in ROLES for k in METRIC_KEYS)


def evaluate_roles(preds, gts, others, masks, *, seed=0, min_frames=MIN_ROLE_FRAMES):
  """Metrics over the frames of each file that a mask selects (module docstring).

  `masks`: {role: [per-file (T_i,) bool]}, aligned with the files' first frames. Returns
  {"per_file": {"<key>_<role>": (F,) array, NaN where a file has < min_frames selected},
  "mean": {...: mean over the files with a value (NaN if none)}}.
  """
  triples = [cut_to_common(np.asarray(p), np.asarray(g), np.asarray(o)) for p, g, o in zip(preds, gts, others)]
  subsets, where = [], []  # every role's subsets scored in one call: shared compiles
  for role, role_masks in masks.items():
    for i, ((p, g, o), m) in enumerate(zip(triples, role_masks)):
      sel = np.flatnonzero(np.asarray(m, bool)[:len(p)])
      if len(sel) >= max(min_frames, 2):
        subsets.append((p[sel], g[sel], o[sel]))
        where.append((role, i))
  per_file = {f"{k}_{role}": np.full(len(triples), np.nan) for role in masks for k in METRIC_KEYS}
  if subsets:
    res = evaluate_files(*zip(*subsets), seed=seed)["per_file"]
    for j, (role, i) in enumerate(where):
      for k in METRIC_KEYS:
        per_file[f"{k}_{role}"][i] = res[k][j]
  mean = {k: float(np.nanmean(v)) if np.any(~np.isnan(v)) else float("nan") for k, v in per_file.items()}
  return {"per_file": per_file, "mean": mean}
