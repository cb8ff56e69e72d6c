"""The Betrayed-by-Attention losses against the released loss lines re-created in torch (tests/torch_betrayed.py).

Values and gradients with respect to both inputs (the attention map and the block outputs), on random inputs
and on a map with exact zeros (the attention dropout leaves them; ties are broken by token index on both
sides), and the values at random initialisation of the block that the reference note reports.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gsa_jax.models.betrayed import losses
from gsa_jax.models.betrayed import network
from tests import torch_betrayed as TB


def _inputs(seed, b=2, t=3, n=240, c=32, zeros=0.0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, t * n, t * n)) * 2.0
  att = np.exp(logits - logits.max(-1, keepdims=True))
  att /= att.sum(-1, keepdims=True)
  if zeros:
    att *= rng.random(att.shape) >= zeros
  tokens = rng.normal(size=(b, t, n, c))
  points = rng.permutation(n)[:8]
  return att.astype(np.float32), tokens.astype(np.float32), points.astype(np.int32)


def _total(a, x, points):
  out = losses.betrayed_losses(a, x, points)
  return out['total'], out


_value_and_grad = jax.jit(jax.value_and_grad(_total, argnums=(0, 1), has_aux=True))


def _ours(att, tokens, points):
  (_, out), grads = _value_and_grad(att, tokens, jnp.asarray(points))
  return {k: float(v) for k, v in out.items()}, [np.asarray(g) for g in grads]


def _theirs(att, tokens, points):
  a = torch.tensor(att, dtype=torch.float64, requires_grad=True)
  x = torch.tensor(tokens, dtype=torch.float64, requires_grad=True)
  semantic, motion = TB.torch_losses(a, x, torch.tensor(points, dtype=torch.long), stable=True)
  (semantic + motion).backward()
  return {'semantic': float(semantic), 'motion': float(motion)}, [a.grad.numpy(), x.grad.numpy()]


def _rel(a, b):
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize('zeros', [0.0, 0.3])
def test_values_and_gradients_equal_the_released_lines(zeros):
  att, tokens, points = _inputs(0, zeros=zeros)
  ours, grads = _ours(att, tokens, points)
  theirs, ref = _theirs(att, tokens, points)
  for name in ('semantic', 'motion'):
    assert ours[name] == pytest.approx(theirs[name], rel=1e-5), name
  assert ours['total'] == pytest.approx(ours['semantic'] + ours['motion'], rel=1e-6)
  assert _rel(grads[0], ref[0]) < 1e-4
  assert _rel(grads[1], ref[1]) < 1e-5
  # The gradient reaches the attention only through the key rows (the query rows are held fixed) and reaches
  # every batch element.
  assert all(np.abs(g).sum() > 0 for g in grads[1])


def test_losses_depend_on_the_ranking():
  """Reversing each attention row's order in every key frame swaps most and least attended tokens."""
  att, tokens, points = _inputs(1)
  base, _ = _ours(att, tokens, points)
  b, tn, _ = att.shape
  flipped = att.reshape(b, tn, 3, -1)[..., ::-1].reshape(b, tn, tn).copy()
  other, _ = _ours(flipped, tokens, points)
  assert abs(base['semantic'] - other['semantic']) > 1e-3
  assert abs(base['motion'] - other['motion']) > 1e-3


def test_values_at_random_initialisation():
  """A random block on independent random keys: the outputs are nearly orthogonal, so the semantic loss is
  about its positive margin 0.9 (0.80 on the correlated keys of a random DINO, reference note 5.3) and the
  motion loss about its margin 1.0 (nearly uniform rows)."""
  b, t, n, c = 1, 3, 216, 96
  keys = jax.random.normal(jax.random.key(0), (b, t, n, c))
  cls = jax.random.normal(jax.random.key(1), (b, t, c))
  block = network.SpatioTemporalBlock(dim=c)

  @jax.jit
  def run(keys, cls):
    params = block.init(jax.random.key(2), keys, cls, train=False)
    tokens, attention = block.apply(params, keys, cls, train=True, rngs={'dropout': jax.random.key(3)})
    return tokens, attention, losses.betrayed_losses(attention, tokens, losses.sample_points(jax.random.key(4), n, 8))

  tokens, attention, out = run(keys, cls)
  assert tokens.shape == (b, t, n, c) and attention.shape == (b, t * n, t * n)
  assert float(out['semantic']) == pytest.approx(0.90, abs=0.02)
  assert float(out['motion']) == pytest.approx(1.00, abs=0.02)


def test_sample_points_are_distinct_positions():
  points = np.asarray(losses.sample_points(jax.random.key(0), 50, 8))
  assert points.shape == (8,) and len(set(points.tolist())) == 8 and points.min() >= 0 and points.max() < 50
  assert not np.array_equal(points, np.asarray(losses.sample_points(jax.random.key(1), 50, 8)))
