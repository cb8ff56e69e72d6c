"""Official GSA-Net checkpoints (Hydragon516/GSANet) <-> our variables.

  convert(state, model=None) -> (variables, model fields)   the official video model or the stage-1 model
  to_official_state_dict(variables, model)                  the way back (loads with strict=True in torch)

Whole GSA-Net checkpoints (the official PyTorch code, Hydragon516/GSANet).

Video model (model/model_for_video.py, meta kind 'gsanet'):
  {rgb,flow}_encoder.segformer.*      HF SegformerForImageClassification (4.x or 5.x names;
                                      `{rgb,flow}_encoder.classifier.*` is ignored)
  {rgb,flow}_MFFM{1..4}.branch{0..3}.0.{conv,bn}.*, .in_conv.*     (branches wrapped in Sequential)
  {rgb,flow}_SG.{sqz,slot_enc}.*, {rgb,flow}_SG.FAT.*, {rgb,flow}_SA.FAT.*
  {rgb,flow}_fusion.*, total_fuse{1..4}.conv1.{0,1,3}.*, .conv2.{0,1}.*
  fusion{1..3}.cat_conv.{conv,bn}.*, linearr{5..8}.*
FAT: line_conv_att (1x1 Conv2d -> 1), conva (Conv1d k=1), ATB.{G2L,L2G}.{to_q,to_k,to_v,to_out.0},
  ATB.former{1,2}.layers.0.0.{norm, fn.to_qkv, fn.to_out.0}, ATB.former{1,2}.layers.0.1.{norm, fn.net.0,
  fn.net.3}.
Stage-1 model (model/model_for_pretrain.py, meta kind 'saliency'): rgb_encoder, rgb_MFFM{1..4} with
  un-wrapped branches (`branchK.conv...`), fusion{1..3}, linearr{5..8}.
Ignored everywhere: `num_batches_tracked`, the never-used FAT convn/convl/convd and
Fusion.conv_upsample, the encoders' classifiers, a DataParallel `module.` prefix.
"""

import functools
import re
from typing import Any

from absl import logging
import jax
import numpy as np

from gsa_jax import backbones
from gsa_jax import weights
from gsa_jax.backbones import mit
from gsa_jax.backbones import mit_weights
from gsa_jax.models.gsanet import config as config_lib
from gsa_jax.models.gsanet import network

StateDict = weights.StateDict
Variables = weights.Variables

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
    return f'{modules[0]}.' + mit_weights.torch_key(tuple(modules[1:]) + (leaf,))
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
      return m[0] + mit_weights.normalise_key(rest)
  return key


def official_config(kind: str):
  """The full config the official code matches: configs/gsanet_davis_mitb2.py (video) or
  configs/gsanet_pretrain_duts.py (saliency)."""
  if kind == 'video':
    from configs import gsanet_davis_mitb2  # pylint: disable=g-import-not-at-top
    return gsanet_davis_mitb2.get_config()
  from configs import gsanet_pretrain_duts  # pylint: disable=g-import-not-at-top
  return gsanet_pretrain_duts.get_config()


def abstract_variables(model_config: Any) -> Variables:
  """`jax.eval_shape` of the model's init: {'params': ..., 'batch_stats': ...}."""
  return _abstract_variables_cached(network.ModelSettings.from_config(config_lib.network_fields(model_config)))


@functools.lru_cache(maxsize=8)
def _abstract_variables_cached(settings) -> Variables:
  """Tracing the whole model takes seconds: converting and then loading traces it once."""
  model = network.GSANet(settings) if settings.kind == 'video' else network.SaliencyNet(settings)
  # Parameters do not depend on the input size, but the model wants >= num_clusters pixels at 1/16.
  side = 16 * int(np.ceil(np.sqrt(settings.slots.num_clusters)))
  side = max(64, -(-side // network.STRIDE) * network.STRIDE)
  inputs = network.example_inputs(settings, size=side, num_refs=1)
  abstract = jax.eval_shape(lambda: network.init_variables(model, jax.random.key(0), inputs))
  return {'params': abstract['params'], 'batch_stats': abstract.get('batch_stats', {})}


def _infer_gsanet_model(state: StateDict, config: Any) -> dict[str, Any]:
  """The model config (a dict of model-section fields) that the normalised `state` fits.

  Inferred from the checkpoint: kind (a flow stream or slot modules -> 'video', else 'saliency'), the MiT
  variant, dim (MFFM width), num_slots (slot_enc outputs) and num_clusters (M, from the rgb_fusion input
  width dim + M + num_slots). Everything else comes from `config` when given (a full config or its model
  section), else from the official configuration (configs/gsanet_davis_mitb2.py or configs/gsanet_pretrain_duts.py).
  """
  if not any(k.startswith('rgb_encoder.') for k in state):
    sample = ', '.join(sorted(state)[:5]) or 'none'
    raise ValueError('The checkpoint is not a GSA-Net model: it has no rgb_encoder.* keys (first keys: '
                     f'{sample}). Backbone weights convert with --kind=mit or --kind=resnet.')
  video = any(k.startswith(('flow_', 'rgb_SG.', 'rgb_SA.', 'rgb_fusion.', 'total_fuse')) for k in state)
  kind = 'video' if video else 'saliency'
  encoder = {k[len('rgb_encoder.'):]: v for k, v in state.items() if k.startswith('rgb_encoder.')}
  try:
    backbone = mit_weights.infer_variant(encoder)
  except ValueError as e:
    raise ValueError(f'rgb_encoder: {e} (official GSA-Net checkpoints hold a Hugging Face MiT encoder).') from e

  if config is not None and hasattr(config, 'model'):
    config = config.model
  base = official_config(kind).model if config is None else config
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


def convert(state: StateDict, config: Any = None) -> tuple[Variables, dict[str, Any]]:
  """Official GSA-Net state dict -> ({'params', 'batch_stats'}, the model fields they fit).

  Accepts the video model (kind 'video') and the stage-1 pretrain model (kind 'saliency'), with or without
  `module.` prefixes (the training checkpoints' `model_state_dict` is unwrapped by `read_state_dict`).
  `config` (a full config or its model section) fixes every field the checkpoint does not decide; None uses
  the official configuration.
  """
  state = {_normalise_gsanet_key(k): v for k, v in state.items()}
  model_config = _infer_gsanet_model(state, config)
  kind = model_config['kind']
  abstract = abstract_variables(model_config)
  variables = weights.convert_tree(
      state, abstract, functools.partial(_gsanet_torch_key, wrapped_branches=kind == 'video'),
      ignored=lambda k: bool(_GSANET_IGNORED.search(k)),
      what=f'GSA-Net {kind} model ({", ".join(f"{k}={model_config[k]}" for k in _MODEL_CONFIG_FIELDS_INFERRED)})',
      extra_dims=_gsanet_extra_dims)
  return variables, model_config


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
  settings = network.ModelSettings.from_config(config_lib.network_fields(model_config))
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
          for pattern, replacement in mit_weights.MIT_V5_TO_V4:
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
