"""Segments your own videos with a trained GSA-Net checkpoint.

  python main.py --mode=predict --checkpoint=DIR --input=VIDEO_OR_FOLDER --output=DIR
                 [--flow=FLOW_DIR] [--tta] [--threshold=0.5] [--flow_method=dis] [--config=FILE]

What happens, per video:
  1. Frames are read lazily (a video file through OpenCV, or a folder of images in natural order).
     A first pass counts the frames; no frame is kept beyond the current batch.
  2. The N_R reference frames are the official test rule, frame indices i * (L // N_R), i = 0..N_R-1.
     They are encoded ONCE (GSANet.encode_references) and reused by every batch.
  3. Frames stream through in batches of `eval.batch_size`: optical flow for the batch (frame k with
     frame k+1; one frame of overlap with the next batch; the last frame reuses the previous flow),
     resizing to the model size (`data.image_size`, a multiple of 32), one compiled program for every
     batch (the last batch is padded, never recompiled), probabilities resized back to each frame's
     original size and thresholded.
  4. Outputs, written into a temporary folder next to --output and renamed into place at the end (no
     half-written output, also on Ctrl-C):
       masks/<frame>.png     binary masks, 'P' mode PNG with the DAVIS palette, values 0 (background,
                             black) and 1 (object, (128, 0, 0)): the DAVIS annotation format.
       overlays/<frame>.jpg  the frame with the mask blended in.
       overlay.mp4           the overlays as a movie (mp4v); overlay.gif when no MP4 encoder works.
       predictions.json      frames, reference frames, timings, frames per second, checkpoint, config.

The k-means key of frame i is fold_in(key(eval.kmeans_seed), i), so the masks do not depend on the batch
size, on padding or on the run: predicting twice gives identical files.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from absl import logging
import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv', '.gif')
# DAVIS palette: index 0 black (background), index 1 dark red (the object); the rest as in DAVIS.
DAVIS_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128, 128,
                 128, 128] + [0] * (256 * 3 - 24)
MASKS_DIR = 'masks'
OVERLAYS_DIR = 'overlays'
REPORT_JSON = 'predictions.json'
GIF_MAX_SIDE = 320
GIF_MAX_FRAMES = 300


class PredictError(ValueError):
  """A problem with the user's input; the message names the path and the fix."""


def natural_key(name: str) -> list:
  """Sort key that orders 'frame2' before 'frame10' (input_pipeline.images)."""
  from input_pipeline import images as image_io  # pylint: disable=g-import-not-at-top
  return image_io.natural_key(name)


# ------------------------------------------------------------------------------------------------
# Frames.


def _read_image_rgb(path: str) -> np.ndarray:
  """An image file as uint8 RGB [h, w, 3] (input_pipeline.images; DataError names the file)."""
  from input_pipeline import images as image_io  # pylint: disable=g-import-not-at-top
  return image_io.read_rgb(path)


class FrameSource(abc.ABC):
  """A video as a sequence of uint8 RGB frames [h, w, 3], read lazily."""

  path: str
  names: list[str]  # one output name (no extension) per frame

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


class FolderFrames(FrameSource):
  """The image files of a folder, in natural order of their names."""

  def __init__(self, path: str):
    from input_pipeline import images as image_io  # pylint: disable=g-import-not-at-top
    self.path = path
    files = [os.path.basename(f) for f in image_io.list_image_files(path) if os.path.isfile(f)]
    if not files:
      subfolders = sorted(f for f in os.listdir(path) if os.path.isdir(os.path.join(path, f)))
      hint = (f' It has sub-folders ({", ".join(subfolders[:3])}{", ..." if len(subfolders) > 3 else ""}): '
              'pass one sequence folder, e.g. --input=' + os.path.join(path, subfolders[0]) + '.'
              if subfolders else '')
      raise PredictError(f'The input folder {path} holds no frames (image files ending in '
                         f'{", ".join(image_io.IMAGE_EXTENSIONS)}).{hint} Pass a folder of frames or a video file.')
    self.files = [os.path.join(path, f) for f in files]
    self.names = [os.path.splitext(f)[0] for f in files]
    seen: dict[str, str] = {}
    for f, name in zip(files, self.names):
      if name in seen:
        raise PredictError(f'The input folder {path} has two frames named {name!r} ({seen[name]} and {f}); '
                           'their masks would overwrite each other. Keep one of them.')
      seen[name] = f

  def iter_frames(self) -> Iterator[np.ndarray]:
    for f in self.files:
      yield _read_image_rgb(f)

  def read(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
    return {i: _read_image_rgb(self.files[i]) for i in sorted(set(indices))}


class VideoFrames(FrameSource):
  """The frames of a video file (decoded with OpenCV; no system ffmpeg needed)."""

  def __init__(self, path: str):
    import cv2  # pylint: disable=g-import-not-at-top
    self.path = path
    capture = cv2.VideoCapture(path)
    try:
      if not capture.isOpened():
        raise PredictError(f'Cannot open the video {path}: OpenCV cannot decode it. Convert it to MP4 '
                           '(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or extract its frames into a folder '
                           'and pass the folder as --input.')
      self.fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
      count = 0
      while capture.grab():  # counts by decoding: the container's frame count is often wrong
        count += 1
    finally:
      capture.release()
    if count == 0:
      raise PredictError(f'The video {path} has no decodable frame (empty or corrupt). Re-encode it '
                         '(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or pass a folder of frames.')
    self.names = [f'{i:05d}' for i in range(count)]

  def iter_frames(self) -> Iterator[np.ndarray]:
    import cv2  # pylint: disable=g-import-not-at-top
    capture = cv2.VideoCapture(self.path)
    try:
      for i in range(len(self)):
        ok, frame = capture.read()
        if not ok:
          raise PredictError(f'The video {self.path} stopped decoding at frame {i} of {len(self)}; '
                             'it may be corrupt. Re-encode it or extract its frames into a folder.')
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
      capture.release()

  def read(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
    import cv2  # pylint: disable=g-import-not-at-top
    wanted, found = sorted(set(indices)), {}
    capture = cv2.VideoCapture(self.path)
    try:
      position = 0
      for i in wanted:
        while position < i:  # grab() skips the colour conversion of the frames in between
          if not capture.grab():
            raise PredictError(f'The video {self.path} stopped decoding at frame {position}.')
          position += 1
        ok, frame = capture.read()
        if not ok:
          raise PredictError(f'The video {self.path} stopped decoding at frame {i}.')
        position += 1
        found[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
      capture.release()
    return found


def open_frames(input_path: str) -> FrameSource:
  """A FrameSource for a video file or a folder of frames; PredictError naming the path otherwise."""
  if not input_path or not os.path.exists(input_path):
    raise PredictError(f'The input {input_path!r} does not exist. Pass a video file or a folder of frames '
                       'with --input.')
  if os.path.isdir(input_path):
    return FolderFrames(input_path)
  from input_pipeline import images as image_io  # pylint: disable=g-import-not-at-top
  if image_io.is_image_file(os.path.basename(input_path)):
    raise PredictError(f'The input {input_path} is a single image. GSA-Net segments videos: pass the folder '
                       'that holds the frames, or a video file.')
  return VideoFrames(input_path)


def reference_indices(num_frames: int, num_refs: int) -> list[int]:
  """The official test-time rule (input_pipeline.pipeline): frames i * (L // N_R), i = 0..N_R-1."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  return [int(i) for i in pipeline.reference_indices(num_frames, num_refs)]


# ------------------------------------------------------------------------------------------------
# Optical flow (colour-coded flow images, uint8 RGB, at each frame's size).


class FlowSource(abc.ABC):
  """Gives the flow image of each frame. Frame k's flow is the motion from frame k to frame k+1."""

  description: dict[str, Any]

  @abc.abstractmethod
  def for_frames(self, start: int, frames: Sequence[np.ndarray], next_frame: np.ndarray | None,
                 previous_flow: np.ndarray | None) -> list[np.ndarray]:
    """Flow images of frames[start : start + len(frames)] of the video.

    `next_frame` is the frame after the last one (None at the end of the video); `previous_flow` is
    the flow image of the frame before `start` (None at the start).
    """


class ComputedFlow(FlowSource):
  """Optical flow computed with OpenCV, as the flow mode computes it."""

  def __init__(self, method: str = 'dis'):
    self.method = method
    self.description = {'source': 'computed', 'method': method}

  def for_frames(self, start, frames, next_frame, previous_flow):
    del start
    from input_pipeline import flow as flow_lib  # pylint: disable=g-import-not-at-top
    sequence = list(frames) + ([next_frame] if next_frame is not None else [])
    height, width = sequence[0].shape[:2]  # frames of a folder may differ in size: flow at the first's
    sequence = [f if f.shape[:2] == (height, width) else resize(f, (height, width)) for f in sequence]
    fields = flow_lib.compute_flow_frames(sequence, method=self.method) if len(sequence) > 1 else []
    flows = [flow_lib.flow_to_image(f) for f in fields]
    if next_frame is None:  # the last frame of the video has no successor: reuse the previous flow
      last = flows[-1] if flows else previous_flow
      if last is None:
        raise PredictError('Optical flow needs at least two frames; this video has one. Pass a longer '
                           'video, or precomputed flow with --flow=DIR.')
      flows.append(last)
    return flows


class FolderFlow(FlowSource):
  """Precomputed flow images, one per frame (or one fewer: the last frame reuses the last flow)."""

  def __init__(self, path: str, num_frames: int):
    if not os.path.isdir(path):
      raise PredictError(f'The flow folder {path} does not exist. Pass a folder of flow images made by '
                         '`--mode=flow` with --flow, or leave --flow out to compute the flow.')
    from input_pipeline import images as image_io  # pylint: disable=g-import-not-at-top
    files = [os.path.basename(f) for f in image_io.list_image_files(path)]
    if len(files) not in (num_frames, num_frames - 1) or not files:
      raise PredictError(f'The flow folder {path} holds {len(files)} flow images for {num_frames} frames; '
                         f'it needs {num_frames} (or {num_frames - 1}, the last frame then reuses the last '
                         'flow). Recompute it with --mode=flow on the same input, or leave --flow out.')
    self.files = [os.path.join(path, f) for f in files]
    self.description = {'source': 'folder', 'path': path, 'count': len(files)}

  def image(self, index: int) -> np.ndarray:
    return _read_image_rgb(self.files[min(index, len(self.files) - 1)])

  def for_frames(self, start, frames, next_frame, previous_flow):
    del next_frame, previous_flow
    return [self.image(start + k) for k in range(len(frames))]


def reference_flows(flow_source: FlowSource, frames: FrameSource, indices: Sequence[int],
                    ref_frames: dict[int, np.ndarray]) -> list[np.ndarray]:
  """Flow images of the reference frames, exactly as the streaming pass computes them."""
  if isinstance(flow_source, FolderFlow):
    return [flow_source.image(i) for i in indices]
  last = len(frames) - 1
  if last == 0:
    raise PredictError(f'Optical flow needs at least two frames; {frames.path} has one. Pass a longer '
                       'video, or precomputed flow with --flow=DIR.')
  needed = set()
  for i in indices:
    needed.update((i, i + 1) if i < last else (i - 1, i))
  pairs = frames.read(sorted(needed - set(ref_frames)))
  pairs.update(ref_frames)
  flows = []
  for i in indices:
    if i < last:
      flows.append(flow_source.for_frames(i, [pairs[i]], pairs[i + 1], None)[0])
    else:  # the last frame reuses the flow of the frame before it
      flows.append(flow_source.for_frames(i - 1, [pairs[i - 1]], pairs[i], None)[0])
  return flows


# ------------------------------------------------------------------------------------------------
# Model input / output conversions (host side).


def model_size(image_size: int) -> int:
  """The model's square input size: `image_size` rounded to a multiple of 32 (at least 32)."""
  size = max(32, int(round(image_size / 32.0)) * 32)
  if size != image_size:
    logging.warning('data.image_size=%d is not a multiple of 32; using %d.', image_size, size)
  return size


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of an [h, w, c] or [h, w] array to size=(height, width); area filter to shrink."""
  import cv2  # pylint: disable=g-import-not-at-top
  height, width = size
  if image.shape[:2] == (height, width):
    return image
  shrink = height < image.shape[0] and width < image.shape[1]
  return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def preprocess_rgb(frames: Sequence[np.ndarray], size: int) -> np.ndarray:
  """uint8 RGB frames → ImageNet-normalised float32 [b, size, size, 3], exactly as the evaluation."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  return np.stack([pipeline._normalise(pipeline._resize(f, size).astype(np.float32))  # pylint: disable=protected-access
                   for f in frames]).astype(np.float32)


def preprocess_flow(flows: Sequence[np.ndarray], size: int) -> np.ndarray:
  """uint8 flow images → float32 [b, size, size, 3] in [0, 1] (no normalisation, as the official code)."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  return np.stack([pipeline._resize(f, size) for f in flows]).astype(np.float32) / 255.0  # pylint: disable=protected-access


def probability_to_mask(probability: np.ndarray, height: int, width: int, threshold: float) -> np.ndarray:
  """A [s, s] probability map → a bool [height, width] mask (bilinear upsampling, then > threshold)."""
  import cv2  # pylint: disable=g-import-not-at-top
  resized = cv2.resize(probability.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
  return resized > threshold


# ------------------------------------------------------------------------------------------------
# Writers.


def write_mask(path: str, mask: np.ndarray) -> None:
  """A bool [h, w] mask as a 'P' mode PNG (DAVIS palette): 0 = background, 1 = object."""
  image = Image.fromarray(mask.astype(np.uint8), mode='P')
  image.putpalette(DAVIS_PALETTE)
  image.save(path, optimize=False)


def overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The frame with the object tinted red and outlined in yellow (gsa_jax.visualize); uint8 [h, w, 3]."""
  from gsa_jax import visualize  # pylint: disable=g-import-not-at-top
  return visualize.overlay_mask(frame, mask)


class MovieWriter:
  """Writes frames to an MP4 (OpenCV, mp4v) or, when no MP4 encoder works, to a GIF (Pillow).

  Frames are padded to even sizes (MP4 encoders drop an odd last column/row) and resized to the first
  frame's size. The GIF is downscaled (longest side GIF_MAX_SIDE) and subsampled (GIF_MAX_FRAMES at most)
  because Pillow keeps GIF frames in memory.
  """

  def __init__(self, directory: str, name: str, fps: float, num_frames: int):
    self.directory, self.name = directory, name
    self.fps = fps if fps and math.isfinite(fps) and fps > 0 else 10.0
    self.num_frames = num_frames
    self.path: str | None = None
    self.kind: str | None = None
    self._writer = None
    self._gif_frames: list[Image.Image] = []
    self._gif_stride = max(1, math.ceil(num_frames / GIF_MAX_FRAMES))
    self._index = 0
    self._size: tuple[int, int] | None = None  # (height, width) of the first frame

  def _open(self, height: int, width: int) -> None:
    import cv2  # pylint: disable=g-import-not-at-top
    self._size = (height, width)
    path = os.path.join(self.directory, self.name + '.mp4')
    writer = None
    try:
      writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), self.fps,
                               (width + width % 2, height + height % 2))
    except cv2.error:  # pylint: disable=catching-non-exception
      writer = None
    if writer is not None and writer.isOpened():
      self._writer, self.path, self.kind = writer, path, 'mp4'
      return
    if writer is not None:
      writer.release()
    if os.path.exists(path):
      os.remove(path)
    logging.warning('No MP4 encoder works here; writing the overlay movie as a GIF.')
    self.path, self.kind = os.path.join(self.directory, self.name + '.gif'), 'gif'

  def add(self, frame: np.ndarray) -> None:
    """Appends one uint8 RGB frame."""
    import cv2  # pylint: disable=g-import-not-at-top
    if self._size is None:
      self._open(*frame.shape[:2])
    frame = resize(frame, self._size)
    if self.kind == 'mp4':
      height, width = self._size
      padded = cv2.copyMakeBorder(frame, 0, height % 2, 0, width % 2, cv2.BORDER_CONSTANT, value=0)
      self._writer.write(cv2.cvtColor(padded, cv2.COLOR_RGB2BGR))
    elif self._index % self._gif_stride == 0:
      height, width = self._size
      scale = min(1.0, GIF_MAX_SIDE / max(height, width))
      small = resize(frame, (max(1, round(height * scale)), max(1, round(width * scale))))
      self._gif_frames.append(Image.fromarray(small).convert('P', palette=Image.Palette.ADAPTIVE))
    self._index += 1

  def close(self) -> str | None:
    """Finishes the file; returns its path (None when no frame was added)."""
    if self.kind == 'mp4':
      self._writer.release()
      self._writer = None
      if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
        raise RuntimeError(f'The MP4 writer produced no data at {self.path}.')
    elif self.kind == 'gif' and self._gif_frames:
      first, rest = self._gif_frames[0], self._gif_frames[1:]
      first.save(self.path, save_all=True, append_images=rest, loop=0,
                 duration=max(20, round(1000.0 * self._gif_stride / self.fps)))
      self._gif_frames = []
    return self.path

  def abort(self) -> None:
    if self._writer is not None:
      self._writer.release()
      self._writer = None
    self._gif_frames = []


@contextlib.contextmanager
def atomic_output_dir(output_dir: str) -> Iterator[str]:
  """input_pipeline.images.atomic_output_dir: a temporary folder beside `output_dir`, renamed into place
  on success and deleted on any exception (KeyboardInterrupt included). Checked first by check_output_dir."""
  from input_pipeline import images as image_io  # pylint: disable=g-import-not-at-top
  check_output_dir(output_dir)
  with image_io.atomic_output_dir(output_dir) as tmp:
    yield tmp


def check_output_dir(output_dir: str) -> None:
  """PredictError unless `output_dir` is absent or an empty folder."""
  if os.path.isdir(output_dir):
    content = os.listdir(output_dir)
    if content:
      raise PredictError(
          f'The output folder {output_dir} already exists and is not empty ({len(content)} entries, e.g. '
          f'{sorted(content)[0]}). Choose a new --output, or delete the folder first '
          f'(rm -r {output_dir}).')
  elif os.path.exists(output_dir):
    raise PredictError(f'The output path {output_dir} is a file. Pass a folder path (new or empty) as --output.')


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


# ------------------------------------------------------------------------------------------------
# The model side: encode the references once, then segment batches with one compiled program.


class Segmenter(abc.ABC):
  """What the streaming loop needs from a model. Probabilities are float32 at [size, size]."""

  size: int
  batch_size: int

  @abc.abstractmethod
  def encode(self, ref_rgb: np.ndarray, ref_flow: np.ndarray) -> Any:
    """ref_rgb, ref_flow: [1, t, size, size, 3] → reference features (kept on device)."""

  @abc.abstractmethod
  def segment(self, rgb: np.ndarray, flow: np.ndarray, references: Any,
              frame_indices: np.ndarray) -> np.ndarray:
    """rgb, flow: [batch_size, size, size, 3]; frame_indices [batch_size] → probabilities [b, size, size]."""


@dataclasses.dataclass
class Timer:
  """Accumulates seconds per named stage."""
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)

  @contextlib.contextmanager
  def __call__(self, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _batches(frames: FrameSource, batch_size: int,
             timer: Timer) -> Iterator[tuple[int, list[np.ndarray], np.ndarray | None]]:
  """Yields (start, frames[start:start+batch_size], the frame after them or None); one frame of overlap."""
  iterator = frames.iter_frames()

  def next_frame() -> np.ndarray | None:
    with timer('read'):
      return next(iterator, None)

  start, pending = 0, next_frame()
  while pending is not None:
    batch = [pending]
    while len(batch) < batch_size:
      frame = next_frame()
      if frame is None:
        break
      batch.append(frame)
    pending = next_frame() if len(batch) == batch_size else None
    yield start, batch, pending
    start += len(batch)


def segment_video(frames: FrameSource, flow_source: FlowSource, segmenter: Segmenter, output_dir: str, *,
                  threshold: float = 0.5, num_refs: int = 4, progress: bool = True,
                  on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Streams `frames` through `segmenter` and writes masks, overlays and the movie into `output_dir`.

  Returns the per-video part of the report (frames, reference frames, timings, fps). Memory is bounded
  by the batch: frames are read lazily and only the current batch (plus one frame) is held.
  `on_batch(start)` is called before each batch (tests use it to inject failures).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  timer = Timer()
  num_frames, size, batch_size = len(frames), segmenter.size, segmenter.batch_size
  start_time = time.perf_counter()
  os.makedirs(os.path.join(output_dir, MASKS_DIR))
  os.makedirs(os.path.join(output_dir, OVERLAYS_DIR))

  ref_indices = reference_indices(num_frames, num_refs)
  with timer('read'):
    ref_frames = frames.read(ref_indices)
  with timer('flow'):
    ref_flow_images = reference_flows(flow_source, frames, ref_indices, ref_frames)
  with timer('preprocess'):
    ref_rgb = preprocess_rgb([ref_frames[i] for i in ref_indices], size)[None]
    ref_flow = preprocess_flow(ref_flow_images, size)[None]
  compile_before = getattr(segmenter, 'compile_seconds', 0.0)

  def run_model(name: str, fn: Callable[[], Any]) -> Any:
    # The first encode and the first batch compile their programs; compilation is reported on its
    # own and left out of the timings and the frames per second.
    before = getattr(segmenter, 'compile_seconds', 0.0)
    with timer(name):
      result = fn()
    timer.seconds[name] -= getattr(segmenter, 'compile_seconds', 0.0) - before
    return result

  references = run_model('encode_references', lambda: segmenter.encode(ref_rgb, ref_flow))
  del ref_frames, ref_flow_images

  movie = MovieWriter(output_dir, 'overlay', getattr(frames, 'fps', 0.0) or 10.0, num_frames)
  records: list[dict[str, Any]] = []
  previous_flow = None
  bar = tqdm(total=num_frames, unit='frame', desc=os.path.basename(frames.path.rstrip('/')) or 'predict',
             disable=not progress, dynamic_ncols=True)
  try:
    for start, batch, after in _batches(frames, batch_size, timer):
      if on_batch is not None:
        on_batch(start)
      with timer('flow'):
        flow_images = flow_source.for_frames(start, batch, after, previous_flow)
      previous_flow = flow_images[-1]
      with timer('preprocess'):
        count = len(batch)
        padding = batch_size - count  # pad the last batch with its last frame: same program, no recompile
        rgb = preprocess_rgb(batch + [batch[-1]] * padding, size)
        flow = preprocess_flow(flow_images + [flow_images[-1]] * padding, size)
        indices = np.arange(start, start + batch_size, dtype=np.int32)
      probabilities = run_model(
          'model', lambda: np.asarray(segmenter.segment(rgb, flow, references, indices))[:count])
      for k in range(count):
        i = start + k
        frame = batch[k]
        height, width = frame.shape[:2]
        with timer('postprocess'):
          mask = probability_to_mask(probabilities[k], height, width, threshold)
          tinted = overlay(frame, mask)
        with timer('write'):
          name = frames.names[i]
          write_mask(os.path.join(output_dir, MASKS_DIR, name + '.png'), mask)
          Image.fromarray(tinted).save(os.path.join(output_dir, OVERLAYS_DIR, name + '.jpg'), quality=90)
          movie.add(tinted)
        records.append({'index': i, 'name': name, 'mask': f'{MASKS_DIR}/{name}.png',
                        'overlay': f'{OVERLAYS_DIR}/{name}.jpg', 'height': height, 'width': width,
                        'foreground_fraction': round(float(mask.mean()), 6),
                        'mean_probability': round(float(probabilities[k].mean()), 6)})
      bar.update(count)
    with timer('write'):
      movie_path = movie.close()
  except BaseException:
    movie.abort()
    raise
  finally:
    bar.close()

  compile_s = getattr(segmenter, 'compile_seconds', 0.0) - compile_before
  total = time.perf_counter() - start_time - compile_s
  seconds = {k: round(v, 4) for k, v in sorted(timer.seconds.items())}
  flow_s = timer.seconds.get('flow', 0.0)
  model_s = timer.seconds.get('model', 0.0) + timer.seconds.get('encode_references', 0.0)
  return {
      'num_frames': num_frames,
      'reference_frames': [{'index': i, 'name': frames.names[i]} for i in ref_indices],
      'frames': records,
      'movie': os.path.basename(movie_path) if movie_path else None,
      'movie_format': movie.kind,
      'timings_s': {**seconds, 'compile': round(compile_s, 4), 'total': round(total, 4)},
      'frames_per_second': {
          'including_flow': round(num_frames / total, 3),
          'excluding_flow': round(num_frames / max(total - flow_s, 1e-9), 3),
          'model_only': round(num_frames / max(model_s, 1e-9), 3),
      },
  }


class ModelSegmenter(Segmenter):
  """The evaluation loop's compiled programs (gsa_jax.evaluate.Segmenter) driven batch by batch.

  evaluate.Segmenter compiles encode_references and the batch program once (ahead of time), gives
  frame i the k-means key fold_in(key(eval.kmeans_seed), i) and vmaps the frames of a batch one by one
  (so a mask does not depend on the batch it is in), and runs TTA (eval.tta_scales x {no flip, flip},
  probabilities resized back, unflipped and averaged) inside the same program.
  """

  def __init__(self, model, variables, config, *, tta: bool = False):
    from gsa_jax import evaluate  # pylint: disable=g-import-not-at-top
    self._inner = evaluate.Segmenter(model, variables, config, tta=tta)
    self.size, self.batch_size = self._inner.size, self._inner.batch_size
    self.augmentations = list(self._inner.augmentations)

  @property
  def compile_seconds(self) -> float:
    return self._inner.compile_seconds

  @property
  def variables(self) -> Any:
    """The model variables, on the device."""
    return self._inner.variables

  def encode(self, ref_rgb, ref_flow):
    return self._inner.encode(np.asarray(ref_rgb, np.float32)[0], np.asarray(ref_flow, np.float32)[0])

  def segment(self, rgb, flow, references, frame_indices):
    probability, _ = self._inner.segment_batch(rgb, flow, references, frame_indices)
    return probability


def full_forward(model, kmeans_seed: int = 0) -> Callable[..., Any]:
  """The uncached baseline under jit: GSANet.__call__ per frame, references re-encoded every time.

  Returns f(variables, rgb [1,s,s,3], flow, ref_rgb [1,t,s,s,3], ref_flow, frame_index) → probabilities
  [1, s, s], with the same k-means key per frame as JaxSegmenter (so the two must agree).
  """
  import jax  # pylint: disable=g-import-not-at-top

  @jax.jit
  def forward(variables, rgb, flow, ref_rgb, ref_flow, frame_index):
    key = jax.random.fold_in(jax.random.key(kmeans_seed), frame_index)
    out = model.apply(variables, rgb, flow, ref_rgb, ref_flow, train=False, kmeans_key=key)
    return jax.nn.sigmoid(out['logits'][..., 0].astype('float32'))

  return forward


# ------------------------------------------------------------------------------------------------
# Checkpoint → model.


def check_variables_match(expected: Any, restored: Any, checkpoint: str) -> None:
  """PredictError naming the first parameter whose presence or shape differs between the two trees."""
  import jax  # pylint: disable=g-import-not-at-top
  flat_expected = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  flat_restored = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(restored)}
  fix = ('The checkpoint was trained with another config: leave --config out to use the config saved '
         'with the checkpoint, or pass the config it was trained with.')
  missing = sorted(set(flat_expected) - set(flat_restored))
  extra = sorted(set(flat_restored) - set(flat_expected))
  if missing or extra:
    raise PredictError(f'The checkpoint {checkpoint} does not fit the model: '
                       f'{len(missing)} parameters missing (e.g. {missing[:2]}), {len(extra)} unexpected '
                       f'(e.g. {extra[:2]}). {fix}')
  for name, value in flat_expected.items():
    got = tuple(np.shape(flat_restored[name]))
    if got != tuple(value.shape):
      raise PredictError(f'The checkpoint {checkpoint} does not fit the model: {name} has shape {got} in the '
                         f'checkpoint and {tuple(value.shape)} in the model. {fix}')


def abstract_variables(model, config, size: int) -> Any:
  """The {'params', 'batch_stats'} shapes of `model` (jax.eval_shape of init; nothing is computed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  t = int(config.data.num_refs)
  image = jnp.zeros((1, size, size, 3), jnp.float32)
  refs = jnp.zeros((1, t, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), image, image, refs, refs, train=False,
                                             kmeans_key=jax.random.key(0)))
  return {k: v for k, v in shapes.items() if k in ('params', 'batch_stats')}


def load_checkpoint(checkpoint: str, config=None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
  """(config, variables, description) of a checkpoint.

  `checkpoint`: a workdir of --mode=train / --mode=demo (its best validated step, else the latest), its
  checkpoints/ folder, one step folder, or a converted whole-model checkpoint (variables/ + meta.json,
  which needs `config`). `config` None uses the config saved with the checkpoint.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gsa_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  if not checkpoint or not os.path.exists(checkpoint):
    raise PredictError(f'The checkpoint {checkpoint!r} does not exist. Pass the workdir of a training or demo '
                       'run (python main.py --mode=demo --workdir=DIR makes one) with --checkpoint.')
  if os.path.isfile(os.path.join(checkpoint, 'meta.json')) and os.path.isdir(os.path.join(checkpoint, 'variables')):
    from gsa_jax import convert  # pylint: disable=g-import-not-at-top
    meta, variables = convert.load_converted(checkpoint)
    if meta.get('scope') != 'model':
      raise PredictError(f'{checkpoint} holds converted {meta.get("kind")} backbone weights, not a whole model. '
                         'Train with --config.train.init_from=' + checkpoint + ' first, then predict with the '
                         'workdir.')
    if config is None:
      raise PredictError(f'The converted checkpoint {checkpoint} has no saved config: pass the config it was '
                         'converted for with --config (e.g. configs/davis_mitb2.py).')
    info = {'path': os.path.abspath(checkpoint), 'kind': 'converted', 'meta': meta}
  else:
    try:
      variables, meta = checkpoint_lib.load_variables(checkpoint)
    except checkpoint_lib.CheckpointError as e:
      raise PredictError(f'{e} Pass the workdir of a training or demo run with --checkpoint.') from e
    saved = meta.get('config')
    if config is None:
      if not saved:
        raise PredictError(f'The checkpoint {meta["checkpoint"]} has no saved config; pass the config it was '
                           'trained with via --config.')
      config = ml_collections.ConfigDict(saved)
    val = meta.get('val') or {}
    info = {'path': meta['checkpoint'], 'kind': 'training', 'step': meta.get('step'),
            'selected_by': 'best validation G' if val.get(checkpoint_lib.BEST_METRIC) is not None else 'latest',
            'validation': val or None}
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats') or {}}
  return config, variables, info


def config_summary(config) -> dict[str, Any]:
  """The config fields that decide what the masks are."""
  m, d, e = config.model, config.data, config.eval
  return {'model': {'kind': m.kind, 'backbone': m.backbone, 'dim': m.dim, 'num_slots': m.num_slots,
                    'num_clusters': m.num_clusters, 'kmeans_iters': m.kmeans_iters, 'dtype': m.dtype},
          'data': {'image_size': d.image_size, 'num_refs': d.num_refs},
          'eval': {'batch_size': e.batch_size, 'kmeans_seed': e.kmeans_seed, 'tta_scales': list(e.tta_scales)}}


# ------------------------------------------------------------------------------------------------
# Entry point.


def predict(checkpoint: str, input_path: str, output_dir: str, flow_dir: str | None = None, tta: bool = False,
            threshold: float = 0.5, flow_method: str = 'dis', config=None, *, batch_size: int | None = None,
            progress: bool = True, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Segments one video (file or frame folder) with a checkpoint; writes `output_dir` (see module doc).

  Args:
    checkpoint: a workdir of `--mode=train` or `--mode=demo` (its best checkpoint, else the latest), or
      one checkpoint folder.
    input_path: a video file or a folder of frames.
    output_dir: a new (or empty) folder; it appears only when everything is written.
    flow_dir: precomputed flow images (one per frame, or one fewer); None computes them.
    tta: multi-scale (eval.tta_scales) + horizontal-flip test-time augmentation.
    threshold: probability threshold of the masks.
    flow_method: OpenCV optical flow method when the flow is computed.
    config: None to use the config saved with the checkpoint; else a config (must fit the checkpoint).
    batch_size: frames per batch (default eval.batch_size).
    progress: show a tqdm progress bar.
    on_batch: called with the first frame index of every batch (for tests).
  Returns:
    The report that is also written to `predictions.json`.
  """
  started = time.perf_counter()
  if not 0.0 < threshold < 1.0:
    raise PredictError(f'--threshold={threshold} must lie strictly between 0 and 1 (default 0.5).')
  output_dir = os.path.abspath(output_dir)
  check_output_dir(output_dir)  # fail before the slow parts
  frames = open_frames(input_path)
  if flow_dir:
    flow_source: FlowSource = FolderFlow(flow_dir, len(frames))
  else:
    if len(frames) < 2:
      raise PredictError(f'{input_path} has a single frame, and optical flow needs two consecutive frames. '
                         'Pass a video of two frames or more, or precomputed flow with --flow=DIR.')
    flow_source = ComputedFlow(flow_method)

  config_given = config is not None
  config, variables, checkpoint_info = load_checkpoint(checkpoint, config)
  if config.model.kind != 'video':
    raise PredictError(f'The checkpoint {checkpoint} holds a {config.model.kind!r} model (stage 1, RGB only); '
                       'predict needs a video model (model.kind="video"). Fine-tune it on videos first.')
  from gsa_jax.models.gsanet import network as models  # pylint: disable=g-import-not-at-top
  model = models.build_model(config.model)
  size = model_size(int(config.data.image_size))
  try:
    check_variables_match(abstract_variables(model, config, size), variables, checkpoint_info['path'])
  except PredictError as e:
    if not config_given:
      raise
    raise PredictError(f'{e} (--config was given: leave it out to use the checkpoint\'s own config.)') from e
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config.to_dict())  # a copy: the caller's config stays as it was
  config.data.image_size = size
  if batch_size:
    config.eval.batch_size = int(batch_size)
  segmenter = ModelSegmenter(model, variables, config, tta=tta)
  load_s = time.perf_counter() - started

  with atomic_output_dir(output_dir) as tmp:
    video = segment_video(frames, flow_source, segmenter, tmp, threshold=threshold,
                          num_refs=int(config.data.num_refs), progress=progress, on_batch=on_batch)
    report = {
        'input': os.path.abspath(input_path),
        'input_kind': 'folder' if isinstance(frames, FolderFrames) else 'video',
        'output': output_dir,
        'checkpoint': checkpoint_info,
        'config': config_summary(config),
        'model_size': [size, size],
        'batch_size': segmenter.batch_size,
        'threshold': threshold,
        'tta': {'enabled': bool(tta), 'augmentations': [{'size': s, 'hflip': f} for s, f in segmenter.augmentations]},
        'flow': flow_source.description,
        'mask_format': "'P' PNG, DAVIS palette, 0 = background, 1 = object",
        **video,
    }
    report['timings_s']['load_checkpoint'] = round(load_s, 4)
    with open(os.path.join(tmp, REPORT_JSON), 'w', encoding='utf-8') as f:
      json.dump(_jsonable(report), f, indent=2, allow_nan=False)
  fps = report['frames_per_second']
  logging.info('Wrote %d masks to %s (%.2f frames/s with flow, %.2f without; compile %.1f s).',
               report['num_frames'], output_dir, fps['including_flow'], fps['excluding_flow'],
               report['timings_s']['compile'])
  print(f'predict: {report["num_frames"]} frames → {output_dir} '
        f'({fps["including_flow"]:.2f} frames/s with flow, {fps["excluding_flow"]:.2f} without)')
  return report
