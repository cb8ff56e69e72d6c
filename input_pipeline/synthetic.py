"""Synthetic videos in the official GSANet layout: the embedded default data set.

  output_dir/{train,val,test}/RGB/<video>_<frame>.jpg    frames (JPEG q95)
  output_dir/{train,val,test}/GT/<video>_<frame>.png     exact binary masks (0/255)
  output_dir/{train,val,test}/FLOW/<video>_<frame>.jpg   exact flow frame t -> t+1, Middlebury colours
  output_dir/images/{RGB,GT}/<image>.{jpg,png}           still images (a DUTS-like saliency split)
  output_dir/synthetic.json                              the settings that made it

Each video is a scene of textured layers, back to front: a background seen by a panning and zooming
camera, 0-3 distractors (textures from the foreground's family, their own slower motion, some in front
of the foreground), the salient foreground object (the largest; it translates along a Lissajous path,
rotates, scales and deforms: aspect change and a bend), and, often, an occluder that crosses it. Every
layer maps its object coordinates q to image coordinates x = C_t(W_t(B_t(q))) (bend B_t, world affine
W_t, camera C_t), all in closed form and invertible, so rendering samples the texture at
q = B_t^-1(W_t^-1(C_t^-1(x))) and the flow of a pixel is exactly C_t+1(W_t+1(B_t+1(q))) - x of the layer
on top. Masks come from the same analytic shapes. The last frame's flow uses the motion continued one
frame past the end (every frame has its exact t -> t+1 flow; no frame is dropped).

`difficulty` in [0, 1] raises the number of distractors, their likeness to the foreground and their own
motion, the occlusion rate, the camera motion and the likeness of background and foreground. The
foreground stays salient: it is the largest object and moves most, independently of the camera.

Same seed and settings -> the same bytes; names hold no '_' (video names: train000, val000, ...).
"""

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from input_pipeline import flow as flow_lib
from input_pipeline import images as image_io

SPLITS = ('train', 'val', 'test')
_SPLIT_CODE = {'train': 0, 'val': 1, 'test': 2, 'images': 3}
MANIFEST = 'synthetic.json'
FORMAT_VERSION = 1
DEFAULTS = dict(num_train_videos=24, num_val_videos=4, num_test_videos=6, num_frames=12, image_size=64,
                difficulty=0.5, num_images=200, seed=0)


# ------------------------------------------------------------------------------------------------
# Scene description.


@dataclasses.dataclass(eq=False)
class Layer:
  """One textured layer. Motion parameters are functions of the (continuous) frame time t."""
  texture: np.ndarray  # float32 [T, T, 3] in [0, 1]
  shape: tuple | None  # (r0, orders, amplitudes, phases) of a star-shaped blob; None = fills the plane
  centre: np.ndarray  # world position path: centre + amp * sin(freq * t + phase)
  amp: np.ndarray
  freq: np.ndarray
  phase: np.ndarray
  velocity: np.ndarray  # plus a linear drift (the occluder's straight crossing)
  rot0: float = 0.0
  rot_speed: float = 0.0
  scale0: float = 1.0
  scale_amp: float = 0.0
  scale_freq: float = 0.0
  aspect_amp: float = 0.0
  aspect_freq: float = 0.0
  bend_amp: float = 0.0
  bend_freq: float = 0.0
  t_ref: float = 0.0  # drift is velocity * (t - t_ref)
  kind: str = 'distractor'  # 'background' | 'distractor' | 'foreground' | 'occluder'

  def world(self, t: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(M 2x2, offset 2, bend, bend radius) of the world transform at time t."""
    scale = self.scale0 * np.exp(self.scale_amp * np.sin(self.scale_freq * t))
    aspect = np.exp(self.aspect_amp * np.sin(self.aspect_freq * t + 1.0))
    angle = self.rot0 + self.rot_speed * t
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, -s], [s, c]]) @ np.diag([scale * aspect, scale / aspect])
    offset = self.centre + self.amp * np.sin(self.freq * t + self.phase) + self.velocity * (t - self.t_ref)
    bend = self.bend_amp * np.sin(self.bend_freq * t + 0.5)
    radius = self.shape[0] if self.shape is not None else 1.0
    return m, offset, bend, radius


@dataclasses.dataclass
class Camera:
  size: int
  pan_velocity: np.ndarray
  zoom_amp: float
  zoom_freq: float

  def at(self, t: float) -> tuple[float, np.ndarray]:
    """(zoom, pan): x = zoom * (y - S/2) + S/2 + pan for world point y."""
    return float(np.exp(self.zoom_amp * np.sin(self.zoom_freq * t))), self.pan_velocity * t


@dataclasses.dataclass
class Scene:
  size: int
  num_frames: int
  camera: Camera
  layers: list[Layer]  # back to front
  foreground: int  # index of the salient layer


def _forward(layer: Layer, camera: Camera, t: float, q: np.ndarray) -> np.ndarray:
  """Image coordinates [..., 2] (x right, y down) of object coordinates q [..., 2] at time t."""
  m, offset, bend, radius = layer.world(t)
  bent = np.stack([q[..., 0] + bend * q[..., 1] ** 2 / radius, q[..., 1]], axis=-1)
  world = bent @ m.T + offset
  zoom, pan = camera.at(t)
  half = camera.size / 2
  return zoom * (world - half) + half + pan


def inverse(layer: Layer, camera: Camera, t: float, x: np.ndarray) -> np.ndarray:
  """Object coordinates of image points x [..., 2] at time t (the exact inverse of _forward)."""
  m, offset, bend, radius = layer.world(t)
  zoom, pan = camera.at(t)
  half = camera.size / 2
  world = (x - half - pan) / zoom + half
  bent = (world - offset) @ np.linalg.inv(m).T
  return np.stack([bent[..., 0] - bend * bent[..., 1] ** 2 / radius, bent[..., 1]], axis=-1)


def inside(shape: tuple | None, q: np.ndarray) -> np.ndarray:
  if shape is None:
    return np.ones(q.shape[:-1], bool)
  r0, orders, amps, phases = shape
  angle = np.arctan2(q[..., 1], q[..., 0])
  radius = r0 * (1 + sum(a * np.cos(k * angle + p) for k, a, p in zip(orders, amps, phases)))
  return np.hypot(q[..., 0], q[..., 1]) < radius


def _bilinear(texture: np.ndarray, q: np.ndarray) -> np.ndarray:
  """Samples texture [T, T', 3] at centred coordinates q [..., 2] (clamped at the borders)."""
  h, w = texture.shape[:2]
  px = np.clip(q[..., 0] + (w - 1) / 2, 0, w - 1)
  py = np.clip(q[..., 1] + (h - 1) / 2, 0, h - 1)
  x0 = np.minimum(np.floor(px).astype(np.int64), w - 2)
  y0 = np.minimum(np.floor(py).astype(np.int64), h - 2)
  fx = (px - x0)[..., None]
  fy = (py - y0)[..., None]
  top = texture[y0, x0] * (1 - fx) + texture[y0, x0 + 1] * fx
  bottom = texture[y0 + 1, x0] * (1 - fx) + texture[y0 + 1, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy


def pixel_grid(size: int) -> np.ndarray:
  """[S, S, 2] image coordinates (x, y) of the pixel centres."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float64)
  return np.stack([x, y], axis=-1)


def sample_scene(scene: Scene, t: float, xy: np.ndarray) -> dict[str, np.ndarray]:
  """The exact render at image points xy [..., 2] at time t: rgb float [..., 3], layer [...] (index of the
  layer on top), flow [..., 2] (motion t -> t+1 of the point on top)."""
  rgb = np.zeros(xy.shape[:-1] + (3,))
  flow = np.zeros(xy.shape)
  top = np.zeros(xy.shape[:-1], np.int64)
  for index, layer in enumerate(scene.layers):
    q = inverse(layer, scene.camera, t, xy)
    covered = inside(layer.shape, q)
    if not covered.any():
      continue
    colour = _bilinear(layer.texture, q)
    moved = _forward(layer, scene.camera, t + 1, q) - xy
    rgb = np.where(covered[..., None], colour, rgb)
    flow = np.where(covered[..., None], moved, flow)
    top = np.where(covered, index, top)
  return {'rgb': rgb, 'layer': top, 'flow': flow}


def render_frame(scene: Scene, t: int) -> dict[str, np.ndarray]:
  """Frame t: rgb float [S, S, 3] in [0, 1], mask bool [S, S], flow float [S, S, 2], layer [S, S]."""
  out = sample_scene(scene, float(t), pixel_grid(scene.size))
  out['mask'] = out['layer'] == scene.foreground
  return out


# ------------------------------------------------------------------------------------------------
# Random scenes.


def hsv(h: float, s: float, v: float) -> np.ndarray:
  import colorsys  # pylint: disable=g-import-not-at-top
  return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  coarse = rng.standard_normal((cells, cells)).astype(np.float32)
  return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def texture(rng: np.random.Generator, size: int, hue: float, *, stripes: float, wavelength: float,
             saturation: float = 0.7) -> np.ndarray:
  """A smooth colour texture [size, size, 3]: two colours of one hue family mixed by noise and stripes."""
  c1 = hsv(hue + rng.uniform(-0.04, 0.04), saturation + rng.uniform(-0.15, 0.15), rng.uniform(0.35, 0.6))
  c2 = hsv(hue + rng.uniform(-0.08, 0.08), saturation + rng.uniform(-0.2, 0.1), rng.uniform(0.7, 0.95))
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  angle = rng.uniform(0, np.pi)
  wave = np.sin(2 * np.pi * (np.cos(angle) * x + np.sin(angle) * y) / wavelength + rng.uniform(0, 2 * np.pi))
  mix = 0.5 + 0.3 * _smooth_noise(rng, size, max(3, size // 12)) + stripes * 0.5 * wave
  mix = np.clip(mix, 0, 1)[..., None]
  return ((1 - mix) * c1 + mix * c2).astype(np.float32)


def blob(rng: np.random.Generator, r0: float, wobble: float) -> tuple:
  orders = (2, 3, 5)
  amps = tuple(float(rng.uniform(0, wobble) / k ** 0.5) for k in orders)
  phases = tuple(float(rng.uniform(0, 2 * np.pi)) for _ in orders)
  return (float(r0), orders, amps, phases)


def texture_size(shape: tuple) -> int:
  r0, _, amps, _ = shape
  return int(np.ceil(2 * r0 * (1 + sum(amps)) * 1.3)) + 4


def make_scene(rng: np.random.Generator, *, image_size: int, num_frames: int, difficulty: float,
               still: bool = False) -> Scene:
  """A random scene (see the module docstring). `still`: a single image (no occluder crossing)."""
  s = float(image_size)
  d = float(np.clip(difficulty, 0.0, 1.0))
  fg_hue = rng.uniform()
  bg_hue = fg_hue + (0.5 - 0.35 * d) * rng.choice([-1, 1]) + rng.uniform(-0.05, 0.05)
  wavelength = max(6.0, s / 8)

  cam_speed = rng.uniform(0.003, 0.012 + 0.02 * d) * s
  cam_dir = rng.uniform(0, 2 * np.pi)
  camera = Camera(size=image_size, pan_velocity=cam_speed * np.array([np.cos(cam_dir), np.sin(cam_dir)]),
                  zoom_amp=rng.uniform(0.0, 0.05 + 0.1 * d), zoom_freq=rng.uniform(0.05, 0.2))
  pan_extent = float(np.abs(camera.pan_velocity).max()) * (num_frames + 1)
  bg_size = int(np.ceil(1.3 * s / np.exp(-camera.zoom_amp) + 2 * pan_extent)) + 4
  background = Layer(
      texture=texture(rng, bg_size, bg_hue, stripes=rng.uniform(0.1, 0.4), wavelength=wavelength * 1.5,
                       saturation=rng.uniform(0.3, 0.7)),
      shape=None, centre=np.array([s / 2, s / 2]), amp=np.zeros(2), freq=np.zeros(2), phase=np.zeros(2),
      velocity=np.zeros(2), kind='background')

  def moving(kind: str, r0: float, hue: float, motion: float, centre: np.ndarray) -> Layer:
    shape = blob(rng, r0, 0.35 if kind != 'occluder' else 0.15)
    size = texture_size(shape)
    return Layer(
        texture=texture(rng, size, hue, stripes=rng.uniform(0.2, 0.5), wavelength=wavelength),
        shape=shape, centre=centre, amp=motion * s * rng.uniform(0.5, 1.0, 2),
        freq=rng.uniform(0.15, 0.35, 2) * rng.choice([-1, 1], 2), phase=rng.uniform(0, 2 * np.pi, 2),
        velocity=np.zeros(2), rot0=rng.uniform(0, 2 * np.pi),
        rot_speed=rng.uniform(0.03, 0.12) * rng.choice([-1, 1]) * (motion > 0),
        scale0=1.0, scale_amp=rng.uniform(0.05, 0.15) * (motion > 0), scale_freq=rng.uniform(0.1, 0.3),
        aspect_amp=rng.uniform(0.05, 0.2) * (motion > 0), aspect_freq=rng.uniform(0.1, 0.4),
        bend_amp=rng.uniform(0.05, 0.25) * (motion > 0), bend_freq=rng.uniform(0.1, 0.4),
        kind=kind)

  fg = moving('foreground', rng.uniform(0.16, 0.23) * s, fg_hue, rng.uniform(0.15, 0.25),
              np.array([s / 2, s / 2]) + rng.uniform(-0.1, 0.1, 2) * s)
  num_distractors = int(rng.binomial(3, 0.15 + 0.7 * d))
  behind, front = [], []
  for _ in range(num_distractors):
    hue = fg_hue + rng.uniform(-1, 1) * 0.15 * (1 - d)
    layer = moving('distractor', rng.uniform(0.07, 0.12) * s, hue, rng.uniform(0.02, 0.04 + 0.06 * d),
                   rng.uniform(0.15, 0.85, 2) * s)
    (front if rng.uniform() < 0.3 else behind).append(layer)
  layers = [background] + behind + [fg] + front
  if not still and num_frames > 2 and rng.uniform() < 0.2 + 0.6 * d:
    # An occluder that crosses the foreground's path at time t_cross: partial occlusion.
    t_cross = rng.uniform(0.25, 0.75) * (num_frames - 1)
    _, fg_offset, _, _ = fg.world(t_cross)
    like_fg = rng.uniform() < 0.5
    hue = fg_hue + rng.uniform(-0.05, 0.05) if like_fg else bg_hue
    occ = moving('occluder', rng.uniform(0.08, 0.12) * s, hue, 0.0, fg_offset)
    occ.rot_speed = rng.uniform(-0.05, 0.05)
    direction = rng.uniform(0, 2 * np.pi)
    occ.velocity = rng.uniform(0.04, 0.08) * s * np.array([np.cos(direction), np.sin(direction)])
    occ.t_ref = t_cross
    layers.append(occ)
  return Scene(size=image_size, num_frames=num_frames, camera=camera, layers=layers,
               foreground=next(i for i, layer in enumerate(layers) if layer is fg))


def render_video(scene: Scene) -> dict[str, np.ndarray]:
  """All frames: rgb float [L, S, S, 3], mask bool [L, S, S], flow float [L, S, S, 2] (t -> t+1)."""
  frames = [render_frame(scene, t) for t in range(scene.num_frames)]
  return {k: np.stack([f[k] for f in frames]) for k in ('rgb', 'mask', 'flow', 'layer')}


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])


# ------------------------------------------------------------------------------------------------
# Writing the data set.


def to_uint8(rgb: np.ndarray) -> np.ndarray:
  """A [0, 1] float image → uint8 (rounded, clipped)."""
  return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _write_video(folder: str, name: str, video: dict[str, np.ndarray]) -> None:
  for t in range(video['rgb'].shape[0]):
    base = f'{name}_{t:05d}'
    image_io.write_jpg(os.path.join(folder, 'RGB', base + '.jpg'), to_uint8(video['rgb'][t]))
    image_io.write_png(os.path.join(folder, 'GT', base + '.png'), video['mask'][t].astype(np.uint8) * 255)
    image_io.write_jpg(os.path.join(folder, 'FLOW', base + '.jpg'), flow_lib.flow_to_image(video['flow'][t]))


def _settings(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
  get = (lambda k: cfg.get(k, DEFAULTS[k])) if hasattr(cfg, 'get') else (lambda k: getattr(cfg, k, DEFAULTS[k]))
  out = {k: get(k) for k in DEFAULTS}
  for k in out:
    out[k] = float(out[k]) if k == 'difficulty' else int(out[k])
  if out['image_size'] < 16 or out['num_frames'] < 2:
    raise ValueError(f'synthetic data needs image_size >= 16 and num_frames >= 2, got {out}')
  return out


def _is_ours(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MANIFEST))


def generate(output_dir: str, **settings) -> dict[str, Any]:
  """Writes the data set (see the module docstring) atomically; returns the manifest.

  An existing folder is replaced only when it is an earlier synthetic set (it holds synthetic.json).
  """
  cfg = _settings(settings)
  start = time.time()
  counts = {}
  with image_io.atomic_output_dir(output_dir, replace_if=_is_ours) as tmp:
    for split in SPLITS:
      folder = os.path.join(tmp, split)
      for sub in ('RGB', 'GT', 'FLOW'):
        os.makedirs(os.path.join(folder, sub))
      n = cfg[f'num_{split}_videos']
      for index in range(n):
        scene = make_scene(video_rng(cfg['seed'], split, index), image_size=cfg['image_size'],
                           num_frames=cfg['num_frames'], difficulty=cfg['difficulty'])
        _write_video(folder, f'{split}{index:03d}', render_video(scene))
      counts[split] = n
    folder = os.path.join(tmp, 'images')
    os.makedirs(os.path.join(folder, 'RGB'))
    os.makedirs(os.path.join(folder, 'GT'))
    for index in range(cfg['num_images']):
      scene = make_scene(video_rng(cfg['seed'], 'images', index), image_size=cfg['image_size'], num_frames=1,
                         difficulty=cfg['difficulty'], still=True)
      frame = render_frame(scene, 0)
      image_io.write_jpg(os.path.join(folder, 'RGB', f'img{index:05d}.jpg'), to_uint8(frame['rgb']))
      image_io.write_png(os.path.join(folder, 'GT', f'img{index:05d}.png'), frame['mask'].astype(np.uint8) * 255)
    counts['images'] = cfg['num_images']
    manifest = {'format_version': FORMAT_VERSION, 'settings': cfg, 'counts': counts,
                'layout': 'GSANet flat layout: <split>/{RGB,GT,FLOW}/<video>_<frame>; images/{RGB,GT}',
                'flow': 'exact flow t -> t+1 for every frame (the last: motion continued one frame), '
                        'Middlebury colours as RAFT flow_viz'}
    with open(os.path.join(tmp, MANIFEST), 'w') as f:
      json.dump(manifest, f, indent=1, sort_keys=True)
  manifest['seconds'] = time.time() - start
  return manifest


def generate_from_config(cfg, output_dir: str) -> dict[str, Any]:
  """Entry point of main.py / the trainer: cfg = config.data.synthetic (fields as configs/defaults.py)."""
  return generate(output_dir, **_settings(cfg))
