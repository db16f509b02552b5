"""Configs: every config file loads and declares nothing the base config lacks; `--config` is a
config file in every CLI, and the old spelling (a model name) still works."""

import importlib
import os
import pathlib
import subprocess
import sys

from conftest import ROOT
from dualtalk_jax.train import configs

CONFIG_DIR = ROOT / "experiments" / "configs"
VARIANTS = {"dualtalk.py": ["large", "base", "tiny"], "quickstart.py": [""]}


def _fields(c, prefix=""):
  out = set()
  for k, v in c.items():
    out |= _fields(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k}
  return out


def test_every_config_file_loads_and_declares_only_base_fields():
  files = sorted(p.name for p in CONFIG_DIR.glob("*.py") if p.name != "__init__.py")
  assert files == sorted(VARIANTS)
  base_fields = _fields(configs.base())
  assert {"data.eval_metrics", "eval_window_seconds", "synthetic.num_train_clips"} <= base_fields
  for name in files:
    module = importlib.import_module(f"experiments.configs.{name[:-3]}")
    for arg in VARIANTS[name]:
      c = module.get_config(arg)
      assert _fields(c) == base_fields, (name, arg, _fields(c) ^ base_fields)
      assert c.data.feature_cache is False and c.optim.freeze_wav2vec2 is False  # optional modes, off
      assert c.ablation == ""  # the released model; experiments.ablate sets the variants
  assert configs.base("tiny").model == "tiny" and configs.quickstart().eval_window_seconds == 2.0


def test_config_flag_takes_a_model_name_with_a_note(tmp_path):
  """`--config=large` (the spelling of convert/evaluate/infer/stream) is dualtalk.py:large in train
  too, and `--config.data.eval_metrics` exists there (it was quickstart-only)."""
  r = subprocess.run([sys.executable, "-m", "experiments.train", "--config=large", "--config.data.eval_metrics=False",
                      f"--workdir={tmp_path / 'w'}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                     env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
  assert r.returncode == 1, r.stderr[-3000:]
  assert "--config=large is read as --config=experiments/configs/dualtalk.py:large" in r.stderr
  assert r.stderr.strip().splitlines()[-1] == ("error: config.data.train_dir is empty: point it at a folder made by "
                                               "experiments.preprocess")
  assert not pathlib.Path(tmp_path / "w").exists()
