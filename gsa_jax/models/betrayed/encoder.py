"""Betrayed by Attention's frozen encoder: per frame, the last ViT block's keys and the CLS output token.

  Encoder(variant, projection_patch=8, projection_dim=384, dtype=float32)(images [b, h, w, 3], pos_embed=None)
      -> (keys [b, n, c], cls [b, c]), float32, under stop_gradient (the encoder is frozen).

  variant a DINO / DINOv2 variant of gsa_jax.backbones.vit ('dino_vits8' is the released one; 'dino_vits16',
      'dino_vitb8', 'dinov2_vits14', 'dinov2_vitb14' are the appendix's alternatives). keys = the key
      projection of the last block, channels c:2c of qkv(norm1(x)) with the bias, heads concatenated
      head-major, patch tokens only (n = h/p * w/p, row-major); cls = the last block's output CLS token
      before the final LayerNorm, which is never applied. Images are normalised, h and w multiples of the
      patch size p. `pos_embed` is an optional precomputed position embedding (vit.prepare_pos_embed on
      params['vit']) for a fixed input size.
  variant 'patch_projection': the CPU demo's stand-in, a fixed random p x p stride-p conv to projection_dim
      channels; its tokens are the keys and cls is their mean.

The ViT runs all of its last block, although only that block's keys (before its attention) and its output
CLS token are used: the patch tokens' attention output and MLP are computed and dropped.

Params: encoder/vit/... (gsa_jax.backbones.vit's tree, final norm included) | encoder/projection/{kernel, bias}.
Users: the Betrayed-by-Attention system (gsa_jax/models/betrayed), its weight converter (weights.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax import errors
from gsa_jax.backbones import vit as vit_lib

PATCH_PROJECTION = 'patch_projection'


def check_variant(variant: 'str | vit_lib.ViTConfig') -> None:
  """Raises a ConfigError unless `variant` is 'patch_projection', a key of vit.VIT_CONFIGS or a ViTConfig."""
  if isinstance(variant, vit_lib.ViTConfig) or variant == PATCH_PROJECTION or variant in vit_lib.VIT_CONFIGS:
    return
  raise errors.ConfigError(f'Unknown Betrayed-by-Attention encoder variant {variant!r}: choose '
                           f'{PATCH_PROJECTION!r} (the CPU stand-in) or a ViT of {sorted(vit_lib.VIT_CONFIGS)} '
                           "('dino_vits8' is the released backbone).")


def feature_dim(variant: 'str | vit_lib.ViTConfig', projection_dim: int = 384) -> int:
  """Channels c of the keys and the CLS token of `variant`."""
  check_variant(variant)
  return projection_dim if variant == PATCH_PROJECTION else vit_lib.get_config(variant).width


class Encoder(nn.Module):
  """The frozen encoder (module doc): images [b, h, w, 3] -> (keys [b, n, c], cls [b, c])."""
  variant: 'str | vit_lib.ViTConfig'
  projection_patch: int = 8
  projection_dim: int = 384
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, pos_embed: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    check_variant(self.variant)
    if self.variant == PATCH_PROJECTION:
      p = self.projection_patch
      conv = nn.Conv(self.projection_dim, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                     kernel_init=nn.initializers.normal((p * p * 3) ** -0.5), name='projection')
      keys = conv(images).reshape(images.shape[0], -1, self.projection_dim).astype(jnp.float32)  # [b n c]
      cls = keys.mean(axis=1)                                                                     # [b c]
    else:
      cfg = vit_lib.get_config(self.variant)
      out = vit_lib.VisionTransformer(cfg, dtype=self.dtype, name='vit')(images, pos_embed=pos_embed)
      keys, cls = out['keys'], out['cls'].astype(jnp.float32)                                     # [b n c], [b c]
    return jax.lax.stop_gradient(keys), jax.lax.stop_gradient(cls)
