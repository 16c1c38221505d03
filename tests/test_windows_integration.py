"""Event windows (E2VID reader semantics) and leaky direct integration on hand-made streams."""

import numpy as np
import pytest

from anon_jax.events import EventFormatError, EventStream
from anon_jax.events.integration import leaky_integration_frames
from anon_jax.events.windows import fixed_count_windows, fixed_duration_windows


def make_stream(t, x=None, y=None, p=None, height=2, width=3):
    t = np.asarray(t, np.float64)
    n = len(t)
    return EventStream(x=np.zeros(n, int) if x is None else x, y=np.zeros(n, int) if y is None else y, t=t,
                       p=np.ones(n, int) if p is None else p, height=height, width=width, source="hand-made")


def test_fixed_count_windows_keep_the_remainder():
    stream = make_stream(np.arange(7) * 0.5, x=np.arange(7) % 3)
    windows = list(fixed_count_windows(stream, 3))
    assert [w.t.tolist() for w in windows] == [[0.0, 0.5, 1.0], [1.5, 2.0, 2.5], [3.0]]
    assert [w.x.tolist() for w in windows] == [[0, 1, 2], [0, 1, 2], [0]]
    assert all((w.height, w.width, w.source) == (2, 3, "hand-made") for w in windows)
    assert len(list(fixed_count_windows(stream, 7))) == 1
    with pytest.raises(EventFormatError, match="positive integer"):
        list(fixed_count_windows(stream, 0))


def test_fixed_duration_windows_follow_e2vid_reader():
    # T = 1. Stamp 0: the first event with t > 1 is 1.5 (closes, included; stamp 1.5). Next closes at the
    # first t > 2.5, i.e. 2.6. From 2.6 the first t > 3.6 is 5.0, a window of one event. 5.2 never closes: dropped.
    t = [0.0, 0.4, 1.0, 1.5, 2.0, 2.5, 2.6, 5.0, 5.2]
    windows = list(fixed_duration_windows(make_stream(t), 1.0))
    assert [w.t.tolist() for w in windows] == [[0.0, 0.4, 1.0, 1.5], [2.0, 2.5, 2.6], [5.0]]


def test_fixed_duration_window_of_duplicate_times_and_short_recording():
    # t = 1 is not > 0 + 1, so it does not close the window; 1.01 does. From 1.01 the first t > 2.01 is 2.02.
    windows = list(fixed_duration_windows(make_stream([0, 0, 1, 1, 1.01, 2.02, 2.5]), 1.0))
    assert [w.t.tolist() for w in windows] == [[0, 0, 1, 1, 1.01], [2.02]]
    assert list(fixed_duration_windows(make_stream([0.0, 0.5, 1.0]), 1.0)) == []
    with pytest.raises(EventFormatError, match="non-negative"):
        list(fixed_duration_windows(make_stream([0.0]), -1.0))


def single_pixel_stream():
    # Pixel (x=1, y=0): +1 at t=0, +1 at t=1, -1 at t=2; pixel (x=0, y=0) stays silent.
    return make_stream([0.0, 1.0, 2.0], x=np.array([1, 1, 1]), p=np.array([1, 1, 0]), height=1, width=2)


def test_leaky_integration_single_pixel_by_hand():
    # contrast 0.5, leak ln 2 per second: every second halves the log intensity.
    # L(1) = 0.5 * 2^-1 + 0.5 = 0.75 (the event at the frame time counts);
    # L(3) = 0.5 * 2^-3 + 0.5 * 2^-2 - 0.5 * 2^-1 = -0.0625.
    frames = leaky_integration_frames(single_pixel_stream(), [1.0, 3.0], contrast=0.5, leak_rate_per_s=np.log(2),
                                      time_unit_s=1.0, normalization="fixed", base_intensity=0.25)
    expected = np.array([[[0.25, 0.25 * np.exp(0.75)]], [[0.25, 0.25 * np.exp(-0.0625)]]])
    assert frames.shape == (2, 1, 2) and frames.dtype == np.float32
    np.testing.assert_allclose(np.asarray(frames), expected, rtol=1e-6)


def test_leaky_integration_time_unit_and_no_leak():
    # Microsecond timestamps with time_unit_s = 1e-6 give the same frames as seconds.
    seconds = single_pixel_stream()
    micro = make_stream(seconds.t * 1e6 + 4.1e14, x=seconds.x, p=seconds.p, height=1, width=2)
    kwargs = dict(contrast=0.5, leak_rate_per_s=np.log(2), normalization="fixed", base_intensity=0.25)
    np.testing.assert_allclose(
        np.asarray(leaky_integration_frames(micro, np.array([1.0, 3.0]) * 1e6 + 4.1e14, time_unit_s=1e-6, **kwargs)),
        np.asarray(leaky_integration_frames(seconds, [1.0, 3.0], time_unit_s=1.0, **kwargs)), rtol=1e-6)
    # Without leak the log intensity is the plain sum: frames before any event are the base intensity.
    frames = leaky_integration_frames(seconds, [-1.0, 0.5, 2.0], contrast=0.2, leak_rate_per_s=0.0, time_unit_s=1.0,
                                      normalization="fixed", base_intensity=0.5)
    np.testing.assert_allclose(np.asarray(frames)[:, 0, 1], 0.5 * np.exp([0.0, 0.2, 0.2]), rtol=1e-6)


def test_leaky_integration_minmax_and_accumulation_order():
    # Two events on one pixel between frames add up; min-max maps the darkest pixel to 0 and the brightest to 1.
    stream = make_stream([0.0, 0.1, 0.2, 0.3], x=np.array([0, 0, 2, 1]), y=np.array([0, 0, 1, 1]),
                         p=np.array([1, 1, 0, 1]), height=2, width=3)
    frames = np.asarray(leaky_integration_frames(stream, [0.0, 0.3], contrast=1.0, leak_rate_per_s=0.0,
                                                 time_unit_s=1.0))
    # Frame 0: only the first event (L = 1 at (0, 0)), the other pixels at L = 0.
    np.testing.assert_allclose(frames[0], [[1, 0, 0], [0, 0, 0]], atol=1e-7)
    # Frame 1: L = 2 at (0, 0), -1 at (1, 2), +1 at (1, 1), 0 elsewhere; I = exp(L).
    intensity = np.exp([[2.0, 0, 0], [0, 1, -1]])
    np.testing.assert_allclose(frames[1], (intensity - intensity.min()) / np.ptp(intensity), rtol=1e-5, atol=1e-7)
    # No event before the frame: no contrast, a flat frame at base_intensity.
    flat = leaky_integration_frames(stream, [-5.0], contrast=1.0, leak_rate_per_s=1.0, time_unit_s=1.0)
    np.testing.assert_array_equal(np.asarray(flat), np.full((1, 2, 3), 0.5, np.float32))


def test_leaky_integration_matches_sequential_loop():
    rng = np.random.default_rng(0)
    n, height, width = 300, 3, 4
    stream = make_stream(np.sort(rng.uniform(0, 2, n)), x=rng.integers(0, width, n), y=rng.integers(0, height, n),
                         p=rng.integers(0, 2, n), height=height, width=width)
    frame_times = np.array([0.3, 0.9, 0.9, 1.7, 2.5])
    contrast, leak = 0.15, 2.0
    # Event-by-event reference: decay the whole image between consecutive times, then add the event.
    log_intensity, expected, clock, events = np.zeros((height, width)), [], 0.0, 0
    for frame_time in frame_times:
        while events < n and stream.t[events] <= frame_time:
            log_intensity *= np.exp(-leak * (stream.t[events] - clock))
            clock = stream.t[events]
            log_intensity[stream.y[events], stream.x[events]] += contrast * (2.0 * stream.p[events] - 1)
            events += 1
        log_intensity *= np.exp(-leak * (frame_time - clock))
        clock = frame_time
        expected.append(np.clip(0.5 * np.exp(log_intensity), 0, 1))
    frames = leaky_integration_frames(stream, frame_times, contrast=contrast, leak_rate_per_s=leak, time_unit_s=1.0,
                                      normalization="fixed")
    np.testing.assert_allclose(np.asarray(frames), np.array(expected), rtol=2e-5, atol=1e-6)


def test_leaky_integration_rejects_bad_input():
    stream = single_pixel_stream()
    with pytest.raises(EventFormatError, match="non-decreasing"):
        leaky_integration_frames(stream, [2.0, 1.0], contrast=0.2, leak_rate_per_s=1.0, time_unit_s=1.0)
    with pytest.raises(ValueError, match="normalization"):
        leaky_integration_frames(stream, [1.0], contrast=0.2, leak_rate_per_s=1.0, time_unit_s=1.0,
                                 normalization="gamma")
    with pytest.raises(ValueError, match="time_unit_s"):
        leaky_integration_frames(stream, [1.0], contrast=0.2, leak_rate_per_s=1.0, time_unit_s=0.0)
