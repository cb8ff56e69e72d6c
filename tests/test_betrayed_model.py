"""Betrayed by Attention through the model contract: configs, parameter counts, the optimiser and schedule as
released (against torch), the segmenter's rules (last frame, id limit, nearest resize, normalisation) and the
converter of the released checkpoint end to end."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import betrayed_davis
from configs import betrayed_demo
from configs import defaults
from gsa_jax import config_lib
from gsa_jax import convert
from gsa_jax import errors
from gsa_jax import optim
from gsa_jax import registry
from gsa_jax import summary
from gsa_jax.models.betrayed import cluster
from gsa_jax.models.betrayed import segmenter as segmenter_lib
from gsa_jax.models.betrayed import weights
from tests import torch_betrayed as TB


def _tiny():
  config = betrayed_demo.get_config()
  config.model.update(projection_dim=32, image_size=(32, 48), eval_size=(32, 48), sem_top=8, sem_bottom=40,
                      mot_top=4, mot_bottom=20, key_ratio=2)
  config.data.clip_size = (32, 48)
  return config


def test_summary_of_the_released_config_counts_the_released_parameters():
  text = summary.summary_text(betrayed_davis.get_config())
  assert 'frozen_params: 21670272' in text and 'trained_params: 1773312' in text


def test_configs_are_valid_and_bad_values_are_named():
  for module in (betrayed_davis, betrayed_demo):
    config_lib.validate(module.get_config(), roles=(), training=True)
  config = betrayed_davis.get_config()
  config.model.sem_bottom = 5000
  config.data.clip_half_window = 2
  config.model.cluster_algorithm = 'released'
  with pytest.raises(errors.ConfigError) as e:
    config_lib.validate(config, roles=(), training=True)
  message = str(e.value)
  assert 'model.image_size=(192, 384) gives 24x48 = 1152 tokens' in message
  assert 'data.clip_half_window=2' in message
  config = betrayed_davis.get_config()
  config.model.output = 'foreground'  # a binary model now: instance protocols are refused
  with pytest.raises(errors.ConfigError, match='eval.protocol'):
    config_lib.validate(config, roles=(), training=True)
  config.eval.protocol = 'davis16'
  config_lib.validate(config, roles=(), training=True)
  assert registry.build(config).output_kind == 'binary'


def test_schedule_and_decoupled_decay_equal_torch_adamw_with_the_released_groups():
  t = betrayed_davis.get_config().train
  t.num_train_steps = 600
  tx, schedule = optim.create_optimizer(t, t.num_train_steps)
  ours = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(600)), np.float64)
  np.testing.assert_allclose(ours, TB.cosine_schedule(1e-5, 1e-6, 600), rtol=2e-6)

  block = TB.TorchBlock(16, 4)
  for p in block.parameters():
    p.data.normal_()
  rng = np.random.default_rng(0)
  grads = {n: rng.normal(size=p.shape).astype(np.float32) for n, p in block.named_parameters()}
  params = {n: p.detach().numpy().copy() for n, p in block.named_parameters()}
  opt = torch.optim.AdamW(TB.param_groups(block), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
  for group in opt.param_groups:  # the release sets weight decay 0.1 on groups 0 and 2 every iteration
    group['weight_decay'] = 0.1 if group['weight_decay'] != 0.0 else 0.0
  state = tx.init(params)
  for step in range(3):
    for g in opt.param_groups:
      g['lr'] = float(schedule(step))
    for n, p in block.named_parameters():
      p.grad = torch.tensor(grads[n] * (step + 1))
    opt.step()
    updates, state = tx.update({n: jnp.asarray(g * (step + 1)) for n, g in grads.items()}, state, params)
    params = optax.apply_updates(params, updates)
  for n, p in block.named_parameters():
    np.testing.assert_allclose(np.asarray(params[n]), p.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=n)
  # Biases and norms are not decayed: with a zero gradient they do not move, the matrices shrink.
  t2 = betrayed_davis.get_config().train
  tx2, _ = optim.create_optimizer(t2, 10)
  p0 = {'w': jnp.ones((2, 2)), 'b': jnp.ones((2,))}
  u, _ = tx2.update(jax.tree.map(jnp.zeros_like, p0), tx2.init(p0), p0)
  assert float(jnp.abs(u['b']).max()) == 0.0 and float(u['w'][0, 0]) < 0


def test_keep_largest_and_the_nearest_resize_of_the_released_evaluator():
  labels = np.array([[0, 1, 1, 2], [2, 2, 2, 3]])
  np.testing.assert_array_equal(segmenter_lib.keep_largest(labels, 0), labels + 1)
  np.testing.assert_array_equal(segmenter_lib.keep_largest(labels, 2), [[0, 2, 2, 1], [1, 1, 1, 0]])
  model = registry.build(_tiny())
  seg = model.segmenter(jax.jit(model.init)(jax.random.key(0)), batch_size=2)
  ids = np.arange(4 * 6, dtype=np.int32).reshape(4, 6)
  ours = seg.frame_ids({'ids': ids}, 30, 17)
  theirs = torch.nn.functional.interpolate(torch.tensor(ids, dtype=torch.float32)[None, None], size=(30, 17),
                                           mode='nearest')[0, 0].numpy()
  np.testing.assert_array_equal(ours, theirs)


def test_segmenter_last_frame_rules_and_normalisation():
  config = _tiny()
  config.model.log_eps = 1e-12
  model = registry.build(config)
  variables = jax.jit(model.init)(jax.random.key(0))
  frames = np.random.default_rng(0).normal(size=(6, 32, 48, 3)).astype(np.float32)
  seg = model.segmenter(variables, batch_size=4)
  assert seg.input_hw == (32, 48) and seg.context_indices(6) == list(range(6))
  ctx = seg.encode({'rgb': frames})
  out = seg.segment({}, np.arange(4, 8), ctx)['ids']
  assert out.shape == (4, 8, 12) and out[:2].min() >= 1 and not out[2:].any()  # frames 6, 7: padding

  config.model.last_frame = 'copy'
  seg_copy = registry.build(config).segmenter(variables, batch_size=4)
  assert seg_copy.context_indices(6) == list(range(5))
  ctx_copy = seg_copy.encode({'rgb': frames[:5]})
  out_copy = seg_copy.segment({}, np.arange(4, 8), ctx_copy)['ids']
  np.testing.assert_array_equal(out_copy[1], out_copy[0])  # frame 5 copies frame 4
  assert not out_copy[2:].any()

  # 'kinetics' re-normalises the frames before the encoder: the keys differ from 'imagenet'.
  q_k, _ = seg._keys_fn(seg.variables, jnp.asarray(frames[:2]))
  config.model.eval_normalisation = 'imagenet'
  seg_in = registry.build(config).segmenter(variables, batch_size=4)
  q_i, _ = seg_in._keys_fn(seg_in.variables, jnp.asarray(frames[:2]))
  assert float(jnp.abs(q_k - q_i).max()) > 1e-3

  with pytest.raises(cluster.ClusteringError, match='model.key_ratio'):
    config.model.key_ratio = 10
    registry.build(config).segmenter(variables, batch_size=4).encode({'rgb': frames})


def test_convert_the_released_checkpoint_and_a_dino_backbone(tmp_path):
  """A released-layout .pth (random full-size weights) -> --mode=convert -> the same tensors in our model."""
  config = defaults.get_config('betrayed')
  model = registry.build(config)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                        jax.eval_shape(model.init, jax.random.key(0))['params'])
  path = str(tmp_path / 'checkpoint_dino-s-8.pth')
  weights.write_official(params, path, iteration=1000, loss=1.5)
  out = str(tmp_path / 'converted')
  convert.convert(path, kind='betrayed', output_dir=out)
  from gsa_jax import checkpoint  # pylint: disable=g-import-not-at-top
  variables, meta = checkpoint.load_variables(out)
  assert meta['model']['name'] == 'betrayed'
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(variables['params'])):
    np.testing.assert_array_equal(a, np.asarray(b))
  np.testing.assert_array_equal(
      model.export_official({'params': params})['temporal_transformer.0.attn.qkv.weight'],
      params['block']['qkv']['kernel'].T)
  # The DINO backbone-only file: the encoder from it, the block at its initialisation.
  backbone = str(tmp_path / 'dino_deitsmall8_pretrain.pth')
  torch.save({k: torch.tensor(v) for k, v in weights.to_official(params, 'dino_backbone').items()}, backbone)
  out2 = str(tmp_path / 'converted_backbone')
  convert.convert(backbone, kind='betrayed', output_dir=out2)
  variables2, _ = checkpoint.load_variables(out2)
  np.testing.assert_array_equal(np.asarray(variables2['params']['encoder']['vit']['pos_embed']),
                                params['encoder']['vit']['pos_embed'])
  assert not np.array_equal(np.asarray(variables2['params']['block']['fc1']['kernel']),
                            params['block']['fc1']['kernel'])
  assert os.path.exists(os.path.join(out2, 'checkpoints'))


def test_init_from_a_converted_backbone_fills_the_frozen_encoder():
  config = defaults.get_config('betrayed')
  model = registry.build(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
  vit = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes['params']['encoder']['vit'])
  out, report = model.transfer(variables, {'params': vit}, {'scope': 'backbone', 'backbone': 'dino_vits8'})
  for a, b in zip(jax.tree.leaves(vit), jax.tree.leaves(out['params']['encoder']['vit'])):
    np.testing.assert_array_equal(a, b)
  assert not np.asarray(out['params']['block']['qkv']['kernel']).any() and 'block (trained)' in report[-1]
  del vit['block_3']
  with pytest.raises(errors.ConfigError, match='missing block_3/'):
    model.transfer(variables, {'params': vit}, {'scope': 'backbone', 'backbone': 'dino_vits8'})
