"""One entry point for event files: format detection, `read`, streaming `iter_windows`, and writers.

Supported (see README "Event files"): text `t x y p` (Event-ReId, RPG/E2VID with a `width height` row),
Prophesee RAW EVT 2.0 / 2.1 / 3.0 and DAT, iniVation AEDAT 4, HDF5 in the DSEC and MVSEC layouts (Prophesee's
ECF-compressed HDF5 gets an error saying how to convert it), NumPy .npy/.npz, ROS bags with dvs_msgs/EventArray.
Everything comes out as `Events` (t int64 us, x/y uint16, p 0/1, sensor size (width, height)), validated
chunk by chunk: an error names the file and the position (line, byte offset, event index).

Writers: the interchange HDF5 (DSEC layout plus width/height attributes) for .h5/.hdf5 and text for .txt.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import numpy as np

from anon_jax.events.container import (
    COLUMNS,
    TIME_UNITS,
    EventFile,
    Events,
    canonical_columns,
    check_max_events,
    find_problem,
    merge_chunks,
    parse_sensor_size,
    raise_problem,
)
from anon_jax.events.stream import EventFormatError, EventStream
from anon_jax.validation import is_positive_int

DEFAULT_CHUNK_EVENTS = 1 << 20
TIME_ORDERS = ("error", "clamp")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_EXTENSIONS = {
    ".raw": "raw", ".dat": "dat", ".txt": "text", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".npy": "numpy", ".npz": "numpy", ".aedat4": "aedat4", ".aedat": "aedat4", ".bag": "rosbag",
}
SUPPORTED = ("text (.txt)", "Prophesee RAW EVT 2.0/2.1/3.0 (.raw)", "Prophesee DAT (.dat)", "AEDAT 4 (.aedat4)",
             "HDF5 DSEC/MVSEC layouts (.h5, .hdf5)", "NumPy (.npy, .npz)", "ROS bag with dvs_msgs/EventArray (.bag)")


def _raw_or_dat(path: str) -> str:
    """A `% ` header is Prophesee's: RAW files name their encoding (`% evt`, `% format`), DAT files do not."""
    with open(path, "rb") as file:
        for line in file:
            if not line.startswith(b"%"):
                break
            key = line[1:].strip().split(b" ", 1)[0].lower()
            if key in (b"evt", b"format"):
                return "raw"
    return "dat"


def detect_format(path: str | os.PathLike) -> str:
    """The reader for `path`: "raw", "dat", "text", "hdf5", "numpy", "aedat4" or "rosbag".

    The first bytes decide where they are distinctive (HDF5, NumPy, AEDAT, ROS bag, Prophesee `%` header),
    the extension otherwise. A ROS 2 bag is a folder holding metadata.yaml.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "metadata.yaml")):
            return "rosbag"
        raise EventFormatError(f"{path}: is a folder, not an event file (only ROS 2 bag folders are read).")
    if not os.path.isfile(path):
        raise EventFormatError(f"{path}: no such event file.")
    with open(path, "rb") as file:
        head = file.read(16)
    extension = os.path.splitext(path)[1].lower()
    if head.startswith(_HDF5_MAGIC):
        return "hdf5"
    if head.startswith(b"\x93NUMPY") or (head.startswith(b"PK\x03\x04") and extension == ".npz"):
        return "numpy"
    if head.startswith(b"#!AER-DAT"):
        return "aedat4"
    if head.startswith(b"#ROSBAG"):
        return "rosbag"
    if head.startswith(b"% "):
        return _raw_or_dat(path)
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    raise EventFormatError(
        f"{path}: unknown event file format (extension {extension!r}, first bytes {head!r}). Supported: "
        f"{'; '.join(SUPPORTED)}.")


def open_events(path: str | os.PathLike, *, sensor_size: tuple[int, int] | None = None,
                time_unit: str | None = None, **options) -> EventFile:
    """Opens `path` with the reader of its format; `options` go to that reader (e.g. columns for N x 4 NumPy,
    evt21_layout for RAW, topic for ROS bags, camera for MVSEC, stream_id for AEDAT 4)."""
    kind = detect_format(path)
    path = os.fspath(path)
    if kind == "raw":
        from anon_jax.events.prophesee_raw import open_raw as opener
    elif kind == "dat":
        from anon_jax.events.dat import open_dat as opener
    elif kind == "text":
        from anon_jax.events.text_io import open_text as opener
    elif kind == "hdf5":
        from anon_jax.events.hdf5_io import open_hdf5 as opener
    elif kind == "numpy":
        from anon_jax.events.numpy_io import open_numpy as opener
    elif kind == "aedat4":
        from anon_jax.events.aedat4 import open_aedat4 as opener
    else:
        from anon_jax.events.rosbag_io import open_rosbag as opener
    try:
        return opener(path, sensor_size=sensor_size, time_unit=time_unit, **options)
    except TypeError as error:
        if options and "unexpected keyword" in str(error):
            raise EventFormatError(f"{path}: option(s) {sorted(options)} do not apply to {kind} files.") from None
        raise


def checked_chunks(opened: EventFile, max_events: int = DEFAULT_CHUNK_EVENTS,
                   sensor_size: tuple[int, int] | None = None,
                   time_order: str = "error") -> Iterator[dict[str, np.ndarray]]:
    """The file's chunks as canonical columns, each checked against the sensor and the time order so far.

    `sensor_size` (width, height) replaces an unknown file size for the coordinate check.
    time_order: "error" (default) rejects a time earlier than the one before it; "clamp" raises such a time to
    the latest one seen, as faery does for sensors whose readout jitters by a few microseconds, and warns once
    with the number of events changed. Only the Prophesee RAW decoders leave the time order to this check; the
    other readers check it while decoding and stop with their own positioned error either way.
    """
    check_max_events(max_events, opened.path)
    if time_order not in TIME_ORDERS:
        raise EventFormatError(f"time_order must be one of {TIME_ORDERS}, got {time_order!r}.")
    width, height = opened.sensor_size or sensor_size or (None, None)
    index, previous, clamped = 0, None, 0
    for chunk in opened.chunks(int(max_events)):
        columns = canonical_columns(chunk, opened.path)
        if time_order == "clamp" and len(columns["t"]):
            t = np.maximum.accumulate(np.maximum(columns["t"], columns["t"][0] if previous is None else previous))
            clamped += int(np.count_nonzero(t != columns["t"]))
            columns["t"] = t
        problem = find_problem(columns["t"], columns["x"], columns["y"], columns["p"], width, height, previous)
        if problem is not None:
            raise_problem(problem, opened.path, index)
        if len(columns["t"]):
            index += len(columns["t"])
            previous = int(columns["t"][-1])
        yield columns
    if clamped:
        warnings.warn(f"{opened.path}: {clamped} event times were earlier than an event before them and were raised "
                      "to its time (time_order='clamp').", stacklevel=2)


def _events(columns: dict[str, np.ndarray], size: tuple[int, int], source: str) -> Events:
    return Events(t=columns["t"], x=columns["x"], y=columns["y"], p=columns["p"], width=size[0], height=size[1],
                  source=source)


def bounding_size(opened: EventFile, max_events: int, time_order: str = "error") -> tuple[int, int]:
    """(max x + 1, max y + 1) over the file, for files that state no sensor size (one streaming pass)."""
    width = height = 0
    for columns in checked_chunks(opened, max_events, time_order=time_order):
        if len(columns["t"]):
            width, height = max(width, int(columns["x"].max()) + 1), max(height, int(columns["y"].max()) + 1)
    if not width:
        raise EventFormatError(f"{opened.path}: no events and no sensor size in the file; pass sensor_size.")
    return width, height


def read(path: str | os.PathLike, *, sensor_size: tuple[int, int] | None = None, time_unit: str | None = None,
         time_order: str = "error", **options) -> Events:
    """All events of an event file of any supported format (see the module doc).

    sensor_size: (width, height); needed only when the file does not state it (else the events' bounding box
    max x + 1, max y + 1 is used), and must agree with the file when it does.
    time_unit: the unit of files that do not state it (text: "s", "ms", "us" or "ns"; N x 4 NumPy arrays).
    time_order: "error" or "clamp" for times that go backwards (see `checked_chunks`).
    options: reader options (see `open_events`).
    """
    return read_opened(open_events(path, sensor_size=sensor_size, time_unit=time_unit, **options), time_order)


def read_opened(opened: EventFile, time_order: str = "error") -> Events:
    """All events of an opened file; the bounding box gives the sensor when the file states none."""
    parts = list(checked_chunks(opened, DEFAULT_CHUNK_EVENTS, time_order=time_order))
    columns = {name: np.concatenate([part[name] for part in parts]) if parts else np.zeros(0, dtype)
               for name, dtype in (("t", np.int64), ("x", np.uint16), ("y", np.uint16), ("p", np.uint8))}
    size = opened.sensor_size
    if size is None:
        if not len(columns["t"]):
            raise EventFormatError(f"{opened.path}: no events and no sensor size in the file; pass sensor_size.")
        size = int(columns["x"].max()) + 1, int(columns["y"].max()) + 1
    return _events(columns, size, opened.path)


def iter_windows(path: str | os.PathLike, *, duration_us: int | None = None, num_events: int | None = None,
                 sensor_size: tuple[int, int] | None = None, time_unit: str | None = None,
                 chunk_events: int = DEFAULT_CHUNK_EVENTS, time_order: str = "error", **options) -> Iterator[Events]:
    """Streams an event file as consecutive windows, holding one window plus one read chunk in memory.

    Exactly one of:
      duration_us: windows [t0 + k * d, t0 + (k + 1) * d) from the first event's time t0; windows inside a gap
        come out empty, so window k always covers its interval; no window follows the last event's.
      num_events: windows of that many events; the last holds the remainder.
    A file without a stated sensor size takes `sensor_size`, else a first pass finds the bounding box.
    time_order: "error" or "clamp" for times that go backwards (see `checked_chunks`).
    """
    if (duration_us is None) == (num_events is None):
        raise EventFormatError("iter_windows: pass exactly one of duration_us and num_events.")
    for name, value in (("duration_us", duration_us), ("num_events", num_events), ("chunk_events", chunk_events)):
        if value is not None and not is_positive_int(value):
            raise EventFormatError(f"iter_windows: {name} must be a positive integer, got {value!r}.")
    opened = open_events(path, sensor_size=sensor_size, time_unit=time_unit, **options)
    size = opened.sensor_size or (parse_sensor_size(sensor_size, f"{opened.path}: sensor_size")
                                  if sensor_size is not None else bounding_size(opened, chunk_events, time_order))
    chunks = checked_chunks(opened, chunk_events, size, time_order)
    if num_events is not None:
        for columns in merge_chunks(chunks, num_events):
            yield _events(columns, size, opened.path)
        return
    pending: list[dict[str, np.ndarray]] = []  # events not yet in a window, in time order
    window_end = None
    for columns in chunks:
        if not len(columns["t"]):
            continue
        pending.append(columns)
        if window_end is None:
            window_end = int(columns["t"][0]) + duration_us
        while int(columns["t"][-1]) >= window_end:  # the window is complete once a later event arrived
            joined = _joined(pending)
            cut = int(np.searchsorted(joined["t"], window_end, side="left"))
            yield _events({name: values[:cut] for name, values in joined.items()}, size, opened.path)
            pending = [{name: values[cut:] for name, values in joined.items()}]
            window_end += duration_us
    if pending:
        yield _events(_joined(pending), size, opened.path)


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Consecutive column dicts as one (a single part is returned as is, so slices of it stay views)."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in COLUMNS}


def read_stream(path: str | os.PathLike, *, sensor_size: tuple[int, int] | None = None,
                time_unit: str | None = None, crop_unsized: bool = False, **options) -> EventStream:
    """The EventStream of the reconstruction and anonymization commands.

    Binary formats give microseconds. A text file without `time_unit` keeps its own unit (float64, exactly as
    written: Event-ReId chunks and the synthetic data's events.txt); with `time_unit` it is converted to us.
    crop_unsized: when neither the file nor `sensor_size` gives the sensor, shift the events to their bounding
    box (the Event-ReId loader's convention for headerless chunks) instead of keeping absolute coordinates.
    """
    if detect_format(path) == "text" and time_unit is None:
        from anon_jax.events.text_io import read_event_text, text_sensor_size
        size = None if sensor_size is None else parse_sensor_size(sensor_size, f"{path}: sensor_size")[::-1]
        stream = read_event_text(path, sensor_size=size)
        stated = sensor_size is not None or text_sensor_size(path) is not None
    else:
        opened = open_events(path, sensor_size=sensor_size, time_unit=time_unit, **options)
        stream = read_opened(opened).to_stream()
        stated = opened.sensor_size is not None
    if crop_unsized and not stated and len(stream):
        stream = stream.bbox_shifted()
    return stream


def add_event_file_arguments(parser) -> None:
    """The --events and --time_unit flags of the commands that read a recording (see `read_stream`)."""
    parser.add_argument("--events", required=True, help="event file in any supported format: text `t x y p` "
                        "(optional `width height` first row; Event-ReId chunks and events.txt), Prophesee RAW/DAT, "
                        "AEDAT 4, HDF5 DSEC/MVSEC, npy/npz, ROS bag")
    parser.add_argument("--time_unit", choices=sorted(TIME_UNITS), help="convert a text file's times from this unit "
                        "to microseconds (default: keep the file's own unit; binary formats are microseconds)")


def open_writer(path: str | os.PathLike, *, sensor_size: tuple[int, int], time_unit: str = "us"):
    """A writer for `path` by extension: .h5/.hdf5 the interchange HDF5 (microseconds), .txt text in `time_unit`.

    Use as a context manager and call `.write(events)` with consecutive `Events` chunks; the file appears
    complete on a clean exit and not at all after an error.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension in (".h5", ".hdf5"):
        if time_unit != "us":
            raise EventFormatError(f"{path}: the HDF5 interchange format stores microseconds; drop time_unit.")
        from anon_jax.events.hdf5_io import HDF5Writer
        return HDF5Writer(path, sensor_size=sensor_size)
    if extension == ".txt":
        from anon_jax.events.text_io import TextWriter
        return TextWriter(path, sensor_size=sensor_size, time_unit=time_unit)
    raise EventFormatError(f"{path}: cannot write {extension or 'extension-less'} files; use .h5/.hdf5 (the "
                           "interchange format) or .txt.")


def write(path: str | os.PathLike, events: Events, *, time_unit: str = "us") -> None:
    """Writes `events` to `path` (format by extension, see `open_writer`)."""
    with open_writer(path, sensor_size=events.sensor_size, time_unit=time_unit) as writer:
        writer.write(events)
