"""Leaky direct integration: the classical events-to-intensity baseline that learned reconstructors must beat.

Each pixel's log intensity L jumps by contrast * p at its events (p in {-1, +1}) and decays as exp(-alpha dt) in
between, so at a frame time t_f, L = sum over events with t <= t_f of contrast * p * exp(-alpha (t_f - t)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from anon_jax.events.stream import EventFormatError, EventStream

NORMALIZATIONS = ("minmax", "fixed")


def _segment_sums_at_last(starts: jnp.ndarray, values: jnp.ndarray) -> jnp.ndarray:
    """Sums of `values` over runs that begin where `starts` is True, each placed at its run's last element.

    A segmented associative scan: unlike a scatter-add it sums in a fixed order on every backend, so the
    result is bitwise reproducible (GPU scatter-adds use atomics whose order varies).
    """

    def combine(left, right):
        left_sum, left_start = left
        right_sum, right_start = right
        return jnp.where(right_start, right_sum, left_sum + right_sum), left_start | right_start

    sums, _ = jax.lax.associative_scan(combine, (values, starts))
    return sums


@functools.partial(jax.jit, static_argnames=("height", "width", "normalization"))
def _integrate(frame_s, event_s, frame_index, pixel, sign, contrast, leak_rate, base_intensity, *, height, width,
               normalization):
    num_frames, num_pixels = frame_s.shape[0], height * width
    valid = frame_index < num_frames
    # Each event decays from its own time to the first frame at or after it; later frames carry it by the
    # frame-to-frame recursion below.
    decay = jnp.exp(-leak_rate * (frame_s[jnp.minimum(frame_index, num_frames - 1)] - event_s))
    weights = jnp.where(valid, contrast * sign * decay, 0)
    # Sorting by (frame, pixel) groups each pixel's events per frame; invalid events sort last (frame index T).
    frame_index, pixel, weights = jax.lax.sort((frame_index, pixel, weights), num_keys=2, is_stable=True)
    changes = (frame_index[1:] != frame_index[:-1]) | (pixel[1:] != pixel[:-1])
    sums = _segment_sums_at_last(jnp.concatenate([jnp.ones(1, bool), changes]), weights)
    is_last = jnp.concatenate([changes, jnp.ones(1, bool)])
    # Every (frame, pixel) is written at most once, so this scatter has no collisions to order; invalid events
    # (frame index T) and non-final run elements fall outside the array and are dropped.
    increments = jnp.zeros((num_frames, num_pixels), weights.dtype).at[
        jnp.where(is_last, frame_index, num_frames), pixel].set(sums, mode="drop")
    increments = increments.reshape(num_frames, height, width)
    carry_decay = jnp.exp(-leak_rate * jnp.diff(frame_s, prepend=frame_s[:1]))

    def step(log_intensity, inputs):
        factor, increment = inputs
        log_intensity = log_intensity * factor + increment
        return log_intensity, log_intensity

    _, log_frames = jax.lax.scan(step, jnp.zeros((height, width), weights.dtype), (carry_decay, increments))
    if normalization == "fixed":
        return jnp.clip(base_intensity * jnp.exp(log_frames), 0, 1)
    # Min-max of exp(L) per frame, computed relative to the frame's maximum so that large L cannot overflow.
    top = jnp.max(log_frames, axis=(1, 2), keepdims=True)
    bottom = jnp.exp(jnp.min(log_frames, axis=(1, 2), keepdims=True) - top)
    span = 1 - bottom
    flat = span <= 0
    return jnp.where(flat, base_intensity, (jnp.exp(log_frames - top) - bottom) / jnp.where(flat, 1, span))


def leaky_integration_frames(stream: EventStream, frame_times, *, contrast: float, leak_rate_per_s: float,
                             time_unit_s: float, normalization: str = "minmax",
                             base_intensity: float = 0.5) -> jnp.ndarray:
    """Frames (T, H, W) float32 in [0, 1] of leaky direct integration at `frame_times` (the stream's time unit).

    Events with t <= t_f count for frame f; L starts at 0 before the first event. `time_unit_s` is the length
    of one time unit in seconds (1 for rpg text files, 1e-6 for microseconds), so the leak is
    exp(-leak_rate_per_s * dt * time_unit_s). Rescaling of the intensity exp(L):
    "minmax" (default): per frame, (exp(L) - min) / (max - min); a frame without contrast is `base_intensity`.
    "fixed": clip(base_intensity * exp(L), 0, 1), the same absolute scale for every frame.
    Deterministic: the per-pixel sums run in a fixed order on every backend.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"leaky_integration_frames: normalization must be one of {NORMALIZATIONS}, "
                         f"got {normalization!r}.")
    for name, value in (("contrast", contrast), ("leak_rate_per_s", leak_rate_per_s), ("time_unit_s", time_unit_s),
                        ("base_intensity", base_intensity)):
        if not np.isfinite(value) or value < 0 or (name == "time_unit_s" and value == 0):
            raise ValueError(f"leaky_integration_frames: {name} must be a finite non-negative number "
                             f"(time_unit_s positive), got {value!r}.")
    frame_times = np.asarray(frame_times, np.float64)
    if frame_times.ndim != 1 or frame_times.size == 0 or not np.isfinite(frame_times).all() \
            or (np.diff(frame_times) < 0).any():
        raise EventFormatError(
            f"leaky_integration_frames: frame_times must be a non-empty, finite, non-decreasing 1-D array, got "
            f"shape {frame_times.shape}; sort the frame times.")
    count = len(stream)
    # Pad the event axis to a power of two so that streams of similar length share one compiled program.
    capacity = 1 << max(count - 1, 0).bit_length()
    origin = min(frame_times[0], stream.t[0]) if count else frame_times[0]
    # Subtract in float64 in the file's unit first: absolute timestamps (e.g. 4.1e8) lose their digits in float32.
    event_s = np.zeros(capacity, np.float32)
    event_s[:count] = (stream.t - origin) * time_unit_s
    frame_index = np.full(capacity, frame_times.size, np.int32)
    frame_index[:count] = np.searchsorted(frame_times, stream.t, side="left")
    pixel = np.zeros(capacity, np.int32)
    pixel[:count] = stream.y.astype(np.int32) * stream.width + stream.x
    sign = np.zeros(capacity, np.float32)
    sign[:count] = 2.0 * stream.p - 1.0
    return _integrate(((frame_times - origin) * time_unit_s).astype(np.float32), event_s, frame_index, pixel, sign,
                      np.float32(contrast), np.float32(leak_rate_per_s), np.float32(base_intensity),
                      height=stream.height, width=stream.width, normalization=normalization)
