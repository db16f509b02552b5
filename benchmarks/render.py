"""Benchmark: side-by-side FLAME video rendering (frames/s) and the ARKit solve (frames/s).

Render: two FLAME-format heads (`face.synthetic`: FLAME 2020's 5023 vertices / 9976
triangles / 5 joints; the licensed model is not needed) animated for `--seconds`, rendered
at `--size` x `--size` per face (a 2*size x size video) with both voices, end to end
through `render.render_video` (FLAME forward + normals in JAX, moderngl/EGL draw, PyAV
H.264 + AAC). The same run then times each stage alone on the same frames, and prints the
ratio to real time (25 frames/s).

ARKit: `arkit.solve` (jitted ADMM, all frames at once) on `--arkit_frames` frames of a
random 51 x 53 mapping, against scipy's `lsq_linear` frame by frame (the reference, timed
in the same run on the first `--reference_frames` frames), with the largest difference.

  python benchmarks/render.py                 # 512 px per face, 20 s of video
  python benchmarks/render.py --size 256 --skip_arkit
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.inference import load_avg  # noqa: E402
from dualtalk_jax.face import arkit, flame, render, synthetic  # noqa: E402


def talking_motion(rng, frames):
  t = np.arange(frames) / 25
  m = np.zeros((frames, 56), np.float32)
  m[:, :50] = 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 2, 50) * t[:, None] + rng.uniform(0, 6, 50))
  m[:, 50] = 0.15 * (1 + np.sin(2 * np.pi * 3 * t))          # jaw open/close
  m[:, 53:56] = 0.1 * np.sin(2 * np.pi * 0.25 * t)[:, None]  # head turns
  return m


def bench_render(args):
  import av
  import jax

  rng = np.random.default_rng(0)
  frames = int(args.seconds * 25)
  model = flame.model_from_arrays(synthetic.fake_flame_arrays(0))
  speakers = [render.Speaker(flame.params_from_motion(talking_motion(rng, frames)),
                             (0.1 * rng.normal(size=frames * 640)).astype(np.float32)) for _ in range(2)]
  print(f"render: {frames} frames ({args.seconds:g} s), 2 faces of {args.size}x{args.size} "
        f"-> {2 * args.size}x{args.size} video; jax on {jax.devices()[0].platform}")
  with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "bench.mp4")
    render.render_video(out, model, [render.Speaker(s.params.slice(0, 30), None) for s in speakers],
                        size=args.size, progress=False)  # warm-up: compiles, GL shaders
    print("before timing:", load_avg())
    t0, c0 = time.perf_counter(), time.process_time()
    r = render.render_video(out, model, speakers, size=args.size, progress=False, preset=args.preset)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    size_mb = os.path.getsize(out) / 2 ** 20
  fps = frames / total
  print(f"end to end: {total:.2f} s = {fps:.1f} frames/s ({fps / 25:.2f}x real time), renderer {r['renderer']}, "
        f"{size_mb:.1f} MiB; after: {load_avg()}")
  # CPU time of all the process's threads (XLA, llvmpipe, x264): what a frame costs whatever else
  # runs on the machine. 1 / (CPU time per frame) is the rate on ONE idle core with no overlap.
  print(f"CPU time: {1e3 * cpu / frames:.1f} ms per frame (all threads) -> >= {frames / cpu:.1f} frames/s "
        f"on one idle core, ~{2 * frames / cpu:.1f} on two if the stages overlap fully")

  # Each stage alone on the same frames.
  dm = flame.to_device(model)
  n = min(frames, 250)
  p = [s.params.slice(0, n) for s in speakers]
  for _ in flame.sequence_vertices(dm, p[0], with_normals=True):
    pass
  t0, c0 = time.perf_counter(), time.process_time()
  meshes = [list(flame.sequence_vertices(dm, q, with_normals=True)) for q in p]
  t_flame, c_flame = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
  v = [np.concatenate([c[0] for c in m]) for m in meshes]
  nn = [np.concatenate([c[1] for c in m]) for m in meshes]
  rend = render.Renderer(np.asarray(model.faces), model.num_vertices, args.size, 2)
  for k in range(2):
    rend.set_camera(k, render.camera_for(v[k].min((0, 1)), v[k].max((0, 1))))
  rend.render([(v[0][0], nn[0][0]), (v[1][0], nn[1][0])])
  imgs = []
  t0, c0 = time.perf_counter(), time.process_time()
  for i in range(n):
    imgs.append(rend.render([(v[0][i], nn[0][i]), (v[1][i], nn[1][i])]).copy())
  t_draw, c_draw = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
  rend.release()
  with tempfile.TemporaryDirectory() as d:
    c = av.open(os.path.join(d, "x.mp4"), "w")
    s = c.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt, s.options = 2 * args.size, args.size, "yuv420p", {"crf": "18", "preset": args.preset}
    t0, c0 = time.perf_counter(), time.process_time()
    for i, img in enumerate(imgs):
      f = av.VideoFrame.from_ndarray(img, format="rgb24")
      f.pts = i
      c.mux(s.encode(f))
    c.mux(s.encode(None))
    c.close()
    t_enc, c_enc = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
  print(f"stages per frame (both faces, {n} frames), wall / CPU: FLAME + normals {1e3 * t_flame:.1f} / "
        f"{1e3 * c_flame:.1f} ms, GL draw + read {1e3 * t_draw:.1f} / {1e3 * c_draw:.1f} ms, H.264 ({args.preset}) "
        f"{1e3 * t_enc:.1f} / {1e3 * c_enc:.1f} ms; sum {1e3 * (t_flame + t_draw + t_enc):.1f} / "
        f"{1e3 * (c_flame + c_draw + c_enc):.1f} ms (the pipeline overlaps encoding with drawing); {load_avg()}")


def bench_arkit(args):
  from scipy.optimize import lsq_linear

  rng = np.random.default_rng(1)
  m = rng.normal(0, 1, (51, 53)).astype(np.float32)
  w = rng.uniform(0, 1, (args.arkit_frames, 51))
  w[rng.uniform(size=w.shape) < 0.3] = 0
  y = w @ m + rng.normal(0, 0.05, (args.arkit_frames, 53))
  mapping = arkit.Mapping(m, arkit.MAPPING_NAMES)
  arkit.solve(y, mapping)  # compile
  print("arkit, before timing:", load_avg())
  t0 = time.perf_counter()
  est, info = arkit.solve(y, mapping)
  t_ours = time.perf_counter() - t0
  k = args.reference_frames
  t0 = time.perf_counter()
  ref = np.stack([lsq_linear(m.T.astype(np.float64), y[i], bounds=(0, 1), tol=1e-10).x for i in range(k)])
  t_ref = time.perf_counter() - t0
  ours_fps, ref_fps = args.arkit_frames / t_ours, k / t_ref
  print(f"arkit: ADMM {args.arkit_frames} frames in {t_ours:.3f} s = {ours_fps:,.0f} frames/s "
        f"({info.iterations} iterations); scipy lsq_linear per frame {ref_fps:,.0f} frames/s; "
        f"ratio {ours_fps / ref_fps:.1f}x; max |diff| {np.abs(est[:k] - ref).max():.1e}; {load_avg()}")
  t0 = time.perf_counter()
  arkit.solve(y, mapping, smooth=1.0, symmetry=0.1, l2=0.01)
  print(f"arkit with smoothing + symmetry + L2: {args.arkit_frames / (time.perf_counter() - t0):,.0f} frames/s "
        f"(first call includes a compile)")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", type=int, default=512)
  ap.add_argument("--seconds", type=float, default=20.0)
  ap.add_argument("--preset", default="veryfast", help="x264 preset (render_video's default: veryfast)")
  ap.add_argument("--arkit_frames", type=int, default=15000)
  ap.add_argument("--reference_frames", type=int, default=500)
  ap.add_argument("--skip_render", action="store_true")
  ap.add_argument("--skip_arkit", action="store_true")
  args = ap.parse_args()
  if not args.skip_render:
    bench_render(args)
  if not args.skip_arkit:
    bench_arkit(args)


if __name__ == "__main__":
  main()
