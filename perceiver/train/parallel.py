"""One code path for 1 CPU, N GPUs and TPU pods: a device mesh and shardings.

Batches are split over the mesh's 'data' axis; parameters are replicated,
or, with `shard_params`, each split along one dimension over the same axis
(fully sharded data parallel). `jax.jit` inserts the collectives, so the
train step is written once, for the global batch.
"""

import os
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from perceiver import _validation

DATA_AXIS = "data"

# The default of mesh.shard_min_size: leaves smaller than this stay replicated
# under shard_params (splitting them saves little memory and costs a collective each).
MIN_SHARDED_SIZE = 2**14


def multi_process_environment(environ: Optional[dict] = None) -> bool:
    """Whether the environment describes a run of several processes.

    Recognised: JAX's own variables (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES), SLURM with several tasks, Open MPI / PMI launchers
    with a world size above 1, and multi-host Cloud TPU slices.
    """
    env = os.environ if environ is None else environ

    def above_one(name):
        try:
            return int(env.get(name, "1") or "1") > 1
        except ValueError:
            return False

    if env.get("JAX_COORDINATOR_ADDRESS") or above_one("JAX_NUM_PROCESSES"):
        return True
    if env.get("SLURM_JOB_ID") and above_one("SLURM_NTASKS"):
        return True
    if above_one("OMPI_COMM_WORLD_SIZE") or above_one("PMI_SIZE"):
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize_distributed(mode: str = "auto") -> bool:
    """Starts `jax.distributed` when asked, or (mode 'auto') when the environment says so.

    Must run before any other JAX call. JAX's cluster detection (SLURM, Open
    MPI, Cloud TPU, Kubernetes) supplies the coordinator; JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID override it.

    Returns:
      whether the distributed system is (now) initialised.

    Raises:
      ValueError: for a mode other than 'auto', 'on', 'off'.
    """
    _validation.check_choice("mesh.distributed", mode, ("auto", "on", "off"))
    if jax.distributed.is_initialized():
        return True
    if mode == "off" or (mode == "auto" and not multi_process_environment()):
        return False
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if os.environ.get(name):
            kwargs[key] = int(os.environ[name])
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(data_parallel: int = -1, devices=None) -> Mesh:
    """A one-axis ('data') mesh over `data_parallel` devices (-1: all).

    Raises:
      ValueError: if more devices are asked for than exist, or, with several
        processes, fewer than all (each process must own part of the mesh).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if data_parallel == -1 else data_parallel
    if not 1 <= n <= len(devices):
        raise ValueError(
            f"mesh.data_parallel must be -1 or in [1, {len(devices)}] (the devices there are); "
            f"got {data_parallel}."
        )
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(
            f"with {jax.process_count()} processes the mesh must use all {len(devices)} devices; "
            f"got mesh.data_parallel={data_parallel}."
        )
    return Mesh(np.array(devices[:n]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def leaf_sharding(shape, mesh: Mesh, shard: bool, min_size: int = MIN_SHARDED_SIZE) -> NamedSharding:
    """Replicated, or (with `shard`) split along the largest dimension the data axis divides."""
    n = mesh.shape[DATA_AXIS]
    if not shard or n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return replicated(mesh)
    candidates = [d for d, size in enumerate(shape) if size % n == 0 and size >= n]
    if not candidates:
        return replicated(mesh)
    dim = max(candidates, key=lambda d: shape[d])
    spec = [None] * len(shape)
    spec[dim] = DATA_AXIS
    return NamedSharding(mesh, P(*spec))


def tree_shardings(tree: Any, mesh: Mesh, shard: bool = False, min_size: int = MIN_SHARDED_SIZE) -> Any:
    """A sharding for every leaf of `tree` (arrays or `ShapeDtypeStruct`s).

    The rule depends only on a leaf's shape, so an optimiser's moments are
    laid out like their parameters.
    """
    return jax.tree_util.tree_map(lambda x: leaf_sharding(np.shape(x), mesh, shard, min_size), tree)


def sharding_report(tree: Any, shardings: Any, mesh: Mesh, min_size: int, shown: int = 4) -> str:
    """One line saying which leaves of `tree` (parameters) `shardings` splits, for the log.

    Args:
      tree: `{module: {name: array or ShapeDtypeStruct}}`.
      shardings: the matching tree of shardings (`tree_shardings`).
      mesh: the mesh.
      min_size: mesh.shard_min_size, named in the line.
      shown: how many sharded names to list before counting the rest.
    """
    n = mesh.shape[DATA_AXIS]
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    specs = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    sharded, values, total = [], 0, 0
    for (path, leaf), sharding in zip(leaves, specs):
        size = int(np.prod(np.shape(leaf), dtype=np.int64))
        total += size
        if not sharding.is_fully_replicated:
            sharded.append("/".join(str(getattr(k, "key", k)) for k in path))
            values += size
    head = f"mesh.shard_params: {len(sharded)} of {len(leaves)} parameter arrays sharded over {n} device(s)"
    if n == 1:
        return head + " (one device on the data axis: nothing to split)"
    line = (
        f"{head} ({values:,} of {total:,} values; arrays under mesh.shard_min_size={min_size} "
        "values, or with no dimension the devices divide, stay replicated)"
    )
    if sharded:
        more = f" and {len(sharded) - shown} more" if len(sharded) > shown else ""
        line += ": " + ", ".join(sharded[:shown]) + more
    return line


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    """Raises ValueError unless the batch splits evenly over devices and processes."""
    n = mesh.shape[DATA_AXIS]
    if batch_size % n or batch_size % jax.process_count():
        raise ValueError(
            f"{what} ({batch_size}) must be divisible by the {n} devices of the data axis "
            f"and the {jax.process_count()} processes."
        )
