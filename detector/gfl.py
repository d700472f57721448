"""GFL / GFLV2 distribution regression: integral, DFL and DGQP statistics (specs/gfl.md).

Logits are ``(A, 4 * (reg_max + 1))``, side-major (the bins of l, then t, r, b);
distances are in stride units, boxes in pixels (xyxy).

PyTorch twin of ``reference/gfl.py``: device-agnostic, any leading dims (``(..., A, ...)``)
where the reference takes ``(A, ...)``, differentiable w.r.t. the logits and the MLP
weights. Tensors of one call must share a device; array-likes are put on the logits'
device. Adds :class:`DistributionQuality`, the DGQP MLP as an ``nn.Module``.
"""
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from detector.validation import as_finite, check_bool, check_number, check_same_device, check_topk

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

    ``sum_i i * softmax(logits[..., a, s])_i`` for bins ``i = 0..reg_max``.

    Args:
        logits: (..., A, 4 * (reg_max + 1)) finite, side-major (l, t, r, b bins).
        reg_max: largest bin, an int >= 1.

    Returns:
        (..., A, 4) distances (l, t, r, b) in stride units, in [0, reg_max].
    """
    reg_max = _check_reg_max(reg_max)
    return _integral(_as_logits(logits, reg_max))


def decode_distribution(points, strides, logits, reg_max=REG_MAX):
    """Boxes from points and distribution logits (specs/gfl.md §2).

    ``(x - l * stride, y - t * stride, x + r * stride, y + b * stride)`` with
    ``(l, t, r, b) = integral(logits)``.

    Args:
        points: (A, 2) location centres (x, y) in pixels (or (..., A, 2), broadcast).
        strides: (A,) stride of each point's level, > 0 (or (..., A), broadcast).
        logits: (..., A, 4 * (reg_max + 1)) finite, side-major.
        reg_max: largest bin, an int >= 1.

    Returns:
        (..., A, 4) xyxy boxes in pixels (valid, not clipped to the image).
    """
    reg_max = _check_reg_max(reg_max)
    logits = _as_logits(logits, reg_max)
    points, strides = _points_and_strides(points, strides, logits)
    _check_rows(points.shape[:-1], logits.shape[:-2], "points")
    _check_rows(strides.shape, logits.shape[:-2], "strides")
    return _decode(points, strides, _integral(logits))


# ---------------------------------------------------------------------------------------
# distance targets and Distribution Focal Loss (specs/gfl.md §3-§4)


def distance_targets(points, strides, target_boxes, reg_max=REG_MAX, eps=TARGET_EPS):
    """DFL targets: distances from each point to its GT's sides (specs/gfl.md §3).

    ``(x - x1, y - y1, x2 - x, y2 - y) / stride`` clamped to ``[0, reg_max - eps]``
    (mmdet ``bbox2distance`` with ``max_dis=reg_max``, eps 0.1).

    Args:
        points: (A, 2) location centres (x, y) in pixels (the positives; (..., A, 2) broadcast).
        strides: (A,) stride of each point's level, > 0 ((..., A) broadcast).
        target_boxes: (A, 4) xyxy, the GT assigned to each point ((..., A, 4) broadcast).
        reg_max: largest bin, an int >= 1.
        eps: margin below ``reg_max``, a finite number in [0, reg_max).

    Returns:
        (..., A, 4) targets (l, t, r, b) in stride units, in [0, reg_max - eps].
    """
    reg_max = _check_reg_max(reg_max)
    eps = _check_eps(eps, reg_max)
    boxes = _as_boxes(target_boxes)
    points, strides = _points_and_strides(points, strides, boxes)
    _check_rows(points.shape[:-1], boxes.shape[:-1], "points")
    _check_rows(strides.shape, boxes.shape[:-1], "strides")
    distances = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1) / strides[..., None]
    return distances.clamp(0.0, reg_max - eps)


def distribution_focal_loss(logits, targets, reg_max=REG_MAX):
    """Distribution Focal Loss per point and side, unreduced (specs/gfl.md §4; GFL eq. (6)).

    ``-((y_r - y) log p[y_l] + (y - y_l) log p[y_r])`` with ``y_l = min(floor(y), reg_max - 1)``,
    ``y_r = y_l + 1`` and ``log p = log_softmax(logits[..., a, s])``.

    Args:
        logits: (..., A, 4 * (reg_max + 1)) finite, side-major.
        targets: (..., A, 4) distances in stride units, in [0, reg_max].
        reg_max: largest bin, an int >= 1.

    Returns:
        (..., A, 4) losses >= 0; differentiable w.r.t. ``logits`` (gradient
        ``softmax - two-point target`` per side).
    """
    reg_max = _check_reg_max(reg_max)
    logits = _as_logits(logits, reg_max)
    targets = _check_targets(targets, logits, reg_max)
    return _dfl(logits, targets, reg_max)


def weighted_dfl(losses, weights, loss_weight=DFL_LOSS_WEIGHT):
    """The GFL head's DFL numerator (specs/gfl.md §4.1).

    ``loss_weight * sum_a weights[a] * mean_s losses[a, s]``; the head divides the sum over
    images by ``max(sum of the weights, 1)``.

    Args:
        losses: (..., A, 4) :func:`distribution_focal_loss` values.
        weights: (..., A) weights >= 0 (mmdet: the detached predicted score of each positive).
        loss_weight: finite >= 0 (GFL: 0.25).

    Returns:
        0-d tensor (0 for A = 0).
    """
    losses = _finite(losses, "losses")
    if losses.ndim < 1 or losses.shape[-1] != 4:
        raise ValueError(f"losses: expected shape (..., A, 4), got {tuple(losses.shape)}")
    weights = _check_weights(weights, losses)
    loss_weight = check_number(loss_weight, "loss_weight", minimum=0)
    return loss_weight * (weights * losses.sum(dim=-1)).sum() / 4.0


# ---------------------------------------------------------------------------------------
# GFLV2 Distribution-Guided Quality Predictor (specs/gfl.md §5-§6)


def dgqp_statistics(logits, reg_max=REG_MAX, topk=DGQP_TOPK, add_mean=DGQP_ADD_MEAN):
    """DGQP input feature: each side's top-k probabilities and their mean (specs/gfl.md §5).

    Args:
        logits: (..., A, 4 * (reg_max + 1)) finite, side-major.
        reg_max: largest bin, an int >= 1.
        topk: probabilities kept per side, an int in 1..reg_max + 1.
        add_mean: append the mean of the top-k to each side.

    Returns:
        (..., A, 4 * (topk + 1)) (``(..., A, 4 * topk)`` without the mean), side-major: per
        side the top-k sorted descending, then their mean.
    """
    reg_max = _check_reg_max(reg_max)
    topk = _check_dgqp_topk(topk, reg_max)
    add_mean = check_bool(add_mean, "add_mean")
    return _statistics(_as_logits(logits, reg_max), topk, add_mean)


def dgqp_quality(statistics, w1, b1, w2, b2):
    """The DGQP MLP as a function of its weights (specs/gfl.md §6; GFLV2 eqs. (4)-(5)).

    ``sigmoid(w2 @ relu(w1 @ s + b1) + b2)`` per row ``s`` of ``statistics``.

    Args:
        statistics: (..., A, F) :func:`dgqp_statistics` (F = 20 by default).
        w1: (H, F) first layer weight (nn.Linear layout; H = 64 by default).
        b1: (H,) first layer bias.
        w2: (1, H) second layer weight.
        b2: (1,) second layer bias.

    Returns:
        (..., A) quality in [0, 1]; differentiable w.r.t. every input.
    """
    statistics = _finite(statistics, "statistics")
    if statistics.ndim < 2:
        raise ValueError(f"statistics: expected shape (..., A, F), got {tuple(statistics.shape)}")
    width = statistics.shape[-1]
    w1 = _check_matrix(w1, "w1", None, width, statistics)
    hidden = w1.shape[0]
    b1 = _check_vector(b1, "b1", hidden, statistics)
    w2 = _check_matrix(w2, "w2", 1, hidden, statistics)
    b2 = _check_vector(b2, "b2", 1, statistics)
    return _quality(statistics, w1, b1, w2, b2)


class DistributionQuality(nn.Module):
    """The GFLV2 DGQP branch as a module (specs/gfl.md §6): logits -> quality in (0, 1).

    ``fc1 = Linear(4 * (topk + add_mean), hidden)``, ReLU, ``fc2 = Linear(hidden, 1)``,
    sigmoid, applied to :func:`dgqp_statistics` (equal to GFocalV2's two 1x1 convs
    ``reg_conf``; a conv weight ``(out, in, 1, 1)`` loads as ``.reshape(out, in)``).
    The forward pass skips the argument checks of the functional forms.

    Args:
        reg_max: largest bin, an int >= 1 (16).
        topk: probabilities kept per side (4).
        hidden: hidden width (64).
        add_mean: append the mean of the top-k to each side (True).
    """

    def __init__(self, reg_max=REG_MAX, topk=DGQP_TOPK, hidden=DGQP_HIDDEN, add_mean=DGQP_ADD_MEAN):
        super().__init__()
        self.reg_max = _check_reg_max(reg_max)
        self.topk = _check_dgqp_topk(topk, self.reg_max)
        self.add_mean = check_bool(add_mean, "add_mean")
        if isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral) or hidden < 1:
            raise ValueError(f"hidden: expected an int >= 1, got {hidden!r}")
        hidden = int(hidden)
        self.in_features = 4 * (self.topk + int(self.add_mean))
        self.fc1 = nn.Linear(self.in_features, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        self.reset_parameters()

    def reset_parameters(self):
        """GFocalV2 initialisation: weights N(0, 0.01), biases 0 (quality 0.5 at start)."""
        for layer in (self.fc1, self.fc2):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, logits):
        """(..., 4 * (reg_max + 1)) distribution logits -> (...,) quality."""
        if logits.shape[-1] != 4 * (self.reg_max + 1):
            raise ValueError(f"logits: expected last dim 4 * (reg_max + 1) = {4 * (self.reg_max + 1)}, "
                             f"got {tuple(logits.shape)}")
        side = logits.reshape(*logits.shape[:-1], 4, self.reg_max + 1)
        statistics = _statistics(side, self.topk, self.add_mean)
        return _quality(statistics, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)

    def extra_repr(self):
        return f"reg_max={self.reg_max}, topk={self.topk}, add_mean={self.add_mean}"


# ---------------------------------------------------------------------------------------
# computations without checks (shared by the functions and the module)


def _integral(side_logits):
    """(..., 4, R + 1) logits -> (..., 4) expected bin."""
    bins = torch.arange(side_logits.shape[-1], dtype=side_logits.dtype, device=side_logits.device)
    return (side_logits.softmax(dim=-1) * bins).sum(dim=-1)


def _decode(points, strides, distances):
    """Points (..., 2), strides (...), distances (..., 4) -> xyxy boxes (..., 4)."""
    scaled = distances * strides[..., None]
    return torch.cat([points - scaled[..., :2], points + scaled[..., 2:]], dim=-1)


def _dfl(side_logits, targets, reg_max):
    """(..., 4, R + 1) logits, (..., 4) targets in [0, R] -> (..., 4) DFL."""
    log_prob = F.log_softmax(side_logits, dim=-1)
    left = targets.detach().floor().clamp(max=reg_max - 1).long()
    weight_left = (left + 1).to(targets.dtype) - targets
    weight_right = targets - left.to(targets.dtype)
    log_left = log_prob.gather(-1, left[..., None])[..., 0]
    log_right = log_prob.gather(-1, left[..., None] + 1)[..., 0]
    return -(weight_left * log_left + weight_right * log_right)


def _statistics(side_logits, topk, add_mean):
    """(..., 4, R + 1) logits -> (..., 4 * (topk + add_mean)) DGQP feature."""
    top, _ = side_logits.softmax(dim=-1).topk(topk, dim=-1, sorted=True)
    if add_mean:
        top = torch.cat([top, top.mean(dim=-1, keepdim=True)], dim=-1)
    return top.flatten(-2)


def _quality(statistics, w1, b1, w2, b2):
    """The MLP: sigmoid(w2 relu(w1 s + b1) + b2)[..., 0]."""
    return torch.sigmoid(F.linear(F.relu(F.linear(statistics, w1, b1)), w2, b2))[..., 0]


# ---------------------------------------------------------------------------------------
# helpers


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
    """Check (..., A, 4 * (reg_max + 1)) finite logits -> (..., A, 4, reg_max + 1)."""
    width = 4 * (reg_max + 1)
    logits = _finite(logits, "logits")
    if logits.ndim < 2 or logits.shape[-1] != width:
        raise ValueError(f"logits: expected shape (..., A, 4 * (reg_max + 1)) = (..., A, {width}), got {tuple(logits.shape)}")
    return logits.reshape(*logits.shape[:-1], 4, reg_max + 1)


def _points_and_strides(points, strides, reference):
    """Check points (..., 2) finite and strides (...) finite and > 0, on ``reference``'s device."""
    points = _on_device(points, "points", reference)
    if points.ndim < 1 or points.shape[-1] != 2:
        raise ValueError(f"points: expected shape (..., A, 2), got {tuple(points.shape)}")
    strides = _on_device(strides, "strides", reference)
    bad = strides <= 0
    if bool(bad.any()):
        index = tuple(torch.nonzero(bad)[0].tolist())
        row = index[0] if len(index) == 1 else index
        raise ValueError(f"strides: row {row} is {strides[index].item()!r}, expected > 0")
    return points, strides


def _check_targets(targets, logits, reg_max):
    """Check (..., A, 4) targets in [0, reg_max], one row per logits row."""
    targets = _on_device(targets, "targets", logits)
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets: expected shape {tuple(logits.shape[:-1])} (one row per point), got {tuple(targets.shape)}")
    outside = (targets < 0) | (targets > reg_max)
    if bool(outside.any()):
        index = torch.nonzero(outside)[0].tolist()
        row = index[0] if len(index) == 2 else tuple(index[:-1])
        raise ValueError(f"targets: row {row} side {index[-1]} is {targets[tuple(index)].item()!r}, "
                         f"outside [0, {reg_max}]; clamp with distance_targets")
    return targets


def _check_weights(weights, losses):
    """Check (..., A) finite weights >= 0, one per losses row."""
    weights = _on_device(weights, "weights", losses)
    if tuple(weights.shape) != tuple(losses.shape[:-1]):
        raise ValueError(f"weights: expected shape {tuple(losses.shape[:-1])} (one per row of losses), got {tuple(weights.shape)}")
    if bool((weights < 0).any()):
        index = tuple(torch.nonzero(weights < 0)[0].tolist())
        row = index[0] if len(index) == 1 else index
        raise ValueError(f"weights: row {row} is {weights[index].item()!r}, expected >= 0")
    return weights


def _check_vector(values, name, length, reference):
    """Check a finite (length,) vector on ``reference``'s device."""
    values = _on_device(values, name, reference)
    if tuple(values.shape) != (length,):
        raise ValueError(f"{name}: expected shape ({length},), got {tuple(values.shape)}")
    return values


def _check_rows(shape, expected, name):
    """The leading shape ``shape`` must broadcast to ``expected`` (one row per point)."""
    try:
        broadcast = torch.broadcast_shapes(tuple(shape), tuple(expected))
    except RuntimeError:
        broadcast = None
    if broadcast != tuple(expected):
        raise ValueError(f"{name}: leading shape {tuple(shape)} does not match {tuple(expected)} (one row per point)")


def _check_matrix(values, name, rows, columns, reference):
    """Check a finite (rows, columns) matrix (any rows when ``rows`` is None)."""
    values = _on_device(values, name, reference)
    if values.ndim != 2 or values.shape[1] != columns or (rows is not None and values.shape[0] != rows):
        expected = f"({'H' if rows is None else rows}, {columns})"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(values.shape)}")
    return values


def _as_boxes(boxes):
    """Check (..., 4) finite xyxy boxes with x1 <= x2 and y1 <= y2."""
    boxes = _finite(boxes, "target_boxes")
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"target_boxes: expected shape (..., A, 4), got {tuple(boxes.shape)}")
    inverted = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if bool(inverted.any()):
        index = tuple(torch.nonzero(inverted)[0].tolist())
        row = index[0] if len(index) == 1 else index
        raise ValueError(f"target_boxes: row {row} has x2 < x1 or y2 < y1: {boxes[index].tolist()}")
    return boxes


def _finite(values, name):
    """``as_finite`` that also refuses the meta device (no values to check or compute with)."""
    if isinstance(values, torch.Tensor) and values.device.type == "meta":
        raise ValueError(f"{name}: a tensor on the meta device has no values to compute with")
    return as_finite(values, name)


def _on_device(values, name, reference):
    """Finite float tensor of ``values`` on ``reference``'s device: a tensor elsewhere is an
    error (nothing is moved silently); an array-like is created there."""
    if isinstance(values, torch.Tensor):
        check_same_device(values, reference, name, "the first tensor argument")
        return _finite(values, name)
    return _finite(values, name).to(reference.device)
