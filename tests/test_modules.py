"""Modules by shape, parameter count and behaviour: MFFM, FAT, slot branch, Res/Fusion/decoder."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsa_jax.bench import timing
from gsa_jax import ops
from gsa_jax.models.gsanet import decoder as decoder_lib
from gsa_jax.models.gsanet import fat as fat_lib
from gsa_jax.models.gsanet import mffm as mffm_lib
from gsa_jax.models.gsanet import slots as slots_lib


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _vars(module, *args, seed=0, **kwargs):
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  return timing.random_variables(abstract, seed)


# -- MFFM -----------------------------------------------------------------------------------------

def test_mffm_param_count_matches_official():
  # Official MFFM(c_in, 128): 256 * c_in + 443,520 parameters (BN scale/bias included).
  for c_in in (512, 320, 128, 64):
    v = jax.eval_shape(lambda: mffm_lib.MFFM(128).init(jax.random.key(0), jnp.zeros((1, 4, 4, c_in)), train=False))
    assert _count(v['params']) == 256 * c_in + 443_520


def _conv_ref(x, kernel, dilation, bias=None):
  pad = dilation * (kernel.shape[0] // 2)
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y if bias is None else y + bias


def test_mffm_matches_hand_composition():
  """ReLU(BN(conv1x1 x) + BN(d18(sq + BN(d12(sq + BN(d6(sq))))))), no ReLU inside the branches."""
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 8))
  m = mffm_lib.MFFM(6)
  v = _vars(m, x, train=False)
  rng = np.random.default_rng(1)  # non-trivial BN statistics and affine
  v['batch_stats'] = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32), v['batch_stats'])
  v['params'] = jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.asarray(rng.normal(0, 0.3, a.shape), jnp.float32) if p[-1].key in ('scale', 'bias') else a,
      v['params'])
  p, s = v['params'], v['batch_stats']

  def bn(y, name):
    return (y - s[name]['bn']['mean']) / jnp.sqrt(s[name]['bn']['var'] + 1e-5) * p[name]['bn']['scale'] + p[name]['bn']['bias']

  x0 = bn(_conv_ref(x, p['branch0']['conv']['kernel'], 1), 'branch0')
  sq = _conv_ref(x, p['in_conv']['kernel'], 1, p['in_conv']['bias'])
  x1 = bn(_conv_ref(sq, p['branch1']['conv']['kernel'], 6), 'branch1')
  x2 = bn(_conv_ref(sq + x1, p['branch2']['conv']['kernel'], 12), 'branch2')
  x3 = bn(_conv_ref(sq + x2, p['branch3']['conv']['kernel'], 18), 'branch3')
  expected = jax.nn.relu(x0 + x3)
  np.testing.assert_allclose(np.asarray(m.apply(v, x, train=False)), np.asarray(expected), atol=1e-4)
  assert float((expected == 0).mean()) > 0.1 and float((x1 < 0).mean()) > 0.1  # ReLU only at the end


# -- FAT ------------------------------------------------------------------------------------------

def test_fat_param_count_matches_official_without_dead_convs():
  v = jax.eval_shape(lambda: fat_lib.FAT().init(jax.random.key(0), jnp.zeros((1, 64, 128)), jnp.zeros((1, 4, 128, 128)),
                                                train=False))
  assert _count(v['params']) == 413_056 - 65_792


@pytest.fixture(scope='module')
def fat_setup():
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  groups = jax.random.normal(jax.random.key(1), (2, 3, 4, 16))
  m = fat_lib.FAT(dropout=0.3)
  v = _vars(m, x, groups, train=False)
  return m, v, x, groups


def test_fat_shapes_and_symmetries(fat_setup):
  m, v, x, groups = fat_setup
  f = jax.jit(lambda x, g: m.apply(v, x, g, train=False))
  out = f(x, groups)
  assert out.shape == x.shape
  perm = np.array([3, 0, 4, 1, 2])
  # Tokens: permutation-equivariant. Groups and members within a group: permutation-invariant.
  np.testing.assert_allclose(np.asarray(f(x[:, perm], groups)), np.asarray(out[:, perm]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(f(x, groups[:, ::-1])), np.asarray(out), atol=1e-5)
  np.testing.assert_allclose(np.asarray(f(x, groups[:, :, ::-1])), np.asarray(out), atol=1e-5)
  assert not np.allclose(np.asarray(f(x, groups * 2.0)), np.asarray(out))
  # LeakyReLU (not ReLU) at the end: negative outputs survive.
  assert float((out < 0).mean()) > 0.05


def test_fat_x_is_replaced_by_the_value_projection(fat_setup):
  """With a zero G2L value projection the tokens are discarded, so every output token is the same
  (if the official G2L kept x residually, tokens would still differ)."""
  m, v, x, groups = fat_setup
  params = jax.tree.map(lambda a: a, v['params'])
  params['g2l_v'] = jax.tree.map(jnp.zeros_like, params['g2l_v'])
  out = np.asarray(m.apply({'params': params}, x, groups, train=False))
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :1], out.shape), atol=1e-5)
  assert not np.allclose(np.asarray(m.apply(v, x, groups, train=False))[:, 0],
                         np.asarray(m.apply(v, x, groups, train=False))[:, 1])


def test_fat_dropout_only_in_training(fat_setup):
  m, v, x, groups = fat_setup
  ev = [np.asarray(m.apply(v, x, groups, train=False)) for _ in range(2)]
  np.testing.assert_array_equal(ev[0], ev[1])
  tr = [np.asarray(m.apply(v, x, groups, train=True, rngs={'dropout': jax.random.key(i)})) for i in range(2)]
  assert not np.allclose(tr[0], tr[1])


# -- Slot branch ----------------------------------------------------------------------------------

TINY_SLOTS = slots_lib.SlotConfig(num_clusters=6, knn_k=3, kmeans_iters=4)


def _branch_inputs(b=2, c=16):
  x3 = jax.random.normal(jax.random.key(0), (b, 4, 4, c))
  refs = jax.random.normal(jax.random.key(1), (b, 3, 2, 2, c))
  return x3, refs


def _branch(cfg=TINY_SLOTS, c=16, seed=0):
  m = slots_lib.SlotBranch(cfg)
  x3, refs = _branch_inputs(c=c)
  v = _vars(m, x3, refs, kmeans_key=jax.random.key(0), train=False, seed=seed)
  return m, v, x3, refs


def test_slot_branch_shapes_and_intermediates():
  m, v, x3, refs = _branch()
  out, state = m.apply(v, x3, refs, kmeans_key=jax.random.key(0), train=False, mutable=['intermediates'])
  assert out['sqz'].shape == (2, 4, 4, 16)
  assert out['agg'].shape == (2, 6, 16)
  assert out['slots'].shape == (2, 2, 16)
  assert out['slot_mask'].shape == (2, 4, 4, 2)
  np.testing.assert_allclose(np.asarray(out['slot_mask'].sum(-1)), 1.0, rtol=1e-5)
  assert out['cos_agg'].shape == (2, 4, 4, 6) and out['cos_slots'].shape == (2, 4, 4, 2)
  assert float(jnp.abs(out['cos_slots']).max()) <= 1.0 + 1e-5
  inter = state['intermediates']
  assert inter['generator']['kmeans_assignments'][0].shape == (2, 4, 4)
  for key in ('slot_mask', 'fg_similarity', 'bg_similarity'):
    assert key in inter
  assert len(inter['attention']['knn_indices']) == TINY_SLOTS.slot_iters


def test_slot_branch_jit_equals_eager_and_key_determinism():
  m, v, x3, refs = _branch()
  f = lambda v, k: m.apply(v, x3, refs, kmeans_key=k, train=False)
  eager, jitted = f(v, jax.random.key(3)), jax.jit(f)(v, jax.random.key(3))
  for name in eager:
    np.testing.assert_allclose(np.asarray(eager[name]), np.asarray(jitted[name]), atol=1e-4, rtol=1e-4)
  again = jax.jit(f)(v, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(again['agg']), np.asarray(jitted['agg']))
  other = jax.jit(f)(v, jax.random.key(4))
  assert not np.allclose(np.asarray(other['agg']), np.asarray(jitted['agg']))


def test_real_init_of_slot_branch_runs():
  m = slots_lib.SlotBranch(TINY_SLOTS)
  x3, refs = _branch_inputs()
  v = jax.jit(lambda k: m.init(k, x3, refs, kmeans_key=jax.random.key(0), train=False))(jax.random.key(0))
  assert np.isfinite(np.asarray(m.apply(v, x3, refs, kmeans_key=jax.random.key(0), train=False)['cos_slots'])).all()


def test_soft_kmeans_variant_trains_every_slot_parameter():
  """kmeans_assign='soft' (+ kmeans++, GWAP means, paper KNN pool): forward + backward of the branch."""
  cfg = dataclasses.replace(TINY_SLOTS, kmeans_assign='soft', kmeans_init='kmeans++', kmeans_temperature=2.0,
                            prototype_reduce='mean', slot_pool='mean', knn_pool='aggregated_and_reference')
  m, v, x3, refs = _branch(cfg)
  probe = jax.random.normal(jax.random.key(5), (2, 4, 4, 8))

  def loss(params, x3):
    out = m.apply({'params': params}, x3, refs, kmeans_key=jax.random.key(0), train=True,
                  rngs={'dropout': jax.random.key(1)})
    return jnp.sum(jnp.concatenate([out['cos_agg'], out['cos_slots']], -1) * probe)

  grads, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(v['params'], x3)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert all(float(jnp.abs(g).sum()) > 0 for _, g in flat), [p for p, g in flat if not float(jnp.abs(g).sum()) > 0]
  assert np.isfinite(np.asarray(gx)).all()


def test_guided_slots_sum_versus_mean():
  """slot_pool='sum' = 'mean' x (sum of the softmax weights), the official weighted sum vs GWAP."""
  m, v, x3, refs = _branch()
  gen = lambda cfg: slots_lib.SlotGenerator(cfg).apply({'params': v['params']['generator']}, x3, refs,
                                                       kmeans_key=jax.random.key(0), train=False)
  s = gen(TINY_SLOTS)
  mean = gen(dataclasses.replace(TINY_SLOTS, slot_pool='mean'))
  mass = s['slot_mask'].reshape(2, 16, 2).sum(1)[..., None]
  np.testing.assert_allclose(np.asarray(s['slots']), np.asarray(mean['slots'] * mass), rtol=1e-4, atol=1e-5)
  # Prototypes: 'sum' of members vs 'mean' of members -> ratio = cluster sizes.
  pm = gen(dataclasses.replace(TINY_SLOTS, prototype_reduce='mean'))
  assert not np.allclose(np.asarray(pm['local']), np.asarray(s['local']))
  assert s['ref_protos'].shape == (2, 3, 16, 16)


def test_knn_restricts_slot_attention_to_neighbours():
  """With KNN (T=1), changing a pool entry that is no slot's neighbour leaves the slots unchanged;
  without KNN it changes them."""
  c = 16
  slots = jax.random.normal(jax.random.key(0), (1, 2, c))
  pool = jax.random.normal(jax.random.key(1), (1, 8, c))
  for use_fat in (True, False):
    for use_knn in (True, False):
      cfg = dataclasses.replace(TINY_SLOTS, slot_iters=1, knn_k=3, use_knn=use_knn, use_fat=use_fat)
      m = slots_lib.GuidedSlotAttention(cfg)
      v = _vars(m, slots, pool, train=False)
      sims = np.asarray(ops.cosine_similarity(slots, pool))[0]
      far = int(np.argmin(sims.max(0)))  # ranked last for both slots
      moved = pool.at[0, far].multiply(jnp.linspace(0.5, 2.0, c))  # not affine per entry: LN sees it
      assert np.asarray(ops.cosine_similarity(slots, moved))[0][:, far].max() < np.sort(sims, axis=1)[:, -3].min()
      a = np.asarray(m.apply(v, slots, pool, train=False))
      b = np.asarray(m.apply(v, slots, moved, train=False))
      assert a.shape == (1, 2, c)
      if use_knn:
        np.testing.assert_allclose(a, b, atol=1e-6)
      else:
        assert not np.allclose(a, b, atol=1e-6)


def test_standard_slot_attention_softmax_over_slots():
  cfg = dataclasses.replace(TINY_SLOTS, use_fat=False, use_knn=False, slot_iters=2)
  m = slots_lib.GuidedSlotAttention(cfg)
  slots, pool = jax.random.normal(jax.random.key(0), (2, 2, 16)), jax.random.normal(jax.random.key(1), (2, 7, 16))
  v = _vars(m, slots, pool, train=False)
  out, state = m.apply(v, slots, pool, train=False, mutable=['intermediates'])
  attn = state['intermediates']['attention_weights']
  assert len(attn) == 2 and attn[0].shape == (2, 2, 7)
  np.testing.assert_allclose(np.asarray(attn[0].sum(1)), 1.0 + 2e-8, rtol=1e-5)
  assert 'gru' in v['params']['slot_attention']


def test_random_slots_when_not_guided():
  cfg = dataclasses.replace(TINY_SLOTS, use_guided_slots=False)
  m, v, x3, refs = _branch(cfg)
  assert 'slot_enc' not in v['params']['generator'] and 'slots_mu' in v['params']['generator']
  f = jax.jit(lambda k, train: m.apply(v, x3, refs, kmeans_key=k, train=train, rngs={'dropout': jax.random.key(0)}),
              static_argnums=1)
  ev1, ev2 = f(jax.random.key(1), False), f(jax.random.key(2), False)
  tr1, tr2 = f(jax.random.key(1), True), f(jax.random.key(2), True)
  # Eval: a fixed slot key (k-means still uses the given key, so compare the initial-slot mask).
  np.testing.assert_allclose(np.asarray(ev1['slot_mask']), np.asarray(ev2['slot_mask']), atol=1e-6)
  assert not np.allclose(np.asarray(tr1['slot_mask']), np.asarray(tr2['slot_mask']))


# -- Res / Fusion / decoder -----------------------------------------------------------------------

def test_decoder_parts_param_counts_match_official():
  res = jax.eval_shape(lambda: decoder_lib.Res(128).init(jax.random.key(0), jnp.zeros((1, 4, 4, 128)),
                                                         jnp.zeros((1, 4, 4, 128)), train=False))
  assert _count(res['params']) == 5_903_872 // 4
  dec = jax.eval_shape(lambda: decoder_lib.Decoder(128).init(
      jax.random.key(0), *(jnp.zeros((1, 8 // s, 8 // s, 128)) for s in (1, 2, 4, 8)), train=False))
  p = dec['params']
  assert sum(_count(p[f'fusion{i}']) for i in (1, 2, 3)) == 1_328_640 - 443_136
  assert sum(_count(p[f'head{i}']) for i in (1, 2, 3, 4)) == 4_612


def test_decoder_cumulative_heads():
  xs = [jax.random.normal(jax.random.key(i), (1, 16 // s, 16 // s, 8)) for i, s in enumerate((1, 2, 4, 8))]
  m = decoder_lib.Decoder(8)
  v = _vars(m, *xs, train=False)
  m1, m2, m3, m4 = m.apply(v, *xs, train=False)
  assert all(o.shape == (1, 16, 16, 1) for o in (m1, m2, m3, m4))
  # Zeroing head1 makes m1 == m2 (m1 = head1(s1) + m2).
  p = dict(v['params'])
  p['head1'] = jax.tree.map(jnp.zeros_like, p['head1'])
  z1, z2, _, _ = m.apply({'params': p, 'batch_stats': v['batch_stats']}, *xs, train=False)
  np.testing.assert_allclose(np.asarray(z1), np.asarray(z2), atol=1e-6)
  # m4 is head4 of the upsampled x4 alone: independent of x1..x3.
  _, _, _, m4b = m.apply(v, xs[0] * 0, xs[1] * 0, xs[2] * 0, xs[3], train=False)
  np.testing.assert_allclose(np.asarray(m4b), np.asarray(m4), atol=1e-6)


def test_res_fuses_both_streams_and_bn_updates_in_training():
  a, b = jax.random.normal(jax.random.key(0), (2, 4, 4, 8)), jax.random.normal(jax.random.key(1), (2, 4, 4, 8))
  m = decoder_lib.Res(8)
  v = _vars(m, a, b, train=False)
  out = m.apply(v, a, b, train=False)
  assert out.shape == (2, 4, 4, 8) and float(out.min()) >= 0
  assert not np.allclose(np.asarray(m.apply(v, a, b * 2, train=False)), np.asarray(out))
  _, state = m.apply(v, a, b, train=True, mutable=['batch_stats'])
  assert not np.allclose(np.asarray(state['batch_stats']['bn1']['mean']), 0.0)
