"""Multi-host runs: joining the job, the primary process, barriers and primary-only writes.

Every process runs the same program on its own devices; the workdir is shared (NFS, Lustre, a mounted bucket).
Orbax writes training checkpoints collectively; everything else on disk (data caches, reports, figures,
exported models, stage markers) is written by process 0 while the others wait at a barrier.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import jax
from absl import logging
from jax.experimental import multihost_utils

T = TypeVar("T")
DISTRIBUTED_MODES = ("auto", "on", "off")


def should_initialize(mode: str, *, coordinator_address: str | None, num_processes: int | None,
                      environ=os.environ) -> bool:
    """Whether to call jax.distributed.initialize: `mode` "on"/"off", or "auto" = a multi-process launch is visible
    (a coordinator address, more than one process requested, or a SLURM step with several tasks)."""
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"--distributed={mode!r}: use one of {DISTRIBUTED_MODES}.")
    if mode != "auto":
        return mode == "on"
    return bool(coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS") or (num_processes or 1) > 1
                or int(environ.get("SLURM_NTASKS", "1")) > 1)


def initialize(mode: str = "auto", *, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins the multi-process job when `should_initialize`; values left None are detected by JAX (TPU, SLURM)."""
    if not should_initialize(mode, coordinator_address=coordinator_address, num_processes=num_processes):
        return
    given = None not in (coordinator_address, num_processes, process_id)
    # With all three given, JAX's cluster detection would still pick the local devices (one GPU per SLURM task);
    # a one-process-per-host launch wants every local device instead.
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, cluster_detection_method="deactivate" if given else None)
    logging.info("Joined the distributed job as process %d of %d", jax.process_index(), jax.process_count())


def is_primary() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def primary_first(name: str, fn: Callable[[], T]) -> T:
    """Runs `fn` on process 0, then (after a barrier) on the others: for idempotent work that writes caches, which
    process 0 creates and the others then only read."""
    if is_primary():
        result = fn()
    barrier(f"{name}: written by process 0")
    if not is_primary():
        result = fn()
    return result


def primary_only(name: str, fn: Callable[[], T]) -> T | None:
    """Runs `fn` on process 0 only (others get None); every process then waits at a barrier, so nobody reads
    what `fn` writes before it exists."""
    result = fn() if is_primary() else None
    barrier(f"{name}: written by process 0")
    return result
