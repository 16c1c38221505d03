"""Data stage of the pedestrian-image methods (privacy-reid, PixelFade): the embedded synthetic images or a real
dataset read from a local folder, optionally split 80/20 into train and validation by the seeded split tool, every
split resized and cached as a uint8 .npy (read back memory-mapped) with its labels, pids and cameras.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
from absl import logging

from anon_jax.data import image_augment, image_reid, synthetic_images
from anon_jax.files import atomic_write_text

NAMES = ("synthetic", "market1501", "msmt17", "cuhk03_detected", "cuhk03_labeled")
# Only Market-style folders can be split by the tool (CUHK03's validation protocol files are not published).
SPLITTABLE = ("synthetic", "market1501", "msmt17")
INFO_FILE = "image_data.json"


class ImageDataError(ValueError):
    """The data section of a pedestrian-image config cannot be prepared."""


def image_data_config() -> ml_collections.ConfigDict:
    """The `config.data` section of the pedestrian-image methods (embedded synthetic data by default)."""
    data = ml_collections.ConfigDict()
    data.name = "synthetic"  # "synthetic" (embedded) | "market1501" | "msmt17" | "cuhk03_detected" | "cuhk03_labeled"
    data.root = ""  # the dataset folder (real data); for "synthetic", "" generates it inside the data stage
    data.height = 128  # images are resized (PIL bilinear) to height x width before anything else (paper: 256)
    data.width = 64  # (paper: 128)
    data.validation_split = True  # hold out the first 20% of the train names as val query/gallery (split tool)
    data.val_fraction = 0.2  # fraction of the sorted train images that become validation images
    data.val_query_fraction = 0.2  # fraction of the validation images that become validation queries
    data.split_seed = 0  # seed of the query/gallery draw of the validation images (the original is unseeded)
    # Network inputs are (pixels / 255 - mean) / std: privacy-reid's std 0.5 by default; AGW/PixelFade: ImageNet's.
    data.pixel_mean = image_augment.PIXEL_MEAN  # per-channel mean (RGB)
    data.pixel_std = image_augment.PIXEL_STD  # per-channel standard deviation (RGB)
    data.synthetic = synthetic_images.synthetic_images_config()  # the embedded dataset's generator settings
    return data


def _check(data) -> None:
    if data.name not in NAMES:
        raise ImageDataError(f"config.data.name={data.name!r}: use one of {NAMES}.")
    if data.name != "synthetic" and not data.root:
        raise ImageDataError(f"config.data.root is empty: set it to the local {data.name} folder (nothing is "
                             "downloaded).")
    if data.validation_split and data.name not in SPLITTABLE:
        raise ImageDataError(f"config.data.validation_split=True needs a Market-style folder ({SPLITTABLE}); "
                             f"{data.name} has no published validation protocol: set it to False.")
    for field in ("height", "width"):
        if not isinstance(data[field], int) or data[field] < 8:
            raise ImageDataError(f"config.data.{field}={data[field]!r}: must be an integer >= 8.")


def _source_root(data, stage_dir: str) -> tuple[str, str]:
    """(reader name, folder) of the dataset, generating the synthetic images when needed."""
    if data.name != "synthetic":
        return data.name, data.root
    root = data.root or os.path.join(stage_dir, "synthetic")
    synthetic_images.generate(root, data.synthetic)
    return "market1501", root


def _cache_split(split: image_reid.ImageSplit, path: str, data) -> None:
    images = np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype=np.uint8,
                                       shape=(len(split), data.height, data.width, 3))
    for index, image_path in enumerate(split.paths):
        images[index] = image_reid.load_image(image_path, height=data.height, width=data.width)
    images.flush()
    del images
    os.replace(path + ".tmp", path)


def prepare(data, stage_dir: str) -> dict:
    """Caches every split of config.data in `stage_dir`; returns the stage info (paths and counts)."""
    _check(data)
    os.makedirs(stage_dir, exist_ok=True)
    name, root = _source_root(data, stage_dir)
    if data.validation_split:
        split_root = os.path.join(stage_dir, "validation_split")
        if not os.path.isdir(split_root):  # the tool writes the folder whole or not at all
            image_reid.split_train_validation(root, split_root, seed=data.split_seed, val_fraction=data.val_fraction,
                                              val_query_fraction=data.val_query_fraction, link=True)
        name, root = f"{name}_val", split_root
    dataset = image_reid.read_dataset(name, root)
    splits = {}
    for split_name, split in dataset.splits().items():
        images_path = os.path.join(stage_dir, f"{split_name}_images.npy")
        labels_path = os.path.join(stage_dir, f"{split_name}_labels.npz")
        _cache_split(split, images_path, data)
        labels = split.labels if split.labels is not None else np.full(len(split), -1, np.int32)
        with open(labels_path + ".tmp", "wb") as f:
            np.savez(f, pids=split.pids, camids=split.camids, labels=labels)
        os.replace(labels_path + ".tmp", labels_path)
        splits[split_name] = {"images": images_path, "labels": labels_path, "count": len(split),
                              "identities": split.num_ids}
        logging.info("Data: %s cached (%d images, %d identities).", split_name, len(split), split.num_ids)
    info = {"dataset": name, "root": os.fspath(root), "splits": splits, "num_train_ids": dataset.num_train_ids,
            "image_size": [data.height, data.width]}
    atomic_write_text(os.path.join(stage_dir, INFO_FILE), json.dumps(info, indent=1))
    return info


def load_prepared(info: dict) -> dict:
    """{split: {"images" (N, H, W, 3) uint8 memory-mapped, "pids", "camids", "labels"}} of a prepared stage."""
    splits = {}
    for name, entry in info["splits"].items():
        for path in (entry["images"], entry["labels"]):
            if not os.path.isfile(path):
                raise ImageDataError(f"{path} is missing: delete the data stage folder to prepare it again.")
        with np.load(entry["labels"]) as labels:
            splits[name] = {"images": np.load(entry["images"], mmap_mode="r"),
                            **{key: labels[key] for key in ("pids", "camids", "labels")}}
    return splits
