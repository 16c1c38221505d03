"""SSIM / PSNR / MSE: hand-computed cases and parity with an independent float64 PyTorch transcription of the
torchmetrics 0.11.0 SSIM (reflect pad 5, 2-D Gaussian depthwise conv, crop 5, batch-wide data range)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from anon_jax.metrics.image import (ImageShapeError, batch_minmax, mean_quality, mse, psnr, recovery_quality, ssim,
                                    ssim_gaussian_1d)
from benchmarks.torch_models import torch_ssim as torch_ssim_reference


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def image_pairs():
    rng = np.random.default_rng(7)
    gray = rng.uniform(size=(3, 1, 23, 17))
    gray_noisy = np.clip(gray + 0.2 * rng.normal(size=gray.shape), 0, 1)
    # A 5-bin normalised-voxel-like pair: sparse, signed, range around 10.
    voxel = rng.normal(size=(2, 5, 16, 12)) * (rng.uniform(size=(2, 5, 16, 12)) < 0.3) * 2.5
    voxel_an = rng.uniform(size=voxel.shape)
    return {"gray": (gray, gray_noisy), "voxel": (voxel, voxel_an)}


def test_gaussian_window_is_torchmetrics_one():
    taps = ssim_gaussian_1d()
    assert taps.shape == (11,)
    np.testing.assert_allclose(taps.sum(), 1.0, rtol=1e-15)
    np.testing.assert_allclose(taps[5] / taps[4], np.exp(1 / (2 * 1.5**2)), rtol=1e-12)
    np.testing.assert_allclose(taps[:3], [0.00102838, 0.00759876, 0.03600077], rtol=1e-5)


def test_ssim_constant_images_by_hand():
    # Constant images: every variance and covariance is 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a = jnp.full((1, 12, 13, 1), 0.2)
    b = jnp.full((1, 12, 13, 1), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    # float32 E[x^2] - mu^2 leaves ~1e-7 of spurious variance next to C2 = 9e-4, hence the tolerance.
    np.testing.assert_allclose(ssim(a, b, data_range=1.0), [expected], rtol=3e-4)
    np.testing.assert_allclose(ssim(a, a, data_range=1.0), [1.0], rtol=1e-6)


@pytest.mark.parametrize("kind", ["gray", "voxel"])
@pytest.mark.parametrize("data_range", [None, 3.0])
def test_ssim_matches_reference_per_image(image_pairs, kind, data_range):
    a, b = image_pairs[kind]
    expected = torch_ssim_reference(torch.tensor(a), torch.tensor(b), data_range).numpy()
    got = jax.jit(lambda x, y: ssim(x, y, data_range=data_range))(nhwc(a).astype(np.float32),
                                                                nhwc(b).astype(np.float32))
    assert got.shape == (a.shape[0],)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-6)
    # Per-image values differ, so this is not a broadcast batch mean.
    assert np.ptp(expected) > 1e-3


def test_inferred_data_range_is_batch_wide(image_pairs):
    a, b = image_pairs["gray"]
    a, b = nhwc(a), nhwc(b)
    batch_range = max(np.ptp(a), np.ptp(b))
    np.testing.assert_allclose(ssim(a, b), ssim(a, b, data_range=batch_range), rtol=1e-6)
    # An image's value depends on the other images through the shared range.
    b_wide = b.copy()
    b_wide[1] *= 4
    assert abs(float(ssim(a[:1], b_wide[:1])[0]) - float(ssim(a, b_wide)[0])) > 1e-3


@pytest.mark.parametrize("data_range", [None, 2.0])
def test_ssim_gradient_matches_torch_autograd(image_pairs, data_range):
    a, b = (x[:, :3, :14, :12] for x in image_pairs["voxel"])
    weights = np.array([1.0, -0.5])  # distinct per-image weights check the per-image values' gradients too
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (torch_ssim_reference(ta, tb, data_range) * torch.tensor(weights)).sum().backward()

    def objective(x, y):
        return jnp.sum(ssim(x, y, data_range=data_range) * weights)

    grad_a, grad_b = jax.grad(objective, argnums=(0, 1))(jnp.asarray(nhwc(a), jnp.float32),
                                                         jnp.asarray(nhwc(b), jnp.float32))
    scale = np.abs(ta.grad.numpy()).max()
    np.testing.assert_allclose(np.asarray(grad_a), nhwc(ta.grad.numpy()), atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(grad_b), nhwc(tb.grad.numpy()), atol=1e-5 * scale)


def test_gradient_flows_through_inferred_data_range():
    # Two pixels set the range of `a`; with the range inferred their gradient gets the extra C1/C2 term.
    rng = np.random.default_rng(3)
    a = rng.uniform(size=(1, 12, 12, 1)).astype(np.float32)
    b = rng.uniform(size=(1, 12, 12, 1)).astype(np.float32) * 0.5
    fixed_range = float(np.ptp(a))
    inferred = jax.grad(lambda x: ssim(x, b)[0])(a)
    fixed = jax.grad(lambda x: ssim(x, b, data_range=fixed_range)[0])(a)
    differs = np.abs(np.asarray(inferred - fixed)) > 1e-7
    assert set(zip(*np.nonzero(differs[0, ..., 0]))) == {np.unravel_index(np.argmax(a), (12, 12)),
                                                         np.unravel_index(np.argmin(a), (12, 12))}


def test_mse_and_psnr_by_hand():
    a = np.zeros((2, 2, 2, 1), np.float32)
    b = a.copy()
    b[0, 0, 0, 0] = 0.5  # MSE 0.25 / 4
    b[1] = 0.1  # MSE 0.01
    np.testing.assert_allclose(mse(a, b), [0.0625, 0.01], rtol=1e-6)
    np.testing.assert_allclose(psnr(a, b), [10 * np.log10(16), 20.0], rtol=1e-5)
    np.testing.assert_allclose(psnr(a, b, data_range=255.0), 10 * np.log10(255.0**2 / np.array([0.0625, 0.01])),
                               rtol=1e-5)
    assert np.isinf(psnr(a, a)).all()


def test_bad_shapes_are_explained():
    with pytest.raises(ImageShapeError, match="NHWC"):
        ssim(np.zeros((12, 12, 1)), np.zeros((12, 12, 1)))
    with pytest.raises(ImageShapeError, match="equal shape"):
        mse(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 5, 1)))
    with pytest.raises(ImageShapeError, match="11x11"):
        ssim(np.zeros((1, 10, 40, 1)), np.zeros((1, 10, 40, 1)))


def test_mean_quality_is_the_mean_of_per_image_values_whatever_the_batching():
    rng = np.random.default_rng(5)
    a = rng.random((7, 16, 16, 1)).astype(np.float32)
    b = np.clip(a + 0.1 * rng.normal(size=a.shape), 0, 1).astype(np.float32)
    expected = {"MSE": np.mean(mse(a, b)), "SSIM": np.mean(ssim(a, b, data_range=1.0)), "PSNR": np.mean(psnr(a, b))}
    for batch_size in (1, 3, 256):
        got = mean_quality(a, b, batch_size=batch_size)
        assert list(got) == ["MSE", "SSIM", "PSNR"]
        for name, value in expected.items():
            assert got[name] == pytest.approx(float(value), rel=1e-5)
    assert mean_quality(a, a)["PSNR"] == float("inf")


def zero_padded_ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """privacy-reid's SSIM written independently: 2-D 11x11 Gaussian window applied with scipy's zero-padded
    'same' convolution to each channel, C1 = 0.01^2, C2 = 0.03^2, averaged over pixels and channels (float64)."""
    window = np.outer(ssim_gaussian_1d(), ssim_gaussian_1d())
    values = []
    for channel in range(a.shape[-1]):
        x, y = a[..., channel].astype(np.float64), b[..., channel].astype(np.float64)

        def blur(z):
            return convolve2d(z, window, mode="same", boundary="fill", fillvalue=0.0)

        mu_x, mu_y = blur(x), blur(y)
        var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        values.append(((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return float(np.mean(values))


def test_zero_padded_ssim_matches_an_independent_reference():
    rng = np.random.default_rng(5)
    a = rng.random((3, 20, 13, 3))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    ours = np.asarray(ssim(a, b, data_range=1.0, padding="zeros"))
    expected = [zero_padded_ssim_reference(a[i], b[i]) for i in range(3)]
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    # The border windows see zeros, so the zero-padded value differs from the valid-area one.
    assert np.all(np.abs(ours - np.asarray(ssim(a, b, data_range=1.0))) > 1e-3)
    small = rng.random((1, 4, 4, 1))  # smaller than the window: fine with zero padding
    np.testing.assert_allclose(ssim(small, small, data_range=1.0, padding="zeros"), [1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="padding='reflect'"):
        ssim(a, b, padding="reflect")


def _piq_reference(x, y):
    """piq 0.8's psnr / ssim (data range 1, valid 11x11 Gaussian windows) and the MSE, per image, in float64 NumPy,
    images NHWC in [0, 1]."""
    coords = np.arange(11, dtype=np.float64) - 5.0
    window = np.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * 1.5 ** 2))
    window /= window.sum()

    def blur(channel):  # valid correlation (the window is symmetric)
        return convolve2d(channel, window, mode="valid")

    psnrs, ssims, mses = [], [], []
    for a, b in zip(np.asarray(x, np.float64), np.asarray(y, np.float64)):
        error = np.mean((a - b) ** 2)
        psnrs.append(-10 * np.log10(error + 1e-8))
        mses.append(error)
        maps = []
        for c in range(a.shape[-1]):
            mu_a, mu_b = blur(a[..., c]), blur(b[..., c])
            var_a = blur(a[..., c] ** 2) - mu_a ** 2
            var_b = blur(b[..., c] ** 2) - mu_b ** 2
            cov = blur(a[..., c] * b[..., c]) - mu_a * mu_b
            cs = (2 * cov + 0.03 ** 2) / (var_a + var_b + 0.03 ** 2)
            maps.append(np.mean((2 * mu_a * mu_b + 0.01 ** 2) / (mu_a ** 2 + mu_b ** 2 + 0.01 ** 2) * cs))
        ssims.append(np.mean(maps))
    return np.asarray(psnrs), np.asarray(ssims), np.asarray(mses)


def test_recovery_quality_clip_matches_piq_reference():
    rng = np.random.default_rng(5)
    targets = rng.uniform(0, 1, size=(5, 16, 14, 3))
    predictions = np.clip(targets + rng.normal(0, 0.2, size=targets.shape), -0.3, 1.3)  # some outside [0, 1]
    got = recovery_quality(predictions, targets, normalization="clip", batch_size=2)
    psnr_ref, ssim_ref, mse_ref = _piq_reference(np.clip(predictions, 0, 1), targets)
    np.testing.assert_allclose([got["PSNR"], got["SSIM"], got["MSE"]],
                               [psnr_ref.mean(), ssim_ref.mean(), mse_ref.mean()], rtol=2e-5)
    unclipped = _piq_reference(predictions, targets)[1].mean()
    assert abs(got["SSIM"] - unclipped) > 1e-3  # the clip matters here


def test_recovery_quality_batch_minmax_normalises_each_batch_tensor():
    rng = np.random.default_rng(6)
    targets = rng.normal(0.3, 1.0, size=(5, 12, 12, 3))
    predictions = 0.5 * targets + rng.normal(0, 0.3, size=targets.shape)
    got = recovery_quality(predictions, targets, normalization="batch_minmax", batch_size=2)
    sums = np.zeros(3)
    for start in range(0, 5, 2):
        a, b = predictions[start:start + 2], targets[start:start + 2]
        a, b = (a - a.min()) / (a.max() - a.min()), (b - b.min()) / (b.max() - b.min())
        sums += [values.sum() for values in _piq_reference(a, b)]
    np.testing.assert_allclose([got["PSNR"], got["SSIM"], got["MSE"]], sums / 5, rtol=2e-5)
    # The batch size changes the result (each batch has its own range).
    assert recovery_quality(predictions, targets, normalization="batch_minmax", batch_size=5)["SSIM"] != got["SSIM"]


def test_batch_minmax_by_hand_and_constant_batches():
    np.testing.assert_allclose(batch_minmax(np.array([[[[2.0]]], [[[4.0]]], [[[3.0]]]])).ravel(), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(batch_minmax(np.full((2, 3, 3, 1), 7.0)), 0.0)
    with pytest.raises(ValueError, match="normalization"):
        recovery_quality(np.zeros((1, 12, 12, 1)), np.zeros((1, 12, 12, 1)), normalization="zscore")
