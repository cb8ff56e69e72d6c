"""The one-shot accelerator benchmark (gsa_jax/bench/gpu.py, scripts/bench_gpu.sh): its plan, and its smoke mode
on the CPU (demo-sized GSA-Net in bfloat16, training and cached inference, under a time budget)."""

import json

import pytest

from gsa_jax.bench import gpu


def test_plan_puts_training_at_384_first_and_covers_every_requested_stage():
  stages = gpu.plan(['gsanet', 'dpa'], ['bfloat16', 'float32'], [384, 512], 512, smoke=False)
  assert stages[0] == dict(model='gsanet', kind='train', size=384, dtype='bfloat16')
  assert len(stages) == 12 and len({tuple(sorted(s.items())) for s in stages}) == 12
  assert [s['model'] for s in stages].index('dpa') == 6
  assert {(s['kind'], s['size']) for s in stages} == {('train', 384), ('train', 512), ('infer', 512)}
  smoke = gpu.plan(['gsanet', 'dpa'], ['bfloat16', 'float32'], [384, 512], 512, smoke=True)
  assert {s['size'] for s in smoke} == {64} and {s['dtype'] for s in smoke} == {'bfloat16', 'float32'}
  assert {(s['model'], s['kind']) for s in smoke} == {('gsanet', 'train'), ('gsanet', 'infer'), ('dpa', 'train'),
                                                    ('dpa', 'infer')}


@pytest.mark.slow
def test_smoke_run_measures_training_and_inference(tmp_path):
  out = tmp_path / 'bench_gpu.json'
  # GSA-Net in bfloat16 only (training + cached inference): the two programs compile in about a minute here.
  report = gpu.run(models=['gsanet'], dtypes=['bfloat16'], train_sizes=[384], infer_size=512,
                   train_batch=16, infer_batch=8, budget_s=240.0, smoke=True, repeats=1, compile_threads=2,
                   out=str(out), log=lambda _: None)
  saved = json.loads(out.read_text())
  assert saved['matmul_peak']['bfloat16']['flops_per_s'] > 0
  # Whatever did not fit in the budget is skipped for that reason only, never for an error.
  for s in saved['skipped']:
    assert 'budget' in s['why'] or 'no time left' in s['why'], s
  kinds = {(r['model'], r['kind'], r['dtype']) for r in report['results']}
  assert ('gsanet', 'train', 'bfloat16') in kinds, saved['skipped']
  for r in report['results']:
    assert r['size'] == 64 and r['batch'] == 2
    assert r['mfu_vs_bf16_peak'] > 0 and r['achieved_flops_per_s'] > 0
    assert r['program_memory']['total_bytes'] > 0
    if r['kind'] == 'train':
      assert r['examples_per_s'] > 0 and r['flops_per_example'] > 0
    else:
      assert r['frames_per_s'] > 0
  assert '| gsanet | train | 64 | bfloat16 | 2 |' in gpu.table(report)
