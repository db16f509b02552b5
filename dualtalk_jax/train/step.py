"""Pure, jitted training and prediction steps over an explicit train state.

The model is split once (`nnx.split`) into a graph definition and its params; params
live in the train state in the library's one form (`dualtalk_jax.params`, what
checkpoints store), so the optimizer state, the sharding rules and the checkpoints all
address a parameter by the same path. `nnx.merge` happens only inside traced functions,
fresh params included (`ModelDef.init_params` under a jit with `out_shardings`).
Dropout/SpecAugment/LayerDrop randomness is a pure function of (seed, step, micro-batch):
the step reseeds the model's 'dropout' streams, so a resumed run draws exactly what a
straight run draws.

Frozen wav2vec2 mode (`ModelDef(frozen_encoders=True)` with
`OptimConfig(freeze_wav2vec2=True)`): both encoders run in eval mode and get no gradient
and no optimizer moments; their params stay in the tree untouched. In that mode the step
can take cached encoder outputs instead of audio (`make_train_step(feature_cache=True)`,
set by the run's `data.feature_cache`; batch keys `FEATURE_BATCH_NDIM`, run through
`DualTalk.from_features`), which gives the same loss and updates as the audio step
without running wav2vec2.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from dualtalk_jax import params as params_lib, sharding
from dualtalk_jax.config import DualTalkConfig
from dualtalk_jax.data.feature_cache import BATCH_NDIM as FEATURE_BATCH_NDIM
from dualtalk_jax.models.dualtalk import DualTalk, frame_mask, freeze_audio_encoders, make_rngs
from dualtalk_jax.train.loss import dualtalk_loss

MODEL_INPUTS = ("audio_self", "audio_other", "motion_other", "audio_self_lengths", "audio_other_lengths",
                "motion_other_lengths", "num_frames")
BATCH_NDIM = {"audio_self": 2, "audio_other": 2, "motion_other": 3, "motion_self": 3, "audio_self_lengths": 1,
              "audio_other_lengths": 1, "motion_other_lengths": 1, "num_frames": 1}
FROZEN = re.compile(r".*\.feature_extractor\..*")  # the conv feature extractors (released: frozen)
ENCODERS = re.compile(r"joint_encoder\.audio_encoder[12]\..*")  # frozen wav2vec2 mode


def batch_ndim(feature_cache: bool = False) -> dict[str, int]:
  """The train/eval step's batch keys and their ranks."""
  return FEATURE_BATCH_NDIM if feature_cache else BATCH_NDIM


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-4
  decay_rate: float = 0.8  # released: lr x0.8 ...
  decay_steps: int = 0  # ... every this many steps (50 epochs); 0 = constant
  grad_clip_norm: float = 0.0  # 0 = off (released: off)
  freeze_feature_extractor: bool = True
  freeze_wav2vec2: bool = False  # both whole encoders frozen (no update, no moments)


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  if cfg.decay_steps <= 0:
    return optax.constant_schedule(cfg.learning_rate)
  return optax.exponential_decay(cfg.learning_rate, cfg.decay_steps, cfg.decay_rate, staircase=True)


def param_labels(params, *, feature_extractor: bool = True, encoders: bool = False) -> Any:
  """"frozen" for the conv feature extractors (if `feature_extractor`) and the whole
  wav2vec2 encoders (if `encoders`), "train" elsewhere."""
  def frozen(name):
    return bool((feature_extractor and FROZEN.fullmatch(name)) or (encoders and ENCODERS.fullmatch(name)))

  return params_lib.unflatten({p: ("frozen" if frozen(p) else "train") for p in params_lib.flatten(params)})


def make_optimizer(cfg: OptimConfig, params) -> optax.GradientTransformation:
  """Adam as released, with the conv feature extractors frozen (no update, no moments);
  with `freeze_wav2vec2` both wav2vec2 encoders entirely."""
  parts = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm > 0 else []
  adam = optax.chain(*parts, optax.adam(learning_rate_schedule(cfg)))
  if not (cfg.freeze_feature_extractor or cfg.freeze_wav2vec2):
    return adam
  labels = param_labels(params, feature_extractor=cfg.freeze_feature_extractor, encoders=cfg.freeze_wav2vec2)
  return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)


class ModelDef:
  """A DualTalk graph split from its params, for use inside traced functions.

  `frozen_encoders`: the training graph runs both wav2vec2 encoders in eval mode with no
  gradient (`dualtalk.freeze_audio_encoders`); pair it with `freeze_wav2vec2` in the
  optimizer."""

  def __init__(self, cfg: DualTalkConfig, *, dtype=jnp.float32, remat: str = "", frozen_encoders: bool = False):
    model = nnx.eval_shape(lambda: DualTalk(cfg, rngs=make_rngs(0), dtype=dtype, remat=remat))
    self.config = cfg
    self.frozen_encoders = frozen_encoders
    model.train()
    if frozen_encoders:
      freeze_audio_encoders(model)
    self.train_graph, _, self.rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    self.eval_graph, _, _ = nnx.split(model, nnx.Param, ...)
    self.abstract_params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), params_lib.of(model))
    # the rng state leaves are key arrays: concrete placeholders, reseeded every step
    self.rest = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                             else jax.random.wrap_key_data(jnp.zeros(x.shape + (2,), jnp.uint32)), self.rest)

  def merge(self, params, *, train: bool) -> DualTalk:
    rest = jax.tree.map(jnp.asarray, self.rest)  # fresh Variables at the caller's trace level
    return params_lib.merge(self.train_graph if train else self.eval_graph, params, rest)

  def init_params(self, seed: int) -> dict:
    """Fresh params (torch-style init for DualTalk layers, HF-style for wav2vec2). Under a
    jit whose `out_shardings` place them (`builder.Program.init_state`), every device makes
    only its own shards."""
    return params_lib.of(DualTalk(self.config, rngs=make_rngs(seed)))


def forward(model: DualTalk, batch: dict, max_frames: int, *, feature_cache: bool = False):
  """The model on a batch: audio (`MODEL_INPUTS`), or with `feature_cache` (the run's
  `data.feature_cache`) cached wav2vec2 features (`FEATURE_BATCH_NDIM`, `DualTalk.from_features`)."""
  if feature_cache:
    return model.from_features(batch["features_self"], batch["features_other"], batch["motion_other"],
                               motion_other_lengths=batch["motion_other_lengths"], num_frames=batch["num_frames"])
  return model(*(batch[k] for k in MODEL_INPUTS[:3]),
               audio_self_lengths=batch["audio_self_lengths"], audio_other_lengths=batch["audio_other_lengths"],
               motion_other_lengths=batch["motion_other_lengths"], num_frames=batch["num_frames"], max_frames=max_frames)


def batch_loss(model: DualTalk, batch: dict, *, feature_cache: bool = False):
  max_frames = batch["motion_self"].shape[1]
  pred = forward(model, batch, max_frames, feature_cache=feature_cache)
  mask = frame_mask(batch["num_frames"], max_frames)
  return dualtalk_loss(pred, batch["motion_self"], mask)


PRNG_IMPLS = ("threefry2x32", "rbg")


def prng_impl_for(name: str, platform: str) -> str:
  """`config.prng_impl` -> the step's `jax.random` implementation on devices of `platform`.

  "auto" is "rbg" on TPU and "threefry2x32" elsewhere. "rbg" draws the bits with XLA's
  RngBitGenerator, which a TPU runs in hardware, instead of inlining a Threefry hash per
  dropout: the large recipe's bfloat16 step for v5e:4x4 compiles in 110 s instead of
  138-155 s (docs/aot_table.md). On CPU the expanded RngBitGenerator is no faster than
  Threefry (a median 11.0 s against 10.0 s per large step, `benchmarks/train_step.py
  --prng_impl`). Both give the same draws on any sharding of the batch; only
  "threefry2x32" gives them on every platform.
  """
  if name == "auto":
    return "rbg" if platform == "tpu" else "threefry2x32"
  if name not in PRNG_IMPLS:
    raise ValueError(f"config.prng_impl={name!r}: use 'auto' or one of {PRNG_IMPLS}")
  return name


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation, *, seed: int, grad_accum: int = 1,
                    mesh: Mesh | None = None, state_shardings=None, feature_cache: bool = False,
                    prng_impl: str = "auto") -> Callable:
  """jit(state, batch) -> (state, metrics), with state = {'step', 'params', 'opt_state'}.

  The global batch is split into `grad_accum` micro-batches whose gradients are averaged
  (a scan, so memory is that of one micro-batch). With a mesh, the step has explicit
  in/out shardings and donates the old state. `feature_cache`: batches hold cached
  wav2vec2 features (`FEATURE_BATCH_NDIM`) instead of audio; needs a frozen-encoder
  `model_def`.

  `prng_impl` (`config.prng_impl`): the `jax.random` implementation of the step's dropout,
  SpecAugment and LayerDrop draws, "auto" resolved for the mesh's devices (`prng_impl_for`).
  """
  if feature_cache and not model_def.frozen_encoders:
    raise ValueError("cached wav2vec2 features need the frozen wav2vec2 mode (ModelDef(frozen_encoders=True))")
  keys = batch_ndim(feature_cache)
  platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
  base_key = jax.random.key(seed, impl=prng_impl_for(prng_impl, platform))

  def micro_loss(params, micro, key):
    model = model_def.merge(params, train=True)
    nnx.reseed(model, dropout=key)
    return batch_loss(model, micro, feature_cache=feature_cache)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step_fn(state, batch):
    step = state["step"]
    key = jax.random.fold_in(base_key, step)
    batch = {k: batch[k] for k in keys}
    if grad_accum == 1:
      (loss, parts), grads = grad_fn(state["params"], batch, jax.random.fold_in(key, 0))
    else:
      micro = jax.tree.map(lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]), batch)

      def body(acc, xs):
        i, mb = xs
        (l, p), g = grad_fn(state["params"], mb, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, acc, (l, p, g)), None

      zeros = jax.tree.map(jnp.zeros_like, (jnp.zeros(()), {k: jnp.zeros(()) for k in ("exp", "jaw", "neck", "velocity")},
                                            state["params"]))
      (loss, parts, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
      loss, parts, grads = jax.tree.map(lambda x: x / grad_accum, (loss, parts, grads))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, **{f"loss_{k}": v for k, v in parts.items()}, "grad_norm": optax.tree.norm(grads)}
    return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics

  if mesh is None:
    return jax.jit(step_fn, donate_argnums=0)
  batch_sh = {k: sharding.batch_sharding(mesh, n) for k, n in keys.items()}
  return jax.jit(step_fn, in_shardings=(state_shardings, batch_sh), out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=0)


def make_eval_step(model_def: ModelDef, *, mesh: Mesh | None = None, param_shardings=None) -> Callable:
  """jit(params, batch, max_frames) -> predictions (B, max_frames, 56) in eval mode.

  The one prediction function (`eval.predict.Predictor` runs it for validation, evaluation,
  inference, streaming and the benchmarks; AOT compiles it). `batch` holds the
  `MODEL_INPUTS`; `max_frames` is static. With a mesh, params, the global batch (split
  over the batch axes, as in training) and the predictions have explicit shardings."""

  def eval_fn(params, batch, max_frames):
    return forward(model_def.merge(params, train=False), batch, max_frames)

  if mesh is None:
    return jax.jit(eval_fn, static_argnums=2)
  batch_sh = {k: sharding.batch_sharding(mesh, BATCH_NDIM[k]) for k in MODEL_INPUTS}
  return jax.jit(eval_fn, static_argnums=2, in_shardings=(param_shardings, batch_sh),
                 out_shardings=sharding.batch_sharding(mesh, 3))


def train_state(tx: optax.GradientTransformation, params) -> dict:
  """The train state at step 0: {'step', 'params', 'opt_state'} (jit it, with the
  shardings of `state_shardings` as `out_shardings` on a mesh)."""
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def state_shardings(abstract_state, mesh: Mesh):
  sh = sharding.tree_shardings(abstract_state, mesh)
  sh["step"] = sharding.replicated(mesh)
  return sh


def host_params(state) -> dict:
  """Params as host numpy arrays (gathers sharded arrays; multi-host safe)."""
  from jax.experimental import multihost_utils

  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), state["params"])
