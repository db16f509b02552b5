"""Shared pytest set-up (repo root on sys.path, 8 virtual CPU devices, XLA:CPU at -O0 for the
fast suite, the entry points' runtime set-up, heavy test files first) and the helpers several
test files use."""
import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# aot_test's compile-only libtpu client needs no exclusive access (as experiments.aot_compile).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# Several virtual CPU devices for the sharding tests; set before jax creates its CPU client.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# One persistent XLA compilation cache per test session, shared with the CLIs the tests run
# (subprocesses inherit it): the tiny model's train and prediction steps, compiled again by
# every test that trains or predicts (and by every CLI process), load the executable instead.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dtj_test_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

from dualtalk_jax import runtime  # noqa: E402

runtime.configure()  # as every entry point does


@pytest.hookimpl(trylast=True)  # after pytest's own unraisable-exception hook is in place
def pytest_configure(config):
  """Checkpoint reads that finish after a failed restore are not reported, as in the entry
  points (`runtime.drop_closed_loop_callbacks`, here around pytest's hook).

  The fast suite (`-m 'not slow'`, the default) compiles XLA:CPU's machine code at -O0:
  same HLO and XLA passes, less optimised code. Its tiny programs spend most of their time
  compiling, and the suite takes a quarter to a third less CPU (1215-1386 s against 1881 s on the
  2-core VM, 2026-12-03). The slow tests (long training, large parity) keep -O2, as does a
  run with the level in `XLA_FLAGS`. Set before jax creates its CPU client (the first
  computation); the CLIs the tests start inherit it."""
  runtime.drop_closed_loop_callbacks()
  if config.option.markexpr.strip() == "not slow":
    runtime.add_xla_flags("--xla_backend_optimization_level=0")  # unless XLA_FLAGS sets a level


def perturbed_model(cfg=None, seed=0, scale=0.05):
  """A model (default: the tiny config) with every parameter, LayerNorms and biases too, moved
  off its init value, in eval mode."""
  import jax
  import numpy as np

  from dualtalk_jax import params as params_lib
  from dualtalk_jax.config import CONFIGS
  from dualtalk_jax.models.dualtalk import DualTalk, make_rngs

  model = DualTalk(cfg or CONFIGS["tiny"], rngs=make_rngs(seed))
  rng = np.random.default_rng(seed)
  params_lib.load(model, jax.tree.map(lambda v: np.asarray(v) + rng.normal(0, scale, v.shape).astype(np.float32),
                                       params_lib.of(model)))
  model.eval()
  return model


def run_config(train_dir, val_dir="", *, window_frames, **overrides):
  """The quickstart config made small for a training test: the given data (no synthesis), no
  prefetch threads, batch 8, a log line every step, no validation, no progress bar; then
  `overrides` (dotted keys, as `loop.apply_overrides`)."""
  from dualtalk_jax.train import configs, loop

  c = configs.quickstart()
  c.synthetic.enabled = False
  c.data.train_dir, c.data.val_dir = train_dir, val_dir
  c.data.window_frames = window_frames
  c.data.thread_count = 0
  c.batch_size = 8
  c.log_every = 1
  c.eval_every = 0
  c.progress_bar = False
  return loop.apply_overrides(c, overrides)


# The test files that take longest, scheduled first: `--dist loadfile` (pyproject.toml) hands
# whole files to the pytest-xdist workers in collection order, so a long file collected last (they
# are alphabetical) would run alone at the end.
FIRST = ("train_test.py", "train_multihost_test.py", "quickstart_test.py", "aot_test.py", "new_user_test.py",
         "feature_cache_test.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the rest keep their order


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  """A tiny preprocessed train (4 clips) and val (2 clips) split of synthetic conversations, 25-frame windows."""
  from dualtalk_jax.data import preprocess, synthetic

  root = tmp_path_factory.mktemp("data")
  out = {}
  for split, n, seed in (("train", 4, 0), ("val", 2, 1)):
    synthetic.synthesize(str(root / f"raw_{split}"), n, seed, min_seconds=4.0, max_seconds=6.0)
    preprocess.preprocess(str(root / f"raw_{split}"), str(root / split), window_frames=25)
    out[split] = str(root / split)
  return out


def train_config(data_dirs, **overrides):
  """`run_config` on `data_dirs`: 4 steps, a checkpoint every 2, then `overrides`."""
  return run_config(data_dirs["train"], data_dirs["val"], window_frames=25,
                    **{"total_steps": 4, "checkpoint_every": 2, **overrides})


def train_run(data_dirs, workdir, **overrides):
  """Trains `train_config(data_dirs, **overrides)` in `workdir`: (final metrics, host params)."""
  from dualtalk_jax.train import loop, step as step_lib

  out = loop.train_and_evaluate(train_config(data_dirs, **overrides), str(workdir))
  return out["metrics"], step_lib.host_params(out["state"])


def assert_params(a, b, exact, atol=3e-4):
  """Exact, or close. Adam divides by sqrt(v), so reduction-order noise in near-zero
  gradients moves a parameter by up to a fraction of the learning rate (1e-3 here); key
  biases have an identically zero gradient (softmax ignores a shift shared by all keys),
  so Adam turns pure noise into steps of up to lr: they get lr per step."""
  import numpy as np

  from dualtalk_jax import params as params_lib

  fa, fb = params_lib.flatten(a), params_lib.flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    if exact:
      np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))
    else:
      tol = 4 * 1e-3 if k.endswith(".k_proj.bias") else atol
      np.testing.assert_allclose(fa[k], fb[k], atol=tol, rtol=0, err_msg=str(k))
