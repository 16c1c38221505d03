"""PixelFade protection speed: images per second of the whole iteration loop compiled as one function
(`make_protect_fn`: one `lax.fori_loop`) against the same algorithm as a per-iteration Python loop
(`make_python_loop_fn`: replacement + loss/gradient and the update jitted apart, the constraint decision read back
to the host every iteration), on the same CPU, with the same random AGW authorization network and the same images.

    python -m benchmarks.pixelfade_protection [--quick] [--repeats N] [--out DIR]

Cases: the CPU default of configs/pixelfade.py (ResNet-18 AGW of width 32, 128x64, batches of 32, 100 iterations),
where the network dominates, and a narrow AGW (width 8, 64x32, batches of 8), where per-iteration overhead shows.
Before anything is timed, both variants must return the same images (atol 1e-4) after one iteration on the case's
network and batch (replacement, features, loss, gradient, normalisation, momentum, constraint decision, clamp);
the full-length images are only reported, with the replacement counts, since any rounding difference would grow
through the ReLU kinks over 100 steps (see equivalence_check).
The first call of each variant (compilation) is timed apart; repeats follow a time budget (at least 3 in a full
run), so that a run takes about 6 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np

from anon_jax.models import agw
from anon_jax.privacy import pixelfade
from benchmarks import common
from configs import pixelfade as pixelfade_config

NAME = "pixelfade_protection"
ATOL = 1e-4  # largest |compiled - python| image difference accepted as "the same algorithm"
CHECK_ITERATIONS = 1  # iterations of the equivalence check (see equivalence_check: longer runs diverge)
COMPILED, PYTHON = "compiled (fori_loop)", "python loop"
# JAX's own timings of tracing, lowering and XLA compilation: summed over a call, they are the part of that call
# spent compiling rather than protecting.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked setting: the AGW's width, image size, batch, iterations and timing budget."""
    name: str
    width: int
    height: int
    image_width: int
    batch: int
    max_iter: int
    budget_s: float  # seconds of timed calls aimed at per variant after the first call
    min_repeats: int
    nonlocal_blocks: tuple | None = None  # None: the config's


def cases(config, quick: bool) -> list[Case]:
    """The CPU default and the narrow network (full run), or one tiny case (--quick)."""
    if quick:
        # No non-local blocks and 32x16 images: compilation, which dominates here, stays short.
        return [Case("quick", width=4, height=32, image_width=16, batch=2, max_iter=6, budget_s=0.5, min_repeats=1,
                     nonlocal_blocks=(0, 0, 0, 0))]
    pf = config.pixelfade
    return [Case("cpu_default", width=config.model.width, height=config.data.height,
                 image_width=config.data.width, batch=pf.batch_size, max_iter=pf.max_iter, budget_s=60.0,
                 min_repeats=3),
            Case("narrow", width=8, height=64, image_width=32, batch=8, max_iter=pf.max_iter, budget_s=20.0,
                 min_repeats=3)]


class CompileClock:
    """Seconds JAX reports spending on tracing, lowering and compiling while it is registered."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, event, duration, **kwargs):
        if event in COMPILE_EVENTS:
            self.seconds += duration

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def timed_call(fn, clock: CompileClock) -> tuple[float, float, dict]:
    """(wall seconds, compile seconds within them, output) of one call of `fn`, blocked until ready."""
    compiled_before = clock.seconds
    start = time.perf_counter()
    output = jax.block_until_ready(fn())
    return time.perf_counter() - start, clock.seconds - compiled_before, output


def setup(config, case: Case, seed: int = 0):
    """The random AGW (eval mode), its variables and one batch with its chunks, noise and validity."""
    model = config.model.copy_and_resolve_references()
    model.width = case.width
    if case.nonlocal_blocks is not None:
        model.nonlocal_blocks = case.nonlocal_blocks
    net = agw.build_agw_network(model, num_classes=32)
    shape = (case.batch, case.height, case.image_width, 3)
    keys = jax.random.split(jax.random.key(seed), 4)
    variables = jax.jit(functools.partial(net.init, train=False))(keys[0], jnp.zeros(shape, jnp.float32))
    images = jax.random.normal(keys[1], shape, jnp.float32)  # normalised space
    settings = config.pixelfade.copy_and_resolve_references()
    settings.max_iter = case.max_iter
    settings.batch_size = case.batch
    chunks = pixelfade.replacement_chunks(keys[2], shape, settings.fade_num_iter)
    noise = pixelfade.noise_images(keys[3], jnp.arange(case.batch), shape[1:])
    valid = jnp.ones(case.batch, bool)
    return net, model, variables, settings, (images, chunks, noise, valid)


def max_abs_diff(a: dict, b: dict) -> float:
    return float(np.max(np.abs(np.asarray(a["images"]) - np.asarray(b["images"]))))


def equivalence_check(apply_fn, variables, batch, settings) -> float:
    """Max |compiled - python| image difference of both variants after CHECK_ITERATIONS iterations of this case.

    Longer runs are not asserted: ReLU kinks would turn any rounding difference between the two XLA programs into
    jumps of single gradient elements, which the normalised step and the momentum carry on (1e-6 noise on the input
    of one compiled function gives a 0.2 difference after 7 iterations of the CPU-default AGW).
    """
    short = settings.copy_and_resolve_references()
    short.max_iter = CHECK_ITERATIONS
    short.repair_steps = 0  # the step takes a real constraint decision
    compiled = pixelfade.make_protect_fn(apply_fn, short)(variables, *batch)
    python = pixelfade.make_python_loop_fn(apply_fn, short)(variables, *batch)
    return max_abs_diff(compiled, python)


def benchmark_case(config, case: Case, max_repeats: int) -> list[dict]:
    net, model, variables, settings, batch = setup(config, case)

    def apply_fn(v, x):
        return net.apply(v, x, train=False)

    protect = pixelfade.make_protect_fn(apply_fn, settings)
    python_loop = pixelfade.make_python_loop_fn(apply_fn, settings)
    runners = {COMPILED: lambda: protect(variables, *batch), PYTHON: lambda: python_loop(variables, *batch)}
    with CompileClock() as clock:
        first = {name: timed_call(run, clock) for name, run in runners.items()}
        compiled_out, python_out = first[COMPILED][2], first[PYTHON][2]
        full_diff = max_abs_diff(compiled_out, python_out)
        same_replacements = bool(np.array_equal(compiled_out["replacements"], python_out["replacements"]))
        check_diff = equivalence_check(apply_fn, variables, batch, settings)
        # Fail before timing: a speed comparison of different computations means nothing.
        assert check_diff <= ATOL, (f"{case.name}: compiled and Python-loop images differ by {check_diff:.3g} > "
                                    f"{ATOL} after {CHECK_ITERATIONS} iteration(s)")
        # The first timed call of each variant sets the repeat count from the budget (the slower one decides,
        # so both get the same count); the variants then alternate so load changes hit both alike.
        timings = {name: [timed_call(run, clock)[:2]] for name, run in runners.items()}
        slowest = max(calls[0][0] for calls in timings.values())
        repeats = int(min(max_repeats, max(case.min_repeats, case.budget_s // max(slowest, 1e-9))))
        for _ in range(repeats - 1):
            for name, run in runners.items():
                timings[name].append(timed_call(run, clock)[:2])

    rows = {}
    for name, calls in timings.items():
        wall = [seconds for seconds, _ in calls]
        loop_only = [seconds - compiling for seconds, compiling in calls]
        median, median_loop = statistics.median(wall), statistics.median(loop_only)
        rows[name] = {
            "case": case.name, "network": f"AGW ResNet-{model.depth} w{case.width}",
            "size": f"{case.height}x{case.image_width}", "batch": case.batch, "iterations": case.max_iter,
            "variant": name, "repeats": repeats, "median_s": median, "p10_s": float(np.percentile(wall, 10)),
            "p90_s": float(np.percentile(wall, 90)), "images_per_s": case.batch / median,
            "ms_per_iteration": 1e3 * median / case.max_iter,
            "compile_in_call_s": statistics.median(seconds for _, seconds in calls),
            "images_per_s_excl_compile": case.batch / median_loop, "first_call_s": first[name][0],
            "first_call_compile_s": first[name][1]}
    compiled_row, python_row = rows[COMPILED], rows[PYTHON]
    compiled_row["speedup_vs_python"] = python_row["median_s"] / compiled_row["median_s"]
    compiled_row["speedup_vs_python_excl_compile"] = (compiled_row["images_per_s_excl_compile"]
                                                      / python_row["images_per_s_excl_compile"])
    for row in rows.values():
        row["check_max_abs_diff"] = check_diff
        row["full_run_max_abs_diff"] = full_diff
        row["same_replacements"] = same_replacements
    return [compiled_row, python_row]


def main(argv=None) -> list[dict]:
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    config = pixelfade_config.get_config()
    rows = []
    started = time.perf_counter()
    selected = cases(config, args.quick)
    for case in selected:
        rows += benchmark_case(config, case, args.repeats)
        print(f"{time.perf_counter() - started:.0f} s: {case.name} done", flush=True)
    meta = {
        "quick": args.quick, "max_repeats": args.repeats, "seconds": time.perf_counter() - started,
        "config": "configs/pixelfade.py (default)", "allclose_atol": ATOL, "check_iterations": CHECK_ITERATIONS,
        "pixelfade": config.pixelfade.to_dict(),
        "cases": [dataclasses.asdict(case) for case in selected],
        "notes": "images_per_s = batch / median seconds per batch (a call protecting one batch, from the original "
                 "images to the returned ones, blocked until ready); random AGW variables, eval mode; images "
                 "N(0, 1) in normalised space; compile_in_call_s = JAX's tracing + lowering + XLA compile seconds "
                 "within a timed call (median), *_excl_compile subtracts it; first_call_s includes compilation; "
                 "speedup_vs_python = python median / compiled median; check_max_abs_diff: images of both variants "
                 "after check_iterations iteration(s) (asserted <= allclose_atol); full_run_max_abs_diff: after all "
                 "iterations (chaotic: not a correctness measure).",
    }
    common.write_results(NAME, rows, meta, args.out)
    return rows


if __name__ == "__main__":
    main()
