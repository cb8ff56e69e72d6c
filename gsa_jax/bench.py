"""Speed, FLOPs and memory of GSA-Net: inference, training step, per-part breakdown and scaling sweeps.

  python -m gsa_jax.bench --config=configs/davis_mitb2.py --out=bench.json [--sizes=384,512] [--sweeps]
      [--quick] [--demo_config=configs/demo.py] [--plot=bench.png]
  python -m gsa_jax.bench --config=configs/davis_mitb2.py --out=flops.json --flops --notimings
      FLOPs only (lowered programs: nothing compiled, seconds instead of minutes).
  python -m gsa_jax.bench --config=configs/davis_mitb2.py --depthwise_study --sizes=384 --out=dw.json
      MiT backbone with the Mix-FFN depthwise conv as a grouped conv vs 9 shifted multiply-adds.

Reports, for the demo config (at its own image size) and for --config at each of --sizes:
  inference   frames/s at each of --batches, (a) with the reference features cached per video
              (`segment` on a precomputed `encode_references` output: the per-frame cost of a video whose
              references were encoded once) and (b) the full `__call__` (references re-encoded every
              frame); lowering/compile time, XLA FLOPs per frame, achieved FLOP/s and its fraction of the
              matmul peak measured in the same run on the same device;
  train       one jit'd step (value_and_grad of losses.total_loss + optax.adam, donated state): step time,
              examples/s, FLOPs per example;
  memory      host peak RSS (resource), device peak bytes (device.memory_stats(), GPU only) and XLA's own
              memory analysis of each compiled program (arguments, outputs, temporaries);
  breakdown   the same compiled sub-programs run alone at the real shapes: backbone, MFFMs, reference
              encoding, slot branch = slot generator (k-means inside) + guided slot attention (KNN top-k
              inside), the decoder; time and FLOP shares of a frame;
  sweeps      (--sweeps) resolution, N_R, M (clusters), T (slot iterations) and batch, with a PNG plot;
  kmeans      the k-means prototype study (ops.batched_kmeans against an unrolled variant, same outputs).
Results in docs/benchmarks.md.

Timing: every figure is the median of --repeats samples after --warmup calls; a sample is `number` calls
issued back to back and one block_until_ready (number > 1 only for sub-millisecond programs, so Python
dispatch does not dominate). Programs are compiled once (jit(...).lower(...).compile()) and the compiled
executable is what is timed. Parameters are random (values do not change the cost, except k-means which
runs a fixed number of iterations anyway).
"""

import copy
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

from gsa_jax.models.gsanet import losses
from gsa_jax.models.gsanet import network as models
from gsa_jax import ops
from gsa_jax.models.gsanet import slots as slots_lib

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/davis_mitb2.py', 'The model config to measure.')
_DEMO_CONFIG = flags.DEFINE_string('demo_config', 'configs/demo.py',
                                   'Also measure this config at its own data.image_size ("" = skip).')
_OUT = flags.DEFINE_string('out', 'bench.json', 'JSON output path.')
_PLOT = flags.DEFINE_string('plot', '', 'PNG path of the sweep plot (default: --out with .png).')
_SIZES = flags.DEFINE_list('sizes', ['384', '512'], 'Square input sizes for --config.')
_BATCHES = flags.DEFINE_list('batches', ['1', '8'], 'Inference batch sizes.')
_TRAIN_BATCH = flags.DEFINE_integer('train_batch', 8, 'Training-step batch size (0 = no training step).')
_TRAIN_SIZES = flags.DEFINE_list('train_sizes', [], 'Sizes of --config with a training step (default: all).')
_BREAKDOWN_SIZES = flags.DEFINE_list('breakdown_sizes', [], 'Sizes of --config with a breakdown (default: all).')
_PEAK_HIGHEST = flags.DEFINE_bool('peak_highest', False, 'GPU: also time the f32 matmul at HIGHEST precision.')
_BREAKDOWN_BATCHES = flags.DEFINE_list('breakdown_batches', ['1'], 'Batches of the per-part breakdown.')
_FULL_MAX_BATCH = flags.DEFINE_integer('full_max_batch', 64,
                                       'Skip the full __call__ (re-encoded references) above this batch.')
_NUM_REFS = flags.DEFINE_integer('num_refs', 0, 'N_R for --config (0 = config.data.num_refs).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed samples per figure (median reported).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed calls before timing.')
_SWEEPS = flags.DEFINE_bool('sweeps', False, 'Run the scaling sweeps.')
_SWEEP_SIZE = flags.DEFINE_integer('sweep_size', 384, 'Base size of the N_R/M/T/batch sweeps.')
_SWEEP_SIZES = flags.DEFINE_list('sweep_sizes', ['256', '320', '384', '448', '512'], 'Resolution sweep.')
_SWEEP_REFS = flags.DEFINE_list('sweep_refs', ['1', '2', '3', '4', '5'], 'N_R sweep.')
_SWEEP_CLUSTERS = flags.DEFINE_list('sweep_clusters', ['16', '32', '64', '128', '256'], 'M sweep.')
_SWEEP_ITERS = flags.DEFINE_list('sweep_iters', ['0', '1', '2', '3', '4', '5'], 'T sweep.')
_SWEEP_BATCHES = flags.DEFINE_list('sweep_batches', ['1', '2', '4', '8'], 'Batch sweep (cached refs).')
_FLOPS = flags.DEFINE_bool('flops', False, 'Add the FLOP-only report (lowered programs, batch 1) per size.')
_TIMINGS = flags.DEFINE_bool('timings', True, 'Compile and time (False with --flops: FLOPs only).')
_DEPTHWISE = flags.DEFINE_bool('depthwise_study', False, 'Only the MiT depthwise-conv study (at --sizes[0]).')
_PREDICT_FPS = flags.DEFINE_bool(
    'predict_fps', False, 'Only the predict path (gsa_jax.predict: references encoded once, batches of '
    '--predict_batch, DIS flow timed apart) against one full forward per frame, for the demo config and '
    '--config at each of --sizes.')
_PREDICT_BATCH = flags.DEFINE_integer('predict_batch', 4, 'Batch of the predict path (--predict_fps).')
_QUICK = flags.DEFINE_bool('quick', False, 'Few repeats, batch 1 only, training batch 1, short sweeps.')

DEFAULT_NUMBER_TARGET_S = 0.02  # a timing sample lasts at least this long (for sub-ms programs)


# ------------------------------------------------------------------------------------------------
# Environment, timing, compilation
# ------------------------------------------------------------------------------------------------

def _version(name: str) -> str:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version(name)
  except Exception:  # pylint: disable=broad-except
    return 'n/a'


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def environment() -> dict[str, Any]:
  """Device, versions and machine facts recorded with every result."""
  dev = jax.devices()[0]
  env = dict(
      backend=jax.default_backend(), device_kind=dev.device_kind, device_count=jax.device_count(),
      platform=dev.platform, python=sys.version.split()[0], machine=platform.machine(),
      cpu_model=_cpu_model(), cpu_count=os.cpu_count(),
      load_average_start=list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
      versions={n: _version(n) for n in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'ml_collections',
                                         'jax-cuda12-plugin', 'jax-cuda13-plugin')},
      xla_flags=os.environ.get('XLA_FLAGS', ''),
      time=time.strftime('%Y-%m-%d %H:%M:%S %Z'))
  return env


def block(x: Any) -> Any:
  return jax.block_until_ready(x)


def time_fn(fn: Callable[..., Any], *args: Any, warmup: int = 2, repeats: int = 5,
            number: int | None = None, chain: bool = False) -> dict[str, Any]:
  """Median wall time of fn(*args) (seconds per call) over `repeats` samples after `warmup` calls.

  chain=True: fn returns (new_first_arg, aux) and the next call takes the new first argument (a
  training step with a donated state). number=None picks the calls per sample so that a sample lasts at
  least DEFAULT_NUMBER_TARGET_S (1 for anything slower than that).
  """
  args = list(args)

  def call():
    out = fn(*args)
    if chain:
      args[0] = out[0]
    return out

  t0 = time.perf_counter()
  block(call())
  first = time.perf_counter() - t0
  for _ in range(max(warmup - 1, 0)):
    t0 = time.perf_counter()
    block(call())
    first = min(first, time.perf_counter() - t0)
  if number is None:
    number = 1 if first >= DEFAULT_NUMBER_TARGET_S else int(min(200, max(1, DEFAULT_NUMBER_TARGET_S / max(first, 1e-6))))
  samples = []
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    out = None
    for _ in range(number):
      out = call()
    block(out)
    samples.append((time.perf_counter() - t0) / number)
  return dict(median_s=statistics.median(samples), min_s=min(samples), max_s=max(samples),
              repeats=len(samples), number=number, samples_s=samples)


def _cost(compiled: Any) -> dict[str, float]:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {'flops': float(cost.get('flops', 0.0)), 'bytes_accessed': float(cost.get('bytes accessed', 0.0)),
          'transcendentals': float(cost.get('transcendentals', 0.0))}


def _memory_analysis(compiled: Any) -> dict[str, int]:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if m is None:
    return {}
  out = {}
  for name in ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
               'temp_size_in_bytes', 'generated_code_size_in_bytes'):
    if hasattr(m, name):
      out[name] = int(getattr(m, name))
  return out


@dataclasses.dataclass
class Program:
  """A compiled executable with its compile facts."""
  compiled: Any
  lower_s: float
  compile_s: float
  cost: dict[str, float]
  memory: dict[str, int]

  def info(self) -> dict[str, Any]:
    return dict(lower_s=self.lower_s, compile_s=self.compile_s, **self.cost, xla_memory=self.memory)


def compile_program(fn: Callable[..., Any], *args: Any, donate_argnums: Sequence[int] = (),
                    static_argnums: Sequence[int] = ()) -> Program:
  """jit(fn).lower(*args).compile(), timed; plus XLA cost and memory analysis."""
  jitted = jax.jit(fn, donate_argnums=tuple(donate_argnums), static_argnums=tuple(static_argnums))
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return Program(compiled, t1 - t0, t2 - t1, _cost(compiled), _memory_analysis(compiled))


_PROGRAMS: dict[Any, Program] = {}


def cached_program(key: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Program:
  """compile_program once per key (e.g. (what, model settings, batch, size, N_R)) in this process."""
  if key not in _PROGRAMS:
    _PROGRAMS[key] = compile_program(fn, *args, **kwargs)
  return _PROGRAMS[key]


def host_peak_rss_bytes() -> int:
  """Peak resident set size of this process so far (a high-water mark)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == 'darwin' else peak * 1024)


def device_memory() -> dict[str, int] | None:
  """device.memory_stats() of device 0 (peak/in-use bytes; None where the backend reports none, e.g. CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats:
    return None
  keys = ('peak_bytes_in_use', 'bytes_in_use', 'bytes_limit', 'largest_alloc_size')
  return {k: int(stats[k]) for k in keys if k in stats}


def memory_snapshot() -> dict[str, Any]:
  return dict(host_peak_rss_bytes=host_peak_rss_bytes(), device=device_memory())


# ------------------------------------------------------------------------------------------------
# The matmul peak
# ------------------------------------------------------------------------------------------------

def matmul_peak(dtype: Any = jnp.float32, n: int = 2048, *, precision: Any = None, repeats: int = 5,
                warmup: int = 2) -> dict[str, Any]:
  """FLOP/s of an n x n x n matmul of `dtype`, timed like everything else (the practical peak)."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
  prog = compile_program(lambda x, y: jnp.matmul(x, y, precision=precision), a, b)
  timing = time_fn(prog.compiled, a, b, warmup=warmup, repeats=repeats)
  flops = 2.0 * n ** 3
  return dict(dtype=jnp.dtype(dtype).name, n=n, precision=str(precision), flops=flops,
              xla_flops=prog.cost.get('flops', 0.0), flops_per_s=flops / timing['median_s'], **timing)


def measure_peaks(*, quick: bool, repeats: int, warmup: int, highest: bool = False) -> dict[str, Any]:
  backend = jax.default_backend()
  peaks = {}
  if backend == 'cpu':
    peaks['f32'] = matmul_peak(jnp.float32, 1024 if quick else 2048, repeats=repeats, warmup=warmup)
  else:
    n = 4096 if quick else 8192
    peaks['f32'] = matmul_peak(jnp.float32, n, repeats=repeats, warmup=warmup)
    if highest:
      peaks['f32_highest'] = matmul_peak(jnp.float32, n, precision=jax.lax.Precision.HIGHEST,
                                         repeats=repeats, warmup=warmup)
    peaks['bf16'] = matmul_peak(jnp.bfloat16, n, repeats=repeats, warmup=warmup)
  return peaks


# ------------------------------------------------------------------------------------------------
# Model set-up
# ------------------------------------------------------------------------------------------------

def load_config_file(path: str) -> Any:
  spec = importlib.util.spec_from_file_location('bench_config_module', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def min_size(model_config: Any) -> int:
  """Smallest multiple of 32 with at least num_clusters pixels at 1/16 scale."""
  side = int(np.ceil(np.sqrt(model_config.num_clusters))) * 16
  return max(64, int(np.ceil(side / 32)) * 32)


def init_variables(model_config: Any, seed: int = 0, *, fast: bool = True) -> tuple[Any, Any]:
  """(model, variables); parameters do not depend on the input size, N_R, M or T.

  fast=True: models.random_variables of jax.eval_shape(model.init), filled on the host. No init program
  is compiled (compiling MiT-B2's init took minutes); values do not change the cost.
  fast=False: models.init_variables, jit'd at the smallest valid size.
  """
  model = models.build_model(model_config)
  settings = models.ModelSettings.from_config(model_config)
  inputs = models.example_inputs(settings, batch=1, size=min_size(model_config), num_refs=1)
  init = lambda k, i: models.init_variables(model, k, i)
  if fast:
    variables = models.random_variables(jax.eval_shape(init, jax.random.key(seed), inputs), seed)
  else:
    variables = jax.jit(init)(jax.random.key(seed), inputs)
  return model, {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def make_inputs(batch: int, size: int, num_refs: int, seed: int = 0) -> dict[str, jax.Array]:
  """Random NHWC inputs (ImageNet-normalised-like rgb, [0,1] flow) and a binary mask."""
  rng = np.random.default_rng(seed)
  img = lambda *s: jnp.asarray(rng.standard_normal(s, np.float32))
  flo = lambda *s: jnp.asarray(rng.random(s, np.float32))
  mask = (rng.random((batch, size, size, 1)) > 0.5).astype(np.float32)
  return dict(rgb=img(batch, size, size, 3), flow=flo(batch, size, size, 3),
              ref_rgb=img(batch, num_refs, size, size, 3), ref_flow=flo(batch, num_refs, size, size, 3),
              mask=jnp.asarray(mask))


def with_model(config: Any, **model_overrides: Any) -> Any:
  """A copy of config with model fields replaced (existing fields only, so a locked config works)."""
  c = copy.deepcopy(config)
  for k, v in model_overrides.items():
    setattr(c.model, k, v)
  return c


# ------------------------------------------------------------------------------------------------
# Inference and training
# ------------------------------------------------------------------------------------------------

def _encoder_settings(model) -> Any:
  """The settings encode_references depends on (not the slot branch's)."""
  return dataclasses.replace(model.settings, slots=slots_lib.SlotConfig())


def _fn_full(model):
  def full(variables, rgb, flow, ref_rgb, ref_flow, key):
    return model.apply(variables, rgb, flow, ref_rgb, ref_flow, train=False, kmeans_key=key)['logits']
  return full


def _fn_encode(model):
  def encode(variables, ref_rgb, ref_flow):
    return model.apply(variables, ref_rgb, ref_flow, train=False, method=models.GSANet.encode_references)
  return encode


def _fn_segment(model):
  def segment(variables, rgb, flow, refs, key):
    return model.apply(variables, rgb, flow, refs, train=False, kmeans_key=key,
                       method=models.GSANet.segment)['logits']
  return segment


def _throughput(info: dict[str, Any], timing: dict[str, Any], frames: int, peak: float | None) -> dict[str, Any]:
  flops = info.get('flops', 0.0)
  out = dict(frames_per_s=frames / timing['median_s'], ms_per_frame=1e3 * timing['median_s'] / frames,
             flops_per_frame=flops / frames, achieved_flops_per_s=flops / timing['median_s'])
  if peak:
    out['fraction_of_matmul_peak'] = out['achieved_flops_per_s'] / peak
  return out


def bench_inference(model, variables, *, batch: int, size: int, num_refs: int, peak: float | None,
                    repeats: int, warmup: int, full: bool = True) -> dict[str, Any]:
  """Cached-reference (segment) and full (__call__) inference at one batch and size."""
  x = make_inputs(batch, size, num_refs)
  key = jax.random.key(0)
  res: dict[str, Any] = dict(batch=batch, size=size, num_refs=num_refs)
  shape_key = (model.settings, batch, size, num_refs)
  # The compiled encode takes the whole variables tree: its key holds their shapes too (M changes them).
  shapes = tuple(np.shape(leaf) for leaf in jax.tree.leaves(variables))
  enc_key = ('encode', _encoder_settings(model), shapes, batch, size, num_refs)
  enc = cached_program(enc_key, _fn_encode(model), variables, x['ref_rgb'], x['ref_flow'])
  refs = block(enc.compiled(variables, x['ref_rgb'], x['ref_flow']))
  t = time_fn(enc.compiled, variables, x['ref_rgb'], x['ref_flow'], warmup=warmup, repeats=repeats)
  res['encode_references'] = dict(**enc.info(), timing=t, ms_per_video=1e3 * t['median_s'] / batch)

  seg = cached_program(('segment',) + shape_key, _fn_segment(model), variables, x['rgb'], x['flow'], refs, key)
  t = time_fn(seg.compiled, variables, x['rgb'], x['flow'], refs, key, warmup=warmup, repeats=repeats)
  res['cached'] = dict(**seg.info(), timing=t, **_throughput(seg.info(), t, batch, peak))

  if full:
    prog = cached_program(('full',) + shape_key, _fn_full(model), variables, x['rgb'], x['flow'], x['ref_rgb'],
                          x['ref_flow'], key)
    t = time_fn(prog.compiled, variables, x['rgb'], x['flow'], x['ref_rgb'], x['ref_flow'], key,
                warmup=warmup, repeats=repeats)
    res['full'] = dict(**prog.info(), timing=t, **_throughput(prog.info(), t, batch, peak))
  res['memory'] = memory_snapshot()
  return res


def make_train_step(model, tx, *, loss_variant: str = 'official', aux_weight: float = 1.0):
  """The jit-able step: (state, batch, key) -> (state, loss); state = params, batch_stats, opt_state."""
  def step(state, batch, key):
    dropout_key, kmeans_key = jax.random.split(key)

    def loss_fn(params):
      outputs, mutated = model.apply(
          {'params': params, 'batch_stats': state['batch_stats']}, batch['rgb'], batch['flow'],
          batch['ref_rgb'], batch['ref_flow'], train=True, kmeans_key=kmeans_key,
          rngs={'dropout': dropout_key}, mutable=['batch_stats'])
      loss, _ = losses.total_loss(outputs, batch['mask'], variant=loss_variant, aux_weight=aux_weight)
      return loss, mutated.get('batch_stats', {})

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    return dict(params=params, batch_stats=batch_stats, opt_state=opt_state), loss
  return step


def bench_train(model, variables, config, *, batch: int, size: int, num_refs: int, peak: float | None,
                repeats: int, warmup: int) -> dict[str, Any]:
  """One jit'd training step with a donated state (adam, losses.total_loss)."""
  tx = optax.adam(config.train.learning_rate, b1=config.train.b1, b2=config.train.b2, eps=config.train.eps)
  params = jax.tree.map(jnp.array, variables['params'])  # a copy: the state is donated
  state = dict(params=params, batch_stats=jax.tree.map(jnp.array, variables['batch_stats']),
               opt_state=tx.init(params))
  x = make_inputs(batch, size, num_refs)
  key = jax.random.key(1)
  step = make_train_step(model, tx, loss_variant=config.train.loss, aux_weight=config.train.aux_loss_weight)
  prog = compile_program(step, state, x, key, donate_argnums=(0,))
  t = time_fn(prog.compiled, state, x, key, warmup=warmup, repeats=repeats, chain=True, number=1)
  info = prog.info()
  out = dict(batch=batch, size=size, num_refs=num_refs, **info, timing=t,
             step_s=t['median_s'], examples_per_s=batch / t['median_s'],
             flops_per_example=info.get('flops', 0.0) / batch,
             achieved_flops_per_s=info.get('flops', 0.0) / t['median_s'], memory=memory_snapshot())
  if peak:
    out['fraction_of_matmul_peak'] = out['achieved_flops_per_s'] / peak
  return out


# ------------------------------------------------------------------------------------------------
# Where the time goes
# ------------------------------------------------------------------------------------------------

def kmeans_unrolled(x: jnp.ndarray, key: jax.Array, num_clusters: int, num_iters: int = 10,
                    init: str = 'random') -> ops.KMeansResult:
  """ops.batched_kmeans with the Lloyd loop unrolled (a speed prototype; same arithmetic, same outputs)."""
  def one(xi, ki):
    xi = jax.lax.stop_gradient(xi.astype(jnp.float32))
    centroids = ops.kmeans_init(xi, ki, num_clusters, init)
    labels = jnp.zeros((xi.shape[0],), jnp.int32)
    for _ in range(num_iters):
      labels = jnp.argmin(ops.pairwise_sq_distances(xi, centroids), axis=-1).astype(jnp.int32)
      onehot = jax.nn.one_hot(labels, num_clusters, dtype=xi.dtype)
      counts = jnp.sum(onehot, axis=0)
      sums = jnp.einsum('nm,nc->mc', onehot, xi)
      centroids = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], 0.0)
    return ops.KMeansResult(centroids, labels)
  keys = jax.random.split(key, x.shape[0])
  return jax.vmap(one)(x, keys)


def kmeans_study(*, batch: int, points: int, dim: int, clusters: int, iters: int, repeats: int,
                 warmup: int) -> dict[str, Any]:
  """ops.batched_kmeans (fori_loop) against kmeans_unrolled at the real shapes: time, FLOPs, equality."""
  x = jax.random.normal(jax.random.key(3), (batch, points, dim), jnp.float32)
  key = jax.random.key(4)
  out = dict(batch=batch, points=points, dim=dim, clusters=clusters, iters=iters,
             analytic_flops=kmeans_flops(batch=batch, points=points, clusters=clusters, dim=dim, iters=iters))
  results = {}
  for name, fn in (('fori_loop', ops.batched_kmeans), ('unrolled', kmeans_unrolled)):
    prog = compile_program(lambda x, k, fn=fn: fn(x, k, clusters, iters), x, key)
    results[name] = block(prog.compiled(x, key))
    out[name] = dict(**prog.info(), timing=time_fn(prog.compiled, x, key, warmup=warmup, repeats=repeats))
  a, b = results['fori_loop'], results['unrolled']
  out['identical_assignments'] = bool(np.array_equal(np.asarray(a.assignments), np.asarray(b.assignments)))
  out['identical_centroids'] = bool(np.array_equal(np.asarray(a.centroids), np.asarray(b.centroids)))
  out['max_abs_centroid_diff'] = float(np.max(np.abs(np.asarray(a.centroids) - np.asarray(b.centroids))))
  out['speedup'] = out['fori_loop']['timing']['median_s'] / out['unrolled']['timing']['median_s']
  return out


def kmeans_flops(*, batch: int, points: int, clusters: int, dim: int, iters: int) -> float:
  """FLOPs of Lloyd's k-means: per iteration distances (2nmc + 3nm) and member sums (2nmc)."""
  return float(batch * iters * (4 * points * clusters * dim + 3 * points * clusters))


def bench_breakdown(model, variables, config, *, batch: int, size: int, num_refs: int, repeats: int,
                    warmup: int, timed: bool = True) -> dict[str, Any]:
  """Times and FLOPs of the model's parts, each compiled alone at the real shapes (eval mode).

  Per frame with cached references: 2 x (backbone + 4 MFFMs + slot branch) + decoder (+ the fusion
  convs, cosine maps and output resize, which make up 'other' = segment - the parts). The slot branch
  is split into the slot generator (k-means inside) and guided slot attention (KNN top-k inside); the
  full __call__ adds encode_references (2 x N_R x (backbone + MFFM1)).
  """
  settings = models.ModelSettings.from_config(config.model)
  cfg = settings.slots
  dt = settings.compute_dtype
  x = make_inputs(batch, size, num_refs)
  key = jax.random.key(0)
  parts: dict[str, Any] = {}

  def run(name, fn, *args, count=1.0):
    if not timed:  # FLOPs of the lowered (unoptimised) program only; no compile, no run.
      parts[name] = dict(count_per_call=count, flops=_cost(jax.jit(fn).lower(*args)).get('flops', 0.0), ms=None)
      return jax.eval_shape(fn, *args)
    prog = compile_program(fn, *args)
    out = block(prog.compiled(*args))
    t = time_fn(prog.compiled, *args, warmup=warmup, repeats=repeats)
    parts[name] = dict(count_per_call=count, flops=prog.cost.get('flops', 0.0), compile_s=prog.compile_s,
                       ms=1e3 * t['median_s'], timing=t)
    return out

  apply = lambda method: (lambda v, *a: model.apply(v, *a, method=method))
  feats = run('backbone', apply(lambda m, img: m.rgb_encoder(img.astype(dt), train=False)), variables,
              x['rgb'], count=2)
  mffm_out = run('mffm', apply(lambda m, f: [m.rgb_mffm4(f[0], train=False), m.rgb_mffm3(f[1], train=False),
                                             m.rgb_mffm2(f[2], train=False), m.rgb_mffm1(f[3], train=False)]),
                 variables, feats, count=2)
  if timed:
    enc = cached_program(('encode', _encoder_settings(model), batch, size, num_refs), _fn_encode(model), variables,
                         x['ref_rgb'], x['ref_flow'])
    refs = block(enc.compiled(variables, x['ref_rgb'], x['ref_flow']))
    t = time_fn(enc.compiled, variables, x['ref_rgb'], x['ref_flow'], warmup=warmup, repeats=repeats)
    parts['encode_references'] = dict(count_per_call=0, flops=enc.cost.get('flops', 0.0), compile_s=enc.compile_s,
                                      ms=1e3 * t['median_s'], timing=t)
  else:
    refs = run('encode_references', _fn_encode(model), variables, x['ref_rgb'], x['ref_flow'], count=0)
  x3, rref = mffm_out[2], refs['rgb']
  p = variables['params']
  if settings.has_slot_branch:
    run('slot_branch', apply(lambda m, a, r, k: m.rgb_slots(a, r, kmeans_key=k, train=False)),
        variables, x3, rref, key, count=2)
    gen_mod = slots_lib.SlotGenerator(cfg, dtype=dt)
    gen = run('slot_generator', lambda v, a, r, k: gen_mod.apply(v, a, r, kmeans_key=k, train=False),
              {'params': p['rgb_slots']['generator']}, x3, rref, key, count=2)
    b, h, w, c = x3.shape
    tokens = (gen['sqz'].reshape(b, h * w, c) if timed else
              jax.ShapeDtypeStruct((b, h * w, c), gen['sqz'].dtype))
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
  mffm_f = [jnp.asarray(a) for a in mffm_out] if timed else list(mffm_out)

  def decode(m, xr, xf):
    fused = [fuse(a, b_, train=False) for fuse, a, b_ in
             zip((m.fuse1, m.fuse2, m.fuse3, m.fuse4), xr, xf)]
    return models._resize_out(m.decoder(*fused, train=False)[0], (size, size))  # pylint: disable=protected-access
  run('decoder', apply(decode), variables, mffm_f, mffm_f, count=1)

  # The whole frame, for the shares.
  shape_key = (model.settings, batch, size, num_refs)
  if not timed:
    seg_flops = _cost(jax.jit(_fn_segment(model)).lower(variables, x['rgb'], x['flow'], refs, key)).get('flops', 0.0)
    full_flops = _cost(jax.jit(_fn_full(model)).lower(variables, x['rgb'], x['flow'], x['ref_rgb'], x['ref_flow'],
                                                      key)).get('flops', 0.0)
    return _shares(parts, settings, batch=batch, size=size, num_refs=num_refs, seg_ms=None, seg_flops=seg_flops,
                   full_ms=None, full_flops=full_flops)
  seg = cached_program(('segment',) + shape_key, _fn_segment(model), variables, x['rgb'], x['flow'], refs, key)
  seg_t = time_fn(seg.compiled, variables, x['rgb'], x['flow'], refs, key, warmup=warmup, repeats=repeats)
  seg_ms, seg_flops = 1e3 * seg_t['median_s'], seg.cost.get('flops', 0.0)
  full = cached_program(('full',) + shape_key, _fn_full(model), variables, x['rgb'], x['flow'], x['ref_rgb'],
                        x['ref_flow'], key)
  full_t = time_fn(full.compiled, variables, x['rgb'], x['flow'], x['ref_rgb'], x['ref_flow'], key,
                   warmup=warmup, repeats=repeats)
  full_ms, full_flops = 1e3 * full_t['median_s'], full.cost.get('flops', 0.0)

  return _shares(parts, settings, batch=batch, size=size, num_refs=num_refs, seg_ms=seg_ms, seg_flops=seg_flops,
                 full_ms=full_ms, full_flops=full_flops)


def _shares(parts, settings, *, batch, size, num_refs, seg_ms, seg_flops, full_ms, full_flops) -> dict[str, Any]:
  """Time and FLOP shares of the cached-reference frame (segment): the top-level parts add up, 'other' is
  the rest (fusion convs, cosine maps, output resize). XLA's cost analysis counts a while-loop body once,
  so the k-means FLOPs (a fori_loop) are replaced by their analytic count, and segment/full corrected."""
  cfg = settings.slots
  if 'kmeans' in parts:
    pts = (size // 16) ** 2
    true = kmeans_flops(batch=batch, points=pts, clusters=cfg.num_clusters, dim=settings.dim, iters=cfg.kmeans_iters)
    missing = (true - parts['kmeans']['flops']) * parts['kmeans']['count_per_call']
    parts['kmeans']['xla_flops'] = parts['kmeans']['flops']
    parts['kmeans']['flops'] = true
    for name in ('slot_branch', 'slot_generator'):
      if name in parts:
        parts[name]['flops'] += missing / parts[name]['count_per_call']
    seg_flops += missing
    full_flops += missing
  timed = seg_ms is not None
  shares = {}
  for name in ['backbone', 'mffm', 'slot_branch', 'decoder']:
    if name in parts:
      q = parts[name]
      shares[name] = dict(ms=q['ms'] * q['count_per_call'] if timed else None,
                          flops=q['flops'] * q['count_per_call'])
  shares['other'] = dict(ms=seg_ms - sum(s['ms'] for s in shares.values()) if timed else None,
                         flops=seg_flops - sum(s['flops'] for s in shares.values()))
  for name in ('slot_generator', 'kmeans', 'guided_slot_attention', 'knn_topk'):
    if name in parts:
      q = parts[name]
      shares[name] = dict(ms=q['ms'] * q['count_per_call'] if timed else None,
                          flops=q['flops'] * q['count_per_call'], within='slot_branch')
  for s in shares.values():
    s['time_share'] = s['ms'] / seg_ms if timed and seg_ms else None
    s['flop_share'] = s['flops'] / seg_flops if seg_flops else 0.0
  enc = parts['encode_references']
  return dict(batch=batch, size=size, num_refs=num_refs, timed=timed, parts=parts,
              segment=dict(ms=seg_ms, flops=seg_flops), full=dict(ms=full_ms, flops=full_flops),
              segment_shares=shares,
              full_shares=dict(encode_references=dict(
                  ms=enc['ms'], flops=enc['flops'],
                  time_share=enc['ms'] / full_ms if timed and full_ms else None,
                  flop_share=enc['flops'] / full_flops if full_flops else 0.0)),
              note='k-means FLOPs are analytic (XLA counts a while-loop body once); segment/full corrected.')


def flop_report(config: Any, *, sizes: Sequence[int], batch: int, num_refs: int, train_batch: int = 0,
                model_and_vars: tuple[Any, Any] | None = None) -> list[dict[str, Any]]:
  """FLOPs only (lowered programs, nothing compiled or run): per-part breakdown and the training step."""
  model, variables = model_and_vars or init_variables(config.model, config.seed)
  out = []
  for size in sizes:
    r = bench_breakdown(model, variables, config, batch=batch, size=size, num_refs=num_refs, repeats=0, warmup=0,
                        timed=False)
    if train_batch:
      tx = optax.adam(config.train.learning_rate)
      state = dict(params=variables['params'], batch_stats=variables['batch_stats'],
                   opt_state=jax.eval_shape(tx.init, variables['params']))
      x = make_inputs(train_batch, size, num_refs)
      step = make_train_step(model, tx, loss_variant=config.train.loss, aux_weight=config.train.aux_loss_weight)
      flops = _cost(jax.jit(step).lower(state, x, jax.random.key(1))).get('flops', 0.0)
      r['train'] = dict(batch=train_batch, xla_flops_per_example=flops / train_batch,
                        note='XLA count; k-means while loop counted once (forward only, no gradient through it)')
    out.append(r)
  return out


def depthwise_study(*, backbone: str = 'mit_b2', batch: int = 1, size: int = 384, repeats: int = 3,
                    warmup: int = 1) -> dict[str, Any]:
  """The MiT backbone with its Mix-FFN depthwise conv as a grouped convolution against 9 shifted
  multiply-adds (mit.DepthwiseConv3x3 impl 'grouped' vs 'shifted', same parameters) on the current
  backend: time, FLOPs, output difference."""
  from gsa_jax.backbones import mit  # pylint: disable=g-import-not-at-top
  if backbone not in mit.MIT_CONFIGS:
    raise ValueError(f'The depthwise study needs a MiT backbone, not {backbone!r}.')
  img = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32)
  nets = {impl: mit.MixTransformer(mit.MIT_CONFIGS[backbone], depthwise_impl=impl)
          for impl in ('grouped', 'shifted')}
  shapes = jax.eval_shape(lambda k: nets['grouped'].init(k, img[:, :64, :64], train=False), jax.random.key(0))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda l: jnp.asarray(0.05 * rng.standard_normal(l.shape), l.dtype), shapes)
  out: dict[str, Any] = dict(backbone=backbone, batch=batch, size=size, backend=jax.default_backend())
  results = {}
  for impl, net in nets.items():
    name = 'grouped_conv' if impl == 'grouped' else impl
    prog = compile_program(lambda v, x, net=net: net.apply(v, x, train=False), variables, img)
    results[name] = block(prog.compiled(variables, img))
    out[name] = dict(**prog.info(), timing=time_fn(prog.compiled, variables, img, warmup=warmup, repeats=repeats))
  diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(results['grouped_conv'], results['shifted'])]
  out['max_abs_diff_per_stage'] = diffs
  out['identical'] = all(d == 0.0 for d in diffs)
  out['speedup'] = out['grouped_conv']['timing']['median_s'] / out['shifted']['timing']['median_s']
  return out


def bench_predict_path(config: Any, *, image_size: int = 384, num_frames: int = 8, batch_size: int = 4,
                       repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
  """Frames/s of predict's model path (gsa_jax.predict) against one full forward (GSANet.__call__) per frame.

  cached: one video of `num_frames` frames as segment_video runs it (encode the N_R references once,
  then batches of `batch_size` through the compiled batch program); uncached: `full_forward` frame by
  frame, re-encoding the references every time. Medians over `repeats` passes after `warmup`, compilation
  excluded (reported apart). DIS flow is timed on a synthetic video of the same size to give the rates with
  flow included. Random weights (the cost does not depend on them).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gsa_jax import predict  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  if num_frames % batch_size:
    raise ValueError(f'num_frames={num_frames} must be a multiple of batch_size={batch_size}.')
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.image_size = image_size
  config.eval.batch_size = batch_size
  model, variables = init_variables(config.model)
  t = int(config.data.num_refs)
  scene = synthetic.make_scene(np.random.default_rng(0), image_size=image_size, num_frames=num_frames + 1,
                               difficulty=0.5)
  frames = list(synthetic.to_uint8(synthetic.render_video(scene)['rgb']))
  flow_timing = time_fn(lambda: predict.ComputedFlow('dis').for_frames(0, frames[:-1], frames[-1], None),
                        warmup=0, repeats=repeats, number=1)
  flow_s = flow_timing['median_s'] / num_frames
  flows = predict.ComputedFlow('dis').for_frames(0, frames[:-1], frames[-1], None)
  rgb, flow = predict.preprocess_rgb(frames[:-1], image_size), predict.preprocess_flow(flows, image_size)
  refs = predict.reference_indices(num_frames, t)
  segmenter = predict.ModelSegmenter(model, variables, config)

  def video_pass():
    references = segmenter.encode(rgb[refs][None], flow[refs][None])
    return [segmenter.segment(rgb[s:s + batch_size], flow[s:s + batch_size], references,
                              np.arange(s, s + batch_size)) for s in range(0, num_frames, batch_size)]

  video_pass()  # compiles both programs
  cached_s = time_fn(video_pass, warmup=warmup, repeats=repeats, number=1)['median_s'] / num_frames
  forward = predict.full_forward(model, int(config.eval.kmeans_seed))
  ref_rgb, ref_flow = jnp.asarray(rgb[refs][None]), jnp.asarray(flow[refs][None])
  params = segmenter.variables
  start = time.perf_counter()
  compiled = forward.lower(params, rgb[:1], flow[:1], ref_rgb, ref_flow, 0).compile()
  full_compile_s = time.perf_counter() - start
  uncached_s = time_fn(lambda: compiled(params, rgb[:1], flow[:1], ref_rgb, ref_flow, 0),
                       warmup=warmup + 1, repeats=repeats, number=1)['median_s']
  return {'image_size': image_size, 'num_refs': t, 'batch_size': batch_size, 'num_frames': num_frames,
          'backbone': config.model.backbone,
          'cached_fps': 1.0 / cached_s, 'cached_fps_with_flow': 1.0 / (cached_s + flow_s),
          'uncached_fps': 1.0 / uncached_s, 'uncached_fps_with_flow': 1.0 / (uncached_s + flow_s),
          'flow_s_per_frame': flow_s, 'speedup': uncached_s / cached_s,
          'compile_s': segmenter.compile_seconds, 'full_compile_s': full_compile_s}


# ------------------------------------------------------------------------------------------------
# One config, sweeps
# ------------------------------------------------------------------------------------------------

def bench_config(config: Any, *, name: str, size: int, batches: Sequence[int], train_batch: int,
                 breakdown_batches: Sequence[int], num_refs: int, peak: float | None, repeats: int,
                 warmup: int, full_max_batch: int = 64, model_and_vars: tuple[Any, Any] | None = None,
                 log: Callable[[str], None] = print, into: list[Any] | None = None,
                 on_step: Callable[[], None] = lambda: None) -> dict[str, Any]:
  """Inference at each batch, one training step and the breakdown, for one config at one size.

  into: a list the (growing) result is appended to first; on_step is called after every stage (so a run
  stopped part-way still leaves what it measured).
  """
  t0 = time.perf_counter()
  model, variables = model_and_vars or init_variables(config.model, config.seed)
  variables = block(variables)
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables['params']))
  res: dict[str, Any] = dict(name=name, size=size, num_refs=num_refs, backbone=config.model.backbone,
                             num_params=n_params, model=config.model.to_dict(), inference=[],
                             init_s=time.perf_counter() - t0)
  if into is not None:
    into.append(res)
  for b in batches:
    log(f'[{name} {size}] inference batch {b}')
    r = bench_inference(model, variables, batch=b, size=size, num_refs=num_refs, peak=peak,
                        repeats=repeats, warmup=warmup, full=b <= full_max_batch)
    res['inference'].append(r)
    on_step()
    log(f'  cached {r["cached"]["frames_per_s"]:.3f} fps' +
        (f', full {r["full"]["frames_per_s"]:.3f} fps' if 'full' in r else ''))
  if train_batch > 0:
    log(f'[{name} {size}] train step batch {train_batch}')
    res['train'] = bench_train(model, variables, config, batch=train_batch, size=size, num_refs=num_refs,
                               peak=peak, repeats=max(2, repeats - 2), warmup=max(1, warmup - 1))
    on_step()
    log(f'  {res["train"]["step_s"]:.3f} s/step, {res["train"]["examples_per_s"]:.3f} ex/s')
  res['breakdown'] = []
  for b in breakdown_batches:
    log(f'[{name} {size}] breakdown batch {b}')
    res['breakdown'].append(bench_breakdown(model, variables, config, batch=b, size=size, num_refs=num_refs,
                                            repeats=repeats, warmup=warmup))
    on_step()
  res['memory'] = memory_snapshot()
  res['wall_s'] = time.perf_counter() - t0
  return res


def _segment_and_full(model, variables, *, batch, size, num_refs, repeats, warmup, full=True):
  r = bench_inference(model, variables, batch=batch, size=size, num_refs=num_refs, peak=None,
                      repeats=repeats, warmup=warmup, full=full)
  out = dict(cached_ms_per_frame=r['cached']['ms_per_frame'], cached_flops_per_frame=r['cached']['flops_per_frame'],
             cached_compile_s=r['cached']['compile_s'],
             encode_ms_per_video=r['encode_references']['ms_per_video'])
  if full:
    out.update(full_ms_per_frame=r['full']['ms_per_frame'], full_flops_per_frame=r['full']['flops_per_frame'])
  return out


def run_sweeps(config: Any, variables: Any, *, base_size: int, num_refs: int, sizes: Sequence[int],
               refs: Sequence[int], clusters: Sequence[int], iters: Sequence[int], batches: Sequence[int],
               repeats: int, warmup: int, log: Callable[[str], None] = print, into: dict[str, Any] | None = None,
               on_point: Callable[[], None] = lambda: None) -> dict[str, Any]:
  """Batch-1 inference (cached and full) over resolution, N_R, M and T; cached over batch.

  `variables` serve the resolution, N_R and batch points (the parameters do not depend on them); M changes
  the fusion convs' input width, so the M and T points get variables of their own model.
  """
  sweeps = into if into is not None else {}
  sweeps.update({k: [] for k in ('resolution', 'num_refs', 'num_clusters', 'slot_iters', 'batch')})
  base_model = models.build_model(config.model)
  common = dict(repeats=repeats, warmup=warmup)
  for s in sizes:
    log(f'sweep resolution {s}')
    sweeps['resolution'].append(dict(value=s, **_segment_and_full(base_model, variables, batch=1, size=s,
                                                                  num_refs=num_refs, **common)))
    on_point()
  for n in refs:
    log(f'sweep N_R {n}')
    sweeps['num_refs'].append(dict(value=n, **_segment_and_full(base_model, variables, batch=1, size=base_size,
                                                                num_refs=n, **common)))
    on_point()
  for m in clusters:
    if (base_size // 16) ** 2 < m:
      continue
    log(f'sweep M {m}')
    model, v = init_variables(with_model(config, num_clusters=m, knn_k=min(config.model.knn_k, m)).model,
                              config.seed)
    sweeps['num_clusters'].append(dict(value=m, **_segment_and_full(
        model, v, batch=1, size=base_size, num_refs=num_refs, full=False, **common)))
    on_point()
  for t in iters:
    log(f'sweep T {t}')
    model, v = init_variables(with_model(config, slot_iters=t).model, config.seed)
    sweeps['slot_iters'].append(dict(value=t, **_segment_and_full(
        model, v, batch=1, size=base_size, num_refs=num_refs, full=False, **common)))
    on_point()
  for b in batches:
    log(f'sweep batch {b}')
    r = _segment_and_full(base_model, variables, batch=b, size=base_size, num_refs=num_refs, full=False, **common)
    r['cached_frames_per_s'] = 1e3 / r['cached_ms_per_frame']
    sweeps['batch'].append(dict(value=b, **r))
    on_point()
  return sweeps


def plot_sweeps(sweeps: dict[str, Any], results: Sequence[dict[str, Any]], path: str, title: str = '') -> None:
  """One PNG: ms/frame against each swept value, plus the time-vs-FLOP shares of the breakdown."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
  labels = dict(resolution='input size (px)', num_refs='N_R (reference frames)', num_clusters='M (k-means clusters)',
                slot_iters='T (slot-attention iterations)', batch='batch (cached refs)')
  for ax, key in zip(axes.flat, labels):
    pts = (sweeps or {}).get(key) or []
    if pts:
      xs = [p['value'] for p in pts]
      ax.plot(xs, [p['cached_ms_per_frame'] for p in pts], 'o-', label='cached refs (segment)')
      if 'full_ms_per_frame' in pts[0]:
        ax.plot(xs, [p['full_ms_per_frame'] for p in pts], 's--', label='full __call__')
      ax.legend(fontsize=8)
    ax.set_xlabel(labels[key])
    ax.set_ylabel('ms / frame')
    ax.set_ylim(bottom=0)  # from zero, so that run-to-run noise does not look like a trend
    ax.grid(alpha=0.3)
  ax = axes.flat[5]
  bd = None
  for r in results:
    if r.get('breakdown'):
      bd = r['breakdown'][0]
      bd_name = f'{r["name"]} {r["size"]}px b{bd["batch"]}'
  if bd:
    names = [n for n, s in bd['segment_shares'].items() if 'within' not in s]
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, [bd['segment_shares'][n]['time_share'] for n in names], 0.4, label='time share')
    ax.bar(xs + 0.2, [bd['segment_shares'][n]['flop_share'] for n in names], 0.4, label='FLOP share')
    ax.set_xticks(xs, names, rotation=20, fontsize=8)
    ax.set_title(f'per-frame shares ({bd_name})', fontsize=9)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def _ints(values: Sequence[str]) -> list[int]:
  return [int(v) for v in values if str(v).strip()]


def run_all(config: Any, *, demo_config: Any | None, sizes: Sequence[int], batches: Sequence[int],
            train_batch: int, breakdown_batches: Sequence[int], num_refs: int, repeats: int, warmup: int,
            quick: bool, sweeps: bool, sweep_kwargs: dict[str, Any] | None = None, full_max_batch: int = 64,
            out: str | None = None, log: Callable[[str], None] = print, train_sizes: Sequence[int] = (),
            breakdown_sizes: Sequence[int] = (), peak_highest: bool = False, flops: bool = False,
            timings: bool = True) -> dict[str, Any]:
  """Everything main() does, as a function (the tests call it at a tiny size)."""
  report: dict[str, Any] = dict(env=environment(), settings=dict(
      sizes=list(sizes), batches=list(batches), train_batch=train_batch, breakdown_batches=list(breakdown_batches),
      repeats=repeats, warmup=warmup, quick=quick), results=[])

  def save():
    report['memory_end'] = memory_snapshot()
    if out:
      with open(out, 'w') as f:
        json.dump(report, f, indent=1, default=str)

  nr = num_refs or config.data.num_refs
  mv = init_variables(config.model, config.seed)
  if flops:
    log('FLOP report (lowered programs)')
    report['flops'] = flop_report(config, sizes=sizes, batch=1, num_refs=nr, train_batch=train_batch,
                                  model_and_vars=mv)
    save()
  if not timings:
    return report
  log('matmul peak')
  report['matmul_peak'] = measure_peaks(quick=quick, repeats=repeats, warmup=warmup, highest=peak_highest)
  peak = report['matmul_peak']['f32']['flops_per_s']
  save()
  common = dict(batches=batches, peak=peak, repeats=repeats, warmup=warmup,
                full_max_batch=full_max_batch, log=log)
  common.update(into=report['results'], on_step=save)
  if demo_config is not None:
    bench_config(
        demo_config, name='demo', size=demo_config.data.image_size, train_batch=min(train_batch, demo_config.train.batch_size) if train_batch else 0,
        num_refs=demo_config.data.num_refs, breakdown_batches=breakdown_batches, **common)
    save()
  for s in sizes:
    tb = train_batch if not train_sizes or s in train_sizes else 0
    bb = breakdown_batches if not breakdown_sizes or s in breakdown_sizes else []
    bench_config(config, name=config.model.backbone, size=s, train_batch=tb, breakdown_batches=bb, num_refs=nr,
                 model_and_vars=mv, **common)
    save()
  # k-means at the real shapes of the largest size.
  m = config.model
  pts = (max(sizes) // 16) ** 2 if sizes else 576
  log('kmeans study')
  report['kmeans'] = [kmeans_study(batch=b, points=pts, dim=m.dim, clusters=m.num_clusters, iters=m.kmeans_iters,
                                   repeats=repeats, warmup=warmup) for b in sorted({1, max(batches)})]
  save()
  if sweeps:
    report['sweeps'] = {}
    run_sweeps(config, mv[1], num_refs=nr, repeats=repeats, warmup=warmup, log=log, into=report['sweeps'],
               on_point=save, **(sweep_kwargs or {}))
    save()
  report['env']['load_average_end'] = list(os.getloadavg()) if hasattr(os, 'getloadavg') else None
  save()
  return report


def main(argv: Sequence[str]) -> None:
  del argv
  config = _CONFIG.value
  quick = _QUICK.value
  demo = load_config_file(_DEMO_CONFIG.value) if _DEMO_CONFIG.value else None
  repeats, warmup = (2, 1) if quick else (_REPEATS.value, _WARMUP.value)
  batches = [1] if quick else _ints(_BATCHES.value)
  train_batch = min(_TRAIN_BATCH.value, 1) if quick else _TRAIN_BATCH.value
  sweep_kwargs = dict(base_size=_SWEEP_SIZE.value, sizes=_ints(_SWEEP_SIZES.value), refs=_ints(_SWEEP_REFS.value),
                      clusters=_ints(_SWEEP_CLUSTERS.value), iters=_ints(_SWEEP_ITERS.value),
                      batches=_ints(_SWEEP_BATCHES.value))
  if quick:
    sweep_kwargs.update(sizes=sweep_kwargs['sizes'][:2], refs=sweep_kwargs['refs'][:2],
                        clusters=sweep_kwargs['clusters'][:2], iters=sweep_kwargs['iters'][:2],
                        batches=sweep_kwargs['batches'][:2])
  log = lambda msg: logging.info('%s', msg)
  if _PREDICT_FPS.value:
    runs = ([(demo, demo.data.image_size)] if demo is not None else []) + [(config, s) for s in _ints(_SIZES.value)]
    report = dict(env=environment(), predict=[])
    for c, size in runs:
      log(f'predict path: {c.model.backbone} at {size}')
      report['predict'].append(bench_predict_path(c, image_size=size, batch_size=_PREDICT_BATCH.value,
                                                 num_frames=2 * _PREDICT_BATCH.value, repeats=repeats,
                                                 warmup=warmup))
      with open(_OUT.value, 'w') as f:
        json.dump(report, f, indent=1, default=str)
    print(json.dumps(report['predict'], indent=1))
    return
  if _DEPTHWISE.value:
    study = depthwise_study(backbone=config.model.backbone, size=_ints(_SIZES.value)[0], repeats=repeats, warmup=warmup)
    study['env'] = environment()
    with open(_OUT.value, 'w') as f:
      json.dump(study, f, indent=1, default=str)
    print(json.dumps({k: v for k, v in study.items() if k not in ('grouped_conv', 'shifted', 'env')}))
    return
  report = run_all(config, demo_config=demo, sizes=_ints(_SIZES.value), batches=batches, train_batch=train_batch,
                   breakdown_batches=_ints(_BREAKDOWN_BATCHES.value), num_refs=_NUM_REFS.value, repeats=repeats,
                   warmup=warmup, quick=quick, sweeps=_SWEEPS.value, sweep_kwargs=sweep_kwargs,
                   full_max_batch=_FULL_MAX_BATCH.value, out=_OUT.value, log=log,
                   train_sizes=_ints(_TRAIN_SIZES.value), breakdown_sizes=_ints(_BREAKDOWN_SIZES.value),
                   peak_highest=_PEAK_HIGHEST.value, flops=_FLOPS.value, timings=_TIMINGS.value)
  if not _TIMINGS.value:
    logging.info('wrote %s', _OUT.value)
    return
  logging.info('wrote %s', _OUT.value)
  if report.get('sweeps') or any(r.get('breakdown') for r in report['results']):
    plot = _PLOT.value or os.path.splitext(_OUT.value)[0] + '.png'
    plot_sweeps(report.get('sweeps') or {}, report['results'], plot,
                title=f'GSA-Net {config.model.backbone} on {report["env"]["device_kind"]}')
    logging.info('wrote %s', plot)
  print(summary_table(report))


def _fmt(x: Any, spec: str) -> str:
  return '-' if x is None else spec.format(x)


def summary_table(report: dict[str, Any]) -> str:
  """A markdown table of the headline figures."""
  peak = report.get('matmul_peak', {}).get('f32', {}).get('flops_per_s', float('nan'))
  lines = [f'device: {report["env"]["device_kind"]} ({report["env"]["backend"]}), jax {report["env"]["versions"]["jax"]}; '
           f'f32 matmul peak {peak / 1e12:.3f} TFLOP/s',
           '| config | size | N_R | batch | cached fps | full fps | GFLOP/frame (cached / full) | % peak (cached) | compile s (cached / full) |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in report['results']:
    for i in r['inference']:
      c, f = i['cached'], i.get('full')
      lines.append(f'| {r["name"]} | {r["size"]} | {r["num_refs"]} | {i["batch"]} | {c["frames_per_s"]:.2f} | '
                   f'{f["frames_per_s"] if f else float("nan"):.2f} | {c["flops_per_frame"] / 1e9:.1f} / '
                   f'{(f["flops_per_frame"] if f else 0) / 1e9:.1f} | {100 * c.get("fraction_of_matmul_peak", 0):.1f} | '
                   f'{c["compile_s"]:.1f} / {(f["compile_s"] if f else 0):.1f} |')
  lines += ['', '| config | size | train batch | s/step | examples/s | GFLOP/example | % peak | compile s |',
            '|---|---|---|---|---|---|---|---|']
  for r in report['results']:
    t = r.get('train')
    if t:
      lines.append(f'| {r["name"]} | {r["size"]} | {t["batch"]} | {t["step_s"]:.3f} | {t["examples_per_s"]:.2f} | '
                   f'{t["flops_per_example"] / 1e9:.1f} | {100 * t.get("fraction_of_matmul_peak", 0):.1f} | '
                   f'{t["compile_s"]:.1f} |')
  for r in report['results']:
    for bd in r.get('breakdown', []):
      lines += ['', f'breakdown {r["name"]} {r["size"]}px batch {bd["batch"]} (segment {bd["segment"]["ms"]:.1f} ms, '
                f'full {bd["full"]["ms"]:.1f} ms)', '| part | ms/call | x | time share | FLOP share |', '|---|---|---|---|---|']
      for n, s in bd['segment_shares'].items():
        q = bd['parts'].get(n, {})
        ms = q.get('ms', s['ms'])
        lines.append(f'| {n}{" (in slot_branch)" if "within" in s else ""} | {_fmt(ms, "{:.2f}")} | '
                     f'{q.get("count_per_call", 1):g} | {_fmt(s["time_share"], "{:.1%}")} | {s["flop_share"]:.1%} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  app.run(main)
