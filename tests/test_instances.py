"""Instance-id masks (input_pipeline/instances.py) and multi-object synthetic videos (synthetic_multi.py)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from gsa_jax import multi_object as mo
from input_pipeline import images as image_io
from input_pipeline import instances
from input_pipeline import synthetic_multi as sm
from input_pipeline.images import DataError


# ------------------------------------------------------------------------------------------------ colours


def test_davis_palette_known_colours():
  palette = instances.davis_palette()
  assert palette.shape == (256, 3) and palette.dtype == np.uint8
  expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 5: (128, 0, 128),
              6: (0, 128, 128), 7: (128, 128, 128), 8: (64, 0, 0), 9: (192, 0, 0), 255: (224, 224, 192)}
  for i, colour in expected.items():
    assert tuple(palette[i]) == colour, i
  assert len({tuple(c) for c in palette}) == 256


def test_object_colours_and_overlay():
  colours = instances.object_colours([0, 1, 300, 301, 300])
  assert tuple(colours[1]) == (128, 0, 0) and tuple(colours[0]) == (0, 0, 0)
  assert np.array_equal(colours[2], colours[4]) and not np.array_equal(colours[2], colours[3])
  assert colours[2:].min() >= 32  # ids past the palette are never black
  rgb = np.full((4, 5, 3), 200, np.uint8)
  ids = np.zeros((4, 5), np.int64)
  ids[1, 2] = 1
  out = instances.overlay(rgb, ids, alpha=0.5)
  assert np.array_equal(out[0, 0], rgb[0, 0]) and tuple(out[1, 2]) == (164, 100, 100)
  with pytest.raises(DataError, match='differ in size'):
    instances.overlay(rgb, ids[:3])


# ------------------------------------------------------------------------------------------------ reading, writing


def test_write_read_round_trip(tmp_path):
  ids = np.arange(256, dtype=np.int64).reshape(16, 16)
  path = str(tmp_path / 'a.png')
  instances.write_instance_mask(path, ids)
  with Image.open(path) as im:
    assert im.mode == 'P'
    assert im.getpalette()[3:6] == [128, 0, 0]
  assert np.array_equal(instances.read_instance_mask(path), ids)
  assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]  # no temporary file left


def test_write_rejects_ids_outside_the_palette(tmp_path):
  path = str(tmp_path / 'big.png')
  with pytest.raises(DataError, match=r'big\.png: ids 0\.\.256 do not fit a palette PNG'):
    instances.write_instance_mask(path, np.array([[0, 256]]))
  with pytest.raises(DataError, match='neg.png: ids -1'):
    instances.write_instance_mask(str(tmp_path / 'neg.png'), np.array([[0, -1]]))
  with pytest.raises(DataError, match='must be integers'):
    instances.write_instance_mask(str(tmp_path / 'f.png'), np.array([[0.5, 1.0]]))
  assert not os.listdir(tmp_path)


def test_read_grey_16bit_and_rgb_masks(tmp_path):
  ids = np.array([[0, 1, 2], [3, 255, 7]], np.uint8)
  Image.fromarray(ids, mode='L').save(tmp_path / 'grey.png')
  assert np.array_equal(instances.read_instance_mask(str(tmp_path / 'grey.png')), ids)
  big = np.array([[0, 300], [1000, 2]], np.uint16)
  Image.fromarray(big).save(tmp_path / 'deep.png')
  assert np.array_equal(instances.read_instance_mask(str(tmp_path / 'deep.png')), big)
  Image.fromarray(instances.davis_palette()[ids]).save(tmp_path / 'rgb.png')  # an id map saved as colours
  assert np.array_equal(instances.read_instance_mask(str(tmp_path / 'rgb.png')), ids)
  odd = np.zeros((2, 2, 3), np.uint8)
  odd[0, 0] = (1, 2, 3)
  Image.fromarray(odd).save(tmp_path / 'odd.png')
  with pytest.raises(DataError, match=r'odd\.png: colour mask with 1 colour\(s\) outside the DAVIS palette \(\(1, 2'):
    instances.read_instance_mask(str(tmp_path / 'odd.png'))
  with pytest.raises(DataError, match=r'm\.jpg: a JPEG cannot hold instance ids'):
    instances.read_instance_mask(str(tmp_path / 'm.jpg'))
  with pytest.raises(DataError, match='does not exist'):
    instances.read_instance_mask(str(tmp_path / 'missing.png'))


# ------------------------------------------------------------------------------------------------ listers


def _davis17(root, seqs: dict[str, int], *, masks: str = 'Annotations_unsupervised', size=(12, 16),
             split: str = 'val', year: str = '2017') -> dict[str, np.ndarray]:
  gts = {}
  rng = np.random.default_rng(0)
  for seq, n in seqs.items():
    frames = root / 'JPEGImages' / '480p' / seq
    frames.mkdir(parents=True)
    gts[seq] = rng.integers(0, 4, (n,) + size)
    for t in range(n):
      image_io.write_jpg(str(frames / f'{t:05d}.jpg'), np.zeros(size + (3,), np.uint8))
      instances.write_instance_mask(str(root / masks / '480p' / seq / f'{t:05d}.png'), gts[seq][t])
  sets = root / 'ImageSets' / year
  sets.mkdir(parents=True, exist_ok=True)
  (sets / f'{split}.txt').write_text(''.join(s + '\n' for s in seqs))
  return gts


def test_list_davis17_records_and_scoring(tmp_path):
  gts = _davis17(tmp_path, {'bike': 3, 'cat': 2})
  os.remove(tmp_path / 'Annotations_unsupervised' / '480p' / 'cat' / '00001.png')
  records = instances.list_davis17(str(tmp_path), 'val', check='all')
  assert [r.name for r in records] == ['bike', 'cat']
  bike, cat = records
  assert bike.multi_object and bike.frame_names == ('00000', '00001', '00002') and bike.flow_paths == ()
  assert cat.mask_paths[1] is None and cat.annotated == [0]
  gt = instances.ground_truth(records)
  assert list(gt['cat']) == ['00000']
  assert np.array_equal(gt['bike']['00002'], gts['bike'][2])
  folder = instances.InstanceMaskFolder(str(tmp_path / 'Annotations_unsupervised' / '480p'))
  assert sorted(folder) == ['bike', 'cat'] and np.array_equal(folder['bike']['00001'], gts['bike'][1])
  results = mo.davis17(folder, gt)  # the ground truth scored against itself
  assert results['G'] == 1.0 and results['num_sequences'] == 2


def test_list_davis17_errors(tmp_path):
  _davis17(tmp_path, {'bike': 2})
  with pytest.raises(DataError, match=r'ImageSets/2017/train\.txt: the sequence list of split .train. is missing'):
    instances.list_davis17(str(tmp_path), 'train')
  with pytest.raises(DataError, match='the semi-supervised annotations are missing'):
    instances.list_davis17(str(tmp_path), 'val', task='semi-supervised')
  with pytest.raises(DataError, match='Unknown DAVIS-2017 split'):
    instances.list_davis17(str(tmp_path), 'test')
  instances.write_instance_mask(str(tmp_path / 'Annotations_unsupervised' / '480p' / 'bike' / '00009.png'),
                                np.zeros((12, 16), np.uint8))
  with pytest.raises(DataError, match=r'00009\.png: a mask with no frame of the same name'):
    instances.list_davis17(str(tmp_path), 'val')
  os.remove(tmp_path / 'Annotations_unsupervised' / '480p' / 'bike' / '00009.png')
  instances.write_instance_mask(str(tmp_path / 'Annotations_unsupervised' / '480p' / 'bike' / '00001.png'),
                                np.zeros((10, 16), np.uint8))
  instances.list_davis17(str(tmp_path), 'val')  # check='first' looks at the first annotated frame only
  with pytest.raises(DataError, match=r'00001\.png: the mask is 10x16 \(h x w\) but its frame .* is 12x16'):
    instances.list_davis17(str(tmp_path), 'val', check='all')


def test_list_davis17_test_split_reads_imagesets_2019(tmp_path):
  _davis17(tmp_path, {'dog': 2}, split='test-dev', year='2019')
  (tmp_path / 'ImageSets' / '2019' / 'test-dev.txt').write_text('dog\n')
  records = instances.list_davis17(str(tmp_path), 'test-dev')
  assert [r.name for r in records] == ['dog']


def test_list_youtube_vis(tmp_path):
  split = tmp_path / 'train'
  for video, n in (('b0f', 3), ('a1c', 2)):
    (split / 'JPEGImages' / video).mkdir(parents=True)
    for t in range(n):
      image_io.write_jpg(str(split / 'JPEGImages' / video / f'{5 * t:05d}.jpg'), np.zeros((8, 8, 3), np.uint8))
      if t != 1:
        instances.write_instance_mask(str(split / 'Annotations' / video / f'{5 * t:05d}.png'),
                                      np.full((8, 8), t, np.uint8))
  records = instances.list_youtube_vis(str(tmp_path), 'train')
  assert [r.name for r in records] == ['a1c', 'b0f']
  assert records[1].frame_names == ('00000', '00005', '00010') and records[1].mask_paths[1] is None
  names_json = tmp_path / 'train.json'
  names_json.write_text(json.dumps({'videos': [{'file_names': ['b0f/00000.jpg']}, {'file_names': ['a1c/00000.jpg']}]}))
  names = instances.read_youtube_vis_names(str(names_json))
  assert [r.name for r in instances.list_youtube_vis(str(tmp_path), 'train', videos=names)] == ['b0f', 'a1c']
  with pytest.raises(DataError, match='no frame folder for 1 requested video'):
    instances.list_youtube_vis(str(tmp_path), 'train', videos=['zzz'])
  with pytest.raises(DataError, match='JPEGImages: missing'):
    instances.list_youtube_vis(str(tmp_path), 'valid')


# ------------------------------------------------------------------------------------------------ synthetic videos


def test_synthetic_ids_match_rendered_colours():
  video = sm.make_video('train', 0, seed=3, flat_colours=True, num_objects=(3, 4), letterbox=0.0)
  rgb = np.clip(np.round(video['rgb'] * 255), 0, 255).astype(np.uint8)
  ids = video['ids']
  codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
  colour_of = {}
  for i in np.unique(ids):
    colours = np.unique(codes[ids == i])
    assert colours.size == 1, f'id {i} has {colours.size} colours'  # every pixel of an id shows its object
    colour_of[int(i)] = int(colours[0])
  assert len(set(colour_of.values())) == len(colour_of)  # and no two ids share a colour
  assert set(colour_of) == set(range(video['info']['num_objects'] + 1))


def test_synthetic_occlusion_follows_depth_order():
  overlaps = 0
  for index in range(4):
    video = sm.make_video('train', index, letterbox=0.0, num_objects=4, num_frames=8)
    depth = video['info']['depth_order']  # ids back to front
    coverage = video['coverage']  # [t, k, h, w], each object's own shape
    expected = np.zeros(video['ids'].shape, np.int64)
    for object_id in depth:  # paint back to front: the front object wins
      expected = np.where(coverage[:, object_id - 1], object_id, expected)
    assert np.array_equal(video['ids'], expected)
    overlaps += int((coverage.sum(1) > 1).sum())
  assert overlaps > 100  # the objects do occlude each other


def test_synthetic_set_layout_borders_and_determinism(tmp_path):
  settings = dict(num_train_videos=2, num_val_videos=1, num_frames=(4, 6), letterbox=1.0, seed=5)
  manifest = sm.generate(str(tmp_path / 'a'), **settings)
  sm.generate(str(tmp_path / 'b'), **settings)
  sm.generate(str(tmp_path / 'c'), **{**settings, 'seed': 6})

  def files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
      for n in names:
        if n != sm.MANIFEST:
          with open(os.path.join(dirpath, n), 'rb') as f:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = f.read()
    return out

  a, b, c = files(tmp_path / 'a'), files(tmp_path / 'b'), files(tmp_path / 'c')
  assert a == b and a != c
  records = instances.list_davis17(str(tmp_path / 'a'), 'train', check='all')
  assert [r.name for r in records] == ['train000', 'train001']
  assert [r.name for r in instances.list_davis17(str(tmp_path / 'a'), 'val')] == ['val000']
  for record in records:
    info = manifest['videos'][record.name]
    assert len(record) == info['num_frames'] and len(record.flow_paths) == len(record)
    bars = info['bars']
    again = sm.make_video('train', int(record.name[-3:]), **settings)
    for t in range(len(record)):
      ids = instances.read_instance_mask(record.mask_paths[t])
      assert np.array_equal(ids, again['ids'][t])  # the files hold the exact rendered ids
      assert ids.max() <= info['num_objects']
      rgb = image_io.read_rgb(record.frame_paths[t])
      assert rgb.shape[:2] == (info['height'], info['width'])
      # SOLV's border rule (a row / column is border while its mean is < 1) finds exactly the bars.
      rows, cols = rgb.mean(axis=(1, 2)), rgb.mean(axis=(0, 2))
      found = [int(np.argmax(v >= 1)) for v in (rows, rows[::-1], cols, cols[::-1])]
      assert found == [bars['top'], bars['bottom'], bars['left'], bars['right']]
      inner = np.zeros(ids.shape, bool)
      inner[bars['top']:ids.shape[0] - bars['bottom'], bars['left']:ids.shape[1] - bars['right']] = True
      assert not ids[~inner].any() and not rgb[~inner].any()
    assert sum(bars.values()) > 0


def test_synthetic_settings_errors(tmp_path):
  with pytest.raises(ValueError, match='unknown settings'):
    sm.generate(str(tmp_path / 'x'), num_videos=3)
  with pytest.raises(ValueError, match='multiples of 8'):
    sm.make_video('train', 0, bar_sizes=(4,))
  with pytest.raises(ValueError, match='leaves less than 16 px'):
    sm.make_video('train', 0, frame_sizes=((32, 32),), bar_sizes=(16,))
  (tmp_path / 'keep').mkdir()
  (tmp_path / 'keep' / 'file.txt').write_text('x')
  with pytest.raises(DataError, match='already exists and is not empty'):
    sm.generate(str(tmp_path / 'keep'), num_train_videos=1, num_val_videos=0)
