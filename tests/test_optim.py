"""Optimizer construction: the paper's piecewise schedule and the 0.1x backbone group."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from anon_jax.training import optim


def sgd_config(**overrides):
    cfg = ml_collections.ConfigDict(dict(
        name="sgd", learning_rate=0.05, momentum=0.0, nesterov=False, weight_decay=0.0,
        schedule="piecewise_epochs", warmup_steps=0, boundaries_epochs=(40, 50), decay_factors=(0.2, 0.1),
        head_lr_multiplier=1.0, backbone_lr_multiplier=0.1,
    ))
    cfg.update(overrides)
    return cfg


def test_paper_schedule_values():
    schedule = optim.learning_rate_schedule(sgd_config(), num_steps=600, steps_per_epoch=10)
    np.testing.assert_allclose([schedule(0), schedule(399), schedule(400), schedule(499), schedule(500)],
                               [0.05, 0.05, 0.01, 0.01, 0.001], rtol=1e-6)


def test_cosine_epochs_matches_torch_cosine_annealing_stepped_per_epoch():
    # CosineAnnealingLR(T_max=4) stepped once per epoch: lr_e = 1e-4 (1 + cos(pi e / 4)) / 2, constant in an epoch.
    schedule = optim.learning_rate_schedule(sgd_config(schedule="cosine_epochs", learning_rate=1e-4),
                                            num_steps=12, steps_per_epoch=3)
    expected = [1e-4 * (1 + np.cos(np.pi * (step // 3) / 4)) / 2 for step in range(12)]
    np.testing.assert_allclose([schedule(step) for step in range(12)], expected, rtol=1e-6)


def test_head_and_backbone_groups_use_their_multipliers():
    tx, _ = optim.make_optimizer(sgd_config(), num_steps=10, steps_per_epoch=1)
    params = {"head_classifier": {"kernel": jnp.ones(2)}, "conv1": {"kernel": jnp.ones(2)}}
    grads = {"head_classifier": {"kernel": jnp.ones(2)}, "conv1": {"kernel": jnp.ones(2)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["head_classifier"]["kernel"], -0.05, rtol=1e-6)
    np.testing.assert_allclose(updates["conv1"]["kernel"], -0.005, rtol=1e-6)


def test_extra_groups_get_their_own_multiplier():
    tx, _ = optim.make_optimizer(sgd_config(), num_steps=10, steps_per_epoch=1, extra_groups={"anonymizer": 0.4})
    params = {"head": {"w": jnp.ones(2)}, "backbone": {"w": jnp.ones(2)}, "anonymizer": {"w": jnp.ones(2)}}
    updates, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["w"], -0.05, rtol=1e-6)
    np.testing.assert_allclose(updates["backbone"]["w"], -0.005, rtol=1e-6)
    np.testing.assert_allclose(updates["anonymizer"]["w"], -0.02, rtol=1e-6)


def test_sgd_weight_decay_is_added_to_the_gradient_like_pytorch():
    tx, _ = optim.make_optimizer(sgd_config(schedule="constant", weight_decay=0.5, backbone_lr_multiplier=1.0),
                                 num_steps=10, steps_per_epoch=1)
    params = {"w": jnp.array([2.0])}
    updates, _ = tx.update({"w": jnp.array([1.0])}, tx.init(params), params)
    np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], 2.0 - 0.05 * (1.0 + 0.5 * 2.0), rtol=1e-6)


def test_unknown_schedule_names_the_field():
    with pytest.raises(ValueError, match="config.optimizer.schedule"):
        optim.learning_rate_schedule(sgd_config(schedule="linear"), num_steps=1, steps_per_epoch=1)
