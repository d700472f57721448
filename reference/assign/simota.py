"""SimOTA: YOLOX's simplified optimal-transport assignment (specs/simota.md).

Candidates are the anchors whose centre lies inside some GT box or inside the square of
half-side ``center_radius * stride`` around some GT centre (one set for the image). For
each GT and candidate the cost is ``cls_weight * BCE(scores, one-hot) + iou_weight *
(-log(IoU + 1e-8)) + 1e5 * (not in the GT's box and centre region)``, with the IoU of the
candidate's decoded prediction. Each GT takes its ``k_g = max(1, int(sum of its top-q
IoUs))`` cheapest candidates (ties: lower anchor index); an anchor taken by several GTs goes
to the GT with the lowest cost over **all** GTs (ties: lower GT index), as the published
code does. The soft target of a positive is the IoU of its prediction with its GT.

The predictions come decoded and detached: ``pred_boxes`` are the caller's decoded boxes
(as Dynamic ATSS, specs/dynamic_atss.md §1) and ``pred_scores`` the sigmoid of its
classification logits.
"""
import numbers

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
)

#: Half-side of the centre region, in strides (YOLOX ``center_radius``).
SIMOTA_CENTER_RADIUS = 2.5
#: How many of a GT's largest IoUs are summed for its dynamic k (YOLOX ``n_candidate_k``).
SIMOTA_CANDIDATE_TOPK = 10
#: Weight of the IoU cost (YOLOX ``3.0``).
SIMOTA_IOU_WEIGHT = 3.0
#: Weight of the classification cost (YOLOX ``1``).
SIMOTA_CLS_WEIGHT = 1.0
#: Cost added to a pair whose anchor centre is not inside both the GT box and its centre
#: region (YOLOX ``100000.0``; mmdetection uses ``1e8``).
SIMOTA_OUTSIDE_COST = 100000.0
#: Added to the IoU inside the log of the IoU cost (YOLOX ``1e-8``; mmdetection ``1e-7``).
SIMOTA_IOU_EPS = 1e-8


def assign_simota(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_labels,
    pred_boxes,
    pred_scores,
    *,
    center_radius=SIMOTA_CENTER_RADIUS,
    candidate_topk=SIMOTA_CANDIDATE_TOPK,
    iou_weight=SIMOTA_IOU_WEIGHT,
    cls_weight=SIMOTA_CLS_WEIGHT,
):
    """Assign anchors to GTs with SimOTA (specs/simota.md §2).

    Args:
        anchors: (A, 4) xyxy, level-major; an anchor's point is its centre and its stride
            is its width / OCTAVE_BASE_SCALE (§2.1).
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (§4).
        gt_labels: (G,) integer classes in 0..K-1.
        pred_boxes: (A, 4) xyxy, the network's decoded box predictions for this image, one
            per anchor. Rows with a NaN or Inf are allowed: such a prediction has IoU 0 with
            every GT. A finite row must have x1 <= x2 and y1 <= y2.
        pred_scores: (A, K) predicted class probabilities in [0, 1] (sigmoid of the logits).
        center_radius: half-side of the centre region in strides, a number >= 0.
        candidate_topk: q, how many of a GT's largest IoUs make its dynamic k (int >= 1).
        iou_weight: weight of the IoU cost, >= 0.
        cls_weight: weight of the classification cost, >= 0.

    Returns:
        Assignment with matched_gt (A,) int64 in {-1, 0..G-1}; matched_metric (A,) the IoU
        of the anchor's prediction with its assigned GT (the soft classification target; 0
        for background); gt_threshold (G,) each GT's dynamic k as a float (NaN when the image
        has no candidate); candidate_index (G, C) int64, C = min(candidate_topk, A): the
        anchors each GT selected (before conflicts) in (cost, anchor index) order, -1
        padded.

    Raises:
        ValueError: bad boxes, labels, scores or level counts, ``pred_boxes`` not (A, 4) real
            numbers or a finite inverted row (named), a bad option (named).
    """
    anchors = as_boxes(anchors, "anchors")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    check_level_counts(num_anchors_per_level, len(anchors), "num_anchors_per_level")
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (len(anchors), 4))
    pred_scores = as_class_scores(pred_scores, "pred_scores", (len(anchors),))
    gt_labels = as_class_labels(gt_labels, "gt_labels", (len(gt_boxes),), pred_scores.shape[1])
    center_radius = check_number(center_radius, "center_radius", minimum=0.0)
    candidate_topk = _check_count(candidate_topk, "candidate_topk")
    iou_weight = check_number(iou_weight, "iou_weight", minimum=0.0)
    cls_weight = check_number(cls_weight, "cls_weight", minimum=0.0)
    num_slots = min(candidate_topk, len(anchors))
    if len(gt_boxes) == 0:  # §4.1
        return empty_assignment(len(anchors), 0, num_slots)

    centers = _centers(anchors)
    strides = prior_strides(anchors)
    in_boxes = inside_boxes(gt_boxes, centers)  # (G, A)
    in_centers = inside_centers(gt_boxes, centers, strides, center_radius)  # (G, A)
    candidates = np.flatnonzero((in_boxes | in_centers).any(axis=0))  # (N,) ascending
    if len(candidates) == 0:  # §4.2
        return empty_assignment(len(anchors), len(gt_boxes), num_slots)

    ious = prediction_ious(gt_boxes, pred_boxes[candidates])  # (G, N)
    cls_cost = classification_cost(pred_scores[candidates], gt_labels)
    inside = in_boxes[:, candidates] & in_centers[:, candidates]
    cost = matching_cost(cls_cost, ious, inside, iou_weight, cls_weight)
    k = dynamic_k(ious, candidate_topk)
    chosen = lowest_cost(cost, k, num_slots)  # (G, C) positions into ``candidates``
    owner = _resolve_conflicts(cost, chosen)  # (N,)

    matched_gt = np.full(len(anchors), BACKGROUND, dtype=np.int64)
    matched_metric = np.zeros(len(anchors))
    positive = np.flatnonzero(owner >= 0)
    matched_gt[candidates[positive]] = owner[positive]
    matched_metric[candidates[positive]] = ious[owner[positive], positive]  # §3
    candidate_index = np.where(chosen >= 0, candidates[np.maximum(chosen, 0)], -1)
    return Assignment(matched_gt, matched_metric, k.astype(np.float64), candidate_index)


# ---------------------------------------------------------------------------------------
# step helpers; inputs are already validated float64 arrays


def prior_strides(anchors):
    """The stride of each anchor: its width / OCTAVE_BASE_SCALE (specs/simota.md §2.1).

    The ATSS-style anchors are squares of side ``OCTAVE_BASE_SCALE * stride`` (8 x stride),
    so this is the stride of the anchor's level, exactly.

    Args:
        anchors: (A, 4) xyxy.

    Returns:
        (A,) float64.
    """
    return (anchors[..., 2] - anchors[..., 0]) / OCTAVE_BASE_SCALE


def inside_boxes(gt_boxes, points):
    """Whether each point lies strictly inside each GT box (specs/simota.md §2.1).

    Args:
        gt_boxes: (G, 4) xyxy.
        points: (N, 2) (x, y).

    Returns:
        (G, N) bool, ``min(x - x1, y - y1, x2 - x, y2 - y) > 0``. A zero-area GT contains no
        point.
    """
    x, y = points[..., 0], points[..., 1]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))
    return np.minimum(np.minimum(x - x1, y - y1), np.minimum(x2 - x, y2 - y)) > 0.0


def inside_centers(gt_boxes, points, strides, center_radius):
    """Whether each point lies strictly inside each GT's centre region (specs/simota.md §2.1).

    The region is the square of half-side ``r = center_radius * stride`` (the point's stride)
    around the GT centre ``(cx, cy)``: ``min(x - (cx - r), y - (cy - r), (cx + r) - x,
    (cy + r) - y) > 0``.

    Args:
        gt_boxes: (G, 4) xyxy.
        points: (N, 2) (x, y).
        strides: (N,) the stride of each point.
        center_radius: float >= 0.

    Returns:
        (G, N) bool. Nothing is inside when ``center_radius = 0``.
    """
    x, y = points[..., 0], points[..., 1]
    centers = _centers(gt_boxes)
    cx, cy = centers[..., 0, None], centers[..., 1, None]
    radius = center_radius * strides
    left, top = x - (cx - radius), y - (cy - radius)
    right, bottom = (cx + radius) - x, (cy + radius) - y
    return np.minimum(np.minimum(left, top), np.minimum(right, bottom)) > 0.0


def prediction_ious(gt_boxes, pred_boxes):
    """IoU between each GT and each decoded prediction (specs/simota.md §2.2).

    Args:
        gt_boxes: (G, 4) xyxy.
        pred_boxes: (N, 4) xyxy; non-finite rows allowed.

    Returns:
        (G, N) float64 in [0, 1]; 0 where the prediction is not finite.
    """
    finite = np.isfinite(pred_boxes).all(axis=-1)
    safe_boxes = np.where(finite[..., None], pred_boxes, 0.0)  # placeholder rows, zeroed below
    return np.where(finite, box_iou(gt_boxes, safe_boxes), 0.0)


def classification_cost(pred_scores, gt_labels):
    """Binary cross-entropy of the scores against each GT's one-hot class, summed over the
    K classes (specs/simota.md §2.3).

    ``-sum_j [y_j log p_j + (1 - y_j) log(1 - p_j)]`` with ``y`` the one-hot of the GT's
    class and each log clamped below at -100 (as torch's BCE; ``log(1 - p)`` is
    ``log1p(-p)``). Computed as ``-((T - log(1 - p_c)) + log p_c)`` with
    ``T = sum_j log(1 - p_j)`` summed left to right over the classes.

    Args:
        pred_scores: (N, K) in [0, 1].
        gt_labels: (G,) int64 in 0..K-1.

    Returns:
        (G, N) float64 >= 0.
    """
    with np.errstate(divide="ignore"):  # log(0) = -inf, clamped to -100
        log_pos = np.maximum(np.log(pred_scores), BCE_LOG_MIN)
        log_neg = np.maximum(np.log1p(-pred_scores), BCE_LOG_MIN)
    total = np.cumsum(log_neg, axis=-1)[..., -1]  # (N,)
    return -((total - log_neg[:, gt_labels].T) + log_pos[:, gt_labels].T)


def matching_cost(cls_cost, ious, inside, iou_weight, cls_weight):
    """The SimOTA cost of each GT-candidate pair (specs/simota.md §2.3).

    ``cls_weight * cls_cost + iou_weight * (-log(IoU + 1e-8))``, plus 1e5 where the
    candidate is not inside both the GT's box and its centre region.

    Args:
        cls_cost, ious: (G, N) float64.
        inside: (G, N) bool, inside the GT box and its centre region.
        iou_weight, cls_weight: floats >= 0.

    Returns:
        (G, N) float64, finite.
    """
    cost = cls_weight * cls_cost + iou_weight * -np.log(ious + SIMOTA_IOU_EPS)
    return cost + np.where(inside, 0.0, SIMOTA_OUTSIDE_COST)


def dynamic_k(ious, candidate_topk):
    """Each GT's number of positives before conflicts (specs/simota.md §2.4).

    ``k_g = max(1, floor(sum of the q largest IoUs of GT g))``, ``q = min(candidate_topk, N)``;
    the q IoUs are summed in descending order, left to right.

    Args:
        ious: (G, N) float64, N >= 1.
        candidate_topk: int >= 1.

    Returns:
        (G,) int64 in 1..q.
    """
    count = min(candidate_topk, ious.shape[-1])
    largest = -np.sort(-ious, axis=-1)[..., :count]
    total = largest[..., 0]
    for column in range(1, count):
        total = total + largest[..., column]
    return np.maximum(np.floor(total), 1).astype(np.int64)


def lowest_cost(cost, k, num_slots):
    """The ``k_g`` cheapest candidates of each GT (specs/simota.md §2.5).

    Candidates are ordered by (cost, candidate position); candidate positions follow the
    anchor index, so among equal costs the lower anchor index comes first.

    Args:
        cost: (G, N) float64.
        k: (G,) int64 with ``k_g <= min(num_slots, N)``.
        num_slots: C, the width of the result.

    Returns:
        (G, C) int64 candidate positions, the first ``k_g`` of each row in that order, -1
        after them.
    """
    chosen = np.full((cost.shape[0], num_slots), -1, dtype=np.int64)
    for g in range(cost.shape[0]):
        chosen[g, : k[g]] = np.argsort(cost[g], kind="stable")[: k[g]]
    return chosen


def _resolve_conflicts(cost, chosen):
    """Give each candidate to at most one GT (specs/simota.md §2.6).

    A candidate chosen by exactly one GT goes to it; one chosen by several GTs goes to the
    GT with the lowest cost among **all** GTs (YOLOX's ``torch.min(cost[:, anchor_matching_gt
    > 1], dim=0)``), among equal costs to the lower GT index (``np.argmin`` returns the first).

    Args:
        cost: (G, N) float64.
        chosen: (G, C) int64 candidate positions, -1 padded.

    Returns:
        (N,) int64, the owning GT of each candidate or BACKGROUND (-1).
    """
    num_gts, num_candidates = cost.shape
    selected = np.zeros((num_gts, num_candidates), dtype=bool)
    for g in range(num_gts):
        selected[g, chosen[g][chosen[g] >= 0]] = True
    count = selected.sum(axis=0)
    owner = np.where(count == 1, np.argmax(selected, axis=0), BACKGROUND)  # the single chooser
    contested = np.flatnonzero(count > 1)
    owner[contested] = np.argmin(cost[:, contested], axis=0)  # over all GTs, first minimum
    return owner.astype(np.int64)


def _check_count(value, name):
    """``value`` must be an int >= 1 (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return int(value)
