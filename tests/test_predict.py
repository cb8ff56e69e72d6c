"""Tests of gsa_jax/predict.py: reading, streaming, atomic output, the movie, the report, the model path."""

import functools
import json
import os
import time

import cv2
import numpy as np
from PIL import Image
import pytest

from gsa_jax import predict as P


# ------------------------------------------------------------------------------------------------
# Helpers: a tiny moving-square video, a stand-in flow and a stand-in model.


def square_video(num_frames: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
  """A bright square moving right over a smooth textured background; uint8 RGB frames."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width]
  background = np.stack([60 + 40 * np.sin(xx / 7.0), 60 + 40 * np.cos(yy / 5.0),
                         60 + 20 * np.sin((xx + yy) / 9.0)], axis=-1)
  background += rng.normal(0, 3, background.shape)
  frames = []
  side = max(4, min(height, width) // 3)
  for t in range(num_frames):
    frame = background.copy()
    x0 = (t * 3) % max(1, width - side)
    y0 = height // 3
    frame[y0:y0 + side, x0:x0 + side] = (230, 200, 40)
    frames.append(np.clip(frame, 0, 255).astype(np.uint8))
  return frames


def write_folder(frames, folder, ext='.png'):
  os.makedirs(folder, exist_ok=True)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(folder, f'frame{i}{ext}'))  # natural order: frame2 < frame10
  return folder


class DifferenceFlow(P.FlowSource):
  """Stand-in flow: the absolute frame difference as an image (deterministic, needs two frames)."""

  description = {'source': 'test'}

  def for_frames(self, start, frames, next_frame, previous_flow):
    sequence = list(frames) + ([next_frame] if next_frame is not None else [])
    flows = [np.abs(sequence[k].astype(np.int16) - sequence[k + 1].astype(np.int16)).astype(np.uint8)
             for k in range(len(sequence) - 1)]
    if next_frame is None:
      flows.append(flows[-1] if flows else previous_flow)
    return flows


class BrightnessSegmenter(P.Segmenter):
  """Stand-in model: foreground where the red channel is bright; counts calls and batch shapes."""

  def __init__(self, size=32, batch_size=3):
    self.size, self.batch_size = size, batch_size
    self.encode_calls, self.batch_shapes, self.indices = 0, [], []

  def encode(self, ref_rgb, ref_flow):
    self.encode_calls += 1
    return ref_rgb.mean()

  def segment(self, rgb, flow, references, frame_indices):
    self.batch_shapes.append(rgb.shape)
    self.indices.append(np.asarray(frame_indices))
    return 1.0 / (1.0 + np.exp(-4.0 * (rgb[..., 0] - 1.0)))


def read_mask(path):
  with Image.open(path) as image:
    assert image.mode == 'P'
    return np.array(image)


# ------------------------------------------------------------------------------------------------
# Pure parts.


def test_reference_indices_official_rule():
  assert P.reference_indices(10, 4) == [0, 2, 4, 6]
  assert P.reference_indices(100, 4) == [0, 25, 50, 75]
  assert P.reference_indices(3, 4) == [0, 0, 0, 0]


def test_model_size_rounds_to_multiple_of_32():
  assert P.model_size(384) == 384
  assert P.model_size(100) == 96
  assert P.model_size(10) == 32


def test_folder_natural_order_and_errors(tmp_path):
  frames = square_video(12, 20, 30)
  folder = write_folder(frames, str(tmp_path / 'frames'))
  source = P.open_frames(folder)
  assert source.names[:3] == ['frame0', 'frame1', 'frame2'] and source.names[-1] == 'frame11'
  assert np.array_equal(next(iter(source.iter_frames())), frames[0])
  assert np.array_equal(source.read([10])[10], frames[10])

  empty = tmp_path / 'empty'
  (empty / 'seq1').mkdir(parents=True)
  with pytest.raises(P.PredictError, match=r'holds no frames.*seq1'):
    P.open_frames(str(empty))
  with pytest.raises(P.PredictError, match='does not exist'):
    P.open_frames(str(tmp_path / 'nope'))
  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(b'this is not a video')
  with pytest.raises(P.PredictError, match=str(bad)):
    P.open_frames(str(bad))


def test_check_output_dir(tmp_path):
  P.check_output_dir(str(tmp_path / 'new'))
  (tmp_path / 'empty').mkdir()
  P.check_output_dir(str(tmp_path / 'empty'))
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x.txt').write_text('x')
  with pytest.raises(P.PredictError, match=r'full.*not empty.*rm -r'):
    P.check_output_dir(str(tmp_path / 'full'))


@pytest.mark.parametrize('exception', [RuntimeError, KeyboardInterrupt])
def test_atomic_output_dir_cleans_up(tmp_path, exception):
  target = tmp_path / 'out'
  with pytest.raises(exception):
    with P.atomic_output_dir(str(target)) as tmp:
      open(os.path.join(tmp, 'half.png'), 'w').close()
      raise exception()
  assert not target.exists()
  assert os.listdir(tmp_path) == []


def test_movie_writer_mp4_odd_size_and_gif_fallback(tmp_path, monkeypatch):
  frames = square_video(5, 25, 37)
  movie = P.MovieWriter(str(tmp_path), 'm', 10.0, len(frames))
  for f in frames:
    movie.add(f)
  path = movie.close()
  assert movie.kind == 'mp4' and path.endswith('.mp4')
  capture = cv2.VideoCapture(path)
  count = 0
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    count += 1
    assert frame.shape[:2] == (26, 38)  # padded to even sizes, nothing cropped
  assert count == 5

  class BrokenWriter:
    def __init__(self, *args, **kwargs):
      pass

    def isOpened(self):  # pylint: disable=invalid-name
      return False

    def release(self):
      pass

  monkeypatch.setattr(cv2, 'VideoWriter', BrokenWriter)
  movie = P.MovieWriter(str(tmp_path), 'g', 10.0, len(frames))
  for f in frames:
    movie.add(f)
  path = movie.close()
  assert movie.kind == 'gif' and path.endswith('.gif')
  with Image.open(path) as gif:
    assert gif.n_frames == 5
  assert not os.path.exists(tmp_path / 'g.mp4')


# ------------------------------------------------------------------------------------------------
# The streaming loop with stand-ins.


class CompilingSegmenter(BrightnessSegmenter):
  """Its first encode and first segment 'compile': they sleep and count the time as compilation."""

  def __init__(self, delay, **kwargs):
    super().__init__(**kwargs)
    self.delay, self.compile_seconds, self.seen = delay, 0.0, set()

  def _maybe_compile(self, name):
    if name not in self.seen:
      self.seen.add(name)
      time.sleep(self.delay)
      self.compile_seconds += self.delay

  def encode(self, ref_rgb, ref_flow):
    self._maybe_compile('encode')
    return super().encode(ref_rgb, ref_flow)

  def segment(self, rgb, flow, references, frame_indices):
    self._maybe_compile('segment')
    return super().segment(rgb, flow, references, frame_indices)


def test_compilation_is_left_out_of_the_timings(tmp_path):
  """Both the encode and the batch program compile on first use; neither counts as model time."""
  folder = write_folder(square_video(5, 40, 40), str(tmp_path / 'frames'))
  out = str(tmp_path / 'out')
  os.makedirs(out)
  report = P.segment_video(P.open_frames(folder), DifferenceFlow(), CompilingSegmenter(0.5, size=32, batch_size=2),
                           out, num_refs=2, progress=False)
  timings = report['timings_s']
  assert timings['compile'] >= 1.0
  assert timings['model'] < 0.4 and timings['encode_references'] < 0.4
  assert timings['total'] < sum(v for k, v in timings.items() if k not in ('total', 'compile')) + 0.4


def test_segment_video_streams_in_padded_batches(tmp_path):
  frames = square_video(7, 50, 75)  # odd size and aspect ratio
  folder = write_folder(frames, str(tmp_path / 'frames'))
  segmenter = BrightnessSegmenter(size=32, batch_size=3)
  out = str(tmp_path / 'out')
  os.makedirs(out)
  report = P.segment_video(P.open_frames(folder), DifferenceFlow(), segmenter, out, num_refs=4, progress=False)
  assert segmenter.encode_calls == 1
  assert segmenter.batch_shapes == [(3, 32, 32, 3)] * 3  # 3 + 3 + 1 padded to 3
  assert [list(i) for i in segmenter.indices] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
  assert [r['index'] for r in report['reference_frames']] == [0, 1, 2, 3]
  names = sorted(os.listdir(os.path.join(out, 'masks')), key=P.natural_key)
  assert names == [f'frame{i}.png' for i in range(7)]
  for i, frame in enumerate(frames):
    mask = read_mask(os.path.join(out, 'masks', f'frame{i}.png'))
    assert mask.shape == (50, 75)
    assert set(np.unique(mask)) <= {0, 1}
    expected = P.probability_to_mask(
        BrightnessSegmenter().segment(P.preprocess_rgb([frame], 32), None, None, [i])[0], 50, 75, 0.5)
    assert np.array_equal(mask, expected)
    assert mask.sum() > 0  # the yellow square is found
  assert len(os.listdir(os.path.join(out, 'overlays'))) == 7
  assert report['movie'] == 'overlay.mp4' and os.path.getsize(os.path.join(out, 'overlay.mp4')) > 0
  assert report['frames_per_second']['including_flow'] <= report['frames_per_second']['excluding_flow']


@pytest.mark.parametrize('flow', [DifferenceFlow(), P.ComputedFlow('dis')], ids=['standin', 'dis'])
def test_reference_flows_match_streaming_flows(tmp_path, flow):
  frames = square_video(9, 32, 48)
  source = P.open_frames(write_folder(frames, str(tmp_path / 'f')))
  whole = flow.for_frames(0, frames, None, None)
  # In batches of 4 with one frame of overlap, as segment_video streams them.
  streamed = flow.for_frames(0, frames[:4], frames[4], None)
  streamed += flow.for_frames(4, frames[4:8], frames[8], streamed[-1])
  streamed += flow.for_frames(8, frames[8:], None, streamed[-1])
  assert len(streamed) == 9 and all(np.array_equal(a, b) for a, b in zip(whole, streamed))
  assert np.array_equal(streamed[8], streamed[7])  # the last frame reuses the previous flow
  refs = P.reference_flows(flow, source, [0, 4, 8], {})
  for i, image in zip([0, 4, 8], refs):
    assert np.array_equal(image, streamed[i])


# ------------------------------------------------------------------------------------------------
# Video files against frame folders; interruption; input errors of predict().


def write_video(frames, path, fourcc):
  height, width = frames[0].shape[:2]
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10, (width, height))
  assert writer.isOpened(), f'no {fourcc} encoder'
  for frame in frames:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()
  return path


def decode_to_folder(video, folder):
  """Decodes a video with a plain OpenCV loop (independent of predict.py) into PNG frames."""
  os.makedirs(folder)
  capture = cv2.VideoCapture(video)
  i = 0
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).save(os.path.join(folder, f'{i:05d}.png'))
    i += 1
  return folder


def masks_of(out):
  names = sorted(os.listdir(os.path.join(out, 'masks')), key=P.natural_key)
  return [read_mask(os.path.join(out, 'masks', n)) for n in names]


def run_standin(input_path, out, **kwargs):
  with P.atomic_output_dir(out) as tmp:
    return P.segment_video(P.open_frames(input_path), DifferenceFlow(), BrightnessSegmenter(), tmp,
                           progress=False, **kwargs)


def test_video_file_and_frame_folder_give_the_same_masks(tmp_path):
  frames = square_video(8, 48, 64)
  folder = write_folder(frames, str(tmp_path / 'frames'))
  # Lossless (FFV1): the video reader must give exactly the folder's pixels, in the same order.
  lossless = write_video(frames, str(tmp_path / 'lossless.mkv'), 'FFV1')
  run_standin(folder, str(tmp_path / 'out_folder'))
  run_standin(lossless, str(tmp_path / 'out_mkv'))
  folder_masks, mkv_masks = masks_of(str(tmp_path / 'out_folder')), masks_of(str(tmp_path / 'out_mkv'))
  assert len(mkv_masks) == 8 and all(np.array_equal(a, b) for a, b in zip(folder_masks, mkv_masks))
  assert os.listdir(tmp_path / 'out_mkv' / 'masks')[0].startswith('0000')
  # MP4 (lossy): the same masks as the PNG frames decoded from that MP4, and close to the originals.
  mp4 = write_video(frames, str(tmp_path / 'video.mp4'), 'mp4v')
  decoded = decode_to_folder(mp4, str(tmp_path / 'decoded'))
  run_standin(mp4, str(tmp_path / 'out_mp4'))
  run_standin(decoded, str(tmp_path / 'out_decoded'))
  mp4_masks = masks_of(str(tmp_path / 'out_mp4'))
  assert all(np.array_equal(a, b) for a, b in zip(mp4_masks, masks_of(str(tmp_path / 'out_decoded'))))
  for a, b in zip(mp4_masks, folder_masks):
    assert (a & b).sum() / max((a | b).sum(), 1) > 0.8


def test_interrupted_run_leaves_no_output(tmp_path):
  folder = write_folder(square_video(7, 20, 30), str(tmp_path / 'frames'))

  def fail_at_second_batch(start):
    if start > 0:
      raise KeyboardInterrupt()

  with pytest.raises(KeyboardInterrupt):
    run_standin(folder, str(tmp_path / 'out'), on_batch=fail_at_second_batch)
  assert sorted(os.listdir(tmp_path)) == ['frames']


def test_predict_input_errors(tmp_path):
  folder = write_folder(square_video(1, 20, 30), str(tmp_path / 'one'))
  with pytest.raises(P.PredictError, match=r'single frame.*--flow'):
    P.predict('unused', folder, str(tmp_path / 'out'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(P.PredictError, match=r'empty.*holds no frames'):
    P.predict('unused', str(tmp_path / 'empty'), str(tmp_path / 'out'))
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'notes.txt').write_text('mine')
  with pytest.raises(P.PredictError, match=r'taken.*not empty'):
    P.predict('unused', folder, str(tmp_path / 'taken'))
  with pytest.raises(P.PredictError, match='threshold'):
    P.predict('unused', folder, str(tmp_path / 'out'), threshold=1.5)
  assert not (tmp_path / 'out').exists()
  assert (tmp_path / 'taken' / 'notes.txt').read_text() == 'mine'


# ------------------------------------------------------------------------------------------------
# The real model, end to end through predict(): a tiny GSA-Net checkpoint in a workdir.


@pytest.fixture(scope='module', autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent XLA cache for this module: later predict() calls reuse the first one's programs."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  before = {n: getattr(jax.config, n) for n in names}
  jax.config.update(names[0], str(tmp_path_factory.mktemp('xla_cache')))
  jax.config.update(names[1], 0)
  jax.config.update(names[2], 0)
  cc.reset_cache()
  yield
  for n, v in before.items():
    jax.config.update(n, v)
  cc.reset_cache()


def tiny_config(**model):
  from configs import demo
  config = demo.get_config()
  config.data.image_size = 32
  config.eval.batch_size = 4
  config.model.update({**dict(dim=16, num_clusters=4, knn_k=2, kmeans_iters=2, slot_iters=1), **model})
  return config


def random_variables(config, seed=0):
  """Random weights of the right shapes without compiling init (eval_shape, then numpy draws)."""
  import jax
  from gsa_jax.models.gsanet import network as models
  model = models.build_model(config.model)
  shapes = P.abstract_variables(model, config, 32)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if 'kernel' in name:
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(leaf.dtype)
    if 'scale' in name or 'var' in name:
      return np.ones(leaf.shape, leaf.dtype)
    if 'bias' in name or 'mean' in name:
      return np.zeros(leaf.shape, leaf.dtype)
    return (0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)

  return model, jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir laid out by the trainer's checkpoint API: step 1 (val G 0.6, the best) and step 2 (G 0.4)."""
  from gsa_jax import checkpoint as ckpt_lib
  config = tiny_config()
  _, variables = random_variables(config)
  path = str(tmp_path_factory.mktemp('workdir'))
  manager = ckpt_lib.create_manager(ckpt_lib.checkpoint_directory(path), keep=3)
  for step, g in ((1, 0.6), (2, 0.4)):
    meta = {'kind': 'video', 'model': ckpt_lib.config_to_json(config.model),
            'config': ckpt_lib.config_to_json(config)}
    state = {'step': np.int32(step), **(variables if step == 1 else
                                        {'params': variables['params'], 'batch_stats': variables['batch_stats']})}
    ckpt_lib.save(manager, step, state, meta, val_metrics={'G': g})
  manager.close()
  return path, config, variables


def write_flow_folder(frames, folder):
  os.makedirs(folder)
  for i, image in enumerate(DifferenceFlow().for_frames(0, frames, None, None)):
    Image.fromarray(image).save(os.path.join(folder, f'{i:05d}.png'))
  return folder


def synthetic_video(num_frames, height, width):
  """A generated synthetic video (input_pipeline.synthetic), resized to height x width."""
  from input_pipeline import synthetic
  scene = synthetic.make_scene(synthetic.video_rng(0, 'test', 0), image_size=64, num_frames=num_frames,
                               difficulty=0.3)
  rgb = synthetic.render_video(scene)['rgb']
  return [cv2.resize(np.clip(np.round(f * 255), 0, 255).astype(np.uint8), (width, height),
                     interpolation=cv2.INTER_AREA) for f in rgb]


def test_predict_end_to_end_odd_size_and_cached_equals_uncached(workdir, tmp_path):
  path, config, variables = workdir
  frames = synthetic_video(7, 50, 75)  # odd size, 3:2 aspect ratio; 7 frames = batches of 4 + 3 (padded)
  folder = write_folder(frames, str(tmp_path / 'frames'))
  out = str(tmp_path / 'out')
  report = P.predict(path, folder, out, progress=False)  # flow computed (DIS)

  assert sorted(os.listdir(out)) == ['masks', 'overlay.mp4', 'overlays', 'predictions.json']
  masks = masks_of(out)
  assert len(masks) == 7 and all(m.shape == (50, 75) and set(np.unique(m)) <= {0, 1} for m in masks)
  saved = json.load(open(os.path.join(out, 'predictions.json')))
  assert saved['checkpoint']['step'] == 1 and saved['checkpoint']['selected_by'] == 'best validation G'
  assert [r['index'] for r in saved['reference_frames']] == [0, 3]  # N_R = 2: i * (7 // 2)
  assert saved['num_frames'] == 7 and saved['model_size'] == [32, 32] and saved['batch_size'] == 4
  assert saved['frames_per_second']['excluding_flow'] > 0 and saved['timings_s']['compile'] > 0
  assert report['frames'][6]['mask'] == 'masks/frame6.png'

  # Cached references + batched program == one full GSANet.__call__ per frame (references re-encoded).
  from gsa_jax.models.gsanet import network as models
  model = models.build_model(config.model)
  source = P.open_frames(folder)
  flows = P.ComputedFlow('dis').for_frames(0, frames, None, None)
  ref_rgb = P.preprocess_rgb([frames[0], frames[3]], 32)[None]
  ref_flow = P.preprocess_flow([flows[0], flows[3]], 32)[None]
  forward = P.full_forward(model, kmeans_seed=config.eval.kmeans_seed)
  for i, frame in enumerate(source.iter_frames()):
    prob = np.asarray(forward(variables, P.preprocess_rgb([frame], 32), P.preprocess_flow([flows[i]], 32),
                              ref_rgb, ref_flow, i))[0]
    assert abs(float(prob.mean()) - saved['frames'][i]['mean_probability']) < 1e-5
    expected = P.probability_to_mask(prob, 50, 75, 0.5)
    assert (expected != masks[i].astype(bool)).mean() < 1e-3


def test_predict_interrupted_leaves_nothing(workdir, tmp_path):
  path = workdir[0]
  frames = square_video(9, 40, 40)
  folder = write_folder(frames, str(tmp_path / 'frames'))
  flow_dir = write_flow_folder(frames, str(tmp_path / 'flow'))

  def boom(start):
    if start >= 4:
      raise RuntimeError('injected failure')

  with pytest.raises(RuntimeError, match='injected'):
    P.predict(path, folder, str(tmp_path / 'out'), flow_dir=flow_dir, progress=False, on_batch=boom)
  assert sorted(os.listdir(tmp_path)) == ['flow', 'frames']


def test_predict_rejects_checkpoint_of_another_config(workdir, tmp_path):
  folder = write_folder(square_video(3, 32, 32), str(tmp_path / 'frames'))
  with pytest.raises(P.PredictError, match=r'does not fit the model.*shape.*leave it out'):
    P.predict(workdir[0], folder, str(tmp_path / 'out'), config=tiny_config(dim=24), progress=False)
  assert not (tmp_path / 'out').exists()
