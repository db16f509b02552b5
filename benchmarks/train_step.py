"""Benchmark: one DualTalk training step, JAX (the real jitted step) vs the PyTorch tree, same run.

What is measured: the wall time of one optimizer step on a batch of `--batch` windows of
`--frames` frames (frames x 640 samples of 16 kHz audio per speaker; the demo pair under
/work/shared/samples/dualtalk_demo, tiled, or synthetic audio if absent), in training mode
(dropout, SpecAugment on), from the same initial weights:

  JAX      `make_train_step` of dualtalk_jax/train/step.py: jitted, state donated, Adam
           (`make_optimizer`, lr 1e-4, conv feature extractors frozen), masked released loss;
           compiled ahead of time (compile time reported apart). Its FLOPs are counted on
           its jaxpr (`aot.jaxpr_flops`: scanned layers once per layer); on a GPU the model
           FLOP utilisation (MFU) is printed against the device's peak (bf16 peak for
           `--dtype bfloat16`, TF32 for float32).
  PyTorch  `third_party.dualtalk_torch.DualTalk` (weights exported from ours with
           `params_to_state_dict`, `load_state_dict(strict=True)`), train(), feature
           extractors frozen, `compute_loss`, `torch.optim.Adam(lr=1e-4)` over the trainable
           params, `torch.set_num_threads(os.cpu_count())`, f32.

LayerDrop is off by default (`--keep_layerdrop` keeps the config's 0.1): with it each step
skips a random subset of the wav2vec2 layers in both frameworks and step times scatter.

Schedule: after one warm-up step each, steps alternate JAX / PyTorch (`interleaved`), so
load from other processes hits both alike; medians give the step times and the ratio
PyTorch / JAX (> 1: JAX is faster). When both training states do not fit in memory together
(the large config needs about 11 GB per framework: params, Adam moments, gradients),
`--schedule auto` runs the JAX steps first, frees them, then the PyTorch steps
(`sequential`); the load average is printed for each phase.

  python benchmarks/train_step.py --config tiny --batch 2 --frames 200 --steps 10
  python benchmarks/train_step.py --config large --batch 1 --frames 200 --steps 3
  python benchmarks/train_step.py --config large --batch 8 --dtype bfloat16 --skip_torch   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.inference import SAMPLES_DIR, demo_clip, host_info, load_avg, tile  # noqa: E402

# Dense peak FLOP/s (no sparsity) by device kind substring: (bf16, tf32).
PEAKS = {"H200": (989e12, 494e12), "H100": (989e12, 494e12), "A100": (312e12, 156e12), "L4": (121e12, 60e12)}


def mem_available_bytes() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def make_batch(cfg, batch: int, frames: int, clip, seed: int = 0) -> dict:
  """A training batch (`BATCH_NDIM` keys) of `batch` full windows of `frames` frames."""
  from dualtalk_jax import audio

  spf = audio.SAMPLES_PER_FRAME
  s, t = frames * spf, frames
  assert audio.num_frames(s) == t
  rng = np.random.default_rng(seed)
  if clip is None:
    a_all = rng.normal(size=batch * s).astype(np.float32)
    b_all = rng.normal(size=batch * s).astype(np.float32)
    m_all = rng.normal(0, 0.3, size=(batch * t + 17, cfg.motion_dim)).astype(np.float32)
  else:
    a_all, b_all = tile(clip[0], batch * s), tile(clip[1], batch * s)
    m_all = tile(clip[2], batch * t + 17) if clip[2] is not None else rng.normal(0, 0.3, size=(batch * t + 17, 56))
  a = np.stack([audio.normalize(a_all[i * s:(i + 1) * s]) for i in range(batch)])
  b = np.stack([audio.normalize(b_all[i * s:(i + 1) * s]) for i in range(batch)])
  m_other = np.stack([m_all[i * t:(i + 1) * t] for i in range(batch)]).astype(np.float32)
  m_self = np.stack([m_all[i * t + 17:(i + 1) * t + 17] for i in range(batch)]).astype(np.float32)  # a target
  full = lambda n: np.full((batch,), n, np.int32)
  return {"audio_self": a, "audio_other": b, "motion_other": m_other, "motion_self": m_self,
          "audio_self_lengths": full(s), "audio_other_lengths": full(s), "motion_other_lengths": full(t),
          "num_frames": full(t)}


class JaxRunner:
  """The real jitted train step on its own state (donated and replaced every step)."""

  def __init__(self, cfg, holder: list, batch, *, dtype, seed, prng_impl):
    """`holder`: [initial params]; emptied once the state holds its own copy (saves a params' worth of memory)."""
    import jax
    import jax.numpy as jnp

    from dualtalk_jax.aot import jaxpr_flops
    from dualtalk_jax.train import step as step_lib

    self.jax = jax
    self.model_def = step_lib.ModelDef(cfg, dtype=jnp.dtype(dtype))
    tx = step_lib.make_optimizer(step_lib.OptimConfig(learning_rate=1e-4), self.model_def.abstract_params)
    self.state = jax.jit(lambda p: step_lib.train_state(tx, p))(holder.pop())
    gc.collect()
    self.batch = jax.device_put(batch)
    fn = step_lib.make_train_step(self.model_def, tx, seed=seed, prng_impl=prng_impl)
    t0 = time.perf_counter()
    traced = fn.trace(self.state, self.batch)
    self.compiled = traced.lower().compile()
    self.compile_s = time.perf_counter() - t0
    self.flops = jaxpr_flops(traced.jaxpr)

  def step(self):
    t0 = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch)
    loss = float(self.jax.block_until_ready(metrics["loss"]))
    return time.perf_counter() - t0, loss

  def close(self):
    del self.state, self.compiled, self.batch
    gc.collect()
    self.jax.clear_caches()


class TorchRunner:
  """The PyTorch tree with Adam over its trainable params (feature extractors frozen)."""

  def __init__(self, cfg, state_dict, batch, *, device, attn):
    import torch

    from third_party.dualtalk_torch import DualTalk as TorchDualTalk
    from third_party.dualtalk_torch import compute_loss

    self.torch, self.device, self.compute_loss = torch, device, compute_loss
    with torch.device("meta"):  # no random init: the strict load assigns every tensor (requires_grad kept)
      model = TorchDualTalk.from_config(cfg, attn_implementation=attn, freeze_feature_extractor=True)
    model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state_dict.items()}, strict=True,
                          assign=True)
    self.model = model.to(device).train()
    trainable = [p for p in self.model.parameters() if p.requires_grad]
    self.num_trainable = sum(p.numel() for p in trainable)
    self.opt = torch.optim.Adam(trainable, lr=1e-4)
    self.inputs = [torch.from_numpy(batch[k]).to(device) for k in ("audio_self", "audio_other", "motion_other")]
    self.target = torch.from_numpy(batch["motion_self"]).to(device)

  def _sync(self):
    if self.device == "cuda":
      self.torch.cuda.synchronize()

  def step(self):
    self._sync()
    t0 = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    loss = self.compute_loss(self.model(*self.inputs), self.target)
    loss.backward()
    self.opt.step()
    value = float(loss.detach())
    self._sync()
    return time.perf_counter() - t0, value

  def close(self):
    del self.model, self.opt, self.inputs, self.target
    gc.collect()


def peak_flops(device_kind: str, dtype: str) -> float | None:
  for name, (bf16, tf32) in PEAKS.items():
    if name.lower() in device_kind.lower():
      return bf16 if dtype == "bfloat16" else tf32
  return None


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="tiny", choices=["large", "base", "tiny"])
  ap.add_argument("--batch", type=int, default=2, help="windows per step")
  ap.add_argument("--frames", type=int, default=200, help="frames per window (x 640 audio samples)")
  ap.add_argument("--steps", type=int, default=5, help="timed steps per framework (after one warm-up step)")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="JAX compute dtype (params f32)")
  ap.add_argument("--schedule", default="auto", choices=["auto", "interleaved", "sequential"])
  ap.add_argument("--keep_layerdrop", action="store_true", help="keep the config's wav2vec2 LayerDrop (0.1)")
  ap.add_argument("--unrolled", action="store_true", help="scan_layers=False: the encoder layers as a list (debug form)")
  ap.add_argument("--torch_attn", default="eager", choices=["eager", "sdpa"])
  ap.add_argument("--torch_threads", type=int, default=0,
                  help="torch intra-op threads (default 0: os.cpu_count()); 1 helps torch on an oversubscribed CPU")
  ap.add_argument("--torch_device", default="auto", help="auto: cuda if JAX is on a GPU and torch sees one, else cpu")
  ap.add_argument("--skip_torch", action="store_true")
  ap.add_argument("--peak_tflops", type=float, default=0.0, help="device peak for MFU (default: from the device kind)")
  ap.add_argument("--samples_dir", default=SAMPLES_DIR)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--prng_impl", default="auto", choices=["auto", "rbg", "threefry2x32"],
                  help="the step's dropout/SpecAugment/LayerDrop PRNG (config.prng_impl; auto: rbg on TPU)")
  args = ap.parse_args()

  import jax
  import torch

  from dualtalk_jax.config import CONFIGS
  from dualtalk_jax.convert import pytorch
  from dualtalk_jax.train import step as step_lib

  torch.set_num_threads(args.torch_threads or os.cpu_count())
  backend = jax.default_backend()
  device_kind = jax.devices()[0].device_kind
  tdev = args.torch_device
  if tdev == "auto":
    tdev = "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"
  cfg = CONFIGS[args.config]
  if not args.keep_layerdrop:
    cfg = dataclasses.replace(cfg, wav2vec2=dataclasses.replace(cfg.wav2vec2, layerdrop=0.0))
  if args.unrolled:
    cfg = dataclasses.replace(cfg, scan_layers=False)
  print(f"# DualTalk train-step benchmark: config={args.config} (wav2vec2 layerdrop {cfg.wav2vec2.layerdrop}, scan_layers {cfg.scan_layers}), "
        f"batch {args.batch} x {args.frames} frames ({args.frames * 640 / 16000:g} s of audio per window), "
        f"JAX {args.dtype}, torch f32 on {tdev} attn={args.torch_attn}")
  print(f"# {host_info()}")

  clip = demo_clip(args.samples_dir)
  print(f"# audio: {'demo pair, tiled' if clip else 'synthetic (demo sample absent)'}")
  batch = make_batch(cfg, args.batch, args.frames, clip, args.seed)

  t0 = time.perf_counter()
  model_def = step_lib.ModelDef(cfg)
  params = model_def.init_params(args.seed)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  sd = None if args.skip_torch else pytorch.params_to_state_dict(jax.tree.map(np.asarray, params), cfg)
  print(f"# {n_params / 1e6:.1f} M params, init + export {time.perf_counter() - t0:.1f} s")
  del model_def
  holder = [params]
  del params

  # Each framework holds params + 2 Adam moments + gradients (+ the exported copy here).
  need = 4 * 4 * n_params * 1.25
  avail = mem_available_bytes()
  schedule = args.schedule
  if schedule == "auto":
    both_fit = avail is None or avail > 2 * need + 4 * n_params
    schedule = "interleaved" if args.skip_torch or backend != "cpu" or both_fit else "sequential"
  print(f"# schedule: {schedule} (memory available {avail / 2**30 if avail else float('nan'):.1f} GiB, "
        f"~{need / 2**30:.1f} GiB per framework)")

  def run_jax():
    r = JaxRunner(cfg, holder, batch, dtype=args.dtype, seed=args.seed, prng_impl=args.prng_impl)
    flops = f", {r.flops / 1e9:.1f} GFLOP per step (aot.jaxpr_flops)" if r.flops else ""
    print(f"JAX: compile {r.compile_s:.1f} s{flops}", flush=True)
    return r

  def run_torch():
    t0 = time.perf_counter()
    r = TorchRunner(cfg, sd, batch, device=tdev, attn=args.torch_attn)
    print(f"torch: built and loaded (strict) in {time.perf_counter() - t0:.1f} s, "
          f"{r.num_trainable / 1e6:.1f} M trainable params", flush=True)
    return r

  def timed(runners, label):
    """Warm-up step each, then `steps` rounds alternating the runners; returns per-runner times."""
    times = {name: [] for name in runners}
    first = {}
    for name, r in runners.items():
      dt, loss = r.step()
      first[name] = loss
      print(f"  {name} warm-up step {dt:.3f} s, loss {loss:.4f}", flush=True)
    loads = []
    for i in range(args.steps):
      parts = []
      for name, r in runners.items():
        dt, loss = r.step()
        if not np.isfinite(loss):
          raise FloatingPointError(f"{name}: non-finite loss at step {i + 1}")
        times[name].append(dt)
        parts.append(f"{name} {dt:.3f} s (loss {loss:.4f})")
      loads.append(os.getloadavg()[0])
      print(f"  {label} step {i + 1}/{args.steps}: " + ", ".join(parts) + f", load {loads[-1]:.2f}", flush=True)
    return times, first, statistics.mean(loads)

  jax_r = None
  if schedule == "interleaved":
    jax_r = run_jax()
    runners = {"JAX": jax_r}
    if not args.skip_torch:
      runners["torch"] = run_torch()
    times, first, load = timed(runners, "interleaved")
    loads = {k: load for k in times}
  else:
    spill = None
    if sd is not None:  # keep the torch copy of the initial weights on disk while JAX runs
      from safetensors.numpy import save_file
      spill = os.path.join(tempfile.mkdtemp(prefix="dualtalk_bench_"), "init.safetensors")
      save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, spill)
      sd = None
      gc.collect()
    try:
      jax_r = run_jax()
      times, first, load_j = timed({"JAX": jax_r}, "JAX")
    except BaseException:
      if spill:
        shutil.rmtree(os.path.dirname(spill), ignore_errors=True)
      raise
    loads = {"JAX": load_j}
    jax_r.close()
    if args.skip_torch:
      times["torch"] = None
    else:
      from safetensors.numpy import load_file
      try:
        sd = load_file(spill)
      finally:
        shutil.rmtree(os.path.dirname(spill), ignore_errors=True)
      torch_r = run_torch()
      sd = None
      t2, f2, load_t = timed({"torch": torch_r}, "torch")
      times.update(t2), first.update(f2)
      loads["torch"] = load_t
  flops = jax_r.flops
  compile_s = jax_r.compile_s

  mj = statistics.median(times["JAX"])
  print()
  print(f"## summary: config={args.config}, batch {args.batch} x {args.frames} frames, {schedule}, "
        f"median of {args.steps} steps")
  print(f"JAX {args.dtype} on {device_kind}: {mj:.3f} s/step (compile {compile_s:.1f} s), "
        f"first-step loss {first['JAX']:.4f}, mean load {loads['JAX']:.2f}")
  if flops:
    line = f"JAX FLOPs per step (aot.jaxpr_flops): {flops / 1e9:.1f} GFLOP -> {flops / mj / 1e9:.1f} GFLOP/s achieved"
    peak = args.peak_tflops * 1e12 or (peak_flops(device_kind, args.dtype) if backend == "gpu" else None)
    if peak:
      line += f", MFU {100 * flops / mj / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s ({args.dtype} peak)"
    print(line)
  if times.get("torch"):
    mt = statistics.median(times["torch"])
    print(f"torch f32 on {tdev}: {mt:.3f} s/step, first-step loss {first['torch']:.4f}, mean load {loads['torch']:.2f}")
    print(f"ratio torch / JAX step time: {mt / mj:.2f}x")
  print(f"# {load_avg()}")


if __name__ == "__main__":
  main()
