"""DINO / DINOv2 ViT: parity with transformers and with a PyTorch statement of the official code, the exact
position-embedding resize, token dropping, weight conversion from every naming, errors, bf16.

All models are tiny (width 32, 2 blocks, random weights); full-size variants are only built with
`jax.eval_shape`.
"""

import argparse
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

import torch_vit
from gsa_jax.backbones import vit
from gsa_jax.backbones import vit_weights

WIDTH, DEPTH, HEADS = 32, 2, 4
TOL = 1e-5


def _config(patch: int, pos_grid: int, *, layer_scale: bool, registers: int = 0) -> vit.ViTConfig:
  return vit.ViTConfig(f'tiny_p{patch}_g{pos_grid}_r{registers}', WIDTH, DEPTH, HEADS, patch, pos_grid,
                       layer_scale, registers, interpolate_offset=0.0 if registers else 0.1,
                       interpolate_antialias=bool(registers))


def _torch_vit(cfg: vit.ViTConfig, seed: int = 0) -> torch_vit.TorchViT:
  model = torch_vit.TorchViT(width=cfg.width, depth=cfg.depth, heads=cfg.num_heads, patch=cfg.patch_size,
                             pos_grid=cfg.pos_grid, layer_scale=cfg.layer_scale, registers=cfg.num_register_tokens,
                             offset=cfg.interpolate_offset, antialias=cfg.interpolate_antialias)
  return torch_vit.randomize_(model, seed).eval()


def _numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@functools.lru_cache(maxsize=None)
def _jitted(cfg: vit.ViTConfig, dtype=jnp.float32, blocks=tuple(range(DEPTH)), with_attention=True):
  model = vit.VisionTransformer(cfg, dtype=dtype)
  return jax.jit(lambda v, x, keep, pos: model.apply(v, x, keep=keep, blocks=blocks, with_attention=with_attention,
                                                     with_final_norm=True, pos_embed=pos))


def _run(cfg, variables, images: np.ndarray, keep=None, pos_embed=None, **kw) -> dict:
  out = _jitted(cfg, **kw)(variables, jnp.asarray(images), None if keep is None else jnp.asarray(keep), pos_embed)
  return jax.tree.map(np.asarray, out)


def _images(h: int, w: int, b: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(b, h, w, 3)).astype(np.float32)


def _nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# ------------------------------------------------------------------------------------------------
# Position-embedding resize.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('grid,new', [(37, (24, 36)), (37, (4, 6)), (28, (40, 60)), (28, (6, 9)), (14, (20, 30)),
                                      (14, (5, 3))])
def test_resize_pos_embed_matches_torch_interpolate(grid, new):
  """Both official forms: scale_factor=(new + 0.1) / g (DINO, DINOv2) and size= with antialias (DINOv2 _reg)."""
  x = np.random.default_rng(grid + new[0]).normal(size=(grid, grid, 16)).astype(np.float32)
  t = torch.from_numpy(x).permute(2, 0, 1)[None]
  factor = ((new[0] + 0.1) / grid, (new[1] + 0.1) / grid)
  ref = F.interpolate(t, scale_factor=factor, mode='bicubic', align_corners=False)[0].permute(1, 2, 0).numpy()
  ours = np.asarray(jax.jit(lambda g: vit.resize_pos_embed(g, new, offset=0.1))(x))
  assert ours.shape == ref.shape and _max_diff(ours, ref) <= 1e-5
  ref_aa = F.interpolate(t, size=new, mode='bicubic', antialias=True, align_corners=False)[0].permute(1, 2, 0)
  ours_aa = vit.resize_pos_embed(jnp.asarray(x), new, offset=0.0, antialias=True)
  assert _max_diff(ours_aa, ref_aa.numpy()) <= 1e-5
  # The size= form (transformers 5.x ViT / Dinov2) is not the official result.
  ref_size = F.interpolate(t, size=new, mode='bicubic', align_corners=False)[0].permute(1, 2, 0).numpy()
  assert _max_diff(ref_size, ref) > 0.05 and _max_diff(ours, ref_size) > 0.05


def test_resize_pos_embed_native_size_is_identity():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(37, 37, 8)), jnp.float32)
  assert vit.resize_pos_embed(x, (37, 37)) is x
  assert vit.resize_pos_embed(x, (37, 37), offset=0.0, antialias=True) is x


# ------------------------------------------------------------------------------------------------
# Parity with transformers at the training size.
# ------------------------------------------------------------------------------------------------

def _hf_outputs(model, images: np.ndarray, k_proj: torch.nn.Module, prefix: int) -> dict:
  keys = {}
  handle = k_proj.register_forward_hook(lambda m, i, o: keys.__setitem__('k', o))
  with torch.inference_mode():
    out = model(_nchw(images), output_hidden_states=True, output_attentions=True)
  handle.remove()
  return {'blocks': [h.numpy() for h in out.hidden_states[1:]], 'normed': out.last_hidden_state.numpy(),
          'attention': out.attentions[-1].numpy(), 'keys': keys['k'][:, prefix:].numpy()}


def _assert_close(ours: dict, ref: dict, tol: float = TOL):
  for i, block in enumerate(ref['blocks']):
    assert _max_diff(ours['blocks'][i], block) < tol, f'block {i}'
  assert _max_diff(ours['tokens'], ref['blocks'][-1]) < tol
  assert _max_diff(ours['cls'], ref['blocks'][-1][:, 0]) < tol
  assert _max_diff(ours['keys'], ref['keys']) < tol
  assert _max_diff(ours['normed'], ref['normed']) < tol
  if 'attention' in ref:
    assert _max_diff(ours['attention'], ref['attention']) < tol


def test_matches_transformers_vit_model_dino_v1_layout():
  hf_cfg = transformers.ViTConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                  intermediate_size=4 * WIDTH, patch_size=8, image_size=32, qkv_bias=True,
                                  layer_norm_eps=1e-6, hidden_act='gelu', attn_implementation='eager')
  hf = torch_vit.randomize_(transformers.ViTModel(hf_cfg, add_pooling_layer=False), 1).eval()
  cfg = _config(8, 4, layer_scale=False)
  name, variables = vit_weights.convert_vit(_numpy_state(hf), cfg)  # transformers 5.x names
  assert name == cfg.name
  images = _images(32, 32)
  ref = _hf_outputs(hf, images, hf.layers[-1].attention.k_proj, 1)
  _assert_close(_run(cfg, variables, images), ref)


@pytest.mark.parametrize('registers', [0, 4])
def test_matches_transformers_dinov2_model(registers):
  kw = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, patch_size=14, image_size=56,
            attn_implementation='eager')
  if registers:
    hf = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **kw))
  else:
    hf = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
  hf = torch_vit.randomize_(hf, 2).eval()  # LayerScale random too
  cfg = _config(14, 4, layer_scale=True, registers=registers)
  _, variables = vit_weights.convert_vit(_numpy_state(hf), cfg)
  images = _images(56, 56)
  ref = _hf_outputs(hf, images, hf.encoder.layer[-1].attention.k_proj, 1 + registers)
  _assert_close(_run(cfg, variables, images), ref)
  if registers:
    # transformers' register model resizes as the official register variants (size=, antialias): check it too.
    images = _images(84, 56, seed=3)
    ref = _hf_outputs(hf, images, hf.encoder.layer[-1].attention.k_proj, 1 + registers)
    out = _run(cfg, variables, images)
    _assert_close(out, ref)
    assert out['registers'].shape == (2, 4, WIDTH)


# ------------------------------------------------------------------------------------------------
# Parity with the official forward (tests/torch_vit.py) at other sizes, token dropping.
# ------------------------------------------------------------------------------------------------

OFFICIAL_CASES = {
    'dino_p8': (_config(8, 28, layer_scale=False), (48, 72)),
    'dinov2_p14': (_config(14, 37, layer_scale=True), (56, 84)),
    'dinov2_reg_p14': (_config(14, 37, layer_scale=True, registers=4), (56, 84)),
}


@pytest.mark.parametrize('case', sorted(OFFICIAL_CASES))
def test_matches_official_forward_at_other_sizes(case):
  cfg, (h, w) = OFFICIAL_CASES[case]
  reference = _torch_vit(cfg, seed=3)
  _, variables = vit_weights.convert_vit(_numpy_state(reference), cfg)  # official names
  images = _images(h, w)
  with torch.inference_mode():
    ref = reference(_nchw(images))
  ref = {k: ([b.numpy() for b in v] if k == 'blocks' else v.numpy()) for k, v in ref.items()}
  out = _run(cfg, variables, images)
  _assert_close(out, ref)
  assert out['patch_tokens'].shape == (2, (h // cfg.patch_size) * (w // cfg.patch_size), WIDTH)
  if case == 'dinov2_p14':  # A precomputed position embedding gives the same result.
    pos = vit.prepare_pos_embed(variables['params'], cfg, (h, w))
    assert _max_diff(_run(cfg, variables, images, pos_embed=pos)['tokens'], out['tokens']) < 1e-6


def test_size_form_position_resize_is_far_from_official():
  """transformers' ViTModel(interpolate_pos_encoding=True) resizes with size=: not the official features."""
  cfg, (h, w) = OFFICIAL_CASES['dino_p8']
  hf_cfg = transformers.ViTConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                  intermediate_size=4 * WIDTH, patch_size=8, image_size=224, qkv_bias=True,
                                  layer_norm_eps=1e-6, hidden_act='gelu')
  hf = transformers.ViTModel(hf_cfg, add_pooling_layer=False).eval()
  reference = _torch_vit(cfg, seed=3)
  _, variables = vit_weights.convert_vit(_numpy_state(reference), cfg)
  hf.load_state_dict({k: torch.from_numpy(v) for k, v in _hf5_state(variables, cfg, 'vit').items()}, strict=True)
  images = _images(h, w)
  with torch.inference_mode():
    official = reference(_nchw(images))['blocks'][-1].numpy()
    hf_out = hf(_nchw(images), interpolate_pos_encoding=True, output_hidden_states=True).hidden_states[-1].numpy()
  ours = _run(cfg, variables, images)['tokens']
  assert _max_diff(ours, official) < TOL
  assert _max_diff(hf_out, official) > 100 * TOL


def test_token_drop_matches_torch_on_the_gathered_sequence():
  cfg, (h, w) = OFFICIAL_CASES['dinov2_p14']
  reference = _torch_vit(cfg, seed=4)
  _, variables = vit_weights.convert_vit(_numpy_state(reference), cfg)
  images = _images(h, w)
  n = (h // 14) * (w // 14)
  rng = np.random.default_rng(0)
  keep = np.stack([np.sort(rng.permutation(n)[:n // 2]) for _ in range(2)]).astype(np.int32)  # [b n_keep]
  with torch.inference_mode():
    ref = reference(_nchw(images), torch.from_numpy(keep).long())
  out = _run(cfg, variables, images, keep=keep)
  assert out['patch_tokens'].shape == (2, n // 2, WIDTH) and out['keys'].shape == (2, n // 2, WIDTH)
  assert _max_diff(out['tokens'], ref['blocks'][-1].numpy()) < TOL
  assert _max_diff(out['keys'], ref['keys'].numpy()) < TOL
  # Dropping changes the kept tokens' features (every block sees the shorter sequence).
  full = _run(cfg, variables, images)['patch_tokens']
  assert _max_diff(np.take_along_axis(full, keep[..., None], axis=1), out['patch_tokens']) > 1e-3


def test_keep_errors():
  cfg, (h, w) = OFFICIAL_CASES['dinov2_p14']
  variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), vit.abstract_variables(cfg))
  model = vit.VisionTransformer(cfg)
  with pytest.raises(ValueError, match=r'patch indices 0 \.\. 24; this input has patches 0 \.\. 23'):
    model.apply(variables, jnp.zeros((1, h, w, 3)), keep=jnp.array([[0, 24]]))
  with pytest.raises(ValueError, match='keep must be integer indices'):
    model.apply(variables, jnp.zeros((1, h, w, 3)), keep=jnp.zeros((1, 2)))
  # Under jit the values cannot be checked: an out-of-range index gives NaN, never a silently clamped token.
  small = _config(14, 1, layer_scale=False)
  _, small_vars = vit_weights.convert_vit(_numpy_state(_torch_vit(small)), small)
  out = jax.jit(lambda v, x, k: vit.VisionTransformer(small).apply(v, x, keep=k))(
      small_vars, jnp.ones((1, 14, 28, 3)), jnp.array([[0, 2]]))
  assert np.all(np.isnan(out['tokens']))


# ------------------------------------------------------------------------------------------------
# Inputs, outputs, dtype.
# ------------------------------------------------------------------------------------------------

def test_input_size_error_names_the_nearest_valid_sizes():
  cfg = _config(14, 4, layer_scale=True)
  abstract = vit.abstract_variables(cfg)
  model = vit.VisionTransformer(cfg)
  with pytest.raises(ValueError, match=r'Input size 50x84 is not a multiple of the patch size 14.*height 50 -> 42 '
                                       r'or 56'):
    jax.eval_shape(model.apply, abstract, jax.ShapeDtypeStruct((1, 50, 84, 3), jnp.float32))
  with pytest.raises(ValueError, match=r'NHWC'):
    jax.eval_shape(model.apply, abstract, jax.ShapeDtypeStruct((1, 3, 56, 56), jnp.float32))


def test_output_shapes_and_block_selection():
  cfg = vit.VIT_CONFIGS['dinov2_vitb14_reg']
  model = vit.VisionTransformer(cfg)
  abstract = vit.abstract_variables(cfg)
  x = jax.ShapeDtypeStruct((2, 336, 504, 3), jnp.float32)
  keep = jax.ShapeDtypeStruct((2, 432), jnp.int32)
  out = jax.eval_shape(functools.partial(model.apply, blocks=(-1, 3), with_attention=True, with_final_norm=True),
                       abstract, x)
  assert out['patch_tokens'].shape == (2, 864, 768) and out['keys'].shape == (2, 864, 768)
  assert out['tokens'].shape == out['normed'].shape == (2, 869, 768) and out['cls'].shape == (2, 768)
  assert out['registers'].shape == (2, 4, 768) and out['attention'].shape == (2, 12, 869, 869)
  assert [b.shape for b in out['blocks']] == [(2, 869, 768)] * 2
  out = jax.eval_shape(lambda v, x, k: model.apply(v, x, keep=k), abstract, x, keep)
  assert out['patch_tokens'].shape == (2, 432, 768) and 'attention' not in out and 'normed' not in out
  with pytest.raises(ValueError, match='has blocks 0 .. 11'):
    jax.eval_shape(functools.partial(model.apply, blocks=(12,)), abstract, x)


def test_bfloat16_compute_stays_close_to_float32():
  cfg, (h, w) = OFFICIAL_CASES['dinov2_p14']
  _, variables = vit_weights.convert_vit(_numpy_state(_torch_vit(cfg, seed=5)), cfg)
  images = _images(h, w)
  f32 = _run(cfg, variables, images)
  bf16 = _run(cfg, variables, images, dtype=jnp.bfloat16)
  assert jax.tree.leaves(variables)[0].dtype == jnp.float32
  for key in ('tokens', 'keys', 'normed', 'attention'):
    assert bf16[key].dtype == np.float32 and np.all(np.isfinite(bf16[key]))
    rel = np.linalg.norm(bf16[key] - f32[key]) / np.linalg.norm(f32[key])
    assert rel < 3e-2, (key, rel)


# ------------------------------------------------------------------------------------------------
# Parameter counts of the full-size variants (jax.eval_shape only).
# ------------------------------------------------------------------------------------------------

def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameter_counts_match_the_official_models():
  # The official DINO ViT-S/8 backbone file, final norm included (Betrayed-by-Attention's frozen encoder).
  assert _count(vit.abstract_variables('dino_vits8')) == 21_670_272
  # SOLV's frozen DINOv2 ViT-B/14 count (86,580,480) includes the unused mask_token (768), which we drop.
  assert _count(vit.abstract_variables('dinov2_vitb14')) + 768 == 86_580_480
  # The other counts the reference notes give: DINO ViT-S/16, ViT-B/8 and ViT-B/16.
  assert _count(vit.abstract_variables('dino_vits16')) == 21_665_664
  assert _count(vit.abstract_variables('dino_vitb8')) == 85_807_872
  assert _count(vit.abstract_variables('dino_vitb16')) == 85_798_656


# ------------------------------------------------------------------------------------------------
# Weight conversion.
# ------------------------------------------------------------------------------------------------

# transformers 5.x -> 4.x names (the inverse of transformers' own checkpoint conversion table).
_HF4 = {
    'vit': ((r'^layers\.(\d+)\.', r'encoder.layer.\1.'), (r'\.attention\.([qkv])_proj\.', None),
            (r'\.attention\.o_proj\.', '.attention.output.dense.'), (r'\.mlp\.fc1\.', '.intermediate.dense.'),
            (r'\.mlp\.fc2\.', '.output.dense.')),
    'dinov2': ((r'\.attention\.([qkv])_proj\.', None), (r'\.attention\.o_proj\.', '.attention.output.dense.')),
}


def _to_hf4(state: dict, family: str) -> dict:
  full = {'q': 'query', 'k': 'key', 'v': 'value'}
  out = {}
  for key, value in state.items():
    for pattern, replacement in _HF4[family]:
      if replacement is None:
        key = re.sub(pattern, lambda m: f'.attention.attention.{full[m[1]]}.', key)
      else:
        key = re.sub(pattern, replacement, key)
    out[key] = value
  return out


def _hf5_state(variables, cfg, family: str) -> dict:
  """Our variables -> a transformers 5.x state dict (written here from the official names, for tests)."""
  official = vit_weights.to_official_state_dict(variables, cfg, mask_token=False)
  c = cfg.width
  out = {'embeddings.cls_token': official['cls_token'], 'embeddings.position_embeddings': official['pos_embed'],
         'embeddings.patch_embeddings.projection.weight': official['patch_embed.proj.weight'],
         'embeddings.patch_embeddings.projection.bias': official['patch_embed.proj.bias'],
         'layernorm.weight': official['norm.weight'], 'layernorm.bias': official['norm.bias']}
  for i in range(cfg.depth):
    src = f'blocks.{i}.'
    dst = f'layers.{i}.' if family == 'vit' else f'encoder.layer.{i}.'
    for leaf in ('weight', 'bias'):
      qkv = official[f'{src}attn.qkv.{leaf}']
      for j, name in enumerate('qkv'):
        out[f'{dst}attention.{name}_proj.{leaf}'] = qkv[j * c:(j + 1) * c]
      out[f'{dst}attention.o_proj.{leaf}'] = official[f'{src}attn.proj.{leaf}']
      norms = ('layernorm_before', 'layernorm_after') if family == 'vit' else ('norm1', 'norm2')
      out[f'{dst}{norms[0]}.{leaf}'] = official[f'{src}norm1.{leaf}']
      out[f'{dst}{norms[1]}.{leaf}'] = official[f'{src}norm2.{leaf}']
      out[f'{dst}mlp.fc1.{leaf}'] = official[f'{src}mlp.fc1.{leaf}']
      out[f'{dst}mlp.fc2.{leaf}'] = official[f'{src}mlp.fc2.{leaf}']
  return out


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_conversion_from_every_naming_gives_the_same_variables():
  # DINOv2 with registers: official names (from the torch statement) vs transformers 5.x and 4.x names.
  kw = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, patch_size=14, image_size=56)
  hf = torch_vit.randomize_(
      transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **kw)), 6)
  hf5 = _numpy_state(hf)
  cfg = _config(14, 4, layer_scale=True, registers=4)
  _, from_hf5 = vit_weights.convert_vit(hf5, cfg)
  assert vit_weights.normalise_state_dict(hf5)[1] == 'hf-5.x'
  hf4 = _to_hf4(hf5, 'dinov2')
  assert 'encoder.layer.0.attention.attention.query.weight' in hf4
  assert vit_weights.normalise_state_dict(hf4)[1] == 'hf-4.x'
  _, from_hf4 = vit_weights.convert_vit(hf4, cfg)
  _assert_same_params(from_hf5, from_hf4)
  # The qkv kernel is q | k | v (transposed), the register tokens come along.
  qkv = np.asarray(from_hf5['params']['block_1']['qkv']['kernel'])
  np.testing.assert_array_equal(qkv[:, WIDTH:2 * WIDTH], hf5['encoder.layer.1.attention.k_proj.weight'].T)
  np.testing.assert_array_equal(from_hf5['params']['register_tokens'], hf5['embeddings.register_tokens'])
  official = vit_weights.to_official_state_dict(from_hf5, cfg)
  torch_vit_model = _torch_vit(cfg)
  torch_vit_model.load_state_dict({k: torch.from_numpy(v) for k, v in official.items()}, strict=True)
  # With the `dinov2.` prefix of the classification wrapper and a classifier head: the same.
  prefixed = {f'dinov2.{k}': v for k, v in hf4.items()} | {'classifier.weight': np.zeros((3, 2 * WIDTH))}
  _assert_same_params(vit_weights.convert_vit(prefixed, cfg)[1], from_hf5)

  # ViTModel (DINO v1): 5.x names (real), 4.x names, official names, a DINO teacher dict with prefixes.
  hf_cfg = transformers.ViTConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                  intermediate_size=4 * WIDTH, patch_size=8, image_size=32, qkv_bias=True,
                                  layer_norm_eps=1e-6, hidden_act='gelu')
  hf = torch_vit.randomize_(transformers.ViTModel(hf_cfg, add_pooling_layer=False), 7)
  cfg = _config(8, 4, layer_scale=False)
  _, from_vit5 = vit_weights.convert_vit(_numpy_state(hf), cfg)
  _, from_vit4 = vit_weights.convert_vit(_to_hf4(_numpy_state(hf), 'vit'), cfg)
  _assert_same_params(from_vit5, from_vit4)
  official = vit_weights.to_official_state_dict(from_vit5, cfg)
  assert 'mask_token' not in official
  _, from_official = vit_weights.convert_vit(official, cfg)
  _assert_same_params(from_official, from_vit5)
  teacher = {f'backbone.{k}': v for k, v in official.items()} | {'head.mlp.0.weight': np.zeros((8, WIDTH))}
  _assert_same_params(vit_weights.convert_vit(teacher, cfg)[1], from_vit5)
  student = {f'module.backbone.{k}': v for k, v in official.items()}
  _assert_same_params(vit_weights.convert_vit(student, cfg)[1], from_vit5)


def test_timm_register_layout_computes_the_same(tmp_path):
  """timm stores DINOv2 _reg as `reg_token`, a CLS token holding its position, and no CLS row in pos_embed."""
  cfg, (h, w) = OFFICIAL_CASES['dinov2_reg_p14']
  reference = _torch_vit(cfg, seed=8)
  official = _numpy_state(reference)
  timm = {k: v for k, v in official.items() if k not in ('register_tokens', 'cls_token', 'pos_embed', 'mask_token')}
  timm |= {'reg_token': official['register_tokens'], 'pos_embed': official['pos_embed'][:, 1:],
           'cls_token': official['cls_token'] + official['pos_embed'][:, :1]}
  torch.save({k: torch.from_numpy(v) for k, v in timm.items()}, tmp_path / 'timm.pth')
  _, variables = vit_weights.load_vit(str(tmp_path / 'timm.pth'), cfg)
  images = _images(h, w)
  with torch.inference_mode():
    ref = reference(_nchw(images))['blocks'][-1].numpy()
  assert _max_diff(_run(cfg, variables, images)['tokens'], ref) < TOL


def test_round_trip_official_names():
  for cfg in (_config(8, 28, layer_scale=False), _config(14, 37, layer_scale=True, registers=4)):
    official = _numpy_state(_torch_vit(cfg, seed=9))
    _, variables = vit_weights.convert_vit(official, cfg)
    back = vit_weights.to_official_state_dict(variables, cfg)
    assert set(back) == set(official)
    for key, value in official.items():
      expected = np.zeros_like(value) if key == 'mask_token' else value
      np.testing.assert_array_equal(back[key], expected, err_msg=key)
  # DINOv2 trained with block_chunks=2 names block i `blocks.{chunk}.{i}.` (chunk 0: block 0, chunk 1: block 1).
  chunked = {re.sub(r'^blocks\.(\d+)\.', lambda m: f'blocks.{m[1]}.{m[1]}.', k): v for k, v in official.items()}
  assert 'blocks.1.1.attn.qkv.weight' in chunked
  _assert_same_params(vit_weights.convert_vit(chunked, cfg)[1], variables)


def test_training_checkpoint_is_refused_with_the_recipe(tmp_path):
  cfg = _config(8, 4, layer_scale=False)
  backbone = {k: torch.from_numpy(v) for k, v in _numpy_state(_torch_vit(cfg)).items()}
  full = {'student': {f'module.backbone.{k}': v for k, v in backbone.items()} | {'module.head.mlp.0.weight':
                                                                                     torch.zeros(4, WIDTH)},
          'teacher': {f'backbone.{k}': v for k, v in backbone.items()},
          'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 3,
          'args': argparse.Namespace(arch='vit_small', patch_size=8), 'dino_loss': {'center': torch.zeros(1, 8)}}
  path = tmp_path / 'checkpoint.pth'
  torch.save(full, path)
  with pytest.raises(ValueError, match=r"(?s)checkpoint\.pth is a DINO training checkpoint.*"
                                       r"removeprefix\('backbone\.'\).*\['teacher'\]"):
    vit_weights.read_vit_checkpoint(str(path))
  # Flattened into one dict (e.g. by another reader): the same refusal, never a partial load.
  flat = {f'teacher.{k}': v.numpy() for k, v in full['teacher'].items()}
  with pytest.raises(ValueError, match='DINO training checkpoint'):
    vit_weights.convert_vit(flat)
  # What gsa_jax.weights.read_state_dict keeps of it (no top-level tensors): a clear error, not an empty model.
  with pytest.raises(ValueError, match='No ViT patch embedding.*read_vit_checkpoint'):
    vit_weights.convert_vit({}, cfg)
  # The teacher entry extracted as the message says loads.
  extracted = {k.removeprefix('backbone.'): v for k, v in full['teacher'].items()}
  torch.save(extracted, tmp_path / 'teacher_backbone.pth')
  name, _ = vit_weights.load_vit(str(tmp_path / 'teacher_backbone.pth'), cfg)
  assert name == cfg.name


def _zero_state(variant) -> dict[str, np.ndarray]:
  """An official-named state dict of `variant`'s shapes (read-only zero views, no memory), mask_token included."""
  state = {k: np.broadcast_to(np.float32(0), s) for k, s in vit_weights.official_shapes(variant).items()}
  if vit.get_config(variant).layer_scale:
    state['mask_token'] = np.zeros((1, vit.get_config(variant).width), np.float32)
  return state


def test_variant_is_inferred_from_the_shapes():
  # Every variant differs from every other in at least one inferred property...
  props = [vit_weights._config_properties(c) for c in vit.VIT_CONFIGS.values()]
  assert len({tuple(sorted(p.items())) for p in props}) == len(props)
  # ... and full-size checkpoints of each patch size, width, LayerScale and register kind are recognised.
  for name in ('dino_vits8', 'dino_vitb8', 'dinov2_vitb14', 'dinov2_vitb14_reg'):  # cached by other tests
    state, _ = vit_weights.normalise_state_dict(_zero_state(name))
    assert vit_weights.infer_variant(state) == name
  with pytest.raises(ValueError, match=r"No ViT variant has the shapes of this checkpoint \{'width': 32"):
    vit_weights.convert_vit(_numpy_state(_torch_vit(_config(8, 4, layer_scale=False))))


def test_wrong_variant_names_the_first_mismatching_tensor():
  state = _zero_state('dino_vits8')
  with pytest.raises(ValueError, match=r'patch_embed\.proj\.weight has shape \(384, 3, 8, 8\); dinov2_vits14 '
                                       r'expects \(384, 3, 14, 14\) \(the checkpoint looks like dino_vits8\)'):
    vit_weights.convert_vit(state, 'dinov2_vits14')
  with pytest.raises(ValueError, match=r'patch_embed\.proj\.weight has shape \(384, 3, 8, 8\); dino_vitb8 '
                                       r'expects \(768, 3, 8, 8\)'):
    vit_weights.convert_vit(state, 'dino_vitb8')
  with pytest.raises(ValueError, match=r'no register_tokens, which dinov2_vits14_reg needs with shape \(1, 4, 384\)'):
    vit_weights.convert_vit(_zero_state('dinov2_vits14'), 'dinov2_vits14_reg')
  with pytest.raises(ValueError, match=r'blocks\.0\.ls1\.gamma \(shape \(384,\)\) has no place in vits14_no_ls'):
    vit_weights.convert_vit(_zero_state('dinov2_vits14'), vit.ViTConfig('vits14_no_ls', 384, 12, 6, 14, 37, False))


def test_mode_convert_infers_checks_and_refuses(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gsa_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from gsa_jax import convert  # pylint: disable=g-import-not-at-top
  shapes = vit_weights.official_shapes('dino_vits16')
  rng = np.random.default_rng(0)
  source = tmp_path / 'vit.pth'
  torch.save({k: torch.from_numpy(rng.standard_normal(s, np.float32) * 0.02) for k, s in shapes.items()}, source)
  # --kind=vit infers the variant; the step folder holds the backbone under scope 'backbone'.
  convert.convert(str(source), kind='vit', output_dir=str(tmp_path / 'out'))
  variables, meta = ckpt_lib.load_variables(str(tmp_path / 'out'))
  assert (meta['scope'], meta['backbone'], meta['kind']) == ('backbone', 'dino_vits16', 'vit')
  np.testing.assert_array_equal(np.asarray(variables['params']['patch_embed']['kernel']),
                                np.transpose(torch.load(source)['patch_embed.proj.weight'].numpy(), (2, 3, 1, 0)))
  # A checkpoint of another size or patch for the chosen variant: one error naming the file, both shapes, the fix.
  with pytest.raises(convert.ConvertError, match=r'(?s)vit\.pth: Checkpoint tensor patch_embed\.proj\.weight has '
                                                 r'shape \(384, 3, 16, 16\); dinov2_vits14 expects .*looks like '
                                                 r'dino_vits16.*--kind=vit'):
    convert.convert(str(source), kind='dinov2_vits14', output_dir=str(tmp_path / 'bad1'))
  config = ml_collections.ConfigDict({'model': {'name': 'solv', 'encoder': 'dino_vits8'}})
  with pytest.raises(convert.ConvertError, match=r'vit\.pth: .*dino_vits8 expects \(384, 3, 8, 8\)'):
    convert.convert(str(source), kind='vit', output_dir=str(tmp_path / 'bad2'), config=config)
  with pytest.raises(convert.ConvertError, match=r"--kind=dino_vits16 but the config's model\.encoder is 'dino_vits8'"):
    convert.convert(str(source), kind='dino_vits16', output_dir=str(tmp_path / 'bad3'), config=config)
  assert not any((tmp_path / d).exists() for d in ('bad1', 'bad2', 'bad3'))
  # A DINO training checkpoint gets the recipe, through --mode=convert too.
  torch.save({'teacher': {f'backbone.{k}': torch.zeros(1) for k in list(shapes)[:3]}, 'student': {}, 'epoch': 1},
             tmp_path / 'checkpoint.pth')
  with pytest.raises(convert.ConvertError, match=r"(?s)DINO training checkpoint.*\['teacher'\]"):
    convert.convert(str(tmp_path / 'checkpoint.pth'), kind='vit', output_dir=str(tmp_path / 'bad4'))
  assert {'vit', 'dino_vits8', 'dinov2_vitb14'} <= set(convert.kinds())


@pytest.mark.parametrize('family, patch, layer_scale', [('vit', 8, False), ('dinov2', 14, True)])
def test_benchmark_shares_the_weights_with_transformers(family, patch, layer_scale):
  from gsa_jax.bench import vit as vit_bench  # pylint: disable=g-import-not-at-top
  cfg = _config(patch, 4, layer_scale=layer_scale)
  side = 4 * patch  # the native grid: no position resize on either side, so the outputs must agree
  r = vit_bench.bench_case(cfg, family, side, side, repeats=1, warmup=1, log=lambda _: None)
  assert r['tokens'] == 17 and r['max_abs_diff_patch_tokens'] < 1e-4
  assert min(r[k]['median_s'] for k in ('ours_f32', 'ours_bf16', 'transformers_f32')) > 0
  assert 'speedup_ours_f32_vs_transformers' in r and cfg.name in vit_bench.table({'vit': [r]})
