"""Parity of detector max-IoU with the reference (specs/max_iou.md): float64 on CPU exactly."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector.assign.max_iou import assign_max_iou as torch_max_iou  # noqa: E402
from detector.assign.max_iou import assign_max_iou_batched  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.assign.max_iou import assign_max_iou as reference_max_iou  # noqa: E402
from reference.boxes import box_iou  # noqa: E402
from tests.parity.helpers import DEVICES, assert_batched_equals_stacked, assert_same_assignment, pad_gt_boxes, to_numpy, to_torch  # noqa: E402
from tests.strategies import STRIDES, anchor_scenes, gt_boxes, image_sizes  # noqa: E402

OPTIONS = st.builds(
    lambda thresholds, min_pos_iou, low_quality: {
        "pos_iou_thr": thresholds[0],
        "neg_iou_thr": thresholds[1],
        "min_pos_iou": min_pos_iou,
        "match_low_quality": low_quality,
    },
    st.sampled_from([(0.5, 0.4), (0.6, 0.3), (0.3, 0.1), (0.5, 0.5)]),
    st.sampled_from([0.0, 0.2]),
    st.booleans(),
)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40)
@given(scene=anchor_scenes(max_side=640, max_boxes=60), options=OPTIONS)
def test_float64_equals_reference_exactly(device, scene, options):
    expected = reference_max_iou(scene["anchors"], scene["gt_boxes"], **options)
    actual = torch_max_iou(to_torch(scene["anchors"], device=device), to_torch(scene["gt_boxes"], device=device), **options)
    assert_same_assignment(expected, actual)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25)
@given(scene=anchor_scenes(max_side=400, max_boxes=40, retinanet=True), options=OPTIONS)
def test_nine_anchors_per_location_float64_equals_reference_exactly(device, scene, options):
    # max-IoU reads only the boxes: RetinaNet's 9 anchors per location need nothing else
    assert len(scene["anchors"]) == 9 * sum(n // 9 for n in scene["num_anchors_per_level"])
    expected = reference_max_iou(scene["anchors"], scene["gt_boxes"], **options)
    actual = torch_max_iou(to_torch(scene["anchors"], device=device), to_torch(scene["gt_boxes"], device=device), **options)
    assert_same_assignment(expected, actual)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=20)
@given(scene=anchor_scenes(max_side=640, max_boxes=40), options=OPTIONS)
def test_float32_agrees_except_near_thresholds(device, scene, options):
    scene = dict(scene, anchors=scene["anchors"].astype(np.float32).astype(np.float64), gt_boxes=scene["gt_boxes"].astype(np.float32).astype(np.float64))
    expected = reference_max_iou(scene["anchors"], scene["gt_boxes"], **options)
    actual = torch_max_iou(to_torch(scene["anchors"], torch.float32, device), to_torch(scene["gt_boxes"], torch.float32, device), **options)
    differ = to_numpy(actual.matched_gt) != expected.matched_gt
    if differ.any():
        ious = box_iou(scene["gt_boxes"], scene["anchors"])[:, differ]
        best = np.sort(ious, axis=0)
        near_threshold = (np.abs(best[-1] - options["pos_iou_thr"]) < 1e-5) | (np.abs(best[-1] - options["neg_iou_thr"]) < 1e-5)
        near_tie = (best[-1] - best[-2] < 1e-5) if len(best) > 1 else np.zeros_like(near_threshold)
        near_gt_max = np.zeros_like(near_threshold)
        if options["match_low_quality"]:  # a claim depends on equality with the GT's maximum
            gt_max = box_iou(scene["gt_boxes"], scene["anchors"]).max(axis=1)
            near_gt_max = (np.abs(ious - gt_max[:, None]) < 1e-5).any(axis=0)
        assert (near_threshold | near_tie | near_gt_max).all()
    assert differ.sum() <= max(12, 0.01 * len(differ))


@st.composite
def batches(draw, max_side=400, max_boxes=30, max_batch=5):
    size = draw(image_sizes(max_side=max_side))
    levels = draw(st.integers(1, 5))
    first = draw(st.integers(0, len(STRIDES) - levels))
    anchors, _ = multi_level_anchors(size, STRIDES[first : first + levels])
    batch = draw(st.integers(1, max_batch))
    return anchors, [draw(gt_boxes(size, 0, draw(st.sampled_from([0, 3, max_boxes])))) for _ in range(batch)]


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=20)
@given(batch=batches(), options=OPTIONS)
def test_batched_equals_per_image_and_chunked(device, batch, options):
    anchors, gt_list = batch
    gts, valid = pad_gt_boxes(gt_list, device=device)
    anchors_t = to_torch(anchors, device=device)
    batched = assign_max_iou_batched(anchors_t, gts, valid, **options)
    singles = [torch_max_iou(anchors_t, to_torch(g, device=device), **options) for g in gt_list]
    assert_batched_equals_stacked(batched, singles)
    assert_batched_equals_stacked(assign_max_iou_batched(anchors_t, gts, valid, max_elements=1, **options), singles)
