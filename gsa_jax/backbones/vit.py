"""DINO (v1) and DINOv2 Vision Transformers in Flax linen, NHWC, with the official position-embedding resize.

Architecture (both families): a p x p stride-p patch conv, a CLS token (then, for the `_reg` variants,
4 register tokens), a learned position embedding for a square training grid (CLS + g*g patches; registers
get none), pre-LN blocks x + ls1(proj(attn(norm1(x)))), x + ls2(fc2(gelu(fc1(norm2(x))))) with a fused qkv
Dense (bias), exact GELU and LayerNorm eps 1e-6, and a final LayerNorm `norm`. DINOv2 has LayerScale
(`ls1`, `ls2`); DINO v1 has none.

Parameter tree, one to one with the official / timm state dict (gsa_jax/backbones/vit_weights.py):

  official / timm                              here (params/...)
  patch_embed.proj.{weight,bias}               patch_embed/{kernel,bias}      [p, p, 3, c], [c]
  cls_token                                    cls_token                      [1, 1, c]
  pos_embed                                    pos_embed                      [1, 1 + g*g, c]
  register_tokens (DINOv2 _reg)                register_tokens                [1, r, c]
  blocks.{i}.norm1.{weight,bias}               block_{i}/norm1/{scale,bias}
  blocks.{i}.attn.qkv.{weight,bias}            block_{i}/qkv/{kernel,bias}    [c, 3c] (q | k | v, head-major)
  blocks.{i}.attn.proj.{weight,bias}           block_{i}/proj/{kernel,bias}
  blocks.{i}.ls1.gamma (DINOv2)                block_{i}/ls1/gamma            [c]
  blocks.{i}.norm2.{weight,bias}               block_{i}/norm2/{scale,bias}
  blocks.{i}.mlp.fc1 / mlp.fc2                 block_{i}/fc1 / block_{i}/fc2
  blocks.{i}.ls2.gamma (DINOv2)                block_{i}/ls2/gamma
  norm.{weight,bias}                           norm/{scale,bias}
  mask_token (DINOv2, unused by any forward)   -- (not kept; written back as zeros on export)

Token order in every sequence: [CLS, registers (r), patches (n = h/p * w/p, row-major)].

Position-embedding resize (`resize_pos_embed`), as the official `interpolate_pos_encoding`: at the training
grid the embedding is used unchanged; otherwise the g x g patch grid is resized with PyTorch's bicubic
`F.interpolate`. DINO v1 and DINOv2 pass `scale_factor = (new + 0.1) / g` (the `+ 0.1` offset), so PyTorch
maps output index o to the source coordinate (o + 0.5) / s - 0.5 with that s (not g / new), then applies
Keys' cubic (a = -0.75) with indices clamped at the edges, no antialias. The official DINOv2 *register*
variants pass `size=` (offset 0) with `antialias=True` instead, i.e. PyTorch's antialiased bicubic (a = -0.5,
weights renormalised at the borders); `ViTConfig.interpolate_offset` / `interpolate_antialias` carry this
per variant. Both are built here as two small constant matrices (numpy, per size) applied with einsums.
"""

import dataclasses
import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LAYER_NORM_EPS = 1e-6

_dense_init = nn.initializers.truncated_normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Hyper-parameters of one ViT variant."""
  name: str
  width: int
  depth: int
  num_heads: int
  patch_size: int
  pos_grid: int                        # side g of the trained position grid (224/16 = 14, 224/8 = 28, 518/14 = 37)
  layer_scale: bool                    # DINOv2's ls1 / ls2
  num_register_tokens: int = 0
  mlp_ratio: int = 4
  interpolate_offset: float = 0.1      # > 0: scale_factor = (new + offset) / g; 0: size=
  interpolate_antialias: bool = False

  @property
  def num_prefix_tokens(self) -> int:
    """CLS plus registers."""
    return 1 + self.num_register_tokens

  @property
  def trained_size(self) -> int:
    """Input side (pixels) of the training grid."""
    return self.pos_grid * self.patch_size


def _dino(name: str, width: int, heads: int, patch: int) -> ViTConfig:
  return ViTConfig(name, width, 12, heads, patch, pos_grid=224 // patch, layer_scale=False)


def _dinov2(name: str, width: int, depth: int, heads: int, registers: int = 0) -> ViTConfig:
  # The hub builds the register variants with interpolate_offset=0.0, interpolate_antialias=True.
  return ViTConfig(name, width, depth, heads, 14, pos_grid=37, layer_scale=True, num_register_tokens=registers,
                   interpolate_offset=0.0 if registers else 0.1, interpolate_antialias=bool(registers))


VIT_CONFIGS: dict[str, ViTConfig] = {c.name: c for c in (
    _dino('dino_vits8', 384, 6, 8),
    _dino('dino_vits16', 384, 6, 16),
    _dino('dino_vitb8', 768, 12, 8),
    _dino('dino_vitb16', 768, 12, 16),
    _dinov2('dinov2_vits14', 384, 12, 6),
    _dinov2('dinov2_vitb14', 768, 12, 12),
    _dinov2('dinov2_vitl14', 1024, 24, 16),
    _dinov2('dinov2_vits14_reg', 384, 12, 6, registers=4),
    _dinov2('dinov2_vitb14_reg', 768, 12, 12, registers=4),
    _dinov2('dinov2_vitl14_reg', 1024, 24, 16, registers=4),
)}


def get_config(variant: 'str | ViTConfig') -> ViTConfig:
  """VIT_CONFIGS[variant]; a ViTConfig is returned as is (e.g. a small one for tests)."""
  if isinstance(variant, ViTConfig):
    return variant
  if variant not in VIT_CONFIGS:
    raise ValueError(f'Unknown ViT variant {variant!r}; choose one of {sorted(VIT_CONFIGS)}.')
  return VIT_CONFIGS[variant]


# ------------------------------------------------------------------------------------------------
# Position-embedding resize: PyTorch's bicubic F.interpolate (align_corners=False) as 1-D matrices.
# ------------------------------------------------------------------------------------------------

def _keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel W(x) with parameter a (|x| < 2 support)."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0)).astype(x.dtype)


def bicubic_matrix(in_size: int, out_size: int, scale_factor: float | None = None, *,
                   antialias: bool = False) -> np.ndarray:
  """[out_size, in_size] float32 matrix M with y = M @ x equal to PyTorch's 1-D bicubic resize.

  `scale_factor` given: PyTorch's scale-factor form (coordinate scale 1 / scale_factor); None: the `size=`
  form (coordinate scale in / out). Without antialias (upsample_bicubic2d): src = scale * (o + 0.5) - 0.5,
  taps floor(src) - 1 .. floor(src) + 2 clamped to [0, in - 1], Keys a = -0.75. With antialias
  (_upsample_bicubic2d_aa): a = -0.5, taps within support 2 * max(scale, 1) of the centre scale * (o + 0.5),
  arguments divided by max(scale, 1), weights normalised to sum 1 over the in-range taps. Coordinates are
  rounded as PyTorch's float32 CPU kernels round them (src with one rounding, as the fused multiply-add of
  FMA hardware; the antialiased centre in float32), which keeps the results within ~2e-6 of PyTorch.
  """
  f32 = np.float32
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  if scale_factor is not None and scale_factor > 0:
    scale = f32(1.0 / scale_factor)
  else:
    scale = f32(in_size) / f32(out_size)
  if not antialias:
    src = (np.float64(scale) * (rows + 0.5) - 0.5).astype(f32)
    base = np.floor(src)
    t = (src - base).astype(np.float64)
    taps = (_keys_cubic(t + 1, -0.75), _keys_cubic(t, -0.75), _keys_cubic(1 - t, -0.75),
            _keys_cubic(2 - t, -0.75))
    for k, weight in enumerate(taps):
      index = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
      np.add.at(m, (rows, index), weight)
    return m.astype(f32)
  support = f32(2.0) * scale if scale >= 1.0 else f32(2.0)
  inv_scale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
  for o in rows:
    center = scale * f32(o + 0.5)
    lo = max(int(center - support + f32(0.5)), 0)
    hi = min(int(center + support + f32(0.5)), in_size)
    j = np.arange(lo, hi).astype(f32)
    weight = _keys_cubic(((j - center + f32(0.5)) * inv_scale).astype(np.float64), -0.5)
    total = weight.sum()
    m[o, lo:hi] = weight / total if total != 0 else weight
  return m.astype(f32)


def resize_pos_embed(grid: jnp.ndarray, new_hw: tuple[int, int], *, offset: float = 0.1,
                     antialias: bool = False) -> jnp.ndarray:
  """Resizes a position grid [gh, gw, c] to [nh, nw, c] exactly as the official DINO / DINOv2 code.

  The training size returns `grid` unchanged. Otherwise PyTorch's bicubic `F.interpolate` is reproduced:
  with `offset` > 0 the scale-factor form, scale_factor = (new + offset) / old per axis (DINO's `+ 0.1`,
  DINOv2's interpolate_offset); with `offset` = 0 the `size=` form. `antialias` as `F.interpolate`. A pure
  jnp function of static shapes (the matrices are numpy constants), usable under jit; computed in float32.
  """
  gh, gw = grid.shape[:2]
  nh, nw = (int(s) for s in new_hw)
  if (nh, nw) == (gh, gw):
    return grid
  factors = []
  for old, new in ((gh, nh), (gw, nw)):
    if offset:
      factor = float(new + offset) / old
      if math.floor(old * factor) != new:  # PyTorch's output size is floor(old * factor).
        raise ValueError(f'offset {offset} gives {math.floor(old * factor)} positions instead of {new} '
                         f'when resizing {old} -> {new}; use an offset in (0, 1).')
      factors.append(factor)
    else:
      factors.append(None)
  mh = bicubic_matrix(gh, nh, factors[0], antialias=antialias)  # [nh gh]
  mw = bicubic_matrix(gw, nw, factors[1], antialias=antialias)  # [nw gw]
  hi = jax.lax.Precision.HIGHEST
  out = jnp.einsum('Hh,hwc->Hwc', mh, grid.astype(jnp.float32), precision=hi)   # [nh gw c]
  return jnp.einsum('Ww,Hwc->HWc', mw, out, precision=hi)                      # [nh nw c]


def resize_pos_embed_tokens(pos_embed: jnp.ndarray, new_hw: tuple[int, int], config: ViTConfig) -> jnp.ndarray:
  """The checkpoint's [1, 1 + g*g, c] position embedding -> [1, 1 + nh*nw, c] for a patch grid nh x nw."""
  c = pos_embed.shape[-1]
  g = config.pos_grid
  grid = pos_embed[0, 1:].reshape(g, g, c)
  grid = resize_pos_embed(grid, new_hw, offset=config.interpolate_offset, antialias=config.interpolate_antialias)
  return jnp.concatenate([pos_embed[:, :1], grid.reshape(1, -1, c).astype(pos_embed.dtype)], axis=1)


def prepare_pos_embed(params: dict, config: ViTConfig, image_hw: tuple[int, int]) -> jnp.ndarray:
  """Precomputes the [1, 1 + n, c] position embedding for an input of `image_hw` pixels.

  Pass it as `pos_embed=` to `VisionTransformer.__call__` to skip the (small) resize in every forward.
  `params` is the 'params' collection of the model.
  """
  return resize_pos_embed_tokens(params['pos_embed'], patch_grid(config, image_hw), config)


def patch_grid(config: ViTConfig, image_hw: tuple[int, int]) -> tuple[int, int]:
  """(h / p, w / p), or a ValueError naming the size and the nearest valid sizes."""
  p = config.patch_size
  h, w = (int(s) for s in image_hw)
  if h % p or w % p or h <= 0 or w <= 0:
    options = []
    for name, s in (('height', h), ('width', w)):
      if s % p or s <= 0:
        down, up = (s // p) * p, -(-s // p) * p
        options.append(f'{name} {s} -> {" or ".join(str(v) for v in (down, up) if v > 0) or p}')
    raise ValueError(f'Input size {h}x{w} is not a multiple of the patch size {p} of {config.name}; nearest '
                     f'valid sizes: {", ".join(options)} (e.g. {max(p, round(h / p) * p)}x'
                     f'{max(p, round(w / p) * p)}).')
  return h // p, w // p


def tokens_to_map(tokens: jnp.ndarray, grid_hw: tuple[int, int]) -> jnp.ndarray:
  """Patch tokens [b, n, c] (row-major, n = gh * gw) -> [b, gh, gw, c]."""
  return tokens.reshape(tokens.shape[0], grid_hw[0], grid_hw[1], tokens.shape[-1])


# ------------------------------------------------------------------------------------------------
# Modules.
# ------------------------------------------------------------------------------------------------

class LayerScale(nn.Module):
  """x * gamma, gamma [c] (DINOv2's LayerScale; the hub builds init 1.0)."""
  init_value: float = 1.0

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    gamma = self.param('gamma', nn.initializers.constant(self.init_value), (x.shape[-1],), jnp.float32)
    return x * gamma


def _layer_norm(name: str, dtype: jnp.dtype) -> nn.LayerNorm:
  # Two-pass variance: DINOv2's residual stream carries large values, where E[x^2] - E[x]^2 loses digits.
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype, name=name)


class Block(nn.Module):
  """Pre-LN ViT block on [b, N, c] tokens.

  Returns (tokens [b, N, c] float32, keys [b, N, c] in `dtype`, attention [b, heads, N, N] float32 or None).
  keys = qkv(norm1(x))[..., c:2c] (bias included, heads concatenated head-major). The residual stream stays
  float32 (as under PyTorch autocast); matmuls run in `dtype`, the softmax and LN statistics in float32.
  """
  num_heads: int
  mlp_ratio: int = 4
  layer_scale: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, with_attention: bool = False):
    b, n, c = x.shape
    d = c // self.num_heads
    dense = lambda features, name: nn.Dense(features, kernel_init=_dense_init, dtype=self.dtype, name=name)
    scale = (lambda y, name: LayerScale(name=name)(y)) if self.layer_scale else (lambda y, name: y)

    qkv = dense(3 * c, 'qkv')(_layer_norm('norm1', self.dtype)(x))                 # [b N 3c]
    keys = qkv[..., c:2 * c]                                                       # [b N c]
    q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(b, n, self.num_heads, d) for i in range(3))
    attention = None
    if with_attention:
      logits = jnp.einsum('bqhd,bkhd->bhqk', q * jnp.asarray(d**-0.5, q.dtype), k)  # [b heads N N]
      attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      y = jnp.einsum('bhqk,bkhd->bqhd', attention.astype(self.dtype), v).reshape(b, n, c)
    else:  # the same softmax(q k^T / sqrt(d)) v; XLA's fused attention: 2.5x faster on a CPU at N = 2401
      y = jax.nn.dot_product_attention(q, k, v).reshape(b, n, c)
    x = x + scale(dense(c, 'proj')(y), 'ls1').astype(jnp.float32)
    y = dense(c * self.mlp_ratio, 'fc1')(_layer_norm('norm2', self.dtype)(x))      # [b N 4c]
    y = dense(c, 'fc2')(nn.gelu(y, approximate=False))
    x = x + scale(y, 'ls2').astype(jnp.float32)
    return x, keys, attention


class VisionTransformer(nn.Module):
  """DINO / DINOv2 ViT: images [b, h, w, 3] (h, w multiples of the patch p) -> a dict of token outputs.

  __call__(x, *, keep=None, blocks=(), with_attention=False, with_final_norm=False, pos_embed=None):
    keep             int [b, n_keep]: indices (0 .. h/p * w/p - 1) of the patch tokens to keep, gathered
                     after the position embedding is added (CLS and registers always kept); every block then
                     runs on the 1 + r + n_keep tokens (SOLV's token drop). None keeps all n = h/p * w/p.
    blocks           block indices (negative counts from the end) whose full outputs to return in 'blocks'.
    with_attention   also return the last block's attention map.
    with_final_norm  also return the final-normed last tokens.
    pos_embed        a precomputed [1, 1 + n, c] embedding (`prepare_pos_embed`); None resizes in the graph.
  Returns (float32; n' = n_keep or n; N = 1 + r + n'):
    'tokens'        [b, N, c]   last block's output, before the final norm
    'patch_tokens'  [b, n', c]  its patch tokens (SOLV's features; `tokens_to_map` makes [b, h/p, w/p, c])
    'cls'           [b, c]      its CLS token (before the final norm)
    'keys'          [b, n', c]  last block's key projection of the patch tokens (Betrayed-by-Attention)
    'registers'     [b, r, c]   (register variants only)
    'blocks'        tuple of [b, N, c], one per entry of `blocks`   (if `blocks`)
    'normed'        [b, N, c]   norm(tokens)                        (if with_final_norm)
    'attention'     [b, heads, N, N]  last block's softmax          (if with_attention)
  `dtype` is the compute dtype (e.g. bfloat16); parameters stay float32.
  """
  config: ViTConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, keep: jnp.ndarray | None = None, blocks: Sequence[int] = (),
               with_attention: bool = False, with_final_norm: bool = False,
               pos_embed: jnp.ndarray | None = None) -> dict:
    cfg = self.config
    c, p, r = cfg.width, cfg.patch_size, cfg.num_register_tokens
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'{cfg.name} expects images [b, h, w, 3] (NHWC); got shape {tuple(x.shape)}.')
    b = x.shape[0]
    gh, gw = patch_grid(cfg, x.shape[1:3])
    n = gh * gw
    wanted = tuple(i + cfg.depth if i < 0 else i for i in blocks)
    if any(not 0 <= i < cfg.depth for i in wanted):
      raise ValueError(f'blocks={tuple(blocks)}: {cfg.name} has blocks 0 .. {cfg.depth - 1} (or -1 .. -{cfg.depth}).')
    if keep is not None:
      self._check_keep(keep, b, n)

    patches = nn.Conv(c, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, name='patch_embed')(x)
    patches = patches.reshape(b, n, c).astype(jnp.float32)                         # [b n c]
    cls = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, c), jnp.float32)
    pos_param = self.param('pos_embed', _dense_init, (1, 1 + cfg.pos_grid**2, c), jnp.float32)
    if pos_embed is None:
      pos_embed = resize_pos_embed_tokens(pos_param, (gh, gw), cfg)
    elif tuple(pos_embed.shape) != (1, 1 + n, c):
      raise ValueError(f'pos_embed has shape {tuple(pos_embed.shape)}; a {x.shape[1]}x{x.shape[2]} input needs '
                       f'(1, {1 + n}, {c}) (prepare_pos_embed(params, config, ({x.shape[1]}, {x.shape[2]}))).')
    cls = jnp.broadcast_to(cls + pos_embed[:, :1], (b, 1, c))                      # [b 1 c]
    patches = patches + pos_embed[:, 1:]
    if keep is not None:  # Out-of-range indices under jit give NaN tokens (mode='fill'), never a silent clamp.
      patches = jnp.take_along_axis(patches, keep[..., None].astype(jnp.int32), axis=1, mode='fill')  # [b n' c]
    prefix = [cls]
    if r:
      registers = self.param('register_tokens', nn.initializers.normal(1e-6), (1, r, c), jnp.float32)
      prefix.append(jnp.broadcast_to(registers, (b, r, c)))
    tokens = jnp.concatenate(prefix + [patches], axis=1)                           # [b N c]

    outputs: dict = {}
    per_block: dict[int, jnp.ndarray] = {}
    keys = attention = None
    for i in range(cfg.depth):
      last = i == cfg.depth - 1
      tokens, keys, attention = Block(cfg.num_heads, cfg.mlp_ratio, cfg.layer_scale, dtype=self.dtype,
                                      name=f'block_{i}')(tokens, with_attention=with_attention and last)
      if i in wanted:
        per_block[i] = tokens
    if wanted:
      outputs['blocks'] = tuple(per_block[i] for i in wanted)
    start = cfg.num_prefix_tokens
    outputs.update(tokens=tokens, patch_tokens=tokens[:, start:], cls=tokens[:, 0],
                   keys=keys[:, start:].astype(jnp.float32))
    if r:
      outputs['registers'] = tokens[:, 1:start]
    norm = _layer_norm('norm', self.dtype)
    if with_final_norm or self.is_initializing():
      normed = norm(tokens).astype(jnp.float32)
      if with_final_norm:
        outputs['normed'] = normed
    if with_attention:
      outputs['attention'] = attention
    return outputs

  @staticmethod
  def _check_keep(keep: jnp.ndarray, b: int, n: int) -> None:
    if keep.ndim != 2 or keep.shape[0] != b or not jnp.issubdtype(keep.dtype, jnp.integer):
      raise ValueError(f'keep must be integer indices [b={b}, n_keep]; got {keep.dtype} {tuple(keep.shape)}.')
    if not isinstance(keep, jax.core.Tracer):
      lo, hi = int(np.min(keep)), int(np.max(keep))
      if lo < 0 or hi >= n:
        raise ValueError(f'keep holds patch indices {lo} .. {hi}; this input has patches 0 .. {n - 1}.')


def build_vit(variant: str | ViTConfig, *, dtype: jnp.dtype = jnp.float32,
              name: str | None = None) -> VisionTransformer:
  """The VisionTransformer of `variant` (a key of VIT_CONFIGS)."""
  return VisionTransformer(get_config(variant), dtype=dtype, name=name)


def abstract_variables(variant: str | ViTConfig) -> dict:
  """`jax.eval_shape` of the variant's init (no computation; cached, do not modify the result)."""
  return _abstract_variables(get_config(variant))


@functools.lru_cache(maxsize=None)
def _abstract_variables(cfg: ViTConfig) -> dict:
  model = VisionTransformer(cfg)
  x = jax.ShapeDtypeStruct((1, cfg.patch_size, cfg.patch_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
