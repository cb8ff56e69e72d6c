"""Multi-scale feature fusion module (MFFM), official `Multi_Scale_Feature_Fusion_Module`.

An ASPP-like block with cascaded dilated branches (reference §2.2):

  x0 = BN(conv1x1(x))                        branch0 (BasicConv2d: conv without bias + BN, NO ReLU)
  sq = conv1x1(x) + bias                     in_conv
  x1 = BN(conv3x3, dilation 6)(sq)           branch1
  x2 = BN(conv3x3, dilation 12)(sq + x1)     branch2
  x3 = BN(conv3x3, dilation 18)(sq + x2)     branch3
  out = ReLU(x0 + x3)

Padding is explicit zeros (= dilation), so on a 12x12 map the far taps of dilation 18 read zeros,
as in PyTorch. Param names: branch{0..3}/{conv,bn}, in_conv.
BatchNorm is `gsa_jax.layers.BatchNorm` (two-pass batch variance; `running_var` 'unbiased' folds the
unbiased batch variance into the running one as torch.nn.BatchNorm2d, 'biased' as flax.linen.BatchNorm).
"""

import flax.linen as nn
import jax.numpy as jnp

from gsa_jax import layers

# PyTorch kaiming_normal_(mode='fan_in', nonlinearity='relu'): N(0, 2 / fan_in), not truncated.
# The official `weight_init` gives it (and zero biases) to every conv outside the encoders and FATs.
kaiming_normal = layers.kaiming_normal
conv = layers.conv  # stride-1 'same' conv, explicit zero padding, Kaiming-normal kernel, zero bias.

BN_MOMENTUM = layers.BN_MOMENTUM  # PyTorch momentum 0.1
BN_EPSILON = layers.BN_EPSILON


def batch_norm(train: bool, dtype: jnp.dtype, name: str, running_var: str = 'unbiased') -> layers.BatchNorm:
  """BatchNorm over [..., c] with PyTorch's momentum 0.1 and eps 1e-5 (batch statistics when train)."""
  return layers.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                          running_var=running_var, dtype=dtype, name=name)


class BasicConv2d(nn.Module):
  """conv (no bias) + BatchNorm, no activation (the official forward never applies its ReLU)."""
  features: int
  kernel: int = 1
  dilation: int = 1
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    x = conv(self.features, self.kernel, dilation=self.dilation, use_bias=False, dtype=self.dtype,
             name='conv')(x)
    return batch_norm(train, self.dtype, 'bn', self.running_var)(x)


class MFFM(nn.Module):
  """[b, h, w, c_in] -> [b, h, w, features]."""
  features: int = 128
  dilations: tuple[int, int, int] = (6, 12, 18)
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    basic = lambda kernel, dilation, name: BasicConv2d(self.features, kernel, dilation, self.running_var,
                                                       dtype=self.dtype, name=name)
    x0 = basic(1, 1, 'branch0')(x, train=train)
    sq = conv(self.features, 1, dtype=self.dtype, name='in_conv')(x)
    y = sq
    for i, d in enumerate(self.dilations):
      y = basic(3, d, f'branch{i + 1}')(y, train=train)
      if i + 1 < len(self.dilations):
        y = sq + y
    return nn.relu(x0 + y)
