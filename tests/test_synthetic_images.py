"""Tests of the embedded pedestrian-image dataset: Market-1501 layout and names, splits, distractors and junk,
image format, determinism, caching, and the colour model it adds to the synthetic pedestrians."""

import collections
import json
import re

import numpy as np
import pytest
from PIL import Image

from anon_jax.data import image_reid, synthetic, synthetic_images

# Full Market-1501 name, and the original readers' regex `([-\d]+)_c(\d)` for pid and camera.
FULL_NAME = re.compile(r"^(-1|\d{4})_c(\d)s1_(\d{6})_(\d{2})\.jpg$")
ORIGINAL_REGEX = re.compile(r"([-\d]+)_c(\d)")


def tiny_config(seed=0):
    config = synthetic_images.synthetic_images_config()
    config.num_identities, config.num_train_identities, config.num_cameras = 6, 3, 3
    config.images_per_camera = 3
    config.height, config.width = 48, 24
    config.num_distractors, config.num_junk = 2, 2
    config.seed = seed
    return config


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_images") / "market"
    return root, synthetic_images.generate(root, tiny_config())


def listing(root):
    """{folder: sorted jpg names}."""
    return {folder: sorted(path.name for path in (root / folder).glob("*.jpg")) for folder in synthetic_images.FOLDERS}


def file_bytes(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*.jpg"))}


def parsed(names):
    """[(pid, camera)] by the original regex."""
    return [(int(m[1]), int(m[2])) for m in map(ORIGINAL_REGEX.match, names)]


def test_layout_names_and_counts(generated):
    root, summary = generated
    assert sorted(p.name for p in root.iterdir()) == sorted(synthetic_images.FOLDERS + (synthetic_images.MARKER_NAME,))
    assert not list(root.parent.glob(".market*"))  # no staging folder left behind
    names = listing(root)
    for folder, folder_names in names.items():
        for name in folder_names:
            match = FULL_NAME.match(name)
            assert match, name
            assert parsed([name]) == [(int(match[1]), int(match[2]))]
    # 3 train ids x 3 cameras x 3 frames; one query per (test id, camera); the other 2 frames, 2 distractors, 2 junk.
    assert (len(names["bounding_box_train"]), len(names["query"]), len(names["bounding_box_test"])) == (27, 9, 22)
    assert {key: summary[key] for key in ("num_train_images", "num_query_images", "num_gallery_images",
                                          "num_distractor_images", "num_junk_images")} == dict(
        num_train_images=27, num_query_images=9, num_gallery_images=22, num_distractor_images=2, num_junk_images=2)
    assert not summary["skipped"] and summary["num_test_identities"] == 3
    with open(root / synthetic_images.MARKER_NAME, encoding="utf-8") as f:
        assert json.load(f)["config"]["num_identities"] == 6


def test_splits_identities_and_queries(generated):
    root, _ = generated
    names = listing(root)
    train, query, gallery = (parsed(names[f]) for f in ("bounding_box_train", "query", "bounding_box_test"))
    assert {pid for pid, _ in train} == {1, 2, 3}
    assert collections.Counter(train) == {(pid, cam): 3 for pid in (1, 2, 3) for cam in (1, 2, 3)}
    assert collections.Counter(query) == {(pid, cam): 1 for pid in (4, 5, 6) for cam in (1, 2, 3)}
    counts = collections.Counter(gallery)
    assert {key: n for key, n in counts.items() if key[0] > 0} == {(pid, cam): 2 for pid in (4, 5, 6)
                                                                   for cam in (1, 2, 3)}
    # Distractor d is seen in camera d + 1; junk j is box 02 of test identity 4 + j in camera j + 1.
    assert sorted(key for key in counts.elements() if key[0] <= 0) == [(-1, 1), (-1, 2), (0, 1), (0, 2)]
    junk = [name for name in names["bounding_box_test"] if name.startswith("-1_")]
    assert all(name.endswith("_02.jpg") for name in junk)
    # Query and gallery frames of one (id, camera) are different frames, each named once.
    assert len(set(names["query"]) | set(names["bounding_box_test"])) == 31


def test_market_reader_reads_it(generated):
    root, _ = generated
    dataset = image_reid.read_market1501(root)
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (27, 9, 20)  # junk dropped
    np.testing.assert_array_equal(np.unique(dataset.train.labels), [0, 1, 2])
    assert sorted(set(dataset.gallery.pids.tolist())) == [0, 4, 5, 6]
    assert sorted(set(dataset.query.camids.tolist())) == [0, 1, 2]


def test_images_are_rgb_crops_with_varying_pose(generated):
    root, _ = generated
    names = listing(root)["bounding_box_train"]
    images = {}
    for name in names:
        with Image.open(root / "bounding_box_train" / name) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (24, 48))
            images[name] = np.asarray(image)
    first = [images[name] for name in names if name.startswith("0001_c1")]
    assert len(first) == 3 and first[0].dtype == np.uint8 and first[0].shape == (48, 24, 3)
    assert np.abs(first[0].astype(float) - first[1]).mean() > 1.0  # frames along the walk differ
    assert np.abs(first[0].astype(float)[..., 0] - first[0][..., 2]).mean() > 3.0  # colour, not grey


def test_junk_is_the_stretched_lower_half_of_its_frame(generated):
    root, _ = generated
    gallery = listing(root)["bounding_box_test"]
    query = listing(root)["query"]
    for junk_name in (name for name in gallery if name.startswith("-1_")):
        camera_frame = junk_name[len("-1_"):-len("_02.jpg")]
        source_name = next(name for name in gallery + query if name[5:-7] == camera_frame and name[0] != "-")
        folder = "query" if source_name in query else "bounding_box_test"
        source = np.asarray(Image.open(root / folder / source_name), dtype=float)
        junk = np.asarray(Image.open(root / "bounding_box_test" / junk_name), dtype=float)
        stretched = np.repeat(source[24:], 2, axis=0)
        assert np.abs(junk - stretched).mean() < 4.0 < np.abs(junk - source).mean()


def test_same_seed_same_bytes_other_seed_differs(generated, tmp_path):
    root, _ = generated
    again = synthetic_images.generate(tmp_path / "again", tiny_config())
    assert not again["skipped"]
    assert file_bytes(tmp_path / "again") == file_bytes(root)
    synthetic_images.generate(tmp_path / "other", tiny_config(seed=1))
    first, other = file_bytes(root), file_bytes(tmp_path / "other")
    shared = set(first) & set(other)  # frame numbers depend on the seed too
    assert all(first[name] != other[name] for name in shared) and set(first) != set(other)


def test_cache_reuse_regeneration_and_foreign_folder(tmp_path):
    config = tiny_config()
    config.num_identities, config.num_train_identities, config.num_cameras = 3, 2, 2
    config.num_distractors, config.num_junk = 0, 0
    root = tmp_path / "market"
    first = synthetic_images.generate(root, config)
    some_file = next(root.rglob("*.jpg"))
    modified, quality95 = some_file.stat().st_mtime_ns, some_file.read_bytes()
    rerun = synthetic_images.generate(root, config)
    assert rerun["skipped"] and some_file.stat().st_mtime_ns == modified
    assert rerun["num_train_images"] == first["num_train_images"] == 2 * 2 * 3

    config.jpeg_quality = 50  # another config: the folder is regenerated in place
    changed = synthetic_images.generate(root, config)
    assert not changed["skipped"] and len(some_file.read_bytes()) < 0.9 * len(quality95)
    with open(root / synthetic_images.MARKER_NAME, encoding="utf-8") as f:
        assert json.load(f)["config"]["jpeg_quality"] == 50
    assert [p.name for p in tmp_path.iterdir()] == ["market"]  # no staging or swapped-out folder left

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a dataset")
    with pytest.raises(synthetic.SyntheticDataError, match="not empty"):
        synthetic_images.generate(foreign, config)


def test_plan_of_default_config_has_unique_names():
    config = synthetic_images.synthetic_images_config()
    plan = synthetic_images.image_plan(config)
    names = [(entry["folder"], entry["name"]) for entry in plan]
    assert len(names) == len(set(names)) == 40 * 4 * 8 + 8 + 4
    assert synthetic_images.market_image_name(2, 1, 451, 3) == "0002_c1s1_000451_03.jpg"
    assert synthetic_images.market_image_name(-1, 6, 7) == "-1_c6s1_000007_01.jpg"


@pytest.mark.parametrize("field, value, message", [
    ("num_train_identities", 6, "num_train_identities"),
    ("num_cameras", 10, "num_cameras"),
    ("images_per_camera", 2, "images_per_camera"),
    ("num_junk", 100, "junk"),
    ("jpeg_quality", 0, "jpeg_quality"),
])
def test_bad_config_raises(field, value, message, tmp_path):
    config = tiny_config()
    config[field] = value
    with pytest.raises(synthetic.SyntheticDataError, match=message):
        synthetic_images.generate(tmp_path / "market", config)
    assert not (tmp_path / "market").exists()


def test_colour_model():
    # cb = 0.2 * 0.5 = 0.1, cr = 0: R = Y, G = Y - 0.344136 cb, B = Y + 1.772 cb.
    np.testing.assert_allclose(synthetic.rgb_from_luma(0.5, 0.0, 0.2), [0.5, 0.4655864, 0.6772])
    grey = synthetic.sample_identity(0, 3)
    colours = synthetic.sample_identity_colours(0, 3)
    luma = np.array([0.299, 0.587, 0.114])
    for part in ("skin", "hair"):  # low saturation: never clipped, so the luma is the grey reflectance
        np.testing.assert_allclose(luma @ colours[part], grey[part], rtol=1e-6)
    response = synthetic.sample_camera_colours(0, 2)
    np.testing.assert_allclose(luma @ response["white_balance"], 1.0)

    config = synthetic.default_synthetic_config()
    config.height, config.width, config.duration_s, config.fps = 32, 16, 0.2, 10.0
    frames, timestamps = synthetic.render_colour_recording(config, 3, 2)
    grey_frames, grey_timestamps = synthetic.render_recording(config, 3, 2)
    assert frames.shape == (3, 32, 16, 3) and frames.dtype == np.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    np.testing.assert_array_equal(timestamps, grey_timestamps)
    # The person moves like the grey one: frame-to-frame changes happen at the same pixels.
    moved = np.abs(np.diff(frames, axis=0)).max(-1) > 0.02
    grey_moved = np.abs(np.diff(grey_frames, axis=0)) > 0.02
    assert (moved & grey_moved).sum() > 0.8 * grey_moved.sum()
