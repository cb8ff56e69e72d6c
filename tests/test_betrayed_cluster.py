"""The clustering of Betrayed by Attention (gsa_jax/models/betrayed/cluster.py) against the released algorithm.

The oracle is `tests/torch_betrayed.torch_cluster`, the released `mem_efficient_hierarchical_cluster` restated
in torch: windows of 3 query frames with neighbourhood averaging and a greedy pass, then video-level passes
until nothing merges, then nearest-centroid assignment of the original rows. Cases: three token groups over
12 frames (exactly 3 clusters, purity 1.0, at tau 1.0 and 1.6), random keys (one cluster), random structured
videos of 2-5 groups with noise, a short last window; exact zeros (refused unless log_eps > 0); the
appendix's variant; the sparse key frames.
"""

import numpy as np
import pytest
import torch

from gsa_jax.models.betrayed import cluster
from tests import torch_betrayed as TB

HEADS, DIM, SIDE = 2, 8, 4          # 16 tokens per frame
SCALE = DIM ** -0.5


def _structured(seed, *, frames=12, groups=3, peak=8.0, noise=0.3, key_ratio=10):
  """q [T, h, N, d], k at the key frames, and the group of every token [T, N]."""
  rng = np.random.default_rng(seed)
  n = SIDE * SIDE
  centres = rng.standard_normal((groups, HEADS, DIM))
  centres /= np.linalg.norm(centres, axis=-1, keepdims=True)
  group = np.stack([rng.permutation(np.arange(n) % groups) for _ in range(frames)])          # [T, N]
  tokens = peak * centres[group] + noise * rng.standard_normal((frames, n, HEADS, DIM))     # [T, N, h, d]
  q = np.transpose(tokens, (0, 2, 1, 3)).astype(np.float32)
  k = q[cluster.sparse_key_frames(frames, key_ratio)]
  return q, k, group


def _oracle(q, k, tau):
  masks = TB.torch_cluster(torch.from_numpy(q), torch.from_numpy(k), SCALE, tau).numpy()   # [m, T N]
  return np.argmax(masks, axis=0).reshape(q.shape[0], q.shape[2]), masks.shape[0]


def _purity(labels, group):
  total = 0
  for c in np.unique(labels):
    total += np.bincount(group[labels == c]).max()
  return total / labels.size


@pytest.mark.parametrize('tau', [1.0, 1.6])
def test_three_groups_over_twelve_frames(tau):
  q, k, group = _structured(0)
  result = cluster.cluster_video(q, k, scale=SCALE, tau=tau)
  want, count = _oracle(q, k, tau)
  assert result.num_clusters == count == 3
  np.testing.assert_array_equal(result.labels, want)
  assert _purity(result.labels, group) == 1.0


def test_random_keys_give_one_cluster():
  rng = np.random.default_rng(1)
  q = (0.3 * rng.standard_normal((7, HEADS, SIDE * SIDE, DIM))).astype(np.float32)   # 7 frames: a short last window
  k = q[cluster.sparse_key_frames(7, 3)]
  result = cluster.cluster_video(q, k, scale=SCALE)
  want, count = _oracle(q, k, 1.0)
  assert result.num_clusters == count == 1
  np.testing.assert_array_equal(result.labels, want)


@pytest.mark.parametrize('seed', range(6))
def test_random_structured_videos_equal_the_released_algorithm(seed):
  rng = np.random.default_rng(100 + seed)
  groups, frames = int(rng.integers(2, 6)), int(rng.integers(4, 11))
  q, k, _ = _structured(seed, frames=frames, groups=groups, peak=float(rng.uniform(1.5, 6.0)),
                        noise=float(rng.uniform(0.2, 1.0)), key_ratio=int(rng.integers(1, 4)))
  tau = float(rng.uniform(0.3, 2.0))
  result = cluster.cluster_video(q, k, scale=SCALE, tau=tau)
  want, count = _oracle(q, k, tau)
  assert result.num_clusters == count
  np.testing.assert_array_equal(result.labels, want)


def test_exact_zeros_are_refused_unless_log_eps():
  q, k, group = _structured(2, peak=60.0, noise=0.0)   # softmax entries underflow to exactly 0
  with pytest.raises(cluster.ClusteringError, match='model.log_eps'):
    cluster.cluster_video(q, k, scale=SCALE)
  result = cluster.cluster_video(q, k, scale=SCALE, log_eps=1e-12)
  assert result.num_clusters == 3 and _purity(result.labels, group) == 1.0


def test_appendix_variant_clusters_without_windows_or_averaging():
  q, k, group = _structured(3)
  result = cluster.cluster_video(q, k, scale=SCALE, algorithm='appendix')
  assert result.num_clusters == 3 and _purity(result.labels, group) == 1.0
  with pytest.raises(cluster.ClusteringError, match='released'):
    cluster.cluster_video(q, k, scale=SCALE, algorithm='dense')


def test_sparse_key_frames():
  np.testing.assert_array_equal(cluster.sparse_key_frames(25, 10), [0, 10])
  np.testing.assert_array_equal(cluster.sparse_key_frames(20, 10), [0, 10])
  with pytest.raises(cluster.ClusteringError, match='model.key_ratio to at most 7'):
    cluster.sparse_key_frames(7, 10)


def test_symmetric_kl_of_the_oracle_is_jeffreys():
  rng = np.random.default_rng(4)
  a, b = rng.dirichlet(np.ones(6), 3), rng.dirichlet(np.ones(6), 4)
  want = np.array([[np.sum((p - r) * (np.log(p) - np.log(r))) for r in b] for p in a])
  np.testing.assert_allclose(TB.torch_kl_distance(torch.from_numpy(a), torch.from_numpy(b)).numpy(), want, rtol=1e-10)


def test_the_pivot_bound_only_admits_pairs_within_tau():
  rng = np.random.default_rng(5)
  for concentration in (3.0, 30.0, 300.0):
    x = rng.dirichlet(np.full(40, concentration), 300).astype(np.float32)
    log_x = np.log(x)
    exact = np.array([[np.sum((a - b) * (np.log(a) - np.log(b))) for b in x] for a in x])
    for tau in (0.05, 0.3, 1.0):
      surely = cluster._surely_near(x, log_x, tau)
      assert np.all(exact[surely] <= tau)
  assert surely.mean() > 0.5   # the bound does decide most pairs of near-uniform rows


def test_mostly_flat_video_with_a_few_peaked_tokens_equals_the_released_algorithm():
  """Most rows are provably near (the bound), a few are not (exact distance rows for those only)."""
  rng = np.random.default_rng(6)
  q = (0.01 * rng.standard_normal((6, HEADS, SIDE * SIDE, DIM))).astype(np.float32)
  q[:, :, :3] += rng.standard_normal((1, HEADS, 1, DIM)).astype(np.float32)   # 3 tokens per frame stand out
  k = q[cluster.sparse_key_frames(6, 3)]
  rows = np.asarray(cluster.attention_rows(q[:3], k, SCALE))
  log_rows = np.log(rows)
  undecided = ~cluster._surely_near(rows, log_rows, 1.0).all(axis=1)
  assert 0 < undecided.sum() <= rows.shape[0] // 2          # the partial path of _neighbourhood_average
  s = np.sum(rows * log_rows, -1)
  near = (s[:, None] + s[None, :] - rows @ log_rows.T - log_rows @ rows.T) <= 1.0
  want = near.astype(np.float32) @ rows
  np.testing.assert_allclose(cluster._neighbourhood_average(rows, 1.0, 0.0), want / want.sum(-1, keepdims=True),
                             rtol=1e-5, atol=1e-7)
  for tau in (1.0, 1.6):
    result = cluster.cluster_video(q, k, scale=SCALE, tau=tau)
    want_labels, count = _oracle(q, k, tau)
    assert result.num_clusters == count
    np.testing.assert_array_equal(result.labels, want_labels)
