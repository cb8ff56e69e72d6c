"""SOLV's spatial binder: invariant slot attention (Biza et al. 2023) with a learned, shared initialisation.

Per frame (frames folded into the batch axis, b = clips x F), with D = slot_dim, S = num_slots:
  x = LN(Dense(ReLU(Dense(LN(x)))))                        input projection, [b n' c] -> [b n' D]
  G = grid[token_indices]                                   positions of the kept tokens, [b n' 2] (x, y)
  z, S_p, S_s = the learned slots, positions, scales        [b k D], [b k 2], [b k 2]
  slot_iters + 1 passes (the last one attention only, `final_attention_pass`):
    z_prev = z; z = LN(z)
    rel = (G - S_p) / (S_s * grid_scale)                    one relative grid per slot, [b k n' 2]
    k = f(K x + g(rel)), v = f(V x + g(rel))                keys and values per slot, [b k n' D]
    A = softmax_slots(Q(z) . k / sqrt D) + eps; W = A / sum_tokens A
    U = sum_n W v; S_p = sum_n W G; S_s = sqrt(sum_n W (G - S_p)^2)
    z = GRU(z_prev, U); z = z + Dropout(MLP(LN(z)))         (update passes only; order: `update_order`)
  slots = Dense(LN(z))
The last pass's W (normalised over tokens, eps included) is returned as the attention. G is the trained
coordinate grid (token n = row * W + column, values in [-1, 1]); with `trainable_grid=False` a constant.

Params: grid [n, 2] (if trainable), slots [k, D], positions [k, 2] (S_p), scales [k, 2] (S_s), input_norm,
input_fc1, input_fc2, input_out_norm, query, key, value (no bias), grid_embed (g), kv_fc1, kv_fc2 (f),
slot_norm, gru, mlp_norm, mlp_fc1, mlp_fc2, output.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax.models.solv import config as config_lib
from gsa_jax.models.solv import layers


def coordinate_grid(rows: int, cols: int) -> jnp.ndarray:
  """[rows * cols, 2] (x, y) in [-1, 1], token n = row * cols + col (torch meshgrid indexing='xy')."""
  ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, rows), jnp.linspace(-1.0, 1.0, cols), indexing='ij')
  return jnp.stack([xs, ys], axis=-1).reshape(rows * cols, 2)


def slot_statistics(weights: jnp.ndarray, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Weighted centroid and standard deviation per slot.

  Args:
    weights: [b, k, n] attention, normalised over n.
    positions: [b, n, 2] token positions.
  Returns:
    S_p [b, k, 2] = sum_n w G and S_s [b, k, 2] = sqrt(sum_n w (G - S_p)^2) (no eps, as the code).
  """
  centre = jnp.einsum('bkn,bnc->bkc', weights, positions)
  spread = jnp.square(positions[:, None, :, :] - centre[:, :, None, :])          # [b k n 2]
  scale = jnp.sqrt(jnp.einsum('bkn,bknc->bkc', weights, spread))
  return centre, scale


def _slot_init(num_slots: int, slot_dim: int):
  """xavier_uniform of torch on a (1, S, D) tensor: fan_in = S * D, fan_out = D."""
  return layers.uniform((6.0 / ((num_slots + 1) * slot_dim)) ** 0.5)


class SpatialBinder(nn.Module):
  """Invariant slot attention on every frame: features [b, n', c] -> slots [b, k, D] (see module doc)."""
  settings: config_lib.Settings

  @nn.compact
  def __call__(self, x: jnp.ndarray, token_indices: jnp.ndarray, *, train: bool) -> dict[str, jnp.ndarray]:
    """Args: x [b, n', c] ViT features of the kept tokens, token_indices [b, n'] int in [0, n).

    Returns dict: slots [b, k, D]; attention [b, k, n'] (last pass, normalised over tokens); positions,
    scales [b, k, 2] (S_p, S_s computed from that attention); grid [n, 2] (the full coordinate grid);
    token_positions [b, n', 2] (grid[token_indices]).
    """
    s = self.settings
    k, d, dt = s.num_slots, s.slot_dim, s.compute_dtype
    b, _, c = x.shape
    rows, cols = s.token_grid
    if s.trainable_grid:
      grid = self.param('grid', lambda key, shape: coordinate_grid(rows, cols), (rows * cols, 2))
    else:
      grid = coordinate_grid(rows, cols)
    slots0 = self.param('slots', _slot_init(k, d), (k, d))
    positions0 = self.param('positions', nn.initializers.normal(0.02), (k, 2))
    scales0 = self.param('scales', nn.initializers.normal(0.02), (k, 2))

    # Input projection (once per frame; the same tokens for every slot).
    if s.input_norm:
      x = layers.layer_norm('input_norm')(x)
    x = nn.relu(layers.dense(c, c, dtype=dt, name='input_fc1')(x))
    x = layers.layer_norm('input_out_norm')(layers.dense(d, c, dtype=dt, name='input_fc2')(x))  # [b n' D]

    query = layers.dense(d, d, use_bias=False, dtype=dt, name='query')
    grid_embed = layers.dense(d, 2, dtype=dt, name='grid_embed')
    kv_fc1 = layers.dense(d, d, dtype=dt, name='kv_fc1')
    kv_fc2 = layers.dense(d, d, dtype=dt, name='kv_fc2')
    slot_norm = layers.layer_norm('slot_norm')
    if s.gru == 'torch':
      gru = layers.TorchGRUCell(d, dtype=dt, name='gru')
    else:
      gru = layers.flax_gru_cell(d, dtype=dt, name='gru')
    mlp_norm = layers.layer_norm('mlp_norm')
    mlp_fc1 = layers.dense(s.mlp_ratio * d, d, dtype=dt, name='mlp_fc1')
    mlp_fc2 = layers.dense(d, s.mlp_ratio * d, dtype=dt, name='mlp_fc2')
    dropout = nn.Dropout(s.dropout, deterministic=not train)

    def mlp(z):
      return z + dropout(mlp_fc2(nn.relu(mlp_fc1(mlp_norm(z)))))

    # K x and V x once per frame; g(rel) and f per slot.
    kx = layers.dense(d, d, use_bias=False, dtype=dt, name='key')(x)[:, None]      # [b 1 n' D]
    vx = layers.dense(d, d, use_bias=False, dtype=dt, name='value')(x)[:, None]
    token_positions = grid[token_indices]                                           # [b n' 2]
    z = jnp.broadcast_to(slots0, (b, k, d))
    centre = jnp.broadcast_to(positions0, (b, k, 2))
    scale = jnp.broadcast_to(scales0, (b, k, 2))
    passes = s.slot_iters + (1 if s.final_attention_pass else 0)
    weights = None
    for t in range(passes):
      z_prev = z
      rel = (token_positions[:, None] - centre[:, :, None]) / (scale[:, :, None] * s.grid_scale)  # [b k n' 2]
      g = grid_embed(rel)                                                           # [b k n' D]
      keys = kv_fc2(nn.relu(kv_fc1(kx + g)))
      values = kv_fc2(nn.relu(kv_fc1(vx + g)))
      q = query(slot_norm(z))                                                       # [b k D]
      logits = jnp.einsum('bkd,bknd->bkn', q, keys).astype(jnp.float32) * d ** -0.5
      attn = jax.nn.softmax(logits, axis=1) + s.attention_eps                       # softmax over slots
      weights = attn / jnp.sum(attn, axis=-1, keepdims=True)                        # normalised over tokens
      updates = jnp.einsum('bkn,bknd->bkd', weights.astype(values.dtype), values).astype(jnp.float32)
      centre, scale = slot_statistics(weights, token_positions)
      if t < s.slot_iters:
        if s.update_order == 'gru_mlp':
          z, _ = gru(z_prev, updates)
          z = mlp(z)
        else:
          z, _ = gru(mlp(z_prev), updates)
        z = z.astype(jnp.float32)
    slots = layers.dense(d, d, dtype=dt, name='output')(slot_norm(z)).astype(jnp.float32)
    return dict(slots=slots, attention=weights, positions=centre, scales=scale, grid=grid,
                token_positions=token_positions)
