"""Simulates an event camera watching a video or an image sequence and writes the events to a file.

python -m anon_jax.simulate (--video IN.mp4 | --frames DIR) --out OUT.h5 [--fps F] [--timestamps FILE]
    [--height H] [--width W] [--start S] [--duration S] [--max-frames N] [--interpolate N]
    [--contrast-threshold-pos C] [--contrast-threshold-neg C] [--threshold-sigma S] [--refractory-us T]
    [--shot-noise-hz R] [--max-events-per-pixel N] [--seed K] [--overwrite]

Frames become grayscale with ITU-R BT.601 luma (Pillow's "L": Y = 0.299 R + 0.587 G + 0.114 B), are optionally
resized (Pillow bilinear), scaled to [0, 1] and fed to the ESIM-style simulator `anon_jax.events.simulator` in
blocks, so memory stays bounded for long videos; each block's events are written as they come. The output
format follows the extension: .h5/.hdf5 the interchange HDF5 (DSEC layout), .txt text; it appears complete
or not at all.

Frame times: a video's presentation timestamps (PTS x time base, from the stream's start time, before which
frames are skipped; a frame without one comes 1/fps after the previous), an image folder's `--fps` (default 30,
frame k at k / fps) or `--timestamps` (one time per line, seconds). Event times are integer microseconds on that
timeline (rounded to the nearest microsecond).

`--interpolate N` inserts N - 1 frames between consecutive frames, blended linearly in intensity at evenly
spaced times, so every frame interval becomes N simulator frame pairs. This helps fast motion stay under the
per-pixel cap on events per frame pair and spreads a pixel's events over the interval in the simulator's
per-pair steps. It is a cross-fade, not motion interpolation (a moving edge fades rather than moves), so for
very fast motion a higher frame rate or an optical-flow interpolator (as in ESIM / v2e) is more faithful.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import itertools
import math
import os
import pathlib
import re
import sys
from collections.abc import Iterator

import jax
import numpy as np
from PIL import Image

from anon_jax.events.container import Events, MissingDependencyError, import_optional
from anon_jax.events.simulator import Simulator, SimulatorInputError, SimulatorParams
from anon_jax.events.stream import EventFormatError
from anon_jax.progress import ProgressBar

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
OUTPUT_EXTENSIONS = (".h5", ".hdf5", ".txt")
# Device memory per compiled call (6 bytes per event slot, see SimulatorParams.frame_pairs_per_call).
_SEGMENT_BUDGET_BYTES = 128 << 20
_MAX_PAIRS_PER_CALL = 64


class SimulateError(ValueError):
    """Bad input or options for the simulate command: the message says what to change."""


def _natural_key(name: str):
    """frame_2 before frame_10: digit runs compare as numbers (zero-padded names sort as usual)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def to_gray(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """A frame as float32 gray in [0, 1]: BT.601 luma (Pillow "L"), resized to size (width, height) bilinearly.

    16-bit grayscale images keep their precision (value / 65535).
    """
    if image.mode.startswith("I;16"):
        gray, full_scale = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F"), 65535.0
    else:
        gray, full_scale = image.convert("L"), 255.0
    if size is not None and gray.size != size:
        gray = gray.resize(size, Image.BILINEAR)
    return np.clip(np.asarray(gray, dtype=np.float32) / np.float32(full_scale), 0.0, 1.0)


def output_size(width: int, height: int, out_width: int | None, out_height: int | None) -> tuple[int, int] | None:
    """(width, height) after --width/--height; one of them alone keeps the aspect ratio; None means unchanged."""
    if out_width is None and out_height is None:
        return None
    if out_width is None:
        out_width = max(1, round(width * out_height / height))
    if out_height is None:
        out_height = max(1, round(height * out_width / width))
    return out_width, out_height


class FrameSource:
    """Frames of a video or an image folder as (PIL image, name, time in microseconds), in order.

    `estimated_frames` is for the progress bar (None when unknown); `skipped` counts frames before --start or
    before the video stream's start.
    """

    def __init__(self, frames: Iterator[tuple[Image.Image, str, float]], estimated_frames: int | None,
                 description: str, on_close=None):
        self.frames, self.estimated_frames, self.description = frames, estimated_frames, description
        self._on_close = on_close

    def close(self) -> None:
        """Stops reading (closes the video), also when the frames were not read to the end."""
        self.frames.close()
        if self._on_close is not None:
            self._on_close()


def _in_range(time_us: float, start_s: float | None, duration_s: float | None) -> int:
    """-1 before --start, 0 inside, 1 at or after --start + --duration."""
    start_us = (start_s or 0.0) * 1e6
    if time_us < start_us:
        return -1
    if duration_s is not None and time_us >= start_us + duration_s * 1e6:
        return 1
    return 0


def open_video(path: str, *, fps: float | None = None, start_s: float | None = None,
               duration_s: float | None = None) -> FrameSource:
    """The first video stream of `path`, decoded with PyAV, timed by PTS (see the module doc)."""
    av = import_optional("av", "reading videos")
    if not os.path.isfile(path):
        raise SimulateError(f"{path}: no such video file.")
    try:
        container = av.open(path)
    except av.FFmpegError as error:
        raise SimulateError(f"{path}: cannot open the video ({error}).") from None
    if not container.streams.video:
        container.close()
        raise SimulateError(f"{path}: has no video stream.")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    time_base = stream.time_base or fractions.Fraction(1, 1_000_000)
    origin = stream.start_time or 0
    rate = fps or (float(stream.average_rate) if stream.average_rate else None)
    estimated = stream.frames or None
    if not estimated and rate:
        if stream.duration:
            estimated = math.ceil(float(stream.duration * time_base) * rate)
        elif container.duration:  # in microseconds (AV_TIME_BASE)
            estimated = math.ceil(container.duration / 1e6 * rate)
    if estimated and rate:
        if start_s:
            estimated = max(0, estimated - int(start_s * rate))
        if duration_s is not None:
            estimated = min(estimated, math.ceil(duration_s * rate))

    def frames():
        previous = None
        try:
            if start_s:
                # Seek to the keyframe before --start; frames before it are skipped below.
                try:
                    container.seek(origin + int(start_s / time_base), stream=stream, backward=True)
                except av.FFmpegError:
                    container.seek(0, stream=stream)
            for frame in container.decode(stream):
                if frame.pts is not None:
                    time_us = float((frame.pts - origin) * time_base * 1_000_000)
                elif previous is not None and rate:
                    time_us = previous + 1e6 / rate
                elif previous is None:
                    time_us = 0.0
                else:
                    raise SimulateError(f"{path}: a frame after {previous / 1e6:.6f} s has no timestamp and the "
                                        "stream states no frame rate; pass --fps.")
                position = _in_range(time_us, start_s, duration_s) if time_us >= 0 else -1
                if position < 0:
                    continue
                if position > 0:
                    break
                previous = time_us
                yield frame.to_image(), f"{path}: the frame at {time_us / 1e6:.6f} s", time_us
        except av.FFmpegError as error:
            raise SimulateError(f"{path}: cannot decode the video ({error}).") from None
        finally:
            container.close()

    width, height = stream.codec_context.width, stream.codec_context.height
    return FrameSource(frames(), estimated, f"{path} ({stream.codec_context.name}, {width}x{height})",
                       on_close=container.close)


def read_timestamps(path: str) -> np.ndarray:
    """Times in seconds, one per line (blank lines and `#` comments ignored), as microseconds (float64)."""
    try:
        lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SimulateError(f"{path}: cannot read the timestamps ({error}).") from None
    times = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            raise SimulateError(f"{path}:{number}: {text!r} is not a time in seconds.") from None
        if not math.isfinite(value) or value < 0:
            raise SimulateError(f"{path}:{number}: time {text} s must be finite and >= 0.")
        times.append(value * 1e6)
    return np.asarray(times, dtype=np.float64)


def open_image_folder(folder: str, *, fps: float = 30.0, timestamps: str | None = None,
                      start_s: float | None = None, duration_s: float | None = None) -> FrameSource:
    """The images of `folder` in natural name order, at k / fps or at the times of the `timestamps` file."""
    if not os.path.isdir(folder):
        raise SimulateError(f"{folder}: no such folder of frames.")
    names = sorted((name for name in os.listdir(folder) if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS),
                   key=_natural_key)
    if not names:
        raise SimulateError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    if timestamps is not None:
        times = read_timestamps(timestamps)
        if len(times) != len(names):
            raise SimulateError(f"{timestamps}: {len(times)} times for {len(names)} images in {folder}; give one "
                                "time per image.")
    else:
        times = np.arange(len(names), dtype=np.float64) * (1e6 / fps)
    inside = [(name, time) for name, time in zip(names, times) if _in_range(time, start_s, duration_s) == 0]

    def frames():
        for name, time_us in inside:
            path = os.path.join(folder, name)
            try:
                image = Image.open(path)
                image.load()  # reads the pixels and closes the file (single-frame formats)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                raise SimulateError(f"{path}: cannot read the image ({error}).") from None
            yield image, path, float(time_us)

    return FrameSource(frames(), len(inside), f"{folder} ({len(names)} images)")


def interpolate(previous: tuple[np.ndarray, float] | None, frames: np.ndarray, times: np.ndarray,
                factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Inserts factor - 1 intensity blends between consecutive frames (also between `previous` and frames[0]).

    previous: the last (frame, time) of the block before, None for the first block (whose first frame then
    starts the output). Frame j of an interval (I0, t0) -> (I1, t1) is (1 - a) I0 + a I1 at t0 + a (t1 - t0),
    a = j / factor, j = 1..factor - 1, followed by I1.
    """
    if factor == 1:
        return frames, times
    if previous is None:
        head_frames, head_times = frames[:1], times[:1]
        starts, start_times, ends, end_times = frames[:-1], times[:-1], frames[1:], times[1:]
    else:
        head_frames, head_times = frames[:0], times[:0]
        starts = np.concatenate([previous[0][None], frames[:-1]])
        start_times = np.concatenate([[previous[1]], times[:-1]])
        ends, end_times = frames, times
    weights = np.arange(1, factor, dtype=np.float64) / factor
    a = weights[None, :, None, None]
    blends = (1.0 - a) * starts[:, None].astype(np.float64) + a * ends[:, None].astype(np.float64)
    blends = np.clip(blends, 0.0, 1.0).astype(np.float32)
    blend_times = start_times[:, None] + weights[None, :] * (end_times - start_times)[:, None]
    out_frames = np.concatenate([blends, ends[:, None]], axis=1).reshape((-1,) + frames.shape[1:])
    out_times = np.concatenate([blend_times, end_times[:, None]], axis=1).reshape(-1)
    return np.concatenate([head_frames, out_frames]), np.concatenate([head_times, out_times])


def frame_pairs_per_call(width: int, height: int, params: SimulatorParams) -> int:
    """Frame pairs per compiled call that keep the device outputs under about 128 MiB (at most 64)."""
    slots = params.max_events_per_pixel_per_frame * (2 if params.shot_noise_rate_hz > 0 else 1)
    per_pair = 6 * slots * width * height
    return max(1, min(_MAX_PAIRS_PER_CALL, _SEGMENT_BUDGET_BYTES // per_pair))


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return parse


def _non_negative(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="simulate", description=__doc__.splitlines()[0][:-1] + " (python -m anon_jax.simulate).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="video file (anything FFmpeg decodes: mp4, mkv, avi, ...); the first video "
                        "stream is used, timed by its presentation timestamps")
    source.add_argument("--frames", metavar="DIR", help="folder of images (png, jpg, bmp, tif, webp, pgm/ppm) in "
                        "natural name order (frame_2 before frame_10)")
    parser.add_argument("--out", required=True, help="event file to write: .h5/.hdf5 (interchange HDF5, DSEC "
                        "layout) or .txt (`t x y p` rows in microseconds after a `width height` row)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--fps", type=_positive(float), help="--frames: frame rate (default 30; frame k at k / fps); "
                        "--video: rate for frames without a timestamp (default: the stream's average rate)")
    parser.add_argument("--timestamps", metavar="FILE", help="--frames: one time per image and line, in seconds "
                        "(instead of --fps)")
    parser.add_argument("--height", type=_positive(int), help="resize frames to this height (bilinear; alone, keeps "
                        "the aspect ratio)")
    parser.add_argument("--width", type=_positive(int), help="resize frames to this width (bilinear; alone, keeps "
                        "the aspect ratio)")
    parser.add_argument("--start", type=_non_negative, help="skip frames before this time, in seconds (event "
                        "times stay on the input's timeline)")
    parser.add_argument("--duration", type=_positive(float), help="use frames before --start + this many seconds")
    parser.add_argument("--max-frames", type=_positive(int), help="use at most this many input frames")
    parser.add_argument("--interpolate", type=_positive(int), default=1, metavar="N", help="insert N - 1 frames "
                        "blended linearly in intensity between consecutive frames, for fast motion (default 1: none)")
    parser.add_argument("--contrast-threshold-pos", type=float, default=0.2, help="log-intensity step of an ON "
                        "event (default 0.2)")
    parser.add_argument("--contrast-threshold-neg", type=float, default=0.2, help="log-intensity step of an OFF "
                        "event (default 0.2)")
    parser.add_argument("--threshold-sigma", type=float, default=0.03, help="std of the per-pixel threshold noise, "
                        "drawn per frame pair (default 0.03; 0 = off)")
    parser.add_argument("--refractory-us", type=float, default=0.0, help="minimum time between two events of a "
                        "pixel, microseconds (default 0)")
    parser.add_argument("--shot-noise-hz", type=float, default=0.0, help="random noise events per pixel per second "
                        "(default 0)")
    parser.add_argument("--log-eps", type=float, default=1e-3, help="eps in log(eps + I) (default 1e-3)")
    parser.add_argument("--max-events-per-pixel", type=_positive(int), default=8, help="cap on events per pixel "
                        "per frame pair; more are dropped and counted (default 8; or use --interpolate)")
    parser.add_argument("--frame-pairs-per-call", type=_positive(int), help="frame pairs per compiled simulator "
                        "call (default: as many as fit about 128 MiB of device memory, at most 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the threshold and shot noise (default 0)")
    args = parser.parse_args(argv)
    if args.timestamps is not None and args.video is not None:
        parser.error("--timestamps applies to --frames only (a video has its own timestamps)")
    if args.timestamps is not None and args.fps is not None:
        parser.error("give either --fps or --timestamps")
    return args


def simulator_params(args, width: int, height: int) -> SimulatorParams:
    params = SimulatorParams(
        contrast_threshold_pos=args.contrast_threshold_pos, contrast_threshold_neg=args.contrast_threshold_neg,
        contrast_threshold_sigma=args.threshold_sigma, refractory_us=args.refractory_us,
        shot_noise_rate_hz=args.shot_noise_hz, log_eps=args.log_eps,
        max_events_per_pixel_per_frame=args.max_events_per_pixel)
    pairs = args.frame_pairs_per_call or frame_pairs_per_call(width, height, params)
    return dataclasses.replace(params, frame_pairs_per_call=pairs)


def _blocks(source: Iterator, size: tuple[int, int] | None, block_frames: int):
    """Consecutive blocks (frames (B, H, W) float32, times (B,) float64) of (image, name, time) items; checks
    that the images have one size and the times increase."""
    first_size = first_name = previous_time = previous_name = None
    frames, times = [], []
    for image, name, time_us in source:
        if first_size is None:
            first_size, first_name = image.size, name
        elif image.size != first_size:
            raise SimulateError(f"{name} is {image.size[0]}x{image.size[1]} but {first_name} is "
                                f"{first_size[0]}x{first_size[1]} (width x height); all frames must have one size.")
        if previous_time is not None and not time_us > previous_time:
            raise SimulateError(f"{name} has time {time_us:.3f} us, not after {previous_name} at "
                                f"{previous_time:.3f} us; timestamps must increase.")
        previous_time, previous_name = time_us, name
        frames.append(to_gray(image, size or None))
        times.append(time_us)
        if len(frames) == block_frames:
            yield np.stack(frames), np.asarray(times, np.float64)
            frames, times = [], []
    if frames:
        yield np.stack(frames), np.asarray(times, np.float64)


def run(args) -> dict:
    """Simulates and writes the events; returns the summary numbers."""
    out = pathlib.Path(args.out)
    if out.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise SimulateError(f"--out {out}: unsupported extension {out.suffix or '(none)'!r}; use "
                            f"{', '.join(OUTPUT_EXTENSIONS)}.")
    if out.is_dir():
        raise SimulateError(f"--out {out} is a folder; give a file name.")
    if out.exists() and not args.overwrite:
        raise SimulateError(f"--out {out} exists; pass --overwrite or choose another --out.")
    if args.video is not None:
        source = open_video(args.video, fps=args.fps, start_s=args.start, duration_s=args.duration)
    else:
        source = open_image_folder(args.frames, fps=args.fps or 30.0, timestamps=args.timestamps,
                                   start_s=args.start, duration_s=args.duration)

    try:
        return _simulate(args, out, source)
    finally:
        source.close()


def _simulate(args, out: pathlib.Path, source: FrameSource) -> dict:
    from anon_jax.events.formats import open_writer

    estimated = source.estimated_frames
    if args.max_frames is not None:
        estimated = min(estimated or args.max_frames, args.max_frames)
    # Decode the first frame to learn the output size, then stream blocks sized to the compiled segment.
    first = next(source.frames, None)
    if first is None:
        raise SimulateError(f"{args.video or args.frames}: no frames"
                            + (" in the --start/--duration range." if args.start or args.duration else "."))
    size = output_size(*first[0].size, args.width, args.height)
    width, height = size or first[0].size
    params = simulator_params(args, width, height)
    frames_in = itertools.islice(itertools.chain([first], source.frames), args.max_frames)
    block_frames = max(1, params.frame_pairs_per_call // args.interpolate)

    simulator = Simulator(params, jax.random.key(args.seed))
    progress = ProgressBar(max(estimated or 1, 1), label="simulate", unit="frames")
    frames_done = events_written = on_events = 0
    first_time = last_time = None
    previous = None
    with open_writer(out, sensor_size=(width, height)) as writer:

        def write(stream):
            nonlocal events_written, on_events
            events = Events.from_stream(stream, "us")
            writer.write(events)
            events_written += len(events)
            on_events += int(events.p.sum())

        for frames, times in _blocks(frames_in, size, block_frames):
            if first_time is None:
                first_time = times[0]
            last_time = times[-1]
            sim_frames, sim_times = interpolate(previous, frames, times, args.interpolate)
            previous = frames[-1], times[-1]
            write(simulator.push(sim_frames, sim_times))
            frames_done += len(frames)
            progress.total = max(progress.total, frames_done)
            progress.update(frames_done)
        write(simulator.finish())
    if progress.total != frames_done:
        progress.total = frames_done
        progress.update(frames_done)
    return {"out": str(out), "source": source.description, "frames": frames_done, "pairs": simulator.num_pairs,
            "width": width, "height": height, "events": events_written, "on": on_events,
            "dropped": simulator.dropped, "span_s": (last_time - first_time) / 1e6, "params": params}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (SimulateError, SimulatorInputError, EventFormatError, MissingDependencyError, OSError) as error:
        print(f"simulate: error: {error}", file=sys.stderr)
        return 2
    span = summary["span_s"]
    events = summary["events"]
    rate = f"{events / span:.4g} events/s" if span > 0 else "no time span"
    on = f"{100 * summary['on'] / events:.1f}% ON" if events else "no events"
    print(f"simulate: {summary['source']}: {summary['frames']} frames ({summary['pairs']} frame pairs simulated) "
          f"on a {summary['width']}x{summary['height']} sensor over {span:.3f} s -> {events} events ({rate}, {on})",
          file=sys.stderr)
    if summary["dropped"]:
        print(f"simulate: {summary['dropped']} events dropped over the cap of "
              f"{summary['params'].max_events_per_pixel_per_frame} per pixel per frame pair; raise "
              "--max-events-per-pixel or use --interpolate", file=sys.stderr)
    else:
        print("simulate: 0 events dropped over the per-pixel cap", file=sys.stderr)
    print(f"simulate: wrote {summary['out']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
