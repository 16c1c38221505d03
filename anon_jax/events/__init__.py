"""Event streams: validated container, text files, E2VID voxel grids and the Event-ReId chunk pipeline.

The ESIM-style simulator is the submodule `anon_jax.events.simulator`, Prophesee RAW files (EVT 2.0 / 2.1 / 3.0) are
read by `anon_jax.events.prophesee_raw.read_raw`; import them directly.
"""

from anon_jax.events.stream import EventFormatError, EventStream, pad_events
from anon_jax.events.text_io import read_event_text, write_event_text
from anon_jax.events.voxel import (
    chunk_voxel_grid,
    nearest_resize,
    nearest_resize_numpy,
    normalize_voxel_grid,
    normalize_voxel_grid_numpy,
    voxel_grid,
    voxel_grid_numpy,
)

__all__ = [
    "EventFormatError",
    "EventStream",
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
