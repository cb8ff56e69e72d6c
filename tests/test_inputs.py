"""Bad input data answered before any work: every frame checked (sizes, truncation, mask rule), flow inputs."""

import os

import numpy as np
import pytest
from PIL import Image

from configs import gsanet_demo
from gsa_jax import evaluate
from input_pipeline import data_sources
from input_pipeline import datasets
from input_pipeline import flow
from input_pipeline import images
from input_pipeline.images import DataError

H, W = 24, 32


def _jpg(path, size=(H, W), value=120):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(abs(hash(path)) % 2**32)
  Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8) // 2 + value // 2).save(path, quality=90)


def _mask(path, size=(H, W), values=(0, 255)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  m = np.full(size, values[0], np.uint8)
  for i, v in enumerate(values[1:]):
    m[4 + 6 * i:8 + 6 * i, 5:20] = v
  Image.fromarray(m).save(path)


def _flat_tree(folder, video='bear', n=6):
  for i in range(n):
    _jpg(os.path.join(folder, 'RGB', f'{video}_{i:05d}.jpg'))
    _jpg(os.path.join(folder, 'FLOW', f'{video}_{i:05d}.jpg'), value=200)
    _mask(os.path.join(folder, 'GT', f'{video}_{i:05d}.png'))
  return folder


def _truncate(path, keep=0.6):
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:int(len(data) * keep)])


def test_the_default_checks_every_frame_and_evaluation_keeps_the_single_object_rule(tmp_path):
  root = _flat_tree(str(tmp_path / 'davis'))
  _mask(os.path.join(root, 'GT', 'bear_00004.png'), values=(0, 128, 255))  # a third grey level on frame 4
  with pytest.raises(DataError, match=r'bear_00004.png: mask with 3 grey levels \(0, 128, 255\)'):
    datasets.list_videos('davis16', root)
  assert datasets.list_videos('davis16', root, check='first')  # frame 0 alone is fine
  assert datasets.list_videos('fbms', root)  # multi-object data sets merge the objects
  config = gsanet_demo.get_config()
  assert config.data.check == 'all'
  config.data.test, config.data.test_root = 'davis16', root
  with pytest.raises(DataError, match='bear_00004.png: mask with 3 grey levels'):
    evaluate.list_split(config, 'test')


def test_every_problem_of_a_data_set_in_one_error(tmp_path):
  root = _flat_tree(str(tmp_path / 'davis'))
  _mask(os.path.join(root, 'GT', 'bear_00003.png'), size=(H + 4, W))  # wrong size mid-sequence
  _truncate(os.path.join(root, 'RGB', 'bear_00002.jpg'))
  _truncate(os.path.join(root, 'GT', 'bear_00005.png'), keep=0.9)
  with pytest.raises(DataError) as e:
    datasets.list_videos('davis16', root)
  message = str(e.value)
  assert message.startswith(f"3 problems in data set 'davis16' at {root}")
  assert 'bear_00003.png: the mask is 28x32 (h x w) but its frame' in message
  assert 'bear_00002.jpg: truncated JPEG (no end marker FFD9)' in message
  assert 'bear_00005.png: truncated PNG (no IEND chunk)' in message


def test_truncation_is_found_from_the_end_marker_only(tmp_path):
  jpg, png = str(tmp_path / 'a.jpg'), str(tmp_path / 'a.png')
  _jpg(jpg)
  _mask(png)
  assert images.truncation_problem(jpg) is None and images.truncation_problem(png) is None
  _truncate(jpg, keep=0.95)
  assert 'truncated JPEG' in images.truncation_problem(jpg)
  with open(png, 'ab') as f:  # padding after IEND is tolerated
    f.write(b'\0' * 16)
  assert images.truncation_problem(png) is None


def test_image_data_sets_check_every_pair(tmp_path):
  root = str(tmp_path / 'duts')
  for i in range(5):
    _jpg(os.path.join(root, 'RGB', f'sun_{i}.jpg'))
    _mask(os.path.join(root, 'GT', f'sun_{i}.png'))
  assert len(datasets.list_images('duts', root)) == 5
  _truncate(os.path.join(root, 'RGB', 'sun_3.jpg'))
  with pytest.raises(DataError, match='sun_3.jpg: truncated JPEG'):
    datasets.list_images('duts', root)


def test_validation_data_is_checked_before_training(tmp_path):
  config = gsanet_demo.get_config()
  config.data.train, config.data.train_root = 'davis16', _flat_tree(str(tmp_path / 'train'))
  config.data.val, config.data.val_root = 'davis16', _flat_tree(str(tmp_path / 'val'))
  data_sources.prepare_data_roots(config, str(tmp_path / 'work'), roles=('train', 'val'))
  _mask(os.path.join(config.data.val_root, 'GT', 'bear_00005.png'), size=(H, W + 2))
  with pytest.raises(DataError, match='bear_00005.png: the mask is 24x34'):
    data_sources.prepare_data_roots(config, str(tmp_path / 'work'), roles=('train', 'val'))


def test_frames_too_small_for_dis_are_refused_before_any_flow(tmp_path):
  frames = str(tmp_path / 'tiny')
  for i in range(3):
    _jpg(os.path.join(frames, f'{i:05d}.jpg'), size=(12, 40))
  with pytest.raises(DataError, match=r'00000.jpg: the frame is 12x40.*at least 16x16.*farneback'):
    flow.compute_flow_for_input(frames, str(tmp_path / 'out'), show_progress=False)
  assert not os.path.exists(tmp_path / 'out')
  with pytest.raises(DataError, match='at least 16x16'):
    flow.compute_flow_frames([np.zeros((40, 11, 3), np.uint8)] * 2)


def test_flow_overwrite_and_the_printed_command(tmp_path):
  frames, out = str(tmp_path / 'frames'), str(tmp_path / 'flow')
  for i in range(3):
    _jpg(os.path.join(frames, f'{i:05d}.jpg'), size=(32, 32))
  assert datasets.flow_command(frames, out).endswith(f'--output={out}')
  flow.compute_flow_for_input(frames, out, show_progress=False)
  with pytest.raises(DataError, match='pass --overwrite to replace it'):
    flow.compute_flow_for_input(frames, out, show_progress=False)
  os.remove(os.path.join(out, '00001.jpg'))
  flow.compute_flow_for_input(frames, out, show_progress=False, overwrite=True)
  assert sorted(os.listdir(out)) == ['00000.jpg', '00001.jpg', '00002.jpg']
  assert datasets.flow_command(frames, out).endswith(f'--output={out} --overwrite')
