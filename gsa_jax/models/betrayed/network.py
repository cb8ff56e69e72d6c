"""The one trained module of Betrayed by Attention: a spatio-temporal transformer block over frozen DINO keys.

Per frame the encoder gives the last block's key projections of the patch tokens (and, in training, the
block-12 output CLS token). The block sees all frames of a clip as one sequence, per frame [CLS, k_1..k_N],
without positional or temporal embeddings: x + Attn(LN1 x), then + MLP(LN2 x). LayerNorm eps 1e-5 (PyTorch's
default, not DINO's 1e-6), qkv without bias, 8 heads of 48, dropout on the attention probabilities (0.4) and
after proj, GELU and fc2 (0.1). The block returns the head mean of the *post-dropout* attention with the CLS
rows and columns removed, which is what the losses use. At inference only LN1 and the qkv projection run
(`query_keys`). Parameter names follow the released module (`norm1`, `qkv`, `proj`, `norm2`, `fc1`, `fc2`);
Dense layers start as PyTorch's nn.Linear (uniform in +-1/sqrt(fan_in)).

  SpatioTemporalBlock(...)(keys [b, t, n, c], cls [b, t, c] | None, train=) -> (tokens [b, t, n, c],
                                                                               attention [b, t n, t n])
  SpatioTemporalBlock(...).query_keys(keys [t, n, c]) -> q, k [t, heads, n, c / heads]
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.Linear's default initialisation: weight and bias uniform in +-1/sqrt(fan_in).
_torch_kernel = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _torch_bias(fan_in: int):
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class SpatioTemporalBlock(nn.Module):
  """The released `attention.Block(dim, num_heads, drop, attn_drop)`; see the module docstring."""
  dim: int = 384
  heads: int = 8
  mlp_ratio: float = 4.0
  attn_drop: float = 0.4
  drop: float = 0.1
  ln_eps: float = 1e-5

  def setup(self):
    hidden = int(self.dim * self.mlp_ratio)
    dense = lambda features, fan_in, name, bias=True: nn.Dense(
        features, use_bias=bias, kernel_init=_torch_kernel, bias_init=_torch_bias(fan_in), name=name)
    self.norm1 = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, name='norm1')
    self.qkv = dense(3 * self.dim, self.dim, 'qkv', bias=False)
    self.proj = dense(self.dim, self.dim, 'proj')
    self.norm2 = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, name='norm2')
    self.fc1 = dense(hidden, self.dim, 'fc1')
    self.fc2 = dense(self.dim, hidden, 'fc2')
    self.attn_dropout = nn.Dropout(self.attn_drop)
    self.proj_dropout = nn.Dropout(self.drop)
    self.mlp_dropout1 = nn.Dropout(self.drop)
    self.mlp_dropout2 = nn.Dropout(self.drop)

  def _qkv(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., n, c] -> [3, ..., heads, n, c / heads] (the released head-major split of the fused qkv)."""
    *lead, n, c = x.shape
    qkv = self.qkv(self.norm1(x)).reshape(*lead, n, 3, self.heads, c // self.heads)
    return jnp.moveaxis(qkv, (-3, -2), (0, -3))

  def query_keys(self, keys: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The inference path: keys [t, n, c] -> q, k [t, heads, n, c / heads] (LN1 and qkv only)."""
    q, k, _ = self._qkv(keys)
    return q, k

  def __call__(self, keys: jnp.ndarray, cls: jnp.ndarray | None, *, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    b, t, n, c = keys.shape
    extra = 0 if cls is None else 1
    x = keys if cls is None else jnp.concatenate([cls[:, :, None], keys], axis=2)
    x = x.reshape(b, t * (n + extra), c)
    q, k, v = self._qkv(x)                                                  # [b, heads, L, d]
    probs = jax.nn.softmax(jnp.einsum('bhld,bhmd->bhlm', q, k) * (c // self.heads) ** -0.5, axis=-1)
    probs = self.attn_dropout(probs, deterministic=not train)
    out = jnp.einsum('bhlm,bhmd->bhld', probs, v)
    out = jnp.swapaxes(out, 1, 2).reshape(b, t * (n + extra), c)
    x = x + self.proj_dropout(self.proj(out), deterministic=not train)
    h = self.mlp_dropout1(nn.gelu(self.fc1(self.norm2(x)), approximate=False), deterministic=not train)
    x = x + self.mlp_dropout2(self.fc2(h), deterministic=not train)
    tokens = x.reshape(b, t, n + extra, c)[:, :, extra:]
    mean = probs.mean(axis=1).reshape(b, t, n + extra, t, n + extra)[:, :, extra:, :, extra:]
    return tokens, mean.reshape(b, t * n, t * n)
