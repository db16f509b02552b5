r"""DualTalk training recipes: `dualtalk.py:large` (the released recipe), `dualtalk.py:base`.

  python -m experiments.train --config=experiments/configs/dualtalk.py:large --workdir=... \
      --config.data.train_dir=<preprocessed train> --config.data.val_dir=<preprocessed test> \
      --config.pretrained_wav2vec2=<local facebook/wav2vec2-large-960h-lv60-self>

Any model name of `dualtalk_jax.config.CONFIGS` is a variant (`dualtalk.py:tiny`: the same
recipe for the tiny model). The fields, their defaults and the recipe are in
`dualtalk_jax.train.configs.base`.
"""

import ml_collections

from dualtalk_jax.train import configs


def get_config(arg: str = "large") -> ml_collections.ConfigDict:
  return configs.base(arg)
