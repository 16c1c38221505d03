"""Embedded default dataset of the pedestrian-image methods: RGB renders of the synthetic pedestrians of
synthetic.py written in the Market-1501 layout (bounding_box_train/, bounding_box_test/, query/, names
PPPP_cCsS_FFFFFF_NN.jpg), so the Market-1501 reader of image_reid.py reads it unchanged.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

from absl import logging
import ml_collections
import numpy as np
from PIL import Image

from anon_jax.data import synthetic
from anon_jax.files import atomic_directory

MARKER_NAME = "synthetic_images.json"
FOLDERS = ("bounding_box_train", "bounding_box_test", "query")
DISTRACTOR_PID = 0
JUNK_PID = -1
_FORMAT_VERSION = 1  # bump when the rendering or the layout changes, so cached folders are regenerated
_VIDEO_FPS = 25.0  # frame numbers in the names count frames of a 25 fps video, as Market-1501's do
_PROGRESS_EVERY_IDENTITIES = 10
# Random streams: synthetic.py uses [seed, 0..5, ...]; the layout here (frame numbers, query picks) uses 6.
_LAYOUT_STREAM = 6


def synthetic_images_config() -> ml_collections.ConfigDict:
    """Default config of the embedded pedestrian-image dataset (40 ids x 4 cameras x 8 images, 128x64)."""
    config = ml_collections.ConfigDict()
    config.num_identities = 40  # labelled people, pids 0001..; the first num_train_identities are train
    config.num_train_identities = 20  # pids in bounding_box_train; the rest are the test (query/gallery) ids
    config.num_cameras = 4  # cameras c1..; at most 9, so the original single-digit regex `_c(\d)` reads them
    config.images_per_camera = 8  # frames per (identity, camera), evenly spaced along the walk (>= 3)
    config.walk_duration_s = 1.0  # the walk the frames are taken from: about one gait cycle, so the pose varies
    config.height = 128  # crop height in pixels (Market-1501 crops are 128x64)
    config.width = 64  # crop width in pixels
    config.num_distractors = 8  # gallery images of pid 0000: one frame each of people outside the labelled set
    config.num_junk = 4  # gallery images of pid -1: lower-body-only boxes (bad detections) that readers drop
    config.jpeg_quality = 95  # JPEG quality of the written images (1..95)
    config.seed = 0  # seed of identities, cameras, poses and the layout
    return config


def _check_config(config) -> None:
    def integer(name, low, high=None):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None
                                                                                     and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise synthetic.SyntheticDataError(f"synthetic images config.{name}={value!r}: must be an integer "
                                               f"{bounds}.")

    integer("num_identities", 2)
    integer("num_train_identities", 1, config.num_identities - 1)
    integer("num_cameras", 2, 9)
    integer("images_per_camera", 3)
    integer("height", 16)
    integer("width", 8)
    integer("num_distractors", 0)
    integer("num_junk", 0)
    integer("jpeg_quality", 1, 95)
    integer("seed", 0)
    test_images = ((config.num_identities - config.num_train_identities) * config.num_cameras
                   * config.images_per_camera)
    if config.num_junk > test_images:
        raise synthetic.SyntheticDataError(f"synthetic images config.num_junk={config.num_junk}: at most one junk "
                                           f"box per test image ({test_images}).")
    if config.num_identities + config.num_distractors > 999:
        raise synthetic.SyntheticDataError("synthetic images: num_identities + num_distractors must be <= 999.")
    if not config.walk_duration_s > 0:
        raise synthetic.SyntheticDataError(
            f"synthetic images config.walk_duration_s={config.walk_duration_s!r}: must be > 0.")


def _pedestrian_config(config) -> ml_collections.ConfigDict:
    """The synthetic.py config whose walking recordings hold exactly the frames to write: images_per_camera
    frames from t = 0 to walk_duration_s. Distractors are the identities after the labelled ones."""
    pedestrians = synthetic.default_synthetic_config()
    pedestrians.num_identities = config.num_identities + config.num_distractors
    pedestrians.num_cameras = config.num_cameras
    pedestrians.height, pedestrians.width, pedestrians.seed = config.height, config.width, config.seed
    pedestrians.duration_s = float(config.walk_duration_s)
    pedestrians.fps = (config.images_per_camera - 1) / config.walk_duration_s
    return pedestrians


def market_image_name(pid: int, camera: int, frame: int, box: int = 1, sequence: int = 1) -> str:
    """Market-1501 file name `PPPP_cCsS_FFFFFF_NN.jpg` (junk pid -1 is written `-1`, as in Market-1501)."""
    person = "-1" if pid == JUNK_PID else f"{pid:04d}"
    return f"{person}_c{camera}s{sequence}_{frame:06d}_{box:02d}.jpg"


def image_plan(config) -> list[dict]:
    """Every image of the dataset, grouped by recording: dicts with "folder", "name", "pid", "camera" (1-based),
    "identity" (the synthetic identity rendered), "frame_index" (into its recording) and "junk".

    Each camera has one timeline of frame numbers; each appearance starts a random gap after the previous one,
    so names are unique. Query: one random frame per (test identity, camera); the other frames go to the
    gallery. Distractor d is identity num_identities + 1 + d in camera d % num_cameras + 1; junk j is the
    lower half of a test identity's frame (box 02 of that frame).
    """
    _check_config(config)
    n = config.images_per_camera
    stride = max(1, int(round(_VIDEO_FPS * config.walk_duration_s / (n - 1))))
    clock = {camera: 0 for camera in range(1, config.num_cameras + 1)}
    test_ids = range(config.num_train_identities + 1, config.num_identities + 1)
    junk_at = {}  # (identity, camera) -> frame indices that also give a junk box
    pairs = len(test_ids) * config.num_cameras
    for j in range(config.num_junk):
        # Walks every (test identity, camera) pair once, spread over identities and cameras, before reusing one.
        pair = j % pairs
        identity_index, camera_index = pair % len(test_ids), pair // len(test_ids)
        key = (test_ids[identity_index], (identity_index + camera_index) % config.num_cameras + 1)
        junk_at.setdefault(key, []).append(j // pairs)

    def appearance(identity, camera):
        rng = np.random.default_rng([config.seed, _LAYOUT_STREAM, identity, camera])
        start = clock[camera] + int(rng.integers(20, 400))
        clock[camera] = start + (n - 1) * stride
        return rng, [start + k * stride for k in range(n)]

    plan = []
    for identity in range(1, config.num_identities + 1):
        for camera in range(1, config.num_cameras + 1):
            rng, frames = appearance(identity, camera)
            query_index = int(rng.integers(n)) if identity in test_ids else None
            for k, frame in enumerate(frames):
                folder = ("bounding_box_train" if query_index is None
                          else "query" if k == query_index else "bounding_box_test")
                plan.append(dict(folder=folder, name=market_image_name(identity, camera, frame), pid=identity,
                                 camera=camera, identity=identity, frame_index=k, junk=False))
            for k in junk_at.get((identity, camera), ()):
                plan.append(dict(folder="bounding_box_test", name=market_image_name(JUNK_PID, camera, frames[k], 2),
                                 pid=JUNK_PID, camera=camera, identity=identity, frame_index=k, junk=True))
    for d in range(config.num_distractors):
        identity, camera = config.num_identities + 1 + d, d % config.num_cameras + 1
        rng, frames = appearance(identity, camera)
        k = int(rng.integers(n))
        plan.append(dict(folder="bounding_box_test", name=market_image_name(DISTRACTOR_PID, camera, frames[k]),
                         pid=DISTRACTOR_PID, camera=camera, identity=identity, frame_index=k, junk=False))
    return plan


def _junk_box(image: np.ndarray) -> np.ndarray:
    """A bad detection: the lower half of a crop stretched to full height (legs only)."""
    height = image.shape[0]
    return np.repeat(image[height // 2:], 2, axis=0)[:height]


def _config_json(config) -> dict:
    return json.loads(json.dumps(dict(config.to_dict(), format_version=_FORMAT_VERSION), sort_keys=True))


def _read_marker(root: pathlib.Path) -> dict | None:
    path = root / MARKER_NAME
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def generate(root: str | os.PathLike, config=None) -> dict:
    """Writes the dataset to root/{bounding_box_train,bounding_box_test,query}/ and returns a summary dict.

    Cached: a root whose marker holds the same config is reused ("skipped": True); one generated with another
    config is regenerated. The folder is built in a temporary sibling and swapped in whole, so a reader never
    sees a partial dataset. Raises SyntheticDataError for a bad config or a non-empty root that is not ours.
    """
    config = synthetic_images_config() if config is None else config
    _check_config(config)
    root = pathlib.Path(root).absolute()
    config_json = _config_json(config)
    marker = _read_marker(root)
    if marker is not None and marker["config"] == config_json:
        logging.info("Synthetic pedestrian images already complete in %s; skipping generation.", root)
        return dict(marker["summary"], skipped=True)
    if marker is None and root.exists() and any(root.iterdir()):
        raise synthetic.SyntheticDataError(
            f"{root} exists, is not empty and has no {MARKER_NAME}; delete it or choose another root.")
    if marker is not None:
        logging.info("Synthetic pedestrian images in %s were generated with another config; regenerating.", root)

    started = time.time()
    pedestrians = _pedestrian_config(config)
    plan = image_plan(config)
    recordings = {}
    for entry in plan:
        recordings.setdefault((entry["identity"], entry["camera"]), []).append(entry)
    with atomic_directory(root) as staging:
        for folder in FOLDERS:
            (staging / folder).mkdir()
        for (identity, camera), entries in recordings.items():
            frames, _ = synthetic.render_colour_recording(pedestrians, identity, camera)
            images = np.round(frames * 255).astype(np.uint8)
            for entry in entries:
                image = images[entry["frame_index"]]
                Image.fromarray(_junk_box(image) if entry["junk"] else image).save(
                    staging / entry["folder"] / entry["name"], format="JPEG", quality=config.jpeg_quality)
            last_camera = camera == config.num_cameras and identity <= config.num_identities
            if last_camera and (identity % _PROGRESS_EVERY_IDENTITIES == 0 or identity == config.num_identities):
                logging.info("Synthetic pedestrian images: %d/%d identities, %.1f s.", identity,
                             config.num_identities, time.time() - started)
        summary = _summary(root, config, plan, time.time() - started)
        with open(staging / MARKER_NAME, "w", encoding="utf-8") as f:
            json.dump(dict(config=config_json, summary=summary), f, indent=1, sort_keys=True)
    logging.info("Synthetic pedestrian images: %d images in %s (%.1f s).", len(plan), root,
                 summary["generation_seconds"])
    return dict(summary, skipped=False)


def _summary(root: pathlib.Path, config, plan: list[dict], seconds: float) -> dict:
    def count(folder, pids=None):
        return sum(entry["folder"] == folder and (pids is None or entry["pid"] in pids) for entry in plan)

    return dict(
        root=os.fspath(root), num_identities=config.num_identities,
        num_train_identities=config.num_train_identities,
        num_test_identities=config.num_identities - config.num_train_identities, num_cameras=config.num_cameras,
        num_train_images=count("bounding_box_train"), num_query_images=count("query"),
        num_gallery_images=count("bounding_box_test"),
        num_distractor_images=count("bounding_box_test", (DISTRACTOR_PID,)),
        num_junk_images=count("bounding_box_test", (JUNK_PID,)), generation_seconds=round(seconds, 2))
