"""SOLV's decoder: relative-grid embedding, spatial broadcast, a shared MLP, alpha-masked reconstruction.

For the merged centre slots c' [b, k, D] and their attention over the kept tokens [b, k, n']:
  S_p, S_s = weighted centroid / std of the kept tokens' positions under the attention
  rel = (grid - S_p) / (S_s * grid_scale)            on all n tokens of the frame, [b k n 2]
  x = c' (broadcast to n) + pos_embed + grid_embed(rel)                        [b k n D]
  y, alpha = mlp(x): (decoder_layers - 1) x (Dense hidden, ReLU), Dense to c + 1   [b k n c], [b k n]
  m = softmax over the valid slots of alpha (0 for empty rows); reconstruction = sum_k m y   [b n c]

Params: pos_embed [n, D] (torch SOLV.pos_dec), grid_embed (torch s_bind.h), mlp/fc1 .. mlp/fc{L}
(torch dec.layer1 .. layer5).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax.models.solv import binder as binder_lib
from gsa_jax.models.solv import config as config_lib
from gsa_jax.models.solv import layers


class DecoderMLP(nn.Module):
  """[..., D] -> [..., c + 1]: (num_layers - 1) x (Dense hidden, ReLU), then Dense (no norm, no dropout)."""
  hidden: int
  out_features: int
  num_layers: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = x.shape[-1]
    for i in range(self.num_layers - 1):
      x = nn.relu(layers.dense(self.hidden, width, dtype=self.dtype, name=f'fc{i + 1}')(x))
      width = self.hidden
    return layers.dense(self.out_features, width, dtype=self.dtype, name=f'fc{self.num_layers}')(x)


def relative_grid(grid: jnp.ndarray, centre: jnp.ndarray, scale: jnp.ndarray, grid_scale: float) -> jnp.ndarray:
  """grid [n, 2], S_p and S_s [b, k, 2] -> (grid - S_p) / (S_s * grid_scale) [b, k, n, 2]."""
  return (grid[None, None] - centre[:, :, None]) / (scale[:, :, None] * grid_scale)


class Decoder(nn.Module):
  """Merged slots -> reconstruction of the full centre-frame features and per-slot masks (module doc)."""
  settings: config_lib.Settings

  @nn.compact
  def __call__(self, slots: jnp.ndarray, attention: jnp.ndarray, token_positions: jnp.ndarray,
               grid: jnp.ndarray, valid: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Args:
      slots: [b, k, D] merged slots; attention: [b, k, n'] their attention over the kept tokens;
      token_positions: [b, n', 2] the grid positions paired with that attention; grid: [n, 2] the full
      coordinate grid; valid: [b, k] bool, False for empty rows.
    Returns dict: reconstruction [b, n, c], masks [b, k, n] (softmax over the valid slots, 0 elsewhere),
      slot_features [b, k, n, c] (each slot's decoded features), positions / scales [b, k, 2] (S_p, S_s).
    """
    s = self.settings
    d, c, dt = s.slot_dim, s.feature_dim, s.compute_dtype
    n = grid.shape[0]
    centre, scale = binder_lib.slot_statistics(attention, token_positions)
    rel = relative_grid(grid, centre, scale, s.grid_scale)                          # [b k n 2]
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (n, d))
    x = (slots[:, :, None, :] + pos) + layers.dense(d, 2, dtype=dt, name='grid_embed')(rel)   # [b k n D]
    mlp_cls = nn.remat(DecoderMLP) if s.remat else DecoderMLP
    out = mlp_cls(s.decoder_hidden, c + 1, s.decoder_layers, dtype=dt, name='mlp')(x).astype(jnp.float32)
    features, alpha = out[..., :c], out[..., c]                                    # [b k n c], [b k n]
    alpha = jnp.where(valid[:, :, None], alpha, -jnp.inf)
    masks = jnp.where(valid[:, :, None], jax.nn.softmax(alpha, axis=1), 0.0)
    reconstruction = jnp.einsum('bkn,bknc->bnc', masks, features)
    return dict(reconstruction=reconstruction, masks=masks, slot_features=features, positions=centre,
                scales=scale)
