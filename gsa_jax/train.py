"""Training: `train_and_evaluate(config, workdir)` for every registered model (gsa_jax.contract).

  python main.py --mode=train --config=configs/gsanet_demo.py --workdir=DIR [--config.x.y=v ...]

What it does:
  * checks the whole config (gsa_jax.config_lib: unknown keys, invalid values, missing dataset folders) and
    fails with a message that lists what is valid;
  * data parallel with one jit-compiled step over a 'data' mesh of every device of every process:
    parameters and optimiser state replicated, the batch split on 'data', the state donated. Each process
    reads its own shard of every global batch (process_index / process_count);
  * the model's loss (contract.Model.loss), gradients of the trainable parameters only (frozen ones get no
    gradient and no optimiser state), gsa_jax.optim's optimiser and schedule;
  * one key per step, fold_in(key(seed), step), which the model splits for dropout, k-means and the like, so
    results do not depend on the number of devices, and a resumed run draws the same numbers;
  * an orbax checkpoint every `checkpoint_every_steps` and whenever validation runs; the last
    `keep_checkpoints` and the best by the model's validation figure (on the held-out data.val split, never
    the test split) are kept. A restart with the same command resumes from the last complete checkpoint:
    same step, optimiser state, keys and data position;
  * init from train.init_from (a stage-1 workdir, a converted backbone or a converted model) through the
    model's transfer rule, with every transferred / skipped subtree reported;
  * one trainer per workdir: an exclusive lock file (<workdir>/train.lock, one per process when multi-host)
    refuses a second trainer with the first one's pid, host and start time; the lock of a process that
    died on this host is taken over with a warning;
  * TensorBoard scalars and images (clu metric writers), parameter overview, and one console line per
    log_every_steps with the loss, steps/s and an ETA measured from the end of the first (compiling) step
    (validation and checkpoint time left out); the model's prediction pictures as PNGs too;
  * a non-finite loss stops the run (TrainingDivergedError) without saving that state, so the last
    checkpoint is the last good one.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import socket
import time
from collections.abc import Iterator
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
from gsa_jax import config_lib
from gsa_jax import contract
from gsa_jax import errors
from gsa_jax import evaluate
from gsa_jax import optim
from gsa_jax import registry
from gsa_jax import sharding as shard_lib
from gsa_jax import visualize
from input_pipeline import data_sources
from input_pipeline import pipeline

INIT_SALT = 2**31 - 1  # init key = fold_in(key(seed), INIT_SALT); step keys fold in the step instead


class TrainingDivergedError(errors.UserError, FloatingPointError):
  """The loss became NaN or infinite; the last saved checkpoint is the last good state."""


class WorkdirLockedError(errors.UserError):
  """Another trainer holds the workdir's lock."""


LOCK_NAME = 'train.lock'


def lock_path(workdir: str, process_index: int = 0, process_count: int = 1) -> str:
  """<workdir>/train.lock, or train.lock.<process index> when several processes train together."""
  name = LOCK_NAME if process_count == 1 else f'{LOCK_NAME}.{process_index}'
  return os.path.join(workdir, name)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  return True


class WorkdirLock:
  """An exclusive lock file holding {pid, host, start} of the trainer that owns a workdir.

  Taken with O_CREAT | O_EXCL, so two trainers never both hold it; released (deleted) on exit. A lock left
  by a process that is gone (its pid is dead on this host) is taken over with a warning.
  """

  def __init__(self, path: str):
    self.path = path
    self.held = False

  def _read(self) -> dict[str, Any] | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def acquire(self) -> None:
    host = socket.gethostname()
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        owner = self._read()
        if owner is None and time.time() - os.path.getmtime(self.path) < 10:
          time.sleep(0.5)  # another trainer is writing it right now
          continue
        if owner is not None and owner.get('host') == host and _pid_alive(int(owner.get('pid', -1))):
          raise WorkdirLockedError(
              f'The workdir {os.path.dirname(self.path)} is in use by another trainer: pid {owner["pid"]} on '
              f'{owner["host"]}, started {owner.get("start", "?")} (lock file {self.path}). Wait for it to '
              'finish, stop it, or train in another --workdir.') from None
        if owner is not None and owner.get('host') != host:
          raise WorkdirLockedError(
              f'The workdir {os.path.dirname(self.path)} is locked by a trainer on another host: pid '
              f'{owner.get("pid")} on {owner.get("host")}, started {owner.get("start", "?")} (lock file '
              f'{self.path}). Wait for it to finish or train in another --workdir; if that run is gone, '
              'delete the lock file.') from None
        logging.warning('Taking over the stale lock %s (%s): that trainer is no longer running.', self.path,
                        'unreadable' if owner is None else f'pid {owner.get("pid")}, started {owner.get("start")}')
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump({'pid': os.getpid(), 'host': host,
                   'start': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, f)
      self.held = True
      return
    raise WorkdirLockedError(f'Could not take the lock {self.path}: other trainers keep taking it. Train in '
                             'another --workdir.')

  def release(self) -> None:
    if not self.held:
      return
    owner = self._read()
    if owner is not None and owner.get('pid') == os.getpid():
      os.remove(self.path)
    self.held = False

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def init_variables(model: contract.Model, seed: int) -> contract.Variables:
  """The model's initial variables from key(seed) (the same on every process), as numpy."""
  key = jax.random.fold_in(jax.random.key(seed), INIT_SALT)
  return jax.tree.map(np.asarray, jax.jit(model.init)(key))


def create_state(model: contract.Model, variables: contract.Variables,
                 tx: optax.GradientTransformation) -> dict[str, Any]:
  """{'step', 'params' (all), the model's other collections, 'opt_state' (of the trainable params)}."""
  trainable, _ = contract.split_trainable(model, variables['params'])
  collections = {k: v for k, v in variables.items() if k != 'params'}
  return {'step': jnp.zeros((), jnp.int32), 'params': variables['params'], **collections,
          'opt_state': tx.init(trainable)}


def _collections(state: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in state.items() if k not in ('step', 'params', 'opt_state')}


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], *, model: contract.Model,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               seed: int) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One optimiser step on a global batch; returns the new state and scalar metrics."""
  key = jax.random.fold_in(jax.random.key(seed), state['step'])
  trainable, frozen = contract.split_trainable(model, state['params'])
  collections = _collections(state)

  def loss_fn(params):
    variables = {'params': contract.merge_params(params, frozen), **collections}
    loss, metrics, updated = model.loss(variables, batch, key=key, step=state['step'])
    return loss, (metrics, updated)

  (_, (metrics, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  updates, opt_state = tx.update(grads, state['opt_state'], trainable)
  trainable = optax.apply_updates(trainable, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state['step']))
  new_state = {'step': state['step'] + 1, 'params': contract.merge_params(trainable, frozen),
               **{k: updated.get(k, v) for k, v in collections.items()}, 'opt_state': opt_state}
  return new_state, metrics


def num_train_steps(config: ml_collections.ConfigDict, model: contract.Model) -> int:
  t = config.train
  if t.num_train_steps > 0:
    return int(t.num_train_steps)
  steps_per_epoch = pipeline.steps_per_epoch(config.data, train_input=model.train_input, batch_size=t.batch_size)
  return int(t.num_epochs * steps_per_epoch)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def _meta(config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
  return {'step': step, 'model': ckpt_lib.config_to_json(config.model), 'config': ckpt_lib.config_to_json(config),
          'data_position': step}


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}

  def walk(c, prefix):
    for k, v in c.items():
      if isinstance(v, ml_collections.ConfigDict):
        walk(v, f'{prefix}{k}.')
      else:
        out[f'{prefix}{k}'] = v if isinstance(v, (int, float, str, bool)) else str(v)

  walk(config, '')
  return out


def _initial_state(model, config, tx, workdir, is_main) -> dict[str, Any]:
  variables = init_variables(model, config.seed)
  t = config.train
  if t.init_from:
    source, meta, desc = ckpt_lib.load_init_source(t.init_from)
    variables, report = model.transfer(variables, source, meta)
    ckpt_lib.log_lines(f'Initialised from {desc}:', report)
    if is_main:
      with open(os.path.join(workdir, 'init_from.txt'), 'w') as f:
        f.write(f'{desc}\n' + '\n'.join(report) + '\n')
  return create_state(model, variables, tx)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`.

  Returns {'step', 'params', plus the model's other collections (numpy), 'val' (last validation),
  'loss_history' (the loss of every step this call ran), 'checkpoint' (the best one)}.
  """
  config_lib.validate(config, roles=('train', 'val'), training=True)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with WorkdirLock(lock_path(workdir, jax.process_index(), jax.process_count())):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """train_and_evaluate in a validated config and a locked workdir."""
  config = data_sources.prepare_data_roots(config, workdir, roles=('train', 'val'))
  model = registry.build(config)
  t = config.train

  mesh = shard_lib.create_mesh()
  shard_lib.check_batch_size(t.batch_size, mesh)
  local_batch = shard_lib.process_local_batch_size(t.batch_size, mesh)
  total_steps = num_train_steps(config, model)
  is_main = jax.process_index() == 0
  # TensorBoard only: the console gets one progress line per log interval (below), not a copy of each scalar.
  writer = metric_writers.MultiWriter([metric_writers.SummaryWriter(workdir)] if is_main else [])
  logging.info('Training %s in %s: %d steps, global batch %d over %d device(s) in %d process(es).',
               model.summary_header(), workdir, total_steps, t.batch_size, mesh.devices.size, jax.process_count())

  tx, schedule = optim.create_optimizer(t, total_steps)
  repl = shard_lib.replicated(mesh)
  abstract_state = jax.eval_shape(lambda: create_state(model, model.init(jax.random.key(0)), tx))
  state_sharding = jax.tree.map(lambda _: repl, abstract_state)
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract_state, state_sharding)

  manager = ckpt_lib.create_manager(ckpt_lib.checkpoint_directory(workdir), keep=t.keep_checkpoints)
  latest = manager.latest_step()
  if latest is not None:
    state, _ = ckpt_lib.restore_state(manager, latest, abstract_state, model_config=config.model)
    start_step = int(jax.device_get(state['step'].addressable_data(0)))
    logging.info('Resumed from %s/%d (step %d).', manager.directory, latest, start_step)
  else:
    state = shard_lib.put_replicated(_initial_state(model, config, tx, workdir, is_main), mesh)
    start_step = 0
  if is_main:
    parameter_overview.log_parameter_overview(shard_lib.to_host(state['params']), include_stats=False,
                                              max_lines=40, msg=f'{model.name} parameters')
    writer.write_hparams(_flat_hparams(config))

  train_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, seed=int(config.seed)),
                     in_shardings=(state_sharding, shard_lib.data_sharded(mesh)),
                     out_shardings=(state_sharding, repl), donate_argnums=(0,))
  train_iter: Iterator[dict[str, np.ndarray]] = pipeline.create_train_iterator(
      config.data, train_input=model.train_input, batch_size=local_batch, seed=config.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count())

  step = start_step
  window: dict[str, list[float]] = {}
  rate = _StepRate()
  run_start = time.time()
  last_val = None
  validator = evaluate.Validator(model, config, workdir, writer) if config.data.val else None
  history: list[float] = []  # The loss of every step run by this call.
  while step < total_steps:
    batch = next(train_iter)
    global_batch = shard_lib.put_batch(batch, mesh)
    state, metrics = train_fn(state, global_batch)
    step += 1
    metrics = shard_lib.to_host(metrics)
    if not np.isfinite(float(metrics['loss'])):
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
    rate.step_done(step, run_start)

    if step % t.log_every_steps == 0 or step == total_steps:
      sps = rate.steps_per_sec(step)
      scalars = {f'train/{k}': float(np.mean(v)) for k, v in window.items()}
      if sps is not None:
        scalars['train/steps_per_sec'] = sps
      writer.write_scalars(step, scalars)
      speed = (f'{sps:.2f} steps/s, ETA {_format_eta((total_steps - step) / max(sps, 1e-9))}' if sps is not None
               else f'first step {rate.first_step_seconds:.1f} s with compilation, steps/s and ETA from the next')
      logging.info('step %d/%d: loss %.4f, lr %.3g, %s', step, total_steps, scalars['train/loss'],
                   scalars['train/learning_rate'], speed)
      window = {}
      rate.restart(step)

    paused = time.time()
    val = None
    validating = validator is not None and (step % t.eval_every_steps == 0 or step == total_steps)
    if validating:  # writes the validation pictures too
      val = validator(_host_variables(state), step)
      last_val = val
    if step % t.write_images_every_steps == 0 and not validating:
      _write_training_images(model, writer, workdir, step, state, global_batch, is_main)

    if val is not None or step % t.checkpoint_every_steps == 0 or step == total_steps:
      ckpt_lib.save(manager, step, state, _meta(config, step), val_metrics=val, best_metric=model.best_metric)
      logging.info('Saved checkpoint %d%s.', step,
                   f' (val {model.best_metric} {val[model.best_metric]:.4f})'
                   if val and val.get(model.best_metric) is not None else '')
    rate.pause(time.time() - paused)  # validation, pictures and checkpoints are not training speed

  manager.wait_until_finished()
  best = ckpt_lib.best_step(manager) if manager.latest_step() is not None else None
  logging.info('Training done in %.1f s: step %d; best checkpoint %s.', time.time() - run_start, step, best)
  writer.flush()
  writer.close()
  out = {k: v for k, v in _host_variables(state).items()}
  manager.close()
  return dict(out, step=step, val=last_val, loss_history=history,
              checkpoint=os.path.join(ckpt_lib.checkpoint_directory(workdir), str(best)) if best is not None else None)


class _StepRate:
  """Steps/s over the steps since the last restart, from the end of the first (compiling) step on."""

  def __init__(self):
    self.start: float | None = None  # when the counted window began
    self.start_step = 0
    self.first_step_seconds = 0.0

  def step_done(self, step: int, run_start: float) -> None:
    if self.start is None:  # the first step of this run: compilation; count from its end
      now = time.time()
      self.first_step_seconds = now - run_start
      self.start, self.start_step = now, step

  def steps_per_sec(self, step: int) -> float | None:
    if self.start is None or step <= self.start_step:
      return None
    return (step - self.start_step) / max(time.time() - self.start, 1e-9)

  def restart(self, step: int) -> None:
    if self.start is not None and step > self.start_step:
      self.start, self.start_step = time.time(), step

  def pause(self, seconds: float) -> None:
    if self.start is not None:
      self.start += seconds


def _host_variables(state: dict[str, Any]) -> dict[str, Any]:
  """The model variables of a state ({'params', collections}) as numpy on this host."""
  return shard_lib.to_host({'params': state['params'], **_collections(state)})


def _write_training_images(model, writer, workdir, step, state, global_batch, is_main) -> None:
  variables = {'params': state['params'], **_collections(state)}
  strips = model.preview(variables, global_batch)
  if not (is_main and strips):
    return
  image = visualize.stack_rows(strips)
  writer.write_images(step, {'train/strip': image[None]})
  visualize.save_png(os.path.join(workdir, 'images', f'train_step{step:07d}.png'), image)
