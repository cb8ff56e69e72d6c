"""The two self-supervised losses of Betrayed by Attention, as the released training script computes them.

Inputs: `attention` [b, t n, t n], the head mean of the block's post-dropout attention without the CLS rows
and columns, and `tokens` [b, t, n, c], the block's outputs; `points` [p], the same p spatial positions in
every frame and batch element (8 per step, `sample_points`), so there are p t query tokens. For every query
the attention row is ranked separately within each key frame (descending; ties by token index).

semantic: per query and key frame, the cosine (L2-normalised, eps 1e-12) of the query's output with the
  outputs of the `sem_top` most attended tokens should exceed `sem_pos_margin` and with the `sem_bottom`
  least attended ones stay below `sem_neg_margin`: mean relu(0.9 - cos) + mean relu(cos - 0.1).
motion: the query's L1-normalised row q (no gradient) scores every row r of its own frame by
  s(r) = sum q log(r / |r|_1 + 1e-10) (= -cross-entropy); the rows of the `mot_top` most attended tokens of
  its own frame should score higher than those of the `mot_bottom` least attended ones by `mot_margin`:
  relu(s(neg) - s(pos) + 1) over all pairs, the p queries of a frame weighted by a softmax of their negative
  entropy sum q log(q + 1e-10), then the mean over (b, t, pairs).

At random initialisation the two are about 0.80 and 1.00 (the motion margin).

  sample_points(key, tokens_per_frame, num_points)     p distinct positions (a permutation's first p)
  betrayed_losses(attention, tokens, points, ...)      {'semantic', 'motion', 'total'}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_points(key: jax.Array, tokens_per_frame: int, num_points: int) -> jnp.ndarray:
  return jax.random.permutation(key, tokens_per_frame)[:num_points]


def _normalize(x: jnp.ndarray, order: int) -> jnp.ndarray:
  norm = jnp.sum(jnp.abs(x), -1, keepdims=True) if order == 1 else jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, 1e-12)


def betrayed_losses(attention: jnp.ndarray, tokens: jnp.ndarray, points: jnp.ndarray, *, sem_top: int = 30,
                    sem_bottom: int = 200, sem_pos_margin: float = 0.9, sem_neg_margin: float = 0.1,
                    mot_top: int = 10, mot_bottom: int = 50, mot_margin: float = 1.0) -> dict[str, jnp.ndarray]:
  """The semantic and motion losses (see the module docstring); attention [b, t n, t n], tokens [b, t, n, c]."""
  b, t, n, _ = tokens.shape
  p = points.shape[0]
  all_rows = attention.reshape(b, t, n, t * n)
  rows = all_rows[:, :, points]                                             # b t p (t n)
  # Descending order within each key frame; a stable sort of the negated values breaks ties by index.
  order = jnp.argsort(-jax.lax.stop_gradient(rows).reshape(b, t, p, t, n), axis=-1, stable=True)  # b t p t' n

  unit = _normalize(tokens, 2)
  cos = jnp.einsum('btpc,bsnc->btpsn', unit[:, :, points], unit)          # b t p t' n
  cos_pos = jnp.take_along_axis(cos, order[..., :sem_top], axis=-1)
  cos_neg = jnp.take_along_axis(cos, order[..., n - sem_bottom:], axis=-1)
  semantic = jnp.mean(jax.nn.relu(sem_pos_margin - cos_pos)) + jnp.mean(jax.nn.relu(cos_neg - sem_neg_margin))

  own = jnp.moveaxis(jnp.diagonal(order, axis1=1, axis2=3), -1, 1)          # b t p n: ranks in its own frame
  q_row = jax.lax.stop_gradient(_normalize(rows, 1))                         # b t p (t n)
  log_rows = jnp.log(_normalize(all_rows, 1) + 1e-10)                        # b t n (t n)
  score = jnp.einsum('btpc,btnc->btpn', q_row, log_rows)                     # b t p n
  s_pos = jnp.take_along_axis(score, own[..., :mot_top], axis=-1)            # b t p top
  s_neg = jnp.take_along_axis(score, own[..., n - mot_bottom:], axis=-1)     # b t p bottom
  weight = jax.nn.softmax(jnp.sum(q_row * jnp.log(q_row + 1e-10), -1), axis=-1)  # b t p
  hinge = jax.nn.relu(s_neg[..., :, None] - s_pos[..., None, :] + mot_margin)    # b t p bottom top
  motion = jnp.mean(jnp.einsum('btp,btpij->btij', weight, hinge))
  return {'semantic': semantic, 'motion': motion, 'total': semantic + motion}
