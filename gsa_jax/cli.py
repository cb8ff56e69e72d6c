"""The gsa-jax command line: parses flags and hands over to the library.

Three equivalent ways to run it: `gsa-jax ...` (the console script of `pip install -e .`),
`python -m gsa_jax ...` and `python main.py ...`.

  gsa-jax --mode=train    --config=configs/gsanet_demo.py --workdir=DIR [--config.x.y=v ...]
  gsa-jax --mode=evaluate --config=configs/gsanet_demo.py --workdir=DIR [--checkpoint=DIR]
  gsa-jax --mode=evaluate --predictions=DIR --ground_truth=DIR --protocol=davis16 --output=DIR
  gsa-jax --mode=summary  --config=configs/gsanet_davis_mitb2.py
  gsa-jax --mode=flow     --input=VIDEO_OR_FOLDER --output=DIR [--flow_method=dis] [--overwrite]
  gsa-jax --mode=predict  --checkpoint=DIR --input=VIDEO_OR_FOLDER --output=DIR
  gsa-jax --mode=convert  --source=FILE --kind=mit|resnet|gsanet --output=DIR
  gsa-jax --mode=generate --output=DIR [--config=configs/gsanet_demo.py]
  gsa-jax --mode=demo     --workdir=DIR

Errors a user can fix (gsa_jax.errors.UserError and its subclasses, a missing flag, an unknown
`--config.<section>.<key>` override) end in one `error: <message>` line on stderr and exit status 2;
`--verbose` adds the traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib.util
import logging as py_logging
import os
import sys
import traceback
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from gsa_jax import errors

MODES = ('train', 'evaluate', 'summary', 'flow', 'predict', 'convert', 'generate', 'demo')
EXIT_USER_ERROR = 2
CACHE_SUBDIR = 'jax_cache'  # <workdir>/jax_cache: the default compilation cache of runs with a workdir

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).', lock_config=True)
flags.DEFINE_enum('mode', None, MODES, 'What to run.')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, predictions and results.')
flags.DEFINE_string('checkpoint', None, 'Checkpoint directory (a workdir or one of its checkpoints).')
flags.DEFINE_string('input', None, 'predict/flow: a video file or a folder of frames.')
flags.DEFINE_string('output', None, 'Output directory (evaluate-folders, predict, flow, convert, generate).')
flags.DEFINE_bool('overwrite', False, 'flow: replace an existing --output folder (as a whole, once the new flow '
                  'is complete).')
flags.DEFINE_string('predictions', None, 'evaluate: folder of predicted masks to score (no model).')
flags.DEFINE_string('ground_truth', None, 'evaluate: folder of ground-truth masks.')
flags.DEFINE_enum('protocol', 'davis16', ('davis16', 'fbms', 'ytobj', 'davis17', 'davis17_per_frame', 'fgari_miou'),
                  'evaluate: scoring protocol (davis17, davis17_per_frame, fgari_miou: instance-id masks).')
flags.DEFINE_string('flow', None, 'predict: folder of precomputed flow images (default: compute them).')
flags.DEFINE_enum('flow_method', 'dis', ('dis', 'farneback'), 'flow: OpenCV optical-flow method.')
flags.DEFINE_bool('save_raw_flow', False, 'flow: also write the raw flow fields (.flo).')
flags.DEFINE_bool('tta', False, 'predict: multi-scale + flip test-time augmentation.')
flags.DEFINE_float('threshold', 0.5, 'predict: probability threshold of the binary masks.')
flags.DEFINE_integer('batch_size', 0, 'predict: frames per batch (0 = eval.batch_size of the config; on a CPU, '
                     '1 is the fastest per frame).', lower_bound=0)
flags.DEFINE_string('source', None, 'convert: a PyTorch/safetensors checkpoint file or folder.')
flags.DEFINE_string('kind', None, 'convert: what the source holds: a backbone (mit, resnet) or a model name '
                    '(gsanet); see gsa_jax/convert.py.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: jax.distributed coordinator host:port.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process index.')
flags.DEFINE_string('compilation_cache', None,
                    "JAX's persistent compilation cache folder (programs that took over a second to compile are "
                    'kept, so a second run of the same command skips XLA compilation). Default: '
                    f'$JAX_COMPILATION_CACHE_DIR when set, else <workdir>/{CACHE_SUBDIR} for modes with a '
                    "--workdir, else off (nothing is written under ~/.cache); '' turns it off.")
flags.DEFINE_bool('orbax_info', False, "Show Orbax's INFO log lines (several per checkpoint save or restore).")
flags.DEFINE_bool('verbose', False, 'Show the Python traceback of user errors too (e.g. a bad config value).')


class UsageError(errors.UserError):
  """A flag that is missing, unknown or has a value that cannot be used."""


class _DropInfoFrom(py_logging.Filter):
  """Drops INFO (and lower) records logged from files under the given package folder."""

  def __init__(self, package: str):
    super().__init__()
    self.marker = f'{os.sep}{package}{os.sep}'

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno > py_logging.INFO or self.marker not in record.pathname


class _DropReadOnlyWarnings(py_logging.Filter):
  """Drops Orbax's 'directory is read only' warnings: checkpoints are opened read-only to be read, on purpose."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if f'{os.sep}orbax{os.sep}' not in record.pathname:
      return True
    return not any(s in str(record.msg) for s in ('read only', 'read_only=True'))


def compilation_cache_dir() -> str:
  """The compilation cache folder of this run ('' = off); see the --compilation_cache flag."""
  if FLAGS.compilation_cache is not None:
    return os.path.expanduser(FLAGS.compilation_cache)
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ['JAX_COMPILATION_CACHE_DIR']
  if FLAGS.workdir:
    return os.path.join(os.path.abspath(FLAGS.workdir), CACHE_SUBDIR)
  return ''


def _configure_runtime() -> None:
  cache = compilation_cache_dir()
  if cache:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', cache)
  handler = logging.get_absl_handler()
  if not FLAGS.orbax_info:
    handler.addFilter(_DropInfoFrom('orbax'))
  handler.addFilter(_DropReadOnlyWarnings())  # evaluate, predict, demo and init_from read checkpoints


def _require(*names: str) -> None:
  missing = [n for n in names if getattr(FLAGS, n) in (None, '')]
  if missing:
    raise UsageError(f'--mode={FLAGS.mode} needs ' + ', '.join(f'--{n}' for n in missing) + '.')


def _output_folder() -> None:
  """--output names a folder to create: an existing file there is refused before any work."""
  output = FLAGS.output
  if output and os.path.exists(output) and not os.path.isdir(output):
    raise UsageError(f'--output={output} is an existing file, but --mode={FLAGS.mode} writes a folder there. '
                     'Name a new folder (or remove the file).')


# ------------------------------------------------------------------------------------------------
# Flag parsing: unknown --config.<path> overrides.


def _config_path(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config(path: str) -> ml_collections.ConfigDict | None:
  """The config of a configs/*.py file (its get_config()), or None when it cannot be loaded."""
  path = path.split(':', 1)[0]
  try:
    spec = importlib.util.spec_from_file_location('_gsa_jax_cli_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None


def unknown_override(config: ml_collections.ConfigDict, argv: Sequence[str]) -> str | None:
  """The message for the first `--config.a.b=v` of `argv` whose key is not in `config`, else None."""
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0]
    node, done = config, []
    for key in path.split('.'):
      if not isinstance(node, ml_collections.ConfigDict):
        return (f'{arg}: config.{".".join(done)} is a value, not a section; it has no key {key!r}.')
      if key not in node:
        section = 'config' + ''.join(f'.{k}' for k in done)
        valid = ', '.join(sorted(node.keys()))
        return f'{arg}: {section} has no key {key!r}. Valid keys of {section}: {valid}.'
      node, done = node[key], done + [key]
  return None


def _report(error: BaseException) -> None:
  if FLAGS.verbose:
    traceback.print_exception(error)
  print(f'error: {error}', file=sys.stderr, flush=True)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a clear error for an unknown `--config.<path>` override."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    path = _config_path(argv)
    config = _load_config(path) if path else None
    message = unknown_override(config, argv) if config is not None else None
    if message is None:
      raise
    if '--verbose' in argv:
      traceback.print_exception(e)
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


# ------------------------------------------------------------------------------------------------
# Modes.


def _run(mode: str) -> None:
  if mode == 'train':
    _require('config', 'workdir')
    from gsa_jax import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif mode == 'evaluate':
    if FLAGS.predictions:
      _require('ground_truth', 'output')
      from gsa_jax import evaluation  # pylint: disable=g-import-not-at-top
      evaluation.evaluate_folders(FLAGS.predictions, FLAGS.ground_truth, protocol=FLAGS.protocol,
                                  output_dir=FLAGS.output)
    else:
      _require('workdir')
      if FLAGS.config is None and not FLAGS.checkpoint:
        raise UsageError('--mode=evaluate needs --config (or --checkpoint, whose saved config is used).')
      from gsa_jax import evaluate  # pylint: disable=g-import-not-at-top
      evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, checkpoint=FLAGS.checkpoint)
  elif mode == 'summary':
    _require('config')
    from gsa_jax import summary  # pylint: disable=g-import-not-at-top
    summary.print_summary(FLAGS.config)
  elif mode == 'flow':
    _require('input', 'output')
    from input_pipeline import flow  # pylint: disable=g-import-not-at-top
    flow.compute_flow_for_input(FLAGS.input, FLAGS.output, method=FLAGS.flow_method,
                                save_raw=FLAGS.save_raw_flow, overwrite=FLAGS.overwrite)
  elif mode == 'predict':
    _require('checkpoint', 'input', 'output')
    from gsa_jax import predict  # pylint: disable=g-import-not-at-top
    predict.predict(checkpoint=FLAGS.checkpoint, input_path=FLAGS.input, output_dir=FLAGS.output,
                    flow_dir=FLAGS.flow, tta=FLAGS.tta, threshold=FLAGS.threshold,
                    flow_method=FLAGS.flow_method, config=FLAGS.config, batch_size=FLAGS.batch_size or None)
  elif mode == 'convert':
    _require('source', 'kind', 'output')
    from gsa_jax import convert  # pylint: disable=g-import-not-at-top
    convert.convert(FLAGS.source, kind=FLAGS.kind, output_dir=FLAGS.output, config=FLAGS.config)
  elif mode == 'generate':
    _require('output')
    from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
    from configs import gsanet_demo  # pylint: disable=g-import-not-at-top
    config = FLAGS.config or gsanet_demo.get_config()
    synthetic.generate_from_config(config.data.synthetic, FLAGS.output)
  elif mode == 'demo':
    _require('workdir')
    from gsa_jax import demo  # pylint: disable=g-import-not-at-top
    demo.run_demo(FLAGS.workdir, config=FLAGS.config)


def main(argv: list[str]) -> None:
  """Runs --mode; user errors become one `error:` line and exit status 2."""
  try:
    if len(argv) > 1:
      raise UsageError(f'Unexpected arguments: {" ".join(argv[1:])} (flags are written --name=value).')
    mode = FLAGS.mode
    if mode is None:
      raise UsageError(f'--mode is required; one of {", ".join(MODES)}.')
    if FLAGS.overwrite and mode != 'flow':
      raise UsageError(f'--overwrite applies to --mode=flow only (not --mode={mode}).')
    _output_folder()
    _configure_runtime()
    if FLAGS.coordinator_address:
      import jax  # pylint: disable=g-import-not-at-top
      jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                 num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    _run(mode)
  except errors.UserError as e:
    _report(e)
    sys.exit(EXIT_USER_ERROR)


def run() -> None:
  """The console-script entry point (`gsa-jax`), also used by `python -m gsa_jax` and main.py."""
  for flag in FLAGS.get_key_flags_for_module(__name__):  # listed by --help of whichever script runs this
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, flags_parser=parse_flags)
