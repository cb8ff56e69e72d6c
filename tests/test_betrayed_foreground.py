"""The foreground rule of Betrayed by Attention's single-object scoring (gsa_jax/models/betrayed/foreground.py).

Synthetic label maps: a background that fills the border around one or two central objects (with labels
in any order), a close-up object larger than the background (where 'border' and 'largest' disagree), an
object that touches the border in one frame, ties on the border count (to the larger cluster, then the
smaller label), one cluster (empty foreground), and the shapes and errors.
"""

import numpy as np
import pytest

from gsa_jax.models.betrayed import foreground as fg

H, W = 6, 8


def _video(frames, background, objects):
  """labels [T, H*W]: `background` everywhere, then each (label, rows, cols) box in every frame."""
  maps = np.full((frames, H, W), background, np.int32)
  for label, rows, cols in objects:
    maps[:, rows, cols] = label
  return maps.reshape(frames, H * W)


def test_border_ring():
  ring = fg.border_ring((3, 4))
  np.testing.assert_array_equal(ring, [[1, 1, 1, 1], [1, 0, 0, 1], [1, 1, 1, 1]])
  assert fg.border_ring((1, 5)).all() and fg.border_ring((2, 2)).all()


@pytest.mark.parametrize('rule', fg.RULES)
def test_one_central_object_is_the_foreground(rule):
  labels = _video(3, 0, [(1, slice(2, 4), slice(3, 6))])
  mask = fg.foreground_mask(labels, (H, W), rule=rule)
  assert mask.shape == (3, H, W) and mask.dtype == bool
  want = np.zeros((H, W), bool)
  want[2:4, 3:6] = True
  np.testing.assert_array_equal(mask, np.broadcast_to(want, mask.shape))
  assert fg.background_label(labels, (H, W), rule) == 0


def test_two_objects_are_both_foreground_whatever_the_label_order():
  labels = _video(2, 7, [(0, slice(1, 3), slice(1, 3)), (3, slice(3, 5), slice(5, 7))])   # background is label 7
  mask = fg.foreground_mask(labels, (H, W))
  assert fg.background_label(labels, (H, W)) == 7
  np.testing.assert_array_equal(mask.reshape(2, -1), labels != 7)
  assert mask.sum() == 2 * (4 + 4)


def test_a_close_up_object_separates_the_rules():
  # The object covers rows 1..4 and columns 1..6 (24 of 48 tokens) and one border token; the background
  # keeps the rest of the ring (23 of its 24 tokens): larger in border share, smaller in size.
  labels = _video(2, 1, [(0, slice(1, 5), slice(1, 7)), (0, 0, 4)])
  sizes = np.bincount(labels.ravel())
  assert sizes[0] > sizes[1]
  assert fg.background_label(labels, (H, W), 'border') == 1
  assert fg.background_label(labels, (H, W), 'largest') == 0
  np.testing.assert_array_equal(fg.foreground_mask(labels, (H, W)).reshape(2, -1), labels == 0)


def test_border_share_is_counted_over_the_whole_video():
  labels = _video(4, 0, [(1, slice(2, 4), slice(3, 6))]).reshape(4, H, W)
  labels[0, :, :5] = 1           # frame 0: the object fills the left part of the frame, border included
  labels = labels.reshape(4, H * W)
  assert fg.background_label(labels, (H, W)) == 0
  mask = fg.foreground_mask(labels, (H, W))
  assert mask[0, :, :5].all() and mask[1:, 2:4, 3:6].all()
  assert mask.sum() == (30 + 2) + 3 * 6          # frame 0: columns 0-4 and the box's column 5


def test_border_ties_go_to_the_larger_cluster_then_the_smaller_label():
  grid = (4, 4)                  # ring of 12 tokens
  left = np.zeros((4, 4), np.int32)
  left[:, 2:] = 5                # columns 0-1 label 0, columns 2-3 label 5: 6 border tokens each
  tied = left.copy()
  tied[1:3, 1:3] = 5             # the interior goes to label 5: same border share, label 5 larger
  assert fg.background_label(tied.reshape(1, -1), grid) == 5
  tied[1:3, 1:3] = 0             # ... or to label 0
  assert fg.background_label(tied.reshape(1, -1), grid) == 0
  mirrored = np.where(left == 0, 9, 4)   # labels 9 (left) and 4 (right): border and size tied -> label 4
  assert fg.background_label(mirrored.reshape(1, -1), grid) == 4
  np.testing.assert_array_equal(fg.foreground_mask(mirrored.reshape(1, -1), grid)[0], mirrored == 9)


def test_largest_rule_ties_go_to_the_larger_border_share():
  grid = (4, 4)
  maps = np.zeros((4, 4), np.int32)
  maps[1:3, :] = 2               # 8 tokens each; label 2 holds 4 border tokens, label 0 holds 8
  assert fg.background_label(maps.reshape(1, -1), grid, 'largest') == 0
  maps = np.where(maps == 0, 2, 0)
  assert fg.background_label(maps.reshape(1, -1), grid, 'largest') == 2


@pytest.mark.parametrize('rule', fg.RULES)
def test_one_cluster_gives_an_empty_foreground(rule):
  labels = np.full((3, H * W), 4, np.int32)
  mask = fg.foreground_mask(labels, (H, W), rule=rule)
  assert mask.shape == (3, H, W) and not mask.any()


def test_bad_input_names_the_fix():
  labels = _video(2, 0, [(1, slice(2, 4), slice(3, 6))])
  with pytest.raises(fg.ForegroundError, match=r'\[T, 56\] for grid \(8, 7\)'):
    fg.foreground_mask(labels, (W, H + 1))
  with pytest.raises(fg.ForegroundError, match='flattened'):
    fg.foreground_mask(labels.reshape(2, H, W), (H, W))
  with pytest.raises(fg.ForegroundError, match="'border', 'largest'"):
    fg.foreground_mask(labels, (H, W), rule='centre')
  with pytest.raises(fg.ForegroundError, match='integer'):
    fg.foreground_mask(labels.astype(np.float32), (H, W))
  with pytest.raises(fg.ForegroundError, match='>= 1'):
    fg.foreground_mask(labels, (0, H * W))
