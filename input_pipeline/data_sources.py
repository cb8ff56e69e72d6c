"""The data section of a config: its validation, and the synthetic data made on first use.

  check_data_config(data, roles) -> problems   values and dataset folders of the roles a run reads
  prepare_data_roots(config, workdir, roles)   a copy whose synthetic sets point at a generated folder;
                                               the validation set (data.val) is listed and checked too
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from absl import logging
import ml_collections

from input_pipeline import datasets
from input_pipeline import pipeline

SYNTHETIC = ('synthetic', 'synthetic_images')
SYNTHETIC_MULTI = 'synthetic_multi'  # multi-object synthetic videos (input_pipeline.synthetic_multi)
CHECKS = ('first', 'all', 'none')


def check_data_config(d: ml_collections.ConfigDict, roles: Sequence[str]) -> list[str]:
  """Problems of the data section for a run that reads `roles` ('train', 'val', 'test'); [] when valid."""
  problems = []

  def need(ok: bool, message: str) -> None:
    if not ok:
      problems.append(message)

  need(d.num_refs >= 1, f'data.num_refs (N_R)={d.num_refs}; must be >= 1')
  need(d.image_size > 0 and d.image_size % 32 == 0,
       f'data.image_size={d.image_size}; must be a positive multiple of 32 (the backbone stride)')
  bad_sizes = [s for s in d.multiscale_sizes if s <= 0 or s % 32]
  need(not bad_sizes, f'data.multiscale_sizes has {bad_sizes}; every size must be a positive multiple of 32')
  need(d.test_reference_rule in pipeline.REFERENCE_RULES,
       f'data.test_reference_rule={d.test_reference_rule!r}; valid: {pipeline.REFERENCE_RULES}')
  need(d.check in CHECKS, f'data.check={d.check!r}; valid: {CHECKS}')
  from input_pipeline import clips  # pylint: disable=g-import-not-at-top
  problems += clips.clip_config_problems(d)
  need(d.crop_border >= 0, f'data.crop_border={d.crop_border}; must be >= 0')
  need(0 <= d.crop_border_fraction < 0.5, f'data.crop_border_fraction={d.crop_border_fraction}; must be in [0, 0.5)')
  need(0 <= d.rotation_prob <= 1, f'data.rotation_prob={d.rotation_prob}; must be in [0, 1]')
  need(d.num_parallel_calls == -1 or d.num_parallel_calls >= 1,
       f'data.num_parallel_calls={d.num_parallel_calls}; use -1 (AUTOTUNE) or >= 1')
  need(d.prefetch >= 0, f'data.prefetch={d.prefetch}; must be >= 0 (0 = AUTOTUNE)')
  from input_pipeline import clips  # pylint: disable=g-import-not-at-top
  known = set(datasets.VIDEO_DATASETS) | set(datasets.IMAGE_DATASETS) | set(clips.CLIP_DATASETS)
  for role in roles:
    name, root = d[role], d[f'{role}_root']
    if not name:
      continue
    if name not in known:
      problems.append(f'data.{role}={name!r}; valid data sets: {sorted(known)}')
    elif root and not os.path.exists(root):
      problems.append(f'data.{role}_root={root!r}: the path does not exist (dataset {name!r})')
    elif not root and name not in SYNTHETIC + (SYNTHETIC_MULTI,):
      problems.append(f'data.{role}={name!r} needs data.{role}_root (the dataset folder)')
  if 'train' in roles and d.train_sub:
    if not d.train_sub_root:
      problems.append(f'data.train_sub={d.train_sub!r} needs data.train_sub_root (the dataset folder)')
    elif not os.path.exists(d.train_sub_root):
      problems.append(f'data.train_sub_root={d.train_sub_root!r}: the path does not exist')
  return problems


def prepare_data_roots(config: ml_collections.ConfigDict, workdir: str,
                       roles: Sequence[str] = ('train', 'val', 'test')) -> ml_collections.ConfigDict:
  """A copy of `config` whose synthetic datasets point at a generated folder.

  A synthetic dataset with no root uses data.synthetic_root, or <workdir>/data/synthetic, generated there
  by process 0 when it does not exist yet (or was made with other settings). With 'val' in `roles`, the
  validation videos are then checked (data.check), so that a bad file fails before training starts
  rather than at the first validation; the training data is checked when its input is built, the test
  data when evaluation lists it.
  """
  config = _prepare_roots(config, workdir, roles)
  d = config.data
  if 'val' in roles and d.val in datasets.VIDEO_DATASETS:
    datasets.list_videos(d.val, d.val_root, 'val', check=d.check)
  return config


def _prepare_roots(config: ml_collections.ConfigDict, workdir: str,
                   roles: Sequence[str]) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())  # An unlocked copy.
  d = config.data
  multi = [r for r in roles if d[r] == SYNTHETIC_MULTI and not d[f'{r}_root']]
  if multi:
    root = os.path.abspath(os.path.join(workdir, 'data', SYNTHETIC_MULTI))
    ensure_synthetic_multi(d.synthetic_multi, root)
    for role in multi:
      d[f'{role}_root'] = root
  needed = [r for r in roles if d[r] in SYNTHETIC and not d[f'{r}_root']]
  if not needed:
    return config
  root = os.path.abspath(d.synthetic_root or os.path.join(workdir, 'data', 'synthetic'))
  ensure_synthetic(d.synthetic, root)
  for role in needed:
    d[f'{role}_root'] = root
  return config


def ensure_synthetic(synthetic_config: Any, root: str) -> None:
  """Generates the synthetic set into `root` unless it is already complete (process 0 writes)."""
  import jax  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  # The generator writes atomically; its manifest exists only in a complete set.
  manifest = os.path.join(root, synthetic.MANIFEST)
  if jax.process_index() == 0 and not _synthetic_matches(manifest, synthetic_config):
    logging.info('Generating the synthetic dataset into %s', root)
    start = time.time()
    synthetic.generate_from_config(synthetic_config, root)
    logging.info('Synthetic dataset generated in %.1f s', time.time() - start)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('synthetic data ready')


def ensure_synthetic_multi(settings: Any, root: str) -> None:
  """Generates the multi-object synthetic set into `root` unless it holds one made with these settings."""
  import jax  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic_multi  # pylint: disable=g-import-not-at-top
  wanted = dict(settings.to_dict() if hasattr(settings, 'to_dict') else settings)
  manifest = os.path.join(root, synthetic_multi.MANIFEST)
  same = False
  if os.path.exists(manifest):
    with open(manifest) as f:
      saved = json.load(f).get('settings', {})
    same = all(json.loads(json.dumps(saved.get(k))) == json.loads(json.dumps(v)) for k, v in wanted.items())
  if jax.process_index() == 0 and not same:
    logging.info('Generating the multi-object synthetic dataset into %s', root)
    synthetic_multi.generate(root, **wanted)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('synthetic_multi data ready')


def _synthetic_matches(manifest: str, synthetic_config: Any) -> bool:
  """True when `manifest` exists and was written with these generator settings."""
  if not os.path.exists(manifest):
    return False
  with open(manifest) as f:
    saved = json.load(f).get('settings', {})
  wanted = dict(synthetic_config.to_dict() if hasattr(synthetic_config, 'to_dict') else synthetic_config)
  return all(saved.get(k) == v for k, v in wanted.items())
