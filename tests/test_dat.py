"""Prophesee DAT reader: a spec-following encoder, faery's writer and decoder as references, the uint32 time wrap,
chunking and the errors for corrupt files."""

import re

import faery
import numpy as np
import pytest

from tests.event_checks import assert_events, read_all
from anon_jax.events.dat import TIME_LOOP_US, open_dat, read_dat_header
from anon_jax.events.stream import EventFormatError

WIDTH, HEIGHT = 304, 240  # Gen1 automotive


# --- a small spec-following encoder (test only) -------------------------------------------------

def encode_dat(t, x, y, p, *, width=WIDTH, height=HEIGHT, version=2, header=True, event_type=0x0C,
               event_size=8, extra_lines=(), description=True):
    """Events -> DAT bytes: `% key value` lines, type/size bytes, then (uint32 t, uint32 word) records.

    t is written modulo 2^32 as a sensor would. header=False writes records only (no type/size bytes).
    """
    t = np.asarray(t, np.int64)
    x, y, p = (np.asarray(a, np.uint32) for a in (x, y, p))
    if version == 2:
        word = x | (y << 14) | (p << 28)
    else:
        word = x | (y << 9) | (p << 17)
    records = np.empty(t.size, [("t", "<u4"), ("w", "<u4")])
    records["t"] = (t % (1 << 32)).astype(np.uint32)
    records["w"] = word
    head = b""
    if header:
        lines = ["Data file containing CD events."] if description else []
        lines += ["Date 2020-01-01 12:00:00", f"Version {version}"]
        if width is not None:
            lines.append(f"Width {width}")
        if height is not None:
            lines.append(f"Height {height}")
        lines += list(extra_lines)
        head = "".join(f"% {line}\n" for line in lines).encode() + bytes([event_type, event_size])
    return head + records.tobytes()


def random_events(n, rng, width=WIDTH, height=HEIGHT, t_start=0, max_step=50):
    t = t_start + np.cumsum(rng.integers(0, max_step, n))
    return (t.astype(np.int64), rng.integers(0, width, n).astype(np.uint16),
            rng.integers(0, height, n).astype(np.uint16), rng.integers(0, 2, n).astype(np.uint8))




def write(tmp_path, data, name="events.dat"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def faery_array(t, x, y, p):
    events = np.zeros(len(t), faery.EVENTS_DTYPE)
    events["t"], events["x"], events["y"], events["on"] = t, x, y, p.astype(bool)
    return events


def faery_decode(path):
    packets = list(faery.events_stream_from_file(path))
    return np.concatenate(packets)


# --- hand-checked bytes -----------------------------------------------------------------------

def test_hand_encoded_records(tmp_path):
    # t=10: x=3, y=5, ON -> word 3 | 5 << 14 | 1 << 28 = 0x10014003; t=2^32-1: x=303, y=239, OFF.
    data = (b"% Version 2\n% Width 304\n% Height 240\n\x0c\x08"
            + (10).to_bytes(4, "little") + (0x10014003).to_bytes(4, "little")
            + (2 ** 32 - 1).to_bytes(4, "little") + (303 | 239 << 14).to_bytes(4, "little"))
    event_file = open_dat(write(tmp_path, data))
    assert event_file.format == "dat"
    assert event_file.sensor_size == (304, 240)
    assert event_file.time_unit == "us"
    assert event_file.details["version"] == 2 and event_file.details["event_type"] == "cd"
    assert event_file.details["payload_offset"] == 39 and event_file.details["num_events"] == 2
    assert_events(read_all(event_file), [10, 2 ** 32 - 1], [3, 303], [5, 239], [1, 0])


def test_header_fields(tmp_path):
    t, x, y, p = random_events(3, np.random.default_rng(0))
    extra = ["Custom value with spaces"]
    path = write(tmp_path, encode_dat(t, x, y, p, extra_lines=extra))
    header = read_dat_header(path)
    assert (header.width, header.height, header.version) == (WIDTH, HEIGHT, 2)
    assert header.event_type == 0x0C and header.event_size == 8 and header.has_header
    assert header.description == "Data file containing CD events."
    assert header.lines["Date"] == "2020-01-01 12:00:00"
    assert header.lines["Custom"] == "value with spaces"
    assert header.payload_offset == len(encode_dat([], [], [], [], extra_lines=extra))


# --- round trips through the spec encoder --------------------------------------------------------

@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("description", [True, False])
def test_round_trip_with_header(tmp_path, version, description):
    rng = np.random.default_rng(version)
    t, x, y, p = random_events(2000, rng)
    event_file = open_dat(write(tmp_path, encode_dat(t, x, y, p, version=version, description=description)))
    assert event_file.details["version"] == version
    assert event_file.sensor_size == (WIDTH, HEIGHT)
    assert_events(read_all(event_file), t, x, y, p)


def test_event2d_type_accepted(tmp_path):
    t, x, y, p = random_events(50, np.random.default_rng(1))
    event_file = open_dat(write(tmp_path, encode_dat(t, x, y, p, event_type=0x00)))
    assert event_file.details["event_type"] == "event2d"
    assert_events(read_all(event_file), t, x, y, p)


def test_headerless_file(tmp_path):
    t, x, y, p = random_events(300, np.random.default_rng(2))
    path = write(tmp_path, encode_dat(t, x, y, p, header=False))
    header = read_dat_header(path)
    assert not header.has_header and header.payload_offset == 0 and header.version == 2
    event_file = open_dat(path)
    assert event_file.sensor_size is None  # nothing stated and nothing given: coordinates unchecked
    assert_events(read_all(event_file), t, x, y, p)
    event_file = open_dat(path, sensor_size=(WIDTH, HEIGHT))
    assert event_file.sensor_size == (WIDTH, HEIGHT)
    assert_events(read_all(event_file), t, x, y, p)
    with pytest.raises(EventFormatError, match=r"x=\d+ is outside the sensor width 10"):
        read_all(open_dat(path, sensor_size=(10, HEIGHT)))


def test_headerless_version_1_override(tmp_path):
    t, x, y, p = random_events(100, np.random.default_rng(3), width=512, height=256)
    path = write(tmp_path, encode_dat(t, x, y, p, version=1, header=False))
    assert_events(read_all(open_dat(path, version=1)), t, x, y, p)


def test_header_without_size_uses_argument(tmp_path):
    t, x, y, p = random_events(20, np.random.default_rng(4))
    path = write(tmp_path, encode_dat(t, x, y, p, width=None, height=None))
    assert open_dat(path).sensor_size is None
    assert open_dat(path, sensor_size=(WIDTH, HEIGHT)).sensor_size == (WIDTH, HEIGHT)
    half = write(tmp_path, encode_dat(t, x, y, p, height=None), "half.dat")
    with pytest.raises(EventFormatError, match="only Width 304; pass sensor_size"):
        open_dat(half)
    assert open_dat(half, sensor_size=(WIDTH, 300)).sensor_size == (WIDTH, 300)
    with pytest.raises(EventFormatError, match="states Width 304 but sensor_size is"):
        open_dat(half, sensor_size=(640, 480))


def test_empty_payload(tmp_path):
    event_file = open_dat(write(tmp_path, encode_dat([], [], [], [])))
    assert event_file.details["num_events"] == 0
    assert list(event_file.chunks(10)) == []


def test_faery_t0_line_is_added(tmp_path):
    # faery's zero_t0=True convention: a `% t0` header line and zero-based times; faery adds t0 back.
    t, x, y, p = random_events(40, np.random.default_rng(5))
    path = write(tmp_path, encode_dat(t, x, y, p, extra_lines=["t0 1000000"]))
    got = read_all(open_dat(path))
    assert_events(got, t + 1_000_000, x, y, p)
    np.testing.assert_array_equal(faery_decode(path)["t"], got["t"])


# --- faery's writer and decoder as references --------------------------------------------------------

@pytest.mark.parametrize("version", ["dat1", "dat2"])
def test_faery_written_file(tmp_path, version):
    t, x, y, p = random_events(3000, np.random.default_rng(6), t_start=123_456)
    path = tmp_path / "faery.dat"
    faery.events_stream_from_array(faery_array(t, x, y, p), dimensions=(WIDTH, HEIGHT)).to_file(
        path, version=version, zero_t0=False)
    event_file = open_dat(path)
    assert event_file.sensor_size == (WIDTH, HEIGHT)
    assert event_file.details["version"] == int(version[-1])
    assert_events(read_all(event_file, 777), t, x, y, p)


def test_faery_written_wrap_matches_faery_decoder(tmp_path):
    # Steps below 2^31 us so a wrap is detectable; the recording spans about 2.5 loops of the uint32 clock.
    t = np.array([0, 5, 2 ** 31, 2 ** 32 - 10, 2 ** 32 - 10, 2 ** 32, 2 ** 32 + 7, 2 ** 32 + 2 ** 31 + 10,
                  2 ** 33 + 3, 2 ** 33 + 2 ** 31 - 1], np.int64)
    n = t.size
    x, y, p = np.arange(n, dtype=np.uint16), np.arange(n, dtype=np.uint16)[::-1], np.arange(n, dtype=np.uint8) % 2
    path = tmp_path / "wrap.dat"
    faery.events_stream_from_array(faery_array(t, x, y, p), dimensions=(WIDTH, HEIGHT)).to_file(
        path, zero_t0=False)
    got = read_all(open_dat(path), 3)
    assert_events(got, t, x, y, p)
    reference = faery_decode(path)
    np.testing.assert_array_equal(reference["t"].astype(np.int64), got["t"])
    np.testing.assert_array_equal(reference["on"].astype(np.uint8), got["p"])


def test_spec_encoder_agrees_with_faery_decoder(tmp_path):
    t, x, y, p = random_events(1500, np.random.default_rng(7))
    path = write(tmp_path, encode_dat(t, x, y, p))
    reference = faery_decode(path)
    np.testing.assert_array_equal(reference["x"], x)
    np.testing.assert_array_equal(reference["y"], y)
    np.testing.assert_array_equal(reference["t"].astype(np.int64), t)
    assert_events(read_all(open_dat(path)), t, x, y, p)


# --- the uint32 wrap and chunking ------------------------------------------------------------------------

def test_wrap_across_chunk_boundary(tmp_path):
    assert TIME_LOOP_US == 2 ** 32
    # Steps stay under 2^31 us, so each drop of the raw uint32 time is a detectable wrap.
    t = np.array([2 ** 32 - 300, 2 ** 32 - 200, 2 ** 32 - 1, 2 ** 32 + 4, 2 ** 32 + 90, 2 ** 32 + 2 ** 31 + 85,
                  2 * 2 ** 32 + 1], np.int64)
    n = t.size
    x, y, p = np.full(n, 3, np.uint16), np.full(n, 4, np.uint16), np.ones(n, np.uint8)
    path = write(tmp_path, encode_dat(t, x, y, p))
    # Chunks of 3: each wrap (raw 2^32 - 1 -> 4, then 2^31 + 85 -> 1) falls exactly between two chunks.
    chunks = list(open_dat(path).chunks(3))
    assert [len(c["t"]) for c in chunks] == [3, 3, 1]
    np.testing.assert_array_equal(chunks[1]["t"], t[3:6])
    np.testing.assert_array_equal(chunks[2]["t"], t[6:])
    for size in (1, 2, 3, 4, 7, 100):
        np.testing.assert_array_equal(read_all(open_dat(path), size)["t"], t)


def test_chunked_equals_whole_for_random_sizes(tmp_path):
    rng = np.random.default_rng(8)
    t, x, y, p = random_events(5000, rng, t_start=2 ** 32 - 60_000)  # crosses one wrap
    event_file = open_dat(write(tmp_path, encode_dat(t, x, y, p)))
    whole = read_all(event_file)
    assert_events(whole, t, x, y, p)
    for size in rng.integers(1, 6000, 6):
        chunks = list(event_file.chunks(int(size)))
        assert all(len(c["t"]) == size for c in chunks[:-1]) and 1 <= len(chunks[-1]["t"]) <= size
        assert_events(read_all(event_file, int(size)), t, x, y, p)


def test_chunks_restart_and_come_from_a_memmap(tmp_path, monkeypatch):
    t, x, y, p = random_events(100, np.random.default_rng(9))
    event_file = open_dat(write(tmp_path, encode_dat(t, x, y, p)))
    opened = []
    real_memmap = np.memmap

    def spy(*args, **kwargs):
        opened.append(kwargs)
        return real_memmap(*args, **kwargs)

    monkeypatch.setattr(np, "memmap", spy)
    first = next(iter(event_file.chunks(10)))
    again = next(iter(event_file.chunks(10)))
    np.testing.assert_array_equal(first["t"], t[:10])
    np.testing.assert_array_equal(again["t"], t[:10])
    assert [kwargs["mode"] for kwargs in opened] == ["r", "r"]
    assert opened[0]["shape"] == (100,)


# --- errors -------------------------------------------------------------------------------------

def test_truncated_record(tmp_path):
    t, x, y, p = random_events(10, np.random.default_rng(10))
    data = encode_dat(t, x, y, p)
    offset = len(data) - 8
    with pytest.raises(EventFormatError, match=rf"truncated record 9 at byte {offset}: only 5 of 8 bytes"):
        open_dat(write(tmp_path, data[:-3]))


def test_truncated_type_bytes(tmp_path):
    with pytest.raises(EventFormatError, match="inside the 2 event type/size bytes"):
        open_dat(write(tmp_path, b"% Version 2\n% Width 4\n% Height 4\n\x0c"))


def test_x_outside_header_width(tmp_path):
    t, x, y, p = random_events(10, np.random.default_rng(11))
    x[6] = WIDTH  # one past the last column
    data = encode_dat(t, x, y, p)
    offset = len(encode_dat([], [], [], [])) + 6 * 8
    event_file = open_dat(write(tmp_path, data))
    with pytest.raises(EventFormatError, match=rf"record 6 \(byte {offset}\): x=304 is outside the sensor width 304"):
        read_all(event_file, 4)  # the bad record is in the second chunk: the index is global


def test_y_outside_header_height(tmp_path):
    t, x, y, p = random_events(5, np.random.default_rng(12))
    y[0] = HEIGHT + 7
    with pytest.raises(EventFormatError, match=r"record 0 .*y=247 is outside the sensor height 240"):
        read_all(open_dat(write(tmp_path, encode_dat(t, x, y, p))))


def test_bad_polarity(tmp_path):
    t, x, y, p = random_events(5, np.random.default_rng(13))
    p[2] = 3
    with pytest.raises(EventFormatError, match=r"record 2 .*polarity p=3 is not 0 or 1"):
        read_all(open_dat(write(tmp_path, encode_dat(t, x, y, p))))


def test_small_backward_jump_is_an_error(tmp_path):
    t = np.array([100, 200, 150, 300], np.int64)
    x = y = np.zeros(4, np.uint16)
    p = np.zeros(4, np.uint8)
    header_size = len(encode_dat([], [], [], []))
    with pytest.raises(EventFormatError, match=rf"record 2 \(byte {header_size + 16}\): t=150 us is earlier"):
        read_all(open_dat(write(tmp_path, encode_dat(t, x, y, p))))


@pytest.mark.parametrize("event_type, event_size, message", [
    (0x0E, 8, "external-trigger events"),
    (0x05, 8, "unsupported event type 0x05"),
    (0x0C, 16, "unsupported event size 16 bytes"),
])
def test_unsupported_type_or_size(tmp_path, event_type, event_size, message):
    data = encode_dat([1], [1], [1], [1], event_type=event_type, event_size=event_size)
    with pytest.raises(EventFormatError, match=message):
        open_dat(write(tmp_path, data))


def test_bad_header_values(tmp_path):
    with pytest.raises(EventFormatError, match="unsupported DAT version '3'"):
        open_dat(write(tmp_path, b"% Version 3\n\x0c\x08"))
    with pytest.raises(EventFormatError, match="Width must be an integer, got 'abc'"):
        open_dat(write(tmp_path, b"% Width abc\n% Height 3\n\x0c\x08"))


def test_time_unit_is_fixed(tmp_path):
    path = write(tmp_path, encode_dat([1], [1], [1], [1]))
    assert open_dat(path, time_unit="us").time_unit == "us"
    with pytest.raises(EventFormatError, match="DAT times are microseconds"):
        open_dat(path, time_unit="ms")


def test_sensor_size_conflict_and_validation(tmp_path):
    path = write(tmp_path, encode_dat([1], [1], [1], [1]))
    assert open_dat(path, sensor_size=(WIDTH, HEIGHT)).sensor_size == (WIDTH, HEIGHT)
    with pytest.raises(EventFormatError, match=re.escape("sensor size (304, 240) (width, height) but sensor_size "
                                                         "is (240, 304)")):
        open_dat(path, sensor_size=(HEIGHT, WIDTH))
    with pytest.raises(EventFormatError, match="sensor_size must be"):
        open_dat(path, sensor_size=640)


def test_max_events_validated(tmp_path):
    event_file = open_dat(write(tmp_path, encode_dat([1], [1], [1], [1])))
    with pytest.raises(EventFormatError, match="max_events must be a positive integer"):
        event_file.chunks(0)
