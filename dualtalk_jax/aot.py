"""Ahead-of-time compilation of the training and prediction steps for TPU topologies.

With `libtpu` installed (`requirements-tpu.txt`), JAX describes a TPU slice it cannot
see (`jax.experimental.topologies.get_topology_desc`) and compiles for it on a CPU-only
host. Here the mesh is `sharding.make_mesh` over those devices, the state and batch are
`jax.ShapeDtypeStruct`s carrying the shardings training uses, and the steps are
those of `train.builder.build`, the ones `experiments.train` runs and validates with; nothing
is allocated. XLA's memory analysis of the compiled step gives bytes per chip
(arguments, outputs, temporaries); the FLOPs per step are counted on the step's jaxpr
(`jaxpr_flops`), not taken from XLA's cost analysis, which counts a loop body once: a
scanned layer stack (`scan_layers`, the default) would report one layer of each stack.

Numbers are the compiler's: "total" = arguments + outputs - aliased (donated) +
temporaries + generated code, per chip, against the chip's HBM. libtpu itself keeps a
little of the HBM, so a step within a few hundred MiB of the limit may still not fit.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.extend import core as jax_core

from dualtalk_jax import audio, sharding
from dualtalk_jax.train import builder, step as step_lib

GiB = 1024**3

# Peak dense bf16 FLOP/s per chip by `device_kind` substring (f32 matmuls on TPU run at
# the same rate, on GPUs at the TF32 rate, about half). First match wins.
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
    "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12, "TPU v6": 918e12,
}


def peak_flops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


@dataclasses.dataclass(frozen=True)
class TpuChip:
  hbm_bytes: int
  chip_config: str  # libtpu chip config: "megacore" = one JAX device per chip (v4, v5p)
  slice_name: str  # the Cloud TPU slice name prefix: v4-32 counts TensorCores (2 per chip)
  cores_per_chip: int


# HBM per chip; topology names are libtpu's: 'v5e:4x4' (16 chips), 'v4:2x2x4', 'v5p:2x2x4'.
TPU_CHIPS = {
    "v4": TpuChip(32 * GiB, "megacore", "v4", 2),
    "v5e": TpuChip(16 * GiB, "default", "v5litepod", 1),
    "v5p": TpuChip(95 * GiB, "megacore", "v5p", 2),
    "v6e": TpuChip(32 * GiB, "default", "v6e", 1),
}


def chip_of(topology_name: str) -> TpuChip:
  kind = topology_name.split(":")[0]
  if kind not in TPU_CHIPS:
    raise ValueError(f"unknown TPU generation {kind!r} in {topology_name!r}; known: {sorted(TPU_CHIPS)}")
  return TPU_CHIPS[kind]


def slice_name(topology_name: str, num_devices: int) -> str:
  """'v5e:4x4' -> 'v5litepod-16', 'v4:2x2x4' -> 'v4-32' (Cloud TPU names)."""
  chip = chip_of(topology_name)
  return f"{chip.slice_name}-{num_devices * chip.cores_per_chip}"


def libtpu_available() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


def get_topology(topology_name: str, *, num_slices: int = 1, chips_per_host_bounds: Sequence[int] = (2, 2, 1)):
  """The devices of a TPU slice described by libtpu (no TPU needed). Requires libtpu."""
  if not libtpu_available():
    raise RuntimeError("libtpu is not installed: pip install -r requirements-tpu.txt")
  from jax.experimental import topologies

  return topologies.get_topology_desc(platform="tpu", topology_name=topology_name,
                                      chip_config_name=chip_of(topology_name).chip_config,
                                      chips_per_host_bounds=tuple(chips_per_host_bounds), num_slices=num_slices)


def abstract_batch(mesh, batch_size: int, window_frames: int,
                   features_hidden: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
  """The training batch (`data.pipeline` keys, shapes and dtypes) as sharded shapes.

  With `features_hidden`, the feature-cache batch (cached wav2vec2 outputs, no audio)."""
  a, f = window_frames * audio.SAMPLES_PER_FRAME, window_frames
  shapes = {"motion_self": ((batch_size, f, 56), jnp.float32), "motion_other": ((batch_size, f, 56), jnp.float32),
            "motion_other_lengths": ((batch_size,), jnp.int32), "num_frames": ((batch_size,), jnp.int32)}
  if features_hidden:
    shapes.update({k: ((batch_size, f, features_hidden), jnp.float32) for k in ("features_self", "features_other")})
  else:
    shapes.update({"audio_self": ((batch_size, a), jnp.float32), "audio_other": ((batch_size, a), jnp.float32),
                   "audio_self_lengths": ((batch_size,), jnp.int32), "audio_other_lengths": ((batch_size,), jnp.int32)})
  assert set(shapes) == set(step_lib.batch_ndim(bool(features_hidden)))
  return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding.batch_sharding(mesh, len(s))) for k, (s, d) in shapes.items()}


# Primitives XLA's cost analysis counts as one FLOP per output element (transcendentals
# such as exp, log, tanh, erf, rsqrt it counts apart, and data movement not at all).
_ELEMENTWISE = frozenset({
    "add", "add_any", "sub", "mul", "div", "rem", "max", "min", "neg", "abs", "sign", "floor", "ceil", "round",
    "select_n", "clamp", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "integer_pow", "square",
    "is_finite", "nextafter"})
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax",
                         "argmin", "cumsum", "cummax", "cummin", "cumprod"})


def jaxpr_flops(jaxpr) -> float:
  """FLOPs of one run of a (closed) jaxpr, with every loop body counted per iteration.

  Counted as XLA's cost analysis counts them: 2 per multiply-add of `dot_general` and
  `conv_general_dilated`, 1 per output element of other arithmetic and per input element
  of a reduction, 0 for transcendentals and data movement. A `scan` body counts `length`
  times, a `cond` its costliest branch, a `while` body once (its trip count is a value).
  For a jitted `step`: `jaxpr_flops(step.trace(*args).jaxpr)`, all devices together.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name, params = eqn.primitive.name, eqn.params
    inner = [jaxpr_flops(j) for j in jax_core.jaxprs_in_params(params)]
    if inner:
      total += max(inner) if name == "cond" else params["length"] * sum(inner) if name == "scan" else sum(inner)
    elif name == "dot_general":
      (contract, _), _ = params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod([lhs[d] for d in contract]) * np.prod(eqn.outvars[0].aval.shape)
    elif name == "conv_general_dilated":
      rhs, spec = eqn.invars[1].aval.shape, params["dimension_numbers"].rhs_spec
      per_output = rhs[spec[1]] * np.prod([rhs[d] for d in spec[2:]])  # input channels per group x window
      total += 2.0 * per_output * np.prod(eqn.outvars[0].aval.shape)
    elif name in _ELEMENTWISE:
      total += float(np.prod(eqn.outvars[0].aval.shape))
    elif name in _REDUCTIONS:
      total += float(np.prod(eqn.invars[0].aval.shape))
  return float(total)


@dataclasses.dataclass
class StepReport:
  """Per-chip memory (bytes) and FLOPs of one compiled step."""

  name: str
  argument: int
  output: int
  alias: int
  temp: int
  code: int
  flops: float  # per chip and step (`jaxpr_flops` of the step over the number of chips)
  compile_s: float

  @property
  def total(self) -> int:
    return self.argument + self.output - self.alias + self.temp + self.code


def _compile(name: str, step, args, num_chips: int) -> StepReport:
  """Compiles the jitted `step` on `args` and reports its memory and FLOPs per chip."""
  t = time.time()
  traced = step.trace(*args)
  compiled = traced.lower().compile()
  mem = compiled.memory_analysis()
  return StepReport(name, int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes), int(mem.alias_size_in_bytes),
                    int(mem.temp_size_in_bytes), int(mem.generated_code_size_in_bytes),
                    jaxpr_flops(traced.jaxpr) / num_chips, time.time() - t)


@dataclasses.dataclass
class Result:
  topology: str
  slice: str
  num_chips: int
  device_kind: str
  hbm_bytes: int
  peak_flops: float | None
  mesh_shape: dict[str, int]
  compute_dtype: str
  remat: str
  batch_size: int
  window_frames: int
  efficiency: float
  steps: list[StepReport]

  @property
  def train(self) -> StepReport:
    return self.steps[0]

  def fits(self, step: StepReport | None = None) -> bool:
    return (step or self.train).total <= self.hbm_bytes

  def step_time_s(self, step: StepReport | None = None) -> float | None:
    """Seconds per step if each chip ran its FLOPs at `efficiency` of its peak."""
    if not self.peak_flops:
      return None
    return (step or self.train).flops / (self.peak_flops * self.efficiency)


def build(config: ml_collections.ConfigDict, devices) -> tuple[Any, ...]:
  """Mesh, train/eval steps and abstract arguments: `builder.build`'s program, the one training runs."""
  program = builder.build(config, devices)
  state = program.abstract_state()
  cached = program.feature_cache
  batch = abstract_batch(program.mesh, config.batch_size, config.data.window_frames,
                         program.model_config.wav2vec2.hidden_size if cached else None)
  # Prediction (validation, inference) always runs on audio: the model inputs of the audio batch.
  audio_batch = abstract_batch(program.mesh, config.batch_size, config.data.window_frames) if cached else batch
  eval_batch = {k: audio_batch[k] for k in step_lib.MODEL_INPUTS}
  return program.mesh, program.train_step, program.eval_step, state, batch, eval_batch


def compile_steps(config: ml_collections.ConfigDict, topology_name: str, *, efficiency: float = 0.5,
                  predict: bool = True, num_slices: int = 1, log=print) -> Result:
  """Lowers and compiles the train (and prediction) step of `config` for a TPU topology."""
  topo = get_topology(topology_name, num_slices=num_slices)
  devices = topo.devices
  mesh, train_step, eval_step, state, batch, eval_batch = build(config, devices)
  log(f"{topology_name}: {len(devices)} x {devices[0].device_kind}, mesh {dict(mesh.shape)}, "
      f"{config.compute_dtype}, remat={config.remat or 'off'}: compiling the train step")
  steps = [_compile("train", train_step, (state, batch), len(devices))]
  log(f"  train step compiled in {steps[0].compile_s:.0f} s")
  if predict:
    steps.append(_compile("predict", eval_step, (state["params"], eval_batch, config.data.window_frames), len(devices)))
    log(f"  prediction step compiled in {steps[1].compile_s:.0f} s")
  chip = chip_of(topology_name)
  return Result(topology_name, slice_name(topology_name, len(devices)), len(devices), devices[0].device_kind,
                chip.hbm_bytes, peak_flops(devices[0]), dict(mesh.shape), config.compute_dtype, config.remat,
                config.batch_size, config.data.window_frames, efficiency, steps)


def _gib(n: float) -> str:
  return f"{n / GiB:.2f} GiB"


def format_result(r: Result, model_flops: float | None = None) -> str:
  """Human-readable per-chip report; `model_flops` (per chip, e.g. the step without remat) sets MFU."""
  lines = [f"{r.slice} ({r.topology}): {r.num_chips} x {r.device_kind}, {_gib(r.hbm_bytes)} HBM per chip, "
           f"mesh {r.mesh_shape}",
           f"global batch {r.batch_size} x {r.window_frames} frames, compute {r.compute_dtype}, "
           f"remat {r.remat or 'off'}"]
  for s in r.steps:
    verdict = "fits" if r.fits(s) else "DOES NOT FIT"
    lines.append(f"[{s.name} step] per chip: arguments {_gib(s.argument)}, outputs {_gib(s.output)} "
                 f"(aliased {_gib(s.alias)}), temporaries {_gib(s.temp)}, code {_gib(s.code)}; "
                 f"total {_gib(s.total)} of {_gib(r.hbm_bytes)} ({100 * s.total / r.hbm_bytes:.0f}%): {verdict}")
    line = f"[{s.name} step] {s.flops / 1e12:.2f} TFLOP per chip, {s.flops * r.num_chips / 1e12:.1f} TFLOP per step"
    t = r.step_time_s(s)
    if t is not None:
      line += f"; at {100 * r.efficiency:.0f}% of the {r.peak_flops / 1e12:.0f} TFLOP/s peak: {t * 1e3:.0f} ms per step"
      if s.name == "train":
        mf = model_flops if model_flops is not None else s.flops
        line += f", MFU {100 * r.efficiency * mf / s.flops:.0f}%"
        line += (" (model FLOPs = the step without remat)" if model_flops is not None
                 else " (counting every compiled FLOP; rematerialised ones included)" if r.remat else "")
    lines.append(line)
    lines.append(f"[{s.name} step] compiled in {s.compile_s:.0f} s on this host")
  return "\n".join(lines)


TABLE_HEADER = ("| slice (topology) | HBM/chip | compute | remat | mesh | fits | total/chip | args | temps | "
                "TFLOP/step | compile |\n|---|---|---|---|---|---|---|---|---|---|---|")


def merge_table(text: str, head: str, rows: Sequence[str]) -> str:
  """Puts `rows` into the markdown table of `text` (a file written by `--table`, or "").

  A row replaces the existing one for the same slice, compute dtype, remat and mesh; other
  rows and any text after the table (notes) are kept, so separate runs add up to one table.
  Rows are ordered by HBM per chip, slice, dtype (float32 first), remat (off first) and mesh.
  The heading paragraph is replaced by `head`.
  """
  key = lambda row: tuple(c.strip() for c in row.strip().strip("|").split("|")[:5])

  def order(row):
    sl, hbm, dtype, remat, mesh = key(row)
    try:
      gib = float(hbm.split()[0])
    except (ValueError, IndexError):
      gib = float("inf")
    return gib, sl, dtype != "float32", remat != "off", remat, mesh

  lines = text.splitlines()
  old = [l for l in lines if l.startswith("| ") and not l.startswith("| slice")]
  last = max((i for i, l in enumerate(lines) if l.startswith("|")), default=-1)
  tail = "\n".join(lines[last + 1:]).strip("\n") if last >= 0 else ""
  merged = {key(r): r for r in old}
  merged.update({key(r): r for r in rows})
  out = head + TABLE_HEADER + "\n" + "\n".join(sorted(merged.values(), key=order)) + "\n"
  return out + ("\n" + tail + "\n" if tail else "")


def mesh_label(mesh_shape: dict[str, int]) -> str:
  """'data 16', 'fsdp 16' or 'data 4 x fsdp 4' (axes of size 1 left out)."""
  return " x ".join(f"{a} {n}" for a, n in mesh_shape.items() if n > 1) or "1 chip"


def table_row(r: Result) -> str:
  s = r.train
  return (f"| {r.slice} (`{r.topology}`) | {r.hbm_bytes / GiB:.0f} GiB | {r.compute_dtype} | {r.remat or 'off'} | "
          f"{mesh_label(r.mesh_shape)} | {'yes' if r.fits() else '**no**'} | {_gib(s.total)} | {_gib(s.argument)} | {_gib(s.temp)} | "
          f"{s.flops * r.num_chips / 1e12:.1f} | {s.compile_s:.0f} s |")
