"""Reader and writer of the plain-text event format of Event-ReId and rpg_e2vid.

Rows are `t x y p` (whitespace-separated); an optional first row `width height` gives the sensor size.
Timestamps keep the file's unit and are parsed and written so that float64 values round-trip exactly.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from anon_jax.files import atomic_target
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


def _data_line_numbers(path: str, skip: int) -> list[int]:
    """1-based line numbers of the non-empty rows after the first `skip` lines (used only to word errors)."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        return [number for number, line in enumerate(lines, start=1) if number > skip and line.strip()]


def _raise_first_malformed_row(path: str, skip: int, cause: Exception):
    """Finds the first row that is not 4 numbers and raises an EventFormatError naming its line."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line_number, line in enumerate(lines, start=1):
            tokens = line.split()
            if line_number <= skip or not tokens:
                continue
            if len(tokens) != 4:
                raise EventFormatError(
                    f"{path}:{line_number}: expected 4 values `{_COLUMNS}`, found {len(tokens)}: {line.strip()!r}. "
                    "Only the first row may hold the 2-value header `width height`.")
            for column, token in zip(_COLUMNS.split(), tokens):
                try:
                    float(token)
                except ValueError:
                    raise EventFormatError(
                        f"{path}:{line_number}: column {column} is not a number: {token!r} in {line.strip()!r}."
                    ) from None
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
