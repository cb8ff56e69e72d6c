"""SOLV's config: the model section (`model_config`), the network settings, their validation.

The defaults reproduce the released SOLV code (gorkaydemir/SOLV, YTVIS-19 setting). Every place where the
released code and the paper's text disagree is a named field; its comment gives both values.

  model_config() -> ml_collections.ConfigDict   config.model: the frozen encoder, the input size, token drop,
                                                the merge schedule, tracking, and every network field.
  check(model) -> list[str]                     every problem of config.model, naming `model.<field>` and the fix.
  settings_from_model(model) -> Settings        the network settings of a model section (feature width and
                                                token grid follow from model.encoder and model.image_size).
  network_config() -> ml_collections.ConfigDict the network fields alone (feature_dim and token_grid explicit),
                                                for the network modules and their tests.
  validate(config) -> list[str]                 every problem of a network config.
  Settings.from_config(config) -> Settings      frozen dataclass (hashable: usable as a Flax module field);
                                                raises one ValueError listing every problem.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections

NAME = 'solv'
UPDATE_ORDERS = ('gru_mlp', 'mlp_gru')
GRU_LAYOUTS = ('torch', 'flax')
REL_GRID_INDICES = ('flattened', 'centre')
LOSSES = ('mse', 'squared_norm')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def network_config() -> ml_collections.ConfigDict:
  """The released SOLV network (YTVIS-19: 8 slots, 336x504 frames -> 24x36 DINOv2 ViT-B/14 tokens)."""
  m = ml_collections.ConfigDict()
  m.name = NAME  # the model family, for the registry.
  # Input features: width of the frozen ViT tokens (768 for ViT-B) and the patch grid of one frame
  # (rows, columns): 336x504 / 14 = (24, 36) for YTVIS-19 and DAVIS-17, 336x336 / 14 = (24, 24) for MOVi-E.
  m.feature_dim = 768
  m.token_grid = (24, 36)
  m.half_window = 2  # N: a clip is frames t-N..t+N (F = 2N + 1 = 5), the centre frame is reconstructed.
  # Spatial binder (invariant slot attention per frame).
  m.num_slots = 8  # S (MOVi-E: 18; Table 4 also 6 and 12).
  m.slot_dim = 128  # D.
  m.slot_iters = 3  # GRU + MLP updates.
  # True (code): one more attention-only pass after the updates gives the returned attention, positions and
  # scales, and the output slots are Dense(LN(z)) of that pass. False (paper: "repeat 3 times"): the
  # attention of the last update pass is returned and the output slots are Dense(LN(z)) of the updated z.
  m.final_attention_pass = True
  # 'gru_mlp' (code and appendix B.2's text): z = GRU(z_prev, U), then z = z + MLP(LN(z)).
  # 'mlp_gru' (appendix C eq. 17): z = z + MLP(LN(z)), then z = GRU(z, U).
  m.update_order = 'gru_mlp'
  # True (code): the input projection is LN -> Dense -> ReLU -> Dense -> LN. False (paper B.2): without the
  # first LN (2-layer MLP followed by LN).
  m.input_norm = True
  # True (code): the absolute coordinate grid G_abs is a trained parameter. False (paper): a fixed grid.
  m.trainable_grid = True
  m.grid_scale = 5.0  # delta: relative grids divide by S_s * delta (paper B.2, code sigma).
  m.mlp_ratio = 4  # residual MLP width = mlp_ratio * D.
  m.attention_eps = 1e-8  # added to the slot softmax before the normalisation over tokens (also merger).
  # GRU parameter layout. 'torch' (default): the torch.nn.GRUCell layout, a bias on every input and hidden
  # projection (6 x D biases): the official parameter count and, under Adam, the official training dynamics
  # (the r and z gates each have two biases that both learn). 'flax': flax.linen.GRUCell (r and z hidden
  # biases folded into the input ones on conversion, 2 x D fewer parameters, the same function).
  m.gru = 'torch'
  # Temporal binder (post-norm transformer along time, per slot index).
  m.temporal_layers = 3
  m.temporal_heads = 8
  m.temporal_ffn = 512  # FFN width (4 x D).
  # True (code): the temporal layers start from identical weights (nn.TransformerEncoder deep-copies one
  # initialised layer). False: each layer drawn independently.
  m.identical_temporal_init = True
  m.dropout = 0.1  # ISA residual MLP and the four dropout points of each temporal layer.
  # Slot merger (agglomerative clustering of the centre slots, complete linkage, cosine distance).
  m.merge_slots = True  # False: no merger at all (the paper's DAVIS-17 fine-tuning).
  m.merge_threshold = 0.12  # clusters merge while their largest pairwise 1 - cos is < this (strict).
  # A merge that leaves fewer clusters than this is discarded (every slot kept). 3 (code: '<= 2 clusters ->
  # no merge', not in the paper) | 1 (paper: every merge kept).
  m.min_merged_slots = 3
  # Decoder.
  # Token positions paired with the centre attention when the decoder's S_p, S_s are computed in training:
  # 'flattened' (code, a bug): sample i uses the kept tokens of flattened frame i (sample i // F, frame
  # i % F); 'centre': those of its own centre frame (flattened index i F + N). Identical in evaluation.
  m.rel_grid_indices = 'flattened'
  m.decoder_hidden = 1024
  m.decoder_layers = 5  # Dense layers: (decoder_layers - 1) x (Dense, ReLU), then Dense to feature_dim + 1.
  # 'mse' (code: F.mse_loss, the mean over clips, tokens and channels) | 'squared_norm' (paper eq. 12:
  # ||phi(v_t) - y||^2 summed over tokens and channels, mean over clips).
  m.loss = 'mse'
  m.dtype = 'float32'  # compute dtype of the Dense layers: 'float32' | 'bfloat16' (params stay float32).
  m.remat = False  # True: rematerialise the decoder MLP in the backward pass (less memory, more compute).
  return m


@dataclasses.dataclass(frozen=True)
class Settings:
  """A frozen copy of `network_config()` (see there for each field)."""
  name: str = NAME
  feature_dim: int = 768
  token_grid: tuple[int, int] = (24, 36)
  half_window: int = 2
  num_slots: int = 8
  slot_dim: int = 128
  slot_iters: int = 3
  final_attention_pass: bool = True
  update_order: str = 'gru_mlp'
  input_norm: bool = True
  trainable_grid: bool = True
  grid_scale: float = 5.0
  mlp_ratio: int = 4
  attention_eps: float = 1e-8
  gru: str = 'torch'
  temporal_layers: int = 3
  temporal_heads: int = 8
  temporal_ffn: int = 512
  identical_temporal_init: bool = True
  dropout: float = 0.1
  merge_slots: bool = True
  merge_threshold: float = 0.12
  min_merged_slots: int = 3
  rel_grid_indices: str = 'flattened'
  decoder_hidden: int = 1024
  decoder_layers: int = 5
  loss: str = 'mse'
  dtype: str = 'float32'
  remat: bool = False

  @property
  def num_frames(self) -> int:
    """F = 2N + 1 frames per clip."""
    return 2 * self.half_window + 1

  @property
  def num_tokens(self) -> int:
    """Tokens of one full frame (rows x columns of the patch grid)."""
    return self.token_grid[0] * self.token_grid[1]

  @property
  def compute_dtype(self) -> jnp.dtype:
    return DTYPES[self.dtype]

  @classmethod
  def from_config(cls, config: Any) -> 'Settings':
    """From an ml_collections ConfigDict (or a dict) of model fields; raises ValueError listing problems."""
    problems = validate(config)
    if problems:
      raise ValueError('Bad SOLV model config:\n  ' + '\n  '.join(problems))
    fields = _as_dict(config)
    kwargs = {}
    for f in dataclasses.fields(cls):
      value = fields.get(f.name, f.default)
      if f.name == 'token_grid':
        value = tuple(int(v) for v in value)
      elif isinstance(f.default, bool):
        value = bool(value)
      elif isinstance(f.default, int):
        value = int(value)
      elif isinstance(f.default, float):
        value = float(value)
      kwargs[f.name] = value
    return cls(**kwargs)


def _as_dict(config: Any) -> dict[str, Any]:
  return dict(config.to_dict() if hasattr(config, 'to_dict') else config)


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(config: Any) -> list[str]:
  """Every problem of a SOLV model config, each naming `model.<field>`, the value and the fix."""
  fields = _as_dict(config)
  known = {f.name: f.default for f in dataclasses.fields(Settings)}
  problems = [f'model.{k}={fields[k]!r} is not a SOLV field; valid fields: {sorted(known)}'
              for k in sorted(set(fields) - set(known))]
  get = lambda name: fields.get(name, known[name])

  def bad(name: str, fix: str) -> None:
    problems.append(f'model.{name}={get(name)!r}: {fix} (--config.model.{name}=...)')

  def positive_int(name: str) -> None:
    if not _is_int(get(name)) or get(name) < 1:
      bad(name, 'use a positive integer')

  def choice(name: str, options: tuple[str, ...]) -> None:
    if get(name) not in options:
      bad(name, f'choose one of {options}')

  def boolean(name: str) -> None:
    if not isinstance(get(name), bool):
      bad(name, 'use True or False')

  if get('name') != NAME:
    bad('name', f'this config is for {NAME!r}')
  for name in ('feature_dim', 'num_slots', 'slot_dim', 'slot_iters', 'mlp_ratio', 'temporal_layers',
               'temporal_heads', 'temporal_ffn', 'decoder_hidden'):
    positive_int(name)
  for name in ('final_attention_pass', 'input_norm', 'trainable_grid', 'identical_temporal_init',
               'merge_slots', 'remat'):
    boolean(name)
  choice('update_order', UPDATE_ORDERS)
  choice('gru', GRU_LAYOUTS)
  choice('rel_grid_indices', REL_GRID_INDICES)
  choice('loss', LOSSES)
  choice('dtype', tuple(DTYPES))
  grid = get('token_grid')
  if (not isinstance(grid, (tuple, list)) or len(grid) != 2 or not all(_is_int(v) and v >= 1 for v in grid)):
    bad('token_grid', 'use (rows, columns) of the patch grid, e.g. (24, 36) for 336x504 with patch 14')
  if not _is_int(get('half_window')) or get('half_window') < 0:
    bad('half_window', 'use N >= 0 (a clip has 2N + 1 frames)')
  if _is_int(get('num_slots')) and get('num_slots') < 2:
    bad('num_slots', 'use at least 2 slots')
  if _is_int(get('slot_dim')) and _is_int(get('temporal_heads')) and get('temporal_heads') >= 1:
    if get('slot_dim') % get('temporal_heads'):
      bad('temporal_heads', f'it must divide model.slot_dim={get("slot_dim")}')
  if not _is_number(get('grid_scale')) or not get('grid_scale') > 0:
    bad('grid_scale', 'use a positive scale (official 5)')
  if not _is_number(get('attention_eps')) or get('attention_eps') < 0:
    bad('attention_eps', 'use eps >= 0 (official 1e-8)')
  if not _is_number(get('dropout')) or not 0.0 <= get('dropout') < 1.0:
    bad('dropout', 'use a rate in [0, 1)')
  if not _is_number(get('merge_threshold')) or not 0.0 <= get('merge_threshold') <= 2.0:
    bad('merge_threshold', 'use a cosine distance in [0, 2] (official 0.12)')
  if not _is_int(get('min_merged_slots')) or get('min_merged_slots') < 1:
    bad('min_merged_slots', 'use 1 (keep every merge) or more (official 3)')
  if not _is_int(get('decoder_layers')) or get('decoder_layers') < 2:
    bad('decoder_layers', 'use at least 2 Dense layers (official 5)')
  return problems


# ------------------------------------------------------------------------------------------------
# The model section (config.model): the encoder, the input, training and evaluation rules + the network.
# ------------------------------------------------------------------------------------------------

PATCH_PROJECTION = 'patch_projection'
MERGE_SCHEDULES = ('log_epochs', 'always', 'never')
TRACKING_RULES = ('released', 'new_tracks')
# Network fields that the model section does not hold: they follow from the encoder and the input size.
DERIVED_FIELDS = ('feature_dim', 'token_grid')
# Model-section fields that are not network settings.
MODEL_FIELDS = ('encoder', 'image_size', 'encoder_dtype', 'encoder_weights', 'projection_patch', 'projection_dim',
                'token_drop_ratio', 'merge_schedule', 'merge_epochs', 'tracking', 'sklearn_numbering')


def encoder_names() -> tuple[str, ...]:
  from gsa_jax.backbones import vit  # pylint: disable=g-import-not-at-top
  return tuple(sorted(vit.VIT_CONFIGS)) + (PATCH_PROJECTION,)


def model_config() -> ml_collections.ConfigDict:
  """config.model of SOLV: the released YTVIS-19 model (see network_config for the network fields)."""
  m = ml_collections.ConfigDict()
  m.name = NAME
  # The frozen encoder: a DINO / DINOv2 ViT of gsa_jax.backbones.vit (released: 'dinov2_vitb14'; paper
  # Table 5 also 'dino_vitb16', 'dino_vitb8'), or 'patch_projection' (a fixed random linear map of
  # projection_patch x projection_patch RGB patches to projection_dim features: the CPU demo's stand-in).
  # Its features: the last block's patch tokens before the final LayerNorm, no CLS.
  m.encoder = 'dinov2_vitb14'
  # (height, width) every frame is resized to, aspect not kept (released 336 x 504; MOVi-E 336 x 336);
  # multiples of the patch. The token grid is image_size / patch (24 x 36 for the release).
  m.image_size = (336, 504)
  m.encoder_dtype = 'float32'  # ViT compute dtype: 'float32' | 'bfloat16' (released: fp16 autocast on GPUs).
  # A DINO / DINOv2 checkpoint (official .pth, timm, Hugging Face, or a --mode=convert --kind=vit folder)
  # that --mode=convert --kind=solv puts into the encoder (official SOLV checkpoints hold no ViT).
  m.encoder_weights = ''
  m.projection_patch = 8  # patch side of the 'patch_projection' encoder.
  m.projection_dim = 64  # its feature width.
  # Fraction of each frame's patch tokens dropped before the ViT in training (released 0.5: 432 of 864 kept).
  m.token_drop_ratio = 0.5
  # Merge probability in training: 'log_epochs' (released: ln(e + 1) / ln(E) in epoch e of E) | 'always'
  # | 'never'. Evaluation always merges (when model.merge_slots).
  m.merge_schedule = 'log_epochs'
  m.merge_epochs = -1  # E of 'log_epochs'; -1 = train.num_epochs.
  # Slot ids across the frames of a video (Hungarian matching of merged slots of consecutive frames, only
  # with merge_slots): 'released' (an unmatched slot takes the id of its most similar previous slot: no
  # new ids after frame 0) | 'new_tracks' (an unmatched slot opens a new id).
  m.tracking = 'released'
  # True (released): merged slots numbered as sklearn's AgglomerativeClustering numbers its clusters (on
  # the host), so that frame 0's ids, and the released metric's relabelling, are the released ones.
  m.sklearn_numbering = True
  network = network_config()
  for name in network.keys():
    if name not in DERIVED_FIELDS and name != 'name':
      m[name] = network[name]
  return m


def encoder_patch(model: Any) -> int:
  """The encoder's patch side (its token stride)."""
  if model.encoder == PATCH_PROJECTION:
    return int(model.projection_patch)
  from gsa_jax.backbones import vit  # pylint: disable=g-import-not-at-top
  return vit.get_config(model.encoder).patch_size


def feature_dim(model: Any) -> int:
  if model.encoder == PATCH_PROJECTION:
    return int(model.projection_dim)
  from gsa_jax.backbones import vit  # pylint: disable=g-import-not-at-top
  return vit.get_config(model.encoder).width


def network_fields(model: Any) -> dict[str, Any]:
  """The network fields of a model section, with feature_dim and token_grid derived."""
  fields = {k: v for k, v in _as_dict(model).items() if k not in MODEL_FIELDS}
  p = encoder_patch(model)
  fields['token_grid'] = tuple(int(s) // p for s in model.image_size)
  fields['feature_dim'] = feature_dim(model)
  return fields


def settings_from_model(model: Any) -> Settings:
  """The network Settings of a (valid) model section."""
  return Settings.from_config(network_fields(model))


def check(model: Any) -> list[str]:
  """Every problem of config.model, each naming the field and the fix; [] when valid."""
  fields = _as_dict(model)
  problems = []

  def bad(name: str, fix: str) -> None:
    problems.append(f'model.{name}={fields.get(name)!r}: {fix} (--config.model.{name}=...)')

  for name in DERIVED_FIELDS:
    if name in fields:
      problems.append(f'model.{name} is not set directly: it follows from model.encoder and model.image_size.')
  names = encoder_names()
  if fields.get('encoder') not in names:
    bad('encoder', f'choose one of {names}')
    return problems
  for name in ('projection_patch', 'projection_dim'):
    if not _is_int(fields.get(name)) or fields[name] < 1:
      bad(name, 'use a positive integer')
  if problems:
    return problems
  p = encoder_patch(model)
  size = fields.get('image_size')
  if (not isinstance(size, (tuple, list)) or len(size) != 2 or
      not all(_is_int(v) and v >= p and v % p == 0 for v in size)):
    hint = ''
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(v) for v in size):
      hint = f', e.g. {tuple(max(p, round(v / p) * p) for v in size)}'
    bad('image_size', f'use (height, width), both multiples of the encoder patch {p}{hint}')
  if fields.get('encoder_dtype') not in DTYPES:
    bad('encoder_dtype', f'choose one of {tuple(DTYPES)}')
  if not isinstance(fields.get('encoder_weights'), str):
    bad('encoder_weights', "use a checkpoint path or ''")
  ratio = fields.get('token_drop_ratio')
  if not _is_number(ratio) or not 0.0 <= ratio < 1.0:
    bad('token_drop_ratio', 'use a fraction in [0, 1) (released 0.5)')
  if fields.get('merge_schedule') not in MERGE_SCHEDULES:
    bad('merge_schedule', f'choose one of {MERGE_SCHEDULES}')
  epochs = fields.get('merge_epochs')
  if not _is_int(epochs) or not (epochs == -1 or epochs >= 2):
    bad('merge_epochs', 'use -1 (train.num_epochs) or at least 2 epochs')
  if fields.get('tracking') not in TRACKING_RULES:
    bad('tracking', f'choose one of {TRACKING_RULES}')
  if not isinstance(fields.get('sklearn_numbering'), bool):
    bad('sklearn_numbering', 'use True or False')
  if problems:
    return problems
  return validate(network_fields(model))
