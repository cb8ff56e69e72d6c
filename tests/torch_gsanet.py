"""The official GSA-Net video model re-created in PyTorch (a test helper, not a test file).

Written from the reference notes on Hydragon516/GSANet (model/model_for_video.py,
model/feature_aggregation_transformer.py, loss.py), at any size, so that parity tests can run the official
forward, backward and BatchNorm updates next to ours on the same random weights. Module and state-dict
names are the official ones (`rgb_MFFM1.branch0.0.conv.weight`, `rgb_SG.FAT.ATB.G2L.to_q.weight`, ...);
`official_key` maps our Flax variable paths onto them.

What follows the official code on purpose, bugs included (reference §2):
  * each reference frame runs through its stream's encoder and MFFM1 as its own batch, under no_grad,
    in training mode (so MFFM1's BatchNorm statistics move once per reference, then once for the target);
  * k-means: Lloyd iterations as fast_pytorch_kmeans 0.2.2 (`lloyd_kmeans`), from given initial rows;
    k-means prototypes are SUMS of member features, assignments detached;
  * guided slots: softmax over slots, a weighted SUM over pixels;
  * prototype_filter searches every prototype set but keeps only the last one (the aggregated one);
  * slots are replaced by the FAT output; cosine similarities divide by plain norms (no eps);
  * the loss feeds probabilities where logits belong (double sigmoid), with unit weights, 10 maps.
Differences from the official file, none of which changes the arithmetic: the sizes are arguments
(the official hard-codes 128 channels, 64 clusters, MiT-B2), the k-means initial rows are given
(`kmeans_init='strided'` or explicit indices) instead of drawn from the global RNG, and the Former
dropout rate is an argument (0.3 official; 0 for deterministic comparisons).
"""

import re

import numpy as np
import torch
from torch import nn as tnn
from torch.nn import functional as F
import transformers


# ------------------------------------------------------------------------------------------------
# Building blocks (reference §2.2, §2.5, §2.8, §2.9).
# ------------------------------------------------------------------------------------------------

class TBasicConv(tnn.Module):
  """Conv (no bias) + BatchNorm2d, no activation."""

  def __init__(self, cin, cout, k, dilation=1):
    super().__init__()
    self.conv = tnn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False)
    self.bn = tnn.BatchNorm2d(cout)

  def forward(self, x):
    return self.bn(self.conv(x))


class TMFFM(tnn.Module):
  """Video-model MFFM: each branch inside an nn.Sequential."""

  def __init__(self, cin, c):
    super().__init__()
    self.branch0 = tnn.Sequential(TBasicConv(cin, c, 1))
    self.branch1 = tnn.Sequential(TBasicConv(c, c, 3, 6))
    self.branch2 = tnn.Sequential(TBasicConv(c, c, 3, 12))
    self.branch3 = tnn.Sequential(TBasicConv(c, c, 3, 18))
    self.in_conv = tnn.Conv2d(cin, c, 1)

  def forward(self, x):
    sq = self.in_conv(x)
    y1 = self.branch1(sq)
    y2 = self.branch2(sq + y1)
    y3 = self.branch3(sq + y2)
    return torch.relu(self.branch0(x) + y3)


def _holder(**modules) -> tnn.Module:
  m = tnn.Module()
  for name, sub in modules.items():
    setattr(m, name, sub)
  return m


class TFormer(tnn.Module):
  """Pre-LN block, 2 heads of 32, bias-free qkv, FFN 2c; names layers.0.{0,1}.{norm,fn...}."""

  def __init__(self, c, heads=2, dim_head=32, dropout=0.3):
    super().__init__()
    self.heads, self.dim_head = heads, dim_head
    inner = heads * dim_head
    attn = _holder(norm=tnn.LayerNorm(c), fn=_holder(
        to_qkv=tnn.Linear(c, 3 * inner, bias=False),
        to_out=tnn.Sequential(tnn.Linear(inner, c), tnn.Dropout(dropout))))
    ffn = _holder(norm=tnn.LayerNorm(c), fn=_holder(net=tnn.Sequential(
        tnn.Linear(c, 2 * c), tnn.GELU(), tnn.Dropout(dropout), tnn.Linear(2 * c, c), tnn.Dropout(dropout))))
    self.layers = tnn.ModuleList([tnn.ModuleList([attn, ffn])])

  def forward(self, x):  # [B N C]
    attn, ffn = self.layers[0]
    b, n, _ = x.shape
    q, k, v = (t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2)
               for t in attn.fn.to_qkv(attn.norm(x)).chunk(3, dim=-1))
    weights = torch.softmax(q @ k.transpose(-1, -2) * self.dim_head ** -0.5, dim=-1)
    x = attn.fn.to_out((weights @ v).transpose(1, 2).reshape(b, n, -1)) + x
    return ffn.fn.net(ffn.norm(x)) + x


def _cross(c):
  return _holder(to_q=tnn.Linear(c, c), to_k=tnn.Linear(c, c), to_v=tnn.Linear(c, c),
                 to_out=tnn.Sequential(tnn.Linear(c, c), tnn.Dropout(0.0)))


class TFAT(tnn.Module):
  """FAT on (tokens [B, C, N], groups [B, C, G, K]) -> [B, C, N], with the unused convn/convl/convd."""

  def __init__(self, c, dropout=0.3):
    super().__init__()
    self.conva = tnn.Conv1d(c, c, 1, bias=False)
    self.ATB = _holder(G2L=_cross(c), L2G=_cross(c), former1=TFormer(c, dropout=dropout),
                       former2=TFormer(c, dropout=dropout))
    self.convn = tnn.Conv1d(c, c, 1, bias=False)
    self.convl = tnn.Conv1d(c, c, 1, bias=False)
    self.convd = tnn.Sequential(tnn.Conv1d(2 * c, c, 1, bias=False), tnn.BatchNorm1d(c))
    self.line_conv_att = tnn.Conv2d(c, 1, 1, bias=False)

  def forward(self, tokens, groups):
    c = tokens.shape[1]
    scale = c ** -0.5
    pooled = torch.sum(groups * torch.softmax(self.line_conv_att(groups), dim=-1), dim=-1)   # [B C G]
    z = self.conva(pooled).transpose(1, 2)                                                   # [B G C]
    x = tokens.transpose(1, 2)                                                               # [B N C]
    g2l, l2g = self.ATB.G2L, self.ATB.L2G
    v = g2l.to_v(x)
    z = z + g2l.to_out(torch.softmax(g2l.to_q(z) @ g2l.to_k(x).transpose(1, 2) * scale, -1) @ v)
    x = v  # G2L hands back its value projection as the new tokens.
    z = self.ATB.former1(z)
    x = x + l2g.to_out(torch.softmax(l2g.to_q(x) @ l2g.to_k(z).transpose(1, 2) * scale, -1) @ l2g.to_v(z))
    x = self.ATB.former2(x)
    return F.leaky_relu(x, 0.2).transpose(1, 2)


class TRes(tnn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.conv1 = tnn.Sequential(tnn.Conv2d(cin, cin, 3, 1, 1), tnn.BatchNorm2d(cin), tnn.ReLU(),
                                tnn.Conv2d(cin, cin, 3, 1, 1))
    self.conv2 = tnn.Sequential(tnn.Conv2d(cin, cout, 3, 1, 1), tnn.BatchNorm2d(cout), tnn.ReLU())

  def forward(self, y):
    return self.conv2(torch.relu(y + self.conv1(y)))


class TFusion(tnn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv_upsample = TBasicConv(c, c, 3)   # defined, never used (as official)
    self.cat_conv = TBasicConv(2 * c, c, 3)

  def forward(self, low, high):
    return torch.relu(self.cat_conv(torch.cat([low, low * high], dim=1)))


# ------------------------------------------------------------------------------------------------
# k-means and the slot branch (reference §2.4, §2.6, §2.7).
# ------------------------------------------------------------------------------------------------

def strided_rows(n: int, m: int) -> np.ndarray:
  """Rows 0, n/m, 2n/m, ... (floored): the deterministic init of `kmeans_init='strided'`."""
  return np.floor(np.arange(m) * n / m).astype(np.int64)


@torch.no_grad()
def lloyd_kmeans(x: torch.Tensor, init_rows, iters: int = 10, tol: float = 1e-4) -> torch.Tensor:
  """fast_pytorch_kmeans 0.2.2 `KMeans(mode='euclidean').fit_predict` from given initial rows.

  x [n, c] -> labels [n] of the last assignment step. Each step: nearest centroid by the largest
  2 x.c - |x|^2 - |c|^2, centroid = mean of its members (an empty cluster -> 0), stop once the summed
  squared centroid move is <= tol.
  """
  centroids = x[torch.as_tensor(init_rows)]
  labels = None
  clusters = torch.arange(centroids.shape[0])[:, None]
  for _ in range(iters):
    sim = 2 * x @ centroids.T - (x ** 2).sum(1)[:, None] - (centroids ** 2).sum(1)[None, :]
    labels = sim.max(dim=-1)[1]
    members = (labels[None] == clusters).to(x.dtype)                    # [m n]
    new = torch.nan_to_num(members @ x / members.sum(-1)[:, None])
    moved = (new - centroids).pow(2).sum()
    centroids = new
    if moved <= tol:
      break
  return labels


def channel_softmax_prototypes(feature: torch.Tensor, logits: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
  """Official get_global_prototypes(feature, logits, 'softmax', dim): feature [B C H W], logits [B K H W]
  -> (prototypes [B K C] = softmax(logits over `dim`) @ pixels, the softmax as [B K H W])."""
  b, _, h, w = feature.shape
  weights = torch.softmax(logits.flatten(2), dim=dim)                               # [B K HW]
  return torch.bmm(weights, feature.flatten(2).transpose(1, 2)), weights.reshape(b, -1, h, w)


def cosine_maps(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
  """x [B C H W], prototypes [B N C] -> [B N H W], plain norms (official get_correlation_map)."""
  b, c, h, w = x.shape
  p = prototypes / prototypes.norm(dim=2, keepdim=True)
  flat = x.reshape(b, c, -1)
  return torch.bmm(p, flat / flat.norm(dim=1, keepdim=True)).reshape(b, -1, h, w)


class TSlotGenerator(tnn.Module):
  def __init__(self, c, num_slots, num_clusters, kmeans_iters=10, kmeans_init=None, dropout=0.3):
    super().__init__()
    self.sqz = tnn.Conv2d(c, c, 1)
    self.slot_enc = tnn.Conv2d(c, num_slots, 1)
    self.FAT = TFAT(c, dropout)
    self.num_clusters, self.kmeans_iters = num_clusters, kmeans_iters
    self.kmeans_init = kmeans_init   # None: strided rows; or a callable (b, n, m) -> rows
    self.labels = []                 # the k-means labels of the last call, per sample

  def forward(self, target, refs):
    b, c, h, w = target.shape
    sqz = self.sqz(target)
    slot_logits = self.slot_enc(target)
    # Local extractor: per-sample k-means on sqz, one-hot masks (detached), prototypes = member sums.
    masks, self.labels = [], []
    for i in range(b):
      pixels = sqz[i].flatten(1).T                                                   # [HW C]
      rows = (strided_rows(h * w, self.num_clusters) if self.kmeans_init is None
              else self.kmeans_init(i, h * w, self.num_clusters))
      labels = lloyd_kmeans(pixels.detach(), rows, self.kmeans_iters)
      self.labels.append(labels)
      masks.append(F.one_hot(labels, self.num_clusters).T.to(sqz.dtype))              # [M HW]
    masks = torch.stack(masks).detach()
    local = torch.bmm(masks, sqz.flatten(2).transpose(1, 2))                          # [B M C]
    slots, slot_mask = channel_softmax_prototypes(sqz, slot_logits, dim=1)           # [B K C]
    ref_pts = []
    for ref in refs:
      s = self.sqz(ref)
      ref_pts.append(channel_softmax_prototypes(s, s, dim=2)[0])                     # [B C(j) C]
    groups = torch.stack(ref_pts, dim=1).permute(0, 3, 1, 2)                         # [B C R C(j)]
    agg = self.FAT(local.transpose(1, 2), groups).transpose(1, 2)                    # [B M C]
    return sqz, agg, ref_pts + [agg], slots, slot_mask


def prototype_filter(slots: torch.Tensor, prototype_sets: list, k: int) -> torch.Tensor:
  """Per slot, the k most cosine-similar prototypes of each set; the result of the LAST set is kept
  (the official loop overwrites it). slots [B S C] -> [B k C S]."""
  for pool in prototype_sets:
    sims = (slots / slots.norm(dim=2, keepdim=True)) @ (pool / pool.norm(dim=2, keepdim=True)).transpose(1, 2)
    top = torch.topk(sims, k, dim=2)[1]                                               # [B S k]
    picked = torch.stack([pool[i, top[i]] for i in range(slots.shape[0])])          # [B S k C]
    kept = picked.permute(0, 2, 3, 1)
  return kept


class TSlotAttention(tnn.Module):
  def __init__(self, c, iters=3, knn_k=16, dropout=0.3):
    super().__init__()
    self.iters, self.knn_k = iters, knn_k
    self.FAT = TFAT(c, dropout)

  def forward(self, prototype_sets, slots):
    for _ in range(self.iters):
      neighbours = prototype_filter(slots, prototype_sets, self.knn_k).permute(0, 2, 3, 1)   # [B C S k]
      slots = self.FAT(slots.transpose(1, 2), neighbours).transpose(1, 2)                    # [B S C]
    return slots


def _resize(x: torch.Tensor, size) -> torch.Tensor:
  return F.interpolate(x, size, mode='bilinear', align_corners=True)


class TGSANet(tnn.Module):
  """The official two-stream model at any size: forward(rgb, flow, rgb_ref, flow_ref) -> 10 maps.

  Inputs NCHW; references stacked on channels ([B, 3R, H, W]) as the official data loader does.
  Returns [out1..out4 (probabilities), coarse_r, coarse_f, fine1_r, fine2_r, fine1_f, fine2_f].
  """

  def __init__(self, encoder_config: transformers.SegformerConfig, c: int = 128, num_slots: int = 2,
               num_clusters: int = 64, knn_k: int = 16, slot_iters: int = 3, kmeans_iters: int = 10,
               dropout: float = 0.3):
    super().__init__()
    widths = list(encoder_config.hidden_sizes)
    for s in ('rgb', 'flow'):
      setattr(self, f'{s}_encoder', transformers.SegformerForImageClassification(encoder_config))
      for i, cin in zip((1, 2, 3, 4), reversed(widths)):
        setattr(self, f'{s}_MFFM{i}', TMFFM(cin, c))
      setattr(self, f'{s}_SG', TSlotGenerator(c, num_slots, num_clusters, kmeans_iters, dropout=dropout))
      setattr(self, f'{s}_SA', TSlotAttention(c, slot_iters, knn_k, dropout))
    self.fusion1, self.fusion2, self.fusion3 = TFusion(c), TFusion(c), TFusion(c)
    self.rgb_fusion = tnn.Conv2d(c + num_clusters + num_slots, c, 1)
    self.flow_fusion = tnn.Conv2d(c + num_clusters + num_slots, c, 1)
    for i in (1, 2, 3, 4):
      setattr(self, f'total_fuse{i}', TRes(2 * c, c))
    for i in (5, 6, 7, 8):
      setattr(self, f'linearr{i}', tnn.Conv2d(c, 1, 3, 1, 1))

  def reference_features(self, stream: str, refs: torch.Tensor) -> list:
    """One encoder + MFFM1 call per reference frame (batch B each), without gradient."""
    encoder, mffm1 = getattr(self, f'{stream}_encoder'), getattr(self, f'{stream}_MFFM1')
    with torch.no_grad():
      return [mffm1(encoder(refs[:, 3 * r:3 * r + 3], output_hidden_states=True).hidden_states[3])
              for r in range(refs.shape[1] // 3)]

  def stream(self, stream: str, x: torch.Tensor) -> list:
    f1, f2, f3, f4 = getattr(self, f'{stream}_encoder')(x, output_hidden_states=True).hidden_states
    m = lambda i: getattr(self, f'{stream}_MFFM{i}')
    return [m(4)(f1), m(3)(f2), m(2)(f3), m(1)(f4)]

  def forward(self, rgb, flow, rgb_ref, flow_ref):
    size = rgb.shape[2:]
    refs = dict(rgb=self.reference_features('rgb', rgb_ref), flow=self.reference_features('flow', flow_ref))
    feats = dict(rgb=self.stream('rgb', rgb), flow=self.stream('flow', flow))
    coarse, fine = [], []
    for s in ('rgb', 'flow'):
      x1, x2, x3, x4 = feats[s]
      sqz, agg, sets, slots, slot_mask = getattr(self, f'{s}_SG')(x3, refs[s])
      slots = getattr(self, f'{s}_SA')(sets, slots)
      cos_agg, cos_slots = cosine_maps(sqz, agg), cosine_maps(sqz, slots)
      feats[s][2] = getattr(self, f'{s}_fusion')(torch.cat([x3, cos_agg, cos_slots], dim=1))
      coarse.append(_resize(slot_mask[:, :1], size))
      half = (cos_slots + 1) / 2
      fine += [_resize(half[:, 0:1], size), _resize(1 - half[:, 1:2], size)]
    x1, x2, x3, x4 = (getattr(self, f'total_fuse{i + 1}')(torch.cat([feats['rgb'][i], feats['flow'][i]], dim=1))
                      for i in range(4))
    x2 = F.interpolate(x2, scale_factor=2, mode='bilinear')
    x3 = F.interpolate(x3, scale_factor=4, mode='bilinear')
    x4 = F.interpolate(x4, scale_factor=8, mode='bilinear')
    s4 = x4
    s3 = self.fusion3(x3, s4)
    s2 = self.fusion2(x2, s3)
    s1 = self.fusion1(x1, s2)
    m4 = self.linearr8(s4)
    m3 = self.linearr7(s3) + m4
    m2 = self.linearr6(s2) + m3
    m1 = self.linearr5(s1) + m2
    outs = [torch.sigmoid(_resize(m, size)) for m in (m1, m2, m3, m4)]
    return outs + coarse + fine


# ------------------------------------------------------------------------------------------------
# The loss (reference §5.4).
# ------------------------------------------------------------------------------------------------

def structure_loss(prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """Official structure_loss as it computes: mean BCE-with-logits of the probability (one scalar over
  every pixel and sample) + mean over samples of 1 - (Σσ(p)g + 1) / (Σ(σ(p) + g) - Σσ(p)g + 1)."""
  bce = F.binary_cross_entropy_with_logits(prob, mask)
  q = torch.sigmoid(prob)
  inter = (q * mask).sum(dim=(2, 3))
  union = (q + mask).sum(dim=(2, 3))
  return (bce + 1 - (inter + 1) / (union - inter + 1)).mean()


def total_loss(maps: list, mask: torch.Tensor) -> torch.Tensor:
  """train.py: the sum of structure_loss over the 10 maps, weight 1 each."""
  return sum(structure_loss(m, mask) for m in maps)


# ------------------------------------------------------------------------------------------------
# Names: our Flax variable paths -> the official state-dict keys.
# ------------------------------------------------------------------------------------------------

_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}

_FAT_RULES = (
    (r'^pool_score$', 'line_conv_att'),
    (r'^(g2l|l2g)_(q|k|v)$', lambda m: f'ATB.{m[1].upper()}.to_{m[2]}'),
    (r'^(g2l|l2g)_out$', lambda m: f'ATB.{m[1].upper()}.to_out.0'),
    (r'^former(\d)/attn_norm$', r'ATB.former\1.layers.0.0.norm'),
    (r'^former(\d)/to_qkv$', r'ATB.former\1.layers.0.0.fn.to_qkv'),
    (r'^former(\d)/to_out$', r'ATB.former\1.layers.0.0.fn.to_out.0'),
    (r'^former(\d)/ffn_norm$', r'ATB.former\1.layers.0.1.norm'),
    (r'^former(\d)/ffn_in$', r'ATB.former\1.layers.0.1.fn.net.0'),
    (r'^former(\d)/ffn_out$', r'ATB.former\1.layers.0.1.fn.net.3'),
)


def _mit_key(modules: list) -> str:
  parts = []
  for name in modules:
    if m := re.fullmatch(r'(stage|block)_(\d+)', name):
      parts += ['stages' if m[1] == 'stage' else 'blocks', m[2]]
    elif name == 'conv' and parts[-1] == 'sequence_reduction':
      parts.append('sequence_reduction')
    elif name == 'dwconv':
      parts += ['dwconv', 'dwconv']
    else:
      parts.append(name)
  return '.'.join(parts)


def official_key(names: tuple) -> str:
  """('rgb_slots', 'generator', 'fat', 'g2l_q', 'kernel') -> 'rgb_SG.FAT.ATB.G2L.to_q.weight'."""
  *modules, leaf = names
  head = modules[0]
  if m := re.fullmatch(r'(rgb|flow)_encoder', head):
    path = f'{head}.segformer.' + _mit_key(modules[1:])
  elif m := re.fullmatch(r'(rgb|flow)_mffm(\d)', head):
    rest = modules[1:]
    path = f'{m[1]}_MFFM{m[2]}.' + ('.'.join([rest[0], '0'] + rest[1:]) if rest[0].startswith('branch') else
                                     '.'.join(rest))
  elif m := re.fullmatch(r'(rgb|flow)_slots', head):
    part = {'generator': 'SG', 'attention': 'SA'}[modules[1]]
    if modules[2] == 'fat':
      inner = '/'.join(modules[3:])
      for pattern, replacement in _FAT_RULES:
        inner = re.sub(pattern, replacement, inner)
      path = f'{m[1]}_{part}.FAT.' + inner.replace('/', '.')
    else:
      path = f'{m[1]}_{part}.' + '.'.join(modules[2:])
  elif m := re.fullmatch(r'fuse(\d)', head):
    path = f'total_fuse{m[1]}.' + dict(conv1a='conv1.0', bn1='conv1.1', conv1b='conv1.3', conv2='conv2.0',
                                       bn2='conv2.1')[modules[1]]
  elif head == 'decoder' and modules[1].startswith('head'):
    path = f'linearr{int(modules[1][4:]) + 4}'
  elif head == 'decoder':
    path = '.'.join(modules[1:])
  else:
    path = '.'.join(modules)
  return f'{path}.{_LEAVES[leaf]}'


def extra_dims(names: tuple) -> int:
  """Trailing size-1 axes of the torch tensor: FAT.conva is a Conv1d(k=1), line_conv_att a 1x1 Conv2d."""
  if names[-1] != 'kernel' or 'fat' not in names:
    return 0
  return {'conva': 1, 'pool_score': 2}.get(names[-2], 0)


IGNORED = re.compile(r'(\.num_batches_tracked$|^(rgb|flow)_encoder\.classifier\.'
                     r'|\.FAT\.(convn|convl|convd)\.|^fusion\d\.conv_upsample\.)')


def randomise(module: tnn.Module, seed: int) -> tnn.Module:
  """Random weights, BatchNorm statistics and norm affines (every float entry of the state dict)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if not t.is_floating_point():
        continue
      if name.endswith('running_var'):
        t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype))
      elif t.ndim == 1:
        base = 1.0 if name.endswith('weight') else 0.0
        t.copy_(base + 0.1 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
      else:
        t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) / np.sqrt(t[0].numel()))
  return module


def no_dropout(module: tnn.Module) -> tnn.Module:
  """Every nn.Dropout of `module` set to p = 0 (training mode stays deterministic)."""
  for m in module.modules():
    if isinstance(m, tnn.Dropout):
      m.p = 0.0
  return module
