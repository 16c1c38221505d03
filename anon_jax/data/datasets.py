"""Dataset preparation for the event ReId methods: from `config.data` to voxelised train/query/gallery.

`prepare_event_reid` runs once per workdir (a stage): it generates the embedded synthetic dataset or
locates the real Event-ReId data, partitions raw streams into chunks and applies the official split
protocol when no list files exist. `load_event_reid` then voxelises the three splits (cached on disk).
"""

from __future__ import annotations

import os
import shutil

import ml_collections
from absl import logging

from anon_jax.data import event_reid, synthetic

DATASETS = ("synthetic", "event_reid")


def _has_lists(root: str) -> bool:
    return all(os.path.isfile(os.path.join(root, f"{name}_list.txt")) for name in event_reid.LIST_NAMES)


def _partition_and_split(data: ml_collections.ConfigDict, raw_dir: str, out_dir: str) -> None:
    """Cuts raw `<ID>/<camXX>/events.txt` streams into chunks and writes the official-protocol lists."""
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
    shutil.rmtree(chunk_dir)  # the split holds copies of every chunk it uses


def prepare_event_reid(data: ml_collections.ConfigDict, stage_dir: str) -> dict:
    """Makes list files + chunks available; returns {"root": folder with *_list.txt, "cache_dir": ...}."""
    if data.name not in DATASETS:
        raise ValueError(f"config.data.name={data.name!r}: use one of {DATASETS}.")
    cache_dir = os.path.join(stage_dir, "voxel_cache")
    if data.name == "synthetic":
        raw_dir = os.path.join(stage_dir, "synthetic_raw")
        summary = synthetic.generate(raw_dir, data.synthetic)
        logging.info("Synthetic dataset: %d recordings, %d events", summary["num_recordings"], summary["total_events"])
        _partition_and_split(data, raw_dir, stage_dir)
        return {"root": os.path.join(stage_dir, "split"), "cache_dir": cache_dir}
    root = os.path.abspath(os.path.expanduser(data.root)) if data.root else ""
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(
            f"config.data.root={data.root!r} is not a folder; point it at the Event-ReId data "
            "(a folder with train_list.txt/query_list.txt/gallery_list.txt, or the raw <ID>/<camXX>/events.txt tree)."
        )
    if _has_lists(root):
        return {"root": root, "cache_dir": cache_dir}
    logging.info("%s has no list files: partitioning the raw streams and applying the official split.", root)
    _partition_and_split(data, root, stage_dir)
    return {"root": os.path.join(stage_dir, "split"), "cache_dir": cache_dir}


def load_event_reid(data: ml_collections.ConfigDict, prepared: dict) -> dict:
    """Voxel grids (N, H, W, bins), labels, ids and cameras of the train, query and gallery splits."""
    return event_reid.load_event_reid(
        prepared["root"], num_bins=data.num_bins, height=data.height, width=data.width,
        cache_dir=prepared["cache_dir"],
    )
