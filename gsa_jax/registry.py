"""The model registry: `config.model.name` -> the model family (a `gsa_jax.contract.Model` subclass).

  model = registry.build(config)          # the family bound to a (validated) config
  registry.get('gsanet').model_config()   # the defaults of a family's model section
  registry.names()                        # every name that `config.model.name` accepts

The families shipped with gsa-jax are imported on first use (BUILTIN maps each name to the module that
registers it), so that reading a config does not import every model. A family outside the package
registers itself with `@registry.register` when its module is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gsa_jax import errors

if TYPE_CHECKING:
  from gsa_jax import contract

# name -> module whose import registers it.
BUILTIN: dict[str, str] = {
    'gsanet': 'gsa_jax.models.gsanet.model',
    'solv': 'gsa_jax.models.solv.model',
    'dpa': 'gsa_jax.models.dpa.model',
    'betrayed': 'gsa_jax.models.betrayed.model',
}

_MODELS: dict[str, type[contract.Model]] = {}


class UnknownModelError(errors.UserError):
  """config.model.name names no registered model."""


def register(cls: type[contract.Model]) -> type[contract.Model]:
  """Class decorator: makes `cls` the family of `config.model.name == cls.name`."""
  name = getattr(cls, 'name', None)
  if not isinstance(name, str) or not name:
    raise TypeError(f'{cls.__name__} needs a class attribute `name` (the config.model.name it answers to).')
  _MODELS[name] = cls
  return cls


def names() -> list[str]:
  return sorted(set(BUILTIN) | set(_MODELS))


def get(name: str) -> type[contract.Model]:
  """The family registered as `name`; UnknownModelError lists the registered names."""
  if name not in _MODELS and name in BUILTIN:
    importlib.import_module(BUILTIN[name])
  if name not in _MODELS:
    raise UnknownModelError(f'Unknown model {name!r} (config.model.name); registered models: '
                            f'{", ".join(names())}. Start the config from configs/defaults.get_config(<name>).')
  return _MODELS[name]


def build(config: Any) -> contract.Model:
  """The family of `config.model.name`, bound to `config` (a full config: model, data, train, eval)."""
  return get(config.model.name)(config)
