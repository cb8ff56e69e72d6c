"""Multi-object protocols (gsa_jax/multi_object.py, multi_object_fgari.py) against the official tools' numbers.

Golden figures in tests/data/ were produced by running the official code on the id maps stored beside
them (the 'made_with' field of each JSON says how): davisvideochallenge/davis2017-evaluation, the
per-frame copy in the Betrayed-by-Attention repo, and SOLV's released Evaluator.
"""

import csv
import itertools
import json
import os

import numpy as np
import pytest

from gsa_jax import errors
from gsa_jax import evaluation
from gsa_jax import metrics
from gsa_jax import multi_object as mo
from gsa_jax import multi_object_fgari as mf

DATA = os.path.join(os.path.dirname(__file__), 'data')
STATS = (('J_mean', 'J_M'), ('J_recall', 'J_R'), ('J_decay', 'J_D'), ('F_mean', 'F_M'), ('F_recall', 'F_R'),
         ('F_decay', 'F_D'))
GLOBAL = (('G', 'J&F-Mean'), ('J_mean', 'J-Mean'), ('J_recall', 'J-Recall'), ('J_decay', 'J-Decay'),
          ('F_mean', 'F-Mean'), ('F_recall', 'F-Recall'), ('F_decay', 'F-Decay'))


def _load_cases(name: str, gt_key: str = 'gt', pred_key: str = 'pred') -> tuple[dict, dict]:
  data = np.load(os.path.join(DATA, name))
  seqs = sorted({k.split('/')[1] for k in data.files if k.startswith(gt_key + '/')})
  gt = {s: {f'{t:05d}': m for t, m in enumerate(data[f'{gt_key}/{s}'])} for s in seqs}
  pred = {s: {f'{t:05d}': m for t, m in enumerate(data[f'{pred_key}/{s}'])} for s in seqs}
  return pred, gt


def _video(frames: np.ndarray, name: str = 'seq') -> dict[str, dict[str, np.ndarray]]:
  return {name: {f'{t:05d}': f for t, f in enumerate(frames)}}


@pytest.fixture(scope='module')
def golden() -> dict:
  with open(os.path.join(DATA, 'davis17_official.json')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def cases() -> tuple[dict, dict]:
  return _load_cases('davis17_cases.npz')


def _check_against_tool(results: dict, ref: dict, tol: float = 1e-12) -> None:
  assert list(results['sequences']) == ref['object_names']
  for i, name in enumerate(ref['object_names']):
    entry = results['sequences'][name]
    for ours, theirs in STATS:
      assert entry[ours] == pytest.approx(ref[theirs][i], abs=tol), (name, ours)
  for ours, theirs in GLOBAL:
    assert results[ours] == pytest.approx(ref['global'][theirs], abs=tol), ours


# ------------------------------------------------------------------------------------------------ davis17


def test_davis17_equals_official_tool(golden, cases):
  pred, gt = cases
  _check_against_tool(mo.davis17(pred, gt, object_names='official'), golden['official'])


def test_davis17_default_names_keep_official_global_figures(golden, cases):
  pred, gt = cases
  results = mo.davis17(pred, gt)
  for ours, theirs in GLOBAL:
    assert results[ours] == pytest.approx(golden['official']['global'][theirs], abs=1e-12)
  # The official table mislabels objects when the matching is not monotonic: 'fewer' has one proposal that
  # covers object 2 exactly, yet the official table gives its J = 1 to fewer_1.
  assert results['sequences']['fewer_2']['J_mean'] == 1.0
  assert results['sequences']['fewer_1']['J_mean'] == 0.0
  assert results['sequences']['fewer_1']['matched_proposal'] is None
  i = golden['official']['object_names'].index('fewer_1')
  assert golden['official']['J_M'][i] == 1.0
  # Objects that only appear after the first frame are not scored (the official K = max id of frame 0).
  assert results['ignored_gt_objects'] == {'emptyfirst': [1, 2], 'later': [3]}
  assert 'emptyfirst' in results['skipped'] and 'later_3' not in results['sequences']
  # The results dict is what the project's writers take.
  assert set(mo.STAT_KEYS) <= set(results) and results['protocol']['name'] == 'davis17'


def test_davis17_per_frame_equals_betrayed_by_attention_tool(golden, cases):
  pred, gt = cases
  _check_against_tool(mo.davis17_per_frame(pred, gt, object_names='official'), golden['per_frame_variant'])
  default = mo.davis17_per_frame(pred, gt)
  for ours, theirs in GLOBAL:
    assert default[ours] == pytest.approx(golden['per_frame_variant']['global'][theirs], abs=1e-12)


def test_more_than_20_proposals(golden):
  pred, gt = _load_cases('davis17_cases.npz', 'gt_over20', 'pred_over20')
  # The official tool prints a message and exits (sys.exit(), code None) on this sequence.
  assert golden['official_over20']['system_exit'] == 'None'
  assert 'maximum number (20) of proposals' in golden['official_over20']['stdout']
  with pytest.raises(mo.MultiObjectError, match=r'over20/00000 holds id 25, above the 20 proposals.*davis17_per_frame'):
    mo.davis17(pred, gt)
  # The per-frame variant allows 300 and scores it as its tool does.
  _check_against_tool(mo.davis17_per_frame(pred, gt, object_names='official'), golden['per_frame_variant_over20'])
  with pytest.raises(mo.MultiObjectError, match='above the 10 proposals'):
    mo.davis17_per_frame(pred, gt, max_proposals=10)


def _squares(t_len: int = 8, size: int = 48) -> np.ndarray:
  """Two well-separated squares (ids 1, 2) on a [t, size, size] id map, drifting one pixel a frame."""
  gt = np.zeros((t_len, size, size), np.uint8)
  for t in range(t_len):
    gt[t, 4 + t // 2:16 + t // 2, 4:16] = 1
    gt[t, 28:40, 28 + t // 2:40 + t // 2] = 2
  return gt


def test_hand_made_perfect_swapped_and_empty():
  gt = _squares()
  for pred in (gt, np.array([0, 7, 3])[gt]):  # the ids of a proposal do not matter
    results = mo.davis17(_video(pred), _video(gt))
    assert all(results[k] == 1.0 for k in ('G', 'J_mean', 'F_mean', 'J_recall', 'F_recall'))
    assert results['J_decay'] == 0.0
  assert mo.davis17(_video(np.array([0, 7, 3])[gt]), _video(gt))['videos']['seq']['matching'] == {1: 7, 2: 3}
  empty = mo.davis17(_video(np.zeros_like(gt)), _video(gt))
  assert empty['G'] == 0.0 and empty['J_recall'] == 0.0
  assert empty['sequences']['seq_1']['matched_proposal'] is None


def test_void_pixels_leave_the_scores():
  gt = _squares()
  pred = gt.copy()
  pred[:, 20:26, :] = 1  # wrong only where the ground truth is void
  gt_void = gt.copy()
  gt_void[:, 20:26, :] = mo.VOID_LABEL
  assert mo.davis17(_video(pred), _video(gt_void))['G'] == 1.0
  assert mo.davis17(_video(pred), _video(gt))['J_mean'] < 1.0


def test_identity_swap_official_half_per_frame_full():
  gt = _squares()
  pred = gt.copy()
  pred[4:] = np.array([0, 2, 1])[gt[4:]]  # the proposals exchange objects halfway
  official = mo.davis17(_video(pred), _video(gt))
  assert official['J_mean'] == 0.5 and official['F_mean'] == 0.5 and official['G'] == 0.5
  per_frame = mo.davis17_per_frame(_video(pred), _video(gt))
  assert per_frame['J_mean'] == 1.0 and per_frame['F_mean'] == 1.0 and per_frame['G'] == 1.0
  assert per_frame['sequences']['seq_1']['matched_proposal_per_frame'] == [1] * 4 + [2] * 4


def test_gt_objects_all_frames_scores_late_objects(cases):
  pred, gt = cases
  results = mo.davis17({'later': pred['later']}, {'later': gt['later']}, gt_objects='all_frames')
  assert 'later_3' in results['sequences'] and results['ignored_gt_objects'] == {}


def test_pairwise_j_f_equals_metrics():
  rng = np.random.default_rng(0)
  pred = rng.integers(0, 4, (3, 21, 30))
  gt = np.zeros((3, 21, 30), np.int64)
  gt[:, 3:12, 4:20] = 1
  gt[:, 10:21, 15:30] = 2  # touches the last row and column
  void = rng.random((3, 21, 30)) < 0.1
  pred[1] = np.where(gt[1] == 2, 3, 0)  # one proposal touching the last column, as a ground-truth object
  for bound_th in (metrics.DEFAULT_BOUND_TH, 3):  # 1 px, and a 3 px disk that reaches past the image
    j, f = mo.pairwise_j_f(pred, gt, void, 5, 2, bound_th=bound_th)  # 4 is absent, 5 past the ids: empty
    for a, b, t in itertools.product(range(5), range(2), range(3)):
      p, g = pred[t] == a + 1, gt[t] == b + 1
      assert j[a, b, t] == metrics.jaccard(p, g, void[t])
      assert f[a, b, t] == metrics.boundary_f(p, g, void[t], bound_th=bound_th), (a, b, t, bound_th)


def test_bad_input_errors():
  gt = _squares(4)
  with pytest.raises(mo.MultiObjectError, match='No prediction for ground-truth frame seq/00003'):
    mo.davis17({'seq': {k: v for k, v in _video(gt)['seq'].items() if k != '00003'}}, _video(gt))
  with pytest.raises(errors.EvaluationError, match='No predictions for 1 ground-truth sequence'):
    mo.davis17(_video(gt, 'other'), _video(gt))
  with pytest.raises(mo.MultiObjectError, match='is 48x40 .* ground truth .* is 48x48'):
    mo.davis17(_video(gt[:, :, :40]), _video(gt))
  with pytest.raises(mo.MultiObjectError, match='colour image is not an id map'):
    mo.davis17(_video(np.repeat(gt[..., None], 3, -1)), _video(gt))
  with pytest.raises(mo.MultiObjectError, match='non-integer'):
    mo.davis17(_video(gt * 0.5), _video(gt))
  with pytest.raises(mo.MultiObjectError, match='Unknown multi-object protocol'):
    mo.score('davis16', _video(gt), _video(gt))
  with pytest.raises(mo.MultiObjectError, match='gt_objects'):
    mo.davis17(_video(gt), _video(gt), gt_objects='first')


def test_results_go_through_the_project_writers(tmp_path, cases):
  pred, gt = cases
  results = mo.score('davis17', pred, gt)
  paths = evaluation.write_results(results, str(tmp_path))
  with open(paths['csv']) as f:
    rows = list(csv.reader(f))
  assert rows[1][:2] == ['global', 'global'] and float(rows[1][-1]) == pytest.approx(results['G'], abs=1e-6)
  assert [r[0] for r in rows[2:]] == list(results['sequences'])
  with open(paths['json']) as f:
    assert json.load(f)['protocol']['name'] == 'davis17'
  assert os.path.getsize(paths['plot']) > 0
  row, per_object = mo.official_tables(results)
  assert row['J&F-Mean'] == results['G'] and len(per_object) == results['num_objects']
  assert 'J&F' in mo.format_summary(results)


# ------------------------------------------------------------------------------------------------ FG-ARI, mIoU


def test_adjusted_rand_index_equals_sklearn():
  from sklearn.metrics import adjusted_rand_score  # pylint: disable=g-import-not-at-top  (a test-only reference)
  rng = np.random.default_rng(1)
  for _ in range(300):
    n = int(rng.integers(0, 60))
    a = rng.integers(0, int(rng.integers(1, 6)), n) * int(rng.choice([1, 7]))
    b = rng.integers(0, int(rng.integers(1, 6)), n) + int(rng.integers(0, 300))
    assert mf.adjusted_rand_index(a, b) == adjusted_rand_score(a, b)
  big_a = (np.arange(500_000) % 3).astype(np.int64)  # products of pair counts beyond int64
  big_b = (np.arange(500_000) // 1000 % 4).astype(np.int64)
  assert mf.adjusted_rand_index(big_a, big_b) == adjusted_rand_score(big_a, big_b)


def _random_videos(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
  pred, gt = {}, {}
  for v in range(n):
    t_len, h, w = int(rng.integers(2, 5)), int(rng.integers(6, 12)), int(rng.integers(6, 12))
    g = rng.integers(0, int(rng.integers(2, 5)), (t_len, h, w))
    p = np.where(rng.random((t_len, h, w)) < 0.7, g * 2 + 1, rng.integers(0, 6, (t_len, h, w)))
    if v % 3 == 0:
      g[:, 0, 0] = mo.VOID_LABEL
    gt.update(_video(g, f'v{v}'))
    pred.update(_video(p, f'v{v}'))
  return pred, gt


def test_fg_ari_equals_sklearn_per_frame_and_per_video():
  from sklearn.metrics import adjusted_rand_score  # pylint: disable=g-import-not-at-top  (a test-only reference)
  pred, gt = _random_videos(np.random.default_rng(2), 6)
  frame_scores, video_scores = [], []
  for seq in gt:
    p = np.stack([pred[seq][k] for k in sorted(gt[seq])])
    g = np.stack([gt[seq][k] for k in sorted(gt[seq])])
    fg = (g != 0) & (g != mo.VOID_LABEL)
    frame_scores += [adjusted_rand_score(g[t][fg[t]], p[t][fg[t]]) for t in range(len(g)) if fg[t].any()]
    video_scores.append(adjusted_rand_score(g[fg], p[fg]))
  assert mf.fgari_miou(pred, gt)['FG-ARI'] == pytest.approx(np.mean(frame_scores), abs=1e-12)
  assert mf.fgari_miou(pred, gt, fg_ari_scope='video')['FG-ARI'] == pytest.approx(np.mean(video_scores), abs=1e-12)


def _brute_force_best_iou_sum(p: np.ndarray, g: np.ndarray, valid: np.ndarray, mode: str) -> float:
  pred_ids = list(np.unique(p[valid]))
  gt_ids = [i for i in np.unique(g[valid]) if i != 0]

  def iou(a, b):
    pa, gb = (p == a) & valid, (g == b) & valid
    inter = (pa & gb).sum(axis=(1, 2))
    union = (pa | gb).sum(axis=(1, 2))
    if mode == 'volume':
      return inter.sum() / union.sum()
    return np.mean(inter[union > 0] / union[union > 0])

  options = pred_ids + [None] * len(gt_ids)  # None: the object stays unmatched
  best = 0.0
  for choice in itertools.permutations(options, len(gt_ids)):
    used = [c for c in choice if c is not None]
    if len(used) != len(set(used)):
      continue
    best = max(best, sum(iou(c, b) for c, b in zip(choice, gt_ids) if c is not None))
  return best


@pytest.mark.parametrize('mode', ['frames', 'volume'])
def test_miou_matching_equals_brute_force(mode):
  pred, gt = _random_videos(np.random.default_rng(3), 8)
  results = mf.fgari_miou(pred, gt, iou=mode)
  for seq in gt:
    p = np.stack([pred[seq][k] for k in sorted(gt[seq])])
    g = np.stack([gt[seq][k] for k in sorted(gt[seq])])
    valid = g != mo.VOID_LABEL
    ours = sum(o['IoU'] for o in results['sequences'][seq]['objects'].values())
    assert ours == pytest.approx(_brute_force_best_iou_sum(p, g, valid, mode), abs=1e-12), seq


def test_non_contiguous_ids_released_zero_correct_one():
  gt = np.zeros((3, 8, 8), np.uint8)
  gt[:, 2:6, 2:6] = 1
  for ids, released in (((0, 1), 1.0), ((0, 3), 0.0)):
    pred = np.array(ids)[gt]
    assert mf.fgari_miou(_video(pred), _video(gt))['mIoU'] == 1.0
    assert mf.fgari_miou(_video(pred), _video(gt), preset='solv_released')['mIoU'] == released
    assert mf.fgari_miou(_video(pred), _video(gt), relabel_by_row_index=True)['mIoU'] == released


def test_fgari_miou_equals_released_solv_evaluator():
  pred, gt = _load_cases('solv_cases.npz')
  with open(os.path.join(DATA, 'solv_released.json')) as f:
    ref = json.load(f)
  results = mf.fgari_miou(pred, gt, preset='solv_released')
  assert results['mIoU'] == pytest.approx(ref['mIoU'], abs=1e-6)  # the released code averages in float32
  assert results['FG-ARI'] == pytest.approx(ref['FG-ARI'], abs=1e-12)
  for seq, expected in ref['per_video'].items():
    entry = results['sequences'][seq]
    assert [o['IoU'] for o in entry['objects'].values()] == pytest.approx(expected['mious'], abs=1e-6), seq
    assert ([entry['FG-ARI']] if entry['FG-ARI'] is not None else []) == pytest.approx(expected['fg_ari'], abs=1e-12)
  correct = mf.fgari_miou(pred, gt)
  assert correct['mIoU'] != pytest.approx(ref['mIoU'], abs=1e-3)  # the fixes change the numbers here


def test_released_switches_one_by_one():
  gt = np.zeros((3, 10, 10), np.uint8)
  gt[:, 1:5, 1:5] = 1
  gt[1:, 6:9, 6:9] = 2  # absent from the first frame
  pred = gt.astype(np.int64) + 1  # ids 1, 2, 3 (2 and 3 are the objects)
  pred[:, 0, :] = 9  # an extra segment over background and object 1
  assert mf.fgari_miou(_video(pred), _video(gt))['num_objects'] == 2
  dropped = mf.fgari_miou(_video(pred), _video(gt), first_frame_objects=True)
  assert dropped['num_objects'] == 1 and dropped['sequences']['seq']['first_frame_objects'] == [1]
  column = np.arange(10)[None, None, :]
  split = np.where(gt == 1, np.where(column < 3, 4, 5), np.where(gt == 2, np.where(column < 7, 6, 7), pred))
  raw = mf.fgari_miou(_video(split), _video(gt))['FG-ARI']
  merged = mf.fgari_miou(_video(split), _video(gt), fg_ari_after_matching=True)['FG-ARI']
  assert raw < 1.0 and merged < raw  # after matching, the unmatched parts of both objects merge into one cluster 0
  per_video = mf.fgari_miou({**_video(split, 'a'), **_video(pred[:1], 'b')}, {**_video(gt, 'a'), **_video(gt[:1], 'b')},
                            fg_ari_average='videos')
  per_frame = mf.fgari_miou({**_video(split, 'a'), **_video(pred[:1], 'b')}, {**_video(gt, 'a'), **_video(gt[:1], 'b')})
  a = per_frame['sequences']['a']['FG-ARI_per_frame']
  assert per_video['FG-ARI'] == pytest.approx((np.mean(a) + 1.0) / 2, abs=1e-12)
  assert per_frame['FG-ARI'] == pytest.approx((sum(a) + 1.0) / 4, abs=1e-12)
  with pytest.raises(mo.MultiObjectError, match="use fg_ari_average='videos'"):
    mf.fgari_miou(_video(pred), _video(gt), fg_ari_scope='video', fg_ari_average='frames')
  with pytest.raises(mo.MultiObjectError, match='Unknown preset'):
    mf.fgari_miou(_video(pred), _video(gt), preset='solv')
  described = mf.fgari_miou(_video(pred), _video(gt), preset='solv_released')['protocol']
  assert described['switches']['relabel_by_row_index'] and len(described['deviations']) == 4
