"""experiments.ablate: variants, resuming, outputs."""

import json
import os
import subprocess
import sys

import pytest

from dualtalk_jax.train import ablation
from experiments.configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_variants():
  assert ablation.parse_variants("all") == list(ablation.VARIANTS)
  assert ablation.parse_variants("mfcc,full") == ["full", "mfcc"]  # table order
  with pytest.raises(ValueError, match="unknown variant"):
    ablation.parse_variants("full,no_lstm")


def _config(tmp_path):
  c = quickstart.get_config()
  c.synthetic.enabled = False  # the fake work below reads no data
  c.data.train_dir = str(tmp_path / "train")
  c.data.val_dir = str(tmp_path / "val")
  return c


def test_grid_resumes_finished_variants(tmp_path):
  calls = []

  def fake(config, vdir):
    calls.append((config.ablation, vdir))
    if config.ablation == "mfcc" and len(calls) == 2:
      raise KeyboardInterrupt  # interrupted in the middle of the second variant
    return {"mse_jaw": 1.0 + len(calls), "fid_exp": float("nan")}

  c = _config(tmp_path)
  with pytest.raises(KeyboardInterrupt):
    ablation.run_grid(c, str(tmp_path / "w"), ["full", "mfcc", "no_modulation"], train_and_score=fake, log=lambda s: None)
  assert [a for a, _ in calls] == ["", "mfcc"]
  assert json.load(open(tmp_path / "w" / "ablation.json")) == {"full": {"mse_jaw": 2.0, "fid_exp": None}}
  assert not (tmp_path / "w" / "variants" / "mfcc" / ablation.FINISHED).exists()
  out = ablation.run_grid(c, str(tmp_path / "w"), ["full", "mfcc", "no_modulation"], train_and_score=fake,
                          log=lambda s: None)
  # `full` was finished: neither trained nor scored again; the others ran once each, in their own workdirs
  assert [a for a, _ in calls[2:]] == ["mfcc", "no_modulation"]
  assert calls[2][1] == str(tmp_path / "w" / "variants" / "mfcc")
  assert list(out) == ["full", "mfcc", "no_modulation"] and out["full"]["mse_jaw"] == 2.0
  md = (tmp_path / "w" / "ablation.md").read_text()
  assert "| replace Audio Feature Extractor with MFCC | - |" in md and "Frames where the target listens" in md
  c.ablation = "mfcc"
  with pytest.raises(ValueError, match="sets each variant's ablation"):
    ablation.run_grid(c, str(tmp_path / "w"), ["full"], train_and_score=fake)


@pytest.mark.slow
def test_cli_trains_scores_and_resumes(tmp_path):
  w = tmp_path / "w"
  args = [sys.executable, "-m", "experiments.ablate", "--config=experiments/configs/quickstart.py", f"--workdir={w}",
          "--variants=full,no_partner_motion", "--config.total_steps=2", "--config.synthetic.num_train_clips=4",
          "--config.synthetic.num_val_clips=1", "--config.synthetic.min_seconds=3", "--config.synthetic.max_seconds=4",
          "--config.checkpoint_every=2", "--config.eval_every=0", "--config.batch_size=2",
          "--config.mesh.num_devices=1"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(w / "ablation.json"))
  assert list(res) == ["full", "no_partner_motion"]
  assert "mse_jaw" in res["full"] and "mse_jaw_speaking" in res["full"] and "sid_exp_listening" in res["full"]
  assert json.load(open(w / "variants" / "no_partner_motion" / "checkpoints" / "model_config.json"))["ablation"] == \
      "no_partner_motion"
  stamp = os.path.getmtime(w / "variants" / "full" / ablation.FINISHED)
  r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
  assert r.returncode == 0 and "full: finished earlier" in r.stdout, r.stderr[-3000:]
  assert os.path.getmtime(w / "variants" / "full" / ablation.FINISHED) == stamp


def test_grid_synthesizes_its_data_once_into_the_workdir(tmp_path):
  """With synthetic.enabled and no data dirs, the grid makes the conversations in W/data and
  every variant reads them (none synthesizes again)."""
  seen = []
  c = quickstart.get_config()
  c.synthetic.num_train_clips, c.synthetic.num_val_clips = 2, 1
  c.synthetic.min_seconds, c.synthetic.max_seconds = 3.0, 3.5
  ablation.run_grid(c, str(tmp_path / "w"), ["full", "mfcc"],
                    train_and_score=lambda cfg, vdir: seen.append(cfg) or {"mse_jaw": 1.0}, log=lambda s: None)
  for split in ("train", "val"):
    assert (tmp_path / "w" / "data" / split / "manifest.json").exists()
    assert [cfg.data[f"{split}_dir"] for cfg in seen] == [str(tmp_path / "w" / "data" / split)] * 2
  assert not any(cfg.synthetic.enabled for cfg in seen)
