"""reference/gfl.py against specs/gfl.md: worked examples by hand and hypothesis invariants."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.gfl import (
    DFL_LOSS_WEIGHT,
    DGQP_HIDDEN,
    DGQP_TOPK,
    REG_MAX,
    TARGET_EPS,
    decode_distribution,
    dgqp_quality,
    dgqp_statistics,
    distance_targets,
    distribution_focal_loss,
    integral,
    weighted_dfl,
)

LN2, LN3, LN5 = math.log(2), math.log(3), math.log(5)
BIG = 1000.0  # exp(-1000) is exactly 0 in float64: a logit gap of BIG gives an exact one-hot


def side_logits(*sides):
    """Four sides' logits (each a list of R + 1 values) -> one (1, 4 * (R + 1)) row."""
    return np.concatenate([np.asarray(s, dtype=np.float64) for s in sides])[None, :]


def two_point_logits(targets, reg_max):
    """(A, 4) targets -> logits whose softmax is exactly the DFL-optimal two-point distribution."""
    targets = np.asarray(targets, dtype=np.float64)
    left = np.minimum(np.floor(targets), reg_max - 1).astype(int)
    prob = np.zeros(targets.shape + (reg_max + 1,))
    np.put_along_axis(prob, left[..., None], ((left + 1) - targets)[..., None], axis=-1)
    np.put_along_axis(prob, left[..., None] + 1, (targets - left)[..., None], axis=-1)
    with np.errstate(divide="ignore"):
        logits = np.where(prob > 0, np.log(np.where(prob > 0, prob, 1.0)), -BIG)
    return logits.reshape(len(targets), -1)


def binary_entropy(f):
    f = np.asarray(f, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(f > 0, f * np.log(np.where(f > 0, f, 1.0)), 0.0)
        terms += np.where(f < 1, (1 - f) * np.log(np.where(f < 1, 1 - f, 1.0)), 0.0)
    return -terms


@st.composite
def logits_arrays(draw, min_rows=0, max_rows=12):
    """(reg_max, logits (A, 4 * (reg_max + 1))): normal logits at several scales, with ties."""
    reg_max = draw(st.sampled_from([1, 2, 3, 7, 16]))
    rows = draw(st.integers(min_rows, max_rows))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.0, 0.1, 1.0, 5.0, 30.0]))
    logits = rng.normal(size=(rows, 4 * (reg_max + 1))) * scale
    if draw(st.booleans()):  # repeated values: ties in the top-k
        logits = np.round(logits)
    return reg_max, logits


@st.composite
def targets_for(draw, rows, reg_max):
    """(rows, 4) targets in [0, reg_max], including integers, 0 and reg_max itself."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    targets = rng.uniform(0, reg_max, size=(rows, 4))
    special = rng.integers(0, 4, size=(rows, 4))
    targets = np.where(special == 0, np.floor(targets), targets)
    targets = np.where(special == 1, reg_max * (rng.uniform(size=(rows, 4)) < 0.5), targets)
    return targets.astype(np.float64)


# ---------------------------------------------------------------------------------------
# worked examples (specs/gfl.md §2-§6)


def test_defaults():
    assert (REG_MAX, TARGET_EPS, DFL_LOSS_WEIGHT, DGQP_TOPK, DGQP_HIDDEN) == (16, 0.1, 0.25, 4, 64)


def test_integral_worked_examples():
    # R = 2: uniform -> 1; p = (1, 2, 3) / 6 -> (0 + 2 + 6) / 6 = 4/3; one-hot at 0 and at 2
    logits = side_logits([0, 0, 0], [0, LN2, LN3], [BIG, 0, 0], [0, 0, BIG])
    np.testing.assert_allclose(integral(logits, reg_max=2), [[1.0, 4 / 3, 0.0, 2.0]], rtol=1e-15, atol=0)
    # default reg_max = 16: equal logits give R / 2
    np.testing.assert_allclose(integral(np.zeros((3, 68))), np.full((3, 4), 8.0), rtol=1e-15)


def test_layout_is_side_major():
    # reg_max = 1: columns (l0, l1, t0, t1, r0, r1, b0, b1); a one-hot at bin 1 of side t only
    logits = np.array([[BIG, 0, 0, BIG, BIG, 0, BIG, 0]])
    np.testing.assert_array_equal(integral(logits, reg_max=1), [[0.0, 1.0, 0.0, 0.0]])


def test_decode_worked_example():
    # R = 2, uniform: every side is 1 stride; stride 8 around (100, 50) -> 8 px each way
    logits = np.zeros((2, 12))
    logits[1, 9:12] = [0, 0, BIG]  # second point: b is one-hot at 2, i.e. 2 strides = 32 px at stride 16
    boxes = decode_distribution([[100.0, 50.0], [10.0, 20.0]], [8.0, 16.0], logits, reg_max=2)
    np.testing.assert_allclose(boxes, [[92, 42, 108, 58], [-6, 4, 26, 52]], rtol=1e-15)


def test_distance_targets_worked_examples():
    points = [[100.0, 50.0], [100.0, 50.0], [100.0, 50.0]]
    boxes = [
        [84, 46, 300, 50],  # l = 2, t = 0.5, r = 25 -> 15.9, b = 0 (point on the bottom edge)
        [110, 60, 120, 70],  # point outside: l, t < 0 -> 0; r = b = 2.5
        [100, 50, 100, 50],  # zero-area GT at the point: all 0
    ]
    np.testing.assert_allclose(
        distance_targets(points, [8.0, 8.0, 8.0], boxes),
        [[2.0, 0.5, 15.9, 0.0], [0.0, 0.0, 2.5, 2.5], [0.0, 0.0, 0.0, 0.0]],
        rtol=1e-15,
    )
    # another margin, and reg_max
    np.testing.assert_allclose(distance_targets([[0.0, 0.0]], [1.0], [[-5, -5, 5, 5]], reg_max=4, eps=0.0), [[4.0] * 4])
    np.testing.assert_allclose(distance_targets([[0.0, 0.0]], [1.0], [[-5, -5, 5, 5]], reg_max=4, eps=0.5), [[3.5] * 4])


def test_dfl_worked_examples():
    # R = 2, p = (1, 3, 1) / 5 on every side
    logits = side_logits(*[[0, LN3, 0]] * 4)
    # y = 0.25: -(0.75 ln(1/5) + 0.25 ln(3/5)); y = 1 (bin edge): -ln(3/5); y = 2 = R: -ln(1/5); y = 1.5
    expected = [[LN5 - 0.25 * LN3, LN5 - LN3, LN5, LN5 - 0.5 * LN3]]
    np.testing.assert_allclose(distribution_focal_loss(logits, [[0.25, 1.0, 2.0, 1.5]], reg_max=2), expected, rtol=1e-14)
    # y = 0: -ln p_0; uniform: ln 3 for any target
    np.testing.assert_allclose(distribution_focal_loss(logits, [[0.0] * 4], reg_max=2), [[LN5] * 4], rtol=1e-14)
    np.testing.assert_allclose(distribution_focal_loss(np.zeros((1, 12)), [[0.0, 0.3, 1.7, 2.0]], reg_max=2), [[LN3] * 4], rtol=1e-14)


def test_dfl_at_reg_max_reads_no_extra_bin():
    # y = R puts all the weight on bin R; a huge logit elsewhere does not matter but bin R's does
    logits = np.zeros((1, 12))
    logits[0, 2] = 5.0  # bin R of side l
    expected = -(5.0 - math.log(math.exp(5.0) + 2.0))
    np.testing.assert_allclose(distribution_focal_loss(logits, [[2.0, 0.0, 0.0, 0.0]], reg_max=2)[0, 0], expected, rtol=1e-14)


def test_weighted_dfl_worked_example():
    losses = [[1.0, 2.0, 3.0, 4.0], [4.0, 4.0, 4.0, 4.0]]
    assert weighted_dfl(losses, [0.5, 1.0]) == pytest.approx(0.25 * (0.5 * 10 + 16) / 4, rel=1e-15)
    assert weighted_dfl(losses, [0.5, 1.0], loss_weight=1.0) == pytest.approx(21 / 4, rel=1e-15)
    assert weighted_dfl(np.zeros((0, 4)), np.zeros(0)) == 0.0


def test_dgqp_statistics_worked_example():
    # R = 4, p = (1, 4, 2, 3, 10) / 20 on side l: top-2 (0.5, 0.2), mean 0.35; uniform elsewhere
    logits = side_logits(np.log([1.0, 4, 2, 3, 10]), [0] * 5, [0] * 5, [0] * 5)
    stats = dgqp_statistics(logits, reg_max=4, topk=2)
    np.testing.assert_allclose(stats, [[0.5, 0.2, 0.35] + [0.2, 0.2, 0.2] * 3], rtol=1e-14)
    np.testing.assert_allclose(dgqp_statistics(logits, reg_max=4, topk=2, add_mean=False), [[0.5, 0.2] + [0.2, 0.2] * 3], rtol=1e-14)
    assert dgqp_statistics(np.zeros((3, 68))).shape == (3, 20)


def test_dgqp_quality_worked_example():
    # hidden = relu(s0 - s1): (1, 0); output sigmoid(ln 3 * hidden) = (0.75, 0.5)
    quality = dgqp_quality([[2.0, 1.0], [1.0, 2.0]], [[1.0, -1.0]], [0.0], [[LN3]], [0.0])
    np.testing.assert_allclose(quality, [0.75, 0.5], rtol=1e-15)
    # no overflow for huge pre-activations
    np.testing.assert_array_equal(dgqp_quality([[1.0]], [[1.0]], [0.0], [[1e4]], [0.0]), [1.0])
    np.testing.assert_array_equal(dgqp_quality([[1.0]], [[1.0]], [0.0], [[-1e4]], [0.0]), [0.0])


def test_empty_inputs():
    empty = np.zeros((0, 68))
    assert integral(empty).shape == (0, 4)
    assert decode_distribution(np.zeros((0, 2)), np.zeros(0), empty).shape == (0, 4)
    assert distance_targets(np.zeros((0, 2)), np.zeros(0), np.zeros((0, 4))).shape == (0, 4)
    assert distribution_focal_loss(empty, np.zeros((0, 4))).shape == (0, 4)
    assert dgqp_statistics(empty).shape == (0, 20)
    assert dgqp_quality(np.zeros((0, 20)), np.zeros((64, 20)), np.zeros(64), np.zeros((1, 64)), np.zeros(1)).shape == (0,)


# ---------------------------------------------------------------------------------------
# argument checks (specs/gfl.md §8)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: integral(np.zeros((1, 68)), reg_max=0), "reg_max"),
        (lambda: integral(np.zeros((1, 68)), reg_max=True), "reg_max"),
        (lambda: integral(np.zeros((1, 68)), reg_max=2.0), "reg_max"),
        (lambda: integral(np.zeros((1, 64))), "logits"),
        (lambda: integral(np.zeros(68)), "logits"),
        (lambda: integral(np.full((1, 68), np.nan)), "logits"),
        (lambda: integral(np.zeros((1, 68), dtype=bool)), "logits"),
        (lambda: decode_distribution([[0.0, 0.0]], [0.0], np.zeros((1, 68))), "strides: row 0"),
        (lambda: decode_distribution([[0.0, 0.0]], [8.0, 8.0], np.zeros((1, 68))), "strides"),
        (lambda: decode_distribution([[0.0, 0.0]], [8.0], np.zeros((2, 68))), "logits"),
        (lambda: decode_distribution([[0.0, np.inf]], [8.0], np.zeros((1, 68))), "points"),
        (lambda: distance_targets([[0.0, 0.0]], [8.0], [[1.0, 0, 0, 1]]), "target_boxes: row 0"),
        (lambda: distance_targets([[0.0, 0.0]], [8.0], [[0, 0, 1, 1]] * 2), "target_boxes"),
        (lambda: distance_targets([[0.0, 0.0]], [8.0], [[0, 0, 1, 1]], eps=16.0), "eps"),
        (lambda: distance_targets([[0.0, 0.0]], [8.0], [[0, 0, 1, 1]], eps=-0.1), "eps"),
        (lambda: distribution_focal_loss(np.zeros((2, 68)), [[0.0] * 4, [0.0, 0.0, 16.01, 0.0]]), "targets: row 1 side 2"),
        (lambda: distribution_focal_loss(np.zeros((1, 68)), [[-1e-9, 0.0, 0.0, 0.0]]), "targets: row 0 side 0"),
        (lambda: distribution_focal_loss(np.zeros((1, 68)), [[0.0, np.nan, 0.0, 0.0]]), "targets"),
        (lambda: distribution_focal_loss(np.zeros((1, 68)), np.zeros((2, 4))), "targets"),
        (lambda: weighted_dfl(np.zeros((2, 4)), [1.0, -1.0]), "weights: row 1"),
        (lambda: weighted_dfl(np.zeros((2, 4)), [1.0]), "weights"),
        (lambda: weighted_dfl(np.zeros((2, 4)), [1.0, 1.0], loss_weight=-1), "loss_weight"),
        (lambda: weighted_dfl(np.zeros((2, 3)), [1.0, 1.0]), "losses"),
        (lambda: dgqp_statistics(np.zeros((1, 68)), topk=0), "topk"),
        (lambda: dgqp_statistics(np.zeros((1, 68)), topk=18), "topk"),
        (lambda: dgqp_statistics(np.zeros((1, 68)), add_mean=1), "add_mean"),
        (lambda: dgqp_quality(np.zeros((1, 20)), np.zeros((64, 19)), np.zeros(64), np.zeros((1, 64)), np.zeros(1)), "w1"),
        (lambda: dgqp_quality(np.zeros((1, 20)), np.zeros((64, 20)), np.zeros(63), np.zeros((1, 64)), np.zeros(1)), "b1"),
        (lambda: dgqp_quality(np.zeros((1, 20)), np.zeros((64, 20)), np.zeros(64), np.zeros((2, 64)), np.zeros(1)), "w2"),
        (lambda: dgqp_quality(np.zeros((1, 20)), np.zeros((64, 20)), np.zeros(64), np.zeros((1, 64)), np.zeros(2)), "b2"),
        (lambda: dgqp_quality(np.zeros(20), np.zeros((64, 20)), np.zeros(64), np.zeros((1, 64)), np.zeros(1)), "statistics"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------
# invariants (specs/gfl.md §2-§5)


@given(st.sampled_from([1, 2, 5, 16]), st.data())
def test_integral_of_a_one_hot_is_its_bin(reg_max, data):
    bins = np.array(data.draw(st.lists(st.integers(0, reg_max), min_size=4, max_size=4)))
    logits = np.zeros((4, reg_max + 1))
    logits[np.arange(4), bins] = BIG
    np.testing.assert_array_equal(integral(logits.reshape(1, -1), reg_max), bins[None, :].astype(float))


@given(logits_arrays(), st.floats(-50, 50))
def test_integral_bounds_and_shift_invariance(inputs, shift):
    reg_max, logits = inputs
    result = integral(logits, reg_max)
    assert result.shape == (len(logits), 4)
    assert ((result >= 0) & (result <= reg_max + 1e-12)).all()
    shifted = logits.reshape(len(logits), 4, reg_max + 1) + shift * np.arange(4)[None, :, None]  # a constant per side
    np.testing.assert_allclose(integral(shifted.reshape(logits.shape), reg_max), result, rtol=1e-12, atol=1e-12)


@given(logits_arrays(min_rows=1), st.data())
def test_dfl_is_at_least_the_binary_entropy(inputs, data):
    """Cross entropy >= entropy of the two-point target (Gibbs); DFL >= 0."""
    reg_max, logits = inputs
    targets = data.draw(targets_for(len(logits), reg_max))
    loss = distribution_focal_loss(logits, targets, reg_max)
    left = np.minimum(np.floor(targets), reg_max - 1)
    assert (loss >= 0).all()
    assert (loss >= binary_entropy(targets - left) - 1e-12).all()


@given(st.sampled_from([1, 2, 7, 16]), st.data())
def test_dfl_equals_the_entropy_at_the_two_point_optimum_whose_mean_is_y(reg_max, data):
    rows = data.draw(st.integers(1, 8))
    targets = data.draw(targets_for(rows, reg_max))
    logits = two_point_logits(targets, reg_max)
    left = np.minimum(np.floor(targets), reg_max - 1)
    np.testing.assert_allclose(distribution_focal_loss(logits, targets, reg_max), binary_entropy(targets - left), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(integral(logits, reg_max), targets, rtol=1e-13, atol=1e-13)
    # any other distribution is worse
    perturbed = logits + data.draw(st.floats(0.01, 3)) * (np.arange(logits.shape[1]) % 3 == 0)
    assert (distribution_focal_loss(perturbed, targets, reg_max) >= binary_entropy(targets - left) - 1e-12).all()


@given(logits_arrays(min_rows=1), st.floats(1e-9, 0.5))
def test_dfl_is_continuous_at_bin_edges_and_at_reg_max(inputs, delta):
    reg_max, logits = inputs
    rows = len(logits)
    for edge in (1.0, float(reg_max)):
        at = distribution_focal_loss(logits, np.full((rows, 4), edge), reg_max)
        below = distribution_focal_loss(logits, np.full((rows, 4), edge - delta * min(1.0, edge)), reg_max)
        # |dDFL/dy| = |log p_{y_r} - log p_{y_l}| <= the spread of the logits
        spread = np.ptp(logits) if logits.size else 0.0
        assert (np.abs(at - below) <= delta * (spread + 1e-12) + 1e-12).all()


@given(st.data())
def test_distance_targets_are_clamped_and_invert_decoding(data):
    reg_max = data.draw(st.sampled_from([2, 7, 16]))
    rows = data.draw(st.integers(0, 10))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    points = rng.uniform(0, 800, size=(rows, 2))
    strides = rng.choice([8.0, 16.0, 32.0, 64.0, 128.0], size=rows)
    logits = rng.normal(size=(rows, 4 * (reg_max + 1))) * data.draw(st.sampled_from([0.5, 3.0, 20.0]))
    boxes = decode_distribution(points, strides, logits, reg_max)
    assert ((boxes[:, 2:] >= boxes[:, :2])).all()
    targets = distance_targets(points, strides, boxes, reg_max)
    assert ((targets >= 0) & (targets <= reg_max - TARGET_EPS)).all()
    np.testing.assert_allclose(targets, np.clip(integral(logits, reg_max), 0, reg_max - TARGET_EPS), rtol=0, atol=1e-9)
    # targets always lie in DFL's domain
    assert distribution_focal_loss(logits, targets, reg_max).shape == (rows, 4)
    # arbitrary GTs, inside or not: always clamped
    xs, ys = np.sort(rng.uniform(-500, 1500, size=(2, rows, 2)), axis=-1)
    gts = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
    clamped = distance_targets(points, strides, gts, reg_max)
    assert ((clamped >= 0) & (clamped <= reg_max - TARGET_EPS)).all()


@given(logits_arrays(), st.data())
def test_dgqp_statistics_are_sorted_values_of_the_distribution(inputs, data):
    reg_max, logits = inputs
    topk = data.draw(st.integers(1, reg_max + 1))
    stats = dgqp_statistics(logits, reg_max, topk).reshape(len(logits), 4, topk + 1)
    top, mean = stats[..., :topk], stats[..., topk]
    assert (np.diff(top, axis=-1) <= 0).all()  # descending
    np.testing.assert_allclose(mean, top.mean(axis=-1), rtol=1e-15, atol=0)
    assert ((top >= 0) & (top <= 1)).all()
    if topk == reg_max + 1:  # all the bins: they sum to 1
        np.testing.assert_allclose(top.sum(axis=-1), 1.0, rtol=1e-12)
    # values only: permuting the bins of a side (ties included) changes nothing
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    permuted = logits.reshape(len(logits), 4, reg_max + 1)[..., rng.permutation(reg_max + 1)].reshape(logits.shape)
    np.testing.assert_allclose(dgqp_statistics(permuted, reg_max, topk), stats.reshape(len(logits), 4 * (topk + 1)), rtol=1e-12, atol=1e-15)
    no_mean = dgqp_statistics(logits, reg_max, topk, add_mean=False)
    np.testing.assert_array_equal(no_mean, top.reshape(len(logits), 4 * topk))


@given(logits_arrays(), st.integers(0, 2**32 - 1))
def test_dgqp_quality_is_a_probability(inputs, seed):
    reg_max, logits = inputs
    rng = np.random.default_rng(seed)
    stats = dgqp_statistics(logits, reg_max, topk=min(DGQP_TOPK, reg_max + 1))
    w1, b1 = rng.normal(size=(8, stats.shape[1])) * 5, rng.normal(size=8)
    w2, b2 = rng.normal(size=(1, 8)) * 5, rng.normal(size=1)
    quality = dgqp_quality(stats, w1, b1, w2, b2)
    assert quality.shape == (len(logits),)
    assert ((quality >= 0) & (quality <= 1)).all()
    expected = 1 / (1 + np.exp(-(np.maximum(stats @ w1.T + b1, 0) @ w2.T + b2)[:, 0]))
    np.testing.assert_allclose(quality, expected, rtol=1e-14)
