"""specs/atss.md: worked examples, edge cases, invariants and bad input for reference ATSS."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.assign.atss import assign_atss, mean_plus_std_threshold, select_candidates
from reference.boxes import box_centers, box_iou, points_inside_boxes
from reference.conventions import ATSS_INSIDE_EPS, BACKGROUND
from tests.strategies import anchor_scenes

MMDET_PRIORS = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [5, 5, 15, 15], [32, 32, 38, 42]], dtype=float)
MMDET_GTS = np.array([[0, 0, 10, 9], [0, 10, 10, 19]], dtype=float)


def _sample_threshold(values):
    """mean + sample std written out by hand (specs/atss.md §2.3)."""
    n = len(values)
    mean = sum(values) / n
    return mean + math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


# ---------------------------------------------------------------------------------------
# worked examples (§6)


def test_mmdetection_example():  # §6.1
    result = assign_atss(MMDET_PRIORS, [4], MMDET_GTS, topk=9)
    np.testing.assert_array_equal(result.matched_gt, [0, BACKGROUND, BACKGROUND, BACKGROUND])
    np.testing.assert_allclose(result.matched_metric, [0.9, 0, 0, 0], rtol=1e-12)
    expected = [_sample_threshold([0.9, 0, 20 / 170, 0]), _sample_threshold([0, 0, 25 / 165, 0])]
    np.testing.assert_allclose(result.gt_threshold, expected, rtol=1e-12)
    np.testing.assert_allclose(result.gt_threshold, [0.6884, 0.1136], atol=5e-5)
    # every anchor is a candidate of both GTs (k = 9 > 4), nearest centre first
    assert result.candidate_index.shape == (2, 4)
    np.testing.assert_array_equal(np.sort(result.candidate_index, axis=1), [[0, 1, 2, 3], [0, 1, 2, 3]])
    assert result.candidate_index[0, 0] == 0 and result.candidate_index[1, 0] == 2


def test_sample_std_threshold_values():  # §2.3, §6.2
    threshold = mean_plus_std_threshold(np.array([[0.58, 0.56, 0.10, 0.0]]))
    np.testing.assert_allclose(threshold, [0.31 + math.sqrt(0.2756 / 3)], rtol=1e-12)
    assert threshold[0] > 0.58  # no positive with the sample std ...
    assert 0.31 + math.sqrt(0.2756 / 4) < 0.58  # ... while the population std would give one


def test_sample_std_scene_has_no_positive():  # §6.2
    anchors = [[0, 0, 100, 58], [0, 0, 100, 56], [0, 0, 10, 100], [200, 200, 210, 210]]
    result = assign_atss(anchors, [4], [[0, 0, 100, 100]])
    np.testing.assert_allclose(np.sort(box_iou([[0, 0, 100, 100]], anchors)[0]), [0, 0.1, 0.56, 0.58], rtol=1e-12)
    np.testing.assert_allclose(result.gt_threshold, [0.31 + math.sqrt(0.2756 / 3)], rtol=1e-12)
    assert result.num_positives == 0


def test_single_candidate_threshold_is_its_iou():  # §4.4, §6.3
    result = assign_atss([[0, 0, 10, 10]], [1], [[0, 0, 10, 20]])
    np.testing.assert_array_equal(result.gt_threshold, [0.5])
    np.testing.assert_array_equal(result.matched_gt, [0])
    np.testing.assert_array_equal(result.matched_metric, [0.5])
    np.testing.assert_array_equal(result.candidate_index, [[0]])


def test_distance_tie_goes_to_lower_anchor_index():  # §2.1, §6.4
    anchors = [[8, 0, 16, 8], [0, 0, 8, 8]]  # index 0 is to the right of index 1
    result = assign_atss(anchors, [2], [[4, 0, 12, 8]], topk=1)
    np.testing.assert_array_equal(result.candidate_index, [[0]])


def test_candidates_within_level_are_in_distance_then_index_order():  # §2.1
    # one level of 5 anchors on a line; GT centre x = 20: distances 20, 4, 4, 12, 20 (px)
    anchors = np.array([[x - 4, 0, x + 4, 8] for x in (0, 16, 24, 8, 40)], dtype=float)
    result = assign_atss(anchors, [5], [[16, 0, 24, 8]], topk=4)
    np.testing.assert_array_equal(result.candidate_index, [[1, 2, 3, 0]])


def test_duplicate_gts_go_to_lower_gt_index():  # §2.5, §6.5
    anchors, counts = MMDET_PRIORS, [4]
    result = assign_atss(anchors, counts, [[0, 0, 10, 9], [0, 0, 10, 9]])
    np.testing.assert_array_equal(result.matched_gt, [0, -1, -1, -1])
    np.testing.assert_array_equal(result.gt_threshold[0], result.gt_threshold[1])
    np.testing.assert_array_equal(result.candidate_index[0], result.candidate_index[1])


def test_highest_iou_wins_among_gts():  # §2.5
    # one anchor, two GTs containing its centre; each has a single candidate -> both positive
    result = assign_atss([[0, 0, 10, 10]], [1], [[0, 0, 10, 20], [0, 0, 10, 12]])
    np.testing.assert_array_equal(result.matched_gt, [1])
    np.testing.assert_allclose(result.matched_metric, [100 / 120], rtol=1e-15)


def test_zero_area_gt_has_no_positive_and_no_nan():  # §4.5, §6.6
    anchors = np.array([[x, y, x + 8, y + 8] for y in range(0, 32, 8) for x in range(0, 32, 8)], dtype=float)
    result = assign_atss(anchors, [16], [[5, 5, 5, 15], [10, 3, 20, 3]])
    np.testing.assert_array_equal(result.gt_threshold, [0.0, 0.0])
    assert result.num_positives == 0
    assert not np.isnan(result.matched_metric).any()


def test_inside_margin_is_strict():  # §2.4, §6.7
    outside = assign_atss([[0, 0, 10, 10]], [1], [[4.5, 0, 20, 10]], inside_eps=0.5)
    inside = assign_atss([[0, 0, 10, 10]], [1], [[4.25, 0, 20, 10]], inside_eps=0.5)
    assert outside.num_positives == 0
    np.testing.assert_array_equal(inside.matched_gt, [0])
    # default eps: a centre on the GT's edge (margin 0) is outside
    assert assign_atss([[0, 0, 10, 10]], [1], [[5, 0, 20, 10]]).num_positives == 0


# ---------------------------------------------------------------------------------------
# edge cases (§4)


def test_no_gt_all_background():  # §4.1
    result = assign_atss(MMDET_PRIORS, [2, 2], np.zeros((0, 4)), topk=1)
    np.testing.assert_array_equal(result.matched_gt, [-1, -1, -1, -1])
    np.testing.assert_array_equal(result.matched_metric, np.zeros(4))
    assert result.gt_threshold.shape == (0,) and result.gt_threshold.dtype == np.float64
    assert result.candidate_index.shape == (0, 2) and result.candidate_index.dtype == np.int64


def test_no_anchor_gives_empty_arrays():  # §4.2
    result = assign_atss(np.zeros((0, 4)), [0, 0], MMDET_GTS)
    assert result.matched_gt.shape == (0,) and result.matched_gt.dtype == np.int64
    assert result.matched_metric.shape == (0,) and result.matched_metric.dtype == np.float64
    assert result.candidate_index.shape == (2, 0) and result.candidate_index.dtype == np.int64
    assert np.isnan(result.gt_threshold).all() and result.gt_threshold.shape == (2,)
    empty = assign_atss(np.zeros((0, 4)), [], np.zeros((0, 4)))
    assert empty.matched_gt.shape == (0,) and empty.candidate_index.shape == (0, 0)


def test_short_and_empty_levels():  # §4.3
    # level 0: 2 anchors (< k), level 1: none, level 2: 3 anchors; k = 2 -> C = 2 + 0 + 2
    anchors = np.array([[0, 0, 8, 8], [8, 0, 16, 8], [0, 0, 16, 16], [16, 0, 32, 16], [32, 0, 48, 16]], dtype=float)
    result = assign_atss(anchors, [2, 0, 3], [[0, 0, 16, 8]], topk=2)
    assert result.candidate_index.shape == (1, 4)
    # GT centre (8, 4): level 0 centres (4, 4), (12, 4) tie at 16 px^2 -> index order;
    # level 2 centres (8, 8), (24, 8), (40, 8) are 16, 272, 1040 px^2 away
    np.testing.assert_array_equal(result.candidate_index, [[0, 1, 2, 3]])
    assert not np.isnan(result.gt_threshold).any()


# ---------------------------------------------------------------------------------------
# invariants (§5)

SCENES = anchor_scenes(max_side=512, max_boxes=12)


def _check_invariants(scene, result, topk, eps=ATSS_INSIDE_EPS):
    anchors, gts, counts = scene["anchors"], scene["gt_boxes"], scene["num_anchors_per_level"]
    num_candidates = sum(min(topk, n) for n in counts)
    assert result.candidate_index.shape == (len(gts), num_candidates)
    assert num_candidates <= topk * len(counts)
    assert not np.isnan(result.matched_metric).any()
    if len(gts) == 0:
        assert (result.matched_gt == BACKGROUND).all()
        return
    ious = box_iou(gts, anchors)
    inside = points_inside_boxes(box_centers(anchors), gts, eps)
    positive = np.flatnonzero(result.matched_gt >= 0)
    gt = result.matched_gt[positive]
    # §5.1: IoU reaches the threshold, centre inside, metric = IoU
    assert (ious[gt, positive] >= result.gt_threshold[gt]).all()
    assert inside[gt, positive].all()
    np.testing.assert_array_equal(result.matched_metric[positive], ious[gt, positive])
    np.testing.assert_array_equal(result.matched_metric[result.matched_gt < 0], 0.0)
    # §5.2: positives are candidates of their GT
    for anchor, g in zip(positive, gt):
        assert anchor in result.candidate_index[g]
    # §2.5: the winner has the highest IoU among the GTs the anchor is positive for
    for g in range(len(gts)):
        cand = result.candidate_index[g]
        is_pos = (ious[g, cand] >= result.gt_threshold[g]) & inside[g, cand]
        won = result.matched_gt[cand[is_pos]]
        assert (won >= 0).all()
        assert (ious[won, cand[is_pos]] >= ious[g, cand[is_pos]]).all()
        # lower-index tie rule
        tied = ious[won, cand[is_pos]] == ious[g, cand[is_pos]]
        assert (won[tied] <= g).all()


def _check_candidate_order(scene, result, topk):
    anchors, gts, counts = scene["anchors"], scene["gt_boxes"], scene["num_anchors_per_level"]
    centers, gt_centers = box_centers(anchors), box_centers(gts) if len(gts) else np.zeros((0, 2))
    for g in range(len(gts)):
        start, column = 0, 0
        for count in counts:
            k = min(topk, count)
            block = result.candidate_index[g, column : column + k]
            assert ((block >= start) & (block < start + count)).all()
            assert len(set(block.tolist())) == k
            d = centers[start : start + count] - gt_centers[g]
            squared = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]
            keys = list(zip(squared[block - start], block))
            assert keys == sorted(keys)  # (distance, index) order
            if k:
                last = keys[-1]
                others = np.setdiff1d(np.arange(start, start + count), block)
                for other in others:  # nothing outside the block precedes its last member
                    assert (squared[other - start], other) > last
            start += count
            column += k


@settings(max_examples=40)
@given(SCENES, st.integers(1, 12))
def test_invariants(scene, topk):
    result = assign_atss(scene["anchors"], scene["num_anchors_per_level"], scene["gt_boxes"], topk=topk)
    _check_invariants(scene, result, topk)


@settings(max_examples=15)
@given(anchor_scenes(max_side=160, max_boxes=4), st.integers(1, 12))
def test_candidates_are_the_nearest_in_distance_then_index_order(scene, topk):
    result = assign_atss(scene["anchors"], scene["num_anchors_per_level"], scene["gt_boxes"], topk=topk)
    _check_candidate_order(scene, result, topk)


@settings(max_examples=25)
@given(SCENES, st.randoms(use_true_random=False))
def test_permuting_gts_permutes_the_assignment(scene, rng):
    gts = scene["gt_boxes"]
    perm = np.array(rng.sample(range(len(gts)), len(gts)), dtype=np.int64)
    base = assign_atss(scene["anchors"], scene["num_anchors_per_level"], gts)
    permuted = assign_atss(scene["anchors"], scene["num_anchors_per_level"], gts[perm].reshape(-1, 4))
    np.testing.assert_array_equal(permuted.gt_threshold, base.gt_threshold[perm])
    np.testing.assert_array_equal(permuted.candidate_index, base.candidate_index[perm])
    np.testing.assert_array_equal(permuted.matched_metric, base.matched_metric)
    relabelled = permuted.matched_gt.copy()
    relabelled[relabelled >= 0] = perm[relabelled[relabelled >= 0]]
    differ = relabelled != base.matched_gt
    # differences only where two GTs tie on IoU for the anchor (tie rule §2.5)
    if differ.any():
        ious = box_iou(gts, scene["anchors"])
        anchors = np.flatnonzero(differ)
        np.testing.assert_array_equal(ious[relabelled[anchors], anchors], ious[base.matched_gt[anchors], anchors])


def test_no_gt_scene_is_all_background():  # §5.5
    anchors, counts = scene_anchors()
    result = assign_atss(anchors, counts, np.zeros((0, 4)))
    assert (result.matched_gt == BACKGROUND).all() and result.num_positives == 0


def scene_anchors():
    from reference.anchors import multi_level_anchors

    return multi_level_anchors((128, 160), (8, 16, 32))


# ---------------------------------------------------------------------------------------
# bad input (§4.8)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"anchors": [[0, 0, -1, 10]]}, "anchors"),
        ({"gt_boxes": [[0, 0, 10, np.nan]]}, "gt_boxes"),
        ({"gt_boxes": [[0, 0, 10]]}, "gt_boxes"),
        ({"num_anchors_per_level": [2]}, "num_anchors_per_level"),
        ({"num_anchors_per_level": [-1, 2]}, "num_anchors_per_level"),
        ({"topk": 0}, "topk"),
        ({"topk": 2.0}, "topk"),
        ({"topk": True}, "topk"),
        ({"inside_eps": -0.1}, "inside_eps"),
        ({"inside_eps": float("nan")}, "inside_eps"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    arguments = {"anchors": [[0, 0, 10, 10]], "num_anchors_per_level": [1], "gt_boxes": [[0, 0, 5, 5]]}
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in ("topk", "inside_eps")}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=name):
        assign_atss(arguments["anchors"], arguments["num_anchors_per_level"], arguments["gt_boxes"], **options)


def test_select_candidates_helper_matches_assigner():  # §2.1 helper
    anchors, counts = scene_anchors()
    gts = np.array([[10.0, 12.0, 50.0, 70.0]])
    np.testing.assert_array_equal(
        select_candidates(gts, anchors, counts, 9), assign_atss(anchors, counts, gts).candidate_index
    )
