"""specs/boxes.md: worked examples, invariants and bad input for reference/boxes.py."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import boxes as B
from tests.strategies import gt_boxes, image_sizes

SIZE = (512, 640)


def test_iou_example():  # §2 example
    iou = B.box_iou([[0, 0, 10, 10]], [[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1 / 7, 1.0, 0.0]], rtol=1e-15)


def test_giou_example():  # §3 example
    np.testing.assert_allclose(B.box_giou([[0, 0, 10, 10]], [[20, 0, 30, 10]]), [[-1 / 3]], rtol=1e-15)


def test_zero_area_boxes_give_zero_iou_and_defined_giou():  # §2, §3
    points = [[3, 3, 3, 3], [5, 5, 5, 5]]
    np.testing.assert_array_equal(B.box_iou(points, points), np.zeros((2, 2)))
    # same point: enclosure has zero area -> GIoU = IoU = 0; apart: enclosure 2x2 -> -1
    np.testing.assert_array_equal(B.box_giou(points, points), [[0.0, -1.0], [-1.0, 0.0]])
    np.testing.assert_array_equal(B.box_iou([[0, 0, 0, 10]], [[0, 0, 10, 10]]), [[0.0]])


def test_iof_example_and_zero_area():  # §4
    iof = B.box_iof([[0, 0, 10, 10]], [[5, 0, 15, 10], [2, 2, 4, 4], [3, 3, 3, 3]])
    np.testing.assert_allclose(iof, [[0.5, 1.0, 0.0]])


def test_inside_is_strict_with_eps():  # §7
    boxes = [[0, 0, 10, 10]]
    points = [[5, 5], [0.01, 5], [0.02, 5], [0, 5], [10, 5]]
    np.testing.assert_array_equal(B.points_inside_boxes(points, boxes, 0.01), [[True, False, True, False, False]])
    np.testing.assert_array_equal(B.points_inside_boxes(points, boxes, 0.0), [[True, True, True, False, False]])
    assert not B.points_inside_boxes([[3, 5]], [[3, 0, 3, 10]], 0.0).any()


def test_ltrb_and_centers():  # §1, §7
    np.testing.assert_array_equal(B.ltrb_distances([[2, 3]], [[0, 0, 10, 4]]), [[[2, 3, 8, 1]]])
    np.testing.assert_array_equal(B.box_centers([[0, 0, 10, 4]]), [[5, 2]])
    np.testing.assert_array_equal(B.center_distances([[0, 0, 10, 4]], [[8, 6]]), [[5.0]])
    np.testing.assert_array_equal(B.box_area([[0, 0, 10, 4], [1, 1, 1, 9]]), [40, 0])


def test_safe_divide():  # §9
    np.testing.assert_array_equal(B.safe_divide(np.array([1.0, 1.0, 1.0]), np.array([2.0, 0.0, -1.0])), [0.5, 0.0, 0.0])
    denominator = np.array([2.0, 0.0, -1.0])
    np.testing.assert_array_equal(B.safe_divide(np.array([1.0, 1.0, 1.0]), denominator, where=denominator != 0), [0.5, 0.0, -1.0])
    np.testing.assert_array_equal(B.safe_divide(np.zeros((2, 1)), np.ones(3)), np.zeros((2, 3)))


def test_empty_inputs_keep_shapes():  # §8
    assert B.box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert B.box_giou([[0, 0, 1, 1]], np.zeros((0, 4))).shape == (1, 0)
    assert B.center_distances(np.zeros((0, 4)), np.zeros((0, 2))).shape == (0, 0)
    assert B.points_inside_boxes(np.zeros((3, 2)), np.zeros((0, 4)), 0.0).shape == (0, 3)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[0, 0, 1, 1], [5, 0, 4, 1]], "boxes1: row 1 has x2 < x1"),
        ([[0, 0, 1, 1], [0, 0, 1, np.nan]], "boxes1: row 1 has a NaN or Inf"),
        ([[0, 0, np.inf, 1]], "boxes1: row 0 has a NaN or Inf"),
        ([[0, 0, 1]], r"boxes1: expected shape \(N, 4\)"),
        (np.array([[True, True, True, True]]), "boxes1: expected a real"),
        (np.array([["a", "b", "c", "d"]]), "boxes1: expected a real"),
    ],
)
def test_bad_boxes_name_argument_and_row(bad, message):
    with pytest.raises(ValueError, match=message):
        B.box_iou(bad, [[0, 0, 1, 1]])


def test_integer_boxes_are_accepted():
    np.testing.assert_allclose(B.box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 5, 15, 15]])), [[1 / 7]])


@given(st.data())
def test_iou_giou_invariants(data):  # §2, §3
    size = data.draw(image_sizes(max_side=800))
    a = data.draw(gt_boxes(size, 1, 8))
    b = data.draw(gt_boxes(size, 1, 8))
    iou, giou = B.box_iou(a, b), B.box_giou(a, b)
    assert ((iou >= 0) & (iou <= 1)).all()
    assert ((giou >= -1 - 1e-12) & (giou <= iou + 1e-12)).all()
    np.testing.assert_allclose(iou, B.box_iou(b, a).T, rtol=0, atol=1e-15)
    positive = B.box_area(a) > 0
    np.testing.assert_allclose(np.diag(B.box_iou(a, a))[positive], 1.0, rtol=1e-12)
    np.testing.assert_allclose(B.aligned_box_iou(a, a[::-1]), np.diag(B.box_iou(a, a[::-1])), atol=1e-15)
    np.testing.assert_allclose(B.aligned_box_giou(a, a[::-1]), np.diag(B.box_giou(a, a[::-1])), atol=1e-15)


@given(st.data())
def test_iou_translation_and_scale_invariance(data):  # §2
    a = data.draw(gt_boxes(SIZE, 1, 5))
    b = data.draw(gt_boxes(SIZE, 1, 5))
    shift = np.array(data.draw(st.tuples(st.integers(-300, 300), st.integers(-300, 300))) * 2, dtype=float)
    scale = data.draw(st.sampled_from([0.25, 0.5, 2.0, 4.0]))  # powers of two: exact in binary
    np.testing.assert_allclose(B.box_iou(a + shift, b + shift), B.box_iou(a, b), atol=1e-9)
    np.testing.assert_allclose(B.box_iou(a * scale, b * scale), B.box_iou(a, b), atol=1e-12)


@given(st.data())
def test_giou_equals_iou_when_nested(data):  # §3
    outer = data.draw(gt_boxes(SIZE, 1, 1))[0]
    shrink = data.draw(st.floats(0, 0.45))
    w, h = outer[2] - outer[0], outer[3] - outer[1]
    inner = outer + np.array([shrink * w, shrink * h, -shrink * w, -shrink * h])
    np.testing.assert_allclose(B.box_giou([outer], [inner]), B.box_iou([outer], [inner]), atol=1e-12)
