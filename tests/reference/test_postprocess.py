"""reference/postprocess.py against specs/postprocess.md (and the coder round trips it relies on)."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reference.anchors import multi_level_anchors, multi_level_points
from reference.boxes import box_iou
from reference.coders import decode_deltas, decode_ltrb, encode_deltas, encode_ltrb
from reference.postprocess import clip_boxes, final_score, nms, postprocess, select_candidates
from tests.strategies import gt_boxes


def logit(p):
    return math.log(p / (1 - p))


# ---------------------------------------------------------------------------------------
# NMS worked examples (specs/postprocess.md §5)


def test_nms_worked_example():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=float)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 0]), 0.6)
    np.testing.assert_array_equal(keep, [0, 2, 3])


def test_nms_iou_equal_to_threshold_is_not_suppressed():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 6]], dtype=float)
    assert box_iou(boxes[:1], boxes[1:])[0, 0] == 0.6
    np.testing.assert_array_equal(nms(boxes, np.array([0.9, 0.8]), np.array([0, 0]), 0.6), [0, 1])
    np.testing.assert_array_equal(nms(boxes, np.array([0.9, 0.8]), np.array([0, 0]), 0.59), [0])


def test_nms_ties_keep_the_lower_index_and_visit_by_score():
    boxes = np.array([[0, 0, 10, 10]] * 3 + [[50, 50, 60, 60]], dtype=float)
    np.testing.assert_array_equal(nms(boxes, np.array([0.5, 0.5, 0.5, 0.9]), np.zeros(4, dtype=int)), [3, 0])


def test_nms_zero_area_boxes_never_suppress():
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]], dtype=float)
    np.testing.assert_array_equal(nms(boxes, np.array([0.9, 0.8, 0.7]), np.zeros(3, dtype=int)), [0, 1, 2])


def test_nms_empty():
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int)).shape == (0,)


# ---------------------------------------------------------------------------------------
# scores, candidates, clipping (specs/postprocess.md §3, §4, §6)


def test_final_score_modes():
    cls, quality = np.array([[0.5, 0.04]]), np.array([0.5])
    np.testing.assert_allclose(final_score(cls, quality, "sqrt"), [[0.5, math.sqrt(0.02)]], rtol=1e-15)
    np.testing.assert_allclose(final_score(cls, quality, "product"), [[0.25, 0.02]], rtol=1e-15)
    np.testing.assert_array_equal(final_score(cls, quality, "cls"), cls)


def test_pre_nms_filter_uses_the_class_score_alone():
    # anchor 0: cls 0.9, quality 0.001 -> final sqrt 0.03 < 0.05, still a candidate
    # anchor 1: cls 0.04, quality ~1 -> not a candidate
    cls_logits = np.array([[logit(0.9)], [logit(0.04)]])
    quality_logits = np.array([logit(0.001), 30.0])
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    det = postprocess(cls_logits, boxes, quality_logits, [2])
    np.testing.assert_array_equal(det.anchor_index, [0])
    np.testing.assert_allclose(det.scores, [math.sqrt(0.9 * 0.001)], rtol=1e-12)


def test_score_threshold_is_strict():
    det = postprocess(np.array([[0.0], [0.1]]), np.array([[0, 0, 1, 1], [5, 5, 6, 6]], dtype=float), None, [2], score_mode="cls", score_threshold=0.5)
    np.testing.assert_array_equal(det.anchor_index, [1])


def test_top_k_per_level_uses_final_score_and_index_ties():
    # level 0: anchors 0-2, level 1: anchors 3-4; K = 1; top_k = 2
    cls_scores = np.array([[0.6], [0.9], [0.6], [0.7], [0.8]])
    anchors, labels = select_candidates(cls_scores, cls_scores, [3, 2], score_threshold=0.05, top_k=2)
    np.testing.assert_array_equal(anchors, [1, 0, 4, 3])
    np.testing.assert_array_equal(labels, [0, 0, 0, 0])
    quality = np.array([1.0, 0.1, 1.0, 1.0, 1.0])
    anchors, _ = select_candidates(cls_scores, final_score(cls_scores, quality, "product"), [3, 2], top_k=2)
    np.testing.assert_array_equal(anchors, [0, 2, 4, 3])


def test_clip_boxes():
    boxes = np.array([[-5, -5, 20, 30], [40, 2, 50, 3]], dtype=float)
    np.testing.assert_array_equal(clip_boxes(boxes, (25, 30)), [[0, 0, 20, 25], [30, 2, 30, 3]])


def test_postprocess_with_decoder_max_detections_and_clipping():
    anchors = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [200, 0, 210, 10]], dtype=float)
    cls_logits = np.array([[2.0, -9.0], [-9.0, 1.0], [0.0, -9.0]])
    deltas = np.zeros((3, 4))
    deltas[0, 0] = -10.0  # shift anchor 0 left by one width: [-10, 0, 0, 10], clipped to a zero-area box
    decode = lambda index, regression: decode_deltas(anchors[index], regression)  # noqa: E731
    det = postprocess(cls_logits, deltas, None, [3], decode=decode, image_size=(150, 205), score_mode="cls", max_detections=2)
    np.testing.assert_array_equal(det.anchor_index, [0, 1])
    np.testing.assert_array_equal(det.labels, [0, 1])
    np.testing.assert_array_equal(det.boxes, [[0, 0, 0, 10], [100, 100, 110, 110]])
    np.testing.assert_allclose(det.scores, [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))], rtol=1e-15)


def test_postprocess_empty_inputs():
    det = postprocess(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros(0), [0, 0])
    assert det.boxes.shape == (0, 4) and det.scores.shape == (0,) and det.labels.shape == (0,)
    det = postprocess(np.full((2, 3), -10.0), np.ones((2, 4)), np.zeros(2), [1, 1])
    assert det.anchor_index.shape == (0,)
    det = postprocess(np.full((2, 3), 10.0), np.array([[0, 0, 1, 1]] * 2, dtype=float), np.zeros(2), [2], max_detections=0)
    assert det.anchor_index.shape == (0,)


def test_postprocess_bad_inputs():
    good = dict(cls_logits=np.zeros((2, 1)), box_regression=np.array([[0, 0, 1, 1]] * 2, dtype=float), quality_logits=np.zeros(2), num_per_level=[2])
    with pytest.raises(ValueError, match="num_per_level"):
        postprocess(**good | {"num_per_level": [1]})
    with pytest.raises(ValueError, match="quality_logits"):
        postprocess(**good | {"quality_logits": None})
    with pytest.raises(ValueError, match="score_mode"):
        postprocess(**good, score_mode="max")
    with pytest.raises(ValueError, match="cls_logits: row 1"):
        postprocess(**good | {"cls_logits": np.array([[0.0], [np.inf]])})
    with pytest.raises(ValueError, match="box_regression: row 1"):
        postprocess(**good | {"cls_logits": np.full((2, 1), 5.0), "box_regression": np.array([[0, 0, 1, 1], [3, 0, 1, 1]], dtype=float)})
    with pytest.raises(ValueError, match="boxes: row 0"):
        nms(np.array([[np.nan, 0, 1, 1]]), np.array([1.0]), np.array([0]))


# ---------------------------------------------------------------------------------------
# invariants (specs/postprocess.md §9)


@st.composite
def nms_inputs(draw, max_boxes=40):
    boxes = draw(gt_boxes((120, 160), min_boxes=0, max_boxes=max_boxes))
    n = len(boxes)
    scores = np.array(draw(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]) | st.floats(0, 1), min_size=n, max_size=n)))
    labels = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int64)
    threshold = draw(st.sampled_from([0.3, 0.5, 0.6, 0.7]))
    return boxes, scores.reshape(-1), labels.reshape(-1), threshold


@given(nms_inputs())
@settings(max_examples=60)
def test_nms_greedy_properties(inputs):
    boxes, scores, labels, threshold = inputs
    keep = nms(boxes, scores, labels, threshold)
    order = np.lexsort((np.arange(len(boxes)), -scores))
    position = np.empty(len(boxes), dtype=int)
    position[order] = np.arange(len(boxes))
    if len(boxes):
        assert keep[0] == order[0]  # the best-ranked box is always kept
    assert (np.diff(position[keep]) > 0).all()  # visiting order
    iou = box_iou(boxes, boxes)
    kept = np.zeros(len(boxes), dtype=bool)
    kept[keep] = True
    for i in range(len(boxes)):
        same = (labels == labels[i]) & kept & (np.arange(len(boxes)) != i)
        if kept[i]:
            assert (iou[i, same] <= threshold).all()
        else:
            earlier = same & (position < position[i])
            assert (iou[i, earlier] > threshold).any()


@given(nms_inputs())
@settings(max_examples=30)
def test_nms_is_class_aware(inputs):
    boxes, scores, _, threshold = inputs
    distinct = np.arange(len(boxes))
    np.testing.assert_array_equal(np.sort(nms(boxes, scores, distinct, threshold)), distinct)


@st.composite
def head_outputs(draw):
    num_per_level = draw(st.lists(st.integers(0, 30), min_size=1, max_size=3))
    num_anchors, num_classes = sum(num_per_level), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cls_logits = np.round(rng.normal(-1.0, 2.0, size=(num_anchors, num_classes)), 1)  # rounding makes ties
    corner = rng.uniform(0, 100, size=(num_anchors, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0, 40, size=(num_anchors, 2))], axis=1)
    return cls_logits, boxes, rng.normal(size=num_anchors), num_per_level


@given(head_outputs(), st.integers(0, 12), st.integers(0, 50), st.sampled_from(["sqrt", "product", "cls"]))
@settings(max_examples=60)
def test_candidate_and_detection_limits(outputs, top_k, max_detections, score_mode):
    cls_logits, boxes, quality_logits, num_per_level = outputs
    cls = 1 / (1 + np.exp(-cls_logits))
    final = final_score(cls, 1 / (1 + np.exp(-quality_logits)), score_mode)
    anchors, labels = select_candidates(cls, final, num_per_level, 0.05, top_k)
    starts = np.cumsum([0] + num_per_level)
    for level in range(len(num_per_level)):
        lo, hi = starts[level], starts[level + 1]
        chosen = (anchors >= lo) & (anchors < hi)
        assert chosen.sum() <= top_k
        assert (cls[anchors[chosen], labels[chosen]] > 0.05).all()
        above = np.zeros_like(cls, dtype=bool)
        above[lo:hi] = cls[lo:hi] > 0.05
        above[anchors[chosen], labels[chosen]] = False
        if chosen.any() and above.any():
            assert final[above].max() <= final[anchors[chosen], labels[chosen]].min()
        elif above.any():
            assert top_k == 0

    full = postprocess(cls_logits, boxes, quality_logits, num_per_level, score_mode=score_mode, pre_nms_top_k=top_k, max_detections=10**6)
    det = postprocess(cls_logits, boxes, quality_logits, num_per_level, score_mode=score_mode, pre_nms_top_k=top_k, max_detections=max_detections)
    assert len(det.scores) == min(max_detections, len(full.scores))
    np.testing.assert_array_equal(det.anchor_index, full.anchor_index[: len(det.scores)])
    assert (np.diff(full.scores) <= 0).all()


# ---------------------------------------------------------------------------------------
# coder round trips (specs/postprocess.md §7; the decode step relies on them)


@given(gt_boxes((300, 400), min_boxes=1, max_boxes=10), st.integers(0, 2**32 - 1))
@settings(max_examples=60)
def test_decode_deltas_inverts_encode_deltas(boxes, seed):
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    assume(len(boxes))
    anchors, _ = multi_level_anchors((300, 400), (8, 16, 32))
    rng = np.random.default_rng(seed)
    anchors = anchors[rng.integers(0, len(anchors), size=len(boxes))]
    deltas = encode_deltas(anchors, boxes)
    assume((np.abs(deltas[:, 2:]) * 0.2 < math.log(1000 / 16)).all())  # inside the clamp
    np.testing.assert_allclose(decode_deltas(anchors, deltas), boxes, rtol=0, atol=1e-9)


@given(gt_boxes((300, 400), min_boxes=1, max_boxes=10), st.floats(0, 1), st.floats(0, 1))
@settings(max_examples=60)
def test_decode_ltrb_inverts_encode_ltrb_for_points_inside(boxes, fx, fy):
    points = np.stack([boxes[:, 0] + fx * (boxes[:, 2] - boxes[:, 0]), boxes[:, 1] + fy * (boxes[:, 3] - boxes[:, 1])], axis=1)
    points = np.clip(points, boxes[:, :2], boxes[:, 2:])  # rounding must not put a point outside
    _, point_strides, _ = multi_level_points((300, 400), (8,))
    strides = np.full(len(boxes), float(point_strides[0])) * (1 + np.arange(len(boxes)) % 3)
    np.testing.assert_allclose(decode_ltrb(points, encode_ltrb(points, boxes, strides), strides), boxes, rtol=0, atol=1e-9)
