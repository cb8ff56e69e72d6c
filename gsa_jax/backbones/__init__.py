"""Backbone registry.

Every backbone is a Flax module called as `backbone(x, train=...)` on `x: [b, h, w, 3]` (NHWC) and
returns a tuple of 4 feature maps at strides 4, 8, 16 and 32: `[b, h/4, w/4, c1] ... [b, h/32, w/32, c4]`.
`BACKBONE_CHANNELS[name]` gives `(c1, c2, c3, c4)`.
"""

from typing import Any, Callable

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
  """Imports the modules that register the backbone families (kept lazy to avoid import cycles)."""
  import importlib
  for module in ('gsa_jax.backbones.mit', 'gsa_jax.backbones.resnet', 'gsa_jax.backbones.vgg'):
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:
        raise


# --mode=convert --kind=<kind> for backbone weights: kind -> 'module:function', the function mapping a state
# dict to (backbone name, variables). The module is imported on use.
WEIGHT_CONVERTERS: dict[str, str] = {
    'mit': 'gsa_jax.backbones.mit_weights:convert',
    'resnet': 'gsa_jax.backbones.resnet_weights:convert',
    'vgg16': 'gsa_jax.backbones.vgg_weights:convert',
    'vit': 'gsa_jax.backbones.vit_weights:convert',  # DINO / DINOv2 (official, timm or Hugging Face names)
}


# Kinds whose files need their own reader (instead of gsa_jax.weights.read_state_dict): the ViT reader refuses
# DINO training checkpoints (student / teacher / optimizer) with the recipe to extract the backbone.
WEIGHT_READERS: dict[str, str] = {
    'vit': 'gsa_jax.backbones.vit_weights:read_vit_checkpoint',
}


def vit_variants() -> tuple[str, ...]:
  """The DINO / DINOv2 variants of gsa_jax.backbones.vit; each is also a --kind of --mode=convert that checks
  the checkpoint against that variant (--kind=vit infers it from the shapes)."""
  from gsa_jax.backbones import vit  # pylint: disable=g-import-not-at-top
  return tuple(sorted(vit.VIT_CONFIGS))


def _load(spec: str) -> Callable[..., Any]:
  import importlib
  module, function = spec.split(':')
  return getattr(importlib.import_module(module), function)


def weight_converter(kind: str) -> Callable[..., tuple[str, dict]]:
  return _load(WEIGHT_CONVERTERS[kind])


def weight_reader(kind: str) -> Callable[[str], dict] | None:
  """The reader of `kind`'s files (source path -> state dict), or None for gsa_jax.weights.read_state_dict."""
  return _load(WEIGHT_READERS[kind]) if kind in WEIGHT_READERS else None
