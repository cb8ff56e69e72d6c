"""Official Betrayed-by-Attention checkpoints and DINO backbones <-> our BA params.

  read_official(path) -> state               {key: float32 numpy} of a released BA checkpoint (a torch .pth dict
                                             {'model_state_dict', 'iteration', 'loss', maybe
                                             'optimizer_state_dict'}; the weights of the frozen encoder are
                                             inside), a bare state dict, a DINO backbone-only file
                                             (dino_deitsmall8_pretrain.pth), or a .safetensors file. Read with
                                             torch.load(weights_only=True) (argparse.Namespace allow-listed):
                                             no code in the file runs. Refuses what `classify` refuses.
  read_official_info(path) -> (state, info)  the same, with info {'iteration': int | None, 'loss': float | None}.
  classify(state, source) -> kind            'betrayed' (keys encoder.* and temporal_transformer.0.*) or
                                             'dino_backbone' (cls_token, pos_embed, patch_embed.proj.*,
                                             blocks.{i}.*, norm.*, in any naming vit_weights reads). A DINO
                                             *training* checkpoint (student / teacher / optimizer / args) and
                                             anything else raise BetrayedWeightsError saying what to do.
  official_shapes(variant) -> {key: shape}   the released state dict's keys and PyTorch shapes, in its order.
  from_official(state, variant) -> params    {'encoder': {'vit': ...}, 'block': {...}} (a DINO backbone gives
                                             only 'encoder'); every missing, unexpected or mis-shaped key is
                                             listed in one BetrayedWeightsError.
  to_official(params, kind) -> state         the way back ('betrayed': encoder.* + temporal_transformer.0.*,
                                             'dino_backbone': the backbone file's names).
  write_official(params, path, ...)          a .pth file as the released training script saves it (no
                                             optimizer state), which the released evaluation script loads.

Name map (torch Linear weight [out, in] <-> Dense kernel [in, out]; LayerNorm weight <-> scale):
  encoder.{cls_token, pos_embed, patch_embed.proj.*, blocks.{i}.*, norm.*}   encoder/vit/... (vit_weights)
  temporal_transformer.0.norm1.{weight, bias}                                block/norm1/{scale, bias}
  temporal_transformer.0.attn.qkv.weight (no bias)                           block/qkv/kernel
  temporal_transformer.0.attn.proj.{weight, bias}                            block/proj/{kernel, bias}
  temporal_transformer.0.norm2.{weight, bias}                                block/norm2/{scale, bias}
  temporal_transformer.0.mlp.fc1.{weight, bias} / mlp.fc2.{weight, bias}     block/fc1 / block/fc2
A 'module.' prefix (a DDP-wrapped model's state_dict) is stripped. The released model has one block
(`--num_t 1`); more blocks are reported as unexpected keys.
Users: the BA system (checkpoint import and export), the convert mode, tests/test_betrayed_weights.py.
"""

import argparse
import os
import re
from typing import Any

import jax
import numpy as np

from gsa_jax import errors
from gsa_jax import weights as weights_lib
from gsa_jax.backbones import vit as vit_lib
from gsa_jax.backbones import vit_weights
from gsa_jax.models.betrayed import encoder as encoder_lib

StateDict = dict[str, np.ndarray]

BETRAYED = 'betrayed'
DINO_BACKBONE = 'dino_backbone'
ENCODER_PREFIX = 'encoder.'
BLOCK_PREFIX = 'temporal_transformer.0.'

# (official module inside the block, our module, official leaf -> our leaf), in the released order.
_BLOCK_MODULES = (('norm1', 'norm1', {'weight': 'scale', 'bias': 'bias'}),
                  ('attn.qkv', 'qkv', {'weight': 'kernel'}),
                  ('attn.proj', 'proj', {'weight': 'kernel', 'bias': 'bias'}),
                  ('norm2', 'norm2', {'weight': 'scale', 'bias': 'bias'}),
                  ('mlp.fc1', 'fc1', {'weight': 'kernel', 'bias': 'bias'}),
                  ('mlp.fc2', 'fc2', {'weight': 'kernel', 'bias': 'bias'}))

# Key prefixes that only the released AttEncoder's state dict has (transformers' ViTModel also has
# 'encoder.layer.*', which is a DINO backbone).
_BETRAYED_MARKERS = ('temporal_transformer.',) + tuple(
    ENCODER_PREFIX + k for k in ('cls_token', 'pos_embed', 'patch_embed.', 'blocks.', 'norm.'))

# Encoder keys that may be present without a place in our tree (DINOv2's unused mask token).
_ENCODER_IGNORED = ('mask_token',)

# Order of the official ViT state dict: own parameters, then patch_embed, blocks, norm.
_TOKEN_ORDER = ('cls_token', 'pos_embed', 'register_tokens', 'mask_token', 'patch_embed.proj.weight',
                'patch_embed.proj.bias')
_BLOCK_ORDER = ('norm1', 'attn.qkv', 'attn.proj', 'ls1', 'norm2', 'mlp.fc1', 'mlp.fc2', 'ls2')

_EXPECTED_LAYOUTS = ("a Betrayed-by-Attention checkpoint (keys encoder.cls_token, encoder.pos_embed, "
                     "encoder.patch_embed.proj.*, encoder.blocks.{i}.*, encoder.norm.* and "
                     "temporal_transformer.0.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*, under "
                     "'model_state_dict' in the released checkpoint_dino-s-8.pth) or a DINO backbone "
                     "(keys cls_token, pos_embed, patch_embed.proj.*, blocks.{i}.*, norm.*, as in "
                     "dino_deitsmall8_pretrain.pth)")


class BetrayedWeightsError(errors.UserError):
  """A checkpoint that is not (or does not match) a Betrayed-by-Attention model or a DINO backbone."""


# ------------------------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------------------------

def _flatten(tree: dict, prefix: str = '') -> StateDict:
  """Nested dicts of tensors -> {dotted key: numpy}; other values (numbers, Namespaces, lists) are dropped."""
  import torch  # Only for PyTorch pickles.
  out: StateDict = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, torch.Tensor):
      value = value.detach()
      out[name] = (value.float() if value.is_floating_point() else value).numpy()
    elif isinstance(value, dict) and not str(key).startswith('optimizer'):
      out.update(_flatten(value, f'{name}.'))
  return out


def _scalar(value: Any) -> float | None:
  try:
    if hasattr(value, 'detach'):  # a torch tensor (the released script saves the loss with its graph flag)
      value = value.detach()
    return float(value.item() if hasattr(value, 'item') else value)
  except (TypeError, ValueError, RuntimeError):
    return None


def read_official_info(path: str) -> tuple[StateDict, dict[str, Any]]:
  """(state dict as float32 numpy, {'iteration', 'loss'}) of an official file; see the module docstring."""
  if not os.path.isfile(path):
    raise BetrayedWeightsError(f'Checkpoint {path!r} does not exist.')
  info: dict[str, Any] = {'iteration': None, 'loss': None}
  if path.endswith('.safetensors'):
    state = weights_lib.read_state_dict(path)
  else:
    import torch  # Only for PyTorch pickles.
    try:
      with torch.serialization.safe_globals([argparse.Namespace]):
        loaded = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # UnpicklingError for a disallowed object, RuntimeError / EOFError for a damaged file.
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise BetrayedWeightsError(
          f'{path} cannot be read safely with torch.load(weights_only=True) ({type(e).__name__}: {first[:200]}). '
          'It is damaged, or holds objects other than tensors, numbers and plain containers; nothing in it was '
          'run. If you trust the file, re-save its weights alone, e.g. torch.save(torch.load(PATH, '
          "weights_only=False)['model_state_dict'], 'ba_state.pth'), and convert that.") from e
    if not isinstance(loaded, dict):
      raise BetrayedWeightsError(f'{path} holds a {type(loaded).__name__}, not a state dict; expected '
                                 f'{_EXPECTED_LAYOUTS}.')
    for wrapper in ('model_state_dict', 'state_dict', 'model'):
      if isinstance(loaded.get(wrapper), dict):
        info = {'iteration': _scalar(loaded.get('iteration')), 'loss': _scalar(loaded.get('loss'))}
        if info['iteration'] is not None:
          info['iteration'] = int(info['iteration'])
        loaded = loaded[wrapper]
        break
    state = _flatten(loaded)
  classify(state, source=path)
  return strip_prefix(state), info


def read_official(path: str) -> StateDict:
  """The state dict of an official BA checkpoint or DINO backbone file (module docstring)."""
  return read_official_info(path)[0]


def strip_prefix(state: StateDict, prefix: str = 'module.') -> StateDict:
  """Removes DDP's 'module.' prefix (when every key has it)."""
  if state and all(key.startswith(prefix) for key in state):
    return {key[len(prefix):]: value for key, value in state.items()}
  return dict(state)


def _full_checkpoint_error(source: str, keys) -> BetrayedWeightsError:
  path = source if os.path.isfile(source) else 'PATH'
  tops = sorted({str(k).split('.')[0] for k in keys})[:8]
  return BetrayedWeightsError(
      f"{source} is the training checkpoint of DINO (top-level entries {tops}), not a backbone: its ViT "
      "weights sit under 'teacher' (prefix 'backbone.') and 'student' (prefix 'module.backbone.'). The released "
      'Betrayed-by-Attention code loads --dino_path with load_state_dict(strict=False), which silently loads '
      'nothing from this file and leaves the backbone random. Use the backbone instead: DINO\'s backbone-only '
      'file (dino_deitsmall8_pretrain.pth for ViT-S/8), or the teacher entry of this file with the '
      "'backbone.' prefix stripped, e.g.\n"
      "  python -c \"import argparse, torch; torch.serialization.add_safe_globals([argparse.Namespace]); "
      f"c = torch.load('{path}', map_location='cpu', weights_only=True); "
      "torch.save({k.removeprefix('backbone.'): v for k, v in c['teacher'].items() if k.startswith('backbone.')}, "
      "'dino_backbone.pth')\"\n"
      'then convert dino_backbone.pth.')


def classify(state: StateDict, source: str = 'The state dict') -> str:
  """'betrayed' or 'dino_backbone' (module docstring), else a BetrayedWeightsError naming `source`."""
  state = strip_prefix(state)
  if any(k.startswith(('teacher.', 'student.')) for k in state) or {'teacher', 'student'} & set(state):
    raise _full_checkpoint_error(source, state)
  if any(k.startswith(_BETRAYED_MARKERS) for k in state):
    return BETRAYED
  try:
    normalised, _ = vit_weights.normalise_state_dict(state)
  except ValueError:
    normalised = {}
  if 'patch_embed.proj.weight' in normalised and any(k.startswith('blocks.') for k in normalised):
    return DINO_BACKBONE
  some = ', '.join(sorted(state)[:8]) or 'none (no tensors)'
  raise BetrayedWeightsError(f'{source} is neither a Betrayed-by-Attention checkpoint nor a DINO backbone: '
                             f'expected {_EXPECTED_LAYOUTS}; its keys start with: {some}.')


# ------------------------------------------------------------------------------------------------
# The official layout.
# ------------------------------------------------------------------------------------------------

def _encoder_order(key: str) -> tuple:
  leaf = ('weight', 'bias', 'gamma').index(key.rsplit('.', 1)[-1]) if key.endswith(('weight', 'bias', 'gamma')) else 0
  if key in _TOKEN_ORDER:
    return (0, _TOKEN_ORDER.index(key), 0, 0, key)
  if m := re.match(r'blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$', key):
    module = m[2]
    return (1, int(m[1]), _BLOCK_ORDER.index(module) if module in _BLOCK_ORDER else len(_BLOCK_ORDER), leaf, key)
  return (2, 0, 0, leaf, key)


def _config(variant: 'str | vit_lib.ViTConfig') -> vit_lib.ViTConfig:
  encoder_lib.check_variant(variant)
  if variant == encoder_lib.PATCH_PROJECTION:
    raise BetrayedWeightsError(f'The {encoder_lib.PATCH_PROJECTION!r} encoder is the CPU stand-in: official '
                               "checkpoints hold a DINO ViT; pass its variant (e.g. 'dino_vits8').")
  return vit_lib.get_config(variant)


def encoder_shapes(variant: 'str | vit_lib.ViTConfig' = 'dino_vits8') -> dict[str, tuple[int, ...]]:
  """The ViT backbone's official keys (no prefix) and PyTorch shapes, in the official order."""
  shapes = vit_weights.official_shapes(_config(variant))
  return dict(sorted(shapes.items(), key=lambda kv: _encoder_order(kv[0])))


def block_shapes(dim: int = 384, mlp_ratio: float = 4.0) -> dict[str, tuple[int, ...]]:
  """The spatio-temporal block's official keys (without the temporal_transformer.0. prefix) and shapes."""
  hidden = int(dim * mlp_ratio)
  torch_shapes = {'norm1': {'weight': (dim,), 'bias': (dim,)}, 'attn.qkv': {'weight': (3 * dim, dim)},
                  'attn.proj': {'weight': (dim, dim), 'bias': (dim,)},
                  'norm2': {'weight': (dim,), 'bias': (dim,)},
                  'mlp.fc1': {'weight': (hidden, dim), 'bias': (hidden,)},
                  'mlp.fc2': {'weight': (dim, hidden), 'bias': (dim,)}}
  return {f'{module}.{leaf}': torch_shapes[module][leaf] for module, _, leaves in _BLOCK_MODULES for leaf in leaves}


def official_shapes(variant: 'str | vit_lib.ViTConfig' = 'dino_vits8') -> dict[str, tuple[int, ...]]:
  """The released AttEncoder state dict (num_t = 1): encoder.* then temporal_transformer.0.*, with shapes.
  The block's width is the encoder's (384 for the released ViT-S/8)."""
  cfg = _config(variant)
  shapes = {ENCODER_PREFIX + k: s for k, s in encoder_shapes(cfg).items()}
  shapes.update({BLOCK_PREFIX + k: s for k, s in block_shapes(cfg.width).items()})
  return shapes


def _check(found: StateDict, expected: dict[str, tuple[int, ...]], prefix: str, problems: list[str],
           ignored: tuple[str, ...] = ()) -> None:
  for key, shape in expected.items():
    if key not in found:
      problems.append(f'missing key {prefix}{key} (expected shape {shape})')
    elif tuple(found[key].shape) != tuple(shape):
      problems.append(f'wrong shape {prefix}{key}: checkpoint {tuple(found[key].shape)}, expected {tuple(shape)}')
  for key in found:
    if key not in expected and key not in ignored:
      problems.append(f'unexpected key {prefix}{key} (shape {tuple(found[key].shape)})')


# ------------------------------------------------------------------------------------------------
# Official <-> ours.
# ------------------------------------------------------------------------------------------------

def from_official(state: StateDict, variant: 'str | vit_lib.ViTConfig' = 'dino_vits8', *,
                  source: str = 'The checkpoint') -> dict[str, Any]:
  """Official BA state dict or DINO backbone -> {'encoder': {'vit': ...}, 'block': {...}} (float32 numpy).

  A DINO backbone gives only {'encoder': ...} (the block then starts from its random init). `variant` is the
  encoder's ViT (a key of vit.VIT_CONFIGS). Every problem is listed in one BetrayedWeightsError, which names
  `source` (e.g. the file the state was read from).
  """
  state = strip_prefix({key: np.asarray(value) for key, value in state.items()})
  kind = classify(state, source)
  cfg = _config(variant)
  problems: list[str] = []
  block = None
  if kind == BETRAYED:
    encoder_state = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    block = {k[len(BLOCK_PREFIX):]: v for k, v in state.items() if k.startswith(BLOCK_PREFIX)}
    for key in sorted(k for k in state if not k.startswith((ENCODER_PREFIX, BLOCK_PREFIX))):
      more = ' (only one spatio-temporal block, --num_t 1, is supported)' if key.startswith(
          'temporal_transformer.') else ''
      problems.append(f'unexpected key {key} (shape {tuple(state[key].shape)}){more}')
    encoder_prefix = ENCODER_PREFIX
  else:
    encoder_state, encoder_prefix = state, ''
  try:
    encoder_state, _ = vit_weights.normalise_state_dict(encoder_state)
  except ValueError as e:
    raise BetrayedWeightsError(f'The encoder of {source} cannot be read: {e}') from e
  _check(encoder_state, encoder_shapes(cfg), encoder_prefix, problems, _ENCODER_IGNORED)
  if block is not None:
    _check(block, block_shapes(cfg.width), BLOCK_PREFIX, problems)
  if problems:
    try:
      looks = vit_weights.infer_variant(encoder_state)
      hint = f' Its encoder has the shapes of {looks!r}.' if looks != cfg.name else ''
    except ValueError:
      hint = ''
    raise BetrayedWeightsError(
        f'{source} does not match Betrayed by Attention with the {cfg.name} encoder ({len(problems)} '
        f'problem{"s" if len(problems) > 1 else ""}):\n  ' + '\n  '.join(problems) + f'\nExpected {_EXPECTED_LAYOUTS}.{hint}')
  _, variables = vit_weights.convert_vit(encoder_state, cfg)
  params: dict[str, Any] = {'encoder': {'vit': variables['params']}}
  if block is not None:
    ours: dict[str, dict[str, np.ndarray]] = {}
    for official, module, leaves in _BLOCK_MODULES:
      for leaf, our_leaf in leaves.items():
        value = np.asarray(block[f'{official}.{leaf}'], np.float32)
        ours.setdefault(module, {})[our_leaf] = np.ascontiguousarray(value.T if our_leaf == 'kernel' else value)
    params['block'] = ours
  return params


def to_official(params: dict[str, Any], kind: str = BETRAYED) -> StateDict:
  """Our params ({'encoder': {'vit': ...}, 'block': ...}, optionally under 'params') -> official numpy state.

  kind 'betrayed': the released AttEncoder's names (encoder.* and, when `params` has a block,
  temporal_transformer.0.*); 'dino_backbone': the encoder alone under the DINO backbone file's names.
  DINOv2's unused mask_token is not written.
  """
  if kind not in (BETRAYED, DINO_BACKBONE):
    raise ValueError(f'kind must be {BETRAYED!r} or {DINO_BACKBONE!r}; got {kind!r}.')
  params = params.get('params', params)
  encoder = params['encoder']
  if 'vit' not in encoder:
    raise BetrayedWeightsError(f'This model\'s encoder is the {encoder_lib.PATCH_PROJECTION!r} CPU stand-in '
                               f'(params {sorted(encoder)}), which has no official counterpart; only a DINO ViT '
                               'encoder can be exported.')
  # The variant only decides whether DINOv2's mask token is added, which it is not here.
  vit_state = vit_weights.to_official_state_dict({'params': encoder['vit']}, 'dino_vits8', mask_token=False)
  prefix = ENCODER_PREFIX if kind == BETRAYED else ''
  state = {prefix + k: vit_state[k] for k in sorted(vit_state, key=_encoder_order)}
  if kind == BETRAYED and 'block' in params:
    block = params['block']
    for official, module, leaves in _BLOCK_MODULES:
      for leaf, our_leaf in leaves.items():
        value = np.asarray(block[module][our_leaf], np.float32)
        state[f'{BLOCK_PREFIX}{official}.{leaf}'] = np.ascontiguousarray(value.T if our_leaf == 'kernel' else value)
  return state


def write_official(params: dict[str, Any], path: str, *, iteration: int = 0, loss: float = 0.0) -> None:
  """Saves {'iteration', 'model_state_dict', 'loss'} as the released training script does (no optimizer)."""
  import torch  # Only for writing PyTorch pickles.
  state = {k: torch.from_numpy(np.array(v)) for k, v in to_official(params).items()}
  torch.save({'iteration': int(iteration), 'model_state_dict': state, 'loss': torch.tensor(float(loss))}, path)


def count_params(tree: Any) -> int:
  """Number of scalars in a params (sub)tree."""
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))
