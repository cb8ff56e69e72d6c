"""SOLV's slot merger inside `jit`, its merge-probability schedule, and sklearn's cluster numbering on the host.

The released code clusters the centre slots of every clip with
`sklearn.cluster.AgglomerativeClustering(n_clusters=None, metric='cosine', linkage='complete',
distance_threshold=0.12)`: two clusters merge while the largest cosine distance 1 - cos between their members
is < 0.12 (strict), i.e. every pair inside a cluster has cos > 0.88. A result with <= 2 clusters is discarded
(every slot kept: `min_merged_slots`), and with probability 1 - p_merge(epoch) a clip is not merged at all.
Merged slot = the mean of its members, merged attention = the sum of the members' attention + eps,
renormalised over tokens. Rows K..S-1 are empty: zero slots, uniform attention, valid = False.

  merge_slots(slots, attention, key=, merge_prob=, ...)   the whole merger under jit (static shapes).
  complete_linkage(x, threshold)                          labels [k] of one slot set (0..K-1, clusters
                                                          numbered by their first member), and K.
  merge_probability(epoch, num_epochs)                    ln(e + 1) / ln(num_epochs) (released schedule).
  sklearn_labels(x, threshold, min_clusters)              host: exactly sklearn's labels (with the <= 2 rule).
  renumber_like_sklearn(outputs, centre_slots, ...)       host: reorders the merged rows of a model output so
                                                          row r holds the cluster sklearn numbers r.

The in-jit clustering works on float32 cosine distances; sklearn computes them in float64 (scipy's pdist),
so pairs whose distance is within float32 rounding (~1e-7) of the threshold may be decided differently.
The training loss does not depend on the numbering (decoder, softmax and sum are permutation-equivariant).
"""

import heapq
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


# ------------------------------------------------------------------------------------------------
# In jit.
# ------------------------------------------------------------------------------------------------

def cosine_distances(x: jnp.ndarray) -> jnp.ndarray:
  """[k, d] -> [k, k] 1 - cos (sklearn's / scipy's cosine distance), in float32."""
  x = x.astype(jnp.float32)
  gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
  norms = jnp.sqrt(jnp.diagonal(gram))
  return 1.0 - gram / (norms[:, None] * norms[None, :])


def complete_linkage(x: jnp.ndarray, threshold: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Agglomerative clustering with complete linkage on the cosine distance, cut below `threshold`.

  Greedy: k - 1 steps that merge the closest pair of clusters while its linkage (largest member distance)
  is < threshold; the linkage to the new cluster is the max of the two old ones. Complete linkage never
  decreases along the merges, so this equals cutting sklearn's / scipy's full tree at the threshold.
  Zero vectors (undefined cosine) never merge.

  Args:
    x: [k, d] one slot set.
  Returns:
    labels [k] int32 in 0..K-1 (clusters numbered in the order of their first member), K int32.
  """
  k = x.shape[0]
  dist = cosine_distances(x)
  eye = jnp.eye(k, dtype=bool)
  dist = jnp.where(eye | jnp.isnan(dist), jnp.inf, dist)
  root = jnp.arange(k)                  # each slot's cluster, named by its smallest member

  def step(_, state):
    dist, root = state
    flat = jnp.argmin(dist)
    a, b = flat // k, flat % k
    i, j = jnp.minimum(a, b), jnp.maximum(a, b)
    merge = dist[a, b] < threshold
    row = jnp.maximum(dist[i], dist[j]).at[i].set(jnp.inf)
    merged = dist.at[i, :].set(row).at[:, i].set(row)
    merged = merged.at[j, :].set(jnp.inf).at[:, j].set(jnp.inf)
    return (jnp.where(merge, merged, dist), jnp.where(merge & (root == j), i, root))

  _, root = jax.lax.fori_loop(0, k - 1, step, (dist, root))
  is_first = root == jnp.arange(k)
  labels = (jnp.cumsum(is_first) - 1)[root]
  return labels.astype(jnp.int32), jnp.sum(is_first).astype(jnp.int32)


def merge_slots(slots: jnp.ndarray, attention: jnp.ndarray, *, key: jax.Array | None, merge_prob: Any,
                threshold: float = 0.12, min_clusters: int = 3, eps: float = 1e-8) -> dict[str, jnp.ndarray]:
  """The released Slot_Merger with static shapes.

  Args:
    slots: [b, k, D] centre slots (the clustering sees them under stop_gradient; the means do not).
    attention: [b, k, n'] centre attention, normalised over tokens.
    key: a jax.random.key for the per-clip Bernoulli(merge_prob) draws (None: merge_prob must be 0 or 1).
    merge_prob: probability (scalar, may be traced) that a clip is merged; 1.0 in evaluation.
    threshold: cosine-distance threshold (strict <).
    min_clusters: a merge that leaves fewer clusters is discarded (released: 3, i.e. '<= 2 -> no merge').
    eps: added to the summed attention before renormalising (and to the member counts).
  Returns dict:
    slots [b, k, D] merged slots in rows 0..K-1, zeros after; attention [b, k, n'] (uniform in empty rows);
    valid [b, k] bool (row < K); num_slots [b] int32 (K); labels [b, k] int32 (the row each input slot went
    to); merged [b] bool (whether the clip was clustered and the result kept).
  """
  b, k, _ = slots.shape
  labels, count = jax.vmap(lambda x: complete_linkage(x, threshold))(jax.lax.stop_gradient(slots))
  if key is None:
    if isinstance(merge_prob, (int, float)) and merge_prob in (0, 1):
      draw = jnp.full((b,), bool(merge_prob))
    else:
      raise ValueError(f'merge_slots: merge_prob={merge_prob!r} needs a random key (key=None given); pass '
                       'key=jax.random.key(...) or use merge_prob 0.0 / 1.0.')
  else:
    draw = jax.random.bernoulli(key, merge_prob, (b,))
  merged = draw & (count >= min_clusters)
  labels = jnp.where(merged[:, None], labels, jnp.arange(k, dtype=jnp.int32)[None])
  assign = jax.nn.one_hot(labels, k, dtype=slots.dtype, axis=1)                   # [b k(row) k(slot)]
  members = jnp.sum(assign, axis=-1)                                               # [b k]
  new_slots = jnp.einsum('brs,bsd->brd', assign, slots) / (members[..., None] + 1e-8)
  new_attn = jnp.einsum('brs,bsn->brn', assign, attention) + eps
  new_attn = new_attn / jnp.sum(new_attn, axis=-1, keepdims=True)
  valid = members > 0
  return dict(slots=new_slots, attention=new_attn, valid=valid, num_slots=jnp.sum(valid, -1).astype(jnp.int32),
              labels=labels, merged=merged)


def merge_probability(epoch, num_epochs: int):
  """Released schedule: a clip is merged with probability ln(epoch + 1) / ln(num_epochs) in epoch `epoch`
  (0-based; 0 in the first epoch, 1 in the last). `epoch` may be a Python number or a traced array."""
  if num_epochs < 2:
    raise ValueError(f'merge_probability: num_epochs={num_epochs} must be >= 2 (ln(num_epochs) divides); '
                     'use a constant merge probability for a single epoch.')
  if isinstance(epoch, (int, float)):
    return min(max(math.log(epoch + 1) / math.log(num_epochs), 0.0), 1.0)
  return jnp.clip(jnp.log(jnp.asarray(epoch, jnp.float32) + 1.0) / math.log(num_epochs), 0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# On the host: sklearn's numbering.
# ------------------------------------------------------------------------------------------------

def _descendants(node: int, children: np.ndarray, n: int) -> list[int]:
  stack, leaves = [node], []
  while stack:
    m = stack.pop()
    if m < n:
      leaves.append(m)
    else:
      stack.extend(children[m - n])
  return leaves


def sklearn_labels(x: np.ndarray, threshold: float = 0.12, min_clusters: int = 3) -> np.ndarray:
  """Host: the labels the released merger gets from sklearn for one slot set x [k, d] (numpy).

  Builds the full complete-linkage tree as sklearn does (scipy's linkage on float64 cosine distances),
  keeps the merges below `threshold`, and numbers the clusters in the order sklearn's tree cut leaves them
  in its heap of nodes (largest node expanded first). Applies the released rule: fewer than `min_clusters`
  clusters -> 0..k-1.
  """
  from scipy.cluster import hierarchy  # host only

  x = np.asarray(x)
  n = x.shape[0]
  if n < 2:
    return np.zeros(n, np.int64)
  tree = hierarchy.linkage(x, method='complete', metric='cosine')
  children = tree[:, :2].astype(np.int64)
  num_clusters = int(np.count_nonzero(tree[:, 2] >= threshold)) + 1
  nodes = [-(int(max(children[-1])) + 1)]
  for _ in range(num_clusters - 1):
    left, right = children[-nodes[0] - n]
    heapq.heappush(nodes, -int(left))
    heapq.heappushpop(nodes, -int(right))
  labels = np.zeros(n, np.int64)
  for i, node in enumerate(nodes):
    labels[_descendants(-node, children, n)] = i
  if labels.max() + 1 < min_clusters:
    return np.arange(n)
  return labels


def sklearn_row_order(labels: np.ndarray, centre_slots: np.ndarray, threshold: float = 0.12,
                      min_clusters: int = 3) -> np.ndarray:
  """Host: for one clip, the order of the merged rows that sklearn would give.

  Args:
    labels: [k] the in-jit labels (output 'labels'), centre_slots [k, D] the unmerged centre slots.
  Returns:
    order [k]: new row r = old row order[r]. When the in-jit partition equals sklearn's (it does up to float32
    rounding at the threshold), row r then holds exactly the cluster sklearn labels r. Otherwise each cluster
    takes the sklearn label of its first member (ties: first member), a consistent approximation.
  """
  labels = np.asarray(labels)
  k = labels.shape[0]
  reference = sklearn_labels(centre_slots, threshold, min_clusters)
  rows = np.unique(labels)
  first = {int(r): int(np.flatnonzero(labels == r)[0]) for r in rows}
  used = sorted(rows, key=lambda r: (reference[first[int(r)]], first[int(r)]))
  return np.concatenate([np.asarray(used, np.int64), np.setdiff1d(np.arange(k), rows)])


def renumber_like_sklearn(outputs: dict[str, np.ndarray], threshold: float = 0.12,
                          min_clusters: int = 3) -> dict[str, np.ndarray]:
  """Host: reorders the merged-slot rows of a batch of SOLV outputs (numpy) into sklearn's numbering.

  Uses outputs['labels'] [b, k], outputs['centre_slots'] [b, k, D] and outputs['merged'] [b]; permutes axis 1 of 'slots',
  'attention', 'masks', 'valid' (whichever are present) and maps 'labels' to the new rows. Needed only to
  reproduce the released evaluation bit for bit (see the model docs: the video matching's relabelling bug
  depends on which ids are used); the loss and the corrected metrics do not depend on the numbering.
  """
  out = {name: np.array(value) for name, value in outputs.items()}
  for i in range(out['labels'].shape[0]):
    if 'merged' in out and not out['merged'][i]:
      continue  # not clustered (drawn out, or the result was discarded): rows are the slots, as released.
    order = sklearn_row_order(out['labels'][i], out['centre_slots'][i], threshold, min_clusters)
    for name in ('slots', 'attention', 'masks', 'valid'):
      if name in out:
        out[name][i] = out[name][i][order]
    inverse = np.argsort(order)
    out['labels'][i] = inverse[out['labels'][i]]
  return out
