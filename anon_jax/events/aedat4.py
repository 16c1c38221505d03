"""Reader of iniVation AEDAT 4.0 files (DV software, DAVIS / DVXplorer cameras) over the `aedat` package.

Layout: the magic line `#!AER-DAT4.0\\r\\n`, an IOHeader flatbuffer (compression, the byte position of the
file data table or -1, an XML description with each stream's `typeIdentifier` and `sizeX`/`sizeY`),
then packets (int32 stream id, int32 size, compressed payload), then the file data table.

What this reader does with the format's freedoms:

- Times are the file's int64 microseconds, kept as they are (DV writes Unix-epoch times, about 1.7e15).
  A negative time is an error.
- One event stream is read: the event stream with the smallest id, or `stream_id=`. The sensor size is
  that stream's `sizeX` x `sizeY`.
- `on` becomes p (1 = ON). Coordinates outside the stream's size, times going backwards (within a
  packet or from one packet to the next) and undecodable packets raise EventFormatError naming the
  packet (0-based, counting the packets of all streams) and the event.
- Truncation: when the IOHeader locates a file data table, `aedat` reads packets up to exactly that byte
  and raises if the file ends earlier, even on a packet boundary; this reader also checks at open that
  the file reaches the table. A file without a table (position -1, e.g. a recording that was not closed)
  cut on a packet boundary cannot be told from a complete one: its events end at the last whole packet
  (`details["file_data_table"]` is False for such files). A cut inside a packet always raises.

AEDAT 2.0 and 3.1 (jAER, cAER) are not read: the error says to convert them to AEDAT 4 with DV.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import numpy as np

from anon_jax.events.container import (
    EventFile,
    check_max_events,
    find_problem,
    import_optional,
    merge_chunks,
    parse_sensor_size,
    raise_problem,
)
from anon_jax.events.stream import EventFormatError

MAGIC = b"#!AER-DAT4.0\r\n"
_COMPRESSIONS = {0: "none", 1: "lz4", 2: "lz4-high", 3: "zstd", 4: "zstd-high"}


def _check_magic(path: str) -> None:
    with open(path, "rb") as file:
        head = file.read(len(MAGIC))
    if head == MAGIC:
        return
    if head and MAGIC.startswith(head):
        raise EventFormatError(f"{path}: truncated AEDAT 4 file: it ends inside the magic line ({len(head)} bytes).")
    if head.startswith(b"#!AER-DAT"):
        version = head[len(b"#!AER-DAT"):].split(b"\r")[0].split(b"\n")[0].decode("ascii", "replace")
        if version != "4.0":
            raise EventFormatError(
                f"{path}: AEDAT {version} file; only AEDAT 4.0 is supported. Convert the recording to AEDAT 4 "
                "with the converter of iniVation's DV software (dv-runtime converts legacy AEDAT 2.0/3.1 files).")
    raise EventFormatError(
        f"{path}: not an AEDAT 4 file: it starts with {head!r}, expected the magic line {MAGIC!r}.")


def read_io_header(path: str) -> tuple[str, int]:
    """(compression, file data table position or -1) from the IOHeader flatbuffer after the magic line.

    Raises EventFormatError when the header is cut short or its offsets point outside it.
    """
    with open(path, "rb") as file:
        file.seek(len(MAGIC))
        prefix = file.read(4)
        if len(prefix) < 4:
            raise EventFormatError(f"{path}: truncated AEDAT 4 file: it ends inside the IOHeader length.")
        (length,) = struct.unpack("<I", prefix)
        header = file.read(length)
    if len(header) < length:
        raise EventFormatError(
            f"{path}: truncated AEDAT 4 file: the IOHeader needs {length} bytes after byte {len(MAGIC) + 4}, the "
            f"file has {len(header)}.")

    def field(fmt: str, at: int) -> int:
        if at < 0 or at + struct.calcsize(fmt) > length:
            raise EventFormatError(f"{path}: corrupt AEDAT 4 IOHeader: an offset points outside it (byte {at}).")
        return struct.unpack_from(fmt, header, at)[0]

    # Flatbuffer: the root table's offset, the table's signed offset back to its vtable, whose entries
    # (after two uint16 sizes) give each field's offset in the table; 0 or a short vtable = default.
    table = field("<I", 0)
    vtable = table - field("<i", table)
    vtable_size = field("<H", vtable)

    def slot(index: int) -> int:
        at = 4 + 2 * index
        return field("<H", vtable + at) if at + 2 <= vtable_size else 0

    compression = field("<i", table + slot(0)) if slot(0) else 0
    position = field("<q", table + slot(1)) if slot(1) else -1
    if compression not in _COMPRESSIONS:
        raise EventFormatError(f"{path}: unknown AEDAT 4 compression code {compression} in the IOHeader.")
    return _COMPRESSIONS[compression], position


def _decoder(aedat, path: str):
    try:
        return aedat.Decoder(path)
    except Exception as error:
        raise EventFormatError(f"{path}: cannot read the AEDAT 4 header or stream description: {error}.") from None


def _select_stream(path: str, streams: dict, stream_id) -> int:
    events = sorted(key for key, stream in streams.items() if stream.get("type") == "events")
    listing = ", ".join(f"{key} ({streams[key].get('type')})" for key in sorted(streams))
    if stream_id is None:
        if not events:
            raise EventFormatError(f"{path}: the file has no event stream; its streams are: {listing}.")
        return events[0]
    if stream_id not in events:
        raise EventFormatError(
            f"{path}: stream_id={stream_id!r} is not an event stream of this file; event streams: {events}; "
            f"all streams: {listing}.")
    return int(stream_id)


def _next_packet(decoder, path: str, index: int):
    """The next packet from `aedat`, None at the end; its errors (and Rust panics) as EventFormatError."""
    try:
        return next(decoder)
    except StopIteration:
        return None
    except BaseException as error:
        # pyo3's PanicException derives from BaseException; let real interrupts through.
        if not isinstance(error, Exception) and type(error).__name__ != "PanicException":
            raise
        raise EventFormatError(
            f"{path}: packet {index} (0-based, counting all streams) cannot be read: {error}. The file is "
            "truncated or corrupt.") from None


def _stream_events(aedat, path: str, stream_id: int, width: int, height: int) -> Iterator[dict[str, np.ndarray]]:
    """The stream's packets as canonical columns, each checked against the sensor and the previous packet."""
    decoder = _decoder(aedat, path)
    index, first_event, previous_t = 0, 0, None
    while (packet := _next_packet(decoder, path, index)) is not None:
        if packet["stream_id"] == stream_id:
            events = packet["events"]
            # The file stores int64; aedat hands it over as uint64, so negative times wrap: undo that.
            t = np.ascontiguousarray(events["t"]).view(np.int64)
            x = np.ascontiguousarray(events["x"], dtype=np.uint16)
            y = np.ascontiguousarray(events["y"], dtype=np.uint16)
            p = events["on"].astype(np.uint8)
            where = f"{path}: packet {index} (stream {stream_id})"
            negative = np.flatnonzero(t < 0)
            if negative.size:
                raise EventFormatError(
                    f"{where}: event {first_event + int(negative[0])} (0-based): negative time "
                    f"{t[negative[0]]} us; the file is corrupt.")
            problem = find_problem(t, x, y, p, width, height, previous_t)
            if problem is not None:
                raise_problem(problem, where, first_event)
            if t.size:
                previous_t = int(t[-1])
                first_event += t.size
            yield {"t": t, "x": x, "y": y, "p": p}
        index += 1


def open_aedat4(path: str | os.PathLike, *, sensor_size=None, time_unit=None,
                stream_id: int | None = None) -> EventFile:
    """Open an AEDAT 4.0 file; its packets stream through `aedat`, regrouped into chunks of max_events.

    sensor_size: None or (width, height), which must equal the stream's sizeX/sizeY. time_unit: None or
    "us" (AEDAT 4 fixes microseconds). stream_id: the event stream to read (default: the lowest-numbered
    event stream). details: stream_id, streams ({id: type}), compression, file_data_table.
    """
    path = os.fspath(path)
    if time_unit not in (None, "us"):
        raise EventFormatError(
            f"{path}: time_unit {time_unit!r} does not apply: AEDAT 4 times are microseconds, fixed by the format "
            "(pass None or 'us').")
    _check_magic(path)
    compression, table_position = read_io_header(path)
    file_size = os.path.getsize(path)
    if table_position >= 0 and file_size < table_position:
        raise EventFormatError(
            f"{path}: truncated AEDAT 4 file: the IOHeader places the file data table at byte {table_position}, "
            f"but the file has only {file_size} bytes (packets are missing).")
    aedat = import_optional("aedat", "reading AEDAT 4 files")
    streams = _decoder(aedat, path).id_to_stream()
    chosen = _select_stream(path, streams, stream_id)
    stated = parse_sensor_size((streams[chosen].get("width"), streams[chosen].get("height")),
                               f"{path}: stream {chosen} sizeX/sizeY")
    if sensor_size is not None:
        given = parse_sensor_size(sensor_size, f"{path}: sensor_size")
        if given != stated:
            raise EventFormatError(
                f"{path}: stream {chosen} states the sensor size {stated} (width, height) but sensor_size is {given}.")
    width, height = stated

    def chunks(max_events: int) -> Iterator[dict[str, np.ndarray]]:
        return merge_chunks(_stream_events(aedat, path, chosen, width, height), check_max_events(max_events, path))

    details = {
        "stream_id": chosen,
        "streams": {int(key): streams[key].get("type") for key in sorted(streams)},
        "compression": compression,
        "file_data_table": table_position >= 0,
    }
    return EventFile(path=path, format="aedat4", sensor_size=stated, chunks=chunks, time_unit="us", details=details)
