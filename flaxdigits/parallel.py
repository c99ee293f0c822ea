"""Data parallelism: one device mesh over every device, batches split along it.

The same code runs on one CPU, one GPU, the 8 cores of a Colab TPU, or every chip of a TPU
pod slice (call `jax.distributed.initialize()` first on each host; `jax.devices()` is then
global). Parameters and the dataset are replicated on every device; each training and
evaluation batch is sharded along the mesh's 'data' axis, and `jax.jit` inserts the
gradient all-reduce. No pmap, no per-device code. (config.validate checks that the batch
sizes split evenly across the devices.)
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: all devices, of every host)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The whole value on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split evenly across the devices."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array (identical on every host) placed with `sharding`. Built from
    per-device slices, so it works across hosts too, where `jax.device_put` would need the
    devices of other hosts."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
