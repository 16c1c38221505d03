"""NumPy event files: tonic-style structured arrays, N x 4 arrays with a column order, .npz variants, memory
mapping, units and the errors for ambiguous or bad input."""

import re

import numpy as np
import pytest

from tests.event_checks import assert_events, read_all
from anon_jax.events.numpy_io import open_numpy
from anon_jax.events.stream import EventFormatError

WIDTH, HEIGHT = 128, 128  # DVS128 (DVSGesture)
TONIC_GESTURE = np.dtype([("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])




def random_events(n, seed=0):
    """t in ms (int), x, y, p (0/1) as int64."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.integers(0, 5, n))
    return t, rng.integers(0, WIDTH, n), rng.integers(0, HEIGHT, n), rng.integers(0, 2, n)


def tonic_array(t, x, y, p, dtype=TONIC_GESTURE):
    array = np.zeros(len(t), dtype)
    array["x"], array["y"], array["p"], array["t"] = x, y, p, t
    return array


# --- structured arrays --------------------------------------------------------------------------

def test_tonic_gesture_npy_in_ms(tmp_path):
    t, x, y, p = random_events(1000)
    path = tmp_path / "gesture.npy"
    np.save(path, tonic_array(t, x, y, p))
    event_file = open_numpy(path, time_unit="ms")
    assert event_file.format == "npy" and event_file.time_unit == "ms"
    assert event_file.sensor_size is None
    assert event_file.details["layout"] == "fields" and event_file.details["count"] == 1000
    assert_events(read_all(event_file), t * 1000, x, y, p)


def test_hand_checked_structured(tmp_path):
    path = tmp_path / "three.npy"
    np.save(path, np.array([(1, 2, False, 7), (3, 4, True, 8), (127, 0, True, 8)], TONIC_GESTURE))
    got = read_all(open_numpy(path, time_unit="ms", sensor_size=(WIDTH, HEIGHT)))
    assert got["t"].tolist() == [7000, 8000, 8000]
    assert got["x"].tolist() == [1, 3, 127]
    assert got["y"].tolist() == [2, 4, 0]
    assert got["p"].tolist() == [0, 1, 1]


def test_structured_other_field_order_and_dtypes(tmp_path):
    # tonic's generic events_struct order, float seconds and -1/+1 polarity in int8.
    dtype = np.dtype([("p", "i1"), ("t", "<f8"), ("y", "<u2"), ("x", "<i4")])
    array = np.array([(-1, 0.000001, 5, 6), (1, 0.5, 7, 8), (1, 1.2345675, 9, 10)], dtype)
    path = tmp_path / "struct.npy"
    np.save(path, array)
    got = read_all(open_numpy(path, time_unit="s"))
    assert got["t"].tolist() == [1, 500_000, 1_234_568]  # rounded to the nearest us (ties to even)
    assert got["x"].tolist() == [6, 8, 10] and got["y"].tolist() == [5, 7, 9]
    assert got["p"].tolist() == [0, 1, 1]


def test_faery_style_titled_polarity_field(tmp_path):
    dtype = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), (("p", "on"), "?")])
    array = np.zeros(3, dtype)
    array["t"], array["x"], array["y"], array["on"] = [10, 20, 30], [1, 2, 3], [4, 5, 6], [True, False, True]
    path = tmp_path / "faery.npy"
    np.save(path, array)
    assert_events(read_all(open_numpy(path, time_unit="us")), [10, 20, 30], [1, 2, 3], [4, 5, 6], [1, 0, 1])


def test_structured_missing_field(tmp_path):
    path = tmp_path / "missing.npy"
    np.save(path, np.zeros(3, [("x", "i2"), ("y", "i2"), ("ts", "i8"), ("p", "?")]))
    with pytest.raises(EventFormatError, match=re.escape("has fields ['x', 'y', 'ts', 'p'] but lacks ['t']")):
        open_numpy(path, time_unit="us")


def test_structured_refuses_columns(tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, tonic_array(*random_events(3)))
    with pytest.raises(EventFormatError, match="columns applies to N x 4 arrays only"):
        open_numpy(path, time_unit="ms", columns="xypt")


# --- N x 4 arrays -------------------------------------------------------------------------------

def test_n_by_4_xypt_in_ms(tmp_path):
    # AnonyNoise reads tonic's DVSGesture files as 2-D (x, y, p, t[ms]).
    t, x, y, p = random_events(500, seed=1)
    path = tmp_path / "matrix.npy"
    np.save(path, np.stack([x, y, p, t], axis=1))
    event_file = open_numpy(path, time_unit="ms", columns="xypt")
    assert event_file.details["columns"] == "xypt"
    assert_events(read_all(event_file, 64), t * 1000, x, y, p)


def test_n_by_4_txyp_float_seconds(tmp_path):
    matrix = np.array([[0.5, 1.0, 2.0, -1.0], [0.75, 3.0, 4.0, 1.0], [1.000001, 5.0, 6.0, 1.0]])
    path = tmp_path / "floats.npy"
    np.save(path, matrix)
    got = read_all(open_numpy(path, time_unit="s", columns=("t", "x", "y", "p")))
    assert_events(got, [500_000, 750_000, 1_000_001], [1, 3, 5], [2, 4, 6], [0, 1, 1])


def test_n_by_4_nanoseconds(tmp_path):
    path = tmp_path / "ns.npy"
    np.save(path, np.array([[1500, 1, 1, 0], [2500, 2, 2, 1], [2501, 3, 3, 1]], np.int64))
    got = read_all(open_numpy(path, time_unit="ns", columns="txyp"))
    assert got["t"].tolist() == [2, 2, 3]  # 1.5 -> 2, 2.5 -> 2 (ties to even), 2.501 -> 3


def test_n_by_4_needs_columns(tmp_path):
    path = tmp_path / "matrix.npy"
    np.save(path, np.zeros((3, 4)))
    with pytest.raises(EventFormatError, match="does not name its columns; pass columns="):
        open_numpy(path, time_unit="ms")
    with pytest.raises(EventFormatError, match="must name t, x, y and p once each"):
        open_numpy(path, time_unit="ms", columns="txy")
    with pytest.raises(EventFormatError, match="must name t, x, y and p once each"):
        open_numpy(path, time_unit="ms", columns="ttxy")


def test_wrong_shapes(tmp_path):
    path = tmp_path / "transposed.npy"
    np.save(path, np.zeros((4, 10)))
    with pytest.raises(EventFormatError, match=r"got shape \(4, 10\) \(transpose it"):
        open_numpy(path, time_unit="ms", columns="txyp")
    np.save(path, np.zeros(10))
    with pytest.raises(EventFormatError, match=r"N x 4 array, got shape \(10,\)"):
        open_numpy(path, time_unit="ms", columns="txyp")


# --- units --------------------------------------------------------------------------------------

def test_time_unit_required_and_checked(tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, tonic_array(*random_events(3)))
    with pytest.raises(EventFormatError, match=re.escape("time_unit is required") + r".*\['ms', 'ns', 's', 'us'\]"):
        open_numpy(path)
    with pytest.raises(EventFormatError, match="time_unit must be one of"):
        open_numpy(path, time_unit="minutes")


# --- .npz ---------------------------------------------------------------------------------------

def test_npz_separate_arrays_with_sensor_size(tmp_path):
    t, x, y, p = random_events(300, seed=2)
    path = tmp_path / "sep.npz"
    np.savez(path, x=x.astype(np.uint16), y=y.astype(np.uint16), t=t, p=(2 * p - 1).astype(np.int8),
             sensor_size=np.array([WIDTH, HEIGHT]), label=np.array(3))
    event_file = open_numpy(path, time_unit="us")
    assert event_file.format == "npz" and event_file.sensor_size == (WIDTH, HEIGHT)
    assert event_file.details["layout"] == "arrays"
    assert_events(read_all(event_file, 50), t, x, y, p)
    assert open_numpy(path, time_unit="us", sensor_size=(WIDTH, HEIGHT)).sensor_size == (WIDTH, HEIGHT)
    with pytest.raises(EventFormatError, match=re.escape("states the sensor size (128, 128) (width, height) but "
                                                         "sensor_size is (346, 260)")):
        open_numpy(path, time_unit="us", sensor_size=(346, 260))


def test_npz_compressed_tonic_sensor_size(tmp_path):
    t, x, y, p = random_events(40, seed=3)
    path = tmp_path / "tonic.npz"
    np.savez_compressed(path, t=t, x=x, y=y, p=p.astype(bool), sensor_size=np.array([WIDTH, HEIGHT, 2]))
    event_file = open_numpy(path, time_unit="ms")
    assert event_file.sensor_size == (WIDTH, HEIGHT)
    assert_events(read_all(event_file), t * 1000, x, y, p)


def test_npz_single_structured_array(tmp_path):
    t, x, y, p = random_events(100, seed=4)
    path = tmp_path / "one.npz"
    np.savez(path, events=tonic_array(t, x, y, p))
    event_file = open_numpy(path, time_unit="ms", sensor_size=(WIDTH, HEIGHT))
    assert event_file.sensor_size == (WIDTH, HEIGHT) and event_file.details["arrays"] == ["events"]
    assert_events(read_all(event_file, 33), t * 1000, x, y, p)


def test_npz_single_matrix_needs_columns(tmp_path):
    t, x, y, p = random_events(20, seed=5)
    path = tmp_path / "matrix.npz"
    np.savez(path, arr_0=np.stack([t, x, y, p], axis=1))
    with pytest.raises(EventFormatError, match="array 'arr_0': an N x 4 array does not name its columns"):
        open_numpy(path, time_unit="ms")
    assert_events(read_all(open_numpy(path, time_unit="ms", columns="txyp")), t * 1000, x, y, p)


def test_npz_errors(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=np.zeros((3, 4)), b=np.zeros((3, 4)))
    with pytest.raises(EventFormatError, match=re.escape("holds arrays ['a', 'b']; expected one event array")):
        open_numpy(path, time_unit="ms", columns="txyp")
    path = tmp_path / "ragged.npz"
    np.savez(path, x=np.zeros(3), y=np.zeros(3), t=np.zeros(2), p=np.zeros(3))
    with pytest.raises(EventFormatError, match="must be 1-D of equal length"):
        open_numpy(path, time_unit="ms")
    path = tmp_path / "size.npz"
    np.savez(path, x=np.zeros(3), y=np.zeros(3), t=np.zeros(3), p=np.zeros(3), sensor_size=np.array([640]))
    with pytest.raises(EventFormatError, match="array 'sensor_size': expected \\(width, height\\)"):
        open_numpy(path, time_unit="ms")


# --- streaming ----------------------------------------------------------------------------------

def test_npy_is_memory_mapped_and_chunked(tmp_path, monkeypatch):
    t, x, y, p = random_events(1000, seed=6)
    path = tmp_path / "big.npy"
    np.save(path, tonic_array(t, x, y, p))
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    event_file = open_numpy(path, time_unit="ms")
    chunks = event_file.chunks(128)
    first = next(chunks)
    assert calls and set(calls) == {"r"}  # opened and streamed from a memory map only
    assert len(first["t"]) == 128
    sizes = [len(first["t"])] + [len(chunk["t"]) for chunk in chunks]
    assert sizes == [128] * 7 + [104]


def test_chunked_equals_whole_for_random_sizes(tmp_path):
    t, x, y, p = random_events(3000, seed=7)
    path = tmp_path / "m.npy"
    np.save(path, np.stack([t, x, y, p], axis=1).astype(np.int32))
    event_file = open_numpy(path, time_unit="ms", columns="txyp", sensor_size=(WIDTH, HEIGHT))
    whole = read_all(event_file)
    assert_events(whole, t * 1000, x, y, p)
    for size in np.random.default_rng(8).integers(1, 3500, 6):
        assert_events(read_all(event_file, int(size)), t * 1000, x, y, p)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros(0, TONIC_GESTURE))
    event_file = open_numpy(path, time_unit="ms")
    assert event_file.details["count"] == 0 and list(event_file.chunks(10)) == []


# --- bad values ---------------------------------------------------------------------------------

def _matrix_file(tmp_path, rows, dtype=np.float64):
    path = tmp_path / "bad.npy"
    np.save(path, np.array(rows, dtype))
    return path


def test_non_integral_coordinate(tmp_path):
    path = _matrix_file(tmp_path, [[1, 1, 1, 1], [2, 1.5, 1, 1]])
    with pytest.raises(EventFormatError, match=r"event 1: x=1\.5 is not a whole number"):
        read_all(open_numpy(path, time_unit="ms", columns="txyp"))


def test_negative_coordinate_and_time(tmp_path):
    path = _matrix_file(tmp_path, [[1, 1, 1, 1], [2, 1, -3, 1]], np.int64)
    with pytest.raises(EventFormatError, match=r"event 1: y=-3 is outside 0\.\.65535"):
        read_all(open_numpy(path, time_unit="ms", columns="txyp"))
    path = _matrix_file(tmp_path, [[1, 1, 1, 1], [-2, 1, 1, 1]], np.int64)
    with pytest.raises(EventFormatError, match=r"event 1: t=-2 is negative"):
        read_all(open_numpy(path, time_unit="ms", columns="txyp"))


def test_coordinate_outside_sensor_index_is_global(tmp_path):
    t, x, y, p = random_events(50, seed=9)
    x[37] = WIDTH
    path = tmp_path / "s.npy"
    np.save(path, tonic_array(t, x, y, p))
    with pytest.raises(EventFormatError, match=r"event 37: x=128 is outside the sensor width 128"):
        read_all(open_numpy(path, time_unit="ms", sensor_size=(WIDTH, HEIGHT)), 10)


def test_bad_polarity_values(tmp_path):
    path = _matrix_file(tmp_path, [[1, 1, 1, 0], [2, 1, 1, 2]], np.int64)
    with pytest.raises(EventFormatError, match=r"event 1: polarity p=2 is not 0/1, -1/\+1 or bool"):
        read_all(open_numpy(path, time_unit="ms", columns="txyp"))
    # 0 in the first chunk, -1 in the second: one file cannot use both for OFF.
    path = _matrix_file(tmp_path, [[1, 1, 1, 0], [2, 1, 1, 1], [3, 1, 1, -1]], np.int64)
    with pytest.raises(EventFormatError, match=r"event 2: polarity mixes 0 and -1"):
        read_all(open_numpy(path, time_unit="ms", columns="txyp"), 2)


def test_unsorted_times(tmp_path):
    path = _matrix_file(tmp_path, [[5, 1, 1, 1], [9, 1, 1, 1], [7, 1, 1, 0]], np.int64)
    with pytest.raises(EventFormatError, match=r"event 2: t=7000 us is earlier than the previous event \(9000 us\)"):
        read_all(open_numpy(path, time_unit="ms", columns="txyp"), 2)


def test_not_a_numpy_file(tmp_path):
    path = tmp_path / "events.npy"
    path.write_bytes(b"t x y p\n1 2 3 1\n")
    with pytest.raises(EventFormatError, match="not a NumPy .npy or .npz file"):
        open_numpy(path, time_unit="us")


def test_object_array_refused(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([[1, "a", 2, 3]], dtype=object), allow_pickle=True)
    with pytest.raises(EventFormatError, match="cannot memory-map"):
        open_numpy(path, time_unit="us", columns="txyp")


def test_truncated_npy_and_corrupt_npz(tmp_path):
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((100, 4)))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(EventFormatError, match="cannot memory-map the array: mmap length is greater than file size"):
        open_numpy(path, time_unit="us", columns="txyp")
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.arange(1000), y=np.arange(1000), t=np.arange(1000), p=np.ones(1000))
    data = bytearray(path.read_bytes())
    data[3000] ^= 0xFF  # inside the stored (uncompressed) data of 'x': its CRC no longer matches
    path.write_bytes(bytes(data))
    event_file = open_numpy(path, time_unit="us")  # the member headers are intact
    with pytest.raises(EventFormatError, match="cannot load the arrays .* Bad CRC-32"):
        read_all(event_file)
