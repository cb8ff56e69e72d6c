"""GSA-Net's parts for the benchmark: the per-part breakdown of a frame and its own scaling sweeps.

Per frame with cached references: 2 x (backbone + 4 MFFMs + slot branch) + decoder (+ the fusion convs, cosine
maps and output resize, which make up 'other' = segment - the parts). The slot branch is split into the slot
generator (k-means inside) and guided slot attention (KNN top-k inside); the full forward adds
encode_references (2 x N_R x (backbone + MFFM1)). XLA's cost analysis counts a while-loop body once, so the
k-means FLOPs (a fori_loop) are replaced by their analytic count, and segment / full corrected.

The training step (train_breakdown, train_shares): the same parts in train mode, each compiled twice, forward
alone and forward + backward, plus the output / slot-map resizes, the loss, the reference pass (forward only:
its outputs are under stop_gradient) and the optimiser update; shares of the measured step's time and FLOPs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from gsa_jax import ops
from gsa_jax.models.gsanet import network
from gsa_jax.models.gsanet import slots as slots_lib


def kmeans_flops(*, batch: int, points: int, clusters: int, dim: int, iters: int) -> float:
  """FLOPs of Lloyd's k-means: per iteration distances (2nmc + 3nm) and member sums (2nmc)."""
  return float(batch * iters * (4 * points * clusters * dim + 3 * points * clusters))


def programs(module, seed: int = 0) -> dict[str, Callable[..., Any]]:
  """encode / segment / full of the video model on a batch dict (fixed k-means key)."""
  key = jax.random.key(seed)

  def encode(variables, batch):
    return module.apply(variables, batch['ref_rgb'], batch['ref_flow'], train=False, method='encode_references')

  def segment(variables, batch, refs):
    return module.apply(variables, batch['rgb'], batch['flow'], refs, train=False, kmeans_key=key,
                        method='segment')['logits']

  def full(variables, batch):
    return module.apply(variables, batch['rgb'], batch['flow'], batch['ref_rgb'], batch['ref_flow'], train=False,
                        kmeans_key=key)['logits']

  return {'encode': encode, 'segment': segment, 'full': full}


def saliency_programs(module) -> dict[str, Callable[..., Any]]:
  def full(variables, batch):
    return module.apply(variables, batch['rgb'], train=False)['logits']
  return {'segment': lambda variables, batch, context: full(variables, batch), 'full': full}


def breakdown(module, settings: network.ModelSettings, variables, batch, run) -> dict[str, Any]:
  """Runs every part through `run(name, fn, *args, count=)` and returns the shares of a cached frame."""
  cfg, dt = settings.slots, settings.compute_dtype
  size = batch['rgb'].shape[1]
  b = batch['rgb'].shape[0]
  key = jax.random.key(0)
  progs = programs(module)
  apply = lambda method: (lambda v, *a: module.apply(v, *a, method=method))
  feats = run('backbone', apply(lambda m, img: m.rgb_encoder(img.astype(dt), train=False)), variables,
              batch['rgb'], count=2)
  mffm_out = run('mffm', apply(lambda m, f: [m.rgb_mffm4(f[0], train=False), m.rgb_mffm3(f[1], train=False),
                                             m.rgb_mffm2(f[2], train=False), m.rgb_mffm1(f[3], train=False)]),
                 variables, feats, count=2)
  refs = run('encode_references', progs['encode'], variables, batch, count=0)
  x3, rref = mffm_out[2], refs['rgb']
  p = variables['params']
  if settings.has_slot_branch:
    run('slot_branch', apply(lambda m, a, r, k: m.rgb_slots(a, r, kmeans_key=k, train=False)),
        variables, x3, rref, key, count=2)
    gen_mod = slots_lib.SlotGenerator(cfg, dtype=dt)
    gen = run('slot_generator', lambda v, a, r, k: gen_mod.apply(v, a, r, kmeans_key=k, train=False),
              {'params': p['rgb_slots']['generator']}, x3, rref, key, count=2)
    _, h, w, c = x3.shape
    tokens = jax.ShapeDtypeStruct((b, h * w, c), gen['sqz'].dtype) if isinstance(gen['sqz'], jax.ShapeDtypeStruct) \
        else gen['sqz'].reshape(b, h * w, c)
    run('kmeans', lambda t, k: ops.kmeans_assignments(t, k, cfg.num_clusters, num_iters=cfg.kmeans_iters,
                                                      init=cfg.kmeans_init, assign=cfg.kmeans_assign,
                                                      temperature=cfg.kmeans_temperature),
        tokens, key, count=2)
    if cfg.use_slot_attention:
      att_mod = slots_lib.GuidedSlotAttention(cfg, dtype=dt)
      run('guided_slot_attention', lambda v, s, pool: att_mod.apply(v, s, pool, train=False),
          {'params': p['rgb_slots']['attention']}, gen['slots'], gen['agg'], count=2)
      if cfg.use_knn:
        run('knn_topk', lambda s, pool: ops.knn_topk(s, pool, cfg.knn_k, cfg.cosine_eps)[0],
            gen['slots'], gen['agg'], count=2 * cfg.slot_iters)

  def decode(m, xr, xf):
    fused = [fuse(a, b_, train=False) for fuse, a, b_ in zip((m.fuse1, m.fuse2, m.fuse3, m.fuse4), xr, xf)]
    return ops.resize_bilinear_align_corners(m.decoder(*fused, train=False)[0].astype(jnp.float32), (size, size))

  mffm_f = list(mffm_out)
  run('decoder', apply(decode), variables, mffm_f, mffm_f, count=1)
  segment = run('segment', progs['segment'], variables, batch, refs, count=0)
  del segment
  run('full', progs['full'], variables, batch, count=0)
  return {'kmeans_flops': kmeans_flops(batch=b, points=(size // 16) ** 2, clusters=cfg.num_clusters,
                                       dim=settings.dim, iters=cfg.kmeans_iters) if settings.has_slot_branch else None}


def shares(parts: dict[str, Any], kmeans_true_flops: float | None) -> dict[str, Any]:
  """Time and FLOP shares of the cached-reference frame from the timed parts (see the module docstring)."""
  seg, full = parts.pop('segment'), parts.pop('full')
  seg_ms, seg_flops, full_ms, full_flops = seg['ms'], seg['flops'], full['ms'], full['flops']
  if 'kmeans' in parts and kmeans_true_flops is not None:
    missing = (kmeans_true_flops - parts['kmeans']['flops']) * parts['kmeans']['count_per_call']
    parts['kmeans']['xla_flops'] = parts['kmeans']['flops']
    parts['kmeans']['flops'] = kmeans_true_flops
    for name in ('slot_branch', 'slot_generator'):
      if name in parts:
        parts[name]['flops'] += missing / parts[name]['count_per_call']
    seg_flops += missing
    full_flops += missing
  timed = seg_ms is not None
  out = {}
  for name in ['backbone', 'mffm', 'slot_branch', 'decoder']:
    if name in parts:
      q = parts[name]
      out[name] = dict(ms=q['ms'] * q['count_per_call'] if timed else None, flops=q['flops'] * q['count_per_call'])
  out['other'] = dict(ms=seg_ms - sum(s['ms'] for s in out.values()) if timed else None,
                      flops=seg_flops - sum(s['flops'] for s in out.values()))
  for name in ('slot_generator', 'kmeans', 'guided_slot_attention', 'knn_topk'):
    if name in parts:
      q = parts[name]
      out[name] = dict(ms=q['ms'] * q['count_per_call'] if timed else None, flops=q['flops'] * q['count_per_call'],
                       within='slot_branch')
  for s in out.values():
    s['time_share'] = s['ms'] / seg_ms if timed and seg_ms else None
    s['flop_share'] = s['flops'] / seg_flops if seg_flops else 0.0
  enc = parts['encode_references']
  return dict(timed=timed, parts=parts, segment=dict(ms=seg_ms, flops=seg_flops), full=dict(ms=full_ms, flops=full_flops),
              segment_shares=out,
              full_shares=dict(encode_references=dict(
                  ms=enc['ms'], flops=enc['flops'], time_share=enc['ms'] / full_ms if timed and full_ms else None,
                  flop_share=enc['flops'] / full_flops if full_flops else 0.0)),
              note='k-means FLOPs are analytic (XLA counts a while-loop body once); segment/full corrected.')


def sweeps(model_section) -> dict[str, Callable[[Any], dict[str, Any]]]:
  """M (clusters; KNN k capped at M) and T (slot-attention iterations)."""
  return {'num_clusters': lambda m: {'num_clusters': int(m), 'knn_k': min(int(model_section.knn_k), int(m))},
          'slot_iters': lambda t: {'slot_iters': int(t)}}


# ------------------------------------------------------------------------------------------------
# The training step, part by part
# ------------------------------------------------------------------------------------------------

TRAIN_PARTS = ('backbone', 'mffm', 'slot_branch', 'decoder', 'resizes', 'loss', 'references', 'optimizer')


def _fwd_bwd(f: Callable[..., Any], static: int) -> Callable[..., Any]:
  """f(*args) -> outputs  to  (*args) -> (outputs, the cotangents of args[static:] for an all-ones output
  cotangent); the first `static` arguments are not differentiated. The outputs are returned so that XLA keeps
  the whole forward."""
  def run(*args):
    fixed = args[:static]
    out, vjp = jax.vjp(lambda *a: f(*fixed, *a), *args[static:])
    return out, vjp(jax.tree.map(jnp.ones_like, out))
  return run


def train_breakdown(module, settings: network.ModelSettings, variables, batch, run, *, loss_fn,
                    optimizer) -> dict[str, Any]:
  """The training step's parts, forward and forward + backward each compiled alone at the real shapes.

  Runs `run(name, fn, *args, count=)` for '<part>/fwd' and '<part>/fwd_bwd' of every part in TRAIN_PARTS
  (backward = fwd_bwd - fwd); 'references' (both streams' reference pass, no gradient) and 'optimizer'
  (optax update + apply on every parameter) have a forward only. Gradients are taken with respect to the
  part's own parameters and its inputs, as inside the step. loss_fn(outputs, mask) -> scalar;
  optimizer: the optax GradientTransformation. Everything is passed as arguments (no closed-over arrays),
  so abstract inputs (jax.ShapeDtypeStruct) give the FLOP-only path. Returns {} (the parts are in run.parts).
  """
  del settings
  p = variables['params']
  size = batch['rgb'].shape[1:3]
  key = jax.random.key(0)
  abstract = isinstance(jax.tree.leaves(p)[0], jax.ShapeDtypeStruct)  # the FLOP-only path: nothing runs
  derive = lambda fn, *a: jax.eval_shape(fn, *a) if abstract else fn(*a)

  def both(name, names, method, fixed, diff, count):
    """method(module, *fixed, *diff) in train mode, differentiated with respect to the params of `names`
    and `diff` (the other params and `fixed` held constant)."""
    n = len(fixed)

    def f(v, *args):
      fixed_, sub, xs = args[:n], args[n], args[n + 1:]
      out, _ = module.apply({'params': {**v['params'], **sub}, 'batch_stats': v.get('batch_stats', {})},
                            *fixed_, *xs, method=method, mutable=['batch_stats'], rngs={'dropout': jax.random.key(1)})
      return out

    args = (variables, *fixed, {k: p[k] for k in names}, *diff)
    out = run(f'{name}/fwd', f, *args, count=count)
    run(f'{name}/fwd_bwd', _fwd_bwd(f, 1 + n), *args, count=count)
    return out

  feats = both('backbone', ['rgb_encoder'], lambda m, x: m.rgb_encoder(x, train=True), [batch['rgb']], [], count=2)
  names = ['rgb_mffm4', 'rgb_mffm3', 'rgb_mffm2', 'rgb_mffm1']
  xs = both('mffm', names, lambda m, fs: [getattr(m, k)(x, train=True) for k, x in zip(names, fs)], [],
            [list(feats)], count=2)
  refs = run('references/fwd', lambda v, r, fl: module.apply(v, r, fl, train=True, method='encode_references',
                                                             mutable=['batch_stats'],
                                                             rngs={'dropout': jax.random.key(1)})[0],
             variables, batch['ref_rgb'], batch['ref_flow'], count=1)
  slot_maps = ()
  if 'rgb_slots' in p:
    def slot_part(m, r, x3):
      out = m.rgb_slots(x3, r, kmeans_key=key, train=True)
      x3 = m.rgb_fusion(jnp.concatenate([x3, out['cos_agg'].astype(x3.dtype), out['cos_slots'].astype(x3.dtype)],
                                        axis=-1))
      return x3, out['slot_mask'][..., 0:1], out['cos_slots']

    x3, coarse, cos = both('slot_branch', ['rgb_slots', 'rgb_fusion'], slot_part, [refs['rgb']], [xs[2]], count=2)
    xs = [xs[0], xs[1], x3, xs[3]]
    fine = derive(lambda c: ((c[..., 0:1].astype(jnp.float32) + 1) / 2, 1 - (c[..., 1:2].astype(jnp.float32) + 1) / 2),
                  cos)
    slot_maps = (coarse, *fine) * 2   # both streams' maps have the same shapes

  def decode(m, xr, xf):
    fused = [fuse(a, b_, train=True) for fuse, a, b_ in zip((m.fuse1, m.fuse2, m.fuse3, m.fuse4), xr, xf)]
    return m.decoder(*fused, train=True)

  side = both('decoder', ['fuse1', 'fuse2', 'fuse3', 'fuse4', 'decoder'], decode, [], [xs, xs], count=1)

  def resize(side, maps):
    up = lambda m: ops.resize_bilinear_align_corners(m.astype(jnp.float32), size)
    return tuple(up(m) for m in side), tuple(up(m) for m in maps)

  def plain(name, f, fixed, diff, count):
    out = run(f'{name}/fwd', f, *fixed, *diff, count=count)
    run(f'{name}/fwd_bwd', _fwd_bwd(f, len(fixed)), *fixed, *diff, count=count)
    return out

  side_up, maps_up = plain('resizes', resize, [], [tuple(side), slot_maps], count=1)
  plain('loss', lambda mask, s, m: loss_fn({'side_logits': s, 'slot_maps': m}, mask), [batch['mask']],
        [side_up, maps_up], count=1)
  opt_state = jax.eval_shape(optimizer.init, p) if abstract else optimizer.init(p)

  def opt(grads, state, params):
    import optax  # pylint: disable=g-import-not-at-top
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  run('optimizer/fwd', opt, p, opt_state, p, count=1)
  return {}


def train_shares(parts: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
  """Per part: forward and backward ms (x calls per step), FLOPs, time share vs FLOP share of the step.

  `step`: dict(ms=, flops=) of the whole training step; 'other' = step - the parts.
  """
  rows = {}
  for name in TRAIN_PARTS:
    fwd, fb = parts.get(f'{name}/fwd'), parts.get(f'{name}/fwd_bwd')
    if fwd is None:
      continue
    n = fwd['count_per_call']
    row = dict(calls=n, fwd_ms=fwd['ms'] * n if fwd['ms'] is not None else None, fwd_flops=fwd['flops'] * n)
    if fb is not None:
      row['bwd_ms'] = (fb['ms'] - fwd['ms']) * n if fb['ms'] is not None else None
      row['bwd_flops'] = (fb['flops'] - fwd['flops']) * n
    else:
      row['bwd_ms'], row['bwd_flops'] = 0.0, 0.0
    row['ms'] = row['fwd_ms'] + row['bwd_ms'] if row['fwd_ms'] is not None else None
    row['flops'] = row['fwd_flops'] + row['bwd_flops']
    rows[name] = row
  timed = step.get('ms') is not None
  rows['other'] = dict(ms=step['ms'] - sum(r['ms'] for r in rows.values()) if timed else None,
                       flops=step['flops'] - sum(r['flops'] for r in rows.values()))
  for r in rows.values():
    r['time_share'] = r['ms'] / step['ms'] if timed and step['ms'] else None
    r['flop_share'] = r['flops'] / step['flops'] if step['flops'] else 0.0
  return dict(step=step, shares=rows, parts=parts,
              note='each part compiled alone; backward = fwd_bwd - fwd; k-means counted once by XLA (a loop)')
