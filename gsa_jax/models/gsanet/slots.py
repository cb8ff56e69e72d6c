"""The slot branch of one stream: slot generator, local/global extractors, guided slot attention, and the
cosine-similarity maps of the slot decoder (reference §2.4-2.7, paper §3.2-3.6).

  SlotGenerator ('generator')   sqz conv, slot_enc conv (guided slots) or learned mu/log_sigma (random
                                slots), the local extractor (k-means on the 1/16 sqz feature), the global
                                extractor (spatial-softmax prototypes of each reference frame through the
                                same sqz conv), and the FAT that aggregates them into M prototypes.
  GuidedSlotAttention ('attention')  T iterations of: per-slot cosine top-N KNN from the pool, FAT (or
                                the original Slot Attention GRU update), slots replaced by the result.
  SlotBranch ('rgb_slots' / 'flow_slots')  both of the above plus the cosine maps that feed the slot
                                decoder conv (which lives at the model's top level: rgb_fusion/flow_fusion).

Shapes: x3 [b, h, w, c] (MFFM2 output at 1/16), refs [b, t, h', w', c] (MFFM1 of each reference frame at
1/32), local prototypes [b, m, c], reference prototypes [b, t, c, c] (one per channel), slots [b, k, c].
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax import layers
from gsa_jax import ops
from gsa_jax.models.gsanet import fat as fat_lib
from gsa_jax.models.gsanet import mffm

KNN_POOLS = ('aggregated', 'aggregated_and_reference')


@dataclasses.dataclass(frozen=True)
class SlotConfig:
  """The model-config fields the slot branch reads (configs/defaults.py documents each)."""
  num_slots: int = 2
  num_clusters: int = 64
  kmeans_iters: int = 10
  kmeans_init: str = 'random'
  kmeans_assign: str = 'hard'
  kmeans_temperature: float = 1.0
  prototype_reduce: str = 'sum'
  slot_pool: str = 'sum'
  slot_iters: int = 3
  knn_k: int = 16
  knn_pool: str = 'aggregated'
  fat_dropout: float = 0.3
  cosine_eps: float = 1e-8
  use_guided_slots: bool = True
  use_knn: bool = True
  use_slot_attention: bool = True
  use_fat: bool = True


def _conv1x1(features: int, dtype: jnp.dtype, name: str) -> nn.Conv:
  return mffm.conv(features, 1, dtype=dtype, name=name)


class SlotGenerator(nn.Module):
  """Initial slots, the k-means local prototypes and their aggregation with the reference prototypes."""
  config: SlotConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x3: jnp.ndarray, refs: jnp.ndarray, *, kmeans_key: jax.Array,
               train: bool) -> dict[str, jnp.ndarray]:
    cfg = self.config
    b, h, w, c = x3.shape
    t = refs.shape[1]
    sqz_conv = _conv1x1(c, self.dtype, 'sqz')
    sqz = sqz_conv(x3)                                                     # [b h w c]
    tokens = sqz.reshape(b, h * w, c)                                      # [b (h w) c]

    # Local extractor: k-means into M prototypes (sums of members officially, GWAP for the paper).
    weights, labels = ops.kmeans_assignments(
        tokens, kmeans_key, cfg.num_clusters, num_iters=cfg.kmeans_iters, init=cfg.kmeans_init,
        assign=cfg.kmeans_assign, temperature=cfg.kmeans_temperature)   # [b (h w) m], [b (h w)]
    local = ops.gwap(tokens, weights, cfg.prototype_reduce)             # [b m c]
    self.sow('intermediates', 'kmeans_assignments', labels.reshape(b, h, w))

    # Global extractor: the same sqz conv on each reference frame (frames folded into the batch),
    # then one spatial-softmax prototype per channel.
    ref_tokens = sqz_conv(refs.reshape(b * t, *refs.shape[2:]))          # [(b t) h' w' c]
    ref_protos = ops.spatial_softmax_prototypes(ref_tokens.reshape(b * t, -1, c))
    ref_protos = ref_protos.reshape(b, t, c, c)                           # [b t c(j) c]

    # Initial slots.
    if cfg.use_guided_slots:
      slot_logits = _conv1x1(cfg.num_slots, self.dtype, 'slot_enc')(x3)   # [b h w k]
      slot_mask = layers.softmax(slot_logits, axis=-1)
      slots = ops.gwap(tokens, slot_mask.reshape(b, h * w, -1).astype(tokens.dtype), cfg.slot_pool)
    else:
      # Slot Attention (Locatello et al.): slots ~ N(mu, sigma^2), sampled with the k-means key in
      # training and a fixed key in evaluation.
      mu = self.param('slots_mu', nn.initializers.xavier_uniform(), (1, 1, c))
      log_sigma = self.param('slots_log_sigma', nn.initializers.xavier_uniform(), (1, 1, c))
      key = jax.random.fold_in(kmeans_key, 1) if train else jax.random.key(0)
      noise = jax.random.normal(key, (b, cfg.num_slots, c), jnp.float32)
      slots = (mu + jnp.exp(log_sigma) * noise).astype(tokens.dtype)
      # Coarse map: softmax over slots of the scaled dot products with the initial slots.
      logits = jnp.einsum('bhwc,bkc->bhwk', sqz, slots) * c ** -0.5
      slot_mask = layers.softmax(logits, axis=-1)

    # Aggregation of local (target) and global (reference) prototypes into M prototypes.
    if cfg.use_fat:
      agg = fat_lib.FAT(dropout=cfg.fat_dropout, dtype=self.dtype, name='fat')(local, ref_protos, train=train)
    else:
      agg = fat_lib.CrossAttentionBlock(dtype=self.dtype, name='aggregation')(
          local, ref_protos.reshape(b, t * c, c), train=train)
    return dict(sqz=sqz, local=local, ref_protos=ref_protos, agg=agg, slots=slots, slot_mask=slot_mask)


class SlotAttentionUpdate(nn.Module):
  """One step of the original Slot Attention (Locatello et al. 2020): slots [b, k, c], inputs [b, p, c].

  Attention softmaxed over the SLOTS (slots compete for inputs), weighted mean over inputs, GRU, then a
  residual MLP. Returns (new slots, attention [b, k, p]).
  """
  mlp_ratio: int = 2
  eps: float = 1e-8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, slots: jnp.ndarray, inputs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    c = slots.shape[-1]
    inputs = fat_lib.layer_norm(self.dtype, 'input_norm')(inputs)
    k = nn.Dense(c, use_bias=False, dtype=self.dtype, name='to_k')(inputs)
    v = nn.Dense(c, use_bias=False, dtype=self.dtype, name='to_v')(inputs)
    q = nn.Dense(c, use_bias=False, dtype=self.dtype, name='to_q')(
        fat_lib.layer_norm(self.dtype, 'slot_norm')(slots))
    logits = jnp.einsum('bkc,bpc->bkp', q, k) * c ** -0.5
    attn = layers.softmax(logits, axis=1) + self.eps     # over slots
    weights = (attn / jnp.sum(attn, axis=-1, keepdims=True)).astype(v.dtype)  # mean over inputs
    updates = jnp.einsum('bkp,bpc->bkc', weights, v)
    gru = nn.GRUCell(features=c, dtype=self.dtype, name='gru')
    new_slots, _ = gru(slots.reshape(-1, c), updates.reshape(-1, c))
    slots = new_slots.reshape(slots.shape)
    y = fat_lib.layer_norm(self.dtype, 'mlp_norm')(slots)
    y = nn.Dense(self.mlp_ratio * c, dtype=self.dtype, name='mlp_in')(y)
    slots = slots + nn.Dense(c, dtype=self.dtype, name='mlp_out')(nn.relu(y))
    return slots, attn


class GuidedSlotAttention(nn.Module):
  """T refinement iterations of slots [b, k, c] against a prototype pool [b, p, c] -> [b, k, c].

  use_knn: each slot keeps its `knn_k` most cosine-similar pool entries (separately per slot);
  otherwise every slot sees the whole pool. use_fat: the FAT (tokens = slots, groups = each slot's
  neighbours) and the slots are REPLACED by its output (official); otherwise the original Slot
  Attention update over the union of the selected inputs. One module, shared by all iterations.
  """
  config: SlotConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, slots: jnp.ndarray, pool: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    cfg = self.config
    b, k, c = slots.shape
    if cfg.use_fat:
      update = fat_lib.FAT(dropout=cfg.fat_dropout, dtype=self.dtype, name='fat')
    else:
      update = SlotAttentionUpdate(dtype=self.dtype, name='slot_attention')
    for _ in range(cfg.slot_iters):
      if cfg.use_knn:
        neighbours, indices, _ = ops.knn_topk(slots, pool, cfg.knn_k, cfg.cosine_eps)  # [b k n c]
        self.sow('intermediates', 'knn_indices', indices)
      else:
        neighbours = jnp.broadcast_to(pool[:, None], (b, k, *pool.shape[1:]))         # [b k p c]
      if cfg.use_fat:
        slots = update(slots, neighbours, train=train)
      else:
        inputs = neighbours.reshape(b, -1, c) if cfg.use_knn else pool
        slots, attn = update(slots, inputs)
        self.sow('intermediates', 'attention_weights', attn)
    return slots


class SlotBranch(nn.Module):
  """One stream's slot branch: x3 [b, h, w, c], refs [b, t, h', w', c] -> dict of

  sqz [b,h,w,c], agg [b,m,c] (aggregated prototypes), slots [b,k,c] (refined), slot_mask [b,h,w,k]
  (coarse, probabilities), cos_agg [b,h,w,m], cos_slots [b,h,w,k] (slot decoder maps in [-1, 1]).
  """
  config: SlotConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x3: jnp.ndarray, refs: jnp.ndarray, *, kmeans_key: jax.Array,
               train: bool) -> dict[str, jnp.ndarray]:
    cfg = self.config
    gen = SlotGenerator(cfg, dtype=self.dtype, name='generator')(x3, refs, kmeans_key=kmeans_key, train=train)
    slots = gen['slots']
    if cfg.use_slot_attention:
      pool = gen['agg']
      if cfg.knn_pool == 'aggregated_and_reference':
        refs_flat = gen['ref_protos'].reshape(x3.shape[0], -1, x3.shape[-1])   # [b (t c) c]
        pool = jnp.concatenate([pool, refs_flat], axis=1)
      elif cfg.knn_pool != 'aggregated':
        raise ValueError(f'Unknown knn_pool {cfg.knn_pool!r}; choose one of {KNN_POOLS}.')
      if cfg.use_knn and cfg.knn_k > pool.shape[1]:
        raise ValueError(f'knn_k={cfg.knn_k} exceeds the KNN pool size {pool.shape[1]} '
                         f'(knn_pool={cfg.knn_pool!r}); lower --config.model.knn_k.')
      slots = GuidedSlotAttention(cfg, dtype=self.dtype, name='attention')(slots, pool, train=train)
    cos_agg = ops.cosine_maps(gen['sqz'], gen['agg'], cfg.cosine_eps)        # [b h w m]
    cos_slots = ops.cosine_maps(gen['sqz'], slots, cfg.cosine_eps)           # [b h w k]
    self.sow('intermediates', 'slot_mask', gen['slot_mask'])
    self.sow('intermediates', 'fg_similarity', cos_slots[..., 0])
    self.sow('intermediates', 'bg_similarity', cos_slots[..., 1])
    return dict(sqz=gen['sqz'], agg=gen['agg'], slots=slots, slot_mask=gen['slot_mask'],
                cos_agg=cos_agg, cos_slots=cos_slots)
