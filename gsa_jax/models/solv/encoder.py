"""SOLV's frozen visual encoder and its token drop.

  Encoder(variant, ...)(images [b, h, w, 3], keep=None) -> features [b, n', c]
      variant a DINO / DINOv2 variant of gsa_jax.backbones.vit: the last block's patch tokens before the final
      LayerNorm, without CLS (released: DINOv2 ViT-B/14, `x_prenorm[:, 1:]`). `keep` [b, n'] drops tokens
      after the position embedding, before the blocks: every block then runs on CLS + the kept tokens (the
      released token drop). variant 'patch_projection': a fixed random linear map of p x p RGB patches (the
      CPU demo's stand-in for the ViT; token drop is a gather).
  kept_token_count(n, ratio)         int(n (1 - ratio)), as released (432 of 864 at ratio 0.5).
  sample_kept_tokens(key, b, n, k)   [b, k] int32 sorted random token subsets, one per row (torch.randperm
                                     (n)[:k] sorted, per frame).

Params: encoder/vit/... (the ViT's tree, gsa_jax.backbones.vit), encoder/mask_token [1, c] for DINOv2 (unused
by any forward, as in the official model: kept so the frozen encoder holds the official backbone's tensors
one to one) | encoder/projection/{kernel, bias} for 'patch_projection'. All frozen.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax.backbones import vit as vit_lib
from gsa_jax.models.solv import config as config_lib


def kept_token_count(num_tokens: int, drop_ratio: float) -> int:
  """Tokens kept per frame in training: int(n (1 - ratio)) (at least 1)."""
  return max(1, int(num_tokens * (1.0 - drop_ratio)))


def sample_kept_tokens(key: jax.Array, rows: int, num_tokens: int, kept: int) -> jnp.ndarray:
  """[rows, kept] int32: for each row an independent uniform subset of 0..n-1, sorted ascending."""
  if kept >= num_tokens:
    return jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32), (rows, num_tokens))
  noise = jax.random.uniform(key, (rows, num_tokens))
  chosen = jnp.argsort(noise, axis=-1)[:, :kept]                                    # a random permutation's head
  return jnp.sort(chosen, axis=-1).astype(jnp.int32)


class Encoder(nn.Module):
  """The frozen encoder (module doc): images [b, h, w, 3] (ImageNet-normalised) -> features [b, n', c]."""
  variant: str
  dtype: jnp.dtype = jnp.float32
  projection_patch: int = 8
  projection_dim: int = 64

  @nn.compact
  def __call__(self, images: jnp.ndarray, keep: jnp.ndarray | None = None) -> jnp.ndarray:
    if self.variant == config_lib.PATCH_PROJECTION:
      p = self.projection_patch
      conv = nn.Conv(self.projection_dim, (p, p), strides=(p, p), padding='VALID',
                     kernel_init=nn.initializers.normal((p * p * 3) ** -0.5), name='projection')
      tokens = conv(images).reshape(images.shape[0], -1, self.projection_dim).astype(jnp.float32)  # [b n c]
      if keep is not None:
        tokens = jnp.take_along_axis(tokens, keep[..., None].astype(jnp.int32), axis=1)
      return jax.lax.stop_gradient(tokens)
    cfg = vit_lib.get_config(self.variant)
    if cfg.layer_scale:  # DINOv2's mask token: no forward reads it.
      self.param('mask_token', nn.initializers.zeros, (1, cfg.width), jnp.float32)
    out = vit_lib.VisionTransformer(cfg, dtype=self.dtype, name='vit')(images, keep=keep)
    return jax.lax.stop_gradient(out['patch_tokens'].astype(jnp.float32))
