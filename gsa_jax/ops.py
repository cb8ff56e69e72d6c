"""The non-learned parts of GSA-Net as small pure `jnp` functions (all jittable, all NHWC).

Axis letters (TEAM.md): b batch, t reference frame, h w space, n pixels/points (or neighbours in KNN
results), c channels, k slots, m clusters/prototypes, p candidates of a KNN pool.

  k-means         `kmeans` (one sample) and `batched_kmeans` (vmapped over b): Lloyd iterations, a fixed
                  count under jit, an explicit PRNG key. `kmeans_assignments` turns the result into the
                  assignment weights the local extractor pools with (hard one-hot with stop_gradient as
                  the official code, or a differentiable soft assignment).
  pooling         `gwap` (weighted sum / weighted average pooling), `spatial_softmax_prototypes` (the
                  global extractor's channel-wise spatial-softmax prototypes).
  similarity      `l2_normalize`, `cosine_similarity`, `cosine_maps`, `knn_topk` (jax.lax.top_k).
  resizing        `resize_bilinear` (align_corners=False, = jax.image.resize) and
                  `resize_bilinear_align_corners` (PyTorch's align_corners=True, two small matrix products).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

KMEANS_INITS = ('random', 'kmeans++', 'strided')
KMEANS_ASSIGNS = ('hard', 'soft')
REDUCTIONS = ('sum', 'mean')


# ------------------------------------------------------------------------------------------------
# k-means
# ------------------------------------------------------------------------------------------------

class KMeansResult(NamedTuple):
  centroids: jnp.ndarray    # [m, c] (or [b, m, c] batched): after the last update; empty -> 0.
  assignments: jnp.ndarray  # [n] int32 (or [b, n]): from the LAST assignment step, made against the
                            # centroids as they were before the last update (as fast_pytorch_kmeans).


def pairwise_sq_distances(x: jnp.ndarray, centroids: jnp.ndarray) -> jnp.ndarray:
  """Squared Euclidean distances [n, m] between points x [n, c] and centroids [m, c]."""
  xx = jnp.sum(x * x, axis=-1)[:, None]                   # [n 1]
  cc = jnp.sum(centroids * centroids, axis=-1)[None, :]   # [1 m]
  return xx + cc - 2.0 * jnp.einsum('nc,mc->nm', x, centroids)


def kmeans_init(x: jnp.ndarray, key: jax.Array, num_clusters: int, init: str = 'random') -> jnp.ndarray:
  """Initial centroids [m, c] for points x [n, c].

  'random'   m rows drawn uniformly WITH replacement (fast_pytorch_kmeans 0.2.x, the official code).
  'kmeans++' D^2 seeding (Arthur & Vassilvitskii), m sequential draws.
  'strided'  rows 0, n/m, 2n/m, ... (deterministic; ignores the key).
  """
  n = x.shape[0]
  if init == 'random':
    return x[jax.random.randint(key, (num_clusters,), 0, n)]
  if init == 'strided':
    return x[np.floor(np.arange(num_clusters) * n / num_clusters).astype(np.int32)]
  if init == 'kmeans++':
    keys = jax.random.split(key, num_clusters)
    first = x[jax.random.randint(keys[0], (), 0, n)]
    centroids = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)
    min_d2 = jnp.sum((x - first) ** 2, axis=-1)  # [n]

    def body(i, carry):
      centroids, min_d2 = carry
      total = jnp.sum(min_d2)
      # All points already chosen (total 0): fall back to a uniform draw.
      logits = jnp.where(total > 0, jnp.log(jnp.maximum(min_d2, 0.0)), jnp.zeros_like(min_d2))
      idx = jax.random.categorical(keys[i], logits)
      new = x[idx]
      centroids = centroids.at[i].set(new)
      min_d2 = jnp.minimum(min_d2, jnp.sum((x - new) ** 2, axis=-1))
      return centroids, min_d2

    centroids, _ = jax.lax.fori_loop(1, num_clusters, body, (centroids, min_d2))
    return centroids
  raise ValueError(f'Unknown kmeans_init {init!r}; choose one of {KMEANS_INITS} (--config.model.kmeans_init).')


def kmeans(x: jnp.ndarray, key: jax.Array, num_clusters: int, num_iters: int = 10,
           init: str = 'random') -> KMeansResult:
  """Lloyd's k-means on one sample x [n, c]: `num_iters` assignment + update steps (fixed count).

  Each step assigns every point to its nearest centroid (squared Euclidean; ties -> lowest index)
  and replaces each centroid by the mean of its members; a cluster without members gets the zero
  vector (as fast_pytorch_kmeans, whose NaN mean is set to 0). Same key -> same result.
  """
  if num_iters < 1:
    raise ValueError(f'kmeans needs num_iters >= 1, got {num_iters} (--config.model.kmeans_iters).')
  x = jax.lax.stop_gradient(x.astype(jnp.float32))
  centroids = kmeans_init(x, key, num_clusters, init)

  def step(_, carry):
    centroids, _ = carry
    labels = jnp.argmin(pairwise_sq_distances(x, centroids), axis=-1).astype(jnp.int32)  # [n]
    onehot = jax.nn.one_hot(labels, num_clusters, dtype=x.dtype)                          # [n m]
    counts = jnp.sum(onehot, axis=0)                                                      # [m]
    sums = jnp.einsum('nm,nc->mc', onehot, x)
    centroids = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], 0.0)
    return centroids, labels

  labels0 = jnp.zeros((x.shape[0],), jnp.int32)
  centroids, labels = jax.lax.fori_loop(0, num_iters, step, (centroids, labels0))
  return KMeansResult(centroids, labels)


def batched_kmeans(x: jnp.ndarray, key: jax.Array, num_clusters: int, num_iters: int = 10,
                   init: str = 'random') -> KMeansResult:
  """`kmeans` vmapped over the batch: x [b, n, c] -> centroids [b, m, c], assignments [b, n].

  Sample i uses `jax.random.split(key, b)[i]`.
  """
  keys = jax.random.split(key, x.shape[0])
  return jax.vmap(lambda xi, ki: kmeans(xi, ki, num_clusters, num_iters, init))(x, keys)


def soft_assignments(x: jnp.ndarray, centroids: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """softmax_m(-|x - c_m|^2 / temperature): x [b, n, c], centroids [b, m, c] -> [b, n, m]."""
  d2 = jax.vmap(pairwise_sq_distances)(x, centroids)
  return jax.nn.softmax(-d2 / temperature, axis=-1)


def kmeans_assignments(x: jnp.ndarray, key: jax.Array, num_clusters: int, *, num_iters: int = 10,
                       init: str = 'random', assign: str = 'hard',
                       temperature: float = 1.0) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Cluster assignment weights of the local extractor: x [b, n, c] -> ([b, n, m], labels [b, n]).

  'hard' (official): one-hot of the last k-means assignment, under stop_gradient, so gradients reach
  x only through the pooled values. 'soft': softmax over clusters of -distance^2 / temperature to
  the final (stop-gradient) centroids; differentiable with respect to x.
  """
  if assign not in KMEANS_ASSIGNS:
    raise ValueError(f'Unknown kmeans_assign {assign!r}; choose one of {KMEANS_ASSIGNS} '
                     '(--config.model.kmeans_assign).')
  result = batched_kmeans(x, key, num_clusters, num_iters, init)
  if assign == 'hard':
    weights = jax.lax.stop_gradient(jax.nn.one_hot(result.assignments, num_clusters, dtype=x.dtype))
  else:
    if temperature <= 0:
      raise ValueError(f'kmeans_temperature must be > 0, got {temperature}.')
    weights = soft_assignments(x.astype(jnp.float32), jax.lax.stop_gradient(result.centroids),
                               temperature).astype(x.dtype)
  return weights, result.assignments


# ------------------------------------------------------------------------------------------------
# Pooling
# ------------------------------------------------------------------------------------------------

def gwap(x: jnp.ndarray, weights: jnp.ndarray, reduce: str = 'sum', eps: float = 1e-8) -> jnp.ndarray:
  """Global weighted pooling: x [b, n, c], weights [b, n, k] -> [b, k, c].

  'sum':  sum_n w[n,k] x[n]                  (the official code, slots and k-means prototypes).
  'mean': sum_n w[n,k] x[n] / sum_n w[n,k]   (GWAP, the paper's eq. 2); an all-zero weight column
          (an empty cluster) gives the zero vector.
  """
  if reduce not in REDUCTIONS:
    raise ValueError(f'Unknown reduction {reduce!r}; choose one of {REDUCTIONS}.')
  pooled = jnp.einsum('bnk,bnc->bkc', weights, x)
  if reduce == 'mean':
    mass = jnp.sum(weights, axis=1)[..., None]                  # [b k 1]
    pooled = pooled / jnp.maximum(mass, eps)
  return pooled


def spatial_softmax_prototypes(x: jnp.ndarray) -> jnp.ndarray:
  """Global-extractor prototypes: x [b, n, c] -> [b, c, c] (prototype j = row j).

  Channel j, softmaxed over the n positions, is a soft region A_j; prototype j = sum_n A_j[n] x[n]
  (the paper's eq. 3 + GWAP; the weights sum to 1, so sum and mean coincide).
  """
  attn = jax.nn.softmax(x.astype(jnp.float32), axis=1).astype(x.dtype)  # [b n c(j)]
  return jnp.einsum('bnj,bnc->bjc', attn, x)


# ------------------------------------------------------------------------------------------------
# Similarities and KNN
# ------------------------------------------------------------------------------------------------

def l2_normalize(x: jnp.ndarray, eps: float = 1e-8, axis: int = -1) -> jnp.ndarray:
  """x / max(|x|, eps) along `axis`. eps = 0 is the official plain division (0/0 = NaN)."""
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  if eps > 0:
    # max inside the sqrt keeps the gradient finite at x = 0.
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))
  return x / jnp.sqrt(sq)


def cosine_similarity(a: jnp.ndarray, b: jnp.ndarray, eps: float = 1e-8) -> jnp.ndarray:
  """Pairwise cosine similarities: a [b, p, c], b [b, q, c] -> [b, p, q] in [-1, 1]."""
  return jnp.einsum('bpc,bqc->bpq', l2_normalize(a, eps), l2_normalize(b, eps))


def cosine_maps(x: jnp.ndarray, prototypes: jnp.ndarray, eps: float = 1e-8) -> jnp.ndarray:
  """Per-pixel cosine similarity to each prototype: x [b, h, w, c], prototypes [b, m, c] -> [b, h, w, m]."""
  return jnp.einsum('bhwc,bmc->bhwm', l2_normalize(x, eps), l2_normalize(prototypes, eps))


def knn_topk(queries: jnp.ndarray, pool: jnp.ndarray, num_neighbors: int,
             eps: float = 1e-8) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """The `num_neighbors` most cosine-similar pool entries of each query, separately per query.

  queries [b, k, c], pool [b, p, c] -> (neighbours [b, k, n, c], indices [b, k, n] int32,
  similarities [b, k, n]), most similar first. The gather is differentiable in the pool values; the
  selection (indices) is not.
  """
  if num_neighbors > pool.shape[1]:
    raise ValueError(f'knn_topk: num_neighbors={num_neighbors} exceeds the pool size {pool.shape[1]} '
                     '(lower --config.model.knn_k or enlarge the pool).')
  sims = cosine_similarity(queries, pool, eps)                        # [b k p]
  top_sims, indices = jax.lax.top_k(sims, num_neighbors)              # [b k n]
  neighbours = jnp.take_along_axis(pool[:, None, :, :], indices[..., None], axis=2)  # [b k n c]
  return neighbours, indices, top_sims


# ------------------------------------------------------------------------------------------------
# Resizing
# ------------------------------------------------------------------------------------------------

def resize_bilinear(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """Bilinear resize of x [b, h, w, c] to size (H, W), half-pixel centres (PyTorch align_corners=False;
  identical to F.interpolate for upsampling)."""
  return jax.image.resize(x, (x.shape[0], size[0], size[1], x.shape[3]), method='bilinear',
                          antialias=False)


def _align_corners_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices (i0, i1) and weight of i1 for each output position (align_corners=True)."""
  if out_size == 1 or in_size == 1:
    pos = np.zeros((out_size,), np.float64)
  else:
    pos = np.arange(out_size, dtype=np.float64) * (in_size - 1) / (out_size - 1)
  i0 = np.clip(np.floor(pos).astype(np.int32), 0, in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = (pos - i0).astype(np.float32)
  return i0, i1, frac


def align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The [out_size, in_size] interpolation matrix of a 1-D bilinear align_corners=True resize (rows sum to 1)."""
  i0, i1, frac = _align_corners_taps(in_size, out_size)
  m = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), 1.0 - frac)
  np.add.at(m, (rows, i1), frac)
  return m


RESIZE_METHODS = ('matmul', 'gather')


def resize_bilinear_align_corners(x: jnp.ndarray, size: tuple[int, int], method: str = 'matmul') -> jnp.ndarray:
  """Bilinear resize with align_corners=True (PyTorch), x [b, h, w, c] -> [b, H, W, c].

  Output pixel i samples the input at i * (h - 1) / (H - 1): the corner pixels of input and output
  coincide. Separable, and sizes are static, so the taps are numpy constants:
    'matmul'  two small matrix products, [H, h] along h then [W, w] along w, at HIGHEST precision (no
              TF32 / bf16 passes on accelerators). Its gradient is the same two products transposed;
    'gather'  two gathers along h, then two along w. The same values, but its gradient is a scatter-add,
              several times slower than the products on XLA's CPU backend.
  """
  if method not in RESIZE_METHODS:
    raise ValueError(f'Unknown resize method {method!r}; choose one of {RESIZE_METHODS}.')
  if method == 'matmul':
    mh = jnp.asarray(align_corners_matrix(x.shape[1], size[0]), x.dtype)
    mw = jnp.asarray(align_corners_matrix(x.shape[2], size[1]), x.dtype)
    hi = jax.lax.Precision.HIGHEST
    rows = jnp.einsum('Hh,bhwc->bHwc', mh, x, precision=hi)        # [b H w c]
    return jnp.einsum('Ww,bHwc->bHWc', mw, rows, precision=hi)     # [b H W c]
  (h0, h1, fh), (w0, w1, fw) = _align_corners_taps(x.shape[1], size[0]), _align_corners_taps(x.shape[2], size[1])
  fh = jnp.asarray(fh, x.dtype)[None, :, None, None]
  fw = jnp.asarray(fw, x.dtype)[None, None, :, None]
  rows = jnp.take(x, h0, axis=1) * (1 - fh) + jnp.take(x, h1, axis=1) * fh       # [b H w c]
  return jnp.take(rows, w0, axis=2) * (1 - fw) + jnp.take(rows, w1, axis=2) * fw  # [b H W c]
