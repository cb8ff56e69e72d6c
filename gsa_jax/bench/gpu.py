"""One-shot accelerator benchmark: training examples/s, cached inference frames/s, memory and MFU, in one run.

  python -m gsa_jax.bench.gpu --out=bench_gpu.json [--budget_s=420] [--smoke]
  bash scripts/bench_gpu.sh [--cpu-smoke] [OUT.json]        (the same, with a wall-clock limit)

For GSA-Net (configs/gsanet_davis_mitb2.py: MiT-B2, N_R = 4) and DPA (configs/dpa_davis.py) it measures, in
float32 and bfloat16 (`model.dtype`: bf16 compute, f32 parameters, loss and optimiser state):
  train   the real trainer step (gsa_jax.train.train_step, Adam, donated state) at 384 and 512:
          s/step, examples/s, XLA FLOPs per example, MFU = achieved FLOP/s / the bf16 matmul rate;
  infer   frames/s with cached references ('segment' on encoded references) at 512;
  memory  XLA's memory analysis of each program (arguments + temporaries + outputs - aliases) and the
          device's peak bytes in use after each stage.
The matmul rates (f32 at default precision and bf16, n = 8192) are measured first, in the same run.
Compilation is the largest cost on a fresh machine (minutes per MiT-B2 training step), so the stages are
lowered and compiled on a thread pool (--compile_threads at once), then timed one after the other on the main
thread, in priority order (GSA-Net before DPA, 384 training before 512), each result written to the JSON as
soon as it exists. A stage not compiled within --budget_s, or with no time left to run it, is skipped and
listed under 'skipped', with the reason.
--smoke runs the same code at tiny sizes (the demo configs, 64 px, small widths): a CPU check of the script.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from gsa_jax import optim
from gsa_jax import train
from gsa_jax.bench import runner
from gsa_jax.bench import timing

_OUT = flags.DEFINE_string('out', 'bench_gpu.json', 'JSON output path.')
_BUDGET = flags.DEFINE_float('budget_s', 420.0, 'Wall-clock budget of the whole run, seconds.')
_SMOKE = flags.DEFINE_bool('smoke', False, 'Tiny sizes (demo configs at 64 px): a quick check on the CPU.')
_MODELS = flags.DEFINE_list('models', ['gsanet', 'dpa'], 'Model families to measure, in priority order.')
_TRAIN_SIZES = flags.DEFINE_list('train_sizes', ['384', '512'], 'Training sizes.')
_TRAIN_BATCH = flags.DEFINE_integer('train_batch', 16, 'Training batch.')
_INFER_SIZE = flags.DEFINE_integer('infer_size', 512, 'Inference size (cached references).')
_INFER_BATCH = flags.DEFINE_integer('infer_batch', 8, 'Inference batch.')
_DTYPES = flags.DEFINE_list('dtypes', ['bfloat16', 'float32'], 'Compute dtypes, in priority order.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed samples per figure (median).')
_COMPILE_THREADS = flags.DEFINE_integer('compile_threads', 8, 'Programs compiled at once.')

CONFIGS = {'gsanet': 'configs/gsanet_davis_mitb2.py', 'dpa': 'configs/dpa_davis.py'}
SMOKE_CONFIGS = {'gsanet': 'configs/gsanet_demo.py', 'dpa': 'configs/dpa_demo.py'}
SMOKE_MODEL = {'gsanet': dict(dim=16, num_clusters=4, knn_k=2, kmeans_iters=2, slot_iters=1), 'dpa': {}}


def _load(path: str) -> Any:
  spec = importlib.util.spec_from_file_location('bench_gpu_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def plan(models: Sequence[str], dtypes: Sequence[str], train_sizes: Sequence[int], infer_size: int,
         smoke: bool) -> list[dict[str, Any]]:
  """The stages in priority order: per model, training at the first size in every dtype, inference, then
  training at the other sizes."""
  stages = []
  sizes = [64] if smoke else list(train_sizes)
  infer = 64 if smoke else infer_size
  for model in models:
    for i, size in enumerate(sizes):
      stages += [dict(model=model, kind='train', size=size, dtype=d) for d in dtypes]
      if i == 0:
        stages += [dict(model=model, kind='infer', size=infer, dtype=d) for d in dtypes]
    if not sizes:
      stages += [dict(model=model, kind='infer', size=infer, dtype=d) for d in dtypes]
  if smoke:  # every code path once, few programs: the first model in every dtype, the others in one
    first = models[0] if models else None
    stages = [s for s in stages if s['model'] == first or s['dtype'] == dtypes[(s['kind'] == 'infer') % len(dtypes)]]
    stages = [s for s in stages if not (s['model'] == first and s['kind'] == 'infer' and s['dtype'] != dtypes[0])]
  return stages


def _config(stage: dict[str, Any], smoke: bool) -> Any:
  base = _load((SMOKE_CONFIGS if smoke else CONFIGS)[stage['model']])
  model_fields = dict(SMOKE_MODEL[stage['model']] if smoke else {}, dtype=stage['dtype'])
  data = dict(image_size=stage['size'])
  if smoke:
    data['num_refs'] = 1
  return runner.with_overrides(base, model={k: v for k, v in model_fields.items() if k in base.model}, data=data)


def _prepare(stage: dict[str, Any], *, smoke: bool, train_batch: int, infer_batch: int) -> dict[str, Any]:
  """Builds the stage's model, inputs and lowered programs (nothing compiled yet)."""
  config = _config(stage, smoke)
  model, variables = runner.model_and_variables(config, config.seed)
  if stage['kind'] == 'train':
    batch = train_batch
    tx, schedule = optim.create_optimizer(config.train, 1000)
    state = train.create_state(model, variables, tx)
    x = runner.random_batch(model, batch, stage['size'])
    step = lambda s, b: train.train_step(s, b, model=model, tx=tx, schedule=schedule, seed=0)
    lowered = {'step': jax.jit(step, donate_argnums=(0,)).lower(state, x)}
    args = dict(state=state, x=x)
  else:
    batch = infer_batch
    x = runner.random_batch(model, batch, stage['size'])
    progs = model.inference_programs()
    lowered = {}
    context = None
    if 'encode' in progs:
      lowered['encode'] = jax.jit(progs['encode']).lower(variables, x)
      context = jax.eval_shape(progs['encode'], variables, x)
    lowered['segment'] = jax.jit(progs['segment']).lower(variables, x, context)
    args = dict(variables=variables, x=x)
  return dict(stage=dict(stage, batch=batch), lowered=lowered, args=args,
              num_params=sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables['params'])))


def _compile(lowered: Any) -> tuple[Any, float]:
  t0 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, time.perf_counter() - t0


def _prepare_and_compile(stage: dict[str, Any], **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """_prepare, then every program compiled: (prepared, {name: (compiled, compile seconds)}). Runs on the
  pool: tracing holds the interpreter lock, XLA's compilation does not, so stages overlap."""
  t0 = time.perf_counter()
  prepared = _prepare(stage, **kwargs)
  prepared['lower_s'] = time.perf_counter() - t0
  return prepared, {name: _compile(low) for name, low in prepared.pop('lowered').items()}


def _program_memory(compiled: Any) -> dict[str, int]:
  try:
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)
    return dict(argument_bytes=int(m.argument_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes),
                output_bytes=int(m.output_size_in_bytes), alias_bytes=int(m.alias_size_in_bytes), total_bytes=int(total))
  except Exception:  # pylint: disable=broad-except
    return {}


def _run(prepared: dict[str, Any], compiled: dict[str, Any], *, peak_bf16: float | None,
         repeats: int) -> dict[str, Any]:
  """Times the compiled programs of one stage."""
  stage, args = prepared['stage'], prepared['args']
  out = dict(stage, num_params=prepared['num_params'])
  if stage['kind'] == 'train':
    prog = compiled['step']
    t = timing.time_fn(prog, args['state'], args['x'], warmup=2, repeats=repeats, chain=True, number=1)
    flops = timing.cost(prog).get('flops', 0.0)
    out.update(step_s=t['median_s'], examples_per_s=stage['batch'] / t['median_s'], timing=t,
               flops_per_example=flops / stage['batch'], achieved_flops_per_s=flops / t['median_s'],
               program_memory=_program_memory(prog))
    del args['state']  # donated
  else:
    x, variables = args['x'], args['variables']
    context = timing.block(compiled['encode'](variables, x)) if 'encode' in compiled else None
    prog = compiled['segment']
    t = timing.time_fn(prog, variables, x, context, warmup=2, repeats=repeats)
    flops = timing.cost(prog).get('flops', 0.0)
    out.update(frames_per_s=stage['batch'] / t['median_s'], ms_per_frame=1e3 * t['median_s'] / stage['batch'],
               timing=t, flops_per_frame=flops / stage['batch'], achieved_flops_per_s=flops / t['median_s'],
               program_memory=_program_memory(prog))
  if peak_bf16:
    out['mfu_vs_bf16_peak'] = out['achieved_flops_per_s'] / peak_bf16
  out['device_memory'] = timing.device_memory()
  return out


def run(*, models: Sequence[str], dtypes: Sequence[str], train_sizes: Sequence[int], infer_size: int,
        train_batch: int, infer_batch: int, budget_s: float, smoke: bool, repeats: int, compile_threads: int,
        out: str | None = None, log=print) -> dict[str, Any]:
  """Everything main() does, as a function (the smoke test calls it)."""
  t_start = time.perf_counter()
  report: dict[str, Any] = dict(env=timing.environment(), settings=dict(
      models=list(models), dtypes=list(dtypes), train_sizes=list(train_sizes), infer_size=infer_size,
      train_batch=train_batch, infer_batch=infer_batch, budget_s=budget_s, smoke=smoke), results=[], skipped=[])
  elapsed = lambda: time.perf_counter() - t_start

  def save():
    report['wall_s'] = elapsed()
    if out:
      with open(out, 'w') as f:
        json.dump(report, f, indent=1, default=str)

  cpu = jax.default_backend() == 'cpu'
  n = 512 if smoke else (2048 if cpu else 8192)
  report['matmul_peak'] = {d: timing.matmul_peak(getattr(jax.numpy, d), n, repeats=3, warmup=1)
                           for d in ('float32', 'bfloat16')}
  peak_bf16 = report['matmul_peak']['bfloat16']['flops_per_s']
  log(f'matmul f32 {report["matmul_peak"]["float32"]["flops_per_s"] / 1e9:.0f} GFLOP/s, '
      f'bf16 {peak_bf16 / 1e9:.0f} GFLOP/s')
  save()
  stages = plan(models, dtypes, train_sizes, infer_size, smoke)
  sizes = dict(smoke=smoke, train_batch=2 if smoke else train_batch, infer_batch=2 if smoke else infer_batch)
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, compile_threads))
  futures = [pool.submit(_prepare_and_compile, stage, **sizes) for stage in stages]
  for stage, future in zip(stages, futures):
    try:
      prepared, done = future.result(timeout=max(budget_s - elapsed(), 1.0))
    except concurrent.futures.TimeoutError:
      report['skipped'].append(dict(stage, why='not compiled within the budget'))
      save()
      continue
    except Exception as e:  # pylint: disable=broad-except
      report['skipped'].append(dict(stage, why=f'{type(e).__name__}: {e}'))
      save()
      continue
    if report['results'] and elapsed() + 2 * max(r['run_s'] for r in report['results']) > budget_s:
      report['skipped'].append(dict(stage, why='no time left to run it'))
      continue
    compile_s = {name: c[1] for name, c in done.items()}
    log(f'running {stage} (lowered in {prepared["lower_s"]:.0f} s, compiled in {compile_s})')
    t0 = time.perf_counter()
    try:
      res = _run(prepared, {name: c[0] for name, c in done.items()}, peak_bf16=peak_bf16, repeats=repeats)
    except Exception as e:  # pylint: disable=broad-except
      report['skipped'].append(dict(stage, why=f'{type(e).__name__}: {e}'))
      save()
      continue
    res.update(lower_s=prepared['lower_s'], compile_s=compile_s, run_s=time.perf_counter() - t0)
    report['results'].append(res)
    prepared['args'].clear()
    log('  ' + _line(res))
    save()
  pool.shutdown(wait=False, cancel_futures=True)
  report['load_average_end'] = list(os.getloadavg())
  save()
  return report


def _line(r: dict[str, Any]) -> str:
  mem = (r.get('program_memory') or {}).get('total_bytes', 0) / 2 ** 30
  mfu = f", MFU {100 * r['mfu_vs_bf16_peak']:.1f} %" if 'mfu_vs_bf16_peak' in r else ''
  if r['kind'] == 'train':
    return (f"{r['model']} train {r['size']} {r['dtype']} b{r['batch']}: {r['step_s']:.4f} s/step, "
            f"{r['examples_per_s']:.1f} ex/s, {r['flops_per_example'] / 1e9:.0f} GFLOP/ex{mfu}, {mem:.1f} GiB")
  return (f"{r['model']} infer {r['size']} {r['dtype']} b{r['batch']}: {r['frames_per_s']:.1f} frames/s{mfu}, "
          f"{mem:.1f} GiB")


def table(report: dict[str, Any]) -> str:
  """A markdown table of the results."""
  rows = ['| model | what | size | dtype | batch | result | MFU (bf16 peak) | program memory | compile |',
          '|---|---|---|---|---|---|---|---|---|']
  for r in report['results']:
    result = (f"{r['examples_per_s']:.1f} examples/s ({r['step_s'] * 1e3:.1f} ms/step)" if r['kind'] == 'train'
              else f"{r['frames_per_s']:.1f} frames/s")
    mfu = f"{100 * r['mfu_vs_bf16_peak']:.1f} %" if 'mfu_vs_bf16_peak' in r else ''
    mem = (r.get('program_memory') or {}).get('total_bytes', 0) / 2 ** 30
    rows.append(f"| {r['model']} | {r['kind']} | {r['size']} | {r['dtype']} | {r['batch']} | {result} | {mfu} | "
                f"{mem:.2f} GiB | {sum(r['compile_s'].values()):.0f} s |")
  for s in report['skipped']:
    rows.append(f"| {s['model']} | {s['kind']} | {s['size']} | {s['dtype']} | | skipped: {s['why']} | | | |")
  return '\n'.join(rows)


def main(argv: Sequence[str]) -> None:
  del argv
  report = run(models=_MODELS.value, dtypes=_DTYPES.value, train_sizes=[int(s) for s in _TRAIN_SIZES.value],
               infer_size=_INFER_SIZE.value, train_batch=_TRAIN_BATCH.value, infer_batch=_INFER_BATCH.value,
               budget_s=_BUDGET.value, smoke=_SMOKE.value, repeats=2 if _SMOKE.value else _REPEATS.value,
               compile_threads=_COMPILE_THREADS.value, out=_OUT.value, log=lambda m: logging.info('%s', m))
  logging.info('wrote %s', _OUT.value)
  print(table(report), flush=True)
  # A compile still running on the pool (a skipped stage) would hold the interpreter's exit.
  os._exit(0)  # pylint: disable=protected-access


if __name__ == '__main__':
  app.run(main)
