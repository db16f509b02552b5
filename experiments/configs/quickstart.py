r"""Quickstart: the tiny model on synthetic conversations it generates into the workdir (CPU, minutes).

The fields are those of `dualtalk_jax.train.configs.quickstart` (the quickstart's own
choices over the released recipe).
"""

import ml_collections

from dualtalk_jax.train import configs


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  return configs.quickstart()
