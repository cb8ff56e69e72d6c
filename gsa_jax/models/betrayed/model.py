"""Betrayed by Attention (`config.model.name = 'betrayed'`): the contract of gsa_jax.contract for the model.

Frozen DINO ViT-S/8 keys (released) + one trained spatio-temporal block; trained without labels on 3-frame
clips ('clips' training input) by the semantic and motion losses of its attention; at inference the block's
LN1 + qkv give attention rows whose hierarchical clustering gives the objects (output_kind 'instances':
every cluster is an id, background included, as released; model.output='foreground' gives the appendix's
single-object foreground masks instead, output_kind 'binary').

Keys: the step key splits into (query positions, dropout). Frozen parameters: everything under
params/encoder (no gradient, no optimiser state); the optimiser decays only the block's four weight
matrices when train.weight_decay_mask='matrices' (released).
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gsa_jax import contract
from gsa_jax import errors
from gsa_jax import registry
from gsa_jax.models.betrayed import config as config_lib
from gsa_jax.models.betrayed import losses
from gsa_jax.models.betrayed import system

PARTS = (
    ('encoder (frozen)', lambda p: p[0] == 'encoder'),
    ('spatio-temporal block', lambda p: p[0] == 'block'),
)


class BetrayedConfigError(errors.ConfigError):
  """A Betrayed-by-Attention config or checkpoint that cannot be used as asked; names the field and the fix."""


@registry.register
class BetrayedModel(contract.Model):
  """Betrayed by Attention (ECCV 2024) as released (shvdiwnkozbw/SSL-UVOS)."""

  name = 'betrayed'
  output_kind = 'instances'
  best_metric = 'G'  # J&F on a held-out split (the released code selects nothing: it keeps the last step)
  default_protocol = 'davis17'
  description = ('Betrayed by Attention: one spatio-temporal block on frozen DINO keys, clustering of its '
                 'attention rows; self-supervised')
  checkpoint_safe_globals = (argparse.Namespace,)

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.output_kind = self.output_kind_for(config)

  @classmethod
  def output_kind_for(cls, config) -> str:
    return 'binary' if config.model.get('output', 'instances') == 'foreground' else 'instances'

  @classmethod
  def model_config(cls) -> ml_collections.ConfigDict:
    return config_lib.model_config()

  @staticmethod
  def released_defaults(config: ml_collections.ConfigDict) -> None:
    """The released training input and optimiser in the data and train sections of the defaults."""
    config.data.update(clip_half_window=1, clip_size=(192, 384), clip_stride=4, clip_fit='shrink',
                       clip_borders=False, clip_antialias=False, clip_augment='betrayed')
    config.train.update(batch_size=8, num_train_steps=60_000, schedule='cosine', learning_rate=1e-5,
                        end_learning_rate=1e-6, warmup_steps=0, weight_decay=0.1, weight_decay_mask='matrices',
                        grad_clip_norm=0.0, checkpoint_every_steps=1000)

  @classmethod
  def check_config(cls, config: ml_collections.ConfigDict) -> list[str]:
    return config_lib.check(config)

  # -- network -----------------------------------------------------------------------------------

  def build(self):
    return system.build(self.config.model)

  def example_batch(self, batch_size: int = 1, image_size: int | None = None) -> dict[str, np.ndarray]:
    """Clips at model.image_size (`image_size` is ignored: the training size is model.image_size)."""
    del image_size
    h, w = (int(v) for v in self.config.model.image_size)
    f = int(self.config.model.num_frames)
    return {'frames': np.zeros((batch_size, f, h, w, 3), np.float32),
            'frame_mask': np.ones((batch_size, f), np.float32)}

  def init(self, key: jax.Array) -> contract.Variables:
    frames = jnp.zeros(self.example_batch(1)['frames'].shape, jnp.float32)
    return {'params': self.module.init(key, frames, train=False)['params']}

  # -- training ----------------------------------------------------------------------------------

  @property
  def train_input(self) -> str:
    return 'clips'

  def is_trainable(self, path) -> bool:
    return tuple(path)[:1] != ('encoder',)

  def loss(self, variables, batch, *, key, step):
    del step
    m = self.config.model
    point_key, dropout_key = jax.random.split(key)
    tokens, attention = self.module.apply({'params': variables['params']}, batch['frames'], train=True,
                                          rngs={'dropout': dropout_key})
    points = losses.sample_points(point_key, tokens.shape[2], int(m.num_points))
    out = losses.betrayed_losses(attention, tokens, points, sem_top=int(m.sem_top), sem_bottom=int(m.sem_bottom),
                                 sem_pos_margin=float(m.sem_pos_margin), sem_neg_margin=float(m.sem_neg_margin),
                                 mot_top=int(m.mot_top), mot_bottom=int(m.mot_bottom),
                                 mot_margin=float(m.mot_margin))
    metrics = {'loss': out['total'], 'semantic_loss': out['semantic'], 'motion_loss': out['motion']}
    return out['total'], metrics, {}

  def transfer(self, variables, source, source_meta):
    """train.init_from: a whole model (scope 'model', names one to one) or a converted DINO / DINOv2 backbone
    (scope 'backbone', --mode=convert --kind=vit) into encoder/vit."""
    scope = source_meta.get('scope', 'model')
    if scope != 'backbone':
      return super().transfer(variables, source, source_meta)
    if self.config.model.encoder == config_lib.PATCH_PROJECTION:
      raise BetrayedConfigError('train.init_from is a backbone but model.encoder=patch_projection has no pretrained '
                                'weights; use a ViT encoder (e.g. --config.model.encoder=dino_vits8).')
    return contract.transfer_encoder_backbone(self, variables, source, source_meta, error=BetrayedConfigError,
                                              trained='block')

  @staticmethod
  def run_demo(workdir: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """--mode=demo: gsa_jax.models.betrayed.demo (losses and scores before and after training)."""
    from gsa_jax.models.betrayed import demo  # pylint: disable=g-import-not-at-top
    return demo.run_demo(workdir, config)

  # -- inference ---------------------------------------------------------------------------------

  def segmenter(self, variables, *, batch_size=None, tta=None):
    from gsa_jax.models.betrayed import segmenter as segmenter_lib  # pylint: disable=g-import-not-at-top
    if tta:
      raise BetrayedConfigError('Betrayed by Attention has no test-time augmentation (the released evaluation '
                                'has none); use eval.tta=False.')
    return segmenter_lib.BetrayedSegmenter(self, variables, batch_size=int(batch_size or self.config.eval.batch_size))

  # -- weights -----------------------------------------------------------------------------------

  @classmethod
  def convert_official(cls, state, config):
    from gsa_jax.models.betrayed import weights  # pylint: disable=g-import-not-at-top
    full = contract.conversion_config(cls.name, config)
    state = weights.strip_prefix({k: np.asarray(v) for k, v in state.items()})
    kind = weights.classify(state)
    variant = full.model.encoder
    if variant == config_lib.PATCH_PROJECTION:
      raise BetrayedConfigError('An official checkpoint holds a ViT encoder; convert with a config whose '
                                'model.encoder is a DINO variant (default dino_vits8).')
    try:
      params = weights.from_official(state, variant)
    except ValueError as e:
      raise BetrayedConfigError(f'{e} (model.encoder={variant}; set --config.model.encoder to the checkpoint\'s '
                                'ViT, e.g. dino_vits8)') from e
    problems = config_lib.check(full)
    if problems:
      raise BetrayedConfigError('The checkpoint needs a config that is invalid:\n  ' + '\n  '.join(problems))
    model = cls(full)
    if kind == 'dino_backbone':  # a DINO backbone file: the block starts from its initialisation (key 0)
      init = jax.jit(model.init)(jax.random.key(0))['params']
      params = {'encoder': params['encoder'], 'block': jax.tree.map(np.asarray, init['block'])}
    return {'params': params}, full

  def export_official(self, variables):
    from gsa_jax.models.betrayed import weights  # pylint: disable=g-import-not-at-top
    if self.config.model.encoder == config_lib.PATCH_PROJECTION:
      raise BetrayedConfigError('model.encoder=patch_projection has no official counterpart to export.')
    return weights.to_official(jax.tree.map(np.asarray, variables['params']))

  # -- summary and bench -------------------------------------------------------------------------

  def parts(self):
    return PARTS

  def summary_header(self) -> str:
    m = self.config.model
    gh, gw = config_lib.token_grid(m, m.image_size)
    eh, ew = config_lib.token_grid(m, m.eval_size)
    return (f'Model betrayed: encoder {m.encoder} (frozen) at {m.image_size[0]}x{m.image_size[1]} -> {gh}x{gw} keys '
            f'of {config_lib.feature_dim(m)}; one block of {m.heads} heads over {m.num_frames}-frame clips; '
            f'inference at {m.eval_size[0]}x{m.eval_size[1]} ({eh}x{ew} tokens), keys every {m.key_ratio} frames, '
            f'tau {m.tau}, output {m.output}.')

  def inference_programs(self):
    module = self.module

    def encode(variables, batch):
      b, f = batch['frames'].shape[:2]
      images = batch['frames'].reshape((b * f,) + batch['frames'].shape[2:])
      keys = module.apply(variables, images, method='encode')
      return module.apply(variables, keys, method='query_keys')              # q, k [b F heads n d]

    def segment(variables, batch, qk):
      from gsa_jax.models.betrayed import cluster  # pylint: disable=g-import-not-at-top
      del batch
      q, k = qk
      return cluster.attention_rows(q, k[:1], float(q.shape[-1]) ** -0.5)

    def full(variables, batch):
      return segment(variables, batch, encode(variables, batch))

    return {'encode': encode, 'segment': segment, 'full': full}
