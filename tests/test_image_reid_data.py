"""Tests of the pedestrian-image ReId readers (Market-1501, MSMT17 in both layouts, CUHK03 new protocol and its
extraction), the seeded 80/20 validation split tool and the TFDS builder, on tiny generated fixture folders."""

import hashlib
import json
import os
import pathlib
import zlib

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from anon_jax.data import image_reid, tfds_image_reid
from anon_jax.data.image_reid import ImageReidDataError

MARKET_TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c1s1_000551_01.jpg", "0002_c2s1_000301_02.jpg",
                "0007_c3s3_071952_01.jpg", "0007_c6s2_001234_00.jpg", "0010_c2s1_002101_01.jpg"]
MARKET_QUERY = ["0007_c1s1_000101_00.jpg", "0010_c5s1_003001_00.jpg"]
MARKET_GALLERY = ["-1_c1s1_000401_03.jpg", "0000_c1s1_000000_01.jpg", "0000_c3s2_000020_02.jpg",
                  "0007_c2s1_000201_00.jpg", "0010_c4s1_000301_01.jpg"]


def _write_image(path: pathlib.Path, index: int, size=(12, 6)) -> None:
    """A small RGB image whose colours depend on index (saved as JPEG or PNG by the suffix)."""
    rng = np.random.default_rng(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _write_folder(root: pathlib.Path, folder: str, names, size=(12, 6)) -> None:
    for i, name in enumerate(names):
        _write_image(root / folder / name, zlib.crc32(name.encode()) + i, size)


@pytest.fixture()
def market_root(tmp_path):
    root = tmp_path / "market1501"
    _write_folder(root, "bounding_box_train", MARKET_TRAIN, size=(20, 10))
    _write_folder(root, "query", MARKET_QUERY)
    _write_folder(root, "bounding_box_test", MARKET_GALLERY)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")  # real Market ships these
    return root


def _tree_digest(root: pathlib.Path) -> dict[str, str]:
    return {os.fspath(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Name parsing


def test_parse_market_names():
    assert image_reid.parse_market_name("0002_c1s1_000451_03.jpg") == (2, 0)
    assert image_reid.parse_market_name("bounding_box_test/-1_c6s1_000401_03.jpg") == (-1, 5)
    assert image_reid.parse_market_name("0000_c3s2_000020_02.jpg") == (0, 2)
    # MSMT17 cameras above 9: all digits by default, the original's single digit on request.
    assert image_reid.parse_market_name("0103_c14s2_000020_02.jpg") == (103, 13)
    assert image_reid.parse_market_name("0103_c15_0020.jpg") == (103, 14)
    assert image_reid.parse_market_name("0103_c14s2_000020_02.jpg", single_digit_camera=True) == (103, 0)
    assert image_reid.parse_market_name("0103_c9s2_000020_02.jpg", single_digit_camera=True) == (103, 8)
    with pytest.raises(ImageReidDataError, match=r"'img_0002\.jpg'.*not a Market-style"):
        image_reid.parse_market_name("img_0002.jpg")
    with pytest.raises(ImageReidDataError, match="camera numbers start at 1"):
        image_reid.parse_market_name("0002_c0s1_000451_03.jpg")


def test_parse_msmt17_v1_and_cuhk03_names():
    assert image_reid.parse_msmt17_v1_camid("0000/0000_000_01_0303morning_0015_0.jpg") == 0
    assert image_reid.parse_msmt17_v1_camid("1040/1040_021_15_0113noon_0964_1.jpg") == 14
    assert image_reid.parse_msmt17_v1_camid("0007_003_10_0303morning_0015_0.jpg") == 9
    with pytest.raises(ImageReidDataError, match="'0000/0000_000.jpg'"):
        image_reid.parse_msmt17_v1_camid("0000/0000_000.jpg")
    assert image_reid.cuhk03_image_name(1, 7, 2, 6) == "1_007_2_06.png"
    assert image_reid.parse_cuhk03_camid("1_007_1_03.png") == 0
    assert image_reid.parse_cuhk03_camid("images_labeled/5_120_2_10.png") == 1
    with pytest.raises(ImageReidDataError, match="'1_007_3_03.png'"):
        image_reid.parse_cuhk03_camid("1_007_3_03.png")


# ----------------------------------------------------------------------------------------------
# Market-1501


def test_read_market1501(market_root):
    dataset = image_reid.read_market1501(market_root)
    assert dataset.name == "market1501" and list(dataset.splits()) == ["train", "query", "gallery"]
    train = dataset.train
    assert train.relpaths.tolist() == [f"bounding_box_train/{n}" for n in MARKET_TRAIN]
    assert train.paths[0] == os.fspath(market_root / "bounding_box_train" / MARKET_TRAIN[0])
    assert train.pids.tolist() == [2, 2, 2, 7, 7, 10]
    assert train.camids.tolist() == [0, 0, 1, 2, 5, 1]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 2]  # ascending pids 2, 7, 10
    assert dataset.num_train_ids == 3
    assert dataset.query.labels is None and dataset.query.pids.tolist() == [7, 10]
    gallery = dataset.gallery
    # junk -1 dropped, distractors 0000 kept, Thumbs.db ignored; sorted by name
    assert [pathlib.Path(p).name for p in gallery.relpaths] == MARKET_GALLERY[1:]
    assert gallery.pids.tolist() == [0, 0, 7, 10]
    assert gallery.camids.tolist() == [0, 2, 1, 3]
    query_images = image_reid.load_images(dataset.query, height=8, width=4)
    assert query_images.shape == (2, 8, 4, 3) and query_images.dtype == np.uint8
    np.testing.assert_array_equal(query_images[1], image_reid.load_image(dataset.query.paths[1], height=8, width=4))
    assert image_reid.summarize(dataset) == {
        "train": {"images": 6, "ids": 3, "cameras": [0, 1, 2, 5]},
        "query": {"images": 2, "ids": 2, "cameras": [0, 4]},
        "gallery": {"images": 4, "ids": 3, "cameras": [0, 1, 2, 3]},
    }


def test_market_errors(market_root, tmp_path):
    with pytest.raises(ImageReidDataError, match=r"missing.*market1501 dataset folder not found"):
        image_reid.read_market1501(tmp_path / "missing")
    (market_root / "query" / MARKET_QUERY[0]).rename(market_root / "query" / "person7.jpg")
    with pytest.raises(ImageReidDataError, match=r"query: 'person7\.jpg': not a Market-style image name"):
        image_reid.read_market1501(market_root)
    for name in ("person7.jpg", MARKET_QUERY[1]):
        (market_root / "query" / name).unlink()
    _write_image(market_root / "query" / "-1_c1s1_000001_00.jpg", 0)  # junk only: empty after filtering
    with pytest.raises(ImageReidDataError, match=r"query: the split is empty"):
        image_reid.read_market1501(market_root)
    os.rename(market_root / "query", market_root / "queries")
    with pytest.raises(ImageReidDataError, match=r"market1501/query: image folder not found"):
        image_reid.read_market1501(market_root)


# ----------------------------------------------------------------------------------------------
# MSMT17


def test_msmt17_market_style_cameras_above_nine(tmp_path):
    root = tmp_path / "msmt17"
    _write_folder(root, "bounding_box_train", ["0001_c14s1_000001_00.jpg", "0001_c1s1_000002_00.jpg",
                                               "0002_c10s3_000003_00.jpg", "0002_c9s1_000004_00.jpg"])
    _write_folder(root, "query", ["0003_c15s1_000005_00.jpg"])
    _write_folder(root, "bounding_box_test", ["0000_c11s1_000006_00.jpg", "0003_c2s1_000007_00.jpg"])
    dataset = image_reid.read_msmt17(root)
    assert dataset.name == "msmt17"
    assert dataset.train.camids.tolist() == [13, 0, 9, 8]
    assert dataset.train.labels.tolist() == [0, 0, 1, 1]
    assert dataset.query.camids.tolist() == [14]
    assert dataset.gallery.camids.tolist() == [10, 1]
    assert dataset.gallery.pids.tolist() == [0, 3]  # pid 0 is kept like any other id
    legacy = image_reid.read_dataset("msmt17", root, single_digit_camera=True)
    assert legacy.train.camids.tolist() == [0, 0, 0, 8]
    assert legacy.query.camids.tolist() == [0]
    assert legacy.gallery.camids.tolist() == [0, 1]
    with pytest.raises(ImageReidDataError, match="MSMT17 only"):
        image_reid.read_dataset("market1501", root, single_digit_camera=True)


def _write_msmt17_v1(root: pathlib.Path) -> None:
    lists = {
        "list_train.txt": ("train", [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                                     ("0000/0000_001_14_0303morning_0016_0.jpg", 0),
                                     ("0002/0002_000_07_0303noon_0100_1.jpg", 2)]),
        "list_val.txt": ("train", [("0001/0001_000_10_0303morning_0020_0.jpg", 1)]),
        "list_query.txt": ("test", [("0005/0005_000_15_0113noon_0001_0.jpg", 5)]),
        "list_gallery.txt": ("test", [("0005/0005_001_03_0113noon_0002_0.jpg", 5),
                                      ("0000/0000_000_12_0113noon_0003_0.jpg", 0)]),
    }
    for i, (list_name, (folder, entries)) in enumerate(lists.items()):
        for j, (rel, _) in enumerate(entries):
            _write_image(root / folder / rel, 10 * i + j)
        (root / list_name).write_text("".join(f"{rel} {pid}\n" for rel, pid in entries))


def test_msmt17_v1_list_layout(tmp_path):
    root = tmp_path / "msmt17_v1"
    _write_msmt17_v1(root)
    dataset = image_reid.read_msmt17(root)
    train = dataset.train
    assert train.relpaths.tolist() == ["train/0000/0000_000_01_0303morning_0015_0.jpg",
                                       "train/0000/0000_001_14_0303morning_0016_0.jpg",
                                       "train/0002/0002_000_07_0303noon_0100_1.jpg",
                                       "train/0001/0001_000_10_0303morning_0020_0.jpg"]  # train then val
    assert train.pids.tolist() == [0, 0, 2, 1]
    assert train.labels.tolist() == [0, 0, 2, 1]
    assert train.camids.tolist() == [0, 13, 6, 9]
    assert dataset.query.camids.tolist() == [14] and dataset.query.pids.tolist() == [5]
    assert dataset.gallery.camids.tolist() == [2, 11]
    assert dataset.gallery.paths[1] == os.fspath(root / "test/0000/0000_000_12_0113noon_0003_0.jpg")

    with pytest.raises(ImageReidDataError, match="Market-style layout only"):
        image_reid.read_msmt17(root, single_digit_camera=True)
    with open(root / "list_val.txt", "a") as f:
        f.write("\n0001/0001_001_02_0303morning_0021_0.jpg one\n")
    with pytest.raises(ImageReidDataError, match=r"list_val\.txt:3: expected '<relpath> <pid>'"):
        image_reid.read_msmt17(root)
    (root / "list_val.txt").write_text("0001/0001_001_02_0303morning_0021_0.jpg 1\n")
    with pytest.raises(ImageReidDataError, match=r"1 listed image\(s\) missing.*train/0001/0001_001_02"):
        image_reid.read_msmt17(root)
    (root / "list_val.txt").write_text("0001/0001_000_10_0303morning_0020_0.jpg 1\n")
    (root / "list_query.txt").unlink()
    with pytest.raises(ImageReidDataError, match=r"list_query\.txt: MSMT17_V1 list file not found"):
        image_reid.read_msmt17(root)
    with pytest.raises(ImageReidDataError, match="not an MSMT17 folder"):
        image_reid.read_msmt17(tmp_path)


# ----------------------------------------------------------------------------------------------
# CUHK03

CUHK03_FILES = ["1_001_1_01.png", "1_001_2_06.png", "1_002_1_01.png", "1_002_2_07.png",
                "2_001_1_02.png", "2_001_2_10.png", "2_002_1_05.png", "2_002_2_09.png"]
CUHK03_LABELS = [3, 3, 1, 1, 844, 844, 20, 20]


def _write_protocol(path: pathlib.Path, *, drop: str | None = None, train_idx=(1, 2, 3, 4)) -> None:
    """A new-protocol .mat in the published field layout: filelist an N x 1 cell of names, labels and the
    1-based train/query/gallery indices as N x 1 doubles."""
    filelist = np.empty((len(CUHK03_FILES), 1), dtype=object)
    for i, name in enumerate(CUHK03_FILES):
        filelist[i, 0] = name
    column = lambda values: np.asarray(values, np.float64).reshape(-1, 1)  # noqa: E731
    fields = {"filelist": filelist, "labels": column(CUHK03_LABELS), "camId": column([1, 2] * 4),
              "train_idx": column(train_idx), "query_idx": column([5, 8]), "gallery_idx": column([6, 7])}
    fields.pop(drop, None)
    scipy.io.savemat(path, fields)


@pytest.fixture()
def cuhk03_root(tmp_path):
    root = tmp_path / "cuhk03"
    for kind in ("detected", "labeled"):
        _write_folder(root, f"images_{kind}", CUHK03_FILES, size=(14, 6))
        _write_protocol(root / f"cuhk03_new_protocol_config_{kind}.mat")
    return root


def test_read_cuhk03(cuhk03_root):
    dataset = image_reid.read_cuhk03(cuhk03_root)
    assert dataset.name == "cuhk03_detected"
    assert dataset.train.relpaths.tolist() == [f"images_detected/{n}" for n in CUHK03_FILES[:4]]
    assert dataset.train.pids.tolist() == [3, 3, 1, 1]
    assert dataset.train.labels.tolist() == [1, 1, 0, 0]
    assert dataset.train.camids.tolist() == [0, 1, 0, 1]
    assert dataset.query.relpaths.tolist() == ["images_detected/2_001_1_02.png", "images_detected/2_002_2_09.png"]
    assert dataset.query.pids.tolist() == [844, 20] and dataset.query.camids.tolist() == [0, 1]
    assert dataset.gallery.pids.tolist() == [844, 20] and dataset.gallery.camids.tolist() == [1, 0]
    labeled = image_reid.read_dataset("cuhk03_labeled", cuhk03_root)
    assert labeled.name == "cuhk03_labeled"
    assert labeled.gallery.paths[0] == os.fspath(cuhk03_root / "images_labeled/2_001_2_10.png")


def test_cuhk03_errors(cuhk03_root):
    mat = cuhk03_root / "cuhk03_new_protocol_config_detected.mat"
    _write_protocol(mat, drop="gallery_idx")
    with pytest.raises(ImageReidDataError, match=r"config_detected\.mat: missing field\(s\) \['gallery_idx'\]"):
        image_reid.read_cuhk03(cuhk03_root)
    _write_protocol(mat, train_idx=(0, 1))
    with pytest.raises(ImageReidDataError, match=r"'train_idx' must hold 1-based integer indices into filelist "
                                                 r"\(1\.\.8\)"):
        image_reid.read_cuhk03(cuhk03_root)
    _write_protocol(mat)
    (cuhk03_root / "images_detected" / CUHK03_FILES[7]).unlink()
    with pytest.raises(ImageReidDataError, match=r"\(query_idx\): 1 listed image\(s\) missing.*2_002_2_09\.png"):
        image_reid.read_cuhk03(cuhk03_root)
    mat.unlink()
    with pytest.raises(ImageReidDataError, match="CUHK03 protocol file not found"):
        image_reid.read_cuhk03(cuhk03_root)
    with pytest.raises(ImageReidDataError, match="images_labeled: CUHK03 labeled image"):
        image_reid.read_cuhk03(cuhk03_root.parent, labeled=True)


def _write_raw_cuhk03(path: pathlib.Path, images: dict) -> None:
    """A MATLAB v7.3 cuhk-03.mat as h5py sees it: per kind a 1 x pairs cell of references to pids x 10 cells
    (stored transposed, 10 x pids); each image stored transposed (3, W, H); empty cells as MATLAB's (2,) zeros."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        for kind in ("detected", "labeled"):
            pair_refs = []
            for pair_index, pair in enumerate(images[kind]):
                cells = np.empty((10, len(pair)), dtype=h5py.ref_dtype)
                for pid, row in enumerate(pair):
                    for j in range(10):
                        data = np.zeros(2, np.uint64) if row[j] is None else row[j].T
                        cells[j, pid] = refs.create_dataset(f"{kind}_{pair_index}_{pid}_{j}", data=data).ref
                pair_refs.append(refs.create_dataset(f"{kind}_{pair_index}", data=cells).ref)
            f.create_dataset(kind, data=np.array([pair_refs], dtype=h5py.ref_dtype))


def test_extract_cuhk03_images(tmp_path):
    rng = np.random.default_rng(0)

    def person(present):
        return [rng.integers(0, 256, (8 + j, 5, 3), dtype=np.uint8) if j in present else None for j in range(10)]

    images = {"detected": [[person({0, 1, 5}), person({2, 9})], [person({4, 6, 7})]],
              "labeled": [[person({0}), person({5})], [person({3, 8})]]}
    mat_path = tmp_path / "cuhk-03.mat"
    _write_raw_cuhk03(mat_path, images)
    root = tmp_path / "cuhk03"
    counts = image_reid.extract_cuhk03_images(mat_path, root)
    assert counts == {"detected": 8, "labeled": 4}
    assert sorted(os.listdir(root / "images_detected")) == [
        "1_001_1_01.png", "1_001_1_02.png", "1_001_2_06.png", "1_002_1_03.png", "1_002_2_10.png",
        "2_001_1_05.png", "2_001_2_07.png", "2_001_2_08.png"]
    assert sorted(os.listdir(root / "images_labeled")) == [
        "1_001_1_01.png", "1_002_2_06.png", "2_001_1_04.png", "2_001_2_09.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(root / "images_detected/2_001_2_08.png")),
                                  images["detected"][1][0][7])
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging folders left
    with pytest.raises(ImageReidDataError, match="not a MATLAB v7.3"):
        image_reid.extract_cuhk03_images(root / "images_detected/1_001_1_01.png", tmp_path / "other")


# ----------------------------------------------------------------------------------------------
# Images


def test_load_image_bilinear_hand_computed(tmp_path):
    path = tmp_path / "ramp.png"
    Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)).save(path)
    # Width 2 -> 4: output centres 0.25, 0.75, 1.25, 1.75 in input pixels; triangle weights renormalised over
    # the pixels inside the image give 0, 0.25*255, 0.75*255, 255.
    image = image_reid.load_image(path, height=1, width=4)
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    np.testing.assert_array_equal(image[0, :, 0], [0, 64, 191, 255])
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((4, 2), 77, np.uint8)).save(gray)
    np.testing.assert_array_equal(image_reid.load_image(gray, height=8, width=4), np.full((8, 4, 3), 77, np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"JFIF? no")
    with pytest.raises(ImageReidDataError, match=r"broken\.jpg: not a readable image"):
        image_reid.load_image(tmp_path / "broken.jpg")


# ----------------------------------------------------------------------------------------------
# 80/20 train/validation split


def test_split_layout_and_reader(market_root, tmp_path):
    before = _tree_digest(market_root)
    out = tmp_path / "market1501_val"
    # 6 train images: int(6 * 0.5) = 3 validation images, the first three sorted names (all of pid 2).
    counts = image_reid.split_train_validation(market_root, out, seed=0, val_fraction=0.5, val_query_fraction=0.5)
    assert _tree_digest(market_root) == before  # the source is untouched
    draws = np.random.default_rng(0).random(3) < 0.5
    expected_query = [n for n, q in zip(MARKET_TRAIN[:3], draws) if q]
    assert sorted(os.listdir(out / "bounding_box_val_query")) == expected_query
    expected_gallery = [n for n in MARKET_TRAIN[:3] if n not in expected_query]
    assert sorted(os.listdir(out / "bounding_box_val_gallery")) == expected_gallery
    assert sorted(os.listdir(out / "bounding_box_train")) == MARKET_TRAIN[3:]
    assert sorted(os.listdir(out / "bounding_box_test")) == MARKET_GALLERY  # junk copied, Thumbs.db not
    assert counts == {"bounding_box_train": 3, "query": 2, "bounding_box_test": 5,
                      "bounding_box_val_query": len(expected_query), "bounding_box_val_gallery": len(expected_gallery)}
    manifest = json.loads((out / image_reid.SPLIT_MANIFEST).read_text())
    assert manifest["seed"] == 0 and manifest["counts"] == counts
    copied = out / "bounding_box_train" / MARKET_TRAIN[3]
    assert copied.read_bytes() == (market_root / "bounding_box_train" / MARKET_TRAIN[3]).read_bytes()
    assert copied.stat().st_ino != (market_root / "bounding_box_train" / MARKET_TRAIN[3]).stat().st_ino

    dataset = image_reid.read_dataset("market1501_val", out)
    assert dataset.name == "market1501_val"
    assert list(dataset.splits()) == ["train", "query", "gallery", "val_query", "val_gallery"]
    assert dataset.train.pids.tolist() == [7, 7, 10] and dataset.train.labels.tolist() == [0, 0, 1]
    assert dataset.val_query.pids.tolist() == [2] * len(expected_query) and dataset.val_query.labels is None
    assert len(dataset.val_gallery) == 3 - len(expected_query)
    assert dataset.gallery.pids.tolist() == [0, 0, 7, 10]


def test_split_determinism_and_proportions(tmp_path):
    root = tmp_path / "big"
    # Empty files suffice: the split tool only lists and places names. pid blocks of 7 images.
    names = [f"{i // 7 + 1:04d}_c{i % 6 + 1}s1_{i:06d}_00.jpg" for i in range(1000)]
    for folder, folder_names in (("bounding_box_train", names), ("query", names[:2]), ("bounding_box_test", names[:3])):
        (root / folder).mkdir(parents=True)
        for name in folder_names:
            (root / folder / name).touch()
    listing = {}
    for out_name, seed in (("a", 5), ("b", 5), ("c", 6)):
        counts = image_reid.split_train_validation(root, tmp_path / out_name, seed=seed, val_fraction=0.3)
        listing[out_name] = {folder: sorted(os.listdir(tmp_path / out_name / folder)) for folder in counts}
        assert counts["bounding_box_train"] == 700
        assert counts["bounding_box_val_query"] + counts["bounding_box_val_gallery"] == 300
        # Binomial(300, 0.2): mean 60, sd 6.9
        assert 40 <= counts["bounding_box_val_query"] <= 80
        assert listing[out_name]["bounding_box_train"] == sorted(names)[300:]
    assert listing["a"] == listing["b"]
    assert listing["a"]["bounding_box_val_query"] != listing["c"]["bounding_box_val_query"]
    # The boundary pid (image 299 is pid 43's third image) lands on both sides, as in the original.
    assert {n[:4] for n in listing["a"]["bounding_box_train"]} & {n[:4] for n in names[:300]} == {"0043"}


def test_split_safety(market_root, tmp_path, monkeypatch):
    out = tmp_path / "val"
    with pytest.raises(ImageReidDataError, match="outside the source"):
        image_reid.split_train_validation(market_root, market_root / "val", seed=0, val_fraction=0.5)
    with pytest.raises(ImageReidDataError, match="outside the source"):
        image_reid.split_train_validation(market_root, market_root.parent, seed=0, val_fraction=0.5)
    with pytest.raises(ImageReidDataError, match=r"would leave \['bounding_box_val_query'\] empty"):
        image_reid.split_train_validation(market_root, out, seed=0, val_fraction=0.2, val_query_fraction=0.01)
    with pytest.raises(ImageReidDataError, match="strictly between 0 and 1"):
        image_reid.split_train_validation(market_root, out, seed=0, val_fraction=1.0)

    calls = []

    def failing_copy(source, target):
        calls.append(source)
        if len(calls) == 4:
            raise OSError("disk full")
        return pathlib.Path(target).write_bytes(pathlib.Path(source).read_bytes())

    monkeypatch.setattr(image_reid.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        image_reid.split_train_validation(market_root, out, seed=0, val_fraction=0.5, val_query_fraction=0.5)
    assert sorted(os.listdir(tmp_path)) == ["market1501"]  # nothing half-written left behind
    monkeypatch.undo()

    image_reid.split_train_validation(market_root, out, seed=0, val_fraction=0.5, val_query_fraction=0.5, link=True)
    name = MARKET_TRAIN[4]
    linked, source = out / "bounding_box_train" / name, market_root / "bounding_box_train" / name
    assert linked.stat().st_ino == source.stat().st_ino
    with pytest.raises(ImageReidDataError, match="already exists"):
        image_reid.split_train_validation(market_root, out, seed=1, val_fraction=0.5, val_query_fraction=0.5)
    image_reid.split_train_validation(market_root, out, seed=1, val_fraction=0.5, val_query_fraction=0.5,
                                      overwrite=True)
    assert json.loads((out / image_reid.SPLIT_MANIFEST).read_text())["seed"] == 1


def test_command_line(market_root, tmp_path, capsys):
    assert image_reid.main(["info", "--dataset", "market1501", "--root", os.fspath(market_root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["train: 6 images, 3 ids, 4 cameras [0, 1, 2, 5]",
                         "query: 2 images, 2 ids, 2 cameras [0, 4]",
                         "gallery: 4 images, 3 ids, 4 cameras [0, 1, 2, 3]"]
    out = tmp_path / "val"
    assert image_reid.main(["split", "--root", os.fspath(market_root), "--out", os.fspath(out), "--seed", "3",
                            "--val_fraction", "0.5", "--val_query_fraction", "0.5"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["bounding_box_train"] == 3 and (out / "bounding_box_val_gallery").is_dir()
    assert image_reid.main(["info", "--dataset", "market1501_val", "--root", os.fspath(out)]) == 0
    assert capsys.readouterr().out.splitlines()[4].startswith("val_query: ")
    assert image_reid.main(["info", "--dataset", "cuhk03_detected", "--root", os.fspath(tmp_path / "nope")]) == 2
    assert "images_detected: CUHK03 detected image" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# TFDS


def _assert_round_trip(builder, dataset):
    """Every record equals the reader's row at the same position, image bytes included."""
    assert list(builder.info.splits) == list(dataset.splits())
    height, width = builder.builder_config.height, builder.builder_config.width
    for name, split in dataset.splits().items():
        source = builder.as_data_source(name)
        assert len(source) == len(split)
        labels = split.labels if split.labels is not None else np.full(len(split), -1)
        for i in range(len(split)):  # disable_shuffling: record i is reader row i
            record = source[i]
            assert record["image"].dtype == np.uint8 and record["image"].shape == (height, width, 3)
            np.testing.assert_array_equal(record["image"],
                                          image_reid.load_image(split.paths[i], height=height, width=width))
            assert record["path"].decode() == split.relpaths[i]
            assert (record["pid"], record["camid"], record["label"]) == (split.pids[i], split.camids[i], labels[i])


def test_tfds_round_trip(market_root, tmp_path):
    data_dir = tmp_path / "tfds"
    builder = tfds_image_reid.build("market1501", market_root, data_dir, height=16, width=8)
    assert builder.builder_config.name == "market1501_16x8"
    assert any(name.startswith("image_reid-train.array_record") for name in os.listdir(builder.data_dir))
    _assert_round_trip(builder, image_reid.read_market1501(market_root))
    # MSMT17_V1's train (list_train then list_val) is not in name order; the records keep the reader's order.
    msmt17_root = tmp_path / "msmt17_v1"
    _write_msmt17_v1(msmt17_root)
    builder = tfds_image_reid.build("msmt17", msmt17_root, data_dir, height=8, width=4)
    dataset = image_reid.read_msmt17(msmt17_root)
    assert dataset.train.relpaths.tolist() != sorted(dataset.train.relpaths.tolist())
    _assert_round_trip(builder, dataset)
    assert tfds_image_reid.image_reid_config("market1501") is tfds_image_reid.image_reid_config("market1501", 256, 128)
    assert tfds_image_reid.image_reid_config("msmt17", 256, 128, True).name == "msmt17_256x128_single_digit_camera"


def test_tfds_command_line(cuhk03_root, tmp_path, capsys):
    data_dir = tmp_path / "tfds"
    assert tfds_image_reid.main(["--dataset", "cuhk03_labeled", "--manual_dir", os.fspath(cuhk03_root),
                                 "--data_dir", os.fspath(data_dir), "--height", "8", "--width", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == ["train: 4", "query: 2", "gallery: 2"]
    builder = tfds_image_reid.ImageReid(data_dir=os.fspath(data_dir),
                                        config=tfds_image_reid.image_reid_config("cuhk03_labeled", 8, 4))
    record = builder.as_data_source("gallery")[1]
    assert record["path"].decode() == "images_labeled/2_002_1_05.png"
    assert (record["pid"], record["camid"], record["label"]) == (20, 0, -1)
    np.testing.assert_array_equal(record["image"], image_reid.load_image(cuhk03_root / "images_labeled/2_002_1_05.png",
                                                                         height=8, width=4))
    assert tfds_image_reid.main(["--dataset", "market1501", "--manual_dir", os.fspath(tmp_path / "none"),
                                 "--data_dir", os.fspath(data_dir)]) == 2
    assert "market1501 dataset folder not found" in capsys.readouterr().err
