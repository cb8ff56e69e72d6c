"""Optical flow for users' videos: OpenCV flow on the CPU, Middlebury colour coding, .flo files.

  python main.py --mode=flow --input=<video file | frame folder | folder of frame folders | .flo folder>
                 --output=<dir> [--flow_method=dis|farneback] [--save_raw_flow]

Colour coding: the Middlebury colour wheel of Baker et al. (ICCV 2007) in the form RAFT's `flow_viz`
uses (segments RY=15, YG=6, GC=4, CB=11, BM=13, MR=6; hue from atan2(-v, -u); saturation = radius
normalised by the largest radius of the image (+1e-5); floor to uint8), so flow images made here and
RAFT's are interchangeable. Images are RGB on disk (JPEG, quality 95).

Frame k's flow is the motion from frame k to frame k+1 (u right, v down, in pixels). The last frame of
a video has no successor: it gets a copy of the previous frame's flow (the rule predict.py uses too).
"""

import os
import shutil
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from input_pipeline import frames as frames_lib
from input_pipeline import images as image_io
from input_pipeline.images import DataError

FLO_MAGIC = 202021.25
_SEGMENTS = (('RY', 15), ('YG', 6), ('GC', 4), ('CB', 11), ('BM', 13), ('MR', 6))
NUM_COLS = sum(n for _, n in _SEGMENTS)  # 55


def make_colorwheel() -> np.ndarray:
  """The Middlebury colour wheel, float64 [55, 3] RGB in 0..255.

  Each segment ramps one channel while another stays at 255 (ramps are floor(255 i / n)).
  """
  # (channel held at 255, channel that ramps, ramp direction) per segment.
  plan = {'RY': (0, 1, +1), 'YG': (1, 0, -1), 'GC': (1, 2, +1), 'CB': (2, 1, -1), 'BM': (2, 0, +1),
          'MR': (0, 2, -1)}
  rows = []
  for name, n in _SEGMENTS:
    full, ramp, direction = plan[name]
    block = np.zeros((n, 3))
    block[:, full] = 255
    steps = np.floor(255 * np.arange(n) / n)
    block[:, ramp] = steps if direction > 0 else 255 - steps
    rows.append(block)
  return np.concatenate(rows, axis=0)


COLORWHEEL = make_colorwheel()


def _wheel_position(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Continuous wheel index fk in [0, 54] of normalised flow (u, v)."""
  angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
  return (angle + 1) / 2 * (NUM_COLS - 1)


def _wheel_colour(fk: np.ndarray) -> np.ndarray:
  """Wheel colour in [0, 1], [..., 3], linearly interpolated between the 55 entries."""
  k0 = np.floor(fk).astype(np.int64)
  k1 = k0 + 1
  k1[k1 == NUM_COLS] = 0
  f = (fk - k0)[..., None]
  return ((1 - f) * COLORWHEEL[k0] + f * COLORWHEEL[k1]) / 255.0


def flow_uv_to_colors(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """uint8 [h, w, 3] RGB of a flow already normalised so that radius <= 1 is in range."""
  u = np.asarray(u, np.float64)
  v = np.asarray(v, np.float64)
  radius = np.sqrt(u * u + v * v)
  colour = _wheel_colour(_wheel_position(u, v))
  inside = (radius <= 1)[..., None]
  colour = np.where(inside, 1 - radius[..., None] * (1 - colour), colour * 0.75)
  return np.floor(255 * colour).astype(np.uint8)


def flow_to_image(flow: np.ndarray, *, max_radius: float | None = None) -> np.ndarray:
  """uint8 [h, w, 3] RGB Middlebury colour image of `flow` [h, w, 2] (u, v), as RAFT's flow_viz.

  The flow is divided by (the largest radius of the image, or `max_radius`) + 1e-5.
  """
  flow = np.asarray(flow)
  if flow.ndim != 3 or flow.shape[-1] != 2:
    raise ValueError(f'flow must have shape [h, w, 2], got {flow.shape}')
  u = flow[..., 0].astype(np.float64)
  v = flow[..., 1].astype(np.float64)
  if max_radius is None:
    max_radius = float(np.max(np.sqrt(u * u + v * v))) if u.size else 0.0
  scale = max_radius + 1e-5
  return flow_uv_to_colors(u / scale, v / scale)


# ------------------------------------------------------------------------------------------------
# Decoding and mirroring colour-coded flow images.


def rgb_to_hue(rgb: np.ndarray) -> np.ndarray:
  """HSV hue in [0, 1) of float RGB [..., 3] (the formula of tf.image.rgb_to_hsv)."""
  rgb = np.asarray(rgb, np.float64)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  mx = rgb.max(-1)
  mn = rgb.min(-1)
  delta = mx - mn
  safe = np.where(delta > 0, delta, 1.0)
  hue = np.where(mx == r, (g - b) / safe, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue = np.where(delta > 0, hue / 6.0, 0.0)
  return np.mod(hue, 1.0)


def _hue_to_position_table(samples: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
  """Monotonic (hue, fk) samples of the wheel: the hue of the wheel colour grows with fk."""
  fk = np.linspace(0, NUM_COLS - 1, samples)
  hue = rgb_to_hue(_wheel_colour(fk))
  hue = np.maximum.accumulate(hue)  # exact monotonic; flat steps only from floor() ties
  return hue, fk


_HUE_TABLE = None


def hue_to_wheel_position(hue: np.ndarray) -> np.ndarray:
  global _HUE_TABLE
  if _HUE_TABLE is None:
    _HUE_TABLE = _hue_to_position_table()
  table_hue, table_fk = _HUE_TABLE
  return np.interp(hue, table_hue, table_fk)


def mirrored_wheel_position(fk: np.ndarray) -> np.ndarray:
  """Wheel index of the flow with u negated: the angle a -> 1 - a (a > 0) or -1 - a (a < 0)."""
  half = (NUM_COLS - 1) / 2  # 27: a = 0
  return np.where(fk < half, half - fk, 3 * half - fk)


def mirror_hue_table(size: int = 16384) -> np.ndarray:
  """float32 [size]: hue (index / size) of a flow colour -> hue of the colour with u negated.

  A Middlebury colour is 1 - r (1 - c) with c a wheel colour (one channel 1, one 0): its HSV value is 1,
  its saturation r, its hue that of c. So mirroring the flow keeps value and saturation and maps the hue
  through this table. Hues outside the wheel's range (JPEG noise) clamp to its ends.
  """
  hue = (np.arange(size) + 0.5) / size
  fk = hue_to_wheel_position(hue)
  return rgb_to_hue(_wheel_colour(mirrored_wheel_position(fk))).astype(np.float32)


def image_to_flow(image: np.ndarray) -> np.ndarray:
  """Normalised flow [h, w, 2] (largest radius ~1) decoded from a Middlebury colour image (uint8 RGB)."""
  rgb = np.asarray(image, np.float64) / 255.0
  radius = rgb.max(-1) - rgb.min(-1)
  angle = hue_to_wheel_position(rgb_to_hue(rgb)) / (NUM_COLS - 1) * 2 - 1
  # (-u, -v) points at angle * pi.
  return np.stack([-radius * np.cos(angle * np.pi), -radius * np.sin(angle * np.pi)], axis=-1)


def mirror_flow_image(image: np.ndarray) -> np.ndarray:
  """Horizontal flip of a flow image done right: pixels flipped AND the colours re-coded for -u."""
  flipped = np.asarray(image)[:, ::-1]
  hsv = cv2.cvtColor(flipped.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # hue in degrees
  table = mirror_hue_table()
  index = np.clip((hsv[..., 0] / 360.0 * len(table)).astype(np.int64), 0, len(table) - 1)
  hsv[..., 0] = table[index] * 360.0
  out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
  return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Middlebury .flo files.


def write_flo(path: str, flow: np.ndarray) -> None:
  flow = np.asarray(flow, np.float32)
  h, w = flow.shape[:2]
  with open(path, 'wb') as f:
    np.array([FLO_MAGIC], '<f4').tofile(f)
    np.array([w, h], '<i4').tofile(f)
    flow.astype('<f4').tofile(f)


def read_flo(path: str) -> np.ndarray:
  """float32 [h, w, 2] from a Middlebury .flo file; DataError naming the file when it is bad."""
  try:
    with open(path, 'rb') as f:
      magic = np.fromfile(f, '<f4', 1)
      dims = np.fromfile(f, '<i4', 2)
      data = np.fromfile(f, '<f4')
  except OSError as e:
    raise DataError(f'{path}: cannot read the .flo file ({e}).') from e
  if magic.size != 1 or magic[0] != np.float32(FLO_MAGIC):
    raise DataError(f'{path}: not a Middlebury .flo file (the magic number is not 202021.25). Re-export it.')
  if dims.size != 2 or dims.min() <= 0 or data.size != int(dims[0]) * int(dims[1]) * 2:
    raise DataError(f'{path}: truncated .flo file (header {dims.tolist()}, {data.size} values). Re-export it.')
  w, h = int(dims[0]), int(dims[1])
  return data.reshape(h, w, 2)


# ------------------------------------------------------------------------------------------------
# Computing flow.


def _gray(frame: np.ndarray) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim == 2:
    return frame.astype(np.uint8)
  return cv2.cvtColor(frame.astype(np.uint8), cv2.COLOR_RGB2GRAY)


MIN_DIS_SIDE = 16  # OpenCV's DIS crashes (or fails) on frames whose sides are shorter (checked on 12-15 px)


def check_flow_size(size: tuple[int, int], source: str, method: str = 'dis') -> None:
  """Refuses frames too small for the flow method (DIS: each side at least MIN_DIS_SIDE px)."""
  h, w = size
  if method == 'dis' and min(h, w) < MIN_DIS_SIDE:
    raise DataError(f'{source}: the frame is {h}x{w} (h x w); DIS optical flow needs frames of at least '
                    f'{MIN_DIS_SIDE}x{MIN_DIS_SIDE} px. Upscale the frames (e.g. to the model size) or use '
                    '--flow_method=farneback.')


class _FlowEngine:

  def __init__(self, method: str = 'dis'):
    if method not in ('dis', 'farneback'):
      raise ValueError(f'Unknown flow method {method!r}; choose dis or farneback.')
    self.method = method
    self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if method == 'dis' else None

  def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if self._dis is not None:
      return self._dis.calc(a, b, None).astype(np.float32)
    return cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=4, winsize=15, iterations=3, poly_n=5,
                                        poly_sigma=1.2, flags=0).astype(np.float32)


def compute_flow_frames(frames: Sequence[np.ndarray], *, method: str = 'dis') -> list[np.ndarray]:
  """Flow fields [h, w, 2] float32 for each consecutive pair (frame k -> k+1): len(frames) - 1 of them.

  Frames are uint8 RGB [h, w, 3] (or grey [h, w]) of one size.
  """
  engine = _FlowEngine(method)
  grays = [_gray(f) for f in frames]
  if grays:
    check_flow_size(grays[0].shape[:2], 'frame 0', method)
  for k in range(1, len(grays)):
    if grays[k].shape != grays[0].shape:
      raise DataError(f'Frame {k} is {grays[k].shape[:2]} but frame 0 is {grays[0].shape[:2]}; all frames of a '
                      'video must have one size.')
  return [engine(grays[k], grays[k + 1]) for k in range(len(grays) - 1)]


def _group_flat(paths: list[str]) -> dict[str, list[str]]:
  """Frames of a flat folder per video: names <video>_<frame> split on the LAST '_'."""
  groups: dict[str, list[str]] = {}
  for p in paths:
    name = image_io.stem(p)
    groups.setdefault(name.rsplit('_', 1)[0] if '_' in name else '', []).append(p)
  return groups


def _flow_sequence(frames: Iterator[tuple[str, np.ndarray]], engine: _FlowEngine, out_dir: str, save_raw: bool,
                   progress, label: str) -> int:
  """Writes <name>.jpg (and .flo) for every frame of one video; returns the frame count."""
  previous = None  # (name, gray, source)
  last_image = last_field = None
  count = 0
  for name, frame, source in frames:
    gray = _gray(frame)
    if previous is None:
      check_flow_size(gray.shape[:2], source, engine.method)
    if previous is not None:
      if gray.shape != previous[1].shape:
        raise DataError(f'{source}: the frame is {gray.shape[0]}x{gray.shape[1]} but the previous frame '
                        f'({previous[2]}) is {previous[1].shape[0]}x{previous[1].shape[1]}; resize all frames of '
                        'a video to one size.')
      last_field = engine(previous[1], gray)
      last_image = flow_to_image(last_field)
      image_io.write_jpg(os.path.join(out_dir, previous[0] + '.jpg'), last_image)
      if save_raw:
        write_flo(os.path.join(out_dir, previous[0] + '.flo'), last_field)
      progress.update(1)
    previous = (name, gray, source)
    count += 1
  if count < 2:
    raise DataError(f'{label}: optical flow needs at least two frames, found {count}.')
  image_io.write_jpg(os.path.join(out_dir, previous[0] + '.jpg'), last_image)  # the last frame: copy
  if save_raw:
    write_flo(os.path.join(out_dir, previous[0] + '.flo'), last_field)
  progress.update(1)
  return count


def _frames_from_paths(paths: list[str]) -> Iterator[tuple[str, np.ndarray, str]]:
  for p in paths:
    yield image_io.stem(p), image_io.read_rgb(p), p


def _plan(input_path: str) -> list[tuple[str, str, list[str] | None]]:
  """[(kind, relative output folder, paths)] with kind 'video' | 'frames' | 'flo'."""
  if os.path.isfile(input_path):
    if not input_path.lower().endswith(frames_lib.VIDEO_EXTENSIONS):
      raise DataError(f'{input_path}: not a video file ({", ".join(frames_lib.VIDEO_EXTENSIONS)}). Pass a video or a folder '
                      'of frames.')
    return [('video', '', [input_path])]
  if not os.path.isdir(input_path):
    raise DataError(f'{input_path}: no such file or folder. Pass a video file or a folder of frames.')
  names = sorted(os.listdir(input_path), key=image_io.natural_key)
  flos = [os.path.join(input_path, n) for n in names if n.lower().endswith('.flo')]
  frames = [os.path.join(input_path, n) for n in names if image_io.is_image_file(n)]
  if flos:
    return [('flo', '', flos)]
  if frames:
    return [('frames', '', group) for group in _group_flat(frames).values()]
  plan = []
  for n in names:
    sub = os.path.join(input_path, n)
    if os.path.isdir(sub) and not n.startswith('.'):
      try:
        plan += [(kind, os.path.join(n, rel), paths) for kind, rel, paths in _plan(sub)]
      except DataError:
        continue  # an empty sub-folder
  if not plan:
    raise DataError(f'{input_path}: the folder is empty: no frames ({", ".join(image_io.IMAGE_EXTENSIONS)}), '
                    'no .flo files and no sub-folders of frames. Pass a video file or a folder of frames.')
  return plan


def _check_frame_headers(paths: Sequence[str], method: str) -> None:
  """Frame sizes of one video from the headers, before any flow: one size, large enough for `method`."""
  first = None  # (path, size)
  for p in paths:
    try:
      size = image_io.image_size(p)
    except DataError:
      continue  # reported with the decoding error when the frame is read
    check_flow_size(size, p, method)
    if first is None:
      first = (p, size)
    elif size != first[1]:
      raise DataError(f'{p}: the frame is {size[0]}x{size[1]} but the first frame ({first[0]}) is '
                      f'{first[1][0]}x{first[1][1]}; resize all frames of a video to one size.')


def compute_flow_for_input(input_path: str, output_dir: str, *, method: str = 'dis', save_raw: bool = False,
                           show_progress: bool = True, overwrite: bool = False) -> str:
  """Writes one flow image per frame into `output_dir` (created atomically) and returns its path.

  An existing non-empty `output_dir` is refused, or with `overwrite` replaced as a whole once the new
  flow is complete. Frame folders are checked before any flow is computed (sizes from the headers: DIS
  needs sides of at least MIN_DIS_SIDE px).

  `input_path`: a video file (frames named 00000, 00001, ...), a folder of frames (a flat folder of
  several videos named <video>_<frame> is split per video), a folder of such folders (the output keeps
  the sub-folders, e.g. JPEGImages/480p -> FLOW/480p), or a folder of .flo files (converted to images).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  engine = _FlowEngine(method)
  plan = _plan(input_path)
  total = sum(len(p) for kind, _, p in plan if kind != 'video') or None
  for kind, _, paths in plan:
    if kind == 'frames':
      _check_frame_headers(paths, method)
  with image_io.atomic_output_dir(output_dir, replace_if=(lambda _: True) if overwrite else None,
                                replace_hint='pass --overwrite to replace it') as tmp, \
      tqdm(total=total, desc=f'flow ({method})', unit='frame', disable=not show_progress) as progress:
    for kind, rel, paths in plan:
      out = os.path.join(tmp, rel)
      os.makedirs(out, exist_ok=True)
      if kind == 'flo':
        for p in paths:
          field = read_flo(p)
          image_io.write_jpg(os.path.join(out, image_io.stem(p) + '.jpg'), flow_to_image(field))
          if save_raw:
            shutil.copyfile(p, os.path.join(out, os.path.basename(p)))
          progress.update(1)
      elif kind == 'video':
        frames = ((f'{i:05d}', f, f'{paths[0]} frame {i}') for i, f in enumerate(frames_lib.VideoFrames(paths[0]).iter_frames()))
        _flow_sequence(frames, engine, out, save_raw, progress, paths[0])
      else:
        _flow_sequence(_frames_from_paths(paths), engine, out, save_raw, progress,
                       os.path.dirname(paths[0]) or input_path)
  return os.path.abspath(output_dir)
