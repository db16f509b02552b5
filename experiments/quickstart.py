r"""The README's main job: `python -m experiments.quickstart [--workdir=quickstart_workdir]`.

Synthesizes conversations, preprocesses them, trains the tiny model on CPU for a few
minutes, evaluates held-out clips against a mean-pose baseline, and writes predictions,
a plot and a PyTorch export (see dualtalk_jax/train/quickstart.py); with
`--flame_model=generic_model.pkl` also a rendered video of a held-out clip.
"""

import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "quickstart_workdir", "Where everything is written (resumes if present).")
_STEPS = flags.DEFINE_integer("total_steps", None, "Override the number of training steps.")
_FLAME_MODEL = flags.DEFINE_string("flame_model", None, "FLAME generic_model.pkl: also render a held-out clip to prediction.mp4.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dualtalk_jax import runtime

  runtime.configure()
  from dualtalk_jax.train import quickstart

  flame_model = None
  if _FLAME_MODEL.value:  # read before training: a bad file costs a second, not a run
    from dualtalk_jax.face import flame
    try:
      flame_model = flame.load_model(_FLAME_MODEL.value)
    except (OSError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
  overrides = {} if _STEPS.value is None else {"total_steps": _STEPS.value}
  r = quickstart.run(_WORKDIR.value, flame_model=flame_model, **overrides)
  mse = r["mse"]
  base = mse["baseline_all"]
  ratio = lambda m: base / max(m, 1e-12)
  print("\nquickstart finished")
  print(f"  held-out clips, one pass over each whole clip (both directions), vs the mean-pose baseline "
        f"(MSE {base:.5f}, all 56 dims):")
  models = [("quickstart model (tiny_base, interaction_residual, no feature-projection LayerNorm)", mse)]
  if "released" in r:  # the quickstart model leaves the released architecture (configs.quickstart)
    models.append(("released architecture, same data and budget", r["released"]))
  w = r["eval_window_seconds"]
  for name, m in models:
    print(f"    {name}: jaw r {m['jaw_r_model_whole']:.2f}, MSE {m['model_whole_all']:.5f} "
          f"({ratio(m['model_whole_all']):.2f}x lower); in {w:g} s windows (`infer --window_seconds={w:g}`): "
          f"jaw r {m['jaw_r_model']:.2f}, MSE {ratio(m['model_all']):.2f}x lower")
  print("  (jaw r: frame-level Pearson r of the predicted and true jaw opening, mean over directions)")
  print("  quickstart model, whole clips, per group: " + ", ".join(
      f"{g} {mse[f'model_whole_{g}']:.5f} (baseline {mse[f'baseline_{g}']:.5f})" for g in ("exp", "jaw", "neck")))
  for key in ("checkpoints", "predictions", "plot", "video", "pytorch_checkpoint"):
    if key in r:
      print(f"  {key:19s} {r[key]}")
  print(f"  {'results':19s} {r['workdir']}/quickstart_results.json")
  print(f"  {'disk used':19s} {r['disk_mb']:.0f} MB in {r['workdir']}")
  print(f"  {'tensorboard':19s} tensorboard --logdir {r['workdir']}/tensorboard")


if __name__ == "__main__":
  app.run(main)
