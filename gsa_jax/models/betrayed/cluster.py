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

How it is computed: the rows under `jit` (the heads accumulated one at a time); the rest on the host,
with the products in float32 BLAS (or on the device when the backend is not the CPU). The neighbourhood
step skips the pairs that a cheap bound proves to be within tau (see `_surely_near`), computes exact
distance rows only for the rows that have other pairs (the cross term C = A log(A)^T once, D = s_i + s_j -
C - C^T, when most rows do), and averages each distinct neighbourhood once. The greedy passes compute a
distance row only for the rows that start a centroid. Threshold decisions equal the released code's up to
float32 rounding of distances within ~1e-6 of tau.

  attention_rows(q, k, scale)                    [s, h, n, d] x [t', h, m, d] -> rows [s n, t' m]
  sparse_key_frames(num_frames, ratio)           the key frames 0, ratio, 2 ratio, ... (floor(T / ratio))
  cluster_video(q, k_sparse, scale=, tau=, ...)  -> Clustering(labels [T, N], centroids [K, t' m])
"""

from __future__ import annotations

import dataclasses

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


def _log(x: np.ndarray, log_eps: float) -> np.ndarray:
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.log(x + np.float32(log_eps)) if log_eps else np.log(x)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a @ b in float32: the host BLAS on a CPU backend (about twice XLA's CPU rate here), else the device."""
  if jax.default_backend() == 'cpu':
    return np.matmul(a, b)
  return np.asarray(jnp.matmul(a, b, precision=_HIGHEST))


def _surely_near(x: np.ndarray, log_x: np.ndarray, tau: float) -> np.ndarray:
  """[n, n] bool: pairs whose symmetric KL is provably <= tau, from two pivot rows p.

  Every term (a_c - b_c)(log a_c - log b_c) is >= 0 and at most |a_c - b_c| max_c |log a_c - log b_c|, so
  D(a, b) <= ||a - b||_1 ||log a - log b||_inf <= (e_a + e_b)(f_a + f_b) with e = ||. - p||_1 and
  f = ||log . - log p||_inf (triangle inequalities of the two norms), for any p. The pivots: the mean row,
  and the mean of the half of the rows closest to it in f (outlying rows pull the first away from the
  bulk). A small margin keeps float32 rounding on the safe side.
  """
  surely = np.zeros((x.shape[0], x.shape[0]), bool)
  pivot = x.mean(axis=0)
  for _ in range(2):
    with np.errstate(divide='ignore', invalid='ignore'):
      log_p = np.log(pivot)
    e = np.abs(x - pivot).sum(axis=-1)
    f = np.abs(log_x - log_p).max(axis=-1)
    bound = tau * (1.0 - 1e-4)
    if np.all((e + e.max()) * (f + f.max()) <= bound):   # every pair at once, without the [n, n] bounds
      return np.ones((x.shape[0], x.shape[0]), bool)
    surely |= (e[:, None] + e[None, :]) * (f[:, None] + f[None, :]) <= bound
    pivot = x[f <= np.median(f)].mean(axis=0)
  return surely


def _neighbourhood_average(rows: np.ndarray, tau: float, log_eps: float) -> np.ndarray:
  """Every row replaced by the renormalised mean of the rows within tau of it (itself included).

  Pairs the pivot bound proves near are not computed; the rows with any other pair get their exact
  distance rows (s_i + s_j - a_i . log a_j - a_j . log a_i; the cross term once, as C and C^T, when most
  rows need it). Rows with the same neighbourhood share one product with the rows.
  """
  x = np.asarray(rows, np.float32)
  log_x = _log(x, log_eps)
  s = np.sum(x * log_x, axis=-1)
  near = _surely_near(x, log_x, tau)
  todo = np.flatnonzero(~near.all(axis=1))
  if todo.size > x.shape[0] // 2:
    cross = _matmul(x, log_x.T)                                         # cross[i, j] = a_i . log a_j
    near = (s[:, None] + s[None, :] - cross - cross.T) <= tau
  elif todo.size:
    distance = s[todo, None] + s[None, :] - _matmul(x[todo], log_x.T) - _matmul(log_x[todo], x.T)
    near[todo] = distance <= tau
    near[:, todo] = near[todo].T
  if todo.size == 0 or near.all():
    total = x.sum(axis=0)
    return np.broadcast_to(total / total.sum(), x.shape)
  unique, inverse = np.unique(np.packbits(near, axis=1), axis=0, return_inverse=True)
  summed = _matmul(np.unpackbits(unique, axis=1, count=x.shape[0]).astype(np.float32), x)
  summed /= summed.sum(axis=-1, keepdims=True)
  return summed[inverse.reshape(-1)]


def _nearest(centroids: np.ndarray, rows: np.ndarray, log_eps: float) -> np.ndarray:
  """The index of each row's nearest centroid in symmetric KL (the first on ties): [K, c] x [n, c] -> [n]."""
  log_c, log_r = _log(centroids, log_eps), _log(rows, log_eps)
  distance = (np.sum(centroids * log_c, -1)[:, None] + np.sum(rows * log_r, -1)[None, :]
              - _matmul(centroids, log_r.T) - _matmul(log_c, rows.T))
  return np.argmin(distance, axis=0)


def _greedy_pass(x: np.ndarray, tau: float, log_eps: float) -> np.ndarray:
  """One greedy pass in index order over the rows x [n, c]: the centroids [K, c] (plain means)."""
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
    centroids.append(x[members].mean(axis=0))
    free[members] = False
  return np.stack(centroids)


def _check_rows(rows: np.ndarray, log_eps: float, frames: tuple[int, int]) -> None:
  if not log_eps and bool(np.any(rows <= 0)):
    raise ClusteringError(
        f'the attention rows of frames {frames[0]}..{frames[1] - 1} hold exact zeros (underflowed softmax '
        'entries); the released clustering takes log(0) there and every such token becomes its own cluster. '
        'Set model.log_eps to a small value (e.g. 1e-12: log(p + eps), a named deviation from the release).')


def cluster_video(q, k_sparse, *, scale: float, tau: float = 1.0, window: int = 3, algorithm: str = 'released',
                  log_eps: float = 0.0, max_passes: int = 10_000) -> Clustering:
  """Clusters the query tokens of a video: q [T, h, N, d] against the sparse keys k_sparse [T', h, N', d].

  algorithm: 'released' (windows of `window` frames with neighbourhood averaging, then video-level passes)
  or 'appendix' (one greedy pass over every row of the video, no averaging, then the same passes).
  """
  if algorithm not in ALGORITHMS:
    raise ClusteringError(f'clustering algorithm {algorithm!r}: choose one of {ALGORITHMS} (model.cluster_algorithm).')
  if window < 1:
    raise ClusteringError(f'clustering window {window}: must be >= 1 frame (model.window).')
  q, k_sparse = jnp.asarray(q, jnp.float32), jnp.asarray(k_sparse, jnp.float32)
  t, _, n, _ = q.shape
  log_eps = float(log_eps)
  step = window if algorithm == 'released' else t
  starts = range(0, t, step)

  # The rows are kept for the assignment when they fit in _CACHE_BYTES, else computed again.
  cache = t * n * k_sparse.shape[0] * k_sparse.shape[2] * 4 <= _CACHE_BYTES
  kept = {}
  pooled = []
  for start in starts:
    stop = min(start + step, t)
    rows = np.asarray(attention_rows(q[start:stop], k_sparse, scale))
    if cache:
      kept[start] = rows
    _check_rows(rows, log_eps, (start, stop))
    if algorithm == 'released':
      rows = _neighbourhood_average(rows, tau, log_eps)
    pooled.append(_greedy_pass(rows, tau, log_eps))
  centroids = np.concatenate(pooled)
  for _ in range(max_passes):
    merged = _greedy_pass(centroids, tau, log_eps)
    done = merged.shape[0] == centroids.shape[0]
    centroids = merged
    if done:
      break

  labels = np.empty((t, n), np.int32)
  for start in starts:
    stop = min(start + step, t)
    rows = kept.pop(start) if cache else np.asarray(attention_rows(q[start:stop], k_sparse, scale))
    labels[start:stop] = _nearest(centroids, rows, log_eps).reshape(stop - start, n)
  return Clustering(labels=labels, centroids=centroids)
