"""ReId metric tests: a hand-worked toy gallery (junk, distractors, ties, a query without match) under both
AP rules and both denominators, cosine distances, and a randomised check against a naive loop."""

import numpy as np
import pytest

from anon_jax.metrics import reid

# Gallery:          g0  g1  g2  g3  g4  g5  g6  g7
GALLERY_IDS = np.array([1, 1, 2, -1, 1, 3, 2, 3])
GALLERY_CAMS = np.array([1, 2, 2, 2, 3, 1, 1, 3])
QUERY_IDS = np.array([1, 2, 4, 1])
QUERY_CAMS = np.array([1, 1, 2, 2])
DISTMAT = np.array(
    [
        # q0 (id 1, cam 1): order g0 g3 g2 g1 g5 g7 g4 g6; g0 (same id+cam) and g3 (-1) are junk, so the
        # ranking is g2 g1 g5 g7 g4 g6 with good hits g1 at r=1 (i=0) and g4 at r=4 (i=1).
        # standard AP = (1/2 + 2/5) / 2 = 0.45; trapezoid AP = ((0 + 1/2)/2 + (1/4 + 2/5)/2) / 2 = 0.2875.
        [0.1, 0.4, 0.3, 0.2, 0.7, 0.5, 0.8, 0.6],
        # q1 (id 2, cam 1): g6 is junk; g2 (good) and g5 tie at 0.2 and the stable sort keeps g2 first,
        # so the good hit is at r=0: AP = 1 under both rules (0.5 if the tie went the other way).
        [0.3, 0.4, 0.2, 0.5, 0.6, 0.2, 0.1, 0.7],
        # q2 (id 4): no gallery item has id 4 -> invalid query.
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        # q3 (id 1, cam 2): g1 (same cam) and g3 (-1) are junk; ranking g0 g2 g4 ...; hits at r=0 (i=0), r=2 (i=1).
        # standard AP = (1 + 2/3) / 2 = 5/6; trapezoid AP = ((1 + 1)/2 + (1/2 + 2/3)/2) / 2 = 19/24.
        [0.1, 0.15, 0.2, 0.35, 0.3, 0.4, 0.5, 0.6],
    ]
)
AP_STANDARD = np.array([0.45, 1.0, 0.0, 5 / 6])
AP_TRAPEZOID = np.array([0.2875, 1.0, 0.0, 19 / 24])
# First good rank per valid query: q0 -> 1, q1 -> 0, q3 -> 0.


def _toy(**kwargs):
    return reid.cmc_map(DISTMAT, QUERY_IDS, GALLERY_IDS, QUERY_CAMS, GALLERY_CAMS, **kwargs)


def test_toy_standard_rule_skips_invalid_queries():
    result = _toy(ap="standard")
    assert result["num_valid_queries"] == 3
    assert result["mAP"] == pytest.approx(AP_STANDARD.sum() / 3)  # 0.76111
    np.testing.assert_allclose(result["cmc"], [2 / 3] + [1.0] * 9)
    assert (result["rank1"], result["rank5"], result["rank10"]) == pytest.approx((2 / 3, 1.0, 1.0))


def test_toy_trapezoid_rule_counts_all_queries():
    result = _toy(ap="trapezoid")
    assert result["num_valid_queries"] == 3
    assert result["mAP"] == pytest.approx(AP_TRAPEZOID.sum() / 4)  # 0.51979
    np.testing.assert_allclose(result["cmc"], [0.5] + [0.75] * 9)
    assert (result["rank1"], result["rank5"], result["rank10"]) == pytest.approx((0.5, 0.75, 0.75))


@pytest.mark.parametrize(
    "ap, count_invalid, expected_map, expected_rank1",
    [
        ("standard", True, AP_STANDARD.sum() / 4, 0.5),
        ("trapezoid", False, AP_TRAPEZOID.sum() / 3, 2 / 3),
    ],
)
def test_toy_denominator_override(ap, count_invalid, expected_map, expected_rank1):
    result = _toy(ap=ap, count_invalid=count_invalid)
    assert result["mAP"] == pytest.approx(expected_map)
    assert result["rank1"] == pytest.approx(expected_rank1)


def test_max_rank_shorter_than_reported_ranks():
    result = _toy(ap="standard", max_rank=3)
    np.testing.assert_allclose(result["cmc"], [2 / 3, 1.0, 1.0])
    assert result["rank10"] == 1.0


def test_all_queries_invalid():
    ids = np.array([7, 8, 9, 7])
    result = reid.cmc_map(DISTMAT, ids, GALLERY_IDS, QUERY_CAMS, GALLERY_CAMS, ap="trapezoid")
    assert result["mAP"] == 0.0 and result["num_valid_queries"] == 0 and not np.any(result["cmc"])
    with pytest.raises(reid.ReIdMetricsError, match="none of the 4 queries"):
        reid.cmc_map(DISTMAT, ids, GALLERY_IDS, QUERY_CAMS, GALLERY_CAMS, ap="standard")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(distmat=np.full((4, 8), np.nan)), "NaN"),
        (dict(distmat=np.zeros(8)), "distmat"),
        (dict(gallery_ids=GALLERY_IDS[:5]), "gallery_ids"),
        (dict(query_cams=QUERY_CAMS.astype(float)), "query_cams"),
        (dict(ap="interpolated"), "ap='interpolated'"),
        (dict(max_rank=0), "max_rank=0"),
    ],
)
def test_bad_input(change, message):
    kwargs = dict(
        distmat=DISTMAT, query_ids=QUERY_IDS, gallery_ids=GALLERY_IDS, query_cams=QUERY_CAMS, gallery_cams=GALLERY_CAMS
    )
    kwargs.update(change)
    with pytest.raises(reid.ReIdMetricsError, match=message):
        reid.cmc_map(**kwargs)


def test_cosine_distance_and_l2_normalize():
    query = np.array([[3.0, 4.0], [0.0, 0.0]])
    gallery = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, -4.0]])
    np.testing.assert_allclose(reid.l2_normalize(query), [[0.6, 0.8], [0.0, 0.0]])
    # A zero vector stays zero (eps in the denominator), so its distance to everything is 1.
    np.testing.assert_allclose(reid.cosine_distance(query, gallery), [[0.4, 0.2, 2.0], [1.0, 1.0, 1.0]], atol=1e-12)
    with pytest.raises(reid.ReIdMetricsError, match="same D"):
        reid.cosine_distance(query, np.zeros((3, 5)))


# ---------------------------------------------------------------- randomised check against a naive loop
def _naive_cmc_map(distmat, query_ids, gallery_ids, query_cams, gallery_cams, max_rank, ap, count_invalid):
    """Per-query loop over a list: sort with (distance, index) keys, drop junk, walk the ranking."""
    cmc_sum = [0.0] * max_rank
    ap_sum = 0.0
    valid = 0
    for q in range(len(query_ids)):
        ranking = sorted(range(len(gallery_ids)), key=lambda g: (distmat[q][g], g))
        ranking = [
            g for g in ranking
            if gallery_ids[g] != -1 and not (gallery_ids[g] == query_ids[q] and gallery_cams[g] == query_cams[q])
        ]
        good_ranks = [r for r, g in enumerate(ranking) if gallery_ids[g] == query_ids[q]]
        if not good_ranks:
            continue
        valid += 1
        for k in range(good_ranks[0], max_rank):
            cmc_sum[k] += 1
        total = 0.0
        for i, r in enumerate(good_ranks):
            precision = (i + 1) / (r + 1)
            if ap == "standard":
                total += precision
            else:
                previous = 1.0 if r == 0 else i / r
                total += (previous + precision) / 2
        ap_sum += total / len(good_ranks)
    denominator = len(query_ids) if count_invalid else valid
    return np.array(cmc_sum) / denominator, ap_sum / denominator, valid


@pytest.mark.parametrize("ap, count_invalid", [("standard", False), ("trapezoid", True), ("standard", True)])
def test_random_galleries_match_naive_loop(ap, count_invalid):
    rng = np.random.default_rng(7)
    num_query, num_gallery, max_rank = 150, 60, 12  # more queries than one vectorised block
    query_ids = rng.integers(0, 12, num_query)
    gallery_ids = rng.integers(-1, 10, num_gallery)
    query_cams = rng.integers(0, 3, num_query)
    gallery_cams = rng.integers(0, 3, num_gallery)
    distmat = rng.integers(0, 8, (num_query, num_gallery)).astype(np.float32)  # many ties
    result = reid.cmc_map(
        distmat, query_ids, gallery_ids, query_cams, gallery_cams, max_rank=max_rank, ap=ap, count_invalid=count_invalid
    )
    cmc, mean_ap, valid = _naive_cmc_map(
        distmat.tolist(), query_ids.tolist(), gallery_ids.tolist(), query_cams.tolist(), gallery_cams.tolist(),
        max_rank, ap, count_invalid,
    )
    assert 0 < valid < num_query and result["num_valid_queries"] == valid
    np.testing.assert_allclose(result["cmc"], cmc, rtol=1e-12)
    assert result["mAP"] == pytest.approx(mean_ap, rel=1e-12)
    assert result["rank5"] == pytest.approx(cmc[4], rel=1e-12)
