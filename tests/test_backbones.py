"""MiT and ResNet backbones: shapes, strides, parameter counts, drop-path, jit == eager.

Only the small variants (mit_b0, resnet18) are run; the large ones are checked with `jax.eval_shape`,
which builds shapes without computing anything.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsa_jax import backbones
from gsa_jax.backbones import mit
from gsa_jax.backbones import resnet

MIT_NAMES = [f'mit_b{i}' for i in range(6)]
RESNET_NAMES = ['resnet18', 'resnet34', 'resnet50', 'resnet101']
SIZE = 64  # input height/width (a multiple of 32)


def _num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init(model, x: jnp.ndarray, seed: int = 0):
  """Random variables of the right structure, filled by numpy.

  `model.init` costs 10-30 s of compilation here (one random program per parameter shape), so
  most tests use this instead; `test_init_runs` covers the real initialisers.
  """
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ('kernel',):
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape), jnp.float32)
    if name == 'var':
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    if name == 'scale':
      return jnp.asarray(1.0 + 0.1 * rng.normal(size=leaf.shape), jnp.float32)
    return jnp.asarray(0.1 * rng.normal(size=leaf.shape), jnp.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _abstract_variables(name: str):
  model = backbones.build_backbone(name)
  return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))


@pytest.mark.parametrize('name', MIT_NAMES + RESNET_NAMES)
def test_registered_output_shapes(name):
  """Every registered variant gives 4 maps at strides 4/8/16/32 with the advertised channels."""
  model, variables = _abstract_variables(name)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                           jax.ShapeDtypeStruct((2, SIZE, SIZE, 3), jnp.float32))
  channels = backbones.backbone_channels(name)
  assert [o.shape for o in outputs] == [(2, SIZE // s, SIZE // s, c) for s, c in zip((4, 8, 16, 32), channels)]
  assert all(o.dtype == jnp.float32 for o in outputs)


def test_initialisers_give_sane_values():
  """The real initialisers (checked on one block each; a whole-model init costs 10-30 s to compile)."""
  blocks = [(mit.MiTBlock(num_heads=2, sr_ratio=2, mlp_ratio=4), (1, 8, 8, 32)),
            (resnet.Bottleneck(16, stride=2), (1, 8, 8, 32))]
  for block, shape in blocks:
    variables = jax.jit(block.init)(jax.random.key(0), jnp.zeros(shape))
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(variables))
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables['params']):
      if path[-1].key == 'kernel':
        assert 0.0 < float(jnp.std(leaf)) < 1.0, path
      elif path[-1].key == 'scale':
        np.testing.assert_array_equal(leaf, 1.0)
      else:
        np.testing.assert_array_equal(leaf, 0.0)


@pytest.fixture(scope='module')
def mit_b0_run():
  """mit_b0 with a large drop-path rate (so that some sample drops a block for sure), its variables,
  a non-square input, and its jitted eval / train functions (compiled once for the module)."""
  model = backbones.build_backbone('mit_b0', drop_path_rate=0.5)
  x = jax.random.normal(jax.random.key(1), (2, 64, 96, 3))
  variables = _init(model, x)
  eval_fn = jax.jit(lambda v, x, key: model.apply(v, x, train=False, rngs={'dropout': key}))
  train_fn = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={'dropout': key}))
  return model, variables, x, eval_fn(variables, x, jax.random.key(7)), train_fn


@pytest.fixture(scope='module')
def resnet18_run():
  model = backbones.build_backbone('resnet18')
  x = jax.random.normal(jax.random.key(1), (2, 64, 96, 3))
  variables = _init(model, x)
  eval_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return model, variables, x, eval_fn(variables, x)


@pytest.fixture(scope='module')
def runs(mit_b0_run, resnet18_run):
  return {'mit_b0': mit_b0_run, 'resnet18': resnet18_run}


@pytest.mark.parametrize('name', ['mit_b0', 'resnet18'])
def test_small_variants_run(runs, name):
  """A real (jitted) forward pass at a non-square size: strides hold, values are finite."""
  outputs = runs[name][3]
  assert [o.shape for o in outputs] == [(2, 64 // s, 96 // s, c) for s, c in
                                        zip((4, 8, 16, 32), backbones.backbone_channels(name))]
  for o in outputs:
    assert np.isfinite(np.asarray(o)).all()
    assert float(jnp.std(o)) > 0.1  # not collapsed


@pytest.mark.parametrize('name', ['mit_b0', 'resnet18'])
def test_jit_equals_eager(runs, name):
  """Eager eval (no 'dropout' rng given) equals the jitted eval (rng given, and ignored)."""
  model, variables, x, jitted = runs[name][:4]
  eager = model.apply(variables, x, train=False)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('name, expected', [
    ('mit_b0', 3_319_392),     # HF SegformerModel(mit-b0) without a head.
    ('mit_b2', 24_196_288),    # 24,709,288 official minus the 513,000-parameter classifier.
    ('resnet18', 11_176_512),  # torchvision 11,689,512 minus fc 513,000.
    ('resnet34', 21_284_672),  # torchvision 21,797,672 minus fc 513,000.
    ('resnet50', 23_508_032),  # torchvision 25,557,032 minus fc 2,049,000.
    ('resnet101', 42_500_160),  # torchvision 44,549,160 minus fc 2,049,000.
])
def test_parameter_counts(name, expected):
  _, variables = _abstract_variables(name)
  assert _num_params(variables['params']) == expected


def test_mit_has_no_batch_stats_and_resnet_does():
  _, mit_vars = _abstract_variables('mit_b0')
  _, resnet_vars = _abstract_variables('resnet18')
  assert set(mit_vars) == {'params'}
  assert set(resnet_vars) == {'params', 'batch_stats'}


def test_mit_names_mirror_hf_layout():
  _, variables = _abstract_variables('mit_b0')
  params = variables['params']
  assert sorted(params) == ['stage_0', 'stage_1', 'stage_2', 'stage_3']
  block = params['stage_0']['block_1']
  assert sorted(block) == ['attention', 'layernorm_after', 'layernorm_before', 'mlp']
  assert sorted(block['attention']) == ['k_proj', 'o_proj', 'q_proj', 'sequence_reduction', 'v_proj']
  assert 'sequence_reduction' not in params['stage_3']['block_0']['attention']  # sr ratio 1.
  assert block['mlp']['dwconv']['kernel'].shape == (3, 3, 1, 128)


def test_drop_path_function():
  """Whole samples are either dropped or scaled by 1/keep; the same key gives the same mask."""
  x = jnp.ones((256, 2, 2, 3))
  y = mit.drop_path(x, 0.25, jax.random.key(3))
  per_sample = np.asarray(y[:, 0, 0, 0])
  assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, float(np.float32(1.0 / 0.75))}
  assert np.all(np.asarray(y) == per_sample[:, None, None, None])
  assert 0.15 < np.mean(per_sample == 0) < 0.35
  np.testing.assert_array_equal(y, mit.drop_path(x, 0.25, jax.random.key(3)))
  assert not np.array_equal(y, mit.drop_path(x, 0.25, jax.random.key(4)))


def test_drop_path_only_in_train(mit_b0_run):
  model, variables, x, eval_out, train_fn = mit_b0_run
  # Train needs the 'dropout' stream; eval does not (test_jit_equals_eager runs it without one).
  with pytest.raises(Exception, match='dropout'):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, x)
  train_a = train_fn(variables, x, jax.random.key(7))
  train_b = train_fn(variables, x, jax.random.key(7))
  train_c = train_fn(variables, x, jax.random.key(8))
  for a, b in zip(train_a, train_b):
    np.testing.assert_array_equal(a, b)  # Deterministic per key.
  assert not np.allclose(train_a[-1], train_c[-1])  # Another key, other drops.
  assert not np.allclose(train_a[-1], eval_out[-1])  # Drop-path changes the train output.
  # Stage 1's blocks have small but non-zero rates (block 1: 0.5/7), so stage maps differ too.
  assert not np.allclose(train_a[0], eval_out[0])


def test_block_drop_path_zero_rate_is_identity_in_train():
  block = mit.MiTBlock(num_heads=1, sr_ratio=2, mlp_ratio=4, drop_path_rate=0.0)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  variables = _init(block, x)
  np.testing.assert_array_equal(block.apply(variables, x, train=True),  # No rng needed at rate 0.
                                block.apply(variables, x, train=False))
  dropping = mit.MiTBlock(num_heads=1, sr_ratio=2, mlp_ratio=4, drop_path_rate=0.5)
  y = dropping.apply(variables, x, train=True, rngs={'dropout': jax.random.key(0)})
  assert not np.allclose(y, block.apply(variables, x, train=False))


def test_mit_drop_path_rates_rise_linearly():
  model = mit.MixTransformer(mit.MIT_CONFIGS['mit_b2'], drop_path_rate=0.1)
  x = jnp.zeros((1, 64, 64, 3))
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, mit.MiTBlock) and context.method_name == '__call__':
      rates.append(context.module.drop_path_rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  np.testing.assert_allclose(rates, np.linspace(0.0, 0.1, 16), atol=1e-12)


def test_resnet_batch_stats_momentum_and_eval(resnet18_run):
  """Train updates the running stats with momentum 0.9; eval uses them and changes nothing."""
  model, variables, x, _ = resnet18_run
  x = x + 3.0  # Far from the running mean.
  _, state = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats', 'intermediates'],
      capture_intermediates=lambda m, method: m.scope.path == ('conv1',)))(variables, x)
  stem = state['intermediates']['conv1']['__call__'][0]                  # [b h/2 w/2 64]
  expected = 0.9 * variables['batch_stats']['bn1']['mean'] + 0.1 * jnp.mean(stem, axis=(0, 1, 2))
  np.testing.assert_allclose(state['batch_stats']['bn1']['mean'], expected, rtol=1e-5, atol=1e-5)
  _, eval_state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['batch_stats']))(
      variables, x)
  jax.tree.map(np.testing.assert_array_equal, eval_state['batch_stats'], variables['batch_stats'])
  train_stats = state['batch_stats']
  assert not np.allclose(train_stats['layer4']['block_1']['bn2']['var'],
                         variables['batch_stats']['layer4']['block_1']['bn2']['var'])


@pytest.mark.parametrize('impl', ['grouped', 'shifted', 'auto'])
def test_depthwise_conv_impls_match_flax_grouped_conv(impl):
  """Every DepthwiseConv3x3 impl computes nn.Conv(c, 3x3, feature_group_count=c) with the same params."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 5, 12)), jnp.float32)
  reference = nn.Conv(12, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=12)
  variables = reference.init(jax.random.key(0), x)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # non-zero bias
  module = mit.DepthwiseConv3x3(impl)
  own = module.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, variables)
  expected = reference.apply(variables, x)
  np.testing.assert_allclose(module.apply(variables, x), expected, atol=1e-5)
  grad = jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2))(variables)
  grad_ref = jax.grad(lambda v: jnp.sum(reference.apply(v, x) ** 2))(variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grad, grad_ref)


def test_depthwise_conv_rejects_unknown_impl():
  x = jnp.zeros((1, 4, 4, 3))
  with pytest.raises(ValueError, match='shifted'):
    mit.DepthwiseConv3x3('fast').init(jax.random.key(0), x)
