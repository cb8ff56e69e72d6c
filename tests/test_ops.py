"""gsa_jax.ops against hand-worked answers: k-means, assignments, pooling, cosine/KNN, resizing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsa_jax import ops


def _blobs(seed: int = 0, per: int = 6):
  """Three well-separated 2-d blobs; returns points [3*per, 2] and true labels."""
  rng = np.random.default_rng(seed)
  centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
  labels = np.repeat(np.arange(3), per)
  pts = centres[labels] + rng.normal(0, 0.5, (3 * per, 2))
  perm = rng.permutation(len(pts))
  return jnp.asarray(pts[perm], jnp.float32), labels[perm], centres


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
  """True when the two labelings define the same partition (up to renaming)."""
  return all(len(set(b[a == v])) == 1 for v in np.unique(a)) and len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize('init', ['kmeans++', 'strided'])
def test_kmeans_recovers_separable_clusters(init):
  x, truth, centres = _blobs()
  res = ops.kmeans(x, jax.random.key(3), 3, num_iters=10, init=init)
  assert _same_partition(np.asarray(res.assignments), truth)
  found = np.asarray(res.centroids)
  for c in centres:  # every true centre has a centroid within 1.0
    assert np.min(np.linalg.norm(found - c, axis=1)) < 1.0


def test_kmeans_empty_cluster_gets_zero_centroid():
  # strided init picks all four rows: two duplicated centroids; ties go to the lowest index, so
  # clusters 1 and 3 stay empty and become the zero vector (fast_pytorch_kmeans' NaN -> 0).
  x = jnp.array([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0], [5.0, 5.0]])
  res = ops.kmeans(x, jax.random.key(0), 4, num_iters=3, init='strided')
  np.testing.assert_array_equal(np.asarray(res.assignments), [0, 0, 2, 2])
  np.testing.assert_allclose(np.asarray(res.centroids), [[1, 1], [0, 0], [5, 5], [0, 0]])


def test_kmeans_labels_come_from_last_assignment_step():
  # One iteration: labels are assigned against the INIT centroids, centroids are then updated.
  x = jnp.array([[0.0], [1.0], [10.0]])
  res = ops.kmeans(x, jax.random.key(0), 2, num_iters=1, init='strided')  # init rows 0 and 1
  np.testing.assert_array_equal(np.asarray(res.assignments), [0, 1, 1])
  np.testing.assert_allclose(np.asarray(res.centroids), [[0.0], [5.5]])


def test_kmeans_random_init_draws_rows_with_replacement_and_key_determinism():
  x = jax.random.normal(jax.random.key(0), (40, 4))
  init = ops.kmeans_init(x, jax.random.key(1), 30, 'random')
  rows = {tuple(np.asarray(r)) for r in np.asarray(x)}
  assert all(tuple(r) in rows for r in np.asarray(init))
  a = ops.batched_kmeans(x[None].repeat(2, 0), jax.random.key(5), 6, 5)
  b = ops.batched_kmeans(x[None].repeat(2, 0), jax.random.key(5), 6, 5)
  c = ops.batched_kmeans(x[None].repeat(2, 0), jax.random.key(6), 6, 5)
  np.testing.assert_array_equal(np.asarray(a.centroids), np.asarray(b.centroids))
  assert not np.allclose(np.asarray(a.centroids), np.asarray(c.centroids))
  # Each batch element gets its own key: same data, different clusterings.
  assert not np.allclose(np.asarray(a.centroids[0]), np.asarray(a.centroids[1]))


def test_kmeans_jit_equals_eager_and_unknown_init_raises():
  x = jax.random.normal(jax.random.key(0), (3, 20, 5))
  f = lambda x, k: ops.batched_kmeans(x, k, 4, 4, 'kmeans++')
  eager, jitted = f(x, jax.random.key(2)), jax.jit(f)(x, jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(eager.assignments), np.asarray(jitted.assignments))
  np.testing.assert_allclose(np.asarray(eager.centroids), np.asarray(jitted.centroids), atol=1e-5)
  with pytest.raises(ValueError, match='kmeans_init'):
    ops.kmeans(x[0], jax.random.key(0), 3, 2, init='bogus')


def test_hard_assignments_are_one_hot_and_block_gradients_soft_ones_do_not():
  x, truth, _ = _blobs(per=4)
  x = x[None]
  w, labels = ops.kmeans_assignments(x, jax.random.key(0), 3, init='strided', assign='hard')
  np.testing.assert_array_equal(np.asarray(w.sum(-1)), 1.0)
  np.testing.assert_array_equal(np.asarray(jnp.argmax(w, -1)), np.asarray(labels))
  probe = jax.random.normal(jax.random.key(1), w.shape)
  g_hard = jax.grad(lambda x: jnp.sum(ops.kmeans_assignments(x, jax.random.key(0), 3, init='strided')[0] * probe))(x)
  np.testing.assert_array_equal(np.asarray(g_hard), 0.0)
  soft = lambda x, t: ops.kmeans_assignments(x, jax.random.key(0), 3, init='strided', assign='soft', temperature=t)[0]
  np.testing.assert_allclose(np.asarray(soft(x, 1.0).sum(-1)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(soft(x, 1e-3)), np.asarray(w), atol=1e-4)  # cold -> hard
  g_soft = jax.grad(lambda x: jnp.sum(soft(x, 50.0) * probe))(x)
  assert float(jnp.abs(g_soft).sum()) > 0


def test_gwap_sum_and_mean():
  x = jnp.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])          # [1 3 2]
  w = jnp.array([[[1.0, 0.0], [1.0, 0.0], [0.5, 0.0]]])          # [1 3 2]; column 1 empty
  np.testing.assert_allclose(np.asarray(ops.gwap(x, w, 'sum')), [[[6.5, 9.0], [0.0, 0.0]]])
  np.testing.assert_allclose(np.asarray(ops.gwap(x, w, 'mean')), [[[6.5 / 2.5, 9.0 / 2.5], [0.0, 0.0]]])
  with pytest.raises(ValueError):
    ops.gwap(x, w, 'max')


def test_spatial_softmax_prototypes():
  x = jnp.array([[[0.0, 0.0], [jnp.log(3.0), 0.0]]])              # [b=1, n=2, c=2]
  p = np.asarray(ops.spatial_softmax_prototypes(x))[0]
  # channel 0: softmax([0, log 3]) = [1/4, 3/4]; channel 1: uniform.
  np.testing.assert_allclose(p[0], 0.25 * np.array([0, 0]) + 0.75 * np.array([np.log(3.0), 0]), rtol=1e-6)
  np.testing.assert_allclose(p[1], 0.5 * np.array([np.log(3.0), 0]), rtol=1e-6)


def test_cosine_similarity_maps_and_eps():
  a = jnp.array([[[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
  b = jnp.array([[[2.0, 0.0], [0.0, -3.0]]])
  s = np.asarray(ops.cosine_similarity(a, b))[0]
  np.testing.assert_allclose(s, [[1, 0], [np.sqrt(0.5), -np.sqrt(0.5)], [0, 0]], atol=1e-6)
  assert np.isnan(np.asarray(ops.cosine_similarity(a, b, eps=0.0))[0, 2]).all()  # official: 0/0
  g = jax.grad(lambda a: ops.cosine_similarity(a, b).sum())(a)
  assert np.isfinite(np.asarray(g)).all()
  maps = np.asarray(ops.cosine_maps(a.reshape(1, 1, 3, 2), b))
  assert maps.shape == (1, 1, 3, 2)
  np.testing.assert_allclose(maps[0, 0], s, atol=1e-6)


def test_knn_topk_per_query():
  pool = jnp.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0], [0.1, 1.0]]])
  q = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
  nb, idx, sims = ops.knn_topk(q, pool, 2)
  np.testing.assert_array_equal(np.asarray(idx), [[[0, 2], [1, 4]]])
  np.testing.assert_allclose(np.asarray(nb), np.asarray(pool)[0][np.array([[0, 2], [1, 4]])][None])
  assert np.all(np.diff(np.asarray(sims), axis=-1) <= 0)
  g = jax.grad(lambda p: ops.knn_topk(q, p, 2)[0].sum())(pool)
  np.testing.assert_array_equal(np.asarray(g)[0, 3], 0.0)  # never selected -> no gradient
  with pytest.raises(ValueError, match='knn_k'):
    ops.knn_topk(q, pool, 6)


def test_resize_align_corners_by_hand():
  x = jnp.array([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 2, 2, 1)
  y = np.asarray(ops.resize_bilinear_align_corners(x, (3, 3)))[0, :, :, 0]
  np.testing.assert_allclose(y, [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])
  # 3 -> 5 along w: positions 0, .5, 1, 1.5, 2.
  r = jnp.array([0.0, 4.0, 6.0]).reshape(1, 1, 3, 1)
  np.testing.assert_allclose(np.asarray(ops.resize_bilinear_align_corners(r, (1, 5)))[0, 0, :, 0],
                             [0, 2, 4, 5, 6])
  # Downsampling 5 -> 3 samples 0, 2, 4 exactly.
  z = jnp.arange(5.0).reshape(1, 5, 1, 1) ** 2
  np.testing.assert_allclose(np.asarray(ops.resize_bilinear_align_corners(z, (3, 1)))[0, :, 0, 0], [0, 4, 16])
  jitted = jax.jit(lambda x: ops.resize_bilinear_align_corners(x, (7, 5)))
  big = jax.random.normal(jax.random.key(0), (2, 4, 3, 2))
  np.testing.assert_allclose(np.asarray(jitted(big)), np.asarray(ops.resize_bilinear_align_corners(big, (7, 5))),
                             rtol=1e-6)


def test_resize_half_pixel_by_hand():
  x = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
  # PyTorch align_corners=False, x2: source positions -0.25, 0.25, 0.75, 1.25 (clamped).
  np.testing.assert_allclose(np.asarray(ops.resize_bilinear(x, (1, 4)))[0, 0, :, 0], [0, 0.25, 0.75, 1])
