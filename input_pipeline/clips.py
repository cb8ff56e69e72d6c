"""The 'clips' training input (SOLV): 2N + 1 consecutive frames around every frame of every video, no labels.

One example per frame of the training videos (that frame is the clip's centre), as the released YTVIS-19
loader: frames t-N..t+N; a frame outside the video is all zeros (the mean colour after normalisation) and
0 in `frame_mask`. Each frame: black borders removed on its own (data.clip_borders: a row / column whose
mean over the other axis and channels is < 1 of 255, counted from each edge), resized to data.clip_size
(h, w) exactly, aspect not kept (bilinear, antialiased, as PIL's; JPEGs decoded with the accurate IDCT, as
PIL does), ImageNet-normalised. No augmentation.

Videos: data.train names the set. 'synthetic_multi' and 'davis17' (DAVIS-2017 layout, split 'train'),
'ytvis' (YouTube-VIS layout, the splits data.ytvis_splits merged: released train + valid + test), or any
binary-mask video set of input_pipeline.datasets (frames only are read).

Order and randomness as input_pipeline.pipeline: global example g of step s on process p is
g = (s P + p) B + j; epoch g // N visits a permutation (index_shuffle keyed by (seed, epoch)) of the N
centre frames, so start_step = s resumes exactly.

Batches: frames [b, F, h, w, 3] float32, frame_mask [b, F] float32 (1 real, 0 padding), index [b] int64
(the centre frame's global id; dropped unless with_indices).
"""

from collections.abc import Sequence

from input_pipeline import datasets
from input_pipeline import frames as frames_lib
from input_pipeline import images as image_io
from input_pipeline import instances

CLIP_DATASETS = ('synthetic_multi', 'davis17', 'ytvis')
_SALT = 21


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def clip_videos(data_config) -> list[Sequence[str]]:
  """The frame paths of every training video (data.train at data.train_root)."""
  name, root = data_config.train, data_config.train_root
  check = data_config.check
  if name in ('synthetic_multi', 'davis17'):
    return [r.frame_paths for r in instances.list_davis17(root, 'train', check=check)]
  if name == 'ytvis':
    videos = []
    for split in data_config.ytvis_splits:
      videos += [r.frame_paths for r in instances.list_youtube_vis(root, split, check='none')]
    return videos
  return [r.frame_paths for r in datasets.list_videos(name, root, 'train', check='none')]


def num_examples(data_config) -> int:
  """One example per frame of the training videos."""
  return sum(len(v) for v in clip_videos(data_config))


def remove_black_borders(image):
  """float [h, w, 3] in 0..255 -> the image without its black border rows and columns (released rule;
  an image that is border everywhere is kept whole)."""
  tf = _tf()
  rows = tf.reduce_mean(image, axis=[1, 2]) >= 1.0                                   # [h] content rows
  cols = tf.reduce_mean(image, axis=[0, 2]) >= 1.0                                   # [w]
  h, w = tf.shape(image)[0], tf.shape(image)[1]

  def span(keep, size):
    first = tf.cast(tf.argmax(tf.cast(keep, tf.int32)), tf.int32)
    last = size - tf.cast(tf.argmax(tf.cast(keep[::-1], tf.int32)), tf.int32)
    return first, last

  top, bottom = span(rows, h)
  left, right = span(cols, w)
  has_content = tf.reduce_any(rows) & tf.reduce_any(cols)
  return tf.cond(has_content, lambda: image[top:bottom, left:right], lambda: image)


def build_clip_dataset(data_config, *, batch_size: int, seed: int, start_step: int = 0, process_index: int = 0,
                       process_count: int = 1):
  """The tf.data.Dataset of clip batches (see the module doc): infinite, batched, prefetched."""
  tf = _tf()
  videos = clip_videos(data_config)
  paths = [p for v in videos for p in v]
  if not paths:
    raise image_io.DataError(f'data.train={data_config.train!r} at {data_config.train_root!r}: no training frames.')
  starts, lengths, video_of = [], [], []
  for v, frames in enumerate(videos):
    starts.append(len(video_of))
    lengths.append(len(frames))
    video_of += [v] * len(frames)
  half = int(data_config.clip_half_window)
  height, width = (int(s) for s in data_config.clip_size)
  borders = bool(data_config.clip_borders)
  n, b = len(paths), int(batch_size)
  p_count, p_index = int(process_count), int(process_index)
  t_paths = tf.constant(paths)
  t_starts, t_lengths = tf.constant(starts, tf.int64), tf.constant(lengths, tf.int64)
  t_video = tf.constant(video_of, tf.int64)

  def read(fid):
    data = tf.io.read_file(tf.gather(t_paths, fid))
    image = tf.cond(tf.io.is_jpeg(data),  # the accurate IDCT decodes JPEGs as PIL does (the released reader)
                    lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
                    lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    image = tf.cast(image, tf.float32)
    image.set_shape([None, None, 3])
    if borders:
      image = remove_black_borders(image)
    image = tf.image.resize(image, [height, width], method='bilinear', antialias=True)
    return frames_lib.normalise_rgb(image)

  def load(local):
    step, j = local // b, local % b
    g = (step * p_count + p_index) * b + j
    epoch, pos = g // n, g % n
    fid = tf.random.experimental.index_shuffle(pos, tf.stack([tf.constant(seed, tf.int64), epoch * 16 + _SALT]),
                                               n - 1)
    v = tf.gather(t_video, fid)
    start, length = tf.gather(t_starts, v), tf.gather(t_lengths, v)
    t = fid - start
    frames, mask = [], []
    for offset in range(-half, half + 1):
      k = t + offset
      inside = (k >= 0) & (k < length)
      frames.append(tf.cond(inside, lambda k=k: read(start + k),
                            lambda: tf.zeros([height, width, 3], tf.float32)))
      mask.append(tf.cast(inside, tf.float32))
    return {'frames': tf.stack(frames), 'frame_mask': tf.stack(mask), 'index': fid}

  parallel = int(data_config.num_parallel_calls)
  ds = tf.data.Dataset.range(int(start_step) * b, 2 ** 62)
  load = tf.autograph.experimental.do_not_convert(load)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE if parallel < 0 else parallel, deterministic=True)
  ds = ds.batch(b, drop_remainder=True)
  return ds.prefetch(int(data_config.prefetch) or tf.data.AUTOTUNE)
