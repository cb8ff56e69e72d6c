"""SegFormer's Mix Transformer encoder (MiT-b0 ... MiT-b5) in Flax linen, NHWC.

The encoder has four stages. Each stage is an overlapping patch embedding (a strided conv + LayerNorm),
a stack of pre-LN transformer blocks (efficient self-attention with spatially reduced keys/values, then a
Mix-FFN with a depthwise 3x3 conv), and a final LayerNorm. The four stage maps come out at strides
4, 8, 16 and 32.

Submodule names follow the Hugging Face transformers 5.x `SegformerModel` layout so that weight
conversion (gsa_jax/convert.py) is a plain name map:

  HF (5.x)                                              here
  stages.{i}.patch_embeddings.{proj,layer_norm}         stage_{i}/patch_embeddings/{proj,layer_norm}
  stages.{i}.blocks.{j}.layernorm_before                stage_{i}/block_{j}/layernorm_before
  stages.{i}.blocks.{j}.attention.{q,k,v,o}_proj        stage_{i}/block_{j}/attention/{q,k,v,o}_proj
  ...attention.sequence_reduction.sequence_reduction    .../attention/sequence_reduction/conv
  ...attention.sequence_reduction.layer_norm            .../attention/sequence_reduction/layer_norm
  stages.{i}.blocks.{j}.layernorm_after                 stage_{i}/block_{j}/layernorm_after
  stages.{i}.blocks.{j}.mlp.{fc1,dwconv.dwconv,fc2}     stage_{i}/block_{j}/mlp/{fc1,dwconv,fc2}
  stages.{i}.layer_norm                                 stage_{i}/layer_norm

Every LayerNorm uses eps 1e-5 (as the HF and official implementations do, whatever the config says).
"""

import dataclasses
import functools

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax import backbones
from gsa_jax import layers

LAYER_NORM_EPS = 1e-5

# Initialisers as in SegFormer: linear layers trunc-normal(0.02), convs He-normal over fan-out
# (for the depthwise conv torch's fan-out is 3*3*out/groups = 9, which is flax's fan-in of a
# [3, 3, 1, c] kernel).
_dense_init = nn.initializers.truncated_normal(stddev=0.02)
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
_depthwise_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


@dataclasses.dataclass(frozen=True)
class MiTConfig:
  """Hyper-parameters of one MiT variant (per stage)."""
  hidden_sizes: tuple[int, int, int, int]
  depths: tuple[int, int, int, int]
  num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
  sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
  patch_sizes: tuple[int, int, int, int] = (7, 3, 3, 3)
  strides: tuple[int, int, int, int] = (4, 2, 2, 2)
  mlp_ratio: int = 4


MIT_CONFIGS: dict[str, MiTConfig] = {
    'mit_b0': MiTConfig(hidden_sizes=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    'mit_b1': MiTConfig(hidden_sizes=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    'mit_b2': MiTConfig(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    'mit_b3': MiTConfig(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    'mit_b4': MiTConfig(hidden_sizes=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    'mit_b5': MiTConfig(hidden_sizes=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}


def _layer_norm(name: str, dtype: jnp.dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, name=name)


class OverlapPatchEmbed(nn.Module):
  """Strided conv with padding k//2, then LayerNorm: [b, h, w, c_in] -> [b, h/s, w/s, features]."""
  features: int
  patch_size: int
  stride: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    pad = self.patch_size // 2
    x = nn.Conv(self.features, (self.patch_size, self.patch_size), strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)), kernel_init=_conv_init, dtype=self.dtype,
                name='proj')(x)
    return _layer_norm('layer_norm', self.dtype)(x)


class SequenceReduction(nn.Module):
  """Conv with kernel = stride = ratio (no padding), then LayerNorm: [b,h,w,c] -> [b,h/r,w/r,c]."""
  ratio: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    r = self.ratio
    x = nn.Conv(x.shape[-1], (r, r), strides=(r, r), padding='VALID', kernel_init=_conv_init,
                dtype=self.dtype, name='conv')(x)
    return _layer_norm('layer_norm', self.dtype)(x)


class EfficientSelfAttention(nn.Module):
  """Multi-head self-attention whose keys/values come from a spatially reduced map.

  Queries use all h*w positions; keys and values use (h/sr)*(w/sr) positions.
  [b, h, w, c] -> [b, h, w, c].
  """
  num_heads: int
  sr_ratio: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    _, h, w, c = x.shape
    dense = functools.partial(nn.Dense, c, kernel_init=_dense_init, dtype=self.dtype)
    head_dim = c // self.num_heads

    kv_input = x
    if self.sr_ratio > 1:
      kv_input = SequenceReduction(self.sr_ratio, dtype=self.dtype, name='sequence_reduction')(x)

    split_heads = 'b h w (n d) -> b n (h w) d'
    q = einops.rearrange(dense(name='q_proj')(x), split_heads, n=self.num_heads)         # [b n hw d]
    k = einops.rearrange(dense(name='k_proj')(kv_input), split_heads, n=self.num_heads)  # [b n hw' d]
    v = einops.rearrange(dense(name='v_proj')(kv_input), split_heads, n=self.num_heads)  # [b n hw' d]

    logits = jnp.einsum('bnqd,bnkd->bnqk', q, k) * head_dim**-0.5                      # [b n hw hw']
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum('bnqk,bnkd->bnqd', weights, v)                                     # [b n hw d]
    out = einops.rearrange(out, 'b n (h w) d -> b h w (n d)', h=h, w=w)                 # [b h w c]
    return dense(name='o_proj')(out)


DEPTHWISE_IMPLS = ('auto', 'grouped', 'shifted')


def depthwise_conv3x3_shifted(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """A 'same' 3x3 depthwise conv written as 9 shifted multiply-adds: x [b,h,w,c], kernel [3,3,1,c].

  The arithmetic of a grouped convolution with feature_group_count = c, but elementwise, so XLA fuses
  it into one loop. XLA:CPU has no fast path for the grouped form: at MiT-B2's stage shapes it is 10-17x
  slower than this (docs/benchmarks.md). The backward is gsa_jax.layers.depthwise_conv3x3's.
  """
  return layers.depthwise_conv3x3(x, kernel)


class DepthwiseConv3x3(nn.Module):
  """3x3 depthwise conv with bias, 'same' padding: [b, h, w, c] -> [b, h, w, c].

  Parameters are those of nn.Conv(c, (3, 3), feature_group_count=c): `kernel` [3, 3, 1, c] and
  `bias` [c], so checkpoints do not depend on `impl`:
    'grouped'  lax grouped convolution (cuDNN's depthwise kernel on GPU);
    'shifted'  depthwise_conv3x3_shifted (2.2x faster MiT-B2 backbone on XLA:CPU);
    'auto'     'shifted' when the default backend is the CPU, else 'grouped'.
  """
  impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.impl not in DEPTHWISE_IMPLS:
      raise ValueError(f'Unknown depthwise conv impl {self.impl!r}; choose one of {DEPTHWISE_IMPLS}.')
    c = x.shape[-1]
    kernel = self.param('kernel', _depthwise_init, (3, 3, 1, c), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (c,), jnp.float32)
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    impl = self.impl
    if impl == 'auto':
      impl = 'shifted' if jax.default_backend() == 'cpu' else 'grouped'
    if impl == 'shifted':
      y = depthwise_conv3x3_shifted(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
    return y + bias


class MixFFN(nn.Module):
  """Dense -> depthwise 3x3 conv -> exact GELU -> Dense: [b, h, w, c] -> [b, h, w, c]."""
  mlp_ratio: int
  dtype: jnp.dtype = jnp.float32
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    hidden = c * self.mlp_ratio
    x = nn.Dense(hidden, kernel_init=_dense_init, dtype=self.dtype, name='fc1')(x)       # [b h w 4c]
    x = DepthwiseConv3x3(self.depthwise_impl, dtype=self.dtype, name='dwconv')(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(c, kernel_init=_dense_init, dtype=self.dtype, name='fc2')(x)


def drop_path(x: jnp.ndarray, rate: float, rng: jax.Array) -> jnp.ndarray:
  """Stochastic depth: zeroes whole samples of `x` [b, ...] with probability `rate`, rescales the rest."""
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))  # [b 1 1 1]
  return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


class MiTBlock(nn.Module):
  """Pre-LN transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MixFFN(LN(x)))."""
  num_heads: int
  sr_ratio: int
  mlp_ratio: int
  drop_path_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  depthwise_impl: str = 'auto'

  def _drop_path(self, y: jnp.ndarray, train: bool) -> jnp.ndarray:
    if not train or self.drop_path_rate == 0.0:
      return y
    return drop_path(y, self.drop_path_rate, self.make_rng('dropout'))

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    y = _layer_norm('layernorm_before', self.dtype)(x)
    y = EfficientSelfAttention(self.num_heads, self.sr_ratio, dtype=self.dtype, name='attention')(y)
    x = x + self._drop_path(y, train)
    y = _layer_norm('layernorm_after', self.dtype)(x)
    y = MixFFN(self.mlp_ratio, dtype=self.dtype, depthwise_impl=self.depthwise_impl, name='mlp')(y)
    return x + self._drop_path(y, train)


class MiTStage(nn.Module):
  """Patch embedding, `depth` blocks, LayerNorm: [b, h, w, c_in] -> [b, h/stride, w/stride, features]."""
  features: int
  depth: int
  num_heads: int
  sr_ratio: int
  patch_size: int
  stride: int
  mlp_ratio: int
  drop_path_rates: tuple[float, ...]
  dtype: jnp.dtype = jnp.float32
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    x = OverlapPatchEmbed(self.features, self.patch_size, self.stride, dtype=self.dtype,
                          name='patch_embeddings')(x)
    for j in range(self.depth):
      x = MiTBlock(self.num_heads, self.sr_ratio, self.mlp_ratio, self.drop_path_rates[j],
                   dtype=self.dtype, depthwise_impl=self.depthwise_impl, name=f'block_{j}')(x, train=train)
    return _layer_norm('layer_norm', self.dtype)(x)


class MixTransformer(nn.Module):
  """MiT encoder: [b, h, w, 3] -> 4 maps [b, h/4, w/4, c1], ..., [b, h/32, w/32, c4].

  `drop_path_rate` is the stochastic-depth rate of the last block; it rises linearly from 0 over all
  blocks (as SegFormer) and is only applied with `train=True` (rng stream 'dropout').
  `depthwise_impl` picks the Mix-FFN depthwise conv's implementation (DepthwiseConv3x3; same parameters).
  """
  config: MiTConfig
  drop_path_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> tuple[jnp.ndarray, ...]:
    cfg = self.config
    total_blocks = sum(cfg.depths)
    rates = [self.drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
    features = []
    first = 0
    for i in range(4):
      x = MiTStage(features=cfg.hidden_sizes[i], depth=cfg.depths[i], num_heads=cfg.num_heads[i],
                   sr_ratio=cfg.sr_ratios[i], patch_size=cfg.patch_sizes[i], stride=cfg.strides[i],
                   mlp_ratio=cfg.mlp_ratio, drop_path_rates=tuple(rates[first:first + cfg.depths[i]]),
                   dtype=self.dtype, depthwise_impl=self.depthwise_impl, name=f'stage_{i}')(x, train=train)
      first += cfg.depths[i]
      features.append(x)
    return tuple(features)


def _mit_builder(cfg: MiTConfig):
  """Returns `builder(drop_path_rate=..., dtype=..., name=...)` for the registry."""
  def build(drop_path_rate: float, dtype: jnp.dtype, name: str | None) -> MixTransformer:
    return MixTransformer(cfg, drop_path_rate=drop_path_rate, dtype=dtype, name=name)
  return build


for _name, _cfg in MIT_CONFIGS.items():
  backbones.register_backbone(_name, _cfg.hidden_sizes, _mit_builder(_cfg))
