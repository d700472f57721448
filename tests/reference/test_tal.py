"""specs/tal.md: worked examples, the bound on the soft targets, edge cases, invariants and
bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.assign.tal import (
    TAL_ALPHA,
    TAL_BETA,
    TAL_TOPK,
    _power,
    alignment_metrics,
    anchors_inside,
    assign_tal,
    class_scores,
    prediction_ious,
    select_topk,
)
from reference.boxes import box_centers, box_iou, points_inside_boxes
from reference.coders import decode_deltas
from reference.conventions import ATSS_INSIDE_EPS, BACKGROUND
from reference.targets import iou_targets
from tests.strategies import anchor_scenes, pred_deltas

# §6.1: one GT, five anchors with centres inside it, predictions with IoU .9 .8 .6 .5 0
GT = np.array([[0.0, 0.0, 100.0, 100.0]])
ANCHORS = np.array([[10 * i, 40, 10 * i + 20, 60] for i in range(5)], dtype=float)
PREDICTIONS = np.array([[0, 0, 100, h] for h in (90, 80, 60, 50, 0)], dtype=float)
SCORES = np.array([[0.1], [0.2], [1.0], [0.9], [0.8]])
IOUS = np.array([0.9, 0.8, 0.6, 0.5, 0.0])
ALIGNMENT = np.array([0.0531441, 0.0524288, 0.046656, 0.0140625, 0.0])


def _decode(anchors, deltas):
    """The predicted boxes of raw deltas, as the training pipeline decodes them (garbage
    deltas may overflow to Inf / NaN)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return decode_deltas(anchors, deltas)


# ---------------------------------------------------------------------------------------
# worked examples (§6)


def test_defaults():  # §1
    assert (TAL_TOPK, TAL_ALPHA, TAL_BETA) == (13, 1.0, 6.0)


def test_topk_normalisation_and_the_bound():  # §6.1, §3
    np.testing.assert_allclose(box_iou(GT, PREDICTIONS)[0], IOUS, rtol=1e-15)
    metrics = alignment_metrics(class_scores(SCORES, np.array([0])), prediction_ious(GT, PREDICTIONS), 1.0, 6.0)
    np.testing.assert_allclose(metrics[0], ALIGNMENT, rtol=1e-14)
    top3 = assign_tal(ANCHORS, GT, [0], SCORES, PREDICTIONS, topk=3)
    np.testing.assert_array_equal(top3.matched_gt, [0, 0, 0, -1, -1])
    expected = ALIGNMENT / ALIGNMENT[0] * 0.9
    np.testing.assert_allclose(top3.matched_metric, [*expected[:3], 0, 0], rtol=1e-14)
    np.testing.assert_allclose(top3.matched_metric[:3], [0.9, 0.887886, 0.790123], atol=5e-7)
    assert top3.matched_metric[0] == 0.9  # §3.2: the largest target is U_g exactly
    assert top3.matched_metric[2] > IOUS[2]  # §3: not bounded by the anchor's own IoU
    assert np.isnan(top3.gt_threshold).all() and top3.candidate_index.shape == (1, 0)
    default = assign_tal(ANCHORS, GT, [0], SCORES, PREDICTIONS)  # k = 13, four eligible
    np.testing.assert_array_equal(default.matched_gt, [0, 0, 0, 0, -1])
    np.testing.assert_allclose(default.matched_metric, [*expected[:4], 0], rtol=1e-14)
    np.testing.assert_allclose(default.matched_metric[3], 0.238150, atol=5e-7)


def _mmdet_positives(anchors, gts, labels, scores, predictions, topk):
    """mmdetection's TaskAlignedAssigner candidate step (§4): top-k of t over all anchors
    (ties to the lower index here), then keep those inside (> 0.01) with t > 0."""
    metrics = alignment_metrics(class_scores(scores, np.asarray(labels)), prediction_ious(gts, predictions), 1.0, 6.0)
    inside = anchors_inside(gts, anchors, 0.01)
    positives = []
    for g in range(len(gts)):
        top = np.argsort(-metrics[g], kind="stable")[:topk]
        positives.append(sorted(int(a) for a in top if inside[g, a] and metrics[g, a] > 0))
    return positives


def test_paper_vs_code_outside_anchor():  # §6.2, §4
    gt = np.array([[0.0, 0.0, 20.0, 20.0]])
    anchors = np.array([[5.0, 5.0, 15.0, 15.0], [25.0, 5.0, 35.0, 15.0]])  # centres (10, 10), (30, 10)
    predictions = np.repeat(gt, 2, axis=0)
    scores = np.array([[0.5], [0.9]])
    result = assign_tal(anchors, gt, [0], scores, predictions, topk=1)
    np.testing.assert_array_equal(result.matched_gt, [0, -1])
    np.testing.assert_array_equal(result.matched_metric, [1.0, 0.0])
    assert _mmdet_positives(anchors, gt, [0], scores, predictions, 1) == [[]]  # the code: no positive
    # the two rules agree when the top k of all anchors are eligible
    assert _mmdet_positives(anchors, gt, [0], scores[::-1], predictions, 1) == [[0]]
    np.testing.assert_array_equal(assign_tal(anchors, gt, [0], scores[::-1], predictions, topk=1).matched_gt, [0, -1])


def test_several_gts_go_to_the_highest_iou_not_alignment():  # §6.3, §2.6
    anchors = np.array([[5.0, 5.0, 15.0, 15.0]])
    gts = np.array([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 30.0, 30.0]])
    predictions = np.array([[0.0, 0.0, 20.0, 20.0]])
    scores = np.array([[0.005, 0.9]])
    metrics = alignment_metrics(class_scores(scores, np.array([0, 1])), prediction_ious(gts, predictions), 1.0, 6.0)
    np.testing.assert_allclose(metrics[:, 0], [0.005, 0.9 * (4 / 9) ** 6], rtol=1e-14)
    assert metrics[1, 0] > metrics[0, 0]
    result = assign_tal(anchors, gts, [0, 1], scores, predictions)
    np.testing.assert_array_equal(result.matched_gt, [0])
    np.testing.assert_array_equal(result.matched_metric, [1.0])


def test_equal_ious_go_to_the_lower_gt_index():  # §2.6, §5.8
    anchors = np.array([[5.0, 5.0, 15.0, 15.0]])
    gts = np.array([[0.0, 0.0, 20.0, 20.0]] * 2)
    predictions = np.array([[0.0, 0.0, 20.0, 20.0]])
    for labels, scores in (([0, 0], [[0.7]]), ([0, 1], [[0.1, 0.9]]), ([1, 0], [[0.1, 0.9]])):
        result = assign_tal(anchors, gts, labels, np.array(scores), predictions)
        np.testing.assert_array_equal(result.matched_gt, [0])


def test_zero_alignment_is_never_positive():  # §6.4, §2.5, §5.4
    none = assign_tal(ANCHORS, GT, [0], np.zeros((5, 1)), PREDICTIONS)
    assert none.num_positives == 0 and (none.matched_metric == 0).all()
    # alpha = 0: the scores are not read (0 ** 0 = 1); t = u ** 6, anchor 4 (u = 0) is out
    ignored = assign_tal(ANCHORS, GT, [0], np.zeros((5, 1)), PREDICTIONS, alpha=0.0, topk=3)
    np.testing.assert_array_equal(ignored.matched_gt, [0, 0, 0, -1, -1])
    np.testing.assert_allclose(ignored.matched_metric[:3], (IOUS[:3] / 0.9) ** 6 * 0.9, rtol=1e-14)
    # the score of another class does not count
    other = assign_tal(ANCHORS, GT, [1], np.hstack([SCORES, np.zeros((5, 1))]), PREDICTIONS)
    assert other.num_positives == 0


def test_ties_at_the_kth_place_go_to_the_lower_anchor_index():  # §2.5, §5.7
    anchors = np.array([[x, 0.0, x + 10, 10.0] for x in (40, 0, 20, 30, 10)])  # centres inside, any order
    gt = np.array([[0.0, 0.0, 60.0, 10.0]])
    predictions = np.repeat(gt, 5, axis=0)  # u = 1 for all
    for topk, expected in ((1, [0, -1, -1, -1, -1]), (3, [0, 0, 0, -1, -1]), (5, [0] * 5)):
        result = assign_tal(anchors, gt, [0], np.full((5, 1), 0.5), predictions, topk=topk)
        np.testing.assert_array_equal(result.matched_gt, expected)
        np.testing.assert_array_equal(result.matched_metric, np.where(np.array(expected) >= 0, 1.0, 0.0))
    # a strictly larger t beats a lower index
    scores = np.array([[0.5], [0.5], [0.5], [0.5], [0.6]])
    np.testing.assert_array_equal(assign_tal(anchors, gt, [0], scores, predictions, topk=2).matched_gt, [0, -1, -1, -1, 0])


# ---------------------------------------------------------------------------------------
# the bound (§3)


def test_targets_are_the_iou_for_alpha_0_beta_1():  # §3
    result = assign_tal(ANCHORS, GT, [0], SCORES, PREDICTIONS, alpha=0.0, beta=1.0)
    np.testing.assert_array_equal(result.matched_gt, [0, 0, 0, 0, -1])
    np.testing.assert_allclose(result.matched_metric, IOUS, rtol=0, atol=1e-15)


@settings(max_examples=40)
@given(st.lists(st.tuples(st.floats(1e-3, 1), st.floats(1e-3, 1)), min_size=1, max_size=13), st.sampled_from([1.0, 2.0, 6.0, 2.5]))
def test_targets_below_the_iou_for_alpha_0(pairs, beta):  # §3: alpha = 0, beta >= 1
    n = len(pairs)
    anchors = np.array([[i, 0.0, i + 1, 1.0] for i in range(n)])  # centres (i + .5, .5)
    gt = np.array([[0.0, 0.0, float(n), 1.0]])
    heights = np.array([p[1] for p in pairs])  # prediction [0, 0, n, h]: u = h
    predictions = np.stack([np.zeros(n), np.zeros(n), np.full(n, float(n)), heights], axis=1)
    result = assign_tal(anchors, gt, [0], np.array([[p[0]] for p in pairs]), predictions, alpha=0.0, beta=beta)
    assert result.num_positives == n
    np.testing.assert_allclose(box_iou(gt, predictions)[0], heights, rtol=1e-12)
    assert (result.matched_metric <= heights * (1 + 1e-12)).all()


def test_beta_0_ignores_the_ious():  # §2.3, §3.4
    far = np.tile([[500.0, 500.0, 600.0, 600.0]], (5, 1))  # u = 0 everywhere
    result = assign_tal(ANCHORS, GT, [0], SCORES, far, beta=0.0, topk=2)
    np.testing.assert_array_equal(result.matched_gt, [-1, -1, 0, 0, -1])  # scores 1.0 and 0.9
    np.testing.assert_array_equal(result.matched_metric, np.zeros(5))  # U_g = 0: positive, target 0
    assert assign_tal(ANCHORS, GT, [0], SCORES, far).num_positives == 0  # beta = 6: u = 0 -> t = 0


def test_power_is_binary_exponentiation():  # §2.3
    values = np.random.default_rng(0).uniform(0, 1, 1000)
    assert (_power(values, 1.0) == values).all()
    assert (_power(np.zeros(3), 0.0) == 1).all() and (_power(values, 0.0) == 1).all()
    np.testing.assert_array_equal(_power(values, 2.0), values * values)
    np.testing.assert_array_equal(_power(values, 6.0), (values * values) * ((values * values) * (values * values)))
    for exponent in (3.0, 6.0, 13.0, 64.0, 65.0, 0.5, 2.5):
        np.testing.assert_allclose(_power(values, exponent), values**exponent, rtol=1e-13, atol=1e-300)


# ---------------------------------------------------------------------------------------
# edge cases (§5)


def test_no_gt_and_no_anchor():  # §5.1, §5.2
    none = assign_tal(ANCHORS, np.zeros((0, 4)), [], SCORES, PREDICTIONS)
    np.testing.assert_array_equal(none.matched_gt, [BACKGROUND] * 5)
    np.testing.assert_array_equal(none.matched_metric, np.zeros(5))
    assert none.gt_threshold.shape == (0,) and none.candidate_index.shape == (0, 0)
    assert none.matched_gt.dtype == np.int64
    empty = assign_tal(np.zeros((0, 4)), GT, [0], np.zeros((0, 3)), np.zeros((0, 4)))
    assert empty.matched_gt.shape == (0,) and empty.matched_metric.shape == (0,)
    assert empty.candidate_index.shape == (1, 0) and np.isnan(empty.gt_threshold).all()


def test_zero_area_gt_has_no_positive():  # §5.3
    anchors = np.array([[x, y, x + 8, y + 8] for y in range(0, 32, 8) for x in range(0, 32, 8)], dtype=float)
    for gt in ([[5.0, 5.0, 5.0, 25.0]], [[4.0, 12.0, 28.0, 12.0]]):
        result = assign_tal(anchors, gt, [0], np.ones((16, 1)), anchors)
        assert result.num_positives == 0


def test_non_finite_predictions_have_zero_iou():  # §2.2, §5.5
    predictions = PREDICTIONS.copy()
    predictions[0] = [np.nan, 0, np.inf, 5]
    predictions[1] = [-np.inf, 0, np.inf, 100]
    result = assign_tal(ANCHORS, GT, [0], SCORES, predictions)
    np.testing.assert_array_equal(result.matched_gt, [-1, -1, 0, 0, -1])
    np.testing.assert_allclose(result.matched_metric[2:4], [0.6, 0.0140625 / 0.046656 * 0.6], rtol=1e-14)


def test_inside_is_strict_with_the_margin():  # §2.4
    anchors = np.array([[0.0, 0.0, 0.02, 20.0], [0.0, 0.0, 0.0201, 20.0]])  # centre x = .01, .01005
    gt = np.array([[0.0, 0.0, 20.0, 20.0]])
    inside = anchors_inside(gt, anchors, ATSS_INSIDE_EPS)
    np.testing.assert_array_equal(inside, [[False, True]])
    np.testing.assert_array_equal(inside, points_inside_boxes(box_centers(anchors), gt, ATSS_INSIDE_EPS))
    result = assign_tal(anchors, gt, [0], np.ones((2, 1)), np.repeat(gt, 2, axis=0))
    np.testing.assert_array_equal(result.matched_gt, [-1, 0])
    np.testing.assert_array_equal(assign_tal(anchors, gt, [0], np.ones((2, 1)), np.repeat(gt, 2, axis=0), inside_eps=0.0).matched_gt, [0, 0])


def test_points_as_zero_size_boxes():  # §1
    points = np.array([[10.0, 50.0], [20.0, 50.0], [30.0, 50.0], [40.0, 50.0], [50.0, 50.0]])
    as_boxes = np.hstack([points, points])
    by_points = assign_tal(as_boxes, GT, [0], SCORES, PREDICTIONS)
    by_anchors = assign_tal(ANCHORS, GT, [0], SCORES, PREDICTIONS)  # the same centres
    np.testing.assert_array_equal(by_points.matched_gt, by_anchors.matched_gt)
    np.testing.assert_array_equal(by_points.matched_metric, by_anchors.matched_metric)


# ---------------------------------------------------------------------------------------
# invariants (§7)

SCENES = anchor_scenes(max_side=384, max_boxes=10)


@st.composite
def score_arrays(draw, num_anchors, num_classes):
    """(A, K) probabilities from trained-looking to degenerate (ties: "binary", "constant",
    "zero")."""
    quality = draw(st.sampled_from(["uniform", "init", "peaked", "binary", "constant", "zero"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (num_anchors, num_classes)
    if quality == "uniform":
        return rng.uniform(0, 1, shape)
    if quality == "init":  # the focal-loss prior: about 0.01
        return rng.uniform(0.005, 0.02, shape)
    if quality == "peaked":
        return rng.beta(0.3, 0.3, shape)
    if quality == "binary":
        return rng.integers(0, 2, shape).astype(float)
    if quality == "constant":
        return np.full(shape, 0.5)
    return np.zeros(shape)


@st.composite
def tal_scenes(draw, max_side=384, max_boxes=10, min_boxes=1):
    """A scene with labels, scores and decoded predictions (dict). Predictions are decoded
    deltas, or copies of the GT boxes ("gt_copies": every anchor predicts one GT exactly, so
    equal alignments at the k-th place are common)."""
    scene = draw(anchor_scenes(max_side=max_side, max_boxes=max_boxes, min_boxes=min_boxes))
    num_classes = draw(st.integers(1, 4))
    anchors, gts = scene["anchors"], scene["gt_boxes"]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = rng.integers(0, num_classes, len(gts))
    if len(gts) and draw(st.sampled_from(["deltas", "deltas", "gt_copies"])) == "gt_copies":
        inside = points_inside_boxes(box_centers(anchors), gts, 0.0)  # a GT containing the centre, else any
        predictions = gts[np.where(inside.any(axis=0), inside.argmax(axis=0), rng.integers(0, len(gts), len(anchors)))]
    else:
        predictions = _decode(anchors, draw(pred_deltas(len(anchors))))
    return dict(scene, gt_labels=labels, pred_scores=draw(score_arrays(len(anchors), num_classes)), pred_boxes=predictions)


def _args(scene):
    return scene["anchors"], scene["gt_boxes"], scene["gt_labels"], scene["pred_scores"], scene["pred_boxes"]


OPTIONS = st.sampled_from([{}, {"topk": 1}, {"topk": 3}, {"topk": 40}, {"alpha": 0.5, "beta": 2.5}, {"alpha": 0.0, "beta": 1.0}, {"beta": 0.0}])


def _steps(scene, topk=TAL_TOPK, alpha=TAL_ALPHA, beta=TAL_BETA, inside_eps=ATSS_INSIDE_EPS):
    """The §2 quantities, with s, u, inside checked against independent formulas."""
    anchors, gts, labels, scores, predictions = _args(scene)
    s = class_scores(scores, labels)
    u = prediction_ious(gts, predictions)
    finite = np.isfinite(predictions).all(axis=1)
    np.testing.assert_array_equal(s, scores[:, labels].T)
    expected_u = np.zeros_like(u)
    expected_u[:, finite] = box_iou(gts, predictions[finite])
    np.testing.assert_array_equal(u, expected_u)
    t = alignment_metrics(s, u, alpha, beta)
    np.testing.assert_allclose(t, s**alpha * u**beta, rtol=1e-13, atol=1e-300)
    inside = anchors_inside(gts, anchors, inside_eps)
    np.testing.assert_array_equal(inside, points_inside_boxes(box_centers(anchors), gts, inside_eps))
    candidates = np.zeros_like(inside)
    for g in range(len(gts)):  # independent of select_topk: a plain sort on (-t, index)
        ranked = sorted((-t[g, a], a) for a in range(len(anchors)) if inside[g, a] and t[g, a] > 0)
        candidates[g, [a for _, a in ranked[:topk]]] = True
    np.testing.assert_array_equal(candidates, select_topk(t, inside & (t > 0), topk))
    return s, u, t, inside, candidates


@settings(max_examples=60)
@given(tal_scenes(min_boxes=0), OPTIONS)
def test_invariants(scene, options):  # §7.1-§7.5, §3
    gts = scene["gt_boxes"]
    result = assign_tal(*_args(scene), **options)
    assert not np.isnan(result.matched_metric).any()
    assert np.isnan(result.gt_threshold).all() and result.candidate_index.shape == (len(gts), 0)
    if len(gts) == 0:
        assert (result.matched_gt == BACKGROUND).all() and (result.matched_metric == 0).all()
        return
    topk = options.get("topk", TAL_TOPK)
    _, u, t, inside, candidates = _steps(scene, **options)
    matched = result.matched_gt
    assert ((matched >= -1) & (matched < len(gts))).all()
    positive = np.flatnonzero(matched >= 0)
    gt = matched[positive]
    assert (np.bincount(gt, minlength=len(gts)) <= topk).all()  # §7.1
    assert inside[gt, positive].all() and (t[gt, positive] > 0).all()  # §7.2
    assert candidates[gt, positive].all()  # §7.3
    np.testing.assert_array_equal(matched >= 0, candidates.any(axis=0))  # every candidate is positive
    for a, g in zip(positive, gt):  # §7.4: highest u, then the lower GT index
        claims = np.flatnonzero(candidates[:, a])
        assert u[g, a] == u[claims, a].max()
        assert g == claims[u[claims, a] == u[g, a]].min()
    assert (result.matched_metric[matched < 0] == 0).all()
    targets = iou_targets(np.where(np.isfinite(scene["pred_boxes"]), scene["pred_boxes"], 0.0), matched, gts)
    for g in np.unique(gt):  # §3, §7.5
        mine = positive[gt == g]
        t_max, u_max = t[g, mine].max(), u[g, mine].max()
        assert u_max == targets[mine].max()
        metric = result.matched_metric[mine]
        np.testing.assert_array_equal(metric, t[g, mine] / t_max * u_max)
        assert (metric >= 0).all() and (metric <= u_max).all() and u_max <= 1
        assert metric.max() == u_max
        order = np.argsort(t[g, mine], kind="stable")
        assert (np.diff(metric[order]) >= 0).all()  # §3.3: ordered as t


@settings(max_examples=40)
@given(tal_scenes(max_boxes=8), st.randoms(use_true_random=False))
def test_permuting_gts_permutes_the_assignment(scene, random):  # §7.6
    gts = scene["gt_boxes"]
    permutation = np.array(random.sample(range(len(gts)), len(gts)), dtype=np.int64)
    result = assign_tal(*_args(scene))
    permuted = assign_tal(scene["anchors"], gts[permutation], scene["gt_labels"][permutation], scene["pred_scores"], scene["pred_boxes"])
    np.testing.assert_array_equal(result.matched_gt >= 0, permuted.matched_gt >= 0)  # the positive anchors
    if len(gts) == 0:
        return
    _, u, _, _, candidates = _steps(scene)
    back = np.where(permuted.matched_gt >= 0, permutation[np.maximum(permuted.matched_gt, 0)], BACKGROUND)
    for a in np.flatnonzero(result.matched_gt >= 0):  # without a tie in u, the same GT
        claims = np.flatnonzero(candidates[:, a])
        if (u[claims, a] == u[claims, a].max()).sum() == 1:
            assert back[a] == result.matched_gt[a]
    for g in range(len(gts)):  # a GT with the same positives has the same targets
        mine = result.matched_gt == g
        if (mine == (back == g)).all():
            np.testing.assert_array_equal(result.matched_metric[mine], permuted.matched_metric[mine])


@settings(max_examples=20)
@given(SCENES)
def test_all_zero_scores_give_all_background(scene):  # §5.4, §7.7
    anchors, gts = scene["anchors"], scene["gt_boxes"]
    result = assign_tal(anchors, gts, np.zeros(len(gts), dtype=int), np.zeros((len(anchors), 2)), anchors)
    assert result.num_positives == 0 and (result.matched_metric == 0).all()


# ---------------------------------------------------------------------------------------
# bad input (§5.9)


@pytest.mark.parametrize(
    "change, name",
    [
        ({"anchors": np.array([[0, 0, 10, 10.0]] * 4 + [[0, 0, np.nan, 10]])}, "anchors"),
        ({"gt_boxes": [[0, 0, np.inf, 10]]}, "gt_boxes"),
        ({"gt_boxes": [[10, 0, 0, 10]]}, "gt_boxes: row 0"),
        ({"gt_labels": [1]}, r"gt_labels: row 0 is 1, expected a class in 0..0"),
        ({"gt_labels": [-1]}, "gt_labels: row 0"),
        ({"gt_labels": [0.0]}, r"gt_labels: expected a \(1,\) integer array"),
        ({"gt_labels": [True]}, r"gt_labels: expected a \(1,\) integer array"),
        ({"gt_labels": [0, 0]}, r"gt_labels: expected a \(1,\) integer array, got shape \(2,\)"),
        ({"pred_scores": np.full((5, 1), 1.5)}, r"pred_scores: row 0 class 0 is 1.5, expected a probability in \[0, 1\]"),
        ({"pred_scores": np.array([[0.5]] * 4 + [[np.nan]])}, "pred_scores: row 4 class 0 is nan"),
        ({"pred_scores": np.array([[0.5]] * 4 + [[-0.1]])}, "pred_scores: row 4"),
        ({"pred_scores": np.zeros((4, 1))}, "pred_scores: expected shape"),
        ({"pred_scores": np.zeros((5, 0))}, "pred_scores: expected shape"),
        ({"pred_scores": np.zeros(5)}, "pred_scores"),
        ({"pred_scores": np.array([[True]] * 5)}, "pred_scores"),
        ({"pred_boxes": np.zeros((4, 4))}, "pred_boxes"),
        ({"pred_boxes": np.array([[0, 0, 1, 1]] * 4 + [[0, 5, 1, 4]])}, "pred_boxes: row 4"),
        ({"topk": 0}, "topk"),
        ({"topk": 2.0}, "topk"),
        ({"alpha": -1.0}, "alpha"),
        ({"beta": float("inf")}, "beta"),
        ({"beta": True}, "beta"),
        ({"inside_eps": -0.1}, "inside_eps"),
    ],
)
def test_bad_input_names_the_argument(change, name):
    positional = {"anchors": ANCHORS, "gt_boxes": GT, "gt_labels": [0], "pred_scores": SCORES, "pred_boxes": PREDICTIONS}
    options = {}
    for key, value in change.items():
        (positional if key in positional else options)[key] = value
    with pytest.raises(ValueError, match=name):
        assign_tal(*positional.values(), **options)


def test_empty_labels_may_have_any_real_dtype():  # §1
    for labels in ([], np.zeros(0), np.zeros(0, dtype=np.int32)):
        assert assign_tal(ANCHORS, np.zeros((0, 4)), labels, SCORES, PREDICTIONS).num_positives == 0


def test_finite_inverted_prediction_is_an_error_non_finite_is_not():  # §1
    predictions = PREDICTIONS.copy()
    predictions[2] = [10, 0, 5, 40]
    with pytest.raises(ValueError, match=r"pred_boxes: row 2 has x2 < x1"):
        assign_tal(ANCHORS, GT, [0], SCORES, predictions)
    predictions[2] = [0, np.nan, 100, -5]
    assign_tal(ANCHORS, GT, [0], SCORES, predictions)
