"""Parity of detector TAL with the reference (specs/tal.md).

Both trees get the same decoded float64 boxes and scores (the boxes decoded once by the
reference coder), so in float64 every step is the same IEEE arithmetic: IoUs as
``box_iou``, integral powers by the same square-and-multiply, one division and one product
for the targets. Results must be **identical** (``matched_gt``, ``matched_metric`` bit for
bit) on every device. Non-integral exponents go through the libraries' ``pow``: targets
within 1e-12, indices identical. float32 / half inputs: indices agree except near a tie.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector.assign.tal import assign_tal as torch_tal  # noqa: E402
from detector.assign.tal import assign_tal_batched  # noqa: E402
from detector.assign.tal import select_topk as torch_select_topk  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.assign.tal import assign_tal as reference_tal  # noqa: E402
from reference.assign.tal import select_topk as reference_select_topk  # noqa: E402
from reference.coders import decode_deltas  # noqa: E402
from tests.parity.helpers import (  # noqa: E402
    DEVICES,
    assert_batched_equals_stacked,
    assert_same_assignment,
    pad_gt_boxes,
    to_numpy,
    to_torch,
)
from tests.reference.test_tal import score_arrays, tal_scenes  # noqa: E402
from tests.strategies import STRIDES, gt_boxes, image_sizes, pred_deltas  # noqa: E402

INTEGRAL_OPTIONS = st.sampled_from([{}, {"topk": 1}, {"topk": 3}, {"topk": 40}, {"alpha": 0.0, "beta": 1.0}, {"alpha": 2.0, "beta": 0.0}])


def _torch_args(scene, dtype=torch.float64, device="cpu"):
    return (
        to_torch(scene["anchors"], dtype, device),
        to_torch(scene["gt_boxes"], dtype, device),
        torch.as_tensor(scene["gt_labels"], dtype=torch.int64, device=device),
        to_torch(scene["pred_scores"], dtype, device),
        to_torch(scene["pred_boxes"], dtype, device),
    )


def _reference_args(scene):
    return scene["anchors"], scene["gt_boxes"], scene["gt_labels"], scene["pred_scores"], scene["pred_boxes"]


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60)
@given(scene=tal_scenes(max_side=512, max_boxes=30, min_boxes=0), options=INTEGRAL_OPTIONS)
def test_float64_matches_reference_exactly(device, scene, options):
    expected = reference_tal(*_reference_args(scene), **options)
    actual = torch_tal(*_torch_args(scene, device=device), **options)
    assert_same_assignment(expected, actual)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=3, suppress_health_check=list(HealthCheck))
@given(size=image_sizes(max_side=1333, min_side=1000), data=st.data())
def test_float64_crowded_full_size_scenes(device, size, data):
    anchors, _ = multi_level_anchors(size)
    gts = data.draw(gt_boxes(size, 250, 300))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    with np.errstate(over="ignore", invalid="ignore"):
        predictions = decode_deltas(anchors, data.draw(pred_deltas(len(anchors), quality="small")))
    scene = {
        "anchors": anchors,
        "gt_boxes": gts,
        "gt_labels": rng.integers(0, 80, len(gts)),
        "pred_scores": data.draw(score_arrays(len(anchors), 80)),
        "pred_boxes": predictions,
    }
    expected = reference_tal(*_reference_args(scene))
    actual = torch_tal(*_torch_args(scene, device=device))
    assert_same_assignment(expected, actual)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30)
@given(scene=tal_scenes(max_side=384, max_boxes=20), exponents=st.sampled_from([(0.5, 2.5), (1.0, 6.5), (1.5, 4.0)]))
def test_non_integral_exponents(device, scene, exponents):  # library pow: ulps apart
    alpha, beta = exponents
    expected = reference_tal(*_reference_args(scene), alpha=alpha, beta=beta)
    actual = torch_tal(*_torch_args(scene, device=device), alpha=alpha, beta=beta)
    assert_same_assignment(expected, actual, metric_atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("half", [torch.float32, torch.float16, torch.bfloat16])
@settings(max_examples=15)
@given(scene=tal_scenes(max_side=384, max_boxes=20))
def test_float32_and_half_predictions(device, half, scene):
    # what the network gave, rounded to its dtype; the reference sees the same values
    scores = to_numpy(torch.from_numpy(scene["pred_scores"]).to(half))
    predictions = to_numpy(torch.from_numpy(np.nan_to_num(scene["pred_boxes"], nan=0.0, posinf=1e4, neginf=-1e4)).to(half))
    inverted = (predictions[:, 2] < predictions[:, 0]) | (predictions[:, 3] < predictions[:, 1])
    predictions[inverted] = predictions[inverted][:, [0, 1, 0, 1]]  # rounding may invert a thin box
    rounded = dict(
        scene,
        anchors=scene["anchors"].astype(np.float32).astype(np.float64),
        gt_boxes=scene["gt_boxes"].astype(np.float32).astype(np.float64),
        pred_scores=scores,
        pred_boxes=predictions,
    )
    expected = reference_tal(*_reference_args(rounded))
    anchors, gts, labels, _, _ = _torch_args(rounded, torch.float32, device)
    actual = torch_tal(anchors, gts, labels, torch.from_numpy(scores).to(device, half), torch.from_numpy(predictions).to(device, half))
    assert actual.matched_metric.dtype == torch.float32
    got = to_numpy(actual.matched_gt)
    differ = got != expected.matched_gt
    assert differ.sum() <= max(12, 0.05 * len(differ))
    metric = to_numpy(actual.matched_metric)
    for g in range(len(rounded["gt_boxes"])):  # a GT with the same positives has the same targets
        mine = expected.matched_gt == g
        if (mine == (got == g)).all():
            np.testing.assert_allclose(metric[mine], expected.matched_metric[mine], rtol=0, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40)
@given(data=st.data(), topk=st.integers(1, 20))
def test_select_topk_ties(device, data, topk):  # §2.5: the k-th place, exactly, on ties
    shape = data.draw(st.sampled_from([(1, 1, 1), (2, 3, 17), (1, 4, 64)]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    metrics = rng.integers(0, 4, shape) / 4.0  # few distinct values: ties everywhere
    eligible = rng.uniform(size=shape) < data.draw(st.sampled_from([0.2, 0.7, 1.0]))
    eligible &= metrics > 0
    got = torch_select_topk(to_torch(metrics, device=device), torch.from_numpy(eligible).to(device), topk)
    for b in range(shape[0]):
        np.testing.assert_array_equal(to_numpy(got)[b], reference_select_topk(metrics[b], eligible[b], topk))


@st.composite
def batches(draw, max_side=400, max_boxes=25, max_batch=4):
    size = draw(image_sizes(max_side=max_side))
    levels = draw(st.integers(1, 5))
    first = draw(st.integers(0, len(STRIDES) - levels))
    anchors, _ = multi_level_anchors(size, STRIDES[first : first + levels])
    batch = draw(st.integers(1, max_batch))
    num_classes = draw(st.integers(1, 5))
    gt_list = [draw(gt_boxes(size, 0, draw(st.sampled_from([0, 3, max_boxes])))) for _ in range(batch)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = [rng.integers(0, num_classes, len(g)) for g in gt_list]
    scores = np.stack([draw(score_arrays(len(anchors), num_classes)) for _ in range(batch)])
    with np.errstate(over="ignore", invalid="ignore"):
        boxes = np.stack([decode_deltas(anchors, draw(pred_deltas(len(anchors)))) for _ in range(batch)])
    return anchors, gt_list, labels, scores, boxes


def _padded_labels(labels, g_max, device, fill):
    padded = np.full((len(labels), g_max), fill, dtype=np.int64)
    for b, image_labels in enumerate(labels):
        padded[b, : len(image_labels)] = image_labels
    return torch.from_numpy(padded).to(device)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=15)
@given(batch=batches(), fill=st.sampled_from([0, -1, 999]))
def test_batched_equals_per_image_and_chunked_equals_unchunked(device, batch, fill):
    anchors, gt_list, labels, scores, boxes = batch
    gts, valid = pad_gt_boxes(gt_list, device=device)
    padded_labels = _padded_labels(labels, gts.shape[1], device, fill)  # padded slots hold anything
    anchors_t, scores_t, boxes_t = (to_torch(x, device=device) for x in (anchors, scores, boxes))
    batched = assign_tal_batched(anchors_t, gts, valid, padded_labels, scores_t, boxes_t)
    singles = [
        torch_tal(anchors_t, to_torch(g, device=device), torch.as_tensor(l, device=device), scores_t[b], boxes_t[b])
        for b, (g, l) in enumerate(zip(gt_list, labels))
    ]
    assert_batched_equals_stacked(batched, singles)
    for max_elements in (1, 3 * len(gt_list) * len(anchors)):  # one GT, three GTs per chunk
        chunked = assign_tal_batched(anchors_t, gts, valid, padded_labels, scores_t, boxes_t, max_elements=max_elements)
        assert_batched_equals_stacked(chunked, singles)
    for b, single in enumerate(singles):  # and each image equals the reference
        expected = reference_tal(anchors, gt_list[b], labels[b], scores[b], boxes[b])
        assert_same_assignment(expected, single)


# ---------------------------------------------------------------------------------------
# the detector's own contract: dtypes, devices, gradients, padded slots, errors

GT = np.array([[0.0, 0.0, 100.0, 100.0]])
ANCHORS = np.array([[10 * i, 40, 10 * i + 20, 60] for i in range(5)], dtype=float)
PREDICTIONS = np.array([[0, 0, 100, h] for h in (90, 80, 60, 50, 0)], dtype=float)
SCORES = np.array([[0.1], [0.2], [1.0], [0.9], [0.8]])


def test_worked_example_and_dtypes():  # specs/tal.md §6.1
    for dtype in (torch.float32, torch.float64):
        result = torch_tal(to_torch(ANCHORS, dtype), to_torch(GT, dtype), torch.tensor([0]), to_torch(SCORES, dtype), to_torch(PREDICTIONS, dtype), topk=3)
        assert result.matched_metric.dtype == dtype and result.matched_gt.dtype == torch.int64
        torch.testing.assert_close(result.matched_gt, torch.tensor([0, 0, 0, -1, -1]))
        torch.testing.assert_close(result.matched_metric, torch.tensor([0.9, 0.887886, 0.790123, 0, 0], dtype=dtype), rtol=0, atol=1e-6)


def test_predictions_are_detached_and_may_require_grad():
    scores = to_torch(SCORES).requires_grad_()
    boxes = to_torch(PREDICTIONS).requires_grad_()
    result = torch_tal(to_torch(ANCHORS), to_torch(GT), [0], scores, boxes)
    assert not result.matched_metric.requires_grad
    assert result.num_positives == 4


def test_numpy_inputs_and_empty_batches():
    result = torch_tal(ANCHORS, GT, [0], SCORES, PREDICTIONS)
    np.testing.assert_array_equal(to_numpy(result.matched_gt), [0, 0, 0, 0, -1])
    empty = assign_tal_batched(to_torch(ANCHORS), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), torch.zeros(2, 0, dtype=torch.int64), to_torch(np.stack([SCORES] * 2)), to_torch(np.stack([PREDICTIONS] * 2)))
    assert empty.matched_gt.shape == (2, 5) and (empty.matched_gt == -1).all()
    assert empty.gt_threshold.shape == (2, 0) and empty.candidate_index.shape == (2, 0, 0)
    no_anchor = torch_tal(torch.zeros(0, 4), GT, [0], torch.zeros(0, 2), torch.zeros(0, 4))
    assert no_anchor.matched_gt.shape == (0,) and torch.isnan(no_anchor.gt_threshold).all()


BAD_INPUTS = [
    ({"gt_labels": [1]}, "gt_labels"),
    ({"gt_labels": [0.0]}, "gt_labels"),
    ({"gt_labels": [0, 0]}, "gt_labels"),
    ({"pred_scores": np.full((5, 1), 1.5)}, "pred_scores"),
    ({"pred_scores": np.array([[0.5]] * 4 + [[np.nan]])}, "pred_scores"),
    ({"pred_scores": np.zeros((4, 1))}, "pred_scores"),
    ({"pred_scores": np.zeros((5, 0))}, "pred_scores"),
    ({"pred_boxes": np.array([[0, 0, 1, 1]] * 4 + [[0, 5, 1, 4]])}, "pred_boxes"),
    ({"gt_boxes": [[10, 0, 0, 10]]}, "gt_boxes"),
    ({"topk": 0}, "topk"),
    ({"alpha": -1.0}, "alpha"),
    ({"beta": float("nan")}, "beta"),
    ({"inside_eps": -0.1}, "inside_eps"),
]


@pytest.mark.parametrize("change, name", BAD_INPUTS)
def test_bad_input_gives_the_reference_message(change, name):
    positional = {"anchors": ANCHORS, "gt_boxes": GT, "gt_labels": [0], "pred_scores": SCORES, "pred_boxes": PREDICTIONS}
    options = {}
    for key, value in change.items():
        (positional if key in positional else options)[key] = value
    with pytest.raises(ValueError, match=name) as reference_error:
        reference_tal(*positional.values(), **options)
    with pytest.raises(ValueError, match=name) as torch_error:
        torch_tal(*positional.values(), **options)
    assert str(torch_error.value).replace("torch.", "") == str(reference_error.value)  # dtype names: torch.float64


def test_batched_bad_labels_name_image_and_slot():
    gts, valid = pad_gt_boxes([GT, np.vstack([GT, GT])])
    labels = torch.tensor([[0, -7], [0, 3]])  # (0, 1) is padding: anything goes; (1, 1) is real
    args = (to_torch(ANCHORS), gts, valid, labels, to_torch(np.stack([SCORES] * 2)), to_torch(np.stack([PREDICTIONS] * 2)))
    with pytest.raises(ValueError, match=r"gt_labels: row \(1, 1\) is 3, expected a class in 0..0"):
        assign_tal_batched(*args)
    with pytest.raises(ValueError, match="max_elements"):
        assign_tal_batched(*args[:3], torch.tensor([[0, 0], [0, 0]]), *args[4:], max_elements=0)


@pytest.mark.parametrize("name", ["gt_boxes", "gt_labels", "pred_scores", "pred_boxes"])
def test_meta_and_foreign_devices_are_errors(name):
    arguments = {"anchors": to_torch(ANCHORS), "gt_boxes": to_torch(GT), "gt_labels": torch.tensor([0]), "pred_scores": to_torch(SCORES), "pred_boxes": to_torch(PREDICTIONS)}
    arguments[name] = arguments[name].to("meta")
    with pytest.raises(ValueError, match=name):
        torch_tal(*arguments.values())
