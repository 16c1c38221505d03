"""Tests of the AnonyNoise TFDS builders: ArrayRecord records built from small trees in each real format equal
the readers' arrays row by row, read back through the data-source API, and the command line and errors."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from anon_jax.data import anonynoise_datasets as ad
from anon_jax.data import tfds_anonynoise
from anonynoise_fixtures import (random_events, reid_events, sequence_name, write_chunk, write_dvsg,
                                 write_query_list, write_sequence)
from without_tensorflow import run_without_tensorflow


def write_dvsg_tree(root, protocol_dir):
    rng = np.random.default_rng(0)
    for index, relpath in enumerate([
            "ibmGestureTrain/user01_led/0.npy", "ibmGestureTrain/user01_lab/4.npy",
            "ibmGestureTrain/user02_natural/10.npy", "ibmGestureTest/user24_lab/2.npy",
            "ibmGestureTest/user24_lab/7.npy", "ibmGestureTest/user26_fluorescent_led/5.npy"]):
        write_dvsg(root / relpath, *random_events(rng, 200), structured=index % 2 == 0)
    write_query_list(protocol_dir / ad.DVSG_QUERY_FILE,
                     ["ibmGestureTest/user26_fluorescent_led/5.npy", "ibmGestureTest/user24_lab/2.npy"])


def write_see_tree(root, protocol_dir):
    rng = np.random.default_rng(1)
    levels = np.array([0, 60, 255], np.uint8)
    train = [("001", "happiness", 1), ("003", "angry", 2), ("001", "sadness", 3)]
    val = [("007", "fear", 4), ("007", "angry", 5), ("009", "fear", 6), ("009", "surprise", 7)]
    for (user, emotion, seq), length in zip(train + val, [5, 12, 7, 10, 6, 9, 11]):
        write_sequence(root / "event" / emotion / sequence_name(seq, user, emotion),
                       [levels[rng.integers(0, 3, (4, 6))] for _ in range(length)])

    def entries(sequences):
        return [{"filename": sequence_name(seq, user, emotion), "user_id": user, "target_id": emotion}
                for user, emotion, seq in sequences]

    metadata = {"train": entries(train), "val": entries(val), "query": entries(val[::3]),
                "gallery": entries(val[1:3])}
    (protocol_dir / ad.SEE_METADATA_FILE).write_text(json.dumps(metadata))


def write_eventreid_tree(root, real_protocol_dir):
    """Every chunk of AnonyNoise's real query list, two gallery and three train chunks, and one empty chunk."""
    rng = np.random.default_rng(2)
    query = ad.read_eventreid_query_subset(real_protocol_dir / ad.EVENTREID_QUERY_FILE).entries
    names = [f"test/{name}" for name in (*query, "002_c1_006.txt", "032_c4_011.txt")]
    names += ["train/001_c1_001.txt", "train/001_c3_002.txt", "train/004_c2_001.txt"]
    for index, relpath in enumerate(names):
        # Three box shapes only: each square size compiles its resize once.
        write_chunk(root / relpath, *reid_events(rng, 30, width=5 + index % 3, height=7))
    (root / "test/005_c2_006.txt").write_text("\n")


# dataset -> (build kwargs, expected split sizes)
CASES = {
    "dvsgesture": ({"num_time_bins": 2}, {"train": 3, "val": 3, "query": 2, "gallery": 1}),
    "see": ({"num_time_bins": 5}, {"train": 3, "val": 4, "query": 2, "gallery": 2}),
    "eventreidv2": ({"num_time_bins": 3, "size": 8}, {"train": 3, "query": 44, "gallery": 2}),
}
LOADERS = {"dvsgesture": ad.load_dvsgesture, "see": ad.load_see, "eventreidv2": ad.load_eventreidv2}


def write_tree(dataset, tmp_path, real_protocol_dir):
    """(manual dir, protocol dir) of a small tree of `dataset`."""
    root, protocol_dir = tmp_path / dataset, tmp_path / f"{dataset}_protocol"
    protocol_dir.mkdir(parents=True)
    if dataset == "dvsgesture":
        write_dvsg_tree(root, protocol_dir)
    elif dataset == "see":
        write_see_tree(root, protocol_dir)
    else:
        write_eventreid_tree(root, real_protocol_dir)
        protocol_dir = real_protocol_dir
    return root, protocol_dir


@pytest.fixture(scope="module")
def builds(tmp_path_factory, anonynoise_protocol_dir):
    """dataset -> (builder, the reader's output, data dir), each built once per module on first use."""
    cache = {}

    def get(dataset):
        if dataset not in cache:
            tmp_path = tmp_path_factory.mktemp(dataset)
            root, protocol_dir = write_tree(dataset, tmp_path, anonynoise_protocol_dir)
            kwargs = CASES[dataset][0]
            builder = tfds_anonynoise.build(dataset, root, protocol_dir, tmp_path / "data", **kwargs)
            cache[dataset] = builder, LOADERS[dataset](root, protocol_dir, **kwargs), tmp_path / "data"
        return cache[dataset]

    return get


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_records_equal_reader(builds, dataset):
    builder, expected, _ = builds(dataset)
    sizes = CASES[dataset][1]
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == sizes
    assert set(expected) == {*sizes, "info"}
    features = builder.info.features
    assert features["frames"].dtype == np.float32
    assert all(features[label].dtype == np.int32 for label in ad.LABELS)
    num_channels = 2 * builder.builder_config.num_time_bins
    assert features["frames"].shape == {"dvsgesture": (128, 128, num_channels), "see": (None, None, num_channels),
                                        "eventreidv2": (8, 8, num_channels)}[dataset]
    for split in sizes:
        arrays = expected[split]
        source = builder.as_data_source(split)
        assert len(source) == sizes[split] == len(arrays["frames"])
        for index in range(len(source)):  # records keep the reader's order
            record = source[index]
            assert record["frames"].dtype == np.float32
            np.testing.assert_array_equal(record["frames"], arrays["frames"][index])
            assert [record[label] for label in ad.LABELS] == [arrays[label][index] for label in ad.LABELS]
    assert builder.info.metadata == json.loads(json.dumps(expected["info"]))


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_data_source_by_name(builds, dataset):
    builder, expected, data_dir = builds(dataset)
    name = f"anonynoise_{dataset}/{builder.builder_config.name}"
    assert name == {"dvsgesture": "anonynoise_dvsgesture/frames2", "see": "anonynoise_see/frames5",
                    "eventreidv2": "anonynoise_eventreidv2/frames3_8"}[dataset]
    source = tfds.data_source(name, split="query", data_dir=os.fspath(data_dir), download=False)
    assert len(source) == CASES[dataset][1]["query"]
    np.testing.assert_array_equal(source[1]["frames"], expected["query"]["frames"][1])
    # The reader's info (label maps, file_id -> source) comes back from disk as the dataset's metadata.
    metadata = tfds.builder(name, data_dir=os.fspath(data_dir)).info.metadata
    assert metadata == json.loads(json.dumps(expected["info"]))
    assert metadata["sources"][source[1]["file_id"]] == expected["info"]["sources"][expected["query"]["file_id"][1]]


def test_eventreid_real_query_list_and_empty_chunk(builds):
    builder, _, _ = builds("eventreidv2")
    metadata = builder.info.metadata
    assert metadata["empty_chunks"] == ["test/005_c2_006.txt"]
    query = builder.as_data_source("query")
    pairs = sorted((query[i]["identity"], query[i]["condition"]) for i in range(len(query)))
    # one query chunk per test id (002, 005, ..., 032) and camera
    test_labels = [metadata["label_maps"]["identity"][f"{identity:03d}"] for identity in range(2, 33, 3)]
    assert pairs == [(label, camera) for label in test_labels for camera in range(4)]
    assert {query[i]["target"] for i in range(len(query))} == {-1}


def test_command_line_prints_split_sizes(tmp_path, capsys, anonynoise_protocol_dir):
    root, protocol_dir = write_tree("see", tmp_path, anonynoise_protocol_dir)
    code = tfds_anonynoise.main(["--dataset", "see", "--manual_dir", str(root), "--protocol_dir",
                                 str(protocol_dir), "--data_dir", str(tmp_path / "data"), "--num_time_bins", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[-5].startswith(f"anonynoise_see/frames2 in {tmp_path / 'data'}")
    assert lines[-4:] == ["train: 3", "val: 4", "query: 2", "gallery: 2"]
    code = tfds_anonynoise.main(["--dataset", "see", "--manual_dir", str(tmp_path / "absent"), "--protocol_dir",
                                 str(protocol_dir), "--data_dir", str(tmp_path / "data")])
    assert code == 2
    assert "absent: manual dir not found" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("missing_manual", r"nowhere: manual dir not found\. The manual dir is tonic's DVSGesture folder"),
    ("empty_manual", r"empty: manual dir is empty\. The manual dir is tonic's DVSGesture folder"),
    ("missing_protocol", r"no_protocol: protocol dir not found\. .*--protocol_dir.*dvsg_query_subset_ids\.txt"),
    ("missing_protocol_file", r"dvsg_query_subset_ids\.txt: protocol file not found"),
    ("size_for_dvsgesture", r"size applies to eventreidv2 only"),
    ("unknown_dataset", r"dataset 'dvsg' is not one of \['dvsgesture', 'eventreidv2', 'see'\]"),
    ("bad_bins", r"num_time_bins \(0\) and size \(304\) must be positive"),
])
def test_build_errors(tmp_path, case, message):
    root, protocol_dir = tmp_path / "dvsg", tmp_path / "protocol"
    protocol_dir.mkdir()
    write_dvsg_tree(root, protocol_dir)
    dataset, kwargs = "dvsgesture", {}
    if case == "missing_manual":
        root = tmp_path / "nowhere"
    elif case == "empty_manual":
        root = tmp_path / "empty"
        root.mkdir()
    elif case == "missing_protocol":
        protocol_dir = tmp_path / "no_protocol"
    elif case == "missing_protocol_file":
        (protocol_dir / ad.DVSG_QUERY_FILE).unlink()
    elif case == "size_for_dvsgesture":
        kwargs = {"size": 64}
    elif case == "unknown_dataset":
        dataset = "dvsg"
    elif case == "bad_bins":
        dataset, kwargs = "eventreidv2", {"num_time_bins": 0}
    with pytest.raises(ad.AnonyNoiseDatasetError, match=message):
        tfds_anonynoise.build(dataset, root, protocol_dir, tmp_path / "data", **kwargs)


def test_empty_split_is_left_out(tmp_path, caplog):
    root = tmp_path / "dvsg"
    write_dvsg_tree(root, tmp_path)
    every_test_file = ["ibmGestureTest/user24_lab/2.npy", "ibmGestureTest/user24_lab/7.npy",
                       "ibmGestureTest/user26_fluorescent_led/5.npy"]
    write_query_list(tmp_path / ad.DVSG_QUERY_FILE, every_test_file)
    builder = tfds_anonynoise.build("dvsgesture", root, tmp_path, tmp_path / "data", num_time_bins=1)
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
        "train": 3, "val": 3, "query": 3}
    assert "leaving out the empty split(s) ['gallery']" in caplog.text


def test_builder_without_protocol_dir_says_what_to_pass(tmp_path):
    write_dvsg_tree(tmp_path / "dvsg", tmp_path)
    builder = tfds_anonynoise.AnonyNoiseDvsGesture(data_dir=os.fspath(tmp_path / "data"),
                                                   file_format="array_record")
    with pytest.raises(ad.AnonyNoiseDatasetError,
                       match=r"anonynoise_dvsgesture: building needs the protocol dir\. .*protocol_dir="):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(tmp_path / "dvsg")))


_BUILD_AND_READ = """
    import sys
    import tensorflow_datasets as tfds
    from anon_jax.data import tfds_anonynoise
    root, protocol_dir, data_dir = sys.argv[1:]
    tfds_anonynoise.build("see", root, protocol_dir, data_dir, num_time_bins=3)
    source = tfds.data_source("anonynoise_see/frames3", split="val", data_dir=data_dir, download=False)
    print(len(source), source[0]["frames"].shape, "tensorflow" in sys.modules)
"""


def test_builds_and_reads_without_tensorflow(tmp_path, anonynoise_protocol_dir):
    root, protocol_dir = write_tree("see", tmp_path, anonynoise_protocol_dir)
    assert run_without_tensorflow(_BUILD_AND_READ, root, protocol_dir, tmp_path / "data") == "4 (4, 6, 6) False"
