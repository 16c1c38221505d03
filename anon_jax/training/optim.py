"""Optimizers and learning-rate schedules built from a config.

`config.optimizer` fields: name ("sgd" | "adam" | "adamw"), learning_rate, momentum, nesterov,
weight_decay, schedule ("constant" | "cosine" | "piecewise_epochs"), warmup_steps, boundaries_epochs and
decay_factors (piecewise), and head_lr_multiplier / backbone_lr_multiplier for the two parameter
groups (the paper trains the backbone at 0.1x the classifier's learning rate).
"""

from __future__ import annotations

from typing import Mapping

import ml_collections
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
    opt.weight_decay = 5e-4  # L2 weight decay added to the gradient (AdamW: decoupled)
    opt.schedule = "cosine"  # "constant", "cosine" (per step), "cosine_epochs" or "piecewise_epochs"
    opt.warmup_steps = 100  # linear warm-up steps
    opt.boundaries_epochs = ()  # piecewise_epochs: epochs where the learning rate is multiplied
    opt.decay_factors = ()  # piecewise_epochs: the multipliers
    opt.head_lr_multiplier = 1.0  # learning-rate multiplier of parameters named head*
    opt.backbone_lr_multiplier = 1.0  # learning-rate multiplier of all other parameters
    unknown = set(overrides) - set(opt)
    if unknown:
        raise ValueError(f"optimizer_config: unknown fields {sorted(unknown)}; known: {sorted(opt)}.")
    opt.update(overrides)
    return opt


def learning_rate_schedule(cfg: ml_collections.ConfigDict, *, num_steps: int, steps_per_epoch: int):
    """The base schedule (before group multipliers)."""
    if cfg.schedule == "constant":
        schedule = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(cfg.learning_rate, max(num_steps - cfg.warmup_steps, 1))
    elif cfg.schedule == "cosine_epochs":
        # PyTorch's CosineAnnealingLR(T_max=epochs) stepped once per epoch (AnonyNoise): constant within an epoch.
        num_epochs = max(num_steps // steps_per_epoch, 1)
        epoch_cosine = optax.cosine_decay_schedule(cfg.learning_rate, num_epochs)
        schedule = lambda step: epoch_cosine(step // steps_per_epoch)  # noqa: E731
    elif cfg.schedule == "piecewise_epochs":
        # The paper's softmax schedule: lr 0.05 until epoch 40, x0.2 at 40, x0.1 at 50.
        if len(cfg.boundaries_epochs) != len(cfg.decay_factors):
            raise ValueError("config.optimizer.boundaries_epochs and decay_factors must have the same length.")
        schedule = optax.piecewise_constant_schedule(
            cfg.learning_rate,
            {int(e * steps_per_epoch): f for e, f in zip(cfg.boundaries_epochs, cfg.decay_factors)},
        )
    else:
        raise ValueError(
            f"config.optimizer.schedule={cfg.schedule!r}: use 'constant', 'cosine', 'cosine_epochs' or "
            "'piecewise_epochs'."
        )
    if cfg.warmup_steps:
        warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
        schedule = optax.join_schedules([warmup, schedule], [cfg.warmup_steps])
    return schedule


def _base_optimizer(cfg: ml_collections.ConfigDict, learning_rate) -> optax.GradientTransformation:
    if cfg.name == "sgd":
        # PyTorch SGD adds weight decay to the gradient before momentum, as here.
        return optax.chain(
            optax.add_decayed_weights(cfg.weight_decay),
            optax.sgd(learning_rate, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
        )
    if cfg.name == "adam":
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(learning_rate))
    if cfg.name == "adamw":
        return optax.adamw(learning_rate, weight_decay=cfg.weight_decay)
    raise ValueError(f"config.optimizer.name={cfg.name!r}: use 'sgd', 'adam' or 'adamw'.")


def make_optimizer(cfg: ml_collections.ConfigDict, *, num_steps: int, steps_per_epoch: int,
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
