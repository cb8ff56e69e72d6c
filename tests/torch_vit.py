"""A PyTorch statement of the official DINO / DINOv2 VisionTransformer forward, for parity tests.

Written from the reference notes (SOLV §2.1, Betrayed-by-Attention §2.1): parameter names as the official
state dicts (`patch_embed.proj`, `cls_token`, `pos_embed`, `register_tokens`, `mask_token`,
`blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`, `norm`), so an
official checkpoint loads with `load_state_dict(strict=True)`. The position embedding is resized with
`F.interpolate(mode='bicubic')`: `scale_factor=((new + offset) / g)` when `offset` > 0, else `size=`,
with `antialias` as given, and returned unchanged at the training grid. A helper module, not a test.
"""

import torch
import torch.nn.functional as F
from torch import nn


class TorchLayerScale(nn.Module):

  def __init__(self, dim: int):
    super().__init__()
    self.gamma = nn.Parameter(torch.ones(dim))

  def forward(self, x):
    return x * self.gamma


class TorchAttention(nn.Module):

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    """x [b, N, c] -> (out [b, N, c], qkv [b, N, 3c], attention [b, heads, N, N])."""
    b, n, c = x.shape
    qkv = self.qkv(x)
    q, k, v = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # each [b h N d]
    attention = torch.softmax((q @ k.transpose(-1, -2)) * (c // self.heads) ** -0.5, dim=-1)
    out = (attention @ v).transpose(1, 2).reshape(b, n, c)
    return self.proj(out), qkv, attention


class TorchMlp(nn.Module):

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class TorchBlock(nn.Module):

  def __init__(self, dim: int, heads: int, layer_scale: bool, eps: float):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = TorchAttention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = TorchMlp(dim, 4 * dim)
    if layer_scale:
      self.ls1, self.ls2 = TorchLayerScale(dim), TorchLayerScale(dim)
    else:
      self.ls1 = self.ls2 = nn.Identity()

  def forward(self, x):
    y, qkv, attention = self.attn(self.norm1(x))
    x = x + self.ls1(y)
    x = x + self.ls2(self.mlp(self.norm2(x)))
    return x, qkv, attention


class TorchViT(nn.Module):
  """DINO v1 (layer_scale=False, no mask_token) or DINOv2 (layer_scale=True, mask_token, registers)."""

  def __init__(self, *, width: int, depth: int, heads: int, patch: int, pos_grid: int, layer_scale: bool,
               registers: int = 0, offset: float = 0.1, antialias: bool = False, eps: float = 1e-6):
    super().__init__()
    self.patch, self.pos_grid, self.registers = patch, pos_grid, registers
    self.offset, self.antialias = offset, antialias
    self.patch_embed = nn.Module()
    self.patch_embed.proj = nn.Conv2d(3, width, patch, stride=patch)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, width))
    if registers:
      self.register_tokens = nn.Parameter(torch.zeros(1, registers, width))
    self.blocks = nn.ModuleList([TorchBlock(width, heads, layer_scale, eps) for _ in range(depth)])
    self.norm = nn.LayerNorm(width, eps=eps)
    if layer_scale:
      self.mask_token = nn.Parameter(torch.zeros(1, width))  # DINOv2 keeps it; no forward uses it.

  def position_embedding(self, gh: int, gw: int):
    """[1, 1 + gh*gw, c] for a gh x gw patch grid."""
    g = self.pos_grid
    if (gh, gw) == (g, g):
      return self.pos_embed
    c = self.pos_embed.shape[-1]
    grid = self.pos_embed[:, 1:].reshape(1, g, g, c).permute(0, 3, 1, 2).float()
    if self.offset:
      kwargs = {'scale_factor': ((gh + self.offset) / g, (gw + self.offset) / g)}
    else:
      kwargs = {'size': (gh, gw)}
    grid = F.interpolate(grid, mode='bicubic', antialias=self.antialias, **kwargs)
    assert grid.shape[-2:] == (gh, gw), grid.shape
    return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, c)], dim=1)

  def tokens(self, images, keep=None):
    """images [b, 3, h, w] -> [b, 1 + r + n', c]: CLS (+ pos), registers, kept patches (+ pos)."""
    b, _, h, w = images.shape
    gh, gw = h // self.patch, w // self.patch
    patches = self.patch_embed.proj(images).flatten(2).transpose(1, 2)           # [b n c]
    x = torch.cat([self.cls_token.expand(b, -1, -1), patches], dim=1)
    x = x + self.position_embedding(gh, gw)
    cls, patches = x[:, :1], x[:, 1:]
    if keep is not None:
      patches = torch.gather(patches, 1, keep[..., None].expand(-1, -1, patches.shape[-1]))
    parts = [cls]
    if self.registers:
      parts.append(self.register_tokens.expand(b, -1, -1))
    return torch.cat(parts + [patches], dim=1)

  def forward(self, images, keep=None):
    """images [b, 3, h, w] -> dict: 'blocks' (each block's output), 'keys' (last block, patch tokens),
    'cls' (last block, pre-norm), 'attention' (last block), 'normed' (norm of the last output)."""
    x = self.tokens(images, keep)
    outputs = []
    for block in self.blocks:
      x, qkv, attention = block(x)
      outputs.append(x)
    c = x.shape[-1]
    start = 1 + self.registers
    return {'blocks': outputs, 'keys': qkv[:, start:, c:2 * c], 'cls': x[:, 0], 'attention': attention,
            'normed': self.norm(x)}


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
  """Fills every parameter with N(0, 1/fan-in)-like random values (LayerNorm and LayerScale around 1)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim >= 2 and not name.endswith(('token', 'tokens', 'pos_embed', 'position_embeddings')):
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
      elif name.endswith(('gamma', 'lambda1')) or (p.ndim == 1 and 'norm' in name and name.endswith('weight')):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
  return module
