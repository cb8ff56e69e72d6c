"""Losses against closed-form and independent numpy values (gsa_jax/losses.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsa_jax.models.gsanet import losses


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _bce_prob(q, g):
  """BCE of a probability q (the textbook form, not the logits form used by the code)."""
  return -(g * np.log(q) + (1 - g) * np.log(1 - q))


def _np_official(p, g):
  q = _sigmoid(p)  # BCE-with-logits on p = BCE of σ(p): the double sigmoid
  bce = np.mean(_bce_prob(q, g))
  inter = (q * g).sum(axis=(1, 2, 3))
  union = (q + g).sum(axis=(1, 2, 3))
  return bce + np.mean(1 - (inter + 1) / (union - inter + 1))


def _np_avgpool31(g):
  """31x31 mean with zero padding 15 counted in the divisor, by explicit loops over [b,h,w,1]."""
  b, h, w, _ = g.shape
  padded = np.zeros((b, h + 30, w + 30))
  padded[:, 15:15 + h, 15:15 + w] = g[..., 0]
  out = np.zeros((b, h, w))
  for i in range(h):
    for j in range(w):
      out[:, i, j] = padded[:, i:i + 31, j:j + 31].sum(axis=(1, 2)) / 961.0
  return out[..., None]


def _np_f3net(z, g):
  w = 1 + 5 * np.abs(_np_avgpool31(g) - g)
  q = _sigmoid(z)
  wbce = (w * _bce_prob(q, g)).sum(axis=(1, 2, 3)) / w.sum(axis=(1, 2, 3))
  inter = (q * g * w).sum(axis=(1, 2, 3))
  union = ((q + g) * w).sum(axis=(1, 2, 3))
  return np.mean(wbce + 1 - (inter + 1) / (union - inter + 1))


def _data(seed=0, shape=(2, 9, 7, 1)):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 2, shape).astype(np.float32)
  mask = np.zeros(shape, np.float32)
  mask[0, 2:6, 1:5] = 1.0
  mask[1, 4:, 3:] = 0.7  # soft GT
  return logits, mask


def test_official_single_pixel_closed_form():
  # p = 0, g = 1: BCE = log(1 + e^0) = log 2; σ(0) = 0.5, inter 0.5, union 1.5 → IoU 1 − 1.5/2 = 0.25.
  value = losses.official_structure_loss(jnp.zeros((1, 1, 1, 1)), jnp.ones((1, 1, 1, 1)))
  assert float(value) == pytest.approx(math.log(2) + 0.25, rel=1e-6)


def test_official_matches_numpy():
  logits, mask = _data()
  prob = _sigmoid(logits)
  value = losses.official_structure_loss(jnp.asarray(prob), jnp.asarray(mask))
  assert float(value) == pytest.approx(_np_official(prob.astype(np.float64), mask), rel=1e-5)


def test_official_never_reaches_zero_even_for_a_perfect_prediction():
  mask = np.zeros((1, 4, 4, 1), np.float32)
  mask[0, 1:3, 1:3] = 1
  value = float(losses.official_structure_loss(jnp.asarray(mask), jnp.asarray(mask)))
  assert value == pytest.approx(_np_official(mask.astype(np.float64), mask), rel=1e-6)
  assert value > 0.5


def test_avgpool_weights_match_numpy_loops():
  _, mask = _data(shape=(2, 20, 33, 1))
  np.testing.assert_allclose(losses.box_average(jnp.asarray(mask)), _np_avgpool31(mask), atol=1e-6)
  weights = np.asarray(losses.f3net_weights(jnp.asarray(mask)))
  np.testing.assert_allclose(weights, 1 + 5 * np.abs(_np_avgpool31(mask) - mask), atol=1e-5)
  assert weights.min() >= 1.0


def test_f3net_single_pixel_closed_form():
  # g = 1 alone: avgpool = 1/961, w = 1 + 5·960/961. z = 0: BCE = log 2 (w cancels); σ = 0.5.
  w = 1 + 5 * 960 / 961
  expected = math.log(2) + 1 - (0.5 * w + 1) / (1.5 * w - 0.5 * w + 1)
  value = losses.f3net_structure_loss(jnp.zeros((1, 1, 1, 1)), jnp.ones((1, 1, 1, 1)))
  assert float(value) == pytest.approx(expected, rel=1e-6)


def test_f3net_matches_numpy():
  logits, mask = _data(shape=(2, 9, 7, 1))
  value = losses.f3net_structure_loss(jnp.asarray(logits), jnp.asarray(mask))
  assert float(value) == pytest.approx(_np_f3net(logits.astype(np.float64), mask), rel=1e-5)


@pytest.mark.parametrize('variant', ['official', 'f3net'])
def test_gradient_signs(variant):
  mask = np.zeros((1, 4, 4, 1), np.float32)
  mask[0, :2] = 1.0
  logits = jnp.zeros((1, 4, 4, 1))
  if variant == 'official':
    fn = lambda z: losses.official_structure_loss(jax.nn.sigmoid(z), jnp.asarray(mask))
  else:
    fn = lambda z: losses.f3net_structure_loss(z, jnp.asarray(mask))
  grad = np.asarray(jax.grad(fn)(logits))
  assert (grad[mask > 0] < 0).all()  # raising a foreground logit lowers the loss
  assert (grad[mask == 0] > 0).all()
  better = jnp.where(mask > 0, 3.0, -3.0)
  assert float(fn(better)) < float(fn(logits))


def _outputs(seed=0, slots=True):
  rng = np.random.default_rng(seed)
  side = tuple(jnp.asarray(rng.normal(0, 2, (2, 8, 8, 1)), jnp.float32) for _ in range(4))
  slot_maps = ()
  if slots:
    slot_maps = tuple(jnp.asarray(rng.uniform(0, 1, (2, 8, 8, 1)), jnp.float32) for _ in range(6))
  mask = np.zeros((2, 8, 8, 1), np.float32)
  mask[:, 2:6, 3:7] = 1
  return {'logits': side[0], 'side_logits': side, 'slot_maps': slot_maps}, jnp.asarray(mask)


def test_total_loss_official_sums_ten_maps():
  outputs, mask = _outputs()
  loss, m = losses.total_loss(outputs, mask, variant='official')
  side = [losses.official_structure_loss(jax.nn.sigmoid(l), mask) for l in outputs['side_logits']]
  slot = [losses.official_structure_loss(p, mask) for p in outputs['slot_maps']]
  assert float(loss) == pytest.approx(float(sum(side) + sum(slot)), rel=1e-6)
  assert float(m['loss_coarse_rgb']) == pytest.approx(float(slot[0]), rel=1e-6)
  assert float(m['loss_side4']) == pytest.approx(float(side[3]), rel=1e-6)
  half, _ = losses.total_loss(outputs, mask, variant='official', aux_weight=0.5)
  assert float(half) == pytest.approx(float(sum(side) + 0.5 * sum(slot)), rel=1e-6)


def test_total_loss_f3net_uses_logits_and_clipped_slot_logits():
  outputs, mask = _outputs()
  slot_maps = list(outputs['slot_maps'])
  slot_maps[2] = jnp.ones_like(slot_maps[2])  # cosine maps reach exactly 1: the clipped logit keeps it finite
  outputs['slot_maps'] = tuple(slot_maps)
  loss, m = losses.total_loss(outputs, mask, variant='f3net')
  expected = sum(_np_f3net(np.asarray(l, np.float64), np.asarray(mask)) for l in outputs['side_logits'])
  for p in outputs['slot_maps']:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    expected += _np_f3net(np.log(p / (1 - p)), np.asarray(mask))
  assert np.isfinite(float(loss))
  assert float(loss) == pytest.approx(expected, rel=1e-4)
  assert set(m) >= {'loss', 'loss_decoder', 'loss_slots', 'loss_fine_fg_rgb', 'loss_fine_bg_flow'}


def test_total_loss_saliency_model_and_jit():
  outputs, mask = _outputs(slots=False)
  jitted = jax.jit(losses.total_loss, static_argnames=('variant',))
  for variant in ('official', 'f3net'):
    loss, m = jitted(outputs, mask, variant=variant)
    assert float(m['loss_slots']) == 0.0
    assert float(loss) == pytest.approx(float(m['loss_decoder']), rel=1e-6)
  with pytest.raises(ValueError, match='Unknown loss variant'):
    losses.total_loss(outputs, mask, variant='dice')
  with pytest.raises(ValueError, match='same size'):
    losses.official_structure_loss(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 5, 1)))


def test_clipped_logit_bounds_and_finite_gradient():
  p = jnp.asarray([0.0, 1e-9, 0.25, 0.5, 1.0])
  bound = math.log((1 - 1e-6) / 1e-6)
  np.testing.assert_allclose(losses.clipped_logit(p), [-bound, -bound, math.log(1 / 3), 0.0, bound],
                             rtol=1e-5)
  grad = jax.grad(lambda x: jnp.sum(losses.clipped_logit(x)))(p)
  assert np.isfinite(np.asarray(grad)).all()
  assert abs(float(grad[0])) <= 1.0 + 1e-6 and abs(float(grad[-1])) <= 1.0 + 1e-6  # not 1/eps
  assert float(grad[3]) == pytest.approx(4.0, rel=1e-5)  # d logit / dp = 1 / (p (1 − p))
