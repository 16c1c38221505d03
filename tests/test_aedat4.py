"""AEDAT 4 reader: fixtures written by faery (zero_t0=False), read back exactly; corrupt, cut and foreign files."""

from __future__ import annotations

import struct
import sys

import faery
import numpy as np
import pytest
from faery import aedat as faery_aedat

from anon_jax.events.aedat4 import MAGIC, open_aedat4, read_io_header
from anon_jax.events.container import merge_chunks
from anon_jax.events.container import MissingDependencyError
from tests.event_checks import read_all
from anon_jax.events.stream import EventFormatError

T0 = 1_700_000_000_123_456  # Unix-epoch microseconds, as DV writes them


def make_events(n, width, height, *, seed=0, t0=T0):
    """faery's structured events: sorted times with bursts of equal times, the sensor's corner pixels."""
    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype=faery.EVENTS_DTYPE)
    steps = rng.integers(0, 3, n)
    steps[:1] = 0
    events["t"] = t0 + np.cumsum(steps)
    events["x"] = rng.integers(0, width, n)
    events["y"] = rng.integers(0, height, n)
    events["on"] = rng.integers(0, 2, n).astype(bool)
    if n >= 2:
        events["x"][:2] = (0, width - 1)
        events["y"][:2] = (0, height - 1)
    return events


def attribute(kind, value):
    return faery_aedat.DescriptionAttribute(kind, value)


def description(streams, compression="LZ4"):
    """The IOHeader XML tree for [(stream id, type identifier, (width, height) or None)], as DV lays it out."""
    nodes = []
    for stream_id, kind, size in streams:
        base = f"/mainloop/Recorder/outInfo/{stream_id}/"
        info = {} if size is None else {"sizeX": attribute("int", size[0]), "sizeY": attribute("int", size[1]),
                                         "source": attribute("string", "test")}
        nodes.append(faery_aedat.DescriptionNode(
            str(stream_id), base,
            {"compression": attribute("string", compression), "originalOutputName": attribute("string", kind.lower()),
             "typeIdentifier": attribute("string", kind)},
            [faery_aedat.DescriptionNode("info", base + "info/", info, [])]))
    return [faery_aedat.DescriptionNode("outInfo", "/mainloop/Recorder/outInfo/", {}, nodes)]


def write_packets(path, streams, packets, compression=faery_aedat.LZ4_DEFAULT):
    """An AEDAT 4 file with one packet per (stream id, events) entry, written by faery's encoder."""
    name = "NONE" if compression is None else compression[0].upper()
    with faery_aedat.Encoder(path, description(streams, name), compression) as encoder:
        for stream_id, events in packets:
            encoder.write(stream_id, events)
    return path


def packet_layout(path, count):
    """[(byte offset, stream id, size)] of the first `count` packets, walked from the format notes."""
    data = path.read_bytes()
    (length,) = struct.unpack_from("<I", data, len(MAGIC))
    position, layout = len(MAGIC) + 4 + length, []
    for _ in range(count):
        stream_id, size = struct.unpack_from("<ii", data, position)
        layout.append((position, stream_id, size))
        position += 8 + size
    return layout, position



def assert_same(columns, events):
    np.testing.assert_array_equal(columns["t"], events["t"].astype(np.int64))
    np.testing.assert_array_equal(columns["x"], events["x"])
    np.testing.assert_array_equal(columns["y"], events["y"])
    np.testing.assert_array_equal(columns["p"], events["on"].astype(np.uint8))


@pytest.mark.parametrize("compression", [faery_aedat.LZ4_DEFAULT, faery_aedat.ZSTD_DEFAULT, None])
def test_faery_1280x720_file_reads_back_exactly(tmp_path, compression):
    events = make_events(20_000, 1280, 720)
    path = tmp_path / "rec.aedat4"
    faery.events_stream_from_array(events, (1280, 720)).to_file(path, zero_t0=False, compression=compression)
    opened = open_aedat4(path)
    assert (opened.format, opened.sensor_size, opened.time_unit) == ("aedat4", (1280, 720), "us")
    assert opened.details["streams"] == {0: "events"} and opened.details["stream_id"] == 0
    assert opened.details["compression"] == ("none" if compression is None else compression[0])
    assert opened.details["file_data_table"] is True
    columns = read_all(opened)
    assert_same(columns, events)
    assert columns["t"][0] == T0 and columns["x"].max() == 1279 and columns["y"].max() == 719
    # The same file through the other arguments that must be accepted.
    assert open_aedat4(str(path), sensor_size=(1280, 720), time_unit="us").sensor_size == (1280, 720)


def test_chunks_equal_the_whole_file_for_any_max_events(tmp_path):
    events = make_events(2_500, 346, 260, seed=1)
    cuts = [0, 1, 1, 400, 401, 1_700, 2_500]  # an empty packet, a one-event packet, uneven sizes
    packets = [(0, events[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    opened = open_aedat4(write_packets(tmp_path / "p.aedat4", [(0, "EVTS", (346, 260))], packets))
    assert opened.sensor_size == (346, 260)
    for max_events in (1, 7, 400, 999, 2_500, 10_000):
        chunks = list(opened.chunks(max_events))
        sizes = [len(chunk["t"]) for chunk in chunks]
        assert sizes[:-1] == [max_events] * (len(sizes) - 1) and 0 < sizes[-1] <= max_events
        assert sum(sizes) == 2_500
        assert_same({name: np.concatenate([chunk[name] for chunk in chunks]) for name in "txyp"}, events)
    # Every call starts again from the first event.
    first = next(opened.chunks(5))
    np.testing.assert_array_equal(next(opened.chunks(5))["t"], first["t"])


def test_merge_chunks_regroups_parts():
    parts = [{"t": np.arange(a, b)} for a, b in ((0, 3), (3, 3), (3, 4), (4, 11))]
    assert [chunk["t"].tolist() for chunk in merge_chunks(parts, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert list(merge_chunks([{"t": np.arange(0)}], 4)) == []


def test_empty_event_stream_gives_no_chunks(tmp_path):
    path = write_packets(tmp_path / "e.aedat4", [(0, "EVTS", (64, 48))], [(0, make_events(0, 64, 48))])
    opened = open_aedat4(path)
    assert opened.sensor_size == (64, 48) and list(opened.chunks(10)) == []


def test_stream_selection(tmp_path):
    a, b = make_events(30, 640, 480, seed=2), make_events(20, 32, 16, seed=3)
    streams = [(1, "IMUS", None), (2, "EVTS", (640, 480)), (5, "EVTS", (32, 16))]
    packets = [(2, a[:10]), (5, b[:12]), (2, a[10:]), (5, b[12:])]
    path = write_packets(tmp_path / "s.aedat4", streams, packets)
    first = open_aedat4(path)
    assert first.details["stream_id"] == 2 and first.sensor_size == (640, 480)
    assert first.details["streams"] == {1: "imus", 2: "events", 5: "events"}
    assert_same(read_all(first, 7), a)
    second = open_aedat4(path, stream_id=5)
    assert second.sensor_size == (32, 16)
    assert_same(read_all(second, 7), b)
    for bad in (1, 3):
        with pytest.raises(EventFormatError, match=r"stream_id=\d is not an event stream.*\[2, 5\].*1 \(imus\)"):
            open_aedat4(path, stream_id=bad)


def test_file_without_event_stream(tmp_path):
    path = write_packets(tmp_path / "imu.aedat4", [(0, "IMUS", None)], [])
    with pytest.raises(EventFormatError, match=r"no event stream; its streams are: 0 \(imus\)"):
        open_aedat4(path)


def test_sensor_size_and_time_unit_arguments(tmp_path):
    path = write_packets(tmp_path / "a.aedat4", [(0, "EVTS", (64, 48))], [(0, make_events(5, 64, 48))])
    with pytest.raises(EventFormatError, match=r"states the sensor size \(64, 48\).*sensor_size is \(48, 64\)"):
        open_aedat4(path, sensor_size=(48, 64))
    with pytest.raises(EventFormatError, match="sensor_size"):
        open_aedat4(path, sensor_size=(64,))
    with pytest.raises(EventFormatError, match="time_unit 'ms' does not apply.*microseconds"):
        open_aedat4(path, time_unit="ms")
    with pytest.raises(EventFormatError, match="max_events must be a positive integer"):
        open_aedat4(path).chunks(0)


def test_wrong_magic(tmp_path):
    path = tmp_path / "x.aedat4"
    path.write_bytes(b"% evt 3.0\r\n" + bytes(100))
    with pytest.raises(EventFormatError, match=r"not an AEDAT 4 file.*expected the magic line"):
        open_aedat4(path)
    path.write_bytes(b"#!AER-DAT4.0\n" + bytes(100))  # right version, wrong line ending
    with pytest.raises(EventFormatError, match="not an AEDAT 4 file"):
        open_aedat4(path)
    path.write_bytes(MAGIC[:10])
    with pytest.raises(EventFormatError, match="truncated AEDAT 4 file: it ends inside the magic line"):
        open_aedat4(path)


@pytest.mark.parametrize("version", ["2.0", "3.1"])
def test_legacy_aedat_is_refused_with_a_conversion_hint(tmp_path, version):
    path = tmp_path / "old.aedat"
    path.write_bytes(f"#!AER-DAT{version}\r\n# This is a raw AE data file\r\n#!END-HEADER\r\n".encode() + bytes(64))
    with pytest.raises(EventFormatError, match=rf"AEDAT {version} file; only AEDAT 4.0 is supported.*DV"):
        open_aedat4(path)


def test_io_header_is_read_independently(tmp_path):
    events = make_events(50, 64, 48)
    path = write_packets(tmp_path / "h.aedat4", [(0, "EVTS", (64, 48))], [(0, events[:20]), (0, events[20:])],
                         compression=faery_aedat.ZSTD_DEFAULT)
    _, end_of_packets = packet_layout(path, 2)
    # faery writes the file data table right after the last packet.
    assert read_io_header(str(path)) == ("zstd", end_of_packets)


def cut_table_pointer(path, packets):
    """The same file as one without a file data table: the IOHeader's position set to -1, the table removed."""
    data = bytearray(path.read_bytes())
    _, end_of_packets = packet_layout(path, packets)
    (length,) = struct.unpack_from("<I", data, len(MAGIC))
    header = slice(len(MAGIC) + 4, len(MAGIC) + 4 + length)
    assert bytes(data[header]).count(struct.pack("<q", end_of_packets)) == 1
    at = header.start + bytes(data[header]).index(struct.pack("<q", end_of_packets))
    data[at:at + 8] = struct.pack("<q", -1)
    path.write_bytes(bytes(data[:end_of_packets]))


def test_truncated_files_raise(tmp_path):
    events = make_events(300, 64, 48, seed=4)
    path = write_packets(tmp_path / "full.aedat4", [(0, "EVTS", (64, 48))],
                         [(0, events[:100]), (0, events[100:200]), (0, events[200:])])
    data = path.read_bytes()
    layout, end_of_packets = packet_layout(path, 3)
    cut = tmp_path / "cut.aedat4"
    # Inside the IOHeader.
    for size in (len(MAGIC) + 2, len(MAGIC) + 30):
        cut.write_bytes(data[:size])
        with pytest.raises(EventFormatError, match="truncated AEDAT 4 file"):
            open_aedat4(cut)
    # On each packet boundary and inside each packet: the table position is beyond the end of the file.
    for offset, _, size in layout:
        for end in (offset, offset + 4, offset + 8 + size // 2):
            cut.write_bytes(data[:end])
            with pytest.raises(EventFormatError, match=rf"table at byte {end_of_packets}, but the file has only {end}"):
                open_aedat4(cut)
    # Inside the table itself: the events are all there (the table is only an index).
    cut.write_bytes(data[:end_of_packets + 3])
    assert_same(read_all(open_aedat4(cut)), events)


def test_truncated_file_without_table(tmp_path):
    """Without a table a cut inside a packet raises; a cut on a packet boundary is undetectable (documented)."""
    events = make_events(300, 64, 48, seed=5)
    path = write_packets(tmp_path / "t.aedat4", [(0, "EVTS", (64, 48))],
                         [(0, events[:100]), (0, events[100:200]), (0, events[200:])])
    cut_table_pointer(path, 3)
    opened = open_aedat4(path)
    assert opened.details["file_data_table"] is False
    assert_same(read_all(opened), events)
    data = path.read_bytes()
    layout, _ = packet_layout(path, 3)
    offset, _, size = layout[2]
    cut = tmp_path / "cut.aedat4"
    for end in (offset + 6, offset + 8 + size - 1):
        cut.write_bytes(data[:end])
        with pytest.raises(EventFormatError, match=r"packet 2 \(0-based, counting all streams\) cannot be read"):
            read_all(open_aedat4(cut), 50)
    cut.write_bytes(data[:offset])
    assert_same(read_all(open_aedat4(cut)), events[:200])


def test_corrupt_packet_raises_even_where_aedat_panics(tmp_path):
    events = make_events(40, 64, 48, seed=6)
    path = write_packets(tmp_path / "c.aedat4", [(0, "EVTS", (64, 48))], [(0, events[:20]), (0, events[20:])])
    data = path.read_bytes()
    [(offset, _, _)], _ = packet_layout(path, 1)
    corrupt = tmp_path / "corrupt.aedat4"
    for byte in range(offset + 8, offset + 8 + 16):  # the LZ4 frame header and first block bytes
        changed = bytearray(data)
        changed[byte] ^= 0xFF
        corrupt.write_bytes(bytes(changed))
        with pytest.raises(EventFormatError, match=r"packet 0 \(0-based, counting all streams\) cannot be read"):
            read_all(open_aedat4(corrupt))


def patched(path, replacements, *, xml=False):
    """The file with each unique value replaced, in the packets (event structs) or in the IOHeader XML."""
    data = path.read_bytes()
    (length,) = struct.unpack_from("<I", data, len(MAGIC))
    start, table = len(MAGIC) + 4 + length, read_io_header(str(path))[1]
    head, body, tail = data[:start], data[start:table], data[table:]  # the table repeats packet start times
    for old, new in replacements:
        if xml:
            assert head.count(old) == 1 and len(old) == len(new)
            head = head.replace(old, new)
        else:
            assert body.count(old) == 1, old
            body = body.replace(old, new)
    path.write_bytes(head + body + tail)
    return path


def uncompressed_file(tmp_path, events, splits, size=(64, 48)):
    packets = [(0, events[a:b]) for a, b in zip([0, *splits], [*splits, len(events)])]
    return write_packets(tmp_path / "u.aedat4", [(0, "EVTS", size)], packets, compression=None)


def test_time_going_back_between_packets_names_the_packet(tmp_path):
    events = make_events(30, 64, 48, seed=7)
    events["t"] = T0 + 10 * np.arange(30)  # unique times, so the patched one is found once
    path = uncompressed_file(tmp_path, events, [10, 20])
    # Packet 2 starts 5 us before packet 1 ends.
    patched(path, [(struct.pack("<q", T0 + 200), struct.pack("<q", T0 + 185))])
    with pytest.raises(EventFormatError,
                       match=r"packet 2 \(stream 0\): event 20 \(0-based\): t=1700000000123641 us is earlier"):
        read_all(open_aedat4(path), 4)


def test_time_going_back_inside_a_packet(tmp_path):
    events = make_events(30, 64, 48, seed=8)
    events["t"] = T0 + 10 * np.arange(30)
    path = uncompressed_file(tmp_path, events, [10])
    patched(path, [(struct.pack("<q", T0 + 150), struct.pack("<q", T0 + 135))])
    with pytest.raises(EventFormatError, match=r"packet 1 \(stream 0\): event 15 \(0-based\): t=.* is earlier"):
        read_all(open_aedat4(path))


def test_negative_time_is_an_error(tmp_path):
    events = make_events(10, 64, 48, seed=9)
    events["t"] = T0 + 10 * np.arange(10)
    path = uncompressed_file(tmp_path, events, [])
    patched(path, [(struct.pack("<q", T0), struct.pack("<q", -5))])
    with pytest.raises(EventFormatError, match=r"packet 0 \(stream 0\): event 0 \(0-based\): negative time -5 us"):
        read_all(open_aedat4(path))


def test_coordinates_outside_the_stated_size(tmp_path):
    events = make_events(40, 64, 48, seed=10)
    events["x"][:] = np.arange(40)
    events["y"][:] = 3
    path = uncompressed_file(tmp_path, events, [25], size=(40, 48))
    # The description now claims 30 pixels across: x = 30 (event 30, in packet 1) lies outside.
    patched(path, [(b'<attr key="sizeX" type="int">40</attr>', b'<attr key="sizeX" type="int">30</attr>')], xml=True)
    opened = open_aedat4(path)
    assert opened.sensor_size == (30, 48)
    with pytest.raises(EventFormatError, match=r"packet 1 \(stream 0\): event 30 \(0-based\): x=30 is outside the "
                                               r"sensor width 30"):
        read_all(opened, 8)


def test_negative_coordinate_in_the_file_is_outside_the_sensor(tmp_path):
    events = make_events(12, 64, 48, seed=11)
    events["t"] = T0 + 10 * np.arange(12)
    events["x"][:], events["y"][:] = 7, 9
    events["y"][4] = 21
    path = uncompressed_file(tmp_path, events, [])
    # The Event struct is int64 t, int16 x, int16 y: y = 21 becomes -1, which aedat hands over as 65535.
    event = struct.pack("<qhh", T0 + 40, 7, 21)
    patched(path, [(event, struct.pack("<qhh", T0 + 40, 7, -1))])
    with pytest.raises(EventFormatError, match=r"event 4 \(0-based\): y=65535 is outside the sensor height 48"):
        read_all(open_aedat4(path))


def test_missing_aedat_package_names_the_extra(tmp_path, monkeypatch):
    path = write_packets(tmp_path / "m.aedat4", [(0, "EVTS", (8, 8))], [(0, make_events(3, 8, 8))])
    monkeypatch.setitem(sys.modules, "aedat", None)
    with pytest.raises(MissingDependencyError, match=r"reading AEDAT 4 files.*anon_jax\[formats\]"):
        open_aedat4(path)
