"""Pretraining of the E2VID events-to-video reconstructor on simulated sequences, and its evaluation.

Stages: "data" (simulate and cache natural-image, texture and pedestrian sequences), "train" (E2VID with Adam
on L-window sequences, state carried from zeros and back-propagated through all L windows; validation loss
on held-out sequences; the result saved with `save_pretrained` in `<workdir>/reconstructor`), "evaluate"
(MSE, SSIM, PSNR on held-out synthetic pedestrians, against leaky direct integration of the same events).
Loss per window: L1 + (1 - SSIM), plus the temporal-consistency term of Lai et al. with the simulated flow.
E2VID's LPIPS (a pretrained VGG-16) is not available offline, hence L1 + SSIM in its place.
"""

import functools
import os
import time

import flax
import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics

matplotlib.use("Agg")  # files only
from matplotlib import pyplot as plt  # noqa: E402

from anon_jax.data import pipeline  # noqa: E402
from anon_jax.data import reconstruction_sequences as sequences  # noqa: E402
from anon_jax.events import EventStream  # noqa: E402
from anon_jax.events.integration import leaky_integration_frames  # noqa: E402
from anon_jax.metrics import image as image_metrics  # noqa: E402
from anon_jax.models import e2vid  # noqa: E402
from anon_jax.training import mesh as mesh_lib  # noqa: E402
from anon_jax.training import multihost, optim, precision  # noqa: E402
from anon_jax.training import report as report_lib  # noqa: E402
from anon_jax.training.checkpoint import Checkpoints  # noqa: E402
from anon_jax.training.loop import create_writer, train_loop  # noqa: E402
from anon_jax.training.stages import run_stage  # noqa: E402

RECONSTRUCTOR_DIR = "reconstructor"
FIGURE_NAME = "reconstructions.png"


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    l1: clu_metrics.Average.from_output("l1")
    ssim: clu_metrics.Average.from_output("ssim")
    temporal: clu_metrics.Average.from_output("temporal")


# ----------------------------------------------------------------------------------------------------------
# Losses


def warp(images, flow):
    """Backward warp of NHWC `images` by `flow` (B, H, W, 2) as (dx, dy): out(x) = images(x + flow(x)).

    Bilinear, with zeros outside the image (PyTorch grid_sample's default padding, as in E2VID's loss).
    """
    _, height, width, _ = images.shape
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=flow.dtype), jnp.arange(width, dtype=flow.dtype),
                              indexing="ij")
    x, y = cols + flow[..., 0], rows + flow[..., 1]
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]

    def corner(image, yi, xi):
        inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
        values = image[jnp.clip(yi, 0, height - 1).astype(jnp.int32), jnp.clip(xi, 0, width - 1).astype(jnp.int32)]
        return jnp.where(inside[..., None], values, 0)

    def one(image, x0, y0, fx, fy):
        top = corner(image, y0, x0) * (1 - fx) + corner(image, y0, x0 + 1) * fx
        bottom = corner(image, y0 + 1, x0) * (1 - fx) + corner(image, y0 + 1, x0 + 1) * fx
        return top * (1 - fy) + bottom * fy

    return jax.vmap(one)(images, x0, y0, fx, fy)


def temporal_consistency(gt_previous, gt, prediction_previous, prediction, flow, *, alpha: float = 50.0):
    """Per-image temporal-consistency loss (B,) of Lai et al. (ECCV 2018), as in E2VID's training.

    M = exp(-alpha (gt - warp(gt_previous))^2) masks occlusions and unexplained changes; the loss is the mean of
    M |pred - warp(pred_previous)| / (|pred| + |warp(pred_previous)| + 1e-5).
    """
    visibility = jnp.exp(-alpha * (gt - warp(gt_previous, flow)) ** 2)
    warped = warp(prediction_previous, flow)
    error = visibility * jnp.abs(prediction - warped) / (jnp.abs(prediction) + jnp.abs(warped) + 1e-5)
    return jnp.mean(error, axis=(1, 2, 3))


def sequence_losses(images, frames, flows, loss_config) -> dict:
    """Loss terms of time-major sequences (L, B, H, W, 1): frame L1 and SSIM, temporal consistency, total."""
    length, batch = images.shape[:2]
    flat_images = images.reshape((length * batch,) + images.shape[2:])
    flat_frames = frames.reshape(flat_images.shape)
    l1 = jnp.mean(jnp.abs(flat_images - flat_frames))
    ssim = jnp.mean(image_metrics.ssim(flat_images, flat_frames, data_range=1.0))
    start = loss_config.temporal_start_window
    if length > start:
        pairs = jax.vmap(functools.partial(temporal_consistency, alpha=loss_config.visibility_alpha))(
            frames[start - 1:-1], frames[start:], images[start - 1:-1], images[start:], flows[start:])
        temporal = jnp.mean(pairs)
    else:
        temporal = jnp.zeros((), images.dtype)
    return dict(loss=l1 + (1 - ssim) + loss_config.temporal_weight * temporal, l1=l1, ssim=ssim, temporal=temporal)


# ----------------------------------------------------------------------------------------------------------
# Model, state and steps


def build_model(config: ml_collections.ConfigDict, *, dtype=jnp.float32) -> e2vid.E2VID:
    return e2vid.E2VID(ml_collections.FrozenConfigDict(e2vid.e2vid_config(**config.model.to_dict())), dtype=dtype)


def reconstruct_windows(module, variables, voxels, *, train: bool, unroll):
    """Images (L, B, H, W, 1) of time-major voxels from a zero state, and the updated batch statistics.

    `unroll` is lax.scan's: unrolled loops run several times faster on CPU, where XLA does not parallelise
    convolutions inside a while loop as well.
    """
    batch_stats = variables.get("batch_stats")

    def step(carry, window):
        state, stats = carry
        current = {"params": variables["params"], **({"batch_stats": stats} if stats is not None else {})}
        if train and stats is not None:
            (image, state), updates = module.apply(current, window, state, train=True, mutable=["batch_stats"])
            stats = updates["batch_stats"]
        else:
            image, state = module.apply(current, window, state, train=train)
        return (state, stats), image

    state = e2vid.initial_state(module.config, *voxels.shape[1:4])
    (_, batch_stats), images = jax.lax.scan(step, (state, batch_stats), voxels, unroll=unroll)
    return images, batch_stats


def create_state(module, tx, config, rng):
    """The train state: step, RNG key and E2VID's params, batch statistics (BN models) and optimizer state."""
    init_rng, state_rng = jax.random.split(rng)
    side = 2 ** config.model.num_encoders
    variables = jax.jit(functools.partial(module.init, train=False))(
        init_rng, jnp.zeros((1, side, side, config.model.num_bins), jnp.float32))
    network = {"params": variables["params"], "opt_state": tx.init(variables["params"])}
    if "batch_stats" in variables:
        network["batch_stats"] = variables["batch_stats"]
    return {"step": jnp.zeros((), jnp.int32), "rng": state_rng, "e2vid": network}


def network_variables(network: dict) -> dict:
    return {name: value for name, value in network.items() if name in ("params", "batch_stats")}


def crop_size(train_config, height: int, width: int) -> tuple[int, int]:
    """The training crop (a 0 field means the whole frame)."""
    return train_config.crop_height or height, train_config.crop_width or width


def augment(rng, batch, train_config):
    """Per-sequence random crop, horizontal flip and Gaussian voxel noise of a (B, L, H, W, C) batch."""
    voxels, frames, flows = batch["voxels"], batch["frames"], batch["flows"]
    batch_size, _, height, width, _ = voxels.shape
    crop_h, crop_w = crop_size(train_config, height, width)
    crop_rng, flip_rng, noise_rng, std_rng = jax.random.split(rng, 4)
    if (crop_h, crop_w) != (height, width):
        top = jax.random.randint(crop_rng, (batch_size,), 0, height - crop_h + 1)
        left = jax.random.randint(jax.random.fold_in(crop_rng, 1), (batch_size,), 0, width - crop_w + 1)

        def crop(x):
            return jax.vmap(lambda item, t, l: jax.lax.dynamic_slice(
                item, (0, t, l, 0), (item.shape[0], crop_h, crop_w, item.shape[-1])))(x, top, left)

        voxels, frames, flows = crop(voxels), crop(frames), crop(flows)
    if train_config.random_flip:
        flip = jax.random.bernoulli(flip_rng, 0.5, (batch_size, 1, 1, 1, 1))
        voxels = jnp.where(flip, voxels[:, :, :, ::-1], voxels)
        frames = jnp.where(flip, frames[:, :, :, ::-1], frames)
        # A mirrored scene moves the other way along x.
        flows = jnp.where(flip, flows[:, :, :, ::-1] * jnp.array([-1.0, 1.0]), flows)
    if train_config.voxel_noise_std:
        std = jax.random.uniform(std_rng, (batch_size, 1, 1, 1, 1), maxval=train_config.voxel_noise_std)
        voxels = voxels + std * jax.random.normal(noise_rng, voxels.shape)
    return dict(voxels=voxels, frames=frames, flows=flows)


def _time_major(x):
    return jnp.swapaxes(x, 0, 1)


def make_train_step(config: ml_collections.ConfigDict, module, tx):
    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        batch = augment(rng, {name: value.astype(jnp.float32) for name, value in batch.items()}, config.train)
        network = state["e2vid"]

        def loss_fn(params):
            variables = {**network_variables(network), "params": params}
            images, batch_stats = reconstruct_windows(module, variables, _time_major(batch["voxels"]), train=True,
                                                      unroll=config.train.scan_unroll)
            terms = sequence_losses(images, _time_major(batch["frames"]), _time_major(batch["flows"]), config.loss)
            return terms["loss"], (terms, batch_stats)

        grads, (terms, batch_stats) = jax.grad(loss_fn, has_aux=True)(network["params"])
        updates, opt_state = tx.update(grads, network["opt_state"], network["params"])
        new_network = {"params": optax.apply_updates(network["params"], updates), "opt_state": opt_state}
        if batch_stats is not None:
            new_network["batch_stats"] = batch_stats
        new_state = {"step": state["step"] + 1, "rng": state["rng"], "e2vid": new_network}
        return new_state, TrainMetrics.single_from_model_output(**terms)

    return train_step


def make_validation_fn(config: ml_collections.ConfigDict, module):
    """(variables, batch) -> per-sequence total loss (B,) without augmentation."""

    def per_sequence(images, frames, flows):
        return sequence_losses(images[:, None], frames[:, None], flows[:, None], config.loss)["loss"]

    def validation_losses(variables, batch):
        images, _ = reconstruct_windows(module, variables, _time_major(batch["voxels"].astype(jnp.float32)),
                                        train=False, unroll=config.train.scan_unroll)
        return jax.vmap(per_sequence, in_axes=1)(images, _time_major(batch["frames"]),
                                                 _time_major(batch["flows"].astype(jnp.float32)))

    return validation_losses


# ----------------------------------------------------------------------------------------------------------
# Host-side batches


def training_batches(split: dict, config: ml_collections.ConfigDict, *, start_step: int):
    """Per-process batches of random L-window sub-sequences for steps start_step, start_step + 1, ...

    The draw for a step depends only on (seed, step), so a resumed run sees the batches it would have seen.
    """
    length, batch_size = config.train.sequence_length, config.train.batch_size
    num_sequences, num_windows = split["voxels"].shape[:2]
    step = start_step
    while True:
        rng = np.random.default_rng([config.seed, 17, step])
        chosen = rng.integers(0, num_sequences, batch_size)
        starts = rng.integers(0, num_windows - length + 1, batch_size)
        rows = pipeline.process_slice(np.arange(batch_size), jax.process_index(), jax.process_count())
        index = (chosen[rows, None], starts[rows, None] + np.arange(length))
        yield {name: split[name][index] for name in ("voxels", "frames", "flows")}
        step += 1


def validation_items(split: dict, length: int) -> dict:
    """Non-overlapping L-window pieces of every validation sequence, as (N * pieces, L, ...) arrays."""
    pieces = split["voxels"].shape[1] // length
    return {name: split[name][:, :pieces * length].reshape((-1, length) + split[name].shape[2:])
            for name in ("voxels", "frames", "flows")}


def _check_train_config(config, data_split: dict) -> None:
    train = config.train
    num_windows, height, width = data_split["voxels"].shape[1:4]
    if not 1 <= train.sequence_length <= num_windows:
        raise ValueError(f"config.train.sequence_length={train.sequence_length} must be in [1, "
                         f"config.data.num_windows={num_windows}].")
    multiple = 2 ** config.model.num_encoders
    crop_h, crop_w = crop_size(train, height, width)
    if crop_h > height or crop_w > width or crop_h % multiple or crop_w % multiple:
        raise ValueError(f"config.train.crop_height/crop_width={crop_h}x{crop_w} must fit the {height}x{width} "
                         f"sequences and be multiples of {multiple}.")
    if min(crop_h, crop_w) < image_metrics.SSIM_WINDOW:
        raise ValueError(f"config.train.crop_height/crop_width must be at least the SSIM window "
                         f"({image_metrics.SSIM_WINDOW}).")


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def sequence_stream(split: dict, index: int, height: int, width: int) -> EventStream:
    """The events of test sequence `index`."""
    lo, hi = split["events_offsets"][index], split["events_offsets"][index + 1]
    return EventStream(x=split["events_x"][lo:hi].astype(np.int32), y=split["events_y"][lo:hi].astype(np.int32),
                       t=split["events_t"][lo:hi], p=split["events_p"][lo:hi], height=height, width=width,
                       source=f"test sequence {index}")


def save_figure(path: str, rows: dict[str, np.ndarray], window_indices) -> None:
    """An image grid: one row per named (L, H, W) sequence, one column per window index."""
    figure, axes = plt.subplots(len(rows), len(window_indices), squeeze=False,
                                figsize=(1.4 * len(window_indices), 1.9 * len(rows)), dpi=100)
    for row, (name, frames) in enumerate(rows.items()):
        for column, window in enumerate(window_indices):
            axis = axes[row][column]
            axis.imshow(frames[window], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(name, fontsize=8)
            if row == 0:
                axis.set_title(f"window {window + 1}", fontsize=8)
    report_lib.save_figure(figure, path)


def reconstruct_sequences(module, variables, voxels):
    """(B, L, H, W, bins) voxel sequences -> (B, L, H, W, 1) stateful E2VID reconstructions."""
    images, _ = e2vid.run_sequence(module, variables, _time_major(voxels.astype(jnp.float32)))
    return _time_major(images)


def evaluate(config: ml_collections.ConfigDict, test: dict, reconstructor_dir: str, mesh, *,
             base_intensity: float, figure_path: str) -> dict:
    """Reconstructs every test sequence with the saved E2VID and with leaky integration; returns metric rows."""
    module, variables = e2vid.load_pretrained(reconstructor_dir, dtype=precision.compute_dtype(config.compute_dtype))
    variables = mesh_lib.replicate(variables, mesh)
    num_sequences, num_windows, height, width = test["frames"].shape[:4]
    skip = config.evaluate.skip_windows
    reconstructions = mesh_lib.map_batches(functools.partial(reconstruct_sequences, module), variables,
                                           test["voxels"], batch_size=config.evaluate.batch_size, mesh=mesh)
    baselines = {}
    for normalization in ("fixed", "minmax"):
        frames = [leaky_integration_frames(sequence_stream(test, i, height, width), test["window_ends_us"],
                                           contrast=config.data.contrast_threshold_mean,
                                           leak_rate_per_s=config.evaluate.baseline_leak_rate_per_s,
                                           time_unit_s=1e-6, normalization=normalization,
                                           base_intensity=base_intensity)
                  for i in range(num_sequences)]
        baselines[normalization] = np.stack([np.asarray(f) for f in frames])[..., None]
    targets = test["frames"][:, skip:].reshape(-1, height, width, 1)
    def quality(frames):
        return image_metrics.mean_quality(frames[:, skip:].reshape(targets.shape), targets)

    rows = {"E2VID (pretrained here)": quality(reconstructions)}
    for normalization, frames in baselines.items():
        rows[f"leaky integration ({normalization})"] = quality(frames)
    shown = np.linspace(0, num_windows - 1, config.evaluate.figure_windows).round().astype(int)
    figure_rows = {}
    for sequence in range(min(config.evaluate.figure_sequences, num_sequences)):
        figure_rows[f"#{sequence} ground truth"] = test["frames"][sequence, ..., 0]
        figure_rows[f"#{sequence} E2VID"] = reconstructions[sequence, ..., 0]
        figure_rows[f"#{sequence} leaky (fixed)"] = baselines["fixed"][sequence, ..., 0]
    if multihost.is_primary():
        save_figure(figure_path, figure_rows, shown)
    return rows


# ----------------------------------------------------------------------------------------------------------
# The method


def prepare_data(config: ml_collections.ConfigDict, stage_dir: str) -> dict:
    """Simulates and caches the three splits; returns their sizes and event counts."""
    started = time.perf_counter()
    summary = {}
    for split in sequences.SPLITS:
        arrays = sequences.load_or_simulate_split(config.data, split, stage_dir)
        summary[split] = {"sequences": int(len(arrays["kind"])), "events": int(arrays["num_events"].sum()),
                          "dropped_events": int(arrays["dropped_events"].sum())}
    summary["directory"] = os.path.abspath(stage_dir)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the data, train and evaluate stages in `workdir`; returns the report."""
    mesh = mesh_lib.make_mesh(config.mesh_shape)
    data_info = run_stage(workdir, "data", lambda stage_dir: prepare_data(config, stage_dir), primary_only=True)
    data_dir = data_info["directory"]
    train_split = sequences.load_or_simulate_split(config.data, "train", data_dir)
    _check_train_config(config, train_split)
    reconstructor_dir = os.path.join(workdir, RECONSTRUCTOR_DIR)
    module = build_model(config, dtype=precision.compute_dtype(config.compute_dtype))
    windows_per_step = config.train.batch_size * config.train.sequence_length
    steps_per_epoch = max(1, train_split["voxels"].shape[0] * train_split["voxels"].shape[1] // windows_per_step)

    def train_stage(stage_dir):
        mesh_lib.check_batch_size(config.train.batch_size, mesh)
        num_steps = config.train.num_steps
        tx, _ = optim.make_optimizer(config.optimizer, num_steps=num_steps, steps_per_epoch=steps_per_epoch)
        state = mesh_lib.replicate(create_state(module, tx, config, jax.random.key(config.seed)), mesh)
        checkpoints = Checkpoints(f"{stage_dir}/checkpoints", max_to_keep=config.train.max_checkpoints_to_keep,
                                  save_every_steps=config.train.checkpoint_every_steps)
        state = checkpoints.restore_or(state)
        start_step = int(jax.device_get(state["step"]))
        batches = pipeline.prefetch(mesh_lib.shard_batch(batch, mesh)
                                    for batch in training_batches(train_split, config, start_step=start_step))
        jitted_step = jax.jit(make_train_step(config, module, tx), donate_argnums=0,
                              out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)))
        validation = validation_items(sequences.load_or_simulate_split(config.data, "validation", data_dir),
                                      config.train.sequence_length)
        validation_fn = make_validation_fn(config, module)
        writer = create_writer(f"{workdir}/tensorboard")
        latest, history = {}, []

        def train_step(state, batch):
            state, step_metrics = jitted_step(state, batch)
            latest["state"] = state  # valid until the next step donates it
            return state, step_metrics

        def on_log(step, scalars):
            del scalars
            if step % config.train.validate_every_steps and step != num_steps:
                return
            variables = network_variables(latest["state"]["e2vid"])
            loss = float(mesh_lib.map_batches(validation_fn, variables, validation,
                                              batch_size=config.evaluate.batch_size, mesh=mesh).mean())
            history.append({"step": step, "loss": loss})
            writer.write_scalars(step, {"validation/loss": loss})
            logging.info("[e2vid] step %d | validation loss %.4f", step, loss)

        started = time.perf_counter()
        state = train_loop(name="e2vid", state=state, train_step=train_step, batches=batches, num_steps=num_steps,
                           checkpoints=checkpoints, writer=writer, log_every_steps=config.train.log_every_steps,
                           on_log=on_log)
        checkpoints.close()
        final_variables = jax.device_get(network_variables(state["e2vid"]))
        multihost.primary_only("reconstructor export", lambda: e2vid.save_pretrained(
            reconstructor_dir, module.config, final_variables))
        return {"num_steps": num_steps, "seconds": round(time.perf_counter() - started, 1),
                "validation": history, "reconstructor_dir": reconstructor_dir,
                "parameters": e2vid.parameter_count(network_variables(state["e2vid"]))}

    train_info = run_stage(workdir, "train", train_stage)
    test = sequences.load_or_simulate_split(config.data, "test", data_dir)
    pedestrian_frames = train_split["frames"][train_split["kind"] == sequences.KINDS.index("pedestrian")]
    # The "fixed" baseline maps zero log change to the mean training intensity, a fair prior for unseen scenes.
    base_intensity = float(pedestrian_frames.mean()) if len(pedestrian_frames) else 0.5
    figure_path = os.path.join(workdir, FIGURE_NAME)
    rows = run_stage(workdir, "evaluate", lambda stage_dir: evaluate(
        config, test, train_info["reconstructor_dir"], mesh, base_intensity=base_intensity, figure_path=figure_path))
    for name, values in rows.items():
        logging.info("%-32s MSE %.4f  SSIM %.4f  PSNR %.2f dB", name, values["MSE"], values["SSIM"], values["PSNR"])
    validation = train_info["validation"]
    details = {
        "model": (f"E2VID base {config.model.base_channels}, {config.model.num_encoders} encoders, "
                  f"{config.model.recurrent_block}, norm {config.model.norm}, decoder {config.model.decoder}"),
        "parameters": train_info["parameters"],
        "train_steps": train_info["num_steps"],
        "train_seconds": train_info["seconds"],
        "sequence_length": config.train.sequence_length,
        "batch_size": config.train.batch_size,
        "data_sequences": {split: data_info[split]["sequences"] for split in sequences.SPLITS},
        "data_seconds": data_info["seconds"],
        "final_validation_loss": validation[-1]["loss"] if validation else None,
        "test_frames": f"{test['frames'].shape[0]} held-out pedestrian sequences x "
                       f"{test['frames'].shape[1] - config.evaluate.skip_windows} windows",
        "baseline": (f"leaky integration, contrast {config.data.contrast_threshold_mean}, leak "
                     f"{config.evaluate.baseline_leak_rate_per_s}/s, fixed base intensity {base_intensity:.3f}"),
        "figure": FIGURE_NAME,
        "reconstructor": train_info["reconstructor_dir"],
        "devices": jax.device_count(),
    }
    return report_lib.write_report(workdir, title="E2VID reconstructor pretrained on simulated events", metrics=rows,
                        details=details)
