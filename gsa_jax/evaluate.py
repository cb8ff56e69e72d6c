"""Evaluation of a checkpoint on the test split, and the validation the trainer runs on the val split.

  python main.py --mode=evaluate --config=configs/gsanet_demo.py --workdir=DIR [--checkpoint=DIR]

Per video (`evaluate_split`): the frames (and flow images) stream from the dataset files through the model's
segmenter (gsa_jax.inference.run_video: per-video context once, compiled batches); each probability map
becomes a mask at the frame's own size (inference.probability_to_mask), is written as a DAVIS-palette PNG
under <output>/masks/<video>/<frame>.png, and the video is scored as soon as it is done
(gsa_jax.evaluation, under eval.protocol), so only one video's masks are ever in memory. Several processes
split the videos between them (video i goes to process i mod P) and gather the per-video scores; the
devices of one process split each batch.
`evaluate_checkpoint` restores the best checkpoint of a workdir (or --checkpoint), evaluates the test split
into <workdir>/eval/test/ (replaced as a whole: the new results are written beside it and renamed into
place), writes results.json (with the checkpoint and frames per second), results.csv, the per-sequence chart
and overlay strips, and prints the J / F / G table once.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from gsa_jax import checkpoint as ckpt_lib
from gsa_jax import config_lib
from gsa_jax import contract
from gsa_jax import errors
from gsa_jax import evaluation
from gsa_jax import inference
from gsa_jax import multi_object
from gsa_jax import registry
from gsa_jax import sharding as shard_lib
from gsa_jax import visualize
from input_pipeline import data_sources
from input_pipeline import datasets
from input_pipeline import frames as frames_lib
from input_pipeline import images as image_io
from input_pipeline import instances


class _LazyMasks(Mapping):
  """frame name -> mask read from a PNG on access (keeps long test sets out of memory)."""

  def __init__(self, paths: Mapping[str, str]):
    self._paths = dict(paths)

  def __getitem__(self, frame: str) -> np.ndarray:
    return evaluation.read_png(self._paths[frame])

  def __iter__(self):
    return iter(self._paths)

  def __len__(self) -> int:
    return len(self._paths)

  def describe(self, frame: str) -> str:
    return self._paths.get(frame, frame)


# Data sets whose masks hold instance ids (input_pipeline.instances): DAVIS-2017 layout or YouTube-VIS folders.
INSTANCE_DATASETS = ('davis17', 'synthetic_multi', 'ytvis')


def _list_instance_videos(name: str, root: str, split: str, *, check: str) -> list[instances.InstanceVideoRecord]:
  """The videos of an instance-id data set. DAVIS-2017 and the synthetic multi-object set have the splits
  'train' and 'val'; their 'test' role reads 'val' (the DAVIS-17 unsupervised test sets have no public
  masks). YouTube-VIS style: <root>/<split>/ when that folder exists, else <root> itself."""
  try:
    if name in ('davis17', 'synthetic_multi'):
      return instances.list_davis17(root, 'val' if split == 'test' else split, check=check)
    sub = split if os.path.isdir(os.path.join(root, split, 'JPEGImages')) else None
    return instances.list_youtube_vis(root, sub, check=check)
  except image_io.DataError as e:
    raise evaluation.EvaluationError(f'data.{split}={name!r} at {root!r}: {e}') from e


def list_split(config: ml_collections.ConfigDict, split: str) -> list[datasets.VideoRecord]:
  """The VideoRecords of data.<split> ('val' or 'test'), at most eval.max_videos of them."""
  if split not in ('train', 'val', 'test'):
    raise evaluation.EvaluationError(f"Unknown split {split!r}; choose one of 'train', 'val', 'test'.")
  name, root = config.data[split], config.data[f'{split}_root']
  if not name:
    raise evaluation.EvaluationError(f'data.{split} is empty: no {split} dataset configured.')
  if root and not os.path.exists(root):
    raise evaluation.EvaluationError(f'data.{split}_root={root!r} does not exist (dataset {name!r}).')
  if name in INSTANCE_DATASETS:
    records = list(_list_instance_videos(name, root, split, check=config.data.check))
  else:
    records = list(datasets.list_videos(name, root, split, check=config.data.check))
  if not records:
    raise evaluation.EvaluationError(f'No videos in the {split} split of {name!r} at {root!r}.')
  if config.eval.max_videos > 0:
    records = records[:config.eval.max_videos]
  return records


def _strip(result: inference.FrameResult, gt_path: str | None, size: int) -> np.ndarray:
  """RGB | flow | prediction | GT | extra maps at the model size, for one frame."""
  frame = frames_lib.resize(result.frame, (size, size))
  flow = None if result.flow is None else frames_lib.resize(result.flow, (size, size)).astype(np.float32) / 255.0
  gt = None
  if gt_path:
    mask = evaluation.binarize_ground_truth(evaluation.read_png(gt_path)).astype(np.uint8)
    gt = frames_lib.resize(mask, (size, size)).astype(np.float32)
  return visualize.strip(rgb=frame, normalized_rgb=False, flow=flow, pred=result.prob, gt=gt,
                         fg_slot=result.extras.get('fg_slot'))


def evaluate_split(model: contract.Model, variables: Mapping[str, Any], config: ml_collections.ConfigDict, *,
                   split: str = 'test', output_dir: str | None = None, num_overlays: int | None = None,
                   tta: bool | None = None, segmenter: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Segments and scores every video of data.<split>; returns (results, extra).

  With `output_dir`, masks go to <output_dir>/masks/<video>/<frame>.png and the first `num_overlays`
  videos' strips to <output_dir>/overlays/ (each process writes its own videos). extra: frames, seconds,
  fps, compile_seconds, 'overlays' (the strips, uint8) and the segmenter (reuse it with new variables: the
  trainer's validation compiles once).
  """
  records = list_split(config, split)
  num_overlays = int(config.eval.num_overlays if num_overlays is None else num_overlays)
  if segmenter is None:
    segmenter = model.segmenter(variables, tta=tta)
  else:
    segmenter.set_variables(variables)
  if model.output_kind == 'instances':
    return _evaluate_instances(records, segmenter, config, split=split, output_dir=output_dir,
                               num_overlays=num_overlays)
  needs_flow = 'flow' in segmenter.modalities
  threshold, protocol = float(config.eval.threshold), config.eval.protocol
  process, count = jax.process_index(), jax.process_count()
  entries: dict[str, Any] = {}
  skipped: dict[str, str] = {}
  soft: list[str] = []
  overlays: list[tuple[int, np.ndarray]] = []
  frames_done, timer = 0, inference.Timer()
  compile_before = segmenter.compile_seconds
  start_all = time.perf_counter()
  for v, record in enumerate(records):
    if v % count != process:
      continue
    try:
      segmenter.context_indices(len(record))
    except errors.UserError as e:
      raise evaluation.EvaluationError(f'video {record.name}: {e}') from e
    frames = frames_lib.FileFrames(record.frame_paths, record.frame_names, path=record.name)
    flows = frames_lib.FileFlow(record.flow_paths, len(record), path=record.name) if needs_flow else None
    annotated = record.annotated
    strip_at = annotated[len(annotated) // 2] if annotated else len(record) // 2
    before_video = _clock(timer)
    masks = {}
    for result in inference.run_video(segmenter, frames, flows, timer=timer, extras=v < num_overlays):
      h, w = result.frame.shape[:2]
      mask = inference.probability_to_mask(result.prob, h, w, threshold)
      if output_dir:
        path = os.path.join(output_dir, 'masks', record.name, f'{result.name}.png')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        inference.write_mask_png(path, mask)
      masks[result.name] = mask
      if v < num_overlays and result.index == strip_at:
        image = _strip(result, record.mask_paths[result.index], segmenter.size)
        overlays.append((v, image))
        if output_dir:
          visualize.save_png(os.path.join(output_dir, 'overlays', f'{record.name}_{result.name}.png'), image)
    frames_done += len(record)
    _log_video(record.name, len(record), timer, before_video)
    gt_paths = {str(n): p for n, p in zip(record.frame_names, record.mask_paths) if p}
    if not gt_paths:
      skipped[record.name] = 'no ground-truth masks'
      continue
    entry, why = evaluation.score_sequence(record.name, masks, _LazyMasks(gt_paths), protocol, soft_frames=soft)
    if entry is None:
      skipped[record.name] = why
    else:
      entries[record.name] = entry
  model_seconds = timer.seconds.get('model', 0.0) + timer.seconds.get('encode', 0.0)
  local = {'entries': entries, 'skipped': skipped, 'soft': soft, 'frames': frames_done, 'model_seconds': model_seconds}
  gathered = shard_lib.allgather_json(local)
  all_entries = {k: v for part in gathered for k, v in part['entries'].items()}
  all_skipped = {k: v for part in gathered for k, v in part['skipped'].items()}
  if not all_entries:
    raise evaluation.EvaluationError(f'The {split} split has no ground-truth masks to score.')
  results = evaluation.aggregate(all_entries, protocol, skipped=all_skipped,
                                 soft_frames=[f for part in gathered for f in part['soft']])
  frames_all = sum(part['frames'] for part in gathered)
  seconds_all = max(max(part['model_seconds'] for part in gathered), 1e-9)
  extra = {'frames': frames_all, 'seconds': round(time.perf_counter() - start_all, 3),
           'model_seconds': round(seconds_all, 3),
           'compile_seconds': round(segmenter.compile_seconds - compile_before, 3),
           'fps': frames_all / seconds_all, 'overlays': [image for _, image in sorted(overlays, key=lambda x: x[0])],
           'segmenter': segmenter, 'inference': segmenter.describe(), 'processes': count}
  return results, extra


def _clock(timer: inference.Timer) -> tuple[float, float]:
  """(model seconds so far, wall clock) for the per-video progress line."""
  return timer.seconds.get('model', 0.0) + timer.seconds.get('encode', 0.0), time.perf_counter()


def _log_video(name: str, num_frames: int, timer: inference.Timer,
               before: tuple[float, float]) -> None:
  model_s, wall = _clock(timer)
  model_s, wall = model_s - before[0], wall - before[1]
  logging.info('video %s: %d frames, %.2f frames/s (model only %.2f frames/s)', name, num_frames,
               num_frames / max(wall, 1e-9), num_frames / max(model_s, 1e-9))


class _InstanceMasks(Mapping):
  """frame name -> predicted id map, kept in memory; describe(frame) names the written PNG when there is one."""

  def __init__(self):
    self._ids: dict[str, np.ndarray] = {}
    self._paths: dict[str, str] = {}

  def add(self, frame: str, ids: np.ndarray, path: str | None) -> None:
    self._ids[frame] = ids.astype(np.uint16 if ids.max(initial=0) > 255 else np.uint8)
    if path:
      self._paths[frame] = path

  def __getitem__(self, frame: str) -> np.ndarray:
    return self._ids[frame]

  def __iter__(self):
    return iter(self._ids)

  def __len__(self) -> int:
    return len(self._ids)

  def describe(self, frame: str) -> str:
    return self._paths.get(frame, frame)


class _OneObject(_LazyMasks):
  """frame name -> the binary ground truth of a frame as ids (1 = the foreground), read on access."""

  def __getitem__(self, frame: str) -> np.ndarray:
    return evaluation.binarize_ground_truth(super().__getitem__(frame)).astype(np.uint8)


def _instance_strip(result: inference.FrameResult, ids: np.ndarray, gt_path: str | None, size: int,
                    binary_gt: bool = False) -> np.ndarray:
  """RGB | predicted objects | ground-truth objects (DAVIS colours over the frame) at the model size."""
  frame = frames_lib.resize(result.frame, (size, size))
  pred = inference.resize_ids(ids, size, size)
  panels = [frame, instances.overlay(frame, pred)]
  if gt_path:
    gt = instances.read_instance_mask(gt_path)
    gt = inference.resize_ids((gt != 0).astype(np.uint8) if binary_gt else gt, size, size)
    panels.append(instances.overlay(frame, np.where(gt == multi_object.VOID_LABEL, 0, gt)))
  return np.concatenate(panels, axis=1)


def _evaluate_instances(records: list[Any], segmenter: Any, config: ml_collections.ConfigDict, *, split: str,
                        output_dir: str | None, num_overlays: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """evaluate_split for instance models: id maps per frame, scored under eval.protocol (multi_object).

  Matching is per sequence but the data set figures pool objects and frames of every sequence, so every
  process runs every video (no split over processes) and process 0 writes the masks. A binary-mask data set
  (input_pipeline.datasets) is scored as one object per video: its foreground is id 1.
  """
  protocol = config.eval.protocol
  if protocol not in multi_object.PROTOCOLS:
    raise evaluation.EvaluationError(f'eval.protocol={protocol!r} scores binary masks; instance models use one of '
                                     f'{", ".join(multi_object.PROTOCOLS)} (set --config.eval.protocol).')
  needs_flow = 'flow' in segmenter.modalities
  writes = bool(output_dir) and jax.process_index() == 0
  predictions: dict[str, _InstanceMasks] = {}
  ground_truth: dict[str, Mapping[str, np.ndarray]] = {}
  overlays: list[np.ndarray] = []
  skipped: dict[str, str] = {}
  frames_done, timer = 0, inference.Timer()
  compile_before = segmenter.compile_seconds
  start_all = time.perf_counter()
  for v, record in enumerate(records):
    frames = frames_lib.FileFrames(record.frame_paths, record.frame_names, path=record.name)
    flows = None
    if needs_flow:
      if not record.flow_paths:
        raise evaluation.EvaluationError(f'video {record.name}: this model takes optical flow and the data set has '
                                         'no FLOW folder; make it with --mode=flow.')
      flows = frames_lib.FileFlow(record.flow_paths, len(record), path=record.name)
    annotated = record.annotated
    strip_at = annotated[len(annotated) // 2] if annotated else len(record) // 2
    before_video = _clock(timer)
    masks = _InstanceMasks()
    for result in inference.run_video(segmenter, frames, flows, timer=timer, extras=True):
      h, w = result.frame.shape[:2]
      ids = inference.frame_ids(segmenter, result, h, w)
      path = None
      if writes:
        path = os.path.join(output_dir, 'masks', record.name, f'{result.name}.png')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        instances.write_instance_mask(path, ids)
      masks.add(str(result.name), ids, path)
      if v < num_overlays and result.index == strip_at:
        image = _instance_strip(result, ids, record.mask_paths[result.index], segmenter.size,
                                binary_gt=not isinstance(record, instances.InstanceVideoRecord))
        overlays.append(image)
        if writes:
          visualize.save_png(os.path.join(output_dir, 'overlays', f'{record.name}_{result.name}.png'), image)
    frames_done += len(record)
    _log_video(record.name, len(record), timer, before_video)
    if not annotated:
      skipped[record.name] = 'no ground-truth masks'
      continue
    predictions[record.name] = masks
    if isinstance(record, instances.InstanceVideoRecord):
      ground_truth.update(instances.ground_truth([record]))
    else:  # a binary-mask data set: its foreground is one object (id 1)
      ground_truth[record.name] = _OneObject({str(record.frame_names[i]): record.mask_paths[i]
                                              for i in record.annotated})
  if not ground_truth:
    raise evaluation.EvaluationError(f'The {split} split has no ground-truth masks to score.')
  try:
    results = multi_object.score(protocol, predictions, ground_truth)
  except image_io.DataError as e:
    raise evaluation.EvaluationError(str(e)) from e
  results['skipped'] = dict(results.get('skipped', {}), **skipped)
  model_seconds = max(timer.seconds.get('model', 0.0) + timer.seconds.get('encode', 0.0), 1e-9)
  extra = {'frames': frames_done, 'seconds': round(time.perf_counter() - start_all, 3),
           'model_seconds': round(model_seconds, 3),
           'compile_seconds': round(segmenter.compile_seconds - compile_before, 3),
           'fps': frames_done / model_seconds, 'overlays': overlays, 'segmenter': segmenter,
           'inference': segmenter.describe(), 'processes': jax.process_count()}
  return results, extra


def summary_figures(results: Mapping[str, Any], best_metric: str) -> dict[str, float]:
  """The top-level figures of a results dict (its stat_keys, e.g. fgari_miou's FG-ARI and mIoU, or J / F / G);
  protocols without G (fbms, ytobj) select on J."""
  figures = {k: float(results[k]) for k in evaluation.stat_keys(results) if results.get(k) is not None}
  if best_metric == 'G' and 'G' not in figures and 'J_mean' in figures:
    figures['G'] = figures['J_mean']
  return figures


class Validator:
  """The trainer's validation on data.val: compiled once, then reused with each step's variables."""

  def __init__(self, model: contract.Model, config: ml_collections.ConfigDict, workdir: str, writer: Any):
    self.model, self.config, self.workdir, self.writer = model, config, workdir, writer
    self.segmenter = None

  def __call__(self, variables: Mapping[str, Any], step: int) -> dict[str, float]:
    start = time.time()
    results, extra = evaluate_split(self.model, variables, self.config, split='val', num_overlays=2,
                                    tta=False, segmenter=self.segmenter)
    self.segmenter = extra['segmenter']
    if jax.process_index() == 0 and extra['overlays']:
      image = visualize.stack_rows(extra['overlays'])
      self.writer.write_images(step, {'val/strip': image[None]})
      visualize.save_png(os.path.join(self.workdir, 'images', f'val_step{step:07d}.png'), image)
    val = summary_figures(results, self.model.best_metric)
    scalars = {f'val/{k}': v for k, v in val.items()}
    scalars['val/fps'] = extra['fps']
    self.writer.write_scalars(step, scalars)
    logging.info('validation at step %d (%s, %.1f s): %s', step, self.config.data.val, time.time() - start,
                 ', '.join(f'{k} {v:.4f}' for k, v in val.items()))
    return val


def _replace_dir(staging: str, output_dir: str) -> None:
  """Moves `staging` to `output_dir`, replacing an earlier output as a whole."""
  if os.path.exists(output_dir):
    old = f'{output_dir}.old-{os.getpid()}'
    os.rename(output_dir, old)
    os.rename(staging, output_dir)
    shutil.rmtree(old, ignore_errors=True)
    logging.info('Replaced the earlier results in %s.', output_dir)
  else:
    os.rename(staging, output_dir)


def evaluate_checkpoint(config: ml_collections.ConfigDict | None, workdir: str, checkpoint: str | None = None, *,
                        log_results: bool = True) -> dict[str, Any]:
  """Evaluates the best checkpoint of `workdir` (or `checkpoint`) on data.test; writes <workdir>/eval/test/.

  `log_results=False` leaves the figures to the caller (the demo prints them once, as a table).

  `config` None uses the config saved with the checkpoint.
  """
  workdir = os.path.abspath(workdir)
  variables, meta = ckpt_lib.load_variables(checkpoint or workdir)
  if config is None:
    if not meta.get('config'):
      raise ckpt_lib.CheckpointError(f'{meta["checkpoint"]} has no saved config: pass --config.')
    config = ml_collections.ConfigDict(meta['config'])
  config_lib.validate(config, roles=('test',), training=False)
  config = data_sources.prepare_data_roots(config, workdir, roles=('test',))
  model = registry.build(config)
  abstract = {k: v for k, v in model.abstract_variables().items()}
  ckpt_lib.check_compatible(variables, abstract, where=meta['checkpoint'], saved_meta=meta, model_config=config.model)
  logging.info('Evaluating %s (step %s) on %s/test.', meta['checkpoint'], meta.get('step'), config.data.test)
  output_dir = os.path.join(workdir, 'eval', 'test')
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise evaluation.EvaluationError(f'{output_dir} exists and is a file; move it away so the results can be '
                                     'written there.')
  staging = f'{output_dir}.writing'
  if jax.process_index() == 0:
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
  shard_lib.barrier('evaluation output ready')
  try:
    results, extra = evaluate_split(model, variables, config, split='test', output_dir=staging)
  except BaseException:
    if jax.process_index() == 0:
      shutil.rmtree(staging, ignore_errors=True)
    raise
  shard_lib.barrier('evaluation masks written')
  info = {'checkpoint': meta['checkpoint'], 'checkpoint_step': meta.get('step'), 'checkpoint_val': meta.get('val'),
          'dataset': config.data.test, 'split': 'test', 'frames_per_second': round(extra['fps'], 3),
          'timing': {k: extra[k] for k in ('frames', 'seconds', 'model_seconds', 'compile_seconds')},
          'inference': extra['inference'], 'threshold': config.eval.threshold, 'seed': config.eval.seed,
          'processes': extra['processes']}
  if jax.process_index() == 0:
    evaluation.write_results(results, staging, extra=info)
    _replace_dir(staging, output_dir)
  if log_results:
    logging.info('%s\n(%.1f frames/s) -> %s', evaluation.format_summary(results), extra['fps'],
                 os.path.join(output_dir, evaluation.RESULTS_JSON))
  return dict(results, **info)
