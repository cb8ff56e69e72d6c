"""The Betrayed-by-Attention demo: multi-object synthetic videos -> untrained scores -> self-supervised
training -> trained scores.

  run_demo(workdir, config)   (python main.py --mode=demo --config=configs/betrayed_demo.py --workdir=DIR)

Steps: generate the multi-object synthetic set (data.train / data.test 'synthetic_multi', into
<workdir>/data/synthetic_multi unless its root is given), score the block at its initial weights on the
held-out 'val' videos under eval.protocol (and FG-ARI / mIoU), train the config in <workdir> (the shared
trainer; resumes if interrupted), score the trained block the same way, and write
<workdir>/eval/test/betrayed_results.json (both scores, the number of clusters, the losses of the first and
last steps) and the overlays of the trained model's first videos to <workdir>/eval/test/overlays/.
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import numpy as np

from gsa_jax import config_lib
from gsa_jax import evaluate
from gsa_jax import files
from gsa_jax import registry
from gsa_jax import train
from input_pipeline import data_sources

RESULTS = 'betrayed_results.json'
_FIGURES = ('G', 'J_mean', 'F_mean', 'FG-ARI', 'mIoU')


def _score(model, variables, config, output_dir: str | None) -> dict[str, Any]:
  """The figures of eval.protocol and of fgari_miou on data.test, with the clusters per video."""
  figures: dict[str, Any] = {}
  for protocol in dict.fromkeys([config.eval.protocol, 'fgari_miou']):
    scoring = config.copy_and_resolve_references()
    scoring.eval.protocol = protocol
    results, extra = evaluate.evaluate_split(model, variables, scoring, split='test', output_dir=output_dir,
                                             num_overlays=2 if output_dir else 0)
    output_dir = None  # masks and overlays once
    figures.update({k: float(v) for k, v in evaluate.summary_figures(results, model.best_metric).items()
                    if k in _FIGURES})
    figures['frames_per_second'] = float(extra['fps'])
  return figures


def run_demo(workdir: str, config) -> dict[str, Any]:
  """Runs the demo (module doc); returns {'untrained': figures, 'trained': figures, 'timings', ...}."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  timings: dict[str, float] = {}
  start = time.time()
  config_lib.validate(config, roles=('train', 'test'), training=True)
  config = data_sources.prepare_data_roots(config, workdir, roles=('train', 'test'))
  model = registry.build(config)
  timings['data'] = time.time() - start

  t0 = time.time()
  untrained = _score(model, train.init_variables(model, int(config.seed)), config, None)
  timings['evaluate_untrained'] = time.time() - t0
  logging.info('demo: untrained %s', untrained)

  t0 = time.time()
  out = train.train_and_evaluate(config, workdir)
  timings['train'] = time.time() - t0
  losses = out['loss_history']

  out_dir = os.path.join(workdir, 'eval', 'test')
  os.makedirs(out_dir, exist_ok=True)
  t0 = time.time()
  trained = _score(model, {'params': out['params']}, config, out_dir)
  timings['evaluate'] = time.time() - t0
  timings['total'] = time.time() - start
  strips = sorted(os.listdir(os.path.join(out_dir, 'overlays'))) if os.path.isdir(
      os.path.join(out_dir, 'overlays')) else []
  report = {'untrained': untrained, 'trained': trained, 'timings': timings, 'steps': int(out['step']),
            'protocol': config.eval.protocol,
            'loss_first_steps': float(np.mean(losses[:10])) if losses else None,
            'loss_last_steps': float(np.mean(losses[-10:])) if losses else None,
            'overlays': strips}
  files.write_json(os.path.join(out_dir, RESULTS), report)
  lines = [f'Betrayed-by-Attention demo on the held-out synthetic videos ({out["step"]} training steps):']
  for name in _FIGURES:
    if name in untrained and name in trained:
      label = 'J&F' if name == 'G' else name
      lines.append(f'  {label:<8} untrained {untrained[name]:.3f}   trained {trained[name]:.3f}')
  if losses:
    lines.append(f'  loss (semantic + motion): first 10 steps {report["loss_first_steps"]:.4f}, last 10 '
                 f'{report["loss_last_steps"]:.4f}')
  lines.append(f'  time: data {timings["data"]:.0f} s, train {timings["train"]:.0f} s, evaluate '
               f'{timings["evaluate"]:.0f} s; results {os.path.join(out_dir, RESULTS)}')
  logging.info('%s', '\n'.join(lines))
  print('\n'.join(lines))
  return report
