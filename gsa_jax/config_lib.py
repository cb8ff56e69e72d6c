"""Validation of a whole config: unknown keys, then every section by its owner.

  validate(config, roles=('train', 'val'), training=True)   raises ConfigError listing every problem

Owners: the model family (config.model, gsa_jax.registry), input_pipeline.data_sources (config.data, for the
dataset roles the run reads), gsa_jax.optim (config.train, when training) and gsa_jax.evaluation (config.eval).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from gsa_jax import errors
from gsa_jax import evaluation
from gsa_jax import optim
from gsa_jax import registry
from input_pipeline import data_sources


def unknown_keys(config: Any, reference: Any, prefix: str = '') -> list[str]:
  """Keys of `config` that `reference` (the defaults) does not have, each with the valid keys there."""
  problems = []
  for key in config.keys():
    name = f'{prefix}{key}'
    if key not in reference:
      valid = ', '.join(sorted(reference.keys()))
      problems.append(f'unknown config key {name!r}; valid keys{" under " + prefix[:-1] if prefix else ""}: '
                      f'{valid}')
      continue
    value, ref = config[key], reference[key]
    if isinstance(ref, ml_collections.ConfigDict) and isinstance(value, (ml_collections.ConfigDict, Mapping)):
      if not isinstance(value, ml_collections.ConfigDict):
        value = ml_collections.ConfigDict(dict(value))
      problems += unknown_keys(value, ref, name + '.')
  return problems


def validate(config: ml_collections.ConfigDict, *, roles: Sequence[str] = ('train', 'val'),
             training: bool = True) -> None:
  """Raises ConfigError listing every unknown key and invalid value of `config`."""
  from configs import defaults  # pylint: disable=g-import-not-at-top
  if 'model' not in config or 'name' not in config.model:
    raise errors.ConfigError('The config has no model.name; start it from configs/defaults.get_config(<model>) '
                             f'(registered models: {", ".join(registry.names())}).')
  family = registry.get(config.model.name)
  problems = unknown_keys(config, defaults.get_config(config.model.name))
  problems += family.check_config(config)
  problems += data_sources.check_data_config(config.data, roles)
  if training:
    problems += optim.check_train_config(config.train)
  problems += evaluation.check_eval_config(config.eval, family.output_kind_for(config))
  if problems:
    raise errors.ConfigError('Invalid config:\n  ' + '\n  '.join(problems))
