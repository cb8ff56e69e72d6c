"""The model contract: what every model family provides to the trainer, inference, convert, summary, bench.

A family is a subclass of `Model` registered under `name` (gsa_jax.registry); an instance is the family
bound to one full config (model, data, train and eval sections). The shared code calls only this interface:

  config      model_config() (the defaults of the model section, `name` included) and check_config(config)
              (the problems of the model section, and of what the model needs from data / eval);
  network     module (the Flax module, built once), init(key) -> variables ({'params', other collections}),
              example_batch(batch_size) (a training batch of zeros, the shapes the input pipeline makes);
  training    train_input (which input-pipeline builder feeds it), loss(variables, batch, key=, step=) ->
              (loss, metrics, updated non-param collections), is_trainable(path) (frozen parameters get no
              gradient, no optimiser state), transfer(variables, source, source_meta) (train.init_from),
              preview(variables, batch) (pictures of a few training examples), best_metric;
  inference   output_kind ('binary': a foreground probability per pixel; 'instances': object ids) and
              segmenter(variables, ...) -> a gsa_jax.inference.Segmenter (encode the per-video context once,
              then segment batches of frames), used alike by validation, --mode=evaluate and --mode=predict;
  weights     convert_official(state, config) (the family's official checkpoints -> variables + the config
              they fit; --mode=convert --kind=<name>), and export_official for the way back;
  summary     parts(): the groups of parameters of its summary table;
  bench       inference_programs() (encode / segment / full, timed by gsa_jax.bench), bench_breakdown(...)
              (its parts timed alone) and bench_sweeps() (its own scaling knobs).

Variables are plain nested dicts of arrays: {'params': ..., 'batch_stats': ...} (the collections a model
has). Keys and randomness: the trainer passes one key per step, fold_in(key(seed), step); the model splits it
for its own needs (dropout, k-means init, token drop), so numbers do not depend on the number of devices.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import ml_collections
import numpy as np

Variables = dict[str, Any]
Batch = Mapping[str, Any]

OUTPUT_KINDS = ('binary', 'instances')


class Model(abc.ABC):
  """One model family bound to a full config. Subclasses set `name` and implement the abstract methods."""

  name: ClassVar[str]
  output_kind: ClassVar[str] = 'binary'
  best_metric: ClassVar[str] = 'G'  # the validation figure that picks the best checkpoint (higher is better)
  description: ClassVar[str] = ''

  def __init__(self, config: ml_collections.ConfigDict):
    if config.model.name != self.name:
      raise ValueError(f'{type(self).__name__} is model {self.name!r}; the config names {config.model.name!r}.')
    self.config = config

  # -- config ------------------------------------------------------------------------------------

  @classmethod
  def output_kind_for(cls, config: ml_collections.ConfigDict) -> str:
    """The output kind of the family under `config` (a family whose model section picks it overrides this)."""
    del config
    return cls.output_kind

  @classmethod
  @abc.abstractmethod
  def model_config(cls) -> ml_collections.ConfigDict:
    """The defaults of the model section, `name` included, every field commented."""

  @classmethod
  def check_config(cls, config: ml_collections.ConfigDict) -> list[str]:
    """Problems of config.model (and of what the model needs from the other sections); [] when valid."""
    del config
    return []

  # -- network -----------------------------------------------------------------------------------

  @abc.abstractmethod
  def build(self) -> nn.Module:
    """The Flax module."""

  @functools.cached_property
  def module(self) -> nn.Module:
    return self.build()

  @abc.abstractmethod
  def example_batch(self, batch_size: int = 1, image_size: int | None = None) -> dict[str, np.ndarray]:
    """A training batch of zeros with the input pipeline's keys and shapes (image_size: data.image_size)."""

  @abc.abstractmethod
  def init(self, key: jax.Array) -> Variables:
    """Initial variables {'params', ...} from `key` (jit-able; the same on every process)."""

  def abstract_variables(self) -> Variables:
    """The variables' shapes and dtypes, computing nothing."""
    return jax.eval_shape(self.init, jax.random.key(0))

  # -- training ----------------------------------------------------------------------------------

  @property
  @abc.abstractmethod
  def train_input(self) -> str:
    """The input_pipeline builder of the training batches (input_pipeline.pipeline.TRAIN_INPUTS)."""

  @abc.abstractmethod
  def loss(self, variables: Variables, batch: Batch, *, key: jax.Array, step: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array], Variables]:
    """Training loss on a batch: (scalar loss, scalar metrics, updated non-param collections)."""

  def is_trainable(self, path: Sequence[str]) -> bool:
    """Whether the parameter at `path` (names from the top of params) is trained; frozen otherwise."""
    del path
    return True

  def transfer(self, variables: Variables, source: Variables, source_meta: Mapping[str, Any]
               ) -> tuple[Variables, list[str]]:
    """Initialises `variables` from another checkpoint (train.init_from); returns (variables, report)."""
    from gsa_jax import checkpoint  # pylint: disable=g-import-not-at-top
    return checkpoint.transfer_by_name(variables, source, scope=source_meta.get('scope', 'model'))

  def preview(self, variables: Variables, batch: Batch) -> list[np.ndarray]:
    """uint8 pictures [h, w, 3] of a few training examples with the model's predictions (may be [])."""
    del variables, batch
    return []

  # -- inference ---------------------------------------------------------------------------------

  @abc.abstractmethod
  def segmenter(self, variables: Variables, *, batch_size: int | None = None, tta: bool | None = None) -> Any:
    """A gsa_jax.inference.Segmenter over `variables` (eval config defaults for batch size and TTA)."""

  # -- weights -----------------------------------------------------------------------------------

  @classmethod
  def convert_official(cls, state: Mapping[str, np.ndarray], config: ml_collections.ConfigDict | None
                       ) -> tuple[Variables, ml_collections.ConfigDict]:
    """An official checkpoint's state dict -> (variables, the full config they fit)."""
    raise NotImplementedError(f'Model {cls.name!r} has no official-checkpoint converter.')

  def export_official(self, variables: Variables) -> dict[str, np.ndarray]:
    """Our variables -> a state dict with the official code's names and layouts."""
    raise NotImplementedError(f'Model {self.name!r} has no official export.')

  # -- summary and bench -------------------------------------------------------------------------

  def parts(self) -> Sequence[tuple[str, Callable[[tuple[str, ...]], bool]]]:
    """(part name, predicate on a parameter path) pairs for the summary table; the first match wins."""
    return ()

  def summary_header(self) -> str:
    return f'Model {self.name}'

  def inference_programs(self) -> dict[str, Callable[..., Any]]:
    """Jit-able programs the benchmark times on a random training-shaped batch (example_batch's keys):
    'encode' (variables, batch) -> per-video context (absent when the model has none), 'segment'
    (variables, batch, context) -> outputs (one batch of frames with the context given), 'full'
    (variables, batch) -> outputs (everything recomputed for every frame)."""
    return {}

  def bench_breakdown(self, variables: Variables, batch: Batch, run: Callable[..., Any]) -> dict[str, Any] | None:
    """The model's parts timed alone: calls run(name, fn, *args, count=calls per frame) for each part (run
    compiles and times fn, records it in run.parts[name] and returns fn's output) and returns the report
    built from run.parts (time and FLOP shares); None when the model defines no breakdown."""
    del variables, batch, run
    return None

  def bench_sweeps(self) -> dict[str, Callable[[Any], dict[str, Any]]]:
    """Model-specific scaling sweeps: name -> (value -> the model fields to override)."""
    return {}


def flatten_params(params: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.flatten_dict(dict(params)) if params else {}


def split_trainable(model: Model, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(trainable, frozen) nested dicts of `params` by model.is_trainable (either may be empty)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = flatten_params(params)
  trainable = {k: v for k, v in flat.items() if model.is_trainable(k)}
  frozen = {k: v for k, v in flat.items() if k not in trainable}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.unflatten_dict({**flatten_params(frozen), **flatten_params(trainable)})


def transfer_encoder_backbone(model: Model, variables: Variables, source: Variables, source_meta: Mapping[str, Any],
                              *, error: type[Exception], trained: str) -> tuple[Variables, list[str]]:
  """train.init_from of a converted ViT backbone (scope 'backbone') into params/encoder/vit (frozen): every
  array of the model's ViT must be in the source with its shape, or `error` lists what does not fit."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat_src = flatten_params(source['params'])
  flat_tgt = flatten_params(variables['params']['encoder']['vit'])
  problems = [f'{"/".join(k)}: source {np.shape(flat_src[k])}, model {tuple(flat_tgt[k].shape)}'
              for k in flat_tgt if k in flat_src and tuple(np.shape(flat_src[k])) != tuple(flat_tgt[k].shape)]
  problems += [f'missing {k}' for k in sorted('/'.join(k) for k in set(flat_tgt) - set(flat_src))]
  if problems:
    raise error(f'train.init_from ({source_meta.get("backbone")}) does not fit model.encoder='
                f'{model.config.model.encoder}: ' + '; '.join(problems))
  vit = traverse_util.unflatten_dict({k: np.asarray(flat_src[k], flat_tgt[k].dtype) for k in flat_tgt})
  params = dict(variables['params'], encoder=dict(variables['params']['encoder'], vit=vit))
  report = [f'transferred backbone {source_meta.get("backbone")} -> encoder/vit (frozen)',
            f'left at their initial values: {trained} (trained)']
  return dict(variables, params=params), report


def conversion_config(name: str, config: Any) -> ml_collections.ConfigDict:
  """The full config an official checkpoint of family `name` converts into: `config` when it is a full
  config, the family's defaults updated with it when it is a model section, else the defaults."""
  from configs import defaults  # pylint: disable=g-import-not-at-top
  full = defaults.get_config(name)
  if config is not None:
    source = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
    if 'model' in source:
      full = ml_collections.ConfigDict(source)
    else:
      full.model.update(source)
  return full
