"""python -m anon_jax.protect: a tiny AGW authorization model (depth 18, width 8, 32x16 images) protects three
generated images in batches of 2 (the last one padded); the written arrays equal PixelFade called directly on the
same normalised batches, the PNGs are the rounded clipped denormalised arrays, a rerun is identical, and bad
input gets a one-line error with exit code 2."""

import contextlib
import functools
import io
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from anon_jax import protect
from anon_jax.data import image_augment
from anon_jax.data.image_reid import load_image
from anon_jax.models import agw
from anon_jax.privacy import pixelfade
from test_agw_pretrained import random_variables, tiny_model_config

IMAGE_SIZE = (32, 16)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NAMES = ("a.png", "b.bmp", "c.PNG")  # sorted by name; sizes differ so every image is resized
SIZES = ((40, 20), (32, 16), (24, 12))  # (height, width)
FLAGS = ["--max-iter", "3", "--batch-size", "2", "--seed", "7", "--epsilon", "0.05"]


def run(argv, capsys):
    code = protect.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("protect")
    workdir = root / "workdir"
    variables = random_variables(tiny_model_config(), 5)
    agw.save_pretrained(workdir / agw.WORKDIR_EXPORT, tiny_model_config(), 5, variables, image_size=IMAGE_SIZE, pixel_mean=MEAN, pixel_std=STD)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (height, width) in zip(NAMES, SIZES):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images / name)
    (images / "notes.txt").write_text("not an image")
    (images / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "sub" / "d.png")  # not recursive: skipped
    return root, workdir, images


@pytest.fixture(scope="module")
def first_run(setup):
    """The command run once through main(): exit code, stderr, its output folder and a copy of what it wrote."""
    root, workdir, images = setup
    out = root / "out"
    stream = io.StringIO()
    with contextlib.redirect_stderr(stream):
        code = protect.main([str(a) for a in ["--reid-checkpoint", workdir, "--images", images, "--out", out,
                                              *FLAGS]])
    copy = root / "first"
    shutil.copytree(out, copy)
    return code, stream.getvalue(), out, copy


def expected_batches(workdir):
    """PixelFade called directly on the normalised batches, as the command should call it."""
    network, variables, settings = agw.load_pretrained(workdir / agw.WORKDIR_EXPORT)
    config = pixelfade.pixelfade_config()
    config.max_iter, config.batch_size, config.seed, config.epsilon = 3, 2, 7, 0.05
    fn = pixelfade.make_protect_fn(functools.partial(network.apply, train=False), config)
    key = jax.random.key(7)
    chunks = pixelfade.replacement_chunks(jax.random.fold_in(key, 0), (2, *IMAGE_SIZE, 3), 5)
    return network, variables, fn, chunks, jax.random.fold_in(key, 1)


def test_writes_protected_images(setup, first_run):
    root, workdir, images = setup
    code, err, _, out = first_run
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "a.png", "b.npy", "b.png", "c.npy", "c.png",
                                                     "protect.json"]
    for stem in "abc":
        array = np.load(out / f"{stem}.npy")
        assert array.dtype == np.float32 and array.shape == (32, 16, 3)
        with Image.open(out / f"{stem}.png") as image:
            assert image.mode == "RGB" and image.size == (16, 32)
    assert "protect: [" in err and "3/3 images" in err and "images/s" in err
    assert f"wrote 3 protected images to {root / 'out'}" in err


def test_arrays_equal_pixelfade_on_the_same_batches(setup, first_run):
    root, workdir, images = setup
    out = first_run[3]
    network, variables, fn, chunks, noise_key = expected_batches(workdir)
    pixels = np.stack([load_image(images / name, height=32, width=16) for name in NAMES])
    normalised = np.asarray(image_augment.normalize(pixels, MEAN, STD))
    # The reference normalisation, written out: (pixels / 255 - mean) / std.
    np.testing.assert_allclose(normalised, (pixels / 255.0 - np.array(MEAN)) / np.array(STD), atol=1e-5)
    report = json.loads((out / "protect.json").read_text())
    embed = jax.jit(functools.partial(network.apply, train=False))
    for start, rows in ((0, 2), (2, 1)):
        batch = np.zeros((2, 32, 16, 3), np.float32)
        batch[:rows] = normalised[start:start + rows]
        noise = pixelfade.noise_images(noise_key, jnp.arange(start, start + 2), (32, 16, 3))
        result = jax.device_get(fn(variables, batch, chunks, noise, np.arange(2) < rows))
        for row in range(rows):
            stem = "abc"[start + row]
            np.testing.assert_array_equal(np.load(out / f"{stem}.npy"), result["images"][row], err_msg=stem)
            record = report["images"][start + row]
            assert record["loss_last_iteration"] == float(result["loss"][row])
            assert record["replacements"] == int(result["replacements"][row]) == 3  # every step in the warm-up
        final, reference = np.asarray(embed(variables, np.stack([result["images"], batch]).reshape(4, 32, 16, 3))
                                      ).reshape(2, 2, -1)
        for row in range(rows):
            loss = float(np.mean((final[row] - reference[row]) ** 2))
            assert report["images"][start + row]["loss_returned_image"] == pytest.approx(loss, rel=1e-4, abs=1e-9)
    # Protection moved the images away from the originals, within the batch-global clamp range.
    protected = np.stack([np.load(out / f"{stem}.npy") for stem in "abc"])
    assert np.mean(np.abs(protected - normalised)) > 0.1
    assert protected[:2].min() >= normalised[:2].min() and protected[:2].max() <= normalised[:2].max()


def test_png_is_the_rounded_clipped_denormalised_array(first_run):
    out = first_run[3]
    for stem in "abc":
        array = np.load(out / f"{stem}.npy")
        with Image.open(out / f"{stem}.png") as image:
            png = np.asarray(image)
        pixels = (array * np.array(STD, np.float32) + np.array(MEAN, np.float32)) * 255.0
        np.testing.assert_allclose(np.asarray(image_augment.denormalize(array[None], MEAN, STD))[0], pixels,
                                   atol=1e-3)
        expected = np.round(np.clip(np.asarray(image_augment.denormalize(array[None], MEAN, STD))[0], 0, 255))
        np.testing.assert_array_equal(png, expected.astype(np.uint8))


def test_report(setup, first_run):
    root, workdir, images = setup
    report = json.loads((first_run[3] / "protect.json").read_text())
    assert report["format"] == "anon_jax.protect/1"
    assert report["checkpoint"] == str((workdir / agw.WORKDIR_EXPORT).absolute())
    assert report["images_dir"] == str(images.absolute())
    assert report["image_size"] == [32, 16] and report["count"] == 3
    assert report["pixel_mean"] == list(MEAN) and report["pixel_std"] == list(STD)
    assert {k: report["pixelfade"][k] for k in ("max_iter", "batch_size", "seed", "epsilon", "beta", "beta_temp",
                                                "constraint")} == {
        "max_iter": 3, "batch_size": 2, "seed": 7, "epsilon": 0.05, "beta": 0.01, "beta_temp": 0.04,
        "constraint": "batch"}
    assert [(r["source"], r["npy"], r["png"]) for r in report["images"]] == [
        ("a.png", "a.npy", "a.png"), ("b.bmp", "b.npy", "b.png"), ("c.PNG", "c.npy", "c.png")]
    assert all(r["loss_returned_image"] >= 0 and r["loss_last_iteration"] >= 0 for r in report["images"])


def test_rerun_with_overwrite_is_identical(setup, first_run, capsys):
    root, workdir, images = setup
    _, _, out, first = first_run
    code, err = run(["--reid-checkpoint", workdir, "--images", images, "--out", out, *FLAGS], capsys)
    assert code == 2 and f"{out}: the output folder is not empty" in err and "--overwrite" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    code, err = run(["--reid-checkpoint", workdir / agw.WORKDIR_EXPORT, "--images", images, "--out", out,
                     "--overwrite", *FLAGS], capsys)
    assert code == 0, err
    for stem in "abc":
        np.testing.assert_array_equal(np.load(out / f"{stem}.npy"), np.load(first / f"{stem}.npy"))
        assert (out / f"{stem}.png").read_bytes() == (first / f"{stem}.png").read_bytes()
    assert (out / "protect.json").read_text() == (first / "protect.json").read_text()


@pytest.mark.parametrize("flags, message", [
    (["--max-iter", "0"], "--max-iter 0: pixelfade.max_iter=0: must be an integer >= 1."),
    (["--batch-size", "-1"], "--batch-size -1: pixelfade.batch_size=-1: must be an integer >= 1."),
    (["--epsilon", "0"], "--epsilon 0.0: pixelfade.epsilon=0.0: must be > 0."),
    (["--beta-temp", "-0.5"], "--beta-temp -0.5: pixelfade.beta_temp=-0.5: must be > 0."),
    (["--constraint", "pixel"], "--constraint pixel: pixelfade.constraint='pixel': use one of ('batch', 'image')."),
])
def test_bad_flag_values(setup, tmp_path, capsys, flags, message):
    root, workdir, images = setup
    code, err = run(["--reid-checkpoint", workdir, "--images", images, "--out", tmp_path / "out", *flags], capsys)
    assert (code, err) == (2, f"protect: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_unparsable_flag(setup, tmp_path, capsys):
    root, workdir, images = setup
    with pytest.raises(SystemExit) as exit_info:
        protect.main(["--reid-checkpoint", str(workdir), "--images", str(images), "--out", str(tmp_path / "o"),
                      "--max-iter", "three"])
    assert exit_info.value.code == 2 and "argument --max-iter: invalid int value: 'three'" in capsys.readouterr().err


def test_missing_checkpoint(setup, tmp_path, capsys):
    root, workdir, images = setup
    missing = tmp_path / "nowhere"
    code, err = run(["--reid-checkpoint", missing, "--images", images, "--out", tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{missing}: neither {missing / agw.CONFIG_FILE} nor {missing / 'authorization_model' / agw.CONFIG_FILE}" \
        in err
    assert not (tmp_path / "out").exists()


def test_empty_images_folder(setup, tmp_path, capsys):
    root, workdir, _ = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    code, err = run(["--reid-checkpoint", workdir, "--images", empty, "--out", tmp_path / "out"], capsys)
    assert (code, err) == (2, f"protect: error: {empty}: the folder holds no .jpg/.jpeg/.png/.bmp images.\n")
    code, err = run(["--reid-checkpoint", workdir, "--images", tmp_path / "none", "--out", tmp_path / "out"], capsys)
    assert (code, err) == (2, f"protect: error: {tmp_path / 'none'}: no such images folder.\n")


def test_folder_checks(setup, tmp_path):
    root, workdir, images = setup
    config = pixelfade.pixelfade_config()
    with pytest.raises(protect.ProtectError, match="is the images folder itself"):
        protect.protect_folder(workdir, images, images, config, overwrite=True)
    twins = tmp_path / "twins"
    twins.mkdir()
    for name in ("x.png", "x.jpg"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(twins / name)
    with pytest.raises(protect.ProtectError, match=r"x.jpg and x.png would both be written as x.npy"):
        protect.protect_folder(workdir, twins, tmp_path / "out", config)
    (tmp_path / "file").write_text("x")
    with pytest.raises(protect.ProtectError, match="exists and is not a folder"):
        protect.protect_folder(workdir, images, tmp_path / "file", config)
    assert protect.list_images(images) == [images / name for name in NAMES]
    assert protect.resolve_checkpoint(workdir) == workdir / agw.WORKDIR_EXPORT
    assert protect.resolve_checkpoint(workdir / agw.WORKDIR_EXPORT) == workdir / agw.WORKDIR_EXPORT
