"""Writes RGB frames as a browser-playable movie: H.264 (libx264) in MP4, yuv420p, through PyAV.

PyAV's wheel bundles FFmpeg with libx264, so no system FFmpeg is needed. Frames are padded to even sizes
(yuv420p needs them) and resized to the first frame's size. When no H.264 encoder is available, the movie
is written as an animated GIF instead (downscaled to GIF_MAX_SIDE and subsampled to GIF_MAX_FRAMES, since
Pillow keeps GIF frames in memory).
"""

from __future__ import annotations

import math
import os

from absl import logging
import numpy as np
from PIL import Image

from input_pipeline import frames as frames_lib

GIF_MAX_SIDE = 320
GIF_MAX_FRAMES = 300


class MovieWriter:
  """Appends uint8 RGB frames [h, w, 3] to `<directory>/<name>.mp4` (or .gif); `close()` finishes it."""

  def __init__(self, directory: str, name: str, fps: float, num_frames: int):
    self.directory, self.name = directory, name
    self.fps = fps if fps and math.isfinite(fps) and fps > 0 else 10.0
    self.num_frames = num_frames
    self.path: str | None = None
    self.kind: str | None = None  # 'mp4' (H.264) | 'gif'
    self._container = self._stream = None
    self._gif_frames: list[Image.Image] = []
    self._gif_stride = max(1, math.ceil(num_frames / GIF_MAX_FRAMES))
    self._index = 0
    self._size: tuple[int, int] | None = None  # (height, width) of the first frame

  def _open(self, height: int, width: int) -> None:
    self._size = (height, width)
    path = os.path.join(self.directory, self.name + '.mp4')
    try:
      import av  # pylint: disable=g-import-not-at-top
      from fractions import Fraction  # pylint: disable=g-import-not-at-top
      container = av.open(path, 'w')
      stream = container.add_stream('libx264', rate=Fraction(self.fps).limit_denominator(1001))
      stream.width, stream.height = width + width % 2, height + height % 2
      stream.pix_fmt = 'yuv420p'
      self._container, self._stream, self.path, self.kind = container, stream, path, 'mp4'
      return
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('No H.264 encoder works here (%s); writing the overlay movie as a GIF.', e)
      if os.path.exists(path):
        os.remove(path)
    self.path, self.kind = os.path.join(self.directory, self.name + '.gif'), 'gif'

  def add(self, frame: np.ndarray) -> None:
    """Appends one uint8 RGB frame."""
    if self._size is None:
      self._open(*frame.shape[:2])
    frame = frames_lib.resize(frame, self._size)
    height, width = self._size
    if self.kind == 'mp4':
      import av  # pylint: disable=g-import-not-at-top
      padded = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))
      for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format='rgb24')):
        self._container.mux(packet)
    elif self._index % self._gif_stride == 0:
      scale = min(1.0, GIF_MAX_SIDE / max(height, width))
      small = frames_lib.resize(frame, (max(1, round(height * scale)), max(1, round(width * scale))))
      self._gif_frames.append(Image.fromarray(small).convert('P', palette=Image.Palette.ADAPTIVE))
    self._index += 1

  def close(self) -> str | None:
    """Finishes the file; returns its path (None when no frame was added)."""
    if self.kind == 'mp4':
      for packet in self._stream.encode():
        self._container.mux(packet)
      self._container.close()
      self._container = self._stream = None
      if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
        raise RuntimeError(f'The movie writer produced no data at {self.path}.')
    elif self.kind == 'gif' and self._gif_frames:
      first, rest = self._gif_frames[0], self._gif_frames[1:]
      first.save(self.path, save_all=True, append_images=rest, loop=0,
                 duration=max(20, round(1000.0 * self._gif_stride / self.fps)))
      self._gif_frames = []
    return self.path

  def abort(self) -> None:
    if self._container is not None:
      try:
        self._container.close()
      except Exception:  # pylint: disable=broad-except
        pass
      self._container = self._stream = None
    self._gif_frames = []
