"""Multi-object synthetic videos with exact instance-id masks, in the DAVIS-2017 layout.

  output_dir/JPEGImages/<res>/<video>/<frame>.jpg                 frames (JPEG q95, 4:4:4 chroma)
  output_dir/Annotations_unsupervised/<res>/<video>/<frame>.png   exact instance ids, DAVIS palette PNGs
  output_dir/Annotations/<res>/<video>/<frame>.png                the same ids (with semi_annotations=True)
  output_dir/FLOW/<res>/<video>/<frame>.jpg                       exact flow t -> t+1 (with flow=True)
  output_dir/ImageSets/2017/{train,val}.txt                       the video names of each split
  output_dir/synthetic_multi.json                                 settings and, per video, size, objects,
                                                                  depth order and letterbox bars

<res> is '480p' by default whatever the frame size, so DAVIS-2017 readers (input_pipeline.instances.
list_davis17, the official evaluation tool) read the set as it is.

Each video: a textured background seen by a slowly panning camera and 2-4 independent textured objects
(star-shaped blobs with their own Lissajous path, rotation, scale and bend, the layers of
`input_pipeline.synthetic`), in a random depth order, so they occlude each other. Ids 1..K are given in
creation order, independent of depth; `depth_order` lists the ids back to front. A pixel's id is the
object on top there (0 = background), from the same analytic shapes that render the frame. Object hues
are spread around the colour wheel, so objects are separable by colour. Optional letterbox bars (black
rows top and bottom, or pillarbox columns left and right), in multiples of 8 px so that JPEG keeps them
exactly black: the frame content and the objects live inside, masks are 0 on the bars.

Same seed and settings → the same bytes. Video names hold no '_' (train000, val000, ...).
"""

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from input_pipeline import flow as flow_lib
from input_pipeline import images as image_io
from input_pipeline import instances
from input_pipeline import synthetic

MANIFEST = 'synthetic_multi.json'
FORMAT_VERSION = 1
SPLITS = ('train', 'val')
_SPLIT_CODE = {'train': 0, 'val': 1}
_STREAM = 17  # keeps these random streams apart from input_pipeline.synthetic's
DEFAULTS = dict(num_train_videos=4, num_val_videos=2, num_frames=(8, 16), frame_sizes=((64, 64), (96, 96)),
                num_objects=(2, 4), letterbox=0.5, bar_sizes=(8, 16), flow=True, semi_annotations=False,
                resolution='480p', flat_colours=False, seed=0)


def _scene(rng: np.random.Generator, *, height: int, width: int, num_frames: int, num_objects: int,
           flat_colours: bool) -> tuple[synthetic.Scene, list[int]]:
  """A scene of background + objects (layers back to front) and the id of each layer (0 = background)."""
  s = float(min(height, width))
  size = max(height, width)
  wavelength = max(6.0, s / 8)
  cam_speed = rng.uniform(0.0, 0.01) * s
  cam_dir = rng.uniform(0, 2 * np.pi)
  camera = synthetic.Camera(size=size, pan_velocity=cam_speed * np.array([np.cos(cam_dir), np.sin(cam_dir)]),
                            zoom_amp=0.0, zoom_freq=0.0)
  pan_extent = float(np.abs(camera.pan_velocity).max()) * (num_frames + 1)
  base_hue = rng.uniform()
  hues = [base_hue + (k + rng.uniform(-0.15, 0.15)) / num_objects for k in range(num_objects)]
  bg_hue = base_hue + 0.5 / num_objects
  bg_size = int(np.ceil(1.3 * size + 2 * pan_extent)) + 4
  if flat_colours:
    bg_texture = np.broadcast_to(synthetic.hsv(bg_hue, 0.15, 0.5), (bg_size, bg_size, 3)).astype(np.float32)
  else:
    bg_texture = synthetic.texture(rng, bg_size, bg_hue, stripes=rng.uniform(0.1, 0.3), wavelength=wavelength * 1.5,
                                    saturation=rng.uniform(0.15, 0.35))
  centre = np.array([width / 2, height / 2])
  background = synthetic.Layer(texture=bg_texture, shape=None, centre=centre, amp=np.zeros(2), freq=np.zeros(2),
                               phase=np.zeros(2), velocity=np.zeros(2), kind='background')
  objects = []
  extent = np.array([width, height], np.float64)
  for k in range(num_objects):
    shape = synthetic.blob(rng, rng.uniform(0.13, 0.2) * s, 0.3)
    tex_size = synthetic.texture_size(shape)
    if flat_colours:
      texture = np.broadcast_to(synthetic.hsv(hues[k], 0.85, 0.85), (tex_size, tex_size, 3)).astype(np.float32)
    else:
      texture = synthetic.texture(rng, tex_size, hues[k], stripes=rng.uniform(0.2, 0.5), wavelength=wavelength,
                                   saturation=0.85)
    objects.append(synthetic.Layer(
        texture=texture, shape=shape, centre=rng.uniform(0.3, 0.7, 2) * extent,
        amp=rng.uniform(0.1, 0.25, 2) * extent, freq=rng.uniform(0.15, 0.4, 2) * rng.choice([-1, 1], 2),
        phase=rng.uniform(0, 2 * np.pi, 2), velocity=np.zeros(2), rot0=rng.uniform(0, 2 * np.pi),
        rot_speed=rng.uniform(0.03, 0.12) * rng.choice([-1, 1]), scale0=1.0, scale_amp=rng.uniform(0.05, 0.15),
        scale_freq=rng.uniform(0.1, 0.3), aspect_amp=rng.uniform(0.05, 0.2), aspect_freq=rng.uniform(0.1, 0.4),
        bend_amp=rng.uniform(0.0, 0.2), bend_freq=rng.uniform(0.1, 0.4), kind='distractor'))
  depth = rng.permutation(num_objects)  # object indices back to front
  layers = [background] + [objects[i] for i in depth]
  layer_ids = [0] + [int(i) + 1 for i in depth]
  scene = synthetic.Scene(size=size, num_frames=num_frames, camera=camera, layers=layers, foreground=1)
  return scene, layer_ids


def render_video(scene: synthetic.Scene, layer_ids: Sequence[int], height: int, width: int,
                 bars: tuple[int, int, int, int] = (0, 0, 0, 0)) -> dict[str, np.ndarray]:
  """All frames of a scene inside letterbox `bars` (top, bottom, left, right) of an [height, width] frame.

  Returns rgb float [t, h, w, 3] in [0, 1] (bars black), ids int32 [t, h, w] (0 on the bars), flow float
  [t, h, w, 2] (t -> t+1, 0 on the bars), coverage bool [t, k, h, w] (each object's own, unoccluded shape).
  """
  top, bottom, left, right = bars
  inner_h, inner_w = height - top - bottom, width - left - right
  y, x = np.mgrid[0:inner_h, 0:inner_w].astype(np.float64)
  xy = np.stack([x, y], axis=-1)
  lut = np.asarray(layer_ids, np.int32)
  num_objects = len(layer_ids) - 1
  t_len = scene.num_frames
  rgb = np.zeros((t_len, height, width, 3))
  ids = np.zeros((t_len, height, width), np.int32)
  flow = np.zeros((t_len, height, width, 2))
  coverage = np.zeros((t_len, num_objects, height, width), bool)
  window = (slice(top, height - bottom), slice(left, width - right))
  for t in range(t_len):
    out = synthetic.sample_scene(scene, float(t), xy)
    rgb[t][window] = out['rgb']
    ids[t][window] = lut[out['layer']]
    flow[t][window] = out['flow']
    for layer, object_id in zip(scene.layers[1:], layer_ids[1:]):
      q = synthetic.inverse(layer, scene.camera, float(t), xy)
      coverage[t, object_id - 1][window] = synthetic.inside(layer.shape, q)
  return {'rgb': rgb, 'ids': ids, 'flow': flow, 'coverage': coverage}


def _range(value: int | Sequence[int], name: str) -> tuple[int, int]:
  if isinstance(value, (int, np.integer)):
    return int(value), int(value)
  low, high = (int(v) for v in value)
  if low > high:
    raise ValueError(f'synthetic_multi: {name} range {value} is empty (min > max).')
  return low, high


def make_video(split: str, index: int, **settings) -> dict[str, Any]:
  """Video `index` of `split` under `settings` (those of `generate`, seed included): the rendered arrays
  (see `render_video`) plus 'info' (size, number of frames and objects, depth order, bars)."""
  cfg = _settings(settings)
  if split not in _SPLIT_CODE:
    raise ValueError(f'synthetic_multi: unknown split {split!r}; choose one of {", ".join(SPLITS)}.')
  rng = np.random.default_rng([cfg['seed'], _STREAM, _SPLIT_CODE[split], int(index)])
  height, width = cfg['frame_sizes'][int(rng.integers(len(cfg['frame_sizes'])))]
  num_frames = int(rng.integers(cfg['num_frames'][0], cfg['num_frames'][1] + 1))
  num_objects = int(rng.integers(cfg['num_objects'][0], cfg['num_objects'][1] + 1))
  bars = (0, 0, 0, 0)
  if rng.uniform() < cfg['letterbox']:
    bar = int(rng.choice(cfg['bar_sizes']))
    pillar = rng.uniform() < 0.3
    bars = (0, 0, bar, bar) if pillar else (bar, bar, 0, 0)
  inner_h, inner_w = height - bars[0] - bars[1], width - bars[2] - bars[3]
  scene, layer_ids = _scene(rng, height=inner_h, width=inner_w, num_frames=num_frames, num_objects=num_objects,
                            flat_colours=cfg['flat_colours'])
  video = render_video(scene, layer_ids, height, width, bars)
  video['info'] = dict(height=height, width=width, num_frames=num_frames, num_objects=num_objects,
                       depth_order=list(layer_ids[1:]), bars=dict(zip(('top', 'bottom', 'left', 'right'), bars)))
  return video


def _settings(settings: Mapping[str, Any]) -> dict[str, Any]:
  unknown = sorted(set(settings) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'synthetic_multi: unknown settings {unknown}; known: {sorted(DEFAULTS)}.')
  cfg = {**DEFAULTS, **settings}
  cfg['num_frames'] = _range(cfg['num_frames'], 'num_frames')
  cfg['num_objects'] = _range(cfg['num_objects'], 'num_objects')
  cfg['frame_sizes'] = tuple((int(h), int(w)) for h, w in cfg['frame_sizes'])
  cfg['bar_sizes'] = tuple(int(b) for b in cfg['bar_sizes'])
  if cfg['num_frames'][0] < 2:
    raise ValueError(f'synthetic_multi: videos need at least 2 frames; got num_frames={cfg["num_frames"]}.')
  if cfg['num_objects'][0] < 1 or cfg['num_objects'][1] > 255:
    raise ValueError(f'synthetic_multi: num_objects must lie in 1..255; got {cfg["num_objects"]}.')
  if any(b % 8 or b <= 0 for b in cfg['bar_sizes']):
    raise ValueError('synthetic_multi: bar sizes must be positive multiples of 8 (JPEG blocks); got '
                     f'{cfg["bar_sizes"]}.')
  for h, w in cfg['frame_sizes']:
    if min(h, w) - 2 * max(cfg['bar_sizes']) < 16:
      raise ValueError(f'synthetic_multi: frame size {h}x{w} leaves less than 16 px inside bars of '
                       f'{max(cfg["bar_sizes"])} px; use larger frames or smaller bars.')
  for key in ('num_train_videos', 'num_val_videos', 'seed'):
    cfg[key] = int(cfg[key])
  for key in ('flow', 'semi_annotations', 'flat_colours'):
    cfg[key] = bool(cfg[key])
  cfg['letterbox'] = float(cfg['letterbox'])
  return cfg


def write_frame_jpg(path: str, rgb: np.ndarray, quality: int = 95) -> None:
  """uint8 [h, w, 3] RGB as JPEG with 4:4:4 chroma, so 8-px-aligned black bars decode exactly black."""
  params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
  ok, buf = cv2.imencode('.jpg', cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params)
  if not ok:
    raise image_io.DataError(f'{path}: JPEG encoding failed.')
  buf.tofile(path)


def _is_ours(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MANIFEST))


def generate(output_dir: str, **settings) -> dict[str, Any]:
  """Writes the data set (see the module docstring) atomically; returns the manifest.

  An existing folder is replaced only when it is an earlier set of this generator (it holds the manifest).
  """
  cfg = _settings(settings)
  start = time.time()
  res = cfg['resolution']
  videos: dict[str, dict[str, Any]] = {}
  with image_io.atomic_output_dir(output_dir, replace_if=_is_ours) as tmp:
    os.makedirs(os.path.join(tmp, 'ImageSets', '2017'))
    for split in SPLITS:
      names = []
      for index in range(cfg[f'num_{split}_videos']):
        name = f'{split}{index:03d}'
        video = make_video(split, index, **settings)
        folders = {'JPEGImages': None, 'Annotations_unsupervised': None}
        if cfg['semi_annotations']:
          folders['Annotations'] = None
        if cfg['flow']:
          folders['FLOW'] = None
        for top in folders:
          folders[top] = os.path.join(tmp, top, res, name)
          os.makedirs(folders[top])
        for t in range(video['info']['num_frames']):
          frame = f'{t:05d}'
          write_frame_jpg(os.path.join(folders['JPEGImages'], frame + '.jpg'), synthetic.to_uint8(video['rgb'][t]))
          instances.write_instance_mask(os.path.join(folders['Annotations_unsupervised'], frame + '.png'),
                                        video['ids'][t])
          if cfg['semi_annotations']:
            instances.write_instance_mask(os.path.join(folders['Annotations'], frame + '.png'), video['ids'][t])
          if cfg['flow']:
            write_frame_jpg(os.path.join(folders['FLOW'], frame + '.jpg'), flow_lib.flow_to_image(video['flow'][t]))
        videos[name] = {'split': split, **video['info']}
        names.append(name)
      with open(os.path.join(tmp, 'ImageSets', '2017', f'{split}.txt'), 'w') as f:
        f.write(''.join(n + '\n' for n in names))
    manifest = {
        'format_version': FORMAT_VERSION,
        'settings': {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        'layout': (f'DAVIS-2017: JPEGImages/{res}/<video>/<frame>.jpg, Annotations_unsupervised/{res}/<video>/'
                   '<frame>.png (instance ids, 0 background), ImageSets/2017/{train,val}.txt' +
                   (f', FLOW/{res}/<video>/<frame>.jpg' if cfg['flow'] else '')),
        'videos': videos,
    }
    with open(os.path.join(tmp, MANIFEST), 'w') as f:
      json.dump(manifest, f, indent=1, sort_keys=True)
  manifest['seconds'] = time.time() - start
  return manifest
