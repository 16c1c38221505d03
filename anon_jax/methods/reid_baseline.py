"""ReId trained and evaluated on raw event voxel grids (the "no anonymization" upper bound).

Stages: "data" (generate or partition and split the dataset, voxelise and cache it), "train" (a ResNet
with the paper's ClassBlock, cross-entropy and optional batch-hard triplet loss, data parallel over all
devices), "evaluate" (CMC/mAP with both AP rules for the embed and pool5 descriptors, plus a
nearest-neighbour baseline on the raw voxels).
"""


import functools
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics

from anon_jax import losses
from anon_jax.data import datasets, pipeline
from anon_jax.metrics import reid as reid_metrics
from anon_jax.models import reid as reid_models
from anon_jax.training import mesh as mesh_lib
from anon_jax.training import multihost, optim, precision
from anon_jax.training.checkpoint import Checkpoints
from anon_jax.training.loop import create_writer, train_loop
from anon_jax.training.report import write_report
from anon_jax.training.stages import run_stage, run_training_stage


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    cross_entropy: clu_metrics.Average.from_output("cross_entropy")
    triplet: clu_metrics.Average.from_output("triplet")
    accuracy: clu_metrics.Accuracy


def create_state(model, tx, input_shape, rng):
    """The train state pytree: step, RNG key and the ReId network's params, batch stats, optimizer state."""
    init_rng, state_rng = jax.random.split(rng)
    # Jitted: un-jitted init dispatches every random initialiser separately and is slow on CPU.
    variables = jax.jit(functools.partial(model.init, train=False))(init_rng, jnp.zeros((1, *input_shape), jnp.float32))
    params = variables["params"]
    return {
        "step": jnp.zeros((), jnp.int32),
        "rng": state_rng,
        "reid": {"params": params, "batch_stats": variables["batch_stats"], "opt_state": tx.init(params)},
    }


def random_flip(rng, voxels):
    """Flips each sample along the width with probability 1/2 (NHWC)."""
    flip = jax.random.bernoulli(rng, 0.5, (voxels.shape[0], 1, 1, 1))
    return jnp.where(flip, voxels[:, :, ::-1, :], voxels)


def make_train_step(spec: ml_collections.ConfigDict, model, tx):
    loss_cfg = spec.loss

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        voxels = batch["voxels"]
        if spec.train.random_flip:
            voxels = random_flip(rng, voxels)
        reid = state["reid"]

        def loss_fn(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": reid["batch_stats"]}, voxels, train=True, mutable=["batch_stats"]
            )
            ce = losses.cross_entropy(outputs["logits"], batch["labels"], label_smoothing=loss_cfg.label_smoothing)
            triplet = jnp.zeros((), jnp.float32)
            if loss_cfg.triplet_weight:
                triplet = losses.batch_hard_triplet(outputs["embed"], batch["labels"], margin=loss_cfg.triplet_margin)
            return ce + loss_cfg.triplet_weight * triplet, (outputs["logits"], updates["batch_stats"], ce, triplet)

        grads, (logits, batch_stats, ce, triplet) = jax.grad(loss_fn, has_aux=True)(reid["params"])
        updates, opt_state = tx.update(grads, reid["opt_state"], reid["params"])
        params = optax.apply_updates(reid["params"], updates)
        new_state = {
            "step": state["step"] + 1,
            "rng": state["rng"],
            "reid": {"params": params, "batch_stats": batch_stats, "opt_state": opt_state},
        }
        step_metrics = TrainMetrics.single_from_model_output(
            loss=ce + loss_cfg.triplet_weight * triplet,
            cross_entropy=ce,
            triplet=triplet,
            logits=logits,
            labels=batch["labels"],
        )
        return new_state, step_metrics

    return train_step


def make_feature_fn(apply_fn):
    """Features of the input plus its horizontal flip, summed and L2-normalised (the paper's test rule).

    `apply_fn(variables, voxels, train=False)` returns the "embed" and "pool5" descriptors.
    """

    def features(variables, voxels):
        plain = apply_fn(variables, voxels, train=False)
        flipped = apply_fn(variables, voxels[:, :, ::-1, :], train=False)
        summed = {name: plain[name] + flipped[name] for name in ("embed", "pool5")}
        return {name: f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12) for name, f in summed.items()}

    return features


def evaluate_retrieval(query_features, gallery_features, query, gallery, *, max_rank: int) -> dict:
    """CMC/mAP of cosine ranking under both AP rules."""
    distances = reid_metrics.cosine_distance(query_features, gallery_features)
    results = {}
    for ap_rule in ("standard", "trapezoid"):
        scores = reid_metrics.cmc_map(
            distances, query["labels"], gallery["labels"], query["cams"], gallery["cams"], max_rank=max_rank, ap=ap_rule
        )
        results[ap_rule] = {
            "cmc": [float(v) for v in scores["cmc"]],
            "rank1": float(scores["rank1"]),
            "rank5": float(scores["rank5"]),
            "rank10": float(scores["rank10"]),
            "mAP": float(scores["mAP"]),
        }
    return results


def make_sampler(spec: ml_collections.ConfigDict, labels: np.ndarray, *, seed: int):
    """`sampler(epoch=e)` -> that epoch's global batches of example indices (`spec.train` settings)."""
    batch_size = spec.train.batch_size
    if spec.train.sampler == "shuffle":
        return functools.partial(pipeline.shuffled_batches, len(labels), batch_size, seed=seed)
    if spec.train.sampler == "pk":
        k = spec.train.pk_instances
        if batch_size % k:
            raise ValueError(f"config.train.batch_size={batch_size} must be a multiple of config.train.pk_instances={k}.")
        return functools.partial(pipeline.pk_batches, labels, batch_size // k, k, seed=seed)
    raise ValueError(f"config.train.sampler={spec.train.sampler!r}: use 'shuffle' or 'pk'.")


def fit(spec: ml_collections.ConfigDict, train: dict, stage_dir: str, *, mesh, seed: int, tensorboard_dir: str,
        name: str = "reid", dtype=jnp.float32):
    """Trains a ReId network on `train` ("voxels" (N, H, W, C) of any channel count, "labels") to the end.

    `spec` holds the model, loss, train and optimizer sections; the network computes in `dtype` (float32 params).
    Resumes from the checkpoints in `stage_dir/checkpoints`; when they already hold the last step, nothing is
    trained. Returns ((model, variables), info) with the final variables {"params", "batch_stats"}.
    """
    num_classes = int(train["labels"].max()) + 1
    model = reid_models.build_reid_network(spec.model, num_classes=num_classes, dtype=dtype)
    mesh_lib.check_batch_size(spec.train.batch_size, mesh)
    sampler = make_sampler(spec, train["labels"], seed=seed)
    steps_per_epoch = len(sampler(epoch=0))
    num_steps = spec.train.num_epochs * steps_per_epoch
    tx, _ = optim.make_optimizer(spec.optimizer, num_steps=num_steps, steps_per_epoch=steps_per_epoch)
    state = mesh_lib.replicate(create_state(model, tx, train["voxels"].shape[1:], jax.random.key(seed)), mesh)
    checkpoints = Checkpoints(f"{stage_dir}/checkpoints", max_to_keep=spec.train.max_checkpoints_to_keep,
                              save_every_steps=spec.train.checkpoint_every_steps)
    state = checkpoints.restore_or(state)
    start_step = int(jax.device_get(state["step"]))
    local_batches = pipeline.batch_iterator(
        {"voxels": train["voxels"], "labels": train["labels"]}, sampler, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    batches = pipeline.prefetch(mesh_lib.shard_batch(batch, mesh) for batch in local_batches)
    train_step = jax.jit(make_train_step(spec, model, tx), donate_argnums=0,
                         out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)))
    started = time.perf_counter()
    state = train_loop(name=name, state=state, train_step=train_step, batches=batches, num_steps=num_steps,
                       checkpoints=checkpoints, writer=create_writer(tensorboard_dir),
                       log_every_steps=spec.train.log_every_steps)
    checkpoints.close()
    info = {"num_steps": num_steps, "steps_per_epoch": steps_per_epoch,
            "seconds": round(time.perf_counter() - started, 1), "num_classes": num_classes}
    return (model, {"params": state["reid"]["params"], "batch_stats": state["reid"]["batch_stats"]}), info


def evaluate_features(feature_fn, variables, query: dict, gallery: dict, *, batch_size: int, max_rank: int,
                      mesh) -> dict:
    """Rows "<descriptor> / <AP rule> AP" of CMC/mAP for both descriptors of `feature_fn`."""
    feats = {
        name: mesh_lib.map_batches(feature_fn, variables, split["voxels"], batch_size=batch_size, mesh=mesh)
        for name, split in (("query", query), ("gallery", gallery))
    }
    rows = {}
    for descriptor in ("embed", "pool5"):
        results = evaluate_retrieval(feats["query"][descriptor], feats["gallery"][descriptor], query, gallery,
                                     max_rank=max_rank)
        for ap_rule, values in results.items():
            rows[f"{descriptor} / {ap_rule} AP"] = values
    return rows


def summary_rows(evaluated: dict) -> dict:
    """The report's scalar rows (rank-1/5/10, mAP) of evaluation results."""
    return {name: {k: values[k] for k in ("rank1", "rank5", "rank10", "mAP")} for name, values in evaluated.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the data, train and evaluate stages in `workdir`; returns the report."""
    mesh = mesh_lib.make_mesh(config.mesh_shape)
    dtype = precision.compute_dtype(config.compute_dtype)
    data_info = run_stage(workdir, "data", lambda stage_dir: datasets.prepare_event_reid(config.data, stage_dir),
                          primary_only=True)
    splits = multihost.primary_first("voxel cache", lambda: datasets.load_event_reid(config.data, data_info))
    train = splits["train"]
    logging.info(
        "Data: %d train chunks (%d identities), %d query, %d gallery; voxel %s",
        len(train["labels"]), int(train["labels"].max()) + 1, len(splits["query"]["labels"]),
        len(splits["gallery"]["labels"]), train["voxels"].shape[1:],
    )
    (model, variables), train_info = run_training_stage(workdir, "train", lambda stage_dir: fit(
        config, train, stage_dir, mesh=mesh, seed=config.seed, tensorboard_dir=f"{workdir}/tensorboard", dtype=dtype))

    def evaluate_stage(stage_dir):
        del stage_dir
        feature_fn = jax.jit(make_feature_fn(model.apply))
        query, gallery = splits["query"], splits["gallery"]
        rows = evaluate_features(feature_fn, variables, query, gallery, batch_size=config.eval.batch_size,
                                 max_rank=config.eval.max_rank, mesh=mesh)
        raw = evaluate_retrieval(query["voxels"].reshape(len(query["voxels"]), -1),
                                 gallery["voxels"].reshape(len(gallery["voxels"]), -1), query, gallery,
                                 max_rank=config.eval.max_rank)
        rows["raw voxel nearest neighbour / standard AP"] = raw["standard"]
        return rows

    evaluated = run_stage(workdir, "evaluate", evaluate_stage)
    rows = summary_rows(evaluated)
    curves = {name: values["cmc"] for name, values in evaluated.items() if "trapezoid" not in name}
    headline = rows[f"{config.eval.feature} / standard AP"]
    for name, values in rows.items():
        logging.info("%-45s rank-1 %.2f%%  rank-5 %.2f%%  mAP %.2f%%", name, 100 * values["rank1"],
                     100 * values["rank5"], 100 * values["mAP"])
    details = {
        "dataset": config.data.name,
        "train_chunks": int(len(train["labels"])),
        "train_identities": train_info["num_classes"],
        "query_chunks": int(len(splits["query"]["labels"])),
        "gallery_chunks": int(len(splits["gallery"]["labels"])),
        "voxel_shape": list(train["voxels"].shape[1:]),
        "model": f"ResNet-{config.model.depth} width {config.model.width}, head {config.model.head}",
        "train_steps": train_info["num_steps"],
        "train_seconds": train_info["seconds"],
        "headline_rank1": headline["rank1"],
        "devices": jax.device_count(),
    }
    return write_report(workdir, title="ReId on raw event voxel grids", metrics=rows, details=details,
                        cmc_curves=curves)
