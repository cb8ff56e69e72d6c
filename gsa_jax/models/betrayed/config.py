"""The model section of Betrayed by Attention (`config.model`, name 'betrayed') and its validation.

The defaults are the released code (shvdiwnkozbw/SSL-UVOS): DINO ViT-S/8 frozen, one spatio-temporal block,
the two losses at 8 query positions, training clips of 3 frames at 192x384, inference at 320x480 with sparse
keys from every 10th frame and the hierarchical clustering at tau 1.0. Each difference from the appendix, and
each released behaviour that is a bug, is a named field; its comment gives both values.

  model_config() -> ml_collections.ConfigDict   config.model with every field commented
  check(config) -> list[str]                     every problem of config.model (and of the data / eval
                                                 fields it needs), naming the field and the fix
  token_grid(model, image_hw) -> (h, w)          the encoder's token grid at an input size
  feature_dim(model) -> int                      the width of the encoder's keys (the block's width)
"""

from __future__ import annotations

import ml_collections

NAME = 'betrayed'
PATCH_PROJECTION = 'patch_projection'
ENCODERS = ('dino_vits8', 'dino_vits16', 'dino_vitb8', 'dino_vitb16', 'dinov2_vits14', 'dinov2_vitb14',
            PATCH_PROJECTION)
ALGORITHMS = ('released', 'appendix')
LAST_FRAME = ('predict', 'copy')
NORMALISATIONS = ('kinetics', 'imagenet')
OUTPUTS = ('instances', 'foreground')
FOREGROUND_RULES = ('border', 'largest')

# Kinetics mean / std of the released inference (kornia Normalize in eval_oneshot.py).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = NAME
  # Frozen encoder: a DINO / DINOv2 variant of gsa_jax.backbones.vit (released: 'dino_vits8'; the appendix
  # also reports DINO ViT-S/16, ViT-B/8, DINOv2 S/14 and B/14, which the released code cannot select), or
  # 'patch_projection' (a fixed random linear map of p x p RGB patches: the CPU demo's stand-in).
  m.encoder = 'dino_vits8'
  m.projection_patch = 8  # 'patch_projection' only: patch size p ...
  m.projection_dim = 384  # ... and width of its tokens (the block's width then).
  # Training input size (height, width): the released 192x384 (hard-coded there). Multiples of the patch.
  m.image_size = (192, 384)
  # Inference size (height, width): the released evaluation's 320x480 (its README also names 192x384).
  m.eval_size = (320, 480)
  m.num_frames = 3  # frames per training clip (released 3); data.clip_half_window must be (num_frames - 1) / 2.
  # The spatio-temporal block (released attention.Block(384, 8, drop=0.1, attn_drop=0.4)).
  m.heads = 8
  m.mlp_ratio = 4.0
  m.attn_drop = 0.4  # dropout on the attention probabilities; the losses see the post-dropout map.
  m.drop = 0.1  # after proj, after the GELU and after fc2.
  m.ln_eps = 1e-5  # the block's LayerNorms (PyTorch's default; DINO's own are 1e-6).
  m.dtype = 'float32'  # compute dtype of the frozen encoder: 'float32' | 'bfloat16'.
  # The losses (as coded in the released training script).
  m.num_points = 8  # query positions per step, the same in every frame and clip.
  m.sem_top = 30  # semantic loss: the most attended tokens per key frame are positives ...
  m.sem_bottom = 200  # ... the least attended ones negatives,
  m.sem_pos_margin = 0.9  # with cosine margins 0.9 (positives) ...
  m.sem_neg_margin = 0.1  # ... and 0.1 (negatives).
  m.mot_top = 10  # motion loss: rows of the most / least attended tokens of the query's own frame ...
  m.mot_bottom = 50
  m.mot_margin = 1.0  # ... and the cross-entropy margin between them.
  # Inference.
  m.key_ratio = 10  # sparse keys from frames 0, r, 2r, ...: floor(T / r) key frames (released 10).
  m.window = 3  # query frames per first-level clustering window (released 3).
  m.tau = 1.0  # clustering threshold on the symmetric KL (released 1.0; the appendix merges foreground at 1.6).
  # 'released' (windows with neighbourhood averaging, then video-level passes) | 'appendix' (Alg. 1: one greedy
  # pass over every row, no averaging, then the same passes).
  m.cluster_algorithm = 'released'
  # Epsilon in the logs of the symmetric KL. 0 (released): an attention entry that is exactly 0 makes the
  # distance NaN, which the clustering refuses with an error; e.g. 1e-12 clusters such videos.
  m.log_eps = 0.0
  # 'predict' (every frame clustered and predicted) | 'copy' (released: the loader drops the last frame and the
  # evaluator copies the mask of the frame before it).
  m.last_frame = 'predict'
  # Normalisation at inference: 'kinetics' (released: Kinetics mean / std, while training uses ImageNet's) |
  # 'imagenet' (the training normalisation for both).
  m.eval_normalisation = 'kinetics'
  # What the segmenter gives: 'instances' (released: every cluster, background included, is one object id;
  # for the davis17 / fgari_miou protocols) | 'foreground' (the appendix's single-object setting: clustering
  # at foreground_tau, every cluster but the background one is foreground; for davis16 / fbms / ytobj).
  m.output = 'instances'
  m.foreground_tau = 1.6  # the appendix: "tau = 1.6 to combine all foreground objects into one cluster".
  # Which cluster is the background in 'foreground' output (the released code has no rule): 'border' (the
  # cluster holding the largest share of the video's border tokens) | 'largest' (the largest cluster).
  m.foreground_rule = 'border'
  # 'instances' output: at most this many ids per video, the largest clusters first, the others 0
  # (background); 0 = every cluster (released).
  m.max_instances = 0
  m.encoder_weights = ''  # --mode=convert: the encoder's weights when the checkpoint holds none (DINO file).
  return m


def feature_dim(model) -> int:
  if model.encoder == PATCH_PROJECTION:
    return int(model.projection_dim)
  from gsa_jax.backbones import vit  # pylint: disable=g-import-not-at-top
  return int(vit.get_config(model.encoder).width)


def patch_size(model) -> int:
  if model.encoder == PATCH_PROJECTION:
    return int(model.projection_patch)
  from gsa_jax.backbones import vit  # pylint: disable=g-import-not-at-top
  return int(vit.get_config(model.encoder).patch_size)


def token_grid(model, image_hw) -> tuple[int, int]:
  p = patch_size(model)
  return int(image_hw[0]) // p, int(image_hw[1]) // p


def check(config) -> list[str]:
  """Every problem of config.model and of the data / eval fields it needs ([] when valid)."""
  m = config.model
  problems = []

  def need(ok, message):
    if not ok:
      problems.append(message)

  choices = dict(encoder=ENCODERS, cluster_algorithm=ALGORITHMS, last_frame=LAST_FRAME,
                 eval_normalisation=NORMALISATIONS, output=OUTPUTS, foreground_rule=FOREGROUND_RULES,
                 dtype=('float32', 'bfloat16'))
  for field, valid in choices.items():
    need(m[field] in valid, f'model.{field}={m[field]!r}; choose one of {valid}')
  if problems:
    return problems
  p = patch_size(m)
  dim = feature_dim(m)
  for field in ('image_size', 'eval_size'):
    size = tuple(int(v) for v in m[field])
    need(len(size) == 2 and all(v >= p and v % p == 0 for v in size),
         f'model.{field}={tuple(m[field])}: height and width must be positive multiples of the patch size {p} '
         f'of model.encoder={m.encoder}')
  need(dim % int(m.heads) == 0, f'model.heads={m.heads} must divide the block width {dim} (model.encoder)')
  need(int(m.num_frames) >= 1 and int(m.num_frames) % 2 == 1, f'model.num_frames={m.num_frames}: an odd count >= 1')
  for field in ('attn_drop', 'drop'):
    need(0.0 <= float(m[field]) < 1.0, f'model.{field}={m[field]}: a dropout rate in [0, 1)')
  for field in ('key_ratio', 'window', 'num_points', 'sem_top', 'sem_bottom', 'mot_top', 'mot_bottom'):
    need(int(m[field]) >= 1, f'model.{field}={m[field]}: must be >= 1')
  need(float(m.tau) > 0 and float(m.foreground_tau) > 0, 'model.tau and model.foreground_tau must be > 0')
  need(float(m.log_eps) >= 0, f'model.log_eps={m.log_eps}: must be >= 0 (0 = released, no epsilon)')
  need(int(m.max_instances) >= 0, f'model.max_instances={m.max_instances}: >= 0 (0 = every cluster)')
  if problems:
    return problems
  gh, gw = token_grid(m, m.image_size)
  n = gh * gw
  largest = max(int(m.num_points), int(m.sem_top), int(m.sem_bottom), int(m.mot_top), int(m.mot_bottom))
  need(largest <= n, f'model.image_size={tuple(m.image_size)} gives {gh}x{gw} = {n} tokens per frame, fewer than the '
       f'losses rank (num_points / sem_top / sem_bottom / mot_top / mot_bottom up to {largest}); use a larger '
       'model.image_size or smaller counts (e.g. --config.model.sem_bottom=...)')
  if 'data' in config:
    d = config.data
    half = (int(m.num_frames) - 1) // 2
    if int(d.clip_half_window) != half:
      problems.append(f'data.clip_half_window={d.clip_half_window} must be (model.num_frames - 1) / 2 = {half} '
                      f'(clips of {m.num_frames} frames); set --config.data.clip_half_window={half}')
    if tuple(int(v) for v in d.clip_size) != tuple(int(v) for v in m.image_size):
      problems.append(f'data.clip_size={tuple(d.clip_size)} must equal model.image_size={tuple(m.image_size)}; set '
                      f'--config.data.clip_size="{tuple(int(v) for v in m.image_size)}"')
  return problems
