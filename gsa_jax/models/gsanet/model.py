"""GSA-Net as a registered model family (`config.model.name = 'gsanet'`): the contract of gsa_jax.contract.

Variants (model.kind): 'video', the two-stream GSANet trained on reference-frame examples; 'saliency', the
stage-1 RGB-only model (official model_for_pretrain) trained on still images. Both give a foreground
probability per pixel.
Keys: the step key splits into (dropout, k-means init), as split(fold_in(key(seed), step)); at inference
frame i gets the k-means key fold_in(key(eval.seed), i), so a mask depends neither on the batch nor on the
run.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gsa_jax import checkpoint
from gsa_jax import contract
from gsa_jax import inference
from gsa_jax import registry
from gsa_jax import visualize
from gsa_jax.models.gsanet import config as config_lib
from gsa_jax.models.gsanet import losses
from gsa_jax.models.gsanet import network
from input_pipeline import pipeline

# Summary parts (the reference's parameter-count grouping): name -> predicate on the parameter path.
PARTS = (
    ('backbones (rgb_encoder, flow_encoder)', lambda p: p[0].endswith('_encoder')),
    ('MFFM (rgb_mffm1..4, flow_mffm1..4)', lambda p: '_mffm' in p[0]),
    ('slot generators (*_slots/generator)', lambda p: p[0].endswith('_slots') and p[1] == 'generator'),
    ('guided slot attention (*_slots/attention)', lambda p: p[0].endswith('_slots') and p[1] == 'attention'),
    ('slot decoder convs (rgb_fusion, flow_fusion)', lambda p: p[0] in ('rgb_fusion', 'flow_fusion')),
    ('RGB+flow Res (fuse1..4)', lambda p: p[0].startswith('fuse')),
    ('decoder Fusion blocks (decoder/fusion1..3)', lambda p: p[0] == 'decoder' and p[1].startswith('fusion')),
    ('decoder heads (decoder/head1..4)', lambda p: p[0] == 'decoder' and p[1].startswith('head')),
)


def _is_mffm_branch(path: tuple[str, ...]) -> bool:
  return bool(re.fullmatch(r'(rgb|flow)_mffm\d+', path[0])) and any(p.startswith('branch') for p in path[1:])


@registry.register
class GSANetModel(contract.Model):
  """GSA-Net (Guided Slot Attention, CVPR 2024) and its stage-1 saliency variant."""

  name = 'gsanet'
  output_kind = 'binary'
  best_metric = 'G'
  description = 'GSA-Net: two-stream (RGB + flow) guided slot attention, supervised, binary masks'

  @classmethod
  def model_config(cls) -> ml_collections.ConfigDict:
    return config_lib.model_config()

  @classmethod
  def check_config(cls, config: ml_collections.ConfigDict) -> list[str]:
    return config_lib.check(config.model)

  @functools.cached_property
  def settings(self) -> network.ModelSettings:
    return network.ModelSettings.from_config(config_lib.network_fields(self.config.model))

  @property
  def is_video(self) -> bool:
    return self.settings.kind == 'video'

  # -- network -----------------------------------------------------------------------------------

  def build(self):
    return network.GSANet(self.settings) if self.is_video else network.SaliencyNet(self.settings)

  def example_batch(self, batch_size: int = 1, image_size: int | None = None) -> dict[str, np.ndarray]:
    return pipeline.example_batch(self.train_input, batch_size=batch_size,
                                  size=int(image_size or self.config.data.image_size),
                                  num_refs=int(self.config.data.num_refs))

  def _inputs(self, batch: Mapping[str, Any]) -> tuple:
    return pipeline.model_inputs(self.train_input, batch)

  def init(self, key: jax.Array) -> contract.Variables:
    params_key, dropout_key, kmeans_key = jax.random.split(key, 3)
    batch = self.example_batch(1)
    kwargs = {'kmeans_key': kmeans_key} if self.is_video else {}
    variables = self.module.init({'params': params_key, 'dropout': dropout_key}, *self._inputs(batch),
                                 train=False, **kwargs)
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}

  # -- training ----------------------------------------------------------------------------------

  @property
  def train_input(self) -> str:
    return 'reference_frames' if self.is_video else 'images'

  def loss(self, variables, batch, *, key, step):
    del step
    dropout_key, kmeans_key = jax.random.split(key)
    kwargs = {'kmeans_key': kmeans_key} if self.is_video else {}
    outputs, mutated = self.module.apply(variables, *self._inputs(batch), train=True, rngs={'dropout': dropout_key},
                                         mutable=['batch_stats'], **kwargs)
    m = self.config.model
    loss, metrics = losses.total_loss(outputs, batch['mask'], variant=m.loss, aux_weight=m.aux_loss_weight)
    return loss, metrics, {'batch_stats': mutated.get('batch_stats', {})}

  def transfer(self, variables, source, source_meta):
    keep_branches = bool(self.config.model.transfer_mffm_branches)

    def skip(path, from_stage1):
      if from_stage1 and not keep_branches and _is_mffm_branch(path):
        return 'MFFM branch dropped (model.transfer_mffm_branches=False, the official key mismatch)'
      return None

    return checkpoint.transfer_by_name(variables, source, scope=source_meta.get('scope', 'model'), skip=skip)

  @functools.cached_property
  def _preview_fn(self):
    seed = int(self.config.eval.seed)

    def run(variables, batch):
      kwargs = {'kmeans_key': jax.random.key(seed)} if self.is_video else {}
      out = self.module.apply(variables, *self._inputs(batch), train=False, **kwargs)
      maps = tuple(out.get('slot_maps') or ())
      return {'prob': jax.nn.sigmoid(out['logits'].astype(jnp.float32)),
              'fg_slot': maps[2].astype(jnp.float32) if len(maps) > 2 else jnp.zeros_like(out['logits'])}

    return jax.jit(run)

  def preview(self, variables, batch):
    n = min(2, int(np.shape(batch['rgb'])[0]))
    small = {k: v[:n] for k, v in batch.items()}
    out = jax.device_get(self._preview_fn(variables, small))
    host = jax.device_get(small)
    return [visualize.strip(rgb=host['rgb'][i], flow=host['flow'][i] if 'flow' in host else None,
                            pred=out['prob'][i], gt=host['mask'][i],
                            fg_slot=out['fg_slot'][i] if self.settings.has_slot_branch and self.is_video else None)
            for i in range(n)]

  # -- inference ---------------------------------------------------------------------------------

  def _encode_fn(self, variables, context):
    return self.module.apply(variables, context['rgb'], context['flow'], train=False,
                             method='encode_references')

  def _segment_fn(self, variables, inputs, features, frame_indices):
    base = jax.random.key(int(self.config.eval.seed))
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(frame_indices)
    if not self.is_video:
      logits = self.module.apply(variables, inputs['rgb'], train=False)['logits']
      return {'prob': jax.nn.sigmoid(logits.astype(jnp.float32))}

    def one(rgb, flow, key):  # frame by frame: a mask does not depend on the other frames of its batch
      out = self.module.apply(variables, rgb[None], flow[None], features, train=False, kmeans_key=key,
                              method='segment')
      maps = tuple(out.get('slot_maps') or ())
      slot = maps[2][0] if len(maps) > 2 else jnp.zeros_like(out['logits'][0])
      return out['logits'][0], slot

    logits, slot = jax.vmap(one)(inputs['rgb'], inputs['flow'], keys)
    return {'prob': jax.nn.sigmoid(logits.astype(jnp.float32)), 'fg_slot': slot}

  def segmenter(self, variables, *, batch_size=None, tta=None):
    e, d = self.config.eval, self.config.data
    num_refs, rule = int(d.num_refs), d.test_reference_rule
    return inference.BinarySegmenter(
        variables, size=int(d.image_size), batch_size=int(batch_size or e.batch_size),
        modalities=('rgb', 'flow') if self.is_video else ('rgb',), segment_fn=self._segment_fn,
        encode_fn=self._encode_fn if self.is_video else None,
        context_rule=functools.partial(pipeline.reference_indices, num_refs=num_refs, rule=rule) if self.is_video else None,
        tta=bool(e.tta if tta is None else tta), tta_scales=tuple(e.tta_scales))

  # -- weights -----------------------------------------------------------------------------------

  @classmethod
  def convert_official(cls, state, config):
    from gsa_jax.models.gsanet import weights  # pylint: disable=g-import-not-at-top
    variables, fields = weights.convert(state, config)
    full = ml_collections.ConfigDict((config if config is not None and 'data' in config
                                      else weights.official_config(fields['kind'])).to_dict())
    full.model.update(fields)
    return variables, full

  def export_official(self, variables):
    from gsa_jax.models.gsanet import weights  # pylint: disable=g-import-not-at-top
    return weights.to_official_state_dict(variables, self.config.model)

  # -- summary and bench -------------------------------------------------------------------------

  def parts(self):
    return PARTS

  def inference_programs(self):
    from gsa_jax.models.gsanet import bench_parts  # pylint: disable=g-import-not-at-top
    if self.is_video:
      return bench_parts.programs(self.module, int(self.config.eval.seed))
    return bench_parts.saliency_programs(self.module)

  def bench_breakdown(self, variables, batch, run):
    if not self.is_video:
      return None
    from gsa_jax.models.gsanet import bench_parts  # pylint: disable=g-import-not-at-top
    extra = bench_parts.breakdown(self.module, self.settings, variables, batch, run)
    return bench_parts.shares(dict(run.parts), extra['kmeans_flops'])

  def bench_train_breakdown(self, variables, batch, run, step):
    """The training step part by part (bench_parts.train_breakdown); step: dict(ms=, flops=) of the whole step."""
    if not self.is_video:
      return None
    from gsa_jax import optim  # pylint: disable=g-import-not-at-top
    from gsa_jax.models.gsanet import bench_parts  # pylint: disable=g-import-not-at-top
    m = self.config.model
    loss_fn = lambda outputs, mask: losses.total_loss(outputs, mask, variant=m.loss, aux_weight=m.aux_loss_weight)[0]
    tx, _ = optim.create_optimizer(self.config.train, 1000)
    bench_parts.train_breakdown(self.module, self.settings, variables, batch, run, loss_fn=loss_fn, optimizer=tx)
    return bench_parts.train_shares(dict(run.parts), step)

  def bench_sweeps(self):
    from gsa_jax.models.gsanet import bench_parts  # pylint: disable=g-import-not-at-top
    return bench_parts.sweeps(self.config.model) if self.is_video else {}

  def summary_header(self) -> str:
    s = self.settings
    return (f'Model gsanet ({type(self.module).__name__}), backbone {s.backbone}, dim {s.dim}, '
            f'{s.slots.num_slots} slots, M={s.slots.num_clusters}.')
