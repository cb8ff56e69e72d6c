"""Betrayed by Attention's test-time clustering: spatio-temporal attention rows grouped by symmetric KL.

Each query token of a video has an attention row: the softmax of its query against the keys of the sparse
key frames (every `ratio`-th frame), all key tokens jointly, averaged over the heads. Tokens whose rows are
close in symmetric KL divergence (Jeffreys: KL(p||q) + KL(q||p)) form one object. The released algorithm
(`cluster_video`, algorithm='released'):

  1. per window of `window` query frames: D = pairwise distances of the rows; every row is replaced by the
     mean of the rows within tau of it, itself included (neighbourhood averaging); then one greedy pass in
     index order (frame-major, then raster) over the averaged rows: each row not yet taken takes every row
     not yet taken within tau (<=), and the plain mean of their averaged rows is a centroid;
  2. the centroids of all windows: greedy passes over the whole video until a pass merges nothing;
  3. every token's original row goes to its nearest final centroid (argmin; the first on ties).

algorithm='appendix' is the appendix's Algorithm 1 as written: no neighbourhood averaging and no windows
(the first greedy pass runs over every row of the video), then the same passes and assignment.

The released code takes plain logarithms, so a row with an exact zero (an underflowed softmax entry) has NaN
distances to every row and every such token ends as its own cluster. Here `log_eps=0.0` (the released
logarithm) refuses such rows with a ClusteringError that names the fix, and `log_eps > 0` takes
log(p + log_eps) everywhere (a named deviation).

How it is computed: per window, one `jit` program gives the rows (the heads accumulated one at a time),
their logarithms, sum(p log p) and whether a cheap bound proves every pair within tau (then the
average is the window's mean row); the rest runs on the host, with the products in float32 BLAS (or on
the device when the backend is not the CPU). Otherwise the rows are split into blocks around pivots in the
Hellinger geometry (`_hellinger_blocks`); pairs within a block that the bound proves near, and pairs of a
row and a block that D >= 4 ||sqrt a - sqrt b||^2 proves far, are decided without their distance, and the
rest get exact distance blocks (the cross term C = A log(A)^T once, D = s_i + s_j - C - C^T, when most
pairs need one; see `_near_matrix`). Each distinct neighbourhood is averaged once, and the window's greedy
pass runs over the distinct averaged rows weighted by their counts, which equals the pass over all rows.
The greedy passes compute a distance row only for the rows that start a centroid. Threshold decisions
equal the released code's up to float32 rounding of distances within ~1e-6 of tau.

  attention_rows(q, k, scale)                    [s, h, n, d] x [t', h, m, d] -> rows [s n, t' m]
  sparse_key_frames(num_frames, ratio)           the key frames 0, ratio, 2 ratio, ... (floor(T / ratio))
  cluster_video(q, k_sparse, scale=, tau=, ...)  -> Clustering(labels [T, N], centroids [K, t' m])
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from gsa_jax import errors

ALGORITHMS = ('released', 'appendix')
_CACHE_BYTES = 2 << 30
_HIGHEST = jax.lax.Precision.HIGHEST


class ClusteringError(errors.UserError):
  """Input the clustering cannot use as configured; the message names the setting to change."""


@dataclasses.dataclass(frozen=True)
class Clustering:
  labels: np.ndarray     # [T, N] int32: the cluster of every query token (0 .. K-1, in order of creation)
  centroids: np.ndarray  # [K, T' M] float32: the final cluster centres (rows of the simplex)

  @property
  def num_clusters(self) -> int:
    return int(self.centroids.shape[0])


def sparse_key_frames(num_frames: int, ratio: int) -> np.ndarray:
  """Frames 0, ratio, 2 ratio, ... : floor(num_frames / ratio) of them, as released."""
  if ratio < 1:
    raise ClusteringError(f'key ratio {ratio}: must be >= 1 (model.key_ratio).')
  count = num_frames // ratio
  if count == 0:
    raise ClusteringError(
        f'a video of {num_frames} frame(s) has no key frame at key ratio {ratio} (frames 0, {ratio}, ... below '
        f'floor(T / ratio) * ratio); lower model.key_ratio to at most {num_frames}.')
  return np.arange(count) * ratio


@jax.jit
def attention_rows(q: jnp.ndarray, k: jnp.ndarray, scale: float) -> jnp.ndarray:
  """Head-mean attention rows: q [s, h, n, d], k [t', h, m, d] -> [s n, t' m] (softmax over all t' m keys)."""
  s, h, n, _ = q.shape
  kt, _, m, _ = k.shape

  def one_head(total, qk):
    qh, kh = qk                                                        # [s, n, d], [t', m, d]
    logits = jnp.einsum('snd,tmd->sntm', qh, kh, precision=_HIGHEST).reshape(s * n, kt * m) * scale
    return total + jax.nn.softmax(logits, axis=-1), None

  total, _ = jax.lax.scan(one_head, jnp.zeros((s * n, kt * m), jnp.float32),
                          (jnp.swapaxes(q, 0, 1).astype(jnp.float32), jnp.swapaxes(k, 0, 1).astype(jnp.float32)))
  return total / h


def _all_near_bound(x: jnp.ndarray, log_x: jnp.ndarray, tau) -> jnp.ndarray:
  """Whether the pivot bound of `_surely_near` with the mean row as the pivot proves every pair of rows within
  tau (its second pivot is left to the blocks of `_near_matrix`, which keeps this program small)."""
  pivot = jnp.full((x.shape[0],), 1.0 / x.shape[0], x.dtype) @ x          # the mean row, as a product
  e = jnp.sum(jnp.abs(x - pivot), axis=-1)
  f = jnp.max(jnp.abs(log_x - jnp.log(pivot)), axis=-1)
  return jnp.all((e + e.max()) * (f + f.max()) <= tau * (1.0 - 1e-4))


@jax.jit
def _window_statistics(q: jnp.ndarray, k: jnp.ndarray, scale: float, log_eps: float, tau: float) -> tuple:
  """One program per window: (rows, log(rows + log_eps), sum(rows log rows), min(rows), whether every pair of
  rows is provably within tau)."""
  rows = attention_rows(q, k, scale)
  log_rows = jnp.log(rows + log_eps)
  entropy = jnp.sum(rows * log_rows, axis=-1)
  return rows, log_rows, entropy, jnp.min(rows), _all_near_bound(rows, log_rows, tau)


def _log(x: np.ndarray, log_eps: float) -> np.ndarray:
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.log(x + np.float32(log_eps)) if log_eps else np.log(x)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a @ b in float32: the host BLAS on a CPU backend (about twice XLA's CPU rate here), else the device."""
  if jax.default_backend() == 'cpu':
    return np.matmul(a, b)
  return np.asarray(jnp.matmul(a, b, precision=_HIGHEST))


def _gaps(x: np.ndarray, log_x: np.ndarray, pivot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """e = ||x_i - p||_1 and f = ||log x_i - log p||_inf for every row (in chunks of rows, few temporaries)."""
  with np.errstate(divide='ignore', invalid='ignore'):
    log_p = np.log(pivot)
  e = np.empty(x.shape[0], np.float32)
  f = np.empty(x.shape[0], np.float32)
  for i in range(0, x.shape[0], 512):
    e[i:i + 512] = np.abs(x[i:i + 512] - pivot).sum(axis=-1)
    f[i:i + 512] = np.abs(log_x[i:i + 512] - log_p).max(axis=-1)
  return e, f


def _surely_near(x: np.ndarray, log_x: np.ndarray, tau: float, dense: bool = True) -> np.ndarray | bool:
  """[n, n] bool: pairs whose symmetric KL is provably <= tau, from two pivot rows p.

  Every term (a_c - b_c)(log a_c - log b_c) is >= 0 and at most |a_c - b_c| max_c |log a_c - log b_c|, so
  D(a, b) <= ||a - b||_1 ||log a - log b||_inf <= (e_a + e_b)(f_a + f_b) with e = ||. - p||_1 and
  f = ||log . - log p||_inf (triangle inequalities of the two norms), for any p. The pivots: the mean row,
  and the mean of the half of the rows closest to it in f (outlying rows pull the first away from the
  bulk). A small margin keeps float32 rounding on the safe side. dense=False: only whether every pair is
  proven near (one bool, no [n, n] bounds).
  """
  surely = np.zeros((x.shape[0], x.shape[0]), bool) if dense else False
  pivot = x.mean(axis=0)
  bound = tau * (1.0 - 1e-4)
  for _ in range(2):
    e, f = _gaps(x, log_x, pivot)
    if np.all((e + e.max()) * (f + f.max()) <= bound):   # every pair at once, without the [n, n] bounds
      return np.ones((x.shape[0], x.shape[0]), bool) if dense else True
    if dense:
      surely |= (e[:, None] + e[None, :]) * (f[:, None] + f[None, :]) <= bound
    pivot = x[f <= np.median(f)].mean(axis=0)
  return surely


def _unique_rows(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(first [u], inverse [n]) of the distinct rows of a uint8 array [n, b], by a hash of each row.

  The hash is verified (every row equal to its representative); on a collision np.unique(axis=0) decides.
  The distinct rows come in hash order, not in order of first occurrence.
  """
  n, width = packed.shape
  words = np.zeros((n, -(-width // 8) * 8), np.uint8)
  words[:, :width] = packed
  words = words.view(np.uint64)
  weights = np.random.default_rng(0).integers(1, 2 ** 63, size=words.shape[1], dtype=np.uint64) | np.uint64(1)
  with np.errstate(over='ignore'):
    key = (words * weights).sum(axis=1, dtype=np.uint64) ^ (words >> np.uint64(29)).sum(axis=1, dtype=np.uint64)
  _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
  inverse = inverse.reshape(-1)
  if not np.array_equal(packed[first][inverse], packed):
    _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
  return first, inverse


def _hellinger_blocks(root: np.ndarray, tau: float, max_pivots: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Farthest-point pivots in the Hellinger geometry of the rows: root = sqrt(x) [n, c].

  Returns (block [n]: each row's nearest pivot, distance [n, P]: ||root_i - root_p||, radius [P]: the largest
  distance of a block's rows to its pivot). Pivots are added (the row farthest from every pivot so far,
  the first row to start) until every row is within ~sqrt(tau) / 4 of one, or max_pivots.
  """
  norms = np.einsum('nc,nc->n', root, root)
  columns = []
  nearest = np.full(root.shape[0], np.inf, np.float32)
  pivot = 0
  for _ in range(max_pivots):
    d = np.sqrt(np.maximum(norms + norms[pivot] - 2.0 * _matmul(root, root[pivot]), 0.0))
    columns.append(d)
    nearest = np.minimum(nearest, d)
    pivot = int(np.argmax(nearest))
    if nearest[pivot] <= 0.25 * np.sqrt(tau):
      break
  distance = np.stack(columns, axis=1)
  block = np.argmin(distance, axis=1)
  radius = np.zeros(distance.shape[1], np.float32)
  np.maximum.at(radius, block, distance[np.arange(block.size), block])
  return block, distance, radius


def _near_matrix(x: np.ndarray, log_x: np.ndarray, s: np.ndarray, tau: float, log_eps: float = 0.0,
                 all_near: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """(perm [n], x[perm], near [n, n] bool): near[a, b] = D(x_perm[a], x_perm[b]) <= tau, the rows reordered by
  block; None when every pair is provably within tau. all_near: the first test below, when already known.

  Three kinds of pairs are decided without their distance: all pairs at once when the pivot bound of
  `_surely_near` proves them near; within each block of `_hellinger_blocks`, pairs that the same bound
  (with the block's own pivots) proves near; and pairs of a row and a block proven far by
  D(a, b) >= 4 ||sqrt a - sqrt b||^2 with the triangle inequality through the block's pivot. That bound
  holds term by term for any positive a, b: (a - b)(log a - log b) >= 4 (sqrt a - sqrt b)^2, as the
  logarithmic mean of sqrt a and sqrt b is at most their arithmetic mean; with log_eps it is applied to
  a + log_eps and b + log_eps, whose differences are the same. The other pairs
  get exact distances, a block of columns at a time (or the whole cross term C = x log(x)^T once when they
  are most pairs).
  """
  n = x.shape[0]
  if _surely_near(x, log_x, tau, dense=False) if all_near is None else all_near:
    return None
  block, hellinger, radius = _hellinger_blocks(np.sqrt(x + np.float32(log_eps)), tau)
  perm = np.argsort(block, kind='stable')
  x, log_x, s = x[perm], log_x[perm], s[perm]
  far = (hellinger - radius[None, :] > 0.5 * np.sqrt(tau) + 1e-2)[perm]   # [n, P]: row far from all of block p
  edges = np.searchsorted(block[perm], np.arange(radius.size + 1))
  near = np.zeros((n, n), bool)
  todo = []                                                                 # (rows, columns) of exact distances
  for b in range(radius.size):
    lo, hi = int(edges[b]), int(edges[b + 1])
    if hi == lo:
      continue
    inside = _surely_near(x[lo:hi], log_x[lo:hi], tau)
    near[lo:hi, lo:hi] = inside
    outside = np.flatnonzero(~far[:, b])
    rows = np.concatenate([lo + np.flatnonzero(~inside.all(axis=1)), outside[(outside < lo) | (outside >= hi)]])
    if rows.size:
      todo.append((rows, slice(lo, hi)))
  work = sum(rows.size * (cols.stop - cols.start) for rows, cols in todo)
  if work > n * n // 2:
    cross = _matmul(x, log_x.T)                                             # cross[i, j] = a_i . log a_j
    return perm, x, (s[:, None] + s[None, :] - cross - cross.T) <= tau
  for rows, cols in todo:
    distance = s[rows, None] + s[None, cols] - _matmul(x[rows], log_x[cols].T) - _matmul(log_x[rows], x[cols].T)
    near[rows, cols] = distance <= tau
  return perm, x, near


def _neighbourhoods(x: np.ndarray, log_x: np.ndarray, s: np.ndarray, tau: float, log_eps: float = 0.0,
                    all_near: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The averaged rows, once per distinct neighbourhood: (unique [u, c], counts [u], inverse [n]).

  unique is in order of first occurrence, so a greedy pass over it (weighted by counts) equals one over the
  n averaged rows unique[inverse]. The columns that every neighbourhood holds or lacks together are summed
  once, so the sums over the neighbourhoods are a product with those group sums.
  """
  n = x.shape[0]
  found = _near_matrix(x, log_x, s, tau, log_eps, all_near)
  if found is None:
    total = x.sum(axis=0)
    return (total / total.sum())[None], np.array([n]), np.zeros(n, np.int64)
  perm, x, near = found                                       # rows and columns in block order
  first, inverse = _unique_rows(np.packbits(near, axis=1))
  first_row = np.full(first.size, n)                          # first occurrence in the original row order
  np.minimum.at(first_row, inverse, perm)
  order = np.argsort(first_row)
  rank = np.empty_like(order)
  rank[order] = np.arange(order.size)
  original = np.empty(n, np.int64)
  original[perm] = rank[inverse]
  patterns = near[first[order]]                               # [u, n], columns in block order
  _, column_group = _unique_rows(np.packbits(patterns.T, axis=1))
  groups = int(column_group.max()) + 1
  if groups <= 64:
    one_hot = (column_group[None, :] == np.arange(groups)[:, None]).astype(np.float32)   # [groups, n]
    summed = _matmul(patterns[:, np.argmax(one_hot, axis=1)].astype(np.float32), _matmul(one_hot, x))
  elif groups < n // 4:
    by_group = np.argsort(column_group, kind='stable')
    starts = np.searchsorted(column_group[by_group], np.arange(groups))
    contiguous = np.array_equal(by_group, np.arange(n))
    group_sums = np.add.reduceat(x if contiguous else x[by_group], starts, axis=0)   # [groups, c]
    summed = _matmul(patterns[:, by_group[starts]].astype(np.float32), group_sums)
  else:
    summed = _matmul(patterns.astype(np.float32), x)
  summed /= summed.sum(axis=-1, keepdims=True)
  return summed, np.bincount(original, minlength=order.size), original


def _neighbourhood_average(rows: np.ndarray, tau: float, log_eps: float) -> np.ndarray:
  """Every row replaced by the renormalised mean of the rows within tau of it (itself included): [n, c]."""
  x = np.asarray(rows, np.float32)
  log_x = _log(x, log_eps)
  unique, _, inverse = _neighbourhoods(x, log_x, np.sum(x * log_x, axis=-1), tau, log_eps)
  return unique[inverse]


def _nearest(centroids: np.ndarray, rows: np.ndarray, log_eps: float, log_rows: np.ndarray | None = None,
             entropy: np.ndarray | None = None) -> np.ndarray:
  """The index of each row's nearest centroid in symmetric KL (the first on ties): [K, c] x [n, c] -> [n].

  log_rows, entropy: the rows' logarithms and sum(rows * log rows) when already known.
  """
  log_c = _log(centroids, log_eps)
  log_r = _log(rows, log_eps) if log_rows is None else log_rows
  s_r = np.sum(rows * log_r, -1) if entropy is None else entropy
  distance = (np.sum(centroids * log_c, -1)[:, None] + s_r[None, :]
              - _matmul(log_r, centroids.T).T - _matmul(rows, log_c.T).T)
  return np.argmin(distance, axis=0)


def _greedy_pass(x: np.ndarray, tau: float, log_eps: float, counts: np.ndarray | None = None) -> np.ndarray:
  """One greedy pass in index order over the rows x [n, c]: the centroids [K, c] (plain means).

  counts [n]: each row stands for that many equal rows (the centroid is then their weighted mean).
  """
  x = np.asarray(x, np.float32)
  log_x = _log(x, log_eps)
  s = np.sum(x * log_x, axis=-1)
  free = np.ones(x.shape[0], bool)
  centroids = []
  for i in range(x.shape[0]):
    if not free[i]:
      continue
    distance = s + s[i] - x @ log_x[i] - log_x @ x[i]
    members = np.flatnonzero(free & (distance <= tau))
    members = members if members.size else np.array([i])   # the row itself is always within tau of itself
    if counts is None:
      centroids.append(x[members].mean(axis=0))
    else:
      weights = counts[members].astype(np.float32)
      centroids.append((weights @ x[members]) / weights.sum())
    free[members] = False
  return np.stack(centroids)


def _check_rows(low: float, log_eps: float, frames: tuple[int, int]) -> None:
  """low: the smallest entry of the window's rows."""
  if not log_eps and low <= 0:
    raise ClusteringError(
        f'the attention rows of frames {frames[0]}..{frames[1] - 1} hold exact zeros (underflowed softmax '
        'entries); the released clustering takes log(0) there and every such token becomes its own cluster. '
        'Set model.log_eps to a small value (e.g. 1e-12: log(p + eps), a named deviation from the release).')


def cluster_video(q, k_sparse, *, scale: float, tau: float = 1.0, window: int = 3, algorithm: str = 'released',
                  log_eps: float = 0.0, max_passes: int = 10_000,
                  timings: dict[str, float] | None = None) -> Clustering:
  """Clusters the query tokens of a video: q [T, h, N, d] against the sparse keys k_sparse [T', h, N', d].

  algorithm: 'released' (windows of `window` frames with neighbourhood averaging, then video-level passes)
  or 'appendix' (one greedy pass over every row of the video, no averaging, then the same passes).
  timings: when given, receives the wall seconds of each stage (rows, averaging, window_passes,
  video_passes, assignment), added to any values already there.
  """
  if algorithm not in ALGORITHMS:
    raise ClusteringError(f'clustering algorithm {algorithm!r}: choose one of {ALGORITHMS} (model.cluster_algorithm).')
  if window < 1:
    raise ClusteringError(f'clustering window {window}: must be >= 1 frame (model.window).')
  stages = {} if timings is None else timings
  clock = [time.perf_counter()]

  def lap(stage: str) -> None:
    now = time.perf_counter()
    stages[stage] = stages.get(stage, 0.0) + now - clock[0]
    clock[0] = now

  q, k_sparse = jnp.asarray(q, jnp.float32), jnp.asarray(k_sparse, jnp.float32)
  t, _, n, _ = q.shape
  log_eps = float(log_eps)
  step = window if algorithm == 'released' else t
  starts = range(0, t, step)

  # The rows and their logarithms are kept for the assignment when they fit in _CACHE_BYTES, else computed
  # again.
  cache = 2 * t * n * k_sparse.shape[0] * k_sparse.shape[2] * 4 <= _CACHE_BYTES
  kept = {}
  pooled = []
  for start in starts:
    stop = min(start + step, t)
    stats = _window_statistics(q[start:stop], k_sparse, scale, log_eps, tau)
    rows, log_rows, entropy = (np.asarray(a) for a in stats[:3])
    _check_rows(float(stats[3]), log_eps, (start, stop))
    if cache:
      kept[start] = rows, log_rows, entropy
    lap('rows')
    if algorithm == 'released':
      unique, counts, _ = _neighbourhoods(rows, log_rows, entropy, tau, log_eps, bool(stats[4]))
      lap('averaging')
      pooled.append(_greedy_pass(unique, tau, log_eps, counts))
    else:
      pooled.append(_greedy_pass(rows, tau, log_eps))
    lap('window_passes')
  centroids = np.concatenate(pooled)
  for _ in range(max_passes):
    merged = _greedy_pass(centroids, tau, log_eps)
    done = merged.shape[0] == centroids.shape[0]
    centroids = merged
    if done:
      break
  lap('video_passes')

  labels = np.empty((t, n), np.int32)
  for start in starts:
    stop = min(start + step, t)
    if cache:
      rows, log_rows, entropy = kept.pop(start)
    else:
      rows, log_rows, entropy = np.asarray(attention_rows(q[start:stop], k_sparse, scale)), None, None
    labels[start:stop] = _nearest(centroids, rows, log_eps, log_rows, entropy).reshape(stop - start, n)
  lap('assignment')
  return Clustering(labels=labels, centroids=centroids)
