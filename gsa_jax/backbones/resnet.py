"""torchvision-layout ResNet-18/34/50/101 in Flax linen (NHWC), returning C2..C5.

The layout is torchvision's (v1.5: in a Bottleneck the stride sits on the 3x3 conv), with the
classifier (`avgpool`, `fc`) left out. Submodule names mirror torchvision's state-dict keys so that
weight conversion (gsa_jax/convert.py) is a plain name map:

  torchvision                          here
  conv1, bn1                           conv1, bn1
  layer{s}.{j}.conv{k}, .bn{k}         layer{s}/block_{j}/conv{k}, bn{k}
  layer{s}.{j}.downsample.0 / .1       layer{s}/block_{j}/downsample_conv / downsample_bn

BatchNorm: `gsa_jax.layers.BatchNorm` (momentum 0.9 = PyTorch's 0.1, eps 1e-5, two-pass batch variance),
statistics in the 'batch_stats' collection, running averages used when `train=False`. `running_var`
'unbiased' (default, torchvision / PyTorch) folds the unbiased batch variance into the running one,
'biased' the biased one (flax.linen.BatchNorm); the variables are named as nn.BatchNorm's.
"""

import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from gsa_jax import backbones
from gsa_jax import layers

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu') for every conv.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(features: int, kernel: int, stride: int, dtype: jnp.dtype, name: str) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, kernel_init=_conv_init, dtype=dtype, name=name)


def _batch_norm(train: bool, running_var: str, dtype: jnp.dtype, name: str) -> layers.BatchNorm:
  return layers.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, running_var=running_var,
                          dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs: [b, h, w, c_in] -> [b, h/stride, w/stride, features]."""
  features: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32
  running_var: str = 'unbiased'
  expansion = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    bn = functools.partial(_batch_norm, train, self.running_var, self.dtype)
    y = nn.relu(bn('bn1')(_conv(self.features, 3, self.stride, self.dtype, 'conv1')(x)))
    y = bn('bn2')(_conv(self.features, 3, 1, self.dtype, 'conv2')(y))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = bn('downsample_bn')(_conv(self.features, 1, self.stride, self.dtype, 'downsample_conv')(x))
    return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (x4): [b, h, w, c_in] -> [b, h/stride, w/stride, 4*features]."""
  features: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32
  running_var: str = 'unbiased'
  expansion = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    bn = functools.partial(_batch_norm, train, self.running_var, self.dtype)
    out_features = self.features * self.expansion
    y = nn.relu(bn('bn1')(_conv(self.features, 1, 1, self.dtype, 'conv1')(x)))
    y = nn.relu(bn('bn2')(_conv(self.features, 3, self.stride, self.dtype, 'conv2')(y)))
    y = bn('bn3')(_conv(out_features, 1, 1, self.dtype, 'conv3')(y))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_features:
      shortcut = bn('downsample_bn')(_conv(out_features, 1, self.stride, self.dtype, 'downsample_conv')(x))
    return nn.relu(y + shortcut)


class ResNetStage(nn.Module):
  """`num_blocks` blocks, the first one strided: [b, h, w, c_in] -> [b, h/stride, w/stride, c_out]."""
  block: type[nn.Module]
  features: int
  num_blocks: int
  stride: int
  dtype: jnp.dtype = jnp.float32
  running_var: str = 'unbiased'

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    for j in range(self.num_blocks):
      x = self.block(self.features, stride=self.stride if j == 0 else 1, dtype=self.dtype,
                     running_var=self.running_var, name=f'block_{j}')(x, train=train)
    return x


class ResNet(nn.Module):
  """ResNet encoder: [b, h, w, 3] -> (C2, C3, C4, C5) at strides 4, 8, 16, 32.

  Channels are (64, 128, 256, 512) * block.expansion. `running_var`: 'unbiased' (PyTorch) | 'biased' (Flax).
  """
  block: type[nn.Module]
  stage_sizes: tuple[int, int, int, int]
  dtype: jnp.dtype = jnp.float32
  running_var: str = 'unbiased'

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> tuple[jnp.ndarray, ...]:
    x = _conv(64, 7, 2, self.dtype, 'conv1')(x)                                  # [b h/2 w/2 64]
    x = nn.relu(_batch_norm(train, self.running_var, self.dtype, 'bn1')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))        # [b h/4 w/4 64]
    features = []
    for s, num_blocks in enumerate(self.stage_sizes):
      x = ResNetStage(self.block, 64 * 2**s, num_blocks, stride=1 if s == 0 else 2, dtype=self.dtype,
                      running_var=self.running_var, name=f'layer{s + 1}')(x, train=train)
      features.append(x)
    return tuple(features)


RESNET_CONFIGS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    'resnet18': (BasicBlock, (2, 2, 2, 2)),
    'resnet34': (BasicBlock, (3, 4, 6, 3)),
    'resnet50': (Bottleneck, (3, 4, 6, 3)),
    'resnet101': (Bottleneck, (3, 4, 23, 3)),
}


def _resnet_builder(block: type[nn.Module], stage_sizes: tuple[int, int, int, int]) -> Callable[..., ResNet]:
  """Returns `builder(drop_path_rate=..., dtype=..., name=...)`; ResNets have no drop-path."""
  def build(drop_path_rate: float, dtype: jnp.dtype, name: str | None) -> ResNet:
    del drop_path_rate
    return ResNet(block, stage_sizes, dtype=dtype, name=name)
  return build


for _name, (_block, _sizes) in RESNET_CONFIGS.items():
  backbones.register_backbone(_name, tuple(64 * 2**s * _block.expansion for s in range(4)),
                              _resnet_builder(_block, _sizes))
