"""Paired image augmentation tests: flip, pad-crop and erasing invariants, shared parameters for the raw and
desensitised images, erase fill values, normalisation by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anon_jax.data import image_augment

MEAN = np.array(image_augment.PIXEL_MEAN)
COUNT, HEIGHT, WIDTH = 48, 24, 12


def _pixels(seed, shape=(COUNT, HEIGHT, WIDTH, 3)):
    # Values 1..255 (never 0), so zero padding is told apart from image content.
    return np.random.default_rng(seed).integers(1, 256, size=shape).astype(np.float32)


def test_normalize_by_hand_and_inverse():
    pixels = np.array([0, 255, 51], np.uint8).reshape(1, 1, 1, 3)
    expected = [(0 - 0.485) / 0.5, (1 - 0.456) / 0.5, (0.2 - 0.406) / 0.5]
    np.testing.assert_allclose(image_augment.normalize(pixels)[0, 0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(image_augment.denormalize(image_augment.normalize(pixels)), pixels, atol=1e-4)
    with pytest.raises(image_augment.ImageAugmentError, match=r"\(N, H, W, 3\)"):
        image_augment.normalize(np.zeros((4, 4, 3)))


@functools.partial(jax.jit, static_argnames=("pad", "erase_prob"))
def _augment(key, raw, desensitized, pad=10, erase_prob=0.5):
    return image_augment.augment_pair(key, raw, desensitized, pad=pad, erase_prob=erase_prob)


def _find_window(output, padded):
    """The (top, left) offsets at which `output` (H, W, C) sits in `padded`, or None."""
    height, width = output.shape[:2]
    for top in range(padded.shape[0] - height + 1):
        for left in range(padded.shape[1] - width + 1):
            if np.array_equal(padded[top:top + height, left:left + width], output):
                return top, left
    return None


def test_flip_and_pad_crop_share_parameters_and_cover_all_offsets():
    raw, desensitized = _pixels(0), _pixels(1)
    out_raw, out_des = _augment(jax.random.key(0), raw, desensitized, erase_prob=0.0)
    assert out_raw.shape == out_des.shape == raw.shape and out_raw.dtype == jnp.float32
    pixels_raw = np.rint(np.asarray(image_augment.denormalize(out_raw)))
    pixels_des = np.rint(np.asarray(image_augment.denormalize(out_des)))
    flips, offsets = [], set()
    for i in range(COUNT):
        placements = []
        for flipped in (False, True):
            source_raw = raw[i, :, ::-1] if flipped else raw[i]
            source_des = desensitized[i, :, ::-1] if flipped else desensitized[i]
            pad = ((10, 10), (10, 10), (0, 0))
            window_raw = _find_window(pixels_raw[i], np.pad(source_raw, pad))
            window_des = _find_window(pixels_des[i], np.pad(source_des, pad))
            if window_raw is not None:
                assert window_des == window_raw  # same flip, same crop for the pair
                placements.append((flipped, window_raw))
        assert len(placements) == 1
        flips.append(placements[0][0])
        offsets.add(placements[0][1])
    assert 0.2 < np.mean(flips) < 0.8
    assert all(0 <= top <= 20 and 0 <= left <= 20 for top, left in offsets) and len(offsets) > COUNT // 2
    # Padding is black in pixel space, i.e. -mean/std once normalised.
    padded_values = np.asarray(out_raw)[pixels_raw.sum(-1) == 0]
    np.testing.assert_allclose(padded_values, np.broadcast_to(-MEAN / 0.5, padded_values.shape), rtol=1e-6)


def test_erasing_same_rectangle_filled_with_pixel_mean():
    raw, desensitized = _pixels(2), _pixels(3)
    keep_raw, keep_des = _augment(jax.random.key(5), raw, desensitized, pad=0, erase_prob=0.0)
    out_raw, out_des = _augment(jax.random.key(5), raw, desensitized, pad=0, erase_prob=1.0)
    erased_count = 0
    for i in range(COUNT):
        changed_raw = np.any(np.asarray(out_raw[i]) != np.asarray(keep_raw[i]), axis=-1)
        changed_des = np.any(np.asarray(out_des[i]) != np.asarray(keep_des[i]), axis=-1)
        np.testing.assert_array_equal(changed_raw, changed_des)
        if not changed_raw.any():
            continue
        erased_count += 1
        rows, cols = np.flatnonzero(changed_raw.any(1)), np.flatnonzero(changed_raw.any(0))
        box_height, box_width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert changed_raw.sum() == box_height * box_width  # one solid rectangle
        assert box_height < HEIGHT and box_width < WIDTH
        # h*w within the area range up to rounding of each side by at most 1/2.
        lower = (np.sqrt(0.02 * HEIGHT * WIDTH * 0.3) - 0.5) * (np.sqrt(0.02 * HEIGHT * WIDTH / 0.3) - 0.5)
        assert lower <= box_height * box_width <= (np.sqrt(0.4 * HEIGHT * WIDTH / 0.3) + 0.5) ** 2
        for out in (out_raw, out_des):
            np.testing.assert_allclose(np.asarray(out[i])[changed_raw], np.broadcast_to(MEAN, (changed_raw.sum(), 3)),
                                       rtol=1e-6)
    # 100 tries almost always find a fitting rectangle on a 24x12 image.
    assert erased_count >= COUNT - 2


def test_erasing_probability_and_determinism():
    images = image_augment.normalize(_pixels(4, (400, 8, 8, 3)))
    erased = jax.jit(functools.partial(image_augment.random_erasing, prob=0.5))(jax.random.key(1), images)
    fraction = np.mean(np.any(np.asarray(erased) != np.asarray(images), axis=(1, 2, 3)))
    assert 0.35 < fraction < 0.6  # p = 0.5 minus the samples whose 100 tries fail on 8x8
    again = jax.jit(functools.partial(image_augment.random_erasing, prob=0.5))(jax.random.key(1), images)
    np.testing.assert_array_equal(erased, again)
    np.testing.assert_array_equal(image_augment.random_erasing(jax.random.key(1), images, prob=0.0), images)
    with pytest.raises(image_augment.ImageAugmentError, match="prob"):
        image_augment.random_erasing(jax.random.key(1), images, prob=1.5)


def test_erasing_rectangle_positions_cover_the_image():
    # Large boxes hit the edges too: the top-left corner is uniform over 0..H-h and 0..W-w inclusive.
    images = jnp.zeros((300, 10, 10, 3))
    erased = np.asarray(image_augment.random_erasing(jax.random.key(2), images, prob=1.0, fill=(1.0, 1.0, 1.0)))
    touched = erased[..., 0] == 1.0
    assert touched[:, 0, :].any() and touched[:, -1, :].any() and touched[:, :, 0].any() and touched[:, :, -1].any()


def test_augment_pair_rejects_mismatched_pairs():
    with pytest.raises(image_augment.ImageAugmentError, match="same shape"):
        image_augment.augment_pair(jax.random.key(0), np.zeros((2, 8, 4, 3)), np.zeros((2, 8, 6, 3)))
