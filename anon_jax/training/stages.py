"""Stage runner: each phase of a method runs once in its own workdir subfolder.

A finished stage leaves `<workdir>/<name>/stage_done.json` (written atomically) holding its outputs;
a rerun skips it and returns those outputs, so later stages resume where a killed run stopped. In a multi-host
run every process runs the stage and process 0 writes the marker.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from absl import logging

from anon_jax.files import atomic_write_text
from anon_jax.training import multihost

DONE_FILE = "stage_done.json"


def run_stage(workdir: str, name: str, fn: Callable[[str], dict[str, Any]], *,
              primary_only: bool = False) -> dict[str, Any]:
    """Runs `fn(stage_dir)` unless the stage already finished; returns its JSON-able outputs.

    Every process runs the stage (collective training steps) and process 0 writes the marker; with
    `primary_only` (stages that only write files, such as data preparation) process 0 alone runs it and the
    others read its outputs from the marker.
    """
    stage_dir = os.path.join(workdir, name)
    done_path = os.path.join(stage_dir, DONE_FILE)

    def run() -> dict[str, Any]:
        os.makedirs(stage_dir, exist_ok=True)
        logging.info("Stage %r: starting in %s", name, stage_dir)
        return fn(stage_dir)

    def write_marker(outputs: dict[str, Any]) -> dict[str, Any]:
        atomic_write_text(done_path, json.dumps(outputs, indent=2, sort_keys=True))
        logging.info("Stage %r: done", name)
        return outputs

    if primary_only:
        # Process 0 alone decides and runs; all processes meet at the barrier either way, so none waits alone.
        ran = multihost.primary_only(f"stage {name}", lambda: None if os.path.exists(done_path) else write_marker(run()))
        if ran is not None:
            return ran
    elif not os.path.exists(done_path):
        outputs = run()
        # The marker is written after every process has checked for it, so all of them take the same branch.
        multihost.barrier(f"stage {name}: done")
        if multihost.is_primary():
            write_marker(outputs)
        return outputs
    with open(done_path) as f:
        outputs = json.load(f)
    logging.info("Stage %r already finished; reusing %s", name, done_path)
    return outputs


def run_training_stage(workdir: str, name: str, fn: Callable[[str], tuple[Any, dict[str, Any]]]) -> tuple[Any, dict]:
    """Runs a training stage `fn(stage_dir) -> (trained values, JSON-able outputs)`.

    Unlike `run_stage`, a finished stage still calls `fn`: it restores the final checkpoint (taking no step) so
    later stages get the trained values, while the outputs stored when it finished are returned.
    """
    trained = {}

    def outputs_only(stage_dir):
        trained["values"], outputs = fn(stage_dir)
        return outputs

    outputs = run_stage(workdir, name, outputs_only)
    if "values" not in trained:
        logging.info("Stage %r: restoring its final checkpoint", name)
        trained["values"], _ = fn(os.path.join(workdir, name))
    return trained["values"], outputs
