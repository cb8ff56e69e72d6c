"""Evaluation of a trained checkpoint on the test split, and the validation used during training.

  python main.py --mode=evaluate --config=configs/demo.py --workdir=DIR [--checkpoint=DIR]

Per video (`evaluate_model`):
  1. frames, flows and the N_R reference frames (chosen uniformly over the video, the official test
     rule) come from `input_pipeline.pipeline.load_eval_video`, resized to data.image_size;
  2. the references are encoded ONCE (GSANet.encode_references) and reused by every batch;
  3. frames are segmented in batches of eval.batch_size by one compiled program (the last batch is
     padded, never recompiled). Frame i gets the k-means key fold_in(key(eval.kmeans_seed), i) and the
     frames of a batch are vmapped one by one, so a mask depends neither on the batch nor on the run:
     two evaluations give identical numbers;
  4. optional TTA (eval.tta): every scale of eval.tta_scales x {no flip, horizontal flip}, the
     probabilities resized back, unflipped and averaged;
  5. probabilities are resized (bilinear) to the original frame size and thresholded at
     eval.threshold into binary 0/255 PNGs, DAVIS layout: <output>/masks/<video>/<frame>.png;
  6. scoring with gsa_jax.evaluation.score_sequences under eval.protocol.
`evaluate_checkpoint` restores the best checkpoint of a workdir (or --checkpoint), evaluates the test
split into <workdir>/eval/test/, writes results.json (with the checkpoint and frames per second),
results.csv, the per-sequence chart and a few overlay strips, and logs J, F and G.
The stage-1 SaliencyNet is evaluated on the RGB frames alone.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from gsa_jax import checkpoint as ckpt_lib
from gsa_jax import visualize

SPLIT_ROLES = {'train': 'train', 'val': 'val', 'test': 'test'}


class _LazyMasks(Mapping):
  """frame name → mask read from a PNG on access (keeps long test sets out of memory)."""

  def __init__(self, paths: Mapping[str, str]):
    self._paths = dict(paths)

  def __getitem__(self, frame: str) -> np.ndarray:
    from gsa_jax import evaluation  # pylint: disable=g-import-not-at-top
    return evaluation.read_png(self._paths[frame])

  def __iter__(self):
    return iter(self._paths)

  def __len__(self) -> int:
    return len(self._paths)

  def describe(self, frame: str) -> str:
    return self._paths.get(frame, frame)


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def list_split(config: ml_collections.ConfigDict, split: str) -> list[Any]:
  """The VideoRecords of data.<split> (split 'val' or 'test'), at most eval.max_videos of them."""
  from input_pipeline import datasets  # pylint: disable=g-import-not-at-top
  if split not in SPLIT_ROLES:
    raise ValueError(f'Unknown split {split!r}; choose one of {sorted(SPLIT_ROLES)}.')
  name, root = config.data[split], config.data[f'{split}_root']
  if not name:
    raise ValueError(f'data.{split} is empty: no {split} dataset configured.')
  if root and not os.path.exists(root):
    raise FileNotFoundError(f'data.{split}_root={root!r} does not exist (dataset {name!r}).')
  records = list(datasets.list_videos(name, root, SPLIT_ROLES[split]))
  if not records:
    raise ValueError(f'No videos in the {split} split of {name!r} at {root!r}.')
  if config.eval.max_videos > 0:
    records = records[:config.eval.max_videos]
  return records


def tta_augmentations(size: int, tta: bool, scales: Sequence[float]) -> list[tuple[int, bool]]:
  """(image size, flip) pairs: sizes rounded to multiples of 32."""
  if not tta:
    return [(size, False)]
  sizes = sorted({max(32, int(round(size * s / 32.0)) * 32) for s in scales})
  return [(s, flip) for s in sizes for flip in (False, True)]


def _augment(x: jnp.ndarray, size: int, flip: bool) -> jnp.ndarray:
  """x: [n, s, s, c] → [n, size, size, c], mirrored when `flip`."""
  if x.shape[1] != size:
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), 'bilinear')
  return x[:, :, ::-1] if flip else x


class Segmenter:
  """Compiled encode/segment programs for one model, image size and batch size."""

  def __init__(self, model, variables, config: ml_collections.ConfigDict, *, tta: bool | None = None):
    self.model = model
    self.kind = config.model.kind
    self.size = int(config.data.image_size)
    self.batch_size = int(config.eval.batch_size)
    self.kmeans_seed = int(config.eval.kmeans_seed)
    tta = bool(config.eval.tta) if tta is None else tta
    self.augmentations = tta_augmentations(self.size, tta, tuple(config.eval.tta_scales))
    self.set_variables(variables)
    self._encode = jax.jit(self._encode_fn)
    self._segment = {True: jax.jit(functools.partial(self._segment_fn, with_slots=True)),
                     False: jax.jit(functools.partial(self._segment_fn, with_slots=False))}
    self._compiled: dict[Any, Any] = {}
    self.compile_seconds = 0.0

  def set_variables(self, variables: Mapping[str, Any]) -> None:
    device = jax.local_devices()[0]
    self.variables = jax.device_put(
        {'params': variables['params'], 'batch_stats': variables.get('batch_stats') or {}}, device)

  def _encode_fn(self, variables, ref_rgb, ref_flow):
    b, t, s = ref_rgb.shape[:3]
    features = []
    for size, flip in self.augmentations:
      rgb = _augment(ref_rgb.reshape(b * t, s, s, 3), size, flip).reshape(b, t, size, size, 3)
      flow = _augment(ref_flow.reshape(b * t, s, s, 3), size, flip).reshape(b, t, size, size, 3)
      features.append(self.model.apply(variables, rgb, flow, train=False, method='encode_references'))
    return tuple(features)

  def _segment_fn(self, variables, rgb, flow, references, frame_indices, *, with_slots: bool):
    """Mean foreground probability [b, s, s] over the augmentations, and the fg-slot map [b, s, s]
    (of the first augmentation; None unless `with_slots`)."""
    base_key = jax.random.key(self.kmeans_seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(frame_indices)
    b, s = rgb.shape[:2]
    total = jnp.zeros((b, s, s, 1), jnp.float32)
    fg_slot = jnp.zeros((b, s, s, 1), jnp.float32)
    for a, (size, flip) in enumerate(self.augmentations):
      x_rgb = _augment(rgb, size, flip)
      if self.kind == 'video':
        x_flow = _augment(flow, size, flip)
        features = references[a]

        def one(rgb1, flow1, key, features=features):
          out = self.model.apply(variables, rgb1[None], flow1[None], features, train=False, kmeans_key=key,
                                 method='segment')
          maps = tuple(out.get('slot_maps') or ())
          slot = maps[2][0] if len(maps) > 2 else jnp.zeros_like(out['logits'][0])
          return out['logits'][0], slot

        logits, slot = jax.vmap(one)(x_rgb, x_flow, keys)
      else:
        logits = self.model.apply(variables, x_rgb, train=False)['logits']
        slot = jnp.zeros_like(logits)
      prob = jax.nn.sigmoid(logits.astype(jnp.float32))
      slot = slot.astype(jnp.float32)
      if flip:
        prob, slot = prob[:, :, ::-1], slot[:, :, ::-1]
      if size != s:
        prob = jax.image.resize(prob, (b, s, s, 1), 'bilinear')
        slot = jax.image.resize(slot, (b, s, s, 1), 'bilinear')
      total = total + prob
      if a == 0:
        fg_slot = slot
    return (total / len(self.augmentations))[..., 0], (fg_slot[..., 0] if with_slots else None)

  def _get(self, name, fn, *args):
    key = (name,) + tuple((np.shape(a), str(getattr(a, 'dtype', ''))) for a in jax.tree.leaves(args))
    if key not in self._compiled:
      start = time.perf_counter()
      self._compiled[key] = fn.lower(*args).compile()
      self.compile_seconds += time.perf_counter() - start
    return self._compiled[key]

  def encode(self, ref_rgb: np.ndarray, ref_flow: np.ndarray):
    """ref_rgb/ref_flow [t, s, s, 3] → reference features (one set per augmentation)."""
    if self.kind != 'video':
      return ()
    args = (self.variables, jnp.asarray(ref_rgb[None]), jnp.asarray(ref_flow[None]))
    return self._get('encode', self._encode, *args)(*args)

  def segment_batch(self, rgb: np.ndarray, flow: np.ndarray, references, frame_indices: np.ndarray, *,
                    with_slots: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """One batch [batch_size, s, s, 3] of frames numbered `frame_indices` (their k-means keys) →
    (probabilities [batch_size, s, s], fg-slot maps or None). Compiles once per shape, timed in
    `compile_seconds`; without `with_slots` the slot map is neither returned nor resized."""
    args = (self.variables, jnp.asarray(rgb, jnp.float32), jnp.asarray(flow, jnp.float32), references,
            jnp.asarray(frame_indices, jnp.int32))
    return self._get(('segment', with_slots), self._segment[with_slots], *args)(*args)

  def segment_video(self, rgb: np.ndarray, flow: np.ndarray | None, references) -> tuple[np.ndarray, np.ndarray]:
    """All frames [L, s, s, 3] in padded batches → (probabilities [L, s, s], fg-slot maps [L, s, s])."""
    length = rgb.shape[0]
    if flow is None:
      flow = np.zeros_like(rgb)
    probs, slots = [], []
    for start in range(0, length, self.batch_size):
      idx = np.arange(start, start + self.batch_size)
      take = np.minimum(idx, length - 1)  # Pad by repeating the last frame.
      prob, slot = self.segment_batch(rgb[take], flow[take], references, idx, with_slots=True)
      n = min(self.batch_size, length - start)
      probs.append(np.asarray(prob)[:n])
      slots.append(np.asarray(slot)[:n])
    return np.concatenate(probs), np.concatenate(slots)


def _to_original(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of a [s, s] probability map to (H, W)."""
  import cv2  # pylint: disable=g-import-not-at-top
  h, w = int(size[0]), int(size[1])
  if prob.shape == (h, w):
    return prob
  return cv2.resize(prob.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def _write_mask(path: str, mask: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode='L').save(path)


def evaluate_model(model, variables: Mapping[str, Any], config: ml_collections.ConfigDict, *,
                   split: str = 'test', output_dir: str | None = None, num_overlays: int = 3,
                   tta: bool | None = None, write: bool | None = None,
                   segmenter: Segmenter | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Segments and scores every video of data.<split>; returns (results, extra).

  With `output_dir`, binary masks go to <output_dir>/masks/<video>/<frame>.png and `num_overlays` strips
  (RGB | flow | pred | GT | fg-slot map) to <output_dir>/overlays/ (process 0 writes). Without it,
  masks are kept in memory (validation). extra: frames, seconds, fps, compile_seconds and 'overlays'
  (the strips as uint8 arrays). A `segmenter` from an earlier call is reused with these variables, so
  repeated validation during training compiles once.
  """
  from gsa_jax import evaluation  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  write = (jax.process_index() == 0) if write is None else write
  records = list_split(config, split)
  if segmenter is None:
    segmenter = Segmenter(model, variables, config, tta=tta)
  else:
    segmenter.set_variables(variables)
  num_refs = int(config.data.num_refs)
  predictions: dict[str, Any] = {}
  ground_truth: dict[str, Any] = {}
  frames_done, model_seconds = 0, 0.0
  overlays = []
  start_all = time.perf_counter()
  for v, record in enumerate(records):
    if config.model.kind == 'video' and num_refs > len(record.frame_paths):
      raise ValueError(f'data.num_refs (N_R)={num_refs} is larger than video {record.name} '
                       f'({len(record.frame_paths)} frames); use at most {len(record.frame_paths)}.')
    video = pipeline.load_eval_video(record, image_size=int(config.data.image_size), num_refs=num_refs)
    rgb = np.asarray(video['rgb'], np.float32)
    flow = None if video.get('flow') is None else np.asarray(video['flow'], np.float32)
    refs = np.asarray(video['ref_indices'])
    t0 = time.perf_counter()
    compile_before = segmenter.compile_seconds
    features = segmenter.encode(rgb[refs], flow[refs]) if config.model.kind == 'video' else ()
    prob, fg_slot = segmenter.segment_video(rgb, flow, features)
    model_seconds += time.perf_counter() - t0 - (segmenter.compile_seconds - compile_before)
    frames_done += rgb.shape[0]
    names = [str(n) for n in video['frame_names']]
    size = tuple(video['original_size'])
    masks = {}
    for i, name in enumerate(names):
      mask = _to_original(prob[i], size) > config.eval.threshold
      if output_dir and write:
        _write_mask(os.path.join(output_dir, 'masks', record.name, f'{name}.png'), mask)
      masks[name] = mask
    gt_paths = {str(n): p for n, p in zip(record.frame_names, record.mask_paths) if p}
    if gt_paths:
      ground_truth[record.name] = _LazyMasks(gt_paths)
    predictions[record.name] = masks
    if v < num_overlays:
      annotated = [k for k, m in enumerate(video.get('masks') or []) if m is not None]
      i = annotated[len(annotated) // 2] if annotated else len(names) // 2
      gt_small = None
      if annotated:
        gt_small = np.asarray(Image.fromarray(np.asarray(video['masks'][i], np.uint8)).resize(
            (rgb.shape[2], rgb.shape[1]), Image.NEAREST)) > 0
      image = visualize.strip(rgb=rgb[i], flow=None if flow is None else flow[i], pred=prob[i],
                              gt=None if gt_small is None else gt_small.astype(np.float32),
                              fg_slot=fg_slot[i] if config.model.kind == 'video' else None)
      if output_dir and write:
        visualize.save_png(os.path.join(output_dir, 'overlays', f'{record.name}_{names[i]}.png'), image)
      overlays.append(image)
  if not ground_truth:
    raise ValueError(f'The {split} split has no ground-truth masks to score.')
  results = evaluation.score_sequences(predictions, ground_truth, config.eval.protocol)
  extra = {'frames': frames_done, 'seconds': round(time.perf_counter() - start_all, 3),
           'model_seconds': round(model_seconds, 3), 'compile_seconds': round(segmenter.compile_seconds, 3),
           'fps': frames_done / max(model_seconds, 1e-9), 'overlays': overlays,
           'tta': [list(a) for a in segmenter.augmentations]}
  return results, extra


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, checkpoint: str | None = None
                        ) -> dict[str, Any]:
  """Evaluates the best checkpoint of `workdir` (or `checkpoint`) on data.test; writes <workdir>/eval/test/."""
  from gsa_jax import evaluation  # pylint: disable=g-import-not-at-top
  from gsa_jax import train  # pylint: disable=g-import-not-at-top
  train.validate_config(config, mode='evaluate')
  workdir = os.path.abspath(workdir)
  config = train.prepare_data_roots(config, workdir, roles=('test',))
  variables, meta = ckpt_lib.load_variables(checkpoint or workdir)
  model = train.build_model(config.model)
  expected = jax.eval_shape(lambda: train.init_variables(model, config))
  ckpt_lib.check_compatible(variables, expected, where=meta['checkpoint'], saved_meta=meta,
                            model_config=config.model)
  logging.info('Evaluating %s (step %s) on %s/test.', meta['checkpoint'], meta.get('step'), config.data.test)
  output_dir = os.path.join(workdir, 'eval', 'test')
  results, extra = evaluate_model(model, variables, config, split='test', output_dir=output_dir)
  info = {'checkpoint': meta['checkpoint'], 'checkpoint_step': meta.get('step'),
          'checkpoint_val': meta.get('val'), 'dataset': config.data.test, 'split': 'test',
          'frames_per_second': round(extra['fps'], 3), 'timing': {k: extra[k] for k in ('frames', 'seconds',
                                                                                        'model_seconds',
                                                                                        'compile_seconds')},
          'tta': extra['tta'], 'threshold': config.eval.threshold, 'kmeans_seed': config.eval.kmeans_seed}
  if jax.process_index() == 0:
    evaluation.write_results(results, output_dir, extra=info)
  summary = evaluation.format_summary(results)
  logging.info('%s', summary)
  j, f, g = results.get('J_mean'), results.get('F_mean'), results.get('G')
  print(summary)
  print(f'J {j:.4f}  F {"n/a" if f is None else f"{f:.4f}"}  G {"n/a" if g is None else f"{g:.4f}"}  '
        f'({extra["fps"]:.1f} frames/s) -> {os.path.join(output_dir, evaluation.RESULTS_JSON)}')
  return dict(results, **info)
