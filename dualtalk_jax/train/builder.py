"""The one builder of a training program: mesh, model graph, optimizer, state shardings, steps.

`build(config, devices)` turns a training config into a `Program`: what
`train.loop.train_and_evaluate` runs, what `aot.compile_steps` compiles for a TPU topology
it cannot see, and what validation scores with (`Program.validate`). Building it allocates
nothing; `Program.init_state` and `Program.abstract_state` make the state.

Validation is mesh-aware and multi-host: every host reads its share of the eval rows
(`pipeline.make_eval_dataset` by process) and predicts them with the one prediction
function (`Program.predictor`: the time length all hosts agree on, global arrays built
with `sharding.shard_batch` as training does, the jitted eval step over the sharded
params), and scores its own rows on the host; the sums are combined across hosts
(`eval.evaluate.evaluate_batches`). `experiments.evaluate` runs the same eval step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from dualtalk_jax import sharding
from dualtalk_jax.config import DualTalkConfig, get_model_config
from dualtalk_jax.train import step as step_lib


def model_config(config: ml_collections.ConfigDict) -> DualTalkConfig:
  """The run's model: `config.model`, `wav2vec2_config`, `ablation`, `interaction_residual`,
  `feature_projection_layer_norm`, `scan_layers`."""
  cfg = get_model_config(config.model, config.wav2vec2_config or None, ablation=config.ablation,
                         interaction_residual=config.interaction_residual,
                         feature_projection_layer_norm=config.feature_projection_layer_norm)
  return dataclasses.replace(cfg, scan_layers=config.scan_layers)


def check_model_options(config, cfg: DualTalkConfig) -> None:
  """Refuses run options that mean nothing for the model (its ablation, or encoders without
  the feature-projection LayerNorm that pretrained weights need): a clear error, not a no-op."""
  asked = [name for name, on in (("optim.freeze_wav2vec2", config.optim.freeze_wav2vec2),
                                 ("data.feature_cache", uses_feature_cache(config)),
                                 ("pretrained_wav2vec2", config.pretrained_wav2vec2)) if on]
  if not cfg.uses_wav2vec2 and asked:
    raise ValueError(f"ablation 'mfcc' has no wav2vec2 encoders: {', '.join(asked)} cannot apply; unset it")
  if not cfg.uses_partner_speech and uses_feature_cache(config):
    raise ValueError("ablation 'no_partner_speech' has no audio_encoder2, but the wav2vec2 feature cache is made "
                     "for both encoders; unset data.feature_cache (optim.freeze_wav2vec2 alone works)")
  pretrained = [name for name in asked if name != "optim.freeze_wav2vec2"]
  if cfg.uses_wav2vec2 and not cfg.feature_projection_layer_norm and pretrained:
    raise ValueError(f"feature_projection_layer_norm=False leaves out a layer that pretrained wav2vec2 weights "
                     f"hold and need, so {', '.join(pretrained)} cannot apply; unset it or set "
                     "feature_projection_layer_norm=True")


def compute_dtype(config) -> Any:
  name = config.compute_dtype
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype must be float32 or bfloat16, got {name!r}")
  return jnp.dtype(name)


def uses_feature_cache(config) -> bool:
  return config.data.feature_cache


def frozen_wav2vec2(config) -> bool:
  """Frozen wav2vec2 mode: `optim.freeze_wav2vec2`, or implied by `data.feature_cache`."""
  return config.optim.freeze_wav2vec2 or uses_feature_cache(config)


def make_model_def(config, cfg: DualTalkConfig) -> step_lib.ModelDef:
  """The model graph a run of `config` trains (dtype, remat, frozen wav2vec2)."""
  check_model_options(config, cfg)
  return step_lib.ModelDef(cfg, dtype=compute_dtype(config), remat=config.remat,
                           frozen_encoders=frozen_wav2vec2(config))


def optim_config(config) -> step_lib.OptimConfig:
  o = config.optim
  return step_lib.OptimConfig(learning_rate=o.learning_rate, decay_rate=o.decay_rate, decay_steps=o.decay_steps,
                              grad_clip_norm=o.grad_clip_norm, freeze_feature_extractor=o.freeze_feature_extractor,
                              freeze_wav2vec2=frozen_wav2vec2(config))


@dataclasses.dataclass(frozen=True)
class Program:
  """Everything a run of one config compiles, for one mesh.

  `train_step(state, batch) -> (state, metrics)` and `eval_step(params, batch, max_frames) ->
  predictions` are jitted with the mesh's shardings (`step.make_train_step` /
  `step.make_eval_step`); `state_shardings` places the train state
  ({'step', 'params', 'opt_state'}).
  """

  config: ml_collections.ConfigDict
  model_config: DualTalkConfig
  mesh: Mesh
  model_def: step_lib.ModelDef
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: Any
  train_step: Callable
  eval_step: Callable
  feature_cache: bool

  @property
  def batch_keys(self) -> dict[str, int]:
    """The train step's batch keys and their ranks."""
    return step_lib.batch_ndim(self.feature_cache)

  def abstract_state(self) -> dict:
    """The train state as `jax.ShapeDtypeStruct`s carrying their shardings (nothing allocated)."""
    shapes = jax.eval_shape(lambda p: step_lib.train_state(self.tx, p), self.model_def.abstract_params)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, self.state_shardings)

  def init_state(self, params=None) -> dict:
    """The train state at step 0, made by a jit whose `out_shardings` are the sharding
    rules': fresh params from `config.seed` (params None; each device materialises only
    its own shards), else `params` (host or device arrays) placed by the rules."""
    if params is None:
      seed = self.config.seed
      return jax.jit(lambda: step_lib.train_state(self.tx, self.model_def.init_params(seed)),
                     out_shardings=self.state_shardings)()
    params = jax.device_put(params, self.state_shardings["params"])
    return jax.jit(lambda p: step_lib.train_state(self.tx, p), out_shardings=self.state_shardings)(params)

  def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's rows of a training batch -> global arrays (the train step's keys only)."""
    return sharding.shard_batch({k: v for k, v in batch.items() if k in self.batch_keys}, self.mesh)

  def predictor(self, params):
    """The one prediction function (`eval.predict.Predictor`) over this program's eval step, mesh and `params`."""
    from dualtalk_jax.eval.predict import Predictor

    return Predictor(self.model_def, params, mesh=self.mesh, eval_step=self.eval_step)

  def validate(self, params) -> dict[str, float]:
    """Released loss and paper metrics over the whole `config.data.val_dir` split, every host
    scoring its share (`eval.evaluate.evaluate_batches`): `val_loss`, `val_loss_<part>`,
    `val_<released metric key>` (`config.data.eval_metrics` False: the loss only)."""
    from dualtalk_jax.data import pipeline
    from dualtalk_jax.eval import evaluate

    data = self.config.data
    predictor = self.predictor(params)
    ds = pipeline.make_eval_dataset(data.val_dir, batch_size=predictor.rows(data.eval_batch_size),
                                    bucket_frames=data.eval_bucket_frames)
    return evaluate.evaluate_batches(predictor, ds, scores=data.eval_metrics)


def build(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Program:
  """The program of `config` on a mesh over `devices` (default: `config.mesh.num_devices` or all)."""
  cfg = model_config(config)
  if devices is None:
    devices = jax.devices()[: config.mesh.num_devices] if config.mesh.num_devices else jax.devices()
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
  if config.batch_size % config.grad_accum or (config.batch_size // config.grad_accum) % mesh.size:
    raise ValueError(f"batch_size {config.batch_size} must split over grad_accum {config.grad_accum} and "
                     f"{mesh.size} devices")
  model_def = make_model_def(config, cfg)
  ocfg = optim_config(config)
  tx = step_lib.make_optimizer(ocfg, model_def.abstract_params)
  shapes = jax.eval_shape(lambda p: step_lib.train_state(tx, p), model_def.abstract_params)
  shardings = step_lib.state_shardings(shapes, mesh)
  cached = uses_feature_cache(config)
  train_step = step_lib.make_train_step(model_def, tx, seed=config.seed, grad_accum=config.grad_accum, mesh=mesh,
                                        state_shardings=shardings, feature_cache=cached,
                                        prng_impl=config.prng_impl)
  eval_step = step_lib.make_eval_step(model_def, mesh=mesh, param_shardings=shardings["params"])
  return Program(config, cfg, mesh, model_def, tx, step_lib.learning_rate_schedule(ocfg), shardings, train_step,
                 eval_step, cached)
