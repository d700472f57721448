"""The windowed max-IoU (specs/max_iou.md §7) against the dense path and the reference.

``assign_max_iou_batched(..., search="windows")`` evaluates only the (GT, anchor) pairs of
the windows; ``search="dense"`` every IoU. The assignments must be equal exactly (float32
and float64), and the float64 one equal to the reference's, on grid anchors with 1 and 9
anchors per location, GTs of every kind (zero-area, touching anchor edges, IoU exactly at a
threshold, partly outside the image, out of the rounding argument's range), padded batches
with empty images and garbage in padded slots, with and without low-quality matches.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector.anchors import multi_level_anchors  # noqa: E402
from detector.assign import max_iou as max_iou_module  # noqa: E402
from detector.assign.max_iou import WINDOWS_MIN_ELEMENTS, assign_max_iou_batched  # noqa: E402
from detector.assign.max_iou_windows import LARGEST_COORDINATE, anchor_box_grids, cached_anchor_box_grids  # noqa: E402
from detector.conventions import RETINANET_ANCHOR_RATIOS, RETINANET_ANCHOR_SCALES, RETINANET_OCTAVE_BASE_SCALE  # noqa: E402
from reference.assign.max_iou import assign_max_iou as reference_max_iou  # noqa: E402
from tests.parity.helpers import DEVICES, assert_same_assignment, pad_gt_boxes, to_torch  # noqa: E402
from tests.strategies import STRIDES, gt_boxes, image_sizes  # noqa: E402

OPTIONS = st.builds(
    lambda thresholds, min_pos_iou, low_quality: {
        "pos_iou_thr": thresholds[0],
        "neg_iou_thr": thresholds[1],
        "min_pos_iou": min_pos_iou,
        "match_low_quality": low_quality,
    },
    # (0, 0) and (0.1, -0.5): every anchor positive or ignored, so IoUs of 0 and their GT matter
    st.sampled_from([(0.5, 0.4), (0.6, 0.3), (0.3, 0.1), (0.5, 0.5), (0.0, 0.0), (0.1, -0.5), (1.0, 0.9)]),
    st.sampled_from([0.0, 0.2, 0.5]),
    st.booleans(),
)

#: side factors giving IoUs exactly at the thresholds above (GT = an anchor with one side scaled)
FACTORS = (0.1, 0.25, 0.3, 1 / 3, 0.4, 0.5, 0.6, 2 / 3, 0.9, 1.0, 1.5, 2.5)
SPECIAL = ("equal", "right", "below", "corner", "inside", "grown", "sliver", "outside", "far", "speck", "everything")


def _anchors(size, strides, nine, dtype=torch.float64):
    if nine:
        return multi_level_anchors(size, strides, RETINANET_OCTAVE_BASE_SCALE, scales=RETINANET_ANCHOR_SCALES,
                                   ratios=RETINANET_ANCHOR_RATIOS, dtype=dtype)[0]
    return multi_level_anchors(size, strides, dtype=dtype)[0]


@st.composite
def special_box(draw, size, anchors):
    """A GT built on one anchor (sharing edges with it, or an IoU exactly at a threshold),
    partly outside the image, far out of range, or with sides below the range."""
    height, width = size
    x1, y1, x2, y2 = anchors[draw(st.integers(0, len(anchors) - 1))]
    w, h = x2 - x1, y2 - y1
    f = draw(st.sampled_from(FACTORS))
    kind = draw(st.sampled_from(SPECIAL))
    if kind == "equal":
        return [x1, y1, x2, y2]
    if kind == "right":  # shares the anchor's right edge: intersection width 0
        return [x2, y1, x2 + f * w, y2]
    if kind == "below":
        return [x1, y2, x2, y2 + f * h]
    if kind == "corner":
        return [x2, y2, x2 + f * w, y2 + f * h]
    if kind == "inside":  # IoU = f (f <= 1)
        return [x1, y1, x1 + min(f, 1.0) * w, y2] if draw(st.booleans()) else [x1, y1, x2, y1 + min(f, 1.0) * h]
    if kind == "grown":  # IoU = 1 / (1 + f)
        return [x1 - f * w, y1, x2, y2]
    if kind == "sliver":  # overlaps the anchor by one ulp
        return [np.nextafter(x2, -np.inf), y1, x2 + f * w, y2]
    if kind == "outside":
        bx1 = draw(st.floats(-width / 2, width))
        by1 = draw(st.floats(-height / 2, height))
        return [bx1, by1, bx1 + draw(st.floats(1, 1.5 * width)), by1 + draw(st.floats(1, 1.5 * height))]
    if kind == "far":  # beyond LARGEST_COORDINATE, overlapping nothing
        return [3 * LARGEST_COORDINATE, 3 * LARGEST_COORDINATE, 3 * LARGEST_COORDINATE + 100, 3 * LARGEST_COORDINATE + 50]
    if kind == "speck":  # sides below 1 / LARGEST_COORDINATE inside an anchor
        return [x1 + w / 3, y1 + h / 3, x1 + w / 3 + 1e-7, y1 + h / 3 + 1e-7]
    return [-3 * LARGEST_COORDINATE, -2 * LARGEST_COORDINATE, 3 * LARGEST_COORDINATE, 2 * LARGEST_COORDINATE]


@st.composite
def image_gts(draw, size, anchors, max_boxes):
    count = draw(st.sampled_from([0, 1, 4, max_boxes]))
    ordinary = draw(gt_boxes(size, 0, count))
    special = [draw(special_box(size, anchors)) for _ in range(count - len(ordinary))]
    boxes = np.concatenate([ordinary, np.array(special, dtype=np.float64).reshape(-1, 4)])
    return boxes[draw(st.permutations(range(len(boxes))))] if len(boxes) else boxes


@st.composite
def scenes(draw, max_side=400, max_boxes=24, max_batch=3):
    """(anchors (A, 4) float64 tensor, list of B (G_b, 4) float64 arrays)."""
    size = draw(image_sizes(max_side=max_side))
    levels = draw(st.integers(1, 5))
    first = draw(st.integers(0, len(STRIDES) - levels))
    anchors = _anchors(size, STRIDES[first : first + levels], draw(st.booleans()))
    batch = draw(st.integers(1, max_batch))
    return anchors, [draw(image_gts(size, anchors.numpy(), max_boxes)) for _ in range(batch)]


@st.composite
def scattered_slots(draw, gt_list):
    """Each image's GTs in a random increasing subset of G_max slots; the other slots hold
    garbage (NaN, inverted boxes): padded slots may hold anything."""
    g_max = max(len(g) for g in gt_list) + draw(st.integers(0, 3))
    boxes = np.zeros((len(gt_list), g_max, 4))
    valid = np.zeros((len(gt_list), g_max), dtype=bool)
    for b, gts in enumerate(gt_list):
        slots = sorted(draw(st.permutations(range(g_max)))[: len(gts)])
        boxes[b] = draw(st.sampled_from([np.nan, -5.0, 1e9]))
        boxes[b, slots] = gts
        valid[b, slots] = True
    return boxes, valid


def _assert_equal(expected, actual):
    torch.testing.assert_close(actual.matched_gt, expected.matched_gt, rtol=0, atol=0)
    torch.testing.assert_close(actual.matched_metric, expected.matched_metric, rtol=0, atol=0)
    torch.testing.assert_close(actual.gt_threshold, expected.gt_threshold, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(actual.candidate_index, expected.candidate_index, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@settings(max_examples=40)
@given(scene=scenes(), options=OPTIONS, max_elements=st.sampled_from([1, 500, 2**26]), data=st.data())
def test_windows_equal_dense_exactly(device, dtype, scene, options, max_elements, data):
    anchors, gt_list = scene
    boxes, valid = data.draw(scattered_slots(gt_list))
    anchors = anchors.to(device=device, dtype=dtype)
    boxes, valid = to_torch(boxes, dtype, device), torch.from_numpy(valid).to(device)
    assert anchor_box_grids(anchors) is not None  # the windows are really used
    dense = assign_max_iou_batched(anchors, boxes, valid, search="dense", **options)
    windows = assign_max_iou_batched(anchors, boxes, valid, search="windows", max_elements=max_elements, **options)
    _assert_equal(dense, windows)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30)
@given(scene=scenes(), options=OPTIONS)
def test_windows_float64_equal_reference_exactly(device, scene, options):
    anchors, gt_list = scene
    gts, valid = pad_gt_boxes(gt_list, device=device)
    result = assign_max_iou_batched(anchors.to(device), gts, valid, search="windows", **options)
    for b, image_gts_ in enumerate(gt_list):
        expected = reference_max_iou(anchors.numpy(), image_gts_, **options)
        assert_same_assignment(expected, result.image(b), num_gts=len(image_gts_))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("low_quality", [False, True])
def test_anchors_without_overlap_take_the_first_valid_slot(device, low_quality):
    # pos_iou_thr = 0: an anchor no GT overlaps is positive for its best GT, the lowest
    # valid slot (all IoUs 0), although no pair of it is evaluated
    anchors = _anchors((64, 96), STRIDES[:2], False).to(device)
    gts = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 10.0, 10.0], [5.0, 5.0, 5.0, 9.0], [2.0, 2.0, 6.0, 6.0]],
                        [[7.0, 7.0, 7.0, 7.0], [0.0, 0.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]]], device=device)
    valid = torch.tensor([[False, False, True, True], [False, False, True, False]], device=device)
    options = {"pos_iou_thr": 0.0, "neg_iou_thr": 0.0, "match_low_quality": low_quality}
    windows = assign_max_iou_batched(anchors, gts, valid, search="windows", **options)
    _assert_equal(assign_max_iou_batched(anchors, gts, valid, search="dense", **options), windows)
    assert (windows.matched_gt[1] == 2).all()  # a zero-area GT alone: every anchor, IoU 0
    assert (windows.matched_gt[0] == 2).sum() > 0 and ((windows.matched_gt[0] == 2) | (windows.matched_gt[0] == 3)).all()


@pytest.mark.parametrize("nine", [False, True], ids=["one", "nine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_generated_anchors_are_one_grid_per_level_and_shape(nine, dtype):
    anchors = _anchors((203, 317), STRIDES, nine, dtype)
    grids = anchor_box_grids(anchors)
    assert grids is not None and grids.x1.shape[0] == len(STRIDES) * (9 if nine else 1)
    assert torch.equal(torch.sort(grids.members).values, torch.arange(len(anchors)))
    # every (row, column) of every group is the anchor with those edges
    for k in range(grids.x1.shape[0]):
        cols, rows = int(torch.isfinite(grids.x1[k]).sum()), int(torch.isfinite(grids.y1[k]).sum())
        row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        index = grids.point_index(row.reshape(-1) + int(grids.row_offset[k]), col.reshape(-1))
        expected = torch.stack([grids.x1[k, col], grids.y1[k, row], grids.x2[k, col], grids.y2[k, row]], dim=-1).reshape(-1, 4)
        assert torch.equal(anchors[index], expected)


@pytest.mark.parametrize("nine", [False, True], ids=["one", "nine"])
def test_anchors_that_are_not_grids_fall_back_to_dense(nine):
    anchors = _anchors((160, 224), STRIDES[:3], nine)
    order = torch.randperm(len(anchors), generator=torch.Generator().manual_seed(0))
    shifted = anchors.clone()
    shifted[5, 0] -= 1.0  # one anchor of another shape breaks nothing: a new shape, not a grid
    jittered = anchors + torch.rand(anchors.shape, generator=torch.Generator().manual_seed(1), dtype=anchors.dtype)
    gts = torch.tensor([[[10.0, 12.0, 90.0, 70.0], [64.0, 8.0, 120.0, 40.0], [3.0, 3.0, 150.0, 200.0]]], dtype=anchors.dtype)
    valid = torch.ones((1, 3), dtype=torch.bool)
    for candidate in (anchors[order], shifted, jittered):
        assert anchor_box_grids(candidate) is None
        expected = reference_max_iou(candidate.numpy(), gts[0].numpy(), match_low_quality=True)
        actual = assign_max_iou_batched(candidate, gts, valid, search="windows", match_low_quality=True)
        assert_same_assignment(expected, actual.image(0))


def test_the_grids_are_remembered_per_unchanged_tensor():
    anchors = _anchors((128, 160), STRIDES[:3], True)
    gts = torch.tensor([[[10.0, 12.0, 90.0, 70.0], [64.0, 8.0, 120.0, 40.0]]], dtype=anchors.dtype)
    valid = torch.ones((1, 2), dtype=torch.bool)
    first = cached_anchor_box_grids(anchors)
    assert first is not None and cached_anchor_box_grids(anchors) is first
    assert cached_anchor_box_grids(anchors.clone()) is not first  # another tensor: found again
    anchors[:, [0, 2]] += 4.0  # the same tensor moved in place: new grids
    moved = cached_anchor_box_grids(anchors)
    assert moved is not first and torch.equal(moved.x1, first.x1 + 4.0)
    expected = reference_max_iou(anchors.numpy(), gts[0].numpy(), match_low_quality=True)
    assert_same_assignment(expected, assign_max_iou_batched(anchors, gts, valid, search="windows", match_low_quality=True).image(0))
    anchors[:] = anchors[torch.randperm(len(anchors), generator=torch.Generator().manual_seed(0))]
    assert cached_anchor_box_grids(anchors) is None


def test_auto_uses_the_windows_from_the_element_bound(monkeypatch):
    calls = []
    real = max_iou_module.best_on_windows
    monkeypatch.setattr(max_iou_module, "best_on_windows", lambda *args: calls.append(1) or real(*args))
    anchors = _anchors((200, 256), STRIDES, False)
    needed = math.ceil(WINDOWS_MIN_ELEMENTS / len(anchors))
    for num_gts, search, windows in [(needed, "auto", True), (needed - 1, "auto", False), (needed, "dense", False), (1, "windows", True)]:
        calls.clear()
        gts = torch.tensor([[[10.0, 12.0, 90.0, 70.0]] * num_gts], dtype=anchors.dtype)
        assign_max_iou_batched(anchors, gts, torch.ones((1, num_gts), dtype=torch.bool), search=search)
        assert bool(calls) == windows, (num_gts, search)


def test_bad_search_raises():
    anchors = _anchors((64, 64), STRIDES[:2], False)
    with pytest.raises(ValueError, match="search"):
        assign_max_iou_batched(anchors, torch.zeros((1, 0, 4), dtype=anchors.dtype), torch.zeros((1, 0), dtype=torch.bool), search="fast")
