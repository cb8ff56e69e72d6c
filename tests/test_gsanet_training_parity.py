"""One GSA-Net training step equals the official one (the torch re-creation in tests/torch_gsanet.py).

Both sides get the same random weights and BatchNorm statistics, the same batch (2 targets, 3 reference
frames, a binary mask), BatchNorm in training mode, dropout and drop-path 0, k-means from the same
(strided) initial rows. The official step: model.train(), the 10-map double-sigmoid loss, backward.
Ours: value_and_grad of model.apply(train=True, mutable=['batch_stats']) + losses.total_loss, as
gsa_jax/train.py's train_step. Compared: the loss, the gradients (all together and per parameter), the
running statistics after the step. Sizes are tiny: a 4-stage MiT with one block per stage (widths 8-32),
dim 16, M = 8 clusters, KNN 4, 64x64 images.

The reference passes alone (the official `get_ref_feature`: encoder + MFFM1 per reference frame, its
own BatchNorm batch, no gradient) are checked for the running statistics of *_mffm1 with the official
settings and with each of the two deviations: reference_batchnorm='joint' (all reference frames as one
BatchNorm batch) and batch_norm_running_var='biased' (Flax's running variance) each move them away from
the official ones by more than the target.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from gsa_jax import backbones
from gsa_jax import layers
from gsa_jax import weights
from gsa_jax.backbones import mit
from gsa_jax.models.gsanet import config as config_lib
from gsa_jax.models.gsanet import losses
from gsa_jax.models.gsanet import network as models
from tests import torch_gsanet as T

torch.set_num_threads(1)

BATCH, SIZE, REFS = 2, 64, 3
WIDTHS = (8, 16, 24, 32)
TINY_MIT = 'mit_parity_tiny'
FIELDS = dict(backbone=TINY_MIT, dim=16, num_clusters=8, knn_k=4, kmeans_iters=10, kmeans_init='strided',
              slot_iters=3, fat_dropout=0.0, drop_path_rate=0.0, cosine_eps=0.0)
# Targets: loss, all gradients together, every parameter (relative, floored at 1e-5 of the global
# gradient norm), running statistics (absolute).
LOSS_RTOL, GRAD_RTOL, PARAM_RTOL, STATS_ATOL = 1e-5, 1e-4, 5e-3, 1e-3
# XLA's backend code generation (LLVM optimisations, the MLIR fusion emitters) costs most of the
# compile time of these one-off programs and buys nothing for a single run: off, the file takes about
# half the time. The HLO (what is computed, in float32) is unchanged.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0,
                                                    'xla_llvm_disable_expensive_passes': True,
                                                    'xla_cpu_use_fusion_emitters': False})

_MIT_CONFIG = mit.MiTConfig(hidden_sizes=WIDTHS, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
backbones.register_backbone(TINY_MIT, WIDTHS, lambda drop_path_rate, dtype, name: mit.MixTransformer(
    _MIT_CONFIG, drop_path_rate=drop_path_rate, dtype=dtype, name=name))


def _hf_config() -> transformers.SegformerConfig:
  c = _MIT_CONFIG
  return transformers.SegformerConfig(hidden_sizes=list(c.hidden_sizes), depths=list(c.depths),
                                      num_attention_heads=list(c.num_heads), sr_ratios=list(c.sr_ratios),
                                      patch_sizes=list(c.patch_sizes), strides=list(c.strides),
                                      mlp_ratios=[c.mlp_ratio] * 4, drop_path_rate=0.0, num_labels=10)


def _batch():
  rng = np.random.default_rng(0)
  normal = lambda *s: rng.standard_normal(s).astype(np.float32)
  uniform = lambda *s: rng.random(s).astype(np.float32)
  return dict(rgb=normal(BATCH, SIZE, SIZE, 3), flow=uniform(BATCH, SIZE, SIZE, 3),
              ref_rgb=normal(BATCH, REFS, SIZE, SIZE, 3), ref_flow=uniform(BATCH, REFS, SIZE, SIZE, 3),
              mask=(rng.random((BATCH, SIZE, SIZE, 1)) > 0.5).astype(np.float32))


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _stacked_refs(x: np.ndarray) -> torch.Tensor:
  """[b, t, h, w, 3] -> the official [B, 3t, H, W] (frames stacked on channels)."""
  b, t, h, w, c = x.shape
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 1, 4, 2, 3)).reshape(b, t * c, h, w)))


def _official_model() -> T.TGSANet:
  return T.TGSANet(_hf_config(), c=FIELDS['dim'], num_slots=2, num_clusters=FIELDS['num_clusters'],
                   knn_k=FIELDS['knn_k'], slot_iters=FIELDS['slot_iters'], kmeans_iters=FIELDS['kmeans_iters'],
                   dropout=0.0)


@functools.lru_cache(maxsize=None)
def _official_step():
  """The torch step: (state dict before, loss, grads by key, running stats after, k-means labels)."""
  model = T.randomise(_official_model(), seed=3)
  before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  model.train()
  x = _batch()
  maps = model(_nchw(x['rgb']), _nchw(x['flow']), _stacked_refs(x['ref_rgb']), _stacked_refs(x['ref_flow']))
  loss = T.total_loss(maps, _nchw(x['mask']))
  loss.backward()
  loss = loss.detach()
  grads = {k: p.grad.numpy().copy() for k, p in model.named_parameters() if p.grad is not None}
  after = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  labels = {s: np.stack([l.numpy() for l in getattr(model, f'{s}_SG').labels]) for s in ('rgb', 'flow')}
  return before, float(loss), grads, after, labels


def _model(**overrides) -> models.GSANet:
  """The video model with the official settings except FIELDS and `overrides`."""
  return models.GSANet(models.ModelSettings.from_config(dict(FIELDS, **overrides)))


@functools.lru_cache(maxsize=None)
def _abstract() -> dict:
  """The variable tree (shapes only); the model switches do not change it."""
  x = _batch()
  inputs = {k: jnp.asarray(x[k]) for k in ('rgb', 'flow', 'ref_rgb', 'ref_flow')}
  return jax.eval_shape(lambda: models.init_variables(_model(), jax.random.key(0), inputs))


def _to_flax(state: dict, abstract: dict) -> dict:
  return weights.convert_tree(state, abstract, T.official_key, ignored=lambda k: bool(T.IGNORED.search(k)),
                              what='the torch GSA-Net', extra_dims=T.extra_dims)


@functools.lru_cache(maxsize=None)
def _jax_step(**overrides):
  """Our step on the official weights: (loss, grads, batch_stats after, k-means labels by stream)."""
  model = _model(**overrides)
  before, *_ = _official_step()
  x = {k: jnp.asarray(v) for k, v in _batch().items()}
  inputs = {k: x[k] for k in ('rgb', 'flow', 'ref_rgb', 'ref_flow')}
  variables = _to_flax(before, _abstract())

  def loss_fn(params, batch_stats):
    outputs, mutated = model.apply({'params': params, 'batch_stats': batch_stats}, **inputs, train=True,
                                   kmeans_key=jax.random.key(0), rngs={'dropout': jax.random.key(1)},
                                   mutable=['batch_stats', 'intermediates'])
    loss, _ = losses.total_loss(outputs, x['mask'], variant='official')
    return loss, mutated

  step = _jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, mutated), grads = step(variables['params'], variables['batch_stats'])
  labels = {s: np.asarray(mutated['intermediates'][f'{s}_slots']['generator']['kmeans_assignments'][0])
            for s in ('rgb', 'flow')}
  return float(loss), grads, mutated['batch_stats'], labels


def _flat(tree) -> dict:
  return {'/'.join(p.key for p in path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _official_as_flax(state: dict, abstract_tree, collection: str) -> dict:
  """The torch entries of one collection ('params': weights; 'batch_stats': running_*) in our layout."""
  running = lambda k: '.running_' in k
  state = {k: v for k, v in state.items() if running(k) == (collection == 'batch_stats')}
  return _flat(_to_flax(state, {collection: abstract_tree})[collection])


def test_training_step_equals_the_official_one():
  _, official_loss, official_grads, official_after, official_labels = _official_step()
  loss, grads, batch_stats, labels = _jax_step()
  for s in ('rgb', 'flow'):  # The same clusters on both sides (else nothing below is comparable).
    np.testing.assert_array_equal(labels[s].reshape(BATCH, -1), official_labels[s], err_msg=s)

  assert abs(loss - official_loss) <= LOSS_RTOL * abs(official_loss), (loss, official_loss)

  want = _official_as_flax({k: v for k, v in official_grads.items()}, grads, 'params')
  got = _flat(grads)
  assert sorted(got) == sorted(want)
  names = sorted(want)
  w = np.concatenate([want[k].ravel() for k in names])
  g = np.concatenate([got[k].ravel() for k in names])
  global_norm = np.linalg.norm(w)
  assert global_norm > 0
  global_rel = np.linalg.norm(g - w) / global_norm
  floor = 1e-5 * global_norm
  per_param = {k: np.linalg.norm(got[k] - want[k]) / max(np.linalg.norm(want[k]), floor) for k in names}
  worst = sorted(per_param.items(), key=lambda kv: -kv[1])[:5]
  print(f'loss {loss:.8g} vs {official_loss:.8g}; gradients: global rel {global_rel:.3g}, worst {worst}')
  assert global_rel <= GRAD_RTOL, global_rel
  assert worst[0][1] <= PARAM_RTOL, worst

  stats_want = _official_as_flax(official_after, batch_stats, 'batch_stats')
  stats_got = _flat(batch_stats)
  stats_diff = {k: float(np.abs(stats_got[k] - stats_want[k]).max()) for k in stats_want}
  worst_stats = max(stats_diff.items(), key=lambda kv: kv[1])
  print('running statistics: worst', worst_stats)
  assert worst_stats[1] <= STATS_ATOL, worst_stats


@functools.lru_cache(maxsize=None)
def _official_reference_stats() -> dict:
  """The official running statistics after the reference passes of one training step (only *_MFFM1 move)."""
  before, *_ = _official_step()
  model = _official_model()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in before.items()})
  model.train()
  x = _batch()
  for stream in ('rgb', 'flow'):
    model.reference_features(stream, _stacked_refs(x[f'ref_{stream}']))
  return {k: v.numpy().copy() for k, v in model.state_dict().items() if '.running_' in k}


@pytest.mark.parametrize('overrides', [dict(), dict(reference_batchnorm='joint'),
                                       dict(batch_norm_running_var='biased')])
def test_reference_passes_update_the_running_statistics_as_the_official_ones(overrides):
  """The running statistics of *_mffm1 after the reference passes alone (encode_references, train=True).

  Official (no overrides): equal within the step's target. 'joint' normalises all reference frames as
  one batch and updates *_mffm1 once for them: means and variances move. 'biased' folds the biased
  batch variance into the running variance: the variances move, the means stay official.
  """
  model = _model(**overrides)
  x = _batch()
  abstract = _abstract()
  variables = _to_flax(_official_step()[0], abstract)
  encode = _jit(lambda v, rgb, flow: model.apply(v, rgb, flow, train=True, rngs={'dropout': jax.random.key(1)},
                                                 method='encode_references', mutable=['batch_stats'])[1])
  stats = _flat(encode(variables, x['ref_rgb'], x['ref_flow'])['batch_stats'])
  want = _official_as_flax(_official_reference_stats(), abstract['batch_stats'], 'batch_stats')
  want = {k: v for k, v in want.items() if '_mffm1/' in k}
  assert len(want) == 2 * 4 * 2  # 2 streams x 4 BatchNorms x (mean, var)
  diff = lambda part: max(float(np.abs(stats[k] - want[k]).max()) for k in want if part in k)
  print(overrides, 'mean', diff('/mean'), 'var', diff('/var'))
  if not overrides:
    assert diff('/') <= STATS_ATOL
  elif 'reference_batchnorm' in overrides:
    assert diff('rgb_mffm1/') > STATS_ATOL and diff('flow_mffm1/') > STATS_ATOL
    assert diff('/mean') > STATS_ATOL
  else:
    assert diff('/var') > STATS_ATOL
    assert diff('/mean') <= STATS_ATOL


def test_config_section_declares_both_switches_with_the_official_values():
  section = config_lib.model_config()
  assert section.reference_batchnorm == 'per_reference' and section.batch_norm_running_var == 'unbiased'
  settings = models.ModelSettings.from_config(config_lib.network_fields(section))
  assert settings == models.ModelSettings()  # the dataclass defaults are the section's
  section.reference_batchnorm, section.batch_norm_running_var = 'joint', 'biased'
  settings = models.ModelSettings.from_config(config_lib.network_fields(section))
  assert (settings.reference_batchnorm, settings.batch_norm_running_var) == ('joint', 'biased')
  section.reference_batchnorm = 'batched'
  assert any('reference_batchnorm' in p for p in config_lib.check(section))


def test_softmax_gradient_stays_accurate_when_saturated():
  """layers.softmax (the FAT's and the slots' softmax): the float32 gradient of a nearly one-hot softmax
  matches the float64 one entry by entry (a plain y * (g - <y, g>) keeps only ~1e-7 |g| there)."""
  rng = np.random.default_rng(0)
  x = np.stack([0.1 * rng.standard_normal(500), -18 + rng.standard_normal(500), -9 + rng.standard_normal(500)], -1)
  g = rng.standard_normal(x.shape)
  y = np.exp(x - x.max(-1, keepdims=True))
  y /= y.sum(-1, keepdims=True)
  want = y * (g - np.sum(y * g, -1, keepdims=True))                                       # float64
  f = lambda v: jnp.sum(layers.softmax(v, axis=-1) * jnp.asarray(g, jnp.float32))
  got = np.asarray(jax.grad(f)(jnp.asarray(x, jnp.float32)), np.float64)
  np.testing.assert_allclose(np.asarray(layers.softmax(jnp.asarray(x, jnp.float32))), y, rtol=1e-5, atol=0)
  rel = np.abs(got - want) / np.abs(want)
  assert np.median(rel) < 1e-6 and rel.max() < 1e-3, (np.median(rel), rel.max())
  # bfloat16 inputs are computed in float32.
  assert layers.softmax(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.float32
