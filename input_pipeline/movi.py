"""MOVi (Kubric) TFDS directories -> the DAVIS-2017 layout that the instance-mask models read ('davis17').

  python -m input_pipeline.movi --tfds_dir=/data/tensorflow_datasets/movi_e/128x128/1.0.0 \\
      --output=/data/movi_e_davis [--splits=train,validation] [--max_videos=N]

MOVi is published as TFDS datasets. This reads a locally prepared one with `tfds.builder_from_directory`
(nothing is downloaded): each example's 'video' [T, H, W, 3] uint8 and 'segmentations' [T, H, W, 1] (0 the
background, 1.. the objects, one id per object over the video). It writes, under --output:

  JPEGImages/480p/<video>/<t:05d>.png              the frames, losslessly (PNG)
  Annotations_unsupervised/480p/<video>/<t:05d>.png  the segment ids as DAVIS-palette PNGs
  ImageSets/2017/train.txt, val.txt                  TFDS 'train' -> train, 'validation' (or 'test') -> val

Video names are the example's metadata/video_name when it has one, else <split><index:05d>. The folder
'480p' is only the layout's name; the frames keep MOVi's resolution. The output is written beside --output
and renamed into place at the end, so a failure leaves nothing half-written. Then, for SOLV on MOVi-E:
`--config=configs/solv_movi.py --config.data.train_root=<output>` (and test_root).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from input_pipeline import images as image_io
from input_pipeline import instances

SPLIT_NAMES = {'train': 'train', 'validation': 'val', 'test': 'val'}


class MoviError(image_io.DataError):
  """A MOVi TFDS directory that cannot be exported as asked; the message names the folder or split."""


def _builder(tfds_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(tfds_dir, 'dataset_info.json')):
    raise MoviError(f'{tfds_dir}: not a prepared TFDS dataset directory (no dataset_info.json). Pass the folder '
                    'of one version, e.g. <data_dir>/movi_e/128x128/1.0.0.')
  builder = tfds.builder_from_directory(tfds_dir)
  features = builder.info.features
  missing = [k for k in ('video', 'segmentations') if k not in features]
  if missing:
    raise MoviError(f'{tfds_dir}: the dataset has no {", ".join(missing)} feature (features: '
                    f'{", ".join(sorted(features.keys()))}); it is not a MOVi dataset.')
  return builder


def _video_name(example: dict, split: str, index: int) -> str:
  meta = example.get('metadata')
  name = meta.get('video_name') if isinstance(meta, dict) else None
  if isinstance(name, np.ndarray):
    name = name.item()
  if isinstance(name, bytes):
    name = name.decode()
  return str(name) if name else f'{split}{index:05d}'


def export(tfds_dir: str, output: str, *, splits: Sequence[str] = ('train', 'validation'),
           max_videos: int = -1) -> dict[str, int]:
  """Writes the DAVIS-2017 layout of `splits` of the MOVi dataset at `tfds_dir` into `output` (module doc);
  returns {DAVIS split: number of videos}."""
  builder = _builder(tfds_dir)
  available = set(builder.info.splits.keys())
  for split in splits:
    if split not in SPLIT_NAMES:
      raise MoviError(f'--splits: unknown MOVi split {split!r}; choose from {", ".join(SPLIT_NAMES)}.')
    if split not in available:
      raise MoviError(f'{tfds_dir} has no split {split!r} (it has {", ".join(sorted(available))}).')
  counts: dict[str, int] = {}
  with image_io.atomic_output_dir(output) as tmp:
    lists: dict[str, list[str]] = {}
    for split in splits:
      names = lists.setdefault(SPLIT_NAMES[split], [])
      dataset = builder.as_dataset(split=split, shuffle_files=False)
      if max_videos > 0:
        dataset = dataset.take(max_videos)
      for index, example in enumerate(dataset.as_numpy_iterator()):
        name = _video_name(example, split, index)
        if name in names:
          raise MoviError(f'{tfds_dir}: video name {name!r} appears twice in split {split!r}.')
        _write_video(tmp, name, example['video'], example['segmentations'])
        names.append(name)
    for davis_split, names in lists.items():
      _write_list(os.path.join(tmp, 'ImageSets', '2017', f'{davis_split}.txt'), names)
      counts[davis_split] = len(names)
  return counts


def _write_video(root: str, name: str, video: np.ndarray, segmentations: np.ndarray) -> None:
  video, seg = np.asarray(video), np.asarray(segmentations)
  if video.ndim != 4 or video.shape[-1] != 3 or seg.shape[:3] != video.shape[:3]:
    raise MoviError(f'video {name!r}: expected video [T, H, W, 3] and segmentations [T, H, W, 1] of the same '
                    f'T, H, W; got {video.shape} and {seg.shape}.')
  frames_dir = os.path.join(root, 'JPEGImages', '480p', name)
  masks_dir = os.path.join(root, 'Annotations_unsupervised', '480p', name)
  os.makedirs(frames_dir)
  for t in range(video.shape[0]):
    Image.fromarray(video[t].astype(np.uint8)).save(os.path.join(frames_dir, f'{t:05d}.png'))
    instances.write_instance_mask(os.path.join(masks_dir, f'{t:05d}.png'), seg[t, ..., 0].astype(np.int64))


def _write_list(path: str, names: Iterable[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(f'{n}\n' for n in names))


def main(argv: Sequence[str] | None = None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--tfds_dir', required=True, help='a prepared MOVi TFDS version folder')
  parser.add_argument('--output', required=True, help='the DAVIS-2017 layout folder to write (must not exist)')
  parser.add_argument('--splits', default='train,validation', help='TFDS splits, comma-separated')
  parser.add_argument('--max_videos', type=int, default=-1, help='at most this many videos per split')
  args = parser.parse_args(argv)
  try:
    counts = export(args.tfds_dir, args.output, splits=[s for s in args.splits.split(',') if s],
                    max_videos=args.max_videos)
  except image_io.DataError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {args.output}: ' + ', '.join(f'{k} {v} videos' for k, v in counts.items()))


if __name__ == '__main__':
  main()
