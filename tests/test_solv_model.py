"""SOLV as a registered model: the whole training forward with a (tiny) frozen DINOv2 against torch, the
contract pieces (frozen encoder, schedule, config checks, counts), the segmenter and the slot tracking.

The training parity runs a 2-block DINOv2-style ViT (width 24, patch 14) on 56x84 frames (4x6 tokens):
the centre frame with every token (the target) and every frame with half its tokens dropped before the
blocks, then SOLV; torch (tests/torch_vit.py + tests/torch_solv.py) on the same weights and kept tokens.
Programs compile at XLA optimisation level 0.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_solv
import torch_vit
from configs import defaults
from gsa_jax import contract
from gsa_jax import errors
from gsa_jax import registry
from gsa_jax import summary
from gsa_jax.backbones import vit
from gsa_jax.backbones import vit_weights
from gsa_jax.models.solv import config as config_lib
from gsa_jax.models.solv import encoder as encoder_lib
from gsa_jax.models.solv import losses
from gsa_jax.models.solv import network
from gsa_jax.models.solv import segmenter as segmenter_lib
from gsa_jax.models.solv import system
from gsa_jax.models.solv import tracking
from gsa_jax.models.solv import weights

fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})
TINY_VIT = vit.ViTConfig('tiny_dinov2', width=24, depth=2, num_heads=2, patch_size=14, pos_grid=37, layer_scale=True)
B, H, W = 2, 56, 84


def tiny_settings(**overrides) -> config_lib.Settings:
  cfg = config_lib.network_config()
  cfg.update(dict(feature_dim=24, token_grid=(H // 14, W // 14), num_slots=5, slot_dim=16, temporal_heads=4,
                  temporal_ffn=32, decoder_hidden=32, dropout=0.0))
  cfg.update(overrides)
  return config_lib.Settings.from_config(cfg)


def tiny_config(**model):
  """A registered SOLV config with the patch-projection encoder (no ViT) at 32x48."""
  config = defaults.get_config('solv')
  config.model.update({**dict(encoder='patch_projection', image_size=(32, 48), projection_patch=8, projection_dim=16,
                              num_slots=4, slot_dim=16, temporal_heads=4, temporal_ffn=32, decoder_hidden=32), **model})
  config.data.clip_size = (32, 48)
  config.train.update(num_train_steps=40, num_epochs=4)
  return config


def test_training_forward_with_a_frozen_vit_matches_torch():
  s = tiny_settings()
  torch.manual_seed(0)
  vit_t = torch_vit.randomize_(torch_vit.TorchViT(width=24, depth=2, heads=2, patch=14, pos_grid=37,
                                                  layer_scale=True), seed=1).eval()
  solv_t = torch_solv.TorchSOLV(input_dim=24, feature_dim=24, slot_dim=16, num_slots=5, grid_hw=s.token_grid, heads=4,
                                ffn=32, decoder_hidden=32, dropout=0.0).train()
  with torch.no_grad():
    solv_t.s_bind.S_s.mul_(10.0)
  n = s.num_tokens
  module = system.SOLVVideo(s, encoder_name=TINY_VIT, kept_tokens=encoder_lib.kept_token_count(n, 0.5))
  vit_state = {k: v.detach().numpy() for k, v in vit_t.state_dict().items()}
  params = {'encoder': {'vit': vit_weights.convert_vit(vit_state, TINY_VIT)[1]['params'],
                        'mask_token': vit_state['mask_token']},
            'solv': weights.from_torch({k: v.detach().numpy() for k, v in solv_t.state_dict().items()}, s)}
  rng = np.random.default_rng(0)
  frames = rng.normal(size=(B, 5, H, W, 3)).astype(np.float32)
  mask = np.array([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]], np.float32)
  token_key = jax.random.key(3)

  def objective(p):
    out, target = module.apply({'params': p}, frames, mask, token_key=token_key, merge_key=None, merge_prob=1.0,
                               method='train_forward')
    return losses.loss_and_metrics(out, target, s)[0], (out, target)

  (loss, (out, target)), grads = fast_jit(jax.value_and_grad(objective, has_aux=True))(params)
  kept = np.array(encoder_lib.sample_kept_tokens(token_key, B * 5, n, n // 2))
  assert kept.shape == (B * 5, n // 2) and np.all(np.diff(np.asarray(kept), axis=1) > 0)
  assert len({tuple(r) for r in np.asarray(kept).tolist()}) > 1  # frames keep different tokens

  images = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)
  with torch.no_grad():
    target_t = vit_t(images[:, 2])['blocks'][-1][:, 1:]
    features_t = vit_t(images.reshape(B * 5, 3, H, W), torch.from_numpy(np.asarray(kept)).long())['blocks'][-1][:, 1:]
  out_t = solv_t(features_t, torch.from_numpy(mask).bool(), torch.from_numpy(np.asarray(kept)).long(),
                 merge_decisions=[True] * B)
  loss_t = torch.nn.functional.mse_loss(out_t['rec'], target_t)
  loss_t.backward()
  np.testing.assert_allclose(np.asarray(target), target_t.numpy(), atol=2e-4)
  np.testing.assert_allclose(float(loss), loss_t.item(), rtol=2e-5)
  np.testing.assert_array_equal(out['num_slots'], out_t['slot_nums'].numpy())
  expected = weights.from_torch({k: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy()
                                 for k, p in solv_t.named_parameters()}, s)
  for path, value in contract.flatten_params(grads['solv']).items():
    ref = contract.flatten_params(expected)[path]
    np.testing.assert_allclose(value, ref, atol=2e-4 * max(1.0, float(np.abs(ref).max())), err_msg=str(path))
  # The frozen encoder gets no gradient at all.
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads['encoder']))


def test_official_counts_and_frozen_encoder():
  config = defaults.get_config('solv')
  text = summary.summary_text(config)
  assert 'frozen_params: 86580480' in text and 'trained_params: 5799521' in text, text[-400:]
  movi = defaults.get_config('solv')
  movi.model.update(num_slots=18, image_size=(336, 336))
  movi.data.clip_size = (336, 336)
  assert 'trained_params: 5763401' in summary.summary_text(movi)
  model = registry.build(config)
  assert not model.is_trainable(('encoder', 'vit', 'block_0', 'qkv', 'kernel'))
  assert model.is_trainable(('solv', 'decoder', 'pos_embed'))


def test_loss_schedule_and_config_checks():
  config = tiny_config()
  model = registry.build(config)
  assert model.output_kind == 'instances' and model.train_input == 'clips'
  # log_epochs: 40 steps over 4 epochs -> 10 steps per epoch; p = ln(e + 1) / ln 4.
  for step, epoch in ((0, 0), (9, 0), (10, 1), (25, 2), (39, 3), (80, 3)):
    np.testing.assert_allclose(float(model.merge_probability(step)), np.log(epoch + 1) / np.log(4), atol=1e-6)
  variables = model.init(jax.random.key(0))
  trainable, frozen = contract.split_trainable(model, variables['params'])
  assert set(frozen) == {'encoder'} and set(trainable) == {'solv'}
  batch = model.example_batch(2)
  batch['frames'] = np.random.default_rng(1).normal(size=batch['frames'].shape).astype(np.float32)
  loss, metrics, _ = fast_jit(lambda v, b: model.loss(v, b, key=jax.random.key(2), step=jnp.asarray(25)))(
      variables, batch)
  assert np.isfinite(float(loss)) and abs(float(metrics['merge_prob']) - np.log(3) / np.log(4)) < 1e-6
  always = registry.build(tiny_config(merge_schedule='always'))
  assert always.merge_probability(0) == 1.0
  assert registry.build(tiny_config(merge_slots=False)).merge_probability(30) == 0.0

  bad = tiny_config()
  bad.data.clip_size = (32, 40)
  bad.model.image_size = (30, 48)
  problems = model.check_config(bad)
  assert problems and 'model.image_size=(30, 48)' in problems[0] and 'multiples of the encoder patch 8' in problems[0]
  bad.model.image_size = (32, 48)
  assert any('data.clip_size=(32, 40) must equal model.image_size' in p for p in model.check_config(bad))
  bad = tiny_config()
  bad.data.clip_half_window = 1
  assert any('data.clip_half_window=1' in p for p in model.check_config(bad))
  bad = tiny_config(encoder='dinov3')
  assert 'model.encoder=' in model.check_config(bad)[0]
  with pytest.raises(errors.ConfigError, match='test-time augmentation'):
    model.segmenter(variables, tta=True)


def test_tracking_rules_on_hand_made_slots():
  e = np.eye(4)
  released, fresh, off = tracking.Tracker('released'), tracking.Tracker('new_tracks'), tracking.Tracker(enabled=False)
  frames = [e[[0, 1, 2]],                       # frame 0: ids 0, 1, 2
            e[[2, 0, 1]] + 0.01,                # permuted: the ids follow the vectors
            e[[2, 0]],                          # one slot disappears
            np.stack([e[0], e[2], e[3], e[0] + 0.5 * e[3]])]  # two new slots: released reuses, new_tracks opens
  # e[3] is orthogonal to both previous slots: the argmax of a tie takes the first one (id 2).
  expected_released = [[0, 1, 2], [2, 0, 1], [2, 0], [0, 2, 2, 0]]
  expected_fresh = [[0, 1, 2], [2, 0, 1], [2, 0], [0, 2, 3, 4]]
  for x, want_r, want_f in zip(frames, expected_released, expected_fresh):
    np.testing.assert_array_equal(released.update(x), want_r)
    np.testing.assert_array_equal(fresh.update(x), want_f)
    np.testing.assert_array_equal(off.update(x), np.arange(len(x)))
  with pytest.raises(ValueError, match='model.tracking'):
    tracking.Tracker('greedy')


def test_segmenter_outputs_and_windows():
  config = tiny_config(sklearn_numbering=False)
  model = registry.build(config)
  variables = jax.tree.map(np.asarray, model.init(jax.random.key(4)))
  rng = np.random.default_rng(5)
  video = rng.normal(size=(7, 32, 48, 3)).astype(np.float32)
  seg = model.segmenter(variables, batch_size=4)
  context = seg.encode({'rgb': video})
  assert context.features.shape == (segmenter_lib.FRAME_BUCKET, 24, 16) and context.num_frames == 7
  first = seg.segment({}, np.arange(4), context)
  second = seg.segment({}, np.arange(4, 8), context)   # frame 7 is padding
  assert first['masks'].shape == (4, 4, 4, 6) and first['ids'].shape == (4, 32, 48)
  assert context.tracker.frames == 7 and np.all(second['track_ids'][3] == 0)
  # Every pixel's id is the track id of the slot with the largest upsampled mask there.
  up = np.asarray(segmenter_lib._resize_soft(jnp.asarray(first['masks']), 32, 48))
  np.testing.assert_array_equal(first['ids'], np.take_along_axis(first['track_ids'][:, :, None],
                                                                  up.argmax(1).reshape(4, 1, -1), 1).reshape(4, 32, 48))
  assert np.all(first['ids'] > 0)
  # The windows equal SOLV on network.eval_inputs of the whole video (all tokens, padded frames masked).
  features = np.asarray(model.module.apply(variables, jnp.asarray(video), method='encode'))
  win = network.eval_inputs(jnp.asarray(features), 2)
  direct = network.SOLV(model.settings).apply({'params': variables['params']['solv']}, **win, train=False)
  np.testing.assert_allclose(np.concatenate([first['masks'], second['masks'][:3]]).reshape(7, 4, -1),
                             np.asarray(direct['masks']), atol=1e-5)
  # ids_at: the released upsampling to another size.
  ids = segmenter_lib.ids_at(first['masks'][0], first['track_ids'][0], 20, 30)
  assert ids.shape == (20, 30) and set(np.unique(ids)) <= set(first['track_ids'][0].tolist())


def test_merged_rows_follow_sklearn_numbering_when_asked():
  """With sklearn_numbering the rows (and so frame 0's ids) are in sklearn's cluster order."""
  config = tiny_config(num_slots=6, merge_threshold=1.0)
  model = registry.build(config)
  variables = jax.tree.map(np.asarray, model.init(jax.random.key(6)))
  seg = model.segmenter(variables, batch_size=2)
  video = np.random.default_rng(7).normal(size=(2, 32, 48, 3)).astype(np.float32)
  out = seg.segment({}, np.arange(2), seg.encode({'rgb': video}))
  plain = registry.build(tiny_config(num_slots=6, merge_threshold=1.0, sklearn_numbering=False)).segmenter(
      variables, batch_size=2)
  out_plain = plain.segment({}, np.arange(2), plain.encode({'rgb': video}))
  np.testing.assert_array_equal(out['num_slots'], out_plain['num_slots'])
  for i in range(2):  # the same soft masks, possibly in another row order
    k = out['num_slots'][i]
    a = out['masks'][i, :k].reshape(k, -1)
    b = out_plain['masks'][i, :k].reshape(k, -1)
    assert sorted(map(tuple, np.round(a, 5))) == sorted(map(tuple, np.round(b, 5)))
