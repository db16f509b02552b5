"""Side-by-side FLAME videos with sound: OpenGL offscreen rendering and H.264/AAC encoding.

- Rasterization: moderngl on a headless EGL context (`glcontext`). On a CPU host Mesa's
  llvmpipe renders (no display, no X); where an NVIDIA driver is installed EGL picks the
  GPU. The FLAME forward and vertex normals run in JAX (`flame.sequence_vertices`), so on
  a GPU host they run there too.
- Encoding: PyAV (its wheels bundle FFmpeg with libx264 and AAC): H.264 yuv420p at 25 fps,
  and one AAC stream: mono with one voice, stereo with two (left channel = the left
  face's voice, right = the right face's), so every player plays both voices and each
  track stays separable.
- The video has exactly T = len(--motion) frames; other inputs are cut or padded to it
  (audio with silence, partner motion holding its last frame), and that is reported.
- The file is written under a temporary name in the output folder and renamed at the end.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Sequence

import numpy as np

from dualtalk_jax import audio as audio_lib
from dualtalk_jax.data.records import atomic_write
from dualtalk_jax.face import flame
from dualtalk_jax.progress import Progress

FPS = audio_lib.FPS
BACKGROUND = (0.94, 0.94, 0.94)

_VERTEX_SHADER = """
#version 330
uniform mat4 mvp;
uniform mat3 view_rot;
in vec3 in_pos;
in vec3 in_normal;
out vec3 v_normal;
void main() {
  gl_Position = mvp * vec4(in_pos, 1.0);
  v_normal = view_rot * in_normal;
}
"""
_FRAGMENT_SHADER = """
#version 330
in vec3 v_normal;
out vec4 color;
void main() {
  vec3 n = normalize(v_normal);
  if (!gl_FrontFacing) n = -n;
  vec3 key = normalize(vec3(0.3, 0.4, 1.0));
  vec3 fill = normalize(vec3(-0.6, -0.1, 0.6));
  float diffuse = 0.65 * max(dot(n, key), 0.0) + 0.25 * max(dot(n, fill), 0.0);
  float spec = 0.12 * pow(max(dot(n, normalize(key + vec3(0, 0, 1))), 0.0), 24.0);
  vec3 base = vec3(0.72, 0.72, 0.74);
  color = vec4(base * (0.22 + diffuse) + spec, 1.0);
}
"""


class RenderError(RuntimeError):
  """No headless OpenGL context, or an encoder that is missing."""


def _perspective(fov_y: float, aspect: float, near: float, far: float) -> np.ndarray:
  f = 1.0 / np.tan(fov_y / 2)
  return np.array([[f / aspect, 0, 0, 0], [0, f, 0, 0],
                   [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)], [0, 0, -1, 0]], np.float64)


def camera_for(vertices_min: np.ndarray, vertices_max: np.ndarray, fov_y_deg: float = 20.0,
               margin: float = 1.12) -> np.ndarray:
  """A 4x4 view-projection matrix looking down -z at a box, framing it in a square."""
  centre = (vertices_min + vertices_max) / 2
  half = max(vertices_max[0] - vertices_min[0], vertices_max[1] - vertices_min[1]) / 2 * margin
  fov = np.deg2rad(fov_y_deg)
  depth = vertices_max[2] - vertices_min[2]
  dist = half / np.tan(fov / 2) + depth / 2
  view = np.eye(4)
  view[:3, 3] = -(centre + np.array([0, 0, dist]))
  proj = _perspective(fov, 1.0, max(dist - depth * 2, 1e-3), dist + depth * 2)
  return proj @ view


class Renderer:
  """Renders one or more meshes of the same topology side by side into one RGB image."""

  def __init__(self, faces: np.ndarray, num_vertices: int, size: int, panels: int, backend: str | None = None):
    try:
      import moderngl
    except ImportError as e:
      raise RenderError(f"moderngl is not installed ({e}); pip install -r requirements.txt") from None
    backend = backend or ("egl" if sys.platform.startswith("linux") else None)  # headless on Linux
    try:
      self.ctx = moderngl.create_context(standalone=True, **({"backend": backend} if backend else {}))
    except Exception as e:
      raise RenderError(
          f"could not create a headless OpenGL context (EGL): {e}. On Debian/Ubuntu: "
          "`apt-get install -y libgl1 libegl1 libegl-mesa0 libgl1-mesa-dri` (Mesa's software renderer "
          "llvmpipe; a GPU driver's EGL also works)."
      ) from None
    self.size, self.panels, self.num_vertices = size, panels, num_vertices
    self.width, self.height = size * panels, size
    ctx = self.ctx
    self.prog = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
    self.fbo = ctx.simple_framebuffer((self.width, self.height), components=3)
    self.ibo = ctx.buffer(np.ascontiguousarray(faces, dtype=np.uint32).tobytes())
    self.vbos, self.vaos = [], []
    for _ in range(panels):
      vbo = ctx.buffer(reserve=num_vertices * 6 * 4, dynamic=True)
      self.vbos.append(vbo)
      self.vaos.append(ctx.vertex_array(self.prog, [(vbo, "3f 3f", "in_pos", "in_normal")], index_buffer=self.ibo))
    self.cameras = [np.eye(4) for _ in range(panels)]
    self.prog["view_rot"].write(np.eye(3, dtype="f4").tobytes())
    ctx.enable(moderngl.DEPTH_TEST)
    self.renderer_name = ctx.info.get("GL_RENDERER", "?")
    self._interleaved = np.empty((num_vertices, 6), np.float32)
    self._out = np.empty((self.height, self.width, 3), np.uint8)

  def set_camera(self, panel: int, mvp: np.ndarray) -> None:
    self.cameras[panel] = np.asarray(mvp, np.float64)

  def render(self, meshes: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> np.ndarray:
    """`meshes[k]` = (vertices (V, 3), normals (V, 3)) for panel k (None: empty panel).
    Returns an (H, W, 3) uint8 image, top row first (reused between calls: copy to keep)."""
    self.fbo.use()
    self.ctx.clear(*BACKGROUND, depth=1.0)
    for k, mesh in enumerate(meshes):
      if mesh is None:
        continue
      self._interleaved[:, :3] = mesh[0]
      self._interleaved[:, 3:] = mesh[1]
      self.vbos[k].write(self._interleaved)
      self.ctx.viewport = (k * self.size, 0, self.size, self.size)
      self.prog["mvp"].write(self.cameras[k].T.astype("f4").tobytes())  # column-major
      self.vaos[k].render()
    self.fbo.read_into(self._out, components=3)
    return self._out[::-1]

  def release(self) -> None:
    self.ctx.release()


# ----------------------------------------------------------------------------- inputs

@dataclasses.dataclass
class Speaker:
  """One panel: FLAME motion and (optionally) the voice that goes with it."""

  params: flame.FlameParams | None
  audio: np.ndarray | None  # 16 kHz mono float32


def fit_length(params: flame.FlameParams, frames: int) -> flame.FlameParams:
  """Cuts to `frames`, or pads by holding the last frame."""
  n = len(params)
  if n >= frames:
    return params.slice(0, frames)
  idx = np.minimum(np.arange(frames), n - 1)
  return flame.FlameParams(params.expression[idx], params.jaw[idx], params.neck[idx], params.shape)


def fit_audio(samples: np.ndarray, frames: int) -> np.ndarray:
  """Cuts or zero-pads 16 kHz samples to exactly `frames` video frames."""
  n = frames * audio_lib.SAMPLES_PER_FRAME
  return samples[:n] if len(samples) >= n else np.pad(samples, (0, n - len(samples)))


def length_notes(frames: int, named: dict[str, int]) -> list[str]:
  """Human-readable notes for inputs whose length differs from the video by more than a frame."""
  notes = []
  for name, n in named.items():
    if abs(n - frames) > 1:
      action = "cut" if n > frames else "padded"
      notes.append(f"{name} has {n} frames ({n / FPS:.2f} s), the video {frames} ({frames / FPS:.2f} s): {action}")
  return notes


# ----------------------------------------------------------------------------- video

def _audio_frames(channels: np.ndarray, rate: int, layout: str, chunk: int = 1024):
  import av

  for start in range(0, channels.shape[1], chunk):
    part = np.ascontiguousarray(channels[:, start:start + chunk], np.float32)
    frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=layout)
    frame.sample_rate = rate
    frame.pts = start
    yield frame


class _Encoder:
  """Encodes and muxes video frames on a worker thread, overlapping GL rendering; muxes
  the (already encoded) audio packets interleaved with the video by time."""

  def __init__(self, container, stream, audio_packets=(), depth: int = 8):
    import queue
    import threading

    self.container, self.stream = container, stream
    self.queue = queue.Queue(depth)
    self.error: BaseException | None = None
    self.count = 0
    self.audio = list(audio_packets)
    self.thread = threading.Thread(target=self._work, name="encode", daemon=True)

  def _work(self):
    import av

    while (img := self.queue.get()) is not None:
      if self.error is not None:
        continue  # drain so the producer never blocks
      try:
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self.count
        self.count += 1
        self.container.mux(self.stream.encode(frame))
        due = 0
        while due < len(self.audio) and self.audio[due].pts * self.audio[due].time_base <= self.count / FPS:
          due += 1
        self.container.mux(self.audio[:due])
        del self.audio[:due]
      except BaseException as e:  # re-raised in the producer
        self.error = e

  def put(self, img: np.ndarray) -> None:
    if self.error is not None:
      raise self.error
    self.queue.put(img)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.queue.put(None)
    self.thread.join()
    if self.error is not None and exc[0] is None:
      raise self.error
    return False


def _container_format(path: str) -> str:
  return {".mov": "mov", ".mkv": "matroska"}.get(os.path.splitext(path)[1].lower(), "mp4")


def render_video(output: str, model: flame.FlameModel, speakers: Sequence[Speaker], *, size: int = 512,
                 frames: int | None = None, crf: int = 18, preset: str = "veryfast", chunk: int = 64,
                 progress: bool | None = True, log: Callable[[str], None] | None = None,
                 backend: str | None = None) -> dict:
  """Renders `speakers` (1 or 2 panels, left to right) to an MP4 at 25 fps with their audio.

  `frames` defaults to the first speaker's motion length. Returns a summary dict
  (frames, seconds, size, renderer, frames_per_s, notes).
  """
  import av

  if size < 16 or size % 2:
    raise ValueError(f"--size must be an even number >= 16, got {size}")
  if not 1 <= len(speakers) <= 2 or speakers[0].params is None:
    raise ValueError("render_video needs one or two speakers, the first with motion")
  parent = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"{parent}: output folder does not exist")
  if not output.lower().endswith((".mp4", ".mov", ".mkv")):
    raise ValueError(f"{output}: the output must end in .mp4 (or .mov / .mkv)")
  log = log or (lambda s: print(s, file=sys.stderr))
  frames = len(speakers[0].params) if frames is None else frames
  if frames < 1:
    raise ValueError("nothing to render: the motion has 0 frames")
  named = {}
  for i, s in enumerate(speakers):
    if s.params is not None:
      named[f"speaker {i + 1} motion"] = len(s.params)
    if s.audio is not None:
      named[f"speaker {i + 1} audio"] = int(np.ceil(len(s.audio) / audio_lib.SAMPLES_PER_FRAME))
  notes = length_notes(frames, named)
  for n in notes:
    log(f"note: {n}")
  params = [None if s.params is None else fit_length(s.params, frames) for s in speakers]
  voices = [fit_audio(s.audio, frames) for s in speakers if s.audio is not None]
  for i, v in enumerate(voices):
    peak = float(np.max(np.abs(v))) if v.size else 0.0
    if peak > 1.0:  # e.g. normalised (unit-variance) audio: scale down rather than clip
      voices[i] = v * (0.99 / peak)
      log(f"note: voice {i + 1} peaks at {peak:.2f} (> 1): scaled by {0.99 / peak:.3f} to avoid clipping")

  dev_model = flame.to_device(model)
  panels = [p for p in params if p is not None]  # faces left to right; a voice may have no face
  renderer = Renderer(np.asarray(model.faces), model.num_vertices, size, len(panels), backend=backend)
  bar = None
  start = time.time()

  def write(tmp):
    with av.open(tmp, mode="w", format=_container_format(output)) as container:
      vstream = container.add_stream("libx264", rate=FPS)
      vstream.width, vstream.height, vstream.pix_fmt = renderer.width, renderer.height, "yuv420p"
      vstream.options = {"crf": str(crf), "preset": preset}
      astream = None
      if voices:
        astream = container.add_stream("aac", rate=audio_lib.SAMPLE_RATE, layout="mono" if len(voices) == 1 else "stereo")
        if len(voices) == 2:
          astream.metadata["title"] = "left channel: speaker 1, right channel: speaker 2"
      audio_packets = []
      if astream is not None:  # encoded up front, muxed interleaved with the video
        for af in _audio_frames(np.stack(voices), audio_lib.SAMPLE_RATE, astream.layout.name):
          audio_packets += astream.encode(af)
        audio_packets += astream.encode(None)
      gens = [flame.sequence_vertices(dev_model, p, chunk=chunk, with_normals=True) for p in panels]
      with _Encoder(container, vstream, audio_packets) as encoder:  # H.264 in a thread (PyAV releases the GIL)
        done = 0
        while done < frames:
          chunks = [next(g) for g in gens]
          for i in range(len(chunks[0][0])):
            encoder.put(renderer.render([(c[0][i], c[1][i]) for c in chunks]).copy())
            if bar:
              bar.update(1)
          done += len(chunks[0][0])
      container.mux(vstream.encode(None))
      container.mux(encoder.audio)

  try:
    # Frame each panel on the bounding box of its whole sequence: a fixed camera, no jitter.
    for k, p in enumerate(panels):
      lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
      for v in flame.sequence_vertices(dev_model, p, chunk=chunk):
        lo, hi = np.minimum(lo, v.min(axis=(0, 1))), np.maximum(hi, v.max(axis=(0, 1)))
      renderer.set_camera(k, camera_for(lo, hi))
    bar = Progress(frames, "render", unit="frame", interval=5.0) if progress else None
    start = time.time()
    atomic_write(output, write)
  finally:
    if bar:
      bar.close()
    renderer.release()
  elapsed = time.time() - start
  return {"output": output, "frames": frames, "seconds": frames / FPS, "width": renderer.width,
          "height": renderer.height, "renderer": renderer.renderer_name, "frames_per_s": frames / max(elapsed, 1e-9),
          "audio_channels": len(voices), "notes": notes}


def load_speaker(motion_path: str | None, audio_path: str | None, channel: int | None = None) -> Speaker:
  """A panel's motion (.npy (T, 56) or FLAME .npz) and voice (any rate, resampled to 16 kHz;
  `channel` picks one of a multichannel file)."""
  params = flame.load_params(motion_path) if motion_path else None
  voice = audio_lib.load_audio(audio_path, channel=channel) if audio_path else None
  return Speaker(params, voice)


def render_conversation(output: str, flame_model: str | flame.FlameModel, motion: np.ndarray,
                        audio: np.ndarray | None = None, motion_other: np.ndarray | None = None,
                        audio_other: np.ndarray | None = None, *, size: int = 512, progress: bool = True) -> dict:
  """Renders in-memory (T, 56) motion and 16 kHz voices (left: the target, right: the partner)."""
  model = flame.load_model(flame_model) if isinstance(flame_model, str) else flame_model
  speakers = [Speaker(flame.params_from_motion(motion), audio)]
  if motion_other is not None or audio_other is not None:
    speakers.append(Speaker(None if motion_other is None else flame.params_from_motion(motion_other), audio_other))
  return render_video(output, model, speakers, size=size, progress=progress)


def render_files(output: str, flame_model: str, motion: str, *, audio: str | None = None,
                 motion_other: str | None = None, audio_other: str | None = None, size: int = 512,
                 channel: int | None = None, progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
  """`experiments.render`: loads the model and the inputs (errors name the file), renders.

  Left panel: `motion` with `audio`; right panel (when `motion_other` is given): the
  partner; `audio_other` goes to the right audio channel.
  """
  model = flame.load_model(flame_model)
  speakers = [load_speaker(motion, audio, channel)]
  if motion_other or audio_other:
    speakers.append(load_speaker(motion_other, audio_other, channel))
  return render_video(output, model, speakers, size=size, progress=progress, log=log)
