"""GSA-Net (two-stream video model) and the stage-1 saliency model, with config and input validation.

  build_model(model_config) -> GSANet (kind='video') or SaliencyNet (kind='saliency').

GSANet (reference §2, paper §3), per stream s in {rgb, flow} with separate weights:
  encoder_s(target) -> 4 maps; s_mffm4..1 on strides 4, 8, 16, 32 -> x1..x4 (dim channels each);
  s_slots(x3, refs_s) -> slots, aggregated prototypes, cosine maps (SlotBranch);
  x3 <- s_fusion(cat[x3, cos(sqz, agg) (M), cos(sqz, slots) (N_S)])     (1x1 conv, the slot decoder);
then fuse{i}(x_i_rgb, x_i_flow) for i = 1..4 (Res), the decoder, 4 cumulative logit maps resized to the
input with bilinear align_corners=True, and 6 slot maps (probabilities) resized the same way.
References: encode_references runs every reference frame of both streams through encoder_s + s_mffm1
(stage 4, 1/32) under stop_gradient, with the same `train` flag as the target (drop-path, BatchNorm
batch statistics and their updates, as official). In training, `reference_batchnorm` says how:
  'per_reference' (default, official get_ref_feature): one call of b frames per reference frame, an
      `nn.scan` over t (parameters broadcast, batch_stats carried, one dropout/drop-path rng per
      reference): each reference is its own BatchNorm batch and the running statistics of the
      stream's BatchNorms (s_mffm1, and a ResNet encoder's) are updated t times, in reference order,
      before the target's update.
  'joint' (a deviation, faster): all b*t reference frames in one call: one set of batch statistics
      for all of them and one running-statistics update.
In evaluation the two are identical and the batched call is always used.
`batch_norm_running_var`: 'unbiased' (PyTorch's running-variance update, default) | 'biased' (Flax's)
for every BatchNorm of the model (MFFMs, Res, decoder Fusion, ResNet encoders); same variable tree.

Param tree (TEAM.md): rgb_encoder, flow_encoder, rgb_mffm{1..4}, flow_mffm{1..4}, rgb_slots, flow_slots,
rgb_fusion, flow_fusion, fuse{1..4}, decoder. mffm1 is the stage-4 (1/32) module, mffm4 the stage-1 one,
as the official MFFM1..4. SaliencyNet: rgb_encoder, rgb_mffm{1..4}, decoder, so stage-1 weights map onto
GSANet by name. Table 2 row (a) (use_guided_slots = use_slot_attention = False) has no slot branch at
all: no *_slots, no *_fusion, and MFFM outputs go straight into fuse{i}; its 'slot_maps' is empty.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax import backbones
from gsa_jax import layers
from gsa_jax import ops
from gsa_jax.models.gsanet import config as config_lib
from gsa_jax.models.gsanet import decoder as decoder_lib
from gsa_jax.models.gsanet import mffm as mffm_lib
from gsa_jax.models.gsanet import slots as slots_lib

KINDS = ('video', 'saliency')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
STRIDE = 32  # the input must be a multiple of the coarsest backbone stride.
REFERENCE_BATCHNORMS = ('per_reference', 'joint')
RUNNING_VARIANCES = layers.RUNNING_VARIANCES  # ('unbiased', 'biased')


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """A hashable copy of the model config (the fields of gsa_jax/models/gsanet/config.py:model_config)."""
  kind: str = 'video'
  backbone: str = 'mit_b2'
  drop_path_rate: float = 0.1
  dim: int = 128
  dtype: str = 'float32'
  # Training only: 'per_reference' (official: each reference frame its own BatchNorm batch) | 'joint'.
  reference_batchnorm: str = 'per_reference'
  # Running variance folds in the 'unbiased' (PyTorch, official) | 'biased' (flax.linen) batch variance.
  batch_norm_running_var: str = 'unbiased'
  slots: slots_lib.SlotConfig = slots_lib.SlotConfig()

  @property
  def compute_dtype(self) -> jnp.dtype:
    return DTYPES[self.dtype]

  @property
  def has_slot_branch(self) -> bool:
    """False only for Table 2 row (a): neither guided slots nor slot attention."""
    return self.slots.use_guided_slots or self.slots.use_slot_attention

  @classmethod
  def from_config(cls, config: Any) -> 'ModelSettings':
    """From an ml_collections ConfigDict (or dict) of model fields; validates every value.

    Fields missing from `config` take their values from the config section, config.model_config().
    """
    given = dict(config.to_dict() if hasattr(config, 'to_dict') else config)
    slot_names = [f.name for f in dataclasses.fields(slots_lib.SlotConfig)]
    names = [f.name for f in dataclasses.fields(cls) if f.name != 'slots']
    unknown = sorted(set(given) - set(names) - set(slot_names))
    if unknown:
      raise ValueError(f'Unknown model config fields {unknown}; valid fields: {sorted(names + slot_names)}.')
    fields = dict(config_lib.network_fields(config_lib.model_config()), **given)
    kwargs = {name: fields[name] for name in names}
    kwargs['drop_path_rate'], kwargs['dim'] = float(kwargs['drop_path_rate']), int(kwargs['dim'])
    settings = cls(slots=slots_lib.SlotConfig(**{name: fields[name] for name in slot_names}), **kwargs)
    validate_settings(settings)
    return settings


def _fail(field: str, value: Any, fix: str) -> None:
  raise ValueError(f'Bad model config: {field}={value!r}; {fix} (--config.model.{field}=...).')


def validate_settings(s: ModelSettings) -> None:
  """Raises ValueError naming the bad value and the fix."""
  c = s.slots
  if s.kind not in KINDS:
    _fail('kind', s.kind, f'choose one of {KINDS}')
  backbones.backbone_channels(s.backbone)  # raises for an unknown backbone
  if s.dtype not in DTYPES:
    _fail('dtype', s.dtype, f'choose one of {tuple(DTYPES)}')
  if s.reference_batchnorm not in REFERENCE_BATCHNORMS:
    _fail('reference_batchnorm', s.reference_batchnorm, f'choose one of {REFERENCE_BATCHNORMS}')
  if s.batch_norm_running_var not in RUNNING_VARIANCES:
    _fail('batch_norm_running_var', s.batch_norm_running_var, f'choose one of {RUNNING_VARIANCES}')
  if not 0.0 <= s.drop_path_rate < 1.0:
    _fail('drop_path_rate', s.drop_path_rate, 'use a rate in [0, 1)')
  if s.dim < 1:
    _fail('dim', s.dim, 'use a positive width')
  if c.num_slots < 2:
    _fail('num_slots', c.num_slots, 'use >= 2 (slot 0 = foreground, slot 1 = background)')
  if c.num_clusters < 1:
    _fail('num_clusters', c.num_clusters, 'use >= 1')
  if c.kmeans_iters < 1:
    _fail('kmeans_iters', c.kmeans_iters, 'use >= 1')
  if c.kmeans_init not in ops.KMEANS_INITS:
    _fail('kmeans_init', c.kmeans_init, f'choose one of {ops.KMEANS_INITS}')
  if c.kmeans_assign not in ops.KMEANS_ASSIGNS:
    _fail('kmeans_assign', c.kmeans_assign, f'choose one of {ops.KMEANS_ASSIGNS}')
  if not c.kmeans_temperature > 0:
    _fail('kmeans_temperature', c.kmeans_temperature, 'use a temperature > 0')
  if c.prototype_reduce not in ops.REDUCTIONS:
    _fail('prototype_reduce', c.prototype_reduce, f'choose one of {ops.REDUCTIONS}')
  if c.slot_pool not in ops.REDUCTIONS:
    _fail('slot_pool', c.slot_pool, f'choose one of {ops.REDUCTIONS}')
  if c.slot_iters < 0:
    _fail('slot_iters', c.slot_iters, 'use >= 0')
  if c.knn_pool not in slots_lib.KNN_POOLS:
    _fail('knn_pool', c.knn_pool, f'choose one of {slots_lib.KNN_POOLS}')
  if c.knn_k < 1:
    _fail('knn_k', c.knn_k, 'use >= 1')
  if c.use_knn and c.knn_pool == 'aggregated' and c.knn_k > c.num_clusters:
    _fail('knn_k', c.knn_k, f'it exceeds the KNN pool size num_clusters={c.num_clusters} '
          "(knn_pool='aggregated'); lower knn_k or raise num_clusters")
  if not 0.0 <= c.fat_dropout < 1.0:
    _fail('fat_dropout', c.fat_dropout, 'use a rate in [0, 1)')
  if c.cosine_eps < 0:
    _fail('cosine_eps', c.cosine_eps, 'use eps >= 0 (0 = the official plain division)')


def _check_image(name: str, x: jnp.ndarray, ndim: int) -> None:
  if x.ndim != ndim or x.shape[-1] != 3:
    layout = '[b, h, w, 3]' if ndim == 4 else '[b, t, h, w, 3]'
    raise ValueError(f'{name} must be {layout} (NHWC, 3 channels); got shape {tuple(x.shape)}.')
  h, w = x.shape[-3], x.shape[-2]
  if h % STRIDE or w % STRIDE:
    raise ValueError(f'{name}: height and width must be multiples of {STRIDE}; got {h}x{w}. Resize or '
                     f'pad to e.g. {-(-h // STRIDE) * STRIDE}x{-(-w // STRIDE) * STRIDE}.')


def _resize_out(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  return ops.resize_bilinear_align_corners(x.astype(jnp.float32), size)


def _encoder(s: ModelSettings) -> nn.Module:
  """The stream's backbone; one with BatchNorms (ResNet) gets the model's running-variance rule."""
  encoder = backbones.build_backbone(s.backbone, drop_path_rate=s.drop_path_rate, dtype=s.compute_dtype)
  if 'running_var' in {f.name for f in dataclasses.fields(encoder)}:
    encoder = encoder.clone(running_var=s.batch_norm_running_var)
  return encoder


def _encode_one_reference(model: 'GSANet', carry: None, frames: dict[str, jnp.ndarray]
                          ) -> tuple[None, dict[str, jnp.ndarray]]:
  """Scan body of the per-reference pass: frames rgb, flow [b, h, w, 3] -> [b, h/32, w/32, dim] each."""
  out = {}
  for stream in ('rgb', 'flow'):
    encoder, mffm1 = getattr(model, f'{stream}_encoder'), getattr(model, f'{stream}_mffm1')
    x = frames[stream].astype(model.settings.compute_dtype)
    out[stream] = mffm1(encoder(x, train=True)[3], train=True)
  return carry, out


# Over the reference axis t (axis 1): parameters shared, BatchNorm statistics carried from one reference
# to the next (updated in order), a fresh dropout / drop-path rng per reference.
_scan_references = nn.scan(_encode_one_reference, variable_broadcast='params', variable_carry='batch_stats',
                           split_rngs={'params': False, 'dropout': True}, in_axes=1, out_axes=1)


class GSANet(nn.Module):
  """The two-stream GSA-Net. See the module docstring; TEAM.md has the API."""
  settings: ModelSettings

  def setup(self):
    s = self.settings
    dt = s.compute_dtype
    rv = s.batch_norm_running_var
    self.rgb_encoder = _encoder(s)
    self.flow_encoder = _encoder(s)
    self.rgb_mffm1 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.rgb_mffm2 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.rgb_mffm3 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.rgb_mffm4 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.flow_mffm1 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.flow_mffm2 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.flow_mffm3 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.flow_mffm4 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    if s.has_slot_branch:
      self.rgb_slots = slots_lib.SlotBranch(s.slots, dtype=dt)
      self.flow_slots = slots_lib.SlotBranch(s.slots, dtype=dt)
      self.rgb_fusion = mffm_lib.conv(s.dim, 1, dtype=dt)
      self.flow_fusion = mffm_lib.conv(s.dim, 1, dtype=dt)
    self.fuse1 = decoder_lib.Res(s.dim, running_var=rv, dtype=dt)
    self.fuse2 = decoder_lib.Res(s.dim, running_var=rv, dtype=dt)
    self.fuse3 = decoder_lib.Res(s.dim, running_var=rv, dtype=dt)
    self.fuse4 = decoder_lib.Res(s.dim, running_var=rv, dtype=dt)
    self.decoder = decoder_lib.Decoder(s.dim, dtype=dt, running_var=rv)

  # -- references --------------------------------------------------------------------------------

  def encode_references(self, ref_rgb: jnp.ndarray, ref_flow: jnp.ndarray, *,
                        train: bool = False) -> dict[str, jnp.ndarray]:
    """ref_rgb, ref_flow [b, t, h, w, 3] -> dict(rgb=[b, t, h/32, w/32, dim], flow=...), no gradient.

    train=True with reference_batchnorm='per_reference': one encoder + mffm1 call per reference frame
    (an nn.scan over t); otherwise one batched call per stream with t folded into b.
    """
    _check_image('ref_rgb', ref_rgb, 5)
    _check_image('ref_flow', ref_flow, 5)
    if ref_rgb.shape != ref_flow.shape:
      raise ValueError(f'ref_rgb {tuple(ref_rgb.shape)} and ref_flow {tuple(ref_flow.shape)} must have '
                       'the same shape [b, t, h, w, 3] (one flow image per reference frame).')
    b, t = ref_rgb.shape[:2]
    if train and self.settings.reference_batchnorm == 'per_reference' and not self.is_initializing():
      _, out = _scan_references(self, None, dict(rgb=ref_rgb, flow=ref_flow))   # each [b t h/32 w/32 dim]
      return jax.tree.map(jax.lax.stop_gradient, out)

    def encode(encoder, mffm1, x):
      x = x.reshape(b * t, *x.shape[2:]).astype(self.settings.compute_dtype)   # [(b t) h w 3]
      stage4 = encoder(x, train=train)[3]                                        # [(b t) h/32 w/32 C4]
      y = mffm1(stage4, train=train)                                             # [(b t) h/32 w/32 dim]
      return jax.lax.stop_gradient(y.reshape(b, t, *y.shape[1:]))

    return dict(rgb=encode(self.rgb_encoder, self.rgb_mffm1, ref_rgb),
                flow=encode(self.flow_encoder, self.flow_mffm1, ref_flow))

  # -- target --------------------------------------------------------------------------------------

  def _stream(self, x: jnp.ndarray, encoder, mffms, *, train: bool) -> list[jnp.ndarray]:
    f1, f2, f3, f4 = encoder(x.astype(self.settings.compute_dtype), train=train)
    m1, m2, m3, m4 = mffms  # m1 acts on stage 4 (official MFFM1), m4 on stage 1.
    return [m4(f1, train=train), m3(f2, train=train), m2(f3, train=train), m1(f4, train=train)]

  def _check_target(self, rgb, flow, ref_features) -> None:
    _check_image('rgb', rgb, 4)
    _check_image('flow', flow, 4)
    if rgb.shape != flow.shape:
      raise ValueError(f'rgb {tuple(rgb.shape)} and flow {tuple(flow.shape)} must have the same shape.')
    b, h, w, _ = rgb.shape
    s = self.settings
    if (h // 16) * (w // 16) < s.slots.num_clusters and s.has_slot_branch:
      raise ValueError(f'A {h}x{w} input has {(h // 16) * (w // 16)} pixels at 1/16 scale, fewer than '
                       f'num_clusters={s.slots.num_clusters}; use a larger input or lower '
                       '--config.model.num_clusters.')
    if not isinstance(ref_features, dict) or set(ref_features) != {'rgb', 'flow'}:
      raise ValueError('ref_features must be the dict(rgb=..., flow=...) returned by encode_references.')
    expected = (b, None, h // STRIDE, w // STRIDE, s.dim)
    for name, f in ref_features.items():
      if f.ndim != 5 or f.shape[0] != b or f.shape[2:] != expected[2:]:
        raise ValueError(f'ref_features[{name!r}] has shape {tuple(f.shape)}; expected [b={b}, t, '
                         f'{h // STRIDE}, {w // STRIDE}, {s.dim}] for a {b}x{h}x{w} target. Encode the '
                         'references at the target size and batch.')
    if ref_features['rgb'].shape != ref_features['flow'].shape:
      raise ValueError(f'ref_features rgb {tuple(ref_features["rgb"].shape)} and flow '
                       f'{tuple(ref_features["flow"].shape)} differ.')

  def segment(self, rgb: jnp.ndarray, flow: jnp.ndarray, ref_features: dict[str, jnp.ndarray], *,
              train: bool, kmeans_key: jax.Array) -> dict[str, Any]:
    """rgb, flow [b, h, w, 3] + encoded references -> the output dict (TEAM.md)."""
    self._check_target(rgb, flow, ref_features)
    s = self.settings
    size = rgb.shape[1:3]
    xr = self._stream(rgb, self.rgb_encoder,
                      (self.rgb_mffm1, self.rgb_mffm2, self.rgb_mffm3, self.rgb_mffm4), train=train)
    xf = self._stream(flow, self.flow_encoder,
                      (self.flow_mffm1, self.flow_mffm2, self.flow_mffm3, self.flow_mffm4), train=train)
    slot_maps = ()
    if s.has_slot_branch:
      rgb_out = self.rgb_slots(xr[2], ref_features['rgb'], kmeans_key=jax.random.fold_in(kmeans_key, 0),
                               train=train)
      flow_out = self.flow_slots(xf[2], ref_features['flow'], kmeans_key=jax.random.fold_in(kmeans_key, 1),
                                 train=train)
      xr[2] = self.rgb_fusion(jnp.concatenate(
          [xr[2], rgb_out['cos_agg'].astype(xr[2].dtype), rgb_out['cos_slots'].astype(xr[2].dtype)], axis=-1))
      xf[2] = self.flow_fusion(jnp.concatenate(
          [xf[2], flow_out['cos_agg'].astype(xf[2].dtype), flow_out['cos_slots'].astype(xf[2].dtype)], axis=-1))

      def maps(out):
        cos = out['cos_slots'].astype(jnp.float32)
        coarse = out['slot_mask'][..., 0:1]
        fine_fg = (cos[..., 0:1] + 1) / 2
        fine_bg = 1 - (cos[..., 1:2] + 1) / 2
        return [_resize_out(m, size) for m in (coarse, fine_fg, fine_bg)]

      (c_r, fg_r, bg_r), (c_f, fg_f, bg_f) = maps(rgb_out), maps(flow_out)
      slot_maps = (c_r, c_f, fg_r, bg_r, fg_f, bg_f)
    fused = [fuse(a, b, train=train) for fuse, a, b in
             zip((self.fuse1, self.fuse2, self.fuse3, self.fuse4), xr, xf)]
    side = self.decoder(*fused, train=train)
    side_logits = tuple(_resize_out(m, size) for m in side)
    return dict(logits=side_logits[0], side_logits=side_logits, slot_maps=slot_maps)

  def __call__(self, rgb: jnp.ndarray, flow: jnp.ndarray, ref_rgb: jnp.ndarray, ref_flow: jnp.ndarray, *,
               train: bool, kmeans_key: jax.Array) -> dict[str, Any]:
    """segment(encode_references(ref_rgb, ref_flow)); refs must share the target's b, h and w."""
    _check_image('rgb', rgb, 4)
    _check_image('ref_rgb', ref_rgb, 5)
    if ref_rgb.shape[0] != rgb.shape[0] or ref_rgb.shape[2:] != rgb.shape[1:]:
      raise ValueError(f'ref_rgb {tuple(ref_rgb.shape)} must be [b, t, h, w, 3] with the b, h, w of rgb '
                       f'{tuple(rgb.shape)}.')
    refs = self.encode_references(ref_rgb, ref_flow, train=train)
    return self.segment(rgb, flow, refs, train=train, kmeans_key=kmeans_key)


class SaliencyNet(nn.Module):
  """Stage-1 RGB-only model (official model_for_pretrain): encoder -> MFFMs -> decoder -> 4 side maps."""
  settings: ModelSettings

  def setup(self):
    s = self.settings
    dt = s.compute_dtype
    rv = s.batch_norm_running_var
    self.rgb_encoder = _encoder(s)
    self.rgb_mffm1 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.rgb_mffm2 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.rgb_mffm3 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.rgb_mffm4 = mffm_lib.MFFM(s.dim, running_var=rv, dtype=dt)
    self.decoder = decoder_lib.Decoder(s.dim, dtype=dt, running_var=rv)

  def __call__(self, rgb: jnp.ndarray, *, train: bool) -> dict[str, Any]:
    _check_image('rgb', rgb, 4)
    f1, f2, f3, f4 = self.rgb_encoder(rgb.astype(self.settings.compute_dtype), train=train)
    x1, x2 = self.rgb_mffm4(f1, train=train), self.rgb_mffm3(f2, train=train)
    x3, x4 = self.rgb_mffm2(f3, train=train), self.rgb_mffm1(f4, train=train)
    side = self.decoder(x1, x2, x3, x4, train=train)
    side_logits = tuple(_resize_out(m, rgb.shape[1:3]) for m in side)
    return dict(logits=side_logits[0], side_logits=side_logits, slot_maps=())


def build_model(model_config: Any) -> GSANet | SaliencyNet:
  """GSANet for kind='video', SaliencyNet for kind='saliency'. Raises ValueError on bad values."""
  settings = ModelSettings.from_config(model_config)
  if settings.kind == 'video':
    return GSANet(settings)
  return SaliencyNet(settings)


def example_inputs(settings: ModelSettings, *, batch: int = 1, size: int = 64,
                   num_refs: int = 2) -> dict[str, jnp.ndarray]:
  """Zero inputs of the right shapes (for init and eval_shape)."""
  img = jnp.zeros((batch, size, size, 3), jnp.float32)
  if settings.kind == 'saliency':
    return dict(rgb=img)
  refs = jnp.zeros((batch, num_refs, size, size, 3), jnp.float32)
  return dict(rgb=img, flow=img, ref_rgb=refs, ref_flow=refs)


def init_variables(model: nn.Module, key: jax.Array, inputs: dict[str, jnp.ndarray]) -> dict[str, Any]:
  """model.init in eval mode with a fixed k-means key: {'params', 'batch_stats'}."""
  if isinstance(model, GSANet):
    return model.init({'params': key}, **inputs, train=False, kmeans_key=jax.random.key(0))
  return model.init({'params': key}, **inputs, train=False)
