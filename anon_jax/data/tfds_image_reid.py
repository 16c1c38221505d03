"""TFDS builder for the pedestrian-image ReId datasets of image_reid (Market-1501, MSMT17, CUHK03, the
validation layouts): images resized to HxW and stored as PNG (lossless) in ArrayRecord, read back with
`tfds.data_source("image_reid/market1501_256x128", split=..., data_dir=...)` without TensorFlow.

Command line: `python -m anon_jax.data.tfds_image_reid --dataset market1501 --manual_dir ROOT --data_dir OUT`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from anon_jax.data import image_reid, tfds_build
from anon_jax.data.image_reid import ImageReidDataError

_DESCRIPTION = (
    "Pedestrian-image ReId splits read by anon_jax.data.image_reid, each image converted to RGB and resized "
    "with PIL's bilinear filter as the originals' Resize([256, 128]); pid and 0-based camid as the reader gives "
    "them, label the contiguous train id (-1 outside train), path relative to the dataset folder.")
_MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "The manual dir is the dataset folder itself. market1501 / msmt17 (Market-style): bounding_box_train/, query/, "
    "bounding_box_test/ with PPPP_cC... .jpg names; *_val: the output of `python -m anon_jax.data.image_reid split`. "
    "msmt17 (MSMT17_V1): train/, test/ and list_{train,val,query,gallery}.txt. cuhk03_detected / cuhk03_labeled: "
    "images_{detected,labeled}/ and cuhk03_new_protocol_config_{detected,labeled}.mat.")


@dataclasses.dataclass(eq=False)
class ImageReidConfig(tfds.core.BuilderConfig):
    """Which dataset (image_reid.DATASETS), the stored image size, and MSMT17's single-digit camera option."""

    dataset: str = "market1501"
    height: int = 256
    width: int = 128
    single_digit_camera: bool = False


def _make_config(dataset: str, height: int, width: int, single_digit_camera: bool = False) -> ImageReidConfig:
    suffix = "_single_digit_camera" if single_digit_camera else ""
    return ImageReidConfig(name=f"{dataset}_{height}x{width}{suffix}", dataset=dataset, height=height, width=width,
                           single_digit_camera=single_digit_camera,
                           description=f"{dataset}, images resized to {height}x{width}{suffix.replace('_', ' ')}.")


# The originals' 256x128 for every dataset; other sizes are custom configs made by `image_reid_config`.
_PREDEFINED_CONFIGS = [_make_config(dataset, 256, 128) for dataset in image_reid.DATASETS]


def image_reid_config(dataset: str, height: int = 256, width: int = 128,
                      single_digit_camera: bool = False) -> ImageReidConfig:
    """The config named `{dataset}_{H}x{W}` (plus `_single_digit_camera`), e.g. `market1501_256x128`."""
    if dataset not in image_reid.DATASETS:
        raise ImageReidDataError(f"unknown dataset {dataset!r}; expected one of {list(image_reid.DATASETS)}.")
    if height < 1 or width < 1:
        raise ImageReidDataError(f"height ({height}) and width ({width}) must be positive.")
    for config in _PREDEFINED_CONFIGS:
        # TFDS accepts a predefined config only as the very same object.
        if (config.dataset, config.height, config.width, config.single_digit_camera) == (
                dataset, height, width, single_digit_camera):
            return config
    return _make_config(dataset, height, width, single_digit_camera)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 HxWx3 image (PIL, so building needs no TensorFlow)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageReid(tfds.core.GeneratorBasedBuilder):
    """Splits train, query, gallery (and val_query, val_gallery for *_val) in reader order."""

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
                "image": tfds.features.Image(shape=(config.height, config.width, 3), dtype=np.uint8,
                                             encoding_format="png"),
                "pid": tfds.features.Scalar(dtype=np.int32),
                "camid": tfds.features.Scalar(dtype=np.int32),
                "label": tfds.features.Scalar(dtype=np.int32),
                "path": tfds.features.Text(),
            }),
            homepage="https://github.com/whuzjw/privacy-reid",
            # Row i of a split is row i of the reader's split.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        dataset = image_reid.read_dataset(config.dataset, os.fspath(dl_manager.manual_dir),
                                          single_digit_camera=config.single_digit_camera)
        return {name: self._generate_examples(split) for name, split in dataset.splits().items()}

    def _generate_examples(self, split: image_reid.ImageSplit):
        config = self.builder_config
        labels = np.full(len(split), -1, np.int32) if split.labels is None else split.labels
        for path, relpath, pid, camid, label in zip(split.paths, split.relpaths, split.pids, split.camids, labels):
            image = image_reid.load_image(path, height=config.height, width=config.width)
            yield str(relpath), {"image": png_bytes(image), "pid": int(pid), "camid": int(camid),
                                 "label": int(label), "path": str(relpath)}


def build(dataset: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike, *, height: int = 256,
          width: int = 128, single_digit_camera: bool = False) -> ImageReid:
    """Builds (or reuses) `image_reid/{dataset}_{H}x{W}` as ArrayRecord under data_dir; returns its builder."""
    config = image_reid_config(dataset, height, width, single_digit_camera)
    # Read once here for a clear message; inside TFDS a missing manual dir is an AssertionError.
    image_reid.read_dataset(dataset, manual_dir, single_digit_camera=single_digit_camera)
    builder = ImageReid(data_dir=os.fspath(data_dir), config=config, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(pathlib.Path(manual_dir))))
    return builder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anon_jax.data.tfds_image_reid",
        description="Build a pedestrian-image ReId dataset as TFDS ArrayRecord (uint8 HxWx3 PNG images, pid, camid, "
                    "label, path) and print its split sizes. Read it with tfds.data_source('image_reid/"
                    "{dataset}_{H}x{W}', split=..., data_dir=...) after importing this module.")
    parser.add_argument("--dataset", required=True, choices=image_reid.DATASETS)
    parser.add_argument("--manual_dir", required=True, help="the dataset folder (layouts: see image_reid)")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write")
    parser.add_argument("--height", type=int, default=256, help="stored image height (default 256)")
    parser.add_argument("--width", type=int, default=128, help="stored image width (default 128)")
    parser.add_argument("--single_digit_camera", action="store_true",
                        help="MSMT17 Market-style only: privacy-reid's one-digit camera parsing (c14 -> camera 1)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return tfds_build.run_build(lambda: build(
        args.dataset, args.manual_dir, args.data_dir, height=args.height, width=args.width,
        single_digit_camera=args.single_digit_camera))


if __name__ == "__main__":
    sys.exit(main())
