"""The PixelFade job (anon_jax/methods/pixelfade.py): config checks, resumable batch-wise protection, the attack's
training subset, and the `:smoke` job end to end with a resume."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anon_jax.methods import pixelfade
from anon_jax.privacy import pixelfade as pixelfade_lib
from configs import pixelfade as pixelfade_config
from main_runs import run_main


@pytest.mark.parametrize("field, value, message", [
    ("compare.methods", ("pixelfade", "pixelate"), "config.compare.methods"),
    ("compare.methods", ("mosaic", "blur"), "config.compare.methods"),
    ("data.validation_split", True, "config.data.validation_split"),
    ("attack.target", "pixels", "config.attack.target"),
    ("attack.metric_normalization", "zscore", "config.attack.metric_normalization"),
    ("pixelfade.constraint", "pixel", "pixelfade.constraint"),
])
def test_config_errors_name_the_field(field, value, message):
    config = pixelfade_config.get_config("smoke")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        pixelfade.check_config(config)


def test_every_variant_passes_the_checks():
    for variant in ("smoke", None, "paper"):
        pixelfade.check_config(pixelfade_config.get_config(variant))


def test_attack_train_indices_take_all_or_an_even_subset():
    config = pixelfade_config.get_config("smoke")
    config.attack.max_train_images = 0
    np.testing.assert_array_equal(pixelfade.attack_train_indices(config, 5), np.arange(5))
    config.attack.max_train_images = 3
    np.testing.assert_array_equal(pixelfade.attack_train_indices(config, 5), [0, 2, 4])
    config.attack.max_train_images = 9
    np.testing.assert_array_equal(pixelfade.attack_train_indices(config, 5), np.arange(5))


def _linear_protect(config):
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(8 * 4 * 3, 6)), jnp.float32) / 10

    def apply_fn(variables, x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w"])

    return pixelfade_lib.make_protect_fn(apply_fn, config.pixelfade), {"w": weights}


def test_protection_resumes_after_the_last_finished_batch(tmp_path):
    config = pixelfade_config.get_config("smoke")
    config.pixelfade.batch_size = 2
    config.pixelfade.max_iter = 4
    protect_fn, variables = _linear_protect(config)
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 8, 4, 3), dtype=np.uint8)
    first = tmp_path / "first"
    first.mkdir()
    paths = pixelfade.protect_split(config, protect_fn, variables, pixels, stage_dir=str(first), name="test", stream=0,
                                    feature_dim=6)
    expected = {kind: np.load(path) for kind, path in paths.items()}
    assert expected["images"].shape == (5, 8, 4, 3) and np.isfinite(expected["images"]).all()
    assert (expected["replacements"] == 4).all()  # every step of the 4 is a warm-up step
    # A run stopped after the first batch: later rows hold garbage, the progress file says 2 images.
    second = tmp_path / "second"
    shutil.copytree(first, second)
    for kind in ("images", "features"):
        array = np.load(second / f"test_{kind}.npy", mmap_mode="r+")
        array[2:] = 123.0
        array.flush()
        del array
    (second / pixelfade.PROGRESS_FILE).write_text(json.dumps({"test": 2}))
    pixelfade.protect_split(config, protect_fn, variables, pixels, stage_dir=str(second), name="test", stream=0,
                            feature_dim=6)
    for kind, values in expected.items():
        np.testing.assert_array_equal(np.load(second / f"test_{kind}.npy"), values)
    # A padded last batch protects its real image like a full batch would not: the padding takes no part.
    assert not np.allclose(expected["images"][4], 123.0)


def test_protection_refuses_arrays_of_another_size(tmp_path):
    config = pixelfade_config.get_config("smoke")
    config.pixelfade.batch_size = 2
    config.pixelfade.max_iter = 2
    protect_fn, variables = _linear_protect(config)
    pixels = np.zeros((4, 8, 4, 3), np.uint8)
    pixelfade.protect_split(config, protect_fn, variables, pixels, stage_dir=str(tmp_path), name="test", stream=0,
                            feature_dim=6)
    (tmp_path / pixelfade.PROGRESS_FILE).write_text(json.dumps({"test": 2}))
    with pytest.raises(pixelfade.PixelFadeConfigError, match="delete"):
        pixelfade.protect_split(config, protect_fn, variables, pixels[:3], stage_dir=str(tmp_path), name="test",
                                stream=0, feature_dim=6)


def test_desensitised_comparison_images_are_normalised_desensitisations():
    config = pixelfade_config.get_config("smoke")
    pixels = np.random.default_rng(2).integers(0, 256, size=(3, 64, 32, 3), dtype=np.uint8)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    images = pixelfade.protected_images(config, "mosaic", pixels, stream=0, mesh=mesh)
    block = config.desensitize.mosaic_size
    top_left = pixels[:, ::block, ::block].repeat(block, 1).repeat(block, 2)[:, :64, :32]
    expected = (top_left / 255.0 - np.asarray(config.data.pixel_mean)) / np.asarray(config.data.pixel_std)
    np.testing.assert_allclose(images, expected, atol=1e-6)


def test_smoke_job_runs_every_stage_and_resumes(tmp_path):
    workdir = tmp_path / "pixelfade"
    run_main("configs/pixelfade.py:smoke", workdir)
    report = json.loads((workdir / "report.json").read_text())
    rows = report["metrics"]
    assert set(rows) == {"PixelFade", "mosaic", "blur", "noise", "reversible anonymizer (privacy-reid GCR)"}
    for row in rows.values():
        assert 0 <= row["rank1 protected->protected"] <= 1 and -1 <= row["SSIM recovered"] <= 1
        assert row["rank1 raw->raw"] == rows["PixelFade"]["rank1 raw->raw"]  # one authorization model for all
    details = report["details"]
    assert details["test_images"] == len(np.load(workdir / "protect" / "test_images.npy", mmap_mode="r"))
    assert isinstance(details["pixelfade_lowest_recovery_ssim"], bool)
    assert (workdir / pixelfade.GRID_FILE).is_file() and (workdir / "authorization_model").is_dir()
    # Resume: protection stopped after its first train batch, the PixelFade attack and the evaluation unfinished.
    progress = json.loads((workdir / "protect" / pixelfade.PROGRESS_FILE).read_text())
    progress["train"] = 8
    (workdir / "protect" / pixelfade.PROGRESS_FILE).write_text(json.dumps(progress))
    for stage in ("protect", "attack_pixelfade", "evaluate"):
        (workdir / stage / "stage_done.json").unlink()
    run_main("configs/pixelfade.py:smoke", workdir)
    assert json.loads((workdir / "report.json").read_text())["metrics"] == rows
