"""Re-identification retrieval metrics in NumPy: CMC and mAP under the Market-1501 protocol, with the
standard AP and the trapezoid AP of the layumi baseline that the Event-ReId paper uses.
"""

from __future__ import annotations

import numpy as np

AP_RULES = ("standard", "trapezoid")
REPORTED_RANKS = (1, 5, 10)
# Queries ranked per block; bounds the (block, gallery) temporaries for large galleries.
QUERY_BLOCK = 128


class ReIdMetricsError(ValueError):
    """Retrieval metrics were asked for with inconsistent or unusable inputs."""


def l2_normalize(features, *, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """`features / max(||features||, eps)` along `axis` (PyTorch F.normalize)."""
    features = np.asarray(features)
    norms = np.linalg.norm(features, axis=axis, keepdims=True)
    return features / np.maximum(norms, eps)


def cosine_distance(query_features, gallery_features) -> np.ndarray:
    """(Q, G) distances 1 - <q, g> of the L2-normalised features (ranks as the paper's cosine score)."""
    query_features = np.asarray(query_features)
    gallery_features = np.asarray(gallery_features)
    if query_features.ndim != 2 or gallery_features.ndim != 2 or query_features.shape[1] != gallery_features.shape[1]:
        raise ReIdMetricsError(
            "cosine_distance expects query (Q, D) and gallery (G, D) features with the same D, "
            f"got {query_features.shape} and {gallery_features.shape}."
        )
    return 1.0 - l2_normalize(query_features) @ l2_normalize(gallery_features).T


def _as_labels(name: str, values, length: int) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (length,) or not np.issubdtype(values.dtype, np.integer):
        raise ReIdMetricsError(
            f"cmc_map: {name} must be a 1-D integer array of length {length} (one per distmat "
            f"{'row' if name.startswith('query') else 'column'}), got shape {values.shape} dtype {values.dtype}."
        )
    return values


def _rank_block(distmat, query_ids, gallery_ids, query_cams, gallery_cams, *, ap: str, num_ranks: int):
    """AP, first-good rank and validity of each query in a block (the vectorised core of cmc_map)."""
    order = np.argsort(distmat, axis=1, kind="stable")
    ranked_ids = gallery_ids[order]
    ranked_cams = gallery_cams[order]
    same_id = ranked_ids == query_ids[:, None]
    junk = (same_id & (ranked_cams == query_cams[:, None])) | (ranked_ids == -1)
    kept = ~junk
    good = same_id & kept
    # 0-based rank among the non-junk items, and the 0-based index i of each good hit.
    rank = np.cumsum(kept, axis=1) - 1
    hit = np.cumsum(good, axis=1) - 1
    num_good = good.sum(axis=1)
    # Junk items ahead of the first kept one have rank -1; they are masked out below.
    precision = (hit + 1) / np.maximum(rank + 1, 1)
    if ap == "standard":
        terms = precision
    else:
        previous = np.where(rank > 0, hit / np.maximum(rank, 1), 1.0)
        terms = (previous + precision) / 2
    average_precision = np.where(good, terms, 0.0).sum(axis=1) / np.maximum(num_good, 1)
    valid = num_good > 0
    first_rank = np.where(valid, rank[np.arange(len(order)), np.argmax(good, axis=1)], num_ranks)
    cmc = np.arange(num_ranks)[None, :] >= first_rank[:, None]
    return average_precision, cmc, valid


def cmc_map(
    distmat,
    query_ids,
    gallery_ids,
    query_cams,
    gallery_cams,
    *,
    max_rank: int = 10,
    ap: str = "standard",
    count_invalid: bool | None = None,
) -> dict:
    """CMC curve and mAP of a (Q, G) distance matrix under the Market-1501 protocol.

    Per query the gallery is sorted by ascending distance (stable: ties keep gallery order). Junk is
    removed from the ranking: items with the query's id and camera, and items with id -1. Good items
    have the query's id and another camera; r_i is the 0-based rank of the i-th good hit among the
    non-junk items.
    - ap="standard": AP = mean over good hits of (i + 1) / (r_i + 1) (sklearn's average precision).
    - ap="trapezoid" (layumi / Event-ReId): AP = sum over hits of ((i / r_i) + (i + 1) / (r_i + 1)) / 2 / ngood,
      with i / r_i read as 1 when r_i = 0.
    Queries without a good item ("invalid") have no AP. count_invalid=False averages CMC and AP over valid
    queries only (the usual Market-1501 evaluation); True divides by all queries, counting invalid ones as
    0 (the layumi code the paper used). None picks the rule's own convention: False for "standard", True
    for "trapezoid".

    Returns cmc (max_rank,), rank1, rank5, rank10 (always, whatever max_rank), mAP and num_valid_queries.
    """
    if ap not in AP_RULES:
        raise ReIdMetricsError(f"cmc_map ap={ap!r}: use one of {AP_RULES}.")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ReIdMetricsError(f"cmc_map max_rank={max_rank!r} must be a positive integer.")
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ReIdMetricsError(f"cmc_map expects a (num_query, num_gallery) distmat, got shape {distmat.shape}.")
    if not np.all(np.isfinite(distmat)):
        raise ReIdMetricsError(
            "cmc_map: distmat holds NaN or inf; check the features (a diverged model gives NaN features)."
        )
    num_query, num_gallery = distmat.shape
    query_ids = _as_labels("query_ids", query_ids, num_query)
    query_cams = _as_labels("query_cams", query_cams, num_query)
    gallery_ids = _as_labels("gallery_ids", gallery_ids, num_gallery)
    gallery_cams = _as_labels("gallery_cams", gallery_cams, num_gallery)
    if count_invalid is None:
        count_invalid = ap == "trapezoid"

    num_ranks = max(max_rank, max(REPORTED_RANKS))
    ap_parts, cmc_parts, valid_parts = [], [], []
    for start in range(0, num_query, QUERY_BLOCK):
        block = slice(start, start + QUERY_BLOCK)
        average_precision, cmc, valid = _rank_block(
            distmat[block], query_ids[block], gallery_ids, query_cams[block], gallery_cams,
            ap=ap, num_ranks=num_ranks,
        )
        ap_parts.append(average_precision)
        cmc_parts.append(cmc)
        valid_parts.append(valid)
    average_precision = np.concatenate(ap_parts) if ap_parts else np.zeros(0)
    cmc = np.concatenate(cmc_parts) if cmc_parts else np.zeros((0, num_ranks), bool)
    valid = np.concatenate(valid_parts) if valid_parts else np.zeros(0, bool)

    num_valid = int(valid.sum())
    denominator = num_query if count_invalid else num_valid
    if denominator == 0:
        raise ReIdMetricsError(
            f"cmc_map: none of the {num_query} queries has a gallery item with its id from another camera; "
            "check that query and gallery ids/cameras come from the same split and labelling."
        )
    # Invalid queries contribute AP 0 and an all-zero CMC row, so summing over all queries is right for both rules.
    mean_cmc = cmc.sum(axis=0) / denominator
    result = {
        "cmc": mean_cmc[:max_rank],
        "mAP": float(average_precision.sum() / denominator),
        "num_valid_queries": num_valid,
    }
    for k in REPORTED_RANKS:
        result[f"rank{k}"] = float(mean_cmc[k - 1])
    return result
