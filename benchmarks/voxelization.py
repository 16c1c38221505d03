"""Events per second of the jitted JAX voxel grid on padded batches vs the float64 NumPy `np.add.at` reference.

Scaling table: event count x grid resolution (5 bins; 96x48 is the CPU default, 384x192 the paper's size).
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

from anon_jax.events import EventStream, pad_events, voxel_grid, voxel_grid_numpy
from benchmarks.common import add_common_args, time_fn, write_results

NUM_BINS = 5
STREAMS_PER_BATCH = 8  # chunks voxelised by one jitted call
PADDING_FRACTION = 0.2  # share of padded (masked) slots in each chunk, as when chunks of varying length share a capacity
FIRST_TIMESTAMP = 410629076.099676  # an Event-ReId timestamp (microseconds, float64 in the text files)
CHUNK_DURATION = 50_000.0  # microseconds spanned by one chunk


def synthetic_chunk(rng: np.random.Generator, num_events: int, height: int, width: int) -> EventStream:
    """A time-sorted chunk with Event-ReId-like absolute float64 timestamps (rounded to the files' 1e-6)."""
    offsets = np.sort(rng.uniform(0.0, CHUNK_DURATION, num_events))
    return EventStream(x=rng.integers(0, width, num_events), y=rng.integers(0, height, num_events),
                       t=np.round(FIRST_TIMESTAMP + offsets, 6), p=rng.integers(0, 2, num_events),
                       height=height, width=width)


def padded_batch(chunks: list[EventStream]) -> dict[str, jax.Array]:
    """The chunks padded to one capacity (with PADDING_FRACTION masked slots) and stacked on the device."""
    capacity = int(np.ceil(max(len(chunk) for chunk in chunks) / (1 - PADDING_FRACTION)))
    padded = [pad_events(chunk, capacity) for chunk in chunks]
    return {name: jax.device_put(np.stack([columns[name] for columns in padded])) for name in padded[0]}


@functools.lru_cache(maxsize=None)
def batched_voxel_grids(height: int, width: int):
    """Jitted grids of a padded batch, two ways: lax.map over the chunks, and jax.vmap (one compilation each)."""
    def grid(columns):
        x, y, t, p, mask = columns
        return voxel_grid(x, y, t, p, mask=mask, num_bins=NUM_BINS, height=height, width=width)

    mapped = jax.jit(lambda *columns: jax.lax.map(grid, columns))
    vmapped = jax.jit(jax.vmap(lambda *columns: grid(columns)))
    return mapped, vmapped


def measure(num_events: int, height: int, width: int, repeats: int, seed: int = 0) -> dict:
    """One row: NumPy reference and jitted JAX grids of `num_events` events in STREAMS_PER_BATCH chunks."""
    rng = np.random.default_rng(seed)
    chunks = [synthetic_chunk(rng, num_events // STREAMS_PER_BATCH, height, width) for _ in range(STREAMS_PER_BATCH)]
    batch = padded_batch(chunks)
    mapped, vmapped = batched_voxel_grids(height, width)
    columns = [batch[name] for name in ("x", "y", "t", "p", "mask")]

    def run_numpy():
        return [voxel_grid_numpy(c.x, c.y, c.t, c.p, num_bins=NUM_BINS, height=height, width=width) for c in chunks]

    runs = {
        "numpy": run_numpy,
        "jax": lambda: jax.block_until_ready(mapped(*columns)),
        "jax_vmap": lambda: jax.block_until_ready(vmapped(*columns)),
    }
    # Same grids before any timing: float32 (relative times, accumulation) vs the float64 reference.
    reference = np.stack(run_numpy())
    for name in ("jax", "jax_vmap"):
        np.testing.assert_allclose(np.asarray(runs[name]()), reference, rtol=1e-5, atol=1e-4, err_msg=name)
    # Interleave the three so a load change on the shared machine hits all alike.
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name] += time_fn(run, warmup=1, repeats=1)["times_s"]
    numpy_s, jax_s, vmap_s = (float(np.median(times[name])) for name in runs)
    total = STREAMS_PER_BATCH * (num_events // STREAMS_PER_BATCH)
    return {
        "events": total,
        "grid": f"{NUM_BINS}x{height}x{width}",
        "numpy_ms": 1e3 * numpy_s,
        "jax_ms": 1e3 * jax_s,
        "jax_vmap_ms": 1e3 * vmap_s,
        "numpy_Mev_per_s": total / numpy_s / 1e6,
        "jax_Mev_per_s": total / jax_s / 1e6,
        "speedup": numpy_s / jax_s,
        "speedup_vmap": numpy_s / vmap_s,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    args = parser.parse_args(argv)
    if args.quick:
        cases = [(10**3, 96, 48), (10**4, 96, 48), (10**4, 384, 192)]
    else:
        cases = [(10**4, 96, 48), (10**5, 96, 48), (10**6, 96, 48),
                 (10**4, 384, 192), (10**5, 384, 192), (10**6, 384, 192)]
    rows = [measure(n, height, width, args.repeats) for n, height, width in cases]
    meta = {
        "repeats": args.repeats,
        "streams_per_batch": STREAMS_PER_BATCH,
        "padding_fraction": PADDING_FRACTION,
        "jax": "jit(lax.map(anon_jax.events.voxel_grid)) over a padded batch of device arrays from pad_events "
               "(float32 relative times, mask), float32 grids; jax_vmap: the same with jit(vmap(...))",
        "numpy": "anon_jax.events.voxel_grid_numpy per chunk (np.add.at, float64) on absolute float64 timestamps",
        "events": "uniform pixels, sorted uniform times over 50 ms starting at 410629076.099676 us",
        "timing": "median over repeats after one warm-up call, NumPy and JAX alternating",
    }
    write_results("voxelization", rows, meta, args.out)
    return rows


if __name__ == "__main__":
    main()
