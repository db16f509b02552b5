"""Training as separate processes through `experiments.train`: SIGTERM saves and exits 0; 2 hosts
x 4 CPU devices (gloo) preempt together, resume, and match 1 host x 8 devices."""

import numpy as np

from dualtalk_jax import checkpoint
from dualtalk_jax.train import builder
from conftest import ROOT, assert_params, train_config, train_run


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_dirs, tmp_path):
  import signal
  import subprocess
  import sys

  args = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/quickstart.py", f"--workdir={tmp_path / 'w'}",
          "--config.synthetic.enabled=False", f"--config.data.train_dir={data_dirs['train']}", "--config.data.val_dir=",
          "--config.data.window_frames=25", "--config.data.thread_count=0", "--config.batch_size=8", "--config.total_steps=100000",
          "--config.checkpoint_every=100000", "--config.log_every=1", "--config.eval_every=0", "--config.progress_bar=False",
          "--config.mesh.num_devices=1"]
  proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:
    if "step 3:" in line:
      proc.send_signal(signal.SIGTERM)
      break
  rest = proc.stderr.read()
  assert proc.wait(timeout=300) == 0, rest[-2000:]
  assert "preempted: saved step" in rest
  ckpt = checkpoint.TrainCheckpointer(str(tmp_path / "w"), builder.model_config(train_config(data_dirs)))
  step = ckpt.latest_step()
  ckpt.close()
  assert 3 <= step < 100000


def _free_port():
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch_two_hosts(data_dirs, workdir, log_dir, *flags):
  """2 processes x 4 CPU devices (gloo collectives) of `experiments.train`, output to log_dir/host{i}.log."""
  import os
  import subprocess
  import sys

  common = ["--config=experiments/configs/quickstart.py", "--config.synthetic.enabled=False",
            f"--config.data.train_dir={data_dirs['train']}", f"--config.data.val_dir={data_dirs['val']}",
            "--config.data.window_frames=25", "--config.data.thread_count=0", "--config.batch_size=8",
            "--config.checkpoint_every=100000", "--config.log_every=1", "--config.eval_every=1",
            "--config.progress_bar=False", "--config.mesh.fsdp=2", f"--workdir={workdir}"]
  # The suite's XLA flags (conftest: -O0 for the fast suite) with 4 devices per process instead of 8.
  xla_flags = os.environ["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8",
                                              "--xla_force_host_platform_device_count=4")
  env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
  port = _free_port()
  procs = []
  for i in range(2):
    log = open(log_dir / f"host{i}.log", "w")
    procs.append(subprocess.Popen([sys.executable, "-m", "experiments.train", *common, *flags,
                                   f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    log.close()
  return procs


def _wait_all(procs, log_dir, timeout=600):
  import subprocess

  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise
  logs = [(log_dir / f"host{i}.log").read_text() for i in range(len(procs))]
  assert codes == [0] * len(procs), "\n".join(l[-3000:] for l in logs)
  return logs


def test_two_hosts_preempt_together_resume_and_match_one_host(data_dirs, tmp_path):
  """2 hosts x 4 CPU devices, each reading its own data shard and validating its share of the val
  split every step. SIGTERM to host 1 alone: both hosts save the same step and exit 0. A rerun
  resumes from that step; its training and its validation numbers are those of 1 host x 8 devices."""
  import json
  import re
  import signal
  import time

  work, logs_dir = tmp_path / "multi", tmp_path / "logs"
  logs_dir.mkdir()
  resume_logs_dir = logs_dir / "resume"
  resume_logs_dir.mkdir()
  procs = _launch_two_hosts(data_dirs, work, logs_dir, "--config.total_steps=100000")
  deadline = time.time() + 600
  while "step 2:" not in (logs_dir / "host1.log").read_text():
    assert time.time() < deadline and all(p.poll() is None for p in procs), (logs_dir / "host1.log").read_text()[-3000:]
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGTERM)
  logs = _wait_all(procs, logs_dir)
  saved = [int(re.search(r"preempted: saved step (\d+)", log).group(1)) for log in logs]
  assert saved[0] == saved[1] >= 2, saved
  step = saved[0]
  ckpt = checkpoint.TrainCheckpointer(str(work), builder.model_config(train_config(data_dirs)))
  assert ckpt.latest_step() == step
  ckpt.close()

  procs = _launch_two_hosts(data_dirs, work, resume_logs_dir, f"--config.total_steps={step + 1}")
  logs = _wait_all(procs, resume_logs_dir)
  assert all(f"resumed from {work / 'checkpoints'} step {step}" in log for log in logs)
  multi = json.loads((work / "last_metrics.json").read_text())
  assert multi["step"] == step + 1

  single, single_params = train_run(data_dirs, tmp_path / "single", total_steps=step + 1, checkpoint_every=1000,
                              eval_every=1000, **{"mesh.fsdp": 2, "data.num_shards": 2})
  for k in ("loss", "loss_exp", "loss_jaw", "loss_neck", "loss_velocity", "val_loss", "val_loss_exp",
            "val_loss_jaw", "val_loss_neck", "val_loss_velocity"):
    np.testing.assert_allclose(multi[k], single[k], rtol=1e-5, err_msg=k)
  params, _, saved_step = checkpoint.restore_params(str(work))
  assert saved_step == step + 1
  assert_params(params, single_params, exact=False)
