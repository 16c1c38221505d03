"""Tests of Event-ReId preparation and loading: partition semantics, the official split, list
files, and load_split on the public sample and on generated raw trees."""

import pathlib

import numpy as np
import pytest

from anon_jax import events
from anon_jax.data import event_reid


def _stream(t, width=8, height=6, source="hand-made"):
    t = np.asarray(t, np.float64)
    n = len(t)
    return events.EventStream(x=np.arange(n, dtype=np.int32) % width, y=np.arange(n, dtype=np.int32) % height,
                              t=t, p=(np.arange(n) % 2).astype(np.uint8), height=height, width=width,
                              source=source)


def _literal_time_partition(t, duration, drop):
    """Per-event transcription of the original constant-time loop: lists of event indices."""
    chunks, end = [[]], t[0] + duration
    for i, ti in enumerate(t):
        if ti <= end:
            chunks[-1].append(i)
        else:
            end += duration
            chunks.append([] if drop else [i])
    return chunks


def _literal_count_partition(n, count):
    chunks, last = [[]], count
    for i in range(n):
        if i <= last:
            chunks[-1].append(i)
        else:
            last += count
            chunks.append([])
    return chunks


def _chunk_times(chunks):
    return [chunk.t.tolist() for chunk in chunks]


T_GAPPY = [0.0, 1.0, 2.0, 3.0, 4.5, 5.0, 5.5, 20.0, 21.0, 22.0, 30.0]


def test_time_partition_original_drops_boundary_events_and_steps_once_across_gaps():
    chunks = event_reid.partition_stream(_stream(T_GAPPY), mode="time", duration=2.0)
    # t=2 == end stays; 3 closes chunk 0 and is lost; 4.5 > 4 closes an empty chunk; after the gap
    # every event closes one more empty chunk; the last, always-opened chunk is empty too.
    assert _chunk_times(chunks) == [[0.0, 1.0, 2.0], [], [5.0, 5.5], [], [], [], []]
    assert chunks[0].height == 6 and chunks[0].width == 8
    np.testing.assert_array_equal(chunks[2].x, [5, 6])


def test_time_partition_keeping_boundary_events():
    chunks = event_reid.partition_stream(_stream(T_GAPPY), mode="time", duration=2.0, drop_boundary_event=False)
    assert _chunk_times(chunks) == [[0.0, 1.0, 2.0], [3.0], [4.5, 5.0, 5.5], [20.0], [21.0], [22.0], [30.0]]


@pytest.mark.parametrize("drop", [True, False])
def test_time_partition_matches_literal_loop_on_random_streams(drop):
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, scale = rng.integers(1, 60), rng.choice([0.2, 1.0, 5.0])  # dense to gappy streams
        t = 1000.0 + np.cumsum(np.where(rng.random(n) < 0.2, 0.0, rng.exponential(scale, n)))
        chunks = event_reid.partition_stream(_stream(t), mode="time", duration=1.5, drop_boundary_event=drop)
        expected = _literal_time_partition(t.tolist(), 1.5, drop)
        assert _chunk_times(chunks) == [[t[i] for i in chunk] for chunk in expected], trial


def test_count_partition_original():
    chunks = event_reid.partition_stream(_stream(np.arange(10.0)), mode="count", count=3)
    assert _chunk_times(chunks) == [[0, 1, 2, 3], [5, 6], [8, 9]]  # N+1, then N-1 events
    chunks = event_reid.partition_stream(_stream(np.arange(8.0)), mode="count", count=3)
    assert _chunk_times(chunks) == [[0, 1, 2, 3], [5, 6], []]  # event 7 closes the last chunk
    for n in range(1, 30):
        chunks = event_reid.partition_stream(_stream(np.arange(float(n))), mode="count", count=4)
        assert _chunk_times(chunks) == [[float(i) for i in c] for c in _literal_count_partition(n, 4)]


def test_count_partition_keeping_boundary_events():
    chunks = event_reid.partition_stream(_stream(np.arange(10.0)), mode="count", count=3,
                                         drop_boundary_event=False)
    assert _chunk_times(chunks) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_partition_rejects_bad_arguments():
    with pytest.raises(ValueError, match="duration > 0"):
        event_reid.partition_stream(_stream([0.0]), mode="time")
    with pytest.raises(ValueError, match="integer count"):
        event_reid.partition_stream(_stream([0.0]), mode="count", count=0)
    with pytest.raises(ValueError, match="'time' or 'count'"):
        event_reid.partition_stream(_stream([0.0]), mode="frames", count=3)


def test_chunk_names():
    assert event_reid.parse_chunk_name("train/001_c1_048.txt") == ("001", 1, 48)
    assert event_reid.parse_chunk_name("test/005_c4_000.txt") == ("005", 4, 0)
    assert event_reid.chunk_file_name("012", 3, 7) == "012_c3_007.txt"
    with pytest.raises(ValueError, match="bad_name.txt.*expected"):
        event_reid.parse_chunk_name("train/bad_name.txt")


def test_official_split_constants():
    assert len(event_reid.OFFICIAL_TRAIN_IDS) == 22 and len(event_reid.OFFICIAL_TEST_IDS) == 11
    train, test = event_reid.official_style_split(33)
    assert train == event_reid.OFFICIAL_TRAIN_IDS and test == event_reid.OFFICIAL_TEST_IDS
    assert event_reid.official_style_split(7) == (("001", "003", "004", "006", "007"), ("002", "005"))


def test_read_list_file_sample_quirks(event_reid_sample_dir):
    train = event_reid.read_list_file(event_reid_sample_dir / "train_list.txt")
    assert len(train) == 30 and train[0] == ("train/001_c1_048.txt", "001")
    assert ("train/009_c1_081.txt", "009") in train  # the line with a trailing space
    assert len(event_reid.read_list_file(event_reid_sample_dir / "query_list.txt")) == 13
    assert len(event_reid.read_list_file(event_reid_sample_dir / "gallery_list.txt")) == 20


def test_read_list_file_errors(tmp_path):
    path = tmp_path / "bad_list.txt"
    path.write_text("train/001_c1_000.txt 001\n\n  \ntrain/001_c1_001.txt\n")
    with pytest.raises(ValueError, match=r"bad_list.txt:4: expected '<relpath> <label>'"):
        event_reid.read_list_file(path)
    with pytest.raises(ValueError, match="missing_list.txt: list file not found"):
        event_reid.read_list_file(tmp_path / "missing_list.txt")


def _write_raw_tree(root: pathlib.Path, ids, cams=(1, 2), n_events=200, seed=0):
    """Raw `<ID>/camXX/events.txt` files (with the `width height` header) of tiny random streams."""
    rng = np.random.default_rng(seed)
    streams = {}
    for identity in ids:
        for cam in cams:
            n = n_events
            stream = events.EventStream(
                x=rng.integers(10, 30, n).astype(np.int32), y=rng.integers(5, 40, n).astype(np.int32),
                t=410629076.0 + np.cumsum(rng.exponential(0.5, n)), p=rng.integers(0, 2, n).astype(np.uint8),
                height=48, width=64)
            path = root / identity / f"cam{cam:02d}" / "events.txt"
            path.parent.mkdir(parents=True)
            events.write_event_text(path, stream, header=True)
            streams[identity, cam] = stream
    return streams


def test_partition_dataset_writes_original_names_and_rows(tmp_path):
    streams = _write_raw_tree(tmp_path / "raw", ["001", "002"])
    totals = event_reid.partition_dataset(tmp_path / "raw", tmp_path / "chunks", mode="count", count=50)
    assert totals["streams"] == 4 and totals["chunks_written"] == 16 and totals["empty_chunks_skipped"] == 0
    folder = tmp_path / "chunks" / "002" / "cam02"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["002_c2_001.txt", "002_c2_002.txt", "002_c2_003.txt", "002_c2_004.txt"]
    expected = event_reid.partition_stream(streams["002", 2], mode="count", count=50)
    for name, chunk in zip(names, expected):
        back = events.read_event_text(folder / name)
        np.testing.assert_array_equal(back.t, chunk.t)  # float64 timestamps round-trip exactly
        np.testing.assert_array_equal(back.x, chunk.x)
        np.testing.assert_array_equal(back.p, chunk.p)
    first_line = (folder / names[0]).read_text().splitlines()[0].split()
    assert len(first_line) == 4  # no header in chunk files
    assert float(first_line[0]) == streams["002", 2].t[0]

    totals = event_reid.partition_dataset(tmp_path / "raw", tmp_path / "chunks0", mode="count", count=50,
                                          first_index=0, ids=["001"])
    assert totals["streams"] == 2
    assert (tmp_path / "chunks0" / "001" / "cam01" / "001_c1_000.txt").is_file()


def test_partition_dataset_skips_empty_chunks_but_keeps_numbering(tmp_path):
    stream = _stream([0.0, 1.0, 2.0, 3.0, 4.5, 5.0, 5.5])  # time chunks: [0,1,2], [], [5,5.5]
    path = tmp_path / "raw" / "007" / "cam03" / "events.txt"
    path.parent.mkdir(parents=True)
    events.write_event_text(path, stream, header=True)
    totals = event_reid.partition_dataset(tmp_path / "raw", tmp_path / "out", mode="time", duration=2.0)
    assert totals["chunks_written"] == 2 and totals["empty_chunks_skipped"] == 1
    assert totals["events_in"] == 7 and totals["events_written"] == 5
    assert sorted(p.name for p in (tmp_path / "out" / "007" / "cam03").iterdir()) == [
        "007_c3_001.txt", "007_c3_003.txt"]


def test_split_dataset_protocol(tmp_path):
    _write_raw_tree(tmp_path / "raw", ["001", "002", "003", "004", "005"], n_events=120)
    event_reid.partition_dataset(tmp_path / "raw", tmp_path / "chunks", mode="count", count=10,
                                 drop_boundary_event=False, first_index=0)  # 12 chunks per (id, cam)
    train_ids, test_ids = event_reid.official_style_split(5)
    counts = event_reid.split_dataset(tmp_path / "chunks", tmp_path / "ds", train_ids=train_ids,
                                      test_ids=test_ids, seed=3)
    # train: 3 ids x 2 cams x 12 chunks; test: positions 0, 5, 10 of 2 ids x 2 cams, one of each is the query
    assert counts == {"train": 72, "query": 4, "gallery": 8}
    query = event_reid.read_list_file(tmp_path / "ds" / "query_list.txt")
    gallery = event_reid.read_list_file(tmp_path / "ds" / "gallery_list.txt")
    train = event_reid.read_list_file(tmp_path / "ds" / "train_list.txt")
    assert {label for _, label in train} == {"001", "003", "004"}
    assert {(event_reid.parse_chunk_name(p)[:2]) for p, _ in query} == {
        ("002", 1), ("002", 2), ("005", 1), ("005", 2)}
    test_chunks = {p for p, _ in query} | {p for p, _ in gallery}
    assert not {p for p, _ in query} & {p for p, _ in gallery}
    assert {event_reid.parse_chunk_name(p)[2] for p in test_chunks} == {0, 5, 10}
    assert len(test_chunks) == 12
    for relpath, _ in train + query + gallery:
        assert (tmp_path / "ds" / relpath).is_file()
    again = event_reid.split_dataset(tmp_path / "chunks", tmp_path / "ds2", train_ids=train_ids,
                                     test_ids=test_ids, seed=3)
    assert again == counts
    assert event_reid.read_list_file(tmp_path / "ds2" / "query_list.txt") == query

    data = event_reid.load_event_reid(tmp_path / "ds", num_bins=3, height=8, width=4)
    assert data["train"]["voxels"].shape == (72, 8, 4, 3)
    assert sorted(set(data["train"]["labels"].tolist())) == [0, 1, 2]
    assert data["query"]["label_map"] == {"002": 0, "005": 1}
    np.testing.assert_array_equal(data["query"]["ids"] == "005", data["query"]["labels"] == 1)


def test_split_dataset_rejects_overlapping_ids(tmp_path):
    with pytest.raises(ValueError, match=r"\['001'\] are in both"):
        event_reid.split_dataset(tmp_path, tmp_path / "ds", train_ids=["001"], test_ids=["001"])


def test_load_split_sample(event_reid_sample_dir):
    data = event_reid.load_split(event_reid_sample_dir, "train", num_bins=5, height=32, width=16)
    assert data["voxels"].shape == (30, 32, 16, 5) and data["voxels"].dtype == np.float32
    assert data["label_map"] == {f"{i:03d}": i - 1 for i in range(1, 11)}
    assert data["labels"].dtype == np.int32 and data["labels"][0] == 0 and data["labels"][-1] == 9
    assert data["ids"][24] == "009" and data["cams"][24] == 1
    assert data["paths"][0] == "train/001_c1_048.txt"
    expected = events.chunk_voxel_grid(events.read_event_text(event_reid_sample_dir / "train/001_c1_048.txt"),
                                       num_bins=5, height=32, width=16)
    np.testing.assert_array_equal(data["voxels"][0], np.transpose(expected, (1, 2, 0)))
    with pytest.raises(ValueError, match="not in label_map"):
        event_reid.load_split(event_reid_sample_dir, "query", num_bins=5, height=32, width=16,
                              label_map={"999": 0})


def test_load_split_reference_value_full_size(tmp_path, event_reid_sample_dir):
    # Reference [run] value of the original pipeline: train/001_c1_048.txt sums to 92.1064 at 384x192.
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "001_c1_048.txt").write_bytes(
        (event_reid_sample_dir / "train" / "001_c1_048.txt").read_bytes())
    (tmp_path / "one_list.txt").write_text("train/001_c1_048.txt 001 \n")
    data = event_reid.load_split(tmp_path, "one_list.txt", num_bins=5, height=384, width=192)
    assert data["voxels"].shape == (1, 384, 192, 5)
    assert data["voxels"].sum(dtype=np.float64) == pytest.approx(92.1064, abs=2e-3)


def test_load_split_cache(tmp_path, event_reid_sample_dir, monkeypatch):
    first = event_reid.load_split(event_reid_sample_dir, "query", num_bins=2, height=8, width=4,
                                  cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob(".*tmp"))

    def fail(*args, **kwargs):
        raise AssertionError("cache not used")

    monkeypatch.setattr(event_reid, "voxelize_chunk_file", fail)
    second = event_reid.load_split(event_reid_sample_dir, "query", num_bins=2, height=8, width=4,
                                   cache_dir=tmp_path / "cache")
    for key in ("voxels", "labels", "ids", "cams", "paths"):
        np.testing.assert_array_equal(first[key], second[key])
    with pytest.raises(AssertionError, match="cache not used"):  # other voxel params: another key
        event_reid.load_split(event_reid_sample_dir, "query", num_bins=3, height=8, width=4,
                              cache_dir=tmp_path / "cache")


def test_load_split_missing_chunk(tmp_path):
    (tmp_path / "train_list.txt").write_text("\ntrain/001_c1_000.txt 001\n")
    with pytest.raises(ValueError, match=r"train_list.txt:2: chunk file .*001_c1_000.txt is missing"):
        event_reid.load_split(tmp_path, "train", num_bins=5, height=8, width=4)


def test_cli(tmp_path, event_reid_sample_dir, capsys):
    assert event_reid.main(["lists", "--root", str(event_reid_sample_dir)]) == 0
    out = capsys.readouterr().out
    assert "train_list.txt: 30 chunks, 10 ids" in out and "query_list.txt: 13 chunks" in out
    with pytest.raises(SystemExit) as exit_info:
        event_reid.main(["partition", "--help"])
    assert exit_info.value.code == 0
    assert "drops it" in capsys.readouterr().out
    _write_raw_tree(tmp_path / "raw", ["001"], cams=(1,), n_events=30)
    assert event_reid.main(["partition", "--input_dir", str(tmp_path / "raw"), "--out_dir",
                            str(tmp_path / "out"), "--mode", "count", "--count", "10"]) == 0
    assert '"chunks_written": 3' in capsys.readouterr().out
    assert event_reid.main(["split", "--chunk_dir", str(tmp_path / "nowhere"), "--out_dir", str(tmp_path)]) == 2
    assert "chunk folder not found" in capsys.readouterr().err


def test_load_split_worker_processes_match_serial(event_reid_sample_dir):
    serial = event_reid.load_split(event_reid_sample_dir, "query", num_bins=3, height=12, width=6)
    parallel = event_reid.load_split(event_reid_sample_dir, "query", num_bins=3, height=12, width=6, num_workers=2)
    np.testing.assert_array_equal(parallel["voxels"], serial["voxels"])
    np.testing.assert_array_equal(parallel["paths"], serial["paths"])
