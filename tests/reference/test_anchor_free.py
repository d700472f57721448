"""Anchor-free assigners, reference alone: spec examples and invariants (specs/anchor_free.md)."""
import inspect
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reference.anchors import multi_level_points
from reference.assign import anchor_free as RAF
from reference.assign.anchor_free import (
    ANCHOR_FREE_RULES,
    assign_all_inside,
    assign_anchor_free,
    assign_centerness,
    assign_fcos,
    assign_pseudo_iou,
    assign_scaled_box,
)
from reference.conventions import BACKGROUND, FCOS_REGRESS_RANGES
from reference.pseudo_iou import pseudo_iou
from tests.strategies import STRIDES, point_scenes

ASSIGNERS = {
    "all_inside": (assign_all_inside, {}),
    "pseudo_iou": (assign_pseudo_iou, {"threshold": 0.4}),
    "scaled_box": (assign_scaled_box, {"scale": 0.6}),
    "centerness": (assign_centerness, {"threshold": 0.35}),
    "fcos": (assign_fcos, {"center_sampling": True}),
}
ONE_LEVEL = {"strides": (8,), "regress_ranges": ((-1.0, 64.0),)}


def level_kwargs(scene):
    """strides and the matching slice of FCOS_REGRESS_RANGES for a scene's levels."""
    first = STRIDES.index(scene["strides"][0])
    return {"strides": scene["strides"], "regress_ranges": FCOS_REGRESS_RANGES[first : first + len(scene["strides"])]}


def run(assign, scene, **options):
    return assign(scene["points"], scene["num_points_per_level"], scene["gt_boxes"], **level_kwargs(scene), **options)


def grid_24x40():
    points, _, counts = multi_level_points((24, 40), (8,))
    return points, counts


def index_of(points, x, y):
    return int(np.flatnonzero((points[:, 0] == x) & (points[:, 1] == y))[0])


# --------------------------------------------------------------------------------------
# an independent oracle: dense (G, A) matrices, argmin for the min-area rule


def oracle_ltrb(points, boxes):
    """(G, A, 4) distances, broadcast rather than looped."""
    x, y = points[None, :, 0], points[None, :, 1]
    return np.stack([x - boxes[:, 0:1], y - boxes[:, 1:2], boxes[:, 2:3] - x, boxes[:, 3:4] - y], axis=-1)


def oracle_candidates(scene, center_radius=None):
    kwargs = level_kwargs(scene)
    counts = scene["num_points_per_level"]
    lo = np.repeat([r[0] for r in kwargs["regress_ranges"]], counts)
    hi = np.repeat([r[1] for r in kwargs["regress_ranges"]], counts)
    ltrb = oracle_ltrb(scene["points"], scene["gt_boxes"])
    largest = ltrb.max(axis=-1)
    candidates = (ltrb.min(axis=-1) > 0) & (largest >= lo) & (largest <= hi)
    if center_radius is not None:
        limit = center_radius * scene["point_strides"]
        candidates &= np.abs(ltrb[..., 0] - ltrb[..., 2]) / 2 < limit
        candidates &= np.abs(ltrb[..., 1] - ltrb[..., 3]) / 2 < limit
    return candidates


def oracle_min_area(candidates, boxes):
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if len(boxes) == 0:
        return np.full(candidates.shape[1], BACKGROUND)
    key = np.where(candidates, areas[:, None], np.inf)
    return np.where(candidates.any(axis=0), np.argmin(key, axis=0), BACKGROUND)  # argmin: first on ties


# --------------------------------------------------------------------------------------
# worked examples (specs/anchor_free.md §9)


def test_example_all_inside_takes_every_point():
    points, counts = grid_24x40()
    result = assign_all_inside(points, counts, [[0, 0, 40, 24]], **ONE_LEVEL)
    np.testing.assert_array_equal(result.matched_gt, np.zeros(15, dtype=np.int64))
    assert result.matched_gt.dtype == np.int64
    expected = np.array([[1 / 4, 4 / 11, 1 / 2, 4 / 11, 1 / 4], [3 / 7, 2 / 3, 1, 2 / 3, 3 / 7], [1 / 4, 4 / 11, 1 / 2, 4 / 11, 1 / 4]])
    np.testing.assert_allclose(result.matched_metric.reshape(3, 5), expected, rtol=1e-14)
    assert np.isnan(result.gt_threshold).all() and result.gt_threshold.shape == (1,)
    assert result.candidate_index.shape == (1, 0) and result.candidate_index.dtype == np.int64


def positives(result, points):
    return {(float(x), float(y)) for x, y in points[result.matched_gt >= 0]}


MIDDLE_ROW = {(x, 12.0) for x in (4.0, 12.0, 20.0, 28.0, 36.0)}
BLOCK_3X3 = {(x, y) for x in (12.0, 20.0, 28.0) for y in (4.0, 12.0, 20.0)}


@pytest.mark.parametrize(
    "assign, options, expected",
    [
        (assign_pseudo_iou, {"threshold": 0.4}, MIDDLE_ROW | {(20.0, 4.0), (20.0, 20.0)}),
        (assign_pseudo_iou, {"threshold": 0.5}, {(12.0, 12.0), (20.0, 12.0), (28.0, 12.0)}),
        (assign_pseudo_iou, {"threshold": 0.5, "inclusive": True}, {(12.0, 12.0), (20.0, 12.0), (28.0, 12.0), (20.0, 4.0), (20.0, 20.0)}),
        (assign_pseudo_iou, {"threshold": 3 / 7}, {(12.0, 12.0), (20.0, 12.0), (28.0, 12.0), (20.0, 4.0), (20.0, 20.0)}),
        (assign_pseudo_iou, {"threshold": 3 / 7, "inclusive": True}, MIDDLE_ROW | {(20.0, 4.0), (20.0, 20.0)}),
        (assign_centerness, {"threshold": 0.35}, {(12.0, 12.0), (20.0, 12.0), (28.0, 12.0), (20.0, 4.0), (20.0, 20.0)}),
        (assign_centerness, {"threshold": 1 / 3}, {(12.0, 12.0), (20.0, 12.0), (28.0, 12.0), (20.0, 4.0), (20.0, 20.0)}),
        (assign_scaled_box, {"scale": 0.6}, {(12.0, 12.0), (20.0, 12.0), (28.0, 12.0)}),
        (assign_scaled_box, {"scale": 0.7}, BLOCK_3X3),
        (assign_scaled_box, {"scale": 0.4}, {(20.0, 12.0)}),  # |dx| = 8 = s w / 2 is out (strict)
        (assign_fcos, {}, BLOCK_3X3),
        (assign_fcos, {"center_sampling": False}, MIDDLE_ROW | BLOCK_3X3 | {(x, y) for x in (4.0, 36.0) for y in (4.0, 20.0)}),
    ],
)
def test_example_rules_on_one_gt(assign, options, expected):
    points, counts = grid_24x40()
    result = assign(points, counts, [[0, 0, 40, 24]], **ONE_LEVEL, **options)
    assert positives(result, points) == expected
    assert set(result.matched_gt.tolist()) <= {0, BACKGROUND}
    np.testing.assert_array_equal(result.matched_metric[result.matched_gt < 0], 0.0)


def test_example_gt_threshold_is_the_rule_parameter():
    points, counts = grid_24x40()
    boxes = [[0, 0, 40, 24], [0, 0, 0, 5]]
    np.testing.assert_array_equal(assign_pseudo_iou(points, counts, boxes, **ONE_LEVEL, threshold=0.3).gt_threshold, [0.3, 0.3])
    np.testing.assert_array_equal(assign_centerness(points, counts, boxes, **ONE_LEVEL, threshold=0.2).gt_threshold, [0.2, 0.2])
    np.testing.assert_array_equal(assign_scaled_box(points, counts, boxes, **ONE_LEVEL, scale=0.5).gt_threshold, [0.5, 0.5])
    assert np.isnan(assign_fcos(points, counts, boxes, **ONE_LEVEL).gt_threshold).all()


def test_example_failed_point_is_not_retried_against_another_gt():
    points, counts = grid_24x40()
    boxes = [[0, 0, 40, 24], [18, 1, 40, 9]]
    baseline = assign_all_inside(points, counts, boxes, **ONE_LEVEL)
    result = assign_pseudo_iou(points, counts, boxes, **ONE_LEVEL, threshold=0.4)
    p20, p28, p36 = index_of(points, 20, 4), index_of(points, 28, 4), index_of(points, 36, 4)
    assert baseline.matched_gt[p20] == 1  # smaller GT wins
    np.testing.assert_allclose(baseline.matched_metric[p20], 91 / 261, rtol=1e-14)
    assert result.matched_gt[p20] == BACKGROUND  # 0.349 < 0.4, and no fall back to GT0 (0.5)
    assert result.matched_gt[p28] == 1 and result.matched_gt[p36] == 1
    np.testing.assert_allclose(result.matched_metric[p28], 147 / 205, rtol=1e-14)
    np.testing.assert_allclose(result.matched_metric[p36], 105 / 247, rtol=1e-14)


def test_example_min_area_and_index_ties():
    points, counts = multi_level_points((16, 24), (8,))[0], multi_level_points((16, 24), (8,))[2]
    p = index_of(points, 12, 4)
    two = assign_all_inside(points, counts, [[0, 0, 16, 16], [8, 0, 24, 16]], **ONE_LEVEL)
    assert two.matched_gt[p] == 0  # equal areas: lower index
    swapped = assign_all_inside(points, counts, [[8, 0, 24, 16], [0, 0, 16, 16]], **ONE_LEVEL)
    assert swapped.matched_gt[p] == 0
    three = assign_all_inside(points, counts, [[0, 0, 16, 16], [8, 0, 24, 16], [8, 0, 16, 8]], **ONE_LEVEL)
    assert three.matched_gt[p] == 2  # smaller area wins
    duplicated = assign_all_inside(points, counts, [[0, 0, 16, 16], [0, 0, 16, 16]], **ONE_LEVEL)
    assert not (duplicated.matched_gt == 1).any()


def test_example_regress_range_bounds_are_inclusive():
    points, counts = multi_level_points((8, 72), (8,))[0], multi_level_points((8, 72), (8,))[2]
    result = assign_all_inside(points, counts, [[0, 0, 68, 8]], **ONE_LEVEL)
    # (4, 4): (l, t, r, b) = (4, 4, 64, 4), max = 64 = hi
    assert result.matched_gt[index_of(points, 4, 4)] == 0
    assert result.num_positives == 8  # x in {4, ..., 60}
    strict_hi = assign_all_inside(points, counts, [[0, 0, 68, 8]], strides=(8,), regress_ranges=((-1.0, 63.999),))
    assert strict_hi.matched_gt[index_of(points, 4, 4)] == BACKGROUND
    # lower bound inclusive too: m = 64 on a level whose range starts at 64
    low = assign_all_inside(points, counts, [[0, 0, 68, 8]], strides=(8,), regress_ranges=((64.0, 128.0),))
    assert low.matched_gt[index_of(points, 4, 4)] == 0 and low.num_positives == 1


def test_example_two_levels():
    points, strides, counts = multi_level_points((160, 160), (8, 16))
    result = assign_all_inside(points, counts, [[0, 0, 160, 160]], strides=(8, 16), regress_ranges=FCOS_REGRESS_RANGES[:2])
    assert not (result.matched_gt[: counts[0]] >= 0).any()
    expected = {(float(x), float(y)) for x in (40, 56, 72, 88, 104, 120) for y in (40, 56, 72, 88, 104, 120)}
    assert positives(result, points) == expected
    assert np.all(strides[result.matched_gt >= 0] == 16)


# --------------------------------------------------------------------------------------
# empty and degenerate inputs (specs/anchor_free.md §6)


@pytest.mark.parametrize("name", ASSIGNERS)
def test_no_gts(name):
    assign, options = ASSIGNERS[name]
    points, counts = grid_24x40()
    result = assign(points, counts, np.zeros((0, 4)), **ONE_LEVEL, **options)
    np.testing.assert_array_equal(result.matched_gt, np.full(15, BACKGROUND))
    np.testing.assert_array_equal(result.matched_metric, np.zeros(15))
    assert result.gt_threshold.shape == (0,) and result.candidate_index.shape == (0, 0)


@pytest.mark.parametrize("name", ASSIGNERS)
def test_no_points(name):
    assign, options = ASSIGNERS[name]
    result = assign(np.zeros((0, 2)), [0, 0], [[0, 0, 10, 10], [1, 1, 2, 2]], strides=(8, 16), regress_ranges=FCOS_REGRESS_RANGES[:2], **options)
    assert result.matched_gt.shape == (0,) and result.matched_gt.dtype == np.int64
    assert result.matched_metric.shape == (0,)
    assert result.gt_threshold.shape == (2,) and result.candidate_index.shape == (2, 0)
    empty = assign(np.zeros((0, 2)), [], np.zeros((0, 4)), strides=(), regress_ranges=(), **options)
    assert empty.matched_gt.shape == (0,) and empty.gt_threshold.shape == (0,)


@pytest.mark.parametrize("name", ASSIGNERS)
def test_zero_area_gts_get_nothing_and_take_nothing(name):
    assign, options = ASSIGNERS[name]
    points, counts = grid_24x40()
    # zero-area boxes through grid points, listed before the real GT
    boxes = [[20, 0, 20, 24], [0, 12, 40, 12], [20, 12, 20, 12], [0, 0, 40, 24]]
    result = assign(points, counts, boxes, **ONE_LEVEL, **options)
    alone = assign(points, counts, boxes[3:], **ONE_LEVEL, **options)
    np.testing.assert_array_equal(result.matched_gt, np.where(alone.matched_gt >= 0, 3, BACKGROUND))
    assert np.isfinite(result.matched_metric).all()


@pytest.mark.parametrize("name", ASSIGNERS)
def test_level_with_no_points(name):
    assign, options = ASSIGNERS[name]
    points, counts = grid_24x40()
    one = assign(points, counts, [[0, 0, 40, 24]], **ONE_LEVEL, **options)
    middle_empty = assign(points, [0, 15, 0], [[0, 0, 40, 24]], strides=(4, 8, 16), regress_ranges=((-1, 0), (-1, 64), (64, 128)), **options)
    np.testing.assert_array_equal(middle_empty.matched_gt, one.matched_gt)
    np.testing.assert_array_equal(middle_empty.matched_metric, one.matched_metric)


def test_gt_containing_no_point():
    points, counts = grid_24x40()
    result = assign_pseudo_iou(points, counts, [[5, 5, 11, 11]], **ONE_LEVEL)
    assert result.num_positives == 0


def test_border_point_is_not_inside():
    points, counts = grid_24x40()
    result = assign_all_inside(points, counts, [[4, 4, 20, 20]], **ONE_LEVEL)
    # points on x = 4, y = 4, x = 20, y = 20 are on the border; only (12, 12) is strictly inside
    assert positives(result, points) == {(12.0, 12.0)}


POINTS, COUNTS = grid_24x40()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: assign_all_inside([[np.nan, 1.0]], [1], [[0, 0, 1, 1]], **ONE_LEVEL), "points"),
        (lambda: assign_all_inside(POINTS, COUNTS, [[0, 0, 1, 1], [5, 0, 1, 1]], **ONE_LEVEL), "gt_boxes: row 1"),
        (lambda: assign_all_inside(POINTS, COUNTS, [[0, 0, 1]], **ONE_LEVEL), "gt_boxes"),
        (lambda: assign_all_inside(POINTS, [14], [[0, 0, 1, 1]], **ONE_LEVEL), "num_points_per_level"),
        (lambda: assign_all_inside(POINTS, COUNTS, [[0, 0, 1, 1]]), "strides"),
        (lambda: assign_all_inside(POINTS, COUNTS, [[0, 0, 1, 1]], strides=(8,)), "regress_ranges"),
        (lambda: assign_all_inside(POINTS, COUNTS, [[0, 0, 1, 1]], strides=(0,), regress_ranges=((-1, 64),)), "strides"),
        (lambda: assign_all_inside(POINTS, COUNTS, [[0, 0, 1, 1]], strides=(8,), regress_ranges=((64, -1),)), "regress_ranges"),
        (lambda: assign_all_inside(POINTS, COUNTS, [[0, 0, 1, 1]], strides=(8,), regress_ranges=((np.nan, 64),)), "regress_ranges"),
        (lambda: assign_pseudo_iou(POINTS, COUNTS, [[0, 0, 1, 1]], **ONE_LEVEL, threshold=np.nan), "threshold"),
        (lambda: assign_centerness(POINTS, COUNTS, [[0, 0, 1, 1]], **ONE_LEVEL, threshold=np.inf), "threshold"),
        (lambda: assign_scaled_box(POINTS, COUNTS, [[0, 0, 1, 1]], **ONE_LEVEL, scale=-0.1), "scale"),
        (lambda: assign_fcos(POINTS, COUNTS, [[0, 0, 1, 1]], **ONE_LEVEL, center_radius=0.0), "center_radius"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------
# the rule table: one function runs every rule; the public functions are calls of it


def test_rule_names_are_the_table_and_the_public_functions():
    assert ANCHOR_FREE_RULES == ("all_inside", "pseudo_iou", "scaled_box", "centerness", "fcos")
    assert ANCHOR_FREE_RULES == tuple(ASSIGNERS)
    for name in ANCHOR_FREE_RULES:
        assert callable(getattr(RAF, f"assign_{name}"))


@pytest.mark.parametrize("name", ANCHOR_FREE_RULES)
def test_rule_defaults_are_the_public_signature_defaults(name):
    parameters = inspect.signature(getattr(RAF, f"assign_{name}")).parameters
    options = {key: p.default for key, p in parameters.items() if key not in ("points", "num_points_per_level", "gt_boxes", "strides", "regress_ranges")}
    assert options == RAF._RULES[name].defaults


@pytest.mark.parametrize("name", ANCHOR_FREE_RULES)
def test_generic_function_equals_the_rule_function(name):
    points, counts = grid_24x40()
    boxes = [[0, 0, 40, 24], [18, 1, 40, 9], [3, 3, 3, 9]]
    options = ASSIGNERS[name][1]
    expected = ASSIGNERS[name][0](points, counts, boxes, **ONE_LEVEL, **options)
    for result in (assign_anchor_free(name, points, counts, boxes, **ONE_LEVEL, **options), assign_anchor_free(name, points, counts, boxes, **ONE_LEVEL)):
        np.testing.assert_array_equal(result.matched_gt, expected.matched_gt)
        np.testing.assert_array_equal(result.matched_metric, expected.matched_metric)
        np.testing.assert_array_equal(result.gt_threshold, expected.gt_threshold)


def test_generic_function_bad_rule_or_option():
    with pytest.raises(ValueError, match="rule"):
        assign_anchor_free("nearest", POINTS, COUNTS, [[0, 0, 1, 1]], **ONE_LEVEL)
    with pytest.raises(ValueError, match="scale"):
        assign_anchor_free("pseudo_iou", POINTS, COUNTS, [[0, 0, 1, 1]], **ONE_LEVEL, scale=0.5)
    with pytest.raises(ValueError, match="threshold"):
        assign_anchor_free("pseudo_iou", POINTS, COUNTS, [[0, 0, 1, 1]], **ONE_LEVEL, threshold=True)


# --------------------------------------------------------------------------------------
# invariants on hypothesis scenes (specs/anchor_free.md §7)

SCENES = point_scenes(max_side=640, max_boxes=12)


@settings(max_examples=40)
@given(SCENES)
def test_all_inside_equals_dense_oracle(scene):
    result = run(assign_all_inside, scene)
    np.testing.assert_array_equal(result.matched_gt, oracle_min_area(oracle_candidates(scene), scene["gt_boxes"]))


@settings(max_examples=40)
@given(SCENES)
def test_fcos_equals_dense_oracle(scene):
    expected = oracle_min_area(oracle_candidates(scene, center_radius=1.5), scene["gt_boxes"])
    result = run(assign_fcos, scene, center_sampling=True, center_radius=1.5)
    np.testing.assert_array_equal(result.matched_gt, expected)
    no_sampling = run(assign_fcos, scene, center_sampling=False)
    np.testing.assert_array_equal(no_sampling.matched_gt, run(assign_all_inside, scene).matched_gt)


@settings(max_examples=40)
@given(SCENES, st.sampled_from(sorted(ASSIGNERS)))
def test_positives_inside_in_range_and_metric_is_pseudo_iou(scene, name):
    assign, options = ASSIGNERS[name]
    result = run(assign, scene, **options)
    pos = np.flatnonzero(result.matched_gt >= 0)
    boxes = scene["gt_boxes"][result.matched_gt[pos]]
    p = scene["points"][pos]
    ltrb = np.stack([p[:, 0] - boxes[:, 0], p[:, 1] - boxes[:, 1], boxes[:, 2] - p[:, 0], boxes[:, 3] - p[:, 1]], axis=1)
    assert np.all(ltrb.min(axis=1) > 0)
    ranges = level_kwargs(scene)["regress_ranges"]
    lo = np.repeat([r[0] for r in ranges], scene["num_points_per_level"])[pos]
    hi = np.repeat([r[1] for r in ranges], scene["num_points_per_level"])[pos]
    assert np.all((ltrb.max(axis=1) >= lo) & (ltrb.max(axis=1) <= hi))
    closed_form = np.array([pseudo_iou(p[i : i + 1], boxes[i : i + 1])[0, 0] for i in range(len(pos))])
    np.testing.assert_allclose(result.matched_metric[pos], closed_form.reshape(-1), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(result.matched_metric[result.matched_gt < 0], 0.0)
    assert np.all(result.matched_metric[pos] > 1 / 7 - 1e-12) and np.all(result.matched_metric <= 1.0)
    assert result.gt_threshold.shape == (len(scene["gt_boxes"]),)


def _filter_rule_holds(name, scene, baseline):
    """The rule evaluated independently (from points and GT centres) on all-inside's matches."""
    pos = baseline.matched_gt >= 0
    padded = np.concatenate([scene["gt_boxes"], [[0.0, 0.0, 1.0, 1.0]]])  # a dummy row for negatives
    boxes = padded[np.where(pos, baseline.matched_gt, len(scene["gt_boxes"]))]
    points = scene["points"]
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    dx = np.abs(points[:, 0] - (boxes[:, 0] + boxes[:, 2]) / 2)
    dy = np.abs(points[:, 1] - (boxes[:, 1] + boxes[:, 3]) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "pseudo_iou":
            a = (1 - dx / w) * (1 - dy / h)
            margin = a / (2 - a) - 0.4
        elif name == "scaled_box":
            margin = np.minimum(0.6 * w / 2 - dx, 0.6 * h / 2 - dy)
        else:  # centerness: min(l, r) / max(l, r) = (w/2 - dx) / (w/2 + dx)
            margin = np.sqrt((w / 2 - dx) / (w / 2 + dx) * (h / 2 - dy) / (h / 2 + dy)) - 0.35
    return pos & (margin > 0), pos & (np.abs(margin) > 1e-9)


@settings(max_examples=40)
@given(SCENES, st.sampled_from(["pseudo_iou", "scaled_box", "centerness"]))
def test_filter_keeps_exactly_the_matches_that_pass_without_retry(scene, name):
    assign, options = ASSIGNERS[name]
    baseline = run(assign_all_inside, scene)
    result = run(assign, scene, **options)
    passes, decided = _filter_rule_holds(name, scene, baseline)
    # positives are a subset of all-inside's, with the same GT
    pos = result.matched_gt >= 0
    np.testing.assert_array_equal(result.matched_gt[pos], baseline.matched_gt[pos])
    # and exactly the ones whose rule holds (away from rounding at the boundary)
    np.testing.assert_array_equal(pos[decided], passes[decided])


@settings(max_examples=30)
@given(SCENES, st.sampled_from([-1.0, 0.0, 0.1, 0.14]))
def test_pseudo_iou_threshold_below_one_seventh_equals_all_inside(scene, threshold):
    baseline = run(assign_all_inside, scene)
    for inclusive in (False, True):
        result = run(assign_pseudo_iou, scene, threshold=threshold, inclusive=inclusive)
        np.testing.assert_array_equal(result.matched_gt, baseline.matched_gt)
        np.testing.assert_array_equal(result.matched_metric, baseline.matched_metric)


@settings(max_examples=30)
@given(SCENES, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_pseudo_iou_monotone_in_threshold(scene, t1, t2):
    low, high = sorted((t1, t2))
    loose = run(assign_pseudo_iou, scene, threshold=low).matched_gt
    tight = run(assign_pseudo_iou, scene, threshold=high).matched_gt
    assert np.all(loose[tight >= 0] == tight[tight >= 0])
    assert (tight >= 0).sum() <= (loose >= 0).sum()


@settings(max_examples=30)
@given(SCENES, st.integers(0, 10**6))
def test_pseudo_iou_inclusive_and_strict_differ_exactly_at_equality(scene, pick):
    baseline = run(assign_all_inside, scene)
    values = baseline.matched_metric[baseline.matched_gt >= 0]
    assume(len(values) > 0)
    threshold = float(values[pick % len(values)])  # a value that some point has exactly
    strict = run(assign_pseudo_iou, scene, threshold=threshold, inclusive=False)
    inclusive = run(assign_pseudo_iou, scene, threshold=threshold, inclusive=True)
    at_threshold = (baseline.matched_gt >= 0) & (baseline.matched_metric == threshold)
    assert at_threshold.any()
    differ = strict.matched_gt != inclusive.matched_gt
    np.testing.assert_array_equal(differ, at_threshold)
    assert np.all(inclusive.matched_gt[at_threshold] >= 0) and np.all(strict.matched_gt[at_threshold] == BACKGROUND)


@settings(max_examples=30)
@given(SCENES, st.floats(0.0, 1.5), st.floats(0.0, 1.5))
def test_scaled_box_monotone_and_large_scale_equals_all_inside(scene, s1, s2):
    small, large = sorted((s1, s2))
    narrow = run(assign_scaled_box, scene, scale=small).matched_gt
    wide = run(assign_scaled_box, scene, scale=large).matched_gt
    assert np.all(wide[narrow >= 0] == narrow[narrow >= 0])
    assert (narrow >= 0).sum() <= (wide >= 0).sum()
    np.testing.assert_array_equal(run(assign_scaled_box, scene, scale=2.0).matched_gt, run(assign_all_inside, scene).matched_gt)


@settings(max_examples=30)
@given(SCENES, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_centerness_monotone_and_zero_threshold_equals_all_inside(scene, c1, c2):
    low, high = sorted((c1, c2))
    loose = run(assign_centerness, scene, threshold=low).matched_gt
    tight = run(assign_centerness, scene, threshold=high).matched_gt
    assert np.all(loose[tight >= 0] == tight[tight >= 0])
    assert (tight >= 0).sum() <= (loose >= 0).sum()
    np.testing.assert_array_equal(run(assign_centerness, scene, threshold=0.0).matched_gt, run(assign_all_inside, scene).matched_gt)


@settings(max_examples=30)
@given(SCENES, st.floats(0.5, 3.0))
def test_fcos_center_sampling_positives_near_centre(scene, radius):
    result = run(assign_fcos, scene, center_radius=radius)
    pos = np.flatnonzero(result.matched_gt >= 0)
    boxes = scene["gt_boxes"][result.matched_gt[pos]]
    p = scene["points"][pos]
    limit = radius * scene["point_strides"][pos] + 1e-9
    assert np.all(np.abs(p[:, 0] - (boxes[:, 0] + boxes[:, 2]) / 2) < limit)
    assert np.all(np.abs(p[:, 1] - (boxes[:, 1] + boxes[:, 3]) / 2) < limit)
    # a subset of the points that some GT holds as an (inside, in range) candidate
    assert np.all(oracle_candidates(scene)[result.matched_gt[pos], pos])


def _distinct_areas(boxes):
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    _, first = np.unique(areas, return_index=True)
    return boxes[np.sort(first)]


@settings(max_examples=30)
@given(SCENES, st.sampled_from(sorted(ASSIGNERS)), st.randoms(use_true_random=False))
def test_permuting_gts_permutes_the_assignment(scene, name, rng):
    assign, options = ASSIGNERS[name]
    boxes = _distinct_areas(scene["gt_boxes"])
    order = list(range(len(boxes)))
    rng.shuffle(order)
    order = np.array(order, dtype=np.int64)
    base = assign(scene["points"], scene["num_points_per_level"], boxes, **level_kwargs(scene), **options)
    permuted = assign(scene["points"], scene["num_points_per_level"], boxes[order], **level_kwargs(scene), **options)
    # permuted GT j is original GT order[j]
    lookup = np.append(order, BACKGROUND)  # matched_gt = -1 reads the last entry
    mapped = lookup[permuted.matched_gt]
    np.testing.assert_array_equal(mapped, base.matched_gt)
    np.testing.assert_array_equal(permuted.matched_metric, base.matched_metric)


@settings(max_examples=20)
@given(SCENES, st.sampled_from(sorted(ASSIGNERS)), st.integers(1, 20), st.sampled_from([1, 2, 8]))
def test_translating_by_a_stride_multiple_on_one_level(scene, name, shift, level_step):
    """Shifting GTs by whole strides matches the shifted points (one level, range ignoring the image edge)."""
    assign, options = ASSIGNERS[name]
    stride = scene["strides"][0]
    count = scene["num_points_per_level"][0]
    points = scene["points"][:count]
    kwargs = {"strides": (stride,), "regress_ranges": ((-1.0, math.inf),)}
    delta = shift * stride * level_step
    # keep clear of sides within rounding of a point: the shifted differences must not flip sign
    distances = oracle_ltrb(points, scene["gt_boxes"])
    assume(np.all((distances == 0) | (np.abs(distances) > 1e-6)))
    base = assign(points, [count], scene["gt_boxes"], **kwargs, **options)
    moved = assign(points + delta, [count], scene["gt_boxes"] + delta, **kwargs, **options)
    np.testing.assert_array_equal(moved.matched_gt, base.matched_gt)
    np.testing.assert_allclose(moved.matched_metric, base.matched_metric, rtol=1e-9, atol=1e-12)
