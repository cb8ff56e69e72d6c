"""DINO / DINOv2 ViT weights: any of the published namings -> our variables, and back to the official names.

Accepted state dicts (numpy, e.g. from `read_vit_checkpoint` or `gsa_jax.weights.read_state_dict`):
  official / timm      `cls_token, pos_embed, patch_embed.proj.*, blocks.{i}.{norm1, attn.qkv, attn.proj,
                       [ls1.gamma], norm2, mlp.fc1, mlp.fc2, [ls2.gamma]}.*, norm.*` (+ DINOv2's `mask_token`,
                       ignored, and `register_tokens`). Also accepted: DINOv2's chunked `blocks.{chunk}.{i}.*`,
                       DINO's `module.` / `backbone.` prefixes (a teacher or student dict; `head.*` ignored), and
                       timm's register layout (`reg_token`, CLS position folded into `cls_token`, `pos_embed`
                       without the CLS row: read as a zero CLS position, which computes the same).
  transformers 4.x     `embeddings.{cls_token, mask_token, register_tokens, position_embeddings,
                       patch_embeddings.projection}`, `encoder.layer.{i}.` + ViTModel `{layernorm_before,
                       attention.attention.{query,key,value}, attention.output.dense, layernorm_after,
                       intermediate.dense, output.dense}` or Dinov2Model `{norm1, attention.attention.{query,key,
                       value}, attention.output.dense, layer_scale1.lambda1, norm2, mlp.fc1, mlp.fc2,
                       layer_scale2.lambda1}`, `layernorm` (optionally under `vit.` / `dinov2.`).
  transformers 5.x     ViTModel `layers.{i}.{layernorm_before, attention.{q,k,v,o}_proj, layernorm_after,
                       mlp.fc1, mlp.fc2}`; Dinov2Model / Dinov2WithRegistersModel `encoder.layer.{i}.{norm1,
                       attention.{q,k,v,o}_proj, layer_scale1.lambda1, norm2, mlp.fc1, mlp.fc2,
                       layer_scale2.lambda1}`; the same `embeddings.*` and `layernorm`.
q, k and v are concatenated (in that order) into qkv. The variant is inferred from the shapes (width, depth,
patch, LayerScale, registers, position grid). A DINO *training* checkpoint (student / teacher / optimizer)
is refused with the recipe to extract its teacher backbone.
"""

import argparse
import math
import pickle
import re

import jax
import numpy as np

from gsa_jax import weights
from gsa_jax.backbones import vit

StateDict = weights.StateDict
Variables = weights.Variables

# Keys that may be left over: DINOv2's unused mask token, heads and poolers of the wrappers.
_IGNORED = re.compile(r'^(mask_token$|head\.|pooler\.|classifier\.)')

# Wrapper prefixes, stripped before renaming.
_PREFIXES = ('module.', 'backbone.', 'vit.', 'dinov2_with_registers.', 'dinov2.')

# (pattern, replacement) from the transformers namings to the official one, applied in order.
_HF_RULES = tuple((re.compile(p), r) for p, r in (
    (r'^embeddings\.cls_token$', 'cls_token'),
    (r'^embeddings\.mask_token$', 'mask_token'),
    (r'^embeddings\.register_tokens$', 'register_tokens'),
    (r'^embeddings\.position_embeddings$', 'pos_embed'),
    (r'^embeddings\.patch_embeddings\.projection\.', 'patch_embed.proj.'),
    (r'^encoder\.layer\.(\d+)\.', r'blocks.\1.'),
    (r'^layers\.(\d+)\.', r'blocks.\1.'),
    (r'\.layernorm_before\.', '.norm1.'),
    (r'\.layernorm_after\.', '.norm2.'),
    (r'\.attention\.attention\.query\.', '.attn.q.'),
    (r'\.attention\.attention\.key\.', '.attn.k.'),
    (r'\.attention\.attention\.value\.', '.attn.v.'),
    (r'\.attention\.([qkv])_proj\.', r'.attn.\1.'),
    (r'\.attention\.output\.dense\.', '.attn.proj.'),
    (r'\.attention\.o_proj\.', '.attn.proj.'),
    (r'\.intermediate\.dense\.', '.mlp.fc1.'),
    (r'\.output\.dense\.', '.mlp.fc2.'),
    (r'\.layer_scale([12])\.lambda1$', r'.ls\1.gamma'),
    (r'^layernorm\.', 'norm.'),
))

_CHUNKED_BLOCK = re.compile(r'^blocks\.\d+\.(\d+)\.')  # DINOv2 block_chunks > 0: blocks.{chunk}.{i}.


def _full_checkpoint_hint(path: str) -> str:
  return ('Extract the teacher backbone (the weights DINO releases) once, e.g.\n'
          f"  python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
          "torch.save({k.removeprefix('module.').removeprefix('backbone.'): v for k, v in c['teacher'].items() "
          "if k.removeprefix('module.').startswith('backbone.')}, 'teacher_backbone.pth')\"\n"
          '(weights_only=False runs the pickle of the file: only for a file you trust; the student entry, with '
          "its 'module.backbone.' prefix, works the same way), then convert teacher_backbone.pth.")


def _refuse_training_checkpoint(path: str, keys) -> None:
  raise ValueError(f'{path} is a DINO training checkpoint (top-level keys {sorted(map(str, keys))[:8]}), not a '
                   "backbone state dict: its ViT weights sit under 'teacher' / 'student' with prefixes "
                   "('backbone.', 'module.backbone.'), so a plain load would leave the backbone random. "
                   + _full_checkpoint_hint(path))


def read_vit_checkpoint(source: str) -> StateDict:
  """Reads a ViT checkpoint file (or folder) into {key: numpy array}, refusing DINO training checkpoints.

  safetensors files and folders go through `gsa_jax.weights.read_state_dict`. PyTorch pickles are read with
  `torch.load(weights_only=True)` (argparse.Namespace allowed, as DINO stores its arguments in one), so no
  code in the file runs; 'model_state_dict' / 'state_dict' / 'model' wrappers are unwrapped.
  """
  path = weights.resolve_source(source)
  if not path.endswith(('.pth', '.pt', '.bin')):
    return weights.read_state_dict(path)
  import torch  # Only for PyTorch pickles.
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      loaded = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    reason = str(e).strip().splitlines()[0]
    raise ValueError(f'{path} could not be read with torch.load(weights_only=True): {reason}. If it is a DINO '
                     'training checkpoint (student / teacher / optimizer / args): '
                     + _full_checkpoint_hint(path)) from e
  if not isinstance(loaded, dict):
    raise ValueError(f'{path} does not hold a state dict (got {type(loaded).__name__}).')
  if {'teacher', 'student'} & set(loaded):
    _refuse_training_checkpoint(path, loaded)
  for wrapper in ('model_state_dict', 'state_dict', 'model'):
    if isinstance(loaded.get(wrapper), dict):
      loaded = loaded[wrapper]
  state = {}
  for key, value in loaded.items():
    if isinstance(value, torch.Tensor):
      state[key] = (value.float() if value.is_floating_point() else value).numpy()
  return state


# ------------------------------------------------------------------------------------------------
# Any naming -> the official one.
# ------------------------------------------------------------------------------------------------

def normalise_state_dict(state: StateDict) -> tuple[StateDict, str]:
  """Returns (state with official names and a fused qkv, naming) where naming is 'official', 'hf-4.x' or
  'hf-5.x'. Raises ValueError for training checkpoints and for incomplete q/k/v triples."""
  if any(k.startswith(('teacher.', 'student.')) for k in state):
    _refuse_training_checkpoint('This state dict', {k.split('.')[0] for k in state})
  out: StateDict = {}
  naming = 'official'
  for key, value in state.items():
    for prefix in _PREFIXES:
      key = key.removeprefix(prefix)
    if key.startswith(('embeddings.', 'encoder.layer.', 'layers.', 'layernorm.')):
      if key.startswith('layers.') or '_proj.' in key:
        naming = 'hf-5.x'
      elif naming == 'official':
        naming = 'hf-4.x'
      for pattern, replacement in _HF_RULES:
        key = pattern.sub(replacement, key)
    key = _CHUNKED_BLOCK.sub(r'blocks.\1.', key)
    if key in out:
      raise ValueError(f'Two checkpoint keys map to {key!r}; is this state dict a mix of two models?')
    out[key] = np.asarray(value)
  if any(re.search(r'\.mlp\.(w12|w3|weights_in|weights_out|gate_proj|up_proj|down_proj)\.', k) for k in out):
    raise ValueError('This checkpoint has a SwiGLU MLP (DINOv2 ViT-g/14); only the plain-MLP variants '
                     f'{sorted(vit.VIT_CONFIGS)} are supported.')
  # q, k, v -> qkv.
  for key in sorted(k for k in out if re.search(r'\.attn\.q\.(weight|bias)$', k)):
    parts = [key.replace('.attn.q.', f'.attn.{n}.') for n in 'qkv']
    missing = [p for p in parts if p not in out]
    if missing:
      raise ValueError(f'{key} has no partner {missing[0]}: q, k and v are needed to build attn.qkv.')
    out[key.replace('.attn.q.', '.attn.qkv.')] = np.concatenate([out.pop(p) for p in parts], axis=0)
  leftover = sorted(k for k in out if re.search(r'\.attn\.[kv]\.', k))
  if leftover:
    raise ValueError(f'{leftover[0]} has no matching attn.q tensor.')
  # timm's register layout: no CLS row in pos_embed, the CLS position folded into cls_token.
  if 'reg_token' in out:
    out['register_tokens'] = out.pop('reg_token')
    pos = out.get('pos_embed')
    if pos is not None and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
      out['pos_embed'] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
  return out, naming


# ------------------------------------------------------------------------------------------------
# Variant inference and checks.
# ------------------------------------------------------------------------------------------------

def _properties(state: StateDict) -> dict:
  """Shape facts of an official-named state dict."""
  proj = state.get('patch_embed.proj.weight')
  if proj is None or proj.ndim != 4:
    some = ', '.join(sorted(state)[:6]) or 'none'
    raise ValueError('No ViT patch embedding (patch_embed.proj.weight or '
                     'embeddings.patch_embeddings.projection.weight) in this state dict; its keys start with: '
                     f'{some}. A DINO training checkpoint must be read with read_vit_checkpoint, which says how '
                     'to extract its teacher backbone.')
  depth = len({int(m[1]) for k in state if (m := re.match(r'blocks\.(\d+)\.', k))})
  pos = state.get('pos_embed')
  grid = math.isqrt(pos.shape[1] - 1) if pos is not None and pos.ndim == 3 else None
  registers = state['register_tokens'].shape[1] if 'register_tokens' in state else 0
  return {'width': int(proj.shape[0]), 'depth': depth, 'patch': int(proj.shape[-1]),
          'layer_scale': 'blocks.0.ls1.gamma' in state, 'registers': int(registers), 'pos_grid': grid}


def _config_properties(cfg: vit.ViTConfig) -> dict:
  return {'width': cfg.width, 'depth': cfg.depth, 'patch': cfg.patch_size, 'layer_scale': cfg.layer_scale,
          'registers': cfg.num_register_tokens, 'pos_grid': cfg.pos_grid}


def infer_variant(state: StateDict, configs: dict[str, vit.ViTConfig] | None = None) -> str:
  """The name (a key of `configs`, default VIT_CONFIGS) whose shapes an official-named state dict has, or a
  ValueError listing them."""
  configs = vit.VIT_CONFIGS if configs is None else configs
  found = _properties(state)
  for name, cfg in configs.items():
    if _config_properties(cfg) == found:
      return name
  known = '; '.join(f'{n} {_config_properties(c)}' for n, c in configs.items())
  raise ValueError(f'No ViT variant has the shapes of this checkpoint {found}; known: {known}.')


def _torch_key(names: tuple[str, ...]) -> str:
  """Our path -> the official key: ('block_3', 'qkv', 'kernel') -> 'blocks.3.attn.qkv.weight'."""
  *modules, leaf = names
  if not modules:
    return leaf  # cls_token, pos_embed, register_tokens.
  parts = []
  for name in modules:
    if m := re.fullmatch(r'block_(\d+)', name):
      parts += ['blocks', m[1]]
    elif name == 'patch_embed':
      parts += ['patch_embed', 'proj']
    elif name in ('qkv', 'proj'):
      parts += ['attn', name]
    elif name in ('fc1', 'fc2'):
      parts += ['mlp', name]
    else:
      parts.append(name)
  return '.'.join(parts + [weights.LEAF_NAMES.get(leaf, leaf)])


def official_shapes(variant: str | vit.ViTConfig) -> dict[str, tuple[int, ...]]:
  """Official key -> PyTorch shape of every tensor we keep, in a fixed order (embeddings, blocks, final norm);
  DINOv2's unused `mask_token` is not listed."""
  abstract = vit.abstract_variables(variant)['params']
  shapes = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
    names = tuple(p.key for p in path)
    shapes[_torch_key(names)] = weights.torch_shape(leaf.shape, names[-1])
  first = ('patch_embed.proj.weight', 'patch_embed.proj.bias', 'cls_token', 'pos_embed', 'register_tokens')
  order = lambda k: ((first.index(k), 0, k) if k in first else (len(first) + 1, 0, k) if k.startswith('norm.')
                     else (len(first), int(k.split('.')[1]), k))
  return dict(sorted(shapes.items(), key=lambda kv: order(kv[0])))


def _check_variant(state: StateDict, config: vit.ViTConfig, configs: dict[str, vit.ViTConfig]) -> None:
  """Raises on the first tensor whose presence or shape differs from `config`'s."""
  try:
    looks_like = f' (the checkpoint looks like {infer_variant(state, configs)})'
  except ValueError:
    looks_like = ''
  expected = official_shapes(config)
  variant = config.name
  for key, shape in expected.items():
    if key not in state:
      raise ValueError(f'The checkpoint has no {key}, which {variant} needs with shape {shape}{looks_like}.')
    if tuple(state[key].shape) != shape:
      raise ValueError(f'Checkpoint tensor {key} has shape {tuple(state[key].shape)}; {variant} expects '
                       f'{shape}{looks_like}.')
  for key in state:
    if key not in expected and not _IGNORED.match(key):
      raise ValueError(f'Checkpoint tensor {key} (shape {tuple(state[key].shape)}) has no place in '
                       f'{variant}{looks_like}.')


def convert_vit(state: StateDict, variant: str | vit.ViTConfig | None = None, *,
                configs: dict[str, vit.ViTConfig] | None = None) -> tuple[str, Variables]:
  """A DINO / DINOv2 state dict in any accepted naming -> (variant name, {'params': ...}) for VisionTransformer.

  `variant` None infers it from the shapes among `configs` (default VIT_CONFIGS); given (a name or a
  ViTConfig), the checkpoint must match it, else a ValueError names the first mismatching tensor with both
  shapes.
  """
  configs = vit.VIT_CONFIGS if configs is None else configs
  state, _ = normalise_state_dict(state)
  _properties(state)  # A clear error when there is no ViT in `state` at all.
  if variant is None:
    config = configs[infer_variant(state, configs)]
  else:
    config = vit.get_config(variant)
    _check_variant(state, config, configs)
  abstract = vit.abstract_variables(config)
  variables = weights.convert_tree(state, {'params': abstract['params']}, _torch_key,
                                   ignored=lambda k: bool(_IGNORED.match(k)), what=config.name)
  return config.name, {'params': variables['params']}


def load_vit(source: str, variant: str | vit.ViTConfig | None = None) -> tuple[str, Variables]:
  """read_vit_checkpoint + convert_vit."""
  return convert_vit(read_vit_checkpoint(source), variant)


def to_official_state_dict(variables: Variables, variant: str | vit.ViTConfig, *,
                           mask_token: bool = True) -> StateDict:
  """Our {'params': ...} -> the official DINO / DINOv2 state dict (PyTorch layouts, float32 numpy).

  With `mask_token` a DINOv2 variant also gets a zero `mask_token` [1, c] (unused by every forward), so the
  official `load_state_dict(strict=True)` accepts the result.
  """
  cfg = vit.get_config(variant)
  params = variables.get('params', variables)
  state: StateDict = {}
  for path, value in jax.tree_util.tree_leaves_with_path(params):
    names = tuple(p.key for p in path)
    value = np.asarray(value, np.float32)
    if names[-1] == 'kernel' and value.ndim == 4:
      value = np.transpose(value, (3, 2, 0, 1))  # [kh kw i o] -> [o i kh kw]
    elif names[-1] == 'kernel' and value.ndim == 2:
      value = value.T
    state[_torch_key(names)] = np.ascontiguousarray(value)
  if mask_token and cfg.layer_scale:
    state['mask_token'] = np.zeros((1, cfg.width), np.float32)
  return state


# The name the other backbone weight modules use (mit_weights.convert, resnet_weights.convert).
convert = convert_vit
