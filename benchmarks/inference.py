"""Benchmark: DualTalk inference, jitted JAX vs the PyTorch module tree, same weights, same run.

What is measured: one forward pass (batch 1) on `--seconds` of real conversation audio
(the demo pair under /work/shared/samples/dualtalk_demo, tiled to length; synthetic audio
if absent): target audio, partner audio and partner motion -> target motion. Both models
hold the same random weights (ours exported with `params_to_state_dict`, loaded into the
torch tree with `load_state_dict(strict=True)`), and their outputs are compared (max |diff|).

  JAX      the one prediction step (`eval.predict.Predictor`, as evaluation and inference
           run it; compiled ahead of time so the compile time is reported apart), f32 or
           `--dtype bfloat16` compute (f32 params), on JAX's default device.
  PyTorch  `third_party.dualtalk_torch.DualTalk`, eval(), `torch.no_grad()`,
           `torch.set_num_threads(os.cpu_count())` (or `--torch_threads`), f32, its default (released, "eager")
           wav2vec2 attention unless `--torch_attn sdpa`; on CUDA when JAX runs on a GPU
           and torch sees one, else on the CPU.

Repetitions alternate JAX and PyTorch (after one warm-up call each), so load from other
processes hits both alike; the medians give seconds of compute per second of audio, and
the ratio PyTorch / JAX (> 1: JAX is faster). The load average is printed with the figures.
On a GPU the paper's reference (0.03 s per second of output) is printed beside them.

  python benchmarks/inference.py --config large --seconds 10,30 --repeats 3
  python benchmarks/inference.py --config tiny --seconds 10,30 --repeats 5
  python benchmarks/inference.py --config large --dtype bfloat16       # on a GPU
  python benchmarks/inference.py --config large --skip_torch           # JAX only

Memory: the large model is 2.6 GB of f32 params per framework; peak is about 10 GB here.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

SAMPLES_DIR = "/work/shared/samples/dualtalk_demo"
PAPER_S_PER_S = 0.03  # the paper: 0.03 s of compute per second of output (on a GPU)


def load_avg() -> str:
  return "load average %.2f %.2f %.2f (%d CPUs)" % (*os.getloadavg(), os.cpu_count())


def host_info() -> str:
  import jax
  import torch

  d = jax.devices()[0]
  return (f"jax {jax.__version__} ({d.platform}: {d.device_kind}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), python {platform.python_version()}, {load_avg()}")


def demo_clip(samples_dir: str = SAMPLES_DIR):
  """(audio_self, audio_other, motion_other (N, 56)) of the demo pair, or None if absent."""
  from dualtalk_jax import audio

  wavs = sorted(glob.glob(os.path.join(samples_dir, "*speaker1.wav")))
  if not wavs:
    return None
  stem = wavs[0][: -len("speaker1.wav")]
  try:
    a = audio.load_audio(stem + "speaker1.wav")
    b = audio.load_audio(stem + "speaker2.wav")
    m = audio.motion_from_flame(np.load(stem + "speaker2.npz")) if os.path.exists(stem + "speaker2.npz") else None
  except (OSError, ValueError) as e:
    print(f"warning: demo sample unusable ({e}); using synthetic audio")
    return None
  return a, b, m


def tile(x: np.ndarray, n: int) -> np.ndarray:
  """The first n rows of x repeated end to end."""
  reps = -(-n // len(x))
  return np.concatenate([x] * reps, axis=0)[:n]


def make_inputs(seconds: float, clip=None, seed: int = 0):
  """Normalised (audio_self, audio_other) of `seconds` and partner motion of the same frames."""
  from dualtalk_jax import audio

  s = int(round(seconds * audio.SAMPLE_RATE))
  t = audio.num_frames(s)
  rng = np.random.default_rng(seed)
  if clip is None:
    a, b = rng.normal(size=s).astype(np.float32), rng.normal(size=s).astype(np.float32)
    m = None
  else:
    a, b, m = tile(clip[0], s), tile(clip[1], s), clip[2]
  m = rng.normal(0, 0.3, size=(t, audio.MOTION_DIM)).astype(np.float32) if m is None else tile(m, t)
  return audio.normalize(a), audio.normalize(b), np.ascontiguousarray(m, np.float32)


def torch_twin(model, cfg, *, attn: str = "eager", device: str = "cpu"):
  """The PyTorch tree with our model's weights (strict load), eval mode, on `device`."""
  import torch

  from dualtalk_jax import params as params_lib
  from dualtalk_jax.convert import pytorch
  from third_party.dualtalk_torch import DualTalk as TorchDualTalk

  sd = pytorch.params_to_state_dict(params_lib.of(model), cfg)
  with torch.device("meta"):  # no random init (minutes for the large tree): the strict load assigns every tensor
    ref = TorchDualTalk.from_config(cfg, attn_implementation=attn)
  ref.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}, strict=True, assign=True)
  del sd
  return ref.eval().to(device)


def jax_predictor(model, dtype):
  """The one prediction function (`eval.predict.Predictor`) over `model`'s params, `dtype` compute."""
  from dualtalk_jax import params as params_lib
  from dualtalk_jax.eval.predict import Predictor
  from dualtalk_jax.train.step import ModelDef

  return Predictor(ModelDef(model.config, dtype=dtype), params_lib.of(model))


def flops_of(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops")) if ca and ca.get("flops") else None
  except Exception:  # not every backend reports a cost analysis
    return None


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="large", choices=["large", "base", "tiny"])
  ap.add_argument("--seconds", default="10,30", help="comma-separated clip lengths in seconds")
  ap.add_argument("--repeats", type=int, default=3, help="timed calls per framework and length (after a warm-up)")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="JAX compute dtype (params f32)")
  ap.add_argument("--torch_attn", default="eager", choices=["eager", "sdpa"],
                  help="wav2vec2 attention of the torch tree (eager: as released)")
  ap.add_argument("--torch_threads", default="0",
                  help="torch intra-op threads, comma-separated to time several in the same run (e.g. 1,2); "
                  "0 = os.cpu_count(). 1 helps torch on an oversubscribed CPU")
  ap.add_argument("--torch_device", default="auto", help="auto: cuda if JAX is on a GPU and torch sees one, else cpu")
  ap.add_argument("--skip_torch", action="store_true", help="JAX only (no reference, no ratio)")
  ap.add_argument("--samples_dir", default=SAMPLES_DIR)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--profile_dir", default="", help="write a jax.profiler trace of one warm JAX call per length here")
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  import torch

  from dualtalk_jax import audio
  from dualtalk_jax.config import CONFIGS
  from dualtalk_jax.models.dualtalk import DualTalk, count_params, make_rngs

  threads = [int(n) or os.cpu_count() for n in args.torch_threads.split(",")]
  torch.set_num_threads(threads[0])
  backend = jax.default_backend()
  tdev = args.torch_device
  if tdev == "auto":
    tdev = "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"
  cfg = CONFIGS[args.config]
  dtype = jnp.dtype(args.dtype)
  print(f"# DualTalk inference benchmark: config={args.config}, JAX dtype={args.dtype}, torch {tdev} f32 "
        f"attn={args.torch_attn}")
  print(f"# {host_info()}")
  if backend == "cpu":
    print(f"# XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

  t0 = time.perf_counter()
  model = DualTalk(cfg, rngs=make_rngs(args.seed), dtype=dtype)
  model.eval()
  print(f"# {count_params(model) / 1e6:.1f} M params, JAX init {time.perf_counter() - t0:.1f} s")
  ref = None
  if not args.skip_torch:
    t0 = time.perf_counter()
    ref = torch_twin(model, cfg, attn=args.torch_attn, device=tdev)
    print(f"# torch twin built and loaded (strict) in {time.perf_counter() - t0:.1f} s")
  predictor = jax_predictor(model, dtype)

  clip = demo_clip(args.samples_dir)
  print(f"# audio: {'demo pair ' + args.samples_dir + ', tiled' if clip else 'synthetic (demo sample absent)'}")

  rows = []
  for seconds in [float(s) for s in args.seconds.split(",")]:
    a, b, m = make_inputs(seconds, clip, args.seed)
    s, t = len(a), audio.num_frames(len(a))
    full = lambda n: np.full((1,), n, np.int32)
    batch = {"audio_self": a[None], "audio_other": b[None], "motion_other": m[None], "audio_self_lengths": full(s),
             "audio_other_lengths": full(s), "motion_other_lengths": full(t), "num_frames": full(t)}
    jargs = (predictor.params, batch)
    t0 = time.perf_counter()
    lowered = predictor.step.lower(*jargs, t)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = flops_of(compiled)

    def run_jax():
      t0 = time.perf_counter()
      out = jax.block_until_ready(compiled(*jargs))
      return time.perf_counter() - t0, out

    if ref is not None:
      ta, tb, tm = (torch.from_numpy(x[None]).to(tdev) for x in (a, b, m))

      def run_torch():
        if tdev == "cuda":
          torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
          out = ref(ta, tb, tm)
        if tdev == "cuda":
          torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    warm_j, out_j = run_jax()
    line = f"{seconds:g} s ({t} frames): JAX compile {compile_s:.1f} s, first call {warm_j:.2f} s"
    if flops:
      line += f", {flops / 1e9:.1f} GFLOP per call (XLA cost analysis)"
    diff = None
    if ref is not None:
      warm_t, out_t = run_torch()
      line += f"; torch first call {warm_t:.2f} s"
      o_j = np.asarray(out_j, np.float32)
      o_t = out_t.float().cpu().numpy()
      diff = float(np.abs(o_j - o_t).max())
      line += f"; outputs {o_j.shape}, max |JAX - torch| = {diff:.2e} (max |out| {np.abs(o_t).max():.2f})"
    print(line, flush=True)
    if args.profile_dir:
      jax.profiler.start_trace(args.profile_dir)
      run_jax()
      jax.profiler.stop_trace()
      print(f"# profile written under {args.profile_dir}")

    tj, tt, loads = [], {n: [] for n in threads} if ref is not None else {}, []
    for r in range(args.repeats):
      tj.append(run_jax()[0])
      for n in tt:
        torch.set_num_threads(n)
        tt[n].append(run_torch()[0])
      loads.append(os.getloadavg()[0])
      print(f"  repeat {r + 1}/{args.repeats}: JAX {tj[-1]:.3f} s"
            + "".join(f", torch ({n} threads) {v[-1]:.3f} s" for n, v in tt.items())
            + f", load {loads[-1]:.2f}", flush=True)
    torch.set_num_threads(threads[0])
    mj = statistics.median(tj)
    mts = {n: statistics.median(v) for n, v in tt.items()} or {threads[0]: None}
    for n, mt in mts.items():
      rows.append((seconds, t, compile_s, mj, mt, n, diff, flops, statistics.mean(loads)))

  print()
  print(f"## summary: config={args.config}, JAX {args.dtype} on {jax.devices()[0].device_kind}, torch f32 on {tdev} "
        f"(median of {args.repeats} interleaved repeats)")
  print(f"{'audio':>7} {'frames':>6} {'compile':>8} {'JAX s':>8} {'JAX s/s':>8} {'thr':>3} {'torch s':>8} "
        f"{'torch s/s':>9} {'torch/JAX':>9} {'max|diff|':>9} {'GFLOP/s':>8} {'load1':>5}")
  for seconds, t, compile_s, mj, mt, n, diff, flops, load in rows:
    tcols = f"{'-':>3} {'-':>8} {'-':>9} {'-':>9} {'-':>9}"
    if mt:
      tcols = f"{n:3d} {mt:8.3f} {mt / seconds:9.4f} {mt / mj:8.2f}x {diff:9.1e}"
    gf = f"{flops / mj / 1e9:8.1f}" if flops else f"{'-':>8}"
    print(f"{seconds:6g}s {t:6d} {compile_s:7.1f}s {mj:8.3f} {mj / seconds:8.4f} {tcols} {gf} {load:5.2f}")
  if backend == "gpu":
    print(f"reference: the paper reports {PAPER_S_PER_S} s of compute per second of output on a GPU "
          f"(JAX here: {', '.join(f'{mj / s:.4f}' for s, _, _, mj, *_ in rows)} s/s)")
  print("torch/JAX > 1: JAX is faster. thr = torch intra-op threads; GFLOP/s = XLA cost-analysis FLOPs / JAX time")
  print(f"# {load_avg()}")


if __name__ == "__main__":
  main()
