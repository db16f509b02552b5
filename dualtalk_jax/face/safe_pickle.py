"""A pickle loader that admits only arrays: FLAME model and mask files without running code.

FLAME's `generic_model.pkl` (2017-2020) and `FLAME_masks.pkl` are Python 2 pickles of dicts
of numpy arrays, a scipy sparse matrix (`J_regressor`) and chumpy objects (`shapedirs`),
so `pickle.load` would import chumpy and could run any code the file names. `load` uses
an unpickler whose `find_class` admits a fixed list of globals:

- numpy array reconstruction (`_reconstruct`, `ndarray`, `dtype`, `scalar`, `_frombuffer`),
  under both the numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) module names;
- `_codecs.encode` restricted to latin-1 (how Python 3 pickles bytes at protocol <= 2);
- `set` / `frozenset`, and `copy_reg._reconstructor` restricted to the holders below;
- scipy sparse `csc/csr/coo_matrix` (any scipy module path), mapped to `SparseHolder`,
  which only records its state; it becomes a dense array through scipy's validating
  constructor after loading;
- any `chumpy.*` class, mapped to `ChumpyHolder`, which only records its state; a `Ch`
  becomes its stored array `x`, a `Select` the indexed entries of its source. Chumpy
  expressions that would have to be evaluated are refused.

Any other global (`os.system`, `builtins.eval`, another numpy function...) raises
`UnsafePickleError` naming the file and the global, before anything is called.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np


class UnsafePickleError(ValueError):
  """A pickle that names something other than arrays, or that cannot be read as one."""


class ChumpyHolder:
  """Stands in for any chumpy class: records constructor args and state, runs nothing."""

  def __init__(self, *args, **kwargs):
    self.args, self.state = args, None

  def __setstate__(self, state):
    self.state = state


class SparseHolder(ChumpyHolder):
  """Stands in for a scipy sparse matrix class: records its pickled state."""


class Unresolved:
  """A chumpy expression that needs chumpy to evaluate; an error only if its value is used."""

  def __init__(self, reason: str):
    self.reason = reason

  def __repr__(self):
    return f"Unresolved({self.reason})"


def _numpy_attr(name):
  core = getattr(np, "_core", None) or np.core
  return getattr(core.multiarray, name) if name != "_frombuffer" else core.numeric._frombuffer


def _reconstruct(subtype, *args):
  if subtype is not np.ndarray:
    raise UnsafePickleError(f"array reconstruction of {subtype!r} (only numpy.ndarray is allowed)")
  return _numpy_attr("_reconstruct")(subtype, *args)


def _scalar(dtype, *args):
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} (object scalars are not allowed)")
  return _numpy_attr("scalar")(dtype, *args)


def _encode(text, encoding="utf-8"):
  if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
    raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} (only latin-1 is allowed)")
  return text.encode("latin-1")


def _copyreg_reconstructor(cls, base, state):
  if not (isinstance(cls, type) and issubclass(cls, ChumpyHolder)) or base is not object or state is not None:
    raise UnsafePickleError(f"copy_reg._reconstructor({cls!r}, {base!r}, ...) (only chumpy/scipy placeholders)")
  return cls()


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED = {
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _scalar for m in _NUMPY_MODULES},
    ("numpy.core.numeric", "_frombuffer"): _numpy_attr("_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): _numpy_attr("_frombuffer"),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode,
    ("copy_reg", "_reconstructor"): _copyreg_reconstructor,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
}
_SPARSE = ("csc_matrix", "csr_matrix", "coo_matrix")


class _Unpickler(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "chumpy" or module.startswith("chumpy."):
      return ChumpyHolder
    if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE:
      return SparseHolder
    raise UnsafePickleError(f"the pickle names {module}.{name}, which is not an array type; refused "
                            "(only numpy/scipy arrays and chumpy placeholders are loaded)")

  def persistent_load(self, pid):
    raise UnsafePickleError("the pickle uses persistent ids; refused")


def _sparse_to_dense(h: SparseHolder) -> np.ndarray:
  import scipy.sparse as sp

  st = h.state
  if not isinstance(st, dict) or not {"data", "indices", "indptr"} <= set(st) and "row" not in st:
    raise UnsafePickleError(f"sparse matrix with unexpected state keys {sorted(st) if isinstance(st, dict) else type(st)}")
  shape = st.get("_shape", st.get("shape"))
  if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(n, int) and n >= 0 for n in shape)):
    raise UnsafePickleError(f"sparse matrix with bad shape {shape!r}")
  arrays = {k: v for k, v in st.items() if k in ("data", "indices", "indptr", "row", "col")}
  for k, v in arrays.items():
    if not isinstance(v, np.ndarray) or v.dtype.hasobject:
      raise UnsafePickleError(f"sparse matrix field {k!r} is not a numeric array")
  fmt = st.get("format") or ("coo" if "row" in st else None)
  try:
    if fmt == "coo" or "row" in arrays:
      m = sp.coo_matrix((arrays["data"], (arrays["row"], arrays["col"])), shape=shape)
    else:
      cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
      m = cls((arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape)
      m.check_format(full_check=True)
  except (ValueError, TypeError, IndexError) as e:
    raise UnsafePickleError(f"invalid sparse matrix ({e})") from None
  return np.asarray(m.toarray())


def _chumpy_to_array(h: ChumpyHolder, depth: int = 0) -> np.ndarray | Unresolved:
  st = h.state
  if depth > 8 or not isinstance(st, dict):
    return Unresolved("a chumpy object without a stored array")
  if "x" in st:
    x = to_arrays(st["x"], depth + 1)
    if not isinstance(x, np.ndarray) or x.dtype.hasobject:
      raise UnsafePickleError("chumpy object whose 'x' is not a numeric array")
    return x
  if "a" in st and "idxs" in st:  # chumpy.reordering.Select: a.ravel()[idxs], reshaped
    src = to_arrays(st["a"], depth + 1)
    idxs = to_arrays(st["idxs"], depth + 1)
    if isinstance(src, Unresolved):
      return src
    if not isinstance(src, np.ndarray) or not isinstance(idxs, np.ndarray) or idxs.dtype.kind not in "iu":
      raise UnsafePickleError("chumpy Select without an array source and integer indices")
    try:
      out = src.reshape(-1)[idxs]
      shape = st.get("preferred_shape")
      return out.reshape(tuple(shape)) if shape is not None else out
    except (IndexError, ValueError, TypeError) as e:
      raise UnsafePickleError(f"chumpy Select with bad indices or shape ({e})") from None
  return Unresolved(f"a chumpy expression (state keys {sorted(st)[:8]}) that needs chumpy to evaluate; "
                    "only stored arrays (Ch) and Select are read")


def to_arrays(obj: Any, depth: int = 0) -> Any:
  """Replaces chumpy and sparse placeholders (in dicts, lists, tuples) by numpy arrays."""
  if isinstance(obj, SparseHolder):
    return _sparse_to_dense(obj)
  if isinstance(obj, ChumpyHolder):
    return _chumpy_to_array(obj, depth)
  if isinstance(obj, dict):
    return {k: to_arrays(v, depth) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(to_arrays(v, depth) for v in obj)
  return obj


def loads(data: bytes) -> Any:
  """Unpickles `data` with the restricted unpickler (latin-1 for Python 2 strings)."""
  try:
    obj = _Unpickler(io.BytesIO(data), encoding="latin1").load()
  except UnsafePickleError:
    raise
  except Exception as e:  # truncated, corrupt, or a refused callable's arguments
    raise UnsafePickleError(f"not a readable pickle ({type(e).__name__}: {e})") from None
  return to_arrays(obj)


def load(path: str | os.PathLike) -> Any:
  """Loads a pickle of arrays from `path`; errors are `UnsafePickleError` naming the file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  with open(path, "rb") as f:
    data = f.read()
  try:
    return loads(data)
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
