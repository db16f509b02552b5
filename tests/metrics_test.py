"""The JAX metric kernels against the numpy/scipy/sklearn reference (`eval/reference.py`)."""
import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualtalk_jax import audio
from dualtalk_jax.eval import metrics as M
from dualtalk_jax.eval import reference as R

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
LENGTHS = (30, 90, 120)  # 30 < 40 clusters and < 50 exp dims; 90 < 100 diversity pairs
TMAX = 128
EXACT = [k for k in M.METRIC_KEYS if not k.startswith(("sid", "diversity"))]


def _triples(lengths, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for t in lengths:
    gt, other = R.smooth_motion(rng, t), R.smooth_motion(rng, t + 2)
    pred = np.concatenate([0.6 * gt, gt[-1:]]) + 0.8 * R.smooth_motion(rng, t + 1)
    out.append(M.cut_to_common(pred, gt, other))
  return out


@pytest.fixture(scope="module")
def scored():
  """File-by-file (each padded to its own bucket) and batched (all padded to TMAX) scores."""
  triples = _triples(LENGTHS)
  single = []
  for i, (p, g, o) in enumerate(triples):
    arrs = [M.pad_batch([a])[0] for a in (p, g, o)]
    single.append(M.evaluate_arrays(*arrs, [len(p)], seed=0, file_ids=[i]))
  batch = [M.pad_batch([t[j] for t in triples], tmax=TMAX)[0] for j in range(3)]
  batched = M.evaluate_arrays(*batch, list(LENGTHS), seed=0)
  return triples, single, batched


def test_deterministic_metrics_match_reference(scored):
  triples, single, _ = scored
  for (p, g, o), res in zip(triples, single):
    ref = R.evaluate_file(p, g, o)
    for k in EXACT:
      np.testing.assert_allclose(res["per_file"][k][0], ref[k], rtol=1e-3, err_msg=k)


def test_diversity_exact_given_pairs(scored):
  triples, _, batched = scored
  idx, valid = M.diversity_pair_indices(LENGTHS, TMAX, seed=0)
  for i, (p, g, o) in enumerate(triples):
    assert valid[i].sum() == min(100, LENGTHS[i])
    pairs = [[tuple(idx[i, gi, s, l][valid[i]] for l in range(2)) for s in range(2)]
             for gi in range(3)]
    for gi in range(3):  # without replacement within each list
      for s in range(2):
        for l in range(2):
          assert len(set(pairs[gi][s][l])) == len(pairs[gi][s][l])
          assert pairs[gi][s][l].max() < LENGTHS[i]
    ref = R.evaluate_file(p, g, o, pairs=pairs)
    for k in M.METRIC_KEYS:
      if k.startswith("diversity"):
        np.testing.assert_allclose(batched["per_file"][k][i], ref[k], rtol=1e-5, err_msg=k)


def test_batched_equals_file_by_file(scored):
  _, single, batched = scored
  for k in M.METRIC_KEYS:
    per = np.array([s["per_file"][k][0] for s in single])
    np.testing.assert_allclose(batched["per_file"][k], per, rtol=1e-4, atol=1e-5, err_msg=k)
    assert np.isfinite(per).all(), k
    np.testing.assert_allclose(batched["mean"][k], per.mean(), rtol=1e-4, atol=1e-5)
  assert set(batched["mean"]) == set(M.METRIC_KEYS) and len(M.METRIC_KEYS) == 30


@functools.lru_cache(maxsize=None)
def _sid_fn(k):
  return jax.jit(jax.vmap(lambda p, g, n, key: M.sid(p, g, n, k, key), in_axes=(0, 0, 0, None)))


def _compare_sid(preds, gts, k, tol=0.1):
  """Mean SID over files: ours vs sklearn's (k-means inits differ, so compare means)."""
  p, n = M.pad_batch(preds)
  g, _ = M.pad_batch(gts, tmax=p.shape[1])
  ours = np.asarray(_sid_fn(k)(p, g, n, jax.random.PRNGKey(0)))
  ref = np.array([R.sid(a.astype(np.float64), b.astype(np.float64), k)
                  for a, b in zip(preds, gts)])
  assert np.all((ours >= 0) & (ours <= np.log2(k) + 1e-3))
  assert abs(ours.mean() - ref.mean()) < tol, (ours, ref)


def test_sid_synthetic_clusters():
  rng = np.random.default_rng(1)
  preds, gts = [], []
  for t in (150, 200, 230, 180, 250, 160, 210, 240):
    centres = rng.normal(size=(6, 3)) * 3
    draw = lambda m: centres[rng.integers(0, 6, m)] + 0.3 * rng.normal(size=(m, 3))
    preds.append(draw(t).astype(np.float32)), gts.append(draw(t).astype(np.float32))
  _compare_sid(preds, gts, 10)


def test_sid_smooth_exp():
  rng = np.random.default_rng(2)
  lens = (150, 200, 230, 180, 250, 160, 210, 240)
  gts = [R.smooth_motion(rng, t)[:, :50] for t in lens]
  preds = [0.6 * g + 0.8 * R.smooth_motion(rng, len(g))[:, :50] for g in gts]
  _compare_sid(preds, gts, 40)


def test_sid_real_demo_motion():
  files = sorted(glob.glob(os.path.join(SHARED, "samples", "dualtalk_demo", "*.npz")))
  if not files:
    pytest.skip("no ../shared/samples/dualtalk_demo")
  d = np.load(files[0])
  real = np.concatenate([d["exp"], d["pose"][:, 3:6], d["pose"][:, 0:3]], 1).astype(np.float32)
  rng = np.random.default_rng(3)
  windows = [real[s:s + 250] for s in (0, 110, 220, 330)]
  preds = [w + 0.5 * R.smooth_motion(rng, len(w)) * w.std(0) for w in windows]
  _compare_sid([p[:, :50] for p in preds], [w[:, :50] for w in windows], 40)
  _compare_sid([p[:, 50:53] for p in preds], [w[:, 50:53] for w in windows], 10)


def test_short_clip_and_helpers():
  assert [audio.bucket_frames(n, 25) for n in (0, 1, 25, 26, 1000)] == [25, 25, 25, 50, 1000]
  p, n = M.pad_batch([np.ones((5, 56)), np.ones((3, 56))])
  assert p.shape == (2, M.BUCKET_FRAMES, 56) and list(n) == [5, 3] and p[1, 3:].sum() == 0
  a, b, c = M.cut_to_common(np.zeros((10, 56)), np.zeros((8, 56)), np.zeros((9, 56)))
  assert len(a) == len(b) == len(c) == 8
  # diversity on a clip shorter than 100 frames: all frames paired once per list
  first, second, valid = M.diversity_pairs(jax.random.PRNGKey(0), jnp.int32(30), 32)
  assert int(valid.sum()) == 30
  assert sorted(np.asarray(first)[:30]) == list(range(30))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 3)), jnp.float32)
  np.testing.assert_allclose(
      M.diversity_from_pairs(x, first, second, valid),
      R.diversity_from_pairs(np.asarray(x, np.float64), np.asarray(first)[:30],
                             np.asarray(second)[:30]), rtol=1e-5)
