"""specs/anchors.md: sizes, ordering, centres and bad input for reference/anchors.py."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import anchors as R
from reference.boxes import box_centers


def test_coco_sized_input_counts():  # §4 example
    anchors, counts = R.multi_level_anchors((800, 1333))
    assert counts == [16700, 4200, 1050, 273, 77]
    assert anchors.shape == (22300, 4)


def test_first_anchors_and_points():  # §2, §3
    anchors, _ = R.multi_level_anchors((16, 24), strides=(8,))
    np.testing.assert_array_equal(anchors[:4], [[-28, -28, 36, 36], [-20, -28, 44, 36], [-12, -28, 52, 36], [-28, -20, 36, 44]])
    points, strides, counts = R.multi_level_points((16, 24), strides=(8, 16), center_offset=0.0)
    assert counts == [6, 2]
    np.testing.assert_array_equal(points[:3], [[0, 0], [8, 0], [16, 0]])
    np.testing.assert_array_equal(points[6:], [[0, 0], [16, 0]])
    np.testing.assert_array_equal(strides, [8] * 6 + [16] * 2)


@given(st.integers(0, 300), st.integers(0, 300), st.sampled_from([0.0, 0.5]))
def test_layout_invariants(height, width, offset):  # invariants
    strides = (8, 16, 32)
    anchors, counts = R.multi_level_anchors((height, width), strides, center_offset=offset)
    points, point_strides, point_counts = R.multi_level_points((height, width), strides, center_offset=offset)
    assert counts == point_counts == [-(-height // s) * -(-width // s) for s in strides]
    np.testing.assert_array_equal(box_centers(anchors), points)
    start = 0
    for stride, count in zip(strides, counts):
        level = anchors[start : start + count]
        np.testing.assert_array_equal(level[:, 2] - level[:, 0], 8 * stride)
        np.testing.assert_array_equal(point_strides[start : start + count], stride)
        cols = -(-width // stride)
        for index in range(0, count, max(1, count // 7)):  # spot-check the row-major order
            y, x = divmod(index, cols)
            np.testing.assert_array_equal(points[start + index], [(x + offset) * stride, (y + offset) * stride])
        start += count


@pytest.mark.parametrize("size, strides", [((10.5, 4), (8,)), ((-1, 4), (8,)), ((8, 8), (0,)), ((8,), (8,))])
def test_bad_arguments(size, strides):
    with pytest.raises(ValueError):
        R.multi_level_anchors(size, strides)


def test_generators_take_the_feature_map_sizes_directly():
    """The README's trap: anchors for an unpadded 800 x 1333 image have 167 columns at stride
    8; the network on the padded input has more. ``level_sizes`` pairs them exactly."""
    from reference.anchors import feature_sizes, multi_level_anchors, multi_level_points

    strides = (8, 16, 32, 64, 128)
    padded = feature_sizes((896, 1408), strides)
    assert padded[0] == (112, 176) and feature_sizes((800, 1333), strides)[0] == (100, 167)
    direct, counts = multi_level_anchors(level_sizes=padded, strides=strides)
    from_size, counts_from_size = multi_level_anchors((896, 1408), strides)
    np.testing.assert_array_equal(direct, from_size)
    assert counts == counts_from_size == [h * w for h, w in padded]
    points, _, _ = multi_level_points(level_sizes=padded, strides=strides)
    assert len(points) == sum(counts)
    with pytest.raises(ValueError, match=r"level_sizes: .*do not tile image_size \(800, 1333\).*multiple of 128"):
        multi_level_anchors((800, 1333), strides, level_sizes=padded)
    with pytest.raises(ValueError, match="level_sizes: expected 5"):
        multi_level_points(level_sizes=padded[:2], strides=strides)
    with pytest.raises(ValueError, match="image_size, level_sizes"):
        multi_level_points(strides=strides)


# ---------------------------------------------------------------------------------------
# several anchors per location (§3, conventions §3)

from reference.conventions import (  # noqa: E402
    ANCHOR_QUANTUM,
    RETINANET_ANCHOR_RATIOS,
    RETINANET_ANCHOR_SCALES,
    RETINANET_OCTAVE_BASE_SCALE,
)


def _retinanet(size, strides):
    return R.multi_level_anchors(size, strides, RETINANET_OCTAVE_BASE_SCALE, scales=RETINANET_ANCHOR_SCALES,
                                 ratios=RETINANET_ANCHOR_RATIOS)


def test_anchor_shapes_order_is_ratio_outer_scale_inner():  # §3: mmdetection's AnchorGenerator order
    shapes = R.anchor_shapes(32.0, (1.0, 2.0), (0.25, 1.0, 4.0))
    # anchor i * S + j: ratio i, scale j; w = side / sqrt(r), h = side * sqrt(r)
    np.testing.assert_array_equal(shapes, [[64, 16], [128, 32], [32, 32], [64, 64], [16, 64], [32, 128]])
    assert R.anchor_shapes(64.0).tolist() == [[64.0, 64.0]]


def test_retinanet_shapes_keep_the_area_and_are_quantised():
    shapes = R.anchor_shapes(4 * 8, RETINANET_ANCHOR_SCALES, RETINANET_ANCHOR_RATIOS)
    assert shapes.shape == (9, 2)
    side = 32 * np.array(RETINANET_ANCHOR_SCALES * 3)
    ratio = np.repeat(RETINANET_ANCHOR_RATIOS, 3)
    np.testing.assert_allclose(np.sqrt(shapes[:, 0] * shapes[:, 1]), side, rtol=1e-4)
    np.testing.assert_allclose(shapes[:, 1] / shapes[:, 0], ratio, rtol=5e-4)  # quantisation: < 2^-9 px per side
    half = shapes / 2 / ANCHOR_QUANTUM
    np.testing.assert_array_equal(half, np.round(half))  # half sides on the 2^-8 grid


def test_one_default_anchor_is_the_old_square_bit_for_bit():
    for size, strides, base in (((200, 333), (8, 16, 32, 64, 128), 8), ((64, 96), (8, 16, 32), 4.0), ((40, 40), (8,), 5.3)):
        anchors, counts = R.multi_level_anchors(size, strides, base)
        points, _, point_counts = R.multi_level_points(size, strides)
        assert counts == point_counts
        start = 0
        for stride, count in zip(strides, counts):
            half = base * stride / 2  # the formula before several anchors per location existed
            expected = np.concatenate([points[start : start + count] - half, points[start : start + count] + half], axis=1)
            assert np.array_equal(anchors[start : start + count], expected)
            start += count


@given(st.integers(0, 200), st.integers(0, 200), st.sampled_from([0.0, 0.5]))
def test_nine_anchors_layout(height, width, offset):  # (level, row, column, anchor) order
    strides = (8, 16, 32)
    anchors, counts = R.multi_level_anchors((height, width), strides, RETINANET_OCTAVE_BASE_SCALE, offset,
                                            scales=RETINANET_ANCHOR_SCALES, ratios=RETINANET_ANCHOR_RATIOS)
    points, _, point_counts = R.multi_level_points((height, width), strides, center_offset=offset)
    assert counts == [9 * c for c in point_counts]
    # every anchor is centred on its location's point, exactly (quantised half sides)
    np.testing.assert_array_equal(box_centers(anchors), np.repeat(points, 9, axis=0))
    start = 0
    for stride, count in zip(strides, counts):
        level = anchors[start : start + count].reshape(-1, 9, 4)
        shapes = R.anchor_shapes(RETINANET_OCTAVE_BASE_SCALE * stride, RETINANET_ANCHOR_SCALES, RETINANET_ANCHOR_RATIOS)
        np.testing.assert_array_equal(level[..., 2] - level[..., 0], np.broadcast_to(shapes[:, 0], level.shape[:2]))
        np.testing.assert_array_equal(level[..., 3] - level[..., 1], np.broadcast_to(shapes[:, 1], level.shape[:2]))
        start += count


def test_nine_anchors_first_location_and_float32_exact():
    anchors, counts = _retinanet((16, 24), (8,))
    assert counts == [2 * 3 * 9]
    np.testing.assert_array_equal(box_centers(anchors[:9]), [[4.0, 4.0]] * 9)
    np.testing.assert_array_equal(box_centers(anchors[9:18]), [[12.0, 4.0]] * 9)  # the next column
    np.testing.assert_array_equal(box_centers(anchors[27:36]), [[4.0, 12.0]] * 9)  # the next row
    big, _ = _retinanet((1344, 1344), (8, 16, 32, 64, 128))
    assert np.array_equal(big.astype(np.float32).astype(np.float64), big)  # exact in float32


@pytest.mark.parametrize("scales, ratios", [((), (1.0,)), ((1.0,), ()), ((0.0,), (1.0,)), ((1.0,), (-1.0,)),
                                            ((float("nan"),), (1.0,))])
def test_bad_scales_and_ratios(scales, ratios):
    with pytest.raises(ValueError, match="scales|ratios"):
        R.multi_level_anchors((32, 32), (8,), scales=scales, ratios=ratios)
