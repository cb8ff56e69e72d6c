"""The command line: user errors as one line (exit 2), the console script, the workdir lock, the progress rate."""

import os
import socket
import subprocess
import sys

import pytest

from gsa_jax import errors
from gsa_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _run(*args, entry=('main.py',), timeout=240):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  command = [sys.executable, *entry] if entry[0] != 'gsa-jax' else [os.path.join(BIN, 'gsa-jax')]
  return subprocess.run(command + list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _is_user_error(result, *fragments):
  """Exit status 2 and one `error: <message>` at the end of stderr (the message may span lines)."""
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.rstrip().splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith('error: ')]
  assert starts, result.stderr[-2000:]
  message = '\n'.join(lines[starts[-1]:])
  for fragment in fragments:
    assert fragment in message, message
  return message


def test_every_project_error_is_a_user_error():
  from gsa_jax import checkpoint, cli, convert, evaluation, multi_object, predict, registry  # noqa: F401
  from input_pipeline import images
  for cls in (checkpoint.CheckpointError, convert.ConvertError, evaluation.EvaluationError, images.DataError,
              multi_object.MultiObjectError, predict.PredictError, registry.UnknownModelError,
              train.TrainingDivergedError, train.WorkdirLockedError, cli.UsageError, errors.ConfigError):
    assert issubclass(cls, errors.UserError), cls


def test_console_script_runs_summary():
  result = _run('--mode=summary', '--config=configs/gsanet_demo.py', entry=('gsa-jax',))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'total_params' in result.stdout


def test_unknown_override_lists_the_valid_keys():
  result = _run('--mode=summary', '--config=configs/gsanet_demo.py', '--config.train.lerning_rate=1',
                entry=('-m', 'gsa_jax'))
  _is_user_error(result, "config.train has no key 'lerning_rate'", 'learning_rate, log_every_steps')
  assert 'Traceback' not in result.stderr


def test_data_and_flag_errors_are_one_line_and_verbose_adds_the_traceback(tmp_path):
  missing = str(tmp_path / 'no_such_video.mp4')
  result = _run('--mode=flow', f'--input={missing}', f'--output={tmp_path / "flow"}')
  _is_user_error(result, missing, 'no such file or folder')
  assert 'Traceback' not in result.stderr
  result = _run('--mode=flow', f'--input={missing}', f'--output={tmp_path / "flow"}', '--verbose')
  _is_user_error(result, missing)
  assert 'Traceback' in result.stderr and 'DataError' in result.stderr
  output = tmp_path / 'results.txt'
  output.write_text('x')
  result = _run('--mode=evaluate', f'--predictions={tmp_path}', f'--ground_truth={tmp_path}', f'--output={output}')
  _is_user_error(result, f'--output={output} is an existing file')
  result = _run('--mode=flow', f'--input={tmp_path}')
  _is_user_error(result, '--mode=flow needs --output')


def test_config_errors_exit_2_and_bugs_keep_their_traceback():
  result = _run('--mode=summary', '--config=configs/gsanet_demo.py', '--config.model.name=nope')
  _is_user_error(result, "Unknown model 'nope'", 'registered models: betrayed, dpa, gsanet')
  assert 'Traceback' not in result.stderr
  bug = ('import sys; from gsa_jax import cli\n'
         'def boom(mode): raise RuntimeError("a bug")\n'
         'cli._run = boom; sys.argv = ["gsa-jax", "--mode=summary"]; cli.run()')
  result = _run(entry=('-c', bug))
  assert result.returncode == 1 and 'Traceback' in result.stderr and 'RuntimeError: a bug' in result.stderr


def test_a_second_trainer_is_refused(tmp_path):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  with train.WorkdirLock(train.lock_path(str(workdir))):
    result = _run('--mode=train', '--config=configs/gsanet_demo.py', f'--workdir={workdir}')
    _is_user_error(result, 'in use by another trainer', f'pid {os.getpid()} on {socket.gethostname()}', 'started ')
  assert os.listdir(workdir) == []  # refused before anything was written
  assert not os.path.exists(train.lock_path(str(workdir)))  # released


def test_stale_and_foreign_locks(tmp_path, caplog):
  path = train.lock_path(str(tmp_path), 1, 2)
  assert path.endswith('train.lock.1')
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  with open(path, 'w') as f:
    f.write(f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "start": "earlier"}}')
  lock = train.WorkdirLock(path)
  lock.acquire()  # the dead trainer's lock is taken over
  assert 'Taking over the stale lock' in caplog.text
  with pytest.raises(train.WorkdirLockedError, match='in use by another trainer'):
    train.WorkdirLock(path).acquire()
  lock.release()
  with open(path, 'w') as f:
    f.write('{"pid": 1, "host": "another-host", "start": "earlier"}')
  with pytest.raises(train.WorkdirLockedError, match='another host: pid 1 on another-host.*delete the lock file'):
    train.WorkdirLock(path).acquire()


def test_step_rate_leaves_out_the_first_step_and_pauses(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(train.time, 'time', lambda: clock[0])
  rate = train._StepRate()
  clock[0] = 130.0  # the first step: 30 s of compilation
  rate.step_done(1, run_start=100.0)
  assert rate.steps_per_sec(1) is None and rate.first_step_seconds == 30.0
  for step in range(2, 12):
    clock[0] += 0.5
    rate.step_done(step, run_start=100.0)
  assert rate.steps_per_sec(11) == pytest.approx(2.0)
  rate.restart(11)
  clock[0] += 60.0  # a validation
  rate.pause(60.0)
  clock[0] += 1.0
  assert rate.steps_per_sec(13) == pytest.approx(2.0)


def test_orbax_read_only_warnings_are_dropped():
  import logging
  from gsa_jax import cli
  keep = cli._DropReadOnlyWarnings()

  def record(path, message):
    return logging.LogRecord('absl', logging.WARNING, path, 1, message, (), None)

  orbax = os.path.join('site-packages', 'orbax', 'checkpoint', 'checkpoint_manager.py')
  assert not keep.filter(record(orbax, 'Given directory is read only=%s'))
  assert not keep.filter(record(orbax, 'CheckpointManagerOptions.read_only=True, setting save_interval_steps=0.'))
  assert keep.filter(record(orbax, 'Something else went wrong'))
  assert keep.filter(record(os.path.join('gsa_jax', 'train.py'), 'the data is read only'))
