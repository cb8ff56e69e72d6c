"""DAVIS measures against hand-worked masks (gsa_jax/metrics.py)."""

import math

import numpy as np
import pytest

from gsa_jax import metrics


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
  mask = np.zeros((size, size), bool)
  mask[top:top + side, left:left + side] = True
  return mask


# ----------------------------------------------------------------------------------------------- J

def test_jaccard_partial_overlap():
  pred = np.zeros((4, 4), np.uint8)
  gt = np.zeros((4, 4), np.uint8)
  pred[0, 0:3] = 255  # 3 pixels
  gt[0, 1:3] = 1  # 2 pixels, both inside pred...
  gt[1, 1:3] = 1  # ...and 2 more outside: |P∩G| = 2, |P∪G| = 5.
  assert metrics.jaccard(pred, gt) == pytest.approx(2 / 5)


def test_jaccard_empty_masks():
  empty = np.zeros((5, 6), bool)
  some = np.zeros((5, 6), bool)
  some[2, 3] = True
  assert metrics.jaccard(empty, empty) == 1.0
  assert metrics.jaccard(empty, some) == 0.0
  assert metrics.jaccard(some, empty) == 0.0


def test_jaccard_void_pixels_leave_both_sets():
  pred = np.array([[1, 1, 0, 0]], bool)
  gt = np.array([[1, 0, 1, 0]], bool)
  void = np.array([[0, 1, 0, 0]], bool)  # The false positive at column 1 is void.
  assert metrics.jaccard(pred, gt) == pytest.approx(1 / 3)
  assert metrics.jaccard(pred, gt, void) == pytest.approx(1 / 2)


def test_jaccard_accepts_trailing_channel_and_rejects_size_mismatch():
  mask = _square(6, 1, 1, 3)
  assert metrics.jaccard(mask[..., None], mask) == 1.0
  with pytest.raises(ValueError, match='differ in size'):
    metrics.jaccard(np.zeros((4, 5)), np.zeros((5, 4)))


# ----------------------------------------------------------------------------------------------- F

def test_seg2bmap_square():
  mask = _square(6, 2, 2, 2)  # rows 2-3, cols 2-3.
  expected = np.array([
      [0, 0, 0, 0, 0, 0],
      [0, 1, 1, 1, 0, 0],
      [0, 1, 0, 1, 0, 0],
      [0, 1, 1, 1, 0, 0],
      [0, 0, 0, 0, 0, 0],
      [0, 0, 0, 0, 0, 0],
  ], bool)
  np.testing.assert_array_equal(metrics.seg2bmap(mask), expected)


def test_seg2bmap_last_row_and_column_rules():
  # A full mask has no boundary: the last column compares only with its south neighbour, the last row
  # only with its east neighbour, and the corner is always 0.
  assert not metrics.seg2bmap(np.ones((4, 5), bool)).any()
  last_column = np.zeros((3, 3), bool)
  last_column[:, 2] = True
  expected = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], bool)
  np.testing.assert_array_equal(metrics.seg2bmap(last_column), expected)


def test_disk_is_euclidean_and_tolerance_matches_davis():
  expected = np.array([
      [0, 0, 1, 0, 0],
      [0, 1, 1, 1, 0],
      [1, 1, 1, 1, 1],
      [0, 1, 1, 1, 0],
      [0, 0, 1, 0, 0],
  ], np.uint8)
  np.testing.assert_array_equal(metrics.disk(2), expected)
  assert metrics.boundary_tolerance((480, 854)) == 8  # ceil(7.84)
  assert metrics.boundary_tolerance((20, 20)) == 1  # ceil(0.226)
  assert metrics.boundary_tolerance((20, 20), bound_th=3) == 3


def test_boundary_f_shift_inside_tolerance_is_perfect():
  gt = _square(20, 5, 5, 10)
  pred = _square(20, 5, 6, 10)  # one column to the right; tolerance is 1 px at 20x20.
  assert metrics.jaccard(pred, gt) < 1.0
  assert metrics.boundary_precision_recall(pred, gt) == pytest.approx((1.0, 1.0, 1.0))


def test_boundary_f_shift_outside_tolerance():
  # Both boundaries are 11x11 square rings (40 px): GT at rows/cols 4..14, prediction at cols 7..17.
  # Matched within the 1-px plus-shaped disk: 9 px of each horizontal side (8 shared columns + 1 at
  # distance 1) and 2 px of the nearer vertical side (next to the other ring's top and bottom rows):
  # 9 + 9 + 2 = 20 of 40, both ways. P = R = F = 0.5.
  gt = _square(20, 5, 5, 10)
  pred = _square(20, 5, 8, 10)
  precision, recall, f = metrics.boundary_precision_recall(pred, gt)
  assert (precision, recall, f) == pytest.approx((0.5, 0.5, 0.5))
  assert metrics.boundary_f(pred, gt) == pytest.approx(0.5)


def test_boundary_f_degenerate_cases():
  empty = np.zeros((10, 10), bool)
  some = _square(10, 3, 3, 4)
  assert metrics.boundary_precision_recall(empty, empty) == (1.0, 1.0, 1.0)
  assert metrics.boundary_precision_recall(empty, some) == (1.0, 0.0, 0.0)
  assert metrics.boundary_precision_recall(some, empty) == (0.0, 1.0, 0.0)


def test_boundary_f_void_clears_masks_first():
  gt = _square(20, 5, 5, 10)
  pred = gt.copy()
  pred[5:15, 15:18] = True  # extends 3 columns to the right: an outside boundary...
  void = np.zeros_like(gt)
  void[:, 15:] = True  # ...that is void.
  assert metrics.boundary_f(pred, gt) < 1.0
  assert metrics.boundary_f(pred, gt, void) == 1.0


# -------------------------------------------------------------------------------------- statistics

def test_mean_and_recall():
  mean, recall, _ = metrics.sequence_statistics([0.2, 0.6, 0.5, 0.9])
  assert mean == pytest.approx(0.55)
  assert recall == pytest.approx(0.5)  # 0.5 itself is not > 0.5.
  mean, recall, _ = metrics.sequence_statistics([1.0, math.nan, 0.0])
  assert mean == pytest.approx(0.5)
  assert recall == pytest.approx(1 / 3)  # a NaN frame counts as a miss.


def test_decay_48_frames_uses_matlab_edges():
  np.testing.assert_array_equal(metrics.decay_bin_edges(48), [0, 12, 24, 35, 47])  # 1,13,25,36,48
  x = np.arange(48, dtype=float)
  _, _, decay = metrics.sequence_statistics(x)
  assert decay == pytest.approx(np.mean(np.arange(0, 13)) - np.mean(np.arange(35, 48)))  # 6 - 41


def test_decay_rounds_half_away_from_zero():
  # N = 7: linspace(1, 7, 5) = 1, 2.5, 4, 5.5, 7 → MATLAB 1, 3, 4, 6, 7 (numpy's round would give 2 and 6).
  np.testing.assert_array_equal(metrics.decay_bin_edges(7), [0, 2, 3, 5, 6])
  _, _, decay = metrics.sequence_statistics(np.arange(7, dtype=float))
  assert decay == pytest.approx(1.0 - 5.5)  # mean(0,1,2) − mean(5,6)


def test_decay_300_frames_is_correct_not_nan():
  # The official uint8 edges wrap to [0, 75, 150, 224, 43] here and give NaN.
  np.testing.assert_array_equal(metrics.decay_bin_edges(300), [0, 75, 150, 224, 299])
  x = np.zeros(300)
  x[:150] = 1.0
  mean, recall, decay = metrics.sequence_statistics(x)
  assert not math.isnan(decay)
  assert decay == pytest.approx(1.0)
  assert (mean, recall) == pytest.approx((0.5, 0.5))


def test_statistics_short_and_empty_sequences():
  assert metrics.sequence_statistics([0.7]) == pytest.approx((0.7, 1.0, 0.0))
  assert all(math.isnan(v) for v in metrics.sequence_statistics([]))
