"""SOLV's released optimiser as optax: Adam 4e-4 (no weight decay), global-norm clip 1, warm-up + halvings.

Released (torch): Adam(lr, betas (0.9, 0.999), eps 1e-8, weight_decay 0), clip_grad_norm_(1.0) before each
step, and a per-iteration SequentialLR of LinearLR(start_factor 1e-5, total_iters w) then
ExponentialLR(gamma = exp(ln 0.5 / ((T - w) // 3))) with w = int(0.05 T): lr rises linearly from lr x 1e-5 to
lr over w steps, then halves every (T - w) // 3 steps (lr / 8 at the end). Update i (0-based) uses lr[i].

  learning_rate_schedule(total_steps, ...)   optax schedule, lr[i] for update i.
  clip_grad_norm(max_norm)                   torch.nn.utils.clip_grad_norm_: g x min(1, max / (|g| + 1e-6)).
  optimizer(total_steps, ...)                optax.chain(clip_grad_norm, adam(schedule)).
"""

import jax
import jax.numpy as jnp
import optax

from gsa_jax import optim


def learning_rate_schedule(total_steps: int, peak: float = 4e-4, warmup_fraction: float = 0.05,
                           warmup_start_factor: float = 1e-5, halvings: int = 3) -> optax.Schedule:
  """lr[i]: peak x (f + (1 - f) i / w) for i < w, then peak x 0.5 ** ((i - w) / ((T - w) // halvings)).

  The trainer's train.schedule='warmup_halvings' (gsa_jax.optim) with the released defaults.
  """
  return optim.warmup_halvings_schedule(total_steps, peak, warmup_fraction, warmup_start_factor, halvings)


def clip_grad_norm(max_norm: float, eps: float = 1e-6) -> optax.GradientTransformation:
  """torch.nn.utils.clip_grad_norm_ (global L2 norm over every parameter): scale = min(1, max / (norm + eps)).

  optax.clip_by_global_norm scales by max / norm instead (no eps); the two differ by ~1e-6 relative.
  """
  def update(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    scale = jnp.minimum(1.0, max_norm / (norm + eps))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer(total_steps: int, peak: float = 4e-4, warmup_fraction: float = 0.05,
              warmup_start_factor: float = 1e-5, halvings: int = 3, clip_norm: float = 1.0,
              b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """The released optimiser: torch's global-norm clip, then Adam with the schedule (no weight decay)."""
  schedule = learning_rate_schedule(total_steps, peak, warmup_fraction, warmup_start_factor, halvings)
  return optax.chain(clip_grad_norm(clip_norm), optax.adam(schedule, b1=b1, b2=b2, eps=eps))
