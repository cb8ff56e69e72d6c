"""Data-parallel sharding helpers: one 'data' mesh axis over every device of every process.

Parameters and optimiser state are replicated; batches are split along their first axis. Each process
feeds only its own part of the global batch (`process_local_batch_size`), and
`put_batch` assembles the global `jax.Array` from the per-process pieces with
`jax.make_array_from_process_local_data`.
"""

from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = 'data'


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all devices of all processes).

  Built with `jax.sharding.Mesh` directly, so the axis is of the Auto type and reshapes of a
  batch-sharded array (e.g. merging b and t) are allowed inside jit.
  """
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Split along the first (batch) axis over the 'data' axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, *, what: str = 'train.batch_size') -> None:
  """Raises ValueError unless the global batch splits evenly over the devices and processes."""
  num_devices = mesh.devices.size
  if global_batch_size <= 0:
    raise ValueError(f'{what} must be positive; got {global_batch_size}.')
  if global_batch_size % num_devices:
    valid = [n * num_devices for n in range(1, 5)]
    raise ValueError(
        f'{what}={global_batch_size} is not divisible by the number of devices ({num_devices}: '
        f'{jax.process_count()} process(es) x {jax.local_device_count()} local device(s)). Use a multiple '
        f'of {num_devices}, e.g. {valid}.')


def process_local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The number of examples this process feeds per step (its devices' share of the global batch)."""
  check_batch_size(global_batch_size, mesh)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  return global_batch_size // mesh.devices.size * local_devices


def put_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns this process's numpy batch into global arrays sharded on 'data' along axis 0."""
  sharding = data_sharded(mesh)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind not in 'biuf':  # Strings (names) stay on the host.
      continue
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of host or device arrays replicated on every device of the mesh.

  Every process must pass the same values (they do: init and restore are deterministic).
  """
  sharding = replicated(mesh)

  def place(x):
    x = np.asarray(jax.device_get(x)) if not isinstance(x, jax.Array) or x.is_fully_addressable else x
    if isinstance(x, jax.Array):
      return jax.jit(lambda y: y, out_shardings=sharding)(x)
    return jax.make_array_from_process_local_data(sharding, x, x.shape)

  return jax.tree.map(place, tree)


def to_host(tree: Any) -> Any:
  """Fetches a pytree of (replicated or fully addressable) arrays to numpy on this process."""

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(fetch, tree)


def allgather_json(value: Any) -> list[Any]:
  """The JSON-able `value` of every process, in process order (a list of one on a single host)."""
  if jax.process_count() == 1:
    return [value]
  import json  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(json.dumps(value).encode('utf-8'), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [json.loads(bytes(gathered[i, :sizes[i]]).decode('utf-8')) for i in range(len(sizes))]


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier called `name` (nothing on a single host)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
