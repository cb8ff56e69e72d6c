"""`main.py --mode=summary`: parameter overview of the model a config builds, without computing anything.

Shapes come from `jax.eval_shape(model.init, ...)` at the config's image size and N_R, so even the
full MiT-B2 model costs no FLOPs. Prints clu's parameter overview per top-level module, a table per
part (the grouping of the reference's §3), and as its last line exactly `total_params: N`.
"""

from typing import Any

import jax
import numpy as np
from clu import parameter_overview

from gsa_jax.models.gsanet import network as models

# Parts of the model (reference §3 grouping): name -> predicate on the parameter path.
PARTS: tuple[tuple[str, Any], ...] = (
    ('backbones (rgb_encoder, flow_encoder)', lambda p: p[0].endswith('_encoder')),
    ('MFFM (rgb_mffm1..4, flow_mffm1..4)', lambda p: '_mffm' in p[0]),
    ('slot generators (*_slots/generator)', lambda p: p[0].endswith('_slots') and p[1] == 'generator'),
    ('guided slot attention (*_slots/attention)', lambda p: p[0].endswith('_slots') and p[1] == 'attention'),
    ('slot decoder convs (rgb_fusion, flow_fusion)', lambda p: p[0] in ('rgb_fusion', 'flow_fusion')),
    ('RGB+flow Res (fuse1..4)', lambda p: p[0].startswith('fuse')),
    ('decoder Fusion blocks (decoder/fusion1..3)', lambda p: p[0] == 'decoder' and p[1].startswith('fusion')),
    ('decoder heads (decoder/head1..4)', lambda p: p[0] == 'decoder' and p[1].startswith('head')),
)


def _path(key_path) -> tuple[str, ...]:
  return tuple(getattr(k, 'key', str(k)) for k in key_path)


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def abstract_variables(config) -> tuple[Any, dict[str, Any]]:
  """(model, abstract variables) at the config's test size and number of references, batch 1."""
  model = models.build_model(config.model)
  size = int(config.data.image_size) if 'data' in config else 512
  num_refs = int(config.data.num_refs) if 'data' in config else 4
  inputs = models.example_inputs(model.settings, batch=1, size=size, num_refs=num_refs)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), inputs))
  return model, variables


def part_counts(params) -> dict[str, int]:
  """Parameters per part (PARTS order) plus 'other' for anything no part claims (should be 0)."""
  counts = {name: 0 for name, _ in PARTS}
  counts['other'] = 0
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = _path(key_path) + ('',)
    n = int(np.prod(leaf.shape))
    for name, match in PARTS:
      if match(path):
        counts[name] += n
        break
    else:
      counts['other'] += n
  return counts


def summary_text(config) -> str:
  model, variables = abstract_variables(config)
  params = variables['params']
  lines = [f'Model: {type(model).__name__}, backbone {model.settings.backbone}, dim {model.settings.dim}, '
           f'{model.settings.slots.num_slots} slots, M={model.settings.slots.num_clusters}.']
  for name in params:
    lines.append(f'\n== {name}: {count(params[name]):,} parameters')
    lines.append(parameter_overview.get_parameter_overview(params[name], include_stats=False))
  lines.append('\n== Parameters per part')
  counts = part_counts(params)
  width = max(len(n) for n in counts)
  for name, n in counts.items():
    if name != 'other' or n:
      lines.append(f'{name:<{width}}  {n:>12,}')
  total = count(params)
  lines.append(f'{"total":<{width}}  {total:>12,}')
  stats = count(variables.get('batch_stats', {}))
  lines.append(f'(plus {stats:,} BatchNorm statistics in batch_stats, not parameters)')
  lines.append(f'total_params: {total}')
  return '\n'.join(lines)


def print_summary(config) -> None:
  print(summary_text(config))
