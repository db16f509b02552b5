"""A stand-in head with FLAME 2020's array layout, for tests and benchmarks.

FLAME's licence forbids shipping it, so tests and `benchmarks/render.py` build this
instead: an ellipsoid head of 5023 vertices and 9976 triangles, 5 joints (root, neck,
jaw, eyes), a lower-front "jaw" region skinned to the jaw joint, and random shape (300),
expression (100) and pose-corrective bases of FLAME's shapes. `write_pickle` writes it
the way FLAME ships (a dict with `J_regressor` as a scipy csc matrix), optionally with
`shapedirs` stored as a chumpy object (see the tests). Not a face: only the shapes,
the skinning structure and the rendering cost are FLAME's.
"""

from __future__ import annotations

import numpy as np

NUM_VERTICES = 5023
NUM_FACES = 9976
RADII = np.array([0.08, 0.11, 0.09])  # metres, x (ear to ear), y (up), z (front)


def _sphere_points(n: int) -> np.ndarray:
  i = np.arange(n) + 0.5
  y = 1 - 2 * i / n
  r = np.sqrt(1 - y * y)
  phi = np.pi * (3 - np.sqrt(5)) * i
  return np.stack([r * np.cos(phi), y, r * np.sin(phi)], axis=1)


def jaw_region(unit: np.ndarray) -> np.ndarray:
  """Soft jaw weights of unit-sphere points: the lower front of the head."""
  return np.clip((-unit[:, 1] - 0.15) / 0.25, 0, 1) * np.clip((unit[:, 2] - 0.1) / 0.3, 0, 1)


def fake_flame_arrays(seed: int = 0) -> dict[str, np.ndarray]:
  """The dict a FLAME 2020 `generic_model.pkl` holds (float64 arrays, `f` uint32)."""
  from scipy.spatial import ConvexHull

  rng = np.random.default_rng(seed)
  unit = _sphere_points(NUM_VERTICES)
  faces = ConvexHull(unit).simplices
  a, b, c = (unit[faces[:, k]] for k in range(3))
  flip = np.einsum("fc,fc->f", np.cross(b - a, c - a), a + b + c) < 0
  faces[flip] = faces[flip][:, ::-1]
  faces = faces[:NUM_FACES]
  v = unit * RADII
  jaw = jaw_region(unit)
  eye_l = np.exp(-np.sum((unit - [0.35, 0.3, 0.88]) ** 2, 1) / 0.01)
  eye_r = np.exp(-np.sum((unit - [-0.35, 0.3, 0.88]) ** 2, 1) / 0.01)
  weights = np.stack([0.05 * np.ones(NUM_VERTICES), 1 - jaw, jaw, eye_l, eye_r], 1)
  weights /= weights.sum(1, keepdims=True)
  jreg = np.zeros((5, NUM_VERTICES))
  bottom = unit[:, 1] < -0.9
  jreg[0, bottom] = jreg[1, bottom] = 1
  jreg[2, np.abs(unit[:, 1] + 0.1) < 0.03] = 1  # a ring: its centre is on the axis
  jreg[3] = eye_l > 0.5
  jreg[4] = eye_r > 0.5
  jreg /= jreg.sum(1, keepdims=True)
  shapedirs = np.concatenate([rng.normal(0, 2e-4, (NUM_VERTICES, 3, 300)),
                              rng.normal(0, 4e-4, (NUM_VERTICES, 3, 100))], axis=2)
  return {
      "v_template": v, "f": faces.astype(np.uint32), "weights": weights, "J_regressor": jreg,
      "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
      "shapedirs": shapedirs, "posedirs": rng.normal(0, 1e-4, (NUM_VERTICES, 3, 36)),
      "bs_style": "lbs", "bs_type": "lrotmin",
  }


def write_pickle(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Pickles `arrays` as FLAME ships them: `J_regressor` as a scipy csc matrix, protocol 2."""
  import pickle

  import scipy.sparse as sp

  d = dict(arrays)
  d["J_regressor"] = sp.csc_matrix(d["J_regressor"])
  with open(path, "wb") as f:
    pickle.dump(d, f, protocol=2)
