"""Parity of detector/postprocess.py with reference/postprocess.py (specs/postprocess.md).

NMS: the detector feeds ``torchvision.ops.batched_nms`` rank scores (and boxes shifted to
coordinates >= 0), so it equals the reference greedy loop even with exact score ties,
duplicate boxes and negative coordinates. Inputs with an IoU
within 1e-6 of the threshold are skipped: torchvision computes IoUs of class-offset boxes,
which can round across the threshold (specs/postprocess.md §5).
"""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from detector import postprocess as DP  # noqa: E402
from detector.coders import decode_deltas as torch_decode_deltas  # noqa: E402
from reference import postprocess as RP  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.boxes import box_iou  # noqa: E402
from reference.coders import decode_deltas  # noqa: E402
from tests.strategies import gt_boxes  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])]


def tensor(array, dtype=torch.float64, device="cpu"):
    return torch.as_tensor(np.asarray(array), dtype=dtype, device=device)


def near_threshold(boxes, threshold):
    return bool((np.abs(box_iou(boxes, boxes) - threshold) < 1e-6).any()) if len(boxes) else False


@st.composite
def nms_inputs(draw, max_boxes=60):
    """Boxes with duplicates and nesting (gt_boxes), scores with exact ties, up to 3 labels."""
    boxes = draw(gt_boxes((200, 300), min_boxes=0, max_boxes=max_boxes))
    n = len(boxes)
    scores = draw(st.lists(st.sampled_from([0.2, 0.5, 0.9]) | st.floats(0, 1), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    shift = draw(st.sampled_from([0.0, -250.0]))  # negative coordinates exercise the offset trick
    threshold = draw(st.sampled_from([0.5, 0.6, 0.7]))
    return boxes + shift, np.array(scores).reshape(-1), np.array(labels, dtype=np.int64).reshape(-1), threshold


@pytest.mark.parametrize("device", DEVICES)
@given(nms_inputs())
def test_nms_matches_reference_including_ties_and_duplicates(device, inputs):
    boxes, scores, labels, threshold = inputs
    assume(not near_threshold(boxes, threshold))
    expected = RP.nms(boxes, scores, labels, threshold)
    for dtype in (torch.float64, torch.float32):
        if dtype == torch.float32:
            boxes32 = boxes.astype(np.float32).astype(np.float64)
            assume(not near_threshold(boxes32, threshold))
            expected = RP.nms(boxes32, scores.astype(np.float32).astype(np.float64), labels, threshold)
        actual = DP.nms(tensor(boxes, dtype, device), tensor(scores, dtype, device), torch.as_tensor(labels, device=device), threshold)
        np.testing.assert_array_equal(actual.cpu().numpy(), expected)


@given(nms_inputs())
def test_plain_torchvision_batched_nms_matches_reference_without_ties(inputs):
    """torchvision.ops.batched_nms itself, on distinct scores and coordinates >= 0."""
    boxes, scores, labels, threshold = inputs
    boxes = boxes - min(boxes.min(initial=0.0), 0.0)
    scores = (np.argsort(np.argsort(scores, kind="stable")) + 1.0) / (len(scores) + 1.0)  # distinct, same order
    assume(not near_threshold(boxes, threshold))
    actual = torchvision.ops.batched_nms(tensor(boxes), tensor(scores), torch.as_tensor(labels), threshold)
    np.testing.assert_array_equal(actual.numpy(), RP.nms(boxes, scores, labels, threshold))


def test_batched_nms_offset_trick_fails_on_negative_coordinates_and_the_twin_does_not():
    """Why the twin shifts boxes to >= 0 first: torchvision's per-class offset assumes it."""
    # label 1's offset is 1 * (max coordinate 8 + 1) = 9 on every coordinate: box 0 moves onto
    # [-1, -1, 7, 7], IoU 49/79 > 0.5 with box 1 of label 0
    boxes = torch.tensor([[-10.0, -10.0, -2.0, -2.0], [0.0, 0.0, 8.0, 8.0]], dtype=torch.float64)
    scores, labels = torch.tensor([0.8, 0.9], dtype=torch.float64), torch.tensor([1, 0])
    assert torchvision.ops.batched_nms(boxes, scores, labels, 0.5).tolist() == [1]  # cross-class suppression
    np.testing.assert_array_equal(DP.nms(boxes, scores, labels, 0.5).numpy(), [1, 0])
    np.testing.assert_array_equal(RP.nms(boxes.numpy(), scores.numpy(), labels.numpy(), 0.5), [1, 0])


@st.composite
def head_outputs(draw, max_side=160):
    height, width = draw(st.integers(32, max_side)), draw(st.integers(32, max_side))
    strides = (8, 16, 32)
    anchors, num_per_level = multi_level_anchors((height, width), strides)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    num_classes = draw(st.integers(1, 4))
    cls_logits = rng.normal(-2.0, 2.0, size=(len(anchors), num_classes))
    if draw(st.booleans()):
        cls_logits = np.round(cls_logits, 1)  # many exact ties
    deltas = rng.normal(0.0, 0.5, size=(len(anchors), 4))
    return anchors, num_per_level, cls_logits, deltas, rng.normal(size=len(anchors)), (height, width)


@pytest.mark.parametrize("device", DEVICES)
@given(head_outputs(), st.sampled_from(RP.SCORE_MODES), st.integers(0, 200), st.integers(0, 120), st.booleans())
@settings(max_examples=40)
def test_postprocess_matches_reference(device, outputs, score_mode, top_k, max_detections, clip):
    anchors, num_per_level, cls_logits, deltas, quality_logits, size = outputs
    options = dict(score_mode=score_mode, pre_nms_top_k=top_k, max_detections=max_detections, image_size=size if clip else None)
    expected = RP.postprocess(cls_logits, deltas, quality_logits, num_per_level, decode=lambda i, r: decode_deltas(anchors[i], r), **options)
    assume(not near_threshold(expected.boxes, RP.NMS_THRESHOLD))
    anchors_t = tensor(anchors, device=device)
    actual = DP.postprocess(
        tensor(cls_logits, device=device),
        tensor(deltas, device=device),
        tensor(quality_logits, device=device),
        num_per_level,
        decode=lambda i, r: torch_decode_deltas(anchors_t[i], r),
        **options,
    )
    np.testing.assert_array_equal(actual.anchor_index.cpu().numpy(), expected.anchor_index)
    np.testing.assert_array_equal(actual.labels.cpu().numpy(), expected.labels)
    np.testing.assert_allclose(actual.scores.cpu().numpy(), expected.scores, rtol=1e-12)
    np.testing.assert_allclose(actual.boxes.cpu().numpy(), expected.boxes, rtol=1e-12, atol=1e-9)


@given(head_outputs(max_side=96), st.integers(1, 3))
@settings(max_examples=20)
def test_postprocess_batched_equals_per_image(outputs, batch):
    anchors, num_per_level, cls_logits, deltas, quality_logits, size = outputs
    rng = np.random.default_rng(batch)
    cls = tensor(np.stack([cls_logits + rng.normal(0, 0.5, size=cls_logits.shape) for _ in range(batch)]))
    reg = tensor(np.stack([deltas] * batch))
    quality = tensor(np.stack([quality_logits] * batch))
    anchors_t = tensor(anchors)
    decode = lambda i, r: torch_decode_deltas(anchors_t[i], r)  # noqa: E731
    results = DP.postprocess_batched(cls, reg, quality, num_per_level, decode=lambda b, i, r: decode(i, r), image_sizes=[size] * batch)
    assert len(results) == batch
    for b in range(batch):
        single = DP.postprocess(cls[b], reg[b], quality[b], num_per_level, decode=decode, image_size=size)
        for field in ("boxes", "scores", "labels", "anchor_index"):
            torch.testing.assert_close(getattr(results[b], field), getattr(single, field), rtol=0, atol=0)


def test_torchvision_cpu_nms_visits_equal_scores_in_index_order():
    """Observed behaviour the spec records (§5): torchvision's CPU kernel sorts stably.

    Not promised by torchvision and not by its CUDA kernel; the twin does not rely on it.
    """
    n = 2000
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(n, 1) + torch.arange(n, dtype=torch.float32)[:, None] * 20.0
    keep = torchvision.ops.nms(boxes, torch.full((n,), 0.5), 0.5)
    assert keep.tolist() == list(range(n))
