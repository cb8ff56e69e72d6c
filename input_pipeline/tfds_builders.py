"""TFDS builders over local folders (`manual_dir`, no download step) for every data set we read.

  builder = tfds_builders.prepare('davis16', manual_dir='/data/DAVIS', data_dir='/data/tfds')
  # (reads manual_dir through datasets.list_videos and writes TFRecords; no network)
  ds = builder.as_dataset(split='train')  # one example per video (videos) or per image (saliency)

Video examples: name, frame_names, frames [L,h,w,3] (JPEG), flows [L,h,w,3] (JPEG), masks [L,h,w,1] (PNG,
0/255; all zero where has_mask is False), has_mask [L]. Image examples: name, image, mask.
The trainer reads the folders directly (pipeline.py); these builders are for users of the TFDS ecosystem.
The builders skip TFDS registration (several may live side by side) and build their DatasetInfo
directly (`tfds.core.DatasetInfo(builder=self, ...)`), which works from any module.
"""

import numpy as np

from input_pipeline import datasets
from input_pipeline import images as image_io

_SPLITS = {
    'synthetic': ('train', 'val', 'test'),
    'davis16': ('train', 'val'),
    'youtubevos': ('train',),
    'fbms': ('train', 'test'),
    'ytobj': ('test',),
    'duts': ('train',),
    'synthetic_images': ('train',),
}


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _make_class(dataset: str):
  tfds = _tfds()
  is_video = dataset in datasets.VIDEO_DATASETS

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Local-folder builder; see the module docstring."""
    VERSION = tfds.core.Version('1.0.0')
    # No checksums file (nothing is downloaded); also avoids tfds locating this module's source through
    # importlib_resources, which etils needs and this stack does not install.
    code_path = None
    MANUAL_DOWNLOAD_INSTRUCTIONS = (f'Place the {dataset} data set in manual_dir in one of the layouts of '
                                    'docs/data.md (nothing is downloaded).')

    def _info(self):
      f = tfds.features
      if is_video:
        features = f.FeaturesDict({
            'name': f.Text(),
            'frame_names': f.Sequence(f.Text()),
            'frames': f.Sequence(f.Image(shape=(None, None, 3), encoding_format='jpeg')),
            'flows': f.Sequence(f.Image(shape=(None, None, 3), encoding_format='jpeg')),
            'masks': f.Sequence(f.Image(shape=(None, None, 1), encoding_format='png')),
            'has_mask': f.Sequence(np.bool_),
        })
      else:
        features = f.FeaturesDict({
            'name': f.Text(),
            'image': f.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'mask': f.Image(shape=(None, None, 1), encoding_format='png'),
        })
      return tfds.core.DatasetInfo(builder=self, description=f'{dataset} read from a local folder (gsa-jax).',
                                   features=features)

    def _split_generators(self, dl_manager):
      root = str(dl_manager.manual_dir)
      return {split: self._generate_examples(root, split) for split in _SPLITS[dataset]}

    def _generate_examples(self, root, split):
      if is_video:
        for record in datasets.list_videos(dataset, root, split):
          frames = [image_io.read_rgb(p) for p in record.frame_paths]
          masks = [image_io.read_mask(p, multi_object=True)[..., None] * 255 if p is not None
                   else np.zeros(frames[i].shape[:2] + (1,), np.uint8) for i, p in enumerate(record.mask_paths)]
          yield record.name, {
              'name': record.name, 'frame_names': list(record.frame_names), 'frames': frames,
              'flows': [image_io.read_rgb(p) for p in record.flow_paths], 'masks': masks,
              'has_mask': [p is not None for p in record.mask_paths]}
      else:
        for record in datasets.list_images(dataset, root, split):
          yield record.name, {'name': record.name, 'image': image_io.read_rgb(record.image_path),
                              'mask': image_io.read_mask(record.mask_path)[..., None] * 255}

  _Builder.__name__ = _Builder.__qualname__ = ''.join(p.title() for p in dataset.split('_')) + 'Folder'
  _Builder.name = f'gsa_{dataset}'
  return _Builder


_CLASSES: dict = {}


def builder_class(dataset: str):
  if dataset not in _SPLITS:
    raise ValueError(f'Unknown data set {dataset!r}; choose one of {", ".join(_SPLITS)}.')
  if dataset not in _CLASSES:
    _CLASSES[dataset] = _make_class(dataset)
  return _CLASSES[dataset]


def make_builder(dataset: str, *, manual_dir: str, data_dir: str):
  """A builder of `dataset` reading `manual_dir` and writing under `data_dir`."""
  del manual_dir  # given to download_and_prepare (see prepare)
  return builder_class(dataset)(data_dir=data_dir)


def prepare(dataset: str, *, manual_dir: str, data_dir: str):
  """Builds the TFRecords (no network) and returns the builder."""
  tfds = _tfds()
  builder = make_builder(dataset, manual_dir=manual_dir, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder
