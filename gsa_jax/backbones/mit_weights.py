"""Weight import for MiT (SegFormer) backbones: Hugging Face checkpoints, transformers 4.x or 5.x names.

  convert(state) -> ('mit_bN', {'params': ..., 'batch_stats': {}}), the variant inferred from the shapes.
Keys may carry the `segformer.` prefix or not; `classifier.*` and `decode_head.*` are ignored.
"""

import re

import jax
import jax.numpy as jnp

from gsa_jax import backbones
from gsa_jax import weights
from gsa_jax.backbones import mit

StateDict = weights.StateDict
Variables = weights.Variables


def abstract_variables(backbone: str) -> Variables:
  model = backbones.build_backbone(backbone)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))



# transformers 4.x name -> 5.x name (the 5.x layout is what gsa_jax.backbones.mit mirrors).
# MiT key names: (transformers 4.x, the official checkpoints; transformers 5.x, what we map onto). `{i}`
# stands for a number; a name that does not start with '.' is matched at the start of the key.
_MIT_NAME_PAIRS = (
    ('encoder.patch_embeddings.{i}.', 'stages.{i}.patch_embeddings.'),
    ('encoder.block.{i}.{j}.', 'stages.{i}.blocks.{j}.'),
    ('encoder.layer_norm.{i}.', 'stages.{i}.layer_norm.'),
    ('.attention.self.query.', '.attention.q_proj.'),
    ('.attention.self.key.', '.attention.k_proj.'),
    ('.attention.self.value.', '.attention.v_proj.'),
    ('.attention.self.sr.', '.attention.sequence_reduction.sequence_reduction.'),
    ('.attention.self.layer_norm.', '.attention.sequence_reduction.layer_norm.'),
    ('.attention.output.dense.', '.attention.o_proj.'),
    ('.mlp.dense1.', '.mlp.fc1.'),
    ('.mlp.dense2.', '.mlp.fc2.'),
    ('.layer_norm_1.', '.layernorm_before.'),
    ('.layer_norm_2.', '.layernorm_after.'),
)


_MIT_V4_TO_V5 = tuple(weights.rename_rule(v4, v5) for v4, v5 in _MIT_NAME_PAIRS)
MIT_V5_TO_V4 = tuple(weights.rename_rule(v5, v4) for v4, v5 in _MIT_NAME_PAIRS)


def normalise_key(key: str) -> str:
  """Strips `segformer.` and renames transformers 4.x keys to the 5.x layout."""
  key = key.removeprefix('segformer.')
  for pattern, replacement in _MIT_V4_TO_V5:
    key = re.sub(pattern, replacement, key)
  return key


def torch_key(names: tuple[str, ...]) -> str:
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
  return '.'.join(parts + [weights.LEAF_NAMES[leaf]])


def infer_variant(state: StateDict) -> str:
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


def convert(state: StateDict) -> tuple[str, Variables]:
  """HF SegFormer/MiT state dict -> ('mit_bN', {'params': ..., 'batch_stats': {}})."""
  state = {normalise_key(k): v for k, v in state.items()}
  backbone = infer_variant(state)
  variables = weights.convert_tree(state, abstract_variables(backbone), torch_key,
                            ignored=lambda k: k.startswith(('classifier.', 'decode_head.')), what=backbone)
  return backbone, {'params': variables['params'], 'batch_stats': {}}
