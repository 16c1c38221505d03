"""Entry point: `python -m anon_jax.main --config=configs/<experiment>.py[:variant] --workdir=DIR`.

Runs the method named by `config.method` end to end in the workdir; rerunning the same command
resumes from the last checkpoint and skips finished stages.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from anon_jax.files import atomic_write_text
from anon_jax.training import multihost
from anon_jax.training.loop import Preempted

METHODS = {
    "reid_baseline": "anon_jax.methods.reid_baseline",
    "reconstructor_pretrain": "anon_jax.methods.reconstructor_pretrain",
    "event_anonymization": "anon_jax.methods.event_anonymization",
    "anonynoise": "anon_jax.methods.anonynoise",
    "privacy_reid": "anon_jax.methods.privacy_reid",
    "pixelfade": "anon_jax.methods.pixelfade",
}

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries, data caches and the report.")
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/eventreid.py.")
flags.DEFINE_enum("distributed", "auto", multihost.DISTRIBUTED_MODES,
                  "Join a multi-process job: auto = when a coordinator address, --num_processes > 1 or a multi-task "
                  "SLURM step is visible; on = always (Cloud TPU pods detect the rest); off = never.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (default: JAX_COORDINATOR_ADDRESS or "
                    "detected on TPU/SLURM).")
flags.DEFINE_integer("num_processes", None, "Processes in the job (default: detected on TPU/SLURM).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes) (default: detected).")
flags.mark_flags_as_required(["config", "workdir"])


def method_module(name: str):
    if name not in METHODS:
        raise ValueError(f"config.method={name!r} is unknown; choose one of {sorted(METHODS)}.")
    return importlib.import_module(METHODS[name])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    multihost.initialize(FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
                         num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    config = FLAGS.config
    workdir = os.path.abspath(FLAGS.workdir)
    os.makedirs(workdir, exist_ok=True)
    logging.info("JAX %s on %d %s device(s), process %d of %d", jax.__version__, jax.device_count(),
                 jax.default_backend(), jax.process_index(), jax.process_count())
    multihost.primary_only("config.json", lambda: atomic_write_text(
        os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True)))
    try:
        report = method_module(config.method).train_and_evaluate(config, workdir)
    except Preempted as stop:
        logging.warning("%s", stop)
        sys.exit(143)
    print(json.dumps(report.get("metrics", report), indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
