"""Official SOLV checkpoints <-> our SOLV params.

  read_checkpoint(path) -> (state, args)     a released training checkpoint ({'model', 'optimizer',
                                             'scheduler', 'epoch', 'args': argparse.Namespace}, keys
                                             'module.'-prefixed by DDP), a bare state dict, or safetensors.
                                             Read with torch.load(weights_only=True); only argparse.Namespace
                                             is allow-listed (torch.serialization.safe_globals).
  settings_overrides(args) -> dict           model-config fields implied by the checkpoint's argparse args.
  official_shapes(settings) -> {key: shape}  the official state-dict layout for these settings.
  from_torch(state, settings) -> params      official layout -> our param tree (one ValueError naming the
                                             first mismatching key and both shapes, then every problem).
  to_torch(params, settings) -> state        the reverse export (official key names, no 'module.' prefix).

Layout differences handled here: Linear (out, in) <-> Dense kernel (in, out); the GRU's fused
weight_ih / weight_hh / bias_ih / bias_hh (gates r, z, n) <-> ir, iz, in, hr, hz, hn (model.gru='torch': one
to one; 'flax': b_ir + b_hr and b_iz + b_hz folded into ir, iz, exported back with zero hidden biases); the
temporal layers' fused in_proj (q, k, v) <-> query, key, value; the leading unit axes of abs_grid (1,1,n,2),
slots (1,k,D), S_p / S_s (1,k,1,2), pos_embed_temporal (1,F,1,D) and pos_dec (1,n,D).
"""

import argparse
import os
from typing import Any

import jax
import numpy as np

from gsa_jax import weights as weights_lib
from gsa_jax.models.solv import config as config_lib
from gsa_jax.models.solv import network as network_lib

StateDict = dict[str, np.ndarray]
GATES = ('r', 'z', 'n')

# Which model-config field fixes the shape of an official key (for error messages).
_SHAPE_HINTS = (('abs_grid', 'token_grid'), ('pos_dec', 'token_grid / slot_dim'), ('slots', 'num_slots / slot_dim'),
                ('S_', 'num_slots'), ('pos_embed_temporal', 'half_window / slot_dim'),
                ('initial_mlp.0', 'feature_dim'), ('initial_mlp.1', 'feature_dim'), ('initial_mlp.3', 'feature_dim'),
                ('dec.layer', 'decoder_hidden / feature_dim / slot_dim'), ('linear', 'temporal_ffn'),
                ('mlp.layer', 'mlp_ratio'), ('', 'slot_dim'))


# ------------------------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------------------------

def read_checkpoint(path: str) -> tuple[StateDict, dict[str, Any] | None]:
  """Returns (state dict without the 'module.' prefix as float32 numpy, the argparse args as a dict or None)."""
  if not os.path.isfile(path):
    raise ValueError(f'SOLV checkpoint {path!r} does not exist.')
  if path.endswith('.safetensors'):
    return strip_prefix(weights_lib.read_state_dict(path)), None
  import torch  # only for PyTorch pickles
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      loaded = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as error:  # torch raises UnpicklingError (or RuntimeError for a non-pickle file)
    raise ValueError(f'Cannot read {path!r} as a SOLV checkpoint with torch.load(weights_only=True) and only '
                     f'argparse.Namespace allowed ({type(error).__name__}: {str(error)[:300]}). If it holds other '
                     "objects, re-save just the weights: torch.save(torch.load(path, weights_only=False)['model'], "
                     "'solv_state.pt') in a trusted environment.") from error
  args = None
  if isinstance(loaded, dict) and isinstance(loaded.get('model'), dict):
    args = loaded.get('args')
    args = vars(args) if isinstance(args, argparse.Namespace) else None
    loaded = loaded['model']
  if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
    raise ValueError(f'{path!r} holds no SOLV state dict: expected a training checkpoint with a "model" entry or '
                     f'a dict of tensors, got {type(loaded).__name__}.')
  state = {key: (value.float() if value.is_floating_point() else value).numpy() for key, value in loaded.items()}
  return strip_prefix(state), args


def strip_prefix(state: StateDict, prefix: str = 'module.') -> StateDict:
  """Removes DDP's 'module.' prefix (if every key has it)."""
  if state and all(key.startswith(prefix) for key in state):
    return {key[len(prefix):]: value for key, value in state.items()}
  return dict(state)


def settings_overrides(args: dict[str, Any] | None) -> dict[str, Any]:
  """Model-config fields of the official argparse args (num_slots, slot_dim, N, resize_to / patch_size, ...)."""
  if not args:
    return {}
  out = {}
  simple = (('num_slots', 'num_slots'), ('slot_dim', 'slot_dim'), ('N', 'half_window'),
            ('slot_att_iter', 'slot_iters'), ('slot_merge_coeff', 'merge_threshold'), ('merge_slots', 'merge_slots'))
  for arg, field in simple:
    if arg in args:
      out[field] = args[arg]
  if 'resize_to' in args and 'patch_size' in args:
    out['token_grid'] = tuple(int(size) // int(args['patch_size']) for size in args['resize_to'])
  return out


# ------------------------------------------------------------------------------------------------
# The official layout.
# ------------------------------------------------------------------------------------------------

def official_shapes(s: config_lib.Settings) -> dict[str, tuple[int, ...]]:
  """The official state dict's keys and shapes (torch's order) for settings s."""
  d, k, c, n, f = s.slot_dim, s.num_slots, s.feature_dim, s.num_tokens, s.num_frames
  linear = lambda name, out, inp: {f'{name}.weight': (out, inp), f'{name}.bias': (out,)}
  norm = lambda name, width: {f'{name}.weight': (width,), f'{name}.bias': (width,)}
  shapes = {'pos_dec': (1, n, d)}
  sb = 's_bind.'
  if s.trainable_grid:
    shapes[sb + 'abs_grid'] = (1, 1, n, 2)
  shapes.update({sb + 'slots': (1, k, d), sb + 'S_s': (1, k, 1, 2), sb + 'S_p': (1, k, 1, 2)})
  shapes.update(linear(sb + 'h', d, 2))
  shapes[sb + 'Q.weight'] = (d, d)
  shapes.update(norm(sb + 'norm', d))
  shapes.update({sb + 'gru.weight_ih': (3 * d, d), sb + 'gru.weight_hh': (3 * d, d), sb + 'gru.bias_ih': (3 * d,),
                 sb + 'gru.bias_hh': (3 * d,)})
  shapes.update(linear(sb + 'mlp.layer1', s.mlp_ratio * d, d))
  shapes.update(linear(sb + 'mlp.layer2', d, s.mlp_ratio * d))
  shapes.update(norm(sb + 'mlp.norm', d))
  shapes.update({sb + 'K.weight': (d, d), sb + 'V.weight': (d, d)})
  shapes.update(linear(sb + 'g', d, 2))
  shapes.update(linear(sb + 'f.0', d, d))
  shapes.update(linear(sb + 'f.2', d, d))
  if s.input_norm:
    shapes.update(norm(sb + 'initial_mlp.0', c))
  shapes.update(linear(sb + 'initial_mlp.1', c, c))
  shapes.update(linear(sb + 'initial_mlp.3', d, c))
  shapes.update(norm(sb + 'initial_mlp.4', d))
  shapes.update(linear(sb + 'final_layer', d, d))
  shapes['t_bind.pos_embed_temporal'] = (1, f, 1, d)
  for i in range(s.temporal_layers):
    p = f't_bind.slot_transformer.layers.{i}.'
    shapes.update({p + 'self_attn.in_proj_weight': (3 * d, d), p + 'self_attn.in_proj_bias': (3 * d,)})
    shapes.update(linear(p + 'self_attn.out_proj', d, d))
    shapes.update(linear(p + 'linear1', s.temporal_ffn, d))
    shapes.update(linear(p + 'linear2', d, s.temporal_ffn))
    shapes.update(norm(p + 'norm1', d))
    shapes.update(norm(p + 'norm2', d))
  width = d
  for i in range(1, s.decoder_layers + 1):
    out = c + 1 if i == s.decoder_layers else s.decoder_hidden
    shapes.update(linear(f'dec.layer{i}', out, width))
    width = out
  return shapes


def _hint(key: str) -> str:
  for fragment, field in _SHAPE_HINTS:
    if fragment in key:
      return field
  return 'slot_dim'


def check_state(state: StateDict, s: config_lib.Settings) -> None:
  """Raises one ValueError whose first line names the first mismatching key with both shapes."""
  expected = official_shapes(s)
  problems = []
  for key, shape in expected.items():
    if key not in state:
      problems.append(f'missing key {key} (expected shape {shape})')
    elif tuple(state[key].shape) != shape:
      problems.append(f'key {key}: checkpoint shape {tuple(state[key].shape)}, expected {shape} for these '
                      f'settings (model.{_hint(key)})')
  for key in state:
    if key not in expected:
      extra = ' (the checkpoint has a trained grid: use model.trainable_grid=True)' if key.endswith('abs_grid') else ''
      problems.append(f'unexpected key {key} (shape {tuple(state[key].shape)}){extra}')
  if problems:
    raise ValueError(f'The checkpoint does not match SOLV with these settings: {problems[0]}.\n'
                     f'All {len(problems)} problems:\n  ' + '\n  '.join(problems) +
                     '\nFix the model config (num_slots, slot_dim, token_grid, half_window, ...; read_checkpoint '
                     'returns the checkpoint\'s argparse args and settings_overrides turns them into fields).')


# ------------------------------------------------------------------------------------------------
# Official <-> ours.
# ------------------------------------------------------------------------------------------------

def _linear_pairs(s: config_lib.Settings) -> list[tuple[str, str]]:
  """(official module, our module path) for every Linear / LayerNorm that maps one to one."""
  pairs = [('s_bind.h', 'decoder.grid_embed'), ('s_bind.Q', 'spatial_binder.query'),
           ('s_bind.K', 'spatial_binder.key'), ('s_bind.V', 'spatial_binder.value'),
           ('s_bind.norm', 'spatial_binder.slot_norm'), ('s_bind.mlp.layer1', 'spatial_binder.mlp_fc1'),
           ('s_bind.mlp.layer2', 'spatial_binder.mlp_fc2'), ('s_bind.mlp.norm', 'spatial_binder.mlp_norm'),
           ('s_bind.g', 'spatial_binder.grid_embed'), ('s_bind.f.0', 'spatial_binder.kv_fc1'),
           ('s_bind.f.2', 'spatial_binder.kv_fc2'), ('s_bind.initial_mlp.1', 'spatial_binder.input_fc1'),
           ('s_bind.initial_mlp.3', 'spatial_binder.input_fc2'), ('s_bind.initial_mlp.4', 'spatial_binder.input_out_norm'),
           ('s_bind.final_layer', 'spatial_binder.output')]
  if s.input_norm:
    pairs.append(('s_bind.initial_mlp.0', 'spatial_binder.input_norm'))
  for i in range(s.temporal_layers):
    src, dst = f't_bind.slot_transformer.layers.{i}.', f'temporal_binder.layer_{i}.'
    pairs += [(src + 'self_attn.out_proj', dst + 'out'), (src + 'linear1', dst + 'fc1'), (src + 'linear2', dst + 'fc2'),
              (src + 'norm1', dst + 'norm1'), (src + 'norm2', dst + 'norm2')]
  pairs += [(f'dec.layer{i}', f'decoder.mlp.fc{i}') for i in range(1, s.decoder_layers + 1)]
  return pairs


def _raw_pairs(s: config_lib.Settings) -> list[tuple[str, str, tuple[int, ...]]]:
  """(official parameter, our parameter path, our shape) for the raw parameters (official: extra unit axes)."""
  d, k, n = s.slot_dim, s.num_slots, s.num_tokens
  pairs = [('pos_dec', 'decoder.pos_embed', (n, d)), ('s_bind.slots', 'spatial_binder.slots', (k, d)),
           ('s_bind.S_p', 'spatial_binder.positions', (k, 2)), ('s_bind.S_s', 'spatial_binder.scales', (k, 2)),
           ('t_bind.pos_embed_temporal', 'temporal_binder.pos_embed', (s.num_frames, d))]
  if s.trainable_grid:
    pairs.append(('s_bind.abs_grid', 'spatial_binder.grid', (n, 2)))
  return pairs


def _ours_in_torch_layout(state: StateDict, s: config_lib.Settings) -> StateDict:
  """Official state -> {our dotted module path + '.weight' / '.bias' (or raw name): torch-layout array}."""
  out = {}
  for src, dst in _linear_pairs(s):
    for leaf in ('weight', 'bias'):
      if f'{src}.{leaf}' in state:
        out[f'{dst}.{leaf}'] = state[f'{src}.{leaf}']
  for src, dst, shape in _raw_pairs(s):
    out[dst] = state[src].reshape(shape)
  gru = 'spatial_binder.gru.'
  w_ih, w_hh = np.split(state['s_bind.gru.weight_ih'], 3), np.split(state['s_bind.gru.weight_hh'], 3)
  b_ih, b_hh = np.split(state['s_bind.gru.bias_ih'], 3), np.split(state['s_bind.gru.bias_hh'], 3)
  for g, gate in enumerate(GATES):
    out[f'{gru}i{gate}.weight'] = w_ih[g]
    out[f'{gru}h{gate}.weight'] = w_hh[g]
    if s.gru == 'torch':
      out[f'{gru}i{gate}.bias'], out[f'{gru}h{gate}.bias'] = b_ih[g], b_hh[g]
    elif gate == 'n':
      out[f'{gru}in.bias'], out[f'{gru}hn.bias'] = b_ih[g], b_hh[g]
    else:
      out[f'{gru}i{gate}.bias'] = b_ih[g] + b_hh[g]   # flax.linen.GRUCell has no hr / hz bias
  for i in range(s.temporal_layers):
    src, dst = f't_bind.slot_transformer.layers.{i}.self_attn.', f'temporal_binder.layer_{i}.'
    ws, bs = np.split(state[src + 'in_proj_weight'], 3), np.split(state[src + 'in_proj_bias'], 3)
    for j, name in enumerate(('query', 'key', 'value')):
      out[f'{dst}{name}.weight'], out[f'{dst}{name}.bias'] = ws[j], bs[j]
  return out


def _torch_key(names: tuple[str, ...]) -> str:
  leaf = names[-1]
  return '.'.join(names[:-1] + (weights_lib.LEAF_NAMES.get(leaf, leaf),))


def from_torch(state: StateDict, settings: config_lib.Settings) -> dict[str, Any]:
  """Official SOLV state dict (with or without 'module.') -> our params tree ({'spatial_binder': ...})."""
  state = strip_prefix({key: np.asarray(value) for key, value in state.items()})
  check_state(state, settings)
  abstract = network_lib.abstract_variables(settings)
  converted = weights_lib.convert_tree(_ours_in_torch_layout(state, settings), {'params': abstract['params']},
                                       _torch_key, lambda key: False, 'SOLV')
  return converted['params']


def to_torch(params: dict[str, Any], settings: config_lib.Settings) -> StateDict:
  """Our params -> the official state dict (numpy, official key order, no 'module.' prefix)."""
  s = settings
  flat = {'.'.join(str(p.key) for p in path): np.asarray(leaf, np.float32)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}

  def module(path: str) -> dict[str, np.ndarray]:
    out = {}
    if f'{path}.kernel' in flat:
      out['weight'] = weights_lib.to_flax(flat[f'{path}.kernel'], 'kernel')   # a transpose, both ways
    if f'{path}.scale' in flat:
      out['weight'] = flat[f'{path}.scale']
    if f'{path}.bias' in flat:
      out['bias'] = flat[f'{path}.bias']
    return out

  state = {}
  for src, dst in _linear_pairs(s):
    for leaf, value in module(dst).items():
      state[f'{src}.{leaf}'] = value
  shapes = official_shapes(s)
  for src, dst, _ in _raw_pairs(s):
    state[src] = flat[dst].reshape(shapes[src])
  gru = 'spatial_binder.gru.'
  zeros = np.zeros((s.slot_dim,), np.float32)
  state['s_bind.gru.weight_ih'] = np.concatenate([module(gru + 'i' + g)['weight'] for g in GATES])
  state['s_bind.gru.weight_hh'] = np.concatenate([module(gru + 'h' + g)['weight'] for g in GATES])
  state['s_bind.gru.bias_ih'] = np.concatenate([module(gru + 'i' + g)['bias'] for g in GATES])
  state['s_bind.gru.bias_hh'] = np.concatenate([module(gru + 'h' + g).get('bias', zeros) for g in GATES])
  for i in range(s.temporal_layers):
    src, dst = f't_bind.slot_transformer.layers.{i}.self_attn.', f'temporal_binder.layer_{i}.'
    parts = [module(dst + name) for name in ('query', 'key', 'value')]
    state[src + 'in_proj_weight'] = np.concatenate([p['weight'] for p in parts])
    state[src + 'in_proj_bias'] = np.concatenate([p['bias'] for p in parts])
  return {key: state[key] for key in shapes}
