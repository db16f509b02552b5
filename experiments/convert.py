r"""Converts DualTalk checkpoints between PyTorch and JAX; the direction follows from the paths.

  # the released DualTalk.pth -> an orbax checkpoint directory
  python -m experiments.convert --input=DualTalk.pth --output=ckpt/dualtalk_large
  # a checkpoint directory or a training workdir (its latest step) -> PyTorch
  python -m experiments.convert --input=workdirs/run1 --output=dualtalk.pth [--weight_norm=legacy]

`.pth`/`.pt`/`.bin`/`.safetensors` inputs are read with or without a `state_dict`/`model`
wrapper and `module.` prefixes. Every key and shape is checked against the model config the
file recorded (exports record theirs), else `--config`; when the keys fit another named
config the error says which. Exports record the checkpoint's config (safetensors metadata,
or `<file>.json` beside a .pth).
"""

from __future__ import annotations

import os
import resource
import sys
import time

from absl import app, flags

from dualtalk_jax import runtime
from dualtalk_jax.config import get_model_config
from dualtalk_jax.convert import pytorch, table
from experiments import configs

_INPUT = flags.DEFINE_string("input", None, "A .pth/.pt/.safetensors file, an orbax checkpoint directory or a training workdir.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "A checkpoint directory (from a torch file) or a .pth/.safetensors file.", required=True)
_CONFIG = configs.define_model_config_flag()
_WAV2VEC2_CONFIG = flags.DEFINE_string("wav2vec2_config", None, "A HF wav2vec2 config.json replacing the config's wav2vec2 part.")
_WEIGHT_NORM = flags.DEFINE_enum("weight_norm", "new", list(table.WEIGHT_NORM_NAMINGS), "Weight-norm key naming written to torch: new (parametrizations.weight.original0/1) or legacy (weight_g/weight_v).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output.")


def main(argv):
  del argv
  runtime.configure()
  start = time.time()
  src, dst = _INPUT.value, _OUTPUT.value
  try:
    if not os.path.exists(src):
      raise FileNotFoundError(f"{src}: no such file or checkpoint directory")
    cfg = None  # the input's recorded config, else --config
    model = configs.torch_model_args(_CONFIG.value, _WAV2VEC2_CONFIG.value)
    if model["config_given"] or model["wav2vec2_config"]:
      cfg = get_model_config(model["config"], model["wav2vec2_config"])
    if pytorch.is_torch_file(src):
      if pytorch.is_torch_file(dst):
        raise ValueError(f"{dst}: converting a torch file needs a checkpoint directory as output")
      out = pytorch.torch_to_checkpoint(src, dst, cfg, overwrite=_OVERWRITE.value, default=model["config"])
    else:
      if not pytorch.is_torch_file(dst):
        raise ValueError(f"{dst}: a checkpoint converts to a .pth, .pt, .bin or .safetensors file")
      out = pytorch.checkpoint_to_torch(src, dst, weight_norm=_WEIGHT_NORM.value, overwrite=_OVERWRITE.value, cfg=cfg)
  except (OSError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f"wrote {os.path.abspath(out)} in {time.time() - start:.1f} s (peak RSS {peak_gib:.2f} GiB)")


if __name__ == "__main__":
  app.run(main, flags_parser=configs.parse_flags)
