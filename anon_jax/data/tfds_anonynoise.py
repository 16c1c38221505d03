"""TFDS builders for AnonyNoise's datasets (DVS-Gesture, SEE, EventReIDv2): the splits of the readers in
anonynoise_datasets written one example at a time as ArrayRecord, read back with
`tfds.data_source("anonynoise_see/frames5", split=..., data_dir=...)` or `builder.as_data_source(split)`.

Command line: `python -m anon_jax.data.tfds_anonynoise --dataset dvsgesture|see|eventreidv2 --manual_dir ROOT
--protocol_dir DIR --data_dir OUT [--num_time_bins N] [--size S]`.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import logging
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from anon_jax.data import anonynoise_datasets as readers
from anon_jax.data import tfds_build
from anon_jax.data.anonynoise_datasets import AnonyNoiseDatasetError

EVENTREID_SIZE = 304  # AnonyNoise's Resize((304, 304))

_PROTOCOL_DIR_HELP = (
    "The protocol dir is separate from the manual dir: pass it as the builder's protocol_dir= (command line: "
    "--protocol_dir), the folder holding AnonyNoise's reid_utils files ({file}).")


@dataclasses.dataclass(eq=False)
class FramesConfig(tfds.core.BuilderConfig):
    """Time bins n of the (H, W, 2n) event frames; for EventReIDv2 also the side every chunk is resized to."""

    num_time_bins: int = 5
    size: int | None = None


def _make_config(num_time_bins: int, size: int | None = None) -> FramesConfig:
    name = f"frames{num_time_bins}" + ("" if size is None else f"_{size}")
    resized = "" if size is None else f", resized to {size}x{size}"
    return FramesConfig(name=name, num_time_bins=num_time_bins, size=size,
                        description=f"{num_time_bins} time bins x 2 polarities{resized}.")


class _AnonyNoiseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes a reader's plan: features frames (float32 H x W x 2n) and int32 target, identity, condition,
    file_id; records keep the reader's order (row i of a split is the reader's row i), and an empty split is
    left out. The reader's "info" (label maps, file_id -> source path) is the metadata (`builder.info.metadata`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION: ClassVar[str]
    HOMEPAGE: ClassVar[str]
    PROTOCOL_FILE: ClassVar[str]

    def __init__(self, *, protocol_dir: str | os.PathLike | None = None, **kwargs):
        """protocol_dir: the folder with AnonyNoise's reid_utils files; only building needs it."""
        self.protocol_dir = protocol_dir
        super().__init__(**kwargs)

    @abc.abstractmethod
    def _frame_shape(self) -> tuple[int | None, int | None, int]:
        """(H, W, 2n) of the frames feature; None where the data set it (SEE)."""

    @abc.abstractmethod
    def _plan(self, root: str, protocol_dir: str | os.PathLike) -> readers.DatasetPlan:
        """The reader's plan of the dataset in `root` under this config."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                # Event frames are mostly zero, so zlib shrinks records a lot.
                "frames": tfds.features.Tensor(shape=self._frame_shape(), dtype=np.float32,
                                               encoding=tfds.features.Encoding.ZLIB),
                **{label: tfds.features.Scalar(dtype=np.int32) for label in readers.LABELS},
            }),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        if self.protocol_dir is None:
            raise AnonyNoiseDatasetError(
                f"{self.name}: building needs the protocol dir. " + _PROTOCOL_DIR_HELP.format(file=self.PROTOCOL_FILE))
        plan = self._plan(os.fspath(dl_manager.manual_dir), self.protocol_dir)
        self.info.metadata.update(plan.info)
        empty = [name for name, examples in plan.splits.items() if not examples]
        if empty:  # TFDS cannot write a split without examples
            logging.warning("%s: leaving out the empty split(s) %s", self.name, empty)
        return {name: self._generate_examples(plan, examples) for name, examples in plan.splits.items()
                if examples}

    def _generate_examples(self, plan: readers.DatasetPlan, examples: Sequence[readers.PlannedExample]):
        for example in examples:
            labels = {label: getattr(example, label) for label in readers.LABELS}
            yield example.source, {"frames": plan.read_frames(example.source), **labels}


class AnonyNoiseDvsGesture(_AnonyNoiseBuilder):
    """DVS-Gesture as AnonyNoise splits it (load_dvsgesture): train, val (the test folder), query, gallery."""

    name = "anonynoise_dvsgesture"
    BUILDER_CONFIGS = [_make_config(5)]
    DESCRIPTION = ("IBM DVS128 Gesture (29 users, 11 classes) in AnonyNoise's splits: 128x128 event frames with "
                   "ms timestamps binned as stored; target = condition = gesture, identity = user.")
    HOMEPAGE = "https://github.com/dfki-av/AnonyNoise"
    PROTOCOL_FILE = readers.DVSG_QUERY_FILE
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "The manual dir is tonic's DVSGesture folder (what tonic.datasets.DVSGesture(save_to=...) leaves in "
        "<save_to>/DVSGesture): ibmGestureTrain/userNN_<lighting>/<class>.npy and "
        "ibmGestureTest/userNN_<lighting>/<class>.npy, e.g. ibmGestureTest/user24_led/3.npy, each holding "
        "tonic's events (x, y, p, t with t in ms). " + _PROTOCOL_DIR_HELP.format(file=readers.DVSG_QUERY_FILE))

    def _frame_shape(self):
        return (readers.DVSG_SENSOR_SIZE, readers.DVSG_SENSOR_SIZE, 2 * self.builder_config.num_time_bins)

    def _plan(self, root, protocol_dir):
        return readers.plan_dvsgesture(root, protocol_dir, num_time_bins=self.builder_config.num_time_bins)


class AnonyNoiseSee(_AnonyNoiseBuilder):
    """SEE as AnonyNoise splits it (load_see, see_metadata.json): train, val, query, gallery."""

    name = "anonynoise_see"
    BUILDER_CONFIGS = [_make_config(5)]
    DESCRIPTION = ("SEE single-eye event frames (111 users, 7 emotions) in AnonyNoise's splits: white and black "
                   "pixels of each sequence's frames summed into time bins; target = condition = emotion, "
                   "identity = user. Frame height and width are the images' own.")
    HOMEPAGE = "https://github.com/zhanghaiwei1234/Single-eye-Emotion-Recognition"
    PROTOCOL_FILE = readers.SEE_METADATA_FILE
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "The manual dir is the released SEE folder holding event/<emotion>/<sequence>/NNNNN.jpg, e.g. "
        "event/happiness/<seq>_<ID>_<sex>_<age>_<degree>_<lighting>_happiness_<length>_<take>/00000.jpg, with every "
        "sequence named in see_metadata.json. " + _PROTOCOL_DIR_HELP.format(file=readers.SEE_METADATA_FILE))

    def _frame_shape(self):
        return (None, None, 2 * self.builder_config.num_time_bins)

    def _plan(self, root, protocol_dir):
        return readers.plan_see(root, protocol_dir, num_time_bins=self.builder_config.num_time_bins)


class AnonyNoiseEventReidV2(_AnonyNoiseBuilder):
    """EventReIDv2 as AnonyNoise splits it (load_eventreidv2): train, query, gallery (no target task)."""

    name = "anonynoise_eventreidv2"
    BUILDER_CONFIGS = [_make_config(5, EVENTREID_SIZE)]
    DESCRIPTION = ("Event-ReId chunks (33 ids x 4 cameras) in AnonyNoise's splits: frames over each chunk's event "
                   "box, padded square and resized (nearest for train, bilinear with antialias for query and "
                   "gallery); target = -1, condition = camera, identity = person.")
    HOMEPAGE = "https://zenodo.org/records/8256439"
    PROTOCOL_FILE = readers.EVENTREID_QUERY_FILE
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "The manual dir holds train/ and test/ chunk files {ID}_c{cam}_{NNN}.txt (rows 't x y p') as AnonyNoise's "
        "reid_utils/event_partition.py and split_train_test.py leave them: train/ every chunk of the 22 train ids, "
        "test/ every 5th chunk (001, 006, ...) of ids 002, 005, ..., 032. `python -m anon_jax.data.event_reid "
        "partition --input_dir RAW --out_dir CHUNKS` then `... split --chunk_dir CHUNKS --out_dir ROOT` write "
        "this layout (their list files are not used here). "
        + _PROTOCOL_DIR_HELP.format(file=readers.EVENTREID_QUERY_FILE))

    def _frame_shape(self):
        config = self.builder_config
        return (config.size, config.size, 2 * config.num_time_bins)

    def _plan(self, root, protocol_dir):
        config = self.builder_config
        return readers.plan_eventreidv2(root, protocol_dir, num_time_bins=config.num_time_bins, size=config.size)


BUILDERS = {"dvsgesture": AnonyNoiseDvsGesture, "see": AnonyNoiseSee, "eventreidv2": AnonyNoiseEventReidV2}


def frames_config(dataset: str, num_time_bins: int = 5, size: int | None = None) -> FramesConfig:
    """The config `frames{n}` (DVS-Gesture, SEE) or `frames{n}_{size}` (EventReIDv2, size 304 unless given)."""
    if dataset not in BUILDERS:
        raise AnonyNoiseDatasetError(f"dataset {dataset!r} is not one of {sorted(BUILDERS)}.")
    if dataset == "eventreidv2":
        size = EVENTREID_SIZE if size is None else size
    elif size is not None:
        raise AnonyNoiseDatasetError(f"size applies to eventreidv2 only; {dataset} frames keep their own size.")
    if num_time_bins < 1 or (size is not None and size < 1):
        raise AnonyNoiseDatasetError(f"num_time_bins ({num_time_bins}) and size ({size}) must be positive.")
    for config in BUILDERS[dataset].BUILDER_CONFIGS:
        # TFDS accepts a predefined config only as the very same object.
        if (config.num_time_bins, config.size) == (num_time_bins, size):
            return config
    return _make_config(num_time_bins, size)


def build(dataset: str, manual_dir: str | os.PathLike, protocol_dir: str | os.PathLike,
          data_dir: str | os.PathLike, *, num_time_bins: int = 5, size: int | None = None) -> _AnonyNoiseBuilder:
    """Builds (or reuses) `anonynoise_<dataset>/<config>` as ArrayRecord under data_dir; returns its builder."""
    config = frames_config(dataset, num_time_bins, size)
    builder_cls = BUILDERS[dataset]
    manual_dir, protocol_dir = pathlib.Path(manual_dir), pathlib.Path(protocol_dir)
    # Checked here for a clear message: TFDS would raise an AssertionError, the readers a missing-file error.
    if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
        raise AnonyNoiseDatasetError(
            f"{manual_dir}: manual dir {'is empty' if manual_dir.is_dir() else 'not found'}. "
            + builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS)
    if not protocol_dir.is_dir():
        raise AnonyNoiseDatasetError(
            f"{protocol_dir}: protocol dir not found. " + _PROTOCOL_DIR_HELP.format(file=builder_cls.PROTOCOL_FILE))
    builder = builder_cls(data_dir=os.fspath(data_dir), config=config, file_format="array_record",
                          protocol_dir=protocol_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anon_jax.data.tfds_anonynoise",
        description="Build an AnonyNoise dataset as TFDS ArrayRecord from its folder and AnonyNoise's protocol "
                    "files, then print its split sizes. Read it with tfds.data_source('anonynoise_<dataset>/"
                    "<config>', split=..., data_dir=...) after importing this module.")
    parser.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--manual_dir", required=True, help="the dataset folder (layout: see the builders' "
                                                            "MANUAL_DOWNLOAD_INSTRUCTIONS)")
    parser.add_argument("--protocol_dir", required=True,
                        help="folder with AnonyNoise's reid_utils files (query lists, see_metadata.json)")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write")
    parser.add_argument("--num_time_bins", type=int, default=5, help="time bins n of the 2n channels (default 5)")
    parser.add_argument("--size", type=int, default=None,
                        help=f"eventreidv2 only: side of the resized frames (default {EVENTREID_SIZE})")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return tfds_build.run_build(lambda: build(
        args.dataset, args.manual_dir, args.protocol_dir, args.data_dir, num_time_bins=args.num_time_bins,
        size=args.size))


if __name__ == "__main__":
    sys.exit(main())
