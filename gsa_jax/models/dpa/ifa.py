"""Inter-frame attention (IFA) at block 5, as coded (official `Temporal_Aggregation_Module`).

Per stream, with x = conv5 of the target [b, h, w, C], query = sq5(x) [b, h, w, D] (the model's shared
squeeze conv; IFA has no query projection of its own) and the references' conv5 maps [b, t, h', w', C]:

  memory   K-prototypes k_t = ocr(key(ref_t)) [b, t, m, D] (m = D); with values='values' also
           v_t = ocr(value(ref_t)) (paper eq. 10); with values='keys' (official) the keys serve as values
           and the value conv does not exist (the code builds it but reads the key list twice).
  read     q = ocr(query) [b, m, D]; A = softmax over the t*m reference prototypes of q K^T / sqrt(D)
           [b, m, t*m]; R = A V [b, m, D] (paper eq. 9-10)
  fuse     cm = cos(query, R) [b, h, w, m] (eq. 11); out = ReLU(BN(conv1x1(cat[x, cm]))) [b, h, w, C]

`encode` makes the memory (cacheable per video: it does not depend on the target); `__call__` reads it.
Params: key, value (values='values' only), fusion/{conv, bn}.
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gsa_jax import layers
from gsa_jax.models.dpa import common


class IFA(nn.Module):
  """[b, h, w, C] target conv5 + [b, h, w, D] query + memory -> [b, h, w, C] (C = `features`)."""
  features: int = 512
  dim: int = 128
  values: str = 'keys'  # 'keys' (official) | 'values' (paper eq. 10)
  stop_gradient: bool = True
  cosine_eps: float = 0.0
  kernel_init: Any = common.normal_001
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.key = layers.conv(self.dim, 1, kernel_init=self.kernel_init, dtype=self.dtype)
    if self.values == 'values':
      self.value = layers.conv(self.dim, 1, kernel_init=self.kernel_init, dtype=self.dtype)
    self.fusion = common.ConvBNReLU(self.features, kernel_init=self.kernel_init, running_var=self.running_var,
                                    dtype=self.dtype)

  def encode(self, refs: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """refs [b, t, h', w', C] (conv5 of the references) -> dict(keys=[b, t, m, D] (, values=...)), float32."""
    b, t = refs.shape[:2]
    flat = refs.reshape(b * t, *refs.shape[2:])                                  # [(b t) h' w' C]

    def prototypes(conv):
      return common.ocr_prototypes(conv(flat), self.stop_gradient).reshape(b, t, self.dim, self.dim)

    memory = {'keys': prototypes(self.key)}
    if self.values == 'values':
      memory['values'] = prototypes(self.value)
    return memory

  def read(self, query: jnp.ndarray, memory: dict[str, jnp.ndarray]) -> jnp.ndarray:
    """query [b, h, w, D] + memory -> read prototypes R [b, m, D] (float32)."""
    b = query.shape[0]
    keys = memory['keys'].reshape(b, -1, self.dim).astype(jnp.float32)          # [b (t m) D]
    values = memory['values'].reshape(b, -1, self.dim).astype(jnp.float32) if self.values == 'values' else keys
    q = common.ocr_prototypes(query, self.stop_gradient)                        # [b m D]
    attn = nn.softmax(jnp.einsum('bmd,bnd->bmn', q, keys) / math.sqrt(self.dim), axis=-1)  # [b m (t m)]
    return jnp.einsum('bmn,bnd->bmd', attn, values)

  def __call__(self, x: jnp.ndarray, query: jnp.ndarray, memory: dict[str, jnp.ndarray], *,
               train: bool) -> jnp.ndarray:
    cm = common.correlation_maps(query, self.read(query, memory), self.cosine_eps)  # [b h w m]
    return self.fusion(jnp.concatenate([x, cm.astype(x.dtype)], axis=-1), train=train)  # [b h w C]
