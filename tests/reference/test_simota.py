"""specs/simota.md: worked examples, edge cases, invariants and bad input."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reference.assign.simota import (
    assign_simota,
    classification_cost,
    dynamic_k,
    inside_centers,
    lowest_cost,
    matching_cost,
    prediction_ious,
    prior_strides,
)
from reference.boxes import box_centers, box_iou, points_inside_boxes
from reference.coders import decode_deltas
from reference.conventions import BACKGROUND
from reference.targets import iou_targets
from tests.strategies import anchor_scenes, pred_deltas

# §7.1: four anchors of side 64 (stride 8, centre radius 20 px) on the line y = 20
EXAMPLE_ANCHORS = np.array([[c - 32, -12, c + 32, 52] for c in (10, 30, 50, 90)], dtype=float)
EXAMPLE_GTS = np.array([[0, 0, 40, 40], [20, 0, 60, 40]], dtype=float)
EXAMPLE_LABELS = np.array([0, 1])
EXAMPLE_PREDICTIONS = np.array([[0, 0, 40, 40], [2, 0, 42, 40], [30, 0, 70, 40], [80, 0, 100, 40]], dtype=float)
EXAMPLE_SCORES = np.array([[0.9, 0.1], [0.5, 0.9], [0.5, 0.1], [0.5, 0.5]])


def _bce(p, y):
    """Binary cross-entropy of one probability, logs clamped at -100 (torch's rule)."""
    log_p = max(math.log(p), -100.0) if p > 0 else -100.0
    log_q = max(math.log1p(-p), -100.0) if p < 1 else -100.0
    return -(y * log_p + (1 - y) * log_q)


def _cost(scores, label, iou, inside):
    cls = sum(_bce(p, 1.0 if j == label else 0.0) for j, p in enumerate(scores))
    return cls + 3.0 * -math.log(iou + 1e-8) + (0.0 if inside else 1e5)


# ---------------------------------------------------------------------------------------
# worked examples (§7)


def test_worked_example_costs():  # §7.1
    ious = prediction_ious(EXAMPLE_GTS, EXAMPLE_PREDICTIONS[:3])
    np.testing.assert_allclose(ious, [[1, 19 / 21, 1 / 7], [1 / 3, 11 / 29, 0.6]], rtol=1e-12)
    inside = np.array([[True, True, False], [False, True, True]])
    cost = matching_cost(classification_cost(EXAMPLE_SCORES[:3], EXAMPLE_LABELS), ious, inside, 3.0, 1.0)
    expected = [[_cost(EXAMPLE_SCORES[n], g_label, ious[g, n], inside[g, n]) for n in range(3)] for g, g_label in enumerate(EXAMPLE_LABELS)]
    np.testing.assert_allclose(cost, expected, rtol=1e-12)
    np.testing.assert_allclose(cost[0, :2], [0.2107, 3.2960], atol=5e-5)
    np.testing.assert_allclose(cost[1, 1:], [3.7067, 4.5282], atol=5e-5)
    np.testing.assert_array_equal(dynamic_k(ious, 10), [2, 1])  # 2.048 and 1.313


def test_worked_example_gt_without_positive():  # §7.1: GT 1 loses its only choice
    result = assign_simota(EXAMPLE_ANCHORS, [4], EXAMPLE_GTS, EXAMPLE_LABELS, EXAMPLE_PREDICTIONS, EXAMPLE_SCORES)
    np.testing.assert_array_equal(result.matched_gt, [0, 0, -1, -1])
    np.testing.assert_allclose(result.matched_metric, [1.0, 19 / 21, 0, 0], rtol=1e-12)
    np.testing.assert_array_equal(result.gt_threshold, [2.0, 1.0])
    np.testing.assert_array_equal(result.candidate_index, [[0, 1, -1, -1], [1, -1, -1, -1]])


def test_worked_example_conflict_goes_to_a_gt_that_did_not_choose():  # §7.2
    predictions = EXAMPLE_PREDICTIONS.copy()
    predictions[2] = [40, 0, 80, 40]
    gts = np.concatenate([EXAMPLE_GTS, EXAMPLE_GTS[1:]])
    result = assign_simota(EXAMPLE_ANCHORS, [4], gts, np.array([0, 1, 1]), predictions, EXAMPLE_SCORES)
    np.testing.assert_array_equal(result.gt_threshold, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(result.candidate_index[:, 0], [0, 1, 1])  # GT 0 does not choose anchor 1
    np.testing.assert_array_equal(result.matched_gt, [0, 0, -1, -1])  # ... but gets it: 3.2960 < 3.7067


def test_options_change_the_example():  # §2.3, §2.4
    # without the IoU cost GT 1's cost at anchor 1 (0.80) beats GT 0's (3.00): GT 1 keeps it
    result = assign_simota(EXAMPLE_ANCHORS, [4], EXAMPLE_GTS, EXAMPLE_LABELS, EXAMPLE_PREDICTIONS, EXAMPLE_SCORES, iou_weight=0.0)
    np.testing.assert_array_equal(result.matched_gt, [0, 1, -1, -1])
    # q = 1: k = max(1, floor(max IoU)) = 1 for both
    result = assign_simota(EXAMPLE_ANCHORS, [4], EXAMPLE_GTS, EXAMPLE_LABELS, EXAMPLE_PREDICTIONS, EXAMPLE_SCORES, candidate_topk=1)
    np.testing.assert_array_equal(result.gt_threshold, [1.0, 1.0])
    assert result.candidate_index.shape == (2, 1)
    # radius 0: no centre region, so every pair pays the 1e5 and no anchor outside the boxes is a candidate
    result = assign_simota(EXAMPLE_ANCHORS, [4], EXAMPLE_GTS, EXAMPLE_LABELS, EXAMPLE_PREDICTIONS, EXAMPLE_SCORES, center_radius=0.0)
    np.testing.assert_array_equal(result.matched_gt, [0, 0, -1, -1])


# ---------------------------------------------------------------------------------------
# step helpers (§2)


def test_classification_cost_clamps_like_torch_bce():  # §2.3
    scores = np.array([[0.0, 1.0, 0.3], [1.0, 0.0, 0.999999], [0.25, 0.5, 0.75]])
    labels = np.array([0, 1, 2])
    cost = classification_cost(scores, labels)
    expected = [[sum(_bce(p, 1.0 if j == c else 0.0) for j, p in enumerate(row)) for row in scores] for c in labels]
    np.testing.assert_allclose(cost, expected, rtol=1e-12)
    assert cost[0, 0] == pytest.approx(200.0 + _bce(0.3, 0.0))  # log 0 and log(1 - 1) both clamp to -100
    assert cost[1, 0] == pytest.approx(_bce(0.3, 0.0), abs=1e-12)  # classes 0 and 1 perfectly predicted


def test_dynamic_k_floor_and_minimum():  # §2.4
    ious = np.array([[0.9, 0.9, 0.3, 0.0], [0.1, 0.2, 0.0, 0.0], [1.0, 1.0, 1.0, 0.99]])
    np.testing.assert_array_equal(dynamic_k(ious, 10), [2, 1, 3])
    np.testing.assert_array_equal(dynamic_k(ious, 2), [1, 1, 2])  # q = 2: 1.8, 0.3, 2.0


def test_lowest_cost_ties_to_the_lower_position():  # §2.5
    cost = np.array([[2.0, 1.0, 1.0, 0.5, 1.0]])
    np.testing.assert_array_equal(lowest_cost(cost, np.array([3]), 4), [[3, 1, 2, -1]])


def test_prior_strides_and_centre_region():  # §2.1
    anchors = np.array([[-28, -28, 36, 36], [-56, -56, 72, 72]], dtype=float)  # strides 8, 16 at (4, 4), (8, 8)
    np.testing.assert_array_equal(prior_strides(anchors), [8.0, 16.0])
    gt = np.array([[24, 0, 24, 0.0]])  # a point GT at (24, 0): radius 20 for stride 8, 40 for 16
    inside = inside_centers(gt, box_centers(anchors), prior_strides(anchors), 2.5)
    np.testing.assert_array_equal(inside, [[False, True]])  # |4 - 24| = 20 is not < 20 (strict)


# ---------------------------------------------------------------------------------------
# edge cases (§4)


def test_no_gt_no_candidate_no_anchor():  # §4.1, §4.2
    none = assign_simota(EXAMPLE_ANCHORS, [4], np.zeros((0, 4)), [], EXAMPLE_PREDICTIONS, EXAMPLE_SCORES)
    np.testing.assert_array_equal(none.matched_gt, [BACKGROUND] * 4)
    assert none.gt_threshold.shape == (0,) and none.candidate_index.shape == (0, 4)
    far = assign_simota(EXAMPLE_ANCHORS, [4], [[500, 500, 600, 600]], [0], EXAMPLE_PREDICTIONS, EXAMPLE_SCORES)
    np.testing.assert_array_equal(far.matched_gt, [BACKGROUND] * 4)
    assert np.isnan(far.gt_threshold).all() and (far.candidate_index == -1).all()
    empty = assign_simota(np.zeros((0, 4)), [0], EXAMPLE_GTS, EXAMPLE_LABELS, np.zeros((0, 4)), np.zeros((0, 2)))
    assert empty.matched_gt.shape == (0,) and empty.candidate_index.shape == (2, 0)


def test_zero_area_gt_gets_one_positive_with_target_zero():  # §4.3
    result = assign_simota(EXAMPLE_ANCHORS, [4], [[30, 0, 30, 40]], [1], EXAMPLE_PREDICTIONS, EXAMPLE_SCORES)
    np.testing.assert_array_equal(result.gt_threshold, [1.0])
    assert result.num_positives == 1
    assert result.matched_metric.max() == 0.0


def test_duplicate_gts_all_go_to_the_lower_index():  # §4.4
    gts = np.array([[0, 0, 40, 40], [0, 0, 40, 40]], dtype=float)
    result = assign_simota(EXAMPLE_ANCHORS, [4], gts, [0, 0], EXAMPLE_PREDICTIONS, EXAMPLE_SCORES)
    np.testing.assert_array_equal(result.candidate_index[0], result.candidate_index[1])
    assert result.num_positives >= 1 and (result.matched_gt[result.positive] == 0).all()


def test_non_finite_predictions_have_iou_zero():  # §2.2
    predictions = EXAMPLE_PREDICTIONS.copy()
    predictions[1] = [np.nan, 0, np.inf, 40]
    result = assign_simota(EXAMPLE_ANCHORS, [4], EXAMPLE_GTS, EXAMPLE_LABELS, predictions, EXAMPLE_SCORES)
    np.testing.assert_array_equal(prediction_ious(EXAMPLE_GTS, predictions)[:, 1], [0.0, 0.0])
    assert not np.isnan(result.matched_metric).any()
    if result.matched_gt[1] >= 0:
        assert result.matched_metric[1] == 0.0


# ---------------------------------------------------------------------------------------
# invariants (§6)

SCENES = anchor_scenes(max_side=320, max_boxes=10)


@st.composite
def predictions(draw, scene):
    """Decoded predictions and (A, K) scores for a scene: uniform, constant (ties) or 0/1."""
    anchors = scene["anchors"]
    with np.errstate(over="ignore", invalid="ignore"):
        boxes = decode_deltas(anchors, draw(pred_deltas(len(anchors))))
    num_classes = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "uniform", "constant", "extreme"]))
    if kind == "uniform":
        scores = rng.random((len(anchors), num_classes))
    elif kind == "constant":
        scores = np.full((len(anchors), num_classes), 0.5)
    else:
        scores = rng.integers(0, 2, (len(anchors), num_classes)).astype(float)
    labels = rng.integers(0, num_classes, len(scene["gt_boxes"]))
    return boxes, scores, labels


def _reference_matrices(scene, boxes, scores, labels):
    """Independent (G, A) IoUs, costs and candidate mask from the spec's formulas."""
    anchors, gts = scene["anchors"], scene["gt_boxes"]
    centers = box_centers(anchors)
    strides = (anchors[:, 2] - anchors[:, 0]) / 8
    finite = np.isfinite(boxes).all(axis=1)
    ious = np.zeros((len(gts), len(anchors)))
    if finite.any():
        ious[:, finite] = box_iou(gts, boxes[finite])
    in_box = points_inside_boxes(centers, gts, 0.0)
    gc = box_centers(gts)
    in_center = np.stack([(np.abs(centers[:, 0] - x) < 2.5 * strides) & (np.abs(centers[:, 1] - y) < 2.5 * strides) for x, y in gc]).reshape(len(gts), -1)
    with np.errstate(divide="ignore"):
        log_p, log_q = np.maximum(np.log(scores), -100), np.maximum(np.log1p(-scores), -100)
    onehot = np.eye(scores.shape[1])[labels]  # (G, K)
    cls = -(onehot[:, None, :] * log_p[None] + (1 - onehot[:, None, :]) * log_q[None]).sum(-1)
    cost = cls + 3 * -np.log(ious + 1e-8) + 1e5 * ~(in_box & in_center)
    return ious, cost, (in_box | in_center).any(axis=0)


@settings(max_examples=40, deadline=None)
@given(SCENES, st.data())
def test_invariants(scene, data):  # §6.1-§6.6
    boxes, scores, labels = data.draw(predictions(scene))
    anchors, gts, counts = scene["anchors"], scene["gt_boxes"], scene["num_anchors_per_level"]
    result = assign_simota(anchors, counts, gts, labels, boxes, scores)
    assert not np.isnan(result.matched_metric).any()
    assert result.candidate_index.shape == (len(gts), min(10, len(anchors)))
    if len(gts) == 0:
        assert (result.matched_gt == BACKGROUND).all()
        return
    ious, cost, candidate = _reference_matrices(scene, boxes, scores, labels)
    positive = np.flatnonzero(result.matched_gt >= 0)
    owner = result.matched_gt[positive]
    assert candidate[positive].all()  # §6.2: positives are candidates
    if not candidate.any():
        assert np.isnan(result.gt_threshold).all() and positive.size == 0
        return
    # §6.3: the soft target is the IoU of the prediction with the assigned GT (targets.iou_targets)
    np.testing.assert_allclose(result.matched_metric[positive], ious[owner, positive], rtol=0, atol=1e-12)
    finite = np.isfinite(boxes).all(axis=1)
    targets = iou_targets(np.where(finite[:, None], boxes, 0.0), result.matched_gt, gts)
    np.testing.assert_allclose(targets[positive[finite[positive]]], result.matched_metric[positive[finite[positive]]], rtol=0, atol=1e-12)
    # §6.4: k and the selections are the k cheapest candidates
    cand = np.flatnonzero(candidate)
    q = min(10, len(cand))
    chooser_count = np.zeros(len(anchors), dtype=int)
    for g in range(len(gts)):
        k = max(1, math.floor(sum(sorted(ious[g, cand], reverse=True)[:q])))  # summed largest first
        assert result.gt_threshold[g] == k
        chosen = result.candidate_index[g][result.candidate_index[g] >= 0]
        assert len(chosen) == result.gt_threshold[g]
        assert candidate[chosen].all()
        assert (np.diff(cost[g, chosen]) >= -1e-9).all()  # in cost order
        others = np.setdiff1d(cand, chosen)
        if others.size:
            assert cost[g, others].min() >= cost[g, chosen].max() - 1e-9
        chooser_count[chosen] += 1
    for a, g in zip(positive, owner):  # §6.5: chosen by g alone, or contested and cheapest for g
        if chooser_count[a] == 1:
            assert a in result.candidate_index[g]
        else:
            assert chooser_count[a] >= 2 and cost[g, a] <= cost[:, a].min() + 1e-9
    assert (chooser_count[chooser_count == 1] == 1).all()
    assert ((chooser_count >= 1) == (result.matched_gt >= 0)).all()  # every chosen anchor is positive
    for g in range(len(gts)):  # §6.6: a GT without positive lost every choice to a cheaper GT
        if not (result.matched_gt == g).any():
            for a in result.candidate_index[g][result.candidate_index[g] >= 0]:
                h = result.matched_gt[a]
                assert h != g and chooser_count[a] >= 2 and cost[h, a] <= cost[g, a] + 1e-9


@settings(max_examples=25, deadline=None)
@given(SCENES, st.data())
def test_permuting_gts_permutes_the_assignment(scene, data):  # §6.7
    boxes, scores, labels = data.draw(predictions(scene))
    anchors, gts, counts = scene["anchors"], scene["gt_boxes"], scene["num_anchors_per_level"]
    assume(len(gts) >= 2)
    result = assign_simota(anchors, counts, gts, labels, boxes, scores)
    _, cost, _ = _reference_matrices(scene, boxes, scores, labels)
    contested = np.flatnonzero(np.bincount(result.candidate_index[result.candidate_index >= 0], minlength=len(anchors)) >= 2)
    column_min = cost[:, contested].min(axis=0)
    assume(((cost[:, contested] == column_min).sum(axis=0) == 1).all())  # no tie for a contested anchor
    perm = np.array(data.draw(st.permutations(range(len(gts)))))
    permuted = assign_simota(anchors, counts, gts[perm], labels[perm], boxes, scores)
    inverse = np.argsort(perm)
    expected = np.where(result.matched_gt >= 0, inverse[np.maximum(result.matched_gt, 0)], BACKGROUND)
    np.testing.assert_array_equal(permuted.matched_gt, expected)
    np.testing.assert_array_equal(permuted.matched_metric, result.matched_metric)
    np.testing.assert_array_equal(permuted.gt_threshold, result.gt_threshold[perm])
    np.testing.assert_array_equal(permuted.candidate_index, result.candidate_index[perm])


def test_permutation_exception_with_tied_duplicates():  # §6.7: ties go to the lower index
    gts = np.array([[0, 0, 40, 40], [0, 0, 40, 40]], dtype=float)
    result = assign_simota(EXAMPLE_ANCHORS, [4], gts, [0, 0], EXAMPLE_PREDICTIONS, EXAMPLE_SCORES)
    swapped = assign_simota(EXAMPLE_ANCHORS, [4], gts[::-1], [0, 0], EXAMPLE_PREDICTIONS, EXAMPLE_SCORES)
    np.testing.assert_array_equal(result.matched_gt, swapped.matched_gt)  # still GT 0, not the permuted GT 1


# ---------------------------------------------------------------------------------------
# bad input (§4.5)


@pytest.mark.parametrize(
    "change, name",
    [
        ({"pred_boxes": np.zeros((3, 4))}, "pred_boxes"),
        ({"pred_boxes": np.array([[0, 0, 1, 1]] * 3 + [[0, 5, 1, 4]])}, "pred_boxes: row 3"),
        ({"pred_scores": np.zeros((3, 2))}, "pred_scores"),
        ({"pred_scores": np.zeros((4, 0))}, "pred_scores"),
        ({"pred_scores": np.array([[0.5, 1.5]] * 4)}, "pred_scores: row 0"),
        ({"pred_scores": np.array([[0.5, np.nan]] * 4)}, "pred_scores"),
        ({"gt_labels": np.array([0, 2])}, "gt_labels: row 1"),
        ({"gt_labels": np.array([0.0, 1.0])}, "gt_labels"),
        ({"gt_labels": np.array([0])}, "gt_labels"),
        ({"gt_boxes": [[0, 0, np.inf, 10], [0, 0, 1, 1]]}, "gt_boxes"),
        ({"center_radius": -1.0}, "center_radius"),
        ({"candidate_topk": 0}, "candidate_topk"),
        ({"candidate_topk": True}, "candidate_topk"),
        ({"iou_weight": float("nan")}, "iou_weight"),
        ({"cls_weight": -0.5}, "cls_weight"),
        ({"num_anchors_per_level": [3]}, "num_anchors_per_level"),
    ],
)
def test_bad_input_names_the_argument(change, name):
    positional = {
        "anchors": EXAMPLE_ANCHORS,
        "num_anchors_per_level": [4],
        "gt_boxes": EXAMPLE_GTS,
        "gt_labels": EXAMPLE_LABELS,
        "pred_boxes": EXAMPLE_PREDICTIONS,
        "pred_scores": EXAMPLE_SCORES,
    }
    options = {}
    for key, value in change.items():
        (positional if key in positional else options)[key] = value
    with pytest.raises(ValueError, match=name):
        assign_simota(*positional.values(), **options)
