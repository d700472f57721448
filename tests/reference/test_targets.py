"""reference/targets.py against specs/targets.md."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.conventions import BACKGROUND, IGNORE
from reference.targets import box_targets, centerness_targets, class_targets, ignore_regions, iou_targets
from tests.strategies import gt_boxes

GT = np.array([[0.0, 0.0, 10.0, 10.0]])


# ---------------------------------------------------------------------------------------
# worked examples (specs/targets.md §2-§5)


def test_hard_class_targets_and_label_weights():
    targets, weights = class_targets(np.array([0, BACKGROUND, IGNORE]), np.array([2]), 3)
    np.testing.assert_array_equal(targets, [[0, 0, 1], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(weights, [1, 1, 0])


def test_soft_class_targets_use_the_score_of_positives_only():
    targets, weights = class_targets(np.array([0, BACKGROUND, IGNORE]), np.array([2]), 3, scores=[0.5, 0.9, 0.9])
    np.testing.assert_array_equal(targets, [[0, 0, 0.5], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(weights, [1, 1, 0])


def test_box_targets_are_assigned_gt_rows():
    gts = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 6.0, 7.0, 8.0]])
    targets = box_targets(np.array([1, BACKGROUND, 0, IGNORE]), gts)
    np.testing.assert_array_equal(targets, [[5, 6, 7, 8], [0, 0, 0, 0], [0, 0, 10, 10], [0, 0, 0, 0]])


def test_centerness_worked_examples():
    centers = np.array([[5.0, 5.0], [2.0, 5.0], [0.0, 5.0], [12.0, 5.0], [5.0, 5.0]])
    matched = np.array([0, 0, 0, 0, BACKGROUND])
    np.testing.assert_allclose(centerness_targets(centers, matched, GT), [1.0, 0.5, 0.0, 0.0, 0.0], rtol=0, atol=1e-15)


def test_centerness_of_zero_width_gt_is_zero_not_nan():
    result = centerness_targets(np.array([[4.0, 5.0], [3.0, 5.0]]), np.array([0, 0]), np.array([[4.0, 0.0, 4.0, 10.0]]))
    np.testing.assert_array_equal(result, [0.0, 0.0])


def test_iou_target_worked_example():
    pred = np.array([[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    result = iou_targets(pred, np.array([0, BACKGROUND, IGNORE]), GT)
    np.testing.assert_array_equal(result, [0.5, 0.0, 0.0])


def test_iou_target_zero_area_pair_is_zero():
    point = np.array([[3.0, 3.0, 3.0, 3.0]])
    np.testing.assert_array_equal(iou_targets(point, np.array([0]), point), [0.0])


# ---------------------------------------------------------------------------------------
# edge cases (specs/targets.md §6)


def test_empty_anchors():
    targets, weights = class_targets(np.zeros(0, dtype=np.int64), np.array([1]), 4)
    assert targets.shape == (0, 4) and weights.shape == (0,)
    assert box_targets(np.zeros(0, dtype=np.int64), GT).shape == (0, 4)
    assert centerness_targets(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), GT).shape == (0,)
    assert iou_targets(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), GT).shape == (0,)


def test_no_gts_all_background():
    matched = np.array([BACKGROUND, IGNORE, BACKGROUND])
    targets, weights = class_targets(matched, np.zeros(0, dtype=np.int64), 2)
    np.testing.assert_array_equal(targets, np.zeros((3, 2)))
    np.testing.assert_array_equal(weights, [1, 0, 1])
    np.testing.assert_array_equal(box_targets(matched, np.zeros((0, 4))), np.zeros((3, 4)))
    np.testing.assert_array_equal(centerness_targets(np.ones((3, 2)), matched, np.zeros((0, 4))), np.zeros(3))


@pytest.mark.parametrize(
    "matched, message",
    [
        (np.array([0, 1]), "matched_gt: row 1"),
        (np.array([0, -3]), "matched_gt: row 1"),
        (np.array([0.0, 1.0]), "matched_gt"),
        (np.array([[0]]), "matched_gt"),
    ],
)
def test_bad_matched_gt(matched, message):
    with pytest.raises(ValueError, match=message):
        box_targets(matched, GT)


def test_bad_labels_and_scores():
    with pytest.raises(ValueError, match="gt_labels: row 0"):
        class_targets(np.array([0]), np.array([3]), 3)
    with pytest.raises(ValueError, match="scores: row 1"):
        class_targets(np.array([0, 0]), np.array([1]), 3, scores=[0.5, 1.5])
    with pytest.raises(ValueError, match="num_classes"):
        class_targets(np.array([0]), np.array([0]), 0)
    with pytest.raises(ValueError, match="gt_boxes: row 0"):
        box_targets(np.array([0]), np.array([[5.0, 0.0, 4.0, 1.0]]))
    with pytest.raises(ValueError, match="centers"):
        centerness_targets(np.zeros((2, 2)), np.array([0]), GT)


# ---------------------------------------------------------------------------------------
# invariants (specs/targets.md §7)


@st.composite
def assigned_scenes(draw):
    gts = draw(gt_boxes((200, 300), min_boxes=0, max_boxes=8))
    num_anchors = draw(st.integers(0, 40))
    matched = np.array(draw(st.lists(st.integers(IGNORE, len(gts) - 1), min_size=num_anchors, max_size=num_anchors)))
    matched = matched.astype(np.int64).reshape(-1)
    num_classes = draw(st.integers(1, 6))
    labels = np.array(draw(st.lists(st.integers(0, num_classes - 1), min_size=len(gts), max_size=len(gts))), dtype=np.int64)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-20, 320, size=(num_anchors, 2))
    corner = rng.uniform(0, 300, size=(num_anchors, 2))
    pred = np.concatenate([corner, corner + rng.uniform(0, 100, size=(num_anchors, 2))], axis=1)
    scores = rng.uniform(0, 1, size=num_anchors)
    return gts, matched, labels, num_classes, centers, pred, scores


@given(assigned_scenes())
@settings(max_examples=60)
def test_target_invariants(scene):
    gts, matched, labels, num_classes, centers, pred, scores = scene
    positive = matched >= 0

    hard, weights = class_targets(matched, labels, num_classes)
    soft, _ = class_targets(matched, labels, num_classes, scores=scores)
    np.testing.assert_array_equal(weights, (matched != IGNORE).astype(float))
    np.testing.assert_array_equal(hard[~positive], 0.0)
    np.testing.assert_array_equal(hard.sum(axis=1), positive.astype(float))
    for a in np.flatnonzero(positive):
        assert hard[a, labels[matched[a]]] == 1.0
        assert soft[a, labels[matched[a]]] == scores[a]
    np.testing.assert_array_equal(soft, hard * scores[:, None])

    boxes = box_targets(matched, gts)
    np.testing.assert_array_equal(boxes[positive], gts[matched[positive]])
    np.testing.assert_array_equal(boxes[~positive], 0.0)

    ctr = centerness_targets(centers, matched, gts)
    ious = iou_targets(pred, matched, gts)
    for values in (ctr, ious):
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
        np.testing.assert_array_equal(values[~positive], 0.0)


@given(gt_boxes((200, 300), min_boxes=1, max_boxes=6), st.floats(0.05, 0.95), st.floats(0.05, 0.95))
@settings(max_examples=60)
def test_centerness_is_one_at_the_centre_and_mirror_symmetric(gts, fx, fy):
    matched = np.arange(len(gts))
    centres = np.stack([(gts[:, 0] + gts[:, 2]) / 2, (gts[:, 1] + gts[:, 3]) / 2], axis=1)
    positive_area = (gts[:, 2] > gts[:, 0]) & (gts[:, 3] > gts[:, 1])
    at_centre = centerness_targets(centres, matched, gts)
    np.testing.assert_allclose(at_centre[positive_area], 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(at_centre[~positive_area], 0.0)

    inside = np.stack([gts[:, 0] + fx * (gts[:, 2] - gts[:, 0]), gts[:, 1] + fy * (gts[:, 3] - gts[:, 1])], axis=1)
    mirrored = np.stack([gts[:, 0] + (1 - fx) * (gts[:, 2] - gts[:, 0]), gts[:, 1] + (1 - fy) * (gts[:, 3] - gts[:, 1])], axis=1)
    np.testing.assert_allclose(
        centerness_targets(inside, matched, gts), centerness_targets(mirrored, matched, gts), rtol=1e-9, atol=1e-12
    )
    expected = np.sqrt(min(fx, 1 - fx) / max(fx, 1 - fx) * min(fy, 1 - fy) / max(fy, 1 - fy))
    np.testing.assert_allclose(centerness_targets(inside, matched, gts)[positive_area], expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# ignore regions (specs/targets.md §8)

REGION = np.array([[0.0, 0.0, 10.0, 10.0]])
REGION_CENTERS = np.array([[5.0, 5.0], [0.0, 5.0], [15.0, 5.0], [5.0, 5.0]])
REGION_MATCHED = np.array([BACKGROUND, BACKGROUND, BACKGROUND, 0])


def test_ignore_regions_worked_example():
    # inside -> IGNORE; on the left edge -> not inside; outside; a positive inside is kept
    result = ignore_regions(REGION_MATCHED, REGION_CENTERS, REGION)
    np.testing.assert_array_equal(result, [IGNORE, BACKGROUND, BACKGROUND, 0])
    assert result.dtype == np.int64


def test_ignore_regions_every_border_point_is_outside():
    corners_and_edges = np.array([[0.0, 0.0], [10.0, 10.0], [10.0, 5.0], [5.0, 0.0], [5.0, 10.0], [0.0, 10.0]])
    matched = np.full(len(corners_and_edges), BACKGROUND)
    np.testing.assert_array_equal(ignore_regions(matched, corners_and_edges, REGION), matched)
    # just inside each edge is inside
    near = np.array([[1e-9, 5.0], [10.0 - 1e-9, 5.0], [5.0, 1e-9], [5.0, 10.0 - 1e-9]])
    np.testing.assert_array_equal(ignore_regions(np.full(4, BACKGROUND), near, REGION), [IGNORE] * 4)


def test_ignore_regions_keep_positives_and_ignores():
    matched = np.array([0, 1, IGNORE, BACKGROUND])
    centers = np.full((4, 2), 5.0)
    np.testing.assert_array_equal(ignore_regions(matched, centers, REGION), [0, 1, IGNORE, IGNORE])


def test_ignore_regions_zero_area_region_contains_nothing():
    for box in ([5.0, 0.0, 5.0, 10.0], [0.0, 5.0, 10.0, 5.0], [5.0, 5.0, 5.0, 5.0]):
        result = ignore_regions(REGION_MATCHED, REGION_CENTERS, np.array([box]))
        np.testing.assert_array_equal(result, REGION_MATCHED)


def test_ignore_regions_any_of_several_regions():
    regions = np.array([[20.0, 0.0, 30.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    centers = np.array([[25.0, 5.0], [15.0, 5.0], [5.0, 5.0], [20.0, 5.0]])  # last: shared edge of both
    np.testing.assert_array_equal(
        ignore_regions(np.full(4, BACKGROUND), centers, regions), [IGNORE, IGNORE, BACKGROUND, BACKGROUND]
    )


def test_ignore_regions_empty_inputs():
    np.testing.assert_array_equal(ignore_regions(REGION_MATCHED, REGION_CENTERS, np.zeros((0, 4))), REGION_MATCHED)
    empty = ignore_regions(np.zeros(0, dtype=np.int64), np.zeros((0, 2)), REGION)
    assert empty.shape == (0,) and empty.dtype == np.int64


def test_ignore_regions_bad_input():
    with pytest.raises(ValueError, match="ignore_boxes: row 1"):
        ignore_regions(REGION_MATCHED, REGION_CENTERS, np.array([[0.0, 0.0, 1.0, 1.0], [5.0, 0.0, 4.0, 1.0]]))
    with pytest.raises(ValueError, match="ignore_boxes"):
        ignore_regions(REGION_MATCHED, REGION_CENTERS, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="matched_gt: row 2"):
        ignore_regions(np.array([0, -1, -3, 0]), REGION_CENTERS, REGION)
    with pytest.raises(ValueError, match="matched_gt"):
        ignore_regions(REGION_MATCHED.astype(float), REGION_CENTERS, REGION)
    with pytest.raises(ValueError, match="centers"):
        ignore_regions(REGION_MATCHED, REGION_CENTERS[:3], REGION)
    with pytest.raises(ValueError, match="centers: row 1"):
        ignore_regions(REGION_MATCHED, np.array([[0.0, 0.0], [np.nan, 1.0], [0.0, 0.0], [0.0, 0.0]]), REGION)


@st.composite
def ignore_scenes(draw):
    """Centres on a 4 px grid (they hit the 8 px grid boxes' edges), regions, an assignment."""
    regions = draw(gt_boxes((64, 96), min_boxes=0, max_boxes=5))
    num_anchors = draw(st.integers(0, 50))
    cells = draw(st.lists(st.tuples(st.integers(-2, 26), st.integers(-2, 18)), min_size=num_anchors, max_size=num_anchors))
    centers = 4.0 * np.array(cells, dtype=np.float64).reshape(-1, 2)
    matched = np.array(draw(st.lists(st.integers(IGNORE, 3), min_size=num_anchors, max_size=num_anchors)), dtype=np.int64)
    return matched, centers, regions


@given(ignore_scenes())
@settings(max_examples=60)
def test_ignore_regions_invariants(scene):
    matched, centers, regions = scene
    result = ignore_regions(matched, centers, regions)
    assert result.shape == matched.shape and result.dtype == np.int64
    for a, (x, y) in enumerate(centers):
        inside = any(x1 < x < x2 and y1 < y < y2 for x1, y1, x2, y2 in regions)
        expected = IGNORE if (matched[a] == BACKGROUND and inside) else matched[a]
        assert result[a] == expected, (a, x, y)
    # idempotent, and independent of the order of the regions
    np.testing.assert_array_equal(ignore_regions(result, centers, regions), result)
    np.testing.assert_array_equal(ignore_regions(matched, centers, regions[::-1]), result)
