"""Layers shared by the networks, where PyTorch semantics must be matched exactly."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchNorm(nn.Module):
    """PyTorch-exact BatchNorm over all axes but the last (NHWC or NC).

    Training normalises with the biased batch variance and blends the *unbiased* one into the running
    variance, `running = (1 - momentum) * running + momentum * batch` with PyTorch's momentum 0.1
    (Flax's own BatchNorm blends the biased variance, (n - 1) / n smaller). Evaluation uses the running
    statistics. Variables are named like Flax's (params scale/bias, batch_stats mean/var), so converted
    PyTorch weights map one to one. Under `jax.jit` with a batch sharded over devices the statistics are
    those of the global batch.
    """

    use_running_average: bool = False
    momentum: float = 0.1
    epsilon: float = 1e-5
    use_bias: bool = True
    use_scale: bool = True
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        x32 = x.astype(jnp.float32)
        if not self.use_running_average:
            axes = tuple(range(x.ndim - 1))
            count = x32.size // features
            mean = jnp.mean(x32, axis=axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if not self.is_initializing():
                unbiased = var * (count / max(count - 1, 1))
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
        else:
            mean, var = running_mean.value, running_var.value
        y = (x32 - mean) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        if self.use_scale:
            y = y * self.param("scale", self.scale_init, (features,), jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (features,), jnp.float32)
        return y.astype(self.dtype)


# The four corners of a 2x2 window in the order PyTorch scans it; the first corner holding the maximum wins it.
_WINDOW_CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


def _window_corners(x):
    height, width = x.shape[1] - 1, x.shape[2] - 1
    return [x[:, row:row + height, column:column + width] for row, column in _WINDOW_CORNERS]


@jax.custom_vjp
def max_pool_2x2_stride1(x):
    """2x2 max-pool with stride 1 and no padding on NHWC `x` (H and W shrink by one), as torch's MaxPool2d(2, 1).

    The gradient goes to the first maximum of each window in row-major order (as PyTorch and XLA's own pooling
    do), which matters on the ties of empty voxel regions. Written as shifted slices because XLA's CPU gradient of
    a stride-1 reduce_window is ~10x slower (benchmarks/training_step.py, "anonymizer fwd+bwd").
    """
    top_left, top_right, bottom_left, bottom_right = _window_corners(x)
    return jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))


def _max_pool_forward(x):
    pooled = max_pool_2x2_stride1(x)
    return pooled, (x, pooled)


def _max_pool_backward(residuals, gradient):
    x, pooled = residuals
    taken = jnp.zeros(pooled.shape, bool)
    routed = []
    for (row, column), corner in zip(_WINDOW_CORNERS, _window_corners(x)):
        wins = (corner == pooled) & ~taken
        taken = taken | wins
        routed.append(jnp.pad(jnp.where(wins, gradient, jnp.zeros((), gradient.dtype)),
                              ((0, 0), (row, 1 - row), (column, 1 - column), (0, 0))))
    # An input receives from the windows to its lower right first when outputs are visited in raster order, as
    # PyTorch and XLA accumulate: summing the corners in reverse keeps their float rounding.
    x_gradient = routed[-1]
    for part in reversed(routed[:-1]):
        x_gradient = x_gradient + part
    return (x_gradient,)


max_pool_2x2_stride1.defvjp(_max_pool_forward, _max_pool_backward)


_NHWC_HWIO = jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def _plain_nhwc_conv(lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count) -> bool:
    dilated = any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
    return not dilated and feature_group_count == 1 and dimension_numbers in (None, _NHWC_HWIO,
                                                                              ("NHWC", "HWIO", "NHWC"))


def patch_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
               feature_group_count=1, precision=None, preferred_element_type=None):
    """`jax.lax.conv_general_dilated` for NHWC x HWIO as one matrix product over stacked kernel-window patches.

    Pass it as nn.Conv(conv_general_dilated=patch_conv) for layers with few input channels: there XLA's CPU
    convolution gradient (with respect to the kernel) is 2-4x slower than the same product on patches
    (benchmarks/training_step.py, "anonymizer fwd+bwd"). It costs kh*kw times the input in memory, so wide inputs
    should keep XLA's convolution. Dilated, grouped or non-NHWC convolutions go to XLA's convolution unchanged.
    """
    if not _plain_nhwc_conv(lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count):
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type)
    kernel_height, kernel_width, in_features, out_features = rhs.shape
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    stride_h, stride_w = window_strides
    out_height = (x.shape[1] - kernel_height) // stride_h + 1
    out_width = (x.shape[2] - kernel_width) // stride_w + 1
    # Channel k of the patches is (row, column, input feature) in the kernel's own HWI order.
    patches = jnp.concatenate(
        [jax.lax.slice(x, (0, row, column, 0),
                       (x.shape[0], row + stride_h * (out_height - 1) + 1, column + stride_w * (out_width - 1) + 1,
                        in_features), (1, stride_h, stride_w, 1))
         for row in range(kernel_height) for column in range(kernel_width)], axis=-1)
    return jnp.einsum("nhwk,ko->nhwo", patches, rhs.reshape(kernel_height * kernel_width * in_features, out_features),
                      precision=precision, preferred_element_type=preferred_element_type)


# Maps with at most this many positions convolve as a product over patches: there XLA's CPU convolution gradient
# is up to 50x slower (the 4x2 level of a U-Net decoder: 457 ms against 9 ms, forward+backward, batch 32).
def _conv_nhwc(x, kernel, strides, padding, lhs_dilation=(1, 1), precision=None):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, lhs_dilation=lhs_dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _loop_conv(x, kernel, strides, padding, precision):
    return _conv_nhwc(x, kernel, strides, padding, precision=precision)


def _loop_conv_forward(x, kernel, strides, padding, precision):
    return _conv_nhwc(x, kernel, strides, padding, precision=precision), (x, kernel)


def _loop_conv_backward(strides, padding, precision, residuals, grad):
    x, kernel = residuals
    # Input gradient: the output gradient dilated by the stride, padded so that a stride-1 valid convolution with
    # the flipped kernel, in and out swapped, gives back the input's size (r: rows the forward stride skipped).
    pads = []
    for axis, (low, high) in enumerate(padding):
        size, taps, stride = x.shape[1 + axis], kernel.shape[axis], strides[axis]
        skipped = (size + low + high - taps) - (grad.shape[1 + axis] - 1) * stride
        pads.append((taps - 1 - low, taps - 1 - high + skipped))
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    x_grad = _conv_nhwc(grad, flipped, (1, 1), pads, lhs_dilation=strides, precision=precision)
    _, kernel_vjp = jax.vjp(lambda k: _conv_nhwc(x, k, strides, padding, precision=precision), kernel)
    return x_grad.astype(x.dtype), kernel_vjp(grad)[0]


_loop_conv.defvjp(_loop_conv_forward, _loop_conv_backward)


def loop_friendly_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1, precision=None, preferred_element_type=None):
    """`jax.lax.conv_general_dilated` (NHWC x HWIO) whose input gradient is an explicit convolution with the flipped,
    in/out-transposed kernel.

    Autodiff writes the input gradient as a convolution with swapped kernel dimension numbers; inside a while loop
    (`lax.fori_loop`: PixelFade's 100 gradient steps) XLA's CPU backend runs that form 4-10x slower than the
    same convolution with an HWIO kernel, and a ResNet's gradient 3.5x slower than outside the loop (benchmarks/
    pixelfade_protection.py). The values are the same sums. Other layouts, dilations and groups go to XLA's
    convolution unchanged. Pass it as nn.Conv(conv_general_dilated=loop_friendly_conv).
    """
    if not _plain_nhwc_conv(lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count) or (
            preferred_element_type is not None):
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type)
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(low), int(high)) for low, high in padding)
    return _loop_conv(lhs, rhs, tuple(int(s) for s in window_strides), padding, precision)


SMALL_MAP_POSITIONS = 32


def small_map_conv(height: int, width: int):
    """`patch_conv` for a convolution whose output map has at most SMALL_MAP_POSITIONS positions, else None (keep
    XLA's convolution). Pass the result as nn.Conv(conv_general_dilated=...)."""
    return patch_conv if height * width <= SMALL_MAP_POSITIONS else None


# Output phase r of ConvTranspose2d(k=5, stride=2, padding=2, output_padding=1) along one axis reads the input at
# offsets -1, 0, +1 through these kernel taps (index 5 is a zero tap): out[2m] = w4 x[m-1] + w2 x[m] + w0 x[m+1],
# out[2m+1] = w3 x[m] + w1 x[m+1].
_PHASE_TAPS = ((4, 2, 0), (5, 3, 1))


def phase_transposed_conv(x, kernel, phase_taps):
    """A stride-2 transposed convolution as one stride-1 3x3 convolution producing the four output phases, then
    interleaved. `kernel` is (k, k, out, in); `phase_taps[r]` lists the kernel taps that output phase r reads at
    input offsets -1, 0, +1 (index k is a zero tap)."""
    in_features, features = x.shape[-1], kernel.shape[2]
    taps = jnp.asarray(phase_taps)
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    # (row phase, row offset, column phase, column offset, out, in) -> (3, 3, in, (row phase, column phase, out))
    phases = padded[taps][:, :, taps].transpose(1, 3, 5, 0, 2, 4).reshape(3, 3, in_features, 4 * features)
    conv = small_map_conv(*x.shape[1:3]) or jax.lax.conv_general_dilated
    y = conv(x, phases, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    batch, height, width, _ = y.shape
    y = y.reshape(batch, height, width, 2, 2, features).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(batch, 2 * height, 2 * width, features)


class ConvTransposeX2(nn.Module):
    """PyTorch's ConvTranspose2d(in, out, 5, stride=2, padding=2, output_padding=1) on NHWC maps: twice the size.

    Parameters are those of nn.ConvTranspose(features, (5, 5), strides=(2, 2), padding=((2, 3), (2, 3)),
    transpose_kernel=True) (kernel (5, 5, out, in) = PyTorch's weight transposed by (2, 3, 1, 0), bias), so the
    two are interchangeable. Computed as one stride-1 3x3 conv of the input giving the four output phases, then
    interleaved: the same products without the zeros of a dilated input, which XLA's CPU convolution multiplies
    (4x faster forward at 96x48 and 7x faster forward+backward, benchmarks/reconstruction.py).
    """

    features: int
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (5, 5, self.features, in_features), jnp.float32)
        y = phase_transposed_conv(x.astype(self.dtype), kernel.astype(self.dtype), _PHASE_TAPS)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
        return y
