"""Checkpoints: the orbax manager of a workdir, resuming, picking the best, and initialising from
another checkpoint (stage-1 model, converted backbone or converted full model).

Layout of a training workdir:
  <workdir>/checkpoints/<step>/state   orbax StandardSave of {'step', 'params', 'batch_stats', 'opt_state'}
  <workdir>/checkpoints/<step>/meta    JSON: step, kind, model config, full config, validation scores
Orbax writes a step into a temporary folder and renames it when complete, so a run killed mid-save
leaves the previous steps intact; the unfinished folder is ignored (and cleaned up) on the next start.
Kept: the last `train.keep_checkpoints` steps AND the step with the best validation G (a preservation
policy: LatestN OR BestN(G)).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from absl import logging
from flax import traverse_util
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

CHECKPOINT_SUBDIR = 'checkpoints'
STATE_ITEM = 'state'
META_ITEM = 'meta'
BEST_METRIC = 'G'
# Model config fields that decide parameter shapes: a resumed checkpoint must agree on them.
SHAPE_FIELDS = ('kind', 'backbone', 'dim', 'num_slots', 'num_clusters')


class CheckpointError(ValueError):
  """A checkpoint that cannot be used for what was asked (wrong model, missing, unreadable)."""


# ------------------------------------------------------------------------------------------------
# The manager of a workdir.


def checkpoint_directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def create_manager(directory: str, *, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  """An orbax CheckpointManager over `directory` keeping the last `keep` steps and the best val G."""
  if keep < 1:
    raise ValueError(f'train.keep_checkpoints must be >= 1; got {keep}.')
  policy = ocp_managers.AnyPreservationPolicy([
      ocp_managers.LatestN(n=keep),
      ocp_managers.BestN(get_metric_fn=lambda m: float(m[BEST_METRIC]), reverse=False, n=1,
                         keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      # Synchronous saves: the state is donated to the next step, and small checkpoints gain little.
      enable_async_checkpointing=False,
      cleanup_tmp_directories=not read_only,
      create=not read_only,
      read_only=read_only,
  )
  handlers = {STATE_ITEM: ocp.StandardCheckpointHandler(), META_ITEM: ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: Mapping[str, Any], meta: Mapping[str, Any],
         *, val_metrics: Mapping[str, float] | None = None) -> None:
  """Saves `state` (a pytree of arrays) and `meta` (JSON) as `step`; `val_metrics` ranks the best."""
  meta = dict(meta, step=int(step), val=dict(val_metrics) if val_metrics else None)
  metrics = None
  if val_metrics and val_metrics.get(BEST_METRIC) is not None and np.isfinite(val_metrics[BEST_METRIC]):
    metrics = {BEST_METRIC: float(val_metrics[BEST_METRIC])}
  manager.save(int(step), args=ocp.args.Composite(**{
      STATE_ITEM: ocp.args.StandardSave(dict(state)),
      META_ITEM: ocp.args.JsonSave(_jsonable(meta)),
  }), metrics=metrics, force=True)
  manager.wait_until_finished()


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  restored = manager.restore(step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))
  return dict(restored[META_ITEM])


def best_step(manager: ocp.CheckpointManager) -> int | None:
  """The saved step with the highest validation G; the latest step when none was validated."""
  best, best_value = None, -np.inf
  for step in manager.all_steps():
    val = read_meta(manager, step).get('val') or {}
    value = val.get(BEST_METRIC)
    if value is not None and np.isfinite(value) and value > best_value:
      best, best_value = step, value
  return best if best is not None else manager.latest_step()


def state_metadata(manager: ocp.CheckpointManager, step: int) -> Any:
  """The saved state's tree of array metadata (shape, dtype)."""
  item = manager.item_metadata(step)[STATE_ITEM]
  return getattr(item, 'tree', item)


def _path_name(path) -> str:
  parts = []
  for entry in path:
    for attr in ('key', 'idx', 'name'):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return '/'.join(parts)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'a/b/0/c' → shape, for a pytree of arrays, ShapeDtypeStructs or orbax array metadata."""
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))
  return {_path_name(k): tuple(v.shape) for k, v in leaves if hasattr(v, 'shape')}


def check_compatible(saved_tree: Any, abstract_state: Any, *, where: str, saved_meta: Mapping[str, Any],
                     model_config: ml_collections.ConfigDict) -> None:
  """Raises CheckpointError naming the differences when a saved state does not fit `abstract_state`."""
  saved = _shapes(saved_tree)
  wanted = _shapes(abstract_state)
  problems = []
  for name in sorted(set(saved) & set(wanted)):
    if saved[name] != wanted[name] and len(problems) < 10:
      problems.append(f'shape of {name}: checkpoint {saved[name]} vs model {wanted[name]}')
  for name in sorted(set(wanted) - set(saved))[:5]:
    problems.append(f'missing in the checkpoint: {name} {wanted[name]}')
  for name in sorted(set(saved) - set(wanted))[:5]:
    problems.append(f'not in this model: {name} {saved[name]}')
  if not problems:
    return
  saved_model = (saved_meta or {}).get('model') or {}
  saved_desc = ', '.join(f'{k}={saved_model.get(k)!r}' for k in SHAPE_FIELDS if k in saved_model)
  this_desc = ', '.join(f'{k}={model_config.get(k)!r}' for k in SHAPE_FIELDS if k in model_config)
  raise CheckpointError(
      f'The checkpoint {where} holds a different model ({saved_desc or "unknown config"}) from the one '
      f'configured ({this_desc}):\n  ' + '\n  '.join(problems) +
      '\nUse another --workdir for this model, or the config the checkpoint was trained with. '
      '(To start from a checkpoint of another model, use --config.train.init_from instead.)')


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any, *,
                  model_config: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any]]:
  """Restores `step` into the shapes/dtypes/shardings of `abstract_state`; returns (state, meta)."""
  meta = read_meta(manager, step)
  check_compatible(state_metadata(manager, step), abstract_state, where=f'{manager.directory}/{step}',
                   saved_meta=meta, model_config=model_config)
  restored = manager.restore(step, args=ocp.args.Composite(**{
      STATE_ITEM: ocp.args.StandardRestore(abstract_state)}))
  return restored[STATE_ITEM], meta


def restore_untyped(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """Restores a step's state as numpy arrays, with the shapes it was saved with (no target model)."""
  device = jax.local_devices()[0]
  tree = state_metadata(manager, step)
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=jax.sharding.SingleDeviceSharding(device)),
      tree, is_leaf=lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype'))
  restored = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract)}))
  return jax.tree.map(np.asarray, restored[STATE_ITEM])


def resolve(path: str) -> tuple[str, int | None]:
  """Finds the manager directory and step of `path`: a workdir, its checkpoints/ folder, or one step.

  Returns (manager directory, step or None for "pick the best").
  """
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f'Checkpoint path {path} does not exist.')
  if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)):
    return os.path.join(path, CHECKPOINT_SUBDIR), None
  if os.path.isdir(os.path.join(path, STATE_ITEM)) and re.fullmatch(r'\d+', os.path.basename(path)):
    return os.path.dirname(path), int(os.path.basename(path))
  if any(re.fullmatch(r'\d+', n) and os.path.isdir(os.path.join(path, n, STATE_ITEM)) for n in os.listdir(path)):
    return path, None
  raise CheckpointError(
      f'{path} is not a training checkpoint: expected a workdir with {CHECKPOINT_SUBDIR}/, a '
      f'{CHECKPOINT_SUBDIR}/ folder with numbered steps, or one step folder <step>/{STATE_ITEM}.')


def load_variables(path: str, *, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads {'params', 'batch_stats'} (numpy) and the meta of a training checkpoint.

  `path` is a workdir, its checkpoints/ folder or one step folder; with no step given, the best
  validated step (else the latest) is used. meta['config'] holds the training config as a dict.
  """
  directory, path_step = resolve(path)
  manager = create_manager(directory, read_only=True)
  step = path_step if step is None else step
  if step is None:
    step = best_step(manager)
  if step is None:
    raise CheckpointError(f'No complete checkpoint in {directory}.')
  if step not in manager.all_steps():
    raise CheckpointError(f'Step {step} is not in {directory}; saved steps: {manager.all_steps()}.')
  state = restore_untyped(manager, step)
  meta = read_meta(manager, step)
  meta['checkpoint'] = os.path.join(directory, str(step))
  return {'params': state['params'], 'batch_stats': state.get('batch_stats') or {}}, meta


# ------------------------------------------------------------------------------------------------
# Initialising from another checkpoint (train.init_from).


def _flatten(tree: Mapping[str, Any] | None) -> dict[tuple[str, ...], Any]:
  if not tree:
    return {}
  return traverse_util.flatten_dict(_to_dict(tree))


def _to_dict(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {str(k): _to_dict(v) for k, v in tree.items()}
  return tree


def _is_mffm_branch(path: tuple[str, ...]) -> bool:
  return bool(re.fullmatch(r'(rgb|flow)_mffm\d+', path[0])) and any(p.startswith('branch') for p in path[1:])


def _subtree(path: tuple[str, ...]) -> str:
  """The subtree a leaf is reported under: the top-level module, plus the MFFM branch if any."""
  if re.fullmatch(r'(rgb|flow)_mffm\d+', path[0]) and len(path) > 2:
    return '/'.join(path[:2])
  return path[0]


def transfer_variables(target: Mapping[str, Any], source: Mapping[str, Any], *, scope: str,
                       transfer_mffm_branches: bool = True) -> tuple[dict[str, Any], list[str]]:
  """Copies matching arrays of `source` into `target` (both {'params': ..., 'batch_stats': ...}).

  scope='model': names map one to one. When the source has an RGB stream but no flow stream (the
  stage-1 SaliencyNet), every rgb_* subtree is also copied into the flow_* subtree of the same name, so
  the flow stream starts as a copy of the RGB weights (official). `transfer_mffm_branches=False` then
  drops the MFFM branch weights, as the official checkpoint loader does through its key mismatch.
  scope='backbone': the source is one backbone, copied into rgb_encoder and flow_encoder.
  Arrays whose shapes differ are skipped. Returns (new target, report lines naming every transferred,
  skipped and untouched subtree).
  """
  if scope not in ('model', 'backbone'):
    raise CheckpointError(f"Unknown init scope {scope!r}; expected 'model' or 'backbone'.")
  report: list[str] = []
  result = {}
  copied: dict[str, set[str]] = {}  # source subtree -> target subtrees
  skipped: dict[str, str] = {}  # subtree -> reason
  touched: set[tuple[str, tuple[str, ...]]] = set()
  all_target_subtrees = set()
  for collection in sorted(set(target) | set(source)):
    tgt = _flatten(target.get(collection))
    src = _flatten(source.get(collection))
    all_target_subtrees |= {_subtree(k) for k in tgt}
    if scope == 'backbone':
      pairs = [(k, (enc,) + k) for k in src for enc in ('rgb_encoder', 'flow_encoder')]
      src_name = lambda k: 'backbone/' + (k[0] if k else '')
    else:
      tops = {k[0] for k in src}
      copy_to_flow = any(t.startswith('rgb_') for t in tops) and not any(t.startswith('flow_') for t in tops)
      pairs = []
      for k in src:
        pairs.append((k, k))
        if copy_to_flow and k[0].startswith('rgb_'):
          pairs.append((k, ('flow_' + k[0][len('rgb_'):],) + k[1:]))
      src_name = _subtree
    new = dict(tgt)
    for sk, tk in pairs:
      value = src[sk]
      name = src_name(sk)
      if scope == 'model' and not transfer_mffm_branches and _is_mffm_branch(tk) and copy_to_flow:
        skipped[_subtree(tk)] = 'MFFM branch dropped (train.transfer_mffm_branches=False, the official key mismatch)'
        continue
      if tk not in tgt:
        skipped.setdefault(name if scope == 'backbone' else _subtree(sk),
                           f'not in this model ({collection}/{"/".join(tk)})')
        continue
      if tuple(np.shape(value)) != tuple(tgt[tk].shape):
        skipped[f'{collection}/{"/".join(tk)}'] = (f'shape mismatch: source {tuple(np.shape(value))} vs '
                                                   f'model {tuple(tgt[tk].shape)}')
        continue
      new[tk] = np.asarray(value).astype(tgt[tk].dtype)
      copied.setdefault(name if scope == 'model' else 'backbone', set()).add(_subtree(tk))
      touched.add((collection, tk))
    result[collection] = traverse_util.unflatten_dict(new) if new else {}
    # Targets of this collection never written.
  for name in sorted(copied):
    report.append(f'transferred {name} -> {", ".join(sorted(copied[name]))}')
  for name in sorted(skipped):
    report.append(f'skipped {name}: {skipped[name]}')
  written = {_subtree(tk) for _, tk in touched}
  fresh = sorted(all_target_subtrees - written)
  if fresh:
    report.append('left at their initial values: ' + ', '.join(fresh))
  if not touched:
    raise CheckpointError('init_from transferred nothing: no array name and shape of the source matches the '
                          'model. ' + ' '.join(report))
  return result, report


def load_init_source(path: str) -> tuple[dict[str, Any], str, str]:
  """Reads an init_from source: a training checkpoint (workdir or step) or a converted checkpoint.

  Returns (variables {'params', 'batch_stats'} as numpy, scope 'model'|'backbone', description).
  """
  if not os.path.exists(path):
    raise CheckpointError(f'train.init_from: {path} does not exist.')
  if os.path.isfile(os.path.join(path, 'meta.json')) and os.path.isdir(os.path.join(path, 'variables')):
    from gsa_jax import convert  # pylint: disable=g-import-not-at-top
    meta, variables = convert.load_converted(path)
    scope = meta.get('scope', 'model')
    desc = f'converted {meta.get("kind")} checkpoint ({scope} scope, {meta.get("backbone")}) {path}'
    variables = jax.tree.map(np.asarray, dict(variables))
    return variables, scope, desc
  variables, meta = load_variables(path)
  kind = meta.get('kind') or (meta.get('model') or {}).get('kind')
  return variables, 'model', f'{kind} training checkpoint {meta["checkpoint"]}'


def _jsonable(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    return _jsonable(value.to_dict())
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not np.isfinite(value):
    return None
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return _jsonable(config)


def dump_json(obj: Any) -> str:
  return json.dumps(_jsonable(obj), indent=2)


def log_lines(title: str, lines: list[str]) -> None:
  logging.info('%s', title)
  for line in lines:
    logging.info('  %s', line)
