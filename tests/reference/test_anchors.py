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
