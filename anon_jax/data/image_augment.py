"""Batched JAX augmentation of pedestrian images as privacy-reid's paired transforms do it: flip, zero pad and
random crop on pixels, normalisation, then random erasing, every random choice shared by a sample's raw and
desensitised images. Images are NHWC; pixels in [0, 255]; normalised space is (x / 255 - mean) / std.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from anon_jax.data.frame_augment import random_hflip, random_shift_crop

# privacy-reid's AGW_baseline.yml: ImageNet means, but std 0.5 per channel (AGW itself uses ImageNet's std).
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.5, 0.5, 0.5)


class ImageAugmentError(ValueError):
    """Bad arguments for an image augmentation or normalisation."""


def _images(images, where: str, channels: int | None = None) -> jnp.ndarray:
    images = jnp.asarray(images)
    if images.ndim != 4 or (channels is not None and images.shape[-1] != channels):
        expected = f"(N, H, W, {channels})" if channels is not None else "(N, H, W, C)"
        raise ImageAugmentError(f"{where}: images must be a batch {expected} (NHWC), got shape {images.shape}.")
    return images


def normalize(pixels, mean: Sequence[float] = PIXEL_MEAN, std: Sequence[float] = PIXEL_STD) -> jnp.ndarray:
    """(pixels / 255 - mean) / std per channel, float32; `pixels` NHWC in [0, 255] (uint8 or float)."""
    pixels = _images(pixels, "normalize", len(mean))
    return (pixels.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def denormalize(normalized, mean: Sequence[float] = PIXEL_MEAN, std: Sequence[float] = PIXEL_STD) -> jnp.ndarray:
    """The inverse of `normalize`: pixels in [0, 255] as float32 (not clipped, not rounded)."""
    normalized = _images(normalized, "denormalize", len(mean))
    return (normalized.astype(jnp.float32) * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)) * 255.0


def random_erasing(key, images, *, prob: float = 0.5, area_range: tuple[float, float] = (0.02, 0.4),
                   min_aspect: float = 0.3, max_attempts: int = 100,
                   fill: Sequence[float] = PIXEL_MEAN) -> jnp.ndarray:
    """AGW's RandomErasing on a batch of normalised images, each sample on its own with probability `prob`.

    Up to `max_attempts` tries draw an area fraction ~ U(area_range) and an aspect r ~ U(min_aspect, 1/min_aspect),
    h = round(sqrt(A r)), w = round(sqrt(A / r)); the first try with h < H and w < W is erased at a uniform
    top-left corner (rows 0..H-h, columns 0..W-w), channel c filled with fill[c] (AGW: the pixel *means*, written
    into normalised space). A sample whose tries all fail is left unchanged.
    """
    images = _images(images, "random_erasing", len(fill))
    if not 0.0 <= prob <= 1.0 or not 0.0 < area_range[0] <= area_range[1] or not 0.0 < min_aspect <= 1.0 \
            or max_attempts < 1:
        raise ImageAugmentError(
            f"random_erasing: need prob in [0, 1], 0 < area_range[0] <= area_range[1], min_aspect in (0, 1] and "
            f"max_attempts >= 1; got {prob}, {area_range}, {min_aspect}, {max_attempts}.")
    count, height, width, _ = images.shape
    erase_key, area_key, aspect_key, corner_key = jax.random.split(key, 4)
    erase = jax.random.uniform(erase_key, (count,)) < prob
    area = jax.random.uniform(area_key, (count, max_attempts), minval=area_range[0],
                              maxval=area_range[1]) * (height * width)
    aspect = jax.random.uniform(aspect_key, (count, max_attempts), minval=min_aspect, maxval=1.0 / min_aspect)
    heights = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    widths = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (heights < height) & (widths < width)
    first = jnp.argmax(fits, axis=1)
    rows = jnp.arange(count)
    erase = erase & fits[rows, first]
    box_height, box_width = heights[rows, first], widths[rows, first]
    # A uniform integer in [0, size - box] per axis: floor(u * (size - box + 1)) with u in [0, 1).
    corner = jax.random.uniform(corner_key, (count, 2))
    top = jnp.minimum(jnp.floor(corner[:, 0] * (height - box_height + 1)).astype(jnp.int32), height - box_height)
    left = jnp.minimum(jnp.floor(corner[:, 1] * (width - box_width + 1)).astype(jnp.int32), width - box_width)
    row_inside = (jnp.arange(height)[None] >= top[:, None]) & (jnp.arange(height)[None] < (top + box_height)[:, None])
    column_inside = ((jnp.arange(width)[None] >= left[:, None])
                     & (jnp.arange(width)[None] < (left + box_width)[:, None]))
    box = erase[:, None, None] & row_inside[:, :, None] & column_inside[:, None, :]
    return jnp.where(box[..., None], jnp.asarray(fill, images.dtype), images)


def augment_pair(key, raw, desensitized, *, pad: int = 10, erase_prob: float = 0.5,
                 mean: Sequence[float] = PIXEL_MEAN, std: Sequence[float] = PIXEL_STD):
    """privacy-reid's training transform of a (raw, desensitised) batch pair, pixels NHWC in [0, 255].

    Horizontal flip (p = 0.5), zero padding by `pad` and a random crop back to H x W, normalisation, random erasing
    (p = `erase_prob`, filled with `mean`): every random choice of a sample is shared by its two images. Returns the
    normalised (raw, desensitised) pair, float32. Jit-able with static keyword arguments.
    """
    raw = _images(raw, "augment_pair (raw)", len(mean))
    desensitized = _images(desensitized, "augment_pair (desensitized)", len(mean))
    if raw.shape != desensitized.shape:
        raise ImageAugmentError(f"augment_pair: raw {raw.shape} and desensitized {desensitized.shape} images must "
                                "have the same shape.")
    channels = raw.shape[-1]
    flip_key, crop_key, erase_key = jax.random.split(key, 3)
    # Stacked on channels, the two images of a sample go through one draw of every random parameter.
    pair = jnp.concatenate([raw.astype(jnp.float32), desensitized.astype(jnp.float32)], axis=-1)
    pair = random_shift_crop(crop_key, random_hflip(flip_key, pair), pad)
    pair = jnp.concatenate([normalize(pair[..., :channels], mean, std), normalize(pair[..., channels:], mean, std)],
                           axis=-1)
    pair = random_erasing(erase_key, pair, prob=erase_prob, fill=tuple(np.tile(mean, 2)))
    return pair[..., :channels], pair[..., channels:]
