"""DPA as a registered model family (`config.model.name = 'dpa'`): the contract of gsa_jax.contract.

Variants (model.kind): 'video', the two-stream stage-2 model (official model_for_video.py) trained on
reference-frame examples, the same input as GSA-Net; 'saliency', the stage-1 RGB-only model
(model_for_pretrain.py) trained on still images (DUTS). Both give a foreground probability per pixel: the
final side map (official preds[3]). DPA has no randomness (no dropout, no k-means): the step key is unused and
inference is deterministic.
At inference the N_R reference frames of a video are encoded once (conv5 of each reference and its IFA key
prototypes); each batch of frames then costs 2 VGG-16 passes instead of the official 2 + 2 N_R.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gsa_jax import contract
from gsa_jax import errors
from gsa_jax import inference
from gsa_jax import registry
from gsa_jax import visualize
from gsa_jax.models.dpa import config as config_lib
from gsa_jax.models.dpa import losses
from gsa_jax.models.dpa import network
from input_pipeline import pipeline

INIT_SIZE = 64  # parameters do not depend on the input size: init traces the model at 64x64, one reference


@registry.register
class DPAModel(contract.Model):
  """DPA (Dual Prototype Attention, CVPR 2024) as released, and its stage-1 saliency model."""

  name = 'dpa'
  output_kind = 'binary'
  best_metric = 'G'
  description = 'DPA: two-stream (RGB + flow) VGG-16 with inter-frame prototype attention, supervised, binary masks'

  @classmethod
  def model_config(cls) -> ml_collections.ConfigDict:
    return config_lib.model_config()

  @classmethod
  def check_config(cls, config: ml_collections.ConfigDict) -> list[str]:
    problems = config_lib.validate(config.model)
    d = config.data
    sizes = [int(d.image_size)] + [int(s) for s in (d.multiscale_sizes or ())]
    bad = [s for s in sizes if s <= 0 or s % network.STRIDE]
    if bad:
      problems.append(f'data.image_size / data.multiscale_sizes: DPA needs multiples of {network.STRIDE} (COMP6 '
                      f'pools conv5 to 1/32); got {bad}.')
    if config.model.get('kind') == 'video' and int(d.num_refs) < 1:
      problems.append(f'data.num_refs={d.num_refs}: the DPA video model needs at least 1 reference frame '
                      '(official 4).')
    if 0 < int(config.train.batch_size) < 2:
      problems.append(f'train.batch_size={config.train.batch_size}: DPA trains with batches of at least 2 (the ASPP '
                      'image-pooling BatchNorm sees one value per sample; the official loops skip batches of 1).')
    return problems

  @functools.cached_property
  def settings(self) -> config_lib.Settings:
    return config_lib.Settings.from_config(self.config.model)

  @property
  def is_video(self) -> bool:
    return self.settings.kind == 'video'

  # -- network -----------------------------------------------------------------------------------

  def build(self):
    return network.build_model(self.settings)

  def example_batch(self, batch_size: int = 1, image_size: int | None = None) -> dict[str, np.ndarray]:
    return pipeline.example_batch(self.train_input, batch_size=batch_size,
                                  size=int(image_size or self.config.data.image_size),
                                  num_refs=int(self.config.data.num_refs))

  def _inputs(self, batch: Mapping[str, Any]) -> tuple:
    return pipeline.model_inputs(self.train_input, batch)

  def init(self, key: jax.Array) -> contract.Variables:
    inputs = network.example_inputs(self.settings, size=INIT_SIZE, num_refs=1)
    variables = self.module.init({'params': key}, **inputs, train=False)
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}

  # -- training ----------------------------------------------------------------------------------

  @property
  def train_input(self) -> str:
    return 'reference_frames' if self.is_video else 'images'

  def loss(self, variables, batch, *, key, step):
    del key, step  # DPA has no dropout or other randomness
    outputs, mutated = self.module.apply(variables, *self._inputs(batch), train=True, mutable=['batch_stats'])
    loss, metrics = losses.total_loss(outputs, batch['mask'], variant=self.config.model.loss)
    return loss, metrics, {'batch_stats': mutated.get('batch_stats', {})}

  @functools.cached_property
  def _preview_fn(self):
    return jax.jit(lambda variables, batch: self.module.apply(variables, *self._inputs(batch), train=False)['prob'])

  def preview(self, variables, batch):
    n = min(2, int(np.shape(batch['rgb'])[0]))
    small = {k: v[:n] for k, v in batch.items()}
    prob = np.asarray(jax.device_get(self._preview_fn(variables, small)), np.float32)
    host = jax.device_get(small)
    return [visualize.strip(rgb=host['rgb'][i], flow=host['flow'][i] if 'flow' in host else None, pred=prob[i],
                            gt=host['mask'][i]) for i in range(n)]

  # -- inference ---------------------------------------------------------------------------------

  def _encode_fn(self, variables, context):
    return self.module.apply(variables, context['rgb'], context['flow'], method='encode_references')

  def _segment_fn(self, variables, inputs, features, frame_indices):
    del frame_indices  # deterministic: a mask depends only on its frame and the video's references
    if not self.is_video:
      prob = self.module.apply(variables, inputs['rgb'], train=False)['prob']
      return {'prob': prob.astype(jnp.float32)}
    b = inputs['rgb'].shape[0]
    # The references were encoded once for the video (batch 1); every frame of the batch reads the same memory.
    memory = jax.tree.map(lambda f: jnp.broadcast_to(f, (b,) + f.shape[1:]), features)
    out = self.module.apply(variables, inputs['rgb'], inputs['flow'], memory, train=False, method='segment')
    return {'prob': out['prob'].astype(jnp.float32)}

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
    from gsa_jax.models.dpa import weights  # pylint: disable=g-import-not-at-top
    full = config if config is not None and 'data' in config else None
    section = full.model if full is not None else config
    if section is not None and section.get('name', 'dpa') != 'dpa':
      raise errors.ConfigError(f"--mode=convert --kind=dpa: the config is for model {section.get('name')!r}; "
                               'give a DPA config (configs/dpa_davis.py, configs/dpa_pretrain_duts.py) or none.')
    variables, settings = weights.convert_checkpoint(state, section)
    full = ml_collections.ConfigDict((full if full is not None else weights.official_config(settings.kind)).to_dict())
    loss = full.model.get('loss', 'iou')
    full.model = settings.to_config()
    full.model.loss = loss
    return variables, full

  def export_official(self, variables):
    from gsa_jax.models.dpa import weights  # pylint: disable=g-import-not-at-top
    return weights.to_official_state_dict(variables, self.settings)

  # -- summary and bench -------------------------------------------------------------------------

  def parts(self):
    return tuple((name, lambda path, belongs=belongs: belongs(path[0])) for name, belongs in network.PARTS)

  def summary_header(self) -> str:
    s = self.settings
    head = (f'Model dpa ({type(self.module).__name__}), VGG-16 width {s.vgg_width:g}, dim {s.dim}, '
            f'loss {self.config.model.loss!r}')
    if self.is_video:
      head += f", ima {s.ima!r}, use_ifa {s.use_ifa}, ifa_values {s.ifa_values!r}"
    return head + ('.\nModules the official forward never calls (and so never trains) are not built: the official '
                   'video model has 43,625,704 parameters, of which 40,200,420 get a gradient (docs/dpa.md).')

  def inference_programs(self):
    from gsa_jax.models.dpa import bench_parts  # pylint: disable=g-import-not-at-top
    if self.is_video:
      return bench_parts.programs(self.module)
    return bench_parts.saliency_programs(self.module)

  def bench_breakdown(self, variables, batch, run):
    if not self.is_video:
      return None
    from gsa_jax.models.dpa import bench_parts  # pylint: disable=g-import-not-at-top
    return bench_parts.breakdown(self.module, self.settings, variables, batch, run)

  def bench_sweeps(self):
    from gsa_jax.models.dpa import bench_parts  # pylint: disable=g-import-not-at-top
    return bench_parts.sweeps(self.config.model) if self.is_video else {}
