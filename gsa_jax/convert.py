"""Imports PyTorch / safetensors weights into gsa-jax checkpoints (issue #6).

  python main.py --mode=convert --source=FILE_OR_FOLDER --kind=mit|resnet|gsanet --output=DIR [--config=...]

Kinds:
  mit     Hugging Face SegFormer / MiT checkpoints (`model.safetensors` or `pytorch_model.bin`, or a
          folder holding one), e.g. `nvidia/mit-b2`. Keys may carry the `segformer.` prefix or not, and may
          use the transformers 4.x names (`encoder.block.{i}.{j}.attention.self.query`, ...) or the 5.x
          names (`stages.{i}.blocks.{j}.attention.q_proj`, ...). `classifier.*` and `decode_head.*` are
          ignored.
  resnet  torchvision ResNet-18/34/50/101 state dicts (`fc.*` and `num_batches_tracked` are ignored).
  gsanet  whole GSA-Net checkpoints of the official PyTorch code (Hydragon516/GSANet): the training
          checkpoints `{"epoch", "model_state_dict"}` (with or without DataParallel's `module.`) or a
          bare state dict, of the video model (meta kind 'gsanet') or of the stage-1 pretrain model
          (meta kind 'saliency'). The model config (backbone, dim, N_S, M) is inferred from the shapes;
          the rest is the official configuration, or `--config` (checked against the checkpoint).
          meta.json also gets 'model', the model config the variables fit. `to_official_state_dict`
          is the inverse.

The variant (mit_b0..b5, resnet18..101) is inferred from the checkpoint's shapes. Every mismatch
(unknown variant, missing key, unexpected key, wrong shape) is collected and raised as one ValueError
that lists each offending key; nothing is written then.

Output (docs/TEAM.md): `output_dir/variables/` (orbax StandardCheckpoint of
{'params': ..., 'batch_stats': ...}) and `output_dir/meta.json`
{"kind", "scope": "backbone"|"model", "backbone", "source"} (+ "model" for whole models). The output is written to a temporary folder next to
`output_dir` and renamed into place at the end. Read it back with `load_converted(path)`.

Reading is safe: safetensors, or `torch.load(..., weights_only=True)` (torch is imported only for
.bin/.pth/.pt files).
"""

import functools
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

from gsa_jax import weights
from gsa_jax import backbones
from gsa_jax.backbones import mit
from gsa_jax.backbones import resnet

StateDict = weights.StateDict
Variables = weights.Variables
read_state_dict = weights.read_state_dict

META_FILE = 'meta.json'
VARIABLES_DIR = 'variables'


def _abstract_variables(backbone: str) -> Variables:
  model = backbones.build_backbone(backbone)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))


# ------------------------------------------------------------------------------------------------
# MiT (Hugging Face SegFormer).
# ------------------------------------------------------------------------------------------------

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
_MIT_V5_TO_V4 = tuple(weights.rename_rule(v5, v4) for v4, v5 in _MIT_NAME_PAIRS)


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
  return '.'.join(parts + [weights.LEAF_NAMES[leaf]])


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
  variables = weights.convert_tree(state, _abstract_variables(backbone), _mit_torch_key,
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


def convert_resnet(state: StateDict) -> tuple[str, Variables]:
  """torchvision ResNet state dict -> ('resnetN', {'params': ..., 'batch_stats': ...})."""
  backbone = _infer_resnet_variant(state)
  variables = weights.convert_tree(state, _abstract_variables(backbone), _resnet_torch_key,
                            ignored=lambda k: k.startswith('fc.') or k.endswith('.num_batches_tracked'),
                            what=backbone)
  return backbone, variables


# ------------------------------------------------------------------------------------------------
# Whole GSA-Net checkpoints (the official PyTorch code, Hydragon516/GSANet).
#
# Video model (model/model_for_video.py, meta kind 'gsanet'):
#   {rgb,flow}_encoder.segformer.*      HF SegformerForImageClassification (4.x or 5.x names;
#                                       `{rgb,flow}_encoder.classifier.*` is ignored)
#   {rgb,flow}_MFFM{1..4}.branch{0..3}.0.{conv,bn}.*, .in_conv.*     (branches wrapped in Sequential)
#   {rgb,flow}_SG.{sqz,slot_enc}.*, {rgb,flow}_SG.FAT.*, {rgb,flow}_SA.FAT.*
#   {rgb,flow}_fusion.*, total_fuse{1..4}.conv1.{0,1,3}.*, .conv2.{0,1}.*
#   fusion{1..3}.cat_conv.{conv,bn}.*, linearr{5..8}.*
# FAT: line_conv_att (1x1 Conv2d -> 1), conva (Conv1d k=1), ATB.{G2L,L2G}.{to_q,to_k,to_v,to_out.0},
#   ATB.former{1,2}.layers.0.0.{norm, fn.to_qkv, fn.to_out.0}, ATB.former{1,2}.layers.0.1.{norm, fn.net.0,
#   fn.net.3}.
# Stage-1 model (model/model_for_pretrain.py, meta kind 'saliency'): rgb_encoder, rgb_MFFM{1..4} with
#   un-wrapped branches (`branchK.conv...`), fusion{1..3}, linearr{5..8}.
# Ignored everywhere: `num_batches_tracked`, the never-used FAT convn/convl/convd and
# Fusion.conv_upsample, the encoders' classifiers, a DataParallel `module.` prefix.
# ------------------------------------------------------------------------------------------------

_MODEL_CONFIG_FIELDS_INFERRED = ('kind', 'backbone', 'dim', 'num_slots', 'num_clusters')
# Model switches that change the parameter tree: the official checkpoints have the full model.
_OFFICIAL_SWITCHES = ('use_guided_slots', 'use_slot_attention', 'use_fat')

# Our module path (joined with '/', leaf excluded) -> official module path ('/' for '.'), in order.
_GSANET_MODULE_RULES = (
    (r'^(rgb|flow)_mffm(\d)/', r'\1_MFFM\2/'),
    (r'^(rgb|flow)_slots/generator/', r'\1_SG/'),
    (r'^(rgb|flow)_slots/attention/', r'\1_SA/'),
    (r'/fat/', '/FAT/'),
    (r'/FAT/pool_score$', '/FAT/line_conv_att'),
    (r'/FAT/(g2l|l2g)_(q|k|v)$', lambda m: f'/FAT/ATB/{m[1].upper()}/to_{m[2]}'),
    (r'/FAT/(g2l|l2g)_out$', lambda m: f'/FAT/ATB/{m[1].upper()}/to_out/0'),
    (r'/FAT/former(\d)/attn_norm$', r'/FAT/ATB/former\1/layers/0/0/norm'),
    (r'/FAT/former(\d)/to_qkv$', r'/FAT/ATB/former\1/layers/0/0/fn/to_qkv'),
    (r'/FAT/former(\d)/to_out$', r'/FAT/ATB/former\1/layers/0/0/fn/to_out/0'),
    (r'/FAT/former(\d)/ffn_norm$', r'/FAT/ATB/former\1/layers/0/1/norm'),
    (r'/FAT/former(\d)/ffn_in$', r'/FAT/ATB/former\1/layers/0/1/fn/net/0'),
    (r'/FAT/former(\d)/ffn_out$', r'/FAT/ATB/former\1/layers/0/1/fn/net/3'),
    (r'^fuse(\d)/conv1a$', r'total_fuse\1/conv1/0'),
    (r'^fuse(\d)/bn1$', r'total_fuse\1/conv1/1'),
    (r'^fuse(\d)/conv1b$', r'total_fuse\1/conv1/3'),
    (r'^fuse(\d)/conv2$', r'total_fuse\1/conv2/0'),
    (r'^fuse(\d)/bn2$', r'total_fuse\1/conv2/1'),
    (r'^decoder/head(\d)$', lambda m: f'linearr{int(m[1]) + 4}'),
    (r'^decoder/fusion(\d)/', r'fusion\1/'),
)
# The video model wraps each MFFM branch in nn.Sequential; the stage-1 model does not.
_WRAPPED_BRANCH_RULE = (r'^(rgb|flow)_MFFM(\d)/branch(\d)/', r'\1_MFFM\2/branch\3/0/')

_GSANET_IGNORED = re.compile(
    r'(\.num_batches_tracked$'
    r'|^(rgb|flow)_encoder\.classifier\.'
    r'|^(rgb|flow)_S[GA]\.FAT\.(convn|convl|convd)\.'
    r'|^fusion\d\.conv_upsample\.)')

def _gsanet_torch_key(names: tuple[str, ...], *, wrapped_branches: bool) -> str:
  """Our variable path -> the official key (encoders in the normalised 5.x layout, no `segformer.`).

  ('rgb_slots', 'generator', 'fat', 'former1', 'to_qkv', 'kernel') ->
  'rgb_SG.FAT.ATB.former1.layers.0.0.fn.to_qkv.weight'.
  """
  *modules, leaf = names
  if re.fullmatch(r'(rgb|flow)_encoder', modules[0]):
    return f'{modules[0]}.' + _mit_torch_key(tuple(modules[1:]) + (leaf,))
  path = '/'.join(modules)
  rules = _GSANET_MODULE_RULES[:1] + ((_WRAPPED_BRANCH_RULE,) if wrapped_branches else ()) + _GSANET_MODULE_RULES[1:]
  for pattern, replacement in rules:
    path = re.sub(pattern, replacement, path)
  return path.replace('/', '.') + '.' + weights.LEAF_NAMES[leaf]


def _gsanet_extra_dims(names: tuple[str, ...]) -> int:
  """Trailing size-1 axes of the PyTorch tensor: FAT.conva is a Conv1d(k=1), line_conv_att a 1x1 Conv2d."""
  if names[-1] != 'kernel' or 'fat' not in names:
    return 0
  return {'conva': 1, 'pool_score': 2}.get(names[-2], 0)


def _normalise_gsanet_key(key: str) -> str:
  """Strips `module.` (DataParallel) and renames MiT encoder keys to the 5.x layout without `segformer.`."""
  key = key.removeprefix('module.')
  if m := re.match(r'(rgb|flow)_encoder\.', key):
    rest = key[m.end():]
    if not rest.startswith('classifier.'):
      return m[0] + _normalise_mit_key(rest)
  return key


def _official_model_config(kind: str):
  """The model section of the config the official code matches (configs/davis_mitb2.py, pretrain_duts.py)."""
  if kind == 'video':
    from configs import davis_mitb2  # pylint: disable=g-import-not-at-top
    return davis_mitb2.get_config().model
  from configs import pretrain_duts  # pylint: disable=g-import-not-at-top
  return pretrain_duts.get_config().model


def _abstract_model_variables(model_config: Any) -> Variables:
  """`jax.eval_shape` of the model's init: {'params': ..., 'batch_stats': ...}."""
  from gsa_jax.models.gsanet import network as models  # pylint: disable=g-import-not-at-top
  settings = models.ModelSettings.from_config(model_config)
  return _abstract_model_variables_cached(settings)


@functools.lru_cache(maxsize=8)
def _abstract_model_variables_cached(settings) -> Variables:
  """Tracing the whole model takes seconds: converting and then loading traces it once."""
  from gsa_jax.models.gsanet import network as models  # pylint: disable=g-import-not-at-top
  model = models.GSANet(settings) if settings.kind == 'video' else models.SaliencyNet(settings)
  # Parameters do not depend on the input size, but the model wants >= num_clusters pixels at 1/16.
  side = 16 * int(np.ceil(np.sqrt(settings.slots.num_clusters)))
  side = max(64, -(-side // models.STRIDE) * models.STRIDE)
  inputs = models.example_inputs(settings, size=side, num_refs=1)
  abstract = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), inputs))
  return {'params': abstract['params'], 'batch_stats': abstract.get('batch_stats', {})}


def _infer_gsanet_model(state: StateDict, config: Any) -> dict[str, Any]:
  """The model config (a dict of configs/defaults.py model fields) that the normalised `state` fits.

  Inferred from the checkpoint: kind (a flow stream or slot modules -> 'video', else 'saliency'), the MiT
  variant, dim (MFFM width), num_slots (slot_enc outputs) and num_clusters (M, from the rgb_fusion input
  width dim + M + num_slots). Everything else comes from `config` when given (a full config or its model
  section), else from the official configuration (configs/davis_mitb2.py or configs/pretrain_duts.py).
  """
  if not any(k.startswith('rgb_encoder.') for k in state):
    sample = ', '.join(sorted(state)[:5]) or 'none'
    raise ValueError('The checkpoint is not a GSA-Net model: it has no rgb_encoder.* keys (first keys: '
                     f'{sample}). Backbone weights convert with --kind=mit or --kind=resnet.')
  video = any(k.startswith(('flow_', 'rgb_SG.', 'rgb_SA.', 'rgb_fusion.', 'total_fuse')) for k in state)
  kind = 'video' if video else 'saliency'
  encoder = {k[len('rgb_encoder.'):]: v for k, v in state.items() if k.startswith('rgb_encoder.')}
  try:
    backbone = _infer_mit_variant(encoder)
  except ValueError as e:
    raise ValueError(f'rgb_encoder: {e} (official GSA-Net checkpoints hold a Hugging Face MiT encoder).') from e

  if config is not None and hasattr(config, 'model'):
    config = config.model
  base = _official_model_config(kind) if config is None else config
  fields = dict(base.to_dict() if hasattr(base, 'to_dict') else base)
  inferred: dict[str, Any] = {'kind': kind, 'backbone': backbone}
  if (w := state.get('rgb_MFFM1.in_conv.weight')) is not None:
    inferred['dim'] = int(w.shape[0])
  if kind == 'video':
    if (w := state.get('rgb_SG.slot_enc.weight')) is not None:
      inferred['num_slots'] = int(w.shape[0])
    if (w := state.get('rgb_fusion.weight')) is not None and w.ndim == 4:
      dim = inferred.get('dim', fields.get('dim', 128))
      clusters = int(w.shape[1]) - dim - inferred.get('num_slots', fields.get('num_slots', 2))
      if clusters > 0:  # Else the shape report below names the odd rgb_fusion.weight.
        inferred['num_clusters'] = clusters

  if config is not None:
    differ = [f'{k}: checkpoint {v!r}, config {fields.get(k)!r}' for k, v in inferred.items()
              if k in fields and fields[k] != v]
    if differ:
      raise ValueError('The checkpoint does not match the given model config:\n  ' + '\n  '.join(differ) +
                       '\nDrop --config to convert for the configuration the checkpoint holds, or fix it.')
  fields.update(inferred)
  if config is None and fields.get('use_knn', True) and fields.get('knn_k', 16) > fields.get('num_clusters', 64):
    logging.warning('num_clusters=%d < knn_k=%d: knn_k set to %d.', fields['num_clusters'], fields['knn_k'],
                    fields['num_clusters'])
    fields['knn_k'] = fields['num_clusters']
  if kind == 'video':
    off = [s for s in _OFFICIAL_SWITCHES if not fields.get(s, True)]
    if off:
      raise ValueError(f'The model config sets {", ".join(f"{s}=False" for s in off)}, but GSA-Net checkpoints '
                       'hold the full model (every switch True); use a config without these ablations.')
  return fields


def convert_gsanet(state: StateDict, config: Any = None) -> tuple[str, Variables, dict[str, Any]]:
  """Official GSA-Net state dict -> (backbone, {'params', 'batch_stats'}, meta additions).

  Accepts the video model (meta kind 'gsanet') and the stage-1 pretrain model (meta kind 'saliency'),
  with or without `module.` prefixes (the training checkpoints' `model_state_dict` is unwrapped by
  `read_state_dict`). The meta additions hold 'kind' and 'model' (the model config the variables fit).
  """
  state = {_normalise_gsanet_key(k): v for k, v in state.items()}
  model_config = _infer_gsanet_model(state, config)
  kind = model_config['kind']
  abstract = _abstract_model_variables(model_config)
  variables = weights.convert_tree(
      state, abstract, functools.partial(_gsanet_torch_key, wrapped_branches=kind == 'video'),
      ignored=lambda k: bool(_GSANET_IGNORED.search(k)),
      what=f'GSA-Net {kind} model ({", ".join(f"{k}={model_config[k]}" for k in _MODEL_CONFIG_FIELDS_INFERRED)})',
      extra_dims=_gsanet_extra_dims)
  meta = {'kind': 'gsanet' if kind == 'video' else 'saliency', 'model': model_config}
  return model_config['backbone'], variables, meta


def to_official_state_dict(variables: Variables, model_config: Any, *, mit_names: str = 'v4',
                           include_unused: bool = True) -> StateDict:
  """Our {'params', 'batch_stats'} -> a state dict with the official GSA-Net names and PyTorch layouts.

  The inverse of `convert_gsanet`, e.g. to run weights trained here in the official PyTorch code. With
  `include_unused` it also holds what the official modules define but never use (zero classifiers,
  FAT convn/convl/convd, Fusion.conv_upsample, BatchNorm `num_batches_tracked`), so that
  `load_state_dict(strict=True)` accepts it. `mit_names`: 'v4' (transformers 4.x, as the official
  checkpoints) or 'v5'. Only MiT backbones have official names. Returns {key: numpy array}.
  """
  if mit_names not in ('v4', 'v5'):
    raise ValueError(f"mit_names must be 'v4' or 'v5'; got {mit_names!r}.")
  from gsa_jax.models.gsanet import network as models  # pylint: disable=g-import-not-at-top
  settings = models.ModelSettings.from_config(model_config)
  if settings.backbone not in mit.MIT_CONFIGS:
    raise ValueError(f'Official GSA-Net checkpoints hold MiT encoders; {settings.backbone!r} has no official names.')
  wrapped = settings.kind == 'video'
  state: StateDict = {}
  bn_modules: set[str] = set()
  for collection in ('params', 'batch_stats'):
    for path, value in jax.tree_util.tree_leaves_with_path(variables.get(collection) or {}):
      names = tuple(p.key for p in path)
      key = _gsanet_torch_key(names, wrapped_branches=wrapped)
      if m := re.match(r'(rgb|flow)_encoder\.', key):
        rest = key[m.end():]
        if mit_names == 'v4':
          for pattern, replacement in _MIT_V5_TO_V4:
            rest = re.sub(pattern, replacement, rest)
        key = f'{m[0]}segformer.{rest}'
      leaf = names[-1]
      value = np.asarray(value, np.float32)
      if leaf == 'kernel' and value.ndim == 4:
        value = np.transpose(value, (3, 2, 0, 1))  # [kh kw i o] -> [o i kh kw]
      elif leaf == 'kernel' and value.ndim == 2:
        value = value.T
      state[key] = np.ascontiguousarray(value.reshape(value.shape + (1,) * _gsanet_extra_dims(names)))
      if leaf == 'mean':
        bn_modules.add(key[:-len('.running_mean')])
  if include_unused:
    dim, c4 = settings.dim, backbones.backbone_channels(settings.backbone)[-1]
    zeros = lambda *shape: np.zeros(shape, np.float32)

    def add_bn(prefix, n):
      state.update({f'{prefix}.weight': np.ones(n, np.float32), f'{prefix}.bias': zeros(n),
                    f'{prefix}.running_mean': zeros(n), f'{prefix}.running_var': np.ones(n, np.float32)})
      bn_modules.add(prefix)

    streams = ('rgb', 'flow') if wrapped else ('rgb',)
    for s in streams:
      state[f'{s}_encoder.classifier.weight'] = zeros(1000, c4)
      state[f'{s}_encoder.classifier.bias'] = zeros(1000)
      if wrapped:
        for part in ('SG', 'SA'):
          prefix = f'{s}_{part}.FAT'
          state[f'{prefix}.convn.weight'] = zeros(dim, dim, 1)
          state[f'{prefix}.convl.weight'] = zeros(dim, dim, 1)
          state[f'{prefix}.convd.0.weight'] = zeros(dim, 2 * dim, 1)
          add_bn(f'{prefix}.convd.1', dim)
    for i in (1, 2, 3):
      state[f'fusion{i}.conv_upsample.conv.weight'] = zeros(dim, dim, 3, 3)
      add_bn(f'fusion{i}.conv_upsample.bn', dim)
    for prefix in bn_modules:
      state[f'{prefix}.num_batches_tracked'] = np.zeros((), np.int64)
  return state


# ------------------------------------------------------------------------------------------------
# Registry of converters, keyed by --kind. Each maps a state dict to (name, variables), or to
# (name, variables, meta) where `meta` adds to (or overrides, e.g. 'kind') the written meta.json, and
# declares the scope of what it returns. Kinds in _TAKES_CONFIG also get the `config` of `convert`.
# ------------------------------------------------------------------------------------------------

_TAKES_CONFIG = frozenset({'gsanet'})

CONVERTERS: dict[str, tuple[str, Callable[..., tuple]]] = {
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

  `config` is used by the 'gsanet' converter (a full config or its model section; see
  `convert_gsanet`); the backbone converters ignore it. Raises ValueError (and writes nothing) on any
  mismatch, when `output_dir` exists and is not empty, or for an unknown kind.
  """
  if kind not in CONVERTERS:
    raise ValueError(f'Unknown --kind={kind!r}; choose one of {sorted(CONVERTERS)}.')
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
    raise ValueError(f'Output {output_dir!r} exists and is not an empty folder; refusing to overwrite.')
  scope, converter = CONVERTERS[kind]
  path = weights.resolve_source(source)
  state = weights.read_state_dict(path)
  name, variables, *extra = converter(state, config=config) if kind in _TAKES_CONFIG else converter(state)
  logging.info('Converted %s: %s %s (%d parameters).', path, kind, name,
               sum(np.size(x) for x in jax.tree.leaves(variables['params'])))
  meta = {'kind': kind, 'scope': scope, 'backbone': name, 'source': os.path.abspath(path)}
  if extra:
    meta.update(extra[0])
  kind = meta['kind']

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

  For scope 'backbone' the tree is restored against the backbone's own structure, and for a whole model
  whose meta.json carries its model config ('model', as `convert_gsanet` writes) against that model's
  structure, so a folder that does not fit its meta fails here rather than later.
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
  elif meta['scope'] == 'model' and isinstance(meta.get('model'), dict):
    target = _abstract_model_variables(meta['model'])
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(os.path.abspath(variables_path), target)
  return meta, variables
