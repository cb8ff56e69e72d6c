"""The one inference path: per-video context encoded once, compiled batches, frames streamed.

Training-time validation, `--mode=evaluate` and `--mode=predict` all run a video through `run_video`:

  1. the segmenter names the frames its per-video context needs (`context_indices`: the N_R reference
     frames of GSA-Net / DPA); they and their flow images are read and encoded ONCE (`encode`);
  2. frames stream through in batches of `batch_size`: read lazily, their flow images made for the batch
     (one frame of overlap with the next batch), resized to the model size, and segmented by one compiled
     program (the last batch is padded with its last frame, never recompiled);
  3. every frame comes back as a `FrameResult` (the original frame, its flow image, the probability map at
     the model size, optional extra maps), in order, with only the current batch in memory.
`probability_to_mask` turns a probability map into the mask at the frame's own size (bilinear, then
> threshold): evaluation and predict write the same masks. `mask_png` writes one mask format, the DAVIS
palette PNG (0 background, 1.. objects), which the official DAVIS tools read.

Instance models (output_kind 'instances') build their segmenter on `InstanceSegmenter`: `segment` returns
{'ids': [batch_size, h, w] int32} (0 background, 1.. objects, one id per object over the whole video), and
`frame_ids` gives one frame's id map at the frame's own size (nearest neighbour by default; a model may
override it, e.g. to upsample its soft masks before the argmax). run_video then fills `FrameResult.ids`.

`BinarySegmenter` is the segmenter of the binary-mask models (GSA-Net, its stage-1 variant, DPA): the
model gives an `encode_fn` and a `segment_fn`; this class adds test-time augmentation (scales x
horizontal flip, probabilities resized back, unflipped and averaged inside the compiled program), a cache
of compiled programs with their compile time, and data parallelism over the local devices (the batch is
split across them; several hosts split the videos, see gsa_jax.evaluate).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from input_pipeline import frames as frames_lib
from input_pipeline import images as image_io

# DAVIS palette: index 0 black (background), 1 dark red (the first object), then the DAVIS colours.
DAVIS_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128, 128, 128, 128,
                 64, 0, 0, 191, 0, 0, 64, 128, 0, 191, 128, 0, 64, 0, 128, 191, 0, 128, 64, 128, 128, 191, 128, 128,
                 0, 64, 0, 128, 64, 0, 0, 191, 0, 128, 191, 0, 0, 64, 128, 128, 64, 128]
DAVIS_PALETTE = DAVIS_PALETTE + [0] * (256 * 3 - len(DAVIS_PALETTE))


# ------------------------------------------------------------------------------------------------
# Timing.


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


# ------------------------------------------------------------------------------------------------
# Segmenters.


class Segmenter(abc.ABC):
  """A model's compiled inference on one video: context once, then batches of frames at size x size (or at
  input_hw = (height, width) when the segmenter sets it)."""

  size: int
  input_hw: tuple[int, int] | None = None
  batch_size: int
  modalities: tuple[str, ...]  # the per-frame inputs: ('rgb',) or ('rgb', 'flow')
  compile_seconds: float = 0.0

  @abc.abstractmethod
  def context_indices(self, num_frames: int) -> list[int]:
    """The frames whose inputs form the per-video context ([] when the model needs none)."""

  @abc.abstractmethod
  def encode(self, context: Mapping[str, np.ndarray]) -> Any:
    """Context inputs ({modality: [t, size, size, 3]}) -> the per-video context (kept on device)."""

  @abc.abstractmethod
  def segment(self, inputs: Mapping[str, np.ndarray], frame_indices: np.ndarray, context: Any, *,
              extras: bool = False) -> dict[str, np.ndarray]:
    """A batch ({modality: [batch_size, size, size, 3]}, frame numbers [batch_size]) -> {'prob':
    [batch_size, size, size] float32, plus extra maps [batch_size, size, size] when `extras`}."""

  @abc.abstractmethod
  def set_variables(self, variables: Mapping[str, Any]) -> None:
    """Swaps in new variables of the same shapes (validation during training: no recompilation)."""

  def describe(self) -> dict[str, Any]:
    return {'size': self.size, 'batch_size': self.batch_size, 'modalities': list(self.modalities)}


class ProgramCache:
  """Compiles a segmenter's programs once per (name, argument shapes and dtypes) and adds the compile time to
  `compile_seconds`: `self._program(name, fn, *args)` runs the compiled `fn(*args)`."""

  compile_seconds: float = 0.0

  def _program(self, name: str, fn: Callable, *args):
    compiled = self.__dict__.setdefault('_compiled', {})
    key = (name,) + tuple((np.shape(a), str(getattr(a, 'dtype', ''))) for a in jax.tree.leaves(args))
    if key not in compiled:
      start = time.perf_counter()
      compiled[key] = jax.jit(fn).lower(*args).compile()
      self.compile_seconds += time.perf_counter() - start
    return compiled[key](*args)


class InstanceSegmenter(Segmenter):
  """A segmenter of instance ids: `segment` returns {'ids': [batch_size, h, w] int32, optional extras}.

  Ids are video-level (an object keeps its id over the frames); 0 is background. Subclasses implement
  context_indices / encode / segment / set_variables as for any Segmenter.
  """

  output_kind = 'instances'

  def frame_ids(self, outputs: Mapping[str, np.ndarray], height: int, width: int) -> np.ndarray:
    """One frame's outputs (segment's maps for that frame, 'ids' [h, w]) -> its id map [height, width]."""
    return resize_ids(outputs['ids'], height, width)


def resize_ids(ids: np.ndarray, height: int, width: int) -> np.ndarray:
  """An id map [h, w] -> [height, width] int32 by nearest neighbour (ids are labels, never blended)."""
  ids = np.asarray(ids)
  if ids.shape == (height, width):
    return ids.astype(np.int32)
  return cv2.resize(ids.astype(np.int32).astype(np.float32), (width, height),
                    interpolation=cv2.INTER_NEAREST).astype(np.int32)


def frame_ids(segmenter: Segmenter, result: FrameResult, height: int, width: int) -> np.ndarray:
  """The id map [height, width] of a FrameResult of an instance segmenter (any Segmenter giving 'ids')."""
  outputs = dict(result.extras, ids=result.ids)
  fn = getattr(segmenter, 'frame_ids', None)
  return np.asarray(fn(outputs, height, width) if fn else resize_ids(result.ids, height, width), np.int32)


def segmenter_output_kind(segmenter: Segmenter) -> str:
  return getattr(segmenter, 'output_kind', 'binary')


def tta_augmentations(size: int, tta: bool, scales: Sequence[float]) -> list[tuple[int, bool]]:
  """(image size, horizontal flip) pairs; sizes rounded to multiples of 32."""
  if not tta:
    return [(size, False)]
  sizes = sorted({max(32, int(round(size * s / 32.0)) * 32) for s in scales})
  return [(s, flip) for s in sizes for flip in (False, True)]


def _augment(x: jnp.ndarray, size: int, flip: bool) -> jnp.ndarray:
  """[n, s, s, c] -> [n, size, size, c], mirrored when `flip`."""
  if x.shape[1] != size:
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), 'bilinear')
  return x[:, :, ::-1] if flip else x


def local_mesh() -> jax.sharding.Mesh:
  """A 1-D 'data' mesh over this process's devices (inference runs per process)."""
  return jax.sharding.Mesh(np.array(jax.local_devices()), ('data',))


EncodeFn = Callable[[Any, dict[str, jnp.ndarray]], Any]
SegmentFn = Callable[[Any, dict[str, jnp.ndarray], Any, jnp.ndarray], dict[str, jnp.ndarray]]


class BinarySegmenter(Segmenter):
  """Segmenter of a foreground-probability model (see the module docstring).

  encode_fn(variables, {modality: [1, t, s, s, 3]}) -> context features (None: no context);
  segment_fn(variables, {modality: [b, s, s, 3]}, features, frame_indices [b]) -> {'prob': [b, s, s, 1],
  optional extra maps [b, s, s, 1]} (e.g. 'fg_slot').
  """

  def __init__(self, variables: Mapping[str, Any], *, size: int, batch_size: int, modalities: Sequence[str],
               segment_fn: SegmentFn, encode_fn: EncodeFn | None = None,
               context_rule: Callable[[int], list[int]] | None = None, tta: bool = False,
               tta_scales: Sequence[float] = (0.75, 1.0, 1.25)):
    self.size = int(size)
    self.mesh = local_mesh()
    devices = self.mesh.devices.size
    self.batch_size = -(-int(batch_size) // devices) * devices  # a multiple of the local devices
    self.modalities = tuple(modalities)
    self._segment_fn, self._encode_fn, self._context_rule = segment_fn, encode_fn, context_rule
    self.augmentations = tta_augmentations(self.size, tta, tuple(tta_scales))
    self._replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self._batched = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec('data'))
    self.set_variables(variables)
    self._compiled: dict[Any, Any] = {}
    self.compile_seconds = 0.0

  def describe(self) -> dict[str, Any]:
    return dict(super().describe(), tta=[{'size': s, 'hflip': f} for s, f in self.augmentations],
                devices=int(self.mesh.devices.size))

  def set_variables(self, variables: Mapping[str, Any]) -> None:
    self.variables = jax.device_put(dict(variables), self._replicated)

  def context_indices(self, num_frames: int) -> list[int]:
    return [] if self._context_rule is None else list(self._context_rule(num_frames))

  def _encode_program(self, variables, context):
    features = []
    for size, flip in self.augmentations:
      augmented = {}
      for name, x in context.items():
        b, t, s = x.shape[:3]
        augmented[name] = _augment(x.reshape(b * t, s, s, x.shape[-1]), size, flip).reshape(b, t, size, size, -1)
      features.append(self._encode_fn(variables, augmented))
    return tuple(features)

  def _segment_program(self, variables, inputs, features, frame_indices, *, extras: bool):
    b, s = next(iter(inputs.values())).shape[:2]
    total = jnp.zeros((b, s, s, 1), jnp.float32)
    extra: dict[str, jnp.ndarray] = {}
    for a, (size, flip) in enumerate(self.augmentations):
      out = self._segment_fn(variables, {k: _augment(v, size, flip) for k, v in inputs.items()},
                             None if features is None else features[a], frame_indices)
      maps = {k: v.astype(jnp.float32) for k, v in out.items() if k == 'prob' or (extras and a == 0)}
      for k, v in maps.items():
        if flip:
          v = v[:, :, ::-1]
        if size != s:
          v = jax.image.resize(v, (b, s, s, v.shape[-1]), 'bilinear')
        if k == 'prob':
          total = total + v
        else:
          extra[k] = v[..., 0]
    return dict(extra, prob=(total / len(self.augmentations))[..., 0])

  def _program(self, name: str, fn: Callable, args: tuple, shardings: tuple):
    key = (name,) + tuple((np.shape(a), str(getattr(a, 'dtype', ''))) for a in jax.tree.leaves(args))
    if key not in self._compiled:
      start = time.perf_counter()
      self._compiled[key] = jax.jit(fn, in_shardings=shardings).lower(*args).compile()
      self.compile_seconds += time.perf_counter() - start
    return self._compiled[key]

  def encode(self, context: Mapping[str, np.ndarray]) -> Any:
    if self._encode_fn is None:
      return None
    batch = {k: jnp.asarray(np.asarray(v, np.float32)[None]) for k, v in context.items()}
    args = (self.variables, batch)
    program = self._program('encode', self._encode_program, args, (self._replicated, self._replicated))
    return program(*args)

  def segment(self, inputs, frame_indices, context, *, extras=False):
    batch = {k: jnp.asarray(v, jnp.float32) for k, v in inputs.items()}
    args = (self.variables, batch, context, jnp.asarray(frame_indices, jnp.int32))
    fn = functools.partial(self._segment_program, extras=extras)
    shardings = (self._replicated, self._batched, self._replicated, self._batched)
    out = self._program(('segment', extras), fn, args, shardings)(*args)
    return {k: np.asarray(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------
# Streaming a video through a segmenter.


@dataclasses.dataclass
class FrameResult:
  """One segmented frame: its index and name, the original frame (and flow image), the probability map
  [size, size] (binary models; None for instance models), the id map at the model size (instance models;
  None for binary ones) and any extra maps at the model size."""
  index: int
  name: str
  frame: np.ndarray
  flow: np.ndarray | None
  prob: np.ndarray | None
  extras: dict[str, np.ndarray]
  ids: np.ndarray | None = None


def _batches(frames: frames_lib.FrameSource, batch_size: int,
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


def _prepare(modality: str, images: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
  return frames_lib.prepare_rgb(images, size) if modality == 'rgb' else frames_lib.prepare_flow(images, size)


def run_video(segmenter: Segmenter, frames: frames_lib.FrameSource, flows: frames_lib.FlowSource | None = None, *,
              timer: Timer | None = None, extras: bool = False,
              on_batch: Callable[[int], None] | None = None) -> Iterator[FrameResult]:
  """Segments every frame of `frames` (flow images from `flows` when the model takes flow), in order.

  Compilation time is kept out of `timer` (it goes to segmenter.compile_seconds). `on_batch(start)` is called
  before each batch (tests use it to inject failures).
  """
  timer = Timer() if timer is None else timer
  num_frames, batch_size = len(frames), segmenter.batch_size
  # The frames go in at the segmenter's input_hw (height, width) when it has one, else size x size.
  size = tuple(getattr(segmenter, 'input_hw', None) or (segmenter.size, segmenter.size))
  needs_flow = 'flow' in segmenter.modalities
  if needs_flow and flows is None:
    raise ValueError('This model takes optical flow: pass a FlowSource.')

  def run_model(name: str, fn: Callable[[], Any]) -> Any:
    before = segmenter.compile_seconds
    with timer(name):
      result = fn()
    timer.seconds[name] -= segmenter.compile_seconds - before
    return result

  context_indices = segmenter.context_indices(num_frames)
  context = None
  if context_indices:
    with timer('read'):
      known = frames.read(context_indices)
    images = {'rgb': [known[i] for i in context_indices]}
    if needs_flow:
      with timer('flow'):
        images['flow'] = flows.at(frames, context_indices, known)
    with timer('preprocess'):
      inputs = {m: _prepare(m, images[m], size) for m in segmenter.modalities}
    context = run_model('encode', lambda: segmenter.encode(inputs))
    del known, images

  first_shape = None
  previous_flow = None
  for start, batch, after in _batches(frames, batch_size, timer):
    if on_batch is not None:
      on_batch(start)
    for k, frame in enumerate(batch):
      first_shape = first_shape or frame.shape[:2]
      if frame.shape[:2] != first_shape:
        raise image_io.DataError(
            f'Frame {frames.names[start + k]} of {frames.path} is {frame.shape[0]}x{frame.shape[1]} but the first '
            f'frame is {first_shape[0]}x{first_shape[1]}: all frames of a video must have one size.')
    flow_images = None
    if needs_flow:
      with timer('flow'):
        flow_images = flows.for_frames(start, batch, after, previous_flow)
      previous_flow = flow_images[-1]
    with timer('preprocess'):
      count = len(batch)
      padding = batch_size - count  # pad the last batch with its last frame: same program, no recompile
      inputs = {'rgb': _prepare('rgb', batch + [batch[-1]] * padding, size)}
      if needs_flow:
        inputs['flow'] = _prepare('flow', flow_images + [flow_images[-1]] * padding, size)
      indices = np.arange(start, start + batch_size, dtype=np.int32)
    out = run_model('model', lambda: segmenter.segment(inputs, indices, context, extras=extras))
    if 'prob' not in out and 'ids' not in out:
      raise ValueError(f'{type(segmenter).__name__}.segment returned {sorted(out)}: it must give \'prob\' '
                       "(binary models) or 'ids' (instance models).")
    for k in range(count):
      yield FrameResult(index=start + k, name=frames.names[start + k], frame=batch[k],
                        flow=None if flow_images is None else flow_images[k],
                        prob=out['prob'][k] if 'prob' in out else None,
                        ids=out['ids'][k] if 'ids' in out else None,
                        extras={n: v[k] for n, v in out.items() if n not in ('prob', 'ids')})


# ------------------------------------------------------------------------------------------------
# Masks.


def probability_to_mask(probability: np.ndarray, height: int, width: int, threshold: float) -> np.ndarray:
  """A [s, s] probability map -> a bool [height, width] mask (bilinear upsampling, then > threshold)."""
  resized = probability.astype(np.float32)
  if resized.shape != (height, width):
    resized = cv2.resize(resized, (width, height), interpolation=cv2.INTER_LINEAR)
  return resized > threshold


def write_mask_png(path: str, ids: np.ndarray) -> None:
  """An id map [h, w] (bool or ints 0..255: 0 background, 1.. objects) as a DAVIS-palette 'P' PNG."""
  ids = np.asarray(ids)
  if ids.dtype != bool and (ids.min(initial=0) < 0 or ids.max(initial=0) > 255):
    raise ValueError(f'{path}: mask ids must lie in 0..255 (the palette); got {ids.min()}..{ids.max()}.')
  image = Image.fromarray(ids.astype(np.uint8), mode='P')
  image.putpalette(DAVIS_PALETTE)
  image.save(path, optimize=False)
