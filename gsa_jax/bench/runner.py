"""What the benchmark measures, for any registered model (through gsa_jax.contract):

  inference   frames/s at each batch, (a) with the per-video context cached ('segment' on a precomputed
              'encode' output: the per-frame cost of a video whose context was encoded once) and (b) the full
              forward (context recomputed every frame); compile time, XLA FLOPs per frame, achieved FLOP/s and
              its fraction of the matmul peak measured in the same run on the same device;
  train       one jit'd step of the real trainer (gsa_jax.train.train_step, donated state): step time,
              examples/s, FLOPs per example;
  memory      host peak RSS, device peak bytes (GPU) and XLA's memory analysis of each compiled program;
  breakdown   the model's parts compiled alone at the real shapes (contract.Model.bench_breakdown); with
              train_breakdown, the training step's parts too, forward and backward apart (a model's
              bench_train_breakdown, e.g. GSA-Net's: backbone, MFFMs, slot branch, decoder, resizes, loss,
              reference pass, optimiser), each part's share of the step's time against its share of FLOPs;
  sweeps      resolution, N_R, batch and the model's own knobs (contract.Model.bench_sweeps), with a plot;
  predict     predict's own code path (inference.run_video) against one full forward per frame.
Parameters are random (values do not change the cost; GSA-Net's k-means runs a fixed number of iterations).
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from gsa_jax import contract
from gsa_jax import inference
from gsa_jax import optim
from gsa_jax import registry
from gsa_jax import train
from gsa_jax.bench import timing
from input_pipeline import frames as frames_lib


def model_and_variables(config: Any, seed: int = 0) -> tuple[contract.Model, Any]:
  """The model of `config` and random variables of its shapes (no init program compiled)."""
  model = registry.build(config)
  return model, timing.random_variables(model.abstract_variables(), seed)


def random_batch(model: contract.Model, batch: int, size: int, seed: int = 0) -> dict[str, Any]:
  """A training-shaped batch of random values: masks binary, flow images in [0, 1], RGB N(0, 1)."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, zeros in model.example_batch(batch, size).items():
    if 'mask' in key:
      out[key] = (rng.random(zeros.shape) > 0.5).astype(np.float32)
    elif 'flow' in key:
      out[key] = rng.random(zeros.shape, np.float32)
    else:
      out[key] = rng.standard_normal(zeros.shape, np.float32)
  return jax.tree.map(jax.numpy.asarray, out)


def with_overrides(config: Any, *, model: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> Any:
  """A copy of `config` with existing model / data fields replaced."""
  c = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  c.model.update(model or {})
  c.data.update(data or {})
  return c


def _throughput(info: dict[str, Any], t: dict[str, Any], frames: int, peak: float | None) -> dict[str, Any]:
  flops = info.get('flops', 0.0)
  out = dict(frames_per_s=frames / t['median_s'], ms_per_frame=1e3 * t['median_s'] / frames,
             flops_per_frame=flops / frames, achieved_flops_per_s=flops / t['median_s'])
  if peak:
    out['fraction_of_matmul_peak'] = out['achieved_flops_per_s'] / peak
  return out


def _shape_key(model: contract.Model, variables: Any, name: str, batch: int, size: int) -> tuple:
  shapes = tuple(np.shape(leaf) for leaf in jax.tree.leaves(variables))
  return (name, model.name, json.dumps(model.config.model.to_dict(), sort_keys=True, default=str),
          int(model.config.data.num_refs), shapes, batch, size)


def bench_inference(model: contract.Model, variables: Any, *, batch: int, size: int, peak: float | None,
                    repeats: int, warmup: int, full: bool = True) -> dict[str, Any]:
  """Cached-context ('segment') and full inference at one batch and size."""
  x = random_batch(model, batch, size)
  progs = model.inference_programs()
  res: dict[str, Any] = dict(batch=batch, size=size, num_refs=int(model.config.data.num_refs))
  context = None
  if 'encode' in progs:
    enc = timing.cached_program(_shape_key(model, variables, 'encode', batch, size), progs['encode'], variables, x)
    context = timing.block(enc.compiled(variables, x))
    t = timing.time_fn(enc.compiled, variables, x, warmup=warmup, repeats=repeats)
    res['encode'] = dict(**enc.info(), timing=t, ms_per_video=1e3 * t['median_s'] / batch)
  seg = timing.cached_program(_shape_key(model, variables, 'segment', batch, size), progs['segment'], variables, x,
                              context)
  t = timing.time_fn(seg.compiled, variables, x, context, warmup=warmup, repeats=repeats)
  res['cached'] = dict(**seg.info(), timing=t, **_throughput(seg.info(), t, batch, peak))
  if full and 'full' in progs:
    prog = timing.cached_program(_shape_key(model, variables, 'full', batch, size), progs['full'], variables, x)
    t = timing.time_fn(prog.compiled, variables, x, warmup=warmup, repeats=repeats)
    res['full'] = dict(**prog.info(), timing=t, **_throughput(prog.info(), t, batch, peak))
  res['memory'] = timing.memory_snapshot()
  return res


def bench_train(model: contract.Model, variables: Any, *, batch: int, size: int, peak: float | None, repeats: int,
                warmup: int) -> dict[str, Any]:
  """One jit'd step of the trainer (gsa_jax.train.train_step) with a donated state."""
  config = model.config
  tx, schedule = optim.create_optimizer(config.train, 1000)
  state = train.create_state(model, jax.tree.map(jax.numpy.array, variables), tx)  # a copy: the state is donated
  x = random_batch(model, batch, size)

  def step(state, batch):
    return train.train_step(state, batch, model=model, tx=tx, schedule=schedule, seed=0)

  prog = timing.compile_program(step, state, x, donate_argnums=(0,))
  t = timing.time_fn(prog.compiled, state, x, warmup=warmup, repeats=repeats, chain=True, number=1)
  info = prog.info()
  out = dict(batch=batch, size=size, num_refs=int(config.data.num_refs), **info, timing=t, step_s=t['median_s'],
             examples_per_s=batch / t['median_s'], flops_per_example=info.get('flops', 0.0) / batch,
             achieved_flops_per_s=info.get('flops', 0.0) / t['median_s'], memory=timing.memory_snapshot())
  if peak:
    out['fraction_of_matmul_peak'] = out['achieved_flops_per_s'] / peak
  return out


class PartRunner:
  """The `run` callback of contract.Model.bench_breakdown: compiles, times and records each part."""

  def __init__(self, *, repeats: int, warmup: int, timed: bool = True):
    self.repeats, self.warmup, self.timed = repeats, warmup, timed
    self.parts: dict[str, Any] = {}

  def __call__(self, name: str, fn: Callable[..., Any], *args: Any, count: float = 1.0) -> Any:
    if not self.timed:  # FLOPs of the lowered (unoptimised) program only; nothing compiled or run
      self.parts[name] = dict(count_per_call=count, flops=timing.cost(jax.jit(fn).lower(*args)).get('flops', 0.0),
                              ms=None)
      return jax.eval_shape(fn, *args)
    prog = timing.compile_program(fn, *args)
    out = timing.block(prog.compiled(*args))
    t = timing.time_fn(prog.compiled, *args, warmup=self.warmup, repeats=self.repeats)
    self.parts[name] = dict(count_per_call=count, flops=prog.cost.get('flops', 0.0), compile_s=prog.compile_s,
                            ms=1e3 * t['median_s'], timing=t)
    return out


def bench_breakdown(model: contract.Model, variables: Any, *, batch: int, size: int, repeats: int, warmup: int,
                    timed: bool = True) -> dict[str, Any] | None:
  run = PartRunner(repeats=repeats, warmup=warmup, timed=timed)
  x = random_batch(model, batch, size)
  if not timed:
    x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)
    variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), variables)
  report = model.bench_breakdown(variables, x, run)
  if report is not None:
    report.update(batch=batch, size=size, num_refs=int(model.config.data.num_refs))
  return report


def bench_train_breakdown(model: contract.Model, variables: Any, *, batch: int, size: int, step: dict[str, Any],
                          repeats: int, warmup: int) -> dict[str, Any] | None:
  """The training step's parts, forward and backward, each compiled alone (model.bench_train_breakdown), with
  their time and FLOP shares of the measured step `step` (a bench_train result)."""
  run = PartRunner(repeats=repeats, warmup=warmup)
  report = model.bench_train_breakdown(variables, random_batch(model, batch, size), run,
                                       dict(ms=1e3 * step['step_s'], flops=step.get('flops', 0.0)))
  if report is not None:
    report.update(batch=batch, size=size, num_refs=int(model.config.data.num_refs))
  return report


def bench_predict_path(config: Any, *, image_size: int = 384, num_frames: int = 8, batch_size: int = 4,
                       repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
  """Frames/s of predict's model path (inference.run_video: context encoded once, batched segments) against
  the model's full forward per frame, on a synthetic video; compilation excluded (reported apart). DIS flow
  is timed on the same video to give the rates with flow included."""
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  config = with_overrides(config, data={'image_size': image_size})
  config.eval.batch_size = batch_size
  model, variables = model_and_variables(config)
  scene = synthetic.make_scene(np.random.default_rng(0), image_size=image_size, num_frames=num_frames, difficulty=0.5)
  images = [np.asarray(f) for f in synthetic.to_uint8(synthetic.render_video(scene)['rgb'])]

  class _Frames(frames_lib.FrameSource):
    path, names = 'synthetic', [f'{i:05d}' for i in range(num_frames)]

    def iter_frames(self):
      yield from images

  flow_source = frames_lib.ComputedFlow('dis')
  flow_t = timing.time_fn(lambda: flow_source.for_frames(0, images[:-1], images[-1], None), warmup=0, repeats=repeats,
                          number=1)
  flow_s = flow_t['median_s'] / max(num_frames - 1, 1)
  flow_images = flow_source.for_frames(0, images, None, None)

  class _Flows(frames_lib.FlowSource):
    description = {'source': 'precomputed'}

    def for_frames(self, start, frames, next_frame, previous_flow):
      return flow_images[start:start + len(frames)]

    def at(self, frames, indices, known):
      return [flow_images[i] for i in indices]

  segmenter = model.segmenter(variables, batch_size=batch_size, tta=False)
  video = _Frames()
  flows = _Flows() if 'flow' in segmenter.modalities else None
  video_pass = lambda: [r.prob for r in inference.run_video(segmenter, video, flows)]
  video_pass()  # compiles
  cached_s = timing.time_fn(video_pass, warmup=warmup, repeats=repeats, number=1)['median_s'] / num_frames
  x = random_batch(model, 1, image_size)
  full = timing.compile_program(model.inference_programs()['full'], variables, x)
  uncached_s = timing.time_fn(full.compiled, variables, x, warmup=warmup + 1, repeats=repeats, number=1)['median_s']
  return {'model': config.model.name, 'image_size': image_size, 'num_refs': int(config.data.num_refs),
          'batch_size': segmenter.batch_size, 'num_frames': num_frames,
          'cached_fps': 1.0 / cached_s, 'cached_fps_with_flow': 1.0 / (cached_s + flow_s),
          'uncached_fps': 1.0 / uncached_s, 'uncached_fps_with_flow': 1.0 / (uncached_s + flow_s),
          'flow_s_per_frame': flow_s, 'speedup': uncached_s / cached_s,
          'compile_s': segmenter.compile_seconds, 'full_compile_s': full.compile_s}


def bench_config(config: Any, *, name: str, size: int, batches: Sequence[int], train_batch: int,
                 breakdown_batches: Sequence[int], peak: float | None, repeats: int, warmup: int,
                 full_max_batch: int = 64, model_and_vars: tuple[Any, Any] | None = None,
                 log: Callable[[str], None] = print, into: list[Any] | None = None,
                 on_step: Callable[[], None] = lambda: None, train_breakdown: bool = False) -> dict[str, Any]:
  """Inference at each batch, one training step and the breakdown, for one config at one size.

  train_breakdown: also the training step part by part (contract models with a bench_train_breakdown).

  into: a list the (growing) result is appended to first; on_step is called after every stage (so a run
  stopped part-way still leaves what it measured).
  """
  t0 = time.perf_counter()
  model, variables = model_and_vars or model_and_variables(config, config.seed)
  variables = timing.block(variables)
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables['params']))
  res: dict[str, Any] = dict(name=name, size=size, num_refs=int(config.data.num_refs), num_params=n_params,
                             model=config.model.to_dict(), inference=[], init_s=time.perf_counter() - t0)
  if into is not None:
    into.append(res)
  for b in batches:
    log(f'[{name} {size}] inference batch {b}')
    r = bench_inference(model, variables, batch=b, size=size, peak=peak, repeats=repeats, warmup=warmup,
                        full=b <= full_max_batch)
    res['inference'].append(r)
    on_step()
    log(f'  cached {r["cached"]["frames_per_s"]:.3f} fps' + (f', full {r["full"]["frames_per_s"]:.3f} fps'
                                                              if 'full' in r else ''))
  if train_batch > 0:
    log(f'[{name} {size}] train step batch {train_batch}')
    res['train'] = bench_train(model, variables, batch=train_batch, size=size, peak=peak,
                               repeats=max(2, repeats - 2), warmup=max(1, warmup - 1))
    on_step()
    log(f'  {res["train"]["step_s"]:.3f} s/step, {res["train"]["examples_per_s"]:.3f} ex/s')
    if train_breakdown and hasattr(model, 'bench_train_breakdown'):
      log(f'[{name} {size}] training-step breakdown batch {train_batch}')
      res['train_breakdown'] = bench_train_breakdown(model, variables, batch=train_batch, size=size,
                                                     step=res['train'], repeats=max(2, repeats - 2),
                                                     warmup=max(1, warmup - 1))
      on_step()
  res['breakdown'] = []
  for b in breakdown_batches:
    log(f'[{name} {size}] breakdown batch {b}')
    report = bench_breakdown(model, variables, batch=b, size=size, repeats=repeats, warmup=warmup)
    if report is not None:
      res['breakdown'].append(report)
    on_step()
  res['memory'] = timing.memory_snapshot()
  res['wall_s'] = time.perf_counter() - t0
  return res


def _point(model, variables, *, batch, size, repeats, warmup, full=True) -> dict[str, Any]:
  r = bench_inference(model, variables, batch=batch, size=size, peak=None, repeats=repeats, warmup=warmup, full=full)
  out = dict(cached_ms_per_frame=r['cached']['ms_per_frame'], cached_flops_per_frame=r['cached']['flops_per_frame'],
             cached_compile_s=r['cached']['compile_s'])
  if 'encode' in r:
    out['encode_ms_per_video'] = r['encode']['ms_per_video']
  if 'full' in r:
    out.update(full_ms_per_frame=r['full']['ms_per_frame'], full_flops_per_frame=r['full']['flops_per_frame'])
  return out


def run_sweeps(config: Any, *, base_size: int, sizes: Sequence[int] = (), refs: Sequence[int] = (),
               batches: Sequence[int] = (), model_sweeps: dict[str, Sequence[Any]] | None = None, repeats: int,
               warmup: int, log: Callable[[str], None] = print, into: dict[str, Any] | None = None,
               on_point: Callable[[], None] = lambda: None) -> dict[str, Any]:
  """Batch-1 inference (cached and full) over resolution and N_R, cached over batch, and over each of the
  model's own knobs (`model_sweeps`: name -> values, names from contract.Model.bench_sweeps). A model knob may
  change parameter shapes, so its points get variables of their own model."""
  sweeps = into if into is not None else {}
  base_model, variables = model_and_variables(config, config.seed)
  common = dict(repeats=repeats, warmup=warmup)
  sweeps['resolution'] = []
  for s in sizes:
    log(f'sweep resolution {s}')
    sweeps['resolution'].append(dict(value=s, **_point(base_model, variables, batch=1, size=s, **common)))
    on_point()
  sweeps['num_refs'] = []
  for n in refs:
    log(f'sweep N_R {n}')
    model = registry.build(with_overrides(config, data={'num_refs': int(n)}))
    sweeps['num_refs'].append(dict(value=n, **_point(model, variables, batch=1, size=base_size, **common)))
    on_point()
  knobs = base_model.bench_sweeps()
  for name, values in (model_sweeps or {}).items():
    if name not in knobs:
      raise ValueError(f'Model {config.model.name!r} has no sweep {name!r}; it has {sorted(knobs)}.')
    sweeps[name] = []
    for v in values:
      log(f'sweep {name} {v}')
      model, v_vars = model_and_variables(with_overrides(config, model=knobs[name](v)), config.seed)
      try:
        point = _point(model, v_vars, batch=1, size=base_size, full=False, **common)
      except ValueError as e:  # e.g. more clusters than pixels at this size
        log(f'  skipped: {e}')
        continue
      sweeps[name].append(dict(value=v, **point))
      on_point()
  sweeps['batch'] = []
  for b in batches:
    log(f'sweep batch {b}')
    r = _point(base_model, variables, batch=b, size=base_size, full=False, **common)
    r['cached_frames_per_s'] = 1e3 / r['cached_ms_per_frame']
    sweeps['batch'].append(dict(value=b, **r))
    on_point()
  return sweeps


def flop_report(config: Any, *, sizes: Sequence[int], batch: int, train_batch: int = 0) -> list[dict[str, Any]]:
  """FLOPs only (lowered programs, nothing compiled or run): per-part breakdown and the training step."""
  model, variables = model_and_variables(config, config.seed)
  out = []
  for size in sizes:
    r = bench_breakdown(model, variables, batch=batch, size=size, repeats=0, warmup=0, timed=False) or {}
    r['size'] = size
    if train_batch:
      tx, schedule = optim.create_optimizer(config.train, 1000)
      state = jax.eval_shape(lambda v: train.create_state(model, v, tx), variables)
      x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), random_batch(model, train_batch, size))
      step = lambda s, b: train.train_step(s, b, model=model, tx=tx, schedule=schedule, seed=0)
      flops = timing.cost(jax.jit(step).lower(state, x)).get('flops', 0.0)
      r['train'] = dict(batch=train_batch, xla_flops_per_example=flops / train_batch,
                        note='XLA count (a while loop is counted once)')
    out.append(r)
  return out


def run_all(config: Any, *, demo_config: Any | None, sizes: Sequence[int], batches: Sequence[int], train_batch: int,
            breakdown_batches: Sequence[int], repeats: int, warmup: int, quick: bool, sweeps: bool,
            sweep_kwargs: dict[str, Any] | None = None, full_max_batch: int = 64, out: str | None = None,
            log: Callable[[str], None] = print, train_sizes: Sequence[int] = (), breakdown_sizes: Sequence[int] = (),
            peak_highest: bool = False, flops: bool = False, timings: bool = True,
            train_breakdown: bool = False) -> dict[str, Any]:
  """Everything main() does, as a function (the tests call it at a tiny size)."""
  report: dict[str, Any] = dict(env=timing.environment(), settings=dict(
      model=config.model.name, sizes=list(sizes), batches=list(batches), train_batch=train_batch,
      breakdown_batches=list(breakdown_batches), repeats=repeats, warmup=warmup, quick=quick), results=[])

  def save():
    report['memory_end'] = timing.memory_snapshot()
    if out:
      with open(out, 'w') as f:
        json.dump(report, f, indent=1, default=str)

  if flops:
    log('FLOP report (lowered programs)')
    report['flops'] = flop_report(config, sizes=sizes, batch=1, train_batch=train_batch)
    save()
  if not timings:
    return report
  log('matmul peak')
  report['matmul_peak'] = timing.measure_peaks(quick=quick, repeats=repeats, warmup=warmup, highest=peak_highest)
  peak = report['matmul_peak']['f32']['flops_per_s']
  save()
  common = dict(batches=batches, peak=peak, repeats=repeats, warmup=warmup, full_max_batch=full_max_batch, log=log,
                into=report['results'], on_step=save, train_breakdown=train_breakdown)
  if demo_config is not None:
    bench_config(demo_config, name=f'{demo_config.model.name} demo', size=demo_config.data.image_size,
                        train_batch=min(train_batch, demo_config.train.batch_size) if train_batch else 0,
                        breakdown_batches=breakdown_batches, **common)
    save()
  mv = model_and_variables(config, config.seed)
  for s in sizes:
    tb = train_batch if not train_sizes or s in train_sizes else 0
    bb = breakdown_batches if not breakdown_sizes or s in breakdown_sizes else []
    bench_config(config, name=config.model.name, size=s, train_batch=tb, breakdown_batches=bb,
                        model_and_vars=mv, **common)
    save()
  if sweeps:
    report['sweeps'] = {}
    run_sweeps(config, repeats=repeats, warmup=warmup, log=log, into=report['sweeps'], on_point=save,
                      **(sweep_kwargs or {}))
    save()
  report['env']['load_average_end'] = list(os.getloadavg()) if hasattr(os, 'getloadavg') else None
  save()
  return report
