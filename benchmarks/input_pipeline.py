"""Does the input pipeline starve the event-anonymization joint step? Step time fed by the real pipeline
(joint_batches -> shard_batch -> prefetch) on the embedded synthetic data vs the same step on one in-memory batch.

The frozen reconstructor is a randomly initialised E2VID of the config's architecture: only speed matters here.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import configs.eventreid as eventreid_config
from anon_jax.data import datasets, pipeline
from anon_jax.files import atomic_write_text
from anon_jax.methods import event_anonymization as method
from anon_jax.methods import reconstructor_pretrain
from anon_jax.models import anonymizer as anonymizer_lib
from anon_jax.models import reid as reid_models
from anon_jax.training import mesh as mesh_lib
from anon_jax.training import optim, precision
from benchmarks.common import add_common_args, time_fn, write_results

PREFETCH_SIZE = 2  # pipeline.prefetch's default, as train_joint uses it
PREPARED_FILE = "prepared.json"  # in the data folder: the prepared paths and the data config they came from
ROUNDS = 2  # in-memory block then real-data block, repeated, so a load change on the shared machine hits both


def prepared_training_split(data_config, data_dir: pathlib.Path) -> dict:
    """The training split of the config's data, prepared into `data_dir` once and reused by later runs."""
    marker = data_dir / PREPARED_FILE
    wanted = json.loads(data_config.to_json())
    prepared = None
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record["data_config"] == wanted:
            prepared = record["prepared"]
    if prepared is None:
        prepared = datasets.prepare_event_reid(data_config, str(data_dir))
        atomic_write_text(marker, json.dumps({"data_config": wanted, "prepared": prepared}, indent=2) + "\n")
    return datasets.load_event_reid(data_config, prepared)["train"]


def random_reconstructor(config, dtype):
    """(Reconstructor, variables) of a randomly initialised E2VID with the config's pretraining architecture."""
    pretrain = config.reconstructor.pretrain
    module = reconstructor_pretrain.build_model(pretrain, dtype=dtype)
    side = 2 ** pretrain.model.num_encoders
    variables = jax.jit(lambda rng, voxels: module.init(rng, voxels, train=False))(
        jax.random.key(config.seed), jnp.zeros((1, side, side, pretrain.model.num_bins), jnp.float32))
    return method.Reconstructor(module, unroll=config.reconstructor.scan_unroll), variables


def measure(config, train: dict, repeats: int) -> tuple[list[dict], dict]:
    """Median joint-step times with the real pipeline and with one reused in-memory batch."""
    mesh = mesh_lib.make_mesh(config.mesh_shape)
    dtype = precision.compute_dtype(config.compute_dtype)
    joint = config.joint
    use_frames = joint.loss.reference == "frames" or (joint.loss.reference == "auto" and "frames" in train)
    reconstructor, reconstructor_variables = random_reconstructor(config, dtype)
    reconstructor_variables = mesh_lib.replicate(reconstructor_variables, mesh)
    num_classes = int(train["labels"].max()) + 1
    anonymizer = anonymizer_lib.build_anonymizer(config.anonymizer, dtype=dtype)
    reid = reid_models.build_reid_network(config.baseline.model, num_classes=num_classes, dtype=dtype)
    steps_per_epoch = max(1, len(train["labels"]) // joint.train.batch_size)
    tx, _ = optim.make_optimizer(joint.optimizer, num_steps=joint.train.num_epochs * steps_per_epoch,
                                 steps_per_epoch=steps_per_epoch,
                                 extra_groups={"anonymizer": joint.anonymizer_lr_multiplier})
    state = mesh_lib.replicate(method.joint_state(config, anonymizer, reid, tx, train["voxels"].shape[1:], None), mesh)
    step = jax.jit(method.make_joint_step(config, anonymizer, reid, reconstructor, tx, use_frames=use_frames),
                   donate_argnums=0, out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)))
    real_batches = pipeline.prefetch(
        (mesh_lib.shard_batch(batch, mesh)
         for batch in method.joint_batches(train, config, start_step=0, use_frames=use_frames)), PREFETCH_SIZE)
    fixed_batch = mesh_lib.shard_batch(next(method.joint_batches(train, config, start_step=0, use_frames=use_frames)),
                                       mesh)
    holder = {"state": state}

    def run(next_batch):
        # The state is donated: keep only the newest one; block on it as the training loop's logging would.
        holder["state"], _ = step(holder["state"], next_batch(), reconstructor_variables)
        jax.block_until_ready(holder["state"])

    times = {"in_memory": [], "real_pipeline": []}
    per_round = -(-repeats // ROUNDS)
    for _ in range(ROUNDS):
        times["in_memory"] += time_fn(lambda: run(lambda: fixed_batch), warmup=1, repeats=per_round)["times_s"]
        # Warm-up drains the batches the prefetch thread queued while the in-memory block ran.
        times["real_pipeline"] += time_fn(lambda: run(lambda: next(real_batches)), warmup=PREFETCH_SIZE + 1,
                                          repeats=per_round)["times_s"]
    real_batches.close()
    batch_size = joint.train.batch_size
    medians = {name: float(np.median(values)) for name, values in times.items()}
    rows = [{"feed": name, "step_ms": 1e3 * medians[name],
             "p90_ms": 1e3 * float(np.percentile(times[name], 90)),
             "samples_per_s": batch_size / medians[name]} for name in times]
    busy = medians["in_memory"] / medians["real_pipeline"]
    rows.append({"feed": "busy fraction (in-memory / real)", "step_ms": None, "p90_ms": None, "samples_per_s": None,
                 "busy_fraction": busy})
    meta = {"batch_size": batch_size, "voxel_shape": list(train["voxels"].shape[1:]),
            "train_chunks": int(len(train["labels"])), "attacker": joint.attacker, "use_frames": use_frames,
            "compute_dtype": str(jnp.dtype(dtype)), "devices": jax.device_count(), "busy_fraction": busy}
    return rows, meta


def main(argv: list[str] | None = None) -> list[dict]:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--data_dir", type=pathlib.Path, default=None,
                        help="folder for the prepared synthetic data, reused across runs "
                             "(default: <tmp>/anon_jax_benchmark_data/<variant>)")
    args = parser.parse_args(argv)
    variant = "smoke" if args.quick else "default"
    config = eventreid_config.get_config(variant)
    data_dir = args.data_dir or pathlib.Path(tempfile.gettempdir()) / "anon_jax_benchmark_data" / variant
    train = prepared_training_split(config.data, data_dir)
    rows, meta = measure(config, train, args.repeats)
    meta.update(config=f"configs/eventreid.py:{variant}", data_dir=str(data_dir), rounds=ROUNDS,
                reconstructor="randomly initialised E2VID of config.reconstructor.pretrain.model (speed only)",
                timing="per-step wall time, blocking on the new state each step; medians of the repeats, split over "
                       "the rounds, after warm-up")
    write_results("input_pipeline", rows, meta, args.out)
    return rows


if __name__ == "__main__":
    main()
