"""Weight import (gsa_jax/convert.py): HF SegFormer -> MiT, torch ResNet -> ResNet, error reports.

The PyTorch references are built here with random weights (no downloads): transformers'
`SegformerModel` with the mit-b0 config, and a BasicBlock ResNet-18 written below with torchvision's
module names (torchvision itself does not import beside torch 2.13).
"""

import os
import re

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn as tnn
import transformers

from gsa_jax import backbones
from gsa_jax import checkpoint as ckpt_lib
from gsa_jax import convert
from gsa_jax import errors
from gsa_jax import weights
from gsa_jax.backbones import resnet_weights

torch.set_num_threads(1)
TOLERANCE = 1e-4


def _to_nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _to_nhwc(x: torch.Tensor) -> np.ndarray:
  return np.transpose(x.detach().numpy(), (0, 2, 3, 1))


def _listing(path) -> list[str]:
  return sorted(os.listdir(path))


# ------------------------------------------------------------------------------------------------
# Reference models.
# ------------------------------------------------------------------------------------------------

# transformers 5.x key -> 4.x key (the names listed in the reference notes, section 2.1), to check
# that old checkpoints such as nvidia/mit-b2 convert too.
_V5_TO_V4 = (
    (r'^stages\.(\d+)\.patch_embeddings\.', r'encoder.patch_embeddings.\1.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.', r'encoder.block.\1.\2.'),
    (r'^stages\.(\d+)\.layer_norm\.', r'encoder.layer_norm.\1.'),
    (r'attention\.q_proj', 'attention.self.query'),
    (r'attention\.k_proj', 'attention.self.key'),
    (r'attention\.v_proj', 'attention.self.value'),
    (r'attention\.sequence_reduction\.sequence_reduction', 'attention.self.sr'),
    (r'attention\.sequence_reduction\.layer_norm', 'attention.self.layer_norm'),
    (r'attention\.o_proj', 'attention.output.dense'),
    (r'mlp\.fc1', 'mlp.dense1'),
    (r'mlp\.fc2', 'mlp.dense2'),
    (r'layernorm_before', 'layer_norm_1'),
    (r'layernorm_after', 'layer_norm_2'),
)


def _v4_name(key: str) -> str:
  for pattern, replacement in _V5_TO_V4:
    key = re.sub(pattern, replacement, key)
  return key


@pytest.fixture(scope='module')
def hf_mit():
  """transformers' SegformerModel (mit-b0 config, random weights, eval), its state dict, an NHWC
  input and the four NHWC stage maps it gives."""
  torch.manual_seed(0)
  config = transformers.SegformerConfig()  # The defaults are mit-b0.
  assert list(config.hidden_sizes) == [32, 64, 160, 256] and list(config.depths) == [2, 2, 2, 2]
  model = transformers.SegformerModel(config).eval()
  with torch.no_grad():  # Non-trivial LayerNorm affine parameters.
    for name, p in model.named_parameters():
      if 'layer_norm' in name or 'layernorm' in name:
        p.add_(0.1 * torch.randn_like(p))
  x = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
  with torch.no_grad():
    hidden = model(pixel_values=_to_nchw(x), output_hidden_states=True).hidden_states
  assert len(hidden) == 4
  state = {k: v.detach().clone() for k, v in model.state_dict().items()}
  return state, x, [_to_nhwc(h) for h in hidden]


class BasicBlock(tnn.Module):
  """torchvision's BasicBlock, with its module names."""

  def __init__(self, in_channels: int, channels: int, stride: int):
    super().__init__()
    self.conv1 = tnn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(channels)
    self.relu = tnn.ReLU(inplace=True)
    self.conv2 = tnn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(channels)
    self.downsample = None
    if stride != 1 or in_channels != channels:
      self.downsample = tnn.Sequential(tnn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                       tnn.BatchNorm2d(channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(y)) + shortcut)


class TorchResNet18(tnn.Module):
  """torchvision's resnet18 layout (same state-dict keys); forward returns C2..C5."""

  def __init__(self):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = tnn.BatchNorm2d(64)
    self.relu = tnn.ReLU(inplace=True)
    self.maxpool = tnn.MaxPool2d(3, 2, 1)
    in_channels = 64
    for s, channels in enumerate((64, 128, 256, 512)):
      stride = 1 if s == 0 else 2
      setattr(self, f'layer{s + 1}', tnn.Sequential(BasicBlock(in_channels, channels, stride),
                                                    BasicBlock(channels, channels, 1)))
      in_channels = channels
    self.avgpool = tnn.AdaptiveAvgPool2d(1)
    self.fc = tnn.Linear(512, 1000)

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    features = []
    for s in range(1, 5):
      x = getattr(self, f'layer{s}')(x)
      features.append(x)
    return features


@pytest.fixture(scope='module')
def torch_resnet():
  """TorchResNet18 in eval mode with random BN statistics; its state dict, an input and C2..C5."""
  torch.manual_seed(1)
  model = TorchResNet18()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, tnn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  model.eval()
  x = np.random.default_rng(1).normal(size=(2, 64, 96, 3)).astype(np.float32)
  with torch.no_grad():
    features = model(_to_nchw(x))
  return model.state_dict(), x, [_to_nhwc(f) for f in features]


def _assert_matches(ours, reference) -> float:
  """Checks each stage map to TOLERANCE (absolute, relative to the map's scale); returns the max diff."""
  worst = 0.0
  for a, b in zip(ours, reference, strict=True):
    assert a.shape == b.shape
    diff = float(np.max(np.abs(np.asarray(a) - b)))
    scale = max(1.0, float(np.max(np.abs(b))))
    assert diff <= TOLERANCE * scale, (diff, scale)
    worst = max(worst, diff)
  return worst


# ------------------------------------------------------------------------------------------------
# Parity.
# ------------------------------------------------------------------------------------------------

def test_mit_matches_hf_segformer(hf_mit, tmp_path):
  """v5 keys in safetensors, converted into an existing empty folder: every stage matches HF."""
  state, x, hidden = hf_mit
  source = tmp_path / 'model.safetensors'
  safetensors.torch.save_file(state, str(source))
  output = tmp_path / 'converted'
  output.mkdir()  # An empty folder is accepted.
  convert.convert(str(source), kind='mit', output_dir=str(output))
  assert _listing(output) == ['checkpoints']  # the one checkpoint format: step 0, no optimiser state
  assert _listing(tmp_path) == ['converted', 'model.safetensors']  # No staging left behind.

  variables, meta = ckpt_lib.load_variables(str(output))
  assert (meta['kind'], meta['scope'], meta['backbone'], meta['converted_from'], meta['step']) == (
      'mit', 'backbone', 'mit_b0', str(source), 0)
  model = backbones.build_backbone('mit_b0')
  ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  worst = _assert_matches(ours, hidden)
  print(f'mit_b0 vs HF SegformerModel: max abs diff {worst:.2e}')


def test_mit_v4_names_with_prefix_in_bin_folder(hf_mit, tmp_path):
  """transformers 4.x names with `segformer.` and a classifier, as pytorch_model.bin in a folder,
  give the same variables as the 5.x names."""
  state, _, _ = hf_mit
  v4 = {f'segformer.{_v4_name(k)}': v for k, v in state.items()}
  assert 'segformer.encoder.block.1.0.attention.self.sr.weight' in v4
  assert 'segformer.encoder.block.0.1.mlp.dwconv.dwconv.weight' in v4
  v4['classifier.weight'] = torch.zeros(1000, 256)
  v4['classifier.bias'] = torch.zeros(1000)
  folder = tmp_path / 'hf_v4'
  folder.mkdir()
  torch.save(v4, str(folder / 'pytorch_model.bin'))
  safetensors.torch.save_file(state, str(tmp_path / 'v5.safetensors'))

  convert.convert(str(folder), kind='mit', output_dir=str(tmp_path / 'from_v4'))
  convert.convert(str(tmp_path / 'v5.safetensors'), kind='mit', output_dir=str(tmp_path / 'from_v5'))
  from_v4, meta = ckpt_lib.load_variables(str(tmp_path / 'from_v4'))
  from_v5, _ = ckpt_lib.load_variables(str(tmp_path / 'from_v5'))
  assert meta['backbone'] == 'mit_b0' and meta['converted_from'].endswith('pytorch_model.bin')
  jax.tree.map(np.testing.assert_array_equal, from_v4, from_v5)


def test_resnet_matches_torch(torch_resnet, tmp_path):
  state, x, features = torch_resnet
  source = tmp_path / 'resnet18.pth'
  torch.save(state, str(source))
  convert.convert(str(source), kind='resnet', output_dir=str(tmp_path / 'converted'))
  variables, meta = ckpt_lib.load_variables(str(tmp_path / 'converted'))
  assert meta['backbone'] == 'resnet18' and meta['kind'] == 'resnet'
  np.testing.assert_array_equal(variables['batch_stats']['layer2']['block_0']['downsample_bn']['var'],
                                state['layer2.0.downsample.1.running_var'].numpy())
  model = backbones.build_backbone('resnet18')
  ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  worst = _assert_matches(ours, features)
  print(f'resnet18 vs torch: max abs diff {worst:.2e}')


def test_resnet_safetensors_gives_same_variables(torch_resnet, tmp_path):
  state, _, _ = torch_resnet
  torch.save(state, str(tmp_path / 'r.bin'))
  safetensors.torch.save_file(state, str(tmp_path / 'r.safetensors'))
  from_bin = resnet_weights.convert(weights.read_state_dict(str(tmp_path / 'r.bin')))
  from_st = resnet_weights.convert(weights.read_state_dict(str(tmp_path / 'r.safetensors')))
  assert from_bin[0] == from_st[0] == 'resnet18'
  jax.tree.map(np.testing.assert_array_equal, from_bin[1], from_st[1])


# ------------------------------------------------------------------------------------------------
# Errors: every problem listed, nothing written.
# ------------------------------------------------------------------------------------------------

def test_mismatch_lists_every_key_and_writes_nothing(hf_mit, tmp_path):
  state = dict(hf_mit[0])
  state['stages.1.blocks.0.mlp.fc1.weight'] = torch.zeros(100, 64)
  state['stages.3.layer_norm.bias'] = torch.zeros(255)
  del state['stages.2.blocks.1.attention.k_proj.bias']
  del state['stages.0.blocks.0.attention.sequence_reduction.layer_norm.weight']
  state['stages.0.blocks.0.attention.extra.weight'] = torch.zeros(3)
  source = tmp_path / 'bad.safetensors'
  safetensors.torch.save_file(state, str(source))
  with pytest.raises(ValueError) as error:
    convert.convert(str(source), kind='mit', output_dir=str(tmp_path / 'out'))
  message = str(error.value)
  assert '5 problems' in message
  assert 'stages.1.blocks.0.mlp.fc1.weight: checkpoint (100, 64), expected (256, 64)' in message
  assert 'stages.3.layer_norm.bias: checkpoint (255,), expected (256,)' in message
  assert 'missing key stages.2.blocks.1.attention.k_proj.bias: expected shape (160,)' in message
  assert 'missing key stages.0.blocks.0.attention.sequence_reduction.layer_norm.weight' in message
  assert 'unexpected key stages.0.blocks.0.attention.extra.weight: shape (3,)' in message
  assert _listing(tmp_path) == ['bad.safetensors']


def test_resnet_mismatch_and_unknown_variant(torch_resnet, tmp_path):
  state = dict(torch_resnet[0])
  state['layer3.0.downsample.0.weight'] = torch.zeros(256, 128, 3, 3)
  del state['layer4.1.bn2.running_mean']
  torch.save(state, str(tmp_path / 'bad.bin'))
  with pytest.raises(ValueError) as error:
    convert.convert(str(tmp_path / 'bad.bin'), kind='resnet', output_dir=str(tmp_path / 'out'))
  message = str(error.value)
  assert 'resnet18 (2 problems)' in message
  assert ('wrong shape layer3.0.downsample.0.weight: checkpoint (256, 128, 3, 3), expected (256, 128, 1, 1)'
          in message)
  assert 'missing key layer4.1.bn2.running_mean: expected shape (512,)' in message
  # A third block in layer1: no torchvision variant has (3, 2, 2, 2) BasicBlocks.
  extra = {k.replace('layer1.1.', 'layer1.2.'): v for k, v in torch_resnet[0].items() if k.startswith('layer1.1.')}
  torch.save({**torch_resnet[0], **extra}, str(tmp_path / 'odd.bin'))
  with pytest.raises(ValueError, match=r'Unknown ResNet variant: BasicBlock blocks \(3, 2, 2, 2\)'):
    convert.convert(str(tmp_path / 'odd.bin'), kind='resnet', output_dir=str(tmp_path / 'out'))
  assert _listing(tmp_path) == ['bad.bin', 'odd.bin']


def test_unknown_mit_variant(hf_mit, tmp_path):
  state = {k: v for k, v in hf_mit[0].items() if not k.startswith('stages.2.blocks.1.')}
  safetensors.torch.save_file(state, str(tmp_path / 'short.safetensors'))
  with pytest.raises(ValueError, match=r'Unknown MiT variant: hidden sizes \(32, 64, 160, 256\), '
                     r'depths \(2, 2, 1, 2\)'):
    convert.convert(str(tmp_path / 'short.safetensors'), kind='mit', output_dir=str(tmp_path / 'out'))


def test_refuses_non_empty_output_and_unsafe_pickles(torch_resnet, tmp_path):
  torch.save(torch_resnet[0], str(tmp_path / 'r.bin'))
  busy = tmp_path / 'busy'
  busy.mkdir()
  (busy / 'keep.txt').write_text('mine')
  with pytest.raises(ValueError, match='not an empty folder'):
    convert.convert(str(tmp_path / 'r.bin'), kind='resnet', output_dir=str(busy))
  assert _listing(busy) == ['keep.txt']
  # weights_only=True: a pickle holding an arbitrary object is refused, not executed, with one clear error
  # that never passes on torch's advice to load with weights_only=False.
  torch.save({'conv1.weight': torch.zeros(1), 'payload': _Payload()}, str(tmp_path / 'evil.bin'))
  (tmp_path / 'noise.pth').write_bytes(np.random.default_rng(0).bytes(4096))
  for name in ('evil.bin', 'noise.pth'):
    with pytest.raises(errors.UserError, match=rf'{name} cannot be read as a PyTorch state dict') as error:
      convert.convert(str(tmp_path / name), kind='resnet', output_dir=str(tmp_path / 'out'))
    assert 'weights_only=False' not in str(error.value) and 'Re-save the weights alone' in str(error.value)
  assert not (tmp_path / 'out').exists()


class _Payload:
  """Stands for any non-tensor object in a pickle."""


def test_kinds_and_bad_folders(tmp_path):
  source = tmp_path / 'w.safetensors'
  safetensors.torch.save_file({'conv1.weight': torch.zeros(1)}, str(source))
  with pytest.raises(ValueError, match='not a GSA-Net model'):
    convert.convert(str(source), kind='gsanet', output_dir=str(tmp_path / 'out'))
  with pytest.raises(ValueError, match=r'Unknown --kind=.no_such_kind.; choose one of .*gsanet.*mit.*resnet'):
    convert.convert(str(source), kind='no_such_kind', output_dir=str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='folder without model.safetensors or pytorch_model.bin'):
    convert.convert(str(tmp_path), kind='mit', output_dir=str(tmp_path / 'out'))
  assert _listing(tmp_path) == ['w.safetensors']
  with pytest.raises(ckpt_lib.CheckpointError, match='is not a checkpoint'):
    ckpt_lib.load_variables(str(tmp_path))
  assert {'gsanet', 'mit', 'resnet'} <= set(convert.kinds()) and 'mit' in backbones.WEIGHT_CONVERTERS
