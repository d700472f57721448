"""Parity of the detector's DSL assigner with the reference (specs/dsl.md).

Both trees get the same float64 predicted boxes and scores. IoUs and the dynamic k are
bit-identical; the costs go through ``log``, ``pow`` and ``sqrt``, which NumPy and torch may
round differently in the last ulp, so the assignments must be identical except where two
reference costs are within 1e-12 (relative) of each other (a near-tie: counted, bounded,
checked against the reference's cost matrix). ``matched_metric`` (an IoU) is compared to
1e-12 where the assignments agree.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from detector.assign.dsl import assign_dsl as torch_dsl  # noqa: E402
from detector.assign.dsl import assign_dsl_batched  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.assign.dsl import assign_dsl as reference_dsl  # noqa: E402
from tests.parity.helpers import (  # noqa: E402
    DEVICES,
    assert_batched_equals_stacked,
    pad_gt_boxes,
    to_numpy,
    to_torch,
)
from tests.reference.test_dsl import _costs, dsl_inputs  # noqa: E402
from tests.strategies import gt_boxes, image_sizes  # noqa: E402

TOLERANCE = 1e-12


def _reference(inputs):
    return reference_dsl(inputs["anchors"], inputs["counts"], inputs["gts"], inputs["labels"], inputs["preds"], inputs["scores"])


def _torch(inputs, device, dtype=torch.float64):
    return torch_dsl(
        to_torch(inputs["anchors"], dtype, device),
        inputs["counts"],
        to_torch(inputs["gts"], dtype, device),
        to_torch(inputs["labels"], device=device),
        to_torch(inputs["preds"], dtype, device),
        to_torch(inputs["scores"], dtype, device),
    )


def _close(a, b):
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))


def _check(inputs, expected, actual):
    """Identical assignments, or differences explained by near-ties of the reference costs;
    returns the number of anchors whose GT differs."""
    got_gt = to_numpy(actual.matched_gt)
    got_candidates = to_numpy(actual.candidate_index)
    assert got_candidates.shape == expected.candidate_index.shape
    assert np.isnan(to_numpy(actual.gt_threshold)).all() and actual.gt_threshold.shape == expected.gt_threshold.shape
    differ = got_gt != expected.matched_gt
    rows = np.flatnonzero((got_candidates != expected.candidate_index).any(axis=1))
    if differ.any() or rows.size:
        valid_index, _, cost = _costs(inputs["anchors"], inputs["gts"], inputs["labels"], inputs["preds"], inputs["scores"])
        position = {int(a): p for p, a in enumerate(valid_index)}
        moved = set()
        for g in rows:  # the i-th selected cost agrees: only near-equal priors were swapped
            mine, theirs = got_candidates[g], expected.candidate_index[g]
            np.testing.assert_array_equal(mine >= 0, theirs >= 0, err_msg=f"k of GT {g}")
            for a, b in zip(mine[mine >= 0], theirs[theirs >= 0]):
                assert _close(cost[g, position[a]], cost[g, position[b]]), f"GT {g}: anchors {a} and {b}"
            moved |= set(mine.tolist()) ^ set(theirs.tolist())
        for a in np.flatnonzero(differ):
            pair = (got_gt[a], expected.matched_gt[a])
            assert a in moved or (min(pair) >= 0 and _close(cost[pair[0], position[a]], cost[pair[1], position[a]])), f"anchor {a}"
        assert differ.sum() <= 3
    np.testing.assert_allclose(to_numpy(actual.matched_metric)[~differ], expected.matched_metric[~differ], rtol=0, atol=1e-12)
    return int(differ.sum())


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(inputs=dsl_inputs(max_side=480, max_boxes=30))
def test_float64_matches_reference(device, inputs):
    actual = _torch(inputs, device)
    assert actual.matched_gt.device.type == device and actual.matched_metric.dtype == torch.float64
    _check(inputs, _reference(inputs), actual)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(size=image_sizes(max_side=800, min_side=600), data=st.data())
def test_float64_crowded_scenes(device, size, data):
    anchors, counts = multi_level_anchors(size)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    corners = rng.uniform(0, 1, (150, 2)) * [size[1] - 8, size[0] - 8]
    sides = np.minimum(rng.uniform(8, 300, (150, 2)), [size[1], size[0]] - corners)
    gts = np.concatenate([np.concatenate([corners, corners + sides], axis=1), data.draw(gt_boxes(size, 0, 50))])
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    nearest = np.argmin(np.abs(centers[:, None, :] - (gts[None, :, :2] + gts[None, :, 2:]) / 2).sum(-1), axis=1)
    jitter = rng.normal(0, 3, (len(anchors), 4))
    preds = gts[nearest] + np.concatenate([np.minimum(jitter[:, :2], 0), np.maximum(jitter[:, 2:], 0)], axis=1)
    inputs = {"anchors": anchors, "counts": counts, "gts": gts, "labels": rng.integers(0, 80, len(gts)),
              "preds": preds, "scores": rng.uniform(0, 1, (len(anchors), 80)) ** 4}
    expected = _reference(inputs)
    assert expected.num_positives > 100
    _check(inputs, expected, _torch(inputs, device))


@st.composite
def batches(draw, max_side=400, max_boxes=25, max_batch=4):
    base = draw(dsl_inputs(max_side=max_side, max_boxes=0))
    anchors, counts, num_classes = base["anchors"], base["counts"], base["scores"].shape[1]
    size = (int(anchors[:, 3].max()), int(anchors[:, 2].max()))  # covers the image the anchors were made for
    images = []
    for _ in range(draw(st.integers(1, max_batch))):
        gts = draw(gt_boxes(size, 0, draw(st.sampled_from([0, 3, max_boxes]))))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        jitter = rng.normal(0, 4, (len(anchors), 4))
        if len(gts):
            preds = gts[rng.integers(0, len(gts), len(anchors))]
            preds = preds + np.concatenate([np.minimum(jitter[:, :2], 0), np.maximum(jitter[:, 2:], 0)], axis=1)
        else:
            preds = anchors + np.concatenate([np.minimum(jitter[:, :2], 0), np.maximum(jitter[:, 2:], 0)], axis=1)
        preds[rng.uniform(size=len(anchors)) < 0.05] = np.nan
        images.append({"gts": gts, "labels": rng.integers(0, num_classes, len(gts)), "preds": preds,
                       "scores": rng.uniform(0, 1, (len(anchors), num_classes)) ** 3})
    return anchors, counts, images


def _batch_tensors(anchors, images, device):
    gts, valid = pad_gt_boxes([image["gts"] for image in images], device=device)
    labels = torch.full(valid.shape, -7, dtype=torch.int64)  # padded slots may hold anything
    for b, image in enumerate(images):
        labels[b, : len(image["labels"])] = torch.from_numpy(image["labels"])
    gts = torch.where(valid[..., None], gts, torch.tensor(float("nan"), dtype=gts.dtype, device=device))  # and here
    preds = to_torch(np.stack([image["preds"] for image in images]), device=device)
    scores = to_torch(np.stack([image["scores"] for image in images]), device=device)
    return to_torch(anchors, device=device), gts, valid, labels.to(device), preds, scores


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=20, deadline=None)
@given(batch=batches(), data=st.data())
def test_batched_equals_per_image_and_chunked(device, batch, data):
    anchors, counts, images = batch
    anchors_t, gts, valid, labels, preds, scores = _batch_tensors(anchors, images, device)
    batched = assign_dsl_batched(anchors_t, counts, gts, valid, labels, preds, scores)
    singles = [
        torch_dsl(anchors_t, counts, to_torch(image["gts"], device=device), to_torch(image["labels"], device=device),
                  preds[b], scores[b])
        for b, image in enumerate(images)
    ]
    assert_batched_equals_stacked(batched, singles)
    for max_pairs in (1, data.draw(st.integers(2, 20_000))):
        chunked = assign_dsl_batched(anchors_t, counts, gts, valid, labels, preds, scores, max_pairs=max_pairs)
        assert_batched_equals_stacked(chunked, singles)
    for b, image in enumerate(images):  # and each image is the reference's
        inputs = {"anchors": anchors, "counts": counts, **image}
        _check(inputs, _reference(inputs), singles[b])


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=10, deadline=None)
@given(inputs=dsl_inputs(max_side=400, max_boxes=20))
def test_float32_and_half_inputs(device, inputs):
    inputs = dict(inputs, preds=np.where(np.isfinite(inputs["preds"]), inputs["preds"], 0.0))
    double = _torch(inputs, device)
    single = torch_dsl(
        to_torch(inputs["anchors"], torch.float32, device),
        inputs["counts"],
        to_torch(inputs["gts"], torch.float32, device),
        to_torch(inputs["labels"], device=device),
        to_torch(inputs["preds"], torch.float16, device).requires_grad_(True),  # up-cast, detached
        to_torch(inputs["scores"], torch.bfloat16, device).requires_grad_(True),
    )
    assert single.matched_metric.dtype == torch.float32 and not single.matched_metric.requires_grad
    metric = single.matched_metric
    assert bool(((metric >= 0) & (metric <= 1)).all()) and bool((metric[single.matched_gt < 0] == 0).all())
    positives = set(to_numpy(single.candidate_index)[to_numpy(single.candidate_index) >= 0].tolist())
    assert positives == set(np.flatnonzero(to_numpy(single.matched_gt) >= 0).tolist())
    # half predictions move the IoUs by ~1e-3: most decisions stay
    differ = (to_numpy(single.matched_gt) != to_numpy(double.matched_gt)).sum()
    assert differ <= max(3, 0.2 * double.num_positives)


def test_bad_input_names_the_argument():
    anchors = torch.tensor([[-28.0, -28.0, 36.0, 36.0], [-20.0, -28.0, 44.0, 36.0]], dtype=torch.float64)
    gts = torch.tensor([[[0.0, 0.0, 16.0, 8.0], [1.0, 1.0, 0.0, 0.0]]], dtype=torch.float64)  # slot 1 is padding
    valid = torch.tensor([[True, False]])
    labels = torch.tensor([[1, -3]])
    preds = anchors[None].clone()
    scores = torch.full((1, 2, 2), 0.5, dtype=torch.float64)
    result = assign_dsl_batched(anchors, [2], gts, valid, labels, preds, scores)
    # k = 1 and the two priors cost the same: the lower anchor index
    assert result.matched_gt.tolist() == [[0, -1]] and result.candidate_index[0, 1].tolist() == [-1, -1]
    with pytest.raises(ValueError, match=r"gt_labels: row \(0, 0\) is 2"):
        assign_dsl_batched(anchors, [2], gts, valid, torch.tensor([[2, 0]]), preds, scores)
    with pytest.raises(ValueError, match="gt_labels: expected a \\(1, 2\\) integer"):
        assign_dsl_batched(anchors, [2], gts, valid, labels.double(), preds, scores)
    with pytest.raises(ValueError, match=r"pred_scores: row \(0, 1\) class 0 is 1.5"):
        assign_dsl_batched(anchors, [2], gts, valid, labels, preds, torch.tensor([[[0.5, 0.5], [1.5, 0.5]]]))
    with pytest.raises(ValueError, match="pred_scores: expected shape"):
        assign_dsl_batched(anchors, [2], gts, valid, labels, preds, scores[:, :1])
    with pytest.raises(ValueError, match="pred_scores: a tensor on the meta device"):
        assign_dsl_batched(anchors, [2], gts, valid, labels, preds, scores.to("meta"))
    with pytest.raises(ValueError, match="max_pairs"):
        assign_dsl_batched(anchors, [2], gts, valid, labels, preds, scores, max_pairs=0)
    with pytest.raises(ValueError, match=r"gt_labels: row 0 is 2, expected a class in 0..1"):
        torch_dsl(anchors, [2], gts[0, :1], [2], preds[0], scores[0])
    with pytest.raises(ValueError, match=r"pred_scores: row 1 class 1 is -0.5"):
        torch_dsl(anchors, [2], gts[0, :1], [1], preds[0], torch.tensor([[0.5, 0.5], [0.5, -0.5]]))
    with pytest.raises(ValueError, match="anchors: row 1 has zero width"):
        torch_dsl(torch.tensor([[0.0, 0, 64, 64], [8.0, 0, 8, 64]]), [2], gts[0, :1], [1], preds[0], scores[0])


@pytest.mark.parametrize("device", DEVICES)
def test_padding_takes_nothing(device):
    """Padded GT slots select nothing and win no conflict; padded prior positions (images
    with fewer valid priors than the batch's widest) are never selected nor counted in k."""
    xs = 4.0 + 8.0 * np.arange(20)
    anchors = np.stack([xs - 32, np.full(20, -28.0), xs + 32, np.full(20, 36.0)], axis=1)  # one row, stride 8
    images = [
        # only prior 0 is valid; the zeroed padded slot (centre (0, 0)) is nearer to it than both GTs
        {"gts": np.array([[3.0, 0.0, 5.0, 40.0], [2.0, 0.0, 6.0, 36.0]]), "preds": np.full((20, 4), np.nan)},
        # priors 1-6 are valid (V_max = 6), the GT takes prior 4; the padding's nearest is prior 1
        {"gts": np.array([[10.0, 0.0, 60.0, 8.0]]), "preds": np.full((20, 4), np.nan)},
        # only prior 5 is valid, with a useless prediction and score; every invalid prior
        # predicts the GT with score 0
        {"gts": np.array([[40.0, 0.0, 46.0, 8.0]]), "preds": np.where(np.arange(20)[:, None] == 5, np.nan, [[40.0, 0.0, 46.0, 8.0]]),
         "scores": (np.arange(20) == 5)[:, None] * 1.0},
        # three GTs, so that every other image has padded slots (G_max = 3)
        {"gts": np.array([[100.0, 0.0, 120.0, 8.0]] * 3), "preds": np.full((20, 4), np.nan)},
    ]
    for image in images:
        image.setdefault("scores", np.full((20, 1), 0.5))
        image.update(labels=np.zeros(len(image["gts"]), dtype=np.int64))
    anchors_t, gts, valid, labels, preds, scores = _batch_tensors(anchors, images, device)
    for max_pairs in (2**23, 1):
        batched = assign_dsl_batched(anchors_t, [20], gts, valid, labels, preds, scores, max_pairs=max_pairs)
        matched = to_numpy(batched.matched_gt)
        assert np.flatnonzero(matched[0] >= 0).tolist() == [0] and matched[0, 0] == 1  # GT 1: the nearer centre
        assert np.flatnonzero(matched[1] >= 0).tolist() == [4] and matched[1, 4] == 0
        assert np.flatnonzero(matched[2] >= 0).tolist() == [5] and to_numpy(batched.matched_metric)[2, 5] == 0
        for b, image in enumerate(images):
            inputs = {"anchors": anchors, "counts": [20], **image}
            expected = _reference(inputs)
            np.testing.assert_array_equal(matched[b], expected.matched_gt)
            np.testing.assert_array_equal(to_numpy(batched.candidate_index)[b, : len(image["gts"])], expected.candidate_index)
