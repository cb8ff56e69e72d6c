"""Pictures: mask overlays and the training/evaluation strip RGB | flow | pred | GT | fg-slot map.

Everything returns uint8 [h, w, 3] numpy images; `save_png` writes one atomically.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from gsa_jax import files
from input_pipeline.frames import IMAGENET_MEAN, IMAGENET_STD  # the model's RGB normalisation


def denormalize_rgb(rgb: np.ndarray) -> np.ndarray:
  """ImageNet-normalised float [h, w, 3] → uint8 [h, w, 3]."""
  x = np.asarray(rgb, np.float32) * IMAGENET_STD + IMAGENET_MEAN
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def unit_to_uint8(image: np.ndarray) -> np.ndarray:
  """A [0,1] float image [h, w, 3] or [h, w] / [h, w, 1] → uint8 [h, w, 3]."""
  x = np.asarray(image, np.float32)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim == 2:
    x = np.repeat(x[..., None], 3, axis=-1)
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def heatmap(prob: np.ndarray) -> np.ndarray:
  """A [0,1] map [h, w] or [h, w, 1] in the jet colour map → uint8 [h, w, 3]."""
  x = np.clip(np.asarray(prob, np.float32).reshape(np.shape(prob)[:2]), 0.0, 1.0)
  # Piecewise-linear jet: blue → cyan → yellow → red.
  r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
  g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
  b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
  return unit_to_uint8(np.stack([r, g, b], axis=-1))


def overlay_mask(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
                 colour: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
  """`frame` (uint8 [h, w, 3]) with the boolean `mask` [h, w] tinted and its boundary in yellow."""
  out = np.asarray(frame, np.float32).copy()
  m = np.asarray(mask).astype(bool)
  if m.ndim == 3:
    m = m[..., 0]
  out[m] = (1.0 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
  # Boundary: mask pixels with a 4-neighbour outside the mask.
  padded = np.pad(m, 1, mode='edge')
  inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
  out[m & ~inner] = (255.0, 255.0, 0.0)
  return out.astype(np.uint8)


def strip(*, rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None, flow: np.ndarray | None = None,
          fg_slot: np.ndarray | None = None, normalized_rgb: bool = True) -> np.ndarray:
  """One row RGB | flow | pred | GT | fg-slot map (missing parts left out) as uint8 [h, n·w, 3].

  rgb: ImageNet-normalised float [h, w, 3] (or uint8 with normalized_rgb=False); flow: [0,1] [h, w, 3];
  pred, gt, fg_slot: [0,1] maps [h, w(, 1)]. Every panel is resized to the RGB size.
  """
  image = denormalize_rgb(rgb) if normalized_rgb else np.asarray(rgb, np.uint8)
  h, w = image.shape[:2]
  panels = [image]
  if flow is not None:
    panels.append(unit_to_uint8(flow))
  panels.append(unit_to_uint8(pred))
  if gt is not None:
    panels.append(unit_to_uint8(gt))
  if fg_slot is not None:
    panels.append(heatmap(fg_slot))
  resized = []
  for p in panels:
    if p.shape[:2] != (h, w):
      p = np.asarray(Image.fromarray(p).resize((w, h), Image.BILINEAR))
    resized.append(p)
  separator = np.full((h, 2, 3), 255, np.uint8)
  row = []
  for i, p in enumerate(resized):
    if i:
      row.append(separator)
    row.append(p)
  return np.concatenate(row, axis=1)


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
  """Strips of possibly different widths stacked vertically on white, 2 px apart: uint8 [H, W, 3]."""
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
  return np.concatenate(rows, axis=0)


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 image atomically (gsa_jax.files.atomic_write: never a partial PNG)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.atomic_write(path, lambda f: Image.fromarray(np.asarray(image, np.uint8)).save(f, format='PNG'), binary=True)
