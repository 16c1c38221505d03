"""Event-ReId dataset: cutting raw streams into chunks, the official train/query/gallery split,
list files, and loading a split as voxel grids (NHWC) with contiguous labels.

Command line: `python -m anon_jax.data.event_reid {partition,split,lists} --help`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import multiprocessing
import os
import pathlib
import re
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from anon_jax import events
from anon_jax.files import atomic_target

logger = logging.getLogger(__name__)

# data/README.md of the original repository; test ids are every third id starting at 2.
OFFICIAL_TRAIN_IDS = (
    "001", "003", "004", "006", "007", "009", "010", "012", "013", "015", "016",
    "018", "019", "021", "022", "024", "025", "027", "028", "030", "031", "033",
)
OFFICIAL_TEST_IDS = ("002", "005", "008", "011", "014", "017", "020", "023", "026", "029", "032")

LIST_NAMES = ("train", "query", "gallery")
_CHUNK_NAME = re.compile(r"^(?P<id>.+)_c(?P<cam>\d+)_(?P<index>\d+)$")
_CAMERA_DIR = re.compile(r"^cam(?P<cam>\d+)$")
# Bump when the cached arrays change meaning, so stale caches are not reused.
_CACHE_FORMAT = 1


class EventReidDataError(ValueError):
    """Malformed or missing Event-ReId files (list files, chunk names, directory layout)."""


# ----------------------------------------------------------------------------------------------
# Partitioning


def partition_stream(
    stream: events.EventStream,
    *,
    mode: str = "time",
    duration: float | None = None,
    count: int | None = None,
    drop_boundary_event: bool = True,
) -> list[events.EventStream]:
    """Cuts a stream into chunks exactly as the original `data/event_partition.py` does.

    mode="time" (constant duration T = `duration`, in the file's own timestamp unit): the window
    ends at `end = t0 + T`; an event with `t <= end` joins the current chunk; the first event with
    `t > end` closes the chunk and moves `end` on by T only once, even across a gap longer than T.
    mode="count" (N = `count`): the window ends at event index N, moved on by N at each boundary.

    drop_boundary_event=True is the original behaviour: the event that closes a chunk is written
    nowhere. Hence with "count" the first chunk holds N+1 events (indices 0..N) and later ones N-1,
    and with "time" every event arriving after a gap closes one (then empty) chunk and is lost
    until `end` catches up. Chunks may therefore be empty, including the last one, which the
    original always opens; they are returned so that list position i is chunk i of the original.
    drop_boundary_event=False keeps the closing event as the first event of the next chunk
    (count mode: plain N-event chunks, the last one shorter); no chunk is empty then.
    """
    n = len(stream)
    if n == 0:
        raise EventReidDataError(f"{stream.source or 'event stream'}: no events to partition.")
    if mode == "time":
        if duration is None or not duration > 0:
            raise EventReidDataError(f"mode='time' needs duration > 0, got {duration!r}.")
        bounds = _time_chunk_bounds(stream.t, float(duration), drop_boundary_event)
    elif mode == "count":
        if count is None or int(count) != count or count < 1:
            raise EventReidDataError(f"mode='count' needs an integer count >= 1, got {count!r}.")
        bounds = _count_chunk_bounds(n, int(count), drop_boundary_event)
    else:
        raise EventReidDataError(f"mode must be 'time' or 'count', got {mode!r}.")
    name = stream.source or "stream"
    return [
        events.EventStream(
            x=stream.x[a:b], y=stream.y[a:b], t=stream.t[a:b], p=stream.p[a:b],
            height=stream.height, width=stream.width, source=f"{name} [chunk {i}]",
        )
        for i, (a, b) in enumerate(bounds)
    ]


def _time_chunk_bounds(t: np.ndarray, duration: float, drop: bool) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the constant-time chunks (t sorted, so searchsorted is exact)."""
    n = len(t)
    end = t[0] + duration
    start = 0
    bounds = []
    while True:
        # A kept boundary event opens the next chunk whatever its t, so the search starts after it
        # (for the first chunk this changes nothing: t[0] <= end).
        first_free = start if drop else start + 1
        stop = max(first_free, int(np.searchsorted(t, end, side="right")))
        bounds.append((start, stop))
        if stop >= n:
            return bounds
        end += duration
        start = stop + 1 if drop else stop


def _count_chunk_bounds(n: int, count: int, drop: bool) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the constant-count chunks."""
    if not drop:
        return [(a, min(a + count, n)) for a in range(0, n, count)]
    bounds = []
    start, last_index = 0, count  # the original keeps index i while i <= last_index
    while True:
        stop = min(last_index + 1, n)
        bounds.append((start, stop))
        if stop >= n:
            return bounds
        start = stop + 1  # the event at index `stop` closed the chunk and is dropped
        last_index += count


def chunk_file_name(identity: str, cam: int, index: int) -> str:
    """`<ID>_c<cam>_<NNN>.txt`, the chunk naming of the original scripts."""
    return f"{identity}_c{cam}_{index:03d}.txt"


def parse_chunk_name(name: str | os.PathLike) -> tuple[str, int, int]:
    """`(id, camera, chunk index)` from a chunk file name such as `train/001_c1_048.txt`."""
    stem = pathlib.PurePath(name).name
    if stem.endswith(".txt"):
        stem = stem[: -len(".txt")]
    match = _CHUNK_NAME.match(stem)
    if match is None:
        raise EventReidDataError(
            f"{name}: not an Event-ReId chunk name; expected '<ID>_c<camera>_<index>.txt', "
            "e.g. '001_c1_048.txt'.")
    return match["id"], int(match["cam"]), int(match["index"])


def _raw_streams(input_dir: pathlib.Path, ids: Iterable[str] | None) -> list[tuple[str, int, pathlib.Path]]:
    """(id, camera, events.txt path) for every `<ID>/<camXX>/events.txt` under input_dir, sorted."""
    if not input_dir.is_dir():
        raise EventReidDataError(f"{input_dir}: raw Event-ReId folder not found.")
    wanted = None if ids is None else set(ids)
    found = []
    for id_dir in sorted(p for p in input_dir.iterdir() if p.is_dir()):
        if wanted is not None and id_dir.name not in wanted:
            continue
        for cam_dir in sorted(p for p in id_dir.iterdir() if p.is_dir()):
            match = _CAMERA_DIR.match(cam_dir.name)
            if match is None:
                continue
            path = cam_dir / "events.txt"
            if not path.is_file():
                raise EventReidDataError(f"{path}: missing; each <ID>/<camXX>/ folder needs an events.txt.")
            found.append((id_dir.name, int(match["cam"]), path))
    if not found:
        raise EventReidDataError(
            f"{input_dir}: no <ID>/<camXX>/events.txt files found (expected e.g. 008/cam03/events.txt).")
    if wanted is not None:
        missing = wanted - {identity for identity, _, _ in found}
        if missing:
            raise EventReidDataError(f"{input_dir}: no recordings for ids {sorted(missing)}.")
    return found


def partition_dataset(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    mode: str = "time",
    duration: float | None = None,
    count: int | None = None,
    first_index: int = 1,
    drop_boundary_event: bool = True,
    write_empty: bool = False,
    ids: Iterable[str] | None = None,
) -> dict[str, int]:
    """Partitions every `<ID>/<camXX>/events.txt` into `out_dir/<ID>/<camXX>/<ID>_c<cam>_<NNN>.txt`.

    Rows are `t x y p` without header, each file written atomically. NNN counts from
    `first_index` (1 in the original script; the public sample is 0-based). Empty chunks (see
    `partition_stream`) are not written unless `write_empty`, since they cannot be voxelised;
    the numbering still counts them, so names match the original's files. Returns counts.
    """
    if first_index not in (0, 1):
        raise EventReidDataError(f"first_index must be 0 or 1, got {first_index!r}.")
    input_dir, out_dir = pathlib.Path(input_dir), pathlib.Path(out_dir)
    streams = _raw_streams(input_dir, ids)
    totals = {"streams": 0, "chunks_written": 0, "empty_chunks_skipped": 0, "events_in": 0,
              "events_written": 0}
    started = time.monotonic()
    for k, (identity, cam, path) in enumerate(streams, 1):
        stream = events.read_event_text(path)
        chunks = partition_stream(stream, mode=mode, duration=duration, count=count,
                                  drop_boundary_event=drop_boundary_event)
        target = out_dir / identity / path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        written = skipped = kept_events = 0
        for i, chunk in enumerate(chunks):
            if len(chunk) == 0 and not write_empty:
                skipped += 1
                continue
            events.write_event_text(target / chunk_file_name(identity, cam, i + first_index), chunk,
                                    header=False)
            written += 1
            kept_events += len(chunk)
        totals["streams"] += 1
        totals["chunks_written"] += written
        totals["empty_chunks_skipped"] += skipped
        totals["events_in"] += len(stream)
        totals["events_written"] += kept_events
        logger.info("[%d/%d] %s/%s: %d events -> %d chunks (%d empty skipped, %d events dropped), %.1fs",
                    k, len(streams), identity, path.parent.name, len(stream), written, skipped,
                    len(stream) - kept_events, time.monotonic() - started)
    return totals


# ----------------------------------------------------------------------------------------------
# Train / query / gallery split


def official_style_split(num_ids: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train ids, test ids) for ids 1..num_ids as 3-digit strings; test = every third id from 2.

    With num_ids=33 this is the official Event-ReId split; smaller values serve synthetic data.
    """
    if num_ids < 2:
        raise EventReidDataError(f"num_ids must be >= 2 to have both train and test ids, got {num_ids}.")
    names = [f"{i:03d}" for i in range(1, num_ids + 1)]
    test = tuple(names[1::3])
    train = tuple(name for name in names if name not in test)
    return train, test


def _collect_chunks(chunk_dir: pathlib.Path) -> dict[tuple[str, int], list[tuple[int, pathlib.Path]]]:
    """Chunk files under chunk_dir (any depth) grouped by (id, camera), sorted by chunk index."""
    if not chunk_dir.is_dir():
        raise EventReidDataError(f"{chunk_dir}: chunk folder not found; run the 'partition' step first.")
    groups: dict[tuple[str, int], list[tuple[int, pathlib.Path]]] = {}
    seen: dict[str, pathlib.Path] = {}
    for path in sorted(chunk_dir.rglob("*.txt")):
        if not _CHUNK_NAME.match(path.stem):
            continue
        if path.name in seen:
            raise EventReidDataError(f"{path}: the chunk name also exists as {seen[path.name]}; "
                                     "chunk names must be unique.")
        seen[path.name] = path
        identity, cam, index = parse_chunk_name(path)
        groups.setdefault((identity, cam), []).append((index, path))
    if not groups:
        raise EventReidDataError(f"{chunk_dir}: no chunk files named like '001_c1_048.txt' found.")
    for chunks in groups.values():
        chunks.sort()  # numeric order: the original's name order breaks past index 999
    return groups


def write_list_file(path: str | os.PathLike, entries: Iterable[tuple[str, str]]) -> None:
    """Writes `<relpath> <label>` lines atomically."""
    path = pathlib.Path(path)
    with atomic_target(path) as tmp:
        tmp.write_text("".join(f"{rel} {label}\n" for rel, label in entries))


def split_dataset(
    chunk_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    train_ids: Sequence[str] = OFFICIAL_TRAIN_IDS,
    test_ids: Sequence[str] = OFFICIAL_TEST_IDS,
    gallery_every: int = 5,
    seed: int = 0,
) -> dict[str, int]:
    """Applies the official protocol and writes `train/`, `test/` and the three list files.

    Train ids: every chunk goes to `train/`. Test ids: chunks at positions 0, k, 2k, ...
    (k = gallery_every) of each (id, camera) in index order go to `test/`, as in
    `split_train_test.py`. Queries: one chunk per (id, camera) drawn with a seeded RNG from those
    test chunks (the README draws queries "from the test set"); the gallery is the remaining test
    chunks, so no query is in the gallery, as in the public sample. Labels are the id strings.
    """
    train_ids, test_ids = [str(i) for i in train_ids], [str(i) for i in test_ids]
    overlap = set(train_ids) & set(test_ids)
    if overlap:
        raise EventReidDataError(f"ids {sorted(overlap)} are in both train_ids and test_ids.")
    if gallery_every < 1:
        raise EventReidDataError(f"gallery_every must be >= 1, got {gallery_every}.")
    chunk_dir, out_dir = pathlib.Path(chunk_dir), pathlib.Path(out_dir)
    groups = _collect_chunks(chunk_dir)
    present = {identity for identity, _ in groups}
    missing = (set(train_ids) | set(test_ids)) - present
    if missing:
        raise EventReidDataError(f"{chunk_dir}: no chunks for ids {sorted(missing)}.")
    ignored = sorted(present - set(train_ids) - set(test_ids))
    if ignored:
        logger.warning("%s: ids %s are in neither train_ids nor test_ids; skipped.", chunk_dir, ignored)

    rng = np.random.default_rng(seed)
    train, query, gallery = [], [], []
    for (identity, _), chunks in sorted(groups.items()):
        if identity in train_ids:
            train += [(path, identity) for _, path in chunks]
        elif identity in test_ids:
            test_chunks = [path for _, path in chunks[::gallery_every]]
            pick = int(rng.integers(len(test_chunks)))
            query.append((test_chunks[pick], identity))
            gallery += [(path, identity) for j, path in enumerate(test_chunks) if j != pick]

    for sub in ("train", "test"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    lists = {"train": [], "query": [], "gallery": []}
    for list_name, sub, entries in (("train", "train", train), ("query", "test", query),
                                    ("gallery", "test", gallery)):
        for path, identity in entries:
            with atomic_target(out_dir / sub / path.name) as tmp:
                shutil.copyfile(path, tmp)
            lists[list_name].append((f"{sub}/{path.name}", identity))
        write_list_file(out_dir / f"{list_name}_list.txt", lists[list_name])
        logger.info("%s: %d chunks", list_name, len(entries))
    return {name: len(entries) for name, entries in lists.items()}


# ----------------------------------------------------------------------------------------------
# List files and loading


def _read_list_lines(path: pathlib.Path) -> list[tuple[int, str, str]]:
    """(1-based line number, relpath, label) of every non-blank line of a list file."""
    if not path.is_file():
        raise EventReidDataError(f"{path}: list file not found; expected '<relpath> <label>' lines "
                                 "(e.g. 'train/001_c1_048.txt 001').")
    entries = []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise EventReidDataError(
                    f"{path}:{line_number}: expected '<relpath> <label>', got {line.rstrip()!r}.")
            entries.append((line_number, fields[0], fields[1]))
    if not entries:
        raise EventReidDataError(f"{path}: list file has no entries.")
    return entries


def read_list_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """`[(relpath, label), ...]` from a `<relpath> <label>` list file; blank lines and extra spaces ok."""
    return [(relpath, label) for _, relpath, label in _read_list_lines(pathlib.Path(path))]


def build_label_map(ids: Iterable[str]) -> dict[str, int]:
    """Contiguous labels 0..K-1 for the sorted distinct ids."""
    return {identity: label for label, identity in enumerate(sorted(set(ids)))}


def list_file_path(root: str | os.PathLike, list_name: str) -> pathlib.Path:
    """`root/<name>_list.txt` for a split name, or `root/<list_name>` for a file name."""
    name = list_name if list_name.endswith(".txt") else f"{list_name}_list.txt"
    return pathlib.Path(root) / name


def voxelize_chunk_file(path: str | os.PathLike, *, num_bins: int, height: int, width: int) -> np.ndarray:
    """The original per-chunk pipeline on one chunk file: float32 (height, width, num_bins)."""
    stream = events.read_event_text(path)
    grid = events.chunk_voxel_grid(stream, num_bins=num_bins, height=height, width=width)
    return np.ascontiguousarray(np.transpose(grid, (1, 2, 0)), dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class _ListEntry:
    relpath: str
    identity: str
    cam: int
    path: pathlib.Path


def _resolve_entries(list_path: pathlib.Path) -> list[_ListEntry]:
    root = list_path.parent
    resolved = []
    for line_number, relpath, label in _read_list_lines(list_path):
        path = root / relpath
        if not path.is_file():
            raise EventReidDataError(f"{list_path}:{line_number}: chunk file {path} is missing; fix the "
                                     "list or restore the file.")
        try:
            _, cam, _ = parse_chunk_name(relpath)
        except EventReidDataError as error:
            raise EventReidDataError(f"{list_path}:{line_number}: {error}") from None
        resolved.append(_ListEntry(relpath, label, cam, path))
    return resolved


def _cache_path(cache_dir: pathlib.Path, list_path: pathlib.Path, entries: Sequence[_ListEntry],
                label_map: Mapping[str, int], num_bins: int, height: int, width: int) -> pathlib.Path:
    """Cache file named by a digest of the list, the chunk files' size/mtime and the voxel params."""
    digest = hashlib.sha256()
    digest.update(list_path.read_bytes())
    stats = []
    for entry in entries:
        st = entry.path.stat()
        stats.append([entry.relpath, st.st_size, st.st_mtime_ns])
    key = {"format": _CACHE_FORMAT, "root": str(list_path.parent.resolve()), "files": stats,
           "label_map": sorted(label_map.items()), "voxel": [num_bins, height, width]}
    digest.update(json.dumps(key).encode())
    return cache_dir / f"{list_path.stem}_{num_bins}x{height}x{width}_{digest.hexdigest()[:16]}.npz"


def _save_npz_atomic(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no '.npz'
        np.savez(f, **arrays)


def _voxelize_files(paths: Sequence[pathlib.Path], *, num_bins: int, height: int, width: int,
                    num_workers: int, name: str) -> np.ndarray:
    """Voxel grids of chunk files, in order, in this process or in `num_workers` spawned ones."""
    voxels = np.empty((len(paths), height, width, num_bins), np.float32)
    convert = functools.partial(voxelize_chunk_file, num_bins=num_bins, height=height, width=width)
    with contextlib.ExitStack() as stack:
        if num_workers > 0:
            # spawn, not fork: the parent may already run JAX threads, which fork can deadlock.
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                num_workers, mp_context=multiprocessing.get_context("spawn")))
            grids = pool.map(convert, paths, chunksize=max(1, min(64, len(paths) // (4 * num_workers))))
        else:
            grids = map(convert, paths)
        started = last_report = time.monotonic()
        for i, grid in enumerate(grids):
            voxels[i] = grid
            now = time.monotonic()
            if now - last_report > 10 or i + 1 == len(paths):
                last_report = now
                rate = (i + 1) / max(now - started, 1e-9)
                logger.info("%s: %d/%d chunks, %.0f chunks/s, ETA %.0fs", name, i + 1, len(paths), rate,
                            (len(paths) - i - 1) / rate)
    return voxels


def load_split(
    root: str | os.PathLike,
    list_name: str,
    *,
    num_bins: int,
    height: int,
    width: int,
    label_map: Mapping[str, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> dict[str, object]:
    """Loads the chunks named by `root/<list_name>_list.txt` as voxel grids.

    Returns dict(voxels float32 (N, height, width, num_bins), labels int32, ids (str, the list's
    label column), cams int32 (from the file names), paths (str, as in the list), label_map).
    Labels index `label_map` (default: contiguous 0..K-1 over this list's sorted ids); pass the
    same map to the query and gallery splits so their labels agree; evaluation uses ids and cams.
    With `cache_dir`, results are stored in / read from an .npz keyed by the list file, the chunk
    files' sizes and mtimes, the label map and the voxel parameters. `num_workers` > 0 voxelises
    in that many spawned processes (about 8 ms of CPU per 3000-event chunk at 384x192; the caller's
    script needs the usual `if __name__ == "__main__":` guard).
    """
    list_path = list_file_path(root, list_name)
    entries = _resolve_entries(list_path)
    if label_map is None:
        label_map = build_label_map(entry.identity for entry in entries)
    for entry in entries:
        if entry.identity not in label_map:
            raise EventReidDataError(
                f"{list_path}: {entry.relpath} has id {entry.identity!r}, which is not in label_map "
                f"(ids {sorted(label_map)[:5]}...); pass label_map=None to number this list's own ids.")
    label_map = dict(label_map)

    cache_file = None
    if cache_dir is not None:
        cache_file = _cache_path(pathlib.Path(cache_dir), list_path, entries, label_map, num_bins, height, width)
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as cached:
                logger.info("%s: %d chunks from cache %s", list_path, len(entries), cache_file)
                return {"voxels": cached["voxels"], "labels": cached["labels"], "ids": cached["ids"],
                        "cams": cached["cams"], "paths": cached["paths"], "label_map": label_map}

    voxels = _voxelize_files([e.path for e in entries], num_bins=num_bins, height=height, width=width,
                             num_workers=num_workers, name=list_path.name)
    result = {
        "voxels": voxels,
        "labels": np.array([label_map[e.identity] for e in entries], np.int32),
        "ids": np.array([e.identity for e in entries], dtype=str),
        "cams": np.array([e.cam for e in entries], np.int32),
        "paths": np.array([e.relpath for e in entries], dtype=str),
    }
    if cache_file is not None:
        _save_npz_atomic(cache_file, result)
        logger.info("%s: cached to %s", list_path, cache_file)
    result["label_map"] = label_map
    return result


def load_event_reid(
    root: str | os.PathLike, *, num_bins: int, height: int, width: int,
    cache_dir: str | os.PathLike | None = None, num_workers: int = 0,
) -> dict[str, dict[str, object]]:
    """Train, query and gallery splits; train labels over train ids, query/gallery over test ids."""
    train = load_split(root, "train", num_bins=num_bins, height=height, width=width, cache_dir=cache_dir,
                       num_workers=num_workers)
    test_ids = [label for name in ("query", "gallery")
                for _, label in read_list_file(list_file_path(root, name))]
    test_map = build_label_map(test_ids)
    splits = {"train": train}
    for name in ("query", "gallery"):
        splits[name] = load_split(root, name, num_bins=num_bins, height=height, width=width,
                                  label_map=test_map, cache_dir=cache_dir, num_workers=num_workers)
    return splits


# ----------------------------------------------------------------------------------------------
# Command line


def _summarize_lists(root: pathlib.Path) -> str:
    out = io.StringIO()
    for name in LIST_NAMES:
        list_path = list_file_path(root, name)
        entries = _resolve_entries(list_path)
        ids = sorted({e.identity for e in entries})
        cams = sorted({e.cam for e in entries})
        out.write(f"{list_path}: {len(entries)} chunks, {len(ids)} ids ({', '.join(ids)}), cameras {cams}\n")
    return out.getvalue()


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m anon_jax.data.event_reid",
        description="Prepare the Event-ReId dataset: partition raw streams into chunks, split them "
                    "into train/query/gallery with list files, or check existing list files.")
    sub = parser.add_subparsers(dest="command", required=True)

    part = sub.add_parser(
        "partition", help="cut <ID>/<camXX>/events.txt streams into <ID>_c<cam>_<NNN>.txt chunks",
        description="Cut every <ID>/<camXX>/events.txt under INPUT_DIR into chunk files "
                    "OUT_DIR/<ID>/<camXX>/<ID>_c<cam>_<NNN>.txt (rows 't x y p'), with the semantics "
                    "of the original event_partition.py.")
    part.add_argument("--input_dir", required=True, help="raw Event_ReId folder holding <ID>/<camXX>/events.txt")
    part.add_argument("--out_dir", required=True, help="where the chunk tree is written")
    part.add_argument("--mode", choices=("time", "count"), default="time",
                      help="constant time window or constant event count (default: time)")
    part.add_argument("--duration", type=float, default=33.3,
                      help="time window in the files' own timestamp unit (default 33.3, the original's; "
                           "the public sample's chunks span about 333 units)")
    part.add_argument("--count", type=int, default=5000, help="events per chunk in count mode (default 5000)")
    part.add_argument("--first_index", type=int, choices=(0, 1), default=1,
                      help="number of the first chunk: 1 as the original script, 0 as the public sample")
    part.add_argument("--keep_boundary_events", action="store_true",
                      help="put the event that closes a chunk into the next chunk instead of dropping it "
                           "(the original drops it)")
    part.add_argument("--write_empty", action="store_true",
                      help="also write empty chunks (the original does; they cannot be voxelised)")
    part.add_argument("--ids", nargs="*", help="only these ids (default: all)")

    split = sub.add_parser(
        "split", help="official train/query/gallery split with list files",
        description="Copy chunks of train ids to OUT_DIR/train/, every GALLERY_EVERY-th chunk per "
                    "(id, camera) of test ids to OUT_DIR/test/, draw one query per (id, camera) from "
                    "those (seeded), and write train_list.txt, query_list.txt, gallery_list.txt.")
    split.add_argument("--chunk_dir", required=True, help="folder with chunk files (any depth)")
    split.add_argument("--out_dir", required=True, help="dataset root to write (train/, test/, lists)")
    split.add_argument("--num_ids", type=int, default=None,
                       help="use the every-third-id split over ids 1..NUM_IDS instead of the official one")
    split.add_argument("--gallery_every", type=int, default=5, help="keep every k-th test chunk (default 5)")
    split.add_argument("--seed", type=int, default=0, help="seed of the query draw (default 0)")

    lists = sub.add_parser("lists", help="check list files and summarise a dataset root",
                           description="Read ROOT/{train,query,gallery}_list.txt, check every chunk "
                                       "exists and print counts, ids and cameras.")
    lists.add_argument("--root", required=True, help="dataset root holding the list files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "partition":
            totals = partition_dataset(
                args.input_dir, args.out_dir, mode=args.mode, duration=args.duration, count=args.count,
                first_index=args.first_index, drop_boundary_event=not args.keep_boundary_events,
                write_empty=args.write_empty, ids=args.ids)
            print(json.dumps(totals))
        elif args.command == "split":
            if args.num_ids is None:
                train_ids, test_ids = OFFICIAL_TRAIN_IDS, OFFICIAL_TEST_IDS
            else:
                train_ids, test_ids = official_style_split(args.num_ids)
            counts = split_dataset(args.chunk_dir, args.out_dir, train_ids=train_ids, test_ids=test_ids,
                                   gallery_every=args.gallery_every, seed=args.seed)
            print(json.dumps(counts))
        else:
            print(_summarize_lists(pathlib.Path(args.root)), end="")
    except ValueError as error:  # EventReidDataError and events.EventFormatError: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
