"""Pedestrian-image ReId datasets read from a local folder: Market-1501, MSMT17 (Market-style or MSMT17_V1
list files), CUHK03 new protocol (detected, labelled), the seeded 80/20 train/validation split tool and its
layout. Command line: `python -m anon_jax.data.image_reid {info,split,extract_cuhk03} --help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import shutil
import sys
from collections.abc import Sequence

import h5py
import numpy as np
import scipy.io
from PIL import Image

from anon_jax.files import atomic_directory, atomic_write_text

MARKET_SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
VALIDATION_SPLIT_FOLDERS = {"val_query": "bounding_box_val_query", "val_gallery": "bounding_box_val_gallery"}
MSMT17_LIST_FILES = {"train": ("train", ("list_train.txt", "list_val.txt")),
                     "query": ("test", ("list_query.txt",)), "gallery": ("test", ("list_gallery.txt",))}
CUHK03_KINDS = ("detected", "labeled")
DATASETS = ("market1501", "market1501_val", "msmt17", "msmt17_val", "cuhk03_detected", "cuhk03_labeled")
SPLIT_MANIFEST = "validation_split.json"
JUNK_PID = -1

# Market-style names start `PPPP_cC`: pid (-1 = junk) then the 1-based camera. The original's regex is
# `([-\d]+)_c(\d)`, whose single digit reads an MSMT17 camera `c14` as camera 1.
_MARKET_NAME = re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)")
_MARKET_NAME_SINGLE_DIGIT = re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d)")
_CUHK03_NAME = re.compile(r"^(?P<campair>\d+)_(?P<pid>\d+)_(?P<view>[12])_(?P<image>\d+)\.png$")
_MSMT17_V1_NAME = re.compile(r"^\d+_\d+_(?P<cam>\d+)_")


class ImageReidDataError(ValueError):
    """A pedestrian-image dataset folder, file name, list or protocol file is missing or malformed."""


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split in reader order. `relpaths` are relative to the dataset root, `paths` are root/relpath;
    `pids` are the dataset's person ids, `camids` 0-based cameras; `labels` are contiguous 0..N-1 over
    the sorted train pids (train only, None elsewhere)."""

    paths: np.ndarray
    relpaths: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_ids(self) -> int:
        return len(np.unique(self.pids))


@dataclasses.dataclass(frozen=True, eq=False)
class ImageReidDataset:
    """Train/query/gallery splits of one dataset, plus val_query/val_gallery in the validation layout."""

    name: str
    root: pathlib.Path
    train: ImageSplit
    query: ImageSplit
    gallery: ImageSplit
    val_query: ImageSplit | None = None
    val_gallery: ImageSplit | None = None

    @property
    def num_train_ids(self) -> int:
        return self.train.num_ids

    def splits(self) -> dict[str, ImageSplit]:
        """The present splits by name, in the order train, query, gallery, val_query, val_gallery."""
        names = ("train", "query", "gallery", "val_query", "val_gallery")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def _make_split(root: pathlib.Path, relpaths: Sequence[str], pids: Sequence[int], camids: Sequence[int],
                *, relabel: bool, where: str) -> ImageSplit:
    if not relpaths:
        raise ImageReidDataError(f"{where}: the split is empty (no usable images).")
    pids = np.asarray(pids, np.int64)
    labels = None
    if relabel:
        # Ascending pid order; the originals number pids in the iteration order of a Python set.
        _, labels = np.unique(pids, return_inverse=True)
        labels = labels.astype(np.int32)
    return ImageSplit(paths=np.array([os.fspath(root / rel) for rel in relpaths], dtype=str),
                      relpaths=np.array(relpaths, dtype=str), pids=pids,
                      camids=np.asarray(camids, np.int32), labels=labels)


def _require_dir(path: pathlib.Path, what: str) -> None:
    if not path.is_dir():
        raise ImageReidDataError(f"{path}: {what} folder not found.")


def _require_files(root: pathlib.Path, relpaths: Sequence[str], where: str) -> None:
    missing = [rel for rel in relpaths if not (root / rel).is_file()]
    if missing:
        raise ImageReidDataError(f"{where}: {len(missing)} listed image(s) missing under {root}, e.g. "
                                 f"{', '.join(missing[:3])}.")


# ----------------------------------------------------------------------------------------------
# Market-style folders (Market-1501, converted MSMT17, the validation layout)


def parse_market_name(name: str | os.PathLike, *, single_digit_camera: bool = False) -> tuple[int, int]:
    """(pid, 0-based camid) from a Market-style file name `PPPP_cCsS_FFFFFF_NN.jpg`; pid -1 marks junk.

    Cameras may have several digits (MSMT17: c1..c15). single_digit_camera=True reproduces the original
    regex `_c(\\d)`, which reads only the first digit (`c14` -> camera 1, camid 0).
    """
    base = pathlib.PurePath(name).name
    pattern = _MARKET_NAME_SINGLE_DIGIT if single_digit_camera else _MARKET_NAME
    match = pattern.match(base)
    if match is None:
        raise ImageReidDataError(f"{base!r}: not a Market-style image name; expected 'PPPP_cC...' with a "
                                 "person id (or -1) and a camera number, e.g. '0002_c1s1_000451_03.jpg'.")
    cam = int(match["cam"])
    if cam < 1:
        raise ImageReidDataError(f"{base!r}: camera numbers start at 1, got c{match['cam']}.")
    return int(match["pid"]), cam - 1


def _market_images(folder: pathlib.Path) -> list[str]:
    _require_dir(folder, "image")
    return sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(".jpg") and entry.is_file())


def _read_market_folder(root: pathlib.Path, folder: str, *, relabel: bool,
                        single_digit_camera: bool) -> ImageSplit:
    """Every .jpg of root/folder in name order; junk (pid -1) is dropped, distractors (pid 0) are kept."""
    relpaths, pids, camids = [], [], []
    for name in _market_images(root / folder):
        try:
            pid, camid = parse_market_name(name, single_digit_camera=single_digit_camera)
        except ImageReidDataError as error:
            raise ImageReidDataError(f"{root / folder}: {error}") from None
        if pid == JUNK_PID:
            continue
        relpaths.append(f"{folder}/{name}")
        pids.append(pid)
        camids.append(camid)
    return _make_split(root, relpaths, pids, camids, relabel=relabel, where=os.fspath(root / folder))


def read_market_layout(root: str | os.PathLike, *, name: str = "market1501", validation: bool = False,
                       single_digit_camera: bool = False) -> ImageReidDataset:
    """A Market-style root: bounding_box_train/, query/, bounding_box_test/ (and, with validation=True,
    bounding_box_val_query/ and bounding_box_val_gallery/ as the `split` tool writes them).

    Train labels number the sorted train pids. Junk (-1) is dropped from every split; the original
    MSMT17 reader keeps it, which matters only for files the converted MSMT17 does not have.
    """
    root = pathlib.Path(root)
    _require_dir(root, f"{name} dataset")
    folders = {**MARKET_SPLIT_FOLDERS, **(VALIDATION_SPLIT_FOLDERS if validation else {})}
    splits = {split: _read_market_folder(root, folder, relabel=split == "train",
                                         single_digit_camera=single_digit_camera)
              for split, folder in folders.items()}
    return ImageReidDataset(name=name, root=root, **splits)


def read_market1501(root: str | os.PathLike, *, validation: bool = False) -> ImageReidDataset:
    """Market-1501 from root/{bounding_box_train,query,bounding_box_test}/*.jpg (see read_market_layout)."""
    return read_market_layout(root, name="market1501_val" if validation else "market1501", validation=validation)


# ----------------------------------------------------------------------------------------------
# MSMT17


def parse_msmt17_v1_camid(relpath: str) -> int:
    """0-based camid of an MSMT17_V1 image: the third `_` field of the name minus 1 (e.g.
    `0000/0000_000_01_0303morning_0015_0.jpg` -> 0)."""
    base = pathlib.PurePath(relpath).name
    match = _MSMT17_V1_NAME.match(base)
    if match is None or int(match["cam"]) < 1:
        raise ImageReidDataError(f"{relpath!r}: not an MSMT17_V1 image name; expected "
                                 "'PPPP_NNN_CC_...' with a camera CC >= 1, e.g. '0000_000_01_0303morning_0015_0.jpg'.")
    return int(match["cam"]) - 1


def _read_msmt17_list(path: pathlib.Path) -> list[tuple[str, int]]:
    """(relpath, pid) of every non-blank `<relpath> <pid>` line."""
    if not path.is_file():
        raise ImageReidDataError(f"{path}: MSMT17_V1 list file not found.")
    entries = []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise ImageReidDataError(f"{path}:{line_number}: expected '<relpath> <pid>', got {line.rstrip()!r}.")
            entries.append((fields[0], int(fields[1])))
    return entries


def read_msmt17_v1(root: str | os.PathLike) -> ImageReidDataset:
    """MSMT17_V1 list layout: root/{train,test}/ and list_{train,val,query,gallery}.txt (`<relpath> <pid>`,
    relpath under train/ or test/). Train is list_train + list_val, as in PixelFade."""
    root = pathlib.Path(root)
    _require_dir(root, "MSMT17_V1 dataset")
    splits = {}
    for split, (folder, list_names) in MSMT17_LIST_FILES.items():
        _require_dir(root / folder, "MSMT17_V1 image")
        relpaths, pids, camids = [], [], []
        for list_name in list_names:
            for rel, pid in _read_msmt17_list(root / list_name):
                try:
                    camids.append(parse_msmt17_v1_camid(rel))
                except ImageReidDataError as error:
                    raise ImageReidDataError(f"{root / list_name}: {error}") from None
                relpaths.append(f"{folder}/{rel}")
                pids.append(pid)
        where = f"{root} ({' + '.join(list_names)})"
        _require_files(root, relpaths, where)
        splits[split] = _make_split(root, relpaths, pids, camids, relabel=split == "train", where=where)
    return ImageReidDataset(name="msmt17", root=root, **splits)


def read_msmt17(root: str | os.PathLike, *, validation: bool = False,
                single_digit_camera: bool = False) -> ImageReidDataset:
    """MSMT17 in either layout: list_train.txt present -> read_msmt17_v1, else the Market-style folders
    (cameras 1..15 from `_c<digits>`; single_digit_camera reproduces privacy-reid's `_c(\\d)`)."""
    root = pathlib.Path(root)
    if (root / "list_train.txt").is_file():
        if validation or single_digit_camera:
            raise ImageReidDataError(f"{root}: MSMT17_V1 list layout; validation= and single_digit_camera= "
                                     "apply to the Market-style layout only.")
        return read_msmt17_v1(root)
    if not (root / MARKET_SPLIT_FOLDERS["train"]).is_dir():
        raise ImageReidDataError(f"{root}: not an MSMT17 folder; expected list_train.txt, list_val.txt, "
                                 "list_query.txt, list_gallery.txt with train/ and test/ (MSMT17_V1), or "
                                 "bounding_box_train/, query/, bounding_box_test/ (Market-style).")
    return read_market_layout(root, name="msmt17_val" if validation else "msmt17", validation=validation,
                              single_digit_camera=single_digit_camera)


# ----------------------------------------------------------------------------------------------
# CUHK03 (new protocol, Zhong et al. CVPR'17: 767 train / 700 test ids)


def cuhk03_image_name(campair: int, pid: int, view: int, image: int) -> str:
    """`{campair}_{pid:03d}_{view}_{image:02d}.png`, all 1-based, as the originals extract them."""
    return f"{campair}_{pid:03d}_{view}_{image:02d}.png"


def parse_cuhk03_camid(name: str) -> int:
    """0-based camid (view - 1, so 0 or 1) from an extracted CUHK03 image name."""
    match = _CUHK03_NAME.match(pathlib.PurePath(name).name)
    if match is None:
        raise ImageReidDataError(f"{name!r}: not a CUHK03 image name; expected '{{campair}}_{{pid:03d}}_{{view}}_"
                                 "{image:02d}.png' with view 1 or 2, e.g. '1_001_1_01.png'.")
    return int(match["view"]) - 1


def _mat_string(cell) -> str:
    """A MATLAB string from loadmat: a cell holds a 1-element str array (or the str itself)."""
    value = np.asarray(cell).ravel()
    return str(value[0]) if value.size else ""


def _mat_indices(protocol: dict, field: str, size: int, path: pathlib.Path) -> np.ndarray:
    """0-based indices from a 1-based MATLAB index vector, checked against the file list."""
    values = np.asarray(protocol[field]).ravel()
    indices = values.astype(np.int64)
    if not np.array_equal(indices, values) or indices.size == 0 or indices.min() < 1 or indices.max() > size:
        raise ImageReidDataError(f"{path}: field {field!r} must hold 1-based integer indices into filelist "
                                 f"(1..{size}), got {values.size} values in [{values.min(initial=0)}, "
                                 f"{values.max(initial=0)}].")
    return indices - 1


def read_cuhk03_protocol(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The new protocol file: `filelist` (image names), `labels` (pids) and 0-based `train_idx`,
    `query_idx`, `gallery_idx` (stored 1-based in the .mat)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ImageReidDataError(f"{path}: CUHK03 protocol file not found (cuhk03_new_protocol_config_*.mat "
                                 "of the re-ranking paper's new protocol).")
    try:
        protocol = scipy.io.loadmat(path)
    except (ValueError, OSError, NotImplementedError) as error:
        raise ImageReidDataError(f"{path}: not a readable MATLAB file ({error}).") from None
    fields = ("filelist", "labels", "train_idx", "query_idx", "gallery_idx")
    missing = [field for field in fields if field not in protocol]
    if missing:
        raise ImageReidDataError(f"{path}: missing field(s) {missing}; the protocol needs {list(fields)}.")
    filelist = np.array([_mat_string(cell) for cell in np.asarray(protocol["filelist"]).ravel()], dtype=str)
    labels = np.asarray(protocol["labels"]).ravel()
    if labels.shape != filelist.shape:
        raise ImageReidDataError(f"{path}: 'labels' has {labels.size} entries but 'filelist' {filelist.size}.")
    result = {"filelist": filelist, "labels": labels.astype(np.int64)}
    for field in fields[2:]:
        result[field] = _mat_indices(protocol, field, filelist.size, path)
    return result


def read_cuhk03(root: str | os.PathLike, *, labeled: bool = False) -> ImageReidDataset:
    """CUHK03 new protocol from root/images_{detected,labeled}/ and root/cuhk03_new_protocol_config_{kind}.mat.

    pids are the protocol's labels (train relabelled 0..766 in ascending order), camids view - 1 from the
    image name; the split order is the protocol's index order. Detected images are the originals' default.
    """
    root = pathlib.Path(root)
    kind = "labeled" if labeled else "detected"
    image_folder = f"images_{kind}"
    _require_dir(root / image_folder, f"CUHK03 {kind} image (extract it with `extract_cuhk03`)")
    mat_path = root / f"cuhk03_new_protocol_config_{kind}.mat"
    protocol = read_cuhk03_protocol(mat_path)
    splits = {}
    for split in ("train", "query", "gallery"):
        indices = protocol[f"{split}_idx"]
        names = protocol["filelist"][indices]
        camids = []
        for name in names:
            try:
                camids.append(parse_cuhk03_camid(name))
            except ImageReidDataError as error:
                raise ImageReidDataError(f"{mat_path} ({split}_idx): {error}") from None
        relpaths = [f"{image_folder}/{name}" for name in names]
        where = f"{mat_path} ({split}_idx)"
        _require_files(root, relpaths, where)
        splits[split] = _make_split(root, relpaths, protocol["labels"][indices], camids, relabel=split == "train",
                                    where=where)
    return ImageReidDataset(name=f"cuhk03_{kind}", root=root, **splits)


def extract_cuhk03_images(mat_path: str | os.PathLike, root: str | os.PathLike) -> dict[str, int]:
    """Writes root/images_detected/ and root/images_labeled/ (PNG, each folder atomically) from the
    MATLAB v7.3 (HDF5) `cuhk-03.mat`: cell `detected`/`labeled` of 5 camera pairs, each a pids x 10 cell of
    images (columns 1-5 view 1, 6-10 view 2; empty cells skipped). Returns images written per kind."""
    mat_path, root = pathlib.Path(mat_path), pathlib.Path(root)
    if not mat_path.is_file():
        raise ImageReidDataError(f"{mat_path}: cuhk-03.mat not found.")
    counts = {}
    try:
        mat = h5py.File(mat_path, "r")
    except OSError as error:
        raise ImageReidDataError(f"{mat_path}: not a MATLAB v7.3 (HDF5) file ({error}).") from None
    with mat:
        for kind in CUHK03_KINDS:
            if kind not in mat:
                raise ImageReidDataError(f"{mat_path}: no {kind!r} cell; expected fields 'detected' and 'labeled'.")
            written = 0
            with atomic_directory(root / f"images_{kind}") as staging:
                # HDF5 holds MATLAB arrays transposed: .T gives MATLAB's (pids, 10) and (H, W, 3).
                for campair, pair_ref in enumerate(np.asarray(mat[kind]).ravel(), 1):
                    images = mat[pair_ref][()].T
                    for pid in range(images.shape[0]):
                        for image_index in range(images.shape[1]):
                            pixels = mat[images[pid, image_index]][()].T
                            if pixels.ndim < 3 or pixels.size == 0:  # MATLAB [] cells are stored as (2,) zeros
                                continue
                            view = 1 if image_index < 5 else 2
                            name = cuhk03_image_name(campair, pid + 1, view, image_index + 1)
                            Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(staging / name)
                            written += 1
            counts[kind] = written
    return counts


# ----------------------------------------------------------------------------------------------
# Dispatch, images


def read_dataset(name: str, root: str | os.PathLike, *, single_digit_camera: bool = False) -> ImageReidDataset:
    """Reads dataset `name` (one of DATASETS) from root; `*_val` names read the `split` tool's layout."""
    if name not in DATASETS:
        raise ImageReidDataError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}.")
    if single_digit_camera and not name.startswith("msmt17"):
        raise ImageReidDataError(f"single_digit_camera applies to MSMT17 only, not {name}.")
    if name.startswith("market1501"):
        return read_market1501(root, validation=name.endswith("_val"))
    if name.startswith("msmt17"):
        return read_msmt17(root, validation=name.endswith("_val"), single_digit_camera=single_digit_camera)
    return read_cuhk03(root, labeled=name == "cuhk03_labeled")


def load_image(path: str | os.PathLike, *, height: int = 256, width: int = 128) -> np.ndarray:
    """uint8 (height, width, 3) RGB, resized with PIL's bilinear filter as the originals' Resize([256, 128])."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as error:
        raise ImageReidDataError(f"{path}: not a readable image ({error}).") from None
    return np.asarray(rgb.resize((width, height), Image.BILINEAR), dtype=np.uint8)


def load_images(split: ImageSplit, *, height: int = 256, width: int = 128) -> np.ndarray:
    """All images of a split as uint8 (N, height, width, 3), in split order (for small sets)."""
    images = np.empty((len(split), height, width, 3), np.uint8)
    for i, path in enumerate(split.paths):
        images[i] = load_image(path, height=height, width=width)
    return images


def summarize(dataset: ImageReidDataset) -> dict[str, dict[str, object]]:
    """Per split: images, distinct ids, cameras (sorted 0-based camids)."""
    return {name: {"images": len(split), "ids": split.num_ids, "cameras": np.unique(split.camids).tolist()}
            for name, split in dataset.splits().items()}


# ----------------------------------------------------------------------------------------------
# The 80/20 train/validation split (privacy-reid data/train_split.py, seeded)


def _place_file(source: pathlib.Path, target: pathlib.Path, *, link: bool) -> None:
    if not link:
        shutil.copyfile(source, target)
        return
    try:
        os.link(source, target)
    except OSError as error:
        raise ImageReidDataError(f"{source}: cannot hard-link it into the output ({error}); put the output on "
                                 "the same file system or copy instead (no --link).") from None


def split_train_validation(root: str | os.PathLike, out: str | os.PathLike, *, seed: int,
                           val_fraction: float = 0.2, val_query_fraction: float = 0.2, link: bool = False,
                           overwrite: bool = False) -> dict[str, int]:
    """Writes out/{bounding_box_train, query, bounding_box_test, bounding_box_val_query,
    bounding_box_val_gallery} from a Market-style root, never touching root; `out` appears whole or not at all.

    As the original: the bounding_box_train .jpg names are sorted and the first int(n * val_fraction)
    become validation images (so by pid: the lowest ids, the boundary id possibly on both sides); each
    goes to val_query with probability val_query_fraction, else to val_gallery. The draws use
    numpy.random.default_rng(seed) (the original's random.random() is unseeded). Files are copied, or
    hard-linked with link=True. Returns the image count per output folder.
    """
    root, out = pathlib.Path(root), pathlib.Path(out)
    if not 0 < val_fraction < 1 or not 0 < val_query_fraction < 1:
        raise ImageReidDataError(f"val_fraction ({val_fraction}) and val_query_fraction ({val_query_fraction}) "
                                 "must lie strictly between 0 and 1.")
    for folder in MARKET_SPLIT_FOLDERS.values():
        _require_dir(root / folder, "Market-style image")
    source, target = root.resolve(), out.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise ImageReidDataError(f"{out}: the output must lie outside the source {root} and not contain it.")
    if out.exists() and not overwrite:
        raise ImageReidDataError(f"{out}: already exists; choose another --out or pass overwrite=True (--overwrite).")

    train = _market_images(root / MARKET_SPLIT_FOLDERS["train"])
    num_val = int(len(train) * val_fraction)
    to_query = np.random.default_rng(seed).random(num_val) < val_query_fraction
    plan = {
        "bounding_box_train": [(MARKET_SPLIT_FOLDERS["train"], name) for name in train[num_val:]],
        "query": [("query", name) for name in _market_images(root / "query")],
        "bounding_box_test": [("bounding_box_test", name) for name in _market_images(root / "bounding_box_test")],
        "bounding_box_val_query": [(MARKET_SPLIT_FOLDERS["train"], name)
                                   for name, q in zip(train[:num_val], to_query) if q],
        "bounding_box_val_gallery": [(MARKET_SPLIT_FOLDERS["train"], name)
                                     for name, q in zip(train[:num_val], to_query) if not q],
    }
    empty = [folder for folder, files in plan.items() if not files]
    if empty:
        raise ImageReidDataError(f"{root}: the split would leave {empty} empty ({len(train)} train images, "
                                 f"{num_val} for validation); change val_fraction, val_query_fraction or the seed.")
    with atomic_directory(out) as staging:
        for folder, files in plan.items():
            (staging / folder).mkdir()
            for source_folder, name in files:
                _place_file(root / source_folder / name, staging / folder / name, link=link)
        counts = {folder: len(files) for folder, files in plan.items()}
        manifest = {"source": os.fspath(source), "seed": seed, "val_fraction": val_fraction,
                    "val_query_fraction": val_query_fraction, "counts": counts}
        atomic_write_text(staging / SPLIT_MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return counts


# ----------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m anon_jax.data.image_reid",
        description="Pedestrian-image ReId datasets: print split counts, make the seeded 80/20 "
                    "train/validation split, or extract CUHK03 images from cuhk-03.mat.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print images, ids and cameras per split",
                          description="Read a dataset folder and print images, ids and cameras per split.")
    info.add_argument("--dataset", required=True, choices=DATASETS,
                      help="*_val reads the layout written by `split`")
    info.add_argument("--root", required=True, help="the dataset folder (e.g. the one holding bounding_box_train/)")
    info.add_argument("--single_digit_camera", action="store_true",
                      help="MSMT17 Market-style only: read one camera digit as privacy-reid (c14 -> camera 1)")

    split = sub.add_parser(
        "split", help="seeded 80/20 train/validation split of a Market-style folder",
        description="Copy a Market-style folder to OUT with the first VAL_FRACTION of the sorted "
                    "bounding_box_train images moved to bounding_box_val_query (probability VAL_QUERY_FRACTION) "
                    "or bounding_box_val_gallery, as privacy-reid's train_split.py but seeded.")
    split.add_argument("--root", required=True, help="Market-style source folder (left unchanged)")
    split.add_argument("--out", required=True, help="output folder (written whole or not at all)")
    split.add_argument("--seed", type=int, required=True, help="seed of the val_query / val_gallery draw")
    split.add_argument("--val_fraction", type=float, default=0.2, help="share of train images for validation (0.2)")
    split.add_argument("--val_query_fraction", type=float, default=0.2,
                       help="probability that a validation image is a query (0.2)")
    split.add_argument("--link", action="store_true", help="hard-link files instead of copying them")
    split.add_argument("--overwrite", action="store_true", help="replace an existing OUT")

    extract = sub.add_parser("extract_cuhk03", help="write images_detected/ and images_labeled/ from cuhk-03.mat",
                             description="Extract the CUHK03 images from the MATLAB v7.3 cuhk-03.mat as "
                                         "{campair}_{pid:03d}_{view}_{image:02d}.png into ROOT/images_detected "
                                         "and ROOT/images_labeled.")
    extract.add_argument("--mat", required=True, help="path of cuhk-03.mat")
    extract.add_argument("--root", required=True, help="CUHK03 folder (holding the protocol .mat files)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "info":
            dataset = read_dataset(args.dataset, args.root, single_digit_camera=args.single_digit_camera)
            print(f"{dataset.name} at {dataset.root}")
            for name, counts in summarize(dataset).items():
                cameras = counts["cameras"]
                print(f"{name}: {counts['images']} images, {counts['ids']} ids, {len(cameras)} cameras {cameras}")
        elif args.command == "split":
            counts = split_train_validation(args.root, args.out, seed=args.seed, val_fraction=args.val_fraction,
                                            val_query_fraction=args.val_query_fraction, link=args.link,
                                            overwrite=args.overwrite)
            print(json.dumps(counts))
        else:
            print(json.dumps(extract_cuhk03_images(args.mat, args.root)))
    except ValueError as error:  # ImageReidDataError: a message, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
