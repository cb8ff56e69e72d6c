"""SOLV's temporal binder: a post-norm transformer along time, one sequence per slot index.

slots [b, f, k, D] + pos_embed[f] -> sequences [(b k), f, D] -> temporal_layers x TemporalLayer -> [b, f, k, D].
Slots never attend to other slots, only to the same slot index in the other frames of the clip; frames
outside the video (frame_mask False) are ignored as keys (torch's src_key_padding_mask).

TemporalLayer = torch.nn.TransformerEncoderLayer(norm_first=False, activation='relu', batch_first=True):
  x = LN1(x + Dropout(Attention(x)))     attention: 8 heads, dropout on the attention probabilities
  x = LN2(x + Dropout(fc2(Dropout(ReLU(fc1(x))))))
with LN eps 1e-5. Params per layer: query, key, value, out ([D, D] kernels and biases: torch's in_proj split
in three), norm1, fc1, fc2, norm2. Top level: pos_embed [f, D], layer_0 .. layer_{L-1}.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax.models.solv import config as config_lib
from gsa_jax.models.solv import layers


class TemporalLayer(nn.Module):
  """One post-norm encoder layer: x [b, f, D], key_mask [b, f] (True = a real frame) -> [b, f, D]."""
  num_heads: int
  ffn: int
  dropout: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_mask: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    b, f, d = x.shape
    h = self.num_heads
    drop = lambda name: nn.Dropout(self.dropout, deterministic=not train, name=name)
    # torch MultiheadAttention init: xavier_uniform on the fused (3D, D) in_proj, zero biases.
    qkv_init = layers.uniform((6.0 / (4 * d)) ** 0.5)
    proj = lambda name: layers.dense(d, d, dtype=self.dtype, kernel_init=qkv_init,
                                     bias_init=nn.initializers.zeros, name=name)
    split = lambda y: y.reshape(b, f, h, d // h)
    q = split(proj('query')(x)) * (d // h) ** -0.5
    k = split(proj('key')(x))
    v = split(proj('value')(x))
    logits = jnp.einsum('bqhc,bkhc->bhqk', q, k).astype(jnp.float32)
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = drop('attention_dropout')(jax.nn.softmax(logits, axis=-1))
    attended = jnp.einsum('bhqk,bkhc->bqhc', probs.astype(v.dtype), v).reshape(b, f, d)
    attended = layers.dense(d, d, dtype=self.dtype, bias_init=nn.initializers.zeros, name='out')(attended)
    x = layers.layer_norm('norm1')(x + drop('dropout1')(attended))
    y = nn.relu(layers.dense(self.ffn, d, dtype=self.dtype, name='fc1')(x))
    y = layers.dense(d, self.ffn, dtype=self.dtype, name='fc2')(drop('ffn_dropout')(y))
    return layers.layer_norm('norm2')(x + drop('dropout2')(y))


class TemporalBinder(nn.Module):
  """slots [b, f, k, D], frame_mask [b, f] bool -> all frames' slots [b, f, k, D] (the centre is used)."""
  settings: config_lib.Settings

  @nn.compact
  def __call__(self, slots: jnp.ndarray, frame_mask: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    s = self.settings
    b, f, k, d = slots.shape
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (f, d))
    x = slots + pos[None, :, None, :]
    x = jnp.transpose(x, (0, 2, 1, 3)).reshape(b * k, f, d)                         # [(b k) f D]
    key_mask = jnp.repeat(frame_mask.astype(bool), k, axis=0)                        # [(b k) f]
    for i in range(s.temporal_layers):
      x = TemporalLayer(s.temporal_heads, s.temporal_ffn, s.dropout, dtype=s.compute_dtype,
                        name=f'layer_{i}')(x, key_mask, train=train).astype(jnp.float32)
    return jnp.transpose(x.reshape(b, k, f, d), (0, 2, 1, 3))
