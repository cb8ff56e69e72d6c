"""The DPA decoder (RGB low-level features only), official rgb_merge_co_*, rgb_get_pred_4, rgb_refine_*.

  feat56 = merge56(t5, up(t6 -> t5))                           Res 2D -> D                [b, h/16, w/16, D]
  feat45 = merge45_out(merge45(t4, up(feat56 -> t4)))          Res 2D -> D, 1x1 D -> 32   [b, h/8, w/8, 32]
  map4 = sigmoid(pred4(feat45))                                1x1 32 -> 1                [b, h/8, w/8, 1]
  refine3(f3), refine2(f2), refine1(f1): DecoderBlock, ALL gated by map4 (not by the previous block's map)
DecoderBlock(low, map, old): map and old resized to low's size; y = cat[cmprs(low) * map (64), old (32)];
  y = ReLU(BN(conv3x3 96 -> 96)); y = ReLU(BN(conv3x3 96 -> 32)); returns (y, sigmoid(pred(y))).
  Params: cmprs, block1/{conv, bn}, block2/{conv, bn}, pred.
Every resize is bilinear with align_corners=True. Outputs (coarse to fine, final last), probabilities
resized to the input after the sigmoid: (up(map4), up(map3), up(map2), map1).
`width` scales the decoder's own widths 64 / 96 / 32 (1.0 = official; smaller only for tests and CPU demos:
refine1 runs a 96-channel 3x3 conv at the full input resolution, most of a small model's FLOPs).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax import layers
from gsa_jax import ops
from gsa_jax.models.dpa import common

LOW_WIDTH = 64     # cmprs output
FEAT_WIDTH = 32    # decoder feature width (the merge convs run at LOW_WIDTH + FEAT_WIDTH = 96)


def widths(width: float = 1.0) -> tuple[int, int]:
  """(low, feat) widths at a multiplier: (64, 32) at 1.0."""
  return max(1, int(round(LOW_WIDTH * width))), max(1, int(round(FEAT_WIDTH * width)))


def resize(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """Bilinear align_corners=True resize of [b, h, w, c] to size (the official `resize`)."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return ops.resize_bilinear_align_corners(x, tuple(size))


class DecoderBlock(nn.Module):
  """(low [b, h, w, c], map [b, h', w', 1], old [b, h'', w'', 32]) -> ([b, h, w, 32], [b, h, w, 1])."""
  kernel_init: Any = common.normal_001
  width: float = 1.0
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, low: jnp.ndarray, gate: jnp.ndarray, old: jnp.ndarray, *, train: bool):
    size = low.shape[1:3]
    low_width, feat_width = widths(self.width)
    gate, old = resize(gate, size), resize(old, size)
    low = layers.conv(low_width, 1, kernel_init=self.kernel_init, dtype=self.dtype, name='cmprs')(low)
    y = jnp.concatenate([low * gate.astype(low.dtype), old.astype(low.dtype)], axis=-1)   # [b h w 96]
    y = common.ConvBNReLU(low_width + feat_width, 3, kernel_init=self.kernel_init, running_var=self.running_var,
                          dtype=self.dtype, name='block1')(y, train=train)
    y = common.ConvBNReLU(feat_width, 3, kernel_init=self.kernel_init, running_var=self.running_var,
                          dtype=self.dtype, name='block2')(y, train=train)
    pred = layers.conv(1, 1, kernel_init=self.kernel_init, dtype=self.dtype, name='pred')(y)
    return y, jax.nn.sigmoid(pred.astype(jnp.float32))


class Decoder(nn.Module):
  """(t4, t5, t6 [b, h/8.., D], f1, f2, f3 RGB VGG features) -> 4 probability maps [b, h, w, 1]."""
  dim: int = 128
  kernel_init: Any = common.normal_001
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32
  width: float = 1.0

  @nn.compact
  def __call__(self, t4: jnp.ndarray, t5: jnp.ndarray, t6: jnp.ndarray, f1: jnp.ndarray, f2: jnp.ndarray,
               f3: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, ...]:
    res = lambda name: layers.Res(self.dim, kernel_init=self.kernel_init, running_var=self.running_var,
                                  dtype=self.dtype, name=name)
    feat56 = res('merge56')(t5, resize(t6, t5.shape[1:3]), train=train)                  # [b h/16 w/16 D]
    feat45 = res('merge45')(t4, resize(feat56, t4.shape[1:3]), train=train)              # [b h/8 w/8 D]
    feat45 = layers.conv(widths(self.width)[1], 1, kernel_init=self.kernel_init, dtype=self.dtype,
                         name='merge45_out')(feat45)                                   # [b h/8 w/8 32]
    map4 = jax.nn.sigmoid(layers.conv(1, 1, kernel_init=self.kernel_init, dtype=self.dtype,
                                      name='pred4')(feat45).astype(jnp.float32))          # [b h/8 w/8 1]
    block = lambda name: DecoderBlock(self.kernel_init, self.width, self.running_var, self.dtype, name=name)
    feat34, map3 = block('refine3')(f3, map4, feat45, train=train)                       # h/4
    feat23, map2 = block('refine2')(f2, map4, feat34, train=train)                       # h/2
    _, map1 = block('refine1')(f1, map4, feat23, train=train)                            # h
    size = f1.shape[1:3]
    return resize(map4, size), resize(map3, size), resize(map2, size), map1
