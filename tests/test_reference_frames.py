"""Tests of the attack data: reference frames aligned with voxel grids, attack sequences of consecutive test
chunks, the shared data config, and the list-only fallback on the public Event-ReId sample."""

import logging
import pathlib
import re
import shutil

import numpy as np
import pytest

import configs.eventreid_baseline as eventreid_baseline
from anon_jax import events
from anon_jax.data import datasets, event_reid, reference_frames
from anon_jax.events.voxel import nearest_source_indices

HEIGHT, WIDTH, NUM_BINS = 16, 8, 3
SEQUENCE_WINDOWS = 4
TEST_IDS = ("002", "005")  # every third id from 2 out of 5


def _events(x, y, t, height=8, width=10):
    n = len(t)
    return events.EventStream(x=np.asarray(x, np.int32), y=np.asarray(y, np.int32), t=np.asarray(t, np.float64),
                              p=np.ones(n, np.uint8), height=height, width=width, source="hand-made chunk")


# ----------------------------------------------------------------------------------------------
# chunk_reference_frame on hand-built frames


def _numbered_frames():
    """3 frames of 6x8 pixels; pixel (y, x) of frame k holds 64 k + 8 y + x, so every value names its origin."""
    k, y, x = np.meshgrid(np.arange(3), np.arange(6), np.arange(8), indexing="ij")
    return (64 * k + 8 * y + x).astype(np.uint8), np.array([0.0, 100.0, 200.0])


@pytest.mark.parametrize("last_t, frame", [(150.0, 1), (149.0, 1), (151.0, 2), (-5.0, 0), (999.0, 2), (50.0, 0)])
def test_chunk_reference_frame_picks_the_nearest_frame_ties_to_the_earlier(last_t, frame):
    frames, timestamps = _numbered_frames()
    # Bounding box rows 1..3, columns 2..5; only the last event's time matters.
    stream = _events(x=[2, 4, 5], y=[1, 3, 2], t=[last_t - 30, last_t - 10, last_t])
    result = reference_frames.chunk_reference_frame(stream, frames, timestamps, height=6, width=2)
    # PyTorch nearest: rows 3 -> 6 take [0, 0, 1, 1, 2, 2] of the box, columns 4 -> 2 take [0, 2].
    expected = np.array([[74, 76], [74, 76], [82, 84], [82, 84], [90, 92], [90, 92]]) + 64 * (frame - 1)
    assert result.shape == (6, 2, 1) and result.dtype == np.float32
    np.testing.assert_array_equal(result[:, :, 0], (expected / 255).astype(np.float32))


def test_reference_frame_pixels_line_up_with_the_voxel_grid():
    # Frames are white exactly at the event pixels; after the shared crop and resize the white pixels must be
    # the voxel grid's non-zero pixels (upsampled 2x, so every box pixel appears).
    x, y = [3, 5, 4, 6, 3], [2, 2, 4, 5, 6]
    stream = _events(x=x, y=y, t=[0.0, 7.0, 19.0, 30.0, 40.0])
    frames = np.zeros((2, 8, 10), np.uint8)
    frames[:, y, x] = 255
    reference = reference_frames.chunk_reference_frame(stream, frames, np.array([0.0, 33.0]), height=10, width=8)
    voxels = events.chunk_voxel_grid(stream, num_bins=5, height=10, width=8)
    assert reference.shape == (10, 8, 1)
    np.testing.assert_array_equal(reference[:, :, 0] == 1.0, np.any(voxels != 0, axis=0))
    assert np.count_nonzero(reference) == 5 * 4  # each event pixel became a 2x2 block


def test_chunk_reference_frame_rejects_frames_that_do_not_cover_the_events():
    frames, timestamps = _numbered_frames()
    with pytest.raises(reference_frames.ReferenceFrameError, match="same sensor"):
        reference_frames.chunk_reference_frame(_events(x=[1, 9], y=[0, 1], t=[0, 1]), frames, timestamps,
                                               height=4, width=4)
    with pytest.raises(reference_frames.ReferenceFrameError, match="one per frame"):
        reference_frames.chunk_reference_frame(_events(x=[1], y=[0], t=[0]), frames, timestamps[:2],
                                               height=4, width=4)


# ----------------------------------------------------------------------------------------------
# A tiny synthetic dataset, prepared (partitioned, split, sequences) once for the module


def _tiny_data_config():
    data = datasets.data_config()
    data.num_bins, data.height, data.width = NUM_BINS, HEIGHT, WIDTH
    data.sequence_windows = SEQUENCE_WINDOWS
    data.synthetic.num_identities, data.synthetic.num_cameras = 5, 2
    data.synthetic.duration_s = 0.3  # 33.3 ms chunks: 10 per recording
    data.synthetic.height, data.synthetic.width = 32, 16
    return data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data = _tiny_data_config()
    info = datasets.prepare_event_reid(data, str(tmp_path_factory.mktemp("stage")))
    return data, info, datasets.load_event_reid(data, info)


def _direct_reference(chunk_path, raw_dir):
    """Reference frame of a chunk file computed straight from the raw frames.npz and the chunk's rows."""
    identity, cam = re.match(r"(\d+)_c(\d+)_", chunk_path.name).groups()
    with np.load(pathlib.Path(raw_dir) / identity / f"cam{int(cam):02d}" / "frames.npz") as saved:
        frames, timestamps = saved["frames"], saved["timestamps_us"]
    t, x, y, _ = np.loadtxt(chunk_path, ndmin=2).T
    x, y = x.astype(int), y.astype(int)
    nearest = int(np.argmin(np.abs(timestamps - t[-1])))  # argmin keeps the first (earlier) of a tie
    rows = y.min() + nearest_source_indices(int(y.max() - y.min() + 1), HEIGHT)
    cols = x.min() + nearest_source_indices(int(x.max() - x.min() + 1), WIDTH)
    return frames[:, rows[:, None], cols[None, :]], nearest


def test_every_split_has_frames_equal_to_crops_of_the_raw_frames(prepared):
    _, info, splits = prepared
    assert set(splits) == {"train", "query", "gallery", "sequences"}
    root = pathlib.Path(info["root"])
    for name, split in splits.items():
        frames = split["frames"]
        assert frames.shape == (len(split["paths"]), HEIGHT, WIDTH, 1) and frames.dtype == np.float32
        event_pixel_change, other_change = [], []
        for i, relpath in enumerate(split["paths"]):
            crops, nearest = _direct_reference(root / relpath, info["raw_dir"])
            np.testing.assert_array_equal(frames[i, :, :, 0], crops[nearest].astype(np.float32) / np.float32(255))
            if nearest > 0:
                # Physical alignment: pixels with events are where the image changed since the previous frame.
                change = np.abs(crops[nearest].astype(float) - crops[nearest - 1])
                has_events = np.any(split["voxels"][i] != 0, axis=-1)
                event_pixel_change.append(change[has_events].mean())
                other_change.append(change[~has_events].mean())
        assert np.mean(event_pixel_change) > 3 * np.mean(other_change), name


def test_sequences_hold_consecutive_chunks_of_every_test_recording(prepared):
    data, info, splits = prepared
    root = pathlib.Path(info["root"])
    listed = event_reid.read_list_file(root / "sequences_list.txt")
    names = [event_reid.parse_chunk_name(relpath) for relpath, _ in listed]
    # Chunks are numbered from 1 and none is empty here, so position 1 is chunk 2.
    first = data.sequence_start + 1
    assert names == [(identity, cam, index) for identity in TEST_IDS for cam in (1, 2)
                     for index in range(first, first + SEQUENCE_WINDOWS)]
    assert [label for _, label in listed] == [name[0] for name in names]
    assert all(relpath.startswith("sequences/") for relpath, _ in listed)
    # Each copy holds exactly the events of that chunk of the raw stream.
    stream = events.read_event_text(pathlib.Path(info["raw_dir"]) / "005" / "cam02" / "events.txt")
    chunks = event_reid.partition_stream(stream, mode="time", duration=data.chunk_duration)
    copy = events.read_event_text(root / "sequences" / "005_c2_003.txt")
    np.testing.assert_array_equal(copy.t, chunks[2].t)
    np.testing.assert_array_equal(copy.x, chunks[2].x)
    sequences = splits["sequences"]
    assert sequences["label_map"] == splits["query"]["label_map"] == {"002": 0, "005": 1}
    np.testing.assert_array_equal(sequences["labels"], [0] * 8 + [1] * 8)
    assert sequences["voxels"].shape == (16, HEIGHT, WIDTH, NUM_BINS)


def test_attack_sequences_from_the_sequences_split(prepared):
    _, _, splits = prepared
    result = datasets.attack_sequences(splits, 100)  # longer than any recording: L = 4
    assert result["consecutive"] is True
    assert result["voxels"].shape == (4, SEQUENCE_WINDOWS, HEIGHT, WIDTH, NUM_BINS)
    assert result["frames"].shape == (4, SEQUENCE_WINDOWS, HEIGHT, WIDTH, 1)
    np.testing.assert_array_equal(result["ids"], ["002", "002", "005", "005"])
    np.testing.assert_array_equal(result["cams"], [1, 2, 1, 2])
    np.testing.assert_array_equal(result["labels"], [0, 0, 1, 1])
    assert result["labels"].dtype == np.int32 and result["cams"].dtype == np.int32
    # The sequences list is in (id, camera, index) order, so sequence s, step l is row 4 s + l.
    sequences = splits["sequences"]
    np.testing.assert_array_equal(result["voxels"].reshape(16, HEIGHT, WIDTH, NUM_BINS), sequences["voxels"])
    np.testing.assert_array_equal(result["frames"].reshape(16, HEIGHT, WIDTH, 1), sequences["frames"])
    short = datasets.attack_sequences(splits, 2)
    np.testing.assert_array_equal(short["voxels"], result["voxels"][:, :2])
    with pytest.raises(ValueError, match="length"):
        datasets.attack_sequences(splits, 0)


def test_frames_are_cached_next_to_the_voxels(prepared):
    data, info, splits = prepared
    cached = sorted(p.name for p in pathlib.Path(info["cache_dir"]).glob("*_frames_*.npz"))
    assert [name.split("_frames_")[0] for name in cached] == ["gallery", "query", "sequences", "train"]
    again = datasets.load_event_reid(data, info)
    for name, split in splits.items():
        np.testing.assert_array_equal(again[name]["frames"], split["frames"])
    assert sorted(p.name for p in pathlib.Path(info["cache_dir"]).glob("*_frames_*.npz")) == cached


def test_raw_tree_with_too_short_recordings_gives_no_sequences(prepared, tmp_path, caplog):
    _, info, _ = prepared
    data = _tiny_data_config()
    data.name, data.root = "event_reid", info["raw_dir"]  # the raw tree without list files is partitioned
    data.sequence_windows = 50
    with caplog.at_level(logging.WARNING):
        raw_info = datasets.prepare_event_reid(data, str(tmp_path / "stage"))
    assert raw_info["raw_dir"] == info["raw_dir"]
    assert "fewer than sequence_start + sequence_windows = 51" in caplog.text
    assert not (pathlib.Path(raw_info["root"]) / "sequences_list.txt").exists()
    splits = datasets.load_event_reid(data, raw_info)
    assert "sequences" not in splits and "frames" in splits["query"]
    result = datasets.attack_sequences(splits, 8)  # one query + one gallery chunk per recording
    assert result["consecutive"] is False
    assert result["voxels"].shape == (4, 2, HEIGHT, WIDTH, NUM_BINS)
    assert result["frames"].shape == (4, 2, HEIGHT, WIDTH, 1)


def test_bad_sequence_settings_are_rejected(tmp_path):
    data = _tiny_data_config()
    data.sequence_windows = -1
    with pytest.raises(ValueError, match="config.data.sequence_windows"):
        datasets.prepare_event_reid(data, str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Missing frames


def test_missing_frames_file_or_camera_folder_is_a_clear_error(prepared, tmp_path):
    _, info, _ = prepared
    chunk = tmp_path / "chunks" / "002_c1_003.txt"
    chunk.parent.mkdir()
    shutil.copyfile(pathlib.Path(info["root"]) / "sequences" / "002_c1_003.txt", chunk)
    raw = tmp_path / "raw"
    (raw / "002" / "cam01").mkdir(parents=True)
    shutil.copyfile(pathlib.Path(info["raw_dir"]) / "002" / "cam01" / "events.txt",
                    raw / "002" / "cam01" / "events.txt")
    with pytest.raises(reference_frames.ReferenceFrameError, match=r"002_c1_003\.txt.*cam01/frames\.npz is missing"):
        reference_frames.load_reference_frames([chunk], raw, height=HEIGHT, width=WIDTH)
    shutil.rmtree(raw / "002")
    with pytest.raises(reference_frames.ReferenceFrameError, match=r"002_c1_003\.txt.*002/cam01/"):
        reference_frames.load_reference_frames([chunk], raw, height=HEIGHT, width=WIDTH)
    assert issubclass(reference_frames.ReferenceFrameError, ValueError)


def test_load_reference_frames_matches_chunk_reference_frame(prepared):
    _, info, splits = prepared
    root = pathlib.Path(info["root"])
    paths = [root / relpath for relpath in splits["query"]["paths"]]
    loaded = reference_frames.load_reference_frames(paths, info["raw_dir"], height=HEIGHT, width=WIDTH)
    with np.load(pathlib.Path(info["raw_dir"]) / "005" / "cam01" / "frames.npz") as saved:
        one = reference_frames.chunk_reference_frame(events.read_event_text(paths[2]), saved["frames"],
                                                     saved["timestamps_us"], height=HEIGHT, width=WIDTH)
    assert splits["query"]["paths"][2].startswith("test/005_c1_")
    np.testing.assert_array_equal(loaded[2], one)
    np.testing.assert_array_equal(loaded, splits["query"]["frames"])


# ----------------------------------------------------------------------------------------------
# List-only data: the public sample


def test_public_sample_has_no_frames_and_falls_back_to_query_and_gallery(event_reid_sample_dir, tmp_path, caplog):
    data = datasets.data_config()
    data.name, data.root = "event_reid", str(event_reid_sample_dir)
    data.num_bins, data.height, data.width = NUM_BINS, HEIGHT, WIDTH
    info = datasets.prepare_event_reid(data, str(tmp_path))
    assert info["raw_dir"] is None
    splits = datasets.load_event_reid(data, info)
    assert set(splits) == {"train", "query", "gallery"}
    assert not any("frames" in split for split in splits.values())

    # Expected groups straight from the list files: (id, camera) -> sorted chunk indices.
    groups = {}
    for name in ("query", "gallery"):
        for line in (event_reid_sample_dir / f"{name}_list.txt").read_text().split("\n"):
            if line.strip():
                identity, cam, index = re.match(r"test/(\d+)_c(\d+)_(\d+)\.txt", line).groups()
                groups.setdefault((identity, int(cam)), []).append(int(index))
    length = 3
    kept = sorted(key for key, indices in groups.items() if len(indices) >= length)
    assert kept  # the sample has recordings with 3 or more test chunks
    with caplog.at_level(logging.WARNING):
        result = datasets.attack_sequences(splits, length)
    assert "not consecutive" in caplog.text
    assert result["consecutive"] is False and "frames" not in result
    assert result["voxels"].shape == (len(kept), length, HEIGHT, WIDTH, NUM_BINS)
    assert list(zip(result["ids"], result["cams"].tolist())) == kept
    test_map = splits["query"]["label_map"]
    np.testing.assert_array_equal(result["labels"], [test_map[identity] for identity, _ in kept])
    # Step l of sequence s is the l-th smallest chunk index of that recording.
    rows = {}
    for name in ("query", "gallery"):
        for i, relpath in enumerate(splits[name]["paths"]):
            rows[event_reid.parse_chunk_name(relpath)] = splits[name]["voxels"][i]
    for s, (identity, cam) in enumerate(kept):
        for step, index in enumerate(sorted(groups[identity, cam])[:length]):
            np.testing.assert_array_equal(result["voxels"][s, step], rows[identity, cam, index])
    # Longer than every recording: L shrinks to the longest one.
    longest = max(len(indices) for indices in groups.values())
    assert datasets.attack_sequences(splits, 1000)["voxels"].shape[1] == longest


# ----------------------------------------------------------------------------------------------
# Config


def test_baseline_config_uses_the_shared_data_section():
    shared = datasets.data_config()
    assert (shared.sequence_windows, shared.sequence_start) == (8, 1)
    sizes = {variant: (c.data.height, c.data.width) for variant in (None, "smoke", "paper")
             for c in [eventreid_baseline.get_config(variant)]}
    assert sizes == {None: (96, 48), "smoke": (32, 16), "paper": (384, 192)}
    default = eventreid_baseline.get_config(None).data
    assert set(default) == set(shared) and default.to_dict() == shared.to_dict()
    smoke = eventreid_baseline.get_config("smoke").data.synthetic
    assert (smoke.num_identities, smoke.num_cameras, smoke.duration_s, smoke.height, smoke.width) == (6, 2, 0.4, 64, 32)
