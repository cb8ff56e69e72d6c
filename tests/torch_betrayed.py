"""A compact PyTorch restatement of the released Betrayed-by-Attention parts (test helper, not a test file).

Written from the reference description of the released code: the spatio-temporal block (pre-LN attention with
the post-dropout map returned, MLP), the training-path wrapper ([CLS, keys] per frame, head mean, CLS rows and
columns removed), the two training losses, the released hierarchical clustering over query / sparse-key
attention rows, the per-iteration cosine schedule and the four AdamW parameter groups. State-dict names are
the released ones (`temporal_transformer.{j}.norm1`, `.attn.qkv`, `.attn.proj`, `.norm2`, `.mlp.fc1`,
`.mlp.fc2`), so the converter can be tested on `state_dict()`.

  TorchSpatioTemporal(dim, heads, ...)(keys [b,t,n,c], cls [b,t,c]) -> (tokens [b,t,n,c], attention [b,tn,tn])
  torch_losses(attention, tokens, points, stable=False) -> (semantic, motion)
  torch_query_keys(block, keys [t,n,c]) -> q, k [t, heads, n, d]
  torch_cluster(q, k_sparse, scale, tau, max_passes=10_000) -> one-hot masks [m, t*n]
  cosine_schedule(base, final, total) -> numpy [total]
  param_groups(model) -> the four AdamW groups of the release
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------------------
# The block.
# ------------------------------------------------------------------------------------------------

class _Attention(nn.Module):

  def __init__(self, dim: int, heads: int, attn_drop: float, proj_drop: float):
    super().__init__()
    self.heads = heads
    self.scale = (dim // heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=False)
    self.attn_drop = nn.Dropout(attn_drop)
    self.proj = nn.Linear(dim, dim)
    self.proj_drop = nn.Dropout(proj_drop)

  def forward(self, x):
    b, n, c = x.shape
    q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    probs = self.attn_drop(torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1))  # b h n n
    out = (probs @ v).transpose(1, 2).reshape(b, n, c)
    return self.proj_drop(self.proj(out)), probs


class _Mlp(nn.Module):

  def __init__(self, dim: int, hidden: int, drop: float):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)
    self.drop1 = nn.Dropout(drop)
    self.drop2 = nn.Dropout(drop)

  def forward(self, x):
    return self.drop2(self.fc2(self.drop1(F.gelu(self.fc1(x)))))


class TorchBlock(nn.Module):
  """x + attn(LN1 x), then + mlp(LN2 x); returns (x, per-head post-dropout attention [b, h, n, n])."""

  def __init__(self, dim: int = 384, heads: int = 8, mlp_ratio: float = 4.0, attn_drop: float = 0.4,
               drop: float = 0.1):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim)
    self.attn = _Attention(dim, heads, attn_drop, drop)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = _Mlp(dim, int(dim * mlp_ratio), drop)

  def forward(self, x):
    update, probs = self.attn(self.norm1(x))
    x = x + update
    return x + self.mlp(self.norm2(x)), probs


class TorchSpatioTemporal(nn.Module):
  """The trained part of the released AttEncoder, fed with the encoder's keys and CLS tokens."""

  def __init__(self, dim: int = 384, heads: int = 8, num_blocks: int = 1, mlp_ratio: float = 4.0,
               attn_drop: float = 0.4, drop: float = 0.1):
    super().__init__()
    self.temporal_transformer = nn.ModuleList(
        [TorchBlock(dim, heads, mlp_ratio, attn_drop, drop) for _ in range(num_blocks)])

  def forward(self, keys, cls):
    b, t, n, c = keys.shape
    x = torch.cat([cls[:, :, None], keys], dim=2).reshape(b, t * (n + 1), c)
    for block in self.temporal_transformer:
      x, probs = block(x)
    tokens = x.view(b, t, n + 1, c)[:, :, 1:]
    mean = probs.mean(dim=1).view(b, t, n + 1, t, n + 1)[:, :, 1:, :, 1:]
    return tokens, mean.reshape(b, t * n, t * n)


def torch_query_keys(block: TorchBlock, keys):
  """keys [t, n, c] -> q, k [t, heads, n, d] from LN1 + qkv only (the inference path)."""
  t, n, c = keys.shape
  heads = block.attn.heads
  qkv = block.attn.qkv(block.norm1(keys)).view(t, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
  return qkv[0], qkv[1]


# ------------------------------------------------------------------------------------------------
# The two losses (num_points query positions given explicitly instead of torch.randperm).
# ------------------------------------------------------------------------------------------------

def torch_losses(attention, tokens, points, *, stable: bool = False, sem_top: int = 30, sem_bottom: int = 200,
                 mot_top: int = 10, mot_bottom: int = 50, pos_margin: float = 0.9, neg_margin: float = 0.1,
                 mot_margin: float = 1.0):
  """attention [b, t n, t n] (head mean, no CLS), tokens [b, t, n, c], points [p] -> (semantic, motion).

  The ranking is one descending sort per (query, key frame), as the release; `stable=True` makes ties
  resolve by token index (the policy of the JAX port) instead of torch's unstable order.
  """
  b, t, n, c = tokens.shape
  p = points.shape[0]
  rows = attention.view(b, t, n, t * n)[:, :, points]                      # b t p (t n)
  per_frame = rows.view(b, t, p, t, n)
  order = torch.sort(per_frame, dim=-1, descending=True, stable=stable).indices if stable else \
      torch.argsort(per_frame, dim=-1, descending=True)                    # b t p t' n

  # Semantic: cosine hinges of the query's block output against the most / least attended outputs per frame.
  unit = F.normalize(tokens, dim=-1)                                       # b t n c
  query = unit[:, :, points]                                               # b t p c
  cos = torch.einsum('btpc,bsnc->btpsn', query, unit)                      # b t p t' n
  cos_pos = torch.gather(cos, -1, order[..., :sem_top])
  cos_neg = torch.gather(cos, -1, order[..., -sem_bottom:])
  semantic = F.relu(pos_margin - cos_pos).mean() + F.relu(cos_neg - neg_margin).mean()

  # Motion: cross-entropy of the detached query row against the rows of its own frame's top / bottom tokens.
  own = torch.stack([order[:, i, :, i] for i in range(t)], dim=1)          # b t p n
  all_rows = attention.view(b, t, n, t * n)                                # b t n (t n)
  q_row = F.normalize(rows.detach(), p=1, dim=-1)                          # b t p (t n)
  log_rows = torch.log(F.normalize(all_rows, p=1, dim=-1) + 1e-10)         # b t n (t n)
  score = torch.einsum('btpc,btnc->btpn', q_row, log_rows)                 # b t p n
  s_pos = torch.gather(score, -1, own[..., :mot_top])                      # b t p 10
  s_neg = torch.gather(score, -1, own[..., -mot_bottom:])                  # b t p 50
  weight = torch.softmax((q_row * torch.log(q_row + 1e-10)).sum(-1), dim=-1)  # b t p
  hinge = F.relu(s_neg[..., :, None] - s_pos[..., None, :] + mot_margin)   # b t p 50 10
  motion = torch.einsum('btp,btpij->btij', weight, hinge).mean()
  return semantic, motion


# ------------------------------------------------------------------------------------------------
# The released clustering (windows of 3 query frames, neighbourhood averaging, greedy passes).
# ------------------------------------------------------------------------------------------------

def torch_kl_distance(a, b):
  """Symmetric KL between the rows of a [n, c] and b [m, c] -> [n, m], plain logs (NaN on exact zeros)."""
  log_a, log_b = torch.log(a), torch.log(b)
  self_terms = (a * log_a).sum(-1)[:, None] + (b * log_b).sum(-1)[None, :]
  cross_terms = a @ log_b.T + log_a @ b.T
  return self_terms - cross_terms


def _window_rows(q, k, scale, start, size):
  """Head-mean attention rows of query frames start..start+size against every sparse key: [size n, t' n]."""
  qs = q[start:start + size]                                               # s h n d
  logits = torch.einsum('shnd,khmd->shnkm', qs, k) * scale
  s, h, n, kt, m = logits.shape
  probs = torch.softmax(logits.reshape(s, h, n, kt * m), dim=-1)
  return probs.mean(dim=1).reshape(s * n, kt * m)


def _greedy(rows, tau):
  """One pass in index order: each unassigned row takes every unassigned row within tau; plain means."""
  distance = torch_kl_distance(rows, rows)
  free = torch.ones(rows.shape[0], dtype=torch.bool)
  centroids = []
  for i in range(rows.shape[0]):
    if not free[i]:
      continue
    members = (distance[i] <= tau) & free
    centroids.append(rows[members].mean(dim=0))
    free[members] = False
  return centroids


def torch_cluster(q, k, scale: float, tau: float, max_passes: int = 10_000, window: int = 3):
  """q [t, h, n, d], k [t', h, n, d] -> one-hot masks [m, t n] as the released memory-efficient clustering."""
  t, n = q.shape[0], q.shape[2]
  pooled = []
  for start in range(0, t, window):
    rows = _window_rows(q, k, scale, start, window)
    near = (torch_kl_distance(rows, rows) <= tau).float()
    averaged = near @ rows
    averaged = averaged / averaged.sum(dim=1, keepdim=True)
    pooled += _greedy(averaged, tau)
  centroids = pooled
  for _ in range(max_passes):
    merged = _greedy(torch.stack(centroids), tau)
    done = len(merged) == len(centroids)
    centroids = merged
    if done:
      break
  centroids = torch.stack(centroids)
  masks = torch.zeros(centroids.shape[0], t * n)
  for start in range(0, t, window):
    rows = _window_rows(q, k, scale, start, window)
    nearest = torch.argmin(torch_kl_distance(centroids, rows), dim=0)
    masks[:, start * n:start * n + rows.shape[0]] = F.one_hot(nearest, centroids.shape[0]).T.float()
  return masks


# ------------------------------------------------------------------------------------------------
# Schedule and optimiser groups.
# ------------------------------------------------------------------------------------------------

def cosine_schedule(base: float, final: float, total: int) -> np.ndarray:
  """final + (base - final) (1 + cos(pi i / total)) / 2 for i = 0 .. total - 1 (float64, no warm-up)."""
  steps = np.arange(total)
  return final + 0.5 * (base - final) * (1.0 + np.cos(math.pi * steps / total))


def param_groups(model: nn.Module):
  """The release's four groups: encoder matrices, encoder 1-D / biases, other matrices, other 1-D / biases."""
  groups = [[], [], [], []]
  for name, param in model.named_parameters():
    if not param.requires_grad:
      continue
    one_d = name.endswith('.bias') or param.ndim == 1
    groups[(0 if 'encoder' in name else 2) + int(one_d)].append(param)
  return [{'params': groups[0]}, {'params': groups[1], 'weight_decay': 0.0},
          {'params': groups[2]}, {'params': groups[3], 'weight_decay': 0.0}]
