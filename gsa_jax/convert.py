"""Imports PyTorch / safetensors weights into gsa-jax checkpoints (issue #6).

  python main.py --mode=convert --source=FILE_OR_FOLDER --kind=mit|resnet --output=DIR

Kinds:
  mit     Hugging Face SegFormer / MiT checkpoints (`model.safetensors` or `pytorch_model.bin`, or a
          folder holding one), e.g. `nvidia/mit-b2`. Keys may carry the `segformer.` prefix or not, and may
          use the transformers 4.x names (`encoder.block.{i}.{j}.attention.self.query`, ...) or the 5.x
          names (`stages.{i}.blocks.{j}.attention.q_proj`, ...). `classifier.*` and `decode_head.*` are
          ignored.
  resnet  torchvision ResNet-18/34/50/101 state dicts (`fc.*` and `num_batches_tracked` are ignored).
  gsanet  whole GSA-Net checkpoints: not written yet (see `CONVERTERS`).

The variant (mit_b0..b5, resnet18..101) is inferred from the checkpoint's shapes. Every mismatch
(unknown variant, missing key, unexpected key, wrong shape) is collected and raised as one ValueError
that lists each offending key; nothing is written then.

Output (docs/TEAM.md): `output_dir/variables/` (orbax StandardCheckpoint of
{'params': ..., 'batch_stats': ...}) and `output_dir/meta.json`
{"kind", "scope": "backbone", "backbone", "source"}. The output is written to a temporary folder next to
`output_dir` and renamed into place at the end. Read it back with `load_converted(path)`.

Reading is safe: safetensors, or `torch.load(..., weights_only=True)` (torch is imported only for
.bin/.pth/.pt files).
"""

import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from gsa_jax.modules import backbones
from gsa_jax.modules import mit
from gsa_jax.modules import resnet

StateDict = dict[str, np.ndarray]
Variables = dict[str, Any]

META_FILE = 'meta.json'
VARIABLES_DIR = 'variables'
# Files looked for, in this order, when `source` is a folder.
_CHECKPOINT_FILES = ('model.safetensors', 'pytorch_model.bin')
_TORCH_SUFFIXES = ('.bin', '.pth', '.pt')


# ------------------------------------------------------------------------------------------------
# Reading checkpoints.
# ------------------------------------------------------------------------------------------------

def _resolve_source(source: str) -> str:
  """Returns the checkpoint file of `source` (a file, or a folder holding one of _CHECKPOINT_FILES)."""
  if os.path.isdir(source):
    for name in _CHECKPOINT_FILES:
      path = os.path.join(source, name)
      if os.path.isfile(path):
        return path
    raise ValueError(f'{source!r} is a folder without {" or ".join(_CHECKPOINT_FILES)}.')
  if not os.path.isfile(source):
    raise ValueError(f'Checkpoint {source!r} does not exist.')
  return source


def read_state_dict(source: str) -> StateDict:
  """Reads a safetensors or PyTorch checkpoint into {key: float32/int numpy array}."""
  path = _resolve_source(source)
  if path.endswith('.safetensors'):
    from safetensors import safe_open
    state = {}
    with safe_open(path, framework='numpy') as f:
      for key in f.keys():
        state[key] = f.get_tensor(key)
    return state
  if path.endswith(_TORCH_SUFFIXES):
    import torch  # Only needed for PyTorch pickles.
    loaded = torch.load(path, map_location='cpu', weights_only=True)
    for wrapper in ('state_dict', 'model'):  # Training checkpoints often nest the weights.
      if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
        loaded = loaded[wrapper]
    if not isinstance(loaded, dict):
      raise ValueError(f'{path!r} does not hold a state dict (got {type(loaded).__name__}).')
    state = {}
    for key, value in loaded.items():
      if isinstance(value, torch.Tensor):
        if value.is_floating_point():
          value = value.float()
        state[key] = value.numpy()
    return state
  raise ValueError(f'Unsupported checkpoint file {path!r}: expected .safetensors, .bin, .pth or .pt.')


# ------------------------------------------------------------------------------------------------
# Name and layout maps, shared by the backbone converters.
# ------------------------------------------------------------------------------------------------

def _to_flax(torch_value: np.ndarray, leaf: str) -> np.ndarray:
  """PyTorch layout -> Flax layout for one leaf (kernels transposed, everything else as is)."""
  if leaf == 'kernel' and torch_value.ndim == 4:
    return np.transpose(torch_value, (2, 3, 1, 0))  # [o i kh kw] -> [kh kw i o]
  if leaf == 'kernel' and torch_value.ndim == 2:
    return torch_value.T  # [o i] -> [i o]
  return torch_value


def _torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  """The PyTorch shape that `_to_flax` turns into `flax_shape`."""
  if leaf == 'kernel' and len(flax_shape) == 4:
    kh, kw, i, o = flax_shape
    return (o, i, kh, kw)
  if leaf == 'kernel' and len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


# Flax leaf name -> PyTorch parameter / buffer name.
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
               'mean': 'running_mean', 'var': 'running_var'}


def _convert_tree(state: StateDict, abstract: Variables, torch_key: Callable[[tuple[str, ...]], str],
                  ignored: Callable[[str], bool], what: str) -> Variables:
  """Fills the abstract variable tree of a backbone from `state`, or raises listing every mismatch.

  Args:
    state: the checkpoint, with normalised key names.
    abstract: `jax.eval_shape` of the module's init ({'params': ..., maybe 'batch_stats': ...}).
    torch_key: maps a Flax path (module names..., leaf) to the checkpoint key.
    ignored: checkpoint keys that are allowed to be left over (classifier heads, counters).
    what: the variant name, for messages.
  """
  problems: list[str] = []
  used: set[str] = set()

  def fill(path, leaf_abstract):
    names = tuple(p.key for p in path[1:])  # Drop the collection name.
    key = torch_key(names)
    leaf = names[-1]
    expected = _torch_shape(leaf_abstract.shape, leaf)
    if key not in state:
      problems.append(f'missing key {key}: expected shape {expected}')
      return None
    used.add(key)
    value = state[key]
    if tuple(value.shape) != expected:
      problems.append(f'wrong shape {key}: checkpoint {tuple(value.shape)}, expected {expected}')
      return None
    return np.asarray(_to_flax(value, leaf), dtype=leaf_abstract.dtype)

  tree = jax.tree_util.tree_map_with_path(fill, abstract)
  for key in sorted(set(state) - used):
    if not ignored(key):
      problems.append(f'unexpected key {key}: shape {tuple(state[key].shape)}')
  if problems:
    raise ValueError(f'The checkpoint does not match {what} ({len(problems)} problems):\n  '
                     + '\n  '.join(problems))
  return tree


def _abstract_variables(backbone: str) -> Variables:
  model = backbones.build_backbone(backbone)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))


# ------------------------------------------------------------------------------------------------
# MiT (Hugging Face SegFormer).
# ------------------------------------------------------------------------------------------------

# transformers 4.x name -> 5.x name (the 5.x layout is what gsa_jax.modules.mit mirrors).
_MIT_V4_TO_V5 = (
    (r'^encoder\.patch_embeddings\.(\d+)\.', r'stages.\1.patch_embeddings.'),
    (r'^encoder\.block\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
    (r'^encoder\.layer_norm\.(\d+)\.', r'stages.\1.layer_norm.'),
    (r'\.attention\.self\.query\.', '.attention.q_proj.'),
    (r'\.attention\.self\.key\.', '.attention.k_proj.'),
    (r'\.attention\.self\.value\.', '.attention.v_proj.'),
    (r'\.attention\.self\.sr\.', '.attention.sequence_reduction.sequence_reduction.'),
    (r'\.attention\.self\.layer_norm\.', '.attention.sequence_reduction.layer_norm.'),
    (r'\.attention\.output\.dense\.', '.attention.o_proj.'),
    (r'\.mlp\.dense1\.', '.mlp.fc1.'),
    (r'\.mlp\.dense2\.', '.mlp.fc2.'),
    (r'\.layer_norm_1\.', '.layernorm_before.'),
    (r'\.layer_norm_2\.', '.layernorm_after.'),
)


def _normalise_mit_key(key: str) -> str:
  """Strips `segformer.` and renames transformers 4.x keys to the 5.x layout."""
  key = key.removeprefix('segformer.')
  for pattern, replacement in _MIT_V4_TO_V5:
    key = re.sub(pattern, replacement, key)
  return key


def _mit_torch_key(names: tuple[str, ...]) -> str:
  """('stage_0', 'block_1', 'attention', 'sequence_reduction', 'conv', 'kernel') ->
  'stages.0.blocks.1.attention.sequence_reduction.sequence_reduction.weight'."""
  *modules, leaf = names
  parts = []
  for name in modules:
    if m := re.fullmatch(r'stage_(\d+)', name):
      parts += ['stages', m[1]]
    elif m := re.fullmatch(r'block_(\d+)', name):
      parts += ['blocks', m[1]]
    elif name == 'conv' and parts[-1] == 'sequence_reduction':
      parts.append('sequence_reduction')
    elif name == 'dwconv':
      parts += ['dwconv', 'dwconv']
    else:
      parts.append(name)
  return '.'.join(parts + [_LEAF_NAMES[leaf]])


def _infer_mit_variant(state: StateDict) -> str:
  hidden_sizes, depths = [], []
  for i in range(4):
    proj = state.get(f'stages.{i}.patch_embeddings.proj.weight')
    hidden_sizes.append(None if proj is None else int(proj.shape[0]))
    blocks = {int(m[1]) for k in state if (m := re.match(rf'stages\.{i}\.blocks\.(\d+)\.', k))}
    depths.append(max(blocks) + 1 if blocks else 0)
  for name, cfg in mit.MIT_CONFIGS.items():
    if tuple(hidden_sizes) == cfg.hidden_sizes and tuple(depths) == cfg.depths:
      return name
  known = ', '.join(f'{n} (sizes {c.hidden_sizes}, depths {c.depths})' for n, c in mit.MIT_CONFIGS.items())
  raise ValueError(f'Unknown MiT variant: hidden sizes {tuple(hidden_sizes)}, depths {tuple(depths)} '
                   f'(from stages.*.patch_embeddings.proj.weight and stages.*.blocks.*); known: {known}.')


def convert_mit(state: StateDict) -> tuple[str, Variables]:
  """HF SegFormer/MiT state dict -> ('mit_bN', {'params': ..., 'batch_stats': {}})."""
  state = {_normalise_mit_key(k): v for k, v in state.items()}
  backbone = _infer_mit_variant(state)
  variables = _convert_tree(state, _abstract_variables(backbone), _mit_torch_key,
                            ignored=lambda k: k.startswith(('classifier.', 'decode_head.')), what=backbone)
  return backbone, {'params': variables['params'], 'batch_stats': {}}


# ------------------------------------------------------------------------------------------------
# ResNet (torchvision).
# ------------------------------------------------------------------------------------------------

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
  return '.'.join(parts + [_LEAF_NAMES[leaf]])


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


def convert_resnet(state: StateDict) -> tuple[str, Variables]:
  """torchvision ResNet state dict -> ('resnetN', {'params': ..., 'batch_stats': ...})."""
  backbone = _infer_resnet_variant(state)
  variables = _convert_tree(state, _abstract_variables(backbone), _resnet_torch_key,
                            ignored=lambda k: k.startswith('fc.') or k.endswith('.num_batches_tracked'),
                            what=backbone)
  return backbone, variables


# ------------------------------------------------------------------------------------------------
# Registry of converters, keyed by --kind. Each maps a state dict to (name, variables) and
# declares the scope of what it returns. The whole-model 'gsanet' converter goes here.
# ------------------------------------------------------------------------------------------------

def convert_gsanet(state: StateDict) -> tuple[str, Variables]:
  raise NotImplementedError('--kind=gsanet (whole GSA-Net checkpoints) is not written yet; it is the '
                            'open part of issue #6. Backbones convert with --kind=mit or --kind=resnet.')


CONVERTERS: dict[str, tuple[str, Callable[[StateDict], tuple[str, Variables]]]] = {
    # kind: (scope, converter)
    'mit': ('backbone', convert_mit),
    'resnet': ('backbone', convert_resnet),
    'gsanet': ('model', convert_gsanet),
}


# ------------------------------------------------------------------------------------------------
# Writing and reading converted checkpoints.
# ------------------------------------------------------------------------------------------------

def convert(source: str, *, kind: str, output_dir: str, config=None) -> None:
  """Converts the checkpoint `source` of `kind` into `output_dir` (variables/ + meta.json).

  `config` is accepted for converters that need the model config (the future 'gsanet' one); the
  backbone converters do not use it. Raises ValueError (and writes nothing) on any mismatch, when
  `output_dir` exists and is not empty, or for an unknown kind.
  """
  del config  # Not needed by the backbone converters.
  if kind not in CONVERTERS:
    raise ValueError(f'Unknown --kind={kind!r}; choose one of {sorted(CONVERTERS)}.')
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
    raise ValueError(f'Output {output_dir!r} exists and is not an empty folder; refusing to overwrite.')
  scope, converter = CONVERTERS[kind]
  path = _resolve_source(source)
  name, variables = converter(read_state_dict(path))
  logging.info('Converted %s: %s %s (%d parameters).', path, kind, name,
               sum(np.size(x) for x in jax.tree.leaves(variables['params'])))
  meta = {'kind': kind, 'scope': scope, 'backbone': name, 'source': os.path.abspath(path)}

  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(output_dir)}.converting-', dir=parent)
  try:
    _save_variables(os.path.join(staging, VARIABLES_DIR), variables)
    with open(os.path.join(staging, META_FILE), 'w') as f:
      json.dump(meta, f, indent=2)
    if os.path.isdir(output_dir):
      os.rmdir(output_dir)  # Empty (checked above).
    os.rename(staging, output_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  print(f'Wrote {kind} {scope} {name} from {path} to {output_dir}')


def _save_variables(directory: str, variables: Variables) -> None:
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, jax.tree.map(jnp.asarray, variables))
    checkpointer.wait_until_finished()


def load_converted(path: str) -> tuple[dict[str, Any], Variables]:
  """Reads a folder written by `convert`: returns (meta, {'params': ..., 'batch_stats': ...}).

  For scope 'backbone' the tree is restored against the backbone's own structure, so a folder that
  does not fit `meta['backbone']` fails here rather than later.
  """
  meta_path = os.path.join(path, META_FILE)
  variables_path = os.path.join(path, VARIABLES_DIR)
  if not (os.path.isfile(meta_path) and os.path.isdir(variables_path)):
    raise ValueError(f'{path!r} is not a converted checkpoint: it needs {META_FILE} and {VARIABLES_DIR}/ '
                     '(write one with `python main.py --mode=convert`).')
  with open(meta_path) as f:
    meta = json.load(f)
  missing = {'kind', 'scope', 'backbone', 'source'} - set(meta)
  if missing:
    raise ValueError(f'{meta_path!r} lacks {sorted(missing)}; not a converted checkpoint.')
  import orbax.checkpoint as ocp
  target = None
  if meta['scope'] == 'backbone':
    abstract = _abstract_variables(meta['backbone'])
    target = {'params': abstract['params'], 'batch_stats': abstract.get('batch_stats', {})}
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(os.path.abspath(variables_path), target)
  return meta, variables
