"""Intensity frames aligned with event chunks: the reference images the reconstruction attacks are scored on.

A chunk's reference frame is the saved frame nearest to its last event, cropped and resized exactly as
`anon_jax.events.chunk_voxel_grid` crops and resizes the chunk, so frame pixel (i, j) is voxel pixel (i, j).
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from anon_jax import events
from anon_jax.data import event_reid

FRAMES_FILE = "frames.npz"
_CAMERA_DIR = re.compile(r"^cam(?P<cam>\d+)$")


class ReferenceFrameError(ValueError):
    """Missing or inconsistent frames.npz files, or frames that do not cover a chunk."""


def _check_frames(frames: np.ndarray, timestamps_us: np.ndarray, where: str) -> None:
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ReferenceFrameError(f"{where}: frames must be uint8 (T, H, W), got {frames.dtype} {frames.shape}.")
    if timestamps_us.shape != (len(frames),):
        raise ReferenceFrameError(
            f"{where}: timestamps_us must have shape ({len(frames)},) (one per frame), got {timestamps_us.shape}.")
    if len(frames) == 0:
        raise ReferenceFrameError(f"{where}: no frames.")
    if np.any(np.diff(timestamps_us) <= 0):
        raise ReferenceFrameError(f"{where}: timestamps_us must increase strictly.")


def nearest_frame_index(timestamps_us: np.ndarray, t: float) -> int:
    """Index of the timestamp nearest to t; a tie goes to the earlier frame."""
    after = int(np.searchsorted(timestamps_us, t, side="left"))
    if after == 0:
        return 0
    if after == len(timestamps_us):
        return after - 1
    return after - 1 if t - timestamps_us[after - 1] <= timestamps_us[after] - t else after


def chunk_reference_frame(stream: events.EventStream, frames: np.ndarray, timestamps_us: np.ndarray, *,
                          height: int, width: int) -> np.ndarray:
    """float32 (height, width, 1) in [0, 1]: the frame nearest the chunk's last event, on the voxel grid's pixels.

    Crop: the chunk's event bounding box [min y .. max y] x [min x .. max x] (what `bbox_shifted` keeps), then
    PyTorch-nearest resize with the voxel grid's indices, then / 255.
    """
    frames, timestamps_us = np.asarray(frames), np.asarray(timestamps_us, np.float64)
    where = stream.source or "event chunk"
    _check_frames(frames, timestamps_us, where)
    stream.require_nonempty()
    x0, x1, y0, y1 = int(stream.x.min()), int(stream.x.max()), int(stream.y.min()), int(stream.y.max())
    if y1 >= frames.shape[1] or x1 >= frames.shape[2]:
        raise ReferenceFrameError(
            f"{where}: events reach (x={x1}, y={y1}) but the frames are only {frames.shape[1]}x{frames.shape[2]} "
            "(height x width); frames and events must come from the same sensor.")
    frame = frames[nearest_frame_index(timestamps_us, float(stream.t[-1]))]
    crop = frame[y0:y1 + 1, x0:x1 + 1]
    resized = events.nearest_resize_numpy(crop, height, width).astype(np.float32) / np.float32(255)
    return resized[:, :, None]


def frames_file(chunk_path: str | os.PathLike, raw_dir: str | os.PathLike) -> pathlib.Path:
    """`raw_dir/<ID>/cam<NN>/frames.npz` of a chunk named `<ID>_c<cam>_<NNN>.txt` (camera folder found by number)."""
    identity, cam, _ = event_reid.parse_chunk_name(chunk_path)
    id_dir = pathlib.Path(raw_dir) / identity
    cam_dirs = []
    if id_dir.is_dir():
        for folder in id_dir.iterdir():
            match = _CAMERA_DIR.match(folder.name)
            if folder.is_dir() and match and int(match["cam"]) == cam:
                cam_dirs.append(folder)
    if len(cam_dirs) != 1:
        raise ReferenceFrameError(
            f"{chunk_path}: expected one camera folder {id_dir}/cam{cam:02d}/ for its frames, found "
            f"{[p.name for p in cam_dirs]}; point raw_dir at the raw <ID>/<camXX>/ tree the chunks were cut from.")
    return cam_dirs[0] / FRAMES_FILE


def _read_frames(path: pathlib.Path, chunk_path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ReferenceFrameError(
            f"{chunk_path}: its frames file {path} is missing; reference frames need the frames.npz that the "
            "synthetic generator writes beside each events.txt.")
    with np.load(path, allow_pickle=False) as saved:
        if "frames" not in saved or "timestamps_us" not in saved:
            raise ReferenceFrameError(f"{path}: needs arrays 'frames' and 'timestamps_us', has {saved.files}.")
        frames, timestamps_us = saved["frames"], saved["timestamps_us"].astype(np.float64)
    _check_frames(frames, timestamps_us, str(path))
    return frames, timestamps_us


def load_reference_frames(chunk_paths: Sequence[str | os.PathLike], raw_dir: str | os.PathLike, *,
                          height: int, width: int) -> np.ndarray:
    """(N, height, width, 1) float32 reference frames of chunk files; each frames.npz is read once."""
    result = np.empty((len(chunk_paths), height, width, 1), np.float32)
    loaded: dict[pathlib.Path, tuple[np.ndarray, np.ndarray]] = {}
    for i, chunk_path in enumerate(chunk_paths):
        path = frames_file(chunk_path, raw_dir)
        if path not in loaded:
            loaded[path] = _read_frames(path, chunk_path)
        stream = events.read_event_text(chunk_path)
        result[i] = chunk_reference_frame(stream, *loaded[path], height=height, width=width)
    return result
