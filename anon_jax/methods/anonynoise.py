"""AnonyNoise (Bendig et al., WACV 2025): learned noise on event frames that keeps a target task (gesture, emotion,
action) recognisable and defeats re-identification.

Stages (each resumable in the workdir):
  data             the dataset as event frames (n time bins x 2 polarities): the embedded synthetic actions or a
                   real one read from a local folder
  pretrain_target  the target network on clean frames (cross-entropy)
  pretrain_reid    the ReId network on clean frames (cross-entropy + batch-hard triplet with margin 4)
  pipeline         anonymizer, target network and ReId network updated on every batch by their own optimizers:
                   anonymizer on CE(T(A(x))) - triplet(R(A(x))), T and R on the detached A(x)
  post_reid        a ReId attacker trained again on anonymised frames (anonymizer frozen)
  post_denoise     the inversion attack: a denoiser and a ReId attacker trained jointly on anonymised frames
                   (task loss + MSE to the clean frames)
  evaluate         target accuracy and ReId CMC/mAP on raw and anonymised data against every attacker
"""


import functools
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
from anon_jax.files import atomic_target
from anon_jax.data import anonynoise_data, frame_augment, pipeline
from anon_jax.metrics import reid as reid_metrics
from anon_jax.models import anonynoise as models
from anon_jax.training import mesh as mesh_lib
from anon_jax.training import multihost, optim, precision
from anon_jax.training import report as report_lib
from anon_jax.training.checkpoint import Checkpoints
from anon_jax.training.loop import create_writer, train_loop
from anon_jax.training.stages import run_stage, run_training_stage

EVAL_SPLITS = ("val", "query", "gallery")
ANONYMIZER_DIR = "anonymizer"  # inside the workdir: the trained anonymizer (models.anonynoise.load_anonymizer)
EXAMPLES_FILE = "examples.npz"  # inside the workdir: the frames drawn in examples.png


@flax.struct.dataclass
class ClassifierMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    cross_entropy: clu_metrics.Average.from_output("cross_entropy")
    triplet: clu_metrics.Average.from_output("triplet")
    denoise_mse: clu_metrics.Average.from_output("denoise_mse")
    accuracy: clu_metrics.Accuracy


@flax.struct.dataclass
class PipelineMetrics(clu_metrics.Collection):
    anonymizer_loss: clu_metrics.Average.from_output("anonymizer_loss")
    target_cross_entropy: clu_metrics.Average.from_output("target_cross_entropy")
    reid_loss: clu_metrics.Average.from_output("reid_loss")
    reid_triplet_on_anonymizer: clu_metrics.Average.from_output("reid_triplet_on_anonymizer")
    target_accuracy: clu_metrics.Average.from_output("target_accuracy")


# ------------------------------------------------------------------------------------------------------ networks
def build_networks(config, num_targets: int, num_identities: int, dtype):
    """(anonymizer, target network, ReId network, denoiser) Linen modules of the config."""
    channels = 2 * config.data.num_time_bins
    net = config.model
    anonymizer = models.NoiseAnonymizer(num_channels=channels, variant=config.anonymizer.variant,
                                        noise_std=config.anonymizer.noise_std,
                                        features=tuple(config.anonymizer.features), dtype=dtype)
    classnet = functools.partial(models.ClassNet, depth=net.depth, width=net.width, embed_dim=net.embed_dim,
                                 dropout=net.dropout, dtype=dtype)
    denoiser = models.DenoiseNet(num_channels=channels, features=config.denoiser.features,
                                 num_layers=config.denoiser.num_layers, dtype=dtype)
    return anonymizer, classnet(num_classes=num_targets), classnet(num_classes=num_identities), denoiser


def _init(module, rng, frames_shape, **kwargs):
    # Jitted: un-jitted init dispatches every initialiser separately and is slow on CPU.
    rngs = {"params": rng, "noise": rng, "dropout": rng}
    return flax.core.unfreeze(jax.jit(functools.partial(module.init, **kwargs))(
        rngs, jnp.zeros((1, *frames_shape), jnp.float32)))


def _trainable(variables, tx):
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {}),
            "opt_state": tx.init(variables["params"])}


def _cross_entropy_and_accuracy(logits, labels):
    ce = losses.cross_entropy(logits, labels)
    return ce, jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


# ------------------------------------------------------------------------------------------- training a classifier
def make_classifier_step(config, net, tx, *, label_key: str, use_triplet: bool, anonymizer=None, denoiser=None):
    """Train step of a target or ReId network on clean frames, on anonymised frames (frozen `anonymizer`, whose
    params travel in state["anonymizer"]) or on denoised anonymised frames (`denoiser` trained jointly)."""
    margin = config.loss.triplet_margin

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        augment_key, noise_key, dropout_key = jax.random.split(rng, 3)
        clean = frame_augment.augment(augment_key, batch["frames"], **augment_args(config))
        inputs = clean
        if anonymizer is not None:
            inputs = anonymizer.apply({"params": state["anonymizer"]}, clean, rngs={"noise": noise_key})
        labels = batch[label_key]
        model = state["model"]

        def loss_fn(params):
            x, stats = inputs, {}
            mse = jnp.zeros((), jnp.float32)
            if denoiser is not None:
                x, updates = denoiser.apply({"params": params["denoiser"],
                                             "batch_stats": model["batch_stats"]["denoiser"]}, inputs, train=True,
                                            mutable=["batch_stats"])
                stats["denoiser"] = updates["batch_stats"]
                mse = jnp.mean(jnp.square(x - clean))
            outputs, updates = net.apply({"params": params["net"], "batch_stats": model["batch_stats"]["net"]}, x,
                                         train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
            stats["net"] = updates["batch_stats"]
            ce, accuracy = _cross_entropy_and_accuracy(outputs["logits"], labels)
            triplet = jnp.zeros((), jnp.float32)
            if use_triplet:
                triplet = losses.batch_hard_triplet(outputs["embed"], labels, margin=margin, self_positive=True)
            loss = ce + triplet + mse
            return loss, (stats, outputs["logits"], ce, triplet, mse)

        grads, (stats, logits, ce, triplet, mse) = jax.grad(loss_fn, has_aux=True)(model["params"])
        updates, opt_state = tx.update(grads, model["opt_state"], model["params"])
        new_model = {"params": optax.apply_updates(model["params"], updates), "batch_stats": stats,
                     "opt_state": opt_state}
        metrics = ClassifierMetrics.single_from_model_output(
            loss=ce + triplet + mse, cross_entropy=ce, triplet=triplet, denoise_mse=mse, logits=logits,
            labels=labels)
        return {**state, "step": state["step"] + 1, "model": new_model}, metrics

    return train_step


def augment_args(config) -> dict:
    augment = config.data.augment
    return {"padding": augment.padding, "max_degrees": augment.max_degrees, "hflip": augment.hflip,
            "size": augment.crop_size or None}


def _sampler(train: dict, batch_size: int, seed: int):
    # AnonyNoise draws plain shuffled batches (no P x K identity sampler).
    return functools.partial(pipeline.shuffled_batches, len(train["frames"]), batch_size, seed=seed)


def _fit(name: str, stage_dir: str, state, train_step, train: dict, section, *, mesh, seed: int,
         tensorboard_dir: str):
    """Runs `train_step` over shuffled batches of `train` for section.num_epochs (resumable); returns the state."""
    mesh_lib.check_batch_size(section.batch_size, mesh)
    sampler = _sampler(train, section.batch_size, seed)
    num_steps = section.num_epochs * len(sampler(epoch=0))  # the sampler drops the last partial batch
    checkpoints = Checkpoints(f"{stage_dir}/checkpoints", max_to_keep=2, save_every_steps=section.checkpoint_every_steps)
    state = checkpoints.restore_or(mesh_lib.replicate(state, mesh))
    arrays = {key: train[key] for key in ("frames", "target", "identity")}
    local_batches = pipeline.batch_iterator(arrays, sampler, start_step=int(jax.device_get(state["step"])),
                                            process_index=jax.process_index(), process_count=jax.process_count())
    batches = pipeline.prefetch(mesh_lib.shard_batch(batch, mesh) for batch in local_batches)
    step = jax.jit(train_step, donate_argnums=0, out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)))
    state = train_loop(name=name, state=state, train_step=step, batches=batches, num_steps=num_steps,
                       checkpoints=checkpoints, writer=create_writer(tensorboard_dir),
                       log_every_steps=section.log_every_steps)
    checkpoints.close()
    return state, num_steps


def _schedule_steps(train: dict, section) -> dict:
    """The optimizer schedules' step counts for `section` (as many as _fit takes)."""
    steps_per_epoch = len(train["frames"]) // section.batch_size
    return {"num_steps": section.num_epochs * steps_per_epoch, "steps_per_epoch": steps_per_epoch}


def train_classifier(config, stage_dir: str, train: dict, net, *, label_key: str, use_triplet: bool, section,
                     init_variables=None, anonymizer=None, anonymizer_params=None, denoiser=None, mesh, seed: int,
                     tensorboard_dir: str):
    """Trains `net` (from `init_variables` or fresh) and, with `denoiser`, the denoiser with it; returns
    ((net variables, denoiser variables or None), info)."""
    tx, _ = optim.make_optimizer(section.optimizer, **_schedule_steps(train, section))
    rng = jax.random.key(seed)
    frames_shape = train["frames"].shape[1:]
    net_variables = init_variables or _init(net, rng, frames_shape, train=False)
    variables = {"params": {"net": net_variables["params"]}, "batch_stats": {"net": net_variables["batch_stats"]}}
    if denoiser is not None:
        denoiser_variables = _init(denoiser, jax.random.fold_in(rng, 1), frames_shape, train=False)
        variables["params"]["denoiser"] = denoiser_variables["params"]
        variables["batch_stats"]["denoiser"] = denoiser_variables["batch_stats"]
    state = {"step": jnp.zeros((), jnp.int32), "rng": jax.random.fold_in(rng, 2), "model": _trainable(variables, tx)}
    if anonymizer is not None:
        state["anonymizer"] = anonymizer_params
    step = make_classifier_step(config, net, tx, label_key=label_key, use_triplet=use_triplet,
                                anonymizer=anonymizer, denoiser=denoiser)
    started = time.perf_counter()
    state, num_steps = _fit(os.path.basename(stage_dir), stage_dir, state, step, train, section, mesh=mesh,
                            seed=seed, tensorboard_dir=tensorboard_dir)
    model = state["model"]
    net_out = {"params": model["params"]["net"], "batch_stats": model["batch_stats"]["net"]}
    denoiser_out = None
    if denoiser is not None:
        denoiser_out = {"params": model["params"]["denoiser"], "batch_stats": model["batch_stats"]["denoiser"]}
    return (net_out, denoiser_out), {"num_steps": num_steps, "seconds": round(time.perf_counter() - started, 1)}


# ------------------------------------------------------------------------------------------ adversarial pipeline
def make_pipeline_step(config, anonymizer, target_net, reid_net, txs: dict):
    """One batch of the adversarial pipeline: all three gradients from the same forward pass, at the pre-update
    parameters, then each optimizer updates its own network (the original's manual optimisation order).

    Each network sees the anonymised batch twice in train mode (through the anonymizer, then detached), so its
    BatchNorm running statistics are updated twice per step, as in the original.
    """
    margin = config.loss.triplet_margin

    def apply_net(net, params, batch_stats, x, key):
        outputs, updates = net.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                     rngs={"dropout": key}, mutable=["batch_stats"])
        return outputs, updates["batch_stats"]

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        augment_key, noise_key, *dropout_keys = jax.random.split(rng, 6)
        clean = frame_augment.augment(augment_key, batch["frames"], **augment_args(config))
        target, reid = state["target"], state["reid"]

        def anonymizer_loss(params):
            anonymised = anonymizer.apply({"params": params}, clean, rngs={"noise": noise_key})
            reid_out, reid_stats = apply_net(reid_net, reid["params"], reid["batch_stats"], anonymised,
                                             dropout_keys[0])
            target_out, target_stats = apply_net(target_net, target["params"], target["batch_stats"],
                                                 anonymised, dropout_keys[1])
            ce = losses.cross_entropy(target_out["logits"], batch["target"])
            triplet = losses.batch_hard_triplet(reid_out["embed"], batch["identity"], margin=margin,
                                                self_positive=True)
            return ce - triplet, (anonymised, reid_stats, target_stats, triplet)

        anonymizer_grads, (anonymised, reid_stats, target_stats, triplet_a) = jax.grad(
            anonymizer_loss, has_aux=True)(state["anonymizer"]["params"])
        detached = jax.lax.stop_gradient(anonymised)

        def target_loss(params):
            outputs, stats = apply_net(target_net, params, target_stats, detached, dropout_keys[2])
            ce, accuracy = _cross_entropy_and_accuracy(outputs["logits"], batch["target"])
            return ce, (stats, ce, accuracy)

        def reid_loss(params):
            outputs, stats = apply_net(reid_net, params, reid_stats, detached, dropout_keys[3])
            ce = losses.cross_entropy(outputs["logits"], batch["identity"])
            triplet = losses.batch_hard_triplet(outputs["embed"], batch["identity"], margin=margin, self_positive=True)
            return ce + triplet, stats

        target_grads, (target_bn, target_ce, target_accuracy) = jax.grad(target_loss, has_aux=True)(target["params"])
        (reid_value, reid_bn), reid_grads = jax.value_and_grad(reid_loss, has_aux=True)(reid["params"])

        def update(name, part, grads, batch_stats=None):
            updates, opt_state = txs[name].update(grads, part["opt_state"], part["params"])
            new = {"params": optax.apply_updates(part["params"], updates), "opt_state": opt_state}
            if batch_stats is not None:
                new["batch_stats"] = batch_stats
            return new

        new_state = {
            **state, "step": state["step"] + 1,
            "anonymizer": update("anonymizer", state["anonymizer"], anonymizer_grads),
            "target": update("target", target, target_grads, target_bn),
            "reid": update("reid", reid, reid_grads, reid_bn),
        }
        metrics = PipelineMetrics.single_from_model_output(
            anonymizer_loss=target_ce - triplet_a, target_cross_entropy=target_ce, reid_loss=reid_value,
            reid_triplet_on_anonymizer=triplet_a, target_accuracy=target_accuracy)
        return new_state, metrics

    return train_step


def train_pipeline(config, stage_dir: str, train: dict, networks, pretrained: dict, *, mesh, seed: int,
                   tensorboard_dir: str):
    """Adversarial training from the pretrained target and ReId networks and a fresh anonymizer."""
    anonymizer, target_net, reid_net, _ = networks
    section = config.pipeline
    txs = {name: optim.make_optimizer(section[f"{name}_optimizer"], **_schedule_steps(train, section))[0]
           for name in ("anonymizer", "target", "reid")}
    rng = jax.random.key(seed)
    anonymizer_variables = _init(anonymizer, rng, train["frames"].shape[1:])
    state = {
        "step": jnp.zeros((), jnp.int32), "rng": jax.random.fold_in(rng, 1),
        "anonymizer": {"params": anonymizer_variables["params"],
                       "opt_state": txs["anonymizer"].init(anonymizer_variables["params"])},
        "target": _trainable(pretrained["target"], txs["target"]),
        "reid": _trainable(pretrained["reid"], txs["reid"]),
    }
    started = time.perf_counter()
    step = make_pipeline_step(config, anonymizer, target_net, reid_net, txs)
    state, num_steps = _fit("pipeline", stage_dir, state, step, train, section, mesh=mesh, seed=seed,
                            tensorboard_dir=tensorboard_dir)
    trained = {"anonymizer": state["anonymizer"]["params"],
               **{name: {"params": state[name]["params"], "batch_stats": state[name]["batch_stats"]}
                  for name in ("target", "reid")}}
    return trained, {"num_steps": num_steps, "seconds": round(time.perf_counter() - started, 1)}


# -------------------------------------------------------------------------------------------------- evaluation
def anonymise_split(anonymizer, params, frames: np.ndarray, key, *, batch_size: int, mesh) -> np.ndarray:
    """A(frames) with independent noise per sample (drawn from `key`), on the host."""
    keys = jax.random.key_data(jax.random.split(key, len(frames)))

    def apply(params, batch):
        def one(x, sample_key):
            noise_key = jax.random.wrap_key_data(sample_key)
            return anonymizer.apply({"params": params}, x[None], rngs={"noise": noise_key})[0]
        return jax.vmap(one)(batch["frames"], batch["keys"])

    return mesh_lib.map_batches(apply, params, {"frames": frames, "keys": np.asarray(keys)}, batch_size=batch_size,
                                mesh=mesh)


def _predict(net, variables, frames: np.ndarray, *, batch_size: int, mesh, denoiser=None,
             denoiser_variables=None) -> dict:
    """Eval-mode network outputs ("logits", "embed") of `frames`, through the denoiser first when given."""
    def apply(params, batch):
        x = batch
        if denoiser is not None:
            x = denoiser.apply(params["denoiser"], x, train=False)
        outputs = net.apply(params["net"], x, train=False)
        return {"logits": outputs["logits"], "embed": outputs["embed"]}

    params = {"net": variables, "denoiser": denoiser_variables}
    return mesh_lib.map_batches(apply, params, frames, batch_size=batch_size, mesh=mesh)


def retrieval(query_embed, query_flip_embed, gallery_embed, gallery_flip_embed, query: dict, gallery: dict,
              *, max_rank: int) -> dict:
    """CMC/mAP (standard and the original's trapezoid AP) of input+flip features, L2-normalised, cosine-ranked.

    A gallery item matches when it shows the query's identity under another condition (gesture, emotion, camera,
    action); same identity and same condition is junk, as in AnonyNoise's evaluation.
    """
    q = reid_metrics.l2_normalize(query_embed + query_flip_embed)
    g = reid_metrics.l2_normalize(gallery_embed + gallery_flip_embed)
    distances = reid_metrics.cosine_distance(q, g)
    rows = {}
    for ap in ("standard", "trapezoid"):
        scores = reid_metrics.cmc_map(distances, query["identity"], gallery["identity"], query["condition"],
                                      gallery["condition"], max_rank=max_rank, ap=ap)
        rows[ap] = {"rank1": float(scores["rank1"]), "rank5": float(scores["rank5"]),
                    "mAP": float(scores["mAP"]), "cmc": [float(v) for v in scores["cmc"]]}
    return rows


def evaluate(config, splits: dict, networks, anonymizer_params, rows: dict, *, mesh) -> tuple[dict, dict]:
    """Target accuracy and ReId retrieval of each report row, and a few example frames.

    `rows` maps a row name to {"inputs": "raw" or "anonymised", "target": target network variables or None,
    "reid": ReId network variables, "denoiser": denoiser variables or None (the inversion attack)}.
    """
    anonymizer, target_net, reid_net, denoiser = networks
    batch_size, max_rank = config.eval.batch_size, config.eval.max_rank
    key = jax.random.key(config.seed + 7)
    names = [name for name in EVAL_SPLITS if name in splits]
    raw = {name: splits[name]["frames"] for name in names}
    flip = {name: frames[:, :, ::-1, :] for name, frames in raw.items()}
    inputs = {"raw": (raw, flip)}
    if any(row["inputs"] == "anonymised" for row in rows.values()):
        # Every anonymisation draws fresh noise, the flipped copies included (the original anonymises both passes).
        inputs["anonymised"] = tuple(
            {name: anonymise_split(anonymizer, anonymizer_params, frames[name], jax.random.fold_in(key, 2 * index + k),
                                   batch_size=batch_size, mesh=mesh) for index, name in enumerate(names)}
            for k, frames in enumerate((raw, flip)))

    def reid_scores(net_variables, denoiser_variables, frames, frames_flip):
        denoise = {"denoiser": denoiser, "denoiser_variables": denoiser_variables} if denoiser_variables else {}
        embeds = {name: [_predict(reid_net, net_variables, x[name], batch_size=batch_size, mesh=mesh, **denoise)[
            "embed"] for x in (frames, frames_flip)] for name in ("query", "gallery")}
        return retrieval(*embeds["query"], *embeds["gallery"], splits["query"], splits["gallery"], max_rank=max_rank)

    def target_accuracy(net_variables, frames):
        if net_variables is None or "val" not in frames or np.all(splits["val"]["target"] < 0):
            return None
        logits = _predict(target_net, net_variables, frames["val"], batch_size=batch_size, mesh=mesh)["logits"]
        return float(np.mean(np.argmax(logits, -1) == splits["val"]["target"]))

    results = {}
    for name, row in rows.items():
        frames, frames_flip = inputs[row["inputs"]]
        results[name] = {"target_accuracy": target_accuracy(row["target"], frames),
                         **reid_scores(row["reid"], row["denoiser"], frames, frames_flip)}
    examples = {"raw": raw["query"][:4]}
    if "anonymised" in inputs:
        examples["anonymised"] = inputs["anonymised"][0]["query"][:4]
        inverted = [row["denoiser"] for row in rows.values() if row["denoiser"]]
        if inverted:
            examples["denoised"] = denoiser.apply(inverted[0], examples["anonymised"], train=False)
    # A dict comprehension keeps the row order (raw, anonymised, denoised); jax.tree_util.tree_map sorts the keys.
    return results, {name: np.asarray(frames) for name, frames in examples.items()}


def save_examples(examples: dict, workdir: str) -> None:
    """examples.png: raw vs anonymised vs denoised frames (event count summed over bins and polarities) of a few
    query samples; examples.npz: the same frames as arrays."""
    with atomic_target(os.path.join(workdir, EXAMPLES_FILE)) as path:
        with open(path, "wb") as f:
            np.savez(f, **examples)
    names = list(examples)
    count = len(examples[names[0]])
    figure, axes = plt.subplots(len(names), count, figsize=(2 * count, 2.2 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for column in range(count):
            axis = axes[row][column]
            axis.imshow(np.abs(examples[name][column]).sum(-1), cmap="magma")
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(name)
    report_lib.save_figure(figure, os.path.join(workdir, "examples.png"))


# ------------------------------------------------------------------------------------------------------- driver
def imagenet_init(config, net, frames_shape):
    """ClassNet variables with the trunk from config.model.imagenet_weights (a local torchvision ResNet .pth,
    as AnonyNoise's ImageNet-initialised ResNet-50), or None to train from scratch."""
    if not config.model.imagenet_weights:
        return None
    state_dict = torchvision_resnet.read_state_dict(config.model.imagenet_weights)
    return models.imagenet_classnet_params(_init(net, jax.random.key(config.seed), frames_shape, train=False),
                                           state_dict)


def _load_anonymizer(config, dtype):
    """The anonymizer of config.anonymizer.pretrained_dir (another run's export), checked against the frames."""
    anonymizer, params = models.load_anonymizer(config.anonymizer.pretrained_dir, dtype=dtype)
    channels = 2 * config.data.num_time_bins
    if anonymizer.num_channels != channels:
        raise ValueError(f"config.anonymizer.pretrained_dir={config.anonymizer.pretrained_dir!r} holds an anonymizer "
                         f"for {anonymizer.num_channels} channels, but config.data.num_time_bins="
                         f"{config.data.num_time_bins} gives {channels}: use the num_time_bins it was trained with.")
    return anonymizer, params


def _attacker_init(config, trained: dict):
    """The post-trained attackers' starting ReId network (config.post.init)."""
    choices = {"pipeline": trained.get("pipeline", {}).get("reid"), "pretrained": trained["pretrain_reid"],
               "fresh": None}
    if config.post.init not in choices:
        raise ValueError(f"config.post.init={config.post.init!r}: use one of {tuple(choices)}.")
    if config.post.init == "pipeline" and choices["pipeline"] is None:
        raise ValueError("config.post.init='pipeline' needs the pipeline's ReId network, but the anonymizer comes "
                         "from config.anonymizer.pretrained_dir: use 'pretrained' or 'fresh'.")
    return choices[config.post.init]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every stage in `workdir` (skipping finished ones) and writes the report.

    With config.anonymizer.pretrained_dir set, the anonymizer of another run is loaded and frozen (the target
    network and the pipeline are skipped): the attackers are trained against it on this dataset, as AnonyNoise does
    for EventReIDv2, which has no target task.
    """
    mesh = mesh_lib.make_mesh(config.mesh_shape)
    dtype = precision.compute_dtype(config.compute_dtype)
    tensorboard_dir = f"{workdir}/tensorboard"
    data_info = run_stage(workdir, "data", lambda stage_dir: anonynoise_data.prepare(config.data, stage_dir),
                          primary_only=True)
    splits = anonynoise_data.load_prepared(data_info)
    train = splits["train"]
    has_target = not np.any(train["target"] < 0)
    loaded = bool(config.anonymizer.pretrained_dir)
    if not (has_target or loaded):
        raise ValueError(f"config.data.name={config.data.name!r} has no target task, which the AnonyNoise pipeline "
                         "trains against: use a dataset with one (synthetic, dvsgesture, see), or set "
                         "config.anonymizer.pretrained_dir to an anonymizer trained on one.")
    # Classifier labels 0..K-1: a dataset's global identity map interleaves training and unseen identities (SEE).
    train = dict(train, identity=np.unique(train["identity"], return_inverse=True)[1].astype(np.int32))
    num_targets = int(train["target"].max()) + 1 if has_target else 1
    num_identities = int(train["identity"].max()) + 1
    logging.info("Data: %d train samples (%d identities, %s target classes), frames %s; %s",
                 len(train["frames"]), num_identities, num_targets if has_target else "no", train["frames"].shape[1:],
                 ", ".join(f"{len(splits[name]['frames'])} {name}" for name in EVAL_SPLITS if name in splits))
    networks = build_networks(config, num_targets, num_identities, dtype)
    if loaded:
        anonymizer, anonymizer_params = _load_anonymizer(config, dtype)
        networks = (anonymizer, *networks[1:])
    anonymizer, target_net, reid_net, denoiser = networks
    common = {"mesh": mesh, "seed": config.seed, "tensorboard_dir": tensorboard_dir}
    trained, infos = {}, {}

    def pretrain(name, net, label_key, use_triplet):
        (trained[name], _), infos[name] = run_training_stage(workdir, name, lambda stage_dir: train_classifier(
            config, stage_dir, train, net, label_key=label_key, use_triplet=use_triplet, section=config.pretrain,
            init_variables=imagenet_init(config, net, train["frames"].shape[1:]), **common))

    if not loaded:
        pretrain("pretrain_target", target_net, "target", False)
    pretrain("pretrain_reid", reid_net, "identity", True)
    if not loaded:
        def pipeline_stage(stage_dir):
            values, info = train_pipeline(config, stage_dir, train, networks, {
                "target": trained["pretrain_target"], "reid": trained["pretrain_reid"]}, **common)
            params = jax.device_get(values["anonymizer"])
            multihost.primary_only("anonymizer export", lambda: models.save_anonymizer(
                os.path.join(workdir, ANONYMIZER_DIR), anonymizer, params))
            return values, info

        trained["pipeline"], infos["pipeline"] = run_training_stage(workdir, "pipeline", pipeline_stage)
        anonymizer_params = trained["pipeline"]["anonymizer"]
    attacker_init = _attacker_init(config, trained)
    frozen = {"anonymizer": anonymizer, "anonymizer_params": anonymizer_params}
    (trained["post_reid"], _), infos["post_reid"] = run_training_stage(workdir, "post_reid", lambda stage_dir: (
        train_classifier(config, stage_dir, train, reid_net, label_key="identity", use_triplet=True,
                         section=config.post, init_variables=attacker_init, **frozen, **common)))
    (net_variables, denoiser_variables), infos["post_denoise"] = run_training_stage(
        workdir, "post_denoise", lambda stage_dir: train_classifier(
            config, stage_dir, train, reid_net, label_key="identity", use_triplet=True, section=config.post,
            init_variables=attacker_init, denoiser=denoiser, **frozen, **common))

    rows = {"raw data (pretrained networks)": dict(inputs="raw", target=trained.get("pretrain_target"),
                                                   reid=trained["pretrain_reid"], denoiser=None)}
    if loaded:
        rows["anonymised, raw-trained attacker"] = dict(inputs="anonymised", target=None,
                                                        reid=trained["pretrain_reid"], denoiser=None)
    else:
        rows["anonymised, pipeline attacker"] = dict(inputs="anonymised", target=trained["pipeline"]["target"],
                                                     reid=trained["pipeline"]["reid"], denoiser=None)
    rows["anonymised, post-trained attacker"] = dict(inputs="anonymised", target=None, reid=trained["post_reid"],
                                                     denoiser=None)
    rows["anonymised, denoiser + attacker (inversion)"] = dict(inputs="anonymised", target=None, reid=net_variables,
                                                               denoiser=denoiser_variables)

    def evaluate_stage(stage_dir):
        results, examples = evaluate(config, splits, networks, anonymizer_params, rows, mesh=mesh)
        multihost.primary_only("example frames", lambda: save_examples(examples, workdir))
        return {"rows": results}

    evaluated = run_stage(workdir, "evaluate", evaluate_stage)["rows"]
    metrics = {}
    for name in rows:  # the stored results come back with sorted keys: keep the report's row order
        values = evaluated[name]
        row = {key: values["standard"][key] for key in ("rank1", "rank5", "mAP")}
        row["mAP (trapezoid, original)"] = values["trapezoid"]["mAP"]
        if values["target_accuracy"] is not None:
            row["target_accuracy"] = values["target_accuracy"]
        metrics[name] = row
        logging.info("%-45s %s", name, "  ".join(f"{k} {100 * v:.1f}%" for k, v in row.items()))
    raw_rank1 = metrics["raw data (pretrained networks)"]["rank1"]
    post_rank1 = metrics["anonymised, post-trained attacker"]["rank1"]
    details = {
        "dataset": config.data.name, "frames": list(train["frames"].shape[1:]),
        "train_samples": int(len(train["frames"])), "identities": num_identities,
        "target_classes": num_targets if has_target else None, "stages": infos, "devices": jax.device_count(),
        "anonymizer": config.anonymizer.pretrained_dir or os.path.join(workdir, ANONYMIZER_DIR),
        "post_attacker_init": config.post.init,
        "post_attacker_rank1_reduction": (raw_rank1 - post_rank1) / raw_rank1 if raw_rank1 else None,
    }
    curves = {name: evaluated[name]["standard"]["cmc"] for name in rows}
    report = report_lib.write_report(workdir, title="AnonyNoise: learned noise against re-identification",
                                     metrics=metrics, details=details, cmc_curves=curves,
                                     figures=("examples.png",))
    if multihost.is_primary():
        steps = sum(info["num_steps"] for info in infos.values())
        report_lib.write_tensorboard(create_writer(tensorboard_dir), report, workdir, step=steps)
    return report
