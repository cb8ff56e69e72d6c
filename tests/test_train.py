"""The trainer end to end: the real GSANet on tiny synthetic videos, config errors, NaN, init transfer."""

import json
import os

import jax
import numpy as np
import pytest

import trainer_testlib as tl
from gsa_jax import checkpoint as ckpt_lib
from gsa_jax import evaluate
from gsa_jax import train


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic'))
  tl.ensure_synthetic(root)
  return root


def test_real_model_trains_and_evaluation_is_deterministic(synthetic_root, tmp_path):
  """The real GSANet (tiny_cnn, dim 16): the loss goes down; two evaluations give identical numbers."""
  config = tl.tiny_config(synthetic_root, steps=8, batch=4, dim=16)
  config.model.num_clusters = 8
  config.model.knn_k = 4
  config.train.learning_rate = 3e-3
  config.train.end_learning_rate = 1e-3
  config.data.augment = False
  config.data.val = 'synthetic'  # Validation at the last step (best-checkpoint bookkeeping).
  out = train.train_and_evaluate(config, str(tmp_path))
  losses = out['loss_history']
  assert len(losses) == 8 and all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
  assert out['val'] is not None and 0.0 <= out['val']['G'] <= 1.0
  first = evaluate.evaluate_checkpoint(config, str(tmp_path))
  with open(tmp_path / 'eval' / 'test' / 'results.json') as f:
    saved = json.load(f)
  second = evaluate.evaluate_checkpoint(config, str(tmp_path))
  for key in ('J_mean', 'F_mean', 'G'):
    assert first[key] == second[key] == saved[key]
  assert {s: e['J_per_frame'] for s, e in first['sequences'].items()} == \
         {s: e['J_per_frame'] for s, e in second['sequences'].items()}
  assert saved['checkpoint'].endswith('/8') and saved['frames_per_second'] > 0
  masks = os.path.join(tmp_path, 'eval', 'test', 'masks')
  videos = sorted(os.listdir(masks))
  assert len(videos) == 2
  from PIL import Image
  first_mask = np.asarray(Image.open(os.path.join(masks, videos[0], sorted(os.listdir(os.path.join(masks, videos[0])))[0])))
  assert set(np.unique(first_mask)) <= {0, 255}
  assert os.listdir(tmp_path / 'eval' / 'test' / 'overlays')
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(tmp_path))


def _error(config, workdir='/tmp/unused-workdir'):
  with pytest.raises((ValueError, FileNotFoundError)) as info:
    train.validate_config(config)
  return str(info.value)


def test_config_errors_list_what_is_valid(synthetic_root):
  config = tl.tiny_config(synthetic_root)
  config.unlock()
  config.train.bogus_key = 1
  config.train.learning_rate = -1.0
  config.model.kind = 'image'
  config.data.train = 'davis16'
  config.data.train_root = '/no/such/folder'
  message = _error(config)
  assert "unknown config key 'train.bogus_key'" in message and 'learning_rate' in message
  assert 'train.learning_rate=-1.0; must be > 0' in message
  assert "model.kind='image'; valid: ('video', 'saliency')" in message
  assert '/no/such/folder' in message
  config = tl.tiny_config(synthetic_root)
  config.train.loss = 'dice'
  assert "valid: ('official', 'f3net')" in _error(config)


def test_num_refs_larger_than_video_errors(synthetic_root, tmp_path):
  tl.use_tiny_model()
  try:
    config = tl.tiny_config(synthetic_root)
    config.data.val = 'synthetic'
    config.data.val_root = synthetic_root
    config.data.num_refs = 9  # The synthetic videos have 5 frames.
    model = train.build_model(config.model)
    variables = train.init_variables(model, config)
    with pytest.raises(ValueError, match=r'num_refs \(N_R\)=9 is larger than video .* \(5 frames\)'):
      evaluate.evaluate_model(model, variables, config, split='val')
  finally:
    import importlib
    importlib.reload(train)


def test_nan_stops_and_keeps_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
  tl.use_tiny_model()
  from input_pipeline import pipeline
  real = pipeline.create_train_iterator

  def poisoned(*args, start_step=0, **kwargs):
    for step, batch in enumerate(real(*args, start_step=start_step, **kwargs), start=start_step):
      if step == 4:  # The 5th step sees a NaN image.
        batch = dict(batch, rgb=np.full_like(batch['rgb'], np.nan))
      yield batch

  monkeypatch.setattr(pipeline, 'create_train_iterator', poisoned)
  try:
    config = tl.tiny_config(synthetic_root, steps=8)
    with pytest.raises(train.TrainingDivergedError, match=r'at step 5.*last good checkpoint is .*checkpoints/4'):
      train.train_and_evaluate(config, str(tmp_path))
    manager = ckpt_lib.create_manager(ckpt_lib.checkpoint_directory(str(tmp_path)), read_only=True)
    assert manager.latest_step() == 4
    variables, meta = ckpt_lib.load_variables(str(tmp_path))
    assert meta['step'] == 4
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
  finally:
    import importlib
    importlib.reload(train)


def test_mismatched_checkpoint_in_workdir_errors(synthetic_root, tmp_path):
  tl.use_tiny_model()
  try:
    config = tl.tiny_config(synthetic_root, steps=2, dim=8)
    train.train_and_evaluate(config, str(tmp_path))
    other = tl.tiny_config(synthetic_root, steps=4, dim=12)
    with pytest.raises(ckpt_lib.CheckpointError, match=r'holds a different model \(.*dim=8.*\) from the one configured '
                                                       r'\(.*dim=12.*\)[\s\S]*shape'):
      train.train_and_evaluate(other, str(tmp_path))
  finally:
    import importlib
    importlib.reload(train)


def _tree(*paths_and_shapes):
  out = {}
  for path, shape in paths_and_shapes:
    node = out
    parts = path.split('/')
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = np.full(shape, 0.0, np.float32)
  return out


def test_stage1_to_stage2_transfer_copies_rgb_into_flow_and_reports():
  stage1 = {'params': _tree(('rgb_encoder/conv/kernel', (3, 3, 3, 4)), ('rgb_mffm1/in_conv/kernel', (1, 1, 4, 4)),
                            ('rgb_mffm1/branch0/conv/kernel', (1, 1, 4, 4)), ('decoder/head/kernel', (4, 1))),
            'batch_stats': _tree(('rgb_mffm1/branch0/bn/mean', (4,)))}
  stage1 = jax.tree.map(lambda x: x + 1.0, stage1)
  target = {'params': _tree(('rgb_encoder/conv/kernel', (3, 3, 3, 4)), ('flow_encoder/conv/kernel', (3, 3, 3, 4)),
                            ('rgb_mffm1/in_conv/kernel', (1, 1, 4, 4)), ('flow_mffm1/in_conv/kernel', (1, 1, 4, 4)),
                            ('rgb_mffm1/branch0/conv/kernel', (1, 1, 4, 4)),
                            ('flow_mffm1/branch0/conv/kernel', (1, 1, 4, 4)), ('decoder/head/kernel', (4, 2)),
                            ('rgb_slots/w', (2,))),
            'batch_stats': _tree(('rgb_mffm1/branch0/bn/mean', (4,)), ('flow_mffm1/branch0/bn/mean', (4,)))}
  new, report = ckpt_lib.transfer_variables(target, stage1, scope='model', transfer_mffm_branches=True)
  p = new['params']
  for name in ('rgb_encoder', 'flow_encoder'):
    assert (p[name]['conv']['kernel'] == 1).all()
  assert (p['flow_mffm1']['branch0']['conv']['kernel'] == 1).all()
  assert (new['batch_stats']['flow_mffm1']['branch0']['bn']['mean'] == 1).all()
  assert (p['decoder']['head']['kernel'] == 0).all()  # Shape mismatch: skipped.
  text = '\n'.join(report)
  assert 'transferred rgb_encoder -> flow_encoder, rgb_encoder' in text
  assert 'skipped params/decoder/head/kernel: shape mismatch' in text
  assert 'left at their initial values: decoder, rgb_slots' in text

  official, report = ckpt_lib.transfer_variables(target, stage1, scope='model', transfer_mffm_branches=False)
  p = official['params']
  assert (p['rgb_mffm1']['branch0']['conv']['kernel'] == 0).all()
  assert (p['flow_mffm1']['branch0']['conv']['kernel'] == 0).all()
  assert (p['flow_mffm1']['in_conv']['kernel'] == 1).all()
  assert 'skipped rgb_mffm1/branch0: MFFM branch dropped' in '\n'.join(report)

  backbone = _tree(('conv/kernel', (3, 3, 3, 4)))
  new, report = ckpt_lib.transfer_variables(target, {'params': jax.tree.map(lambda x: x + 2, backbone)},
                                            scope='backbone')
  assert (new['params']['rgb_encoder']['conv']['kernel'] == 2).all()
  assert (new['params']['flow_encoder']['conv']['kernel'] == 2).all()
  assert (new['params']['rgb_mffm1']['in_conv']['kernel'] == 0).all()


def test_init_from_workdir(synthetic_root, tmp_path):
  """train.init_from = another workdir: its best weights are loaded and the transfer is reported."""
  tl.use_tiny_model()
  try:
    first = train.train_and_evaluate(tl.tiny_config(synthetic_root, steps=2), str(tmp_path / 'a'))
    config = tl.tiny_config(synthetic_root, steps=1)
    config.train.init_from = str(tmp_path / 'a')
    config.train.learning_rate = 1e-12
    config.train.end_learning_rate = 0.0
    second = train.train_and_evaluate(config, str(tmp_path / 'b'))
    np.testing.assert_allclose(second['params']['decoder']['kernel'], first['params']['decoder']['kernel'], atol=1e-6)
    with open(tmp_path / 'b' / 'init_from.txt') as f:
      text = f.read()
    assert 'transferred rgb_encoder -> rgb_encoder' in text and 'checkpoints/2' in text
  finally:
    import importlib
    importlib.reload(train)
