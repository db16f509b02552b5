r"""Compiles the training and prediction steps for a TPU topology, on a CPU-only host.

  JAX_PLATFORMS=cpu python -m experiments.aot_compile --config=experiments/configs/dualtalk.py:large \
      --topology=v5e:4x4 [--config.compute_dtype=bfloat16 --config.remat=nothing_saveable ...]

Needs libtpu (`pip install -r requirements-tpu.txt`); no TPU, data or weights. Prints, per
chip, the compiler's argument/output/temporary/total memory against the chip's HBM, the
FLOPs per step, and the step time and MFU at `--efficiency` of the chip's peak. Exits 1
when a step does not fit. `--table=FILE` instead compiles the train step of the config
for every `--topology` (comma-separated) x `--dtypes` x `--remats` and merges the rows
into a markdown table (e.g. docs/aot_table.md; rows of other runs and notes are kept).
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for the TPU topology; run nothing
# libtpu takes a per-machine lockfile; a compile-only client needs no exclusive access.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from absl import app, flags  # noqa: E402

from experiments import configs  # noqa: E402

_CONFIG = configs.define_config_flag()
_TOPOLOGY = flags.DEFINE_list("topology", ["v5e:4x4"], "libtpu topology name(s): v5e:4x4, v4:2x2x4, v5p:2x2x4, ...")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Number of slices (multislice).")
_EFFICIENCY = flags.DEFINE_float("efficiency", 0.5, "Assumed fraction of peak FLOP/s for step time and MFU.")
_PREDICT = flags.DEFINE_bool("predict", True, "Also compile the prediction step (same batch shape).")
_TABLE = flags.DEFINE_string("table", None, "Write a markdown table of the train step over topologies x dtypes x remats.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes for --table.")
_REMATS = flags.DEFINE_list("remats", ["off", "nothing_saveable"], "remat policies for --table ('off' = none).")
flags.mark_flags_as_required(["config"])


def _table(config) -> None:
  import jax

  from dualtalk_jax import aot

  c = config
  args = " ".join(a for a in sys.argv[1:] if not a.startswith(("--table", "--topology", "--dtypes", "--remats")))
  head = (f"Train step of `python -m experiments.aot_compile {args} --topology=... --dtypes=... --remats=... "
          f"--table={_TABLE.value}` compiled ahead of time "
          f"(jax {jax.__version__}, libtpu): model `{c.model}`, global batch {c.batch_size} x "
          f"{c.data.window_frames} frames, grad_accum {c.grad_accum}; mesh: chips per mesh axis (`data`: params "
          "replicated, the default; `fsdp`: `--config.mesh.data=1 --config.mesh.fsdp=-1`). Memory is per chip, from XLA's memory analysis (arguments + outputs - donated + temporaries + code); "
          "TFLOP/step is counted on the step's jaxpr (`aot.jaxpr_flops`: a scanned layer once per layer, where XLA's "
          "cost analysis counts a loop body once); compile is wall time on a 2-core CPU host.\n\n")
  os.makedirs(os.path.dirname(os.path.abspath(_TABLE.value)), exist_ok=True)
  rows, flops_no_remat = [], {}
  for topo in _TOPOLOGY.value:
    for dtype in _DTYPES.value:
      for remat in _REMATS.value:
        c = config.copy_and_resolve_references()
        c.compute_dtype, c.remat = dtype, "" if remat == "off" else remat
        r = aot.compile_steps(c, topo, efficiency=_EFFICIENCY.value, predict=False, num_slices=_NUM_SLICES.value)
        model_flops = flops_no_remat.get((topo, dtype)) if c.remat else None
        if not c.remat:
          flops_no_remat[(topo, dtype)] = r.train.flops
        print(aot.format_result(r, model_flops), flush=True)
        rows.append(aot.table_row(r))
        # Merged into the file after every row: a long run keeps what it has, and
        # separate runs (one topology or dtype at a time) add up to one table.
        text = open(_TABLE.value).read() if os.path.exists(_TABLE.value) else ""
        tmp = f"{_TABLE.value}.tmp"
        with open(tmp, "w") as f:
          f.write(aot.merge_table(text, head, rows))
        os.replace(tmp, _TABLE.value)
  print(f"wrote {_TABLE.value}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dualtalk_jax import aot, runtime

  runtime.configure()
  if not aot.libtpu_available():
    sys.exit("libtpu is not installed: pip install -r requirements-tpu.txt (it only compiles; no TPU is needed)")
  if _TABLE.value:
    return _table(_CONFIG.value)
  failed = []
  for topo in _TOPOLOGY.value:
    r = aot.compile_steps(_CONFIG.value, topo, efficiency=_EFFICIENCY.value, predict=_PREDICT.value,
                          num_slices=_NUM_SLICES.value)
    print(aot.format_result(r), flush=True)
    failed += [f"{r.slice} {s.name} step needs {s.total / aot.GiB:.2f} GiB per chip, the chip has "
               f"{r.hbm_bytes / aot.GiB:.0f} GiB" for s in r.steps if not r.fits(s)]
  if failed:
    sys.exit("does not fit: " + "; ".join(failed) + " (try --config.remat=nothing_saveable, "
             "--config.compute_dtype=bfloat16, --config.mesh.fsdp=-1 --config.mesh.data=1 or --config.grad_accum)")


if __name__ == "__main__":
  app.run(main, flags_parser=configs.parse_flags)
