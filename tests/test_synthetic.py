"""Synthetic videos: determinism, exact flow (warping reproduces the next frame), layout, atomic output."""

import filecmp
import json
import os

import numpy as np
import pytest

from input_pipeline import flow as flow_lib
from input_pipeline import images
from input_pipeline import synthetic

TINY = dict(num_train_videos=2, num_val_videos=1, num_test_videos=1, num_frames=3, image_size=32, difficulty=0.8,
            num_images=2)


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  synthetic.generate(str(tmp_path / 'a'), seed=3, **TINY)
  synthetic.generate(str(tmp_path / 'b'), seed=3, **TINY)
  synthetic.generate(str(tmp_path / 'c'), seed=4, **TINY)
  files = _files(tmp_path / 'a')
  assert files == _files(tmp_path / 'b') == _files(tmp_path / 'c')
  assert len(files) == 1 + 4 * 3 * 3 + 2 * 2
  same = [f for f in files if filecmp.cmp(tmp_path / 'a' / f, tmp_path / 'b' / f, shallow=False)]
  assert same == files
  differ = [f for f in files if f.endswith('.jpg') and not filecmp.cmp(tmp_path / 'a' / f, tmp_path / 'c' / f, shallow=False)]
  assert len(differ) > 0.9 * len([f for f in files if f.endswith('.jpg')])


def test_layout_names_masks_and_config_entry_point(tmp_path):
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(TINY, seed=0))
  manifest = synthetic.generate_from_config(cfg, str(tmp_path / 'set'))
  root = tmp_path / 'set'
  assert json.load(open(root / 'synthetic.json'))['settings']['image_size'] == 32
  assert manifest['counts'] == {'train': 2, 'val': 1, 'test': 1, 'images': 2}
  for split, n in (('train', 2), ('val', 1), ('test', 1)):
    for sub in ('RGB', 'GT', 'FLOW'):
      names = sorted(os.listdir(root / split / sub))
      assert len(names) == n * 3
      videos = {x.rsplit('_', 1)[0] for x in names}
      assert all('_' not in v for v in videos) and len(videos) == n
    mask = images.read_mask(str(root / split / 'GT' / f'{split}000_00000.png'))
    assert mask.shape == (32, 32) and 0 < mask.mean() < 0.8
  assert sorted(os.listdir(root / 'images' / 'RGB')) == ['img00000.jpg', 'img00001.jpg']
  # Regenerating over our own folder replaces it; over a foreign non-empty folder it refuses.
  synthetic.generate_from_config(cfg, str(root))
  foreign = tmp_path / 'foreign'
  foreign.mkdir()
  (foreign / 'keep.txt').write_text('mine')
  with pytest.raises(images.DataError, match='not empty'):
    synthetic.generate_from_config(cfg, str(foreign))
  assert os.listdir(foreign) == ['keep.txt']


def test_flow_warps_frame_onto_next_frame():
  scene = synthetic.make_scene(synthetic.video_rng(0, 'train', 5), image_size=48, num_frames=6, difficulty=1.0)
  assert len(scene.layers) >= 3
  grid = synthetic.pixel_grid(48)
  checked = 0
  for t in range(5):
    frame = synthetic.render_frame(scene, t)
    moved = synthetic.sample_scene(scene, t + 1, grid + frame['flow'])
    visible = moved['layer'] == frame['layer']  # the same surface is on top at both ends
    assert visible.mean() > 0.8
    np.testing.assert_allclose(moved['rgb'][visible], frame['rgb'][visible], atol=1e-9)
    checked += visible.sum()
    # Wrong flow fails: no flow, or the flow scaled by 0.5.
    still = synthetic.sample_scene(scene, t + 1, grid)
    half = synthetic.sample_scene(scene, t + 1, grid + 0.5 * frame['flow'])
    fg = frame['mask'] & visible
    assert np.abs(still['rgb'] - frame['rgb'])[fg].max() > 0.05
    assert np.abs(half['rgb'] - frame['rgb'])[fg].max() > 0.02
  assert checked > 5 * 48 * 48 * 0.8


def test_foreground_moves_independently_and_flow_image_matches():
  scene = synthetic.make_scene(synthetic.video_rng(1, 'train', 0), image_size=64, num_frames=4, difficulty=0.5)
  video = synthetic.render_video(scene)
  assert video['rgb'].shape == (4, 64, 64, 3) and video['flow'].shape == (4, 64, 64, 2)
  for t in range(4):
    fg = video['mask'][t]
    bg = video['layer'][t] == 0
    fg_motion = np.median(video['flow'][t][fg], axis=0)
    bg_motion = np.median(video['flow'][t][bg], axis=0)
    assert np.linalg.norm(fg_motion - bg_motion) > 0.3  # the foreground is salient by motion
  # The stored flow image is the Middlebury coding of the exact flow.
  decoded = flow_lib.image_to_flow(flow_lib.flow_to_image(video['flow'][0]))
  radius = np.sqrt((video['flow'][0] ** 2).sum(-1)).max()
  assert np.abs(decoded * radius - video['flow'][0]).mean() < 0.05 * radius


def test_demo_size_generates_quickly(tmp_path):
  import time
  start = time.time()
  synthetic.generate(str(tmp_path / 'demo'), num_train_videos=4, num_val_videos=1, num_test_videos=1, num_frames=12,
                     image_size=64, num_images=20)
  # 1/6 of the demo set: the whole set takes about 5 s here; a minute is the budget.
  assert time.time() - start < 30  # generous: the CPU is shared
