"""tf.data pipeline: one draw on every modality (eager and in tf.data), clip sampling, resumability."""

import numpy as np
import pytest
import tensorflow as tf

from configs import defaults
from input_pipeline import datasets
from input_pipeline import flow as flow_lib
from input_pipeline import frames as frames_lib
from input_pipeline import pipeline
from input_pipeline import synthetic


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('syn') / 'set')
  synthetic.generate(path, num_train_videos=3, num_val_videos=1, num_test_videos=1, num_frames=5, image_size=32,
                     num_images=4)
  return path


def _config(root, **kw):
  d = defaults.data_config()
  d.train_root = root
  d.image_size = 32
  d.multiscale_sizes = (24, 32)
  d.num_refs = 3
  d.prefetch = 1
  for k, v in kw.items():
    d[k] = v
  return d


def _pattern(h=40, w=48):
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  img = np.stack([x * 5, y * 6, (x + y) * 2], -1)
  return np.clip(img, 0, 255)


def _augment(image, key, size):
  images = {'rgb': image, 'flow': image, 'mask': image}
  params = pipeline.draw_augmentation(key, tf.shape(image)[0], tf.shape(image)[1], rotation_prob=0.5)
  out = pipeline.apply_augmentation(images, params, size, colour=False)
  return out, params


def test_one_draw_on_every_modality_eager_and_in_tf_data():
  image = tf.constant(_pattern())
  seen_flip, seen_rot = set(), set()
  eager = []
  for k in range(12):
    out, params = _augment(image, tf.constant([7, k], tf.int64), 24)
    np.testing.assert_array_equal(out['rgb'].numpy(), out['flow'].numpy())
    np.testing.assert_array_equal(out['rgb'].numpy(), out['mask'].numpy())
    seen_flip.add(bool(params['flip']))
    seen_rot.add(bool(params['rotate']))
    # The crop is centred and the flip is what the draw says: compare with a numpy reference (no rotation).
    if not bool(params['rotate']):
      ref = _pattern()[:, ::-1] if bool(params['flip']) else _pattern()
      ch, cw = int(params['crop_h']), int(params['crop_w'])
      ref = ref[ch // 2: ch // 2 + 40 - ch, cw // 2: cw // 2 + 48 - cw]
      ref = tf.image.resize(ref, (24, 24), antialias=True).numpy()
      np.testing.assert_allclose(out['rgb'].numpy(), ref, atol=1e-3)
    eager.append(out['rgb'].numpy())
  assert seen_flip == {True, False} and seen_rot == {True, False}
  ds = tf.data.Dataset.range(12).map(lambda k: _augment(image, tf.stack([tf.constant(7, tf.int64), k]), 24)[0])
  for k, out in enumerate(ds.as_numpy_iterator()):
    np.testing.assert_array_equal(out['rgb'], out['flow'])
    np.testing.assert_array_equal(out['rgb'], out['mask'])
    np.testing.assert_allclose(out['rgb'], eager[k], atol=1e-4)  # same draw in graph mode


def test_flip_flow_in_tf_matches_numpy_recolouring():
  y, x = np.mgrid[0:20, 0:24]
  field = np.stack([np.sin(x / 5.0) * 2, np.cos(y / 4.0)], -1)
  image = flow_lib.flow_to_image(field)
  ours = pipeline.mirror_flow_tf(tf.constant(image[:, ::-1].astype(np.float32))).numpy()
  mirrored = field[:, ::-1].copy()
  mirrored[..., 0] *= -1
  assert np.abs(ours - flow_lib.flow_to_image(mirrored)).mean() < 1.5
  assert np.abs(image[:, ::-1].astype(float) - flow_lib.flow_to_image(mirrored)).mean() > 10


def test_train_batches_shapes_sizes_and_reference_sampling(root):
  d = _config(root)
  records = datasets.list_videos('synthetic', root, 'train')
  starts = np.cumsum([0] + [len(r) for r in records])
  it = pipeline.create_train_iterator(d, train_input='reference_frames', batch_size=2, seed=1, with_indices=True)
  sizes = set()
  for _ in range(6):
    b = next(it)
    s = b['rgb'].shape[1]
    sizes.add(s)
    assert b['rgb'].shape == (2, s, s, 3) and b['mask'].shape == (2, s, s, 1) and b['flow'].shape == (2, s, s, 3)
    assert b['ref_rgb'].shape == (2, 3, s, s, 3) and b['ref_flow'].shape == (2, 3, s, s, 3)
    assert 0 <= b['mask'].min() and b['mask'].max() <= 1 and 0 <= b['flow'].min() and b['flow'].max() <= 1
    for target, refs in zip(b['index'], b['ref_index']):
      video = np.searchsorted(starts, target, side='right') - 1
      assert np.all((refs >= starts[video]) & (refs < starts[video + 1]))  # same video
      assert len(set(refs.tolist())) == 3  # without replacement (video length 5 >= N_R)
  assert sizes == {24, 32}


def test_resumable_and_deterministic_and_sharded(root):
  d = _config(root, multiscale_sizes=(24,))
  make = lambda **kw: pipeline.create_train_iterator(d, train_input='reference_frames', batch_size=2, seed=5, with_indices=True, **kw)
  full = make()
  batches = [next(full) for _ in range(5)]
  resumed = make(start_step=3)
  for k in (3, 4):
    got = next(resumed)
    for key in batches[k]:
      np.testing.assert_array_equal(got[key], batches[k][key])
  other_seed = next(pipeline.create_train_iterator(d, train_input='reference_frames', batch_size=2, seed=6))
  assert not np.array_equal(other_seed['rgb'], batches[0]['rgb'])
  # Two processes of batch 2 share a global batch of 4: process p gets examples (s * 2 + p) * 2 + j, which
  # for one process of batch 2 are its steps 2s + p.
  p0 = make(process_index=0, process_count=2)
  p1 = make(process_index=1, process_count=2)
  for step in range(2):
    a, b = next(p0), next(p1)
    np.testing.assert_array_equal(a['rgb'], batches[2 * step]['rgb'])
    np.testing.assert_array_equal(b['index'], batches[2 * step + 1]['index'])


def test_epoch_visits_every_target_once(root):
  d = _config(root, multiscale_sizes=(24,), augment=False)
  it = pipeline.create_train_iterator(d, train_input='reference_frames', batch_size=5, seed=0, with_indices=True)
  seen = np.concatenate([next(it)['index'] for _ in range(3)])  # 3 videos x 5 frames = 15 targets
  assert sorted(seen.tolist()) == list(range(15))
  assert pipeline.steps_per_epoch(d, train_input='reference_frames', batch_size=5) == 3


def test_saliency_batches(root):
  d = _config(root, train='synthetic_images', multiscale_sizes=())
  b = next(pipeline.create_train_iterator(d, train_input='images', batch_size=2, seed=0))
  assert set(b) == {'rgb', 'mask'} and b['rgb'].shape == (2, 32, 32, 3)


def test_reference_rules_and_model_inputs(root):
  assert pipeline.reference_indices(5, 4) == [0, 1, 2, 3]  # official: i * (L // N_R)
  assert pipeline.reference_indices(50, 4) == [0, 12, 24, 36]
  assert pipeline.reference_indices(50, 4, 'paper') == [0, 16, 32, 49]  # floor(i (L - 1) / (N_R - 1))
  assert pipeline.reference_indices(7, 1, 'paper') == [0]
  with pytest.raises(ValueError, match=r"Unknown reference rule 'middle'.*data.test_reference_rule"):
    pipeline.reference_indices(7, 2, 'middle')
  (record,) = datasets.list_videos('synthetic', root, 'test')
  source = frames_lib.FileFrames(record.frame_paths, record.frame_names)
  rgb = frames_lib.prepare_rgb(list(source.iter_frames()), 24)
  flow = frames_lib.prepare_flow([frames_lib.FileFlow(record.flow_paths, len(record)).image(i) for i in range(5)], 24)
  assert rgb.shape == (5, 24, 24, 3) and flow.shape == (5, 24, 24, 3)
  assert -2.5 < rgb.mean() < 2.5 and 0 <= flow.min() and flow.max() <= 1
  assert source.names == ['00000', '00001', '00002', '00003', '00004']


def test_size_mismatch_is_reported_in_tf_data(root, tmp_path):
  import shutil
  import cv2
  copy = str(tmp_path / 'set')
  shutil.copytree(root, copy)
  cv2.imwrite(f'{copy}/train/FLOW/train000_00000.jpg', np.zeros((20, 32, 3), np.uint8))
  d = _config(copy, multiscale_sizes=(24,), check='none')
  it = pipeline.create_train_iterator(d, train_input='reference_frames', batch_size=5, seed=0, num_refs=1)
  with pytest.raises(tf.errors.InvalidArgumentError, match='train000_00000.jpg'):
    for _ in range(3):  # one epoch: every target once
      next(it)
