"""The model contract: every registered model goes through build -> training -> evaluate -> predict -> summary on a
tiny synthetic clip, through the same trainer, inference path and checkpoint format.

A model family registered in gsa_jax.registry must add its tiny config to TINY_CONFIGS below (the test fails
for a registered model without one). Each case trains a few steps of the real network, evaluates the best
checkpoint twice (identical numbers), predicts a clip from the test split and reads the summary.
"""

import json
import os
import shutil

import jax
import numpy as np
from PIL import Image
import pytest

import trainer_testlib as tl
from gsa_jax import evaluate
from gsa_jax import predict
from gsa_jax import registry
from gsa_jax import summary
from gsa_jax import train


def gsanet_tiny(root):
  config = tl.tiny_config(root, steps=8, batch=4, dim=16)
  config.model.num_clusters = 8
  config.model.knn_k = 4
  config.train.learning_rate = 3e-3
  config.train.end_learning_rate = 1e-3
  config.data.augment = False
  config.data.val = 'synthetic'  # validation at the last step (best-checkpoint bookkeeping)
  return config


def dpa_tiny(root):
  from configs import dpa_demo  # pylint: disable=g-import-not-at-top
  config = tl.tiny_config(root, steps=8, batch=4)
  config.model = dpa_demo.get_config().model
  config.model.update(vgg_width=0.125, dim=16)
  config.train.learning_rate = 3e-3
  config.train.end_learning_rate = 1e-3
  config.data.augment = False
  config.data.val = 'synthetic'
  return config


def solv_tiny(root):
  """SOLV with the demo's patch-projection encoder at 32x32 (4x4 tokens) on the binary synthetic videos'
  frames (its clips need no labels; scored as instances against the one-object ground truth)."""
  from configs import solv_demo  # pylint: disable=g-import-not-at-top
  config = solv_demo.get_config()
  config.model.update(projection_dim=16, image_size=(32, 32), num_slots=3, slot_dim=16, temporal_ffn=32,
                      decoder_hidden=32, merge_epochs=2)
  d = config.data
  d.train = d.val = d.test = 'synthetic'
  d.synthetic_root = root
  d.synthetic.update(num_train_videos=3, num_val_videos=2, num_test_videos=2, num_frames=5, image_size=64,
                     num_images=8)
  d.clip_size = (32, 32)
  d.num_parallel_calls = 1
  config.train.update(batch_size=4, num_train_steps=8, num_epochs=2, schedule='cosine', learning_rate=3e-3,
                      end_learning_rate=1e-3, log_every_steps=1, checkpoint_every_steps=4, eval_every_steps=1000)
  config.eval.batch_size = 4
  return config


def betrayed_tiny(root):
  """Betrayed by Attention with the demo's patch-projection encoder at 32x32 (8x8 tokens, so smaller loss
  rankings than released) on the binary synthetic videos' frames, scored as instances (davis17)."""
  from configs import betrayed_demo  # pylint: disable=g-import-not-at-top
  config = betrayed_demo.get_config()
  config.model.update(projection_dim=16, image_size=(32, 32), eval_size=(32, 32), num_points=4, sem_top=6,
                      sem_bottom=16, mot_top=4, mot_bottom=8, key_ratio=2)
  d = config.data
  d.train = d.val = d.test = 'synthetic'
  d.synthetic_root = root
  d.synthetic.update(num_train_videos=3, num_val_videos=2, num_test_videos=2, num_frames=5, image_size=64,
                     num_images=8)
  d.clip_size = (32, 32)
  d.num_parallel_calls = 1
  config.train.update(batch_size=4, num_train_steps=8, learning_rate=3e-3, end_learning_rate=1e-3,
                      log_every_steps=1, checkpoint_every_steps=4, eval_every_steps=1000)
  config.eval.batch_size = 4
  return config


def _with_validation(config):
  config.data.val = 'synthetic'
  return config


# name -> (tiny config of the model on the synthetic set at `root`, whether its loss must fall in those steps)
TINY_CONFIGS = {
    'gsanet': (gsanet_tiny, True),
    'solv': (solv_tiny, False),  # 8 clip batches are too noisy for a monotone fall; the demo test shows learning
    'dpa': (dpa_tiny, True),
    'betrayed': (betrayed_tiny, False),  # the losses move little in 8 steps; the demo shows them fall
    tl.TINY: (lambda root: _with_validation(tl.tiny_config(root, steps=2, model=tl.TINY)), False),
}


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic'))
  tl.ensure_synthetic(root)
  return root


def test_every_registered_model_has_a_tiny_config():
  missing = sorted(set(registry.names()) - set(TINY_CONFIGS))
  assert not missing, f'registered models without a tiny config in TINY_CONFIGS: {missing}'


@pytest.mark.parametrize('name', sorted(TINY_CONFIGS))
def test_train_evaluate_predict_summary(name, synthetic_root, tmp_path):
  make, must_learn = TINY_CONFIGS[name]
  config = make(synthetic_root)
  assert config.model.name == name
  model = registry.build(config)
  workdir = str(tmp_path / 'run')
  out = train.train_and_evaluate(config, workdir)
  losses = out['loss_history']
  assert len(losses) == config.train.num_train_steps and all(np.isfinite(losses))
  if must_learn:
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
  assert out['val'] is not None and model.best_metric in out['val']

  first = evaluate.evaluate_checkpoint(config, workdir)
  with open(os.path.join(workdir, 'eval', 'test', 'results.json')) as f:
    saved = json.load(f)
  second = evaluate.evaluate_checkpoint(None, workdir)  # the config saved with the checkpoint
  binary = model.output_kind == 'binary'
  for key in ('J_mean', 'F_mean', 'G') if binary else (model.best_metric,):
    assert first[key] == second[key] == saved[key]
  if binary:
    assert ({s: e['J_per_frame'] for s, e in first['sequences'].items()} ==
            {s: e['J_per_frame'] for s, e in second['sequences'].items()})
  assert saved['checkpoint'].endswith(f'/{config.train.num_train_steps}') and saved['frames_per_second'] > 0
  masks = os.path.join(workdir, 'eval', 'test', 'masks')
  videos = sorted(os.listdir(masks))
  assert len(videos) == 2
  with Image.open(os.path.join(masks, videos[0], sorted(os.listdir(os.path.join(masks, videos[0])))[0])) as image:
    assert image.mode == 'P'  # the DAVIS palette format, as predict writes
    ids = np.unique(np.asarray(image))
    assert set(ids) <= {0, 1} if binary else len(ids) <= config.model.get('num_slots', 254) + 1  # 0/1, or ids
  assert os.listdir(os.path.join(workdir, 'eval', 'test', 'overlays'))
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(workdir))
  assert not os.path.exists(os.path.join(workdir, 'eval', 'test.writing'))

  clip = tmp_path / 'clip'
  clip.mkdir()
  frames = sorted(f for f in os.listdir(os.path.join(synthetic_root, 'test', 'RGB')) if f.startswith(videos[0]))
  flow = tmp_path / 'flow'  # the data set's own flow images, as evaluation reads them
  flow.mkdir()
  for f in frames:
    shutil.copy(os.path.join(synthetic_root, 'test', 'RGB', f), clip / f)
    shutil.copy(os.path.join(synthetic_root, 'test', 'FLOW', f), flow / f)
  report = predict.predict(workdir, str(clip), str(tmp_path / 'out'), flow_dir=str(flow), progress=False)
  assert report['num_frames'] == len(frames) and report['checkpoint']['model'] == name
  predicted = sorted(os.listdir(tmp_path / 'out' / 'masks'))
  assert predicted == sorted(os.path.splitext(f)[0] + '.png' for f in frames)
  # predict and evaluate write the same masks for the same frames
  for f in predicted:
    a = np.asarray(Image.open(tmp_path / 'out' / 'masks' / f))
    b = np.asarray(Image.open(os.path.join(masks, videos[0], f.rsplit('_', 1)[1])))  # flat names: <video>_<frame>
    assert np.array_equal(a, b), f

  text = summary.summary_text(config)
  assert text.splitlines()[-1] == f'total_params: {sum(np.size(x) for x in jax.tree.leaves(out["params"]))}'
