"""Reading a long Prophesee EVT 3.0 recording: events per second and peak memory, streamed in windows vs loaded whole.

    python -m benchmarks.event_reading [--quick] [--repeats N] [--events N] [--out DIR] [--data_dir DIR]

The recording (default 20 million events, 1280x720, 20 s, so the 24-bit time wraps once; bursts of equal times
and horizontal runs that the encoder writes as vector words) is written once by faery, a maintained EVT 3.0
encoder, and cached in --data_dir. Every measurement runs in a fresh Python process, so its peak resident memory
(VmHWM) is that reader's alone, interpreter and imports included:
- "import only": the interpreter with anon_jax.events imported (the floor of the rows below);
- "anon_jax iter_windows": `anon_jax.events.iter_windows(path, duration_us=50_000)`, every 50 ms window built
  as a validated `Events` (the streaming path of the issue's 500 MB target);
- "anon_jax read": `anon_jax.events.read(path)`, the whole recording as one `Events`;
- "evt3 library batches": the evt3 package's batch decoder (MIT, Rust; no validation), as a speed reference.
Seconds are medians over --repeats processes; events per second count the file's events.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

NAME = "event_reading"
WIDTH, HEIGHT = 1280, 720
WINDOW_US = 50_000
CASES = ("import only", "anon_jax iter_windows", "anon_jax read", "evt3 library batches")
MEMORY_TARGET_MB = 500
WORKER_FLAG = "--worker"  # `--worker CASE PATH`: run one case in this process (before anything imports JAX)


def make_recording(path: pathlib.Path, num_events: int, seed: int = 0) -> None:
    """A faery-written EVT 3.0 file: num_events over num_events / 1e6 seconds, with bursts and runs."""
    import faery

    rng = np.random.default_rng(seed)
    duration_us = max(1, num_events)  # one event per microsecond on average
    t = np.sort(rng.integers(0, duration_us, num_events, dtype=np.int64))
    x = rng.integers(0, WIDTH, num_events)
    y = rng.integers(0, HEIGHT, num_events)
    # Every 50th event starts a 32-pixel run at its own time and row, encoded as vector words.
    starts = np.arange(0, num_events - 32, 50 * 32)
    for offset in range(32):
        t[starts + offset], y[starts + offset] = t[starts], y[starts]
        x[starts + offset] = np.minimum(x[starts], WIDTH - 33) + offset
    events = np.zeros(num_events, faery.EVENTS_DTYPE)
    events["t"], events["x"], events["y"] = t, x, y
    events["on"] = rng.integers(0, 2, num_events).astype(bool)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial.raw")
    faery.events_stream_from_array(events, dimensions=(WIDTH, HEIGHT)).to_file(
        temporary, version="evt3", zero_t0=False)
    os.replace(temporary, path)


def run_case(case: str, path: str) -> dict:
    """Runs one reader over the file in this process; returns events, windows, seconds and peak RSS (MB)."""
    import anon_jax.events as events

    count = windows = 0
    started = time.perf_counter()
    if case == "anon_jax iter_windows":
        for window in events.iter_windows(path, duration_us=WINDOW_US):
            count += len(window)
            windows += 1
    elif case == "anon_jax read":
        count = len(events.read(path))
    elif case == "evt3 library batches":
        import evt3

        for batch in evt3.decode_file_batches(path):
            count += len(batch.t)
    elif case != "import only":
        raise ValueError(f"unknown case {case!r}; expected one of {CASES}")
    seconds = time.perf_counter() - started
    return {"events": count, "windows": windows, "seconds": seconds, "peak_rss_MB": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that over from the process
    that forked and exec'd us, here the JAX-importing parent."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM line; peak memory needs Linux")


def measure(case: str, path: pathlib.Path, repeats: int) -> dict:
    """Median seconds and largest peak memory of `repeats` fresh processes running `case`."""
    runs = []
    for _ in range(repeats):
        output = subprocess.run([sys.executable, "-m", "benchmarks.event_reading", WORKER_FLAG, case, str(path)],
                                check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
    seconds = statistics.median(run["seconds"] for run in runs)
    row = {"case": case, "events": runs[0]["events"], "windows": runs[0]["windows"], "median_s": seconds,
           "peak_rss_MB": max(run["peak_rss_MB"] for run in runs)}
    row["Mev_per_s"] = row["events"] / seconds / 1e6 if row["events"] else None
    return row


def main(argv=None) -> None:
    from benchmarks import common  # imports JAX: not at module level, so the worker processes stay light

    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--events", type=int, default=20_000_000, help="events in the recording (quick: 200,000)")
    parser.add_argument("--data_dir", default="benchmarks/data", help="where the generated recording is cached")
    args = parser.parse_args(argv)
    num_events = 200_000 if args.quick and args.events == 20_000_000 else args.events
    path = pathlib.Path(args.data_dir) / f"evt3_{num_events}.raw"
    if not path.exists():
        started = time.perf_counter()
        make_recording(path, num_events)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s",
              flush=True)
    repeats = max(1, min(args.repeats, 3))  # each repeat is a whole pass over the file in a new process
    rows = [measure(case, path, repeats) for case in CASES]
    expected = rows[1]["events"]
    if any(row["events"] != expected for row in rows[1:]):
        raise RuntimeError(f"readers disagree on the event count: {[(r['case'], r['events']) for r in rows]}")
    reference = rows[-1]["median_s"]
    for row in rows[1:]:
        row["time_vs_evt3"] = row["median_s"] / reference
    meta = {"file": str(path), "file_MB": path.stat().st_size / 1e6, "events": expected, "sensor": [WIDTH, HEIGHT],
            "window_us": WINDOW_US, "repeats": repeats, "memory_target_MB": MEMORY_TARGET_MB,
            "streaming_under_target": rows[1]["peak_rss_MB"] < MEMORY_TARGET_MB}
    common.write_results(NAME, rows, meta, args.out)


if __name__ == "__main__":
    if sys.argv[1:2] == [WORKER_FLAG]:
        print(json.dumps(run_case(*sys.argv[2:4])))
    else:
        main()
