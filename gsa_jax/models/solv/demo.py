"""The SOLV demo: multi-object synthetic videos -> untrained score -> self-supervised training -> trained score.

  run_demo(workdir, config)   (python main.py --mode=demo --config=configs/solv_demo.py --workdir=DIR)

Steps: generate the multi-object synthetic set (data.test / data.train 'synthetic_multi', into
<workdir>/data/synthetic_multi unless its root is given), score the model at its initial weights on the
held-out 'val' videos, train the config in <workdir> (the shared trainer; resumes if interrupted), score
the trained model the same way, and write <workdir>/eval/test/solv_results.json (both scores, correct and
released FG-ARI / mIoU, frames per second) and overlay strips of the first videos to
<workdir>/eval/test/overlays/.
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import numpy as np

from gsa_jax import config_lib
from gsa_jax import files
from gsa_jax import registry
from gsa_jax import train
from gsa_jax import visualize
from gsa_jax.models.solv import evaluate as evaluate_lib
from input_pipeline import data_sources
from input_pipeline import instances

RESULTS = 'solv_results.json'


def _figures(scores: dict[str, Any]) -> dict[str, float]:
  return {'FG-ARI': scores['correct']['FG-ARI'], 'mIoU': scores['correct']['mIoU'],
          'FG-ARI (released metric)': scores['solv_released']['FG-ARI'],
          'mIoU (released metric)': scores['solv_released']['mIoU'],
          'frames_per_second': scores['frames_per_second']}


def _overlays(out_dir: str, records, predictions, count: int = 2) -> None:
  for record in records[:count]:
    inputs, cropped, masks, _ = evaluate_lib.read_video(record, (8, 8))
    del inputs
    rows = []
    for i in range(0, len(cropped), max(1, len(cropped) // 4))[:4]:
      name = record.frame_names[i]
      ids = predictions[record.name][name]
      row = [cropped[i], instances.overlay(cropped[i], ids + 1, background=-1)]
      if name in masks:
        row.append(instances.colourise(masks[name]))
      rows.append(np.concatenate(row, axis=1))
    visualize.save_png(os.path.join(out_dir, 'overlays', f'{record.name}.png'), visualize.stack_rows(rows))


def run_demo(workdir: str, config) -> dict[str, Any]:
  """Runs the demo (module doc); returns {'untrained': figures, 'trained': figures, 'timings'}."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  timings: dict[str, float] = {}
  start = time.time()
  config_lib.validate(config, roles=('train', 'test'), training=True)
  config = data_sources.prepare_data_roots(config, workdir, roles=('train', 'test'))
  records = instances.list_davis17(config.data.test_root, 'val')
  model = registry.build(config)
  timings['data'] = time.time() - start

  t0 = time.time()
  untrained = evaluate_lib.score_records(model, train.init_variables(model, int(config.seed)), records)
  timings['evaluate_untrained'] = time.time() - t0
  logging.info('demo: untrained %s', _figures(untrained))

  t0 = time.time()
  out = train.train_and_evaluate(config, workdir)
  timings['train'] = time.time() - t0
  losses = out['loss_history']

  t0 = time.time()
  trained = evaluate_lib.score_records(model, {'params': out['params']}, records)
  timings['evaluate'] = time.time() - t0
  timings['total'] = time.time() - start

  out_dir = os.path.join(workdir, 'eval', 'test')
  os.makedirs(out_dir, exist_ok=True)
  _overlays(out_dir, records, trained['predictions'])
  report = {'untrained': _figures(untrained), 'trained': _figures(trained), 'timings': timings,
            'steps': int(out['step']), 'videos': len(records),
            'loss_first_steps': float(np.mean(losses[:10])) if losses else None,
            'loss_last_steps': float(np.mean(losses[-10:])) if losses else None}
  files.write_json(os.path.join(out_dir, RESULTS), report)
  lines = [f'SOLV demo on {len(records)} held-out synthetic videos ({out["step"]} training steps):']
  for name in ('FG-ARI', 'mIoU', 'FG-ARI (released metric)', 'mIoU (released metric)'):
    lines.append(f'  {name:<26} untrained {report["untrained"][name]:.3f}   trained {report["trained"][name]:.3f}')
  if losses:
    lines.append(f'  reconstruction loss: first 10 steps {report["loss_first_steps"]:.4f}, last 10 '
                 f'{report["loss_last_steps"]:.4f}')
  lines.append(f'  time: data {timings["data"]:.0f} s, train {timings["train"]:.0f} s, evaluate '
               f'{timings["evaluate"]:.0f} s; results {os.path.join(out_dir, RESULTS)}')
  logging.info('%s', '\n'.join(lines))
  print('\n'.join(lines))
  return report
