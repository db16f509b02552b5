"""On-disk layout of preprocessed data: one ArrayRecord record per clip, plus a manifest.

A preprocessed directory holds

    shard-00000-of-00004.array_record        records (group_size:1, uncompressed)
    shard-00000-of-00004.array_record.json   sidecar: fingerprint, entries, skipped clips
    ...
    features-00000-of-00004.array_record     optional wav2vec2 feature cache (below)
    features-00000-of-00004.array_record.json
    ...
    manifest.json                            written last; the only file readers trust

Record encoding (`encode_clip` / `decode_clip`): `b"DTR1"`, a little-endian uint32
header length, a JSON header `{"name", "frames", "arrays": {key: [dtype, shape,
offset]}}`, then the raw little-endian array bytes, each aligned to 64 bytes. Decoding is
zero-copy (`np.frombuffer`), so it round-trips exactly and costs no extra copy of the
audio. Keys: `audio_1`, `audio_2` (normalised float32 16 kHz), `motion_1`, `motion_2`
(float32 (T, 56)), all speakers cut to the same T frames (see preprocess.py).

The optional wav2vec2 feature cache adds sibling `features-*` shards (same record
encoding) and the manifest's `feature_cache` entry: its layout is in feature_cache.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

import numpy as np

from dualtalk_jax.audio import SAMPLES_PER_FRAME

MAGIC = b"DTR1"
_ALIGN = 64
# Bumped whenever the record content or the validation rules change; a mismatch makes
# `preprocess` rebuild every shard and the pipeline refuse the data.
PREPROCESS_VERSION = "1"
MANIFEST = "manifest.json"
RECORD_KEYS = ("audio_1", "audio_2", "motion_1", "motion_2")


class DataError(ValueError):
  """Preprocessed data that cannot be used; the message names the file and the problem."""


def shard_name(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}.array_record"


def usable_frames(frames: int, audio_samples) -> int:
  """Frames whose whole 640-sample audio span exists for both speakers."""
  return min(int(frames), *(int(n) // SAMPLES_PER_FRAME for n in audio_samples))


def window_count(frames: int, audio_samples, window_frames: int) -> int:
  """Training windows of a clip: `min(T, min_s(samples_s) // 640) // window_frames`.

  Non-overlapping windows from frame 0; window w covers frames [w*W, (w+1)*W) and
  samples [w*W*640, (w+1)*W*640). A partial last window is dropped, as in the released
  recipe (which also skips clips shorter than one window).
  """
  return usable_frames(frames, audio_samples) // int(window_frames)


def encode_clip(name: str, frames: int, arrays: dict[str, np.ndarray]) -> bytes:
  """Serialises one clip (see module docstring) to bytes."""
  header: dict[str, Any] = {"name": name, "frames": int(frames), "arrays": {}}
  blobs, offset = [], 0
  for key, a in arrays.items():
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    offset = -(-offset // _ALIGN) * _ALIGN
    header["arrays"][key] = [a.dtype.str, list(a.shape), offset]
    blobs.append((offset, a.tobytes()))
    offset += a.nbytes
  hbytes = json.dumps(header).encode()
  start = -(-(8 + len(hbytes)) // _ALIGN) * _ALIGN
  out = bytearray(start + offset)
  out[:4] = MAGIC
  out[4:8] = len(hbytes).to_bytes(4, "little")
  out[8:8 + len(hbytes)] = hbytes
  for off, b in blobs:
    out[start + off:start + off + len(b)] = b
  return bytes(out)


def decode_clip(buf: bytes) -> dict[str, Any]:
  """Inverse of `encode_clip`: `{"name", "frames", <array keys>}`; arrays are read-only views."""
  if buf[:4] != MAGIC:
    raise DataError(f"not a DualTalk clip record (magic {bytes(buf[:4])!r})")
  hlen = int.from_bytes(buf[4:8], "little")
  header = json.loads(bytes(buf[8:8 + hlen]))
  start = -(-(8 + hlen) // _ALIGN) * _ALIGN
  out: dict[str, Any] = {"name": header["name"], "frames": header["frames"]}
  for key, (dtype, shape, off) in header["arrays"].items():
    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    out[key] = np.frombuffer(buf, dt, count, start + off).reshape(shape)
  return out


def atomic_write(path: str, write: Callable[[str], None]) -> None:
  """Calls `write(tmp)` on a temp name in the same folder, then renames it to `path`."""
  d = os.path.dirname(path) or "."
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix="-" + os.path.basename(path))
  os.close(fd)
  try:
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual mode.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  def w(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1, sort_keys=False)
      f.write("\n")
  atomic_write(path, w)


def load_manifest(data_dir: str) -> dict[str, Any]:
  """Reads and checks `manifest.json`: version, and every listed shard present and whole."""
  path = os.path.join(data_dir, MANIFEST)
  if not os.path.exists(path):
    raise DataError(f"{path}: no manifest; run `python -m experiments.preprocess` first "
                    "(or preprocessing did not finish)")
  try:
    with open(path) as f:
      m = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: not valid JSON ({e})") from None
  v = m.get("preprocessing_version")
  if v != PREPROCESS_VERSION:
    raise DataError(f"{path}: preprocessing version {v!r}, this code reads "
                    f"{PREPROCESS_VERSION!r}; re-run preprocessing")
  check_files(data_dir, m["shards"], "shard")
  return m


def check_files(data_dir: str, shards: list[dict[str, Any]], what: str) -> None:
  """Every listed file is present and has the size the manifest records."""
  for s in shards:
    p = os.path.join(data_dir, s["file"])
    if not os.path.exists(p):
      raise DataError(f"{p}: {what} listed in the manifest is missing")
    if os.path.getsize(p) != s["bytes"]:
      raise DataError(f"{p}: {os.path.getsize(p)} bytes, the manifest says {s['bytes']}")


def shard_paths(data_dir: str, manifest: dict[str, Any]) -> list[str]:
  return [os.path.join(data_dir, s["file"]) for s in manifest["shards"]]


def open_records(data_dir: str, manifest: dict[str, Any] | None = None):
  """A grain `ArrayRecordDataSource` over all shards, in manifest order (global index)."""
  import grain

  manifest = manifest or load_manifest(data_dir)
  paths = shard_paths(data_dir, manifest)
  if not paths:
    raise DataError(f"{data_dir}: the manifest lists no clips")
  return grain.sources.ArrayRecordDataSource(paths)
