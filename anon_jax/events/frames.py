"""AnonyNoise's event frames: tonic 1.5.0 `ToFrame(sensor_size, n_time_bins=n)` counts in channels-last layout.

Output (H, W, 2n) float32 raw counts, channel = 2 * time_bin + polarity (0 = OFF, 1 = ON). A NumPy reference
that slices like tonic and a jit-able JAX version on padded events that bins with exact integer arithmetic.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from anon_jax.events.stream import EventFormatError, check_positive_sizes, find_invalid_event, host_columns

# Relative times travel to the device as int32 (JAX's default integer width).
_MAX_RELATIVE_TIME = np.iinfo(np.int32).max


def _check_host_events(x, y, t, p, height: int, width: int, where: str) -> None:
    """Raises EventFormatError unless x, y are on the grid, p is 0/1 (or bool) and t is numeric and sorted."""
    if t.dtype.kind not in "iuf":
        raise EventFormatError(f"{where}: timestamps have dtype {t.dtype}; expected integers or floats.")
    problem = find_invalid_event(x, y, t, p, height, width)
    if problem is None and p.dtype.kind in "if":
        minus_one = np.flatnonzero(p == -1)
        if minus_one.size:
            problem = int(minus_one[0]), "polarity p=-1; frames need p in {0, 1} (OFF = 0, ON = 1)"
    if problem is not None:
        index, reason = problem
        raise EventFormatError(
            f"{where}: event {index} (0-based): {reason}. tonic's ToFrame needs x in [0, {width}), y in "
            f"[0, {height}), polarity 0/1 and time-sorted events: crop, map polarities to 0/1 and stable-sort "
            "by t first.")


def _as_time_column(t: np.ndarray) -> np.ndarray:
    # Unsigned times would make tonic's `arange(n) * window` float64; signed 64-bit keeps them exact.
    return t.astype(np.int64) if t.dtype.kind == "u" else t


def event_frames_numpy(x, y, t, p, *, num_time_bins: int, height: int, width: int) -> np.ndarray:
    """NumPy reference (H, W, 2n) float32 of time-sorted events, computed as tonic 1.5.0 does.

    window = (t[-1] - t[0]) // n (floor division; integer for integer t); slice k holds the events in
    [t[0] + k*window, t[0] + k*window + window), found with np.searchsorted (left), and is counted with
    np.add.at. Events at or after t[0] + n*window are dropped (always the last event when window > 0).
    Degenerate streams give zeros, as tonic 1.5.0 does (checked in its wheel): an empty stream (ToFrame
    returns zeros) and window == 0, i.e. span t[-1] - t[0] < n, which includes equal timestamps (every
    slice is empty). Unlike tonic's int16 frames, counts above 32767 per pixel and bin do not wrap.
    """
    check_positive_sizes("event frames", num_time_bins=num_time_bins, height=height, width=width)
    x, y, t, p = host_columns("event frames", x, y, t, p)
    _check_host_events(x, y, t, p, height, width, "event_frames_numpy")
    t = _as_time_column(t)
    counts = np.zeros((num_time_bins, 2, height, width), np.int64)
    if len(t):
        window = (t[-1] - t[0]) // num_time_bins
        starts = np.arange(num_time_bins) * window + t[0]
        first = np.searchsorted(t, starts)
        stop = np.searchsorted(t, starts + window)
        for time_bin, (begin, end) in enumerate(zip(first, stop)):
            events = slice(begin, end)
            np.add.at(counts, (time_bin, p[events].astype(np.int64), y[events].astype(np.int64),
                               x[events].astype(np.int64)), 1)
    # (T, P, H, W) -> (H, W, T, P) -> (H, W, 2T): channel 2*t + p, as AnonyNoise's reshape to (10, H, W).
    return counts.transpose(2, 3, 0, 1).reshape(height, width, 2 * num_time_bins).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("num_time_bins", "height", "width"))
def _event_frames_jit(x, y, t, p, mask, *, num_time_bins, height, width):
    n = t.shape[0]
    first = jnp.argmax(mask)
    last = n - 1 - jnp.argmax(mask[::-1])
    t_first = t[first]
    window = (t[last] - t_first) // num_time_bins
    # For sorted integer times, t[0] + k*window <= t < t[0] + (k+1)*window is exactly (t - t[0]) // window == k,
    # so this reproduces tonic's searchsorted slices; window == 0 leaves every slice empty.
    time_bin = jnp.where(window > 0, (t - t_first) // jnp.maximum(window, 1), num_time_bins)
    polarity = p.astype(jnp.int32)
    x, y = x.astype(jnp.int32), y.astype(jnp.int32)
    keep = (mask & (time_bin >= 0) & (time_bin < num_time_bins) & ((polarity == 0) | (polarity == 1))
            & (x >= 0) & (x < width) & (y >= 0) & (y < height))
    channels = 2 * num_time_bins
    size = height * width * channels
    flat = (y * width + x) * channels + 2 * time_bin.astype(jnp.int32) + polarity
    # Dropped events get an out-of-range index, which the scatter ignores.
    flat = jnp.where(keep, flat, size)
    frames = jnp.zeros(size, jnp.float32).at[flat].add(jnp.float32(1), mode="drop")
    return frames.reshape(height, width, channels)


def _relative_integer_times(t: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """int32 times minus the first valid one (0 where invalid), exact; raises for fractions or long spans."""
    t = _as_time_column(t)
    if t.dtype.kind == "f":
        fractional = np.flatnonzero(valid & (t != np.round(t)))
        if fractional.size:
            raise EventFormatError(
                f"event_frames: timestamp t={t[fractional[0]]!r} (event {fractional[0]}) is not an integer; the "
                "JAX frames bin integer times exactly. Cast to int64 as AnonyNoise does, or use "
                "event_frames_numpy for fractional times.")
    indices = np.flatnonzero(valid)
    relative = np.zeros(t.shape, np.int64)
    if indices.size:
        relative[valid] = t[valid].astype(np.int64) - np.int64(t[indices[0]])
        span = relative[indices[-1]]
        if span > _MAX_RELATIVE_TIME:
            raise EventFormatError(
                f"event_frames: the events span {span} time units, more than the int32 range the JAX frames "
                "use; convert the timestamps to a coarser unit or use event_frames_numpy.")
    return relative.astype(np.int32)


def event_frames(x, y, t, p, *, num_time_bins: int, height: int, width: int, mask=None) -> jnp.ndarray:
    """Event frames (H, W, 2n) float32 of padded events, equal to `event_frames_numpy`; jit- and vmap-able.

    `mask` marks the real events (default: all); t[0] and t[-1] of the reference become the first and last
    real events. Host (NumPy) inputs are validated like the reference and their times made relative to the
    first real event in int64 on the host, so large timestamps (e.g. 410629076 us) bin exactly; they must be
    integers. Traced or device inputs must hold integer times whose span fits int32 (relative times are
    safest: an outer `jax.jit` would truncate int64 host times to int32); float times are refused there, as
    float32 would misbin them. Masked, off-grid or non-0/1-polarity events are then ignored.
    """
    check_positive_sizes("event frames", num_time_bins=num_time_bins, height=height, width=width)
    if not isinstance(t, jax.Array):
        t = np.asarray(t)
        valid = np.ones(t.shape, bool) if mask is None else np.asarray(mask, bool)
        x, y, t, p, valid = host_columns("event frames", x, y, t, p, valid)
        _check_host_events(x[valid], y[valid], t[valid], p[valid], height, width, "event_frames")
        t = _relative_integer_times(t, valid)
        # Masked entries may hold anything; zero them so the int32 transfer cannot overflow.
        x, y, p = (np.where(valid, values, 0).astype(np.int32) for values in (x, y, p))
        mask = valid
    elif not jnp.issubdtype(t.dtype, jnp.integer):
        raise EventFormatError(
            f"event_frames: traced/device timestamps have dtype {t.dtype}; pass integer times relative to the "
            "first event (int32), or NumPy arrays so the host makes them relative exactly.")
    if mask is None:
        mask = jnp.ones(jnp.shape(t), bool)
    if jnp.shape(t)[0] == 0:
        return jnp.zeros((height, width, 2 * num_time_bins), jnp.float32)
    return _event_frames_jit(jnp.asarray(x), jnp.asarray(y), jnp.asarray(t), jnp.asarray(p),
                             jnp.asarray(mask, bool), num_time_bins=num_time_bins, height=height, width=width)
