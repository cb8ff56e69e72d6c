"""SOLV's data and weights: the 'clips' training input on generated multi-object videos (against a numpy /
PIL re-statement of the released loader), black-border removal, and --mode=convert of a released training
checkpoint (DDP prefix, optimiser, argparse args) with the encoder from a DINO checkpoint, and back."""

import argparse
import os

import numpy as np
from PIL import Image
import pytest
import torch

import torch_solv
import torch_vit
from configs import defaults
from gsa_jax import checkpoint
from gsa_jax import contract
from gsa_jax import convert
from gsa_jax import errors
from gsa_jax import registry
from gsa_jax.backbones import vit_weights
from gsa_jax.models.solv import evaluate as solv_evaluate
from gsa_jax.models.solv import weights
from input_pipeline import clips
from input_pipeline import data_sources
from input_pipeline import frames as frames_lib
from input_pipeline import instances
from input_pipeline import pipeline


class NotAllowed:
  """A pickled object that safe loading must refuse."""


@pytest.fixture(scope='module')
def clip_config(tmp_path_factory):
  config = defaults.get_config('solv')
  config.data.train = 'synthetic_multi'
  config.data.clip_size = (24, 40)
  config.data.synthetic_multi.update(num_train_videos=2, num_val_videos=1, num_frames=(3, 4), frame_sizes=((48, 64),),
                                     letterbox=1.0, bar_sizes=(8,), seed=3)
  return data_sources.prepare_data_roots(config, str(tmp_path_factory.mktemp('solv_data')), roles=('train',))


def released_clip(paths, centre: int, half: int, size) -> tuple[np.ndarray, np.ndarray]:
  """The released loader in numpy / PIL: per-frame border removal, bilinear resize, normalisation, zeros."""
  h, w = size
  frames, mask = [], []
  for k in range(centre - half, centre + half + 1):
    if 0 <= k < len(paths):
      image = np.asarray(Image.open(paths[k]).convert('RGB'))
      top, bottom, left, right = solv_evaluate.black_borders(image)
      image = image[top:image.shape[0] - bottom, left:image.shape[1] - right]
      resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.float32)
      frames.append(frames_lib.normalise_rgb(resized))
      mask.append(1.0)
    else:
      frames.append(np.zeros((h, w, 3), np.float32))
      mask.append(0.0)
  return np.stack(frames), np.asarray(mask, np.float32)


def test_clips_are_the_released_clips(clip_config):
  d = clip_config.data
  videos = clips.clip_videos(d)
  assert len(videos) == 2
  assert pipeline.steps_per_epoch(d, train_input='clips', batch_size=2) == sum(map(len, videos)) // 2
  flat = [(v, t) for v, paths in enumerate(videos) for t in range(len(paths))]
  batches = pipeline.create_train_iterator(d, train_input='clips', batch_size=3, seed=1, with_indices=True)
  seen = []
  for _ in range(2):
    batch = next(batches)
    assert batch['frames'].shape == (3, 5, 24, 40, 3) and batch['frame_mask'].shape == (3, 5)
    for i, index in enumerate(batch['index']):
      v, t = flat[int(index)]
      want, want_mask = released_clip(videos[v], t, 2, (24, 40))
      np.testing.assert_array_equal(batch['frame_mask'][i], want_mask)
      assert np.all(batch['frames'][i][want_mask == 0] == 0.0)
      # tf's antialiased bilinear vs PIL's (which rounds to uint8): within one grey level.
      diff = np.abs(batch['frames'][i] - want) * frames_lib.IMAGENET_STD * 255
      assert diff.max() < 1.5 and diff.mean() < 0.3, (diff.max(), diff.mean())
      seen.append(int(index))
  assert len(set(seen)) == len(seen)  # no repeats within the first epoch
  again = pipeline.create_train_iterator(d, train_input='clips', batch_size=3, seed=1, start_step=1, with_indices=True)
  np.testing.assert_array_equal(next(again)['index'], seen[3:])


def test_border_removal_tf_equals_numpy():
  tf = clips._tf()
  rng = np.random.default_rng(0)
  for bars in ((8, 8, 0, 0), (0, 0, 16, 16), (3, 0, 5, 1), (0, 0, 0, 0)):
    image = rng.integers(20, 255, size=(40, 56, 3)).astype(np.uint8)
    top, bottom, left, right = bars
    image[:top], image[image.shape[0] - bottom:] = 0, 0
    image[:, :left], image[:, image.shape[1] - right:] = 0, 0
    image[top:top + 1, left:left + 1] = 0  # a dark pixel inside does not make a border
    assert solv_evaluate.black_borders(image) == bars
    cropped = clips.remove_black_borders(tf.constant(image, tf.float32)).numpy()
    assert cropped.shape == (40 - top - bottom, 56 - left - right, 3)
  black = np.zeros((8, 8, 3), np.uint8)
  assert solv_evaluate.black_borders(black) == (0, 0, 0, 0)
  assert clips.remove_black_borders(tf.constant(black, tf.float32)).shape == (8, 8, 3)


def _torch_dino_vits16(seed: int) -> torch.nn.Module:
  model = torch_vit.TorchViT(width=384, depth=12, heads=6, patch=16, pos_grid=14, layer_scale=False)
  return torch_vit.randomize_(model, seed).eval()


def test_convert_a_released_checkpoint_and_export_it_back(tmp_path):
  torch.manual_seed(0)
  solv_t = torch_solv.TorchSOLV(input_dim=384, feature_dim=384, slot_dim=16, num_slots=5, grid_hw=(4, 6), heads=4,
                                ffn=32, decoder_hidden=32)
  state = {k: v.detach().numpy().copy() for k, v in solv_t.state_dict().items()}
  args = argparse.Namespace(num_slots=5, slot_dim=16, N=2, resize_to=[64, 96], patch_size=16, merge_slots=True)
  ckpt = tmp_path / 'checkpoint.pt'
  torch.save({'model': {'module.' + k: v for k, v in solv_t.state_dict().items()}, 'optimizer': {}, 'scheduler': {},
              'epoch': 7, 'args': args}, ckpt)
  vit_path = tmp_path / 'dino_vits16.pth'
  vit_t = _torch_dino_vits16(seed=2)
  torch.save(vit_t.state_dict(), vit_path)

  config = defaults.get_config('solv')
  config.model.update(encoder='dino_vits16', image_size=(64, 96), encoder_weights=str(vit_path))
  config.data.clip_size = (64, 96)
  step_dir = convert.convert(str(ckpt), kind='solv', output_dir=str(tmp_path / 'out'), config=config)
  variables, meta = checkpoint.load_variables(step_dir)
  full = meta['config']['model']
  assert (full['num_slots'], full['slot_dim'], full['decoder_hidden'], full['temporal_ffn']) == (5, 16, 32, 32)
  model = registry.build(_config_from(meta['config']))
  expected_solv = weights.from_torch(state, model.settings)
  for path, value in contract.flatten_params(expected_solv).items():
    np.testing.assert_array_equal(contract.flatten_params(variables['params']['solv'])[path], value)
  expected_vit = vit_weights.convert_vit({k: v.numpy() for k, v in vit_t.state_dict().items()}, 'dino_vits16')[1]
  for path, value in contract.flatten_params(expected_vit['params']).items():
    np.testing.assert_array_equal(contract.flatten_params(variables['params']['encoder']['vit'])[path], value)
  assert 'mask_token' not in variables['params']['encoder']  # DINO v1 has none
  exported = model.export_official(variables)
  assert list(exported) == list(state)
  for key, value in state.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)

  # Without encoder weights, with a wrong width, or a checkpoint holding other objects: one clear error.
  config.model.encoder_weights = ''
  with pytest.raises(errors.UserError, match='encoder_weights=PATH'):
    convert.convert(str(ckpt), kind='solv', output_dir=str(tmp_path / 'out2'), config=config)
  config.model.update(encoder='dinov2_vitb14', image_size=(56, 84), encoder_weights=str(vit_path))
  config.data.clip_size = (56, 84)
  with pytest.raises(errors.UserError, match='384-wide features'):
    convert.convert(str(ckpt), kind='solv', output_dir=str(tmp_path / 'out3'), config=config)
  unsafe = tmp_path / 'unsafe.pt'
  torch.save({'model': {k: v for k, v in solv_t.state_dict().items()}, 'args': NotAllowed()}, unsafe)
  with pytest.raises(errors.UserError, match='cannot be read'):
    convert.convert(str(unsafe), kind='solv', output_dir=str(tmp_path / 'out4'), config=config)
  assert not os.path.exists(tmp_path / 'out2') and not os.path.exists(tmp_path / 'out3')


def _config_from(saved):
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = defaults.get_config('solv')
  model = dict(saved['model'])
  model['image_size'] = tuple(model['image_size'])
  config.model.update(model)
  config.data.clip_size = tuple(saved['data']['clip_size'])
  assert isinstance(config, ml_collections.ConfigDict)
  return config


def test_converted_patch_projection_model_and_instance_listing(tmp_path, clip_config):
  """A checkpoint for the demo's encoder needs no encoder weights; the demo's test videos list as DAVIS-17."""
  torch.manual_seed(1)
  solv_t = torch_solv.TorchSOLV(input_dim=16, feature_dim=16, slot_dim=16, num_slots=4, grid_hw=(4, 6), heads=4,
                                ffn=32, decoder_hidden=32)
  config = defaults.get_config('solv')
  config.model.update(encoder='patch_projection', projection_patch=8, projection_dim=16, image_size=(32, 48))
  config.data.clip_size = (32, 48)
  family = registry.get('solv')
  variables, full = family.convert_official({k: v.numpy() for k, v in solv_t.state_dict().items()}, config)
  assert set(variables['params']['encoder']) == {'projection'} and full.model.num_slots == 4
  records = instances.list_davis17(clip_config.data.train_root, 'val')
  assert len(records) == 1 and records[0].annotated
