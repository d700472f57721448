"""ATSS: adaptive training sample selection (specs/atss.md).

For each GT: per pyramid level the ``topk`` anchors whose centres are closest to the GT
centre are its candidates; the GT's threshold is the mean plus the sample standard
deviation of the candidates' IoUs; a candidate is positive when its IoU reaches the
threshold and its centre lies inside the GT. An anchor claimed by several GTs goes to the
highest IoU, then to the lower GT index.

The step helpers below (``select_candidates``, ``candidate_ious``,
``mean_plus_std_threshold``, ``centers_inside``, ``resolve_multiple_matches``) are reused by
Dynamic ATSS (``assign/dynamic_atss.py``).
"""
import numpy as np

from reference.assign.result import Assignment, empty_assignment
from reference.boxes import _centers, box_iou
from reference.conventions import ATSS_INSIDE_EPS, ATSS_TOPK, BACKGROUND
from reference.validation import as_boxes, check_level_counts, check_number, check_topk


def assign_atss(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    *,
    topk=ATSS_TOPK,
    inside_eps=ATSS_INSIDE_EPS,
):
    """Assign anchors to GTs with ATSS (specs/atss.md §2).

    Args:
        anchors: (A, 4) xyxy, all levels concatenated level-major (specs/conventions.md §3).
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (they get no positive).
        topk: candidates per level and GT, an int >= 1; a level with fewer anchors gives
            all of them (``min(topk, A_l)``).
        inside_eps: an anchor centre is inside a GT when ``min(l, t, r, b) > inside_eps``
            (pixels, strict).

    Returns:
        Assignment with
        matched_gt (A,) int64 in {-1, 0..G-1} (ATSS never ignores),
        matched_metric (A,) IoU with the assigned GT (0 for background),
        gt_threshold (G,) mean + sample std of the candidate IoUs (NaN when C = 0),
        candidate_index (G, C) int64, C = sum_l min(topk, A_l), level by level, within a
        level in (distance, anchor index) order.

    Raises:
        ValueError: bad boxes, level counts that do not sum to A, ``topk < 1``, a negative
            or non-finite ``inside_eps``.
    """
    anchors = as_boxes(anchors, "anchors")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    counts = check_level_counts(num_anchors_per_level, len(anchors), "num_anchors_per_level")
    topk = check_topk(topk)
    inside_eps = check_number(inside_eps, "inside_eps", minimum=0.0)
    num_candidates = sum(min(topk, n) for n in counts)
    if len(gt_boxes) == 0:  # §4.1: nothing to match; every anchor is background
        return empty_assignment(len(anchors), 0, num_candidates)

    candidate_index = select_candidates(gt_boxes, anchors, counts, topk)
    ious = candidate_ious(gt_boxes, anchors, candidate_index)
    threshold = mean_plus_std_threshold(ious)
    is_positive = (ious >= threshold[..., None]) & centers_inside(gt_boxes, anchors, candidate_index, inside_eps)
    matched_gt, matched_metric = resolve_multiple_matches(candidate_index, ious, is_positive, len(anchors))
    return Assignment(matched_gt, matched_metric, threshold, candidate_index)


# ---------------------------------------------------------------------------------------
# step helpers (shared with Dynamic ATSS); inputs are already validated float64 arrays


def select_candidates(gt_boxes, anchors, num_anchors_per_level, topk):
    """Candidate anchors of each GT (specs/atss.md §2.1).

    On each level, the ``min(topk, A_l)`` anchors whose centres have the smallest
    **squared** Euclidean distance ``dx * dx + dy * dy`` to the GT centre, ordered by
    (squared distance, anchor index): among equal distances the lower anchor index comes
    first (specs/conventions.md §5.1).

    Args:
        gt_boxes: (G, 4) float64 xyxy.
        anchors: (A, 4) xyxy.
        num_anchors_per_level: L ints summing to A.
        topk: int >= 1.

    Returns:
        (G, C) int64 anchor indices into ``anchors``, C = sum_l min(topk, A_l); level 0's
        candidates first.
    """
    gt_centers = _centers(gt_boxes)
    anchor_centers = _centers(anchors)
    num_candidates = sum(min(topk, n) for n in num_anchors_per_level)
    candidate_index = np.zeros((len(gt_boxes), num_candidates), dtype=np.int64)
    for g in range(len(gt_boxes)):
        chosen = []
        start = 0
        for count in num_anchors_per_level:
            dx = anchor_centers[start : start + count, 0] - gt_centers[g, 0]
            dy = anchor_centers[start : start + count, 1] - gt_centers[g, 1]
            squared_distance = dx * dx + dy * dy
            # A stable sort keeps equal distances in anchor-index order.
            order = np.argsort(squared_distance, kind="stable")[: min(topk, count)]
            chosen.append(start + order)
            start += count
        candidate_index[g] = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return candidate_index


def candidate_ious(gt_boxes, boxes, candidate_index):
    """IoU between each GT and the boxes of its candidates (specs/atss.md §2.2).

    Args:
        gt_boxes: (G, 4) float64 xyxy.
        boxes: (A, 4) xyxy, one box per anchor (the anchors themselves for ATSS;
            finite decoded predictions for Dynamic ATSS).
        candidate_index: (G, C) int64.

    Returns:
        (G, C) float64 in [0, 1]: ``IoU(gt_boxes[g], boxes[candidate_index[g, c]])``; 0 where
        the union is 0 (specs/boxes.md §2).
    """
    ious = np.zeros(candidate_index.shape)
    for g in range(len(gt_boxes)):
        ious[g] = box_iou(gt_boxes[g : g + 1], boxes[candidate_index[g]])[0]
    return ious


def mean_plus_std_threshold(values):
    """Mean plus sample standard deviation of each row (specs/atss.md §2.3).

    ``mean = sum / n`` and ``std = sqrt(sum((v - mean) ** 2) / (n - 1))`` (sample std,
    divisor ``n - 1``; specs/conventions.md §6). Both sums run left to right in candidate
    order, so the two trees agree bit for bit on CPU in float64.

    Args:
        values: (G, C) float64.

    Returns:
        (G,) float64 ``mean + std``; ``std = 0`` when C = 1 (the threshold is the single
        value); NaN when C = 0 (no candidates, no threshold).
    """
    count = values.shape[-1]
    if count == 0:
        return np.full(values.shape[:-1], np.nan)
    mean = np.cumsum(values, axis=-1)[..., -1] / count
    if count == 1:
        return mean + 0.0
    deviation = values - mean[..., None]
    variance = np.cumsum(deviation * deviation, axis=-1)[..., -1] / (count - 1)
    return mean + np.sqrt(variance)


def centers_inside(gt_boxes, anchors, candidate_index, eps):
    """Whether each candidate's anchor centre lies inside its GT (specs/atss.md §2.4).

    Args:
        gt_boxes: (G, 4) float64 xyxy.
        anchors: (A, 4) xyxy.
        candidate_index: (G, C) int64.
        eps: float; inside means ``min(x - x1, y - y1, x2 - x, y2 - y) > eps`` (strict).

    Returns:
        (G, C) bool. A zero-width or zero-height GT contains no centre for any ``eps >= 0``.
    """
    centers = _centers(anchors[candidate_index])  # (G, C, 2)
    x, y = centers[..., 0], centers[..., 1]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))
    margin = np.minimum(np.minimum(x - x1, y - y1), np.minimum(x2 - x, y2 - y))
    return margin > eps


def resolve_multiple_matches(candidate_index, candidate_metric, is_positive, num_anchors):
    """Give each anchor to at most one GT (specs/atss.md §2.5; specs/conventions.md §5.2).

    An anchor that is positive for several GTs goes to the GT with the highest metric;
    among equal metrics, to the lower GT index.

    Args:
        candidate_index: (G, C) int64.
        candidate_metric: (G, C) float64, the matching metric of each candidate.
        is_positive: (G, C) bool.
        num_anchors: A.

    Returns:
        matched_gt: (A,) int64, the GT index or BACKGROUND (-1).
        matched_metric: (A,) float64, the metric with that GT; 0 for background.
    """
    matched_gt = np.full(num_anchors, BACKGROUND, dtype=np.int64)
    best_metric = np.full(num_anchors, -np.inf)
    for g in range(candidate_index.shape[0]):
        anchor = candidate_index[g][is_positive[g]]
        metric = candidate_metric[g][is_positive[g]]
        better = metric > best_metric[anchor]  # strict: an equal metric keeps the lower GT index
        matched_gt[anchor[better]] = g
        best_metric[anchor[better]] = metric[better]
    matched_metric = np.where(matched_gt >= 0, best_metric, 0.0)
    return matched_gt, matched_metric

