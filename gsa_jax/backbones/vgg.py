"""VGG-16 (torchvision configuration "D", no BatchNorm) in Flax linen, NHWC, callable stage by stage.

The 13 convs are 3x3, stride 1, zero padding 1, with bias, each followed by ReLU; they keep
torchvision's `features` indices as names, so weight import is a plain name map (vgg_weights.py):

  stage  layers (torchvision `features` indices)                 output
  1      conv_0, conv_2                                          [b, h,    w,    64]
  2      pool 4,  conv_5, conv_7                                 [b, h/2,  w/2,  128]
  3      pool 9,  conv_10, conv_12, conv_14                      [b, h/4,  w/4,  256]
  4      pool 16, conv_17, conv_19, conv_21                      [b, h/8,  w/8,  512]
  5      pool 23, conv_24, conv_26, conv_28                      [b, h/16, w/16, 512]

Each 2x2/2 max-pool opens the next stage (the slicing of the DPA code: f1 = conv1 at full
resolution, ..., f5 = pool4 + conv5 at 1/16). torchvision's fifth pool (index 30) and the classifier
are left out. `stage(i, x)` runs one stage, so a module can sit between stages (DPA's stage-1 model
refines f4 before conv5); `__call__(x, start, end)` runs stages start..end and returns their outputs.
`width` scales every channel count (1.0 = VGG-16; smaller widths are for tests only).

In the backbone registry (gsa_jax.backbones, name 'vgg16') the same network is `VGG16Backbone`, which keeps
the registry's contract of 4 maps at strides 4, 8, 16 and 32: (conv3 [256], conv4 [512], conv5 [512],
pool5(conv5) [512]) = torchvision's features[:16], [:23], [:30], [:31]. Its parameters are VGG16's, so the
ImageNet weights of `--mode=convert --kind=vgg16` load into either (and into DPA's rgb_/flow_encoder).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gsa_jax import backbones
from gsa_jax import layers

# Per stage: (torchvision index, output channels) of each conv.
STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, 64), (2, 64)),
    ((5, 128), (7, 128)),
    ((10, 256), (12, 256), (14, 256)),
    ((17, 512), (19, 512), (21, 512)),
    ((24, 512), (26, 512), (28, 512)),
)
CONV_INDICES = tuple(index for stage in STAGES for index, _ in stage)  # 0, 2, 5, ..., 28
NUM_STAGES = len(STAGES)
STAGE_STRIDES = (1, 2, 4, 8, 16)

# The DPA code's weights_init: N(0, 0.01^2) kernels, zero biases (overwritten by ImageNet weights).
normal_001 = nn.initializers.normal(0.01)


def scaled(channels: int, width: float) -> int:
  """Channel count at a width multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


def stage_channels(width: float = 1.0) -> tuple[int, ...]:
  """Output channels of stages 1..5: (64, 128, 256, 512, 512) at width 1."""
  return tuple(scaled(stage[-1][1], width) for stage in STAGES)


class VGG16(nn.Module):
  """VGG-16 convolutional part: [b, h, w, 3] -> stage outputs (see the module docstring)."""
  width: float = 1.0
  kernel_init: Any = normal_001
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.conv = {str(index): layers.conv(scaled(channels, self.width), 3, kernel_init=self.kernel_init,
                                         dtype=self.dtype)
                 for stage in STAGES for index, channels in stage}

  def stage(self, i: int, x: jnp.ndarray) -> jnp.ndarray:
    """Stage i in 1..5: [b, h, w, c] -> [b, h', w', c_i] (h' = h for stage 1, h / 2 otherwise)."""
    if not 1 <= i <= NUM_STAGES:
      raise ValueError(f'VGG16 stage {i} does not exist; stages are 1..{NUM_STAGES}.')
    if i > 1:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    for index, _ in STAGES[i - 1]:
      x = nn.relu(self.conv[str(index)](x))
    return x

  def __call__(self, x: jnp.ndarray, start: int = 1, end: int = NUM_STAGES) -> tuple[jnp.ndarray, ...]:
    """Runs stages start..end (inclusive) on x (the input of stage `start`); returns their outputs."""
    if not 1 <= start <= end <= NUM_STAGES:
      raise ValueError(f'VGG16 stages {start}..{end}: need 1 <= start <= end <= {NUM_STAGES}.')
    outputs = []
    for i in range(start, end + 1):
      x = self.stage(i, x)
      outputs.append(x)
    return tuple(outputs)


class VGG16Backbone(VGG16):
  """VGG16 under the backbone registry's contract: [b, h, w, 3] -> 4 maps at strides 4, 8, 16, 32."""

  # pylint: disable-next=arguments-differ
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> tuple[jnp.ndarray, ...]:
    del train  # no BatchNorm or dropout
    _, _, f3, f4, f5 = super().__call__(x, 1, NUM_STAGES)
    return f3, f4, f5, nn.max_pool(f5, (2, 2), strides=(2, 2))


BACKBONE_CHANNELS = (256, 512, 512, 512)
backbones.register_backbone(
    'vgg16', BACKBONE_CHANNELS,
    lambda drop_path_rate, dtype, name: VGG16Backbone(dtype=dtype, name=name))
