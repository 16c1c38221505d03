"""Dataset preparation for the event ReId methods: from `config.data` to voxelised splits.

`prepare_event_reid` (a stage) generates or locates the data, partitions and splits raw streams, and keeps
consecutive test chunks for the stateful attacks; `load_event_reid` voxelises the splits and adds reference
frames where the raw tree has them (both cached); `attack_sequences` groups test chunks in time order.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import shutil
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging

from anon_jax.data import event_reid, reference_frames, synthetic
from anon_jax.files import atomic_target, atomic_write_bytes
from anon_jax.validation import is_positive_int

DATASETS = ("synthetic", "event_reid")
SEQUENCES = "sequences"  # split name, folder and list-file stem of the consecutive test chunks
# Bump when the cached frames change meaning, so stale caches are not reused.
_FRAMES_CACHE_FORMAT = 1


def data_config() -> ml_collections.ConfigDict:
    """The `config.data` section shared by the event ReId configs (embedded synthetic data by default)."""
    data = ml_collections.ConfigDict()
    data.name = "synthetic"  # "synthetic" (embedded, generated in the workdir) or "event_reid" (real data)
    data.root = ""  # event_reid: folder with list files + chunks, or the raw <ID>/<camXX>/events.txt tree
    data.num_bins = 5  # voxel-grid time bins (5 in the paper)
    data.height = 96  # voxel height after the nearest resize (384 in the paper)
    data.width = 48  # voxel width after the nearest resize (192 in the paper)
    data.partition_mode = "time"  # raw streams: cut chunks by constant "time" or constant "count"
    data.chunk_duration = 33300.0  # constant-time chunk length in timestamp units (synthetic: microseconds)
    data.chunk_count = 5000  # constant-count chunk size in events
    data.gallery_every = 5  # every n-th test chunk goes to the gallery (official protocol)
    data.query_seed = 0  # seed of the random query chunk per (identity, camera)
    data.sequence_windows = 8  # consecutive chunks per test recording kept for the stateful attacks (0 = none)
    data.sequence_start = 1  # chunk position (0-based, in index order) where each attack sequence starts
    data.synthetic = synthetic.default_synthetic_config()  # generator settings (fields documented there)
    return data


def _has_lists(root: str) -> bool:
    return all(os.path.isfile(os.path.join(root, f"{name}_list.txt")) for name in event_reid.LIST_NAMES)


def _recording_chunks(chunk_dir: pathlib.Path, identity: str) -> dict[int, list[pathlib.Path]]:
    """Chunk files of one id in a partitioned tree, per camera number, in chunk-index order."""
    by_camera: dict[int, list[tuple[int, pathlib.Path]]] = {}
    for path in (chunk_dir / identity).rglob("*.txt"):
        _, cam, index = event_reid.parse_chunk_name(path)
        by_camera.setdefault(cam, []).append((index, path))
    return {cam: [path for _, path in sorted(chunks)] for cam, chunks in sorted(by_camera.items())}


def _write_sequences(data: ml_collections.ConfigDict, chunk_dir: pathlib.Path, split_dir: pathlib.Path,
                     test_ids: Sequence[str]) -> int:
    """Copies `sequence_windows` consecutive chunks per test recording to `sequences/` and lists them."""
    start, length = data.sequence_start, data.sequence_windows
    if length == 0:
        return 0
    entries = []
    for identity in sorted(test_ids):
        for cam, chunks in _recording_chunks(chunk_dir, identity).items():
            if len(chunks) < start + length:
                logging.warning("Recording %s camera %d has %d non-empty chunks, fewer than sequence_start + "
                                "sequence_windows = %d; no attack sequence from it.", identity, cam, len(chunks),
                                start + length)
                continue
            for path in chunks[start:start + length]:
                with atomic_target(split_dir / SEQUENCES / path.name) as tmp:
                    shutil.copyfile(path, tmp)
                entries.append((f"{SEQUENCES}/{path.name}", identity))
    if not entries:
        logging.warning("No test recording has %d chunks from position %d on; no attack sequences were written.",
                        length, start)
        return 0
    event_reid.write_list_file(split_dir / f"{SEQUENCES}_list.txt", entries)
    return len(entries) // length


def _partition_and_split(data: ml_collections.ConfigDict, raw_dir: str, out_dir: str) -> None:
    """Cuts raw `<ID>/<camXX>/events.txt` streams into chunks, writes the official-protocol lists and sequences."""
    chunk_dir = os.path.join(out_dir, "chunks")
    split_dir = os.path.join(out_dir, "split")
    event_reid.partition_dataset(
        raw_dir, chunk_dir, mode=data.partition_mode, duration=data.chunk_duration, count=data.chunk_count,
        first_index=1,
    )
    ids = sorted(name for name in os.listdir(raw_dir) if os.path.isdir(os.path.join(raw_dir, name)))
    if ids == [f"{i:03d}" for i in range(1, 34)]:
        train_ids, test_ids = event_reid.OFFICIAL_TRAIN_IDS, event_reid.OFFICIAL_TEST_IDS
    else:
        train_ids, test_ids = event_reid.official_style_split(len(ids))
    event_reid.split_dataset(chunk_dir, split_dir, train_ids=train_ids, test_ids=test_ids,
                             gallery_every=data.gallery_every, seed=data.query_seed)
    num_sequences = _write_sequences(data, pathlib.Path(chunk_dir), pathlib.Path(split_dir), test_ids)
    logging.info("Attack sequences: %d recordings x %d chunks", num_sequences, data.sequence_windows)
    shutil.rmtree(chunk_dir)  # the split holds copies of every chunk it uses


def prepare_event_reid(data: ml_collections.ConfigDict, stage_dir: str) -> dict:
    """Makes list files + chunks available; returns {"root": folder with *_list.txt, "cache_dir", "raw_dir"}.

    "raw_dir" is the raw `<ID>/<camXX>/` tree the chunks were cut from (None when the data came as list files).
    """
    if data.name not in DATASETS:
        raise ValueError(f"config.data.name={data.name!r}: use one of {DATASETS}.")
    for field in ("sequence_windows", "sequence_start"):
        value = data[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"config.data.{field}={value!r}: must be an integer >= 0 "
                             "(sequence_windows=0 keeps no attack sequences).")
    cache_dir = os.path.join(stage_dir, "voxel_cache")
    split_root = os.path.join(stage_dir, "split")
    if data.name == "synthetic":
        raw_dir = os.path.join(stage_dir, "synthetic_raw")
        summary = synthetic.generate(raw_dir, data.synthetic)
        logging.info("Synthetic dataset: %d recordings, %d events", summary["num_recordings"], summary["total_events"])
        _partition_and_split(data, raw_dir, stage_dir)
        return {"root": split_root, "cache_dir": cache_dir, "raw_dir": raw_dir}
    root = os.path.abspath(os.path.expanduser(data.root)) if data.root else ""
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(
            f"config.data.root={data.root!r} is not a folder; point it at the Event-ReId data "
            "(a folder with train_list.txt/query_list.txt/gallery_list.txt, or the raw <ID>/<camXX>/events.txt tree)."
        )
    if _has_lists(root):
        return {"root": root, "cache_dir": cache_dir, "raw_dir": None}
    logging.info("%s has no list files: partitioning the raw streams and applying the official split.", root)
    _partition_and_split(data, root, stage_dir)
    return {"root": split_root, "cache_dir": cache_dir, "raw_dir": root}


def _has_frames(raw_dir: str | None) -> bool:
    return bool(raw_dir) and any(pathlib.Path(raw_dir).glob(f"*/cam*/{reference_frames.FRAMES_FILE}"))


def _file_key(path: pathlib.Path) -> list:
    """Name, size and mtime of a file (None for a missing one, which the loader then reports)."""
    if not path.is_file():
        return [str(path), None, None]
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _split_frames(split: dict, name: str, root: pathlib.Path, raw_dir: str, *, height: int, width: int,
                  cache_dir: str) -> np.ndarray:
    """Reference frames of a split's chunks, from / into an .npz keyed like the voxel cache."""
    chunk_paths = [root / relpath for relpath in split["paths"]]
    frame_files = sorted({reference_frames.frames_file(path, raw_dir) for path in chunk_paths})
    key = {"format": _FRAMES_CACHE_FORMAT, "list": event_reid.list_file_path(root, name).read_text(),
           "chunks": [_file_key(path) for path in chunk_paths], "frames": [_file_key(path) for path in frame_files],
           "size": [height, width]}
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    cache_file = pathlib.Path(cache_dir) / f"{name}_frames_{height}x{width}_{digest}.npz"
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as cached:
            logging.info("%s: %d reference frames from cache %s", name, len(chunk_paths), cache_file)
            return cached["frames"]
    frames = reference_frames.load_reference_frames(chunk_paths, raw_dir, height=height, width=width)
    buffer = io.BytesIO()
    np.savez(buffer, frames=frames)
    atomic_write_bytes(cache_file, buffer.getvalue())
    logging.info("%s: %d reference frames cached to %s", name, len(chunk_paths), cache_file)
    return frames


def load_event_reid(data: ml_collections.ConfigDict, prepared: dict) -> dict:
    """Voxel grids (N, H, W, bins), labels, ids and cameras of the train, query, gallery [and sequences] splits.

    The "sequences" split (when prepared) uses the test label map, like query and gallery. Every split also
    gets "frames" (N, H, W, 1) float32 reference frames when the raw tree has frames.npz files (synthetic data).
    """
    root = pathlib.Path(prepared["root"])
    splits = event_reid.load_event_reid(
        root, num_bins=data.num_bins, height=data.height, width=data.width, cache_dir=prepared["cache_dir"],
    )
    if event_reid.list_file_path(root, SEQUENCES).is_file():
        splits[SEQUENCES] = event_reid.load_split(
            root, SEQUENCES, num_bins=data.num_bins, height=data.height, width=data.width,
            label_map=splits["query"]["label_map"], cache_dir=prepared["cache_dir"])
    raw_dir = prepared.get("raw_dir")  # workdirs prepared before reference frames existed have no such key
    if _has_frames(raw_dir):
        for name, split in splits.items():
            split["frames"] = _split_frames(split, name, root, raw_dir, height=data.height, width=data.width,
                                            cache_dir=prepared["cache_dir"])
    return splits


def attack_sequences(splits: dict, length: int) -> dict:
    """Time-ordered windows per test recording for the stateful attacks.

    Returns {"voxels" (S, L, H, W, C), ["frames" (S, L, H, W, 1)], "ids" (S,) str, "labels" (S,) int32 (test
    label map), "cams" (S,) int32, "consecutive" bool}, recordings sorted by (id, camera). Chunks come from the
    "sequences" split (consecutive chunks); without it (list-only data) from query + gallery, which are not
    consecutive. L = min(length, longest recording); recordings with fewer than L chunks are left out, the
    others give their first L chunks in chunk-index order.
    """
    if not is_positive_int(length):
        raise ValueError(f"attack_sequences: length must be an integer >= 1, got {length!r}.")
    consecutive = SEQUENCES in splits
    if consecutive:
        parts = [splits[SEQUENCES]]
    else:
        parts = [splits["query"], splits["gallery"]]
        logging.warning("No %r split (list-only data): attack sequences are built from query + gallery chunks, "
                        "which are not consecutive in time.", SEQUENCES)
    groups: dict[tuple[str, int], list[tuple[int, dict, int]]] = {}
    for part in parts:
        for row, relpath in enumerate(part["paths"]):
            _, _, index = event_reid.parse_chunk_name(relpath)
            groups.setdefault((str(part["ids"][row]), int(part["cams"][row])), []).append((index, part, row))
    for chunks in groups.values():
        chunks.sort(key=lambda chunk: chunk[0])
    length = min(int(length), max(len(chunks) for chunks in groups.values()))
    kept = [(key, chunks[:length]) for key, chunks in sorted(groups.items()) if len(chunks) >= length]

    def first_label(chunks):
        _, part, row = chunks[0]
        return part["labels"][row]

    def stacked(field):
        return np.stack([np.stack([part[field][row] for _, part, row in chunks]) for _, chunks in kept])

    result = {
        "voxels": stacked("voxels"),
        "ids": np.array([identity for (identity, _), _ in kept], dtype=str),
        "labels": np.array([first_label(chunks) for _, chunks in kept], np.int32),
        "cams": np.array([cam for (_, cam), _ in kept], np.int32),
        "consecutive": consecutive,
    }
    if all("frames" in part for part in parts):
        result["frames"] = stacked("frames")
    logging.info("Attack sequences: %d recordings x %d chunks (%s).", len(kept), length,
                 "consecutive" if consecutive else "query + gallery, not consecutive")
    return result
