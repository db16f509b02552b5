"""FLAME 2020 in JAX: safe loading of `generic_model.pkl` and a batched, jitted forward.

FLAME (Li et al. 2017) is a linear blend-skinned head: 5023 vertices, 9976 triangles,
5 joints (root/global, neck, jaw, left eye, right eye). The forward is the one of the
reference implementations (FLAME_PyTorch, smplx `lbs`):

    v_shaped = v_template + shapedirs @ [shape(300), expression(100)]
    J        = J_regressor @ v_shaped
    R_k      = rodrigues(pose_k)                      k = global, neck, jaw, eye L, eye R
    v_posed  = v_shaped + posedirs @ flatten(R_1..4 - I)     (pose correctives)
    v        = sum_k weights[:, k] * G_k(R, J) @ v_posed     (linear blend skinning)

DualTalk's 56-d motion gives the first 50 of the 100 expression coefficients (the rest
stay zero), the jaw and the head rotation that DualTalk calls "neck" (`params_from_motion`);
eyes are zero. The dataset's FLAME npz files are DECA/EMOCA codes (`shape` 100, `exp` 50,
`pose` 6, `tex`, `cam`, `light`), whose 6-d pose is [global rotation, jaw]: DECA's FLAME
puts `pose[:, :3]` on the root joint and keeps FLAME's neck joint at zero. Meshes are built
the same way: the whole head and neck turn rigidly about the root joint. The model file is read with `safe_pickle` (no chumpy, no code
runs); `.npz` files with the same keys are accepted too.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dualtalk_jax import audio
from dualtalk_jax.face import safe_pickle

NUM_SHAPE = 300
NUM_JOINTS = 5
POSE_NAMES = ("global", "neck", "jaw", "eye_left", "eye_right")


class FlameModelError(ValueError):
  """A FLAME model file that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class FlameModel:
  """FLAME arrays (float32 unless noted); a JAX pytree, so it can be passed to jitted code."""

  v_template: Any   # (V, 3)
  shapedirs: Any    # (V, 3, 300) identity basis
  exprdirs: Any     # (V, 3, E) expression basis, E = 100 in FLAME 2020
  posedirs: Any     # ((J-1)*9, V*3) pose correctives
  j_template: Any   # (J, 3) = J_regressor @ v_template: joints regressed from the bases
  j_shapedirs: Any  # (J, 3, 300)   (so that `restrict` can keep a vertex subset only)
  j_exprdirs: Any   # (J, 3, E)
  weights: Any      # (V, J) skinning weights
  faces: Any        # (F, 3) int32 (empty for a `restrict`ed model)
  parents: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

  @property
  def num_vertices(self) -> int:
    return self.v_template.shape[0]

  @property
  def num_expression(self) -> int:
    return self.exprdirs.shape[-1]


jax.tree_util.register_dataclass(
    FlameModel, data_fields=["v_template", "shapedirs", "exprdirs", "posedirs", "j_template", "j_shapedirs", "j_exprdirs",
                            "weights", "faces"],
    meta_fields=["parents"])


def _get(d: Mapping[str, Any], key: str, path: str) -> np.ndarray:
  if key not in d:
    raise FlameModelError(f"{path}: not a FLAME model: key {key!r} missing (has {sorted(d)})")
  if isinstance(d[key], safe_pickle.Unresolved):
    raise FlameModelError(f"{path}: {key!r} is {d[key].reason}")
  a = np.asarray(d[key])
  if a.dtype.hasobject or a.dtype.kind not in "fiub":
    raise FlameModelError(f"{path}: {key!r} is not a numeric array (dtype {a.dtype})")
  if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
    raise FlameModelError(f"{path}: {key!r} contains NaN or inf")
  return a


def model_from_arrays(d: Mapping[str, Any], path: str = "<arrays>") -> FlameModel:
  """Validates FLAME's pickle keys (`v_template, shapedirs, posedirs, J_regressor, weights,
  kintree_table, f`) and builds a `FlameModel`."""
  v = _get(d, "v_template", path).astype(np.float32)
  if v.ndim != 2 or v.shape[1] != 3:
    raise FlameModelError(f"{path}: 'v_template' has shape {v.shape}, expected (V, 3)")
  nv = v.shape[0]
  dirs = _get(d, "shapedirs", path).astype(np.float32)
  if dirs.ndim != 3 or dirs.shape[:2] != (nv, 3) or dirs.shape[2] <= NUM_SHAPE:
    raise FlameModelError(f"{path}: 'shapedirs' has shape {dirs.shape}, expected ({nv}, 3, {NUM_SHAPE} + expressions)")
  kin = _get(d, "kintree_table", path).astype(np.int64)
  if kin.ndim != 2 or kin.shape[0] != 2:
    raise FlameModelError(f"{path}: 'kintree_table' has shape {kin.shape}, expected (2, J)")
  nj = kin.shape[1]
  if nj != NUM_JOINTS:
    raise FlameModelError(f"{path}: {nj} joints, expected FLAME's {NUM_JOINTS}")
  parents = [-1] + [int(p) for p in kin[0, 1:]]
  if any(not 0 <= p < i for i, p in enumerate(parents) if i):
    raise FlameModelError(f"{path}: 'kintree_table' parents {parents} are not a tree in joint order")
  posedirs = _get(d, "posedirs", path).astype(np.float32)
  if posedirs.shape != (nv, 3, (nj - 1) * 9):
    raise FlameModelError(f"{path}: 'posedirs' has shape {posedirs.shape}, expected ({nv}, 3, {(nj - 1) * 9})")
  jreg = _get(d, "J_regressor", path).astype(np.float32)
  if jreg.shape != (nj, nv):
    raise FlameModelError(f"{path}: 'J_regressor' has shape {jreg.shape}, expected ({nj}, {nv})")
  weights = _get(d, "weights", path).astype(np.float32)
  if weights.shape != (nv, nj):
    raise FlameModelError(f"{path}: 'weights' has shape {weights.shape}, expected ({nv}, {nj})")
  faces = _get(d, "f", path)
  if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
    raise FlameModelError(f"{path}: 'f' has shape {faces.shape} / dtype {faces.dtype}, expected integer (F, 3)")
  if faces.size and (faces.min() < 0 or faces.max() >= nv):
    raise FlameModelError(f"{path}: 'f' indexes vertices outside [0, {nv})")
  jreg64 = jreg.astype(np.float64)
  return FlameModel(
      v_template=v, shapedirs=np.ascontiguousarray(dirs[:, :, :NUM_SHAPE]),
      exprdirs=np.ascontiguousarray(dirs[:, :, NUM_SHAPE:]),
      posedirs=np.ascontiguousarray(posedirs.reshape(-1, posedirs.shape[-1]).T),
      j_template=(jreg64 @ v).astype(np.float32),
      j_shapedirs=np.einsum("jv,vcs->jcs", jreg64, dirs[:, :, :NUM_SHAPE]).astype(np.float32),
      j_exprdirs=np.einsum("jv,vce->jce", jreg64, dirs[:, :, NUM_SHAPE:]).astype(np.float32),
      weights=weights, faces=faces.astype(np.int32), parents=tuple(parents))


def restrict(model: FlameModel, indices: np.ndarray) -> FlameModel:
  """The model evaluated at a subset of vertices only (same joints): cheap region metrics."""
  idx = np.asarray(indices, np.int64)
  nv = model.num_vertices
  posedirs = np.asarray(model.posedirs).reshape(-1, nv, 3)[:, idx].reshape(model.posedirs.shape[0], -1)
  return dataclasses.replace(
      model, v_template=np.asarray(model.v_template)[idx], shapedirs=np.asarray(model.shapedirs)[idx],
      exprdirs=np.asarray(model.exprdirs)[idx], posedirs=posedirs, weights=np.asarray(model.weights)[idx],
      faces=np.zeros((0, 3), np.int32))


def load_model(path: str | os.PathLike) -> FlameModel:
  """Loads FLAME 2020 `generic_model.pkl` (chumpy pickle, no chumpy needed) or an `.npz`
  with the same keys. Raises `FlameModelError` / `UnsafePickleError` naming the file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such FLAME model file (pass your own generic_model.pkl; "
                            "see docs/faces.md)")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    except Exception as e:
      raise FlameModelError(f"{path}: unreadable .npz ({type(e).__name__}: {e})") from None
  else:
    d = safe_pickle.load(path)
  if not isinstance(d, dict):
    raise FlameModelError(f"{path}: not a FLAME model (a {type(d).__name__}, expected a dict of arrays)")
  return model_from_arrays(d, path)


def load_masks(path: str | os.PathLike, num_vertices: int | None = None) -> dict[str, np.ndarray]:
  """FLAME's `FLAME_masks.pkl`: region name -> vertex indices (int64), read safely."""
  path = os.fspath(path)
  d = safe_pickle.load(path)
  if not isinstance(d, dict) or not d:
    raise FlameModelError(f"{path}: not a FLAME mask file (expected a dict of vertex-index arrays)")
  out = {}
  for k, v in d.items():
    a = np.asarray(v)
    if a.ndim != 1 or a.dtype.kind not in "iu":
      raise FlameModelError(f"{path}: mask {k!r} has shape {a.shape} / dtype {a.dtype}, expected 1-D integer indices")
    if a.size and (a.min() < 0 or (num_vertices is not None and a.max() >= num_vertices)):
      raise FlameModelError(f"{path}: mask {k!r} indexes vertices outside [0, {num_vertices})")
    out[str(k)] = a.astype(np.int64)
  return out


# ----------------------------------------------------------------------------- forward

def rodrigues(r: jax.Array) -> jax.Array:
  """Axis-angle (..., 3) -> rotation matrices (..., 3, 3); exact and differentiable at 0."""
  t2 = jnp.sum(r * r, axis=-1)[..., None, None]
  small = t2 < 1e-12
  t2s = jnp.where(small, 1.0, t2)
  t = jnp.sqrt(t2s)
  a = jnp.where(small, 1.0 - t2 / 6.0, jnp.sin(t) / t)           # sin(t) / t
  b = jnp.where(small, 0.5 - t2 / 24.0, (1.0 - jnp.cos(t)) / t2s)  # (1 - cos t) / t^2
  x, y, z = r[..., 0], r[..., 1], r[..., 2]
  zero = jnp.zeros_like(x)
  k = jnp.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(r.shape[:-1] + (3, 3))
  return jnp.eye(3, dtype=r.dtype) + a * k + b * (k @ k)


def _pad(x: jax.Array | None, n: int, batch: tuple[int, ...], name: str) -> jax.Array:
  if x is None:
    return jnp.zeros(batch + (n,), jnp.float32)
  if x.shape[-1] > n:
    raise ValueError(f"{name} has {x.shape[-1]} coefficients; the model has {n}")
  return jnp.pad(x.astype(jnp.float32), [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def forward(model: FlameModel, expression: jax.Array, *, shape: jax.Array | None = None,
            neck: jax.Array | None = None, jaw: jax.Array | None = None,
            global_rot: jax.Array | None = None, eyes: jax.Array | None = None,
            transl: jax.Array | None = None) -> jax.Array:
  """FLAME vertices (B, V, 3) for a batch.

  expression: (B, e <= E) (zero-padded to the model's E, so DualTalk's 50 fill the first 50);
  shape: (B, s <= 300) or (s,) shared; neck / jaw / global_rot: (B, 3) axis-angle;
  eyes: (B, 6) [left, right]; transl: (B, 3). Omitted inputs are zero. Pure; jit it, or use
  `vertices` (jitted).
  """
  batch = expression.shape[:-1]
  expr = _pad(expression, model.exprdirs.shape[-1], batch, "expression")
  if shape is not None and shape.ndim == 1:
    shape = jnp.broadcast_to(shape, batch + shape.shape)
  betas = _pad(shape, model.shapedirs.shape[-1], batch, "shape")
  z3 = jnp.zeros(batch + (3,), jnp.float32)
  rots = [global_rot, neck, jaw]
  full = jnp.concatenate([z3 if p is None else p.astype(jnp.float32) for p in rots] +
                         [jnp.zeros(batch + (6,), jnp.float32) if eyes is None else eyes.astype(jnp.float32)], -1)
  hi = jax.lax.Precision.HIGHEST
  v_shaped = (model.v_template + jnp.einsum("...s,vcs->...vc", betas, model.shapedirs, precision=hi)
              + jnp.einsum("...e,vce->...vc", expr, model.exprdirs, precision=hi))
  joints = (model.j_template + jnp.einsum("...s,jcs->...jc", betas, model.j_shapedirs, precision=hi)
            + jnp.einsum("...e,jce->...jc", expr, model.j_exprdirs, precision=hi))  # = J_regressor @ v_shaped
  rot = rodrigues(full.reshape(batch + (NUM_JOINTS, 3)))  # (..., J, 3, 3)
  pose_feature = (rot[..., 1:, :, :] - jnp.eye(3, dtype=jnp.float32)).reshape(batch + (-1,))
  v_posed = v_shaped + jnp.matmul(pose_feature, model.posedirs, precision=hi).reshape(v_shaped.shape)
  # Rigid transforms of the kinematic chain (parents precede children).
  rel = joints - jnp.concatenate([jnp.zeros_like(joints[..., :1, :]),
                                  joints[..., [max(p, 0) for p in model.parents[1:]], :]], axis=-2)
  local = jnp.concatenate([jnp.concatenate([rot, rel[..., None]], -1),
                           jnp.broadcast_to(jnp.array([0, 0, 0, 1], jnp.float32), rot.shape[:-2] + (1, 4))], -2)
  chain = [local[..., 0, :, :]]
  for i in range(1, NUM_JOINTS):
    chain.append(jnp.matmul(chain[model.parents[i]], local[..., i, :, :], precision=hi))
  g = jnp.stack(chain, axis=-3)  # (..., J, 4, 4) world transform of each joint
  # Remove the rest-pose joint location: G_k @ [I, -J_k].
  g_t = g[..., :3, 3] - jnp.einsum("...jab,...jb->...ja", g[..., :3, :3], joints, precision=hi)
  blend_r = jnp.einsum("vj,...jab->...vab", model.weights, g[..., :3, :3], precision=hi)
  blend_t = jnp.einsum("vj,...ja->...va", model.weights, g_t, precision=hi)
  verts = jnp.einsum("...vab,...vb->...va", blend_r, v_posed, precision=hi) + blend_t
  if transl is not None:
    verts = verts + transl[..., None, :].astype(jnp.float32)
  return verts


vertices = jax.jit(forward)


def vertex_normals(verts: jax.Array, faces: jax.Array) -> jax.Array:
  """Area-weighted unit vertex normals (..., V, 3) of triangle meshes (..., V, 3)."""
  a, b, c = (jnp.take(verts, faces[:, i], axis=-2) for i in range(3))
  fn = jnp.cross(b - a, c - a)
  n = jnp.zeros_like(verts)
  for i in range(3):
    n = n.at[..., faces[:, i], :].add(fn)
  return n / jnp.maximum(jnp.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- motion

@dataclasses.dataclass(frozen=True)
class FlameParams:
  """Per-frame FLAME inputs of one speaker: expression (T, 50), jaw and neck (T, 3), shape (s,)."""

  expression: np.ndarray
  jaw: np.ndarray
  neck: np.ndarray
  shape: np.ndarray | None = None

  def __len__(self):
    return self.expression.shape[0]

  def slice(self, start: int, stop: int) -> "FlameParams":
    return FlameParams(self.expression[start:stop], self.jaw[start:stop], self.neck[start:stop], self.shape)


def params_from_motion(motion: np.ndarray, shape: np.ndarray | None = None) -> FlameParams:
  """DualTalk's (T, 56) `[exp 50, jaw 3, neck 3]` -> `FlameParams` (via `audio.flame_from_motion`)."""
  f = audio.flame_from_motion(motion)
  return FlameParams(f["exp"], np.ascontiguousarray(f["pose"][:, 3:6]), np.ascontiguousarray(f["pose"][:, 0:3]),
                     None if shape is None else np.asarray(shape, np.float32))


def npz_shape(path: str) -> np.ndarray | None:
  """The identity of a FLAME npz: its `shape` (T, s) averaged over frames (or (s,)), or None."""
  from dualtalk_jax.eval.predict import InputError

  try:
    with np.load(path, allow_pickle=False) as z:
      if "shape" not in z.files:
        return None
      s = np.asarray(z["shape"], np.float32)
  except Exception as e:
    raise InputError(f"{path}: unreadable 'shape' ({type(e).__name__}: {e})") from None
  s = s.mean(axis=0) if s.ndim == 2 else s
  if s.ndim != 1 or s.shape[0] > NUM_SHAPE or not np.all(np.isfinite(s)):
    raise InputError(f"{path}: 'shape' must be (T, s<=300) or (s,) finite values, got {s.shape}")
  return s


def load_params(path: str) -> FlameParams:
  """A speaker's motion from a (T, 56) `.npy` or a FLAME `.npz` (exp, pose[, shape]).

  An npz's `shape` is the face's identity (`npz_shape`); a `.npy` renders the mean FLAME
  face. Errors name the file.
  """
  from dualtalk_jax.eval.evaluate import load_prediction
  from dualtalk_jax.eval.predict import InputError, load_motion

  if not os.path.isfile(path):
    raise InputError(f"{path}: no such motion file")
  if path.endswith(".npz"):
    return params_from_motion(load_motion(path), npz_shape(path))
  return params_from_motion(load_prediction(path))


@functools.partial(jax.jit, static_argnames=("with_normals",))
def _chunk(model, expression, jaw, neck, shape, with_normals=False):
  v = forward(model, expression, shape=shape, global_rot=neck, jaw=jaw)  # "neck" on the root joint, as DECA
  return (v, vertex_normals(v, model.faces)) if with_normals else v


def sequence_vertices(model: FlameModel, params: FlameParams, *, chunk: int = 64, with_normals: bool = False):
  """Yields (vertices (n, V, 3)[, normals]) numpy chunks over a whole sequence.

  Every chunk is padded to `chunk` frames, so one compile serves any length; the next
  chunk is dispatched before the current one is copied to the host.
  """
  n = len(params)
  shape = jnp.zeros((NUM_SHAPE,), jnp.float32) if params.shape is None else jnp.asarray(
      np.pad(params.shape, (0, NUM_SHAPE - params.shape.shape[0])))

  def dispatch(start):
    stop = min(start + chunk, n)
    pad = [(0, chunk - (stop - start)), (0, 0)]
    args = [jnp.asarray(np.pad(a[start:stop], pad)) for a in (params.expression, params.jaw, params.neck)]
    return stop - start, _chunk(model, *args, shape, with_normals=with_normals)

  pending = dispatch(0) if n else None
  for start in range(0, n, chunk):
    count, out = pending
    pending = dispatch(start + chunk) if start + chunk < n else None
    if with_normals:
      yield np.asarray(out[0])[:count], np.asarray(out[1])[:count]
    else:
      yield np.asarray(out)[:count]


def to_device(model: FlameModel) -> FlameModel:
  """The model with its arrays on the default JAX device (do it once, reuse)."""
  return jax.tree_util.tree_map(jnp.asarray, model)
