"""Inter-modality attention (IMA): the official DAM (as coded) and the paper's eqs. 1-7.

Official (`Domain_Alignment_Module`, DAM), on a stream's block feature x [b, h, w, C] and its squeezed
copy x_sq = sq(x) [b, h, w, D]:
  correlate  pb = ocr(x_sq) [b, m, D] (m = D prototypes) -> GraphAttention -> cm = cos(x_sq, pb') [b,h,w,m]
  (video)    cm_rgb, cm_flow <- MutualRefinement(cm_rgb, cm_flow) (two CrossAttention blocks)
  fuse       out = ReLU(BN(conv1x1(cat[x, cm]))) [b, h, w, C]
  The stage-1 model runs one stream without the mutual refinement (IMAStream.__call__).
GraphAttention (official `Graph_Attention_Network`, not in the paper), on the m prototypes as tokens:
  a non-local block (BN1d + ReLU over the D features; theta, phi, g: Linear D -> D/2; softmax(theta phi^T)
  over tokens, unscaled; W: Linear D/2 -> D; added to the raw input), then three dynamic EdgeConv layers
  (DGCNN): k nearest tokens by squared Euclidean distance (self included), edge features
  cat[x_j - x_i, x_i] (2D), 1x1 conv 2D -> D (no bias) + BN + LeakyReLU(0.2), max over the k neighbours.
  The graph is recomputed for each layer. (The official unused `fc` and `PCG.out` are left out.)
CrossAttention (official `Cross_Attention_Network`) CAN(A, B) on correlation maps as h*w tokens of m
  channels: ONE BN1d + ReLU applied to both A and B (its statistics updated twice per call); theta(A),
  phi(B): Linear m -> m/2; softmax over h*w x h*w (unscaled); values g(A) from A's own modality;
  out = A' + W(y) (A' = the BN-ReLU'd A). MutualRefinement: can1(rgb, flow), can2(flow, rgb).

Paper (eqs. 1-7; `PaperIMAStream` + `paper_cross`): prototypes P1 = ocr(X) and Psi1 = cos(X, P1) as above
  (X = the squeezed feature x_sq, as in the code; the paper leaves the embedding open), no graph network;
  K = key(Psi1), V = value(Psi1) (pixel-wise FC = 1x1 conv m -> m); the C' x C' correspondence
  Phi = K_A^T K_M (summed over the h*w pixels, unscaled as eq. 5); T_A = V_M softmax(Phi)^T (softmax over
  the motion prototypes), T_M = V_A softmax(Phi^T)^T: the values come from the OTHER modality;
  X' = ReLU(BN(conv1x1(cat[X, T]))) (eq. 7's Conv, with the code's BN + ReLU).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax import layers
from gsa_jax.models.dpa import common


# ------------------------------------------------------------------------------------------------
# Official DAM.
# ------------------------------------------------------------------------------------------------

def knn_indices(x: jnp.ndarray, k: int) -> jnp.ndarray:
  """x [b, m, c] -> the k nearest tokens of each token [b, m, k] by squared Euclidean distance (self
  included, nearest first). Computed as DGCNN's knn: -|x_j|^2 + 2 x_i.x_j - |x_i|^2."""
  sq = jnp.sum(x * x, axis=-1)                                        # [b m]
  inner = -2.0 * jnp.einsum('bic,bjc->bij', x, x)                     # [b m m]
  neg_dist = (-sq[:, None, :] - inner) - sq[:, :, None]               # [b i j]
  return jax.lax.top_k(neg_dist, k)[1]


def edge_features(x: jnp.ndarray, k: int) -> jnp.ndarray:
  """DGCNN edge features: x [b, m, c] -> [b, m, k, 2c] = cat[x_j - x_i, x_i] over the k nearest j."""
  idx = knn_indices(x, k)                                             # [b m k]
  neighbours = jax.vmap(lambda xb, ib: xb[ib])(x, idx)                # [b m k c]
  centre = jnp.broadcast_to(x[:, :, None, :], neighbours.shape)
  return jnp.concatenate([neighbours - centre, centre], axis=-1)


class GraphAttention(nn.Module):
  """Prototype refinement [b, m, D] -> [b, m, D]. Params: tf_bn, theta, phi, g, w, edge{1,2,3}/{conv,bn}."""
  knn_k: int = 10
  kernel_init: Any = common.normal_001
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    d = tokens.shape[-1]
    tokens = tokens.astype(jnp.float32)
    # Non-local block over the m tokens.
    y = nn.relu(layers.BatchNorm(not train, running_var=self.running_var, name='tf_bn')(tokens))
    theta = common.Linear(d // 2, name='theta')(y)
    phi = common.Linear(d // 2, name='phi')(y)
    attn = nn.softmax(jnp.einsum('bic,bjc->bij', theta, phi), axis=-1)          # [b m m]
    y = jnp.einsum('bij,bjc->bic', attn, common.Linear(d // 2, name='g')(y))
    x = tokens + common.Linear(d, name='w')(y)                                   # [b m D]
    # Three dynamic EdgeConv layers.
    for i in (1, 2, 3):
      e = edge_features(x, self.knn_k)                                           # [b m k 2D]
      e = common.ConvBNReLU(d, use_bias=False, activation='leaky_relu', kernel_init=self.kernel_init,
                            running_var=self.running_var, name=f'edge{i}')(e, train=train)
      x = jnp.max(e, axis=2)                                                     # [b m D]
    return x


class IMAStream(nn.Module):
  """One stream of the official DAM. Params: gan, fusion/{conv, bn}."""
  features: int = 512
  knn_k: int = 10
  stop_gradient: bool = True
  cosine_eps: float = 0.0
  kernel_init: Any = common.normal_001
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.gan = GraphAttention(self.knn_k, self.kernel_init, self.running_var, self.dtype)
    self.fusion = common.ConvBNReLU(self.features, kernel_init=self.kernel_init, running_var=self.running_var,
                                    dtype=self.dtype)

  def correlate(self, x_sq: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """x_sq [b, h, w, D] -> cm [b, h, w, m] (official Prototype_Correlation_Generation)."""
    prototypes = self.gan(common.ocr_prototypes(x_sq, self.stop_gradient), train=train)
    return common.correlation_maps(x_sq, prototypes, self.cosine_eps)

  def fuse(self, x: jnp.ndarray, cm: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """x [b, h, w, C], cm [b, h, w, m] -> [b, h, w, C]."""
    return self.fusion(jnp.concatenate([x, cm.astype(x.dtype)], axis=-1), train=train)

  def __call__(self, x: jnp.ndarray, x_sq: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """The single-stream DAM of the stage-1 model: fuse(x, correlate(x_sq))."""
    return self.fuse(x, self.correlate(x_sq, train=train), train=train)


class CrossAttention(nn.Module):
  """CAN(A, B): A, B [b, h, w, m] -> [b, h, w, m]. Params: bn, theta, phi, g, w."""
  running_var: str = 'unbiased'

  @nn.compact
  def __call__(self, a: jnp.ndarray, b: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    shape = a.shape
    m = shape[-1]
    bn = layers.BatchNorm(not train, running_var=self.running_var, name='bn')  # one module for A and B
    a = nn.relu(bn(a.astype(jnp.float32).reshape(shape[0], -1, m)))           # [b n m]
    b = nn.relu(bn(b.astype(jnp.float32).reshape(shape[0], -1, m)))
    theta = common.Linear(m // 2, name='theta')(a)
    phi = common.Linear(m // 2, name='phi')(b)
    attn = nn.softmax(jnp.einsum('bic,bjc->bij', theta, phi), axis=-1)        # [b n n]
    y = jnp.einsum('bij,bjc->bic', attn, common.Linear(m // 2, name='g')(a))
    return (a + common.Linear(m, name='w')(y)).reshape(shape)


class MutualRefinement(nn.Module):
  """Official CCM: (cm_rgb, cm_flow) -> (can1(rgb, flow), can2(flow, rgb)). Params: can1, can2."""
  running_var: str = 'unbiased'

  @nn.compact
  def __call__(self, cm_rgb: jnp.ndarray, cm_flow: jnp.ndarray, *, train: bool):
    rgb = CrossAttention(self.running_var, name='can1')(cm_rgb, cm_flow, train=train)
    flow = CrossAttention(self.running_var, name='can2')(cm_flow, cm_rgb, train=train)
    return rgb, flow


# ------------------------------------------------------------------------------------------------
# The paper's IMA (eqs. 1-7).
# ------------------------------------------------------------------------------------------------

class PaperIMAStream(nn.Module):
  """One stream of the paper's IMA. Params: key, value (1x1 convs m -> m), fusion/{conv, bn}."""
  features: int = 512
  stop_gradient: bool = True
  cosine_eps: float = 0.0
  kernel_init: Any = common.normal_001
  running_var: str = 'unbiased'
  dtype: jnp.dtype = jnp.float32

  prototypes: int = 128  # m = D, the width of the squeezed feature

  def setup(self):
    self.key = layers.conv(self.prototypes, 1, kernel_init=self.kernel_init)
    self.value = layers.conv(self.prototypes, 1, kernel_init=self.kernel_init)
    self.fusion = common.ConvBNReLU(self.features, kernel_init=self.kernel_init, running_var=self.running_var,
                                    dtype=self.dtype)

  def embed(self, x_sq: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """x_sq [b, h, w, D] -> (K, V), each [b, h, w, m] (eq. 1-4), float32."""
    psi = common.correlation_maps(x_sq, common.ocr_prototypes(x_sq, self.stop_gradient), self.cosine_eps)
    return self.key(psi), self.value(psi)

  def fuse(self, x: jnp.ndarray, transferred: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """x [b, h, w, C], transferred [b, h, w, m] -> [b, h, w, C] (eq. 7)."""
    return self.fusion(jnp.concatenate([x, transferred.astype(x.dtype)], axis=-1), train=train)


def paper_cross(k_a, v_a, k_m, v_m) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Eqs. 5-6: K, V [b, h, w, m] of appearance (a) and motion (m) -> (T_A, T_M) [b, h, w, m]."""
  shape = k_a.shape
  flat = lambda t: t.astype(jnp.float32).reshape(shape[0], -1, shape[-1])        # [b n m]
  k_a, v_a, k_m, v_m = map(flat, (k_a, v_a, k_m, v_m))
  phi = jnp.einsum('bni,bnj->bij', k_a, k_m)                                     # [b m_a m_m]
  t_a = jnp.einsum('bij,bnj->bni', nn.softmax(phi, axis=-1), v_m)                # softmax over motion
  t_m = jnp.einsum('bji,bni->bnj', nn.softmax(jnp.swapaxes(phi, 1, 2), axis=-1), v_a)
  return t_a.reshape(shape), t_m.reshape(shape)
