"""HDF5 event files: DSEC and MVSEC layouts (fixtures written with h5py/hdf5plugin as those datasets do), the
Metavision /CD/events refusal, and the project's DSEC-like writer (round trips, ms_to_idx, atomicity)."""

import decimal
import os
import pathlib
import subprocess
import sys

import h5py
import hdf5plugin
import numpy as np
import pytest

from anon_jax.events.container import Events, MissingDependencyError
from anon_jax.events.hdf5_io import HDF5Writer, open_hdf5, write_hdf5
from anon_jax.events.stream import EventFormatError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
T_OFFSET = 1_600_000_123_456_789  # a Unix-epoch-like offset in us, as in DSEC files


def sorted_events(seed=0, n=5000, width=640, height=480, span_us=2_000_000, t0=0):
    """Random events with bursts of equal times and one long gap (so ms_to_idx has runs of equal entries)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span_us, n)).astype(np.int64)
    t[n // 50:n // 50 + 40] = t[n // 50]  # a burst of one timestamp
    t[n // 2:] += 3_000_000  # a 3 s gap
    return {"t": t + t0, "x": rng.integers(0, width, n).astype(np.uint16),
            "y": rng.integers(0, height, n).astype(np.uint16), "p": rng.integers(0, 2, n).astype(np.uint8)}


def ms_index(relative_t, entries=None):
    """Reference ms_to_idx: entry k = first index with relative t >= k ms."""
    entries = int(relative_t[-1]) // 1000 + 1 if entries is None else entries
    return np.searchsorted(relative_t, np.arange(entries, dtype=np.int64) * 1000, side="left").astype(np.uint64)


def write_dsec(path, columns, *, t_offset=T_OFFSET, offset_shape=(), index_entries=None, index=True, attrs=None,
               compress=True):
    """A DSEC file as DSEC writes it: Blosc/zstd datasets, t u32 relative to an int64 t_offset, ms_to_idx u64."""
    options = dict(hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)) if compress else {}
    relative = columns["t"] - (t_offset or 0)
    with h5py.File(path, "w") as f:
        f.create_dataset("events/x", data=columns["x"].astype(np.uint16), **options)
        f.create_dataset("events/y", data=columns["y"].astype(np.uint16), **options)
        f.create_dataset("events/p", data=columns["p"].astype(np.uint8), **options)
        f.create_dataset("events/t", data=relative.astype(np.uint32), **options)
        if t_offset is not None:
            f.create_dataset("t_offset", data=np.full(offset_shape, t_offset, dtype=np.int64))
        if index:
            f.create_dataset("ms_to_idx", data=ms_index(relative, index_entries), **options)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


def filter_ids(dataset):
    plist = dataset.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


def read_all(path, max_events=1000, **kwargs):
    """(EventFile, concatenated columns, chunk lengths)."""
    event_file = open_hdf5(path, **kwargs)
    parts = list(event_file.chunks(max_events))
    for part in parts:
        assert {k: v.dtype for k, v in part.items()} == {"t": np.int64, "x": np.uint16, "y": np.uint16,
                                                         "p": np.uint8}
    columns = {k: np.concatenate([part[k] for part in parts]) if parts else np.zeros(0) for k in "txyp"}
    return event_file, columns, [len(part["t"]) for part in parts]


def assert_columns_equal(actual, expected):
    for name in "txyp":
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def events_of(columns, width=640, height=480):
    return Events(t=columns["t"], x=columns["x"], y=columns["y"], p=columns["p"], width=width, height=height)


# ------------------------------------------------------------------------------------------------ DSEC


@pytest.mark.parametrize("offset_shape", [(), (1,)])
def test_dsec_blosc_zstd_reads_absolute_microseconds(tmp_path, offset_shape):
    columns = sorted_events(t0=T_OFFSET)
    path = write_dsec(tmp_path / "events.h5", columns, offset_shape=offset_shape, index_entries=None)
    with h5py.File(path) as f:  # the fixture really is Blosc-compressed, u32 + int64 offset
        assert f["events/t"].dtype == np.uint32 and f["ms_to_idx"].dtype == np.uint64
        assert f["t_offset"].shape == offset_shape
        assert filter_ids(f["events/t"]) == [32001]
    event_file, read, sizes = read_all(path, 777, sensor_size=(640, 480))
    assert event_file.format == "hdf5-dsec" and event_file.sensor_size == (640, 480)
    assert event_file.time_unit == "us"
    assert event_file.details["t_offset_us"] == T_OFFSET and event_file.details["events"] == 5000
    assert sizes == [777] * 6 + [5000 - 6 * 777]
    assert_columns_equal(read, columns)
    assert read["t"][0] >= T_OFFSET  # absolute, not relative


def test_dsec_without_size_attributes_leaves_sensor_unknown(tmp_path):
    columns = sorted_events(t0=T_OFFSET)
    path = write_dsec(tmp_path / "events.h5", columns)
    event_file, read, _ = read_all(path, 4096)
    assert event_file.sensor_size is None
    assert "640x480" in event_file.details["note_sensor_size"]
    assert_columns_equal(read, columns)


def test_dsec_with_size_attributes_and_without_optional_datasets(tmp_path):
    columns = sorted_events(seed=1, n=300, width=346, height=260)
    path = write_dsec(tmp_path / "a.h5", columns, t_offset=None, index=False,
                      attrs={"width": 346, "height": 260}, compress=False)
    event_file, read, _ = read_all(path)
    assert event_file.sensor_size == (346, 260)
    assert event_file.details["t_offset_us"] == 0 and "ms_to_idx_entries" not in event_file.details
    assert_columns_equal(read, columns)
    with pytest.raises(EventFormatError, match=r"346x260.*sensor_size=\(640, 480\)"):
        open_hdf5(path, sensor_size=(640, 480))
    assert open_hdf5(path, sensor_size=(346, 260)).sensor_size == (346, 260)


def test_dsec_index_entries_past_the_last_event_are_checked(tmp_path):
    columns = sorted_events(seed=2, n=400, t0=T_OFFSET)
    last_ms = int(columns["t"][-1] - T_OFFSET) // 1000
    path = write_dsec(tmp_path / "a.h5", columns, index_entries=last_ms + 5)
    _, read, _ = read_all(path, 64)
    assert_columns_equal(read, columns)
    with h5py.File(path, "r+") as f:
        f["ms_to_idx"][last_ms + 3] = 399  # should be 400 (past the end)
    with pytest.raises(EventFormatError, match=rf"/ms_to_idx entry {last_ms + 3} is 399 .* event 400"):
        read_all(path, 64)


def test_dsec_time_unit_is_fixed(tmp_path):
    path = write_dsec(tmp_path / "a.h5", sorted_events(n=10, t0=T_OFFSET))
    assert open_hdf5(path, time_unit="us").format == "hdf5-dsec"
    with pytest.raises(EventFormatError, match="fixed"):
        open_hdf5(path, time_unit="ms")
    with pytest.raises(EventFormatError, match="MVSEC files only"):
        open_hdf5(path, camera="left")


# ----------------------------------------------------------------------------------------------- MVSEC

MVSEC_TIMES = ["1504645177.123456", "1504645177.123457", "1504645177.200000", "1504645177.200000",
               "1504645178.000001", "1504645178.999999", "1504645200.654321"]


def write_mvsec(path, left_rows, right_rows=None):
    with h5py.File(path, "w") as f:
        f.create_dataset("davis/left/events", data=np.asarray(left_rows, np.float64))
        f.create_dataset("davis/left/image_raw_ts", data=np.zeros(2))
        if right_rows is not None:
            f.create_dataset("davis/right/events", data=np.asarray(right_rows, np.float64))
    return path


def test_mvsec_float_seconds_become_exact_microseconds(tmp_path):
    rows = [[i * 7 % 346, i * 11 % 260, float(t), 1.0 if i % 3 else -1.0] for i, t in enumerate(MVSEC_TIMES)]
    rows[-1][0], rows[-1][1] = 345, 259
    path = write_mvsec(tmp_path / "mvsec.hdf5", rows, right_rows=[[1, 2, 1504645177.5, -1], [3, 4, 1504645177.6, 1]])
    event_file, read, sizes = read_all(path, 3)
    assert event_file.format == "hdf5-mvsec" and event_file.sensor_size == (346, 260)
    assert event_file.time_unit == "s" and "DAVIS346" in event_file.details["sensor_size_source"]
    assert event_file.details["cameras"] == ["left", "right"] and sizes == [3, 3, 1]
    # Six decimals of seconds are the microseconds, digit for digit.
    np.testing.assert_array_equal(read["t"], [int(t.replace(".", "")) for t in MVSEC_TIMES])
    np.testing.assert_array_equal(read["x"], [row[0] for row in rows])
    np.testing.assert_array_equal(read["y"], [row[1] for row in rows])
    np.testing.assert_array_equal(read["p"], [0, 1, 1, 0, 1, 1, 0])

    right_file, right, _ = read_all(path, camera="right")
    assert right_file.details["camera"] == "right"
    np.testing.assert_array_equal(right["t"], [1504645177500000, 1504645177600000])
    np.testing.assert_array_equal(right["p"], [0, 1])


def test_mvsec_sub_microsecond_times_round_to_nearest(tmp_path):
    times = [1500000000.0000002, 1500000000.0000007, 1500000000.0000012, 1500000001.4999996]
    # Polarity 0/1 files map like -1/+1: 0 and -1 are OFF.
    path = write_mvsec(tmp_path / "m.hdf5", [[0, 0, t, p] for t, p in zip(times, [1, 0, -1, 1])])
    _, read, _ = read_all(path)
    np.testing.assert_array_equal(read["p"], [1, 0, 0, 1])
    # Reference: the exact binary value of each float, in us, rounded half to even with decimal arithmetic.
    reference = [int((decimal.Decimal(t) * 1_000_000).to_integral_value(decimal.ROUND_HALF_EVEN)) for t in times]
    assert reference == [1500000000000000, 1500000000000001, 1500000000000001, 1500000001500000]
    np.testing.assert_array_equal(read["t"], reference)


def test_mvsec_errors(tmp_path):
    good = [[0, 0, 1504645177.0, 1], [345, 259, 1504645177.1, -1]]
    path = write_mvsec(tmp_path / "ok.hdf5", good)
    with pytest.raises(EventFormatError, match="fixed"):
        open_hdf5(path, time_unit="us")
    assert open_hdf5(path, time_unit="s").format == "hdf5-mvsec"
    with pytest.raises(EventFormatError, match=r"no /davis/right/events; cameras with events: \['left'\]"):
        open_hdf5(path, camera="right")
    with pytest.raises(EventFormatError, match=r"event 1 \(0-based\): x=345 is outside the sensor width 200"):
        read_all(path, sensor_size=(200, 200))
    cases = {
        "p": ([[0, 0, 1504645177.0, 1], [1, 1, 1504645177.1, 0.5]], r"/davis/left/events row 1: polarity p=0.5"),
        "x": ([[0, 0, 1504645177.0, 1], [1.5, 1, 1504645177.1, 1]], r"row 1: x=1.5 is not a pixel"),
        "x_range": ([[0, 0, 1504645177.0, 1], [346, 1, 1504645177.1, 1]], r"event 1 \(0-based\): x=346"),
        "t": ([[0, 0, 1504645177.0, 1], [1, 1, -1.0, 1]], r"rows 0\.\.1: time .*-1\.0.* s at event 1"),
        "order": ([[0, 0, 1504645177.0, 1], [1, 1, 1504645176.0, 1]], r"event 1 \(0-based\): t=1504645176000000"),
    }
    for name, (rows, message) in cases.items():
        with pytest.raises(EventFormatError, match=message):
            read_all(write_mvsec(tmp_path / f"{name}.hdf5", rows))
    with h5py.File(tmp_path / "shape.hdf5", "w") as f:
        f.create_dataset("davis/left/events", data=np.zeros((3, 3)))
    with pytest.raises(EventFormatError, match="N x 4"):
        open_hdf5(tmp_path / "shape.hdf5")


# ------------------------------------------------------------------------------------ other layouts


def test_metavision_cd_events_file_is_refused_with_conversion_advice(tmp_path):
    record = np.dtype({"names": ["x", "y", "p", "t"], "formats": ["<u2", "<u2", "<i2", "<i8"],
                       "offsets": [0, 2, 4, 8], "itemsize": 16})
    events = np.zeros(4, record)
    events["t"] = [10, 20, 30, 40]
    with h5py.File(tmp_path / "recording.hdf5", "w") as f:
        f.create_dataset("CD/events", data=events, chunks=(16384,), maxshape=(None,))
        f.create_dataset("CD/indexes", data=np.zeros(2, [("id", "<u8"), ("ts", "<i8")]))
        f.create_dataset("EXT_TRIGGER/events", data=np.zeros(0, record))
    with pytest.raises(EventFormatError) as error:
        open_hdf5(tmp_path / "recording.hdf5")
    message = str(error.value)
    for fragment in ("Prophesee/Metavision", "ECF", "36559", "metavision_file_to_raw", "metavision_file_to_dat",
                     ".raw/.dat"):
        assert fragment in message


def test_unknown_layout_and_non_hdf5_files(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("xs", data=np.zeros(3))
        f.create_group("images")
    with pytest.raises(EventFormatError, match=r"top-level keys are \['images', 'xs'\].*DSEC.*MVSEC"):
        open_hdf5(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("0 1 2 1\n")
    with pytest.raises(EventFormatError, match="not a readable HDF5 file"):
        open_hdf5(tmp_path / "text.h5")
    with pytest.raises(FileNotFoundError):
        open_hdf5(tmp_path / "missing.h5")


# ------------------------------------------------------------------------------------------ corruption


def test_corrupt_dsec_files(tmp_path):
    columns = sorted_events(seed=3, n=500, t0=T_OFFSET)

    def corrupt(name, edit, message, **kwargs):
        path = write_dsec(tmp_path / f"{name}.h5", columns, attrs={"width": 640, "height": 480}, compress=False)
        with h5py.File(path, "r+") as f:
            edit(f)
        with pytest.raises(EventFormatError, match=message):
            read_all(path, 128, **kwargs)

    corrupt("missing", lambda f: f["events"].pop("p"), r"missing \['/events/p'\]")
    def shorter_y(f):
        del f["events/y"]
        f.create_dataset("events/y", data=np.zeros(499, np.uint16))
    corrupt("lengths", shorter_y, r"different lengths .*'/events/y': 499")

    def x_outside(f):
        f["events/x"][321] = 640
    corrupt("x", x_outside, r"event 321 \(0-based\): x=640 is outside the sensor width 640")

    def polarity(f):
        f["events/p"][222] = 2
    corrupt("p", polarity, r"/events/p event 222: polarity p=2 is not 0 or 1")

    def index(f):
        k = int(f["events/t"][250]) // 1000 + 1  # an entry inside the recording
        f["ms_to_idx"][k] = f["ms_to_idx"][k] + 1
        f.attrs["bad_entry"] = k
    path = write_dsec(tmp_path / "index.h5", columns, compress=False)
    with h5py.File(path, "r+") as f:
        index(f)
        k = int(f.attrs["bad_entry"])
    with pytest.raises(EventFormatError, match=rf"/ms_to_idx entry {k} is"):
        read_all(path, 128)

    def unsorted(f):
        f["events/t"][400] = 0
    corrupt("order", unsorted, r"event 400 \(0-based\): t=1600000123456789 us is earlier")

    def float_times(f):
        del f["events/t"]
        f.create_dataset("events/t", data=np.zeros(500))
    corrupt("float", float_times, r"/events/t has shape \(500,\) and dtype float64")

    def offset(f):
        del f["t_offset"]
        f.create_dataset("t_offset", data=np.zeros(2, np.int64))
    corrupt("offset", offset, "t_offset must be one integer")

    def half_size(f):
        del f.attrs["height"]
    corrupt("size", half_size, "'width' but not its partner")


def test_corrupt_compressed_chunk_names_the_dataset(tmp_path):
    columns = sorted_events(seed=4, n=3000)
    path = tmp_path / "gz.h5"
    write_hdf5(path, events_of(columns))
    with h5py.File(path) as f:
        info = f["events/y"].id.get_chunk_info(0)
    with open(path, "r+b") as raw:  # garbage inside the compressed chunk: the deflate filter fails
        raw.seek(info.byte_offset + 8)
        raw.write(b"\xff" * 64)
    with pytest.raises(EventFormatError, match=r"cannot read dataset /events/y rows 0\.\.999 .*anon_jax\[formats\]"):
        read_all(path, 1000)


def test_without_hdf5plugin_gzip_reads_and_blosc_names_the_extra(tmp_path):
    columns = sorted_events(seed=5, n=200)
    write_hdf5(tmp_path / "gzip.h5", events_of(columns), compression="gzip")
    write_dsec(tmp_path / "dsec.h5", sorted_events(seed=5, n=200, t0=T_OFFSET))
    script = (
        "import sys\n"
        "sys.modules['hdf5plugin'] = None  # as if it were not installed\n"
        "from anon_jax.events.container import MissingDependencyError\n"
        "from anon_jax.events.hdf5_io import open_hdf5\n"
        f"print(sum(len(c['t']) for c in open_hdf5({str(tmp_path / 'gzip.h5')!r}).chunks(64)))\n"
        "try:\n"
        f"    open_hdf5({str(tmp_path / 'dsec.h5')!r})\n"
        "except MissingDependencyError as error:\n"
        "    print('MISSING', error)\n"
        "from anon_jax.events.hdf5_io import HDF5Writer\n"
        "try:\n"
        f"    HDF5Writer({str(tmp_path / 'new.h5')!r}, (640, 480), compression='blosc-zstd')\n"
        "except MissingDependencyError as error:\n"
        "    print('WRITER', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "200"
    assert lines[1].startswith("MISSING") and "32001" in lines[1] and "anon_jax[formats]" in lines[1]
    assert lines[2].startswith("WRITER") and "anon_jax[formats]" in lines[2]
    assert not (tmp_path / "new.h5").exists()
    assert issubclass(MissingDependencyError, ImportError)


# --------------------------------------------------------------------------------------------- writer


@pytest.mark.parametrize("compression, filter_id", [("gzip", 1), ("blosc-zstd", 32001), (None, None)])
def test_writer_round_trip(tmp_path, compression, filter_id):
    columns = sorted_events(seed=6, t0=T_OFFSET)
    path = tmp_path / "ours.h5"
    write_hdf5(path, events_of(columns), compression=compression)
    with h5py.File(path) as f:
        assert {name: f["events"][name].dtype for name in "xytp"} == {
            "x": np.uint16, "y": np.uint16, "t": np.uint32, "p": np.uint8}
        assert f["t_offset"][()] == columns["t"][0] and f["t_offset"].dtype == np.int64
        assert (f.attrs["width"], f.attrs["height"], f.attrs["anon_jax_events"]) == (640, 480, 1)
        np.testing.assert_array_equal(f["events/t"][:], columns["t"] - columns["t"][0])
        ids = filter_ids(f["events/x"])
        assert (filter_id in ids) if filter_id else ids == []
    event_file, read, _ = read_all(path, 999)
    assert event_file.sensor_size == (640, 480) and event_file.details["anon_jax_events"] == 1
    assert_columns_equal(read, columns)


def test_writer_chunks_build_the_same_ms_to_idx_as_numpy(tmp_path):
    columns = sorted_events(seed=7, n=4000, t0=T_OFFSET)
    events = events_of(columns)
    path = tmp_path / "chunks.h5"
    # Boundaries inside a burst of equal times, inside one millisecond, and across the 3 s gap.
    bounds = [0, 1, 110, 120, 1999, 2000, 2001, 3333, 4000]
    with HDF5Writer(path, (640, 480)) as writer:
        writer.write(Events.empty(640, 480))
        for start, stop in zip(bounds, bounds[1:]):
            writer.write(events.slice(start, stop))
        assert len(writer) == 4000
    relative = columns["t"] - columns["t"][0]
    with h5py.File(path) as f:
        stored = f["ms_to_idx"][:]
    assert stored.dtype == np.uint64
    np.testing.assert_array_equal(stored, ms_index(relative))
    assert stored[0] == 0 and len(stored) == relative[-1] // 1000 + 1
    # Reference by a plain loop over the events for a few entries.
    for k in (0, 1, 500, len(stored) - 1):
        assert stored[k] == next(i for i, t in enumerate(relative) if t >= k * 1000)
    _, read, _ = read_all(path, 4000)
    assert_columns_equal(read, columns)


def test_chunked_read_equals_whole_read(tmp_path):
    columns = sorted_events(seed=8, n=2500, t0=T_OFFSET)
    path = tmp_path / "c.h5"
    write_hdf5(path, events_of(columns))
    _, whole, sizes_whole = read_all(path, 10 ** 9)
    assert sizes_whole == [2500]
    event_file = open_hdf5(path)
    for max_events in (1, 7, 1000):
        parts = list(event_file.chunks(max_events))
        assert max(len(part["t"]) for part in parts) == max_events
        assert_columns_equal({k: np.concatenate([part[k] for part in parts]) for k in "txyp"}, whole)
    assert_columns_equal(whole, columns)
    with pytest.raises(EventFormatError, match="max_events"):
        next(event_file.chunks(0))


def test_empty_stream_round_trips_with_its_sensor(tmp_path):
    path = tmp_path / "empty.h5"
    write_hdf5(path, Events.empty(320, 240))
    with h5py.File(path) as f:
        assert f["t_offset"][()] == 0 and f["ms_to_idx"].shape == (0,) and f["events/t"].shape == (0,)
    event_file = open_hdf5(path)
    assert event_file.sensor_size == (320, 240) and event_file.details["events"] == 0
    assert list(event_file.chunks(10)) == []


def test_span_beyond_32_bits_stores_int64_times(tmp_path):
    t = np.array([5, 6, 1000, 2 ** 32 + 4, 2 ** 32 + 5, 2 ** 32 + 5000], np.int64) + T_OFFSET
    columns = {"t": t, "x": np.arange(6, dtype=np.uint16), "y": np.arange(6, dtype=np.uint16),
               "p": np.array([1, 0, 1, 0, 1, 1], np.uint8)}
    events = events_of(columns)
    one, streamed = tmp_path / "one.h5", tmp_path / "streamed.h5"
    write_hdf5(one, events)
    with HDF5Writer(streamed, (640, 480), compression="blosc-zstd") as writer:
        writer.write(events.slice(0, 3))  # fits uint32: starts narrow, widens on the next chunk
        writer.write(events.slice(3, 6))
    for path in (one, streamed):
        with h5py.File(path) as f:
            assert f["events/t"].dtype == np.int64
            np.testing.assert_array_equal(f["events/t"][:], t - t[0])
            index = f["ms_to_idx"][:]
        # Relative times 0, 1, 995, 2^32 - 1, 2^32, 2^32 + 4995 us.
        assert len(index) == (2 ** 32 + 4995) // 1000 + 1 == 4_294_973
        assert (index[0], index[1], index[4_294_966], index[4_294_967], index[4_294_968], index[-1]) == \
            (0, 3, 3, 3, 5, 5)
        np.testing.assert_array_equal(index, ms_index(t - t[0]))
        _, read, _ = read_all(path, 2)
        assert_columns_equal(read, columns)


def test_writer_failure_leaves_no_partial_file(tmp_path):
    events = events_of(sorted_events(seed=9, n=100))

    def leftovers():
        return sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(RuntimeError, match="boom"):
        with HDF5Writer(tmp_path / "a.h5", (640, 480)) as writer:
            writer.write(events.slice(0, 50))
            raise RuntimeError("boom")
    assert leftovers() == []

    with pytest.raises(EventFormatError, match="write chunks in time order"):
        with HDF5Writer(tmp_path / "b.h5", (640, 480)) as writer:
            writer.write(events.slice(50, 100))
            writer.write(events.slice(0, 50))
    assert leftovers() == []

    with pytest.raises(EventFormatError, match="differs from the writer's 320x240"):
        write_hdf5_into = HDF5Writer(tmp_path / "c.h5", (320, 240))
        write_hdf5_into.write(events)
    assert write_hdf5_into.closed and leftovers() == []

    writer = HDF5Writer(tmp_path / "d.h5", (640, 480))
    writer.write(events)
    writer.abort()
    assert leftovers() == []

    # A failed rewrite keeps the earlier file intact.
    write_hdf5(tmp_path / "keep.h5", events.slice(0, 10))
    before = (tmp_path / "keep.h5").read_bytes()
    with pytest.raises(RuntimeError):
        with HDF5Writer(tmp_path / "keep.h5", (640, 480)) as writer:
            writer.write(events)
            raise RuntimeError("interrupted")
    assert (tmp_path / "keep.h5").read_bytes() == before and leftovers() == ["keep.h5"]

    with pytest.raises(EventFormatError, match="compression must be one of"):
        HDF5Writer(tmp_path / "e.h5", (640, 480), compression="lz4")
    with pytest.raises(TypeError, match="takes Events"):
        write_hdf5(tmp_path / "f.h5", {"t": []})
    assert leftovers() == ["keep.h5"]
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_writer_dropped_without_close_removes_its_temporary_file(tmp_path):
    writer = HDF5Writer(tmp_path / "dropped.h5", (640, 480))
    writer.write(events_of(sorted_events(seed=10, n=50)))
    assert len(list(tmp_path.iterdir())) == 1  # the temporary sibling
    del writer
    assert list(tmp_path.iterdir()) == []
