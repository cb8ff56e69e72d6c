"""A compact PyTorch restatement of the released SOLV model (test helper, not a test file).

Written from the reference description of the released code (spatial binder = invariant slot attention,
temporal binder, sklearn slot merger, relative-grid decoder), with the released state-dict key names, so
that the converter can be tested on its state_dict(). Widths that the release hard-codes (ViT width 768,
decoder width 1024, 8 heads, 3 temporal layers) are arguments here so tests can run small.

  TorchSOLV(...)(features, frame_mask, token_indices, merge_decisions=None) -> dict(rec, mask, slots,
      all_slots, slot_nums, attn)   as the released SOLV.forward (plus the merged attention 'attn').
"""

import random

import numpy as np
import torch
from torch import nn
from sklearn.cluster import AgglomerativeClustering


class ResidualMLP(nn.Module):
  """x + Dropout(layer2(ReLU(layer1(LN(x)))))."""

  def __init__(self, dim: int, hidden: int, dropout: float):
    super().__init__()
    self.layer1 = nn.Linear(dim, hidden)
    self.layer2 = nn.Linear(hidden, dim)
    self.dropout = nn.Dropout(dropout)
    self.norm = nn.LayerNorm(dim)

  def forward(self, x):
    return x + self.dropout(self.layer2(torch.relu(self.layer1(self.norm(x)))))


def _positions(grid, token_indices):
  """grid (1, 1, n, 2), token_indices (b, n') -> (b, n', 2)."""
  return grid[0, 0][token_indices]


def _statistics(weights, positions):
  """weights (b, k, n') normalised over tokens, positions (b, n', 2) -> centroid, std (b, k, 1, 2)."""
  centre = torch.einsum('bkn,bnc->bkc', weights, positions).unsqueeze(2)
  spread = (positions.unsqueeze(1) - centre) ** 2
  return centre, torch.sqrt(torch.einsum('bkn,bknc->bkc', weights, spread)).unsqueeze(2)


class SpatialBinder(nn.Module):
  """Invariant slot attention over the kept tokens of each frame; also owns the decoder's `h`."""

  def __init__(self, input_dim, slot_dim, num_slots, grid_hw, iters=3, sigma=5.0, dropout=0.1):
    super().__init__()
    rows, cols = grid_hw
    self.iters, self.sigma, self.slot_dim, self.num_slots = iters, sigma, slot_dim, num_slots
    xs, ys = torch.meshgrid(torch.linspace(-1, 1, cols), torch.linspace(-1, 1, rows), indexing='xy')
    self.abs_grid = nn.Parameter(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).reshape(1, 1, -1, 2))
    self.slots = nn.Parameter(torch.empty(1, num_slots, slot_dim))
    self.S_s = nn.Parameter(torch.empty(1, num_slots, 1, 2))
    self.S_p = nn.Parameter(torch.empty(1, num_slots, 1, 2))
    nn.init.xavier_uniform_(self.slots)
    nn.init.normal_(self.S_s, std=0.02)
    nn.init.normal_(self.S_p, std=0.02)
    self.h = nn.Linear(2, slot_dim)
    self.Q = nn.Linear(slot_dim, slot_dim, bias=False)
    self.norm = nn.LayerNorm(slot_dim)
    self.gru = nn.GRUCell(slot_dim, slot_dim)
    self.mlp = ResidualMLP(slot_dim, 4 * slot_dim, dropout)
    self.K = nn.Linear(slot_dim, slot_dim, bias=False)
    self.V = nn.Linear(slot_dim, slot_dim, bias=False)
    self.g = nn.Linear(2, slot_dim)
    self.f = nn.Sequential(nn.Linear(slot_dim, slot_dim), nn.ReLU(), nn.Linear(slot_dim, slot_dim))
    self.initial_mlp = nn.Sequential(nn.LayerNorm(input_dim), nn.Linear(input_dim, input_dim), nn.ReLU(),
                                     nn.Linear(input_dim, slot_dim), nn.LayerNorm(slot_dim))
    self.final_layer = nn.Linear(slot_dim, slot_dim)

  def forward(self, x, token_indices):
    """x (bF, n', c), token_indices (bF, n') -> slots (bF, k, D), attention of every frame (bF, k, n')."""
    bf = x.shape[0]
    feats = self.initial_mlp(x).unsqueeze(1)                                    # (bF, 1, n', D)
    positions = _positions(self.abs_grid, token_indices)                       # (bF, n', 2)
    z = self.slots.expand(bf, -1, -1)
    centre, scale = self.S_p.expand(bf, -1, -1, -1), self.S_s.expand(bf, -1, -1, -1)
    for t in range(self.iters + 1):
      z_prev, z = z, self.norm(z)
      rel = (positions.unsqueeze(1) - centre) / (scale * self.sigma)            # (bF, k, n', 2)
      keys = self.f(self.K(feats) + self.g(rel))
      values = self.f(self.V(feats) + self.g(rel))
      logits = torch.einsum('bkd,bknd->bkn', self.Q(z), keys) * self.slot_dim ** -0.5
      attn = logits.softmax(dim=1) + 1e-8
      attn = attn / attn.sum(-1, keepdim=True)
      updates = torch.einsum('bkn,bknd->bkd', attn, values)
      centre, scale = _statistics(attn, positions)
      if t < self.iters:
        z = self.gru(updates.reshape(-1, self.slot_dim), z_prev.reshape(-1, self.slot_dim)).reshape(z.shape)
        z = self.mlp(z)
    return self.final_layer(z), attn

  def decoder_grid(self, attn, token_indices):
    """attn (b, k, n') over the tokens `token_indices` (b, n') -> h(rel) on the full grid (b k, n, D)."""
    b, k, _ = attn.shape
    centre, scale = _statistics(attn, _positions(self.abs_grid, token_indices))
    rel = (self.abs_grid[0] - centre) / (scale * self.sigma)                     # (b, k, n, 2)
    return self.h(rel.reshape(b * k, -1, 2))


class TemporalBinder(nn.Module):
  """torch's post-norm TransformerEncoder along time, one sequence per slot index."""

  def __init__(self, slot_dim, frames, heads=8, ffn=512, layers=3, dropout=0.1):
    super().__init__()
    self.frames = frames
    layer = nn.TransformerEncoderLayer(slot_dim, nhead=heads, dim_feedforward=ffn, dropout=dropout,
                                       batch_first=True)
    self.slot_transformer = nn.TransformerEncoder(layer, layers)
    self.pos_embed_temporal = nn.Parameter(torch.empty(1, frames, 1, slot_dim))
    nn.init.normal_(self.pos_embed_temporal, std=0.02)

  def forward(self, slots, frame_mask):
    """slots (bF, k, D), frame_mask (b, F) -> centre slots (b, k, D), all (b, F, k, D)."""
    _, k, d = slots.shape
    x = slots.reshape(-1, self.frames, k, d) + self.pos_embed_temporal
    b = x.shape[0]
    x = x.permute(0, 2, 1, 3).reshape(b * k, self.frames, d)
    pad = (~frame_mask.bool()).repeat_interleave(k, dim=0)
    x = self.slot_transformer(x, src_key_padding_mask=pad)
    x = x.reshape(b, k, self.frames, d).permute(0, 2, 1, 3)
    return x[:, self.frames // 2], x


class Decoder(nn.Module):
  """(L - 1) x (Linear, ReLU) then Linear to c + 1."""

  def __init__(self, slot_dim, feature_dim, hidden=1024, layers=5):
    super().__init__()
    widths = [slot_dim] + [hidden] * (layers - 1) + [feature_dim + 1]
    self.num_layers = layers
    for i in range(layers):
      setattr(self, f'layer{i + 1}', nn.Linear(widths[i], widths[i + 1]))

  def forward(self, x):
    for i in range(1, self.num_layers):
      x = torch.relu(getattr(self, f'layer{i}')(x))
    return getattr(self, f'layer{self.num_layers}')(x)


def cluster(slots_np, threshold, min_clusters=3):
  """sklearn labels of one slot set, with the released '<= 2 clusters -> no merge' rule."""
  labels = AgglomerativeClustering(n_clusters=None, metric='cosine', compute_full_tree=True,
                                   distance_threshold=threshold, linkage='complete').fit(slots_np).labels_
  return np.arange(len(slots_np)) if labels.max() + 1 < min_clusters else labels


class TorchSOLV(nn.Module):
  """The released SOLV (without the ViT), widths as arguments."""

  def __init__(self, *, input_dim=768, feature_dim=768, slot_dim=128, num_slots=8, grid_hw=(24, 36), N=2,
               iters=3, heads=8, ffn=512, temporal_layers=3, decoder_hidden=1024, decoder_layers=5, dropout=0.1,
               merge_slots=True, threshold=0.12, min_clusters=3, merge_prob=1.0, rel_grid_bug=True):
    super().__init__()
    self.num_slots, self.slot_dim, self.feature_dim, self.N = num_slots, slot_dim, feature_dim, N
    self.num_tokens = grid_hw[0] * grid_hw[1]
    self.merge_slots, self.threshold, self.min_clusters = merge_slots, threshold, min_clusters
    self.merge_prob, self.rel_grid_bug = merge_prob, rel_grid_bug
    self.s_bind = SpatialBinder(input_dim, slot_dim, num_slots, grid_hw, iters, dropout=dropout)
    self.t_bind = TemporalBinder(slot_dim, 2 * N + 1, heads, ffn, temporal_layers, dropout)
    self.dec = Decoder(slot_dim, feature_dim, decoder_hidden, decoder_layers)
    self.pos_dec = nn.Parameter(torch.empty(1, self.num_tokens, slot_dim))
    nn.init.normal_(self.pos_dec, std=0.02)

  def merge(self, slots, attn, merge_decisions=None):
    """Per clip: sklearn clustering (or none), mean slots, summed + renormalised attention."""
    b, k, _ = slots.shape
    labels = np.zeros((b, k), np.int64)
    for i in range(b):
      merge = (random.random() >= 1 - self.merge_prob) if merge_decisions is None else bool(merge_decisions[i])
      labels[i] = cluster(slots[i].detach().cpu().numpy(), self.threshold, self.min_clusters) if merge else np.arange(k)
    assign = torch.eye(k)[torch.from_numpy(labels)].transpose(1, 2)              # (b, row, slot)
    members = assign.sum(-1, keepdim=True)
    new_slots = torch.einsum('brs,bsd->brd', assign, slots) / (members + 1e-8)
    new_attn = torch.einsum('brs,bsn->brn', assign, attn) + 1e-8
    return new_slots, new_attn / new_attn.sum(-1, keepdim=True), (members[..., 0] > 0).sum(-1), labels

  def decode(self, slots, attn, indices, slot_nums):
    """Merged slots (b, k, D), attention (b, k, n') over the tokens `indices` (b, n'), K (b,) -> rec, masks."""
    b = slots.shape[0]
    maps = (slots.reshape(-1, 1, self.slot_dim) + self.pos_dec) + self.s_bind.decoder_grid(attn, indices)
    out = self.dec(maps).reshape(b, self.num_slots, self.num_tokens, self.feature_dim + 1)
    feats, alpha = out[..., :self.feature_dim], out[..., self.feature_dim]
    valid = torch.arange(self.num_slots)[None] < slot_nums[:, None]
    masks = torch.where(valid[..., None], alpha, torch.tensor(float('-inf'))).softmax(dim=1)
    masks = torch.where(valid[..., None], masks, torch.zeros(()))
    return torch.einsum('bkn,bknc->bnc', masks, feats), masks

  def forward(self, features, frame_mask, token_indices, merge_decisions=None):
    b, f = frame_mask.shape
    kept = features.shape[1]
    slots, attn = self.s_bind(features, token_indices)
    attn = attn.reshape(b, f, self.num_slots, kept)[:, self.N]
    slots, all_slots = self.t_bind(slots, frame_mask)
    slot_nums = torch.full((b,), self.num_slots, dtype=torch.long)
    labels = np.tile(np.arange(self.num_slots), (b, 1))
    if self.merge_slots:
      slots, attn, slot_nums, labels = self.merge(slots, attn, merge_decisions)
    if self.rel_grid_bug:
      indices = token_indices[:b]
    else:
      indices = token_indices.reshape(b, f, kept)[:, self.N]
    rec, masks = self.decode(slots, attn, indices, slot_nums)
    return dict(rec=rec, mask=masks, slots=slots, all_slots=all_slots, slot_nums=slot_nums, attn=attn,
                labels=labels)
