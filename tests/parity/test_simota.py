"""Parity of detector SimOTA with the reference (specs/simota.md).

Both trees get the same decoded predictions and scores. In float64 the costs are the same
elementwise arithmetic (the detector routes ``log`` and ``log1p`` through NumPy on CPU), so
on CPU every field is identical; on CUDA indices must be identical and metrics agree to
1e-6. Batched == per image; chunked (``max_elements``) == unchunked.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector.assign.simota import assign_simota as torch_simota  # noqa: E402
from detector.assign.simota import assign_simota_batched  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.assign.simota import assign_simota as reference_simota  # noqa: E402
from reference.coders import decode_deltas  # noqa: E402
from tests.parity.helpers import DEVICES, assert_batched_equals_stacked, assert_same_assignment, pad_gt_boxes, to_numpy, to_torch  # noqa: E402
from tests.strategies import STRIDES, anchor_scenes, gt_boxes, image_sizes, pred_deltas  # noqa: E402


@st.composite
def predictions(draw, anchors, num_gts, num_classes=None):
    """Decoded boxes (A, 4), scores (A, K) (uniform, constant or 0/1) and labels (G,)."""
    with np.errstate(over="ignore", invalid="ignore"):
        boxes = decode_deltas(anchors, draw(pred_deltas(len(anchors))))
    num_classes = num_classes or draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "uniform", "constant", "extreme"]))
    if kind == "uniform":
        scores = rng.random((len(anchors), num_classes))
    elif kind == "constant":
        scores = np.full((len(anchors), num_classes), 0.5)
    else:
        scores = rng.integers(0, 2, (len(anchors), num_classes)).astype(float)
    return boxes, scores, rng.integers(0, num_classes, num_gts)


def _run_torch(anchors, counts, gts, labels, boxes, scores, device, **options):
    return torch_simota(
        to_torch(anchors, device=device),
        counts,
        to_torch(gts, device=device),
        torch.as_tensor(labels, device=device),
        to_torch(boxes, device=device),
        to_torch(scores, device=device),
        **options,
    )


def _check(expected, actual, device):
    if device == "cpu":
        assert_same_assignment(expected, actual)
    else:
        assert_same_assignment(expected, actual, metric_atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(scene=anchor_scenes(max_side=512, max_boxes=30), data=st.data())
def test_float64_matches_reference(device, scene, data):
    anchors, counts, gts = scene["anchors"], scene["num_anchors_per_level"], scene["gt_boxes"]
    boxes, scores, labels = data.draw(predictions(anchors, len(gts)))
    options = data.draw(st.sampled_from([{}, {"candidate_topk": 3}, {"center_radius": 1.5, "iou_weight": 1.0}, {"cls_weight": 0.0}]))
    expected = reference_simota(anchors, counts, gts, labels, boxes, scores, **options)
    _check(expected, _run_torch(anchors, counts, gts, labels, boxes, scores, device, **options), device)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(size=image_sizes(max_side=1024, min_side=640), data=st.data())
def test_float64_crowded_full_size_scenes(device, size, data):
    anchors, counts = multi_level_anchors(size)
    gts = data.draw(gt_boxes(size, 120, 150))
    boxes, scores, labels = data.draw(predictions(anchors, len(gts), num_classes=20))
    expected = reference_simota(anchors, counts, gts, labels, boxes, scores)
    assert expected.num_positives > 0
    actual = _run_torch(anchors, counts, gts, labels, boxes, scores, device)
    _check(expected, actual, device)
    chunked = _run_torch(anchors, counts, gts, labels, boxes, scores, device, max_elements=300_000)
    _check(expected, chunked, device)


@pytest.mark.parametrize("device", DEVICES)
def test_worked_examples(device):  # specs/simota.md §7
    anchors = np.array([[c - 32, -12, c + 32, 52] for c in (10, 30, 50, 90)], dtype=float)
    gts = np.array([[0, 0, 40, 40], [20, 0, 60, 40], [20, 0, 60, 40]], dtype=float)
    boxes = np.array([[0, 0, 40, 40], [2, 0, 42, 40], [30, 0, 70, 40], [80, 0, 100, 40]], dtype=float)
    scores = np.array([[0.9, 0.1], [0.5, 0.9], [0.5, 0.1], [0.5, 0.5]])
    first = _run_torch(anchors, [4], gts[:2], [0, 1], boxes, scores, device)
    np.testing.assert_array_equal(to_numpy(first.matched_gt), [0, 0, -1, -1])
    np.testing.assert_array_equal(to_numpy(first.candidate_index), [[0, 1, -1, -1], [1, -1, -1, -1]])
    boxes[2] = [40, 0, 80, 40]
    second = _run_torch(anchors, [4], gts, [0, 1, 1], boxes, scores, device)
    np.testing.assert_array_equal(to_numpy(second.matched_gt), [0, 0, -1, -1])
    np.testing.assert_array_equal(to_numpy(second.candidate_index)[:, 0], [0, 1, 1])


@st.composite
def batches(draw, max_side=384, max_boxes=25, max_batch=4):
    size = draw(image_sizes(max_side=max_side))
    levels = draw(st.integers(1, 5))
    first = draw(st.integers(0, len(STRIDES) - levels))
    anchors, counts = multi_level_anchors(size, STRIDES[first : first + levels])
    batch = draw(st.integers(1, max_batch))
    num_classes = draw(st.integers(1, 4))
    gt_list, box_list, score_list, label_list = [], [], [], []
    for _ in range(batch):
        gts = draw(gt_boxes(size, 0, draw(st.sampled_from([0, 3, max_boxes]))))
        boxes, scores, labels = draw(predictions(anchors, len(gts), num_classes))
        gt_list.append(gts)
        box_list.append(boxes)
        score_list.append(scores)
        label_list.append(labels)
    return anchors, counts, gt_list, np.stack(box_list), np.stack(score_list), label_list


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=20, deadline=None)
@given(batch=batches())
def test_batched_equals_per_image_and_chunked(device, batch):
    anchors, counts, gt_list, boxes, scores, label_list = batch
    gts, valid = pad_gt_boxes(gt_list, device=device)
    labels = torch.full(valid.shape, 7, dtype=torch.int64)  # padded slots hold an out-of-range class
    for b, image_labels in enumerate(label_list):
        labels[b, : len(image_labels)] = torch.as_tensor(image_labels)
    labels = labels.to(device)
    anchors_t, boxes_t, scores_t = (to_torch(x, device=device) for x in (anchors, boxes, scores))
    batched = assign_simota_batched(anchors_t, counts, gts, valid, labels, boxes_t, scores_t)
    singles = [
        torch_simota(anchors_t, counts, to_torch(g, device=device), torch.as_tensor(label_list[b], device=device), boxes_t[b], scores_t[b])
        for b, g in enumerate(gt_list)
    ]
    assert_batched_equals_stacked(batched, singles)
    for max_elements in (1, 997):
        chunked = assign_simota_batched(anchors_t, counts, gts, valid, labels, boxes_t, scores_t, max_elements=max_elements)
        assert_batched_equals_stacked(chunked, singles)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=10, deadline=None)
@given(scene=anchor_scenes(max_side=384, max_boxes=20), data=st.data())
def test_float32_and_half_inputs(device, scene, data):
    anchors, counts, gts = scene["anchors"], scene["num_anchors_per_level"], scene["gt_boxes"]
    boxes, scores, labels = data.draw(predictions(anchors, len(gts)))
    half = data.draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    result = torch_simota(
        to_torch(anchors, torch.float32, device),
        counts,
        to_torch(gts, torch.float32, device),
        torch.as_tensor(labels, device=device),
        to_torch(np.nan_to_num(boxes, nan=0.0, posinf=1e4, neginf=-1e4), device=device).to(half),
        to_torch(scores, device=device).to(half),
    )
    assert result.matched_metric.dtype == torch.float32 and result.gt_threshold.dtype == torch.float32
    assert result.matched_gt.device.type == device
    reference = reference_simota(anchors, counts, gts, labels, boxes, scores)
    positive = to_numpy(result.matched_gt) >= 0
    candidates = reference.candidate_index[reference.candidate_index >= 0]
    if len(gts):
        assert np.isin(np.flatnonzero(positive), candidates).mean() >= 0.5 or not positive.any()


def test_predictions_may_require_grad_and_bad_input_is_named():
    anchors = np.array([[c - 32, -12, c + 32, 52] for c in (10, 30, 50, 90)], dtype=float)
    boxes = to_torch(np.array([[0, 0, 40, 40]] * 4, dtype=float)).requires_grad_()
    scores = torch.full((4, 2), 0.5, dtype=torch.float64, requires_grad=True)
    result = torch_simota(to_torch(anchors), [4], to_torch([[0, 0, 40, 40.0]]), torch.tensor([1]), boxes, scores)
    assert not result.matched_metric.requires_grad and result.num_positives >= 1
    with pytest.raises(ValueError, match="gt_labels: row 0"):
        torch_simota(to_torch(anchors), [4], to_torch([[0, 0, 40, 40.0]]), torch.tensor([2]), boxes, scores)
    with pytest.raises(ValueError, match="pred_scores: row 3"):
        torch_simota(to_torch(anchors), [4], to_torch([[0, 0, 40, 40.0]]), torch.tensor([1]), boxes, torch.tensor([[0.5, 0.5]] * 3 + [[0.5, -0.1]]))
    with pytest.raises(ValueError, match="max_elements"):
        torch_simota(to_torch(anchors), [4], to_torch([[0, 0, 40, 40.0]]), torch.tensor([1]), boxes, scores, max_elements=0)
    with pytest.raises(ValueError, match="gt_labels"):
        assign_simota_batched(to_torch(anchors), [4], to_torch([[[0, 0, 40, 40.0]]]), torch.ones((1, 1), dtype=torch.bool), torch.tensor([[0.0]]), boxes[None], scores[None])
