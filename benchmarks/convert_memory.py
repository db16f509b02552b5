r"""Peak memory and time of checkpoint conversion, both directions, on a full-size file.

  python benchmarks/convert_memory.py [--config=large] [--workdir=/tmp/convert_bench] [--keep]

Builds a released-layout state dict for `--config` (the third_party tree's keys, shapes
and order; random values; legacy `weight_g/weight_v` naming, as torch 1.12 saved the
released `DualTalk.pth`), saves it with torch.save, then runs

    python -m experiments.convert --input=DualTalk.pth --output=ckpt --config=...
    python -m experiments.convert --input=ckpt --output=back.pth --weight_norm=legacy

each in a fresh process, and prints wall time and peak RSS (the child's ru_maxrss) as a
ratio to the file's size. Finally it checks the round trip is bit-identical (keys, order,
dtypes, values). Needs torch; about 3x the file size of free disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "large", "model config: large, base or tiny")
_WORKDIR = flags.DEFINE_string("workdir", None, "where to write the files (default: a temp dir)")
_KEEP = flags.DEFINE_bool("keep", False, "keep the files")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _make_released_file(path: str, config: str) -> int:
  import torch

  from dualtalk_jax.config import get_model_config
  from third_party.dualtalk_torch import DualTalk as TorchDualTalk

  with torch.device("meta"):
    shapes = {k: v.shape for k, v in TorchDualTalk.from_config(get_model_config(config)).state_dict().items()}
  legacy = lambda k: k.replace("parametrizations.weight.original0", "weight_g").replace(
      "parametrizations.weight.original1", "weight_v")
  g = torch.Generator().manual_seed(0)
  sd = {legacy(k): torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
  torch.save(sd, path)
  return sum(v.numel() for v in sd.values())


def _run(args: list[str]) -> tuple[float, int]:
  """(wall seconds, peak RSS bytes) of `python -m experiments.convert args` in a child."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  t0 = time.perf_counter()
  # RUSAGE_CHILDREN's ru_maxrss is the max over all waited-for children, so each
  # conversion runs under its own small wrapper process that reports just that child.
  wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
  out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "experiments.convert", *args],
                       env=env, cwd=ROOT, check=True, capture_output=True, text=True)
  return time.perf_counter() - t0, int(out.stdout.strip().splitlines()[-1]) * 1024


def _identical(a_path: str, b_path: str) -> str:
  import torch

  a = torch.load(a_path, mmap=True, weights_only=True)
  b = torch.load(b_path, mmap=True, weights_only=True)
  if list(a) != list(b):
    return "keys or their order differ"
  bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
  return f"{len(bad)} tensors differ: {bad[:5]}" if bad else f"bit-identical ({len(a)} tensors, same order)"


def main(argv):
  del argv
  work = _WORKDIR.value or tempfile.mkdtemp(prefix="dtj_convert_")
  os.makedirs(work, exist_ok=True)
  pth, ckpt, back = (os.path.join(work, n) for n in ("DualTalk.pth", "ckpt", "back.pth"))
  try:
    shutil.rmtree(ckpt, ignore_errors=True)
    if os.path.exists(back):
      os.remove(back)
    n = _make_released_file(pth, _CONFIG.value)
    size = os.path.getsize(pth)
    print(f"config {_CONFIG.value}: {n:,} parameters, file {size / 1e9:.2f} GB; cpu cores {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, args in (("torch -> orbax", [f"--input={pth}", f"--output={ckpt}", f"--config={_CONFIG.value}"]),
                       ("orbax -> torch", [f"--input={ckpt}", f"--output={back}", "--weight_norm=legacy"])):
      dt, peak = _run(args)
      print(f"{name}: {dt:.1f} s wall, peak RSS {peak / 2**30:.2f} GiB = {peak / size:.2f}x the file")
    print("round trip:", _identical(pth, back))
  finally:
    if not _KEEP.value:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
