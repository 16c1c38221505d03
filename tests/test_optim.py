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


def test_warmup_multistep_matches_the_original_scheduler_stepped_per_epoch():
    """privacy-reid: Adam 3.5e-4, warm-up 10 epochs from 0.01, x0.1 at 40 and 80, WarmupMultiStepLR stepped at
    the start of each epoch, so 0-based epoch e trains with last_epoch = e + 1. Epochs of 3 to 6 steps."""
    cfg = sgd_config(schedule="warmup_multistep_epochs", learning_rate=3.5e-4, boundaries_epochs=(40, 80),
                     decay_factors=(0.1, 0.1), warmup_epochs=10, warmup_factor=0.01)
    lengths = [3 + epoch % 4 for epoch in range(90)]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    schedule = optim.learning_rate_schedule(cfg, num_steps=int(starts[-1]), steps_per_epoch=starts)

    def original_factor(last_epoch):  # WarmupMultiStepLR, linear warm-up, written from the reference notes
        warm = 0.01 * (1 - last_epoch / 10) + last_epoch / 10 if last_epoch < 10 else 1.0
        return warm * 0.1 ** sum(last_epoch >= milestone for milestone in (40, 80))

    for epoch, length in enumerate(lengths):
        for step in range(int(starts[epoch]), int(starts[epoch]) + length):
            np.testing.assert_allclose(float(schedule(step)), 3.5e-4 * original_factor(epoch + 1), rtol=1e-6,
                                       err_msg=f"epoch {epoch}")
    np.testing.assert_allclose(float(schedule(0)), 3.5e-4 * (0.01 * 0.9 + 0.1), rtol=1e-6)
    np.testing.assert_allclose(float(schedule(int(starts[39]))), 3.5e-5, rtol=1e-6)  # last_epoch 40


def test_epoch_schedules_accept_epoch_start_steps():
    starts = np.array([0, 2, 7, 9])
    schedule = optim.learning_rate_schedule(sgd_config(boundaries_epochs=(1, 2)), num_steps=9, steps_per_epoch=starts)
    np.testing.assert_allclose([schedule(s) for s in (0, 1, 2, 6, 7, 8)], [0.05, 0.05, 0.01, 0.01, 0.001, 0.001],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="epoch start steps must rise from 0"):
        optim.learning_rate_schedule(sgd_config(), num_steps=9, steps_per_epoch=np.array([1, 2, 3]))


def test_adam_beta1_and_coupled_weight_decay_follow_the_config():
    # privacy-reid's GAN optimizers: torch Adam(lr, betas=(0.5, 0.999), weight_decay) = L2 added to the gradient.
    cfg = optim.optimizer_config(name="adam", learning_rate=0.1, weight_decay=0.01, beta1=0.5, schedule="constant",
                                 warmup_steps=0)
    tx, _ = optim.make_optimizer(cfg, num_steps=3, steps_per_epoch=1)
    reference = optax.adam(0.1, b1=0.5)
    params = {"w": jnp.array([1.0, -2.0])}
    state, reference_state, reference_params = tx.init(params), reference.init(params), params
    for grad in ([0.3, 0.1], [-0.2, 0.4], [0.5, -0.5]):
        grads = {"w": jnp.array(grad)}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        coupled = {"w": grads["w"] + 0.01 * reference_params["w"]}
        reference_updates, reference_state = reference.update(coupled, reference_state, reference_params)
        reference_params = optax.apply_updates(reference_params, reference_updates)
    np.testing.assert_allclose(params["w"], reference_params["w"], rtol=1e-6)
