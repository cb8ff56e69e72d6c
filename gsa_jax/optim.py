"""The optimiser and learning-rate schedule of the train section, and that section's validation.

Adam (AdamW when weight_decay > 0, on every trained parameter or, weight_decay_mask='matrices', on those
of 2 or more dimensions only), optional global-norm clipping, and a schedule stepped per iteration:
train.schedule 'cosine' (learning_rate -> end_learning_rate over all steps, optional linear warm-up) or
'warmup_halvings' (SOLV's released torch schedule: LinearLR from learning_rate x warmup_start_factor over
w = int(warmup_fraction x T) steps, then ExponentialLR halving every (T - w) // halvings steps). The optimiser sees the trainable
parameters only (frozen ones get no gradient and no optimiser state; gsa_jax.contract.split_trainable).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import optax


def check_train_config(t: ml_collections.ConfigDict) -> list[str]:
  """Problems of the train section; [] when valid."""
  problems = []

  def need(ok: bool, message: str) -> None:
    if not ok:
      problems.append(message)

  need(t.batch_size > 0, f'train.batch_size={t.batch_size}; must be > 0')
  need(t.learning_rate > 0, f'train.learning_rate={t.learning_rate}; must be > 0')
  need(0 <= t.end_learning_rate <= t.learning_rate,
       f'train.end_learning_rate={t.end_learning_rate}; must be in [0, learning_rate={t.learning_rate}]')
  need(t.warmup_steps >= 0, f'train.warmup_steps={t.warmup_steps}; must be >= 0')
  need(t.schedule in SCHEDULES, f'train.schedule={t.schedule!r}; valid: {SCHEDULES}')
  need(0 <= t.warmup_fraction < 1, f'train.warmup_fraction={t.warmup_fraction}; must be in [0, 1)')
  need(0 < t.warmup_start_factor <= 1, f'train.warmup_start_factor={t.warmup_start_factor}; must be in (0, 1]')
  need(t.halvings >= 1, f'train.halvings={t.halvings}; must be >= 1')
  need(0 <= t.b1 < 1 and 0 <= t.b2 < 1, f'train.b1={t.b1}, train.b2={t.b2}; both must be in [0, 1)')
  need(t.eps > 0, f'train.eps={t.eps}; must be > 0')
  need(t.weight_decay >= 0, f'train.weight_decay={t.weight_decay}; must be >= 0')
  need(t.get('weight_decay_mask', 'all') in ('all', 'matrices'),
       f"train.weight_decay_mask={t.get('weight_decay_mask')!r}; choose 'all' or 'matrices'")
  need(t.grad_clip_norm >= 0, f'train.grad_clip_norm={t.grad_clip_norm}; must be >= 0 (0 = off)')
  need(t.num_train_steps > 0 or t.num_train_steps == -1,
       f'train.num_train_steps={t.num_train_steps}; use a positive number of steps, or -1 for num_epochs epochs')
  need(t.num_train_steps > 0 or t.num_epochs > 0,
       f'train.num_epochs={t.num_epochs}; must be > 0 when train.num_train_steps is -1')
  for name in ('log_every_steps', 'checkpoint_every_steps', 'eval_every_steps', 'write_images_every_steps'):
    need(t[name] > 0, f'train.{name}={t[name]}; must be > 0')
  need(t.keep_checkpoints >= 1, f'train.keep_checkpoints={t.keep_checkpoints}; must be >= 1')
  if t.init_from:
    need(os.path.exists(t.init_from), f'train.init_from={t.init_from!r}: the path does not exist')
  return problems


SCHEDULES = ('cosine', 'warmup_halvings')


def warmup_halvings_schedule(total_steps: int, peak: float, warmup_fraction: float = 0.05,
                             warmup_start_factor: float = 1e-5, halvings: int = 3) -> optax.Schedule:
  """lr[i] = peak (f + (1 - f) i / w) for i < w, then peak 0.5 ** ((i - w) / ((T - w) // halvings)).

  torch's SequentialLR([LinearLR(f, total_iters=w), ExponentialLR(0.5 ** (1 / ((T - w) // halvings)))]) with
  w = int(warmup_fraction T), stepped per iteration (update i uses lr[i]). Written out rather than with
  optax.linear_schedule, whose float32 form loses the warm-up start (4e-9 would come out as 3.987e-9).
  """
  warmup = int(warmup_fraction * total_steps)
  decay_steps = (total_steps - warmup) // halvings
  if total_steps < 1 or decay_steps < 1:
    raise ValueError(f'schedule warmup_halvings: {total_steps} steps leave {total_steps - warmup} after the '
                     f'{warmup}-step warm-up, fewer than halvings={halvings}; train for more steps.')

  def lr(step):
    step = jnp.asarray(step, jnp.float32)
    rise = warmup_start_factor + (1.0 - warmup_start_factor) * step / max(warmup, 1)
    return peak * jnp.where(step < warmup, rise, 0.5 ** ((step - warmup) / decay_steps))

  return lr


def create_schedule(t: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """train.schedule over `num_steps` (module doc)."""
  if t.schedule == 'warmup_halvings':
    return warmup_halvings_schedule(num_steps, t.learning_rate, t.warmup_fraction, t.warmup_start_factor,
                                    int(t.halvings))
  if t.warmup_steps > 0:
    return optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps, max(num_steps, t.warmup_steps + 1),
                                              end_value=t.end_learning_rate)
  return optax.cosine_decay_schedule(t.learning_rate, max(num_steps, 1), alpha=t.end_learning_rate / t.learning_rate)


def create_optimizer(t: ml_collections.ConfigDict, num_steps: int
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = create_schedule(t, num_steps)
  if t.weight_decay > 0:
    mask = None
    if t.get('weight_decay_mask', 'all') == 'matrices':
      mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
    opt = optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, mask=mask)
  else:
    opt = optax.adam(schedule, b1=t.b1, b2=t.b2, eps=t.eps)
  if t.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), opt)
  return opt, schedule
