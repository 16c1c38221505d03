"""AnonyNoise datasets prepared as event frames: the embedded synthetic actions (generated, no download) or a real
dataset read from a local folder (DVS-Gesture, SEE, EventReIDv2), cached once as one .npz per split.

Every split is a dict of arrays: "frames" float32 (N, H, W, 2n) raw counts (channel 2*bin + polarity), "target"
(task class, -1 if none), "identity", "condition" (the junk rule's field: same identity and same condition is
not a valid match) and "file_id".
"""

from __future__ import annotations

import functools
import json
import os

import ml_collections
import numpy as np
from absl import logging

from anon_jax.data import anonynoise_datasets, synthetic
from anon_jax.events import read_event_text
from anon_jax.events.frames import event_frames_numpy
from anon_jax.files import atomic_write_bytes

DATASETS = ("synthetic", "dvsgesture", "see", "eventreidv2")
SPLITS = ("train", "val", "query", "gallery")
LABELS = anonynoise_datasets.LABELS  # ("target", "identity", "condition", "file_id")
ARRAYS = ("frames", *LABELS)


class AnonyNoiseDataError(ValueError):
    """The AnonyNoise data config or a prepared dataset is unusable."""


def data_config() -> ml_collections.ConfigDict:
    """The `config.data` section of the AnonyNoise configs (the embedded synthetic actions by default)."""
    data = ml_collections.ConfigDict()
    data.name = "synthetic"  # one of DATASETS
    data.root = ""  # real data: the dataset folder (see README); synthetic: generated here (default: the stage dir)
    data.protocol_dir = ""  # real data: folder with AnonyNoise's protocol files (query lists, see_metadata.json)
    data.num_time_bins = 5  # time bins of the frames (channels = 2 x bins)
    data.size = 304  # eventreidv2 only: frames resized to size x size
    data.synthetic = synthetic.default_synthetic_config()
    data.synthetic.num_identities = 24
    data.synthetic.num_cameras = 2
    data.synthetic.num_actions = 4
    data.synthetic.num_lighting = 2
    data.synthetic.duration_s = 0.6
    data.test_identities = 8  # synthetic: the last identities, never seen in training (ReId query/gallery, val)
    data.window_s = 0.3  # synthetic: one sample per window of the recording
    data.downsample = 2  # synthetic: frames summed over downsample x downsample pixel blocks
    data.augment = augment = ml_collections.ConfigDict()  # training augmentation (anon_jax.data.frame_augment)
    augment.padding = 4  # random shift with zero padding (DVS-Gesture: 10 at 128 px)
    augment.max_degrees = 15.0  # random rotation
    augment.hflip = False  # horizontal flips (off: they would swap left/right actions, as for DVS-Gesture)
    augment.crop_size = 0  # random crop to this square size after padding (SEE: 180); 0 keeps the frame size
    return data


def smoke_overrides(data: ml_collections.ConfigDict) -> None:
    """Tiny synthetic data for tests: a few identities, actions and short recordings."""
    data.synthetic.num_identities = 6
    data.synthetic.num_cameras = 1
    data.synthetic.num_actions = 2
    data.synthetic.num_lighting = 1
    data.synthetic.duration_s = 0.3
    data.synthetic.height, data.synthetic.width = 64, 32
    data.test_identities = 2
    data.window_s = 0.15


def _check(data) -> None:
    if data.name not in DATASETS:
        raise AnonyNoiseDataError(f"config.data.name={data.name!r}: use one of {DATASETS}.")
    if data.name != "synthetic" and not (data.root and data.protocol_dir):
        raise AnonyNoiseDataError(
            f"config.data.name={data.name!r} reads a local copy: set config.data.root to the dataset folder and "
            "config.data.protocol_dir to AnonyNoise's protocol files (nothing is downloaded).")


def _frames_writer(path: str, shape: tuple[int, ...]):
    """A float32 .npy of `shape` opened for writing in place (a temporary name until `_publish`)."""
    return np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype=np.float32, shape=shape)


def _publish(frames, path: str) -> None:
    frames.flush()
    del frames
    os.replace(path + ".tmp", path)


def _save_labels(path: str, labels: dict) -> None:
    with open(path + ".tmp", "wb") as f:
        np.savez(f, **{key: np.asarray(labels[key], np.int32).reshape(-1) for key in LABELS})
    os.replace(path + ".tmp", path)


def _split_paths(stage_dir: str, name: str) -> dict:
    return {"frames": os.path.join(stage_dir, f"{name}_frames.npy"),
            "labels": os.path.join(stage_dir, f"{name}_labels.npz")}


def _save_splits(stage_dir: str, splits: dict) -> dict:
    """Splits already in memory (the synthetic data)."""
    paths = {}
    for name, split in splits.items():
        paths[name] = _split_paths(stage_dir, name)
        frames = _frames_writer(paths[name]["frames"], split["frames"].shape)
        frames[:] = split["frames"]
        _publish(frames, paths[name]["frames"])
        _save_labels(paths[name]["labels"], split)
    return paths


def _save_plan(stage_dir: str, plan: anonynoise_datasets.DatasetPlan) -> dict:
    """A real dataset's splits, read and written one example at a time (EventReIDv2's frames do not fit in RAM)."""
    paths = {}
    for name, examples in plan.splits.items():
        paths[name] = _split_paths(stage_dir, name)
        frames = _frames_writer(paths[name]["frames"], (len(examples), *plan.frame_shape))
        for index, example in enumerate(examples):
            frames[index] = plan.read_frames(example.source)
        _publish(frames, paths[name]["frames"])
        _save_labels(paths[name]["labels"], {key: [getattr(example, key) for example in examples] for key in LABELS})
        logging.info("Data: %s split cached (%d examples).", name, len(examples))
    return paths


def prepare(data, stage_dir: str) -> dict:
    """Reads or generates the dataset into frames, caches every split in `stage_dir` (frames as float32 .npy, read
    back memory-mapped); returns the stage info."""
    _check(data)
    os.makedirs(stage_dir, exist_ok=True)
    if data.name == "synthetic":
        splits, info = synthetic_splits(data, data.root or os.path.join(stage_dir, "synthetic"))
        paths = _save_splits(stage_dir, splits)
    else:
        plan = {"dvsgesture": anonynoise_datasets.plan_dvsgesture, "see": anonynoise_datasets.plan_see,
                "eventreidv2": functools.partial(anonynoise_datasets.plan_eventreidv2, size=data.size)}[data.name](
            data.root, data.protocol_dir, num_time_bins=data.num_time_bins)
        info = plan.info
        paths = _save_plan(stage_dir, plan)
    atomic_write_bytes(os.path.join(stage_dir, "dataset_info.json"),
                       json.dumps(info, indent=1, sort_keys=True, default=str).encode())
    return {"paths": paths}


def load_prepared(info: dict) -> dict:
    """The splits cached by `prepare` (its returned info); frames are memory-mapped, read as batches need them."""
    splits = {}
    for name, paths in info["paths"].items():
        if not isinstance(paths, dict):
            raise AnonyNoiseDataError(f"{paths}: the data stage was cached by an older anon_jax; delete its folder "
                                      "to prepare it again.")
        for path in paths.values():
            if not os.path.isfile(path):
                raise AnonyNoiseDataError(f"{path} is missing: delete the data stage folder to prepare it again.")
        with np.load(paths["labels"]) as labels:
            splits[name] = {"frames": np.load(paths["frames"], mmap_mode="r"),
                            **{key: labels[key] for key in LABELS}}
    return splits


def _sum_pool(frames: np.ndarray, factor: int) -> np.ndarray:
    height, width = frames.shape[0] // factor * factor, frames.shape[1] // factor * factor
    cropped = frames[:height, :width]
    return cropped.reshape(height // factor, factor, width // factor, factor, -1).sum(axis=(1, 3))


def _recording_samples(path: str, data) -> list[np.ndarray]:
    """Frames of each full `window_s` window of one synthetic recording (events.txt), downsampled."""
    stream = read_event_text(path)
    times = np.round(stream.t).astype(np.int64)  # whole microseconds (the simulator's clock resolution)
    window_us = int(round(data.window_s * 1e6))
    start = times[0] if len(times) else 0
    num_windows = int(round(data.synthetic.duration_s / data.window_s))
    samples = []
    for index in range(num_windows):
        lo, hi = np.searchsorted(times, [start + index * window_us, start + (index + 1) * window_us])
        frames = event_frames_numpy(stream.x[lo:hi], stream.y[lo:hi], times[lo:hi], stream.p[lo:hi],
                                    num_time_bins=data.num_time_bins, height=stream.height, width=stream.width)
        samples.append(_sum_pool(frames, data.downsample))
    return samples


def synthetic_splits(data, root: str) -> tuple[dict, dict]:
    """Generates the synthetic action recordings (cached in `root`) and cuts them into frame samples.

    Every recording (identity, camera, action, lighting) gives one sample per `window_s`. The last
    `test_identities` identities are never trained on: they form "val" (all their samples, for the target
    accuracy), "query" (the first window of every recording in the first lighting condition) and "gallery" (all
    their other samples). target = condition = the action, so a ReId match must show the person doing another
    action (as AnonyNoise's DVS-Gesture protocol: same user, another gesture).
    """
    if data.synthetic.num_actions < 2:
        raise AnonyNoiseDataError("config.data.synthetic.num_actions must be >= 2: the action is the target task.")
    num_identities = data.synthetic.num_identities
    if not 1 <= data.test_identities < num_identities:
        raise AnonyNoiseDataError(f"config.data.test_identities={data.test_identities} must be in 1.."
                                  f"{num_identities - 1} (config.data.synthetic.num_identities={num_identities}).")
    summary = synthetic.generate(root, data.synthetic)
    actions = list(summary["actions"])
    first_lighting = list(synthetic.LIGHTING)[0]
    first_test = num_identities - data.test_identities + 1
    rows = {name: {key: [] for key in ARRAYS} for name in SPLITS}
    sources = []
    for recording in summary["recordings"]:
        identity = int(recording["identity"])
        folder = recording["folder"]
        path = os.path.join(root, *folder.split("/"), "events.txt")
        action = actions.index(recording["action"])
        for window, frames in enumerate(_recording_samples(path, data)):
            file_id = len(sources)
            sources.append(f"{folder}#{window}")
            sample = {"frames": frames, "target": action, "identity": identity - 1, "condition": action,
                      "file_id": file_id}
            if identity < first_test:
                names = ["train"]
            else:
                is_query = window == 0 and recording["lighting"] == first_lighting
                names = ["val", "query" if is_query else "gallery"]
            for name in names:
                for key in ARRAYS:
                    rows[name][key].append(sample[key])
    splits = {name: {key: np.stack(values).astype(np.float32 if key == "frames" else np.int32)
                     for key, values in split.items()} for name, split in rows.items()}
    info = {"synthetic_root": root, "actions": actions, "sources": sources,
            "generation_seconds": summary.get("generation_seconds")}
    return splits, info
