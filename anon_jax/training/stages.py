"""Stage runner: each phase of a method runs once in its own workdir subfolder.

A finished stage leaves `<workdir>/<name>/stage_done.json` (written atomically) holding its outputs;
a rerun skips it and returns those outputs, so later stages resume where a killed run stopped.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from absl import logging

from anon_jax.files import atomic_write_text

DONE_FILE = "stage_done.json"


def run_stage(workdir: str, name: str, fn: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Runs `fn(stage_dir)` unless the stage already finished; returns its JSON-able outputs."""
    stage_dir = os.path.join(workdir, name)
    done_path = os.path.join(stage_dir, DONE_FILE)
    if os.path.exists(done_path):
        with open(done_path) as f:
            outputs = json.load(f)
        logging.info("Stage %r already finished; reusing %s", name, done_path)
        return outputs
    os.makedirs(stage_dir, exist_ok=True)
    logging.info("Stage %r: starting in %s", name, stage_dir)
    outputs = fn(stage_dir)
    atomic_write_text(done_path, json.dumps(outputs, indent=2, sort_keys=True))
    logging.info("Stage %r: done", name)
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
