"""Optical flow: Middlebury colours against hand-worked values, .flo files, OpenCV flow, the flow command."""

import os

import cv2
import numpy as np
import pytest

from input_pipeline import flow
from input_pipeline.images import DataError


def _texture(size=96, seed=0):
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (size // 6, size // 6)).astype(np.float32)
  img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
  img = np.clip(img, 0, 255).astype(np.uint8)
  return np.stack([img, img[::-1], img[:, ::-1]], axis=-1)


def test_colour_wheel_segments():
  wheel = flow.make_colorwheel()
  assert wheel.shape == (55, 3)
  # First entry of each segment RY, YG, GC, CB, BM, MR, and hand-worked ramp values.
  np.testing.assert_array_equal(wheel[[0, 15, 21, 25, 36, 49]],
                                [[255, 0, 0], [255, 255, 0], [0, 255, 0], [0, 255, 255], [0, 0, 255], [255, 0, 255]])
  np.testing.assert_array_equal(wheel[14], [255, 238, 0])  # floor(255 * 14 / 15)
  np.testing.assert_array_equal(wheel[27], [0, 209, 255])  # 255 - floor(255 * 2 / 11)
  np.testing.assert_array_equal(wheel[54], [255, 0, 43])  # 255 - floor(255 * 5 / 6)


def test_flow_to_image_hand_worked_values():
  # Max radius 1: (u, v) = (0, 1) -> a = -1/2 -> fk = 13.5 -> halfway between [255,221,0] and [255,238,0]:
  # G = floor(255 * (1 - 0.99999 * (1 - 229.5 / 255))) = 229.
  # (u, v) = (-0.5, 0) -> a = 0 -> fk = 27 -> [0, 209, 255] at radius ~0.5:
  # R = floor(255 * (1 - 0.499995)) = 127, G = floor(255 * (1 - 0.499995 * 46 / 255)) = 232, B = 255.
  image = flow.flow_to_image(np.array([[[0.0, 1.0], [-0.5, 0.0]]]))
  np.testing.assert_array_equal(image, [[[255, 229, 0], [127, 232, 255]]])
  # (1, 0) -> a = -1 -> red; zero flow -> white.
  np.testing.assert_array_equal(flow.flow_to_image(np.array([[[1.0, 0.0]]])), [[[255, 0, 0]]])
  np.testing.assert_array_equal(flow.flow_to_image(np.zeros((1, 1, 2))), [[[255, 255, 255]]])


def _smooth_flow(h=40, w=50):
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([np.sin(x / 7.0) * 3 + np.cos(y / 5.0), np.cos(x / 9.0) * 2 - y / 20.0], -1)


def test_mirror_flow_image_recodes_colours():
  f = _smooth_flow()
  mirrored = f[:, ::-1].copy()
  mirrored[..., 0] *= -1
  expected = flow.flow_to_image(mirrored).astype(int)
  ours = flow.mirror_flow_image(flow.flow_to_image(f)).astype(int)
  naive = flow.flow_to_image(f)[:, ::-1].astype(int)
  assert np.abs(ours - expected).max() <= 6 and np.abs(ours - expected).mean() < 1.0
  assert np.abs(naive - expected).mean() > 20  # a plain flip is wrong


def test_image_to_flow_decodes():
  f = _smooth_flow()
  radius = np.sqrt((f ** 2).sum(-1)).max()
  np.testing.assert_allclose(flow.image_to_flow(flow.flow_to_image(f)) * radius, f, atol=0.1)


def test_flo_round_trip_and_bad_file(tmp_path):
  f = _smooth_flow(7, 5).astype(np.float32)
  path = str(tmp_path / 'a.flo')
  flow.write_flo(path, f)
  with open(path, 'rb') as fh:
    assert np.frombuffer(fh.read(4), '<f4')[0] == np.float32(202021.25)
  np.testing.assert_array_equal(flow.read_flo(path), f)
  bad = tmp_path / 'bad.flo'
  bad.write_bytes(b'XXXX' + b'\0' * 20)  # 'PIEH' would be the valid magic
  with pytest.raises(DataError, match='bad.flo.*magic'):
    flow.read_flo(str(bad))


@pytest.mark.parametrize('method', ['dis', 'farneback'])
def test_flow_recovers_known_shift(method):
  image = _texture(96)
  dx, dy = 3, 2
  shifted = np.roll(image, (dy, dx), axis=(0, 1))  # content moves right by dx, down by dy
  (field,) = flow.compute_flow_frames([image, shifted], method=method)
  inner = field[16:-16, 16:-16].reshape(-1, 2)
  median = np.median(inner, axis=0)
  tol = 0.5 if method == 'dis' else 1.0
  assert abs(median[0] - dx) < tol and abs(median[1] - dy) < tol, median
  if method == 'dis':
    assert np.mean(np.abs(inner - [dx, dy]).max(-1) < 0.5) > 0.9


def _write_frames(folder, n=3, size=48, names=None):
  os.makedirs(folder, exist_ok=True)
  base = _texture(size)
  for i in range(n):
    name = names[i] if names else f'{i:05d}'
    cv2.imwrite(os.path.join(folder, name + '.jpg'), np.roll(base, i, axis=1)[..., ::-1])


def test_flow_command_on_folder_and_flo(tmp_path):
  frames = str(tmp_path / 'frames')
  _write_frames(frames, 3)
  out = str(tmp_path / 'flow')
  flow.compute_flow_for_input(frames, out, save_raw=True, show_progress=False)
  assert sorted(os.listdir(out)) == ['00000.flo', '00000.jpg', '00001.flo', '00001.jpg', '00002.flo', '00002.jpg']
  # The last frame reuses the previous flow.
  np.testing.assert_array_equal(flow.read_flo(os.path.join(out, '00002.flo')), flow.read_flo(os.path.join(out, '00001.flo')))
  assert np.median(flow.read_flo(os.path.join(out, '00000.flo'))[..., 0]) == pytest.approx(1.0, abs=0.5)
  # A folder of .flo files becomes flow images.
  flo_dir = tmp_path / 'flo'
  flo_dir.mkdir()
  for name in ('00000', '00001'):
    flow.write_flo(str(flo_dir / f'{name}.flo'), _smooth_flow(8, 8))
  out2 = str(tmp_path / 'flow2')
  flow.compute_flow_for_input(str(flo_dir), out2, show_progress=False)
  assert sorted(os.listdir(out2)) == ['00000.jpg', '00001.jpg']


def test_flow_command_folder_of_videos_and_flat(tmp_path):
  _write_frames(str(tmp_path / 'in' / 'bear'), 2)
  _write_frames(str(tmp_path / 'in' / 'car'), 3)
  flow.compute_flow_for_input(str(tmp_path / 'in'), str(tmp_path / 'out'), show_progress=False)
  assert sorted(os.listdir(tmp_path / 'out' / 'car')) == ['00000.jpg', '00001.jpg', '00002.jpg']
  # A flat folder of two videos: no flow across the video boundary (each video's last frame copies).
  _write_frames(str(tmp_path / 'flat'), 4, names=['a_00000', 'a_00001', 'b_00000', 'b_00001'])
  flow.compute_flow_for_input(str(tmp_path / 'flat'), str(tmp_path / 'flat_out'), save_raw=True, show_progress=False)
  a0 = flow.read_flo(str(tmp_path / 'flat_out' / 'a_00000.flo'))
  a1 = flow.read_flo(str(tmp_path / 'flat_out' / 'a_00001.flo'))
  np.testing.assert_array_equal(a0, a1)


def test_flow_command_video_file(tmp_path):
  path = str(tmp_path / 'v.avi')
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 5, (48, 48))
  base = _texture(48)
  for i in range(3):
    writer.write(np.ascontiguousarray(np.roll(base, i, axis=1)[..., ::-1]))
  writer.release()
  out = str(tmp_path / 'out')
  flow.compute_flow_for_input(path, out, show_progress=False)
  assert sorted(os.listdir(out)) == ['00000.jpg', '00001.jpg', '00002.jpg']


def test_flow_command_bad_inputs_leave_nothing(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(DataError, match='empty'):
    flow.compute_flow_for_input(str(empty), str(tmp_path / 'o1'), show_progress=False)
  video = tmp_path / 'broken.mp4'
  video.write_bytes(b'not a video at all' * 10)
  with pytest.raises(DataError, match='broken.mp4'):
    flow.compute_flow_for_input(str(video), str(tmp_path / 'o2'), show_progress=False)
  frames = str(tmp_path / 'frames')
  _write_frames(frames, 3)
  with open(os.path.join(frames, '00001.jpg'), 'wb') as f:
    f.write(b'\xff\xd8 corrupt')
  with pytest.raises(DataError, match='00001.jpg.*cannot decode'):
    flow.compute_flow_for_input(frames, str(tmp_path / 'o3'), show_progress=False)
  sizes = str(tmp_path / 'sizes')
  _write_frames(sizes, 2)
  cv2.imwrite(os.path.join(sizes, '00002.jpg'), np.zeros((20, 30, 3), np.uint8))
  with pytest.raises(DataError, match='00002.jpg.*one size'):
    flow.compute_flow_for_input(sizes, str(tmp_path / 'o4'), show_progress=False)
  for name in ('o1', 'o2', 'o3', 'o4'):
    assert not os.path.exists(tmp_path / name)
  assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]  # no temporary folder left
