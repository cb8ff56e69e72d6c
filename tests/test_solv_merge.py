"""SOLV's slot merger (in jit) against sklearn, the host numbering, the merge rules and schedule, and the
released optimiser against torch.optim."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from sklearn.cluster import AgglomerativeClustering

from gsa_jax.models.solv import losses
from gsa_jax.models.solv import merge
from gsa_jax.models.solv import schedule

fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})
THRESHOLD = 0.12


def sklearn_fit(x: np.ndarray) -> np.ndarray:
  return AgglomerativeClustering(n_clusters=None, metric='cosine', compute_full_tree=True,
                                 distance_threshold=THRESHOLD, linkage='complete').fit(x).labels_


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
  """Labelings equal up to renaming."""
  pairs = set(zip(a.tolist(), b.tolist()))
  return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def slot_sets(rng: np.random.Generator, count: int, k: int = 8, d: int = 16) -> np.ndarray:
  """Random slot sets with planted groups: slots = a few random directions + noise of random size, so that
  within-group distances straddle 0.12; plus exact near-threshold pairs and near-duplicates."""
  sets = []
  for i in range(count):
    groups = rng.integers(1, k + 1)
    centres = rng.normal(size=(groups, d))
    noise = rng.uniform(0.05, 0.8) * rng.normal(size=(k, d)) * np.linalg.norm(centres, axis=1).mean() / math.sqrt(d)
    x = centres[rng.integers(0, groups, size=k)] + noise
    kind = i % 4
    if kind == 1:  # a pair at cosine distance 0.12 +- delta (delta down to 1e-5), the rest far apart
      x = rng.normal(size=(k, d))
      u = x[0] / np.linalg.norm(x[0])
      w = x[1] - u * (u @ x[1])
      w /= np.linalg.norm(w)
      delta = rng.choice([-1, 1]) * 10.0 ** rng.uniform(-5, -2)
      cos = 1.0 - (THRESHOLD + delta)
      x[1] = 3.0 * (cos * u + math.sqrt(1 - cos ** 2) * w)
    elif kind == 2:  # near-duplicates of one slot, on top of the groups
      x[1:4] = x[0] + 1e-3 * rng.normal(size=(3, d))
    sets.append(x)
  return np.asarray(sets, np.float32)


def test_complete_linkage_equals_sklearn_partitions_and_host_labels():
  rng = np.random.default_rng(0)
  sets = slot_sets(rng, 2000)
  labels, counts = fast_jit(jax.vmap(lambda x: merge.complete_linkage(x, THRESHOLD)))(sets)
  labels, counts = np.asarray(labels), np.asarray(counts)
  seen = set()
  for i, x in enumerate(sets):
    ref = sklearn_fit(x)
    assert same_partition(labels[i], ref), (i, labels[i], ref)
    assert counts[i] == ref.max() + 1
    # Ours numbers clusters by first member; the host numbering reproduces sklearn's labels exactly.
    np.testing.assert_array_equal(merge.sklearn_labels(x, THRESHOLD, min_clusters=1), ref)
    first = [int(np.flatnonzero(labels[i] == r)[0]) for r in range(counts[i])]
    assert first == sorted(first)
    seen.add(int(counts[i]))
  assert seen == set(range(1, 9)), f'cluster counts covered: {sorted(seen)}'
  # sklearn's numbering differs from first-member order often enough for the host numbering to matter.
  differs = sum(not np.array_equal(merge.sklearn_labels(x, THRESHOLD, 1), labels[i]) for i, x in enumerate(sets))
  assert differs > 100


def test_merge_slots_rules_and_outputs():
  rng = np.random.default_rng(1)
  k, d, n = 6, 8, 10
  base = rng.normal(size=(k, d))
  three = base.copy()
  three[1], three[2], three[4] = three[0] + 1e-3, three[0] - 1e-3, three[3] + 1e-3   # clusters {0,1,2} {3,4} {5}
  two = np.concatenate([np.repeat(base[:1], 3, 0), np.repeat(base[1:2], 3, 0)]) + 1e-4 * rng.normal(size=(k, d))
  slots = jnp.asarray(np.stack([three, two, base]), jnp.float32)
  attn = rng.uniform(size=(3, k, n)).astype(np.float32)
  attn = jnp.asarray(attn / attn.sum(-1, keepdims=True))
  out = merge.merge_slots(slots, attn, key=None, merge_prob=1.0)
  np.testing.assert_array_equal(out['num_slots'], [3, k, k])        # 2 clusters -> discarded; none -> k
  np.testing.assert_array_equal(out['labels'][0], [0, 0, 0, 1, 1, 2])
  np.testing.assert_array_equal(out['merged'], [True, False, True])
  np.testing.assert_allclose(out['slots'][0, 0], np.mean(three[:3], 0), atol=1e-6)
  np.testing.assert_array_equal(out['slots'][0, 3:], 0.0)
  expected = np.asarray(attn[0, :3].sum(0)) + 1e-8
  np.testing.assert_allclose(out['attention'][0, 0], expected / expected.sum(), rtol=1e-6)
  np.testing.assert_allclose(out['attention'][0, 3], np.full(n, 1 / n), rtol=1e-6)   # empty rows uniform
  np.testing.assert_array_equal(out['valid'][0], [True] * 3 + [False] * 3)
  np.testing.assert_allclose(np.asarray(out['slots'][1]), np.asarray(slots[1]) / (1 + 1e-8), rtol=1e-7)
  # min_clusters=1 (paper): the 2-cluster merge is kept.
  paper = merge.merge_slots(slots, attn, key=None, merge_prob=1.0, min_clusters=1)
  np.testing.assert_array_equal(paper['num_slots'], [3, 2, k])
  # Gradients reach the member slots through the means, not through the assignment.
  grad = jax.grad(lambda s: jnp.sum(merge.merge_slots(s, attn, key=None, merge_prob=1.0)['slots'][0, 0]))(slots)
  np.testing.assert_allclose(grad[0, :3], 1 / 3, rtol=1e-6)
  np.testing.assert_array_equal(grad[0, 3:], 0.0)
  # Per-clip Bernoulli draws from the key.
  many = jnp.asarray(np.repeat(three[None], 4000, 0), jnp.float32)
  many_attn = jnp.broadcast_to(attn[:1], (4000, k, n))
  draws = fast_jit(lambda key, p: merge.merge_slots(many, many_attn, key=key, merge_prob=p)['merged'])
  for p in (0.0, 0.3, 1.0):
    fraction = float(np.mean(draws(jax.random.key(2), p)))
    assert abs(fraction - p) < 0.03, (p, fraction)
  assert not np.array_equal(draws(jax.random.key(2), 0.5), draws(jax.random.key(3), 0.5))
  with pytest.raises(ValueError, match='needs a random key'):
    merge.merge_slots(slots, attn, key=None, merge_prob=0.5)


def test_renumbering_matches_sklearn_and_the_loss_ignores_numbering():
  rng = np.random.default_rng(2)
  sets = slot_sets(rng, 40, k=8, d=16)
  attn = rng.uniform(size=(40, 8, 12)).astype(np.float32)
  out = jax.tree.map(np.asarray, merge.merge_slots(jnp.asarray(sets), jnp.asarray(attn), key=None, merge_prob=1.0))
  out['centre_slots'] = sets
  renumbered = merge.renumber_like_sklearn(out, THRESHOLD)
  for i, x in enumerate(sets):
    ref = merge.sklearn_labels(x, THRESHOLD)
    np.testing.assert_array_equal(renumbered['labels'][i], ref)
    for r in range(ref.max() + 1):
      np.testing.assert_allclose(renumbered['slots'][i, r], x[ref == r].mean(0), rtol=1e-5, atol=1e-6)
  # The reconstruction (softmax over rows, sum over rows) is invariant to the row order: loss unchanged.
  feats = rng.normal(size=(40, 8, 12, 4)).astype(np.float32)
  alpha = rng.normal(size=(40, 8, 12)).astype(np.float32)
  target = rng.normal(size=(40, 12, 4)).astype(np.float32)

  def loss(valid, order):
    a = np.where(valid[..., None], np.take_along_axis(alpha, order[..., None], 1), -np.inf)
    m = jax.nn.softmax(a, axis=1) * valid[..., None]
    rec = jnp.einsum('bkn,bknc->bnc', m, np.take_along_axis(feats, order[..., None, None], 1))
    return float(losses.reconstruction_loss(rec, target))

  perm = np.stack([rng.permutation(8) for _ in range(40)])
  valid = out['valid']
  assert abs(loss(valid, np.tile(np.arange(8), (40, 1))) -
             loss(np.take_along_axis(valid, perm, 1), perm)) < 1e-6


def test_merge_probability_schedule():
  # The reference note's values for 180 epochs (two digits).
  values = [merge.merge_probability(e, 180) for e in (0, 1, 9, 59, 119, 179)]
  np.testing.assert_allclose(values, [0.0, 0.13, 0.44, 0.79, 0.92, 1.0], atol=5e-3)
  np.testing.assert_allclose(merge.merge_probability(jnp.arange(180), 180),
                             [merge.merge_probability(e, 180) for e in range(180)], rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match='num_epochs=1'):
    merge.merge_probability(0, 1)


def test_schedule_reproduces_the_released_values():
  lr = schedule.learning_rate_schedule(1000)
  got = {i: float(lr(i)) for i in (0, 1, 49, 50, 51, 366, 999)}
  expected = {0: 4.000e-9, 1: 8.004e-6, 49: 3.920e-4, 50: 4.000e-4, 51: 3.991e-4, 366: 2.000e-4, 999: 4.989e-5}
  for i, value in expected.items():
    assert f'{got[i]:.3e}' == f'{value:.3e}', (i, got[i], value)
  with pytest.raises(ValueError, match='2 steps leave'):
    schedule.learning_rate_schedule(2)


def test_optimiser_matches_torch_optim():
  """Adam + LinearLR/ExponentialLR/SequentialLR + clip_grad_norm_ on a toy model, step for step."""
  total, steps = 60, 40
  rng = np.random.default_rng(3)
  w0 = rng.normal(size=(5, 3)).astype(np.float32)
  b0 = rng.normal(size=(3,)).astype(np.float32)
  xs = rng.normal(size=(steps, 8, 5)).astype(np.float32)
  ys = 5.0 * rng.normal(size=(steps, 8, 3)).astype(np.float32)   # large errors: clipping active

  lin = torch.nn.Linear(5, 3)
  with torch.no_grad():
    lin.weight.copy_(torch.tensor(w0.T))
    lin.bias.copy_(torch.tensor(b0))
  opt = torch.optim.Adam(lin.parameters(), lr=4e-4)
  warm = int(total * 0.05)
  gamma = math.exp(math.log(0.5) / ((total - warm) // 3))
  sched = torch.optim.lr_scheduler.SequentialLR(
      opt, [torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-5, total_iters=warm),
            torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)], milestones=[warm])
  torch_params, torch_lrs, clipped = [], [], 0
  for i in range(steps):
    torch_lrs.append(opt.param_groups[0]['lr'])
    loss = torch.nn.functional.mse_loss(lin(torch.tensor(xs[i])), torch.tensor(ys[i]))
    opt.zero_grad()
    loss.backward()
    clipped += float(torch.nn.utils.clip_grad_norm_(lin.parameters(), 1.0)) > 1.0
    opt.step()
    sched.step()
    torch_params.append((lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy()))
  assert clipped > 10

  tx = schedule.optimizer(total)
  params = {'w': jnp.asarray(w0), 'b': jnp.asarray(b0)}
  state = tx.init(params)
  lr = schedule.learning_rate_schedule(total)

  @fast_jit
  def step(params, state, x, y):
    grads = jax.grad(lambda p: jnp.mean(jnp.square(x @ p['w'] + p['b'] - y)))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for i in range(steps):
    assert abs(float(lr(i)) - torch_lrs[i]) <= 1e-6 * torch_lrs[i] + 1e-12, (i, float(lr(i)), torch_lrs[i])
    params, state = step(params, state, xs[i], ys[i])
    np.testing.assert_allclose(params['w'], torch_params[i][0], rtol=1e-5, atol=1e-6, err_msg=f'step {i}')
    np.testing.assert_allclose(params['b'], torch_params[i][1], rtol=1e-5, atol=1e-6, err_msg=f'step {i}')
