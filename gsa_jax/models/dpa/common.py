"""Pieces shared by the DPA modules: initialisers, the PyTorch-default Linear, OCR prototypes.

  conv_initializer('normal' | 'kaiming')  the official weights_init N(0, 0.01) | Kaiming-normal fan_in
  Linear(features)                        nn.Linear with PyTorch's default init (kernel and bias
                                          U(+-1/sqrt(fan_in))); params 'kernel' [in, out], 'bias'
  ocr_prototypes(x)                       x [b, h, w, c] -> [b, m=c, c]: prototype j = sum_p S[p, j] x[p],
                                          S = softmax over the h*w positions of channel j (official
                                          get_ocr_vector, paper eq. 1-2); S under stop_gradient (official)
  correlation_maps(x, prototypes)         cosine of every pixel with every prototype [b, h, w, m]
                                          (official get_correlation_map, paper eq. 3 / 11)
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax import layers
from gsa_jax import ops

normal_001 = nn.initializers.normal(0.01)
CONV_INITIALIZERS = {'normal': normal_001, 'kaiming': layers.kaiming_normal}


def conv_initializer(name: str):
  if name not in CONV_INITIALIZERS:
    raise ValueError(f'Unknown conv init {name!r}; choose one of {tuple(CONV_INITIALIZERS)} '
                     '(--config.model.conv_init).')
  return CONV_INITIALIZERS[name]


class Linear(nn.Module):
  """[..., c_in] -> [..., features], initialised as torch.nn.Linear (kaiming_uniform a=sqrt(5), bias U)."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    fan_in = x.shape[-1]
    bound = 1.0 / math.sqrt(fan_in)
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    kernel = self.param('kernel', uniform, (fan_in, self.features))
    bias = self.param('bias', uniform, (self.features,))
    y = jnp.einsum('...i,io->...o', x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


def ocr_prototypes(x: jnp.ndarray, stop_gradient: bool = True) -> jnp.ndarray:
  """x [b, h, w, c] -> prototypes [b, m, c] with m = c (row j pools x with channel j's spatial softmax)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h * w, c).astype(jnp.float32)                 # [b n c]
  weights = jax.nn.softmax(x, axis=1)                            # [b n m]: softmax over positions
  if stop_gradient:
    weights = jax.lax.stop_gradient(weights)
  return jnp.einsum('bnm,bnc->bmc', weights, x)


def correlation_maps(x: jnp.ndarray, prototypes: jnp.ndarray, eps: float) -> jnp.ndarray:
  """x [b, h, w, c], prototypes [b, m, c] -> cosine maps [b, h, w, m] in [-1, 1] (float32)."""
  return ops.cosine_maps(x.astype(jnp.float32), prototypes.astype(jnp.float32), eps)


class ConvBNReLU(nn.Module):
  """act(BN(conv)) (the official Sequential(Conv2d, BatchNorm2d, ReLU)): [b, h, w, c] -> [b, h, w, features].

  Params: conv, bn. activation: 'relu' | 'leaky_relu' (slope 0.2, DGCNN's EdgeConv) | 'none'.
  """
  features: int
  kernel: int = 1
  dilation: int = 1
  use_bias: bool = True
  activation: str = 'relu'
  kernel_init: Any = normal_001
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    x = layers.conv(self.features, self.kernel, dilation=self.dilation, use_bias=self.use_bias,
                    kernel_init=self.kernel_init, dtype=self.dtype, name='conv')(x)
    x = layers.BatchNorm(not train, running_var=self.running_var, dtype=self.dtype, name='bn')(x)
    if self.activation == 'relu':
      return nn.relu(x)
    if self.activation == 'leaky_relu':
      return nn.leaky_relu(x, 0.2)
    return x
