"""Training losses: classification cross-entropy (PyTorch label-smoothing semantics), the
batch-hard triplet loss on Euclidean feature distances, and AGW's weighted regularised triplet and centre losses.
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


def _agw_softmax_weights(distances, mask):
    """AGW's masked softmax over each row: exp(d - m) * mask / (sum(exp(d - m) * mask) + 1e-6).

    The shift m is the row maximum of distances * mask, so masked entries take part as zeros (for the negatives'
    -D this makes m = 0), as the original computes it.
    """
    shift = jnp.max(distances * mask, axis=1, keepdims=True)
    weighted = jnp.exp(distances - shift) * mask
    return weighted / (jnp.sum(weighted, axis=1, keepdims=True) + 1e-6)


def weighted_regularized_triplet(features, labels):
    """AGW's weighted regularised triplet loss on `features` (N, D) (un-normalised, pre-BN) with `labels` (N,).

    D_ij = sqrt(max(|f_i|^2 + |f_j|^2 - 2 f_i.f_j, 1e-12)); each anchor weighs its positives (itself included)
    by a softmax of D and its negatives by a softmax of -D (_agw_softmax_weights), d+ = sum w+ D, d- = sum w- D,
    and the loss is mean(softplus(d+ - d-)) (SoftMarginLoss, no margin). An anchor without negatives gets d- = 0.
    The softplus is computed stably, where PyTorch's SoftMarginLoss overflows to inf once d+ - d- passes ~88
    (float32); below that the two agree.
    """
    features = jnp.asarray(features)
    labels = jnp.asarray(labels)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise LossInputError(f"weighted_regularized_triplet expects features (N, D) and labels (N,), got "
                             f"{features.shape} and {labels.shape}.")
    # At least float32 (bfloat16 features are promoted; float64 stays, for exact comparisons).
    features = features.astype(jnp.promote_types(features.dtype, jnp.float32))
    sq_norms = jnp.sum(jnp.square(features), axis=-1)
    distances = jnp.sqrt(jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * features @ features.T, 1e-12))
    positive = (labels[:, None] == labels[None, :]).astype(features.dtype)
    negative = 1.0 - positive
    positive_distances = distances * positive
    negative_distances = distances * negative
    furthest_positive = jnp.sum(positive_distances * _agw_softmax_weights(positive_distances, positive), axis=1)
    closest_negative = jnp.sum(negative_distances * _agw_softmax_weights(-negative_distances, negative), axis=1)
    return jnp.mean(jax.nn.softplus(furthest_positive - closest_negative))


def initial_centres(key, num_classes: int, feature_dim: int):
    """Centre-loss centres as the original draws them: (num_classes, feature_dim) standard normal."""
    return jax.random.normal(key, (num_classes, feature_dim), jnp.float32)


def centre_loss(features, labels, centres):
    """Centre loss sum_i |f_i - c_{y_i}|^2 / N of `features` (N, D), `labels` (N,) in [0, K), `centres` (K, D).

    As the original: squared distances from the expansion |f|^2 + |c|^2 - 2 f.c, each entry of the masked (N, K)
    distance matrix clamped to [1e-12, 1e12], so the K - 1 masked zeros of every row add (K - 1) * 1e-12 (constant,
    no gradient). The centres are trainable parameters the caller holds; the 0.0005 weight is the caller's too.
    """
    features = jnp.asarray(features)
    labels = jnp.asarray(labels)
    centres = jnp.asarray(centres)
    if features.ndim != 2 or labels.shape != features.shape[:1] or centres.ndim != 2 \
            or centres.shape[1] != features.shape[1]:
        raise LossInputError(f"centre_loss expects features (N, D), labels (N,) and centres (K, D), got "
                             f"{features.shape}, {labels.shape} and {centres.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise LossInputError(f"centre_loss expects integer class labels, got dtype {labels.dtype}.")
    dtype = jnp.promote_types(jnp.promote_types(features.dtype, centres.dtype), jnp.float32)
    features = features.astype(dtype)
    own_centres = centres.astype(dtype)[labels]
    squared = (jnp.sum(jnp.square(features), axis=-1) + jnp.sum(jnp.square(own_centres), axis=-1)
               - 2.0 * jnp.sum(features * own_centres, axis=-1))
    clamped_zeros = (centres.shape[0] - 1) * 1e-12
    return jnp.mean(jnp.clip(squared, 1e-12, 1e12)) + clamped_zeros
