"""FG-ARI and video mIoU of instance-id maps (SOLV's multi-object measures; numpy/scipy, host side).

  fgari_miou(pred, gt)              the measures as defined (defaults, below).
  fgari_miou(pred, gt, preset='solv_released')
                                    the released SOLV evaluation (gorkaydemir/SOLV `utils.Evaluator`), bugs
                                    included, to reproduce published numbers; each behaviour is also a switch.
  adjusted_rand_index(a, b)         ARI of two labelings (= sklearn.metrics.adjusted_rand_score).

Inputs as `gsa_jax.multi_object`: sequence → frame → id map [h, w]. Ground truth: 0 background, other ids
objects, `void_label` (255 by default; None for none) pixels are left out of every count. Predictions: every
id (0 included) is a segment, as a slot model's argmax.

Defaults (the measures as defined):
  FG-ARI  the adjusted Rand index of the raw predicted ids against the ground truth over the pixels whose
          ground truth is an object (background excluded), per frame (frames without an object skipped),
          averaged over all scored frames of the data set, as SOLV's paper states it ('per-frame FG-ARI
          averaged over all frames'). fg_ari_scope='video' takes one ARI over all foreground pixels of a video
          instead (the spatio-temporal FG-ARI of video slot models), averaged over videos.
  mIoU    one Hungarian matching per video (`linear_sum_assignment`, maximising the summed IoU) between the
          predicted ids present in the video and its ground-truth objects; a pair's IoU is the video IoU:
          per-frame IoU averaged over the frames where either mask is present (SOLV's `get_iou`), or with
          iou='volume' the IoU of the two space-time volumes. An object left unmatched (more objects than
          predicted ids) scores 0. mIoU = mean over all objects of all videos (object-weighted, as SOLV);
          mIoU_video_mean = mean over videos of their object means.

The released evaluation differs in four ways, each a switch (preset='solv_released' sets them all):
  relabel_by_row_index=True   matched predictions are relabelled by the ROW INDEX of the IoU matrix rather
                              than by the predicted id the row stands for (`pred == row_ind[k]`), and by the
                              column index + 1 rather than the object id, so any prediction whose ids are not
                              exactly 0..n-1 is scrambled: a perfect prediction with ids {0, 3} scores mIoU 0.0
                              (1.0 with the fix). Padding rows can alias real ids.
  fg_ari_after_matching=True  FG-ARI of the matched, relabelled prediction (unmatched segments merge into one
                              cluster 0), instead of the raw segments.
  fg_ari_average='videos'     mean over frames per video, then over videos (not over all frames).
  first_frame_objects=True    only the objects present in the first frame are kept (ascending ids, at most 19,
                              relabelled 1..K); the others become background. A video whose first frame has no
                              object has no ground truth at all.
  (and void_label=None: YouTube-VIS has no void label and the released code has none.)
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import optimize

from gsa_jax.multi_object import MultiObjectError, check_sequences, natural_key, read_sequence, VOID_LABEL

SOLV_MAX_OBJECTS = 19  # the released To_One_Hot(20): background + 19 objects
PRESETS = {
    'solv_released': dict(relabel_by_row_index=True, fg_ari_after_matching=True, fg_ari_average='videos',
                          first_frame_objects=True, void_label=None, fg_ari_scope='frame', iou='frames'),
}


def adjusted_rand_index(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
  """Adjusted Rand index of two labelings [n] (any integers), as sklearn.metrics.adjusted_rand_score.

  Pair counts from the contingency table, in exact integer arithmetic; 1.0 when both labelings agree on
  every pair (also for n <= 1).
  """
  a = np.asarray(labels_true).reshape(-1)
  b = np.asarray(labels_pred).reshape(-1)
  if a.shape != b.shape:
    raise MultiObjectError(f'adjusted_rand_index: labelings of {a.size} and {b.size} points.')
  n = a.size
  _, ai = np.unique(a, return_inverse=True)
  _, bi = np.unique(b, return_inverse=True)
  nb = int(bi.max()) + 1 if n else 1
  counts = np.bincount(ai.reshape(-1).astype(np.int64) * nb + bi.reshape(-1), minlength=0).astype(np.int64)
  sum_squares = int(np.sum(counts ** 2))
  rows = np.bincount(ai.reshape(-1)).astype(np.int64) if n else np.zeros(0, np.int64)
  cols = np.bincount(bi.reshape(-1)).astype(np.int64) if n else np.zeros(0, np.int64)
  # Ordered pairs (times two): same cluster in both, in prediction only, in ground truth only, in neither.
  tp = sum_squares - n
  fp = int(np.sum(cols ** 2)) - sum_squares
  fn = int(np.sum(rows ** 2)) - sum_squares
  tn = n * n - fp - fn - sum_squares
  if fn == 0 and fp == 0:
    return 1.0
  return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def _first_frame_objects(gt: np.ndarray) -> tuple[np.ndarray, list[int]]:
  """The released ground truth: ids present in frame 0 (ascending, first 19) → 1..K; the rest → 0."""
  first = np.unique(gt[0])
  kept = [int(i) for i in first if i > 0][:SOLV_MAX_OBJECTS]
  lut = np.zeros(int(gt.max()) + 1, np.int64)
  for new, old in enumerate(kept):
    lut[old] = new + 1
  return lut[gt], kept


def _pair_iou(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, pred_ids: np.ndarray, gt_ids: np.ndarray,
              mode: str) -> np.ndarray:
  """Video IoU [len(pred_ids), len(gt_ids)] of every (pred == a, gt == b) pair over the valid pixels."""
  t_len = pred.shape[0]
  inter = np.zeros((t_len, len(pred_ids), len(gt_ids)), np.int64)
  p_area = np.zeros((t_len, len(pred_ids)), np.int64)
  g_area = np.zeros((t_len, len(gt_ids)), np.int64)
  for t in range(t_len):
    p, g = pred[t][valid[t]], gt[t][valid[t]]
    pi = np.searchsorted(pred_ids, p)
    pi = np.where((pi < len(pred_ids)) & (pred_ids[np.minimum(pi, len(pred_ids) - 1)] == p), pi, len(pred_ids))
    gi = np.searchsorted(gt_ids, g)
    gi = np.where((gi < len(gt_ids)) & (gt_ids[np.minimum(gi, len(gt_ids) - 1)] == g), gi, len(gt_ids))
    table = np.bincount(pi * (len(gt_ids) + 1) + gi, minlength=(len(pred_ids) + 1) * (len(gt_ids) + 1))
    table = table.reshape(len(pred_ids) + 1, len(gt_ids) + 1)
    inter[t] = table[:-1, :-1]
    p_area[t] = table[:-1].sum(1)
    g_area[t] = table[:, :-1].sum(0)
  union = p_area[:, :, None] + g_area[:, None, :] - inter
  if mode == 'volume':
    total = union.sum(0)
    return np.where(total > 0, inter.sum(0) / np.maximum(total, 1), 0.0)
  present = union > 0
  per_frame = np.where(present, inter / np.maximum(union, 1), 0.0)
  frames = present.sum(0)
  return np.where(frames > 0, per_frame.sum(0) / np.maximum(frames, 1), 0.0)


def _description(switches: dict[str, Any]) -> dict[str, Any]:
  deviations = []
  if switches['relabel_by_row_index']:
    deviations.append('released bug: matched predictions relabelled by the row index of the IoU matrix, not by '
                      'the predicted id of that row')
  if switches['fg_ari_after_matching']:
    deviations.append('released behaviour: FG-ARI of the matched prediction (unmatched segments merged into 0)')
  if switches['first_frame_objects']:
    deviations.append('released behaviour: only objects present in the first frame are kept (at most 19)')
  if switches['fg_ari_average'] == 'videos' and switches['fg_ari_scope'] == 'frame':
    deviations.append('released behaviour: per-frame FG-ARI averaged per video, then over videos')
  scope = ('per frame over the pixels whose ground truth is an object' if switches['fg_ari_scope'] == 'frame' else
           'per video over all pixels (of all frames) whose ground truth is an object')
  iou = ('per-frame IoU averaged over the frames where either mask is present' if switches['iou'] == 'frames' else
         'IoU of the space-time volumes')
  return dict(
      name='fgari_miou',
      task='multi-object video segmentation, FG-ARI and mIoU (SOLV)',
      frames='every ground-truth frame',
      measures=(f'FG-ARI: adjusted Rand index {scope} (frames / videos without one skipped), of the '
                f'{"matched" if switches["fg_ari_after_matching"] else "raw"} predicted ids; mIoU: {iou}, for each '
                'ground-truth object and its predicted id from one Hungarian matching per video (unmatched: 0)'),
      aggregation=(f'FG-ARI: mean over {"all scored frames" if switches["fg_ari_average"] == "frames" else "videos"}'
                   '; mIoU: mean over all objects of all videos (mIoU_video_mean: over videos)'),
      void=('none' if switches['void_label'] is None else f'ground-truth label {switches["void_label"]} is left out '
            'of every count'),
      switches=dict(switches),
      deviations=deviations,
  )


def fgari_miou(predictions: Mapping[str, Mapping[str, np.ndarray]],
               ground_truth: Mapping[str, Mapping[str, np.ndarray]], *,
               preset: str | None = None, fg_ari_scope: str | None = None, fg_ari_average: str | None = None,
               fg_ari_after_matching: bool | None = None, relabel_by_row_index: bool | None = None,
               first_frame_objects: bool | None = None, iou: str | None = None,
               void_label: int | None | str = 'default') -> dict[str, Any]:
  """FG-ARI and mIoU (see the module docstring); returns the results dict.

  preset: None (the measures as defined) or 'solv_released'; any switch given explicitly overrides it.
  fg_ari_scope 'frame' | 'video'; fg_ari_average 'frames' | 'videos' ('videos' for scope 'video');
  iou 'frames' | 'volume'; void_label an id or None.
  """
  if preset is not None and preset not in PRESETS:
    raise MultiObjectError(f'Unknown preset {preset!r}; choose one of {", ".join(PRESETS)} (or None).')
  base = dict(fg_ari_scope='frame', fg_ari_average=None, fg_ari_after_matching=False, relabel_by_row_index=False,
              first_frame_objects=False, iou='frames', void_label=VOID_LABEL)
  base.update(PRESETS.get(preset, {}))
  given = dict(fg_ari_scope=fg_ari_scope, fg_ari_average=fg_ari_average, fg_ari_after_matching=fg_ari_after_matching,
               relabel_by_row_index=relabel_by_row_index, first_frame_objects=first_frame_objects, iou=iou)
  base.update({k: v for k, v in given.items() if v is not None})
  if void_label != 'default':
    base['void_label'] = void_label
  sw = base
  if sw['fg_ari_scope'] not in ('frame', 'video'):
    raise MultiObjectError(f"fg_ari_scope must be 'frame' or 'video'; got {sw['fg_ari_scope']!r}.")
  if sw['fg_ari_average'] is None:
    sw['fg_ari_average'] = 'frames' if sw['fg_ari_scope'] == 'frame' else 'videos'
  if sw['fg_ari_average'] not in ('frames', 'videos'):
    raise MultiObjectError(f"fg_ari_average must be 'frames' or 'videos'; got {sw['fg_ari_average']!r}.")
  if sw['fg_ari_scope'] == 'video' and sw['fg_ari_average'] == 'frames':
    raise MultiObjectError("fg_ari_scope='video' gives one FG-ARI per video: use fg_ari_average='videos'.")
  if sw['iou'] not in ('frames', 'volume'):
    raise MultiObjectError(f"iou must be 'frames' or 'volume'; got {sw['iou']!r}.")
  sw['preset'] = preset

  sequences: dict[str, dict[str, Any]] = {}
  skipped: dict[str, str] = {}
  object_ious: list[float] = []
  frame_aris: list[float] = []
  video_aris: list[float] = []
  num_frames = 0
  for seq in check_sequences(predictions, ground_truth):
    frames, pred, gt = read_sequence(seq, predictions[seq], ground_truth[seq])
    num_frames += len(frames)
    valid = np.ones(gt.shape, bool) if sw['void_label'] is None else gt != sw['void_label']
    gt = np.where(valid, gt, 0)
    kept = None
    if sw['first_frame_objects']:
      gt, kept = _first_frame_objects(gt)
    gt_ids = np.unique(gt[valid])
    gt_ids = gt_ids[gt_ids != 0]
    pred_ids = np.unique(pred[valid])
    rows = max(len(pred_ids), len(gt_ids))  # zero rows pad the matrix up to the number of objects
    matrix = np.zeros((rows, len(gt_ids)))
    if len(gt_ids):
      matrix[:len(pred_ids)] = _pair_iou(pred, gt, valid, pred_ids, gt_ids, sw['iou'])
    row, col = optimize.linear_sum_assignment(-matrix)
    matched = np.zeros_like(pred)
    objects: dict[str, dict[str, Any]] = {}
    for r, c in zip(row, col):
      if sw['relabel_by_row_index']:  # released: row index taken as the predicted id, column + 1 as the object id
        source, target = int(r), int(c) + 1
      else:
        source, target = (int(pred_ids[r]) if r < len(pred_ids) else None), int(gt_ids[c])
      if source is not None:
        matched[pred == source] = target
      objects[str(int(gt_ids[c]))] = {'matched_id': None if source is None else int(source)}
    if len(gt_ids):
      ious = _pair_iou(matched, gt, valid, gt_ids, gt_ids, sw['iou']).diagonal()
    else:
      ious = np.zeros(0)
    for g, value in zip(gt_ids, ious):
      objects[str(int(g))]['IoU'] = float(value)
    objects = {k: objects[k] for k in sorted(objects, key=int)}
    object_ious.extend(float(v) for v in ious)

    labels = matched if sw['fg_ari_after_matching'] else pred
    foreground = valid & (gt != 0)
    per_frame: list[float | None] = []
    if sw['fg_ari_scope'] == 'frame':
      for t in range(len(frames)):
        per_frame.append(adjusted_rand_index(gt[t][foreground[t]], labels[t][foreground[t]])
                         if foreground[t].any() else None)
      scored = [v for v in per_frame if v is not None]
      video_ari = float(np.mean(scored)) if scored else None
      frame_aris.extend(scored)
    else:
      video_ari = adjusted_rand_index(gt[foreground], labels[foreground]) if foreground.any() else None
    if video_ari is not None:
      video_aris.append(video_ari)
    entry: dict[str, Any] = {
        'FG-ARI': video_ari, 'mIoU': float(np.mean(ious)) if len(ious) else None, 'num_frames': len(frames),
        'num_objects': int(len(gt_ids)), 'num_predicted_ids': int(len(pred_ids)),
        'predicted_ids': [int(i) for i in pred_ids], 'frames': list(frames), 'objects': objects}
    if sw['fg_ari_scope'] == 'frame':
      entry['FG-ARI_per_frame'] = per_frame
    if kept is not None:
      entry['first_frame_objects'] = kept
    if not len(gt_ids):
      skipped[seq] = 'no ground-truth object' + (' in the first frame' if sw['first_frame_objects'] else '')
    sequences[seq] = entry

  if not object_ious:
    raise MultiObjectError('Nothing to score under fgari_miou: no sequence has a ground-truth object.')
  scored = frame_aris if sw['fg_ari_average'] == 'frames' else video_aris
  fg_ari = float(np.mean(scored)) if scored else None  # None: no frame with a ground-truth object
  video_means = [e['mIoU'] for e in sequences.values() if e['mIoU'] is not None]
  return {
      'protocol': _description(sw),
      'FG-ARI': fg_ari, 'mIoU': float(np.mean(object_ious)), 'mIoU_video_mean': float(np.mean(video_means)),
      'FG-ARI_frame_mean': float(np.mean(frame_aris)) if frame_aris else None,
      'FG-ARI_video_mean': float(np.mean(video_aris)) if video_aris else None,
      'stat_keys': ['FG-ARI', 'mIoU'],
      'num_sequences': len(sequences), 'num_objects': len(object_ious), 'num_frames': num_frames,
      'num_fg_ari_frames': len(frame_aris) if sw['fg_ari_scope'] == 'frame' else None,
      'sequences': sequences, 'skipped': skipped,
      'ignored_prediction_sequences': sorted(set(predictions) - set(ground_truth), key=natural_key),
  }
