"""Parity of detector/pseudo_iou.py with the reference (specs/pseudo_iou.md).

float64: equal to 1e-12 (the same operations; division may differ by an ulp); float32:
close to 1e-5 relative to the coordinate scale.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector import pseudo_iou as DP  # noqa: E402
from reference import pseudo_iou as RP  # noqa: E402
from tests.parity.helpers import DEVICES, to_numpy, to_torch  # noqa: E402
from tests.strategies import gt_boxes, image_sizes  # noqa: E402


@st.composite
def boxes_and_points(draw, max_boxes=20):
    size = draw(image_sizes(max_side=1333))
    boxes = draw(gt_boxes(size, 0, max_boxes))
    count = draw(st.integers(0, 30))
    unit = st.floats(-0.25, 1.25, allow_nan=False)
    points = np.array([[draw(unit) * size[1], draw(unit) * size[0]] for _ in range(count)]).reshape(-1, 2)
    return boxes, points


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40)
@given(boxes_and_points())
def test_all_forms_match_reference_float64(device, case):
    boxes, points = case
    for name in ("pseudo_iou", "pseudo_iou_explicit"):
        actual = getattr(DP, name)(to_torch(points, device=device), to_torch(boxes, device=device))
        assert actual.dtype == torch.float64 and actual.shape == (len(boxes), len(points))
        np.testing.assert_allclose(to_numpy(actual), getattr(RP, name)(points, boxes), rtol=1e-12, atol=1e-15, err_msg=name)
    ltrb = np.stack(
        [points[None, :, 0] - boxes[:, None, 0], points[None, :, 1] - boxes[:, None, 1], boxes[:, None, 2] - points[None, :, 0], boxes[:, None, 3] - points[None, :, 1]],
        axis=-1,
    )  # (G, A, 4)
    actual = DP.pseudo_iou_algorithm1(to_torch(ltrb, device=device))
    np.testing.assert_allclose(to_numpy(actual), RP.pseudo_iou_algorithm1(ltrb), rtol=1e-12, atol=1e-15)


@settings(max_examples=30)
@given(boxes_and_points())
def test_float32_close_and_never_nan(case):
    boxes, points = case
    actual = DP.pseudo_iou(to_torch(points, torch.float32), to_torch(boxes, torch.float32))
    assert actual.dtype == torch.float32
    assert not torch.isnan(actual).any()
    # float32 inputs round coordinates by up to 6e-8 * 1333; IoU moves by that over the box size
    expected = RP.pseudo_iou(points.astype(np.float32), boxes.astype(np.float32))
    np.testing.assert_allclose(to_numpy(actual), expected, rtol=0, atol=2e-4)


def test_half_is_upcast_and_integers_accepted():
    points = torch.tensor([[5.0, 2.0]], dtype=torch.float16)
    boxes = torch.tensor([[0, 0, 10, 8]], dtype=torch.int64)
    value = DP.pseudo_iou(points, boxes)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, torch.tensor([[0.6]]))
    torch.testing.assert_close(DP.pseudo_iou_algorithm1(torch.tensor([5.0, 2.0, 5.0, 6.0], dtype=torch.bfloat16)), torch.tensor(0.6))


def test_bad_input_raises_like_reference():
    with pytest.raises(ValueError, match="ltrb"):
        DP.pseudo_iou_algorithm1(torch.tensor([[1.0, float("nan"), 1.0, 1.0]]))
    with pytest.raises(ValueError, match="gt_boxes: row 1"):
        DP.pseudo_iou(torch.zeros(1, 2), torch.tensor([[0.0, 0, 1, 1], [2, 0, 1, 1]]))
    with pytest.raises(ValueError, match="points"):
        DP.pseudo_iou_explicit(torch.zeros(1, 3), torch.zeros(1, 4))


def test_zero_area_gives_zero_and_gradients_are_finite():
    points = torch.tensor([[0.0, 5.0], [2.0, 5.0], [4.0, 3.0]], requires_grad=True)
    boxes = torch.tensor([[0.0, 0.0, 0.0, 10.0], [0.0, 0.0, 8.0, 6.0]], requires_grad=True)
    value = DP.pseudo_iou(points, boxes)
    torch.testing.assert_close(value[0], torch.zeros(3))
    value.sum().backward()
    assert torch.isfinite(points.grad).all() and torch.isfinite(boxes.grad).all()
