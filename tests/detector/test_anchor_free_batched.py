"""Anchor-free assigners, torch only: batched == per-image, dtypes, devices, exact ties,
memory budget, never NaN (specs/anchor_free.md §8)."""
import inspect
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector.anchors import multi_level_points  # noqa: E402
from detector.assign import anchor_free as DAF  # noqa: E402
from detector.conventions import BACKGROUND, FCOS_REGRESS_RANGES  # noqa: E402
from tests.parity.helpers import DEVICES, assert_batched_equals_stacked, pad_gt_boxes  # noqa: E402
from tests.strategies import STRIDES, gt_boxes, image_sizes  # noqa: E402

NAMES = ["all_inside", "pseudo_iou", "scaled_box", "centerness", "fcos"]
ONE_LEVEL = {"strides": (8,), "regress_ranges": ((-1.0, 64.0),)}


def single(name):
    return getattr(DAF, f"assign_{name}")


def batched(name):
    return getattr(DAF, f"assign_{name}_batched")


def scene_points(image_size, strides=STRIDES, dtype=torch.float64, device="cpu"):
    points, _, counts = multi_level_points(image_size, strides)
    return torch.as_tensor(points).to(device=device, dtype=dtype), counts


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=10)
@given(data=st.data())
def test_batched_equals_stacked_single_images(device, dtype, data):
    size = data.draw(image_sizes(max_side=512))
    points, counts = scene_points(size, dtype=dtype, device=device)
    gts = [data.draw(st.one_of(st.just(np.zeros((0, 4))), gt_boxes(size, 0, 25))) for _ in range(data.draw(st.integers(1, 4)))]
    boxes, valid = pad_gt_boxes(gts, dtype=dtype, device=device)
    for name in NAMES:
        result = batched(name)(points, counts, boxes, valid)
        singles = [single(name)(points, counts, torch.as_tensor(g).to(device=device, dtype=dtype)) for g in gts]
        assert_batched_equals_stacked(result, singles)
        assert result.matched_metric.dtype == dtype and not torch.isnan(result.matched_metric).any()
        assert (result.matched_gt < torch.tensor([len(g) for g in gts], device=device)[:, None]).all()


def test_rule_table_is_the_reference_one():
    assert DAF.ANCHOR_FREE_RULES == tuple(NAMES)
    for name in NAMES:
        assert callable(single(name)) and callable(batched(name))
        # the public functions' keyword defaults are the table's
        for function in (single(name), batched(name)):
            parameters = inspect.signature(function).parameters
            skip = ("points", "num_points_per_level", "gt_boxes", "gt_valid", "strides", "regress_ranges", "max_elements")
            assert {k: p.default for k, p in parameters.items() if k not in skip} == DAF._RULES[name].defaults, function.__name__


def test_generic_batched_function_equals_the_rule_functions():
    points, counts = scene_points((24, 40), strides=(8,))
    boxes = torch.tensor([[[0.0, 0.0, 40.0, 24.0], [18.0, 1.0, 40.0, 9.0]], [[3.0, 3.0, 30.0, 20.0], [0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    valid = torch.tensor([[True, True], [True, False]])
    for name in NAMES:
        expected = batched(name)(points, counts, boxes, valid, **ONE_LEVEL)
        for result in (DAF.assign_anchor_free_batched(name, points, counts, boxes, valid, **ONE_LEVEL), DAF.assign_anchor_free(name, points, counts, boxes[0], **ONE_LEVEL)):
            matched = expected.matched_gt if result.matched_gt.ndim == 2 else expected.matched_gt[0]
            torch.testing.assert_close(result.matched_gt, matched, rtol=0, atol=0)
    with pytest.raises(ValueError, match="rule"):
        DAF.assign_anchor_free_batched("nearest", points, counts, boxes, valid, **ONE_LEVEL)
    with pytest.raises(ValueError, match="inclusive"):
        DAF.assign_anchor_free_batched("scaled_box", points, counts, boxes, valid, **ONE_LEVEL, inclusive=True)


def test_empty_batch_and_all_padding():
    points, counts = scene_points((64, 64))
    for name in NAMES:
        empty = batched(name)(points, counts, torch.zeros(0, 3, 4, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.bool))
        assert empty.matched_gt.shape == (0, len(points)) and empty.gt_threshold.shape == (0, 3)
        padded = batched(name)(points, counts, torch.full((2, 3, 4), float("nan")), torch.zeros(2, 3, dtype=torch.bool))
        assert (padded.matched_gt == BACKGROUND).all() and torch.isnan(padded.gt_threshold).all()
        assert padded.candidate_index.shape == (2, 3, 0)
        no_slots = batched(name)(points, counts, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
        assert (no_slots.matched_gt == BACKGROUND).all() and no_slots.gt_threshold.shape == (2, 0)


def test_min_area_tie_is_exact_in_float32():
    """Areas one float32 ulp apart: the smaller wins even at a higher index (the
    ``match * (1e8 - area)`` trick rounds both products to the same float32 value)."""
    points, counts = scene_points((16, 2056), strides=(8,))
    big = torch.tensor([[0.0, 0.0, 2048.0, 16.0]])  # area 32768
    ulp = torch.finfo(torch.float32).eps * 2048  # one ulp of 2048
    smaller = torch.tensor([[0.0, 0.0, 2048.0 - ulp, 16.0]])  # area 32768 - 16 ulp(2048): distinct in float32
    for dtype in (torch.float32, torch.float64):
        boxes = torch.cat([big, smaller]).to(dtype)
        assert (1e8 - boxes[:, 2] * 16).to(torch.float32).unique().numel() == 1  # the trick cannot tell them apart
        result = DAF.assign_all_inside(points.to(dtype), counts, boxes, strides=(8,), regress_ranges=((-1.0, math.inf),))
        assert (result.matched_gt[result.matched_gt >= 0] == 1).all() and result.num_positives > 0
        equal = DAF.assign_all_inside(points.to(dtype), counts, torch.cat([big, big]).to(dtype), strides=(8,), regress_ranges=((-1.0, math.inf),))
        assert (equal.matched_gt[equal.matched_gt >= 0] == 0).all() and equal.num_positives > 0


@pytest.mark.parametrize("name", NAMES)
def test_tiny_budget_gives_identical_results(name):
    points, counts = scene_points((200, 300))
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 250, (2, 30, 2))
    boxes = torch.as_tensor(np.concatenate([xy, xy + rng.uniform(0, 150, (2, 30, 2))], axis=2))
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, 20:] = False
    full = batched(name)(points, counts, boxes, valid)
    for budget in (1, 3, 64):
        small = batched(name)(points, counts, boxes, valid, max_elements=budget)
        torch.testing.assert_close(small.matched_gt, full.matched_gt, rtol=0, atol=0)
        torch.testing.assert_close(small.matched_metric, full.matched_metric, rtol=0, atol=0)
    assert full.num_positives > 0


def test_half_and_integer_inputs():
    points, counts = scene_points((24, 40), strides=(8,), dtype=torch.float64)
    expected = DAF.assign_pseudo_iou(points, counts, torch.tensor([[0.0, 0.0, 40.0, 24.0]]), **ONE_LEVEL)
    half = DAF.assign_pseudo_iou(points.half(), counts, torch.tensor([[0.0, 0.0, 40.0, 24.0]], dtype=torch.float16), **ONE_LEVEL)
    assert half.matched_metric.dtype == torch.float32
    torch.testing.assert_close(half.matched_gt, expected.matched_gt, rtol=0, atol=0)
    integer = DAF.assign_pseudo_iou(points.long(), counts, torch.tensor([[0, 0, 40, 24]]), **ONE_LEVEL)
    assert integer.matched_metric.dtype == torch.get_default_dtype()
    torch.testing.assert_close(integer.matched_gt, expected.matched_gt, rtol=0, atol=0)
    assert expected.num_positives == 7  # specs/anchor_free.md §9 example 1


def test_inputs_are_not_modified():
    points, counts = scene_points((64, 64), strides=(8,))
    boxes = torch.tensor([[[4.0, 4.0, 40.0, 30.0], [0.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    valid = torch.tensor([[True, False]])
    before = boxes.detach().clone()
    result = DAF.assign_pseudo_iou_batched(points, counts, boxes, valid, **ONE_LEVEL)
    torch.testing.assert_close(boxes.detach(), before, rtol=0, atol=0)
    assert result.num_positives > 0 and (result.matched_gt <= 0).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gt_valid": torch.ones(1, 3, dtype=torch.bool)}, "gt_valid|gt_boxes"),
        ({"gt_valid": torch.ones(1, 2)}, "gt_valid"),
        ({"gt_boxes": torch.tensor([[[0.0, 0.0, 1.0, 1.0], [5.0, 0.0, 1.0, 1.0]]])}, r"gt_boxes: row \(0, 1\)"),
        ({"max_elements": 0}, "max_elements"),
        ({"strides": (8, 16)}, "strides"),
    ],
)
def test_bad_batched_input_raises(kwargs, match):
    points, counts = scene_points((24, 40), strides=(8,))
    args = {"gt_boxes": torch.tensor([[[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 2.0, 2.0]]]), "gt_valid": torch.ones(1, 2, dtype=torch.bool)}
    args.update(kwargs)
    options = dict(ONE_LEVEL)
    if "strides" in kwargs:
        options["strides"] = args.pop("strides")
    if "max_elements" in kwargs:
        options["max_elements"] = args.pop("max_elements")
    with pytest.raises(ValueError, match=match):
        DAF.assign_all_inside_batched(points, counts, args["gt_boxes"], args["gt_valid"], **options)


@pytest.mark.parametrize("device", DEVICES)
def test_worked_example_on_device(device):
    points, counts = scene_points((24, 40), strides=(8,), dtype=torch.float32, device=device)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 24.0], [18.0, 1.0, 40.0, 9.0]], device=device)
    result = DAF.assign_pseudo_iou(points, counts, boxes, **ONE_LEVEL)
    expected = torch.tensor([[-1, -1, -1, 1, 1], [0, 0, 0, 0, 0], [-1, -1, 0, -1, -1]], device=device)
    torch.testing.assert_close(result.matched_gt.view(3, 5), expected, rtol=0, atol=0)
    assert result.matched_gt.device.type == device


def test_regress_ranges_default_has_five_levels():
    assert len(FCOS_REGRESS_RANGES) == 5
    points, counts = scene_points((128, 128))
    result = DAF.assign_fcos(points, counts, torch.tensor([[10.0, 10.0, 100.0, 90.0]], dtype=torch.float64))
    assert result.num_positives > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "name, options, expected",
    [  # specs/anchor_free.md §9, GT0 = (0, 0, 40, 24) on the 24 x 40 grid
        ("pseudo_iou", {"threshold": 0.4}, 7),
        ("pseudo_iou", {"threshold": 0.5}, 3),
        ("pseudo_iou", {"threshold": 0.5, "inclusive": True}, 5),
        ("centerness", {"threshold": 0.35}, 5),
        ("scaled_box", {"scale": 0.4}, 1),
        ("scaled_box", {"scale": 0.7}, 9),
        ("fcos", {}, 9),
        ("fcos", {"center_sampling": False}, 15),
    ],
)
def test_spec_examples_on_the_detector(dtype, name, options, expected):
    points, counts = scene_points((24, 40), strides=(8,), dtype=dtype)
    result = single(name)(points, counts, torch.tensor([[0.0, 0.0, 40.0, 24.0]], dtype=dtype), **ONE_LEVEL, **options)
    assert result.num_positives == expected
