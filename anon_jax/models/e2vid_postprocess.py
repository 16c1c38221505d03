"""E2VID's inference pipeline around the network (rpg_e2vid v1.1): voxelise and normalise each event window,
reflect-pad, run the model with the recurrent state carried across windows, unsharp-mask, rescale intensities
(optionally with the auto-HDR median rule) to uint8 and crop. `reconstruct_stream` is the window-by-window loop.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from anon_jax.events import EventStream, normalize_voxel_grid, pad_events, voxel_grid
from anon_jax.models import e2vid

UNSHARP_KERNEL_SIZE = 5


def unsharp_kernel_1d(sigma: float = 1.0) -> np.ndarray:
    """The 1-D factor (5 taps, float64) of E2VID's unsharp-mask kernel `gkern(5, sigma)`.

    gkern takes the standard-normal probability of 5 equal cells spanning [-sigma - w/2, sigma + w/2] with
    w = (2 sigma + 1) / 5, and normalises sqrt(outer(cells, cells)); the square root makes the 2-D kernel the
    outer product of the normalised square roots of the cells. For sigma = 1 this is
    [0.17418, 0.21238, 0.22689, 0.21238, 0.17418].
    """
    cell = (2 * sigma + 1.0) / UNSHARP_KERNEL_SIZE
    edges = np.linspace(-sigma - cell / 2, sigma + cell / 2, UNSHARP_KERNEL_SIZE + 1)
    cdf = np.array([0.5 * (1 + math.erf(edge / math.sqrt(2))) for edge in edges])
    roots = np.sqrt(np.diff(cdf))
    return roots / roots.sum()


def unsharp_kernel(sigma: float = 1.0) -> np.ndarray:
    """E2VID's 5x5 unsharp-mask kernel (float32, sums to 1): centre 0.05148, corner 0.03034 for sigma = 1."""
    taps = unsharp_kernel_1d(sigma)
    return np.outer(taps, taps).astype(np.float32)


def unsharp_mask(images, amount: float = 0.3, sigma: float = 1.0) -> jnp.ndarray:
    """(1 + amount) * images - amount * blur(images) of NHWC images, per channel, blur with zero padding 2.

    E2VID applies it to the sigmoid output before rescaling; amount <= 0 returns the images unchanged.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"unsharp_mask: expected NHWC images (batch, height, width, channels), got {images.shape}.")
    if amount <= 0:
        return images
    channels = images.shape[-1]
    kernel = jnp.broadcast_to(jnp.asarray(unsharp_kernel(sigma), images.dtype)[:, :, None, None],
                              (UNSHARP_KERNEL_SIZE, UNSHARP_KERNEL_SIZE, 1, channels))
    pad = UNSHARP_KERNEL_SIZE // 2
    blurred = jax.lax.conv_general_dilated(
        images, kernel, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
        precision=jax.lax.Precision.HIGHEST)
    return (1 + amount) * images - amount * blurred


def to_uint8(image, imin: float = 0.0, imax: float = 1.0) -> np.ndarray:
    """uint8 of 255 (image - imin) / (imax - imin), clipped to [0, 255] and truncated, as E2VID's `.byte()`."""
    if not imax > imin:
        raise ValueError(f"to_uint8: imax ({imax}) must be greater than imin ({imin}).")
    scaled = np.float32(255.0) * (np.asarray(image, np.float32) - np.float32(imin)) / np.float32(imax - imin)
    return np.clip(scaled, 0, 255).astype(np.uint8)


class IntensityRescaler:
    """E2VID's intensity rescaling of consecutive frames to uint8 (stateful: call once per frame, in order).

    Without auto_hdr the fixed bounds [imin, imax] are used. With auto_hdr each frame gives
    lo = clip(min, 0, 0.45) and hi = clip(max, 0.55, 1) (so the range is at least 0.1); the pair joins a deque
    that drops its oldest entry first when it holds more than `median_filter_size` pairs (so up to
    median_filter_size + 1 entries), and the bounds are the medians over the deque. `robust_percentile` p > 0
    replaces min/max by the p-th and (100 - p)-th percentiles (the robust rule of E2VID before v1.1).
    """

    def __init__(self, *, auto_hdr: bool = False, median_filter_size: int = 10, imin: float = 0.0,
                 imax: float = 1.0, robust_percentile: float = 0.0):
        if not 0 <= robust_percentile < 50:
            raise ValueError(f"IntensityRescaler: robust_percentile must be in [0, 50), got {robust_percentile}.")
        if median_filter_size < 0:
            raise ValueError(f"IntensityRescaler: median_filter_size must be >= 0, got {median_filter_size}.")
        self.auto_hdr = auto_hdr
        self.median_filter_size = median_filter_size
        self.robust_percentile = robust_percentile
        self.imin, self.imax = float(imin), float(imax)
        self.bounds_history: collections.deque[tuple[float, float]] = collections.deque()

    def update(self, image) -> tuple[float, float]:
        """Folds `image` into the auto-HDR history (if enabled) and returns the (imin, imax) to use for it."""
        if self.auto_hdr:
            image = np.asarray(image, np.float32)
            if self.robust_percentile > 0:
                low, high = np.percentile(image, [self.robust_percentile, 100 - self.robust_percentile])
            else:
                low, high = image.min(), image.max()
            if len(self.bounds_history) > self.median_filter_size:
                self.bounds_history.popleft()
            self.bounds_history.append((float(np.clip(low, 0.0, 0.45)), float(np.clip(high, 0.55, 1.0))))
            self.imin = float(np.median([low for low, _ in self.bounds_history]))
            self.imax = float(np.median([high for _, high in self.bounds_history]))
        return self.imin, self.imax

    def __call__(self, image) -> np.ndarray:
        """The uint8 version of `image` under the updated bounds."""
        return to_uint8(image, *self.update(image))


@dataclasses.dataclass(frozen=True)
class ReconstructedFrame:
    """One reconstructed window: its position, the time of its last event (stream unit), and the image."""

    index: int
    timestamp: float
    num_events: int
    image: np.ndarray  # (height, width) uint8


def window_voxels(window: EventStream, num_bins: int) -> jnp.ndarray:
    """E2VID input of one window: normalised voxel grid (1, H, W, num_bins) on the window's sensor.

    The events are padded to a power-of-two capacity so that windows of similar length share a compiled program.
    """
    window.require_nonempty()
    capacity = 1 << (len(window) - 1).bit_length()
    padded = pad_events(window, capacity)
    grid = voxel_grid(padded["x"], padded["y"], padded["t"], padded["p"], mask=padded["mask"], num_bins=num_bins,
                      height=window.height, width=window.width)
    return normalize_voxel_grid(jnp.moveaxis(grid, 0, -1))[None]


def reconstruct_stream(module, variables, windows: Iterable[EventStream], *, num_bins: int, num_encoders: int,
                       unsharp_mask_amount: float = 0.3, unsharp_mask_sigma: float = 1.0,
                       rescaler: IntensityRescaler | None = None, carry_state: bool = True
                       ) -> Iterator[ReconstructedFrame]:
    """Reconstructs one frame per event window, in order, as E2VID's `run_reconstruction`.

    `module.apply(variables, voxels, state, train=False) -> (image, state)` is the E2VID contract; the state
    starts at zeros and is carried from window to window (reset to zeros each window if not `carry_state`, as
    `--no-recurrent`). Per window: voxel grid with `num_bins` bins on the window's sensor, normalisation of the
    non-zero entries, reflection padding to a multiple of 2**num_encoders, the model, unsharp mask and intensity
    rescaling on the padded frame (v1.1 order), then the crop back to the sensor. `rescaler` defaults to the fixed
    [0, 1] bounds; pass one with auto_hdr for E2VID's `--auto_hdr`.
    """
    rescaler = rescaler or IntensityRescaler()

    @jax.jit
    def step(variables, voxels, state):
        image, state = module.apply(variables, voxels, state, train=False)
        return unsharp_mask(image, unsharp_mask_amount, unsharp_mask_sigma), state

    state = zero_state = None
    for index, window in enumerate(windows):
        voxels = e2vid.pad_to_multiple(window_voxels(window, num_bins), 2**num_encoders)
        if index == 0:
            # An explicit zero state (what None means) keeps one compiled program for every window.
            _, state_shape = jax.eval_shape(lambda v, x: module.apply(v, x, None, train=False), variables, voxels)
            zero_state = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), state_shape)
            state = zero_state
        image, new_state = step(variables, voxels, state)
        state = new_state if carry_state else zero_state
        padded_frame = rescaler(np.asarray(image[0]))
        frame = np.asarray(e2vid.crop_to(padded_frame, window.height, window.width))[..., 0]
        yield ReconstructedFrame(index=index, timestamp=float(window.t[-1]), num_events=len(window), image=frame)
