"""AnonyNoise dataset readers: the shipped protocol files, and loaders on fixture trees in each real format,
checked against an independent tonic ToFrame rule and PyTorch's resizes (what torchvision's Resize runs)."""

import collections
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from anon_jax.data import anonynoise_datasets as ad
from anon_jax.data.event_reid import OFFICIAL_TEST_IDS
from anonynoise_fixtures import (random_events, reid_events, sequence_name, write_chunk, write_dvsg,
                                 write_query_list, write_sequence)


def tonic_frames(x, y, t, p, n, height, width):
    """tonic 1.5 ToFrame(n_time_bins=n) as (H, W, 2n), channel 2*bin + polarity: floor window, left-searchsorted
    bin edges, events at or past t0 + n*window dropped."""
    frames = np.zeros((n, 2, height, width))
    window = (t[-1] - t[0]) // n
    for k in range(n):
        start, stop = np.searchsorted(t, [t[0] + k * window, t[0] + (k + 1) * window])
        for i in range(start, stop):
            frames[k, int(p[i]), y[i], x[i]] += 1
    return frames.transpose(2, 3, 0, 1).reshape(height, width, 2 * n)


# ----------------------------------------------------------------------------------------------
# Protocol files shipped with AnonyNoise


def test_dvsg_query_subset_real_file(anonynoise_protocol_dir):
    subset = ad.read_dvsg_query_subset(anonynoise_protocol_dir / ad.DVSG_QUERY_FILE)
    assert len(subset.entries) == 60 and subset.duplicates == 6  # 66 lines: 6 users x 11 picks
    users = collections.Counter(entry.split("/")[1].split("_")[0] for entry in subset.entries)
    assert users == {"user24": 10, "user25": 9, "user26": 11, "user27": 9, "user28": 10, "user29": 11}
    assert all(entry.startswith("ibmGestureTest/user") for entry in subset.entries)
    assert {int(entry.split("/")[2][:-4]) for entry in subset.entries} <= set(range(11))
    assert subset.entries[0] == "ibmGestureTest/user26_natural/10.npy"


def test_eventreid_query_subset_real_file(anonynoise_protocol_dir):
    from anon_jax.data.event_reid import parse_chunk_name

    subset = ad.read_eventreid_query_subset(anonynoise_protocol_dir / ad.EVENTREID_QUERY_FILE)
    assert len(subset.entries) == 44 and subset.duplicates == 0
    parsed = [parse_chunk_name(entry) for entry in subset.entries]
    assert sorted((identity, camera) for identity, camera, _ in parsed) == [
        (identity, camera) for identity in OFFICIAL_TEST_IDS for camera in (1, 2, 3, 4)]
    # Test folders hold every 5th chunk of a sorted list numbered from 001: indices 1, 6, 11, ...
    assert all(index % 5 == 1 for _, _, index in parsed)


def test_see_metadata_real_file(anonynoise_protocol_dir):
    splits = ad.read_see_metadata(anonynoise_protocol_dir / ad.SEE_METADATA_FILE)
    assert {name: len(entries) for name, entries in splits.items()} == {
        "train": 2088, "val": 140, "query": 40, "gallery": 100}
    users = {name: {entry.user_id for entry in entries} for name, entries in splits.items()}
    assert len(users["train"]) == 78 and len(users["val"]) == 20
    assert users["query"] == users["gallery"] == users["val"] and not users["train"] & users["val"]
    names = {name: {entry.filename for entry in entries} for name, entries in splits.items()}
    assert names["query"] | names["gallery"] == names["val"] and not names["query"] & names["gallery"]
    emotions = {entry.target_id for entry in splits["train"]}
    assert emotions == {"angry", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"}
    assert sorted(collections.Counter((e.user_id, e.target_id) for e in splits["val"]).values()) == [1] * 140
    assert {e.target_id for e in splits["val"]} == emotions
    per_user = {split: collections.Counter(e.user_id for e in splits[split]) for split in ("query", "gallery")}
    assert set(per_user["query"].values()) == {2} and set(per_user["gallery"].values()) == {5}
    assert all(len({e.target_id for e in splits["query"] if e.user_id == user}) == 2 for user in users["val"])
    for entry in (e for entries in splits.values() for e in entries):
        fields = entry.filename.split("_")  # seq_ID_sex_age_degree_lighting_emotion_length_take
        assert (fields[1], fields[6]) == (entry.user_id, entry.target_id)
    assert {e.filename.split("_")[5] for e in splits["val"]} == {"normal"}


def test_protocol_errors_name_file_and_line(tmp_path):
    dvsg = tmp_path / "dvsg.txt"
    dvsg.write_text("user24 0 /ibmGestureTest/user24_led/3.npy\nuser25 1 /ibmGestureTest/user24_led/4.npy\n")
    with pytest.raises(ad.AnonyNoiseDatasetError, match=r"dvsg.txt:2: user column 'user25'"):
        ad.read_dvsg_query_subset(dvsg)
    dvsg.write_text("user24 0 /ibmGestureTrain/user24_led/3.npy\n")
    with pytest.raises(ad.AnonyNoiseDatasetError, match=r"dvsg.txt:1: expected"):
        ad.read_dvsg_query_subset(dvsg)
    reid = tmp_path / "reid.txt"
    reid.write_text("002_c1_001.txt\n\n002_cam1.txt\n")
    with pytest.raises(ad.AnonyNoiseDatasetError, match=r"reid.txt:3: .*not an Event-ReId chunk name"):
        ad.read_eventreid_query_subset(reid)
    metadata = tmp_path / "see.json"
    metadata.write_text(json.dumps({"train": [], "val": [], "query": []}))
    with pytest.raises(ad.AnonyNoiseDatasetError, match=r"see.json: .*missing \['gallery'\]"):
        ad.read_see_metadata(metadata)
    metadata.write_text(json.dumps({split: [] for split in ad.SEE_SPLITS} | {"val": [{"filename": "a"}]}))
    with pytest.raises(ad.AnonyNoiseDatasetError, match=r"val\[0\]"):
        ad.read_see_metadata(metadata)
    with pytest.raises(ad.AnonyNoiseDatasetError, match="protocol file not found"):
        ad.read_eventreid_query_subset(tmp_path / "absent.txt")


# ----------------------------------------------------------------------------------------------
# DVS-Gesture


def test_load_dvsgesture_fixture(tmp_path):
    rng = np.random.default_rng(0)
    files = {  # relative path -> (user, class); several lighting folders per user
        "ibmGestureTrain/user01_fluorescent/0.npy": ("user01", 0),
        "ibmGestureTrain/user01_fluorescent/3.npy": ("user01", 3),
        "ibmGestureTrain/user01_led/0.npy": ("user01", 0),
        "ibmGestureTrain/user02_natural/10.npy": ("user02", 10),
        "ibmGestureTest/user24_lab/2.npy": ("user24", 2),
        "ibmGestureTest/user24_fluorescent_led/2.npy": ("user24", 2),
        "ibmGestureTest/user24_fluorescent_led/7.npy": ("user24", 7),
        "ibmGestureTest/user26_natural/5.npy": ("user26", 5),
    }
    events = {}
    for index, relpath in enumerate(files):
        events[relpath] = random_events(rng, 300)
        write_dvsg(tmp_path / "DVSGesture" / relpath, *events[relpath], structured=index % 2 == 0)
    (tmp_path / "DVSGesture/ibmGestureTest/user24_lab/notes.txt").write_text("not an event file")
    query = ["ibmGestureTest/user26_natural/5.npy", "ibmGestureTest/user24_lab/2.npy",
             "ibmGestureTest/user26_natural/5.npy"]
    write_query_list(tmp_path / ad.DVSG_QUERY_FILE, query)

    data = ad.load_dvsgesture(tmp_path / "DVSGesture", tmp_path, num_time_bins=3)
    info = data["info"]
    assert info["sources"] == sorted(files) and info["query_duplicates"] == 1
    assert info["label_maps"]["identity"] == {"user01": 0, "user02": 1, "user24": 2, "user26": 3}
    expected_order = {"train": sorted(p for p in files if "Train" in p), "val": sorted(p for p in files if "Test" in p)}
    expected_order["query"] = [p for p in expected_order["val"] if p in query]
    expected_order["gallery"] = [p for p in expected_order["val"] if p not in query]
    for split, relpaths in expected_order.items():
        arrays = data[split]
        assert arrays["frames"].shape == (len(relpaths), 128, 128, 6) and arrays["frames"].dtype == np.float32
        assert [info["sources"][i] for i in arrays["file_id"]] == relpaths
        assert arrays["target"].tolist() == arrays["condition"].tolist() == [files[p][1] for p in relpaths]
        assert arrays["identity"].tolist() == [info["label_maps"]["identity"][files[p][0]] for p in relpaths]
        assert all(arrays[key].dtype == np.int32 for key in ("target", "identity", "condition", "file_id"))
        for frames, relpath in zip(arrays["frames"], relpaths):
            np.testing.assert_array_equal(frames, tonic_frames(*events[relpath], 3, 128, 128))
    assert set(data) == {"train", "val", "query", "gallery", "info"}
    json.dumps(info)


def test_dvsgesture_frames_hand_computed(tmp_path):
    # t in ms, not rescaled: window = (10 - 0) // 5 = 2; the event at t = 10 falls past 5 windows and is dropped.
    x = np.array([1, 2, 3, 4, 5, 6])
    y = np.array([7, 7, 7, 7, 8, 9])
    t = np.array([0, 1, 3, 4, 9, 10])
    p = np.array([1, 0, 1, 1, 0, 1])
    write_dvsg(tmp_path / "d/ibmGestureTrain/user01_lab/4.npy", x, y, t, p)
    write_dvsg(tmp_path / "d/ibmGestureTest/user24_lab/1.npy", x, y, t, p, structured=False)
    write_query_list(tmp_path / ad.DVSG_QUERY_FILE, ["ibmGestureTest/user24_lab/1.npy"])
    data = ad.load_dvsgesture(tmp_path / "d", tmp_path)
    expected = np.zeros((128, 128, 10), np.float32)
    expected[7, 1, 1] = expected[7, 2, 0] = 1  # bin 0: t 0 (ON), t 1 (OFF)
    expected[7, 3, 3] = 1  # bin 1: t 3 (ON)
    expected[7, 4, 5] = 1  # bin 2: t 4 (ON)
    expected[8, 5, 8] = 1  # bin 4: t 9 (OFF)
    for split in ("train", "query"):
        np.testing.assert_array_equal(data[split]["frames"][0], expected)
    assert len(data["gallery"]["frames"]) == 0 and data["gallery"]["frames"].shape[1:] == (128, 128, 10)


def test_load_dvsgesture_applies_real_query_list(tmp_path, anonynoise_protocol_dir):
    rng = np.random.default_rng(1)
    subset = ad.read_dvsg_query_subset(anonynoise_protocol_dir / ad.DVSG_QUERY_FILE)
    gallery = ["ibmGestureTest/user24_natural/0.npy", "ibmGestureTest/user29_lab/3.npy"]
    for relpath in [*subset.entries, *gallery, "ibmGestureTrain/user01_led/1.npy"]:
        write_dvsg(tmp_path / relpath, *random_events(rng, 20))
    data = ad.load_dvsgesture(tmp_path, anonynoise_protocol_dir, num_time_bins=1)
    sources = data["info"]["sources"]
    assert sorted(sources[i] for i in data["query"]["file_id"]) == sorted(subset.entries)
    assert sorted(sources[i] for i in data["gallery"]["file_id"]) == gallery
    assert len(data["val"]["file_id"]) == 62 and data["info"]["query_duplicates"] == 6
    users = {name: index for index, name in enumerate(["user01", *(f"user{u}" for u in range(24, 30))])}
    assert data["info"]["label_maps"]["identity"] == users
    assert sorted(set(data["query"]["identity"].tolist())) == list(range(1, 7))
    assert data["query"]["target"].tolist() == [int(sources[i].split("/")[2][:-4]) for i in data["query"]["file_id"]]


@pytest.mark.parametrize("case, message", [
    ("missing_test", r"ibmGestureTest: folder not found"),
    ("bad_user_folder", r"gesture_user24: user folders are named userNN_<lighting>"),
    ("bad_file_name", r"user24_lab/11.npy: DVS-Gesture files are named by their class index 0..10"),
    ("unreadable", r"user24_lab/2.npy: not a readable .npy array"),
    ("wrong_columns", r"user24_lab/2.npy: expected tonic's events"),
    ("outside", r"user24_lab/2.npy: event 1 has x=128, outside the 128x128"),
    ("unsorted", r"user24_lab/2.npy: event 2 has t=3 < t=5"),
    ("missing_query", r"dvsg_query_subset_ids.txt: 1 query entry is not in .*ibmGestureTest: "
                      r"\['ibmGestureTest/user25_led/0.npy'\]"),
])
def test_dvsgesture_errors(tmp_path, case, message):
    root = tmp_path / "d"
    events = (np.array([1, 2, 3]), np.array([1, 2, 3]), np.array([0, 5, 9]), np.array([0, 1, 1]))
    write_dvsg(root / "ibmGestureTrain/user01_lab/0.npy", *events)
    write_dvsg(root / "ibmGestureTest/user24_lab/2.npy", *events)
    write_query_list(tmp_path / ad.DVSG_QUERY_FILE, ["ibmGestureTest/user24_lab/2.npy"])
    bad = root / "ibmGestureTest/user24_lab/2.npy"
    if case == "missing_test":
        shutil.rmtree(root / "ibmGestureTest")
    elif case == "bad_user_folder":
        (root / "ibmGestureTest/gesture_user24").mkdir()
    elif case == "bad_file_name":
        write_dvsg(root / "ibmGestureTest/user24_lab/11.npy", *events)
    elif case == "unreadable":
        bad.write_bytes(b"not numpy")
    elif case == "wrong_columns":
        np.save(bad, np.zeros((3, 3)))
    elif case == "outside":
        write_dvsg(bad, np.array([1, 128, 3]), *events[1:])
    elif case == "unsorted":
        write_dvsg(bad, *events[:2], np.array([0, 5, 3]), events[3])
    elif case == "missing_query":
        write_query_list(tmp_path / ad.DVSG_QUERY_FILE, ["ibmGestureTest/user25_led/0.npy"])
    with pytest.raises(ad.AnonyNoiseDatasetError, match=message):
        ad.load_dvsgesture(root, tmp_path)


# ----------------------------------------------------------------------------------------------
# SEE


def see_expected(images, n):
    """Independent SEE rule: first floor(T/n)*n frames, (== 255) -> channel 2k, (== 0) -> channel 2k+1."""
    used = np.stack(images[: len(images) // n * n]).astype(np.int64)
    per_bin = len(used) // n
    channels = []
    for k in range(n):
        chunk = used[k * per_bin:(k + 1) * per_bin]
        channels += [(chunk == 255).sum(0), (chunk == 0).sum(0)]
    return np.stack(channels, axis=-1).astype(np.float32)


def test_load_see_fixture(tmp_path):
    rng = np.random.default_rng(2)
    levels = np.array([0, 40, 128, 255], np.uint8)
    entries = {
        "train": [("001", "happiness", 1), ("003", "angry", 2), ("001", "sadness", 3)],
        "val": [("007", "fear", 4), ("007", "angry", 5), ("009", "fear", 6), ("009", "surprise", 7)],
    }
    entries["query"] = [entries["val"][0], entries["val"][3]]
    entries["gallery"] = [entries["val"][1], entries["val"][2]]
    metadata, images = {}, {}
    for split, split_entries in entries.items():
        metadata[split] = [{"filename": sequence_name(seq, user, emotion), "user_id": user, "target_id": emotion}
                           for user, emotion, seq in split_entries]
    lengths = [7, 12, 5, 10, 6, 9, 11]
    for (user, emotion, seq), length in zip(entries["train"] + entries["val"], lengths):
        name = sequence_name(seq, user, emotion)
        images[name] = [levels[rng.integers(0, 4, (4, 6))] for _ in range(length)]
        # Unpadded names ("10.png" sorts before "2.png" as text): the reader must still keep the time order.
        names = [f"{i}.png" for i in range(length)] if seq == 2 else None
        write_sequence(tmp_path / "SEE/event" / emotion / name, images[name], names=names)
    (tmp_path / ad.SEE_METADATA_FILE).write_text(json.dumps(metadata))

    data = ad.load_see(tmp_path / "SEE", tmp_path)
    info = data["info"]
    assert info["label_maps"]["identity"] == {"001": 0, "003": 1, "007": 2, "009": 3}
    emotions = {"angry": 0, "fear": 1, "happiness": 2, "sadness": 3, "surprise": 4}
    assert info["label_maps"]["target"] == info["label_maps"]["condition"] == emotions
    assert info["frame_size"] == [4, 6] and len(info["sources"]) == 7
    for split, split_metadata in metadata.items():
        arrays = data[split]
        assert arrays["frames"].shape == (len(split_metadata), 4, 6, 10)
        assert arrays["target"].tolist() == arrays["condition"].tolist() == [
            emotions[e["target_id"]] for e in split_metadata]
        assert arrays["identity"].tolist() == [info["label_maps"]["identity"][e["user_id"]] for e in split_metadata]
        assert [info["sources"][i] for i in arrays["file_id"]] == [
            f"event/{e['target_id']}/{e['filename']}" for e in split_metadata]
        for frames, entry in zip(arrays["frames"], split_metadata):
            np.testing.assert_array_equal(frames, see_expected(images[entry["filename"]], 5))
    assert data["query"]["file_id"].tolist() == data["val"]["file_id"][[0, 3]].tolist()
    json.dumps(info)


def test_see_sequence_frames_hand_computed_and_jpeg(tmp_path):
    # 11 frames, n = 5: 10 used, 2 per bin. Frame k is uniform: 255 for even k, 0 for odd k, except frame 9 (128).
    frames = [np.full((3, 2), 255 if k % 2 == 0 else 0, np.uint8) for k in range(11)]
    frames[9][:] = 128
    write_sequence(tmp_path / "png", frames)
    expected = np.tile(np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0], np.float32), (3, 2, 1))
    np.testing.assert_array_equal(ad._see_sequence_frames(tmp_path / "png", 5), expected)
    # RGB images count only pure white and pure black, as grayscale.
    write_sequence(tmp_path / "rgb", [np.repeat(frame[..., None], 3, axis=-1) for frame in frames])
    np.testing.assert_array_equal(ad._see_sequence_frames(tmp_path / "rgb", 5), expected)
    # JPEG is lossy: the exact 0/255 tests apply to the decoded pixels.
    rng = np.random.default_rng(3)
    images = [np.where(rng.random((16, 16)) < 0.5, 255, 0).astype(np.uint8) for _ in range(6)]
    write_sequence(tmp_path / "jpg", images, suffix=".jpg")
    decoded = [np.asarray(Image.open(tmp_path / f"jpg/{k:05d}.jpg").convert("L")) for k in range(6)]
    np.testing.assert_array_equal(ad._see_sequence_frames(tmp_path / "jpg", 5), see_expected(decoded, 5))


def test_load_see_applies_real_metadata(tmp_path, anonynoise_protocol_dir):
    real = ad.read_see_metadata(anonynoise_protocol_dir / ad.SEE_METADATA_FILE)
    reduced = {split: [entry._asdict() for entry in entries] for split, entries in real.items()}
    reduced["train"] = reduced["train"][:10]
    (tmp_path / ad.SEE_METADATA_FILE).write_text(json.dumps(reduced))
    rng = np.random.default_rng(4)
    for entry in reduced["train"] + reduced["val"]:
        write_sequence(tmp_path / "event" / entry["target_id"] / entry["filename"],
                       [rng.choice(np.array([0, 255, 90], np.uint8), (2, 3)) for _ in range(5)])
    data = ad.load_see(tmp_path, tmp_path)
    val_ids = data["val"]["file_id"].tolist()
    assert sorted(data["query"]["file_id"].tolist() + data["gallery"]["file_id"].tolist()) == sorted(val_ids)
    assert len(set(data["val"]["identity"].tolist())) == 20 and len(set(data["val"]["target"].tolist())) == 7
    assert not set(data["train"]["identity"].tolist()) & set(data["val"]["identity"].tolist())
    for split in ("query", "gallery"):
        rows = [val_ids.index(file_id) for file_id in data[split]["file_id"]]
        np.testing.assert_array_equal(data[split]["frames"], data["val"]["frames"][rows])
        np.testing.assert_array_equal(data[split]["identity"], data["val"]["identity"][rows])


@pytest.mark.parametrize("case, message", [
    ("no_event_folder", r"SEE/event: folder not found"),
    ("missing_sequence", r"split 'val' not found \(emotion folders present: \['angry', 'neutraL'\]\)"),
    ("too_few_frames", r"2 frame image\(s\) .*fewer than the 5 time bins"),
    ("size_within", r"00003.png: size \(3, 2\) \(width, height\) differs"),
    ("size_between", r"frames of 3x2 px differ from the 2x2 px"),
    ("undecodable", r"00001.png: cannot decode the image"),
])
def test_see_errors(tmp_path, case, message):
    metadata = {split: [] for split in ad.SEE_SPLITS}
    metadata["train"] = [{"filename": sequence_name(1, "001", "angry"), "user_id": "001", "target_id": "angry"}]
    metadata["val"] = [{"filename": sequence_name(2, "002", "neutral"), "user_id": "002", "target_id": "neutral"}]
    (tmp_path / ad.SEE_METADATA_FILE).write_text(json.dumps(metadata))
    root = tmp_path / "SEE"
    square = [np.zeros((2, 2), np.uint8)] * 5
    write_sequence(root / "event/angry" / metadata["train"][0]["filename"], square)
    second = root / "event/neutral" / metadata["val"][0]["filename"]
    write_sequence(second, square)
    if case == "no_event_folder":
        shutil.rmtree(root / "event")
    elif case == "missing_sequence":
        (root / "event/neutral").rename(root / "event/neutraL")
    elif case == "too_few_frames":
        shutil.rmtree(second)
        write_sequence(second, square[:2])
    elif case == "size_within":
        write_sequence(second, [np.zeros((2, 3), np.uint8)], names=["00003.png"])
    elif case == "size_between":
        write_sequence(second, [np.zeros((2, 3), np.uint8)] * 5)
    elif case == "undecodable":
        (second / "00001.png").write_bytes(b"no image")
    with pytest.raises(ad.AnonyNoiseDatasetError, match=message):
        ad.load_see(root, tmp_path)


# ----------------------------------------------------------------------------------------------
# EventReIDv2


def reid_expected(t, x, y, p, n, size, mode):
    """Independent chain: int64 t, bounding-box frames, symmetric pad (extra on the bottom/right), torch resize."""
    x, y = x - x.min(), y - y.min()
    height, width = y.max() + 1, x.max() + 1
    frames = tonic_frames(x, y, t.astype(np.int64), p, n, height, width)
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = np.pad(frames, ((top, side - height - top), (left, side - width - left), (0, 0)))
    tensor = torch.from_numpy(square.transpose(2, 0, 1)[None].astype(np.float32))
    options = {"mode": "nearest"} if mode == "nearest" else {"mode": "bilinear", "align_corners": False,
                                                               "antialias": True}
    return torch.nn.functional.interpolate(tensor, size=(size, size), **options)[0].numpy().transpose(1, 2, 0)


def test_load_eventreidv2_fixture(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "reid"
    names = {"train": ["001_c1_001.txt", "001_c2_001.txt", "003_c4_002.txt"],
             "test": ["002_c1_001.txt", "002_c1_006.txt", "002_c3_001.txt", "005_c2_011.txt"]}
    events = {}
    for folder, folder_names in names.items():
        for index, name in enumerate(folder_names):
            events[name] = reid_events(rng, 150, width=11 + 5 * index, height=16 - index)
            write_chunk(root / folder / name, *events[name])
    (root / "test/005_c1_001.txt").write_text("")  # empty chunks are skipped, as in AnonyNoise
    (tmp_path / ad.EVENTREID_QUERY_FILE).write_text("005_c2_011.txt\n002_c1_001.txt\n")

    data = ad.load_eventreidv2(root, tmp_path, num_time_bins=5, size=12)
    info = data["info"]
    assert set(data) == {"train", "query", "gallery", "info"}
    assert info["label_maps"]["identity"] == {"001": 0, "002": 1, "003": 2, "005": 3}
    assert info["label_maps"]["condition"] == {"c1": 0, "c2": 1, "c3": 2, "c4": 3}
    assert info["empty_chunks"] == ["test/005_c1_001.txt"]
    members = {"train": names["train"], "query": ["002_c1_001.txt", "005_c2_011.txt"],
               "gallery": ["002_c1_006.txt", "002_c3_001.txt"]}
    for split, split_names in members.items():
        arrays = data[split]
        assert [info["sources"][i].split("/")[-1] for i in arrays["file_id"]] == split_names
        assert arrays["target"].tolist() == [-1] * len(split_names)
        assert arrays["identity"].tolist() == [info["label_maps"]["identity"][n[:3]] for n in split_names]
        assert arrays["condition"].tolist() == [int(n[5]) - 1 for n in split_names]
        mode = "nearest" if split == "train" else "bilinear_antialias"
        for frames, name in zip(arrays["frames"], split_names):
            np.testing.assert_allclose(frames, reid_expected(*events[name], 5, 12, mode), rtol=1e-5, atol=1e-5)
    assert len(set(info["sources"])) == len(info["sources"]) == 7
    json.dumps(info)


def test_eventreidv2_square_hand_computed(tmp_path):
    # Box 3 wide, 6 tall: pad 1 column left, 2 right. Timestamps truncate to 410000000 + (0, 1, 3, 6, 10):
    # window 10 // 5 = 2. Binned as floats (window 9.8 // 5 = 1 from 0.7) t = 3.99 would land in bin 3, not 1.
    t = 410000000 + np.array([0.7, 1.2, 3.99, 6.0, 10.5])
    x = np.array([100, 102, 101, 100, 102])
    y = np.array([50, 55, 52, 50, 51])
    p = np.array([1, 0, 0, 1, 1])
    write_chunk(tmp_path / "c.txt", t, x, y, p)
    expected = np.zeros((6, 6, 10), np.float32)
    expected[0, 1, 1] = 1  # t 0.7 -> 0: bin 0, ON, x 0 + pad 1
    expected[5, 3, 0] = 1  # t 1.2 -> 1: bin 0, OFF, x 2 + pad 1
    expected[2, 2, 2] = 1  # t 3.99 -> 3: bin 1, OFF
    expected[0, 1, 7] = 1  # t 6: bin 3, ON; the last event (t 10) is dropped
    np.testing.assert_array_equal(ad._eventreid_square_frames(tmp_path / "c.txt", 5), expected)


def test_load_eventreidv2_applies_real_query_list(tmp_path, anonynoise_protocol_dir):
    rng = np.random.default_rng(6)
    subset = ad.read_eventreid_query_subset(anonynoise_protocol_dir / ad.EVENTREID_QUERY_FILE)
    chunk = reid_events(rng, 40)
    gallery = ["002_c1_006.txt", "032_c4_001.txt"]
    for name in [*subset.entries, *gallery]:
        write_chunk(tmp_path / "test" / name, *chunk)
    write_chunk(tmp_path / "train/001_c1_001.txt", *chunk)
    data = ad.load_eventreidv2(tmp_path, anonynoise_protocol_dir, num_time_bins=2, size=8)
    sources = data["info"]["sources"]
    assert sorted(sources[i] for i in data["query"]["file_id"]) == sorted(f"test/{n}" for n in subset.entries)
    assert sorted(sources[i] for i in data["gallery"]["file_id"]) == [f"test/{n}" for n in gallery]
    pairs = sorted(zip(data["query"]["identity"].tolist(), data["query"]["condition"].tolist()))
    assert pairs == [(identity, camera) for identity in range(1, 12) for camera in range(4)]
    np.testing.assert_allclose(data["query"]["frames"][0], reid_expected(*chunk, 2, 8, "bilinear_antialias"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case, message", [
    ("missing_test", r"reid/test: folder not found"),
    ("bad_name", r"002-c1-011.txt: not an Event-ReId chunk name"),
    ("test_id_in_train", r"train/002_c1_001.txt: id '002' does not belong in train/"),
    ("malformed_row", r"002_c1_001.txt:2: expected 4 values"),
    ("missing_query", r"1 query entry is not in .*reid/test: \['005_c1_001.txt'\]"),
])
def test_eventreidv2_errors(tmp_path, case, message):
    root = tmp_path / "reid"
    chunk = reid_events(np.random.default_rng(7), 10)
    write_chunk(root / "train/001_c1_001.txt", *chunk)
    write_chunk(root / "test/002_c1_001.txt", *chunk)
    (tmp_path / ad.EVENTREID_QUERY_FILE).write_text("002_c1_001.txt\n")
    if case == "missing_test":
        shutil.rmtree(root / "test")
    elif case == "bad_name":
        write_chunk(root / "test/002-c1-011.txt", *chunk)
    elif case == "test_id_in_train":
        write_chunk(root / "train/002_c1_001.txt", *chunk)
    elif case == "malformed_row":
        (root / "test/002_c1_001.txt").write_text("410629076.1 3 4 1\n410629076.2 3 4\n")
    elif case == "missing_query":
        (tmp_path / ad.EVENTREID_QUERY_FILE).write_text("005_c1_001.txt\n")
    with pytest.raises(ad.AnonyNoiseDatasetError, match=message):
        ad.load_eventreidv2(root, tmp_path, size=8)
