"""The trainer: config errors, NaN, workdir mismatch, init transfer (the real models end to end: test_contract.py)."""


import jax
import numpy as np
import pytest

import trainer_testlib as tl
from gsa_jax import checkpoint as ckpt_lib
from gsa_jax import config_lib
from gsa_jax import errors
from gsa_jax import evaluate
from gsa_jax import registry
from gsa_jax import train


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic'))
  tl.ensure_synthetic(root)
  return root


def _error(config):
  with pytest.raises(errors.ConfigError) as info:
    config_lib.validate(config)
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
  assert "kind='image'; choose one of ('video', 'saliency')" in message
  assert '/no/such/folder' in message
  config = tl.tiny_config(synthetic_root)
  config.model.loss = 'dice'
  assert "model.loss='dice'; valid: ('official', 'f3net')" in _error(config)
  config = tl.tiny_config(synthetic_root)
  config.train.num_train_steps = 0
  assert 'train.num_train_steps=0; use a positive number of steps, or -1' in _error(config)
  config = tl.tiny_config(synthetic_root)
  config.model.name = 'no_such_model'
  with pytest.raises(registry.UnknownModelError, match=r"Unknown model 'no_such_model'.*registered models: .*gsanet"):
    config_lib.validate(config)


def test_num_refs_larger_than_video_errors(synthetic_root, tmp_path):
  config = tl.tiny_config(synthetic_root, model=tl.TINY)
  config.data.val = 'synthetic'
  config.data.val_root = synthetic_root
  config.data.num_refs = 9  # The synthetic videos have 5 frames.
  model = registry.build(config)
  variables = train.init_variables(model, config.seed)
  with pytest.raises(errors.UserError, match=r'video val000: .*num_refs \(N_R\)=9 is larger than the video \(5 frames\)'):
    evaluate.evaluate_split(model, variables, config, split='val')


def test_nan_stops_and_keeps_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
  from input_pipeline import pipeline
  real = pipeline.create_train_iterator

  def poisoned(*args, start_step=0, **kwargs):
    for step, batch in enumerate(real(*args, start_step=start_step, **kwargs), start=start_step):
      if step == 4:  # The 5th step sees a NaN image.
        batch = dict(batch, rgb=np.full_like(batch['rgb'], np.nan))
      yield batch

  monkeypatch.setattr(pipeline, 'create_train_iterator', poisoned)
  config = tl.tiny_config(synthetic_root, steps=8, model=tl.TINY)
  with pytest.raises(train.TrainingDivergedError, match=r'at step 5.*last good checkpoint is .*checkpoints/4'):
    train.train_and_evaluate(config, str(tmp_path))
  manager = ckpt_lib.create_manager(ckpt_lib.checkpoint_directory(str(tmp_path)), read_only=True)
  assert manager.latest_step() == 4
  variables, meta = ckpt_lib.load_variables(str(tmp_path))
  assert meta['step'] == 4 and 'opt_state' not in variables  # inference reads no optimiser moments
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


def test_mismatched_checkpoint_in_workdir_errors(synthetic_root, tmp_path):
  config = tl.tiny_config(synthetic_root, steps=2, dim=8, model=tl.TINY)
  train.train_and_evaluate(config, str(tmp_path))
  other = tl.tiny_config(synthetic_root, steps=4, dim=12, model=tl.TINY)
  with pytest.raises(ckpt_lib.CheckpointError, match=r'holds a different model from the one configured; the model '
                                                     r'configs differ in dim: checkpoint 8, config 12[\s\S]*shape'):
    train.train_and_evaluate(other, str(tmp_path))


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
  model = registry.build(tl.tiny_config('/unused'))  # GSA-Net's transfer rule (no variables are built)
  new, report = model.transfer(target, stage1, {'scope': 'model'})
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

  config = tl.tiny_config('/unused')
  config.model.transfer_mffm_branches = False
  official, report = registry.build(config).transfer(target, stage1, {'scope': 'model'})
  p = official['params']
  assert (p['rgb_mffm1']['branch0']['conv']['kernel'] == 0).all()
  assert (p['flow_mffm1']['branch0']['conv']['kernel'] == 0).all()
  assert (p['flow_mffm1']['in_conv']['kernel'] == 1).all()
  assert 'skipped rgb_mffm1/branch0: MFFM branch dropped' in '\n'.join(report)

  backbone = _tree(('conv/kernel', (3, 3, 3, 4)))
  new, report = model.transfer(target, {'params': jax.tree.map(lambda x: x + 2, backbone)}, {'scope': 'backbone'})
  assert (new['params']['rgb_encoder']['conv']['kernel'] == 2).all()
  assert (new['params']['flow_encoder']['conv']['kernel'] == 2).all()
  assert (new['params']['rgb_mffm1']['in_conv']['kernel'] == 0).all()


def test_init_from_workdir(synthetic_root, tmp_path):
  """train.init_from = another workdir: its best weights are loaded and the transfer is reported."""
  first = train.train_and_evaluate(tl.tiny_config(synthetic_root, steps=2, model=tl.TINY), str(tmp_path / 'a'))
  config = tl.tiny_config(synthetic_root, steps=1, model=tl.TINY)
  config.train.init_from = str(tmp_path / 'a')
  config.train.learning_rate = 1e-12
  config.train.end_learning_rate = 0.0
  second = train.train_and_evaluate(config, str(tmp_path / 'b'))
  np.testing.assert_allclose(second['params']['decoder']['kernel'], first['params']['decoder']['kernel'], atol=1e-6)
  with open(tmp_path / 'b' / 'init_from.txt') as f:
    text = f.read()
  assert 'transferred rgb_encoder -> rgb_encoder' in text and 'checkpoints/2' in text
