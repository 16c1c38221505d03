"""Learnable privacy-preserving anonymization of pedestrian images (Zhang, Ye, Yang, ACM MM 2022, "privacy-reid").

Stages (each resumable in the workdir):
  data      the embedded synthetic pedestrians or a real dataset, resized and cached; with supervision upgradation
            the first 20% of the train names become the validation query/gallery (the split tool)
  baseline  mode "C": the AGW network trained on raw and classically desensitised images (mosaic, blur or noise)
  full      mode "GCR": anonymizer G and recovery network G_R (pix2pix U-Nets), AGW network C, two conditional
            PatchGAN discriminators; GAN + 100 L1(G(O), M) + 100 L1(G_R(G(O)), O) + ReId(C(O)) + ReId(C(G(O))),
            with supervision upgradation: every k epochs the validation decides whether a frozen snapshot of G
            replaces the desensitised target M
  evaluate  rank-1/mAP in the four query/gallery settings (raw/protected x raw/protected) for both models,
            PSNR/SSIM of desensitised, protected and recovered images against raw, an image grid
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
import optax
from absl import logging
from clu import metrics as clu_metrics

from anon_jax import losses
from anon_jax.convert import torchvision_resnet
from anon_jax.data import image_augment, image_data, pipeline
from anon_jax.files import atomic_target, atomic_write_text
from anon_jax.metrics import image as image_metrics
from anon_jax.metrics import reid as reid_metrics
from anon_jax.models import agw, pix2pix
from anon_jax.privacy import desensitize as desensitize_lib
from anon_jax.training import mesh as mesh_lib
from anon_jax.training import multihost, optim, precision
from anon_jax.training import report as report_lib
from anon_jax.training.checkpoint import Checkpoints
from anon_jax.training.loop import create_writer, train_loop
from anon_jax.training.stages import run_stage, run_training_stage

SETTINGS = {"raw->raw": ("raw", "raw"), "raw->protected": ("raw", "protected"),
            "protected->raw": ("protected", "raw"), "protected->protected": ("protected", "protected")}
VALIDATIONS_FILE = "validations.json"  # inside the full stage: one record per validation
GRID_FILE = "privacy_grid.png"
EXAMPLES_FILE = "examples.npz"


@flax.struct.dataclass
class BaselineMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    reid_raw: clu_metrics.Average.from_output("reid_raw")
    reid_desensitized: clu_metrics.Average.from_output("reid_desensitized")
    accuracy: clu_metrics.Average.from_output("accuracy")


@flax.struct.dataclass
class FullMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    d_anonymizer: clu_metrics.Average.from_output("d_anonymizer")
    d_recovery: clu_metrics.Average.from_output("d_recovery")
    gan: clu_metrics.Average.from_output("gan")
    l1_protected: clu_metrics.Average.from_output("l1_protected")
    l1_recovered: clu_metrics.Average.from_output("l1_recovered")
    reid_raw: clu_metrics.Average.from_output("reid_raw")
    reid_protected: clu_metrics.Average.from_output("reid_protected")
    accuracy: clu_metrics.Average.from_output("accuracy")
    upgraded: clu_metrics.Average.from_output("upgraded")


# ------------------------------------------------------------------------------------------------------ networks
def build_networks(config, num_classes: int, dtype) -> dict:
    """The Linen modules: "reid" (AGW, C), "generator" (G), "recovery" (G_R), "disc_anonymizer" (D1),
    "disc_recovery" (D2)."""
    unet = functools.partial(pix2pix.UNetGenerator, out_channels=3, num_downs=config.generator.num_downs,
                             ngf=config.generator.ngf, use_dropout=config.generator.use_dropout, dtype=dtype)
    patch = functools.partial(pix2pix.PatchDiscriminator, ndf=config.discriminator.ndf,
                              n_layers=config.discriminator.n_layers, dtype=dtype)
    return {"reid": agw.build_agw_network(config.model, num_classes, dtype=dtype), "generator": unet(),
            "recovery": unet(), "disc_anonymizer": patch(), "disc_recovery": patch()}


def init_variables(module, rng, shape):
    # Jitted: un-jitted init dispatches every initialiser separately and is slow on CPU.
    variables = jax.jit(functools.partial(module.init, train=False))({"params": rng, "dropout": rng},
                                                                     jnp.zeros((1, *shape), jnp.float32))
    variables = flax.core.unfreeze(variables)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def init_reid(config, net, image_shape, rng):
    """AGW variables, the ResNet trunk from config.model.imagenet_weights (a local torchvision .pth) when set."""
    variables = init_variables(net, rng, image_shape)
    if config.model.imagenet_weights:
        state_dict = torchvision_resnet.read_state_dict(config.model.imagenet_weights)
        variables = agw.imagenet_agw_variables(variables, state_dict)
    return variables


def trainable(variables, tx):
    return {**variables, "opt_state": tx.init(variables["params"])}


def apply_train(net, variables, x, key=None):
    """Train-mode output and the updated batch statistics."""
    rngs = {"dropout": key} if key is not None else {}
    outputs, updates = net.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
    return outputs, updates["batch_stats"]


def update_part(tx, part, grads, batch_stats):
    updates, opt_state = tx.update(grads, part["opt_state"], part["params"])
    return {"params": optax.apply_updates(part["params"], updates), "batch_stats": batch_stats,
            "opt_state": opt_state}


# ---------------------------------------------------------------------------------------------------- losses
def reid_loss(config, outputs, labels, centres):
    """privacy-reid's L_reid: label-smoothed CE + weighted regularised triplet + centre_weight * centre loss, the
    metric losses on the pre-BN feature. Returns (loss, accuracy)."""
    ce = losses.cross_entropy(outputs["logits"], labels, label_smoothing=config.loss.label_smoothing)
    triplet = losses.weighted_regularized_triplet(outputs["features"], labels)
    centre = losses.centre_loss(outputs["features"], labels, centres)
    accuracy = jnp.mean((jnp.argmax(outputs["logits"], -1) == labels).astype(jnp.float32))
    return ce + triplet + config.loss.centre_weight * centre, accuracy


def _centre_update(config, centres, grads):
    """The centres' own SGD (lr config.loss.centre_lr) on gradients divided by the centre weight, as the original
    rescales them so that the 0.0005 weight does not slow the centres down."""
    return centres - config.loss.centre_lr * grads / config.loss.centre_weight


def normalize(config, pixels):
    """Network input of [0, 255] pixels: (pixels / 255 - config.data.pixel_mean) / config.data.pixel_std."""
    return image_augment.normalize(pixels, tuple(config.data.pixel_mean), tuple(config.data.pixel_std))


def to_unit(config, normalized):
    """[0, 1] pixels of network inputs or outputs (the original's de-normalisation: not clipped)."""
    return image_augment.denormalize(normalized, tuple(config.data.pixel_mean), tuple(config.data.pixel_std)) / 255.0


def _training_views(config, key, raw, desensitized: bool = True):
    """(O, M) normalised and augmented with shared random choices; M is the classical desensitisation of the raw
    8-bit pixels (noise drawn afresh every step, as the original draws it in every __getitem__), or with
    `desensitized=False` O again (a plain AGW on raw images)."""
    desensitize_key, augment_key = jax.random.split(key)
    target = desensitize_lib.desensitize(raw, config.desensitize, desensitize_key) if desensitized else raw
    return image_augment.augment_pair(augment_key, raw, target, pad=config.train.pad,
                                      erase_prob=config.train.erase_prob, mean=tuple(config.data.pixel_mean),
                                      std=tuple(config.data.pixel_std))


# ---------------------------------------------------------------------------------------------- baseline (C)
def make_baseline_step(config, nets, txs, *, desensitized: bool = True):
    """Mode "C": the AGW network on the raw and on the desensitised batch (two forward passes, one update); with
    `desensitized=False` on the raw batch alone (the plain AGW recipe; reid_desensitized is then 0)."""
    net = nets["reid"]

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        raw, desensitized_view = _training_views(config, rng, batch["images"], desensitized)
        labels = batch["labels"]
        reid = state["reid"]

        def loss_fn(params, centres):
            out_raw, stats = apply_train(net, {"params": params, "batch_stats": reid["batch_stats"]}, raw)
            loss_raw, accuracy = reid_loss(config, out_raw, labels, centres)
            loss_des = jnp.zeros_like(loss_raw)
            if desensitized:
                out_des, stats = apply_train(net, {"params": params, "batch_stats": stats}, desensitized_view)
                loss_des, _ = reid_loss(config, out_des, labels, centres)
            return loss_raw + loss_des, (stats, loss_raw, loss_des, accuracy)

        grads, (stats, loss_raw, loss_des, accuracy) = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(
            reid["params"], state["centres"])
        new_state = {**state, "step": state["step"] + 1, "reid": update_part(txs["reid"], reid, grads[0], stats),
                     "centres": _centre_update(config, state["centres"], grads[1])}
        metrics = BaselineMetrics.single_from_model_output(loss=loss_raw + loss_des, reid_raw=loss_raw,
                                                           reid_desensitized=loss_des, accuracy=accuracy)
        return new_state, metrics

    return train_step


# ------------------------------------------------------------------------------------------------ full (GCR)
def make_full_step(config, nets, txs):
    """Mode "GCR", one batch in the original's order: D1 and D2 step on the forward pass's images, then G, G_R and
    C step on GAN (against the updated discriminators) + L1 + ReId losses, then the centres.

    G and G_R run forward once (their VJPs serve the second update), so their BatchNorm statistics move once per
    step; the discriminators and C see several batches in train mode, their statistics chained call after call as
    PyTorch updates them. With state["upgrade"]["use_snapshot"] the frozen snapshot of G (eval mode) gives the
    supervision target M in place of the desensitised image (supervision upgradation).
    """
    generator, recovery, reid_net = nets["generator"], nets["recovery"], nets["reid"]
    d_anon, d_rec = nets["disc_anonymizer"], nets["disc_recovery"]
    weights = config.loss

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        view_key, g_key, r_key = jax.random.split(rng, 3)
        raw, classical = _training_views(config, view_key, batch["images"])
        labels = batch["labels"]
        upgraded = state["upgrade"]["use_snapshot"]
        target = jax.lax.stop_gradient(jax.lax.cond(
            upgraded, lambda: generator.apply(state["snapshot"], raw, train=False), lambda: classical))
        g_part, r_part, reid = state["generator"], state["recovery"], state["reid"]
        protected, g_vjp, g_stats = jax.vjp(
            lambda p: apply_train(generator, {"params": p, "batch_stats": g_part["batch_stats"]}, raw, g_key),
            g_part["params"], has_aux=True)
        recovered, r_vjp, r_stats = jax.vjp(
            lambda p, x: apply_train(recovery, {"params": p, "batch_stats": r_part["batch_stats"]}, x, r_key),
            r_part["params"], protected, has_aux=True)

        # Discriminators: fake pairs on the detached images, then real pairs (D2's real pair is (P, O)).
        protected_d, recovered_d = jax.lax.stop_gradient(protected), jax.lax.stop_gradient(recovered)
        d_parts = {"disc_anonymizer": state["disc_anonymizer"], "disc_recovery": state["disc_recovery"]}

        def pair_loss(net, params, batch_stats, fake, real):
            fake_logits, batch_stats = apply_train(net, {"params": params, "batch_stats": batch_stats}, fake)
            real_logits, batch_stats = apply_train(net, {"params": params, "batch_stats": batch_stats}, real)
            return pix2pix.gan_loss(fake_logits, False) + pix2pix.gan_loss(real_logits, True), batch_stats

        def d_loss(params):
            loss_1, stats_1 = pair_loss(d_anon, params["disc_anonymizer"], d_parts["disc_anonymizer"]["batch_stats"],
                                        jnp.concatenate([raw, protected_d], -1), jnp.concatenate([raw, target], -1))
            loss_2, stats_2 = pair_loss(d_rec, params["disc_recovery"], d_parts["disc_recovery"]["batch_stats"],
                                        jnp.concatenate([protected_d, recovered_d], -1),
                                        jnp.concatenate([protected_d, raw], -1))
            return loss_1 + loss_2, ({"disc_anonymizer": stats_1, "disc_recovery": stats_2}, loss_1, loss_2)

        d_grads, (d_stats, d_loss_1, d_loss_2) = jax.grad(d_loss, has_aux=True)(
            {name: part["params"] for name, part in d_parts.items()})
        d_new = {name: update_part(txs[name], part, d_grads[name], d_stats[name]) for name, part in d_parts.items()}

        def generator_loss(protected, recovered, reid_params, centres):
            adv_1, stats_1 = apply_train(d_anon, {"params": d_new["disc_anonymizer"]["params"],
                                                   "batch_stats": d_new["disc_anonymizer"]["batch_stats"]},
                                          jnp.concatenate([raw, protected], -1))
            adv_2, stats_2 = apply_train(d_rec, {"params": d_new["disc_recovery"]["params"],
                                                  "batch_stats": d_new["disc_recovery"]["batch_stats"]},
                                          jnp.concatenate([protected, recovered], -1))
            gan = pix2pix.gan_loss(adv_1, True) + pix2pix.gan_loss(adv_2, True)
            l1_protected = jnp.mean(jnp.abs(protected - target))
            l1_recovered = jnp.mean(jnp.abs(recovered - raw))
            out_raw, c_stats = apply_train(reid_net, {"params": reid_params, "batch_stats": reid["batch_stats"]}, raw)
            out_protected, c_stats = apply_train(reid_net, {"params": reid_params, "batch_stats": c_stats},
                                                  protected)
            reid_raw, accuracy = reid_loss(config, out_raw, labels, centres)
            reid_protected, _ = reid_loss(config, out_protected, labels, centres)
            total = (weights.gan_weight * gan + weights.protected_l1_weight * l1_protected
                     + weights.recovered_l1_weight * l1_recovered + reid_raw + reid_protected)
            parts = {"gan": gan, "l1_protected": l1_protected, "l1_recovered": l1_recovered, "reid_raw": reid_raw,
                     "reid_protected": reid_protected, "accuracy": accuracy}
            return total, ({"disc_anonymizer": stats_1, "disc_recovery": stats_2, "reid": c_stats}, parts)

        (total, (stats, parts)), grads = jax.value_and_grad(generator_loss, argnums=(0, 1, 2, 3), has_aux=True)(
            protected, recovered, reid["params"], state["centres"])
        grad_protected, grad_recovered, grad_reid, grad_centres = grads
        grad_r_params, grad_protected_via_r = r_vjp(grad_recovered)
        (grad_g_params,) = g_vjp(grad_protected + grad_protected_via_r)
        new_state = {
            **state, "step": state["step"] + 1,
            "generator": update_part(txs["generator"], g_part, grad_g_params, g_stats),
            "recovery": update_part(txs["recovery"], r_part, grad_r_params, r_stats),
            "reid": update_part(txs["reid"], reid, grad_reid, stats["reid"]),
            "centres": _centre_update(config, state["centres"], grad_centres),
            **{name: {**d_new[name], "batch_stats": stats[name]} for name in d_parts},
        }
        metrics = FullMetrics.single_from_model_output(
            loss=total, d_anonymizer=d_loss_1, d_recovery=d_loss_2, upgraded=upgraded.astype(jnp.float32), **parts)
        return new_state, metrics

    return train_step


# --------------------------------------------------------------------------------------- supervision upgradation
def upgrade_decision(record: dict, metrics: dict, upgrade) -> dict:
    """privacy-reid's supervision upgradation after one validation; returns the new record plus the decisions.

    anonymous_enough: PSNR(O, P) < PSNR(O, M) + psnr_tolerance and SSIM(O, P) < SSIM(O, M) + ssim_tolerance, M the
    classical desensitisation (the bound always refers to it). new_best: anonymous enough and the validation rank-1
    (raw query vs protected gallery) beats every earlier anonymous-enough one (the original's val_best save).
    use_snapshot: anonymous enough and rank-1 > min_rank1; the target stays the classical M otherwise (the original
    re-checks the latest validation on every batch). replace_snapshot: use_snapshot and rank-1 beats the snapshot
    in use (G as it is now becomes the frozen target).
    """
    rank1 = float(metrics["rank1"])
    anonymous = bool(metrics["psnr_protected"] < metrics["psnr_desensitized"] + upgrade.psnr_tolerance
                     and metrics["ssim_protected"] < metrics["ssim_desensitized"] + upgrade.ssim_tolerance)
    new_best = anonymous and rank1 > record["best_rank1"]
    use = anonymous and rank1 > upgrade.min_rank1
    replace = use and rank1 > record["snapshot_rank1"]
    return {"anonymous_enough": anonymous, "new_best": new_best, "use_snapshot": use, "replace_snapshot": replace,
            "best_rank1": rank1 if new_best else record["best_rank1"],
            "snapshot_rank1": rank1 if replace else record["snapshot_rank1"]}


# ------------------------------------------------------------------------------------------------ evaluation
def make_eval_batch(config, nets, mode: str):
    """fn(variables, batch) -> per-image raw and protected embeddings and quality terms for a batch of raw uint8
    images with their global indices ("index"): protected = G(O) (mode "GCR") or the desensitised image ("C")."""
    generator, recovery, reid_net = nets["generator"], nets["recovery"], nets["reid"]
    noise_key = jax.random.key(config.seed + 7)

    def desensitize_one(image, index):  # the noise of an image depends on its index only, not on the batch
        return desensitize_lib.desensitize(image[None], config.desensitize, jax.random.fold_in(noise_key, index))[0]

    def quality(images, raw_unit):
        return {"mse": image_metrics.mse(images, raw_unit),
                "ssim": image_metrics.ssim(images, raw_unit, data_range=1.0, padding="zeros")}

    def fn(variables, batch):
        pixels = batch["images"]
        raw = normalize(config, pixels)
        raw_unit = pixels.astype(jnp.float32) / 255.0
        desensitized = jax.vmap(desensitize_one)(pixels, batch["index"])
        outputs = {"desensitized": quality(desensitized.astype(jnp.float32) / 255.0, raw_unit)}
        if mode == "GCR":
            protected = generator.apply(variables["generator"], raw, train=False)
            recovered = recovery.apply(variables["recovery"], protected, train=False)
            outputs["protected"] = quality(to_unit(config, protected), raw_unit)
            outputs["recovered"] = quality(to_unit(config, recovered), raw_unit)
            outputs["images"] = {"protected": protected, "recovered": recovered}
        else:
            protected = normalize(config, desensitized)
            outputs["protected"] = outputs["desensitized"]
        outputs["embed"] = {"raw": reid_net.apply(variables["reid"], raw, train=False),
                            "protected": reid_net.apply(variables["reid"], protected, train=False)}
        return outputs

    return fn


def run_eval(eval_batch, variables, split: dict, *, index_offset: int, batch_size: int, mesh,
             keep_images: bool = False) -> dict:
    """eval_batch over a split (host arrays); generated images are dropped unless `keep_images`."""
    def fn(params, batch):
        outputs = eval_batch(params, batch)
        if not keep_images:
            outputs.pop("images", None)
        return outputs

    inputs = {"images": split["images"], "index": np.arange(len(split["images"])) + index_offset}
    return mesh_lib.map_batches(fn, variables, inputs, batch_size=batch_size, mesh=mesh)


def dataset_quality(parts: list[dict]) -> dict:
    """The original's dataset-level PSNR (10 log10(1 / mean MSE)) and mean SSIM of each image kind."""
    result = {}
    for kind in ("desensitized", "protected", "recovered"):
        if kind in parts[0]:
            mse = np.concatenate([part[kind]["mse"] for part in parts])
            result[f"psnr_{kind}"] = float(10 * np.log10(1.0 / np.mean(mse)))
            result[f"ssim_{kind}"] = float(np.mean(np.concatenate([part[kind]["ssim"] for part in parts])))
    return result


def retrieval(query: dict, gallery: dict, query_out: dict, gallery_out: dict, *, max_rank: int,
              settings=tuple(SETTINGS)) -> dict:
    """Rank-1/5 and mAP (Market-1501 rule) of each query/gallery setting, L2-normalised features."""
    results = {}
    for setting in settings:
        query_kind, gallery_kind = SETTINGS[setting]
        distances = reid_metrics.cosine_distance(query_out["embed"][query_kind], gallery_out["embed"][gallery_kind])
        scores = reid_metrics.cmc_map(distances, query["pids"], gallery["pids"], query["camids"], gallery["camids"],
                                      max_rank=max_rank)
        results[setting] = {"rank1": float(scores["rank1"]), "rank5": float(scores["rank5"]),
                            "mAP": float(scores["mAP"]), "cmc": [float(v) for v in scores["cmc"]]}
    return results


def evaluate_pair(config, eval_batch, variables, query: dict, gallery: dict, *, mesh, settings=tuple(SETTINGS)):
    """Retrieval in `settings` and image quality over query + gallery; the query's outputs are returned too."""
    common = {"batch_size": config.eval.batch_size, "mesh": mesh}
    query_out = run_eval(eval_batch, variables, query, index_offset=0, **common)
    gallery_out = run_eval(eval_batch, variables, gallery, index_offset=len(query["images"]), **common)
    results = retrieval(query, gallery, query_out, gallery_out, max_rank=config.eval.max_rank, settings=settings)
    return results, dataset_quality([query_out, gallery_out])


def validate(config, eval_batch, variables, splits: dict, *, mesh) -> dict:
    """Validation of the full model: rank-1 of raw val queries against the protected val gallery, and PSNR/SSIM
    of desensitised and protected val images against raw."""
    results, quality = evaluate_pair(config, eval_batch, variables, splits["val_query"], splits["val_gallery"],
                                     mesh=mesh, settings=("raw->raw", "raw->protected"))
    return {"rank1": results["raw->protected"]["rank1"], "rank1_raw": results["raw->raw"]["rank1"], **quality}


# ---------------------------------------------------------------------------------------------------- training
BASELINE_NETWORKS = ("reid",)
# The full model's C starts like the baseline's ("fresh": ImageNet or random, as the paper) or from the trained
# baseline ("baseline").
REID_INITS = ("fresh", "baseline")
FULL_NETWORKS = ("reid", "generator", "recovery", "disc_anonymizer", "disc_recovery")


def init_baseline_state(config, nets, txs, image_shape, num_classes: int) -> dict:
    """Step 0 of mode "C": the AGW network, its optimizer state and the centre-loss centres."""
    rng = jax.random.key(config.seed)
    reid = init_reid(config, nets["reid"], image_shape, rng)
    return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.fold_in(rng, 1), "reid": trainable(reid, txs["reid"]),
            "centres": losses.initial_centres(jax.random.fold_in(rng, 2), num_classes, agw.feature_dim(config.model.depth, config.model.width))}


def init_full_state(config, nets, txs, image_shape, num_classes: int, *, snapshot_rank1: float,
                    reid_variables=None) -> dict:
    """Step 0 of mode "GCR": the five networks with their optimizer states (C from `reid_variables` when given),
    the centres, a snapshot slot for G (unused until the first upgrade) and the upgradation record (no snapshot in
    use, none better than `snapshot_rank1` yet, no validation done)."""
    rng = jax.random.key(config.seed + 1)
    pair_shape = (*image_shape[:2], 2 * image_shape[2])
    variables = {"reid": reid_variables or init_reid(config, nets["reid"], image_shape, rng),
                 "generator": init_variables(nets["generator"], jax.random.fold_in(rng, 1), image_shape),
                 "recovery": init_variables(nets["recovery"], jax.random.fold_in(rng, 2), image_shape),
                 "disc_anonymizer": init_variables(nets["disc_anonymizer"], jax.random.fold_in(rng, 3), pair_shape),
                 "disc_recovery": init_variables(nets["disc_recovery"], jax.random.fold_in(rng, 4), pair_shape)}
    return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.fold_in(rng, 5),
            **{name: trainable(variables[name], txs[name]) for name in FULL_NETWORKS},
            "centres": losses.initial_centres(jax.random.fold_in(rng, 6), num_classes, agw.feature_dim(config.model.depth, config.model.width)),
            "snapshot": jax.tree_util.tree_map(jnp.copy, variables["generator"]),
            "upgrade": {"use_snapshot": jnp.asarray(False), "best_rank1": jnp.asarray(0.0, jnp.float32),
                        "snapshot_rank1": jnp.asarray(snapshot_rank1, jnp.float32),
                        "validated_at": jnp.zeros((), jnp.int32)}}


def _sampler(config, labels):
    return functools.partial(pipeline.identity_groups_batches, labels, config.train.p, config.train.k,
                             seed=config.seed)


def _optimizers(section, names, epoch_starts) -> dict:
    num_steps = int(epoch_starts[-1])
    return {name: optim.make_optimizer(section[f"{name}_optimizer"], num_steps=num_steps,
                                       steps_per_epoch=epoch_starts)[0] for name in names}


def fit(name: str, stage_dir: str, state, train_step, train: dict, config, section, *, mesh, tensorboard_dir: str,
        epoch_starts: np.ndarray, boundaries=(), on_boundary=None):
    """Runs `train_step` over P x K batches for section.num_epochs (resumable); training stops at each step of
    `boundaries`, where `on_boundary(state, step)` may change the state."""
    mesh_lib.check_batch_size(config.train.p * config.train.k, mesh)
    num_steps = int(epoch_starts[-1])
    checkpoints = Checkpoints(f"{stage_dir}/checkpoints", max_to_keep=2, save_every_steps=section.checkpoint_every_steps)
    state = checkpoints.restore_or(mesh_lib.replicate(state, mesh))
    arrays = {"images": train["images"], "labels": train["labels"]}
    local_batches = pipeline.batch_iterator(arrays, _sampler(config, train["labels"]),
                                            start_step=int(jax.device_get(state["step"])),
                                            process_index=jax.process_index(), process_count=jax.process_count())
    batches = pipeline.prefetch(mesh_lib.shard_batch(batch, mesh) for batch in local_batches)
    step = jax.jit(train_step, donate_argnums=0, out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)))
    writer = create_writer(tensorboard_dir)
    for end in [*boundaries, num_steps]:
        if int(jax.device_get(state["step"])) < end:
            state = train_loop(name=name, state=state, train_step=step, batches=batches, num_steps=end,
                               checkpoints=checkpoints, writer=writer, log_every_steps=section.log_every_steps)
        if end in boundaries:
            state = on_boundary(state, end)
    checkpoints.close()
    return state


def variables_of(part) -> dict:
    return {"params": part["params"], "batch_stats": part["batch_stats"]}


def train_baseline(config, stage_dir: str, splits: dict, nets, *, mesh, tensorboard_dir: str,
                   desensitized: bool = True, name: str = "baseline"):
    """Mode "C" (with `desensitized=False`: AGW on raw images alone), logged as `name`; returns (AGW variables, info with the
    validation raw->desensitised rank-1 when validating)."""
    train = splits["train"]
    epoch_starts = pipeline.epoch_start_steps(_sampler(config, train["labels"]), config.baseline.num_epochs)
    txs = _optimizers(config.baseline, BASELINE_NETWORKS, epoch_starts)
    state = init_baseline_state(config, nets, txs, train["images"].shape[1:], int(train["labels"].max()) + 1)
    started = time.perf_counter()
    state = fit(name, stage_dir, state, make_baseline_step(config, nets, txs, desensitized=desensitized),
                train, config, config.baseline,
                mesh=mesh, tensorboard_dir=tensorboard_dir, epoch_starts=epoch_starts)
    variables = variables_of(state["reid"])
    info = {"num_steps": int(epoch_starts[-1]), "seconds": round(time.perf_counter() - started, 1)}
    if "val_query" in splits:
        info["validation"] = validate(config, make_eval_batch(config, nets, "C"), {"reid": variables}, splits,
                                      mesh=mesh)
    return variables, info


def _write_validations(stage_dir: str, records: list) -> None:
    if multihost.is_primary():
        atomic_write_text(os.path.join(stage_dir, VALIDATIONS_FILE), json.dumps(records, indent=1))


def _read_validations(stage_dir: str) -> list:
    path = os.path.join(stage_dir, VALIDATIONS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)


def validation_steps(config, epoch_starts: np.ndarray) -> list[int]:
    """The steps that end every config.upgrade.val_every_epochs-th epoch, the last epoch excluded."""
    every = config.upgrade.val_every_epochs
    return [int(epoch_starts[epoch]) for epoch in range(every, len(epoch_starts) - 1, every)]


def train_full(config, stage_dir: str, splits: dict, nets, *, min_rank1: float, mesh, tensorboard_dir: str,
               reid_variables=None):
    """Mode "GCR" with supervision upgradation (config.upgrade.enabled), C starting from `reid_variables` when
    given; returns (the G, G_R and C variables, info with every validation record)."""
    train = splits["train"]
    epoch_starts = pipeline.epoch_start_steps(_sampler(config, train["labels"]), config.full.num_epochs)
    txs = _optimizers(config.full, FULL_NETWORKS, epoch_starts)
    upgrade = ml_collections.ConfigDict(config.upgrade.to_dict())
    upgrade.min_rank1 = min_rank1
    state = init_full_state(config, nets, txs, train["images"].shape[1:], int(train["labels"].max()) + 1,
                            snapshot_rank1=min_rank1, reid_variables=reid_variables)
    eval_batch = make_eval_batch(config, nets, "GCR")
    records = _read_validations(stage_dir)

    def on_boundary(state, step):
        current = jax.device_get(state["upgrade"])
        if int(current["validated_at"]) >= step:
            return state  # validated before a restart: the checkpoint already holds the decision
        metrics = validate(config, eval_batch, {name: variables_of(state[name]) for name in ("reid", "generator",
                                                                                            "recovery")},
                           splits, mesh=mesh)
        decision = upgrade_decision({key: float(current[key]) for key in ("best_rank1", "snapshot_rank1")},
                                    metrics, upgrade)
        logging.info("[full] validation at step %d: rank-1 raw->protected %.3f (raw->raw %.3f), PSNR protected %.2f "
                     "vs desensitised %.2f dB, SSIM %.3f vs %.3f -> %s", step, metrics["rank1"], metrics["rank1_raw"],
                     metrics["psnr_protected"], metrics["psnr_desensitized"], metrics["ssim_protected"],
                     metrics["ssim_desensitized"],
                     "new snapshot" if decision["replace_snapshot"] else
                     "snapshot kept" if decision["use_snapshot"] else "desensitised target")
        records[:] = [r for r in records if r["step"] < step] + [{"step": step, **metrics, **decision}]
        _write_validations(stage_dir, records)
        new_upgrade = {"use_snapshot": jnp.asarray(decision["use_snapshot"]),
                       "best_rank1": jnp.asarray(decision["best_rank1"], jnp.float32),
                       "snapshot_rank1": jnp.asarray(decision["snapshot_rank1"], jnp.float32),
                       "validated_at": jnp.asarray(step, jnp.int32)}
        state = {**state, "upgrade": mesh_lib.replicate(new_upgrade, mesh)}
        if decision["replace_snapshot"]:
            # A host copy: the snapshot must not share buffers with G, whose buffers the next step donates.
            state["snapshot"] = mesh_lib.replicate(jax.device_get(variables_of(state["generator"])), mesh)
        return state

    started = time.perf_counter()
    boundaries = validation_steps(config, epoch_starts) if config.upgrade.enabled else []
    state = fit("full", stage_dir, state, make_full_step(config, nets, txs), train, config, config.full, mesh=mesh,
                tensorboard_dir=tensorboard_dir, epoch_starts=epoch_starts, boundaries=boundaries,
                on_boundary=on_boundary)
    trained = {name: variables_of(state[name]) for name in ("reid", "generator", "recovery")}
    info = {"num_steps": int(epoch_starts[-1]), "seconds": round(time.perf_counter() - started, 1),
            "min_rank1": min_rank1, "boundaries": boundaries, "validations": records}
    return trained, info


# ------------------------------------------------------------------------------------------------------ figures
def save_grid(examples: dict, workdir: str) -> None:
    """privacy_grid.png (rows: raw, desensitised, protected, recovered; a few query images, clipped to [0, 1])
    and examples.npz (the same images as arrays in [0, 1], unclipped)."""
    with atomic_target(os.path.join(workdir, EXAMPLES_FILE)) as path, open(path, "wb") as f:
        np.savez(f, **examples)
    names = list(examples)
    count = len(examples[names[0]])
    figure, axes = plt.subplots(len(names), count, figsize=(1.2 * count, 2.4 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for column in range(count):
            axis = axes[row][column]
            axis.imshow(np.clip(examples[name][column], 0.0, 1.0))
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(name)
    report_lib.save_figure(figure, os.path.join(workdir, GRID_FILE))


def grid_examples(config, nets, variables, query: dict, *, mesh, count: int = 6) -> dict:
    """Raw, desensitised, protected and recovered versions of the first `count` query images, in [0, 1]."""
    subset = {key: value[:count] for key, value in query.items()}
    outputs = run_eval(make_eval_batch(config, nets, "GCR"), variables, subset, index_offset=0,
                       batch_size=count, mesh=mesh, keep_images=True)
    pixels = np.asarray(subset["images"])
    noise_key = jax.random.key(config.seed + 7)
    desensitized = np.stack([np.asarray(desensitize_lib.desensitize(
        pixels[i:i + 1], config.desensitize, jax.random.fold_in(noise_key, i)))[0] for i in range(len(pixels))])
    return {"raw": pixels / 255.0, "desensitized": desensitized / 255.0,
            **{kind: np.asarray(to_unit(config, outputs["images"][kind])) for kind in ("protected", "recovered")}}


# ------------------------------------------------------------------------------------------------------- driver
def _check_config(config) -> None:
    if config.upgrade.enabled and not config.data.validation_split:
        raise ValueError("config.upgrade.enabled=True needs validation images: set config.data.validation_split=True "
                         "(Market-style datasets), or config.upgrade.enabled=False (the 'w/o U' model).")
    if config.full.reid_init not in REID_INITS:
        raise ValueError(f"config.full.reid_init={config.full.reid_init!r}: use one of {REID_INITS}.")
    if config.loss.centre_weight <= 0:
        raise ValueError(f"config.loss.centre_weight={config.loss.centre_weight}: must be > 0 (privacy-reid: 5e-4).")


def _validation_summary(info: dict) -> dict:
    """The full stage's info for the report, its validation records (full/validations.json) reduced to the steps
    where a snapshot was taken or kept in use."""
    records = info["validations"]
    return {**{key: value for key, value in info.items() if key != "validations"},
            "validations": len(records),
            "new_snapshot_steps": [record["step"] for record in records if record["replace_snapshot"]],
            "snapshot_in_use_steps": [record["step"] for record in records if record["use_snapshot"]]}


def _report_rows(results: dict, quality: dict) -> dict:
    row = {}
    for setting, values in results.items():
        row[f"rank1 {setting}"] = values["rank1"]
    for setting, values in results.items():
        row[f"mAP {setting}"] = values["mAP"]
    row["PSNR protected (dB)"] = quality["psnr_protected"]
    row["SSIM protected"] = quality["ssim_protected"]
    return row


def prepare_data(config, workdir: str):
    """Stage "data" of the pedestrian-image methods: (stage info, splits, number of training identities)."""
    data_info = run_stage(workdir, "data", lambda stage_dir: image_data.prepare(config.data, stage_dir),
                          primary_only=True)
    splits = image_data.load_prepared(data_info)
    return data_info, splits, int(splits["train"]["labels"].max()) + 1


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every stage in `workdir` (skipping finished ones) and writes the report."""
    _check_config(config)
    mesh = mesh_lib.make_mesh(config.mesh_shape)
    dtype = precision.compute_dtype(config.compute_dtype)
    tensorboard_dir = f"{workdir}/tensorboard"
    data_info, splits, num_classes = prepare_data(config, workdir)
    logging.info("Data: %s, %d train images of %d identities, %s; images %s, desensitisation %s", data_info["dataset"],
                 len(splits["train"]["images"]), num_classes,
                 ", ".join(f"{len(split['images'])} {name}" for name, split in splits.items() if name != "train"),
                 data_info["image_size"], config.desensitize.kind)
    nets = build_networks(config, num_classes, dtype)
    common = {"mesh": mesh, "tensorboard_dir": tensorboard_dir}
    baseline, baseline_info = run_training_stage(workdir, "baseline", lambda stage_dir: train_baseline(
        config, stage_dir, splits, nets, **common))
    min_rank1 = config.upgrade.min_rank1
    if config.upgrade.enabled and config.upgrade.min_rank1_from_baseline:
        min_rank1 = baseline_info["validation"]["rank1"]
    reid_variables = baseline if config.full.reid_init == "baseline" else None
    full, full_info = run_training_stage(workdir, "full", lambda stage_dir: train_full(
        config, stage_dir, splits, nets, min_rank1=min_rank1, reid_variables=reid_variables, **common))

    def evaluate_stage(stage_dir):
        del stage_dir
        rows = {}
        for name, mode, variables in (("baseline", "C", {"reid": baseline}), ("full", "GCR", full)):
            results, quality = evaluate_pair(config, make_eval_batch(config, nets, mode), variables,
                                             splits["query"], splits["gallery"], mesh=mesh)
            rows[name] = {"retrieval": results, "quality": quality}
        multihost.primary_only("image grid", lambda: save_grid(
            grid_examples(config, nets, full, splits["query"], mesh=mesh), workdir))
        return rows

    evaluated = run_stage(workdir, "evaluate", evaluate_stage)
    kind = config.desensitize.kind
    names = {"baseline": f"C baseline (AGW on raw + {kind})",
             "full": "full model (GCR" + (" + upgradation)" if config.upgrade.enabled else ", w/o U)")}
    metrics = {names[name]: _report_rows(evaluated[name]["retrieval"], evaluated[name]["quality"])
               for name in ("baseline", "full")}
    quality = evaluated["full"]["quality"]
    metrics[f"classical {kind} (images)"] = {"PSNR protected (dB)": quality["psnr_desensitized"],
                                             "SSIM protected": quality["ssim_desensitized"]}
    metrics["recovered by G_R (images)"] = {"PSNR protected (dB)": quality["psnr_recovered"],
                                            "SSIM protected": quality["ssim_recovered"]}
    for name, row in metrics.items():
        logging.info("%-45s %s", name, "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    full_results, base_results = evaluated["full"]["retrieval"], evaluated["baseline"]["retrieval"]
    upgrade = config.upgrade
    details = {
        "dataset": data_info["dataset"], "image_size": data_info["image_size"],
        "train_images": int(len(splits["train"]["images"])), "identities": num_classes,
        "desensitization": config.desensitize.to_dict(), "devices": jax.device_count(),
        "full_reid_init": config.full.reid_init,
        "stages": {"baseline": baseline_info, "full": _validation_summary(full_info)},
        "full_beats_baseline": {setting: full_results[setting]["rank1"] > base_results[setting]["rank1"]
                                for setting in ("raw->protected", "protected->protected")},
        "protected_no_closer_than_classical": {
            "psnr": quality["psnr_protected"] < quality["psnr_desensitized"] + upgrade.psnr_tolerance,
            "ssim": quality["ssim_protected"] < quality["ssim_desensitized"] + upgrade.ssim_tolerance,
            "psnr_tolerance": upgrade.psnr_tolerance, "ssim_tolerance": upgrade.ssim_tolerance},
    }
    curves = {f"{name} {setting}": evaluated[name]["retrieval"][setting]["cmc"]
              for name in ("baseline", "full") for setting in SETTINGS}
    report = report_lib.write_report(workdir, title=f"privacy-reid: reversible anonymization ({kind})",
                                     metrics=metrics, details=details, cmc_curves=curves, figures=(GRID_FILE,))
    if multihost.is_primary():
        steps = baseline_info["num_steps"] + full_info["num_steps"]
        report_lib.write_tensorboard(create_writer(tensorboard_dir), report, workdir, step=steps)
    return report
