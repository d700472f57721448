"""Dynamic ATSS: ATSS on combined IoUs of predictions and anchors (specs/dynamic_atss.md).

Candidates are the ATSS candidates (closest anchor centres per level). Each candidate has a
predicted IoU ``P`` (decoded prediction vs GT) and an anchor IoU ``A``; the combined IoU is
``w_p * P + w_a * A`` (paper Eq. 1) and the threshold sums the parts' statistics,
``w_p * (mean(P) + std(P)) + w_a * (mean(A) + std(A))`` (paper Eqs. 2-4). A candidate is
positive when its combined IoU reaches the threshold and its anchor centre lies inside the
GT; several GTs -> highest combined IoU, then lower GT index.
"""
import numpy as np

from reference.assign.atss import (
    candidate_ious,
    centers_inside,
    check_nonnegative,
    check_topk,
    mean_plus_std_threshold,
    resolve_multiple_matches,
    select_candidates,
)
from reference.assign.result import Assignment, empty_assignment
from reference.boxes import aligned_box_iou
from reference.coders import decode_deltas
from reference.conventions import ATSS_INSIDE_EPS, ATSS_TOPK, DELTA_STDS
from reference.validation import as_boxes, as_values, check_level_counts

#: The dynamic weight schedules of the paper's Table 3.
DYNAMIC_WEIGHT_SCHEDULES = ("up", "down")


def assign_dynamic_atss(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    pred_deltas,
    *,
    topk=ATSS_TOPK,
    pred_weight=1.0,
    anchor_weight=1.0,
    stds=DELTA_STDS,
    inside_eps=ATSS_INSIDE_EPS,
):
    """Assign anchors to GTs with Dynamic ATSS (specs/dynamic_atss.md §2).

    Args:
        anchors: (A, 4) xyxy with positive width and height, level-major.
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (they get no positive).
        pred_deltas: (A, 4) raw delta-xywh regression outputs of the network for this
            image (detached by the caller's framework; here they are plain numbers).
            Non-finite values are allowed: an anchor whose decoded box is not finite has
            predicted IoU 0 (§2.2).
        topk: candidates per level and GT (int >= 1).
        pred_weight: ``w_p`` >= 0, weight of the predicted IoUs (paper Table 3).
        anchor_weight: ``w_a`` >= 0, weight of the anchor IoUs.
        stds: delta-coder standard deviations (4 positive numbers).
        inside_eps: strict inside margin of the anchor centre, pixels.

    Returns:
        Assignment with matched_gt (A,) int64 in {-1, 0..G-1}; matched_metric (A,) float64
        the combined IoU with the assigned GT (0 for background), in [0, w_p + w_a];
        gt_threshold (G,) float64 (NaN when C = 0); candidate_index (G, C) int64 exactly as
        ATSS.

    Raises:
        ValueError: bad boxes or level counts, ``pred_deltas`` not (A, 4) real, zero-size
            anchors, a bad option (named).
    """
    anchors = as_boxes(anchors, "anchors")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    counts = check_level_counts(num_anchors_per_level, len(anchors), "num_anchors_per_level")
    pred_deltas = check_pred_deltas(pred_deltas, len(anchors))
    topk = check_topk(topk)
    pred_weight = check_nonnegative(pred_weight, "pred_weight")
    anchor_weight = check_nonnegative(anchor_weight, "anchor_weight")
    stds = check_stds(stds)
    inside_eps = check_nonnegative(inside_eps, "inside_eps")
    check_positive_size(anchors)
    num_candidates = sum(min(topk, n) for n in counts)
    if len(gt_boxes) == 0:  # §4.1
        return empty_assignment(len(anchors), 0, num_candidates)

    candidate_index = select_candidates(gt_boxes, anchors, counts, topk)
    anchor_ious = candidate_ious(gt_boxes, anchors, candidate_index)
    pred_boxes = decode_predictions(anchors, pred_deltas, stds, candidate_index)
    pred_ious = predicted_ious(gt_boxes, pred_boxes, candidate_index)
    combined = combine_ious(pred_ious, anchor_ious, pred_weight, anchor_weight)
    threshold = combined_threshold(pred_ious, anchor_ious, pred_weight, anchor_weight)
    is_positive = (combined >= threshold[:, None]) & centers_inside(gt_boxes, anchors, candidate_index, inside_eps)
    matched_gt, matched_metric = resolve_multiple_matches(candidate_index, combined, is_positive, len(anchors))
    return Assignment(matched_gt, matched_metric, threshold, candidate_index)


def dynamic_atss_soft_targets(anchors, gt_boxes, pred_deltas, matched_gt, *, stds=DELTA_STDS):
    """Soft classification / IoU-branch targets of Dynamic ATSS (specs/dynamic_atss.md §3).

    The target of a positive anchor is the IoU between its decoded (detached) prediction
    and its assigned GT; it is 0 for background and ignored anchors, and 0 where the decoded
    prediction is not finite.

    Args:
        anchors: (A, 4) xyxy with positive width and height.
        gt_boxes: (G, 4) xyxy.
        pred_deltas: (A, 4) raw regression outputs (non-finite allowed).
        matched_gt: (A,) int, ``Assignment.matched_gt`` (values in {-2, -1, 0..G-1}).
        stds: delta-coder standard deviations.

    Returns:
        (A,) float64 in [0, 1].
    """
    anchors = as_boxes(anchors, "anchors")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    pred_deltas = check_pred_deltas(pred_deltas, len(anchors))
    stds = check_stds(stds)
    check_positive_size(anchors)
    matched_gt = np.asarray(matched_gt)
    if matched_gt.shape != (len(anchors),) or not np.issubdtype(matched_gt.dtype, np.integer):
        raise ValueError(f"matched_gt: expected ({len(anchors)},) integers, got {matched_gt.shape} {matched_gt.dtype}")
    if ((matched_gt < -2) | (matched_gt >= len(gt_boxes))).any():
        row = int(np.flatnonzero((matched_gt < -2) | (matched_gt >= len(gt_boxes)))[0])
        raise ValueError(f"matched_gt: row {row} is not in -2..{len(gt_boxes) - 1}: {int(matched_gt[row])}")
    targets = np.zeros(len(anchors))
    positive = np.flatnonzero(matched_gt >= 0)
    if len(positive) == 0:
        return targets
    with np.errstate(over="ignore", invalid="ignore"):
        pred_boxes = decode_deltas(anchors[positive], pred_deltas[positive], stds)
    finite = np.isfinite(pred_boxes).all(axis=1)
    targets[positive[finite]] = aligned_box_iou(pred_boxes[finite], gt_boxes[matched_gt[positive[finite]]])
    return targets


def dynamic_weight(schedule, iteration, max_iterations):
    """The dynamic weights of the paper's Table 3 (specs/dynamic_atss.md §5).

    Args:
        schedule: ``"up"`` (``D_up = iteration / max_iterations``) or ``"down"``
            (``D_down = 1 - iteration / max_iterations``).
        iteration: int in ``0..max_iterations`` (the current iteration, 0-based).
        max_iterations: int >= 1.

    Returns:
        float in [0, 1].

    Raises:
        ValueError: an unknown schedule, a non-int or out-of-range iteration or
            ``max_iterations``.
    """
    if schedule not in DYNAMIC_WEIGHT_SCHEDULES:
        raise ValueError(f"schedule: expected one of {DYNAMIC_WEIGHT_SCHEDULES}, got {schedule!r}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, (int, np.integer)) or max_iterations < 1:
        raise ValueError(f"max_iterations: expected an int >= 1, got {max_iterations!r}")
    if (
        isinstance(iteration, bool)
        or not isinstance(iteration, (int, np.integer))
        or not 0 <= iteration <= max_iterations
    ):
        raise ValueError(f"iteration: expected an int in 0..{max_iterations}, got {iteration!r}")
    progress = int(iteration) / int(max_iterations)
    return progress if schedule == "up" else 1.0 - progress


# ---------------------------------------------------------------------------------------
# step helpers


def decode_predictions(anchors, pred_deltas, stds, candidate_index):
    """Decoded predicted boxes of the candidate anchors (specs/dynamic_atss.md §2.2).

    Only candidates can become positive, so only their predictions are decoded; every
    other row is NaN (it is never read).

    Args:
        anchors: (A, 4) float64 xyxy, positive size.
        pred_deltas: (A, 4) float64 raw regression outputs, non-finite allowed.
        stds: 4 floats.
        candidate_index: (G, C) int64.

    Returns:
        (A, 4) float64 xyxy boxes; rows may be non-finite.
    """
    pred_boxes = np.full(anchors.shape, np.nan)
    rows = np.unique(candidate_index)
    if len(rows):
        # Garbage deltas may overflow to Inf / NaN; that is handled by predicted_ious.
        with np.errstate(over="ignore", invalid="ignore"):
            pred_boxes[rows] = decode_deltas(anchors[rows], pred_deltas[rows], stds)
    return pred_boxes


def predicted_ious(gt_boxes, pred_boxes, candidate_index):
    """PIoU: IoU between each GT and its candidates' decoded predictions (§2.2).

    Args:
        gt_boxes: (G, 4) float64 xyxy.
        pred_boxes: (A, 4) float64 xyxy; non-finite rows allowed.
        candidate_index: (G, C) int64.

    Returns:
        (G, C) float64 in [0, 1]; 0 where the prediction is not finite.
    """
    finite = np.isfinite(pred_boxes).all(axis=1)
    safe_boxes = np.where(finite[:, None], pred_boxes, 0.0)  # placeholder rows, zeroed below
    ious = candidate_ious(gt_boxes, safe_boxes, candidate_index)
    return np.where(finite[candidate_index], ious, 0.0)


def combine_ious(pred_ious, anchor_ious, pred_weight, anchor_weight):
    """CIoU = w_p * PIoU + w_a * AIoU (paper Eq. 1; specs/dynamic_atss.md §2.3).

    Args:
        pred_ious, anchor_ious: (G, C) float64.
        pred_weight, anchor_weight: floats >= 0.

    Returns:
        (G, C) float64 in [0, w_p + w_a].
    """
    return pred_weight * pred_ious + anchor_weight * anchor_ious


def combined_threshold(pred_ious, anchor_ious, pred_weight, anchor_weight):
    """Sum of the parts' statistics (paper Eqs. 2-4; specs/dynamic_atss.md §2.4).

    ``w_p * (mean(P) + std(P)) + w_a * (mean(A) + std(A))``, each with the ATSS
    ``mean_plus_std_threshold`` (sample std; 0 for a single candidate).

    Args:
        pred_ious, anchor_ious: (G, C) float64.
        pred_weight, anchor_weight: floats >= 0.

    Returns:
        (G,) float64; NaN when C = 0.
    """
    return pred_weight * mean_plus_std_threshold(pred_ious) + anchor_weight * mean_plus_std_threshold(anchor_ious)


# ---------------------------------------------------------------------------------------
# option checks


def check_pred_deltas(pred_deltas, num_anchors):
    """``pred_deltas`` must be (A, 4) real numbers; non-finite values are allowed."""
    pred_deltas = as_values(pred_deltas, "pred_deltas", ndim=2, width=4, finite=False)
    if len(pred_deltas) != num_anchors:
        raise ValueError(f"pred_deltas: expected {num_anchors} rows (one per anchor), got {len(pred_deltas)}")
    return pred_deltas


def check_stds(stds):
    """``stds`` must be 4 finite positive numbers."""
    try:
        values = np.asarray(stds, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (4,) or not np.isfinite(values).all() or (values <= 0).any():
        raise ValueError(f"stds: expected 4 finite positive numbers, got {stds!r}")
    return tuple(float(v) for v in values)


def check_positive_size(anchors):
    """Anchors must have positive width and height: the delta coder divides by them."""
    flat = (anchors[:, 2] <= anchors[:, 0]) | (anchors[:, 3] <= anchors[:, 1])
    if flat.any():
        row = int(np.flatnonzero(flat)[0])
        raise ValueError(f"anchors: row {row} has zero width or height: {anchors[row].tolist()}")

