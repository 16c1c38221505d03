"""E2VID reconstruction speed: frames per second of stateful sequences (the recurrent state carried across windows)
in JAX (the jitted scan of `run_sequence`, and the unrolled scan the attacker uses) against the same network with
the same weights in PyTorch eager and torch.compile, for the CPU default and the E2VID_lightweight architectures.

    python -m benchmarks.reconstruction [--quick] [--repeats N] [--out DIR] [--no-torch-compile]

Large cases get fewer repeats (at least 2), so that a run takes under 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import time
import traceback

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch

from anon_jax.methods import reconstructor_pretrain
from anon_jax.models import e2vid
from benchmarks import common, torch_models
from configs import e2vid_pretrain

NAME = "reconstruction"
# (height, width) -> windows per sequence: shorter at 384x192, where one E2VID_lightweight frame costs about
# 67 GFLOP (seconds on 2 cores), so that the whole run stays within 10 minutes.
SIZES = {(128, 64): 4, (384, 192): 2}
BATCHES = (1, 8)
# torch.compile compiles each shape for tens of seconds on 2 cores: it is timed at these batch sizes only.
COMPILE_BATCHES = (1,)
# The unrolled scan is the attacker's CPU setting; it is left out at 384x192 to keep the run within 10 minutes.
ROLLED_ONLY_SIZES = ((384, 192),)
# 64x32 keeps the bottleneck 8x4: on smaller maps XLA:CPU runs 3x3 convs on a slow generic path.
QUICK_SIZES, QUICK_BATCHES = {(64, 32): 2}, (2,)
# Seconds of timed calls aimed at per measurement: large cases get fewer repeats (at least 2).
TIME_BUDGET_S = 6.0


def architectures() -> dict[str, ml_collections.FrozenConfigDict]:
    """The E2VID configurations benchmarked: the CPU default pretraining model and E2VID_lightweight."""
    model = e2vid_pretrain.get_config().model
    cpu_default = e2vid.e2vid_config(**{field: model[field] for field in e2vid.LIGHTWEIGHT})
    return {"cpu_default": ml_collections.FrozenConfigDict(cpu_default), "lightweight": e2vid.LIGHTWEIGHT}


def random_variables(module: e2vid.E2VID, seed: int) -> dict:
    """Initialised variables with random running statistics (so BatchNorm is not the identity)."""
    side = 2 ** module.config.num_encoders
    variables = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, side, side, module.config.num_bins)))
    rng = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, x: rng.uniform(0.5, 2.0, x.shape) if path[-1].key == "var" else rng.normal(0.0, 0.2, x.shape),
        variables.get("batch_stats", {}))
    return {**variables, **({"batch_stats": jax.tree_util.tree_map(jnp.float32, stats)} if stats else {})}


def measure(fn, *, max_repeats: int, budget_s: float = TIME_BUDGET_S) -> dict:
    """Times `fn` after a first call (compilation, timed apart): a probe call sets the repeat count from `budget_s`
    (at least 2, at most `max_repeats`, the probe being the first of them)."""
    first = common.time_fn(fn, warmup=0, repeats=1)["median_s"]
    probe = common.time_fn(fn, warmup=0, repeats=1)["times_s"]
    repeats = int(min(max_repeats, max(2, budget_s // max(probe[0], 1e-9))))
    times = probe + common.time_fn(fn, warmup=0, repeats=repeats - 1)["times_s"]
    return {"median_s": float(np.median(times)), "p10_s": float(np.percentile(times, 10)),
            "p90_s": float(np.percentile(times, 90)), "times_s": times, "first_call_s": first, "repeats": repeats}


def torch_initial_state(config, batch: int, height: int, width: int):
    """PyTorch zeros shaped as e2vid.initial_state (NCHW), so the compiled graph sees one input structure."""
    return [tuple(torch.zeros(s[0], s[3], s[1], s[2]) for s in pair) if isinstance(pair[0], tuple)
            else torch.zeros(pair[0], pair[3], pair[1], pair[2])
            for pair in e2vid.state_shapes(config, batch, height, width)]


def torch_sequence(model, config, windows: torch.Tensor):
    """Images (T, B, 1, H, W) of time-major NCHW windows, the state carried from zeros, as the published loop."""
    states = torch_initial_state(config, *windows.shape[1:2], *windows.shape[3:5])
    images = []
    with torch.inference_mode():
        for window in windows:
            image, states = model(window, states)
            images.append(image)
    return torch.stack(images)


def benchmark_case(name, module, variables, torch_model, height, width, batch, windows, *, repeats, use_compile,
                   peak_flops) -> list[dict]:
    config = module.config
    rng = np.random.default_rng(height + batch)
    # Event voxels are sparse: about a third of the cells hold signed values.
    voxels = (rng.normal(size=(windows, batch, height, width, config.num_bins))
              * (rng.uniform(size=(windows, batch, height, width, config.num_bins)) < 0.3)).astype(np.float32)
    jax_voxels = jnp.asarray(voxels)
    torch_voxels = torch.from_numpy(np.ascontiguousarray(voxels.transpose(0, 1, 4, 2, 3)))
    unrolled = jax.jit(functools.partial(reconstructor_pretrain.reconstruct_windows, module, train=False,
                                         unroll=True))
    flops = common.compiled_flops(unrolled, variables, jax_voxels)
    reference, _ = e2vid.run_sequence(module, variables, jax_voxels)
    reference = np.asarray(reference)

    runners = {"jax scan (run_sequence)": lambda: e2vid.run_sequence(module, variables, jax_voxels)[0]}
    if (height, width) not in ROLLED_ONLY_SIZES:
        runners["jax unrolled scan"] = lambda: unrolled(variables, jax_voxels)[0]
    runners["torch eager"] = lambda: torch_sequence(torch_model, config, torch_voxels)
    if use_compile and batch in COMPILE_BATCHES:
        torch._dynamo.reset()  # a fresh cache per case: every size and batch compiles its own graph
        compiled = torch.compile(torch_model)
        runners["torch.compile"] = lambda: torch_sequence(compiled, config, torch_voxels)
    rows = []
    for framework, run in runners.items():
        row = {"architecture": name, "size": f"{height}x{width}", "batch": batch, "windows": windows,
               "framework": framework}
        try:
            output = run()
            block = jax.block_until_ready if framework.startswith("jax") else (lambda x: x)
            timing = measure(lambda: block(run()), max_repeats=repeats)
        except Exception as error:  # torch.compile needs a working compiler toolchain; record why it failed
            if framework != "torch.compile":
                raise
            rows.append({**row, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
            traceback.print_exc()
            continue
        images = np.asarray(output) if framework.startswith("jax") else output.numpy().transpose(0, 1, 3, 4, 2)
        median = timing["median_s"]
        rows.append({**row, "median_ms": 1e3 * median, "p10_ms": 1e3 * timing["p10_s"],
                     "p90_ms": 1e3 * timing["p90_s"], "repeats": timing["repeats"],
                     "first_call_s": timing["first_call_s"], "frames_per_s": windows * batch / median,
                     "gflop_per_s": flops / median / 1e9, "fraction_of_peak": flops / median / peak_flops,
                     "max_abs_diff_vs_jax": float(np.max(np.abs(images - reference)))})
    eager = next(r for r in rows if r["framework"] == "torch eager")["median_ms"]
    for row in rows:
        if "median_ms" in row:
            row["speedup_vs_torch_eager"] = eager / row["median_ms"]
    return rows


def main(argv=None) -> list[dict]:
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="leave torch.compile out (it is always left out with --quick: compiling takes minutes)")
    args = parser.parse_args(argv)
    sizes, batches = (QUICK_SIZES, QUICK_BATCHES) if args.quick else (SIZES, BATCHES)
    use_compile = not (args.quick or args.no_torch_compile)
    peak = common.peak_matmul_flops()
    rows = []
    started = time.perf_counter()
    for name, config in architectures().items():
        module = e2vid.E2VID(config)
        variables = random_variables(module, seed=0)
        torch_model = torch_models.e2vid_from_flax(config, variables)
        for (height, width), windows in sizes.items():
            for batch in batches:
                rows += benchmark_case(name, module, variables, torch_model, height, width, batch, windows,
                                       repeats=args.repeats, use_compile=use_compile, peak_flops=peak)
                print(f"{time.perf_counter() - started:.0f} s: {name} {height}x{width} batch {batch} done",
                      flush=True)
    meta = {"peak_matmul_gflop_per_s": peak / 1e9, "torch_threads": torch.get_num_threads(),
            "torch_compile": use_compile, "torch_compile_batches": list(COMPILE_BATCHES), "quick": args.quick, "seconds": time.perf_counter() - started,
            "architectures": {name: dict(config) for name, config in architectures().items()},
            "notes": "frames_per_s = windows x batch / median seconds per sequence; state carried from zeros; "
                     "gflop_per_s uses XLA's FLOP count of the unrolled JAX sequence for every framework; "
                     "first_call_s includes compilation (JAX jit, torch.compile)."}
    common.write_results(NAME, rows, meta, args.out)
    return rows


if __name__ == "__main__":
    main()
