"""reference/vfnet.py against specs/vfnet.md: a star-offset example by hand, the IoU and VFL
targets of a small scene, and hypothesis invariants."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.conventions import BACKGROUND, IGNORE
from reference.vfnet import (
    GRADIENT_MUL,
    INIT_BOX_LOSS_WEIGHT,
    INIT_DISTANCE_STRIDES,
    IOU_TARGET_MIN,
    REFINE_BOX_LOSS_WEIGHT,
    star_dcn_offsets,
    star_points,
    varifocal_targets,
    vfnet_iou_targets,
)


def test_constants_are_mmdetections():
    assert (GRADIENT_MUL, INIT_DISTANCE_STRIDES, IOU_TARGET_MIN) == (0.1, 8.0, 1e-6)
    assert (INIT_BOX_LOSS_WEIGHT, REFINE_BOX_LOSS_WEIGHT) == (1.5, 2.0)


def test_star_offsets_by_hand():
    # l, t, r, b = 16, 8, 24, 40 px at stride 8: 2, 1, 3, 5 cells
    # star points (dy, dx): (-1,-2) (-1,0) (-1,3) / (0,-2) (0,0) (0,3) / (5,-2) (5,0) (5,3)
    # minus the taps (ky, kx): (-1,-1) (-1,0) (-1,1) / (0,-1) (0,0) (0,1) / (1,-1) (1,0) (1,1)
    expected = [0, -1, 0, 0, 0, 2,
                0, -1, 0, 0, 0, 2,
                4, -1, 4, 0, 4, 2]
    np.testing.assert_array_equal(star_dcn_offsets([[16.0, 8.0, 24.0, 40.0]], 8), [expected])
    points = star_points([[16.0, 8.0, 24.0, 40.0]], [8.0])
    assert points.shape == (1, 9, 2)
    np.testing.assert_array_equal(points[0, [0, 4, 8]], [[-1, -2], [0, 0], [5, 3]])
    # at stride 16 the same box is 1, 0.5, 1.5, 2.5 cells; gradient_mul never changes a value
    expected16 = [0.5, 0, 0.5, 0, 0.5, 0.5,
                  0, 0, 0, 0, 0, 0.5,
                  1.5, 0, 1.5, 0, 1.5, 0.5]
    np.testing.assert_array_equal(star_dcn_offsets([[16.0, 8.0, 24.0, 40.0]], 16, gradient_mul=1.0), [expected16])


def test_a_box_of_one_cell_per_side_gives_zero_offsets():
    # l = t = r = b = 1 cell: the star points are exactly the regular 3x3 taps
    np.testing.assert_array_equal(star_dcn_offsets([[32.0, 32.0, 32.0, 32.0]], 32), np.zeros((1, 18)))


@pytest.mark.parametrize("bad, match", [
    (dict(distances=[[1.0, 2.0, 3.0]]), "distances"),
    (dict(distances=[[1.0, np.nan, 3.0, 4.0]]), "distances"),
    (dict(strides=0.0), "strides"),
    (dict(strides=[8.0, 8.0]), "strides"),
    (dict(gradient_mul=1.5), "gradient_mul"),
    (dict(gradient_mul=-0.1), "gradient_mul"),
])
def test_bad_inputs_raise(bad, match):
    arguments = dict(distances=[[1.0, 2.0, 3.0, 4.0]], strides=8.0, gradient_mul=0.1) | bad
    with pytest.raises(ValueError, match=match):
        star_dcn_offsets(**arguments)


def test_iou_and_varifocal_targets_of_a_scene():
    gt_boxes = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 40.0]])
    gt_labels = np.array([2, 0])
    boxes = np.array([
        [0.0, 0.0, 10.0, 5.0],      # positive of GT 0: IoU 0.5
        [100.0, 100.0, 110.0, 110.0],  # positive of GT 1, no overlap: clamped to 1e-6
        [20.0, 20.0, 30.0, 40.0],   # background
        [0.0, 0.0, 10.0, 10.0],     # ignore
        [20.0, 20.0, 30.0, 40.0],   # positive of GT 1: IoU 1
    ])
    matched = np.array([0, 1, BACKGROUND, IGNORE, 1])
    ious = vfnet_iou_targets(boxes, matched, gt_boxes)
    np.testing.assert_allclose(ious, [0.5, IOU_TARGET_MIN, 0.0, 0.0, 1.0])
    targets, weights = varifocal_targets(boxes, matched, gt_boxes, gt_labels, 3)
    expected = np.zeros((5, 3))
    expected[0, 2], expected[1, 0], expected[4, 0] = 0.5, IOU_TARGET_MIN, 1.0
    np.testing.assert_allclose(targets, expected)
    np.testing.assert_array_equal(weights, [1, 1, 1, 0, 1])
    with pytest.raises(ValueError, match="boxes"):
        vfnet_iou_targets(boxes[:4], matched, gt_boxes)


@given(st.integers(0, 2**32 - 1), st.integers(0, 10))
def test_star_points_are_the_corners_midpoints_and_centre_of_the_box(seed, rows):
    rng = np.random.default_rng(seed)
    distances = rng.uniform(0, 300, size=(rows, 4))
    strides = rng.choice([8.0, 16.0, 32.0, 64.0, 128.0], size=rows)
    points = star_points(distances, strides) * strides[:, None, None]  # back to pixels
    left, top, right, bottom = distances.T
    for a in range(rows):
        assert set(points[a, :, 0].round(9)) <= {round(-top[a], 9), 0.0, round(bottom[a], 9)}
        assert set(points[a, :, 1].round(9)) <= {round(-left[a], 9), 0.0, round(right[a], 9)}
        np.testing.assert_allclose(points[a, 4], [0.0, 0.0])
        np.testing.assert_allclose(points[a, [0, 2, 6, 8]], [[-top[a], -left[a]], [-top[a], right[a]],
                                                             [bottom[a], -left[a]], [bottom[a], right[a]]])
    # offsets + taps = star points, whatever gradient_mul
    grid = np.stack(np.meshgrid([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], indexing="ij"), axis=-1).reshape(9, 2)
    offsets = star_dcn_offsets(distances, strides, gradient_mul=rng.uniform())
    np.testing.assert_allclose(offsets.reshape(rows, 9, 2) + grid, star_points(distances, strides), atol=1e-12)
