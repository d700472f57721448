"""specs/coders.md: examples, round trips, clamping and bad input for reference/coders.py."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import coders as C
from reference.conventions import DELTA_MAX_RATIO


def test_delta_example():  # §1
    deltas = C.encode_deltas([[0, 0, 10, 20]], [[5, 0, 25, 20]])
    np.testing.assert_allclose(deltas, [[1.0 / 0.1, 0.0, math.log(2) / 0.2, 0.0]])


def test_delta_decode_clamps_symmetrically():  # §2
    boxes = C.decode_deltas([[0, 0, 16, 16], [0, 0, 16, 16]], [[0, 0, 1e6, -np.inf], [0, 0, -1e6, np.inf]])
    big, small = 16 * math.exp(DELTA_MAX_RATIO), 16 * math.exp(-DELTA_MAX_RATIO)
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], [big, small], rtol=1e-12)
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], [small, big], rtol=1e-12)


def test_delta_decode_propagates_nan():  # §2
    boxes = C.decode_deltas([[0, 0, 16, 16]], [[np.nan, 0, 0, 0]])
    assert np.isnan(boxes[0, [0, 2]]).all() and np.isfinite(boxes[0, [1, 3]]).all()


def test_ltrb_example_and_clamp():  # §3, §4
    np.testing.assert_array_equal(C.encode_ltrb([[8, 8]], [[0, 4, 24, 12]], [8]), [[1, 0.5, 2, 0.5]])
    np.testing.assert_array_equal(C.decode_ltrb([[8, 8]], [[1, 0.5, -2, 0.5]], [8]), [[0, 4, 8, 12]])


positive_boxes = st.tuples(
    st.floats(-500, 500), st.floats(-500, 500), st.floats(1, 800), st.floats(1, 800)
).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@given(st.lists(st.tuples(positive_boxes, positive_boxes), min_size=1, max_size=10))
def test_delta_round_trip(pairs):  # §2 round trip
    anchors = np.array([a for a, _ in pairs])
    boxes = np.array([b for _, b in pairs])
    ratio = np.abs(np.log((boxes[:, 2:] - boxes[:, :2]) / (anchors[:, 2:] - anchors[:, :2])))
    decoded = C.decode_deltas(anchors, C.encode_deltas(anchors, boxes))
    inside = (ratio <= DELTA_MAX_RATIO).all(axis=1)
    np.testing.assert_allclose(decoded[inside], boxes[inside], rtol=0, atol=1e-9)


@given(st.lists(st.tuples(positive_boxes, st.floats(0, 1), st.floats(0, 1), st.sampled_from([8, 16, 128])), min_size=1, max_size=10))
def test_ltrb_round_trip(rows):  # §4 round trip
    boxes = np.array([b for b, _, _, _ in rows])
    points = np.array([[b[0] + u * (b[2] - b[0]), b[1] + v * (b[3] - b[1])] for b, u, v, _ in rows])
    strides = np.array([s for *_, s in rows], dtype=float)
    decoded = C.decode_ltrb(points, C.encode_ltrb(points, boxes, strides), strides)
    np.testing.assert_allclose(decoded, boxes, rtol=0, atol=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="boxes: row 0 has zero width"):
        C.encode_deltas([[0, 0, 10, 10]], [[0, 0, 0, 10]])
    with pytest.raises(ValueError, match="anchors: row 1 has zero width"):
        C.decode_deltas([[0, 0, 10, 10], [5, 5, 5, 9]], np.zeros((2, 4)))
    with pytest.raises(ValueError, match="deltas: expected 1 rows"):
        C.decode_deltas([[0, 0, 10, 10]], np.zeros((2, 4)))
    with pytest.raises(ValueError, match="strides"):
        C.encode_ltrb([[1, 1]], [[0, 0, 2, 2]], [0])
