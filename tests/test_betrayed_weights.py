"""Betrayed by Attention: the frozen encoder and the official-checkpoint converter.

The conversion and parity tests use a full-size random DINO ViT-S/8 (tests/torch_vit.py, official names) and
the released spatio-temporal block (tests/torch_betrayed.py); the file-reading tests use a tiny ViT (width 32,
2 blocks) so that the saved files stay small. The ViT's 'keys' / 'cls' outputs are tested against torch on
tiny models in tests/test_vit.py; here the wrapper runs the full ViT-S/8 at two small sizes.
"""

import argparse
import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors import numpy as safetensors_numpy

import torch_betrayed
import torch_vit
from gsa_jax import errors
from gsa_jax.backbones import vit
from gsa_jax.models.betrayed import encoder as encoder_lib
from gsa_jax.models.betrayed import network
from gsa_jax.models.betrayed import weights

TINY = vit.ViTConfig('tiny_dino_p8', 32, 2, 4, 8, pos_grid=4, layer_scale=False)

# Small programs: XLA's backend optimisation costs more compile time than it saves at run time here.
fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _torch_vit(cfg: vit.ViTConfig, seed: int) -> torch_vit.TorchViT:
  model = torch_vit.TorchViT(width=cfg.width, depth=cfg.depth, heads=cfg.num_heads, patch=cfg.patch_size,
                             pos_grid=cfg.pos_grid, layer_scale=cfg.layer_scale)
  return torch_vit.randomize_(model, seed).eval()


def _torch_block(dim: int, seed: int) -> torch_betrayed.TorchSpatioTemporal:
  return torch_vit.randomize_(torch_betrayed.TorchSpatioTemporal(dim=dim, heads=8), seed).eval()


def _numpy(module: torch.nn.Module, prefix: str = '') -> dict[str, np.ndarray]:
  return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _official(backbone: torch.nn.Module, block: torch.nn.Module) -> dict[str, np.ndarray]:
  """The released AttEncoder's state dict: encoder.* then temporal_transformer.0.*."""
  return _numpy(backbone, 'encoder.') | _numpy(block)


@pytest.fixture(scope='module')
def vits8() -> torch_vit.TorchViT:
  return _torch_vit(vit.get_config('dino_vits8'), seed=1)


@pytest.fixture(scope='module')
def block() -> torch_betrayed.TorchSpatioTemporal:
  return _torch_block(384, seed=2)


@pytest.fixture(scope='module')
def official(vits8, block) -> dict[str, np.ndarray]:
  return _official(vits8, block)


@pytest.fixture(scope='module')
def params(official) -> dict:
  return weights.from_official(official)


def _max_relative(ours, ref) -> float:
  ours, ref = np.asarray(ours), np.asarray(ref)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


# ------------------------------------------------------------------------------------------------
# Conversion: layout, counts, round trip.
# ------------------------------------------------------------------------------------------------

def test_round_trip_is_exact_and_counts_match_the_release(official, params):
  assert weights.classify(official) == weights.BETRAYED
  assert set(params) == {'encoder', 'block'} and set(params['encoder']) == {'vit'}
  assert set(params['block']) == {'norm1', 'qkv', 'proj', 'norm2', 'fc1', 'fc2'}
  assert params['block']['qkv'] == {'kernel': params['block']['qkv']['kernel']}  # no bias
  assert params['block']['qkv']['kernel'].shape == (384, 1152)
  assert weights.count_params(params['encoder']) == 21_670_272   # ViT-S/8, final norm included
  assert weights.count_params(params['block']) == 1_773_312
  assert {k: tuple(v.shape) for k, v in official.items()} == weights.official_shapes('dino_vits8')
  back = weights.to_official(params)
  assert list(back) == list(official)            # the released names, in the released order
  for key, value in official.items():
    assert back[key].dtype == np.float32 and np.array_equal(back[key], value), key
  # A DDP-wrapped model's state dict ('module.' prefix) converts to the same params.
  ddp = weights.from_official({f'module.{k}': v for k, v in official.items()})
  assert jax.tree.all(jax.tree.map(np.array_equal, ddp, params))


def test_dino_backbone_gives_the_encoder_only(vits8, params):
  backbone = _numpy(vits8)                     # dino_deitsmall8_pretrain.pth's names
  assert weights.classify(backbone) == weights.DINO_BACKBONE
  converted = weights.from_official(backbone)
  assert set(converted) == {'encoder'}
  assert jax.tree.all(jax.tree.map(np.array_equal, converted['encoder'], params['encoder']))
  back = weights.to_official(converted, kind=weights.DINO_BACKBONE)
  assert list(back) == list(backbone) and all(np.array_equal(back[k], v) for k, v in backbone.items())
  # The teacher entry of a DINO training checkpoint, prefix not stripped, reads the same.
  teacher = weights.from_official({f'backbone.{k}': v for k, v in backbone.items()})
  assert jax.tree.all(jax.tree.map(np.array_equal, teacher['encoder'], params['encoder']))


def test_mismatches_are_listed_in_one_error():
  state = _official(_torch_vit(TINY, 0), _torch_block(TINY.width, 0))
  del state['encoder.norm.weight'], state['temporal_transformer.0.mlp.fc2.bias']
  state['temporal_transformer.0.attn.qkv.weight'] = np.zeros((96, 31), np.float32)
  state['temporal_transformer.1.norm1.weight'] = np.zeros(32, np.float32)
  state['encoder.head.weight'] = np.zeros((4, 32), np.float32)
  with pytest.raises(weights.BetrayedWeightsError) as info:
    weights.from_official(state, TINY, source='ba.pth')
  message = str(info.value)
  assert message.startswith('ba.pth does not match Betrayed by Attention with the tiny_dino_p8 encoder (5 problems)')
  for line in ('missing key encoder.norm.weight (expected shape (32,))',
               'missing key temporal_transformer.0.mlp.fc2.bias (expected shape (32,))',
               'wrong shape temporal_transformer.0.attn.qkv.weight: checkpoint (96, 31), expected (96, 32)',
               'unexpected key temporal_transformer.1.norm1.weight (shape (32,)) (only one spatio-temporal block',
               'unexpected key encoder.head.weight (shape (4, 32))'):
    assert line in message, line


def test_wrong_variant_names_the_checkpoints_variant(official):
  with pytest.raises(weights.BetrayedWeightsError, match=r"(?s)dino_vits16 encoder.*wrong shape "
                                                         r"encoder\.patch_embed\.proj\.weight.*"
                                                         r"shapes of 'dino_vits8'"):
    weights.from_official(official, 'dino_vits16')
  with pytest.raises(errors.ConfigError, match="Unknown Betrayed-by-Attention encoder variant 'vit_small'"):
    weights.from_official(official, 'vit_small')
  with pytest.raises(weights.BetrayedWeightsError, match='CPU stand-in'):
    weights.from_official(official, encoder_lib.PATCH_PROJECTION)


# ------------------------------------------------------------------------------------------------
# Parity with the official modules.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [(64, 96), (40, 56)])
def test_encoder_matches_official_vit_s8(vits8, params, size):
  images = np.random.default_rng(size[0]).normal(size=(2, *size, 3)).astype(np.float32)
  keys, cls = fast_jit(encoder_lib.Encoder('dino_vits8').apply)({'params': params['encoder']}, images)
  with torch.inference_mode():
    ref = vits8(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
  n = (size[0] // 8) * (size[1] // 8)
  assert keys.shape == (2, n, 384) and cls.shape == (2, 384)
  assert keys.dtype == cls.dtype == jnp.float32
  assert _max_relative(keys, ref['keys']) < 1e-5
  assert _max_relative(cls, ref['cls']) < 1e-5
  # The CLS is the last block's output before the final norm, which is far from it.
  assert _max_relative(cls, ref['normed'][:, 0]) > 0.1


def test_encoder_is_frozen():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 24, 3)), jnp.float32)
  for variant in (TINY, encoder_lib.PATCH_PROJECTION):
    model = encoder_lib.Encoder(variant, projection_dim=16)
    variables = fast_jit(model.init)(jax.random.key(0), images)
    loss = lambda v, x: sum(jnp.sum(o ** 2) for o in model.apply(v, x))
    grads = fast_jit(jax.grad(loss, argnums=(0, 1)))(variables, images)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads)), variant


def test_patch_projection_stand_in():
  model = encoder_lib.Encoder(encoder_lib.PATCH_PROJECTION, projection_patch=4, projection_dim=16)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 24, 3)), jnp.float32)
  variables = fast_jit(model.init)(jax.random.key(0), images)
  assert jax.tree.map(jnp.shape, variables) == {'params': {'projection': {'kernel': (4, 4, 3, 16), 'bias': (16,)}}}
  keys, cls = fast_jit(model.apply)(variables, images)
  assert keys.shape == (2, 24, 16) and cls.shape == (2, 16)
  np.testing.assert_allclose(cls, keys.mean(axis=1), rtol=1e-6, atol=1e-6)
  # Token (1, 2) of image 0 is the projection of pixels [4:8, 8:12].
  patch = images[0, 4:8, 8:12].reshape(-1)
  kernel = variables['params']['projection']['kernel'].reshape(-1, 16)
  np.testing.assert_allclose(keys[0, 1 * 6 + 2], patch @ kernel + variables['params']['projection']['bias'],
                             rtol=1e-5, atol=1e-5)
  assert encoder_lib.feature_dim(encoder_lib.PATCH_PROJECTION, 16) == 16
  assert encoder_lib.feature_dim('dinov2_vitb14') == 768
  with pytest.raises(weights.BetrayedWeightsError, match='no official counterpart'):
    weights.to_official({'encoder': variables['params']})


def test_converted_block_matches_the_released_block(block, params):
  rng = np.random.default_rng(0)
  keys = rng.normal(size=(2, 3, 12, 384)).astype(np.float32)
  cls = rng.normal(size=(2, 3, 384)).astype(np.float32)
  apply = fast_jit(functools.partial(network.SpatioTemporalBlock().apply, train=False))
  tokens, attention = apply({'params': params['block']}, keys, cls)
  with torch.inference_mode():
    ref_tokens, ref_attention = block(torch.from_numpy(keys), torch.from_numpy(cls))
    # One released Block on its own: (x, per-head attention) for the [CLS, keys] sequence.
    x = torch.cat([torch.from_numpy(cls)[:, :, None], torch.from_numpy(keys)], dim=2).reshape(2, 39, 384)
    ref_x, ref_heads = block.temporal_transformer[0](x)
    ref_q, ref_k = torch_betrayed.torch_query_keys(block.temporal_transformer[0], torch.from_numpy(keys[0]))
  assert tokens.shape == (2, 3, 12, 384) and attention.shape == (2, 36, 36)
  assert _max_relative(tokens, ref_tokens) < 1e-5
  assert _max_relative(attention, ref_attention) < 1e-5
  np.testing.assert_allclose(tokens, ref_x.reshape(2, 3, 13, 384)[:, :, 1:], rtol=1e-5, atol=1e-5)
  mean = ref_heads.mean(dim=1).reshape(2, 3, 13, 3, 13)[:, :, 1:, :, 1:].reshape(2, 36, 36)
  np.testing.assert_allclose(attention, mean, rtol=1e-5, atol=1e-6)
  query_keys = fast_jit(functools.partial(network.SpatioTemporalBlock().apply,
                                           method=network.SpatioTemporalBlock.query_keys))
  q, k = query_keys({'params': params['block']}, keys[0])
  assert q.shape == (3, 8, 12, 48)
  assert _max_relative(q, ref_q) < 1e-5 and _max_relative(k, ref_k) < 1e-5


# ------------------------------------------------------------------------------------------------
# Files.
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_models():
  return _torch_vit(TINY, 3), _torch_block(TINY.width, 4)


def test_released_checkpoint_file_reads(tiny_models, tmp_path):
  backbone, torch_block = tiny_models
  model = torch.nn.Module()
  model.encoder, model.temporal_transformer = backbone, torch_block.temporal_transformer
  optimizer = torch.optim.AdamW(torch_block.parameters(), lr=1e-5)
  loss = sum((p ** 2).sum() for p in torch_block.parameters())
  loss.backward()
  optimizer.step()
  path = tmp_path / 'checkpoint_1000.pth'
  torch.save({'iteration': 1000, 'model_state_dict': model.state_dict(), 'optimizer_state_dict':
              optimizer.state_dict(), 'loss': loss}, path)
  state, info = weights.read_official_info(str(path))
  expected = _numpy(model)
  assert list(state) == list(expected) and all(np.array_equal(state[k], v) for k, v in expected.items())
  assert info == {'iteration': 1000, 'loss': pytest.approx(loss.detach().item())}
  params = weights.from_official(weights.read_official(str(path)), TINY)
  # write_official gives the released training script's file, which reads back the same.
  weights.write_official(params, str(tmp_path / 'ours.pth'), iteration=7, loss=0.5)
  again, info = weights.read_official_info(str(tmp_path / 'ours.pth'))
  assert info == {'iteration': 7, 'loss': 0.5}
  assert list(again) == list(expected) and all(np.array_equal(again[k], v) for k, v in expected.items())
  loaded = torch.load(tmp_path / 'ours.pth', weights_only=True)
  model.load_state_dict(loaded['model_state_dict'], strict=True)
  # The same weights as safetensors.
  safetensors_numpy.save_file(expected, str(tmp_path / 'ba.safetensors'))
  assert jax.tree.all(jax.tree.map(np.array_equal, weights.from_official(
      weights.read_official(str(tmp_path / 'ba.safetensors')), TINY), params))
  # The DINO backbone-only file.
  torch.save(backbone.state_dict(), tmp_path / 'dino_backbone.pth')
  assert weights.classify(weights.read_official(str(tmp_path / 'dino_backbone.pth'))) == weights.DINO_BACKBONE


def test_dino_training_checkpoint_is_refused_with_the_recipe(tiny_models, tmp_path):
  backbone = tiny_models[0].state_dict()
  full = {'student': {f'module.backbone.{k}': v for k, v in backbone.items()} | {'module.head.last_layer.weight':
                                                                                     torch.zeros(8, 32)},
          'teacher': {f'backbone.{k}': v for k, v in backbone.items()},
          'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 100,
          'args': argparse.Namespace(arch='vit_small', patch_size=8), 'dino_loss': {'center': torch.zeros(1, 8)}}
  path = tmp_path / 'dino_deitsmall8_full.pth'
  torch.save(full, path)
  with pytest.raises(weights.BetrayedWeightsError) as info:
    weights.read_official(str(path))
  assert isinstance(info.value, errors.UserError)
  message = str(info.value)
  assert message.startswith(f'{path} is the training checkpoint of DINO')
  assert re.search(r'silently loads\s+nothing', message) and 'dino_deitsmall8_pretrain.pth' in message
  # The flattened form is refused the same way.
  with pytest.raises(weights.BetrayedWeightsError, match='training checkpoint of DINO'):
    weights.classify({f'teacher.{k}': v.numpy() for k, v in full['teacher'].items()})
  # The recipe in the message extracts a backbone that converts.
  command = re.search(r'python -c "(.+)"', message)[1]
  subprocess.run([sys.executable, '-c', command], cwd=tmp_path, check=True, timeout=120)
  extracted = weights.read_official(str(tmp_path / 'dino_backbone.pth'))
  assert sorted(extracted) == sorted(backbone)
  assert set(weights.from_official(extracted, TINY)) == {'encoder'}


def test_other_files_name_the_file_and_the_expected_keys(tmp_path):
  path = tmp_path / 'resnet.pth'
  torch.save({'conv1.weight': torch.zeros(4, 3, 3, 3), 'fc.bias': torch.zeros(4)}, path)
  with pytest.raises(weights.BetrayedWeightsError, match=rf'(?s){re.escape(str(path))} is neither.*'
                                                         r'encoder\.cls_token.*temporal_transformer\.0\..*'
                                                         r'dino_deitsmall8_pretrain\.pth.*starts? with: conv1\.weight'):
    weights.read_official(str(path))
  with pytest.raises(weights.BetrayedWeightsError, match='does not exist'):
    weights.read_official(str(tmp_path / 'missing.pth'))


def _touch(path: str) -> None:
  """What the object below would run when unpickled unsafely."""
  with open(path, 'w') as f:
    f.write('ran')


class RunsCodeWhenUnpickled:

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (_touch, (self.marker,))


def test_pickled_object_is_refused_without_running_it(tiny_models, tmp_path):
  marker = str(tmp_path / 'marker')
  path = tmp_path / 'unsafe.pth'
  torch.save({'model_state_dict': tiny_models[1].state_dict(), 'iteration': 1, 'extra': RunsCodeWhenUnpickled(marker)},
             path)
  with pytest.raises(weights.BetrayedWeightsError, match=r'(?s)weights_only=True.*nothing in it was run'):
    weights.read_official(str(path))
  assert not os.path.exists(marker)
  torch.load(path, weights_only=False)  # The object is live: an unsafe load runs it.
  assert os.path.exists(marker)
