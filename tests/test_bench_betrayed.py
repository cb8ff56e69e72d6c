"""The clustering benchmark (gsa_jax/bench/betrayed.py) at a tiny size: 4 frames of 32x48 pixels (4x6 tokens).

Checks what it reports (no timings are asserted): the inputs' shapes, one cluster for random queries, the
groups recovered for --structured, the JSON file, and the errors for sizes the clustering cannot take; and
that on the benchmark's inputs (6 frames of 64x96) cluster_video's labels equal the torch restatement of
the released algorithm (tests/torch_betrayed.py).
"""

import json

import numpy as np
import pytest
import torch

from gsa_jax.bench import betrayed as bench
from gsa_jax.models.betrayed import cluster
import torch_betrayed as TB

TINY = ['--frames', '4', '--height', '32', '--width', '48', '--key_ratio', '2']


def test_inputs_have_the_released_shapes():
  q, k, group = bench.make_inputs(4, 32, 48, key_ratio=2)
  assert q.shape == (4, bench.HEADS, 24, bench.HEAD_DIM) and q.dtype == np.float32
  np.testing.assert_array_equal(k, q[[0, 2]])
  assert group is None
  q, k, group = bench.make_inputs(4, 32, 48, structured=True, groups=2, key_ratio=2)
  assert group.shape == (4, 24) and set(np.unique(group)) == {0, 1}


def test_random_and_structured_runs_report_clusters_and_stages(tmp_path):
  out = tmp_path / 'bench.json'
  result = bench.main(TINY + ['--json', str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  assert result['case'] == 'random' and result['num_clusters'] == 1 and result['labels_repeat']
  assert result['first_call_s'] > 0 and result['second_call_s'] > 0
  assert set(result['stages_s']) == {'rows', 'averaging', 'window_passes', 'video_passes', 'assignment'}
  result = bench.main(TINY + ['--structured', '--groups', '3'])
  assert result['num_clusters'] == 3 and result['purity'] == 1.0


@pytest.mark.parametrize('flags, match', [
    (['--height', '30'], '--height 30'),
    (['--frames', '4', '--key_ratio', '10'], '--key_ratio <= 4'),
    (['--structured', '--groups', '0'], '--groups 0'),
])
def test_bad_sizes_name_the_flag(flags, match):
  with pytest.raises(bench.BenchError, match=match):
    bench.main(TINY + flags)


@pytest.mark.parametrize('structured, groups', [(False, 1), (True, 3), (True, 5)])
def test_labels_equal_the_released_algorithm_on_the_benchmark_inputs(structured, groups):
  q, k, group = bench.make_inputs(6, 64, 96, structured=structured, groups=groups, key_ratio=3)
  scale = bench.HEAD_DIM ** -0.5
  result = cluster.cluster_video(q, k, scale=scale)
  masks = TB.torch_cluster(torch.from_numpy(q), torch.from_numpy(k), scale, 1.0).numpy()   # [K, T N] one-hot
  assert result.num_clusters == masks.shape[0] == groups
  np.testing.assert_array_equal(result.labels.reshape(-1), np.argmax(masks, axis=0))
