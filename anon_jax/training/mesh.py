"""Data-parallel device layout: a ("data",) mesh, batch sharding and replicated parameters.

Every method's jitted steps take a replicated train state and a batch split over the "data" axis;
under `jax.jit` BatchNorm statistics are then computed over the global batch, so results do not
depend on the number of devices. Multi-host runs feed each process's slice of the global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(mesh_shape=None) -> Mesh:
    """A mesh over all devices; `mesh_shape` (e.g. (-1,) or (-1, 1)) names axes ("data", "model")."""
    shape = tuple(mesh_shape) if mesh_shape else (-1,)
    names = (DATA_AXIS, "model")[: len(shape)]
    if len(shape) > 2:
        raise ValueError(f"config.mesh_shape={shape}: at most two axes (data, model) are supported.")
    num_devices = jax.device_count()
    known = int(np.prod([s for s in shape if s != -1]))
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if int(np.prod(shape)) != num_devices:
        raise ValueError(
            f"config.mesh_shape={shape} does not cover the {num_devices} devices; use -1 for the data axis."
        )
    devices = np.asarray(jax.devices()).reshape(shape)
    return Mesh(devices, names)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "config.train.batch_size") -> int:
    """Returns the per-process batch size after checking that the global batch splits evenly."""
    data_devices = mesh.shape[DATA_AXIS]
    if global_batch_size % data_devices:
        raise ValueError(
            f"{field}={global_batch_size} is not divisible by the {data_devices} devices on the data axis; "
            "pick a multiple of the device count."
        )
    return global_batch_size // jax.process_count()


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's NumPy slice into global arrays split over the data axis."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def replicate(tree, mesh: Mesh):
    """`tree` copied to every device of the mesh. Every process passes the same values; they go through the host,
    because a multi-host device_put takes host data (or keys rebuilt from it), not arrays on one device."""
    sharding = replicated(mesh)

    def put(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
        return jax.device_put(np.asarray(jax.device_get(leaf)), sharding)

    return jax.tree_util.tree_map(put, tree)


def padded_batches(inputs, batch_size: int, mesh: Mesh):
    """Yields (global batch split over the data axis, number of real rows) over the leading axis of `inputs`
    (an array or a pytree of arrays of one length).

    The batch size is rounded up to a multiple of the data-axis size and the last batch is padded by repeating
    the last row. Every process passes the same full arrays and contributes the rows of its own devices.
    """
    sharding = batch_sharding(mesh)
    batch_size = -(-batch_size // mesh.shape[DATA_AXIS]) * mesh.shape[DATA_AXIS]
    total = len(jax.tree_util.tree_leaves(inputs)[0])

    def global_rows(array, rows):
        local = np.asarray(array[rows])
        return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])

    for start in range(0, total, batch_size):
        rows = np.minimum(np.arange(start, start + batch_size), total - 1)
        yield jax.tree_util.tree_map(lambda array: global_rows(array, rows), inputs), min(batch_size, total - start)


def map_batches(fn, params, inputs, *, batch_size: int, mesh: Mesh):
    """Host outputs of `fn(params, batch)` over the leading axis of `inputs`, computed in `padded_batches`.

    `fn` is jitted here with replicated outputs, so every process gets every row. Pass weights through `params`
    (arrays closed over would be baked into the compiled program as constants).
    """
    jitted = jax.jit(fn, out_shardings=replicated(mesh))
    outputs = [jax.tree_util.tree_map(lambda x, count=count: np.asarray(jax.device_get(x))[:count],
                                      jitted(params, batch))
               for batch, count in padded_batches(inputs, batch_size, mesh)]
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outputs)
