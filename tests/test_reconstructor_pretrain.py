"""Tests of the reconstructor pretraining: warping, the temporal-consistency loss and the smoke run end to end."""

import json
import math
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import configs.e2vid_pretrain as e2vid_pretrain
from anon_jax.methods import reconstructor_pretrain as method
from anon_jax.models import e2vid

REPO = pathlib.Path(__file__).resolve().parents[1]


def nhwc(image):
    return jnp.asarray(image, jnp.float32)[None, :, :, None]


def constant_flow(height, width, dx, dy):
    return jnp.broadcast_to(jnp.array([dx, dy], jnp.float32), (1, height, width, 2))


def test_warp_shifts_by_whole_pixels_with_zeros_outside_and_interpolates_halves():
    image = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    shifted = method.warp(nhwc(image), constant_flow(3, 4, 1.0, -1.0))[0, ..., 0]
    expected = np.zeros((3, 4), np.float32)
    expected[1:, :-1] = image[:-1, 1:]  # out(y, x) = image(y - 1, x + 1)
    np.testing.assert_allclose(shifted, expected)
    half = method.warp(nhwc(image), constant_flow(3, 4, 0.5, 0.0))[0, ..., 0]
    np.testing.assert_allclose(half[:, :3], (image[:, :3] + image[:, 1:]) / 2)
    np.testing.assert_allclose(half[:, 3], image[:, 3] / 2)  # the right neighbour is outside: zero


def test_temporal_consistency_is_zero_for_a_perfectly_warped_prediction():
    rng = np.random.default_rng(0)
    previous = np.zeros((6, 5), np.float32)
    previous[1:-1, 1:-1] = rng.uniform(0.1, 1.0, (4, 3))  # zero border: nothing leaves the frame
    current = np.zeros_like(previous)
    current[:, :-2] = previous[:, 2:]  # the scene moved 2 px left: current(x) = previous(x + 2)
    flow = constant_flow(6, 5, 2.0, 0.0)
    gt_previous, gt = rng.uniform(size=(2, 6, 5))
    loss = method.temporal_consistency(nhwc(gt_previous), nhwc(gt), nhwc(previous), nhwc(current), flow)
    assert float(loss[0]) == 0.0
    wrong = method.temporal_consistency(nhwc(gt_previous), nhwc(gt), nhwc(previous), nhwc(previous), flow)
    assert float(wrong[0]) > 0.0


def test_temporal_consistency_hand_values():
    ones = np.ones((4, 4), np.float32)
    still = constant_flow(4, 4, 0.0, 0.0)
    # Visible everywhere (gt unchanged): |0.6 - 0.2| / (0.6 + 0.2 + 1e-5).
    loss = method.temporal_consistency(nhwc(0.5 * ones), nhwc(0.5 * ones), nhwc(0.2 * ones), nhwc(0.6 * ones), still)
    assert float(loss[0]) == pytest.approx(0.4 / (0.8 + 1e-5), rel=1e-6)
    # A ground-truth change of 0.1 weighs it by exp(-50 * 0.01).
    loss = method.temporal_consistency(nhwc(0.5 * ones), nhwc(0.6 * ones), nhwc(0.2 * ones), nhwc(0.6 * ones), still)
    assert float(loss[0]) == pytest.approx(math.exp(-0.5) * 0.4 / (0.8 + 1e-5), rel=1e-5)


def test_sequence_losses_are_zero_for_a_perfect_reconstruction():
    frames = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 2, 16, 16, 1)), jnp.float32)
    flows = jnp.zeros((3, 2, 16, 16, 2))
    config = ml_collections.ConfigDict(dict(temporal_weight=2.0, temporal_start_window=1, visibility_alpha=50.0))
    terms = method.sequence_losses(frames, frames, flows, config)
    assert float(terms["l1"]) == 0.0 and float(terms["ssim"]) == pytest.approx(1.0, abs=1e-5)
    assert float(terms["loss"]) == pytest.approx(2.0 * float(terms["temporal"]), abs=1e-5)
    assert float(terms["temporal"]) > 0  # random frames are not consistent under zero flow


def run_main(workdir):
    command = [sys.executable, "-m", "anon_jax.main", "--config=configs/e2vid_pretrain.py:smoke",
               f"--workdir={workdir}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def test_smoke_run_end_to_end_reports_e2vid_and_the_baseline_and_saves_the_reconstructor(tmp_path):
    workdir = tmp_path / "run"
    run_main(workdir)
    report = json.loads((workdir / "report.json").read_text())
    rows = report["metrics"]
    assert {"E2VID (pretrained here)", "leaky integration (fixed)", "leaky integration (minmax)"} == set(rows)
    for values in rows.values():
        assert 0 <= values["MSE"] <= 1 and -1 <= values["SSIM"] <= 1
        # The mean per-frame PSNR is at least the PSNR of the mean MSE (Jensen).
        assert values["PSNR"] >= -10 * math.log10(values["MSE"]) - 1e-4
    assert report["details"]["train_steps"] == 6
    assert [entry["step"] for entry in json.loads((workdir / "train" / "stage_done.json").read_text())["validation"]] \
        == [4, 6]
    assert (workdir / method.FIGURE_NAME).read_bytes().startswith(b"\x89PNG")
    assert (workdir / "report.md").read_text().startswith("# E2VID reconstructor pretrained on simulated events")
    module, variables = e2vid.load_pretrained(workdir / method.RECONSTRUCTOR_DIR)
    assert module.config.base_channels == 4 and module.config.norm == "none"
    images, _ = e2vid.run_sequence(module, variables, jnp.zeros((2, 1, 32, 24, 5)))
    assert images.shape == (2, 1, 32, 24, 1)

    rerun = run_main(workdir)
    for stage in ("data", "train", "evaluate"):
        assert f"Stage {stage!r} already finished" in rerun.stderr
    assert json.loads((workdir / "report.json").read_text())["metrics"] == rows


def test_lightweight_variant_is_the_published_architecture_and_recipe():
    config = e2vid_pretrain.get_config("lightweight")
    model_config = e2vid.e2vid_config(**config.model.to_dict())
    assert dict(model_config) == dict(e2vid.LIGHTWEIGHT)
    assert e2vid.parameter_count(e2vid.abstract_variables(model_config)) == 10_712_098
    assert (config.optimizer.name, config.optimizer.learning_rate, config.optimizer.schedule) == ("adam", 1e-4, "constant")
    assert (config.train.sequence_length, config.train.batch_size, config.train.crop_height, config.train.crop_width) \
        == (40, 2, 112, 112)
    assert config.loss.temporal_weight == 2.0 and config.loss.temporal_start_window == 2
    with pytest.raises(ValueError, match="variant"):
        e2vid_pretrain.get_config("paper")
