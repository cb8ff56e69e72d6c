"""DPA (Dual Prototype Attention, CVPR 2024) as released (Hydragon516/DPA), with the paper behind switches.

  build_model(model_config) -> DPAVideo (kind='video') or DPASaliency (kind='saliency')

DPAVideo (model_for_video.py), per stream s in {rgb, flow} with separate weights:
  VGG-16 f1..f4 (1/1..1/8); [ima != 'off': f4 <- IMA4(f4, s_sq4(f4)), refining the conv5 input and COMP4]
  f5 = conv5(f4) (1/16); q5 = s_sq5(f5) (1x1 -> D, the IFA query);
  f5 <- s_ifa(f5, q5, references)                                   (use_ifa, the released forward)
     |  IMA5(f5, q5)                                                (ima only)
     |  s_fuse5(cat[IMA5(f5, q5), s_ifa(f5, q5, references)])       (ima and IFA in parallel, the paper)
  cf6 = s_aspp(s_comp6(f5)) (1/32), cf5 = s_comp5(f5), cf4 = s_comp4(f4) (1x1 -> D, no BN);
then t_i = fuse_i(rgb cf_i, flow cf_i) (Res 2D -> D) for i = 4, 5, 6 and the RGB decoder (decoder.py) ->
4 probability maps. References: `encode_references` runs each reference frame through all of VGG-16 (t folded
into b), stops the gradient at conv5 and makes the IFA key (and value) prototypes [b, t, D, D]; the key
convs stay differentiable (trained, as the official code where only the VGG passes are under no_grad).
The result does not depend on the target, so it can be cached per video; `segment` reads it.

DPASaliency (model_for_pretrain.py, stage 1 on DUTS, RGB only): VGG-16, f4 <- rgb_ima4(f4, rgb_sq4(f4))
before conv5, f5 <- rgb_ima5(f5, rgb_sq5(f5)), COMP/ASPP, and the same decoder on (cf4, cf5, cf6).

Output dict (both): 'prob' [b, h, w, 1] (the final map, official preds[3]) and 'side_probs' (4 maps
[b, h, w, 1], coarse to fine, the final one last; probabilities, the sigmoid applied before the resize).

Param tree (top level): rgb_encoder, flow_encoder (VGG16: conv_0 .. conv_28), {rgb,flow}_sq5,
{rgb,flow}_ifa, {rgb,flow}_comp{4,5,6}, {rgb,flow}_aspp, fuse{4,5,6}, decoder; with ima != 'off' also
{rgb,flow}_sq4, {rgb,flow}_ima{4,5}, {rgb,flow}_fuse5 and (official_dam) ccm{4,5}. DPASaliency: rgb_encoder,
rgb_sq{4,5}, rgb_ima{4,5}, rgb_comp{4,5,6}, rgb_aspp, decoder: every one of these names exists in the
video model (or its flow_ twin), so copying rgb_* to flow_* is the stage 1 -> 2 transfer (weights.py).
Dead official modules (sq4, DAM, TAM.V, fuse5 in the released forward; PCG.out, GAN.fc) are not created.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gsa_jax import layers
from gsa_jax.backbones import vgg
from gsa_jax.models.dpa import aspp as aspp_lib
from gsa_jax.models.dpa import common
from gsa_jax.models.dpa import config as config_lib
from gsa_jax.models.dpa import decoder as decoder_lib
from gsa_jax.models.dpa import ifa as ifa_lib
from gsa_jax.models.dpa import ima as ima_lib

Settings = config_lib.Settings
STRIDE = 32  # inputs must be multiples of the coarsest scale (COMP6 pools conv5 to 1/32).
STREAMS = ('rgb', 'flow')


def _check_image(name: str, x: jnp.ndarray, ndim: int) -> None:
  if x.ndim != ndim or x.shape[-1] != 3:
    layout = '[b, h, w, 3]' if ndim == 4 else '[b, t, h, w, 3]'
    raise ValueError(f'{name} must be {layout} (NHWC, 3 channels); got shape {tuple(x.shape)}.')
  h, w = x.shape[-3], x.shape[-2]
  if h % STRIDE or w % STRIDE or h == 0 or w == 0:
    raise ValueError(f'{name}: height and width must be positive multiples of {STRIDE}; got {h}x{w}. Resize or '
                     f'pad to e.g. {max(1, -(-h // STRIDE)) * STRIDE}x{max(1, -(-w // STRIDE)) * STRIDE}.')


def _check_train_batch(x: jnp.ndarray, train: bool) -> None:
  if train and x.shape[0] < 2:
    raise ValueError(f'train=True needs a batch of at least 2 (got {x.shape[0]}): the ASPP image-pooling '
                     'BatchNorm sees one value per channel per sample (the official loops skip batches of '
                     'size 1). Use a larger batch, or train=False.')


class _Parts:
  """Module construction shared by both models."""

  @staticmethod
  def common_kwargs(s: Settings) -> dict[str, Any]:
    return dict(kernel_init=common.conv_initializer(s.conv_init), running_var=s.bn_running_var,
                dtype=s.compute_dtype)

  @staticmethod
  def conv1x1(s: Settings, features: int) -> nn.Module:
    return layers.conv(features, 1, kernel_init=common.conv_initializer(s.conv_init), dtype=s.compute_dtype)


class DPAVideo(nn.Module):
  """The two-stream video model. See the module docstring."""
  settings: Settings

  def setup(self):
    s = self.settings
    kw = _Parts.common_kwargs(s)
    init, dt = kw['kernel_init'], kw['dtype']
    c4, c5 = vgg.stage_channels(s.vgg_width)[3:]
    for st in STREAMS:
      setattr(self, f'{st}_encoder', vgg.VGG16(s.vgg_width, init, dt))
      if s.has_ima:
        setattr(self, f'{st}_sq4', _Parts.conv1x1(s, s.dim))
      if s.use_ifa or s.has_ima:
        setattr(self, f'{st}_sq5', _Parts.conv1x1(s, s.dim))
      if s.use_ifa:
        setattr(self, f'{st}_ifa', ifa_lib.IFA(c5, s.dim, s.ifa_values, s.prototype_stop_gradient, s.cosine_eps,
                                               **kw))
      for level, c in ((4, c4), (5, c5)):
        if s.ima == 'official_dam':
          setattr(self, f'{st}_ima{level}', ima_lib.IMAStream(c, s.knn_k, s.prototype_stop_gradient,
                                                              s.cosine_eps, **kw))
        elif s.ima == 'paper':
          setattr(self, f'{st}_ima{level}', ima_lib.PaperIMAStream(c, s.prototype_stop_gradient, s.cosine_eps,
                                                                   prototypes=s.dim, **kw))
      if s.has_ima and s.use_ifa:
        setattr(self, f'{st}_fuse5', _Parts.conv1x1(s, c5))
      setattr(self, f'{st}_comp4', _Parts.conv1x1(s, s.dim))
      setattr(self, f'{st}_comp5', _Parts.conv1x1(s, s.dim))
      setattr(self, f'{st}_comp6', aspp_lib.Comp6(s.dim, **kw))
      setattr(self, f'{st}_aspp', aspp_lib.ASPP(s.dim, **kw))
    if s.ima == 'official_dam':
      self.ccm4 = ima_lib.MutualRefinement(s.bn_running_var)
      self.ccm5 = ima_lib.MutualRefinement(s.bn_running_var)
    self.fuse4 = layers.Res(s.dim, **kw)
    self.fuse5 = layers.Res(s.dim, **kw)
    self.fuse6 = layers.Res(s.dim, **kw)
    self.decoder = decoder_lib.Decoder(s.dim, width=s.decoder_width, **kw)

  def _get(self, name: str) -> nn.Module:
    return getattr(self, name)

  # -- references --------------------------------------------------------------------------------

  def encode_references(self, ref_rgb: jnp.ndarray, ref_flow: jnp.ndarray) -> dict[str, Any]:
    """ref_rgb, ref_flow [b, t, h, w, 3] -> {'rgb': {'keys': [b, t, D, D] (, 'values')}, 'flow': ...}.

    The VGG-16 passes are under stop_gradient (no BatchNorm in them: train and eval give the same);
    the IFA key/value convs are not. {} when use_ifa is False (the references are not used).
    """
    _check_image('ref_rgb', ref_rgb, 5)
    _check_image('ref_flow', ref_flow, 5)
    if ref_rgb.shape != ref_flow.shape:
      raise ValueError(f'ref_rgb {tuple(ref_rgb.shape)} and ref_flow {tuple(ref_flow.shape)} must have the same '
                       'shape [b, t, h, w, 3] (one flow image per reference frame).')
    if ref_rgb.shape[1] < 1:
      raise ValueError('The references need t >= 1 frames.')
    if not self.settings.use_ifa:
      return {}
    b, t = ref_rgb.shape[:2]
    memory = {}
    for st, refs in zip(STREAMS, (ref_rgb, ref_flow)):
      x = refs.reshape(b * t, *refs.shape[2:]).astype(self.settings.compute_dtype)     # [(b t) h w 3]
      f5 = jax.lax.stop_gradient(self._get(f'{st}_encoder')(x, 1, 5)[-1])             # [(b t) h/16 w/16 C]
      memory[st] = self._get(f'{st}_ifa').encode(f5.reshape(b, t, *f5.shape[1:]))
    return memory

  # -- target --------------------------------------------------------------------------------------

  def _check_memory(self, ref_features: Any, b: int) -> None:
    s = self.settings
    if not s.use_ifa:
      return
    names = ('keys', 'values') if s.ifa_values == 'values' else ('keys',)
    ok = isinstance(ref_features, dict) and set(ref_features) == set(STREAMS)
    ok = ok and all(isinstance(ref_features[st], dict) and set(ref_features[st]) == set(names) for st in STREAMS)
    if not ok:
      raise ValueError(f'ref_features must be the dict returned by encode_references: rgb/flow -> {names}.')
    for st in STREAMS:
      for name in names:
        f = ref_features[st][name]
        if f.ndim != 4 or f.shape[0] != b or f.shape[2:] != (s.dim, s.dim):
          raise ValueError(f'ref_features[{st!r}][{name!r}] has shape {tuple(f.shape)}; expected [b={b}, t, '
                           f'{s.dim}, {s.dim}]. Encode the references with the same batch as the target.')

  def _ima(self, level: int, x_rgb, x_flow, sq_rgb, sq_flow, *, train: bool):
    rgb, flow = self._get(f'rgb_ima{level}'), self._get(f'flow_ima{level}')
    if self.settings.ima == 'official_dam':
      cm_rgb = rgb.correlate(sq_rgb, train=train)
      cm_flow = flow.correlate(sq_flow, train=train)
      cm_rgb, cm_flow = self._get(f'ccm{level}')(cm_rgb, cm_flow, train=train)
    else:
      (k_rgb, v_rgb), (k_flow, v_flow) = rgb.embed(sq_rgb), flow.embed(sq_flow)
      cm_rgb, cm_flow = ima_lib.paper_cross(k_rgb, v_rgb, k_flow, v_flow)
    return rgb.fuse(x_rgb, cm_rgb, train=train), flow.fuse(x_flow, cm_flow, train=train)

  def segment(self, rgb: jnp.ndarray, flow: jnp.ndarray, ref_features: dict[str, Any], *,
              train: bool) -> dict[str, Any]:
    """rgb, flow [b, h, w, 3] + encode_references(...) -> {'prob', 'side_probs'}."""
    _check_image('rgb', rgb, 4)
    _check_image('flow', flow, 4)
    if rgb.shape != flow.shape:
      raise ValueError(f'rgb {tuple(rgb.shape)} and flow {tuple(flow.shape)} must have the same shape.')
    _check_train_batch(rgb, train)
    self._check_memory(ref_features, rgb.shape[0])
    s = self.settings
    dt = s.compute_dtype
    feats = {st: list(self._get(f'{st}_encoder')(x.astype(dt), 1, 4)) for st, x in zip(STREAMS, (rgb, flow))}
    if s.has_ima:                                                   # IMA between conv4 and conv5
      feats['rgb'][3], feats['flow'][3] = self._ima(
          4, feats['rgb'][3], feats['flow'][3], self.rgb_sq4(feats['rgb'][3]), self.flow_sq4(feats['flow'][3]),
          train=train)
    f5 = {st: self._get(f'{st}_encoder').stage(5, feats[st][3]) for st in STREAMS}    # [b h/16 w/16 C]
    if s.use_ifa or s.has_ima:
      q5 = {st: self._get(f'{st}_sq5')(f5[st]) for st in STREAMS}                      # [b h/16 w/16 D]
    if s.use_ifa:
      ta5 = {st: self._get(f'{st}_ifa')(f5[st], q5[st], ref_features[st], train=train) for st in STREAMS}
    if s.has_ima:
      da5 = dict(zip(STREAMS, self._ima(5, f5['rgb'], f5['flow'], q5['rgb'], q5['flow'], train=train)))
    if s.has_ima and s.use_ifa:
      f5 = {st: self._get(f'{st}_fuse5')(jnp.concatenate([da5[st], ta5[st]], axis=-1)) for st in STREAMS}
    elif s.use_ifa:
      f5 = ta5
    elif s.has_ima:
      f5 = da5
    cf = {}
    for st in STREAMS:
      cf6 = self._get(f'{st}_aspp')(self._get(f'{st}_comp6')(f5[st], train=train), train=train)   # 1/32
      cf[st] = (self._get(f'{st}_comp4')(feats[st][3]), self._get(f'{st}_comp5')(f5[st]), cf6)
    t4, t5, t6 = (fuse(a, b, train=train) for fuse, a, b in
                  zip((self.fuse4, self.fuse5, self.fuse6), cf['rgb'], cf['flow']))
    r1, r2, r3 = feats['rgb'][:3]
    side = self.decoder(t4, t5, t6, r1, r2, r3, train=train)
    return dict(prob=side[-1], side_probs=side)

  def __call__(self, rgb: jnp.ndarray, flow: jnp.ndarray, ref_rgb: jnp.ndarray, ref_flow: jnp.ndarray, *,
               train: bool) -> dict[str, Any]:
    """segment(rgb, flow, encode_references(ref_rgb, ref_flow)); the refs share the target's batch b."""
    _check_image('rgb', rgb, 4)
    _check_image('ref_rgb', ref_rgb, 5)
    if ref_rgb.shape[0] != rgb.shape[0]:
      raise ValueError(f'ref_rgb {tuple(ref_rgb.shape)} must be [b, t, h, w, 3] with the batch b of rgb '
                       f'{tuple(rgb.shape)}.')
    return self.segment(rgb, flow, self.encode_references(ref_rgb, ref_flow), train=train)


class DPASaliency(nn.Module):
  """The stage-1 RGB-only model (official model_for_pretrain.py). See the module docstring."""
  settings: Settings

  def setup(self):
    s = self.settings
    kw = _Parts.common_kwargs(s)
    c4, c5 = vgg.stage_channels(s.vgg_width)[3:]
    self.rgb_encoder = vgg.VGG16(s.vgg_width, kw['kernel_init'], kw['dtype'])
    self.rgb_sq4 = _Parts.conv1x1(s, s.dim)
    self.rgb_sq5 = _Parts.conv1x1(s, s.dim)
    self.rgb_ima4 = ima_lib.IMAStream(c4, s.knn_k, s.prototype_stop_gradient, s.cosine_eps, **kw)
    self.rgb_ima5 = ima_lib.IMAStream(c5, s.knn_k, s.prototype_stop_gradient, s.cosine_eps, **kw)
    self.rgb_comp4 = _Parts.conv1x1(s, s.dim)
    self.rgb_comp5 = _Parts.conv1x1(s, s.dim)
    self.rgb_comp6 = aspp_lib.Comp6(s.dim, **kw)
    self.rgb_aspp = aspp_lib.ASPP(s.dim, **kw)
    self.decoder = decoder_lib.Decoder(s.dim, width=s.decoder_width, **kw)

  def __call__(self, rgb: jnp.ndarray, *, train: bool) -> dict[str, Any]:
    """rgb [b, h, w, 3] -> {'prob', 'side_probs'}."""
    _check_image('rgb', rgb, 4)
    _check_train_batch(rgb, train)
    f1, f2, f3, f4 = self.rgb_encoder(rgb.astype(self.settings.compute_dtype), 1, 4)
    f4 = self.rgb_ima4(f4, self.rgb_sq4(f4), train=train)          # refines conv5's input and COMP4's
    f5 = self.rgb_encoder.stage(5, f4)
    f5 = self.rgb_ima5(f5, self.rgb_sq5(f5), train=train)
    cf6 = self.rgb_aspp(self.rgb_comp6(f5, train=train), train=train)
    side = self.decoder(self.rgb_comp4(f4), self.rgb_comp5(f5), cf6, f1, f2, f3, train=train)
    return dict(prob=side[-1], side_probs=side)


def build_model(model_config: Any = None) -> DPAVideo | DPASaliency:
  """DPAVideo for kind='video', DPASaliency for kind='saliency'. Raises ValueError on bad values."""
  settings = model_config if isinstance(model_config, Settings) else Settings.from_config(model_config)
  return DPAVideo(settings) if settings.kind == 'video' else DPASaliency(settings)


def example_inputs(settings: Settings, *, batch: int = 1, size: int = 64, num_refs: int = 4) -> dict[str, Any]:
  """Zero inputs of the right shapes (for init and eval_shape)."""
  img = jnp.zeros((batch, size, size, 3), jnp.float32)
  if settings.kind == 'saliency':
    return dict(rgb=img)
  refs = jnp.zeros((batch, num_refs, size, size, 3), jnp.float32)
  return dict(rgb=img, flow=img, ref_rgb=refs, ref_flow=refs)


def abstract_variables(settings: Settings) -> dict[str, Any]:
  """`jax.eval_shape` of init (eval mode, 64x64, one reference): {'params', 'batch_stats'}."""
  model = build_model(settings)
  inputs = example_inputs(settings, size=64, num_refs=1)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs, train=False))
  return {'params': abstract['params'], 'batch_stats': abstract.get('batch_stats', {})}


# Summary-table parts: name -> predicate on the top-level module name.
PARTS = (
    ('encoders (VGG-16)', lambda n: n.endswith('_encoder')),
    ('squeeze sq4/sq5', lambda n: n.endswith(('_sq4', '_sq5'))),
    ('IFA', lambda n: n.endswith('_ifa')),
    ('IMA', lambda n: '_ima' in n or n.startswith('ccm')),
    ('IMA + IFA fusion (fuse5)', lambda n: n.endswith('_fuse5')),
    ('COMP4/5/6 + ASPP', lambda n: n.endswith(('_comp4', '_comp5', '_comp6', '_aspp'))),
    ('RGB + flow fusion (fuse4/5/6)', lambda n: n in ('fuse4', 'fuse5', 'fuse6')),
    ('decoder', lambda n: n == 'decoder'),
)


def part_counts(params: dict[str, Any]) -> dict[str, int]:
  """Parameter counts per part (summary table rows, present parts only) and 'total'."""
  sizes = {name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sub)) for name, sub in params.items()}
  counts, seen = {}, set()
  for part, belongs in PARTS:
    names = [n for n in sizes if belongs(n) and n not in seen]
    if names:
      counts[part] = sum(sizes[n] for n in names)
      seen.update(names)
  other = [n for n in sizes if n not in seen]
  if other:
    counts['other'] = sum(sizes[n] for n in other)
  counts['total'] = sum(sizes.values())
  return counts
