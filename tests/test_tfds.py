"""Tests of the Event-ReId TFDS builder: ArrayRecord records built from the public sample equal
load_split's arrays, and they read back through the data-source API without TensorFlow."""

import os

import numpy as np
import pytest

from anon_jax.data import event_reid, tfds_event_reid
from without_tensorflow import run_without_tensorflow

NUM_BINS, HEIGHT, WIDTH = 5, 32, 16


@pytest.fixture(scope="module")
def built(tmp_path_factory, event_reid_sample_dir):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = tfds_event_reid.build(event_reid_sample_dir, data_dir, num_bins=NUM_BINS, height=HEIGHT,
                                    width=WIDTH)
    return builder, data_dir


def _by_path(source):
    return {record["path"].decode(): record for record in (source[i] for i in range(len(source)))}


def test_records_match_load_split(built, event_reid_sample_dir):
    builder, _ = built
    assert builder.info.splits["train"].num_examples == 30
    assert builder.info.features["voxel"].shape == (HEIGHT, WIDTH, NUM_BINS)
    expected = event_reid.load_event_reid(event_reid_sample_dir, num_bins=NUM_BINS, height=HEIGHT, width=WIDTH)
    for split, sizes in (("train", 30), ("query", 13), ("gallery", 20)):
        source = builder.as_data_source(split)
        assert len(source) == sizes
        records = _by_path(source)
        arrays = expected[split]
        assert sorted(records) == sorted(arrays["paths"].tolist())
        for i, path in enumerate(arrays["paths"]):
            record = records[path]
            np.testing.assert_array_equal(record["voxel"], arrays["voxels"][i])
            assert record["voxel"].dtype == np.float32
            assert record["label"] == arrays["labels"][i]
            assert record["id"].decode() == arrays["ids"][i]
            assert record["cam"] == arrays["cams"][i]
    # query and gallery share one label map over the test ids (sample: 001..005 -> 0..4)
    assert _by_path(builder.as_data_source("gallery"))["test/005_c4_060.txt"]["label"] == 4


_READ_QUERY = """
    import sys
    import tensorflow_datasets as tfds
    from anon_jax.data import tfds_event_reid  # registers the builder
    data_dir, num_bins, height, width = sys.argv[1], *map(int, sys.argv[2:])
    source = tfds.data_source(f"event_reid/voxel{num_bins}_{height}x{width}", split="query", data_dir=data_dir,
                              download=False)
    record = source[0]
    print(len(source), record["voxel"].shape, record["voxel"].dtype, "tensorflow" in sys.modules)
"""


def test_array_record_files_and_reading_without_tensorflow(built):
    builder, data_dir = built
    assert any(name.startswith("event_reid-train.array_record") for name in os.listdir(builder.data_dir))
    last_line = run_without_tensorflow(_READ_QUERY, data_dir, NUM_BINS, HEIGHT, WIDTH)
    assert last_line == f"13 ({HEIGHT}, {WIDTH}, {NUM_BINS}) float32 False"


def test_build_reports_missing_list_file(tmp_path):
    with pytest.raises(ValueError, match="train_list.txt: list file not found"):
        tfds_event_reid.build(tmp_path, tmp_path / "data", num_bins=2, height=4, width=4)


def test_command_line_builds_and_reports_the_splits(tmp_path, event_reid_sample_dir, capsys):
    status = tfds_event_reid.main(["--manual_dir", str(event_reid_sample_dir), "--data_dir", str(tmp_path),
                                   "--num_bins", "2", "--height", "8", "--width", "4"])
    lines = capsys.readouterr().out.strip().splitlines()[-4:]  # after TFDS's own progress lines
    assert status == 0 and lines[0] == f"event_reid/voxel2_8x4 in {tmp_path / 'event_reid' / 'voxel2_8x4' / '1.0.0'}"
    assert sorted(lines[1:]) == ["gallery: 20", "query: 13", "train: 30"]
    assert tfds_event_reid.main(["--manual_dir", str(tmp_path / "missing"), "--data_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
