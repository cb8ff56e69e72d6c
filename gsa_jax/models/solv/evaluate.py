"""SOLV's released evaluation of instance-mask videos, on the host: frames -> tracked slot ids -> FG-ARI / mIoU.

  black_borders(frame)                      (top, bottom, left, right) black rows / columns (released rule)
  predict_records(segmenter, records)       sequence -> frame -> predicted id map at the ground-truth size
                                            (borders of frame 0 cropped from every frame, as released), and
                                            the ground truth cropped the same way
  score_records(model, variables, records)  both measures: the correct ones and preset 'solv_released'

Per video, as released: borders found on the first frame and removed from every frame and mask; frames
resized to model.image_size (PIL bilinear, aspect not kept); one window per frame; soft masks upsampled
bilinearly to the cropped ground-truth size; argmax; slot tracking (model.tracking). Predicted ids are the
0-based track ids (the released numbering, which the released metric's relabelling depends on).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from gsa_jax import multi_object_fgari
from gsa_jax.models.solv import segmenter as segmenter_lib
from input_pipeline import frames as frames_lib
from input_pipeline import instances


def black_borders(frame: np.ndarray) -> tuple[int, int, int, int]:
  """Rows / columns whose mean (over the other axis and channels, 0..255) is < 1, counted from each edge.
  A frame that is black everywhere has no borders (it is kept whole)."""
  x = np.asarray(frame, np.float64)
  rows = x.mean(axis=(1, 2)) >= 1.0
  cols = x.mean(axis=(0, 2)) >= 1.0
  if not rows.any() or not cols.any():
    return 0, 0, 0, 0
  return (int(np.argmax(rows)), int(np.argmax(rows[::-1])), int(np.argmax(cols)), int(np.argmax(cols[::-1])))


def _crop(x: np.ndarray, borders: tuple[int, int, int, int]) -> np.ndarray:
  top, bottom, left, right = borders
  return x[top:x.shape[0] - bottom, left:x.shape[1] - right]


def read_video(record: instances.InstanceVideoRecord, image_hw: tuple[int, int]):
  """(model inputs [t, h, w, 3] normalised, cropped frames, cropped masks {frame name: ids}, borders)."""
  frames = [np.asarray(Image.open(p).convert('RGB')) for p in record.frame_paths]
  borders = black_borders(frames[0])
  cropped = [_crop(f, borders) for f in frames]
  h, w = image_hw
  inputs = np.stack([frames_lib.normalise_rgb(np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR),
                                                         np.float32)) for f in cropped]).astype(np.float32)
  masks = {record.frame_names[i]: _crop(instances.read_instance_mask(record.mask_paths[i]), borders)
           for i in record.annotated}
  return inputs, cropped, masks, borders


def predict_video(segmenter: segmenter_lib.SOLVSegmenter, inputs: np.ndarray, sizes: Sequence[tuple[int, int]]
                  ) -> list[np.ndarray]:
  """Model inputs [t, h, w, 3] -> 0-based track-id maps, one per frame at sizes[i] (height, width)."""
  context = segmenter.encode({'rgb': inputs})
  out = []
  t, b = inputs.shape[0], segmenter.batch_size
  for start in range(0, t, b):
    result = segmenter.segment({}, np.arange(start, start + b, dtype=np.int32), context)
    for k in range(min(b, t - start)):
      h, w = sizes[start + k]
      out.append(segmenter_lib.ids_at(result['masks'][k], result['track_ids'][k] - 1, h, w))
  return out


def predict_records(segmenter: segmenter_lib.SOLVSegmenter, records: Sequence[instances.InstanceVideoRecord]):
  """(predictions, ground truth, frames per second of the model) over `records` (module doc)."""
  predictions, ground_truth = {}, {}
  frames, seconds = 0, 0.0
  for record in records:
    inputs, cropped, masks, _ = read_video(record, segmenter.image_hw)
    start = time.perf_counter()
    compile_before = segmenter.compile_seconds
    ids = predict_video(segmenter, inputs, [f.shape[:2] for f in cropped])
    seconds += time.perf_counter() - start - (segmenter.compile_seconds - compile_before)
    frames += len(ids)
    predictions[record.name] = {record.frame_names[i]: ids[i] for i in range(len(ids))}
    ground_truth[record.name] = masks
  return predictions, ground_truth, frames / max(seconds, 1e-9)


def score_records(model: Any, variables: Any, records: Sequence[instances.InstanceVideoRecord], *,
                  batch_size: int | None = None) -> dict[str, Any]:
  """{'correct': fgari_miou results, 'solv_released': the released metric's, 'frames_per_second'}."""
  segmenter = model.segmenter(variables, batch_size=batch_size)
  predictions, ground_truth, fps = predict_records(segmenter, records)
  return {'correct': multi_object_fgari.fgari_miou(predictions, ground_truth),
          'solv_released': multi_object_fgari.fgari_miou(predictions, ground_truth, preset='solv_released'),
          'frames_per_second': fps, 'predictions': predictions}
