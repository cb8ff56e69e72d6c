"""The 'clips' training input as Betrayed by Attention trains on it: 3-frame clips with a frame stride that
shrinks to fit ('shrink'), zero padding with a stride ('pad'), cv2 INTER_LINEAR resizing (clip_antialias=False)
and the grayscale / colour-jitter / blur clip augmentation (input_pipeline.clip_augment), each op against a
numpy formula, the pipeline against the released loader re-stated with cv2, and the augmentation against kornia 0.9's
VideoSequential replayed with kornia's own draw."""

import colorsys
import functools

import cv2
import numpy as np
import pytest
import tensorflow as tf

from configs import defaults
from gsa_jax import errors
from input_pipeline import clip_augment as ca
from input_pipeline import clips
from input_pipeline import data_sources
from input_pipeline import frames as frames_lib

SIZE = (24, 40)  # clip_size (h, w): blur kernel 3 x 5


@pytest.fixture(scope='module')
def ba_config(tmp_path_factory):
  """4 synthetic videos of 9, 11, 11 and 3 frames (32 x 48) and the Betrayed by Attention clip settings."""
  config = defaults.get_config('solv')
  d = config.data
  d.train = 'synthetic_multi'
  d.synthetic_multi.update(num_train_videos=4, num_val_videos=1, num_frames=(3, 11), frame_sizes=((32, 48),),
                           letterbox=0.0, bar_sizes=(8,), seed=1)
  d.update(clip_half_window=1, clip_stride=4, clip_fit='shrink', clip_size=SIZE, clip_borders=False,
           clip_antialias=False, clip_augment='none')
  config = data_sources.prepare_data_roots(config, str(tmp_path_factory.mktemp('ba_clips')), roles=('train',))
  assert [len(v) for v in clips.clip_videos(config.data)] == [9, 11, 11, 3]
  return config


def released_stride(length: int, half: int, gap: int) -> int:
  """The released loader's loop, as written."""
  while gap * half >= length - gap * half - 1:
    gap -= 1
  return max(gap, 0)


@functools.lru_cache(maxsize=None)
def released_frame(path: str, size) -> np.ndarray:
  """The released readRGB (cv2 read, RGB, / 255, INTER_LINEAR on float64), ImageNet-normalised [h, w, 3]."""
  rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB) / 255.0
  rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
  return ((rgb - frames_lib.IMAGENET_MEAN) / frames_lib.IMAGENET_STD).astype(np.float32)


def batches(data_config, *, seed=1, batch_size=4, start_step=0, count=1):
  ds = clips.build_clip_dataset(data_config, batch_size=batch_size, seed=seed, start_step=start_step)
  return [{k: v.numpy() for k, v in b.items()} for b in ds.take(count)]


def locate(data_config):
  """Global frame id -> (video, frame) and the frame paths of every video."""
  videos = clips.clip_videos(data_config)
  return [(v, t) for v, paths in enumerate(videos) for t in range(len(paths))], videos


def test_shrink_clips_are_the_released_clips(ba_config):
  d = ba_config.data
  flat, videos = locate(d)
  assert [released_stride(len(v), 1, 4) for v in videos] == [3, 4, 4, 0]  # 9 = 2 * 4 + 1 frames still shrinks
  seen = []
  for batch in batches(d, batch_size=5, count=7):  # 35 examples: all 34 frames once, then one more
    assert batch['frames'].shape == (5, 3, *SIZE, 3)
    np.testing.assert_array_equal(batch['frame_mask'], 1.0)
    for clip, index in zip(batch['frames'], batch['index']):
      v, t = flat[int(index)]
      length = len(videos[v])
      s = released_stride(length, 1, 4)
      c = min(max(t, s), length - 1 - s)
      for frame, k in zip(clip, (c - s, c, c + s)):
        want = released_frame(videos[v][k], SIZE)
        diff = np.abs(frame - want) * frames_lib.IMAGENET_STD * 255  # in grey levels
        assert diff.max() < 0.01, (v, t, k, diff.max())  # 3e-5 measured: tf and cv2 decode these JPEGs alike
        others = [np.abs(frame - released_frame(p, SIZE)).mean() for p in videos[v]]
        assert int(np.argmin(others)) == k
      seen.append(int(index))
  assert sorted(seen[:34]) == list(range(34))  # one example per frame per epoch


def test_pad_with_a_stride(ba_config):
  d = ba_config.data.copy_and_resolve_references()
  d.update(clip_fit='pad', clip_stride=2, clip_half_window=2)
  flat, videos = locate(d)
  batch = batches(d, batch_size=8)[0]
  assert batch['frames'].shape == (8, 5, *SIZE, 3)
  for clip, mask, index in zip(batch['frames'], batch['frame_mask'], batch['index']):
    v, t = flat[int(index)]
    ks = [t + 2 * o for o in range(-2, 3)]
    np.testing.assert_array_equal(mask, [float(0 <= k < len(videos[v])) for k in ks])
    for frame, k, m in zip(clip, ks, mask):
      if m:
        assert (np.abs(frame - released_frame(videos[v][k], SIZE)) * frames_lib.IMAGENET_STD * 255).max() < 0.01
      else:
        assert np.all(frame == 0.0)


def test_defaults_are_solv_and_bad_values_are_refused(ba_config):
  d = defaults.get_config('solv').data
  assert (d.clip_stride, d.clip_fit, d.clip_antialias, d.clip_augment) == (1, 'pad', True, 'none')
  bad = ba_config.data.copy_and_resolve_references()
  bad.update(clip_stride=0, clip_fit='crop', clip_augment='kornia')
  with pytest.raises(errors.ConfigError) as info:
    clips.build_clip_dataset(bad, batch_size=2, seed=0)
  for field in ('data.clip_stride=0', "data.clip_fit='crop'", "data.clip_augment='kornia'"):
    assert field in str(info.value)


def numpy_cv2_linear(image: np.ndarray, size) -> np.ndarray:
  """cv2's INTER_LINEAR on a float image: half-pixel source coordinates, clamped to the edge pixels."""

  def taps(n_in, n_out):
    coord = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    low = np.floor(coord).astype(int)
    frac = coord - low
    frac[(low < 0) | (low >= n_in - 1)] = 0.0
    low = np.clip(low, 0, n_in - 1)
    return low, np.minimum(low + 1, n_in - 1), frac

  y0, y1, fy = taps(image.shape[0], size[0])
  x0, x1, fx = taps(image.shape[1], size[1])
  rows = image[:, x0] * (1 - fx[None, :, None]) + image[:, x1] * fx[None, :, None]
  return rows[y0] * (1 - fy[:, None, None]) + rows[y1] * fy[:, None, None]


@pytest.mark.parametrize('shape,size', [((37, 53), (12, 20)), ((12, 20), (37, 53)), ((90, 160), (24, 48)),
                                        ((30, 40), (60, 80)), ((720, 1280), (192, 384))])
def test_resize_is_cv2_inter_linear(shape, size):
  rng = np.random.default_rng(sum(shape))
  image = rng.random((*shape, 3)).astype(np.float32)
  ours = clips.resize_bilinear_cv2(tf.constant(image), size).numpy()
  np.testing.assert_allclose(ours, numpy_cv2_linear(image.astype(np.float64), size), atol=1e-6)
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  want = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
  np.testing.assert_allclose(ours, want, atol=1e-6)
  antialiased = tf.image.resize(image, size, method='bilinear', antialias=True).numpy()
  if size[0] < shape[0]:  # the SOLV resize differs on a downsize (control)
    assert np.abs(antialiased - want).max() > 1e-2


# ------------------------------------------------------------------------------------------------
# The augmentation ops with fixed parameters, against numpy.


def random_clip(seed=0, frames=3, size=(10, 14)) -> np.ndarray:
  rng = np.random.default_rng(seed)
  clip = rng.random((frames, *size, 3)).astype(np.float32)
  clip[:, 0, 0] = (0.5, 0.5, 0.5)  # grey pixels (hue undefined)
  clip[:, 0, 1] = (1.0, 0.0, 0.0)
  clip[:, 0, 2] = 0.0
  return clip


def np_gray(x):
  return x[..., 0:1] * 0.299 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.114


def test_grayscale_brightness_contrast_saturation():
  x = random_clip()
  gray = ca.to_grayscale(tf.constant(x)).numpy()
  assert np.all(gray[..., 0] == gray[..., 1]) and np.all(gray[..., 1] == gray[..., 2])
  np.testing.assert_allclose(gray, np.repeat(np_gray(x), 3, -1), atol=1e-6)
  for f in (0.6, 1.37):
    np.testing.assert_allclose(ca.adjust_brightness(tf.constant(x), f).numpy(), np.clip(x * f, 0, 1), atol=1e-6)
    mean = np_gray(x).mean(axis=(1, 2, 3), keepdims=True)  # each frame its own mean
    np.testing.assert_allclose(ca.adjust_contrast(tf.constant(x), f).numpy(),
                               np.clip(x * f + mean * (1 - f), 0, 1), atol=1e-6)
    np.testing.assert_allclose(ca.adjust_saturation(tf.constant(x), f).numpy(),
                               np.clip(f * x + (1 - f) * np_gray(x), 0, 1), atol=1e-6)
  assert np.any(ca.adjust_brightness(tf.constant(x), 1.4).numpy() == 1.0)  # clamped


@pytest.mark.parametrize('shift', [0.1, -0.07, 0.5])
def test_hue_is_an_hsv_rotation(shift):
  x = random_clip(1)
  ours = ca.adjust_hue(tf.constant(x), shift).numpy()
  want = np.empty_like(x)
  for i in np.ndindex(x.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*x[i])
    want[i] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
  np.testing.assert_allclose(ours, want, atol=2e-6)
  np.testing.assert_allclose(ours[:, 0, 0], 0.5, atol=1e-6)  # grey stays grey


def test_blur_is_a_reflect_padded_gaussian():
  x = random_clip(2, size=(12, 20))
  kh, kw = ca.blur_kernel_size(192, 384)
  assert (kh, kw) == (19, 39) and ca.blur_kernel_size(*SIZE) == (3, 5)
  sigma = 1.3
  ours = ca.gaussian_blur(tf.constant(x), (5, 7), sigma).numpy()
  g = lambda k: np.exp(-(np.arange(k) - k // 2) ** 2 / (2 * sigma ** 2)) / np.exp(  # noqa: E731
      -(np.arange(k) - k // 2) ** 2 / (2 * sigma ** 2)).sum()
  kernel = g(5)[:, None] * g(7)[None, :]
  padded = np.pad(x, ((0, 0), (2, 2), (3, 3), (0, 0)), mode='reflect')  # edge not repeated (torch 'reflect')
  want = np.zeros_like(x)
  for dy in range(5):
    for dx in range(7):
      want += kernel[dy, dx] * padded[:, dy:dy + 12, dx:dx + 20]
  np.testing.assert_allclose(ours, want, atol=1e-6)
  assert abs(ca.blur_sigma(0) - 1.7044) < 1e-4 and 0.1 <= ca.blur_sigma(7) <= 2.0  # released rank 0: 1.704


def fixed_params(order=(0, 1, 2, 3), grayscale=False, jitter=True, blur=False, b=1.0, c=1.0, s=1.0, h=0.0):
  return {'grayscale': tf.constant(grayscale), 'jitter': tf.constant(jitter), 'blur': tf.constant(blur),
          'brightness': tf.constant(b, tf.float32), 'contrast': tf.constant(c, tf.float32),
          'saturation': tf.constant(s, tf.float32), 'hue': tf.constant(h, tf.float32),
          'order': tf.constant(order, tf.int32)}


def test_jitter_applies_its_steps_in_the_drawn_order_and_identity_is_identity():
  x = tf.constant(random_clip(3))
  factors = dict(b=1.3, c=0.7, s=1.4, h=0.08)
  steps = [lambda y: ca.adjust_brightness(y, 1.3), lambda y: ca.adjust_contrast(y, 0.7),
           lambda y: ca.adjust_saturation(y, 1.4), lambda y: ca.adjust_hue(y, 0.08)]
  outputs = []
  for order in ((0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)):
    want = x
    for i in order:
      want = steps[i](want)
    got = ca.augment_clip(x, fixed_params(order, **factors), kernel_size=(3, 5), sigma=1.0).numpy()
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
    outputs.append(got)
  assert np.abs(outputs[0] - outputs[1]).max() > 1e-2  # the order matters
  for params in (fixed_params(jitter=False), fixed_params(jitter=True)):  # gates off; neutral factors
    np.testing.assert_array_equal(ca.augment_clip(x, params, kernel_size=(3, 5), sigma=1.0).numpy(), x.numpy())
  grey = ca.augment_clip(x, fixed_params(grayscale=True, **factors), kernel_size=(3, 5), sigma=1.0).numpy()
  np.testing.assert_array_equal(grey[..., 0], grey[..., 1])  # jitter keeps a grey clip grey
  np.testing.assert_array_equal(grey[..., 1], grey[..., 2])
  assert np.abs(grey - ca.to_grayscale(x).numpy()).max() > 1e-2


# ------------------------------------------------------------------------------------------------
# The draw: one per clip, the same for all of its frames, reproducible.


def test_draws_are_per_clip_reproducible_and_distributed_as_released():
  draws = [{k: v.numpy() for k, v in ca.draw_params(5, g).items()} for g in range(300)]
  again = {k: v.numpy() for k, v in ca.draw_params(5, 17).items()}
  for k in again:
    np.testing.assert_array_equal(again[k], draws[17][k])
  other = ca.draw_params(6, 17)['brightness'].numpy()
  assert other != draws[17]['brightness']
  assert len({float(d['brightness']) for d in draws}) == 300
  for gate, p in (('grayscale', 0.2), ('jitter', 0.8), ('blur', 0.5)):
    assert abs(np.mean([d[gate] for d in draws]) - p) < 0.09, gate
  for name, low, high in (('brightness', 0.6, 1.4), ('contrast', 0.6, 1.4), ('saturation', 0.6, 1.4),
                          ('hue', -0.1, 0.1)):
    values = np.array([d[name] for d in draws])
    assert low <= values.min() < low + 0.05 and high - 0.05 < values.max() <= high, name
  orders = {tuple(d['order']) for d in draws}
  assert all(sorted(o) == [0, 1, 2, 3] for o in orders) and len(orders) > 12


def test_equal_frames_stay_equal():
  frame = random_clip(4, frames=1)
  clip = tf.constant(np.repeat(frame, 3, axis=0))
  changed = 0
  for g in range(12):
    out = ca.augment_clip(clip, ca.draw_params(0, g), kernel_size=(3, 5), sigma=1.2).numpy()
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])
    changed += np.abs(out - clip.numpy()).max() > 1e-3
  assert changed >= 8


def test_augmented_pipeline_is_the_plain_pipeline_augmented(ba_config):
  d = ba_config.data.copy_and_resolve_references()
  plain = batches(d, seed=3, count=2)
  d.clip_augment = 'betrayed'
  augmented = batches(d, seed=3, count=9)  # 36 examples: the 34 of epoch 0 first
  sigma = ca.blur_sigma(3)
  for step, (p, a) in enumerate(zip(plain, augmented)):
    np.testing.assert_array_equal(p['index'], a['index'])
    for j in range(4):
      x = p['frames'][j] * frames_lib.IMAGENET_STD + frames_lib.IMAGENET_MEAN  # back to 0..1
      params = ca.draw_params(3, step * 4 + j)  # global example g = s B + j on one process
      want = ca.augment_clip(tf.constant(x), params, kernel_size=(3, 5), sigma=sigma).numpy()
      want = (want - frames_lib.IMAGENET_MEAN) / frames_lib.IMAGENET_STD
      np.testing.assert_allclose(a['frames'][j], want, atol=2e-5)
  assert not np.allclose(augmented[0]['frames'], plain[0]['frames'], atol=1e-3)
  # The 3-frame video has stride 0: its clips are one frame three times, equal after the augmentation too.
  flat, _ = locate(d)
  frames = np.concatenate([a['frames'] for a in augmented])[:34]
  index = np.concatenate([a['index'] for a in augmented])[:34]
  short = [j for j, i in enumerate(index) if flat[int(i)][0] == 3]
  assert len(short) == 3
  for j in short:
    np.testing.assert_array_equal(frames[j, 0], frames[j, 1])
    np.testing.assert_array_equal(frames[j, 0], frames[j, 2])
  # Reproducible and resumable: start_step=1 gives the second batch; another seed other frames.
  np.testing.assert_array_equal(batches(d, seed=3, start_step=1)[0]['frames'], augmented[1]['frames'])
  assert not np.array_equal(batches(d, seed=4)[0]['frames'], augmented[0]['frames'])


def test_against_kornia_video_sequential():
  import kornia  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  aug = kornia.augmentation
  x = random_clip(5, size=SIZE)
  kernel, sigma = ca.blur_kernel_size(*SIZE), 1.3
  for trial in range(6):
    torch.manual_seed(trial)
    pipeline = aug.container.VideoSequential(
        aug.RandomGrayscale(p=0.2), aug.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        aug.RandomGaussianBlur(kernel, (sigma, sigma), p=0.5), data_format='BTCHW', same_on_frame=True)
    want = pipeline(torch.from_numpy(x).permute(0, 3, 1, 2)[None])[0].permute(0, 2, 3, 1).numpy()
    drawn = {p.name.split('_')[0]: p.data for p in pipeline._params}  # pylint: disable=protected-access
    jitter = drawn['ColorJitter']
    factor = lambda k, neutral: float(jitter[k][0]) if len(jitter.get(k, ())) else neutral  # noqa: E731
    params = fixed_params(order=tuple(int(i) for i in jitter.get('order', range(4))),
                          grayscale=bool(drawn['RandomGrayscale']['batch_prob'][0]),
                          jitter=bool(jitter['batch_prob'][0]), blur=bool(drawn['RandomGaussianBlur']['batch_prob'][0]),
                          b=factor('brightness_factor', 1.0), c=factor('contrast_factor', 1.0),
                          s=factor('saturation_factor', 1.0), h=factor('hue_factor', 0.0))
    got = ca.augment_clip(tf.constant(x), params, kernel_size=kernel, sigma=sigma).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
