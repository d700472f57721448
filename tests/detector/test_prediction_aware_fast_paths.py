"""The search machinery of the prediction-aware assigners (TAL, SimOTA, DSL): the pairs of
``detector/assign/centre_windows.py`` are exactly those of the dense tests, the paths that
the parity tests' small scenes rarely take (anchors without grids, TAL's pruned top-k,
DSL's lowest-cost fallback) give the same results, and the memo never changes a result.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from detector.assign import dsl as torch_dsl  # noqa: E402
from detector.assign import simota as torch_simota  # noqa: E402
from detector.assign import tal as torch_tal  # noqa: E402
from detector.assign.centre_windows import MAX_RUNS, centre_grids, rectangle_mask, rectangle_pairs  # noqa: E402
from detector.assign.memo import memo_disabled  # noqa: E402
from detector.boxes import _centers  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.assign import dsl as reference_dsl  # noqa: E402
from reference.assign import simota as reference_simota  # noqa: E402
from reference.assign import tal as reference_tal  # noqa: E402
from reference.coders import decode_deltas  # noqa: E402
from tests.parity.helpers import assert_same_assignment, pad_gt_boxes, to_numpy, to_torch  # noqa: E402


def _scene(seed, size=(256, 320), num_gts=12, num_classes=5):
    rng = np.random.default_rng(seed)
    anchors, counts = multi_level_anchors(size)
    xy = rng.uniform(0, 1, (num_gts, 2)) * [size[1] - 8, size[0] - 8]
    wh = np.minimum(rng.uniform(4, 160, (num_gts, 2)), [size[1], size[0]] - xy)
    gts = np.concatenate([xy, xy + wh], axis=1)
    pred = decode_deltas(anchors, rng.normal(0, 0.3, size=(len(anchors), 4)))
    scores = rng.uniform(0, 1, size=(len(anchors), num_classes)) ** 4
    labels = rng.integers(0, num_classes, num_gts)
    return anchors, counts, gts, labels, pred, scores


# ---------------------------------------------------------------------------------------
# the windows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(16, 16), (37, 61), (200, 333)])
def test_rectangle_pairs_are_exactly_the_dense_test(dtype, size):
    rng = np.random.default_rng(size[0])
    anchors_np, counts = multi_level_anchors(size)
    anchors = torch.as_tensor(anchors_np, dtype=dtype)
    grids = centre_grids(anchors)
    assert grids is not None and grids.num_levels == len(counts)
    centers = _centers(anchors)
    x, y = centers[None, :, 0], centers[None, :, 1]
    level = torch.repeat_interleave(torch.arange(len(counts)), torch.as_tensor(counts))
    for num_slots in (0, 1, 9):
        valid = torch.as_tensor(rng.uniform(size=num_slots) < 0.8)
        for shape in ((num_slots,), (len(counts), num_slots)):  # one rectangle per slot, or per grid and slot
            corner = rng.uniform(-20, max(size) + 20, shape + (2,))
            corner = np.where(rng.uniform(size=shape + (1,)) < 0.5, np.round(corner / 4) * 4, corner)  # on centre lines too
            rectangles = torch.as_tensor(np.concatenate([corner, corner + rng.uniform(0, 150, shape + (2,))], -1), dtype=dtype)
            per_anchor = rectangles[level].transpose(0, 1) if len(shape) == 2 else rectangles[:, None, :].expand(-1, len(anchors), -1)
            for margin in (None, 0.0, 0.01, 3.0):
                slot, anchor = rectangle_pairs(grids, rectangles, valid, margin=margin)
                m = 0.0 if margin is None else margin
                inside = ((x - per_anchor[..., 0]) > m) & ((per_anchor[..., 2] - x) > m)
                inside &= ((y - per_anchor[..., 1]) > m) & ((per_anchor[..., 3] - y) > m) & valid[:, None]
                expected_slot, expected_anchor = torch.nonzero(inside, as_tuple=True)
                assert torch.equal(slot, expected_slot) and torch.equal(anchor, expected_anchor), (shape, margin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rectangle_mask_is_the_union_of_the_pairs(dtype):
    rng = np.random.default_rng(1)
    for size in ((16, 16), (37, 61), (200, 333)):
        anchors_np, counts = multi_level_anchors(size)
        anchors = torch.as_tensor(anchors_np, dtype=dtype)
        grids = centre_grids(anchors)
        for num_slots in (0, 1, 9, 40):
            batch = int(rng.integers(1, 4))
            image = torch.as_tensor(np.sort(rng.integers(0, batch, num_slots)))
            valid = torch.as_tensor(rng.uniform(size=num_slots) < 0.8)
            for shape in ((num_slots,), (len(counts), num_slots)):
                corner = rng.uniform(-20, max(size) + 20, shape + (2,))
                rectangles = torch.as_tensor(np.concatenate([corner, corner + rng.uniform(0, 300, shape + (2,))], -1), dtype=dtype)
                slot, anchor = rectangle_pairs(grids, rectangles, valid)
                expected = torch.zeros((batch, len(anchors)), dtype=torch.bool)
                expected[image[slot], anchor] = True
                assert torch.equal(rectangle_mask(grids, rectangles, valid, image, batch), expected), (size, shape)


def test_anchors_without_grids():
    anchors, _ = multi_level_anchors((64, 96))
    anchors = torch.as_tensor(anchors)
    assert centre_grids(anchors) is not None
    assert centre_grids(anchors[torch.randperm(len(anchors), generator=torch.Generator().manual_seed(0))]) is None
    assert centre_grids(anchors[:0]) is None
    shapes = torch.arange(2 * MAX_RUNS, dtype=anchors.dtype)[:, None] * torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert centre_grids(torch.tensor([[0.0, 0.0, 8.0, 8.0]]) + shapes) is None  # one run per anchor


# ---------------------------------------------------------------------------------------
# the twins on anchors without grids (the dense tests) equal the references


@pytest.mark.parametrize("seed", [0, 1])
def test_shuffled_anchors_take_the_dense_tests_and_equal_the_references(seed):
    anchors, counts, gts, labels, pred, scores = _scene(seed)
    order = np.random.default_rng(seed).permutation(len(anchors))
    anchors, pred, scores = anchors[order], pred[order], scores[order]
    anchors_t = to_torch(anchors)
    assert centre_grids(anchors_t) is None
    args = [to_torch(gts), torch.as_tensor(labels)]
    expected = reference_tal.assign_tal(anchors, gts, labels, scores, pred)
    assert expected.num_positives > 0
    assert_same_assignment(expected, torch_tal.assign_tal(anchors_t, *args, to_torch(scores), to_torch(pred)))
    expected = reference_simota.assign_simota(anchors, counts, gts, labels, pred, scores)
    assert expected.num_positives > 0
    assert_same_assignment(expected, torch_simota.assign_simota(anchors_t, counts, *args, to_torch(pred), to_torch(scores)))
    expected = reference_dsl.assign_dsl(anchors, counts, gts, labels, pred, scores)
    actual = torch_dsl.assign_dsl(anchors_t, counts, *args, to_torch(pred), to_torch(scores))
    assert expected.num_positives > 0
    np.testing.assert_array_equal(to_numpy(actual.matched_gt), expected.matched_gt)
    np.testing.assert_array_equal(to_numpy(actual.candidate_index), expected.candidate_index)


# ---------------------------------------------------------------------------------------
# TAL: the top-k with pruning, and on the pairs, equals the dense select_topk


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tal_pruned_topk_equals_the_sorted_one(monkeypatch, dtype):
    anchors, _, gts, labels, pred, scores = _scene(3, size=(400, 500), num_gts=40)
    gts_t, valid = pad_gt_boxes([gts, gts[:17], gts[:0]], dtype=dtype)
    labels_t = torch.zeros(valid.shape, dtype=torch.int64)
    labels_t[0], labels_t[1, :17] = torch.as_tensor(labels), torch.as_tensor(labels[:17])
    args = (to_torch(anchors, dtype), gts_t, valid, labels_t, to_torch(np.stack([scores] * 3), dtype), to_torch(np.stack([pred] * 3), dtype))
    monkeypatch.setattr(torch_tal, "PRUNE_ABOVE", 10**9)
    sorted_only = torch_tal.assign_tal_batched(*args)
    monkeypatch.setattr(torch_tal, "PRUNE_ABOVE", 0)
    pruned = torch_tal.assign_tal_batched(*args)
    assert sorted_only.num_positives > 100
    assert torch.equal(sorted_only.matched_gt, pruned.matched_gt) and torch.equal(sorted_only.matched_metric, pruned.matched_metric)
    if dtype == torch.float64:
        for b, count in enumerate((40, 17, 0)):
            expected = reference_tal.assign_tal(anchors, gts[:count], labels[:count], scores, pred)
            np.testing.assert_array_equal(to_numpy(pruned.matched_gt[b]), expected.matched_gt)
            np.testing.assert_array_equal(to_numpy(pruned.matched_metric[b]), expected.matched_metric)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prune", [False, True])
def test_tal_topk_on_pairs_equals_the_dense_select_topk(monkeypatch, dtype, prune):
    monkeypatch.setattr(torch_tal, "PRUNE_ABOVE", 0 if prune else 10**9)
    rng = np.random.default_rng(4)
    for shape, topk in (((2, 3, 40), 5), ((1, 4, 300), 13), ((3, 2, 7), 9)):
        metrics = torch.as_tensor(rng.integers(0, 6, shape) / 5.0, dtype=dtype)  # few values: ties everywhere
        eligible = torch.as_tensor(rng.uniform(size=shape) < 0.7) & (metrics > 0)
        expected = torch_tal.select_topk(metrics, eligible, topk)
        slot, anchor = torch.nonzero(torch.ones(shape[0] * shape[1], shape[2], dtype=torch.bool), as_tuple=True)
        pairs = torch_tal._Pairs(slot, anchor, shape[:2], shape[2])
        chosen = torch_tal._select_topk_pairs(metrics.reshape(-1), eligible.reshape(-1), pairs, topk)
        actual = torch.zeros(metrics.numel(), dtype=torch.bool)
        actual[chosen] = True
        assert torch.equal(actual.view(shape), expected), (shape, topk)


# ---------------------------------------------------------------------------------------
# DSL: the lowest-cost GT of each prior, fast and fallback


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dsl_keep_lowest_equals_lowest_cost_gts(dtype):
    rng = np.random.default_rng(5)
    for trial in range(40):
        batch, num_gts, width = rng.integers(1, 4), rng.integers(1, 6), rng.integers(1, 30)
        cost = torch.as_tensor(rng.integers(0, 4, (batch, num_gts, width)) * 1.5, dtype=dtype)
        if trial % 3 == 0:
            cost[torch.as_tensor(rng.uniform(size=cost.shape) < 0.4)] = float("inf")  # float32 overflow of the centre prior
        chunk_valid = torch.as_tensor(rng.uniform(size=(batch, num_gts)) < 0.7)
        first = int(rng.integers(0, 3))
        best_cost = torch.as_tensor(np.where(rng.uniform(size=(batch, width)) < 0.5, np.nan, rng.integers(0, 4, (batch, width)) * 1.5), dtype=dtype)
        best_gt = torch.as_tensor(rng.integers(0, 9, (batch, width)))
        expected_cost, expected_gt = best_cost.clone(), best_gt.clone()
        marked = torch.where(chunk_valid[..., None], cost, float("nan"))
        chunk_gt = torch_dsl.lowest_cost_gts(marked)
        found = chunk_gt < num_gts
        chunk_cost = marked.gather(1, chunk_gt.clamp(max=num_gts - 1)[:, None, :])[:, 0]
        better = found & (torch.isnan(expected_cost) | (chunk_cost < expected_cost))
        expected_cost = torch.where(better, chunk_cost, expected_cost)
        expected_gt = torch.where(better, chunk_gt + first, expected_gt)
        torch_dsl._keep_lowest(best_cost, best_gt, cost, chunk_valid, first)
        assert torch.equal(best_gt, expected_gt)
        assert torch.equal(torch.nan_to_num(best_cost, nan=-1.0), torch.nan_to_num(expected_cost, nan=-1.0))


def test_dsl_float32_far_priors_overflow_and_batches_agree():
    # priors 60 strides from a GT centre: 10 ** (60 - 3) overflows float32 to +inf
    anchors, counts = multi_level_anchors((64, 1024), (8,))
    gts = [np.array([[0.0, 0.0, 1024.0, 8.0], [0.0, 0.0, 16.0, 16.0]]), np.array([[500.0, 0.0, 520.0, 40.0]])]
    rng = np.random.default_rng(6)
    preds = [decode_deltas(anchors, rng.normal(0, 0.3, (len(anchors), 4))) for _ in gts]
    scores = [rng.uniform(0, 1, (len(anchors), 2)) for _ in gts]
    labels = [np.zeros(len(g), dtype=np.int64) for g in gts]
    anchors_t = to_torch(anchors, torch.float32)
    gts_t, valid = pad_gt_boxes(gts, dtype=torch.float32)
    batched = torch_dsl.assign_dsl_batched(anchors_t, counts, gts_t, valid, torch.as_tensor(np.stack([np.pad(l, (0, 2 - len(l))) for l in labels])),
                                           to_torch(np.stack(preds), torch.float32), to_torch(np.stack(scores), torch.float32))
    for b in range(len(gts)):
        single = torch_dsl.assign_dsl(anchors_t, counts, to_torch(gts[b], torch.float32), torch.as_tensor(labels[b]),
                                      to_torch(preds[b], torch.float32), to_torch(scores[b], torch.float32))
        assert torch.equal(batched.matched_gt[b], single.matched_gt)
        assert torch.equal(batched.candidate_index[b, : len(gts[b])], single.candidate_index)
    assert batched.num_positives > 0


# ---------------------------------------------------------------------------------------
# the memo, and the checks that still read every score


def _three(anchors, counts, gts, labels, pred, scores):
    args = (gts, torch.ones(gts.shape[:2], dtype=torch.bool), labels)
    return (
        torch_tal.assign_tal_batched(anchors, *args, scores, pred),
        torch_simota.assign_simota_batched(anchors, counts, *args, pred, scores),
        torch_dsl.assign_dsl_batched(anchors, counts, *args, pred, scores),
    )


def test_memo_never_changes_a_result():
    anchors, counts, gts, labels, pred, scores = _scene(7)
    tensors = (to_torch(anchors, torch.float32), counts, to_torch(gts[None], torch.float32), torch.as_tensor(labels[None]),
               to_torch(pred[None], torch.float32), to_torch(scores[None], torch.float32))
    remembered = _three(*tensors)
    with memo_disabled():
        fresh = _three(*tensors)
    for a, b in zip(remembered, fresh):
        assert torch.equal(a.matched_gt, b.matched_gt) and torch.equal(a.matched_metric, b.matched_metric)
    tensors[0][:, [0, 2]] += 4.0  # in place: every derived value is rebuilt
    with memo_disabled():
        expected = _three(*tensors)
    for a, b in zip(_three(*tensors), expected):
        assert torch.equal(a.matched_gt, b.matched_gt) and torch.equal(a.matched_metric, b.matched_metric)


def test_dsl_zero_width_anchor_fails_at_every_call():
    anchors = torch.tensor([[0.0, 0, 64, 64], [8.0, 0, 8, 64]])
    args = ([2], torch.tensor([[0.0, 0.0, 16.0, 8.0]]), torch.tensor([0]), torch.zeros(2, 4), torch.full((2, 1), 0.5))
    for _ in range(2):
        with pytest.raises(ValueError, match="anchors: row 1 has zero width"):
            torch_dsl.assign_dsl(anchors, *args)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5, 1.5])
def test_bad_scores_are_still_named(bad):  # the reference's messages: NaN or Inf first, then the range
    anchors, counts, gts, labels, pred, scores = _scene(8, size=(32, 32), num_gts=2, num_classes=2)
    scores = scores.copy()
    scores[3, 1] = bad
    tensors = (to_torch(anchors), counts, to_torch(gts), torch.as_tensor(labels), to_torch(pred), to_torch(scores))
    calls = (
        (lambda: reference_tal.assign_tal(anchors, gts, labels, scores, pred), lambda: torch_tal.assign_tal(tensors[0], *tensors[2:4], tensors[5], tensors[4])),
        (lambda: reference_simota.assign_simota(anchors, counts, gts, labels, pred, scores), lambda: torch_simota.assign_simota(*tensors)),
        (lambda: reference_dsl.assign_dsl(anchors, counts, gts, labels, pred, scores), lambda: torch_dsl.assign_dsl(*tensors)),
    )
    for reference_call, torch_call in calls:
        with pytest.raises(ValueError) as reference_error:
            reference_call()
        with pytest.raises(ValueError, match="pred_scores") as torch_error:
            torch_call()
        assert str(torch_error.value) == str(reference_error.value)
