"""specs/dsl.md: worked example, cost formula, tie and conflict rules, edge cases,
invariants and bad input."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reference.assign.dsl import (
    anchor_strides,
    assign_dsl,
    dynamic_ks,
    iou_cost,
    lowest_cost_gts,
    negative_costs,
    predicted_ious,
    resolve_conflicts,
    select_lowest_costs,
    soft_center_prior,
    soft_classification_cost,
    valid_priors,
)
from reference.boxes import box_centers, box_iou
from reference.coders import decode_deltas
from tests.strategies import anchor_scenes, pred_deltas

# §7: one level of stride 8 (anchor side 64), centres x = 4, 12, 20, 28, 36 at y = 4
XS = np.array([4.0, 12.0, 20.0, 28.0, 36.0])
ANCHORS = np.stack([XS - 32, np.full(5, -28.0), XS + 32, np.full(5, 36.0)], axis=1)
GTS = np.array([[0.0, 0.0, 16.0, 8.0], [8.0, 0.0, 32.0, 8.0]])
LABELS = np.array([0, 1])
PREDS = np.array([[0, 0, 4, 8], [8, 0, 24, 8], [8, 0, 32, 8], [16, 0, 32, 8], [8, 0, 32, 8]], dtype=float)
SCORES = np.array([[0.8, 0.1], [0.5, 0.5], [0.2, 0.6], [0.1, 0.1], [0.9, 0.9]])


def _costs(anchors, gts, labels, preds, scores, soft_center_radius=3.0, iou_weight=3.0):
    """valid_index (V,), IoUs (G, V) and costs (G, V) from the reference's step helpers."""
    valid_index = np.flatnonzero(valid_priors(gts, anchors))
    ious = predicted_ious(gts, preds[valid_index])
    scores = scores[valid_index]
    cls_cost = soft_classification_cost(ious, scores, negative_costs(scores), labels)
    centers = box_centers(anchors[valid_index])
    center_prior = soft_center_prior(gts, centers, anchor_strides(anchors)[valid_index], soft_center_radius)
    return valid_index, ious, cls_cost + iou_cost(ious, iou_weight) + center_prior


def _bce(p, t):
    """torch's binary_cross_entropy of a probability, written out with math.log."""
    log_p = max(math.log(p), -100.0) if p > 0 else -100.0
    log_not_p = max(math.log(1 - p), -100.0) if p < 1 else -100.0
    return -(t * log_p + (1 - t) * log_not_p)


def _mmdet_cost(anchor, gt, label, pred, scores):
    """One pair's cost as mmdetection writes it: BCE * |soft label - p|^2 summed over every
    class, + 3 * -log(IoU + 1e-7), + 10 ** (Euclidean distance / stride - 3)."""
    iou = box_iou(gt[None], pred[None])[0, 0] if np.isfinite(pred).all() else 0.0
    cls_cost = sum(_bce(p, iou if j == label else 0.0) * abs((iou if j == label else 0.0) - p) ** 2 for j, p in enumerate(scores))
    ax, ay = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    gx, gy = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2
    stride = (anchor[2] - anchor[0]) / 8
    return cls_cost + -math.log(iou + 1e-7) * 3.0 + 10.0 ** (math.hypot(ax - gx, ay - gy) / stride - 3.0)


@st.composite
def dsl_inputs(draw, max_side=320, max_boxes=10, min_boxes=0):
    """A scene with labels, decoded predictions (garbage ones may be NaN/Inf) and scores."""
    scene = draw(anchor_scenes(max_side=max_side, max_boxes=max_boxes, min_boxes=min_boxes, max_levels=3))
    anchors, gts = scene["anchors"], scene["gt_boxes"]
    num_classes = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    deltas = draw(pred_deltas(len(anchors)))
    with np.errstate(over="ignore", invalid="ignore"):
        preds = decode_deltas(anchors, deltas)
    if len(gts) and draw(st.booleans()):  # good predictions: a jittered GT near each prior
        nearest = np.argmin(np.abs(box_centers(anchors)[:, None, :] - box_centers(gts)[None]).sum(-1), axis=1)
        jitter = rng.normal(0, 2, (len(anchors), 4))
        preds = gts[nearest] + np.concatenate([np.minimum(jitter[:, :2], 0), np.maximum(jitter[:, 2:], 0)], axis=1)
    mode = draw(st.sampled_from(["uniform", "peaked", "constant", "saturated"]))
    shape = (len(anchors), num_classes)
    scores = {
        "uniform": lambda: rng.uniform(0, 1, shape),
        "peaked": lambda: rng.uniform(0, 1, shape) ** 6,
        "constant": lambda: np.full(shape, 0.25),
        "saturated": lambda: rng.choice([0.0, 0.5, 1.0], size=shape),
    }[mode]()
    labels = rng.integers(0, num_classes, len(gts))
    return {"anchors": anchors, "counts": scene["num_anchors_per_level"], "gts": gts, "labels": labels, "preds": preds, "scores": scores}


def _assign(inputs, **options):
    return assign_dsl(inputs["anchors"], inputs["counts"], inputs["gts"], inputs["labels"], inputs["preds"], inputs["scores"], **options)


def _expected_ks(ious, topk=13):
    largest = sorted(ious.tolist(), reverse=True)[:topk]
    total = 0.0
    for value in largest:
        total += value
    return max(1, math.floor(total))


# ---------------------------------------------------------------------------------------
# worked example (§7)


def test_worked_example():
    result = assign_dsl(ANCHORS, [5], GTS, LABELS, PREDS, SCORES)
    np.testing.assert_array_equal(result.matched_gt, [-1, 1, 1, -1, -1])
    np.testing.assert_allclose(result.matched_metric, [0, 2 / 3, 1, 0, 0], rtol=1e-15)
    np.testing.assert_array_equal(result.candidate_index, [[1, -1, -1, -1, -1], [2, 1, -1, -1, -1]])
    assert np.isnan(result.gt_threshold).all() and result.gt_threshold.shape == (2,)


def test_worked_example_steps():
    valid_index, ious, cost = _costs(ANCHORS, GTS, LABELS, PREDS, SCORES)
    np.testing.assert_array_equal(valid_index, [0, 1, 2, 3])  # x = 36 is inside no GT
    np.testing.assert_allclose(ious, [[1 / 4, 1 / 3, 1 / 4, 0], [0, 2 / 3, 1, 2 / 3]], rtol=1e-15)
    np.testing.assert_array_equal(dynamic_ks(ious, 13), [1, 2])
    expected = [[4.54511, 3.49154, 4.52179, 48.67262], [49.48538, 1.41894, 0.09166, 1.73165]]
    np.testing.assert_allclose(cost, expected, atol=5e-6)
    # GT 1, prior 1, by hand: class 0 as a negative + class 1 with soft label 2/3
    by_hand = -math.log(0.5) * 0.25 + -math.log(0.5) * (1 / 6) ** 2 - 3 * math.log(2 / 3 + 1e-7) + 0.01
    assert cost[1, 1] == pytest.approx(by_hand, rel=1e-12)


def test_cost_matches_mmdetection_formula_summed_over_classes():  # §2.3-§2.6
    rng = np.random.default_rng(3)
    for num_classes in (1, 3):
        anchors = np.array([[x - 32, y - 32, x + 32, y + 32] for x in (4, 12, 20) for y in (4, 12)], dtype=float)
        anchors = np.concatenate([anchors, [[-60, -60, 68, 68]]])  # a stride-16 anchor
        gts = np.array([[0, 0, 30, 20], [5, 2, 15, 18], [10, 10, 10, 30]], dtype=float)  # the last is zero-area
        labels = rng.integers(0, num_classes, 3)
        centers = box_centers(anchors)
        preds = np.concatenate([centers - rng.uniform(1, 20, (7, 2)), centers + rng.uniform(1, 20, (7, 2))], axis=1)
        preds[2] = [np.nan, 0, 1, 1]
        scores = rng.uniform(0, 1, (7, num_classes))
        scores[0, 0], scores[1, -1] = 0.0, 1.0  # the -100 clamp
        valid_index, _, cost = _costs(anchors, gts, labels, preds, scores)
        assert len(valid_index) == 7
        for g in range(3):
            for position, a in enumerate(valid_index):
                assert cost[g, position] == pytest.approx(_mmdet_cost(anchors[a], gts[g], labels[g], preds[a], scores[a]), rel=1e-12, abs=1e-12)


def test_valid_priors_are_strictly_inside():  # §2.1: a centre on a GT edge is not inside
    np.testing.assert_array_equal(valid_priors(np.array([[4.0, 0.0, 20.0, 8.0]]), ANCHORS), [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(valid_priors(np.array([[0.0, 4.0, 40.0, 9.0]]), ANCHORS), [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(valid_priors(np.array([[0.0, 3.9, 36.1, 4.1]]), ANCHORS), [1, 1, 1, 1, 1])
    result = assign_dsl(ANCHORS, [5], [[4.0, 0.0, 20.0, 8.0]], [0], PREDS, SCORES)
    np.testing.assert_array_equal(result.matched_gt, [-1, 0, -1, -1, -1])


def test_soft_center_prior_is_euclidean_in_strides():  # §2.5
    gts = np.array([[0.0, 0.0, 20.0, 20.0]])
    centers = np.array([[10.0 + 24.0, 10.0 + 32.0], [10.0, 10.0]])  # 40 px away; the centre
    prior = soft_center_prior(gts, centers, np.array([8.0, 16.0]), 3.0)
    np.testing.assert_allclose(prior, [[10.0 ** (5 - 3), 10.0 ** -3]], rtol=1e-14)
    np.testing.assert_array_equal(anchor_strides(np.array([[0.0, 0, 64, 64], [-4.0, 0, 124, 128]])), [8.0, 16.0])


# ---------------------------------------------------------------------------------------
# tie and conflict rules (§2.7, §2.8)


def test_selection_ties_go_to_the_lower_position():
    cost = np.array([[2.0, 1.0, 1.0, 0.5, 1.0]])
    np.testing.assert_array_equal(select_lowest_costs(cost, np.array([3]), 4), [[3, 1, 2, -1]])


def test_lowest_cost_gt_ties_go_to_the_lower_gt():
    cost = np.array([[1.0, 3.0], [1.0, 2.0], [0.5, 2.0]])
    np.testing.assert_array_equal(lowest_cost_gts(cost), [2, 1])


def test_conflict_goes_to_the_lowest_cost_over_all_gts():
    # prior 0 is taken by GTs 0 and 1, but GT 2 (which took only prior 1) has the lowest
    # cost there: it gets prior 0 too, so it has 2 > k_2 = 1 positives and GTs 0, 1 none
    cost = np.array([[1.0, 5.0, 9.0], [2.0, 5.0, 9.0], [0.5, 0.1, 9.0]])
    positions = select_lowest_costs(cost, np.array([1, 1, 1]), 3)
    np.testing.assert_array_equal(positions[:, 0], [0, 0, 1])
    np.testing.assert_array_equal(resolve_conflicts(positions, lowest_cost_gts(cost), 3), [2, 2, -1])
    # a prior taken by one GT stays with it although another GT has a lower cost there
    cost = np.array([[1.0, 3.0], [0.2, 0.1]])
    positions = select_lowest_costs(cost, np.array([1, 1]), 2)
    np.testing.assert_array_equal(resolve_conflicts(positions, lowest_cost_gts(cost), 2), [0, 1])


def test_dynamic_k_sums_the_topk_largest_ious():
    ious = np.array([[0.9, 0.6, 0.55, 0.2], [0.1, 0.2, 0.3, 0.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(dynamic_ks(ious, 13), [2, 1, 4])
    np.testing.assert_array_equal(dynamic_ks(ious, 2), [1, 1, 2])


# ---------------------------------------------------------------------------------------
# edge cases (§4)


def test_no_gt_no_valid_prior_no_anchor():
    none = assign_dsl(ANCHORS, [5], np.zeros((0, 4)), [], PREDS, SCORES)
    np.testing.assert_array_equal(none.matched_gt, [-1] * 5)
    assert none.candidate_index.shape == (0, 5) and none.gt_threshold.shape == (0,)
    outside = assign_dsl(ANCHORS, [5], [[100.0, 100.0, 120.0, 120.0], [0, 0, 0, 50]], [0, 1], PREDS, SCORES)
    np.testing.assert_array_equal(outside.matched_gt, [-1] * 5)
    np.testing.assert_array_equal(outside.candidate_index, np.full((2, 5), -1))
    assert (outside.matched_metric == 0).all()
    empty = assign_dsl(np.zeros((0, 4)), [0], GTS, LABELS, np.zeros((0, 4)), np.zeros((0, 2)))
    assert empty.matched_gt.shape == (0,) and empty.candidate_index.shape == (2, 0)


def test_zero_area_gt_selects_one_prior():  # §4.3
    gts = np.concatenate([GTS[:1], [[30.0, 0.0, 30.0, 8.0]]])  # the zero-area GT holds no centre
    result = assign_dsl(ANCHORS, [5], gts, [0, 0], PREDS, SCORES)
    valid_index, ious, _ = _costs(ANCHORS, gts, np.array([0, 0]), PREDS, SCORES)
    np.testing.assert_array_equal(valid_index, [0, 1])
    assert (ious[1] == 0).all()
    assert (result.candidate_index[1] >= 0).sum() == 1  # k = max(1, 0)
    taken = result.candidate_index[1, 0]
    if taken not in result.candidate_index[0]:
        assert result.matched_gt[taken] == 1 and result.matched_metric[taken] == 0


def test_duplicate_gt_gets_no_positive():  # §4.4
    gts = np.concatenate([GTS, GTS[1:]])
    result = assign_dsl(ANCHORS, [5], gts, [0, 1, 1], PREDS, SCORES)
    np.testing.assert_array_equal(result.candidate_index[1], result.candidate_index[2])
    assert (result.matched_gt != 2).all()
    np.testing.assert_array_equal(result.matched_gt, [-1, 1, 1, -1, -1])


def test_non_finite_prediction_has_iou_zero():  # §2.2, §4.5
    preds = PREDS.copy()
    preds[2] = [np.nan, 0, np.inf, 8]
    result = assign_dsl(ANCHORS, [5], GTS, LABELS, preds, SCORES)
    assert np.isfinite(result.matched_metric).all()
    _, ious, _ = _costs(ANCHORS, GTS, LABELS, preds, SCORES)
    np.testing.assert_array_equal(ious[:, 2], [0.0, 0.0])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pred_scores": SCORES[:4]}, "pred_scores: expected shape"),
        ({"pred_scores": np.zeros((5, 0))}, "pred_scores: expected shape"),
        ({"pred_scores": SCORES * 2}, r"pred_scores: row 0 class 1 is 0.2|pred_scores: row 0 class 0 is 1.6"),
        ({"pred_scores": np.where(SCORES == 0.5, np.nan, SCORES)}, "pred_scores: row 1"),
        ({"gt_labels": [0, 2]}, r"gt_labels: row 1 is 2, expected a class in 0..1"),
        ({"gt_labels": [0.0, 1.0]}, "gt_labels: expected a \\(2,\\) integer"),
        ({"gt_labels": [0]}, "gt_labels: expected a \\(2,\\) integer"),
        ({"pred_boxes": np.where(np.arange(5)[:, None] == 3, [[9, 0, 4, 8]], PREDS)}, "pred_boxes: row 3 has x2 < x1"),
        ({"anchors": np.where(np.arange(5)[:, None] == 1, [[12, 4, 12, 4]], ANCHORS)}, "anchors: row 1 has zero width"),
        ({"topk": 0}, "topk"),
        ({"iou_weight": -1.0}, "iou_weight"),
        ({"soft_center_radius": math.inf}, "soft_center_radius"),
        ({"num_anchors_per_level": [4]}, "num_anchors_per_level"),
    ],
)
def test_bad_input(change, message):
    arguments = {"anchors": ANCHORS, "num_anchors_per_level": [5], "gt_boxes": GTS, "gt_labels": LABELS,
                 "pred_boxes": PREDS, "pred_scores": SCORES}
    arguments.update({k: v for k, v in change.items() if k in arguments})
    options = {k: v for k, v in change.items() if k not in arguments}
    with pytest.raises(ValueError, match=message):
        assign_dsl(*arguments.values(), **options)


# ---------------------------------------------------------------------------------------
# invariants (§6)


@settings(max_examples=60, deadline=None)
@given(inputs=dsl_inputs())
def test_invariants(inputs):
    result = _assign(inputs)
    matched, metric, candidates = result.matched_gt, result.matched_metric, result.candidate_index
    num_anchors, num_gts = len(inputs["anchors"]), len(inputs["gts"])
    assert matched.dtype == np.int64 and candidates.shape == (num_gts, min(13, num_anchors))
    assert ((matched >= -1) & (matched < num_gts)).all()  # 1
    assert np.isfinite(metric).all() and ((metric >= 0) & (metric <= 1)).all()
    assert (metric[matched < 0] == 0).all()
    assert np.isnan(result.gt_threshold).all()
    valid_index, ious, cost = _costs(inputs["anchors"], inputs["gts"], inputs["labels"], inputs["preds"], inputs["scores"])
    if num_gts == 0 or len(valid_index) == 0:  # 6
        assert (matched == -1).all() and (candidates == -1).all()
        return
    position = {int(a): p for p, a in enumerate(valid_index)}
    positives = np.flatnonzero(matched >= 0)
    assert set(positives.tolist()) <= set(position)  # 2: centre inside some GT
    for a in positives:
        assert metric[a] == ious[matched[a], position[a]]
    claims = {}
    for g in range(num_gts):  # 3
        row = candidates[g]
        k = _expected_ks(ious[g])
        assert (row[:k] >= 0).all() and (row[k:] == -1).all()
        keys = [(cost[g, position[a]], position[a]) for a in row[:k]]
        assert keys == sorted(keys) and len(set(row[:k].tolist())) == k
        for p in range(len(valid_index)):
            if valid_index[p] not in row[:k]:
                assert (cost[g, p], p) > keys[-1]
        for a in row[:k]:
            claims.setdefault(int(a), []).append(g)
    assert set(positives.tolist()) == set(claims)  # 4
    for a, gts in claims.items():
        column = cost[:, position[a]]
        expected = gts[0] if len(gts) == 1 else int(np.flatnonzero(column == column.min())[0])
        assert matched[a] == expected
    assert len(positives) >= max(_expected_ks(ious[g]) for g in range(num_gts))  # 5


@settings(max_examples=25, deadline=None)
@given(inputs=dsl_inputs(), seed=st.integers(0, 2**32 - 1))
def test_invalid_priors_are_never_read(inputs, seed):
    result = _assign(inputs)
    invalid = ~valid_priors(inputs["gts"], inputs["anchors"]) if len(inputs["gts"]) else np.ones(len(inputs["anchors"]), bool)
    rng = np.random.default_rng(seed)
    preds, scores = inputs["preds"].copy(), inputs["scores"].copy()
    preds[invalid] = [0.0, 0.0, 1.0, 1.0]
    scores[invalid] = rng.uniform(0, 1, scores[invalid].shape)
    changed = _assign(dict(inputs, preds=preds, scores=scores))
    np.testing.assert_array_equal(changed.matched_gt, result.matched_gt)
    np.testing.assert_array_equal(changed.matched_metric, result.matched_metric)
    np.testing.assert_array_equal(changed.candidate_index, result.candidate_index)


@settings(max_examples=25, deadline=None)
@given(inputs=dsl_inputs(min_boxes=2), seed=st.integers(0, 2**32 - 1))
def test_permuting_gts_permutes_the_assignment(inputs, seed):  # 7
    _, _, cost = _costs(inputs["anchors"], inputs["gts"], inputs["labels"], inputs["preds"], inputs["scores"])
    assume(all((column == column.min()).sum() == 1 for column in cost.T))  # no exact lowest-cost tie
    permutation = np.random.default_rng(seed).permutation(len(inputs["gts"]))
    result = _assign(inputs)
    permuted = _assign(dict(inputs, gts=inputs["gts"][permutation], labels=inputs["labels"][permutation]))
    expected = np.where(permuted.matched_gt >= 0, permutation[np.maximum(permuted.matched_gt, 0)], -1)
    np.testing.assert_array_equal(expected, result.matched_gt)
    np.testing.assert_array_equal(permuted.matched_metric, result.matched_metric)
    np.testing.assert_array_equal(permuted.candidate_index, result.candidate_index[permutation])
