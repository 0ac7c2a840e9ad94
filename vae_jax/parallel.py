"""Mesh, shardings and processes: one code path for one CPU, N GPUs and a TPU pod.

The mesh has two axes. "seeds" carries the independent runs of a multi-seed
experiment (the train state's leading axis); "data" splits each step's batch,
and XLA all-reduces the gradients over it. With one device both axes have size
one and nothing changes. With several processes (hosts), every process runs the
same program on the global mesh; each places only its own devices' rows of the
training data, and process 0 alone writes files.
"""

import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

SEEDS, DATA = "seeds", "data"


def initialize_distributed(config) -> None:
  """jax.distributed.initialize when config.distributed, once per process.

  Call it before any other JAX call. Leave config.coordinator_address,
  num_processes and process_id unset on Cloud TPU, SLURM, Open MPI or
  Kubernetes, where JAX finds them; elsewhere set all three on every process
  (e.g. "10.0.0.1:1234", 2, and 0 or 1).
  """
  if not config.distributed or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(
    coordinator_address=config.coordinator_address,
    num_processes=config.num_processes,
    process_id=config.process_id,
  )


def is_main_process() -> bool:
  """True on the one process that writes metrics, pictures and summaries."""
  return jax.process_index() == 0


def make_mesh(num_seeds: int, devices=None) -> jax.sharding.Mesh:
  """All devices as a (seeds, data) mesh.

  The seeds axis gets gcd(num_seeds, devices) devices, so that the seeds split
  evenly over it, and the data axis gets the rest: 2 seeds on 8 devices train
  side by side, each on 4 devices; 3 seeds on 8 devices all share the same 8.
  """
  devices = jax.devices() if devices is None else list(devices)
  seed_shards = math.gcd(num_seeds, len(devices))
  return jax.make_mesh(
    (seed_shards, len(devices) // seed_shards),
    (SEEDS, DATA),
    axis_types=(AxisType.Auto, AxisType.Auto),  # shardings propagate; constraints guide them
    devices=devices,
  )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The sharding of an array that every device of mesh holds whole."""
  return NamedSharding(mesh, PartitionSpec())


def split_seeds(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The leading (seed) axis split over the seeds axis of the mesh."""
  return NamedSharding(mesh, PartitionSpec(SEEDS))


def split_rows(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The leading (example) axis split over the data axis of the mesh."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def put_rows(array: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  """A host array as a global array split by rows over the data axis.

  The rows are padded (with zeros, at the end) to a multiple of the data axis
  size; callers index only the first len(array) rows. Each process copies only
  the rows of its own devices, so no device holds the whole set and hosts need
  not exchange data.
  """
  array = np.asarray(array)
  pad = -len(array) % mesh.shape[DATA]
  if pad:
    array = np.concatenate([array, np.zeros((pad, *array.shape[1:]), array.dtype)])
  return jax.make_array_from_callback(array.shape, split_rows(mesh), lambda index: array[index])


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  """Refuses a batch that does not split evenly over the data axis."""
  data_shards = mesh.shape[DATA]
  if batch_size % data_shards:
    raise ValueError(
      f"batch_size={batch_size} must be divisible by the {data_shards} devices that share "
      f"each batch (mesh {dict(mesh.shape)}); pick a multiple of {data_shards}, or use fewer "
      "devices (e.g. CUDA_VISIBLE_DEVICES) or a num_seeds that shares a factor with the "
      "device count."
    )


def max_over_processes(value: int) -> int:
  """The largest of each process's value: a decision every process takes together."""
  if jax.process_count() == 1:
    return value
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def from_main_process(value: float) -> float:
  """Process 0's value on every process: for what only process 0 can compute, such as a
  sum over the files it alone writes."""
  if jax.process_count() == 1:
    return value
  return float(multihost_utils.broadcast_one_to_all(np.float32(value)))
