"""Segmentation losses (jnp, jittable): the official GSANet loss and the F3Net loss the paper describes.

Both are "BCE + IoU" structure losses on maps [b, h, w, 1] against a mask g in [0, 1] (may be soft).
They differ as follows (config `train.loss`):

'official': what Hydragon516/GSANet `loss.py` actually computes.
  - input: p = the model's PROBABILITY, fed where logits belong.
  - BCE: BCE-with-logits(p, g) = BCE(σ(p), g), a double sigmoid, averaged over all pixels and samples
    into one scalar. The "weights" Softmax2d(|p − g|) are identically 1 (softmax over one channel), and
    the legacy `reduce='none'` argument means 'mean'.
  - IoU, per sample: 1 − (Σ σ(p)g + 1) / (Σ (σ(p) + g) − Σ σ(p)g + 1).
  - loss = BCE + mean over the batch of the IoU term.
  - maps: the 4 decoder side outputs enter as σ(logits), the 6 slot maps as given (probabilities);
    weight 1 each, summed (10 maps).
'f3net': the paper's §3.7 text, i.e. F3Net's loss.
  - input: raw logits z.
  - weights: w = 1 + 5·|avgpool31(g) − g| (31x31 box, stride 1, zero padding 15, divided by 961 as
    PyTorch's avg_pool2d with count_include_pad).
  - BCE, per sample: Σ w·BCE-with-logits(z, g) / Σ w.
  - IoU, per sample: 1 − (Σ σ(z)g·w + 1) / (Σ (σ(z) + g)·w − Σ σ(z)g·w + 1).
  - loss = mean over the batch of (BCE + IoU).
  - maps: the 4 decoder logits; the 6 slot maps turned into logits by a clipped logit(p) (eps 1e-6).

The paper's eq. 5 writes the IoU with min/max and the weight as σ·|P − G|; neither matches any code, so
'f3net' follows F3Net's definition. (The widely copied F3Net/PraNet code passes the same legacy
`reduce='none'` to BCE-with-logits, so its BCE too is an unweighted mean; we implement the weighting
its formula states.)
Under 'official', σ(p) stays in (0.5, 0.731), so the loss never approaches 0, but its gradients have the
right sign.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

SLOT_MAP_NAMES = ('coarse_rgb', 'coarse_flow', 'fine_fg_rgb', 'fine_bg_rgb', 'fine_fg_flow', 'fine_bg_flow')
LOSS_VARIANTS = ('official', 'f3net')
POOL_SIZE = 31
LOGIT_EPS = 1e-6


def bce_with_logits(logits: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Elementwise binary cross-entropy of sigmoid(logits) against target, in the stable form."""
  return jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _check(pred: jnp.ndarray, mask: jnp.ndarray, name: str) -> None:
  if pred.ndim != 4 or pred.shape != mask.shape:
    raise ValueError(f'{name}: prediction {pred.shape} and mask {mask.shape} must both be [b, h, w, 1] '
                     'of the same size.')


def official_structure_loss(pred_prob: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """The official GSANet `structure_loss` [] on a probability map pred_prob [b,h,w,1] and mask [b,h,w,1].

  L = mean(BCEwithLogits(p, g)) + mean_b[1 − (Σσ(p)g + 1) / (Σ(σ(p) + g) − Σσ(p)g + 1)].
  """
  _check(pred_prob, mask, 'official_structure_loss')
  p = pred_prob.astype(jnp.float32)
  g = mask.astype(jnp.float32)
  bce = jnp.mean(bce_with_logits(p, g))  # Over every pixel and sample: one scalar.
  q = jax.nn.sigmoid(p)  # The second sigmoid.
  inter = jnp.sum(q * g, axis=(1, 2, 3))  # [b]
  union = jnp.sum(q + g, axis=(1, 2, 3))  # [b]
  iou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
  return bce + jnp.mean(iou)


def box_average(x: jnp.ndarray, size: int = POOL_SIZE) -> jnp.ndarray:
  """avg_pool2d(x, size, stride 1, padding size//2) with zero padding counted (÷ size²), on [b,h,w,c]."""
  pad = size // 2
  window = lambda a, dims, padding: jax.lax.reduce_window(a, 0.0, jax.lax.add, dims, (1, 1, 1, 1), padding)
  # The box sum is separable: a column sum then a row sum, with the same zero padding.
  x = window(x, (1, size, 1, 1), ((0, 0), (pad, pad), (0, 0), (0, 0)))
  x = window(x, (1, 1, size, 1), ((0, 0), (0, 0), (pad, pad), (0, 0)))
  return x / float(size * size)


def f3net_weights(mask: jnp.ndarray) -> jnp.ndarray:
  """F3Net pixel weights [b,h,w,1]: 1 + 5·|avgpool31(g) − g| (large near boundaries)."""
  g = mask.astype(jnp.float32)
  return 1.0 + 5.0 * jnp.abs(box_average(g) - g)


def f3net_structure_loss(logits: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """F3Net's weighted BCE + weighted IoU [] on logits [b,h,w,1] and mask [b,h,w,1]; mean over the batch."""
  _check(logits, mask, 'f3net_structure_loss')
  z = logits.astype(jnp.float32)
  g = mask.astype(jnp.float32)
  w = jax.lax.stop_gradient(f3net_weights(g))
  wbce = jnp.sum(w * bce_with_logits(z, g), axis=(1, 2, 3)) / jnp.sum(w, axis=(1, 2, 3))  # [b]
  p = jax.nn.sigmoid(z)
  inter = jnp.sum(p * g * w, axis=(1, 2, 3))
  union = jnp.sum((p + g) * w, axis=(1, 2, 3))
  wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
  return jnp.mean(wbce + wiou)


def clipped_logit(prob: jnp.ndarray, eps: float = LOGIT_EPS) -> jnp.ndarray:
  """logit(p) with p kept in [eps, 1 − eps]: log(max(p, eps)) − log(max(1 − p, eps)).

  Bounding p and 1 − p separately keeps the end values exact in float32 (±13.8155 for eps 1e-6, whereas
  1 − 1e-6 itself is not representable) and the gradient finite (about 1 instead of 1/eps) where a map
  reaches exactly 0 or 1. `prob` must lie in [0, 1].
  """
  p = prob.astype(jnp.float32)
  return jnp.log(jnp.maximum(p, eps)) - jnp.log(jnp.maximum(1.0 - p, eps))


def total_loss(outputs: Mapping[str, Any], mask: jnp.ndarray, *, variant: str = 'official',
               aux_weight: float = 1.0) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The training loss of a model output dict (TEAM.md) against mask [b,h,w,1] in [0,1].

  outputs['side_logits']: 4 decoder maps [b,h,w,1] (logits); outputs['slot_maps']: 6 maps [b,h,w,1]
  (probabilities; empty or absent for the saliency model). Loss = Σ decoder-map losses +
  aux_weight · Σ slot-map losses (official: aux_weight 1, 10 maps). Returns (loss [], metrics) with
  metrics 'loss', 'loss_decoder', 'loss_slots', 'loss_side{1..4}' and 'loss_<slot map name>'.
  """
  if variant not in LOSS_VARIANTS:
    raise ValueError(f'Unknown loss variant {variant!r}; choose one of {LOSS_VARIANTS} '
                     '(--config.train.loss).')
  side_logits: Sequence[jnp.ndarray] = tuple(outputs['side_logits'])
  slot_maps: Sequence[jnp.ndarray] = tuple(outputs.get('slot_maps') or ())
  if not side_logits:
    raise ValueError('outputs["side_logits"] is empty; the loss needs the decoder maps.')
  if slot_maps and len(slot_maps) != len(SLOT_MAP_NAMES):
    raise ValueError(f'Expected {len(SLOT_MAP_NAMES)} slot maps {SLOT_MAP_NAMES}; got {len(slot_maps)}.')
  mask = mask.astype(jnp.float32)
  metrics: dict[str, jnp.ndarray] = {}
  decoder = jnp.zeros((), jnp.float32)
  for i, logits in enumerate(side_logits):
    if variant == 'official':
      term = official_structure_loss(jax.nn.sigmoid(logits.astype(jnp.float32)), mask)
    else:
      term = f3net_structure_loss(logits, mask)
    metrics[f'loss_side{i + 1}'] = term
    decoder = decoder + term
  slots = jnp.zeros((), jnp.float32)
  for name, prob in zip(SLOT_MAP_NAMES, slot_maps):
    if variant == 'official':
      term = official_structure_loss(prob, mask)
    else:
      term = f3net_structure_loss(clipped_logit(prob), mask)
    metrics[f'loss_{name}'] = term
    slots = slots + term
  loss = decoder + aux_weight * slots
  metrics.update(loss=loss, loss_decoder=decoder, loss_slots=slots)
  return loss, metrics
