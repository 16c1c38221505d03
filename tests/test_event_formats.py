"""The event file entry point: container, unit conversion, RAW/text streaming, detection, windows, CLI."""

import json
import subprocess
import sys

import evt3
import faery

import numpy as np
import pytest

import anon_jax.events as events
from anon_jax.events import Events, EventFormatError
from anon_jax.events import __main__ as cli
from anon_jax.events.container import to_microseconds
from anon_jax.events.prophesee_raw import open_raw
from anon_jax.events.text_io import format_times, open_text

from tests import test_evt3
from tests.test_prophesee_raw import encode_evt2, encode_evt21, header

# --- unit conversion and the container ---


def test_to_microseconds_rounds_to_nearest_and_is_exact_for_integers():
    np.testing.assert_array_equal(to_microseconds(np.array([0.0000004, 0.0000006, 1.000001]), "s", where="w"),
                                  [0, 1, 1000001])
    # Unix-epoch seconds with six decimals: float64 resolves 0.24 us there, rounding still gives the integer.
    seconds = ["1600000000.123456", "1699999999.999999", "1500000000.000001"]
    expected = [1600000000123456, 1699999999999999, 1500000000000001]
    np.testing.assert_array_equal(to_microseconds(np.array(seconds, dtype=np.float64), "s", where="w"), expected)
    np.testing.assert_array_equal(to_microseconds(np.array([3, 7], np.int32), "ms", where="w"), [3000, 7000])
    # Integer nanoseconds round half to even, like np.rint on floats.
    ns = np.array([1_499, 1_500, 2_500, 2_501, 1_600_000_000_123_456_500], np.int64)
    np.testing.assert_array_equal(to_microseconds(ns, "ns", where="w"), [1, 2, 2, 3, 1_600_000_000_123_456])
    np.testing.assert_array_equal(to_microseconds(np.array([0.5, 1.5, 2.5]), "us", where="w"), [0, 2, 2])
    with pytest.raises(EventFormatError, match=r"f\.txt: time -1.0 s at event 1 .*negative"):
        to_microseconds(np.array([0.0, -1.0]), "s", where="f.txt")
    with pytest.raises(EventFormatError, match="time_unit must be one of"):
        to_microseconds(np.array([1]), "hours", where="w")


def test_events_validate_and_convert():
    good = Events(t=[1, 2, 2], x=[0, 3, 1], y=[0, 1, 2], p=[True, False, True], width=4, height=3, source="s")
    assert good.t.dtype == np.int64 and good.x.dtype == np.uint16 and good.p.dtype == np.uint8
    assert good.sensor_size == (4, 3) and good.duration_us == 1 and not good.t.flags.writeable
    stream = good.to_stream()
    assert (stream.height, stream.width) == (3, 4) and stream.t.dtype == np.float64
    back = Events.from_stream(stream)
    np.testing.assert_array_equal(back.t, good.t)
    np.testing.assert_array_equal(good.time_slice(2, 3).x, [3, 1])
    with pytest.raises(EventFormatError, match=r"s: event 1 \(0-based\): x=4 is outside the sensor width 4"):
        Events(t=[1, 2], x=[0, 4], y=[0, 0], p=[0, 0], width=4, height=3, source="s")
    with pytest.raises(EventFormatError, match=r"event 1 .*t=1 us is earlier than the previous event \(2 us\)"):
        Events(t=[2, 1], x=[0, 0], y=[0, 0], p=[0, 0], width=4, height=3)
    with pytest.raises(EventFormatError, match="polarity p=2"):
        Events(t=[2], x=[0], y=[0], p=[2], width=4, height=3)
    with pytest.raises(EventFormatError, match="column t has dtype float64"):
        Events(t=[2.0], x=[0], y=[0], p=[1], width=4, height=3)
    with pytest.raises(EventFormatError, match="sensor width must be an integer"):
        Events.empty(0, 3)


# --- RAW files stream in chunks with carried state ---


def _raw_file(tmp_path, kind, rng):
    n = 3000
    if kind == "evt3":
        t, x, y, p = test_evt3.random_events(5, n=n)
        words, order = test_evt3.encode_evt3(t, x, y, p)
        t, x, y, p = t[order], x[order], y[order], p[order]
        data = header(f"EVT3;height={test_evt3.HEIGHT};width={test_evt3.WIDTH}") + words.astype("<u2").tobytes()
        size = (test_evt3.WIDTH, test_evt3.HEIGHT)
    else:
        # Start just before the 2^34 us wrap of the EVT 2.x TIME_HIGH counter, so chunks cross it.
        t = (1 << 34) - 5_000 + np.cumsum(rng.choice([0, 0, 1, 7, 64, 300], n))
        x, y, p = rng.integers(0, 320, n), rng.integers(0, 240, n), rng.integers(0, 2, n)
        wrapped = t & ((1 << 34) - 1)
        if kind == "evt2":
            data = header("EVT2;height=240;width=320") + encode_evt2(wrapped, x, y, p).astype("<u4").tobytes()
        else:
            order = np.lexsort((x, p, y, t))  # group pixels of one word together, as a sensor does
            t, x, y, p = t[order], x[order], y[order], p[order]
            payload, _ = encode_evt21(t & ((1 << 34) - 1), x, y, p, legacy=kind == "evt21-legacy")
            layout = ";endianness=legacy" if kind == "evt21-legacy" else ""
            data = header(f"EVT21;height=240;width=320{layout}") + payload
        size = (320, 240)
    path = tmp_path / f"{kind}.raw"
    path.write_bytes(data)
    return path, (t, x, y, p), size


@pytest.mark.parametrize("kind", ["evt2", "evt21", "evt21-legacy", "evt3"])
def test_raw_files_read_the_same_in_any_chunking(tmp_path, kind):
    rng = np.random.default_rng(1)
    path, (t, x, y, p), size = _raw_file(tmp_path, kind, rng)
    whole = events.read(path)
    assert whole.sensor_size == size and events.detect_format(path) == "raw"
    for name, values in zip("txyp", (t, x, y, p)):
        np.testing.assert_array_equal(getattr(whole, name), values, err_msg=name)
    opened = open_raw(path)
    assert opened.format == kind.split("-")[0]
    for max_events in (1, 7, 100, 1001):
        parts = list(opened.chunks(max_events))
        np.testing.assert_array_equal(np.concatenate([part["t"] for part in parts]), t)
        np.testing.assert_array_equal(np.concatenate([part["x"] for part in parts]), x)


def test_raw_time_unit_and_sensor_size_must_agree(tmp_path):
    path, _, _ = _raw_file(tmp_path, "evt2", np.random.default_rng(0))
    with pytest.raises(EventFormatError, match="RAW files store microseconds"):
        events.read(path, time_unit="s")
    with pytest.raises(EventFormatError, match=r"sensor_size=\(640, 480\) contradicts the header's 320x240"):
        events.read(path, sensor_size=(640, 480))


# --- text ---


def _write(path, text):
    path.write_text(text)
    return path


def test_text_units_header_and_line_numbered_errors(tmp_path):
    path = _write(tmp_path / "rpg.txt", "4 3\n0.000001 1 2 1\n\n0.0000015 3 0 -1\n1.25 0 0 1\n")
    with pytest.raises(EventFormatError, match=r"rpg\.txt: text event files do not state their time unit"):
        events.read(path)
    got = events.read(path, time_unit="s")
    assert got.sensor_size == (4, 3)
    np.testing.assert_array_equal(got.t, [1, 2, 1250000])  # 1.5 us rounds to even
    np.testing.assert_array_equal(got.p, [1, 0, 1])
    with pytest.raises(EventFormatError, match=r"header gives sensor \(width, height\) = \(4, 3\)"):
        events.read(path, time_unit="s", sensor_size=(5, 3))
    bad = _write(tmp_path / "bad.txt", "1 1 2 1\n2 1 2\n")
    with pytest.raises(EventFormatError, match=r"bad\.txt:2: expected 4 values"):
        events.read(bad, time_unit="us")
    late = _write(tmp_path / "late.txt", "".join(f"{t} 0 0 1\n" for t in (1, 2, 3, 4, 3)))
    for chunk in (1, 2, 100):  # the time order is checked across chunk boundaries, errors name the line
        with pytest.raises(EventFormatError, match=r"late\.txt:5: timestamp t=3.0 is earlier"):
            list(open_text(late, time_unit="us").chunks(chunk))
    outside = _write(tmp_path / "out.txt", "2 1\n1 0 0 1\n2 1 1 1\n")
    with pytest.raises(EventFormatError, match=r"out\.txt:3: y=1(\.0)? is outside the sensor height 1"):
        events.read(outside, time_unit="us")


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_text_writer_round_trips_exactly(tmp_path, unit):
    rng = np.random.default_rng(2)
    t = np.sort(rng.integers(0, 2 * 10 ** 15, 500))
    original = Events(t=t, x=rng.integers(0, 640, 500), y=rng.integers(0, 480, 500), p=rng.integers(0, 2, 500),
                      width=640, height=480)
    path = tmp_path / f"e_{unit}.txt"
    events.write(path, original, time_unit=unit)
    back = events.read(path, time_unit=unit)
    assert back.sensor_size == (640, 480)
    for name in "txyp":
        np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
    assert list(format_times(np.array([1_000_001, 5]), "s")) == ["1.000001", "0.000005"]
    assert list(format_times(np.array([1_000_001]), "ms")) == ["1000.001"]


def test_writer_failure_leaves_no_file(tmp_path):
    path = tmp_path / "partial.txt"
    with pytest.raises(RuntimeError):
        with events.open_writer(path, sensor_size=(4, 4)) as writer:
            writer.write(Events(t=[1], x=[1], y=[1], p=[1], width=4, height=4))
            raise RuntimeError("interrupted")
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(EventFormatError, match=r"events of a \(5, 4\) sensor"):
        with events.open_writer(path, sensor_size=(4, 4)) as writer:
            writer.write(Events.empty(5, 4))
    with pytest.raises(EventFormatError, match="cannot write .raw files"):
        events.open_writer(tmp_path / "x.raw", sensor_size=(4, 4))


# --- detection ---


def test_detect_format_by_magic_and_extension(tmp_path):
    raw, _, _ = _raw_file(tmp_path, "evt2", np.random.default_rng(0))
    renamed = tmp_path / "recording.bin"
    renamed.write_bytes(raw.read_bytes())
    assert events.detect_format(renamed) == "raw"
    dat = tmp_path / "x.bin"
    dat.write_bytes(b"% Data file containing CD events.\n% Version 2\n% Width 4\n% Height 4\n\x0c\x08")
    assert events.detect_format(dat) == "dat"
    np.save(tmp_path / "e.npy", np.zeros((2, 4)))
    assert events.detect_format(tmp_path / "e.npy") == "numpy"
    (tmp_path / "h.dat5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(8))
    assert events.detect_format(tmp_path / "h.dat5") == "hdf5"
    (tmp_path / "a.aedat4").write_bytes(b"#!AER-DAT4.0\r\n")
    assert events.detect_format(tmp_path / "a.aedat4") == "aedat4"
    assert events.detect_format(_write(tmp_path / "e.txt", "1 2 3 1\n")) == "text"
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    assert events.detect_format(tmp_path / "bag") == "rosbag"
    with pytest.raises(EventFormatError, match=r"mystery\.xyz: unknown event file format.*Supported: text"):
        events.detect_format(_write(tmp_path / "mystery.xyz", "hello"))
    with pytest.raises(EventFormatError, match=r"missing\.raw: no such event file"):
        events.read(tmp_path / "missing.raw")


# --- windows ---


def _text_recording(tmp_path, t):
    n = len(t)
    rng = np.random.default_rng(3)
    recording = Events(t=t, x=rng.integers(0, 8, n), y=rng.integers(0, 6, n), p=rng.integers(0, 2, n),
                       width=8, height=6)
    path = tmp_path / "rec.txt"
    events.write(path, recording)
    return path, recording


def test_time_windows_cover_fixed_intervals_including_gaps(tmp_path):
    t = np.array([100, 100, 105, 109, 110, 130, 131, 175, 176, 176], np.int64)
    path, recording = _text_recording(tmp_path, t)
    for chunk in (1, 3, 100):
        windows = list(events.iter_windows(path, time_unit="us", duration_us=10, chunk_events=chunk))
        # [100,110) [110,120) [120,130) [130,140) ... [170,180): empty windows inside the gap are kept.
        assert [list(w.t) for w in windows] == [[100, 100, 105, 109], [110], [], [130, 131], [], [], [],
                                                [175, 176, 176]]
        assert all(w.sensor_size == (8, 6) for w in windows)
        np.testing.assert_array_equal(np.concatenate([w.x for w in windows]), recording.x)


def test_count_windows_and_argument_errors(tmp_path):
    path, recording = _text_recording(tmp_path, np.arange(23, dtype=np.int64) * 3)
    for chunk in (1, 4, 50):
        windows = list(events.iter_windows(path, time_unit="us", num_events=5, chunk_events=chunk))
        assert [len(w) for w in windows] == [5, 5, 5, 5, 3]
        np.testing.assert_array_equal(np.concatenate([w.t for w in windows]), recording.t)
    with pytest.raises(EventFormatError, match="exactly one of duration_us and num_events"):
        next(events.iter_windows(path, time_unit="us"))
    with pytest.raises(EventFormatError, match="num_events must be a positive integer"):
        next(events.iter_windows(path, time_unit="us", num_events=0))


def test_windows_of_a_file_without_size_use_the_bounding_box(tmp_path):
    path = _write(tmp_path / "nohead.txt", "1 3 1 1\n2 0 4 0\n9 1 1 1\n")
    windows = list(events.iter_windows(path, time_unit="us", num_events=2))
    assert [w.sensor_size for w in windows] == [(4, 5), (4, 5)]
    assert events.read(path, time_unit="us").sensor_size == (4, 5)
    assert events.read(path, time_unit="us", sensor_size=(10, 10)).sensor_size == (10, 10)


# --- command line ---


def test_info_and_convert_commands(tmp_path, capsys):
    rng = np.random.default_rng(4)
    path, (t, x, y, p), _ = _raw_file(tmp_path, "evt3", rng)
    assert cli.main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "evt3" and info["events"] == len(t)
    assert info["first_t_us"] == t[0] and info["last_t_us"] == t[-1]
    assert info["on_events"] == int(p.sum()) and info["sensor_size"] == [test_evt3.WIDTH, test_evt3.HEIGHT]
    assert info["rate_events_per_s"] == pytest.approx(len(t) / ((t[-1] - t[0]) / 1e6))
    assert cli.main(["info", str(path)]) == 0
    table = capsys.readouterr().out
    assert f"events     {len(t):,}" in table and "polarity   ON" in table
    out = tmp_path / "converted.txt"
    assert cli.main(["convert", str(path), str(out), "--out-time-unit", "s", "--chunk-events", "333"]) == 0
    back = events.read(out, time_unit="s")
    np.testing.assert_array_equal(back.t, t)
    np.testing.assert_array_equal(back.x, x)
    assert cli.main(["convert", str(path), str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert cli.main(["info", str(out)]) == 2
    assert "do not state their time unit" in capsys.readouterr().err


# --- maintained libraries as references for the RAW decoders ---


def _faery_events(t, x, y, p):
    array = np.zeros(len(t), faery.EVENTS_DTYPE)
    array["t"], array["x"], array["y"], array["on"] = t, x, y, p.astype(bool)
    return array


@pytest.mark.parametrize("version", ["evt2", "evt3"])
@pytest.mark.parametrize("zero_t0", [False, True])
def test_faery_written_raw_files_read_exactly(tmp_path, version, zero_t0):
    rng = np.random.default_rng(7)
    n = 20_000
    # 40 s from a non-zero start: the EVT 3.0 24-bit time wraps twice; bursts and runs make vector words.
    t = 3_000_000 + np.sort(rng.integers(0, 40_000_000, n))
    x, y, p = rng.integers(0, 1280, n), rng.integers(0, 720, n), rng.integers(0, 2, n)
    t[100:140], y[100:140], p[100:140], x[100:140] = t[100], 7, 1, np.arange(500, 540)
    path = tmp_path / f"faery_{version}.raw"
    faery.events_stream_from_array(_faery_events(t, x, y, p), dimensions=(1280, 720)).to_file(
        path, version=version, zero_t0=zero_t0)
    got = events.read(path)
    assert got.sensor_size == (1280, 720)
    # Equal timestamps may come out in another pixel order (vector words), so compare sorted rows.
    expected = np.lexsort((p, x, y, t))
    order = np.lexsort((got.p, got.x, got.y, got.t))
    for name, values in zip("txyp", (t, x, y, p)):
        np.testing.assert_array_equal(getattr(got, name)[order], values[expected], err_msg=name)


def test_our_evt3_decoding_matches_the_evt3_library(tmp_path):
    path, (t, x, y, p), _ = _raw_file(tmp_path, "evt3", np.random.default_rng(8))
    reference = evt3.decode_file(str(path))
    got = events.read(path)
    for name, values in zip("txyp", (reference.t, reference.x, reference.y, reference.p)):
        np.testing.assert_array_equal(getattr(got, name), np.asarray(values), err_msg=name)


def test_reader_options_must_apply_to_the_format(tmp_path):
    path = _write(tmp_path / "e.txt", "1 0 0 1\n")
    with pytest.raises(EventFormatError, match=r"e\.txt: option\(s\) \['columns'\] do not apply to text files"):
        events.read(path, time_unit="us", columns="txyp")


def test_time_order_clamp_raises_jittered_times_and_reports_them(tmp_path, capsys):
    # EVT 2.0 readout jitter: two events a few microseconds earlier than the one before them.
    t = np.array([10, 20, 17, 30, 28, 40], np.int64)
    words = encode_evt2(t, [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0])
    path = tmp_path / "jitter.raw"
    path.write_bytes(header("EVT2;height=4;width=8") + words.astype("<u4").tobytes())
    with pytest.raises(EventFormatError, match=r"jitter\.raw: event 2 \(0-based\): t=17 us is earlier"):
        events.read(path)
    for chunk in (1, 2, 100):
        with pytest.warns(UserWarning, match=r"jitter\.raw: 2 event times were earlier .* raised"):
            windows = list(events.iter_windows(path, num_events=4, chunk_events=chunk, time_order="clamp"))
        np.testing.assert_array_equal(np.concatenate([w.t for w in windows]), [10, 20, 20, 30, 30, 40])
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(events.read(path, time_order="clamp").x, [1, 2, 3, 4, 5, 6])
    with pytest.raises(EventFormatError, match="time_order must be one of"):
        events.read(path, time_order="sort")
    assert cli.main(["info", str(path), "--json"]) == 2
    with pytest.warns(UserWarning):
        assert cli.main(["info", str(path), "--json", "--clamp-times"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 6


def test_reading_files_does_not_import_jax():
    # The readers and the info/convert command stay light (BENCHMARKS.md: 33 MB instead of JAX's 160-180 MB);
    # the voxel functions still load on first use.
    code = ("import sys, anon_jax.events as events, anon_jax.events.__main__; assert 'jax' not in sys.modules; "
            "events.voxel_grid; assert 'jax' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
