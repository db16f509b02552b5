"""The optional wav2vec2 feature cache: frozen encoder outputs per training window.

Training with frozen wav2vec2 encoders (`optim.freeze_wav2vec2`, implied by
`data.feature_cache`) runs both encoders in eval mode, so what a training step gets from
them is a pure function of a window's audio. The cache stores exactly that, for every
training window w of every clip (frames [w*W, (w+1)*W), samples [w*W*640, (w+1)*W*640),
as in the pipeline) and each speaker s:

    audio_encoder1(window audio of s)   used when s is the target ("self")
    audio_encoder2(window audio of s)   used when s is the partner ("other")

each the encoder's last hidden state resampled to W frames (`JointEncoder.encode_audio`
with num_frames = max_frames = W and the full window as input length), (W, hidden)
float32. When both encoders' weights are identical (the usual case: both loaded from one
pretrained wav2vec2) one array per speaker is stored and the manifest says `shared`.

Layout on disk: sibling shards `features-<i>-of-<n>.array_record`, parallel to the
clip shards (feature shard i holds the clips of shard i, in the same order, so feature
record r belongs to clip record r). Same record encoding; keys `motion_1`, `motion_2`
(copied from the clip, so a feature-cache pipeline reads no audio record at all) and,
per speaker s, float32 (n_windows, W, hidden) arrays: `feat_s` when the two encoders
share their weights, else `feat1_s` (audio_encoder1) and `feat2_s` (audio_encoder2).
Clips with no training window get (0, W, hidden) arrays. The manifest's `feature_cache`
(null without a cache) records the weights (source, fingerprints, wav2vec2 config), the
window, dtype, whether the encoders are shared, and the feature shards. The cache adds
files and a manifest entry only; the clip shards and PREPROCESS_VERSION do not change.

Weights (`preprocess(cache_wav2vec2=...)`, `experiments.preprocess --cache_wav2vec2`):
a dualtalk-jax checkpoint directory or training workdir (its latest step; both encoders
as they are there), or a local Hugging Face wav2vec2 directory (loaded into both
encoders, as `pretrained_wav2vec2` does for training).

Fingerprint (`encoder_fingerprint`): sha256 over the wav2vec2 config fields that the
eval-mode forward pass depends on (dropout, LayerDrop and SpecAugment settings excluded)
and every encoder param in sorted path order (path, dtype, shape, little-endian bytes;
the unrolled layer layout, whatever the model's `scan_layers`),
except `masked_spec_embed`, which only SpecAugment reads (HF checkpoints may omit it, and
then it is the random init of whoever loads them). `fingerprint` = sha256 of
"<encoder1>:<encoder2>". The training loop recomputes it from the run's params (after
`pretrained_wav2vec2` / `init_checkpoint` loading, or from the resumed checkpoint) and
refuses data whose cache was made with other weights (`check_run_weights`).

Building runs on the preprocessing host, after the clip shards are written, with one
jitted call per batch of `batch_size` windows (fixed shape, the last batch zero-padded,
so it compiles once). Feature shards parallel the clip shards (same clips, same order:
feature record i is clip record i); each has a sidecar whose fingerprint combines the
clip shard's fingerprint, the weights' fingerprint and the cache format, so a re-run with
the same weights rebuilds nothing and other weights rebuild every feature shard. A
preprocessing run without `cache_wav2vec2` keeps a cache that is still valid for the
(possibly rebuilt) clip shards and drops it from the manifest otherwise.

Use: `data.feature_cache` (the switch; it implies `optim.freeze_wav2vec2`) makes the
training pipeline read the feature shards (`train_source`: batches with `BATCH_NDIM`'s
keys, no audio) and the train step run `DualTalk.from_features` on them
(`train.step.forward`). Validation and prediction always run on audio.

Precision: the cache is computed in float32 (default matmul precision of the device it is
built on). A float32 run on cached features matches the frozen-audio run to float
rounding (tests/feature_cache_test.py); with `compute_dtype=bfloat16` the frozen-audio
run computes the encoders in bf16, the cached run projects the float32 features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from dualtalk_jax.audio import SAMPLES_PER_FRAME
from dualtalk_jax.data import records

# Wav2Vec2Config fields that do not change an eval-mode forward pass.
TRAINING_ONLY_FIELDS = ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "layerdrop",
                        "apply_spec_augment", "mask_time_prob", "mask_time_length", "mask_time_min_masks")
# Encoder params that an eval-mode forward pass does not read.
UNUSED_PARAMS = (("masked_spec_embed",),)
ENCODERS = ("audio_encoder1", "audio_encoder2")
DTYPE = "float32"
# Bumped whenever the cache's content or layout changes (rebuilds the cache only).
VERSION = "1"
PREFIX = "features-"
# A training batch with cached features: its keys and their ranks.
BATCH_NDIM = {"features_self": 3, "features_other": 3, "motion_other": 3, "motion_self": 3,
              "motion_other_lengths": 1, "num_frames": 1}


def shard_name(index: int, count: int) -> str:
  return f"{PREFIX}{index:05d}-of-{count:05d}.array_record"


def record_keys(shared: bool, target: int) -> tuple[str, str]:
  """Feature record keys (self, other) when speaker `target` (1 or 2) is the target."""
  s, o = (1, 2) if target == 1 else (2, 1)
  return (f"feat_{s}", f"feat_{o}") if shared else (f"feat1_{s}", f"feat2_{o}")


def cache_entry(data_dir: str, manifest: dict[str, Any], window_frames: int | None = None) -> dict[str, Any]:
  """The manifest's `feature_cache`, checked: present, this code's format, the window
  `window_frames` (if given), and every feature shard present, whole and parallel to
  its clip shard."""
  path = os.path.join(data_dir, records.MANIFEST)
  cache = manifest.get("feature_cache")
  if not cache:
    raise records.DataError(f"{data_dir}: no wav2vec2 feature cache (the manifest's feature_cache is null); build it "
                            "with `python -m experiments.preprocess ... --cache_wav2vec2=<checkpoint or HF wav2vec2 dir>`")
  if cache.get("version") != VERSION:
    raise records.DataError(f"{path}: feature cache version {cache.get('version')!r}, this code reads {VERSION!r}; "
                            "re-run preprocessing with --cache_wav2vec2")
  if window_frames is not None and int(cache["window_frames"]) != int(window_frames):
    raise records.DataError(f"{path}: the feature cache holds windows of {cache['window_frames']} frames, training "
                            f"uses {window_frames}; re-run preprocessing with --window_frames={window_frames} "
                            "--cache_wav2vec2")
  if [(s["clip_shard"], s["num_records"]) for s in cache["shards"]] != [
      (s["file"], s["num_records"]) for s in manifest["shards"]]:
    raise records.DataError(f"{path}: the feature shards do not match the clip shards; re-run preprocessing")
  records.check_files(data_dir, cache["shards"], "feature shard")
  return cache


def reader(data_dir: str, manifest: dict[str, Any]):
  """A `pipeline.ClipReader` over the feature shards (feature record r belongs to clip record r)."""
  from dualtalk_jax.data import pipeline

  return pipeline.ClipReader(data_dir, manifest, [os.path.join(data_dir, s["file"])
                                                  for s in manifest["feature_cache"]["shards"]])


class WindowFeatures:
  """The model inputs of one training window from its feature record (the audio pipeline
  slices audio there): `features_self`, `features_other`, each (W, hidden)."""

  def __init__(self, shared: bool):
    self.shared = shared

  def __call__(self, record: dict[str, Any], window: int, target: int) -> dict[str, np.ndarray]:
    k_s, k_o = record_keys(self.shared, target)
    return {"features_self": record[k_s][window], "features_other": record[k_o][window]}


def train_source(data_dir: str, manifest: dict[str, Any], window_frames: int):
  """(reader, window inputs) of `pipeline.make_train_dataset(feature_cache=True)`: the
  cache is checked for `window_frames` first (`cache_entry`)."""
  cache = cache_entry(data_dir, manifest, window_frames)
  return reader(data_dir, manifest), WindowFeatures(bool(cache["shared"]))


def eval_config(config) -> dict[str, Any]:
  """The wav2vec2 config fields that an eval-mode forward pass depends on (JSON-able)."""
  d = dataclasses.asdict(config)
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(d.items()) if k not in TRAINING_ONLY_FIELDS}


def encoder_fingerprint(params: Mapping, config) -> str:
  """sha256 of one encoder's eval-relevant config and params (see module docstring).

  `params` is the encoder's nested params dict (`params["joint_encoder"]["audio_encoder1"]`
  of a checkpoint tree, or `params.of(encoder)`), host or device arrays."""
  from dualtalk_jax import params as params_lib
  from dualtalk_jax.convert import table

  h = hashlib.sha256()
  h.update(json.dumps(eval_config(config), sort_keys=True).encode())
  # Hashed in the unrolled layer layout, so the stacked and the unrolled layout of the
  # same weights (and caches made before layer scanning) share a fingerprint.
  flat = {tuple(k.split(".")): v for k, v in table.unstack_layers(
      {p: np.asarray(v) for p, v in params_lib.flatten(params).items()}).items()}
  for path in sorted(flat):
    if tuple(path) in UNUSED_PARAMS:
      continue
    a = np.ascontiguousarray(np.asarray(flat[path]))
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h.update(json.dumps([".".join(path), a.dtype.str, list(a.shape)]).encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()


def combined_fingerprint(fingerprints) -> str:
  return hashlib.sha256(":".join(fingerprints).encode()).hexdigest()


@dataclasses.dataclass
class EncoderWeights:
  """Both encoders' params (nested dicts), their wav2vec2 config and where they came from."""

  params: tuple[dict, dict]
  config: Any  # Wav2Vec2Config
  source: str
  kind: str  # "dualtalk_checkpoint" or "hf_wav2vec2"
  step: int | None = None

  def __post_init__(self):
    self.fingerprints = tuple(encoder_fingerprint(p, self.config) for p in self.params)
    self.fingerprint = combined_fingerprint(self.fingerprints)
    self.shared = self.fingerprints[0] == self.fingerprints[1]


def source_kind(source: str) -> str | None:
  """"dualtalk_checkpoint", "hf_wav2vec2", or None when `source` is neither."""
  from dualtalk_jax import checkpoint

  try:
    checkpoint.resolve(source)
    return "dualtalk_checkpoint"
  except FileNotFoundError:
    pass
  if os.path.exists(os.path.join(source, "config.json")):
    return "hf_wav2vec2"
  return None


def not_weights_message(source: str) -> str:
  return (f"{source}: neither a dualtalk-jax checkpoint / training workdir (model_config.json) nor a Hugging Face "
          "wav2vec2 directory (config.json + weights)")


def load_weights(source: str) -> EncoderWeights:
  """The encoders of a dualtalk-jax checkpoint / training workdir, or of a local HF wav2vec2 dir."""
  from dualtalk_jax import checkpoint, params as params_lib

  source = os.path.abspath(os.fspath(source))
  kind = source_kind(source)
  if kind == "dualtalk_checkpoint":
    params, cfg, step = checkpoint.restore_params(source, scan_layers=True)  # as `make_encode_fn` builds it
    enc = params["joint_encoder"]
    return EncoderWeights((enc[ENCODERS[0]], enc[ENCODERS[1]]), cfg.wav2vec2, source, kind, int(step))
  if kind == "hf_wav2vec2":
    from flax import nnx

    from dualtalk_jax.config import Wav2Vec2Config
    from dualtalk_jax.convert import hf_wav2vec2
    from dualtalk_jax.models.wav2vec2 import Wav2Vec2Model

    cfg = Wav2Vec2Config.from_json(source)
    model = Wav2Vec2Model(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    hf_wav2vec2.load_into(model, source)
    p = jax_to_numpy(params_lib.of(model))
    return EncoderWeights((p, p), cfg, source, kind)
  raise FileNotFoundError(not_weights_message(source))


def jax_to_numpy(tree):
  import jax

  return jax.tree.map(np.asarray, tree)


def full_config(config) -> dict[str, Any]:
  d = dataclasses.asdict(config)
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(d.items())}


def make_encode_fn(config, window_frames: int):
  """jit(params_list, audio (N, W*640)) -> tuple of (N, W, H) float32, one per encoder.

  Exactly `JointEncoder.encode_audio` on full windows, encoders in eval mode."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from dualtalk_jax import params as params_lib
  from dualtalk_jax.models.wav2vec2 import Wav2Vec2Model

  model = nnx.eval_shape(lambda: Wav2Vec2Model(config, rngs=nnx.Rngs(params=0, dropout=1)))
  model.eval()
  graph, _, rest = nnx.split(model, nnx.Param, ...)
  rest = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                      else jax.random.wrap_key_data(jnp.zeros(x.shape + (2,), jnp.uint32)), rest)
  w = int(window_frames)

  def encode(params, audio):
    enc = params_lib.merge(graph, params, jax.tree.map(jnp.asarray, rest))
    n = audio.shape[0]
    h, _ = enc(audio, input_lengths=jnp.full((n,), w * SAMPLES_PER_FRAME, jnp.int32),
               num_frames=jnp.full((n,), w, jnp.int32),
               max_frames=w)
    return h.astype(jnp.float32)

  def fn(params_list, audio):
    return tuple(encode(p, audio) for p in params_list)

  return jax.jit(fn)


def shard_fingerprint(clip_shard_fingerprint: str, weights_fingerprint: str, shared: bool) -> str:
  return hashlib.sha256(json.dumps([VERSION, clip_shard_fingerprint, weights_fingerprint,
                                    bool(shared), DTYPE]).encode()).hexdigest()


def _sidecar_ok(output_dir, fname, fingerprint, num_records):
  try:
    with open(os.path.join(output_dir, fname + ".json")) as f:
      s = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  p = os.path.join(output_dir, fname)
  if (s.get("fingerprint") != fingerprint or s.get("num_records") != num_records or not os.path.exists(p)
      or os.path.getsize(p) != s.get("bytes")):
    return None
  return s


class _Encoder:
  """Batches windows across clips into fixed-shape calls; writes each clip when complete."""

  def __init__(self, fn, params, batch_size, window_frames, write, bar):
    self.fn, self.params, self.b, self.w = fn, params, batch_size, window_frames
    self.write, self.bar = write, bar
    self.rows, self.dest = [], []  # window audio; [(clip slot, [(array, index)])]
    self.clips = []  # [[name, frames, arrays, remaining]]

  def add_clip(self, name, frames, arrays, items):
    """items: [(audio window, [(dest array for encoder 0, index), (for encoder 1, index)?])]."""
    slot = [name, frames, arrays, len(items)]
    self.clips.append(slot)
    for audio, dest in items:
      self.rows.append(audio)
      self.dest.append((slot, dest))
      if len(self.rows) == self.b:
        self.flush()
    self._write_done()

  def flush(self):
    if self.rows:
      n = len(self.rows)
      x = np.zeros((self.b, self.w * SAMPLES_PER_FRAME), np.float32)
      x[:n] = np.stack(self.rows)
      outs = [np.asarray(o) for o in self.fn(self.params, x)]
      for i, (slot, dest) in enumerate(self.dest):
        for out, (arr, k) in zip(outs, dest):
          arr[k] = out[i]
        slot[3] -= 1
      if self.bar is not None:
        self.bar.update(n)
      self.rows, self.dest = [], []
    self._write_done()

  def _write_done(self):
    while self.clips and self.clips[0][3] == 0:
      name, frames, arrays, _ = self.clips.pop(0)
      self.write(records.encode_clip(name, frames, arrays))


def build(output_dir: str, plan, done: Mapping[str, dict], source: str, window_frames: int, *, batch_size: int = 8,
          progress: bool = False) -> dict[str, Any]:
  """Builds (or keeps, when up to date) the feature shards for the clip shards in `plan`.

  `plan`: [(clip shard file, clip names, clip shard fingerprint)] and `done`: {file:
  sidecar} as in preprocess.py. Returns the manifest's `feature_cache` entry."""
  import grain
  from array_record.python.array_record_module import ArrayRecordWriter

  if batch_size < 1:
    raise ValueError("cache batch_size must be >= 1")
  weights = load_weights(source)
  w = int(window_frames)
  todo, keep = [], set()
  for i, (fname, _, fp) in enumerate(plan):
    side = done[fname]
    if not side["num_records"]:
      continue
    ffile = shard_name(i, len(plan))
    keep |= {ffile, ffile + ".json"}
    sfp = shard_fingerprint(fp, weights.fingerprint, weights.shared)
    if _sidecar_ok(output_dir, ffile, sfp, side["num_records"]) is None:
      todo.append((fname, ffile, sfp, side))
  for name in os.listdir(output_dir):  # feature shards of another shard layout
    if name.startswith(PREFIX) and name not in keep:
      os.remove(os.path.join(output_dir, name))

  if todo:
    import jax

    fn = make_encode_fn(weights.config, w)
    params = [jax.device_put(weights.params[0])]
    if not weights.shared:
      params.append(jax.device_put(weights.params[1]))
    hidden = weights.config.hidden_size
    bar = None
    if progress:
      from dualtalk_jax.progress import Progress

      total = sum(records.window_count(c["frames"], c["audio_samples"], w) for *_, side in todo for c in side["clips"])
      bar = Progress(2 * total, "wav2vec2 cache", unit="window")
    try:
      for fname, ffile, sfp, side in todo:
        path = os.path.join(output_dir, ffile)
        tmp = os.path.join(output_dir, ".tmp-" + ffile)
        writer = ArrayRecordWriter(tmp, "group_size:1,uncompressed")
        try:
          enc = _Encoder(fn, params, batch_size, w, writer.write, bar)
          source_ds = grain.sources.ArrayRecordDataSource([os.path.join(output_dir, fname)])
          for i, c in enumerate(side["clips"]):
            clip = records.decode_clip(source_ds[i])
            n = records.window_count(c["frames"], c["audio_samples"], w)
            arrays = {"motion_1": clip["motion_1"], "motion_2": clip["motion_2"]}
            items = []
            for s in (1, 2):
              keys = [f"feat_{s}"] if weights.shared else [f"feat1_{s}", f"feat2_{s}"]
              for k in keys:
                arrays[k] = np.zeros((n, w, hidden), np.float32)
              a = clip[f"audio_{s}"]
              for win in range(n):
                span = w * SAMPLES_PER_FRAME
                items.append((a[win * span:(win + 1) * span], [(arrays[k], win) for k in keys]))
            enc.add_clip(clip["name"], clip["frames"], arrays, items)
          enc.flush()
          assert not enc.clips
          writer.close()
          writer = None
          os.replace(tmp, path)
        finally:
          if writer is not None:
            writer.close()
          if os.path.exists(tmp):
            os.remove(tmp)
        records.write_json(path + ".json", {"fingerprint": sfp, "num_records": side["num_records"],
                                            "bytes": os.path.getsize(path), "clip_shard": fname,
                                            "weights_fingerprint": weights.fingerprint})
    finally:
      if bar is not None:
        bar.close()
  return _entry(output_dir, plan, done, weights.source, weights.kind, weights.step, weights.fingerprint,
                list(weights.fingerprints), weights.shared, full_config(weights.config), w)


def _entry(output_dir, plan, done, source, kind, step, fingerprint, fingerprints, shared, config, window_frames):
  shards = []
  for i, (fname, _, _) in enumerate(plan):
    if done[fname]["num_records"]:
      ffile = shard_name(i, len(plan))
      with open(os.path.join(output_dir, ffile + ".json")) as f:
        side = json.load(f)
      shards.append({"file": ffile, "clip_shard": fname, "num_records": side["num_records"], "bytes": side["bytes"]})
  return {
      "version": VERSION,
      "source": source,
      "source_kind": kind,
      "source_step": step,
      "fingerprint": fingerprint,
      "encoder_fingerprints": fingerprints,
      "shared": bool(shared),
      "wav2vec2_config": dict(sorted(config.items())),
      "hidden_size": int(config["hidden_size"]),
      "window_frames": int(window_frames),
      "dtype": DTYPE,
      "layer": "last_hidden_state",
      "shards": shards,
  }


def carry_over(output_dir: str, plan, done: Mapping[str, dict]) -> dict[str, Any] | None:
  """The previous manifest's cache, if every feature shard is still valid for `plan`; else None."""
  try:
    with open(os.path.join(output_dir, records.MANIFEST)) as f:
      old = json.load(f).get("feature_cache")
  except (OSError, json.JSONDecodeError, AttributeError):
    return None
  if not old or old.get("version") != VERSION:
    return None
  for i, (fname, _, fp) in enumerate(plan):
    n = done[fname]["num_records"]
    if n and _sidecar_ok(output_dir, shard_name(i, len(plan)),
                         shard_fingerprint(fp, old["fingerprint"], old["shared"]), n) is None:
      return None
  return _entry(output_dir, plan, done, old["source"], old["source_kind"], old["source_step"], old["fingerprint"],
                old["encoder_fingerprints"], old["shared"], old["wav2vec2_config"], old["window_frames"])


def run_fingerprints(params: Mapping, config) -> tuple[str, tuple[str, str]]:
  """(combined, per encoder) fingerprints of a DualTalk params tree's encoders (host arrays)."""
  enc = params["joint_encoder"]
  fps = tuple(encoder_fingerprint(enc[e], config) for e in ENCODERS)
  return combined_fingerprint(fps), fps


def check_run_weights(data_dir: str, params: Mapping, config, window_frames: int) -> dict[str, Any]:
  """Refuses (`records.DataError`) a data dir without a cache, or whose cache was made with
  other encoder weights or another window than the run's. Returns the cache entry."""
  manifest = records.load_manifest(data_dir)
  cache = cache_entry(data_dir, manifest, window_frames)
  fp, _ = run_fingerprints(params, config)
  if fp != cache["fingerprint"]:
    mine = eval_config(config)
    theirs = {k: v for k, v in cache["wav2vec2_config"].items() if k not in TRAINING_ONLY_FIELDS}
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    why = f"; the wav2vec2 configs differ in {diff}" if diff else ""
    raise records.DataError(
        f"{data_dir}: its wav2vec2 feature cache was made with other encoder weights (cache fingerprint "
        f"{cache['fingerprint']} from {cache['source']}, this run's encoders {fp}{why}); re-run "
        "`python -m experiments.preprocess --cache_wav2vec2=<the weights this run starts from>` or train without "
        "data.feature_cache")
  return cache
