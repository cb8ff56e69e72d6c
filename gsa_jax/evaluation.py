"""Scores binary masks with the unsupervised-VOS protocols, from folders or from arrays in memory.

  python main.py --mode=evaluate --predictions=DIR --ground_truth=DIR --protocol=davis16 --output=DIR

Folder layouts (each of the two folders is detected on its own):
  DAVIS  `<dir>/<sequence>/<frame>.png`. Any depth works: the sequence is the folder path relative to
         `<dir>` ('aeroplane/0001' for `<dir>/aeroplane/0001/00012.png`).
  flat   `<dir>/<sequence>_<frame>.png`, split on the LAST '_' ('dance-twirl_00012.png' → 'dance-twirl',
         '00012').
Only `.png` files count. Frames are matched by name (file stem) and ordered naturally (2 before 10).

Masks:
  ground truth  any non-zero label (in any colour channel) is foreground: the single-object reading of
                DAVIS-16, and the merged foreground of multi-object FBMS/YouTube-Objects masks.
  predictions   masks whose values are {0,1} or {0,255} (or bool) are foreground where > 0. Anything else
                is a soft map: it is thresholded at half its range (>= 0.5 for floats in [0,1], >= 128 for
                8-bit, >= 32768 for 16-bit) and reported in the output (`binarisation.soft_frames`), with a
                warning. Write hard 0/255 masks to avoid the question.

Protocols:
  davis16  DAVIS-2016 unsupervised, single object: the first and the last ground-truth frame of every
           sequence are dropped; J and F per frame; per sequence mean, recall (> 0.5) and decay; dataset
           figures = unweighted mean over sequences (not over frames); G = (J_mean + F_mean) / 2. Frames
           with no prediction are an error, except the dropped first and last ones.
  fbms     FBMS-59: J only, on the annotated frames (frames with a ground-truth mask) whose ground truth is
           not empty; mean per sequence, then the unweighted mean over sequences.
  ytobj    YouTube-Objects: J only, frames as fbms. Per sequence mean; per class the mean over its
           sequences; J_mean = mean over classes (what papers' tables list), with the mean over sequences
           also given (J_mean_over_sequences). See `ytobj_class` for the class of a sequence.
  Under fbms/ytobj a sequence with no non-empty annotated frame is left out (listed in `skipped`).

Instance-id protocols (for models with output_kind 'instances'; gsa_jax.multi_object): davis17 (DAVIS-2017
unsupervised, up to 20 proposals per sequence), davis17_per_frame (matching per frame, as the
Betrayed-by-Attention repo) and fgari_miou (FG-ARI and video mIoU). Their folders hold id maps (palette or
grey PNGs, 0 background; input_pipeline.instances.InstanceMaskFolder) in the DAVIS layout.

Outputs (written atomically: a temporary file, then os.replace): `results.json`, `results.csv` and
`results_per_sequence.png`. The JSON holds the dataset figures at the top level (J_mean, J_recall,
J_decay, F_mean, F_recall, F_decay, G; null where the protocol does not define one), the per-sequence
figures under `sequences`, and `protocol`, a description of what was computed.
"""

import csv
import io
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import numpy as np
from PIL import Image

from gsa_jax import errors
from gsa_jax import files
from gsa_jax import metrics
from input_pipeline import images as image_io

PROTOCOLS = ('davis16', 'fbms', 'ytobj')
INSTANCE_PROTOCOLS = ('davis17', 'davis17_per_frame', 'fgari_miou')  # gsa_jax.multi_object.PROTOCOLS
STAT_KEYS = ('J_mean', 'J_recall', 'J_decay', 'F_mean', 'F_recall', 'F_decay', 'G')
RESULTS_JSON = 'results.json'
RESULTS_CSV = 'results.csv'
RESULTS_PLOT = 'results_per_sequence.png'

BINARISATION_RULE = (
    'predictions with values in {0,1} or {0,255} (or bool) are foreground where > 0; any other (soft) map '
    'is thresholded at half its range: >= 0.5 for floats in [0,1], >= 128 for 8-bit, >= 32768 for 16-bit '
    '(listed under binarisation.soft_frames). Ground truth: any non-zero label is foreground.')

DECAY_DEVIATION = (
    'decay bin edges are int64; the official db_statistics casts them to uint8, which wraps for sequences '
    'longer than 256 frames (wrong or NaN decay there). Identical numbers for <= 256 frames.')

_PROTOCOL_INFO = {
    'davis16': dict(
        name='davis16',
        task='DAVIS-2016 unsupervised video object segmentation, single object',
        frames='every ground-truth frame except the first and the last of each sequence',
        measures=('J (region IoU; empty union = 1) and F (boundary F-measure, seg2bmap boundaries, '
                  'tolerance ceil(0.008 * image diagonal) px with a Euclidean disk); per sequence: '
                  'mean (nanmean), recall (fraction of frames > 0.5), decay (mean of the first minus the '
                  'last of 4 overlapping bins, MATLAB rounding)'),
        aggregation=('per-sequence statistics, then the unweighted mean over sequences (not over frames); '
                     'G = (J_mean + F_mean) / 2'),
        deviations=[DECAY_DEVIATION],
    ),
    'fbms': dict(
        name='fbms',
        task='FBMS-59 unsupervised video object segmentation (multi-object GT merged into one foreground)',
        frames='annotated frames (a ground-truth mask exists) whose ground truth is not empty',
        measures='J only (region IoU); F, recall, decay and G are not part of this protocol (null)',
        aggregation='mean J per sequence, then the unweighted mean over sequences',
        deviations=[],
    ),
    'ytobj': dict(
        name='ytobj',
        task='YouTube-Objects unsupervised video object segmentation',
        frames='annotated frames (a ground-truth mask exists) whose ground truth is not empty',
        measures='J only (region IoU); F, recall, decay and G are not part of this protocol (null)',
        aggregation=('mean J per sequence; per class the mean over its sequences; J_mean = mean over '
                     'classes (as papers tabulate), J_mean_over_sequences = mean over sequences. Class = '
                     'the first folder of a nested sequence path, otherwise the sequence-name prefix '
                     'before the first digit, "-" or "_"'),
        deviations=[],
    ),
}


def check_eval_config(e: Any, output_kind: str = 'binary') -> list[str]:
  """Problems of the eval section for a model giving `output_kind` masks; [] when valid."""
  problems = []

  def need(ok: bool, message: str) -> None:
    if not ok:
      problems.append(message)

  from gsa_jax import multi_object  # pylint: disable=g-import-not-at-top
  protocols = PROTOCOLS if output_kind == 'binary' else multi_object.PROTOCOLS
  need(e.protocol in protocols, f'eval.protocol={e.protocol!r}; valid for {output_kind} masks: {protocols}')
  need(e.batch_size > 0, f'eval.batch_size={e.batch_size}; must be > 0')
  need(0.0 < e.threshold < 1.0, f'eval.threshold={e.threshold}; must be in (0, 1)')
  need(len(e.tta_scales) > 0 and all(s > 0 for s in e.tta_scales),
       f'eval.tta_scales={tuple(e.tta_scales)}; give at least one scale, every scale > 0')
  need(e.max_videos == -1 or e.max_videos > 0, f'eval.max_videos={e.max_videos}; use -1 (all) or > 0')
  need(e.num_overlays >= 0, f'eval.num_overlays={e.num_overlays}; must be >= 0')
  return problems


EvaluationError = errors.EvaluationError


# ------------------------------------------------------------------------------------------------
# Masks.


def binarize_prediction(mask: np.ndarray) -> tuple[np.ndarray, bool]:
  """Returns (foreground [h, w] bool, whether the mask was soft). See the module docstring for the rule."""
  mask = _to_2d(np.asarray(mask))
  if mask.dtype == bool:
    return mask, False
  is_01 = bool(np.all((mask == 0) | (mask == 1)))
  if is_01 or bool(np.all((mask == 0) | (mask == 255))):
    return mask > 0, False
  top = float(np.max(mask))
  if np.issubdtype(mask.dtype, np.floating) and top <= 1.0:
    threshold = 0.5
  elif top <= 255:
    threshold = 128
  else:
    threshold = 32768
  return mask >= threshold, True


def binarize_ground_truth(mask: np.ndarray) -> np.ndarray:
  """Foreground [h, w] bool: any non-zero label."""
  return _to_2d(np.asarray(mask)) != 0


def _to_2d(mask: np.ndarray) -> np.ndarray:
  """[h, w] from [h, w], [h, w, 1] or an image with colour (+ alpha) channels (max over colours)."""
  if mask.ndim == 3:
    if mask.shape[-1] in (2, 4):  # grey/colour + alpha: the alpha channel is not the mask.
      mask = mask[..., :-1]
    mask = mask.max(axis=-1) if mask.shape[-1] > 1 else mask[..., 0]
  if mask.ndim != 2:
    raise EvaluationError(f'A mask must be [h, w] (or an image [h, w, c]); got shape {mask.shape}.')
  return mask


def read_png(path: str) -> np.ndarray:
  """The stored values of a PNG mask (palette PNGs give their indices), [h, w] or [h, w, c]."""
  try:
    with Image.open(path) as image:
      image.load()
      return np.array(image)
  except (OSError, ValueError, SyntaxError) as e:
    raise EvaluationError(f'Cannot read mask {path}: {e}. Replace it with a valid PNG.') from e


_natural_key = image_io.natural_key


class _SequenceFiles(Mapping):
  """frame name → mask array, read from disk on access."""

  def __init__(self, paths: dict[str, str], expected: Callable[[str], str]):
    self._paths = paths
    self._expected = expected

  def __getitem__(self, frame: str) -> np.ndarray:
    return read_png(self._paths[frame])

  def __contains__(self, frame: object) -> bool:
    return frame in self._paths

  def __iter__(self):
    return iter(self._paths)

  def __len__(self) -> int:
    return len(self._paths)

  def describe(self, frame: str) -> str:
    return self._paths.get(frame) or self._expected(frame)


class MaskFolder(Mapping):
  """sequence name → (frame name → mask array) over a folder of PNG masks (DAVIS or flat layout)."""

  def __init__(self, root: str, *, role: str = 'masks'):
    self.root = root
    self.role = role
    if not os.path.isdir(root):
      raise EvaluationError(f'The {role} folder {root} does not exist.')
    top_pngs, nested = [], {}
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames.sort()
      pngs = sorted(f for f in filenames if f.lower().endswith('.png'))
      if not pngs:
        continue
      rel = os.path.relpath(dirpath, root)
      if rel == '.':
        top_pngs = pngs
      else:
        nested[rel.replace(os.sep, '/')] = {os.path.splitext(f)[0]: os.path.join(dirpath, f) for f in pngs}
    if not top_pngs and not nested:
      raise EvaluationError(
          f'The {role} folder {root} holds no .png masks. Expected <dir>/<sequence>/<frame>.png '
          '(DAVIS layout) or <dir>/<sequence>_<frame>.png (flat layout).')
    if top_pngs and nested:
      raise EvaluationError(
          f'The {role} folder {root} mixes layouts: .png files at the top ({top_pngs[0]}, ...) and in '
          f'sub-folders ({next(iter(nested))}/...). Keep one layout.')
    if nested:
      self.layout = 'davis'
      self._sequences = nested
    else:
      self.layout = 'flat'
      self._sequences = {}
      for f in top_pngs:
        stem = os.path.splitext(f)[0]
        if '_' not in stem:
          raise EvaluationError(
              f'{os.path.join(root, f)}: a flat-layout mask must be named <sequence>_<frame>.png.')
        seq, frame = stem.rsplit('_', 1)
        self._sequences.setdefault(seq, {})[frame] = os.path.join(root, f)

  def expected_path(self, seq: str, frame: str) -> str:
    if self.layout == 'flat':
      return os.path.join(self.root, f'{seq}_{frame}.png')
    return os.path.join(self.root, *seq.split('/'), f'{frame}.png')

  def __getitem__(self, seq: str) -> _SequenceFiles:
    return _SequenceFiles(self._sequences[seq], lambda frame: self.expected_path(seq, frame))

  def __contains__(self, seq: object) -> bool:
    return seq in self._sequences

  def __iter__(self):
    return iter(self._sequences)

  def __len__(self) -> int:
    return len(self._sequences)


def ytobj_class(sequence: str) -> str:
  """Class of a YouTube-Objects sequence: the first folder of a nested name ('car/0003' → 'car'),
  otherwise the name's prefix before the first digit, '-' or '_' ('aeroplane0001' → 'aeroplane',
  'cat-02' → 'cat'). A name that starts with one of those characters is its own class."""
  if '/' in sequence:
    return sequence.split('/', 1)[0]
  match = re.match(r'[^0-9_-]+', sequence)
  return match.group(0) if match else sequence


# ------------------------------------------------------------------------------------------------
# Scoring.


def protocol_description(protocol: str) -> dict[str, Any]:
  """What `protocol` computes: frames, measures, aggregation, binarisation, deviations."""
  if protocol not in _PROTOCOL_INFO:
    raise EvaluationError(f'Unknown protocol {protocol!r}; choose one of {", ".join(PROTOCOLS)}.')
  info = dict(_PROTOCOL_INFO[protocol])
  info['deviations'] = list(info['deviations'])
  info['binarisation'] = BINARISATION_RULE
  return info


def _describe(sequence_masks: Mapping, seq: str, frame: str) -> str:
  describe = getattr(sequence_masks, 'describe', None)
  return describe(frame) if describe else f'{seq}/{frame}'


def score_sequence(seq: str, pred_seq: Mapping[str, np.ndarray], gt_seq: Mapping[str, np.ndarray],
                   protocol: str = 'davis16', *, bound_th: float = metrics.DEFAULT_BOUND_TH,
                   soft_frames: list[str] | None = None) -> tuple[dict[str, Any] | None, str | None]:
  """Scores one sequence (frame name -> mask); returns (its entry, None) or (None, why it was left out).

  Soft prediction frames are appended to `soft_frames` (and warned about once).
  """
  soft_frames = [] if soft_frames is None else soft_frames
  with_f = protocol == 'davis16'
  frames = sorted(gt_seq, key=_natural_key)
  if protocol == 'davis16':
    if len(frames) < 3:
      raise EvaluationError(
          f'Sequence {seq} has {len(frames)} ground-truth frame(s); davis16 drops the first and the last, '
          'so it needs at least 3.')
    frames = frames[1:-1]
  scored, j_values, f_values = [], [], []
  for frame in frames:
    gt = binarize_ground_truth(gt_seq[frame])
    if protocol != 'davis16' and not gt.any():
      continue
    if frame not in pred_seq:
      raise EvaluationError(
          f'No prediction for ground-truth frame {seq}/{frame} (expected '
          f'{_describe(pred_seq, seq, frame)}). Protocol {protocol} scores this frame: write a mask for '
          'it (frame names must match the ground truth).')
    pred, soft = binarize_prediction(pred_seq[frame])
    if soft:
      if not soft_frames:
        logging.warning('Soft (non-binary) prediction %s: thresholded at half its range. Write 0/255 '
                        'masks.', _describe(pred_seq, seq, frame))
      soft_frames.append(f'{seq}/{frame}')
    if pred.shape != gt.shape:
      raise EvaluationError(
          f'Prediction {_describe(pred_seq, seq, frame)} is {pred.shape[0]}x{pred.shape[1]} (HxW) but its '
          f'ground truth {_describe(gt_seq, seq, frame)} is {gt.shape[0]}x{gt.shape[1]}. Write predictions '
          'at the original frame size.')
    j_values.append(metrics.jaccard(pred, gt))
    if with_f:
      f_values.append(metrics.boundary_f(pred, gt, bound_th=bound_th))
    scored.append(frame)
  if not scored:
    return None, 'no annotated frame with a non-empty ground-truth mask'
  return _sequence_entry(scored, j_values, f_values if with_f else None), None


def aggregate(sequences: Mapping[str, dict[str, Any]], protocol: str, *, skipped: Mapping[str, str] | None = None,
              soft_frames: list[str] | None = None) -> dict[str, Any]:
  """The results dict (module docstring) from per-sequence entries of score_sequence."""
  info = protocol_description(protocol)
  with_f = protocol == 'davis16'
  soft_frames = list(soft_frames or [])
  sequences = {k: sequences[k] for k in sorted(sequences, key=_natural_key)}
  if not sequences:
    raise EvaluationError(f'Nothing to score under {protocol}: no sequence has a scorable frame.')
  if soft_frames:
    logging.warning('%d soft prediction mask(s) were thresholded at half their range.', len(soft_frames))
  results: dict[str, Any] = {'protocol': info}
  results.update(_aggregate(sequences, with_f))
  results['num_sequences'] = len(sequences)
  results['num_frames'] = sum(s['num_frames'] for s in sequences.values())
  if protocol == 'ytobj':
    classes: dict[str, list[float]] = {}
    for seq, entry in sequences.items():
      classes.setdefault(ytobj_class(seq), []).append(entry['J_mean'])
    results['classes'] = {c: {'J_mean': float(np.mean(v)), 'num_sequences': len(v)}
                          for c, v in sorted(classes.items())}
    results['J_mean_over_sequences'] = results['J_mean']
    results['J_mean'] = float(np.mean([c['J_mean'] for c in results['classes'].values()]))
  results['sequences'] = sequences
  results['skipped'] = dict(skipped or {})
  results['binarisation'] = {'rule': BINARISATION_RULE, 'soft_frames': len(soft_frames),
                             'soft_examples': soft_frames[:20]}
  return results


def score_sequences(predictions: Mapping[str, Mapping[str, np.ndarray]],
                    ground_truth: Mapping[str, Mapping[str, np.ndarray]],
                    protocol: str = 'davis16', *,
                    bound_th: float = metrics.DEFAULT_BOUND_TH) -> dict[str, Any]:
  """Scores predicted masks against ground truth under `protocol` ('davis16' | 'fbms' | 'ytobj').

  Both arguments map sequence -> frame name -> mask [h, w] (bool, {0,1}, {0,255}; soft maps are
  thresholded, see the module docstring). Every ground-truth sequence is scored; prediction sequences
  without ground truth are ignored (listed in `ignored_prediction_sequences`).
  Returns the results dict described in the module docstring.
  """
  protocol_description(protocol)
  scored = metrics.scored_sequences(predictions, ground_truth)
  soft_frames: list[str] = []
  sequences: dict[str, dict[str, Any]] = {}
  skipped: dict[str, str] = {}
  for seq in scored:
    entry, why = score_sequence(seq, predictions[seq], ground_truth[seq], protocol, bound_th=bound_th,
                                soft_frames=soft_frames)
    if entry is None:
      skipped[seq] = why
    else:
      sequences[seq] = entry
  results = aggregate(sequences, protocol, skipped=skipped, soft_frames=soft_frames)
  results['ignored_prediction_sequences'] = sorted(set(predictions) - set(ground_truth), key=_natural_key)
  return results


def _sequence_entry(frames: list[str], j_values: list[float], f_values: list[float] | None) -> dict:
  entry: dict[str, Any] = dict.fromkeys(STAT_KEYS)
  if f_values is None:
    entry['J_mean'] = float(np.mean(j_values))
  else:
    entry['J_mean'], entry['J_recall'], entry['J_decay'] = metrics.sequence_statistics(j_values)
    entry['F_mean'], entry['F_recall'], entry['F_decay'] = metrics.sequence_statistics(f_values)
    entry['G'] = (entry['J_mean'] + entry['F_mean']) / 2
  entry['num_frames'] = len(frames)
  entry['frames'] = list(frames)
  entry['J_per_frame'] = [float(v) for v in j_values]
  if f_values is not None:
    entry['F_per_frame'] = [float(v) for v in f_values]
  return entry


def _aggregate(sequences: dict[str, dict], with_f: bool) -> dict[str, float | None]:
  out: dict[str, float | None] = dict.fromkeys(STAT_KEYS)
  keys = STAT_KEYS[:-1] if with_f else ('J_mean',)
  for key in keys:
    out[key] = float(np.mean([s[key] for s in sequences.values()]))
  if with_f:
    out['G'] = (out['J_mean'] + out['F_mean']) / 2
  return out


# ------------------------------------------------------------------------------------------------
# Output.


def write_results(results: dict[str, Any], output_dir: str, *,
                  extra: dict[str, Any] | None = None) -> dict[str, str]:
  """Writes results.json, results.csv and results_per_sequence.png into `output_dir`.

  `extra` (e.g. checkpoint, fps) is added at the top level of the JSON; it may not replace a key of
  `results`. Returns {'json': path, 'csv': path, 'plot': path}.
  """
  extra = dict(extra or {})
  clash = sorted(set(extra) & set(results))
  if clash:
    raise EvaluationError(f'extra keys {clash} would overwrite evaluation results; rename them.')
  os.makedirs(output_dir, exist_ok=True)
  paths = {'json': os.path.join(output_dir, RESULTS_JSON), 'csv': os.path.join(output_dir, RESULTS_CSV),
           'plot': os.path.join(output_dir, RESULTS_PLOT)}
  files.write_json(paths['json'], {**results, **extra})
  files.atomic_write(paths['csv'], lambda f: _write_csv(results, f))
  png = _plot_png(results)
  files.atomic_write(paths['plot'], lambda f: f.write(png), binary=True)
  return paths


def _csv_cell(value: Any) -> Any:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return ''
  return f'{value:.6f}' if isinstance(value, float) else value


def stat_keys(results: Mapping[str, Any]) -> tuple[str, ...]:
  """The figures of a results dict: its own `stat_keys` (e.g. fgari_miou's FG-ARI, mIoU), else STAT_KEYS."""
  return tuple(results.get('stat_keys') or STAT_KEYS)


def _write_csv(results: dict[str, Any], f) -> None:
  keys = stat_keys(results)
  writer = csv.writer(f)
  writer.writerow(['name', 'kind', 'num_frames', *keys])
  writer.writerow(['global', 'global', results.get('num_frames', ''),
                   *(_csv_cell(results.get(k)) for k in keys)])
  for name, entry in results.get('classes', {}).items():
    writer.writerow([name, 'class', '', *(_csv_cell(entry.get(k)) for k in keys)])
  for name, entry in results['sequences'].items():
    writer.writerow([name, 'sequence', entry.get('num_frames', ''), *(_csv_cell(entry.get(k)) for k in keys)])


def _plot_png(results: dict[str, Any]) -> bytes:
  """Per-sequence J (and F) bars with the dataset means as lines, as PNG bytes (Agg, no pyplot state)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  names = list(results['sequences'])
  entries = [results['sequences'][n] for n in names]
  keys = stat_keys(results)
  if results.get('stat_keys'):  # the protocol's own figures (e.g. FG-ARI, mIoU), up to two bars per entry
    bars = [(k, k) for k in keys[:2]]
  else:
    bars = [('J', 'J_mean')] + ([('F', 'F_mean')] if any(e.get('F_mean') is not None for e in entries) else [])
  x = np.arange(len(names))
  width = 0.8 / len(bars)
  fig = Figure(figsize=(max(6.0, 0.3 * len(names) + 2.0), 4.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for b, ((label, key), colour) in enumerate(zip(bars, ('tab:blue', 'tab:orange'))):
    values = [np.nan if e.get(key) is None else e[key] for e in entries]
    ax.bar(x + (b - (len(bars) - 1) / 2) * width, values, width, color=colour, label=label)
    if results.get(key) is not None:
      ax.axhline(results[key], color=colour, linestyle='--', label=f'{label} mean {results[key]:.3f}')
  ax.set_xticks(x)
  ax.set_xticklabels(names, rotation=90, fontsize=7)
  ax.set_ylim(0.0, 1.15)
  ax.set_xlim(-0.6, len(names) - 0.4)
  protocol = results.get('protocol', {}).get('name', '')
  title = f'{protocol}: {len(names)} sequences'
  if results.get('G') is not None:
    title += f", G = {results['G']:.3f}"
  ax.set_title(title)
  ax.legend(loc='upper right', ncol=4, fontsize=7)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  return buffer.getvalue()


def format_summary(results: dict[str, Any]) -> str:
  """A few lines with the dataset figures, for the console."""
  protocol = results.get('protocol', {}).get('name', '?')
  if protocol in INSTANCE_PROTOCOLS:
    from gsa_jax import multi_object  # pylint: disable=g-import-not-at-top
    return multi_object.format_summary(results)
  figures = ', '.join(f'{k} {results[k]:.4f}' for k in STAT_KEYS if results.get(k) is not None)
  lines = [f'[{protocol}] {results.get("num_sequences")} sequences, {results.get("num_frames")} frames: '
           f'{figures}']
  if 'J_mean_over_sequences' in results:
    lines.append(f'  J mean over sequences {results["J_mean_over_sequences"]:.4f}; per class: ' +
                 ', '.join(f'{c} {v["J_mean"]:.4f}' for c, v in results['classes'].items()))
  if results.get('binarisation', {}).get('soft_frames'):
    lines.append(f'  warning: {results["binarisation"]["soft_frames"]} soft prediction masks were '
                 'thresholded.')
  return '\n'.join(lines)


def format_table(results: dict[str, Any]) -> str:
  """The dataset figures as a small table (one row of J, F and G means, recall and decay)."""
  rows = [('J', 'J_mean', 'J_recall', 'J_decay'), ('F', 'F_mean', 'F_recall', 'F_decay')]
  cell = lambda v: f'{v:8.4f}' if v is not None else '     n/a'
  lines = [f'  {results.get("protocol", {}).get("name", "?")}: {results.get("num_sequences")} sequences, '
           f'{results.get("num_frames")} frames', '         mean   recall    decay']
  for name, *keys in rows:
    if results.get(keys[0]) is not None:
      lines.append(f'  {name}  ' + ' '.join(cell(results.get(k)) for k in keys))
  if results.get('G') is not None:
    lines.append(f'  G  {results["G"]:8.4f}   (J&F mean)')
  return '\n'.join(lines)


def evaluate_folders(predictions_dir: str, ground_truth_dir: str, *, protocol: str = 'davis16',
                     output_dir: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Scores the PNG masks in `predictions_dir` against `ground_truth_dir` and writes the outputs.

  Returns the results dict (also written to `output_dir`/results.json).
  """
  if protocol in INSTANCE_PROTOCOLS:
    from gsa_jax import multi_object  # pylint: disable=g-import-not-at-top
    from input_pipeline import instances  # pylint: disable=g-import-not-at-top
    try:
      ground_truth = instances.InstanceMaskFolder(ground_truth_dir, role='ground-truth')
      predictions = instances.InstanceMaskFolder(predictions_dir, role='predictions')
      results = multi_object.score(protocol, predictions, ground_truth)
    except image_io.DataError as e:
      raise EvaluationError(str(e)) from e
    layouts = {'predictions': 'davis', 'ground_truth': 'davis'}
  else:
    protocol_description(protocol)  # Fail on a bad protocol before reading anything.
    ground_truth = MaskFolder(ground_truth_dir, role='ground-truth')
    predictions = MaskFolder(predictions_dir, role='predictions')
    results = score_sequences(predictions, ground_truth, protocol)
    layouts = {'predictions': predictions.layout, 'ground_truth': ground_truth.layout}
  results['predictions_dir'] = os.path.abspath(predictions_dir)
  results['ground_truth_dir'] = os.path.abspath(ground_truth_dir)
  results['layouts'] = layouts
  paths = write_results(results, output_dir, extra=extra)
  print(format_summary(results))
  print(f'Wrote {paths["json"]}, {paths["csv"]} and {paths["plot"]}.')
  return results
