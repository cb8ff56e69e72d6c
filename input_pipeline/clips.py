"""The 'clips' training input (SOLV, Betrayed by Attention): clips of F = 2N + 1 frames around every frame of
every video, no labels.

One example per frame of the training videos (that frame is the clip's centre), as SOLV's released YTVIS-19
loader: frames t - N s .. t + N s, N = data.clip_half_window, s = data.clip_stride (1 = consecutive). A clip that
does not fit in its video (data.clip_fit):
  'pad'     a frame outside the video is all zeros (the mean colour after normalisation) and 0 in `frame_mask`
            (SOLV);
  'shrink'  Betrayed by Attention's released rule: the stride of a video of L frames falls while 2 N s + 1 >= L
            (so to floor((L - 2) / 2N), not below 0: a 3-frame video gets stride 0 for N = 1, as released), and
            the centre is clamped into [N s, L - 1 - N s]; every frame is real.
The released Betrayed by Attention loader instead draws a video uniformly for every example (virtual length
10000) and a centre uniformly in [N s, L - 1 - N s]; here every frame of every video is one example per epoch
(frames near the ends clamped), so long videos weigh more and the end frames are centres more often.

Each frame: black borders removed on its own (data.clip_borders: a row / column whose mean over the other axis
and channels is < 1 of 255, counted from each edge), resized to data.clip_size (h, w) exactly, aspect not kept
(data.clip_antialias: True = bilinear, antialiased, as PIL's (SOLV); False = cv2 INTER_LINEAR on float images,
half-pixel, no antialiasing (Betrayed by Attention)); JPEGs decoded with the accurate IDCT (as PIL and cv2 do).
data.clip_augment: 'none' (SOLV) | 'betrayed' (grayscale, colour jitter, blur: input_pipeline.clip_augment, one
draw per clip, the same for its frames, a function of (seed, g) for global example g). Then ImageNet-normalised.

Videos: data.train names the set. 'synthetic_multi' and 'davis17' (DAVIS-2017 layout, split 'train'),
'ytvis' (YouTube-VIS layout, the splits data.ytvis_splits merged: released train + valid + test), or any
binary-mask video set of input_pipeline.datasets (frames only are read).

Order and randomness as input_pipeline.pipeline: global example g of step s on process p is
g = (s P + p) B + j; epoch g // N visits a permutation (index_shuffle keyed by (seed, epoch)) of the N
centre frames, so start_step = s resumes exactly (augmentation included).

Batches: frames [b, F, h, w, 3] float32, frame_mask [b, F] float32 (1 real, 0 padding), index [b] int64
(the example's frame, its global id: the centre before 'shrink' clamps it; dropped unless with_indices).
"""

from collections.abc import Sequence

from gsa_jax import errors
from input_pipeline import clip_augment
from input_pipeline import datasets
from input_pipeline import frames as frames_lib
from input_pipeline import images as image_io
from input_pipeline import instances

CLIP_DATASETS = ('synthetic_multi', 'davis17', 'ytvis')
CLIP_FITS = ('pad', 'shrink')
CLIP_AUGMENTS = ('none', 'betrayed')
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


def clip_config_problems(data_config) -> list[str]:
  """Every problem of the clip fields (stride, fit, augmentation), each naming its field; [] when valid."""
  d = data_config
  problems = []
  if int(d.clip_half_window) < 0:
    problems.append(f'data.clip_half_window={d.clip_half_window} must be >= 0.')
  if int(d.clip_stride) < 1:
    problems.append(f'data.clip_stride={d.clip_stride} must be >= 1 (1 = consecutive frames).')
  if d.clip_fit not in CLIP_FITS:
    problems.append(f'data.clip_fit={d.clip_fit!r} must be one of {CLIP_FITS}.')
  if d.clip_augment not in CLIP_AUGMENTS:
    problems.append(f'data.clip_augment={d.clip_augment!r} must be one of {CLIP_AUGMENTS}.')
  if d.clip_augment == 'betrayed':
    kh, kw = clip_augment.blur_kernel_size(*(int(s) for s in d.clip_size))
    if kh // 2 >= int(d.clip_size[0]) or kw // 2 >= int(d.clip_size[1]):
      problems.append(f'data.clip_size={tuple(d.clip_size)} is too small for the blur kernel {kh}x{kw}.')
  return problems


def check_clip_config(data_config) -> None:
  """Raises ConfigError naming every bad clip field (clip_config_problems)."""
  problems = clip_config_problems(data_config)
  if problems:
    raise errors.ConfigError(' '.join(problems))


def resize_bilinear_cv2(image, size: tuple[int, int]):
  """float [h, w, c] -> [size[0], size[1], c] as cv2.resize(INTER_LINEAR) of a float image: half-pixel
  centres, source coordinate (dst + 0.5) in / out - 0.5 and its fraction computed in float64, clamped to the edge
  pixels, no antialiasing, the two taps blended in float32 (tf.image.resize's bilinear computes the coordinate in
  float32: 7.6e-5 of the value range off at 720 x 1280 -> 192 x 384 on random images)."""
  tf = _tf()

  def taps(in_size, out_size):
    scale = 1.0 / (float(out_size) / tf.cast(in_size, tf.float64))  # cv2: 1 / (out / in)
    coord = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale - 0.5
    low = tf.floor(coord)
    frac = tf.cast(coord - low, tf.float32)
    low = tf.cast(low, tf.int32)
    last = tf.cast(in_size, tf.int32) - 1
    frac = tf.where((low < 0) | (low >= last), tf.zeros_like(frac), frac)
    low = tf.clip_by_value(low, 0, last)
    return low, tf.minimum(low + 1, last), frac

  height, width = (int(s) for s in size)
  shape = tf.shape(image)
  y0, y1, fy = taps(shape[0], height)
  x0, x1, fx = taps(shape[1], width)
  fx = fx[None, :, None]
  rows = tf.gather(image, x0, axis=1) * (1.0 - fx) + tf.gather(image, x1, axis=1) * fx   # [h, width, c]
  fy = fy[:, None, None]
  return tf.gather(rows, y0, axis=0) * (1.0 - fy) + tf.gather(rows, y1, axis=0) * fy


def build_clip_dataset(data_config, *, batch_size: int, seed: int, start_step: int = 0, process_index: int = 0,
                       process_count: int = 1):
  """The tf.data.Dataset of clip batches (see the module doc): infinite, batched, prefetched."""
  tf = _tf()
  check_clip_config(data_config)
  videos = clip_videos(data_config)
  paths = [p for v in videos for p in v]
  if not paths:
    raise image_io.DataError(f'data.train={data_config.train!r} at {data_config.train_root!r}: no training frames.')
  starts, lengths, video_of = [], [], []
  for v, frames in enumerate(videos):
    starts.append(len(video_of))
    lengths.append(len(frames))
    video_of += [v] * len(frames)
  half, stride = int(data_config.clip_half_window), int(data_config.clip_stride)
  shrink = data_config.clip_fit == 'shrink'
  height, width = (int(s) for s in data_config.clip_size)
  borders = bool(data_config.clip_borders)
  antialias = bool(data_config.clip_antialias)
  augment = data_config.clip_augment == 'betrayed'
  kernel_size = clip_augment.blur_kernel_size(height, width)
  sigma = clip_augment.blur_sigma(seed)
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
    if antialias:
      image = tf.image.resize(image, [height, width], method='bilinear', antialias=True)
    else:
      image = resize_bilinear_cv2(image, (height, width))
    if augment:
      return tf.clip_by_value(image, 0.0, 255.0) / 255.0  # 0..1, normalised after the augmentation
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
    step_size = stride
    if shrink:  # the released loop: the stride falls while 2 N s + 1 >= L (not below 0), the centre is clamped
      step_size = tf.maximum(tf.minimum(tf.constant(stride, tf.int64), (length - 2) // (2 * half)), 0) if half else 0
      t = tf.clip_by_value(t, half * step_size, length - 1 - half * step_size)
    frames, mask = [], []
    for offset in range(-half, half + 1):
      k = t + offset * step_size
      inside = (k >= 0) & (k < length)
      frames.append(tf.cond(inside, lambda k=k: read(start + k),
                            lambda: tf.zeros([height, width, 3], tf.float32)))
      mask.append(tf.cast(inside, tf.float32))
    frames, mask = tf.stack(frames), tf.stack(mask)
    if augment:
      frames = clip_augment.augment_clip(frames, clip_augment.draw_params(seed, g), kernel_size=kernel_size,
                                         sigma=sigma)
      frames = (frames - frames_lib.IMAGENET_MEAN) / frames_lib.IMAGENET_STD
      frames = tf.where(mask[:, None, None, None] > 0, frames, 0.0)  # padding stays 0
    return {'frames': frames, 'frame_mask': mask, 'index': fid}

  parallel = int(data_config.num_parallel_calls)
  ds = tf.data.Dataset.range(int(start_step) * b, 2 ** 62)
  load = tf.autograph.experimental.do_not_convert(load)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE if parallel < 0 else parallel, deterministic=True)
  ds = ds.batch(b, drop_remainder=True)
  return ds.prefetch(int(data_config.prefetch) or tf.data.AUTOTUNE)
