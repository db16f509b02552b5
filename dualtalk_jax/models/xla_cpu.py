"""The model code's XLA:CPU workarounds, all of them; every other platform takes the plain path.

Each one is selected at lowering time with `jax.lax.platform_dependent`, so a TPU or GPU
program never contains it, and each gives the same values as the plain path.

  * `grouped_conv1d`: XLA:CPU's backward-filter pass of a grouped conv is very slow
    (wav2vec2's positional conv: 1.78 s of a 13.5 s large train step per encoder), so on
    CPU the weight gradient is one batched matmul per kernel tap. Scanning the encoder
    layers does not touch this conv (it runs before the layers), so it stays.
  * `skip_layer_or_run`: XLA:CPU runs a conditional's collectives beside the rest of the
    program, and with several virtual CPU devices that can leave a device without a thread
    (a deadlock XLA aborts after 40 s); a LayerDrop `cond` inside the layer scan is still a
    conditional, so on CPU the layer always runs and a select drops its output.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _grouped_conv1d(x: Array, w: Array, padding: int, groups: int, precision) -> Array:
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(1,), padding=[(padding, padding)], dimension_numbers=("NWC", "OIW", "NWC"),
      feature_group_count=groups, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _grouped_conv1d_tap_wgrad(x, w, padding, groups, precision):
  return _grouped_conv1d(x, w, padding, groups, precision)


def _tap_wgrad_fwd(x, w, padding, groups, precision):
  return _grouped_conv1d(x, w, padding, groups, precision), (x, w)


def _tap_wgrad_bwd(padding, groups, precision, res, gy):
  x, w = res
  _, vjp_x = jax.vjp(lambda x_: _grouped_conv1d(x_, w, padding, groups, precision), x)
  (dx,) = vjp_x(gy)
  o, cg, k = w.shape
  b, t, c = x.shape
  t_out = gy.shape[1]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (0, 0))).reshape(b, t + 2 * padding, groups, c // groups)
  g = gy.reshape(b, t_out, groups, o // groups)

  def tap(j):  # dw[:, :, j] = sum over (b, t) of gy[b, t, o] * xp[b, t + j, i], per group
    xs = jax.lax.dynamic_slice_in_dim(xp, j, t_out, axis=1)
    return jnp.einsum("btgi,btgo->bgoi", xs, g, precision=precision, preferred_element_type=jnp.float32)

  # The batch is summed after the loop, not in it: with a sharded batch, a sum inside would
  # put a collective in the loop body (see `skip_layer_or_run`).
  dw = jax.lax.map(tap, jnp.arange(k)).sum(axis=1).transpose(1, 2, 3, 0).reshape(o, cg, k)
  return dx, dw.astype(w.dtype)


_grouped_conv1d_tap_wgrad.defvjp(_tap_wgrad_fwd, _tap_wgrad_bwd)


def grouped_conv1d(x: Array, w: Array, padding: int, groups: int, precision=None) -> Array:
  """(B, T, C) x (O, C // groups, K) torch-layout kernel -> (B, T + 2 padding - K + 1, O).

  On CPU the weight gradient is computed as K batched matmuls (one per kernel tap): XLA:CPU's
  own backward-filter pass for a grouped conv is very slow (wav2vec2's positional conv,
  1024 channels, 16 groups, K=128, 200 frames: 1.78 s against 0.05 s; torch 0.09 s for
  the whole backward). Same values as autodiff of the conv (tested against torch). Memory:
  the CPU weight gradient holds K x B x C x C / groups floats before summing the batch
  (large, K=128: 33.5 MB per batch row)."""
  return jax.lax.platform_dependent(
      x, w,
      cpu=lambda x_, w_: _grouped_conv1d_tap_wgrad(x_, w_, padding, groups, precision),
      default=lambda x_, w_: _grouped_conv1d(x_, w_, padding, groups, precision))


def skip_layer_or_run(skip: Array, layer_fn: Callable[[Array], Array], x: Array) -> Array:
  """LayerDrop: `x` if `skip` else `layer_fn(x)`.

  Other platforms skip the layer's compute (`lax.cond`); on CPU the layer always runs and
  `where` drops its output (the cond's predicate is a constant False there, and XLA
  inlines the branch). Same values either way."""
  on_cpu = jax.lax.platform_dependent(cpu=lambda: jnp.bool_(True), default=lambda: jnp.bool_(False))
  y = jax.lax.cond(skip & ~on_cpu, lambda x_: x_, layer_fn, x)
  return jnp.where(skip, x, y)
