"""Parity of detector/{boxes,anchors,coders}.py with the reference on generated scenes.

float64 on CPU: box metrics and anchors equal exactly (same operations in the same order);
coders to 1e-12 relative (exp/log may differ by an ulp between NumPy and torch).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector import anchors as DA  # noqa: E402
from detector import boxes as DB  # noqa: E402
from detector import coders as DC  # noqa: E402
from reference import anchors as RA  # noqa: E402
from reference import boxes as RB  # noqa: E402
from reference import coders as RC  # noqa: E402
from tests.strategies import gt_boxes, image_sizes, pred_deltas  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def t64(array, device="cpu"):
    return torch.as_tensor(np.asarray(array), dtype=torch.float64, device=device)


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_pairwise_metrics_match_reference(device, data):
    size = data.draw(image_sizes(max_side=1333))
    a = data.draw(gt_boxes(size, 0, 20))
    b = data.draw(gt_boxes(size, 0, 40))
    for name in ["box_iou", "box_giou", "box_iof"]:
        expected = getattr(RB, name)(a, b)
        actual = getattr(DB, name)(t64(a, device), t64(b, device)).cpu().numpy()
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    expected = RB.center_distances(a, RB.box_centers(b))
    actual = DB.center_distances(t64(a, device), DB.box_centers(t64(b, device))).cpu().numpy()
    # torch's float64 CPU sqrt is not always correctly rounded (1 ulp): specs/boxes.md §6
    np.testing.assert_allclose(actual, expected, rtol=4e-16, atol=0)
    points = RB.box_centers(b)
    for eps in (0.0, 0.01):
        expected = RB.points_inside_boxes(points, a, eps)
        np.testing.assert_array_equal(DB.points_inside_boxes(t64(points, device), t64(a, device), eps).cpu().numpy(), expected)
    n = min(len(a), len(b))
    for name in ["aligned_box_iou", "aligned_box_giou"]:
        expected = getattr(RB, name)(a[:n], b[:n])
        np.testing.assert_array_equal(getattr(DB, name)(t64(a[:n], device), t64(b[:n], device)).cpu().numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_unchecked_iou_and_safe_divide_match_reference(device, data):
    size = data.draw(image_sizes(max_side=1333))
    a = data.draw(gt_boxes(size, 0, 20))
    b = data.draw(gt_boxes(size, 0, 40))
    # broadcast (G, 1, 4) x (1, A, 4): the pairwise IoU, bit for bit (specs/boxes.md §2)
    actual = DB.aligned_box_iou_unchecked(t64(a, device)[:, None, :], t64(b, device)[None, :, :])
    np.testing.assert_array_equal(actual.cpu().numpy(), RB.box_iou(a, b))
    numerator = np.random.default_rng(len(a)).normal(size=(len(a), 3))
    denominator = np.random.default_rng(len(b)).normal(size=3).round()  # zeros, negatives
    for where in (None, denominator != 0):
        expected = RB.safe_divide(numerator, denominator, where=where)
        mask = None if where is None else torch.as_tensor(where, device=device)
        np.testing.assert_array_equal(DB.safe_divide(t64(numerator, device), t64(denominator, device), where=mask).cpu().numpy(), expected)


@given(data=st.data())
def test_float32_metrics_close(data):
    size = data.draw(image_sizes(max_side=1333))
    a, b = data.draw(gt_boxes(size, 1, 10)), data.draw(gt_boxes(size, 1, 10))
    actual = DB.box_iou(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    assert actual.dtype == torch.float32
    np.testing.assert_allclose(actual.numpy(), RB.box_iou(a.astype(np.float32), b.astype(np.float32)), atol=2e-6)


@given(st.integers(0, 1400), st.integers(0, 1400), st.sampled_from([0.0, 0.5]), st.integers(1, 5))
def test_anchors_and_points_match_reference(height, width, offset, num_levels):
    strides = (8, 16, 32, 64, 128)[:num_levels]
    anchors, counts = RA.multi_level_anchors((height, width), strides, center_offset=offset)
    t_anchors, t_counts = DA.multi_level_anchors((height, width), strides, center_offset=offset, dtype=torch.float64)
    assert t_counts == counts
    np.testing.assert_array_equal(t_anchors.numpy(), anchors)
    points, point_strides, _ = RA.multi_level_points((height, width), strides, center_offset=offset)
    t_points, t_strides, _ = DA.multi_level_points((height, width), strides, center_offset=offset, dtype=torch.float64)
    np.testing.assert_array_equal(t_points.numpy(), points)
    np.testing.assert_array_equal(t_strides.numpy(), point_strides)
    sizes = RA.feature_sizes((height, width), strides)  # the same grids from the feature-map sizes
    t_direct, t_direct_counts = DA.multi_level_anchors(level_sizes=sizes, strides=strides, center_offset=offset,
                                                       dtype=torch.float64)
    assert t_direct_counts == counts
    np.testing.assert_array_equal(t_direct.numpy(), anchors)
    np.testing.assert_array_equal(RA.multi_level_points(level_sizes=sizes, strides=strides, center_offset=offset)[0], points)


@pytest.mark.parametrize("device", DEVICES)
@given(st.integers(0, 700), st.integers(0, 700), st.sampled_from([0.0, 0.5]), st.integers(1, 5),
       st.sampled_from(["one", "retinanet", "two_scales"]))
def test_several_anchors_per_location_match_reference(device, height, width, offset, num_levels, shapes):
    from reference.conventions import RETINANET_ANCHOR_RATIOS, RETINANET_ANCHOR_SCALES

    scales, ratios = {"one": ((1.0,), (1.0,)), "retinanet": (RETINANET_ANCHOR_SCALES, RETINANET_ANCHOR_RATIOS),
                      "two_scales": ((1.0, 1.5), (1.0,))}[shapes]
    strides = (8, 16, 32, 64, 128)[:num_levels]
    anchors, counts = RA.multi_level_anchors((height, width), strides, 4, offset, scales=scales, ratios=ratios)
    for dtype in (torch.float64, torch.float32):
        t_anchors, t_counts = DA.multi_level_anchors((height, width), strides, 4, offset, scales=scales, ratios=ratios,
                                                     device=device, dtype=dtype)
        assert t_counts == counts and t_anchors.dtype == dtype
        # quantised half sides on multiples of 4 px centres: float32 holds them exactly too
        np.testing.assert_array_equal(t_anchors.cpu().double().numpy(), anchors)
    np.testing.assert_array_equal(DA.anchor_shapes(32.0, scales, ratios, dtype=torch.float64).numpy(),
                                  RA.anchor_shapes(32.0, scales, ratios))


def test_default_single_anchor_is_the_old_formula_in_float32():
    # the single-anchor path computes what it did before anchor shapes were configurable
    strides = (8, 16, 32)
    for base in (8, 4.0):
        anchors, counts = DA.multi_level_anchors((128, 160), strides, base, dtype=torch.float32)
        points, _, _ = DA.multi_level_points((128, 160), strides, dtype=torch.float32)
        start = 0
        for stride, count in zip(strides, counts):
            half = base * stride / 2
            expected = torch.cat([points[start : start + count] - half, points[start : start + count] + half], dim=1)
            assert torch.equal(anchors[start : start + count], expected)
            start += count


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_coders_match_reference(device, data):
    size = data.draw(image_sizes(max_side=640))
    anchors, _ = RA.multi_level_anchors(size, (32, 64))
    deltas = data.draw(pred_deltas(len(anchors)))
    expected = RC.decode_deltas(anchors, deltas)
    actual = DC.decode_deltas(t64(anchors, device), t64(deltas, device)).cpu().numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(
        DC.encode_deltas(t64(anchors, device), t64(expected, device)).cpu().numpy(),
        RC.encode_deltas(anchors, expected),
        rtol=1e-9,
        atol=1e-9,
    )
    points, strides, _ = RA.multi_level_points(size, (32, 64))
    distances = np.abs(deltas[: len(points)])
    boxes = RC.decode_ltrb(points, distances, strides)
    np.testing.assert_array_equal(DC.decode_ltrb(t64(points, device), t64(distances, device), t64(strides, device)).cpu().numpy(), boxes)
    np.testing.assert_allclose(
        DC.encode_ltrb(t64(points, device), t64(boxes, device), t64(strides, device)).cpu().numpy(),
        RC.encode_ltrb(points, boxes, strides),
        rtol=1e-12,
        atol=1e-12,
    )


def test_detector_rejects_bad_boxes_like_reference():
    bad = [[0, 0, 1, 1], [0, 0, 1, float("nan")]]
    with pytest.raises(ValueError, match="boxes1: row 1 has a NaN or Inf"):
        DB.box_iou(torch.tensor(bad), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="boxes2: row 0 has x2 < x1"):
        DB.box_iou(torch.zeros(1, 4), torch.tensor([[5.0, 0, 4, 1]]))
    with pytest.raises(ValueError, match="expected a real"):
        DB.box_iou(torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4))


def test_half_inputs_are_upcast_and_zero_area_gives_no_nan():
    iou = DB.box_iou(torch.tensor([[3.0, 3, 3, 3]], dtype=torch.float16), torch.tensor([[3.0, 3, 3, 3]], dtype=torch.float16))
    assert iou.dtype == torch.float32 and iou.item() == 0.0
