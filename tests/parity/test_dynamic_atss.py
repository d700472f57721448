"""Parity of detector Dynamic ATSS with the reference (specs/dynamic_atss.md).

Each tree gets the predicted boxes that its own coder decodes from the same raw deltas
(``reference.coders.decode_deltas`` / ``detector.coders.decode_deltas``), as a training
step would. float64 on CPU: candidates and the anchor side are bit-identical; PIoUs go
through ``exp`` in the delta decoder, which NumPy and torch round differently in the last
ulp, so thresholds and metrics are compared to 1e-12 and assigned indices must be identical
except at anchors whose reference combined IoU is within 1e-9 of the GT's threshold
(counted, bounded). float32 and half predictions: indices agree except near boundaries.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector.assign.dynamic_atss import assign_dynamic_atss as torch_dynamic_boxes  # noqa: E402
from detector.assign.dynamic_atss import assign_dynamic_atss_batched  # noqa: E402
from detector.coders import decode_deltas as torch_decode  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.assign.dynamic_atss import assign_dynamic_atss as reference_dynamic_boxes  # noqa: E402
from reference.boxes import box_iou  # noqa: E402
from reference.coders import decode_deltas  # noqa: E402
from tests.parity.helpers import DEVICES, assert_batched_equals_stacked, pad_gt_boxes, to_numpy, to_torch  # noqa: E402
from tests.strategies import STRIDES, anchor_scenes, gt_boxes, image_sizes, pred_deltas  # noqa: E402


def _reference_decode(anchors, deltas):
    with np.errstate(over="ignore", invalid="ignore"):
        return decode_deltas(anchors, deltas)


def reference_dynamic(anchors, counts, gts, deltas, **options):
    """The reference on the boxes its coder decodes from ``deltas``."""
    return reference_dynamic_boxes(anchors, counts, gts, _reference_decode(anchors, deltas), **options)


def torch_dynamic(anchors, counts, gts, deltas, **options):
    """The detector on the boxes its coder decodes from ``deltas`` (up-cast like the assigner's
    anchors: float32 for half deltas)."""
    return torch_dynamic_boxes(anchors, counts, gts, torch_decode(anchors, deltas), **options)


def _batched_boxes(anchors, deltas):
    """(A, 4) anchors, (B, A, 4) deltas -> (B, A, 4) boxes, image by image."""
    return torch.stack([torch_decode(anchors, image_deltas) for image_deltas in deltas.unbind(0)])


def _combined(scene, deltas):
    anchors, gts = scene["anchors"], scene["gt_boxes"]
    predictions = _reference_decode(anchors, deltas)
    finite = np.isfinite(predictions).all(axis=1)
    p = np.zeros((len(gts), len(anchors)))
    p[:, finite] = box_iou(gts, predictions[finite])
    return p + box_iou(gts, anchors)


def _check(scene, deltas, expected, actual, index_tolerance, value_atol):
    got = to_numpy(actual.matched_gt)
    np.testing.assert_array_equal(to_numpy(actual.candidate_index), expected.candidate_index)
    np.testing.assert_allclose(to_numpy(actual.gt_threshold), expected.gt_threshold, rtol=0, atol=value_atol)
    differ = got != expected.matched_gt
    if differ.any():
        combined = _combined(scene, deltas)
        for anchor in np.flatnonzero(differ):  # both decisions must be within tolerance of flipping
            involved = [g for g in (got[anchor], expected.matched_gt[anchor]) if g >= 0]
            assert any(abs(combined[g, anchor] - expected.gt_threshold[g]) < index_tolerance for g in involved) or (
                len(involved) == 2 and abs(combined[involved[0], anchor] - combined[involved[1], anchor]) < index_tolerance
            ), f"anchor {anchor}"
    assert differ.sum() <= 3
    same = ~differ
    np.testing.assert_allclose(to_numpy(actual.matched_metric)[same], expected.matched_metric[same], rtol=0, atol=value_atol)
    return int(differ.sum())


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40)
@given(scene=anchor_scenes(max_side=640, max_boxes=40), data=st.data())
def test_float64_matches_reference(device, scene, data):
    deltas = data.draw(pred_deltas(len(scene["anchors"])))
    args = (scene["anchors"], scene["num_anchors_per_level"], scene["gt_boxes"])
    expected = reference_dynamic(*args, deltas)
    actual = torch_dynamic(to_torch(args[0], device=device), args[1], to_torch(args[2], device=device), to_torch(deltas, device=device))
    _check(scene, deltas, expected, actual, 1e-9, 1e-12)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25)
@given(scene=anchor_scenes(max_side=400, max_boxes=30, retinanet=True), topk=st.sampled_from([4, 9, 13]),
       data=st.data())
def test_nine_anchors_per_location_match_reference(device, scene, topk, data):
    # RetinaNet's 9 anchors per location: candidates tie within a location (specs/atss.md §2.1)
    deltas = data.draw(pred_deltas(len(scene["anchors"])))
    args = (scene["anchors"], scene["num_anchors_per_level"], scene["gt_boxes"])
    expected = reference_dynamic(*args, deltas, topk=topk)
    actual = torch_dynamic(to_torch(args[0], device=device), args[1], to_torch(args[2], device=device),
                           to_torch(deltas, device=device), topk=topk)
    _check(scene, deltas, expected, actual, 1e-9, 1e-12)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=3, suppress_health_check=list(HealthCheck))
@given(size=image_sizes(max_side=1333, min_side=1000), data=st.data())
def test_float64_crowded_full_size_scenes(device, size, data):
    anchors, counts = multi_level_anchors(size)
    scene = {"anchors": anchors, "num_anchors_per_level": counts, "gt_boxes": data.draw(gt_boxes(size, 250, 300))}
    deltas = data.draw(pred_deltas(len(anchors)))
    expected = reference_dynamic(anchors, counts, scene["gt_boxes"], deltas)
    actual = torch_dynamic(to_torch(anchors, device=device), counts, to_torch(scene["gt_boxes"], device=device), to_torch(deltas, device=device))
    _check(scene, deltas, expected, actual, 1e-9, 1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("half", [torch.float32, torch.float16, torch.bfloat16])
@settings(max_examples=15)
@given(scene=anchor_scenes(max_side=480, max_boxes=30), data=st.data())
def test_float32_and_half_predictions(device, half, scene, data):
    deltas = data.draw(pred_deltas(len(scene["anchors"]), quality=data.draw(st.sampled_from(["zero", "small", "large"]))))
    deltas = to_numpy(torch.from_numpy(deltas).to(half))  # what the network gave, up-cast exactly
    scene = dict(scene, anchors=scene["anchors"].astype(np.float32).astype(np.float64), gt_boxes=scene["gt_boxes"].astype(np.float32).astype(np.float64))
    expected = reference_dynamic(scene["anchors"], scene["num_anchors_per_level"], scene["gt_boxes"], deltas)
    actual = torch_dynamic(
        to_torch(scene["anchors"], torch.float32, device),
        scene["num_anchors_per_level"],
        to_torch(scene["gt_boxes"], torch.float32, device),
        to_torch(deltas, device=device).to(half),
    )
    assert actual.matched_metric.dtype == torch.float32
    got = to_numpy(actual.matched_gt)
    differ = got != expected.matched_gt
    if differ.any():  # float32 rounding: only anchors within 1e-5 of a boundary may differ
        combined = _combined(scene, deltas)
        for anchor in np.flatnonzero(differ):
            involved = [g for g in (got[anchor], expected.matched_gt[anchor]) if g >= 0]
            margins = [abs(combined[g, anchor] - expected.gt_threshold[g]) for g in involved]
            candidate_moved = any(
                set(to_numpy(actual.candidate_index)[g]) != set(expected.candidate_index[g]) for g in involved
            )
            assert candidate_moved or min(margins) < 1e-4 or (
                len(involved) == 2 and abs(combined[involved[0], anchor] - combined[involved[1], anchor]) < 1e-4
            )
    assert differ.sum() <= max(12, 0.05 * len(differ))


@st.composite
def batches(draw, max_side=400, max_boxes=25, max_batch=4):
    size = draw(image_sizes(max_side=max_side))
    levels = draw(st.integers(1, 5))
    first = draw(st.integers(0, len(STRIDES) - levels))
    anchors, counts = multi_level_anchors(size, STRIDES[first : first + levels])
    batch = draw(st.integers(1, max_batch))
    gt_list = [draw(gt_boxes(size, 0, draw(st.sampled_from([0, 3, max_boxes])))) for _ in range(batch)]
    deltas = np.stack([draw(pred_deltas(len(anchors))) for _ in range(batch)])
    return anchors, counts, gt_list, deltas


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=20)
@given(batch=batches())
def test_batched_equals_per_image(device, batch):
    anchors, counts, gt_list, deltas = batch
    gts, valid = pad_gt_boxes(gt_list, device=device)
    anchors_t, deltas_t = to_torch(anchors, device=device), to_torch(deltas, device=device)
    boxes_t = _batched_boxes(anchors_t, deltas_t)
    batched = assign_dynamic_atss_batched(anchors_t, counts, gts, valid, boxes_t)
    singles = [torch_dynamic(anchors_t, counts, to_torch(g, device=device), deltas_t[b]) for b, g in enumerate(gt_list)]
    assert_batched_equals_stacked(batched, singles)
    chunked = assign_dynamic_atss_batched(anchors_t, counts, gts, valid, boxes_t, max_elements=1)
    assert_batched_equals_stacked(chunked, singles)
