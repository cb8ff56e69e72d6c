"""Imports PyTorch / safetensors weights as gsa-jax checkpoints (and back, through each model's export).

  python main.py --mode=convert --source=FILE_OR_FOLDER --kind=KIND --output=DIR [--config=...]

Kinds:
  backbones (gsa_jax.backbones.WEIGHT_CONVERTERS) -- ImageNet weights for train.init_from:
    mit     Hugging Face SegFormer / MiT checkpoints (`model.safetensors` or `pytorch_model.bin`, or a folder
            holding one), transformers 4.x or 5.x names, with or without `segformer.`;
    resnet  torchvision ResNet-18/34/50/101 state dicts;
    vit     DINO / DINOv2 ViTs (gsa_jax.backbones.vit): the official hub state dicts, timm's and Hugging Face
            transformers' (4.x, 5.x) names; the variant is inferred from the shapes. `--kind=<variant>` (e.g.
            dinov2_vitb14, dino_vits8) or a --config whose model.encoder names a variant checks the checkpoint
            against it instead. A DINO *training* checkpoint (student / teacher / optimizer) is refused with the
            command that extracts its teacher backbone.
  models (every registered model family with an official converter, e.g. gsanet) -- the official code's
    checkpoints, e.g. GSA-Net's `{"epoch", "model_state_dict"}` (with or without DataParallel's `module.`)
    of the video model or of the stage-1 model. The model config is inferred from the shapes; the rest is
    the family's official configuration, or `--config` (checked against the checkpoint).
The variant is inferred from the checkpoint's shapes. Every mismatch (unknown variant, missing key,
unexpected key, wrong shape) is collected and raised as one error that lists each offending key; nothing is
written then.

Output: one checkpoint format for trained and converted models (gsa_jax.checkpoint): step 0 of
`DIR/checkpoints/`, without optimiser state, with the full config the variables fit in its metadata (for a
whole model) or the backbone name (scope 'backbone'). So `--mode=predict --checkpoint=DIR`,
`--mode=evaluate --checkpoint=DIR` and `--config.train.init_from=DIR` read it like a training workdir. The
output is written into a temporary folder next to DIR and renamed into place at the end.
Reading is safe: safetensors, or `torch.load(..., weights_only=True)` (no code in the file runs).
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import numpy as np

from gsa_jax import backbones
from gsa_jax import checkpoint as ckpt_lib
from gsa_jax import errors
from gsa_jax import files
from gsa_jax import registry
from gsa_jax import weights
from input_pipeline import images as image_io


class ConvertError(errors.UserError):
  """A source that cannot be converted as asked; the message names the file and the fix."""


def kinds() -> list[str]:
  return sorted(set(backbones.WEIGHT_CONVERTERS) | set(registry.names()) | set(backbones.vit_variants()))


def _vit_variant(kind: str, config) -> str | None:
  """The ViT variant a 'vit' conversion must match: the kind itself, or config.model.encoder; None: infer."""
  from_kind = kind if kind in backbones.vit_variants() else None
  model = None if config is None else (config.get('model') if 'model' in config else config)
  from_config = model.get('encoder') if model is not None and 'encoder' in model else None
  from_config = from_config if from_config in backbones.vit_variants() else None
  if from_kind and from_config and from_kind != from_config:
    raise ConvertError(f'--kind={kind} but the config\'s model.encoder is {from_config!r}: convert with '
                       f'--kind={from_config} (or --kind=vit to infer the variant), or pass the config of a {kind} model.')
  return from_kind or from_config


def convert(source: str, *, kind: str, output_dir: str, config=None) -> str:
  """Converts the checkpoint `source` of `kind` into `output_dir`; returns the written step folder.

  `config` is used by model kinds (a full config or its model section); backbone kinds ignore it. Raises
  (and writes nothing) on any mismatch, when `output_dir` exists and is not empty, or for an unknown kind.
  """
  if kind not in kinds():
    raise ConvertError(f'Unknown --kind={kind!r}; choose one of {", ".join(kinds())}.')
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
    raise ConvertError(f'Output {output_dir!r} exists and is not an empty folder; refusing to overwrite. Choose a '
                       'new --output.')
  variant = None
  if kind in backbones.vit_variants() or kind == 'vit':
    variant = _vit_variant(kind, config)
    kind = 'vit'
  backbone = kind in backbones.WEIGHT_CONVERTERS
  # A model family may allow-list a few types of its training checkpoints (SOLV's argparse.Namespace).
  safe = () if backbone else tuple(getattr(registry.get(kind), 'checkpoint_safe_globals', ()))
  try:
    path = weights.resolve_source(source)
    reader = backbones.weight_reader(kind) if backbone else None
    state = reader(path) if reader else weights.read_state_dict(path, safe_globals=safe)
  except ValueError as e:
    raise ConvertError(f'{e}') from e
  meta: dict[str, Any] = {'converted_from': os.path.abspath(path), 'kind': kind}
  try:
    if backbone:
      converter = backbones.weight_converter(kind)
      name, variables = converter(state, variant) if variant else converter(state)
      meta.update(scope='backbone', backbone=name)
      what = f'{kind} backbone {name}'
    else:
      family = registry.get(kind)
      variables, full_config = family.convert_official(state, config)
      meta.update(scope='model', model=files.jsonable(full_config.model), config=files.jsonable(full_config))
      what = f'{kind} model'
  except ValueError as e:
    if isinstance(e, errors.UserError):
      raise
    fix = ''
    if variant:
      fix = (f' This checkpoint is not a {variant}: convert it with --kind=vit (the variant is inferred from the '
             'shapes) and use a config whose model.encoder is that variant.')
    raise ConvertError(f'{path}: {e}{fix}') from e
  count = sum(np.size(x) for x in jax.tree.leaves(variables['params']))
  logging.info('Converted %s: %s (%d parameters).', path, what, count)
  with image_io.atomic_output_dir(output_dir) as tmp:
    ckpt_lib.save_converted(tmp, variables, meta)
  logging.info('Wrote %s from %s to %s', what, path, output_dir)
  return os.path.join(ckpt_lib.checkpoint_directory(output_dir), '0')
