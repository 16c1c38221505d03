"""Tests of the ESIM-style event simulator: analytic ramps, refractory period, noise, cap and determinism."""

import jax
import numpy as np
import pytest

from anon_jax.events import EventStream
from anon_jax.events.simulator import (SimulatorInputError, SimulatorParams, simulate_events,
                                       simulate_events_with_stats)

EPS = 1e-3
NOISELESS = SimulatorParams(contrast_threshold_sigma=0.0)


def frames_from_log(log_frames):
    """Intensity frames whose log(eps + I) equals log_frames."""
    return (np.exp(np.asarray(log_frames, np.float64)) - EPS).astype(np.float32)


def esim_reference(log_frames, timestamps_us, threshold, refractory_us):
    """Per-pixel loop following ESIM's event_simulator.cpp in float64 (sigma_C = 0); list of (t, x, y, p)."""
    _, height, width = log_frames.shape
    events = []
    for y in range(height):
        for x in range(width):
            ref = log_frames[0, y, x]
            last_time = -np.inf
            for k in range(1, len(timestamps_us)):
                prev, new = log_frames[k - 1, y, x], log_frames[k, y, x]
                if abs(new - prev) <= 1e-6:
                    continue
                polarity = 1 if new >= prev else -1
                cross = ref
                while True:
                    cross += polarity * threshold
                    inside = prev < cross <= new if polarity > 0 else new <= cross < prev
                    if not inside:
                        break
                    t = timestamps_us[k - 1] + (cross - prev) * (timestamps_us[k] - timestamps_us[k - 1]) / (new - prev)
                    if t - last_time >= refractory_us:
                        events.append((t, x, y, int(polarity > 0)))
                        last_time = t
                    ref = cross
    return sorted(events)


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_linear_log_ramp_gives_analytic_count_and_times(direction):
    # 2x2 pixels whose log intensity moves linearly at different rates over 10 frame intervals of 1 ms.
    slopes = np.array([[0.11, 0.07], [0.23, 0.0]]) * direction  # log units per frame
    start = np.log(EPS + (0.02 if direction > 0 else 0.9))  # intensities stay inside [0, 1]
    num_frames = 11
    t0 = 5e8  # large absolute time: precision must survive the float32 relative times
    timestamps = t0 + 1000.0 * np.arange(num_frames)
    log_frames = start + slopes[None] * np.arange(num_frames)[:, None, None]
    stream = simulate_events(frames_from_log(log_frames), timestamps, NOISELESS, jax.random.key(0))

    assert isinstance(stream, EventStream) and (stream.height, stream.width) == (2, 2)
    assert np.all(stream.p == (1 if direction > 0 else 0))
    assert np.all(np.diff(stream.t) >= 0)
    for (y, x), slope in np.ndenumerate(np.abs(slopes)):
        count = int(np.floor(slope * (num_frames - 1) / 0.2)) if slope else 0
        times = stream.t[(stream.x == x) & (stream.y == y)]
        assert len(times) == count  # 5, 3, 11 and 0 events
        expected = t0 + 1000.0 * 0.2 * np.arange(1, count + 1) / max(slope, 1e-9)
        np.testing.assert_allclose(times, expected, rtol=0, atol=0.02)


def test_matches_per_pixel_esim_loop_with_refractory_period():
    rng = np.random.default_rng(3)
    # Smooth random brightness paths with reversals, in log space so changes span several thresholds.
    steps = rng.normal(0.0, 0.12, size=(14, 4, 5))
    log_frames = np.log(EPS + 0.3) + np.cumsum(steps, axis=0) - steps[0]
    timestamps = 1e6 + np.cumsum(rng.uniform(500.0, 1500.0, size=14))
    params = SimulatorParams(contrast_threshold_sigma=0.0, contrast_threshold_pos=0.1, contrast_threshold_neg=0.1,
                             refractory_us=300.0)
    frames = frames_from_log(log_frames)
    stream, dropped = simulate_events_with_stats(frames, timestamps, params, jax.random.key(1))
    reference = esim_reference(np.log(EPS + frames.astype(np.float64)), timestamps, 0.1, 300.0)

    assert dropped == 0 and len(reference) > 50
    assert len(stream) == len(reference)
    ref_t, ref_x, ref_y, ref_p = map(np.array, zip(*reference))
    np.testing.assert_allclose(stream.t, ref_t, rtol=0, atol=0.05)
    # Compare the event sets per pixel (ties in time may come in a different order).
    got = sorted(zip(stream.x.tolist(), stream.y.tolist(), stream.p.tolist(), np.round(stream.t, 1).tolist()))
    want = sorted(zip(ref_x.tolist(), ref_y.tolist(), ref_p.tolist(), np.round(ref_t, 1).tolist()))
    assert got == want


def test_refractory_period_drops_events_but_moves_reference():
    # One pixel: up 0.11 per 1 ms frame for 9 frames (crossings at 1818, 3636, 5454, 7272 us), then down.
    start = np.log(EPS + 0.1)
    up = start + 0.11 * np.arange(10)
    down = up[-1] - 0.11 * np.arange(1, 6)  # down to start + 0.44 at 14 ms
    log_frames = np.concatenate([up, down])[:, None, None]
    timestamps = 1000.0 * np.arange(len(log_frames))
    params = SimulatorParams(contrast_threshold_sigma=0.0, refractory_us=2000.0)
    stream = simulate_events(frames_from_log(log_frames), timestamps, params, jax.random.key(0))

    # 3636 and 7272 fall within 2 ms of a kept event and are dropped; the dropped 4th crossing still sets
    # ref = start + 0.8, so the first OFF event is at level start + 0.6: 9000 + 0.39 / 0.11 * 1000 us.
    np.testing.assert_allclose(stream.t, [20000 / 11, 60000 / 11, 9000 + 390000 / 110], atol=0.02)
    np.testing.assert_array_equal(stream.p, [1, 1, 0])


def test_static_scene_gives_no_events_and_shot_noise_has_the_poisson_rate():
    frames = np.full((101, 16, 16), 0.4, np.float32)
    timestamps = 10000.0 * np.arange(101)  # 1 s
    assert len(simulate_events(frames, timestamps, SimulatorParams(), jax.random.key(0))) == 0

    params = SimulatorParams(shot_noise_rate_hz=40.0)
    stream, dropped = simulate_events_with_stats(frames, timestamps, params, jax.random.key(0))
    expected = 40.0 * 16 * 16 * 1.0  # 10240 events, Poisson std about 101
    assert dropped == 0
    assert abs(len(stream) - expected) < 0.05 * expected
    assert 0.45 < stream.p.mean() < 0.55
    assert stream.t.min() >= 0 and stream.t.max() <= 1e6 and np.all(np.diff(stream.t) >= 0)
    # Noise is spread over all pixels.
    per_pixel = np.bincount(stream.y * 16 + stream.x, minlength=256)
    assert per_pixel.min() > 10


def test_cap_on_crossings_per_frame_counts_the_dropped_ones():
    # A jump of 1.1 log units in one 1 ms interval crosses 5 levels; the cap keeps the first 2.
    log_frames = np.log(EPS + 0.1) + np.array([0.0, 1.1])[:, None, None]
    params = SimulatorParams(contrast_threshold_sigma=0.0, max_events_per_pixel_per_frame=2)
    stream, dropped = simulate_events_with_stats(frames_from_log(log_frames), np.array([0.0, 1000.0]), params,
                                                 jax.random.key(0))
    assert dropped == 3
    np.testing.assert_allclose(stream.t, [1000 * 0.2 / 1.1, 1000 * 0.4 / 1.1], atol=0.01)


def test_deterministic_for_a_key_and_independent_of_segmenting():
    rng = np.random.default_rng(0)
    frames = rng.uniform(0.05, 1.0, size=(12, 6, 7)).astype(np.float32)
    timestamps = 2000.0 * np.arange(12)
    params = SimulatorParams(contrast_threshold_sigma=0.05, shot_noise_rate_hz=50.0, frame_pairs_per_call=4)
    first = simulate_events(frames, timestamps, params, jax.random.key(7))
    again = simulate_events(frames, timestamps, params, jax.random.key(7))
    resegmented = simulate_events(frames, timestamps, SimulatorParams(
        contrast_threshold_sigma=0.05, shot_noise_rate_hz=50.0, frame_pairs_per_call=64), jax.random.key(7))
    other_key = simulate_events(frames, timestamps, params, jax.random.key(8))
    for stream in (again, resegmented):
        for name in ("x", "y", "t", "p"):
            np.testing.assert_array_equal(getattr(stream, name), getattr(first, name))
    assert len(other_key) != len(first) or not np.array_equal(other_key.t, first.t)


def test_threshold_noise_varies_counts_between_pixels():
    log_frames = np.log(EPS + 0.1) + 0.1 * np.arange(21)[:, None, None] * np.ones((1, 8, 8))
    stream = simulate_events(frames_from_log(log_frames), 1000.0 * np.arange(21),
                             SimulatorParams(contrast_threshold_sigma=0.04), jax.random.key(0))
    counts = np.bincount(stream.y * 8 + stream.x, minlength=64)
    assert counts.min() < counts.max()
    assert abs(counts.mean() - 10) < 1.5  # 2.0 log units / C = 0.2 on average


@pytest.mark.parametrize("frames, timestamps, message", [
    (np.zeros((3, 2, 2), np.uint8), np.arange(3.0), "float"),
    (np.full((3, 2, 2), 1.5, np.float32), np.arange(3.0), r"\[0, 1\]"),
    (np.zeros((3, 2), np.float32), np.arange(3.0), "shape"),
    (np.zeros((3, 2, 2), np.float32), np.array([0.0, 2.0, 1.0]), "increasing"),
    (np.zeros((3, 2, 2), np.float32), np.arange(4.0), "match"),
])
def test_bad_inputs_raise_clear_errors(frames, timestamps, message):
    with pytest.raises(SimulatorInputError, match=message):
        simulate_events(frames, timestamps, SimulatorParams(), jax.random.key(0))


def test_bad_params_raise():
    with pytest.raises(ValueError, match="contrast_threshold_pos"):
        SimulatorParams(contrast_threshold_pos=0.0)
    with pytest.raises(ValueError, match="max_events_per_pixel_per_frame"):
        SimulatorParams(max_events_per_pixel_per_frame=0)
