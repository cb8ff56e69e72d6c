"""gsa_jax.bench smoke tests at a tiny size (tiny_cnn). Not timed tests: they check that the report's fields
exist and are positive. Compiling the whole model takes minutes on a 2-core CPU, so the model goes through the
FLOP path (lowered programs, nothing compiled); timing and the matmul peak are exercised on small programs."""

import json

import jax.numpy as jnp

from configs import gsanet_demo as demo
from gsa_jax.bench import report as report_lib
from gsa_jax.bench import runner
from gsa_jax.bench import timing


def _tiny_config():
  config = demo.get_config()
  m = config.model
  m.num_clusters, m.knn_k, m.kmeans_iters, m.slot_iters = 4, 2, 2, 1
  config.data.num_refs = 1
  return config


def test_flop_report_fields_exist_and_are_positive(tmp_path):
  out = tmp_path / 'bench.json'
  report = runner.run_all(_tiny_config(), demo_config=None, sizes=[64], batches=[1], train_batch=0,
                          breakdown_batches=[1], repeats=1, warmup=1, quick=True, sweeps=False, out=str(out),
                          log=lambda _: None, flops=True, timings=False)
  saved = json.loads(out.read_text())
  assert saved['env']['backend'] == 'cpu' and saved['env']['versions']['jax'] != 'n/a'
  assert saved['memory_end']['host_peak_rss_bytes'] > 0
  (r,) = saved['flops']
  for part in ('backbone', 'mffm', 'encode_references', 'slot_branch', 'slot_generator', 'kmeans',
               'guided_slot_attention', 'knn_topk', 'decoder'):
    assert r['parts'][part]['flops'] > 0, part
  # Re-encoding the references every frame costs more than the cached path; shares of the top-level parts add
  # up to 1.
  assert r['full']['flops'] > r['segment']['flops'] > 0
  shares = r['segment_shares']
  assert abs(sum(s['flop_share'] for s in shares.values() if 'within' not in s) - 1.0) < 1e-6
  assert shares['backbone']['flop_share'] > 0
  # The k-means count is the analytic one: 2 iterations of 4 n m c + 3 n m with n = (64/16)^2 points.
  assert r['parts']['kmeans']['flops'] == 2 * (4 * 16 * 4 * 32 + 3 * 16 * 4)
  assert 'train' not in r  # train_batch=0: no training-step program
  assert 'device:' in report_lib.summary_table(report)  # the table renders without timings


def test_timing_peak_and_plot(tmp_path):
  prog = timing.compile_program(lambda x: jnp.tanh(x @ x), jnp.ones((32, 32)))
  assert prog.compile_s > 0 and prog.cost['flops'] > 0
  t = timing.time_fn(prog.compiled, jnp.ones((32, 32)), warmup=1, repeats=3)
  assert t['median_s'] > 0 and t['repeats'] == 3 and t['number'] >= 1
  peak = timing.matmul_peak(jnp.float32, 64, repeats=2, warmup=1)
  assert peak['flops_per_s'] > 0 and peak['flops'] == 2 * 64 ** 3
  assert timing.device_memory() is None or 'peak_bytes_in_use' in timing.device_memory()
  sweep = dict(value=1, cached_ms_per_frame=2.0, full_ms_per_frame=3.0)
  sweeps = {k: [sweep, dict(sweep, value=2)] for k in ('resolution', 'num_refs', 'num_clusters', 'slot_iters',
                                                       'batch')}
  png = tmp_path / 'bench.png'
  report_lib.plot_sweeps(sweeps, [], str(png), title='t')
  assert png.stat().st_size > 1000


def test_predict_path_figures():
  """The predict path (context encoded once + batched segments) against a full forward per frame, tiny model."""
  config = _tiny_config()
  config.model.dim = 16
  config.data.num_refs = 2
  r = runner.bench_predict_path(config, image_size=64, num_frames=4, batch_size=2, repeats=1, warmup=0)
  assert (r['image_size'], r['batch_size'], r['num_frames'], r['num_refs']) == (64, 2, 4, 2)
  for key in ('cached_fps', 'uncached_fps', 'flow_s_per_frame', 'compile_s', 'full_compile_s'):
    assert r[key] > 0, key
  assert r['cached_fps_with_flow'] < r['cached_fps'] and r['uncached_fps_with_flow'] < r['uncached_fps']
  assert abs(r['speedup'] - r['cached_fps'] / r['uncached_fps']) < 1e-9


def test_model_sweeps_over_clusters_and_iterations():
  """M changes the fusion convs' parameter shapes: every M and T point runs with variables of its own."""
  config = _tiny_config()
  config.model.dim = 16
  sweeps = runner.run_sweeps(config, base_size=64, model_sweeps={'num_clusters': [2, 4], 'slot_iters': [2]},
                             repeats=1, warmup=0, log=lambda _: None)
  assert [p['value'] for p in sweeps['num_clusters']] == [2, 4]
  assert [p['value'] for p in sweeps['slot_iters']] == [2]
  for p in sweeps['num_clusters'] + sweeps['slot_iters']:
    assert p['cached_ms_per_frame'] > 0 and p['cached_flops_per_frame'] > 0
  # More clusters cost more FLOPs per frame (k-means, cosine maps, the wider fusion conv).
  assert sweeps['num_clusters'][1]['cached_flops_per_frame'] > sweeps['num_clusters'][0]['cached_flops_per_frame']
