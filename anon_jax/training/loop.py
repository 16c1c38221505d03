"""The generic training loop shared by every method: steps, metrics, progress, checkpoints, preemption.

A method supplies a jitted `train_step(state, batch) -> (state, metrics)` (clu metrics collection) and a
batch iterator that starts at the restored step; the loop logs progress with steps/s and ETA, writes
TensorBoard scalars, saves periodic checkpoints, stops on a non-finite loss without saving it, and on
SIGTERM saves a checkpoint and raises `Preempted` so a rerun resumes from it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from typing import Callable, Iterator

import jax
from absl import logging
from clu import metric_writers

from anon_jax.training import multihost
from anon_jax.training.checkpoint import Checkpoints


class Preempted(Exception):
    """Raised after a checkpoint was saved because the process received SIGTERM."""


@contextlib.contextmanager
def sigterm_flag():
    """Yields a dict whose "requested" entry turns True when SIGTERM arrives (main thread only)."""
    flag = {"requested": False}

    def handler(signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint after this step, then exiting.")
        flag["requested"] = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: preemption is then handled by the caller
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def create_writer(logdir: str) -> metric_writers.MetricWriter:
    """TensorBoard writer on process 0; other processes write nothing."""
    if not multihost.is_primary():
        return metric_writers.MultiWriter([])
    return metric_writers.SummaryWriter(logdir)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def train_loop(
    *,
    name: str,
    state,
    train_step: Callable,
    batches: Iterator[dict],
    num_steps: int,
    checkpoints: Checkpoints,
    writer: metric_writers.MetricWriter,
    log_every_steps: int,
    on_log: Callable[[int, dict], None] | None = None,
):
    """Runs `train_step` from the state's step to `num_steps`; returns the final state."""
    start = int(jax.device_get(state["step"]))
    if start >= num_steps:
        logging.info("[%s] already at step %d of %d", name, start, num_steps)
        return state
    logging.info("[%s] training steps %d..%d", name, start, num_steps)
    accumulated = None
    window_start, window_step = time.perf_counter(), start
    with sigterm_flag() as preemption:
        for step in range(start + 1, num_steps + 1):
            state, step_metrics = train_step(state, next(batches))
            accumulated = step_metrics if accumulated is None else accumulated.merge(step_metrics)
            is_log = step % log_every_steps == 0 or step == num_steps
            is_save = step == num_steps or preemption["requested"] or checkpoints.manager.should_save(step)
            if not (is_log or is_save):
                continue
            # Checked before any save so that a diverged state never overwrites a good checkpoint.
            scalars = {k: float(v) for k, v in accumulated.compute().items()}
            _check_finite(name, step, scalars)
            if is_log:
                accumulated = None
                now = time.perf_counter()
                steps_per_s = (step - window_step) / max(now - window_start, 1e-9)
                window_start, window_step = now, step
                writer.write_scalars(step, {f"{name}/{k}": v for k, v in scalars.items()})
                writer.write_scalars(step, {f"{name}/steps_per_second": steps_per_s})
                eta = format_duration((num_steps - step) / max(steps_per_s, 1e-9))
                shown = " | ".join(f"{k} {v:.4g}" for k, v in scalars.items())
                logging.info(
                    "[%s] step %d/%d | %s | %.2f steps/s | ETA %s", name, step, num_steps, shown, steps_per_s, eta
                )
                if on_log is not None:
                    on_log(step, scalars)
            if is_save or preemption["requested"]:
                checkpoints.save(step, state, force=True)
            if preemption["requested"]:
                checkpoints.close()
                writer.flush()
                raise Preempted(f"[{name}] stopped at step {step} after SIGTERM; rerun the same command to resume.")
    checkpoints.manager.wait_until_finished()
    writer.flush()
    return state


def _check_finite(name: str, step: int, scalars: dict) -> None:
    bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"[{name}] non-finite metrics at step {step}: {bad}. The last good checkpoint is kept; "
            "lower the learning rate (config.optimizer.learning_rate) or check the input data for NaNs."
        )
