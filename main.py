"""gsa-jax entry point: parses flags and hands over to the library.

  python main.py --mode=train    --config=configs/demo.py --workdir=DIR [--config.x.y=v ...]
  python main.py --mode=evaluate --config=configs/demo.py --workdir=DIR [--checkpoint=DIR]
  python main.py --mode=evaluate --predictions=DIR --ground_truth=DIR --protocol=davis16 --output=DIR
  python main.py --mode=summary  --config=configs/davis_mitb2.py
  python main.py --mode=flow     --input=VIDEO_OR_FOLDER --output=DIR [--flow_method=dis]
  python main.py --mode=predict  --checkpoint=DIR --input=VIDEO_OR_FOLDER --output=DIR
  python main.py --mode=convert  --source=FILE --kind=mit|resnet|gsanet --output=DIR
  python main.py --mode=generate --output=DIR [--config=configs/demo.py]
  python main.py --mode=demo     --workdir=DIR
"""

import logging as py_logging
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

MODES = ('train', 'evaluate', 'summary', 'flow', 'predict', 'convert', 'generate', 'demo')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).', lock_config=True)
flags.DEFINE_enum('mode', None, MODES, 'What to run.')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, predictions and results.')
flags.DEFINE_string('checkpoint', None, 'Checkpoint directory (a workdir or one of its checkpoints).')
flags.DEFINE_string('input', None, 'predict/flow: a video file or a folder of frames.')
flags.DEFINE_string('output', None, 'Output directory (evaluate-folders, predict, flow, convert, generate).')
flags.DEFINE_string('predictions', None, 'evaluate: folder of predicted masks to score (no model).')
flags.DEFINE_string('ground_truth', None, 'evaluate: folder of ground-truth masks.')
flags.DEFINE_enum('protocol', 'davis16', ('davis16', 'fbms', 'ytobj'), 'evaluate: scoring protocol.')
flags.DEFINE_string('flow', None, 'predict: folder of precomputed flow images (default: compute them).')
flags.DEFINE_enum('flow_method', 'dis', ('dis', 'farneback'), 'flow: OpenCV optical-flow method.')
flags.DEFINE_bool('save_raw_flow', False, 'flow: also write the raw flow fields (.flo).')
flags.DEFINE_bool('tta', False, 'predict: multi-scale + flip test-time augmentation.')
flags.DEFINE_float('threshold', 0.5, 'predict: probability threshold of the binary masks.')
flags.DEFINE_integer('batch_size', 0, 'predict: frames per batch (0 = eval.batch_size of the config; on a CPU, '
                     '1 is the fastest per frame).', lower_bound=0)
flags.DEFINE_string('source', None, 'convert: a PyTorch/safetensors checkpoint file or folder.')
flags.DEFINE_enum('kind', None, ('mit', 'resnet', 'gsanet'), 'convert: what the source holds.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: jax.distributed coordinator host:port.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process index.')
flags.DEFINE_string('compilation_cache', os.environ.get('JAX_COMPILATION_CACHE_DIR', '~/.cache/gsa_jax/jax'),
                    "JAX's persistent compilation cache (programs that took over a second to compile are kept, "
                    "so a second run of the same command skips XLA compilation); '' turns it off.")
flags.DEFINE_bool('orbax_info', False, "Show Orbax's INFO log lines (several per checkpoint save or restore).")


class _DropInfoFrom(py_logging.Filter):
  """Drops INFO (and lower) records logged from files under the given package folder."""

  def __init__(self, package: str):
    super().__init__()
    self.marker = f'{os.sep}{package}{os.sep}'

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno > py_logging.INFO or self.marker not in record.pathname


def _configure_runtime() -> None:
  if FLAGS.compilation_cache:
    import jax
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.compilation_cache))
  if not FLAGS.orbax_info:
    logging.get_absl_handler().addFilter(_DropInfoFrom('orbax'))


def _require(*names: str) -> None:
  missing = [n for n in names if getattr(FLAGS, n) in (None, '')]
  if missing:
    raise app.UsageError(f'--mode={FLAGS.mode} needs ' + ', '.join(f'--{n}' for n in missing))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  mode = FLAGS.mode
  if mode is None:
    raise app.UsageError(f'--mode is required; one of {", ".join(MODES)}.')
  _configure_runtime()
  if FLAGS.coordinator_address:
    import jax
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)

  if mode == 'train':
    _require('config', 'workdir')
    from gsa_jax import train
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif mode == 'evaluate':
    if FLAGS.predictions:
      _require('ground_truth', 'output')
      from gsa_jax import evaluation
      evaluation.evaluate_folders(FLAGS.predictions, FLAGS.ground_truth, protocol=FLAGS.protocol,
                                  output_dir=FLAGS.output)
    else:
      _require('config', 'workdir')
      from gsa_jax import evaluate
      evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, checkpoint=FLAGS.checkpoint)
  elif mode == 'summary':
    _require('config')
    from gsa_jax import summary
    summary.print_summary(FLAGS.config)
  elif mode == 'flow':
    _require('input', 'output')
    from input_pipeline import flow
    flow.compute_flow_for_input(FLAGS.input, FLAGS.output, method=FLAGS.flow_method,
                                save_raw=FLAGS.save_raw_flow)
  elif mode == 'predict':
    _require('checkpoint', 'input', 'output')
    from gsa_jax import predict
    predict.predict(checkpoint=FLAGS.checkpoint, input_path=FLAGS.input, output_dir=FLAGS.output,
                    flow_dir=FLAGS.flow, tta=FLAGS.tta, threshold=FLAGS.threshold,
                    flow_method=FLAGS.flow_method, config=FLAGS.config, batch_size=FLAGS.batch_size or None)
  elif mode == 'convert':
    _require('source', 'kind', 'output')
    from gsa_jax import convert
    convert.convert(FLAGS.source, kind=FLAGS.kind, output_dir=FLAGS.output, config=FLAGS.config)
  elif mode == 'generate':
    _require('output')
    from input_pipeline import synthetic
    from configs import demo
    config = FLAGS.config or demo.get_config()
    synthetic.generate_from_config(config.data.synthetic, FLAGS.output)
  elif mode == 'demo':
    _require('workdir')
    from gsa_jax import demo
    demo.run_demo(FLAGS.workdir, config=FLAGS.config)


if __name__ == '__main__':
  app.run(main)
