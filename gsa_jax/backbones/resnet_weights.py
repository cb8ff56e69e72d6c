"""Weight import for ResNet backbones: torchvision ResNet-18/34/50/101 state dicts.

  convert(state) -> ('resnetN', {'params': ..., 'batch_stats': ...}); `fc.*` and `num_batches_tracked` ignored.
"""

import re

from gsa_jax import weights
from gsa_jax.backbones import mit_weights
from gsa_jax.backbones import resnet

StateDict = weights.StateDict
Variables = weights.Variables



def _resnet_torch_key(names: tuple[str, ...]) -> str:
  """('layer2', 'block_0', 'downsample_bn', 'mean') -> 'layer2.0.downsample.1.running_mean'."""
  *modules, leaf = names
  parts = []
  for name in modules:
    if m := re.fullmatch(r'block_(\d+)', name):
      parts.append(m[1])
    elif name == 'downsample_conv':
      parts += ['downsample', '0']
    elif name == 'downsample_bn':
      parts += ['downsample', '1']
    else:
      parts.append(name)
  return '.'.join(parts + [weights.LEAF_NAMES[leaf]])


def _infer_resnet_variant(state: StateDict) -> str:
  bottleneck = 'layer1.0.conv3.weight' in state
  sizes = []
  for s in range(1, 5):
    blocks = {int(m[1]) for k in state if (m := re.match(rf'layer{s}\.(\d+)\.', k))}
    sizes.append(max(blocks) + 1 if blocks else 0)
  for name, (block, stage_sizes) in resnet.RESNET_CONFIGS.items():
    if (block is resnet.Bottleneck) == bottleneck and tuple(sizes) == stage_sizes:
      return name
  raise ValueError(f'Unknown ResNet variant: {"Bottleneck" if bottleneck else "BasicBlock"} blocks '
                   f'{tuple(sizes)} per layer; known: '
                   + ', '.join(f'{n} ({b.__name__} {s})' for n, (b, s) in resnet.RESNET_CONFIGS.items()))


def convert(state: StateDict) -> tuple[str, Variables]:
  """torchvision ResNet state dict -> ('resnetN', {'params': ..., 'batch_stats': ...})."""
  backbone = _infer_resnet_variant(state)
  variables = weights.convert_tree(state, mit_weights.abstract_variables(backbone), _resnet_torch_key,
                            ignored=lambda k: k.startswith('fc.') or k.endswith('.num_batches_tracked'),
                            what=backbone)
  return backbone, variables
