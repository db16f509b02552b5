"""Config files (`get_config(arg)`) and the one `--config` flag every experiments/ CLI defines.

`--config` names a config file, `path.py[:arg]` (`--config=experiments/configs/dualtalk.py:large`),
and `--config.<field>=...` overrides a field. The old spelling of convert, evaluate, infer and
stream, a model name (`--config=tiny`), still works: `parse_flags` reads it as
`experiments/configs/dualtalk.py:tiny` (the released recipe for that model) and says so.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

DIR = os.path.dirname(os.path.abspath(__file__))
DUALTALK = os.path.join(DIR, "dualtalk.py")


def define_config_flag(default: str | None = None,
                       help: str = "Training config file, path.py[:arg] (a model name means dualtalk.py:<name>)."):
  """`--config` (a config file, fields overridable as `--config.<field>=...`)."""
  return config_flags.DEFINE_config_file("config", default, help, lock_config=False)


def define_model_config_flag():
  """`--config` of the CLIs that load a checkpoint: its model fields (`model`, `wav2vec2_config`)
  describe a torch file that records no config (default: the released DualTalk.pth's, large)."""
  return define_config_flag(DUALTALK + ":large", "Config file, path.py[:arg]: its model (config.model, "
                            "config.wav2vec2_config) is that of a torch checkpoint that records none (default "
                            "dualtalk.py:large: the released DualTalk.pth); exports and checkpoints record theirs. "
                            "A model name (--config=tiny) still works.")


def _model_file(name: str) -> str | None:
  """`experiments/configs/dualtalk.py:<name>` for a bare model name, else None."""
  from dualtalk_jax.config import CONFIGS

  if name not in CONFIGS:
    return None
  print(f"note: --config={name} is read as --config=experiments/configs/dualtalk.py:{name} "
        "(--config names a config file; a model name still works)", file=sys.stderr)
  return f"{DUALTALK}:{name}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with the old `--config=<model name>` spelling mapped to a config
  file: `app.run(main, flags_parser=configs.parse_flags)`."""
  argv = list(argv)
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      argv[i] = "--config=" + (_model_file(a[len("--config="):]) or a[len("--config="):])
    elif a == "--config" and i + 1 < len(argv):
      argv[i + 1] = _model_file(argv[i + 1]) or argv[i + 1]
  rest = app.parse_flags_with_usage(argv)
  config = flags.FLAGS.config
  try:  # ml_collections defers a config file's errors to the first use: one line now, not a traceback later
    config is None or config.keys()
  except Exception as e:  # noqa: BLE001  (whatever the file's get_config raised)
    from dualtalk_jax.config import CONFIGS

    sys.exit(f"error: --config: {e}\n(--config takes a config file, path.py[:arg], e.g. "
             f"experiments/configs/dualtalk.py:large, or a model name: {', '.join(sorted(CONFIGS))})")
  return rest


def config_given() -> bool:
  """Whether the command line set `--config` or one of its fields."""
  return any(flags.FLAGS[n].present for n in flags.FLAGS if n == "config" or n.startswith("config."))


def torch_model_args(config, wav2vec2_config: str | None) -> dict:
  """`predict.load_model`'s model arguments for a torch checkpoint that records no config:
  the model named by `config.model` with `--wav2vec2_config` (else `config.wav2vec2_config`)."""
  return {"config": config.model, "wav2vec2_config": wav2vec2_config or config.wav2vec2_config or None,
          "config_given": config_given()}
