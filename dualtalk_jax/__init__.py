"""dualtalk-jax: DualTalk (CVPR 2025) in JAX/Flax NNX.

Importing the package changes nothing in the process; entry points call
`dualtalk_jax.runtime.configure()` (XLA flags, quiet logs).
"""
