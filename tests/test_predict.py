"""Tests of predict and the one inference path: reading frames, streaming, atomic output, the movie, the report,
and the real model end to end (cached context == a full forward per frame)."""

import json
import os
import time

import cv2
import jax
import numpy as np
from PIL import Image
import pytest

from gsa_jax import checkpoint as ckpt_lib
from gsa_jax import inference
from gsa_jax import movie as movie_lib
from gsa_jax import predict as P
from gsa_jax import registry
from gsa_jax.bench import timing
from input_pipeline import frames as frames_lib
from input_pipeline import images as image_io


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


class DifferenceFlow(frames_lib.FlowSource):
  """Stand-in flow: the absolute frame difference as an image (deterministic, needs two frames)."""

  description = {'source': 'test'}

  @staticmethod
  def _pairs(sequence):
    return [np.abs(sequence[k].astype(np.int16) - sequence[k + 1].astype(np.int16)).astype(np.uint8)
            for k in range(len(sequence) - 1)]

  def for_frames(self, start, frames, next_frame, previous_flow):
    flows = self._pairs(list(frames) + ([next_frame] if next_frame is not None else []))
    if next_frame is None:
      flows.append(flows[-1] if flows else previous_flow)
    return flows

  def at(self, frames, indices, known):
    all_frames = list(frames.iter_frames())
    return [self._pairs(all_frames[i:i + 2])[0] if i + 1 < len(all_frames) else self._pairs(all_frames[i - 1:])[0]
            for i in indices]


class BrightnessSegmenter(inference.Segmenter):
  """Stand-in model: foreground where the red channel is bright; records its calls."""

  modalities = ('rgb', 'flow')

  def __init__(self, size=32, batch_size=3, num_refs=4):
    self.size, self.batch_size, self.num_refs = size, batch_size, num_refs
    self.encode_calls, self.batch_shapes, self.indices = 0, [], []
    self.compile_seconds = 0.0

  def context_indices(self, num_frames):
    return [i * (num_frames // self.num_refs) for i in range(self.num_refs)]

  def encode(self, context):
    self.encode_calls += 1
    return float(context['rgb'].mean())

  def segment(self, inputs, frame_indices, context, *, extras=False):
    self.batch_shapes.append(inputs['rgb'].shape)
    self.indices.append(np.asarray(frame_indices))
    return {'prob': 1.0 / (1.0 + np.exp(-4.0 * (inputs['rgb'][..., 0] - 1.0)))}

  def set_variables(self, variables):
    pass


def read_mask(path):
  with Image.open(path) as image:
    assert image.mode == 'P'
    return np.array(image)


def masks_of(out):
  names = sorted(os.listdir(os.path.join(out, 'masks')), key=image_io.natural_key)
  return [read_mask(os.path.join(out, 'masks', n)) for n in names]


def run_standin(input_path, out, segmenter=None, **kwargs):
  with image_io.atomic_output_dir(out) as tmp:
    return P.segment_into(tmp, segmenter or BrightnessSegmenter(), frames_lib.open_frames(input_path),
                          DifferenceFlow(), **kwargs)


# ------------------------------------------------------------------------------------------------
# Pure parts.


def test_folder_natural_order_and_errors(tmp_path):
  folder = write_folder(square_video(12, 8, 8), str(tmp_path / 'seq1'))
  source = frames_lib.open_frames(folder)
  assert source.names == [f'frame{i}' for i in range(12)]
  assert len(list(source.iter_frames())) == 12 and set(source.read([0, 11])) == {0, 11}
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'seq1').mkdir()
  with pytest.raises(image_io.DataError, match=r'holds no frames.*seq1'):
    frames_lib.open_frames(str(empty))
  with pytest.raises(image_io.DataError, match='does not exist'):
    frames_lib.open_frames(str(tmp_path / 'nope'))
  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(b'not a video at all')
  with pytest.raises(image_io.DataError, match=str(bad)):
    frames_lib.open_frames(str(bad))


def test_check_output_dir(tmp_path):
  P.check_output_dir(str(tmp_path / 'new'))
  (tmp_path / 'empty').mkdir()
  P.check_output_dir(str(tmp_path / 'empty'))
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x').write_text('x')
  with pytest.raises(P.PredictError, match=r'full.*not empty.*rm -r'):
    P.check_output_dir(str(tmp_path / 'full'))


def test_movie_is_h264_readable_back_and_gif_fallback(tmp_path, monkeypatch):
  import av
  frames = square_video(5, 25, 37)
  movie = movie_lib.MovieWriter(str(tmp_path), 'm', 10.0, len(frames))
  for f in frames:
    movie.add(f)
  path = movie.close()
  assert movie.kind == 'mp4' and path.endswith('.mp4')
  with av.open(path) as container:
    stream = container.streams.video[0]
    assert stream.codec_context.name == 'h264' and stream.codec_context.pix_fmt == 'yuv420p'
    decoded = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]
  assert len(decoded) == 5 and all(f.shape == (26, 38, 3) for f in decoded)  # padded to even sizes
  assert np.abs(decoded[2][:25, :37].astype(int) - frames[2]).mean() < 12  # the same picture

  def no_encoder(*args, **kwargs):
    raise av.error.FFmpegError(0, 'no encoder')

  monkeypatch.setattr(av, 'open', no_encoder)
  movie = movie_lib.MovieWriter(str(tmp_path), 'g', 10.0, len(frames))
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
    self.delay, self.seen = delay, set()

  def _maybe_compile(self, name):
    if name not in self.seen:
      self.seen.add(name)
      time.sleep(self.delay)
      self.compile_seconds += self.delay

  def encode(self, context):
    self._maybe_compile('encode')
    return super().encode(context)

  def segment(self, inputs, frame_indices, context, *, extras=False):
    self._maybe_compile('segment')
    return super().segment(inputs, frame_indices, context, extras=extras)


def test_compilation_is_left_out_of_the_timings(tmp_path):
  """Both the encode and the batch program compile on first use; neither counts as model time."""
  folder = write_folder(square_video(5, 40, 40), str(tmp_path / 'frames'))
  report = run_standin(folder, str(tmp_path / 'out'), CompilingSegmenter(0.5, size=32, batch_size=2, num_refs=2))
  timings = report['timings_s']
  assert timings['compile'] >= 1.0
  assert timings['model'] < 0.4 and timings['encode'] < 0.4
  assert timings['total'] < sum(v for k, v in timings.items() if k not in ('total', 'compile')) + 0.4


def test_streams_in_padded_batches_and_writes_palette_masks(tmp_path):
  frames = square_video(7, 50, 75)  # odd size and aspect ratio
  folder = write_folder(frames, str(tmp_path / 'frames'))
  segmenter = BrightnessSegmenter(size=32, batch_size=3)
  out = str(tmp_path / 'out')
  report = run_standin(folder, out, segmenter)
  assert segmenter.encode_calls == 1
  assert segmenter.batch_shapes == [(3, 32, 32, 3)] * 3  # 3 + 3 + 1 padded to 3
  assert [list(i) for i in segmenter.indices] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
  assert [r['index'] for r in report['context_frames']] == [0, 1, 2, 3]
  masks = masks_of(out)
  assert len(masks) == 7
  for i, frame in enumerate(frames):
    mask = masks[i]
    assert mask.shape == (50, 75) and set(np.unique(mask)) <= {0, 1}
    prob = BrightnessSegmenter().segment({'rgb': frames_lib.prepare_rgb([frame], 32)}, [i], None)['prob'][0]
    assert np.array_equal(mask, inference.probability_to_mask(prob, 50, 75, 0.5))
    assert mask.sum() > 0  # the yellow square is found
  assert len(os.listdir(os.path.join(out, 'overlays'))) == 7
  assert report['movie'] == 'overlay.mp4' and os.path.getsize(os.path.join(out, 'overlay.mp4')) > 0
  assert report['frames_per_second']['including_flow'] <= report['frames_per_second']['excluding_flow']
  assert oct(os.stat(out).st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


def test_frames_of_different_sizes_are_refused(tmp_path):
  frames = square_video(4, 20, 30)
  frames[2] = square_video(1, 22, 30)[0]
  folder = write_folder(frames, str(tmp_path / 'frames'))
  with pytest.raises(image_io.DataError, match=r'frame2 .* is 22x30 but the first frame is 20x30'):
    run_standin(folder, str(tmp_path / 'out'), BrightnessSegmenter(num_refs=1))
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('flow', [DifferenceFlow(), frames_lib.ComputedFlow('dis')], ids=['standin', 'dis'])
def test_context_flows_match_streaming_flows(tmp_path, flow):
  frames = square_video(9, 32, 48)
  source = frames_lib.open_frames(write_folder(frames, str(tmp_path / 'f')))
  whole = flow.for_frames(0, frames, None, None)
  # In batches of 4 with one frame of overlap, as run_video streams them.
  streamed = flow.for_frames(0, frames[:4], frames[4], None)
  streamed += flow.for_frames(4, frames[4:8], frames[8], streamed[-1])
  streamed += flow.for_frames(8, frames[8:], None, streamed[-1])
  assert len(streamed) == 9 and all(np.array_equal(a, b) for a, b in zip(whole, streamed))
  assert np.array_equal(streamed[8], streamed[7])  # the last frame reuses the previous flow
  for i, image in zip([0, 4, 8], flow.at(source, [0, 4, 8], {})):
    assert np.array_equal(image, streamed[i])


def test_dis_flow_of_large_frames_runs_at_a_bounded_size():
  frames = [cv2.resize(f, (1600, 1200)) for f in square_video(2, 60, 80)]
  small = frames_lib.ComputedFlow('dis', max_side=256)
  image = small.for_frames(0, frames[:1], frames[1], None)[0]
  assert image.shape == (1200, 1600, 3)
  reduced = [frames_lib.resize(f, (192, 256)) for f in frames]  # 1600 x 1200 at most 256 a side
  reference = frames_lib.ComputedFlow('dis', max_side=256).for_frames(0, reduced[:1], reduced[1], None)[0]
  np.testing.assert_array_equal(image, frames_lib.resize(reference, (1200, 1600)))


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
  """Decodes a video with a plain PyAV loop (independent of input_pipeline.frames) into PNG frames."""
  import av
  os.makedirs(folder)
  with av.open(video) as container:
    for i, frame in enumerate(container.decode(video=0)):
      Image.fromarray(frame.to_ndarray(format='rgb24')).save(os.path.join(folder, f'{i:05d}.png'))
  return folder


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


def test_predict_input_errors(tmp_path, workdir):
  folder = write_folder(square_video(1, 20, 30), str(tmp_path / 'one'))
  with pytest.raises(P.PredictError, match=r'single frame.*--flow'):
    P.predict(workdir[0], folder, str(tmp_path / 'out'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(image_io.DataError, match=r'empty.*holds no frames'):
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
  from configs import gsanet_demo as demo
  config = demo.get_config()
  config.data.image_size = 32
  config.eval.batch_size = 4
  config.model.update({**dict(dim=16, num_clusters=4, knn_k=2, kmeans_iters=2, slot_iters=1), **model})
  return config


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir laid out by the trainer's checkpoint API: step 1 (val G 0.6, the best) and step 2 (G 0.4)."""
  config = tiny_config()
  model = registry.build(config)
  variables = jax.tree.map(np.asarray, timing.random_variables(model.abstract_variables(), 0))
  path = str(tmp_path_factory.mktemp('workdir'))
  manager = ckpt_lib.create_manager(ckpt_lib.checkpoint_directory(path), keep=3)
  for step, g in ((1, 0.6), (2, 0.4)):
    meta = {'model': ckpt_lib.config_to_json(config.model), 'config': ckpt_lib.config_to_json(config)}
    shifted = variables if step == 1 else jax.tree.map(lambda x: x + 1.0, variables)
    ckpt_lib.save(manager, step, {'step': np.int32(step), **shifted}, meta, val_metrics={'G': g})
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
  assert saved['checkpoint']['step'] == 1 and saved['checkpoint']['selected_by'] == 'best validation'
  assert [r['index'] for r in saved['context_frames']] == [0, 3]  # N_R = 2: i * (7 // 2)
  assert saved['num_frames'] == 7 and saved['inference']['size'] == 32 and saved['inference']['batch_size'] == 4
  assert saved['frames_per_second']['excluding_flow'] > 0 and saved['timings_s']['compile'] > 0
  assert saved['movie_format'] == 'mp4' and report['frames'][6]['mask'] == 'masks/frame6.png'

  # Cached references + batched program == one full GSANet forward per frame (references re-encoded).
  model = registry.build(config)
  flows = frames_lib.ComputedFlow('dis').for_frames(0, frames, None, None)
  ref_rgb = frames_lib.prepare_rgb([frames[0], frames[3]], 32)[None]
  ref_flow = frames_lib.prepare_flow([flows[0], flows[3]], 32)[None]

  @jax.jit
  def forward(rgb, flow, i):
    key = jax.random.fold_in(jax.random.key(config.eval.seed), i)
    out = model.module.apply(variables, rgb, flow, ref_rgb, ref_flow, train=False, kmeans_key=key)
    return jax.nn.sigmoid(out['logits'][..., 0])

  for i, frame in enumerate(frames):
    prob = np.asarray(forward(frames_lib.prepare_rgb([frame], 32), frames_lib.prepare_flow([flows[i]], 32), i))[0]
    assert abs(float(prob.mean()) - saved['frames'][i]['mean_probability']) < 1e-5
    expected = inference.probability_to_mask(prob, 50, 75, 0.5)
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
  with pytest.raises(P.PredictError, match=r'different model.*dim: checkpoint 16, config 24[\s\S]*shape[\s\S]*'
                                           r'leave --config out'):
    P.predict(workdir[0], folder, str(tmp_path / 'out'), config=tiny_config(dim=24), progress=False)
  assert not (tmp_path / 'out').exists()
