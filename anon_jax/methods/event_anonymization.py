"""Event anonymization ("ReId without Id", ICCV 2023): an anonymizer and a ReId network trained jointly against a
frozen events-to-video reconstructor, then attacked.

Stages, in `config.stages` order: "reconstructor" (import an official checkpoint, load a pretrained directory or
pretrain one), "data", "baseline" (ReId on raw voxels), "joint" (anonymizer + ReId, the reconstructor frozen but
differentiated through), "attacks" (inverter, adaptive reconstructor, identity-leakage network; trained on the
training identities) and "evaluate" (ReId raw vs anonymised; per attack SSIM/PSNR against the reference frames and
identity leakage on the test identities). Every stage checkpoints in its own subfolder and is skipped once done.
Loss: L_reid + w_struct (1 - SSIM(V, V_an)) - w_rec (1 - SSIM(I_ref, I_an)) with the torchmetrics-0.11 SSIM.
"""

import functools
import os
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
from anon_jax.convert import e2vid as e2vid_convert
from anon_jax.data import datasets, event_reid, pipeline
from anon_jax.methods import privacy_report, reconstructor_pretrain, reid_baseline
from anon_jax.metrics import image as image_metrics
from anon_jax.models import anonymizer as anonymizer_lib
from anon_jax.models import e2vid
from anon_jax.models import reid as reid_models
from anon_jax.training import mesh as mesh_lib
from anon_jax.training import multihost, optim, precision
from anon_jax.training import report as report_lib
from anon_jax.training.checkpoint import Checkpoints
from anon_jax.training.loop import create_writer, train_loop
from anon_jax.training.stages import run_stage, run_training_stage

STAGES = ("reconstructor", "data", "baseline", "joint", "attacks", "evaluate")
OPTIONAL_STAGES = ("baseline", "attacks")
ANONYMIZER_DIR = "anonymizer"  # inside the workdir; what `python -m anon_jax.anonymize` reads
ATTACKER_MODES = ("stateless", "stateful")
REFERENCES = ("auto", "frames", "reconstruction")


@flax.struct.dataclass
class JointMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    cross_entropy: clu_metrics.Average.from_output("cross_entropy")
    triplet: clu_metrics.Average.from_output("triplet")
    struct_loss: clu_metrics.Average.from_output("struct_loss")
    rec_loss: clu_metrics.Average.from_output("rec_loss")
    accuracy: clu_metrics.Accuracy


@flax.struct.dataclass
class AttackMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    l1: clu_metrics.Average.from_output("l1")
    ssim: clu_metrics.Average.from_output("ssim")


def check_stages(stages) -> tuple[str, ...]:
    stages = tuple(stages)
    unknown = [s for s in stages if s not in STAGES]
    missing = [s for s in STAGES if s not in OPTIONAL_STAGES and s not in stages]
    if unknown or missing or list(stages) != [s for s in STAGES if s in stages]:
        raise ValueError(f"config.stages={stages}: use the stages {STAGES} in this order; only {OPTIONAL_STAGES} "
                         f"may be left out (unknown: {unknown}, missing: {missing}).")
    return stages


# ----------------------------------------------------------------------------------------------------------
# The attacker: E2VID applied to single windows or to time-ordered windows


class Reconstructor:
    """A frozen E2VID with padding to its size multiple: stateless windows or stateful sequences."""

    def __init__(self, module: e2vid.E2VID, *, unroll):
        self.module = module
        self.multiple = 2 ** module.config.num_encoders
        self.unroll = unroll

    def windows(self, variables, voxels):
        """Images (B, H, W, 1) of independent windows (B, H, W, C), each from a zero state (as published)."""
        height, width = voxels.shape[1:3]
        image, _ = self.module.apply(variables, e2vid.pad_to_multiple(voxels, self.multiple), None, train=False)
        return e2vid.crop_to(image, height, width)

    def sequences(self, variables, voxels):
        """Images (B, L, H, W, 1) of time-ordered windows (B, L, H, W, C), the state carried from a zero start."""
        height, width = voxels.shape[2:4]
        time_major = jax.vmap(lambda v: e2vid.pad_to_multiple(v, self.multiple), in_axes=1, out_axes=0)(voxels)
        images, _ = reconstructor_pretrain.reconstruct_windows(self.module, variables, time_major, train=False,
                                                               unroll=self.unroll)
        return jnp.swapaxes(e2vid.crop_to(images, height, width), 0, 1)

    def apply(self, variables, voxels, mode: str):
        return self.windows(variables, voxels) if mode == "stateless" else self.sequences(variables, voxels)


def prepare_reconstructor(config, workdir: str) -> dict:
    """Stage "reconstructor": the attacker's save_pretrained directory (imported, given, or pretrained here)."""
    path = os.path.abspath(os.path.expanduser(config.reconstructor.path)) if config.reconstructor.path else ""
    stage_dir = os.path.join(workdir, "reconstructor")
    if path and os.path.isdir(path):
        e2vid.load_config(path)  # fails early with a clear message if it is not an E2VID directory
        return {"reconstructor_dir": path, "source": "pretrained directory"}
    if path and os.path.isfile(path):
        out_dir = os.path.join(stage_dir, reconstructor_pretrain.RECONSTRUCTOR_DIR)
        multihost.primary_only("E2VID import", lambda: e2vid_convert.convert_checkpoint(path, out_dir))
        return {"reconstructor_dir": out_dir, "source": f"imported from {path}"}
    if path:
        raise FileNotFoundError(f"config.reconstructor.path={config.reconstructor.path!r} does not exist; give an "
                                "official E2VID .pth.tar, a save_pretrained directory, or '' to pretrain one.")
    pretrain = config.reconstructor.pretrain
    if pretrain.model.num_bins != config.data.num_bins:
        raise ValueError(f"config.reconstructor.pretrain.model.num_bins={pretrain.model.num_bins} must equal "
                         f"config.data.num_bins={config.data.num_bins}.")
    report = reconstructor_pretrain.train_and_evaluate(pretrain, stage_dir)
    return {"reconstructor_dir": report["details"]["reconstructor"], "source": "pretrained on simulated events",
            "pretrain_metrics": report["metrics"]}


# ----------------------------------------------------------------------------------------------------------
# Joint training


def split_params(params: dict) -> tuple[dict, dict]:
    """(anonymizer params, ReId params) of the joint parameter tree {"anonymizer", "backbone", "head"}."""
    return params["anonymizer"], {name: value for name, value in params.items() if name != "anonymizer"}


def flip_pairs(rng, arrays: dict) -> dict:
    """Flips each example (and all its windows and frames alike) along the width with probability 1/2."""
    batch = next(iter(arrays.values())).shape[0]
    flip = jax.random.bernoulli(rng, 0.5, (batch,))

    def one(x):
        mask = flip.reshape((batch,) + (1,) * (x.ndim - 1))
        return jnp.where(mask, jnp.flip(x, axis=-2), x)

    return {name: one(value) for name, value in arrays.items()}


def make_joint_step(config, anonymizer, reid, reconstructor: Reconstructor, tx, *, use_frames: bool):
    """train_step(state, batch, reconstructor_variables) of the joint objective (see the module docstring)."""
    joint = config.joint
    mode = joint.attacker

    def train_step(state, batch, reconstructor_variables):
        rng = jax.random.fold_in(state["rng"], state["step"])
        inputs = {"voxels": batch["voxels"], **({"frames": batch["frames"]} if use_frames else {})}
        if joint.train.random_flip:
            inputs = flip_pairs(rng, inputs)
        voxels = inputs["voxels"]  # (B, H, W, C) stateless or (P, K, H, W, C) stateful
        flat = voxels.reshape((-1,) + voxels.shape[-3:])
        labels = batch["labels"].reshape(-1)

        def loss_fn(params):
            anonymizer_params, reid_params = split_params(params)
            anonymized = anonymizer.apply({"params": anonymizer_params}, flat)
            outputs, updates = reid.apply({"params": reid_params, "batch_stats": state["batch_stats"]}, anonymized,
                                          train=True, mutable=["batch_stats"])
            cross_entropy = losses.cross_entropy(outputs["logits"], labels, label_smoothing=joint.loss.label_smoothing)
            triplet = jnp.zeros((), jnp.float32)
            if joint.loss.triplet_weight:
                triplet = losses.batch_hard_triplet(outputs["embed"], labels, margin=joint.loss.triplet_margin)
            struct_loss = 1 - jnp.mean(image_metrics.ssim(flat, anonymized))
            attacked = reconstructor.apply(reconstructor_variables, anonymized.reshape(voxels.shape), mode)
            if use_frames:
                reference = inputs["frames"]
            else:  # the public code's pseudo ground truth: the reconstruction of the raw voxels
                reference = jax.lax.stop_gradient(reconstructor.apply(reconstructor_variables, voxels, mode))
            image_shape = (-1,) + attacked.shape[-3:]
            rec_loss = 1 - jnp.mean(image_metrics.ssim(reference.reshape(image_shape), attacked.reshape(image_shape)))
            reid_loss = cross_entropy + joint.loss.triplet_weight * triplet
            loss = reid_loss + joint.loss.struct_weight * struct_loss - joint.loss.rec_weight * rec_loss
            terms = dict(loss=loss, cross_entropy=cross_entropy, triplet=triplet, struct_loss=struct_loss,
                         rec_loss=rec_loss)
            return loss, (terms, outputs["logits"], updates["batch_stats"])

        grads, (terms, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1, "rng": state["rng"], "params": optax.apply_updates(state["params"], updates),
                     "batch_stats": batch_stats, "opt_state": opt_state}
        return new_state, JointMetrics.single_from_model_output(logits=logits, labels=labels, **terms)

    return train_step


def sequence_starts(split: dict, length: int) -> np.ndarray:
    """Indices i of `split` where entries i .. i+length-1 are consecutive chunks of one recording."""
    parsed = [event_reid.parse_chunk_name(path) for path in split["paths"]]
    recording = np.array([f"{identity}_c{cam}" for identity, cam, _ in parsed])
    index = np.array([chunk for _, _, chunk in parsed])
    starts = [i for i in range(len(parsed) - length + 1)
              if np.all(recording[i:i + length] == recording[i])
              and np.array_equal(index[i:i + length], index[i] + np.arange(length))]
    return np.asarray(starts, np.int64)


def joint_batches(train: dict, config, *, start_step: int, use_frames: bool):
    """Per-process batches for steps start_step, start_step + 1, ...: windows (stateless) or runs of K windows.

    Stateful draws depend only on (seed, step), so a resumed run sees the batches it would have seen.
    """
    joint = config.joint
    names = ("voxels", "labels") + (("frames",) if use_frames else ())
    if joint.attacker == "stateless":
        sampler = functools.partial(pipeline.shuffled_batches, len(train["labels"]), joint.train.batch_size,
                                    seed=config.seed)
        yield from pipeline.batch_iterator({n: train[n] for n in names}, sampler, start_step=start_step,
                                           process_index=jax.process_index(), process_count=jax.process_count())
        return
    length = joint.sequence_length
    starts = sequence_starts(train, length)
    if not len(starts):
        raise ValueError(f"config.joint.sequence_length={length}: no run of that many consecutive training chunks.")
    sequences_per_batch = joint.train.batch_size // length
    step = start_step
    while True:
        rng = np.random.default_rng([config.seed, 23, step])
        chosen = starts[rng.integers(0, len(starts), sequences_per_batch)]
        rows = pipeline.process_slice(np.arange(sequences_per_batch), jax.process_index(), jax.process_count())
        index = chosen[rows, None] + np.arange(length)
        yield {n: train[n][index] for n in names}
        step += 1


def joint_state(config, anonymizer, reid, tx, input_shape, baseline_variables):
    """Initial joint state; the ReId part starts from the raw baseline when it was trained and asked for."""
    anon_rng, reid_rng, state_rng = jax.random.split(jax.random.key(config.seed + 1), 3)
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    anonymizer_params = jax.jit(anonymizer.init)(anon_rng, dummy)["params"]
    reid_variables = jax.jit(functools.partial(reid.init, train=False))(reid_rng, dummy)
    if baseline_variables is not None and config.joint.init_from_baseline:
        # A copy: the joint state is donated to the train step, the baseline is still evaluated afterwards.
        reid_variables = jax.tree_util.tree_map(jnp.copy, baseline_variables)
    params = {"anonymizer": anonymizer_params, **reid_variables["params"]}
    return {"step": jnp.zeros((), jnp.int32), "rng": state_rng, "params": params,
            "batch_stats": reid_variables["batch_stats"], "opt_state": tx.init(params)}


# ----------------------------------------------------------------------------------------------------------
# Attacks trained on the training identities


def make_attack_step(apply_fn, tx, *, ssim_data_range):
    """train_step(state, batch) minimising L1 + (1 - SSIM) of apply_fn(params, batch["inputs"]) vs batch["targets"]."""

    def train_step(state, batch):
        def loss_fn(params):
            predictions = apply_fn(params, batch["inputs"])
            l1 = jnp.mean(jnp.abs(predictions - batch["targets"]))
            ssim = jnp.mean(image_metrics.ssim(predictions, batch["targets"], data_range=ssim_data_range))
            return l1 + 1 - ssim, dict(l1=l1, ssim=ssim)

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state}
        return new_state, AttackMetrics.single_from_model_output(loss=loss, **terms)

    return train_step


def train_attack(name: str, attack_cfg, params, apply_fn, prepare, arrays: dict, stage_dir: str, *, mesh, seed: int,
                 tensorboard_dir: str, ssim_data_range=None):
    """Trains `params` of an attack network with L1 + (1 - SSIM) to the last step (resuming); returns (params, info).

    `arrays` are host arrays of the training examples: "targets" and what the jitted `prepare(batch)` turns into
    the network's inputs (e.g. raw voxels -> anonymised voxels with the released anonymizer).
    """
    tx, _ = optim.make_optimizer(attack_cfg.optimizer, num_steps=attack_cfg.num_steps, steps_per_epoch=1)
    params = jax.tree_util.tree_map(jnp.copy, params)  # the state is donated; the caller may still use `params`
    state = mesh_lib.replicate({"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)},
                               mesh)
    checkpoints = Checkpoints(f"{stage_dir}/checkpoints", max_to_keep=2,
                              save_every_steps=attack_cfg.checkpoint_every_steps)
    state = checkpoints.restore_or(state)
    mesh_lib.check_batch_size(attack_cfg.batch_size, mesh, f"config.attacks.{name}.batch_size")
    sampler = functools.partial(pipeline.shuffled_batches, len(arrays["targets"]), attack_cfg.batch_size, seed=seed)
    local = pipeline.batch_iterator(arrays, sampler, start_step=int(jax.device_get(state["step"])),
                                    process_index=jax.process_index(), process_count=jax.process_count())
    batches = pipeline.prefetch(mesh_lib.shard_batch(batch, mesh) for batch in local)
    step = jax.jit(make_attack_step(apply_fn, tx, ssim_data_range=ssim_data_range), donate_argnums=0)
    prepare = jax.jit(prepare)

    def train_step(state, batch):
        return step(state, {"inputs": prepare(batch), "targets": batch["targets"]})

    started = time.perf_counter()
    state = train_loop(name=name, state=state, train_step=train_step, batches=batches,
                       num_steps=attack_cfg.num_steps, checkpoints=checkpoints,
                       writer=create_writer(tensorboard_dir), log_every_steps=attack_cfg.log_every_steps)
    checkpoints.close()
    return state["params"], {"num_steps": attack_cfg.num_steps, "seconds": round(time.perf_counter() - started, 1)}


# ----------------------------------------------------------------------------------------------------------
# The method


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the configured stages in `workdir`; returns the report."""
    stages = check_stages(config.stages)
    if config.joint.attacker not in ATTACKER_MODES:
        raise ValueError(f"config.joint.attacker={config.joint.attacker!r}: use one of {ATTACKER_MODES}.")
    if config.joint.loss.reference not in REFERENCES:
        raise ValueError(f"config.joint.loss.reference={config.joint.loss.reference!r}: use one of {REFERENCES}.")
    mesh = mesh_lib.make_mesh(config.mesh_shape)
    dtype = precision.compute_dtype(config.compute_dtype)
    tensorboard_dir = f"{workdir}/tensorboard"

    reconstructor_info = run_stage(workdir, "reconstructor", lambda d: prepare_reconstructor(config, workdir))
    reconstructor_module, reconstructor_variables = e2vid.load_pretrained(reconstructor_info["reconstructor_dir"],
                                                                          dtype=dtype)
    reconstructor_variables = mesh_lib.replicate(reconstructor_variables, mesh)
    reconstructor = Reconstructor(reconstructor_module, unroll=config.reconstructor.scan_unroll)

    data_info = run_stage(workdir, "data", lambda stage_dir: datasets.prepare_event_reid(config.data, stage_dir),
                          primary_only=True)
    splits = multihost.primary_first("voxel cache", lambda: datasets.load_event_reid(config.data, data_info))
    train = splits["train"]
    reference_kind = config.joint.loss.reference
    if reference_kind == "auto":
        reference_kind = "frames" if "frames" in train else "reconstruction"
    if reference_kind == "frames" and "frames" not in train:
        raise ValueError("config.joint.loss.reference='frames' but the dataset has no ground-truth frames "
                         "(only the embedded synthetic data has them); use 'reconstruction' or 'auto'.")
    use_frames = reference_kind == "frames"
    num_classes = int(train["labels"].max()) + 1
    logging.info("Data: %d train chunks (%d identities), %d query, %d gallery; voxel %s; reference images: %s",
                 len(train["labels"]), num_classes, len(splits["query"]["labels"]), len(splits["gallery"]["labels"]),
                 train["voxels"].shape[1:], reference_kind)

    def ground_truth(split):
        """What attackers aim at and the identity-leakage network learns from: the split's frames, or (real data)
        stateless reconstructions of its raw voxels."""
        if "frames" in split:
            return split["frames"]
        return mesh_lib.map_batches(reconstructor.windows, reconstructor_variables, split["voxels"],
                                    batch_size=config.eval.batch_size, mesh=mesh)

    details = {"dataset": config.data.name, "reference": reference_kind, "reconstructor": reconstructor_info["source"],
               "attacker_in_training": config.joint.attacker, "train_chunks": int(len(train["labels"])),
               "train_identities": num_classes, "query_chunks": int(len(splits["query"]["labels"])),
               "gallery_chunks": int(len(splits["gallery"]["labels"])), "voxel_shape": list(train["voxels"].shape[1:]),
               "reid_model": f"ResNet-{config.baseline.model.depth} width {config.baseline.model.width}",
               "devices": jax.device_count()}
    baseline = None
    if "baseline" in stages:
        baseline, baseline_info = run_training_stage(workdir, "baseline", lambda stage_dir: reid_baseline.fit(
            config.baseline, train, stage_dir, mesh=mesh, seed=config.seed, tensorboard_dir=tensorboard_dir,
            name="baseline", dtype=dtype))
        details["baseline_steps"], details["baseline_seconds"] = baseline_info["num_steps"], baseline_info["seconds"]

    anonymizer = anonymizer_lib.build_anonymizer(config.anonymizer, dtype=dtype)
    reid = reid_models.build_reid_network(config.baseline.model, num_classes=num_classes, dtype=dtype)

    def joint_stage(stage_dir):
        trained, info = train_joint(config, stage_dir, train, anonymizer, reid, reconstructor,
                                    reconstructor_variables, baseline[1] if baseline else None, mesh=mesh,
                                    use_frames=use_frames, tensorboard_dir=tensorboard_dir)
        anonymizer_params = jax.device_get(trained["params"]["anonymizer"])
        multihost.primary_only("anonymizer export", lambda: anonymizer_lib.save_pretrained(
            os.path.join(workdir, ANONYMIZER_DIR), config.anonymizer, anonymizer_params,
            voxel=dict(num_bins=config.data.num_bins, height=config.data.height, width=config.data.width,
                       partition_mode=config.data.partition_mode, chunk_duration=config.data.chunk_duration,
                       chunk_count=config.data.chunk_count)))
        return trained, info

    joint, joint_info = run_training_stage(workdir, "joint", joint_stage)
    anonymizer_params, reid_params = split_params(joint["params"])
    details.update(joint_steps=joint_info["num_steps"], joint_seconds=joint_info["seconds"],
                   anonymizer=f"{config.anonymizer.kind}, {anonymizer_lib.parameter_count(anonymizer_params):,} "
                              "parameters")

    attacks = None
    if "attacks" in stages:
        attacks = run_attacks(config, workdir, train, anonymizer, anonymizer_params, reconstructor,
                              reconstructor_variables, ground_truth(train), mesh=mesh,
                              tensorboard_dir=tensorboard_dir)
        details["attack_seconds"] = attacks["seconds"]

    evaluated = run_stage(workdir, "evaluate", lambda stage_dir: privacy_report.evaluate(
        config, splits, mesh=mesh, figure_dir=workdir, reference_kind=reference_kind, ground_truth=ground_truth,
        reconstructor=reconstructor, reconstructor_variables=reconstructor_variables,
        anonymizer=anonymizer, anonymizer_params=anonymizer_params,
        reid=reid, reid_variables={"params": reid_params, "batch_stats": joint["batch_stats"]},
        baseline=baseline, attacks=attacks))
    report = privacy_report.write(workdir, evaluated, details)
    report_lib.write_tensorboard(create_writer(tensorboard_dir), report, workdir, step=joint_info["num_steps"])
    return report


def train_joint(config, stage_dir, train, anonymizer, reid, reconstructor, reconstructor_variables,
                baseline_variables, *, mesh, use_frames: bool, tensorboard_dir: str) -> dict:
    """Joint anonymizer + ReId training to the last step (resuming from checkpoints); returns (state, info)."""
    joint = config.joint
    if joint.attacker == "stateful" and joint.train.batch_size % joint.sequence_length:
        raise ValueError(f"config.joint.train.batch_size={joint.train.batch_size} must be a multiple of "
                         f"config.joint.sequence_length={joint.sequence_length} in stateful mode.")
    global_batch = joint.train.batch_size // (joint.sequence_length if joint.attacker == "stateful" else 1)
    mesh_lib.check_batch_size(global_batch, mesh, "config.joint.train.batch_size (sequences per batch)")
    steps_per_epoch = max(1, len(train["labels"]) // joint.train.batch_size)
    num_steps = joint.train.num_epochs * steps_per_epoch
    tx, _ = optim.make_optimizer(joint.optimizer, num_steps=num_steps, steps_per_epoch=steps_per_epoch,
                                 extra_groups={"anonymizer": joint.anonymizer_lr_multiplier})
    state = joint_state(config, anonymizer, reid, tx, train["voxels"].shape[1:], baseline_variables)
    state = mesh_lib.replicate(state, mesh)
    checkpoints = Checkpoints(f"{stage_dir}/checkpoints", max_to_keep=joint.train.max_checkpoints_to_keep,
                              save_every_steps=joint.train.checkpoint_every_steps)
    state = checkpoints.restore_or(state)
    start_step = int(jax.device_get(state["step"]))
    batches = pipeline.prefetch(
        mesh_lib.shard_batch(batch, mesh)
        for batch in joint_batches(train, config, start_step=start_step, use_frames=use_frames))
    jitted = jax.jit(make_joint_step(config, anonymizer, reid, reconstructor, tx, use_frames=use_frames),
                     donate_argnums=0, out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)))
    writer = create_writer(tensorboard_dir)
    preview = privacy_report.training_preview(train, anonymizer, reconstructor, use_frames=use_frames)
    latest = {}

    def train_step(state, batch):
        state, step_metrics = jitted(state, batch, reconstructor_variables)
        latest["state"] = state  # valid until the next step donates it
        return state, step_metrics

    def on_log(step, scalars):
        del scalars
        if step % joint.train.preview_every_steps == 0 or step == num_steps:
            writer.write_images(step, {"joint/reference_raw_anonymised": preview(
                latest["state"]["params"]["anonymizer"], reconstructor_variables)})

    started = time.perf_counter()
    state = train_loop(name="joint", state=state, train_step=train_step, batches=batches, num_steps=num_steps,
                       checkpoints=checkpoints, writer=writer, log_every_steps=joint.train.log_every_steps,
                       on_log=on_log)
    checkpoints.close()
    return ({"params": state["params"], "batch_stats": state["batch_stats"]},
            {"num_steps": num_steps, "steps_per_epoch": steps_per_epoch,
             "seconds": round(time.perf_counter() - started, 1)})


def run_attacks(config, workdir, train, anonymizer, anonymizer_params, reconstructor, reconstructor_variables,
                train_truth, *, mesh, tensorboard_dir) -> dict:
    """Trains the inverter, the adaptive reconstructor and the identity-leakage ReId on the training identities.

    The attacker knows the method: it runs the released anonymizer on the training voxels to make its pairs, and
    targets `train_truth` (ground-truth frames when the data has them).
    """
    attacks_dir = os.path.join(workdir, "attacks")
    cfg = config.attacks
    input_shape = train["voxels"].shape[1:]

    def anonymize_batch(batch):
        return anonymizer.apply({"params": anonymizer_params}, batch["voxels"])

    dtype = precision.compute_dtype(config.compute_dtype)
    inverter = anonymizer_lib.ResidualUNet(out_channels=config.data.num_bins, base_features=cfg.inversion.base_features,
                                           num_levels=cfg.inversion.num_levels, dtype=dtype)

    def invert(params, voxels):
        return inverter.apply({"params": params}, voxels)

    def inversion(stage_dir):
        params = jax.jit(inverter.init)(jax.random.key(config.seed + 2), jnp.zeros((1, *input_shape)))["params"]
        return train_attack("inversion", cfg.inversion, params, invert,
                            anonymize_batch, {"voxels": train["voxels"], "targets": train["voxels"]}, stage_dir,
                            mesh=mesh, seed=config.seed, tensorboard_dir=tensorboard_dir)

    inverter_params, inversion_info = run_training_stage(attacks_dir, "inversion", inversion)

    def adaptive(stage_dir):
        return train_attack("adaptive", cfg.adaptive, reconstructor_variables["params"],
                            lambda p, x: reconstructor.windows({**reconstructor_variables, "params": p}, x),
                            anonymize_batch, {"voxels": train["voxels"], "targets": train_truth}, stage_dir,
                            mesh=mesh, seed=config.seed, tensorboard_dir=tensorboard_dir, ssim_data_range=1.0)

    adaptive_params, adaptive_info = run_training_stage(attacks_dir, "adaptive", adaptive)
    (leakage_model, leakage_variables), leakage_info = run_training_stage(
        attacks_dir, "leakage", lambda stage_dir: reid_baseline.fit(
            cfg.leakage, {"voxels": train_truth, "labels": train["labels"]}, stage_dir, mesh=mesh,
            seed=config.seed, tensorboard_dir=tensorboard_dir, name="leakage", dtype=dtype))
    return {
        "invert": invert,
        "inverter_params": inverter_params,
        "adaptive_variables": {**reconstructor_variables, "params": adaptive_params},
        "leakage_model": leakage_model,
        "leakage_variables": leakage_variables,
        "seconds": {"inversion": inversion_info["seconds"], "adaptive": adaptive_info["seconds"],
                    "leakage": leakage_info["seconds"]},
    }
