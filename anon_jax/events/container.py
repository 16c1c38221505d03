"""The canonical event container of the file readers and writers, and the interface every format implements.

`Events`: t int64 microseconds, x/y uint16, p uint8 with 1 = ON (brightness increase), the sensor size
(width, height), sorted by time. `EventFile`: an opened file (its format, its sensor size when the file
states one) whose events come in bounded chunks of those dtypes, so long recordings stream.

Conversions to microseconds round to the nearest microsecond, ties to even (`to_microseconds`). Float
seconds with six decimals are therefore exact up to about 1e9 s (Unix time): float64 resolves 0.24 us there.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from anon_jax.events.stream import EventFormatError, EventStream
from anon_jax.validation import is_positive_int

# Microseconds per unit; "us" is the canonical unit.
TIME_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1e-3}
_INT64_MAX_US = np.iinfo(np.int64).max

COLUMNS = ("t", "x", "y", "p")
DTYPES = {"t": np.int64, "x": np.uint16, "y": np.uint16, "p": np.uint8}


def check_time_unit(time_unit, where: str) -> str:
    """`time_unit` if it is one of TIME_UNITS; EventFormatError naming `where` otherwise."""
    if time_unit not in TIME_UNITS:
        raise EventFormatError(f"{where}: time_unit must be one of {sorted(TIME_UNITS)}, got {time_unit!r}.")
    return time_unit


def parse_sensor_size(sensor_size, where: str) -> tuple[int, int]:
    """(width, height) as ints; EventFormatError naming `where` unless two positive integers below 65536."""
    try:
        width, height = sensor_size
    except (TypeError, ValueError):
        raise EventFormatError(f"{where}: sensor_size must be (width, height), got {sensor_size!r}.") from None
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 65536:
            raise EventFormatError(
                f"{where}: sensor {name} must be an integer in 1..65536 (x/y are uint16), got {value!r}.")
    return int(width), int(height)


def to_microseconds(values, time_unit: str, *, where: str) -> np.ndarray:
    """Times in `time_unit` as int64 microseconds, rounded to the nearest one (ties to even).

    Integer input converts exactly (integer arithmetic); float input is scaled in float64 and rounded.
    Raises EventFormatError naming `where` and the first bad index for non-finite, negative or too large times.
    """
    check_time_unit(time_unit, where)
    values = np.asarray(values)
    scale = TIME_UNITS[time_unit]
    if values.dtype.kind in "biu" and values.dtype != np.uint64 and scale >= 1:
        values = values.astype(np.int64)
        limit = _INT64_MAX_US // scale
        bad = np.flatnonzero((values < 0) | (values > limit))
        if bad.size:
            raise EventFormatError(
                f"{where}: time {values[bad[0]].item()} {time_unit} at event {bad[0]} is negative or overflows int64 "
                "microseconds; shift the times to a non-negative origin.")
        return values * scale
    if values.dtype.kind in "iu" and time_unit == "ns":
        values = values.astype(np.int64) if values.dtype != np.uint64 else values
        bad = np.flatnonzero(values < 0)
        if bad.size:
            raise EventFormatError(f"{where}: time {values[bad[0]].item()} ns at event {bad[0]} is negative.")
        quotient, remainder = np.divmod(values, 1000)
        quotient = quotient.astype(np.int64)
        # Round half to even, as np.rint does for floats.
        return quotient + ((remainder > 500) | ((remainder == 500) & (quotient % 2 == 1)))
    if values.dtype.kind != "f":
        raise EventFormatError(f"{where}: times have dtype {values.dtype}; expected integers or floats.")
    scaled = values.astype(np.float64) * scale
    bad = np.flatnonzero(~np.isfinite(scaled) | (scaled < 0) | (scaled >= 2.0 ** 63))
    if bad.size:
        raise EventFormatError(
            f"{where}: time {values[bad[0]].item()!r} {time_unit} at event {bad[0]} is not finite, negative or too large "
            "for int64 microseconds.")
    return np.rint(scaled).astype(np.int64)


def check_max_events(max_events, source: str) -> int:
    """`max_events` as an int; EventFormatError naming `source` unless it is a positive integer."""
    if not is_positive_int(max_events):
        raise EventFormatError(f"{source}: max_events must be a positive integer, got {max_events!r}.")
    return int(max_events)


def header_int(value: str, *, source: str, where: str, field: str, minimum: int = 1) -> int:
    """An integer field of a text header; EventFormatError naming the file, line and field otherwise."""
    try:
        number = int(value)
    except ValueError:
        raise EventFormatError(f"{source}: {where}: {field} must be an integer, got {value!r}.") from None
    if number < minimum:
        raise EventFormatError(f"{source}: {where}: {field} must be at least {minimum}, got {number}.")
    return number


def find_problem(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, width: int | None,
                 height: int | None, previous_t: int | None = None) -> tuple[int, str] | None:
    """First event breaking the canonical form as (index, reason), or None.

    Checks coordinates inside the sensor (skipped for an unknown size), p in {0, 1} and non-decreasing t,
    also against `previous_t`, the last time of the events before these.
    """
    for name, values, size, size_name in (("x", x, width, "width"), ("y", y, height, "height")):
        if size is not None and values.size:
            index = np.flatnonzero(values >= size)
            if index.size:
                return int(index[0]), (f"{name}={values[index[0]]} is outside the sensor {size_name} {size} "
                                       f"(valid 0..{size - 1})")
    index = np.flatnonzero(p > 1)
    if index.size:
        return int(index[0]), f"polarity p={p[index[0]]} is not 0 or 1"
    if previous_t is not None and t.size and t[0] < previous_t:
        return 0, f"t={t[0]} us is earlier than the previous event ({previous_t} us)"
    index = np.flatnonzero(np.diff(t) < 0)
    if index.size:
        i = int(index[0]) + 1
        return i, f"t={t[i]} us is earlier than the previous event ({t[i - 1]} us)"
    return None


def canonical_columns(columns: dict, where: str) -> dict[str, np.ndarray]:
    """The columns t, x, y, p in their canonical dtypes; EventFormatError if a value does not fit its dtype."""
    missing = [name for name in COLUMNS if name not in columns]
    if missing:
        raise EventFormatError(f"{where}: missing event columns {missing}; expected t, x, y, p.")
    arrays = {name: np.asarray(columns[name]) for name in COLUMNS}
    shapes = {name: values.shape for name, values in arrays.items()}
    if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) != 1:
        raise EventFormatError(f"{where}: columns t, x, y, p must be 1-D of equal length, got shapes {shapes}.")
    out = {}
    for name, values in arrays.items():
        if values.dtype == np.bool_:
            values = values.astype(np.uint8)
        if values.dtype.kind not in "iu":
            raise EventFormatError(
                f"{where}: column {name} has dtype {values.dtype}; expected integers (convert times with "
                "to_microseconds).")
        info = np.iinfo(DTYPES[name])
        if values.size and (values.min() < 0 or int(values.max()) > info.max):
            index = int(np.flatnonzero((values < 0) | (values > info.max))[0])
            raise EventFormatError(f"{where}: event {index}: {name}={values[index]} is outside 0..{info.max}.")
        out[name] = values.astype(DTYPES[name], copy=False)
    return out


def raise_problem(problem: tuple[int, str], where: str, first_index: int = 0):
    index, reason = problem
    raise EventFormatError(
        f"{where}: event {first_index + index} (0-based): {reason}. Fix the data, pass the right sensor_size "
        "(width, height), or sort the events by time.")


def _read_only(values: np.ndarray) -> np.ndarray:
    view = values.view()
    view.flags.writeable = False
    return view


@dataclasses.dataclass(frozen=True, eq=False)
class Events:
    """Events of one sensor sorted by time: t int64 us, x/y uint16, p uint8 (1 = ON), width x height pixels.

    Construction validates everything (coordinates inside the sensor, p in {0, 1}, non-decreasing t) and
    stores read-only arrays. `eq=False`: compare the columns with NumPy.
    """

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray
    width: int
    height: int
    source: str | None = None

    def __post_init__(self):
        where = self.source or "events"
        width, height = parse_sensor_size((self.width, self.height), where)
        columns = canonical_columns({name: getattr(self, name) for name in COLUMNS}, where)
        problem = find_problem(columns["t"], columns["x"], columns["y"], columns["p"], width, height)
        if problem is not None:
            raise_problem(problem, where)
        for name, values in columns.items():
            object.__setattr__(self, name, _read_only(values))
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "height", height)

    @property
    def sensor_size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.width, self.height

    def __len__(self) -> int:
        return len(self.t)

    @property
    def duration_us(self) -> int:
        """Time from the first to the last event (0 for fewer than two events)."""
        return int(self.t[-1] - self.t[0]) if len(self) else 0

    def slice(self, start: int, stop: int) -> Events:
        """Events start..stop-1 (by index) on the same sensor."""
        return Events(t=self.t[start:stop], x=self.x[start:stop], y=self.y[start:stop], p=self.p[start:stop],
                      width=self.width, height=self.height, source=self.source)

    def time_slice(self, t0_us: int, t1_us: int) -> Events:
        """Events with t0_us <= t < t1_us."""
        start, stop = np.searchsorted(self.t, [t0_us, t1_us], side="left")
        return self.slice(int(start), int(max(start, stop)))

    def to_stream(self) -> EventStream:
        """The EventStream of the training and reconstruction code (float64 times in microseconds)."""
        return EventStream(x=self.x, y=self.y, t=self.t.astype(np.float64), p=self.p, height=self.height,
                           width=self.width, source=self.source)

    @staticmethod
    def from_stream(stream: EventStream, time_unit: str = "us") -> Events:
        """An EventStream whose float times are in `time_unit`, rounded to microseconds."""
        where = stream.source or "event stream"
        return Events(t=to_microseconds(stream.t, time_unit, where=where), x=stream.x.astype(np.uint16),
                      y=stream.y.astype(np.uint16), p=stream.p, width=stream.width, height=stream.height,
                      source=stream.source)

    @staticmethod
    def concatenate(parts: Sequence[Events], *, width: int | None = None, height: int | None = None,
                    source: str | None = None) -> Events:
        """Parts of one sensor joined in order (the result must still be sorted by time).

        With no parts, `width` and `height` give the empty result's sensor.
        """
        if not parts:
            if width is None or height is None:
                raise EventFormatError("Events.concatenate: no parts; pass width and height for an empty result.")
            return Events.empty(width, height, source)
        sizes = {part.sensor_size for part in parts}
        if len(sizes) != 1:
            raise EventFormatError(f"Events.concatenate: parts come from different sensors {sorted(sizes)}.")
        return Events(*(np.concatenate([getattr(part, name) for part in parts]) for name in COLUMNS),
                      width=parts[0].width, height=parts[0].height, source=source or parts[0].source)

    @staticmethod
    def empty(width: int, height: int, source: str | None = None) -> Events:
        return Events(*(np.zeros(0, DTYPES[name]) for name in COLUMNS), width=width, height=height, source=source)


def merge_chunks(parts: Iterable[dict[str, np.ndarray]], max_events: int) -> Iterator[dict[str, np.ndarray]]:
    """Column dicts regrouped into chunks of exactly `max_events` events (the last one may be shorter).

    Small parts are joined and large ones split, so the chunks do not depend on how the file was
    packetised; only the current parts and one chunk are held.
    """
    pending: list[dict[str, np.ndarray]] = []
    count = 0
    for part in parts:
        size = len(part["t"])
        if not size:
            continue
        pending.append(part)
        count += size
        if count < max_events:
            continue
        joined = pending[0] if len(pending) == 1 else {
            name: np.concatenate([piece[name] for piece in pending]) for name in pending[0]}
        stop = count - count % max_events
        for start in range(0, stop, max_events):
            yield {name: values[start:start + max_events] for name, values in joined.items()}
        pending = [{name: values[stop:] for name, values in joined.items()}] if stop < count else []
        count -= stop
    if count:
        yield {name: np.concatenate([piece[name] for piece in pending]) for name in pending[0]}


class MissingDependencyError(ImportError):
    """An optional library a format needs is not installed; the message names the extra to install."""


def import_optional(module: str, what: str):
    """Imports an optional dependency, or raises MissingDependencyError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{what} needs the optional package {module!r}, which is not installed: "
            "pip install 'anon_jax[formats]' (or pip install -e '.[formats]' in a checkout).") from error


@dataclasses.dataclass(frozen=True)
class EventFile:
    """An opened event file: what it states about itself and a way to stream its events.

    format: a short name such as "evt3", "dat", "hdf5-dsec" (see `anon_jax.events.formats`).
    sensor_size: (width, height) from the file or the caller; None when neither states it (text, NumPy).
    chunks: chunks(max_events) yields dicts of canonical columns (t, x, y, p, dtypes as DTYPES) in file order,
        about `max_events` events each (a vector-coded format may exceed it by its largest vector), holding
        only one chunk of the file in memory. Each call starts again from the first event. Readers raise
        EventFormatError naming the file and position for anything they cannot decode.
    time_unit: the unit the file stores, for `info` ("us" for the binary formats).
    """

    path: str
    format: str
    sensor_size: tuple[int, int] | None
    chunks: Callable[[int], Iterator[dict[str, np.ndarray]]]
    time_unit: str = "us"
    details: dict = dataclasses.field(default_factory=dict)
