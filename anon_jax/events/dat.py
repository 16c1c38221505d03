"""Prophesee DAT files: a memory-mapped, validating reader (no library).

Layout (``shared/reference/event_formats.md`` section 3.5): optional ``% key value`` header lines
(``Data file containing CD events``, ``Version 2``, ``Width``, ``Height``, ...), then one event-type byte
and one event-size byte, then little-endian 8-byte records: ``uint32 t`` in microseconds and a ``uint32``
word holding x, y and p. A file without header lines has no type/size bytes either (the automotive
toolbox reads such files as Event2D records of 8 bytes, version 2).

Choices where the format leaves room:

- ``t`` is a ``uint32`` that wraps every 2^32 us (71.6 min). A decrease of more than 2^31 us between
  consecutive records counts one loop; any smaller decrease is an error (faery clamps such times to the
  running maximum instead, which would hide corrupt data).
- Version 2 words: x = bits 0-13, y = bits 14-27, p = bits 28-31. Version 1 ("dat1", legacy ATIS):
  x = bits 0-8, y = bits 9-16, p = bits 17-20. A header without a ``Version`` line means version 2.
- A ``% t0 N`` line (written by faery with ``zero_t0=True``) is added to every time, as faery does.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from anon_jax.events.container import EventFile, check_max_events, find_problem, header_int, parse_sensor_size
from anon_jax.events.stream import EventFormatError

__all__ = ["DAT_RECORD", "TIME_LOOP_US", "DatHeader", "open_dat", "read_dat_header"]

# One record as stored: little-endian time then the packed x/y/p word.
DAT_RECORD = np.dtype([("t", "<u4"), ("word", "<u4")])
_RECORD_SIZE = DAT_RECORD.itemsize

_EVENT_TYPES = {0x00: "event2d", 0x0C: "cd"}
_EXT_TRIGGER = 0x0E
# (x shift, x mask, y shift, y mask, p shift, p mask) per version.
_BITS = {1: (0, 0x1FF, 9, 0xFF, 17, 0xF), 2: (0, 0x3FFF, 14, 0x3FFF, 28, 0xF)}
TIME_LOOP_US = 1 << 32  # uint32 microseconds wrap after 71.6 min
_LOOP_DROP = 1 << 31  # a decrease larger than this is a counter wrap, not a disorder
_MAX_HEADER_LINE = 1 << 16


@dataclasses.dataclass(frozen=True)
class DatHeader:
    """What a DAT file states about itself.

    width/height: from ``% Width`` / ``% Height`` (None when absent). version: 1 or 2. event_type: the
    type byte (0x00 Event2D, 0x0C CD). has_header: False for header-less files (no type/size bytes).
    t0: the ``% t0`` offset in us (0 when absent). lines: each header key and its value (the last wins);
    description: the ``Data file containing ...`` line, if any. payload_offset: byte of the first record.
    """

    width: int | None
    height: int | None
    version: int
    event_type: int
    event_size: int
    has_header: bool
    t0: int
    lines: dict[str, str]
    description: str | None
    payload_offset: int


def read_dat_header(path: str | os.PathLike, *, version: int | None = None) -> DatHeader:
    """Parse the header and the type/size bytes of a DAT file; `version` overrides the header's."""
    source = os.fspath(path)
    lines: dict[str, str] = {}
    width = height = None
    header_version = None
    t0 = 0
    description = None
    line_no = 0
    with open(source, "rb") as f:
        while True:
            start = f.tell()
            line = f.readline(_MAX_HEADER_LINE)
            # Header lines start with "% " (the toolbox's test); anything else is the type byte or a record.
            if not line.startswith(b"% "):
                f.seek(start)
                break
            line_no += 1
            if not line.endswith(b"\n"):
                raise EventFormatError(
                    f"{source}: header line {line_no} (byte {start}) is not terminated by a newline within "
                    f"{_MAX_HEADER_LINE} bytes; the file is truncated or not a DAT file.")
            text = line.decode("latin-1").rstrip("\r\n")
            where = f"header line {line_no} {text!r}"
            body = text[2:].strip()
            key, _, value = body.partition(" ")
            value = value.strip()
            if not key:
                continue
            lines[key] = value
            if key == "Width":
                width = header_int(value, source=source, where=where, field="Width", minimum=1)
            elif key == "Height":
                height = header_int(value, source=source, where=where, field="Height", minimum=1)
            elif key == "Version":
                if value not in ("1", "2", "2.0"):
                    raise EventFormatError(
                        f"{source}: {where}: unsupported DAT version {value!r} (expected 1 or 2).")
                header_version = 1 if value == "1" else 2
            elif key in ("t0", "T0"):
                t0 = header_int(value, source=source, where=where, field="t0", minimum=0)
            elif key == "Data":
                description = body
        has_header = line_no > 0
        if has_header:
            type_size = f.read(2)
            if len(type_size) < 2:
                raise EventFormatError(
                    f"{source}: the file ends at byte {f.tell()}, inside the 2 event type/size bytes after the "
                    "header; it is truncated.")
            event_type, event_size = type_size[0], type_size[1]
        else:
            event_type, event_size = 0x00, _RECORD_SIZE  # header-less files: Event2D, 8 bytes (toolbox)
        payload_offset = f.tell()
    where = f"{source}: event type/size bytes at byte {payload_offset - 2}"
    if event_type == _EXT_TRIGGER:
        raise EventFormatError(
            f"{where}: the file holds external-trigger events (type 0x0E), not CD events; it cannot be read as "
            "an event stream.")
    if event_type not in _EVENT_TYPES:
        raise EventFormatError(
            f"{where}: unsupported event type 0x{event_type:02X} (expected 0x00 Event2D or 0x0C CD).")
    if event_size != _RECORD_SIZE:
        raise EventFormatError(f"{where}: unsupported event size {event_size} bytes (expected {_RECORD_SIZE}).")
    if version is not None and version not in _BITS:
        raise EventFormatError(f"{source}: version must be 1 or 2, got {version!r}.")
    return DatHeader(width=width, height=height, version=version or header_version or 2, event_type=event_type,
                     event_size=event_size, has_header=has_header, t0=t0, lines=lines, description=description,
                     payload_offset=payload_offset)


def _sensor_size(header: DatHeader, sensor_size, source: str) -> tuple[int, int] | None:
    """The file's size when it states one (checked against the argument), else the argument."""
    given = None if sensor_size is None else parse_sensor_size(sensor_size, f"{source}: sensor_size")
    stated = (header.width, header.height)
    if stated == (None, None):
        return given
    if None in stated:
        name, value = ("Width", header.width) if header.width is not None else ("Height", header.height)
        index = 0 if name == "Width" else 1
        if given is None:
            raise EventFormatError(
                f"{source}: the header states only {name} {value}; pass sensor_size=(width, height).")
        if given[index] != value:
            raise EventFormatError(f"{source}: the header states {name} {value} but sensor_size is {given}.")
        return given
    stated = parse_sensor_size(stated, f"{source}: header Width/Height")
    if given is not None and given != stated:
        raise EventFormatError(
            f"{source}: the header states the sensor size {stated} (width, height) but sensor_size is {given}.")
    return stated


def open_dat(path: str | os.PathLike, *, sensor_size=None, time_unit=None, version: int | None = None) -> EventFile:
    """Open a Prophesee DAT file; events stream from a memory map in chunks.

    sensor_size: (width, height); must agree with the header's Width/Height when it has them, and is
    needed to check coordinates of header-less files. time_unit: None or "us" (DAT stores microseconds).
    version: 1 or 2 to override the header (header-less files are version 2 unless told).
    Raises EventFormatError for an unsupported event type, a truncated last record, and (while
    streaming) coordinates outside the sensor, polarity other than 0/1 or times going backwards.
    """
    source = os.fspath(path)
    if time_unit not in (None, "us"):
        raise EventFormatError(
            f"{source}: time_unit {time_unit!r} does not apply: DAT times are microseconds, fixed by the format "
            "(pass None or 'us').")
    header = read_dat_header(source, version=version)
    size = _sensor_size(header, sensor_size, source)
    payload = os.path.getsize(source) - header.payload_offset
    count, rest = divmod(payload, _RECORD_SIZE)
    if rest:
        raise EventFormatError(
            f"{source}: truncated record {count} at byte {header.payload_offset + count * _RECORD_SIZE}: only "
            f"{rest} of {_RECORD_SIZE} bytes remain ({count} complete records before it).")
    width, height = size if size is not None else (None, None)
    x_shift, x_mask, y_shift, y_mask, p_shift, p_mask = _BITS[header.version]

    def chunks(max_events: int):
        return _iterate(check_max_events(max_events, source))

    def _iterate(max_events: int):
        if count == 0:
            return
        records = np.memmap(source, dtype=DAT_RECORD, mode="r", offset=header.payload_offset, shape=(count,))
        loops = 0
        previous_raw = None
        previous_t = None
        for start in range(0, count, max_events):
            block = records[start:start + max_events]
            raw = block["t"].astype(np.int64)
            word = block["word"]
            # Loop count per record: carried over from the previous chunk, +1 at every large decrease.
            wraps = np.diff(raw, prepend=raw[0] if previous_raw is None else previous_raw) < -_LOOP_DROP
            t = raw + (loops + np.cumsum(wraps)) * TIME_LOOP_US + header.t0
            x = ((word >> x_shift) & x_mask).astype(np.uint16)
            y = ((word >> y_shift) & y_mask).astype(np.uint16)
            p = ((word >> p_shift) & p_mask).astype(np.uint8)
            problem = find_problem(t, x, y, p, width, height, previous_t)
            if problem is not None:
                index, reason = problem
                record = start + index
                hint = " (or pass the right sensor_size (width, height))" if reason[:2] in ("x=", "y=") else ""
                raise EventFormatError(
                    f"{source}: record {record} (byte {header.payload_offset + record * _RECORD_SIZE}): {reason}; "
                    f"the file is corrupt{hint}.")
            loops += int(np.count_nonzero(wraps))
            previous_raw = int(raw[-1])
            previous_t = int(t[-1])
            yield {"t": t, "x": x, "y": y, "p": p}

    details = {
        "version": header.version,
        "event_type": _EVENT_TYPES[header.event_type],
        "has_header": header.has_header,
        "header": dict(header.lines),
        "description": header.description,
        "t0": header.t0,
        "payload_offset": header.payload_offset,
        "num_events": count,
    }
    return EventFile(path=source, format="dat", sensor_size=size, chunks=chunks, time_unit="us", details=details)
