"""Every experiment config in configs/ builds and passes the config check (model, data, train, eval sections),
so a renamed or removed field breaks a test instead of a user's run."""

import importlib
import os

import pytest

from gsa_jax import config_lib
from gsa_jax import registry

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
NAMES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith('.py') and f not in ('__init__.py', 'defaults.py'))


def test_every_model_family_has_configs():
  families = {importlib.import_module(f'configs.{name}').get_config().model.name for name in NAMES}
  assert families == set(registry.BUILTIN)  # (tests may register more families of their own)


@pytest.mark.parametrize('name', NAMES)
def test_config_is_valid(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  config.train.init_from = ''  # a path of the user's machine (converted ImageNet weights), checked when training
  config_lib.validate(config, roles=(), training=True)
  registry.build(config)
