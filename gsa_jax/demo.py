"""The end-to-end CPU demo of a model: synthetic videos -> train -> evaluate -> pictures.

  python main.py --mode=demo --workdir=workdirs/demo [--config=configs/<model>_demo.py]

Steps: generate the synthetic set (into data.synthetic_root or <workdir>/data/synthetic, skipped when already
there), train the config in <workdir> (resumes if interrupted), evaluate the best checkpoint on the held-out
synthetic TEST videos into <workdir>/eval/test/ (results.json, results.csv, the per-sequence chart, masks/,
overlays/), then report the scores once. The default config is GSA-Net's (configs/gsanet_demo.py).
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import ml_collections

from gsa_jax import config_lib
from gsa_jax import evaluate
from gsa_jax import evaluation
from gsa_jax import registry
from gsa_jax import train
from input_pipeline import data_sources


def run_demo(workdir: str, config: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """Runs the demo in `workdir` with `config` (default: configs/gsanet_demo.py); returns the test results."""
  from configs import gsanet_demo  # pylint: disable=g-import-not-at-top
  config = gsanet_demo.get_config() if config is None else config
  family_demo = getattr(registry.get(config.model.name), 'run_demo', None)
  if family_demo is not None:  # a family with its own demo (e.g. SOLV: instance masks, self-supervised)
    return family_demo(workdir, config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  timings = {}
  start = time.time()
  config_lib.validate(config, roles=('train', 'val', 'test'), training=True)
  config = data_sources.prepare_data_roots(config, workdir)
  timings['data'] = time.time() - start
  logging.info('demo: synthetic data in %s (%.1f s)', config.data.train_root, timings['data'])

  t0 = time.time()
  train.train_and_evaluate(config, workdir)
  timings['train'] = time.time() - t0

  t0 = time.time()
  results = evaluate.evaluate_checkpoint(config, workdir, log_results=False)
  timings['evaluate'] = time.time() - t0
  timings['total'] = time.time() - start
  out = os.path.join(workdir, 'eval', 'test')
  logging.info('demo: %s on the held-out synthetic test split (checkpoint %s)\n%s\n'
               'time: data %.0f s, train %.0f s, evaluate %.0f s, total %.0f s\n'
               'results %s, chart %s, overlays %s, masks %s; TensorBoard: tensorboard --logdir %s',
               config.model.name, results['checkpoint'], evaluation.format_table(results), timings['data'],
               timings['train'], timings['evaluate'], timings['total'], os.path.join(out, evaluation.RESULTS_JSON),
               os.path.join(out, evaluation.RESULTS_PLOT), os.path.join(out, 'overlays'),
               os.path.join(out, 'masks'), workdir)
  return dict(results, timings=timings)
