"""Benchmark: streaming inference (dualtalk_jax.eval.stream) against the whole-clip pass.

Three parts (`--parts`, comma-separated):

  accuracy  For each held-out clip of `--data_dir` (speaker1 as the target), the streamed
            output (chunks of 40 ms, a model step every `--hop_ms`) against one whole-clip
            pass of the same model (the released behaviour), over a grid of context C
            (`--context_s`) and lookahead L (`--lookahead_ms`):
              rel. diff   RMS(stream - whole) / RMS(recorded motion - its time mean): 0 =
                          identical, 1 = as far apart as the real motion varies
              MSE         against the recorded motion (speaker1.npz), stream / whole clip /
                          `infer --window_seconds=2` windows, all 56 dims
              vel. ratio  mean |frame-to-frame velocity| over that of the recorded motion
                          (> 1: jitter the real motion does not have)
            and seams: with a hop of `--seam_hop_ms` (several frames per step, so seams are
            rare), the mean |velocity| across seams (frame t_k - 1 -> t_k, t_k = k * hop)
            over the mean elsewhere, for the stream and, at the same frames, for the whole
            clip (both about 1: no seams).
  latency   Per-chunk compute time (p50/p95) and real-time factor (compute / audio time),
            pushed as fast as possible, for `--config` tiny (the `--checkpoint`, or random
            weights) and large (random weights: latency does not depend on them), after
            the one compile (reported apart).
  realtime  The tiny model fed at real time (paced) over a grid of lookaheads with a 40 ms hop:
            RTF, p95 chunk compute, and p50/p95/max delay of each output frame after its
            audio arrived. A run keeps up when RTF < 1 and the delay does not grow: the
            median delay of the last quarter of the frames is within one hop (40 ms) of the
            first quarter's (load spikes from other processes show in p95/max, and pass).

  python benchmarks/streaming.py --parts accuracy --checkpoint /tmp/qs/checkpoints --data_dir /tmp/qs/synthetic/val
  python benchmarks/streaming.py --parts latency,realtime --checkpoint /tmp/qs/checkpoints

Prints markdown tables and the load average; `--json` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from benchmarks.inference import load_avg  # noqa: E402

DEMO = "/work/shared/samples/dualtalk_demo/UbjUDM1MiGE_sub_video_72_"


def floats(s: str) -> list[float]:
  return [float(x) for x in s.split(",") if x]


def tiny_model(checkpoint: str | None):
  from dualtalk_jax.config import CONFIGS
  from dualtalk_jax.eval import predict
  from dualtalk_jax.models.dualtalk import DualTalk, make_rngs

  if checkpoint:
    return predict.load_model(checkpoint), f"trained tiny ({checkpoint})"
  model = DualTalk(CONFIGS["tiny"], rngs=make_rngs(0))
  model.eval()
  return model, "tiny, random weights"


def demo_inputs(seconds: float):
  """The demo conversation (tiled to `seconds`), raw, or synthetic speech-like noise if absent."""
  from dualtalk_jax import audio
  from dualtalk_jax.eval import predict

  n = int(seconds * audio.SAMPLE_RATE)
  if os.path.exists(DEMO + "speaker1.wav"):
    a = predict.load_raw_track(DEMO + "speaker1.wav")
    b = predict.load_raw_track(DEMO + "speaker2.wav")
    m = predict.load_motion(DEMO + "speaker2.npz")
  else:
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=n).astype(np.float32) * 0.1 for _ in range(2))
    m = rng.normal(size=(audio.num_frames(n), 56)).astype(np.float32) * 0.1
  reps = -(-n // len(a))
  a, b = np.tile(a, reps)[:n], np.tile(b, reps)[:n]
  m = np.tile(m, (-(-audio.num_frames(n) // len(m)), 1))[:audio.num_frames(n)]
  return a, b, m


def stream_config(context_s, lookahead_ms, hop_ms):
  from dualtalk_jax.eval import stream

  return stream.StreamConfig.from_time(context_s=context_s, lookahead_ms=lookahead_ms, hop_ms=hop_ms)


def velocity(x: np.ndarray) -> np.ndarray:
  """(T-1,) mean |frame-to-frame change| over the 56 dims."""
  return np.abs(np.diff(x, axis=0)).mean(axis=1)


def accuracy(args) -> dict:
  from dualtalk_jax import audio
  from dualtalk_jax.eval import evaluate, predict, stream

  model, what = tiny_model(args.checkpoint)
  clips = evaluate.list_clips(args.data_dir)[:args.clips]
  data = []
  for c in clips:
    p = lambda s, e: os.path.join(args.data_dir, f"{c}_speaker{s}.{e}")
    a, b = predict.load_raw_track(p(1, "wav")), predict.load_raw_track(p(2, "wav"))
    m, gt = predict.load_motion(p(2, "npz")), predict.load_motion(p(1, "npz"))
    clip = predict.Clip(audio.normalize(a), audio.normalize(b), m, c)
    whole = predict.predict_windowed(model, clip, window_seconds=0)
    win2 = predict.predict_windowed(model, clip, window_seconds=2.0, overlap_seconds=0.5)
    data.append(dict(a=a, b=b, m=m, gt=gt[:len(whole)], whole=whole, win2=win2))
  gt_mse = lambda p, gt: ((p[:len(gt)] - gt) ** 2).ravel()  # a recorded motion may be a frame short
  mse = lambda key: float(np.mean(np.concatenate([gt_mse(d[key], d["gt"]) for d in data])))
  spread = float(np.sqrt(np.mean(np.concatenate([((d["gt"] - d["gt"].mean(0)) ** 2).ravel() for d in data]))))
  gt_vel = float(np.mean(np.concatenate([velocity(d["gt"]) for d in data])))
  vel = lambda preds: float(np.mean(np.concatenate([velocity(p) for p in preds]))) / gt_vel
  rms = lambda x, y: float(np.sqrt(np.mean(np.concatenate([(p[:len(q)] - q[:len(p)]).ravel() ** 2 for p, q in zip(x, y)]))))
  rows, seams = [], []

  def run(cfg):
    s = stream.StreamingPredictor(model, cfg)
    t0 = time.perf_counter()
    s.warmup()
    compile_s = time.perf_counter() - t0
    preds = [stream.run_stream(s, stream.file_chunks(d["a"], d["b"], d["m"], 640)).prediction for d in data]
    return preds, compile_s

  for c_s in args.context_s:
    for l_ms in args.lookahead_ms:
      cfg = stream_config(c_s, l_ms, args.hop_ms)
      preds, compile_s = run(cfg)
      row = dict(context_s=c_s, lookahead_ms=cfg.lookahead_frames * 40, hop_ms=cfg.hop_frames * 40,
                 rel_diff=rms(preds, [d["whole"] for d in data]) / spread,
                 mse_stream=float(np.mean(np.concatenate([gt_mse(p, d["gt"]) for p, d in zip(preds, data)]))),
                 vel_ratio=vel(preds),
                 compile_s=compile_s)
      rows.append(row)
      print(f"  C {c_s:g} s, L {row['lookahead_ms']:g} ms: rel. diff {row['rel_diff']:.3f}, MSE {row['mse_stream']:.5f}, "
            f"vel. ratio {row['vel_ratio']:.2f} ({load_avg()})", flush=True)
  c_s = args.seam_context_s
  for l_ms in args.lookahead_ms:
    cfg = stream_config(c_s, l_ms, args.seam_hop_ms)
    preds, _ = run(cfg)
    h = cfg.hop_frames
    at, off, at_w, off_w = [], [], [], []
    for p, d in zip(preds, data):
      v, vw = velocity(p), velocity(d["whole"])
      seam = (np.arange(1, len(p)) % h) == 0  # diff index f-1 is the change from frame f-1 to f
      at.append(v[seam]), off.append(v[~seam]), at_w.append(vw[seam]), off_w.append(vw[~seam])
    r = lambda x, y: float(np.mean(np.concatenate(x)) / np.mean(np.concatenate(y)))
    seams.append(dict(context_s=c_s, lookahead_ms=cfg.lookahead_frames * 40, hop_ms=h * 40,
                      seam_ratio=r(at, off), whole_ratio=r(at_w, off_w)))
    print(f"  seams, hop {h * 40} ms, L {cfg.lookahead_frames * 40} ms: stream {seams[-1]['seam_ratio']:.2f}, "
          f"whole clip {seams[-1]['whole_ratio']:.2f}", flush=True)

  frames = sum(len(d["whole"]) for d in data)
  print(f"\n### Accuracy: {what}, {len(data)} held-out clips of {args.data_dir} ({frames / 25:.0f} s), "
        f"hop {args.hop_ms:g} ms, chunks of 40 ms\n")
  print(f"Whole-clip pass: MSE {mse('whole'):.5f}, vel. ratio {vel([d['whole'] for d in data]):.2f}; "
        f"`infer --window_seconds=2`: MSE {mse('win2'):.5f}, vel. ratio {vel([d['win2'] for d in data]):.2f}, "
        f"rel. diff to whole clip {rms([d['win2'] for d in data], [d['whole'] for d in data]) / spread:.3f}; "
        f"recorded motion RMS spread {spread:.4f}.\n")
  print("| context | lookahead | rel. diff to whole clip | MSE stream | vel. ratio |")
  print("|---|---|---|---|---|")
  for r_ in rows:
    print(f"| {r_['context_s']:g} s | {r_['lookahead_ms']:g} ms | {r_['rel_diff']:.3f} | {r_['mse_stream']:.5f} | "
          f"{r_['vel_ratio']:.2f} |")
  print(f"\nSeams (context {c_s:g} s, hop {seams[0]['hop_ms'] if seams else 0} ms): mean |velocity| across seams / elsewhere\n")
  print("| lookahead | stream | whole clip, same frames |")
  print("|---|---|---|")
  for s_ in seams:
    print(f"| {s_['lookahead_ms']:g} ms | {s_['seam_ratio']:.2f} | {s_['whole_ratio']:.2f} |")
  return dict(model=what, clips=clips, mse_whole=mse("whole"), mse_window2=mse("win2"), spread=spread, rows=rows,
              seams=seams)


def latency(args) -> list[dict]:
  from dualtalk_jax import audio
  from dualtalk_jax.config import CONFIGS
  from dualtalk_jax.eval import stream
  from dualtalk_jax.models.dualtalk import DualTalk, make_rngs

  out = []
  for name in args.configs.split(","):
    if name == "tiny":
      model, what = tiny_model(args.checkpoint)
      seconds, chunk_ms, hop_ms = args.seconds, args.chunk_ms, None
    else:
      t0 = time.perf_counter()
      model = DualTalk(CONFIGS[name], rngs=make_rngs(0))
      model.eval()
      what = f"{name}, random weights (built in {time.perf_counter() - t0:.0f} s)"
      seconds, chunk_ms, hop_ms = args.large_seconds, args.large_chunk_ms, None
    hop_ms = hop_ms or -(-chunk_ms // 40) * 40
    cfg = stream_config(args.latency_context_s, args.latency_lookahead_ms, hop_ms)
    s = stream.StreamingPredictor(model, cfg)
    t0 = time.perf_counter()
    s.warmup()
    compile_s = time.perf_counter() - t0
    a, b, m = demo_inputs(seconds)
    chunk = int(round(chunk_ms * audio.SAMPLE_RATE / 1000))
    r = stream.run_stream(s, stream.file_chunks(a, b, m, chunk))
    row = dict(model=what, context_s=args.latency_context_s, lookahead_ms=cfg.lookahead_frames * 40,
               chunk_ms=chunk_ms, hop_ms=cfg.hop_frames * 40, seconds=seconds, compile_s=compile_s,
               p50_ms=r.latency_ms(50), p95_ms=r.latency_ms(95), rtf=r.real_time_factor, load=load_avg())
    out.append(row)
    print(f"  {what}: p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, RTF {row['rtf']:.3f} ({row['load']})",
          flush=True)
    del model, s
  print("\n### Latency (pushed as fast as possible)\n")
  print("| model | context | lookahead | chunk / hop | audio | compile | per-chunk p50 | p95 | RTF |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r_ in out:
    print(f"| {r_['model']} | {r_['context_s']:g} s | {r_['lookahead_ms']:g} ms | {r_['chunk_ms']:g} / {r_['hop_ms']:g} ms | "
          f"{r_['seconds']:g} s | {r_['compile_s']:.0f} s | {r_['p50_ms']:.1f} ms | {r_['p95_ms']:.1f} ms | {r_['rtf']:.3f} |")
  return out


def realtime(args) -> list[dict]:
  from dualtalk_jax.eval import stream

  model, what = tiny_model(args.checkpoint)
  a, b, m = demo_inputs(args.realtime_seconds)
  out = []
  for l_ms in args.realtime_lookahead_ms:
    cfg = stream_config(args.latency_context_s, l_ms, 40)
    s = stream.StreamingPredictor(model, cfg)
    s.warmup()
    r = stream.run_stream(s, stream.file_chunks(a, b, m, 640), pace=True)
    d = r.frame_delay_seconds * 1000
    q = max(1, len(d) // 4)
    growth = float(np.median(d[-q:]) - np.median(d[:q]))
    row = dict(lookahead_ms=cfg.lookahead_frames * 40, rtf=r.real_time_factor, p95_ms=r.latency_ms(95),
               delay_p50=float(np.percentile(d, 50)), delay_p95=float(np.percentile(d, 95)), delay_max=float(d.max()),
               growth=growth, keeps_up=bool(r.real_time_factor < 1 and growth <= 40), load=load_avg())
    out.append(row)
    print(f"  L {row['lookahead_ms']} ms: RTF {row['rtf']:.3f}, delay p50 {row['delay_p50']:.0f} p95 {row['delay_p95']:.0f} "
          f"max {row['delay_max']:.0f} ms, growth {growth:.0f} ms, keeps up: {row['keeps_up']} ({row['load']})", flush=True)
  print(f"\n### Real time: {what}, fed at real time ({args.realtime_seconds:g} s of the demo), context "
        f"{args.latency_context_s:g} s, chunks and hop 40 ms\n")
  print("| lookahead | RTF | chunk compute p95 | frame delay p50 | p95 | max | delay growth | keeps up |")
  print("|---|---|---|---|---|---|---|---|")
  for r_ in out:
    print(f"| {r_['lookahead_ms']} ms | {r_['rtf']:.3f} | {r_['p95_ms']:.1f} ms | {r_['delay_p50']:.0f} ms | "
          f"{r_['delay_p95']:.0f} ms | {r_['delay_max']:.0f} ms | {r_['growth']:+.0f} ms | {'yes' if r_['keeps_up'] else 'no'} |")
  ok = [r_["lookahead_ms"] for r_ in out if r_["keeps_up"]]
  print(f"\nSmallest lookahead that keeps up: {min(ok) if ok else 'none of those tried'} ms")
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--parts", default="accuracy,latency,realtime")
  ap.add_argument("--checkpoint", default=None, help="trained tiny checkpoint (else random weights)")
  ap.add_argument("--data_dir", default=None, help="held-out clips (<clip>_speaker{1,2}.{wav,npz}) for accuracy")
  ap.add_argument("--clips", type=int, default=8)
  ap.add_argument("--context_s", type=floats, default=floats("2,4,8"))
  ap.add_argument("--lookahead_ms", type=floats, default=floats("0,200,400,800"))
  ap.add_argument("--hop_ms", type=float, default=40.0)
  ap.add_argument("--seam_hop_ms", type=float, default=200.0)
  ap.add_argument("--seam_context_s", type=float, default=4.0)
  ap.add_argument("--configs", default="tiny,large")
  ap.add_argument("--seconds", type=float, default=20.0, help="audio streamed by tiny in the latency part")
  ap.add_argument("--chunk_ms", type=float, default=40.0)
  ap.add_argument("--large_seconds", type=float, default=2.0)
  ap.add_argument("--large_chunk_ms", type=float, default=400.0)
  ap.add_argument("--latency_context_s", type=float, default=6.0)
  ap.add_argument("--latency_lookahead_ms", type=float, default=400.0)
  ap.add_argument("--realtime_seconds", type=float, default=10.0)
  ap.add_argument("--realtime_lookahead_ms", type=floats, default=floats("0,40,120,200,400,800"))
  ap.add_argument("--json", default=None)
  args = ap.parse_args()
  import jax

  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {load_avg()}", flush=True)
  res = {}
  parts = args.parts.split(",")
  if "accuracy" in parts:
    if not args.data_dir:
      ap.error("--data_dir is needed for the accuracy part")
    res["accuracy"] = accuracy(args)
  if "latency" in parts:
    res["latency"] = latency(args)
  if "realtime" in parts:
    res["realtime"] = realtime(args)
  print(f"\n{load_avg()}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
