"""DPA model settings: the official code (Hydragon516/DPA) by default, every paper divergence a switch.

  model_config()            the defaults as an ml_collections ConfigDict (the `model` config section)
  validate(config)          -> list of problems, each naming `model.<field>` and the fix ([] = fine)
  Settings.from_config(c)   the network settings: a frozen, hashable copy without the training fields
                            (name, loss); raises ValueError listing every problem

Each field's comment gives the official value first, then the paper's (or the alternative). The other paper
differences live in the shared sections: data.test_reference_rule ('official' i * (L // N_R) | 'paper'
floor(i (L - 1) / (N_R - 1))), train.batch_size (official 12 | paper 16) and data.image_size (official 512 |
paper 352 for the ablations); configs/dpa_davis.py and configs/dpa_davis_paper.py set them.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections

KINDS = ('video', 'saliency')
IMA_MODES = ('off', 'official_dam', 'paper')
IFA_VALUES = ('keys', 'values')
CONV_INITS = ('normal', 'kaiming')
RUNNING_VARIANCES = ('unbiased', 'biased')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
LOSSES = ('iou', 'ce')  # = losses.LOSS_VARIANTS
# Fields of the model section that are not network settings.
TRAINING_FIELDS = ('name', 'loss')


def model_config() -> ml_collections.ConfigDict:
  """The model section with the official values (the released model_for_video.py forward)."""
  m = ml_collections.ConfigDict()
  m.name = 'dpa'
  # 'video': the two-stream stage-2 model (model_for_video.py); 'saliency': the stage-1 RGB-only DUTS
  # model (model_for_pretrain.py, single-stream DAM at conv4 and conv5 as coded; ignores ima / IFA fields).
  m.kind = 'video'
  # Inter-modality attention. 'off': the released forward (DAM built but never called; Table 2 row III).
  # 'official_dam': the code's commented-out lines wired in (DAM at blocks 4 and 5, in parallel with IFA
  # at 5, fused by fuse5; with ifa_values='values' this is the paper's row IV, 43,492,580 parameters).
  # 'paper': eqs. 1-7 (values from the other modality, C'xC' prototype correspondence, no graph network).
  m.ima = 'off'
  m.use_ifa = True  # inter-frame attention at block 5 (official True; False = Table 2 rows I / II).
  # IFA values: 'keys' (official: v_pbs is built from the key prototypes, the V conv is never used) |
  # 'values' (paper eq. 10: separate value prototypes from the V conv).
  m.ifa_values = 'keys'
  # Spatial-softmax prototype weights under stop_gradient: True (official `.clone().detach()`) | False
  # (the paper's eq. 1-2, differentiable weights).
  m.prototype_stop_gradient = True
  m.cosine_eps = 0.0  # eps of the cosine maps: 0.0 (official plain division) | e.g. 1e-8 (safe).
  # Conv init (outside the VGG weights that replace it): 'normal' (official weights_init: N(0, 0.01),
  # zero bias) | 'kaiming' (Kaiming-normal fan_in, GSA-Net's). Linear layers keep PyTorch's defaults.
  m.conv_init = 'normal'
  # BatchNorm running variance: 'unbiased' (PyTorch, official) | 'biased' (flax.linen.BatchNorm).
  m.bn_running_var = 'unbiased'
  m.dim = 128  # hidden width: squeeze/IFA key convs, COMP, ASPP, fusion (official 128; = prototype count).
  m.vgg_width = 1.0  # VGG-16 channel multiplier (official 1.0; smaller only for tests and the CPU demo).
  # Multiplier of the decoder's own widths 64 / 96 / 32 (official 1.0; smaller only for tests and the CPU demo).
  m.decoder_width = 1.0
  m.knn_k = 10  # EdgeConv neighbours in the DAM graph network (official 10, self included).
  m.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16' (params, prototypes and the loss in float32).
  # Training loss on the 4 side maps: 'iou' (official loss.py: 1 - mean soft Jaccard sum(min)/sum(max)) |
  # 'ce' (the paper's "cross-entropy loss": mean binary cross-entropy of the 4 probability maps).
  m.loss = 'iou'
  return m


def _fields(config: Any) -> dict[str, Any]:
  return dict(config.to_dict() if hasattr(config, 'to_dict') else config)


def validate(config: Any) -> list[str]:
  """Every problem of a model config (ConfigDict or dict), as 'model.<field>=value: fix' strings."""
  fields = _fields(config)
  defaults = model_config().to_dict()
  problems = []

  def bad(field: str, fix: str) -> None:
    problems.append(f'model.{field}={fields.get(field)!r}: {fix} (--config.model.{field}=...).')

  for field in sorted(set(fields) - set(defaults)):
    bad(field, f'unknown DPA model field; valid fields: {sorted(defaults)}')
  get = lambda field: fields.get(field, defaults[field])
  if get('name') != 'dpa':
    bad('name', "this is the DPA model section; use name='dpa'")
  choices = (('kind', KINDS), ('ima', IMA_MODES), ('ifa_values', IFA_VALUES), ('conv_init', CONV_INITS),
             ('bn_running_var', RUNNING_VARIANCES), ('dtype', tuple(DTYPES)), ('loss', LOSSES))
  for field, allowed in choices:
    if get(field) not in allowed:
      bad(field, f'choose one of {allowed}')
  for field in ('use_ifa', 'prototype_stop_gradient'):
    if not isinstance(get(field), bool):
      bad(field, 'use True or False')
  eps = get('cosine_eps')
  if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
    bad('cosine_eps', 'use eps >= 0 (0.0 = the official plain division)')
  dim = get('dim')
  if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2:
    bad('dim', 'use an integer width >= 2 (official 128)')
  for field in ('vgg_width', 'decoder_width'):
    width = get(field)
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not 0 < width <= 1:
      bad(field, 'use a multiplier in (0, 1] (official 1.0)')
  k = get('knn_k')
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    bad('knn_k', 'use an integer >= 1 (official 10)')
  elif isinstance(dim, int) and k > dim and (get('kind') == 'saliency' or get('ima') == 'official_dam'):
    bad('knn_k', f'the graph network has dim={dim} prototypes, fewer than knn_k; lower knn_k or raise dim')
  if get('kind') == 'video' and get('ifa_values') == 'values' and not get('use_ifa'):
    bad('ifa_values', "ifa_values='values' needs use_ifa=True; drop it or turn IFA on")
  return problems


@dataclasses.dataclass(frozen=True)
class Settings:
  """A frozen copy of `model_config()` (see the comments there)."""
  kind: str = 'video'
  ima: str = 'off'
  use_ifa: bool = True
  ifa_values: str = 'keys'
  prototype_stop_gradient: bool = True
  cosine_eps: float = 0.0
  conv_init: str = 'normal'
  bn_running_var: str = 'unbiased'
  dim: int = 128
  vgg_width: float = 1.0
  decoder_width: float = 1.0
  knn_k: int = 10
  dtype: str = 'float32'

  @classmethod
  def from_config(cls, config: Any = None) -> 'Settings':
    """From a ConfigDict / dict of model fields (missing fields take the defaults); validates."""
    fields = _fields(config) if config is not None else {}
    problems = validate(fields)
    if problems:
      raise ValueError('Bad DPA model config:\n  ' + '\n  '.join(problems))
    for name in TRAINING_FIELDS:
      fields.pop(name, None)
    fields = {f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields}
    for name in ('cosine_eps', 'vgg_width', 'decoder_width'):
      if name in fields:
        fields[name] = float(fields[name])
    return cls(**fields)

  def to_config(self) -> ml_collections.ConfigDict:
    """The model section of these settings (the training fields at their defaults)."""
    config = model_config()
    config.update(dataclasses.asdict(self))
    return config

  @property
  def compute_dtype(self) -> jnp.dtype:
    return DTYPES[self.dtype]

  @property
  def has_ima(self) -> bool:
    """The video model's IMA at blocks 4 and 5 (the stage-1 model always has its single-stream DAM)."""
    return self.kind == 'video' and self.ima != 'off'
