"""Small layers of SOLV with PyTorch's default initialisation and LayerNorm epsilon.

  dense(features, in_features, ...)   nn.Dense initialised as torch.nn.Linear: kernel and bias ~ U(+-1/sqrt(in)).
  layer_norm(name)                    nn.LayerNorm with PyTorch's eps 1e-5 (Flax's default is 1e-6).
  TorchGRUCell                        torch.nn.GRUCell's layout and math: ir, iz, in, hr, hz, hn, all biased.
  flax_gru_cell(features, ...)        flax.linen.GRUCell (no hr, hz biases), torch-style initialisation.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-5


def uniform(bound: float) -> Callable:
  """U(-bound, bound), the initialiser torch uses for Linear / GRUCell parameters."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def dense(features: int, in_features: int, *, use_bias: bool = True, dtype: jnp.dtype = jnp.float32,
          kernel_init: Callable | None = None, bias_init: Callable | None = None,
          name: str | None = None) -> nn.Dense:
  """nn.Dense with torch.nn.Linear's default init (kaiming_uniform(a=sqrt 5) = U(+-1/sqrt(in)))."""
  bound = in_features ** -0.5
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=kernel_init or uniform(bound), bias_init=bias_init or uniform(bound), name=name)


def layer_norm(name: str | None = None) -> nn.LayerNorm:
  """LayerNorm over the last axis with eps 1e-5, computed in float32."""
  return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class TorchGRUCell(nn.Module):
  """torch.nn.GRUCell: r = s(ir x + hr h), z = s(iz x + hz h), n = tanh(in x + r (hn h)), h' = (1-z) n + z h.

  Every projection has a bias (torch's bias_ih and bias_hh, split by gate), so the parameter count and the
  way Adam updates the r and z biases are torch's. Call as flax.linen.GRUCell: (carry h, inputs x) -> (h', h').
  """
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, carry: jnp.ndarray, inputs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    init = uniform(self.features ** -0.5)
    proj = lambda name: nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init,
                                 bias_init=init, name=name)
    r = jax.nn.sigmoid(proj('ir')(inputs) + proj('hr')(carry))
    z = jax.nn.sigmoid(proj('iz')(inputs) + proj('hz')(carry))
    n = jnp.tanh(proj('in')(inputs) + r * proj('hn')(carry))
    new = (1.0 - z) * n + z * carry
    return new, new


def flax_gru_cell(features: int, dtype: jnp.dtype = jnp.float32, name: str = 'gru') -> nn.GRUCell:
  """flax.linen.GRUCell with torch's U(+-1/sqrt(D)) initialisation of every weight and bias."""
  init = uniform(features ** -0.5)
  return nn.GRUCell(features, kernel_init=init, recurrent_kernel_init=init, bias_init=init, dtype=dtype,
                    param_dtype=jnp.float32, name=name)
