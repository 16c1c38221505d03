"""TFDS builder for Event-ReId voxel grids, written as ArrayRecord and read back with
`tfds.data_source("event_reid/voxel5_384x192", split=...)` or `builder.as_data_source(split)`
(random access, NumPy only; neither building nor reading needs TensorFlow).

Command line: `python -m anon_jax.data.tfds_event_reid --manual_dir ROOT --data_dir OUT [--num_bins ...]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from anon_jax.data import event_reid, tfds_build

_DESCRIPTION = (
    "Event-ReId (ICCV'23): 33 identities x 4 event cameras, chunks voxelised with the original "
    "per-chunk pipeline (bbox shift, E2VID voxel grid, normalisation, nearest resize), NHWC."
)
_MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Place in the manual dir a folder in the Event-ReId layout: train_list.txt, query_list.txt and "
    "gallery_list.txt ('<relpath> <label>' lines) plus the chunk files they name (e.g. "
    "train/001_c1_048.txt). `python -m anon_jax.data.event_reid partition ...` then `... split ...` "
    "produce it from the raw recordings."
)


@dataclasses.dataclass(eq=False)
class EventReidConfig(tfds.core.BuilderConfig):
    """Voxel-grid parameters: time bins and the (height, width) every chunk is resized to."""

    num_bins: int = 5
    height: int = 384
    width: int = 192


def _make_config(num_bins: int, height: int, width: int) -> EventReidConfig:
    return EventReidConfig(name=f"voxel{num_bins}_{height}x{width}", num_bins=num_bins, height=height,
                           width=width, description=f"{num_bins} time bins, resized to {height}x{width}.")


# The paper's setting; other sizes are custom configs made by `event_reid_config`.
_PREDEFINED_CONFIGS = [_make_config(5, 384, 192)]


def event_reid_config(num_bins: int, height: int, width: int) -> EventReidConfig:
    """The config named `voxel{B}_{H}x{W}`, e.g. `voxel5_384x192` (the paper's setting)."""
    for config in _PREDEFINED_CONFIGS:
        # TFDS accepts a predefined config only as the very same object.
        if (config.num_bins, config.height, config.width) == (num_bins, height, width):
            return config
    return _make_config(num_bins, height, width)


class EventReid(tfds.core.GeneratorBasedBuilder):
    """Event-ReId splits train/query/gallery from list files in the manual dir.

    Train labels are contiguous over the sorted train ids; query and gallery share labels that are
    contiguous over the sorted ids of both lists. `id` keeps the list's original label string.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _PREDEFINED_CONFIGS
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                # Most voxels are zero (outside the person's events), so zlib shrinks records a lot.
                "voxel": tfds.features.Tensor(shape=(config.height, config.width, config.num_bins),
                                              dtype=np.float32, encoding=tfds.features.Encoding.ZLIB),
                "label": tfds.features.Scalar(dtype=np.int32),
                "id": tfds.features.Text(),
                "cam": tfds.features.Scalar(dtype=np.int32),
                "path": tfds.features.Text(),
            }),
            homepage="https://github.com/IIT-PAVIS/ReId_without_Id",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = dl_manager.manual_dir
        lists = {name: event_reid.read_list_file(event_reid.list_file_path(root, name))
                 for name in event_reid.LIST_NAMES}
        train_map = event_reid.build_label_map(label for _, label in lists["train"])
        test_map = event_reid.build_label_map(label for name in ("query", "gallery") for _, label in lists[name])
        return {
            "train": self._generate_examples(root, "train", train_map),
            "query": self._generate_examples(root, "query", test_map),
            "gallery": self._generate_examples(root, "gallery", test_map),
        }

    def _generate_examples(self, root, list_name: str, label_map: dict[str, int]):
        config = self.builder_config
        list_path = event_reid.list_file_path(root, list_name)
        for relpath, identity in event_reid.read_list_file(list_path):
            voxel = event_reid.voxelize_chunk_file(os.path.join(root, relpath), num_bins=config.num_bins,
                                                   height=config.height, width=config.width)
            _, cam, _ = event_reid.parse_chunk_name(relpath)
            yield relpath, {"voxel": voxel, "label": label_map[identity], "id": identity, "cam": cam,
                            "path": relpath}


def build(manual_dir: str | os.PathLike, data_dir: str | os.PathLike, *, num_bins: int, height: int,
          width: int) -> EventReid:
    """Builds (or reuses) the ArrayRecord dataset under data_dir and returns its builder."""
    for name in event_reid.LIST_NAMES:  # fail here with a clear message, not deep inside TFDS
        event_reid.read_list_file(event_reid.list_file_path(manual_dir, name))
    builder = EventReid(data_dir=os.fspath(data_dir), config=event_reid_config(num_bins, height, width),
                        file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anon_jax.data.tfds_event_reid",
        description="Build the Event-ReId TFDS dataset (ArrayRecord) from a folder with the list files and "
                    "chunks. Read it with tfds.data_source('event_reid/voxel{B}_{H}x{W}', split=..., "
                    "data_dir=...) after importing this module (no TensorFlow needed).")
    parser.add_argument("--manual_dir", required=True, help="folder with train/query/gallery_list.txt and chunks")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write")
    parser.add_argument("--num_bins", type=int, default=5, help="voxel time bins (default 5)")
    parser.add_argument("--height", type=int, default=384, help="voxel height after resize (default 384)")
    parser.add_argument("--width", type=int, default=192, help="voxel width after resize (default 192)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return tfds_build.run_build(lambda: build(
        args.manual_dir, args.data_dir, num_bins=args.num_bins, height=args.height, width=args.width))


if __name__ == "__main__":
    sys.exit(main())
