"""dualtalk-jax: DualTalk (CVPR 2025) in JAX/Flax NNX."""

import os as _os

# XLA CPU workaround (jaxlib 0.10.2): with the concurrency-optimized thunk scheduler, a
# program with several independent loops (the batched metric kernels' k-means) can park
# every thread of the intra-op pool on a 2-core host, and the call never returns. This
# only reorders CPU thunks (same numbers). It must be in XLA_FLAGS before jax creates
# its CPU client, so it is set on import; a process that ran jax before importing
# dualtalk_jax should export it itself.
_CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _os.environ.get("XLA_FLAGS", ""):
  _os.environ["XLA_FLAGS"] = f"{_os.environ.get('XLA_FLAGS', '')} {_CPU_FLAG}".strip()
