"""Betrayed by Attention's clip augmentation as tf ops, for the 'clips' training input (data.clip_augment=
'betrayed', input_pipeline.clips).

The released training applies kornia's VideoSequential(same_on_frame=True) on the GPU to each clip of frames
in 0..1: one draw per clip, the same for all of its frames, in this order:
  1. RandomGrayscale(p=0.2): every channel becomes 0.299 R + 0.587 G + 0.114 B;
  2. ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8): factors drawn uniformly
     in [0.6, 1.4] (brightness, contrast, saturation) and [-0.1, 0.1] turns (hue), applied in a random order
     (a permutation of the four; kornia draws one per call, i.e. per batch of clips, which is one clip per GPU
     in the released run; here one per clip);
  3. RandomGaussianBlur(kernel (kh, kw), sigma (s, s), p=0.5), kh = int(0.1 h) // 2 * 2 + 1 (likewise kw), reflect
     border (the edge pixel not repeated), s fixed for the whole run;
  4. ImageNet normalisation (done by the caller).

The formulas follow kornia 0.9.0 (kornia.augmentation.ColorJitter, kornia.enhance, kornia.color.hsv,
kornia.filters.gaussian_blur2d), which are torchvision's:
  * ColorJitter clamps its input to [0, 1], skips a step whose factor is neutral (1, or 0 for hue), clamps
    after brightness, contrast and saturation, and clamps its output;
  * brightness: clamp(x f); contrast: clamp(x f + m (1 - f)), m the mean of the frame's grayscale image (each
    frame its own mean: VideoSequential runs the op on the frames as a batch of images); saturation:
    clamp(f x + (1 - f) gray(x));
  * hue: RGB -> HSV with hue in radians [0, 2 pi) (saturation = (max - min) / (max + 1e-8), 0 where max = 0), the
    hue shifted by f 2 pi modulo 2 pi, HSV -> RGB (the six-sector formula);
  * blur: the normalised sampled Gaussian exp(-x^2 / (2 s^2)), x = -(k // 2)..k // 2, along the width then the
    height, each after reflect padding.
Where this differs from the released run: kornia draws from torch's global generator (unreproducible across
runs and devices); here the draw of example g is a function of (seed, g), so a resumed run sees the same
augmentation. The released blur sigma is uniform(0.1, 2) from Python's `random` seeded with seed + rank, one per
GPU process; here it is one value per run, `blur_sigma(seed)`, which is the released rank-0 value (1.704 for
seed 0).

Frames are [..., h, w, 3] float32 in 0..1 (channels last).
"""

import math
import random

GRAYSCALE_WEIGHTS = (0.299, 0.587, 0.114)
GRAYSCALE_P, JITTER_P, BLUR_P = 0.2, 0.8, 0.5
BRIGHTNESS = CONTRAST = SATURATION = 0.4  # factors uniform in [1 - 0.4, 1 + 0.4]
HUE = 0.1  # shift uniform in [-0.1, 0.1] turns
JITTER_STEPS = ('brightness', 'contrast', 'saturation', 'hue')  # the indices of `order`
_NUM_UNIFORMS = 11  # the uniforms of one draw: 3 gates, 4 factors, 4 for the order
_SALT = 57


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def blur_kernel_size(height: int, width: int) -> tuple[int, int]:
  """The released blur kernel (kh, kw) for frames of height x width: int(0.1 side) // 2 * 2 + 1 (19 x 39 at
  192 x 384)."""
  return int(0.1 * height) // 2 * 2 + 1, int(0.1 * width) // 2 * 2 + 1


def blur_sigma(seed: int) -> float:
  """The blur sigma of a run: uniform(0.1, 2) from Python's `random` seeded with `seed` (the released rank-0 rule)."""
  return random.Random(int(seed)).uniform(0.1, 2.0)


def draw_params(seed: int, index):
  """One clip's draw, a function of (seed, index): dict of scalar tensors grayscale, jitter, blur (bool gates),
  brightness, contrast, saturation, hue (float32 factors) and order ([4] int32, a permutation of JITTER_STEPS)."""
  tf = _tf()
  key = tf.random.experimental.stateless_fold_in(tf.constant([int(seed), _SALT], tf.int64),
                                                 tf.cast(index, tf.int64))
  u = tf.random.stateless_uniform([_NUM_UNIFORMS], seed=key, dtype=tf.float32)
  return {
      'grayscale': u[0] < GRAYSCALE_P,
      'jitter': u[1] < JITTER_P,
      'blur': u[2] < BLUR_P,
      'brightness': 1.0 - BRIGHTNESS + 2 * BRIGHTNESS * u[3],
      'contrast': 1.0 - CONTRAST + 2 * CONTRAST * u[4],
      'saturation': 1.0 - SATURATION + 2 * SATURATION * u[5],
      'hue': -HUE + 2 * HUE * u[6],
      'order': tf.cast(tf.argsort(u[7:11]), tf.int32),
  }


def grayscale(x):
  """[..., 3] -> [..., 1]: 0.299 R + 0.587 G + 0.114 B."""
  w_r, w_g, w_b = GRAYSCALE_WEIGHTS
  return (x[..., 0:1] * w_r + x[..., 1:2] * w_g) + x[..., 2:3] * w_b


def to_grayscale(x):
  """RandomGrayscale's op: the grayscale value in all three channels."""
  tf = _tf()
  return tf.repeat(grayscale(x), 3, axis=-1)


def adjust_brightness(x, factor):
  """clamp(x f): f = 1 keeps the image, 0 makes it black."""
  tf = _tf()
  return tf.clip_by_value(x * factor, 0.0, 1.0)


def adjust_contrast(x, factor):
  """clamp(x f + m (1 - f)), m the mean over h, w of each frame's grayscale image."""
  tf = _tf()
  mean = tf.reduce_mean(grayscale(x), axis=[-3, -2, -1], keepdims=True)                  # [..., 1, 1, 1]
  return tf.clip_by_value(x * factor + mean * (1.0 - factor), 0.0, 1.0)


def adjust_saturation(x, factor):
  """clamp(f x + (1 - f) gray(x)): f = 0 gives the grayscale image."""
  tf = _tf()
  return tf.clip_by_value((1.0 - factor) * grayscale(x) + factor * x, 0.0, 1.0)


def rgb_to_hsv(x, eps: float = 1e-8):
  """[..., 3] RGB in 0..1 -> HSV, hue in radians [0, 2 pi) (kornia.color.rgb_to_hsv)."""
  tf = _tf()
  max_rgb, min_rgb = tf.reduce_max(x, axis=-1), tf.reduce_min(x, axis=-1)
  delta = max_rgb - min_rgb
  s = delta / tf.where(max_rgb == 0, tf.ones_like(max_rgb), max_rgb + eps)
  delta_c = tf.where(delta == 0, tf.ones_like(delta), delta)
  r, g, b = tf.unstack(x, axis=-1)
  rc, gc, bc = max_rgb - r, max_rgb - g, max_rgb - b
  h1 = bc - gc
  h2 = (rc - bc) + 2.0 * delta_c
  h3 = (gc - rc) + 4.0 * delta_c
  h = tf.where((r >= g) & (r >= b), h1, tf.where(g >= b, h2, h3)) / delta_c
  h = 2.0 * math.pi * tf.math.floormod(h / 6.0, 1.0)
  h = tf.where(h >= 2.0 * math.pi, tf.zeros_like(h), h)
  return tf.stack([h, s, max_rgb], axis=-1)


def hsv_to_rgb(x):
  """[..., 3] HSV (hue in radians) -> RGB (kornia.color.hsv_to_rgb)."""
  tf = _tf()
  h, s, v = tf.unstack(x, axis=-1)
  h = h / (2 * math.pi)
  hi = tf.math.floormod(tf.floor(h * 6), 6.0)
  f = tf.math.floormod(h * 6, 6.0) - hi
  p, q, t = v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s)
  hi = tf.clip_by_value(tf.cast(hi, tf.int32), 0, 5)
  sector = [tf.equal(hi, i) for i in range(5)]

  def pick(values):  # the value of each sector 0..5
    out = values[5]
    for i in range(4, -1, -1):
      out = tf.where(sector[i], values[i], out)
    return out

  r = pick([v, q, p, p, t, v])
  g = pick([t, v, v, q, p, p])
  b = pick([p, p, t, v, v, q])
  return tf.stack([r, g, b], axis=-1)


def adjust_hue(x, factor):
  """The hue shifted by `factor` turns (in [-0.5, 0.5]) in HSV, modulo one turn."""
  tf = _tf()
  hsv = rgb_to_hsv(x)
  period = 2.0 * math.pi
  h = tf.math.floormod(hsv[..., 0] + factor * 2 * math.pi, period)
  h = tf.where(h >= period, tf.zeros_like(h), h)
  return hsv_to_rgb(tf.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1))


def color_jitter(x, params):
  """ColorJitter with the draw's factors, its steps in params['order'] (indices into JITTER_STEPS)."""
  tf = _tf()
  steps = (
      (adjust_brightness, params['brightness'], 1.0),
      (adjust_contrast, params['contrast'], 1.0),
      (adjust_saturation, params['saturation'], 1.0),
      (adjust_hue, params['hue'], 0.0),
  )

  def step(position, y):
    branches = [lambda fn=fn, f=f, n=n: tf.cond(tf.equal(f, n), lambda: y, lambda: fn(y, f)) for fn, f, n in steps]
    return position + 1, tf.switch_case(params['order'][position], branches)

  x = tf.clip_by_value(x, 0.0, 1.0)
  _, x = tf.while_loop(lambda position, _: position < len(steps), step, (tf.constant(0), x))  # one trace of the 4
  return tf.clip_by_value(x, 0.0, 1.0)


def gaussian_kernel(size: int, sigma):
  """The normalised sampled Gaussian of odd length `size` [size]."""
  tf = _tf()
  x = tf.range(size, dtype=tf.float32) - float(size // 2)
  weights = tf.exp(-(x * x) / (2.0 * tf.cast(sigma, tf.float32) ** 2))
  return weights / tf.reduce_sum(weights)


def gaussian_blur(x, kernel_size: tuple[int, int], sigma):
  """[f, h, w, 3] -> [f, h, w, 3]: separable Gaussian blur (kernel (kh, kw), the same sigma on both axes),
  reflect border, along the width first, as kornia.filters.gaussian_blur2d."""
  tf = _tf()
  kh, kw = (int(k) for k in kernel_size)
  if kh % 2 == 0 or kw % 2 == 0:
    raise ValueError(f'blur kernel {kernel_size}: both sizes must be odd.')
  channels = 3
  along_w = tf.tile(tf.reshape(gaussian_kernel(kw, sigma), [1, kw, 1, 1]), [1, 1, channels, 1])
  along_h = tf.tile(tf.reshape(gaussian_kernel(kh, sigma), [kh, 1, 1, 1]), [1, 1, channels, 1])
  x = tf.pad(x, [[0, 0], [0, 0], [kw // 2, kw // 2], [0, 0]], mode='REFLECT')
  x = tf.nn.depthwise_conv2d(x, along_w, strides=[1, 1, 1, 1], padding='VALID')
  x = tf.pad(x, [[0, 0], [kh // 2, kh // 2], [0, 0], [0, 0]], mode='REFLECT')
  return tf.nn.depthwise_conv2d(x, along_h, strides=[1, 1, 1, 1], padding='VALID')


def augment_clip(clip, params, *, kernel_size: tuple[int, int], sigma: float):
  """[f, h, w, 3] in 0..1 -> the same augmented with one draw (`draw_params`): grayscale, colour jitter, blur;
  each gated by its draw. Normalisation is left to the caller."""
  tf = _tf()
  clip = tf.cond(params['grayscale'], lambda: to_grayscale(clip), lambda: clip)
  clip = tf.cond(params['jitter'], lambda: color_jitter(clip, params), lambda: clip)
  return tf.cond(params['blur'], lambda: gaussian_blur(clip, kernel_size, sigma), lambda: clip)
