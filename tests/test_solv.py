"""SOLV model parts against the PyTorch restatement of the released code (tests/torch_solv.py).

Parity at tiny widths (4x6 tokens, B = 2 clips of F = 5 frames, S = 6 slots, D = 16), weights copied from
the torch model through our converter: outputs and gradients of the spatial binder, the temporal binder and
the decoder (evaluation mode), of the whole training loss (dropout 0, dropped tokens, the released
relative-grid indexing, merging); the outputs of the released evaluation (per-frame windows, all tokens);
parameter counts at full size; the paper switches; the converter round trip and its errors; config and input
errors. The merger and the optimiser: test_solv_merge.py. Programs are compiled at XLA optimisation level 0.
"""

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_solv
from gsa_jax.models.solv import binder as binder_lib
from gsa_jax.models.solv import config as config_lib
from gsa_jax.models.solv import decoder as decoder_lib
from gsa_jax.models.solv import losses
from gsa_jax.models.solv import merge as merge_lib
from gsa_jax.models.solv import network
from gsa_jax.models.solv import temporal as temporal_lib
from gsa_jax.models.solv import weights

B, ROWS, COLS = 2, 4, 6
N_TOK = ROWS * COLS
# Tiny programs: XLA's backend optimisation costs more compile time than it saves at run time here.
fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


class NotAllowListed:
  """A pickled object that weights_only loading must refuse."""


def tiny_settings(**overrides) -> config_lib.Settings:
  cfg = config_lib.network_config()
  cfg.update(dict(feature_dim=24, token_grid=(ROWS, COLS), num_slots=6, slot_dim=16, temporal_heads=4,
                  temporal_ffn=32, decoder_hidden=32, merge_threshold=0.12))
  cfg.update(overrides)
  return config_lib.Settings.from_config(cfg)


def torch_model(s: config_lib.Settings, seed: int = 0) -> torch_solv.TorchSOLV:
  torch.manual_seed(seed)
  model = torch_solv.TorchSOLV(
      input_dim=s.feature_dim, feature_dim=s.feature_dim, slot_dim=s.slot_dim, num_slots=s.num_slots,
      grid_hw=s.token_grid, N=s.half_window, iters=s.slot_iters, heads=s.temporal_heads, ffn=s.temporal_ffn,
      temporal_layers=s.temporal_layers, decoder_hidden=s.decoder_hidden, decoder_layers=s.decoder_layers,
      dropout=s.dropout, merge_slots=s.merge_slots, threshold=s.merge_threshold, min_clusters=s.min_merged_slots,
      rel_grid_bug=s.rel_grid_indices == 'flattened')
  with torch.no_grad():  # S_s ~ N(0, 0.02) makes the first relative grid huge; widen it for a livelier test.
    model.s_bind.S_s.mul_(10.0)
  return model


def state_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def grads_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {n: (p.grad.numpy().copy() if p.grad is not None else np.zeros(tuple(p.shape), np.float32))
          for n, p in model.named_parameters()}


def inputs(s: config_lib.Settings, kept: int, seed: int = 1) -> dict[str, np.ndarray]:
  """Features, sorted kept-token indices per frame, a frame mask with padded frames, a target."""
  rng = np.random.default_rng(seed)
  f = s.num_frames
  idx = np.stack([np.sort(rng.permutation(N_TOK)[:kept]) for _ in range(B * f)]).astype(np.int64)
  mask = np.ones((B, f), bool)
  mask[0, :2] = False
  mask[1, -1] = False
  return dict(features=rng.normal(size=(B * f, kept, s.feature_dim)).astype(np.float32), token_indices=idx,
              frame_mask=mask, target=rng.normal(size=(B, N_TOK, s.feature_dim)).astype(np.float32))


def assert_close(actual, expected, tol: float = 2e-5, what: str = '') -> None:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
  err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
  assert err <= tol * scale, f'{what}: max |diff| {err:.3g} > {tol:.1g} x {scale:.3g}'


def assert_tree_close(actual, expected, tol: float, what: str) -> None:
  flat_a = dict(jax.tree_util.tree_flatten_with_path(actual)[0])
  flat_e = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  assert flat_a.keys() == flat_e.keys(), what
  for path in flat_a:
    assert_close(flat_a[path], flat_e[path], tol, f'{what} {jax.tree_util.keystr(path)}')


# ------------------------------------------------------------------------------------------------
# Counts and the parameter tree.
# ------------------------------------------------------------------------------------------------

def test_parameter_counts_match_the_release():
  official = config_lib.Settings.from_config(config_lib.network_config())
  counts = network.part_counts(network.abstract_variables(official)['params'])
  assert counts['total'] == 5_799_521
  assert counts['temporal_binder'] == 595_456 and counts['decoder/mlp'] == 4_069_121
  assert counts['spatial_binder/input_mlp'] == 690_816 and counts['spatial_binder/gru'] == 99_072
  movi = config_lib.network_config()
  movi.num_slots, movi.token_grid = 18, (24, 24)
  assert network.part_counts(network.abstract_variables(
      config_lib.Settings.from_config(movi))['params'])['total'] == 5_763_401
  # flax.linen.GRUCell folds the r and z hidden biases: 2 x D fewer.
  folded = dataclasses.replace(official, gru='flax')
  assert network.part_counts(network.abstract_variables(folded)['params'])['total'] == 5_799_521 - 256
  # The official state-dict layout, and the torch restatement at full size, hold the same count.
  shapes = weights.official_shapes(official)
  assert sum(int(np.prod(v)) for v in shapes.values()) == 5_799_521
  full = torch_solv.TorchSOLV()
  assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == shapes
  assert list(full.state_dict()) == list(shapes)


def test_init_pieces_are_the_released_init():
  s = tiny_settings()
  grid = torch_model(s).s_bind.abs_grid.detach().numpy()[0, 0]
  assert_close(binder_lib.coordinate_grid(ROWS, COLS), grid, 1e-7, 'coordinate grid')
  abstract = network.abstract_variables(s)['params']
  assert abstract['spatial_binder']['grid'].shape == (N_TOK, 2)
  assert 'grid' not in network.abstract_variables(dataclasses.replace(s, trainable_grid=False))['params'][
      'spatial_binder']
  params = weights.from_torch(state_of(torch_model(s)), s)
  tied = network.tie_temporal_layers(params)
  for i in (1, 2):
    assert_tree_close(tied['temporal_binder'][f'layer_{i}'], params['temporal_binder']['layer_0'], 0.0, 'tied')
  # The released indexing pairs clip i with flattened frame i; the fix with its own centre frame.
  idx = np.arange(B * 5 * 3).reshape(B * 5, 3)
  np.testing.assert_array_equal(network.decoder_token_indices(idx, 5, 2, 'flattened'), idx[:B])
  np.testing.assert_array_equal(network.decoder_token_indices(idx, 5, 2, 'centre'), idx[[2, 7]])


# ------------------------------------------------------------------------------------------------
# Module parity (outputs and gradients).
# ------------------------------------------------------------------------------------------------

def test_spatial_binder_matches_torch():
  s = tiny_settings()
  kept = N_TOK // 2
  model = torch_model(s).eval()
  params = weights.from_torch(state_of(model), s)['spatial_binder']
  x = inputs(s, kept)
  rng = np.random.default_rng(3)
  w_slots = rng.normal(size=(B * s.num_frames, s.num_slots, s.slot_dim)).astype(np.float32)
  w_attn = rng.normal(size=(B * s.num_frames, s.num_slots, kept)).astype(np.float32)

  feats = torch.tensor(x['features'], requires_grad=True)
  slots_t, attn_t = model.s_bind(feats, torch.tensor(x['token_indices']))
  ((slots_t * torch.tensor(w_slots)).sum() + (attn_t * torch.tensor(w_attn)).sum()).backward()

  binder = binder_lib.SpatialBinder(s)

  def objective(p, f):
    out = binder.apply({'params': p}, f, jnp.asarray(x['token_indices']), train=False)
    return jnp.sum(out['slots'] * w_slots) + jnp.sum(out['attention'] * w_attn), out

  (_, out), (g_params, g_feats) = fast_jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))(
      params, jnp.asarray(x['features']))
  assert_close(out['slots'], slots_t.detach(), 2e-5, 'slots')
  assert_close(out['attention'], attn_t.detach(), 2e-5, 'attention')
  assert_close(g_feats, feats.grad, 1e-4, 'd/d features')
  expected = weights.from_torch(grads_of(model), s)['spatial_binder']
  assert_tree_close(g_params, expected, 1e-4, 'd/d spatial binder')


def test_temporal_binder_matches_torch():
  s = tiny_settings()
  model = torch_model(s).eval()
  params = weights.from_torch(state_of(model), s)['temporal_binder']
  f, k, d = s.num_frames, s.num_slots, s.slot_dim
  rng = np.random.default_rng(4)
  slots = rng.normal(size=(B, f, k, d)).astype(np.float32)
  mask = inputs(s, N_TOK)['frame_mask']
  weight = rng.normal(size=(B, f, k, d)).astype(np.float32) * mask[:, :, None, None]  # valid frames only
  slots_t = torch.tensor(slots.reshape(B * f, k, d), requires_grad=True)
  centre_t, all_t = model.t_bind(slots_t, torch.tensor(mask))
  (all_t * torch.tensor(weight)).sum().backward()

  module = temporal_lib.TemporalBinder(s)

  def objective(p, x):
    out = module.apply({'params': p}, x, jnp.asarray(mask), train=False)
    return jnp.sum(out * weight), out

  (_, out), (g_params, g_slots) = fast_jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))(params, slots)
  assert_close(out[:, s.half_window], centre_t.detach(), 2e-5, 'centre slots')
  assert_close(out * mask[:, :, None, None], all_t.detach().numpy() * mask[:, :, None, None], 2e-5, 'valid frames')
  assert_close(g_slots, slots_t.grad.reshape(B, f, k, d), 1e-4, 'd/d slots')
  assert_tree_close(g_params, weights.from_torch(grads_of(model), s)['temporal_binder'], 1e-4, 'd/d temporal')
  # Padded frames are ignored as keys: changing them leaves the valid frames unchanged.
  noisy = np.where(mask[:, :, None, None], slots, 100.0 * rng.normal(size=slots.shape)).astype(np.float32)
  again = fast_jit(objective)(params, noisy)[1]
  assert_close(again * mask[:, :, None, None], out * mask[:, :, None, None], 1e-6, 'padding ignored')


def test_decoder_matches_torch():
  s = tiny_settings()
  model = torch_model(s).eval()
  all_params = weights.from_torch(state_of(model), s)
  kept, k, d = N_TOK // 2, s.num_slots, s.slot_dim
  rng = np.random.default_rng(5)
  slots = rng.normal(size=(B, k, d)).astype(np.float32)
  attn = rng.uniform(0.1, 1.0, size=(B, k, kept)).astype(np.float32)
  attn /= attn.sum(-1, keepdims=True)
  idx = np.stack([np.sort(rng.permutation(N_TOK)[:kept]) for _ in range(B)])
  num = np.array([k, 3])                       # clip 1 has 3 merged slots, rows 3.. empty
  valid = np.arange(k)[None] < num[:, None]
  slots[~valid] = 0.0
  weight = rng.normal(size=(B, N_TOK, s.feature_dim)).astype(np.float32)
  w_masks = rng.normal(size=(B, k, N_TOK)).astype(np.float32)

  slots_t, attn_t = torch.tensor(slots, requires_grad=True), torch.tensor(attn, requires_grad=True)
  rec_t, masks_t = model.decode(slots_t, attn_t, torch.tensor(idx), torch.tensor(num))
  ((rec_t * torch.tensor(weight)).sum() + (masks_t * torch.tensor(w_masks)).sum()).backward()

  dec = decoder_lib.Decoder(s)
  grid_t = all_params['spatial_binder']['grid']

  def objective(p, grid, sl, at):
    out = dec.apply({'params': p}, sl, at, grid[idx], grid, jnp.asarray(valid))
    return jnp.sum(out['reconstruction'] * weight) + jnp.sum(out['masks'] * w_masks), out

  (_, out), (g_params, g_grid, g_slots, g_attn) = fast_jit(jax.value_and_grad(
      objective, argnums=(0, 1, 2, 3), has_aux=True))(all_params['decoder'], grid_t, slots, attn)
  assert_close(out['reconstruction'], rec_t.detach(), 2e-5, 'reconstruction')
  assert_close(out['masks'], masks_t.detach(), 2e-5, 'masks')
  assert np.all(np.asarray(out['masks'])[~valid] == 0.0)
  assert_close(np.asarray(out['masks']).sum(1), np.ones((B, N_TOK)), 1e-6, 'masks sum to 1')
  assert_close(g_slots, slots_t.grad, 1e-4, 'd/d slots')
  assert_close(g_attn, attn_t.grad, 1e-4, 'd/d attention')
  torch_grads = weights.from_torch(grads_of(model), s)
  assert_tree_close(g_params, torch_grads['decoder'], 1e-4, 'd/d decoder')
  assert_close(g_grid, torch_grads['spatial_binder']['grid'], 1e-4, 'd/d grid')


def pick_threshold(model: torch_solv.TorchSOLV, x: dict[str, np.ndarray]) -> float:
  """A merge threshold between two linkage heights of the torch model's centre slots, as far from every
  height as possible, at which some clip merges into 3..S-1 clusters (so the merger is exercised; at random
  weights the slots are nearly parallel and 0.12 would merge everything, which the <= 2 rule discards)."""
  from scipy.cluster.hierarchy import linkage
  with torch.no_grad():
    slots, _ = model.s_bind(torch.tensor(x['features']), torch.tensor(x['token_indices']))
    centre, _ = model.t_bind(slots, torch.tensor(x['frame_mask']))
  heights = [linkage(c.numpy().astype(np.float64), 'complete', 'cosine')[:, 2] for c in centre]
  every = np.sort(np.concatenate(heights))
  best, margin = None, 0.0
  for lo, hi in zip(every[:-1], every[1:]):
    t = 0.5 * (lo + hi)
    counts = [int(np.sum(h >= t)) + 1 for h in heights]
    if any(3 <= c < model.num_slots for c in counts) and 0.5 * (hi - lo) > margin:
      best, margin = t, 0.5 * (hi - lo)
  assert best is not None and margin > 1e-4, (every, margin)
  return float(best)


def compare_with_torch(s, out, out_t, loss=None, loss_t=None) -> None:
  """Merged outputs of ours (renumbered like sklearn on the host) and of the torch model."""
  num = np.asarray(out['num_slots'])
  np.testing.assert_array_equal(num, out_t['slot_nums'].numpy())
  assert num.min() < s.num_slots, 'no clip merged: the test would not cover the merger'
  if loss is not None:
    assert_close(loss, loss_t, 2e-5, 'loss')
  assert_close(out['reconstruction'], out_t['rec'].detach(), 2e-5, 'reconstruction')
  # Our rows follow the clusters' first members; renumbered on the host they follow sklearn's labels.
  renumbered = merge_lib.renumber_like_sklearn(jax.tree.map(np.asarray, out), s.merge_threshold, s.min_merged_slots)
  np.testing.assert_array_equal(renumbered['labels'], out_t['labels'])
  for name, ref in (('slots', out_t['slots']), ('masks', out_t['mask']), ('attention', out_t['attn'])):
    assert_close(renumbered[name], ref.detach(), 2e-5, name)


def test_training_loss_and_gradients_match_torch():
  """Training mode (dropout 0): half the tokens of every frame, padded frames, the released rel-grid
  indexing, every clip merged; outputs, the loss and the gradient of every parameter."""
  s = tiny_settings(dropout=0.0)
  model = torch_model(s, seed=2).train()
  x = inputs(s, N_TOK // 2)
  s = dataclasses.replace(s, merge_threshold=pick_threshold(model, x))
  model.threshold = s.merge_threshold
  params = weights.from_torch(state_of(model), s)
  out_t = model(torch.tensor(x['features']), torch.tensor(x['frame_mask']), torch.tensor(x['token_indices']),
                merge_decisions=[True] * B)
  loss_t = torch.nn.functional.mse_loss(out_t['rec'], torch.tensor(x['target']))
  loss_t.backward()

  def objective(p):
    out = network.SOLV(s).apply({'params': p}, x['features'], x['token_indices'], x['frame_mask'], train=True,
                                merge_prob=1.0, rngs={'dropout': jax.random.key(0)})
    return losses.loss_and_metrics(out, x['target'], s)[0], out

  (loss, out), grads = fast_jit(jax.value_and_grad(objective, has_aux=True))(params)
  compare_with_torch(s, out, out_t, loss, loss_t.item())
  assert_tree_close(grads, weights.from_torch(grads_of(model), s), 2e-4, 'd loss')


def test_evaluation_windows_match_torch():
  """The released evaluation: one window per video frame, all tokens, padded frames, always merged."""
  s = tiny_settings()
  model = torch_model(s, seed=3).eval()
  rng = np.random.default_rng(6)
  t = B
  video = rng.normal(size=(t, N_TOK, s.feature_dim)).astype(np.float32)
  win = jax.tree.map(np.asarray, network.eval_inputs(jnp.asarray(video), s.half_window))
  f = s.num_frames
  assert win['features'].shape == (t * f, N_TOK, s.feature_dim)
  np.testing.assert_array_equal(win['frame_mask'], [[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(win['features'].reshape(t, f, N_TOK, -1)[1, 1:3], video)
  s = dataclasses.replace(s, merge_threshold=pick_threshold(model, win))
  model.threshold = s.merge_threshold
  params = weights.from_torch(state_of(model), s)
  with torch.no_grad():
    out_t = model(torch.tensor(win['features']), torch.tensor(win['frame_mask']), torch.tensor(win['token_indices']),
                  merge_decisions=[True] * t)
  apply = fast_jit(lambda feats: network.SOLV(s).apply({'params': params}, feats, win['token_indices'],
                                                        win['frame_mask'], train=False))
  out = apply(win['features'])
  compare_with_torch(s, out, out_t)
  # Whatever the padded frames hold, the outputs are the same.
  noise = win['features'] + 5.0 * (~win['frame_mask']).reshape(-1)[:, None, None] * \
      rng.normal(size=win['features'].shape).astype(np.float32)
  again = apply(noise)
  for name in ('reconstruction', 'masks', 'slots', 'num_slots'):
    assert_close(again[name], out[name], 1e-5, name)


def test_init_and_no_merger():
  """init_variables (a reduced depth keeps the compile short) and merge_slots=False: every slot kept, the
  same function as merging with probability 0 up to the merger's 1e-8 renormalisation."""
  s = tiny_settings(slot_iters=1, temporal_layers=2, decoder_layers=2)
  variables = network.init_variables(s, jax.random.key(1))
  params = variables['params']
  assert_tree_close(params['temporal_binder']['layer_1'], params['temporal_binder']['layer_0'], 0.0, 'tied init')
  assert_close(params['spatial_binder']['grid'], binder_lib.coordinate_grid(ROWS, COLS), 1e-7, 'grid init')
  assert jax.tree.structure(variables) == jax.tree.structure(network.abstract_variables(s))
  x = inputs(s, N_TOK)
  run = lambda st: fast_jit(lambda p: network.SOLV(st).apply({'params': p}, x['features'], x['token_indices'],
                                                               x['frame_mask'], train=False, merge_prob=0.0))(params)
  off, never = run(dataclasses.replace(s, merge_slots=False)), run(s)
  assert np.all(np.asarray(off['valid'])) and not np.any(np.asarray(off['merged']))
  np.testing.assert_array_equal(off['num_slots'], [s.num_slots] * B)
  assert_close(off['reconstruction'], never['reconstruction'], 1e-5, 'no merger')


def test_binder_switches():
  """gru='flax' (folded biases) is the same binder; final_attention_pass=False gives the released slots and
  the attention of the 3rd pass (torch with 2 updates + 1 attention pass); update_order and input_norm act."""
  base = tiny_settings()
  model = torch_model(base).eval()
  x = inputs(base, N_TOK // 2)
  with torch.no_grad():
    slots_t, attn_t = model.s_bind(torch.tensor(x['features']), torch.tensor(x['token_indices']))
    model.s_bind.iters = 2
    _, attn2_t = model.s_bind(torch.tensor(x['features']), torch.tensor(x['token_indices']))

  def run(**change):
    s = dataclasses.replace(base, **change)
    state = {k: v for k, v in state_of(model).items() if s.input_norm or not k.startswith('s_bind.initial_mlp.0.')}
    p = weights.from_torch(state, s)['spatial_binder']
    return fast_jit(lambda feats: binder_lib.SpatialBinder(s).apply({'params': p}, feats, x['token_indices'],
                                                                    train=False))(x['features'])

  folded = run(gru='flax')
  assert_close(folded['slots'], slots_t, 2e-5, 'flax GRU slots')
  assert_close(folded['attention'], attn_t, 2e-5, 'flax GRU attention')
  paper = run(final_attention_pass=False)
  assert_close(paper['slots'], slots_t, 2e-5, 'same output slots')
  assert_close(paper['attention'], attn2_t, 2e-5, 'attention of the 3rd pass')
  assert np.max(np.abs(np.asarray(paper['attention']) - attn_t.numpy())) > 1e-4
  for change in (dict(update_order='mlp_gru'), dict(input_norm=False)):
    out = run(**change)
    assert np.all(np.isfinite(out['slots'])), change
    assert np.max(np.abs(np.asarray(out['slots']) - slots_t.numpy())) > 1e-4, f'{change}: no effect'


def test_decoder_remat_and_bfloat16():
  base = tiny_settings()
  params = weights.from_torch(state_of(torch_model(base)), base)
  rng = np.random.default_rng(7)
  slots = rng.normal(size=(B, base.num_slots, base.slot_dim)).astype(np.float32)
  attn = rng.uniform(0.1, 1.0, size=(B, base.num_slots, N_TOK)).astype(np.float32)
  attn /= attn.sum(-1, keepdims=True)
  grid = params['spatial_binder']['grid']
  valid = np.ones((B, base.num_slots), bool)

  def loss(s, p):
    out = decoder_lib.Decoder(s).apply({'params': p}, slots, attn, jnp.broadcast_to(grid, (B, N_TOK, 2)), grid, valid)
    return jnp.mean(jnp.square(out['reconstruction']))

  reference, g_ref = fast_jit(jax.value_and_grad(functools.partial(loss, base)))(params['decoder'])
  remat, g_remat = fast_jit(jax.value_and_grad(functools.partial(loss, dataclasses.replace(base, remat=True))))(
      params['decoder'])
  assert_close(remat, reference, 1e-6, 'remat loss')
  assert_tree_close(g_remat, g_ref, 1e-5, 'remat gradient')
  bf16 = fast_jit(functools.partial(loss, dataclasses.replace(base, dtype='bfloat16')))(params['decoder'])
  assert abs(float(bf16) - float(reference)) < 0.05 * float(reference)


# ------------------------------------------------------------------------------------------------
# Converter.
# ------------------------------------------------------------------------------------------------

def test_converter_round_trip_and_checkpoint_file(tmp_path):
  s = tiny_settings()
  model = torch_model(s, seed=4)
  state = state_of(model)
  params = weights.from_torch(state, s)
  back = weights.to_torch(params, s)
  assert list(back) == list(state)
  for key in state:
    np.testing.assert_array_equal(back[key], state[key], err_msg=key)
  # A released training checkpoint: DDP prefix, optimiser, scheduler, epoch and argparse args.
  args = argparse.Namespace(num_slots=s.num_slots, slot_dim=s.slot_dim, N=s.half_window, slot_att_iter=3,
                            slot_merge_coeff=0.12, merge_slots=True, resize_to=[ROWS * 14, COLS * 14], patch_size=14,
                            root='/data/ytvis')
  path = tmp_path / 'checkpoint.pt'
  torch.save({'model': {'module.' + k: v for k, v in model.state_dict().items()}, 'optimizer': {}, 'scheduler': {},
              'epoch': 3, 'args': args}, path)
  loaded, loaded_args = weights.read_checkpoint(str(path))
  assert loaded.keys() == state.keys() and loaded_args['root'] == '/data/ytvis'
  overrides = weights.settings_overrides(loaded_args)
  assert overrides['token_grid'] == (ROWS, COLS) and overrides['half_window'] == 2 and overrides['num_slots'] == 6
  assert_tree_close(weights.from_torch(loaded, s), params, 0.0, 'from file')


def test_converter_flax_gru_folds_biases():
  """gru='flax': r and z biases folded; the export (hidden r, z biases zero) is the same torch function and
  converts back exactly."""
  s = tiny_settings(gru='flax')
  model = torch_model(s, seed=5).eval()
  params = weights.from_torch(state_of(model), s)
  assert 'bias' not in params['spatial_binder']['gru']['hr']
  sd = state_of(model)
  d = s.slot_dim
  np.testing.assert_allclose(params['spatial_binder']['gru']['ir']['bias'],
                             sd['s_bind.gru.bias_ih'][:d] + sd['s_bind.gru.bias_hh'][:d], rtol=1e-6)
  exported = weights.to_torch(params, s)
  np.testing.assert_array_equal(exported['s_bind.gru.bias_hh'][:2 * d], 0.0)
  assert_tree_close(weights.from_torch(exported, s), params, 0.0, 'flax -> torch -> flax')
  model2 = torch_model(s, seed=9).eval()
  model2.load_state_dict({k: torch.tensor(v) for k, v in exported.items()})
  x = inputs(s, N_TOK)
  run = lambda m: m(torch.tensor(x['features']), torch.tensor(x['frame_mask']), torch.tensor(x['token_indices']),
                    merge_decisions=[False] * B)['rec'].detach().numpy()
  assert_close(run(model2), run(model), 1e-5, 'exported model')


def test_converter_errors(tmp_path):
  s = tiny_settings()
  state = state_of(torch_model(s))
  with pytest.raises(ValueError) as info:
    weights.from_torch(state, dataclasses.replace(s, num_slots=5))
  first = str(info.value).splitlines()[0]
  assert 's_bind.slots' in first and '(1, 6, 16)' in first and '(1, 5, 16)' in first, first
  broken = dict(state)
  del broken['dec.layer3.bias']
  broken['extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match='missing key dec.layer3.bias') as info:
    weights.from_torch(broken, s)
  assert 'unexpected key extra.weight' in str(info.value)
  with pytest.raises(ValueError, match='trainable_grid=True'):
    weights.from_torch(state, dataclasses.replace(s, trainable_grid=False))
  with pytest.raises(ValueError, match='does not exist'):
    weights.read_checkpoint(str(tmp_path / 'nope.pt'))

  path = tmp_path / 'unsafe.pt'
  torch.save({'model': {}, 'args': NotAllowListed()}, path)
  with pytest.raises(ValueError, match='weights_only=True'):
    weights.read_checkpoint(str(path))


# ------------------------------------------------------------------------------------------------
# Bad config and input.
# ------------------------------------------------------------------------------------------------

def test_config_validation_names_fields():
  assert config_lib.validate(config_lib.network_config()) == []
  cfg = config_lib.network_config()
  cfg.update(dict(num_slots=1, update_order='paper', temporal_heads=5, token_grid=(24,), dropout=1.5,
                  gru='cudnn', merge_threshold=-1.0))
  problems = config_lib.validate(cfg)
  for field in ('num_slots', 'update_order', 'temporal_heads', 'token_grid', 'dropout', 'gru', 'merge_threshold'):
    assert any(p.startswith(f'model.{field}=') for p in problems), (field, problems)
  with pytest.raises(ValueError, match='model.update_order'):
    config_lib.Settings.from_config(cfg)
  problems = config_lib.validate(dict(config_lib.network_config().to_dict(), slot_size=3))
  assert problems and problems[0].startswith('model.slot_size=3 is not a SOLV field')
  settings = config_lib.Settings.from_config(config_lib.network_config())
  assert hash(settings) == hash(config_lib.Settings()) and settings.num_tokens == 864 and settings.num_frames == 5


def test_bad_inputs_are_named():
  s = tiny_settings()
  params = weights.from_torch(state_of(torch_model(s)), s)
  x = inputs(s, N_TOK)
  defaults = dict(features=x['features'], token_indices=x['token_indices'], frame_mask=x['frame_mask'])
  trace = lambda **kw: jax.eval_shape(lambda p: network.SOLV(s).apply(
      {'params': p}, **{**defaults, **{k: v for k, v in kw.items() if k != 'merge_prob'}}, train=False,
      merge_prob=kw.get('merge_prob', 1.0)), params)
  with pytest.raises(ValueError, match='model.feature_dim=24'):
    trace(features=x['features'][..., :5])
  with pytest.raises(ValueError, match='clips x 5 frames'):
    trace(features=x['features'][:7], token_indices=x['token_indices'][:7])
  with pytest.raises(ValueError, match='token_indices must be integers'):
    trace(token_indices=x['token_indices'].astype(np.float32))
  with pytest.raises(ValueError, match='frame_mask must be'):
    trace(frame_mask=x['frame_mask'][:, :3])
  with pytest.raises(ValueError, match='use 1..24'):
    trace(features=np.zeros((10, 30, 24), np.float32), token_indices=np.zeros((10, 30), np.int32))
  with pytest.raises(ValueError, match='needs a random key'):
    trace(merge_prob=0.5)
  with pytest.raises(ValueError, match='reconstruction'):
    losses.reconstruction_loss(jnp.zeros((2, 24, 8)), jnp.zeros((2, 24, 9)))
