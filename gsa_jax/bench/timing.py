"""Timing, compilation facts and memory of jit-compiled programs, and the matmul peak of a device.

Every figure is the median of `repeats` samples after `warmup` calls; a sample is `number` calls issued back
to back and one block_until_ready (number > 1 only for sub-millisecond programs, so Python dispatch does not
dominate). Programs are compiled once (jit(...).lower(...).compile()) and the compiled executable is what is
timed.
"""

import dataclasses
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def cost(compiled: Any) -> dict[str, float]:
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
  return Program(compiled, t1 - t0, t2 - t1, cost(compiled), _memory_analysis(compiled))


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




def random_variables(abstract: Any, seed: int = 0) -> Any:
  """Concrete variables for an abstract tree (from `jax.eval_shape` of an init), filled by numpy.

  A cheap stand-in for compiling `model.init` (one random program per parameter shape, tens of seconds on a
  small CPU) where the values do not matter (speed runs): kernels N(0, 1/fan_in), biases N(0, 0.01), norm
  scales 1, BatchNorm statistics (0, 1).
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', '')
    shape, dtype = leaf.shape, leaf.dtype
    if name in ('scale', 'var'):
      return jnp.ones(shape, dtype)
    if name == 'mean':
      return jnp.zeros(shape, dtype)
    if name == 'bias':
      return jnp.asarray(rng.normal(0.0, 0.01, shape), dtype)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(max(fan_in, 1)), shape), dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)
