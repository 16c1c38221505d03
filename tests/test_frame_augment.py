"""Frame augmentation and resizing against torchvision v1 tensor semantics: shifts with zero padding, flips,
rotations (np.rot90 and PyTorch grid_sample), one draw per sample shared by all channels, and resizes against
torch.nn.functional.interpolate."""

import math

import jax
import numpy as np
import pytest
import torch

from anon_jax.data import frame_augment
from anon_jax.data.frame_augment import FrameAugmentError


def positive_frames(shape, seed=0):
    """Frames without zeros, so zeros in an output can only come from padding."""
    return np.random.default_rng(seed).integers(1, 50, shape).astype(np.float32)


def shifted(image, dy, dx):
    """out[r, c] = image[r + dy, c + dx], zero outside (the hand definition of a padded crop)."""
    out = np.zeros_like(image)
    height, width = image.shape[:2]
    for r in range(height):
        for c in range(width):
            if 0 <= r + dy < height and 0 <= c + dx < width:
                out[r, c] = image[r + dy, c + dx]
    return out


def test_shift_crop_is_a_zero_filled_shift_shared_by_channels():
    padding = 2
    frames = positive_frames((24, 5, 6, 4))
    out = np.asarray(jax.jit(frame_augment.random_shift_crop, static_argnums=2)(
        jax.random.key(0), frames, padding))
    assert out.shape == frames.shape and out.dtype == np.float32
    shifts = set()
    for image, result in zip(frames, out):
        matches = [(dy, dx) for dy in range(-padding, padding + 1) for dx in range(-padding, padding + 1)
                   if np.array_equal(result, shifted(image, dy, dx))]
        assert len(matches) == 1  # all channels moved by the same shift
        shifts.add(matches[0])
    assert len(shifts) > 8  # one draw per sample


def test_shift_crop_smaller_size_and_identity():
    frames = positive_frames((6, 7, 7, 2))
    out = np.asarray(frame_augment.random_shift_crop(jax.random.key(1), frames, 1, size=5))
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for image, result in zip(padded, out):
        assert any(np.array_equal(result, image[i:i + 5, j:j + 5]) for i in range(5) for j in range(5))
    np.testing.assert_array_equal(frame_augment.random_shift_crop(jax.random.key(1), frames, 0), frames)


def test_hflip_mirrors_whole_samples():
    frames = positive_frames((32, 3, 4, 2))
    out = np.asarray(frame_augment.random_hflip(jax.random.key(2), frames))
    flipped = [np.array_equal(result, image[:, ::-1]) for image, result in zip(frames, out)]
    kept = [np.array_equal(result, image) for image, result in zip(frames, out)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < len(frames)


@pytest.mark.parametrize("size", [6, 7])
@pytest.mark.parametrize("degrees, turns", [(90, 1), (-90, -1), (180, 2), (270, 3), (0, 0)])
def test_rotation_by_quarter_turns_equals_rot90(size, degrees, turns):
    # torchvision's positive angle turns counter-clockwise, as np.rot90 does.
    frames = positive_frames((2, size, size, 3), seed=size)
    out = np.asarray(frame_augment.rotate(frames, np.full(2, degrees)))
    np.testing.assert_array_equal(out, np.rot90(frames, turns, axes=(1, 2)))


def torchvision_rotate(frames, degrees):
    """torchvision 0.19 `F.rotate(img, angle)` on tensors (NEAREST, fill 0), spelled out with torch ops:
    inverse matrix from _get_inverse_affine_matrix(centre 0, -angle), affine grid over pixel centres
    normalised by half the size, grid_sample(nearest, zeros, align_corners=False)."""
    images = torch.from_numpy(frames).permute(0, 3, 1, 2)
    _, _, height, width = images.shape
    outputs = []
    for image, angle in zip(images, degrees):
        rotation = math.radians(-angle)
        cos, sin = math.cos(rotation), math.sin(rotation)
        theta = torch.tensor([cos, sin, 0.0, -sin, cos, 0.0], dtype=torch.float32).reshape(1, 2, 3)
        base = torch.empty(1, height, width, 3)
        base[..., 0].copy_(torch.linspace(-width * 0.5 + 0.5, width * 0.5 - 0.5, steps=width))
        base[..., 1].copy_(torch.linspace(-height * 0.5 + 0.5, height * 0.5 - 0.5, steps=height).unsqueeze(-1))
        base[..., 2].fill_(1)
        scaled = theta.transpose(1, 2) / torch.tensor([0.5 * width, 0.5 * height])
        grid = base.view(1, height * width, 3).bmm(scaled).view(1, height, width, 2)
        outputs.append(torch.nn.functional.grid_sample(image[None], grid, mode="nearest", padding_mode="zeros",
                                                       align_corners=False)[0])
    return torch.stack(outputs).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("height, width", [(32, 32), (17, 24)])
def test_rotation_matches_torch_grid_sample(height, width):
    frames = positive_frames((8, height, width, 2), seed=height)
    degrees = np.random.default_rng(width).uniform(-15, 15, 8).astype(np.float32)
    degrees[:2] = [15, 45]
    out = np.asarray(frame_augment.rotate(frames, degrees))
    np.testing.assert_array_equal(out, torchvision_rotate(frames, degrees.tolist()))


def test_random_rotation_shares_one_angle_per_sample():
    base = positive_frames((6, 16, 16, 1))
    frames = base * np.arange(1, 5, dtype=np.float32)  # channel c = (c + 1) * channel 0
    out = np.asarray(jax.jit(frame_augment.random_rotation, static_argnums=2)(jax.random.key(3), frames, 15.0))
    np.testing.assert_array_equal(out, out[..., :1] * np.arange(1, 5, dtype=np.float32))
    assert np.any(out != frames)
    same = np.asarray(frame_augment.random_rotation(jax.random.key(3), np.repeat(base[:1], 6, axis=0), 180.0))
    assert len({image.tobytes() for image in same}) == 6  # identical inputs, one draw per sample
    np.testing.assert_array_equal(frame_augment.random_rotation(jax.random.key(3), frames, 0), frames)


def to_torch(frames):
    return torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2)


def from_torch(tensor):
    return tensor.permute(0, 2, 3, 1).numpy()


RESIZES = [(37, 53, 304, 304), (150, 150, 304, 304), (200, 120, 64, 96), (9, 40, 20, 13), (16, 16, 16, 16)]


@pytest.mark.parametrize("height, width, out_height, out_width", RESIZES)
def test_resize_nearest_matches_torch(height, width, out_height, out_width):
    frames = positive_frames((2, height, width, 3))
    expected = from_torch(torch.nn.functional.interpolate(to_torch(frames), size=(out_height, out_width),
                                                          mode="nearest"))
    out = np.asarray(jax.jit(frame_augment.resize_nearest, static_argnums=(1, 2))(frames, out_height, out_width))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("height, width, out_height, out_width", RESIZES)
def test_resize_bilinear_antialias_matches_torch(height, width, out_height, out_width):
    frames = positive_frames((2, height, width, 3))
    expected = from_torch(torch.nn.functional.interpolate(
        to_torch(frames), size=(out_height, out_width), mode="bilinear", antialias=True, align_corners=False))
    out = np.asarray(jax.jit(frame_augment.resize_bilinear_antialias, static_argnums=(1, 2))(
        frames, out_height, out_width))
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-5)
    if out_height >= height and out_width >= width:
        # Upsampling: antialias changes nothing but the float32 rounding of the source coordinates.
        plain = from_torch(torch.nn.functional.interpolate(
            to_torch(frames), size=(out_height, out_width), mode="bilinear", antialias=False, align_corners=False))
        np.testing.assert_allclose(out, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("in_size, out_size", [(150, 304), (53, 304), (333, 97), (40, 13)])
def test_antialias_weights_are_pytorchs(in_size, out_size):
    # Resizing the width of an identity image gives each output column's weights over the input columns.
    identity = np.eye(in_size, dtype=np.float32)[None, :, :, None]
    weights = np.asarray(frame_augment.resize_bilinear_antialias(identity, in_size, out_size))[0, :, :, 0]
    expected = torch.nn.functional.interpolate(to_torch(identity), size=(in_size, out_size), mode="bilinear",
                                               antialias=True, align_corners=False)[0, 0]
    np.testing.assert_array_equal(weights, expected.numpy())


def test_augment_chains_crop_flip_rotation():
    frames = positive_frames((4, 12, 12, 10))
    key = jax.random.key(4)
    out = jax.jit(frame_augment.augment, static_argnames=("padding", "max_degrees", "hflip"))(
        key, frames, padding=3, max_degrees=15.0, hflip=True)
    crop_key, flip_key, rotation_key = jax.random.split(key, 3)
    expected = frame_augment.random_rotation(
        rotation_key, frame_augment.random_hflip(flip_key, frame_augment.random_shift_crop(crop_key, frames, 3)), 15.0)
    assert out.shape == frames.shape
    np.testing.assert_array_equal(out, expected)
    identity = frame_augment.augment(key, frames, padding=0, max_degrees=0, hflip=False)
    np.testing.assert_array_equal(identity, frames)


def test_bad_arguments_are_rejected():
    frames = positive_frames((1, 4, 4, 2))
    key = jax.random.key(0)
    with pytest.raises(FrameAugmentError, match=r"batch \(N, H, W, C\)"):
        frame_augment.random_hflip(key, frames[0])
    with pytest.raises(FrameAugmentError, match="padding must be an integer >= 0"):
        frame_augment.random_shift_crop(key, frames, -1)
    with pytest.raises(FrameAugmentError, match="larger than the padded frames"):
        frame_augment.random_shift_crop(key, frames, 1, size=7)
    with pytest.raises(FrameAugmentError, match="max_degrees must be a number >= 0"):
        frame_augment.random_rotation(key, frames, -5)
    with pytest.raises(FrameAugmentError, match="one angle per sample"):
        frame_augment.rotate(frames, [10.0, 20.0])
    with pytest.raises(FrameAugmentError, match="height must be an integer >= 1"):
        frame_augment.resize_bilinear_antialias(frames, 0, 4)
