"""Instance models through the contract, and frozen parameters in the trainer, on a tiny registered model.

TinyInstanceModel ('tiny_instances', registered while this module runs): a frozen per-pixel 'stem' (its backward pass raises, so any gradient
computed through it fails the test) and a trained 1x1 'head' giving K logits; ids = argmax + 1. It trains on
the 'clips' input of a tiny multi-object synthetic set, is validated, evaluated (davis17 / fgari_miou) and
predicts a video, all through the shared code.
"""

import json
import os
import shutil
import subprocess
import sys

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import defaults
from gsa_jax import contract
from gsa_jax import evaluate
from gsa_jax import evaluation
from gsa_jax import inference
from gsa_jax import multi_object
from gsa_jax import optim
from gsa_jax import predict
from gsa_jax import registry
from gsa_jax import summary
from gsa_jax import train
from input_pipeline import instances
from input_pipeline import synthetic_multi

NUM_IDS = 3
SIZE = 32


@jax.custom_vjp
def _no_backward(x):
  return x


def _no_backward_fwd(x):
  return x, None


def _no_backward_bwd(_, g):
  raise AssertionError('a gradient was computed through the frozen stem')


_no_backward.defvjp(_no_backward_fwd, _no_backward_bwd)


class TinyInstanceNet(nn.Module):
  """rgb [b, h, w, 3] -> logits [b, h, w, NUM_IDS]: frozen stem (Dense 3 -> 8), trained head (Dense 8 -> K)."""

  @nn.compact
  def __call__(self, rgb):
    x = _no_backward(nn.tanh(nn.Dense(8, name='stem')(rgb)))
    return nn.Dense(NUM_IDS, name='head')(x)


class TinySegmenter(inference.InstanceSegmenter):
  """ids = argmax of the logits + 1 at the model size; no per-video context."""

  def __init__(self, module, variables, batch_size):
    self.size, self.batch_size, self.modalities = SIZE, int(batch_size), ('rgb',)
    self.compile_seconds = 0.0
    self._fn = jax.jit(lambda v, x: jnp.argmax(module.apply(v, x), axis=-1).astype(jnp.int32) + 1)
    self.set_variables(variables)

  def context_indices(self, num_frames):
    return []

  def encode(self, context):
    return None

  def segment(self, inputs, frame_indices, context, *, extras=False):
    return {'ids': np.asarray(self._fn(self.variables, jnp.asarray(inputs['rgb'])))}

  def set_variables(self, variables):
    self.variables = {'params': variables['params']}


class TinyInstanceModel(contract.Model):
  name = 'tiny_instances'
  output_kind = 'instances'
  best_metric = 'mIoU'
  default_protocol = 'fgari_miou'

  @classmethod
  def model_config(cls):
    return ml_collections.ConfigDict({'name': cls.name})

  def build(self):
    return TinyInstanceNet()

  def example_batch(self, batch_size=1, image_size=None):
    return {'frames': np.zeros((batch_size, 5, SIZE, SIZE, 3), np.float32),
            'frame_mask': np.ones((batch_size, 5), np.float32)}

  def init(self, key):
    return self.module.init(key, jnp.zeros((1, SIZE, SIZE, 3)))

  @property
  def train_input(self):
    return 'clips'

  def loss(self, variables, batch, *, key, step):
    frames = batch['frames'][:, 2]  # the clip's centre frame [b, h, w, 3]
    logits = self.module.apply(variables, frames)
    target = jax.nn.one_hot(jnp.argmax(frames, axis=-1), NUM_IDS)  # the dominant colour channel
    loss = jnp.mean((logits - target) ** 2)
    return loss, {'loss': loss}, {}

  def is_trainable(self, path):
    return tuple(path)[:1] != ('stem',)

  def segmenter(self, variables, *, batch_size=None, tta=None):
    return TinySegmenter(self.module, variables, batch_size or self.config.eval.batch_size)


@pytest.fixture(scope='module', autouse=True)
def registered():
  """Registers the tiny model for this module's tests only (test_contract requires a tiny config of every
  model registered while it runs)."""
  registry.register(TinyInstanceModel)
  yield
  registry._MODELS.pop(TinyInstanceModel.name, None)  # pylint: disable=protected-access


def _config(steps=3):
  c = defaults.get_config(TinyInstanceModel.name)
  d = c.data
  d.train = d.val = d.test = 'synthetic_multi'
  d.image_size = SIZE
  d.clip_size = (SIZE, SIZE)
  d.num_parallel_calls = 1
  d.prefetch = 1
  d.synthetic_multi.update(num_train_videos=2, num_val_videos=2, num_frames=(3, 4), frame_sizes=((SIZE, SIZE),),
                           bar_sizes=(8,), num_objects=(2, 3), letterbox=0.0, flow=False, seed=0)
  t = c.train
  t.batch_size = 2
  t.num_train_steps = steps
  t.warmup_steps = 0
  t.learning_rate = 0.1
  t.weight_decay = 0.5  # AdamW: frozen parameters must not decay either
  t.log_every_steps = 1
  t.checkpoint_every_steps = steps
  t.eval_every_steps = steps
  t.write_images_every_steps = 1000
  c.eval.batch_size = 2
  c.eval.num_overlays = 1
  return c


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('tiny_instances'))
  config = _config()
  model = registry.build(config)
  initial = train.init_variables(model, config.seed)
  out = train.train_and_evaluate(config, workdir)
  return config, workdir, initial, out


def test_frozen_parameters_stay_bit_identical_and_trained_ones_move(trained):
  _, _, initial, out = trained
  for leaf in ('kernel', 'bias'):
    np.testing.assert_array_equal(np.asarray(out['params']['stem'][leaf]), np.asarray(initial['params']['stem'][leaf]))
  assert not np.array_equal(np.asarray(out['params']['head']['kernel']), np.asarray(initial['params']['head']['kernel']))
  assert out['step'] == 3 and all(np.isfinite(out['loss_history']))
  assert out['val'] is not None and 'mIoU' in out['val'] and 'FG-ARI' in out['val']


def test_frozen_parameters_have_no_optimiser_state_and_no_gradient():
  config = _config()
  model = registry.build(config)
  tx, schedule = optim.create_optimizer(config.train, 3)
  variables = train.init_variables(model, 0)
  state = train.create_state(model, variables, tx)
  paths = [tuple(getattr(k, 'key', getattr(k, 'name', '')) for k in p)
           for p, _ in jax.tree_util.tree_leaves_with_path(state['opt_state'])]
  assert paths and not any('stem' in p for p in paths), paths
  assert any('head' in p for p in paths)
  trained_count = summary.count(variables['params']['head'])
  mu = [x for p, x in jax.tree_util.tree_leaves_with_path(state['opt_state']) if 'mu' in str(p)]
  assert sum(np.size(x) for x in mu) == trained_count
  batch = {k: np.random.default_rng(0).uniform(size=v.shape).astype(np.float32)
           for k, v in model.example_batch(2).items()}
  # The stem's backward raises: a step that differentiated the frozen part would fail here.
  new_state, metrics = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx, schedule=schedule,
                                                             seed=0))(state, batch)
  assert np.isfinite(float(metrics['loss']))
  np.testing.assert_array_equal(np.asarray(new_state['params']['stem']['kernel']),
                                np.asarray(variables['params']['stem']['kernel']))
  assert isinstance(tx, optax.GradientTransformation)


def test_summary_prints_trained_and_frozen_counts():
  text = summary.summary_text(_config())
  lines = dict(line.split(': ') for line in text.splitlines() if line.endswith(tuple('0123456789')) and ': ' in line)
  assert int(lines['frozen_params']) == 3 * 8 + 8
  assert int(lines['trained_params']) == 8 * NUM_IDS + NUM_IDS
  assert int(lines['total_params']) == int(lines['frozen_params']) + int(lines['trained_params'])


@pytest.mark.parametrize('protocol', ['davis17', 'fgari_miou'])
def test_evaluate_checkpoint_under_instance_protocols(trained, protocol, tmp_path, caplog):
  config, workdir, _, _ = trained
  c = ml_collections.ConfigDict(config.to_dict())
  c.eval.protocol = protocol
  with caplog.at_level(logging.INFO):
    results = evaluate.evaluate_checkpoint(c, workdir)
  out = os.path.join(workdir, 'eval', 'test')
  saved = json.load(open(os.path.join(out, evaluation.RESULTS_JSON)))
  assert saved['protocol']['name'] == protocol
  keys = ['FG-ARI', 'mIoU'] if protocol == 'fgari_miou' else ['J_mean', 'F_mean', 'G']
  for k in keys:
    assert 0.0 <= saved[k] <= 1.0 and saved[k] == results[k]
  header = open(os.path.join(out, evaluation.RESULTS_CSV)).readline().strip().split(',')
  assert header[3:] == (keys if protocol == 'fgari_miou' else list(evaluation.STAT_KEYS))
  assert os.path.getsize(os.path.join(out, evaluation.RESULTS_PLOT)) > 1000
  # Masks are instance-id palette PNGs at the frame size; the official ground truth reads the same way.
  annotations = os.path.join(workdir, 'data', 'synthetic_multi', 'Annotations_unsupervised', '480p')
  os.makedirs(tmp_path / 'gt')
  for seq in ('val000', 'val001'):  # the 'val' split (the test role of the synthetic set)
    shutil.copytree(os.path.join(annotations, seq), tmp_path / 'gt' / seq)
  gt = instances.InstanceMaskFolder(str(tmp_path / 'gt'))
  masks = instances.InstanceMaskFolder(os.path.join(out, 'masks'))
  assert sorted(masks) == sorted(gt) == ['val000', 'val001']
  for seq in masks:
    for frame in gt[seq]:
      ids = masks[seq][frame]
      assert ids.shape == gt[seq][frame].shape and set(np.unique(ids)) <= set(range(1, NUM_IDS + 1))
  # Scoring the written folders gives the same figures as the in-memory evaluation.
  again = evaluation.evaluate_folders(os.path.join(out, 'masks'), gt.root, protocol=protocol,
                                      output_dir=str(tmp_path / 'folders'))
  for k in keys:
    assert again[k] == pytest.approx(results[k], abs=1e-12)
  assert any('video val000: ' in r.getMessage() and 'frames/s' in r.getMessage() for r in caplog.records)
  assert os.listdir(os.path.join(out, 'overlays'))


def test_predict_writes_instance_palette_pngs_and_object_overlays(trained, tmp_path, caplog):
  _, workdir, _, out = trained
  video = os.path.join(workdir, 'data', 'synthetic_multi', 'JPEGImages', '480p', 'val001')
  with caplog.at_level(logging.INFO):
    report = predict.predict(checkpoint=workdir, input_path=video, output_dir=str(tmp_path / 'p'), progress=False)
  assert report['output_kind'] == 'instances' and report['num_frames'] == len(os.listdir(video))
  from PIL import Image
  first = report['frames'][0]
  with Image.open(os.path.join(tmp_path, 'p', first['mask'])) as image:
    assert image.mode == 'P'
    assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    ids = np.array(image)
  assert set(first['objects']) == set(np.unique(ids)) - {0}
  # The overlay tints each object with its own DAVIS colour.
  frame = np.asarray(Image.open(os.path.join(video, first['name'] + '.jpg')).convert('RGB'))
  expected = instances.overlay(frame, ids)
  overlay = np.asarray(Image.open(os.path.join(tmp_path, 'p', first['overlay'])))
  error = np.abs(overlay.astype(int) - expected.astype(int)).mean()  # JPEG (q90) noise only
  assert error < 6.0 and error < 0.5 * np.abs(overlay.astype(int) - frame.astype(int)).mean()
  assert any(r.getMessage().startswith('video ') and 'frames/s' in r.getMessage() for r in caplog.records)


def test_predict_refuses_more_ids_than_the_palette(trained, tmp_path):
  _, workdir, _, _ = trained
  video = os.path.join(workdir, 'data', 'synthetic_multi', 'JPEGImages', '480p', 'val000')
  original = TinySegmenter.segment

  def too_many(self, inputs, frame_indices, context, *, extras=False):
    out = original(self, inputs, frame_indices, context, extras=extras)
    return {'ids': out['ids'] + 300}

  TinySegmenter.segment = too_many
  try:
    with pytest.raises(predict.PredictError, match=r'masks/00000\.png.*palette'):
      predict.predict(checkpoint=workdir, input_path=video, output_dir=str(tmp_path / 'p'), progress=False)
  finally:
    TinySegmenter.segment = original
  assert not os.path.exists(tmp_path / 'p')


def _write_set(root, ids_per_seq):
  for seq, frames in ids_per_seq.items():
    for t, ids in enumerate(frames):
      path = os.path.join(root, seq, f'{t:05d}.png')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      instances.write_instance_mask(path, ids)


def test_evaluate_folders_davis17_and_too_many_proposals(tmp_path):
  gt = np.zeros((2, 24, 24), np.uint8)
  gt[:, 2:10, 2:10], gt[:, 12:20, 12:22] = 1, 2
  perfect = np.where(gt == 1, 5, np.where(gt == 2, 3, 0)).astype(np.uint8)  # other ids: matching finds them
  _write_set(tmp_path / 'gt', {'a': list(gt)})
  _write_set(tmp_path / 'pred', {'a': list(perfect)})
  results = evaluation.evaluate_folders(str(tmp_path / 'pred'), str(tmp_path / 'gt'), protocol='davis17',
                                        output_dir=str(tmp_path / 'out'))
  assert results['G'] == 1.0 and results['num_objects'] == 2
  assert json.load(open(tmp_path / 'out' / evaluation.RESULTS_JSON))['J_mean'] == 1.0
  assert evaluation.INSTANCE_PROTOCOLS == multi_object.PROTOCOLS
  # The same through the command line.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, os.path.join(repo, 'main.py'), '--mode=evaluate', '--protocol=davis17',
                         f'--predictions={tmp_path / "pred"}', f'--ground_truth={tmp_path / "gt"}',
                         f'--output={tmp_path / "cli"}'], cwd=repo, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(tmp_path / 'cli' / evaluation.RESULTS_JSON))['G'] == 1.0
  many = perfect.copy()
  many[1, 0, 0] = 21
  _write_set(tmp_path / 'many', {'a': list(many)})
  with pytest.raises(multi_object.MultiObjectError,
                     match=r'many/a/00001\.png.*21.*20 proposals'):
    evaluation.evaluate_folders(str(tmp_path / 'many'), str(tmp_path / 'gt'), protocol='davis17',
                                output_dir=str(tmp_path / 'out2'))


def test_synthetic_multi_uses_only_public_helpers_of_synthetic():
  import inspect
  source = inspect.getsource(synthetic_multi)
  assert 'synthetic._' not in source


def test_binary_data_set_is_scored_as_one_object(tmp_path):
  from input_pipeline import data_sources  # pylint: disable=g-import-not-at-top
  config = _config()
  config.data.test = 'synthetic'
  config.data.synthetic_root = str(tmp_path / 'synthetic')
  config.data.synthetic.update(num_train_videos=1, num_val_videos=1, num_test_videos=1, num_frames=3, image_size=32,
                               num_images=2)
  config = data_sources.prepare_data_roots(config, str(tmp_path), roles=('test',))
  model = registry.build(config)
  variables = train.init_variables(model, 0)
  config.eval.protocol = 'davis17'
  results, extra = evaluate.evaluate_split(model, variables, config, split='test', num_overlays=1)
  assert results['num_objects'] == 1 and extra['frames'] == 3 and len(extra['overlays']) == 1
  # The foreground is object 1: predicting it exactly scores J = 1.
  record = evaluate.list_split(config, 'test')[0]
  truth = {n: (evaluation.read_png(p) != 0).astype(np.uint8) for n, p in zip(record.frame_names, record.mask_paths)}

  class Oracle(TinySegmenter):
    def segment(self, inputs, frame_indices, context, *, extras=False):
      return {'ids': np.stack([inference.resize_ids(truth[record.frame_names[min(i, len(truth) - 1)]], SIZE, SIZE)
                               for i in frame_indices])}

  results, _ = evaluate.evaluate_split(model, variables, config, split='test',
                                       segmenter=Oracle(model.module, variables, 2))
  assert results['num_objects'] == 1 and results['J_mean'] == 1.0 and results['G'] == 1.0
