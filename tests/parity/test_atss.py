"""Parity of detector ATSS with the reference (specs/atss.md).

float64 on CPU: every field equals the reference bit for bit (same arithmetic in the same
order; sums left to right; IEEE sqrt). float32: assigned indices agree except at anchors
where the reference itself is within 1e-5 of a decision boundary (threshold, inside margin,
a GT tie, or a distance tie at the top-k cut); such anchors are counted and bounded.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector.assign.atss import assign_atss as torch_atss  # noqa: E402
from detector.assign.atss import assign_atss_batched  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.assign.atss import assign_atss as reference_atss  # noqa: E402
from reference.boxes import box_centers, box_iou  # noqa: E402
from reference.conventions import ATSS_INSIDE_EPS  # noqa: E402
from tests.parity.helpers import (  # noqa: E402
    DEVICES,
    assert_batched_equals_stacked,
    assert_same_assignment,
    pad_gt_boxes,
    to_numpy,
    to_torch,
)
from tests.strategies import STRIDES, anchor_scenes, gt_boxes, image_sizes  # noqa: E402

TOLERANCE = 1e-5


def _run_both(scene, device, dtype=torch.float64, topk=9):
    expected = reference_atss(scene["anchors"], scene["num_anchors_per_level"], scene["gt_boxes"], topk=topk)
    actual = torch_atss(
        to_torch(scene["anchors"], dtype, device), scene["num_anchors_per_level"], to_torch(scene["gt_boxes"], dtype, device), topk=topk
    )
    return expected, actual


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40)
@given(scene=anchor_scenes(max_side=640, max_boxes=40), topk=st.integers(1, 12))
def test_float64_equals_reference_exactly(device, scene, topk):
    expected, actual = _run_both(scene, device, topk=topk)
    if device == "cpu":
        assert_same_assignment(expected, actual)
    else:  # GPU reductions and sqrt round differently in the last bits
        assert_same_assignment(expected, actual, metric_atol=1e-12, threshold_atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=3, suppress_health_check=list(HealthCheck))
@given(scene=st.builds(dict, image_size=image_sizes(max_side=1333, min_side=1000)).flatmap(
    lambda s: st.builds(
        dict,
        anchors=st.just(multi_level_anchors(s["image_size"])[0]),
        num_anchors_per_level=st.just(multi_level_anchors(s["image_size"])[1]),
        gt_boxes=gt_boxes(s["image_size"], 250, 300),
    )
))
def test_float64_crowded_full_size_scenes(device, scene):
    assert len(scene["gt_boxes"]) >= 250 and len(scene["anchors"]) > 15000
    expected, actual = _run_both(scene, device)
    if device == "cpu":
        assert_same_assignment(expected, actual)
    else:
        assert_same_assignment(expected, actual, metric_atol=1e-12, threshold_atol=1e-12)


def _near_boundary_anchors(scene, reference, actual_candidates, topk, tolerance=TOLERANCE):
    """Anchors whose reference decision is within ``tolerance`` of flipping."""
    anchors, gts, counts = scene["anchors"], scene["gt_boxes"], scene["num_anchors_per_level"]
    fragile = np.zeros(len(anchors), dtype=bool)
    if len(gts) == 0:
        return fragile
    ious = box_iou(gts, anchors)
    centers, gt_centers = box_centers(anchors), box_centers(gts)
    for g in range(len(gts)):
        cand = reference.candidate_index[g]
        x, y = centers[cand, 0], centers[cand, 1]
        x1, y1, x2, y2 = gts[g]
        margin = np.minimum(np.minimum(x - x1, y - y1), np.minimum(x2 - x, y2 - y))
        near = (np.abs(ious[g, cand] - reference.gt_threshold[g]) < tolerance) | (np.abs(margin - ATSS_INSIDE_EPS) < 1e-3)
        fragile[cand[near]] = True
        start = 0
        for count in counts:  # a near tie at the top-k cut can swap candidates
            if count > topk:
                d = centers[start : start + count] - gt_centers[g]
                squared = np.sort(d[:, 0] ** 2 + d[:, 1] ** 2)
                if squared[topk] - squared[topk - 1] <= tolerance * max(1.0, squared[topk]):
                    fragile[cand] = True  # every candidate of this GT, on either side, may move
                    fragile[actual_candidates[g]] = True
            start += count
    # GT ties: an anchor claimed by two GTs with nearly equal IoU
    sorted_ious = np.sort(ious, axis=0)
    if len(gts) > 1:
        fragile |= (sorted_ious[-1] - sorted_ious[-2] < tolerance) & (sorted_ious[-1] > 0)
    return fragile


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30)
@given(scene=anchor_scenes(max_side=800, max_boxes=40))
def test_float32_agrees_except_near_boundaries(device, scene):
    # round the scene to float32 first, so both sides see the same boxes
    scene = dict(scene, anchors=scene["anchors"].astype(np.float32).astype(np.float64), gt_boxes=scene["gt_boxes"].astype(np.float32).astype(np.float64))
    expected, actual = _run_both(scene, device, dtype=torch.float32)
    assert actual.matched_metric.dtype == torch.float32 and actual.gt_threshold.dtype == torch.float32
    differ = to_numpy(actual.matched_gt) != expected.matched_gt
    fragile = _near_boundary_anchors(scene, expected, to_numpy(actual.candidate_index), 9)
    assert not (differ & ~fragile).any(), np.flatnonzero(differ & ~fragile)
    # bound: at most a few GTs' worth of positives (a swapped candidate moves one GT's set)
    assert differ.sum() <= max(12, 0.05 * len(differ))
    np.testing.assert_allclose(to_numpy(actual.matched_metric)[~differ], expected.matched_metric[~differ], rtol=0, atol=1e-5)


@st.composite
def batches(draw, max_side=480, max_boxes=30, max_batch=5):
    size = draw(image_sizes(max_side=max_side))
    levels = draw(st.integers(1, 5))
    first = draw(st.integers(0, len(STRIDES) - levels))
    anchors, counts = multi_level_anchors(size, STRIDES[first : first + levels])
    batch = draw(st.integers(1, max_batch))
    gt_list = [draw(gt_boxes(size, 0, draw(st.sampled_from([0, 3, max_boxes])))) for _ in range(batch)]
    return anchors, counts, gt_list


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25)
@given(batch=batches())
def test_batched_equals_per_image_and_reference(device, batch):
    anchors, counts, gt_list = batch
    gts, valid = pad_gt_boxes(gt_list, device=device)
    anchors_t = to_torch(anchors, device=device)
    batched = assign_atss_batched(anchors_t, counts, gts, valid)
    singles = [torch_atss(anchors_t, counts, to_torch(g, device=device)) for g in gt_list]
    assert_batched_equals_stacked(batched, singles)
    if device == "cpu":
        for b, g in enumerate(gt_list):
            assert_same_assignment(reference_atss(anchors, counts, g), batched.image(b), num_gts=len(g))


@settings(max_examples=15)
@given(batch=batches(max_side=320, max_boxes=20))
def test_tiny_memory_budget_gives_identical_results(batch):
    anchors, counts, gt_list = batch
    gts, valid = pad_gt_boxes(gt_list)
    anchors_t = to_torch(anchors)
    full = assign_atss_batched(anchors_t, counts, gts, valid)
    chunked = assign_atss_batched(anchors_t, counts, gts, valid, max_elements=1)
    assert_batched_equals_stacked(chunked, [full.image(b) for b in range(len(gt_list))])


def test_gt_centres_off_the_anchor_grid_match_reference():
    # GT centres far outside the grid of centres: the fast window path must fall back to the
    # dense search (the 9 nearest then spread along the last row/column)
    anchors, counts = multi_level_anchors((128, 160), (8, 16))
    rng = np.random.default_rng(7)
    centres = np.concatenate([rng.uniform(-300, 500, (40, 2)), [[80.0, 400.0], [-200.0, 64.0], [600.0, 600.0]]])
    sizes = rng.uniform(4, 200, (len(centres), 2))
    gts = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    expected = reference_atss(anchors, counts, gts)
    assert_same_assignment(expected, torch_atss(to_torch(anchors), counts, to_torch(gts)))


# ---------------------------------------------------------------------------------------
# several anchors per location (specs/atss.md §2.1): the 9 anchors of a location share its
# centre exactly, so they tie in distance; ties go to the lower anchor index (flattening order)

from detector.assign import nearest  # noqa: E402
from reference.conventions import (  # noqa: E402
    RETINANET_ANCHOR_RATIOS,
    RETINANET_ANCHOR_SCALES,
    RETINANET_OCTAVE_BASE_SCALE,
)


def _nine(size, strides):
    return multi_level_anchors(size, strides, RETINANET_OCTAVE_BASE_SCALE, scales=RETINANET_ANCHOR_SCALES,
                               ratios=RETINANET_ANCHOR_RATIOS)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30)
@given(scene=anchor_scenes(max_side=480, max_boxes=30, retinanet=True), topk=st.sampled_from([1, 4, 9, 10, 13, 18, 27]))
def test_nine_anchors_float64_equals_reference_exactly(device, scene, topk):
    expected, actual = _run_both(scene, device, topk=topk)
    if device == "cpu":
        assert_same_assignment(expected, actual)
    else:
        assert_same_assignment(expected, actual, metric_atol=1e-12, threshold_atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nine_anchors_k_cuts_through_a_location(device, dtype):
    anchors, counts = _nine((64, 96), (8,))  # 8 x 12 locations, 9 anchors each
    cols = 12
    # GT 0 centred on location (row 2, col 3) = (28, 20); GT 1 centred on the boundary between
    # columns 5 and 6 of row 4 ((48, 36): 4 px from both centres, a tie between 18 anchors)
    gts = np.array([[18.0, 10.0, 38.0, 30.0], [40.0, 28.0, 56.0, 44.0]])
    loc0, loc1 = 2 * cols + 3, 4 * cols + 5
    for k, want0, want1 in (
        (4, loc0 * 9 + np.arange(4), loc1 * 9 + np.arange(4)),
        (9, loc0 * 9 + np.arange(9), loc1 * 9 + np.arange(9)),
        (13, None, np.concatenate([loc1 * 9 + np.arange(9), (loc1 + 1) * 9 + np.arange(4)])),
    ):
        expected = reference_atss(anchors, counts, gts, topk=k)
        actual = torch_atss(to_torch(anchors, dtype, device), counts, to_torch(gts, dtype, device), topk=k)
        if want0 is not None:
            np.testing.assert_array_equal(expected.candidate_index[0], want0)
        np.testing.assert_array_equal(expected.candidate_index[1], want1)
        np.testing.assert_array_equal(to_numpy(actual.candidate_index), expected.candidate_index)
        np.testing.assert_array_equal(to_numpy(actual.matched_gt), expected.matched_gt)
    # the dense exact-k search of nearest.py on its own (no grouping) keeps the same tie rule
    centers = to_torch(box_centers(anchors), dtype, device)
    gt_centers = to_torch(box_centers(gts), dtype, device)[None]
    for k in (4, 9, 13, 40):
        dense = nearest._nearest_in_level(gt_centers, centers, k)[0]
        expected = reference_atss(anchors, counts, gts, topk=k).candidate_index
        np.testing.assert_array_equal(to_numpy(dense), expected)
    assert nearest._anchors_per_location(centers, counts) == 9  # the grouped path ran above
    assert nearest._anchors_per_location(to_torch(box_centers(multi_level_anchors((64, 96), (8,))[0])), counts[:1]) == 1


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=10)
@given(data=st.data())
def test_nine_anchors_batched_equals_per_image_and_reference(device, data):
    size = data.draw(image_sizes(max_side=320))
    levels = data.draw(st.integers(1, 4))
    anchors, counts = _nine(size, STRIDES[:levels])
    gt_list = [data.draw(gt_boxes(size, 0, data.draw(st.sampled_from([0, 3, 20])))) for _ in range(data.draw(st.integers(1, 3)))]
    gts, valid = pad_gt_boxes(gt_list, device=device)
    anchors_t = to_torch(anchors, device=device)
    batched = assign_atss_batched(anchors_t, counts, gts, valid, topk=9)
    assert_batched_equals_stacked(batched, [torch_atss(anchors_t, counts, to_torch(g, device=device)) for g in gt_list])
    chunked = assign_atss_batched(anchors_t, counts, gts, valid, topk=9, max_elements=1)
    assert_batched_equals_stacked(chunked, [batched.image(b) for b in range(len(gt_list))])
    if device == "cpu":
        for b, g in enumerate(gt_list):
            assert_same_assignment(reference_atss(anchors, counts, g), batched.image(b), num_gts=len(g))
