"""Embedded synthetic Event-ReId-like dataset: rendered walking pedestrians (identity-specific shape, clothing,
gait) seen by cameras with their own background, light, scale, view and direction, simulated into events and
written as ``<root>/<ID>/<camXX>/events.txt`` plus ``frames.npz``. Only the person fires events, as in the
cleaned real data."""

import functools
import json
import math
import os
import shutil
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from anon_jax.events import EventStream, write_event_text
from anon_jax.events.simulator import SimulatorParams, simulate_events_with_stats

MARKER_NAME = "synthetic_dataset.json"
_PROGRESS_EVERY_IDENTITIES = 5


class SyntheticDataError(ValueError):
    """The synthetic dataset folder or its config is unusable."""


def default_synthetic_config() -> ml_collections.ConfigDict:
    """Default config of the embedded dataset (40 ids x 4 cameras, 1.2 s each)."""
    config = ml_collections.ConfigDict()
    config.num_identities = 40  # pedestrians, written as IDs '001', '002', ...
    config.num_cameras = 4  # cameras, written as 'cam01', 'cam02', ...
    config.duration_s = 1.2  # length of every recording in seconds
    config.fps = 250.0  # rendering rate; high enough that limbs move < 1 px per frame
    config.height = 128  # sensor height in pixels (the person fills 75-95% of it)
    config.width = 64  # sensor width in pixels
    config.seed = 0  # one seed for identities, cameras, nuisances and simulator noise
    config.saved_frames_fps = 30.0  # rate of the intensity frames kept in frames.npz (like the 30 FPS RGB)
    config.timestamp_resolution_us = 1.0  # event times are rounded to this (the Prophesee clock is 1 us)
    config.simulator = ml_collections.ConfigDict()
    config.simulator.contrast_threshold_pos = 0.15  # Cp, log step per ON event
    config.simulator.contrast_threshold_neg = 0.15  # Cm, log step per OFF event
    config.simulator.contrast_threshold_sigma = 0.03  # per-pixel, per-frame-pair threshold noise
    config.simulator.refractory_us = 0.0  # minimum time between events of one pixel
    config.simulator.shot_noise_rate_hz = 0.0  # off: noise outside the person would break the bounding box
    config.simulator.log_eps = 1e-3  # eps in log(eps + I)
    config.simulator.max_events_per_pixel_per_frame = 12  # static per-pixel cap per frame pair (about 0.1% dropped)
    config.simulator.frame_pairs_per_call = 100  # frame pairs per compiled simulator call
    return config


def _check_config(config):
    positive_ints = ("num_identities", "num_cameras", "height", "width")
    for name in positive_ints:
        value = config[name]
        if not (isinstance(value, int) and value >= 1):
            raise SyntheticDataError(f"config.{name}={value!r}: must be an integer >= 1.")
    if config.num_identities > 999 or config.num_cameras > 99:
        raise SyntheticDataError("config.num_identities must be <= 999 and config.num_cameras <= 99 "
                                 "(3-digit ids, 2-digit cameras).")
    if config.height < 16 or config.width < 8:
        raise SyntheticDataError(f"config.height/width={config.height}x{config.width}: need at least 16x8.")
    for name in ("duration_s", "fps", "saved_frames_fps", "timestamp_resolution_us"):
        if not config[name] > 0:
            raise SyntheticDataError(f"config.{name}={config[name]!r}: must be > 0.")
    if config.duration_s * config.fps < 2:
        raise SyntheticDataError("config.duration_s * config.fps must give at least 2 frames.")
    return SimulatorParams(**config.simulator.to_dict())


def sample_identity(seed: int, identity: int) -> dict:
    """Identity-specific body shape, clothing and gait (body units: fractions of the person's height)."""
    rng = np.random.default_rng([seed, 0, identity])
    u = rng.uniform
    leg_length = u(0.44, 0.54)
    head_radius = u(0.05, 0.072)
    texture = rng.integers(3)  # 0 plain, 1 stripes, 2 checks
    return dict(
        height=u(0.88, 1.0),  # relative to the camera's person scale
        leg_length=leg_length,
        head_radius=head_radius,
        neck=u(0.015, 0.04),
        shoulder_half_width=u(0.085, 0.14),
        hip_half_width=u(0.075, 0.12),
        waist=u(0.03, 0.12),  # height of the top/bottom clothing border above the hip
        leg_radius=u(0.03, 0.055),
        arm_radius=u(0.022, 0.038),
        arm_length=u(0.36, 0.44),
        lean=u(-0.02, 0.1),
        skin=u(0.3, 0.85),
        hair=u(0.05, 0.6),
        hair_line=u(-0.3, 0.5),
        top=u(0.08, 0.92),
        bottom=u(0.08, 0.92),
        shoes=u(0.05, 0.5),
        long_sleeves=float(rng.random() < 0.6),
        stripes=float(texture == 1),
        checks=float(texture == 2),
        texture_frequency=u(6.0, 20.0),  # cycles per body height
        texture_angle=u(0.0, math.pi),
        texture_contrast=u(0.25, 0.6),
        bottom_stripes=float(rng.random() < 0.25),
        bottom_texture_frequency=u(8.0, 16.0),
        gait_frequency=u(0.8, 1.15),  # stride cycles per second
        leg_swing=u(0.25, 0.45),  # radians
        knee_bend=u(0.3, 0.8),
        arm_swing=u(0.1, 0.55),
        elbow_bend=u(0.05, 0.6),
        bounce=u(0.006, 0.025),
    )


def sample_camera(seed: int, camera: int, height: int, width: int) -> dict:
    """Camera-specific background, illumination, scale, view, walking direction and speed."""
    rng = np.random.default_rng([seed, 1, camera])
    u = rng.uniform
    # Walking directions alternate so every identity is seen walking both ways.
    direction = 1.0 if (camera + seed) % 2 == 0 else -1.0
    return dict(
        direction=direction,
        scale=u(0.76, 0.93),  # person height / sensor height for an identity of height 1
        bottom_margin=u(0.02, 0.05),
        frontal=u(0.0, 1.0),  # 0 side view (narrow body, wide leg swing) .. 1 oblique view
        leg_foreshortening=u(0.85, 1.15),  # camera elevation: legs look shorter or longer than the torso
        side_light=u(-0.6, 0.6),  # horizontal shading gradient across the person, per body height
        drift=u(0.15, 0.32) * width,  # walking speed across the view, px/s
        speed=u(0.85, 1.2),  # gait frequency multiplier (people walk faster in some corridors)
        gain=u(0.6, 1.15),
        offset=u(0.0, 0.08),
        gamma=u(0.6, 1.6),
        edge_px=u(0.8, 2.0),  # optical blur: width of the soft edges; also washes out fine clothing patterns
        roll=u(-0.04, 0.04),  # camera roll in radians
        far_shade=u(0.6, 0.85),  # darkening of the far limbs
        background=_sample_background(rng, height, width),
    )


def _sample_background(rng, height, width):
    """Static background reflectance: wall gradient, smooth blobs, a tiled texture and a floor band."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy /= height
    xx /= width
    u = rng.uniform
    wall = u(0.15, 0.85) + u(-0.2, 0.2) * yy + u(-0.2, 0.2) * xx
    for _ in range(3):
        fy, fx, phase = u(0.5, 3.0), u(0.5, 3.0), u(0, 2 * math.pi)
        wall += u(0.03, 0.1) * np.sin(2 * math.pi * (fy * yy + fx * xx) + phase)
    tile = u(4.0, 14.0)
    wall += u(0.0, 0.08) * np.sign(np.sin(2 * math.pi * tile * yy + u(0, 6)) * np.sin(2 * math.pi * tile * xx))
    floor_line = u(0.8, 0.92)
    floor = u(0.1, 0.8) + 0.1 * np.sin(2 * math.pi * u(2, 6) * xx)
    background = np.where(yy > floor_line, floor, wall)
    return np.clip(background, 0.04, 0.96).astype(np.float32)


def sample_recording_nuisance(seed: int, identity: int, camera: int) -> dict:
    """Small per-recording randomness: gait phase, speed, position, scale and clothing jitter."""
    rng = np.random.default_rng([seed, 2, identity, camera])
    u = rng.uniform
    return dict(
        phase=u(0.0, 2 * math.pi),
        speed=u(0.92, 1.08),
        drift=u(0.85, 1.15),
        scale=u(0.97, 1.03),
        x_offset=u(-0.06, 0.06),  # fraction of the sensor width
        brightness=u(-0.04, 0.04),
    )


def _segment_coverage(px, py, start, end, radius_start, radius_end, edge_px):
    """Anti-aliased coverage (T, H, W) of a tapered capsule from start to end (each (x, y) of (T,) arrays)."""
    sx, sy = start[0][:, None, None], start[1][:, None, None]
    dx, dy = (end[0] - start[0])[:, None, None], (end[1] - start[1])[:, None, None]
    length_sq = jnp.maximum(dx * dx + dy * dy, 1e-6)
    along = jnp.clip(((px - sx) * dx + (py - sy) * dy) / length_sq, 0.0, 1.0)
    distance = jnp.sqrt((px - sx - along * dx) ** 2 + (py - sy - along * dy) ** 2)
    radius = radius_start + along * (radius_end - radius_start)
    return jnp.clip(0.5 + (radius - distance) / edge_px, 0.0, 1.0)


def _square_wave(phase):
    """Soft square wave in [-1, 1]: clothing patterns with sharp but anti-aliased edges."""
    return jnp.clip(3.0 * jnp.sin(phase), -1.0, 1.0)


def _blurred(cycles_per_body, scale_px, edge_px):
    """Contrast left of a pattern after a Gaussian blur of std edge_px / 2 (its transfer function)."""
    cycles_per_px = cycles_per_body / scale_px
    return jnp.exp(-2 * (math.pi * cycles_per_px * 0.5 * edge_px) ** 2)


@functools.partial(jax.jit, static_argnames=("num_frames", "height", "width", "fps"))
def _render_frames(person, camera, background, *, num_frames, height, width, fps):
    """Renders (num_frames, height, width) intensities in [0, 1]; person/camera are dicts of scalars."""
    t = jnp.arange(num_frames, dtype=jnp.float32) / fps
    p, c = person, camera
    # Pixel centres, rotated by the camera roll about the sensor centre (the background is rendered unrolled).
    row = jnp.arange(height, dtype=jnp.float32)[None, :, None] + 0.5 - height / 2
    col = jnp.arange(width, dtype=jnp.float32)[None, None, :] + 0.5 - width / 2
    px = width / 2 + jnp.cos(c["roll"]) * col - jnp.sin(c["roll"]) * row
    py = height / 2 + jnp.sin(c["roll"]) * col + jnp.cos(c["roll"]) * row
    direction = c["direction"]
    scale = c["scale_px"]
    edge = c["edge_px"]
    phase = 2 * math.pi * p["gait_frequency"] * c["speed"] * t + p["phase"]
    hip_x = c["start_x"] + direction * c["drift"] * t
    hip_y = c["hip_y"] - scale * p["bounce"] * jnp.cos(2 * phase)

    foreshortening = c["leg_foreshortening"]

    def to_image(u, v):
        v = jnp.where(v < 0, foreshortening * v, v)
        return hip_x + direction * scale * u, hip_y - scale * v

    def limb(angle, length, u0, v0):
        return u0 + length * jnp.sin(angle), v0 - length * jnp.cos(angle)

    width_factor = 0.6 + 0.4 * c["frontal"]  # frontal body width shows more in oblique views
    swing_factor = 1.0 - 0.45 * c["frontal"]  # and sagittal limb swing less
    shoulder_v = 1.0 - p["leg_length"] - 2 * p["head_radius"] - p["neck"]
    shoulder_u = p["lean"] * shoulder_v
    thigh, shin = 0.52 * p["leg_length"], 0.45 * p["leg_length"]
    upper_arm, forearm = 0.45 * p["arm_length"], 0.4 * p["arm_length"]

    # Body coordinates of every pixel, for textures that move with the body.
    body_u = direction * (px - hip_x[:, None, None]) / scale
    body_v = (hip_y[:, None, None] - py) / scale
    body_v = jnp.where(body_v < 0, body_v / foreshortening, body_v)
    lighting = 1.0 + c["side_light"] * (px - hip_x[:, None, None]) / scale

    top_pattern = _square_wave(2 * math.pi * p["texture_frequency"] *
                               (body_u * jnp.cos(p["texture_angle"]) + body_v * jnp.sin(p["texture_angle"])))
    cross_pattern = _square_wave(2 * math.pi * p["texture_frequency"] *
                                 (-body_u * jnp.sin(p["texture_angle"]) + body_v * jnp.cos(p["texture_angle"])))
    pattern = p["stripes"] * top_pattern + p["checks"] * top_pattern * cross_pattern
    top = jnp.clip(p["top"] * (1 + _blurred(p["texture_frequency"], scale, edge) * p["texture_contrast"] * pattern),
                   0.03, 1.0)
    bottom_pattern = p["bottom_stripes"] * _square_wave(2 * math.pi * p["bottom_texture_frequency"] * body_v)
    bottom = jnp.clip(p["bottom"] * (1 + _blurred(p["bottom_texture_frequency"], scale, edge) * 0.35 * bottom_pattern),
                      0.03, 1.0)

    image = jnp.broadcast_to(background[None], (num_frames, height, width))

    def paint(image, coverage, color):
        return image + coverage * (jnp.clip(color * lighting, 0.0, 1.0) - image)

    def draw_leg(image, side, shade):
        angle = swing_factor * p["leg_swing"] * jnp.sin(phase + side)
        knee_bend = p["knee_bend"] * 0.5 * (1 + jnp.cos(phase + side))
        knee = limb(angle, thigh, 0.0, 0.0)
        ankle = limb(angle - knee_bend, shin, *knee)
        toe = (ankle[0] + 0.09 * jnp.cos(0.4 * (angle - knee_bend)), ankle[1] + 0.09 * jnp.sin(0.4 * angle))
        radius = scale * p["leg_radius"]
        image = paint(image, _segment_coverage(px, py, to_image(0.0, 0.0), to_image(*knee), radius,
                                               0.85 * radius, edge), shade * bottom)
        image = paint(image, _segment_coverage(px, py, to_image(*knee), to_image(*ankle), 0.85 * radius,
                                               0.7 * radius, edge), shade * bottom)
        return paint(image, _segment_coverage(px, py, to_image(*ankle), to_image(*toe), 0.6 * radius,
                                              0.5 * radius, edge), shade * p["shoes"])

    def draw_arm(image, side, shade):
        angle = -swing_factor * p["arm_swing"] * jnp.sin(phase + side)
        elbow_angle = angle + p["elbow_bend"] * (0.6 + 0.4 * jnp.sin(phase + side))
        shoulder = (shoulder_u, shoulder_v - 0.03)
        elbow = limb(angle, upper_arm, *shoulder)
        wrist = limb(elbow_angle, forearm, *elbow)
        hand = limb(elbow_angle, 0.07, *wrist)
        radius = scale * p["arm_radius"]
        sleeve = shade * top
        forearm_color = shade * (p["long_sleeves"] * top + (1 - p["long_sleeves"]) * p["skin"])
        image = paint(image, _segment_coverage(px, py, to_image(*shoulder), to_image(*elbow), radius,
                                               0.9 * radius, edge), sleeve)
        image = paint(image, _segment_coverage(px, py, to_image(*elbow), to_image(*wrist), 0.9 * radius,
                                               0.75 * radius, edge), forearm_color)
        return paint(image, _segment_coverage(px, py, to_image(*wrist), to_image(*hand), 0.9 * radius,
                                              0.9 * radius, edge), shade * p["skin"])

    image = draw_arm(image, math.pi, c["far_shade"])
    image = draw_leg(image, math.pi, c["far_shade"])
    zero = jnp.zeros_like(t)
    torso = _segment_coverage(px, py, to_image(zero - 0.02 * p["lean"], zero - 0.04),
                              to_image(zero + shoulder_u, zero + shoulder_v),
                              scale * width_factor * p["hip_half_width"],
                              scale * width_factor * p["shoulder_half_width"], edge)
    image = paint(image, torso, jnp.where(body_v > p["waist"], top, bottom))
    head_u = shoulder_u + 0.03
    head_v = shoulder_v + p["neck"] + p["head_radius"]
    neck = _segment_coverage(px, py, to_image(zero + shoulder_u, zero + shoulder_v - 0.02),
                             to_image(zero + head_u, zero + head_v), scale * 0.35 * p["head_radius"],
                             scale * 0.4 * p["head_radius"], edge)
    image = paint(image, neck, p["skin"])
    head_center = to_image(zero + head_u, zero + head_v)
    head = _segment_coverage(px, py, head_center, head_center, scale * p["head_radius"],
                             scale * p["head_radius"], edge)
    # Hair covers the top and the back of the head, above an identity-specific hair line.
    head_rel_u, head_rel_v = body_u - head_u, body_v - head_v
    is_hair = (head_rel_v - 0.6 * head_rel_u) > p["hair_line"] * p["head_radius"]
    image = paint(image, head, jnp.where(is_hair, p["hair"], p["skin"]))
    image = draw_leg(image, 0.0, 1.0)
    image = draw_arm(image, 0.0, 1.0)

    reflectance = jnp.clip(image + c["brightness"], 0.0, 1.0)
    return jnp.clip(c["offset"] + c["gain"] * reflectance ** c["gamma"], 0.0, 1.0)


def _as_float32(values):
    return {name: np.float32(value) for name, value in values.items()}


def render_recording(config, identity: int, camera: int):
    """Frames (T, H, W) float32 in [0, 1] and timestamps (T,) float64 in us of one (identity, camera) pair."""
    _check_config(config)
    person = sample_identity(config.seed, identity)
    cam = sample_camera(config.seed, camera, config.height, config.width)
    nuisance = sample_recording_nuisance(config.seed, identity, camera)
    num_frames = int(round(config.duration_s * config.fps)) + 1
    # Pixels per body unit, chosen so that the foreshortened person is scale * height tall on the sensor.
    scale_px = (cam["scale"] * person["height"] * nuisance["scale"] * config.height
                / (1 + person["leg_length"] * (cam["leg_foreshortening"] - 1)))
    drift = cam["drift"] * nuisance["drift"]
    start_x = (config.width / 2 + config.width * nuisance["x_offset"]
               - cam["direction"] * drift * config.duration_s / 2)
    camera_values = {name: value for name, value in cam.items() if name != "background"}
    camera_values.update(
        scale_px=scale_px, speed=cam["speed"] * nuisance["speed"], drift=drift, start_x=start_x,
        hip_y=config.height * (1 - cam["bottom_margin"]) - scale_px * person["leg_length"] * cam["leg_foreshortening"],
        brightness=nuisance["brightness"])
    person_values = dict(person, phase=nuisance["phase"])
    frames = _render_frames(_as_float32(person_values), _as_float32(camera_values), jnp.asarray(cam["background"]),
                            num_frames=num_frames, height=config.height, width=config.width,
                            fps=float(config.fps))
    timestamps_us = np.arange(num_frames, dtype=np.float64) * (1e6 / config.fps)
    return np.asarray(frames), timestamps_us


def _recording_events(config, params, identity, camera, frames, timestamps_us):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), identity), camera)
    stream, dropped = simulate_events_with_stats(frames, timestamps_us, params, key)
    resolution = config.timestamp_resolution_us
    t = np.round(stream.t / resolution) * resolution  # monotone, so the order is kept
    stream = EventStream(x=stream.x, y=stream.y, t=t, p=stream.p, height=stream.height, width=stream.width,
                         source=stream.source)
    return stream, dropped


def _config_json(config):
    return json.loads(json.dumps(config.to_dict(), sort_keys=True))


def _read_marker(root):
    path = os.path.join(root, MARKER_NAME)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def generate(root, config=None) -> dict:
    """Generates the dataset into root (cached: a completed root with the same config is reused).

    Writes to a temporary sibling folder and renames it at the end, so an interrupted run leaves no partial
    dataset. Raises SyntheticDataError if root holds a different config or unrelated files.
    Returns a summary dict (also stored in the completion marker).
    """
    config = default_synthetic_config() if config is None else config
    params = _check_config(config)
    root = os.path.abspath(os.fspath(root))
    config_json = _config_json(config)
    marker = _read_marker(root)
    if marker is not None:
        if marker["config"] != config_json:
            raise SyntheticDataError(
                f"{root} holds a synthetic dataset generated with another config (see {MARKER_NAME} there); "
                "delete that folder or choose another root.")
        logging.info("Synthetic dataset already complete in %s; skipping generation.", root)
        return dict(marker["summary"], skipped=True)
    if os.path.exists(root) and os.listdir(root):
        raise SyntheticDataError(
            f"{root} exists, is not empty and has no {MARKER_NAME}; delete it or choose another root.")

    partial = root + ".partial"
    if os.path.exists(partial):
        shutil.rmtree(partial)  # left behind by an interrupted run
    os.makedirs(partial)
    started = time.time()
    event_counts, dropped_total, recordings = [], 0, []
    for identity in range(1, config.num_identities + 1):
        for camera in range(1, config.num_cameras + 1):
            frames, timestamps_us = render_recording(config, identity, camera)
            stream, dropped = _recording_events(config, params, identity, camera, frames, timestamps_us)
            folder = os.path.join(partial, f"{identity:03d}", f"cam{camera:02d}")
            os.makedirs(folder)
            write_event_text(os.path.join(folder, "events.txt"), stream, header=True)
            keep_every = max(1, int(round(config.fps / config.saved_frames_fps)))
            np.savez_compressed(os.path.join(folder, "frames.npz"),
                                frames=np.round(frames[::keep_every] * 255).astype(np.uint8),
                                timestamps_us=timestamps_us[::keep_every])
            event_counts.append(len(stream))
            dropped_total += dropped
            recordings.append(dict(identity=f"{identity:03d}", camera=f"cam{camera:02d}", num_events=len(stream)))
        if identity % _PROGRESS_EVERY_IDENTITIES == 0 or identity == config.num_identities:
            logging.info("Synthetic dataset: %d/%d identities, %d events so far, %.1f s.", identity,
                         config.num_identities, sum(event_counts), time.time() - started)
    if dropped_total:
        logging.warning("Synthetic dataset: the simulator dropped %d events (%.4f%%) over its per-pixel cap.",
                        dropped_total, 100 * dropped_total / max(1, sum(event_counts) + dropped_total))
    summary = dict(
        root=root, num_identities=config.num_identities, num_cameras=config.num_cameras,
        num_recordings=len(event_counts), total_events=int(sum(event_counts)),
        min_events_per_recording=int(min(event_counts)), max_events_per_recording=int(max(event_counts)),
        dropped_events=int(dropped_total), generation_seconds=round(time.time() - started, 2),
        recordings=recordings)
    with open(os.path.join(partial, MARKER_NAME), "w", encoding="utf-8") as f:
        json.dump(dict(config=config_json, summary=summary), f, indent=1, sort_keys=True)
    if os.path.exists(root):
        os.rmdir(root)  # empty (checked above); rename needs the name free
    os.rename(partial, root)
    return dict(summary, skipped=False)
