"""NumPy event files (.npy, .npz): structured arrays with named fields or N x 4 arrays with a stated column order.

Accepted layouts (``shared/reference/event_formats.md`` section 3.10):

- a structured array with fields ``x, y, t, p`` in any order and dtypes (tonic's convention, e.g. DVSGesture
  ``[x i2, y i2, p bool, t i8]``; faery's titled ``(("p", "on"), bool)`` field is found by its title);
- an N x 4 numeric array, whose column order the caller states (``columns="xypt"``, ``"txyp"``, ...);
- in an .npz: one such array, or separate 1-D arrays named ``x, y, t, p``; an optional ``sensor_size``
  array (width, height) is the file's stated size.

NumPy files do not state their time unit, so ``time_unit`` is required: tonic's DVSGesture files hold
milliseconds, arrays tonic builds in memory microseconds. Polarity may be bool, 0/1 or -1/+1 (not mixing 0
and -1). ``.npy`` files are memory-mapped and streamed chunk by chunk; an ``.npz`` is a zip archive, so
each ``chunks`` call loads its arrays whole.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from anon_jax.events.container import (
    COLUMNS,
    TIME_UNITS,
    EventFile,
    check_max_events,
    check_time_unit,
    find_problem,
    parse_sensor_size,
    to_microseconds,
)
from anon_jax.events.stream import EventFormatError

__all__ = ["open_numpy"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_UINT16_MAX = np.iinfo(np.uint16).max
_INT64_MAX = np.iinfo(np.int64).max


def _file_kind(source: str) -> str:
    with open(source, "rb") as f:
        magic = f.read(6)
    if magic == _NPY_MAGIC:
        return "npy"
    if magic[:4] == _ZIP_MAGIC:
        return "npz"
    raise EventFormatError(f"{source}: not a NumPy .npy or .npz file (its first bytes are {magic!r}).")


def _parse_columns(columns, where: str) -> tuple[str, ...]:
    """An order such as "txyp" or ("x", "y", "t", "p") as a tuple naming each of t, x, y, p once."""
    order = tuple(columns.lower()) if isinstance(columns, str) else tuple(str(c).lower() for c in columns)
    if sorted(order) != sorted(COLUMNS):
        raise EventFormatError(
            f"{where}: columns must name t, x, y and p once each in the array's column order (e.g. 'txyp', or "
            f"'xypt' for tonic's DVSGesture files), got {columns!r}.")
    return order


def _check_numeric(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "biuf" or dtype.shape:
        raise EventFormatError(f"{where}: dtype {dtype} is not a plain number (expected integers, floats or bool).")


def _array_layout(shape: tuple, dtype: np.dtype, columns, where: str) -> tuple[str, dict]:
    """How to find t, x, y, p in one array: ("fields", name -> field) or ("matrix", name -> column)."""
    if dtype.names is not None:
        if columns is not None:
            raise EventFormatError(
                f"{where}: columns applies to N x 4 arrays only; this structured array names its fields "
                f"{list(dtype.names)}. Leave columns=None.")
        missing = [name for name in COLUMNS if name not in dtype.fields]
        if missing:
            raise EventFormatError(
                f"{where}: the structured array has fields {list(dtype.names)} but lacks {missing}; expected fields "
                "named x, y, t, p (in any order).")
        if len(shape) != 1:
            raise EventFormatError(f"{where}: a structured event array must be 1-D, got shape {shape}.")
        for name in COLUMNS:
            _check_numeric(dtype.fields[name][0], f"{where}: field {name!r}")
        return "fields", {name: name for name in COLUMNS}
    _check_numeric(dtype, where)
    if len(shape) != 2 or shape[1] != 4:
        hint = " (transpose it: events must be rows)" if len(shape) == 2 and shape[0] == 4 else ""
        raise EventFormatError(
            f"{where}: expected a structured array with fields x, y, t, p or an N x 4 array, got shape {shape}"
            f"{hint}.")
    if columns is None:
        raise EventFormatError(
            f"{where}: an N x 4 array does not name its columns; pass columns= with their order, e.g. 'txyp', or "
            "'xypt' for tonic's DVSGesture files.")
    order = _parse_columns(columns, where)
    return "matrix", {name: order.index(name) for name in COLUMNS}


def _npz_headers(source: str) -> dict[str, tuple[tuple, np.dtype]]:
    """Shape and dtype of every array in an .npz, read from the member headers (nothing is loaded)."""
    headers = {}
    try:
        with zipfile.ZipFile(source) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                headers[member[:-4]] = (shape, dtype)
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise EventFormatError(f"{source}: not a readable .npz archive: {error}") from None
    return headers


def _stated_size(source: str) -> tuple[int, int]:
    """The (width, height) of an .npz's `sensor_size` array (tonic's (W, H, P) form is accepted too)."""
    with np.load(source, allow_pickle=False) as archive:
        values = np.asarray(archive["sensor_size"])
    where = f"{source}: array 'sensor_size'"
    if values.ndim != 1 or values.size not in (2, 3) or values.dtype.kind not in "iuf":
        raise EventFormatError(
            f"{where}: expected (width, height) as 2 numbers, got dtype {values.dtype}, shape {values.shape}.")
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values) & (values == np.round(values))):
            raise EventFormatError(f"{where}: sizes must be whole numbers, got {values.tolist()}.")
        values = values.astype(np.int64)
    return parse_sensor_size((int(values[0]), int(values[1])), where)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _times(values: np.ndarray, time_unit: str, where: str, start: int) -> np.ndarray:
    if values.dtype.kind == "b":
        raise EventFormatError(f"{where}: times have dtype bool; expected integers or floats.")
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            i = _first(bad)
            raise EventFormatError(f"{where}: event {start + i}: t={values[i].item()!r} is not finite or negative.")
    else:
        bad = values < 0
        if bad.any():
            i = _first(bad)
            raise EventFormatError(f"{where}: event {start + i}: t={values[i].item()} is negative.")
        if values.dtype == np.uint64:
            if values.size and int(values.max()) > _INT64_MAX:
                i = _first(values > _INT64_MAX)
                raise EventFormatError(f"{where}: event {start + i}: t={values[i].item()} overflows int64.")
            values = values.astype(np.int64)
    return to_microseconds(values, time_unit, where=f"{where} (chunk from event {start})")


def _coordinates(values: np.ndarray, name: str, where: str, start: int) -> np.ndarray:
    if values.dtype.kind == "b":
        raise EventFormatError(f"{where}: {name} has dtype bool; expected integers.")
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values != np.floor(values))
        if bad.any():
            i = _first(bad)
            raise EventFormatError(f"{where}: event {start + i}: {name}={values[i].item()!r} is not a whole number.")
    bad = (values < 0) | (values > _UINT16_MAX)
    if bad.any():
        i = _first(bad)
        raise EventFormatError(f"{where}: event {start + i}: {name}={values[i].item()} is outside 0..{_UINT16_MAX}.")
    return values.astype(np.uint16)


class _PolarityState:
    """Remembers whether OFF was written 0 or -1 so far, so files mixing both are caught across chunks."""

    def __init__(self):
        self.zero = self.minus = False

    def convert(self, values: np.ndarray, where: str, start: int) -> np.ndarray:
        if values.dtype.kind == "b":
            return values.astype(np.uint8)
        bad = ~np.isin(values, (-1, 0, 1))
        if bad.any():
            i = _first(bad)
            raise EventFormatError(
                f"{where}: event {start + i}: polarity p={values[i].item()!r} is not 0/1, -1/+1 or bool.")
        zero, minus = values == 0, values == -1
        self.zero |= bool(zero.any())
        self.minus |= bool(minus.any())
        if self.zero and self.minus:
            i = _first(zero | minus)
            raise EventFormatError(
                f"{where}: event {start + i}: polarity mixes 0 and -1 in one file; OFF must be written one way "
                "(0/1 or -1/+1).")
        return (values > 0).astype(np.uint8)


def open_numpy(path: str | os.PathLike, *, sensor_size=None, time_unit=None, columns=None) -> EventFile:
    """Open an .npy or .npz event file (see the module docstring for the layouts).

    time_unit: required, one of TIME_UNITS ("s", "ms", "us", "ns"): the unit of the stored t.
    columns: the column order of an N x 4 array, e.g. "txyp" or "xypt" (required for those, refused otherwise).
    sensor_size: (width, height); must agree with an .npz's `sensor_size` array when it has one.
    """
    source = os.fspath(path)
    if time_unit is None:
        raise EventFormatError(
            f"{source}: time_unit is required for NumPy event files, which do not state their unit; pass one of "
            f"{sorted(TIME_UNITS)} (tonic's DVSGesture .npy files are 'ms', tonic's in-memory arrays 'us').")
    check_time_unit(time_unit, f"{source}: time_unit")
    given = None if sensor_size is None else parse_sensor_size(sensor_size, f"{source}: sensor_size")
    kind = _file_kind(source)
    stated = None
    if kind == "npy":
        try:
            array = np.load(source, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise EventFormatError(f"{source}: cannot memory-map the array: {error}") from None
        layout, where_of = _array_layout(array.shape, array.dtype, columns, source)
        count = array.shape[0]
        keys = None
        del array
    else:
        headers = _npz_headers(source)
        events = {name: header for name, header in headers.items() if name != "sensor_size"}
        if "sensor_size" in headers:
            stated = _stated_size(source)
        if set(COLUMNS) <= set(events):
            if columns is not None:
                raise EventFormatError(
                    f"{source}: columns applies to N x 4 arrays only; this .npz holds separate arrays x, y, t, p. "
                    "Leave columns=None.")
            for name in COLUMNS:
                _check_numeric(events[name][1], f"{source}: array {name!r}")
            shapes = {name: events[name][0] for name in COLUMNS}
            if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) != 1:
                raise EventFormatError(
                    f"{source}: arrays x, y, t, p must be 1-D of equal length, got shapes {shapes}.")
            layout, where_of = "arrays", {name: name for name in COLUMNS}
            keys = list(COLUMNS)
            count = shapes["t"][0]
        elif len(events) == 1:
            (key, (shape, dtype)), = events.items()
            layout, where_of = _array_layout(shape, dtype, columns, f"{source}: array {key!r}")
            keys = [key]
            count = shape[0]
        else:
            raise EventFormatError(
                f"{source}: the .npz holds arrays {sorted(headers)}; expected one event array (structured or "
                "N x 4), or separate arrays x, y, t, p (plus an optional sensor_size).")
    if stated is not None and given is not None and stated != given:
        raise EventFormatError(
            f"{source}: the file states the sensor size {stated} (width, height) but sensor_size is {given}.")
    size = stated if stated is not None else given
    width, height = size if size is not None else (None, None)

    def load():
        """Column name -> sliceable source (memory-mapped for .npy)."""
        if kind == "npy":
            array = np.load(source, mmap_mode="r", allow_pickle=False)
            return array, None
        try:
            with np.load(source, allow_pickle=False) as archive:
                if layout == "arrays":
                    return None, {name: archive[name] for name in COLUMNS}
                return archive[keys[0]], None
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
            raise EventFormatError(f"{source}: cannot load the arrays {keys} from the .npz: {error}") from None

    def columns_of(array, arrays, start: int, stop: int) -> dict[str, np.ndarray]:
        if layout == "arrays":
            return {name: arrays[name][start:stop] for name in COLUMNS}
        block = array[start:stop]
        if layout == "fields":
            return {name: block[where_of[name]] for name in COLUMNS}
        return {name: block[:, where_of[name]] for name in COLUMNS}

    def chunks(max_events: int):
        return _iterate(check_max_events(max_events, source))

    def _iterate(max_events: int):
        if count == 0:
            return
        array, arrays = load()
        polarity = _PolarityState()
        previous_t = None
        for start in range(0, count, max_events):
            raw = columns_of(array, arrays, start, min(start + max_events, count))
            t = _times(np.asarray(raw["t"]), time_unit, f"{source}: t", start)
            x = _coordinates(np.asarray(raw["x"]), "x", source, start)
            y = _coordinates(np.asarray(raw["y"]), "y", source, start)
            p = polarity.convert(np.asarray(raw["p"]), source, start)
            problem = find_problem(t, x, y, p, width, height, previous_t)
            if problem is not None:
                index, reason = problem
                raise EventFormatError(
                    f"{source}: event {start + index}: {reason}. Fix the data, pass the right sensor_size "
                    "(width, height), or sort the events by time.")
            previous_t = int(t[-1])
            yield {"t": t, "x": x, "y": y, "p": p}

    details = {"layout": layout, "count": count}
    if layout == "matrix":
        details["columns"] = "".join(sorted(COLUMNS, key=where_of.get))
    if keys is not None:
        details["arrays"] = keys
    return EventFile(path=source, format=kind, sensor_size=size, chunks=chunks, time_unit=time_unit,
                     details=details)
