"""Checkpoints: one format for trained and converted models, resuming, picking the best, init transfer.

Layout (a training workdir, and also what --mode=convert writes):
  <dir>/checkpoints/<step>/state   orbax StandardSave of {'step', 'params', <collections>, ['opt_state']}
  <dir>/checkpoints/<step>/meta    JSON: step, model (the model section, name included), config (the full
                                   config), val (validation figures), selection (metric and value),
                                   and for converted checkpoints: converted_from, scope ('model' | 'backbone'),
                                   backbone.
A converted model is step 0 without optimiser state, with the config it fits in its meta, so train
(init_from), evaluate and predict read it like a training workdir. A converted backbone (scope 'backbone')
holds one backbone's variables, for train.init_from.
Orbax writes a step into a temporary folder and renames it when complete, so a run killed mid-save leaves
the previous steps intact. Kept: the last `train.keep_checkpoints` steps AND the step with the best
validation figure (a preservation policy: LatestN OR BestN). Inference restores params and the model's
other collections only (not the optimiser moments).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
from flax import traverse_util
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

from gsa_jax import errors
from gsa_jax import files

CHECKPOINT_SUBDIR = 'checkpoints'
STATE_ITEM = 'state'
META_ITEM = 'meta'
SCORE = 'score'  # the name of the ranking metric given to orbax's BestN
NOT_RESTORED_FOR_INFERENCE = ('opt_state', 'step')


class CheckpointError(errors.UserError):
  """A checkpoint that cannot be used for what was asked (wrong model, missing, unreadable)."""


# ------------------------------------------------------------------------------------------------
# The manager of a checkpoint directory.


def checkpoint_directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def create_manager(directory: str, *, keep: int = 3, read_only: bool = False,
                   partial: bool = False) -> ocp.CheckpointManager:
  """An orbax CheckpointManager over `directory` keeping the last `keep` steps and the best score.

  `partial` (read only) registers the state as a generic PyTree so that a subset can be restored.
  """
  if keep < 1:
    raise ValueError(f'train.keep_checkpoints must be >= 1; got {keep}.')
  policy = ocp_managers.AnyPreservationPolicy([
      ocp_managers.LatestN(n=keep),
      ocp_managers.BestN(get_metric_fn=lambda m: float(m[SCORE]), reverse=False, n=1,
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
  state_handler = ocp.PyTreeCheckpointHandler() if partial else ocp.StandardCheckpointHandler()
  handlers = {STATE_ITEM: state_handler, META_ITEM: ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: Mapping[str, Any], meta: Mapping[str, Any], *,
         val_metrics: Mapping[str, float] | None = None, best_metric: str = 'G') -> None:
  """Saves `state` and `meta` as `step`; val_metrics[best_metric] ranks the best. Never replaces a step."""
  if step in manager.all_steps():
    raise CheckpointError(f'Step {step} already exists in {manager.directory}; refusing to overwrite it.')
  meta = dict(meta, step=int(step), val=dict(val_metrics) if val_metrics else None)
  metrics = None
  value = (val_metrics or {}).get(best_metric)
  if value is not None and np.isfinite(value):
    metrics = {SCORE: float(value)}
    meta['selection'] = {'metric': best_metric, 'value': float(value)}
  manager.save(int(step), args=ocp.args.Composite(**{
      STATE_ITEM: ocp.args.StandardSave(dict(state)),
      META_ITEM: ocp.args.JsonSave(files.jsonable(meta)),
  }), metrics=metrics)
  manager.wait_until_finished()


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'The metadata of {manager.directory}/{step} cannot be read ({type(e).__name__}: '
                          f'{str(e)[:200]}); the step is damaged: delete {manager.directory}/{step}.') from e
  return dict(restored[META_ITEM])


def _score(meta: Mapping[str, Any]) -> float | None:
  selection = meta.get('selection') or {}
  value = selection.get('value')
  if value is None:  # checkpoints written before `selection` existed rank by validation G
    value = (meta.get('val') or {}).get('G')
  return value if value is not None and np.isfinite(value) else None


def best_step(manager: ocp.CheckpointManager) -> int | None:
  """The readable step with the best validation score; the latest readable step when none was scored.

  A step whose metadata cannot be read is skipped with a warning that names it.
  """
  best, best_value, readable = None, -np.inf, []
  for step in manager.all_steps():
    try:
      meta = read_meta(manager, step)
    except CheckpointError as e:
      logging.warning('Skipping checkpoint step %d: %s', step, e)
      continue
    readable.append(step)
    value = _score(meta)
    if value is not None and value > best_value:
      best, best_value = step, value
  if best is not None:
    return best
  return max(readable) if readable else None


def state_metadata(manager: ocp.CheckpointManager, step: int) -> Any:
  """The saved state's tree of array metadata (shape, dtype)."""
  item = manager.item_metadata(step)[STATE_ITEM]
  return getattr(item, 'tree', item)


def path_name(path) -> str:
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
  """'a/b/0/c' -> shape, for a pytree of arrays, ShapeDtypeStructs or orbax array metadata."""
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))
  return {path_name(k): tuple(v.shape) for k, v in leaves if hasattr(v, 'shape')}


def _model_differences(saved_model: Mapping[str, Any] | None, model: Mapping[str, Any]) -> list[str]:
  saved_model = dict(saved_model or {})
  return [f'{k}: checkpoint {saved_model[k]!r}, config {v!r}' for k, v in model.items()
          if k in saved_model and files.jsonable(saved_model[k]) != files.jsonable(v)]


def check_compatible(saved_tree: Any, abstract: Any, *, where: str, saved_meta: Mapping[str, Any],
                     model_config: Any, fix: str | None = None) -> None:
  """Raises CheckpointError naming the differences when a saved tree does not fit `abstract`."""
  saved, wanted = _shapes(saved_tree), _shapes(abstract)
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
  model = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
  differ = _model_differences((saved_meta or {}).get('model'), model)
  desc = ('; the model configs differ in ' + '; '.join(differ[:8])) if differ else ''
  raise CheckpointError(
      f'The checkpoint {where} holds a different model from the one configured{desc}:\n  ' + '\n  '.join(problems)
      + '\n' + (fix or 'Use the config the checkpoint was trained with (or another --workdir for this model; to '
                'start from a checkpoint of another model, use --config.train.init_from instead).'))


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any, *,
                  model_config: Any) -> tuple[Any, dict[str, Any]]:
  """Restores `step` into the shapes/dtypes/shardings of `abstract_state`; returns (state, meta)."""
  meta = read_meta(manager, step)
  check_compatible(state_metadata(manager, step), abstract_state, where=f'{manager.directory}/{step}',
                   saved_meta=meta, model_config=model_config)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardRestore(abstract_state)}))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'{manager.directory}/{step} cannot be restored ({type(e).__name__}: {str(e)[:300]}). '
                          f'The step is damaged: delete {manager.directory}/{step} to resume from the one '
                          'before.') from e
  return restored[STATE_ITEM], meta


def _restore_for_inference(directory: str, step: int) -> dict[str, Any]:
  """Params and the model's collections of a step, as numpy arrays, without the optimiser state."""
  manager = create_manager(directory, read_only=True, partial=True)
  device = jax.local_devices()[0]
  single = jax.sharding.SingleDeviceSharding(device)
  tree = state_metadata(manager, step)
  wanted = {k: v for k, v in dict(tree).items() if k not in NOT_RESTORED_FOR_INFERENCE}
  is_array = lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype')
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=single), wanted, is_leaf=is_array)
  restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), abstract)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeRestore(
        item=abstract, restore_args=restore_args, partial_restore=True)}))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'{directory}/{step} cannot be restored ({type(e).__name__}: {str(e)[:300]}); the step '
                          f'is damaged. Use another step, or delete {directory}/{step}.') from e
  finally:
    manager.close()
  return jax.tree.map(np.asarray, restored[STATE_ITEM])


def resolve(path: str) -> tuple[str, int | None]:
  """The manager directory and step of `path`: a workdir (or converted model), its checkpoints/ folder,
  or one step folder. Returns (manager directory, step or None for "pick the best")."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f'Checkpoint path {path} does not exist.')
  if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)):
    return os.path.join(path, CHECKPOINT_SUBDIR), None
  if os.path.isdir(os.path.join(path, STATE_ITEM)) and re.fullmatch(r'\d+', os.path.basename(path)):
    return os.path.dirname(path), int(os.path.basename(path))
  if os.path.isdir(path) and any(re.fullmatch(r'\d+', n) and os.path.isdir(os.path.join(path, n, STATE_ITEM))
                                 for n in os.listdir(path)):
    return path, None
  if os.path.isfile(os.path.join(path, 'meta.json')) and os.path.isdir(os.path.join(path, 'variables')):
    raise CheckpointError(f'{path} was converted by an older gsa-jax (variables/ + meta.json). Convert the source '
                          'weights again with --mode=convert: converted models are now checkpoints like training '
                          'runs.')
  raise CheckpointError(
      f'{path} is not a checkpoint: expected a workdir (or a --mode=convert output) with {CHECKPOINT_SUBDIR}/, a '
      f'{CHECKPOINT_SUBDIR}/ folder with numbered steps, or one step folder <step>/{STATE_ITEM}.')


def load_variables(path: str, *, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads the variables ({'params', collections...}, numpy) and the meta of a checkpoint.

  `path`: a workdir, its checkpoints/ folder, one step folder or a converted model; with no step given, the
  best validated step (else the latest). meta['config'] holds the config the variables were trained with
  (or converted for), meta['checkpoint'] the step folder.
  """
  directory, path_step = resolve(path)
  manager = create_manager(directory, read_only=True)
  try:
    step = path_step if step is None else step
    if step is None:
      step = best_step(manager)
    if step is None:
      raise CheckpointError(f'No complete checkpoint in {directory}.')
    if step not in manager.all_steps():
      raise CheckpointError(f'Step {step} is not in {directory}; saved steps: {manager.all_steps()}.')
    meta = read_meta(manager, step)
  finally:
    manager.close()
  variables = _restore_for_inference(directory, step)
  meta['checkpoint'] = os.path.join(directory, str(step))
  return variables, meta


def save_converted(output_dir: str, variables: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
  """Writes converted variables as step 0 of `output_dir/checkpoints` (see the module docstring)."""
  manager = create_manager(checkpoint_directory(output_dir))
  try:
    state = {'step': np.zeros((), np.int32), **{k: v for k, v in variables.items()}}
    save(manager, 0, jax.tree.map(np.asarray, state), meta)
  finally:
    manager.close()
  return os.path.join(checkpoint_directory(output_dir), '0')


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


def _subtree(path: tuple[str, ...]) -> str:
  """The subtree a leaf is reported under: the top-level module, plus the second level for MFFM-like groups."""
  if re.fullmatch(r'(rgb|flow)_mffm\d+', path[0]) and len(path) > 2:
    return '/'.join(path[:2])
  return path[0]


SkipRule = Callable[[tuple[str, ...], bool], str | None]


def transfer_by_name(target: Mapping[str, Any], source: Mapping[str, Any], *, scope: str,
                     encoders: tuple[str, ...] = ('rgb_encoder', 'flow_encoder'),
                     skip: SkipRule | None = None) -> tuple[dict[str, Any], list[str]]:
  """Copies matching arrays of `source` into `target` (both {'params': ..., collections...}).

  scope='model': names map one to one. When the source has an RGB stream but no flow stream (a stage-1
  RGB-only model), every rgb_* subtree is also copied into the flow_* subtree of the same name, so the flow
  stream starts as a copy of the RGB weights (GSA-Net's and DPA's official rule). `skip(target path,
  from_stage1)` may refuse a leaf with a reason (e.g. GSA-Net's official MFFM key mismatch).
  scope='backbone': the source is one backbone, copied into each of `encoders`.
  Arrays whose shapes differ are skipped. Returns (new target, report lines naming every transferred,
  skipped and untouched subtree); raises CheckpointError when nothing matches.
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
    copy_to_flow = False
    if scope == 'backbone':
      pairs = [(k, (enc,) + k) for k in src for enc in encoders]
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
      reason = skip(tk, copy_to_flow) if (skip and scope == 'model') else None
      if reason:
        skipped[_subtree(tk)] = reason
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


def load_init_source(path: str) -> tuple[dict[str, Any], dict[str, Any], str]:
  """Reads a train.init_from source (a training workdir / step, a converted model or backbone).

  Returns (variables as numpy, meta (with 'scope': 'model' | 'backbone'), a description for the log).
  """
  if not os.path.exists(path):
    raise CheckpointError(f'train.init_from: {path} does not exist.')
  variables, meta = load_variables(path)
  meta.setdefault('scope', 'model')
  model = meta.get('model') or {}
  what = meta.get('converted_from')
  if meta['scope'] == 'backbone':
    desc = f'converted {meta.get("backbone")} backbone {meta["checkpoint"]} (from {what})'
  elif what:
    desc = f'converted {model.get("name")} model {meta["checkpoint"]} (from {what})'
  else:
    desc = f'{model.get("name")} training checkpoint {meta["checkpoint"]}'
  return variables, meta, desc


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return files.jsonable(config)


def log_lines(title: str, lines: list[str]) -> None:
  logging.info('%s', title)
  for line in lines:
    logging.info('  %s', line)
