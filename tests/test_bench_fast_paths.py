"""The CPU-fast forms used by the training step give the values and gradients of the plain ones: the
align_corners resize as two matrix products (against the gather form), convolutions whose kernel gradient is
one matrix product per tap (against lax.conv_general_dilated's), the depthwise 3x3 conv with its own backward
(against autodiff of the shifted form); and the training-step breakdown's FLOP path (lowered programs only)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import gsanet_demo as demo
from gsa_jax import layers
from gsa_jax import ops
from gsa_jax.bench import runner


def _grads(f, *args):
  out, vjp = jax.vjp(f, *args)
  ct = jax.random.normal(jax.random.key(9), out.shape, out.dtype)
  return out, vjp(ct)


@pytest.mark.parametrize('shape,size', [((2, 6, 5, 3), (17, 11)), ((1, 24, 24, 1), (384, 384)), ((1, 5, 1, 2), (3, 1))])
def test_matmul_resize_equals_gather_resize_in_value_and_gradient(shape, size):
  x = jax.random.normal(jax.random.key(0), shape)
  a, (ga,) = _grads(lambda v: ops.resize_bilinear_align_corners(v, size, method='gather'), x)
  b, (gb,) = _grads(lambda v: ops.resize_bilinear_align_corners(v, size), x)
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gb), np.asarray(ga), rtol=1e-5, atol=1e-5)
  m = ops.align_corners_matrix(shape[1], size[0])
  np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match='resize method'):
    ops.resize_bilinear_align_corners(x, size, method='nearest')


@pytest.mark.parametrize('kernel,dilation', [(3, 1), (3, 4), (1, 1), (5, 2)])
def test_tap_grad_conv_equals_xla_conv(kernel, dilation):
  x = jax.random.normal(jax.random.key(1), (2, 9, 7, 5))
  make = lambda impl: layers.conv(6, kernel, dilation=dilation, impl=impl)
  variables = make('xla').init(jax.random.key(2), x)
  outs = {}
  for impl in ('xla', 'taps'):
    outs[impl] = _grads(lambda v, a: make(impl).apply(v, a), variables, x)
  (ya, (gva, gxa)), (yb, (gvb, gxb)) = outs['xla'], outs['taps']
  np.testing.assert_allclose(np.asarray(yb), np.asarray(ya), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(gxb), np.asarray(gxa), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gva), jax.tree.leaves(gvb)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='conv impl'):
    layers.conv_impl('fast')


def test_tap_grad_conv_leaves_strided_convs_to_xla():
  x = jax.random.normal(jax.random.key(3), (1, 8, 8, 2))
  conv = nn.Conv(3, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), conv_general_dilated=layers.conv_general_dilated)
  plain = nn.Conv(3, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  v = plain.init(jax.random.key(4), x)
  np.testing.assert_allclose(np.asarray(conv.apply(v, x)), np.asarray(plain.apply(v, x)), rtol=1e-6)


def test_depthwise_backward_equals_autodiff_of_the_shifted_form():
  x = jax.random.normal(jax.random.key(5), (2, 6, 7, 4))
  k = jax.random.normal(jax.random.key(6), (3, 3, 1, 4))
  ya, ga = _grads(layers._depthwise_forward, x, k)  # pylint: disable=protected-access
  yb, gb = _grads(lambda a, b: jax.nn.gelu(layers.depthwise_conv3x3(a, b)) / jax.nn.gelu(1.0), x, k)
  yc, gc = _grads(lambda a, b: jax.nn.gelu(layers._depthwise_forward(a, b)) / jax.nn.gelu(1.0), x, k)  # pylint: disable=protected-access
  grouped = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                         feature_group_count=4)
  np.testing.assert_allclose(np.asarray(ya), np.asarray(grouped), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(yb), np.asarray(yc), rtol=1e-6)
  for a, b in zip(gb, gc):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_training_step_breakdown_flop_path():
  config = demo.get_config()
  m = config.model
  m.dim, m.num_clusters, m.knn_k, m.kmeans_iters, m.slot_iters = 16, 4, 2, 2, 1
  config.data.num_refs = 1
  model, variables = runner.model_and_variables(config)
  run = runner.PartRunner(repeats=0, warmup=0, timed=False)
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), runner.random_batch(model, 2, 64))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), variables)
  report = model.bench_train_breakdown(abstract, batch, run, dict(ms=None, flops=1e12))
  rows = report['shares']
  for part in ('backbone', 'mffm', 'slot_branch', 'decoder', 'resizes', 'loss', 'references', 'optimizer'):
    assert rows[part]['fwd_flops'] > 0, part
  for part in ('backbone', 'mffm', 'decoder', 'resizes'):  # their backward costs at least as much as the forward
    assert rows[part]['bwd_flops'] >= rows[part]['fwd_flops'] * 0.99, part
  assert rows['references']['bwd_flops'] == 0.0
  assert abs(sum(r['flop_share'] for r in rows.values()) - 1.0) < 1e-9
