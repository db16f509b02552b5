"""Shared pytest set-up (repo root on sys.path, 8 virtual CPU devices, the entry points' runtime
set-up) and the helpers several test files use."""
import atexit
import os
import pathlib
import shutil
import sys
import tempfile

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
