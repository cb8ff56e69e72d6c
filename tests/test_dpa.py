"""DPA parts: VGG-16 and its weight import, IFA / IMA / ASPP / decoder parity with torch, losses, settings, counts.

Every parity test copies the same random weights (tests/torch_dpa.py re-creations of the official modules, whose
state-dict keys are the official ones) into our Flax modules through the official-key map of the converter, and
compares eval mode and train mode (batch statistics and their running averages). Whole models: test_dpa_models.py.
"""

import re

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

from gsa_jax import weights
from gsa_jax.backbones import vgg
from gsa_jax.backbones import vgg_weights
from gsa_jax.models.dpa import aspp as aspp_lib
from gsa_jax.models.dpa import common
from gsa_jax.models.dpa import config as config_lib
from gsa_jax.models.dpa import decoder as decoder_lib
from gsa_jax.models.dpa import ifa as ifa_lib
from gsa_jax.models.dpa import ima as ima_lib
from gsa_jax.models.dpa import losses
from gsa_jax.models.dpa import network
from gsa_jax.models.dpa import weights as dpa_weights
import torch_dpa as T

torch.set_num_threads(1)
FAST = {'xla_backend_optimization_level': '0'}  # halves compile time on CPU; results unchanged at 1e-6


def run(fn, *args):
  """jit(fn)(*args), compiled at a low optimisation level."""
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST)(*args)


def nhwc(t: torch.Tensor) -> jnp.ndarray:
  return jnp.asarray(np.moveaxis(t.detach().numpy(), 1, -1))


def nchw(x) -> np.ndarray:
  return np.moveaxis(np.asarray(x), -1, 1)


def flax_variables(torch_module, flax_module, args, kwargs, our_prefix: tuple, official_prefix: str,
                   unused: tuple[str, ...] = ()):
  """The torch module's weights in the Flax module's tree (through the converter's official-key map);
  `unused`: prefixes of the torch keys that the Flax module leaves out (beside out.*, fc.*)."""
  abstract = jax.eval_shape(lambda: flax_module.init(jax.random.key(0), *args, **kwargs))

  def key(names):
    return dpa_weights.official_key(our_prefix + names).removeprefix(official_prefix)

  return weights.convert_tree(T.numpy_state(torch_module), abstract, key,
                              ignored=lambda k: (k.endswith('num_batches_tracked') or k.startswith(unused)
                                                 or re.search(r'(^|\.)(out|GAN\.fc|fc)\.', k) is not None),
                              what=type(flax_module).__name__)


def check_parity(torch_module, flax_module, torch_args, jax_args, our_prefix, official_prefix, *, tol=1e-5,
                 stats_tol=1e-5, unused: tuple[str, ...] = ()):
  """Eval and train outputs, and the updated running statistics, of both modules agree."""
  variables = flax_variables(torch_module, flax_module, jax_args, {'train': False}, our_prefix, official_prefix,
                             unused)
  for train in (False, True):
    torch_module.train(train)
    with torch.no_grad():
      expected = torch_module(*torch_args)
    fn = lambda v, *a: flax_module.apply(v, *a, train=train, mutable=['batch_stats'] if train else False)
    got = run(fn, variables, *jax_args)
    if train:
      got, updates = got
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    got = got if isinstance(got, (tuple, list)) else (got,)
    for e, g in zip(expected, got):
      g = np.asarray(g)
      e = e.numpy()
      g = nchw(g) if g.ndim == 4 else g
      np.testing.assert_allclose(g, e, atol=tol, rtol=0, err_msg=f'train={train}')
    if train:
      after = flax_variables(torch_module, flax_module, jax_args, {'train': False}, our_prefix, official_prefix,
                             unused)
      for a, b in zip(jax.tree.leaves(after['batch_stats']), jax.tree.leaves(updates['batch_stats'])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=stats_tol, rtol=stats_tol)
  return variables


# ------------------------------------------------------------------------------------------------
# VGG-16.
# ------------------------------------------------------------------------------------------------

def test_vgg16_equals_torchvision_features():
  torch.manual_seed(0)
  features = T.torchvision_vgg16_features()            # full width, random torchvision-style init
  state = {('features.' + k): v.numpy().copy() for k, v in features.state_dict().items()}
  state['classifier.0.weight'] = np.zeros((4096, 25088), np.float32)  # ignored
  variables = vgg_weights.convert_vgg16(state)
  assert sum(x.size for x in jax.tree.leaves(variables)) == 14_714_688
  # The prefix-less layout (DPA's vgg16_feat.pth) gives the same variables.
  bare = vgg_weights.convert_vgg16({k.removeprefix('features.'): v for k, v in state.items()
                                    if k.startswith('features.')})
  jax.tree.map(np.testing.assert_array_equal, variables, bare)

  x = torch.randn(1, 3, 32, 32)
  with torch.no_grad():
    expected, y = [], x
    for start, end in T.STAGE_BOUNDS:
      for layer in features[start:end]:
        y = layer(y)
      expected.append(y.numpy())
    assert np.allclose(features(x).numpy(), torch.nn.functional.max_pool2d(y, 2).numpy())
  model = vgg.VGG16()
  got = run(lambda v, a: model.apply(v, a), variables, nhwc(x))
  assert [g.shape[-1] for g in got] == list(vgg.stage_channels())
  for g, e in zip(got, expected):
    np.testing.assert_allclose(nchw(g), e, atol=1e-5 * max(1.0, np.abs(e).max()), rtol=0)
  # Stage by stage (a module can sit between conv4 and conv5) = the whole call.
  f4 = run(lambda v, a: model.apply(v, a, 1, 4)[-1], variables, nhwc(x))
  f5 = run(lambda v, a: model.apply(v, a, method=lambda m, t: m.stage(5, t)), variables, f4)
  np.testing.assert_allclose(np.asarray(f5), np.asarray(got[-1]), atol=1e-6, rtol=0)
  back = vgg_weights.to_torchvision_state_dict(variables['params'])
  assert set(back) == {k for k in state if k.startswith('features.')}
  for k, v in back.items():
    np.testing.assert_array_equal(v, state[k])


def _vgg_like_file(tmp_path, name: str, plan, batch_norm: bool = False) -> str:
  state, index, c_in = {}, 0, 3
  for item in plan:
    if item == 'M':
      index += 1
      continue
    state[f'features.{index}.weight'] = torch.zeros(item, c_in, 3, 3)
    state[f'features.{index}.bias'] = torch.zeros(item)
    if batch_norm:
      for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
        state[f'features.{index + 1}.{leaf}'] = torch.zeros(item)
      index += 1
    index += 2
    c_in = item
  path = str(tmp_path / name)
  torch.save(state, path)
  return path


VGG19 = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M')
VGG16 = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M')


def test_vgg16_import_rejects_other_networks(tmp_path):
  path = _vgg_like_file(tmp_path, 'vgg16.pth', VGG16)
  assert jax.tree.leaves(vgg_weights.load_vgg16(path))  # the layout itself loads
  cases = {
      'vgg19.pth': (_vgg_like_file(tmp_path, 'vgg19.pth', VGG19),
                    "'17.weight': expected shape (512, 256, 3, 3), found absent",
                    '16 conv kernels'),
      'vgg16_bn.pth': (_vgg_like_file(tmp_path, 'vgg16_bn.pth', VGG16, batch_norm=True),
                       "'2.weight': expected shape (64, 64, 3, 3), found absent", 'BatchNorm'),
  }
  resnet = str(tmp_path / 'resnet18.pth')
  torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'bn1.running_mean': torch.zeros(64),
              'layer1.0.conv1.weight': torch.zeros(64, 64, 3, 3)}, resnet)
  cases['resnet18.pth'] = (resnet, "'0.weight': expected shape (64, 3, 3, 3), found absent", 'BatchNorm')
  narrow = str(tmp_path / 'narrow.pth')
  torch.save({'0.weight': torch.zeros(32, 3, 3, 3)}, narrow)
  cases['narrow.pth'] = (narrow, "'0.weight': expected shape (64, 3, 3, 3), found (32, 3, 3, 3)", '')
  for name, (file, first, what) in cases.items():
    with pytest.raises(ValueError) as e:
      vgg_weights.load_vgg16(file)
    message = str(e.value)
    assert name in message and first in message and what in message and 'torchvision.models.vgg16' in message, message


# ------------------------------------------------------------------------------------------------
# Modules.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('values', ['keys', 'values'])
def test_ifa_matches_official(values):
  torch.manual_seed(1)
  c, d, b, t = 24, 8, 2, 3
  tam = T.randomize_(T.TAM(c, d, values), 3)
  x, query = torch.randn(b, c, 4, 4), torch.randn(b, d, 4, 4)
  refs = [torch.randn(b, c, 4, 4) for _ in range(t)]
  module = ifa_lib.IFA(c, d, values)
  refs_j = jnp.stack([nhwc(r) for r in refs], axis=1)                           # [b t h w c]

  class Both(ifa_lib.IFA):
    """encode + __call__ in one call, for the parity helper."""

    def __call__(self, x, query, refs, *, train):
      return super().__call__(x, query, self.encode(refs), train=train)

  both = Both(c, d, values)
  variables = check_parity(tam, both, (x, query, refs), (nhwc(x), nhwc(query), refs_j), ('rgb_ifa',), 'rgb_TAM.',
                           unused=('V.',) if values == 'keys' else ())
  assert ('value' in variables['params']) == (values == 'values')
  memory = module.apply(variables, refs_j, method=ifa_lib.IFA.encode)
  assert memory['keys'].shape == (b, t, d, d) and (('values' in memory) == (values == 'values'))


def test_graph_attention_and_mutual_refinement_match_official():
  torch.manual_seed(2)
  d = 16
  gan = T.randomize_(T.GraphNet(d, 10), 4)
  tokens = torch.randn(3, d, d)
  check_parity(gan, ima_lib.GraphAttention(10), (tokens,), (jnp.asarray(tokens.numpy()),), ('rgb_ima4', 'gan'),
               'DAM4.rgb_OCR.GAN.')
  ccm = T.randomize_(T.Mutual(d), 5)
  a, b = torch.randn(2, d, 4, 4), torch.randn(2, d, 4, 4)
  check_parity(ccm, ima_lib.MutualRefinement(), (a, b), (nhwc(a), nhwc(b)), ('ccm4',), 'DAM4.CCM.')


def test_knn_and_edge_features():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 5)).astype(np.float32))
  idx = np.asarray(ima_lib.knn_indices(x, 4))
  d2 = np.sum((np.asarray(x)[:, :, None] - np.asarray(x)[:, None]) ** 2, axis=-1)
  np.testing.assert_array_equal(idx, np.argsort(d2, axis=-1, kind='stable')[..., :4])
  assert (idx[..., 0] == np.arange(12)).all()  # self is the nearest
  e = np.asarray(ima_lib.edge_features(x, 4))
  xt = torch.from_numpy(np.array(x)).transpose(1, 2)
  np.testing.assert_allclose(e, T.edge_features(xt, 4).permute(0, 2, 3, 1).numpy(), atol=1e-6)


class _TwoStreamDAM(ima_lib.nn.Module):
  """The video model's IMA wiring at one block (DPAVideo._ima), standalone."""
  features: int
  paper: bool = False

  def setup(self):
    cls = ima_lib.PaperIMAStream if self.paper else ima_lib.IMAStream
    kwargs = dict(prototypes=16) if self.paper else {}
    self.rgb_ima4 = cls(self.features, **kwargs)
    self.flow_ima4 = cls(self.features, **kwargs)
    if not self.paper:
      self.ccm4 = ima_lib.MutualRefinement()

  def __call__(self, x_rgb, x_flow, sq_rgb, sq_flow, *, train):
    if self.paper:
      (kr, vr), (kf, vf) = self.rgb_ima4.embed(sq_rgb), self.flow_ima4.embed(sq_flow)
      cr, cf = ima_lib.paper_cross(kr, vr, kf, vf)
    else:
      cr, cf = self.ccm4(self.rgb_ima4.correlate(sq_rgb, train=train), self.flow_ima4.correlate(sq_flow, train=train),
                         train=train)
    return self.rgb_ima4.fuse(x_rgb, cr, train=train), self.flow_ima4.fuse(x_flow, cf, train=train)


class _TorchPaperDAM(torch.nn.Module):

  def __init__(self, c, d):
    super().__init__()
    self.rgb, self.flow = T.PaperIMAStream(c, d), T.PaperIMAStream(c, d)

  def forward(self, xr, xf, sr, sf):
    (kr, vr), (kf, vf) = self.rgb.embed(sr), self.flow.embed(sf)
    tr, tf = T.paper_cross(kr, vr, kf, vf)
    return self.rgb.fuse(xr, tr), self.flow.fuse(xf, tf)


def test_dam_matches_official_and_paper_ima():
  torch.manual_seed(3)
  c, d = 24, 16
  xr, xf = torch.randn(2, c, 8, 8), torch.randn(2, c, 8, 8)
  sr, sf = 4 * torch.randn(2, d, 8, 8), 4 * torch.randn(2, d, 8, 8)   # peaky softmaxes: distinct prototypes
  args_t, args_j = (xr, xf, sr, sf), tuple(nhwc(a) for a in (xr, xf, sr, sf))
  dam = T.randomize_(T.TwoStreamDAM(c, d, 10), 6)
  check_parity(dam, _TwoStreamDAM(c), args_t, args_j, (), 'DAM4.', tol=2e-5, stats_tol=1e-4)
  one = T.randomize_(T.OneStreamDAM(c, d, 10), 7)
  check_parity(one, ima_lib.IMAStream(c), (xr, sr), args_j[::2], ('rgb_ima4',), 'DAM4.', tol=2e-5, stats_tol=1e-4)
  # The paper's IMA (eqs. 1-7): our layout -> the torch formula (names: rgb.key / rgb.value / rgb.fusion).
  paper = T.randomize_(_TorchPaperDAM(c, d), 8)
  flax_paper = _TwoStreamDAM(c, paper=True)
  abstract = jax.eval_shape(lambda: flax_paper.init(jax.random.key(0), *args_j, train=False))
  rename = lambda names: ('rgb.' if names[0] == 'rgb_ima4' else 'flow.') + dpa_weights.official_key(
      ('decoder',) + names[1:]).removeprefix('decoder.').replace('fusion.conv.', 'fusion.0.').replace(
          'fusion.bn.', 'fusion.1.')
  variables = weights.convert_tree(T.numpy_state(paper), abstract, rename,
                                   ignored=lambda k: k.endswith('num_batches_tracked'), what='paper IMA')
  for train in (False, True):
    paper.train(train)
    with torch.no_grad():
      expected = paper(*args_t)
    got = run(lambda v, *a: flax_paper.apply(v, *a, train=train, mutable=['batch_stats'] if train else False),
              variables, *args_j)
    got = got[0] if train else got
    for g, e in zip(got, expected):
      np.testing.assert_allclose(nchw(g), e.numpy(), atol=2e-5, rtol=0)


def test_paper_cross_takes_values_from_the_other_modality():
  rng = np.random.default_rng(0)
  k_a, v_a, k_m, v_m = (jnp.asarray(rng.normal(size=(1, 3, 3, 4)).astype(np.float32)) for _ in range(4))
  t_a, t_m = ima_lib.paper_cross(k_a, v_a, k_m, v_m)
  t_a2, _ = ima_lib.paper_cross(k_a, v_a + 5.0, k_m, v_m)      # own values do not reach T_A
  np.testing.assert_allclose(np.asarray(t_a2), np.asarray(t_a), atol=1e-6)
  _, t_m2 = ima_lib.paper_cross(k_a, v_a, k_m, v_m + 5.0)
  np.testing.assert_allclose(np.asarray(t_m2), np.asarray(t_m), atol=1e-6)


def test_aspp_comp6_and_decoder_match_official():
  torch.manual_seed(4)
  c, d = 24, 16
  x = torch.randn(2, c, 8, 8)
  comp6 = T.randomize_(T.comp6(c, d), 9)
  check_parity(comp6, aspp_lib.Comp6(d), (x,), (nhwc(x),), ('rgb_comp6',), 'rgb_COMP6.')
  aspp = T.randomize_(T.ASPP(d, d), 10)
  y = torch.randn(3, d, 4, 4)
  check_parity(aspp, aspp_lib.ASPP(d), (y,), (nhwc(y),), ('rgb_aspp',), 'rgb_aspp.', tol=3e-5, stats_tol=1e-4)

  class TorchDecoder(T._Decoder):

    def __init__(self):
      super().__init__()
      self._build_decoder(d, (8, 16, 32))

    def forward(self, *a):
      return self._decode(*a)

  dec = T.randomize_(TorchDecoder(), 11)
  s = 64
  feats = (torch.randn(2, d, s // 8, s // 8), torch.randn(2, d, s // 16, s // 16), torch.randn(2, d, s // 32, s // 32),
           torch.randn(2, 8, s, s), torch.randn(2, 16, s // 2, s // 2), torch.randn(2, 32, s // 4, s // 4))
  check_parity(dec, decoder_lib.Decoder(d), feats, tuple(nhwc(f) for f in feats), ('decoder',), '', tol=2e-5,
               stats_tol=1e-4)


def test_prototypes_stop_gradient_switch():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 3, 4)).astype(np.float32))
  np.testing.assert_allclose(np.asarray(common.ocr_prototypes(x)), T.ocr(torch.from_numpy(np.moveaxis(
      np.asarray(x), -1, 1).copy())).numpy(), atol=1e-6)
  f = lambda sg: jax.grad(lambda y: jnp.sum(common.ocr_prototypes(y, sg) ** 2))(x)
  xt = torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy()).requires_grad_()
  (T.ocr(xt, detach=True) ** 2).sum().backward()
  np.testing.assert_allclose(nchw(f(True)), xt.grad.numpy(), atol=1e-5)
  assert np.abs(np.asarray(f(True)) - np.asarray(f(False))).max() > 1e-3   # the weights' gradient is dropped


# ------------------------------------------------------------------------------------------------
# Losses.
# ------------------------------------------------------------------------------------------------

def test_losses_match_torch_formulas():
  rng = np.random.default_rng(0)
  probs = [rng.uniform(0.01, 0.99, size=(2, 16, 16, 1)).astype(np.float32) for _ in range(4)]
  mask = (rng.uniform(size=(2, 16, 16, 1)) > 0.5).astype(np.float32) * 1.01   # may exceed 1 (bicubic GT)
  outputs = {'side_probs': tuple(jnp.asarray(p) for p in probs), 'prob': jnp.asarray(probs[-1])}
  torch_probs = [torch.from_numpy(nchw(p).copy()) for p in probs]
  torch_mask = torch.from_numpy(nchw(mask).copy())
  loss, metrics = losses.total_loss(outputs, jnp.asarray(mask))
  np.testing.assert_allclose(float(loss), float(T.iou_loss(torch_probs, torch_mask)), rtol=1e-6)
  assert set(metrics) == {'loss', 'loss_iou', 'loss_side1', 'loss_side2', 'loss_side3', 'loss_side4'}
  mask01 = np.clip(mask, 0, 1)
  loss_ce, metrics_ce = losses.total_loss(outputs, jnp.asarray(mask01), variant='ce')
  np.testing.assert_allclose(float(loss_ce), float(T.bce_loss(torch_probs, torch.from_numpy(nchw(mask01).copy()))),
                             rtol=1e-5)
  assert 'loss_ce' in metrics_ce
  with pytest.raises(ValueError, match="choose one of \\('iou', 'ce'\\)"):
    losses.total_loss(outputs, jnp.asarray(mask), variant='bce')
  with pytest.raises(ValueError, match='must both be \\[b, h, w, 1\\]'):
    losses.total_loss(outputs, jnp.asarray(mask[:, :8]))


# ------------------------------------------------------------------------------------------------
# Settings and parameter counts.
# ------------------------------------------------------------------------------------------------

def test_settings_validation():
  config = config_lib.model_config()
  assert config_lib.validate(config) == []
  assert config_lib.Settings.from_config(config) == config_lib.Settings()
  config.ima = 'dam'
  config.dim = 0
  config.cosine_eps = -1.0
  problems = config_lib.validate(config)
  assert any(p.startswith("model.ima='dam'") and "'official_dam'" in p and '--config.model.ima' in p for p in problems)
  assert any(p.startswith('model.dim=0') for p in problems)
  assert any(p.startswith('model.cosine_eps=-1.0') for p in problems)
  assert config_lib.validate({'kind': 'video', 'use_ifa': False, 'ifa_values': 'values'})
  assert config_lib.validate({'ima': 'official_dam', 'dim': 8})          # fewer prototypes than knn_k
  assert config_lib.validate({'slots': 2})[0].startswith('model.slots=2: unknown DPA model field')
  with pytest.raises(ValueError, match='model.ima'):
    config_lib.Settings.from_config({'ima': 'x'})
  assert config_lib.Settings.from_config(config_lib.Settings(ima='paper').to_config()).ima == 'paper'


@pytest.mark.parametrize('fields, total', [
    ({}, 40_200_420),                                                 # released, trained parameters
    ({'ima': 'official_dam', 'ifa_values': 'values'}, 43_492_580),    # the paper's row IV
    ({'ima': 'official_dam'}, 43_361_252),                            # the code's DAM lines, values = keys
    ({'kind': 'saliency'}, 20_139_300),                               # stage 1
])
def test_parameter_counts(fields, total):
  counts = network.part_counts(dpa_weights._abstract(config_lib.Settings.from_config(fields))['params'])
  assert counts['total'] == total
  assert sum(v for k, v in counts.items() if k != 'total') == total
  assert counts['encoders (VGG-16)'] == 14_714_688 * (1 if fields.get('kind') == 'saliency' else 2)
  if not fields:
    assert counts['IFA'] == 2 * (65_664 + 329_216) and counts['decoder'] == 3_317_988
    # The official model has 43,625,704; the difference is what never gets a gradient (checked in torch).
    assert sum(p.numel() for p in T.VideoModel().parameters()) - total == 3_425_284
