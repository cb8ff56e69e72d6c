"""SOLV's training objective: reconstruct the full-token ViT features of the centre frame.

  reconstruction_loss(reconstruction, target, kind)   'mse' (released: F.mse_loss, the mean over clips,
                                                      tokens and channels) | 'squared_norm' (paper eq. 12:
                                                      ||phi(v_t) - y||^2 over tokens and channels, mean over
                                                      clips). No other term.
  loss_and_metrics(outputs, target, settings)         (loss, metrics dict) for a SOLV output dict.
"""

from typing import Any

import jax
import jax.numpy as jnp

from gsa_jax.models.solv import config as config_lib


def reconstruction_loss(reconstruction: jnp.ndarray, target: jnp.ndarray, kind: str = 'mse') -> jnp.ndarray:
  """reconstruction, target [b, n, c] (target under stop_gradient, in float32) -> scalar loss."""
  if tuple(reconstruction.shape) != tuple(target.shape):
    raise ValueError(f'SOLV loss: the target (full-token centre-frame ViT features) must have the '
                     f'reconstruction\'s shape {tuple(reconstruction.shape)}; got {tuple(target.shape)}.')
  error = jnp.square(reconstruction.astype(jnp.float32) - jax.lax.stop_gradient(target).astype(jnp.float32))
  if kind == 'mse':
    return jnp.mean(error)
  if kind == 'squared_norm':
    return jnp.mean(jnp.sum(error, axis=(1, 2)))
  raise ValueError(f'SOLV loss kind {kind!r}: choose one of {config_lib.LOSSES} (model.loss).')


def loss_and_metrics(outputs: dict[str, jnp.ndarray], target: jnp.ndarray,
                     settings: config_lib.Settings) -> tuple[jnp.ndarray, dict[str, Any]]:
  """Loss of a SOLV output dict against target [b, n, c]; metrics: loss, mse, num_slots (mean K),
  merged (fraction of clips merged)."""
  loss = reconstruction_loss(outputs['reconstruction'], target, settings.loss)
  mse = loss if settings.loss == 'mse' else reconstruction_loss(outputs['reconstruction'], target, 'mse')
  metrics = dict(loss=loss, mse=mse, num_slots=jnp.mean(outputs['num_slots'].astype(jnp.float32)),
                 merged=jnp.mean(outputs['merged'].astype(jnp.float32)))
  return loss, metrics
