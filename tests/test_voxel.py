"""Voxel grids (hand-computed bins, JAX vs float64 NumPy), normalisation, nearest resize vs PyTorch, and the
Event-ReId chunk pipeline against the published figures of the sample chunk."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from anon_jax import events
from anon_jax.events import EventFormatError

BASE_TIME = 410629076.0  # real Event-ReId magnitude; offsets below are exact in float64
HAND_GRID = dict(num_bins=3, height=2, width=3)
HAND_CAPACITY = 8  # every hand case is padded to this, so the jitted grid compiles once


def padded_voxel_grid(xs, ys, ts, ps, *, num_bins, height, width):
    """JAX grid of host events padded to HAND_CAPACITY with junk (masked) events."""
    n = len(ts)
    junk = HAND_CAPACITY - n

    def pad(values, fill):
        return np.concatenate([np.asarray(values), np.full(junk, fill, np.asarray(values).dtype)])

    mask = np.arange(HAND_CAPACITY) < n
    grid = events.voxel_grid(pad(xs, 1), pad(ys, 1), pad(ts, -5.0e8), pad(ps, 1), mask=mask,
                             num_bins=num_bins, height=height, width=width)
    return np.asarray(grid)


def both_grids(xs, ys, ts, ps, **grid):
    reference = events.voxel_grid_numpy(xs, ys, ts, ps, **grid)
    assert reference.dtype == np.float64
    result = padded_voxel_grid(xs, ys, ts, ps, **grid)
    assert result.dtype == np.float32 and result.shape == reference.shape
    return reference, result


def test_hand_computed_grid():
    # Span 4 over B-1 = 2 bins: t* = 0, 0.5, 1.25, 2. The first event lands fully in bin 0, the last in bin 2.
    xs, ys, ps = [0, 1, 2, 1], [0, 0, 1, 0], [1, 0, 1, 1]
    ts = BASE_TIME + np.array([0.0, 1.0, 2.5, 4.0])
    expected = np.array([
        [[1.0, -0.5, 0.0], [0.0, 0.0, 0.0]],
        [[0.0, -0.5, 0.0], [0.0, 0.0, 0.75]],
        [[0.0, 1.0, 0.0], [0.0, 0.0, 0.25]],
    ])
    reference, result = both_grids(xs, ys, ts, ps, **HAND_GRID)
    np.testing.assert_array_equal(reference, expected)
    np.testing.assert_array_equal(result, expected)
    # Integer microsecond timestamps (beyond float32's exact range) give the same grid.
    micros = 1_600_000_000_000_000 + np.array([0, 1000, 2500, 4000], np.int64)
    np.testing.assert_array_equal(events.voxel_grid_numpy(xs, ys, micros, ps, **HAND_GRID), expected)
    np.testing.assert_array_equal(padded_voxel_grid(xs, ys, micros, ps, **HAND_GRID), expected)


def test_zero_span_stream_and_single_event():
    # All events at one time: the span counts as 1, so t* = 0 and every event adds its full +-1 to bin 0.
    ts = np.full(3, BASE_TIME + 0.25)
    reference, result = both_grids([2, 2, 0], [1, 1, 0], ts, [1, 1, 0], **HAND_GRID)
    expected = np.zeros((3, 2, 3))
    expected[0, 1, 2], expected[0, 0, 0] = 2.0, -1.0
    np.testing.assert_array_equal(reference, expected)
    np.testing.assert_array_equal(result, expected)
    reference, result = both_grids([1], [1], [BASE_TIME], [0], **HAND_GRID)
    expected = np.zeros((3, 2, 3))
    expected[0, 1, 1] = -1.0
    np.testing.assert_array_equal(reference, expected)
    np.testing.assert_array_equal(result, expected)


def test_single_bin_sums_polarities():
    reference, result = both_grids([0, 0, 2], [0, 0, 1], BASE_TIME + np.array([0.0, 0.3, 0.9]), [1, 1, 0],
                                   num_bins=1, height=2, width=3)
    np.testing.assert_array_equal(reference, [[[2.0, 0, 0], [0, 0, -1.0]]])
    np.testing.assert_array_equal(result, reference)


def test_signed_polarity_matches_zero_one():
    ts = BASE_TIME + np.array([0.0, 1.0, 3.0])
    zero_one = events.voxel_grid_numpy([0, 1, 2], [0, 1, 0], ts, [0, 1, 0], **HAND_GRID)
    np.testing.assert_array_equal(events.voxel_grid_numpy([0, 1, 2], [0, 1, 0], ts, [-1, 1, -1], **HAND_GRID),
                                  zero_one)
    np.testing.assert_allclose(padded_voxel_grid([0, 1, 2], [0, 1, 0], ts, [-1, 1, -1], **HAND_GRID), zero_one,
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("function", [events.voxel_grid_numpy, padded_voxel_grid])
def test_voxel_grid_input_errors(function):
    with pytest.raises(EventFormatError, match="no events"):
        function([], [], np.zeros(0), [], **HAND_GRID)
    with pytest.raises(EventFormatError, match="timestamps decrease at event 2"):
        function([0, 0, 0], [0, 0, 0], [1.0, 2.0, 1.5], [1, 1, 1], **HAND_GRID)
    with pytest.raises(EventFormatError, match=r"event 1 has x=3 outside \[0, 3\)"):
        function([0, 3], [0, 0], [1.0, 2.0], [1, 1], **HAND_GRID)
    with pytest.raises(EventFormatError, match="1-D of equal length"):
        function([0, 1], [0], [1.0, 2.0], [1, 1], **HAND_GRID)
    with pytest.raises(EventFormatError, match="num_bins must be a positive integer"):
        function([0], [0], [1.0], [1], num_bins=0, height=2, width=3)


def test_masked_out_stream_errors_on_host_and_gives_zeros_when_traced():
    columns = [np.zeros(4, np.int32), np.zeros(4, np.int32), np.arange(4.0), np.ones(4, np.uint8)]
    with pytest.raises(EventFormatError, match="no events"):
        events.voxel_grid(*columns, mask=np.zeros(4, bool), **HAND_GRID)
    traced = jax.jit(functools.partial(events.voxel_grid, **HAND_GRID))
    grid = traced(*map(jnp.asarray, columns), mask=jnp.zeros(4, bool))
    np.testing.assert_array_equal(grid, np.zeros((3, 2, 3)))


RANDOM_GRID = dict(num_bins=5, height=16, width=12)
RANDOM_CAPACITY = 256


def random_streams(count=10, seed=0):
    """Random sorted streams with absolute times, ties, a zero-span stream and a single-event stream."""
    rng = np.random.default_rng(seed)
    streams = []
    for i in range(count):
        n = [1, 7, RANDOM_CAPACITY][i] if i < 3 else int(rng.integers(2, RANDOM_CAPACITY))
        t = BASE_TIME + 0.099676 + np.sort(rng.random(n)) * 333.0
        t[n // 3: n // 2] = t[n // 3]
        if i == 1:
            t[:] = t[0]
        streams.append(events.EventStream(
            x=rng.integers(0, RANDOM_GRID["width"], n), y=rng.integers(0, RANDOM_GRID["height"], n), t=t,
            p=rng.integers(0, 2, n), height=RANDOM_GRID["height"], width=RANDOM_GRID["width"]))
    return streams


def assert_close_to_reference(result, reference):
    """Float32 agreement with the float64 reference, relative to the grid's magnitude."""
    scale = max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(np.asarray(result, np.float64), reference, rtol=0, atol=2e-6 * scale)


def test_random_streams_host_absolute_times_and_vmapped_padded_batch():
    streams = random_streams()
    references = [events.voxel_grid_numpy(s.x, s.y, s.t, s.p, **RANDOM_GRID) for s in streams]
    rng = np.random.default_rng(5)
    for stream, reference in zip(streams, references):
        # Host float64 absolute times with junk in the padded slots.
        n, junk = len(stream), RANDOM_CAPACITY - len(stream)
        grid = events.voxel_grid(
            np.concatenate([stream.x, rng.integers(-3, 30, junk)]),
            np.concatenate([stream.y, rng.integers(-3, 30, junk)]),
            np.concatenate([stream.t, rng.random(junk) * 1e9]),
            np.concatenate([stream.p, rng.integers(0, 2, junk)]),
            mask=np.arange(RANDOM_CAPACITY) < n, **RANDOM_GRID)
        assert_close_to_reference(grid, reference)
    batch = [events.pad_events(s, RANDOM_CAPACITY) for s in streams]
    batch = {key: jnp.asarray(np.stack([b[key] for b in batch])) for key in batch[0]}
    grids = jax.jit(jax.vmap(functools.partial(events.voxel_grid, **RANDOM_GRID)))(
        batch["x"], batch["y"], batch["t"], batch["p"], mask=batch["mask"])
    assert grids.shape == (len(streams), 5, 16, 12) and grids.dtype == jnp.float32
    for grid, reference in zip(grids, references):
        assert_close_to_reference(grid, reference)
    normalized = jax.vmap(events.normalize_voxel_grid)(grids)
    for grid, reference in zip(normalized, references):
        assert_close_to_reference(grid, events.normalize_voxel_grid_numpy(reference))


@pytest.fixture(scope="module")
def sample_chunks(event_reid_sample_dir):
    paths = sorted((event_reid_sample_dir / "train").glob("*.txt")) + sorted(
        (event_reid_sample_dir / "test").glob("*.txt"))
    assert len(paths) == 63
    return [events.read_event_text(path).bbox_shifted() for path in paths]


def test_all_sample_chunks_vmapped_match_reference(sample_chunks):
    # One shared canvas (the largest box is 253 x 129) keeps this to a single compilation.
    canvas = dict(num_bins=5, height=253, width=129)
    batch = [events.pad_events(chunk, 20830) for chunk in sample_chunks]
    batch = {key: jnp.asarray(np.stack([b[key] for b in batch])) for key in batch[0]}
    grids = jax.jit(jax.vmap(lambda x, y, t, p, mask: events.normalize_voxel_grid(
        events.voxel_grid(x, y, t, p, mask=mask, **canvas))))(batch["x"], batch["y"], batch["t"], batch["p"],
                                                             batch["mask"])
    for chunk, grid in zip(sample_chunks, np.asarray(grids)):
        reference = events.voxel_grid_numpy(chunk.x, chunk.y, chunk.t, chunk.p, **canvas)
        expected = events.normalize_voxel_grid_numpy(reference)
        assert_close_to_reference(grid, expected)
        np.testing.assert_array_equal(grid != 0, reference != 0)


def test_sample_chunk_published_figures(event_reid_sample_dir):
    stream = events.read_event_text(event_reid_sample_dir / "train" / "001_c1_048.txt")
    box = stream.bbox_shifted()
    assert (box.height, box.width) == (164, 81)
    grid = events.voxel_grid_numpy(box.x, box.y, box.t, box.p, num_bins=5, height=164, width=81)
    assert grid.sum() == pytest.approx(778.0, abs=1e-9)
    np.testing.assert_allclose(grid.sum(axis=(1, 2)), [40.462, 120.511, 99.237, 101.448, 416.342], atol=5e-4)
    assert np.count_nonzero(grid) == 11673
    assert np.abs(grid).max() == pytest.approx(8.0318, abs=5e-5)
    normalized = events.normalize_voxel_grid_numpy(grid)
    assert normalized.min() == pytest.approx(-6.9078, abs=5e-5)
    assert normalized.max() == pytest.approx(6.5507, abs=5e-5)
    tensor = events.chunk_voxel_grid(stream, num_bins=5, height=384, width=192)
    assert tensor.shape == (5, 384, 192) and tensor.dtype == np.float32
    assert torch.from_numpy(tensor).sum().item() == pytest.approx(92.1064, abs=5e-4)
    # The original casts the float64 normalised grid to float32, then resizes it with F.interpolate.
    expected = torch.nn.functional.interpolate(torch.from_numpy(normalized)[None].float(), size=(384, 192),
                                               mode="nearest")
    np.testing.assert_array_equal(tensor, expected[0].numpy())
    # The JAX path on the same chunk, from host float64 absolute times.
    jax_tensor = events.nearest_resize(events.normalize_voxel_grid(
        events.voxel_grid(stream.x - stream.x.min(), stream.y - stream.y.min(), stream.t, stream.p,
                          num_bins=5, height=164, width=81)), 384, 192)
    assert_close_to_reference(jax_tensor, tensor.astype(np.float64))


def test_normalisation_hand_values_and_zero_std_guard():
    grid = np.array([[[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]]])  # non-zeros 1, 3: mean 2, std 1
    expected = np.array([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    np.testing.assert_array_equal(events.normalize_voxel_grid_numpy(grid), expected)
    np.testing.assert_allclose(events.normalize_voxel_grid(jnp.asarray(grid, jnp.float32)), expected, atol=1e-7)
    for degenerate in (np.zeros((1, 2, 3)), np.where(grid != 0, 2.0, 0.0), np.where(grid != 0, -0.5, 0.0)):
        np.testing.assert_array_equal(events.normalize_voxel_grid_numpy(degenerate), np.zeros((1, 2, 3)))
        result = events.normalize_voxel_grid(jnp.asarray(degenerate, jnp.float32))
        np.testing.assert_array_equal(result, np.zeros((1, 2, 3)))


def torch_nearest_indices(in_size, out_size):
    # float32 input, as in the original pipeline (`.float()` before F.interpolate); for float64 tensors PyTorch
    # computes the indices in double precision instead.
    source = torch.arange(in_size, dtype=torch.float32).reshape(1, 1, in_size)
    return torch.nn.functional.interpolate(source, size=out_size, mode="nearest")[0, 0].numpy().astype(np.int64)


def test_nearest_indices_match_torch_for_many_sizes():
    rng = np.random.default_rng(0)
    pairs = [(i, o) for i in range(1, 131) for o in (1, 2, 3, 7, 82, 96, 192, 257, 384)]
    pairs += [tuple(int(v) for v in rng.integers(1, 2000, 2)) for _ in range(500)]
    float64_differs = 0
    for in_size, out_size in pairs:
        expected = torch_nearest_indices(in_size, out_size)
        np.testing.assert_array_equal(events.voxel.nearest_source_indices(in_size, out_size), expected,
                                      err_msg=f"{in_size} -> {out_size}")
        float64 = np.minimum(np.floor(np.arange(out_size) * (in_size / out_size)).astype(np.int64), in_size - 1)
        float64_differs += not np.array_equal(float64, expected)
    assert float64_differs > 0  # float32 arithmetic is really needed, e.g. 2 -> 82


@pytest.mark.parametrize("shape, size", [((5, 164, 81), (384, 192)), ((2, 3, 37, 250), (19, 64)),
                                         ((1, 2, 2), (82, 5))])
def test_nearest_resize_matches_torch(shape, size):
    v = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    batched = v.reshape((-1, *shape[-3:])) if len(shape) == 4 else v[None]
    expected = torch.nn.functional.interpolate(torch.from_numpy(batched), size=size, mode="nearest").numpy()
    expected = expected.reshape(shape[:-2] + size)
    np.testing.assert_array_equal(events.nearest_resize_numpy(v, *size), expected)
    np.testing.assert_array_equal(events.nearest_resize(jnp.asarray(v), *size), expected)
