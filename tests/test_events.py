"""EventStream validation and helpers, padding, and the text reader/writer (exact float64 round trips, errors)."""

import os
import re

import numpy as np
import pytest

from anon_jax import events
from anon_jax.events import EventFormatError, EventStream

BASE_TIME = 410629076.099676  # a real Event-ReId timestamp: float32 would round it to 410629088.0


def make_stream(n=6, height=4, width=5, source="unit", seed=0):
    rng = np.random.default_rng(seed)
    return EventStream(
        x=rng.integers(0, width, n), y=rng.integers(0, height, n),
        t=BASE_TIME + np.sort(rng.random(n)) * 333.0, p=rng.integers(0, 2, n),
        height=height, width=width, source=source)


def test_stream_converts_dtypes_and_is_read_only():
    stream = EventStream(x=[0, 4], y=[1, 3], t=[BASE_TIME, BASE_TIME + 1], p=[True, False], height=4, width=5)
    assert (stream.x.dtype, stream.y.dtype, stream.t.dtype, stream.p.dtype) == (
        np.int32, np.int32, np.float64, np.uint8)
    assert stream.t[0] == BASE_TIME and stream.p.tolist() == [1, 0] and len(stream) == 2
    with pytest.raises(ValueError):
        stream.x[0] = 3
    with pytest.raises(AttributeError):
        stream.height = 7


def test_stream_maps_signed_polarity_and_keeps_caller_arrays_writable():
    p = np.array([-1, 1, -1])
    stream = EventStream(x=[0, 1, 2], y=[0, 0, 0], t=[1.0, 2.0, 2.0], p=p, height=1, width=3)
    assert stream.p.tolist() == [0, 1, 0]
    x = np.array([0, 1], np.int32)
    EventStream(x=x, y=[0, 0], t=[0.0, 1.0], p=[0, 1], height=1, width=2)
    x[0] = 1  # the stream holds a read-only view, not a read-only caller array


@pytest.mark.parametrize("columns, message", [
    (dict(x=[0, 5], y=[0, 0], t=[0.0, 1.0], p=[0, 1]), "event 1 (0-based): x=5 is outside the sensor width 5"),
    (dict(x=[0, 1], y=[-1, 0], t=[0.0, 1.0], p=[0, 1]), "event 0 (0-based): y=-1 is negative"),
    (dict(x=[0, 1], y=[0, 4], t=[0.0, 1.0], p=[0, 1]), "y=4 is outside the sensor height 4"),
    (dict(x=[0, 1.5], y=[0, 0], t=[0.0, 1.0], p=[0, 1]), "x=1.5 is not an integer"),
    (dict(x=[0, 1], y=[0, 0], t=[0.0, 1.0], p=[0, 2]), "polarity p=2"),
    (dict(x=[0, 1], y=[0, 0], t=[0.0, 1.0], p=[0, -1]), "mix the 0/1 and -1/+1"),
    (dict(x=[0, 1], y=[0, 0], t=[0.0, np.nan], p=[0, 1]), "not finite"),
    (dict(x=[0, 1, 2], y=[0, 0, 0], t=[0.0, 2.0, 1.0], p=[0, 1, 1]), "event 2 (0-based): timestamp t=1.0 is earlier"),
    (dict(x=[0, 1], y=[0, 0], t=[0.0], p=[0, 1]), "equal lengths"),
    (dict(x=[[0, 1]], y=[0, 0], t=[0.0, 1.0], p=[0, 1]), "must be 1-D"),
])
def test_stream_rejects_bad_events_naming_the_source(columns, message):
    with pytest.raises(EventFormatError, match=r"^cam3\.txt: .*" + re.escape(message)):
        EventStream(**columns, height=4, width=5, source="cam3.txt")


@pytest.mark.parametrize("height, width", [(0, 5), (4, 2.5), (True, 3)])
def test_stream_rejects_bad_sensor_size(height, width):
    with pytest.raises(EventFormatError, match="sensor (height|width) must be a positive integer"):
        EventStream(x=[], y=[], t=[], p=[], height=height, width=width)


def test_empty_stream_is_allowed_but_not_voxelised():
    empty = EventStream(x=[], y=[], t=[], p=[], height=3, width=3, source="empty.txt")
    assert len(empty) == 0
    for call in (empty.require_nonempty, empty.bbox_shifted, lambda: events.pad_events(empty, 4),
                 lambda: events.chunk_voxel_grid(empty, num_bins=5, height=8, width=4)):
        with pytest.raises(EventFormatError, match="empty.txt: no events"):
            call()


def test_bbox_shift_matches_event_reid_loader():
    stream = EventStream(x=[7, 3, 5], y=[10, 12, 20], t=[1.0, 2.0, 3.0], p=[0, 1, 1], height=30, width=9,
                         source="s")
    shifted = stream.bbox_shifted()
    assert shifted.x.tolist() == [4, 0, 2] and shifted.y.tolist() == [0, 2, 10]
    assert (shifted.height, shifted.width, shifted.source) == (11, 5, "s")
    np.testing.assert_array_equal(shifted.t, stream.t)


def test_time_slice_is_half_open():
    stream = EventStream(x=[0] * 5, y=[0] * 5, t=[1.0, 2.0, 2.0, 3.0, 4.0], p=[1] * 5, height=1, width=1)
    assert stream.time_slice(2.0, 4.0).t.tolist() == [2.0, 2.0, 3.0]
    assert len(stream.time_slice(5.0, 9.0)) == 0 and len(stream.time_slice(3.0, 1.0)) == 0


def test_concatenate_keeps_order_and_checks_sensor_and_time():
    a = EventStream(x=[0, 1], y=[0, 0], t=[1.0, 2.0], p=[0, 1], height=2, width=2, source="a")
    b = EventStream(x=[1], y=[1], t=[2.5], p=[1], height=2, width=2, source="a")
    joined = EventStream.concatenate([a, b])
    assert joined.t.tolist() == [1.0, 2.0, 2.5] and joined.y.tolist() == [0, 0, 1] and joined.source == "a"
    with pytest.raises(EventFormatError, match="different sensor sizes"):
        EventStream.concatenate([a, EventStream(x=[0], y=[0], t=[3.0], p=[1], height=3, width=2)])
    with pytest.raises(EventFormatError, match="earlier than the previous"):
        EventStream.concatenate([b, a])
    with pytest.raises(EventFormatError, match="no streams"):
        EventStream.concatenate([])


def test_pad_events_relative_float32_times_and_mask():
    stream = EventStream(x=[1, 2, 3], y=[0, 1, 0], t=[BASE_TIME, BASE_TIME + 0.5, BASE_TIME + 333.25],
                         p=[1, 0, 1], height=2, width=4)
    padded = events.pad_events(stream, 5)
    assert padded["t"].dtype == np.float32
    assert padded["t"].tolist() == [0.0, 0.5, 333.25, 0.0, 0.0]  # exact: subtracted in float64 first
    assert padded["mask"].tolist() == [True, True, True, False, False]
    assert padded["x"].tolist() == [1, 2, 3, 0, 0] and padded["p"].tolist() == [1, 0, 1, 0, 0]
    with pytest.raises(EventFormatError, match="3 events do not fit in capacity 2"):
        events.pad_events(stream, 2)


def write_text(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("header", [True, False])
def test_text_round_trip_is_bit_exact(tmp_path, header):
    rng = np.random.default_rng(1)
    n = 500
    t = np.sort(BASE_TIME + rng.random(n) * 333.0)
    t[10:13] = t[10]  # equal timestamps are legal
    stream = EventStream(x=rng.integers(0, 640, n), y=rng.integers(0, 480, n), t=t, p=rng.integers(0, 2, n),
                         height=480, width=640)
    path = tmp_path / "events.txt"
    events.write_event_text(path, stream, header=header)
    back = events.read_event_text(path, sensor_size=None if header else (480, 640))
    assert back.t.view(np.int64).tolist() == stream.t.view(np.int64).tolist()
    for name in ("x", "y", "p"):
        np.testing.assert_array_equal(getattr(back, name), getattr(stream, name))
    assert (back.height, back.width, back.source) == (480, 640, str(path))
    assert os.listdir(tmp_path) == ["events.txt"]  # no temporary file left behind
    first_line = path.read_text().splitlines()[0]
    assert first_line == "640 480" if header else first_line.split()[0] == repr(float(t[0]))


def test_write_replaces_existing_file(tmp_path):
    path = write_text(tmp_path / "chunk.txt", "old contents\n")
    events.write_event_text(path, make_stream(n=3), header=False)
    assert len(path.read_text().splitlines()) == 3 and os.listdir(tmp_path) == ["chunk.txt"]


def test_read_sample_chunk_exact_timestamps(event_reid_sample_dir):
    path = event_reid_sample_dir / "train" / "001_c1_048.txt"
    stream = events.read_event_text(path)
    lines = path.read_text().split("\n")
    assert len(stream) == 10250
    assert stream.t[0] == BASE_TIME and stream.t[1] == float("410629076.1672001")
    assert [float(v) for v in lines[-2].split()] == [stream.t[-1], stream.x[-1], stream.y[-1], stream.p[-1]]
    # Headerless: the sensor is the bounding box from 0, i.e. (max y + 1, max x + 1).
    assert (stream.height, stream.width) == (int(stream.y.max()) + 1, int(stream.x.max()) + 1)
    assert events.read_event_text(path, sensor_size=(480, 640)).height == 480


def test_read_header_and_blank_lines(tmp_path):
    path = write_text(tmp_path / "e.txt", "\n640 480\n0.5 639 479 1\n\n0.75 0 0 0\n")
    stream = events.read_event_text(path)
    assert (stream.height, stream.width) == (480, 640)
    assert stream.t.tolist() == [0.5, 0.75] and stream.x.tolist() == [639, 0] and stream.p.tolist() == [1, 0]
    header_only = events.read_event_text(write_text(tmp_path / "h.txt", "32 24\n"))
    assert len(header_only) == 0 and (header_only.height, header_only.width) == (24, 32)
    with pytest.raises(EventFormatError, match="header gives sensor"):
        events.read_event_text(path, sensor_size=(10, 10))


@pytest.mark.parametrize("text, message", [
    ("640 480\n0.1 1 2 1\n0.2 1 x 1\n", r"bad.txt:3: column y is not a number: 'x'"),
    ("0.1 1 2 1\n0.2 1 2 1\n\n0.3 1 2\n", r"bad.txt:4: expected 4 values `t x y p`, found 3"),
    ("0.1 1 2\n0.2 1 2\n", r"bad.txt:1: expected 4 values `t x y p`, found 3"),
    ("640 480\n0.1 1 2 1\n0.2 640 2 1\n", r"bad.txt:3: x=640.0 is outside the sensor width 640"),
    ("640 480\n0.1 1 2 1\n0.2 1 2 3\n", r"bad.txt:3: polarity p=3.0 is not 0/1"),
    ("640 480\n0.1 1 2 1\n0.2 1.5 2 1\n", r"bad.txt:3: x=1.5 is not an integer"),
    ("0.1 1 2 1\n\n0.3 1 2 1\n0.2 1 2 1\n", r"bad.txt:4: timestamp t=0.2 is earlier than the previous one \(0.3\)"),
    ("0.1 -1 2 1\n", r"bad.txt:1: x=-1.0 is negative"),
    ("640 four\n0.1 1 2 1\n", r"bad.txt:1: a 2-value first row must be the header `width height`"),
    ("0 480\n", r"bad.txt:1: header `width height` must be positive"),
    ("", r"no events and no `width height` header"),
])
def test_read_errors_name_file_and_line(tmp_path, text, message):
    path = write_text(tmp_path / "bad.txt", text)
    with pytest.raises(EventFormatError, match=message):
        events.read_event_text(path)
