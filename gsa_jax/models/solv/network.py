"""SOLV (Aydemir et al., NeurIPS 2023) from frozen ViT features to reconstruction, slots and masks.

  SOLV(settings)(features, token_indices, frame_mask, *, train, merge_key=None, merge_prob=1.0) -> dict

Inputs (the frozen ViT runs outside this module; b clips of F = 2N + 1 frames, frames folded into the batch
axis clip-major, n = rows x cols tokens of a full frame, n' <= n tokens kept per frame):
  features       [b F, n', c]  ViT patch features (last block, before the final LN, no CLS) of the kept tokens.
  token_indices  [b F, n'] int the kept tokens' indices in 0..n-1 (sorted in training; arange(n) in evaluation).
  frame_mask     [b, F] bool   False for frames outside the video (their slots are ignored as keys in time).
Training: the dropped-token features of all F frames, merge_prob = merge_probability(epoch, epochs), a
merge_key, the 'dropout' rng, train=True; the loss compares 'reconstruction' with the full-token ViT features
of the centre frame (losses.py). Evaluation: `eval_inputs(video_features)` gives one window per frame with all
tokens; train=False, merge_prob=1.0 (the released evaluation always merges).

Output dict (float32 unless stated):
  reconstruction [b, n, c]   the decoded centre-frame features.
  masks          [b, k, n]   per-slot softmax of the decoder's alpha over the valid slots (0 in empty rows).
  slots          [b, k, D]   merged centre slots, rows 0..K-1 (zeros after).
  valid          [b, k] bool rows holding a (merged) slot; num_slots [b] int32 = K.
  labels         [b, k] int32 the row each centre slot was merged into (identity when not merged).
  merged         [b] bool    the clip was clustered and the result kept.
  attention      [b, k, n']  merged centre-frame attention of the spatial binder over the kept tokens.
  centre_slots   [b, k, D]   the temporal binder's centre slots before merging.
  all_slots      [b, F, k, D] the temporal binder's output for every frame (padded frames: unspecified).
  frame_attention [b, F, k, n'] the spatial binder's attention of every frame (before merging).
Param tree: spatial_binder, temporal_binder, decoder (see binder.py, temporal.py, decoder.py).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gsa_jax.models.solv import binder as binder_lib
from gsa_jax.models.solv import config as config_lib
from gsa_jax.models.solv import decoder as decoder_lib
from gsa_jax.models.solv import merge as merge_lib
from gsa_jax.models.solv import temporal as temporal_lib

Settings = config_lib.Settings


def check_inputs(settings: Settings, features: Any, token_indices: Any, frame_mask: Any) -> None:
  """Raises ValueError naming the bad input, its shape and the fix (shapes only: works under jit)."""
  f, c, n = settings.num_frames, settings.feature_dim, settings.num_tokens
  if len(features.shape) != 3 or features.shape[-1] != c:
    raise ValueError(f'SOLV features must be [b*F, n_kept, {c}] (model.feature_dim={c}); got shape '
                     f'{tuple(features.shape)}.')
  bf, kept, _ = features.shape
  if bf % f:
    raise ValueError(f'SOLV features: the first axis ({bf}) must be clips x F = clips x {f} frames '
                     f'(model.half_window={settings.half_window}).')
  if kept > n or kept < 1:
    raise ValueError(f'SOLV features hold {kept} tokens per frame; use 1..{n} (model.token_grid='
                     f'{settings.token_grid} has {n}).')
  if tuple(token_indices.shape) != (bf, kept) or not jnp.issubdtype(token_indices.dtype, jnp.integer):
    raise ValueError(f'SOLV token_indices must be integers of shape ({bf}, {kept}) like the features; got '
                     f'{token_indices.dtype} {tuple(token_indices.shape)}.')
  if tuple(frame_mask.shape) != (bf // f, f):
    raise ValueError(f'SOLV frame_mask must be [clips, F] = ({bf // f}, {f}); got {tuple(frame_mask.shape)}.')


def decoder_token_indices(token_indices: jnp.ndarray, frames: int, half_window: int, mode: str) -> jnp.ndarray:
  """The kept-token indices [b, n'] paired with each clip's centre attention for the decoder's S_p, S_s.

  token_indices [b F, n'] (clip-major). 'flattened' (released code, a bug): clip i takes row i, i.e. clip
  i // F, frame i % F; 'centre': clip i takes its own centre frame, row i F + N. Equal when every frame keeps
  the same tokens (evaluation).
  """
  b = token_indices.shape[0] // frames
  if mode == 'flattened':
    return token_indices[:b]
  return token_indices.reshape(b, frames, -1)[:, half_window]


class SOLV(nn.Module):
  """The trained part of SOLV: spatial binder, temporal binder, merger, decoder (module doc)."""
  settings: Settings

  @nn.compact
  def __call__(self, features: jnp.ndarray, token_indices: jnp.ndarray, frame_mask: jnp.ndarray, *,
               train: bool, merge_key: jax.Array | None = None, merge_prob: Any = 1.0) -> dict[str, jnp.ndarray]:
    s = self.settings
    check_inputs(s, features, token_indices, frame_mask)
    f, k, d, half = s.num_frames, s.num_slots, s.slot_dim, s.half_window
    bf, kept, _ = features.shape
    b = bf // f

    spatial = binder_lib.SpatialBinder(s, name='spatial_binder')(features, token_indices, train=train)
    frame_attention = spatial['attention'].reshape(b, f, k, kept)
    all_slots = temporal_lib.TemporalBinder(s, name='temporal_binder')(
        spatial['slots'].reshape(b, f, k, d), frame_mask, train=train)
    centre_slots = all_slots[:, half]                                                # [b k D]
    attention = frame_attention[:, half]                                             # [b k n']

    if s.merge_slots:
      merged = merge_lib.merge_slots(centre_slots, attention, key=merge_key, merge_prob=merge_prob,
                                     threshold=s.merge_threshold, min_clusters=s.min_merged_slots,
                                     eps=s.attention_eps)
    else:
      merged = dict(slots=centre_slots, attention=attention, valid=jnp.ones((b, k), bool),
                    num_slots=jnp.full((b,), k, jnp.int32), labels=jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32),
                                                                                    (b, k)),
                    merged=jnp.zeros((b,), bool))

    decoder_indices = decoder_token_indices(token_indices, f, half, s.rel_grid_indices)
    grid = spatial['grid']
    decoded = decoder_lib.Decoder(s, name='decoder')(merged['slots'], merged['attention'], grid[decoder_indices],
                                                     grid, merged['valid'])
    return dict(reconstruction=decoded['reconstruction'], masks=decoded['masks'], slots=merged['slots'],
                valid=merged['valid'], num_slots=merged['num_slots'], labels=merged['labels'],
                merged=merged['merged'], attention=merged['attention'], centre_slots=centre_slots,
                all_slots=all_slots, frame_attention=frame_attention)


def build_model(model_config: Any) -> SOLV:
  """SOLV from a model config (ConfigDict or dict; validated)."""
  return SOLV(Settings.from_config(model_config))


# ------------------------------------------------------------------------------------------------
# Inputs, variables, counts.
# ------------------------------------------------------------------------------------------------

def full_token_indices(frames: int, num_tokens: int) -> jnp.ndarray:
  """[frames, n] int32: every token kept (evaluation and the training target)."""
  return jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32), (frames, num_tokens))


def eval_inputs(video_features: jnp.ndarray, half_window: int) -> dict[str, jnp.ndarray]:
  """One clip per frame of a video, with all tokens (the released evaluation).

  Args:
    video_features: [t, n, c] ViT features of every frame with all tokens.
  Returns dict: features [t F, n, c] (frames t-N..t+N of each frame t; outside the video zeros, which give
    the same centre outputs as any padding since those frames are masked), token_indices [t F, n],
    frame_mask [t, F].
  """
  t, n, c = video_features.shape
  f = 2 * half_window + 1
  padded = jnp.pad(video_features, ((half_window, half_window), (0, 0), (0, 0)))
  index = jnp.arange(t)[:, None] + jnp.arange(f)[None, :]                            # [t F] into padded
  frame = index - half_window
  return dict(features=padded[index].reshape(t * f, n, c), token_indices=full_token_indices(t * f, n),
              frame_mask=(frame >= 0) & (frame < t))


def example_inputs(settings: Settings, *, batch: int = 1, kept: int | None = None) -> dict[str, jnp.ndarray]:
  """Zero features, the first `kept` tokens (default all) and all frames valid, for init / eval_shape."""
  f, n = settings.num_frames, settings.num_tokens
  kept = n if kept is None else kept
  return dict(features=jnp.zeros((batch * f, kept, settings.feature_dim), jnp.float32),
              token_indices=full_token_indices(batch * f, n)[:, :kept],
              frame_mask=jnp.ones((batch, f), bool))


def _init(settings: Settings, key: jax.Array) -> dict[str, Any]:
  inputs = example_inputs(settings, batch=1, kept=min(4, settings.num_tokens))
  variables = SOLV(settings).init({'params': key}, **inputs, train=False, merge_prob=0.0)
  if settings.identical_temporal_init:
    variables = dict(variables, params=tie_temporal_layers(variables['params']))
  return variables


def tie_temporal_layers(params: dict[str, Any]) -> dict[str, Any]:
  """Copies temporal layer 0 into the others, as torch's TransformerEncoder deep-copies one initialised layer."""
  temporal = dict(params['temporal_binder'])
  for name in temporal:
    if name.startswith('layer_'):
      temporal[name] = temporal['layer_0']
  return dict(params, temporal_binder=temporal)


def init_variables(settings: Settings, key: jax.Array) -> dict[str, Any]:
  """Random variables as the released init ({'params': ...}); the temporal layers identical if so set."""
  return jax.jit(lambda k: _init(settings, k))(key)


def abstract_variables(settings: Settings) -> dict[str, Any]:
  """jax.eval_shape of init_variables (no compute)."""
  return jax.eval_shape(lambda k: _init(settings, k), jax.random.key(0))


def part_counts(params: dict[str, Any]) -> dict[str, int]:
  """Parameter counts per part (arrays or ShapeDtypeStructs): the three modules, finer parts, and 'total'."""
  size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  counts = {name: size(params[name]) for name in ('spatial_binder', 'temporal_binder', 'decoder')}
  sb, dec = params['spatial_binder'], params['decoder']
  counts['spatial_binder/input_mlp'] = size([sb[n] for n in sb if n.startswith('input_')])
  counts['spatial_binder/gru'] = size(sb['gru'])
  counts['decoder/mlp'] = size(dec['mlp'])
  counts['total'] = size(params)
  return counts
