"""RGB + flow fusion (`Res`) and the CNN decoder with cumulative heads (reference §2.8-2.9).

Res (top-level fuse1..4) is `gsa_jax.layers.Res`: y = cat[x_rgb, x_flow] (2c);
  y = ReLU(y + conv(BN-ReLU(conv(y)))) with 3x3 2c->2c convs with bias; then conv3x3 2c->c (bias) + BN
  + ReLU. Params: conv1a, bn1, conv1b, conv2, bn2.
Fusion(x_low, x_high) = ReLU(BN(conv3x3 no bias(cat[x_low, x_low * x_high]))) 2c->c.
  Params: cat_conv/{conv,bn} (the official unused conv_upsample is left out).
Decoder: x2, x3, x4 upsampled to x1's 1/4 grid (bilinear, align_corners=False);
  s4 = x4; s3 = fusion3(x3, s4); s2 = fusion2(x2, s3); s1 = fusion1(x1, s2);
  cumulative logits m4 = head4(s4), m3 = head3(s3) + m4, m2 = head2(s2) + m3, m1 = head1(s1) + m2
  (heads: conv3x3 c->1 with bias; official linearr8..5 = head4..1). Returns (m1, m2, m3, m4) at 1/4.
Every BatchNorm is `gsa_jax.layers.BatchNorm`; `running_var` as in mffm.py.
"""

import flax.linen as nn
import jax.numpy as jnp

from gsa_jax import layers
from gsa_jax import ops
from gsa_jax.models.gsanet import mffm

Res = layers.Res  # Res(features, running_var=..., dtype=...)(x_rgb, x_flow, train=...)


class Fusion(nn.Module):
  """ReLU(BN(conv3x3(cat[x_low, x_low * x_high]))): [b,h,w,c] x 2 -> [b,h,w,features]."""
  features: int = 128
  dtype: jnp.dtype = jnp.float32
  running_var: str = 'unbiased'

  @nn.compact
  def __call__(self, x_low: jnp.ndarray, x_high: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    y = jnp.concatenate([x_low, x_low * x_high], axis=-1)
    y = mffm.BasicConv2d(self.features, 3, running_var=self.running_var, dtype=self.dtype,
                         name='cat_conv')(y, train=train)
    return nn.relu(y)


class Decoder(nn.Module):
  """(x1 [b,h/4,w/4,c], x2 at 1/8, x3 at 1/16, x4 at 1/32) -> 4 cumulative logit maps [b,h/4,w/4,1]."""
  features: int = 128
  dtype: jnp.dtype = jnp.float32
  running_var: str = 'unbiased'

  @nn.compact
  def __call__(self, x1: jnp.ndarray, x2: jnp.ndarray, x3: jnp.ndarray, x4: jnp.ndarray, *,
               train: bool) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    size = x1.shape[1:3]
    x2, x3, x4 = (ops.resize_bilinear(x, size) for x in (x2, x3, x4))    # all [b h/4 w/4 c]
    fusion = lambda i: Fusion(self.features, self.dtype, self.running_var, name=f'fusion{i}')
    s4 = x4
    s3 = fusion(3)(x3, s4, train=train)
    s2 = fusion(2)(x2, s3, train=train)
    s1 = fusion(1)(x1, s2, train=train)
    head = lambda i: mffm.conv(1, 3, dtype=self.dtype, name=f'head{i}')
    m4 = head(4)(s4)
    m3 = head(3)(s3) + m4
    m2 = head(2)(s2) + m3
    m1 = head(1)(s1) + m2
    return m1, m2, m3, m4
