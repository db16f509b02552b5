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
  print("\nquickstart finished")
  print(f"  held-out MSE, all 56 dims: model {mse['model_all']:.5f} vs mean-pose baseline {mse['baseline_all']:.5f}"
        f" ({mse['baseline_all'] / max(mse['model_all'], 1e-12):.2f}x lower)")
  for g in ("exp", "jaw", "neck"):
    print(f"    {g:5s} model {mse[f'model_{g}']:.5f}  baseline {mse[f'baseline_{g}']:.5f}")
  print(f"  (model in {r['eval_window_seconds']:g} s windows, the training length, as `infer --window_seconds` runs; "
        f"one pass over each whole clip: {mse['model_whole_all']:.5f}, "
        f"{mse['baseline_all'] / max(mse['model_whole_all'], 1e-12):.2f}x lower)")
  for key in ("checkpoints", "predictions", "plot", "video", "pytorch_checkpoint"):
    if key in r:
      print(f"  {key:19s} {r[key]}")
  print(f"  {'results':19s} {r['workdir']}/quickstart_results.json")
  print(f"  {'disk used':19s} {r['disk_mb']:.0f} MB in {r['workdir']}")
  print(f"  {'tensorboard':19s} tensorboard --logdir {r['workdir']}/tensorboard")


if __name__ == "__main__":
  app.run(main)
