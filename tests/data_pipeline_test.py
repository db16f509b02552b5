"""Grain pipeline: window formula, exact content, shuffling, resume, process shards, eval."""

import json

import numpy as np
import pytest

from dualtalk_jax import audio
from dualtalk_jax.data import pipeline, preprocess, records, synthetic

W = 50
B = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = tmp_path_factory.mktemp("pipe")
  synthetic.synthesize(str(d / "raw"), 7, seed=5, min_seconds=1.5, max_seconds=7.0)
  synthetic.write_clip(str(d / "raw"), "short",
                       synthetic.make_clip(5, 99, min_seconds=1.0, max_seconds=1.5))
  m = preprocess.preprocess(str(d / "raw"), str(d / "out"), num_shards=3, window_frames=W)
  src = records.open_records(str(d / "out"), m)
  clips = {c["record_index"]: records.decode_clip(src[c["record_index"]]) for c in m["clips"]}
  return str(d / "out"), m, clips


def _train(out, **kw):
  args = dict(window_frames=W, batch_size=B, seed=1, num_epochs=1, process_index=0,
              process_count=1, clips_per_block=3)
  args.update(kw)
  return pipeline.make_train_dataset(out, **args)


def _keys(batches):
  return [(int(c), int(w), int(t)) for b in batches
          for c, w, t in zip(b["clip_id"], b["window"], b["target"])]


def test_window_formula_and_exact_content(data):
  out, m, clips = data
  want = {(c["record_index"], w, t) for c in m["clips"]
          for w in range(min(c["frames"], min(c["audio_samples"]) // 640) // W) for t in (1, 2)}
  assert any(c["frames"] < W for c in m["clips"])  # A short clip is in the data, skipped.
  batches = list(_train(out))
  assert len(batches) == len(want) // B  # drop_remainder
  keys = _keys(batches)
  assert len(keys) == len(set(keys)) and set(keys) <= want and len(want) - len(keys) < B
  assert pipeline.samples_per_epoch(out, window_frames=W, process_index=0,
                                    process_count=1) == len(want)
  b = batches[0]
  assert b["audio_self"].shape == (B, W * 640) and b["audio_self"].dtype == np.float32
  assert b["motion_self"].shape == (B, W, 56) and b["motion_other"].shape == (B, W, 56)
  for k in ("audio_self_lengths", "audio_other_lengths"):
    assert b[k].dtype == np.int32 and np.all(b[k] == W * 640)
  assert np.all(b["motion_other_lengths"] == W) and np.all(b["num_frames"] == W)
  for i, (cid, w, t) in enumerate(_keys([b])):
    s, o = (1, 2) if t == 1 else (2, 1)
    c = clips[cid]
    span = slice(w * W * 640, (w + 1) * W * 640)
    np.testing.assert_array_equal(b["audio_self"][i], c[f"audio_{s}"][span])
    np.testing.assert_array_equal(b["audio_other"][i], c[f"audio_{o}"][span])
    np.testing.assert_array_equal(b["motion_self"][i], c[f"motion_{s}"][w * W:(w + 1) * W])
    np.testing.assert_array_equal(b["motion_other"][i], c[f"motion_{o}"][w * W:(w + 1) * W])


def test_shuffle_is_seeded(data):
  out = data[0]
  a, a2 = _keys(_train(out, seed=1)), _keys(_train(out, seed=1))
  b = _keys(_train(out, seed=2))
  seq = _keys(_train(out, shuffle=False))
  assert a == a2 and a != b and sorted(a) != a
  # Unshuffled: manifest order, clip by clip, window by window, speaker 1 then 2.
  m = data[1]
  ordered = [(c["record_index"], w, t) for c in m["clips"]
             for w in range(records.window_count(c["frames"], c["audio_samples"], W))
             for t in (1, 2)]
  assert seq == ordered[:len(ordered) // B * B]
  # Epochs are reshuffled.
  two = _keys(_train(out, num_epochs=2))
  n = len(two) // 2
  assert sorted(two[:n]) != two[:n] and two[:n] != two[n:]


@pytest.mark.parametrize("workers,threads", [(0, 0), (0, 2), (2, 0)])
def test_restored_iterator_continues_exactly(data, workers, threads):
  out = data[0]
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain's multiprocessing reads absl flags.
    flags.FLAGS.mark_as_parsed()
  ds = _train(out, num_epochs=None, worker_count=workers, thread_count=threads)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(9)]  # Crosses block and epoch boundaries.
  it2 = iter(_train(out, num_epochs=None, worker_count=workers, thread_count=threads))
  it2.set_state(json.loads(json.dumps(state)))  # Goes through JSON, as in a checkpoint.
  got = [next(it2) for _ in range(9)]
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for k in g:
      np.testing.assert_array_equal(g[k], w[k])
  if workers:
    it.close()
    it2.close()


def test_process_shards_disjoint_and_cover(data):
  out, m, _ = data
  whole = set(_keys(_train(out, batch_size=1)))
  parts = [set(_keys(_train(out, batch_size=1, process_index=p, process_count=2)))
           for p in range(2)]
  assert parts[0] and parts[1] and not parts[0] & parts[1]
  assert parts[0] | parts[1] == whole
  assert {k[0] for k in parts[0]}.isdisjoint({k[0] for k in parts[1]})  # By clip.
  with pytest.raises(ValueError, match="process_index 2"):
    _train(out, process_index=2, process_count=2)


def test_eval_whole_clips_fixed_order(data):
  out, m, clips = data
  ds = pipeline.make_eval_dataset(out, batch_size=3, bucket_frames=64, process_index=0,
                                  process_count=1)
  batches = list(ds)
  assert [len(b["valid"]) for b in batches] == [3] * len(batches)
  rows = [(int(c), int(t)) for b in batches for c, t, v in
          zip(b["clip_id"], b["target"], b["valid"]) if v]
  assert rows == [(c["record_index"], t) for c in m["clips"] for t in (1, 2)]
  assert sum(int(b["valid"].sum()) for b in batches) == 2 * len(m["clips"])
  for b in batches:
    t_pad = b["motion_self"].shape[1]
    assert t_pad % 64 == 0 and b["audio_self"].shape[1] == t_pad * 640
    for i in range(3):
      if not b["valid"][i]:
        assert b["num_frames"][i] == 0 and not b["audio_self"][i].any()
        continue
      c = clips[int(b["clip_id"][i])]
      s, o = (1, 2) if b["target"][i] == 1 else (2, 1)
      n, t = int(b["audio_self_lengths"][i]), int(b["motion_self_lengths"][i])
      assert t == c["frames"] and n == c[f"audio_{s}"].size and b["num_frames"][i] == audio.num_frames(n)
      np.testing.assert_array_equal(b["audio_self"][i, :n], c[f"audio_{s}"])
      assert not b["audio_self"][i, n:].any()
      np.testing.assert_array_equal(b["motion_self"][i, :t], c[f"motion_{s}"])
      np.testing.assert_array_equal(b["motion_other"][i, :t], c[f"motion_{o}"])
      assert b["audio_other_lengths"][i] == c[f"audio_{o}"].size
  # Two processes: same number of batches, disjoint rows covering everything.
  per = [list(pipeline.make_eval_dataset(out, batch_size=3, process_index=p, process_count=2))
         for p in range(2)]
  assert len(per[0]) == len(per[1])
  got = [(int(c), int(t)) for bs in per for b in bs
         for c, t, v in zip(b["clip_id"], b["target"], b["valid"]) if v]
  assert sorted(got) == sorted(rows) and len(got) == len(set(got))


def test_balance():
  parts = pipeline.balance([5, 1, 1, 1, 4, 2], 2)
  assert sorted(sum(parts, [])) == list(range(6))
  loads = [sum([5, 1, 1, 1, 4, 2][i] for i in p) for p in parts]
  assert loads == [7, 7]
