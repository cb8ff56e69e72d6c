"""PyTorch re-creations of the DPA modules (Hydragon516/DPA), written from the reference note, for tests.

Not a test file: tests/test_dpa*.py import it. Module attribute names follow the official code so that the
state-dict keys are the official ones (rgb_encoder.vgg.0.weight, rgb_TAM.K.weight, DAM4.rgb_OCR.GAN.TF.theta.
weight, total_fuse4.conv1.0.weight, ...); the structure is ours. `width` scales the VGG channels and `dim`
is the hidden width (official 1.0 and 128), `decoder_width` scales the decoder's 64 / 96 / 32, so tests can
run tiny models.

  torchvision_vgg16_features(width)   torchvision's vgg16().features layer list (indices 0..30)
  VideoModel(ima, ifa_values, ...)    model_for_video.DATA; ima='off' is the released forward,
                                      'official_dam' the commented-out DAM4 / DAM5 / fuse5 lines wired in
  PretrainModel(...)                  model_for_pretrain.DATA (stage 1, single-stream DAM at conv4 / conv5)
  PaperIMAStream, paper_cross         the paper's IMA (eqs. 1-7), as gsa_jax.models.dpa.ima
  iou_loss, bce_loss                  the official loss.py formula and the paper's cross-entropy
Inputs are NCHW; the references are stacked on channels (B, 3R, H, W) as in the official forward.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

VGG_PLAN = (64, 64, 'pool', 128, 128, 'pool', 256, 256, 256, 'pool', 512, 512, 512, 'pool', 512, 512, 512, 'pool')
# Layer index ranges [start, end) of the five stages (each pool opens the next stage; pool 30 unused).
STAGE_BOUNDS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


def scaled(channels: int, width: float) -> int:
  return max(1, int(round(channels * width)))


def vgg_layers(width: float = 1.0) -> list[nn.Module]:
  out, c_in = [], 3
  for item in VGG_PLAN:
    if item == 'pool':
      out.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      c_out = scaled(item, width)
      out += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
      c_in = c_out
  return out


def torchvision_vgg16_features(width: float = 1.0) -> nn.Sequential:
  """torchvision.models.vgg16().features: 13 conv+ReLU and 5 max-pools, indices 0..30."""
  return nn.Sequential(*vgg_layers(width))


def normal_init(module: nn.Module) -> None:
  """The official weights_init: N(0, 0.01) conv kernels, zero conv biases, BN2d weight 1 and bias 0."""
  if isinstance(module, nn.Conv2d):
    nn.init.normal_(module.weight, 0.0, 0.01)
    if module.bias is not None:
      nn.init.zeros_(module.bias)
  elif isinstance(module, nn.BatchNorm2d):
    nn.init.ones_(module.weight)
    nn.init.zeros_(module.bias)


def up(x: torch.Tensor, size) -> torch.Tensor:
  return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=True)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 1) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True))


# ------------------------------------------------------------------------------------------------
# Building blocks.
# ------------------------------------------------------------------------------------------------

class Encoder(nn.Module):
  """VGG-16 in an nn.ModuleList called `vgg`, run stage by stage."""

  def __init__(self, width: float = 1.0):
    super().__init__()
    self.vgg = nn.ModuleList(vgg_layers(width))

  def stage(self, x: torch.Tensor, i: int) -> torch.Tensor:
    start, end = STAGE_BOUNDS[i - 1]
    for layer in self.vgg[start:end]:
      x = layer(x)
    return x

  def conv5(self, x: torch.Tensor) -> torch.Tensor:
    for i in range(1, 6):
      x = self.stage(x, i)
    return x


def ocr(x: torch.Tensor, detach: bool = True) -> torch.Tensor:
  """(B, C, H, W) -> (B, C, C): row j = sum over pixels of softmax_j(x) * x."""
  b, c = x.shape[:2]
  flat = x.reshape(b, c, -1)
  weights = torch.softmax(flat, dim=2)
  if detach:
    weights = weights.detach()
  return torch.bmm(weights, flat.transpose(1, 2))


def cosine_map(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
  """x (B, C, H, W), prototypes (B, N, C) -> (B, N, H, W), plain L2 divisions."""
  b, c, h, w = x.shape
  p = prototypes / prototypes.norm(dim=2, keepdim=True)
  flat = x.reshape(b, c, -1)
  flat = flat / flat.norm(dim=1, keepdim=True)
  return torch.bmm(p, flat).reshape(b, -1, h, w)


class ASPP(nn.Module):

  def __init__(self, c_in: int, c_out: int):
    super().__init__()
    self.conv_1x1_1, self.bn_conv_1x1_1 = nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out)
    for i, d in enumerate((6, 12, 18), start=1):
      setattr(self, f'conv_3x3_{i}', nn.Conv2d(c_in, c_out, 3, padding=d, dilation=d))
      setattr(self, f'bn_conv_3x3_{i}', nn.BatchNorm2d(c_out))
    self.conv_1x1_2, self.bn_conv_1x1_2 = nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out)
    self.conv_1x1_3, self.bn_conv_1x1_3 = nn.Conv2d(5 * c_out, c_out, 1), nn.BatchNorm2d(c_out)

  def forward(self, x):
    branch = lambda conv, bn, y: F.relu(bn(conv(y)))
    outs = [branch(self.conv_1x1_1, self.bn_conv_1x1_1, x)]
    outs += [branch(getattr(self, f'conv_3x3_{i}'), getattr(self, f'bn_conv_3x3_{i}'), x) for i in (1, 2, 3)]
    pooled = branch(self.conv_1x1_2, self.bn_conv_1x1_2, F.adaptive_avg_pool2d(x, 1))
    outs.append(F.interpolate(pooled, size=x.shape[2:], mode='bilinear', align_corners=False))
    return branch(self.conv_1x1_3, self.bn_conv_1x1_3, torch.cat(outs, 1))


def comp6(c_in: int, dim: int) -> nn.Sequential:
  return nn.Sequential(nn.MaxPool2d(2, 2), nn.Conv2d(c_in, dim, 1),
                       nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
                       nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))


class Res(nn.Module):
  """y + conv(BN-ReLU(conv(y))), ReLU, then conv + BN + ReLU to c_out."""

  def __init__(self, c_in: int, c_out: int):
    super().__init__()
    self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1), nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                               nn.Conv2d(c_in, c_in, 3, padding=1))
    self.conv2 = conv_bn_relu(c_in, c_out, 3)

  def forward(self, y):
    return self.conv2(F.relu(y + self.conv1(y)))


class Prediction(nn.Module):

  def __init__(self, c_in: int):
    super().__init__()
    self.pred = nn.Sequential(nn.Conv2d(c_in, 1, 1), nn.Sigmoid())

  def forward(self, x):
    return self.pred(x)


class DecoderBlock(nn.Module):
  """Official Decoder_Block (widths 64 / 96 / 32); `width` scales them for tiny test models."""

  def __init__(self, c_low: int, width: float = 1.0):
    super().__init__()
    low, feat = scaled(64, width), scaled(32, width)
    self.cmprs = nn.Conv2d(c_low, low, 1)
    self.merge_conv = nn.Sequential(nn.Conv2d(low + feat, low + feat, 3, padding=1), nn.BatchNorm2d(low + feat),
                                    nn.ReLU(inplace=True), nn.Conv2d(low + feat, feat, 3, padding=1),
                                    nn.BatchNorm2d(feat), nn.ReLU(inplace=True))
    self.pred = Prediction(feat)

  def forward(self, low, gate, old):
    size = low.shape[2:]
    y = self.merge_conv(torch.cat([self.cmprs(low) * up(gate, size), up(old, size)], 1))
    return y, self.pred(y)


class NonLocal(nn.Module):
  """The GAN's token self-attention (official `Transformer`)."""

  def __init__(self, d: int):
    super().__init__()
    self.bn_relu = nn.Sequential(nn.BatchNorm1d(d), nn.ReLU(inplace=True))
    self.theta, self.phi, self.g = nn.Linear(d, d // 2), nn.Linear(d, d // 2), nn.Linear(d, d // 2)
    self.W = nn.Linear(d // 2, d)

  def forward(self, tokens):                     # (B, N, D)
    y = self.bn_relu(tokens.transpose(1, 2)).transpose(1, 2)
    attn = torch.softmax(self.theta(y) @ self.phi(y).transpose(1, 2), dim=-1)
    return tokens + self.W(attn @ self.g(y))


def edge_features(x: torch.Tensor, k: int) -> torch.Tensor:
  """x (B, D, N) -> (B, 2D, N, k) = cat[x_j - x_i, x_i] over the k nearest j (device-agnostic)."""
  b, d, n = x.shape
  inner = -2 * torch.matmul(x.transpose(2, 1), x)
  sq = torch.sum(x ** 2, dim=1, keepdim=True)
  idx = (-sq - inner - sq.transpose(2, 1)).topk(k=k, dim=-1)[1]       # (B, N, k)
  points = x.transpose(2, 1)                                          # (B, N, D)
  neighbours = torch.gather(points.unsqueeze(1).expand(b, n, n, d), 2, idx.unsqueeze(-1).expand(b, n, k, d))
  centre = points.unsqueeze(2).expand(b, n, k, d)
  return torch.cat([neighbours - centre, centre], dim=3).permute(0, 3, 1, 2).contiguous()


class GraphNet(nn.Module):
  """Official Graph_Attention_Network: non-local block + three dynamic EdgeConv layers (`fc` unused)."""

  def __init__(self, d: int, k: int = 10):
    super().__init__()
    self.k = k
    self.TF = NonLocal(d)
    for i in (1, 2, 3):
      setattr(self, f'conv{i}', nn.Sequential(nn.Conv2d(2 * d, d, 1, bias=False), nn.BatchNorm2d(d),
                                              nn.LeakyReLU(negative_slope=0.2)))
    self.fc = nn.Linear(d, 1)

  def forward(self, prototypes):                 # (B, N, D)
    x = self.TF(prototypes).transpose(1, 2)      # (B, D, N)
    for i in (1, 2, 3):
      x = getattr(self, f'conv{i}')(edge_features(x, self.k)).max(dim=-1)[0]
    return x.transpose(1, 2)


class Correlation(nn.Module):
  """Official Prototype_Correlation_Generation (its `out` block unused)."""

  def __init__(self, d: int, k: int = 10, detach: bool = True):
    super().__init__()
    self.detach = detach
    self.GAN = GraphNet(d, k)
    self.out = conv_bn_relu(2 * d, d)

  def forward(self, x_sq):
    return cosine_map(x_sq, self.GAN(ocr(x_sq, self.detach)))


class CrossNet(nn.Module):
  """Official Cross_Attention_Network on (B, C, N) maps; one BN for both inputs; values from A."""

  def __init__(self, c: int):
    super().__init__()
    self.bn_relu = nn.Sequential(nn.BatchNorm1d(c), nn.ReLU(inplace=True))
    self.theta, self.phi, self.g = nn.Linear(c, c // 2), nn.Linear(c, c // 2), nn.Linear(c, c // 2)
    self.W = nn.Linear(c // 2, c)

  def forward(self, a, b):
    a = self.bn_relu(a).transpose(1, 2)          # (B, N, C)
    b = self.bn_relu(b).transpose(1, 2)
    attn = torch.softmax(self.theta(a) @ self.phi(b).transpose(1, 2), dim=-1)
    return (a + self.W(attn @ self.g(a))).transpose(1, 2)


class Mutual(nn.Module):

  def __init__(self, c: int):
    super().__init__()
    self.can1, self.can2 = CrossNet(c), CrossNet(c)

  def forward(self, cm_rgb, cm_flow):
    b, c, h, w = cm_rgb.shape
    r, f = cm_rgb.reshape(b, c, -1), cm_flow.reshape(b, c, -1)
    return self.can1(r, f).reshape(b, c, h, w), self.can2(f, r).reshape(b, c, h, w)


class TwoStreamDAM(nn.Module):
  """Official video-model Domain_Alignment_Module."""

  def __init__(self, c: int, d: int, k: int = 10, detach: bool = True):
    super().__init__()
    self.rgb_OCR, self.flow_OCR = Correlation(d, k, detach), Correlation(d, k, detach)
    self.CCM = Mutual(d)
    self.rgb_fusion, self.flow_fusion = conv_bn_relu(c + d, c), conv_bn_relu(c + d, c)

  def forward(self, rgb, flow, rgb_sq, flow_sq):
    cm_rgb, cm_flow = self.CCM(self.rgb_OCR(rgb_sq), self.flow_OCR(flow_sq))
    return self.rgb_fusion(torch.cat([rgb, cm_rgb], 1)), self.flow_fusion(torch.cat([flow, cm_flow], 1))


class OneStreamDAM(nn.Module):
  """Official stage-1 Domain_Alignment_Module."""

  def __init__(self, c: int, d: int, k: int = 10, detach: bool = True):
    super().__init__()
    self.rgb_OCR = Correlation(d, k, detach)
    self.rgb_fusion = conv_bn_relu(c + d, c)

  def forward(self, x, x_sq):
    return self.rgb_fusion(torch.cat([x, self.rgb_OCR(x_sq)], 1))


class TAM(nn.Module):
  """Official Temporal_Aggregation_Module; values='keys' reproduces the code (V built, never read)."""

  def __init__(self, c: int, d: int, values: str = 'keys', detach: bool = True):
    super().__init__()
    self.values, self.detach = values, detach
    self.K, self.V = nn.Conv2d(c, d, 1), nn.Conv2d(c, d, 1)
    self.fusion = conv_bn_relu(c + d, c)

  def forward(self, x, query, refs):
    keys = torch.cat([ocr(self.K(r), self.detach) for r in refs], dim=1)            # (B, R*D, D)
    vals = torch.cat([ocr(self.V(r), self.detach) for r in refs], dim=1) if self.values == 'values' else keys
    q = ocr(query, self.detach)
    attn = torch.softmax(q @ keys.transpose(1, 2) / math.sqrt(keys.shape[2]), dim=2)
    cm = cosine_map(query, attn @ vals)
    return self.fusion(torch.cat([x, cm], 1))


class PaperIMAStream(nn.Module):
  """The paper's IMA for one stream: key/value 1x1 convs on Psi1 and the fusion conv (names are ours)."""

  def __init__(self, c: int, d: int, detach: bool = True):
    super().__init__()
    self.detach = detach
    self.key, self.value = nn.Conv2d(d, d, 1), nn.Conv2d(d, d, 1)
    self.fusion = conv_bn_relu(c + d, c)

  def embed(self, x_sq):
    psi = cosine_map(x_sq, ocr(x_sq, self.detach))
    return self.key(psi), self.value(psi)

  def fuse(self, x, t):
    return self.fusion(torch.cat([x, t], 1))


def paper_cross(k_a, v_a, k_m, v_m):
  """Eqs. 5-6 on (B, C', H, W) maps: Phi = K_A K_M^T over pixels; T_A = softmax(Phi) V_M, T_M = softmax(Phi^T) V_A."""
  b, c, h, w = k_a.shape
  fl = lambda t: t.reshape(b, c, -1)
  phi = fl(k_a) @ fl(k_m).transpose(1, 2)                         # (B, C'_A, C'_M)
  t_a = torch.softmax(phi, dim=-1) @ fl(v_m)
  t_m = torch.softmax(phi.transpose(1, 2), dim=-1) @ fl(v_a)
  return t_a.reshape(b, c, h, w), t_m.reshape(b, c, h, w)


# ------------------------------------------------------------------------------------------------
# Whole models.
# ------------------------------------------------------------------------------------------------

class _Decoder(nn.Module):
  """Adds the official decoder modules (rgb_merge_co_56, ...) to a model."""

  def _build_decoder(self, dim: int, widths, decoder_width: float = 1.0):
    feat = scaled(32, decoder_width)
    self.rgb_merge_co_56 = Res(2 * dim, dim)
    self.rgb_merge_co_45 = nn.Sequential(Res(2 * dim, dim), nn.Conv2d(dim, feat, 1))
    self.rgb_get_pred_4 = Prediction(feat)
    self.rgb_refine_3, self.rgb_refine_2, self.rgb_refine_1 = (DecoderBlock(widths[2], decoder_width),
                                                               DecoderBlock(widths[1], decoder_width),
                                                               DecoderBlock(widths[0], decoder_width))

  def _decode(self, t4, t5, t6, f1, f2, f3):
    feat56 = self.rgb_merge_co_56(torch.cat([t5, up(t6, t5.shape[2:])], 1))
    feat45 = self.rgb_merge_co_45(torch.cat([t4, up(feat56, t4.shape[2:])], 1))
    map4 = self.rgb_get_pred_4(feat45)
    feat34, map3 = self.rgb_refine_3(f3, map4, feat45)
    feat23, map2 = self.rgb_refine_2(f2, map4, feat34)
    _, map1 = self.rgb_refine_1(f1, map4, feat23)
    size = f1.shape[2:]
    return [up(map4, size), up(map3, size), up(map2, size), map1]


class VideoModel(_Decoder):
  """model_for_video.DATA with every official module (dead ones included); see the module docstring."""

  def __init__(self, ima: str = 'off', ifa_values: str = 'keys', dim: int = 128, width: float = 1.0,
               knn_k: int = 10, detach: bool = True, decoder_width: float = 1.0):
    super().__init__()
    self.ima = ima
    widths = [scaled(c, width) for c in (64, 128, 256, 512, 512)]
    c4, c5 = widths[3], widths[4]
    for s in ('rgb', 'flow'):
      setattr(self, f'{s}_encoder', Encoder(width))
      setattr(self, f'{s}_sq4', nn.Sequential(nn.Conv2d(c4, dim, 1)))
      setattr(self, f'{s}_sq5', nn.Sequential(nn.Conv2d(c5, dim, 1)))
      setattr(self, f'{s}_COMP4', nn.Sequential(nn.Conv2d(c4, dim, 1)))
      setattr(self, f'{s}_COMP5', nn.Sequential(nn.Conv2d(c5, dim, 1)))
      setattr(self, f'{s}_aspp', ASPP(dim, dim))
      setattr(self, f'{s}_COMP6', comp6(c5, dim))
    self.DAM4 = TwoStreamDAM(c4, dim, knn_k, detach)
    self.DAM5 = TwoStreamDAM(c5, dim, knn_k, detach)
    self.rgb_TAM, self.flow_TAM = TAM(c5, dim, ifa_values, detach), TAM(c5, dim, ifa_values, detach)
    self.rgb_fuse5 = nn.Sequential(nn.Conv2d(2 * c5, c5, 1))
    self.flow_fuse5 = nn.Sequential(nn.Conv2d(2 * c5, c5, 1))
    self.total_fuse4, self.total_fuse5, self.total_fuse6 = Res(2 * dim, dim), Res(2 * dim, dim), Res(2 * dim, dim)
    self._build_decoder(dim, widths, decoder_width)

  def reference_memory(self, refs: torch.Tensor, encoder: Encoder) -> list[torch.Tensor]:
    with torch.no_grad():
      return [encoder.conv5(refs[:, 3 * i:3 * i + 3]) for i in range(refs.shape[1] // 3)]

  def forward(self, image, flow, image_ref, flow_ref):
    mem = {'rgb': self.reference_memory(image_ref, self.rgb_encoder),
           'flow': self.reference_memory(flow_ref, self.flow_encoder)}
    f = {}
    for s, x in (('rgb', image), ('flow', flow)):
      enc = getattr(self, f'{s}_encoder')
      f[s] = [enc.stage(x, 1)]
      for i in (2, 3, 4):
        f[s].append(enc.stage(f[s][-1], i))
    if self.ima == 'official_dam':
      f['rgb'][3], f['flow'][3] = self.DAM4(f['rgb'][3], f['flow'][3], self.rgb_sq4(f['rgb'][3]),
                                            self.flow_sq4(f['flow'][3]))
    f5 = {s: getattr(self, f'{s}_encoder').stage(f[s][3], 5) for s in ('rgb', 'flow')}
    q5 = {s: getattr(self, f'{s}_sq5')(f5[s]) for s in ('rgb', 'flow')}
    ta = {s: getattr(self, f'{s}_TAM')(f5[s], q5[s], mem[s]) for s in ('rgb', 'flow')}
    if self.ima == 'official_dam':
      da = dict(zip(('rgb', 'flow'), self.DAM5(f5['rgb'], f5['flow'], q5['rgb'], q5['flow'])))
      f5 = {s: getattr(self, f'{s}_fuse5')(torch.cat([da[s], ta[s]], 1)) for s in ('rgb', 'flow')}
    else:
      f5 = ta
    cf = {s: (getattr(self, f'{s}_COMP4')(f[s][3]), getattr(self, f'{s}_COMP5')(f5[s]),
              getattr(self, f'{s}_aspp')(getattr(self, f'{s}_COMP6')(f5[s]))) for s in ('rgb', 'flow')}
    t4, t5, t6 = (fuse(torch.cat([a, b], 1)) for fuse, a, b in
                  zip((self.total_fuse4, self.total_fuse5, self.total_fuse6), cf['rgb'], cf['flow']))
    return self._decode(t4, t5, t6, *f['rgb'][:3])


class PretrainModel(_Decoder):
  """model_for_pretrain.DATA (stage 1)."""

  def __init__(self, dim: int = 128, width: float = 1.0, knn_k: int = 10, detach: bool = True,
               decoder_width: float = 1.0):
    super().__init__()
    widths = [scaled(c, width) for c in (64, 128, 256, 512, 512)]
    c4, c5 = widths[3], widths[4]
    self.rgb_encoder = Encoder(width)
    self.rgb_sq4 = nn.Sequential(nn.Conv2d(c4, dim, 1))
    self.rgb_sq5 = nn.Sequential(nn.Conv2d(c5, dim, 1))
    self.rgb_COMP4 = nn.Sequential(nn.Conv2d(c4, dim, 1))
    self.rgb_COMP5 = nn.Sequential(nn.Conv2d(c5, dim, 1))
    self.rgb_aspp = ASPP(dim, dim)
    self.rgb_COMP6 = comp6(c5, dim)
    self.DAM4 = OneStreamDAM(c4, dim, knn_k, detach)
    self.DAM5 = OneStreamDAM(c5, dim, knn_k, detach)
    self._build_decoder(dim, widths, decoder_width)

  def forward(self, image):
    enc = self.rgb_encoder
    f1 = enc.stage(image, 1)
    f2 = enc.stage(f1, 2)
    f3 = enc.stage(f2, 3)
    f4 = enc.stage(f3, 4)
    f4 = self.DAM4(f4, self.rgb_sq4(f4))
    f5 = enc.stage(f4, 5)
    f5 = self.DAM5(f5, self.rgb_sq5(f5))
    cf6 = self.rgb_aspp(self.rgb_COMP6(f5))
    return self._decode(self.rgb_COMP4(f4), self.rgb_COMP5(f5), cf6, f1, f2, f3)


# ------------------------------------------------------------------------------------------------
# Losses.
# ------------------------------------------------------------------------------------------------

def iou_loss(preds: list[torch.Tensor], gt: torch.Tensor) -> torch.Tensor:
  """1 - mean over (batch x maps) of sum(min(p, g)) / sum(max(p, g)) (official loss.py)."""
  p = torch.cat(preds, dim=1)
  n, c = p.shape[:2]
  lo = torch.minimum(p, gt).reshape(n, c, -1).sum(2)
  hi = torch.maximum(p, gt).reshape(n, c, -1).sum(2)
  return 1 - (lo / hi).mean()


def bce_loss(preds: list[torch.Tensor], gt: torch.Tensor) -> torch.Tensor:
  """Mean over the maps of nn.BCELoss (mean over pixels and batch, logs clamped at -100)."""
  return sum(F.binary_cross_entropy(p, gt) for p in preds) / len(preds)


# ------------------------------------------------------------------------------------------------
# Test helpers.
# ------------------------------------------------------------------------------------------------

def randomize_(model: nn.Module, seed: int, *, squeeze_scale: float = 1.0) -> nn.Module:
  """Random weights with every leaf distinct: kernels N(0, 1/fan_in), 1-D weights 1 + N(0, 0.1), biases and
  running means N(0, 0.1), running variances U(0.5, 1.5). `squeeze_scale` multiplies the sq4/sq5 convs
  (peakier prototype softmaxes: distinct prototypes keep the DAM graph network well conditioned)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if not t.dtype.is_floating_point:
        continue
      if name.endswith('running_var'):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif t.ndim == 1:
        t.copy_(0.1 * torch.randn(t.shape, generator=g) + (1.0 if name.endswith('weight') else 0.0))
      else:
        t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
      if '_sq' in name and not name.endswith(('running_mean', 'running_var')):
        t.mul_(squeeze_scale)
  return model


def numpy_state(model: nn.Module) -> dict:
  """The state dict as numpy copies (no memory shared with the torch tensors)."""
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
