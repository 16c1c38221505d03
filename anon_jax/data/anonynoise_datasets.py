"""Readers of AnonyNoise's real datasets (DVS-Gesture, SEE, EventReIDv2) and of its protocol files.

Each loader returns issue 7's common format: splits of "frames" float32 (N, H, W, 2n) raw event counts
(channel 2*time_bin + polarity) with int32 "target", "identity", "condition", "file_id", plus a JSON-able "info".
The plan_* functions give the same splits as labels and a frame reader, to read one example at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import jax
import numpy as np
from PIL import Image

from anon_jax.data import frame_augment
from anon_jax.data.event_reid import OFFICIAL_TEST_IDS, EventReidDataError, parse_chunk_name
from anon_jax.events import EventFormatError, read_event_text
from anon_jax.events.frames import event_frames_numpy

DVSG_QUERY_FILE = "dvsg_query_subset_ids.txt"
EVENTREID_QUERY_FILE = "eventreid_query_subset_ids.txt"
SEE_METADATA_FILE = "see_metadata.json"

DVSG_FOLDERS = {"train": "ibmGestureTrain", "test": "ibmGestureTest"}
DVSG_SENSOR_SIZE = 128
DVSG_CLASSES = (
    "hand clapping", "right hand wave", "left hand wave", "right arm clockwise", "right arm counter-clockwise",
    "left arm clockwise", "left arm counter-clockwise", "arm roll", "air drums", "air guitar", "other gestures",
)
SEE_SPLITS = ("train", "val", "query", "gallery")
# Pixel value counted by polarity channel 0 and 1. AnonyNoise concatenates (img == 1, img == 0) of the
# ToTensor image, so white pixels land in channel 0 and black pixels in channel 1.
SEE_POLARITY_PIXELS = (255, 0)
SEE_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

_DVSG_USER_FOLDER = re.compile(r"(?P<user>user\d+)_(?P<lighting>\w+)")
_DVSG_QUERY_PATH = re.compile(r"/?(?P<path>ibmGestureTest/(?P<user>user\d+)_\w+/\d+\.npy)")


class AnonyNoiseDatasetError(ValueError):
    """A dataset folder or protocol file does not match the layout AnonyNoise's readers expect."""


@dataclasses.dataclass(frozen=True)
class QuerySubset:
    """The unique entries of a query list in file order, and how many lines repeated an earlier entry."""

    entries: tuple[str, ...]
    duplicates: int


class SeeSequence(NamedTuple):
    """One entry of see_metadata.json: a sequence folder `event/<target_id>/<filename>` and its labels."""

    filename: str
    user_id: str
    target_id: str


# ----------------------------------------------------------------------------------------------
# Protocol files


def _protocol_lines(path: pathlib.Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace-separated fields) of the non-empty lines."""
    if not path.is_file():
        raise AnonyNoiseDatasetError(f"{path}: protocol file not found; pass the folder holding AnonyNoise's "
                                     "reid_utils files (query lists, see_metadata.json).")
    with open(path, encoding="utf-8") as lines:
        return [(number, line.split()) for number, line in enumerate(lines, start=1) if line.strip()]


def _unique(entries: Sequence[str]) -> QuerySubset:
    unique = tuple(dict.fromkeys(entries))
    return QuerySubset(unique, len(entries) - len(unique))


def read_dvsg_query_subset(path: str | os.PathLike) -> QuerySubset:
    """DVS-Gesture query files from lines `userNN pick /ibmGestureTest/userNN_<lighting>/<class>.npy`.

    Entries are relative paths such as `ibmGestureTest/user26_natural/10.npy`; the shipped list repeats 6 of
    its 66 lines, which count as `duplicates`.
    """
    path = pathlib.Path(path)
    entries = []
    for number, fields in _protocol_lines(path):
        match = _DVSG_QUERY_PATH.fullmatch(fields[-1])
        if len(fields) != 3 or match is None:
            raise AnonyNoiseDatasetError(
                f"{path}:{number}: expected `userNN <pick> /ibmGestureTest/userNN_<lighting>/<class>.npy`, "
                f"got {' '.join(fields)!r}.")
        if fields[0] != match["user"]:
            raise AnonyNoiseDatasetError(
                f"{path}:{number}: user column {fields[0]!r} does not match the file's folder {match['path']!r}.")
        entries.append(match["path"])
    return _unique(entries)


def read_eventreid_query_subset(path: str | os.PathLike) -> QuerySubset:
    """EventReIDv2 query chunk file names (`{ID}_c{cam}_{NNN}.txt`, one per line)."""
    path = pathlib.Path(path)
    entries = []
    for number, fields in _protocol_lines(path):
        try:
            if len(fields) != 1:
                raise EventReidDataError(f"expected one chunk file name per line, got {' '.join(fields)!r}")
            parse_chunk_name(fields[0])
        except EventReidDataError as error:
            raise AnonyNoiseDatasetError(f"{path}:{number}: {error}") from None
        entries.append(fields[0])
    return _unique(entries)


def read_see_metadata(path: str | os.PathLike) -> dict[str, tuple[SeeSequence, ...]]:
    """SEE splits train/val/query/gallery from see_metadata.json: lists of {filename, user_id, target_id}."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise AnonyNoiseDatasetError(f"{path}: SEE metadata not found; pass the folder holding see_metadata.json.")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnonyNoiseDatasetError(f"{path}: not valid JSON ({error}).") from None
    missing = [split for split in SEE_SPLITS if not isinstance(metadata, dict) or split not in metadata]
    if missing:
        raise AnonyNoiseDatasetError(f"{path}: needs an object with the lists {SEE_SPLITS}; missing {missing}.")
    splits = {}
    for split in SEE_SPLITS:
        sequences = []
        for index, entry in enumerate(metadata[split]):
            fields = [entry.get(name) if isinstance(entry, dict) else None for name in SeeSequence._fields]
            if not all(isinstance(field, str) and field and "/" not in field for field in fields):
                raise AnonyNoiseDatasetError(
                    f"{path}: {split}[{index}] = {entry!r}; each entry needs non-empty strings "
                    f"{SeeSequence._fields} (no '/').")
            sequences.append(SeeSequence(*fields))
        repeated = len(sequences) - len({sequence.filename for sequence in sequences})
        if repeated:
            raise AnonyNoiseDatasetError(f"{path}: split {split!r} lists {repeated} sequence(s) twice.")
        splits[split] = tuple(sequences)
    return splits


# ----------------------------------------------------------------------------------------------
# Shared helpers


def _label_map(values: Iterable[str]) -> dict[str, int]:
    return {value: index for index, value in enumerate(sorted(set(values)))}


class PlannedExample(NamedTuple):
    """One example of a split before its frames are read: its source (path under the dataset root) and labels."""

    source: str
    target: int
    identity: int
    condition: int
    file_id: int


LABELS = PlannedExample._fields[1:]


@dataclasses.dataclass(frozen=True)
class DatasetPlan:
    """A dataset's splits with every label known and no frames read, so that examples can be read one at a time.

    `read_frames(source)` gives a source's float32 (H, W, 2n) frames, the same in every split that lists it;
    `frame_shape` is that (H, W, 2n) and `info` the loader's JSON-able "info".
    """

    splits: dict[str, tuple[PlannedExample, ...]]
    read_frames: Callable[[str], np.ndarray]
    frame_shape: tuple[int, int, int]
    info: dict


def load_plan(plan: DatasetPlan) -> dict:
    """Every split of a plan in memory as issue 7's arrays, plus "info"; a source in several splits is read once."""
    frames = {}
    for examples in plan.splits.values():
        for example in examples:
            if example.source not in frames:
                frames[example.source] = plan.read_frames(example.source)
    loaded = {}
    for name, examples in plan.splits.items():
        loaded[name] = {
            "frames": np.stack([frames[example.source] for example in examples]).astype(np.float32, copy=False)
            if examples else np.zeros((0, *plan.frame_shape), np.float32),
            **{label: np.asarray([getattr(example, label) for example in examples], np.int32).reshape(-1)
               for label in LABELS},
        }
    loaded["info"] = plan.info
    return loaded


def _visible_entries(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(entry for entry in directory.iterdir() if not entry.name.startswith("."))


def _missing_query_error(list_path: pathlib.Path, missing: Sequence[str], folder: pathlib.Path):
    return AnonyNoiseDatasetError(
        f"{list_path}: {len(missing)} query entr{'y is' if len(missing) == 1 else 'ies are'} not in {folder}: "
        f"{list(missing)[:5]}{' ...' if len(missing) > 5 else ''}; the dataset copy is incomplete or laid out "
        "differently.")


# ----------------------------------------------------------------------------------------------
# DVS-Gesture


def _read_dvsg_events(path: pathlib.Path) -> tuple[np.ndarray, ...]:
    """(x, y, t, p) of one tonic DVS-Gesture file, cast like AnonyNoise: x, y int16, t int64 (ms), p 0/1."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise AnonyNoiseDatasetError(f"{path}: not a readable .npy array ({error}).") from None
    if array.dtype.names is not None and array.ndim == 1 and {"x", "y", "p", "t"} <= set(array.dtype.names):
        x, y, p, t = (array[name] for name in "xypt")
    elif array.dtype.names is None and array.ndim == 2 and array.shape[1] == 4 and array.dtype.kind in "biuf":
        x, y, p, t = array.T
    else:
        raise AnonyNoiseDatasetError(
            f"{path}: expected tonic's events, a structured array with fields x, y, p, t or an (N, 4) numeric "
            f"array with columns x, y, p, t; got dtype {array.dtype} and shape {array.shape}.")
    if not len(x):
        raise AnonyNoiseDatasetError(f"{path}: holds no events.")
    for name, values in (("x", x), ("y", y)):
        outside = np.flatnonzero((values < 0) | (values >= DVSG_SENSOR_SIZE))
        if len(outside):
            raise AnonyNoiseDatasetError(
                f"{path}: event {outside[0]} has {name}={values[outside[0]]}, outside the 128x128 DVS128 sensor.")
    t = t.astype(np.int64)
    earlier = np.flatnonzero(np.diff(t) < 0)
    if len(earlier):
        raise AnonyNoiseDatasetError(
            f"{path}: event {earlier[0] + 1} has t={t[earlier[0] + 1]} < t={t[earlier[0]]} of the one before; "
            "events must be sorted by time for the time bins.")
    return x.astype(np.int16), y.astype(np.int16), t, p.astype(bool).astype(np.uint8)


def _dvsg_files(root: pathlib.Path, folder: str) -> list[tuple[str, str, int]]:
    """(relative path, user, class) of every `folder/userNN_<lighting>/<class>.npy`, sorted by path."""
    directory = root / folder
    if not directory.is_dir():
        raise AnonyNoiseDatasetError(
            f"{directory}: folder not found; the DVS-Gesture root must hold {DVSG_FOLDERS['train']}/ and "
            f"{DVSG_FOLDERS['test']}/ in tonic's layout (userNN_<lighting>/<class>.npy).")
    files = []
    for user_folder in _visible_entries(directory):
        if not user_folder.is_dir():
            continue
        match = _DVSG_USER_FOLDER.fullmatch(user_folder.name)
        if match is None:
            raise AnonyNoiseDatasetError(
                f"{user_folder}: user folders are named userNN_<lighting>, e.g. user01_fluorescent_led.")
        for path in _visible_entries(user_folder):
            if path.suffix != ".npy":
                continue
            if not path.stem.isdigit() or int(path.stem) >= len(DVSG_CLASSES):
                raise AnonyNoiseDatasetError(
                    f"{path}: DVS-Gesture files are named by their class index 0..{len(DVSG_CLASSES) - 1}, "
                    "e.g. 3.npy.")
            files.append((f"{folder}/{user_folder.name}/{path.name}", match["user"], int(path.stem)))
    if not files:
        raise AnonyNoiseDatasetError(f"{directory}: no userNN_<lighting>/<class>.npy files found.")
    return files


def load_dvsgesture(root: str | os.PathLike, protocol_dir: str | os.PathLike, *, num_time_bins: int = 5) -> dict:
    """DVS-Gesture in tonic's layout as AnonyNoise splits it: train folder -> "train"; test folder -> "val" (all),
    "query" (dvsg_query_subset_ids.txt) and "gallery" (the rest).

    Frames are 128x128 with timestamps binned in ms as stored (AnonyNoise does not rescale them).
    target = condition = gesture class (file name), identity = user (sorted over both folders).
    """
    return load_plan(plan_dvsgesture(root, protocol_dir, num_time_bins=num_time_bins))


def plan_dvsgesture(root: str | os.PathLike, protocol_dir: str | os.PathLike, *,
                    num_time_bins: int = 5) -> DatasetPlan:
    """load_dvsgesture's splits before any events are read."""
    root = pathlib.Path(root)
    list_path = pathlib.Path(protocol_dir) / DVSG_QUERY_FILE
    query = read_dvsg_query_subset(list_path)
    files = {split: _dvsg_files(root, folder) for split, folder in DVSG_FOLDERS.items()}
    test_paths = [relpath for relpath, _, _ in files["test"]]
    missing = [entry for entry in query.entries if entry not in set(test_paths)]
    if missing:
        raise _missing_query_error(list_path, missing, root / DVSG_FOLDERS["test"])
    sources = sorted(test_paths + [relpath for relpath, _, _ in files["train"]])
    file_ids = {relpath: index for index, relpath in enumerate(sources)}
    identities = _label_map(user for split_files in files.values() for _, user, _ in split_files)
    shape = (DVSG_SENSOR_SIZE, DVSG_SENSOR_SIZE, 2 * num_time_bins)
    examples = {folder: tuple(PlannedExample(relpath, gesture, identities[user], gesture, file_ids[relpath])
                              for relpath, user, gesture in folder_files)
                for folder, folder_files in files.items()}
    in_query = set(query.entries)
    splits = {"train": examples["train"], "val": examples["test"],
              "query": tuple(example for example in examples["test"] if example.source in in_query),
              "gallery": tuple(example for example in examples["test"] if example.source not in in_query)}

    def read_frames(relpath: str) -> np.ndarray:
        x, y, t, p = _read_dvsg_events(root / relpath)
        return event_frames_numpy(x, y, t, p, num_time_bins=num_time_bins, height=DVSG_SENSOR_SIZE,
                                  width=DVSG_SENSOR_SIZE)

    classes = {name: index for index, name in enumerate(DVSG_CLASSES)}
    info = {
        "dataset": "dvsgesture", "num_time_bins": num_time_bins, "frame_size": list(shape[:2]),
        "label_maps": {"identity": identities, "target": classes, "condition": classes},
        "sources": sources, "query_list": str(list_path), "query_duplicates": query.duplicates,
    }
    return DatasetPlan(splits, read_frames, shape, info)


# ----------------------------------------------------------------------------------------------
# SEE


def _see_frame_order(path: pathlib.Path):
    # Numeric stems sort by value so that unpadded names (2.jpg before 10.jpg) keep their time order.
    return (0, int(path.stem), path.name) if path.stem.isdigit() else (1, 0, path.name)


def _read_gray(path: pathlib.Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except (OSError, ValueError) as error:
        raise AnonyNoiseDatasetError(f"{path}: cannot decode the image ({error}).") from None


def _see_sequence_frames(folder: pathlib.Path, num_time_bins: int) -> np.ndarray:
    """(H, W, 2n): the first floor(T/n)*n images (sorted by name), white/black pixels summed into n bins."""
    images = sorted((path for path in _visible_entries(folder) if path.suffix.lower() in SEE_IMAGE_SUFFIXES),
                    key=_see_frame_order)
    if len(images) < num_time_bins:
        raise AnonyNoiseDatasetError(
            f"{folder}: {len(images)} frame image(s) ({'/'.join(SEE_IMAGE_SUFFIXES)}), fewer than the "
            f"{num_time_bins} time bins.")
    images = images[: len(images) // num_time_bins * num_time_bins]
    pixels = []
    for path in images:
        gray = _read_gray(path)
        if pixels and gray.shape != pixels[0].shape:
            raise AnonyNoiseDatasetError(
                f"{path}: size {gray.shape[::-1]} (width, height) differs from {images[0].name}'s "
                f"{pixels[0].shape[::-1]}.")
        pixels.append(gray)
    pixels = np.stack(pixels)
    counts = np.stack([pixels == value for value in SEE_POLARITY_PIXELS], axis=-1)  # (T, H, W, 2)
    _, height, width, _ = counts.shape
    binned = counts.reshape(num_time_bins, -1, height, width, 2).sum(axis=1, dtype=np.int32)
    return binned.transpose(1, 2, 0, 3).reshape(height, width, 2 * num_time_bins).astype(np.float32)


def load_see(root: str | os.PathLike, protocol_dir: str | os.PathLike, *, num_time_bins: int = 5) -> dict:
    """SEE event-frame sequences `root/event/<emotion>/<sequence>/*.jpg` in the splits of see_metadata.json.

    Each sequence becomes n bins of summed polarity masks (white pixels -> channel 0, black -> 1, as in
    AnonyNoise). Deliberate fix: frames are taken in file-name order, where AnonyNoise used the unsorted
    os.listdir order. Images are decoded as grayscale. target = condition = emotion, identity = user_id
    (both sorted over all splits); file_id numbers the sequences, so query and gallery share it with val.
    """
    return load_plan(plan_see(root, protocol_dir, num_time_bins=num_time_bins))


def _see_source(sequence: SeeSequence) -> str:
    return f"event/{sequence.target_id}/{sequence.filename}"


def plan_see(root: str | os.PathLike, protocol_dir: str | os.PathLike, *, num_time_bins: int = 5) -> DatasetPlan:
    """load_see's splits: checks that every sequence folder exists and reads the first sequence listed, whose
    frame size all others must have."""
    root = pathlib.Path(root)
    metadata_path = pathlib.Path(protocol_dir) / SEE_METADATA_FILE
    metadata = read_see_metadata(metadata_path)
    event_dir = root / "event"
    if not event_dir.is_dir():
        raise AnonyNoiseDatasetError(f"{event_dir}: folder not found; the SEE root must hold "
                                     "event/<emotion>/<sequence>/NNNNN.jpg.")
    everything = [sequence for sequences in metadata.values() for sequence in sequences]
    identities = _label_map(sequence.user_id for sequence in everything)
    emotions = _label_map(sequence.target_id for sequence in everything)
    sources = sorted({_see_source(sequence) for sequence in everything})
    file_ids = {relpath: index for index, relpath in enumerate(sources)}
    splits = {}
    for split, sequences in metadata.items():
        for sequence in sequences:
            folder = root / _see_source(sequence)
            if not folder.is_dir():
                present = sorted(entry.name for entry in event_dir.iterdir() if entry.is_dir())
                raise AnonyNoiseDatasetError(
                    f"{folder}: sequence folder of {metadata_path.name} split {split!r} not found "
                    f"(emotion folders present: {present}).")
        splits[split] = tuple(
            PlannedExample(_see_source(sequence), emotions[sequence.target_id], identities[sequence.user_id],
                           emotions[sequence.target_id], file_ids[_see_source(sequence)])
            for sequence in sequences)
    first = _see_source(everything[0]) if everything else None
    shape = _see_sequence_frames(root / first, num_time_bins).shape if first else (0, 0, 2 * num_time_bins)

    def read_frames(relpath: str) -> np.ndarray:
        frames = _see_sequence_frames(root / relpath, num_time_bins)
        if frames.shape != shape:
            raise AnonyNoiseDatasetError(
                f"{root / relpath}: frames of {frames.shape[1]}x{frames.shape[0]} px differ from the "
                f"{shape[1]}x{shape[0]} px of the first sequence, {first}; all must match.")
        return frames

    info = {
        "dataset": "see", "num_time_bins": num_time_bins, "frame_size": list(shape[:2]),
        "label_maps": {"identity": identities, "target": emotions, "condition": emotions},
        "sources": sources, "metadata": str(metadata_path),
        "polarity_pixels": list(SEE_POLARITY_PIXELS), "frame_order": "sorted by file name",
    }
    return DatasetPlan(splits, read_frames, shape, info)


# ----------------------------------------------------------------------------------------------
# EventReIDv2


def _eventreid_chunks(root: pathlib.Path, folder: str) -> list[tuple[str, str, int]]:
    """(relative path, id, camera) of every chunk file `folder/{ID}_c{cam}_{NNN}.txt`, sorted by name."""
    directory = root / folder
    if not directory.is_dir():
        raise AnonyNoiseDatasetError(
            f"{directory}: folder not found; the EventReIDv2 root must hold train/ and test/ chunk files as "
            "written by AnonyNoise's split_train_test.py.")
    test_ids = {int(identity) for identity in OFFICIAL_TEST_IDS}
    chunks = []
    for path in _visible_entries(directory):
        if path.suffix != ".txt":
            continue
        try:
            identity, camera, _ = parse_chunk_name(path)
        except EventReidDataError as error:
            raise AnonyNoiseDatasetError(str(error)) from None
        if not identity.isdigit() or (int(identity) in test_ids) != (folder == "test"):
            raise AnonyNoiseDatasetError(
                f"{path}: id {identity!r} does not belong in {folder}/; AnonyNoise's test ids are "
                f"{sorted(test_ids)} and every other id is train.")
        chunks.append((f"{folder}/{path.name}", identity, camera))
    if not chunks:
        raise AnonyNoiseDatasetError(f"{directory}: no chunk files named like '001_c1_048.txt' found.")
    return chunks


def _eventreid_square_frames(path: pathlib.Path, num_time_bins: int) -> np.ndarray:
    """(S, S, 2n) frames over the chunk's event bounding box, zero-padded to a square as AnonyNoise does."""
    try:
        stream = read_event_text(path)
    except EventFormatError as error:
        raise AnonyNoiseDatasetError(str(error)) from None
    # AnonyNoise casts the float64 timestamps to int64 (truncation) before binning.
    t = stream.t.astype(np.int64)
    x, y = stream.x - stream.x.min(), stream.y - stream.y.min()
    height, width = int(y.max()) + 1, int(x.max()) + 1
    frames = event_frames_numpy(x, y, t, stream.p, num_time_bins=num_time_bins, height=height, width=width)
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return np.pad(frames, ((top, side - height - top), (left, side - width - left), (0, 0)))


@functools.lru_cache(maxsize=None)
def _jitted_resize(method: str) -> Callable:
    resize = {"nearest": frame_augment.resize_nearest,
              "bilinear_antialias": frame_augment.resize_bilinear_antialias}[method]
    return jax.jit(resize, static_argnums=(1, 2))


def load_eventreidv2(root: str | os.PathLike, protocol_dir: str | os.PathLike, *, num_time_bins: int = 5,
                     size: int = 304) -> dict:
    """EventReIDv2 chunks `root/{train,test}/{ID}_c{cam}_{NNN}.txt` (rows `t x y p`) as AnonyNoise reads them.

    The folders are taken as split_train_test.py leaves them (train: every chunk of the 22 train ids; test:
    every 5th chunk of ids 2, 5, ..., 32); nothing is subsampled here. Splits: "train"; "query" = the chunks in
    eventreid_query_subset_ids.txt; "gallery" = the other test chunks; no "val" (no target task). Empty chunks
    are skipped like AnonyNoise (listed in info). Each chunk's frames cover its event bounding box, are
    zero-padded to a square and resized to size x size: nearest for train, bilinear with antialias for query
    and gallery, as AnonyNoise's transforms do. target = -1, condition = camera, identity sorted over all ids.
    """
    return load_plan(plan_eventreidv2(root, protocol_dir, num_time_bins=num_time_bins, size=size))


def _is_blank(path: pathlib.Path) -> bool:
    """Whether a file holds only whitespace; reading stops at the first block with anything else."""
    with open(path, "rb") as file:
        return not any(block.strip() for block in iter(lambda: file.read(1 << 16), b""))


def plan_eventreidv2(root: str | os.PathLike, protocol_dir: str | os.PathLike, *, num_time_bins: int = 5,
                     size: int = 304) -> DatasetPlan:
    """load_eventreidv2's splits; finds the empty chunks (reading each chunk up to its first event)."""
    root = pathlib.Path(root)
    list_path = pathlib.Path(protocol_dir) / EVENTREID_QUERY_FILE
    query = read_eventreid_query_subset(list_path)
    chunks = {folder: _eventreid_chunks(root, folder) for folder in ("train", "test")}
    test_names = {pathlib.PurePath(relpath).name for relpath, _, _ in chunks["test"]}
    missing = [entry for entry in query.entries if entry not in test_names]
    if missing:
        raise _missing_query_error(list_path, missing, root / "test")
    all_chunks = chunks["train"] + chunks["test"]
    identities = _label_map(identity for _, identity, _ in all_chunks)
    cameras = {f"c{camera}": index for index, camera in enumerate(sorted({camera for _, _, camera in all_chunks}))}
    query_names = set(query.entries)
    members = {"train": chunks["train"],
               "query": [chunk for chunk in chunks["test"] if pathlib.PurePath(chunk[0]).name in query_names],
               "gallery": [chunk for chunk in chunks["test"] if pathlib.PurePath(chunk[0]).name not in query_names]}
    resize_methods = {"train": "nearest", "query": "bilinear_antialias", "gallery": "bilinear_antialias"}
    sources, empty, method_of = [], [], {}
    splits = {}
    for split, split_chunks in members.items():
        kept = []
        for relpath, identity, camera in split_chunks:
            if _is_blank(root / relpath):
                empty.append(relpath)
                continue
            kept.append(PlannedExample(relpath, -1, identities[identity], cameras[f"c{camera}"], len(sources)))
            sources.append(relpath)
            method_of[relpath] = resize_methods[split]
        splits[split] = tuple(kept)

    def read_frames(relpath: str) -> np.ndarray:
        square = _eventreid_square_frames(root / relpath, num_time_bins)
        return np.asarray(_jitted_resize(method_of[relpath])(square[None], size, size))[0]

    info = {
        "dataset": "eventreidv2", "num_time_bins": num_time_bins, "frame_size": [size, size],
        "label_maps": {"identity": identities, "target": {}, "condition": cameras},
        "sources": sources, "empty_chunks": empty, "query_list": str(list_path),
        "query_duplicates": query.duplicates, "resize": resize_methods,
    }
    return DatasetPlan(splits, read_frames, (size, size, 2 * num_time_bins), info)
