"""Speed, FLOPs and memory of any registered model (gsa_jax.bench.runner has what each figure means).

  python -m gsa_jax.bench --config=configs/gsanet_davis_mitb2.py --out=bench.json [--sizes=384,512] [--sweeps]
      [--quick] [--demo_config=configs/gsanet_demo.py] [--plot=bench.png]
  python -m gsa_jax.bench --config=configs/gsanet_davis_mitb2.py --sizes=384 --batches=1 --train_batch=2 \
      --train_breakdown --out=train.json
      the training step part by part, forward and backward (time share against FLOP share of each part).
  python -m gsa_jax.bench --config=configs/gsanet_davis_mitb2.py --out=flops.json --flops --notimings
      FLOPs only (lowered programs: nothing compiled, seconds instead of minutes).
  python -m gsa_jax.bench --config=... --predict_fps --sizes=384 --out=predict.json
      predict's own code path against one full forward per frame.
  python -m gsa_jax.bench --vit --out=vit_bench.json [--repeats=3 --warmup=1]
      DINOv2 ViT-B/14 at 336x504 and DINO ViT-S/8 at 320x480, ours against transformers with the same
      random weights (gsa_jax.bench.vit).
  bash scripts/bench_gpu.sh   one-shot accelerator benchmark (gsa_jax.bench.gpu).
Results and the studies behind design choices: docs/benchmarks.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gsa_jax.bench import report as report_lib
from gsa_jax.bench import runner
from gsa_jax.bench import timing

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/gsanet_davis_mitb2.py', 'The model config to measure.')
_DEMO_CONFIG = flags.DEFINE_string('demo_config', 'configs/gsanet_demo.py',
                                   'A small config also measured at its own size (empty: none).')
_OUT = flags.DEFINE_string('out', 'bench.json', 'JSON output path.')
_PLOT = flags.DEFINE_string('plot', '', 'PNG path of the sweep plot (default: --out with .png).')
_SIZES = flags.DEFINE_list('sizes', ['384', '512'], 'Square input sizes for --config.')
_BATCHES = flags.DEFINE_list('batches', ['1', '8'], 'Inference batch sizes.')
_TRAIN_BATCH = flags.DEFINE_integer('train_batch', 8, 'Training-step batch size (0 = no training step).')
_TRAIN_SIZES = flags.DEFINE_list('train_sizes', [], 'Sizes of --config with a training step (default: all).')
_BREAKDOWN_SIZES = flags.DEFINE_list('breakdown_sizes', [], 'Sizes of --config with a breakdown (default: all).')
_PEAK_HIGHEST = flags.DEFINE_bool('peak_highest', False, 'GPU: also time the f32 matmul at HIGHEST precision.')
_BREAKDOWN_BATCHES = flags.DEFINE_list('breakdown_batches', ['1'], 'Batches of the per-part breakdown.')
_FULL_MAX_BATCH = flags.DEFINE_integer('full_max_batch', 64, 'Largest batch at which the full forward is timed.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed samples per figure (median reported).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed calls before timing.')
_SWEEPS = flags.DEFINE_bool('sweeps', False, 'Run the scaling sweeps.')
_SWEEP_SIZE = flags.DEFINE_integer('sweep_size', 384, 'Base size of the N_R / model-knob / batch sweeps.')
_SWEEP_SIZES = flags.DEFINE_list('sweep_sizes', ['256', '320', '384', '448', '512'], 'Resolution sweep.')
_SWEEP_REFS = flags.DEFINE_list('sweep_refs', ['1', '2', '3', '4', '5'], 'N_R sweep.')
_SWEEP_MODEL = flags.DEFINE_multi_string(
    'sweep_model', ['num_clusters=16,32,64,128,256', 'slot_iters=0,1,2,3,4,5'],
    "The model's own sweeps, name=v1,v2,... (names: the model's bench_sweeps, e.g. GSA-Net's num_clusters, "
    'slot_iters); sweeps the model does not have are left out.')
_SWEEP_BATCHES = flags.DEFINE_list('sweep_batches', ['1', '2', '4', '8'], 'Batch sweep (cached context).')
_FLOPS = flags.DEFINE_bool('flops', False, 'Add the FLOP-only report (lowered programs, batch 1) per size.')
_TIMINGS = flags.DEFINE_bool('timings', True, 'Compile and time (False with --flops: FLOPs only).')
_PREDICT_FPS = flags.DEFINE_bool('predict_fps', False, "Only the predict path's frames/s at --sizes (and the demo).")
_PREDICT_BATCH = flags.DEFINE_integer('predict_batch', 4, 'Batch of the predict path (--predict_fps).')
_VIT = flags.DEFINE_bool('vit', False, 'Only the DINO / DINOv2 ViT forward, ours against transformers '
                         '(gsa_jax.bench.vit).')
_TRAIN_BREAKDOWN = flags.DEFINE_bool('train_breakdown', False, 'Also the training step part by part (forward and '
                                     'backward of each part compiled alone; minutes per size on a CPU).')
_QUICK = flags.DEFINE_bool('quick', False, 'Few repeats, batch 1 only, training batch 1, short sweeps.')


def load_config_file(path: str) -> Any:
  spec = importlib.util.spec_from_file_location('bench_config_module', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _ints(values: Sequence[str]) -> list[int]:
  return [int(v) for v in values if str(v).strip()]


def _model_sweeps(specs: Sequence[str], config: Any, quick: bool) -> dict[str, list[int]]:
  available = runner.registry.build(config).bench_sweeps()
  out = {}
  for spec in specs:
    name, _, values = spec.partition('=')
    if name in available:
      out[name] = _ints(values.split(','))[:2 if quick else None]
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  config = _CONFIG.value
  quick = _QUICK.value
  demo = load_config_file(_DEMO_CONFIG.value) if _DEMO_CONFIG.value else None
  repeats, warmup = (2, 1) if quick else (_REPEATS.value, _WARMUP.value)
  batches = [1] if quick else _ints(_BATCHES.value)
  train_batch = min(_TRAIN_BATCH.value, 1) if quick else _TRAIN_BATCH.value
  cut = (lambda v: v[:2]) if quick else (lambda v: v)
  sweep_kwargs = dict(base_size=_SWEEP_SIZE.value, sizes=cut(_ints(_SWEEP_SIZES.value)),
                      refs=cut(_ints(_SWEEP_REFS.value)), batches=cut(_ints(_SWEEP_BATCHES.value)),
                      model_sweeps=_model_sweeps(_SWEEP_MODEL.value, config, quick))
  log = lambda msg: logging.info('%s', msg)
  if _VIT.value:
    from gsa_jax.bench import vit as vit_bench  # pylint: disable=g-import-not-at-top
    report = vit_bench.run(repeats=repeats, warmup=warmup, log=log)
    with open(_OUT.value, 'w') as f:
      json.dump(report, f, indent=1, default=str)
    logging.info('wrote %s\n%s', _OUT.value, vit_bench.table(report))
    return
  if _PREDICT_FPS.value:
    runs = ([(demo, demo.data.image_size)] if demo is not None else []) + [(config, s) for s in _ints(_SIZES.value)]
    report = dict(env=timing.environment(), predict=[])
    for c, size in runs:
      log(f'predict path: {c.model.name} at {size}')
      report['predict'].append(runner.bench_predict_path(c, image_size=size, batch_size=_PREDICT_BATCH.value,
                                                         num_frames=2 * _PREDICT_BATCH.value, repeats=repeats,
                                                         warmup=warmup))
      with open(_OUT.value, 'w') as f:
        json.dump(report, f, indent=1, default=str)
    logging.info('%s', json.dumps(report['predict'], indent=1))
    return
  report = runner.run_all(config, demo_config=demo, sizes=_ints(_SIZES.value), batches=batches, train_batch=train_batch,
                   breakdown_batches=_ints(_BREAKDOWN_BATCHES.value), repeats=repeats, warmup=warmup, quick=quick,
                   sweeps=_SWEEPS.value, sweep_kwargs=sweep_kwargs, full_max_batch=_FULL_MAX_BATCH.value,
                   out=_OUT.value, log=log, train_sizes=_ints(_TRAIN_SIZES.value),
                   breakdown_sizes=_ints(_BREAKDOWN_SIZES.value), peak_highest=_PEAK_HIGHEST.value,
                   flops=_FLOPS.value, timings=_TIMINGS.value, train_breakdown=_TRAIN_BREAKDOWN.value)
  logging.info('wrote %s', _OUT.value)
  if not _TIMINGS.value:
    return
  if report.get('sweeps') or any(r.get('breakdown') for r in report['results']):
    plot = _PLOT.value or os.path.splitext(_OUT.value)[0] + '.png'
    report_lib.plot_sweeps(report.get('sweeps') or {}, report['results'], plot,
                           title=f'{config.model.name} on {report["env"]["device_kind"]}')
    logging.info('wrote %s', plot)
  logging.info('\n%s', report_lib.summary_table(report))


if __name__ == '__main__':
  app.run(main)
