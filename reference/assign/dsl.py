"""Dynamic soft-label assignment (DSL) of RTMDet (specs/dsl.md).

A prior (an anchor, located at its centre, with stride = anchor side / 8) is *valid* when
its centre lies strictly inside some GT; only valid priors can be positive. Every (GT,
valid prior) pair gets the cost of mmdetection's ``DynamicSoftLabelAssigner``:

    cost = soft classification cost + iou_weight * -log(IoU + 1e-7) + 10 ** (d / s - radius)

with IoU between the prior's decoded prediction and the GT, ``d`` the Euclidean distance
between the prior centre and the GT centre and ``s`` the prior's stride. Each GT takes its
``k_g = max(1, floor(sum of its topk largest IoUs))`` lowest-cost valid priors; a prior
taken by several GTs goes to the GT of lowest cost among **all** GTs (lower GT index on
ties), as mmdetection does. The soft target (``matched_metric``) of a positive is the IoU
between its prediction and its GT.

The predictions come decoded and detached (``pred_boxes``) with the class probabilities
(``pred_scores``, the sigmoid of the classification logits): the assigner decodes nothing.
"""
import numpy as np

from reference.assign.result import Assignment, empty_assignment
from reference.boxes import _centers, box_iou
from reference.conventions import BACKGROUND, BCE_LOG_MIN, OCTAVE_BASE_SCALE
from reference.validation import (
    as_boxes,
    as_class_labels,
    as_class_scores,
    as_pred_boxes,
    check_level_counts,
    check_number,
    check_topk,
)

#: Default number of largest IoUs summed into a GT's dynamic k (mmdetection ``topk``).
DSL_TOPK = 13
#: Default soft centre radius ``beta`` of the centre prior ``10 ** (d / s - beta)``
#: (mmdetection ``soft_center_radius``; the paper's beta = 3).
DSL_SOFT_CENTER_RADIUS = 3.0
#: Default weight of the IoU cost (mmdetection ``iou_weight``; the paper's lambda = 3).
DSL_IOU_WEIGHT = 3.0
#: Base ``alpha`` of the soft centre prior (paper and mmdetection: 10).
DSL_CENTER_BASE = 10.0
#: The eps inside the IoU cost ``-log(IoU + eps)`` (mmdetection ``EPS``).
DSL_IOU_EPS = 1e-7


def assign_dsl(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_labels,
    pred_boxes,
    pred_scores,
    *,
    topk=DSL_TOPK,
    soft_center_radius=DSL_SOFT_CENTER_RADIUS,
    iou_weight=DSL_IOU_WEIGHT,
):
    """Assign anchors to GTs with RTMDet's dynamic soft-label assigner (specs/dsl.md §2).

    Args:
        anchors: (A, 4) xyxy, level-major; each anchor is a prior located at its centre with
            stride ``(x2 - x1) / 8`` (the ATSS-style square anchors of side 8 x stride).
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (they contain no prior centre).
        gt_labels: (G,) integers in 0..K-1.
        pred_boxes: (A, 4) xyxy, the network's decoded box predictions for this image, one
            per anchor (detached by the caller's framework; here they are plain numbers).
            Rows with a NaN or Inf are allowed: such a prediction has IoU 0 with every GT
            (§2.2). A finite row must have x1 <= x2 and y1 <= y2.
        pred_scores: (A, K) class probabilities in [0, 1] (sigmoid of the logits), K >= 1.
        topk: number of largest IoUs summed into the dynamic k of a GT (int >= 1).
        soft_center_radius: ``beta`` of the soft centre prior ``10 ** (d / s - beta)``.
        iou_weight: weight (>= 0) of the IoU cost ``-log(IoU + 1e-7)``.

    Returns:
        Assignment with matched_gt (A,) int64 in {-1, 0..G-1} (DSL never ignores);
        matched_metric (A,) the soft target: IoU of the prediction with the assigned GT
        (0 for background), in [0, 1]; gt_threshold (G,) NaN (DSL has no threshold);
        candidate_index (G, C) int64, C = min(topk, A): each GT's k_g selected priors in
        (cost, anchor index) order, padded with -1.

    Raises:
        ValueError: bad boxes or level counts, an anchor of zero width, ``pred_boxes`` not
            (A, 4) real numbers or a finite inverted row, ``pred_scores`` not (A, K)
            probabilities, a label outside 0..K-1, a bad option (all named).
    """
    anchors = as_boxes(anchors, "anchors")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    check_level_counts(num_anchors_per_level, len(anchors), "num_anchors_per_level")
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (len(anchors), 4))
    pred_scores = as_class_scores(pred_scores, "pred_scores", (len(anchors),))
    gt_labels = as_class_labels(gt_labels, "gt_labels", (len(gt_boxes),), pred_scores.shape[1])
    topk = check_topk(topk)
    soft_center_radius = check_number(soft_center_radius, "soft_center_radius")
    iou_weight = check_number(iou_weight, "iou_weight", minimum=0.0)
    strides = anchor_strides(anchors)
    num_candidates = min(topk, len(anchors))
    result = empty_assignment(len(anchors), len(gt_boxes), num_candidates)
    if len(gt_boxes) == 0:  # §4.1
        return result

    valid_index = np.flatnonzero(valid_priors(gt_boxes, anchors))  # (V,) increasing
    if len(valid_index) == 0:  # §4.2
        return result
    ious = predicted_ious(gt_boxes, pred_boxes[valid_index])  # (G, V)
    cls_cost = soft_classification_cost(ious, pred_scores[valid_index], negative_costs(pred_scores[valid_index]), gt_labels)
    center_prior = soft_center_prior(gt_boxes, _centers(anchors[valid_index]), strides[valid_index], soft_center_radius)
    cost = cls_cost + iou_cost(ious, iou_weight) + center_prior  # (G, V)
    ks = dynamic_ks(ious, topk)
    positions = select_lowest_costs(cost, ks, num_candidates)  # (G, C) into valid_index
    matched = resolve_conflicts(positions, lowest_cost_gts(cost), len(valid_index))  # (V,)

    matched_gt = result.matched_gt.copy()
    matched_gt[valid_index] = matched
    matched_metric = np.zeros(len(anchors))
    is_positive = matched >= 0
    matched_metric[valid_index[is_positive]] = ious[matched[is_positive], np.flatnonzero(is_positive)]
    candidate_index = np.where(positions >= 0, valid_index[np.maximum(positions, 0)], -1)
    return Assignment(matched_gt, matched_metric, result.gt_threshold, candidate_index)


# ---------------------------------------------------------------------------------------
# step helpers; inputs are already validated float64 arrays


def anchor_strides(anchors):
    """The stride of each prior: its anchor side over 8 (specs/dsl.md §2.1).

    Args:
        anchors: (A, 4) xyxy (square anchors of side 8 x stride; the width is used).

    Returns:
        (A,) float64 > 0.

    Raises:
        ValueError: an anchor of zero width (names the first).
    """
    strides = (anchors[:, 2] - anchors[:, 0]) / OCTAVE_BASE_SCALE
    if not (strides > 0).all():
        row = int(np.flatnonzero(~(strides > 0))[0])
        raise ValueError(f"anchors: row {row} has zero width, so no stride: {anchors[row].tolist()}")
    return strides


def valid_priors(gt_boxes, anchors):
    """Whether each anchor centre lies strictly inside at least one GT (specs/dsl.md §2.1).

    Inside means ``min(x - x1, y - y1, x2 - x, y2 - y) > 0`` (mmdetection ``is_in_gts``);
    a zero-width or zero-height GT contains no centre.

    Args:
        gt_boxes: (G, 4) float64 xyxy.
        anchors: (A, 4) xyxy.

    Returns:
        (A,) bool.
    """
    centers = _centers(anchors)
    valid = np.zeros(len(anchors), dtype=bool)
    for g in range(len(gt_boxes)):
        x1, y1, x2, y2 = gt_boxes[g]
        margin = np.minimum(np.minimum(centers[:, 0] - x1, centers[:, 1] - y1), np.minimum(x2 - centers[:, 0], y2 - centers[:, 1]))
        valid |= margin > 0
    return valid


def predicted_ious(gt_boxes, pred_boxes):
    """IoU between each GT and each prior's decoded prediction (specs/dsl.md §2.2).

    Args:
        gt_boxes: (G, 4) float64 xyxy.
        pred_boxes: (V, 4) float64 xyxy; non-finite rows allowed.

    Returns:
        (G, V) float64 in [0, 1] (specs/boxes.md §2); 0 where the prediction is not finite.
    """
    finite = np.isfinite(pred_boxes).all(axis=-1)
    safe_boxes = np.where(finite[..., None], pred_boxes, 0.0)  # placeholder rows, zeroed below
    return np.where(finite[None, :], box_iou(gt_boxes, safe_boxes), 0.0)


def binary_cross_entropy(probabilities, targets):
    """Elementwise binary cross-entropy of probabilities (specs/dsl.md §2.3).

    ``(t - 1) * max(log(1 - p), -100) - t * max(log(p), -100)``: the formula and clamp of
    torch's ``binary_cross_entropy``, finite for p in [0, 1].

    Args:
        probabilities, targets: broadcastable float64 arrays in [0, 1].

    Returns:
        the losses, >= 0.
    """
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(probabilities), BCE_LOG_MIN)
        log_not_p = np.maximum(np.log(1.0 - probabilities), BCE_LOG_MIN)
    return (targets - 1.0) * log_not_p - targets * log_p


def negative_costs(pred_scores):
    """Each prior's classification cost of every class taken as a negative (specs/dsl.md §2.3).

    ``n[v, j] = BCE(p_vj, 0) * (0 - p_vj) ** 2``: the term of class ``j`` in the soft
    classification cost of every GT whose class is not ``j``.

    Args:
        pred_scores: (V, K) float64 probabilities.

    Returns:
        (V, K) float64 >= 0.
    """
    scale = 0.0 - pred_scores
    return binary_cross_entropy(pred_scores, 0.0) * (scale * scale)


def soft_classification_cost(ious, pred_scores, negative_costs, gt_labels):
    """Soft classification cost of each (GT, prior) pair (specs/dsl.md §2.3).

    With the soft label ``y = one_hot(c_g) * IoU``, mmdetection's cost is
    ``sum_j BCE(p_j, y_j) * (y_j - p_j) ** 2``. Only the GT's class has a non-zero label,
    so it is computed as ``sum_j n[v, j] - n[v, c_g] + BCE(p_c, IoU) * (IoU - p_c) ** 2``
    (``n`` from ``negative_costs``), without a (G, V, K) array.

    Args:
        ious: (G, V) float64, IoU of each prior's prediction with each GT.
        pred_scores: (V, K) float64 probabilities.
        negative_costs: (V, K) float64, ``negative_costs(pred_scores)``.
        gt_labels: (G,) int64 in 0..K-1.

    Returns:
        (G, V) float64 >= 0 (up to rounding).
    """
    negative_total = negative_costs.sum(axis=-1)  # (V,)
    scores = pred_scores[:, gt_labels].T  # (G, V): p of each GT's class
    scale = ious - scores
    positive = binary_cross_entropy(scores, ious) * (scale * scale)
    return (negative_total[None, :] - negative_costs[:, gt_labels].T) + positive


def iou_cost(ious, iou_weight):
    """``-log(IoU + 1e-7) * iou_weight`` (specs/dsl.md §2.4).

    Args:
        ious: (G, V) float64 in [0, 1].
        iou_weight: float >= 0.

    Returns:
        (G, V) float64 in [-1e-7, 16.12] * iou_weight (slightly negative at IoU 1).
    """
    return -np.log(ious + DSL_IOU_EPS) * iou_weight


def soft_center_prior(gt_boxes, prior_centers, prior_strides, soft_center_radius):
    """``10 ** (d / s - soft_center_radius)`` (specs/dsl.md §2.5).

    ``d = sqrt(dx * dx + dy * dy)`` is the Euclidean distance between the prior centre and
    the GT centre, ``s`` the prior's stride (mmdetection's form of the paper's Eq. 3).

    Args:
        gt_boxes: (G, 4) float64 xyxy.
        prior_centers: (V, 2) float64 (x, y).
        prior_strides: (V,) float64 > 0.
        soft_center_radius: float.

    Returns:
        (G, V) float64 > 0.
    """
    gt_centers = _centers(gt_boxes)
    dx = prior_centers[None, :, 0] - gt_centers[:, None, 0]
    dy = prior_centers[None, :, 1] - gt_centers[:, None, 1]
    distance = np.sqrt(dx * dx + dy * dy) / prior_strides[None, :]
    return np.power(DSL_CENTER_BASE, distance - soft_center_radius)


def dynamic_ks(ious, topk):
    """Dynamic k of each GT: ``max(1, floor(sum of its min(topk, V) largest IoUs))``
    (specs/dsl.md §2.6).

    The IoUs are summed one by one from the largest down, so the sum is reproducible.

    Args:
        ious: (G, V) float64 in [0, 1], V >= 1 valid priors.
        topk: int >= 1.

    Returns:
        (G,) int64 in 1..min(topk, V).
    """
    largest = -np.sort(-ious, axis=-1)[:, : min(topk, ious.shape[1])]
    total = np.zeros(len(ious))
    for column in range(largest.shape[1]):
        total = total + largest[:, column]
    return np.maximum(np.floor(total), 1.0).astype(np.int64)


def select_lowest_costs(cost, ks, num_candidates):
    """Each GT's ``k_g`` lowest-cost priors (specs/dsl.md §2.7).

    Ordered by (cost, prior position): among equal costs the lower position (the lower
    anchor index) comes first (specs/conventions.md §5.1).

    Args:
        cost: (G, V) float64.
        ks: (G,) int64, each <= min(num_candidates, V).
        num_candidates: C, the width of the result.

    Returns:
        (G, C) int64 positions into the V priors, the first ``k_g`` of row g used, the
        rest -1.
    """
    positions = np.full((len(cost), num_candidates), -1, dtype=np.int64)
    for g in range(len(cost)):
        order = np.argsort(cost[g], kind="stable")  # stable: equal costs keep position order
        positions[g, : ks[g]] = order[: ks[g]]
    return positions


def lowest_cost_gts(cost):
    """The GT of lowest cost for each prior, among all GTs (specs/dsl.md §2.8).

    Among equal costs the lower GT index wins (specs/conventions.md §5.2).

    Args:
        cost: (G, V) float64, G >= 1.

    Returns:
        (V,) int64 in 0..G-1.
    """
    return np.argmin(cost, axis=0).astype(np.int64)  # argmin returns the first minimum


def resolve_conflicts(positions, lowest_gt, num_priors):
    """The GT of each prior after every GT took its priors (specs/dsl.md §2.8).

    A prior taken by no GT is background; by one GT, it goes to that GT; by several GTs,
    it goes to ``lowest_gt`` (the lowest cost among **all** GTs, which may be a GT that
    did not take it), as mmdetection's ``dynamic_k_matching`` does.

    Args:
        positions: (G, C) int64, each GT's selected priors (``select_lowest_costs``), -1
            padded.
        lowest_gt: (V,) int64, ``lowest_cost_gts(cost)``.
        num_priors: V.

    Returns:
        (V,) int64 in {BACKGROUND, 0..G-1}.
    """
    claims = np.zeros(num_priors, dtype=np.int64)
    claimant = np.full(num_priors, BACKGROUND, dtype=np.int64)
    for g in range(len(positions)):
        taken = positions[g][positions[g] >= 0]
        claims[taken] += 1
        claimant[taken] = g
    return np.where(claims > 1, lowest_gt, claimant)

