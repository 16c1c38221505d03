"""Reconstructs intensity frames from an event recording with a saved E2VID-style reconstructor.

python -m anon_jax.reconstruct --events FILE --checkpoint DIR --out DIR
    [--num_events_per_window N | --window_duration T] [--auto_hdr] [--unsharp_mask_amount A] [--sensor_size H,W]
    [--time_unit U]
FILE is any event file `anon_jax.events.read` supports (text, RAW, DAT, AEDAT 4, HDF5, NumPy, ROS bag). Writes
frame_0000000000.png, ... (one per window), timestamps.txt (time of each window's last event: microseconds for
binary files, the file's own unit for text without --time_unit) and preview.gif into --out; the folder appears
complete or not at all.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from PIL import Image

from anon_jax.files import atomic_directory
from anon_jax.events import EventFormatError
from anon_jax.events.container import MissingDependencyError
from anon_jax.events.formats import add_event_file_arguments, read_stream
from anon_jax.events.windows import fixed_count_windows, fixed_duration_windows
from anon_jax.models import e2vid
from anon_jax.models.e2vid_postprocess import IntensityRescaler, reconstruct_stream
from anon_jax.progress import ProgressBar


def sensor_size_flag(text: str) -> tuple[int, int]:
    try:
        height, width = (int(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH such as 180,240, got {text!r}") from None
    return height, width


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m anon_jax.reconstruct", description=__doc__.splitlines()[0])
    add_event_file_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="reconstructor directory written by "
                        "anon_jax.models.e2vid.save_pretrained (converted official weights or a pretraining run)")
    parser.add_argument("--out", required=True, help="output folder for the frames, timestamps.txt and preview.gif")
    windows = parser.add_mutually_exclusive_group()
    windows.add_argument("--num_events_per_window", type=int, help="events per window (default: "
                         "num_events_per_pixel * sensor pixels)")
    windows.add_argument("--window_duration", type=float, help="fixed-duration windows of this length (E2VID's "
                         "--fixed_duration), in microseconds for binary files and the file's unit for text")
    parser.add_argument("--num_events_per_pixel", type=float, default=0.35,
                        help="sets the window size when neither window flag is given (E2VID default 0.35)")
    parser.add_argument("--sensor_size", type=sensor_size_flag, help="HEIGHT,WIDTH of the sensor; default: the "
                        "file's header, else the events' bounding box (events shifted to it, as the Event-ReId loader)")
    parser.add_argument("--auto_hdr", action="store_true",
                        help="rescale intensities with the median of recent per-frame min/max (E2VID --auto_hdr)")
    parser.add_argument("--auto_hdr_median_filter_size", type=int, default=10)
    parser.add_argument("--robust_percentile", type=float, default=0.0, help="with --auto_hdr, use the p-th / "
                        "(100-p)-th percentiles instead of min/max (e.g. 5)")
    parser.add_argument("--Imin", type=float, default=0.0, help="fixed lower intensity bound without --auto_hdr")
    parser.add_argument("--Imax", type=float, default=1.0, help="fixed upper intensity bound without --auto_hdr")
    parser.add_argument("--unsharp_mask_amount", type=float, default=0.3, help="0 disables the unsharp mask")
    parser.add_argument("--unsharp_mask_sigma", type=float, default=1.0)
    parser.add_argument("--no_recurrent", action="store_true", help="reset the recurrent state after every window")
    parser.add_argument("--gif_fps", type=float, default=10.0, help="frame rate of preview.gif")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    return parser.parse_args(argv)


def load_events(path: str, sensor_size: tuple[int, int] | None, time_unit: str | None = None):
    """The recording on its sensor: the given (height, width), else the file's, else the events' bounding box
    (events shifted to it, as the Event-ReId loader)."""
    stream = read_stream(path, sensor_size=None if sensor_size is None else sensor_size[::-1], time_unit=time_unit,
                         crop_unsized=True)
    return stream.require_nonempty()


def main(argv=None) -> int:
    args = parse_args(argv)
    out = pathlib.Path(args.out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise SystemExit(f"reconstruct: {out} exists and is not an empty folder; pass --overwrite or another --out.")
    try:
        stream = load_events(args.events, args.sensor_size, args.time_unit)
    except (ValueError, MissingDependencyError) as error:  # unreadable file or missing optional reader
        raise SystemExit(f"reconstruct: error: {error}") from None
    module, variables = e2vid.load_pretrained(args.checkpoint)
    if args.window_duration is not None:
        windows = list(fixed_duration_windows(stream, args.window_duration))
    else:
        count = args.num_events_per_window or max(1, int(stream.height * stream.width * args.num_events_per_pixel))
        windows = list(fixed_count_windows(stream, count))
    if not windows:
        raise EventFormatError(f"{args.events}: the recording spans {stream.t[-1] - stream.t[0]!r} time units, too "
                               f"short for one window of {args.window_duration!r}; use a shorter --window_duration.")
    print(f"reconstruct: {len(stream)} events on a {stream.height}x{stream.width} sensor, {len(windows)} windows",
          file=sys.stderr)
    rescaler = IntensityRescaler(auto_hdr=args.auto_hdr, median_filter_size=args.auto_hdr_median_filter_size,
                                 imin=args.Imin, imax=args.Imax, robust_percentile=args.robust_percentile)
    frames = reconstruct_stream(module, variables, windows, num_bins=module.config.num_bins,
                                num_encoders=module.config.num_encoders,
                                unsharp_mask_amount=args.unsharp_mask_amount,
                                unsharp_mask_sigma=args.unsharp_mask_sigma, rescaler=rescaler,
                                carry_state=not args.no_recurrent)
    with atomic_directory(out) as staging:
        images, timestamps, progress = [], [], ProgressBar(len(windows), label="reconstruct")
        for frame in frames:
            image = Image.fromarray(frame.image)
            image.save(staging / f"frame_{frame.index:010d}.png")
            images.append(image)
            timestamps.append(f"{frame.timestamp:.18f}\n")
            progress.update(frame.index + 1)
        (staging / "timestamps.txt").write_text("".join(timestamps), encoding="utf-8")
        images[0].save(staging / "preview.gif", save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / args.gif_fps)), loop=0)
    print(f"reconstruct: wrote {len(images)} frames to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
