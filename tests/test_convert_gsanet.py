"""Whole-model import of official GSA-Net checkpoints (gsa_jax/convert.py, --kind=gsanet).

1. Round trip: our tiny model's random variables -> `to_official_state_dict` -> a torch .pth shaped like
   the official training checkpoints ({"epoch", "model_state_dict"}, DataParallel `module.` keys) ->
   `convert` -> `checkpoint.load_variables`: the same variables, the same model outputs. Also the stage-1 model.
2. Layout: a few official modules re-created in torch (tests/torch_gsanet.py: MFFM, FAT, Res, Fusion,
   a head) plus transformers' SegformerForImageClassification as the encoder: their state-dict names and
   shapes must be exactly those we emit, and after conversion our Flax modules must give their outputs.
3. Reports: renamed keys, changed shapes, another architecture, a config that does not fit; nothing written.
4. Sizes: the official MiT-B2 models have the parameter counts of the reference notes (§3, §2.12).
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from torch import nn as tnn
import transformers

from gsa_jax import checkpoint
from gsa_jax import convert
from gsa_jax.models.gsanet import config as gsanet_config
from gsa_jax.models.gsanet import network as models
from gsa_jax.models.gsanet import weights as gsanet_weights
from gsa_jax import backbones
from gsa_jax.models.gsanet import decoder as decoder_lib
from gsa_jax.models.gsanet import fat as fat_lib
from gsa_jax.models.gsanet import mffm as mffm_lib
from tests import torch_gsanet as T

torch.set_num_threads(1)

DIM = 16
TINY = dict(kind='video', backbone='mit_b0', dim=DIM, num_slots=2, num_clusters=4, knn_k=2, kmeans_iters=2,
            slot_iters=1)
TINY_SALIENCY = dict(kind='saliency', backbone='mit_b0', dim=DIM)


def _model_config(**fields) -> ml_collections.ConfigDict:
  config = gsanet_config.model_config()
  config.update(fields)
  return config


def _random_variables(model_config, seed: int):
  """Random variables of the model, every leaf distinct (BN statistics and norm scales included)."""
  abstract = gsanet_weights.abstract_variables(model_config)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'var':
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if name == 'kernel' else 1
    scale = 1.0 / np.sqrt(max(fan_in, 1)) if name == 'kernel' else 0.1
    value = rng.normal(0.0, scale, leaf.shape).astype(np.float32)
    return value + 1.0 if name == 'scale' else value

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _save_pth(path, state, *, wrapped: bool):
  tensors = {('module.' if wrapped else '') + k: torch.from_numpy(np.array(v)) for k, v in state.items()}
  torch.save({'epoch': 42, 'model_state_dict': tensors} if wrapped else tensors, path)
  return str(path)


def _assert_same_tree(a, b):
  flat_a = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(a)}
  flat_b = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(b)}
  assert sorted(flat_a) == sorted(flat_b)
  for k in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=k)


@pytest.fixture(scope='module')
def tiny_video():
  variables = _random_variables(_model_config(**TINY), seed=0)
  return variables, gsanet_weights.to_official_state_dict(variables, _model_config(**TINY))


# ------------------------------------------------------------------------------------------------
# 1. Round trips.
# ------------------------------------------------------------------------------------------------

# Official names (reference §2, model_for_video.py) and torch shapes at dim 16, M 4, mit_b0.
_EXPECTED_OFFICIAL = {
    'rgb_encoder.segformer.encoder.block.0.0.attention.self.query.weight': (32, 32),
    'rgb_encoder.segformer.encoder.block.3.1.mlp.dwconv.dwconv.weight': (1024, 1, 3, 3),
    'flow_encoder.segformer.encoder.patch_embeddings.0.proj.weight': (32, 3, 7, 7),
    'rgb_encoder.classifier.weight': (1000, 256),
    'rgb_MFFM1.branch0.0.conv.weight': (DIM, 256, 1, 1),
    'flow_MFFM4.branch3.0.bn.running_var': (DIM,),
    'rgb_MFFM2.in_conv.bias': (DIM,),
    'rgb_SG.sqz.weight': (DIM, DIM, 1, 1),
    'flow_SG.slot_enc.weight': (2, DIM, 1, 1),
    'rgb_SG.FAT.line_conv_att.weight': (1, DIM, 1, 1),
    'rgb_SA.FAT.conva.weight': (DIM, DIM, 1),
    'flow_SA.FAT.ATB.former2.layers.0.0.fn.to_qkv.weight': (192, DIM),
    'rgb_SG.FAT.ATB.L2G.to_out.0.weight': (DIM, DIM),
    'rgb_SG.FAT.convd.1.num_batches_tracked': (),
    'rgb_fusion.weight': (DIM, DIM + 4 + 2, 1, 1),
    'total_fuse3.conv1.3.weight': (2 * DIM, 2 * DIM, 3, 3),
    'total_fuse4.conv2.1.running_mean': (DIM,),
    'fusion1.cat_conv.conv.weight': (DIM, 2 * DIM, 3, 3),
    'fusion3.conv_upsample.bn.weight': (DIM,),
    'linearr8.weight': (1, DIM, 3, 3),
}


def test_video_checkpoint_round_trip(tiny_video, tmp_path):
  variables, state = tiny_video
  for key, shape in _EXPECTED_OFFICIAL.items():
    assert key in state and state[key].shape == shape, (key, state.get(key, np.empty(0)).shape)
  source = _save_pth(tmp_path / 'best_model.pth', state, wrapped=True)

  output = tmp_path / 'converted'
  convert.convert(source, kind='gsanet', output_dir=str(output), config=_model_config(**TINY))
  assert sorted(os.listdir(output)) == ['checkpoints']
  assert sorted(os.listdir(tmp_path)) == ['best_model.pth', 'converted']  # No staging folder left.
  loaded, meta = checkpoint.load_variables(str(output))
  assert {k: meta[k] for k in ('kind', 'scope')} == {'kind': 'gsanet', 'scope': 'model'}
  assert meta['model']['backbone'] == 'mit_b0' and meta['config']['model'] == meta['model']
  assert meta['converted_from'] == source
  assert {k: meta['model'][k] for k in TINY} == TINY
  _assert_same_tree(loaded, variables)

  # The model gives the same outputs with both (same input, same k-means key).
  model = models.build_model(gsanet_config.network_fields(meta['model']))
  rng = np.random.default_rng(1)
  x = {k: jnp.asarray(rng.normal(size=s).astype(np.float32)) for k, s in
       dict(rgb=(1, 64, 64, 3), flow=(1, 64, 64, 3), ref_rgb=(1, 2, 64, 64, 3),
                ref_flow=(1, 2, 64, 64, 3)).items()}
  run = jax.jit(lambda v: model.apply(v, **x, train=False, kmeans_key=jax.random.key(3)))  # One compile.
  want, got = run(variables), run(dict(loaded))
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    assert w.shape == g.shape
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=0)
  assert np.std(np.asarray(want['logits'])) > 1e-3  # Not a degenerate constant output.


def test_video_checkpoint_without_config_uses_the_official_settings(tiny_video, tmp_path):
  _, state = tiny_video
  source = _save_pth(tmp_path / 'bare.pth', state, wrapped=False)  # A bare state dict, no `module.`.
  convert.convert(source, kind='gsanet', output_dir=str(tmp_path / 'out'))
  _, meta = checkpoint.load_variables(str(tmp_path / 'out'))
  official = gsanet_config.model_config().to_dict()
  assert meta['kind'] == 'gsanet'
  # Inferred from the shapes; the rest is the official configuration (knn_k capped at M).
  assert {k: meta['model'][k] for k in ('kind', 'backbone', 'dim', 'num_slots', 'num_clusters', 'knn_k')} == {
      'kind': 'video', 'backbone': 'mit_b0', 'dim': DIM, 'num_slots': 2, 'num_clusters': 4, 'knn_k': 4}
  for k in ('slot_iters', 'kmeans_iters', 'fat_dropout', 'prototype_reduce', 'slot_pool', 'knn_pool'):
    assert meta['model'][k] == official[k], k


def test_pretrain_checkpoint_round_trip(tmp_path):
  config = _model_config(**TINY_SALIENCY)
  variables = _random_variables(config, seed=1)
  # transformers 5.x encoder names this time; stage-1 MFFM branches are not wrapped in Sequential.
  state = gsanet_weights.to_official_state_dict(variables, config, mit_names='v5')
  assert state['rgb_MFFM3.branch2.conv.weight'].shape == (DIM, DIM, 3, 3)
  assert 'rgb_encoder.segformer.stages.0.blocks.1.attention.q_proj.weight' in state
  assert not any(k.startswith(('flow_', 'rgb_SG', 'total_fuse')) or '.branch0.0.' in k for k in state)
  source = _save_pth(tmp_path / 'pretrain.pth', state, wrapped=True)
  convert.convert(source, kind='gsanet', output_dir=str(tmp_path / 'out'))
  loaded, meta = checkpoint.load_variables(str(tmp_path / 'out'))
  assert (meta['kind'], meta['scope'], meta['model']['backbone']) == ('gsanet', 'model', 'mit_b0')
  assert meta['model']['kind'] == 'saliency' and meta['model']['dim'] == DIM
  _assert_same_tree(loaded, variables)


# ------------------------------------------------------------------------------------------------
# 2. Layout against torch modules written from the reference notes (§2.2, §2.5, §2.8, §2.9).
# ------------------------------------------------------------------------------------------------

def _randomise(module: tnn.Module, seed: int) -> tnn.Module:
  """Random weights, BN statistics and norm affines (tests/torch_gsanet.py); eval mode."""
  return T.randomise(module, seed).eval()


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _nhwc(t):
  return np.moveaxis(t.detach().numpy(), 1, -1)


def test_official_layout_against_torch_modules(tiny_video, tmp_path):
  _, state = tiny_video
  state = dict(state)
  hf_config = transformers.SegformerConfig(num_labels=1000)  # mit-b0, ImageNet classifier
  encoder = _randomise(transformers.SegformerForImageClassification(hf_config), 10)
  torch_modules = {
      'rgb_encoder.': encoder,
      'rgb_MFFM2.': _randomise(T.TMFFM(160, DIM), 11),
      'rgb_SG.FAT.': _randomise(T.TFAT(DIM), 12),
      'total_fuse1.': _randomise(T.TRes(2 * DIM, DIM), 13),
      'fusion2.': _randomise(T.TFusion(DIM), 14),
      'linearr5.': _randomise(tnn.Conv2d(DIM, 1, 3, 1, 1), 15),
  }
  for prefix, module in torch_modules.items():
    theirs = {prefix + k: v for k, v in module.state_dict().items()}
    ours = {k: v for k, v in state.items() if k.startswith(prefix)}
    for k in ours:
      state.pop(k)
    if prefix == 'rgb_encoder.':  # transformers 5.x names here; ours default to the official 4.x ones.
      ours = gsanet_weights.to_official_state_dict(tiny_video[0], _model_config(**TINY), mit_names='v5')
      ours = {k: v for k, v in ours.items() if k.startswith(prefix)}
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}, prefix
    state.update({k: v.numpy() for k, v in theirs.items()})

  source = _save_pth(tmp_path / 'mixed.pth', state, wrapped=True)
  convert.convert(source, kind='gsanet', output_dir=str(tmp_path / 'out'), config=_model_config(**TINY))
  variables, _ = checkpoint.load_variables(str(tmp_path / 'out'))
  params, stats = variables['params'], variables['batch_stats']
  rng = np.random.default_rng(5)
  errors = {}

  with torch.no_grad():
    x = rng.normal(size=(1, 64, 64, 3)).astype(np.float32)
    want = encoder(pixel_values=_nchw(x), output_hidden_states=True).hidden_states
    got = backbones.build_backbone('mit_b0').apply({'params': params['rgb_encoder']}, jnp.asarray(x), train=False)
    errors['encoder'] = max(np.abs(np.asarray(g) - _nhwc(w)).max() for g, w in zip(got, want))

    x = rng.normal(size=(1, 24, 24, 160)).astype(np.float32)
    want = _nhwc(torch_modules['rgb_MFFM2.'](_nchw(x)))
    got = mffm_lib.MFFM(DIM).apply({'params': params['rgb_mffm2'], 'batch_stats': stats['rgb_mffm2']},
                                   jnp.asarray(x), train=False)
    errors['mffm'] = np.abs(np.asarray(got) - want).max()

    tokens = rng.normal(size=(2, 5, DIM)).astype(np.float32)        # [b n c]
    groups = rng.normal(size=(2, 3, 4, DIM)).astype(np.float32)     # [b g k c]
    want = torch_modules['rgb_SG.FAT.'](torch.from_numpy(tokens).transpose(1, 2),
                                        torch.from_numpy(groups).permute(0, 3, 1, 2)).transpose(1, 2).numpy()
    got = fat_lib.FAT().apply({'params': params['rgb_slots']['generator']['fat']}, jnp.asarray(tokens),
                              jnp.asarray(groups), train=False)
    errors['fat'] = np.abs(np.asarray(got) - want).max()

    a, b = (rng.normal(size=(1, 8, 8, DIM)).astype(np.float32) for _ in range(2))
    want = _nhwc(torch_modules['total_fuse1.'](_nchw(np.concatenate([a, b], -1))))
    got = decoder_lib.Res(DIM).apply({'params': params['fuse1'], 'batch_stats': stats['fuse1']},
                                     jnp.asarray(a), jnp.asarray(b), train=False)
    errors['res'] = np.abs(np.asarray(got) - want).max()

    want = _nhwc(torch_modules['fusion2.'](_nchw(a), _nchw(b)))
    got = decoder_lib.Fusion(DIM).apply({'params': params['decoder']['fusion2'],
                                         'batch_stats': stats['decoder']['fusion2']},
                                        jnp.asarray(a), jnp.asarray(b), train=False)
    errors['fusion'] = np.abs(np.asarray(got) - want).max()

    want = _nhwc(torch_modules['linearr5.'](_nchw(a)))
    got = mffm_lib.conv(1, 3).apply({'params': params['decoder']['head1']}, jnp.asarray(a))
    errors['head'] = np.abs(np.asarray(got) - want).max()

  print('max abs differences:', {k: float(v) for k, v in errors.items()})
  assert all(v < 1e-4 for v in errors.values()), errors


# ------------------------------------------------------------------------------------------------
# 3. Reports.
# ------------------------------------------------------------------------------------------------

def test_renamed_and_reshaped_keys_are_reported_and_nothing_is_written(tiny_video, tmp_path):
  _, state = tiny_video
  state = dict(state)
  state['rgb_SG.squeeze.weight'] = state.pop('rgb_SG.sqz.weight')
  state['flow_MFFM3.branch1.0.conv.weight'] = np.zeros((DIM, DIM, 1, 1), np.float32)
  state['rgb_encoder.segformer.encoder.block.1.0.attention.self.query.weight'] = np.zeros((64, 32), np.float32)
  source = _save_pth(tmp_path / 'bad.pth', state, wrapped=True)
  output = tmp_path / 'out'
  with pytest.raises(ValueError) as info:
    convert.convert(source, kind='gsanet', output_dir=str(output), config=_model_config(**TINY))
  message = str(info.value)
  assert '(4 problems)' in message
  assert f'missing key rgb_SG.sqz.weight: expected shape ({DIM}, {DIM}, 1, 1)' in message
  assert f'unexpected key rgb_SG.squeeze.weight: shape ({DIM}, {DIM}, 1, 1)' in message
  assert (f'wrong shape flow_MFFM3.branch1.0.conv.weight: checkpoint ({DIM}, {DIM}, 1, 1), '
          f'expected ({DIM}, {DIM}, 3, 3)') in message
  assert ('wrong shape rgb_encoder.stages.1.blocks.0.attention.q_proj.weight: checkpoint (64, 32), '
          'expected (64, 64)') in message
  assert not output.exists()
  assert sorted(os.listdir(tmp_path)) == ['bad.pth']


def test_other_architectures_and_configs_are_refused(tiny_video, tmp_path):
  _, state = tiny_video
  # A backbone checkpoint is not a model.
  backbone = {k[len('rgb_encoder.'):]: v for k, v in state.items() if k.startswith('rgb_encoder.')}
  with pytest.raises(ValueError, match='not a GSA-Net model.*--kind=mit'):
    convert.convert(_save_pth(tmp_path / 'mit.pth', backbone, wrapped=False), kind='gsanet',
                    output_dir=str(tmp_path / 'a'))
  # Stage-1 (un-wrapped) MFFM branches in a video checkpoint: every branch key is reported.
  unwrapped = {k.replace('.branch0.0.', '.branch0.'): v for k, v in state.items()}
  with pytest.raises(ValueError) as info:
    convert.convert(_save_pth(tmp_path / 'mixed.pth', unwrapped, wrapped=True), kind='gsanet',
                    output_dir=str(tmp_path / 'b'), config=_model_config(**TINY))
  assert 'missing key rgb_MFFM1.branch0.0.conv.weight' in str(info.value)
  assert 'unexpected key flow_MFFM4.branch0.bn.running_mean' in str(info.value)
  # A config that does not fit the checkpoint.
  source = _save_pth(tmp_path / 'ok.pth', state, wrapped=True)
  with pytest.raises(ValueError, match=r'dim: checkpoint 16, config 128'):
    convert.convert(source, kind='gsanet', output_dir=str(tmp_path / 'c'),
                    config=_model_config(**dict(TINY, dim=128)))
  with pytest.raises(ValueError, match='use_fat=False'):
    convert.convert(source, kind='gsanet', output_dir=str(tmp_path / 'd'),
                    config=_model_config(**dict(TINY, use_fat=False)))
  assert sorted(os.listdir(tmp_path)) == ['mit.pth', 'mixed.pth', 'ok.pth']


# ------------------------------------------------------------------------------------------------
# 4. Official sizes.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind,keys,params', [
    ('saliency', 514, 28_078_764),   # reference §2.12 and §5.2 (514 keys incl. num_batches_tracked)
    ('video', None, 62_463_832),     # reference §3, with the classifiers and the unused modules
])
def test_official_mit_b2_sizes(kind, keys, params):
  config = _model_config(kind=kind)  # configs/defaults.py = the official model
  abstract = gsanet_weights.abstract_variables(config)
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), abstract)
  state = gsanet_weights.to_official_state_dict(zeros, config)
  if keys is not None:
    assert len(state) == keys
  counted = sum(v.size for k, v in state.items() if not k.endswith(('running_mean', 'running_var',
                                                                     'num_batches_tracked')))
  assert counted == params
