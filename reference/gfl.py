"""GFL / GFLV2 distribution regression: integral, DFL and DGQP statistics (specs/gfl.md).

Logits are ``(A, 4 * (reg_max + 1))``, side-major (the bins of l, then t, r, b);
distances are in stride units, boxes in pixels (xyxy). Readable NumPy float64.
"""
import numbers

import numpy as np

from reference.validation import as_boxes, as_finite, as_points, as_values, check_bool, check_number, check_topk

#: Largest bin of the discrete distribution (GFL default): bins 0..REG_MAX.
REG_MAX = 16
#: Distance targets are clamped to ``reg_max - TARGET_EPS`` (mmdet ``bbox2distance`` eps).
TARGET_EPS = 0.1
#: DFL loss weight of the GFL head.
DFL_LOSS_WEIGHT = 0.25
#: DGQP defaults (GFLV2): top-k probabilities per side, hidden width, append their mean.
DGQP_TOPK = 4
DGQP_HIDDEN = 64
DGQP_ADD_MEAN = True


# ---------------------------------------------------------------------------------------
# integral and decoding (specs/gfl.md §1-§2)


def integral(logits, reg_max=REG_MAX):
    """Expected distance of each side's distribution (specs/gfl.md §2; GFL eq. (5)).

    ``sum_i i * softmax(logits[a, s])_i`` for bins ``i = 0..reg_max``.

    Args:
        logits: (A, 4 * (reg_max + 1)) finite, side-major (l, t, r, b bins).
        reg_max: largest bin, an int >= 1.

    Returns:
        (A, 4) float64 distances (l, t, r, b) in stride units, in [0, reg_max].
    """
    reg_max = _check_reg_max(reg_max)
    prob = _softmax(_as_logits(logits, reg_max))
    return prob @ np.arange(reg_max + 1, dtype=np.float64)


def decode_distribution(points, strides, logits, reg_max=REG_MAX):
    """Boxes from points and distribution logits (specs/gfl.md §2).

    ``(x - l * stride, y - t * stride, x + r * stride, y + b * stride)`` with
    ``(l, t, r, b) = integral(logits)``.

    Args:
        points: (A, 2) location centres (x, y) in pixels.
        strides: (A,) stride of each point's level, > 0.
        logits: (A, 4 * (reg_max + 1)) finite, side-major.
        reg_max: largest bin, an int >= 1.

    Returns:
        (A, 4) float64 xyxy boxes in pixels (valid, not clipped to the image).
    """
    points, strides = _points_and_strides(points, strides)
    distances = integral(logits, reg_max)
    _check_rows(distances, len(points), "logits")
    scaled = distances * strides[:, None]
    return np.concatenate([points - scaled[:, :2], points + scaled[:, 2:]], axis=1)


# ---------------------------------------------------------------------------------------
# distance targets and Distribution Focal Loss (specs/gfl.md §3-§4)


def distance_targets(points, strides, target_boxes, reg_max=REG_MAX, eps=TARGET_EPS):
    """DFL targets: distances from each point to its GT's sides (specs/gfl.md §3).

    ``(x - x1, y - y1, x2 - x, y2 - y) / stride`` clamped to ``[0, reg_max - eps]``
    (mmdet ``bbox2distance`` with ``max_dis=reg_max``, eps 0.1).

    Args:
        points: (A, 2) location centres (x, y) in pixels (the positives).
        strides: (A,) stride of each point's level, > 0.
        target_boxes: (A, 4) xyxy, the GT assigned to each point.
        reg_max: largest bin, an int >= 1.
        eps: margin below ``reg_max``, a finite number in [0, reg_max).

    Returns:
        (A, 4) float64 targets (l, t, r, b) in stride units, in [0, reg_max - eps].
    """
    reg_max = _check_reg_max(reg_max)
    eps = _check_eps(eps, reg_max)
    points, strides = _points_and_strides(points, strides)
    boxes = as_boxes(target_boxes, "target_boxes")
    _check_rows(boxes, len(points), "target_boxes")
    distances = np.concatenate([points - boxes[:, :2], boxes[:, 2:] - points], axis=1) / strides[:, None]
    return np.clip(distances, 0.0, reg_max - eps)


def distribution_focal_loss(logits, targets, reg_max=REG_MAX):
    """Distribution Focal Loss per point and side, unreduced (specs/gfl.md §4; GFL eq. (6)).

    ``-((y_r - y) log p[y_l] + (y - y_l) log p[y_r])`` with ``y_l = min(floor(y), reg_max - 1)``,
    ``y_r = y_l + 1`` and ``log p = log_softmax(logits[a, s])``.

    Args:
        logits: (A, 4 * (reg_max + 1)) finite, side-major.
        targets: (A, 4) distances in stride units, in [0, reg_max].
        reg_max: largest bin, an int >= 1.

    Returns:
        (A, 4) float64 losses >= 0.
    """
    reg_max = _check_reg_max(reg_max)
    log_prob = _log_softmax(_as_logits(logits, reg_max))
    targets = _check_targets(targets, len(log_prob), reg_max)
    left = np.minimum(np.floor(targets), reg_max - 1).astype(np.int64)
    weight_left = (left + 1) - targets
    weight_right = targets - left
    log_left = np.take_along_axis(log_prob, left[..., None], axis=-1)[..., 0]
    log_right = np.take_along_axis(log_prob, left[..., None] + 1, axis=-1)[..., 0]
    return -(weight_left * log_left + weight_right * log_right)


def weighted_dfl(losses, weights, loss_weight=DFL_LOSS_WEIGHT):
    """The GFL head's DFL numerator (specs/gfl.md §4.1).

    ``loss_weight * sum_a weights[a] * mean_s losses[a, s]``; the head divides the sum over
    images by ``max(sum of the weights, 1)``.

    Args:
        losses: (A, 4) :func:`distribution_focal_loss` values.
        weights: (A,) weights >= 0 (mmdet: the detached predicted score of each positive).
        loss_weight: finite >= 0 (GFL: 0.25).

    Returns:
        float (0 for A = 0).
    """
    losses = as_values(losses, "losses", ndim=2, width=4)
    weights = _check_weights(weights, len(losses))
    loss_weight = check_number(loss_weight, "loss_weight", minimum=0)
    return float(loss_weight * (weights * losses.sum(axis=1)).sum() / 4.0)


# ---------------------------------------------------------------------------------------
# GFLV2 Distribution-Guided Quality Predictor (specs/gfl.md §5-§6)


def dgqp_statistics(logits, reg_max=REG_MAX, topk=DGQP_TOPK, add_mean=DGQP_ADD_MEAN):
    """DGQP input feature: each side's top-k probabilities and their mean (specs/gfl.md §5).

    Args:
        logits: (A, 4 * (reg_max + 1)) finite, side-major.
        reg_max: largest bin, an int >= 1.
        topk: probabilities kept per side, an int in 1..reg_max + 1.
        add_mean: append the mean of the top-k to each side.

    Returns:
        (A, 4 * (topk + 1)) float64 (``(A, 4 * topk)`` without the mean), side-major: per
        side the top-k sorted descending, then their mean.
    """
    reg_max = _check_reg_max(reg_max)
    topk = _check_dgqp_topk(topk, reg_max)
    add_mean = check_bool(add_mean, "add_mean")
    prob = _softmax(_as_logits(logits, reg_max))
    top = -np.sort(-prob, axis=-1)[..., :topk]
    if add_mean:
        top = np.concatenate([top, top.mean(axis=-1, keepdims=True)], axis=-1)
    return top.reshape(len(prob), 4 * top.shape[-1])


def dgqp_quality(statistics, w1, b1, w2, b2):
    """The DGQP MLP as a function of its weights (specs/gfl.md §6; GFLV2 eqs. (4)-(5)).

    ``sigmoid(w2 @ relu(w1 @ s + b1) + b2)`` per row ``s`` of ``statistics``.

    Args:
        statistics: (A, F) :func:`dgqp_statistics` (F = 20 by default).
        w1: (H, F) first layer weight (nn.Linear layout; H = 64 by default).
        b1: (H,) first layer bias.
        w2: (1, H) second layer weight.
        b2: (1,) second layer bias.

    Returns:
        (A,) float64 quality in [0, 1].
    """
    statistics = as_values(statistics, "statistics", ndim=2)
    w1 = as_values(w1, "w1", ndim=2, width=statistics.shape[1])
    b1 = _check_vector(b1, "b1", w1.shape[0])
    w2 = as_values(w2, "w2", ndim=2, width=w1.shape[0])
    if w2.shape[0] != 1:
        raise ValueError(f"w2: expected shape (1, {w1.shape[0]}), got {w2.shape}")
    b2 = _check_vector(b2, "b2", 1)
    hidden = np.maximum(statistics @ w1.T + b1, 0.0)
    return _sigmoid(hidden @ w2[0] + b2[0])


# ---------------------------------------------------------------------------------------
# helpers


def _softmax(logits):
    """Softmax over the last axis with the max subtracted."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _log_softmax(logits):
    """Log-softmax over the last axis: ``x - max - log(sum(exp(x - max)))``."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_reg_max(reg_max):
    """``reg_max`` must be an int >= 1 (bools are rejected)."""
    if isinstance(reg_max, bool) or not isinstance(reg_max, numbers.Integral) or reg_max < 1:
        raise ValueError(f"reg_max: expected an int >= 1, got {reg_max!r}")
    return int(reg_max)


def _check_eps(eps, reg_max):
    """``eps`` must be a finite number in [0, reg_max)."""
    eps = check_number(eps, "eps", minimum=0)
    if eps >= reg_max:
        raise ValueError(f"eps: expected a finite number in [0, {reg_max}), got {eps!r}")
    return eps


def _check_dgqp_topk(topk, reg_max):
    """``topk`` must be an int in 1..reg_max + 1."""
    topk = check_topk(topk)
    if topk > reg_max + 1:
        raise ValueError(f"topk: expected an int in 1..{reg_max + 1} (reg_max + 1 bins), got {topk!r}")
    return topk


def _as_logits(logits, reg_max):
    """Check (A, 4 * (reg_max + 1)) finite logits -> (A, 4, reg_max + 1) float64."""
    width = 4 * (reg_max + 1)
    logits = as_finite(logits, "logits")
    if logits.ndim != 2 or logits.shape[1] != width:
        raise ValueError(f"logits: expected shape (A, 4 * (reg_max + 1)) = (A, {width}), got {logits.shape}")
    return logits.reshape(len(logits), 4, reg_max + 1)


def _points_and_strides(points, strides):
    """Check points (A, 2) and strides (A,) finite and > 0."""
    points = as_points(points, "points")
    strides = as_values(strides, "strides", ndim=1)
    _check_rows(strides, len(points), "strides")
    if (strides <= 0).any():
        row = int(np.flatnonzero(strides <= 0)[0])
        raise ValueError(f"strides: row {row} is {strides[row]!r}, expected > 0")
    return points, strides


def _check_targets(targets, count, reg_max):
    """Check (count, 4) targets in [0, reg_max]."""
    targets = as_values(targets, "targets", ndim=2, width=4)
    _check_rows(targets, count, "targets")
    outside = (targets < 0) | (targets > reg_max)
    if outside.any():
        row, side = (int(i) for i in np.argwhere(outside)[0])
        raise ValueError(f"targets: row {row} side {side} is {targets[row, side]!r}, outside [0, {reg_max}]; "
                         "clamp with distance_targets")
    return targets


def _check_weights(weights, count):
    """Check (count,) finite weights >= 0."""
    weights = as_values(weights, "weights", ndim=1)
    _check_rows(weights, count, "weights")
    if (weights < 0).any():
        row = int(np.flatnonzero(weights < 0)[0])
        raise ValueError(f"weights: row {row} is {weights[row]!r}, expected >= 0")
    return weights


def _check_vector(values, name, length):
    """Check a finite (length,) vector."""
    values = as_values(values, name, ndim=1)
    if len(values) != length:
        raise ValueError(f"{name}: expected shape ({length},), got {values.shape}")
    return values


def _check_rows(values, count, name):
    """``values`` must have ``count`` rows (one per point)."""
    if len(values) != count:
        raise ValueError(f"{name}: expected {count} rows (one per point), got {len(values)}")
