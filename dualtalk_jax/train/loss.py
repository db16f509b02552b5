"""The released training loss, masked over padded frames.

    loss = MSE(exp) + MSE(jaw) + MSE(neck) + MSE(frame-to-frame velocity of all 56)

over the first min(T_pred, T_gt) frames, each MSE a mean over (valid frames x dims) of
its group, pooled over the batch as the released code's `F.mse_loss` over a batch is.
Velocities count only where both neighbouring frames are valid. With no padding this is
exactly the released loss.
"""

from __future__ import annotations

import jax.numpy as jnp

from dualtalk_jax.audio import MOTION_GROUPS


def _masked_mse(diff, mask):
  """diff (B, T, D), mask (B, T) -> mean of squares over valid (frame, dim) entries."""
  sq = jnp.square(diff.astype(jnp.float32)) * mask[..., None]
  count = jnp.maximum(jnp.sum(mask) * diff.shape[-1], 1.0)
  return jnp.sum(sq) / count


def dualtalk_loss(pred, target, mask=None):
  """(total loss, {part: value}) for pred/target (B, T, 56) and an optional (B, T) mask."""
  t = min(pred.shape[1], target.shape[1])
  pred, target = pred[:, :t], target[:, :t]
  mask = jnp.ones(pred.shape[:2], jnp.float32) if mask is None else mask[:, :t].astype(jnp.float32)
  parts = {name: _masked_mse(pred[..., s] - target[..., s], mask) for name, s in MOTION_GROUPS.items()}
  vel = (pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])
  parts["velocity"] = _masked_mse(vel, mask[:, 1:] * mask[:, :-1])
  return sum(parts.values()), parts
