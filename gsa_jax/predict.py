"""Segments your own video with a trained or converted checkpoint of any registered model.

  python main.py --mode=predict --checkpoint=DIR --input=VIDEO_OR_FOLDER --output=DIR
                 [--flow=FLOW_DIR] [--tta] [--threshold=0.5] [--flow_method=dis] [--batch_size=N] [--config=FILE]

What happens: the frames are read lazily (a video file through PyAV, or a folder of images in natural order);
the model's per-video context (e.g. GSA-Net's and DPA's N_R reference frames, the official test rule) is
encoded once; frames stream through the model's compiled batch program with their optical flow (OpenCV DIS,
computed per batch at up to 1024 pixels a side, or read from --flow) in gsa_jax.inference.run_video, the
same path as evaluation. Outputs, written into a temporary folder beside --output and renamed into place at
the end (no half-written output, also on Ctrl-C):
  masks/<frame>.png     'P' mode PNGs with the DAVIS palette: 0 background, 1 the object (the DAVIS format).
  overlays/<frame>.jpg  the frame with the mask blended in.
  overlay.mp4           the overlays as an H.264 movie (overlay.gif when no H.264 encoder works).
  predictions.json      frames, context frames, timings, frames per second, checkpoint, config.
Instance models (output_kind 'instances', e.g. SOLV) write masks/<frame>.png as instance-id palette PNGs
(0 background, 1.. the objects, DAVIS palette: the DAVIS-2017 format; more than 255 ids is an error naming the
file) and overlays with one DAVIS colour per object; predictions.json lists the objects of every frame.
Masks do not depend on the batch size, on padding or on the run: predicting twice gives identical files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from PIL import Image

from gsa_jax import checkpoint as ckpt_lib
from gsa_jax import config_lib
from gsa_jax import errors
from gsa_jax import files
from gsa_jax import inference
from gsa_jax import movie as movie_lib
from gsa_jax import registry
from gsa_jax import visualize
from input_pipeline import frames as frames_lib
from input_pipeline import images as image_io
from input_pipeline import instances

MASKS_DIR = 'masks'
OVERLAYS_DIR = 'overlays'
REPORT_JSON = 'predictions.json'


class PredictError(errors.UserError):
  """A problem with the user's input; the message names the path and the fix."""


def check_output_dir(output_dir: str) -> None:
  """PredictError unless `output_dir` is absent or an empty folder, in a folder we may write to."""
  if os.path.isdir(output_dir):
    content = os.listdir(output_dir)
    if content:
      raise PredictError(
          f'The output folder {output_dir} already exists and is not empty ({len(content)} entries, e.g. '
          f'{sorted(content)[0]}). Choose a new --output, or delete the folder first (rm -r {output_dir}).')
  elif os.path.exists(output_dir):
    raise PredictError(f'The output path {output_dir} is a file. Pass a folder path (new or empty) as --output.')
  parent = os.path.dirname(os.path.abspath(output_dir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.access(parent, os.W_OK | os.X_OK):
    raise PredictError(f'Cannot write under {parent} (permission denied): choose an --output in a folder you may '
                       'write to.')


def load_model(checkpoint: str, config: ml_collections.ConfigDict | None = None):
  """(model, variables, description) of a checkpoint: a workdir of --mode=train / --mode=demo (its best
  validated step, else the latest), one of its steps, or a --mode=convert output. `config` None uses the
  config saved with the checkpoint."""
  if not checkpoint or not os.path.exists(checkpoint):
    raise PredictError(f'The checkpoint {checkpoint!r} does not exist. Pass the workdir of a training or demo run '
                       '(python main.py --mode=demo --workdir=DIR makes one) or a --mode=convert output.')
  try:
    variables, meta = ckpt_lib.load_variables(checkpoint)
  except ckpt_lib.CheckpointError as e:
    raise PredictError(f'{e} Pass the workdir of a training or demo run, or a --mode=convert output.') from e
  given = config is not None
  if config is None:
    if not meta.get('config'):
      raise PredictError(f'The checkpoint {meta["checkpoint"]} has no saved config; pass the config it was trained '
                         'with via --config.')
    config = ml_collections.ConfigDict(meta['config'])
  config_lib.validate(config, roles=(), training=False)
  model = registry.build(config)
  fix = ("The checkpoint was made with another config: leave --config out to use the checkpoint's own config."
         if given else 'The checkpoint and its saved config disagree; pass the config it was trained with.')
  try:
    ckpt_lib.check_compatible(variables, model.abstract_variables(), where=meta['checkpoint'], saved_meta=meta,
                              model_config=config.model, fix=fix)
  except ckpt_lib.CheckpointError as e:
    raise PredictError(str(e)) from e
  val = meta.get('val') or {}
  info = {'path': meta['checkpoint'], 'step': meta.get('step'), 'model': config.model.name,
          'converted_from': meta.get('converted_from'), 'validation': val or None,
          'selected_by': 'best validation' if meta.get('selection') or val else 'latest'}
  return model, variables, info


def _flow_source(flow_dir: str | None, frames: frames_lib.FrameSource, method: str) -> frames_lib.FlowSource:
  if flow_dir:
    return frames_lib.FileFlow.from_folder(flow_dir, len(frames))
  if len(frames) < 2:
    raise PredictError(f'{frames.path} has a single frame, and optical flow needs two consecutive frames. Pass a '
                       'video of two frames or more, or precomputed flow with --flow=DIR.')
  return frames_lib.ComputedFlow(method)


def segment_into(tmp: str, segmenter: inference.Segmenter, frames: frames_lib.FrameSource,
                 flows: frames_lib.FlowSource | None, *, threshold: float = 0.5, progress: bool = False,
                 on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Streams `frames` through `segmenter` and writes masks, overlays and the movie into the folder `tmp`.

  Returns the per-video part of the report (frames, context frames, timings, frames per second).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(tmp, MASKS_DIR))
  os.makedirs(os.path.join(tmp, OVERLAYS_DIR))
  timer = inference.Timer()
  start = time.perf_counter()
  compile_before = segmenter.compile_seconds
  movie = movie_lib.MovieWriter(tmp, 'overlay', frames.fps or 10.0, len(frames))
  records = []
  bar = tqdm(total=len(frames), unit='frame', desc=os.path.basename(frames.path.rstrip('/')) or 'predict',
             disable=not progress, dynamic_ncols=True)
  is_instances = inference.segmenter_output_kind(segmenter) == 'instances'
  try:
    for r in inference.run_video(segmenter, frames, flows, timer=timer, on_batch=on_batch, extras=is_instances):
      height, width = r.frame.shape[:2]
      mask_path = os.path.join(tmp, MASKS_DIR, r.name + '.png')
      record = {'index': r.index, 'name': r.name, 'mask': f'{MASKS_DIR}/{r.name}.png',
                'overlay': f'{OVERLAYS_DIR}/{r.name}.jpg', 'height': height, 'width': width}
      with timer('postprocess'):
        if is_instances:
          ids = inference.frame_ids(segmenter, r, height, width)
          tinted = instances.overlay(r.frame, ids)
          present = np.unique(ids)
          record.update(objects=[int(i) for i in present if i != 0],
                        foreground_fraction=round(float((ids != 0).mean()), 6))
        else:
          mask = inference.probability_to_mask(r.prob, height, width, threshold)
          tinted = visualize.overlay_mask(r.frame, mask)
          record.update(foreground_fraction=round(float(mask.mean()), 6),
                        mean_probability=round(float(r.prob.mean()), 6))
      with timer('write'):
        if is_instances:
          try:
            instances.write_instance_mask(mask_path, ids)
          except image_io.DataError as e:
            raise PredictError(f'{e} (frame {r.name} of {frames.path}: the model gave more objects than a palette '
                               'PNG holds).') from e
        else:
          inference.write_mask_png(mask_path, mask)
        Image.fromarray(tinted).save(os.path.join(tmp, OVERLAYS_DIR, r.name + '.jpg'), quality=90)
        movie.add(tinted)
      records.append(record)
      bar.update(1)
    with timer('write'):
      movie_path = movie.close()
  except BaseException:
    movie.abort()
    raise
  finally:
    bar.close()
  compile_s = segmenter.compile_seconds - compile_before
  total = time.perf_counter() - start - compile_s
  seconds = {k: round(v, 4) for k, v in sorted(timer.seconds.items())}
  flow_s = timer.seconds.get('flow', 0.0)
  model_s = timer.seconds.get('model', 0.0) + timer.seconds.get('encode', 0.0)
  n = len(frames)
  context = segmenter.context_indices(n)
  logging.info('video %s: %d frames, %.2f frames/s (model only %.2f frames/s)', frames.path, n,
               n / max(total, 1e-9), n / max(model_s, 1e-9))
  return {
      'num_frames': n, 'context_frames': [{'index': i, 'name': frames.names[i]} for i in context],
      'frames': records, 'movie': os.path.basename(movie_path) if movie_path else None, 'movie_format': movie.kind,
      'timings_s': {**seconds, 'compile': round(compile_s, 4), 'total': round(total, 4)},
      'frames_per_second': {'including_flow': round(n / total, 3),
                            'excluding_flow': round(n / max(total - flow_s, 1e-9), 3),
                            'model_only': round(n / max(model_s, 1e-9), 3)},
  }


def predict(checkpoint: str, input_path: str, output_dir: str, flow_dir: str | None = None, tta: bool = False,
            threshold: float = 0.5, flow_method: str = 'dis', config=None, *, batch_size: int | None = None,
            progress: bool = True, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Segments one video (file or frame folder) with a checkpoint; writes `output_dir` (see the module doc).

  Returns the report that is also written to `predictions.json`.
  """
  started = time.perf_counter()
  if not 0.0 < threshold < 1.0:
    raise PredictError(f'--threshold={threshold} must lie strictly between 0 and 1 (default 0.5).')
  output_dir = os.path.abspath(output_dir)
  check_output_dir(output_dir)  # fail before the slow parts
  frames = frames_lib.open_frames(input_path)
  model, variables, checkpoint_info = load_model(checkpoint, config)
  segmenter = model.segmenter(jax.tree.map(np.asarray, variables), batch_size=batch_size, tta=tta)
  flows = _flow_source(flow_dir, frames, flow_method) if 'flow' in segmenter.modalities else None
  load_s = time.perf_counter() - started
  c = model.config
  with image_io.atomic_output_dir(output_dir) as tmp:
    video = segment_into(tmp, segmenter, frames, flows, threshold=threshold, progress=progress, on_batch=on_batch)
    report = {
        'input': os.path.abspath(input_path),
        'input_kind': 'video' if isinstance(frames, frames_lib.VideoFrames) else 'folder',
        'output': output_dir, 'checkpoint': checkpoint_info,
        'config': {'model': c.model.to_dict(), 'data': {'image_size': c.data.image_size, 'num_refs': c.data.num_refs,
                                                        'test_reference_rule': c.data.test_reference_rule},
                   'eval': {'seed': c.eval.seed, 'tta_scales': list(c.eval.tta_scales)}},
        'inference': segmenter.describe(), 'threshold': threshold,
        'flow': None if flows is None else flows.description,
        'mask_format': ("'P' PNG, DAVIS palette, 0 = background, 1.. = object ids" if model.output_kind == 'instances'
                        else "'P' PNG, DAVIS palette, 0 = background, 1 = object"),
        'output_kind': model.output_kind,
        **video,
    }
    report['timings_s']['load_checkpoint'] = round(load_s, 4)
    files.write_json(os.path.join(tmp, REPORT_JSON), report)
  fps = report['frames_per_second']
  logging.info('predict: %d frames -> %s (%.2f frames/s with flow, %.2f without; compile %.1f s).',
               report['num_frames'], output_dir, fps['including_flow'], fps['excluding_flow'],
               report['timings_s']['compile'])
  return report
