"""Feature Aggregation Transformer (FAT), official `Feature_Aggregation_Transformer` (reference §2.5).

FAT(tokens x [b, n, c], groups l [b, g, kk, c]) -> [b, n, c]:

  1. attentive pooling: a = Dense(1, no bias)(l); w = softmax over kk; z = sum_kk w * l    [b, g, c]
     z = Dense(c, no bias)(z)                                                     ('conva')
  2. G2L: q = Dense(z); k, v = Dense(x); z = z + out(softmax_n(q k^T / sqrt(c)) v);
     and x is REPLACED by v (the value projection), as the official code returns it.
  3. z = Former1(z)                 (over the g group tokens)
  4. L2G: q = Dense(x); k, v = Dense(z); x = x + out(softmax_g(q k^T / sqrt(c)) v)
  5. x = Former2(x)                 (over the n tokens)
  6. LeakyReLU(x, 0.2)

Former = one pre-LN block: x + Dropout(Dense(MHA(LN x))) with 2 heads of 32 and a bias-free qkv, then
x + FFN(LN x), FFN = Dense(2c), exact GELU, Dropout, Dense(c), Dropout; dropout 0.3 (official).
In the slot generator, x = the M k-means prototypes and the groups are the reference frames (each
collapses to one token); in guided slot attention x = the slots and the groups are each slot's KNN
neighbours. The official module also defines convn/convl/convd, never used in its forward: left out.

Init: PyTorch's default for Linear/Conv1d (U(+-1/sqrt(fan_in)) for weights and biases), because the
official `weight_init` never reaches the FATs. LayerNorm eps 1e-5.

Numerics: the tokens here are large (k-means prototypes and guided slots are SUMS over pixels), so the
attention softmaxes are close to one-hot and the LayerNorm inputs have |mean| >> std. Both are computed
as float32 allows: `layers.softmax` (its gradient without the 1 - y cancellation) and LayerNorm with
the two-pass variance. Measured on the full-size model (MiT-B2, 256x256, batch 2, N_R = 4): the slot
attention's L2G query/key gradients are within 1e-3 (relative) of a float64 run; with a plain float32
softmax and Flax's one-pass variance they were 0.66 off (PyTorch's float32 code: 0.70).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gsa_jax import layers

LAYER_NORM_EPS = 1e-5

_torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _torch_default_bias(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def dense(features: int, fan_in: int, *, use_bias: bool = True, dtype: jnp.dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """nn.Dense with PyTorch's default nn.Linear initialisation."""
  return nn.Dense(features, use_bias=use_bias, kernel_init=_torch_default_kernel,
                  bias_init=_torch_default_bias(fan_in), dtype=dtype, name=name)


def layer_norm(dtype: jnp.dtype, name: str) -> nn.LayerNorm:
  """PyTorch's LayerNorm: eps 1e-5, variance as mean((x - mean)^2) (Flax's default E[x^2] - E[x]^2
  cancels digits when |mean| >> std, as for the large k-means sums and slots)."""
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, name=name, use_fast_variance=False)


class Former(nn.Module):
  """A pre-LN transformer block over tokens [b, n, c] (official `Former`, depth 1)."""
  heads: int = 2
  dim_head: int = 32
  mlp_ratio: int = 2
  dropout: float = 0.3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    c = x.shape[-1]
    inner = self.heads * self.dim_head
    deterministic = not train
    # Self-attention.
    y = layer_norm(self.dtype, 'attn_norm')(x)
    qkv = dense(3 * inner, c, use_bias=False, dtype=self.dtype, name='to_qkv')(y)        # [b n 3hd]
    q, k, v = jnp.split(qkv.reshape(*qkv.shape[:-1], 3 * self.heads, self.dim_head), 3, axis=-2)
    logits = jnp.einsum('bihd,bjhd->bhij', q, k) * self.dim_head ** -0.5
    attn = layers.softmax(logits, axis=-1).astype(v.dtype)
    y = jnp.einsum('bhij,bjhd->bihd', attn, v).reshape(*x.shape[:-1], inner)             # [b n hd]
    y = dense(c, inner, dtype=self.dtype, name='to_out')(y)
    x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
    # Feed-forward.
    y = layer_norm(self.dtype, 'ffn_norm')(x)
    y = dense(self.mlp_ratio * c, c, dtype=self.dtype, name='ffn_in')(y)
    y = nn.Dropout(self.dropout)(nn.gelu(y, approximate=False), deterministic=deterministic)
    y = dense(c, self.mlp_ratio * c, dtype=self.dtype, name='ffn_out')(y)
    return x + nn.Dropout(self.dropout)(y, deterministic=deterministic)


def _single_head_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """softmax(q k^T / sqrt(d)) v for q [b, i, d], k, v [b, j, d] -> [b, i, d]."""
  logits = jnp.einsum('bid,bjd->bij', q, k) * q.shape[-1] ** -0.5
  attn = layers.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bij,bjd->bid', attn, v)


class FAT(nn.Module):
  """Feature Aggregation Transformer: tokens [b, n, c], groups [b, g, kk, c] -> [b, n, c]."""
  dropout: float = 0.3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, groups: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    c = x.shape[-1]
    # 1. Attentive pooling: each group becomes one token.
    scores = dense(1, c, use_bias=False, dtype=self.dtype, name='pool_score')(groups)      # [b g kk 1]
    weights = layers.softmax(scores, axis=2).astype(groups.dtype)
    z = jnp.einsum('bgkc,bgk->bgc', groups, weights[..., 0])                                # [b g c]
    z = dense(c, c, use_bias=False, dtype=self.dtype, name='conva')(z)
    # 2. Global -> local: the group tokens query the tokens; x becomes its value projection.
    q = dense(c, c, dtype=self.dtype, name='g2l_q')(z)
    k = dense(c, c, dtype=self.dtype, name='g2l_k')(x)
    v = dense(c, c, dtype=self.dtype, name='g2l_v')(x)                                      # [b n c]
    z = z + dense(c, c, dtype=self.dtype, name='g2l_out')(_single_head_attention(q, k, v))
    x = v
    # 3. Self-attention over the group tokens.
    z = Former(dropout=self.dropout, dtype=self.dtype, name='former1')(z, train=train)
    # 4. Local -> global: the tokens query the group tokens.
    q = dense(c, c, dtype=self.dtype, name='l2g_q')(x)
    k = dense(c, c, dtype=self.dtype, name='l2g_k')(z)
    v = dense(c, c, dtype=self.dtype, name='l2g_v')(z)
    x = x + dense(c, c, dtype=self.dtype, name='l2g_out')(_single_head_attention(q, k, v))
    # 5. Self-attention over the tokens.
    x = Former(dropout=self.dropout, dtype=self.dtype, name='former2')(x, train=train)
    return nn.leaky_relu(x, negative_slope=0.2)


class CrossAttentionBlock(nn.Module):
  """A standard pre-LN transformer decoder block: tokens [b, n, c] attend to context [b, p, c].

  x + MHA(LN x, LN context), then x + MLP(LN x). Used in place of the FAT in the slot generator when
  `use_fat=False` (Table 2 rows (b)-(e): "the standard transformer structure").
  """
  heads: int = 1
  mlp_ratio: int = 2
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, context: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    c = x.shape[-1]
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype, dropout_rate=0.0,
                                        name='attention')(
        layer_norm(self.dtype, 'query_norm')(x), layer_norm(self.dtype, 'context_norm')(context))
    x = x + nn.Dropout(self.dropout)(y, deterministic=not train)
    y = layer_norm(self.dtype, 'ffn_norm')(x)
    y = nn.Dense(self.mlp_ratio * c, dtype=self.dtype, name='ffn_in')(y)
    y = nn.Dense(c, dtype=self.dtype, name='ffn_out')(nn.gelu(y, approximate=False))
    return x + nn.Dropout(self.dropout)(y, deterministic=not train)
