"""PixelFade (Zhang, Peng, Wu, Wu, Zheng; ACM MM 2024): pedestrian images protected by progressive pixel fading
against a trained ReId (authorization) model, the recovery attack, and a comparison with the classical
desensitisations and privacy-reid's reversible anonymizer on the same data and the same ReId model.

Stages (each resumable in the workdir):
  data           the embedded synthetic pedestrians or a real dataset (image_data; no validation split)
  authorization  the AGW model PixelFade protects against: trained on raw images, or read from
                 config.authorization.pretrained_dir; exported to W/authorization_model for `anon_jax.protect`
  protect        PixelFade (anon_jax/privacy/pixelfade.py) on the test images (query + gallery) and on the attack's
                 training images, written batch by batch (a restart continues after the last finished batch)
  reversible     privacy-reid's reversible anonymizer (GCR without upgradation), C starting from the authorization
                 model (when "reversible" is among config.compare.methods)
  attack_<name>  the recovery attack on each compared method: a pix2pix U-Net trained with L1 on (protected,
                 original) training pairs
  evaluate       rank-1/mAP in the four query/gallery settings with the authorization model, PSNR/SSIM/MSE of the
                 protected and the recovered test images, the comparison table and an image grid
"""


import functools
import json
import os
import time

import flax
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
from absl import logging
from clu import metrics as clu_metrics

from anon_jax.data import pipeline
from anon_jax.files import atomic_write_text
from anon_jax.methods import privacy_reid
from anon_jax.metrics import image as image_metrics
from anon_jax.models import agw, pix2pix
from anon_jax.privacy import desensitize as desensitize_lib
from anon_jax.privacy import pixelfade as pixelfade_lib
from anon_jax.training import mesh as mesh_lib
from anon_jax.training import multihost, optim, precision
from anon_jax.training import report as report_lib
from anon_jax.training.checkpoint import Checkpoints
from anon_jax.training.loop import create_writer, train_loop
from anon_jax.training.stages import run_stage, run_training_stage

METHODS = ("pixelfade", "mosaic", "blur", "noise", "reversible")
ATTACK_TARGETS = ("unit", "normalized")
GRID_FILE = "pixelfade_grid.png"
PROGRESS_FILE = "progress.json"  # inside the protect stage: images finished per split
PROTECTED_ARRAYS = ("images", "features", "loss", "replacements")


class PixelFadeConfigError(ValueError):
    """A PixelFade job config that cannot run."""


@flax.struct.dataclass
class AttackMetrics(clu_metrics.Collection):
    l1: clu_metrics.Average.from_output("l1")


# --------------------------------------------------------------------------------------------- authorization
def authorization_model(config, workdir: str, splits: dict, nets: dict, *, mesh, tensorboard_dir: str):
    """(AGW network, its variables, stage info): trained on the raw training images (AGW recipe of config.baseline),
    or read from config.authorization.pretrained_dir; exported to W/authorization_model either way."""
    source = config.authorization.pretrained_dir
    if source:
        net, variables, settings = agw.load_pretrained(source)
        expected = [config.data.height, config.data.width]
        if list(settings["image_size"]) != expected:
            raise PixelFadeConfigError(f"config.authorization.pretrained_dir={source}: the model was trained on "
                                       f"{settings['image_size']} images, the data is {expected}; set "
                                       "config.data.height/width to match.")
        return net, variables, {"source": source}

    def train(stage_dir):
        return privacy_reid.train_baseline(config, stage_dir, splits, nets, mesh=mesh, tensorboard_dir=tensorboard_dir,
                                           desensitized=False, name="authorization")

    variables, info = run_training_stage(workdir, "authorization", train)
    export = os.path.join(workdir, agw.WORKDIR_EXPORT)
    if not os.path.isdir(export):
        multihost.primary_only("authorization export", lambda: agw.save_pretrained(
            export, config.model, nets["reid"].num_classes, jax.device_get(variables),
            image_size=(config.data.height, config.data.width), pixel_mean=tuple(config.data.pixel_mean),
            pixel_std=tuple(config.data.pixel_std)))
    return nets["reid"], variables, info


# ------------------------------------------------------------------------------------------------- protection
def raw_images(config, splits: dict) -> dict:
    """{"test": query then gallery (the original's order), "train": the recovery attack's training images}, uint8."""
    train = splits["train"]["images"]
    return {"test": np.concatenate([splits["query"]["images"], splits["gallery"]["images"]]),
            "train": np.asarray(train[attack_train_indices(config, len(train))])}


def attack_train_indices(config, count: int) -> np.ndarray:
    """The training images of the recovery attack: all, or config.attack.max_train_images evenly spaced ones."""
    limit = config.attack.max_train_images
    if not limit or limit >= count:
        return np.arange(count)
    return np.linspace(0, count - 1, limit).round().astype(np.int64)


def protect_split(config, protect_fn, variables, pixels, *, stage_dir: str, name: str, stream: int,
                  feature_dim: int) -> dict:
    """PixelFade over `pixels` (N, H, W, 3) uint8 in batches of config.pixelfade.batch_size, written to
    `<stage_dir>/<name>_*.npy` memory maps; finished batches survive a restart (PROGRESS_FILE). Returns the paths.

    The replacement chunks are drawn once for the full batch shape and reused by every batch, a smaller last batch
    padded (padded rows take no part in the batch's loss, decision or clamp range); noise images are drawn per
    image index from the split's own `stream`.
    """
    settings = config.pixelfade
    count, shape = len(pixels), pixels.shape[1:]
    batch = settings.batch_size
    chunks_key, noise_key = pixelfade_lib.protection_keys(settings.seed, stream)
    chunks = pixelfade_lib.replacement_chunks(chunks_key, (batch, *shape), settings.fade_num_iter)
    paths = protected_paths(stage_dir, name)
    layouts = {"images": ((count, *shape), np.float32), "features": ((count, feature_dim), np.float32),
               "loss": ((count,), np.float32), "replacements": ((count,), np.int32)}
    progress_path = os.path.join(stage_dir, PROGRESS_FILE)
    progress = _read_json(progress_path)
    done = int(progress.get(name, 0))
    arrays = {kind: np.lib.format.open_memmap(paths[kind], mode="r+" if done else "w+", dtype=dtype, shape=layout)
              for kind, (layout, dtype) in layouts.items()}
    for kind, (layout, _) in layouts.items():
        if arrays[kind].shape != layout:
            raise PixelFadeConfigError(f"{paths[kind]} holds {arrays[kind].shape} values, this run needs {layout}: the "
                                       "data or the attack's image count changed since it was written; delete "
                                       f"{stage_dir} to protect again.")
    started, first = time.perf_counter(), done
    for start in range(done, count, batch):
        stop = min(start + batch, count)
        out = pixelfade_lib.protect_padded(protect_fn, variables, privacy_reid.normalize(config, pixels[start:stop]),
                                           start=start, chunks=chunks, noise_key=noise_key)
        for kind, array in arrays.items():
            array[start:stop] = out[kind]
            array.flush()
        progress[name] = stop
        atomic_write_text(progress_path, json.dumps(progress))
        rate = (stop - first) / max(time.perf_counter() - started, 1e-9)
        logging.info("[protect] %s: %d/%d images, %.2f images/s, ETA %.0fs, feature loss %.4f, replacements %.1f",
                     name, stop, count, rate, (count - stop) / rate, float(np.mean(out["loss"])),
                     float(np.mean(out["replacements"])))
    return paths


def protected_paths(stage_dir: str, name: str) -> dict:
    """The protect stage's arrays of split `name`: images, features, loss, replacements."""
    return {kind: os.path.join(stage_dir, f"{name}_{kind}.npy") for kind in PROTECTED_ARRAYS}


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def run_protection(config, stage_dir: str, splits: dict, net, variables) -> dict:
    """Stage "protect": PixelFade on the test images (query then gallery, as the original) and on the recovery
    attack's training images (arrays at `protected_paths`); returns counts, seconds and the mean feature loss and
    replacements per split."""
    protect_fn = pixelfade_lib.make_protect_fn(lambda v, x: net.apply(v, x, train=False), config.pixelfade)
    feature_dim = agw.feature_dim(net.depth, net.width)
    info = {}
    for stream, (name, pixels) in enumerate(raw_images(config, splits).items()):
        started = time.perf_counter()
        paths = protect_split(config, protect_fn, variables, pixels, stage_dir=stage_dir, name=name, stream=stream,
                              feature_dim=feature_dim)
        info[name] = {"count": len(pixels), "seconds": round(time.perf_counter() - started, 1),
                      "mean_feature_loss": float(np.mean(np.load(paths["loss"]))),
                      "mean_replacements": float(np.mean(np.load(paths["replacements"])))}
    return info


# ----------------------------------------------------------------------------------------- compared methods
def protected_images(config, method: str, pixels, *, stream: int, mesh, pixelfade_images=None, reversible=None):
    """The protected versions of uint8 `pixels` in the network's normalised space (float32 host array): PixelFade's
    from the protect stage (`pixelfade_images`), a classical desensitisation (config.desensitize's sizes; noise drawn
    per image index of `stream`), or the reversible anonymizer's G(O) (`reversible` = (generator, variables))."""
    if method == "pixelfade":
        return pixelfade_images
    if method == "reversible":
        generator, variables = reversible
        return mesh_lib.map_batches(lambda v, x: generator.apply(v, privacy_reid.normalize(config, x), train=False),
                                    variables, pixels, batch_size=config.eval.batch_size, mesh=mesh)
    settings = ml_collections.ConfigDict(config.desensitize.to_dict())
    settings.kind = method
    key = jax.random.fold_in(jax.random.key(config.seed + 7), stream)

    def one(image, index):
        return desensitize_lib.desensitize(image[None], settings, jax.random.fold_in(key, index))[0]

    inputs = {"images": pixels, "index": np.arange(len(pixels))}
    return mesh_lib.map_batches(lambda _, batch: privacy_reid.normalize(config, jax.vmap(one)(batch["images"],
                                                                                            batch["index"])),
                                {}, inputs, batch_size=config.eval.batch_size, mesh=mesh)


def train_reversible(config, stage_dir: str, splits: dict, nets: dict, reid_variables, *, mesh, tensorboard_dir):
    """privacy-reid's full model without upgradation for config.full.num_epochs, C from the authorization model."""
    return privacy_reid.train_full(config, stage_dir, splits, nets, min_rank1=1.0, mesh=mesh,
                                   tensorboard_dir=tensorboard_dir, reid_variables=reid_variables)


# ------------------------------------------------------------------------------------------ recovery attack
def attack_targets(config, pixels):
    """The recovery U-Net's regression targets for uint8 `pixels`: [-1, 1] pixels ("unit", reachable by its tanh)
    or the normalised network input (the original's "normalized", beyond tanh's range)."""
    if config.attack.target == "unit":
        return pixels.astype(jnp.float32) / 127.5 - 1.0
    return privacy_reid.normalize(config, pixels)


def attack_output_unit(config, outputs):
    """[0, 1] pixels of the recovery U-Net's outputs."""
    if config.attack.target == "unit":
        return (outputs + 1.0) / 2.0
    return privacy_reid.to_unit(config, outputs)


def make_attack_step(config, unet, tx):
    """One L1 step of the recovery U-Net on a batch of (protected, raw uint8) pairs."""
    def train_step(state, batch):
        targets = attack_targets(config, batch["raw"])
        part = state["unet"]

        def loss_fn(params):
            outputs, stats = privacy_reid.apply_train(unet, {"params": params, "batch_stats": part["batch_stats"]},
                                                      batch["protected"])
            return jnp.mean(jnp.abs(outputs - targets)), stats

        (l1, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(part["params"])
        new_state = {**state, "step": state["step"] + 1, "unet": privacy_reid.update_part(tx, part, grads, stats)}
        return new_state, AttackMetrics.single_from_model_output(l1=l1)

    return train_step


def train_attack(config, stage_dir: str, name: str, unet, protected, raw, *, mesh, tensorboard_dir: str):
    """The recovery U-Net trained with L1 on (protected, raw) training pairs in a fixed order (as the original: the
    saved batches in file order every epoch, the last partial batch dropped); returns (variables, info)."""
    attack = config.attack
    batch_size = mesh_lib.check_batch_size(attack.batch_size, mesh, "config.attack.batch_size")
    count = len(raw)
    if count < batch_size:
        raise PixelFadeConfigError(f"config.attack.batch_size={batch_size} exceeds the {count} attack training "
                                   "images; lower it or raise config.attack.max_train_images.")
    batches = [np.arange(start, start + batch_size) for start in range(0, count - count % batch_size, batch_size)]
    num_steps = attack.num_epochs * len(batches)
    tx = optim.make_optimizer(attack.optimizer, num_steps=num_steps, steps_per_epoch=len(batches))[0]
    rng = jax.random.key(config.seed + 11)
    variables = privacy_reid.init_variables(unet, rng, raw.shape[1:])
    state = {"step": jnp.zeros((), jnp.int32), "unet": privacy_reid.trainable(variables, tx)}
    checkpoints = Checkpoints(f"{stage_dir}/checkpoints", max_to_keep=2, save_every_steps=attack.checkpoint_every_steps)
    state = checkpoints.restore_or(mesh_lib.replicate(state, mesh))
    local = pipeline_batches({"protected": protected, "raw": raw}, batches, int(jax.device_get(state["step"])))
    step = jax.jit(make_attack_step(config, unet, tx), donate_argnums=0,
                   out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)))
    started = time.perf_counter()
    state = train_loop(name=f"attack_{name}", state=state, train_step=step,
                       batches=(mesh_lib.shard_batch(batch, mesh) for batch in local), num_steps=num_steps,
                       checkpoints=checkpoints, writer=create_writer(tensorboard_dir),
                       log_every_steps=attack.log_every_steps)
    checkpoints.close()
    return privacy_reid.variables_of(state["unet"]), {"num_steps": num_steps,
                                                      "seconds": round(time.perf_counter() - started, 1)}


def pipeline_batches(arrays: dict, batches: list, start_step: int):
    """{name: array[batch]} for steps start_step, ... cycling through the same `batches` every epoch, each process
    taking its slice."""
    return pipeline.batch_iterator(arrays, lambda epoch: batches, start_step=start_step,
                                   process_index=jax.process_index(), process_count=jax.process_count())


def attack_quality(config, outputs, reference_pixels) -> dict:
    """PSNR/SSIM/MSE of network-space images (protected inputs, or recovered outputs in the attack's target space
    when `outputs` is a (space, array) pair) against the raw test pixels, as config.attack.metric_normalization:
    "batch_minmax" compares the network-space tensors after each batch's min-max (the original), "clip" compares
    [0, 1] pixels."""
    space, images = outputs
    normalization = config.attack.metric_normalization
    if normalization == "batch_minmax":
        references = (attack_targets(config, reference_pixels) if space == "target"
                      else privacy_reid.normalize(config, reference_pixels))
        return image_metrics.recovery_quality(images, np.asarray(references), normalization=normalization,
                                              batch_size=config.attack.eval_batch_size)
    unit = attack_output_unit(config, images) if space == "target" else privacy_reid.to_unit(config, images)
    return image_metrics.recovery_quality(np.asarray(unit), reference_pixels.astype(np.float32) / 255.0,
                                          normalization=normalization, batch_size=config.attack.eval_batch_size)


def run_attack(config, workdir: str, method: str, unet, protected, raw: dict, *, mesh, tensorboard_dir: str) -> dict:
    """Stage attack_<method>: trains the recovery U-Net, then measures protected and recovered test images; keeps
    the first grid images (examples.npz in the stage folder). `protected(split)` gives the method's protected
    images of raw[split], asked for only when the stage runs."""
    def stage(stage_dir):
        test_protected, test_raw = protected("test"), raw["test"]
        variables, info = train_attack(config, stage_dir, method, unet, protected("train"), raw["train"], mesh=mesh,
                                       tensorboard_dir=tensorboard_dir)
        recovered = mesh_lib.map_batches(lambda v, x: unet.apply(v, x, train=False), variables, test_protected,
                                         batch_size=config.eval.batch_size, mesh=mesh)
        info["protected"] = attack_quality(config, ("input", test_protected), test_raw)
        info["recovered"] = attack_quality(config, ("target", recovered), test_raw)
        count = config.eval.grid_images
        examples = {"protected": np.asarray(privacy_reid.to_unit(config, test_protected[:count])),
                    "recovered": np.asarray(attack_output_unit(config, recovered[:count]))}
        if multihost.is_primary():
            with open(os.path.join(stage_dir, "examples.npz"), "wb") as f:
                np.savez(f, **examples)
        logging.info("[attack_%s] protected PSNR %.2f SSIM %.3f | recovered PSNR %.2f SSIM %.3f", method,
                     info["protected"]["PSNR"], info["protected"]["SSIM"], info["recovered"]["PSNR"],
                     info["recovered"]["SSIM"])
        return info

    return run_stage(workdir, f"attack_{method}", stage)


# ------------------------------------------------------------------------------------------------ evaluation
def retrieval_rows(config, splits: dict, raw: np.ndarray, protected: np.ndarray) -> dict:
    """Rank-1/mAP in the four settings for one method from the authorization model's features of the raw and the
    protected test images (query then gallery)."""
    num_query = len(splits["query"]["images"])
    query_out = {"embed": {"raw": raw[:num_query], "protected": protected[:num_query]}}
    gallery_out = {"embed": {"raw": raw[num_query:], "protected": protected[num_query:]}}
    return privacy_reid.retrieval(splits["query"], splits["gallery"], query_out, gallery_out,
                                  max_rank=config.eval.max_rank)


def save_grid(path: str, raw: np.ndarray, examples: dict) -> None:
    """Rows: the original images, then each method's protected and recovered versions (clipped to [0, 1])."""
    rows = [("original", raw)] + [(f"{method}\n{kind}", images[kind]) for method, images in examples.items()
                                  for kind in ("protected", "recovered")]
    count = len(raw)
    figure, axes = plt.subplots(len(rows), count, figsize=(1.1 * count, 2.1 * len(rows)), squeeze=False)
    for row, (name, images) in enumerate(rows):
        for column in range(count):
            axis = axes[row][column]
            axis.imshow(np.clip(images[column], 0.0, 1.0))
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(name, fontsize=7)
    report_lib.save_figure(figure, path)


def _report_row(retrieval: dict, quality: dict) -> dict:
    row = {f"rank1 {setting}": values["rank1"] for setting, values in retrieval.items()}
    row.update({f"mAP {setting}": values["mAP"] for setting, values in retrieval.items()})
    for kind in ("protected", "recovered"):
        for metric in ("PSNR", "SSIM", "MSE"):
            row[f"{metric} {kind}"] = quality[kind][metric]
    return row


# ---------------------------------------------------------------------------------------------------- driver
def check_config(config) -> None:
    """Raises PixelFadeConfigError (or the PixelFade section's error) for settings the job cannot run with."""
    pixelfade_lib.check_config(config.pixelfade)
    unknown = [m for m in config.compare.methods if m not in METHODS]
    if unknown or "pixelfade" not in config.compare.methods:
        raise PixelFadeConfigError(f"config.compare.methods={tuple(config.compare.methods)}: list 'pixelfade' and "
                                   f"any of {METHODS}.")
    if config.data.validation_split:
        raise PixelFadeConfigError("config.data.validation_split=True: PixelFade has no validation stage; set it to "
                                   "False.")
    if config.attack.target not in ATTACK_TARGETS:
        raise PixelFadeConfigError(f"config.attack.target={config.attack.target!r}: use one of {ATTACK_TARGETS}.")
    if config.attack.metric_normalization not in image_metrics.QUALITY_NORMALIZATIONS:
        raise PixelFadeConfigError(f"config.attack.metric_normalization={config.attack.metric_normalization!r}: use "
                                   f"one of {image_metrics.QUALITY_NORMALIZATIONS}.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every stage in `workdir` (skipping finished ones) and writes the report."""
    check_config(config)
    mesh = mesh_lib.make_mesh(config.mesh_shape)
    dtype = precision.compute_dtype(config.compute_dtype)
    tensorboard_dir = f"{workdir}/tensorboard"
    data_info, splits, num_classes = privacy_reid.prepare_data(config, workdir)
    nets = privacy_reid.build_networks(config, num_classes, dtype)
    common = {"mesh": mesh, "tensorboard_dir": tensorboard_dir}
    net, variables, authorization_info = authorization_model(config, workdir, splits, nets, **common)
    protection = run_stage(workdir, "protect", lambda stage_dir: run_protection(config, stage_dir, splits, net,
                                                                                variables), primary_only=True)
    protect_dir = os.path.join(workdir, "protect")
    raw = raw_images(config, splits)
    methods = tuple(config.compare.methods)
    reversible = None
    if "reversible" in methods:
        full_nets = {**nets, "reid": net}
        trained, _ = run_training_stage(workdir, "reversible", lambda stage_dir: train_reversible(
            config, stage_dir, splits, full_nets, variables, **common))
        reversible = (nets["generator"], trained["generator"])
    unet = pix2pix.UNetGenerator(out_channels=3, num_downs=config.attack.num_downs, ngf=config.attack.ngf,
                                 use_dropout=False, dtype=dtype)

    def protected(method, split):
        pixelfade_images = np.load(protected_paths(protect_dir, split)["images"], mmap_mode="r")
        return np.asarray(protected_images(config, method, raw[split], stream=("test", "train").index(split),
                                           mesh=mesh, pixelfade_images=pixelfade_images, reversible=reversible))

    # The test images serve the attack stage and the evaluation; the training images only their attack stage.
    protected_test = functools.cache(lambda method: protected(method, "test"))

    attacks = {method: run_attack(config, workdir, method, unet,
                                  lambda split, method=method: protected_test(method) if split == "test"
                                  else protected(method, split), raw, **common)
               for method in methods}

    def evaluate_stage(stage_dir):
        del stage_dir
        features = functools.partial(mesh_lib.map_batches, lambda v, x: net.apply(v, x, train=False), variables,
                                     batch_size=config.eval.batch_size, mesh=mesh)
        raw_features = features(np.asarray(privacy_reid.normalize(config, raw["test"])))
        rows = {}
        for method in methods:
            if method == "pixelfade" and config.pixelfade.feature == "pre_update":
                protected_features = np.load(protected_paths(protect_dir, "test")["features"])
            else:
                protected_features = features(protected_test(method))
            rows[method] = retrieval_rows(config, splits, raw_features, protected_features)
        examples = {}
        for method in methods:
            with np.load(os.path.join(workdir, f"attack_{method}", "examples.npz")) as data:
                examples[method] = {kind: data[kind] for kind in data.files}
        multihost.primary_only("image grid", lambda: save_grid(
            os.path.join(workdir, GRID_FILE), raw["test"][:config.eval.grid_images] / 255.0, examples))
        return rows

    retrievals = run_stage(workdir, "evaluate", evaluate_stage)
    names = {"pixelfade": "PixelFade", "mosaic": "mosaic", "blur": "blur", "noise": "noise",
             "reversible": "reversible anonymizer (privacy-reid GCR)"}
    metrics = {names[m]: _report_row(retrievals[m], attacks[m]) for m in methods}
    pixelfade_row = metrics[names["pixelfade"]]
    others = [m for m in methods if m != "pixelfade"]
    details = {
        "dataset": data_info["dataset"], "image_size": data_info["image_size"],
        "train_images": int(len(splits["train"]["images"])), "identities": num_classes,
        "test_images": int(len(raw["test"])), "attack_train_images": int(len(raw["train"])),
        "authorization": authorization_info, "pixelfade": config.pixelfade.to_dict(),
        "protection": protection,
        "attack": {"target": config.attack.target, "metric_normalization": config.attack.metric_normalization,
                   "epochs": config.attack.num_epochs},
        "pixelfade_protected_within_10_points": (pixelfade_row["rank1 raw->raw"]
                                                 - pixelfade_row["rank1 protected->protected"]) <= 0.10,
        "pixelfade_lowest_recovery_ssim": all(pixelfade_row["SSIM recovered"] < metrics[names[m]]["SSIM recovered"]
                                              for m in others),
        "devices": jax.device_count(),
    }
    curves = {f"{names[m]} protected->protected": retrievals[m]["protected->protected"]["cmc"] for m in methods}
    curves["raw->raw"] = retrievals["pixelfade"]["raw->raw"]["cmc"]
    report = report_lib.write_report(workdir, title="PixelFade: protection, recovery attack and comparison",
                                     metrics=metrics, details=details, cmc_curves=curves, figures=(GRID_FILE,))
    for name, row in metrics.items():
        logging.info("%-42s %s", name, "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    if multihost.is_primary():
        report_lib.write_tensorboard(create_writer(tensorboard_dir), report, workdir, step=0)
    return report
