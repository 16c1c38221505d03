"""Event streams: file readers and writers, validated containers, E2VID voxel grids and the Event-ReId chunk pipeline.

`read(path)` reads any supported event file into `Events` (t int64 us, x/y uint16, p 0/1, sensor size) and
`iter_windows(path, ...)` streams it in time or count windows; `write` / `open_writer` save the interchange HDF5
or text. `EventStream` is the float-time stream of the training code (`Events.to_stream()`). The ESIM-style
simulator is the submodule `anon_jax.events.simulator`; the per-format readers live in their own submodules.
"""

from anon_jax.events.container import Events, MissingDependencyError
from anon_jax.events.formats import detect_format, iter_windows, open_writer, read, write
from anon_jax.events.stream import EventFormatError, EventStream, pad_events
from anon_jax.events.text_io import read_event_text, write_event_text

# The voxel-grid functions need JAX; they are imported on first use, so reading and converting files stays light.
_VOXEL_NAMES = ("chunk_voxel_grid", "nearest_resize", "nearest_resize_numpy", "normalize_voxel_grid",
                "normalize_voxel_grid_numpy", "voxel_grid", "voxel_grid_numpy")


def __getattr__(name):
    if name in _VOXEL_NAMES:
        from anon_jax.events import voxel
        return getattr(voxel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EventFormatError",
    "EventStream",
    "Events",
    "MissingDependencyError",
    "detect_format",
    "iter_windows",
    "open_writer",
    "read",
    "write",
    "chunk_voxel_grid",
    "nearest_resize",
    "nearest_resize_numpy",
    "normalize_voxel_grid",
    "normalize_voxel_grid_numpy",
    "pad_events",
    "read_event_text",
    "voxel_grid",
    "voxel_grid_numpy",
    "write_event_text",
]
