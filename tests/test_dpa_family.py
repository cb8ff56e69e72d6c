"""DPA through the model contract (gsa_jax/models/dpa/model.py) at a tiny size: the cached-reference segmenter
against the full forward, the init transfer against the official stage 1 -> 2 rule, the official converter's
config, config checks, and the VGG-16 backbone in the registry. The whole train -> evaluate -> predict ->
summary path runs in tests/test_contract.py.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import defaults
from configs import dpa_demo
from gsa_jax import backbones
from gsa_jax import config_lib
from gsa_jax import errors
from gsa_jax import registry
from gsa_jax.backbones import vgg_weights
from gsa_jax.models.dpa import weights as dpa_weights
import torch_dpa as T

torch.set_num_threads(1)
S, R = 64, 2


def tiny_config():
  config = dpa_demo.get_config()
  config.model.update(vgg_width=0.125, dim=16)
  config.data.num_refs = R
  config.data.image_size = S
  config.eval.batch_size = 3
  return config


@pytest.fixture(scope='module')
def family():
  """The tiny DPA family and variables converted from random torch weights (distinct values everywhere)."""
  model = registry.build(tiny_config())
  torch_model = T.randomize_(T.VideoModel(dim=16, width=0.125, decoder_width=0.5), 0)
  variables, _ = dpa_weights.convert_checkpoint(T.numpy_state(torch_model), model.settings)
  return model, variables


def test_cached_segmenter_equals_the_full_forward(family):
  model, variables = family
  segmenter = model.segmenter(variables)
  assert segmenter.modalities == ('rgb', 'flow') and segmenter.context_indices(10) == [0, 5]
  rng = np.random.default_rng(0)
  refs = {'rgb': rng.normal(size=(R, S, S, 3)).astype(np.float32),
          'flow': rng.uniform(size=(R, S, S, 3)).astype(np.float32)}
  frames = {'rgb': rng.normal(size=(3, S, S, 3)).astype(np.float32),
            'flow': rng.uniform(size=(3, S, S, 3)).astype(np.float32)}
  context = segmenter.encode(refs)
  got = segmenter.segment(frames, np.arange(3), context)['prob']                       # [3 s s]
  full = jax.jit(lambda v, *a: model.module.apply(v, *a, train=False)['prob'])(
      variables, frames['rgb'], frames['flow'], np.broadcast_to(refs['rgb'], (3, R, S, S, 3)),
      np.broadcast_to(refs['flow'], (3, R, S, S, 3)))
  assert got.shape == (3, S, S)
  np.testing.assert_allclose(got, np.asarray(full)[..., 0], atol=1e-5, rtol=0)
  # A frame's mask does not depend on the other frames of its batch.
  swapped = segmenter.segment({k: v[::-1].copy() for k, v in frames.items()}, np.arange(3), context)['prob']
  np.testing.assert_allclose(swapped[::-1], got, atol=1e-6, rtol=0)
  paper = tiny_config()
  paper.data.test_reference_rule = 'paper'
  assert registry.build(paper).segmenter(variables).context_indices(10) == [0, 9]


def test_init_transfer_is_the_official_stage1_rule(family):
  model, variables = family
  stage1 = T.randomize_(T.PretrainModel(dim=16, width=0.125, decoder_width=0.5), 4)
  stage1_vars, _ = dpa_weights.convert_checkpoint(T.numpy_state(stage1))
  moved, report = model.transfer(copy.deepcopy(variables), stage1_vars, {'scope': 'model'})
  expected, _ = dpa_weights.transfer_stage1(stage1_vars, variables)   # = official load_my_state_dict
  jax.tree.map(np.testing.assert_array_equal, moved, expected)
  assert any('rgb_encoder -> ' in line and 'flow_encoder' in line for line in report), report
  # An ImageNet VGG-16 (scope 'backbone', --mode=convert --kind=vgg16) goes into both encoders.
  features = T.torchvision_vgg16_features(0.125)
  name, vgg = 'vgg16', vgg_weights.convert_vgg16({'features.' + k: v.numpy() for k, v in
                                                  features.state_dict().items()}, width=0.125)
  moved, _ = model.transfer(copy.deepcopy(variables), vgg, {'scope': 'backbone', 'backbone': name})
  for stream in ('rgb_encoder', 'flow_encoder'):
    jax.tree.map(np.testing.assert_array_equal, moved['params'][stream], vgg['params'])
  jax.tree.map(np.testing.assert_array_equal, moved['params']['decoder'], variables['params']['decoder'])


def test_convert_official_gives_the_full_config():
  family_cls = registry.get('dpa')
  state = T.numpy_state(T.VideoModel(dim=16, width=0.125))
  variables, full = family_cls.convert_official(state, None)
  assert full.model.dim == 16 and full.model.vgg_width == 0.125 and full.model.name == 'dpa'
  assert full.data.num_refs == 4 and full.train.batch_size == 12 and full.data.image_size == 512  # dpa_davis
  config_lib.validate(full, roles=(), training=False)
  model = registry.build(full)
  back = model.export_official(variables)
  for k, v in state.items():
    if k in back and not dpa_weights._IGNORED.search(k):
      np.testing.assert_array_equal(back[k], v, err_msg=k)
  with pytest.raises(errors.ConfigError, match="config is for model 'gsanet'"):
    family_cls.convert_official(state, defaults.get_config('gsanet'))
  _, stage1 = family_cls.convert_official(T.numpy_state(T.PretrainModel(dim=16, width=0.125)), None)
  assert stage1.model.kind == 'saliency' and stage1.data.train == 'duts'                        # dpa_pretrain_duts


def test_config_checks():
  config = tiny_config()
  config.data.image_size = 48
  config.train.batch_size = 1
  config.model.loss = 'bce'
  with pytest.raises(errors.ConfigError) as e:
    config_lib.validate(config, roles=())
  message = str(e.value)
  assert 'multiples of 32' in message and '[48]' in message
  assert 'train.batch_size=1' in message and "model.loss='bce'" in message and "('iou', 'ce')" in message


def test_vgg16_in_the_backbone_registry():
  assert backbones.backbone_channels('vgg16') == (256, 512, 512, 512)
  net = backbones.build_backbone('vgg16')
  x = jnp.zeros((1, 64, 64, 3))
  shapes = jax.eval_shape(lambda: net.init_with_output(jax.random.key(0), x))
  assert [o.shape for o in shapes[0]] == [(1, 16, 16, 256), (1, 8, 8, 512), (1, 4, 4, 512), (1, 2, 2, 512)]
  assert set(shapes[1]['params']) == {f'conv_{i}' for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}
  name, variables = backbones.weight_converter('vgg16')(
      {'features.' + k: v.numpy() for k, v in T.torchvision_vgg16_features().state_dict().items()})
  assert name == 'vgg16' and sum(np.size(a) for a in jax.tree.leaves(variables)) == 14_714_688
