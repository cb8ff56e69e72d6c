"""tf.data training pipeline (deterministic, resumable, sharded per host) and evaluation video loading.

Training examples (official GSANet, §4.3-4.4 of the reference):
  * a target frame with a mask and N_R reference (RGB, flow) pairs drawn without replacement from ALL
    frames of the same video (the target may be among them; with repeats only if the video is shorter);
  * augmentation drawn once per example and applied identically to target RGB, flow and mask; each
    reference gets its own draw shared by its RGB and flow: horizontal flip p=0.5 (data.flip_flow=True
    also re-codes the flow colours for -u), a centred random crop removing 1..30 px per side length
    (capped at 10% of the side, so tiny synthetic frames are not over-zoomed; real frames get the
    official 30), rotation p=0.2 by an integer angle in [-15, 14] degrees with black fill (bilinear;
    official: bicubic), colour jitter on RGB only (brightness and contrast x{0.5..1.5}, saturation
    x{0.0..2.0}, sharpness x{0.0..3.0}, steps of 0.1, PIL's definitions), then a resize to the batch's
    size (bilinear, antialiased) straight from the crop (official: to 512, then bicubic to the batch size);
  * ImageNet normalisation on RGB, flow in [0, 1], mask float in [0, 1] (soft at resized edges).
  * the size of each batch comes from data.multiscale_sizes, drawn from (seed, step).

Order and randomness: global example g of step s on process p is g = (s * P + p) * B + j. Epoch e =
g // N visits a permutation (tf.random.experimental.index_shuffle, keyed by (seed, e)) of the N targets
(with data.train_sub: N main targets + N from the second set, a fresh subset per epoch, as the official
1:1 mix). Every random draw is stateless, keyed by (seed, g), so start_step=s yields exactly what an
uninterrupted iterator yields from step s on, on any number of parallel workers.
"""

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from gsa_jax import errors
from input_pipeline import datasets
from input_pipeline import flow as flow_lib
from input_pipeline import frames as frames_lib
from input_pipeline import images as image_io

_SALT = {'order': 11, 'sub': 12, 'example': 13, 'size': 14}
# The training inputs a model can ask for (contract.Model.train_input):
#   'reference_frames'  a target frame with its flow and mask, and N_R (RGB, flow) references of its video;
#   'images'            a still image (or a video frame) with its mask (stage-1 saliency models);
#   'clips'             2N + 1 consecutive frames around every frame, no labels (SOLV; input_pipeline.clips).
TRAIN_INPUTS = ('reference_frames', 'images', 'clips')
REFERENCE_RULES = ('official', 'paper')


def _sizes(data_config) -> tuple[int, ...]:
  sizes = tuple(int(s) for s in (data_config.multiscale_sizes or ()))
  return sizes or (int(data_config.image_size),)


def _root(data_config, role: str) -> str:
  root = data_config[f'{role}_root']
  name = data_config[role]
  if not root and name in ('synthetic', 'synthetic_images'):
    root = data_config.synthetic_root
  return root


# ------------------------------------------------------------------------------------------------
# Example tables.


def _video_sets(data_config) -> list[list[datasets.VideoRecord]]:
  check = data_config.check
  sets = [datasets.list_videos(data_config.train, _root(data_config, 'train'), 'train', check=check)]
  sub = data_config.train_sub
  if sub:
    sets.append(datasets.list_videos(sub, data_config.train_sub_root, 'train', check=check))
  return sets


def _image_records(data_config) -> list[datasets.ImageRecord]:
  name = data_config.train
  if name == 'synthetic':  # the saliency stage on a synthetic set uses its still images
    name = 'synthetic_images'
  return datasets.list_images(name, _root(data_config, 'train'), 'train', check=data_config.check)


def _targets(records: Sequence[datasets.VideoRecord], offset: int) -> list[int]:
  out, start = [], offset
  for r in records:
    out += [start + i for i in r.annotated]
    start += len(r)
  return out


def _check_input(train_input: str) -> None:
  if train_input not in TRAIN_INPUTS:
    raise ValueError(f'Unknown training input {train_input!r}; the pipeline builds {TRAIN_INPUTS}.')


def steps_per_epoch(data_config, *, train_input: str, batch_size: int) -> int:
  """Steps of one epoch at the global batch size (official: all main targets [+ as many from train_sub])."""
  _check_input(train_input)
  if train_input == 'clips':
    from input_pipeline import clips  # pylint: disable=g-import-not-at-top
    n = clips.num_examples(data_config)
  elif train_input == 'images':
    n = len(_image_records(data_config))
  else:
    sets = _video_sets(data_config)
    n = len(_targets(sets[0], 0)) * (2 if len(sets) > 1 else 1)
  return max(1, n // int(batch_size))


# ------------------------------------------------------------------------------------------------
# Augmentation (TensorFlow ops, graph-safe).


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


@functools.lru_cache(maxsize=1)
def _mirror_table():
  return flow_lib.mirror_hue_table()


def mirror_flow_tf(flow):
  """Flow image float [h, w, 3] in 0..255, already flipped: colours re-coded for -u (hue table)."""
  tf = _tf()
  table = tf.constant(_mirror_table())
  hsv = tf.image.rgb_to_hsv(flow / 255.0)
  n = table.shape[0]
  index = tf.clip_by_value(tf.cast(hsv[..., 0] * n, tf.int32), 0, n - 1)
  hue = tf.gather(table, index)
  return tf.image.hsv_to_rgb(tf.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1)) * 255.0


def _grey(rgb):
  tf = _tf()
  return tf.reduce_sum(rgb * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def colour_enhance(rgb, factors):
  """PIL's ImageEnhance Brightness, Contrast, Color, Sharpness in that order; rgb float 0..255."""
  tf = _tf()
  brightness, contrast, colour, sharpness = factors[0], factors[1], factors[2], factors[3]
  x = tf.clip_by_value(rgb * brightness, 0, 255)
  mean = tf.reduce_mean(_grey(x))
  x = tf.clip_by_value(mean + contrast * (x - mean), 0, 255)
  grey = _grey(x)
  x = tf.clip_by_value(grey + colour * (x - grey), 0, 255)
  kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], 'VALID')[0]
  inner = x[1:-1, 1:-1]
  inner = tf.clip_by_value(smooth + sharpness * (inner - smooth), 0, 255)
  x = tf.pad(inner, [[1, 1], [1, 1], [0, 0]]) + x - tf.pad(x[1:-1, 1:-1], [[1, 1], [1, 1], [0, 0]])
  return x  # the one-pixel border is left unsharpened, as PIL does


def _rotate(image, degrees):
  tf = _tf()
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  theta = degrees * np.pi / 180.0
  c, s = tf.cos(theta), tf.sin(theta)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  # Output (x, y) samples input R(theta) ((x, y) - centre) + centre: counter-clockwise on screen (PIL).
  transform = tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform, output_shape=tf.shape(image)[:2], fill_value=0.0,
      interpolation='BILINEAR', fill_mode='CONSTANT')
  return out[0]


def draw_augmentation(key, height, width, *, max_border: int = 30, border_fraction: float = 0.1,
                      rotation_prob: float = 0.2) -> dict[str, Any]:
  """One draw of the official augmentation parameters from a stateless key [2]."""
  tf = _tf()
  keys = tf.random.experimental.stateless_split(key, 9)
  uniform = lambda i: tf.random.stateless_uniform([], keys[i])
  randint = lambda i, lo, hi: tf.random.stateless_uniform([], keys[i], lo, hi, dtype=tf.int32)  # [lo, hi)

  def border(i, side):
    cap = tf.cast(tf.cast(side, tf.float32) * border_fraction, tf.int32)
    cap = tf.maximum(1, tf.minimum(max_border, cap))
    return tf.random.stateless_uniform([], keys[i], 1, cap + 1, dtype=tf.int32)  # 1..cap px removed

  tenth = lambda i, lo, hi: tf.cast(randint(i, lo, hi + 1), tf.float32) / 10.0
  return {'flip': uniform(0) < 0.5, 'crop_h': border(1, height), 'crop_w': border(2, width),
          'rotate': uniform(3) < rotation_prob, 'angle': tf.cast(randint(4, -15, 15), tf.float32),
          'colour': tf.stack([tenth(5, 5, 15), tenth(6, 5, 15), tenth(7, 0, 20), tenth(8, 0, 30)])}


def apply_augmentation(images: dict[str, Any], params: dict[str, Any], size, *, flip_flow: bool = False,
                       colour: bool = True, augment: bool = True) -> dict[str, Any]:
  """Applies one draw to every modality in `images` ('rgb', 'flow', 'mask'; float [h, w, c] of one size,
  0..255), then resizes to size x size. Colour jitter touches 'rgb' only. The modalities are stacked on
  channels, so flip, crop, rotation and resize are literally one operation for all of them."""
  tf = _tf()
  keys = list(images)
  channels = [int(images[k].shape[-1]) for k in keys]

  def split(x):
    return dict(zip(keys, tf.split(x, channels, axis=-1)))

  x = tf.concat([images[k] for k in keys], axis=-1)
  if augment:
    w = tf.shape(x)[1]
    columns = tf.where(params['flip'], tf.range(w - 1, -1, -1), tf.range(w))
    x = tf.gather(x, columns, axis=1)
    h = tf.shape(x)[0]
    ch = tf.minimum(params['crop_h'], h - 1)
    cw = tf.minimum(params['crop_w'], w - 1)
    x = x[ch // 2: ch // 2 + h - ch, cw // 2: cw // 2 + w - cw]
    x = tf.cond(params['rotate'], lambda: _rotate(x, params['angle']), lambda: x)
    out = split(x)
    if flip_flow and 'flow' in out:
      out['flow'] = tf.cond(params['flip'], lambda: mirror_flow_tf(out['flow']), lambda: out['flow'])
    if colour and 'rgb' in out:
      out['rgb'] = colour_enhance(out['rgb'], params['colour'])
    x = tf.concat([out[k] for k in keys], axis=-1)
  x = tf.image.resize(x, tf.stack([size, size]), method='bilinear', antialias=True)
  return split(x)


# ------------------------------------------------------------------------------------------------
# Decoding.


def _read_image(path, check_name):
  tf = _tf()
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  del check_name
  return tf.cast(image, tf.float32)


def _read_mask(path):
  tf = _tf()
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return tf.cast(tf.reduce_max(image, axis=-1, keepdims=True) > 0, tf.float32)


def _same_size(a, b, path_a, path_b):
  tf = _tf()
  ok = tf.reduce_all(tf.equal(tf.shape(a)[:2], tf.shape(b)[:2]))
  return tf.debugging.Assert(ok, ['Sizes differ (resize one of them to the other):', path_a, tf.shape(a)[:2],
                                  path_b, tf.shape(b)[:2]])


# ------------------------------------------------------------------------------------------------
# The training iterator.


def build_train_dataset(data_config, *, train_input: str, batch_size: int, seed: int, start_step: int = 0,
                        process_index: int = 0, process_count: int = 1, num_refs: int | None = None):
  """The tf.data.Dataset behind create_train_iterator (batched, prefetched, infinite)."""
  tf = _tf()
  _check_input(train_input)
  if train_input == 'clips':
    from input_pipeline import clips  # pylint: disable=g-import-not-at-top
    return clips.build_clip_dataset(data_config, batch_size=batch_size, seed=seed, start_step=start_step,
                                    process_index=process_index, process_count=process_count)
  video = train_input == 'reference_frames'
  b, p_count, p_index = int(batch_size), int(process_count), int(process_index)
  num_refs = int(num_refs if num_refs is not None else data_config.num_refs)
  sizes = tf.constant(_sizes(data_config), tf.int32)
  augment = bool(data_config.augment)
  flip_flow = bool(data_config.flip_flow)
  aug_kwargs = dict(max_border=int(data_config.crop_border), border_fraction=float(data_config.crop_border_fraction),
                    rotation_prob=float(data_config.rotation_prob))
  seed = int(seed)

  if video:
    sets = _video_sets(data_config)
    records = [r for s in sets for r in s]
    frame_paths = [p for r in records for p in r.frame_paths]
    flow_paths = [p for r in records for p in r.flow_paths]
    mask_paths = [m or '' for r in records for m in r.mask_paths]
    starts, lengths, video_of_frame, offset = [], [], [], 0
    for v, r in enumerate(records):
      starts.append(offset)
      lengths.append(len(r))
      video_of_frame += [v] * len(r)
      offset += len(r)
    main = _targets(sets[0], 0)
    sub = _targets(sets[1], len(frame_paths) - sum(len(r) for r in sets[1])) if len(sets) > 1 else []
    t_frames, t_flows, t_masks = (tf.constant(x) for x in (frame_paths, flow_paths, mask_paths))
    t_starts, t_lengths = tf.constant(starts, tf.int64), tf.constant(lengths, tf.int64)
    t_video = tf.constant(video_of_frame, tf.int64)
  else:
    image_records = _image_records(data_config)
    main, sub = list(range(len(image_records))), []
    t_frames = tf.constant([r.image_path for r in image_records])
    t_masks = tf.constant([r.mask_path for r in image_records])
  if not main:
    raise image_io.DataError('The training set has no annotated frame (no masks).')
  n_main, n_sub = len(main), len(sub)
  epoch_len = n_main * (2 if n_sub else 1)
  t_main = tf.constant(main, tf.int64)
  t_sub = tf.constant(sub or [0], tf.int64)

  def target_of(g):
    epoch, pos = g // epoch_len, g % epoch_len
    perm = tf.random.experimental.index_shuffle(pos, tf.stack([tf.constant(seed, tf.int64), epoch * 16 + _SALT['order']]),
                                                epoch_len - 1)
    if not n_sub:
      return tf.gather(t_main, perm)
    sub_pos = tf.random.experimental.index_shuffle(
        tf.maximum(perm - n_main, 0) % n_sub, tf.stack([tf.constant(seed, tf.int64), epoch * 16 + _SALT['sub']]),
        n_sub - 1)
    return tf.where(perm < n_main, tf.gather(t_main, tf.minimum(perm, n_main - 1)), tf.gather(t_sub, sub_pos))

  def load(local):
    step, j = local // b, local % b
    g = (step * p_count + p_index) * b + j
    size = tf.gather(sizes, tf.random.stateless_uniform(
        [], tf.stack([tf.constant(seed + _SALT['size'], tf.int64), step]), 0, sizes.shape[0], dtype=tf.int32))
    key = tf.stack([tf.constant(seed, tf.int64) * 7919 + _SALT['example'], g])
    keys = tf.random.experimental.stateless_split(key, num_refs + 2)
    fid = target_of(g)
    rgb = _read_image(tf.gather(t_frames, fid), None)
    mask = _read_mask(tf.gather(t_masks, fid))
    images = {'rgb': rgb, 'mask': mask * 255.0}
    checks = [_same_size(rgb, mask, tf.gather(t_frames, fid), tf.gather(t_masks, fid))]
    if video:
      images['flow'] = _read_image(tf.gather(t_flows, fid), None)
      checks.append(_same_size(rgb, images['flow'], tf.gather(t_frames, fid), tf.gather(t_flows, fid)))
    with tf.control_dependencies(checks):
      images = {k: tf.identity(v) for k, v in images.items()}
    h, w = tf.shape(rgb)[0], tf.shape(rgb)[1]
    params = draw_augmentation(keys[0], h, w, **aug_kwargs)
    out = apply_augmentation(images, params, size, flip_flow=flip_flow, augment=augment)
    example = {'rgb': frames_lib.normalise_rgb(out['rgb']), 'mask': tf.clip_by_value(out['mask'] / 255.0, 0.0, 1.0)}
    if video:
      example['flow'] = tf.clip_by_value(out['flow'] / 255.0, 0.0, 1.0)
      v = tf.gather(t_video, fid)
      start, length = tf.gather(t_starts, v), tf.gather(t_lengths, v)
      order = tf.argsort(tf.random.stateless_uniform(tf.reshape(tf.maximum(length, num_refs), [1]), keys[1]))
      ref_ids = start + tf.cast(order[:num_refs], tf.int64) % length
      ref_rgb, ref_flow = [], []
      for r in range(num_refs):
        rid = ref_ids[r]
        ref = {'rgb': _read_image(tf.gather(t_frames, rid), None), 'flow': _read_image(tf.gather(t_flows, rid), None)}
        with tf.control_dependencies([_same_size(ref['rgb'], ref['flow'], tf.gather(t_frames, rid),
                                                 tf.gather(t_flows, rid))]):
          ref = {k: tf.identity(v) for k, v in ref.items()}
        rp = draw_augmentation(keys[r + 2], tf.shape(ref['rgb'])[0], tf.shape(ref['rgb'])[1], **aug_kwargs)
        ref = apply_augmentation(ref, rp, size, flip_flow=flip_flow, augment=augment)
        ref_rgb.append(frames_lib.normalise_rgb(ref['rgb']))
        ref_flow.append(tf.clip_by_value(ref['flow'] / 255.0, 0.0, 1.0))
      example['ref_rgb'] = tf.stack(ref_rgb)
      example['ref_flow'] = tf.stack(ref_flow)
      example['ref_index'] = ref_ids
    example['index'] = fid
    return example

  parallel = int(data_config.num_parallel_calls)
  ds = tf.data.Dataset.range(int(start_step) * b, 2 ** 62)
  load = tf.autograph.experimental.do_not_convert(load)  # plain Python control flow; tracing is 5x faster
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE if parallel < 0 else parallel, deterministic=True)
  ds = ds.batch(b, drop_remainder=True)
  return ds.prefetch(int(data_config.prefetch) or tf.data.AUTOTUNE)


def create_train_iterator(data_config, *, train_input: str, batch_size: int, seed: int, start_step: int = 0,
                          process_index: int = 0, process_count: int = 1, num_refs: int | None = None,
                          with_indices: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Batches of numpy arrays: rgb [b,s,s,3], mask [b,s,s,1], and for 'reference_frames' flow [b,s,s,3],
  ref_rgb and ref_flow [b,t,s,s,3]; for 'clips' frames [b,F,h,w,3] and frame_mask [b,F] (input_pipeline.
  clips). `with_indices` adds 'index' (target frame id) and 'ref_index'."""
  ds = build_train_dataset(data_config, train_input=train_input, batch_size=batch_size, seed=seed, start_step=start_step,
                           process_index=process_index, process_count=process_count, num_refs=num_refs)
  for batch in ds.as_numpy_iterator():
    if not with_indices:
      batch.pop('index', None)
      batch.pop('ref_index', None)
    yield batch


# ------------------------------------------------------------------------------------------------
# Evaluation.


def example_batch(train_input: str, *, batch_size: int, size: int, num_refs: int) -> dict[str, np.ndarray]:
  """Zeros shaped as a batch of the 'reference_frames' (two-stream video) or 'images' (RGB only) input."""
  if train_input not in ('reference_frames', 'images'):
    raise ValueError(f'example_batch builds the reference_frames and images inputs, not {train_input!r}.')
  zeros = lambda *shape: np.zeros((batch_size, *shape), np.float32)
  batch = {'rgb': zeros(size, size, 3), 'mask': zeros(size, size, 1)}
  if train_input == 'reference_frames':
    batch.update(flow=zeros(size, size, 3), ref_rgb=zeros(num_refs, size, size, 3),
                 ref_flow=zeros(num_refs, size, size, 3))
  return batch


def model_inputs(train_input: str, batch: Mapping[str, Any]) -> tuple:
  """The positional network inputs of such a batch: (rgb, flow, ref_rgb, ref_flow), or (rgb,) for images."""
  if train_input == 'reference_frames':
    return batch['rgb'], batch['flow'], batch['ref_rgb'], batch['ref_flow']
  return (batch['rgb'],)


def reference_indices(length: int, num_refs: int, rule: str = 'official') -> list[int]:
  """The N_R test-time reference frames of a video of `length` frames.

  'official' (GSA-Net's and DPA's released loaders): frames i * (L // N_R), i = 0..N_R-1;
  'paper' (DPA's text): frames floor(i (L - 1) / (N_R - 1)), first and last included.
  A video shorter than N_R is an error (a user's video for predict, or a test video).
  """
  if num_refs > length:
    raise errors.UserError(f'data.num_refs (N_R)={num_refs} is larger than the video ({length} frames); use at '
                           f'most {length}.')
  if rule not in REFERENCE_RULES:
    raise errors.ConfigError(f'Unknown reference rule {rule!r} (data.test_reference_rule); choose one of '
                             f'{REFERENCE_RULES}.')
  if rule == 'paper' and num_refs > 1:
    return [int(i * (length - 1) // (num_refs - 1)) for i in range(num_refs)]
  if rule == 'paper':
    return [0]
  return [int(i * (length // num_refs)) for i in range(num_refs)]
