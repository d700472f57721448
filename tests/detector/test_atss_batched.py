"""Torch-only checks of the anchor-based assigners (specs/atss.md, dynamic_atss.md, max_iou.md):
batch plumbing, dtypes, detaching, NaN-freedom on degenerate input, bad input."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from detector.anchors import multi_level_anchors  # noqa: E402
from detector.assign.atss import assign_atss, assign_atss_batched  # noqa: E402
from detector.assign.dynamic_atss import assign_dynamic_atss, assign_dynamic_atss_batched  # noqa: E402
from detector.assign.max_iou import assign_max_iou, assign_max_iou_batched  # noqa: E402
from detector.coders import decode_deltas  # noqa: E402

SIZE = (96, 128)
STRIDES = (8, 16, 32)


def _scene(dtype=torch.float32):
    anchors, counts = multi_level_anchors(SIZE, STRIDES)
    gts = torch.tensor([[[10.0, 12.0, 60.0, 70.0], [64.0, 8.0, 120.0, 40.0], [30, 30, 30, 50]], [[0, 0, 0, 0]] * 3], dtype=dtype)
    valid = torch.tensor([[True, True, True], [False, False, False]])
    return anchors.to(dtype), counts, gts, valid


def _decode(anchors, deltas):
    """(A, 4) anchors, (B, A, 4) raw deltas -> (B, A, 4) predicted boxes (the pipeline's decode)."""
    return torch.stack([decode_deltas(anchors, image_deltas) for image_deltas in deltas.unbind(0)])


def _all_assigners(anchors, counts, gts, valid, **kwargs):
    predictions = anchors.expand(gts.shape[0], -1, -1)  # what zero deltas decode to
    return {
        "atss": assign_atss_batched(anchors, counts, gts, valid, **kwargs),
        "dynamic": assign_dynamic_atss_batched(anchors, counts, gts, valid, predictions, **kwargs),
        "max_iou": assign_max_iou_batched(anchors, gts, valid, match_low_quality=True, **kwargs),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_and_empty_image_in_batch(dtype):
    anchors, counts, gts, valid = _scene(dtype)
    num_anchors = anchors.shape[0]
    cands = sum(min(9, n) for n in counts)
    for name, result in _all_assigners(anchors, counts, gts, valid).items():
        c = 0 if name == "max_iou" else cands
        assert result.matched_gt.shape == (2, num_anchors) and result.matched_gt.dtype == torch.int64
        assert result.matched_metric.dtype == dtype and result.gt_threshold.dtype == dtype
        assert result.candidate_index.shape == (2, 3, c)
        assert not torch.isnan(result.matched_metric).any()
        assert (result.matched_gt[1] == -1).all()  # the image without GTs is all background
        assert torch.isnan(result.gt_threshold[1]).all() and (result.candidate_index[1] == -1).all()
        assert (result.matched_gt[0] != 2).all()  # the zero-area GT gets nothing
        assert not torch.isnan(result.gt_threshold[0]).any()
        assert (result.matched_gt[0] >= 0).any()


def test_no_gt_slots_and_no_anchors():
    anchors, counts, _, _ = _scene()
    empty_gts, empty_valid = torch.zeros((3, 0, 4)), torch.zeros((3, 0), dtype=torch.bool)
    for result in _all_assigners(anchors, counts, empty_gts, empty_valid).values():
        assert result.matched_gt.shape == (3, anchors.shape[0]) and (result.matched_gt == -1).all()
        assert result.gt_threshold.shape == (3, 0)
    gts = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    valid = torch.ones((1, 1), dtype=torch.bool)
    for name, result in _all_assigners(torch.zeros((0, 4)), [0, 0], gts, valid).items():
        assert result.matched_gt.shape == (1, 0) and result.matched_metric.shape == (1, 0)
        if name != "max_iou":
            assert torch.isnan(result.gt_threshold).all() and result.candidate_index.shape == (1, 1, 0)


def test_integer_boxes_become_the_default_float_dtype():
    anchors = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10]])
    result = assign_atss(anchors, [2], torch.tensor([[0, 0, 10, 20]]), topk=1)  # single candidate: thr = IoU
    assert result.matched_metric.dtype == torch.get_default_dtype()
    torch.testing.assert_close(result.matched_gt, torch.tensor([0, -1]))


def test_dynamic_detaches_predictions_and_upcasts_half():
    anchors, counts, gts, valid = _scene()
    deltas = (torch.randn((2, anchors.shape[0], 4), generator=torch.Generator().manual_seed(0)) * 0.3).requires_grad_(True)
    boxes = _decode(anchors, deltas)
    assert boxes.requires_grad
    with_grad = assign_dynamic_atss_batched(anchors, counts, gts, valid, boxes)
    without = assign_dynamic_atss_batched(anchors, counts, gts, valid, boxes.detach())
    for field in ("matched_gt", "matched_metric", "gt_threshold", "candidate_index"):
        torch.testing.assert_close(getattr(with_grad, field), getattr(without, field), equal_nan=True, rtol=0, atol=0)
        assert not getattr(with_grad, field).requires_grad
    single_with_grad = assign_dynamic_atss(anchors, counts, gts[0], boxes[0])
    assert not single_with_grad.matched_metric.requires_grad
    torch.testing.assert_close(single_with_grad.matched_gt, with_grad.matched_gt[0], rtol=0, atol=0)
    half = assign_dynamic_atss(anchors, counts, gts[0], boxes[0].detach().half())
    assert half.matched_metric.dtype == torch.float32
    single = assign_dynamic_atss(anchors, counts, gts[0], boxes[0].detach().half().float())
    torch.testing.assert_close(half.matched_gt, single.matched_gt, rtol=0, atol=0)


def test_decoding_all_anchors_equals_the_old_decoding_of_candidates():
    # the assigner used to decode the deltas of the candidates only; decoding every anchor
    # first (what the pipeline does) is the same elementwise arithmetic, bit for bit
    anchors, counts, gts, valid = _scene(torch.float64)
    deltas = torch.randn((2, anchors.shape[0], 4), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = assign_dynamic_atss_batched(anchors, counts, gts, valid, _decode(anchors, deltas))
    index = result.candidate_index.clamp(min=0)
    image = torch.arange(2)[:, None, None]
    candidates = decode_deltas(anchors[index].reshape(-1, 4), deltas[image, index].reshape(-1, 4)).view(*index.shape, 4)
    torch.testing.assert_close(candidates, _decode(anchors, deltas)[image, index], rtol=0, atol=0)


def test_finite_inverted_predicted_box_is_an_error():
    anchors, counts, gts, valid = _scene()
    boxes = anchors.expand(2, -1, -1).clone()
    boxes[1, 5] = torch.tensor([10.0, 0.0, 4.0, 8.0])
    with pytest.raises(ValueError, match=r"pred_boxes: row \(1, 5\) has x2 < x1"):
        assign_dynamic_atss_batched(anchors, counts, gts, valid, boxes)
    with pytest.raises(ValueError, match=r"pred_boxes: row 5 has x2 < x1"):
        assign_dynamic_atss(anchors, counts, gts[0], boxes[1])
    boxes[1, 5, 1] = float("nan")  # not finite: allowed (PIoU 0)
    assign_dynamic_atss_batched(anchors, counts, gts, valid, boxes)


def test_garbage_predictions_never_give_nan():
    anchors, counts, gts, valid = _scene()
    deltas = torch.full((2, anchors.shape[0], 4), float("nan"))
    deltas[:, ::2] = float("inf")
    deltas[:, 1::3] = 1e30
    result = assign_dynamic_atss_batched(anchors, counts, gts, valid, _decode(anchors, deltas))
    atss = assign_atss_batched(anchors, counts, gts, valid)
    assert not torch.isnan(result.matched_metric).any()
    torch.testing.assert_close(result.matched_gt, atss.matched_gt, rtol=0, atol=0)  # P = 0 everywhere -> ATSS


def test_tiny_memory_budget_is_identical():
    anchors, counts, gts, valid = _scene(torch.float64)
    full = _all_assigners(anchors, counts, gts, valid)
    tiny = _all_assigners(anchors, counts, gts, valid, max_elements=7)
    for name in full:
        for field in ("matched_gt", "matched_metric", "gt_threshold", "candidate_index"):
            torch.testing.assert_close(getattr(tiny[name], field), getattr(full[name], field), equal_nan=True, rtol=0, atol=0)


def test_distance_ties_go_to_lower_anchor_index_on_a_grid():
    # GT centred exactly between anchor centres: many equal distances at the top-k cut
    anchors, counts = multi_level_anchors((64, 64), (8,))
    result = assign_atss(anchors, counts, torch.tensor([[24.0, 24.0, 40.0, 40.0]]), topk=5)
    # centre (32, 32); the 4 nearest centres (28|36, 28|36) are tied, then 8 at the next distance
    # ordered by index: (28,28)=27, (36,28)=28, (28,36)=35, (36,36)=36, then the lowest-index of the next ring
    torch.testing.assert_close(result.candidate_index[0, :4], torch.tensor([27, 28, 35, 36]))
    assert int(result.candidate_index[0, 4]) == 19  # (36, 20): index 2*8+3 = 19 is the lowest of the next ring


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda a, c, g, v: assign_atss_batched(a, c, g, v.float()), "gt_valid"),
        (lambda a, c, g, v: assign_atss_batched(a, c, g[:, :2], v), "gt_boxes"),
        (lambda a, c, g, v: assign_atss_batched(a, c, g, v, max_elements=0), "max_elements"),
        (lambda a, c, g, v: assign_atss_batched(a, c, g, v, topk=0), "topk"),
        (lambda a, c, g, v: assign_atss_batched(a, c[:-1], g, v), "num_anchors_per_level"),
        (lambda a, c, g, v: assign_dynamic_atss_batched(a, c, g, v, torch.zeros((2, 5, 4))), "pred_boxes"),
        (lambda a, c, g, v: assign_dynamic_atss_batched(a, c, g, v, torch.zeros((1, a.shape[0], 4))), "pred_boxes"),
        (lambda a, c, g, v: assign_dynamic_atss_batched(a, c, g, v, torch.zeros((2, a.shape[0], 4)), pred_weight=-1.0), "pred_weight"),
        (lambda a, c, g, v: assign_max_iou_batched(a, g, v, match_low_quality=1), "match_low_quality"),
        (lambda a, c, g, v: assign_max_iou_batched(a, g, v, neg_iou_thr=0.9), "neg_iou_thr"),
        (lambda a, c, g, v: assign_max_iou(a, torch.tensor([[0.0, 0, float("nan"), 1]])), "gt_boxes"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    anchors, counts, gts, valid = _scene()
    with pytest.raises(ValueError, match=name):
        call(anchors, counts, gts, valid)


def test_padded_slots_may_hold_garbage():
    anchors, counts, gts, valid = _scene()
    gts = gts.clone()
    gts[1] = float("nan")  # invalid slots are ignored, never validated
    result = assign_atss_batched(anchors, counts, gts, valid)
    assert (result.matched_gt[1] == -1).all()
    np.testing.assert_array_equal(result.matched_gt[0].numpy(), assign_atss(anchors, counts, gts[0]).matched_gt.numpy())


def test_sums_run_left_to_right_on_every_device():
    """ATSS thresholds are bit-exact only if the candidate sums run in candidate order; the
    column-by-column path (used off the CPU, where cumsum is a parallel scan) and the CPU
    path both equal NumPy's sequential cumsum bit for bit."""
    import numpy as np

    from detector.assign.batching import column_by_column_sum, sequential_sum

    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, size=(3, 5, 45)) * 10.0 ** rng.integers(-8, 8, size=(3, 5, 45))
    expected = np.cumsum(values, axis=-1)[..., -1]
    assert (column_by_column_sum(torch.from_numpy(values)).numpy() == expected).all()
    assert (sequential_sum(torch.from_numpy(values)).numpy() == expected).all()
    assert not (np.sum(values[..., ::-1], axis=-1) == expected).all()  # the order matters on this data
    assert sequential_sum(torch.zeros(2, 0, dtype=torch.float64)).tolist() == [0.0, 0.0]
