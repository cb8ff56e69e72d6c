"""Backbone registry.

Every backbone is a Flax module called as `backbone(x, train=...)` on `x: [b, h, w, 3]` (NHWC) and
returns a tuple of 4 feature maps at strides 4, 8, 16 and 32: `[b, h/4, w/4, c1] ... [b, h/32, w/32, c4]`.
`BACKBONE_CHANNELS[name]` gives `(c1, c2, c3, c4)`.
"""

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp


class TinyCNN(nn.Module):
  """A four-stage strided CNN for tests and CPU demos (no pretrained weights exist for it)."""
  widths: tuple[int, int, int, int] = (16, 24, 32, 48)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> tuple[jnp.ndarray, ...]:
    del train
    features = []
    # Stem: stride 4 in one 4x4 patchify conv, like the MiT/ResNet stems.
    x = nn.Conv(self.widths[0], (4, 4), strides=(4, 4), dtype=self.dtype, name='stem')(x)  # [b h/4 w/4 c1]
    x = nn.gelu(nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='stem_norm')(x))
    for i, width in enumerate(self.widths):
      if i > 0:
        x = nn.Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    name=f'down{i}')(x)
      y = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=f'conv{i}')(x)
      x = x + nn.gelu(nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=f'norm{i}')(y))
      features.append(x)
    return tuple(features)


BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    'tiny_cnn': (16, 24, 32, 48),
}

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    'tiny_cnn': lambda drop_path_rate, dtype, name: TinyCNN(dtype=dtype, name=name),
}


def register_backbone(name: str, channels: tuple[int, int, int, int],
                      builder: Callable[..., nn.Module]) -> None:
  """Adds a backbone: `builder(drop_path_rate=..., dtype=..., name=...)` returns the module."""
  BACKBONE_CHANNELS[name] = tuple(channels)
  _BUILDERS[name] = builder


def build_backbone(backbone: str, *, drop_path_rate: float = 0.0, dtype: jnp.dtype = jnp.float32,
                   name: str | None = None) -> nn.Module:
  """Returns the backbone module called `backbone`; raises ValueError naming the valid choices."""
  _ensure_registered()
  if backbone not in _BUILDERS:
    raise ValueError(f'Unknown backbone {backbone!r}; choose one of {sorted(_BUILDERS)} '
                     '(set --config.model.backbone).')
  return _BUILDERS[backbone](drop_path_rate=drop_path_rate, dtype=dtype, name=name)


def backbone_channels(backbone: str) -> tuple[int, int, int, int]:
  _ensure_registered()
  if backbone not in BACKBONE_CHANNELS:
    raise ValueError(f'Unknown backbone {backbone!r}; choose one of {sorted(BACKBONE_CHANNELS)} '
                     '(set --config.model.backbone).')
  return BACKBONE_CHANNELS[backbone]


def _ensure_registered() -> None:
  """Imports the modules that register MiT and ResNet (kept lazy to avoid import cycles)."""
  import importlib
  for module in ('gsa_jax.backbones.mit', 'gsa_jax.backbones.resnet'):
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:
        raise
