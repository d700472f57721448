"""specs/dynamic_atss.md: worked examples, edge cases, invariants and bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.assign.atss import assign_atss, mean_plus_std_threshold
from reference.assign.dynamic_atss import assign_dynamic_atss, combined_threshold, dynamic_weight
from reference.boxes import box_centers, box_iou, points_inside_boxes
from reference.coders import decode_deltas, encode_deltas
from reference.conventions import ATSS_INSIDE_EPS, BACKGROUND
from reference.targets import iou_targets
from tests.strategies import anchor_scenes, pred_deltas

GT = np.array([[0.0, 0.0, 100.0, 100.0]])
# §8.1: anchors with AIoU .6, .5, .3, .1 (centres inside the GT) and their predictions with
# PIoU .2, .7, .4, 0
EXAMPLE_ANCHORS = np.array([[0, 0, 100, h] for h in (60, 50, 30, 10)], dtype=float)
EXAMPLE_PREDICTIONS = np.array([[0, 0, 100, 20], [0, 0, 100, 70], [0, 0, 100, 40], [500, 500, 600, 600]], dtype=float)
A_IOUS = np.array([[0.6, 0.5, 0.3, 0.1]])
P_IOUS = np.array([[0.2, 0.7, 0.4, 0.0]])


def _decode(anchors, deltas):
    """The predicted boxes of raw deltas, as the training pipeline decodes them (garbage
    deltas may overflow to Inf / NaN)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return decode_deltas(anchors, deltas)


def _std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# ---------------------------------------------------------------------------------------
# worked examples (§8)


def test_sum_of_stds_threshold_values():  # §2.4, §8.1
    threshold = combined_threshold(P_IOUS, A_IOUS, 1.0, 1.0)
    expected = 0.325 + math.sqrt(0.2675 / 3) + 0.375 + math.sqrt(0.1475 / 3)
    np.testing.assert_allclose(threshold, [expected], rtol=1e-12)
    np.testing.assert_allclose(threshold, [1.22034], atol=5e-6)
    combined = (P_IOUS + A_IOUS)[0]
    assert combined.max() < threshold[0]  # no positive
    naive = combined.mean() + _std(combined.tolist())
    np.testing.assert_allclose(naive, 0.7 + math.sqrt(0.62 / 3), rtol=1e-12)
    assert combined.max() >= naive  # the naive threshold would give one


def test_sum_of_stds_scene_has_no_positive():  # §8.1 realised with boxes
    deltas = encode_deltas(EXAMPLE_ANCHORS, EXAMPLE_PREDICTIONS)
    np.testing.assert_allclose(box_iou(GT, EXAMPLE_ANCHORS), A_IOUS, rtol=1e-12)
    np.testing.assert_allclose(box_iou(GT, decode_deltas(EXAMPLE_ANCHORS, deltas)), P_IOUS, atol=1e-12)
    result = assign_dynamic_atss(EXAMPLE_ANCHORS, [4], GT, decode_deltas(EXAMPLE_ANCHORS, deltas))
    np.testing.assert_allclose(result.gt_threshold, [1.22034], atol=5e-6)
    assert result.num_positives == 0
    # the same scene under ATSS: threshold .375 + .2217, anchors 0 (.6) is positive
    assert assign_atss(EXAMPLE_ANCHORS, [4], GT).num_positives == 1


def test_mmdetection_scene_with_zero_deltas():  # §8.2
    priors = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [5, 5, 15, 15], [32, 32, 38, 42]], dtype=float)
    gts = np.array([[0, 0, 10, 9], [0, 10, 10, 19]], dtype=float)
    result = assign_dynamic_atss(priors, [4], gts, decode_deltas(priors, np.zeros((4, 4))))
    np.testing.assert_array_equal(result.matched_gt, [0, -1, -1, -1])
    np.testing.assert_allclose(result.matched_metric, [1.8, 0, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(result.gt_threshold, [2 * 0.68836, 2 * 0.11364], atol=1e-4)


def test_several_gts_tie_broken_by_combined_iou_not_anchor_iou():  # §2.5
    anchor = np.array([[0.0, 0.0, 10.0, 10.0]])
    gts = np.array([[0.0, 0.0, 9.0, 10.0], [3.0, 0.0, 13.0, 10.0]])  # AIoU .9 and 7/13
    deltas = encode_deltas(anchor, [[3.0, 0.0, 13.0, 10.0]])  # the prediction is GT 1
    np.testing.assert_allclose(deltas, [[3.0, 0.0, 0.0, 0.0]], atol=1e-15)
    # single candidate per GT -> thresholds equal the CIoUs: positive for both GTs
    dynamic = assign_dynamic_atss(anchor, [1], gts, decode_deltas(anchor, deltas))
    atss = assign_atss(anchor, [1], gts)
    np.testing.assert_array_equal(atss.matched_gt, [0])  # AIoU .9 > .538
    np.testing.assert_array_equal(dynamic.matched_gt, [1])  # CIoU 7/13 + 1 > .9 + 6/13
    np.testing.assert_allclose(dynamic.matched_metric, [7 / 13 + 1.0], rtol=1e-12)


def test_dynamic_weight_schedules():  # §5, §8.3
    assert dynamic_weight("up", 250, 1000) == 0.25
    assert dynamic_weight("down", 250, 1000) == 0.75
    assert dynamic_weight("up", 0, 10) == 0.0
    assert dynamic_weight("down", 10, 10) == 0.0


@pytest.mark.parametrize(
    "args, name",
    [
        (("sideways", 1, 10), "schedule"),
        (("up", -1, 10), "iteration"),
        (("up", 11, 10), "iteration"),
        (("up", 1.5, 10), "iteration"),
        (("up", 0, 0), "max_iterations"),
        (("down", 0, True), "max_iterations"),
    ],
)
def test_dynamic_weight_bad_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        dynamic_weight(*args)


# ---------------------------------------------------------------------------------------
# edge cases (§4)


def test_no_gt_and_no_anchor():  # §4.1, §4.2
    none = assign_dynamic_atss(EXAMPLE_ANCHORS, [2, 2], np.zeros((0, 4)), EXAMPLE_PREDICTIONS, topk=1)
    np.testing.assert_array_equal(none.matched_gt, [-1] * 4)
    assert none.gt_threshold.shape == (0,) and none.candidate_index.shape == (0, 2)
    empty = assign_dynamic_atss(np.zeros((0, 4)), [0], GT, np.zeros((0, 4)))
    assert empty.matched_gt.shape == (0,) and empty.matched_gt.dtype == np.int64
    assert empty.candidate_index.shape == (1, 0) and np.isnan(empty.gt_threshold).all()


def test_non_finite_predictions_have_zero_piou():  # §2.2
    deltas = encode_deltas(EXAMPLE_ANCHORS, EXAMPLE_PREDICTIONS)
    deltas[3] = [np.nan, 0, np.inf, 0]  # P = 0 already; now NaN: same result
    predictions = _decode(EXAMPLE_ANCHORS, deltas)
    assert not np.isfinite(predictions[3]).all()
    result = assign_dynamic_atss(EXAMPLE_ANCHORS, [4], GT, predictions)
    np.testing.assert_allclose(result.gt_threshold, [1.22034], atol=5e-6)
    garbage = np.full((4, 4), np.nan)
    nan_result = assign_dynamic_atss(EXAMPLE_ANCHORS, [4], GT, garbage)
    atss = assign_atss(EXAMPLE_ANCHORS, [4], GT)
    np.testing.assert_array_equal(nan_result.matched_gt, atss.matched_gt)
    np.testing.assert_array_equal(nan_result.gt_threshold, atss.gt_threshold)
    infinite = np.array([[-np.inf, 0, np.inf, 100]] * 4)  # finite-looking order, not finite
    np.testing.assert_array_equal(assign_dynamic_atss(EXAMPLE_ANCHORS, [4], GT, infinite).matched_gt, atss.matched_gt)


def test_finite_inverted_prediction_is_an_error():  # §1, §4.6
    predictions = EXAMPLE_PREDICTIONS.copy()
    predictions[2] = [10, 0, 5, 40]  # x2 < x1
    with pytest.raises(ValueError, match=r"pred_boxes: row 2 has x2 < x1"):
        assign_dynamic_atss(EXAMPLE_ANCHORS, [4], GT, predictions)
    predictions[2] = [0, np.nan, 100, -5]  # not finite: allowed, whatever the order
    assign_dynamic_atss(EXAMPLE_ANCHORS, [4], GT, predictions)


def test_decoded_deltas_are_never_inverted():  # §1: why the check never fires in training
    rng = np.random.default_rng(0)
    anchors = np.array([[0, 0, 8, 8], [100, 50, 164, 178], [1e4, 1e4, 1e4 + 1, 1e4 + 1]], dtype=float)
    for scale in (0.1, 10.0, 1e3, 1e6):
        boxes = _decode(np.repeat(anchors, 200, axis=0), rng.normal(0, scale, (600, 4)))
        finite = np.isfinite(boxes).all(axis=1)
        assert ((boxes[finite, 2] >= boxes[finite, 0]) & (boxes[finite, 3] >= boxes[finite, 1])).all()


def test_zero_area_gt():  # §4.3
    anchors = np.array([[x, y, x + 8, y + 8] for y in range(0, 32, 8) for x in range(0, 32, 8)], dtype=float)
    result = assign_dynamic_atss(anchors, [16], [[5, 5, 5, 15]], anchors)
    np.testing.assert_array_equal(result.gt_threshold, [0.0])
    assert result.num_positives == 0


# ---------------------------------------------------------------------------------------
# invariants (§7)

SCENES = anchor_scenes(max_side=384, max_boxes=10)


def _far_predictions(anchors):
    """Predictions moved ~1000 anchor widths away (decoded deltas (1e4, 1e4, 0, 0)): P = 0
    for every GT."""
    return decode_deltas(anchors, np.tile([1e4, 1e4, 0.0, 0.0], (len(anchors), 1)))


@settings(max_examples=30)
@given(SCENES, st.data())
def test_invariants(scene, data):  # §7.1, §7.2, §7.5
    anchors, gts, counts = scene["anchors"], scene["gt_boxes"], scene["num_anchors_per_level"]
    deltas = data.draw(pred_deltas(len(anchors)))
    predictions = _decode(anchors, deltas)
    result = assign_dynamic_atss(anchors, counts, gts, predictions)
    atss = assign_atss(anchors, counts, gts)
    np.testing.assert_array_equal(result.candidate_index, atss.candidate_index)
    assert not np.isnan(result.matched_metric).any()
    if len(gts) == 0:
        assert (result.matched_gt == BACKGROUND).all()
        return
    finite = np.isfinite(predictions).all(axis=1)
    p_ious = np.zeros((len(gts), len(anchors)))
    p_ious[:, finite] = box_iou(gts, predictions[finite])
    combined = p_ious + box_iou(gts, anchors)
    inside = points_inside_boxes(box_centers(anchors), gts, ATSS_INSIDE_EPS)
    positive = np.flatnonzero(result.matched_gt >= 0)
    gt = result.matched_gt[positive]
    assert (combined[gt, positive] >= result.gt_threshold[gt]).all()
    assert inside[gt, positive].all()
    np.testing.assert_allclose(result.matched_metric[positive], combined[gt, positive], rtol=0, atol=1e-12)
    # the soft target of the losses (targets.iou_targets, §3) is P at the assigned candidate
    targets = iou_targets(np.where(finite[:, None], predictions, 0.0), result.matched_gt, gts)
    np.testing.assert_allclose(targets[positive[finite[positive]]], p_ious[gt, positive][finite[positive]], rtol=0, atol=1e-12)
    for g in range(len(gts)):  # highest CIoU among the GTs the anchor is positive for
        cand = result.candidate_index[g]
        is_pos = (combined[g, cand] >= result.gt_threshold[g]) & inside[g, cand]
        won = result.matched_gt[cand[is_pos]]
        assert (won >= 0).all()
        assert (combined[won, cand[is_pos]] >= combined[g, cand[is_pos]] - 1e-12).all()


@settings(max_examples=20)
@given(SCENES)
def test_far_predictions_equal_atss(scene):  # §4.4, §7.3
    anchors, gts, counts = scene["anchors"], scene["gt_boxes"], scene["num_anchors_per_level"]
    result = assign_dynamic_atss(anchors, counts, gts, _far_predictions(anchors))
    atss = assign_atss(anchors, counts, gts)
    np.testing.assert_array_equal(result.matched_gt, atss.matched_gt)
    np.testing.assert_array_equal(result.matched_metric, atss.matched_metric)
    np.testing.assert_array_equal(result.gt_threshold, atss.gt_threshold)


@settings(max_examples=20)
@given(SCENES)
def test_zero_deltas_equal_atss_with_doubled_thresholds(scene):  # §4.5, §7.3
    anchors, gts, counts = scene["anchors"], scene["gt_boxes"], scene["num_anchors_per_level"]
    predictions = decode_deltas(anchors, np.zeros((len(anchors), 4)))
    np.testing.assert_array_equal(predictions, anchors)  # precondition: P == A exactly
    result = assign_dynamic_atss(anchors, counts, gts, predictions)
    atss = assign_atss(anchors, counts, gts)
    np.testing.assert_array_equal(result.matched_gt, atss.matched_gt)
    np.testing.assert_array_equal(result.matched_metric, 2 * atss.matched_metric)
    np.testing.assert_array_equal(result.gt_threshold, 2 * atss.gt_threshold)


UNIT = st.floats(0, 1, allow_nan=False)


@given(st.integers(2, 45).flatmap(lambda n: st.tuples(st.lists(UNIT, min_size=n, max_size=n), st.lists(UNIT, min_size=n, max_size=n))))
def test_mean_adds_and_summed_std_dominates(pair):  # §2.4, §7.4
    p, a = np.array([pair[0]]), np.array([pair[1]])
    c = p + a
    np.testing.assert_allclose(c.mean(), p.mean() + a.mean(), rtol=0, atol=1e-12)
    assert _std(p[0].tolist()) + _std(a[0].tolist()) >= _std(c[0].tolist()) - 1e-12
    assert combined_threshold(p, a, 1.0, 1.0)[0] >= mean_plus_std_threshold(c)[0] - 1e-12


@settings(max_examples=20)
@given(SCENES, st.sampled_from([(0.5, 1.0), (1.5, 1.0), (1.0, 0.5), (0.0, 1.0)]))
def test_weights_scale_the_parts(scene, weights):  # §2.3, §2.4
    anchors, gts, counts = scene["anchors"], scene["gt_boxes"], scene["num_anchors_per_level"]
    w_p, w_a = weights
    predictions = decode_deltas(anchors, np.zeros((len(anchors), 4)))
    result = assign_dynamic_atss(anchors, counts, gts, predictions, pred_weight=w_p, anchor_weight=w_a)
    atss = assign_atss(anchors, counts, gts)
    np.testing.assert_allclose(result.gt_threshold, (w_p + w_a) * atss.gt_threshold, rtol=1e-12)
    np.testing.assert_allclose(result.matched_metric, (w_p + w_a) * atss.matched_metric, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# bad input (§4.6)


@pytest.mark.parametrize(
    "change, name",
    [
        ({"pred_boxes": np.zeros((3, 4))}, "pred_boxes"),
        ({"pred_boxes": np.zeros((4, 3))}, "pred_boxes"),
        ({"pred_boxes": np.array([["a"] * 4] * 4)}, "pred_boxes"),
        ({"pred_boxes": np.array([[0, 0, 1, 1]] * 3 + [[0, 5, 1, 4]])}, "pred_boxes: row 3"),
        ({"anchors": np.array([[0, 0, 10, 10.0]] * 3 + [[0, 0, np.nan, 10]])}, "anchors"),
        ({"gt_boxes": [[0, 0, np.inf, 10]]}, "gt_boxes"),
        ({"pred_weight": -1.0}, "pred_weight"),
        ({"anchor_weight": float("inf")}, "anchor_weight"),
        ({"pred_weight": True}, "pred_weight"),
        ({"topk": 0}, "topk"),
        ({"inside_eps": -1.0}, "inside_eps"),
        ({"num_anchors_per_level": [3]}, "num_anchors_per_level"),
    ],
)
def test_bad_input_names_the_argument(change, name):
    positional = {
        "anchors": EXAMPLE_ANCHORS,
        "num_anchors_per_level": [4],
        "gt_boxes": GT,
        "pred_boxes": EXAMPLE_PREDICTIONS,
    }
    options = {}
    for key, value in change.items():
        (positional if key in positional else options)[key] = value
    with pytest.raises(ValueError, match=name):
        assign_dynamic_atss(*positional.values(), **options)



def test_zero_size_anchors_are_allowed():  # the assigner no longer decodes (§1)
    anchors = np.array([[0, 0, 0, 10], [0, 0, 10, 10]], dtype=float)
    result = assign_dynamic_atss(anchors, [2], GT, anchors)
    np.testing.assert_array_equal(result.matched_gt, assign_atss(anchors, [2], GT).matched_gt)
