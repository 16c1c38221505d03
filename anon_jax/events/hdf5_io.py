"""HDF5 event files: the DSEC and MVSEC layouts (read) and the project's DSEC-like interchange format (write).

DSEC layout ("hdf5-dsec"): /events/{x,y,t,p} 1-D datasets, t integer microseconds relative to the optional
/t_offset (int64 us, scalar or shape (1,)), and an optional /ms_to_idx where entry k is the index of the first
event with t >= k * 1000 (relative t). DSEC compresses with Blosc/zstd (HDF5 filter 32001), which h5py reads
only once hdf5plugin is imported.

MVSEC layout ("hdf5-mvsec"): /davis/{left,right}/events, an N x 4 float64 array of x, y, t (seconds, ROS
time) and p (-1/+1). The sensor is a DAVIS346 (346 x 260) unless the caller says otherwise.

Prophesee/Metavision HDF5 files (/CD/events, ECF filter 36559) cannot be decoded here; the reader says how
to convert them.

Our own files (`HDF5Writer`, `write_hdf5`) follow the DSEC layout: events/x u16, events/y u16, events/p u8,
events/t u32 relative to t_offset (the first event time, 0 for an empty file) while the span fits in 2^32 us
(about 71.6 minutes), else int64; ms_to_idx u64; root attributes width, height and anon_jax_events (the
format version, 1).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator

import h5py
import numpy as np

from anon_jax.events.container import (
    EventFile,
    Events,
    check_max_events,
    check_time_unit,
    find_problem,
    import_optional,
    parse_sensor_size,
    raise_problem,
    to_microseconds,
)
from anon_jax.events.stream import EventFormatError
from anon_jax.files import atomic_target

FORMAT_VERSION = 1
VERSION_ATTRIBUTE = "anon_jax_events"
DAVIS346_SIZE = (346, 260)
COMPRESSIONS = ("gzip", "blosc-zstd", None)

_BLOSC_FILTER = 32001
_ECF_FILTER = 36559
_INT64_MAX = int(np.iinfo(np.int64).max)
_U32_LIMIT = 2 ** 32
_INDEX_BLOCK = 1 << 20  # ms_to_idx entries checked or written at a time (8 MB)
_H5_CHUNK = 1 << 16  # events per HDF5 chunk of our files
_SUPPORTED = ("DSEC (/events/{x,y,t,p}, optional /t_offset and /ms_to_idx), "
              "MVSEC (/davis/left/events or /davis/right/events, N x 4: x, y, t seconds, p +-1)")
_FORMATS_HINT = "pip install 'anon_jax[formats]' (it brings hdf5plugin, which registers Blosc/zstd/LZ4 filters)"


def _register_filters() -> bool:
    """Imports hdf5plugin when installed so that its filters (Blosc, zstd, LZ4, ...) are registered with HDF5."""
    try:
        importlib.import_module("hdf5plugin")
    except ImportError:
        return False
    return True


def _filter_available(code: int) -> bool:
    return bool(h5py.h5z.filter_avail(code))


def _filters(dataset: h5py.Dataset) -> list[tuple[int, str]]:
    """(filter id, name) of each filter in the dataset's pipeline."""
    plist = dataset.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        out.append((int(code), name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)))
    return out


def _check_filters(path: str, dataset: h5py.Dataset) -> list[str]:
    """The names of the dataset's filters; a clear error when one cannot be decoded here."""
    names = []
    for code, name in _filters(dataset):
        names.append(name or str(code))
        if _filter_available(code):
            continue
        if code == _ECF_FILTER:
            raise EventFormatError(
                f"{path}: dataset {dataset.name} is compressed with Prophesee's ECF filter ({code}), which anon_jax "
                "cannot decode; convert the file with metavision_file_to_raw or metavision_file_to_dat.")
        import_optional("hdf5plugin", f"Reading {path} (dataset {dataset.name} uses HDF5 filter {code} "
                                      f"{name!r}; DSEC files are Blosc/zstd-compressed)")
        if not _filter_available(code):
            raise EventFormatError(
                f"{path}: dataset {dataset.name} uses HDF5 filter {code} ({name!r}), which neither h5py nor "
                "hdf5plugin provides; recompress the file with gzip (h5repack -f GZIP=4) or install the filter.")
    return names


def _read(path: str, dataset: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """dataset[start:stop], turning HDF5 read failures (missing filters, corrupt chunks) into clear errors."""
    try:
        return dataset[start:stop]
    except OSError as error:
        raise EventFormatError(
            f"{path}: cannot read dataset {dataset.name} rows {start}..{stop - 1} ({error}). A missing filter "
            f"plugin is the usual cause for Blosc/zstd-compressed (DSEC) files: {_FORMATS_HINT}; otherwise the "
            "file is corrupt.") from error


def _open_file(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as error:
        raise EventFormatError(f"{path}: not a readable HDF5 file ({error}).") from error


def _sensor_from_attributes(path: str, attrs) -> tuple[int, int] | None:
    present = [name for name in ("width", "height") if name in attrs]
    if not present:
        return None
    if len(present) == 1:
        raise EventFormatError(f"{path}: the file has the attribute {present[0]!r} but not its partner; "
                               "both width and height are needed.")
    values = []
    for name in ("width", "height"):
        value = np.asarray(attrs[name])
        if value.size != 1 or value.dtype.kind not in "iu":
            raise EventFormatError(f"{path}: attribute {name!r} must be one integer, got {attrs[name]!r}.")
        values.append(value.reshape(()).item())
    return parse_sensor_size(tuple(values), f"{path}: attributes width/height")


def _resolve_sensor(path: str, stated, argument) -> tuple[int, int] | None:
    if stated is not None and argument is not None and stated != argument:
        raise EventFormatError(
            f"{path}: the file states the sensor size {stated[0]}x{stated[1]} (width x height) but "
            f"sensor_size={argument} was given; drop the argument or pass the file's size.")
    return stated if stated is not None else argument


def _fixed_unit(path: str, time_unit, unit: str, layout: str):
    if time_unit is not None and time_unit != unit:
        raise EventFormatError(
            f"{path}: {layout} HDF5 files store times in {unit!r}; the unit is fixed by the format, so "
            f"time_unit={time_unit!r} cannot apply (pass None).")


def open_hdf5(path, *, sensor_size=None, time_unit=None, camera: str | None = None) -> EventFile:
    """Opens a DSEC- or MVSEC-layout HDF5 event file (our own files use the DSEC layout).

    sensor_size: (width, height). DSEC files state none (ours add width/height attributes); MVSEC defaults
        to the DAVIS346 (346 x 260). A size stated by the file must agree with the argument.
    time_unit: None, or the unit the layout fixes ("us" for DSEC, "s" for MVSEC).
    camera: "left" (default) or "right", MVSEC only.
    """
    path = os.fspath(path)
    if sensor_size is not None:
        sensor_size = parse_sensor_size(sensor_size, f"{path}: sensor_size")
    if time_unit is not None:
        check_time_unit(time_unit, f"{path}: time_unit")
    if camera not in (None, "left", "right"):
        raise EventFormatError(f"{path}: camera must be 'left' or 'right', got {camera!r}.")
    _register_filters()
    with _open_file(path) as file:
        keys = sorted(file.keys())
        if isinstance(file.get("CD"), h5py.Group) and "events" in file["CD"]:
            raise EventFormatError(
                f"{path}: this is a Prophesee/Metavision HDF5 event file (/CD/events), normally compressed with "
                "Prophesee's ECF codec (HDF5 filter 36559), which anon_jax cannot decode. Convert it with "
                "OpenEB/Metavision: `metavision_file_to_raw -i FILE.hdf5 -o FILE.raw` (or metavision_file_to_dat "
                "for .dat), then read the .raw/.dat file.")
        if "events" in file:
            if camera is not None:
                raise EventFormatError(f"{path}: camera={camera!r} applies to MVSEC files only; this is a "
                                       "DSEC-layout file (one camera per file).")
            _fixed_unit(path, time_unit, "us", "DSEC")
            return _open_dsec(path, file, sensor_size)
        if isinstance(file.get("davis"), h5py.Group):
            _fixed_unit(path, time_unit, "s", "MVSEC")
            return _open_mvsec(path, file, sensor_size, camera or "left")
    raise EventFormatError(
        f"{path}: unrecognised HDF5 layout; top-level keys are {keys}. Supported layouts: {_SUPPORTED}.")


# ----------------------------------------------------------------------------------------------- DSEC


def _open_dsec(path: str, file: h5py.File, sensor_size) -> EventFile:
    group = file["events"]
    if not isinstance(group, h5py.Group):
        raise EventFormatError(f"{path}: /events must be a group holding datasets x, y, t, p; it is a dataset.")
    missing = [name for name in "xytp" if not isinstance(group.get(name), h5py.Dataset)]
    if missing:
        raise EventFormatError(
            f"{path}: DSEC layout needs datasets /events/x, /events/y, /events/t, /events/p; missing "
            f"{['/events/' + name for name in missing]} (found {sorted(group.keys())}).")
    lengths = {}
    filters = set()
    for name in "xytp":
        dataset = group[name]
        kinds = "iub" if name == "p" else "iu"
        if dataset.ndim != 1 or dataset.dtype.kind not in kinds:
            raise EventFormatError(
                f"{path}: dataset /events/{name} has shape {dataset.shape} and dtype {dataset.dtype}; expected "
                f"1-D {'integers or booleans' if name == 'p' else 'integers'}.")
        lengths[f"/events/{name}"] = dataset.shape[0]
        filters.update(_check_filters(path, dataset))
    if len(set(lengths.values())) != 1:
        raise EventFormatError(f"{path}: the event datasets have different lengths {lengths}; the file is "
                               "truncated or corrupt.")
    count = lengths["/events/t"]
    details = {"layout": "DSEC", "events": count}

    t_offset = 0
    if "t_offset" in file:
        dataset = file["t_offset"]
        if not isinstance(dataset, h5py.Dataset) or dataset.shape not in ((), (1,)) or dataset.dtype.kind not in "iu":
            raise EventFormatError(f"{path}: /t_offset must be one integer (scalar or shape (1,)) in microseconds, "
                                   f"got {dataset!r}.")
        t_offset = int(np.asarray(dataset[()]).reshape(()))
        if abs(t_offset) > _INT64_MAX:
            raise EventFormatError(f"{path}: /t_offset={t_offset} does not fit int64 microseconds.")
    else:
        details["note_t_offset"] = "no /t_offset: the stored times are taken as absolute"
    details["t_offset_us"] = t_offset

    index = None
    if "ms_to_idx" in file:
        index = file["ms_to_idx"]
        if not isinstance(index, h5py.Dataset) or index.ndim != 1 or index.dtype.kind not in "iu":
            raise EventFormatError(f"{path}: /ms_to_idx must be a 1-D integer dataset, got {index!r}.")
        filters.update(_check_filters(path, index))
        details["ms_to_idx_entries"] = index.shape[0]

    stated = _sensor_from_attributes(path, file.attrs)
    size = _resolve_sensor(path, stated, sensor_size)
    if stated is not None:
        details["sensor_size_source"] = "file attributes width/height"
    elif size is not None:
        details["sensor_size_source"] = "argument"
    else:
        details["sensor_size_source"] = None
        details["note_sensor_size"] = ("DSEC files do not store the sensor size (DSEC's cameras are 640x480); pass "
                                       "sensor_size=(width, height) to validate coordinates")
    if VERSION_ATTRIBUTE in file.attrs:
        version = int(np.asarray(file.attrs[VERSION_ATTRIBUTE]).reshape(()))
        if version > FORMAT_VERSION:
            raise EventFormatError(f"{path}: written by a newer anon_jax (format version {version}; this one "
                                   f"reads up to {FORMAT_VERSION}); upgrade anon_jax.")
        details[VERSION_ATTRIBUTE] = version
    details["compression"] = sorted(filters)
    width, height = size if size is not None else (None, None)
    has_index = index is not None

    def chunks(max_events: int) -> Iterator[dict[str, np.ndarray]]:
        max_events = check_max_events(max_events, path)
        return _dsec_chunks(path, max_events, count, t_offset, has_index, width, height)

    return EventFile(path=path, format="hdf5-dsec", sensor_size=size, chunks=chunks, time_unit="us",
                     details=details)


def _dsec_chunks(path, max_events, count, t_offset, has_index, width, height):
    _register_filters()
    with _open_file(path) as file:
        group = file["events"]
        datasets = {name: group[name] for name in "xytp"}
        if any(dataset.shape != (count,) for dataset in datasets.values()):
            raise EventFormatError(f"{path}: the file changed since it was opened.")
        index = _IndexChecker(path, file["ms_to_idx"], count) if has_index else None
        previous_t = None
        for start in range(0, count, max_events):
            stop = min(start + max_events, count)
            raw = {name: _read(path, dataset, start, stop) for name, dataset in datasets.items()}
            relative = _relative_times(path, raw["t"], start, t_offset)
            columns = {
                "t": relative + t_offset,
                "x": _coordinates(path, "x", raw["x"], start),
                "y": _coordinates(path, "y", raw["y"], start),
                "p": _polarity_01(path, raw["p"], start),
            }
            problem = find_problem(columns["t"], columns["x"], columns["y"], columns["p"], width, height, previous_t)
            if problem is not None:
                raise_problem(problem, f"{path}: /events", start)
            if index is not None:
                index.check_chunk(relative, start)
            previous_t = int(columns["t"][-1])
            yield columns
        if index is not None:
            index.check_rest()


def _relative_times(path: str, t: np.ndarray, start: int, t_offset: int) -> np.ndarray:
    """Stored times as int64 relative microseconds; errors for negative ones or absolute times outside int64."""
    if t.dtype == np.uint64:
        bad = np.flatnonzero(t > np.uint64(_INT64_MAX))
        if bad.size:
            raise EventFormatError(f"{path}: /events/t event {start + bad[0]}: t={t[bad[0]]} overflows int64 us.")
    t = t.astype(np.int64)
    low, high = max(0, -t_offset), _INT64_MAX - max(t_offset, 0)
    bad = np.flatnonzero((t < low) | (t > high))
    if bad.size:
        i = int(bad[0])
        raise EventFormatError(
            f"{path}: /events/t event {start + i}: t={t[i]} us with t_offset={t_offset} us gives a time that is "
            "negative or overflows int64 microseconds.")
    return t


def _coordinates(path: str, name: str, values: np.ndarray, start: int) -> np.ndarray:
    if values.dtype == np.uint16:
        return values
    bad = np.flatnonzero((values < 0) | (values > 65535))
    if bad.size:
        raise EventFormatError(f"{path}: /events/{name} event {start + bad[0]}: {name}={values[bad[0]]} is "
                               "outside 0..65535.")
    return values.astype(np.uint16)


def _polarity_01(path: str, values: np.ndarray, start: int) -> np.ndarray:
    if values.dtype != np.bool_:
        bad = np.flatnonzero((values < 0) | (values > 1))
        if bad.size:
            raise EventFormatError(f"{path}: /events/p event {start + bad[0]}: polarity p={values[bad[0]]} is "
                                   "not 0 or 1.")
    return values.astype(np.uint8)


class _IndexChecker:
    """Checks /ms_to_idx against the times chunk by chunk: entry k must be the first index with t >= k ms."""

    def __init__(self, path: str, dataset: h5py.Dataset, count: int):
        self.path, self.dataset, self.count = path, dataset, count
        self.length = dataset.shape[0]
        self.next_k = 0  # entries below next_k are checked

    def _compare(self, k0: int, expected: np.ndarray):
        stored = _read(self.path, self.dataset, k0, k0 + len(expected))
        if stored.dtype == np.uint64:
            stored = np.minimum(stored, np.uint64(_INT64_MAX))
        stored = stored.astype(np.int64)
        bad = np.flatnonzero(stored != expected)
        if bad.size:
            k = k0 + int(bad[0])
            raise EventFormatError(
                f"{self.path}: /ms_to_idx entry {k} is {stored[bad[0]]} but the first event at or after {k} ms "
                f"(relative time >= {k * 1000} us) is event {expected[bad[0]]}; the index is corrupt (rebuild it, "
                "or delete /ms_to_idx).")

    def check_chunk(self, relative: np.ndarray, start: int):
        """Entries whose first event lies in this chunk (relative times sorted, after all earlier chunks)."""
        last_k = min(int(relative[-1]) // 1000, self.length - 1)
        for k0 in range(self.next_k, last_k + 1, _INDEX_BLOCK):
            k1 = min(k0 + _INDEX_BLOCK, last_k + 1)
            thresholds = np.arange(k0, k1, dtype=np.int64) * 1000
            self._compare(k0, start + np.searchsorted(relative, thresholds, side="left"))
        self.next_k = max(self.next_k, int(relative[-1]) // 1000 + 1)

    def check_rest(self):
        """Entries after the last event's millisecond point past the end (index == event count)."""
        for k0 in range(self.next_k, self.length, _INDEX_BLOCK):
            k1 = min(k0 + _INDEX_BLOCK, self.length)
            self._compare(k0, np.full(k1 - k0, self.count, np.int64))


# ---------------------------------------------------------------------------------------------- MVSEC


def _open_mvsec(path: str, file: h5py.File, sensor_size, camera: str) -> EventFile:
    davis = file["davis"]
    cameras = sorted(name for name in davis if isinstance(davis[name], h5py.Group) and "events" in davis[name])
    if camera not in cameras:
        raise EventFormatError(f"{path}: MVSEC file has no /davis/{camera}/events; cameras with events: {cameras}.")
    name = f"/davis/{camera}/events"
    dataset = file[name]
    if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 2 or dataset.shape[1] != 4 \
            or dataset.dtype.kind not in "fiu":
        raise EventFormatError(f"{path}: {name} must be an N x 4 numeric array (x, y, t seconds, p), got "
                               f"{dataset!r}.")
    filters = _check_filters(path, dataset)
    count = dataset.shape[0]
    size = sensor_size if sensor_size is not None else DAVIS346_SIZE
    details = {"layout": "MVSEC", "camera": camera, "cameras": cameras, "events": count, "compression": filters,
               "sensor_size_source": "argument" if sensor_size is not None else
               "default: DAVIS346 (346x260); MVSEC files do not store it"}

    def chunks(max_events: int) -> Iterator[dict[str, np.ndarray]]:
        max_events = check_max_events(max_events, path)
        return _mvsec_chunks(path, name, max_events, count, size)

    return EventFile(path=path, format="hdf5-mvsec", sensor_size=size, chunks=chunks, time_unit="s",
                     details=details)


def _mvsec_chunks(path, name, max_events, count, size):
    width, height = size
    _register_filters()
    with _open_file(path) as file:
        dataset = file[name]
        previous_t = None
        for start in range(0, count, max_events):
            stop = min(start + max_events, count)
            rows = _read(path, dataset, start, stop)
            where = f"{path}: {name} rows {start}..{stop - 1}"
            columns = {
                "t": to_microseconds(rows[:, 2], "s", where=where),
                "x": _integral_coordinates(path, name, "x", rows[:, 0], start),
                "y": _integral_coordinates(path, name, "y", rows[:, 1], start),
                "p": _polarity_signed(path, name, rows[:, 3], start),
            }
            problem = find_problem(columns["t"], columns["x"], columns["y"], columns["p"], width, height, previous_t)
            if problem is not None:
                raise_problem(problem, f"{path}: {name}", start)
            previous_t = int(columns["t"][-1])
            yield columns


def _integral_coordinates(path, name, column, values, start) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 65535) | (values != np.floor(values)))
    if bad.size:
        value = values[bad[0]].item()
        raise EventFormatError(f"{path}: {name} row {start + bad[0]}: {column}={value!r} is not a pixel coordinate "
                               "(an integer in 0..65535).")
    return values.astype(np.uint16)


def _polarity_signed(path, name, values, start) -> np.ndarray:
    # -1/+1 in MVSEC; 0/1 files map the same way (0 and -1 are OFF, 1 is ON).
    bad = np.flatnonzero((values != -1) & (values != 0) & (values != 1))
    if bad.size:
        value = values[bad[0]].item()
        raise EventFormatError(f"{path}: {name} row {start + bad[0]}: polarity p={value!r} is not -1/+1 (or 0/1).")
    return (values > 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------- writer


def _compression_options(compression) -> dict:
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression == "blosc-zstd":
        hdf5plugin = import_optional("hdf5plugin", "Writing Blosc/zstd-compressed HDF5 (compression='blosc-zstd')")
        return dict(hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    if compression is None:
        return {}
    raise EventFormatError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}.")


class HDF5Writer:
    """Writes `Events` chunks (in time order) to a DSEC-layout HDF5 file, atomically.

    The file appears at `path` only when `close()` (or the end of a `with` block without an exception)
    succeeds; a failure or `abort()` leaves any earlier file at `path` untouched and no partial file.
    t is stored as uint32 relative to t_offset (the first event's time) while the span fits in 2^32 us;
    a later event beyond that converts the stored times to int64. ms_to_idx is written as the events arrive.
    """

    def __init__(self, path, sensor_size, *, compression="gzip"):
        self.path = os.fspath(path)
        self.width, self.height = parse_sensor_size(sensor_size, f"{self.path}: sensor_size")
        self._options = _compression_options(compression)
        self.compression = compression
        self._count = 0
        self._t_offset = None
        self._last_t = None  # absolute time of the last event written
        self._next_k = 0  # ms_to_idx entries below this are written
        self._atomic = atomic_target(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._file = h5py.File(tmp, "w")
            events = self._file.create_group("events")
            for name, dtype in (("x", np.uint16), ("y", np.uint16), ("p", np.uint8), ("t", np.uint32)):
                self._create(events, name, dtype)
            self._create(self._file, "ms_to_idx", np.uint64)
        except BaseException as error:
            self._fail(error)
            raise

    def _create(self, group, name, dtype):
        group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(_H5_CHUNK,),
                             **self._options)

    @property
    def closed(self) -> bool:
        return self._atomic is None

    def __len__(self) -> int:
        return self._count

    def write(self, events: Events) -> None:
        """Appends a chunk; its events must not be earlier than those already written."""
        if self.closed:
            raise EventFormatError(f"{self.path}: the writer is closed.")
        try:
            self._write(events)
        except BaseException as error:
            self._fail(error)
            raise

    def _write(self, events: Events):
        if not isinstance(events, Events):
            raise TypeError(f"HDF5Writer.write takes Events, got {type(events).__name__}.")
        if events.sensor_size != (self.width, self.height):
            raise EventFormatError(
                f"{self.path}: chunk sensor {events.width}x{events.height} differs from the writer's "
                f"{self.width}x{self.height} (width x height).")
        if not len(events):
            return
        if self._last_t is not None and events.t[0] < self._last_t:
            raise EventFormatError(
                f"{self.path}: chunk starts at t={events.t[0]} us, before the last event written "
                f"({self._last_t} us); write chunks in time order.")
        if self._t_offset is None:
            self._t_offset = int(events.t[0])
        relative = events.t - self._t_offset
        group = self._file["events"]
        if group["t"].dtype == np.uint32 and int(relative[-1]) >= _U32_LIMIT:
            self._widen_times()
        start, stop = self._count, self._count + len(events)
        for name, values in (("x", events.x), ("y", events.y), ("p", events.p), ("t", relative)):
            dataset = group[name]
            dataset.resize((stop,))
            dataset[start:stop] = values.astype(dataset.dtype, copy=False)
        self._append_index(relative, start)
        self._count = stop
        self._last_t = int(events.t[-1])

    def _widen_times(self):
        """Replaces the uint32 relative times by int64 ones (the span no longer fits 2^32 us)."""
        group = self._file["events"]
        old = group["t"]
        self._create(group, "t_int64", np.int64)
        wide = group["t_int64"]
        wide.resize(old.shape)
        for start in range(0, old.shape[0], _INDEX_BLOCK):
            wide[start:start + _INDEX_BLOCK] = old[start:start + _INDEX_BLOCK].astype(np.int64)
        del group["t"]
        group.move("t_int64", "t")

    def _append_index(self, relative: np.ndarray, start: int):
        # Entries k >= next_k have k ms after every earlier event, so their first event lies at or after start.
        last_k = int(relative[-1]) // 1000
        index = self._file["ms_to_idx"]
        for k0 in range(self._next_k, last_k + 1, _INDEX_BLOCK):
            k1 = min(k0 + _INDEX_BLOCK, last_k + 1)
            values = start + np.searchsorted(relative, np.arange(k0, k1, dtype=np.int64) * 1000, side="left")
            index.resize((k1,))
            index[k0:k1] = values.astype(np.uint64)
        self._next_k = last_k + 1

    def close(self) -> None:
        """Writes t_offset and the attributes and moves the finished file to `path`."""
        if self.closed:
            return
        try:
            self._file.create_dataset("t_offset", data=np.int64(self._t_offset or 0))
            self._file.attrs["width"] = np.int64(self.width)
            self._file.attrs["height"] = np.int64(self.height)
            self._file.attrs[VERSION_ATTRIBUTE] = np.int64(FORMAT_VERSION)
            self._file.close()
        except BaseException as error:
            self._fail(error)
            raise
        atomic, self._atomic = self._atomic, None
        atomic.__exit__(None, None, None)

    def abort(self) -> None:
        """Discards everything written; nothing appears at `path`."""
        if not self.closed:
            self._fail(EventFormatError(f"{self.path}: writing aborted."))

    def _fail(self, error: BaseException):
        """Closes the HDF5 file and deletes the temporary one (atomic_target removes it on an exception)."""
        atomic, self._atomic = self._atomic, None
        if atomic is None:
            return
        file = getattr(self, "_file", None)
        if file is not None and file.id.valid:
            try:
                file.close()
            except Exception:  # the temporary file is deleted next anyway
                pass
        atomic.__exit__(type(error), error, error.__traceback__)

    def __del__(self):
        # A writer dropped without close() must not leave its temporary file behind.
        try:
            self.abort()
        except Exception:
            pass

    def __enter__(self) -> HDF5Writer:
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc is None:
            self.close()
        else:
            self._fail(exc)
        return False


def write_hdf5(path, events: Events, *, compression="gzip") -> None:
    """Writes one `Events` as a DSEC-layout HDF5 file (see `HDF5Writer`)."""
    if not isinstance(events, Events):
        raise TypeError(f"write_hdf5 takes Events, got {type(events).__name__}.")
    with HDF5Writer(path, events.sensor_size, compression=compression) as writer:
        writer.write(events)
