"""COMP6 (max-pool to 1/32 + convs) and the DeepLab-v3 ASPP with image pooling (official `ASPP`).

Comp6: [b, h, w, C] -> maxpool 2x2/2 -> conv1x1 C -> D (bias) -> 2 x [conv3x3 D -> D (bias) + BN + ReLU]
  -> [b, h/2, w/2, D]. Params: conv1x1, block1/{conv, bn}, block2/{conv, bn} (official COMP6.1, .2/.3, .5/.6).
ASPP: five branches, each conv (bias) + BN + ReLU: 1x1; 3x3 with dilation (and zero padding) 6, 12, 18;
  image pooling (global mean -> 1x1 -> BN -> ReLU -> broadcast back, the official bilinear upsampling of a
  1x1 map). Concatenated (5D) -> 1x1 -> BN -> ReLU. [b, h, w, D] -> [b, h, w, D]. Params keep the
  official names: conv_1x1_1, bn_conv_1x1_1, conv_3x3_{1,2,3}, bn_conv_3x3_{1,2,3}, conv_1x1_2,
  bn_conv_1x1_2, conv_1x1_3, bn_conv_1x1_3. In training the pooled branch's BN sees one value per
  channel and sample, so it needs a batch of at least 2.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gsa_jax import layers
from gsa_jax.models.dpa import common

ASPP_DILATIONS = (6, 12, 18)


class Comp6(nn.Module):
  """[b, h, w, C] -> [b, h/2, w/2, features]."""
  features: int = 128
  kernel_init: Any = common.normal_001
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = layers.conv(self.features, 1, kernel_init=self.kernel_init, dtype=self.dtype, name='conv1x1')(x)
    for i in (1, 2):
      x = common.ConvBNReLU(self.features, 3, kernel_init=self.kernel_init, running_var=self.running_var,
                            dtype=self.dtype, name=f'block{i}')(x, train=train)
    return x


class ASPP(nn.Module):
  """[b, h, w, c] -> [b, h, w, features]."""
  features: int = 128
  kernel_init: Any = common.normal_001
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    def branch(y, kernel, dilation, conv_name, bn_name):
      y = layers.conv(self.features, kernel, dilation=dilation, kernel_init=self.kernel_init, dtype=self.dtype,
                      name=conv_name)(y)
      return nn.relu(layers.BatchNorm(not train, running_var=self.running_var, dtype=self.dtype, name=bn_name)(y))

    outs = [branch(x, 1, 1, 'conv_1x1_1', 'bn_conv_1x1_1')]
    for i, d in enumerate(ASPP_DILATIONS, start=1):
      outs.append(branch(x, 3, d, f'conv_3x3_{i}', f'bn_conv_3x3_{i}'))
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)   # [b 1 1 c]
    pooled = branch(pooled, 1, 1, 'conv_1x1_2', 'bn_conv_1x1_2')
    outs.append(jnp.broadcast_to(pooled, outs[0].shape))
    return branch(jnp.concatenate(outs, axis=-1), 1, 1, 'conv_1x1_3', 'bn_conv_1x1_3')
