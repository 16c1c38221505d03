"""Loss tests: cross-entropy parity with torch (label smoothing), batch-hard triplet on hand-computed
1-D cases, masking, gradients, and parity with an independent torch batch-hard implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from anon_jax import losses

# Four points on a line, two identities. Distances: |0-1|=1, |0-3|=3, |0-7|=7, |1-3|=2, |1-7|=6, |3-7|=4.
# Hardest positive / nearest negative per anchor: 0 -> (1, 3), 1 -> (1, 2), 3 -> (4, 2), 7 -> (4, 6).
LINE = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]], np.float32)
LINE_LABELS = np.array([0, 0, 1, 1])
D_AP = np.array([1.0, 1.0, 4.0, 4.0])
D_AN = np.array([3.0, 2.0, 2.0, 6.0])


# ---------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.35, 1.0])
def test_cross_entropy_matches_torch(label_smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=6)
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=label_smoothing
    )
    value = losses.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    np.testing.assert_allclose(value, expected.item(), rtol=1e-6)


def test_cross_entropy_hand_values():
    # Uniform logits: -log(1/K) whatever the smoothing.
    assert losses.cross_entropy(jnp.zeros((3, 4)), jnp.array([0, 1, 3]), label_smoothing=0.2) == pytest.approx(
        np.log(4.0), rel=1e-6
    )
    # logits (0, log 3): p = (1/4, 3/4). Label 1, e = 0.5: 0.75 * -log(3/4) + 0.25 * -log(1/4).
    logits = jnp.array([[0.0, np.log(3.0)]])
    expected = 0.75 * -np.log(0.75) + 0.25 * -np.log(0.25)
    assert losses.cross_entropy(logits, jnp.array([1]), label_smoothing=0.5) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "logits, labels, kwargs, message",
    [
        (np.zeros((2, 3)), np.zeros(3, int), {}, "labels"),
        (np.zeros((2, 3)), np.zeros(2), {}, "integer"),
        (np.zeros((2, 3)), np.zeros(2, int), {"label_smoothing": 1.5}, "label_smoothing"),
    ],
)
def test_cross_entropy_rejects_bad_input(logits, labels, kwargs, message):
    with pytest.raises(losses.LossInputError, match=message):
        losses.cross_entropy(logits, labels, **kwargs)


# ---------------------------------------------------------------- batch-hard triplet: hand cases
def test_triplet_margin_on_a_line():
    # max(0, d_ap - d_an + 4) = (2, 3, 6, 2) -> mean 13/4.
    assert losses.batch_hard_triplet(LINE, LINE_LABELS, margin=4.0) == pytest.approx(3.25, rel=1e-6)
    # Squared distances: (1-9+4, 1-4+4, 16-4+4, 16-36+4) clipped at 0 = (0, 1, 16, 0) -> 17/4.
    assert losses.batch_hard_triplet(LINE, LINE_LABELS, margin=4.0, squared=True) == pytest.approx(4.25, rel=1e-6)


def test_triplet_soft_margin_on_a_line():
    expected = np.mean(np.log1p(np.exp(D_AP - D_AN)))
    assert losses.batch_hard_triplet(LINE, LINE_LABELS, margin=None) == pytest.approx(expected, rel=1e-6)


def test_triplet_gradient_on_a_line():
    # All four hinges active; d|a - b|/da = sign(a - b). Summing the four anchors' terms:
    # x0: -1, x1: +5, x3: -5, x7: +1, divided by 4 anchors. Nothing moves along the second axis.
    grad = jax.grad(lambda f: losses.batch_hard_triplet(f, LINE_LABELS, margin=4.0))(jnp.asarray(LINE))
    expected = np.array([[-0.25, 0.0], [1.25, 0.0], [-1.25, 0.0], [0.25, 0.0]])
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_triplet_masks_anchors_without_positives_but_keeps_them_as_negatives():
    # Point 10 (identity 2) has no positive, so it is no anchor; it becomes anchor 7's nearest negative
    # (distance 3): hinges (2, 3, 6, 4 - 3 + 4 = 5) -> 16/4.
    features = np.concatenate([LINE, [[10.0, 0.0]]])
    labels = np.append(LINE_LABELS, 2)
    assert losses.batch_hard_triplet(features, labels, margin=4.0) == pytest.approx(4.0, rel=1e-6)


def test_triplet_single_identity_batch_is_zero_with_zero_gradient():
    features = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)
    labels = jnp.zeros(8, jnp.int32)
    value, grad = jax.value_and_grad(lambda f: losses.batch_hard_triplet(f, labels, margin=4.0))(features)
    assert value == 0.0
    assert not np.any(np.asarray(grad))


def test_triplet_gradient_is_finite_for_coincident_points():
    # Duplicates within and across identities make both the hardest positive and negative distances 0.
    features = jnp.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    labels = jnp.array([0, 0, 1, 1])
    for margin in (0.5, None):
        value, grad = jax.value_and_grad(lambda f: losses.batch_hard_triplet(f, labels, margin=margin))(features)
        assert np.isfinite(value) and np.all(np.isfinite(np.asarray(grad)))
    assert losses.batch_hard_triplet(features, labels, margin=0.5) == pytest.approx(0.5)


def test_triplet_rejects_bad_input():
    with pytest.raises(losses.LossInputError, match="features"):
        losses.batch_hard_triplet(np.zeros((4,)), np.zeros(4, int), margin=1.0)
    with pytest.raises(losses.LossInputError, match="margin"):
        losses.batch_hard_triplet(np.zeros((4, 2)), np.zeros(4, int), margin=-1.0)


# ---------------------------------------------------------------- batch-hard triplet: torch parity
def _torch_batch_hard(features, labels, margin):
    """Independent reference in the style of the original: Gram distances clamped at 1e-12, masked max/min."""
    sq = (features**2).sum(1, keepdim=True)
    dist = (sq + sq.t() - 2 * features @ features.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    d_ap = torch.stack([dist[i][same[i]].max() for i in range(len(labels))])
    d_an = torch.stack([dist[i][~same[i]].min() for i in range(len(labels))])
    target = torch.ones_like(d_an)
    if margin is None:
        return torch.nn.functional.soft_margin_loss(d_an - d_ap, target)
    return torch.nn.functional.margin_ranking_loss(d_an, d_ap, target, margin=margin)


@pytest.mark.parametrize("margin", [4.0, 0.3, None])
def test_triplet_matches_torch_reference(margin):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(12, 8)).astype(np.float32)
    labels = np.repeat(np.arange(3), 4)  # P = 3 identities x K = 4 instances
    torch_features = torch.tensor(features, dtype=torch.float64, requires_grad=True)
    expected = _torch_batch_hard(torch_features, torch.from_numpy(labels), margin)
    expected.backward()
    loss_fn = jax.jit(jax.value_and_grad(lambda f: losses.batch_hard_triplet(f, labels, margin=margin)))
    value, grad = loss_fn(jnp.asarray(features))
    np.testing.assert_allclose(value, expected.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, torch_features.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("margin", [4.0, 0.3])
def test_triplet_self_positive_matches_anonynoise_rule_with_lonely_anchors(margin):
    # AnonyNoise's loss (its losses.py) counts every anchor, taking the anchor itself as a positive at 1e-6: the
    # torch reference above is that rule. Identities 1 and 3 have a single sample here.
    rng = np.random.default_rng(2)
    features = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.array([0, 0, 1, 2, 2, 3])
    torch_features = torch.tensor(features, dtype=torch.float64, requires_grad=True)
    expected = _torch_batch_hard(torch_features, torch.from_numpy(labels), margin)
    expected.backward()
    value, grad = jax.value_and_grad(
        lambda f: losses.batch_hard_triplet(f, labels, margin=margin, self_positive=True))(jnp.asarray(features))
    np.testing.assert_allclose(value, expected.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, torch_features.grad.numpy(), rtol=1e-4, atol=1e-6)
    # The default rule leaves the two lonely anchors out, so it differs.
    assert abs(float(losses.batch_hard_triplet(features, labels, margin=margin)) - expected.item()) > 1e-3
