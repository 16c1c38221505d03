"""privacy-reid desensitisation: hand-computed mosaics and noise quantisation, bit-exact parity with Pillow's
GaussianBlur, the sampled-Gaussian blur against scipy.ndimage, noise statistics, and config validation."""

import jax
import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage

from anon_jax.privacy.desensitize import (DesensitizeError, desensitize, desensitize_config, gaussian_blur,
                                          gaussian_noise, mosaic, noise_to_pixels, pillow_box_radius)


def pillow_blur(images: np.ndarray, radius: float) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius))) for img in images])


def loop_mosaic(images: np.ndarray, size: int) -> np.ndarray:
    """privacy-reid's do_mosaic, block by block: fill each (truncated) block with its top-left pixel."""
    out = images.copy()
    for i in range(0, images.shape[1], size):
        for j in range(0, images.shape[2], size):
            out[:, i:i + size, j:j + size] = images[:, i:i + 1, j:j + 1]
    return out


def make_images(height: int, width: int, seed: int) -> np.ndarray:
    """Two uniform-noise images and one with hard 0/255 edges and a gradient (saturated sums, sharp steps)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(2, height, width, 3), dtype=np.uint8)
    structured = np.zeros((height, width, 3), np.uint8)
    structured[: height // 2, : width // 3] = 255
    structured[height // 3:, width // 2:, 1] = 255
    structured[..., 2] = (np.arange(width) * 255 // max(width - 1, 1)).astype(np.uint8)
    return np.concatenate([noise, structured[None]])


# ---------------------------------------------------------------------------------------------------- mosaic

def test_mosaic_small_image_by_hand():
    value = (10 * np.arange(5)[:, None] + np.arange(7)[None, :]).astype(np.uint8)  # pixel (i, j) = 10 i + j
    images = np.stack([value, 255 - value], axis=-1)[None]  # (1, 5, 7, 2)
    top = [0, 0, 0, 3, 3, 3, 6]  # columns 0-2 read column 0, 3-5 read column 3, the 1-wide edge block column 6
    bottom = [30, 30, 30, 33, 33, 33, 36]  # rows 3-4 form the truncated edge block read from row 3
    expected = np.array([top, top, top, bottom, bottom], np.uint8)
    out = np.asarray(mosaic(images, 3))
    assert out.dtype == np.uint8 and out.shape == (1, 5, 7, 2)
    np.testing.assert_array_equal(out[0, ..., 0], expected)
    np.testing.assert_array_equal(out[0, ..., 1], 255 - expected)


@pytest.mark.parametrize("height,width,size", [(256, 128, 24), (128, 64, 24), (37, 20, 7)])
def test_mosaic_truncated_edge_blocks(height, width, size):
    images = make_images(height, width, seed=size)
    out = np.asarray(jax.jit(lambda x: mosaic(x, size))(images))
    np.testing.assert_array_equal(out, loop_mosaic(images, size))
    if (height, width) == (256, 128):
        # 11 x 6 blocks; the last row of blocks is 16 px high and the last column 8 px wide.
        np.testing.assert_array_equal(out[:, 240:, 120:], np.broadcast_to(images[:, 240:241, 120:121], (3, 16, 8, 3)))
        assert len(np.unique(out[0, :, :, 0].reshape(-1))) <= 66


def test_mosaic_size_covering_image_and_size_one():
    images = make_images(9, 6, seed=1)
    whole = np.asarray(mosaic(images, 9))
    np.testing.assert_array_equal(whole, np.broadcast_to(images[:, :1, :1], images.shape))
    np.testing.assert_array_equal(np.asarray(mosaic(images, 100)), whole)
    np.testing.assert_array_equal(np.asarray(mosaic(images, 1)), images)


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "24"])
def test_mosaic_rejects_bad_size(size):
    with pytest.raises(DesensitizeError, match="size"):
        mosaic(np.zeros((1, 4, 4, 3), np.uint8), size)


# ---------------------------------------------------------------------------------------------------- blur

def test_pillow_box_radius_by_hand():
    # sigma^2 = 144 / 3 = 48, L = sqrt(577) = 24.02, l = 11, a = 23 (132 - 144) / (6 (48 - 144)) = 276 / 576.
    assert abs(float(pillow_box_radius(12.0)) - (11 + 276 / 576)) < 1e-6
    # sigma^2 = 0.49 / 3, l = 0, a = -3 sigma^2 / (6 (sigma^2 - 1)).
    sigma2 = 0.49 / 3
    assert abs(float(pillow_box_radius(0.7)) - (-3 * sigma2 / (6 * (sigma2 - 1)))) < 1e-6
    sigma2 = 1.69 / 3
    assert abs(float(pillow_box_radius(1.3)) - (-3 * sigma2 / (6 * (sigma2 - 1)))) < 1e-6  # 0.645


@pytest.mark.parametrize("height,width", [(128, 64), (256, 128)])
# 1.3 gives box radius 0.645: a fractional part above 0.5 checks that the integer radius is truncated.
@pytest.mark.parametrize("radius", [12, 6, 2.5, 0.7, 1.3])
def test_pillow_blur_is_bit_exact(height, width, radius):
    images = make_images(height, width, seed=height + int(10 * radius))
    out = np.asarray(jax.jit(lambda x: gaussian_blur(x, radius))(images))
    expected = pillow_blur(images, radius)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, images)


@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (2, 9), (30, 2)])
@pytest.mark.parametrize("radius", [12.0, 2.5])
def test_pillow_blur_on_images_smaller_than_the_kernel(shape, radius):
    rng = np.random.default_rng(sum(shape))
    images = rng.integers(0, 256, size=(2,) + shape + (3,), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(gaussian_blur(images, radius)), pillow_blur(images, radius))


def test_blur_radius_zero_and_flat_images():
    images = make_images(16, 8, seed=3)
    np.testing.assert_array_equal(np.asarray(gaussian_blur(images, 0)), images)
    flat = np.full((1, 20, 10, 3), 173, np.uint8)
    for kind in ("pillow", "gaussian"):
        np.testing.assert_array_equal(np.asarray(gaussian_blur(flat, 5.0, kind=kind)), flat)


@pytest.mark.parametrize("sigma", [12.0, 2.5, 0.7])
def test_sampled_gaussian_blur_matches_scipy(sigma):
    images = make_images(40, 24, seed=5)
    out = np.asarray(gaussian_blur(images, sigma, kind="gaussian")).astype(int)
    # Same kernel (4-sigma cut, normalised) and border (nearest) as scipy; only float rounding can differ.
    ref = ndimage.gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma, 0), mode="nearest",
                                  truncate=4.0)
    expected = np.clip(np.round(ref), 0, 255)
    assert np.abs(out - expected).max() <= 1
    assert (out == expected).mean() > 0.999
    # Not Pillow's box approximation: they differ on noise images.
    assert not np.array_equal(out, pillow_blur(images, sigma))


@pytest.mark.parametrize("radius,kind", [(-1.0, "pillow"), (float("nan"), "pillow"), (None, "pillow"),
                                         (2.0, "box")])
def test_blur_rejects_bad_arguments(radius, kind):
    with pytest.raises(DesensitizeError, match="radius" if kind != "box" else "kind"):
        gaussian_blur(np.zeros((1, 4, 4, 3), np.uint8), radius, kind=kind)


# ---------------------------------------------------------------------------------------------------- noise

def test_noise_to_pixels_by_hand():
    images = np.array([0, 10, 128, 200, 250, 255, 77], np.uint8).reshape(1, 1, 7, 1)
    noise = np.array([0.9999, -0.5, 0.0, 0.1, 0.5, -0.002, 0.3], np.float32).reshape(1, 1, 7, 1)
    out = np.asarray(noise_to_pixels(images, noise)).reshape(-1)
    # 0.9999 * 255 = 254.97 -> 254 (truncated); 10/255 - 0.5 < 0 -> 0; 128 unchanged;
    # (200/255 + 0.1) * 255 = 225.5 -> 225; 250/255 + 0.5 > 1 -> 255; (1 - 0.002) * 255 = 254.49 -> 254;
    # (77/255 + 0.3) * 255 = 153.5 -> 153.
    np.testing.assert_array_equal(out, [254, 0, 128, 225, 255, 254, 153])
    assert out.dtype == np.uint8


def test_zero_noise_is_identity_for_every_pixel_value():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    out = jax.jit(noise_to_pixels)(images, np.zeros(images.shape, np.float32))
    np.testing.assert_array_equal(np.asarray(out), images)
    np.testing.assert_array_equal(np.asarray(gaussian_noise(images, 0.0, jax.random.key(0))), images)


def test_gaussian_noise_keys_and_per_image_streams():
    images = make_images(32, 16, seed=9)
    key = jax.random.key(4)
    out = np.asarray(gaussian_noise(images, 0.5, key))
    np.testing.assert_array_equal(out, np.asarray(jax.jit(lambda x, k: gaussian_noise(x, 0.5, k))(images, key)))
    assert not np.array_equal(out, np.asarray(gaussian_noise(images, 0.5, jax.random.key(5))))
    # Image i's noise is drawn from fold_in(key, i): it does not depend on the other images.
    for i in range(3):
        own = jax.random.normal(jax.random.fold_in(key, i), images.shape[1:]) * 0.5
        np.testing.assert_array_equal(out[i], np.asarray(noise_to_pixels(images[i:i + 1], own))[0])
    swapped = images.copy()
    swapped[1] = 255 - swapped[1]
    np.testing.assert_array_equal(np.asarray(gaussian_noise(swapped, 0.5, key))[[0, 2]], out[[0, 2]])
    assert not np.array_equal(out[0], out[1])
    # Raw uint32 keys (jax.random.PRNGKey) work too.
    raw = np.asarray(gaussian_noise(images, 0.5, jax.random.PRNGKey(4)))
    assert raw.shape == images.shape and raw.dtype == np.uint8


def test_gaussian_noise_statistics_on_mid_grey():
    grey = np.full((2, 256, 128, 3), 128, np.uint8)
    small = np.asarray(gaussian_noise(grey, 0.05, jax.random.key(1))).astype(np.float64) / 255
    # No clipping at sigma 0.05; truncation shifts the mean by -0.5/255 and adds (1/255)^2 / 12 of variance.
    assert abs(small.mean() - (128 - 0.5) / 255) < 5e-4
    assert abs(small.std() - np.sqrt(0.05**2 + (1 / 255) ** 2 / 12)) < 5e-4
    # At privacy-reid's sigma 0.5: 0 <=> x + n < 1/255, P = Phi((1 - 128)/255/0.5) = Phi(-0.99608) = 0.1596;
    # 255 <=> x + n >= 1 (clipped), P = 1 - Phi((255 - 128)/255/0.5), the same 0.1596.
    big = np.asarray(gaussian_noise(grey, 0.5, jax.random.key(2)))
    assert abs((big == 0).mean() - 0.1596) < 0.005
    assert abs((big == 255).mean() - 0.1596) < 0.005


def test_gaussian_noise_rejects_bad_arguments():
    images = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(DesensitizeError, match="sigma"):
        gaussian_noise(images, -0.1, jax.random.key(0))
    with pytest.raises(DesensitizeError, match="key"):
        gaussian_noise(images, 0.5, None)
    with pytest.raises(DesensitizeError, match="key"):
        gaussian_noise(images, 0.5, jax.random.split(jax.random.key(0), 3))


# ---------------------------------------------------------------------------------------------------- dispatch

def test_default_config():
    cfg = desensitize_config()
    assert (cfg.kind, cfg.mosaic_size, cfg.blur_radius, cfg.blur_kind, cfg.noise_sigma) == (
        "mosaic", 24, 12.0, "pillow", 0.5)
    assert desensitize_config("noise").kind == "noise"
    with pytest.raises(DesensitizeError, match="kind"):
        desensitize_config("pixelate")


def test_desensitize_dispatch_under_jit():
    images = make_images(64, 32, seed=11)
    key = jax.random.key(3)
    results = {}
    for kind in ("mosaic", "blur", "noise"):
        cfg = desensitize_config(kind)
        results[kind] = np.asarray(jax.jit(lambda imgs, k: desensitize(imgs, cfg, k))(images, key))
        assert results[kind].shape == images.shape and results[kind].dtype == np.uint8
    np.testing.assert_array_equal(results["mosaic"], loop_mosaic(images, 24))
    np.testing.assert_array_equal(results["blur"], pillow_blur(images, 12.0))
    np.testing.assert_array_equal(results["noise"], np.asarray(gaussian_noise(images, 0.5, key)))
    cfg = desensitize_config("blur")
    cfg.blur_kind, cfg.blur_radius = "gaussian", 2.0
    np.testing.assert_array_equal(np.asarray(desensitize(images, cfg)),
                                  np.asarray(gaussian_blur(images, 2.0, kind="gaussian")))


@pytest.mark.parametrize("field,value", [("kind", "pixelate"), ("mosaic_size", 0), ("blur_radius", -2.0),
                                         ("blur_kind", "box"), ("noise_sigma", float("inf"))])
def test_desensitize_names_bad_config_field(field, value):
    kind = {"mosaic_size": "mosaic", "blur_radius": "blur", "blur_kind": "blur", "noise_sigma": "noise"}.get(
        field, "mosaic")
    cfg = desensitize_config(kind)
    setattr(cfg, field, value)
    with pytest.raises(DesensitizeError, match=f"config.{field}"):
        desensitize(np.zeros((1, 8, 8, 3), np.uint8), cfg, jax.random.key(0))


def test_desensitize_noise_needs_key_and_uint8_images():
    images = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(DesensitizeError, match="key"):
        desensitize(images, desensitize_config("noise"))
    with pytest.raises(DesensitizeError, match="8-bit"):
        desensitize(images.astype(np.float32) / 255, desensitize_config())
    with pytest.raises(DesensitizeError, match=r"\(N, H, W, C\)"):
        desensitize(images[0], desensitize_config())
    assert isinstance(DesensitizeError("x"), ValueError)
