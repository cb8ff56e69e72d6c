"""Which of Betrayed by Attention's clusters is the background: the foreground mask for single-object scoring.

For single-object benchmarks (DAVIS-16, FBMS, SegTrack-v2) the appendix clusters at tau 1.6 "to combine all
foreground objects into one cluster", but the released code never says which cluster is the foreground: it
turns every cluster into a proposal. Here the background is one cluster of the video and every other cluster
is foreground (so several object clusters that tau 1.6 left apart are still all foreground):

  rule='border' (default): the background is the cluster holding the most border tokens (the outer ring of
    the token grid) summed over all frames; ties go to the larger cluster (more tokens over the video),
    then to the smaller label. Why: the background surrounds the objects and reaches the frame edge in
    nearly every frame, while the objects of these benchmarks are framed by the camera and rarely fill the
    border; counting over the whole video keeps one frame where an object touches the edge from deciding.
    It also holds for close-ups, where an object covers most of the frame.
  rule='largest': the background is the cluster with the most tokens over the video (ties: more border
    tokens, then the smaller label). The simple alternative; it fails on close-ups, where the object is
    the larger part.

With one cluster (K = 1) the foreground is empty under both rules: the single cluster holds every token,
border included, so it is the background by the rules themselves (no special case; a video the clustering
cannot split has no object to score).

  background_label(labels [T, h*w], grid (h, w), rule) -> int    the background cluster's label
  foreground_mask(labels [T, h*w], grid (h, w), rule) -> bool [T, h, w]

Labels are any integers (cluster ids need not be 0 .. K-1). Users: the single-object scoring of the
betrayed model (its masks at token resolution, upsampled by the evaluator).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gsa_jax import errors

RULES = ('border', 'largest')


class ForegroundError(errors.UserError):
  """Labels, grid or rule the foreground selection cannot use; the message names the argument and the fix."""


def border_ring(grid: Sequence[int]) -> np.ndarray:
  """bool [h, w]: the outer ring of the token grid (first and last row and column)."""
  h, w = _grid(grid)
  ring = np.zeros((h, w), bool)
  ring[0, :] = ring[-1, :] = True
  ring[:, 0] = ring[:, -1] = True
  return ring


def _grid(grid: Sequence[int]) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in grid)
  except (TypeError, ValueError) as e:
    raise ForegroundError(f'grid {grid!r}: pass the token grid as two integers (h, w).') from e
  if h < 1 or w < 1:
    raise ForegroundError(f'grid {grid!r}: both sides must be >= 1 token.')
  return h, w


def _as_grid(labels, grid: Sequence[int]) -> np.ndarray:
  """labels [T, h*w] -> int array [T, h, w], with errors that name the mismatch."""
  h, w = _grid(grid)
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[1] != h * w or labels.shape[0] < 1:
    raise ForegroundError(
        f'labels of shape {labels.shape}: expected [T, h*w] = [T, {h * w}] for grid ({h}, {w}) with T >= 1; '
        'pass the clustering labels of every frame, flattened in raster order.')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ForegroundError(f'labels of dtype {labels.dtype}: expected integer cluster ids.')
  return labels.reshape(-1, h, w)


def background_label(labels, grid: Sequence[int], rule: str = 'border') -> int:
  """The label of the background cluster of a video (see the module docstring for the rules)."""
  if rule not in RULES:
    raise ForegroundError(f'foreground rule {rule!r}: choose one of {RULES}.')
  tokens = _as_grid(labels, grid)
  ids, inverse = np.unique(tokens, return_inverse=True)
  inverse = inverse.reshape(tokens.shape)
  size = np.bincount(inverse.ravel(), minlength=ids.size)
  border = np.bincount(inverse[:, border_ring(grid)].ravel(), minlength=ids.size)
  first, second = (border, size) if rule == 'border' else (size, border)
  # The largest first key, then the largest second key, then the smallest label (ids are sorted ascending).
  best = np.lexsort((np.arange(ids.size), -second, -first))[0]
  return int(ids[best])


def foreground_mask(labels, grid: Sequence[int], rule: str = 'border') -> np.ndarray:
  """bool [T, h, w]: True on every token not in the background cluster (empty when K = 1)."""
  background = background_label(labels, grid, rule)
  return _as_grid(labels, grid) != background
