"""Image-quality metrics on NHWC batches, one value per image: SSIM, PSNR and MSE.

`ssim` reproduces torchmetrics 0.11.0 `structural_similarity_index_measure` (the flavour the event-anonymization
objective was trained with), including its batch-wide data range and the gradient through it; with
padding="zeros" it is the zero-padded 'same' SSIM of privacy-reid's privacy metrics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SSIM_SIGMA = 1.5
# torchmetrics derives the window from sigma: int(3.5 * sigma + 0.5) * 2 + 1 = 11.
SSIM_WINDOW = int(3.5 * SSIM_SIGMA + 0.5) * 2 + 1
SSIM_K1, SSIM_K2 = 0.01, 0.03


class ImageShapeError(ValueError):
    """Images that cannot be compared: wrong rank, mismatched shapes, or smaller than the SSIM window."""


def ssim_gaussian_1d() -> np.ndarray:
    """The normalised 1-D Gaussian (11 taps, sigma 1.5) whose outer product is torchmetrics' SSIM window."""
    offsets = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    weights = np.exp(-((offsets / SSIM_SIGMA) ** 2) / 2)
    return weights / weights.sum()


def _check_pair(a, b, name: str, min_size: int = 1) -> tuple[jnp.ndarray, jnp.ndarray]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 4 or a.shape != b.shape:
        raise ImageShapeError(
            f"{name}: expected two NHWC batches of equal shape (batch, height, width, channels), got {a.shape} and "
            f"{b.shape}; add a batch axis with x[None] or a channel axis with x[..., None].")
    if a.shape[1] < min_size or a.shape[2] < min_size:
        raise ImageShapeError(
            f"{name}: images of {a.shape[1]}x{a.shape[2]} pixels are smaller than the {min_size}x{min_size} window; "
            f"use images of at least {min_size}x{min_size}.")
    dtype = jnp.result_type(a.dtype, b.dtype, jnp.float32)
    return a.astype(dtype), b.astype(dtype)


def _gaussian_band(size: int, padding: str = "valid") -> np.ndarray:
    """1-D Gaussian filter as a matrix: "valid" gives (size - 10, size) with row i holding the 11 taps at columns
    i..i+10; "zeros" gives (size, size) with the taps centred on column i and cut at the borders (zero padding)."""
    taps = ssim_gaussian_1d()
    half = SSIM_WINDOW // 2
    if padding == "zeros":
        padded = np.zeros((size, size + 2 * half))
        for row in range(size):
            padded[row, row:row + SSIM_WINDOW] = taps
        return padded[:, half:half + size]
    band = np.zeros((size - SSIM_WINDOW + 1, size))
    for row in range(size - SSIM_WINDOW + 1):
        band[row, row:row + SSIM_WINDOW] = taps
    return band


def _gaussian_blur(x: jnp.ndarray, padding: str) -> jnp.ndarray:
    """Per-channel 11x11 Gaussian filter of NHWC `x` (valid area or zero-padded 'same'), as two separable passes.

    Each pass is a product with a banded matrix: more multiplications than a depthwise convolution, but XLA runs
    matrix products near peak on every backend while its CPU depthwise convolution (and its gradient) is ~30x
    slower here (benchmarks/training_step.py, "2 x SSIM"). The zeros off the band add exact zeros.
    """
    rows = jnp.asarray(_gaussian_band(x.shape[1], padding), x.dtype)
    columns = jnp.asarray(_gaussian_band(x.shape[2], padding), x.dtype)
    # HIGHEST: E[x^2] - mu^2 cancels catastrophically under the TF32/bf16 passes accelerators use by default.
    x = jnp.einsum("ih,nhwc->niwc", rows, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("jw,niwc->nijc", columns, x, precision=jax.lax.Precision.HIGHEST)


SSIM_PADDINGS = ("valid", "zeros")


def ssim(a, b, *, data_range=None, padding: str = "valid") -> jnp.ndarray:
    """Per-image SSIM (batch,) of NHWC batches, as torchmetrics 0.11.0 with default arguments.

    Gaussian window 11x11 with sigma 1.5 applied to each channel separately; torchmetrics reflect-pads by 5 and
    then crops 5 from every side of the SSIM map, which leaves exactly the windows inside the image, so the map
    covers (H - 10) x (W - 10) positions. Variances are E[x^2] - mu^2 without clamping. C1 = (0.01 R)^2 and
    C2 = (0.03 R)^2 where R = `data_range`, or when None max(range(a), range(b)) over the whole batch (a traced
    value: gradients flow through it, to `a` on ties as in torch's `max`). The map is averaged over H, W and C.
    Jit-able and differentiable; the batch mean of the result is the torchmetrics default reduction.

    padding="zeros": the filter runs over the image zero-padded by 5 ('same' convolution), so the map covers every
    pixel, border windows included (privacy-reid's image_metric SSIM, used there with data_range=1).
    """
    if padding not in SSIM_PADDINGS:
        raise ValueError(f"ssim padding={padding!r}: use one of {SSIM_PADDINGS}.")
    a, b = _check_pair(a, b, "ssim", SSIM_WINDOW if padding == "valid" else 1)
    if data_range is None:
        range_a = jnp.max(a) - jnp.min(a)
        range_b = jnp.max(b) - jnp.min(b)
        data_range = jnp.where(range_b > range_a, range_b, range_a)
    data_range = jnp.asarray(data_range, a.dtype)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    moments = _gaussian_blur(jnp.concatenate([a, b, a * a, b * b, a * b], axis=0), padding)
    mu_a, mu_b, mean_aa, mean_bb, mean_ab = jnp.split(moments, 5, axis=0)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a, var_b, cov_ab = mean_aa - mu_aa, mean_bb - mu_bb, mean_ab - mu_ab
    ssim_map = ((2 * mu_ab + c1) * (2 * cov_ab + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
    return jnp.mean(ssim_map, axis=(1, 2, 3))


def mse(a, b) -> jnp.ndarray:
    """Per-image mean squared error (batch,) of NHWC batches."""
    a, b = _check_pair(a, b, "mse")
    return jnp.mean((a - b) ** 2, axis=(1, 2, 3))


def psnr(a, b, *, data_range=1.0) -> jnp.ndarray:
    """Per-image peak signal-to-noise ratio in dB (batch,): 10 log10(data_range^2 / MSE); +inf for equal images."""
    errors = mse(a, b)
    return 10 * jnp.log10(jnp.asarray(data_range, errors.dtype) ** 2 / errors)


def mean_quality(predictions, targets, *, batch_size: int = 256) -> dict[str, float]:
    """Means over images of MSE, SSIM and PSNR (data range 1) of NHWC frames in [0, 1], computed in batches.

    Identical images have an infinite PSNR, so the mean PSNR is infinite when any image is reproduced exactly.
    """
    totals = {"MSE": [], "SSIM": [], "PSNR": []}
    for start in range(0, len(predictions), batch_size):
        a = jnp.asarray(predictions[start:start + batch_size], jnp.float32)
        b = jnp.asarray(targets[start:start + batch_size], jnp.float32)
        for name, values in zip(totals, _quality_per_image(a, b)):
            totals[name].append(np.asarray(values))
    return {name: float(np.mean(np.concatenate(values))) for name, values in totals.items()}


@jax.jit
def _quality_per_image(a, b):
    return mse(a, b), ssim(a, b, data_range=1.0), psnr(a, b, data_range=1.0)


PIQ_PSNR_EPS = 1e-8  # piq.psnr: -10 log10(mse + 1e-8)
QUALITY_NORMALIZATIONS = ("clip", "batch_minmax")


def batch_minmax(images) -> jnp.ndarray:
    """(x - min) / (max - min) with the min and max over the whole batch (PixelFade's recovery evaluation); a
    constant batch maps to zeros."""
    images = jnp.asarray(images, jnp.float32)
    low, high = jnp.min(images), jnp.max(images)
    span = high - low
    return jnp.where(span > 0, (images - low) / jnp.where(span > 0, span, 1.0), 0.0)


@jax.jit
def _piq_batch(a, b):
    errors = mse(a, b)
    return -10 * jnp.log10(errors + PIQ_PSNR_EPS), ssim(a, b, data_range=1.0), errors


def recovery_quality(predictions, targets, *, normalization: str = "clip", batch_size: int = 20) -> dict[str, float]:
    """PixelFade's recovery-attack metrics of NHWC images against their originals: {"PSNR", "SSIM", "MSE"}.

    Per batch of `batch_size`: "batch_minmax" (the original) maps each of the two tensors to [0, 1] with its own
    batch-global min and max; "clip" takes both as [0, 1] pixels and clips the predictions to [0, 1]. Then piq's
    PSNR per image (-10 log10(MSE + 1e-8), data range 1), piq's SSIM (11x11 Gaussian, sigma 1.5, valid windows, data
    range 1, no down-sampling at Re-ID crop sizes) and the MSE, each a per-image mean; batch means are weighted by the
    batch size as the original averages them (so only "batch_minmax" depends on `batch_size`).
    """
    if normalization not in QUALITY_NORMALIZATIONS:
        raise ValueError(f"recovery_quality normalization={normalization!r}: use one of {QUALITY_NORMALIZATIONS}.")
    totals = {"PSNR": 0.0, "SSIM": 0.0, "MSE": 0.0}
    count = len(predictions)
    for start in range(0, count, batch_size):
        a = jnp.asarray(predictions[start:start + batch_size], jnp.float32)
        b = jnp.asarray(targets[start:start + batch_size], jnp.float32)
        if normalization == "batch_minmax":
            a, b = batch_minmax(a), batch_minmax(b)
        else:
            a = jnp.clip(a, 0.0, 1.0)
        for name, values in zip(totals, _piq_batch(a, b)):
            totals[name] += float(jnp.sum(values))
    return {name: total / count for name, total in totals.items()}
