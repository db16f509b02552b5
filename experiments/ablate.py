r"""The paper's ablation grid (Tab. 6): trains and scores every variant the same way.

  python -m experiments.ablate --config=experiments/configs/quickstart.py --workdir=W [--variants=all|a,b]
      [--config.total_steps=...]

Variants: full (the released model), no_partner_speech, no_partner_motion, mfcc,
no_temporal_enhancer, no_interaction, no_modulation (dualtalk_jax/models/dualtalk.py).
Each trains in W/variants/<name> with the config's data, seed and step budget and is scored
on its `data.val_dir`; writes W/ablation.json, W/ablation.md (Tab. 6 layout) and
W/ablation.png. Re-running resumes: finished variants are neither trained nor scored again
(see dualtalk_jax/train/ablation.py).
"""

import sys
import time

from absl import app, flags

from experiments import configs

_CONFIG = configs.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the variants, ablation.json/.md/.png are written (resumes).")
_VARIANTS = flags.DEFINE_string("variants", "all", "'all' or a comma-separated list of variant names.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dualtalk_jax import runtime

  runtime.configure()
  from dualtalk_jax.train import ablation

  start = time.time()
  try:
    variants = ablation.parse_variants(_VARIANTS.value)
    with _CONFIG.value.unlocked():
      _CONFIG.value.progress_bar = False
    ablation.run_grid(_CONFIG.value, _WORKDIR.value, variants)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {_WORKDIR.value}/ablation.json, ablation.md, ablation.png ({time.time() - start:.0f} s)")


if __name__ == "__main__":
  app.run(main, flags_parser=configs.parse_flags)
