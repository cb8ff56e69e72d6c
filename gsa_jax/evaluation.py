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

Outputs (written atomically: a temporary file, then os.replace): `results.json`, `results.csv` and
`results_per_sequence.png`. The JSON holds the dataset figures at the top level (J_mean, J_recall,
J_decay, F_mean, F_recall, F_decay, G; null where the protocol does not define one), the per-sequence
figures under `sequences`, and `protocol`, a description of what was computed.
"""

import csv
import io
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import numpy as np
from PIL import Image

from gsa_jax import metrics

PROTOCOLS = ('davis16', 'fbms', 'ytobj')
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


class EvaluationError(ValueError):
  """Bad evaluation input: missing or unreadable masks, size mismatches, empty folders."""


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


def _natural_key(name: str) -> tuple:
  return tuple((0, int(t), '') if t.isdigit() else (1, 0, t) for t in re.split(r'(\d+)', name) if t)


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


def score_sequences(predictions: Mapping[str, Mapping[str, np.ndarray]],
                    ground_truth: Mapping[str, Mapping[str, np.ndarray]],
                    protocol: str = 'davis16', *,
                    bound_th: float = metrics.DEFAULT_BOUND_TH) -> dict[str, Any]:
  """Scores predicted masks against ground truth under `protocol` ('davis16' | 'fbms' | 'ytobj').

  Both arguments map sequence → frame name → mask [h, w] (bool, {0,1}, {0,255}; soft maps are
  thresholded, see the module docstring). Every ground-truth sequence is scored; prediction sequences
  without ground truth are ignored (listed in `ignored_prediction_sequences`).
  Returns the results dict described in the module docstring.
  """
  info = protocol_description(protocol)
  with_f = protocol == 'davis16'
  if not ground_truth:
    raise EvaluationError('No ground-truth sequences to score.')
  if not predictions:
    raise EvaluationError('No predicted sequences to score.')
  missing = sorted(set(ground_truth) - set(predictions), key=_natural_key)
  if missing:
    have = sorted(predictions, key=_natural_key)
    raise EvaluationError(
        f'No predictions for {len(missing)} ground-truth sequence(s): {", ".join(missing[:10])}'
        f'{" ..." if len(missing) > 10 else ""}. Predicted sequences: {", ".join(have[:10])}'
        f'{" ..." if len(have) > 10 else ""}. Predict every sequence of the ground-truth set (names must '
        'match).')

  soft_frames: list[str] = []
  sequences: dict[str, dict[str, Any]] = {}
  skipped: dict[str, str] = {}
  for seq in sorted(ground_truth, key=_natural_key):
    gt_seq, pred_seq = ground_truth[seq], predictions[seq]
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
      skipped[seq] = 'no annotated frame with a non-empty ground-truth mask'
      continue
    sequences[seq] = _sequence_entry(scored, j_values, f_values if with_f else None)

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
  results['skipped'] = skipped
  results['ignored_prediction_sequences'] = sorted(set(predictions) - set(ground_truth), key=_natural_key)
  results['binarisation'] = {'rule': BINARISATION_RULE, 'soft_frames': len(soft_frames),
                             'soft_examples': soft_frames[:20]}
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


def _atomic_write(path: str, write: Callable[[Any], None], *, binary: bool = False) -> None:
  """Writes `path` through a temporary file in the same folder and os.replace, so it is never partial."""
  directory, name = os.path.split(os.path.abspath(path))
  # A unique name opened with 'x' (not mkstemp, whose 0600 mode would survive the rename).
  tmp = os.path.join(directory, f'.{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
  try:
    with open(tmp, 'xb' if binary else 'x', **({} if binary else {'newline': '', 'encoding': 'utf-8'})) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


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
  document = _jsonable({**results, **extra})
  _atomic_write(paths['json'], lambda f: json.dump(document, f, indent=2, allow_nan=False))
  _atomic_write(paths['csv'], lambda f: _write_csv(results, f))
  png = _plot_png(results)
  _atomic_write(paths['plot'], lambda f: f.write(png), binary=True)
  return paths


def _csv_cell(value: Any) -> Any:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return ''
  return f'{value:.6f}' if isinstance(value, float) else value


def _write_csv(results: dict[str, Any], f) -> None:
  writer = csv.writer(f)
  writer.writerow(['name', 'kind', 'num_frames', *STAT_KEYS])
  writer.writerow(['global', 'global', results.get('num_frames', ''),
                   *(_csv_cell(results.get(k)) for k in STAT_KEYS)])
  for name, entry in results.get('classes', {}).items():
    writer.writerow([name, 'class', '', *(_csv_cell(entry.get(k)) for k in STAT_KEYS)])
  for name, entry in results['sequences'].items():
    writer.writerow([name, 'sequence', entry['num_frames'], *(_csv_cell(entry.get(k)) for k in STAT_KEYS)])


def _plot_png(results: dict[str, Any]) -> bytes:
  """Per-sequence J (and F) bars with the dataset means as lines, as PNG bytes (Agg, no pyplot state)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  names = list(results['sequences'])
  entries = [results['sequences'][n] for n in names]
  has_f = any(e.get('F_mean') is not None for e in entries)
  x = np.arange(len(names))
  width = 0.4 if has_f else 0.7
  fig = Figure(figsize=(max(6.0, 0.3 * len(names) + 2.0), 4.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  j = [e['J_mean'] for e in entries]
  ax.bar(x - (width / 2 if has_f else 0), j, width, color='tab:blue', label='J')
  ax.axhline(results['J_mean'], color='tab:blue', linestyle='--', label=f"J mean {results['J_mean']:.3f}")
  if has_f:
    f = [e['F_mean'] for e in entries]
    ax.bar(x + width / 2, f, width, color='tab:orange', label='F')
    ax.axhline(results['F_mean'], color='tab:orange', linestyle='--', label=f"F mean {results['F_mean']:.3f}")
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


def evaluate_folders(predictions_dir: str, ground_truth_dir: str, *, protocol: str = 'davis16',
                     output_dir: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Scores the PNG masks in `predictions_dir` against `ground_truth_dir` and writes the outputs.

  Returns the results dict (also written to `output_dir`/results.json).
  """
  protocol_description(protocol)  # Fail on a bad protocol before reading anything.
  ground_truth = MaskFolder(ground_truth_dir, role='ground-truth')
  predictions = MaskFolder(predictions_dir, role='predictions')
  results = score_sequences(predictions, ground_truth, protocol)
  results['predictions_dir'] = os.path.abspath(predictions_dir)
  results['ground_truth_dir'] = os.path.abspath(ground_truth_dir)
  results['layouts'] = {'predictions': predictions.layout, 'ground_truth': ground_truth.layout}
  paths = write_results(results, output_dir, extra=extra)
  print(format_summary(results))
  print(f'Wrote {paths["json"]}, {paths["csv"]} and {paths["plot"]}.')
  return results
