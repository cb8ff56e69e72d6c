"""DPA training losses (jnp, jittable) on the model's 4 side probability maps [b, h, w, 1].

  'iou' (official loss.py): 1 - mean over the maps and the batch of sum(min(p, g)) / sum(max(p, g)), a soft
        Jaccard on the probabilities, no eps (p > 0), no clipping (with a bicubic-resized mask slightly
        outside [0, 1] it may leave [0, 1] too, as the official one).
  'ce'  (the paper's "cross-entropy loss"): the mean over the maps of the binary cross-entropy of each
        probability map (mean over pixels and batch; logs clamped at -100 as torch.nn.BCELoss).
total_loss(outputs, mask, variant) -> (loss [], metrics) with metrics 'loss' and 'loss_side{1..4}' (side 4
is the final map) plus 'loss_iou' / 'loss_ce'.
"""

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

LOSS_VARIANTS = ('iou', 'ce')
LOG_CLAMP = -100.0  # torch.nn.BCELoss clamps log(p) and log(1 - p) at -100.


def _check(pred: jnp.ndarray, mask: jnp.ndarray) -> None:
  if pred.ndim != 4 or pred.shape != mask.shape or pred.shape[-1] != 1:
    raise ValueError(f'A side map {tuple(pred.shape)} and the mask {tuple(mask.shape)} must both be [b, h, w, 1] '
                     'of the same size (resize the mask to the model input).')


def iou_ratio(prob: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Per-sample soft Jaccard [b]: sum(min(p, g)) / sum(max(p, g))."""
  p, g = prob.astype(jnp.float32), mask.astype(jnp.float32)
  return jnp.sum(jnp.minimum(p, g), axis=(1, 2, 3)) / jnp.sum(jnp.maximum(p, g), axis=(1, 2, 3))


def bce(prob: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean binary cross-entropy [] of a probability map (torch.nn.BCELoss)."""
  p, g = prob.astype(jnp.float32), mask.astype(jnp.float32)
  log_p = jnp.maximum(jnp.log(p), LOG_CLAMP)
  log_q = jnp.maximum(jnp.log1p(-p), LOG_CLAMP)
  return jnp.mean(-(g * log_p + (1.0 - g) * log_q))


def total_loss(outputs: Mapping[str, Any], mask: jnp.ndarray, *, variant: str = 'iou'
               ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The loss of a DPA output dict (outputs['side_probs']: 4 maps) against mask [b, h, w, 1] in [0, 1]."""
  if variant not in LOSS_VARIANTS:
    raise ValueError(f'Unknown DPA loss {variant!r}; choose one of {LOSS_VARIANTS} (--config.model.loss).')
  side = tuple(outputs['side_probs'])
  if not side:
    raise ValueError('outputs["side_probs"] is empty; the loss needs the side maps.')
  metrics = {}
  for i, prob in enumerate(side):
    _check(prob, mask)
    term = 1.0 - jnp.mean(iou_ratio(prob, mask)) if variant == 'iou' else bce(prob, mask)
    metrics[f'loss_side{i + 1}'] = term
  # The official mean over (batch x maps) equals the mean of the per-map means (same batch for every map).
  loss = sum(metrics.values()) / len(side)
  metrics['loss'] = loss
  metrics[f'loss_{variant}'] = loss
  return loss, metrics
