"""The validated in-memory event stream and its fixed-capacity padding for jitted code.

Timestamps stay float64 in the file's own unit on the host; only times relative to the first event
ever reach float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


class EventFormatError(ValueError):
    """Bad event data: a malformed file, an out-of-range event, an empty stream where events are needed."""


def _read_only(values: np.ndarray) -> np.ndarray:
    """A read-only view, so a frozen stream cannot be changed through its arrays (the caller's array is untouched)."""
    view = values.view()
    view.flags.writeable = False
    return view


def _first(bad: np.ndarray) -> int | None:
    """Index of the first True entry, or None."""
    indices = np.flatnonzero(bad)
    return int(indices[0]) if indices.size else None


def _check_integral(name: str, values: np.ndarray) -> tuple[int, str] | None:
    """First entry of a numeric column that is not a finite integer, as (index, reason)."""
    if values.dtype.kind in "biu":
        return None
    if values.dtype.kind != "f":
        return 0, f"{name} has dtype {values.dtype}; expected integers"
    index = _first(~np.isfinite(values) | (values != np.round(values)))
    if index is None:
        return None
    return index, f"{name}={values[index].item()!r} is not an integer"


def find_invalid_event(
    x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray, height: int | None, width: int | None
) -> tuple[int, str] | None:
    """First invalid event of equal-length 1-D columns as (index, reason), or None if all are valid.

    Checks integer coordinates inside [0, width) x [0, height) (upper bounds skipped when None), polarity in
    {0, 1} or in {-1, +1}, finite and non-decreasing timestamps.
    """
    for name, values in (("x", x), ("y", y), ("p", p)):
        problem = _check_integral(name, values)
        if problem is not None:
            return problem
    if t.dtype.kind not in "biuf":
        return 0, f"t has dtype {t.dtype}; expected numbers"
    for name, values, size, size_name in (("x", x, width, "width"), ("y", y, height, "height")):
        index = _first(values < 0)
        if index is not None:
            return index, f"{name}={values[index].item()} is negative"
        if size is not None:
            index = _first(values >= size)
            if index is not None:
                value = values[index].item()
                return index, f"{name}={value} is outside the sensor {size_name} {size} (valid 0..{size - 1})"
    index = _first((p != 0) & (p != 1) & (p != -1))
    if index is not None:
        return index, f"polarity p={p[index].item()} is not 0/1 (or -1/+1)"
    minus_one, zero = _first(p == -1), _first(p == 0)
    if minus_one is not None and zero is not None:
        return max(minus_one, zero), "polarities mix the 0/1 and -1/+1 encodings"
    index = _first(~np.isfinite(t))
    if index is not None:
        return index, f"timestamp t={t[index].item()!r} is not finite"
    index = _first(np.diff(t) < 0)
    if index is not None:
        return index + 1, f"timestamp t={t[index + 1].item()!r} is earlier than the previous one ({t[index].item()!r})"
    return None


def check_sensor_size(height, width, where: str) -> tuple[int, int]:
    """(height, width) as ints; raises EventFormatError naming `where` unless both are positive integers."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise EventFormatError(f"{where}: sensor {name} must be a positive integer, got {value!r}.")
    return int(height), int(width)


@dataclasses.dataclass(frozen=True, eq=False)
class EventStream:
    """Events of one sensor, sorted by time: integer pixel x/y, float64 time t, polarity p in {0, 1}.

    `eq=False`: streams hold arrays, so equality is identity (compare the fields with NumPy instead).
    """

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    p: np.ndarray
    height: int
    width: int
    source: str | None = None

    def __post_init__(self):
        where = self.source or "event stream"
        height, width = check_sensor_size(self.height, self.width, where)
        columns = {name: np.asarray(getattr(self, name)) for name in ("x", "y", "t", "p")}
        for name, values in columns.items():
            if values.ndim != 1:
                raise EventFormatError(f"{where}: column {name} must be 1-D, got shape {values.shape}.")
            if values.dtype == np.bool_:
                columns[name] = values.astype(np.uint8)
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) != 1:
            raise EventFormatError(f"{where}: columns x, y, t, p must have equal lengths, got {lengths}.")
        problem = find_invalid_event(columns["x"], columns["y"], columns["t"], columns["p"], height, width)
        if problem is not None:
            index, reason = problem
            raise EventFormatError(
                f"{where}: event {index} (0-based): {reason}. Fix the data, pass the right sensor size, or crop "
                "and sort the events (stable sort by t) before building the stream.")
        fields = {
            "x": columns["x"].astype(np.int32, copy=False),
            "y": columns["y"].astype(np.int32, copy=False),
            "t": columns["t"].astype(np.float64, copy=False),
            "p": (columns["p"] > 0).astype(np.uint8),  # 0/1 stay, -1/+1 become 0/1
        }
        for name, values in fields.items():
            object.__setattr__(self, name, _read_only(values))
        object.__setattr__(self, "height", height)
        object.__setattr__(self, "width", width)

    def __len__(self) -> int:
        return len(self.t)

    def require_nonempty(self) -> EventStream:
        """Returns self; raises EventFormatError if the stream has no events."""
        if len(self) == 0:
            raise EventFormatError(
                f"{self.source or 'event stream'}: no events; an empty stream cannot be voxelised or shifted. "
                "Skip empty chunks or choose a longer time window.")
        return self

    def bbox_shifted(self) -> EventStream:
        """Events moved to their bounding box (x -= min x, y -= min y) on a (max y + 1) x (max x + 1) sensor."""
        self.require_nonempty()
        x = self.x - self.x.min()
        y = self.y - self.y.min()
        return EventStream(x=x, y=y, t=self.t, p=self.p, height=int(y.max()) + 1, width=int(x.max()) + 1,
                           source=self.source)

    def time_slice(self, t0: float, t1: float) -> EventStream:
        """Events with t0 <= t < t1 (same sensor and source)."""
        start, stop = np.searchsorted(self.t, [t0, t1], side="left")
        stop = max(start, stop)
        return EventStream(x=self.x[start:stop], y=self.y[start:stop], t=self.t[start:stop], p=self.p[start:stop],
                           height=self.height, width=self.width, source=self.source)

    @staticmethod
    def concatenate(streams: Sequence[EventStream]) -> EventStream:
        """Streams of one sensor joined in order; the result must still be sorted by time."""
        if not streams:
            raise EventFormatError("EventStream.concatenate: got no streams; pass at least one.")
        sizes = {(s.height, s.width) for s in streams}
        if len(sizes) != 1:
            raise EventFormatError(
                f"EventStream.concatenate: streams come from different sensor sizes (height, width) {sorted(sizes)}; "
                "shift or crop them to one sensor first.")
        sources = {s.source for s in streams}
        return EventStream(
            x=np.concatenate([s.x for s in streams]), y=np.concatenate([s.y for s in streams]),
            t=np.concatenate([s.t for s in streams]), p=np.concatenate([s.p for s in streams]),
            height=streams[0].height, width=streams[0].width,
            source=sources.pop() if len(sources) == 1 else "+".join(str(s.source) for s in streams))


def pad_events(stream: EventStream, capacity: int) -> dict[str, np.ndarray]:
    """Pads a non-empty stream to `capacity` events for jitted code.

    Returns host arrays x, y (int32), t (float32, relative to the first event: the float64 subtraction
    happens first so absolute times never lose precision), p (uint8 0/1) and mask (bool, True for real events).
    """
    stream.require_nonempty()
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise EventFormatError(f"pad_events: capacity must be a positive integer, got {capacity!r}.")
    n = len(stream)
    if n > capacity:
        raise EventFormatError(
            f"{stream.source or 'event stream'}: {n} events do not fit in capacity {capacity}; raise the capacity "
            "or cut the stream into shorter chunks.")
    padding = capacity - n
    return {
        "x": np.pad(stream.x, (0, padding)),
        "y": np.pad(stream.y, (0, padding)),
        "t": np.pad((stream.t - stream.t[0]).astype(np.float32), (0, padding)),
        "p": np.pad(stream.p, (0, padding)),
        "mask": np.arange(capacity) < n,
    }


def check_positive_sizes(what: str, **sizes) -> None:
    """EventFormatError naming `what` and the first of `sizes` (name=value) that is not a positive integer."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise EventFormatError(f"{what}: {name} must be a positive integer, got {value!r}.")


def host_columns(what: str, *columns) -> list[np.ndarray]:
    """NumPy views of equal-length 1-D event columns; EventFormatError naming `what` otherwise."""
    columns = [np.asarray(values) for values in columns]
    if any(values.ndim != 1 for values in columns) or len({len(values) for values in columns}) != 1:
        raise EventFormatError(
            f"{what}: event columns x, y, t, p (and mask) must be 1-D of equal length, got shapes "
            f"{[values.shape for values in columns]}; use jax.vmap for batches.")
    return columns
