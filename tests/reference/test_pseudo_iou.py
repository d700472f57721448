"""Pseudo-IoU, reference alone: spec examples and invariants (specs/pseudo_iou.md)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.pseudo_iou import pseudo_iou, pseudo_iou_algorithm1, pseudo_iou_explicit

SIZE = st.floats(0.5, 1000.0, allow_nan=False, allow_infinity=False)
CORNER = st.floats(-500.0, 1500.0, allow_nan=False, allow_infinity=False)
# fraction of the way across the box, strictly inside (0, 1)
INSIDE = st.floats(1e-6, 1 - 1e-6, allow_nan=False)


def ltrb_of(points, box):
    """(A, 2), (4,) -> (A, 4) distances (l, t, r, b), written out independently."""
    points = np.asarray(points, dtype=np.float64)
    x1, y1, x2, y2 = box
    return np.stack([points[:, 0] - x1, points[:, 1] - y1, x2 - points[:, 0], y2 - points[:, 1]], axis=1)


@st.composite
def box_and_inside_points(draw, count=8):
    x1, y1, w, h = draw(CORNER), draw(CORNER), draw(SIZE), draw(SIZE)
    us = draw(st.lists(INSIDE, min_size=count, max_size=count))
    vs = draw(st.lists(INSIDE, min_size=count, max_size=count))
    box = np.array([x1, y1, x1 + w, y1 + h])
    points = np.stack([x1 + np.array(us) * w, y1 + np.array(vs) * h], axis=1)
    inside = ltrb_of(points, box).min(axis=1) > 0  # rounding can put a point on the border
    return box, points[inside]


# --------------------------------------------------------------------------------------
# worked examples (specs/pseudo_iou.md §4)


def test_example_centre_is_one():
    np.testing.assert_array_equal(pseudo_iou_algorithm1([4.0, 3.0, 4.0, 3.0]), 1.0)
    np.testing.assert_array_equal(pseudo_iou([[4.0, 3.0]], [[0, 0, 8, 6]]), [[1.0]])
    np.testing.assert_allclose(pseudo_iou_explicit([[4.0, 3.0]], [[0, 0, 8, 6]]), [[1.0]], rtol=0, atol=1e-15)


def test_example_l_equals_r_t_third_of_b():
    # (l, t, r, b) = (5, 2, 5, 6): S* = 10 * 6 = 60, U = 80 + 80 - 60 = 100
    np.testing.assert_allclose(pseudo_iou_algorithm1([5.0, 2.0, 5.0, 6.0]), 0.6, rtol=1e-15)
    np.testing.assert_allclose(pseudo_iou([[5.0, 2.0]], [[0, 0, 10, 8]]), [[0.6]], rtol=1e-15)
    np.testing.assert_allclose(pseudo_iou_explicit([[5.0, 2.0]], [[0, 0, 10, 8]]), [[0.6]], rtol=1e-15)


def test_example_outside_within_doubled_box_all_forms_agree():
    box = [0.0, 0.0, 10.0, 10.0]
    expected = 20.0 / 180.0
    np.testing.assert_allclose(pseudo_iou_algorithm1(ltrb_of([[-3.0, 5.0]], box)), [expected], rtol=1e-15)
    np.testing.assert_allclose(pseudo_iou([[-3.0, 5.0]], [box]), [[expected]], rtol=1e-15)
    np.testing.assert_allclose(pseudo_iou_explicit([[-3.0, 5.0]], [box]), [[expected]], rtol=1e-15)


def test_example_far_outside_algorithm1_is_not_an_iou():
    box = [0.0, 0.0, 10.0, 10.0]
    # one axis beyond: negative; both axes beyond: spurious positive
    np.testing.assert_allclose(pseudo_iou_algorithm1(ltrb_of([[-12.0, 5.0], [-12.0, -12.0]], box)), [-7 / 27, 49 / 151], rtol=1e-15)
    np.testing.assert_array_equal(pseudo_iou([[-12.0, 5.0], [-12.0, -12.0]], [box]), [[0.0, 0.0]])
    np.testing.assert_array_equal(pseudo_iou_explicit([[-12.0, 5.0], [-12.0, -12.0]], [box]), [[0.0, 0.0]])


def test_example_zero_area_gt_never_nan():
    box = [0.0, 0.0, 0.0, 10.0]
    points = [[0.0, 5.0], [2.0, 5.0], [0.0, 20.0], [5.0, 40.0]]
    alg1 = pseudo_iou_algorithm1(ltrb_of(points, box))
    np.testing.assert_array_equal(alg1[:2], [0.0, -1.0])  # U = 0 -> 0; S* = -20, U = 20 -> -1
    assert np.isfinite(alg1).all()
    np.testing.assert_array_equal(pseudo_iou(points, [box]), np.zeros((1, 4)))
    np.testing.assert_array_equal(pseudo_iou_explicit(points, [box]), np.zeros((1, 4)))
    np.testing.assert_array_equal(pseudo_iou([[3.0, 3.0]], [[3.0, 3.0, 3.0, 3.0]]), [[0.0]])


def test_threshold_0_4_is_a_above_4_7():
    # v = a / (2 - a) is increasing in a; v(4/7) = 0.4
    a = np.array([4 / 7 - 1e-9, 4 / 7 + 1e-9])
    v = a / (2 - a)
    assert v[0] < 0.4 < v[1]


def test_empty_shapes():
    assert pseudo_iou(np.zeros((0, 2)), [[0, 0, 4, 4]]).shape == (1, 0)
    assert pseudo_iou([[1.0, 1.0]], np.zeros((0, 4))).shape == (0, 1)
    assert pseudo_iou_explicit(np.zeros((0, 2)), np.zeros((0, 4))).shape == (0, 0)
    assert pseudo_iou_algorithm1(np.zeros((0, 4))).shape == (0,)
    assert pseudo_iou_algorithm1(np.zeros((2, 0, 4))).shape == (2, 0)


def test_algorithm1_keeps_leading_shape():
    ltrb = np.tile([5.0, 2.0, 5.0, 6.0], (2, 3, 1))
    np.testing.assert_allclose(pseudo_iou_algorithm1(ltrb), np.full((2, 3), 0.6), rtol=1e-15)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pseudo_iou_algorithm1([[1.0, 2.0, 3.0]]), "ltrb"),
        (lambda: pseudo_iou_algorithm1([[1.0, np.nan, 3.0, 4.0]]), "ltrb"),
        (lambda: pseudo_iou([[np.inf, 1.0]], [[0, 0, 1, 1]]), "points"),
        (lambda: pseudo_iou([[1.0, 1.0]], [[0, 0, 1, 1], [2, 0, 1, 1]]), "gt_boxes: row 1"),
        (lambda: pseudo_iou_explicit([[1.0, 1.0, 1.0]], [[0, 0, 1, 1]]), "points"),
        (lambda: pseudo_iou_explicit([[1.0, 1.0]], [[0, 0, 1]]), "gt_boxes"),
        (lambda: pseudo_iou([["a", "b"]], [[0, 0, 1, 1]]), "points"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------
# invariants (specs/pseudo_iou.md §3)


@given(box_and_inside_points())
def test_algorithm1_equals_explicit_strictly_inside(case):
    box, points = case
    explicit = pseudo_iou_explicit(points, [box])[0]
    np.testing.assert_allclose(pseudo_iou_algorithm1(ltrb_of(points, box)), explicit, rtol=1e-9, atol=1e-12)


@given(CORNER, CORNER, SIZE, SIZE, st.lists(st.tuples(st.floats(-1, 1), st.floats(-1, 1)), min_size=1, max_size=8))
def test_algorithm1_equals_explicit_inside_doubled_box(x1, y1, w, h, offsets):
    # |dx| <= w and |dy| <= h (specs/pseudo_iou.md §2), points given by their offset from the centre
    box = np.array([x1, y1, x1 + w, y1 + h])
    points = np.array([[x1 + w / 2 + u * w, y1 + h / 2 + v * h] for u, v in offsets])
    np.testing.assert_allclose(
        pseudo_iou_algorithm1(ltrb_of(points, box)), pseudo_iou_explicit(points, [box])[0], rtol=1e-7, atol=1e-9
    )


@given(CORNER, CORNER, SIZE, SIZE, st.lists(st.tuples(CORNER, CORNER), min_size=1, max_size=10))
def test_closed_form_equals_explicit_everywhere(x1, y1, w, h, points):
    box = np.array([x1, y1, x1 + w, y1 + h])
    points = np.array(points)
    np.testing.assert_allclose(pseudo_iou(points, [box]), pseudo_iou_explicit(points, [box]), rtol=1e-9, atol=1e-12)


@given(box_and_inside_points())
def test_equals_a_over_two_minus_a_and_lies_in_open_seventh_to_one(case):
    box, points = case
    w, h = box[2] - box[0], box[3] - box[1]
    a = (1 - np.abs(points[:, 0] - (box[0] + box[2]) / 2) / w) * (1 - np.abs(points[:, 1] - (box[1] + box[3]) / 2) / h)
    value = pseudo_iou_algorithm1(ltrb_of(points, box))
    np.testing.assert_allclose(value, a / (2 - a), rtol=1e-9, atol=1e-12)
    assert np.all(value > 1 / 7 - 1e-12) and np.all(value <= 1.0)


@given(CORNER, CORNER, SIZE, SIZE)
def test_centre_gives_one(x1, y1, w, h):
    box = np.array([x1, y1, x1 + w, y1 + h])
    centre = np.array([[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]])
    np.testing.assert_allclose(pseudo_iou_algorithm1(ltrb_of(centre, box)), [1.0], rtol=1e-12)
    np.testing.assert_allclose(pseudo_iou(centre, [box]), [[1.0]], rtol=1e-12)


@given(box_and_inside_points(), CORNER, CORNER, st.floats(0.01, 100.0))
def test_translation_and_scale_invariance(case, tx, ty, k):
    box, points = case
    shift = np.array([tx, ty])
    moved_box = box * k + np.concatenate([shift, shift])
    moved_points = points * k + shift
    np.testing.assert_allclose(
        pseudo_iou(moved_points, [moved_box]), pseudo_iou(points, [box]), rtol=1e-6, atol=1e-9
    )
    np.testing.assert_allclose(
        pseudo_iou_algorithm1(ltrb_of(moved_points, moved_box)), pseudo_iou_algorithm1(ltrb_of(points, box)), rtol=1e-6, atol=1e-9
    )


@given(box_and_inside_points())
def test_mirror_symmetry(case):
    box, points = case
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    mirrored = 2 * centre - points
    np.testing.assert_allclose(pseudo_iou(mirrored, [box]), pseudo_iou(points, [box]), rtol=1e-9, atol=1e-12)


@given(CORNER, CORNER, SIZE, SIZE, st.floats(1.01, 5.0), st.floats(-0.99, 0.99), st.floats(1.01, 1.9))
def test_algorithm1_outside_doubled_box(x1, y1, w, h, fx, fy, gx):
    box = np.array([x1, y1, x1 + w, y1 + h])
    cx, cy = x1 + w / 2, y1 + h / 2
    one_axis = np.array([[cx + fx * w, cy + fy * h]])  # |dx| > w, |dy| < h (at |dy| = h the value is 0)
    # |dx| > w, |dy| > h with S* = (|dx| - w)(|dy| - h) < 2wh: a spurious positive value
    both_axes = np.array([[cx - gx * w, cy + gx * h]])
    assert pseudo_iou_algorithm1(ltrb_of(one_axis, box))[0] < 0
    assert pseudo_iou_algorithm1(ltrb_of(both_axes, box))[0] > 0
    np.testing.assert_array_equal(pseudo_iou(np.concatenate([one_axis, both_axes]), [box]), [[0.0, 0.0]])


@given(CORNER, CORNER, st.floats(0, 50), st.booleans(), st.lists(st.tuples(CORNER, CORNER), min_size=1, max_size=8))
def test_zero_area_gt_gives_zero_and_no_nan(x1, y1, side, vertical, points):
    box = np.array([x1, y1, x1, y1 + side]) if vertical else np.array([x1, y1, x1 + side, y1])
    points = np.array(points)
    np.testing.assert_array_equal(pseudo_iou(points, [box]), np.zeros((1, len(points))))
    np.testing.assert_array_equal(pseudo_iou_explicit(points, [box]), np.zeros((1, len(points))))
    assert np.isfinite(pseudo_iou_algorithm1(ltrb_of(points, box))).all()


@settings(max_examples=20)
@given(st.lists(st.tuples(CORNER, CORNER, SIZE, SIZE), min_size=0, max_size=5), st.lists(st.tuples(CORNER, CORNER), max_size=6))
def test_rows_are_per_gt(boxes, points):
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes]).reshape(-1, 4)
    points = np.array(points).reshape(-1, 2)
    full = pseudo_iou(points, boxes)
    assert full.shape == (len(boxes), len(points))
    for g in range(len(boxes)):
        np.testing.assert_array_equal(full[g], pseudo_iou(points, boxes[g : g + 1])[0])
