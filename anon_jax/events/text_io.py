"""Reader and writer of the plain-text event format of Event-ReId and rpg_e2vid.

Rows are `t x y p` (whitespace-separated); an optional first row `width height` gives the sensor size.
Timestamps keep the file's unit and are parsed and written so that float64 values round-trip exactly.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from anon_jax.files import atomic_target
from anon_jax.events.container import EventFile, Events, check_time_unit, parse_sensor_size, to_microseconds
from anon_jax.events.stream import EventFormatError, EventStream, check_sensor_size, find_invalid_event

_COLUMNS = "t x y p"


def _header(path: str) -> tuple[int, tuple[int, int] | None]:
    """(lines before the data, (height, width) from a `width height` first row or None)."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line_number, line in enumerate(lines, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 2:
                return line_number - 1, None
            try:
                width, height = int(tokens[0]), int(tokens[1])
            except ValueError:
                raise EventFormatError(
                    f"{path}:{line_number}: a 2-value first row must be the header `width height` (two positive "
                    f"integers), got {line.strip()!r}.") from None
            if width < 1 or height < 1:
                raise EventFormatError(
                    f"{path}:{line_number}: header `width height` must be positive, got {line.strip()!r}.")
            return line_number, (height, width)
    return 0, None


def text_sensor_size(path) -> tuple[int, int] | None:
    """(height, width) from the file's `width height` first row, or None."""
    return _header(os.fspath(path))[1]


def _data_line_numbers(path: str, skip: int) -> list[int]:
    """1-based line numbers of the non-empty rows after the first `skip` lines (used only to word errors)."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        return [number for number, line in enumerate(lines, start=1) if number > skip and line.strip()]


def _check_row(path: str, line_number: int, line: str) -> None:
    """Raises an EventFormatError naming the line unless it holds 4 numbers."""
    tokens = line.split()
    if len(tokens) != 4:
        raise EventFormatError(
            f"{path}:{line_number}: expected 4 values `{_COLUMNS}`, found {len(tokens)}: {line.strip()!r}. "
            "Only the first row may hold the 2-value header `width height`.")
    for column, token in zip(_COLUMNS.split(), tokens):
        try:
            float(token)
        except ValueError:
            raise EventFormatError(
                f"{path}:{line_number}: column {column} is not a number: {token!r} in {line.strip()!r}.") from None


def _raise_first_malformed_row(path: str, skip: int, cause: Exception):
    """Finds the first row that is not 4 numbers and raises an EventFormatError naming its line."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line_number, line in enumerate(lines, start=1):
            if line_number > skip and line.strip():
                _check_row(path, line_number, line)
    raise EventFormatError(f"{path}: could not parse the event rows ({cause}).") from cause


def read_event_text(path, *, sensor_size: tuple[int, int] | None = None) -> EventStream:
    """Reads a `t x y p` text file (optionally with a `width height` first row) into an EventStream.

    The sensor size comes from the header, else from `sensor_size` (height, width), else from the events'
    bounding box (max y + 1, max x + 1). Errors name the file and the 1-based line.
    """
    path = os.fspath(path)
    skip, header_size = _header(path)
    if sensor_size is not None:
        sensor_size = check_sensor_size(*sensor_size, f"{path}: sensor_size (height, width)")
    if header_size is not None and sensor_size is not None and sensor_size != header_size:
        raise EventFormatError(
            f"{path}: header gives sensor (height, width) = {header_size} but sensor_size={sensor_size} "
            "was passed; drop the argument or fix the header.")
    try:
        with warnings.catch_warnings():
            # A header-only or empty file is a valid empty stream; loadtxt would only warn about it.
            warnings.filterwarnings("ignore", message=".*[Ee]mpty input.*|.*no data.*")
            rows = np.loadtxt(path, dtype=np.float64, comments=None, skiprows=skip, ndmin=2, encoding="utf-8")
    except ValueError as error:
        _raise_first_malformed_row(path, skip, error)
    if rows.size == 0:
        rows = np.zeros((0, 4))
    elif rows.shape[1] != 4:
        _raise_first_malformed_row(path, skip, ValueError(f"{rows.shape[1]} columns"))
    t, x, y, p = rows.T
    height, width = header_size or sensor_size or (None, None)
    if height is None and not len(t):
        raise EventFormatError(
            f"{path}: no events and no `width height` header, so the sensor size is unknown; pass sensor_size.")
    problem = find_invalid_event(x, y, t, p, height, width)
    if problem is not None:
        index, reason = problem
        line_number = _data_line_numbers(path, skip)[index]
        raise EventFormatError(f"{path}:{line_number}: {reason}. Fix or drop that row (or pass the right sensor size).")
    if height is None:
        height, width = int(y.max()) + 1, int(x.max()) + 1
    return EventStream(x=x, y=y, t=t, p=p, height=height, width=width, source=path)


def write_event_text(path, stream: EventStream, *, header: bool) -> None:
    """Writes `stream` as `t x y p` rows (after a `width height` row if `header`), atomically.

    Timestamps use Python's shortest round-trip repr, so reading the file back gives the same float64 values.
    """
    rows = (f"{t!r} {x} {y} {p}\n" for t, x, y, p in zip(
        stream.t.tolist(), stream.x.tolist(), stream.y.tolist(), stream.p.tolist()))
    with atomic_target(path) as temporary, open(temporary, "x", encoding="utf-8") as file:
        if header:
            file.write(f"{stream.width} {stream.height}\n")
        file.writelines(rows)


def _row_blocks(path: str, skip: int, rows_per_block: int):
    """(rows (n, 4) float64, their 1-based line numbers) for consecutive blocks of non-empty data rows."""
    lines, numbers = [], []

    def parse():
        try:
            rows = np.loadtxt(lines, dtype=np.float64, comments=None, ndmin=2)
        except ValueError:
            rows = np.zeros((0, 0))
        if rows.shape != (len(lines), 4):
            for number, line in zip(numbers, lines):
                _check_row(path, number, line)
        return rows, np.array(numbers)

    with open(path, encoding="utf-8", errors="replace") as file:
        for line_number, line in enumerate(file, start=1):
            if line_number <= skip or not line.strip():
                continue
            lines.append(line)
            numbers.append(line_number)
            if len(lines) == rows_per_block:
                yield parse()
                lines, numbers = [], []
    if lines:
        yield parse()


def open_text(path, *, sensor_size: tuple[int, int] | None = None, time_unit: str | None = None) -> EventFile:
    """A `t x y p` text file (optional `width height` first row), streamed in blocks of rows (format "text").

    `time_unit` ("s", "ms", "us", "ns") is required: text files do not state it (RPG/E2VID and v2e write
    seconds, anon_jax's writer microseconds). `sensor_size` (width, height) must agree with a header.
    Polarity -1/+1 becomes 0/1. Errors name the file and the 1-based line.
    """
    path = os.fspath(path)
    if time_unit is None:
        raise EventFormatError(
            f"{path}: text event files do not state their time unit; pass time_unit (--time-unit on the command "
            "line): 's' for RPG/E2VID and v2e files, 'us' for anon_jax's text writer, 'ms' or 'ns'. Event-ReId's unit is undocumented (about 0.1 ms per unit).")
    check_time_unit(time_unit, f"{path}: time_unit")
    skip, header_size = _header(path)
    size = None if header_size is None else (header_size[1], header_size[0])
    if sensor_size is not None:
        sensor_size = parse_sensor_size(sensor_size, f"{path}: sensor_size")
        if size is not None and size != sensor_size:
            raise EventFormatError(f"{path}: header gives sensor (width, height) = {size} but sensor_size="
                                   f"{sensor_size} was passed; drop the argument or fix the header.")
        size = sensor_size
    width, height = size or (None, None)

    def chunks(max_events: int):
        previous = None
        for rows, numbers in _row_blocks(path, skip, max(1, int(max_events))):
            t, x, y, p = rows.T
            problem = find_invalid_event(x, y, t, p, height, width)
            if problem is None and previous is not None and t[0] < previous:
                problem = 0, f"timestamp t={t[0].item()!r} is earlier than the previous one ({previous.item()!r})"
            if problem is not None:
                index, reason = problem
                raise EventFormatError(f"{path}:{numbers[index]}: {reason}. Fix or drop that row (or pass the right "
                                       "sensor size).")
            if x.size and max(x.max(), y.max()) > 65535:
                index = int(np.flatnonzero(np.maximum(x, y) > 65535)[0])
                raise EventFormatError(f"{path}:{numbers[index]}: coordinates above 65535 are not supported.")
            previous = t[-1]
            yield {"t": to_microseconds(t, time_unit, where=path), "x": x.astype(np.uint16),
                   "y": y.astype(np.uint16), "p": (p > 0).astype(np.uint8)}

    return EventFile(path=path, format="text", sensor_size=size, chunks=chunks, time_unit=time_unit)


def format_times(t_us: np.ndarray, time_unit: str) -> np.ndarray:
    """Exact decimal strings of int64 microsecond times in `time_unit` (what `open_text` reads back exactly)."""
    check_time_unit(time_unit, "format_times: time_unit")
    t_us = np.asarray(t_us, dtype=np.int64)
    if time_unit == "us":
        return t_us.astype(str)
    if time_unit == "ns":
        return np.char.add(t_us.astype(str), "000")
    digits = {"ms": 3, "s": 6}[time_unit]
    whole, fraction = np.divmod(t_us, 10 ** digits)
    return np.char.add(np.char.add(whole.astype(str), "."), np.char.zfill(fraction.astype(str), digits))


class TextWriter:
    """Writes `Events` chunks as `t x y p` rows after a `width height` header, atomically on close.

    Times are written exactly in `time_unit` (integers for "us" and "ns", fixed decimals for "ms" and "s").
    """

    def __init__(self, path, *, sensor_size: tuple[int, int], time_unit: str = "us"):
        self.path = os.fspath(path)
        self.sensor_size = parse_sensor_size(sensor_size, f"{self.path}: sensor_size")
        self.time_unit = check_time_unit(time_unit, f"{self.path}: time_unit")
        self._target = atomic_target(self.path)
        self._file = open(self._target.__enter__(), "x", encoding="utf-8")
        self._file.write(f"{self.sensor_size[0]} {self.sensor_size[1]}\n")

    def write(self, events: Events) -> None:
        if events.sensor_size != self.sensor_size:
            raise EventFormatError(f"{self.path}: events of a {events.sensor_size} sensor written to a "
                                   f"{self.sensor_size} file.")
        if len(events):
            rows = np.char.add(format_times(events.t, self.time_unit), " ")
            rows = np.char.add(rows, np.char.add(np.char.add(events.x.astype(str), " "), events.y.astype(str)))
            rows = np.char.add(np.char.add(rows, " "), events.p.astype(str))
            self._file.write("\n".join(rows.tolist()) + "\n")

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self._file.close()
        self._target.__exit__(kind, value, traceback)
        return False
