"""Two processes on localhost (jax.distributed), each reading its own data shard, train like one process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

import trainer_testlib as tl

RUN = '''
import json, sys, jax
if {num_processes} > 1:
  jax.distributed.initialize(coordinator_address={address!r}, num_processes={num_processes}, process_id={pid})
import trainer_testlib as tl
from gsa_jax import train
config = tl.tiny_config({root!r}, steps=3, batch=4, model=tl.TINY)
out = train.train_and_evaluate(config, {workdir!r})
print('RESULT', json.dumps({{'processes': jax.process_count(), 'loss': out['loss_history'],
                             'kernel': out['params']['decoder']['kernel'].ravel().tolist()}}))
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _result(stdout):
  line = [l for l in stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def test_two_processes_match_one(tmp_path):
  root = str(tmp_path / 'synthetic')
  tl.ensure_synthetic(root)
  single = _result(tl.run_python(RUN.format(num_processes=1, address='', pid=0, root=root,
                                            workdir=str(tmp_path / 'single'))).stdout)
  address = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=tl.REPO + os.pathsep + os.path.join(tl.REPO, 'tests'))
  env.pop('XLA_FLAGS', None)
  procs = [subprocess.Popen([sys.executable, '-c', RUN.format(num_processes=2, address=address, pid=pid, root=root,
                                                              workdir=str(tmp_path / 'multi'))],
                            cwd=tl.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for pid in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-5000:]
  results = [_result(out) for out, _ in outputs]
  assert single['processes'] == 1 and all(r['processes'] == 2 for r in results)
  for r in results:
    np.testing.assert_allclose(r['loss'], single['loss'], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r['kernel'], single['kernel'], rtol=1e-4, atol=1e-6)
