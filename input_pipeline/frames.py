"""Videos as lazily read frame sequences, their optical-flow images, and model-input preprocessing.

  FrameSource      a video as uint8 RGB frames [h, w, 3] with a name each, read lazily:
    FileFrames       a list of image files (a dataset record),
    FolderFrames     the image files of a folder, in natural order,
    VideoFrames      a video file, decoded with PyAV (FFmpeg bundled in the wheel);
  open_frames(path)  the right FrameSource for a folder or a video file.
  FlowSource       the flow image of each frame (frame k's flow: the motion from frame k to frame k + 1):
    FileFlow         precomputed flow images (one per frame, or one fewer: the last frame reuses the last),
    ComputedFlow     OpenCV DIS / Farneback flow computed from the frames, at a bounded resolution.
  prepare_rgb / prepare_flow   frames -> model inputs at size x size (the evaluation's and predict's rule).

Every error names the file and the fix (input_pipeline.images.DataError).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from input_pipeline import images as image_io

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv', '.gif')
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DataError = image_io.DataError


# ------------------------------------------------------------------------------------------------
# Model inputs.


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[h, w, c] or [h, w] to size=(height, width): area filter when shrinking both sides, else bilinear."""
  height, width = size
  if image.shape[:2] == (height, width):
    return image
  shrink = height < image.shape[0] and width < image.shape[1]
  return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def normalise_rgb(rgb: Any) -> Any:
  """RGB in 0..255 (numpy, or a tf tensor, clipped) -> ImageNet-normalised."""
  if not isinstance(rgb, np.ndarray):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    rgb = tf.clip_by_value(rgb, 0.0, 255.0)
  return (rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
  return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def prepare_rgb(frames: Sequence[np.ndarray], size: int | tuple[int, int]) -> np.ndarray:
  """uint8 RGB frames -> ImageNet-normalised float32 [b, height, width, 3]; size s means s x s, or (height,
  width)."""
  hw = _hw(size)
  return np.stack([normalise_rgb(resize(f, hw).astype(np.float32)) for f in frames]).astype(np.float32)


def prepare_flow(flows: Sequence[np.ndarray], size: int | tuple[int, int]) -> np.ndarray:
  """uint8 flow images -> float32 [b, height, width, 3] in [0, 1] (not normalised, as the official code)."""
  hw = _hw(size)
  return np.stack([resize(f, hw) for f in flows]).astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------------------
# Frames.


class FrameSource(abc.ABC):
  """A video as a sequence of uint8 RGB frames [h, w, 3], read lazily."""

  path: str
  names: list[str]  # one output name (no extension) per frame
  fps: float = 0.0

  def __len__(self) -> int:
    return len(self.names)

  @abc.abstractmethod
  def iter_frames(self) -> Iterator[np.ndarray]:
    """Yields every frame in order, one at a time."""

  def read(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """The frames at `indices` (one pass; memory = the requested frames)."""
    wanted, found = set(indices), {}
    for i, frame in enumerate(self.iter_frames()):
      if i in wanted:
        found[i] = frame
        if len(found) == len(wanted):
          break
    return found


class FileFrames(FrameSource):
  """Frames given as image files (a dataset record), with their names."""

  def __init__(self, paths: Sequence[str], names: Sequence[str] | None = None, *, path: str = ''):
    self.files = list(paths)
    self.names = [image_io.stem(p) for p in self.files] if names is None else [str(n) for n in names]
    self.path = path or (os.path.dirname(self.files[0]) if self.files else '')
    if len(self.names) != len(self.files):
      raise ValueError(f'{len(self.files)} frame files but {len(self.names)} names.')

  def iter_frames(self) -> Iterator[np.ndarray]:
    for f in self.files:
      yield image_io.read_rgb(f)

  def read(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
    return {i: image_io.read_rgb(self.files[i]) for i in sorted(set(indices))}


class FolderFrames(FileFrames):
  """The image files of a folder, in natural order of their names."""

  def __init__(self, path: str):
    files = [f for f in image_io.list_image_files(path) if os.path.isfile(f)]
    if not files:
      subfolders = sorted(f for f in os.listdir(path) if os.path.isdir(os.path.join(path, f)))
      hint = (f' It has sub-folders ({", ".join(subfolders[:3])}{", ..." if len(subfolders) > 3 else ""}): '
              'pass one sequence folder, e.g. --input=' + os.path.join(path, subfolders[0]) + '.'
              if subfolders else '')
      raise DataError(f'The input folder {path} holds no frames (image files ending in '
                      f'{", ".join(image_io.IMAGE_EXTENSIONS)}).{hint} Pass a folder of frames or a video file.')
    super().__init__(files, path=path)
    seen: dict[str, str] = {}
    for f, name in zip(files, self.names):
      if name in seen:
        raise DataError(f'The input folder {path} has two frames named {name!r} ({os.path.basename(seen[name])} '
                        f'and {os.path.basename(f)}); their masks would overwrite each other. Keep one of them.')
      seen[name] = f


def _open_container(path: str):
  import av  # pylint: disable=g-import-not-at-top
  try:
    container = av.open(path)
  except (av.error.FFmpegError, OSError) as e:  # pylint: disable=no-member
    raise DataError(f'Cannot open the video {path}: {e}. Convert it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or '
                    'extract its frames into a folder and pass the folder.') from e
  if not container.streams.video:
    container.close()
    raise DataError(f'{path} holds no video stream. Pass a video file or a folder of frames.')
  return container


class VideoFrames(FrameSource):
  """The frames of a video file, decoded with PyAV (no system FFmpeg needed)."""

  def __init__(self, path: str):
    self.path = path
    container = _open_container(path)
    try:
      stream = container.streams.video[0]
      rate = stream.average_rate or stream.guessed_rate
      self.fps = float(rate) if rate else 0.0
      # Counting packets needs no decoding; the container's frame count is often missing or wrong.
      count = sum(1 for packet in container.demux(stream) if packet.size)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f'The video {path} cannot be read ({e}); it may be corrupt. Re-encode it '
                      '(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or pass a folder of frames.') from e
    finally:
      container.close()
    if count == 0:
      raise DataError(f'The video {path} has no decodable frame (empty or corrupt). Re-encode it '
                      '(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or pass a folder of frames.')
    self.names = [f'{i:05d}' for i in range(count)]

  def iter_frames(self) -> Iterator[np.ndarray]:
    container = _open_container(self.path)
    produced = 0
    try:
      for frame in container.decode(video=0):
        if produced == len(self.names):
          break
        produced += 1
        yield frame.to_ndarray(format='rgb24')
    except Exception as e:  # pylint: disable=broad-except
      if isinstance(e, (DataError, GeneratorExit)):
        raise
      raise DataError(f'The video {self.path} stopped decoding at frame {produced} of {len(self)}: {e}. It may '
                      'be corrupt: re-encode it or extract its frames into a folder.') from e
    finally:
      container.close()
    if produced < len(self.names):
      raise DataError(f'The video {self.path} stopped decoding at frame {produced} of {len(self)}; it may be '
                      'corrupt. Re-encode it or extract its frames into a folder.')


def open_frames(input_path: str) -> FrameSource:
  """A FrameSource for a video file or a folder of frames; DataError naming the path otherwise."""
  if not input_path or not os.path.exists(input_path):
    raise DataError(f'The input {input_path!r} does not exist. Pass a video file or a folder of frames '
                    'with --input.')
  if os.path.isdir(input_path):
    return FolderFrames(input_path)
  if image_io.is_image_file(os.path.basename(input_path)):
    raise DataError(f'The input {input_path} is a single image; the models segment videos. Pass the folder '
                    'that holds the frames, or a video file.')
  return VideoFrames(input_path)


# ------------------------------------------------------------------------------------------------
# Optical flow images (colour-coded, uint8 RGB, at each frame's size).


class FlowSource(abc.ABC):
  """The flow image of each frame. Frame k's flow is the motion from frame k to frame k + 1."""

  description: dict[str, Any]

  @abc.abstractmethod
  def for_frames(self, start: int, frames: Sequence[np.ndarray], next_frame: np.ndarray | None,
                 previous_flow: np.ndarray | None) -> list[np.ndarray]:
    """Flow images of frames[start : start + len(frames)] of the video, in the streaming pass.

    `next_frame` is the frame after the last one (None at the end of the video); `previous_flow` is the
    flow image of the frame before `start` (None at the start).
    """

  @abc.abstractmethod
  def at(self, frames: FrameSource, indices: Sequence[int], known: dict[int, np.ndarray]) -> list[np.ndarray]:
    """Flow images of the frames at `indices`, exactly as the streaming pass makes them; `known` holds frames
    already read (index -> frame)."""


class FileFlow(FlowSource):
  """Precomputed flow images, one per frame (or one fewer: the last frame reuses the last flow)."""

  def __init__(self, paths: Sequence[str], num_frames: int, *, path: str = ''):
    self.files = list(paths)
    if len(self.files) not in (num_frames, num_frames - 1) or not self.files:
      where = path or (os.path.dirname(self.files[0]) if self.files else 'the flow folder')
      raise DataError(f'{where} holds {len(self.files)} flow images for {num_frames} frames; it needs '
                      f'{num_frames} (or {num_frames - 1}: the last frame then reuses the last flow). Recompute it '
                      'with --mode=flow on the same frames.')
    self.description = {'source': 'files', 'path': path, 'count': len(self.files)}

  @classmethod
  def from_folder(cls, path: str, num_frames: int) -> 'FileFlow':
    if not os.path.isdir(path):
      raise DataError(f'The flow folder {path} does not exist. Pass a folder of flow images made by '
                      '`--mode=flow` with --flow, or leave --flow out to compute the flow.')
    return cls(image_io.list_image_files(path), num_frames, path=path)

  def image(self, index: int) -> np.ndarray:
    return image_io.read_rgb(self.files[min(index, len(self.files) - 1)])

  def for_frames(self, start, frames, next_frame, previous_flow):
    del next_frame, previous_flow
    return [self.image(start + k) for k in range(len(frames))]

  def at(self, frames, indices, known):
    del frames, known
    return [self.image(i) for i in indices]


class ComputedFlow(FlowSource):
  """Optical flow computed with OpenCV, as --mode=flow computes it.

  Frames larger than `max_side` on their longer side are downscaled before the flow is computed (the flow
  image is then resized back), so a 4000x3000 frame costs what a 1024-pixel one does; the models see
  at most a few hundred pixels.
  """

  def __init__(self, method: str = 'dis', *, max_side: int = 1024):
    self.method = method
    self.max_side = int(max_side)
    self.description = {'source': 'computed', 'method': method, 'max_side': self.max_side}

  def _fields(self, sequence: Sequence[np.ndarray]) -> list[np.ndarray]:
    from input_pipeline import flow as flow_lib  # pylint: disable=g-import-not-at-top
    height, width = sequence[0].shape[:2]
    for k, f in enumerate(sequence):
      if f.shape[:2] != (height, width):
        raise DataError(f'Frame {k} of the batch is {f.shape[0]}x{f.shape[1]} but the video\'s frames are '
                        f'{height}x{width}: all frames of a video must have one size. Resize them first.')
    scale = min(1.0, self.max_side / max(height, width))
    small = sequence if scale == 1.0 else [resize(f, (max(16, round(height * scale)), max(16, round(width * scale))))
                                           for f in sequence]
    images = [flow_lib.flow_to_image(f) for f in flow_lib.compute_flow_frames(small, method=self.method)]
    return [resize(i, (height, width)) for i in images]

  def for_frames(self, start, frames, next_frame, previous_flow):
    del start
    sequence = list(frames) + ([next_frame] if next_frame is not None else [])
    flows = self._fields(sequence) if len(sequence) > 1 else []
    if next_frame is None:  # the last frame of the video has no successor: reuse the previous flow
      last = flows[-1] if flows else previous_flow
      if last is None:
        raise DataError('Optical flow needs at least two frames; this video has one. Pass a longer video, or '
                        'precomputed flow with --flow=DIR.')
      flows.append(last)
    return flows

  def at(self, frames, indices, known):
    last = len(frames) - 1
    if last == 0:
      raise DataError(f'Optical flow needs at least two frames; {frames.path} has one. Pass a longer video, or '
                      'precomputed flow with --flow=DIR.')
    needed = set()
    for i in indices:
      needed.update((i, i + 1) if i < last else (i - 1, i))
    pairs = frames.read(sorted(needed - set(known)))
    pairs.update(known)
    # Frame i < last pairs with i + 1; the last frame reuses the flow of the frame before it.
    return [self._fields([pairs[i], pairs[i + 1]])[0] if i < last else self._fields([pairs[i - 1], pairs[i]])[0]
            for i in indices]
