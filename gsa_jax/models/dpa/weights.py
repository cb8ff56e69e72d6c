"""Official DPA checkpoints (Hydragon516/DPA, both stages) <-> our variables; the stage 1 -> 2 transfer.

  convert_checkpoint(state, config=None, source=...) -> (variables, settings)
      A state dict of model_for_video.DATA (stage 2) or model_for_pretrain.DATA (stage 1): the training
      checkpoint's `model_state_dict` or a bare state dict, with or without DataParallel's `module.`. The
      stage is inferred from the keys (flow_encoder.* -> 'video'); without `config` the widths (dim,
      vgg_width, decoder_width) are read from the shapes and the rest is the official configuration.
      Official modules that our settings leave out (sq4, DAM4/DAM5, TAM.V, fuse5 in the released
      forward; PCG.out, GAN.fc everywhere) and `num_batches_tracked` are ignored. A checkpoint of the other
      stage, a GSA-Net checkpoint or any other mismatch raises one ValueError naming the first mismatching
      key, both shapes and the fix.
  load_checkpoint(path, config=None) -> (variables, settings)          the same from a file
  official_config(kind)                                                the full config the official code
      trains with: configs/dpa_davis.py (stage 2, 'video') or configs/dpa_pretrain_duts.py (stage 1)
  to_official_state_dict(variables, settings, include_unused=True)     the inverse: official names and PyTorch
      layouts; with include_unused the modules we leave out are added (zeros; BN weight and running_var 1;
      num_batches_tracked 0) so that the official model loads it with strict=True.
  transfer_stage1(stage1, video) -> (variables, report)
      The official stage 1 -> 2 rule (train_for_DAVIS.load_my_state_dict): every subtree of the video
      model whose name exists in the stage-1 model is copied, and every flow_* subtree gets its rgb_* twin.
      Released forward: rgb_encoder -> rgb/flow_encoder, rgb_sq5, rgb_comp{4,5,6}, rgb_aspp (both streams)
      and decoder transfer; rgb_ifa, flow_ifa and fuse{4,5,6} start fresh (stage 1's rgb_sq4 / rgb_ima{4,5}
      are unused). With ima='official_dam' rgb_sq4 and rgb_ima{4,5} transfer too (to both streams) and
      ccm{4,5} and {rgb,flow}_fuse5 start fresh.
The paper-mode IMA (ima='paper') has no official counterpart and no official names.
"""

import dataclasses
import functools
import re
from typing import Any

import jax
import numpy as np

from gsa_jax import weights
from gsa_jax.models.dpa import config as config_lib
from gsa_jax.models.dpa import network

StateDict = weights.StateDict
Variables = dict[str, Any]
Settings = config_lib.Settings

# Our module path ('/'-joined, leaf excluded) -> official module path, applied in order.
_RULES = (
    (r'^(rgb|flow)_encoder/conv_(\d+)$', r'\1_encoder/vgg/\2'),
    (r'^(rgb|flow)_sq([45])$', r'\1_sq\2/0'),
    (r'^(rgb|flow)_comp([45])$', r'\1_COMP\2/0'),
    (r'^(rgb|flow)_comp6/conv1x1$', r'\1_COMP6/1'),
    (r'^(rgb|flow)_comp6/block1/conv$', r'\1_COMP6/2'),
    (r'^(rgb|flow)_comp6/block1/bn$', r'\1_COMP6/3'),
    (r'^(rgb|flow)_comp6/block2/conv$', r'\1_COMP6/5'),
    (r'^(rgb|flow)_comp6/block2/bn$', r'\1_COMP6/6'),
    (r'^(rgb|flow)_ifa/key$', r'\1_TAM/K'),
    (r'^(rgb|flow)_ifa/value$', r'\1_TAM/V'),
    (r'^(rgb|flow)_ifa/fusion/conv$', r'\1_TAM/fusion/0'),
    (r'^(rgb|flow)_ifa/fusion/bn$', r'\1_TAM/fusion/1'),
    (r'^(rgb|flow)_fuse5$', r'\1_fuse5/0'),
    (r'^(rgb|flow)_ima([45])/gan/', r'DAM\2/\1_OCR/GAN/'),
    (r'^(rgb|flow)_ima([45])/fusion/conv$', r'DAM\2/\1_fusion/0'),
    (r'^(rgb|flow)_ima([45])/fusion/bn$', r'DAM\2/\1_fusion/1'),
    (r'/GAN/tf_bn$', r'/GAN/TF/bn_relu/0'),
    (r'/GAN/(theta|phi|g)$', r'/GAN/TF/\1'),
    (r'/GAN/w$', r'/GAN/TF/W'),
    (r'/GAN/edge(\d)/conv$', r'/GAN/conv\1/0'),
    (r'/GAN/edge(\d)/bn$', r'/GAN/conv\1/1'),
    (r'^ccm([45])/can(\d)/bn$', r'DAM\1/CCM/can\2/bn_relu/0'),
    (r'^ccm([45])/can(\d)/w$', r'DAM\1/CCM/can\2/W'),
    (r'^ccm([45])/can(\d)/(theta|phi|g)$', r'DAM\1/CCM/can\2/\3'),
    (r'^fuse([456])/', r'total_fuse\1/'),
    (r'^decoder/merge56/', r'rgb_merge_co_56/'),
    (r'^decoder/merge45/', r'rgb_merge_co_45/0/'),
    (r'^decoder/merge45_out$', r'rgb_merge_co_45/1'),
    (r'^decoder/pred4$', r'rgb_get_pred_4/pred/0'),
    (r'^decoder/refine(\d)/', r'rgb_refine_\1/'),
    (r'^(rgb_refine_\d)/block1/conv$', r'\1/merge_conv/0'),
    (r'^(rgb_refine_\d)/block1/bn$', r'\1/merge_conv/1'),
    (r'^(rgb_refine_\d)/block2/conv$', r'\1/merge_conv/3'),
    (r'^(rgb_refine_\d)/block2/bn$', r'\1/merge_conv/4'),
    (r'^(rgb_refine_\d)/pred$', r'\1/pred/pred/0'),
    # gsa_jax.layers.Res -> the official Res (conv1 = Sequential(conv, BN, ReLU, conv), conv2 = (conv, BN, ReLU)).
    (r'^(total_fuse\d|rgb_merge_co_56|rgb_merge_co_45/0)/conv1a$', r'\1/conv1/0'),
    (r'^(total_fuse\d|rgb_merge_co_56|rgb_merge_co_45/0)/bn1$', r'\1/conv1/1'),
    (r'^(total_fuse\d|rgb_merge_co_56|rgb_merge_co_45/0)/conv1b$', r'\1/conv1/3'),
    (r'^(total_fuse\d|rgb_merge_co_56|rgb_merge_co_45/0)/conv2$', r'\1/conv2/0'),
    (r'^(total_fuse\d|rgb_merge_co_56|rgb_merge_co_45/0)/bn2$', r'\1/conv2/1'),
)

# Official keys that may be left over: modules our settings leave out, or that the code never uses.
_IGNORED = re.compile(r'(\.num_batches_tracked$|^(rgb|flow)_sq4\.|^DAM[45]\.|^(rgb|flow)_TAM\.V\.'
                      r'|^(rgb|flow)_fuse5\.|_OCR\.out\.|\.GAN\.fc\.)')
_GSANET_MARKERS = re.compile(r'(segformer\.|_MFFM\d|_SG\.|_SA\.|^linearr\d|^fusion\d\.)')
_FIX = ('Convert a checkpoint of the official DPA code (Hydragon516/DPA: model_for_video.py for stage 2, '
        'model_for_pretrain.py for stage 1) with the model config it was trained with')


def official_config(kind: str):
  """The full config of the official setting of `kind` ('video': stage 2; 'saliency': stage 1)."""
  if kind == 'video':
    from configs import dpa_davis  # pylint: disable=g-import-not-at-top
    return dpa_davis.get_config()
  from configs import dpa_pretrain_duts  # pylint: disable=g-import-not-at-top
  return dpa_pretrain_duts.get_config()


def official_key(names: tuple[str, ...]) -> str:
  """Our variable path -> the official key: ('decoder', 'refine1', 'block2', 'bn', 'var') ->
  'rgb_refine_1.merge_conv.4.running_var'."""
  *modules, leaf = names
  path = '/'.join(modules)
  for pattern, replacement in _RULES:
    path = re.sub(pattern, replacement, path)
  return path.replace('/', '.') + '.' + weights.LEAF_NAMES[leaf]


def _no_official_names(settings: Settings) -> None:
  if settings.kind == 'video' and settings.ima == 'paper':
    raise ValueError("model.ima='paper' (the paper's IMA, eqs. 1-7) has no counterpart in the official code, "
                     "so no official names; use ima='off' or 'official_dam'.")


@functools.lru_cache(maxsize=16)
def _abstract(settings: Settings) -> Variables:
  return network.abstract_variables(settings)


@functools.lru_cache(maxsize=16)
def _expected(settings: Settings) -> dict[str, tuple[tuple[int, ...], str]]:
  """Official key -> (PyTorch shape, our leaf name) for every variable of the model, in tree order."""
  out = {}
  for collection in ('params', 'batch_stats'):
    for path, leaf in jax.tree_util.tree_leaves_with_path(_abstract(settings).get(collection) or {}):
      names = tuple(p.key for p in path)
      out[official_key(names)] = (weights.torch_shape(leaf.shape, names[-1]), names[-1])
  return out


def _detect_kind(state: StateDict) -> str | None:
  if any(k.startswith('flow_encoder.vgg.') for k in state):
    return 'video'
  if any(k.startswith('rgb_encoder.vgg.') for k in state):
    return 'saliency'
  return None


def _infer_settings(state: StateDict, kind: str) -> Settings:
  fields = {'kind': kind}
  if (w := state.get('rgb_sq5.0.weight')) is not None and np.ndim(w) == 4:
    fields['dim'] = int(w.shape[0])
  if (w := state.get('rgb_encoder.vgg.0.weight')) is not None and np.ndim(w) == 4 and w.shape[0] != 64:
    fields['vgg_width'] = float(w.shape[0]) / 64.0
  if (w := state.get('rgb_refine_1.cmprs.weight')) is not None and np.ndim(w) == 4 and w.shape[0] != 64:
    fields['decoder_width'] = float(w.shape[0]) / 64.0
  if kind == 'saliency':
    fields['knn_k'] = min(10, fields.get('dim', 128))
  return Settings.from_config(fields)


def _first_mismatch(state: StateDict, settings: Settings, source: str) -> None:
  """Raises for the first expected key that is missing or mis-shaped (both shapes and the fix)."""
  expected = _expected(settings)
  # The encoder's first conv first: it tells a DPA checkpoint from anything else.
  order = sorted(expected, key=lambda k: k != 'rgb_encoder.vgg.0.weight')
  for key in order:
    shape = expected[key][0]
    found = state.get(key)
    if found is not None and tuple(np.shape(found)) == shape:
      continue
    got = 'absent' if found is None else str(tuple(np.shape(found)))
    extra = next((k for k in state if k not in expected and not _IGNORED.search(k)), None)
    hint = f'; the checkpoint holds e.g. {extra!r} {tuple(np.shape(state[extra]))}' if extra else ''
    what = ' It looks like a GSA-Net checkpoint: convert those with --kind=gsanet.' if any(
        _GSANET_MARKERS.search(k) for k in state) else ''
    raise ValueError(f'{source} does not fit the DPA {settings.kind} model (dim={settings.dim}, '
                     f'vgg_width={settings.vgg_width}, decoder_width={settings.decoder_width}, '
                     f'ima={settings.ima!r}, ifa_values={settings.ifa_values!r}): first mismatching key {key!r}: '
                     f'expected shape {shape}, found {got}{hint}.{what} {_FIX}.')


def convert_checkpoint(state: StateDict, config: Any = None, *, source: str = 'The checkpoint'
                       ) -> tuple[Variables, Settings]:
  """Official DPA state dict -> ({'params', 'batch_stats'}, settings). See the module docstring."""
  state = {k.removeprefix('module.'): v for k, v in state.items()}
  kind = _detect_kind(state)
  if config is None:
    if kind is None:
      _first_mismatch(state, Settings(), source)
    settings = _infer_settings(state, kind)
  else:
    settings = config if isinstance(config, Settings) else Settings.from_config(config)
    if kind is not None and kind != settings.kind:
      found = ('a stage-1 checkpoint (model_for_pretrain.py: rgb_encoder without flow_encoder)' if kind == 'saliency'
               else 'a stage-2 checkpoint (model_for_video.py: rgb_encoder and flow_encoder)')
      fix = ("convert it with a stage-1 config (configs/dpa_pretrain_duts.py, or no --config) and start stage 2 "
             "from it with --config.train.init_from=<its output> (every rgb_* weight is copied to flow_*), or give "
             "a stage-2 checkpoint" if kind == 'saliency'
             else "convert it with a stage-2 config (configs/dpa_davis.py, or no --config), or give a stage-1 "
             "checkpoint")
      raise ValueError(f"{source} is {found}, but model.kind={settings.kind!r}. Fix: {fix}.")
  _no_official_names(settings)
  _first_mismatch(state, settings, source)
  variables = weights.convert_tree(state, _abstract(settings), lambda names: official_key(names),
                                   ignored=lambda k: bool(_IGNORED.search(k)), what=f'DPA {settings.kind} ({source})')
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}, settings


def load_checkpoint(path: str, config: Any = None) -> tuple[Variables, Settings]:
  """Reads an official DPA checkpoint file ({'epoch', 'model_state_dict'} or a bare state dict)."""
  return convert_checkpoint(weights.read_state_dict(path), config, source=repr(path))


def _unused_official(settings: Settings) -> dict[str, tuple[tuple[int, ...], str]]:
  """Official key -> (shape, leaf) of what the official model defines but `settings` leaves out."""
  if settings.kind == 'video':
    full = dataclasses.replace(settings, ima='official_dam', use_ifa=True, ifa_values='values',
                               knn_k=min(settings.knn_k, settings.dim))
    streams = ('rgb', 'flow')
  else:
    full, streams = settings, ('rgb',)
  expected = dict(_expected(full))
  d = settings.dim
  for level in (4, 5):
    for s in streams:
      prefix = f'DAM{level}.{s}_OCR'
      expected[f'{prefix}.out.0.weight'] = ((d, 2 * d, 1, 1), 'kernel')
      expected[f'{prefix}.out.0.bias'] = ((d,), 'bias')
      for leaf, name in (('scale', 'weight'), ('bias', 'bias'), ('mean', 'running_mean'), ('var', 'running_var')):
        expected[f'{prefix}.out.1.{name}'] = ((d,), leaf)
      expected[f'{prefix}.GAN.fc.weight'] = ((1, d), 'kernel')
      expected[f'{prefix}.GAN.fc.bias'] = ((1,), 'bias')
  ours = _expected(settings)
  return {k: v for k, v in expected.items() if k not in ours}


def to_official_state_dict(variables: Variables, settings: Settings, *, include_unused: bool = True) -> StateDict:
  """Our {'params', 'batch_stats'} -> an official state dict ({key: numpy array}, PyTorch layouts)."""
  _no_official_names(settings)
  state: StateDict = {}
  for collection in ('params', 'batch_stats'):
    for path, value in jax.tree_util.tree_leaves_with_path(variables.get(collection) or {}):
      names = tuple(p.key for p in path)
      value = np.asarray(value, np.float32)
      if names[-1] == 'kernel' and value.ndim == 4:
        value = np.transpose(value, (3, 2, 0, 1))  # [kh kw i o] -> [o i kh kw]
      elif names[-1] == 'kernel' and value.ndim == 2:
        value = value.T
      state[official_key(names)] = np.ascontiguousarray(value)
  if include_unused:
    for key, (shape, leaf) in _unused_official(settings).items():
      state[key] = (np.ones if leaf in ('scale', 'var') else np.zeros)(shape, np.float32)
    for key in [k for k in state if k.endswith('.running_mean')]:
      state[key.removesuffix('running_mean') + 'num_batches_tracked'] = np.zeros((), np.int64)
  return state


def transfer_stage1(stage1: Variables, video: Variables) -> tuple[Variables, dict[str, list[str]]]:
  """Stage-1 variables -> the video model's (see the module docstring). Returns (variables, report) with
  report['copied'] (video subtree <- stage-1 subtree), report['fresh'] and report['unused'] (stage-1 subtrees
  with no place in this video model). Raises ValueError naming a subtree whose shapes differ."""
  out, report = {}, {'copied': [], 'fresh': [], 'unused': []}
  names1 = set()
  for collection in ('params', 'batch_stats'):
    src, dst = stage1.get(collection) or {}, dict(video.get(collection) or {})
    names1 |= set(src)
    for name in list(dst):
      twin = 'rgb_' + name[len('flow_'):] if name.startswith('flow_') else name
      if twin not in src:
        continue
      shapes = lambda tree: jax.tree.map(np.shape, tree)
      if shapes(src[twin]) != shapes(dst[name]):
        raise ValueError(f'transfer_stage1: {collection}/{twin} of the stage-1 model does not fit {name} of the '
                         'video model (different shapes); both models need the same dim and vgg_width.')
      dst[name] = jax.tree.map(np.asarray, src[twin])
      label = f'{name} <- {twin}'
      if label not in report['copied']:
        report['copied'].append(label)
    out[collection] = dst
  copied = {label.split(' <- ')[0] for label in report['copied']}
  report['fresh'] = sorted(n for n in video.get('params', {}) if n not in copied)
  used = {label.split(' <- ')[1] for label in report['copied']}
  report['unused'] = sorted(n for n in names1 if n not in used)
  return out, report
