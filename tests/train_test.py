"""Training: no host reads between log steps, 1 vs 8 devices, exact resume (also from a
damaged newest checkpoint), restore on another mesh, NaN stop, validation, dropout keys
(preemption and 2 hosts: train_multihost_test.py; the quickstart: quickstart_test.py)."""

import contextlib

import jax
import numpy as np
import pytest

from dualtalk_jax import checkpoint, params as params_lib
from dualtalk_jax.train import builder, loop, step as step_lib
from conftest import assert_params, train_config, train_run


@contextlib.contextmanager
def host_reads_disallowed():
  """`jax.transfer_guard_device_to_host("disallow")`, made to fail on CPU too.

  On CPU a jax.Array already lives in host memory and the guard never fires, so this also
  makes every read of a value (float, int, bool, item, print, device_get) and every
  block_until_ready raise while the guard in force on this thread says "disallow". It
  does not see numpy's buffer protocol (np.asarray of a CPU array), which the real guard
  on an accelerator does."""
  from jax._src import array, config

  def disallowed():
    return config.transfer_guard_device_to_host.value == "disallow"

  value, block = array.ArrayImpl._value, array.ArrayImpl.block_until_ready

  def guarded_value(self):
    if disallowed():
      raise RuntimeError(f"device-to-host read of {self.aval.str_short()} while disallowed")
    return value.fget(self)

  def guarded_block(self):
    if disallowed():
      raise RuntimeError(f"host waited for {self.aval.str_short()} while device-to-host transfers are disallowed")
    return block(self)

  array.ArrayImpl._value, array.ArrayImpl.block_until_ready = property(guarded_value), guarded_block
  try:
    with jax.transfer_guard_device_to_host("disallow"):
      yield
  finally:
    array.ArrayImpl._value, array.ArrayImpl.block_until_ready = value, block


# The straight run's mesh. The runs of this file that use it share its compiled initialisation
# and (same optimizer) train step through the suite's compilation cache.
MESH = {"mesh.data": 4, "mesh.fsdp": 2}


@pytest.fixture(scope="module")
def straight(data_dirs, tmp_path_factory):
  """4 steps on all 8 devices (mesh data=4 x fsdp=2), uninterrupted, logging at steps 2 and 4, all of it
  under `host_reads_disallowed`: only the loop's sync points (set-up, log/checkpoint steps, the end)
  may read the device, steps 1 and 3 may not. Returns (final metrics, host params, workdir); the
  workdir holds the checkpoints of steps 2 and 4."""
  config = train_config(data_dirs, total_steps=4, log_every=2, **MESH)
  workdir = tmp_path_factory.mktemp("straight")
  with host_reads_disallowed():
    out = loop.train_and_evaluate(config, str(workdir))
  return out["metrics"], step_lib.host_params(out["state"]), workdir


def test_steps_between_log_steps_read_nothing_from_the_device(straight):
  x = jax.jit(lambda a: a * 2)(jax.numpy.ones(()))
  with host_reads_disallowed():  # the guard catches what a per-step `float(m["loss"])` would do
    with pytest.raises(RuntimeError, match="device-to-host read"):
      float(x)
    with pytest.raises(RuntimeError, match="host waited"):
      jax.block_until_ready(x)
  assert straight[0]["step"] == 4 and np.isfinite(straight[0]["loss"])


def test_one_and_eight_devices_give_the_same_training(data_dirs, tmp_path, straight):
  assert jax.device_count() == 8
  m1, p1 = train_run(data_dirs, tmp_path / "one", total_steps=4, **{"mesh.num_devices": 1})
  m8, p8, _ = straight
  for k in ("loss", "loss_exp", "loss_jaw", "loss_neck", "loss_velocity"):
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5)
  assert_params(p1, p8, exact=False)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_resume_equals_straight_run_exactly_even_from_a_damaged_checkpoint(data_dirs, tmp_path, straight):
  """Steps 1-3 saved, then a file of step 3 truncated (a disk fault after the save): the resumed
  run names step 3, sets it aside, restarts from step 2 and ends exactly where a straight run does,
  and the failed restore's late reads report nothing (conftest: as in the entry points)."""
  first, _ = train_run(data_dirs, tmp_path / "resumed", total_steps=3, checkpoint_every=1, **MESH)
  assert first["step"] == 3
  step3 = tmp_path / "resumed" / "checkpoints" / "3"
  victim = max((step3 / "params" / "d").iterdir(), key=lambda p: p.stat().st_size)  # the merged OCDBT data
  victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  metrics, resumed = train_run(data_dirs, tmp_path / "resumed", total_steps=4, **MESH)
  assert metrics["step"] == 4
  assert metrics["loss"] == straight[0]["loss"]
  assert_params(straight[1], resumed, exact=True)
  assert [p.name.split("-")[0] for p in (tmp_path / "resumed" / checkpoint.DAMAGED).iterdir()] == ["3"]
  params, _, step = checkpoint.restore_params(str(tmp_path / "resumed"))
  assert step == 4  # step 3 was saved again, and 4 after it


def test_restore_onto_a_different_mesh(data_dirs, tmp_path, straight):
  """The straight run's step-2 checkpoint (8 devices, data=4 x fsdp=2) resumed on 4 devices, fsdp=4."""
  import shutil

  shutil.copytree(straight[2], tmp_path / "moved")
  shutil.rmtree(tmp_path / "moved" / "checkpoints" / "4")
  metrics, moved = train_run(data_dirs, tmp_path / "moved", total_steps=4, **{"mesh.num_devices": 4, "mesh.data": 1, "mesh.fsdp": 4})
  assert metrics["step"] == 4
  np.testing.assert_allclose(metrics["loss"], straight[0]["loss"], rtol=1e-5)
  assert_params(straight[1], moved, exact=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dirs, tmp_path):
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite loss at step (2|3) \(steps (2|3)-(2|3) checked at step (2|3)\)"):
    train_run(data_dirs, tmp_path / "nan", total_steps=6, checkpoint_every=1, **{"optim.learning_rate": 1e30}, **MESH)
  ckpt = checkpoint.TrainCheckpointer(str(tmp_path / "nan"), builder.model_config(train_config(data_dirs)))
  good = ckpt.latest_step()
  ckpt.close()
  assert good in (1, 2)
  params, _, step = checkpoint.restore_params(str(tmp_path / "nan"))
  assert step == good
  assert all(np.isfinite(v).all() for v in params_lib.flatten(params).values())


def test_validation_and_best_checkpoint(data_dirs, tmp_path):
  metrics, _ = train_run(data_dirs, tmp_path / "val", total_steps=2, eval_every=2, **MESH)
  assert np.isfinite(metrics["val_loss"]) and metrics["val_loss"] > 0
  _, _, step = checkpoint.restore_params(str(tmp_path / "val" / "best"))
  assert step == 2


def test_train_step_draws_fresh_dropout_each_step_and_repeats_per_step(data_dirs):
  from dualtalk_jax.config import CONFIGS
  from dualtalk_jax.data import pipeline

  model_def = step_lib.ModelDef(CONFIGS["tiny"])
  tx = step_lib.make_optimizer(step_lib.OptimConfig(learning_rate=0.0), model_def.abstract_params)
  state = jax.jit(lambda: step_lib.train_state(tx, model_def.init_params(0)))()
  batch = next(iter(pipeline.make_train_dataset(data_dirs["train"], window_frames=25, batch_size=4)))
  batch = {k: batch[k] for k in step_lib.BATCH_NDIM}
  train_step = jax.jit(step_lib.make_train_step(model_def, tx, seed=0))  # lr 0: params never move
  losses = []
  for _ in range(3):
    state, m = train_step(state, batch)
    losses.append(float(m["loss"]))
  assert len(set(losses)) == 3  # a new dropout/SpecAugment/LayerDrop draw every step
  state["step"] = jax.numpy.zeros((), jax.numpy.int32)
  _, m = train_step(state, batch)
  assert float(m["loss"]) == losses[0]  # ... that depends on the step alone
