"""Layers shared by the models ported from PyTorch: BatchNorm with PyTorch's statistics, conv helpers,
and a softmax whose gradient stays accurate in float32 when it saturates (`softmax`).

Convolutions with a faster backward on XLA's CPU backend (same values, same parameters):
  * `conv2d_tap_grad`, used by `conv` (stride-1 'same' convs, dilated or not): the kernel gradient as one
    matrix product per kernel tap, sum_{b,y,x} x[b, y + i d, x + j d, :]^T g[b, y, x, :], instead of XLA's
    backward-filter convolution (1.7x faster for a 3x3 256-channel conv at 64x64, 3.3x at 96x96). The input
    gradient and the forward stay XLA's convolutions. `conv(..., impl='auto')` uses it on the CPU only, for
    convs of at least TAP_GRAD_MIN_WORK multiply-adds per tap.
  * `depthwise_conv3x3`: a 3x3 depthwise conv as 9 shifted multiply-adds with a hand-written backward
    (the same 9 shifts, and the kernel gradient as 9 reductions of a materialised cotangent). Autodiff of
    the shifted form lets XLA fuse the producer of the cotangent (MiT's exact GELU) into each of the 9
    reductions: MiT's Mix-FFN forward + backward ran 5x slower than with this.

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
  return y, (y, jnp.zeros((0,), x.dtype))  # the empty array carries x's dtype (bf16 inputs, f32 softmax)


def _softmax_bwd(axis, res, g):
  y, like = res
  g = g.astype(y.dtype)
  top = jnp.argmax(y, axis=axis, keepdims=True)
  g = g - jnp.take_along_axis(g, top, axis=axis)
  return ((y * (g - jnp.sum(y * g, axis=axis, keepdims=True))).astype(like.dtype),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


CONV_IMPLS = ('auto', 'xla', 'taps')
_NHWC = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # flax.linen.Conv's 2-D layout


def _xla_conv(x, kernel, padding, dilation, precision):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=_NHWC,
                                      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_tap_grad(x: jnp.ndarray, kernel: jnp.ndarray, padding: tuple[tuple[int, int], tuple[int, int]],
                    dilation: tuple[int, int] = (1, 1), precision: Any = None) -> jnp.ndarray:
  """Stride-1 conv of x [b, h, w, c] with kernel [kh, kw, c, o], explicit padding ((top, bottom), (left,
  right)) and kernel dilation: XLA's convolution; its kernel gradient is kh * kw matrix products."""
  return _xla_conv(x, kernel, padding, dilation, precision)


def _conv_fwd(x, kernel, padding, dilation, precision):
  return _xla_conv(x, kernel, padding, dilation, precision), (x, kernel)


def _conv_bwd(padding, dilation, precision, res, g):
  x, kernel = res
  dx = jax.vjp(lambda a: _xla_conv(a, kernel, padding, dilation, precision), x)[1](g)[0]
  (top, bottom), (left, right) = padding
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  h, w = g.shape[1:3]
  dh, dw = dilation
  c = x.shape[-1]
  g2 = g.reshape(-1, g.shape[-1])                                          # [(b h w) o]
  # Flat 2-D products: the 4-D einsum form of the same contraction ran 1.7x slower on XLA:CPU.
  tap = lambda i, j: jnp.matmul(xp[:, i * dh:i * dh + h, j * dw:j * dw + w].reshape(-1, c).T, g2,
                                precision=precision, preferred_element_type=jnp.float32)   # [c o]
  dk = jnp.stack([jnp.stack([tap(i, j) for j in range(kernel.shape[1])]) for i in range(kernel.shape[0])])
  return dx, dk.astype(kernel.dtype)                                       # [b h w c], [kh kw c o]


conv2d_tap_grad.defvjp(_conv_fwd, _conv_bwd)


# 'auto' keeps XLA's convolution for convs smaller than this many multiply-adds per kernel tap
# (b h w c o): there the per-tap products save nothing and only lengthen compilation (tiny test models
# compiled 26 % longer with them).
TAP_GRAD_MIN_WORK = 1 << 22


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, *, min_work: int = 0,
                         **kwargs):
  """lax.conv_general_dilated's signature (nn.Conv(conv_general_dilated=...)): conv2d_tap_grad for the
  stride-1, ungrouped, explicitly padded NHWC convs it covers (of at least `min_work` multiply-adds per
  kernel tap), lax.conv_general_dilated for every other."""
  ones = lambda v: v is None or all(int(a) == 1 for a in v)
  work = math.prod(int(v) for v in lhs.shape) * int(rhs.shape[-1]) if lhs.ndim == 4 else 0
  covered = (lhs.ndim == 4 and ones(window_strides) and ones(lhs_dilation) and feature_group_count == 1
             and dimension_numbers == _NHWC and not kwargs and not isinstance(padding, str)
             and rhs.shape[0] * rhs.shape[1] > 1 and work >= min_work)
  if not covered:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision, **kwargs)
  pad = tuple((int(a), int(b)) for a, b in padding)
  return conv2d_tap_grad(lhs, rhs, pad, tuple(int(d) for d in (rhs_dilation or (1, 1))), precision)


def conv_impl(impl: str) -> str:
  """'auto' -> 'taps' when the default backend is the CPU, else 'xla' (cuDNN's backward-filter kernels)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'Unknown conv impl {impl!r}; choose one of {CONV_IMPLS}.')
  if impl == 'auto':
    return 'taps' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def conv(features: int, kernel: int, *, dilation: int = 1, use_bias: bool = True,
         kernel_init=kaiming_normal, dtype: jnp.dtype = jnp.float32, name: str | None = None,
         impl: str = 'auto') -> nn.Conv:
  """A stride-1 'same' conv with explicit zero padding (dilation * (kernel // 2)), as PyTorch's padding=.

  impl: 'xla' (lax.conv_general_dilated), 'taps' (conv2d_tap_grad: the same forward, a faster kernel
  gradient on the CPU) or 'auto' (conv_impl). Same parameters whichever.
  """
  pad = dilation * (kernel // 2)
  fn = None
  if conv_impl(impl) == 'taps':
    fn = functools.partial(conv_general_dilated, min_work=TAP_GRAD_MIN_WORK if impl == 'auto' else 0)
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                 kernel_dilation=(dilation, dilation), use_bias=use_bias, kernel_init=kernel_init,
                 bias_init=nn.initializers.zeros, dtype=dtype, name=name, conv_general_dilated=fn)


def _depthwise_forward(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = jnp.zeros_like(x)
  for i in range(3):
    for j in range(3):
      out = out + padded[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
  return out


@jax.custom_vjp
def depthwise_conv3x3(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """A 'same' (zero-padded) 3x3 depthwise conv, x [b, h, w, c], kernel [3, 3, 1, c] -> [b, h, w, c], as 9
  shifted multiply-adds (XLA fuses them into one loop), with the backward of the module docstring."""
  return _depthwise_forward(x, kernel)


def _depthwise_fwd(x, kernel):
  return _depthwise_forward(x, kernel), (x, kernel)


def _depthwise_bwd(res, g):
  x, kernel = res
  g = jax.lax.optimization_barrier(g)  # materialised once, not recomputed inside each reduction
  h, w = x.shape[1:3]
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  gp, xp = jnp.pad(g, pad), jnp.pad(x, pad)
  dx = jnp.zeros_like(x)
  dk = []
  for i in range(3):
    for j in range(3):
      dx = dx + gp[:, 2 - i:2 - i + h, 2 - j:2 - j + w, :] * kernel[i, j, 0]
      dk.append(jnp.sum((xp[:, i:i + h, j:j + w, :] * g).astype(jnp.float32), axis=(0, 1, 2)))
  return dx, jnp.stack(dk).reshape(kernel.shape).astype(kernel.dtype)


depthwise_conv3x3.defvjp(_depthwise_fwd, _depthwise_bwd)


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
