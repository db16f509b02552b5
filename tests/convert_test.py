"""Checkpoint conversion: exact round trips, output parity, the released key set, bad inputs."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx

from dualtalk_jax import audio, checkpoint, params as params_lib
from dualtalk_jax.config import CONFIGS
from dualtalk_jax.convert import pytorch, table
from dualtalk_jax.eval.predict import predict
from dualtalk_jax.models.dualtalk import DualTalk, abstract_model
from third_party.dualtalk_torch import DualTalk as TorchDualTalk

ROOT = pathlib.Path(__file__).resolve().parents[1]
TSV = ROOT.parent / "shared" / "spec" / "official_state_dict_large.tsv"
TINY = CONFIGS["tiny"]


def random_torch_model(seed=0):
  torch.manual_seed(seed)
  model = TorchDualTalk.from_config(TINY)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


def legacy(sd):
  return {table.output_key(k, "legacy"): v for k, v in sd.items()}


def assert_state_dicts_identical(a, b):
  assert list(a) == list(b)
  for k in a:
    assert a[k].dtype == b[k].dtype, k
    assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("scan_layers", [True, False], ids=["stacked", "unrolled"])
@pytest.mark.parametrize("weight_norm", ["new", "legacy"])
def test_torch_jax_torch_is_bit_identical(tmp_path, weight_norm, scan_layers):
  cfg = dataclasses.replace(TINY, scan_layers=scan_layers)
  sd = random_torch_model().state_dict()
  if weight_norm == "legacy":
    sd = legacy(sd)
  torch.save(sd, tmp_path / "in.pth")
  pytorch.torch_to_checkpoint(str(tmp_path / "in.pth"), str(tmp_path / "ckpt"), cfg)
  params, stored, _ = checkpoint.restore_params(str(tmp_path / "ckpt"))
  assert stored == cfg
  layer = params_lib.flatten(params)
  q = "joint_encoder.audio_encoder1.encoder.layers" + ("" if scan_layers else ".1") + ".attention.q_proj.kernel"
  want = sd["joint_encoder.audio_encoder1.encoder.layers.1.attention.q_proj.weight"].numpy().T
  np.testing.assert_array_equal(layer[q][1] if scan_layers else layer[q], want)
  pytorch.checkpoint_to_torch(str(tmp_path / "ckpt"), str(tmp_path / "out.pth"), weight_norm=weight_norm)
  back = torch.load(tmp_path / "out.pth", weights_only=True)
  assert_state_dicts_identical(sd, back)
  TorchDualTalk.from_config(TINY).load_state_dict(back if weight_norm == "new" else sd, strict=True)


def test_checkpoint_layouts_convert_on_load(tmp_path):
  """A checkpoint of one layer layout restores into the other exactly (restore_params and
  params.load), and a model_config.json without `scan_layers` (written before layer
  scanning) is read as the unrolled layout."""
  torch.save(random_torch_model(2).state_dict(), tmp_path / "m.pth")
  unrolled_cfg = dataclasses.replace(TINY, scan_layers=False)
  pytorch.torch_to_checkpoint(str(tmp_path / "m.pth"), str(tmp_path / "stacked"), TINY)
  pytorch.torch_to_checkpoint(str(tmp_path / "m.pth"), str(tmp_path / "old"), unrolled_cfg)
  cfg_file = tmp_path / "old" / checkpoint.MODEL_CONFIG
  d = json.loads(cfg_file.read_text())
  del d["scan_layers"]
  cfg_file.write_text(json.dumps(d))
  assert checkpoint.read_model_config(str(tmp_path / "old")) == unrolled_cfg

  flat = lambda params: {p: np.asarray(v) for p, v in params_lib.flatten(params).items()}
  stacked, cfg_s, _ = checkpoint.restore_params(str(tmp_path / "stacked"))
  unrolled, cfg_u, _ = checkpoint.restore_params(str(tmp_path / "old"))
  as_stacked, cfg_us, _ = checkpoint.restore_params(str(tmp_path / "old"), scan_layers=True)
  as_unrolled, cfg_su, _ = checkpoint.restore_params(str(tmp_path / "stacked"), scan_layers=False)
  assert (cfg_s, cfg_u, cfg_us, cfg_su) == (TINY, unrolled_cfg, TINY, unrolled_cfg)
  for want, got in ((flat(stacked), flat(as_stacked)), (flat(unrolled), flat(as_unrolled))):
    assert want.keys() == got.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
      assert got[k].dtype == want[k].dtype
  assert "joint_encoder.audio_encoder2.encoder.layers.attention.k_proj.bias" in flat(stacked)
  assert "joint_encoder.audio_encoder2.encoder.layers.1.attention.k_proj.bias" in flat(unrolled)

  model = DualTalk(TINY, rngs=nnx.Rngs(0))  # stacked model, unrolled checkpoint
  params_lib.load(model, unrolled)
  for k, v in flat(params_lib.of(model)).items():
    np.testing.assert_array_equal(v, flat(stacked)[k], err_msg=k)


def test_resuming_a_workdir_of_the_other_layout_names_both(tmp_path):
  checkpoint.TrainCheckpointer(str(tmp_path), dataclasses.replace(TINY, scan_layers=False)).close()
  with pytest.raises(ValueError, match=r"unrolled wav2vec2 layers \(scan_layers=False\), the run uses stacked wav2vec2 "
                                       r"layers \(scan_layers=True\)"):
    checkpoint.TrainCheckpointer(str(tmp_path), TINY)


def test_jax_torch_jax_gives_identical_nnx_state(tmp_path):
  model = DualTalk(TINY, rngs=nnx.Rngs(3))
  params = params_lib.of(model)
  sd = pytorch.params_to_state_dict(params, TINY)
  pytorch.write_torch_file(sd, str(tmp_path / "m.safetensors"))
  again = pytorch.state_dict_to_params(pytorch.read_torch_file(str(tmp_path / "m.safetensors")), TINY)
  a, b = params_lib.flatten(params), params_lib.flatten(again)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), b[k])
    assert np.asarray(a[k]).dtype == b[k].dtype


def test_converted_torch_model_gives_the_same_outputs(tmp_path):
  ref = random_torch_model(1)
  torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "wrapped.pth")
  pytorch.torch_to_checkpoint(str(tmp_path / "wrapped.pth"), str(tmp_path / "ckpt"), TINY)
  params, cfg, _ = checkpoint.restore_params(str(tmp_path / "ckpt"))
  model = DualTalk(cfg, rngs=nnx.Rngs(0))
  params_lib.load(model, params)
  model.eval()
  rng = np.random.default_rng(0)
  a = audio.normalize(rng.normal(size=11000).astype(np.float32))[None]
  b = audio.normalize(rng.normal(size=11000).astype(np.float32))[None]
  m = rng.normal(size=(1, 20, 56)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(m)).numpy()
  np.testing.assert_allclose(np.asarray(predict(model, a, b, m)), want, atol=1e-5, rtol=0)


@pytest.mark.skipif(not TSV.exists(), reason="../shared is absent")
@pytest.mark.parametrize("scan_layers", [True, False], ids=["stacked", "unrolled"])
def test_large_export_has_exactly_the_released_keys_and_shapes(scan_layers):
  rows = [line.split("\t") for line in TSV.read_text().splitlines()[1:]]
  want = {k: tuple(int(x) for x in s.strip("()").split(",") if x.strip()) for k, s in rows}
  got = table.torch_shapes(params_lib.of(abstract_model(dataclasses.replace(CONFIGS["large"], scan_layers=scan_layers))))
  assert got == want
  assert len(got) == 932


def test_truncated_file_is_a_clear_error(tmp_path):
  torch.save(random_torch_model().state_dict(), tmp_path / "full.pth")
  data = (tmp_path / "full.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="cut.pth: cannot read torch checkpoint"):
    pytorch.torch_to_checkpoint(str(tmp_path / "cut.pth"), str(tmp_path / "out"), TINY)
  assert os.listdir(tmp_path) == ["full.pth", "cut.pth"] or sorted(os.listdir(tmp_path)) == ["cut.pth", "full.pth"]


def test_state_dict_of_another_model_lists_the_keys(tmp_path):
  torch.save(torch.nn.Sequential(torch.nn.Linear(3, 4)).state_dict(), tmp_path / "other.pth")
  with pytest.raises(table.ConversionError, match=r"other.pth does not match.*missing key.*unknown key\(s\): 0.bias, 0.weight"):
    pytorch.torch_to_checkpoint(str(tmp_path / "other.pth"), str(tmp_path / "out"), TINY)
  assert sorted(os.listdir(tmp_path)) == ["other.pth"]


def test_tiny_checkpoint_with_large_config_is_refused(tmp_path):
  torch.save(random_torch_model().state_dict(), tmp_path / "tiny.pth")
  with pytest.raises(table.ConversionError, match="mis-shaped key"):
    pytorch.torch_to_checkpoint(str(tmp_path / "tiny.pth"), str(tmp_path / "out"), CONFIGS["large"])
  assert sorted(os.listdir(tmp_path)) == ["tiny.pth"]


def test_existing_outputs_need_overwrite(tmp_path):
  torch.save(random_torch_model().state_dict(), tmp_path / "m.pth")
  pytorch.torch_to_checkpoint(str(tmp_path / "m.pth"), str(tmp_path / "ckpt"), TINY)
  with pytest.raises(FileExistsError, match="ckpt: already exists"):
    pytorch.torch_to_checkpoint(str(tmp_path / "m.pth"), str(tmp_path / "ckpt"), TINY)
  before = (tmp_path / "m.pth").read_bytes()
  with pytest.raises(FileExistsError, match="m.pth: already exists"):
    pytorch.checkpoint_to_torch(str(tmp_path / "ckpt"), str(tmp_path / "m.pth"))
  assert (tmp_path / "m.pth").read_bytes() == before
  pytorch.torch_to_checkpoint(str(tmp_path / "m.pth"), str(tmp_path / "ckpt"), TINY, overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["ckpt", "m.pth"]


def test_cli_converts_both_ways_and_reports_errors(tmp_path):
  torch.save(random_torch_model().state_dict(), tmp_path / "m.pth")
  run = lambda *args: subprocess.run([sys.executable, "-m", "experiments.convert", *args], cwd=ROOT, capture_output=True, text=True)
  r = run(f"--input={tmp_path / 'm.pth'}", f"--output={tmp_path / 'ckpt'}", "--config=tiny")
  assert r.returncode == 0, r.stderr
  r = run(f"--input={tmp_path / 'ckpt'}", f"--output={tmp_path / 'legacy.pth'}", "--weight_norm=legacy")
  assert r.returncode == 0, r.stderr
  keys = torch.load(tmp_path / "legacy.pth", weights_only=True).keys()
  assert any(k.endswith("pos_conv_embed.conv.weight_g") for k in keys)
  r = run(f"--input={tmp_path / 'm.pth'}", f"--output={tmp_path / 'ckpt'}", "--config=tiny")
  assert r.returncode == 1 and "already exists" in r.stderr
