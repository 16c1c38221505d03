"""Training losses: classification cross-entropy (PyTorch label-smoothing semantics) and the
batch-hard triplet loss on Euclidean feature distances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


class LossInputError(ValueError):
    """A loss was called with arrays or settings it cannot use."""


def cross_entropy(logits, labels, *, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy of integer `labels` (N,) under `logits` (N, K).

    As PyTorch's F.cross_entropy(label_smoothing=e): the target is (1 - e) * one_hot + e / K.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise LossInputError(
            f"cross_entropy expects logits (N, K) and labels (N,), got {logits.shape} and {labels.shape}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise LossInputError(f"cross_entropy expects integer class labels, got dtype {labels.dtype}.")
    if not 0.0 <= label_smoothing <= 1.0:
        raise LossInputError(f"cross_entropy label_smoothing={label_smoothing!r} must lie in [0, 1].")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    true_class = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    uniform = -jnp.mean(log_probs, axis=-1)
    return jnp.mean((1.0 - label_smoothing) * true_class + label_smoothing * uniform)


def _safe_norm(differences):
    """Euclidean norm over the last axis with gradient 0 (not NaN) where the difference is 0."""
    squared = jnp.sum(jnp.square(differences), axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def batch_hard_triplet(features, labels, *, margin: float | None = None, squared: bool = False,
                       self_positive: bool = False):
    """Batch-hard triplet loss on the Euclidean distances of `features` (N, D) with identity `labels` (N,).

    Each anchor takes its farthest positive (same label, other sample) and its nearest negative.
    With a float `margin`: mean(max(0, d_ap - d_an + margin)) (PyTorch MarginRankingLoss); with
    margin=None the soft margin: mean(softplus(d_ap - d_an)). `squared` uses squared distances.

    Masking rule: anchors that have no other sample of their label, or no sample of another label,
    are left out, and the mean runs over the remaining anchors. If none remains (e.g. a batch of one
    identity) the loss is 0 with zero gradient. Mining uses the Gram-matrix distances; the chosen
    pairs' distances are then recomputed from feature differences, which is exact and gives each
    distance a unit-norm gradient (0 for coincident points, where the square root has no derivative).

    `self_positive=True` is AnonyNoise's rule (its losses.py): distances are sqrt(max(d^2, 1e-12)) and every
    anchor is among its own positives (at distance 1e-6), so anchors without another sample of their label
    still count, with d_ap = 1e-6; only anchors without a negative are left out.
    """
    features = jnp.asarray(features)
    labels = jnp.asarray(labels)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise LossInputError(
            f"batch_hard_triplet expects features (N, D) and labels (N,), got {features.shape} and {labels.shape}."
        )
    if margin is not None and margin < 0:
        raise LossInputError(f"batch_hard_triplet margin={margin!r} must be >= 0, or None for the soft margin.")
    features = features.astype(jnp.float32)
    count = features.shape[0]

    mined = jax.lax.stop_gradient(features)
    sq_norms = jnp.sum(jnp.square(mined), axis=-1)
    gram_sq_dist = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * mined @ mined.T, 0.0)
    same = labels[:, None] == labels[None, :]
    positive_mask = same if self_positive else same & ~jnp.eye(count, dtype=bool)
    negative_mask = ~same
    hardest_positive = jnp.argmax(jnp.where(positive_mask, gram_sq_dist, -1.0), axis=1)
    hardest_negative = jnp.argmin(jnp.where(negative_mask, gram_sq_dist, jnp.inf), axis=1)
    valid = jnp.any(positive_mask, axis=1) & jnp.any(negative_mask, axis=1)

    positive_diff = features - features[hardest_positive]
    negative_diff = features - features[hardest_negative]
    if squared:
        d_ap = jnp.sum(jnp.square(positive_diff), axis=-1)
        d_an = jnp.sum(jnp.square(negative_diff), axis=-1)
    elif self_positive:
        d_ap = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(positive_diff), axis=-1), 1e-12))
        d_an = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(negative_diff), axis=-1), 1e-12))
    else:
        d_ap = _safe_norm(positive_diff)
        d_an = _safe_norm(negative_diff)
    if margin is None:
        per_anchor = jax.nn.softplus(d_ap - d_an)
    else:
        per_anchor = jax.nn.relu(d_ap - d_an + margin)
    num_valid = jnp.sum(valid)
    return jnp.sum(jnp.where(valid, per_anchor, 0.0)) / jnp.maximum(num_valid, 1)
