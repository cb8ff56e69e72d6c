"""MOVi TFDS directories -> the DAVIS-2017 layout: a tiny TFDS directory written here with MOVi's feature spec
(video, segmentations, metadata/video_name), exported and read back by the 'davis17' reader."""

import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from input_pipeline import instances
from input_pipeline import movi

T, H, W = 3, 16, 24


class _TinyMovi(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Two splits of two videos each, with MOVi's feature names and types."""
  VERSION = tfds.core.Version('1.0.0')
  name = 'tiny_movi'

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'video': tfds.features.Video(shape=(T, H, W, 3)),
        'segmentations': tfds.features.Sequence(tfds.features.Image(shape=(H, W, 1)), length=T),
        'metadata': {'video_name': tfds.features.Text()},
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(0), 'validation': self._generate_examples(1)}

  def _generate_examples(self, seed):
    rng = np.random.default_rng(seed)
    for i in range(2):
      video = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
      seg = rng.integers(0, 4, (T, H, W, 1), dtype=np.uint8)
      yield f'{seed}_{i}', {'video': video, 'segmentations': seg, 'metadata': {'video_name': f'v{seed}{i}'}}


@pytest.fixture(scope='module')
def tiny_movi(tmp_path_factory):
  builder = _TinyMovi(data_dir=str(tmp_path_factory.mktemp('tfds')))
  builder.download_and_prepare()
  return builder


def test_export_reads_back_as_davis17(tiny_movi, tmp_path):
  out = str(tmp_path / 'movi_davis')
  counts = movi.export(tiny_movi.data_dir, out)
  assert counts == {'train': 2, 'val': 2}
  records = instances.list_davis17(out, 'val', check='all')
  want = {e['metadata']['video_name'].decode(): e
          for e in tiny_movi.as_dataset(split='validation', shuffle_files=False).as_numpy_iterator()}
  assert sorted(r.name for r in records) == sorted(want) == ['v10', 'v11']
  for record in records:
    example = want[record.name]
    assert len(record.frame_paths) == T
    for t, path in enumerate(record.frame_paths):
      np.testing.assert_array_equal(np.asarray(Image.open(path).convert('RGB')), example['video'][t])
    for t, path in enumerate(record.mask_paths):
      np.testing.assert_array_equal(instances.read_instance_mask(path), example['segmentations'][t, ..., 0])


def test_errors_name_the_folder_and_nothing_is_left_half_written(tiny_movi, tmp_path):
  with pytest.raises(movi.MoviError, match='no dataset_info.json'):
    movi.export(str(tmp_path), str(tmp_path / 'a'))
  with pytest.raises(movi.MoviError, match="no split 'test'"):
    movi.export(tiny_movi.data_dir, str(tmp_path / 'b'), splits=('test',))
  assert not os.path.exists(tmp_path / 'b')
  out = str(tmp_path / 'c')
  assert movi.export(tiny_movi.data_dir, out, splits=('train',), max_videos=1) == {'train': 1}
  with pytest.raises(instances.DataError, match='not empty'):
    movi.export(tiny_movi.data_dir, out)
