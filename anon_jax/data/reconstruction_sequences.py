"""Simulated event sequences with ground truth for training and evaluating the events-to-video reconstructor.

Scenes: grey-scale natural images bundled with matplotlib and procedural textures (sinusoids, blobs, edges)
under random affine motion, and the embedded synthetic pedestrians (train, validation and test use disjoint
identities). Each sequence is rendered at `render_fps`, turned into events by the ESIM-style simulator with
contrast thresholds and noise drawn per sequence, and cut into windows: per window a normalised voxel grid
(H, W, bins), the ground-truth frame at the window end (H, W, 1) and the backward flow (H, W, 2) from that
frame to the previous one. Splits are simulated deterministically from the config and cached as npz files.
"""

from __future__ import annotations

import gzip
import json
import math
import os

import jax
import matplotlib.colors
import matplotlib.image
import ml_collections
import numpy as np
from absl import logging
from matplotlib import cbook

from anon_jax.data import synthetic
from anon_jax.events import EventStream
from anon_jax.events.simulator import SimulatorParams, simulate_events_with_stats
from anon_jax.events.voxel import normalize_voxel_grid_numpy, voxel_grid_numpy
from anon_jax.files import atomic_target

SPLITS = ("train", "validation", "test")
KINDS = ("natural", "texture", "pedestrian")
# Sample images shipped inside every matplotlib installation (mpl-data/sample_data).
NATURAL_IMAGE_NAMES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "s1045.ima.gz",
                       "jacksboro_fault_dem.npz", "logo2.png")
_PROGRESS_EVERY = 20


class ReconstructionDataError(ValueError):
    """Bad sequence settings or a cache written with another config."""


def default_sequence_config() -> ml_collections.ConfigDict:
    """Sequence generator settings for CPU training (64 x 48 frames, 20 windows of 30 ms per sequence)."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # seeds scene choice, motion, thresholds and simulator noise
    config.height = 64  # frame height in pixels (a multiple of 8 for the 3-encoder E2VID)
    config.width = 48  # frame width in pixels (a multiple of 8)
    config.num_bins = 5  # voxel-grid time bins per window (5 in E2VID)
    config.render_fps = 400.0  # rendering rate fed to the simulator; motion stays well below 1 px per frame
    config.frames_per_window = 12  # rendered frames per window (12 at 400 fps = 30 ms, about 33 Hz GT)
    config.num_windows = 20  # windows (voxel grid + GT frame) per sequence
    config.contrast_threshold_mean = 0.18  # mean of the per-sequence contrast threshold C (E2VID training data)
    config.contrast_threshold_std = 0.03  # std of the per-sequence C
    config.contrast_threshold_min = 0.08  # lower clip of the drawn C
    config.relative_threshold_noise = 0.15  # per-pixel, per-frame-pair threshold noise std as a fraction of C
    config.max_shot_noise_rate_hz = 0.5  # per-sequence uniform draw of the shot-noise rate per pixel
    config.max_events_per_pixel_per_frame = 16  # simulator cap per pixel and frame pair
    config.texture_size = 160  # side of procedural textures and shorter side of natural images, in pixels
    config.min_zoom = 0.6  # smallest initial texture pixels per view pixel (log-uniform draw)
    config.max_zoom = 1.8  # largest initial texture pixels per view pixel
    config.max_speed_px_per_s = 90.0  # translation speed bound, view pixels per second
    config.max_rotation_deg_per_s = 40.0  # rotation speed bound
    config.max_log_zoom_per_s = 0.4  # zoom speed bound, |d log(scale) / dt| per second
    config.pedestrian_seed = 0  # seed of the synthetic pedestrians (0 = the embedded dataset's identities)
    config.pedestrian_cameras = 4  # cameras per pedestrian identity (one sequence each)
    config.train = ml_collections.ConfigDict()
    config.validation = ml_collections.ConfigDict()
    config.test = ml_collections.ConfigDict()
    config.train.natural = 24  # natural-image sequences (images cycle through NATURAL_IMAGE_NAMES)
    config.train.textures = 24  # procedural-texture sequences
    config.train.pedestrian_identities = 12  # identities 1..n, each seen by every camera
    config.validation.natural = 3  # held-out natural-image sequences (other crops and motion)
    config.validation.textures = 3  # held-out procedural textures
    config.validation.pedestrian_identities = 2  # identities after the training ones
    config.test.natural = 0  # the evaluation is on pedestrians only
    config.test.textures = 0  # idem
    config.test.pedestrian_identities = 4  # identities after the validation ones (they keep their events)
    return config


def _check_config(config) -> None:
    for name in ("height", "width"):
        if config[name] < 8 or config[name] % 8:
            raise ReconstructionDataError(
                f"config.data.{name}={config[name]}: must be a positive multiple of 8 (E2VID's 3 encoders).")
    for name in ("num_bins", "frames_per_window", "num_windows", "texture_size", "pedestrian_cameras"):
        if not (isinstance(config[name], int) and config[name] >= 1):
            raise ReconstructionDataError(f"config.data.{name}={config[name]!r}: must be an integer >= 1.")
    if not (0 < config.min_zoom <= config.max_zoom):
        raise ReconstructionDataError("config.data.min_zoom and max_zoom must satisfy 0 < min_zoom <= max_zoom.")
    for split in SPLITS:
        counts = config[split]
        if min(counts.natural, counts.textures, counts.pedestrian_identities) < 0:
            raise ReconstructionDataError(f"config.data.{split}: sequence counts must be >= 0.")


# ----------------------------------------------------------------------------------------------------------
# Scenes


def _to_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    image = image / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    if image.ndim == 3:
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    return image


def _load_natural_image(name: str) -> np.ndarray:
    """One bundled matplotlib sample image as grey-scale float64 in [0, 1]."""
    try:
        if name.endswith(".ima.gz"):  # 256 x 256 big-endian uint16 MRI slice
            with cbook.get_sample_data(name) as raw:
                data = raw.read()
            image = np.frombuffer(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data, ">u2")
            image = image.reshape(256, 256).astype(np.float64)
        elif name.endswith(".npz"):  # elevation model, shown as a hill-shaded relief
            with np.load(cbook.get_sample_data(name, asfileobj=False)) as archive:
                elevation = archive["elevation"].astype(np.float64)
            image = matplotlib.colors.LightSource(azdeg=315, altdeg=45).hillshade(elevation, vert_exag=0.05)
        else:
            with cbook.get_sample_data(name) as file:
                image = _to_gray(matplotlib.image.imread(file))
    except (OSError, ValueError) as error:
        raise ReconstructionDataError(
            f"matplotlib sample image {name!r} could not be read ({error}); reinstall matplotlib, whose "
            "mpl-data/sample_data folder ships it, or set config.data.*.natural = 0.") from error
    low, high = np.percentile(image, [1, 99])
    return np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)


def _resize(image: np.ndarray, shorter_side: int) -> np.ndarray:
    """Bilinear resize to the given shorter side, blurred first when shrinking (against aliasing)."""
    factor = shorter_side / min(image.shape)
    if factor < 1:
        image = _gaussian_blur(image, 0.5 / factor)
    height, width = (max(1, round(side * factor)) for side in image.shape)
    cols = (np.arange(width) + 0.5) / factor
    rows = (np.arange(height) + 0.5) / factor
    return bilinear_sample(image, cols[None, :], rows[:, None])


def natural_images(shorter_side: int) -> list[np.ndarray]:
    """The grey-scale sample images used as natural scenes, resized to `shorter_side` (cached per process)."""
    if shorter_side not in _NATURAL_CACHE:
        _NATURAL_CACHE[shorter_side] = [_resize(_load_natural_image(name), shorter_side)
                                        for name in NATURAL_IMAGE_NAMES]
    return _NATURAL_CACHE[shorter_side]


_NATURAL_CACHE: dict[int, list[np.ndarray]] = {}


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with mirrored borders (anti-aliasing before minification)."""
    if sigma < 0.3:
        return image
    radius = int(math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="symmetric")
        image = sum(w * np.take(padded, np.arange(i, i + image.shape[axis]), axis=axis) for i, w in enumerate(taps))
    return image


def procedural_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random texture in [0, 1]: oriented sinusoids, Gaussian blobs and soft-edged polygons and discs."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    texture = np.zeros((size, size))
    for _ in range(rng.integers(2, 6)):
        angle, frequency = rng.uniform(0, math.pi), rng.uniform(1.0, 12.0)
        phase = 2 * math.pi * frequency * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi)
        texture += rng.uniform(0.1, 0.5) * np.sin(phase)
    for _ in range(rng.integers(3, 12)):
        cy, cx, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.02, 0.15)
        texture += rng.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    edge_px = rng.uniform(0.7, 2.0) / size
    for _ in range(rng.integers(2, 8)):
        cy, cx = rng.uniform(0, 1), rng.uniform(0, 1)
        if rng.random() < 0.5:  # disc
            distance = rng.uniform(0.03, 0.2) - np.hypot(yy - cy, xx - cx)
        else:  # convex polygon as an intersection of half-planes around (cx, cy)
            sides = rng.integers(3, 7)
            angles = np.sort(rng.uniform(0, 2 * math.pi, sides))
            reach = rng.uniform(0.05, 0.25, sides)
            distance = np.min([r - ((xx - cx) * math.cos(a) + (yy - cy) * math.sin(a))
                               for a, r in zip(angles, reach)], axis=0)
        coverage = np.clip(0.5 + distance / edge_px, 0.0, 1.0)
        texture += coverage * (rng.uniform(-1.5, 1.5) - texture * rng.uniform(0, 1))
    low, high = texture.min(), texture.max()
    return (texture - low) / max(high - low, 1e-6)


# ----------------------------------------------------------------------------------------------------------
# Affine motion: view pixel x (relative to the view centre) sees texture point c(t) + s(t) R(theta(t)) x.


def affine_motion(rng: np.random.Generator, config, texture_shape) -> dict:
    """Random initial pose and constant velocities of the affine camera over a texture."""
    speed = config.max_speed_px_per_s * math.sqrt(rng.uniform())
    direction = rng.uniform(0, 2 * math.pi)
    return dict(
        center=np.array([rng.uniform(0, texture_shape[1]), rng.uniform(0, texture_shape[0])]),  # (x, y)
        velocity=speed * np.array([math.cos(direction), math.sin(direction)]),  # view px / s
        scale=math.exp(rng.uniform(math.log(config.min_zoom), math.log(config.max_zoom))),
        log_zoom_rate=rng.uniform(-config.max_log_zoom_per_s, config.max_log_zoom_per_s),
        angle=rng.uniform(0, 2 * math.pi),
        angular_velocity=math.radians(rng.uniform(-config.max_rotation_deg_per_s, config.max_rotation_deg_per_s)),
    )


def _affine_at(motion: dict, t: np.ndarray):
    """Texture-from-view matrices A (T, 2, 2) and offsets b (T, 2) at times t (seconds)."""
    t = np.asarray(t, np.float64)
    scale = motion["scale"] * np.exp(motion["log_zoom_rate"] * t)
    angle = motion["angle"] + motion["angular_velocity"] * t
    cos, sin = np.cos(angle), np.sin(angle)
    matrix = scale[:, None, None] * np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    # The initial scale converts view-pixel velocities to texture pixels.
    offset = motion["center"][None] + motion["scale"] * t[:, None] * np.asarray(motion["velocity"])[None]
    return matrix, offset


def _view_grid(height: int, width: int) -> np.ndarray:
    """View pixel centres relative to the view centre, (H, W, 2) as (x, y)."""
    rows = np.arange(height) + 0.5 - height / 2
    cols = np.arange(width) + 0.5 - width / 2
    return np.stack(np.broadcast_arrays(cols[None, :], rows[:, None]), axis=-1)


def _mirror(coordinate: np.ndarray, size: int) -> np.ndarray:
    """Folds continuous pixel-index coordinates into [0, size - 1] (the texture tiles the plane mirrored)."""
    period = 2 * (size - 1) if size > 1 else 1
    folded = np.mod(coordinate, period)
    return np.where(folded > size - 1, period - folded, folded)


def bilinear_sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of `image` (H, W) at continuous pixel-centre coordinates, mirrored at the borders."""
    height, width = image.shape
    x = _mirror(np.asarray(x) - 0.5, width)
    y = _mirror(np.asarray(y) - 0.5, height)
    x0 = np.minimum(np.floor(x).astype(np.int64), width - 2) if width > 1 else np.zeros(x.shape, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), height - 2) if height > 1 else np.zeros(y.shape, np.int64)
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def render_affine_sequence(texture: np.ndarray, motion: dict, times_s: np.ndarray, height: int,
                           width: int) -> np.ndarray:
    """Frames (T, H, W) of the texture seen by the moving affine camera at `times_s`."""
    matrix, offset = _affine_at(motion, times_s)
    grid = _view_grid(height, width)
    points = np.einsum("tij,hwj->thwi", matrix, grid) + offset[:, None, None, :]
    return bilinear_sample(texture, points[..., 0], points[..., 1])


def affine_flow(motion: dict, time_from_s: float, time_to_s: float, height: int, width: int) -> np.ndarray:
    """Backward flow (H, W, 2) as (dx, dy): the pixel x at `time_to_s` showed the same point at x + flow(x)
    at `time_from_s`, so frame_to(x) = frame_from(x + flow(x))."""
    (a_to, a_from), (b_to, b_from) = _affine_at(motion, np.array([time_to_s, time_from_s]))
    grid = _view_grid(height, width)
    texture_points = grid @ a_to.T + b_to
    source = (texture_points - b_from) @ np.linalg.inv(a_from).T
    return (source - grid).astype(np.float32)


def _intensity_map(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Random contrast and brightness, kept away from 0 where log intensity explodes."""
    low = rng.uniform(0.02, 0.25)
    high = rng.uniform(max(low + 0.3, 0.6), 1.0)
    return low + (high - low) * image ** rng.uniform(0.7, 1.4)


def _affine_scene(rng, config, kind: str, index: int, times_s: np.ndarray):
    """Frames and flows of one natural-image or texture sequence."""
    if kind == "natural":
        images = natural_images(config.texture_size)
        texture = images[index % len(images)]
    else:
        texture = procedural_texture(rng, config.texture_size)
    texture = _intensity_map(rng, texture)
    motion = affine_motion(rng, config, texture.shape)
    duration = float(times_s[-1] - times_s[0])
    largest_scale = motion["scale"] * math.exp(abs(motion["log_zoom_rate"]) * duration)
    texture = _gaussian_blur(texture, 0.5 * largest_scale if largest_scale > 1 else 0.0)
    frames = render_affine_sequence(texture, motion, times_s, config.height, config.width)
    return np.clip(frames, 0.0, 1.0).astype(np.float32), motion


def pedestrian_config(config, num_identities: int) -> ml_collections.ConfigDict:
    """The synthetic-pedestrian generator config rendering one sequence at this data config's size and rate."""
    pedestrians = synthetic.default_synthetic_config()
    pedestrians.seed = config.pedestrian_seed
    pedestrians.num_identities = max(num_identities, 1)
    pedestrians.num_cameras = config.pedestrian_cameras
    pedestrians.height, pedestrians.width = config.height, config.width
    pedestrians.fps = config.render_fps
    pedestrians.duration_s = config.num_windows * config.frames_per_window / config.render_fps
    return pedestrians


# ----------------------------------------------------------------------------------------------------------
# Events and windows


def simulator_params(config) -> SimulatorParams:
    """The one simulator setting of all sequences: thresholds at `contrast_threshold_min` in rescaled log units.

    The simulator's parameters are static under jit (a new setting recompiles for seconds), so a sequence with
    threshold C (Cp = Cm = C) is simulated on frames whose log intensity is scaled by k = C_min / C (see
    `rescale_log_intensity`), so every sequence shares one compiled simulator; the per-pixel threshold noise
    and the event counts then match a simulation at C.
    """
    base = config.contrast_threshold_min
    return SimulatorParams(
        contrast_threshold_pos=base, contrast_threshold_neg=base,
        contrast_threshold_sigma=config.relative_threshold_noise * base,
        max_events_per_pixel_per_frame=config.max_events_per_pixel_per_frame,
        frame_pairs_per_call=config.frames_per_window * min(config.num_windows, 5))


def rescale_log_intensity(frames: np.ndarray, factor: float, log_eps: float) -> np.ndarray:
    """Frames whose simulator log intensity log(eps + I') is `factor` (<= 1) times that of `frames`."""
    if not 0 < factor <= 1:
        raise ReconstructionDataError(f"log-intensity factor {factor} must be in (0, 1].")
    base = log_eps + np.clip(frames.astype(np.float64), 0.0, 1.0 - log_eps)
    return np.clip(base**factor - log_eps, 0.0, 1.0).astype(np.float32)


def add_shot_noise(rng: np.random.Generator, stream: EventStream, rate_hz: float, duration_us: float) -> EventStream:
    """The stream plus Poisson(rate * duration) noise events per pixel at uniform times and polarities."""
    counts = rng.poisson(rate_hz * duration_us * 1e-6, (stream.height, stream.width))
    y, x = np.nonzero(counts)
    repeats = counts[y, x]
    x, y = np.repeat(x, repeats).astype(np.int32), np.repeat(y, repeats).astype(np.int32)
    t = rng.uniform(0.0, duration_us, len(x))
    p = rng.integers(0, 2, len(x)).astype(np.uint8)
    all_t = np.concatenate([stream.t, t])
    order = np.argsort(all_t, kind="stable")
    return EventStream(x=np.concatenate([stream.x, x])[order], y=np.concatenate([stream.y, y])[order],
                       t=all_t[order], p=np.concatenate([stream.p, p])[order], height=stream.height,
                       width=stream.width, source=stream.source)


def window_voxels(stream, window_ends_us: np.ndarray, *, num_bins: int) -> np.ndarray:
    """Normalised voxel grids (L, H, W, bins) of the events in (end_{l-1}, end_l] for each window end
    (the first window starts at time 0); an empty window gives zeros."""
    bounds = np.searchsorted(stream.t, window_ends_us, side="right")
    grids = np.zeros((len(window_ends_us), stream.height, stream.width, num_bins), np.float16)
    start = np.searchsorted(stream.t, 0.0, side="right")
    for index, stop in enumerate(bounds):
        if stop > start:
            grid = voxel_grid_numpy(stream.x[start:stop], stream.y[start:stop], stream.t[start:stop],
                                    stream.p[start:stop], num_bins=num_bins, height=stream.height,
                                    width=stream.width)
            grids[index] = np.moveaxis(normalize_voxel_grid_numpy(grid), 0, -1)
        start = stop
    return grids


def simulate_sequence(config, split: str, kind: str, index: int, keep_events: bool) -> dict:
    """One sequence of `kind` (its `index`-th in the split): windows of voxels, GT frames and flows."""
    split_id, kind_id = SPLITS.index(split), KINDS.index(kind)
    rng = np.random.default_rng([config.seed, split_id, kind_id, index])
    num_frames = config.num_windows * config.frames_per_window + 1
    times_s = np.arange(num_frames) / config.render_fps
    window_frames = np.arange(1, config.num_windows + 1) * config.frames_per_window
    flows = np.zeros((config.num_windows, config.height, config.width, 2), np.float16)
    if kind == "pedestrian":
        identity, camera = divmod(index, config.pedestrian_cameras)
        first_identity = 1 + sum(config[s].pedestrian_identities for s in SPLITS[:split_id])
        pedestrians = pedestrian_config(config, first_identity + identity)
        frames, _ = synthetic.render_recording(pedestrians, first_identity + identity, camera + 1)
        # The pedestrians' camera is static: the background does not move and the person's own motion is
        # left to the visibility weight of the temporal loss, so their flow stays zero.
    else:
        frames, motion = _affine_scene(rng, config, kind, index, times_s)
        for window in range(1, config.num_windows):
            flows[window] = affine_flow(motion, times_s[window_frames[window - 1]], times_s[window_frames[window]],
                                        config.height, config.width)
    threshold = max(rng.normal(config.contrast_threshold_mean, config.contrast_threshold_std),
                    config.contrast_threshold_min)
    params = simulator_params(config)
    scaled = rescale_log_intensity(frames, config.contrast_threshold_min / threshold, params.log_eps)
    timestamps_us = times_s * 1e6
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), split_id),
                                                kind_id), index)
    stream, dropped = simulate_events_with_stats(scaled, timestamps_us, params, key)
    stream = add_shot_noise(rng, stream, rng.uniform(0, config.max_shot_noise_rate_hz), timestamps_us[-1])
    record = dict(
        voxels=window_voxels(stream, timestamps_us[window_frames], num_bins=config.num_bins),
        frames=frames[window_frames][..., None],
        flows=flows,
        kind=np.int32(kind_id),
        contrast_threshold=np.float32(threshold),
        num_events=np.int64(len(stream)),
        dropped_events=np.int64(dropped),
    )
    if keep_events:
        record.update(events_x=stream.x.astype(np.int16), events_y=stream.y.astype(np.int16),
                      events_t=stream.t, events_p=stream.p)
    return record


def split_sequences(config, split: str) -> list[tuple[str, int]]:
    """The (kind, index) pairs of a split, in storage order."""
    counts = config[split]
    return ([("natural", i) for i in range(counts.natural)] + [("texture", i) for i in range(counts.textures)]
            + [("pedestrian", i) for i in range(counts.pedestrian_identities * config.pedestrian_cameras)])


def _stack(records: list[dict], keep_events: bool) -> dict:
    names = ("voxels", "frames", "flows", "kind", "contrast_threshold", "num_events", "dropped_events")
    arrays = {name: np.stack([r[name] for r in records]) for name in names}
    if keep_events:
        # Events of all sequences back to back; sequence i owns events_offsets[i]:events_offsets[i + 1].
        arrays["events_offsets"] = np.concatenate([[0], np.cumsum([len(r["events_t"]) for r in records])])
        for name in ("events_x", "events_y", "events_t", "events_p"):
            arrays[name] = np.concatenate([r[name] for r in records])
    return arrays


def _config_json(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def load_or_simulate_split(config, split: str, directory: str) -> dict[str, np.ndarray]:
    """The arrays of `split`, read from `<directory>/<split>.npz` or simulated and cached there atomically.

    Arrays: voxels (N, L, H, W, bins) float16, frames (N, L, H, W, 1) float32 in [0, 1], flows (N, L, H, W, 2)
    float16 (dx, dy; the first window's flow is zero and unused; float16 halves the cache), window_ends_us (L,),
    kind (N,) indexing KINDS, contrast_threshold (N,), num_events (N,), dropped_events (N,); the test split also keeps its events
    (events_offsets (N + 1,), events_x, events_y, events_t in us, events_p).
    """
    if split not in SPLITS:
        raise ReconstructionDataError(f"split {split!r}: use one of {SPLITS}.")
    _check_config(config)
    path = os.path.join(directory, f"{split}.npz")
    config_json = _config_json(config)
    if os.path.exists(path):
        with np.load(path) as cached:
            arrays = {name: cached[name] for name in cached.files}
        if str(arrays.pop("config_json")) != config_json:
            raise ReconstructionDataError(
                f"{path} was simulated with another data config; delete it or use another workdir.")
        return arrays
    sequences = split_sequences(config, split)
    if not sequences:
        raise ReconstructionDataError(f"config.data.{split} selects no sequences; give it at least one.")
    keep_events = split == "test"
    records = []
    for number, (kind, index) in enumerate(sequences, start=1):
        records.append(simulate_sequence(config, split, kind, index, keep_events))
        if number % _PROGRESS_EVERY == 0 or number == len(sequences):
            logging.info("Reconstruction data %s: %d/%d sequences", split, number, len(sequences))
    arrays = _stack(records, keep_events)
    window_frames = np.arange(1, config.num_windows + 1) * config.frames_per_window
    arrays["window_ends_us"] = window_frames * (1e6 / config.render_fps)
    dropped = int(arrays["dropped_events"].sum())
    if dropped:
        logging.warning("Reconstruction data %s: the simulator dropped %d of %d events over its per-pixel cap.",
                        split, dropped, int(arrays["num_events"].sum()) + dropped)
    with atomic_target(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, config_json=np.array(config_json), **arrays)
    return arrays
