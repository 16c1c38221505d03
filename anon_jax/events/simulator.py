"""ESIM-style event camera simulator in JAX: turns intensity frames into an `EventStream`.

Model (after rpg_esim `event_simulator.cpp`), applied to every pixel independently:

* Log intensity: ``L = log(eps + I)`` for frames ``I`` in [0, 1] (``eps`` = ``SimulatorParams.log_eps``).
* Reference level ``ref``: initialised to the first frame's ``L`` (so the first frame fires nothing) and moved
  to every crossed level.
* Contrast thresholds: between frames ``k-1`` and ``k`` the pixel's log change ``L_k - L_{k-1}`` has
  polarity ``p = +1`` (rise) or ``-1`` (fall) and threshold ``C = Cp`` or ``Cm``; with ``sigma_C > 0`` each
  pixel draws ``C += N(0, sigma_C)`` once per frame pair, clipped below at 0.01. Changes of at most 1e-6 fire
  nothing.
* Crossings: every level ``ref + p * n * C`` (n = 1, 2, ...) up to ``L_k`` (included) fires one event of
  polarity ``p`` at the linearly interpolated time ``t_{k-1} + (level - L_{k-1}) / (L_k - L_{k-1}) *
  (t_k - t_{k-1})``. A level already behind ``L_{k-1}`` (possible when a noisy C shrank between pairs) fires at
  ``t_{k-1}``, as a pixel whose threshold drops below its pending change would; ESIM's loop instead stops at
  such a level, which freezes the pixel until its brightness turns back and biases counts low. With
  ``sigma_C = 0`` both agree.
* Refractory period: an event less than ``refractory_us`` after the pixel's last emitted event is dropped,
  but ``ref`` still moves to its level.
* Shot noise (not in ESIM): each pixel fires Poisson(``shot_noise_rate_hz`` * interval) extra events per
  frame interval at uniform random times with random polarity; they neither move ``ref`` nor obey the
  refractory period.
* Capacity: at most ``max_events_per_pixel_per_frame`` threshold events (and as many shot-noise events) are
  kept per pixel per frame pair, because JAX needs static shapes. Further crossings are dropped (``ref``
  still moves), counted, and reported by `simulate_events_with_stats` and as a warning by `simulate_events`;
  raise the cap or the frame rate if it happens.

Times: relative times inside a frame interval are computed in float32 on the device and added on the host to
the float64 frame time in microseconds, so long recordings keep sub-microsecond precision. Events are sorted
by time (stable: ties keep frame, row-major pixel, crossing order). Everything is deterministic for a key:
frame pair ``k`` draws its noise from ``fold_in(key, k)``.

Long inputs: `Simulator` takes the frames block by block (memory bounded by one segment of
``frame_pairs_per_call`` frames) and returns exactly the events of one `simulate_events` call.
"""

import dataclasses
import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from anon_jax.events import EventStream

# ESIM ignores log changes at or below this size (kEpsilon in event_simulator.cpp).
_MIN_LOG_CHANGE = 1e-6
# ESIM's lower bound on a noisy contrast threshold.
_MIN_CONTRAST_THRESHOLD = 0.01


class SimulatorInputError(ValueError):
    """Bad frames, timestamps or simulator parameters."""


@dataclasses.dataclass(frozen=True)
class SimulatorParams:
    """Parameters of the event simulator (see the module docstring for the model).

    Attributes:
        contrast_threshold_pos: Cp, log-intensity step that fires one positive (ON) event.
        contrast_threshold_neg: Cm, log-intensity step that fires one negative (OFF) event.
        contrast_threshold_sigma: std of the per-pixel, per-frame-pair Gaussian noise added to Cp/Cm.
        refractory_us: minimum time between two emitted events of one pixel, in microseconds (0 = off).
        shot_noise_rate_hz: rate of random noise events per pixel per second (0 = off).
        log_eps: eps in L = log(eps + I).
        max_events_per_pixel_per_frame: static cap on threshold events (and on shot-noise events) per pixel
          per frame pair; crossings beyond it are dropped and counted.
        frame_pairs_per_call: frame pairs handled per compiled device call; bounds device memory to about
          6 bytes * frame_pairs_per_call * 2 * max_events_per_pixel_per_frame * H * W.
    """

    contrast_threshold_pos: float = 0.2
    contrast_threshold_neg: float = 0.2
    contrast_threshold_sigma: float = 0.03
    refractory_us: float = 0.0
    shot_noise_rate_hz: float = 0.0
    log_eps: float = 1e-3
    max_events_per_pixel_per_frame: int = 8
    frame_pairs_per_call: int = 64

    def __post_init__(self):
        for name in ("contrast_threshold_pos", "contrast_threshold_neg"):
            if not getattr(self, name) >= _MIN_CONTRAST_THRESHOLD:
                raise SimulatorInputError(
                    f"SimulatorParams.{name}={getattr(self, name)!r}: must be >= {_MIN_CONTRAST_THRESHOLD}.")
        for name in ("contrast_threshold_sigma", "refractory_us", "shot_noise_rate_hz"):
            if not getattr(self, name) >= 0:
                raise SimulatorInputError(f"SimulatorParams.{name}={getattr(self, name)!r}: must be >= 0.")
        if not self.log_eps > 0:
            raise SimulatorInputError(f"SimulatorParams.log_eps={self.log_eps!r}: must be > 0.")
        for name in ("max_events_per_pixel_per_frame", "frame_pairs_per_call"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise SimulatorInputError(f"SimulatorParams.{name}={value!r}: must be an integer >= 1.")


def _threshold_events(ref, last_event_rel, log_prev, log_next, interval_us, key, params):
    """Threshold crossings of one frame pair; returns new state and (cap, H, W) event slots."""
    cap = params.max_events_per_pixel_per_frame
    change = log_next - log_prev
    polarity = jnp.where(change >= 0, 1.0, -1.0)
    threshold = jnp.where(change >= 0, params.contrast_threshold_pos, params.contrast_threshold_neg)
    if params.contrast_threshold_sigma > 0:
        noise = params.contrast_threshold_sigma * jax.random.normal(key, change.shape, jnp.float32)
        threshold = jnp.maximum(threshold + noise, _MIN_CONTRAST_THRESHOLD)
    moving = jnp.abs(change) > _MIN_LOG_CHANGE
    # Crossed levels are ref + polarity * n * C for n = 1..last (distance from ref along the motion, in C).
    last = jnp.floor(polarity * (log_next - ref) / threshold)
    count = jnp.where(moving, jnp.maximum(last, 0.0), 0.0).astype(jnp.int32)
    new_ref = jnp.where(count > 0, ref + polarity * last * threshold, ref)
    safe_change = jnp.where(moving, change, 1.0)

    slots = jnp.arange(cap, dtype=jnp.float32)[:, None, None]
    levels = ref + polarity * (slots + 1) * threshold
    times = jnp.clip((levels - log_prev) / safe_change, 0.0, 1.0) * interval_us
    emitted = slots < count
    last_emitted = last_event_rel
    if params.refractory_us > 0:
        # Sequential per pixel: whether a crossing is kept depends on the last kept one.
        kept = []
        for slot in range(cap):
            keep = emitted[slot] & (times[slot] - last_emitted >= params.refractory_us)
            last_emitted = jnp.where(keep, times[slot], last_emitted)
            kept.append(keep)
        emitted = jnp.stack(kept)
    dropped = jnp.sum(jnp.maximum(count - cap, 0))
    slots_polarity = jnp.broadcast_to(polarity > 0, (cap,) + change.shape)
    return new_ref, last_emitted, times, slots_polarity, emitted, dropped


def _shot_noise_events(interval_us, key, shape, params):
    """Poisson shot-noise events of one frame interval as (cap, H, W) slots, plus the dropped count."""
    cap = params.max_events_per_pixel_per_frame
    key_count, key_time, key_polarity = jax.random.split(key, 3)
    mean_count = params.shot_noise_rate_hz * 1e-6 * interval_us
    count = jax.random.poisson(key_count, mean_count, shape)
    time_rel = jax.random.uniform(key_time, (cap,) + shape, jnp.float32) * interval_us
    polarity = jax.random.bernoulli(key_polarity, 0.5, (cap,) + shape)
    valid = jnp.arange(cap)[:, None, None] < count[None]
    dropped = jnp.sum(jnp.maximum(count - cap, 0))
    return time_rel, polarity, valid, dropped


@functools.partial(jax.jit, static_argnames=("params",))
def _simulate_segment(state, log_frames, intervals_us, pair_indices, key, params):
    """Scans frame pairs of one segment; log_frames holds the segment's frames after the state's frame."""

    def step(carry, inputs):
        ref, last_event_rel, log_prev = carry
        log_next, interval_us, pair_index = inputs
        pair_key = jax.random.fold_in(key, pair_index)
        key_threshold, key_shot = jax.random.split(pair_key)
        ref, last_event_rel, times, polarities, valid, dropped = _threshold_events(
            ref, last_event_rel, log_prev, log_next, interval_us, key_threshold, params)
        if params.shot_noise_rate_hz > 0:
            shot_times, shot_polarities, shot_valid, shot_dropped = _shot_noise_events(
                interval_us, key_shot, log_next.shape, params)
            times = jnp.concatenate([times, shot_times])
            polarities = jnp.concatenate([polarities, shot_polarities])
            valid = jnp.concatenate([valid, shot_valid])
            dropped = dropped + shot_dropped
        # Keep the last event time relative to the start of the next interval (float32 stays precise).
        last_event_rel = last_event_rel - interval_us
        # `active` lets the host gather only pixels with events instead of scanning every slot.
        return (ref, last_event_rel, log_next), (times, polarities, valid, valid.any(axis=0), dropped)

    state, outputs = jax.lax.scan(step, state, (log_frames, intervals_us, pair_indices))
    return state, outputs


def _check_inputs(frames, timestamps_us):
    frames = np.asarray(frames)
    timestamps_us = np.asarray(timestamps_us, dtype=np.float64)
    if frames.ndim != 3:
        raise SimulatorInputError(f"frames must have shape (T, H, W); got {frames.shape}.")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise SimulatorInputError(f"frames must be non-empty; got shape {frames.shape}.")
    if not np.issubdtype(frames.dtype, np.floating):
        raise SimulatorInputError(
            f"frames must be float in [0, 1]; got dtype {frames.dtype} (divide uint8 frames by 255).")
    if not (np.all(np.isfinite(frames)) and frames.min() >= 0.0 and frames.max() <= 1.0):
        raise SimulatorInputError("frames must be finite and in [0, 1]; clip or rescale them first.")
    if timestamps_us.shape != (frames.shape[0],):
        raise SimulatorInputError(
            f"timestamps_us must have shape ({frames.shape[0]},) to match frames; got {timestamps_us.shape}.")
    if not np.all(np.isfinite(timestamps_us)) or np.any(np.diff(timestamps_us) <= 0):
        raise SimulatorInputError("timestamps_us must be finite and strictly increasing.")
    return frames, timestamps_us


def _empty_columns():
    return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float64), np.zeros(0, np.uint8)


class Simulator:
    """The simulator fed frame blocks one after another, with memory bounded by one segment of frames.

    `push(frames, timestamps_us)` takes the next frames (T, H, W) in [0, 1] at strictly increasing times after
    the previous block's; `finish()` flushes what is left. Both return the events that are final so far as an
    `EventStream` sorted by time, each after all events returned before. Together they are exactly the events
    of `simulate_events` on all frames at once with the same key and parameters: the state (reference level,
    last event time, previous log frame) and the global frame-pair index (noise keys ``fold_in(key, k)``)
    carry over, frame pairs run in the same segments of `frame_pairs_per_call`, and events a later pair could
    precede (times past the newest frame, from float32 rounding) wait for the next segment.
    `dropped` counts the events lost to the per-pixel cap so far.
    """

    def __init__(self, params: SimulatorParams, key):
        self.params, self.key = params, key
        self.dropped = 0
        self.num_frames = 0
        self.height = self.width = None
        self._state = None
        self._last_time = None
        self._finished = False
        # Frame pairs waiting for a full segment: end log frame, float64 interval and start time of each.
        self._pending_frames = np.zeros((0, 0, 0), np.float32)
        self._pending_intervals = np.zeros(0, np.float64)
        self._pending_starts = np.zeros(0, np.float64)
        self._next_pair = 0  # global index of the first pending pair
        self._held = _empty_columns()

    @property
    def num_pairs(self) -> int:
        """Frame pairs pushed so far (simulated or pending)."""
        return max(self.num_frames - 1, 0)

    def push(self, frames, timestamps_us) -> EventStream:
        """Adds frames (T, H, W) in [0, 1] at timestamps_us (T,); returns the events that became final."""
        if self._finished:
            raise SimulatorInputError("Simulator.push after finish(); start a new Simulator.")
        frames, timestamps_us = _check_inputs(frames, timestamps_us)
        if self._state is None:
            self.height, self.width = frames.shape[1:]
        elif frames.shape[1:] != (self.height, self.width):
            raise SimulatorInputError(
                f"frames have size (H, W) = {frames.shape[1:]}, but earlier blocks had {(self.height, self.width)}; "
                "every frame must have the same size.")
        elif not timestamps_us[0] > self._last_time:
            raise SimulatorInputError(
                f"timestamps_us must keep increasing across blocks: {timestamps_us[0]!r} follows {self._last_time!r}.")
        log_frames = np.log(self.params.log_eps + frames.astype(np.float32)).astype(np.float32)
        if self._state is None:
            self._state = (jnp.asarray(log_frames[0]), jnp.full((self.height, self.width), -jnp.inf, jnp.float32),
                           jnp.asarray(log_frames[0]))
            self._pending_frames = np.zeros((0, self.height, self.width), np.float32)
            # The first frame only sets the state; pairs end at the following frames.
            starts, ends, log_frames = timestamps_us[:-1], timestamps_us[1:], log_frames[1:]
        else:
            starts, ends = np.concatenate([[self._last_time], timestamps_us[:-1]]), timestamps_us
        self._pending_frames = np.concatenate([self._pending_frames, log_frames])
        self._pending_intervals = np.concatenate([self._pending_intervals, ends - starts])
        self._pending_starts = np.concatenate([self._pending_starts, starts])
        self.num_frames += len(timestamps_us)
        self._last_time = timestamps_us[-1]
        parts = []
        segment = self.params.frame_pairs_per_call
        while len(self._pending_starts) >= segment:
            parts.append(self._run_segment(segment))
        return self._stream(parts)

    def finish(self) -> EventStream:
        """Simulates the pending frame pairs and returns every event not returned yet."""
        if self._finished:
            raise SimulatorInputError("Simulator.finish called twice.")
        self._finished = True
        if self._state is None:
            raise SimulatorInputError("Simulator.finish before any frames; push at least one frame.")
        parts = [self._run_segment(len(self._pending_starts))] if len(self._pending_starts) else []
        parts.append(self._held)
        self._held = _empty_columns()
        return self._stream(parts)

    def _run_segment(self, real: int):
        """Simulates the first `real` pending pairs (padded to one segment); returns the events now final."""
        segment = self.params.frame_pairs_per_call
        pad = segment - real
        log_next = self._pending_frames[:real]
        intervals = self._pending_intervals[:real]
        starts = self._pending_starts[:real]
        if pad:
            # Copies of the last frame: no change, so no threshold events; their shot noise is discarded below.
            # One compiled shape serves every segment. Only the last segment is padded (finish).
            log_next = np.concatenate([log_next, np.repeat(log_next[-1:], pad, axis=0)])
            intervals = np.concatenate([intervals, np.ones(pad)])
        pair_indices = np.arange(self._next_pair, self._next_pair + segment, dtype=np.int32)
        self._state, (times, polarities, valid, active, dropped) = _simulate_segment(
            self._state, jnp.asarray(log_next), jnp.asarray(intervals.astype(np.float32)),
            jnp.asarray(pair_indices), self.key, self.params)
        self._pending_frames = self._pending_frames[real:]
        self._pending_intervals = self._pending_intervals[real:]
        self._pending_starts = self._pending_starts[real:]
        self._next_pair += real

        self.dropped += int(np.asarray(dropped)[:real].sum())
        pair, y, x = np.nonzero(np.asarray(active)[:real])
        slot_valid = np.asarray(valid)[pair, :, y, x]  # (pixels with events, slots)
        event_pixel, _ = np.nonzero(slot_valid)
        t = starts[pair[event_pixel]] + np.asarray(times)[pair, :, y, x][slot_valid].astype(np.float64)
        p = np.asarray(polarities)[pair, :, y, x][slot_valid].astype(np.uint8)
        x, y = x[event_pixel].astype(np.int32), y[event_pixel].astype(np.int32)
        # Stable sort after the held events, which come from earlier pairs: ties keep pair, row-major pixel and
        # crossing order, as one global sort would.
        held_x, held_y, held_t, held_p = self._held
        x, y, t, p = (np.concatenate([held_x, x]), np.concatenate([held_y, y]), np.concatenate([held_t, t]),
                      np.concatenate([held_p, p]))
        order = np.argsort(t, kind="stable")
        x, y, t, p = x[order], y[order], t[order], p[order]
        # Every later pair starts at the first pending start time (or the newest frame) and adds a time >= 0,
        # so events up to it are final; the rest (float32 rounding past the pair's end) wait.
        boundary = self._pending_starts[0] if len(self._pending_starts) else self._last_time
        final = int(np.searchsorted(t, boundary, side="right"))
        self._held = (x[final:], y[final:], t[final:], p[final:])
        return x[:final], y[:final], t[:final], p[:final]

    def _stream(self, parts) -> EventStream:
        columns = [np.concatenate([part[i] for part in parts]) for i in range(4)] if parts else _empty_columns()
        x, y, t, p = columns
        return EventStream(x=x, y=y, t=t, p=p, height=self.height, width=self.width, source="simulator")


def simulate_events_with_stats(frames, timestamps_us, params: SimulatorParams, key):
    """Simulates events from frames (T, H, W) in [0, 1] at timestamps_us (T,); returns (EventStream, dropped).

    `dropped` counts crossings and shot-noise events lost to `max_events_per_pixel_per_frame`.
    """
    simulator = Simulator(params, key)
    first = simulator.push(frames, timestamps_us)
    stream = EventStream.concatenate([first, simulator.finish()])
    return stream, simulator.dropped


def simulate_events(frames, timestamps_us, params: SimulatorParams, key) -> EventStream:
    """Simulates events from frames (T, H, W) in [0, 1] at timestamps_us (T,), microseconds, float64.

    Warns (absl logging) when the per-pixel cap dropped events.
    """
    stream, dropped = simulate_events_with_stats(frames, timestamps_us, params, key)
    if dropped:
        logging.warning(
            "Event simulator dropped %d events over the cap max_events_per_pixel_per_frame=%d; raise the cap "
            "or the frame rate.", dropped, params.max_events_per_pixel_per_frame)
    return stream
