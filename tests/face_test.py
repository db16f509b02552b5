"""FLAME loading and forward, rendering, ARKit solve and vertex metrics (dualtalk_jax.face).

Everything runs on a FLAME-format stand-in built here (`face.synthetic`: FLAME 2020's
array shapes, random bases), pickled as FLAME ships it, and in a chumpy-pickled variant
written through a fake `chumpy` module that is gone before loading.
"""

import importlib.util
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

from dualtalk_jax import params as params_lib
from dualtalk_jax.face import flame, safe_pickle, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def arrays():
  return synthetic.fake_flame_arrays(seed=0)


@pytest.fixture(scope="module")
def model_path(arrays, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("flame") / "generic_model.pkl")
  synthetic.write_pickle(path, arrays)
  return path


@pytest.fixture(scope="module")
def model(model_path):
  return flame.load_model(model_path)


def _chumpy_pickle(arrays) -> bytes:
  """Pickles `arrays` with `shapedirs` as a chumpy Ch and `J` as a chumpy Select, through a
  fake chumpy package that is removed again, as FLAME's Python 2 file holds them."""
  chumpy, ch, reordering = (types.ModuleType(n) for n in ("chumpy", "chumpy.ch", "chumpy.reordering"))

  class Ch:
    def __init__(self, x):
      self.x, self.dterms, self._dirty_vars = x, ("x",), {"x"}

    def __getstate__(self):
      return dict(self.__dict__)

  class Select(Ch):
    def __init__(self, a, idxs, preferred_shape):
      self.a, self.idxs, self.preferred_shape, self.dterms = a, idxs, preferred_shape, ("a",)

  for cls, mod in ((Ch, ch), (Select, reordering)):
    cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
    setattr(mod, cls.__name__, cls)
  saved = {n: sys.modules.get(n) for n in ("chumpy", "chumpy.ch", "chumpy.reordering")}
  sys.modules.update({"chumpy": chumpy, "chumpy.ch": ch, "chumpy.reordering": reordering})
  try:
    d = dict(arrays)
    d["shapedirs"] = Ch(arrays["shapedirs"])
    joints = arrays["J_regressor"] @ arrays["v_template"]
    d["J"] = Select(Ch(joints), np.arange(15), (5, 3))
    import scipy.sparse as sp
    d["J_regressor"] = sp.csc_matrix(arrays["J_regressor"])
    return pickle.dumps(d, protocol=2)
  finally:
    for n, m in saved.items():
      if m is None:
        sys.modules.pop(n, None)
      else:
        sys.modules[n] = m


# ----------------------------------------------------------------------------- numpy reference

def _rodrigues_np(r):
  t = np.linalg.norm(r)
  if t < 1e-12:
    return np.eye(3)
  k = r / t
  K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
  return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


def _flame_np(a, shape, expr, pose):
  """Plain float64 FLAME LBS for one frame; pose (5, 3) = global, neck, jaw, eyes."""
  dirs = a["shapedirs"]
  betas = np.zeros(dirs.shape[2])
  betas[:len(shape)] = shape
  betas[300:300 + len(expr)] = expr
  v = a["v_template"] + dirs @ betas
  J = a["J_regressor"] @ v
  R = [_rodrigues_np(p) for p in pose]
  feat = np.concatenate([(R[k] - np.eye(3)).ravel() for k in range(1, 5)])
  v = v + a["posedirs"] @ feat
  parents = [-1, 0, 1, 1, 1]
  G = []
  for k in range(5):
    T = np.eye(4)
    T[:3, :3] = R[k]
    T[:3, 3] = J[k] - (J[parents[k]] if k else 0)
    G.append(T if k == 0 else G[parents[k]] @ T)
  A = []
  for k in range(5):
    M = G[k].copy()
    M[:3, 3] -= G[k][:3, :3] @ J[k]
    A.append(M)
  A = np.stack(A)
  T = np.einsum("vk,kab->vab", a["weights"], A)
  return np.einsum("vab,vb->va", T[:, :3, :3], v) + T[:, :3, 3]


# ----------------------------------------------------------------------------- FLAME

def test_forward_matches_numpy_lbs(arrays, model):
  rng = np.random.default_rng(1)
  B = 3
  shape = rng.normal(0, 1, (B, 100)).astype(np.float32)
  expr = rng.normal(0, 1, (B, 50)).astype(np.float32)
  pose = rng.normal(0, 0.3, (B, 5, 3)).astype(np.float32)
  import jax.numpy as jnp
  out = np.asarray(flame.vertices(flame.to_device(model), jnp.asarray(expr), shape=jnp.asarray(shape),
                                  global_rot=jnp.asarray(pose[:, 0]), neck=jnp.asarray(pose[:, 1]),
                                  jaw=jnp.asarray(pose[:, 2]), eyes=jnp.asarray(pose[:, 3:].reshape(B, 6))))
  assert out.shape == (B, synthetic.NUM_VERTICES, 3)
  for b in range(B):
    ref = _flame_np(arrays, shape[b].astype(np.float64), expr[b].astype(np.float64), pose[b].astype(np.float64))
    np.testing.assert_allclose(out[b], ref, atol=1e-5, rtol=0)
  # Zero pose and coefficients give the template.
  zero = np.asarray(flame.vertices(flame.to_device(model), jnp.zeros((1, 50))))
  np.testing.assert_allclose(zero[0], arrays["v_template"], atol=1e-6)


def test_chumpy_pickle_loads_without_chumpy(arrays, model, tmp_path):
  data = _chumpy_pickle(arrays)
  assert b"chumpy.ch" in data and "chumpy" not in sys.modules and importlib.util.find_spec("chumpy") is None
  path = tmp_path / "chumpy_model.pkl"
  path.write_bytes(data)
  loaded = safe_pickle.load(path)
  np.testing.assert_array_equal(loaded["shapedirs"], arrays["shapedirs"])
  np.testing.assert_allclose(loaded["J"], arrays["J_regressor"] @ arrays["v_template"])
  np.testing.assert_array_equal(loaded["J_regressor"], arrays["J_regressor"])
  m = flame.load_model(path)
  for field in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_template", "j_shapedirs", "j_exprdirs", "weights", "faces"):
    np.testing.assert_array_equal(getattr(m, field), getattr(model, field))
  assert "chumpy" not in sys.modules


def test_unevaluable_chumpy_expression_is_an_error_only_where_used(arrays, tmp_path, monkeypatch):
  ch_ops = types.ModuleType("chumpy.ch_ops")

  class add:  # a chumpy expression: no stored array
    def __init__(self, a, b):
      self.a, self.b = a, b

  add.__module__, add.__qualname__ = "chumpy.ch_ops", "add"
  ch_ops.add = add
  monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
  monkeypatch.setitem(sys.modules, "chumpy.ch_ops", ch_ops)
  unused = pickle.dumps({**arrays, "J": add(np.zeros(3), np.ones(3))}, protocol=2)
  used = pickle.dumps({**arrays, "weights": add(np.zeros(3), np.ones(3))}, protocol=2)
  monkeypatch.delitem(sys.modules, "chumpy")
  monkeypatch.delitem(sys.modules, "chumpy.ch_ops")
  (tmp_path / "unused.pkl").write_bytes(unused)
  (tmp_path / "used.pkl").write_bytes(used)
  assert flame.load_model(tmp_path / "unused.pkl").num_vertices == synthetic.NUM_VERTICES
  with pytest.raises(flame.FlameModelError, match=r"used\.pkl: 'weights' is a chumpy expression"):
    flame.load_model(tmp_path / "used.pkl")


class _Evil:
  def __init__(self, cmd):
    self.cmd = cmd

  def __reduce__(self):
    return (os.system, (self.cmd,))


@pytest.mark.parametrize("kind", ["os.system", "eval", "numpy_function", "chumpy_wrapped"])
def test_malicious_pickle_is_refused_without_running_code(kind, tmp_path):
  marker = tmp_path / "pwned"
  cmd = f"touch {marker}"
  if kind == "os.system":
    payload = {"v_template": _Evil(cmd)}
  elif kind == "eval":
    class E:
      def __reduce__(self):
        return (eval, (f"open({str(marker)!r}, 'w').close()",))
    payload = {"f": E()}
  elif kind == "numpy_function":
    class N:
      def __reduce__(self):
        return (np.savetxt, (str(marker), np.zeros(2)))
    payload = [N()]
  else:  # a chumpy-looking object whose state hides a reduce
    payload = {"shapedirs": {"x": _Evil(cmd)}}
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=2))
  with pytest.raises(safe_pickle.UnsafePickleError, match=r"evil\.pkl.*(refused|not allowed)"):
    flame.load_model(path)
  assert not marker.exists()


def test_bad_model_files_name_the_problem(arrays, tmp_path):
  d = dict(arrays)
  d["posedirs"] = d["posedirs"][:, :, :30]
  p = tmp_path / "bad.pkl"
  synthetic.write_pickle(str(p), d)
  with pytest.raises(flame.FlameModelError, match=r"bad\.pkl.*'posedirs' has shape"):
    flame.load_model(p)
  (tmp_path / "trunc.pkl").write_bytes(pickle.dumps({"a": np.zeros(3)}, protocol=2)[:20])
  with pytest.raises(safe_pickle.UnsafePickleError, match=r"trunc\.pkl: not a readable pickle"):
    flame.load_model(tmp_path / "trunc.pkl")
  with pytest.raises(FileNotFoundError, match="missing.pkl"):
    flame.load_model(tmp_path / "missing.pkl")


# ----------------------------------------------------------------------------- rendering

def _write_wav(path, seconds, freq):
  import soundfile as sf
  t = np.arange(int(seconds * 16000)) / 16000
  sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000, subtype="FLOAT")


def test_render_cli_video_has_t_frames_at_25fps_and_audio_as_long(model_path, tmp_path):
  import av
  T = 12
  rng = np.random.default_rng(0)
  motion = rng.normal(0, 0.2, (T, 56)).astype(np.float32)
  np.save(tmp_path / "pred.npy", motion)
  np.savez(tmp_path / "partner.npz", exp=rng.normal(0, 0.2, (T + 1, 50)).astype(np.float32),
           pose=rng.normal(0, 0.05, (T + 1, 6)).astype(np.float32), shape=rng.normal(0, 1, (T + 1, 100)).astype(np.float32))
  _write_wav(tmp_path / "a.wav", T / 25, 220)
  _write_wav(tmp_path / "b.wav", T / 25 - 0.01, 330)
  out = tmp_path / "video.mp4"
  r = subprocess.run([sys.executable, "-m", "experiments.render", f"--flame_model={model_path}",
                      f"--motion={tmp_path / 'pred.npy'}", f"--motion_other={tmp_path / 'partner.npz'}",
                      f"--audio={tmp_path / 'a.wav'}", f"--audio_other={tmp_path / 'b.wav'}",
                      f"--output={out}", "--size=64"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "render: 12/12 frame" in r.stderr and "\r" not in r.stderr  # not a tty: log lines, no bar
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
  with av.open(str(out)) as c:
    v, a = c.streams.video[0], c.streams.audio[0]
    assert (v.width, v.height) == (128, 64) and v.average_rate == 25
    frames = list(c.decode(video=0))
    assert len(frames) == T
    assert a.channels == 2 and len(c.streams.audio) == 1
    assert abs(float(a.duration * a.time_base) - T / 25) < 0.07
  # Bad input: an error naming the file, and no output left behind.
  from dualtalk_jax.face import render
  bad = tmp_path / "bad.npy"
  np.save(bad, np.zeros((T, 55), np.float32))
  with pytest.raises(ValueError, match=r"bad\.npy.*\(T, 56\)"):
    render.render_files(str(tmp_path / "bad.mp4"), model_path, str(bad), size=64)
  assert not (tmp_path / "bad.mp4").exists()


def test_jaw_open_frames_differ_in_the_mouth_region(model):
  from dualtalk_jax.face import render
  size = 96
  motion = np.zeros((2, 56), np.float32)
  motion[1, 50] = 0.35  # jaw open (rotation about x)
  params = flame.params_from_motion(motion)
  (verts, normals), = flame.sequence_vertices(flame.to_device(model), params, chunk=2, with_normals=True)
  r = render.Renderer(np.asarray(model.faces), model.num_vertices, size, 1)
  try:
    mvp = render.camera_for(verts.min((0, 1)), verts.max((0, 1)))
    r.set_camera(0, mvp)
    closed = r.render([(verts[0], normals[0])]).astype(np.float32)
    opened = r.render([(verts[1], normals[1])]).astype(np.float32)
  finally:
    r.release()
  # Pixel boxes of the jaw region and of the top of the head, from the camera.
  clip = np.c_[verts[0], np.ones(len(verts[0]))] @ mvp.T
  px = (clip[:, :2] / clip[:, 3:] * 0.5 + 0.5) * size
  rows, cols = (size - 1 - px[:, 1]).astype(int), px[:, 0].astype(int)
  jaw = model.weights[:, 2] > 0.5
  top = model.v_template[:, 1] > 0.07
  diff = np.abs(opened - closed).sum(-1)
  def box_mean(sel):
    return diff[rows[sel].min():rows[sel].max() + 1, cols[sel].min():cols[sel].max() + 1].mean()
  assert box_mean(jaw) > 5.0
  assert box_mean(jaw) > 4 * box_mean(top)  # measured ~10x; the soft jaw weights move a little more


# ----------------------------------------------------------------------------- ARKit

def test_to_arkit_cli_recovers_known_weights_in_live_link_layout(tmp_path):
  from scipy.spatial.transform import Rotation
  from dualtalk_jax.face import arkit
  rng = np.random.default_rng(3)
  T, K = 40, 51
  M = rng.normal(0, 1, (K, 103)).astype(np.float32)  # EMAGE/BEAT2 layout: exp 100 + jaw 3
  w = rng.uniform(0, 1, (T, K))
  w[rng.uniform(size=w.shape) < 0.3] = 0.0
  w[rng.uniform(size=w.shape) < 0.1] = 1.0
  flame_params = w @ M
  angles = rng.uniform(-0.3, 0.3, (T, 3))  # yaw, pitch, roll
  neck = Rotation.from_euler("YXZ", angles).as_rotvec()  # R = Ry(yaw) Rx(pitch) Rz(roll)
  motion = np.concatenate([flame_params[:, :50], flame_params[:, 100:103], neck], 1).astype(np.float32)
  np.save(tmp_path / "pred.npy", motion)
  np.save(tmp_path / "mapping.npy", M)
  out = tmp_path / "pred_arkit.csv"
  r = subprocess.run([sys.executable, "-m", "experiments.to_arkit", f"--motion={tmp_path / 'pred.npy'}",
                      f"--mapping={tmp_path / 'mapping.npy'}", f"--output={out}"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  header = out.read_text().splitlines()[0].split(",")
  assert header[:4] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft", "EyeLookDownLeft"]
  assert header[-10:] == ["TongueOut", "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch",
                          "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll"] and len(header) == 63
  codes, values = arkit.read_live_link_csv(str(out))
  assert codes[0] == "00:00:00:00.000" and codes[26] == "00:00:01:01.000"
  assert all(line.split(",")[1] == "61" for line in out.read_text().splitlines()[1:])
  got = values[:, [arkit.LIVE_LINK_FACE_BLENDSHAPES.index(n) for n in arkit.MAPPING_NAMES]]
  np.testing.assert_allclose(got, w, atol=1e-3)
  assert np.all(values[:, arkit.LIVE_LINK_FACE_BLENDSHAPES.index("TongueOut")] == 0)
  np.testing.assert_allclose(values[:, 52:55], angles, atol=1e-5)
  assert np.all(values[:, 55:] == 0)


def test_arkit_solver_terms_match_scipy_bounded_least_squares():
  import scipy.sparse as sp
  from scipy.optimize import lsq_linear
  from dualtalk_jax.face import arkit
  rng = np.random.default_rng(4)
  T, K = 12, 51
  M = rng.normal(0, 1, (K, 53))
  y = rng.uniform(0, 1, (T, K)) @ M + rng.normal(0, 0.5, (T, 53))  # noisy: bounds and terms are active
  mapping = arkit.Mapping(M.astype(np.float32), arkit.MAPPING_NAMES)
  l2, sym, smooth, jw = 0.1, 0.5, 1.0, 2.0
  est, info = arkit.solve(y, mapping, l2=l2, symmetry=sym, smooth=smooth, jaw_weight=jw)
  c = np.ones(53)
  c[-3:] = jw
  pairs = arkit.symmetric_pairs(mapping.names)
  assert ("MouthSmileLeft", "MouthSmileRight") in [(mapping.names[i], mapping.names[j]) for i, j in pairs]
  P = np.zeros((len(pairs), K))
  for r, (i, j) in enumerate(pairs):
    P[r, i], P[r, j] = 1, -1
  D = sp.diags([-np.ones(T - 1), np.ones(T - 1)], [0, 1], shape=(T - 1, T))
  A = sp.vstack([sp.kron(sp.eye(T), sp.csr_matrix((M * c).T)), np.sqrt(l2) * sp.eye(T * K),
                 np.sqrt(sym) * sp.kron(sp.eye(T), sp.csr_matrix(P)), np.sqrt(smooth) * sp.kron(D, sp.eye(K))]).tocsr()
  b = np.concatenate([(y * c).ravel(), np.zeros(A.shape[0] - T * 53)])
  ref = lsq_linear(A, b, bounds=(0, 1), tol=1e-12).x.reshape(T, K)
  assert 0 < (ref < 1e-6).mean() and info.iterations < 5000  # some bounds are active
  np.testing.assert_allclose(est, ref, atol=5e-4)


def test_arkit_mapping_validation_says_what_is_expected(tmp_path):
  from dualtalk_jax.face import arkit
  np.save(tmp_path / "t.npy", np.ones((103, 51), np.float32))
  with pytest.raises(arkit.MappingError, match=r"t\.npy: shape \(103, 51\) looks transposed.*\(51, 53\) or \(51, 103\)"):
    arkit.load_mapping(str(tmp_path / "t.npy"))
  np.save(tmp_path / "c.npy", np.ones((51, 60), np.float32))
  with pytest.raises(arkit.MappingError, match=r"c\.npy: 60 columns; expected"):
    arkit.load_mapping(str(tmp_path / "c.npy"))
  (tmp_path / "names.txt").write_text("jawOpen\nmouthSmile_L\nNotAShape\n")
  with pytest.raises(arkit.MappingError, match=r"names\.txt: 'NotAShape' is not an ARKit"):
    arkit.load_mapping(str(tmp_path / "c.npy"), str(tmp_path / "names.txt"))
  (tmp_path / "names.txt").write_text("jawOpen\nmouthSmile_L\n")
  np.save(tmp_path / "two.npy", np.ones((2, 53), np.float32))
  m = arkit.load_mapping(str(tmp_path / "two.npy"), str(tmp_path / "names.txt"))
  assert m.names == ("JawOpen", "MouthSmileLeft")
  np.save(tmp_path / "all52.npy", np.ones((52, 103), np.float32))  # with TongueOut: all of Live Link Face's
  m = arkit.load_mapping(str(tmp_path / "all52.npy"))
  assert m.names == arkit.LIVE_LINK_FACE_BLENDSHAPES and m.matrix.shape == (52, 53)


# ----------------------------------------------------------------------------- vertex metrics

@pytest.fixture(scope="module")
def masks(arrays):
  unit = arrays["v_template"] / synthetic.RADII
  return {"lips": np.flatnonzero(arrays["weights"][:, 2] > 0.5)[:120],
          "forehead": np.flatnonzero(unit[:, 1] > 0.6)[:150],
          "eye_region": np.flatnonzero((unit[:, 1] > 0.2) & (unit[:, 1] < 0.45) & (unit[:, 2] > 0.5)),
          "nose": np.arange(10)}


def _codetalker_reference(arrays, preds, gts, shapes, lips, upper):
  """FaceFormer / CodeTalker's LVE and FDD on meshes from the numpy FLAME (neck left out)."""
  def mesh(m, shape):
    return np.stack([_flame_np(arrays, shape, m[t, :50], np.stack([np.zeros(3), np.zeros(3), m[t, 50:53],
                                                                    np.zeros(3), np.zeros(3)])) for t in range(len(m))])
  cnt, lve_sum, fdd = 0, 0.0, []
  for p, g, s in zip(preds, gts, shapes):
    n = min(len(p), len(g))
    vp, vg = mesh(p[:n].astype(np.float64), s), mesh(g[:n].astype(np.float64), s)
    template = _flame_np(arrays, s, np.zeros(50), np.zeros((5, 3)))
    d = np.array([np.square(vg[:, v, :] - vp[:, v, :]) for v in lips]).transpose(1, 0, 2).sum(2)
    lve_sum += d.max(1).sum()
    cnt += n
    stds = []
    for verts in (vg, vp):
      u = np.array([np.square(verts[:, v, :] - template[v]) for v in upper]).transpose(1, 0, 2).sum(2)
      stds.append(np.mean(np.std(u, axis=0)))
    fdd.append(stds[0] - stds[1])
  return lve_sum / cnt, np.mean(fdd)


def test_lve_fdd_match_codetalker_numpy_reference(arrays, model, masks, tmp_path):
  from dualtalk_jax.face import vertex_metrics
  rng = np.random.default_rng(5)
  preds = [rng.normal(0, 0.5, (n, 56)).astype(np.float32) for n in (5, 8)]
  gts = [rng.normal(0, 0.5, (n, 56)).astype(np.float32) for n in (6, 8)]
  for m in preds + gts:
    m[:, 50:53] *= 0.3
  shapes = [rng.normal(0, 1, 100).astype(np.float32), None]
  with open(tmp_path / "FLAME_masks.pkl", "wb") as f:
    pickle.dump(masks, f, protocol=2)
  loaded = flame.load_masks(tmp_path / "FLAME_masks.pkl", model.num_vertices)
  scorer = vertex_metrics.VertexScorer(model, loaded)
  got = scorer.score(preds, gts, shapes)
  lips, upper = masks["lips"], np.unique(np.concatenate([masks["forehead"], masks["eye_region"]]))
  ref_lve, ref_fdd = _codetalker_reference(arrays, preds, gts, [s if s is not None else np.zeros(100) for s in shapes],
                                           lips, upper)
  assert ref_lve > 0 and abs(ref_fdd) > 0
  np.testing.assert_allclose(got["mean"]["lve"], ref_lve, rtol=1e-4)
  np.testing.assert_allclose(got["mean"]["fdd"], ref_fdd, rtol=1e-3, atol=1e-9)
  # Wired into the evaluator's result and files.
  from dualtalk_jax.eval import evaluate
  data, pred_dir = tmp_path / "data", tmp_path / "pred"
  data.mkdir(), pred_dir.mkdir()
  for i, (p, g, s) in enumerate(zip(preds, gts, shapes)):
    np.save(pred_dir / f"c{i}_speaker1.npy", p)
    np.savez(data / f"c{i}_speaker1.npz", exp=g[:, :50], pose=np.concatenate([g[:, 53:], g[:, 50:53]], 1),
             **({} if s is None else {"shape": np.tile(s, (len(g), 1))}))
  result = {"files": ["c0_speaker1", "c1_speaker1"], "frames": np.array([5, 8]), "mean": {}, "per_file": {}}
  from dualtalk_jax.eval import metrics
  for k in metrics.METRIC_KEYS:
    result["mean"][k], result["per_file"][k] = 0.0, np.zeros(2)
  model_path = tmp_path / "m.pkl"
  synthetic.write_pickle(str(model_path), arrays)
  vertex_metrics.add_to_result(result, str(pred_dir), str(data), str(model_path), str(tmp_path / "FLAME_masks.pkl"))
  out, csv_path = evaluate.write_results(str(tmp_path / "metrics.json"), result)
  saved = evaluate.read_results(out)
  np.testing.assert_allclose([saved["lve"], saved["fdd"]], [ref_lve, ref_fdd], rtol=1e-3)
  assert open(csv_path).readline().strip().endswith("lve,fdd")


def test_evaluate_cli_needs_both_flame_files(tmp_path):
  r = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--data_dir={tmp_path}", f"--pred_dir={tmp_path}",
                      f"--output={tmp_path / 'm.json'}", "--flame_model=x.pkl"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 1 and "--flame_model and --flame_masks go together" in r.stderr


# ----------------------------------------------------------------------------- shortcuts (slow)

DEMO = os.path.join(os.path.dirname(ROOT), "shared", "samples", "dualtalk_demo")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEMO), reason="../shared/samples/dualtalk_demo is absent")
def test_infer_render_shortcut_on_the_demo(model_path, tmp_path):
  import av
  from dualtalk_jax import audio, checkpoint
  from conftest import perturbed_model
  model = perturbed_model()
  ckpt = str(tmp_path / "tiny")
  checkpoint.save_params(ckpt, params_lib.of(model), model.config)
  clip = os.path.join(DEMO, "UbjUDM1MiGE_sub_video_72")
  r = subprocess.run([sys.executable, "-m", "experiments.infer", f"--checkpoint={ckpt}", f"--audio_self={clip}_speaker1.wav",
                      f"--audio_other={clip}_speaker2.wav", f"--motion_other={clip}_speaker2.npz",
                      f"--output={tmp_path / 'pred.npy'}", f"--render={tmp_path / 'pred.mp4'}",
                      f"--flame_model={model_path}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  t = len(np.load(tmp_path / "pred.npy"))
  assert t == audio.num_frames(len(audio.load_audio(f"{clip}_speaker1.wav")))
  with av.open(str(tmp_path / "pred.mp4")) as c:
    assert c.streams.video[0].frames == t and c.streams.audio[0].channels == 2


@pytest.mark.slow
def test_quickstart_renders_with_flame_model(model_path, tmp_path):
  import av
  from dualtalk_jax.train import quickstart as qs
  r = qs.run(str(tmp_path / "qs"), flame_model=model_path, total_steps=3, checkpoint_every=3, eval_every=3,
             progress_bar=False, **{"synthetic.num_train_clips": 3, "synthetic.num_val_clips": 2,
                                    "synthetic.min_seconds": 4.0, "synthetic.max_seconds": 5.0,
                                    "data.window_frames": 25, "data.thread_count": 0})
  with av.open(r["video"]) as c:
    assert c.streams.video[0].frames >= 100 and c.streams.audio[0].channels == 2
