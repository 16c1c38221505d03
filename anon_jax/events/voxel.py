"""E2VID voxel grids of events (JAX, plus float64 NumPy references) and the Event-ReId chunk pipeline.

Grid: t* = (B-1)(t - t_first)/(t_last - t_first) (a zero span counts as 1), polarity 0 -> -1, and each event's
+-1 split linearly between bins floor(t*) and floor(t*) + 1. Then normalisation over the non-zero entries and
PyTorch-style nearest resizing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from anon_jax.events.stream import EventFormatError, EventStream, check_positive_sizes, host_columns


def _check_host_events(xs: np.ndarray, ys: np.ndarray, ts: np.ndarray, height: int, width: int) -> None:
    """Raises EventFormatError for an empty input, coordinates off the grid, or unsorted timestamps."""
    if len(ts) == 0:
        raise EventFormatError(
            "voxel grid: no events; an empty stream has no time span. Skip empty chunks or use a longer window.")
    for name, values, size in (("x", xs, width), ("y", ys, height)):
        outside = np.flatnonzero((values < 0) | (values >= size))
        if outside.size:
            raise EventFormatError(
                f"voxel grid: event {outside[0]} has {name}={values[outside[0]]} outside [0, {size}); shift the "
                "events to their bounding box or pass the right grid size.")
    decreasing = np.flatnonzero(np.diff(ts) < 0)
    if decreasing.size:
        raise EventFormatError(
            f"voxel grid: timestamps decrease at event {decreasing[0] + 1}; the first and last events must span "
            "the stream, so sort the events by time first.")


def _relative_times(ts: np.ndarray) -> np.ndarray:
    """Times minus the first one, subtracted exactly (integers) or in float64, as float64."""
    if ts.dtype.kind in "iu":
        return (ts.astype(np.int64) - np.int64(ts[0])).astype(np.float64)
    return ts.astype(np.float64) - np.float64(ts[0])


def voxel_grid_numpy(xs, ys, ts, ps, *, num_bins: int, height: int, width: int) -> np.ndarray:
    """Float64 reference voxel grid (num_bins, height, width) of time-sorted events, by `np.add.at`."""
    check_positive_sizes("voxel grid", num_bins=num_bins, height=height, width=width)
    xs, ys, ts, ps = host_columns("voxel grid", xs, ys, ts, ps)
    xs, ys = xs.astype(np.int64), ys.astype(np.int64)
    _check_host_events(xs, ys, ts, height, width)
    relative = _relative_times(ts)
    span = relative[-1] if relative[-1] != 0 else 1.0
    t_star = (num_bins - 1) * relative / span
    lower = np.floor(t_star).astype(np.int64)
    fraction = t_star - lower
    sign = np.where(ps > 0, 1.0, -1.0)
    grid = np.zeros(num_bins * height * width, np.float64)
    pixel = ys * width + xs
    for bins, weights in ((lower, sign * (1.0 - fraction)), (lower + 1, sign * fraction)):
        inside = (bins >= 0) & (bins < num_bins)
        np.add.at(grid, bins[inside] * (height * width) + pixel[inside], weights[inside])
    return grid.reshape(num_bins, height, width)


@functools.partial(jax.jit, static_argnames=("num_bins", "height", "width"))
def _voxel_grid_jit(xs, ys, ts, ps, mask, *, num_bins, height, width):
    n = ts.shape[0]
    positions = jnp.arange(n)
    # First and last valid event in one variadic min/max pass (5x cheaper on CPU than two argmaxes); with no
    # valid event they come out as 0 and n - 1, as argmax would give.
    first, last = jax.lax.reduce(
        (jnp.where(mask, positions, n), jnp.where(mask, positions, -1)),
        (jnp.array(n, positions.dtype), jnp.array(-1, positions.dtype)),
        lambda a, b: (jnp.minimum(a[0], b[0]), jnp.maximum(a[1], b[1])), (0,))
    first, last = first % n, last % n
    # Subtract before any float conversion: exact for integer times, and a no-op after the host subtraction.
    t_first = ts[first]
    relative = (jnp.where(mask, ts, t_first) - t_first).astype(jnp.float32)
    # relative[last], computed from the two scalars: indexing the fused `relative` made XLA's CPU loop
    # re-derive it for every event (5x slower at 10^6 events).
    span = (jnp.where(mask[last], ts[last], t_first) - t_first).astype(jnp.float32)
    span = jnp.where(span == 0, jnp.float32(1), span)
    # XLA turns division by a broadcast scalar into multiplication by its reciprocal, which puts the last
    # event at t* = B-1-ulp and leaks a 1e-7 residue into bin B-2 (an exact zero in float64, which
    # normalisation would turn into a visible value). The barrier keeps the IEEE division; the snap keeps
    # events at the last timestamp exactly in bin B-1 on backends with approximate division.
    span = jax.lax.optimization_barrier(jnp.broadcast_to(span, relative.shape))
    t_star = jnp.where(relative == span, jnp.float32(num_bins - 1), (num_bins - 1) * relative / span)
    lower_float = jnp.floor(t_star)
    fraction = t_star - lower_float
    lower = lower_float.astype(jnp.int32)
    sign = jnp.where(ps > 0, jnp.float32(1), jnp.float32(-1))
    on_grid = mask & (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    pixel = ys.astype(jnp.int32) * width + xs.astype(jnp.int32)
    size = num_bins * height * width
    grid = jnp.zeros(size, jnp.float32)
    # Left votes of all events, then right votes, as the reference's two np.add.at calls. Two scatters, not one
    # over concatenated votes: on CPU, XLA's loop over a concatenation costs several times the scatter itself.
    for bins, weights in ((lower, sign * (1 - fraction)), (lower + 1, sign * fraction)):
        inside = on_grid & (bins >= 0) & (bins < num_bins)
        # Out-of-range flat indices are dropped by the scatter, so masked events cost nothing.
        flat = jnp.where(inside, bins * (height * width) + pixel, size)
        grid = grid.at[flat].add(weights, mode="drop")
    return grid.reshape(num_bins, height, width)


def voxel_grid(xs, ys, ts, ps, *, num_bins: int, height: int, width: int, mask=None) -> jnp.ndarray:
    """E2VID voxel grid (num_bins, height, width) float32 of padded events; jit- and vmap-able.

    `mask` marks the valid events (default: all); the span runs from the first to the last valid event, which
    must be time-sorted. Host (NumPy) inputs are checked and their first valid time is subtracted in float64
    on the host, so absolute timestamps such as 410629076.099676 keep their precision (the core is jitted
    already; an outer `jax.jit` would cast such times to float32 before this runs). Traced or device inputs
    should hold relative times (as `pad_events` gives); masked or off-grid events are ignored, and no valid
    events give a zero grid.
    """
    check_positive_sizes("voxel grid", num_bins=num_bins, height=height, width=width)
    if not isinstance(ts, jax.Array):
        ts = np.asarray(ts)
        valid = np.ones(ts.shape, bool) if mask is None else np.asarray(mask, bool)
        xs, ys, ts, ps, valid = host_columns("voxel grid", xs, ys, ts, ps, valid)
        _check_host_events(xs[valid], ys[valid], ts[valid], height, width)
        first = np.flatnonzero(valid)[0]
        ts = _relative_times(ts[first:])
        ts = np.concatenate([np.zeros(first), ts]).astype(np.float32)
        mask = valid
    if mask is None:
        mask = jnp.ones(jnp.shape(ts), bool)
    if jnp.shape(ts)[0] == 0:
        return jnp.zeros((num_bins, height, width), jnp.float32)
    return _voxel_grid_jit(jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(ts), jnp.asarray(ps), jnp.asarray(mask),
                           num_bins=num_bins, height=height, width=width)


def normalize_voxel_grid(v: jnp.ndarray) -> jnp.ndarray:
    """Normalises the non-zero entries of `v` (all axes together) to zero mean, unit std; zeros stay zero.

    Returns zeros when there are no non-zero entries or their std is 0 (the original would give NaN).
    Batches: `jax.vmap`.
    """
    v = jnp.asarray(v)
    nonzero = v != 0
    count = jnp.sum(nonzero)
    safe_count = jnp.maximum(count, 1)
    mean = jnp.sum(v) / safe_count
    # Two-pass variance: same value as E[v^2] - m^2 but without float32 cancellation.
    variance = jnp.sum(jnp.where(nonzero, (v - mean) ** 2, 0)) / safe_count
    std = jnp.sqrt(variance)
    usable = (count > 0) & (std > 0)
    return jnp.where(nonzero & usable, (v - mean) / jnp.where(usable, std, 1), 0).astype(v.dtype)


def normalize_voxel_grid_numpy(v) -> np.ndarray:
    """Float64 reference of `normalize_voxel_grid`: m = sum/nnz, s = sqrt(sum(v^2)/nnz - m^2)."""
    v = np.asarray(v, np.float64)
    nonzero = v != 0
    count = np.count_nonzero(nonzero)
    if count == 0:
        return np.zeros_like(v)
    mean = v.sum() / count
    variance = (v * v).sum() / count - mean**2
    if not variance > 0:
        return np.zeros_like(v)
    return np.where(nonzero, (v - mean) / np.sqrt(variance), 0.0)


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index under PyTorch `F.interpolate(mode='nearest', size=...)`.

    For float32 tensors (the original pipeline calls `.float()` before resizing) PyTorch computes
    scale = float32(in / out) and min(floor(float32(dst) * scale), in - 1) in float32; float64 arithmetic picks
    a different source for some sizes (e.g. 2 -> 82), so the float32 steps are reproduced exactly.
    """
    for name, value in (("input", in_size), ("output", out_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise EventFormatError(f"nearest resize: {name} size must be a positive integer, got {value!r}.")
    scale = np.float32(in_size) / np.float32(out_size)
    source = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(source, in_size - 1)


def nearest_resize(v: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """Nearest resize of the last two axes to (height, width), as PyTorch's `F.interpolate(mode='nearest')`."""
    rows = nearest_source_indices(v.shape[-2], height)
    cols = nearest_source_indices(v.shape[-1], width)
    return jnp.take(jnp.take(jnp.asarray(v), rows, axis=-2), cols, axis=-1)


def nearest_resize_numpy(v, height: int, width: int) -> np.ndarray:
    """NumPy twin of `nearest_resize`."""
    v = np.asarray(v)
    rows = nearest_source_indices(v.shape[-2], height)
    cols = nearest_source_indices(v.shape[-1], width)
    return v[..., rows[:, None], cols[None, :]]


def chunk_voxel_grid(stream: EventStream, *, num_bins: int, height: int, width: int) -> np.ndarray:
    """The Event-ReId per-chunk tensor (num_bins, height, width) float32.

    Bounding-box shift, float64 voxel grid on the (max y + 1) x (max x + 1) box, normalisation over non-zero
    entries, nearest resize to (height, width).
    """
    box = stream.require_nonempty().bbox_shifted()
    grid = voxel_grid_numpy(box.x, box.y, box.t, box.p, num_bins=num_bins, height=box.height, width=box.width)
    return nearest_resize_numpy(normalize_voxel_grid_numpy(grid), height, width).astype(np.float32)
