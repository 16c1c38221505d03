"""Embedded synthetic Event-ReId-like dataset: rendered pedestrians (identity-specific shape, clothing, gait) seen
by cameras with their own background, light, scale, view and direction, simulated into events. Only the person
fires events, as in the cleaned real data.

Layouts: with ``num_actions = 0`` people walk across the view, one recording per (identity, camera), written as
``<root>/<ID>/<camXX>/events.txt`` plus ``frames.npz``. With ``num_actions >= 1`` every identity performs every
one of the first ``num_actions`` ACTIONS under every one of the first ``num_lighting`` LIGHTING conditions in
every camera, written as ``<root>/<ID>/<camXX>_<action>_<lighting>/`` (e.g. ``007/cam02_wave_dim/``).
``render_colour_recording`` renders the same recordings in RGB (the pedestrian images of synthetic_images.py).
"""

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
_SWAY = 0.02  # body units: amplitude of the standing actions' weight shifts
_SWAY_HERTZ = 0.8  # slow, so the sway never looks like an action of its own
# Actions in the order `num_actions` takes them: the first four differ most (travel, one raised arm, whole-body
# vertical motion, slow deep knee bends). All but "walk" are performed standing in place.
ACTIONS = ("walk", "wave", "jump", "squat", "punch", "kick")
# Lighting conditions in the order `num_lighting` takes them, as changes of the camera response
# offset + gain * reflectance ** gamma. Events see log intensity, so a gain alone would only shift it: the
# conditions also change gamma (log contrast) and add a veiling offset (compresses log contrast), which changes
# how many events the same motion fires.
LIGHTING = {
    "normal": dict(gain=1.0, gamma=1.0, offset=0.0),
    "dim": dict(gain=0.3, gamma=0.7, offset=0.02),  # low light, flat contrast: fewer events (median 0.4x)
    "bright": dict(gain=1.35, gamma=1.3, offset=0.0),  # harsh light: more contrast, some highlights clip
    "hazy": dict(gain=0.7, gamma=1.0, offset=0.3),  # veiling glare: strongly compressed log contrast
}
_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 weights: grey reflectances are the luma of the colour ones
_SCENE_WIDTHS = 4  # a colour camera's scene is this many crops wide (see render_colour_recording)


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
    # 1..6: the first num_actions of ACTIONS, each performed by every identity in every camera and lighting.
    config.num_actions = 0  # 0: walking only, layout <ID>/<camXX>/; else <ID>/<camXX>_<action>_<lighting>/
    config.num_lighting = 1  # the first num_lighting of LIGHTING; must be 1 when num_actions = 0
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
    num_actions, num_lighting = _num_actions(config), _num_lighting(config)
    if not (isinstance(num_actions, int) and 0 <= num_actions <= len(ACTIONS)):
        raise SyntheticDataError(f"config.num_actions={num_actions!r}: must be an integer in 0..{len(ACTIONS)} "
                                 f"(0 = walking only; else the first ones of {ACTIONS}).")
    if not (isinstance(num_lighting, int) and 1 <= num_lighting <= len(LIGHTING)):
        raise SyntheticDataError(f"config.num_lighting={num_lighting!r}: must be an integer in 1..{len(LIGHTING)} "
                                 f"(the first ones of {tuple(LIGHTING)}).")
    if num_actions == 0 and num_lighting != 1:
        raise SyntheticDataError(f"config.num_lighting={num_lighting}: lighting conditions need actions; set "
                                 "config.num_actions >= 1 or config.num_lighting = 1.")
    return SimulatorParams(**config.simulator.to_dict())


def _num_actions(config):
    # Configs saved before actions existed lack the fields; they mean the walking-only dataset.
    return config.get("num_actions", 0)


def _num_lighting(config):
    return config.get("num_lighting", 1)


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
    return _placement_nuisance(np.random.default_rng([seed, 2, identity, camera]))


def _placement_nuisance(rng) -> dict:
    u = rng.uniform
    return dict(
        phase=u(0.0, 2 * math.pi),
        speed=u(0.92, 1.08),
        drift=u(0.85, 1.15),
        scale=u(0.97, 1.03),
        x_offset=u(-0.06, 0.06),  # fraction of the sensor width
        brightness=u(-0.04, 0.04),
    )


def sample_action_nuisance(seed: int, identity: int, camera: int, action: str, lighting: str) -> dict:
    """Per-recording randomness of an action recording: the walking nuisances plus the action's tempo and
    amplitude, which depend on the recording only, never on the identity."""
    rng = np.random.default_rng([seed, 3, identity, camera, ACTIONS.index(action), list(LIGHTING).index(lighting)])
    placement = _placement_nuisance(rng)
    return dict(placement,
                tempo=rng.uniform(0.88, 1.12),  # frequency multiplier of the action's motion
                amplitude=rng.uniform(0.85, 1.1))  # of the action's joint excursions


def rgb_from_luma(luma: float, hue: float, saturation: float) -> np.ndarray:
    """RGB (3,) in [0, 1] of Rec. 601 luma `luma`, hue `hue` (radians in the Cb-Cr plane) and chroma
    `saturation * luma`; clipping only changes very saturated bright colours."""
    cb, cr = saturation * luma * math.cos(hue), saturation * luma * math.sin(hue)
    return np.clip([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], 0.0, 1.0)


def sample_identity_colours(seed: int, identity: int) -> dict:
    """RGB (3,) reflectances of the identity's skin, hair, top, bottom and shoes. Their luma is the grey
    reflectance of sample_identity (up to clipping), so a colour render looks like the grey one in colour."""
    rng = np.random.default_rng([seed, 4, identity])
    grey = sample_identity(seed, identity)
    u = rng.uniform

    def clothing(luma):  # about a third of garments are black, grey or white
        saturation = u(0.0, 0.08) if rng.random() < 0.3 else u(0.25, 0.8)
        return rgb_from_luma(luma, u(0.0, 2 * math.pi), saturation)

    # Skin and hair tones lie in the orange-red sector of the Cb-Cr plane (hue about 1.9..2.4 rad).
    return dict(skin=rgb_from_luma(grey["skin"], u(1.9, 2.4), u(0.15, 0.35)),
                hair=rgb_from_luma(grey["hair"], u(1.9, 2.4), u(0.0, 0.4)),
                top=clothing(grey["top"]), bottom=clothing(grey["bottom"]),
                shoes=rgb_from_luma(grey["shoes"], u(0.0, 2 * math.pi), u(0.0, 0.2)))


def sample_camera_colours(seed: int, camera: int) -> dict:
    """Response of the camera's colour sensor: offset + gain * (white_balance * reflectance) ** gamma per
    channel, with a luma-neutral white balance (colour cast), and the tints of its scene's left and right ends.
    Colour cameras expose automatically, so gain and gamma vary less than the event sensor's (sample_camera)."""
    rng = np.random.default_rng([seed, 5, camera])
    u = rng.uniform
    white_balance = np.exp(u(-0.05, 0.05, size=3))
    return dict(gain=u(0.8, 1.1), gamma=u(0.8, 1.25), offset=u(0.0, 0.04),
                white_balance=white_balance / (_LUMA @ white_balance),
                left_tint=rgb_from_luma(1.0, u(0.0, 2 * math.pi), u(0.0, 0.25)),
                right_tint=rgb_from_luma(1.0, u(0.0, 2 * math.pi), u(0.0, 0.25)))


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


def _walk_pose(p, c, t, swing_factor):
    """Walking across the view with the identity's gait (the one motion that is identity-specific).

    A pose holds the hip position (T,) in pixels, the torso lean (body units of forward shift per unit of
    height) and per side (pi: far, 0: near) the leg's (thigh angle, knee bend) and the arm's (upper arm angle,
    forearm angle), angles in radians from hanging down, positive forward.
    """
    phase = 2 * math.pi * p["gait_frequency"] * c["speed"] * t + p["phase"]
    legs, arms = {}, {}
    for side in (math.pi, 0.0):
        legs[side] = (swing_factor * p["leg_swing"] * jnp.sin(phase + side),
                      p["knee_bend"] * 0.5 * (1 + jnp.cos(phase + side)))
        arm_angle = -swing_factor * p["arm_swing"] * jnp.sin(phase + side)
        arms[side] = (arm_angle, arm_angle + p["elbow_bend"] * (0.6 + 0.4 * jnp.sin(phase + side)))
    return dict(hip_x=c["start_x"] + c["direction"] * c["drift"] * t,
                hip_y=c["hip_y"] - c["scale_px"] * p["bounce"] * jnp.cos(2 * phase),
                lean=p["lean"], legs=legs, arms=arms)


def _knee_bend(thigh_angle, thigh, shin):
    """Knee bend and hip drop (body units) when the thigh leans forward and the ankle stays below the hip."""
    shin_back = jnp.arcsin(jnp.clip(thigh * jnp.sin(thigh_angle) / shin, 0.0, 0.999))
    drop = thigh + shin - thigh * jnp.cos(thigh_angle) - shin * jnp.cos(shin_back)
    return thigh_angle + shin_back, drop


def _standing_pose(action, p, c, t):
    """Pose of an action performed in place: the motion comes from the action and the recording's tempo,
    amplitude and phase; the identity only enters through its body proportions (and its resting lean)."""
    def cycle(hertz):
        return 2 * math.pi * hertz * c["tempo"] * t + p["phase"]

    ones = jnp.ones_like(t)
    amplitude = c["amplitude"]
    thigh, shin = 0.52 * p["leg_length"], 0.45 * p["leg_length"]
    drop = jnp.zeros_like(t)  # hip lowering in body units (knee bends)
    lift = jnp.zeros_like(t)  # hip raising in body units (flight)
    lean = p["lean"] * ones
    legs = {math.pi: (-0.06 * ones, 0.05 * ones), 0.0: (0.06 * ones, 0.05 * ones)}
    arms = {math.pi: (-0.05 * ones, 0.1 * ones), 0.0: (0.08 * ones, 0.25 * ones)}
    if action == "wave":  # near upper arm raised, forearm waving fore and aft beside the head
        phase = cycle(2.2)
        arms[0.0] = (2.0 + 0.12 * amplitude * jnp.sin(phase), math.pi - 0.2 + 0.5 * amplitude * jnp.sin(phase - 0.6))
    elif action == "jump":  # crouch, take off with both arms swinging up, land
        rise = jnp.sin(cycle(1.5))
        lift = 0.08 * amplitude * jnp.maximum(rise, 0.0)
        thigh_angle = 0.7 * amplitude * jnp.maximum(-rise, 0.0)
        knee_bend, drop = _knee_bend(thigh_angle, thigh, shin)
        legs = {side: (thigh_angle, knee_bend) for side in (math.pi, 0.0)}
        arm_angle = amplitude * (0.6 + 0.9 * rise)
        arms = {side: (arm_angle + 0.1 * side, arm_angle + 0.2) for side in (math.pi, 0.0)}
    elif action == "squat":  # slow deep knee bends, arms reaching forward, torso leaning in
        depth = 0.5 * (1 - jnp.cos(cycle(1.2)))
        thigh_angle = 0.95 * amplitude * depth
        knee_bend, drop = _knee_bend(thigh_angle, thigh, shin)
        legs = {side: (thigh_angle, knee_bend) for side in (math.pi, 0.0)}
        arms = {side: (1.5 * amplitude * depth - 0.05 * side, 1.6 * amplitude * depth) for side in (math.pi, 0.0)}
        lean = lean + 0.3 * depth
    elif action == "punch":  # alternating straight punches from a guard at the chin, staggered stance
        phase = cycle(1.6)
        legs = {math.pi: (-0.15 * ones, 0.1 * ones), 0.0: (0.15 * ones, 0.1 * ones)}
        for side in (math.pi, 0.0):
            extension = amplitude * jnp.maximum(jnp.sin(phase + side), 0.0) ** 2
            arms[side] = (0.7 + 0.85 * extension, 2.4 - 0.85 * extension)
    elif action == "kick":  # the near leg kicks forward and comes back, arms balancing
        kick = jnp.clip(amplitude * jnp.maximum(jnp.sin(cycle(1.1)), 0.0) ** 2, 0.0, 1.0)
        legs[0.0] = (1.1 * kick, 0.05 + 0.6 * jnp.sin(math.pi * kick))
        arms = {math.pi: (0.5 * kick, 0.5 * kick + 0.1), 0.0: (-0.3 * kick, -0.3 * kick + 0.25)}
    # Weight shifts sway the whole body a little, so its silhouette (not only the moving limbs) fires events.
    sway = c["scale_px"] * _SWAY * jnp.sin(cycle(_SWAY_HERTZ))
    return dict(hip_x=c["start_x"] + c["direction"] * sway,
                hip_y=c["hip_y"] + c["scale_px"] * (c["leg_foreshortening"] * drop - lift),
                lean=lean, legs=legs, arms=arms)


@functools.partial(jax.jit, static_argnames=("num_frames", "height", "width", "fps", "action"))
def _render_frames(person, camera, background, *, num_frames, height, width, fps, action="walk"):
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
    swing_factor = 1.0 - 0.45 * c["frontal"]  # oblique views show less sagittal limb swing
    if action == "walk":
        pose = _walk_pose(p, c, t, swing_factor)
    else:
        pose = _standing_pose(action, p, c, t)
    hip_x, hip_y = pose["hip_x"], pose["hip_y"]

    foreshortening = c["leg_foreshortening"]

    def to_image(u, v):
        v = jnp.where(v < 0, foreshortening * v, v)
        return hip_x + direction * scale * u, hip_y - scale * v

    def limb(angle, length, u0, v0):
        return u0 + length * jnp.sin(angle), v0 - length * jnp.cos(angle)

    width_factor = 0.6 + 0.4 * c["frontal"]  # frontal body width shows more in oblique views
    shoulder_v = 1.0 - p["leg_length"] - 2 * p["head_radius"] - p["neck"]
    shoulder_u = pose["lean"] * shoulder_v
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
        angle, knee_bend = pose["legs"][side]
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
        angle, elbow_angle = pose["arms"][side]
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
    torso = _segment_coverage(px, py, to_image(zero - 0.02 * pose["lean"], zero - 0.04),
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
    head_rel_u, head_rel_v = body_u - jnp.reshape(head_u, (-1, 1, 1)), body_v - head_v
    is_hair = (head_rel_v - 0.6 * head_rel_u) > p["hair_line"] * p["head_radius"]
    image = paint(image, head, jnp.where(is_hair, p["hair"], p["skin"]))
    image = draw_leg(image, 0.0, 1.0)
    image = draw_arm(image, 0.0, 1.0)

    reflectance = jnp.clip(image + c["brightness"], 0.0, 1.0)
    return jnp.clip(c["offset"] + c["gain"] * reflectance ** c["gamma"], 0.0, 1.0)


def _as_float32(values):
    return {name: np.float32(value) for name, value in values.items()}


def _check_action(action, lighting):
    if action is None:
        if lighting is not None:
            raise SyntheticDataError(f"lighting={lighting!r} needs an action (one of {ACTIONS}).")
        return
    if action not in ACTIONS:
        raise SyntheticDataError(f"action={action!r}: use one of {ACTIONS}.")
    if lighting not in LIGHTING:
        raise SyntheticDataError(f"lighting={lighting!r}: use one of {tuple(LIGHTING)}.")


def _recording_inputs(config, identity, camera, action, lighting):
    """The scalar person and camera values, the background and the frame count `_render_frames` takes for
    one recording (see render_recording)."""
    _check_config(config)
    if action is not None and lighting is None:
        lighting = next(iter(LIGHTING))
    _check_action(action, lighting)
    person = sample_identity(config.seed, identity)
    cam = sample_camera(config.seed, camera, config.height, config.width)
    if action is None:
        nuisance = sample_recording_nuisance(config.seed, identity, camera)
    else:
        nuisance = sample_action_nuisance(config.seed, identity, camera, action, lighting)
    num_frames = int(round(config.duration_s * config.fps)) + 1
    # Pixels per body unit, chosen so that the foreshortened person is scale * height tall on the sensor.
    scale_px = (cam["scale"] * person["height"] * nuisance["scale"] * config.height
                / (1 + person["leg_length"] * (cam["leg_foreshortening"] - 1)))
    drift = cam["drift"] * nuisance["drift"] if action in (None, "walk") else 0.0  # other actions stay in place
    start_x = (config.width / 2 + config.width * nuisance["x_offset"]
               - cam["direction"] * drift * config.duration_s / 2)
    camera_values = {name: value for name, value in cam.items() if name != "background"}
    camera_values.update(
        scale_px=scale_px, speed=cam["speed"] * nuisance["speed"], drift=drift, start_x=start_x,
        hip_y=config.height * (1 - cam["bottom_margin"]) - scale_px * person["leg_length"] * cam["leg_foreshortening"],
        brightness=nuisance["brightness"])
    if action is not None:
        light = LIGHTING[lighting]
        camera_values.update(tempo=nuisance["tempo"], amplitude=nuisance["amplitude"],
                             gain=cam["gain"] * light["gain"], gamma=cam["gamma"] * light["gamma"],
                             offset=cam["offset"] + light["offset"])
    person_values = dict(person, phase=nuisance["phase"])
    return person_values, camera_values, cam["background"], num_frames


def render_recording(config, identity: int, camera: int, action: str | None = None,
                     lighting: str | None = None):
    """Frames (T, H, W) float32 in [0, 1] and timestamps (T,) float64 in us of one recording.

    Without `action`: the walking-only dataset's (identity, camera) recording. With an action of ACTIONS and a
    lighting of LIGHTING (default "normal"): that recording of the action dataset.
    """
    person_values, camera_values, background, num_frames = _recording_inputs(config, identity, camera, action,
                                                                             lighting)
    frames = _render_frames(_as_float32(person_values), _as_float32(camera_values), jnp.asarray(background),
                            num_frames=num_frames, height=config.height, width=config.width,
                            fps=float(config.fps), action=action or "walk")
    timestamps_us = np.arange(num_frames, dtype=np.float64) * (1e6 / config.fps)
    return np.asarray(frames), timestamps_us


def render_colour_recording(config, identity: int, camera: int):
    """RGB frames (T, H, W, 3) float32 in [0, 1] and timestamps (T,) float64 in us of a walking recording:
    the person, poses and camera geometry of render_recording's grey one, with the identity's colours, the
    camera's colour response and a tinted background window. Each channel is rendered by the grey renderer with
    that channel's reflectances, so shapes, poses and clothing patterns are the grey recording's."""
    person_values, camera_values, _, num_frames = _recording_inputs(config, identity, camera, None, None)
    colours = sample_identity_colours(config.seed, identity)
    response = sample_camera_colours(config.seed, camera)
    # Detection boxes are cut at different places of a camera's scene: each recording sees its own window of a
    # background _SCENE_WIDTHS crops wide (only the background is taken from that wider camera).
    scene = sample_camera(config.seed, camera, config.height, _SCENE_WIDTHS * config.width)["background"]
    rng = np.random.default_rng([config.seed, 6, identity, camera])
    left = rng.integers(scene.shape[1] - config.width + 1)
    exposure = np.exp(rng.uniform(-0.15, 0.15))  # automatic exposure reacts to each scene window and person
    grey = scene[:, left:left + config.width, None]
    # The tint drifts across the scene (from the left tint to the right one), so windows differ in colour too.
    across = (left + np.arange(config.width)[None, :, None]) / (scene.shape[1] - 1)
    tint = response["left_tint"] + across * (response["right_tint"] - response["left_tint"])
    background = np.clip(grey * tint, 0.04, 0.96)
    channels = []
    for channel in range(3):
        person_channel = dict(person_values, **{name: colour[channel] for name, colour in colours.items()})
        # Scaling the reflectance by the white balance is the same as scaling the gain by white_balance ** gamma.
        gain = exposure * response["gain"] * response["white_balance"][channel] ** response["gamma"]
        camera_channel = dict(camera_values, offset=response["offset"], gamma=response["gamma"], gain=gain)
        channels.append(_render_frames(_as_float32(person_channel), _as_float32(camera_channel),
                                       jnp.asarray(background[..., channel], jnp.float32),
                                       num_frames=num_frames, height=config.height, width=config.width,
                                       fps=float(config.fps)))
    timestamps_us = np.arange(num_frames, dtype=np.float64) * (1e6 / config.fps)
    return np.stack([np.asarray(frames) for frames in channels], axis=-1), timestamps_us


def _recording_events(config, params, recording, frames, timestamps_us):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), recording["identity"]),
                             recording["camera"])
    if recording["action"] is not None:
        key = jax.random.fold_in(jax.random.fold_in(key, ACTIONS.index(recording["action"])),
                                 list(LIGHTING).index(recording["lighting"]))
    stream, dropped = simulate_events_with_stats(frames, timestamps_us, params, key)
    resolution = config.timestamp_resolution_us
    t = np.round(stream.t / resolution) * resolution  # monotone, so the order is kept
    stream = EventStream(x=stream.x, y=stream.y, t=t, p=stream.p, height=stream.height, width=stream.width,
                         source=stream.source)
    return stream, dropped


def _config_json(config):
    values = config.to_dict()
    if not _num_actions(config):
        # The walking-only dataset keeps the marker it had before actions existed, so caches stay valid.
        values.pop("num_actions", None)
        values.pop("num_lighting", None)
    return json.loads(json.dumps(values, sort_keys=True))


def recordings(config) -> list[dict]:
    """The recordings of a config in generation order: dicts with int "identity" and "camera", "action" and
    "lighting" names (None when num_actions = 0) and "folder", the path relative to the root ("/"-separated)."""
    actions = ACTIONS[:_num_actions(config)] or (None,)
    lightings = tuple(LIGHTING)[:_num_lighting(config)] if _num_actions(config) else (None,)
    listed = []
    for identity in range(1, config.num_identities + 1):
        for camera in range(1, config.num_cameras + 1):
            for action in actions:
                for lighting in lightings:
                    folder = f"cam{camera:02d}" if action is None else f"cam{camera:02d}_{action}_{lighting}"
                    listed.append(dict(identity=identity, camera=camera, action=action, lighting=lighting,
                                       folder=f"{identity:03d}/{folder}"))
    return listed


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
    Returns a summary dict (also stored in the completion marker). Its "recordings" entries hold "identity",
    "camera" and "num_events", with actions also "action", "lighting" and "folder" (relative to root); the
    summary then also lists the "actions" and "lighting_conditions" in use.
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
    event_counts, dropped_total, entries = [], 0, []
    keep_every = max(1, int(round(config.fps / config.saved_frames_fps)))
    listed = recordings(config)
    for index, recording in enumerate(listed):
        identity = recording["identity"]
        frames, timestamps_us = render_recording(config, identity, recording["camera"], recording["action"],
                                                 recording["lighting"])
        stream, dropped = _recording_events(config, params, recording, frames, timestamps_us)
        folder = os.path.join(partial, recording["folder"])
        os.makedirs(folder)
        write_event_text(os.path.join(folder, "events.txt"), stream, header=True)
        np.savez_compressed(os.path.join(folder, "frames.npz"),
                            frames=np.round(frames[::keep_every] * 255).astype(np.uint8),
                            timestamps_us=timestamps_us[::keep_every])
        event_counts.append(len(stream))
        dropped_total += dropped
        entry = dict(identity=f"{identity:03d}", camera=f"cam{recording['camera']:02d}", num_events=len(stream))
        if recording["action"] is not None:
            entry.update(action=recording["action"], lighting=recording["lighting"], folder=recording["folder"])
        entries.append(entry)
        last_of_identity = index + 1 == len(listed) or listed[index + 1]["identity"] != identity
        if last_of_identity and (identity % _PROGRESS_EVERY_IDENTITIES == 0 or identity == config.num_identities):
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
        recordings=entries)
    if _num_actions(config):
        summary.update(num_actions=_num_actions(config), num_lighting=_num_lighting(config),
                       actions=list(ACTIONS[:_num_actions(config)]),
                       lighting_conditions=list(LIGHTING)[:_num_lighting(config)])
    with open(os.path.join(partial, MARKER_NAME), "w", encoding="utf-8") as f:
        json.dump(dict(config=config_json, summary=summary), f, indent=1, sort_keys=True)
    if os.path.exists(root):
        os.rmdir(root)  # empty (checked above); rename needs the name free
    os.rename(partial, root)
    return dict(summary, skipped=False)
