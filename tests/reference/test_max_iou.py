"""specs/max_iou.md: worked examples, edge cases, invariants and bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.assign.max_iou import assign_max_iou
from reference.boxes import box_iou
from reference.conventions import BACKGROUND, IGNORE
from tests.strategies import anchor_scenes

GT = [[0.0, 0.0, 10.0, 10.0]]


def test_thresholds_and_ignore_band():  # §2.2, §6
    anchors = [[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.5], [0, 0, 10, 4], [0, 0, 10, 3]]
    result = assign_max_iou(anchors, GT)
    np.testing.assert_array_equal(result.matched_gt, [0, 0, IGNORE, IGNORE, BACKGROUND])
    np.testing.assert_array_equal(result.matched_metric, [1.0, 0.5, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(result.gt_threshold, [0.5])
    assert result.candidate_index.shape == (1, 0) and result.candidate_index.dtype == np.int64
    # no ignore band when neg == pos
    no_band = assign_max_iou(anchors, GT, pos_iou_thr=0.45, neg_iou_thr=0.45)
    np.testing.assert_array_equal(no_band.matched_gt, [0, 0, 0, BACKGROUND, BACKGROUND])


def test_low_quality_matches_take_all_tied_best_anchors():  # §2.3, §6
    anchors = [[0, 0, 10, 3], [0, 7, 10, 10], [20, 20, 30, 30]]
    plain = assign_max_iou(anchors, GT)
    np.testing.assert_array_equal(plain.matched_gt, [BACKGROUND] * 3)
    low = assign_max_iou(anchors, GT, match_low_quality=True)
    np.testing.assert_array_equal(low.matched_gt, [0, 0, BACKGROUND])
    np.testing.assert_array_equal(low.matched_metric, [0.3, 0.3, 0.0])
    strict = assign_max_iou(anchors, GT, match_low_quality=True, min_pos_iou=0.35)
    np.testing.assert_array_equal(strict.matched_gt, [BACKGROUND] * 3)


def test_low_quality_match_overrides_another_gt():  # §2.3, §6
    gts = [[0, 0, 10, 8], [0, 0, 10, 16]]
    anchors = [[0, 0, 10, 10], [0, 0, 10, 8]]
    plain = assign_max_iou(anchors, gts)
    np.testing.assert_array_equal(plain.matched_gt, [0, 0])
    low = assign_max_iou(anchors, gts, match_low_quality=True)
    np.testing.assert_array_equal(low.matched_gt, [1, 0])
    np.testing.assert_array_equal(low.matched_metric, [0.625, 1.0])


def test_competing_claimants_highest_iou_then_lower_index():  # §2.3
    # both GTs' best anchor is anchor 0; GT 0 has the higher IoU with it
    anchors = [[0, 0, 10, 10], [100, 100, 110, 110]]
    low = assign_max_iou(anchors, [[0, 0, 10, 12], [0, 0, 10, 14]], match_low_quality=True, pos_iou_thr=0.9, neg_iou_thr=0.9)
    np.testing.assert_array_equal(low.matched_gt, [0, BACKGROUND])
    np.testing.assert_allclose(low.matched_metric, [100 / 120, 0], rtol=1e-15)
    # equal IoU: the lower GT index
    tie = assign_max_iou(anchors, [[0, 0, 10, 12], [0, -2, 10, 10]], match_low_quality=True, pos_iou_thr=0.9, neg_iou_thr=0.9)
    np.testing.assert_array_equal(tie.matched_gt, [0, BACKGROUND])


def test_gt_overlapping_nothing_claims_nothing():  # §2.3, §3
    anchors = [[0, 0, 10, 10], [20, 0, 30, 10]]
    result = assign_max_iou(anchors, [[50, 50, 60, 60], [5, 5, 5, 15]], match_low_quality=True, min_pos_iou=0.0)
    np.testing.assert_array_equal(result.matched_gt, [BACKGROUND, BACKGROUND])


def test_best_gt_ties_go_to_lower_index():  # §2.1
    result = assign_max_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [0, 0, 10, 10]])
    np.testing.assert_array_equal(result.matched_gt, [0])


def test_empty_inputs():  # §4.1, §4.2
    none = assign_max_iou([[0, 0, 10, 10]] * 3, np.zeros((0, 4)), match_low_quality=True)
    np.testing.assert_array_equal(none.matched_gt, [BACKGROUND] * 3)
    assert none.gt_threshold.shape == (0,) and none.candidate_index.shape == (0, 0)
    empty = assign_max_iou(np.zeros((0, 4)), GT, match_low_quality=True)
    assert empty.matched_gt.shape == (0,) and empty.matched_gt.dtype == np.int64
    assert empty.matched_metric.shape == (0,) and empty.matched_metric.dtype == np.float64
    np.testing.assert_array_equal(empty.gt_threshold, [0.5])
    assert empty.candidate_index.shape == (1, 0)


SCENES = anchor_scenes(max_side=384, max_boxes=10)


@settings(max_examples=30)
@given(SCENES, st.sampled_from([(0.5, 0.4), (0.6, 0.3), (0.5, 0.5)]), st.booleans())
def test_invariants(scene, thresholds, low_quality):  # §5
    anchors, gts = scene["anchors"], scene["gt_boxes"]
    pos, neg = thresholds
    result = assign_max_iou(anchors, gts, pos_iou_thr=pos, neg_iou_thr=neg, match_low_quality=low_quality)
    assert not np.isnan(result.matched_metric).any()
    if len(gts) == 0:
        assert (result.matched_gt == BACKGROUND).all()
        return
    ious = box_iou(gts, anchors)
    best = ious.max(axis=0)
    positive = result.matched_gt >= 0
    np.testing.assert_array_equal(
        result.matched_metric[positive], ious[result.matched_gt[positive], np.flatnonzero(positive)]
    )
    np.testing.assert_array_equal(result.matched_metric[~positive], 0.0)
    gt_max = ious.max(axis=1)
    claimed = (((ious == gt_max[:, None]) & (gt_max[:, None] > 0))).any(axis=0) if low_quality else np.zeros(len(anchors), bool)
    unclaimed = ~claimed
    # §5.1 on unclaimed anchors
    np.testing.assert_array_equal(positive[unclaimed], best[unclaimed] >= pos)
    np.testing.assert_array_equal((result.matched_gt == BACKGROUND)[unclaimed], best[unclaimed] < neg)
    np.testing.assert_array_equal((result.matched_gt == IGNORE)[unclaimed], (best >= neg)[unclaimed] & (best < pos)[unclaimed])
    winners = np.argmax(ious, axis=0)
    np.testing.assert_array_equal(result.matched_gt[unclaimed & positive], winners[unclaimed & positive])
    # §5.2 claimed anchors are positive for a claimant with the highest IoU
    for anchor in np.flatnonzero(claimed):
        claimants = np.flatnonzero((ious[:, anchor] == gt_max) & (gt_max > 0))
        g = result.matched_gt[anchor]
        assert g in claimants
        assert ious[g, anchor] == ious[claimants, anchor].max()
        assert g == claimants[ious[claimants, anchor] == ious[g, anchor]].min()


@settings(max_examples=20)
@given(SCENES, st.randoms(use_true_random=False), st.booleans())
def test_permuting_gts_relabels(scene, rng, low_quality):  # §5.3
    anchors, gts = scene["anchors"], scene["gt_boxes"]
    perm = np.array(rng.sample(range(len(gts)), len(gts)), dtype=np.int64)
    base = assign_max_iou(anchors, gts, match_low_quality=low_quality)
    permuted = assign_max_iou(anchors, gts[perm].reshape(-1, 4), match_low_quality=low_quality)
    relabelled = permuted.matched_gt.copy()
    relabelled[relabelled >= 0] = perm[relabelled[relabelled >= 0]]
    np.testing.assert_array_equal(permuted.matched_metric, base.matched_metric)
    differ = np.flatnonzero(relabelled != base.matched_gt)
    if len(differ):  # only IoU ties may move
        ious = box_iou(gts, anchors)
        assert (relabelled[differ] >= 0).all() and (base.matched_gt[differ] >= 0).all()
        np.testing.assert_array_equal(ious[relabelled[differ], differ], ious[base.matched_gt[differ], differ])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"anchors": [[0, 0, 10, np.nan]]}, "anchors"),
        ({"gt_boxes": [[10, 0, 0, 10]]}, "gt_boxes"),
        ({"pos_iou_thr": float("nan")}, "pos_iou_thr"),
        ({"neg_iou_thr": 0.6}, "neg_iou_thr"),
        ({"min_pos_iou": "0"}, "min_pos_iou"),
        ({"match_low_quality": 1}, "match_low_quality"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    anchors = kwargs.pop("anchors", [[0, 0, 10, 10]])
    gts = kwargs.pop("gt_boxes", GT)
    with pytest.raises(ValueError, match=name):
        assign_max_iou(anchors, gts, **kwargs)
