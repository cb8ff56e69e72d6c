"""The Betrayed-by-Attention network: the frozen encoder and the trained spatio-temporal block as one module.

  BetrayedNet(...)(frames [b, t, h, w, 3], train=)  the training forward: per frame the encoder's keys and CLS,
      the block over the clip -> (tokens [b, t, n, c], attention [b, t n, t n]) (the losses' inputs).
  BetrayedNet.encode(images [b, h, w, 3]) -> keys [b, n, c]          the encoder alone (inference, per frame)
  BetrayedNet.query_keys(keys [t, n, c]) -> q, k [t, heads, n, d]    the block's LN1 + qkv (inference)

Params: encoder/... (frozen; gsa_jax.models.betrayed.encoder) and block/... (trained;
gsa_jax.models.betrayed.network.SpatioTemporalBlock).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax.models.betrayed import config as config_lib
from gsa_jax.models.betrayed import encoder as encoder_lib
from gsa_jax.models.betrayed import network

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class BetrayedNet(nn.Module):
  """Encoder + block (module doc)."""
  encoder_variant: str = 'dino_vits8'
  projection_patch: int = 8
  projection_dim: int = 384
  dim: int = 384
  heads: int = 8
  mlp_ratio: float = 4.0
  attn_drop: float = 0.4
  drop: float = 0.1
  ln_eps: float = 1e-5
  dtype: str = 'float32'

  def setup(self):
    self.encoder = encoder_lib.Encoder(self.encoder_variant, projection_patch=self.projection_patch,
                                       projection_dim=self.projection_dim, dtype=DTYPES[self.dtype])
    self.block = network.SpatioTemporalBlock(dim=self.dim, heads=self.heads, mlp_ratio=self.mlp_ratio,
                                             attn_drop=self.attn_drop, drop=self.drop, ln_eps=self.ln_eps)

  def encode(self, images: jnp.ndarray) -> jnp.ndarray:
    keys, _ = self.encoder(images)
    return keys

  def query_keys(self, keys: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    return self.block.query_keys(keys)

  def __call__(self, frames: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    b, t = frames.shape[:2]
    keys, cls = self.encoder(frames.reshape((b * t,) + frames.shape[2:]))
    keys = jax.lax.stop_gradient(keys).reshape(b, t, keys.shape[1], keys.shape[2])
    cls = jax.lax.stop_gradient(cls).reshape(b, t, cls.shape[-1])
    return self.block(keys, cls, train=train)


def build(model) -> BetrayedNet:
  """The network of a config.model section."""
  return BetrayedNet(encoder_variant=model.encoder, projection_patch=int(model.projection_patch),
                     projection_dim=int(model.projection_dim), dim=config_lib.feature_dim(model),
                     heads=int(model.heads), mlp_ratio=float(model.mlp_ratio), attn_drop=float(model.attn_drop),
                     drop=float(model.drop), ln_eps=float(model.ln_eps), dtype=str(model.dtype))
