"""`main.py --mode=summary`: the parameters of the model a config builds, without computing anything.

Shapes come from `jax.eval_shape` of the model's init, so even the full MiT-B2 GSA-Net costs no FLOPs.
Prints clu's parameter overview per top-level module, the model's parts table (contract.Model.parts), the
trained and frozen counts, and as its last line exactly `total_params: N`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from clu import parameter_overview

from gsa_jax import config_lib
from gsa_jax import contract
from gsa_jax import registry


def count(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def part_counts(model: contract.Model, params: Any) -> dict[str, int]:
  """Parameters per part (the model's order) plus 'other' for anything no part claims."""
  parts = model.parts()
  counts = {name: 0 for name, _ in parts}
  counts['other'] = 0
  for path, leaf in contract.flatten_params(params).items():
    n = int(np.prod(leaf.shape))
    for name, match in parts:
      if match(tuple(path) + ('',)):
        counts[name] += n
        break
    else:
      counts['other'] += n
  return counts


def summary_text(config) -> str:
  config_lib.validate(config, roles=(), training=False)
  model = registry.build(config)
  variables = model.abstract_variables()
  params = variables['params']
  lines = [model.summary_header()]
  for name in params:
    lines.append(f'\n== {name}: {count(params[name]):,} parameters')
    lines.append(parameter_overview.get_parameter_overview(params[name], include_stats=False))
  counts = part_counts(model, params)
  trainable, frozen = contract.split_trainable(model, params)
  total = count(params)
  if model.parts():
    lines.append('\n== Parameters per part')
    width = max(len(n) for n in counts)
    for name, n in counts.items():
      if name != 'other' or n:
        lines.append(f'{name:<{width}}  {n:>12,}')
    lines.append(f'{"total":<{width}}  {total:>12,}')
  others = {k: count(v) for k, v in variables.items() if k != 'params'}
  for name, n in others.items():
    lines.append(f'(plus {n:,} values in {name}, not parameters)')
  lines.append(f'trained_params: {count(trainable)}')
  lines.append(f'frozen_params: {count(frozen)}')
  lines.append(f'total_params: {total}')
  return '\n'.join(lines)


def print_summary(config) -> None:
  print(summary_text(config))
