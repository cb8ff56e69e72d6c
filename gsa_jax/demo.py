"""The end-to-end CPU demo: synthetic videos -> train -> evaluate -> pictures.

  python main.py --mode=demo --workdir=workdirs/demo

Steps: generate the synthetic set (configs/demo.py, into data.synthetic_root or <workdir>/data/synthetic,
skipped when already there), train configs/demo.py in <workdir> (resumes if interrupted), evaluate the
best checkpoint on the held-out synthetic TEST videos into <workdir>/eval/test/ (results.json,
results.csv, the per-sequence chart, masks/, overlays/), then print J, F and G.
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import ml_collections


def run_demo(workdir: str, config: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """Runs the demo in `workdir` with `config` (default: configs/demo.py); returns the test results."""
  from configs import demo as demo_config  # pylint: disable=g-import-not-at-top
  from gsa_jax import evaluate  # pylint: disable=g-import-not-at-top
  from gsa_jax import train  # pylint: disable=g-import-not-at-top
  config = demo_config.get_config() if config is None else config
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  timings = {}
  start = time.time()
  train.validate_config(config, mode='train')
  config = train.prepare_data_roots(config, workdir)
  timings['data'] = time.time() - start
  print(f'[demo] synthetic data in {config.data.train_root} ({timings["data"]:.1f} s)', flush=True)

  t0 = time.time()
  train.train_and_evaluate(config, workdir)
  timings['train'] = time.time() - t0
  print(f'[demo] training done in {timings["train"]:.1f} s', flush=True)

  t0 = time.time()
  results = evaluate.evaluate_checkpoint(config, workdir)
  timings['evaluate'] = time.time() - t0
  timings['total'] = time.time() - start
  out = os.path.join(workdir, 'eval', 'test')
  lines = [
      f'[demo] held-out synthetic test split, {results["num_sequences"]} videos, {results["num_frames"]} '
      f'scored frames (checkpoint {results["checkpoint"]}):',
      f'[demo]   J {results["J_mean"]:.4f}   F {results["F_mean"]:.4f}   G {results["G"]:.4f}',
      f'[demo] time: data {timings["data"]:.0f} s, train {timings["train"]:.0f} s, evaluate '
      f'{timings["evaluate"]:.0f} s, total {timings["total"]:.0f} s',
      f'[demo] results: {os.path.join(out, "results.json")}, chart: {os.path.join(out, "results_per_sequence.png")}, '
      f'overlays: {os.path.join(out, "overlays")}, masks: {os.path.join(out, "masks")}, '
      f'TensorBoard: tensorboard --logdir {workdir}',
  ]
  for line in lines:
    logging.info('%s', line)
    print(line, flush=True)
  return dict(results, timings=timings)
