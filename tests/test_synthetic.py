"""Tests of the embedded synthetic Event-ReId-like dataset: layout, parsing, determinism, caching, identities."""

import json
import os

import numpy as np
import pytest

from anon_jax.data import synthetic
from anon_jax.events import read_event_text

IDS = ("001", "002", "003")
CAMERAS = ("cam01", "cam02")


def tiny_config(seed=0):
    config = synthetic.default_synthetic_config()
    config.num_identities = 3
    config.num_cameras = 2
    config.duration_s = 0.2
    config.height, config.width = 48, 24
    config.seed = seed
    return config


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    return root, synthetic.generate(root, tiny_config())


def load_recording(root, identity, camera):
    folder = os.path.join(root, identity, camera)
    stream = read_event_text(os.path.join(folder, "events.txt"))
    with np.load(os.path.join(folder, "frames.npz")) as frames:
        return stream, frames["frames"], frames["timestamps_us"]


def test_layout_parses_and_matches_summary(generated):
    root, summary = generated
    assert sorted(os.listdir(root)) == sorted(IDS + (synthetic.MARKER_NAME,))
    assert not os.path.exists(str(root) + ".partial")
    assert summary["num_recordings"] == 6 and not summary["skipped"] and summary["dropped_events"] == 0
    counts = {}
    for identity in IDS:
        assert sorted(os.listdir(os.path.join(root, identity))) == list(CAMERAS)
        for camera in CAMERAS:
            assert sorted(os.listdir(os.path.join(root, identity, camera))) == ["events.txt", "frames.npz"]
            stream, frames, timestamps = load_recording(root, identity, camera)
            # Header gives the sensor; the reader has checked every event lies on it and time is sorted.
            assert (stream.height, stream.width) == (48, 24)
            assert len(stream) > 100 and set(np.unique(stream.p)) == {0, 1}
            assert stream.t.min() > 0 and stream.t.max() <= 0.2e6
            np.testing.assert_array_equal(stream.t, np.round(stream.t))  # 1 us clock
            # 51 rendered frames at 250 fps, every 8th kept (about 30 fps).
            assert frames.dtype == np.uint8 and frames.shape == (7, 48, 24)
            np.testing.assert_allclose(timestamps, 32000.0 * np.arange(7))
            counts[(identity, camera)] = len(stream)
    assert summary["total_events"] == sum(counts.values())
    assert {(r["identity"], r["camera"]): r["num_events"] for r in summary["recordings"]} == counts


def test_same_seed_reproduces_and_other_seed_differs(generated, tmp_path):
    root, _ = generated
    again = synthetic.generate(tmp_path / "again", tiny_config())
    other = synthetic.generate(tmp_path / "other", tiny_config(seed=1))
    assert not again["skipped"]
    for identity in IDS:
        for camera in CAMERAS:
            with open(os.path.join(root, identity, camera, "events.txt"), "rb") as f:
                first = f.read()
            with open(tmp_path / "again" / identity / camera / "events.txt", "rb") as f:
                assert f.read() == first
            with open(tmp_path / "other" / identity / camera / "events.txt", "rb") as f:
                assert f.read() != first
            np.testing.assert_array_equal(load_recording(root, identity, camera)[1],
                                          load_recording(tmp_path / "again", identity, camera)[1])
    assert other["total_events"] != again["total_events"]


def test_rerun_skips_and_conflicts_raise(generated, tmp_path):
    root, summary = generated
    events_file = os.path.join(root, "001", "cam01", "events.txt")
    modified = os.stat(events_file).st_mtime_ns
    rerun = synthetic.generate(root, tiny_config())
    assert rerun["skipped"] and rerun["total_events"] == summary["total_events"]
    assert os.stat(events_file).st_mtime_ns == modified
    with open(os.path.join(root, synthetic.MARKER_NAME), encoding="utf-8") as f:
        assert json.load(f)["config"]["seed"] == 0

    with pytest.raises(synthetic.SyntheticDataError, match="another config"):
        synthetic.generate(root, tiny_config(seed=5))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a dataset")
    with pytest.raises(synthetic.SyntheticDataError, match="not empty"):
        synthetic.generate(foreign, tiny_config())


def test_interrupted_run_leftovers_are_replaced(tmp_path):
    config = tiny_config()
    config.num_identities, config.num_cameras = 1, 1
    partial = tmp_path / "data.partial"
    (partial / "001" / "cam01").mkdir(parents=True)
    (partial / "001" / "cam01" / "events.txt").write_text("half-written")
    summary = synthetic.generate(tmp_path / "data", config)
    assert not partial.exists() and summary["num_recordings"] == 1
    assert len(read_event_text(tmp_path / "data" / "001" / "cam01" / "events.txt")) == summary["total_events"]


def test_identity_traits_persist_across_cameras_and_differ_between_ids(generated):
    root, _ = generated
    shape_keys = ("height", "leg_length", "head_radius", "shoulder_half_width", "hip_half_width", "gait_frequency")
    traits = [synthetic.sample_identity(0, identity) for identity in (1, 2, 3)]
    for key in shape_keys:
        assert len({round(t[key], 6) for t in traits}) == 3
    assert synthetic.sample_identity(0, 2) == traits[1]  # depends on (seed, id) only, never on the camera

    def event_height(identity, camera):
        stream = load_recording(root, identity, camera)[0]
        return np.percentile(stream.y, 99.5) - np.percentile(stream.y, 0.5)

    # Relative body height of two people is about the same in both cameras, whatever each camera's scale.
    for a, b in ((0, 1), (0, 2), (1, 2)):
        ratios = [event_height(IDS[a], camera) / event_height(IDS[b], camera) for camera in CAMERAS]
        expected = traits[a]["height"] / traits[b]["height"]
        np.testing.assert_allclose(ratios, expected, rtol=0.06)
    # In one camera, different people look different.
    frames = [load_recording(root, identity, "cam01")[1].astype(float) for identity in IDS]
    assert np.abs(frames[0] - frames[1]).mean() > 5 and np.abs(frames[1] - frames[2]).mean() > 5


def test_bad_config_raises():
    config = tiny_config()
    config.width = 4
    with pytest.raises(synthetic.SyntheticDataError, match="height/width"):
        synthetic.render_recording(config, 1, 1)
