"""SOLV (`config.model.name = 'solv'`): the contract of gsa_jax.contract for the self-supervised slot model.

Frozen encoder (DINOv2 ViT-B/14 as released) + the trained SOLV network; trained without labels by
reconstructing the centre frame's full-token encoder features of 5-frame clips ('clips' training input);
gives instance ids per frame (output_kind 'instances'), tracked over the video.

Keys: the step key splits into (token drop, merge draws, dropout). The merge probability of step s is the
released per-epoch schedule ln(e + 1) / ln(E), e = s // steps per epoch (model.merge_schedule).
Frozen parameters: everything under params/encoder (no gradient, no optimiser state).
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Mapping
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gsa_jax import contract
from gsa_jax import errors
from gsa_jax import registry
from gsa_jax.models.solv import config as config_lib
from gsa_jax.models.solv import losses
from gsa_jax.models.solv import merge as merge_lib
from gsa_jax.models.solv import system

PARTS = (
    ('encoder (frozen)', lambda p: p[0] == 'encoder'),
    ('spatial binder (invariant slot attention)', lambda p: p[:2] == ('solv', 'spatial_binder')),
    ('temporal binder (transformer along time)', lambda p: p[:2] == ('solv', 'temporal_binder')),
    ('decoder (relative grid + MLP)', lambda p: p[:2] == ('solv', 'decoder')),
)


class SOLVConfigError(errors.ConfigError):
  """A SOLV config or checkpoint that cannot be used as asked; the message names the field and the fix."""


@registry.register
class SOLVModel(contract.Model):
  """SOLV (Aydemir et al., NeurIPS 2023) as released (gorkaydemir/SOLV)."""

  name = 'solv'
  output_kind = 'instances'
  best_metric = 'mIoU'  # released: the best checkpoint by validation mIoU (here on a held-out split)
  default_protocol = 'fgari_miou'  # eval.protocol of configs/defaults.get_config('solv')
  description = 'SOLV: slot attention over frozen DINOv2 features, temporal binder, slot merging; self-supervised'
  # Types a released checkpoint may hold besides tensors (its 'args'); allowed when reading it, nothing else.
  checkpoint_safe_globals = (argparse.Namespace,)

  @classmethod
  def model_config(cls) -> ml_collections.ConfigDict:
    return config_lib.model_config()

  @classmethod
  def check_config(cls, config: ml_collections.ConfigDict) -> list[str]:
    problems = config_lib.check(config.model)
    m = config.model
    if not problems and m.merge_schedule == 'log_epochs' and m.merge_epochs == -1 and 'train' in config:
      if config.train.num_epochs < 2:
        problems.append(f'model.merge_schedule=log_epochs with model.merge_epochs=-1 needs train.num_epochs >= 2 '
                        f'(got {config.train.num_epochs}); set --config.model.merge_epochs=E or '
                        "--config.model.merge_schedule=always")
    if not problems and 'data' in config:
      d = config.data
      if tuple(d.clip_size) != tuple(m.image_size):
        problems.append(f'data.clip_size={tuple(d.clip_size)} must equal model.image_size={tuple(m.image_size)} '
                        '(the training clips feed the encoder at the model size); set both, e.g. '
                        f'--config.data.clip_size="{tuple(m.image_size)}"')
      if int(d.clip_half_window) != int(m.half_window):
        problems.append(f'data.clip_half_window={d.clip_half_window} must equal model.half_window={m.half_window} '
                        f'(clips of 2N + 1 frames); set --config.data.clip_half_window={m.half_window}')
    return problems

  @functools.cached_property
  def settings(self) -> config_lib.Settings:
    return config_lib.settings_from_model(self.config.model)

  @property
  def patch_size(self) -> int:
    return config_lib.encoder_patch(self.config.model)

  # -- network -----------------------------------------------------------------------------------

  def build(self):
    return system.build(self.config.model)

  def example_batch(self, batch_size: int = 1, image_size: int | None = None) -> dict[str, np.ndarray]:
    """Clips at model.image_size (`image_size` is ignored: the token grid, and so the decoder's position
    embedding, is fixed by model.image_size)."""
    del image_size
    h, w = (int(v) for v in self.config.model.image_size)
    f = self.settings.num_frames
    return {'frames': np.zeros((batch_size, f, h, w, 3), np.float32),
            'frame_mask': np.ones((batch_size, f), np.float32)}

  def init(self, key: jax.Array) -> contract.Variables:
    return system.init_variables(self.module, key)

  # -- training ----------------------------------------------------------------------------------

  @property
  def train_input(self) -> str:
    return 'clips'

  def is_trainable(self, path) -> bool:
    return tuple(path)[:1] != ('encoder',)

  @functools.cached_property
  def _merge_epochs(self) -> tuple[int, int] | None:
    """(E, steps per epoch) of the 'log_epochs' schedule; None for a constant probability."""
    m, t = self.config.model, self.config.train
    if m.merge_schedule != 'log_epochs':
      return None
    epochs = int(m.merge_epochs if m.merge_epochs > 0 else t.num_epochs)
    if t.num_train_steps > 0:
      total = int(t.num_train_steps)
    else:
      from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
      try:
        per_epoch = pipeline.steps_per_epoch(self.config.data, train_input=self.train_input, batch_size=t.batch_size)
      except (ValueError, OSError) as e:  # no data here (benchmarks, summaries): training checks its data first
        logging.warning('SOLV merge schedule: the epoch length is unknown (%s); counting one step per '
                        'epoch. Training reads it from data.train.', e)
        return epochs, 1
      total = int(t.num_epochs) * per_epoch
    return epochs, max(1, total // epochs)

  def merge_probability(self, step: Any) -> Any:
    """The probability that a training clip is merged at `step` (released: per epoch, ln(e + 1) / ln(E))."""
    m = self.config.model
    if not self.settings.merge_slots or m.merge_schedule == 'never':
      return 0.0
    if m.merge_schedule == 'always':
      return 1.0
    epochs, per_epoch = self._merge_epochs
    epoch = jnp.minimum(jnp.asarray(step, jnp.int32) // per_epoch, epochs - 1)
    return merge_lib.merge_probability(epoch, epochs)

  def loss(self, variables, batch, *, key, step):
    token_key, merge_key, dropout_key = jax.random.split(key, 3)
    merge_prob = self.merge_probability(step)
    outputs, target = self.module.apply(
        {'params': variables['params']}, batch['frames'], batch['frame_mask'], token_key=token_key,
        merge_key=merge_key, merge_prob=merge_prob, rngs={'dropout': dropout_key}, method='train_forward')
    loss, metrics = losses.loss_and_metrics(outputs, target, self.settings)
    metrics = dict(metrics, merge_prob=jnp.asarray(merge_prob, jnp.float32))
    return loss, metrics, {}

  def transfer(self, variables, source, source_meta):
    scope = source_meta.get('scope', 'model')
    if scope != 'backbone':
      return super().transfer(variables, source, source_meta)
    if self.config.model.encoder == config_lib.PATCH_PROJECTION:
      raise SOLVConfigError('train.init_from is a backbone but model.encoder=patch_projection has no pretrained '
                            'weights; use a ViT encoder (e.g. --config.model.encoder=dinov2_vitb14).')
    return contract.transfer_encoder_backbone(self, variables, source, source_meta, error=SOLVConfigError,
                                              trained='solv')

  def preview(self, variables, batch):
    """Centre frame | its slot ids (all tokens, one clip per row, merging on) for two clips."""
    from gsa_jax import visualize  # pylint: disable=g-import-not-at-top
    from input_pipeline import instances  # pylint: disable=g-import-not-at-top
    n = min(2, int(np.shape(batch['frames'])[0]))
    frames = np.asarray(jax.device_get(batch['frames'][:n]))
    mask = np.asarray(jax.device_get(batch['frame_mask'][:n]))
    segmenter = self.segmenter(variables, batch_size=1)
    rows = []
    for i in range(n):
      valid = np.flatnonzero(mask[i] > 0)
      context = segmenter.encode({'rgb': frames[i, valid]})
      centre = int(np.searchsorted(valid, self.settings.half_window))
      out = segmenter.segment({}, np.array([centre], np.int32), context)
      rgb = visualize.denormalize_rgb(frames[i, self.settings.half_window])
      rows.append(np.concatenate([rgb, instances.colourise(out['ids'][0])], axis=1))
    return rows

  @staticmethod
  def run_demo(workdir: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """--mode=demo: gsa_jax.models.solv.demo (untrained and trained FG-ARI / mIoU on synthetic videos)."""
    from gsa_jax.models.solv import demo  # pylint: disable=g-import-not-at-top
    return demo.run_demo(workdir, config)

  # -- inference ---------------------------------------------------------------------------------

  def segmenter(self, variables, *, batch_size=None, tta=None):
    from gsa_jax.models.solv import segmenter as segmenter_lib  # pylint: disable=g-import-not-at-top
    if tta:
      raise SOLVConfigError('SOLV has no test-time augmentation (the released evaluation has none); use '
                            'eval.tta=False.')
    return segmenter_lib.SOLVSegmenter(self, variables, batch_size=int(batch_size or self.config.eval.batch_size))

  # -- weights -----------------------------------------------------------------------------------

  @classmethod
  def convert_official(cls, state, config):
    from gsa_jax.models.solv import weights  # pylint: disable=g-import-not-at-top
    full = contract.conversion_config(cls.name, config)
    state = weights.strip_prefix({k: np.asarray(v) for k, v in state.items()})
    full.model.update(_inferred_fields(state, full.model))
    problems = config_lib.check(full.model)
    if problems:
      raise SOLVConfigError('The checkpoint needs a SOLV config that is invalid:\n  ' + '\n  '.join(problems))
    settings = config_lib.settings_from_model(full.model)
    solv_params = weights.from_torch(state, settings)
    return {'params': {'encoder': _encoder_params(cls(full)), 'solv': solv_params}}, full

  def export_official(self, variables):
    from gsa_jax.models.solv import weights  # pylint: disable=g-import-not-at-top
    return weights.to_torch(variables['params']['solv'], self.settings)

  # -- summary and bench -------------------------------------------------------------------------

  def parts(self):
    return PARTS

  def summary_header(self) -> str:
    s, m = self.settings, self.config.model
    return (f'Model solv: encoder {m.encoder} (frozen) at {m.image_size[0]}x{m.image_size[1]} -> '
            f'{s.token_grid[0]}x{s.token_grid[1]} tokens of {s.feature_dim}; {s.num_slots} slots of {s.slot_dim}, '
            f'{s.num_frames}-frame clips, merging {"on" if s.merge_slots else "off"}.')

  def inference_programs(self):
    module = self.module

    def encode(variables, batch):
      b, f = batch['frames'].shape[:2]
      images = batch['frames'].reshape((b * f,) + batch['frames'].shape[2:])
      return module.apply(variables, images, method='encode')                      # [b F n c]

    def segment(variables, batch, features):
      t = features.shape[0]
      indices = jnp.arange(t, dtype=jnp.int32)
      return module.apply(variables, features, jnp.asarray(t, jnp.int32), indices, method='window_bind')['masks']

    def full(variables, batch):
      return segment(variables, batch, encode(variables, batch))

    return {'encode': encode, 'segment': segment, 'full': full}


# ------------------------------------------------------------------------------------------------
# Conversion helpers.


def _inferred_fields(state: Mapping[str, np.ndarray], model: Any) -> dict[str, Any]:
  """Model fields fixed by the checkpoint's shapes (slots, widths, frames, token grid)."""
  def shape(key: str) -> tuple[int, ...]:
    if key not in state:
      raise SOLVConfigError(f'The checkpoint has no {key}: it is not an official SOLV checkpoint (keys such as '
                            's_bind.slots, t_bind.pos_embed_temporal, dec.layer1.weight, pos_dec).')
    return tuple(state[key].shape)

  _, k, d = shape('s_bind.slots')
  frames = shape('t_bind.pos_embed_temporal')[1]
  fields = dict(num_slots=k, slot_dim=d, half_window=(frames - 1) // 2,
                decoder_hidden=shape('dec.layer1.weight')[0],
                temporal_ffn=shape('t_bind.slot_transformer.layers.0.linear1.weight')[0],
                mlp_ratio=shape('s_bind.mlp.layer1.weight')[0] // d,
                input_norm='s_bind.initial_mlp.0.weight' in state,
                trainable_grid='s_bind.abs_grid' in state,
                temporal_layers=len({key.split('.')[3] for key in state
                                     if key.startswith('t_bind.slot_transformer.layers.')}),
                decoder_layers=len({key.split('.')[1] for key in state if key.startswith('dec.layer')}))
  tokens = shape('pos_dec')[1]
  c = shape('s_bind.initial_mlp.1.weight')[1]
  width = config_lib.feature_dim(model)
  if c != width:
    raise SOLVConfigError(f'The checkpoint was trained on {c}-wide features but model.encoder={model.encoder} gives '
                          f'{width}; set --config.model.encoder to an encoder of width {c} (ViT-B: 768).')
  p = config_lib.encoder_patch(model)
  size = tuple(int(v) for v in model.image_size)
  if (size[0] // p) * (size[1] // p) != tokens:
    known = {24 * 36: (24 * p, 36 * p), 24 * 24: (24 * p, 24 * p)}
    if tokens not in known:
      raise SOLVConfigError(f'The checkpoint has {tokens} tokens per frame, which model.image_size={size} with patch '
                            f'{p} does not give; set --config.model.image_size=(H, W) with (H/{p})(W/{p}) = {tokens}.')
    fields['image_size'] = known[tokens]
  return fields


def _encoder_params(model: SOLVModel) -> dict[str, Any]:
  """The encoder's params for a converted model: model.encoder_weights read and converted (a ViT), or the
  fixed random projection of init key 0 ('patch_projection')."""
  m = model.config.model
  if m.encoder == config_lib.PATCH_PROJECTION:
    return jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0))['params']['encoder'])
  path = m.encoder_weights
  if not path:
    raise SOLVConfigError('Official SOLV checkpoints hold no encoder (the released code loads DINOv2 from '
                          'torch.hub): give its weights with --config.model.encoder_weights=PATH (e.g. '
                          f'dinov2_vitb14_pretrain.pth for model.encoder={m.encoder}).')
  if not os.path.exists(path):
    raise SOLVConfigError(f'model.encoder_weights={path!r} does not exist.')
  from gsa_jax.backbones import vit as vit_lib  # pylint: disable=g-import-not-at-top
  cfg = vit_lib.get_config(m.encoder)
  mask_token = np.zeros((1, cfg.width), np.float32)
  if os.path.isdir(os.path.join(path, 'checkpoints')) or os.path.isdir(os.path.join(path, 'state')):
    from gsa_jax import checkpoint  # pylint: disable=g-import-not-at-top
    variables, meta = checkpoint.load_variables(path)
    if meta.get('backbone') not in (None, m.encoder):
      raise SOLVConfigError(f'model.encoder_weights={path!r} holds {meta.get("backbone")}, not model.encoder='
                            f'{m.encoder}.')
    vit = variables['params']
  else:
    from gsa_jax.backbones import vit_weights  # pylint: disable=g-import-not-at-top
    try:
      state = vit_weights.read_vit_checkpoint(path)
      normalised, _ = vit_weights.normalise_state_dict(state)
      _, converted = vit_weights.convert_vit(state, m.encoder)
    except ValueError as e:
      raise SOLVConfigError(f'model.encoder_weights={path!r}: {e}') from e
    vit = converted['params']
    if 'mask_token' in normalised:
      mask_token = np.asarray(normalised['mask_token'], np.float32).reshape(1, cfg.width)
  out = {'vit': jax.tree.map(np.asarray, vit)}
  if cfg.layer_scale:
    out['mask_token'] = mask_token
  return out
