"""DualTalk motion -> ARKit blendshape weights, written as a Live Link Face CSV.

The mapping is the user's matrix `M` (K x C) taking ARKit weights to FLAME, as EMAGE /
BEAT2 publish it (`mat_final.npy`, 51 x 103): a row per ARKit blendshape, columns = FLAME
expression (100, or the 50 DualTalk predicts) then jaw axis-angle (3), so that
`flame = w @ M`. Rows follow the Live Link Face order of the 52 ARKit shapes without
TongueOut (`MAPPING_NAMES`; a 52-row matrix: all 52 with TongueOut) unless a names file
says otherwise. Of a 103-column matrix
only the 50 predicted expression columns and the jaw are fitted: the other 50 FLAME
coefficients are not predicted (they are not targets equal to zero).

Per frame t, with y_t = [exp_t (50), jaw_t (3)], the weights solve (`solve`)

    min_{w in [0,1]^{T x K}}  sum_t |(w_t M - y_t) * c|^2            data (c: 1 on exp, jaw_weight on jaw)
                              + l2 * sum_t |w_t|^2                     L2 (ridge)
                              + symmetry * sum_t sum_(L,R) (w_tL - w_tR)^2   left/right pairs
                              + smooth * sum_t |w_t - w_{t-1}|^2       temporal smoothing

a convex box-constrained least-squares problem, solved for all frames at once by ADMM
(jitted, on the accelerator when there is one): the quadratic step is exact in the
eigenbasis of the K x K normal matrix and, along time, in the DCT-II basis that
diagonalises the first-difference smoothing term; the constraint step is a clip to
[0, 1]. It stops when the primal residual max|w - z| and the step max|z_k - z_(k-1)| fall below
`tol` (2e-6; float32: it matches scipy's `lsq_linear` to ~1e-4), or after `max_iter` iterations (reported).

Head yaw / pitch / roll come from the neck rotation (`head_angles`): R = Ry(yaw) Rx(pitch)
Rz(roll) in FLAME's frame (x: the subject's left, y: up, z: out of the face), radians.
Eye rotations (not predicted by DualTalk) are written as 0.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dualtalk_jax import audio

# The 52 ARKit blendshapes in the column order of Live Link Face's CSV export.
LIVE_LINK_FACE_BLENDSHAPES = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose", "MouthFunnel",
    "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft",
    "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight",
    "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft",
    "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
    "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut")
ROTATION_COLUMNS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                    "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
CSV_COLUMNS = ("Timecode", "BlendShapeCount", *LIVE_LINK_FACE_BLENDSHAPES, *ROTATION_COLUMNS)
BLENDSHAPE_COUNT = len(LIVE_LINK_FACE_BLENDSHAPES) + len(ROTATION_COLUMNS)  # 61, as Live Link Face writes
MAPPING_NAMES = tuple(n for n in LIVE_LINK_FACE_BLENDSHAPES if n != "TongueOut")  # default row order (51)
JAW_DIM = 3


class MappingError(ValueError):
  """A mapping matrix or names file that cannot be used; the message names the file."""


def canonical_name(name: str) -> str:
  """Live Link Face spelling of an ARKit name (`jawOpen`, `JawOpen`, `eyeBlink_L` -> ...)."""
  n = name.strip()
  n = n[:-2] + "Left" if n.endswith("_L") else n[:-2] + "Right" if n.endswith("_R") else n
  lookup = {x.lower(): x for x in LIVE_LINK_FACE_BLENDSHAPES}
  if n.lower() not in lookup:
    raise KeyError(name)
  return lookup[n.lower()]


def symmetric_pairs(names: Sequence[str]) -> list[tuple[int, int]]:
  """Index pairs (left, right) of mirrored shapes among `names` (e.g. MouthSmileLeft/Right).

  `MouthLeft`/`MouthRight` and `JawLeft`/`JawRight` are motions, not mirrored halves, and
  are not paired.
  """
  index = {n: i for i, n in enumerate(names)}
  pairs = []
  for n, i in index.items():
    if n.endswith("Left") and n not in ("MouthLeft", "JawLeft"):
      j = index.get(n[:-4] + "Right")
      if j is not None:
        pairs.append((i, j))
  return pairs


@dataclasses.dataclass(frozen=True)
class Mapping:
  """The fitted part of the user's matrix: (K, 53) = [exp 50, jaw 3] columns, and its K row names."""

  matrix: np.ndarray
  names: tuple[str, ...]


EXPECTED = ("expected a float matrix of shape (51, 53) or (51, 103): one row per ARKit blendshape (Live "
            "Link Face order without TongueOut; 52 rows: with it; or the order of --mapping_names), columns = FLAME expression "
            "(50 or 100) then jaw axis-angle (3), so that flame = weights @ M (EMAGE/BEAT2's mat_final.npy "
            "is (51, 103))")


def load_mapping(path: str, names_path: str | None = None) -> Mapping:
  """Reads and validates the mapping `.npy` (and optional names file, one name a line)."""
  if not os.path.isfile(path):
    raise MappingError(f"{path}: no such mapping file ({EXPECTED})")
  try:
    m = np.load(path, allow_pickle=False)
  except Exception as e:
    raise MappingError(f"{path}: not a readable .npy ({type(e).__name__}: {e}); {EXPECTED}") from None
  names = MAPPING_NAMES
  if m.ndim == 2 and m.shape[0] == len(LIVE_LINK_FACE_BLENDSHAPES) and not names_path:
    names = LIVE_LINK_FACE_BLENDSHAPES  # all 52, TongueOut included, in Live Link Face order
  if names_path:
    try:
      with open(names_path) as f:
        raw = [line.strip() for line in f if line.strip()]
      names = tuple(canonical_name(n) for n in raw)
    except KeyError as e:
      raise MappingError(f"{names_path}: {e.args[0]!r} is not an ARKit blendshape name "
                         f"(known: {', '.join(LIVE_LINK_FACE_BLENDSHAPES)})") from None
    except OSError as e:
      raise MappingError(f"{names_path}: {e}") from None
    if len(set(names)) != len(names):
      raise MappingError(f"{names_path}: names repeat")
  k = len(names)
  if m.ndim != 2 or m.dtype.kind not in "fiu":
    raise MappingError(f"{path}: array of shape {m.shape} and dtype {m.dtype}; {EXPECTED}")
  if m.shape[0] != k and m.shape[1] in {k, 51, 52} and m.shape[0] in (audio.EXP_DIM + JAW_DIM, 100 + JAW_DIM):
    raise MappingError(f"{path}: shape {m.shape} looks transposed (FLAME x ARKit); save M.T. {EXPECTED}")
  if m.shape[0] != k:
    raise MappingError(f"{path}: {m.shape[0]} rows but {k} blendshape names; {EXPECTED}")
  if m.shape[1] == audio.EXP_DIM + JAW_DIM:
    fitted = m
  elif m.shape[1] == 100 + JAW_DIM:
    fitted = np.concatenate([m[:, :audio.EXP_DIM], m[:, 100:]], axis=1)
  else:
    raise MappingError(f"{path}: {m.shape[1]} columns; {EXPECTED}")
  if not np.all(np.isfinite(m)):
    raise MappingError(f"{path}: contains NaN or inf")
  if not np.any(fitted):
    raise MappingError(f"{path}: the expression-50 and jaw columns are all zero")
  return Mapping(np.asarray(fitted, np.float32), names)


@dataclasses.dataclass(frozen=True)
class SolveInfo:
  iterations: int
  primal_residual: float
  step: float  # max |z_k - z_(k-1)| of the last iteration
  rms_error: float  # of w M - y over the fitted columns (unweighted)


@functools.partial(jax.jit, static_argnames=("max_iter", "temporal"))
def _admm(b, eigval, eigvec, smooth, rho, tol, max_iter, temporal):
  """ADMM for min sum_t (w_t A w_t' - 2 b_t w_t') + smooth |D w|^2 over w in [0, 1].

  `temporal=False` (smooth == 0): frames are independent and the DCT steps are skipped.
  """
  t = b.shape[0]
  lap = 2.0 - 2.0 * jnp.cos(jnp.pi * jnp.arange(t, dtype=b.dtype) / t)  # eigenvalues of D'D (DCT-II basis)
  denom = 2.0 * eigval[None, :] + rho + 2.0 * smooth * lap[:, None]
  hi = jax.lax.Precision.HIGHEST

  def w_step(z, u):
    rhs = jnp.matmul(2.0 * b + rho * (z - u), eigvec, precision=hi)
    if temporal:
      rhs = jax.scipy.fft.dct(rhs, type=2, axis=0, norm="ortho")
      w = jax.scipy.fft.idct(rhs / denom, type=2, axis=0, norm="ortho")
    else:
      w = rhs / denom
    return jnp.matmul(w, eigvec.T, precision=hi)

  def body(state):
    z, u, i, _, _ = state
    w = w_step(z, u)
    z_new = jnp.clip(w + u, 0.0, 1.0)
    u = u + w - z_new
    return z_new, u, i + 1, jnp.max(jnp.abs(w - z_new)), jnp.max(jnp.abs(z_new - z))

  def cond(state):
    _, _, i, r, s = state
    return (i < max_iter) & ((r > tol) | (s > tol))

  z0 = jnp.clip(w_step(jnp.zeros_like(b), jnp.zeros_like(b)), 0.0, 1.0)
  inf = jnp.array(jnp.inf, b.dtype)
  z, _, i, r, s = jax.lax.while_loop(cond, body, (z0, jnp.zeros_like(b), 0, inf, inf))
  return z, i, r, s


def solve(targets: np.ndarray, mapping: Mapping, *, l2: float = 0.0, symmetry: float = 0.0, smooth: float = 0.0,
          jaw_weight: float = 1.0, tol: float = 2e-6, max_iter: int = 5000) -> tuple[np.ndarray, SolveInfo]:
  """ARKit weights (T, K) in [0, 1] for targets (T, 53) = [exp 50, jaw 3] (see module docstring)."""
  for name, v in (("l2", l2), ("symmetry", symmetry), ("smooth", smooth), ("jaw_weight", jaw_weight)):
    if not (np.isfinite(v) and v >= 0):
      raise ValueError(f"--{name} must be a finite number >= 0, got {v}")
  y = np.asarray(targets, np.float64)
  m = np.asarray(mapping.matrix, np.float64)
  if y.ndim != 2 or y.shape[1] != m.shape[1]:
    raise ValueError(f"targets have shape {y.shape}, expected (T, {m.shape[1]})")
  k = m.shape[0]
  c = np.ones(m.shape[1])
  c[-JAW_DIM:] = jaw_weight
  mc = m * c
  a = mc @ mc.T + l2 * np.eye(k)
  for i, j in symmetric_pairs(mapping.names):
    a[i, i] += symmetry
    a[j, j] += symmetry
    a[i, j] -= symmetry
    a[j, i] -= symmetry
  b = (y * c) @ mc.T
  eigval, eigvec = np.linalg.eigh(a)
  eigval = np.maximum(eigval, 0.0)
  top = max(eigval[-1], 1e-12)
  rho = 2.0 * np.sqrt(max(eigval[0], 1e-4 * top) * top)  # ~ sqrt(l_min l_max) of the Hessian 2A
  w, it, r, s = _admm(jnp.asarray(b, jnp.float32), jnp.asarray(eigval, jnp.float32),
                      jnp.asarray(eigvec, jnp.float32), jnp.float32(smooth), jnp.float32(rho), jnp.float32(tol),
                      max_iter=max_iter, temporal=smooth > 0)
  w = np.asarray(w, np.float64)
  rms = float(np.sqrt(np.mean((w @ m - y) ** 2))) if len(y) else 0.0
  return w.astype(np.float32), SolveInfo(int(it), float(r), float(s), rms)


def head_angles(neck: np.ndarray) -> np.ndarray:
  """(T, 3) neck axis-angle -> (T, 3) [yaw, pitch, roll] radians with R = Ry(yaw) Rx(pitch) Rz(roll)."""
  from scipy.spatial.transform import Rotation

  r = Rotation.from_rotvec(np.asarray(neck, np.float64)).as_matrix()
  yaw = np.arctan2(r[:, 0, 2], r[:, 2, 2])
  pitch = np.arcsin(np.clip(-r[:, 1, 2], -1, 1))
  roll = np.arctan2(r[:, 1, 0], r[:, 1, 1])
  return np.stack([yaw, pitch, roll], axis=1)


def timecode(frame: int, fps: int = audio.FPS) -> str:
  """Live Link Face timecode `HH:MM:SS:FF.mmm` (FF counts frames at `fps`; no sub-frame)."""
  s, ff = divmod(frame, fps)
  h, rem = divmod(s, 3600)
  return f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}:{ff:02d}.000"


def write_live_link_csv(path: str, weights: np.ndarray, names: Sequence[str], head: np.ndarray) -> None:
  """Writes the Live Link Face CSV (columns `CSV_COLUMNS`); shapes not in `names` are 0."""
  from dualtalk_jax.data.records import atomic_write

  t = weights.shape[0]
  table = np.zeros((t, len(LIVE_LINK_FACE_BLENDSHAPES) + len(ROTATION_COLUMNS)), np.float64)
  col = {n: i for i, n in enumerate(LIVE_LINK_FACE_BLENDSHAPES)}
  for j, n in enumerate(names):
    table[:, col[n]] = weights[:, j]
  table[:, len(LIVE_LINK_FACE_BLENDSHAPES):len(LIVE_LINK_FACE_BLENDSHAPES) + 3] = head

  def write(tmp):
    with open(tmp, "w", newline="") as f:
      f.write(",".join(CSV_COLUMNS) + "\n")
      for i in range(t):
        f.write(f"{timecode(i)},{BLENDSHAPE_COUNT}," + ",".join(f"{v:.6f}" for v in table[i]) + "\n")

  atomic_write(path, write)


def read_live_link_csv(path: str) -> tuple[list[str], np.ndarray]:
  """(timecodes, values (T, 61)) of a Live Link Face CSV, columns checked against `CSV_COLUMNS`."""
  with open(path) as f:
    header = f.readline().strip().split(",")
    if tuple(header) != CSV_COLUMNS:
      raise ValueError(f"{path}: not the Live Link Face column layout")
    rows = [line.strip().split(",") for line in f if line.strip()]
  return [r[0] for r in rows], np.array([[float(v) for v in r[2:]] for r in rows], np.float64).reshape(len(rows), -1)


def motion_to_arkit(motion: np.ndarray, mapping: Mapping, **solver) -> tuple[np.ndarray, np.ndarray, SolveInfo]:
  """(T, 56) motion -> ARKit weights (T, K), head angles (T, 3), solver info."""
  motion = np.asarray(motion, np.float32)
  if motion.ndim != 2 or motion.shape[1] != audio.MOTION_DIM:
    raise ValueError(f"motion has shape {motion.shape}, expected (T, {audio.MOTION_DIM})")
  targets = motion[:, :audio.EXP_DIM + JAW_DIM]  # [exp 50, jaw 3]
  weights, info = solve(targets, mapping, **solver)
  return weights, head_angles(motion[:, audio.EXP_DIM + JAW_DIM:]), info


def convert_file(motion_path: str, mapping_path: str, output: str, *, names_path: str | None = None,
                 **solver) -> dict:
  """`experiments.to_arkit`: motion file -> Live Link Face CSV; returns a summary."""
  import time

  parent = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"{parent}: output folder does not exist")
  from dualtalk_jax.face import flame

  mapping = load_mapping(mapping_path, names_path)
  p = flame.load_params(motion_path)
  motion = np.concatenate([p.expression, p.jaw, p.neck], axis=1)
  start = time.time()
  weights, head, info = motion_to_arkit(motion, mapping, **solver)
  elapsed = time.time() - start
  write_live_link_csv(output, weights, mapping.names, head)
  return {"output": output, "frames": len(motion), "blendshapes": len(mapping.names), "info": info,
          "converged": info.iterations < solver.get("max_iter", 5000), "solve_seconds": elapsed}
