"""DPA's parts for the benchmark: the programs it times, the per-part breakdown of a frame, its own sweeps.

Per frame with cached references (`segment`): 2 x (VGG-16 conv1..conv5 + IFA + COMP/ASPP) + the RGB + flow
fusion + the decoder; 'other' is segment minus the timed parts (IMA when wired in, concatenations). The full
forward adds `encode_references`: 2 x N_R VGG-16 passes and the IFA key prototypes, the work that caching the
references per video saves (the official code redoes it for every frame: 10 VGG passes instead of 2 at N_R=4).
"""

from __future__ import annotations

from typing import Any, Callable

from gsa_jax.models.dpa import config as config_lib


def programs(module) -> dict[str, Callable[..., Any]]:
  """encode / segment / full of the video model on a batch dict (eval mode)."""

  def encode(variables, batch):
    return module.apply(variables, batch['ref_rgb'], batch['ref_flow'], method='encode_references')

  def segment(variables, batch, refs):
    return module.apply(variables, batch['rgb'], batch['flow'], refs, train=False, method='segment')['prob']

  def full(variables, batch):
    return module.apply(variables, batch['rgb'], batch['flow'], batch['ref_rgb'], batch['ref_flow'],
                        train=False)['prob']

  return {'encode': encode, 'segment': segment, 'full': full}


def saliency_programs(module) -> dict[str, Callable[..., Any]]:
  """The stage-1 model has no per-video context: segment = full."""

  def full(variables, batch):
    return module.apply(variables, batch['rgb'], train=False)['prob']

  return {'segment': lambda variables, batch, context: full(variables, batch), 'full': full}


def breakdown(module, settings: config_lib.Settings, variables, batch, run) -> dict[str, Any]:
  """Runs every part through `run(name, fn, *args, count=)` and returns the shares of a cached frame."""
  dt = settings.compute_dtype
  progs = programs(module)
  apply = lambda method: (lambda v, *a: module.apply(v, *a, method=method))
  feats = run('vgg16', apply(lambda m, x: m.rgb_encoder(x.astype(dt), 1, 5)), variables, batch['rgb'], count=2)
  memory = run('encode_references', progs['encode'], variables, batch, count=0)
  f4, f5 = feats[3], feats[4]
  if settings.use_ifa:
    f5 = run('ifa', apply(lambda m, x, mem: m.rgb_ifa(x, m.rgb_sq5(x), mem, train=False)), variables, f5,
             memory['rgb'], count=2)

  def comp(m, x4, x5):
    return m.rgb_comp4(x4), m.rgb_comp5(x5), m.rgb_aspp(m.rgb_comp6(x5, train=False), train=False)

  cf = run('comp_aspp', apply(comp), variables, f4, f5, count=2)
  fused = run('fusion', apply(lambda m, c: tuple(fuse(a, a, train=False) for fuse, a in
                                                 zip((m.fuse4, m.fuse5, m.fuse6), c))),
              variables, cf, count=1)
  run('decoder', apply(lambda m, t, f: m.decoder(*t, f[0], f[1], f[2], train=False)), variables, fused, feats,
      count=1)
  run('segment', progs['segment'], variables, batch, memory, count=0)
  run('full', progs['full'], variables, batch, count=0)
  return shares(dict(run.parts))


def shares(parts: dict[str, Any]) -> dict[str, Any]:
  """Time and FLOP shares of the cached-reference frame (segment) and of the full forward's reference part."""
  seg, full = parts.pop('segment'), parts.pop('full')
  timed = seg['ms'] is not None
  out = {}
  for name in ('vgg16', 'ifa', 'comp_aspp', 'fusion', 'decoder'):
    if name in parts:
      q = parts[name]
      out[name] = dict(ms=q['ms'] * q['count_per_call'] if timed else None, flops=q['flops'] * q['count_per_call'])
  out['other'] = dict(ms=seg['ms'] - sum(s['ms'] for s in out.values()) if timed else None,
                      flops=seg['flops'] - sum(s['flops'] for s in out.values()))
  for s in out.values():
    s['time_share'] = s['ms'] / seg['ms'] if timed and seg['ms'] else None
    s['flop_share'] = s['flops'] / seg['flops'] if seg['flops'] else 0.0
  enc = parts['encode_references']
  return dict(timed=timed, parts=parts, segment=dict(ms=seg['ms'], flops=seg['flops']),
              full=dict(ms=full['ms'], flops=full['flops']),
              segment_shares=out,
              full_shares=dict(encode_references=dict(
                  ms=enc['ms'], flops=enc['flops'],
                  time_share=enc['ms'] / full['ms'] if timed and full['ms'] else None,
                  flop_share=enc['flops'] / full['flops'] if full['flops'] else 0.0)),
              note='vgg16 = one target pass (conv1..conv5); other = segment - the parts.')


def sweeps(model_section) -> dict[str, Callable[[Any], dict[str, Any]]]:
  """D: the hidden width (squeeze / IFA key convs, COMP, ASPP, fusion; = the number of prototypes)."""
  return {'dim': lambda d: {'dim': int(d), 'knn_k': min(int(model_section.knn_k), int(d))}}
