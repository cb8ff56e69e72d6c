"""Multi-object video segmentation protocols on instance-id maps (numpy/scipy, host side).

Inputs, for every protocol: mappings sequence → frame name → id map [h, w] (any integer dtype, bool, or
[h, w, 1]; mappings that read PNGs lazily work, e.g. `input_pipeline.instances.InstanceMaskFolder`).
Ground truth: 0 is background, 255 void (DAVIS), other values are object ids. Predictions: each id is
one proposal / segment. Frames are taken from the ground truth and ordered naturally (2 before 10; the
same as the official tools' sort for DAVIS's zero-padded names); every ground-truth frame needs a
prediction of the same size.

  davis17(pred, gt)            DAVIS-2017 unsupervised, as davisvideochallenge/davis2017-evaluation.
  davis17_per_frame(pred, gt)  the variant shipped by the Betrayed-by-Attention repo (matching per frame).
  fgari_miou(pred, gt)         FG-ARI and video mIoU (SOLV's measures), in gsa_jax/multi_object_fgari.py.
  score(protocol, pred, gt)    any of the three by name.

davis17, what the official tool computes (and so this function, to 1e-12 on the official tool's own
outputs, see tests/data/davis17_official.json):
  * ground-truth objects are ids 1..K with K the largest id of the FIRST frame (void removed). Ids that
    only appear later are not scored (listed under `ignored_gt_objects`; `gt_objects='all_frames'`
    takes K over all frames instead). An id in 1..K that never occurs is an object with an empty mask.
  * proposals are ids 1..P with P the largest id of the prediction over the whole sequence; P > 20 is an
    error (the official tool prints a message and exits). P < K: empty proposals are added up to K.
  * for every (proposal, object) pair, J and F on every frame (void pixels leave both masks; J of an
    empty union is 1; F as `gsa_jax.metrics`, tolerance ceil(0.008 · diagonal)); the pair's score is
    (mean_t J + mean_t F) / 2; one `scipy.optimize.linear_sum_assignment` per sequence maximises it.
  * per object: J and F mean, recall (> 0.5) and decay of the matched pair's per-frame curves; the data
    set figures are means over all objects of all sequences; G (the official 'J&F-Mean') =
    (J_mean + F_mean) / 2.
  Deliberate deviations, both off the global figures: decay bin edges are int64 (the official uint8
  wraps above 256 frames, as `gsa_jax.metrics`), and per-object entries are named after the object
  they score. The official tool lists the matched pairs in proposal order and names the i-th one
  `<seq>_<i>`, so its per-object table mislabels objects whenever the matching is not monotonic;
  `object_names='official'` reproduces that table.

davis17_per_frame: the same J and F, but `linear_sum_assignment` on J + F separately for every frame
(a proposal may cover different objects in different frames) and at most 300 proposals. On an identity
swap halfway through a video (proposals exchange objects) it gives J = F = 1 where davis17 gives 0.5.
Betrayed-by-Attention's DAVIS-17 numbers were computed this way; they are not comparable with davis17.

Results dicts are shaped like `gsa_jax.evaluation.score_sequences`'s: the data set figures at the top
level (J_mean, J_recall, J_decay, F_mean, F_recall, F_decay, G), one entry per object `<seq>_<id>` under
`sequences` (the same keys, plus per-frame curves and the matched proposal), one per sequence under
`videos`, and `protocol`, a description of what was computed, including the switches used. So
`gsa_jax.evaluation.write_results` writes results.json, results.csv and the per-object chart as it is.
"""

import math
from collections.abc import Mapping
from typing import Any

from absl import logging
import cv2
import numpy as np
from scipy import optimize

from gsa_jax import errors
from gsa_jax import metrics
from input_pipeline import images as image_io

PROTOCOLS = ('davis17', 'davis17_per_frame', 'fgari_miou')
STAT_KEYS = ('J_mean', 'J_recall', 'J_decay', 'F_mean', 'F_recall', 'F_decay', 'G')
VOID_LABEL = 255
DAVIS17_MAX_PROPOSALS = 20
PER_FRAME_MAX_PROPOSALS = 300

DECAY_DEVIATION = (
    'decay bin edges are int64; the official db_statistics casts them to uint8, which wraps for sequences '
    'longer than 256 frames (wrong or NaN decay there). Identical numbers for <= 256 frames.')
NAMES_DEVIATION = (
    'per-object entries are named <sequence>_<object id> after the ground-truth object they score; the '
    'official tool names the i-th matched pair in proposal order <sequence>_<i>, which mislabels objects '
    'when the matching is not monotonic (global figures are the same either way; object_names="official" '
    'reproduces its table).')


class MultiObjectError(errors.EvaluationError):
  """Bad multi-object evaluation input; the message names the sequence / frame and the fix."""


# ------------------------------------------------------------------------------------------------
# Shared input handling.


natural_key = image_io.natural_key  # the sort order of every sequence and frame listing


def _describe(masks: Mapping, seq: str, frame: str) -> str:
  describe = getattr(masks, 'describe', None)
  return describe(frame) if describe else f'{seq}/{frame}'


def as_id_map(mask: Any, what: str) -> np.ndarray:
  """An id map [h, w] int64 from [h, w] / [h, w, 1] integers, bools or integer-valued floats."""
  array = np.asarray(mask)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 2:
    raise MultiObjectError(
        f'{what}: an id map must be [h, w] (one id per pixel); got shape {array.shape}. A colour image is not '
        'an id map: write ids as a palette or grey PNG (input_pipeline.instances.write_instance_mask).')
  if array.dtype == bool:
    return array.astype(np.int64)
  if np.issubdtype(array.dtype, np.floating):
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
      raise MultiObjectError(f'{what}: an id map holds non-integer values (soft masks?); write integer ids.')
  elif not np.issubdtype(array.dtype, np.integer):
    raise MultiObjectError(f'{what}: an id map must hold integers; got dtype {array.dtype}.')
  array = array.astype(np.int64)
  if array.size and array.min() < 0:
    raise MultiObjectError(f'{what}: negative id {int(array.min())}; ids are >= 0 (0 = background).')
  return array


check_sequences = metrics.scored_sequences  # shared with the single-object evaluator


def read_sequence(seq: str, pred_seq: Mapping, gt_seq: Mapping) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(frames, predicted ids [t, h, w], ground-truth ids [t, h, w]) of one sequence, all GT frames."""
  frames = sorted(gt_seq, key=natural_key)
  if not frames:
    raise MultiObjectError(f'Sequence {seq} has no ground-truth frames.')
  preds, gts = [], []
  for frame in frames:
    gt = as_id_map(gt_seq[frame], f'ground truth {_describe(gt_seq, seq, frame)}')
    if frame not in pred_seq:
      raise MultiObjectError(
          f'No prediction for ground-truth frame {seq}/{frame} (expected {_describe(pred_seq, seq, frame)}). '
          'Every annotated frame is scored: write an id map for it (frame names must match the ground truth).')
    pred = as_id_map(pred_seq[frame], f'prediction {_describe(pred_seq, seq, frame)}')
    if pred.shape != gt.shape:
      raise MultiObjectError(
          f'Prediction {_describe(pred_seq, seq, frame)} is {pred.shape[0]}x{pred.shape[1]} (HxW) but its ground '
          f'truth {_describe(gt_seq, seq, frame)} is {gt.shape[0]}x{gt.shape[1]}. Write predictions at the '
          'original frame size (resize id maps with nearest neighbour).')
    if gts and gt.shape != gts[0].shape:
      raise MultiObjectError(f'Ground truth {_describe(gt_seq, seq, frame)} is {gt.shape} but frame {frames[0]} of '
                             f'{seq} is {gts[0].shape}: the frames of a sequence must share one size.')
    preds.append(pred)
    gts.append(gt)
  return frames, np.stack(preds), np.stack(gts)


# ------------------------------------------------------------------------------------------------
# Pairwise J and F of every (proposal, object) pair.


def _boundary_and_dilation(mask: np.ndarray,
                           kernel: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray]:
  """Flat indices of the boundary pixels of a binary mask [h, w], and its disk dilation as (window, values).

  Works on the mask's bounding box grown by one pixel (and by the disk radius for the dilation), which
  gives exactly `metrics.seg2bmap` and a full-size dilation, at a fraction of the cost for small objects.
  """
  h, w = mask.shape
  rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
  y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, h)
  x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, w)
  # Beyond the grown box the mask is empty, so each side is either a zero row / column or the image edge,
  # and seg2bmap's last-row / last-column rules give the same boundary inside the box as on the full mask.
  boundary = metrics.seg2bmap(mask[y0:y1, x0:x1])
  by, bx = np.nonzero(boundary)
  flat = (by + y0) * w + (bx + x0)
  if not flat.size:
    return flat, (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
  r = kernel.shape[0] // 2
  wy0, wy1 = max(by.min() + y0 - r, 0), min(by.max() + y0 + r + 1, h)
  wx0, wx1 = max(bx.min() + x0 - r, 0), min(bx.max() + x0 + r + 1, w)
  canvas = np.zeros((wy1 - wy0, wx1 - wx0), np.uint8)
  canvas[by + y0 - wy0, bx + x0 - wx0] = 1
  return flat, (slice(wy0, wy1), slice(wx0, wx1)), cv2.dilate(canvas, kernel).astype(bool)


def pairwise_j_f(pred: np.ndarray, gt: np.ndarray, void: np.ndarray, num_proposals: int, num_objects: int, *,
                 bound_th: float = metrics.DEFAULT_BOUND_TH) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame J and F [p, k, t] float64 of proposals 1..p (pred == i) against objects 1..k (gt == j).

  pred, gt [t, h, w] int ids (ground-truth ids above k count as background), void [t, h, w] bool.
  Void pixels are removed from both masks. Gives exactly `metrics.jaccard` and `metrics.boundary_f` of
  every pair, but computes each mask's boundary and dilation once per frame instead of once per pair.
  """
  t_len, h, w = pred.shape
  j = np.zeros((num_proposals, num_objects, t_len))
  f = np.zeros((num_proposals, num_objects, t_len))
  kernel = metrics.disk(metrics.boundary_tolerance((h, w), bound_th))
  for t in range(t_len):
    valid = ~void[t]
    p_ids = np.where(pred[t] <= num_proposals, pred[t], 0)
    k_ids = np.where(gt[t] <= num_objects, gt[t], 0)
    table = np.bincount(p_ids[valid] * (num_objects + 1) + k_ids[valid], minlength=(num_proposals + 1) *
                        (num_objects + 1)).reshape(num_proposals + 1, num_objects + 1)
    inter = table[1:, 1:]
    union = table[1:].sum(1)[:, None] + table[:, 1:].sum(0)[None, :] - inter
    j[:, :, t] = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    p_bound = [_boundary_and_dilation((p_ids == i) & valid, kernel) if table[i].any() else None
               for i in range(1, num_proposals + 1)]
    k_bound = [_boundary_and_dilation((k_ids == i) & valid, kernel) if table[:, i].any() else None
               for i in range(1, num_objects + 1)]
    for a, pb in enumerate(p_bound):
      for b, kb in enumerate(k_bound):
        n_fg = 0 if pb is None else pb[0].size
        n_gt = 0 if kb is None else kb[0].size
        fg_match = _count_near(pb[0], kb, w) if n_fg and n_gt else 0  # predicted boundary near the GT one
        gt_match = _count_near(kb[0], pb, w) if n_fg and n_gt else 0  # GT boundary near the predicted one
        f[a, b, t] = _f_measure(n_fg, n_gt, fg_match, gt_match)
  return j, f


def _count_near(flat: np.ndarray, other: tuple, width: int) -> int:
  """How many of the pixels `flat` (flat indices) lie in the dilated boundary `other` = (_, window, values)."""
  _, (ys, xs), dilated = other
  y, x = flat // width - ys.start, flat % width - xs.start
  inside = (y >= 0) & (y < dilated.shape[0]) & (x >= 0) & (x < dilated.shape[1])
  return int(np.count_nonzero(dilated[y[inside], x[inside]]))


def _f_measure(n_fg: float, n_gt: float, fg_match: float, gt_match: float) -> float:
  """F from boundary counts, with the degenerate cases of `metrics.boundary_precision_recall`."""
  if n_fg == 0 and n_gt > 0:
    precision, recall = 1.0, 0.0
  elif n_fg > 0 and n_gt == 0:
    precision, recall = 0.0, 1.0
  elif n_fg == 0 and n_gt == 0:
    precision, recall = 1.0, 1.0
  else:
    precision = fg_match / float(n_fg)
    recall = gt_match / float(n_gt)
  if precision + recall == 0:
    return 0.0
  return 2.0 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------------------
# DAVIS-2017 unsupervised.


def _object_entry(seq: str, object_id: int, frames: list[str], j: np.ndarray, f: np.ndarray) -> dict[str, Any]:
  entry: dict[str, Any] = dict.fromkeys(STAT_KEYS)
  entry['J_mean'], entry['J_recall'], entry['J_decay'] = metrics.sequence_statistics(j)
  entry['F_mean'], entry['F_recall'], entry['F_decay'] = metrics.sequence_statistics(f)
  entry['G'] = (entry['J_mean'] + entry['F_mean']) / 2
  entry.update(sequence=seq, object_id=int(object_id), num_frames=len(frames), frames=list(frames),
               J_per_frame=[float(v) for v in j], F_per_frame=[float(v) for v in f])
  return entry


def _davis_description(name: str, switches: dict[str, Any]) -> dict[str, Any]:
  per_frame = name == 'davis17_per_frame'
  matching = ('linear_sum_assignment on J + F separately for every frame (a proposal may follow different '
              'objects in different frames), as the Betrayed-by-Attention repo' if per_frame else
              'one linear_sum_assignment per sequence on (mean_t J + mean_t F) / 2 of every (proposal, object) '
              'pair')
  gt_objects = ('ids 1..K, K = the largest id of the first frame (void removed), as the official tool'
                if switches['gt_objects'] == 'first_frame' else 'ids 1..K, K = the largest id over all frames')
  deviations = [DECAY_DEVIATION]
  if switches['object_names'] == 'object':
    deviations.append(NAMES_DEVIATION)
  return dict(
      name=name,
      task=('DAVIS-2017 unsupervised multi-object video segmentation' +
            (', per-frame matching variant (Betrayed-by-Attention repo)' if per_frame else
             ' (davisvideochallenge/davis2017-evaluation)')),
      frames='every ground-truth frame (first and last included)',
      objects=f'ground-truth {gt_objects}; label {VOID_LABEL} is void (removed from intersections and unions)',
      proposals=(f'prediction ids 1..P, P = the largest id of the sequence, at most {switches["max_proposals"]}; '
                 'empty proposals pad P up to the number of objects'),
      matching=matching,
      measures=('J (region IoU, empty union = 1) and F (boundary F-measure, seg2bmap boundaries, tolerance '
                'ceil(0.008 * image diagonal) px, Euclidean disk) per frame of each matched pair; per object: '
                'mean, recall (fraction of frames > 0.5), decay (first minus last of 4 overlapping bins)'),
      aggregation='unweighted means over all objects of all sequences; G = J&F-Mean = (J_mean + F_mean) / 2',
      switches=dict(switches),
      deviations=deviations,
  )


def _score_davis(predictions: Mapping, ground_truth: Mapping, *, per_frame: bool, max_proposals: int,
                 gt_objects: str, object_names: str, bound_th: float) -> dict[str, Any]:
  if gt_objects not in ('first_frame', 'all_frames'):
    raise MultiObjectError(f"gt_objects must be 'first_frame' (official) or 'all_frames'; got {gt_objects!r}.")
  if object_names not in ('object', 'official'):
    raise MultiObjectError(f"object_names must be 'object' or 'official'; got {object_names!r}.")
  name = 'davis17_per_frame' if per_frame else 'davis17'
  switches = dict(max_proposals=int(max_proposals), gt_objects=gt_objects, object_names=object_names,
                  bound_th=float(bound_th))
  objects: dict[str, dict[str, Any]] = {}
  videos: dict[str, dict[str, Any]] = {}
  skipped: dict[str, str] = {}
  ignored: dict[str, list[int]] = {}
  num_frames = 0
  for seq in check_sequences(predictions, ground_truth):
    pred_seq, gt_seq = predictions[seq], ground_truth[seq]
    frames, pred, gt = read_sequence(seq, pred_seq, gt_seq)
    void = gt == VOID_LABEL
    gt = np.where(void, 0, gt)
    num_objects = int(gt[0].max() if gt_objects == 'first_frame' else gt.max())
    later = sorted(int(i) for i in np.unique(gt) if i > num_objects)
    if later:
      ignored[seq] = later
      logging.warning('%s: ground-truth ids %s do not occur in the first frame and are not scored (as the official '
                      'tool; gt_objects="all_frames" scores them).', seq, later)
    num_proposals = int(pred.max())
    if num_proposals > max_proposals:
      t_max = int(np.argmax(pred.reshape(len(frames), -1).max(1)))
      raise MultiObjectError(
          f'{name}: prediction {_describe(pred_seq, seq, frames[t_max])} holds id {num_proposals}, above the '
          f'{max_proposals} proposals this protocol allows (ids 1..{max_proposals}, 0 = none). Relabel the proposals '
          f'of {seq} to at most {max_proposals} ids (e.g. keep the {max_proposals} largest and set the rest to 0)' +
          ('.' if per_frame else ', or score with davis17_per_frame (up to 300).'))
    if num_objects == 0:
      skipped[seq] = 'no ground-truth object (the first frame holds none)' if gt_objects == 'first_frame' else \
          'no ground-truth object'
      continue
    rows = max(num_proposals, num_objects)  # Empty proposals pad up to the number of objects.
    j, f = pairwise_j_f(pred, gt, void, rows, num_objects, bound_th=bound_th)
    if per_frame:
      matched = np.zeros((num_objects, len(frames)), np.int64)  # proposal index per object and frame
      order = np.zeros((num_objects, len(frames)), np.int64)  # object of the i-th pair in proposal order
      for t in range(len(frames)):
        row, col = optimize.linear_sum_assignment(-(j[:, :, t] + f[:, :, t]))
        matched[col, t] = row
        order[:, t] = col
      pair_j = j[matched, np.arange(num_objects)[:, None], np.arange(len(frames))[None]]
      pair_f = f[matched, np.arange(num_objects)[:, None], np.arange(len(frames))[None]]
      if object_names == 'official':
        pair_j = j[matched[order, np.arange(len(frames))], order, np.arange(len(frames))]
        pair_f = f[matched[order, np.arange(len(frames))], order, np.arange(len(frames))]
    else:
      score = (np.mean(j, axis=2) + np.mean(f, axis=2)) / 2
      row, col = optimize.linear_sum_assignment(-score)
      proposal_of = np.zeros(num_objects, np.int64)
      proposal_of[col] = row
      pair_j, pair_f = j[proposal_of, np.arange(num_objects)], f[proposal_of, np.arange(num_objects)]
      if object_names == 'official':
        pair_j, pair_f = j[row, col], f[row, col]
    names = []
    for i in range(num_objects):
      entry = _object_entry(seq, i + 1, frames, pair_j[i], pair_f[i])
      if per_frame:
        rows_i = matched[i] if object_names == 'object' else matched[order[i], np.arange(len(frames))]
        entry['object_id'] = int(i + 1) if object_names == 'object' else None
        entry['matched_proposal_per_frame'] = [int(r + 1) if r < num_proposals else None for r in rows_i]
        if object_names == 'official':
          entry['scored_object_per_frame'] = [int(o + 1) for o in order[i]]
      else:
        k = i if object_names == 'object' else int(col[i])
        p = int(proposal_of[k])
        entry['object_id'] = k + 1
        entry['matched_proposal'] = p + 1 if p < num_proposals else None  # None: an added empty proposal
      objects[f'{seq}_{i + 1}'] = entry
      names.append(f'{seq}_{i + 1}')
    video: dict[str, Any] = dict(num_frames=len(frames), num_objects=num_objects, num_proposals=num_proposals,
                                 objects=names)
    for key in ('J_mean', 'F_mean', 'G'):
      video[key] = float(np.mean([objects[n][key] for n in names]))
    if not per_frame:
      video['pair_scores'] = score.tolist()  # [proposal, object], (mean J + mean F) / 2
      video['matching'] = {int(c + 1): (int(r + 1) if r < num_proposals else None) for r, c in zip(row, col)}
    videos[seq] = video
    num_frames += len(frames)
  if not objects:
    raise MultiObjectError(f'Nothing to score under {name}: no sequence has a ground-truth object '
                           f'({", ".join(list(skipped)[:5])} ...).')
  results: dict[str, Any] = {'protocol': _davis_description(name, switches)}
  for key in STAT_KEYS[:-1]:
    results[key] = float(np.mean([o[key] for o in objects.values()]))
  results['G'] = (results['J_mean'] + results['F_mean']) / 2
  results.update(num_sequences=len(videos), num_objects=len(objects), num_frames=num_frames, sequences=objects,
                 videos=videos, skipped=skipped, ignored_gt_objects=ignored,
                 ignored_prediction_sequences=sorted(set(predictions) - set(ground_truth), key=natural_key))
  return results


def davis17(predictions: Mapping[str, Mapping[str, np.ndarray]],
            ground_truth: Mapping[str, Mapping[str, np.ndarray]], *,
            max_proposals: int = DAVIS17_MAX_PROPOSALS, gt_objects: str = 'first_frame',
            object_names: str = 'object', bound_th: float = metrics.DEFAULT_BOUND_TH) -> dict[str, Any]:
  """DAVIS-2017 unsupervised protocol (see the module docstring); returns the results dict.

  predictions / ground_truth: sequence → frame → id map [h, w]. gt_objects: 'first_frame' (official: K =
  the largest id of the first frame) or 'all_frames'. object_names: 'object' (entry `<seq>_<k>` scores
  object k) or 'official' (the official table: the i-th matched pair in proposal order).
  """
  return _score_davis(predictions, ground_truth, per_frame=False, max_proposals=max_proposals,
                      gt_objects=gt_objects, object_names=object_names, bound_th=bound_th)


def davis17_per_frame(predictions: Mapping[str, Mapping[str, np.ndarray]],
                      ground_truth: Mapping[str, Mapping[str, np.ndarray]], *,
                      max_proposals: int = PER_FRAME_MAX_PROPOSALS, gt_objects: str = 'first_frame',
                      object_names: str = 'object', bound_th: float = metrics.DEFAULT_BOUND_TH) -> dict[str, Any]:
  """The Betrayed-by-Attention repo's variant of `davis17`: matching on J + F per frame, <= 300 proposals.

  Not the official protocol: it rewards over-segmentation and forgives identity switches. With
  object_names='object' each entry follows one ground-truth object; 'official' reproduces the repo's
  table, whose i-th row takes the i-th matched pair of every frame in proposal order.
  """
  return _score_davis(predictions, ground_truth, per_frame=True, max_proposals=max_proposals,
                      gt_objects=gt_objects, object_names=object_names, bound_th=bound_th)


def score(protocol: str, predictions: Mapping, ground_truth: Mapping, **switches) -> dict[str, Any]:
  """Runs `protocol` ('davis17' | 'davis17_per_frame' | 'fgari_miou') with its keyword switches."""
  if protocol == 'davis17':
    return davis17(predictions, ground_truth, **switches)
  if protocol == 'davis17_per_frame':
    return davis17_per_frame(predictions, ground_truth, **switches)
  if protocol == 'fgari_miou':
    from gsa_jax import multi_object_fgari  # pylint: disable=g-import-not-at-top
    return multi_object_fgari.fgari_miou(predictions, ground_truth, **switches)
  raise MultiObjectError(f'Unknown multi-object protocol {protocol!r}; choose one of {", ".join(PROTOCOLS)}.')


def format_summary(results: dict[str, Any]) -> str:
  """One line with the data set figures, for the console."""
  name = results.get('protocol', {}).get('name', '?')
  keys = [k for k in ('G', 'J_mean', 'J_recall', 'J_decay', 'F_mean', 'F_recall', 'F_decay', 'FG-ARI', 'mIoU')
          if isinstance(results.get(k), float) and math.isfinite(results[k])]
  figures = ', '.join(f'{"J&F" if k == "G" else k} {results[k]:.4f}' for k in keys)
  counts = f'{results.get("num_sequences")} sequences, {results.get("num_objects")} objects'
  return f'[{name}] {counts}: {figures}'


def official_tables(results: dict[str, Any]) -> tuple[dict[str, float], list[tuple[str, float, float]]]:
  """The official tool's two tables from a davis17 / davis17_per_frame results dict.

  Returns (global row {'J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay'},
  per-object rows [(name, J-Mean, F-Mean)]), as global_results-<set>.csv and per-sequence_results-<set>.csv.
  """
  row = {'J&F-Mean': results['G'], 'J-Mean': results['J_mean'], 'J-Recall': results['J_recall'],
         'J-Decay': results['J_decay'], 'F-Mean': results['F_mean'], 'F-Recall': results['F_recall'],
         'F-Decay': results['F_decay']}
  per_object = [(n, e['J_mean'], e['F_mean']) for n, e in results['sequences'].items()]
  return row, per_object
