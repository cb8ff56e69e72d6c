"""DAVIS video-segmentation measures on binary masks (numpy, host side).

Everything here is per frame on original-size binary masks `[h, w]`, and gives the same numbers as the
official DAVIS tools (the 2016 MATLAB benchmark, its Python port and davis2017-evaluation); README.md
("Evaluation") says how that was checked.

  jaccard(pred, gt)            J: |P ∩ G| / |P ∪ G|; an empty union scores 1. Optional void mask.
  seg2bmap(mask)               1-pixel boundary map (D. Martin's BSDS seg2bmap, no thinning).
  boundary_tolerance(shape)    the match radius: ceil(0.008 · ||(h, w)||) pixels (8 px at 480x854).
  boundary_f(pred, gt)         F: boundary precision/recall within that radius (Euclidean disk).
  sequence_statistics(x)       M (nanmean), O (recall: fraction > 0.5) and D (decay over 4 bins).
  scored_sequences(pred, gt)   the ground-truth sequences in natural order, each one checked to have
                               predictions (the single-object and multi-object evaluators both use it).

Deliberate deviation from the official code: the decay bin edges are int64. The official
`db_statistics` casts them to uint8, which wraps for sequences longer than 256 frames and gives a wrong
or NaN decay there (N=300: edges [0, 75, 150, 224, 43]). For N <= 256 the numbers are identical.
"""

import math
from collections.abc import Mapping

import cv2
import numpy as np

from gsa_jax import errors
from input_pipeline import images as image_io

DEFAULT_BOUND_TH = 0.008
RECALL_THRESHOLD = 0.5
NUM_DECAY_BINS = 4


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
  mask = np.asarray(mask)
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.ndim != 2:
    raise ValueError(f'{name} must be a 2-D mask [h, w]; got shape {mask.shape}.')
  return mask.astype(bool)


def _check_shapes(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None) -> None:
  if pred.shape != gt.shape:
    raise ValueError(f'Prediction {pred.shape} and ground truth {gt.shape} differ in size.')
  if void is not None and void.shape != gt.shape:
    raise ValueError(f'Void mask {void.shape} and ground truth {gt.shape} differ in size.')


def jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
  """Region similarity J of two binary masks [h, w] (non-zero = foreground).

  Void pixels (non-zero in `void`) are removed from both the intersection and the union. If the union
  is empty (both masks empty) J = 1, as in the official tools.
  """
  pred = _as_bool(pred, 'pred')
  gt = _as_bool(gt, 'gt')
  void = None if void is None else _as_bool(void, 'void')
  _check_shapes(pred, gt, void)
  valid = np.ones_like(gt) if void is None else ~void
  intersection = np.count_nonzero(pred & gt & valid)
  union = np.count_nonzero((pred | gt) & valid)
  if union == 0:
    return 1.0
  return float(intersection) / float(union)


def seg2bmap(mask: np.ndarray) -> np.ndarray:
  """Boundary map [h, w] bool of a binary mask: a pixel is on the boundary if it differs from its east,
  south or south-east neighbour.

  The last row compares only with the east neighbour, the last column only with the south one, and the
  bottom-right pixel is never a boundary. The boundary therefore sits half a pixel toward the origin.
  """
  seg = _as_bool(mask, 'mask')
  east = np.zeros_like(seg)
  south = np.zeros_like(seg)
  south_east = np.zeros_like(seg)
  east[:, :-1] = seg[:, 1:]
  south[:-1, :] = seg[1:, :]
  south_east[:-1, :-1] = seg[1:, 1:]
  boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
  boundary[-1, :] = seg[-1, :] ^ east[-1, :]
  boundary[:, -1] = seg[:, -1] ^ south[:, -1]
  boundary[-1, -1] = False
  return boundary


def boundary_tolerance(shape: tuple[int, ...], bound_th: float = DEFAULT_BOUND_TH) -> int:
  """Match radius in pixels: `bound_th` itself if >= 1 (rounded up), else ceil(bound_th · ||(h, w)||)."""
  if bound_th >= 1:
    return int(math.ceil(bound_th))
  return int(np.ceil(bound_th * np.linalg.norm(shape[:2])))


def disk(radius: int) -> np.ndarray:
  """Euclidean disk structuring element [2r+1, 2r+1] uint8: 1 where x² + y² <= r²."""
  offsets = np.arange(-radius, radius + 1)
  return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.uint8)


def boundary_precision_recall(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
                              bound_th: float = DEFAULT_BOUND_TH) -> tuple[float, float, float]:
  """(precision, recall, F) of the predicted boundary against the ground-truth boundary.

  Precision = |B_pred ∩ dilate(B_gt)| / |B_pred|, recall = |B_gt ∩ dilate(B_pred)| / |B_gt|, with a
  Euclidean disk of radius `boundary_tolerance(shape)`. Void pixels are cleared from both masks before
  the boundaries are taken. Degenerate cases (as the official tools): no predicted boundary but a GT
  boundary → P=1, R=0; a predicted boundary but none in the GT → P=0, R=1; neither → P=R=1. F = 0 when
  P + R = 0.
  """
  pred = _as_bool(pred, 'pred')
  gt = _as_bool(gt, 'gt')
  void = None if void is None else _as_bool(void, 'void')
  _check_shapes(pred, gt, void)
  if void is not None:
    pred = pred & ~void
    gt = gt & ~void
  pred_boundary = seg2bmap(pred)
  gt_boundary = seg2bmap(gt)
  kernel = disk(boundary_tolerance(pred.shape, bound_th))
  pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), kernel).astype(bool)
  gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
  n_pred = np.count_nonzero(pred_boundary)
  n_gt = np.count_nonzero(gt_boundary)
  if n_pred == 0 and n_gt > 0:
    precision, recall = 1.0, 0.0
  elif n_pred > 0 and n_gt == 0:
    precision, recall = 0.0, 1.0
  elif n_pred == 0 and n_gt == 0:
    precision, recall = 1.0, 1.0
  else:
    precision = np.count_nonzero(pred_boundary & gt_dilated) / float(n_pred)
    recall = np.count_nonzero(gt_boundary & pred_dilated) / float(n_gt)
  if precision + recall == 0:
    f = 0.0
  else:
    f = 2.0 * precision * recall / (precision + recall)
  return float(precision), float(recall), float(f)


def boundary_f(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
               bound_th: float = DEFAULT_BOUND_TH) -> float:
  """Boundary measure F of two binary masks [h, w]; see `boundary_precision_recall`."""
  return boundary_precision_recall(pred, gt, void, bound_th)[2]


def decay_bin_edges(num_frames: int) -> np.ndarray:
  """0-based inclusive edges [5] int64 of the 4 overlapping decay bins.

  MATLAB's `round(linspace(1, N, 5)) - 1`; the +1e-10 turns numpy's round-half-to-even into MATLAB's
  round-half-away-from-zero. Bin i is frames edges[i] .. edges[i+1] (both included). int64, not the
  official uint8 (see the module docstring).
  """
  edges = np.round(np.linspace(1, num_frames, NUM_DECAY_BINS + 1) + 1e-10) - 1
  return edges.astype(np.int64)


def sequence_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
  """(M, O, D) of one sequence's per-frame scores [n]: mean, recall and decay.

  M = nanmean; O = fraction of frames with score > 0.5 (a NaN frame counts as a miss, as in the official
  code); D = nanmean(first bin) − nanmean(last bin). All three are NaN for an empty sequence.
  """
  x = np.asarray(per_frame, dtype=np.float64).reshape(-1)
  if x.size == 0:
    return math.nan, math.nan, math.nan
  with np.errstate(invalid='ignore'):
    above = x > RECALL_THRESHOLD
  mean = _nanmean(x)
  recall = float(np.mean(above))
  edges = decay_bin_edges(x.size)
  first = x[edges[0]:edges[1] + 1]
  last = x[edges[NUM_DECAY_BINS - 1]:edges[NUM_DECAY_BINS] + 1]
  decay = _nanmean(first) - _nanmean(last)
  return mean, recall, decay


def _nanmean(x: np.ndarray) -> float:
  """np.nanmean without the all-NaN RuntimeWarning (NaN for an all-NaN or empty input)."""
  x = np.asarray(x, dtype=np.float64)
  finite = ~np.isnan(x)
  if not finite.any():
    return math.nan
  return float(np.mean(x[finite]))


def scored_sequences(predictions: Mapping, ground_truth: Mapping) -> list[str]:
  """The ground-truth sequence names in natural order; raises errors.EvaluationError when either side is
  empty or a ground-truth sequence has no predictions (the message lists both sides' names)."""
  if not ground_truth:
    raise errors.EvaluationError('No ground-truth sequences to score.')
  if not predictions:
    raise errors.EvaluationError('No predicted sequences to score.')
  key = image_io.natural_key
  missing = sorted(set(ground_truth) - set(predictions), key=key)
  if missing:
    have = sorted(predictions, key=key)
    raise errors.EvaluationError(
        f'No predictions for {len(missing)} ground-truth sequence(s): {", ".join(missing[:10])}'
        f'{" ..." if len(missing) > 10 else ""}. Predicted sequences: {", ".join(have[:10])}'
        f'{" ..." if len(have) > 10 else ""}. Predict every sequence of the ground-truth set (names must match).')
  return sorted(ground_truth, key=key)
