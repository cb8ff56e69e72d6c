"""GSANet / SaliencyNet: official parameter count, outputs, determinism, gradients, reference caching,
every experiment config's model section (forward + backward at a tiny size), and the input errors.

Tiny size: tiny_cnn backbone, dim 16, M = 8 clusters, KNN 4, 64x64 images, batch 2, N_R = 2.
Variables come from `gsa_jax.bench.timing.random_variables` (eval_shape + numpy) to skip init's compilation.
"""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsa_jax import registry
from gsa_jax.bench import timing
from gsa_jax.models.gsanet import config as gsanet_config
from gsa_jax.models.gsanet import network as models
from gsa_jax import summary

SIZE, BATCH, REFS = 64, 2, 2
TINY = dict(backbone='tiny_cnn', dim=16, num_clusters=8, knn_k=4, drop_path_rate=0.0)

# Experiment configs (file[:arg]) whose model sections must build and train at the tiny size.
CONFIGS = ['gsanet_davis_mitb2', 'gsanet_davis_r101', 'gsanet_davis_paper'] + [f'gsanet_ablation:{r}' for r in 'abcdef']


def _load(name: str):
  module, _, arg = name.partition(':')
  mod = importlib.import_module(f'configs.{module}')
  return mod.get_config(arg) if arg else mod.get_config()


def _tiny_settings(model_config, **extra) -> models.ModelSettings:
  cfg = model_config.copy_and_resolve_references()
  cfg.update(TINY)
  cfg.update(extra)
  return models.ModelSettings.from_config(gsanet_config.network_fields(cfg))


def _inputs(num_refs=REFS, seed=0):
  rng = np.random.default_rng(seed)
  img = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return dict(rgb=img(BATCH, SIZE, SIZE, 3), flow=img(BATCH, SIZE, SIZE, 3),
              ref_rgb=img(BATCH, num_refs, SIZE, SIZE, 3), ref_flow=img(BATCH, num_refs, SIZE, SIZE, 3))


@functools.lru_cache(maxsize=None)
def _setup(settings: models.ModelSettings, num_refs: int = REFS):
  """(model, variables, inputs, jitted eval forward, jitted train loss-and-grad) for one setting."""
  model = models.GSANet(settings)
  inputs = _inputs(num_refs)
  abstract = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), inputs))
  variables = timing.random_variables(abstract)
  forward = jax.jit(lambda v, k, inp: model.apply(v, **inp, train=False, kmeans_key=k))
  probe = jax.random.uniform(jax.random.key(9), (BATCH, SIZE, SIZE, 1))

  def loss_fn(params, batch_stats, inp, key):
    out, state = model.apply({'params': params, 'batch_stats': batch_stats}, **inp, train=True,
                             kmeans_key=key, rngs={'dropout': key}, mutable=['batch_stats'])
    loss = sum(jnp.mean(m * probe) for m in out['side_logits'])
    loss += sum(jnp.mean(m * probe) for m in out['slot_maps'])
    return loss, (out, state)

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 2), has_aux=True))
  return model, variables, inputs, forward, grad_fn


def _default_setup():
  return _setup(_tiny_settings(gsanet_config.model_config()), REFS)  # same cache key as the config test


def _leaves(tree):
  return {'/'.join(getattr(k, 'key', str(k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# -- parameter count, summary, names ----------------------------------------------------------------

def test_official_config_param_count_and_summary():
  config = _load('gsanet_davis_mitb2')
  text = summary.summary_text(config)
  assert text.splitlines()[-1] == 'total_params: 60731528'
  model = registry.build(config)
  counts = summary.part_counts(model, model.abstract_variables()['params'])
  assert list(counts.values()) == [
      2 * 24_196_288,            # MiT-B2 x 2 without the classifiers
      4_072_448,                 # MFFM x 8
      859_652 - 2 * 65_792,      # slot generators without the FATs' dead convs
      826_112 - 2 * 65_792,      # guided slot attention (one FAT each) without dead convs
      49_920,                    # rgb_fusion / flow_fusion (194 -> 128)
      5_903_872,                 # Res x 4
      1_328_640 - 443_136,       # Fusion x 3 without conv_upsample
      4_612,                     # heads
      0,                         # other
  ]
  assert sum(counts.values()) == 60_731_528


def test_param_tree_names_and_saliency_transfer_by_name():
  settings = _tiny_settings(gsanet_config.model_config())
  video = jax.eval_shape(lambda: models.init_variables(models.GSANet(settings), jax.random.key(0), _inputs()))
  sal_settings = _tiny_settings(gsanet_config.model_config(), kind='saliency')
  sal_model = models.build_model(_with(gsanet_config.model_config(), kind='saliency'))
  assert isinstance(sal_model, models.SaliencyNet)
  sal = jax.eval_shape(lambda: models.init_variables(models.SaliencyNet(sal_settings), jax.random.key(0),
                                                     dict(rgb=_inputs()['rgb'])))
  expected = ({f'{s}_encoder' for s in ('rgb', 'flow')} | {f'{s}_mffm{i}' for s in ('rgb', 'flow') for i in range(1, 5)}
              | {'rgb_slots', 'flow_slots', 'rgb_fusion', 'flow_fusion', 'decoder'} | {f'fuse{i}' for i in range(1, 5)})
  assert set(video['params']) == expected
  assert set(sal['params']) == {'rgb_encoder', 'decoder'} | {f'rgb_mffm{i}' for i in range(1, 5)}
  for collection in ('params', 'batch_stats'):
    v, s = _leaves(video[collection]), _leaves(sal[collection])
    for name, leaf in s.items():
      assert name in v and v[name].shape == leaf.shape, name


def _with(model_config, **kw):
  cfg = model_config.copy_and_resolve_references()
  cfg.update(TINY)
  cfg.update(kw)
  return gsanet_config.network_fields(cfg)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  settings = _tiny_settings(gsanet_config.model_config(), dtype='bfloat16')
  model = models.GSANet(settings)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), _inputs()))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables['params']))
  out = jax.eval_shape(lambda v: model.apply(v, **_inputs(), train=False, kmeans_key=jax.random.key(0)), variables)
  assert out['logits'].dtype == jnp.float32 and out['slot_maps'][0].dtype == jnp.float32


# -- outputs and determinism -----------------------------------------------------------------------

def test_outputs_shapes_ranges():
  _, v, inp, forward, _ = _default_setup()
  out = forward(v, jax.random.key(0), inp)
  assert out['logits'].shape == (BATCH, SIZE, SIZE, 1)
  assert len(out['side_logits']) == 4 and len(out['slot_maps']) == 6
  np.testing.assert_array_equal(np.asarray(out['logits']), np.asarray(out['side_logits'][0]))
  for m in out['side_logits'] + out['slot_maps']:
    assert m.shape == (BATCH, SIZE, SIZE, 1) and m.dtype == jnp.float32 and np.isfinite(np.asarray(m)).all()
  for m in out['slot_maps']:
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
  # Cumulative heads: side maps differ from each other.
  assert not np.allclose(np.asarray(out['side_logits'][0]), np.asarray(out['side_logits'][3]))


def test_kmeans_key_determinism():
  _, v, inp, forward, _ = _default_setup()
  a, b = forward(v, jax.random.key(1), inp), forward(v, jax.random.key(1), inp)
  c = forward(v, jax.random.key(2), inp)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # k-means with another random init gives other prototypes -> other slot maps and logits.
  assert not np.allclose(np.asarray(a['slot_maps'][2]), np.asarray(c['slot_maps'][2]))


def test_encode_references_then_segment_equals_call():
  model, v, inp, forward, _ = _default_setup()
  enc = jax.jit(lambda v, r, f: model.apply(v, r, f, train=False, method=models.GSANet.encode_references))
  seg = jax.jit(lambda v, refs, k: model.apply(v, inp['rgb'], inp['flow'], refs, train=False, kmeans_key=k,
                                               method=models.GSANet.segment))
  refs = enc(v, inp['ref_rgb'], inp['ref_flow'])
  assert refs['rgb'].shape == (BATCH, REFS, SIZE // 32, SIZE // 32, 16) == refs['flow'].shape
  split, whole = seg(v, refs, jax.random.key(3)), forward(v, jax.random.key(3), inp)
  for x, y in zip(jax.tree.leaves(split), jax.tree.leaves(whole)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=1e-5)


def test_saliency_net_jit_equals_eager():
  settings = _tiny_settings(gsanet_config.model_config(), kind='saliency')
  model = models.SaliencyNet(settings)
  rgb = _inputs()['rgb']
  v = timing.random_variables(jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), dict(rgb=rgb))))
  eager = model.apply(v, rgb, train=False)
  jitted = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, rgb)
  assert eager['slot_maps'] == () and len(eager['side_logits']) == 4
  for x, y in zip(eager['side_logits'], jitted['side_logits']):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4, rtol=1e-4)


# -- gradients -----------------------------------------------------------------------------------

def test_gradients_reach_every_parameter_and_not_the_references():
  """Every parameter gets a gradient in training. The reference pass is under stop_gradient (official
  torch.no_grad), so the reference IMAGES get none; but no parameter is reference-only: the encoders'
  stage 4 and *_mffm1 also serve the target's x4, and the sqz conv that embeds the references also
  embeds the target, so all of them still learn (through the target path only)."""
  _, v, inp, _, grad_fn = _default_setup()
  (loss, (out, state)), (grads, input_grads) = grad_fn(v['params'], v['batch_stats'], inp, jax.random.key(0))
  assert np.isfinite(float(loss))
  zero = [name for name, g in _leaves(grads).items() if not float(jnp.abs(g).sum()) > 0]
  assert not zero, f'parameters without gradient: {zero}'
  np.testing.assert_array_equal(np.asarray(input_grads['ref_rgb']), 0.0)
  np.testing.assert_array_equal(np.asarray(input_grads['ref_flow']), 0.0)
  assert float(jnp.abs(input_grads['rgb']).sum()) > 0 and float(jnp.abs(input_grads['flow']).sum()) > 0
  # BatchNorm statistics move in training (the reference pass updates rgb_mffm1's too).
  new, old = _leaves(state['batch_stats']), _leaves(v['batch_stats'])
  assert not np.allclose(np.asarray(new['rgb_mffm1/branch0/bn/mean']), np.asarray(old['rgb_mffm1/branch0/bn/mean']))


def _config_ids():
  """Unique tiny model settings over CONFIGS (identical ones are compiled once), with their names."""
  unique: dict[models.ModelSettings, list[str]] = {}
  for name in CONFIGS:
    config = _load(name)
    unique.setdefault(_tiny_settings(config.model), []).append(name)
  return [pytest.param(s, CONFIGS_NUM_REFS.get(names[0], REFS), id='+'.join(names)) for s, names in unique.items()]


CONFIGS_NUM_REFS = {'gsanet_davis_paper': 3}


@pytest.mark.parametrize('settings,num_refs', _config_ids())
def test_every_config_model_trains_at_tiny_size(settings, num_refs):
  model, v, inp, _, grad_fn = _setup(settings, num_refs)
  (loss, (out, _)), (grads, _) = grad_fn(v['params'], v['batch_stats'], inp, jax.random.key(0))
  assert np.isfinite(float(loss))
  assert out['logits'].shape == (BATCH, SIZE, SIZE, 1)
  g = _leaves(grads)
  assert all(np.isfinite(np.asarray(x)).all() for x in g.values())
  zero = [name for name, x in g.items() if not float(jnp.abs(x).sum()) > 0]
  assert not zero, f'parameters without gradient: {zero}'
  c = settings.slots
  if not (c.use_guided_slots or c.use_slot_attention):  # row (a): no slot branch at all
    assert out['slot_maps'] == () and 'rgb_slots' not in v['params'] and 'rgb_fusion' not in v['params']
  else:
    assert len(out['slot_maps']) == 6
    gen = v['params']['rgb_slots']['generator']
    assert ('slot_enc' in gen) == c.use_guided_slots and ('slots_mu' in gen) != c.use_guided_slots
    assert ('fat' in gen) == c.use_fat
    assert ('attention' in v['params']['rgb_slots']) == c.use_slot_attention


def test_ablation_rows_switches():
  rows = {r: _load(f'gsanet_ablation:{r}').model for r in 'abcdef'}
  flags = {r: (m.use_guided_slots, m.use_knn, m.use_slot_attention, m.use_fat) for r, m in rows.items()}
  assert flags == {'a': (False, False, False, False), 'b': (False, False, True, False),
                   'c': (True, False, True, False), 'd': (False, True, True, False),
                   'e': (True, True, True, False), 'f': (True, True, True, True)}
  with pytest.raises(ValueError, match='ablation row'):
    _load('gsanet_ablation:g')


# -- bad inputs and configs -------------------------------------------------------------------------

def _trace(settings, **overrides):
  model = models.GSANet(settings)
  inp = dict(_inputs(), **overrides)
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), inp))


@pytest.mark.parametrize('overrides,match', [
    (dict(flow=jnp.zeros((BATCH, SIZE, SIZE + 32, 3))), 'must have the same shape'),
    (dict(rgb=jnp.zeros((BATCH, 48, SIZE, 3)), flow=jnp.zeros((BATCH, 48, SIZE, 3))), 'multiples of 32'),
    (dict(ref_flow=jnp.zeros((BATCH, REFS + 1, SIZE, SIZE, 3))), 'same shape'),
    (dict(ref_rgb=jnp.zeros((BATCH, REFS, 32, SIZE, 3)), ref_flow=jnp.zeros((BATCH, REFS, 32, SIZE, 3))), 'b, h, w of rgb'),
    (dict(rgb=jnp.zeros((BATCH, SIZE, SIZE))), r'\[b, h, w, 3\]'),
])
def test_bad_inputs_raise(overrides, match):
  with pytest.raises(ValueError, match=match):
    _trace(_tiny_settings(gsanet_config.model_config()), **overrides)


def test_too_few_pixels_for_the_clusters():
  small = dict(rgb=jnp.zeros((1, 32, 32, 3)), flow=jnp.zeros((1, 32, 32, 3)),
               ref_rgb=jnp.zeros((1, 1, 32, 32, 3)), ref_flow=jnp.zeros((1, 1, 32, 32, 3)))
  with pytest.raises(ValueError, match='fewer than num_clusters=8'):
    _trace(_tiny_settings(gsanet_config.model_config()), **small)


def test_segment_rejects_mismatched_reference_features():
  settings = _tiny_settings(gsanet_config.model_config())
  model = models.GSANet(settings)
  inp = _inputs()
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), inp))
  bad = dict(rgb=jnp.zeros((BATCH, REFS, 4, 4, 16)), flow=jnp.zeros((BATCH, REFS, 4, 4, 16)))
  with pytest.raises(ValueError, match='ref_features'):
    jax.eval_shape(lambda v: model.apply(v, inp['rgb'], inp['flow'], bad, train=False, kmeans_key=jax.random.key(0),
                                         method=models.GSANet.segment), variables)


@pytest.mark.parametrize('field,value,match', [
    ('backbone', 'vgg99', "Unknown backbone 'vgg99'"),
    ('knn_k', 9, 'knn_k=9'),
    ('kmeans_init', 'forgy', "kmeans_init='forgy'"),
    ('kmeans_assign', 'fuzzy', 'kmeans_assign'),
    ('prototype_reduce', 'max', 'prototype_reduce'),
    ('knn_pool', 'all', 'knn_pool'),
    ('num_slots', 1, 'num_slots=1'),
    ('kind', 'image', "kind='image'"),
    ('dtype', 'float16', 'dtype'),
    ('kmeans_temperature', 0.0, 'kmeans_temperature'),
])
def test_bad_config_values_raise(field, value, match):
  with pytest.raises(ValueError, match=match):
    models.build_model(_with(gsanet_config.model_config(), **{field: value}))


def test_unknown_config_field_raises():
  cfg = dict(_with(gsanet_config.model_config()), num_slot=3)
  with pytest.raises(ValueError, match='num_slot'):
    models.ModelSettings.from_config(cfg)
