"""Checkpoints: kill -9 mid-run and resume == uninterrupted; the manager keeps the last N and the best."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import trainer_testlib as tl
from gsa_jax import checkpoint as ckpt_lib

RUN = '''
import sys, json
import trainer_testlib as tl
from gsa_jax import train
config = tl.tiny_config({root!r}, steps={steps}, model=tl.TINY)
config.train.checkpoint_every_steps = {every}
out = train.train_and_evaluate(config, {workdir!r})
'''


def _params(workdir):
  variables, meta = ckpt_lib.load_variables(workdir, step=None)
  return variables, meta


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
  root = str(tmp_path / 'synthetic')
  tl.ensure_synthetic(root)
  steps = 8
  # Uninterrupted: 8 steps, a checkpoint at 4 (and the final one at 8).
  tl.run_python(RUN.format(root=root, steps=steps, every=steps // 2, workdir=str(tmp_path / 'straight')))
  # Interrupted: SIGKILL as soon as the first checkpoint (step 4) is complete, then the same command.
  killed = str(tmp_path / 'killed')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=tl.REPO + os.pathsep + os.path.join(tl.REPO, 'tests'))
  slow = RUN.format(root=root, steps=steps, every=steps // 2, workdir=killed).replace(
      'out = train', 'import time\nfrom gsa_jax import checkpoint as C\nsave = C.save\n'
      'def slow_save(*a, **k):\n  save(*a, **k)\n  time.sleep(30)\nC.save = slow_save\nout = train')
  proc = subprocess.Popen([sys.executable, '-c', slow], cwd=tl.REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  first = os.path.join(killed, 'checkpoints', str(steps // 2), 'commit_success.txt')
  deadline = time.time() + 400
  while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.5)
  assert os.path.exists(first), 'the first checkpoint never appeared'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  manager = ckpt_lib.create_manager(ckpt_lib.checkpoint_directory(killed), read_only=True)
  assert manager.all_steps() == [steps // 2]
  tl.run_python(RUN.format(root=root, steps=steps, every=steps // 2, workdir=killed))
  a, meta_a = ckpt_lib.load_variables(str(tmp_path / 'straight'), step=steps)
  b, meta_b = ckpt_lib.load_variables(killed, step=steps)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
  assert len(jax.tree.leaves(a)) > 4
  # And the run really was resumed, not restarted: the second process began at step 4.
  assert meta_b['step'] == steps


def test_unfinished_save_is_ignored(tmp_path):
  """A step folder left by a save killed midway (orbax's temporary name) does not count."""
  manager = ckpt_lib.create_manager(str(tmp_path), keep=2)
  state = {'step': np.int32(1), 'params': {'w': np.ones((2,), np.float32)}}
  ckpt_lib.save(manager, 1, state, {'model': {}})
  os.makedirs(tmp_path / '2.orbax-checkpoint-tmp-123' / 'state')
  manager = ckpt_lib.create_manager(str(tmp_path), keep=2)
  assert manager.latest_step() == 1


def test_manager_keeps_last_n_and_the_best(tmp_path):
  manager = ckpt_lib.create_manager(str(tmp_path), keep=2)
  state = {'step': np.int32(0), 'params': {'w': np.zeros((3,), np.float32)}}
  for step, g in [(1, 0.2), (2, 0.9), (3, 0.5), (4, None), (5, 0.1)]:
    ckpt_lib.save(manager, step, state, {'model': {}}, val_metrics=None if g is None else {'G': g})
  assert manager.all_steps() == [2, 4, 5]
  assert ckpt_lib.best_step(manager) == 2
  variables, meta = ckpt_lib.load_variables(str(tmp_path))
  assert meta['step'] == 2 and meta['val']['G'] == 0.9


def test_missing_checkpoint_path_is_named(tmp_path):
  with pytest.raises(ckpt_lib.CheckpointError, match='does-not-exist'):
    ckpt_lib.load_variables(str(tmp_path / 'does-not-exist'))
