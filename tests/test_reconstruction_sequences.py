"""Tests of the reconstructor's simulated sequences: affine flow, windows, threshold rescaling, cache."""

import math
import os

import numpy as np
import pytest

from anon_jax.data import reconstruction_sequences as rs
from anon_jax.events import EventStream


def tiny_config():
    config = rs.default_sequence_config()
    config.height, config.width = 16, 8
    config.render_fps = 200.0
    config.frames_per_window = 4
    config.num_windows = 3
    config.texture_size = 48
    config.pedestrian_cameras = 1
    config.train.natural, config.train.textures, config.train.pedestrian_identities = 1, 1, 1
    config.validation.natural, config.validation.textures, config.validation.pedestrian_identities = 0, 1, 0
    config.test.pedestrian_identities = 1
    return config


def translation(velocity):
    return dict(center=np.array([20.0, 30.0]), velocity=np.asarray(velocity, float), scale=1.0,
                log_zoom_rate=0.0, angle=0.0, angular_velocity=0.0)


def test_flow_of_a_known_translation_maps_frames_onto_each_other():
    texture = np.random.default_rng(0).uniform(size=(64, 64))
    motion = translation([40.0, -20.0])  # 2 px right and 1 px up per 50 ms
    frames = rs.render_affine_sequence(texture, motion, np.array([0.0, 0.05]), 16, 8)
    flow = rs.affine_flow(motion, 0.0, 0.05, 16, 8)
    np.testing.assert_allclose(flow[..., 0], 2.0, atol=1e-5)
    np.testing.assert_allclose(flow[..., 1], -1.0, atol=1e-5)
    # frame_1(x) = frame_0(x + flow): row y, column x of frame 1 is row y - 1, column x + 2 of frame 0.
    np.testing.assert_allclose(frames[1][1:, :-2], frames[0][:-1, 2:], atol=1e-9)
    assert not np.allclose(frames[1], frames[0])


def test_flow_of_a_quarter_turn_about_the_view_centre():
    motion = dict(translation([0.0, 0.0]), angular_velocity=math.pi / 2)
    flow = rs.affine_flow(motion, 0.0, 1.0, 8, 8)
    # Pixel (row 3, column 4) sits at (0.5, -0.5) from the centre; a quarter turn maps it to (0.5, 0.5).
    np.testing.assert_allclose(flow[3, 4], [0.0, 1.0], atol=1e-6)
    # Pixel (row 0, column 0) at (-3.5, -3.5) came from (3.5, -3.5).
    np.testing.assert_allclose(flow[0, 0], [7.0, 0.0], atol=1e-6)


def test_bilinear_sample_interpolates_and_mirrors():
    image = np.array([[0.0, 1.0], [2.0, 3.0]])
    # Pixel centres are at +0.5: (x=1, y=0.5) lies halfway between the top two pixels.
    assert rs.bilinear_sample(image, np.array(1.0), np.array(0.5)) == pytest.approx(0.5)
    assert rs.bilinear_sample(image, np.array(1.0), np.array(1.0)) == pytest.approx(1.5)
    # Mirrored: x = 2.5 (one pixel past the right centre) folds back onto the left centre.
    assert rs.bilinear_sample(image, np.array(2.5), np.array(0.5)) == pytest.approx(0.0)


def test_rescaled_log_intensity_scales_the_simulator_log():
    frames = np.array([[[0.0, 0.02, 0.5, 1.0]]], np.float32)
    eps = 1e-3
    scaled = rs.rescale_log_intensity(frames, 0.4, eps)
    expected = 0.4 * np.log(eps + np.minimum(frames.astype(np.float64), 1 - eps))
    np.testing.assert_allclose(np.log(eps + scaled.astype(np.float64)), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(rs.ReconstructionDataError):
        rs.rescale_log_intensity(frames, 1.5, eps)


def test_window_voxels_cut_events_at_window_ends_and_leave_empty_windows_zero():
    stream = EventStream(x=np.array([0, 1, 1, 0, 1]), y=np.array([0, 0, 1, 1, 1]),
                         t=np.array([10.0, 20.0, 25.0, 60.0, 70.0]), p=np.array([1, 0, 1, 1, 0]), height=2, width=2)
    grids = rs.window_voxels(stream, np.array([25.0, 50.0, 75.0]), num_bins=2)
    assert grids.shape == (3, 2, 2, 2)
    assert not grids[1].any()
    # Window 1, as (bin, y, x): +1 at t=10 (t* = 0), -1 at t=20 (t* = 2/3), +1 at t=25 (t* = 1); then normalised.
    raw = np.zeros((2, 2, 2))
    raw[0, 0, 0] = 1.0
    raw[0, 0, 1], raw[1, 0, 1] = -1 / 3, -2 / 3
    raw[1, 1, 1] = 1.0
    nonzero = raw[raw != 0]
    expected = np.where(raw != 0, (raw - nonzero.mean()) / nonzero.std(), 0.0)
    np.testing.assert_allclose(grids[0], np.moveaxis(expected, 0, -1), atol=2e-3)  # float16 storage
    # Window 3: +1 at (y1, x0) in bin 0 and -1 at (y1, x1) in bin 1 normalise to +-1.
    assert grids[2][1, 0, 0] == 1.0 and grids[2][1, 1, 1] == -1.0 and np.count_nonzero(grids[2]) == 2


def test_split_shapes_determinism_and_cache(tmp_path):
    config = tiny_config()
    train = rs.load_or_simulate_split(config, "train", str(tmp_path))
    assert train["voxels"].shape == (3, 3, 16, 8, 5) and train["voxels"].dtype == np.float16
    assert train["frames"].shape == (3, 3, 16, 8, 1) and train["frames"].dtype == np.float32
    assert train["flows"].shape == (3, 3, 16, 8, 2)
    assert list(train["kind"]) == [0, 1, 2]
    assert 0 <= train["frames"].min() and train["frames"].max() <= 1
    assert not train["flows"][:, 0].any() and not train["flows"][2].any()  # first windows; static pedestrian camera
    assert train["flows"][:2, 1:].any()
    np.testing.assert_allclose(train["window_ends_us"], [20_000, 40_000, 60_000])
    assert (train["num_events"] > 0).all() and "events_t" not in train
    thresholds = train["contrast_threshold"]
    assert (thresholds >= config.contrast_threshold_min).all() and len(set(thresholds.tolist())) == 3

    path = tmp_path / "train.npz"
    written = os.stat(path).st_mtime_ns
    again = rs.load_or_simulate_split(config, "train", str(tmp_path))
    assert os.stat(path).st_mtime_ns == written
    for name, values in train.items():
        np.testing.assert_array_equal(again[name], values)
    fresh = rs.load_or_simulate_split(config, "train", str(tmp_path / "fresh"))
    for name, values in train.items():
        np.testing.assert_array_equal(fresh[name], values)

    test = rs.load_or_simulate_split(config, "test", str(tmp_path))
    assert test["events_offsets"][-1] == len(test["events_t"]) == test["num_events"].sum()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]

    config.seed = 1
    with pytest.raises(rs.ReconstructionDataError, match="another data config"):
        rs.load_or_simulate_split(config, "train", str(tmp_path))
    other = rs.load_or_simulate_split(config, "train", str(tmp_path / "other"))
    assert not np.array_equal(other["voxels"], train["voxels"])


def test_pedestrian_identities_are_disjoint_between_splits():
    config = tiny_config()
    # Train uses identity 1, validation none, test identity 2: same camera, different person.
    train = rs.simulate_sequence(config, "train", "pedestrian", 0, keep_events=False)
    test = rs.simulate_sequence(config, "test", "pedestrian", 0, keep_events=True)
    assert not np.array_equal(train["frames"], test["frames"])
    assert len(test["events_t"]) == test["num_events"]


def test_natural_images_ship_with_matplotlib():
    images = rs.natural_images(32)
    assert len(images) == len(rs.NATURAL_IMAGE_NAMES)
    for image in images:
        assert image.ndim == 2 and min(image.shape) == 32
        assert 0 <= image.min() < 0.2 and 0.8 < image.max() <= 1


def test_bad_config_is_a_clear_error(tmp_path):
    config = tiny_config()
    config.height = 20
    with pytest.raises(rs.ReconstructionDataError, match="config.data.height"):
        rs.load_or_simulate_split(config, "train", str(tmp_path))
