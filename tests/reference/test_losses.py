"""reference/losses.py against specs/losses.md."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.conventions import BACKGROUND, IGNORE
from reference.losses import (
    IOU_LOSS_EPS,
    bce_with_logits,
    detection_losses,
    giou_loss,
    iou_loss,
    loss_sums,
    num_pos_normalizer,
    quality_focal_loss,
    reduce_loss_sums,
    sigmoid_focal_loss,
    varifocal_loss,
    weighted_mean,
)
from tests.strategies import gt_boxes

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def direct_bce(x, y):
    """The textbook formula, -(y log p + (1 - y) log(1 - p)); only finite for moderate x."""
    p = 1.0 / (1.0 + np.exp(-x))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


# ---------------------------------------------------------------------------------------
# worked examples (specs/losses.md §1-§5)


def test_bce_worked_examples():
    np.testing.assert_allclose(bce_with_logits([0.0, 0.0, 0.0], [0.0, 0.3, 1.0]), [LN2, LN2, LN2], rtol=1e-15)
    np.testing.assert_allclose(bce_with_logits([LN3], [0.25]), [LN4 - 0.25 * LN3], rtol=1e-14)


def test_focal_worked_examples():
    np.testing.assert_allclose(sigmoid_focal_loss([0.0, 0.0], [1.0, 0.0]), [0.0625 * LN2, 0.1875 * LN2], rtol=1e-15)
    np.testing.assert_allclose(sigmoid_focal_loss([0.0, 0.0], [1.0, 0.0], alpha=None), [0.25 * LN2] * 2, rtol=1e-15)


def test_qfl_worked_examples():
    np.testing.assert_allclose(quality_focal_loss([0.0], [0.5]), [0.0], atol=1e-300)
    np.testing.assert_allclose(quality_focal_loss([0.0], [1.0]), [0.25 * LN2], rtol=1e-15)
    np.testing.assert_allclose(quality_focal_loss([LN3], [0.25]), [0.25 * (LN4 - 0.25 * LN3)], rtol=1e-14)


def test_vfl_worked_examples():
    np.testing.assert_allclose(varifocal_loss([LN3], [0.25]), [0.25 * (LN4 - 0.25 * LN3)], rtol=1e-14)
    np.testing.assert_allclose(varifocal_loss([LN3], [0.25], iou_weighted=False), [LN4 - 0.25 * LN3], rtol=1e-14)
    np.testing.assert_allclose(varifocal_loss([LN3], [0.0]), [0.75 * 0.75**2 * LN4], rtol=1e-14)


def test_qfl_equals_mmdet_tuple_form():
    """mmdet's (label, score) form: negatives s^2 BCE(x, 0); the positive's class |q - s|^2 BCE(x, q)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 5))
    labels, quality = np.array([0, 1, 2, 0]), rng.uniform(size=4)
    sig = 1 / (1 + np.exp(-logits))
    expected = sig**2 * direct_bce(logits, 0.0)
    for a in range(4):
        k = labels[a]
        expected[a, k] = abs(quality[a] - sig[a, k]) ** 2 * direct_bce(logits[a, k], quality[a])
    one_hot = np.eye(5)[labels] * quality[:, None]
    np.testing.assert_allclose(quality_focal_loss(logits, one_hot), expected, rtol=1e-12)


def test_box_loss_worked_examples():
    half = np.array([[0.0, 0.0, 10.0, 5.0]]), np.array([[0.0, 0.0, 10.0, 10.0]])
    np.testing.assert_allclose(iou_loss(*half), [LN2], rtol=1e-15)
    np.testing.assert_allclose(iou_loss(*half, mode="linear"), [0.5], rtol=1e-15)
    np.testing.assert_allclose(giou_loss(*half), [0.5], rtol=1e-15)
    apart = np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([[2.0, 0.0, 3.0, 1.0]])
    np.testing.assert_allclose(giou_loss(*apart), [4 / 3], rtol=1e-15)
    np.testing.assert_allclose(iou_loss(*apart), [-math.log(IOU_LOSS_EPS)], rtol=1e-15)
    np.testing.assert_allclose(iou_loss(*apart, mode="linear"), [1.0], rtol=1e-15)


def test_box_losses_of_zero_area_boxes_are_finite():
    point = np.array([[3.0, 3.0, 3.0, 3.0]])
    line = np.array([[3.0, 3.0, 3.0, 9.0]])
    np.testing.assert_array_equal(giou_loss(point, point), [1.0])
    np.testing.assert_array_equal(iou_loss(point, point, mode="linear"), [1.0])
    np.testing.assert_allclose(iou_loss(line, line), [-math.log(IOU_LOSS_EPS)], rtol=1e-15)
    np.testing.assert_array_equal(giou_loss(line, line), [1.0])


def test_identical_boxes_of_positive_area_have_zero_loss():
    box = np.array([[1.0, 2.0, 5.0, 9.0]])
    np.testing.assert_array_equal(giou_loss(box, box), [0.0])
    np.testing.assert_array_equal(iou_loss(box, box), [0.0])


# ---------------------------------------------------------------------------------------
# extreme logits (specs/losses.md §1, §8.1)


@pytest.mark.parametrize("x", [50.0, -50.0, 1000.0, -1000.0])
def test_extreme_logits_are_finite_and_stable(x):
    ax = abs(x)
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x): |x| on the wrong side, ~exp(-|x|) on the right side
    wrong_side_target = 0.0 if x > 0 else 1.0
    right_side_target = 1.0 - wrong_side_target
    np.testing.assert_allclose(bce_with_logits([x], [wrong_side_target]), [ax], rtol=1e-15)
    np.testing.assert_allclose(bce_with_logits([x], [right_side_target]), [math.log1p(math.exp(-ax))], rtol=1e-15)
    for y in (0.0, 0.3, 1.0):
        for loss in (
            sigmoid_focal_loss([x], [y]),
            sigmoid_focal_loss([x], [y], alpha=None),
            quality_focal_loss([x], [y]),
            varifocal_loss([x], [y]),
        ):
            assert np.isfinite(loss).all() and (loss >= 0).all()
    # confident and wrong: the modulating factor is 1 - O(exp(-|x|)), so the loss is ~|x| times the alpha side
    np.testing.assert_allclose(quality_focal_loss([x], [wrong_side_target]), [ax], rtol=1e-12)
    alpha_t = 0.75 if wrong_side_target == 0.0 else 0.25
    np.testing.assert_allclose(sigmoid_focal_loss([x], [wrong_side_target]), [alpha_t * ax], rtol=1e-12)


# ---------------------------------------------------------------------------------------
# invariants (specs/losses.md §8)

# |x| <= 15 keeps the textbook formula accurate to ~1e-10 (it loses log(1 - p) beyond);
# the stable forms differ from it and from each other by rounding of 1 - p_t only.
logit_arrays = st.lists(st.floats(-15, 15), min_size=1, max_size=20).map(np.array)


@given(logit_arrays, st.data())
@settings(max_examples=60)
def test_elementwise_losses_match_direct_formulas(logits, data):
    targets = np.array(data.draw(st.lists(st.floats(0, 1), min_size=len(logits), max_size=len(logits))))
    p = 1 / (1 + np.exp(-logits))
    bce = direct_bce(logits, targets)
    np.testing.assert_allclose(bce_with_logits(logits, targets), bce, rtol=1e-9, atol=1e-12)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = 0.25 * targets + 0.75 * (1 - targets)
    np.testing.assert_allclose(sigmoid_focal_loss(logits, targets), alpha_t * (1 - p_t) ** 2 * bce, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(quality_focal_loss(logits, targets), np.abs(targets - p) ** 2 * bce, rtol=1e-9, atol=1e-12)
    vfl_weight = np.where(targets > 0, targets, 0.75 * p**2)
    np.testing.assert_allclose(varifocal_loss(logits, targets), vfl_weight * bce, rtol=1e-9, atol=1e-12)


@given(logit_arrays, st.data(), st.floats(0, 4))
@settings(max_examples=60)
def test_qfl_with_hard_targets_is_focal_without_alpha(logits, data, beta):
    hard = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=len(logits), max_size=len(logits))))
    np.testing.assert_allclose(
        quality_focal_loss(logits, hard, beta=beta), sigmoid_focal_loss(logits, hard, alpha=None, gamma=beta), rtol=1e-9, atol=1e-300
    )


@given(logit_arrays, st.data(), st.floats(0, 1))
@settings(max_examples=60)
def test_focal_alpha_is_a_factor_and_vfl_negatives_are_scaled_focal(logits, data, alpha):
    targets = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=len(logits), max_size=len(logits))))
    plain = sigmoid_focal_loss(logits, targets, alpha=None)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    np.testing.assert_allclose(sigmoid_focal_loss(logits, targets, alpha=alpha), alpha_t * plain, rtol=1e-9, atol=1e-300)
    zeros = np.zeros_like(logits)
    np.testing.assert_allclose(
        varifocal_loss(logits, zeros, alpha=alpha), alpha * sigmoid_focal_loss(logits, zeros, alpha=None), rtol=1e-9, atol=1e-300
    )


@given(gt_boxes((100, 120), min_boxes=1, max_boxes=10), gt_boxes((100, 120), min_boxes=10, max_boxes=10))
@settings(max_examples=60)
def test_box_losses_in_range_symmetric_and_finite(first, second):
    second = second[: len(first)]
    for loss, high in ((giou_loss, 2.0), (lambda a, b: iou_loss(a, b, mode="linear"), 1.0), (iou_loss, -math.log(IOU_LOSS_EPS))):
        values = loss(first, second)
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= high + 1e-12).all()
        np.testing.assert_allclose(values, loss(second, first), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------
# normalisation and the loss step (specs/losses.md §6, §7)


def test_normalizer_and_weighted_mean():
    assert num_pos_normalizer(0) == 1.0 and num_pos_normalizer(7) == 7.0
    assert weighted_mean([1.0, 3.0], [3.0, 1.0]) == 1.5
    assert weighted_mean([1.0, 3.0], [0.0, 0.0]) == 2.0  # all-zero weights: unweighted mean
    assert weighted_mean(np.zeros(0), np.zeros(0)) == 0.0


def worked_scene():
    return dict(
        cls_logits=np.zeros((3, 2)),
        pred_boxes=np.array([[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0]]),
        quality_logits=np.zeros(3),
        centers=np.array([[5.0, 5.0], [2.0, 2.0], [2.0, 2.0]]),
        matched_gt=np.array([0, BACKGROUND, IGNORE]),
        gt_boxes=np.array([[0.0, 0.0, 10.0, 10.0]]),
        gt_labels=np.array([1]),
    )


def test_loss_step_worked_example():
    terms = detection_losses(**worked_scene())
    assert set(terms) == {"loss_cls", "loss_box", "loss_quality"}
    np.testing.assert_allclose(terms["loss_cls"], 0.625 * LN2, rtol=1e-14)
    np.testing.assert_allclose(terms["loss_box"], 1.0, rtol=1e-14)
    np.testing.assert_allclose(terms["loss_quality"], LN2, rtol=1e-14)


def test_loss_step_without_quality_branch():
    scene = worked_scene() | {"quality_logits": None}
    terms = detection_losses(**scene, quality="none", box_loss_weight=1.0)
    assert set(terms) == {"loss_cls", "loss_box"}
    np.testing.assert_allclose(terms["loss_box"], 0.5, rtol=1e-14)


def test_zero_positives_give_finite_cls_and_zero_box_and_quality():
    scene = worked_scene() | {"matched_gt": np.array([BACKGROUND, BACKGROUND, IGNORE])}
    for cls_loss in ("focal", "qfl", "vfl"):
        for quality in ("centerness", "iou"):
            terms = detection_losses(**scene, cls_loss=cls_loss, quality=quality)
            assert terms["loss_box"] == 0.0 and terms["loss_quality"] == 0.0
            assert np.isfinite(terms["loss_cls"]) and terms["loss_cls"] > 0
    # divisor is max(0, 1) = 1: the plain sum of the two background rows
    np.testing.assert_allclose(detection_losses(**scene)["loss_cls"], 4 * 0.1875 * LN2, rtol=1e-14)


def test_zero_anchors_and_zero_gts():
    empty = dict(
        cls_logits=np.zeros((0, 3)),
        pred_boxes=np.zeros((0, 4)),
        quality_logits=np.zeros(0),
        centers=np.zeros((0, 2)),
        matched_gt=np.zeros(0, dtype=np.int64),
        gt_boxes=np.zeros((0, 4)),
        gt_labels=np.zeros(0, dtype=np.int64),
    )
    assert detection_losses(**empty) == {"loss_cls": 0.0, "loss_box": 0.0, "loss_quality": 0.0}


def test_iou_weighted_box_loss_falls_back_to_the_unweighted_mean():
    """quality='iou' and every positive's predicted box misses its GT: weights sum to 0."""
    scene = worked_scene() | {
        "pred_boxes": np.array([[20.0, 0.0, 30.0, 10.0], [0, 0, 1, 1.0], [0, 0, 1, 1.0]]),
    }
    terms = detection_losses(**scene, quality="iou", box_loss_weight=1.0)
    # GIoU([20,0,30,10], [0,0,10,10]) = 0 - (300 - 200) / 300
    np.testing.assert_allclose(terms["loss_box"], 1 + 1 / 3, rtol=1e-14)
    np.testing.assert_allclose(terms["loss_quality"], LN2, rtol=1e-14)  # BCE(0, 0)


def test_ignore_anchors_do_not_change_the_classification_loss():
    scene = worked_scene()
    base = detection_losses(**scene)["loss_cls"]
    scene["cls_logits"] = scene["cls_logits"].copy()
    scene["cls_logits"][2] = [40.0, -40.0]
    assert detection_losses(**scene)["loss_cls"] == base


def test_batch_normalisation_is_global_not_per_image():
    """Images with 0 and 2 positives: divide by 2 (ATSS), not by 1 + 2 (mmdet)."""
    empty = worked_scene() | {"matched_gt": np.array([BACKGROUND, BACKGROUND, BACKGROUND])}
    two = worked_scene() | {"matched_gt": np.array([0, 0, BACKGROUND])}
    s_empty, s_two = loss_sums(**empty), loss_sums(**two)
    assert s_empty["num_pos"] == 0 and s_two["num_pos"] == 2
    terms = reduce_loss_sums([s_empty, s_two])
    np.testing.assert_allclose(terms["loss_cls"], (s_empty["cls"] + s_two["cls"]) / 2, rtol=1e-15)
    np.testing.assert_allclose(terms["loss_quality"], s_two["quality"] / 2, rtol=1e-15)


def test_bad_inputs():
    scene = worked_scene()
    with pytest.raises(ValueError, match="cls_loss"):
        detection_losses(**scene, cls_loss="ce")
    with pytest.raises(ValueError, match="quality_logits"):
        detection_losses(**scene | {"quality_logits": None})
    with pytest.raises(ValueError, match="quality_logits"):
        detection_losses(**scene, quality="none")
    with pytest.raises(ValueError, match="pred_boxes: row 1"):
        detection_losses(**scene | {"pred_boxes": np.array([[0, 0, 1, 1.0], [2, 0, 1, 1.0], [0, 0, 1, 1.0]])})
    with pytest.raises(ValueError, match="cls_logits: row 0"):
        detection_losses(**scene | {"cls_logits": np.array([[np.nan, 0], [0, 0], [0, 0]])})
    with pytest.raises(ValueError, match="centers"):
        detection_losses(**scene | {"centers": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="targets"):
        sigmoid_focal_loss([0.0], [1.5])
    with pytest.raises(ValueError, match="targets"):
        quality_focal_loss([0.0, 1.0], [0.5])
    with pytest.raises(ValueError, match="mode"):
        iou_loss(np.zeros((1, 4)), np.zeros((1, 4)), mode="square")


@st.composite
def loss_scenes(draw):
    gts = draw(gt_boxes((160, 200), min_boxes=0, max_boxes=5))
    num_anchors = draw(st.integers(0, 30))
    matched = np.array(draw(st.lists(st.integers(IGNORE, len(gts) - 1), min_size=num_anchors, max_size=num_anchors)), dtype=np.int64)
    labels = np.array(draw(st.lists(st.integers(0, 2), min_size=len(gts), max_size=len(gts))), dtype=np.int64)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    corner = rng.uniform(0, 200, size=(num_anchors, 2))
    pred = np.concatenate([corner, corner + rng.uniform(0, 60, size=(num_anchors, 2))], axis=1)
    return dict(
        cls_logits=rng.normal(scale=3, size=(num_anchors, 3)),
        pred_boxes=pred,
        quality_logits=rng.normal(size=num_anchors),
        centers=rng.uniform(0, 200, size=(num_anchors, 2)),
        matched_gt=matched.reshape(-1),
        gt_boxes=gts,
        gt_labels=labels,
    )


def concatenate_images(first, second):
    """One image holding both images' anchors and GTs (GT indices of the second shifted)."""
    shift = len(first["gt_boxes"])
    matched = np.where(second["matched_gt"] >= 0, second["matched_gt"] + shift, second["matched_gt"])
    joined = {key: np.concatenate([first[key], second[key]]) for key in first}
    joined["matched_gt"] = np.concatenate([first["matched_gt"], matched])
    return joined


@given(loss_scenes(), loss_scenes(), st.sampled_from(["focal", "qfl", "vfl"]), st.sampled_from(["giou", "iou"]))
@settings(max_examples=40)
def test_batch_reduction_equals_one_concatenated_image(first, second, cls_loss, box_loss):
    for quality in ("centerness", "iou"):
        options = dict(cls_loss=cls_loss, box_loss=box_loss, quality=quality)
        batch = reduce_loss_sums([loss_sums(**first, **options), loss_sums(**second, **options)])
        joined = detection_losses(**concatenate_images(first, second), **options)
        assert set(batch) == set(joined)
        for key in batch:
            np.testing.assert_allclose(batch[key], joined[key], rtol=1e-12, atol=1e-12)
            assert np.isfinite(batch[key])
        if (first["matched_gt"] < 0).all() and (second["matched_gt"] < 0).all():
            assert batch["loss_box"] == 0.0 and batch["loss_quality"] == 0.0
    doubled = detection_losses(**first, cls_loss=cls_loss, box_loss=box_loss, box_loss_weight=4.0)
    single = detection_losses(**first, cls_loss=cls_loss, box_loss=box_loss, box_loss_weight=2.0)
    np.testing.assert_allclose(doubled["loss_box"], 2 * single["loss_box"], rtol=1e-14)
