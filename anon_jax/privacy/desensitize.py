"""privacy-reid's classical desensitisation, batched in JAX: mosaic, Gaussian blur and Gaussian noise.

All three work on uint8 NHWC pixel batches in [0, 255] that are already resized (privacy-reid desensitises the
256x128 Market crops after the bilinear resize) and return uint8 batches of the same shape. Every size, radius and
sigma is a Python value fixed at trace time, so the functions run inside `jax.jit` with the config closed over:

    fn = jax.jit(lambda imgs, key: desensitize(imgs, cfg, key))

- mosaic: privacy-reid's `do_mosaic`, a grid anchored at (0, 0) whose blocks take their top-left pixel.
- blur, kind "pillow": bit-exact `PIL.Image.filter(ImageFilter.GaussianBlur(radius))` (Pillow's three extended box
  blurs in fixed point, see `pillow_box_radius` and `_pillow_box_pass`); kind "gaussian": a sampled Gaussian.
- noise: privacy-reid's `Gaussian_noise`, uint8(clip(x/255 + N(0, sigma^2), 0, 1) * 255) with truncation.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

KINDS = ("mosaic", "blur", "noise")
BLUR_KINDS = ("pillow", "gaussian")
# Pillow's ImagingGaussianBlur default number of box passes per axis.
PILLOW_PASSES = 3
# The sampled Gaussian ("gaussian" blur kind) is cut at this many standard deviations, as scipy.ndimage does.
GAUSSIAN_TRUNCATE = 4.0


class DesensitizeError(ValueError):
    """Bad desensitisation input: an unknown kind, a bad size/radius/sigma, a missing key, or non-uint8 images."""


def desensitize_config(kind: str = "mosaic") -> ml_collections.ConfigDict:
    """privacy-reid's desensitisation settings (the paper's defaults) with `kind` selecting the method."""
    _choice(kind, KINDS, "kind")
    config = ml_collections.ConfigDict()
    config.kind = kind  # "mosaic" | "blur" | "noise": which desensitisation `desensitize` applies.
    config.mosaic_size = 24  # Mosaic block edge in pixels (privacy-reid radius 24 on 256x128 crops).
    config.blur_radius = 12.0  # Gaussian standard deviation in pixels (Pillow's GaussianBlur radius).
    config.blur_kind = "pillow"  # "pillow": Pillow's exact box-blur approximation; "gaussian": sampled kernel.
    config.noise_sigma = 0.5  # Noise standard deviation on the [0, 1] pixel scale.
    return config


def desensitize(images, config, key=None) -> jnp.ndarray:
    """Apply the desensitisation `config.kind` to a uint8 (N, H, W, C) batch; `key` is needed for "noise" only.

    Config values are read at trace time (keep them static under jit). Errors name the offending config field.
    """
    kind = _choice(_field(config, "kind"), KINDS, "config.kind")
    if kind == "mosaic":
        return mosaic(images, _positive_int(_field(config, "mosaic_size"), "config.mosaic_size"))
    if kind == "blur":
        radius = _non_negative(_field(config, "blur_radius"), "config.blur_radius")
        blur_kind = _choice(_field(config, "blur_kind"), BLUR_KINDS, "config.blur_kind")
        return gaussian_blur(images, radius, kind=blur_kind)
    sigma = _non_negative(_field(config, "noise_sigma"), "config.noise_sigma")
    if key is None:
        raise DesensitizeError(
            'config.kind="noise" draws random noise: pass key=jax.random.key(seed) (or a PRNGKey) to desensitize.')
    return gaussian_noise(images, sigma, key)


def mosaic(images, size: int) -> jnp.ndarray:
    """Pixelate with `size` x `size` blocks on a grid anchored at (0, 0), each block filled with its top-left pixel.

    Edge blocks are truncated to the image (privacy-reid's min(size, W - j) etc.); exact integer output.
    """
    images = _check_images(images)
    size = _positive_int(size, "size")
    height, width = images.shape[1:3]
    # Each output row/column reads the first row/column of its block: a static gather, no arithmetic.
    rows = (np.arange(height) // size) * size
    cols = (np.arange(width) // size) * size
    return images[:, rows][:, :, cols]


def gaussian_blur(images, radius: float, kind: str = "pillow") -> jnp.ndarray:
    """Gaussian blur with standard deviation `radius` pixels and edge extension.

    kind "pillow" is bit-exact with `PIL.Image.filter(ImageFilter.GaussianBlur(radius))`: three extended box blurs
    per axis, horizontal first, in Pillow's fixed-point arithmetic. kind "gaussian" convolves with a sampled Gaussian
    cut at 4 sigma (normalised to sum 1, borders extended, like scipy.ndimage mode="nearest") in float32 and rounds
    to the nearest integer. radius 0 returns the images unchanged.
    """
    images = _check_images(images)
    radius = _non_negative(radius, "radius")
    kind = _choice(kind, BLUR_KINDS, "kind")
    if radius == 0:
        return images
    if kind == "gaussian":
        return _sampled_gaussian_blur(images, radius)
    box_radius = pillow_box_radius(radius)
    if box_radius == 0:
        # Pillow skips an axis whose box radius is 0 (ImagingBoxBlur's `xradius != 0` test).
        return images
    out = images
    for axis in (2, 1):  # Pillow blurs rows (x) first, then the transposed image (y).
        for _ in range(PILLOW_PASSES):
            out = _pillow_box_pass(out, box_radius, axis)
    return out


def pillow_box_radius(radius: float, passes: int = PILLOW_PASSES) -> np.float32:
    """Pillow's extended box radius for Gaussian standard deviation `radius` (Gwosdek et al.).

    Mirrors `_gaussian_blur_radius` in Pillow's BoxBlur.c, including its float/double mix: the radius arrives as a
    C float, the box length L is computed in double and stored as float, everything else is float arithmetic.
    """
    f32 = np.float32
    r = f32(radius)
    sigma2 = r * r / f32(passes)
    box_length = f32(math.sqrt(12.0 * float(sigma2) + 1.0))
    whole = f32(math.floor((float(box_length) - 1.0) / 2.0))
    frac = (f32(2) * whole + f32(1)) * (whole * (whole + f32(1)) - f32(3) * sigma2)
    frac = frac / (f32(6) * (sigma2 - (whole + f32(1)) * (whole + f32(1))))
    return f32(whole + frac)


def _pillow_weights(box_radius: np.float32) -> tuple[int, int, int]:
    """(integer radius, inner weight ww, far weight fw) of ImagingHorizontalBoxBlur, in its UINT32 arithmetic."""
    whole = int(box_radius)  # C (int) cast of a non-negative float: truncation.
    ww = int(np.float32(1 << 24) / (box_radius * np.float32(2) + np.float32(1)))  # float division, then truncated
    # Unsigned 32-bit wrap-around as in C (it never triggers for sane radii, but keeps the arithmetic identical).
    fw = (((1 << 24) - ((2 * whole + 1) * ww) % (1 << 32)) % (1 << 32)) // 2
    return whole, ww, fw


def _pillow_box_pass(images: jnp.ndarray, box_radius: np.float32, axis: int) -> jnp.ndarray:
    """One ImagingLineBoxBlur pass along `axis` (2: rows, 1: columns) of a uint8 batch.

    out[x] = (ww * sum_{|k|<=r} in[x+k] + fw * (in[x-r-1] + in[x+r+1]) + 2^23) >> 24 with indices clamped to the
    line: the running-sum loop of BoxBlur.c written as a windowed sum. All in uint32, whose modular arithmetic
    matches C's UINT32 exactly (the sums themselves are far below 2^32).
    """
    whole, ww, fw = _pillow_weights(box_radius)
    length = images.shape[axis]
    # Edge-extended line: position j holds in[clamp(j - r - 1)], for j = 0 .. length + 2r + 1.
    index = np.clip(np.arange(-(whole + 1), length + whole + 1), 0, length - 1)
    padded = jnp.take(images, index, axis=axis).astype(jnp.uint32)
    # Window x - r .. x + r is padded[x + 1 .. x + 2r + 1]; a windowed reduction beats a cumulative sum on CPU.
    span = 2 * whole + 1
    window = [1] * images.ndim
    window[axis] = span
    inner = jax.lax.reduce_window(jax.lax.slice_in_dim(padded, 1, span + length, axis=axis), np.uint32(0),
                                  jax.lax.add, tuple(window), (1,) * images.ndim, "VALID")
    # The two far pixels x - r - 1 and x + r + 1 are padded[x] and padded[x + 2r + 2].
    far = (jax.lax.slice_in_dim(padded, 0, length, axis=axis)
           + jax.lax.slice_in_dim(padded, span + 1, span + 1 + length, axis=axis))
    bulk = inner * np.uint32(ww) + far * np.uint32(fw) + np.uint32(1 << 23)
    return ((bulk >> 24) & np.uint32(0xFF)).astype(jnp.uint8)


def _edge_gaussian_matrix(length: int, sigma: float) -> np.ndarray:
    """(length, length) matrix applying a sampled, normalised Gaussian with clamped (edge-extended) indices."""
    half = int(GAUSSIAN_TRUNCATE * sigma + 0.5)
    offsets = np.arange(-half, half + 1)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    taps /= taps.sum()
    matrix = np.zeros((length, length))
    for out in range(length):
        # Taps that fall outside the line read the edge pixel, so their weights pile up on the edge column.
        np.add.at(matrix[out], np.clip(out + offsets, 0, length - 1), taps)
    return matrix.astype(np.float32)


def _sampled_gaussian_blur(images: jnp.ndarray, sigma: float) -> jnp.ndarray:
    height, width = images.shape[1:3]
    x = images.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST  # full float32 matmuls: the default may drop to bf16 passes on accelerators
    x = jnp.einsum("vw,nhwc->nhvc", _edge_gaussian_matrix(width, sigma), x, precision=hi)
    x = jnp.einsum("uh,nhwc->nuwc", _edge_gaussian_matrix(height, sigma), x, precision=hi)
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def gaussian_noise(images, sigma: float, key) -> jnp.ndarray:
    """privacy-reid's Gaussian noise: uint8(clip(images/255 + N(0, sigma^2), 0, 1) * 255), truncated (floored).

    The noise is i.i.d. per pixel and channel. Image i's noise is drawn from `jax.random.fold_in(key, i)`, so it
    depends only on the key and the image's position in the batch, never on the other images (or the batch size).
    """
    images = _check_images(images)
    sigma = _non_negative(sigma, "sigma")
    key = _check_key(key)
    pixel_shape = images.shape[1:]

    def draw(index):
        return jax.random.normal(jax.random.fold_in(key, index), pixel_shape, jnp.float32)

    noise = jax.vmap(draw)(jnp.arange(images.shape[0]))
    return noise_to_pixels(images, noise * jnp.float32(sigma))


def noise_to_pixels(images, noise) -> jnp.ndarray:
    """Add `noise` (on the [0, 1] pixel scale, broadcastable to images) and quantise as privacy-reid does.

    y = clip(images/255 + noise, 0, 1); out = floor(y * 255) as uint8 (np.uint8 truncation, not rounding).
    """
    images = _check_images(images)
    y = jnp.clip(images.astype(jnp.float32) / 255.0 + jnp.asarray(noise, jnp.float32), 0.0, 1.0)
    return jnp.floor(y * 255.0).astype(jnp.uint8)


def _check_images(images) -> jnp.ndarray:
    dtype = getattr(images, "dtype", None)
    if dtype is None or jnp.dtype(dtype) != jnp.uint8:
        raise DesensitizeError(
            f"images: expected 8-bit pixels (uint8 in [0, 255]), got dtype {dtype}; pass uint8 pixels, e.g. "
            "np.asarray(pil_image) or jnp.round(x * 255).astype(jnp.uint8) for images in [0, 1].")
    if images.ndim != 4 or images.shape[1] < 1 or images.shape[2] < 1:
        raise DesensitizeError(
            f"images: expected a non-empty (N, H, W, C) batch of uint8 pixels, got shape {images.shape}; add a "
            "batch axis with x[None] or a channel axis with x[..., None].")
    return jnp.asarray(images)


def _check_key(key):
    if key is None:
        raise DesensitizeError("key: Gaussian noise needs a PRNG key; pass key=jax.random.key(seed).")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 0) and not (
            key.dtype == jnp.uint32 and key.ndim == 1):
        raise DesensitizeError(
            f"key: expected one PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), got dtype {key.dtype} "
            f"shape {key.shape}; split batches of keys before calling.")
    return key


def _field(config, name: str):
    try:
        return getattr(config, name)
    except (AttributeError, KeyError):
        raise DesensitizeError(
            f"config.{name} is missing; build the config with desensitize_config() and edit its fields.") from None


def _choice(value, options: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in options:
        raise DesensitizeError(f"{name}: unknown value {value!r}; use one of {', '.join(map(repr, options))}.")
    return value


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise DesensitizeError(f"{name}: expected a positive integer number of pixels, got {value!r}.")
    return int(value)


def _non_negative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise DesensitizeError(f"{name}: expected a finite number >= 0, got {value!r}.")
    return float(value)
