"""ImageNet VGG-16 weights for gsa_jax.backbones.vgg.VGG16, from torchvision-layout PyTorch files.

Accepted layouts (safetensors or a PyTorch pickle, read safely by gsa_jax.weights.read_state_dict):
  * torchvision's `vgg16(weights='IMAGENET1K_V1').state_dict()`: `features.{0,2,...,28}.{weight,bias}`
    (`classifier.*` is ignored);
  * its `features` part alone without the prefix, as DPA's `pretrain/vgg16_feat.pth`: `0.weight`, ...;
  * either with a DataParallel `module.` prefix.
Anything else (vgg19, vgg16_bn, a ResNet, another width) raises one ValueError naming the file, the first
key that does not fit (with the expected and the found shape) and the fix.

  vgg16_torch_key(names)        our variable path -> the prefix-less torchvision key ('conv_17', 'kernel')
                                -> '17.weight'
  convert_vgg16(state, source)  state dict -> {'params': ...} of VGG16
  convert(state)                ('vgg16', {'params': ...}): the backbone converter of `--mode=convert --kind=vgg16`
  load_vgg16(path)              the same from a file
  to_torchvision_state_dict     the inverse (`features.`-prefixed or prefix-less keys, OIHW kernels)
"""

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gsa_jax import weights
from gsa_jax.backbones import vgg

StateDict = weights.StateDict

FIX = ("Use torchvision's VGG-16 (configuration 'D', no BatchNorm), e.g. "
       "torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), 'vgg16.pth'), or DPA's "
       'pretrain/vgg16_feat.pth (its `features` part without the prefix).')


def vgg16_torch_key(names: tuple[str, ...]) -> str:
  """('conv_17', 'kernel') -> '17.weight' (torchvision `features` index, no prefix)."""
  module, leaf = names[-2], names[-1]
  match = re.fullmatch(r'conv_(\d+)', module)
  if match is None:
    raise ValueError(f'{"/".join(names)} is not a VGG16 variable.')
  return f'{match[1]}.{weights.LEAF_NAMES[leaf]}'


def abstract_vgg16(width: float = 1.0) -> dict[str, Any]:
  """`jax.eval_shape` of VGG16's init: {'params': {conv_i: {kernel, bias}}}."""
  model = vgg.VGG16(width=width)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32)))


def expected_torch_shapes(width: float = 1.0) -> dict[str, tuple[int, ...]]:
  """Prefix-less torchvision key -> PyTorch shape, in layer order (0.weight, 0.bias, 2.weight, ...)."""
  params = abstract_vgg16(width)['params']
  shapes = {}
  for index in vgg.CONV_INDICES:
    for leaf in ('kernel', 'bias'):
      shapes[vgg16_torch_key((f'conv_{index}', leaf))] = weights.torch_shape(params[f'conv_{index}'][leaf].shape,
                                                                            leaf)
  return shapes


def normalise_vgg_keys(state: StateDict) -> StateDict:
  """Strips `module.` and `features.`; drops `classifier.*` (torchvision's fully connected head)."""
  out = {}
  for key, value in state.items():
    key = key.removeprefix('module.')
    if key.startswith('classifier.'):
      continue
    out[key.removeprefix('features.')] = value
  return out


def _describe(state: StateDict) -> str:
  """What the file looks like, to make the error say what it is."""
  keys = list(state)
  if any(k.endswith('running_mean') for k in keys):
    return 'it holds BatchNorm statistics (e.g. vgg16_bn or a ResNet), which VGG-16 has none of'
  if any(k.startswith(('conv1.', 'layer1.')) for k in keys):
    return 'its keys look like a ResNet (conv1, layer1, ...)'
  kernels = [k for k in keys if k.endswith('.weight') and np.ndim(state[k]) == 4]
  if kernels and len(kernels) != len(vgg.CONV_INDICES):
    return f'it holds {len(kernels)} conv kernels where VGG-16 has {len(vgg.CONV_INDICES)} (vgg19 has 16)'
  return f'it holds {len(keys)} tensors'


def check_vgg16_state(state: StateDict, *, source: str, width: float = 1.0, prefix: str = '') -> None:
  """Raises one ValueError for the first key of `state` (normalised, `prefix` + torchvision key) that is
  missing or mis-shaped, or for a left-over key that is not a VGG-16 weight."""
  expected = {prefix + k: v for k, v in expected_torch_shapes(width).items()}
  for key, shape in expected.items():
    found = state.get(key)
    if found is None or tuple(np.shape(found)) != shape:
      got = 'absent' if found is None else str(tuple(np.shape(found)))
      raise ValueError(f'{source} is not a VGG-16 state dict: first mismatching key {key!r}: expected shape '
                       f'{shape}, found {got}; {_describe(state)}. {FIX}')
  extra = [k for k in state if k.startswith(prefix) and k not in expected]
  if extra:
    key = extra[0]
    raise ValueError(f'{source} is not a VGG-16 state dict: unexpected key {key!r} (shape '
                     f'{tuple(np.shape(state[key]))}) after the 13 VGG-16 convs; {_describe(state)}. {FIX}')


def convert_vgg16(state: StateDict, *, source: str = 'the state dict', width: float = 1.0) -> dict[str, Any]:
  """torchvision VGG-16 state dict (any accepted layout) -> {'params': ...} of VGG16(width)."""
  state = normalise_vgg_keys(state)
  check_vgg16_state(state, source=source, width=width)
  return weights.convert_tree(state, {'params': abstract_vgg16(width)['params']}, vgg16_torch_key,
                              ignored=lambda k: False, what=f'VGG-16 ({source})')


def convert(state: StateDict) -> tuple[str, dict[str, Any]]:
  """The backbone converter (gsa_jax.backbones.WEIGHT_CONVERTERS['vgg16']): -> ('vgg16', {'params': ...})."""
  return 'vgg16', convert_vgg16(state)


def load_vgg16(path: str, *, width: float = 1.0) -> dict[str, Any]:
  """Reads a VGG-16 file (see the module docstring) -> {'params': ...} of VGG16."""
  return convert_vgg16(weights.read_state_dict(path), source=repr(path), width=width)


def to_torchvision_state_dict(params: dict[str, Any], *, prefix: str = 'features.') -> StateDict:
  """VGG16 params -> {prefix + 'N.weight' / 'N.bias': numpy array} in PyTorch layout."""
  state = {}
  for name, leaves in params.items():
    for leaf, value in leaves.items():
      value = np.asarray(value, np.float32)
      if leaf == 'kernel':
        value = np.transpose(value, (3, 2, 0, 1))  # [kh kw i o] -> [o i kh kw]
      state[prefix + vgg16_torch_key((name, leaf))] = np.ascontiguousarray(value)
  return state
