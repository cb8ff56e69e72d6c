"""SOLV's inference on a video: instance ids per frame, as the released evaluation computes them.

  SOLVSegmenter(model, variables, batch_size=)    a gsa_jax.inference.InstanceSegmenter
    context_indices(t)   every frame: the per-video context is the encoder's all-token features of all frames.
    encode({'rgb': [t, h, w, 3]})   -> VideoContext (features on the device, in chunks of batch_size frames;
                                       frames of another size are first resized to model.image_size).
    segment({'rgb': ...}, frame_indices [b], context) -> per frame (the inputs' pixels are not read again:
        each frame's window i-N..i+N comes from the context):
          'masks'     [b, S, gh, gw] float32  the decoder's per-slot softmax on the token grid (0 in empty rows),
                                              rows in sklearn's cluster order when model.sklearn_numbering;
          'track_ids' [b, S] int32            the video-level id of each row (1, 2, ...; 0 for empty rows), by
                                              the slot tracking of tracking.py (model.tracking);
          'ids'       [b, H, W] int32         the id map at model.image_size: masks upsampled bilinearly,
                                              argmax over slots, mapped to track ids (every pixel gets one);
          'num_slots' [b] int32               merged slots of each frame.
        Frames must come in order (tracking is sequential); frame numbers >= t (the padding of a last batch)
        are computed but do not advance the tracker and get track_ids 0.
  ids_at(masks, track_ids, height, width)    one frame's id map at any size the released way: the soft masks
                                             upsampled bilinearly (align_corners=False) to that size, argmax
                                             (also the segmenter's `frame_ids`, which the shared path calls).
  segment_video(segmenter, frames)           all frames of a video (uint8 [h, w, 3]) -> list of per-frame dicts.

Ids are 1-based so that 0 stays free for background in the instance-mask conventions (DAVIS palette PNGs);
SOLV itself gives every pixel to some slot, so its id maps have no 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gsa_jax import inference
from gsa_jax.models.solv import merge as merge_lib
from gsa_jax.models.solv import tracking as tracking_lib
from input_pipeline import frames as frames_lib

FRAME_BUCKET = 16  # video features are padded to a multiple of this many frames (fewer recompilations)


@dataclasses.dataclass
class VideoContext:
  """One video's encoded frames and its tracker."""
  features: jax.Array        # [T, n, c], T = num_frames rounded up to FRAME_BUCKET
  num_frames: int
  tracker: tracking_lib.Tracker


def _resize_soft(masks: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
  """[..., S, gh, gw] -> [..., S, height, width] bilinear (half-pixel centres: torch align_corners=False)."""
  shape = masks.shape[:-2] + (height, width)
  return jax.image.resize(masks, shape, 'bilinear', antialias=False)


def ids_at(masks: np.ndarray, track_ids: np.ndarray, height: int, width: int) -> np.ndarray:
  """[S, gh, gw] soft masks, [S] track ids -> [height, width] int32 ids (bilinear upsampling, then argmax)."""
  up = np.asarray(_resize_soft(jnp.asarray(masks, jnp.float32), int(height), int(width)))
  return np.asarray(track_ids, np.int32)[np.argmax(up, axis=0)]


_BASE = getattr(inference, 'InstanceSegmenter', inference.Segmenter)


class SOLVSegmenter(inference.ProgramCache, _BASE):
  """The compiled inference of a SOLV model (module doc)."""

  output_kind = 'instances'

  def __init__(self, model: Any, variables: Mapping[str, Any], *, batch_size: int):
    m = model.config.model
    self.model = model
    self.settings = model.settings
    self.image_hw = tuple(int(v) for v in m.image_size)
    self.size = self.image_hw[0]
    self.input_hw = self.image_hw  # frames are resized once, straight to the model's (height, width)
    self.batch_size = int(batch_size)
    self.modalities = ('rgb',)
    self.rule, self.merging = m.tracking, bool(self.settings.merge_slots)
    self.sklearn_numbering = bool(m.sklearn_numbering) and self.merging
    self.compile_seconds = 0.0
    self.set_variables(variables)

  def describe(self) -> dict[str, Any]:
    return dict(super().describe(), image_hw=list(self.image_hw), tracking=self.rule if self.merging else 'none',
                sklearn_numbering=self.sklearn_numbering)

  def frame_ids(self, outputs: Mapping[str, np.ndarray], height: int, width: int) -> np.ndarray:
    """One frame's id map at [height, width] the released way: its soft masks ('masks' [S, gh, gw])
    upsampled bilinearly, argmax, mapped to 'track_ids' [S]."""
    return ids_at(outputs['masks'], outputs['track_ids'], height, width)

  def set_variables(self, variables: Mapping[str, Any]) -> None:
    self.variables = jax.device_put({'params': variables['params']})

  def context_indices(self, num_frames: int) -> list[int]:
    return list(range(num_frames))

  def _encode_fn(self, variables, images):
    h, w = self.image_hw
    if images.shape[1:3] != (h, w):
      images = jax.image.resize(images, (images.shape[0], h, w, 3), 'bilinear')
    return self.model.module.apply(variables, images, method='encode')

  def _segment_fn(self, variables, features, num_frames, frame_indices):
    out = self.model.module.apply(variables, features, num_frames, frame_indices, method='window_bind')
    gh, gw = self.settings.token_grid
    b, k = out['masks'].shape[:2]
    masks = out['masks'].reshape(b, k, gh, gw)
    return dict(masks=masks, slots=out['slots'], valid=out['valid'], labels=out['labels'], merged=out['merged'],
                centre_slots=out['centre_slots'], num_slots=out['num_slots'])

  def _argmax_fn(self, masks):
    h, w = self.image_hw
    return jnp.argmax(_resize_soft(masks, h, w), axis=1).astype(jnp.int32)       # [b H W]

  def encode(self, context: Mapping[str, np.ndarray]) -> VideoContext:
    images = np.asarray(context['rgb'], np.float32)
    t = images.shape[0]
    if t == 0:
      raise ValueError('SOLV: a video needs at least one frame.')
    chunks = []
    for start in range(0, t, self.batch_size):
      chunk = images[start:start + self.batch_size]
      count = chunk.shape[0]
      if count < self.batch_size:  # same program for the last chunk
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - count, axis=0)])
      chunks.append(self._program('encode', self._encode_fn, self.variables, jnp.asarray(chunk))[:count])
    features = jnp.concatenate(chunks)
    total = int(math.ceil(t / FRAME_BUCKET) * FRAME_BUCKET)
    features = jnp.pad(features, ((0, total - t), (0, 0), (0, 0)))
    return VideoContext(features=features, num_frames=t,
                        tracker=tracking_lib.Tracker(self.rule, enabled=self.merging))

  def segment(self, inputs, frame_indices, context: VideoContext, *, extras=False):
    del inputs, extras
    indices = np.asarray(frame_indices, np.int32)
    out = self._program('segment', self._segment_fn, self.variables, context.features,
                        jnp.asarray(context.num_frames, jnp.int32), jnp.asarray(indices))
    host = jax.tree.map(np.asarray, out)
    if self.sklearn_numbering:
      host = merge_lib.renumber_like_sklearn(host, self.settings.merge_threshold, self.settings.min_merged_slots)
    slots_argmax = np.asarray(self._program('argmax', self._argmax_fn, jnp.asarray(host['masks'])))
    b, k = host['valid'].shape
    track_ids = np.zeros((b, k), np.int32)
    for i, frame in enumerate(indices):
      if frame >= context.num_frames:
        continue
      rows = np.flatnonzero(host['valid'][i])
      track_ids[i, rows] = context.tracker.update(host['slots'][i, rows]) + 1
    ids = np.take_along_axis(track_ids[:, :, None], slots_argmax.reshape(b, 1, -1), axis=1).reshape(
        slots_argmax.shape)
    return dict(masks=host['masks'].astype(np.float32), track_ids=track_ids, ids=ids.astype(np.int32),
                num_slots=host['num_slots'].astype(np.int32))


def segment_video(segmenter: SOLVSegmenter, frames: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
  """Every frame (uint8 RGB [h, w, 3], one size) of a video -> per-frame {'masks', 'track_ids', 'ids',
  'num_slots'} (segment's outputs for that frame)."""
  h, w = segmenter.image_hw
  images = np.stack([frames_lib.normalise_rgb(frames_lib.resize(f, (h, w)).astype(np.float32)) for f in frames])
  context = segmenter.encode({'rgb': images.astype(np.float32)})
  results = []
  for start in range(0, len(frames), segmenter.batch_size):
    indices = np.arange(start, start + segmenter.batch_size, dtype=np.int32)
    out = segmenter.segment({}, indices, context)
    for k in range(min(segmenter.batch_size, len(frames) - start)):
      results.append({name: value[k] for name, value in out.items()})
  return results
