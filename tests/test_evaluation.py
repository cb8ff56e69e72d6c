"""Protocols, folder layouts, outputs and error messages of gsa_jax/evaluation.py."""

import csv
import json
import os

import numpy as np
from PIL import Image
import pytest

from gsa_jax import evaluation
from gsa_jax import metrics

H, W = 12, 16


def _box(top: int, left: int, height: int = 4, width: int = 5) -> np.ndarray:
  mask = np.zeros((H, W), np.uint8)
  mask[top:top + height, left:left + width] = 255
  return mask


def _frames(n: int, prefix: str = '') -> list[str]:
  return [f'{prefix}{i:05d}' for i in range(n)]


# ------------------------------------------------------------------------------------ protocols

def test_davis16_drops_first_and_last_frames():
  gt = {'seq': {f: _box(3, 4) for f in _frames(5)}}
  pred = {'seq': {f: _box(3, 4) for f in _frames(5)}}
  pred['seq']['00000'] = np.zeros((H, W), np.uint8)  # wrong, but dropped
  del pred['seq']['00004']  # missing, but dropped (GSANet predicts N-1 frames)
  results = evaluation.score_sequences(pred, gt, 'davis16')
  seq = results['sequences']['seq']
  assert seq['frames'] == ['00001', '00002', '00003']
  assert (seq['J_mean'], seq['F_mean'], seq['G']) == (1.0, 1.0, 1.0)
  assert results['num_frames'] == 3
  assert 'first and the last' in results['protocol']['frames']
  assert any('uint8' in d for d in results['protocol']['deviations'])


def test_davis16_averages_over_sequences_not_frames():
  gt = {'long': {f: _box(3, 4) for f in _frames(5)},  # 3 scored frames, all perfect
        'short': {f: _box(3, 4) for f in _frames(3)}}  # 1 scored frame, empty prediction
  pred = {'long': {f: _box(3, 4) for f in _frames(5)},
          'short': {f: np.zeros((H, W), np.uint8) for f in _frames(3)},
          'extra': {'00000': _box(0, 0)}}
  results = evaluation.score_sequences(pred, gt, 'davis16')
  assert results['J_mean'] == pytest.approx(0.5)  # a frame mean would give 0.75
  assert results['F_mean'] == pytest.approx(0.5)
  assert results['G'] == pytest.approx(0.5)
  assert results['J_recall'] == pytest.approx(0.5)
  assert results['ignored_prediction_sequences'] == ['extra']
  assert results['sequences']['short']['J_recall'] == 0.0


def test_davis16_per_frame_values_and_statistics_match_metrics():
  n = 9
  gt = {'s': {f: _box(3, 4) for f in _frames(n)}}
  pred = {'s': {f: _box(3, 4 + i % 4) for i, f in enumerate(_frames(n))}}
  results = evaluation.score_sequences(pred, gt, 'davis16')
  j = [metrics.jaccard(pred['s'][f], gt['s'][f]) for f in _frames(n)[1:-1]]
  f = [metrics.boundary_f(pred['s'][f], gt['s'][f]) for f in _frames(n)[1:-1]]
  seq = results['sequences']['s']
  np.testing.assert_allclose(seq['J_per_frame'], j)
  assert (seq['J_mean'], seq['J_recall'], seq['J_decay']) == pytest.approx(metrics.sequence_statistics(j))
  assert (seq['F_mean'], seq['F_recall'], seq['F_decay']) == pytest.approx(metrics.sequence_statistics(f))
  assert j[1] == pytest.approx(12 / 28)  # frame 2 shifted 2 columns: two 4x5 boxes share 4x3 pixels


def test_davis16_needs_three_frames():
  gt = {'s': {f: _box(3, 4) for f in _frames(2)}}
  with pytest.raises(evaluation.EvaluationError, match='at least 3'):
    evaluation.score_sequences(gt, gt, 'davis16')


def test_fbms_scores_annotated_non_empty_frames_only():
  empty = np.zeros((H, W), np.uint8)
  gt = {'a': {'00000': _box(3, 4), '00020': empty, '00040': _box(3, 4)},
        'b': {'00010': _box(3, 4)}}
  pred = {'a': {'00000': _box(3, 4), '00020': _box(0, 0), '00040': _box(3, 6)},  # 00020 not scored
          'b': {f: _box(3, 4) for f in ('00009', '00010', '00011')}}  # unannotated frames ignored
  results = evaluation.score_sequences(pred, gt, 'fbms')
  assert results['sequences']['a']['frames'] == ['00000', '00040']
  assert results['sequences']['a']['J_mean'] == pytest.approx((1.0 + 12 / 28) / 2)
  assert results['J_mean'] == pytest.approx(((1.0 + 12 / 28) / 2 + 1.0) / 2)
  assert results['F_mean'] is None and results['G'] is None and results['J_decay'] is None


def test_fbms_skips_a_sequence_without_foreground():
  gt = {'a': {'0': _box(3, 4)}, 'blank': {'0': np.zeros((H, W), np.uint8)}}
  results = evaluation.score_sequences(gt, gt, 'fbms')
  assert list(results['sequences']) == ['a']
  assert 'blank' in results['skipped']


def test_ytobj_class_names():
  assert evaluation.ytobj_class('aeroplane0001') == 'aeroplane'
  assert evaluation.ytobj_class('cat-02') == 'cat'
  assert evaluation.ytobj_class('motorbike_7') == 'motorbike'
  assert evaluation.ytobj_class('car/0003') == 'car'
  assert evaluation.ytobj_class('0042') == '0042'


def test_ytobj_mean_over_classes_and_over_sequences():
  perfect, miss = _box(3, 4), np.zeros((H, W), np.uint8)
  gt = {name: {'00001': _box(3, 4)} for name in ('cat0001', 'cat0002', 'cat0003', 'dog0001')}
  pred = {'cat0001': {'00001': perfect}, 'cat0002': {'00001': perfect}, 'cat0003': {'00001': miss},
          'dog0001': {'00001': perfect}}
  results = evaluation.score_sequences(pred, gt, 'ytobj')
  assert results['classes']['cat'] == {'J_mean': pytest.approx(2 / 3), 'num_sequences': 3}
  assert results['J_mean'] == pytest.approx((2 / 3 + 1.0) / 2)
  assert results['J_mean_over_sequences'] == pytest.approx(3 / 4)


def test_prediction_binarisation_rules():
  hard01 = np.array([[0, 1], [1, 0]], np.uint8)
  hard255 = hard01 * 255
  for mask in (hard01, hard255, hard01.astype(bool), hard01.astype(np.float32)):
    out, soft = evaluation.binarize_prediction(mask)
    assert not soft
    np.testing.assert_array_equal(out, hard01.astype(bool))
  out, soft = evaluation.binarize_prediction(np.array([[100, 127], [128, 200]], np.uint8))
  assert soft
  np.testing.assert_array_equal(out, [[False, False], [True, True]])
  out, soft = evaluation.binarize_prediction(np.array([[0.2, 0.7]], np.float32))
  assert soft
  np.testing.assert_array_equal(out, [[False, True]])
  # Three-channel grey PNGs (GSANet writes those) and RGBA: max over colours, alpha ignored.
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[..., 3] = 255
  rgba[0, 0, :3] = 255
  out, _ = evaluation.binarize_prediction(rgba)
  np.testing.assert_array_equal(out, [[True, False], [False, False]])


# ------------------------------------------------------------------------------- folder round trip

def _write(path, array: np.ndarray, mode: str | None = None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array)
  if mode == 'P':  # DAVIS ground truth: palette PNG with index 1 = object.
    image = Image.fromarray((array > 0).astype(np.uint8), mode='L').convert('P')
    image.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
  image.save(path)


def _tree(tmp_path):
  """GT and predictions for 2 sequences (names with '-' and '_'), in both layouts."""
  rng = np.random.default_rng(0)
  sequences = {'dance-twirl': 6, 'car_race': 5}
  gt, pred = {}, {}
  for seq, n in sequences.items():
    gt[seq], pred[seq] = {}, {}
    for i in range(n):
      gt[seq][f'{i:05d}'] = _box(2 + i % 3, 3 + i % 4, 5, 6)
      pred[seq][f'{i:05d}'] = ((rng.random((H, W)) < 0.1) * 255).astype(np.uint8) | _box(2, 3 + i % 2, 5, 6)
  for seq in gt:
    for frame in gt[seq]:
      _write(tmp_path / 'gt_davis' / seq / f'{frame}.png', gt[seq][frame], mode='P')
      _write(tmp_path / 'gt_flat' / f'{seq}_{frame}.png', gt[seq][frame])
      _write(tmp_path / 'pred_davis' / seq / f'{frame}.png', pred[seq][frame])
      _write(tmp_path / 'pred_flat' / f'{seq}_{frame}.png', (pred[seq][frame] > 0).astype(np.uint8))
  return gt, pred


def _figures(results):
  return ({k: results[k] for k in evaluation.STAT_KEYS},
          {s: {k: v[k] for k in (*evaluation.STAT_KEYS, 'frames', 'J_per_frame', 'F_per_frame')}
           for s, v in results['sequences'].items()})


def test_folder_layouts_round_trip(tmp_path, capsys):
  gt, pred = _tree(tmp_path)
  in_memory = evaluation.score_sequences(pred, gt, 'davis16')
  runs = {}
  for p, g in (('davis', 'davis'), ('flat', 'flat'), ('flat', 'davis'), ('davis', 'flat')):
    out = tmp_path / f'out_{p}_{g}'
    runs[p, g] = evaluation.evaluate_folders(str(tmp_path / f'pred_{p}'), str(tmp_path / f'gt_{g}'),
                                             protocol='davis16', output_dir=str(out))
    assert runs[p, g]['layouts'] == {'predictions': p, 'ground_truth': g}
    assert _figures(runs[p, g]) == _figures(in_memory)
  assert 0.0 < in_memory['J_mean'] < 1.0
  assert sorted(in_memory['sequences']) == ['car_race', 'dance-twirl']
  assert '[davis16] 2 sequences' in capsys.readouterr().out


def test_written_outputs(tmp_path):
  _tree(tmp_path)
  out = tmp_path / 'out'
  results = evaluation.evaluate_folders(str(tmp_path / 'pred_davis'), str(tmp_path / 'gt_davis'),
                                        protocol='davis16', output_dir=str(out))
  assert sorted(os.listdir(out)) == ['results.csv', 'results.json', 'results_per_sequence.png']
  document = json.loads((out / 'results.json').read_text())
  for key in evaluation.STAT_KEYS:
    assert document[key] == pytest.approx(results[key])
    assert document['sequences']['car_race'][key] == pytest.approx(results['sequences']['car_race'][key])
  assert document['protocol']['name'] == 'davis16'
  assert 'unweighted mean over sequences' in document['protocol']['aggregation']
  assert 'binarisation' in document['protocol']
  with open(out / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['name'] for r in rows] == ['global', 'car_race', 'dance-twirl']
  assert float(rows[0]['G']) == pytest.approx(results['G'], abs=1e-6)
  assert (out / 'results_per_sequence.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_write_results_extra_and_nan(tmp_path):
  gt = {'s': {f: _box(3, 4) for f in _frames(4)}}
  results = evaluation.score_sequences(gt, gt, 'davis16')
  results['J_decay'] = float('nan')
  evaluation.write_results(results, str(tmp_path), extra={'checkpoint': '/ckpt/7', 'fps': 12.5})
  document = json.loads((tmp_path / 'results.json').read_text())
  assert document['checkpoint'] == '/ckpt/7' and document['fps'] == 12.5
  assert document['J_decay'] is None  # NaN is not JSON
  assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]
  with pytest.raises(evaluation.EvaluationError, match='overwrite'):
    evaluation.write_results(results, str(tmp_path), extra={'J_mean': 0.0})
  umask = os.umask(0o022)
  os.umask(umask)
  assert os.stat(tmp_path / 'results.json').st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_write_results_leaves_nothing_half_written(tmp_path, monkeypatch):
  from gsa_jax import files
  gt = {'s': {f: _box(3, 4) for f in _frames(4)}}
  results = evaluation.score_sequences(gt, gt, 'davis16')

  def fails_part_way(document, f, **kwargs):
    f.write('{"partial": ')
    raise OSError('disk full')

  monkeypatch.setattr(files.json, 'dump', fails_part_way)
  with pytest.raises(OSError, match='disk full'):
    evaluation.write_results(results, str(tmp_path / 'out'))
  assert os.listdir(tmp_path / 'out') == []


def test_soft_png_is_thresholded_and_reported(tmp_path):
  gt = {'s': {f: _box(3, 4) for f in _frames(3)}}
  soft = _box(3, 4) // 255 * 200  # 200 inside the box...
  soft[0, 0] = 100  # ...and a faint pixel below the 128 threshold.
  for f in _frames(3):
    _write(tmp_path / 'gt' / 's' / f'{f}.png', gt['s'][f])
    _write(tmp_path / 'pred' / 's' / f'{f}.png', soft)
  results = evaluation.evaluate_folders(str(tmp_path / 'pred'), str(tmp_path / 'gt'), protocol='davis16',
                                        output_dir=str(tmp_path / 'out'))
  assert results['J_mean'] == 1.0
  assert results['binarisation']['soft_frames'] == 1
  assert results['binarisation']['soft_examples'] == ['s/00001']
  assert '128' in results['binarisation']['rule']


# ------------------------------------------------------------------------------------------ errors

def _simple_tree(tmp_path, n=3):
  for f in _frames(n):
    _write(tmp_path / 'gt' / 'bear' / f'{f}.png', _box(3, 4))
    _write(tmp_path / 'pred' / 'bear' / f'{f}.png', _box(3, 4))


def _evaluate(tmp_path, protocol='davis16'):
  return evaluation.evaluate_folders(str(tmp_path / 'pred'), str(tmp_path / 'gt'), protocol=protocol,
                                     output_dir=str(tmp_path / 'out'))


def test_error_missing_prediction_frame(tmp_path):
  _simple_tree(tmp_path, n=4)
  os.remove(tmp_path / 'pred' / 'bear' / '00002.png')
  with pytest.raises(evaluation.EvaluationError) as e:
    _evaluate(tmp_path)
  message = str(e.value)
  assert 'bear/00002' in message and os.path.join('pred', 'bear', '00002.png') in message
  assert 'write a mask' in message
  assert not (tmp_path / 'out').exists()


def test_error_missing_prediction_sequence(tmp_path):
  _simple_tree(tmp_path)
  _write(tmp_path / 'gt' / 'cows' / '00000.png', _box(3, 4))
  with pytest.raises(evaluation.EvaluationError, match=r'ground-truth sequence\(s\): cows'):
    _evaluate(tmp_path)


def test_error_size_mismatch(tmp_path):
  _simple_tree(tmp_path)
  _write(tmp_path / 'pred' / 'bear' / '00001.png', np.zeros((H, W + 2), np.uint8))
  with pytest.raises(evaluation.EvaluationError) as e:
    _evaluate(tmp_path)
  message = str(e.value)
  assert os.path.join('pred', 'bear', '00001.png') in message
  assert f'{H}x{W + 2}' in message and f'{H}x{W}' in message


def test_error_unreadable_png(tmp_path):
  _simple_tree(tmp_path)
  (tmp_path / 'pred' / 'bear' / '00001.png').write_bytes(b'not a png at all')
  with pytest.raises(evaluation.EvaluationError, match=r'Cannot read mask .*bear.00001\.png'):
    _evaluate(tmp_path)


def test_error_empty_and_missing_folders(tmp_path):
  _simple_tree(tmp_path)
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'notes.txt').write_text('no masks here')
  with pytest.raises(evaluation.EvaluationError, match='holds no .png masks'):
    evaluation.evaluate_folders(str(tmp_path / 'empty'), str(tmp_path / 'gt'), output_dir=str(tmp_path / 'o'))
  with pytest.raises(evaluation.EvaluationError, match='does not exist'):
    evaluation.evaluate_folders(str(tmp_path / 'pred'), str(tmp_path / 'nope'),
                                output_dir=str(tmp_path / 'o'))


def test_error_mixed_layout_bad_flat_name_and_protocol(tmp_path):
  _simple_tree(tmp_path)
  _write(tmp_path / 'pred' / 'stray_00000.png', _box(3, 4))
  with pytest.raises(evaluation.EvaluationError, match='mixes layouts'):
    _evaluate(tmp_path)
  _write(tmp_path / 'flat' / 'nounderscore.png', _box(3, 4))
  with pytest.raises(evaluation.EvaluationError, match='<sequence>_<frame>.png'):
    evaluation.MaskFolder(str(tmp_path / 'flat'))
  with pytest.raises(evaluation.EvaluationError, match='Unknown protocol'):
    _evaluate(tmp_path, protocol='davis2016')


def test_ytobj_nested_folders_and_j_only_outputs(tmp_path, capsys):
  # <dir>/<class>/<video>/<frame>.png, sparse annotations, predictions on every frame.
  for cls, video, hit in (('cat', '0001', True), ('cat', '0002', False), ('dog', '0001', True)):
    _write(tmp_path / 'gt' / cls / video / '00010.png', _box(3, 4))
    for f in ('00009', '00010', '00011'):
      _write(tmp_path / 'pred' / cls / video / f'{f}.png', _box(3, 4) if hit else np.zeros((H, W), np.uint8))
  results = _evaluate(tmp_path, protocol='ytobj')
  assert sorted(results['sequences']) == ['cat/0001', 'cat/0002', 'dog/0001']
  assert results['classes']['cat']['J_mean'] == pytest.approx(0.5)
  assert results['J_mean'] == pytest.approx(0.75)
  assert results['J_mean_over_sequences'] == pytest.approx(2 / 3)
  document = json.loads((tmp_path / 'out' / 'results.json').read_text())
  assert document['F_mean'] is None and document['G'] is None
  with open(tmp_path / 'out' / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [(r['name'], r['kind']) for r in rows[:3]] == [
      ('global', 'global'), ('cat', 'class'), ('dog', 'class')]
  assert rows[0]['F_mean'] == ''
  assert 'J mean over sequences 0.6667' in capsys.readouterr().out
