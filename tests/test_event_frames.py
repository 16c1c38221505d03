"""AnonyNoise event frames (tonic 1.5.0 ToFrame with n_time_bins): hand-computed cases, degenerate streams,
input checks, and the JAX frames against the NumPy reference on padded random and real streams."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anon_jax.events.frames import event_frames, event_frames_numpy
from anon_jax.events.stream import EventFormatError
from anon_jax.events.text_io import read_event_text

CAPACITY = 16  # hand cases are padded to this with junk (masked) events, so the jitted frames compile once


def padded_event_frames(x, y, t, p, **shape):
    """JAX frames of host events padded to CAPACITY with junk masked events (off-grid, bad polarity, t = 0)."""
    junk = CAPACITY - len(t)

    def pad(values, fill):
        values = np.asarray(values)
        return np.concatenate([values, np.full(junk, fill, values.dtype)])

    mask = np.arange(CAPACITY) < len(t)
    return np.asarray(event_frames(pad(x, -7), pad(y, 99), pad(t, 0), pad(p, 3), mask=mask, **shape))


def both_frames(x, y, t, p, **shape):
    reference = event_frames_numpy(x, y, t, p, **shape)
    result = padded_event_frames(x, y, t, p, **shape)
    assert reference.dtype == np.float32 and result.dtype == np.float32
    assert reference.shape == result.shape == (shape["height"], shape["width"], 2 * shape["num_time_bins"])
    return reference, result


def test_floor_window_drops_remainder_and_last_event():
    # Span 7 over 2 bins: window = 7 // 2 = 3, bins [10, 13) and [13, 16); t = 16 (the floor remainder) and
    # the last event t = 17 fall past 10 + 2 * 3 and are dropped.
    x = np.array([0, 0, 2, 1, 2, 1, 0], np.int16)
    y = np.array([0, 0, 1, 0, 1, 1, 1], np.int16)
    t = np.array([10, 11, 13, 14, 15, 16, 17], np.int64)
    p = np.array([1, 1, 0, 1, 0, 1, 0], bool)
    expected = np.zeros((2, 3, 4), np.float32)
    expected[0, 0, 2 * 0 + 1] = 2  # t = 10, 11 at (y=0, x=0), ON
    expected[1, 2, 2 * 1 + 0] = 2  # t = 13, 15 at (y=1, x=2), OFF
    expected[0, 1, 2 * 1 + 1] = 1  # t = 14 at (y=0, x=1), ON
    for frames in both_frames(x, y, t, p, num_time_bins=2, height=2, width=3):
        np.testing.assert_array_equal(frames, expected)


def test_channel_is_two_times_bin_plus_polarity():
    # window = 10 // 5 = 2: event k (t = 2k) lands in bin k; t = 10 is the dropped last event.
    t = np.array([0, 2, 4, 6, 8, 10])
    p = np.array([0, 1, 1, 0, 1, 1])
    x = np.array([0, 1, 2, 0, 1, 2])
    y = np.zeros(6, np.int64)
    expected = np.zeros((1, 3, 10), np.float32)
    for k in range(5):
        expected[0, x[k], 2 * k + p[k]] = 1
    for frames in both_frames(x, y, t, p, num_time_bins=5, height=1, width=3):
        np.testing.assert_array_equal(frames, expected)


@pytest.mark.parametrize("t", [[], [5], [7, 7, 7], [100, 101, 102, 104]], ids=["empty", "one", "equal", "span<n"])
def test_degenerate_streams_give_zeros_like_tonic(t):
    # tonic 1.5.0: ToFrame returns zeros for an empty stream; window == 0 (span < n) leaves every slice empty.
    n = len(t)
    x, y, p = np.zeros(n, np.int64), np.zeros(n, np.int64), np.ones(n, np.int64)
    t = np.asarray(t, np.int64)
    shape = dict(num_time_bins=5, height=2, width=2)
    zeros = np.zeros((2, 2, 10), np.float32)
    np.testing.assert_array_equal(event_frames_numpy(x, y, t, p, **shape), zeros)
    np.testing.assert_array_equal(np.asarray(event_frames(x, y, t, p, **shape)), zeros)
    np.testing.assert_array_equal(padded_event_frames(x, y, t, p, **shape), zeros)


def test_large_timestamps_bin_exactly():
    # At 4.1e8 float32 steps are 32 units apart; here the bin edge is 7 units after the first event.
    base = 410629076
    t = base + np.array([0, 6, 7, 13, 14, 34, 35], np.int64)  # window = 35 // 5 = 7
    x = np.arange(7) % 3
    y = np.zeros(7, np.int64)
    p = np.zeros(7, np.int64)
    reference, result = both_frames(x, y, t, p, num_time_bins=5, height=1, width=3)
    expected_bins = [0, 0, 1, 1, 2, 4]  # the last event (t = base + 35) is dropped
    expected = np.zeros((1, 3, 10), np.float32)
    for k, time_bin in enumerate(expected_bins):
        expected[0, x[k], 2 * time_bin] += 1
    np.testing.assert_array_equal(reference, expected)
    np.testing.assert_array_equal(result, expected)


def random_stream(rng, n, height, width, base, span):
    t = np.sort(base + rng.integers(0, span + 1, n)).astype(np.int64)
    x = rng.integers(0, width, n).astype(np.int16)
    y = rng.integers(0, height, n).astype(np.int16)
    p = rng.integers(0, 2, n).astype(bool)
    return x, y, t, p


@pytest.mark.parametrize("base, span", [(410629076, 33), (410629076, 4000), (0, 6000), (1_234_567, 7321), (5, 9)],
                         ids=["eventreid-us", "eventreid-long", "dvsg-ms", "dvsg-offset", "tiny"])
def test_jax_equals_numpy_on_random_streams(base, span):
    rng = np.random.default_rng(span)
    height, width, capacity = 5, 7, 512
    shape = dict(num_time_bins=5, height=height, width=width)
    for n in (1, 37, 300):
        x, y, t, p = random_stream(rng, n, height, width, base, span)
        reference = event_frames_numpy(x, y, t, p, **shape)
        # Real events scattered among junk ones: the mask need not be a prefix.
        slots = np.sort(rng.choice(capacity, n, replace=False))
        mask = np.zeros(capacity, bool)
        mask[slots] = True
        columns = [np.full(capacity, fill, values.dtype) for values, fill in ((x, 50), (y, -3), (t, 0), (p, True))]
        for column, values in zip(columns, (x, y, t, p)):
            column[slots] = values
        result = np.asarray(event_frames(*columns, mask=mask, **shape))
        np.testing.assert_array_equal(result, reference)
        assert reference.sum() <= n


def test_traced_relative_times_jit_and_vmap():
    rng = np.random.default_rng(3)
    shape = dict(num_time_bins=5, height=4, width=6)
    streams = [random_stream(rng, n, 4, 6, 410629076, 40) for n in (20, 31)]
    capacity = 32
    batch = {name: np.zeros((2, capacity), np.int32) for name in ("x", "y", "t", "p")}
    mask = np.zeros((2, capacity), bool)
    for row, (x, y, t, p) in enumerate(streams):
        n = len(t)
        batch["x"][row, :n], batch["y"][row, :n], batch["p"][row, :n] = x, y, p
        batch["t"][row, :n] = t - t[0]  # relative int32 times, as the docstring asks for traced inputs
        mask[row, :n] = True
    frames = jax.jit(jax.vmap(lambda x, y, t, p, mask: event_frames(x, y, t, p, mask=mask, **shape)))(
        batch["x"], batch["y"], batch["t"], batch["p"], mask)
    for row, stream in enumerate(streams):
        np.testing.assert_array_equal(np.asarray(frames[row]), event_frames_numpy(*stream, **shape))


def test_float_times_with_integer_values_match_integer_times():
    rng = np.random.default_rng(4)
    x, y, t, p = random_stream(rng, 50, 3, 3, 410629076, 33)
    shape = dict(num_time_bins=5, height=3, width=3)
    expected = event_frames_numpy(x, y, t, p, **shape)
    np.testing.assert_array_equal(event_frames_numpy(x, y, t.astype(np.float64), p, **shape), expected)
    np.testing.assert_array_equal(np.asarray(event_frames(x, y, t.astype(np.float64), p, **shape)), expected)


def test_real_event_reid_chunk(event_reid_sample_dir):
    # AnonyNoise reads EventReIDv2 chunks, truncates the times to int64 and shifts to the bounding box.
    stream = read_event_text(sorted((event_reid_sample_dir / "train").glob("*.txt"))[0])
    t = stream.t.astype(np.int64)
    x, y = stream.x - stream.x.min(), stream.y - stream.y.min()
    shape = dict(num_time_bins=5, height=int(y.max()) + 1, width=int(x.max()) + 1)
    reference = event_frames_numpy(x, y, t, stream.p, **shape)
    np.testing.assert_array_equal(np.asarray(event_frames(x, y, t, stream.p, **shape)), reference)
    # Per-bin totals straight from the bin edges t[0] + k * window.
    edges = t[0] + (t[-1] - t[0]) // 5 * np.arange(6)
    expected = [np.count_nonzero((t >= low) & (t < high)) for low, high in zip(edges[:-1], edges[1:])]
    np.testing.assert_array_equal(reference.reshape(-1, 5, 2).sum(axis=(0, 2)), expected)
    assert 0 < reference.sum() < len(t)


@pytest.mark.parametrize("change, message", [
    (dict(x=[0, 3, 1]), "outside the sensor width 3"),
    (dict(y=[0, -1, 1]), "y=-1 is negative"),
    (dict(p=[0, 2, 1]), "polarity p=2"),
    (dict(p=[1, -1, 1]), "polarity p=-1; frames need p in"),
    (dict(p=[0, -1, 1]), "polarities mix"),
    (dict(t=[5, 4, 6]), "earlier than the previous one"),
    (dict(t=[5.0, np.nan, 6.0]), "not finite"),
    (dict(x=[0.5, 1, 1]), "x=0.5 is not an integer"),
])
def test_invalid_events_are_rejected(change, message):
    columns = dict(x=[0, 1, 2], y=[0, 1, 1], t=[4, 5, 6], p=[0, 1, 1])
    columns.update(change)
    columns = {name: np.asarray(values) for name, values in columns.items()}
    shape = dict(num_time_bins=2, height=2, width=3)
    for function in (event_frames_numpy, event_frames):
        with pytest.raises(EventFormatError, match=message):
            function(**columns, **shape)


def test_bad_arguments_are_rejected():
    x = y = p = np.zeros(3, np.int64)
    t = np.arange(3)
    with pytest.raises(EventFormatError, match="num_time_bins must be a positive integer"):
        event_frames_numpy(x, y, t, p, num_time_bins=0, height=1, width=1)
    with pytest.raises(EventFormatError, match="equal length"):
        event_frames(x, y, t[:2], p, num_time_bins=2, height=1, width=1)
    with pytest.raises(EventFormatError, match="not an integer"):
        event_frames(x, y, t + 0.5, p, num_time_bins=2, height=1, width=1)
    with pytest.raises(EventFormatError, match="int32 range"):
        event_frames(x, y, np.array([0, 1, 2**31]), p, num_time_bins=2, height=1, width=1)
    with pytest.raises(EventFormatError, match="traced/device timestamps have dtype float32"):
        event_frames(x, y, jnp.arange(3.0), p, num_time_bins=2, height=1, width=1)
