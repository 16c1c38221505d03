"""Event file tools.

python -m anon_jax.events info FILE [--time-unit U] [--sensor-size W,H] [--json]
    format, sensor size, duration, event count, rate and polarity balance (one streaming pass).
python -m anon_jax.events convert IN OUT [--time-unit U] [--sensor-size W,H] [--out-time-unit U] [--overwrite]
    any readable format to the interchange HDF5 (.h5/.hdf5) or text (.txt), streamed chunk by chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from anon_jax.events.container import TIME_UNITS, Events, MissingDependencyError
from anon_jax.events.formats import (
    DEFAULT_CHUNK_EVENTS,
    bounding_size,
    checked_chunks,
    open_events,
    open_writer,
)
from anon_jax.events.stream import EventFormatError


def sensor_size_flag(text: str) -> tuple[int, int]:
    try:
        width, height = (int(value) for value in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTH,HEIGHT such as 640,480, got {text!r}") from None
    return width, height


def file_info(path: str, *, sensor_size=None, time_unit=None, chunk_events: int = DEFAULT_CHUNK_EVENTS,
              time_order: str = "error") -> dict:
    """Format, sensor size, event count, first/last time, duration, rate and polarity counts of an event file."""
    opened = open_events(path, sensor_size=sensor_size, time_unit=time_unit)
    count = on = 0
    first = last = None
    max_x = max_y = -1
    for columns in checked_chunks(opened, chunk_events, sensor_size, time_order):
        n = len(columns["t"])
        if not n:
            continue
        first = int(columns["t"][0]) if first is None else first
        last = int(columns["t"][-1])
        count += n
        on += int(columns["p"].sum())
        max_x, max_y = max(max_x, int(columns["x"].max())), max(max_y, int(columns["y"].max()))
    duration_us = 0 if first is None else last - first
    size = opened.sensor_size or sensor_size
    return {
        "path": opened.path, "format": opened.format, "time_unit_in_file": opened.time_unit,
        "sensor_size": list(size) if size else None, "events": count, "first_t_us": first, "last_t_us": last,
        "duration_s": duration_us / 1e6, "rate_events_per_s": count / (duration_us / 1e6) if duration_us else None,
        "on_events": on, "off_events": count - on, "on_fraction": on / count if count else None,
        "max_x": max_x if count else None, "max_y": max_y if count else None,
    }


def print_info(info: dict) -> None:
    size = info["sensor_size"]
    rows = [
        ("file", info["path"]),
        ("format", info["format"]),
        ("sensor", f"{size[0]} x {size[1]} (width x height)" if size else
         f"not stated (events span x 0..{info['max_x']}, y 0..{info['max_y']})"),
        ("time unit", f"{info['time_unit_in_file']} in the file, microseconds here"),
        ("events", f"{info['events']:,}"),
    ]
    if info["events"]:
        rate = info["rate_events_per_s"]
        rows += [
            ("first t", f"{info['first_t_us']} us"),
            ("last t", f"{info['last_t_us']} us"),
            ("duration", f"{info['duration_s']:.6f} s"),
            ("rate", f"{rate / 1e6:.3f} M events/s" if rate else "n/a (one timestamp)"),
            ("polarity", f"ON {info['on_events']:,} ({100 * info['on_fraction']:.1f}%), OFF {info['off_events']:,} "
                         f"({100 * (1 - info['on_fraction']):.1f}%)"),
        ]
    for name, value in rows:
        print(f"{name:<10} {value}")


def convert(source: str, target: str, *, sensor_size=None, time_unit=None, out_time_unit: str = "us",
            chunk_events: int = DEFAULT_CHUNK_EVENTS, time_order: str = "error") -> int:
    """Streams `source` into `target` (format by extension); returns the number of events written."""
    opened = open_events(source, sensor_size=sensor_size, time_unit=time_unit)
    size = opened.sensor_size or sensor_size or bounding_size(opened, chunk_events, time_order)
    count = 0
    with open_writer(target, sensor_size=size, time_unit=out_time_unit) as writer:
        for columns in checked_chunks(opened, chunk_events, size, time_order):
            writer.write(Events(**columns, width=size[0], height=size[1], source=opened.path))
            count += len(columns["t"])
    return count


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m anon_jax.events", description="Event file tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    units = sorted(TIME_UNITS)

    def common(sub):
        sub.add_argument("--time-unit", choices=units, help="time unit of a text or N x 4 NumPy file "
                         "(RPG/E2VID and v2e text: s; anon_jax text: us)")
        sub.add_argument("--sensor-size", type=sensor_size_flag, help="WIDTH,HEIGHT when the file does not state "
                         "it (default: the events' bounding box)")
        sub.add_argument("--chunk-events", type=int, default=DEFAULT_CHUNK_EVENTS,
                         help="events decoded per chunk (bounds memory)")
        sub.add_argument("--clamp-times", action="store_true", help="Prophesee RAW files: raise a time earlier than "
                         "the one before it to that time (readout jitter) instead of stopping with an error; the count "
                         "is reported")

    info = commands.add_parser("info", help="format, sensor size, duration, count, rate, polarity balance")
    info.add_argument("file")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    common(info)
    conv = commands.add_parser("convert", help="convert to .h5/.hdf5 (interchange HDF5) or .txt")
    conv.add_argument("input")
    conv.add_argument("output")
    conv.add_argument("--out-time-unit", choices=units, default="us", help="time unit of a .txt output")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    common(conv)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    time_order = "clamp" if args.clamp_times else "error"
    try:
        if args.command == "info":
            info = file_info(args.file, sensor_size=args.sensor_size, time_unit=args.time_unit,
                             chunk_events=args.chunk_events, time_order=time_order)
            print(json.dumps(info)) if args.json else print_info(info)
            return 0
        if os.path.exists(args.output) and not args.overwrite:
            raise EventFormatError(f"{args.output} exists; pass --overwrite or another output path.")
        started = time.monotonic()
        count = convert(args.input, args.output, sensor_size=args.sensor_size, time_unit=args.time_unit,
                        out_time_unit=args.out_time_unit, chunk_events=args.chunk_events, time_order=time_order)
        seconds = time.monotonic() - started
        print(f"convert: wrote {count:,} events to {args.output} in {seconds:.1f} s", file=sys.stderr)
        return 0
    except (ValueError, MissingDependencyError) as error:
        print(f"python -m anon_jax.events {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
