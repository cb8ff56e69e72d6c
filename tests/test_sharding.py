"""Data parallelism: 8 fake CPU devices give the same training as 1; a batch that does not split errors."""

import json

import numpy as np
import pytest

import trainer_testlib as tl
from gsa_jax import sharding

RUN = '''
import json, jax
import trainer_testlib as tl
from gsa_jax import train
config = tl.tiny_config({root!r}, steps=3, batch=8, model=tl.TINY)
out = train.train_and_evaluate(config, {workdir!r})
leaf = out['params']['decoder']['kernel']
print('RESULT', json.dumps({{'devices': jax.device_count(), 'loss': out['loss_history'],
                             'kernel': leaf.ravel().tolist()}}))
'''


def _result(proc):
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def test_eight_devices_match_one(tmp_path):
  root = str(tmp_path / 'synthetic')
  tl.ensure_synthetic(root)
  one = _result(tl.run_python(RUN.format(root=root, workdir=str(tmp_path / 'one'))))
  eight = _result(tl.run_python(RUN.format(root=root, workdir=str(tmp_path / 'eight')),
                                env_extra={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}))
  assert one['devices'] == 1 and eight['devices'] == 8
  np.testing.assert_allclose(eight['loss'], one['loss'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(eight['kernel'], one['kernel'], rtol=1e-4, atol=1e-6)


def test_batch_not_divisible_by_devices_errors(tmp_path):
  proc = tl.run_python(
      'import trainer_testlib as tl\nfrom gsa_jax import train\n'
      f'c = tl.tiny_config({str(tmp_path / "s")!r}, steps=1, batch=6, model=tl.TINY)\n'
      f'train.train_and_evaluate(c, {str(tmp_path / "w")!r})\n',
      env_extra={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}, check=False)
  assert proc.returncode != 0
  assert 'train.batch_size=6 is not divisible by the number of devices (4' in proc.stderr
  assert 'e.g. [4, 8, 12, 16]' in proc.stderr


def test_local_batch_size_on_one_device():
  mesh = sharding.create_mesh()
  assert sharding.process_local_batch_size(4 * mesh.devices.size, mesh) == 4 * mesh.devices.size
  with pytest.raises(ValueError, match='must be positive'):
    sharding.check_batch_size(0, mesh)
