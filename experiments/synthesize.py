r"""Write synthetic DualTalk-format conversations (process: dualtalk_jax/data/synthetic.py).

  python -m experiments.synthesize --output_dir=<dir> --num_clips=100 --seed=0
"""

from absl import app, flags

from dualtalk_jax import runtime
from dualtalk_jax.data import synthetic

_OUTPUT = flags.DEFINE_string("output_dir", None, "folder for <clip>_speaker{1,2}.{wav,npz}")
_NUM = flags.DEFINE_integer("num_clips", 100, "number of conversations")
_SEED = flags.DEFINE_integer("seed", 0, "seed; the same seed gives the same files")
_MIN = flags.DEFINE_float("min_seconds", 10.0, "shortest clip")
_MAX = flags.DEFINE_float("max_seconds", 20.0, "longest clip")
_IDS = flags.DEFINE_integer("num_identities", 8, "size of the speaker pool")
flags.mark_flags_as_required(["output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runtime.configure()
  names = synthetic.synthesize(_OUTPUT.value, _NUM.value, _SEED.value,
                               min_seconds=_MIN.value, max_seconds=_MAX.value,
                               num_identities=_IDS.value, progress=True)
  print(f"wrote {len(names)} clips to {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
