"""Shared benchmark tools: timing, machine description, FLOP counts and result tables.

Every benchmark times with `time_fn`, parses `add_common_args` and ends with `write_results`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from anon_jax.files import atomic_write_text

QUICK_REPEATS = 2
DEFAULT_REPEATS = 10


def time_fn(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 10,
            clock: Callable[[], float] = time.perf_counter) -> dict:
    """Seconds per call of `fn` (which must block until its result is ready): median, p10, p90, all times."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_fn needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return {
        "median_s": statistics.median(times),
        "p10_s": float(np.percentile(times, 10)),
        "p90_s": float(np.percentile(times, 90)),
        "times_s": times,
    }


def _cpu_model() -> str:
    # /proc/cpuinfo names the CPU on Linux; platform.processor() is often empty there.
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    # Read installed metadata instead of importing: torch must stay out of processes that do not use it.
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """The CPU, core count, library versions, XLA_FLAGS, JAX devices and the date of this run."""
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_devices": [str(device) for device in jax.devices()],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def peak_matmul_flops(n: int = 2048, *, repeats: int = 5) -> float:
    """Measured FLOP/s of a float32 n x n JAX matrix product (2 n^3 / median time): the machine's practical peak."""
    keys = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(keys[0], (n, n), jnp.float32)
    b = jax.random.normal(keys[1], (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    timing = time_fn(lambda: jax.block_until_ready(matmul(a, b)), warmup=1, repeats=repeats)
    return 2.0 * n**3 / timing["median_s"]


def compiled_flops(jitted, *args, **kwargs) -> float:
    """FLOPs of one call of `jitted` on these arguments, from XLA's cost analysis of the compiled program."""
    analysis = jitted.lower(*args, **kwargs).compile().cost_analysis()
    # Older jaxlibs return one dict per device program, newer ones a single dict.
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    if not analysis or "flops" not in analysis:
        raise ValueError("XLA's cost analysis reports no 'flops' for this function on this backend; "
                         "leave FLOP/s out of the table for it")
    return float(analysis["flops"])


class _RepeatsAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, "repeats_given", True)


class _QuickAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        # --quick lowers the default repeat count, never one given explicitly (in either order).
        if not getattr(namespace, "repeats_given", False):
            setattr(namespace, "repeats", QUICK_REPEATS)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds --quick (tiny sizes, 2 repeats), --repeats N (default 10) and --out DIR (default benchmarks/results)."""
    parser.add_argument("--quick", action=_QuickAction,
                        help=f"tiny sizes and {QUICK_REPEATS} repeats (unless --repeats is given): a smoke run")
    parser.add_argument("--repeats", type=_positive_int, default=DEFAULT_REPEATS, action=_RepeatsAction,
                        help=f"timed calls per measurement after warm-up (default {DEFAULT_REPEATS})")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"),
                        help="folder for the <name>.json results (default benchmarks/results)")
    return parser


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict]) -> str:
    """A markdown table of `rows`: columns are the rows' keys in first-seen order, missing cells left empty."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, rows: list[dict], meta: dict, out_dir: str | os.PathLike) -> pathlib.Path:
    """Prints the rows as a markdown table and writes {benchmark, machine, meta, rows} to out_dir/name.json."""
    print(f"## {name}\n\n{markdown_table(rows)}\n", flush=True)
    path = pathlib.Path(out_dir) / f"{name}.json"
    record = {"benchmark": name, "machine": machine_info(), "meta": meta, "rows": rows}
    atomic_write_text(path, json.dumps(record, indent=2, default=_json_default) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def _json_default(value):
    # NumPy scalars and arrays show up in rows computed with NumPy; JSON needs plain Python values.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"benchmark results must be JSON values, got {type(value).__name__}")
