"""Synthetic conversations: format, determinism, and structure a model can learn."""

import numpy as np
import soundfile as sf

from dualtalk_jax import audio
from dualtalk_jax.data import synthetic


def test_format_and_determinism(tmp_path):
  names = synthetic.synthesize(str(tmp_path / "a"), 2, seed=3, min_seconds=4, max_seconds=6)
  synthetic.synthesize(str(tmp_path / "b"), 2, seed=3, min_seconds=4, max_seconds=6)
  synthetic.synthesize(str(tmp_path / "c"), 2, seed=4, min_seconds=4, max_seconds=6)
  assert names == ["synth_00000", "synth_00001"]
  for n in names:
    for s in (1, 2):
      wav = tmp_path / "a" / f"{n}_speaker{s}.wav"
      info = sf.info(wav)
      assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "FLOAT"
      z = np.load(tmp_path / "a" / f"{n}_speaker{s}.npz")
      assert sorted(z.files) == ["cam", "exp", "light", "pose", "shape", "tex"]
      t = z["exp"].shape[0]
      assert z["exp"].shape == (t, 50) and z["pose"].shape == (t, 6)
      assert z["light"].shape == (t, 9, 3) and z["exp"].dtype == np.float32
      assert t * 640 <= info.frames < (t + 1) * 640  # T ~= samples / 640, as in the data.
      # samples, not bytes: libsndfile's PEAK chunk of a float WAV holds the write time
      same, other = (sf.read(tmp_path / d / wav.name, dtype="float32")[0] for d in ("b", "c"))
      np.testing.assert_array_equal(same, sf.read(wav, dtype="float32")[0])
      assert not np.array_equal(other[:len(same)], same[:len(other)])


def test_turns_like_dataset():
  ids = synthetic.make_identities(0, 8)
  turns = [len(synthetic.make_clip(0, i, identities=ids, min_seconds=3, max_seconds=4)["turns"])
           for i in range(40)]
  assert min(turns) >= 1 and max(turns) <= 6
  assert 2.0 <= np.mean(turns) <= 3.2


def _features(env_self, env_other):
  """Per-frame features a trivial model can see: own/partner envelopes with context."""
  cols = []
  for e in (env_self, env_other):
    for lag in (-2, -1, 0, 1, 2):
      cols.append(np.roll(e, lag))
    k = np.ones(25) / 25
    cols.append(np.convolve(e, k, mode="same"))
    cols.append(np.convolve(e > 0.05, k, mode="same"))
  return np.stack(cols + [np.ones_like(env_self)], axis=1)


def test_learnable_beats_mean_pose():
  ids = synthetic.make_identities(0, 8)
  xs, ys = [], []
  for i in range(12):
    c = synthetic.make_clip(0, i, identities=ids, min_seconds=6, max_seconds=8)
    env = [a.astype(np.float64) ** 2 for a in c["audio"]]
    for s in (0, 1):
      m = audio.motion_from_flame(c["npz"][s])
      t = m.shape[0]
      fe = [np.sqrt(e[:t * 640].reshape(t, 640).mean(1)) for e in env]
      xs.append(_features(fe[s], fe[1 - s]))
      # Identity style is a constant offset per sequence; compare against the
      # sequence's own mean pose, a stronger baseline than the global mean pose.
      ys.append(m - m.mean(0))
  x_tr, y_tr = np.concatenate(xs[:18]), np.concatenate(ys[:18])
  x_te, y_te = np.concatenate(xs[18:]), np.concatenate(ys[18:])
  w = np.linalg.lstsq(x_tr, y_tr, rcond=None)[0]
  pred = x_te @ w
  base = np.zeros_like(y_te)
  jaw_exp = np.r_[0:6, 50]  # Mouth expression components and jaw opening.
  mse = lambda p, cols: float(np.mean((p[:, cols] - y_te[:, cols]) ** 2))
  # Audio-driven parts: a linear read-out of the envelopes explains most of the variance.
  assert mse(pred, jaw_exp) < 0.3 * mse(base, jaw_exp)
  # Listening behaviour (partner-driven expression) is learnable too.
  listen = np.r_[6:50]
  assert mse(pred, listen) < 0.7 * mse(base, listen)


def test_cli(tmp_path):
  import subprocess
  import sys
  from conftest import ROOT
  r = subprocess.run([sys.executable, "-m", "experiments.synthesize", f"--output_dir={tmp_path}",
                      "--num_clips=2", "--seed=1", "--min_seconds=1", "--max_seconds=2"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      f"synth_0000{i}_speaker{s}.{e}" for i in (0, 1) for s in (1, 2) for e in ("wav", "npz"))
  clip = synthetic.make_clip(1, 1, min_seconds=1, max_seconds=2)
  np.testing.assert_array_equal(np.load(tmp_path / "synth_00001_speaker2.npz")["exp"],
                                clip["npz"][1]["exp"])


def test_listener_reacts_to_partner_speech_and_expression():
  """Nods follow the partner's phrase ends (speech); mirroring follows the partner's own
  expression events (motion only), MIRROR_LAG_S later, while listening."""
  ids = synthetic.make_identities(0, 8)
  lag = int(round(synthetic.MIRROR_LAG_S * 25))
  num = den = 0.0
  after, elsewhere = [], []
  for i in range(10):
    c = synthetic.make_clip(0, i, identities=ids, min_seconds=8, max_seconds=10)
    for s in (0, 1):
      exp = c["npz"][s]["exp"].astype(np.float64)
      t = exp.shape[0]
      own = c["expression_events"][s]
      partner = c["expression_events"][1 - s]
      # the listener's expression along EMOTE, minus its own events, is the mirrored partner's
      resid = exp @ synthetic.EMOTE / float(synthetic.EMOTE @ synthetic.EMOTE) - own
      resid -= np.median(resid)
      shifted = np.concatenate([np.zeros(lag), partner[:t - lag]])
      on = shifted > 0.3
      num += float(np.sum(resid[on] * shifted[on]))
      den += float(np.sum(shifted[on] ** 2))
      # nods: neck pitch moves more within 0.6 s after a partner phrase end than elsewhere
      pitch = np.abs(np.diff(c["npz"][s]["pose"][:, 0]))
      near = np.zeros(t - 1, bool)
      for te in c["phrase_ends"][1 - s]:
        near[int(te * 25):int(te * 25) + 15] = True
      after.append(pitch[near])
      elsewhere.append(pitch[~near])
  # regression slope of the residual on the lagged partner events: the mirror gain times the
  # (0..1) listening weight, clearly positive
  assert 0.2 < num / den <= synthetic.MIRROR_GAIN + 0.1
  assert np.mean(np.concatenate(after)) > 3 * np.mean(np.concatenate(elsewhere))


def test_the_conversation_mood_is_in_both_motions_only(monkeypatch):
  """The conversation's mood is in both speakers' motion (never in the audio), along EMOTE,
  from MOOD_SCALE up to (1 + MOOD_LISTEN_GAIN) times it while listening."""
  ids = synthetic.make_identities(0, 8)
  with_mood = [synthetic.make_clip(0, i, identities=ids, min_seconds=8, max_seconds=10) for i in range(6)]
  monkeypatch.setattr(synthetic, "mood", lambda seed, index: 0.0)
  without = [synthetic.make_clip(0, i, identities=ids, min_seconds=8, max_seconds=10) for i in range(6)]
  emote = synthetic.EMOTE / float(synthetic.EMOTE @ synthetic.EMOTE)
  listened = []
  assert len({c["mood"] for c in with_mood}) == 6 and all(abs(c["mood"]) <= synthetic.MOOD_SCALE for c in with_mood)
  for c, c0 in zip(with_mood, without):
    for s in (0, 1):
      np.testing.assert_array_equal(c["audio"][s], c0["audio"][s])
      np.testing.assert_array_equal(c["npz"][s]["pose"], c0["npz"][s]["pose"])
      diff = c["npz"][s]["exp"].astype(np.float64) - c0["npz"][s]["exp"]
      along = diff @ emote  # the mood's whole effect is along EMOTE
      np.testing.assert_allclose(np.outer(along, synthetic.EMOTE), diff, atol=1e-5)
      # the mood everywhere, and MOOD_LISTEN_GAIN more of it times the listening weight
      extra = (along / c["mood"] - 1) / synthetic.MOOD_LISTEN_GAIN
      np.testing.assert_allclose(extra, c["listening"][s], atol=1e-3)
      listened.append(c["listening"][s].max() > 0.9)
  assert sum(listened) >= 6  # the listening part is tested, not only the constant one


def test_nobody_listens_in_a_mutual_silence():
  """Some turns start after a mutual silence of GAP_S; in its middle neither speaker
  listens, while a silent target whose partner speaks does: listening is not silence."""
  ids = synthetic.make_identities(0, 8)
  gaps = 0
  listens_while_silent = []
  for i in range(10):
    c = synthetic.make_clip(0, i, identities=ids, min_seconds=8, max_seconds=14)
    t = len(c["listening"][0])
    rms = [np.sqrt((a[:t * 640].astype(np.float64) ** 2).reshape(t, 640).mean(1)) for a in c["audio"]]
    silent = (rms[0] < 0.01) & (rms[1] < 0.01)  # background noise is 0.003
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(int), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):
      if a > 0 and b < t and b - a >= int(synthetic.GAP_S[0] * 25) - 5:  # a gap inside the clip
        gaps += 1
        mid = slice(a + 15, b - 15)  # the listening weight is smoothed over about 1 s
        for s in (0, 1):
          assert c["listening"][s][mid].max() < 0.1
    for s in (0, 1):
      partner_only = (rms[1 - s] > 0.05) & (rms[s] < 0.01)
      listens_while_silent.append(c["listening"][s][partner_only])
  assert gaps >= 5
  assert np.median(np.concatenate(listens_while_silent)) > 0.9

