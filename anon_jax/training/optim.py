"""Optimizers and learning-rate schedules built from a config.

`config.optimizer` fields: name ("sgd" | "adam" | "adamw"), learning_rate, momentum, nesterov,
beta1 (Adam), weight_decay, schedule ("constant" | "cosine" | "cosine_epochs" | "piecewise_epochs" | "warmup_multistep_epochs"),
warmup_steps, boundaries_epochs and decay_factors (piecewise), warmup_epochs and warmup_factor, and
head_lr_multiplier / backbone_lr_multiplier for the two parameter groups (the paper trains the backbone at 0.1x
the classifier's learning rate). Per-epoch schedules take a fixed `steps_per_epoch` or, for samplers whose epochs
vary in length, the epochs' first steps (pipeline.epoch_start_steps).
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

HEAD_PREFIXES = ("head",)


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.optimizer` section every experiment uses, with its defaults overridden."""
    opt = ml_collections.ConfigDict()
    opt.name = "sgd"  # "sgd", "adam" or "adamw"
    opt.learning_rate = 0.05  # base (head) learning rate
    opt.momentum = 0.9  # SGD momentum (unused by Adam)
    opt.nesterov = True  # SGD Nesterov momentum (unused by Adam)
    opt.beta1 = 0.9  # Adam's first-moment decay (pix2pix-style GAN networks: 0.5)
    opt.weight_decay = 5e-4  # L2 weight decay added to the gradient (AdamW: decoupled)
    # "constant", "cosine" (per step), "cosine_epochs", "piecewise_epochs" or "warmup_multistep_epochs"
    opt.schedule = "cosine"  # learning-rate schedule
    opt.warmup_steps = 100  # linear warm-up steps
    opt.boundaries_epochs = ()  # piecewise / warmup_multistep: epochs where the learning rate is multiplied
    opt.decay_factors = ()  # piecewise / warmup_multistep: the multipliers
    opt.warmup_epochs = 10  # warmup_multistep_epochs: epochs of linear warm-up (WarmupMultiStepLR)
    opt.warmup_factor = 0.01  # warmup_multistep_epochs: the warm-up's starting factor
    opt.head_lr_multiplier = 1.0  # learning-rate multiplier of parameters named head*
    opt.backbone_lr_multiplier = 1.0  # learning-rate multiplier of all other parameters
    unknown = set(overrides) - set(opt)
    if unknown:
        raise ValueError(f"optimizer_config: unknown fields {sorted(unknown)}; known: {sorted(opt)}.")
    opt.update(overrides)
    return opt


def _epoch_schedule(steps_per_epoch):
    """(epoch of a step, first step of an epoch) for a fixed epoch length or an array of epoch start steps."""
    if np.ndim(steps_per_epoch) == 0:
        length = int(steps_per_epoch)
        return (lambda step: step // length), (lambda epoch: int(epoch * length))
    starts = np.asarray(steps_per_epoch, np.int64)
    if starts.ndim != 1 or len(starts) < 2 or starts[0] != 0 or np.any(np.diff(starts) <= 0):
        raise ValueError(f"epoch start steps must rise from 0 (pipeline.epoch_start_steps), got {starts[:8]}...")

    def epoch_of(step):
        return jnp.searchsorted(jnp.asarray(starts[1:]), step, side="right")

    return epoch_of, (lambda epoch: int(starts[min(int(epoch), len(starts) - 1)]))


def learning_rate_schedule(cfg: ml_collections.ConfigDict, *, num_steps: int, steps_per_epoch):
    """The base schedule (before group multipliers). `steps_per_epoch`: an int, or the epochs' start steps."""
    epoch_of, epoch_start = _epoch_schedule(steps_per_epoch)
    if cfg.schedule in ("piecewise_epochs", "warmup_multistep_epochs") and \
            len(cfg.boundaries_epochs) != len(cfg.decay_factors):
        raise ValueError("config.optimizer.boundaries_epochs and decay_factors must have the same length.")
    if cfg.schedule == "constant":
        schedule = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(cfg.learning_rate, max(num_steps - cfg.warmup_steps, 1))
    elif cfg.schedule == "cosine_epochs":
        # PyTorch's CosineAnnealingLR(T_max=epochs) stepped once per epoch (AnonyNoise): constant within an epoch.
        num_epochs = max(int(epoch_of(num_steps - 1)) + 1, 1)
        epoch_cosine = optax.cosine_decay_schedule(cfg.learning_rate, num_epochs)
        schedule = lambda step: epoch_cosine(epoch_of(step))  # noqa: E731
    elif cfg.schedule == "piecewise_epochs":
        # The paper's softmax schedule: lr 0.05 until epoch 40, x0.2 at 40, x0.1 at 50.
        schedule = optax.piecewise_constant_schedule(
            cfg.learning_rate, {epoch_start(e): f for e, f in zip(cfg.boundaries_epochs, cfg.decay_factors)})
    elif cfg.schedule == "warmup_multistep_epochs":
        schedule = _warmup_multistep(cfg, epoch_of)
    else:
        raise ValueError(
            f"config.optimizer.schedule={cfg.schedule!r}: use 'constant', 'cosine', 'cosine_epochs', "
            "'piecewise_epochs' or 'warmup_multistep_epochs'."
        )
    if cfg.warmup_steps:
        warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
        schedule = optax.join_schedules([warmup, schedule], [cfg.warmup_steps])
    return schedule


def _warmup_multistep(cfg: ml_collections.ConfigDict, epoch_of):
    """privacy-reid's / AGW's WarmupMultiStepLR stepped at the start of every epoch: 0-based epoch e trains with
    k = e + 1, factor warmup_factor (1 - k / W) + k / W while k < W (W = warmup_epochs), times each decay factor
    whose boundary epoch is <= k."""
    boundaries = jnp.asarray(cfg.boundaries_epochs, jnp.float32)
    factors = jnp.asarray(cfg.decay_factors, jnp.float32)
    warmup_epochs = float(cfg.warmup_epochs)

    def schedule(step):
        k = (epoch_of(step) + 1).astype(jnp.float32)
        alpha = k / warmup_epochs if warmup_epochs else 1.0
        warm = jnp.where(k < warmup_epochs, cfg.warmup_factor * (1 - alpha) + alpha, 1.0)
        decay = jnp.prod(jnp.where(k >= boundaries, factors, 1.0))
        return cfg.learning_rate * warm * decay

    return schedule


def _base_optimizer(cfg: ml_collections.ConfigDict, learning_rate) -> optax.GradientTransformation:
    if cfg.name == "sgd":
        # PyTorch SGD adds weight decay to the gradient before momentum, as here.
        return optax.chain(
            optax.add_decayed_weights(cfg.weight_decay),
            optax.sgd(learning_rate, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
        )
    if cfg.name == "adam":
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(learning_rate, b1=cfg.beta1))
    if cfg.name == "adamw":
        return optax.adamw(learning_rate, b1=cfg.beta1, weight_decay=cfg.weight_decay)
    raise ValueError(f"config.optimizer.name={cfg.name!r}: use 'sgd', 'adam' or 'adamw'.")


def make_optimizer(cfg: ml_collections.ConfigDict, *, num_steps: int, steps_per_epoch,
                   extra_groups: Mapping[str, float] | None = None):
    """An optax transform with separate learning-rate multipliers for parameter groups.

    Parameters whose top-level name starts with "head" form the head group, top-level names listed in
    `extra_groups` (name -> multiplier, e.g. {"anonymizer": 1.0}) their own groups, all others the backbone.
    """
    schedule = learning_rate_schedule(cfg, num_steps=num_steps, steps_per_epoch=steps_per_epoch)
    extra_groups = dict(extra_groups or {})
    multipliers = {"head": cfg.head_lr_multiplier, "backbone": cfg.backbone_lr_multiplier, **extra_groups}

    def scaled(multiplier):
        return _base_optimizer(cfg, lambda step: multiplier * schedule(step))

    def group_of(key):
        if key[0] in extra_groups:
            return key[0]
        return "head" if key[0].startswith(HEAD_PREFIXES) else "backbone"

    def group_labels(params):
        flat = traverse_util.flatten_dict(params)
        return traverse_util.unflatten_dict({k: group_of(k) for k in flat})

    return optax.multi_transform({name: scaled(m) for name, m in multipliers.items()}, group_labels), schedule
