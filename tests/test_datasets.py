"""Dataset readers: a round trip on a small fake tree of every layout, and every bad-input error."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from input_pipeline import datasets
from input_pipeline import images
from input_pipeline import synthetic
from input_pipeline.images import DataError

H, W = 24, 32


def _jpg(path, value=100, size=(H, W)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  cv2.imwrite(str(path), np.full(size + (3,), value, np.uint8))


def _mask(path, kind='grey', size=(H, W), labels=1):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  m = np.zeros(size, np.uint8)
  for k in range(labels):
    m[2 + 6 * k: 6 + 6 * k, 3:9] = k + 1
  if kind == 'grey':
    Image.fromarray(m * 255 if labels == 1 else m * 60).save(path)
  else:
    im = Image.fromarray(m, mode='P')
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12))
    im.save(path)


def _video_tree(root, videos, *, frames_dir, masks_dir, flow_dir, n=3, annotated=None, mask_kind='grey', labels=1,
                nested_names=False):
  for v in videos:
    for i in range(n):
      name = f'{i:05d}'
      _jpg(os.path.join(root, frames_dir, v, name + '.jpg'))
      _jpg(os.path.join(root, flow_dir, v, name + '.jpg'), 200)
      if annotated is None or i in annotated:
        _mask(os.path.join(root, masks_dir, v, name + '.png'), mask_kind, labels=labels)


def _flat_tree(folder, videos, n=3):
  for v in videos:
    for i in range(n):
      _jpg(os.path.join(folder, 'RGB', f'{v}_{i:05d}.jpg'))
      _jpg(os.path.join(folder, 'FLOW', f'{v}_{i:05d}.jpg'), 200)
      _mask(os.path.join(folder, 'GT', f'{v}_{i:05d}.png'))


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('syn') / 'set')
  synthetic.generate(root, num_train_videos=2, num_val_videos=1, num_test_videos=1, num_frames=3, image_size=32,
                     num_images=3)
  return root


def test_synthetic_round_trip(synthetic_root):
  records = datasets.list_videos('synthetic', synthetic_root, 'train', check='all')
  assert [r.name for r in records] == ['train000', 'train001']
  r = records[0]
  assert len(r) == 3 and r.frame_names == ('00000', '00001', '00002')
  assert all(os.path.basename(p).startswith('train000_') for p in r.frame_paths + r.flow_paths + r.mask_paths)
  assert [images.stem(p) for p in r.flow_paths] == [images.stem(p) for p in r.frame_paths]
  assert len(datasets.list_videos('synthetic', synthetic_root, 'test')) == 1
  stills = datasets.list_images('synthetic_images', synthetic_root)
  assert [s.name for s in stills] == ['img00000', 'img00001', 'img00002']


def test_davis_original_layout_with_split(tmp_path):
  root = tmp_path / 'DAVIS'
  _video_tree(root, ['bear', 'bmx-trees', 'car'], frames_dir='JPEGImages/480p', masks_dir='Annotations/480p',
              flow_dir='FLOW/480p', mask_kind='palette')
  os.makedirs(root / 'ImageSets' / '480p')
  (root / 'ImageSets' / '480p' / 'val.txt').write_text(
      '/JPEGImages/480p/bmx-trees/00000.jpg /Annotations/480p/bmx-trees/00000.png\n'
      '/JPEGImages/480p/bmx-trees/00001.jpg /Annotations/480p/bmx-trees/00001.png\n')
  everything = datasets.list_videos('davis16', str(root), check='all')
  assert [r.name for r in everything] == ['bear', 'bmx-trees', 'car']
  val = datasets.list_videos('davis16', str(root), 'val')
  assert [r.name for r in val] == ['bmx-trees']
  assert datasets.list_videos('davis16', str(root), 'test')[0].name == 'bmx-trees'  # DAVIS-16 test = val
  assert val[0].mask_paths[2].endswith(os.path.join('Annotations', '480p', 'bmx-trees', '00002.png'))
  assert images.read_mask(val[0].mask_paths[0]).sum() == 24


def test_davis_official_flat_and_nested_layouts(tmp_path):
  _flat_tree(str(tmp_path / 'DAVIS_train'), ['bear', 'dance-twirl'])
  for v in ('blackswan', 'cows'):
    _flat_tree(str(tmp_path / 'DAVIS_test' / v), [v], n=4)
  train = datasets.list_videos('davis16', str(tmp_path), 'train')
  assert [r.name for r in train] == ['bear', 'dance-twirl'] and train[1].frame_names == ('00000', '00001', '00002')
  test = datasets.list_videos('davis16', str(tmp_path), 'test', check='all')
  assert [(r.name, len(r)) for r in test] == [('blackswan', 4), ('cows', 4)]
  assert datasets.list_videos('davis16', str(tmp_path / 'DAVIS_train'))[0].name == 'bear'


def test_flat_layout_last_flow_missing_reuses_previous(tmp_path):
  _flat_tree(str(tmp_path), ['bear'])
  os.remove(tmp_path / 'FLOW' / 'bear_00002.jpg')
  (r,) = datasets.list_videos('davis16', str(tmp_path))
  assert r.flow_paths[2] == r.flow_paths[1]


def test_youtubevos_palette_masks_merge(tmp_path):
  root = tmp_path / 'ytvos'
  _video_tree(root / 'train', ['003234408d', '0043f083b5'], frames_dir='JPEGImages', masks_dir='Annotations',
              flow_dir='FLOW', mask_kind='palette', labels=3)
  records = datasets.list_videos('youtubevos', str(root), 'train', check='all')
  assert [r.name for r in records] == ['0043f083b5', '003234408d']  # natural order: 43 < 3234408
  mask = images.read_mask(records[0].mask_paths[0])
  assert set(np.unique(mask)) == {0, 1} and mask.sum() == 3 * 24  # three objects merged


def test_fbms_and_ytobj_sparse_annotations(tmp_path):
  fbms = tmp_path / 'fbms'
  _video_tree(fbms / 'Testset', ['cars1', 'marple2'], frames_dir='JPEGImages', masks_dir='Annotations',
              flow_dir='FLOW', n=5, annotated={0, 4}, labels=2)
  records = datasets.list_videos('fbms', str(fbms), 'test', check='all')
  assert [r.annotated for r in records] == [[0, 4], [0, 4]]
  assert records[0].mask_paths[1] is None and len(records[0].flow_paths) == 5
  ytobj = tmp_path / 'ytobj'
  _video_tree(ytobj, ['aeroplane/0001', 'cat/0002'], frames_dir='JPEGImages', masks_dir='Annotations',
              flow_dir='FLOW', n=4, annotated={2})
  records = datasets.list_videos('ytobj', str(ytobj))
  assert [(r.name, r.annotated) for r in records] == [('aeroplane/0001', [2]), ('cat/0002', [2])]


def test_duts_layouts(tmp_path):
  for i in range(3):
    _jpg(str(tmp_path / 'DUTS-TR' / 'DUTS-TR-Image' / f'sun_{i}.jpg'))
    _mask(str(tmp_path / 'DUTS-TR' / 'DUTS-TR-Mask' / f'sun_{i}.png'))
  records = datasets.list_images('duts', str(tmp_path), 'train', check='all')
  assert [r.name for r in records] == ['sun_0', 'sun_1', 'sun_2']
  os.rename(tmp_path / 'DUTS-TR' / 'DUTS-TR-Image', tmp_path / 'DUTS-TR' / 'RGB')
  os.rename(tmp_path / 'DUTS-TR' / 'DUTS-TR-Mask', tmp_path / 'DUTS-TR' / 'GT')
  assert len(datasets.list_images('duts', str(tmp_path / 'DUTS-TR'))) == 3
  os.remove(tmp_path / 'DUTS-TR' / 'GT' / 'sun_1.png')
  with pytest.raises(DataError, match='sun_1.jpg.*no mask'):
    datasets.list_images('duts', str(tmp_path / 'DUTS-TR'))


# ------------------------------------------------------------------------------------------------ errors


def test_missing_flow_folder_names_the_flow_command(tmp_path):
  _video_tree(tmp_path, ['bear'], frames_dir='JPEGImages/480p', masks_dir='Annotations/480p', flow_dir='FLOW/480p')
  import shutil
  shutil.rmtree(tmp_path / 'FLOW')
  with pytest.raises(DataError, match=r'python main.py --mode=flow --input=.*JPEGImages/480p --output=.*FLOW/480p'):
    datasets.list_videos('davis16', str(tmp_path))
  _flat_tree(str(tmp_path / 'flat'), ['bear'])
  shutil.rmtree(tmp_path / 'flat' / 'FLOW')
  with pytest.raises(DataError, match=r'--mode=flow --input=.*flat/RGB --output=.*flat/FLOW'):
    datasets.list_videos('davis16', str(tmp_path / 'flat'))


def test_mismatched_names_and_counts(tmp_path):
  _flat_tree(str(tmp_path / 'a'), ['bear'])
  _mask(str(tmp_path / 'a' / 'GT' / 'bear_00009.png'))
  with pytest.raises(DataError, match='bear_00009.png.*no frame of the same name'):
    datasets.list_videos('davis16', str(tmp_path / 'a'))
  _flat_tree(str(tmp_path / 'b'), ['bear'], n=4)
  os.remove(tmp_path / 'b' / 'FLOW' / 'bear_00001.jpg')
  with pytest.raises(DataError, match='1 of 4 frames have no flow.*00001'):
    datasets.list_videos('davis16', str(tmp_path / 'b'))
  _flat_tree(str(tmp_path / 'c'), ['bear'])
  os.remove(tmp_path / 'c' / 'GT' / 'bear_00001.png')
  with pytest.raises(DataError, match='1 of 3 frames have no mask'):  # DAVIS is dense
    datasets.list_videos('davis16', str(tmp_path / 'c'))
  assert datasets.list_videos('fbms', str(tmp_path / 'c'))[0].mask_paths[1] is None  # FBMS is sparse


def test_size_mismatch_and_bad_masks(tmp_path):
  _flat_tree(str(tmp_path / 'a'), ['bear'])
  _jpg(str(tmp_path / 'a' / 'FLOW' / 'bear_00001.jpg'), size=(H + 2, W))
  datasets.list_videos('davis16', str(tmp_path / 'a'), check='first')  # frame 0 only
  with pytest.raises(DataError, match=r'bear_00001.jpg: the flow is 26x32.*frame .*is 24x32'):
    datasets.list_videos('davis16', str(tmp_path / 'a'), check='all')
  _flat_tree(str(tmp_path / 'b'), ['bear'])
  soft = np.tile(np.arange(W, dtype=np.uint8) * 8, (H, 1))
  Image.fromarray(soft).save(tmp_path / 'b' / 'GT' / 'bear_00000.png')
  with pytest.raises(DataError, match=r'bear_00000.png: mask with 32 grey levels.*neither binary nor palette'):
    datasets.list_videos('davis16', str(tmp_path / 'b'))
  _flat_tree(str(tmp_path / 'c'), ['bear'])
  with open(tmp_path / 'c' / 'GT' / 'bear_00000.png', 'wb') as f:
    f.write(b'\x89PNG broken')
  with pytest.raises(DataError, match='bear_00000.png: cannot'):
    datasets.list_videos('davis16', str(tmp_path / 'c'))


def test_unknown_layout_and_empty_folder(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match='not a known layout.*docs/data.md'):
    datasets.list_videos('davis16', str(tmp_path / 'empty'))
  with pytest.raises(DataError, match='does not exist'):
    datasets.list_videos('davis16', str(tmp_path / 'nowhere'))
  with pytest.raises(DataError, match="no 'val' split.*--mode=generate"):
    datasets.list_videos('synthetic', str(tmp_path / 'empty'), 'val')
  (tmp_path / 'e2' / 'RGB').mkdir(parents=True)
  with pytest.raises(DataError, match='RGB: no frames'):
    datasets.list_videos('davis16', str(tmp_path / 'e2'))


def test_tfds_builders_from_manual_dir(synthetic_root, tmp_path):
  from input_pipeline import tfds_builders
  builder = tfds_builders.prepare('synthetic', manual_dir=synthetic_root, data_dir=str(tmp_path / 'tfds'))
  (example,) = list(builder.as_dataset(split='val').as_numpy_iterator())
  assert example['name'] == b'val000' and example['frames'].shape == (3, 32, 32, 3)
  assert example['masks'].shape == (3, 32, 32, 1) and example['has_mask'].all()
  assert set(np.unique(example['masks'])) <= {0, 255}
  images_builder = tfds_builders.prepare('synthetic_images', manual_dir=synthetic_root, data_dir=str(tmp_path / 'tfds'))
  assert len(list(images_builder.as_dataset(split='train'))) == 3
