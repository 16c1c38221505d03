"""Batched NHWC augmentation and resizing of event frames as AnonyNoise's torchvision v1 tensor transforms do it.

Every sample draws its own random parameters, shared by all of its channels (time bins and polarities).
Resizes reproduce PyTorch's `F.interpolate` (nearest; bilinear with antialias, align_corners=False).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from anon_jax.events.voxel import nearest_source_indices


class FrameAugmentError(ValueError):
    """Bad arguments for a frame augmentation or resize."""


def _batch(frames, where: str) -> jnp.ndarray:
    frames = jnp.asarray(frames)
    if frames.ndim != 4:
        raise FrameAugmentError(
            f"{where}: frames must be a batch (N, H, W, C), got shape {frames.shape}; add a leading batch axis.")
    return frames


def _size(value, name: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise FrameAugmentError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def random_shift_crop(key, frames, padding: int, size: int | None = None) -> jnp.ndarray:
    """torchvision `RandomCrop(size, padding=padding)`: zero-pad every side, then crop at a random offset.

    `size` (square side) defaults to the input size, which makes the crop a random integer shift of up to
    +-padding pixels per axis with zeros coming in.
    """
    frames = _batch(frames, "random_shift_crop")
    padding = _size(padding, "padding", "random_shift_crop", minimum=0)
    count, height, width, channels = frames.shape
    out_height, out_width = (height, width) if size is None else (_size(size, "size", "random_shift_crop"),) * 2
    spare = np.array([height + 2 * padding - out_height, width + 2 * padding - out_width])
    if np.any(spare < 0):
        raise FrameAugmentError(
            f"random_shift_crop: crop {out_height}x{out_width} is larger than the padded frames "
            f"{height + 2 * padding}x{width + 2 * padding}; lower size or raise padding.")
    if not np.any(spare):
        return frames
    padded = jnp.pad(frames, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    # Offsets of the crop's top-left corner in the padded frames, uniform over all valid positions.
    corners = jax.random.randint(key, (count, 2), 0, jnp.asarray(spare + 1))

    def crop(image, corner):
        return jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), (out_height, out_width, channels))

    return jax.vmap(crop)(padded, corners)


def random_hflip(key, frames) -> jnp.ndarray:
    """torchvision `RandomHorizontalFlip(0.5)`: each sample is mirrored left-right with probability 1/2."""
    frames = _batch(frames, "random_hflip")
    flip = jax.random.bernoulli(key, 0.5, (frames.shape[0],))
    return jnp.where(flip[:, None, None, None], frames[:, :, ::-1], frames)


def _rotate_nearest(image: jnp.ndarray, degrees: jnp.ndarray) -> jnp.ndarray:
    """One (H, W, C) image rotated counter-clockwise by `degrees` about its centre, nearest, zeros outside.

    Follows torchvision's tensor `rotate`: output pixel centres relative to the image centre go through the
    inverse rotation [[cos, -sin], [sin, cos]], are normalised by half the size as its affine grid does, and
    `grid_sample(mode="nearest", align_corners=False)` unnormalises them and rounds half to even.
    """
    height, width = image.shape[:2]
    radians = jnp.deg2rad(degrees)
    cos, sin = jnp.cos(radians), jnp.sin(radians)
    # torchvision's base grid: linspace(-size/2 + 0.5, size/2 - 0.5), i.e. index - (size - 1)/2, exact.
    x = jnp.arange(width, dtype=jnp.float32) - jnp.float32((width - 1) / 2)
    y = jnp.arange(height, dtype=jnp.float32)[:, None] - jnp.float32((height - 1) / 2)
    half_width, half_height = jnp.float32(width / 2), jnp.float32(height / 2)
    grid_x = x * (cos / half_width) + y * (-sin / half_width)
    grid_y = x * (sin / half_height) + y * (cos / half_height)
    # PyTorch's vectorised CPU grid_sample unnormalises as (g + 1) * size/2 - 0.5.
    source_x = jnp.round((grid_x + 1) * half_width - jnp.float32(0.5)).astype(jnp.int32)
    source_y = jnp.round((grid_y + 1) * half_height - jnp.float32(0.5)).astype(jnp.int32)
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    rotated = image[jnp.clip(source_y, 0, height - 1), jnp.clip(source_x, 0, width - 1)]
    return jnp.where(inside[..., None], rotated, jnp.zeros((), image.dtype))


def rotate(frames, degrees) -> jnp.ndarray:
    """torchvision `rotate(img, angle)` (NEAREST, fill 0, no expand) of each sample by its own angle.

    `degrees` has shape (N,); positive turns counter-clockwise, so 90 equals np.rot90 on square frames.
    """
    frames = _batch(frames, "rotate")
    degrees = jnp.asarray(degrees, jnp.float32)
    if degrees.shape != frames.shape[:1]:
        raise FrameAugmentError(
            f"rotate: degrees must hold one angle per sample, shape ({frames.shape[0]},), got {degrees.shape}.")
    return jax.vmap(_rotate_nearest)(frames, degrees)


def random_rotation(key, frames, max_degrees: float) -> jnp.ndarray:
    """torchvision `RandomRotation(max_degrees)` (NEAREST, fill 0, no expand): an angle uniform in
    [-max_degrees, max_degrees] per sample, positive = counter-clockwise, about the image centre."""
    frames = _batch(frames, "random_rotation")
    if isinstance(max_degrees, bool) or not isinstance(max_degrees, (int, float, np.number)) or max_degrees < 0:
        raise FrameAugmentError(f"random_rotation: max_degrees must be a number >= 0, got {max_degrees!r}.")
    if max_degrees == 0:
        return frames
    angles = jax.random.uniform(key, (frames.shape[0],), jnp.float32, -float(max_degrees), float(max_degrees))
    return rotate(frames, angles)


def resize_nearest(frames, height: int, width: int) -> jnp.ndarray:
    """PyTorch `F.interpolate(mode="nearest")` of (N, H, W, C) frames: source = floor(dst * in/out) in float32."""
    frames = _batch(frames, "resize_nearest")
    rows = nearest_source_indices(frames.shape[1], _size(height, "height", "resize_nearest"))
    cols = nearest_source_indices(frames.shape[2], _size(width, "width", "resize_nearest"))
    return jnp.take(jnp.take(frames, rows, axis=1), cols, axis=2)


@functools.lru_cache(maxsize=None)
def _antialias_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float32 weights of PyTorch's antialiased bilinear resampling along one axis.

    Per output i: scale = in/out, support = max(scale, 1), centre = scale * (i + 0.5); taps
    j in [int(centre - support + 0.5), int(centre + support + 0.5)) clipped to the input carry the triangle
    filter max(0, 1 - |(j - centre + 0.5) / max(scale, 1)|), normalised to sum 1; float32 steps as in PyTorch's
    CPU kernel, whose weights this reproduces bit for bit (tests).
    Upsampling (scale < 1) reduces to ordinary bilinear interpolation with edge clamping.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    support = scale if scale >= 1 else np.float32(1)
    inverse_scale = np.float32(1) / scale if scale >= 1 else np.float32(1)
    max_taps = int(np.ceil(support)) * 2 + 1
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        centre = np.float32(float(scale) * (i + 0.5))
        first = max(int(float(centre - support) + 0.5), 0)
        taps = min(max(min(int(float(centre + support) + 0.5), in_size) - first, 0), max_taps)
        offsets = (np.arange(first, first + taps).astype(np.float32) - centre + np.float32(0.5)) * inverse_scale
        taps_weights = np.maximum(np.float32(1) - np.abs(offsets), np.float32(0))
        total = np.float32(0)
        for value in taps_weights:
            total = np.float32(total + value)
        if total != 0:
            taps_weights = (taps_weights / total).astype(np.float32)
        weights[i, first:first + taps] = taps_weights
    return weights


def resize_bilinear_antialias(frames, height: int, width: int) -> jnp.ndarray:
    """PyTorch `F.interpolate(mode="bilinear", antialias=True, align_corners=False)` of (N, H, W, C) frames.

    This is torchvision `Resize` on tensors. Separable: width first, then height, each skipped when its size
    stays (as PyTorch does); full float32 matmul precision so accelerators do not round to bf16/TF32.
    """
    frames = _batch(frames, "resize_bilinear_antialias")
    height = _size(height, "height", "resize_bilinear_antialias")
    width = _size(width, "width", "resize_bilinear_antialias")
    dtype = frames.dtype if jnp.issubdtype(frames.dtype, jnp.floating) else jnp.float32
    frames = frames.astype(dtype)
    if frames.shape[2] != width:
        columns = jnp.asarray(_antialias_weights(frames.shape[2], width), dtype)
        frames = jnp.einsum("ow,nhwc->nhoc", columns, frames, precision=jax.lax.Precision.HIGHEST)
    if frames.shape[1] != height:
        rows = jnp.asarray(_antialias_weights(frames.shape[1], height), dtype)
        frames = jnp.einsum("oh,nhwc->nowc", rows, frames, precision=jax.lax.Precision.HIGHEST)
    return frames


def augment(key, frames, *, padding: int, max_degrees: float, hflip: bool, size: int | None = None) -> jnp.ndarray:
    """AnonyNoise's train chain: RandomCrop(size, padding) -> [RandomHorizontalFlip] -> RandomRotation.

    DVS-Gesture: padding 10, max_degrees 15, no flip (left/right-hand classes); SEE: crop 180 with padding 15,
    flip, 15; EventReIDv2: padding 25, flip, 15. `size` defaults to the input size (a pure shift).
    """
    crop_key, flip_key, rotation_key = jax.random.split(key, 3)
    frames = random_shift_crop(crop_key, frames, padding, size=size)
    if hflip:
        frames = random_hflip(flip_key, frames)
    return random_rotation(rotation_key, frames, max_degrees)
