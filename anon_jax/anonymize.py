"""Anonymises an event recording with a saved anonymizer: the windows' voxel grids go out anonymised, never raw.

python -m anon_jax.anonymize --checkpoint W --events IN --out OUT.npz [--batch_size 64]
W is a main-job workdir (its anonymizer/ folder) or a save_pretrained directory; IN an event file in any format
`anon_jax.events.read` supports. The saved windows' chunk_duration is in the training data's time unit: microseconds
for the synthetic data, which binary formats also use; Event-ReId text keeps its own unit unless --time_unit is given.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from anon_jax.data.event_reid import partition_stream
from anon_jax.events import EventFormatError, chunk_voxel_grid
from anon_jax.events.container import MissingDependencyError
from anon_jax.events.formats import add_event_file_arguments, read_stream
from anon_jax.files import atomic_target
from anon_jax.models import anonymizer as anonymizer_lib
from anon_jax.progress import ProgressBar
from anon_jax.validation import is_positive_int

WORKDIR_SUBDIR = "anonymizer"


def resolve_checkpoint(path: str | os.PathLike) -> pathlib.Path:
    """The save_pretrained directory: `path` itself or `path/anonymizer` of a main-job workdir."""
    path = pathlib.Path(path)
    for candidate in (path, path / WORKDIR_SUBDIR):
        if (candidate / anonymizer_lib.CONFIG_FILE).is_file():
            return candidate
    raise anonymizer_lib.AnonymizerCheckpointError(
        f"{path}: neither {path / anonymizer_lib.CONFIG_FILE} nor "
        f"{path / WORKDIR_SUBDIR / anonymizer_lib.CONFIG_FILE} exists; pass a workdir whose joint training finished "
        "or a directory written by anon_jax.models.anonymizer.save_pretrained.")


def anonymize_stream(module, params, voxel: dict, stream, *, batch_size: int = 64,
                     progress: ProgressBar | None = None) -> dict[str, np.ndarray]:
    """Partitions `stream` with the saved settings and anonymises every non-empty window's voxel grid.

    Returns the arrays written by the command: voxels (N, H, W, bins) float32, t_start / t_end (first and last
    event time, float64), num_events (int64), bbox (N, 4) int32 x0, y0, x1, y1 (inclusive: the events' min and max
    coordinates, the crop that was resized), chunk_index (int64, position in the partition, empty ones counted).
    """
    if not is_positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    windows = partition_stream(stream, mode=voxel["partition_mode"], duration=voxel["chunk_duration"],
                               count=voxel["chunk_count"])
    kept = [(index, window) for index, window in enumerate(windows) if len(window)]
    if not kept:
        raise EventFormatError(f"{stream.source or 'event stream'}: no window holds events.")
    count, height, width, bins = len(kept), voxel["height"], voxel["width"], voxel["num_bins"]
    batch_size = min(int(batch_size), count)  # one compiled shape: the last batch is padded to it
    anonymise = jax.jit(lambda p, v: module.apply({"params": p}, v))
    anonymised = np.empty((count, height, width, bins), np.float32)
    progress = progress or ProgressBar(count)
    for start in range(0, count, batch_size):
        batch = np.zeros((batch_size, height, width, bins), np.float32)
        chunk = kept[start:start + batch_size]
        for row, (_, window) in enumerate(chunk):
            grid = chunk_voxel_grid(window, num_bins=bins, height=height, width=width)
            batch[row] = np.transpose(grid, (1, 2, 0))
        anonymised[start:start + len(chunk)] = np.asarray(anonymise(params, jnp.asarray(batch)))[:len(chunk)]
        progress.update(start + len(chunk))
    return {
        "voxels": anonymised,
        "t_start": np.array([window.t[0] for _, window in kept], np.float64),
        "t_end": np.array([window.t[-1] for _, window in kept], np.float64),
        "num_events": np.array([len(window) for _, window in kept], np.int64),
        "bbox": np.array([[window.x.min(), window.y.min(), window.x.max(), window.y.max()] for _, window in kept],
                         np.int32).reshape(count, 4),
        "chunk_index": np.array([index for index, _ in kept], np.int64),
    }


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Writes `arrays` to `path` (exactly that name) atomically."""
    with atomic_target(path) as temporary, open(temporary, "wb") as file:  # a file object: np.savez adds no '.npz'
        np.savez(file, **arrays)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m anon_jax.anonymize", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="main-job workdir (uses its anonymizer/ folder) or a "
                        "directory written by anon_jax.models.anonymizer.save_pretrained")
    add_event_file_arguments(parser)
    parser.add_argument("--out", required=True, help=".npz to write: voxels, t_start, t_end, num_events, bbox, "
                        "chunk_index (replaced atomically if it exists)")
    parser.add_argument("--batch_size", type=int, default=64, help="windows anonymised per jitted call (default 64)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}.")
        checkpoint = resolve_checkpoint(args.checkpoint)
        module, params, voxel = anonymizer_lib.load_pretrained(checkpoint)
        stream = read_stream(args.events, time_unit=args.time_unit)
        if not len(stream):
            raise EventFormatError(f"{args.events}: the file holds no events.")
        print(f"anonymize: {len(stream)} events from {args.events}, anonymizer {checkpoint} "
              f"({voxel['partition_mode']} windows, voxels {voxel['height']}x{voxel['width']}x{voxel['num_bins']})",
              file=sys.stderr)
        arrays = anonymize_stream(module, params, voxel, stream, batch_size=args.batch_size)
        write_npz(args.out, arrays)
    except (ValueError, MissingDependencyError) as error:  # checkpoint, event-format, partition errors: no traceback
        print(f"anonymize: error: {error}", file=sys.stderr)
        return 2
    print(f"anonymize: wrote {len(arrays['voxels'])} anonymised windows to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
