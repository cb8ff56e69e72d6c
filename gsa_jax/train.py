"""Training: `train_and_evaluate(config, workdir)` for stage 1 (SaliencyNet) and stage 2 (GSANet).

  python main.py --mode=train --config=configs/demo.py --workdir=DIR [--config.x.y=v ...]

What it does:
  * checks the config (unknown keys, invalid values, missing dataset folders) and fails with a message
    that lists what is valid;
  * data parallel with one jit-compiled step over a 'data' mesh of every device of every process:
    parameters and optimiser state replicated, the batch split on 'data', the state donated. Each
    process reads its own shard of every global batch (process_index / process_count);
  * Adam (AdamW when weight_decay > 0), cosine learning_rate -> end_learning_rate over all steps,
    stepped per iteration (optional linear warm-up), optional global-norm clipping;
  * per-step keys fold_in(key(seed), step) for dropout and the k-means init, so results do not
    depend on the number of devices, and a resumed run draws the same numbers;
  * an orbax checkpoint every `checkpoint_every_steps` and whenever validation runs; the last
    `keep_checkpoints` and the best by validation G (J&F on the held-out data.val split, never the
    test split) are kept. A restart with the same command resumes from the last complete checkpoint:
    same step, optimiser state, keys and data position (create_train_iterator(start_step=step));
  * init from train.init_from (a stage-1 workdir, a converted backbone or a converted model), with
    every transferred / skipped subtree reported;
  * clu metric writers (TensorBoard + console), parameter overview, a progress line with steps/s and
    ETA, prediction strips (RGB | flow | pred | GT | fg-slot map) as TensorBoard images and PNGs;
  * a non-finite loss stops the run (TrainingDivergedError) without saving that state, so the last
    checkpoint is the last good one.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from absl import logging
from clu import metric_writers
from clu import parameter_overview
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gsa_jax import checkpoint as ckpt_lib
from gsa_jax.models.gsanet import losses
from gsa_jax import sharding as shard_lib

KINDS = ('video', 'saliency')
DTYPES = ('float32', 'bfloat16')
PROTOCOLS = ('davis16', 'fbms', 'ytobj')
SYNTHETIC = ('synthetic', 'synthetic_images')


class TrainingDivergedError(FloatingPointError):
  """The loss became NaN or infinite; the last saved checkpoint is the last good state."""


# ------------------------------------------------------------------------------------------------
# Config checks.


def _unknown_keys(config: Any, reference: Any, prefix: str = '') -> list[str]:
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
      if isinstance(value, Mapping) and not isinstance(value, ml_collections.ConfigDict):
        value = ml_collections.ConfigDict(value)
      problems += _unknown_keys(value, ref, name + '.')
  return problems


def validate_config(config: ml_collections.ConfigDict, *, mode: str = 'train') -> None:
  """Raises ValueError listing every unknown key and invalid value of `config` (`mode`: train|evaluate)."""
  from configs import defaults  # pylint: disable=g-import-not-at-top
  problems = _unknown_keys(config, defaults.get_config())
  m, d, t, e = config.model, config.data, config.train, config.eval

  def need(ok: bool, message: str) -> None:
    if not ok:
      problems.append(message)

  need(m.kind in KINDS, f'model.kind={m.kind!r}; valid: {KINDS}')
  need(m.dtype in DTYPES, f'model.dtype={m.dtype!r}; valid: {DTYPES}')
  need(d.num_refs >= 1, f'data.num_refs (N_R)={d.num_refs}; must be >= 1')
  need(d.image_size > 0 and d.image_size % 32 == 0,
       f'data.image_size={d.image_size}; must be a positive multiple of 32 (the backbone stride)')
  bad_sizes = [s for s in d.multiscale_sizes if s <= 0 or s % 32]
  need(not bad_sizes, f'data.multiscale_sizes has {bad_sizes}; every size must be a positive multiple of 32')
  need(e.protocol in PROTOCOLS, f'eval.protocol={e.protocol!r}; valid: {PROTOCOLS}')
  need(e.batch_size > 0, f'eval.batch_size={e.batch_size}; must be > 0')
  need(0.0 < e.threshold < 1.0, f'eval.threshold={e.threshold}; must be in (0, 1)')
  need(all(s > 0 for s in e.tta_scales), f'eval.tta_scales={tuple(e.tta_scales)}; every scale must be > 0')
  if mode == 'train':
    need(t.batch_size > 0, f'train.batch_size={t.batch_size}; must be > 0')
    need(t.learning_rate > 0, f'train.learning_rate={t.learning_rate}; must be > 0')
    need(0 <= t.end_learning_rate <= t.learning_rate,
         f'train.end_learning_rate={t.end_learning_rate}; must be in [0, learning_rate={t.learning_rate}]')
    need(t.warmup_steps >= 0, f'train.warmup_steps={t.warmup_steps}; must be >= 0')
    need(0 <= t.b1 < 1 and 0 <= t.b2 < 1, f'train.b1={t.b1}, train.b2={t.b2}; both must be in [0, 1)')
    need(t.eps > 0, f'train.eps={t.eps}; must be > 0')
    need(t.weight_decay >= 0, f'train.weight_decay={t.weight_decay}; must be >= 0')
    need(t.grad_clip_norm >= 0, f'train.grad_clip_norm={t.grad_clip_norm}; must be >= 0 (0 = off)')
    need(t.loss in losses.LOSS_VARIANTS, f'train.loss={t.loss!r}; valid: {losses.LOSS_VARIANTS}')
    need(t.aux_loss_weight >= 0, f'train.aux_loss_weight={t.aux_loss_weight}; must be >= 0')
    need(t.num_train_steps > 0 or t.num_epochs > 0,
         f'train.num_train_steps={t.num_train_steps} and train.num_epochs={t.num_epochs}; one must be > 0')
    for name in ('log_every_steps', 'checkpoint_every_steps', 'eval_every_steps', 'write_images_every_steps'):
      need(t[name] > 0, f'train.{name}={t[name]}; must be > 0')
    need(t.keep_checkpoints >= 1, f'train.keep_checkpoints={t.keep_checkpoints}; must be >= 1')
    if t.init_from:
      need(os.path.exists(t.init_from), f'train.init_from={t.init_from!r}: the path does not exist')
  for role in (('train', 'val') if mode == 'train' else ('test',)):
    name, root = d[role], d[f'{role}_root']
    if not name:
      continue
    if root and not os.path.exists(root):
      problems.append(f'data.{role}_root={root!r}: the path does not exist (dataset {name!r})')
    elif not root and name not in SYNTHETIC:
      problems.append(f'data.{role}={name!r} needs data.{role}_root (the dataset folder)')
  if mode == 'train' and d.train_sub and d.train_sub_root and not os.path.exists(d.train_sub_root):
    problems.append(f'data.train_sub_root={d.train_sub_root!r}: the path does not exist')
  if problems:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(problems))


def prepare_data_roots(config: ml_collections.ConfigDict, workdir: str, roles=('train', 'val', 'test')
                       ) -> ml_collections.ConfigDict:
  """Returns a copy of `config` whose synthetic datasets point at a generated folder.

  A synthetic dataset with no root uses data.synthetic_root, or <workdir>/data/synthetic, generated
  there by process 0 when it does not exist yet.
  """
  config = ml_collections.ConfigDict(config.to_dict())  # An unlocked copy.
  d = config.data
  needed = [r for r in roles if d[r] in SYNTHETIC and not d[f'{r}_root']]
  if not needed:
    return config
  root = os.path.abspath(d.synthetic_root or os.path.join(workdir, 'data', 'synthetic'))
  ensure_synthetic(d.synthetic, root)
  for role in needed:
    d[f'{role}_root'] = root
  return config


def ensure_synthetic(synthetic_config: ml_collections.ConfigDict, root: str) -> None:
  """Generates the synthetic set into `root` unless it is already complete (process 0 writes)."""
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


def _synthetic_matches(manifest: str, synthetic_config: ml_collections.ConfigDict) -> bool:
  """True when `manifest` exists and was written with these generator settings."""
  import json  # pylint: disable=g-import-not-at-top
  if not os.path.exists(manifest):
    return False
  with open(manifest) as f:
    saved = json.load(f).get('settings', {})
  wanted = dict(synthetic_config.to_dict() if hasattr(synthetic_config, 'to_dict') else synthetic_config)
  return all(saved.get(k) == v for k, v in wanted.items())


# ------------------------------------------------------------------------------------------------
# Model, optimiser and state.


def build_model(model_config: ml_collections.ConfigDict):
  from gsa_jax.models.gsanet import network as models  # pylint: disable=g-import-not-at-top
  return models.build_model(model_config)


def dummy_inputs(config: ml_collections.ConfigDict, batch: int = 1) -> dict[str, np.ndarray]:
  s, t = config.data.image_size, config.data.num_refs
  out = {'rgb': np.zeros((batch, s, s, 3), np.float32)}
  if config.model.kind == 'video':
    out.update(flow=np.zeros((batch, s, s, 3), np.float32), ref_rgb=np.zeros((batch, t, s, s, 3), np.float32),
               ref_flow=np.zeros((batch, t, s, s, 3), np.float32))
  return out


def apply_model(model, variables, batch: Mapping[str, Any], *, kind: str, train: bool, kmeans_key=None,
                rngs=None, mutable=False):
  """Calls the model on a batch dict of either kind."""
  if kind == 'video':
    return model.apply(variables, batch['rgb'], batch['flow'], batch['ref_rgb'], batch['ref_flow'], train=train,
                       kmeans_key=kmeans_key, rngs=rngs, mutable=mutable)
  return model.apply(variables, batch['rgb'], train=train, rngs=rngs, mutable=mutable)


def init_variables(model, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Initial {'params', 'batch_stats'} from key(seed) (the same on every process)."""
  params_key, dropout_key, kmeans_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1), 3)

  def init(inputs):
    kwargs = dict(train=False)
    if config.model.kind == 'video':
      return model.init({'params': params_key, 'dropout': dropout_key}, inputs['rgb'], inputs['flow'],
                        inputs['ref_rgb'], inputs['ref_flow'], kmeans_key=kmeans_key, **kwargs)
    return model.init({'params': params_key, 'dropout': dropout_key}, inputs['rgb'], **kwargs)

  variables = jax.jit(init)(dummy_inputs(config))
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def create_schedule(train_config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Cosine learning_rate -> end_learning_rate over `num_steps` (after an optional linear warm-up)."""
  t = train_config
  if t.warmup_steps > 0:
    return optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps, max(num_steps, t.warmup_steps + 1),
                                              end_value=t.end_learning_rate)
  return optax.cosine_decay_schedule(t.learning_rate, max(num_steps, 1), alpha=t.end_learning_rate / t.learning_rate)


def create_optimizer(train_config: ml_collections.ConfigDict, num_steps: int
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  t = train_config
  schedule = create_schedule(t, num_steps)
  if t.weight_decay > 0:
    opt = optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay)
  else:
    opt = optax.adam(schedule, b1=t.b1, b2=t.b2, eps=t.eps)
  if t.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), opt)
  return opt, schedule


def create_state(variables: Mapping[str, Any], tx: optax.GradientTransformation) -> dict[str, Any]:
  return {'step': jnp.zeros((), jnp.int32), 'params': variables['params'],
          'batch_stats': variables.get('batch_stats') or {}, 'opt_state': tx.init(variables['params'])}


def step_keys(base_key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(dropout key, k-means key) of a step: split(fold_in(base_key, step))."""
  dropout_key, kmeans_key = jax.random.split(jax.random.fold_in(base_key, step))
  return dropout_key, kmeans_key


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], *, model, tx: optax.GradientTransformation,
               schedule: optax.Schedule, config: ml_collections.ConfigDict) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One optimiser step on a global batch; returns the new state and scalar metrics."""
  dropout_key, kmeans_key = step_keys(jax.random.key(config.seed), state['step'])
  kind = config.model.kind

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state['batch_stats']}
    outputs, mutated = apply_model(model, variables, batch, kind=kind, train=True, kmeans_key=kmeans_key,
                                   rngs={'dropout': dropout_key}, mutable=['batch_stats'])
    loss, metrics = losses.total_loss(outputs, batch['mask'], variant=config.train.loss,
                                      aux_weight=config.train.aux_loss_weight)
    return loss, (metrics, mutated.get('batch_stats', {}))

  (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state['step']))
  new_state = {'step': state['step'] + 1, 'params': params, 'batch_stats': batch_stats, 'opt_state': opt_state}
  return new_state, metrics


def predict_step(variables, batch, *, model, config):
  """Eval-mode outputs for a few examples of a training batch (for the pictures)."""
  outputs = apply_model(model, variables, batch, kind=config.model.kind, train=False,
                        kmeans_key=jax.random.key(config.eval.kmeans_seed))
  slot_maps = tuple(outputs.get('slot_maps') or ())
  fg = slot_maps[2] if len(slot_maps) > 2 else None
  return {'prob': jax.nn.sigmoid(outputs['logits'].astype(jnp.float32)),
          'fg_slot': None if fg is None else fg.astype(jnp.float32)}


# ------------------------------------------------------------------------------------------------
# The loop.


def num_train_steps(config: ml_collections.ConfigDict) -> int:
  t = config.train
  if t.num_train_steps > 0:
    return int(t.num_train_steps)
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  steps_per_epoch = pipeline.steps_per_epoch(config.data, kind=config.model.kind, batch_size=t.batch_size)
  return int(t.num_epochs * steps_per_epoch)


def _finite(x: float) -> bool:
  return bool(np.isfinite(x))


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def _meta(config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
  return {'step': step, 'kind': config.model.kind, 'model': ckpt_lib.config_to_json(config.model),
          'config': ckpt_lib.config_to_json(config), 'data_position': step}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`.

  Returns {'step', 'params', 'batch_stats' (numpy), 'val' (last validation), 'loss_history' (the loss of
  every step this call ran), 'checkpoint' (the best one)}.
  """
  validate_config(config, mode='train')
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  config = prepare_data_roots(config, workdir, roles=('train', 'val'))
  t = config.train
  kind = config.model.kind

  mesh = shard_lib.create_mesh()
  shard_lib.check_batch_size(t.batch_size, mesh)
  local_batch = shard_lib.process_local_batch_size(t.batch_size, mesh)
  total_steps = num_train_steps(config)
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main, asynchronous=False)
  logging.info('Training %s model (%s) in %s: %d steps, global batch %d over %d device(s) in %d process(es).',
               kind, config.model.backbone, workdir, total_steps, t.batch_size, mesh.devices.size,
               jax.process_count())

  model = build_model(config.model)
  tx, schedule = create_optimizer(t, total_steps)
  repl = shard_lib.replicated(mesh)

  abstract_state = jax.eval_shape(lambda: create_state(init_variables(model, config), tx))
  state_sharding = jax.tree.map(lambda _: repl, abstract_state)
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract_state, state_sharding)

  manager = ckpt_lib.create_manager(ckpt_lib.checkpoint_directory(workdir), keep=t.keep_checkpoints)
  latest = manager.latest_step()
  if latest is not None:
    state, meta = ckpt_lib.restore_state(manager, latest, abstract_state, model_config=config.model)
    start_step = int(jax.device_get(state['step'].addressable_data(0)))
    logging.info('Resumed from %s/%d (step %d).', manager.directory, latest, start_step)
  else:
    variables = jax.tree.map(np.asarray, init_variables(model, config))
    if t.init_from:
      source, scope, desc = ckpt_lib.load_init_source(t.init_from)
      variables, report = ckpt_lib.transfer_variables(variables, source, scope=scope,
                                                      transfer_mffm_branches=t.transfer_mffm_branches)
      ckpt_lib.log_lines(f'Initialised from {desc}:', report)
      if is_main:
        with open(os.path.join(workdir, 'init_from.txt'), 'w') as f:
          f.write(f'{desc}\n' + '\n'.join(report) + '\n')
    state = create_state(variables, tx)
    state = shard_lib.put_replicated(state, mesh)
    start_step = 0
  if is_main:
    parameter_overview.log_parameter_overview(shard_lib.to_host(state['params']), include_stats=False,
                                              max_lines=40, msg=f'{kind} model parameters')
    writer.write_hparams({k: v for k, v in _flat_hparams(config).items()})

  train_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config),
                     in_shardings=(state_sharding, shard_lib.data_sharded(mesh)),
                     out_shardings=(state_sharding, repl), donate_argnums=(0,))
  predict_fn = jax.jit(functools.partial(predict_step, model=model, config=config), out_shardings=repl)

  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  train_iter: Iterator[dict[str, np.ndarray]] = pipeline.create_train_iterator(
      config.data, kind=kind, batch_size=local_batch, seed=config.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count())

  def save(step: int, val: dict[str, float] | None) -> None:
    ckpt_lib.save(manager, step, state, _meta(config, step), val_metrics=val)
    logging.info('Saved checkpoint %d%s.', step, f' (val G {val.get("G"):.4f})' if val and val.get('G') is not None else '')

  step = start_step
  window: dict[str, list[float]] = {}
  window_start, window_step = time.time(), step
  run_start = time.time()
  last_val = None
  cache: dict[str, Any] = {}
  history: list[float] = []  # The loss of every step run by this call.
  while step < total_steps:
    batch = next(train_iter)
    global_batch = shard_lib.put_batch(batch, mesh)
    state, metrics = train_fn(state, global_batch)
    step += 1
    metrics = shard_lib.to_host(metrics)
    if not _finite(float(metrics['loss'])):
      last = manager.latest_step()
      message = (f'The loss is {float(metrics["loss"])} at step {step}: training stopped. The state of this '
                 f'step was not saved; the last good checkpoint is '
                 f'{os.path.join(manager.directory, str(last)) if last is not None else "none"}. Try a '
                 'lower train.learning_rate, train.grad_clip_norm > 0 or model.dtype=float32.')
      logging.error('%s', message)
      writer.flush()
      manager.close()
      raise TrainingDivergedError(message)
    for k, v in metrics.items():
      window.setdefault(k, []).append(float(v))
    history.append(float(metrics['loss']))

    if step % t.log_every_steps == 0 or step == total_steps:
      now = time.time()
      sps = (step - window_step) / max(now - window_start, 1e-9)
      scalars = {f'train/{k}': float(np.mean(v)) for k, v in window.items()}
      scalars['train/steps_per_sec'] = sps
      writer.write_scalars(step, scalars)
      logging.info('step %d/%d: loss %.4f, lr %.3g, %.2f steps/s, ETA %s', step, total_steps,
                   scalars['train/loss'], scalars['train/learning_rate'], sps,
                   _format_eta((total_steps - step) / max(sps, 1e-9)))
      window, window_start, window_step = {}, now, step

    val = None
    validating = bool(config.data.val) and (step % t.eval_every_steps == 0 or step == total_steps)
    if validating:  # Writes the validation strips too.
      val = _validate(model, state, config, workdir, step, writer, is_main, cache)
      last_val = val
    if step % t.write_images_every_steps == 0 and not validating:
      _write_training_images(writer, workdir, step, predict_fn, state, global_batch, batch, config, is_main)

    if val is not None or step % t.checkpoint_every_steps == 0 or step == total_steps:
      save(step, val)

  manager.wait_until_finished()
  final_step = manager.latest_step()
  best = ckpt_lib.best_step(manager) if final_step is not None else None
  logging.info('Training done in %.1f s: step %d; best checkpoint %s.', time.time() - run_start, step, best)
  writer.flush()
  writer.close()
  params = shard_lib.to_host(state['params'])
  batch_stats = shard_lib.to_host(state['batch_stats'])
  manager.close()
  return {'step': step, 'params': params, 'batch_stats': batch_stats, 'val': last_val, 'loss_history': history,
          'checkpoint': os.path.join(ckpt_lib.checkpoint_directory(workdir), str(best)) if best is not None else None}


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}

  def walk(c, prefix):
    for k, v in c.items():
      if isinstance(v, ml_collections.ConfigDict):
        walk(v, f'{prefix}{k}.')
      elif isinstance(v, (int, float, str, bool)):
        out[f'{prefix}{k}'] = v
      else:
        out[f'{prefix}{k}'] = str(v)

  walk(config, '')
  return out


def _validate(model, state, config, workdir, step, writer, is_main, cache: dict[str, Any]) -> dict[str, float]:
  """Scores the current model on the validation split; writes val/J, val/F, val/G and overlay strips."""
  from gsa_jax import evaluate  # pylint: disable=g-import-not-at-top
  from gsa_jax import visualize  # pylint: disable=g-import-not-at-top
  variables = {'params': shard_lib.to_host(state['params']), 'batch_stats': shard_lib.to_host(state['batch_stats'])}
  start = time.time()
  if 'segmenter' not in cache:  # Compiled once, reused by every validation.
    cache['segmenter'] = evaluate.Segmenter(model, variables, config, tta=False)
  results, extra = evaluate.evaluate_model(model, variables, config, split='val', output_dir=None, num_overlays=2,
                                           segmenter=cache['segmenter'], tta=False)
  if is_main and extra['overlays']:
    image = _stack_rows(extra['overlays'])
    writer.write_images(step, {'val/strip': image[None]})
    visualize.save_png(os.path.join(workdir, 'images', f'val_step{step:07d}.png'), image)
  val = {k: results.get(k) for k in ('J_mean', 'F_mean', 'G')}
  if val['G'] is None:  # fbms / ytobj: J only.
    val['G'] = val['J_mean']
  scalars = {f'val/{k}': float(v) for k, v in val.items() if v is not None}
  scalars['val/fps'] = extra.get('fps', 0.0)
  writer.write_scalars(step, scalars)
  logging.info('validation at step %d (%s, %.1f s): J %.4f, F %s, G %.4f', step, config.data.val,
               time.time() - start, val['J_mean'], 'n/a' if val['F_mean'] is None else f'{val["F_mean"]:.4f}',
               val['G'])
  return val


def _stack_rows(rows: list[np.ndarray]) -> np.ndarray:
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
  return np.concatenate(rows, axis=0)


def _write_training_images(writer, workdir, step, predict_fn, state, global_batch, batch, config, is_main) -> None:
  from gsa_jax import visualize  # pylint: disable=g-import-not-at-top
  n = min(2, int(np.asarray(batch['rgb']).shape[0]))
  small = {k: v[:n] for k, v in global_batch.items()}
  out = shard_lib.to_host(predict_fn({'params': state['params'], 'batch_stats': state['batch_stats']}, small))
  if not is_main:
    return
  host = shard_lib.to_host(small)
  strips = []
  for i in range(n):
    strips.append(visualize.strip(
        rgb=host['rgb'][i], flow=host['flow'][i] if 'flow' in host else None, pred=out['prob'][i],
        gt=host['mask'][i], fg_slot=None if out['fg_slot'] is None else out['fg_slot'][i]))
  image = _stack_rows(strips)
  writer.write_images(step, {'train/strip': image[None]})
  directory = os.path.join(workdir, 'images')
  os.makedirs(directory, exist_ok=True)
  visualize.save_png(os.path.join(directory, f'train_step{step:07d}.png'), image)
