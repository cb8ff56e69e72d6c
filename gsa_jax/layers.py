"""Layers shared by the models ported from PyTorch: BatchNorm with PyTorch's statistics, conv helpers,
and a softmax whose gradient stays accurate in float32 when it saturates (`softmax`).

BatchNorm here differs from `flax.linen.BatchNorm` in two ways, both to train as PyTorch does:
  * the running variance folds in the *unbiased* batch variance (x n / (n - 1), n = the number of
    values per channel in the batch), as `torch.nn.BatchNorm2d` does, when running_var='unbiased'
    (the default); running_var='biased' folds in the biased one, as `flax.linen.BatchNorm`;
  * the batch variance is computed in two passes, mean((x - mean)^2) in float32, not E[x^2] - E[x]^2
    (Flax's fast variance loses digits to cancellation when |mean| >> std).
Normalisation itself always uses the biased batch variance (both libraries do). The variable names are
Flax's ('scale', 'bias' in params; 'mean', 'var' in batch_stats), so checkpoints and weight converters
see the same tree as with nn.BatchNorm. Under `jax.jit` over a batch-sharded mesh the batch statistics
are those of the global batch (PyTorch's SyncBatchNorm, not DataParallel's per-GPU statistics).
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

RUNNING_VARIANCES = ('unbiased', 'biased')
BN_MOMENTUM = 0.9  # Flax convention: running = 0.9 running + 0.1 batch (PyTorch momentum 0.1).
BN_EPSILON = 1e-5

# PyTorch kaiming_normal_(mode='fan_in', nonlinearity='relu'): N(0, 2 / fan_in), not truncated.
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class BatchNorm(nn.Module):
  """BatchNorm over every axis but the last ([..., c]); see the module docstring."""
  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  running_var: str = 'unbiased'  # 'unbiased' (PyTorch) | 'biased' (flax.linen.BatchNorm)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.running_var not in RUNNING_VARIANCES:
      raise ValueError(f'BatchNorm running_var={self.running_var!r}; choose one of {RUNNING_VARIANCES}.')
    features = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))
    scale = self.param('scale', nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (features,), self.param_dtype)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axes)
      var = jnp.mean(jnp.square(xf - mean), axes)
      if not self.is_initializing():
        n = math.prod(x.shape[:-1])
        folded = var * (n / (n - 1)) if self.running_var == 'unbiased' and n > 1 else var
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean)
        ra_var.value = m * ra_var.value + (1.0 - m) * jax.lax.stop_gradient(folded)
    inv = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
    y = (x.astype(jnp.float32) - mean) * inv + bias.astype(jnp.float32)
    return y.astype(self.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def softmax(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
  """jax.nn.softmax in at least float32, with a gradient that stays accurate when it saturates.

  The gradient of y = softmax(x) for a cotangent g is y * (g - <y, g>). When one entry y_k is close
  to 1, <y, g> ~ g_k and the k-th entry is the difference of two nearly equal numbers: in float32 it
  keeps only the digits above 1e-7 |g|, while the true value can be far smaller (the others are
  ~y_j). Shifting g by its value at the largest y first (exact, since the rows of the softmax
  Jacobian sum to zero) makes that entry 0 - <y, g - g_k>, a sum of small terms: no cancellation.
  The forward is jax.nn.softmax's.
  """
  return jax.nn.softmax(_at_least_f32(x), axis=axis)


def _at_least_f32(x: jnp.ndarray) -> jnp.ndarray:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _softmax_fwd(x, axis):
  y = softmax(x, axis)
  return y, y


def _softmax_bwd(axis, y, g):
  g = g.astype(y.dtype)
  top = jnp.argmax(y, axis=axis, keepdims=True)
  g = g - jnp.take_along_axis(g, top, axis=axis)
  return (y * (g - jnp.sum(y * g, axis=axis, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def conv(features: int, kernel: int, *, dilation: int = 1, use_bias: bool = True,
         kernel_init=kaiming_normal, dtype: jnp.dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """A stride-1 'same' conv with explicit zero padding (dilation * (kernel // 2)), as PyTorch's padding=."""
  pad = dilation * (kernel // 2)
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                 kernel_dilation=(dilation, dilation), use_bias=use_bias, kernel_init=kernel_init,
                 bias_init=nn.initializers.zeros, dtype=dtype, name=name)


class Res(nn.Module):
  """Fuses two streams at one scale (GSA-Net's and DPA's `Res`): [b,h,w,c] x 2 -> [b,h,w,features].

  y = cat[a, b] (2c); y = ReLU(y + conv3x3(ReLU(BN(conv3x3(y))))) with 2c -> 2c convs (bias); then
  ReLU(BN(conv3x3 2c -> features (bias))). Params: conv1a, bn1, conv1b, conv2, bn2.
  """
  features: int = 128
  kernel_init: Any = kaiming_normal
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, a: jnp.ndarray, b: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    bn = lambda name: BatchNorm(not train, running_var=self.running_var, dtype=self.dtype, name=name)
    cv = lambda features, name: conv(features, 3, kernel_init=self.kernel_init, dtype=self.dtype, name=name)
    y = jnp.concatenate([a, b], axis=-1)                                    # [b h w 2c]
    wide = y.shape[-1]
    z = nn.relu(bn('bn1')(cv(wide, 'conv1a')(y)))
    y = nn.relu(y + cv(wide, 'conv1b')(z))
    return nn.relu(bn('bn2')(cv(self.features, 'conv2')(y)))
